//! The one place migrate starts programs (etcd, etcdctl, etcdutl).
//!
//! Every child gets the environment scrubbed of `ETCD_*`/`ETCDCTL_*` (etcd reads them as flags
//! and refuses to start when one conflicts with a command-line flag; `ETCD_UNSUPPORTED_ARCH`
//! is kept), dies with migrate (`PR_SET_PDEATHSIG`), and is reaped with `wait4` so that its peak
//! memory is known (the JSON report carries it).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The largest peak RSS (KiB) of any etcd, and of any etcdctl/etcdutl, migrate ran.
static ETCD_PEAK_KIB: AtomicU64 = AtomicU64::new(0);
static TOOL_PEAK_KIB: AtomicU64 = AtomicU64::new(0);

/// Peak resident memory in KiB: migrate itself, the largest etcd, the largest etcdctl/etcdutl.
pub fn peak_rss_kib() -> (u64, u64, u64) {
    // VmHWM, not getrusage's ru_maxrss: the latter keeps the high-water mark of the image
    // before exec, i.e. of whatever forked us, which says nothing about migrate.
    let own = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    (
        own,
        ETCD_PEAK_KIB.load(Ordering::Relaxed),
        TOOL_PEAK_KIB.load(Ordering::Relaxed),
    )
}

/// What kind of program a child is, for the peak-memory figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    Tool,
}

/// Removes `ETCD_*` (but `ETCD_UNSUPPORTED_ARCH`) and `ETCDCTL_*` from `cmd`'s environment.
pub fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("ETCD_") && k != "ETCD_UNSUPPORTED_ARCH") || k.starts_with("ETCDCTL_") {
            cmd.env_remove(&key);
        }
    }
}

/// A started child that is reaped by `wait4`.
pub struct Spawned {
    child: Child,
    kind: Kind,
    status: Option<ExitStatus>,
}

impl Spawned {
    /// Starts `cmd` (env scrubbed, PDEATHSIG set).
    pub fn start(mut cmd: Command, kind: Kind) -> std::io::Result<Spawned> {
        scrub_env(&mut cmd);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when we
        // die, so an interrupted migrate never leaves an etcd running on the data.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = spawn_retrying(&mut cmd)?;
        Ok(Spawned {
            child,
            kind,
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// The exit status once the child has exited (reaped on the first call that sees it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        self.reap(libc::WNOHANG)
    }

    fn reap(&mut self, flags: libc::c_int) -> Option<ExitStatus> {
        let mut raw = 0;
        // SAFETY: wait4 on our own child's pid with valid out-pointers.
        let (pid, ru) = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            let pid = libc::wait4(self.child.id() as libc::pid_t, &mut raw, flags, &mut ru);
            (pid, ru)
        };
        if pid <= 0 {
            return None;
        }
        let peak = match self.kind {
            Kind::Etcd => &ETCD_PEAK_KIB,
            Kind::Tool => &TOOL_PEAK_KIB,
        };
        peak.fetch_max(ru.ru_maxrss as u64, Ordering::Relaxed);
        self.status = Some(ExitStatus::from_raw(raw));
        self.status
    }

    /// Sends `signal` unless the child was reaped already (its pid may be reused then).
    pub fn signal(&self, signal: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }

    /// Waits up to `grace` for an exit, then SIGKILLs; returns the status and whether the
    /// child exited by itself within the grace period.
    pub fn wait_or_kill(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return (Some(s), true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal(libc::SIGKILL);
        (self.reap(0), false)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(libc::SIGKILL);
            self.reap(0);
        }
    }
}

/// `spawn`, retried briefly on ETXTBSY: a binary another thread just finished writing may still
/// be open for writing in a child forked meanwhile.
fn spawn_retrying(cmd: &mut Command) -> std::io::Result<Child> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("running `{cmd}`: {message}")]
    Failed { cmd: String, message: String },
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
) -> Result<Vec<u8>, ToolError> {
    let cmd_line = format!(
        "{} {}",
        bin.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let fail = |message: String| ToolError::Failed {
        cmd: cmd_line.clone(),
        message,
    };
    let mut command = Command::new(bin);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = Spawned::start(command, Kind::Tool).map_err(|e| fail(e.to_string()))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .take_stdout()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .take_stderr()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Err(why) = alive() {
            child.signal(libc::SIGKILL);
            let _ = child.wait_or_kill(Duration::from_secs(1));
            return Err(fail(format!("{why}; killed")));
        }
        if let Some(status) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.wait_or_kill(Duration::ZERO);
            return Err(fail(format!(
                "did not finish within {} s; killed",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(&err);
        let tail: Vec<&str> = text.trim().lines().rev().take(10).collect();
        return Err(fail(format!(
            "{status}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(out)
}
