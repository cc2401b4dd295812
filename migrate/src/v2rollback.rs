//! The 3.0 -> 2.2/2.3 rollback (etcd3 storage to etcd2), after the original's
//! `RollbackV3ToV2`, with the engine's safety:
//! 1. check the data dir's WAL (CRC chain, truncation) and newest snap file before anything
//!    runs (etcd itself would "repair" a torn WAL tail, writing to the data);
//! 2. start etcd-`from` on a scratch copy of the data dir and read every key, the leases' remaining TTLs, the members and the
//!    raft position; refuse keys the v2 store cannot hold (not UTF-8, not a clean path, a value
//!    that is also a directory) before writing anything;
//! 3. write the etcd2 dir beside the data dir: a v2 store snapshot (keys under /1, members and
//!    cluster version `<to>.0` under /0, leased keys expiring after their remaining TTL) and a
//!    fresh WAL in the 2.x framing keeping the member and cluster ids; no v3 backend;
//! 4. read it back (our reader: CRC chain, snap CRC, the store) and compare with the keyspace;
//! 5. swap it in with the engine's journalled two renames.
//!
//! Where the original was unsafe: it read the bolt file directly and replayed every revision
//! (so deleted keys came back), gave every leased key a 1 h TTL, wrote non-UTF-8 values that
//! JSON turned into U+FFFD, and renamed the data dir before the new one existed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use semver::Version;
use serde_json::Value;

use crate::datadir::DataDir;
use crate::engine::{self, failpoint, Sidecar, StepFingerprints};
use crate::error::MigrateError;
use crate::keyspace::{self, Fingerprint, KeyspaceError};
use crate::options::Options;
use crate::report::log;
use crate::server::Server;
use crate::v2store::{Member, V2Key};
use crate::version::VersionPair;

/// How far a v2 expiry may drift from the v3 lease's remaining TTL (reading takes time).
const EXPIRY_TOLERANCE: Duration = Duration::from_secs(120);

/// A write-once file, fsynced, created with `mode` (the umask applies).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MigrateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(engine::io_err(path))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(engine::io_err(path))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), MigrateError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(engine::io_err(path))
}

/// What the rollback learns from the running etcd 3.0: member, cluster and raft position.
struct Cluster {
    member_id: u64,
    cluster_id: u64,
    term: u64,
    index: u64,
    members: Vec<Member>,
}

fn read_cluster(etcdctl: &Path, server: &mut Server) -> Result<Cluster, MigrateError> {
    let bad = |what: &str, v: &Value| {
        MigrateError::Keyspace(KeyspaceError::Output {
            cmd: format!("etcdctl {what}"),
            message: format!("unexpected answer: {v}"),
        })
    };
    let list = keyspace::query(etcdctl, server, &["member", "list"])?;
    let status = keyspace::query(etcdctl, server, &["endpoint", "status"])?;
    let st = status
        .get(0)
        .and_then(|s| s.get("Status"))
        .ok_or_else(|| bad("endpoint status", &status))?;
    let num = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let members = list
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("member list", &list))?
        .iter()
        .map(|m| {
            Ok(Member {
                id: num(m, "/ID").ok_or_else(|| bad("member list", m))?,
                name: m.get("name").and_then(Value::as_str).unwrap_or("").into(),
                peer_urls: strings(m.get("peerURLs")),
                client_urls: strings(m.get("clientURLs")),
            })
        })
        .collect::<Result<Vec<_>, MigrateError>>()?;
    Ok(Cluster {
        member_id: num(st, "/header/member_id").ok_or_else(|| bad("endpoint status", st))?,
        cluster_id: num(st, "/header/cluster_id").ok_or_else(|| bad("endpoint status", st))?,
        term: num(st, "/raftTerm").ok_or_else(|| bad("endpoint status", st))?,
        index: num(st, "/raftIndex").ok_or_else(|| bad("endpoint status", st))?,
        members,
    })
}

/// Why the v3 keyspace cannot become a v2 store, checked before anything is written: the v2
/// store holds UTF-8 strings at clean paths, and a key cannot be both a value and a directory.
fn to_v2_keys(
    kvs: &[keyspace::Kv],
    ttls: &BTreeMap<i64, i64>,
    now: SystemTime,
) -> Result<Vec<V2Key>, MigrateError> {
    let refuse = |key: &[u8], why: String| MigrateError::NotRepresentableInV2 {
        key: String::from_utf8_lossy(key).into_owned(),
        why,
    };
    kvs.iter()
        .map(|kv| {
            let key = String::from_utf8(kv.key.clone())
                .map_err(|_| refuse(&kv.key, "the key is not UTF-8".into()))?;
            let value = String::from_utf8(kv.value.clone()).map_err(|_| {
                refuse(
                    &kv.key,
                    "the value is not UTF-8 (e.g. protobuf; the v2 store holds strings)".into(),
                )
            })?;
            crate::v2store::segments(&key).map_err(|e| refuse(&kv.key, e.to_string()))?;
            let expire = (kv.lease != 0).then(|| {
                let ttl = ttls.get(&kv.lease).copied().unwrap_or(0).max(1);
                now + Duration::from_secs(ttl as u64)
            });
            Ok(V2Key {
                key,
                value,
                expire,
                index: kv.mod_revision.max(1) as u64,
            })
        })
        .collect()
}

/// etcd 3.0.x (`from`) to `to` (2.2.x or 2.3.x, etcd2 storage); see [`rollback_write`].
pub fn rollback(
    options: &Options,
    from: &Version,
    to: &VersionPair,
) -> Result<StepFingerprints, MigrateError> {
    let side = Sidecar::for_dir(&options.data_dir);
    let logs = engine::log_dir()?;
    engine::remove_tree(&side.new)?;
    // etcd repairs a torn WAL tail when it starts; check the files first, so that a damaged
    // data dir is refused before anything (etcd included) writes to it.
    let wal = crate::raftlog::check_member_dir(&options.data_dir.join("member")).map_err(|e| {
        MigrateError::DamagedDataDir {
            dir: options.data_dir.display().to_string(),
            message: e.to_string(),
        }
    })?;
    log(&format!(
        "rollback {from} -> {to}: WAL checked (member {:x}, cluster {:x}, {} entries since the snapshot at {})",
        wal.metadata.node_id, wal.metadata.cluster_id, wal.entries, wal.snapshot.index
    ));
    failpoint("etcd2-rollback-before-old");
    // etcd writes to any data dir it runs on, so it reads a scratch copy: the data dir is
    // not written until the swap, and a refusal below leaves it byte for byte as it was.
    engine::take_backup(options, &side, "etcd2-rollback")?;
    let runner = engine::runner_for(options, from);
    let read = (|| {
        let mut server = engine::start_etcd(options, &runner, &side.backup, logs.path(), &[])?;
        failpoint(&format!("running-{runner}"));
        let etcdctl = engine::bin(options, "etcdctl", &runner);
        let (before, kvs) = keyspace::read(&etcdctl, &mut server, &runner, true)?;
        let cluster = read_cluster(&etcdctl, &mut server)?;
        server.stop();
        Ok::<_, MigrateError>((before, kvs, cluster))
    })();
    engine::remove_tree(&side.backup)?;
    let (before, kvs, cluster) = read?;
    log(&format!("before: {}", before.summary()));
    let now = SystemTime::now();
    let ttls = before
        .leases
        .iter()
        .map(|(id, l)| (*id, l.remaining_ttl))
        .collect();
    let keys = to_v2_keys(&kvs, &ttls, now)?;
    failpoint("etcd2-rollback-read");

    let written = rollback_write(options, &side.new, to, &cluster, &keys)
        .and_then(|()| verify_written(&side.new, &cluster, &keys, &before));
    let after = match written {
        Ok(after) => after,
        Err(e) => {
            let _ = engine::remove_tree(&side.new);
            return Err(e);
        }
    };
    log(&format!("after (v2 snapshot): {}", after.summary()));
    failpoint("etcd2-rollback-verified");
    let record = serde_json::json!({
        "step": "rollback", "storage": "etcd2", "from": from.to_string(),
        "to": to.version.to_string(), "before": before.to_json(),
    });
    engine::swap_in(options, &side, &record, "rollback")?;
    log(&format!(
        "rolled back to {to}: {} keys in a v2 snapshot at index {} (term {}), member {:x} of cluster {:x}",
        keys.len(),
        cluster.index,
        cluster.term,
        cluster.member_id,
        cluster.cluster_id
    ));
    Ok(StepFingerprints {
        before: before.to_json(),
        after: after.to_json(),
        seconds: Vec::new(),
    })
}

/// The 2.x WAL of a rolled-back member: metadata (member and cluster ids), an empty snapshot,
/// the snapshot at the cluster's index and term, the HardState.
fn etcd2_wal(cluster: &Cluster) -> Vec<u8> {
    use crate::raftlog::*;
    let mut w = WalWriter::new(0, Framing::Unpadded);
    w.append_message(
        METADATA_TYPE,
        &Metadata {
            node_id: cluster.member_id,
            cluster_id: cluster.cluster_id,
        },
    );
    w.append_message(SNAPSHOT_TYPE, &WalSnapshot::default());
    w.append_message(
        SNAPSHOT_TYPE,
        &WalSnapshot {
            index: cluster.index,
            term: cluster.term,
        },
    );
    w.append_message(
        STATE_TYPE,
        &HardState {
            term: cluster.term,
            vote: cluster.member_id,
            commit: cluster.index,
        },
    );
    w.into_bytes()
}

/// Writes the etcd2 data dir `new`: `member/snap/<term>-<index>.snap` holding the v2 store
/// (user keys under /1, the members and cluster version `<to major.minor>.0` under /0) and
/// `member/wal/0000000000000000-0000000000000000.wal` in the 2.x framing: CRC, metadata (the
/// member and cluster ids), an empty snapshot, the snapshot, the HardState. No v3 backend.
fn rollback_write(
    options: &Options,
    new: &Path,
    to: &VersionPair,
    cluster: &Cluster,
    keys: &[V2Key],
) -> Result<(), MigrateError> {
    use crate::raftlog::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&options.data_dir).map_err(engine::io_err(&options.data_dir))?;
    let version = format!("{}.{}.0", to.version.major, to.version.minor);
    let store =
        crate::v2store::build(keys, &cluster.members, &version, cluster.index).map_err(|e| {
            MigrateError::NotRepresentableInV2 {
                key: String::new(),
                why: e.to_string(),
            }
        })?;
    mkdir(new, 0o700)?;
    mkdir(&new.join("member"), 0o700)?;
    mkdir(&new.join("member/snap"), 0o700)?;
    mkdir(&new.join("member/wal"), 0o700)?;
    let snapshot = Snapshot {
        data: store,
        metadata: Some(SnapshotMetadata {
            conf_state: Some(ConfState {
                voters: cluster.members.iter().map(|m| m.id).collect(),
            }),
            index: cluster.index,
            term: cluster.term,
        }),
    };
    write_file(
        &new.join("member/snap")
            .join(snap_name(cluster.term, cluster.index)),
        &encode_snap(&snapshot),
        0o666,
    )?;
    write_file(
        &new.join("member/wal").join(wal_name(0, 0)),
        &etcd2_wal(cluster),
        0o600,
    )?;
    DataDir::new(new).write_version(to)?;
    for dir in ["member/snap", "member/wal", "member", ""] {
        hostio::fs::fsync_dir(&new.join(dir)).map_err(engine::io_err(new))?;
    }
    // The new dir takes the original's mode and owner, like a 3.x rollback.
    std::fs::set_permissions(
        new,
        std::fs::Permissions::from_mode(meta.permissions().mode()),
    )
    .map_err(engine::io_err(new))?;
    let c = std::ffi::CString::new(new.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: chown on a path we just created; failure only matters when not root.
    if unsafe { libc::chown(c.as_ptr(), meta.uid(), meta.gid()) } != 0
        && meta.uid() != unsafe { libc::geteuid() }
    {
        return Err(engine::io_err(new)(std::io::Error::last_os_error()));
    }
    failpoint("etcd2-rollback-written");
    Ok(())
}

/// Reads the written dir back (WAL chain and snap CRC, then the store) and checks it holds
/// exactly `keys`, expiring where they had a lease, and the member and cluster ids.
fn verify_written(
    new: &Path,
    cluster: &Cluster,
    keys: &[V2Key],
    before: &Fingerprint,
) -> Result<Fingerprint, MigrateError> {
    let mismatch = |differences: String| MigrateError::FingerprintMismatch {
        step: "rollback to etcd2".into(),
        differences,
    };
    let wal = crate::raftlog::check_member_dir(&new.join("member"))
        .map_err(|e| mismatch(format!("the written WAL does not read back: {e}")))?;
    if (wal.metadata.node_id, wal.metadata.cluster_id) != (cluster.member_id, cluster.cluster_id)
        || wal.snapshot.index != cluster.index
    {
        return Err(mismatch(format!("the written WAL says {wal:?}")));
    }
    let path = new
        .join("member/snap")
        .join(crate::raftlog::snap_name(cluster.term, cluster.index));
    let bytes = std::fs::read(&path).map_err(engine::io_err(&path))?;
    let snap = crate::raftlog::decode_snap(&path.display().to_string(), &bytes)
        .map_err(|e| mismatch(e.to_string()))?;
    let store: Value =
        serde_json::from_slice(&snap.data).map_err(|e| mismatch(format!("store JSON: {e}")))?;
    let read = crate::v2store::user_keys(&store);
    let mut diffs = Vec::new();
    for k in keys {
        match read.get(&k.key) {
            None => diffs.push(format!("{} is missing", k.key)),
            Some((value, _)) if *value != k.value => diffs.push(format!("{} differs", k.key)),
            Some((_, expire)) => {
                let off = match (expire, k.expire) {
                    (None, None) => false,
                    (Some(a), Some(b)) => {
                        a.duration_since(b)
                            .or_else(|e| Ok::<_, ()>(e.duration()))
                            .unwrap_or_default()
                            > EXPIRY_TOLERANCE
                    }
                    _ => true,
                };
                if off {
                    diffs.push(format!(
                        "{}: expiry {expire:?}, lease says {:?}",
                        k.key, k.expire
                    ));
                }
            }
        }
    }
    if read.len() != keys.len() {
        diffs.push(format!(
            "{} keys written, {} expected",
            read.len(),
            keys.len()
        ));
    }
    let after = Fingerprint {
        revision: 0,
        keys: read.len(),
        digest: keyspace::digest(
            read.iter()
                .map(|(k, (v, _))| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        ),
        leases: Default::default(),
    };
    if after.digest != before.digest {
        diffs.push(format!(
            "keys/values digest {} -> {}",
            before.digest, after.digest
        ));
    }
    if diffs.is_empty() {
        Ok(after)
    } else {
        Err(mismatch(diffs.join("; ")))
    }
}
