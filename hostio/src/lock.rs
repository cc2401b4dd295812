//! Exclusive advisory locks (`flock`) on small files, with bounded waits that say who holds
//! them.
//!
//! After locking, the holder writes who it is into the file (`pid <n>`, or with its command
//! line); a waiter reads that for its messages: once when it starts waiting, then every 10 s,
//! and in the error when its wait runs out. A holder that dies releases its lock with its
//! process, so a kill -9 never leaves a lock behind.
//!
//! A lock file may be removed on release ([`LockOptions::remove_on_release`]): then the
//! holder removes it before unlocking, and a waiter that locked the removed file (it opened it
//! before the removal) notices that the path names another file now and locks again. Files
//! that are never removed need none of that, and the check costs one `stat`.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("`{}`: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{what} is still locked by {holder} after {waited} s (lock file `{}`)", path.display())]
    Timeout {
        what: String,
        holder: String,
        path: PathBuf,
        waited: u64,
    },
}

/// How to take a lock.
pub struct LockOptions<'a> {
    /// What the lock guards, for messages.
    pub what: &'a str,
    /// The longest wait for another holder (zero: one try).
    pub timeout: Duration,
    /// What this process writes into the file for waiters ([`holder_pid`],
    /// [`holder_command_line`]).
    pub holder: String,
    /// Remove the file on release (before unlocking).
    pub remove_on_release: bool,
}

/// Another process holds the lock: what `notify` is told, once, then every 10 s.
pub struct Busy<'a> {
    pub what: &'a str,
    pub holder: &'a str,
    pub path: &'a Path,
    /// How much longer this waiter will wait.
    pub left: Duration,
}

/// A held lock; when dropped its file is removed (if asked), then it is unlocked.
#[derive(Debug)]
pub struct Held {
    file: File,
    path: PathBuf,
    remove: bool,
}

impl Held {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
        // SAFETY: flock on our own descriptor (closing it would release the lock as well).
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// `pid <n>`.
pub fn holder_pid() -> String {
    format!("pid {}", std::process::id())
}

/// `pid <n>: etcdimg build --arch amd64` (the program's file name and its arguments).
pub fn holder_command_line() -> String {
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
    format!("{}: {}", holder_pid(), args.join(" "))
}

/// Takes the exclusive lock on `path`, creating it (and its parent directories) with the
/// umask's mode, waiting up to `opts.timeout` for another holder; see the module doc.
pub fn acquire(
    path: &Path,
    opts: &LockOptions<'_>,
    notify: &dyn Fn(&Busy<'_>),
) -> Result<Held, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let started = Instant::now();
    let mut told: Option<Instant> = None;
    loop {
        // Each time: a holder that removes its file may remove an emptied parent too.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let mut file = match File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
        {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other.map_err(io_err)?,
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // The holder before us may have removed the file between our open and our lock:
            // then we hold a lock nobody else can see, and must lock the new file instead.
            let same = match std::fs::metadata(path) {
                Ok(m) => {
                    let ours = file.metadata().map_err(io_err)?;
                    m.ino() == ours.ino() && m.dev() == ours.dev()
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_err(e)),
            };
            if !same {
                continue;
            }
            file.set_len(0).map_err(io_err)?;
            file.rewind().map_err(io_err)?;
            writeln!(file, "{}", opts.holder).map_err(io_err)?;
            return Ok(Held {
                file,
                path: path.to_path_buf(),
                remove: opts.remove_on_release,
            });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err(err));
        }
        let holder = read_holder(&mut file);
        let waited = started.elapsed();
        if waited >= opts.timeout {
            return Err(LockError::Timeout {
                what: opts.what.into(),
                holder,
                path: path.to_path_buf(),
                waited: waited.as_secs(),
            });
        }
        if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            notify(&Busy {
                what: opts.what,
                holder: &holder,
                path,
                left: opts.timeout - waited,
            });
            told = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Who holds the lock on `file`, as it wrote: a holder writes right after it locks, so an empty
/// file is read again for a moment.
fn read_holder(file: &mut File) -> String {
    let mut holder = String::new();
    for _ in 0..10 {
        holder.clear();
        let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
        if !holder.trim().is_empty() {
            return holder.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    "a process that has not said who it is yet".to_string()
}

/// Whether another open file description holds a `flock` on `path` (tries a non-blocking
/// exclusive lock and releases it at once). A missing file is not held.
pub fn flock_held(path: &Path) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return Ok(false);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(true)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(timeout: Duration, remove: bool) -> LockOptions<'static> {
        LockOptions {
            what: "the test layout",
            timeout,
            holder: holder_command_line(),
            remove_on_release: remove,
        }
    }

    #[test]
    fn a_second_holder_waits_says_who_holds_it_and_gives_up_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/.lock");
        let first = acquire(&path, &opts(Duration::ZERO, false), &|_| {}).unwrap();
        let said = std::sync::Mutex::new(Vec::new());
        let err = acquire(&path, &opts(Duration::from_millis(200), false), &|b| {
            said.lock().unwrap().push(b.holder.to_string())
        })
        .unwrap_err()
        .to_string();
        let me = format!("pid {}", std::process::id());
        assert!(
            err.contains(&me) && err.contains("the test layout"),
            "{err}"
        );
        assert!(said.lock().unwrap()[0].contains(&me), "{said:?}");
        assert!(flock_held(&path).unwrap());
        drop(first);
        assert!(!flock_held(&path).unwrap());
        assert!(path.exists(), "a kept lock file stays");
        assert!(acquire(&path, &opts(Duration::ZERO, false), &|_| {}).is_ok());
    }

    #[test]
    fn a_removed_lock_file_is_gone_after_release_and_can_be_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".data.migrate-lock");
        let first = acquire(&path, &opts(Duration::ZERO, true), &|_| {}).unwrap();
        assert!(acquire(&path, &opts(Duration::ZERO, true), &|_| {}).is_err());
        drop(first);
        assert!(!path.exists(), "the holder removes its file");
        let again = acquire(&path, &opts(Duration::ZERO, true), &|_| {}).unwrap();
        drop(again);
        assert!(!flock_held(&path).unwrap());
    }
}
