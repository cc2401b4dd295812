//! The content-addressed cache: `blobs/sha256/<hex>` holds verified bytes; `refs/<kind>/<key>`
//! holds small records that map an input key to blob digests. An entry becomes visible only
//! after its digest is verified: it is written under `tmp/`, fsynced, then renamed.

use hostio::fs::IoResultExt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O on `{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Lock(#[from] crate::lockfile::LockError),
    #[error("cache entry `{path}` is corrupt: expected sha256:{expected}, got sha256:{actual}")]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

impl From<hostio::fs::PathError> for CacheError {
    fn from(e: hostio::fs::PathError) -> Self {
        CacheError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// A file being written into the cache; dropped without `commit`, it disappears.
pub struct PendingBlob {
    pub file: File,
    path: tempfile::TempPath,
    hasher: Sha256,
    pub written: u64,
}

impl Write for PendingBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl PendingBlob {
    /// Drops what was written (a server that restarts a download from byte 0).
    pub fn reset(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.file.set_len(0)?;
        self.file.seek(io::SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Where the bytes are until commit.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hex sha256 of what was written so far.
    pub fn digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl Cache {
    /// The cache at `root`, or `$ETCDIMG_CACHE`, or `$XDG_CACHE_HOME/etcdimg`.
    pub fn open(root: Option<&Path>) -> Result<Cache, CacheError> {
        let root = match root {
            Some(r) => r.to_path_buf(),
            None => dirs::cache_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("etcdimg"),
        };
        for sub in ["blobs/sha256", "tmp", "refs"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).at(&dir)?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, hex_digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_digest)
    }

    /// The blob if it is present (not re-verified; see [`Cache::get_verified`]).
    pub fn get(&self, hex_digest: &str) -> Option<PathBuf> {
        let p = self.blob_path(hex_digest);
        p.is_file().then_some(p)
    }

    /// The blob if present and its bytes still hash to its name. A corrupt entry is removed.
    pub fn get_verified(&self, hex_digest: &str) -> Result<Option<PathBuf>, CacheError> {
        let Some(path) = self.get(hex_digest) else {
            return Ok(None);
        };
        let actual = sha256_file(&path).at(&path)?;
        if actual == hex_digest {
            Ok(Some(path))
        } else {
            let _ = fs::remove_file(&path);
            Err(CacheError::Corrupt {
                path,
                expected: hex_digest.into(),
                actual,
            })
        }
    }

    /// Starts writing a new blob under `tmp/`.
    pub fn pending(&self) -> Result<PendingBlob, CacheError> {
        let dir = self.root.join("tmp");
        let named = hostio::fs::temp_file_in(&dir, "blob-", hostio::fs::FILE_MODE).at(&dir)?;
        let (file, path) = named.into_parts();
        Ok(PendingBlob {
            file,
            path,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Makes a pending blob visible if its digest is `expected` (or any digest when `None`).
    /// On a mismatch the temp file is removed and the actual digest is returned as the error.
    pub fn commit(
        &self,
        pending: PendingBlob,
        expected: Option<&str>,
    ) -> Result<Result<String, String>, CacheError> {
        let mut pending = pending;
        pending.file.flush().at(&pending.path)?;
        let actual = pending.digest();
        if let Some(expected) = expected {
            if expected != actual {
                return Ok(Err(actual));
            }
        }
        pending.file.sync_all().at(&pending.path)?;
        let dest = self.blob_path(&actual);
        pending.path.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(Ok(actual))
    }

    /// Stores bytes as a blob and returns its hex digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String, CacheError> {
        let hex_digest = hex::encode(Sha256::digest(bytes));
        if self.get(&hex_digest).is_some() {
            return Ok(hex_digest);
        }
        let mut pending = self.pending()?;
        pending.write_all(bytes).at(&self.root)?;
        Ok(self.commit(pending, None)?.expect("no expectation"))
    }

    fn ref_path(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join("refs").join(kind).join(key)
    }

    /// A small record stored under `refs/<kind>/<key>`.
    pub fn get_ref(&self, kind: &str, key: &str) -> Option<String> {
        fs::read_to_string(self.ref_path(kind, key)).ok()
    }

    /// Holds the lock of one entry being produced (`locks/<kind>-<key digest>`), so that
    /// processes sharing the cache do the work once: the first computes and commits the entry,
    /// the others wait (saying so through `notify`), then find it. Take the locks of a run in a
    /// fixed order (kinds in pipeline order, keys sorted) and re-check the cache after locking.
    pub fn lock(
        &self,
        kind: &str,
        key: &str,
        what: &str,
        notify: &dyn Fn(&str),
    ) -> Result<crate::lockfile::Held, CacheError> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).at(&dir)?;
        let name = format!("{kind}-{}", &sha256_hex(key.as_bytes())[..32]);
        Ok(crate::lockfile::acquire(&dir.join(name), what, notify)?)
    }

    /// Writes a record atomically (temp, fsync, rename).
    pub fn put_ref(&self, kind: &str, key: &str, value: &str) -> Result<(), CacheError> {
        let path = self.ref_path(kind, key);
        let dir = path.parent().expect("ref has a parent");
        fs::create_dir_all(dir).at(dir)?;
        Ok(hostio::fs::write_atomic(&path, value.as_bytes()).at(&path)?)
    }
}

/// The hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_verifies_and_mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path())).unwrap();
        let mut p = cache.pending().unwrap();
        p.write_all(b"hello").unwrap();
        let wrong = "0".repeat(64);
        assert!(cache.commit(p, Some(&wrong)).unwrap().is_err());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );

        let digest = cache.put_bytes(b"hello").unwrap();
        assert_eq!(digest, sha256_hex(b"hello"));
        assert!(cache.get_verified(&digest).unwrap().is_some());
    }

    #[test]
    fn corrupt_entries_are_detected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path())).unwrap();
        let digest = cache.put_bytes(b"hello").unwrap();
        fs::write(cache.blob_path(&digest), b"HELLO").unwrap();
        assert!(matches!(
            cache.get_verified(&digest),
            Err(CacheError::Corrupt { .. })
        ));
        assert!(cache.get(&digest).is_none());
    }
}
