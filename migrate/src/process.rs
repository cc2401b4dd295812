//! How migrate starts programs (etcd, etcdctl, etcdutl), on `hostio::process`.
//!
//! Every child gets the environment scrubbed of `ETCD_*`/`ETCDCTL_*` (etcd reads them as flags
//! and refuses to start when one conflicts with a command-line flag; `ETCD_UNSUPPORTED_ARCH`
//! is kept; the variables migrate sets itself always reach the child), dies with migrate
//! (`PR_SET_PDEATHSIG`: migrate starts them from its main thread), and is reaped with `wait4`
//! so that its peak memory is known (the JSON report carries it).

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use hostio::process::{Child, Cmd, ProcessError};

/// The largest peak RSS (KiB) of any etcd, and of any etcdctl/etcdutl, migrate ran.
static ETCD_PEAK_KIB: AtomicU64 = AtomicU64::new(0);
static TOOL_PEAK_KIB: AtomicU64 = AtomicU64::new(0);

/// Peak resident memory in KiB: migrate itself, the largest etcd, the largest etcdctl/etcdutl.
pub fn peak_rss_kib() -> (u64, u64, u64) {
    (
        hostio::process::self_peak_rss_kib(),
        ETCD_PEAK_KIB.load(Ordering::Relaxed),
        TOOL_PEAK_KIB.load(Ordering::Relaxed),
    )
}

/// `ETCD_*` (but `ETCD_UNSUPPORTED_ARCH`) and `ETCDCTL_*`: what the children must not inherit.
fn etcd_var(name: &str) -> bool {
    (name.starts_with("ETCD_") && name != "ETCD_UNSUPPORTED_ARCH") || name.starts_with("ETCDCTL_")
}

/// An etcd server command (scrubbed, dies with migrate, counted as an etcd).
pub fn etcd(bin: &Path) -> Cmd {
    Cmd::new(bin)
        .env_drop(etcd_var)
        .kill_with_parent()
        .record_peak_rss(&ETCD_PEAK_KIB)
}

/// An etcdctl/etcdutl command (scrubbed, dies with migrate, counted as a tool).
pub fn tool(bin: &Path) -> Cmd {
    Cmd::new(bin)
        .env_drop(etcd_var)
        .kill_with_parent()
        .record_peak_rss(&TOOL_PEAK_KIB)
}

/// Runs an etcd tool to completion and returns its stdout. It is killed after `timeout`
/// (etcdctl's own `--command-timeout` does not bound every command: `lease timetolive` against
/// an etcd that died mid-call was seen waiting 20 minutes), and as soon as `alive()` says the
/// etcd it talks to has gone.
pub fn run_tool(
    bin: &Path,
    args: &[OsString],
    env: &[(&str, &str)],
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<Vec<u8>, ProcessError> {
    let mut cmd = tool(bin).args(args).timeout(timeout);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.output_watched(&mut alive).map(|o| o.stdout)
}
