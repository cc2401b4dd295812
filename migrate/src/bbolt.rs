//! A read-only reader of bbolt files, the format of etcd's backend (`member/snap/db`).
//!
//! It owns one thing: walking a bucket's B+tree in key order and handing each key and value to
//! a callback, reading pages with `pread` (never `mmap`, so a scan of a multi-GB file keeps the
//! process's resident memory at a few pages: the page cache is the kernel's, not ours). It never
//! takes bbolt's file lock, and checks every page it reads (id, kind, bounds) before trusting
//! an offset in it. The caller must make sure no etcd writes the file meanwhile (migrate holds
//! the data dir and probes etcd's own locks first).
//!
//! Its one write, [`patch_value`], overwrites a value's bytes with as many other bytes, on a
//! working copy only: no page, size or offset changes, so the tree stays what it was (bbolt
//! keeps no checksum of data pages; the meta pages' checksums cover only the metas).
//!
//! Written by hand: the format is small and frozen (bbolt `page.go`, `meta.go`, `bucket.go`),
//! and the one crate that reads it, `bbolt-rs`, maps the whole file into memory and brings
//! a write path, CLI and test dependencies that a read-only scan does not need.
//!
//! Layout, from bbolt's sources:
//! - page header (16 bytes): id u64, flags u16 (branch 0x01, leaf 0x02, meta 0x04, freelist
//!   0x10), count u16, overflow u32; a page spans `(1 + overflow) * page_size` bytes;
//! - pages 0 and 1 are metas: magic 0xED0CDAED, version 2, page size, flags, the root bucket
//!   (root page, sequence), freelist page, high-water page id, txid, and an FNV-1a 64 checksum of
//!   the 56 bytes before it; the valid meta with the higher txid is the current one;
//! - branch elements (16 bytes): pos u32, ksize u32, child page u64;
//! - leaf elements (16 bytes): flags u32 (0x01: the value is a sub-bucket), pos u32, ksize u32,
//!   vsize u32; `pos` counts from the element itself;
//! - a bucket value: root page u64, sequence u64, and when the root is 0 an inline leaf page
//!   right after those 16 bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const BUCKET_LEAF_FLAG: u32 = 0x01;
/// A bucket B+tree deeper than this is a cycle in a corrupt file, not a real tree.
const MAX_DEPTH: usize = 64;
/// The largest page run one element may span (values are bounded by etcd's request size).
const MAX_PAGE_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("reading `{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("`{path}` is not a bbolt database: {message}")]
    NotBolt { path: PathBuf, message: String },
    #[error("`{path}` is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// What a walk calls for each element: key, value, and whether the value is a sub-bucket.
type Visitor<'a, E> = dyn FnMut(&[u8], &[u8], bool) -> Result<(), E> + 'a;

/// Where a bucket's tree starts: a page of the file, or a leaf stored inline in its parent.
#[derive(Debug, Clone)]
pub enum BucketRoot {
    Page(u64),
    Inline(Vec<u8>),
}

/// An open bbolt file, positioned at its current meta.
pub struct Db {
    file: File,
    path: PathBuf,
    pub page_size: u64,
    /// Page ids at or above this are past the end of the used file.
    high_water: u64,
    pub txid: u64,
    root: BucketRoot,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A meta page's fields, if the page holds a valid meta.
struct Meta {
    page_size: u64,
    root: u64,
    high_water: u64,
    txid: u64,
}

fn parse_meta(page: &[u8]) -> Result<Meta, String> {
    if page.len() < PAGE_HEADER + 64 {
        return Err("the file is shorter than a meta page".into());
    }
    if u16_at(page, 8) & META == 0 {
        return Err(format!(
            "page flags {:#x}, expected a meta page",
            u16_at(page, 8)
        ));
    }
    let m = &page[PAGE_HEADER..PAGE_HEADER + 64];
    if u32_at(m, 0) != MAGIC {
        return Err(format!(
            "magic {:#010x}, expected {MAGIC:#010x}",
            u32_at(m, 0)
        ));
    }
    if u32_at(m, 4) != VERSION {
        return Err(format!(
            "format version {}, expected {VERSION}",
            u32_at(m, 4)
        ));
    }
    if fnv1a64(&m[..56]) != u64_at(m, 56) {
        return Err("meta checksum mismatch".into());
    }
    let page_size = u64::from(u32_at(m, 8));
    if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size}"));
    }
    Ok(Meta {
        page_size,
        root: u64_at(m, 16),
        high_water: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

impl Db {
    /// Opens `path` read-only and selects the current meta (the valid one with the higher txid).
    pub fn open(path: &Path) -> Result<Db, BoltError> {
        let io_err = |source| BoltError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let read = |offset: u64, len: usize| -> Result<Vec<u8>, BoltError> {
            let mut buf = vec![0u8; len];
            let n = read_full(&file, &mut buf, offset).map_err(io_err)?;
            buf.truncate(n);
            Ok(buf)
        };
        let first = read(0, 4096)?;
        let meta0 = parse_meta(&first);
        // Meta 1 sits one page further; when meta 0 is unreadable its page size is unknown, so
        // try the sizes etcd's hosts use.
        let sizes: Vec<u64> = match &meta0 {
            Ok(m) => vec![m.page_size],
            Err(_) => vec![4096, 8192, 16384, 65536],
        };
        let mut best: Option<Meta> = meta0.as_ref().ok().map(|m| Meta { ..*m });
        let mut errors = vec![format!(
            "meta 0: {}",
            meta0.as_ref().err().map_or("ok", |e| e)
        )];
        for size in sizes {
            match parse_meta(&read(size, 4096)?) {
                Ok(m) if m.page_size == size => {
                    if best.as_ref().is_none_or(|b| m.txid > b.txid) {
                        best = Some(m);
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("meta 1 at {size}: {e}")),
            }
        }
        let meta = best.ok_or_else(|| BoltError::NotBolt {
            path: path.to_path_buf(),
            message: errors.join("; "),
        })?;
        Ok(Db {
            file,
            path: path.to_path_buf(),
            page_size: meta.page_size,
            high_water: meta.high_water,
            txid: meta.txid,
            root: BucketRoot::Page(meta.root),
        })
    }

    fn corrupt(&self, message: String) -> BoltError {
        BoltError::Corrupt {
            path: self.path.clone(),
            message,
        }
    }

    /// Reads page `id` with its overflow pages, checking its header.
    fn page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.high_water {
            return Err(self.corrupt(format!(
                "page {id} is outside the used pages 2..{}",
                self.high_water
            )));
        }
        let offset = id * self.page_size;
        let mut header = [0u8; PAGE_HEADER];
        let n = read_full(&self.file, &mut header, offset).map_err(|source| BoltError::Io {
            path: self.path.clone(),
            source,
        })?;
        if n < PAGE_HEADER {
            return Err(self.corrupt(format!("page {id} is past the end of the file")));
        }
        if u64_at(&header, 0) != id {
            return Err(self.corrupt(format!("page {id} says it is page {}", u64_at(&header, 0))));
        }
        let overflow = u64::from(u32_at(&header, 12));
        let len = (1 + overflow) * self.page_size;
        if len > MAX_PAGE_BYTES || id + overflow >= self.high_water {
            return Err(self.corrupt(format!("page {id} claims {overflow} overflow pages")));
        }
        let mut buf = vec![0u8; len as usize];
        let n = read_full(&self.file, &mut buf, offset).map_err(|source| BoltError::Io {
            path: self.path.clone(),
            source,
        })?;
        if (n as u64) < len {
            return Err(self.corrupt(format!("page {id} is cut short by the end of the file")));
        }
        Ok(buf)
    }

    /// The root bucket of the file (it holds the top-level buckets).
    pub fn root(&self) -> BucketRoot {
        self.root.clone()
    }

    /// The top-level bucket `name`, if the file has it.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRoot>, BoltError> {
        let mut found = None;
        self.walk(&self.root(), 0, &mut |key, value, is_bucket| {
            if is_bucket && key == name {
                found = Some(value.to_vec());
            }
            Ok::<_, BoltError>(())
        })?;
        match found {
            None => Ok(None),
            Some(v) => self.bucket_root(&v).map(Some),
        }
    }

    fn bucket_root(&self, value: &[u8]) -> Result<BucketRoot, BoltError> {
        if value.len() < 16 {
            return Err(self.corrupt(format!("a bucket header of {} bytes", value.len())));
        }
        match u64_at(value, 0) {
            0 => Ok(BucketRoot::Inline(value[16..].to_vec())),
            page => Ok(BucketRoot::Page(page)),
        }
    }

    /// Calls `f(key, value)` for every key of `bucket` in key order (sub-buckets are skipped).
    /// An error from `f` stops the walk and is returned.
    pub fn for_each<E: From<BoltError>>(
        &self,
        bucket: &BucketRoot,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.walk(bucket, 0, &mut |k, v, is_bucket| {
            if is_bucket {
                Ok(())
            } else {
                f(k, v)
            }
        })
    }

    /// The last key of `bucket` (sub-buckets included), reading one page per tree level.
    pub fn last_key(&self, bucket: &BucketRoot) -> Result<Option<Vec<u8>>, BoltError> {
        let mut page = match bucket {
            BucketRoot::Inline(p) => p.clone(),
            BucketRoot::Page(id) => self.page(*id)?,
        };
        for _ in 0..MAX_DEPTH {
            let kind = self.check_page(&page, None)?;
            let count = usize::from(u16_at(&page, 10));
            if count == 0 {
                return Ok(None);
            }
            let e = PAGE_HEADER + (count - 1) * ELEMENT;
            if kind == LEAF {
                let pos = u32_at(&page, e + 4) as usize;
                let ksize = u32_at(&page, e + 8) as usize;
                return Ok(Some(page[e + pos..e + pos + ksize].to_vec()));
            }
            page = self.page(u64_at(&page, e + 8))?;
        }
        Err(self.corrupt(format!("the tree is deeper than {MAX_DEPTH} pages")))
    }

    /// Every `(name, is_bucket)` of the root bucket: the file's top-level buckets.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, BoltError> {
        let mut names = Vec::new();
        self.walk(&self.root(), 0, &mut |k, _, is_bucket| {
            if is_bucket {
                names.push(k.to_vec());
            }
            Ok::<_, BoltError>(())
        })?;
        Ok(names)
    }

    fn walk<E: From<BoltError>>(
        &self,
        bucket: &BucketRoot,
        depth: usize,
        f: &mut Visitor<'_, E>,
    ) -> Result<(), E> {
        match bucket {
            BucketRoot::Inline(page) => {
                let kind = self.check_page(page, None)?;
                if kind != LEAF {
                    return Err(self
                        .corrupt("an inline bucket that is not a leaf".into())
                        .into());
                }
                self.leaf(page, f)
            }
            BucketRoot::Page(id) => self.walk_page(*id, depth, f),
        }
    }

    fn walk_page<E: From<BoltError>>(
        &self,
        id: u64,
        depth: usize,
        f: &mut Visitor<'_, E>,
    ) -> Result<(), E> {
        if depth > MAX_DEPTH {
            return Err(self
                .corrupt(format!(
                    "the tree is deeper than {MAX_DEPTH} pages at page {id}"
                ))
                .into());
        }
        let page = self.page(id)?;
        match self.check_page(&page, Some(id))? {
            LEAF => self.leaf(&page, f),
            _ => {
                let count = usize::from(u16_at(&page, 10));
                for i in 0..count {
                    let e = PAGE_HEADER + i * ELEMENT;
                    let child = u64_at(&page, e + 8);
                    self.walk_page(child, depth + 1, f)?;
                }
                Ok(())
            }
        }
    }

    /// Checks a branch or leaf page: its kind, and that every element and key/value lies inside
    /// it. Returns the kind.
    fn check_page(&self, page: &[u8], id: Option<u64>) -> Result<u16, BoltError> {
        let what = id.map_or("an inline page".to_string(), |id| format!("page {id}"));
        if page.len() < PAGE_HEADER {
            return Err(self.corrupt(format!("{what} is shorter than its header")));
        }
        let flags = u16_at(page, 8);
        let kind = flags & (BRANCH | LEAF);
        if kind != BRANCH && kind != LEAF {
            return Err(self.corrupt(format!(
                "{what} has flags {flags:#x} where a branch or leaf page was expected"
            )));
        }
        let count = usize::from(u16_at(page, 10));
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(self.corrupt(format!("{what} claims {count} elements")));
        }
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let (pos, ksize, vsize) = if kind == LEAF {
                (
                    u32_at(page, e + 4),
                    u32_at(page, e + 8),
                    u32_at(page, e + 12),
                )
            } else {
                (u32_at(page, e), u32_at(page, e + 4), 0)
            };
            let end = e as u64 + u64::from(pos) + u64::from(ksize) + u64::from(vsize);
            if end > page.len() as u64 {
                return Err(self.corrupt(format!(
                    "element {i} of {what} points past the page ({end} > {})",
                    page.len()
                )));
            }
        }
        Ok(kind)
    }

    /// Where the value of `key` in the top-level bucket `bucket` lies in the file: its byte
    /// offset and its bytes (`None` when the bucket or the key is absent). One path down each
    /// tree; an inline bucket's page lies inside its parent's leaf, 16 bytes into the value.
    pub fn locate(&self, bucket: &[u8], key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, BoltError> {
        let BucketRoot::Page(root) = self.root else {
            return Err(self.corrupt("the root bucket is inline".into()));
        };
        let Some((offset, header)) = self.find(root, bucket, 0)? else {
            return Ok(None);
        };
        if header.len() < 16 {
            return Err(self.corrupt(format!("a bucket header of {} bytes", header.len())));
        }
        match u64_at(&header, 0) {
            0 => {
                let page = &header[16..];
                if self.check_page(page, None)? != LEAF {
                    return Err(self.corrupt("an inline bucket that is not a leaf".into()));
                }
                Ok(leaf_match(page, key).map(|(at, v)| (offset + 16 + at as u64, v)))
            }
            id => self.find(id, key, 0),
        }
    }

    /// `key`'s value in the tree under page `id`: file offset and bytes.
    fn find(&self, id: u64, key: &[u8], depth: usize) -> Result<Option<(u64, Vec<u8>)>, BoltError> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt(format!(
                "the tree is deeper than {MAX_DEPTH} pages at page {id}"
            )));
        }
        let page = self.page(id)?;
        if self.check_page(&page, Some(id))? == LEAF {
            return Ok(leaf_match(&page, key).map(|(at, v)| (id * self.page_size + at as u64, v)));
        }
        // A branch element's key is the first key of its child: take the last child whose key
        // is not above `key`.
        let count = usize::from(u16_at(&page, 10));
        let mut child = None;
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let (pos, ksize) = (u32_at(&page, e) as usize, u32_at(&page, e + 4) as usize);
            if i == 0 || page[e + pos..e + pos + ksize] <= *key {
                child = Some(u64_at(&page, e + 8));
            } else {
                break;
            }
        }
        match child {
            Some(c) => self.find(c, key, depth + 1),
            None => Ok(None),
        }
    }

    fn leaf<E: From<BoltError>>(&self, page: &[u8], f: &mut Visitor<'_, E>) -> Result<(), E> {
        let count = usize::from(u16_at(page, 10));
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let flags = u32_at(page, e);
            let pos = u32_at(page, e + 4) as usize;
            let ksize = u32_at(page, e + 8) as usize;
            let vsize = u32_at(page, e + 12) as usize;
            let key = &page[e + pos..e + pos + ksize];
            let value = &page[e + pos + ksize..e + pos + ksize + vsize];
            f(key, value, flags & BUCKET_LEAF_FLAG != 0)?;
        }
        Ok(())
    }
}

/// The element of a checked leaf `page` whose key is `key`: the value's offset in the page,
/// and the value.
fn leaf_match(page: &[u8], key: &[u8]) -> Option<(usize, Vec<u8>)> {
    let count = usize::from(u16_at(page, 10));
    (0..count).find_map(|i| {
        let e = PAGE_HEADER + i * ELEMENT;
        let pos = u32_at(page, e + 4) as usize;
        let ksize = u32_at(page, e + 8) as usize;
        let vsize = u32_at(page, e + 12) as usize;
        (&page[e + pos..e + pos + ksize] == key).then(|| {
            let at = e + pos + ksize;
            (at, page[at..at + vsize].to_vec())
        })
    })
}

/// Overwrites the value at file `offset` (from [`Db::locate`]) if it still reads `old`, with
/// `new` of the same length, and syncs the file. Only ever on a working copy no etcd holds.
pub fn patch_value(path: &Path, offset: u64, old: &[u8], new: &[u8]) -> Result<(), BoltError> {
    let io_err = |source| BoltError::Io {
        path: path.to_path_buf(),
        source,
    };
    if old.len() != new.len() {
        return Err(BoltError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "cannot replace a value of {} bytes with {} bytes in place",
                old.len(),
                new.len()
            ),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    let mut current = vec![0u8; old.len()];
    read_full(&file, &mut current, offset).map_err(io_err)?;
    if current != old {
        return Err(BoltError::Corrupt {
            path: path.to_path_buf(),
            message: format!("the value at byte {offset} changed under us"),
        });
    }
    file.write_all_at(new, offset).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// `pread` until `buf` is full or the file ends; the number of bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_values() {
        // FNV-1a 64 test vectors (Fowler/Noll/Vo).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_file_that_is_not_bbolt_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        std::fs::write(&p, vec![7u8; 20_000]).unwrap();
        let err = Db::open(&p).err().unwrap().to_string();
        assert!(err.contains("is not a bbolt database"), "{err}");
        std::fs::write(&p, b"").unwrap();
        assert!(Db::open(&p).is_err());
    }
}
