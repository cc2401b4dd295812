//! What `etcdimg test --runtime containerd` checks inside a container of the image: the
//! container's user and environment, each bundled binary's version, and the static-pod command
//! walking a bind-mounted data dir through the bundled versions. Each check returns its row's
//! text or why it failed; `commands::test_containerd` puts them in the report.

use std::path::Path;
use std::time::{Duration, Instant};

use semver::Version;

use crate::containerd::{Containerd, RunSpec, Running};
use crate::platform::Arch;
use crate::pod::{pod_spec, Member};
use crate::settings::Settings;

/// Container ids unique to this process.
pub(crate) struct Ids(std::cell::Cell<u32>);

impl Ids {
    pub(crate) fn new() -> Ids {
        Ids(std::cell::Cell::new(0))
    }

    fn next(&self, what: &str) -> String {
        let n = self.0.get() + 1;
        self.0.set(n);
        format!("etcdimg-test-{}-{what}-{n}", std::process::id())
    }
}

fn shell(image: &str, id: String, script: &str) -> RunSpec {
    RunSpec {
        image: image.into(),
        id,
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

pub(crate) fn user_and_env(
    ctd: &Containerd,
    image: &str,
    ids: &Ids,
    arch: Arch,
) -> Result<String, String> {
    let script = "echo uid=$(id -u); echo path=$PATH; echo unsupported=${ETCD_UNSUPPORTED_ARCH:-}";
    let out = ctd
        .run(&shell(image, ids.next("env"), script))
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    let want_unsupported = if arch == Arch::Amd64 { "" } else { arch.name() };
    if !out.status.success()
        || get("uid") != "0"
        || !get("path").split(':').any(|p| p == "/usr/local/bin")
        || get("unsupported") != want_unsupported
    {
        return Err(format!(
            "{}; expected uid 0, /usr/local/bin on PATH, ETCD_UNSUPPORTED_ARCH={want_unsupported:?}",
            text.trim().replace('\n', ", ")
        ));
    }
    Ok(text.trim().replace('\n', ", "))
}

pub(crate) fn version_in(
    ctd: &Containerd,
    image: &str,
    ids: &Ids,
    path: &str,
    name: &str,
    want: &Version,
) -> Result<String, String> {
    let arg = if name == "etcd" {
        "--version"
    } else {
        "version"
    };
    let spec = RunSpec {
        image: image.into(),
        id: ids.next(name),
        env: vec![("ETCDCTL_API".into(), "3".into())],
        args: vec![path.into(), arg.into()],
        ..Default::default()
    };
    let out = ctd.run(&spec).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "{path} {arg}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    match crate::binary::parse_reported_version(name, &text) {
        Some(v)
            if Version::parse(&v).is_ok_and(|r| {
                (r.major, r.minor, r.patch) == (want.major, want.minor, want.patch)
            }) =>
        {
            Ok(format!("{path} reports {v} in a container"))
        }
        Some(v) => Err(format!("{path} reports {v}, expected {want}")),
        None => Err(format!("{path} reports no version: {}", text.trim())),
    }
}

/// One HTTP/1.0 request to 127.0.0.1:`port`; the body of a 200 answer.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.split_whitespace()
        .nth(1)
        .filter(|c| *c == "200")
        .map(|_| body.to_string())
}

/// Waits until the etcd of `running` answers /health, or its container exits.
fn wait_healthy(running: &mut Running, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if http(port, "GET", "/health", "").is_some_and(|b| b.contains("\"health\":\"true\"")) {
            return Ok(());
        }
        if let Some(status) = running.exited() {
            return Err(format!(
                "the container exited ({status}) before etcd was healthy"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "etcd was not healthy after {} s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(6).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The targets a pod walks: the oldest bundled version, the latest, and back one minor.
fn pod_targets(settings: &Settings) -> Result<Vec<semver::Version>, String> {
    let (Some(oldest), latest) = (settings.bundled.iter().min(), &settings.latest) else {
        return Err("no bundled versions".into());
    };
    let mut targets = vec![oldest.clone(), latest.clone()];
    if latest.minor > 0 {
        if let Some(back) = settings
            .bundled
            .iter()
            .filter(|v| v.major == latest.major && v.minor + 1 == latest.minor)
            .max()
        {
            targets.push(back.clone());
        }
    }
    targets.dedup();
    Ok(targets)
}

/// The pod's etcd is healthy, serves `target`, and the first pod writes the test key that
/// every later one must still serve.
fn pod_serves(
    running: &mut Running,
    client: u16,
    target: &semver::Version,
    first: bool,
    key: &str,
    written_at: &semver::Version,
) -> Result<(), String> {
    wait_healthy(running, client, Duration::from_secs(90))?;
    let served = http(client, "GET", "/version", "").unwrap_or_default();
    if !served.contains(&format!("\"etcdserver\":\"{target}\"")) {
        return Err(format!("it serves {served}, expected etcdserver {target}"));
    }
    if first {
        let put = format!(
            r#"{{"key":"{key}","value":"{}"}}"#,
            b64(&format!("written by etcd {target}"))
        );
        http(client, "POST", "/v3/kv/put", &put).ok_or("the test key could not be written")?;
    } else {
        let got = http(
            client,
            "POST",
            "/v3/kv/range",
            &format!(r#"{{"key":"{key}"}}"#),
        )
        .unwrap_or_default();
        if !got.contains("\"kvs\"") {
            return Err(format!("the key written at {written_at} is gone: {got}"));
        }
    }
    Ok(())
}

/// The static-pod command on a bind-mounted /var/etcd: oldest bundled, then the latest, then
/// back one minor; each time etcd must serve the target's version and the key written first.
pub(crate) fn pod_migration(
    ctd: &Containerd,
    image: &str,
    ids: &Ids,
    settings: &Settings,
    arch: Arch,
) -> Result<String, String> {
    let targets = pod_targets(settings)?;
    let host = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (etcd_dir, log_dir) = (host.path().join("etcd"), host.path().join("log"));
    for d in [&etcd_dir, &log_dir] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let key = b64("/registry/etcdimg-test");
    for (i, target) in targets.iter().enumerate() {
        let port = || hostio::ports::free_port().map_err(|e| e.to_string());
        let client = port()?;
        let member = Member::alone(client, port()?);
        let spec = pod_spec(
            image,
            ids.next("pod"),
            host.path(),
            &member,
            target,
            arch,
            true,
        );
        let ctr_log = host.path().join(format!("ctr-{i}.log"));
        let mut running = ctd.start(&spec, &ctr_log).map_err(|e| e.to_string())?;
        let checked = pod_serves(&mut running, client, target, i == 0, &key, &targets[0]);
        let stopped = ctd.stop(&mut running, Duration::from_secs(30));
        checked.map_err(|e| {
            format!(
                "to {target}: {e}; etcd.log: {}; ctr: {}",
                log_tail(&log_dir.join("etcd.log")),
                log_tail(&ctr_log)
            )
        })?;
        let written =
            std::fs::read_to_string(etcd_dir.join("data/version.txt")).unwrap_or_default();
        if written.trim() != format!("{target}/etcd3") {
            return Err(format!(
                "to {target}: version.txt says {written:?} ({stopped:?})"
            ));
        }
    }
    let path: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    Ok(format!(
        "static-pod command: {} served, key kept",
        path.join(" -> ")
    ))
}
