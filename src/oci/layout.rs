//! OCI image layout directories: `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
//!
//! Writes are crash-safe: a blob is written to a temp file, verified and renamed; `index.json`
//! is swapped by rename only after every blob it names is on disk. Other images in the layout
//! are kept. A failed build leaves the layout exactly as it was (apart from unreferenced blobs).
//!
//! Several processes may write one layout at once (per-arch builds side by side): every
//! read-modify-write of `index.json` holds the layout's lock, `.etcdimg.lock` in the layout
//! ([`crate::lockfile`]). Blobs need no lock: they are content-addressed and renamed into place.
//! Readers need none either: `index.json` only ever changes by rename.

use hostio::fs::IoResultExt;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{canonical_json, hex, Descriptor, ImageIndex, MediaType};
use hostio::fs::write_atomic;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The lock file that serialises `index.json` updates (inside the layout).
pub const LOCK_FILE: &str = ".etcdimg.lock";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("`{path}` is not an OCI image layout (no `oci-layout` file)")]
    NotLayout { path: PathBuf },
    #[error("`{path}`: invalid JSON: {message}")]
    BadJson { path: PathBuf, message: String },
    #[error("blob sha256:{expected} in `{layout}` is corrupt (content hashes to sha256:{actual})")]
    CorruptBlob {
        layout: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("no image named `{name}` in `{layout}`; it has: {available}")]
    NoSuchRef {
        layout: PathBuf,
        name: String,
        available: String,
    },
    #[error(transparent)]
    Lock(#[from] crate::lockfile::LockError),
    #[error("`{layout}` holds {count} images; name one with oci:PATH:REF (it has: {available})")]
    Ambiguous {
        layout: PathBuf,
        count: usize,
        available: String,
    },
}

impl From<hostio::fs::PathError> for LayoutError {
    fn from(e: hostio::fs::PathError) -> Self {
        LayoutError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens the layout at `dir`, creating an empty one if the directory has none.
    pub fn create(dir: &Path) -> Result<Layout, LayoutError> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).at(&blobs)?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).at(&marker)?;
        }
        let index = dir.join("index.json");
        if !index.exists() {
            let empty = oci_spec::image::ImageIndexBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageIndex)
                .manifests(Vec::new())
                .build()
                .expect("valid empty index");
            write_atomic(&index, &canonical_json(&empty)).at(&index)?;
        }
        Ok(Layout {
            root: dir.to_path_buf(),
        })
    }

    /// Opens an existing layout for reading.
    pub fn open(dir: &Path) -> Result<Layout, LayoutError> {
        if !dir.join("oci-layout").is_file() {
            return Err(LayoutError::NotLayout {
                path: dir.to_path_buf(),
            });
        }
        Ok(Layout {
            root: dir.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    /// True if the blob is present with the right size (its name is its digest, and we only
    /// ever rename verified bytes into place).
    pub fn has_blob(&self, hex: &str, size: u64) -> bool {
        fs::metadata(self.blob_path(hex))
            .map(|m| m.is_file() && m.len() == size)
            .unwrap_or(false)
    }

    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<String, LayoutError> {
        let hex = crate::fetch::cache::sha256_hex(bytes);
        if !self.has_blob(&hex, bytes.len() as u64) {
            let path = self.blob_path(&hex);
            write_atomic(&path, bytes).at(&path)?;
        }
        Ok(hex)
    }

    /// Copies `src` in as blob `hex`, hashing as it copies; a mismatch leaves nothing behind.
    pub fn put_blob_file(&self, src: &Path, hex: &str, size: u64) -> Result<(), LayoutError> {
        if self.has_blob(hex, size) {
            return Ok(());
        }
        let dir = self.root.join("blobs/sha256");
        let mut input = File::open(src).at(src)?;
        let mut tmp = hostio::fs::temp_file_in(&dir, ".tmp-", hostio::fs::FILE_MODE).at(&dir)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).at(src)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).at(&dir)?;
        }
        let actual = ::hex::encode(hasher.finalize());
        if actual != hex {
            return Err(LayoutError::CorruptBlob {
                layout: src.to_path_buf(),
                expected: hex.into(),
                actual,
            });
        }
        tmp.as_file().sync_all().at(&dir)?;
        let dest = self.blob_path(hex);
        tmp.persist(&dest).map_err(|e| LayoutError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Reads a blob and checks that it hashes to its name.
    pub fn read_blob(&self, hex: &str) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(hex);
        let bytes = fs::read(&path).at(&path)?;
        let actual = crate::fetch::cache::sha256_hex(&bytes);
        if actual != hex {
            return Err(LayoutError::CorruptBlob {
                layout: self.root.clone(),
                expected: hex.into(),
                actual,
            });
        }
        Ok(bytes)
    }

    pub fn read_index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).at(&path)?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::BadJson {
            path,
            message: e.to_string(),
        })
    }

    fn ref_names(index: &ImageIndex) -> String {
        let names: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .cloned()
            })
            .collect();
        if names.is_empty() {
            "(no named images)".into()
        } else {
            names.join(", ")
        }
    }

    /// The descriptor named `name` (or the only one when `name` is `None`).
    pub fn resolve(&self, name: Option<&str>) -> Result<Descriptor, LayoutError> {
        let index = self.read_index()?;
        match name {
            Some(name) => index
                .manifests()
                .iter()
                .find(|d| {
                    d.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .map(String::as_str)
                        == Some(name)
                })
                .cloned()
                .ok_or_else(|| LayoutError::NoSuchRef {
                    layout: self.root.clone(),
                    name: name.into(),
                    available: Self::ref_names(&index),
                }),
            None if index.manifests().len() == 1 => Ok(index.manifests()[0].clone()),
            None => Err(LayoutError::Ambiguous {
                layout: self.root.clone(),
                count: index.manifests().len(),
                available: Self::ref_names(&index),
            }),
        }
    }

    /// Points ref `name` at `desc`, replacing any image of that name. Returns false if it was
    /// already so (and then writes nothing). Holds the layout's lock while it reads and
    /// rewrites `index.json`; `notify` hears about a wait for another writer.
    pub fn set_ref(
        &self,
        name: &str,
        mut desc: Descriptor,
        notify: &dyn Fn(&str),
    ) -> Result<bool, LayoutError> {
        let _held = crate::lockfile::acquire(
            &self.root.join(LOCK_FILE),
            &format!("`{}`", self.root.join("index.json").display()),
            notify,
        )?;
        let mut index = self.read_index()?;
        let mut annotations = desc.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.into(), name.into());
        desc.set_annotations(Some(annotations));
        let named = |d: &Descriptor| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .map(String::as_str)
                == Some(name)
        };
        if index.manifests().iter().any(|d| named(d) && *d == desc) {
            return Ok(false);
        }
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| !named(d))
            .cloned()
            .collect();
        manifests.push(desc);
        manifests.sort_by_key(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
                .unwrap_or_default()
        });
        index.set_manifests(manifests);
        let path = self.root.join("index.json");
        write_atomic(&path, &canonical_json(&index)).at(&path)?;
        Ok(true)
    }

    /// Every blob reachable from index.json is present and intact (a test helper and a `verify`
    /// building block).
    pub fn check_reachable(&self) -> Result<usize, LayoutError> {
        let index = self.read_index()?;
        let mut count = 0;
        let mut stack: Vec<Descriptor> = index.manifests().clone();
        let mut seen = HashMap::new();
        while let Some(d) = stack.pop() {
            let h = hex(&d);
            if seen.insert(h.clone(), ()).is_some() {
                continue;
            }
            let bytes = self.read_blob(&h)?;
            count += 1;
            let media = d.media_type().to_string();
            if super::is_index(&media) {
                let idx: ImageIndex =
                    serde_json::from_slice(&bytes).map_err(|e| LayoutError::BadJson {
                        path: self.blob_path(&h),
                        message: e.to_string(),
                    })?;
                stack.extend(idx.manifests().iter().cloned());
            } else if media.ends_with("manifest.v1+json") || media.ends_with("manifest.v2+json") {
                let m: oci_spec::image::ImageManifest =
                    serde_json::from_slice(&bytes).map_err(|e| LayoutError::BadJson {
                        path: self.blob_path(&h),
                        message: e.to_string(),
                    })?;
                stack.push(m.config().clone());
                stack.extend(m.layers().iter().cloned());
            }
        }
        Ok(count)
    }
}
