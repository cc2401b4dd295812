//! Exclusive advisory locks (`flock`) on small files, for what two etcdimg processes may write at
//! once: an OCI layout's index.json, and each cache entry while it is being produced.
//!
//! A lock file is never removed (removing one races with a waiter that opened it), so its only
//! content is who holds it now: `pid <n>: <command line>`, written after locking, read by a
//! waiter for its message. Waits are bounded; a waiter says on stderr (through `notify`) what it
//! waits for and who holds it, once and then every 10 s. A holder that dies releases its lock
//! with its process, so a kill -9 never leaves a lock behind.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what} is still locked by {holder} after {waited} s (lock file `{path}`)")]
    Timeout {
        what: String,
        holder: String,
        path: PathBuf,
        waited: u64,
    },
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct Held {
    file: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: flock on our own descriptor (closing it would release the lock as well).
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// How long lock waits may last: `ETCDIMG_LOCK_TIMEOUT` seconds, else 10 minutes.
pub fn default_timeout() -> Duration {
    std::env::var("ETCDIMG_LOCK_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(600))
}

/// Who we are, for the lock file: `pid <n>: etcdimg build --arch amd64`.
fn holder_line() -> String {
    let args: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 {
                Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(a)
            } else {
                a
            }
        })
        .collect();
    format!("pid {}: {}", std::process::id(), args.join(" "))
}

/// Takes the exclusive lock on `path` (created if missing, with the umask's mode), waiting up
/// to `timeout` for another holder. `what` names the guarded thing in messages.
pub fn acquire(
    path: &Path,
    what: &str,
    timeout: Duration,
    notify: &dyn Fn(&str),
) -> Result<Held, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err)?;
    let started = Instant::now();
    let mut told: Option<Instant> = None;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            file.set_len(0).map_err(io_err)?;
            file.rewind().map_err(io_err)?;
            writeln!(file, "{}", holder_line()).map_err(io_err)?;
            return Ok(Held { file });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err(err));
        }
        let mut holder = String::new();
        let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
        let holder = match holder.trim() {
            "" => "another process".to_string(),
            h => h.to_string(),
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(LockError::Timeout {
                what: what.into(),
                holder,
                path: path.to_path_buf(),
                waited: waited.as_secs(),
            });
        }
        if told.map_or(true, |t| t.elapsed() >= Duration::from_secs(10)) {
            notify(&format!(
                "for {what}, held by {holder} (up to {} s more)",
                (timeout - waited).as_secs()
            ));
            told = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_says_who_holds_it_and_gives_up_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let first = acquire(&path, "the test layout", Duration::ZERO, &|_| {}).unwrap();
        let said = std::sync::Mutex::new(Vec::new());
        let err = acquire(&path, "the test layout", Duration::from_millis(200), &|m| {
            said.lock().unwrap().push(m.to_string())
        })
        .unwrap_err()
        .to_string();
        let me = format!("pid {}", std::process::id());
        assert!(
            err.contains(&me) && err.contains("the test layout"),
            "{err}"
        );
        assert!(said.lock().unwrap()[0].contains(&me), "{said:?}");
        drop(first);
        let again = acquire(&path, "the test layout", Duration::ZERO, &|_| {});
        assert!(again.is_ok());
    }
}
