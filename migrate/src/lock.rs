//! Who else is using the data directory.
//!
//! - A live etcd: etcd locks its files while it runs (bbolt takes a `flock` on
//!   `member/snap/db`, the WAL files carry open-file-description (`F_OFD_SETLK`) locks). migrate
//!   probes both without waiting and releases at once. A data dir in use is never touched:
//!   migrating it under a running etcd would corrupt it.
//! - Another migrate: [`DataDirLock`] is an exclusive `flock` on `.<name>.migrate-lock` beside the
//!   data dir, held for the whole run (recovery, plan, steps, binaries). It lives beside the data
//!   dir, not in it, because a step swaps the data dir by rename. A second migrate waits for it,
//!   bounded and saying so, then refuses naming the holder's pid. The holder removes the file
//!   before it unlocks; a waiter that then locks a removed file notices (the path no longer names
//!   the inode it locked) and locks again, so two runs never both hold it. A killed holder's
//!   lock goes with its process; its file is reused and removed by the next run.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn flock_held(path: &Path) -> io::Result<bool> {
    let file = match File::options().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a valid descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above; dropping the file would release it too.
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

fn ofd_lock_held(path: &Path) -> io::Result<bool> {
    let file = match File::options().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // SAFETY: zeroed is a valid `flock` struct; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // F_OFD_GETLK reports a conflicting lock without taking one.
    // SAFETY: fcntl with a pointer to a valid flock struct.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The first file of `data_dir` that a running etcd holds locked, if any, after a grace period
/// of up to `LOCK_GRACE` for an etcd that is exiting (e.g. the child of a migrate that was just
/// killed: the kernel delivers its PDEATHSIG asynchronously).
pub fn held_by_live_etcd(data_dir: &Path) -> io::Result<Option<PathBuf>> {
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match probe(data_dir)? {
            Some(p) if std::time::Instant::now() < deadline => {
                let _ = p;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other),
        }
    }
}

/// How long a held lock may take to go away before the data dir counts as in use.
pub const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn probe(data_dir: &Path) -> io::Result<Option<PathBuf>> {
    let db = data_dir.join("member/snap/db");
    if flock_held(&db)? {
        return Ok(Some(db));
    }
    let wal_dir = data_dir.join("member/wal");
    let mut wals: Vec<PathBuf> = match std::fs::read_dir(&wal_dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    wals.sort();
    for wal in wals.iter().rev() {
        if ofd_lock_held(wal)? || flock_held(wal)? {
            return Ok(Some(wal.clone()));
        }
    }
    Ok(None)
}

/// The exclusive hold of one migrate run on a data dir and its sidecars; released (and its file
/// removed) when dropped.
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("`{path}`: {source}")]
    Io { path: String, source: io::Error },
    #[error("another migrate ({holder}) has held `{path}` for {waited} s; it is migrating the same data dir")]
    Held {
        path: String,
        holder: String,
        waited: u64,
    },
}

/// The lock file of `data_dir`: `.<name>.migrate-lock` in its parent.
pub fn lock_path(data_dir: &Path) -> PathBuf {
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    parent.join(format!(".{name}.migrate-lock"))
}

impl DataDirLock {
    /// Takes the lock of `data_dir`, waiting up to `wait` for another migrate to release it
    /// (`log` says who holds it, once, then every 10 s).
    pub fn acquire(
        data_dir: &Path,
        wait: Duration,
        log: &dyn Fn(&str),
    ) -> Result<DataDirLock, LockError> {
        let path = lock_path(data_dir);
        let io_err = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            // A missing data dir is created with its parents (as the original did); its lock
            // needs the parent first.
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let started = Instant::now();
        let mut told = None::<Instant>;
        loop {
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err)?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                // The holder before us may have removed the file between our open and our lock:
                // then we hold a lock nobody else can see, and must lock the new file instead.
                let same = match std::fs::metadata(&path) {
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
                writeln!(file, "pid {}", std::process::id()).map_err(io_err)?;
                return Ok(DataDirLock { file, path });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(err));
            }
            // The holder writes its pid right after it locks: give it a moment.
            let mut holder = String::new();
            for _ in 0..10 {
                holder.clear();
                let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
                if !holder.trim().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let holder = match holder.trim() {
                "" => "a process that has not written its pid yet".to_string(),
                h => h.to_string(),
            };
            let waited = started.elapsed();
            if waited >= wait {
                return Err(LockError::Held {
                    path: path.display().to_string(),
                    holder,
                    waited: waited.as_secs(),
                });
            }
            if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                log(&format!(
                    "waiting for another migrate ({holder}) that holds `{}` (up to {} s more)",
                    path.display(),
                    (wait - waited).as_secs()
                ));
                told = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Remove, then unlock (closing the file unlocks it): see the module doc.
        let _ = std::fs::remove_file(&self.path);
        // SAFETY: flock on our own descriptor.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flock_on_the_db_is_seen_and_a_free_dir_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("member/snap")).unwrap();
        std::fs::create_dir_all(dir.path().join("member/wal")).unwrap();
        let db = dir.path().join("member/snap/db");
        std::fs::write(&db, b"x").unwrap();
        std::fs::write(
            dir.path()
                .join("member/wal/0000000000000000-0000000000000000.wal"),
            b"w",
        )
        .unwrap();
        assert_eq!(held_by_live_etcd(dir.path()).unwrap(), None);
        let holder = File::open(&db).unwrap();
        // SAFETY: flock on a valid descriptor.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
        assert_eq!(held_by_live_etcd(dir.path()).unwrap(), Some(db.clone()));
        drop(holder);
        assert_eq!(held_by_live_etcd(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_second_holder_waits_then_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data, Duration::ZERO, &|_| {}).unwrap();
        let said = std::cell::RefCell::new(Vec::new());
        let err = DataDirLock::acquire(&data, Duration::from_millis(300), &|m| {
            said.borrow_mut().push(m.to_string())
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(
            said.borrow()[0].contains("waiting for another migrate"),
            "{said:?}"
        );
        drop(first);
        assert!(!lock_path(&data).exists(), "the holder removes its file");
        let again = DataDirLock::acquire(&data, Duration::ZERO, &|_| {}).unwrap();
        drop(again);
    }
}
