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
//! **Byte order.** bbolt writes its structures in the writing host's byte order (it casts
//! memory), so an s390x member's backend is big-endian. The order is taken from the meta
//! page's magic (`ed da 0c ed` as a little-endian host writes it, `ed 0c da ed` big-endian) and every
//! header, element and meta field (and the meta checksum) is read in it; any host reads any
//! member's file. (etcd's own encodings inside values, such as revision keys and meta counters,
//! are big-endian everywhere and are not bbolt's business.)
//!
//! **Never trusting the file.** Every page id is checked against the meta's high-water mark and
//! the file's size before it is multiplied into an offset (checked arithmetic); a page run is
//! allocated only after its length was checked against the bytes the file really has; every
//! element and key/value must lie inside its page; a walk keeps the set of pages it visited, so
//! a cycle or a subtree shared by two parents is an error, not a loop or a double count; trees
//! are at most 64 deep. Page sizes of 512 bytes to 64 KiB are read (bbolt uses the host's page
//! size: 4 KiB on x86, 64 KiB on ppc64le or arm64 kernels with 64 KiB pages). The fuzz target
//! `fuzz/fuzz_targets/bbolt.rs` runs the reader on arbitrary bytes.
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
/// The page sizes a reader accepts (and tries, when meta 0 cannot tell).
const PAGE_SIZES: [u64; 8] = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const BUCKET_LEAF_FLAG: u32 = 0x01;
/// A bucket B+tree deeper than this is a cycle in a corrupt file, not a real tree.
const MAX_DEPTH: usize = 64;

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
    /// The byte order the file was written in.
    pub order: Order,
    /// The file's size when opened: no page run may reach past it.
    file_len: u64,
}

/// The byte order of a bbolt file (its writer's host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let a: [u8; 2] = b[at..at + 2].try_into().expect("2 bytes");
        match self {
            Order::Little => u16::from_le_bytes(a),
            Order::Big => u16::from_be_bytes(a),
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let a: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        match self {
            Order::Little => u32::from_le_bytes(a),
            Order::Big => u32::from_be_bytes(a),
        }
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        let a: [u8; 8] = b[at..at + 8].try_into().expect("8 bytes");
        match self {
            Order::Little => u64::from_le_bytes(a),
            Order::Big => u64::from_be_bytes(a),
        }
    }
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
    order: Order,
}

fn parse_meta(page: &[u8]) -> Result<Meta, String> {
    if page.len() < PAGE_HEADER + 64 {
        return Err("the file is shorter than a meta page".into());
    }
    let m = &page[PAGE_HEADER..PAGE_HEADER + 64];
    // The magic says the byte order; the page flags are checked in it.
    let order = if Order::Little.u32(m, 0) == MAGIC {
        Order::Little
    } else if Order::Big.u32(m, 0) == MAGIC {
        Order::Big
    } else {
        return Err(format!(
            "magic {:02x?}, expected {MAGIC:#010x} in either byte order",
            &m[..4]
        ));
    };
    if order.u16(page, 8) & META == 0 {
        return Err(format!(
            "page flags {:#x}, expected a meta page",
            order.u16(page, 8)
        ));
    }
    if order.u32(m, 4) != VERSION {
        return Err(format!(
            "format version {}, expected {VERSION}",
            order.u32(m, 4)
        ));
    }
    if fnv1a64(&m[..56]) != order.u64(m, 56) {
        return Err("meta checksum mismatch".into());
    }
    let page_size = u64::from(order.u32(m, 8));
    if !PAGE_SIZES.contains(&page_size) {
        return Err(format!("page size {page_size}"));
    }
    Ok(Meta {
        page_size,
        root: order.u64(m, 16),
        high_water: order.u64(m, 40),
        txid: order.u64(m, 48),
        order,
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
        let file_len = file.metadata().map_err(io_err)?.len();
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
            Err(_) => PAGE_SIZES.to_vec(),
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
            order: meta.order,
            file_len,
        })
    }

    fn corrupt(&self, message: String) -> BoltError {
        BoltError::Corrupt {
            path: self.path.clone(),
            message,
        }
    }

    /// Reads page `id` with its overflow pages, checking its header; the run is allocated only
    /// once its length fits in the file.
    fn page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.high_water {
            return Err(self.corrupt(format!(
                "page {id} is outside the used pages 2..{}",
                self.high_water
            )));
        }
        let offset = id
            .checked_mul(self.page_size)
            .filter(|o| o.saturating_add(PAGE_HEADER as u64) <= self.file_len)
            .ok_or_else(|| self.corrupt(format!("page {id} is past the end of the file")))?;
        let mut header = [0u8; PAGE_HEADER];
        let n = read_full(&self.file, &mut header, offset).map_err(|source| BoltError::Io {
            path: self.path.clone(),
            source,
        })?;
        if n < PAGE_HEADER {
            return Err(self.corrupt(format!("page {id} is past the end of the file")));
        }
        if self.order.u64(&header, 0) != id {
            return Err(self.corrupt(format!(
                "page {id} says it is page {}",
                self.order.u64(&header, 0)
            )));
        }
        let overflow = u64::from(self.order.u32(&header, 12));
        let len = overflow
            .checked_add(1)
            .and_then(|pages| pages.checked_mul(self.page_size))
            .filter(|len| {
                id.checked_add(overflow)
                    .is_some_and(|last| last < self.high_water)
                    && offset
                        .checked_add(*len)
                        .is_some_and(|end| end <= self.file_len)
            })
            .ok_or_else(|| self.corrupt(format!("page {id} claims {overflow} overflow pages")))?;
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
        match self.order.u64(value, 0) {
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
            let count = usize::from(self.order.u16(&page, 10));
            if count == 0 {
                return Ok(None);
            }
            let e = PAGE_HEADER + (count - 1) * ELEMENT;
            if kind == LEAF {
                let pos = self.order.u32(&page, e + 4) as usize;
                let ksize = self.order.u32(&page, e + 8) as usize;
                return Ok(Some(page[e + pos..e + pos + ksize].to_vec()));
            }
            page = self.page(self.order.u64(&page, e + 8))?;
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
        let mut visited = std::collections::HashSet::new();
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
            BucketRoot::Page(id) => self.walk_page(*id, depth, &mut visited, f),
        }
    }

    /// Walks the tree under page `id`. `visited` holds every page of the walk so far: a page
    /// reached twice is a cycle or a subtree two parents share, neither of which bbolt writes.
    fn walk_page<E: From<BoltError>>(
        &self,
        id: u64,
        depth: usize,
        visited: &mut std::collections::HashSet<u64>,
        f: &mut Visitor<'_, E>,
    ) -> Result<(), E> {
        if !visited.insert(id) {
            return Err(self
                .corrupt(format!("page {id} is reached twice in one tree"))
                .into());
        }
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
                let count = usize::from(self.order.u16(&page, 10));
                for i in 0..count {
                    let e = PAGE_HEADER + i * ELEMENT;
                    let child = self.order.u64(&page, e + 8);
                    self.walk_page(child, depth + 1, visited, f)?;
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
        let flags = self.order.u16(page, 8);
        let kind = flags & (BRANCH | LEAF);
        if kind != BRANCH && kind != LEAF {
            return Err(self.corrupt(format!(
                "{what} has flags {flags:#x} where a branch or leaf page was expected"
            )));
        }
        let count = usize::from(self.order.u16(page, 10));
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(self.corrupt(format!("{what} claims {count} elements")));
        }
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let (pos, ksize, vsize) = if kind == LEAF {
                (
                    self.order.u32(page, e + 4),
                    self.order.u32(page, e + 8),
                    self.order.u32(page, e + 12),
                )
            } else {
                (self.order.u32(page, e), self.order.u32(page, e + 4), 0)
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
        match self.order.u64(&header, 0) {
            0 => {
                let page = &header[16..];
                if self.check_page(page, None)? != LEAF {
                    return Err(self.corrupt("an inline bucket that is not a leaf".into()));
                }
                Ok(leaf_match(self.order, page, key).map(|(at, v)| (offset + 16 + at as u64, v)))
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
            return Ok(leaf_match(self.order, &page, key)
                .map(|(at, v)| (id * self.page_size + at as u64, v)));
        }
        // A branch element's key is the first key of its child: take the last child whose key
        // is not above `key`.
        let count = usize::from(self.order.u16(&page, 10));
        let mut child = None;
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let (pos, ksize) = (
                self.order.u32(&page, e) as usize,
                self.order.u32(&page, e + 4) as usize,
            );
            if i == 0 || page[e + pos..e + pos + ksize] <= *key {
                child = Some(self.order.u64(&page, e + 8));
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
        let count = usize::from(self.order.u16(page, 10));
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let flags = self.order.u32(page, e);
            let pos = self.order.u32(page, e + 4) as usize;
            let ksize = self.order.u32(page, e + 8) as usize;
            let vsize = self.order.u32(page, e + 12) as usize;
            let key = &page[e + pos..e + pos + ksize];
            let value = &page[e + pos + ksize..e + pos + ksize + vsize];
            f(key, value, flags & BUCKET_LEAF_FLAG != 0)?;
        }
        Ok(())
    }
}

/// The element of a checked leaf `page` whose key is `key`: the value's offset in the page,
/// and the value.
fn leaf_match(order: Order, page: &[u8], key: &[u8]) -> Option<(usize, Vec<u8>)> {
    let count = usize::from(order.u16(page, 10));
    (0..count).find_map(|i| {
        let e = PAGE_HEADER + i * ELEMENT;
        let pos = order.u32(page, e + 4) as usize;
        let ksize = order.u32(page, e + 8) as usize;
        let vsize = order.u32(page, e + 12) as usize;
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
