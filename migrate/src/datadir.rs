//! The data directory and its version.txt. Writes are atomic and durable (`hostio::fs`: temp
//! file with a random name, fsync, rename, fsync the directory), and only when the content
//! changes. (The original overwrote version.txt in place without fsync, and a full disk left it
//! empty: k/k#98989.)

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use hostio::fs::{IoResultExt, PathError};

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

impl From<PathError> for DataDirError {
    fn from(e: PathError) -> Self {
        DataDirError::Io {
            path: e.path,
            source: e.source,
        }
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
            .at(&self.path)
            .map_err(Into::into)
    }

    /// True if the directory is missing or has no entries at all (hidden ones count; a temp
    /// file a killed migrate left beside version.txt is cleared first by
    /// [`DataDir::clear_stale_temps`]).
    pub fn is_empty(&self) -> Result<bool, DataDirError> {
        match fs::read_dir(&self.path) {
            // migrate's own work area, and what a new filesystem mounted at the data dir has.
            Ok(entries) => Ok(entries.flatten().all(|e| {
                let name = e.file_name();
                name == crate::engine::WORK_DIR || name == "lost+found"
            })),
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
        hostio::fs::write_atomic(&path, content.as_bytes()).at(&path)?;
        Ok(true)
    }

    /// Removes the temp files of version.txt a killed migrate left (`.version.txt.tmp-*`, and
    /// `.version.txt.tmp.<pid>` of migrates before that name was random). The caller holds the
    /// data dir's lock. Returns how many were removed.
    pub fn clear_stale_temps(&self) -> Result<usize, DataDirError> {
        let mut removed = hostio::fs::remove_stale_temps(&self.version_path())?;
        let old = format!(".{VERSION_FILE}.tmp.");
        if let Ok(entries) = fs::read_dir(&self.path) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&old) {
                    fs::remove_file(e.path()).at(&e.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
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

    // guards: a temp file named after pid 1 that a killed migrate left in the data dir made
    // every restart (same pid in a container) fail with "File exists".
    #[test]
    fn stale_temp_files_of_a_killed_run_are_cleared_and_block_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path());
        fs::write(d.path().join(".version.txt.tmp.1"), "3.5.").unwrap();
        fs::write(d.path().join(".version.txt.tmp-AbC123"), "3.6").unwrap();
        let pair = VersionPair::parse("3.5.1/etcd3").unwrap();
        assert!(dd.write_version(&pair).unwrap());
        assert_eq!(dd.clear_stale_temps().unwrap(), 2);
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["version.txt"]);
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
