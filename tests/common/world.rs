//! A registry test's world: fixtures, tools, Debian's docker-registry on 127.0.0.1, the
//! release mirror and a sandbox with a project pushing to it (shared by push.rs and release.rs).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use super::*;

pub fn tools(test: &str, list: &[&str]) -> bool {
    list.iter().all(|t| require(test, t))
}

pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

/// A test project: images.toml for amd64 + arm64 from the loopback mirror, pushing to
/// `push_registry`, on `base`.
pub fn project(sb: &mut Sandbox, mirror: u16, push_registry: &str, base: &str, extra: &str) {
    let config = format!(
        r#"[etcd]
latest = "3.5.1"
bundled = ["3.4.23", "3.5.1"]
revision = 0
release_url = "http://127.0.0.1:{mirror}"

[image]
push_registry = "{push_registry}"
name = "etcd"
arches = ["amd64", "arm64"]
base = "{base}"
{extra}

[arch.arm64]
source = "release"

[migrate]
source_dir = "{}"
"#,
        repo_root().join("migrate").display()
    );
    sb.use_config(&config);
}

pub fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo").args(args).output().unwrap()
}

pub fn skopeo_json(args: &[&str]) -> Value {
    let out = skopeo(args);
    assert!(out.status.success(), "skopeo {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The common start of a test: fixtures and tools present, a real registry, the release
/// mirror, a sandbox. `None` means skipped.
pub struct World {
    pub fx: PathBuf,
    pub registry: Server,
    pub host: String,
    pub mirror: Server,
    pub sb: Sandbox,
}

pub fn world(t: &str, needs: &[&str]) -> Option<World> {
    let fx = fixtures(t)?;
    if !tools(t, &["docker-registry", "skopeo", "python3"]) || !tools(t, needs) {
        return None;
    }
    let registry = registry();
    let host = format!("127.0.0.1:{}", registry.port);
    let mirror = http_mirror(&fx.join("mirror"));
    Some(World {
        fx,
        registry,
        host,
        mirror,
        sb: Sandbox::new(),
    })
}

impl World {
    /// The busybox fixture as an `oci:` base.
    pub fn layout_base(&self) -> String {
        format!("oci:{}:1.35", self.fx.join("busybox-oci").display())
    }

    /// A project pushing to this world's registry (declared insecure), on the layout base.
    pub fn local_project(&mut self, extra: &str) {
        let base = self.layout_base();
        let extra = format!("{extra}\ninsecure_registries = [\"{}\"]", self.host);
        project(
            &mut self.sb,
            self.mirror.port,
            &self.host.clone(),
            &base,
            &extra,
        );
    }
}

/// `all-push ARGS --report-dir <sandbox>/reports --json`, which must succeed; the release
/// report it wrote.
pub fn all_push_report(sb: &Sandbox, args: &[&str]) -> Value {
    let reports = sb.path().join("reports");
    let mut all = vec!["all-push"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--report-dir", reports.to_str().unwrap(), "--json"]);
    let out = sb.etcdimg(&all);
    assert_success(&out);
    let file = json(&out)["report"]["written"]["json"]
        .as_str()
        .unwrap()
        .to_string();
    serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap()
}

/// The body of a GET of `url` (python's urllib, not our client), which must succeed.
pub fn http_get(url: &str) -> Vec<u8> {
    let out = run(Command::new("python3").args([
        "-c",
        "import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())",
        url,
    ]));
    assert_success(&out);
    out.stdout
}

/// A blob straight from the registry's HTTP API (python's urllib, not our client).
pub fn blob(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let body = http_get(&format!("http://{host}/v2/{repo}/blobs/{digest}"));
    assert_eq!(
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body))
        ),
        digest,
        "the registry served other bytes"
    );
    body
}
