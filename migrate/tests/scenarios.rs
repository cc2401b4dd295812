//! The original's integration table (reference §5.4), ported to real etcd: 3.4.23 built from
//! Debian's source and the official 3.5.0/3.5.1 (fixtures). As in the original, every member
//! talks to its peers over TLS with a self-signed certificate, initial-cluster lists every
//! member, and each case checks the keys, version.txt and the modes (umask 022).
//!
//! v2-v3-up starts from etcd2 data written by 3.4.23 through the v2 API (no 2.x etcd can be
//! installed here). v3-v2-down (the 3.0 -> 2.2 rollback) is not here yet. Added: the HA
//! rollback that the original did not support, which before 3.6 must be refused untouched, and
//! from 3.6 on follows etcd's own online downgrade (3.7 -> 3.6 on the current releases).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin_dir, fixtures_bin, free_port, read_all, Etcd};

mod common;

/// A self-signed CA:true certificate for localhost/127.0.0.1, for server and client use, as the
/// original's test made (`/tmp/certs/test.crt`, `test.key`).
fn certs(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() != Ok("all"),
            "openssl is missing (scripts/install-deps.sh installs it)"
        );
        eprintln!("skipping: openssl missing");
        return None;
    }
    let (crt, key) = (dir.join("test.crt"), dir.join("test.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "36500",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:true"])
        .args(["-addext", "extendedKeyUsage=serverAuth,clientAuth"])
        .output()
        .unwrap();
    common::assert_success(&out);
    Some((crt, key))
}

struct Member {
    name: String,
    data: PathBuf,
    port: u16,
    peer_url: String,
}

struct Cluster {
    members: Vec<Member>,
    initial_cluster: String,
    tls_args: Vec<String>,
    bins: tempfile::TempDir,
    fixtures: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(title: &str, size: usize, bundled: &[&str]) -> Option<Cluster> {
        let fixtures = fixtures_bin()?;
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = certs(dir.path())?;
        let members: Vec<Member> = (0..size)
            .map(|i| {
                let name = format!("{title}-{i}");
                Member {
                    data: dir.path().join(format!("etcd-data-dir-{name}")),
                    name,
                    port: free_port(),
                    peer_url: format!("https://127.0.0.1:{}", free_port()),
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let tls_args = vec![
            "--peer-client-cert-auth".to_string(),
            format!("--peer-trusted-ca-file={}", crt.display()),
            format!("--peer-cert-file={}", crt.display()),
            format!("--peer-key-file={}", key.display()),
        ];
        Some(Cluster {
            members,
            initial_cluster,
            tls_args,
            bins: bin_dir(&fixtures, bundled),
            fixtures,
            _dir: dir,
        })
    }

    /// migrate for member `m` with the flags the image passes, under umask 022.
    fn migrate(&self, m: &Member, target: &str, listen_client_urls: Option<&str>) -> Output {
        let (target, storage) = split(target);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrate"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DO_NOT_MOVE_BINARIES", "true")
            .args(["--name", &m.name, "--bin-dir"])
            .arg(self.bins.path())
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--target-version", target, "--target-storage", storage])
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--listen-peer-urls={}", m.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url))
            .arg(format!(
                "--listen-client-urls={}",
                listen_client_urls
                    .map(String::from)
                    .unwrap_or_else(|| format!("http://127.0.0.1:{}", m.port))
            ))
            .arg(format!(
                "--etcd-server-extra-args={}",
                self.tls_args.join(" ")
            ));
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        cmd.output().unwrap()
    }

    /// etcd at `pair`'s version; with the v2 API when the storage is etcd2.
    fn spawn(&self, m: &Member, pair: &str) -> Etcd {
        let (version, storage) = split(pair);
        let mut args = self.tls_args.clone();
        if storage == "etcd2" {
            args.push("--enable-v2=true".into());
        }
        Etcd::spawn_member(
            &self.fixtures.join(format!("etcd-{version}")),
            &m.data,
            &m.name,
            m.port,
            &m.peer_url,
            &self.initial_cluster,
            &args,
        )
    }

    /// `ETCDCTL_API=2 etcdctl-<version> <args>` against member `e` (the original used the v2
    /// API for etcd2 data).
    fn etcdctl_v2(&self, version: &str, e: &Etcd, args: &[&str]) -> String {
        let out = Command::new(self.fixtures.join(format!("etcdctl-{version}")))
            .env("ETCDCTL_API", "2")
            .arg(format!("--endpoints=http://127.0.0.1:{}", e.port))
            .args(args)
            .output()
            .unwrap();
        common::assert_success(&out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn key(m: &Member) -> (Vec<u8>, Vec<u8>) {
        (
            format!("/registry/{}", m.name).into_bytes(),
            format!("value-{}", m.name).into_bytes(),
        )
    }

    /// Steps 1-2: initialise every member at `start`, start them, write and read one key each.
    fn start_at(&self, start: &str) -> Vec<Etcd> {
        for m in &self.members {
            let out = self.migrate(m, start, None);
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(read_version(&m.data), full(start));
        }
        let running: Vec<Etcd> = self.members.iter().map(|m| self.spawn(m, start)).collect();
        for (m, e) in self.members.iter().zip(&running) {
            e.wait_ready();
            let (k, v) = Cluster::key(m);
            let (version, storage) = split(start);
            if storage == "etcd2" {
                let (k, v) = (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap());
                self.etcdctl_v2(version, e, &["set", &k, &v]);
                assert_eq!(self.etcdctl_v2(version, e, &["get", &k]), v);
                continue;
            }
            let r = e.post(
                "/v3/kv/put",
                &format!(r#"{{"key":"{}","value":"{}"}}"#, b64(&k), b64(&v)),
            );
            assert!(r.contains("header"), "put on {}: {r}", m.name);
            let all = read_all(&self.fixtures.join(format!("etcdctl-{version}")), e.port);
            assert_eq!(all.get(&k), Some(&v), "{} reads back its key", m.name);
        }
        running
    }

    /// Steps 4-6: every member serves every member's key at `end`; version.txt and modes.
    fn check_end(&self, running: Vec<Etcd>, end: &str) {
        for e in &running {
            let all = read_all(
                &self.fixtures.join(format!("etcdctl-{}", split(end).0)),
                e.port,
            );
            for m in &self.members {
                let (k, v) = Cluster::key(m);
                assert_eq!(
                    all.get(&k),
                    Some(&v),
                    "port {} serves {}'s key",
                    e.port,
                    m.name
                );
            }
        }
        for e in running {
            e.stop();
        }
        for m in &self.members {
            assert_eq!(read_version(&m.data), full(end), "{}", m.name);
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode(&m.data), 0o755, "data dir mode of {}", m.name);
            assert_eq!(
                mode(&m.data.join("version.txt")),
                0o644,
                "version.txt mode of {}",
                m.name
            );
            let parent = m.data.parent().unwrap();
            let stray: Vec<String> = std::fs::read_dir(parent)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".migrate-"))
                .collect();
            assert!(stray.is_empty(), "left beside the data dirs: {stray:?}");
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// version.txt as written.
fn read_version(data: &Path) -> String {
    std::fs::read_to_string(data.join("version.txt"))
        .unwrap()
        .trim()
        .to_string()
}

/// `3.4.23/etcd2` -> (`3.4.23`, `etcd2`); a bare version is etcd3.
fn split(pair: &str) -> (&str, &str) {
    pair.split_once('/').unwrap_or((pair, "etcd3"))
}

fn full(pair: &str) -> String {
    let (v, s) = split(pair);
    format!("{v}/{s}")
}

/// The whole flow of one row: start, write, then member by member (in series) stop, migrate to
/// `end`, start at `end`; finally every member serves every key.
fn run_case(
    title: &str,
    size: usize,
    bundled: &[&str],
    start: &str,
    end: &str,
    extra_client: bool,
) {
    let Some(c) = Cluster::new(title, size, bundled) else {
        return;
    };
    let mut running: Vec<Option<Etcd>> = c.start_at(start).into_iter().map(Some).collect();
    let mut during: Vec<Vec<u8>> = Vec::new();
    for (i, m) in c.members.iter().enumerate() {
        running[i].take().expect("running").stop();
        let client_urls =
            extra_client.then(|| format!("http://127.0.0.1:{},http://10.128.0.1:2379", m.port));
        // In a cluster the others keep taking writes while this member migrates (as with a
        // live apiserver): the member must catch up on them, and none may be lost.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let out = std::thread::scope(|scope| {
            let writer = running.iter().flatten().next().map(|live| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let k = format!("/registry/during/{}/{}", m.name, acked.len());
                        let r = live.post(
                            "/v3/kv/put",
                            &format!(
                                r#"{{"key":"{}","value":"{}"}}"#,
                                b64(k.as_bytes()),
                                b64(b"v")
                            ),
                        );
                        if r.contains("header") {
                            acked.push(k.into_bytes());
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    acked
                })
            });
            let out = c.migrate(m, end, client_urls.as_deref());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(w) = writer {
                during.extend(w.join().unwrap());
            }
            out
        });
        assert!(
            out.status.success(),
            "{title}: migrate {} to {end}: {}",
            m.name,
            stderr(&out)
        );
        let e = c.spawn(m, end);
        e.wait_ready();
        running[i] = Some(e);
    }
    let running: Vec<Etcd> = running.into_iter().flatten().collect();
    if size > 1 {
        assert!(
            !during.is_empty(),
            "no writes were taken during the migrations"
        );
        for e in &running {
            let all = read_all(
                &c.fixtures.join(format!("etcdctl-{}", split(end).0)),
                e.port,
            );
            let lost: Vec<_> = during.iter().filter(|k| !all.contains_key(*k)).collect();
            assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
        }
    }
    c.check_end(running, end);
}

/// The original's v2-v3-up (2.2.1/etcd2 -> 3.0.17/etcd3): etcd2 data of the oldest bundled
/// converter, converted to etcd3.
#[test]
fn v2_v3_up() {
    run_case(
        "v2-v3-up",
        1,
        &["3.4.23", "3.5.1"],
        "3.4.23/etcd2",
        "3.4.23/etcd3",
        false,
    );
}

/// oldest-newest-up from etcd2: convert, then upgrade a minor.
#[test]
fn v2_oldest_newest_up() {
    run_case(
        "v2-oldest-newest-up",
        1,
        &["3.4.23", "3.5.0", "3.5.1"],
        "3.4.23/etcd2",
        "3.5.1/etcd3",
        false,
    );
}

#[test]
fn v3_v3_up() {
    run_case(
        "v3-v3-up",
        1,
        &["3.4.23", "3.5.1"],
        "3.4.23",
        "3.5.1",
        false,
    );
}

#[test]
fn oldest_newest_up() {
    run_case(
        "oldest-newest-up",
        1,
        &["3.4.23", "3.5.0", "3.5.1"],
        "3.4.23",
        "3.5.1",
        false,
    );
}

#[test]
fn v3_v3_up_with_additional_client_url() {
    run_case(
        "v3-v3-up-with-additional-client-url",
        1,
        &["3.4.23", "3.5.1"],
        "3.4.23",
        "3.5.1",
        true,
    );
}

#[test]
fn ha_v3_v3_up() {
    run_case(
        "ha-v3-v3-up",
        3,
        &["3.4.23", "3.5.1"],
        "3.4.23",
        "3.5.1",
        false,
    );
}

#[test]
fn v3_v3_down() {
    run_case(
        "v3-v3-down",
        1,
        &["3.4.23", "3.5.1"],
        "3.5.1",
        "3.4.23",
        false,
    );
}

/// Not in the original's table (its stated non-goal): a rollback of one member of a 3-member
/// cluster is refused with its own exit code, before anything is touched.
#[test]
fn ha_v3_v3_down_is_refused_untouched() {
    let Some(c) = Cluster::new("ha-v3-v3-down", 3, &["3.4.23", "3.5.1"]) else {
        return;
    };
    let running = c.start_at("3.5.1");
    for e in running {
        e.stop();
    }
    let m = &c.members[0];
    let before = common::tree_bytes(&m.data);
    let out = c.migrate(m, "3.4.23", None);
    assert_eq!(out.status.code(), Some(17), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("HA rollbacks from before etcd 3.6 are not supported"),
        "{}",
        stderr(&out)
    );
    assert!(
        before == common::tree_bytes(&m.data),
        "the data dir changed"
    );
    assert_eq!(read_version(&m.data), "3.5.1/etcd3");
}

/// The newest fixture etcd of minor 3.`minor` (built from its Go modules by fixtures.sh).
fn newest(minor: u64) -> String {
    let (_, versions) = common::matrix().expect("fixtures");
    versions
        .iter()
        .filter(|v| (v.major, v.minor) == (3, minor))
        .max()
        .unwrap_or_else(|| panic!("no etcd 3.{minor} in the fixtures"))
        .to_string()
}

/// `GET /version` of a member: (server, cluster, storage) versions.
fn versions_of(e: &Etcd) -> (String, String, String) {
    let answer = e.post_method("GET", "/version", "");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (s("etcdserver"), s("etcdcluster"), s("storage"))
}

/// An HA rollback on etcd 3.6+, as etcd itself does it (decided for issue #20): migrate never
/// starts a cluster-wide downgrade from one pod's init (one member's TARGET_VERSION would then
/// downgrade every member), but it follows one. Without an enabled downgrade in the member's
/// data it refuses (17) with etcd's procedure; once `etcdctl downgrade enable` ran and the
/// running members lowered the cluster and storage versions, each member in turn only records
/// the target, and etcd 3.6 rejoins on the data as it is. Every key survives, and etcd
/// finishes the downgrade when the last member runs 3.6.
#[test]
fn ha_3_7_to_3_6_follows_etcds_online_downgrade() {
    let (v36, v37) = (newest(6), newest(7));
    let Some(c) = Cluster::new("ha-37-36", 3, &[&v36, &v37]) else {
        return;
    };
    let mut running = c.start_at(&v37);
    let ctl = |version: &str, e: &Etcd, args: &[&str]| {
        let out = Command::new(c.fixtures.join(format!("etcdctl-{version}")))
            .arg(format!("--endpoints=http://127.0.0.1:{}", e.port))
            .args(args)
            .output()
            .unwrap();
        common::assert_success(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // 1. TARGET_VERSION one minor down before any downgrade: refused untouched, with the way.
    let m = &c.members[2];
    running.pop().unwrap().stop();
    let before = common::tree_bytes(&m.data);
    let out = c.migrate(m, &v36, None);
    assert_eq!(out.status.code(), Some(17), "{}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "no downgrade to 3.6 is enabled",
        "etcdctl downgrade enable 3.6",
        "hint:",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(
        before == common::tree_bytes(&m.data),
        "the data dir changed"
    );
    // 2. etcd's procedure: the member back at 3.7, then validate and enable the downgrade, and
    //    wait until every member reports cluster and storage version 3.6.
    running.push(c.spawn(m, &v37));
    running[2].wait_ready();
    ctl(&v37, &running[0], &["downgrade", "validate", "3.6"]);
    ctl(&v37, &running[0], &["downgrade", "enable", "3.6"]);
    for e in &running {
        e.wait_until(|| {
            let (_, cluster, storage) = versions_of(e);
            cluster == "3.6.0" && storage == "3.6.0"
        });
    }
    // 3. One member at a time: stop, migrate (version.txt only), start 3.6 on the same data.
    for (i, m) in c.members.iter().enumerate() {
        running.remove(i).stop();
        let fingerprint = common::fingerprint(&m.data);
        let out = c.migrate(m, &v36, None);
        assert!(out.status.success(), "{}: {}", m.name, stderr(&out));
        assert!(
            stderr(&out).contains("online downgrade"),
            "{}: {}",
            m.name,
            stderr(&out)
        );
        assert_eq!(read_version(&m.data), format!("{v36}/etcd3"));
        assert_eq!(common::fingerprint(&m.data), fingerprint, "{}", m.name);
        running.insert(i, c.spawn(m, &v36));
        running[i].wait_ready();
        let (server, _, _) = versions_of(&running[i]);
        assert_eq!(server, v36, "{} runs {v36}", m.name);
    }
    // 4. etcd ends the downgrade once every member runs 3.6; every key is there.
    running[0].wait_until(|| {
        let status = Command::new(c.fixtures.join(format!("etcdctl-{v36}")))
            .arg(format!("--endpoints=http://127.0.0.1:{}", running[0].port))
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        let info = &v[0]["Status"]["downgradeInfo"];
        info.is_object() && info["enabled"] != true
    });
    c.check_end(running, &format!("{v36}/etcd3"));
}
