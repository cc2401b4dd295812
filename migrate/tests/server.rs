//! The step's etcd start on real etcd 3.5.1 (fixtures), behind a wrapper that loses the picked
//! port to "another process" a given number of times: the start is retried on fresh ports,
//! and only a port clash is retried.

use std::path::Path;
use std::time::Duration;

use common::fixtures_bin;
use migrate::server::{Launch, Peers, Server, ServerError};

mod common;

/// An `etcd` that, while `count` holds fewer than `clashes` lines, appends one and fails the
/// way etcd does when its port is taken; after that it runs `real`.
fn wrapper(dir: &Path, real: &Path, clashes: usize, message: &str) -> std::path::PathBuf {
    let script = dir.join("etcd");
    let count = dir.join("count");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(cat '{c}' 2>/dev/null | wc -l)\nif [ \"$n\" -lt {clashes} ]; then\n  echo x >> '{c}'\n  echo '{message}' >&2\n  exit 1\nfi\necho x >> '{c}'\nexec '{real}' \"$@\"\n",
            c = count.display(),
            real = real.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

fn starts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("count"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn start(bin: &Path, dir: &Path) -> Result<Server, ServerError> {
    let data = dir.join("data");
    Server::start(&Launch {
        bin,
        version: "3.5.1",
        data_dir: &data,
        name: "default",
        peers: &Peers::Alone,
        extra_args: &[],
        log_dir: dir,
        timeout: Duration::from_secs(30),
    })
}

const CLASH: &str = "listen tcp 127.0.0.1:42619: bind: address already in use";

#[test]
fn a_start_that_lost_its_port_is_retried_on_fresh_ports() {
    let Some(fixtures) = fixtures_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = wrapper(dir.path(), &fixtures.join("etcd-3.5.1"), 2, CLASH);
    let mut server = start(&bin, dir.path()).expect("the third start serves");
    assert_eq!(starts(dir.path()), 3, "two clashes, then the real etcd");
    assert!(migrate::server::http(server.port, "GET", "/health", None).is_some());
    assert!(server.stop(), "etcd stops cleanly");
}

#[test]
fn port_clashes_are_retried_a_bounded_number_of_times() {
    let Some(fixtures) = fixtures_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = wrapper(dir.path(), &fixtures.join("etcd-3.5.1"), 100, CLASH);
    let err = start(&bin, dir.path()).err().expect("every start clashes");
    assert!(
        matches!(&err, ServerError::Exited { log, .. } if log.contains("address already in use")),
        "{err}"
    );
    assert_eq!(starts(dir.path()), 5, "PORT_ATTEMPTS starts, no more");
}

#[test]
fn other_start_failures_are_not_retried() {
    let Some(fixtures) = fixtures_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = wrapper(
        dir.path(),
        &fixtures.join("etcd-3.5.1"),
        100,
        "etcdmain: cannot access data directory: permission denied",
    );
    let err = start(&bin, dir.path()).err().expect("the start fails");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert_eq!(starts(dir.path()), 1);
}
