//! Takes etcd, etcdctl and etcdutl out of a verified release tarball, and nothing else.
//!
//! The whole archive is checked, not only the wanted entries: an absolute path, a `..`
//! component, a link, a device or fifo, or a duplicate wanted entry rejects the tarball.
//! Official etcd tarballs contain only directories and regular files. Binaries are read into
//! memory, so nothing is written anywhere until the whole archive has passed.

use std::io::Read;
use std::path::{Component, Path};

use flate2::read::GzDecoder;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("`{tarball}` is not a readable tar.gz: {message}")]
    Corrupt { tarball: String, message: String },
    #[error("`{tarball}` entry `{entry}`: {problem}; refusing the whole tarball")]
    Unsafe {
        tarball: String,
        entry: String,
        problem: String,
    },
    #[error("`{tarball}` has no `{wanted}`")]
    Missing { tarball: String, wanted: String },
}

/// One binary taken from a release tarball.
#[derive(Clone, PartialEq, Eq)]
pub struct Binary {
    /// etcd, etcdctl or etcdutl.
    pub name: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Binary({}, {} bytes)", self.name, self.bytes.len())
    }
}

const WANTED: [&str; 3] = ["etcd", "etcdctl", "etcdutl"];

/// Extracts the binaries of `tarball_name` (`etcd-vV-linux-ARCH.tar.gz`) from `path`.
pub fn extract(path: &Path, tarball_name: &str) -> Result<Vec<Binary>, ExtractError> {
    let name = tarball_name.to_string();
    let corrupt = |message: String| ExtractError::Corrupt {
        tarball: name.clone(),
        message,
    };
    let top = tarball_name.trim_end_matches(".tar.gz").to_string();
    let file = std::fs::File::open(path).map_err(|e| corrupt(e.to_string()))?;
    let mut archive = tar::Archive::new(GzDecoder::new(std::io::BufReader::with_capacity(
        1 << 20,
        file,
    )));
    let mut found: Vec<Binary> = Vec::new();
    for entry in archive.entries().map_err(|e| corrupt(e.to_string()))? {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |problem: &str| ExtractError::Unsafe {
            tarball: name.clone(),
            entry: raw_path.clone(),
            problem: problem.into(),
        };
        let entry_path = Path::new(&raw_path);
        if entry_path.is_absolute() {
            return Err(unsafe_entry("absolute path"));
        }
        if entry_path
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(unsafe_entry("path escapes the archive with `..`"));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(unsafe_entry("links are not allowed in an etcd release"));
        }
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            return Err(unsafe_entry("device and fifo entries are not allowed"));
        }
        if !(kind.is_file() || kind.is_dir()) {
            return Err(unsafe_entry(&format!("unsupported entry type {kind:?}")));
        }
        let parts: Vec<&str> = entry_path
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => p.to_str(),
                _ => None,
            })
            .collect();
        if !kind.is_file() || parts.len() != 2 || parts[0] != top || !WANTED.contains(&parts[1]) {
            continue;
        }
        let wanted = parts[1].to_string();
        if found.iter().any(|f| f.name == wanted) {
            return Err(unsafe_entry("duplicate entry"));
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| corrupt(e.to_string()))?;
        found.push(Binary {
            name: wanted,
            bytes,
        });
    }
    for required in ["etcd", "etcdctl"] {
        if !found.iter().any(|f| f.name == required) {
            return Err(ExtractError::Missing {
                tarball: name,
                wanted: format!("{top}/{required}"),
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a tar.gz whose entries are given raw, so that hostile shapes can be made.
    fn tarball(entries: &[(&str, tar::EntryType, &[u8])]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        {
            let gz = flate2::write::GzEncoder::new(file.as_file_mut(), flate2::Compression::fast());
            let mut builder = tar::Builder::new(gz);
            for (path, kind, body) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(*kind);
                header.set_size(body.len() as u64);
                header.set_mode(0o755);
                // set_path refuses `..`; write the name bytes directly, as an attacker would.
                let name = &mut header.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                if kind.is_symlink() || kind.is_hard_link() {
                    header.set_link_name("etcd").unwrap();
                }
                header.set_cksum();
                builder.append(&header, *body).unwrap();
            }
            builder.into_inner().unwrap().finish().unwrap();
        }
        file.flush().unwrap();
        file
    }

    const T: &str = "etcd-v3.5.1-linux-amd64.tar.gz";
    const REG: tar::EntryType = tar::EntryType::Regular;

    #[test]
    fn takes_only_the_binaries() {
        let f = tarball(&[
            ("etcd-v3.5.1-linux-amd64/README.md", REG, b"readme"),
            ("etcd-v3.5.1-linux-amd64/etcd", REG, b"E"),
            ("etcd-v3.5.1-linux-amd64/etcdctl", REG, b"C"),
            ("etcd-v3.5.1-linux-amd64/Documentation/etcd", REG, b"not me"),
        ]);
        let bins = extract(f.path(), T).unwrap();
        assert_eq!(
            bins.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["etcd", "etcdctl"]
        );
        assert_eq!(bins[0].bytes, b"E");
    }

    #[test]
    fn rejects_hostile_entries() {
        let cases: Vec<(&str, tar::EntryType, &str)> = vec![
            ("etcd-v3.5.1-linux-amd64/../etcd", REG, "`..`"),
            ("/etc/passwd", REG, "absolute"),
            (
                "etcd-v3.5.1-linux-amd64/etcdutl",
                tar::EntryType::Symlink,
                "links",
            ),
            ("etcd-v3.5.1-linux-amd64/x", tar::EntryType::Link, "links"),
            (
                "etcd-v3.5.1-linux-amd64/dev",
                tar::EntryType::Char,
                "device",
            ),
        ];
        for (path, kind, expect) in cases {
            let f = tarball(&[
                ("etcd-v3.5.1-linux-amd64/etcd", REG, b"E"),
                ("etcd-v3.5.1-linux-amd64/etcdctl", REG, b"C"),
                (path, kind, b""),
            ]);
            let err = extract(f.path(), T).unwrap_err().to_string();
            assert!(err.contains(expect), "{path}: {err}");
        }
    }

    #[test]
    fn rejects_duplicates_and_missing() {
        let f = tarball(&[
            ("etcd-v3.5.1-linux-amd64/etcd", REG, b"E"),
            ("etcd-v3.5.1-linux-amd64/etcd", REG, b"F"),
            ("etcd-v3.5.1-linux-amd64/etcdctl", REG, b"C"),
        ]);
        assert!(extract(f.path(), T)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let f = tarball(&[("etcd-v3.5.1-linux-amd64/etcd", REG, b"E")]);
        assert!(extract(f.path(), T)
            .unwrap_err()
            .to_string()
            .contains("has no `etcd-v3.5.1-linux-amd64/etcdctl`"));
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"this is not gzip").unwrap();
        assert!(matches!(
            extract(f.path(), T),
            Err(ExtractError::Corrupt { .. })
        ));
    }
}
