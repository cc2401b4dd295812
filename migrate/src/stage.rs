//! The working copy a step runs etcd on, in the data dir's work area, and the disk space it
//! needs.
//!
//! An upgrade never lets the new etcd open the data dir itself: it runs on a copy of `member/`
//! staged at `.migrate/new`, and `member/` is swapped for the verified copy by rename. So the
//! original is untouched until the swap, and undoing a failed step is deleting the copy. The
//! copy keeps every file's and directory's owner and mode (a root migrate on data owned by
//! etcd's user must not swap in root-owned files).
//!
//! Staging copies what etcd writes and hard-links what it never writes:
//! - hard links: closed WAL segments (`member/wal/*.wal` but the newest; etcd only appends to the
//!   newest, and only deletes the others) and v2 snap files (`member/snap/*.snap`, written once);
//! - copies (reflink where the filesystem can, else `copy_file_range`): the bbolt file, the newest
//!   WAL segment, everything else;
//! - skipped: the WAL's preallocated `*.tmp` segments (etcd makes new ones).
//!
//! Before any of it, [`check_space`] compares the filesystem's free space with what the step
//! needs and refuses the step when it is short, so a full disk is found before any work.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hostio::fs::{IoResultExt, PathError};

/// How etcd grows a WAL: one preallocated 64 MB segment at a time.
pub const WAL_SEGMENT_BYTES: u64 = 64 * 1000 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("not enough free space on the filesystem of `{dir}` for {what}: it needs {need} bytes ({breakdown}), {available} are available; the data dir was not changed")]
    NoSpace {
        dir: PathBuf,
        what: String,
        need: u64,
        available: u64,
        breakdown: String,
    },
}

impl From<PathError> for StageError {
    fn from(e: PathError) -> Self {
        StageError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// What staging a data dir does with each of its files.
#[derive(Debug, Default)]
pub struct StagePlan {
    /// Directories (relative), parents first.
    dirs: Vec<PathBuf>,
    /// Files to copy; `Some(n)`: only the first n bytes hold data (the newest WAL segment),
    /// the rest of its length is left as a hole, which reads as the zeros etcd preallocated.
    copies: Vec<(PathBuf, Option<u64>)>,
    links: Vec<PathBuf>,
    symlinks: Vec<PathBuf>,
    /// Bytes the copies take.
    pub copy_bytes: u64,
    /// Bytes of the bbolt file.
    pub db_bytes: u64,
}

fn is_wal(rel: &Path) -> bool {
    rel.parent() == Some(Path::new("member/wal")) && rel.extension().is_some_and(|x| x == "wal")
}

/// Decides, for every file under the data dir's `member/`, whether staging copies or links it
/// (nothing else of the data dir is staged: version.txt is written by the swap, and other
/// entries, such as a filesystem's `lost+found`, are not etcd's).
pub fn plan(data_dir: &Path) -> Result<StagePlan, StageError> {
    let mut plan = StagePlan::default();
    let mut files: Vec<(PathBuf, u64)> = Vec::new();
    let mut stack = vec![PathBuf::from("member")];
    plan.dirs.push(PathBuf::from("member"));
    while let Some(rel) = stack.pop() {
        let dir = data_dir.join(&rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .at(&dir)?
            .collect::<Result<_, _>>()
            .at(&dir)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let child = rel.join(e.file_name());
            let ft = e.file_type().at(&e.path())?;
            if ft.is_dir() {
                plan.dirs.push(child.clone());
                stack.push(child);
            } else if ft.is_symlink() {
                plan.symlinks.push(child);
            } else if ft.is_file() {
                let len = e.metadata().at(&e.path())?.len();
                files.push((child, len));
            }
        }
    }
    plan.dirs.sort();
    let newest_wal = files
        .iter()
        .filter(|(p, _)| is_wal(p))
        .map(|(p, _)| p.clone())
        .max();
    for (rel, len) in files {
        let in_wal_dir = rel.parent() == Some(Path::new("member/wal"));
        if in_wal_dir && rel.extension().is_some_and(|x| x == "tmp") {
            continue;
        }
        let snap = rel.parent() == Some(Path::new("member/snap"))
            && rel.extension().is_some_and(|x| x == "snap");
        if snap || (is_wal(&rel) && Some(&rel) != newest_wal.as_ref()) {
            plan.links.push(rel);
        } else if is_wal(&rel) {
            let path = data_dir.join(&rel);
            let used = crate::raftlog::used_length(&path).at(&path)?;
            plan.copy_bytes += used;
            plan.copies.push((rel, Some(used)));
        } else {
            if rel == Path::new("member/snap/db") {
                plan.db_bytes = len;
            }
            plan.copy_bytes += len;
            plan.copies.push((rel, None));
        }
    }
    Ok(plan)
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn available(dir: &Path) -> io::Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statvfs fills the struct it is given for a NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// Refuses `what` unless the filesystem of `dir` has `parts` (bytes, and what each is for)
/// plus a margin free. The margin covers etcd growing the bbolt file while it runs.
pub fn check_space(dir: &Path, what: &str, parts: &[(u64, &str)]) -> Result<u64, StageError> {
    let data: u64 = parts.iter().map(|(b, _)| b).sum();
    let margin = (data / 20).max(16 << 20);
    let need = data + margin;
    let available = available(dir).at(dir)?;
    if available < need {
        let mut breakdown: Vec<String> = parts.iter().map(|(b, w)| format!("{w} {b}")).collect();
        breakdown.push(format!("margin {margin}"));
        return Err(StageError::NoSpace {
            dir: dir.to_path_buf(),
            what: what.into(),
            need,
            available,
            breakdown: breakdown.join(" + "),
        });
    }
    Ok(need)
}

/// Copies `from` to `to` (a new file), sharing extents when the filesystem can (FICLONE), else
/// with `copy_file_range`; keeps the mode.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let src = fs::File::open(from)?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    // The platform's own FICLONE (`_IOW(0x94, 9, int)`, whose direction bits differ on
    // powerpc: a hard-coded x86 value never reflinked on ppc64le).
    // SAFETY: ioctl on two descriptors we own; failure leaves `dst` empty.
    let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
    if !cloned {
        drop(dst);
        fs::remove_file(to)?;
        // std's copy uses copy_file_range on Linux (no bytes through user space).
        fs::copy(from, to)?;
    } else {
        dst.set_permissions(fs::metadata(from)?.permissions())?;
    }
    Ok(())
}

/// Copies the first `used` bytes of `from` to the new file `to` and gives it `from`'s length
/// and mode; the rest is a hole.
fn copy_prefix(from: &Path, to: &Path, used: u64) -> io::Result<()> {
    use std::io::Read;
    let mut src = fs::File::open(from)?;
    let meta = src.metadata()?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    // std copies File to File with copy_file_range, a `take` included.
    io::copy(&mut (&mut src).take(used), &mut dst)?;
    dst.set_len(meta.len())?;
    dst.set_permissions(meta.permissions())
}

/// Stages `data_dir` into the new directory `new_dir` as `plan` says; the new dir gets the data
/// dir's mode (and owner, when we are root). Nothing is fsynced yet ([`make_durable`] does it
/// before the swap: until then the copy is scratch).
pub fn stage(plan: &StagePlan, data_dir: &Path, new_dir: &Path) -> Result<(), StageError> {
    let meta = fs::metadata(data_dir).at(data_dir)?;
    fs::create_dir(new_dir).at(new_dir)?;
    copy_owner_and_mode(&meta, new_dir)?;
    for rel in &plan.dirs {
        let (src, dst) = (data_dir.join(rel), new_dir.join(rel));
        fs::create_dir(&dst).at(&dst)?;
        copy_owner_and_mode(&fs::metadata(&src).at(&src)?, &dst)?;
    }
    for rel in &plan.links {
        let (src, dst) = (data_dir.join(rel), new_dir.join(rel));
        fs::hard_link(&src, &dst).at(&dst)?;
    }
    for (rel, used) in &plan.copies {
        let (src, dst) = (data_dir.join(rel), new_dir.join(rel));
        match used {
            None => copy_file(&src, &dst),
            Some(used) => copy_prefix(&src, &dst, *used),
        }
        .at(&dst)?;
        copy_owner_and_mode(&fs::metadata(&src).at(&src)?, &dst)?;
    }
    for rel in &plan.symlinks {
        let (src, dst) = (data_dir.join(rel), new_dir.join(rel));
        let target = fs::read_link(&src).at(&src)?;
        std::os::unix::fs::symlink(target, &dst).at(&dst)?;
    }
    Ok(())
}

/// Gives `path` the mode of `meta`, and its owner when that differs and we may change it.
pub fn copy_owner_and_mode(meta: &fs::Metadata, path: &Path) -> Result<(), StageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(meta.permissions().mode())).at(path)?;
    copy_owner(meta, path)
}

/// Every file and directory under `dir` (and `dir`) gets the owner of `meta`: what a restore
/// (run by root) writes for data owned by another user.
pub fn copy_owner_tree(meta: &fs::Metadata, dir: &Path) -> Result<(), StageError> {
    copy_owner(meta, dir)?;
    for e in fs::read_dir(dir).at(dir)? {
        let p = e.at(dir)?.path();
        if fs::symlink_metadata(&p).at(&p)?.is_dir() {
            copy_owner_tree(meta, &p)?;
        } else {
            copy_owner(meta, &p)?;
        }
    }
    Ok(())
}

/// Gives `path` the owner of `meta` when that differs (possible for root only; for anyone
/// else every file is theirs already).
pub fn copy_owner(meta: &fs::Metadata, path: &Path) -> Result<(), StageError> {
    let st = fs::symlink_metadata(path).at(path)?;
    if (st.uid(), st.gid()) != (meta.uid(), meta.gid()) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: lchown on a path we just created.
        if unsafe { libc::lchown(c.as_ptr(), meta.uid(), meta.gid()) } != 0 {
            return Err(Err::<(), _>(io::Error::last_os_error())
                .at(path)
                .unwrap_err()
                .into());
        }
    }
    Ok(())
}

/// fsyncs every file and directory under `dir` (files first, then their directories).
pub fn make_durable(dir: &Path) -> Result<(), StageError> {
    Ok(hostio::fs::fsync_tree(dir)?)
}

/// The total size of the regular files under `dir`.
pub fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                total += e.metadata()?.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_links_closed_segments_and_copies_what_etcd_writes() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        for dir in ["member/wal", "member/snap"] {
            fs::create_dir_all(data.join(dir)).unwrap();
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
        let write = |rel: &str, bytes: &[u8]| fs::write(data.join(rel), bytes).unwrap();
        write("version.txt", b"3.4.23/etcd3");
        write("member/snap/db", &[1u8; 10_000]);
        write(
            "member/snap/0000000000000002-0000000000002711.snap",
            b"snap",
        );
        write("member/wal/0000000000000000-0000000000000000.wal", b"old");
        write(
            "member/wal/0000000000000001-0000000000002712.wal",
            b"newest",
        );
        write("member/wal/0.tmp", &[0u8; 1000]);
        let plan = plan(&data).unwrap();
        let new = d.path().join(".data.migrate-new");
        stage(&plan, &data, &new).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        for (rel, linked) in [
            ("member/wal/0000000000000000-0000000000000000.wal", true),
            ("member/snap/0000000000000002-0000000000002711.snap", true),
            ("member/wal/0000000000000001-0000000000002712.wal", false),
            ("member/snap/db", false),
        ] {
            assert_eq!(ino(&data.join(rel)) == ino(&new.join(rel)), linked, "{rel}");
            assert_eq!(
                fs::read(data.join(rel)).unwrap(),
                fs::read(new.join(rel)).unwrap()
            );
        }
        assert!(!new.join("member/wal/0.tmp").exists());
        assert_eq!(
            fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(plan.db_bytes, 10_000);
        // version.txt is not staged: the swap writes it.
        assert!(!new.join("version.txt").exists());
        assert_eq!(plan.copy_bytes, 10_000 + 6);
        // A second stage onto an existing copy is refused, never merged.
        assert!(stage(&plan, &data, &new).is_err());
        make_durable(&new).unwrap();
    }

    #[test]
    fn a_short_filesystem_is_refused_with_the_figures() {
        let d = tempfile::tempdir().unwrap();
        let err = check_space(d.path(), "the upgrade", &[(u64::MAX / 4, "copy of the db")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not enough free space"), "{err}");
        assert!(err.contains("copy of the db"), "{err}");
        assert!(check_space(d.path(), "x", &[(1, "y")]).is_ok());
    }
}
