//! Who else is using the data directory.
//!
//! - A live etcd: etcd locks its files while it runs (bbolt takes a `flock` on
//!   `member/snap/db`, the WAL files carry open-file-description (`F_OFD_SETLK`) locks). migrate
//!   probes both without waiting and releases at once. A data dir in use is never touched:
//!   migrating it under a running etcd would corrupt it.
//! - Another migrate: [`DataDirLock`] is an exclusive `flock` on `.migrate/lock` inside the data
//!   dir, held for the whole run (recovery, plan, steps, binaries). It lives in the data dir's
//!   own filesystem (a step swaps `member/`, never the data dir itself). A second migrate waits for it,
//!   bounded and saying so, then refuses naming the holder's pid. The holder removes the file
//!   before it unlocks; a waiter that then locks a removed file notices (the path no longer names
//!   the inode it locked) and locks again, so two runs never both hold it. A killed holder's
//!   lock goes with its process; its file is reused and removed by the next run.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostio::lock::flock_held;

fn ofd_lock_held(path: &Path) -> io::Result<bool> {
    // Read only: F_OFD_GETLK tests without locking, and a read-only data dir must be probed too.
    let file = match File::open(path) {
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
    _held: hostio::lock::Held,
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

impl From<hostio::lock::LockError> for LockError {
    fn from(e: hostio::lock::LockError) -> Self {
        match e {
            hostio::lock::LockError::Io { path, source } => LockError::Io {
                path: path.display().to_string(),
                source,
            },
            hostio::lock::LockError::Timeout {
                holder,
                path,
                waited,
                ..
            } => LockError::Held {
                path: path.display().to_string(),
                holder,
                waited,
            },
        }
    }
}

/// The lock file of `data_dir`: `.migrate/lock` inside it, on the data's own filesystem (a
/// lock beside a mount point would live in a container's own rootfs and exclude nothing
/// across containers). Taking it creates the data dir if it is missing.
pub fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join(crate::engine::WORK_DIR).join("lock")
}

impl DataDirLock {
    /// Takes the lock of `data_dir`, waiting up to `wait` for another migrate to release it
    /// (`log` says who holds it, once, then every 10 s). Its file holds `pid <n>` only: the
    /// command line may hold credentials (`--etcd-server-extra-args`), and the file is readable.
    pub fn acquire(
        data_dir: &Path,
        wait: Duration,
        log: &dyn Fn(&str),
    ) -> Result<DataDirLock, LockError> {
        let path = lock_path(data_dir);
        let opts = hostio::lock::LockOptions {
            what: "the data dir",
            timeout: wait,
            holder: hostio::lock::holder_pid(),
            remove_on_release: true,
        };
        let held = hostio::lock::acquire(&path, &opts, &|b| {
            log(&format!(
                "waiting for another migrate ({}) that holds `{}` (up to {} s more)",
                b.holder,
                b.path.display(),
                b.left.as_secs()
            ))
        })?;
        Ok(DataDirLock { _held: held })
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
