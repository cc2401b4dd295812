//! Deterministic tar layers.
//!
//! The same entries always give the same bytes: entries sorted by path with explicit parent
//! directories, ustar headers with uid/gid 0 and no user/group names, one fixed mtime, no PAX
//! records (so no atime/ctime), then the pinned gzip (`oci::gzip`). Hard links let one file
//! appear under two names while its bytes are stored once.

use std::collections::BTreeSet;
use std::io::{self, Write};

use sha2::{Digest, Sha256};

use super::gzip;

/// What an entry holds.
#[derive(Debug, Clone)]
pub enum Body<'a> {
    File(&'a [u8]),
    /// A hard link to an earlier entry of the same layer (path without leading `/`).
    HardLink(String),
}

#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Path inside the image, without a leading `/` (e.g. `usr/local/bin/etcd`).
    pub path: String,
    pub mode: u32,
    pub body: Body<'a>,
}

/// Digests of a finished layer (hex, without `sha256:`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDigests {
    /// sha256 of the compressed blob.
    pub digest: String,
    /// sha256 of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    /// Size of the compressed blob.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer entry `{path}` is a hard link to `{target}`, which does not come before it")]
    DanglingLink { path: String, target: String },
    #[error("layer entry `{0}` appears twice")]
    Duplicate(String),
    #[error("layer entry path `{0}` must be relative and must not contain `..`")]
    BadPath(String),
    #[error("writing a layer: {0}")]
    Io(#[from] io::Error),
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Refuses absolute, `..` and empty-component paths and duplicates; sorts `entries` by path
/// and returns every parent directory (`a/`, `a/b/`), so that extraction never invents their
/// modes.
fn check_and_sort(entries: &mut [Entry<'_>]) -> Result<BTreeSet<String>, LayerError> {
    for e in entries.iter() {
        if e.path.starts_with('/') || e.path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(LayerError::BadPath(e.path.clone()));
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in entries.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(LayerError::Duplicate(pair[0].path.clone()));
        }
    }
    let mut parents = BTreeSet::new();
    for e in entries.iter() {
        let mut p = e.path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            parents.insert(format!("{p}/"));
        }
    }
    Ok(parents)
}

/// Writes the gzip-compressed layer of `entries` to `out` and returns its digests.
pub fn write_layer<W: Write>(
    mut entries: Vec<Entry<'_>>,
    mtime: u64,
    out: W,
) -> Result<LayerDigests, LayerError> {
    let parents = check_and_sort(&mut entries)?;
    let compressed = Hashing {
        inner: out,
        hasher: Sha256::new(),
        count: 0,
    };
    let gz = gzip::encoder(compressed);
    let uncompressed = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, gz),
        hasher: Sha256::new(),
        count: 0,
    };
    let mut tar = tar::Builder::new(uncompressed);
    tar.mode(tar::HeaderMode::Deterministic);

    // Merge parents and entries in one sorted stream: a parent `a/` sorts before `a/b`.
    enum Item<'e, 'a> {
        Dir(String),
        Entry(&'e Entry<'a>),
    }
    let mut items: Vec<(String, Item<'_, '_>)> = parents
        .into_iter()
        .map(|p| (p.clone(), Item::Dir(p)))
        .collect();
    items.extend(entries.iter().map(|e| (e.path.clone(), Item::Entry(e))));
    items.sort_by(|a, b| a.0.cmp(&b.0));

    let mut written: BTreeSet<&str> = BTreeSet::new();
    for (_, item) in &items {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        match item {
            Item::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, path, io::empty())?;
            }
            Item::Entry(e) => {
                header.set_mode(e.mode);
                match &e.body {
                    Body::File(bytes) => {
                        header.set_entry_type(tar::EntryType::Regular);
                        header.set_size(bytes.len() as u64);
                        tar.append_data(&mut header, &e.path, *bytes)?;
                    }
                    Body::HardLink(target) => {
                        if !written.contains(target.as_str()) {
                            return Err(LayerError::DanglingLink {
                                path: e.path.clone(),
                                target: target.clone(),
                            });
                        }
                        header.set_entry_type(tar::EntryType::Link);
                        header.set_size(0);
                        tar.append_link(&mut header, &e.path, target)?;
                    }
                }
                written.insert(e.path.as_str());
            }
        }
    }
    let uncompressed = tar.into_inner()?;
    let diff_id = hex::encode(uncompressed.hasher.finalize());
    let gz = uncompressed
        .inner
        .into_inner()
        .map_err(|e| e.into_error())?;
    let mut compressed = gz.finish()?;
    compressed.flush()?;
    Ok(LayerDigests {
        digest: hex::encode(compressed.hasher.finalize()),
        diff_id,
        size: compressed.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample<'a>(etcd: &'a [u8], ctl: &'a [u8]) -> Vec<Entry<'a>> {
        vec![
            Entry {
                path: "usr/local/bin/etcd-3.5.1".into(),
                mode: 0o555,
                body: Body::HardLink("usr/local/bin/etcd".into()),
            },
            Entry {
                path: "usr/local/bin/etcd".into(),
                mode: 0o555,
                body: Body::File(etcd),
            },
            Entry {
                path: "usr/local/bin/etcdctl".into(),
                mode: 0o555,
                body: Body::File(ctl),
            },
        ]
    }

    // guards: a dependency bump (flate2, zlib-rs, tar) silently changing layer bytes and so
    // every published digest. If this fails on purpose, bump the digest AND say so in the
    // changelog: every image digest changes with it.
    #[test]
    fn golden_layer_digest() {
        let mut out = Vec::new();
        let d = write_layer(
            sample(b"etcd binary bytes\n", b"etcdctl bytes\n"),
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(d.size, out.len() as u64);
        assert_eq!(d.digest, crate::fetch::cache::sha256_hex(&out));
        assert_eq!(
            (d.digest.as_str(), d.diff_id.as_str()),
            (
                "37cf62fb3bc4f67d54fac6bf8ae4c05dc00cb7c5748b463bd8f87908b4673632",
                "d9b3f91fc7111bed550340d3642f2d35219bcbf102f83e6a09c8cf422f452b25"
            ),
            "layer bytes changed: see the comment above"
        );
    }

    #[test]
    fn same_input_same_bytes_and_order_does_not_matter() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_layer(sample(b"x", b"y"), 7, &mut a).unwrap();
        let mut reversed = sample(b"x", b"y");
        reversed.reverse();
        write_layer(reversed, 7, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn entries_are_sorted_with_parents_and_normalised_headers() {
        let mut out = Vec::new();
        write_layer(sample(b"x", b"y"), 1234, &mut out).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut raw)
            .unwrap();
        let mut archive = tar::Archive::new(&raw[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 1234)
            );
            assert!(h.as_ustar().is_some(), "ustar headers only, no PAX");
            assert_eq!(h.username().unwrap(), Some(""));
            seen.push((
                String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                h.entry_type(),
            ));
        }
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/etcd",
                "usr/local/bin/etcd-3.5.1",
                "usr/local/bin/etcdctl"
            ]
        );
        assert_eq!(seen[4].1, tar::EntryType::Link);
    }

    #[test]
    fn gzip_header_has_no_time_or_name() {
        let mut out = Vec::new();
        write_layer(sample(b"x", b"y"), 0, &mut out).unwrap();
        assert_eq!(&out[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(out[3], 0, "no FNAME/FEXTRA flags");
        assert_eq!(&out[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(out[9], 255, "OS unknown");
    }

    #[test]
    fn links_must_follow_their_target() {
        let entries = vec![Entry {
            path: "a/link".into(),
            mode: 0o555,
            body: Body::HardLink("a/zz".into()),
        }];
        assert!(matches!(
            write_layer(entries, 0, Vec::new()),
            Err(LayerError::DanglingLink { .. })
        ));
        let bad = vec![Entry {
            path: "../x".into(),
            mode: 0o555,
            body: Body::File(b""),
        }];
        assert!(matches!(
            write_layer(bad, 0, Vec::new()),
            Err(LayerError::BadPath(_))
        ));
    }
}
