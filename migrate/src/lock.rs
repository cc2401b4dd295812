//! Is a live etcd using the data directory? etcd locks its files while it runs: bbolt takes a
//! `flock` on `member/snap/db`, and the WAL files carry open-file-description (`F_OFD_SETLK`)
//! locks. migrate probes both the same way, without waiting, and releases at once. A data dir
//! in use is never touched: migrating it under a running etcd would corrupt it.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

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
}
