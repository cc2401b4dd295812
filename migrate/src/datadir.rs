//! The data directory and its version.txt. Writes are atomic and durable: temp file, fsync,
//! rename, fsync the directory; and only when the content changes. (The original overwrote
//! version.txt in place without fsync, and a full disk left it empty: k/k#98989.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::version::VersionPair;

pub const VERSION_FILE: &str = "version.txt";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory `{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("failed to parse etcd '<version>/<storage-version>' string from version.txt file contents '{contents}' in `{path}`: {message}")]
    Malformed {
        path: PathBuf,
        contents: String,
        message: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    pub fn new(path: &Path) -> DataDir {
        DataDir {
            path: path.to_path_buf(),
        }
    }

    pub fn version_path(&self) -> PathBuf {
        self.path.join(VERSION_FILE)
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Creates the directory (and parents) with 0777 before umask, as the original did.
    pub fn create(&self) -> Result<(), DataDirError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o777)
            .create(&self.path)
            .map_err(io_at(&self.path))
    }

    /// True if the directory is missing or has no entries at all (hidden ones count).
    pub fn is_empty(&self) -> Result<bool, DataDirError> {
        match fs::read_dir(&self.path) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(DataDirError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    /// The version.txt contents, or `None` when there is no version.txt.
    pub fn read_version(&self) -> Result<Option<VersionPair>, DataDirError> {
        let path = self.version_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DataDirError::Io { path, source: e }),
        };
        VersionPair::parse(&text)
            .map(Some)
            .map_err(|message| DataDirError::Malformed {
                path,
                contents: text.chars().take(200).collect(),
                message,
            })
    }

    /// Writes version.txt atomically; returns false (and writes nothing) when it already says so.
    pub fn write_version(&self, pair: &VersionPair) -> Result<bool, DataDirError> {
        let content = pair.to_string();
        let path = self.version_path();
        if fs::read_to_string(&path)
            .map(|t| t == content)
            .unwrap_or(false)
        {
            return Ok(false);
        }
        write_atomic(&path, content.as_bytes(), 0o666)?;
        Ok(true)
    }
}

/// fsyncs a directory (after a rename in it).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// temp file (mode before umask), write, fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::VersionPair;
    use std::os::unix::fs::PermissionsExt;

    fn fixture_with_version() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("version.txt"), "3.1.12/etcd3\n").unwrap();
        d
    }

    // Reference §5.2 "existing dir with version".
    #[test]
    fn existing_dir_with_version() {
        let d = fixture_with_version();
        let dd = DataDir::new(d.path());
        assert!(!dd.is_empty().unwrap());
        assert_eq!(
            dd.read_version().unwrap().unwrap().to_string(),
            "3.1.12/etcd3"
        );
    }

    // Reference §5.2 "existing dir without version": nothing is read or written.
    #[test]
    fn existing_dir_without_version() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(".placeholder"), "").unwrap();
        let dd = DataDir::new(d.path());
        assert!(!dd.is_empty().unwrap());
        assert!(dd.read_version().unwrap().is_none());
    }

    // Reference §5.2 "non-existing dir".
    #[test]
    fn non_existing_dir_is_created() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(&d.path().join("data-dir"));
        assert!(dd.is_empty().unwrap());
        dd.create().unwrap();
        assert!(dd.exists());
        let pair = VersionPair::parse("3.1.12/etcd3").unwrap();
        assert!(dd.write_version(&pair).unwrap());
        assert_eq!(
            fs::read_to_string(dd.version_path()).unwrap(),
            "3.1.12/etcd3"
        );
        assert!(!dd.is_empty().unwrap());
    }

    #[test]
    fn unchanged_version_is_not_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path());
        let pair = VersionPair::parse("3.5.1/etcd3").unwrap();
        assert!(dd.write_version(&pair).unwrap());
        let before = fs::metadata(dd.version_path()).unwrap();
        assert!(!dd.write_version(&pair).unwrap());
        let after = fs::metadata(dd.version_path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(before.ino(), after.ino());
        // no temp files left behind
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn malformed_version_is_reported_with_contents() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("version.txt"), "3.5/etcd3").unwrap();
        let err = DataDir::new(d.path())
            .read_version()
            .unwrap_err()
            .to_string();
        assert!(err.contains("'3.5/etcd3'"), "{err}");
    }

    #[test]
    fn version_file_mode_follows_umask() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path());
        dd.write_version(&VersionPair::parse("3.5.1/etcd3").unwrap())
            .unwrap();
        let mode = fs::metadata(dd.version_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let umask = unsafe {
            let m = libc::umask(0);
            libc::umask(m);
            m
        } as u32;
        assert_eq!(mode, 0o666 & !umask);
    }
}
