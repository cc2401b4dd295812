//! The one place that spawns programs. Failures carry the command line, the exit status and the
//! tail of stderr, so that a user can rerun the command by hand.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Linux's "Text file busy" (`io::ErrorKind::ExecutableFileBusy` needs a newer MSRV).
const ETXTBSY: i32 = 26;

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
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- stderr (last lines) ---\n{}", stderr.trim_end())
    }
}

/// A command to run, with its environment spelled out for error messages.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
    current_dir: Option<std::path::PathBuf>,
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

fn shell_quote(s: &str) -> String {
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
            current_dir: None,
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

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Cmd {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs with exactly the variables given by [`Cmd::env`].
    pub fn env_clear(mut self) -> Cmd {
        self.env_clear = true;
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Cmd {
        self.current_dir = Some(dir.to_path_buf());
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        if self.env_clear {
            c.env_clear();
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(dir) = &self.current_dir {
            c.current_dir(dir);
        }
        c
    }

    /// Captures the output. A binary this process has just written can be "busy" for a moment
    /// (ETXTBSY): a fork by another thread while it was open for writing holds a copy of the
    /// write descriptor until that child execs. That passes; so a few retries, then the error.
    fn captured(&self) -> std::io::Result<Output> {
        let mut attempt = 0;
        loop {
            match self.command().stdin(Stdio::null()).output() {
                Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempt < 20 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
                }
                other => return other,
            }
        }
    }

    /// Runs to completion, capturing stdout and stderr; a non-zero exit is an error.
    pub fn output(&self) -> Result<Output, ProcessError> {
        let out = self.captured().map_err(|source| ProcessError::Spawn {
            cmdline: self.to_string(),
            source,
        })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed(&out))
        }
    }

    /// Runs to completion, capturing stdout and stderr, whatever the exit status (for tools
    /// whose failure output is on stdout).
    pub fn output_any(&self) -> Result<Output, ProcessError> {
        self.captured().map_err(|source| ProcessError::Spawn {
            cmdline: self.to_string(),
            source,
        })
    }

    /// Starts the command in the background, stdout and stderr into `log` (for daemons and
    /// long-running containers); the caller waits for or kills the child.
    pub fn spawn_logged(&self, log: &Path) -> Result<std::process::Child, ProcessError> {
        let spawn = || -> std::io::Result<std::process::Child> {
            let out = std::fs::File::create(log)?;
            self.command()
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
        };
        spawn().map_err(|source| ProcessError::Spawn {
            cmdline: self.to_string(),
            source,
        })
    }

    /// Runs with stderr passed through to ours (for long tools with their own progress).
    pub fn run_inherit_stderr(&self) -> Result<(), ProcessError> {
        let status = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|source| ProcessError::Spawn {
                cmdline: self.to_string(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(ProcessError::Failed {
                cmdline: self.to_string(),
                status: status.to_string(),
                stderr: String::new(),
            })
        }
    }

    fn failed(&self, out: &Output) -> ProcessError {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail_start = stderr.len().saturating_sub(STDERR_TAIL_BYTES);
        let tail_start = (tail_start..stderr.len())
            .find(|i| stderr.is_char_boundary(*i))
            .unwrap_or(stderr.len());
        ProcessError::Failed {
            cmdline: self.to_string(),
            status: out.status.to_string(),
            stderr: stderr[tail_start..].to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_shows_command_status_and_stderr() {
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
    fn missing_program_is_a_spawn_error() {
        let err = Cmd::new("/nonexistent/etcd").output().unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }));
    }
}
