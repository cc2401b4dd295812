//! etcd's backend read offline: the fingerprint every etcd3 step compares before and after.
//!
//! The fingerprint is read from `member/snap/db` of a stopped member with [`crate::bbolt`], in
//! one streaming pass: nothing holds more than one page of the file, whatever the data size,
//! no etcd needs to be running, and no credential is needed when etcd auth is enabled.
//!
//! What it covers (buckets from etcd's `server/storage/schema/bucket.go`):
//! - `key`: every MVCC revision, in revision order. `history_sha256` is a SHA-256 over every
//!   entry's raw revision key and raw `mvccpb.KeyValue` bytes, so a changed, missing or extra
//!   revision of any key, a changed value, or a lease moved to another key all show. `hash_kv`
//!   is the same entries as etcd's `HashKV` checksums them (CRC-32C over the bucket name, then
//!   each key and value; the tombstone at the compaction revision is skipped): it equals what
//!   `etcdctl endpoint hashkv` prints for the data whenever no key kept by the last compaction
//!   was written again later (3.4's HashKV then leaves those old revisions out).
//! - `lease`: each lease's id and granted TTL (the remaining TTL is not stored unless lease
//!   checkpointing is on, and a restart refreshes it anyway).
//! - `auth`, `authUsers`, `authRoles`: raw, so users, roles, permissions and the enabled flag.
//! - `meta`: the compaction revisions and the storage version (3.6+); `members`, `cluster`,
//!   `consistent_index` and `term` are left out, because a restore rewrites them by design.
//!
//! Why not etcd's own HashKV through a running server: it needs credentials when auth is on,
//! it covers neither leases nor auth, and it is a CRC-32. Why not the latest value of each key:
//! that needs an index of every key in memory; the history digest is stronger (equal histories
//! give equal latest values) and streams. See docs/ARCHITECTURE.md ("migrate fingerprints").

use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::bbolt::{BoltError, BucketRoot, Db};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Bolt(#[from] BoltError),
    #[error("`{path}` is not an etcd v3 backend: it has no `{bucket}` bucket")]
    MissingBucket { path: PathBuf, bucket: String },
    #[error("`{path}`: unexpected entry in bucket `{bucket}`: {message}")]
    Entry {
        path: PathBuf,
        bucket: String,
        message: String,
    },
}

/// The parts of `mvccpb.KeyValue` the fingerprint needs; prost skips the key and value bytes
/// without copying them.
#[derive(Clone, PartialEq, Message)]
struct KeyValueHeader {
    #[prost(int64, tag = "4")]
    version: i64,
}

/// `leasepb.Lease`.
#[derive(Clone, PartialEq, Message)]
struct Lease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
}

/// A revision key of the `key` bucket: 8 bytes main revision, `_`, 8 bytes sub revision, and a
/// trailing `t` for a tombstone (etcd's `mvcc/revision.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionKey {
    pub main: i64,
    pub sub: i64,
    pub tombstone: bool,
}

impl RevisionKey {
    pub fn parse(key: &[u8]) -> Option<RevisionKey> {
        if !(key.len() == 17 || key.len() == 18 && key[17] == b't') || key[8] != b'_' {
            return None;
        }
        Some(RevisionKey {
            main: i64::from_be_bytes(key[..8].try_into().ok()?),
            sub: i64::from_be_bytes(key[9..17].try_into().ok()?),
            tombstone: key.len() == 18,
        })
    }
}

/// Revisions `(low, high]` to digest on their own, for a member that caught up with its
/// cluster: only the part of the history both sides had is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub low: i64,
    pub high: i64,
}

/// The fingerprint of one backend file. Equal fingerprints mean the same MVCC history, leases
/// and auth state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The store's current revision.
    pub revision: i64,
    /// The last finished compaction (0: never compacted).
    pub compact_revision: i64,
    /// A compaction that was scheduled but not finished (0: none); etcd finishes it at start.
    pub pending_compaction: i64,
    /// Entries in the `key` bucket (one per revision of a key).
    pub revisions: u64,
    /// Keys that exist at `revision`.
    pub keys: u64,
    /// Bytes of keys and values in the `key` bucket.
    pub bytes: u64,
    pub history_sha256: String,
    pub hash_kv: u32,
    pub leases: u64,
    pub leases_sha256: String,
    pub auth_enabled: bool,
    pub auth_sha256: String,
    /// `meta/storageVersion` (written by 3.6+), if present.
    pub storage_version: Option<String>,
    /// The digest of the revisions in the requested window, and how many there were.
    pub window: Option<(Window, String, u64)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest_entry(h: &mut Sha256, k: &[u8], v: &[u8]) {
    h.update((k.len() as u64).to_be_bytes());
    h.update(k);
    h.update((v.len() as u64).to_be_bytes());
    h.update(v);
}

/// The database file of a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member/snap/db")
}

/// The main revision stored in a meta key (a 17-byte revision), 0 when absent.
fn meta_revision(value: Option<&Vec<u8>>) -> i64 {
    value
        .and_then(|v| RevisionKey::parse(v))
        .map_or(0, |r| r.main)
}

/// What `meta` holds that the fingerprint uses.
#[derive(Debug, Default)]
pub struct MetaInfo {
    pub consistent_index: u64,
    pub finished_compact: i64,
    pub scheduled_compact: i64,
    pub storage_version: Option<String>,
    pub term: Option<u64>,
}

fn required(db: &Db, path: &Path, name: &str) -> Result<BucketRoot, BackendError> {
    db.bucket(name.as_bytes())?
        .ok_or_else(|| BackendError::MissingBucket {
            path: path.to_path_buf(),
            bucket: name.into(),
        })
}

fn read_meta(db: &Db, path: &Path) -> Result<MetaInfo, BackendError> {
    let meta = required(db, path, "meta")?;
    let mut m = std::collections::BTreeMap::new();
    db.for_each(&meta, |k, v| {
        m.insert(k.to_vec(), v.to_vec());
        Ok::<_, BackendError>(())
    })?;
    let u64_of = |k: &str| {
        m.get(k.as_bytes())
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
    };
    Ok(MetaInfo {
        consistent_index: u64_of("consistent_index").unwrap_or(0),
        term: u64_of("term"),
        finished_compact: meta_revision(m.get(b"finishedCompactRev".as_slice())),
        scheduled_compact: meta_revision(m.get(b"scheduledCompactRev".as_slice())),
        storage_version: m
            .get(b"storageVersion".as_slice())
            .map(|v| String::from_utf8_lossy(v).into_owned()),
    })
}

/// The `meta` bucket of the backend at `db_file` (cheap: one small bucket).
pub fn meta(db_file: &Path) -> Result<MetaInfo, BackendError> {
    let db = Db::open(db_file)?;
    read_meta(&db, db_file)
}

/// `cluster/clusterVersion` of the backend at `db_file` (3.5+ store it there), if present.
pub fn cluster_version(db_file: &Path) -> Result<Option<String>, BackendError> {
    let db = Db::open(db_file)?;
    Ok(db
        .locate(b"cluster", b"clusterVersion")?
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned()))
}

/// `cluster/downgrade` of the backend at `db_file` (3.5+): whether a downgrade is enabled and
/// its target (`{"target-version":"3.6.0","enabled":true}`, etcd's `version.DowngradeInfo`).
pub fn downgrade_info(db_file: &Path) -> Result<Option<(bool, String)>, BackendError> {
    let db = Db::open(db_file)?;
    let Some((_, value)) = db.locate(b"cluster", b"downgrade")? else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(&value).map_err(|e| BackendError::Entry {
        path: db_file.to_path_buf(),
        bucket: "cluster".into(),
        message: format!("`downgrade` is not etcd's DowngradeInfo JSON: {e}"),
    })?;
    Ok(Some((
        v["enabled"].as_bool().unwrap_or(false),
        v["target-version"].as_str().unwrap_or_default().to_string(),
    )))
}

/// Rewrites `cluster/clusterVersion` from `from` to `to` in place (same length). The caller
/// holds a working copy no etcd runs on.
pub fn set_cluster_version(db_file: &Path, from: &str, to: &str) -> Result<(), BackendError> {
    let db = Db::open(db_file)?;
    let Some((offset, _)) = db.locate(b"cluster", b"clusterVersion")? else {
        return Ok(());
    };
    drop(db);
    crate::bbolt::patch_value(db_file, offset, from.as_bytes(), to.as_bytes())?;
    Ok(())
}

/// The store's current revision: the newest revision key (the last key of the `key` bucket)
/// or the compaction, whichever is higher. Cheap: one path down the tree.
pub fn current_revision(db_file: &Path) -> Result<i64, BackendError> {
    let db = Db::open(db_file)?;
    let meta = read_meta(&db, db_file)?;
    let keys = required(&db, db_file, "key")?;
    let last = db
        .last_key(&keys)?
        .and_then(|k| RevisionKey::parse(&k))
        .map_or(0, |r| r.main);
    Ok(last.max(meta.finished_compact).max(meta.scheduled_compact))
}

/// Reads the fingerprint of the backend file `db_file` in one pass.
pub fn fingerprint(db_file: &Path, window: Option<Window>) -> Result<Fingerprint, BackendError> {
    let db = Db::open(db_file)?;
    let meta = read_meta(&db, db_file)?;
    let keys_bucket = required(&db, db_file, "key")?;
    let compact = meta.finished_compact;
    let entry_err = |bucket: &str, message: String| BackendError::Entry {
        path: db_file.to_path_buf(),
        bucket: bucket.into(),
        message,
    };

    let mut history = Sha256::new();
    let mut windowed = Sha256::new();
    let mut window_count = 0u64;
    let mut crc = crc32c::crc32c(b"key");
    let (mut revisions, mut bytes, mut last_main) = (0u64, 0u64, 0i64);
    // Live keys: every key alive at the compaction has exactly one entry at or below it; above
    // it, a generation starts at version 1 and ends with a tombstone.
    let (mut kept, mut created, mut deleted) = (0u64, 0u64, 0u64);
    db.for_each(&keys_bucket, |k, v| {
        let rev = RevisionKey::parse(k)
            .ok_or_else(|| entry_err("key", format!("`{}` is not a revision", hex(k))))?;
        digest_entry(&mut history, k, v);
        if !(rev.tombstone && rev.main == compact) {
            crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, k), v);
        }
        if let Some(w) = window {
            if rev.main > w.low && rev.main <= w.high {
                digest_entry(&mut windowed, k, v);
                window_count += 1;
            }
        }
        revisions += 1;
        bytes += (k.len() + v.len()) as u64;
        last_main = last_main.max(rev.main);
        if rev.main <= compact {
            kept += u64::from(!rev.tombstone);
        } else if rev.tombstone {
            deleted += 1;
        } else {
            let header = KeyValueHeader::decode(v)
                .map_err(|e| entry_err("key", format!("revision {}: {e}", rev.main)))?;
            created += u64::from(header.version == 1);
        }
        Ok::<_, BackendError>(())
    })?;

    let (leases, leases_sha256) = lease_digest(&db, db_file)?;
    let (auth_enabled, auth_sha256) = auth_digest(&db)?;
    let pending = if meta.scheduled_compact > compact {
        meta.scheduled_compact
    } else {
        0
    };
    Ok(Fingerprint {
        revision: last_main.max(compact).max(pending),
        compact_revision: compact,
        pending_compaction: pending,
        revisions,
        keys: (kept + created).saturating_sub(deleted),
        bytes,
        history_sha256: hex(&history.finalize()),
        hash_kv: crc,
        leases,
        leases_sha256,
        auth_enabled,
        auth_sha256,
        storage_version: meta.storage_version,
        window: window.map(|w| (w, hex(&windowed.finalize()), window_count)),
    })
}

/// The `lease` bucket: how many leases, and a digest of their ids and TTLs.
fn lease_digest(db: &Db, db_file: &Path) -> Result<(u64, String), BackendError> {
    let mut digest = Sha256::new();
    let mut leases = 0u64;
    if let Some(bucket) = db.bucket(b"lease")? {
        db.for_each(&bucket, |k, v| {
            let lease = Lease::decode(v).map_err(|e| BackendError::Entry {
                path: db_file.to_path_buf(),
                bucket: "lease".into(),
                message: format!("`{}`: {e}", hex(k)),
            })?;
            digest.update(lease.id.to_be_bytes());
            digest.update(lease.ttl.to_be_bytes());
            leases += 1;
            Ok::<_, BackendError>(())
        })?;
    }
    Ok((leases, hex(&digest.finalize())))
}

/// The auth buckets: whether auth is enabled, and a digest of users, roles and settings.
fn auth_digest(db: &Db) -> Result<(bool, String), BackendError> {
    let mut auth = Sha256::new();
    let mut enabled = false;
    for name in ["auth", "authUsers", "authRoles"] {
        auth.update(name.as_bytes());
        if let Some(bucket) = db.bucket(name.as_bytes())? {
            db.for_each(&bucket, |k, v| {
                if name == "auth" && k == b"authEnabled" {
                    enabled = v.first() == Some(&1);
                }
                digest_entry(&mut auth, k, v);
                Ok::<_, BackendError>(())
            })?;
        }
    }
    Ok((enabled, hex(&auth.finalize())))
}

impl Fingerprint {
    pub fn summary(&self) -> String {
        format!(
            "revision {}, {} keys in {} revisions ({} MB), sha256 {}, hashkv {:08x}, {} leases{}",
            self.revision,
            self.keys,
            self.revisions,
            self.bytes / 1_000_000,
            &self.history_sha256[..16],
            self.hash_kv,
            self.leases,
            if self.auth_enabled { ", auth on" } else { "" }
        )
    }

    /// Everything that differs between `self` (before) and `after`; empty when identical.
    pub fn differences(&self, after: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{what} {a} -> {b}"));
            }
        };
        check(
            "revision",
            self.revision.to_string(),
            after.revision.to_string(),
        );
        check(
            "compaction revision",
            self.compact_revision.to_string(),
            after.compact_revision.to_string(),
        );
        check(
            "revisions",
            self.revisions.to_string(),
            after.revisions.to_string(),
        );
        check("key count", self.keys.to_string(), after.keys.to_string());
        check(
            "history sha256",
            self.history_sha256.clone(),
            after.history_sha256.clone(),
        );
        check("leases", self.leases.to_string(), after.leases.to_string());
        check(
            "leases sha256",
            self.leases_sha256.clone(),
            after.leases_sha256.clone(),
        );
        check(
            "auth enabled",
            self.auth_enabled.to_string(),
            after.auth_enabled.to_string(),
        );
        check(
            "auth sha256",
            self.auth_sha256.clone(),
            after.auth_sha256.clone(),
        );
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "revision": self.revision,
            "compact_revision": self.compact_revision,
            "pending_compaction": self.pending_compaction,
            "revisions": self.revisions,
            "keys": self.keys,
            "bytes": self.bytes,
            "history_sha256": self.history_sha256,
            "hash_kv": self.hash_kv,
            "leases": self.leases,
            "leases_sha256": self.leases_sha256,
            "auth_enabled": self.auth_enabled,
            "auth_sha256": self.auth_sha256,
            "storage_version": self.storage_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys() {
        let mut k = 5i64.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend(2i64.to_be_bytes());
        assert_eq!(
            RevisionKey::parse(&k),
            Some(RevisionKey {
                main: 5,
                sub: 2,
                tombstone: false
            })
        );
        let mut t = k.clone();
        t.push(b't');
        assert!(RevisionKey::parse(&t).unwrap().tombstone);
        let mut bad = k.clone();
        bad[8] = b'-';
        assert_eq!(RevisionKey::parse(&bad), None);
        assert_eq!(RevisionKey::parse(&k[..16]), None);
        let mut x = k.clone();
        x.push(b'x');
        assert_eq!(RevisionKey::parse(&x), None);
    }
}
