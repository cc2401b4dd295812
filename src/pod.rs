//! The etcd static pod as Kubernetes' manifests run the image: its command (the plain and the
//! errexit form), its environment, and the container spec with the host's `/var/etcd` and
//! `/var/log` mounted. `etcdimg test --runtime containerd` and the containerd tests run it.

use std::path::Path;

use semver::Version;

use crate::containerd::RunSpec;
use crate::platform::Arch;

/// The member name the pod command runs as (passed as MIGRATE_ETCD_NAME, which etcd itself does
/// not read, so the exec'd `etcd --name` meets no conflicting ETCD_NAME).
pub const MEMBER: &str = "etcd-image-test";

/// One etcd member of a static pod, on loopback ports.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    /// `--initial-cluster`; `None`: this member alone.
    pub cluster: Option<String>,
}

impl Member {
    /// A member alone, named [`MEMBER`].
    pub fn alone(client: u16, peer: u16) -> Member {
        Member {
            name: MEMBER.into(),
            client,
            peer,
            cluster: None,
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }

    fn cluster(&self) -> String {
        self.cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.peer_url()))
    }
}

/// The command of a Kubernetes etcd static pod (the manifests' form) for `m`; `errexit` adds
/// `set -o errexit` in front, as the newer manifests do.
pub fn pod_command(m: &Member, errexit: bool) -> String {
    let (c, peer) = (m.client, m.peer_url());
    let state = if m.cluster.is_some() {
        // A new multi-member cluster: etcd's default timers, a little shorter for the tests.
        " --initial-cluster-state new --heartbeat-interval 50 --election-timeout 500"
    } else {
        ""
    };
    format!(
        "{}if [ -e /usr/local/bin/migrate-if-needed.sh ]; then /usr/local/bin/migrate-if-needed.sh 1>>/var/log/etcd.log 2>&1; fi; exec /usr/local/bin/etcd --name {} --data-dir /var/etcd/data --listen-client-urls http://127.0.0.1:{c} --advertise-client-urls http://127.0.0.1:{c} --listen-peer-urls {peer} --initial-advertise-peer-urls {peer} --initial-cluster {}{state}",
        if errexit { "set -o errexit; " } else { "" },
        m.name,
        m.cluster(),
    )
}

/// The pod's environment for `m`, as the manifests set it.
pub fn pod_env(m: &Member, target: &Version, arch: Arch) -> Vec<(String, String)> {
    let mut env = vec![
        ("TARGET_STORAGE".to_string(), "etcd3".to_string()),
        ("TARGET_VERSION".into(), target.to_string()),
        ("DATA_DIRECTORY".into(), "/var/etcd/data".into()),
        ("MIGRATE_ETCD_NAME".into(), m.name.clone()),
        ("INITIAL_CLUSTER".into(), m.cluster()),
        ("LISTEN_PEER_URLS".into(), m.peer_url()),
        ("INITIAL_ADVERTISE_PEER_URLS".into(), m.peer_url()),
    ];
    if arch != Arch::Amd64 {
        env.push(("ETCD_UNSUPPORTED_ARCH".into(), arch.name().into()));
    }
    env
}

/// The pod spec of `m` on `host` (its `etcd/` and `log/` mounted as /var/etcd and /var/log).
pub fn pod_spec(
    image: &str,
    id: String,
    host: &Path,
    m: &Member,
    target: &Version,
    arch: Arch,
    errexit: bool,
) -> RunSpec {
    RunSpec {
        image: image.into(),
        id,
        env: pod_env(m, target, arch),
        mounts: vec![
            (host.join("etcd"), "/var/etcd".into()),
            (host.join("log"), "/var/log".into()),
        ],
        args: vec!["/bin/sh".into(), "-c".into(), pod_command(m, errexit)],
    }
}
