//! Shared by the migrate integration tests: a real etcd on loopback ports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use base64::Engine;
use std::time::{Duration, Instant};

/// A free loopback port (see `hostio::ports`).
pub fn free_port() -> u16 {
    hostio::ports::free_port().expect("a free loopback port")
}

pub struct Etcd {
    pub child: Child,
    pub port: u16,
}

impl Etcd {
    /// A single-member etcd on free loopback ports, ready.
    pub fn start(bin: &Path, data: &Path) -> Etcd {
        Etcd::start_with(bin, data, &[])
    }

    /// [`Etcd::start`] with extra flags.
    pub fn start_with(bin: &Path, data: &Path, extra: &[String]) -> Etcd {
        let e = Etcd::spawn_alone(bin, data, extra);
        e.wait_ready();
        e
    }

    /// A single-member etcd on free loopback ports, not waited for (with auth enabled the
    /// readiness read of [`Etcd::start`] is refused).
    pub fn start_unready(bin: &Path, data: &Path) -> Etcd {
        Etcd::spawn_alone(bin, data, &[])
    }

    fn spawn_alone(bin: &Path, data: &Path, extra: &[String]) -> Etcd {
        let (port, peer) = (free_port(), free_port());
        let peer_url = format!("http://127.0.0.1:{peer}");
        Etcd::spawn_member(
            bin,
            data,
            "default",
            port,
            &peer_url,
            &format!("default={peer_url}"),
            extra,
        )
    }

    /// Polls `ready` until it holds (30 s at most).
    pub fn wait_until(&self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            assert!(Instant::now() < deadline, "etcd did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One member of a cluster, not waited for (a new cluster needs a quorum to be ready).
    pub fn spawn_member(
        bin: &Path,
        data: &Path,
        name: &str,
        port: u16,
        peer_url: &str,
        initial_cluster: &str,
        extra: &[String],
    ) -> Etcd {
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(data)
            .args(["--name", name])
            .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Etcd { child, port }
    }

    /// Waits until a read through the gateway succeeds (30 s at most).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .post("/v3/kv/range", r#"{"key":"AA=="}"#)
            .contains("header")
        {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Grants a lease of `ttl` seconds through the gateway; its ID.
    pub fn grant(&self, ttl: i64) -> String {
        let r = self.post("/v3/lease/grant", &format!(r#"{{"TTL":{ttl}}}"#));
        r.split("\"ID\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no lease ID in the grant's answer: {r}"))
            .to_string()
    }

    /// One JSON request to the gRPC gateway.
    pub fn post(&self, path: &str, body: &str) -> String {
        self.post_method("POST", path, body)
    }

    /// One request with `method`; the raw HTTP answer.
    pub fn post_method(&self, method: &str, path: &str, body: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return String::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn fixtures_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("ETCDIMG_TEST_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"))
        .join("bin");
    if dir.join("etcd-3.4.23").is_file() && dir.join("etcd-3.5.1").is_file() {
        return Some(dir);
    }
    if std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() == Ok("all") {
        panic!(
            "fixtures missing at {} (run scripts/fixtures.sh)",
            dir.display()
        );
    }
    eprintln!("skipping: fixtures missing at {}", dir.display());
    None
}

/// A bin dir holding only the versions under test (migrate discovers bundled versions there),
/// with etcdutl where the fixtures have it.
pub fn bin_dir(fixtures: &Path, versions: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for v in versions {
        for name in ["etcd", "etcdctl", "etcdutl"] {
            let from = fixtures.join(format!("{name}-{v}"));
            if name == "etcdutl" && !from.exists() {
                continue;
            }
            std::os::unix::fs::symlink(from, d.path().join(format!("{name}-{v}"))).unwrap();
        }
    }
    d
}

/// The etcd versions the version-matrix tests run, oldest first, and the directory holding
/// their etcd-<V>/etcdctl-<V>/etcdutl-<V>: `ETCDIMG_TEST_ETCD_VERSIONS` and
/// `ETCDIMG_TEST_ETCD_BIN_DIR` (the GitHub job sets them to official releases), else every
/// amd64 version scripts/fixtures.sh built (`<fixtures>/etcd-versions`: 3.4.23 from Debian's
/// source, 3.5.0/3.5.1 from PyPI, and the current 3.5, 3.6 and 3.7 from their Go modules).
pub fn matrix() -> Option<(PathBuf, Vec<semver::Version>)> {
    let (dir, list) = match std::env::var_os("ETCDIMG_TEST_ETCD_BIN_DIR") {
        Some(d) => (
            PathBuf::from(d),
            std::env::var("ETCDIMG_TEST_ETCD_VERSIONS")
                .expect("ETCDIMG_TEST_ETCD_VERSIONS with ETCDIMG_TEST_ETCD_BIN_DIR"),
        ),
        None => {
            let bin = fixtures_bin()?;
            let listed = bin.parent().expect("fixtures dir").join("etcd-versions");
            let list = std::env::var("ETCDIMG_TEST_ETCD_VERSIONS").unwrap_or_else(|_| {
                std::fs::read_to_string(&listed).unwrap_or_else(|e| {
                    panic!("{}: {e} (run scripts/fixtures.sh)", listed.display())
                })
            });
            (bin, list)
        }
    };
    let mut versions: Vec<semver::Version> = list
        .split([' ', ',', '\n'])
        .filter(|s| !s.is_empty())
        .map(|s| semver::Version::parse(s).expect("a version in ETCDIMG_TEST_ETCD_VERSIONS"))
        .collect();
    versions.sort();
    for v in &versions {
        let etcd = dir.join(format!("etcd-{v}"));
        assert!(etcd.is_file(), "{} is missing", etcd.display());
    }
    Some((dir, versions))
}

/// Skips a test that needs versions the matrix lacks, or fails it where every tool and
/// fixture is required (ETCDIMG_TEST_REQUIRE=all): then a missing etcd is a broken setup.
pub fn missing_versions(test: &str, what: &str) {
    if std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() == Ok("all") {
        panic!("{test}: the version matrix lacks {what} (ETCDIMG_TEST_REQUIRE=all); run scripts/fixtures.sh");
    }
    eprintln!("skipping {test}: the version matrix lacks {what}");
}

/// migrate with `--json` on `data` to `target`/etcd3 through the etcd versions in `bins`, with
/// a clean environment (but PATH) plus `env`; the default binaries are not moved.
pub fn migrate_json(bins: &Path, data: &Path, target: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = migrate_command(bins, data, target);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The command [`migrate_json`] runs, to spawn it in the background.
pub fn migrate_command(bins: &Path, data: &Path, target: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOSTNAME", "default")
        .env("DO_NOT_MOVE_BINARIES", "true")
        .args(["--name", "default", "--bin-dir"])
        .arg(bins)
        .arg("--data-dir")
        .arg(data)
        .args([
            "--target-version",
            target,
            "--target-storage",
            "etcd3",
            "--json",
        ]);
    cmd
}

/// migrate's own offline fingerprint of the stopped data dir `data` (`--fingerprint`).
pub fn fingerprint(data: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_migrate"))
        .arg("--fingerprint")
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A refusal or a failed step: exit `code`, `needle` on stderr, the data dir byte for byte as
/// `before`, and nothing beside it in `case`.
pub fn assert_untouched(
    out: &Output,
    code: i32,
    needle: &str,
    data: &Path,
    before: &BTreeMap<String, Vec<u8>>,
    case: &Path,
) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(
        stderr(out).contains(needle),
        "expected `{needle}`: {}",
        stderr(out)
    );
    assert!(tree_bytes(data) == *before, "the data dir changed");
    let left = leftovers(case);
    assert!(left.is_empty(), "leftovers: {left:?}");
}

/// Fails the test with the command's stderr unless it succeeded.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every key and value, read with etcdctl (not migrate's code).
pub fn read_all(etcdctl: &Path, port: u16) -> BTreeMap<Vec<u8>, Vec<u8>> {
    read_all_as(etcdctl, port, None)
}

/// [`read_all`] as `user` (`name:password`) where auth is on.
pub fn read_all_as(etcdctl: &Path, port: u16, user: Option<&str>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut cmd = Command::new(etcdctl);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://127.0.0.1:{port}"));
    if let Some(u) = user {
        cmd.arg(format!("--user={u}"));
    }
    let out = cmd
        .args(["get", "", "--prefix", "-w", "json"])
        .output()
        .unwrap();
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = |x: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(x.as_str().unwrap_or(""))
            .unwrap()
    };
    v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| (d(&kv["key"]), d(&kv["value"])))
                .collect()
        })
        .unwrap_or_default()
}

#[path = "tree.rs"]
mod tree;
pub use tree::tree_bytes;

/// Entries of `case` other than the data dir (journal, backup, snapshot, ...).
pub fn leftovers(case: &Path) -> Vec<String> {
    std::fs::read_dir(case)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "data")
        .collect()
}

/// `cp -a from to`.
pub fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A migrate run given extra environment variables.
pub type RunWithEnv<'a> = dyn Fn(&[(&str, &str)]) -> std::process::Output + 'a;

/// Runs migrate (`run`, given extra env) with the failpoint `stage`, checks that it fired, then
/// reruns it and checks that the rerun reached `target`/etcd3. Returns the rerun's output.
pub fn crash_then_rerun(
    run: &RunWithEnv,
    data: &Path,
    stage: &str,
    target: &str,
) -> std::process::Output {
    let out = run(&[("ETCDIMG_MIGRATE_FAILPOINT", stage)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{stage}: the failpoint did not fire: {err}"
    );
    assert!(
        err.contains(&format!("failpoint `{stage}`")),
        "{stage}: {err}"
    );
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{stage}: rerun: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        format!("{target}/etcd3"),
        "{stage}"
    );
    out
}
