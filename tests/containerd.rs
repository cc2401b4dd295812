//! The image as Kubernetes runs it: pulled by containerd, run with runc through the static-pod
//! command of the etcd manifests, on bind-mounted data. Each test starts its own containerd
//! (root, state and sockets under a temp dir; stopped when the test ends) and needs root.
//!
//! Data is written on the host by the fixtures' etcd; inside the containers the image's own
//! migrate-if-needed.sh, migrate and etcd binaries do everything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcdimg::commands::test_containerd::{pod_spec, Member};
use etcdimg::containerd::{Containerd, RunSpec, Running};
use etcdimg::platform::Arch;

mod common;
use common::world::{world, World};
use common::*;

fn needs_runtime(t: &str) -> bool {
    if !(require(t, "containerd") && require(t, "ctr") && require(t, "runc")) {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!require_all(), "{t}: a private containerd needs root");
        eprintln!("skipping {t}: a private containerd needs root");
        return false;
    }
    true
}

fn etcd_bin(fx: &Path, v: &str) -> PathBuf {
    fx.join(format!("bin/etcd-{v}"))
}

fn etcdctl(fx: &Path, v: &str, port: u16, args: &[&str]) -> std::process::Output {
    std::process::Command::new(fx.join(format!("bin/etcdctl-{v}")))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://127.0.0.1:{port}"))
        .args(args)
        .output()
        .unwrap()
}

/// Builds the amd64 image (etcd 3.5.1 bundling 3.4.23) and imports it into `ctd`.
fn image(w: &mut World, ctd: &Containerd) -> String {
    image_of(w, ctd, "3.5.1", &["3.4.23", "3.5.1"])
}

/// Builds the amd64 image of `latest` bundling `bundled` from the fixtures' mirror and imports
/// it into `ctd`.
fn image_of(w: &mut World, ctd: &Containerd, latest: &str, bundled: &[&str]) -> String {
    w.local_project("");
    w.sb.set("ETCD_VERSION", latest)
        .set("BUNDLED_ETCD_VERSIONS", bundled.join(" "));
    let layout = w.sb.path().join(format!("image-{latest}"));
    assert_success(&w.sb.etcdimg(&[
        "build",
        "--arch",
        "amd64",
        "--output",
        layout.to_str().unwrap(),
    ]));
    ctd.import(
        &layout,
        &format!("{latest}-0-linux-amd64"),
        &format!("etcdimg.test/etcd-{latest}"),
        "linux/amd64",
    )
    .unwrap()
}

/// The current etcd of minors 3.5, 3.6 and 3.7 in the fixtures (built from their modules).
fn current(fx: &Path) -> (String, String, String) {
    let v = |m| newest_fixture(fx, m).to_string();
    (v(5), v(6), v(7))
}

/// The fixtures' world, a private containerd, and an image whose latest is the current 3.7
/// bundling the current 3.5, 3.6 and 3.7.
fn with_current_image(t: &str) -> Option<(World, Containerd, String)> {
    let mut w = world(t, &[])?;
    if !needs_runtime(t) {
        return None;
    }
    let ctd = Containerd::start_private().unwrap();
    let (v35, v36, v37) = current(&w.fx);
    let image = image_of(&mut w, &ctd, &v37, &[&v35, &v36, &v37]);
    Some((w, ctd, image))
}

/// The fixtures' world, a private containerd, and the amd64 image built and imported into it;
/// `None` (the test is skipped) when the tools or root are missing.
fn with_image(t: &str) -> Option<(World, Containerd, String)> {
    let mut w = world(t, &[])?;
    if !needs_runtime(t) {
        return None;
    }
    let ctd = Containerd::start_private().unwrap();
    let image = image(&mut w, &ctd);
    Some((w, ctd, image))
}

fn http(port: u16, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn wait_healthy(running: &mut Running, port: u16, log: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !http(port, "GET", "/health", "").contains("\"health\":\"true\"") {
        assert!(
            running.exited().is_none(),
            "the pod exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(std::time::Instant::now() < deadline, "etcd never healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn served_version(port: u16) -> String {
    let body = http(port, "GET", "/version", "");
    body.split("\"etcdserver\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string()
}

/// migrate's offline fingerprint (the workspace's migrate binary, which `cargo test --workspace`
/// builds) of a stopped data dir.
fn history(data: &Path) -> serde_json::Value {
    let out = std::process::Command::new(repo_root().join("target/debug/migrate"))
        .arg("--fingerprint")
        .arg("--data-dir")
        .arg(data)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            v["history_sha256"].clone()
        }
        _ => panic!("migrate --fingerprint failed on {}", data.display()),
    }
}

/// The pod: the static-pod command for one member alone on loopback, /var/etcd and /var/log
/// mounted from `host`.
fn pod(
    image: &str,
    id: &str,
    host: &Path,
    target: &str,
    client: u16,
    peer: u16,
    errexit: bool,
) -> RunSpec {
    let v = semver::Version::parse(target).unwrap();
    let m = Member::alone(client, peer);
    pod_spec(image, id.into(), host, &m, &v, Arch::Amd64, errexit)
}

/// A data dir written by etcd 3.4.23 on the host under `host/etcd/data`, labelled 3.4.23/etcd3.
fn data_by_3_4(fx: &Path, host: &Path) -> BTreeMap<String, String> {
    data_by(fx, host, "3.4.23")
}

/// A data dir written by etcd `version` on the host under `host/etcd/data`, labelled with it.
fn data_by(fx: &Path, host: &Path, version: &str) -> BTreeMap<String, String> {
    let data = host.join("etcd/data");
    std::fs::create_dir_all(host.join("log")).unwrap();
    let (port, peer) = (free_port(), free_port());
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut etcd = std::process::Command::new(etcd_bin(fx, version))
        .arg("--data-dir")
        .arg(&data)
        .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !http(port, "GET", "/health", "").contains("\"health\":\"true\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the host etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut want = BTreeMap::new();
    for i in 0..200 {
        let (k, v) = (format!("/registry/pods/p{i:03}"), format!("value {i}"));
        let out = etcdctl(fx, version, port, &["put", &k, &v]);
        assert!(out.status.success());
        want.insert(k, v);
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(etcd.id() as libc::pid_t, libc::SIGTERM) };
    etcd.wait().unwrap();
    std::fs::write(data.join("version.txt"), format!("{version}/etcd3")).unwrap();
    want
}

#[test]
fn containerd_pulls_the_pushed_index_and_records_every_platform() {
    let t = "containerd_pulls_the_pushed_index_and_records_every_platform";
    let Some(mut w) = world(t, &[]) else { return };
    if !needs_runtime(t) {
        return;
    }
    w.local_project("");
    assert_success(&w.sb.etcdimg(&["all-push"]));
    let ctd = Containerd::start_private().unwrap();
    let reference = format!("{}/etcd:3.5.1-0", w.host);
    let out = ctd
        .ctr()
        .args(["images", "pull", "--plain-http"])
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = ctd.ctr().args(["images", "ls"]).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout).to_string();
    let line = listing
        .lines()
        .find(|l| l.starts_with(&reference))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        line.contains("linux/amd64") && line.contains("linux/arm64/v8"),
        "every platform recorded: {line}"
    );
    // linux/amd64 was unpacked: it runs.
    let run = ctd
        .run(&RunSpec {
            image: reference.clone(),
            id: "pulled".into(),
            args: vec!["/usr/local/bin/etcd".into(), "--version".into()],
            ..Default::default()
        })
        .unwrap();
    assert!(String::from_utf8_lossy(&run.stdout).contains("etcd Version: 3.5.1"));
}

/// The static-pod command, one pod per target in `targets`, on the data `written_by` wrote:
/// each pod's etcd serves the target's version and every key, and the keyspace stays as
/// written (migrate's offline fingerprint of the stopped data).
fn pods_walk(w: &World, ctd: &Containerd, image: &str, written_by: &str, targets: &[&str]) {
    let host = tempfile::tempdir().unwrap();
    let want = data_by(&w.fx, host.path(), written_by);
    let data = host.path().join("etcd/data");
    let written = history(&data);
    for (round, target) in targets.iter().enumerate() {
        let (client, peer) = (free_port(), free_port());
        let log = host.path().join(format!("ctr-{round}.log"));
        let spec = pod(
            image,
            &format!("pod-{round}"),
            host.path(),
            target,
            client,
            peer,
            true,
        );
        let mut running = ctd.start(&spec, &log).unwrap();
        wait_healthy(&mut running, client, &host.path().join("log/etcd.log"));
        assert_eq!(served_version(client), *target, "round {round}");
        let out = etcdctl(
            &w.fx,
            target,
            client,
            &["get", "", "--prefix", "-w", "json"],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["count"], want.len(), "round {round}: every key served");
        ctd.stop(&mut running, Duration::from_secs(30));
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            format!("{target}/etcd3")
        );
        assert_eq!(
            history(&data),
            written,
            "round {round}: the keyspace as written"
        );
    }
}

#[test]
fn the_static_pod_command_upgrades_and_rolls_back_the_data_it_mounts() {
    let t = "the_static_pod_command_upgrades_and_rolls_back_the_data_it_mounts";
    let Some((w, ctd, image)) = with_image(t) else {
        return;
    };
    pods_walk(&w, &ctd, &image, "3.4.23", &["3.5.1", "3.4.23"]);
}

/// An image whose latest is the current 3.7: its pod takes 3.5 data up two minors (3.5 -> 3.6
/// -> 3.7) in one start, and a pod at TARGET_VERSION 3.6 rolls it back one minor.
#[test]
fn a_3_7_image_upgrades_mounted_3_5_data_and_rolls_it_back_one_minor() {
    let t = "a_3_7_image_upgrades_mounted_3_5_data_and_rolls_it_back_one_minor";
    let Some((w, ctd, image)) = with_current_image(t) else {
        return;
    };
    let (v35, v36, v37) = current(&w.fx);
    pods_walk(&w, &ctd, &image, &v35, &[&v37, &v36]);
}

/// Three containers of `image` at `from`, rolled one at a time to `to` under a writer: no
/// acknowledged write is lost, and every member serves `to` at the end.
fn rolling_upgrade(w: &World, ctd: &Containerd, image: &str, from: &str, to: &str) {
    let image = image.to_string();
    let host = tempfile::tempdir().unwrap();
    let names = ["etcd-a", "etcd-b", "etcd-c"];
    let clients: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let peers: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let cluster: String = names
        .iter()
        .zip(&peers)
        .map(|(n, p)| format!("{n}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let member = |i: usize, target: &str, round: usize| {
        let dir = host.path().join(names[i]);
        std::fs::create_dir_all(dir.join("etcd")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let m = Member {
            name: names[i].into(),
            client: clients[i],
            peer: peers[i],
            cluster: Some(cluster.clone()),
        };
        let v = semver::Version::parse(target).unwrap();
        let id = format!("{}-{round}", names[i]);
        let spec = pod_spec(&image, id, &dir, &m, &v, Arch::Amd64, true);
        ctd.start(&spec, &dir.join(format!("ctr-{round}.log")))
            .unwrap()
    };
    // A cluster of three containers at `from`.
    let mut running: Vec<Running> = (0..3).map(|i| member(i, from, 0)).collect();
    for (i, r) in running.iter_mut().enumerate() {
        wait_healthy(
            r,
            clients[i],
            &host.path().join(names[i]).join("log/etcd.log"),
        );
    }
    // A writer puts keys through whichever members are up; what they acknowledge must stay.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acked, clients, fx, from) = (
            stop.clone(),
            acked.clone(),
            clients.clone(),
            w.fx.clone(),
            from.to_string(),
        );
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let port = clients[n % 3];
                let key = format!("/registry/writes/{n:05}");
                let out = etcdctl(
                    &fx,
                    &from,
                    port,
                    &["--command-timeout=2s", "put", &key, "x"],
                );
                if out.status.success() {
                    acked.lock().unwrap().push(key);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    // Roll each member: stop its container, start one with TARGET_VERSION=`to`.
    for i in 0..3 {
        ctd.stop(&mut running[i], Duration::from_secs(30));
        running[i] = member(i, to, 1);
        wait_healthy(
            &mut running[i],
            clients[i],
            &host.path().join(names[i]).join("log/etcd.log"),
        );
        assert_eq!(served_version(clients[i]), to, "{}", names[i]);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the writer got only {} writes through",
        acked.len()
    );
    for (i, port) in clients.iter().enumerate() {
        let out = etcdctl(
            &w.fx,
            to,
            *port,
            &["get", "/registry/writes/", "--prefix", "--keys-only"],
        );
        let keys: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|k| !keys.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "{} lost {} acknowledged writes: {:?}",
            names[i],
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        assert_eq!(served_version(*port), to);
    }
    for r in &mut running {
        ctd.stop(r, Duration::from_secs(30));
    }
}

/// The current releases: a 3.6 cluster rolled to 3.7 by an image whose latest is 3.7.
#[test]
fn an_ha_cluster_rolls_from_3_6_to_3_7_one_container_at_a_time_losing_no_write() {
    let t = "an_ha_cluster_rolls_from_3_6_to_3_7_one_container_at_a_time_losing_no_write";
    let Some((w, ctd, image)) = with_current_image(t) else {
        return;
    };
    let (_, v36, v37) = current(&w.fx);
    rolling_upgrade(&w, &ctd, &image, &v36, &v37);
}

#[test]
fn a_failed_migration_leaves_the_data_and_the_default_etcd_at_the_datas_version() {
    let t = "a_failed_migration_leaves_the_data_and_the_default_etcd_at_the_datas_version";
    let Some((w, ctd, image)) = with_image(t) else {
        return;
    };
    let host = tempfile::tempdir().unwrap();
    data_by_3_4(&w.fx, host.path());
    let data = host.path().join("etcd/data");
    // (what, target, env change, migrate's exit code)
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>, i32);
    let cases: [Case; 2] = [
        (
            "a name missing from INITIAL_CLUSTER",
            "3.5.1",
            Some(("INITIAL_CLUSTER", "etcd-someone-else=http://127.0.0.1:1")),
            23,
        ),
        ("a target version not bundled", "3.6.17", None, 12),
    ];
    for (n, (what, target, change, code)) in cases.into_iter().enumerate() {
        let before = tree_bytes(&data);
        let edit = |spec: &mut RunSpec| {
            if let Some((k, v)) = change {
                spec.env.retain(|(key, _)| key != k);
                spec.env.push((k.into(), v.into()));
            }
        };
        // With `set -o errexit` the pod stops; the data is as it was; migrate's exit code, and
        // /usr/local/bin/etcd is the data's version (checked after migrate in the same container).
        let (client, peer) = (free_port(), free_port());
        let mut spec = pod(
            &image,
            &format!("fail-{n}"),
            host.path(),
            target,
            client,
            peer,
            true,
        );
        spec.args[2] = "/usr/local/bin/migrate-if-needed.sh 1>>/var/log/etcd.log 2>&1; code=$?; /usr/local/bin/etcd --version; exit $code".to_string();
        edit(&mut spec);
        let out = ctd.run(&spec).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{what}: {}",
            std::fs::read_to_string(host.path().join("log/etcd.log")).unwrap_or_default()
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("etcd Version: 3.4.23"),
            "{what}: the default etcd after the failure: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(tree_bytes(&data) == before, "{what}: the data changed");
        let mut spec = pod(
            &image,
            &format!("errexit-{n}"),
            host.path(),
            target,
            client,
            peer,
            true,
        );
        edit(&mut spec);
        let out = ctd.run(&spec).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{what}: the errexit pod exits with migrate's code"
        );
        assert!(tree_bytes(&data) == before, "{what}: the data changed");
        // Without errexit, etcd starts anyway: the data's own version, not the target.
        let mut spec = pod(
            &image,
            &format!("plain-{n}"),
            host.path(),
            target,
            client,
            peer,
            false,
        );
        edit(&mut spec);
        // (The exec'd etcd takes its cluster from its own flags, which match the data.)
        let log = host.path().join(format!("plain-{n}.log"));
        let mut running = ctd.start(&spec, &log).unwrap();
        wait_healthy(&mut running, client, &host.path().join("log/etcd.log"));
        assert_eq!(
            served_version(client),
            "3.4.23",
            "{what}: etcd of the data's version"
        );
        ctd.stop(&mut running, Duration::from_secs(30));
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            "3.4.23/etcd3"
        );
    }
}
