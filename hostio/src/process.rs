//! The one place either binary starts a program. A [`Cmd`] spells out what it runs (its
//! Display is a shell line a user can paste: explicit variables, then the quoted command), and
//! every failure carries that line, the exit status and the tail of stderr.
//!
//! Children are reaped with `wait4`, exactly once, so that their peak memory is known
//! ([`Cmd::record_peak_rss`]); a [`Child`] dropped before it exited is killed and reaped, so
//! nothing outlives its owner by accident. What a caller may add: a timeout, a liveness check
//! that kills the child when what it talks to has gone ([`Cmd::output_watched`]), an
//! environment with some inherited variables dropped ([`Cmd::env_drop`]; explicit
//! [`Cmd::env`] values always win), and `PR_SET_PDEATHSIG` ([`Cmd::kill_with_parent`]: Linux
//! ties it to the thread that forked, so only for children of a thread that outlives them).

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much of stderr a failure shows.
const STDERR_TAIL_BYTES: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run `{cmdline}`: {source}")]
    Spawn {
        cmdline: String,
        source: std::io::Error,
    },
    #[error("`{cmdline}` failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        cmdline: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmdline}` did not finish within {seconds} s; killed")]
    TimedOut { cmdline: String, seconds: u64 },
    #[error("`{cmdline}`: {why}; killed")]
    Stopped { cmdline: String, why: String },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- stderr (last lines) ---\n{}", stderr.trim_end())
    }
}

/// The last [`STDERR_TAIL_BYTES`] of `stderr`, from a line start where there is one.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let start = text.len().saturating_sub(STDERR_TAIL_BYTES);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    let cut = &text[start..];
    match (start > 0, cut.find('\n')) {
        (true, Some(nl)) if nl + 1 < cut.len() => cut[nl + 1..].to_string(),
        _ => cut.to_string(),
    }
}

/// A command to run.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
    env_drop: Option<fn(&str) -> bool>,
    current_dir: Option<PathBuf>,
    timeout: Option<Duration>,
    kill_with_parent: bool,
    peak_rss: Option<&'static AtomicU64>,
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.env {
            write!(
                f,
                "{}={} ",
                k.to_string_lossy(),
                shell_quote(&v.to_string_lossy())
            )?;
        }
        write!(f, "{}", shell_quote(&self.program.to_string_lossy()))?;
        for a in &self.args {
            write!(f, " {}", shell_quote(&a.to_string_lossy()))?;
        }
        Ok(())
    }
}

/// `s` as one shell word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            env_drop: None,
            current_dir: None,
            timeout: None,
            kill_with_parent: false,
            peak_rss: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Cmd {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable; applied after [`Cmd::env_clear`] and [`Cmd::env_drop`], so an
    /// explicit variable always reaches the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Cmd {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs with exactly the variables given by [`Cmd::env`].
    pub fn env_clear(mut self) -> Cmd {
        self.env_clear = true;
        self
    }

    /// Drops every inherited variable whose name `drop` matches.
    pub fn env_drop(mut self, drop: fn(&str) -> bool) -> Cmd {
        self.env_drop = Some(drop);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Cmd {
        self.current_dir = Some(dir.to_path_buf());
        self
    }

    /// Kills the child after `timeout` (the output calls then return [`ProcessError::TimedOut`]).
    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = Some(timeout);
        self
    }

    /// `PR_SET_PDEATHSIG(SIGKILL)`: the child dies when the thread that started it does (for
    /// a single-threaded caller, when the caller dies).
    pub fn kill_with_parent(mut self) -> Cmd {
        self.kill_with_parent = true;
        self
    }

    /// On reaping, raises `into` to the child's peak resident memory (KiB) if it is higher.
    pub fn record_peak_rss(mut self, into: &'static AtomicU64) -> Cmd {
        self.peak_rss = Some(into);
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        if self.env_clear {
            c.env_clear();
        }
        if let Some(drop) = self.env_drop {
            for (key, _) in std::env::vars_os() {
                if drop(&key.to_string_lossy()) {
                    c.env_remove(&key);
                }
            }
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(dir) = &self.current_dir {
            c.current_dir(dir);
        }
        if self.kill_with_parent {
            // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child
            // when its parent thread dies.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        c
    }

    /// Spawns with stdin null. A binary another thread has just written can be "busy" for a
    /// moment (ETXTBSY: a fork meanwhile holds a copy of the write descriptor until that child
    /// execs), so a few retries.
    fn spawn_with(&self, stdout: Stdio, stderr: Stdio) -> Result<Child, ProcessError> {
        let mut c = self.command();
        c.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let mut attempt = 0;
        loop {
            match c.spawn() {
                Ok(inner) => {
                    return Ok(Child {
                        inner,
                        status: None,
                        peak: self.peak_rss,
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 * attempt));
                }
                Err(source) => {
                    return Err(ProcessError::Spawn {
                        cmdline: self.to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// Runs to completion, stdout and stderr captured; a non-zero exit is an error.
    pub fn output(&self) -> Result<Output, ProcessError> {
        self.checked(self.captured(None)?)
    }

    /// Runs to completion, captured, whatever the exit status (for tools whose failure output
    /// is on stdout).
    pub fn output_any(&self) -> Result<Output, ProcessError> {
        self.captured(None)
    }

    /// [`Cmd::output`], killing the child as soon as `alive` returns an error (say, the server
    /// it talks to has exited): then [`ProcessError::Stopped`] with that reason.
    pub fn output_watched(
        &self,
        alive: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<Output, ProcessError> {
        self.checked(self.captured(Some(alive))?)
    }

    fn checked(&self, out: Output) -> Result<Output, ProcessError> {
        if out.status.success() {
            Ok(out)
        } else {
            Err(ProcessError::Failed {
                cmdline: self.to_string(),
                status: out.status.to_string(),
                stderr: tail(&out.stderr),
            })
        }
    }

    fn captured(
        &self,
        mut alive: Option<&mut dyn FnMut() -> Result<(), String>>,
    ) -> Result<Output, ProcessError> {
        let mut child = self.spawn_with(Stdio::piped(), Stdio::piped())?;
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
                .inner
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .inner
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let status = loop {
            if let Some(Err(why)) = alive.as_mut().map(|a| a()) {
                child.signal(libc::SIGKILL);
                let _ = child.wait();
                return Err(ProcessError::Stopped {
                    cmdline: self.to_string(),
                    why,
                });
            }
            if deadline.is_none() && alive.is_none() {
                // Nothing to watch: block until the exit.
                if let Some(s) = child.wait() {
                    break s;
                }
            }
            if let Some(s) = child.try_wait() {
                break s;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                child.signal(libc::SIGKILL);
                let _ = child.wait();
                return Err(ProcessError::TimedOut {
                    cmdline: self.to_string(),
                    seconds: self.timeout.map_or(0, |t| t.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    /// Starts the command in the background, stdout and stderr into `log` (created or
    /// truncated): for servers and long-running containers; the caller waits for or stops it.
    pub fn spawn_logged(&self, log: &Path) -> Result<Child, ProcessError> {
        let open = || -> std::io::Result<(Stdio, Stdio)> {
            let out = std::fs::File::create(log)?;
            Ok((Stdio::from(out.try_clone()?), Stdio::from(out)))
        };
        let (out, err) = open().map_err(|source| ProcessError::Spawn {
            cmdline: self.to_string(),
            source,
        })?;
        self.spawn_with(out, err)
    }
}

/// A started child, reaped with `wait4` exactly once; dropped while still running, it is
/// killed and reaped.
pub struct Child {
    inner: std::process::Child,
    status: Option<ExitStatus>,
    peak: Option<&'static AtomicU64>,
}

impl Child {
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    /// The exit status once the child has exited (it is reaped by the first call that sees it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        self.reap(libc::WNOHANG)
    }

    /// Blocks until the child exits.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        self.reap(0)
    }

    fn reap(&mut self, flags: libc::c_int) -> Option<ExitStatus> {
        loop {
            let mut raw = 0;
            // SAFETY: wait4 on our own child's pid with valid out-pointers.
            let (pid, ru) = unsafe {
                let mut ru: libc::rusage = std::mem::zeroed();
                let pid = libc::wait4(self.inner.id() as libc::pid_t, &mut raw, flags, &mut ru);
                (pid, ru)
            };
            if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if pid <= 0 {
                return None;
            }
            if let Some(peak) = self.peak {
                peak.fetch_max(ru.ru_maxrss as u64, Ordering::Relaxed);
            }
            self.status = Some(ExitStatus::from_raw(raw));
            return self.status;
        }
    }

    /// Sends `signal` unless the child was reaped already (its pid may be reused then).
    pub fn signal(&self, signal: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(self.inner.id() as libc::pid_t, signal) };
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
        if let Some(s) = self.try_wait() {
            return (Some(s), true);
        }
        self.signal(libc::SIGKILL);
        (self.reap(0), false)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(libc::SIGKILL);
            self.reap(0);
        }
    }
}

/// This process's own peak resident memory in KiB (`VmHWM`), 0 where unknown. Not
/// getrusage's `ru_maxrss`: that keeps the high-water mark of the image before exec, i.e. of
/// whatever forked us.
pub fn self_peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_the_command_the_status_and_stderr() {
        let err = Cmd::new("sh")
            .arg("-c")
            .arg("echo oops >&2; exit 3")
            .output()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`sh -c 'echo oops >&2; exit 3'` failed"),
            "{text}"
        );
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("oops"), "{text}");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = Cmd::new("/nonexistent/etcd").output().unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }));
    }

    #[test]
    fn a_timeout_and_a_dead_peer_kill_the_child() {
        let started = Instant::now();
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(200))
            .output()
            .unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
        let mut calls = 0;
        let err = Cmd::new("sleep")
            .arg("30")
            .output_watched(&mut || {
                calls += 1;
                if calls > 3 {
                    Err("etcd exited".into())
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(err.to_string().contains("etcd exited; killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    // guards: migrate's runner removed ETCDCTL_* after setting ETCDCTL_API=3, so an inherited
    // ETCDCTL_API dropped the explicit value too (etcdctl 3.0-3.3 then speak the v2 API).
    #[test]
    fn dropped_variables_never_take_an_explicit_one_with_them() {
        std::env::set_var("HOSTIO_TEST_DROP", "inherited");
        let out = Cmd::new("sh")
            .args(["-c", "echo \"$HOSTIO_TEST_DROP\""])
            .env_drop(|k| k.starts_with("HOSTIO_TEST_"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
        let out = Cmd::new("sh")
            .args(["-c", "echo \"$HOSTIO_TEST_DROP\""])
            .env_drop(|k| k.starts_with("HOSTIO_TEST_"))
            .env("HOSTIO_TEST_DROP", "explicit")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "explicit");
    }

    #[test]
    fn the_peak_memory_of_a_reaped_child_is_recorded() {
        static PEAK: AtomicU64 = AtomicU64::new(0);
        Cmd::new("true").record_peak_rss(&PEAK).output().unwrap();
        assert!(PEAK.load(Ordering::Relaxed) > 0);
        assert!(self_peak_rss_kib() > 0);
    }

    #[test]
    fn the_stderr_tail_starts_at_a_line() {
        let long: String = (0..500).map(|i| format!("line {i}\n")).collect();
        let t = tail(long.as_bytes());
        assert!(
            t.len() <= STDERR_TAIL_BYTES && t.starts_with("line "),
            "{}",
            &t[..20]
        );
        assert!(t.ends_with("line 499\n"));
    }
}
