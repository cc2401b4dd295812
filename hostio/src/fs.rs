//! Files other processes (or a later run of the same container) may see half-written: written
//! to a temp file beside their final name, fsynced, renamed into place, and the directory
//! fsynced, so that a crash at any moment leaves either the old file or the new one.
//!
//! Temp names are `.<name>.tmp-XXXXXX` with a random suffix, created with `O_EXCL` (tempfile
//! retries on a clash), never named after the pid alone: a container restarts its processes
//! with the same pids, and a temp file a killed run left would block every later run.
//! [`remove_stale_temps`] clears what a killed writer left, for callers that hold the lock of
//! the destination.
//!
//! New files get the mode an ordinary `open` gives under the process umask (0o666, or 0o777
//! for executables), set on the temp file before the rename, not tempfile's 0o600.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An I/O error and the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("`{}`: {source}", path.display())]
pub struct PathError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// `.at(path)` on an `io::Result`: the error with the path it is about.
pub trait IoResultExt<T> {
    fn at(self, path: &Path) -> Result<T, PathError>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, PathError> {
        self.map_err(|source| PathError {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The mode `open` gives a new file, and a new executable (the umask applies to both).
pub const FILE_MODE: u32 = 0o666;
pub const EXEC_MODE: u32 = 0o777;

/// The directory `path` lives in: its parent, or `.` for a bare name.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temp-name prefix for a file that will become `dest`: `.<name>.tmp-`.
fn temp_prefix(dest: &Path) -> String {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

/// A new temp file `<prefix>XXXXXX` in `dir` with `mode` under the umask (removed when dropped
/// unless persisted).
pub fn temp_file_in(dir: &Path, prefix: &str, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
}

/// A new temp file beside `dest` (`.<name>.tmp-XXXXXX`) with `mode` under the umask.
pub fn temp_file_beside(dest: &Path, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    temp_file_in(parent_dir(dest), &temp_prefix(dest), mode)
}

/// fsyncs `tmp`, renames it to `dest`, fsyncs `dest`'s directory.
pub fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    fsync_dir(parent_dir(dest))
}

/// Writes `bytes` to `path` atomically and durably, mode 0o666 under the umask. On an error
/// the temp file is gone and `path` is as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, FILE_MODE)
}

/// [`write_atomic`] with the file created as `mode` under the umask ([`EXEC_MODE`] for an
/// executable, as a compiler or `cp` of one would make it).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = temp_file_beside(path, mode)?;
    tmp.write_all(bytes)?;
    persist(tmp, path)
}

/// Replaces `dest` with a copy of `src` keeping `src`'s exact mode (no umask), atomically and
/// durably. Never writes through `dest`, which may be a hard link to something else.
pub fn copy_atomic(src: &Path, dest: &Path) -> io::Result<()> {
    let mode = fs::metadata(src)?.permissions().mode();
    let mut tmp = temp_file_beside(dest, FILE_MODE)?;
    io::copy(&mut File::open(src)?, tmp.as_file_mut())?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))?;
    persist(tmp, dest)
}

/// fsyncs a directory (after a create, rename or remove in it).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs every regular file under `dir`, then every directory, deepest first.
pub fn fsync_tree(dir: &Path) -> Result<(), PathError> {
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let d = dirs[i].clone();
        for e in fs::read_dir(&d).at(&d)? {
            let e = e.at(&d)?;
            let p = e.path();
            let kind = e.file_type().at(&p)?;
            if kind.is_dir() {
                dirs.push(p);
            } else if kind.is_file() {
                File::open(&p).and_then(|f| f.sync_all()).at(&p)?;
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        fsync_dir(d).at(d)?;
    }
    Ok(())
}

/// Removes a tree; a missing one is fine.
pub fn remove_tree(path: &Path) -> Result<(), PathError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.at(path),
    }
}

/// Removes the temp files a killed writer of `dest` left beside it (`.<name>.tmp-*`). The
/// caller must hold whatever lock guards `dest`, so that no live writer's temp file goes.
/// Returns how many were removed.
pub fn remove_stale_temps(dest: &Path) -> Result<usize, PathError> {
    let dir = parent_dir(dest);
    let prefix = temp_prefix(dest);
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(PathError {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    let mut removed = 0;
    for e in entries {
        let e = e.at(dir)?;
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let p = e.path();
            fs::remove_file(&p).at(&p)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_atomic_write_replaces_the_file_leaves_no_temp_and_follows_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("version.txt");
        write_atomic(&p, b"3.5.1/etcd3").unwrap();
        write_atomic(&p, b"3.6.17/etcd3").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"3.6.17/etcd3");
        let names: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["version.txt"]);
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o027) };
        let q = d.path().join("q");
        write_atomic(&q, b"x").unwrap();
        let e = d.path().join("e");
        write_atomic_mode(&e, b"x", EXEC_MODE).unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        assert_eq!(mode(&q), 0o640);
        assert_eq!(mode(&e), 0o750);
    }

    // guards: a temp file named after the pid (`.version.txt.tmp.1`) that a killed run left
    // made every later run with the same pid fail with EEXIST.
    #[test]
    fn a_stale_temp_file_of_a_killed_writer_blocks_nothing_and_can_be_cleared() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("version.txt");
        let stale = d.path().join(".version.txt.tmp-1");
        fs::write(&stale, b"half").unwrap();
        fs::write(d.path().join(".version.txt.tmp.1"), b"old style").unwrap();
        write_atomic(&p, b"3.6.17/etcd3").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"3.6.17/etcd3");
        assert_eq!(remove_stale_temps(&p).unwrap(), 1);
        assert!(!stale.exists());
    }

    #[test]
    fn a_copy_keeps_the_source_mode_and_never_writes_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let (src, dest, other) = (
            d.path().join("etcd-3.6.17"),
            d.path().join("etcd"),
            d.path().join("etcd-3.5.36"),
        );
        fs::write(&src, b"new").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o555)).unwrap();
        fs::write(&other, b"old").unwrap();
        fs::hard_link(&other, &dest).unwrap();
        copy_atomic(&src, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read(&other).unwrap(), b"old");
        assert_eq!(mode(&dest), 0o555);
    }

    #[test]
    fn errors_name_their_path() {
        let err = fs::read("/nonexistent/x").at(Path::new("/nonexistent/x"));
        assert!(err
            .unwrap_err()
            .to_string()
            .starts_with("`/nonexistent/x`: "));
    }
}
