//! etcd's on-disk raft formats, as far as an etcd2 data dir needs them: the snap file
//! (`snappb.Snapshot{crc, data}` over a `raftpb.Snapshot`) and the WAL (`walpb.Record`s framed
//! by an 8-byte little-endian length, with a CRC-32C chained over every record's data).
//!
//! The messages are declared with prost's derive (field numbers from etcd's .proto files);
//! nothing here hand-rolls varints. CRC-32C comes from the `crc32c` crate.
//!
//! Framing: etcd 3.x pads each record to 8 bytes and marks it in the length word's top byte
//! (`0x80 | pad`); etcd 2.2 and 2.3 read the length word as a plain length and cannot read
//! padded records. The reader accepts both; the writer writes the 2.x form when asked to
//! (`Framing::Unpadded`), which is what a rollback to 2.2/2.3 must produce (the original did
//! the same with its forked 2.2 WAL package).

use prost::Message;

/// `raftpb.ConfState`.
#[derive(Clone, PartialEq, Message)]
pub struct ConfState {
    #[prost(uint64, repeated, packed = "false", tag = "1")]
    pub voters: Vec<u64>,
}

/// `raftpb.SnapshotMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct SnapshotMetadata {
    #[prost(message, optional, tag = "1")]
    pub conf_state: Option<ConfState>,
    #[prost(uint64, tag = "2")]
    pub index: u64,
    #[prost(uint64, tag = "3")]
    pub term: u64,
}

/// `raftpb.Snapshot`.
#[derive(Clone, PartialEq, Message)]
pub struct Snapshot {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<SnapshotMetadata>,
}

/// `snappb.Snapshot`: the snap file.
#[derive(Clone, PartialEq, Message)]
struct SnapFile {
    #[prost(uint32, tag = "1")]
    crc: u32,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

/// `walpb.Record`.
#[derive(Clone, PartialEq, Message)]
pub struct Record {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(uint32, tag = "2")]
    pub crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// `walpb.Snapshot`: the snapshot a WAL starts from.
#[derive(Clone, PartialEq, Message)]
pub struct WalSnapshot {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(uint64, tag = "2")]
    pub term: u64,
}

/// `raftpb.HardState`.
#[derive(Clone, PartialEq, Message)]
pub struct HardState {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub vote: u64,
    #[prost(uint64, tag = "3")]
    pub commit: u64,
}

/// `etcdserverpb.Metadata`: the WAL's metadata record (the member and cluster ids).
#[derive(Clone, PartialEq, Message)]
pub struct Metadata {
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
}

pub const METADATA_TYPE: i64 = 1;
pub const ENTRY_TYPE: i64 = 2;
pub const STATE_TYPE: i64 = 3;
pub const CRC_TYPE: i64 = 4;
pub const SNAPSHOT_TYPE: i64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// etcd 3.x: records padded to 8 bytes, the pad in the length word's top byte.
    Padded,
    /// etcd 2.2/2.3: a plain length.
    Unpadded,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{what} is truncated at byte {offset} (a record of {want} bytes, {have} left)")]
    Truncated {
        what: String,
        offset: usize,
        want: u64,
        have: usize,
    },
    #[error("{what}: CRC mismatch at byte {offset} (record says {stored:08x}, data gives {computed:08x})")]
    Crc {
        what: String,
        offset: usize,
        stored: u32,
        computed: u32,
    },
    #[error("{what}: cannot decode at byte {offset}: {message}")]
    Decode {
        what: String,
        offset: usize,
        message: String,
    },
}

/// A WAL file being written: records appended in order, the CRC chained from `prev_crc` (0 for
/// the first file).
pub struct WalWriter {
    bytes: Vec<u8>,
    crc: u32,
    framing: Framing,
}

impl WalWriter {
    /// A new WAL file; its first record is the CRC record carrying `prev_crc`.
    pub fn new(prev_crc: u32, framing: Framing) -> WalWriter {
        let mut w = WalWriter {
            bytes: Vec::new(),
            crc: prev_crc,
            framing,
        };
        w.append(CRC_TYPE, Vec::new());
        w
    }

    /// Appends one record; its crc is the running CRC-32C including its data (as etcd's
    /// encoder does for every record type).
    pub fn append(&mut self, r#type: i64, data: Vec<u8>) {
        self.crc = crc32c::crc32c_append(self.crc, &data);
        let rec = Record {
            r#type,
            crc: self.crc,
            data,
        }
        .encode_to_vec();
        let mut len = rec.len() as u64;
        let pad = match self.framing {
            Framing::Padded => (8 - rec.len() % 8) % 8,
            Framing::Unpadded => 0,
        };
        if pad != 0 {
            len |= (0x80 | pad as u64) << 56;
        }
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(&rec);
        self.bytes.resize(self.bytes.len() + pad, 0);
    }

    pub fn append_message(&mut self, r#type: i64, m: &impl Message) {
        self.append(r#type, m.encode_to_vec());
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// `%016x-%016x.wal`: sequence and first index of a WAL file.
pub fn wal_name(seq: u64, index: u64) -> String {
    format!("{seq:016x}-{index:016x}.wal")
}

/// `%016x-%016x.snap`: term and index of a snapshot.
pub fn snap_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
}

/// Reads every record of one WAL file whose chain starts at `prev_crc`, checking each CRC.
/// Zeroed space after the last record (etcd preallocates) ends the file.
pub fn read_wal(what: &str, bytes: &[u8], prev_crc: u32) -> Result<Vec<Record>, FormatError> {
    let mut out = Vec::new();
    let mut crc = prev_crc;
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at < 8 {
            return Err(FormatError::Truncated {
                what: what.into(),
                offset: at,
                want: 8,
                have: bytes.len() - at,
            });
        }
        let word = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if word == 0 {
            break;
        }
        let (len, pad) = if word >> 63 == 1 {
            (word & !(0xffu64 << 56), ((word >> 56) & 0x7) as usize)
        } else {
            (word, 0)
        };
        let start = at + 8;
        let have = bytes.len() - start;
        if len as usize + pad > have {
            return Err(FormatError::Truncated {
                what: what.into(),
                offset: at,
                want: len + pad as u64,
                have,
            });
        }
        let rec = Record::decode(&bytes[start..start + len as usize]).map_err(|e| {
            FormatError::Decode {
                what: what.into(),
                offset: at,
                message: e.to_string(),
            }
        })?;
        // A CRC record carries the chain's value so far (the previous file's last CRC); every
        // other record extends the chain with its data.
        if rec.r#type != CRC_TYPE {
            crc = crc32c::crc32c_append(crc, &rec.data);
        }
        if rec.crc != crc {
            return Err(FormatError::Crc {
                what: what.into(),
                offset: at,
                stored: rec.crc,
                computed: crc,
            });
        }
        out.push(rec);
        at = start + len as usize + pad;
    }
    Ok(out)
}

/// The bytes of a snap file holding `snapshot`.
pub fn encode_snap(snapshot: &Snapshot) -> Vec<u8> {
    let data = snapshot.encode_to_vec();
    SnapFile {
        crc: crc32c::crc32c(&data),
        data,
    }
    .encode_to_vec()
}

/// Decodes a snap file, checking its CRC.
pub fn decode_snap(what: &str, bytes: &[u8]) -> Result<Snapshot, FormatError> {
    let decode_err = |e: prost::DecodeError| FormatError::Decode {
        what: what.into(),
        offset: 0,
        message: e.to_string(),
    };
    let file = SnapFile::decode(bytes).map_err(decode_err)?;
    let computed = crc32c::crc32c(&file.data);
    if computed != file.crc {
        return Err(FormatError::Crc {
            what: what.into(),
            offset: 0,
            stored: file.crc,
            computed,
        });
    }
    Snapshot::decode(file.data.as_slice()).map_err(decode_err)
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("`{dir}` holds no WAL file")]
    NoWal { dir: String },
    #[error("the WAL's latest snapshot (term {term}, index {index}) has no snap file `{path}`")]
    MissingSnap { path: String, term: u64, index: u64 },
}

/// What a member directory's WAL says.
#[derive(Debug, Clone, PartialEq)]
pub struct WalSummary {
    pub metadata: Metadata,
    /// The newest snapshot record (index 0: none).
    pub snapshot: WalSnapshot,
    /// The newest HardState record.
    pub state: Option<HardState>,
    pub entries: usize,
}

/// Reads every WAL file of `member` (`member/wal/*.wal`, in name order, one CRC chain) and the
/// snap file of the newest WAL snapshot: a truncated record, a CRC mismatch or a missing snap
/// file is an error naming the file. Read only.
pub fn check_member_dir(member: &std::path::Path) -> Result<WalSummary, CheckError> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| CheckError::Io { path, source }
    };
    let wal_dir = member.join("wal");
    let mut files: Vec<_> = std::fs::read_dir(&wal_dir)
        .map_err(io(&wal_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CheckError::NoWal {
            dir: wal_dir.display().to_string(),
        });
    }
    let mut crc = 0;
    let mut summary = WalSummary {
        metadata: Metadata::default(),
        snapshot: WalSnapshot::default(),
        state: None,
        entries: 0,
    };
    let decode = |what: &str, rec: &Record| FormatError::Decode {
        what: what.into(),
        offset: 0,
        message: format!("record type {} does not decode", rec.r#type),
    };
    for file in &files {
        let what = file.display().to_string();
        let bytes = std::fs::read(file).map_err(io(file))?;
        for rec in read_wal(&what, &bytes, crc)? {
            match rec.r#type {
                METADATA_TYPE => {
                    summary.metadata =
                        Metadata::decode(rec.data.as_slice()).map_err(|_| decode(&what, &rec))?
                }
                SNAPSHOT_TYPE => {
                    summary.snapshot =
                        WalSnapshot::decode(rec.data.as_slice()).map_err(|_| decode(&what, &rec))?
                }
                STATE_TYPE => {
                    summary.state = Some(
                        HardState::decode(rec.data.as_slice()).map_err(|_| decode(&what, &rec))?,
                    )
                }
                ENTRY_TYPE => summary.entries += 1,
                _ => {}
            }
            crc = rec.crc;
        }
    }
    let WalSnapshot { index, term } = summary.snapshot;
    if index > 0 {
        let path = member.join("snap").join(snap_name(term, index));
        let bytes = std::fs::read(&path).map_err(|_| CheckError::MissingSnap {
            path: path.display().to_string(),
            term,
            index,
        })?;
        decode_snap(&path.display().to_string(), &bytes)?;
    }
    Ok(summary)
}

/// `raftpb.Entry`.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(uint64, tag = "2")]
    pub term: u64,
    #[prost(uint64, tag = "3")]
    pub index: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// `raftpb.EntryNormal`: a client request (empty data: the no-op a new leader appends).
pub const ENTRY_NORMAL: i32 = 0;

/// The largest WAL record migrate accepts when streaming (etcd's requests are at most a few MB).
const MAX_RECORD: u64 = 256 << 20;

/// Whether a normal entry's request may change the v3 keyspace, leases or auth: anything but
/// the leader's empty no-op and the requests that only touch membership and the cluster
/// version (`etcdserverpb.InternalRaftRequest` fields ID 1, header 100, v2 2 (in 3.4 the
/// cluster version and member attributes are v2 requests), cluster_version_set 1300,
/// cluster_member_attr_set 1301, downgrade_info_set 1302). A request that does not decode
/// counts as one that may.
pub fn touches_v3_store(data: &[u8]) -> bool {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    if data.is_empty() || is_raw_v2_request(data) {
        return false;
    }
    let mut buf = data;
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else {
            return true;
        };
        if !matches!(tag, 1 | 2 | 100 | 1300 | 1301 | 1302) {
            return true;
        }
        if skip_field(wire_type, tag, &mut buf, DecodeContext::default()).is_err() {
            return true;
        }
    }
    false
}

/// etcd 3.x proposes v2 requests (its own cluster version and member attributes, the leader's
/// TTL `SYNC`, and any v2 API write) as a bare `etcdserverpb.Request`, not wrapped in an
/// `InternalRaftRequest`; the apply loop falls back to that type when the wrapper does not
/// decode. A bare request has its method as field 2, a short upper-case word, where the
/// wrapper's field 2 is an encoded message starting with a tag byte. They change the v2 store
/// only.
pub fn is_raw_v2_request(data: &[u8]) -> bool {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut buf = data;
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else {
            return false;
        };
        if tag == 2 && wire_type == WireType::LengthDelimited {
            let Ok(len) = decode_varint(&mut buf) else {
                return false;
            };
            let Some(method) = buf.get(..len as usize) else {
                return false;
            };
            return matches!(
                method,
                b"PUT" | b"POST" | b"DELETE" | b"QGET" | b"GET" | b"HEAD" | b"SYNC"
            );
        }
        if skip_field(wire_type, tag, &mut buf, DecodeContext::default()).is_err() {
            return false;
        }
    }
    false
}

/// The bytes of a WAL segment that hold records: etcd preallocates a segment to 64 MB and the
/// zeroed rest ends it. Walks the length words only. A record cut short counts to the file's
/// end (nothing of it may be dropped).
pub fn used_length(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut at = 0u64;
    while at + 8 <= len {
        let mut word = [0u8; 8];
        file.read_exact_at(&mut word, at)?;
        let word = u64::from_le_bytes(word);
        if word == 0 {
            return Ok(at);
        }
        let (size, pad) = if word >> 63 == 1 {
            (word & !(0xffu64 << 56), (word >> 56) & 0x7)
        } else {
            (word, 0)
        };
        at = match at.checked_add(8 + size + pad) {
            Some(next) if next <= len => next,
            _ => return Ok(len),
        };
    }
    Ok(len)
}

/// What the WAL holds after the index the backend has applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalTail {
    /// Entries after `applied` whose request may change the v3 store ([`touches_v3_store`]).
    pub requests: u64,
    /// The highest entry index seen.
    pub last_index: u64,
    /// Why the tail could not be read to its end (a torn or damaged record), if it could not.
    pub damaged: Option<String>,
}

/// Streams the WAL records of `wal_dir` that may hold entries after `applied` (from the last
/// segment whose first index is at or below `applied + 1`), one record in memory at a time,
/// checking each record's CRC from the segment's own CRC record on, and calls `f` for every
/// entry with an index above `applied`. Returns why the WAL could not be read to its end (a
/// torn or damaged record), if it could not. Read only.
pub fn for_each_entry_after(
    wal_dir: &std::path::Path,
    applied: u64,
    mut f: impl FnMut(&Entry),
) -> std::io::Result<Option<String>> {
    use std::io::{BufReader, Read};
    let mut files: Vec<(u64, std::path::PathBuf)> = match std::fs::read_dir(wal_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .filter_map(|p| {
                let name = p.file_stem()?.to_str()?.to_string();
                let (_, index) = name.split_once('-')?;
                Some((u64::from_str_radix(index, 16).ok()?, p))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    files.sort();
    let first = files
        .iter()
        .rposition(|(index, _)| *index <= applied.saturating_add(1))
        .unwrap_or(0);
    for (_, path) in files.iter().skip(first) {
        let what = path.display().to_string();
        let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut crc: Option<u32> = None;
        let mut offset = 0u64;
        loop {
            let mut word = [0u8; 8];
            match r.read_exact(&mut word) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let word = u64::from_le_bytes(word);
            if word == 0 {
                break;
            }
            let (len, pad) = if word >> 63 == 1 {
                (word & !(0xffu64 << 56), (word >> 56) & 0x7)
            } else {
                (word, 0)
            };
            if len + pad > MAX_RECORD {
                return Ok(Some(format!(
                    "{what}: a record of {len} bytes at byte {offset}"
                )));
            }
            let mut buf = vec![0u8; (len + pad) as usize];
            if let Err(e) = r.read_exact(&mut buf) {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    return Ok(Some(format!("{what}: torn record at byte {offset}")));
                }
                return Err(e);
            }
            let Ok(rec) = Record::decode(&buf[..len as usize]) else {
                return Ok(Some(format!("{what}: undecodable record at byte {offset}")));
            };
            let expect = if rec.r#type == CRC_TYPE {
                rec.crc
            } else {
                crc32c::crc32c_append(crc.unwrap_or(0), &rec.data)
            };
            if crc.is_some() && rec.crc != expect {
                return Ok(Some(format!("{what}: CRC mismatch at byte {offset}")));
            }
            crc = Some(rec.crc);
            if rec.r#type == ENTRY_TYPE {
                let Ok(e) = Entry::decode(rec.data.as_slice()) else {
                    return Ok(Some(format!("{what}: undecodable entry at byte {offset}")));
                };
                if e.index > applied {
                    f(&e);
                }
            }
            offset += 8 + len + pad;
        }
    }
    Ok(None)
}

/// What [`for_each_entry_after`] finds after `applied`, for deciding whether the backend is
/// complete.
pub fn tail_after(wal_dir: &std::path::Path, applied: u64) -> std::io::Result<WalTail> {
    let mut tail = WalTail::default();
    tail.damaged = for_each_entry_after(wal_dir, applied, |e| {
        tail.last_index = tail.last_index.max(e.index);
        if e.r#type == ENTRY_NORMAL && touches_v3_store(&e.data) {
            tail.requests += 1;
        }
    })?;
    Ok(tail)
}

/// The v2 request wrapped in an `InternalRaftRequest` (its field 2), if it is one.
pub fn wrapped_v2_request(data: &[u8]) -> Option<Vec<u8>> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut buf = data;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        if tag == 2 && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut buf).ok()? as usize;
            return buf.get(..len).map(<[u8]>::to_vec);
        }
        skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
    }
    None
}

/// The cluster versions that WAL entries after `applied` set: 3.5+'s `ClusterVersionSet`
/// (field 1300, its `ver`) and 3.4's v2 `PUT /0/version`.
pub fn cluster_versions_after(
    wal_dir: &std::path::Path,
    applied: u64,
) -> std::io::Result<Vec<String>> {
    #[derive(Clone, PartialEq, Message)]
    struct Wrapper {
        #[prost(message, optional, tag = "1300")]
        cluster_version_set: Option<ClusterVersionSet>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct ClusterVersionSet {
        #[prost(string, tag = "1")]
        ver: String,
    }
    #[derive(Clone, PartialEq, Message)]
    struct V2Put {
        #[prost(string, tag = "2")]
        method: String,
        #[prost(string, tag = "3")]
        path: String,
        #[prost(string, tag = "4")]
        val: String,
    }
    let mut out = Vec::new();
    for_each_entry_after(wal_dir, applied, |e| {
        if e.r#type != ENTRY_NORMAL || e.data.is_empty() {
            return;
        }
        if is_raw_v2_request(&e.data) {
            if let Ok(r) = V2Put::decode(e.data.as_slice()) {
                if r.method == "PUT" && r.path == "/0/version" {
                    out.push(r.val);
                }
            }
        } else if let Ok(w) = Wrapper::decode(e.data.as_slice()) {
            if let Some(c) = w.cluster_version_set {
                out.push(c.ver);
            }
        }
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(framing: Framing) -> Vec<u8> {
        let mut w = WalWriter::new(0, framing);
        w.append_message(
            METADATA_TYPE,
            &Metadata {
                node_id: 0x8e9e05c52164694d,
                cluster_id: 0xcdf818194e3a8c32,
            },
        );
        w.append_message(SNAPSHOT_TYPE, &WalSnapshot { index: 0, term: 0 });
        w.append_message(SNAPSHOT_TYPE, &WalSnapshot { index: 42, term: 3 });
        w.append_message(
            STATE_TYPE,
            &HardState {
                term: 3,
                vote: 0x8e9e05c52164694d,
                commit: 42,
            },
        );
        w.into_bytes()
    }

    #[test]
    fn wal_round_trips_in_both_framings() {
        for framing in [Framing::Padded, Framing::Unpadded] {
            let bytes = sample(framing);
            if framing == Framing::Padded {
                assert_eq!(bytes.len() % 8, 0);
            }
            let recs = read_wal("test.wal", &bytes, 0).unwrap();
            let types: Vec<i64> = recs.iter().map(|r| r.r#type).collect();
            assert_eq!(
                types,
                [
                    CRC_TYPE,
                    METADATA_TYPE,
                    SNAPSHOT_TYPE,
                    SNAPSHOT_TYPE,
                    STATE_TYPE
                ]
            );
            let md = Metadata::decode(recs[1].data.as_slice()).unwrap();
            assert_eq!(md.cluster_id, 0xcdf818194e3a8c32);
            assert_eq!(
                WalSnapshot::decode(recs[3].data.as_slice()).unwrap(),
                WalSnapshot { index: 42, term: 3 }
            );
            // Preallocated zeros after the records end the file.
            let mut padded = bytes.clone();
            padded.resize(bytes.len() + 4096, 0);
            assert_eq!(read_wal("test.wal", &padded, 0).unwrap().len(), 5);
        }
    }

    /// The frame of the metadata record, byte for byte as etcd's encoder lays it out: the
    /// length word (with `0x80 | pad` in the top byte when padded), the record, the padding.
    #[test]
    fn framing_matches_etcds_encoder() {
        let mut w = WalWriter::new(0, Framing::Padded);
        w.append(METADATA_TYPE, vec![1, 2, 3]);
        let bytes = w.into_bytes();
        // CRC record: type 4, crc 0 (omitted) -> 2 bytes, padded by 6.
        assert_eq!(&bytes[..8], &(2u64 | (0x86u64 << 56)).to_le_bytes());
        assert_eq!(&bytes[8..10], &[0x08, 0x04]);
        assert_eq!(&bytes[10..16], &[0; 6]);
        let crc = crc32c::crc32c(&[1, 2, 3]);
        let rec = Record {
            r#type: 1,
            crc,
            data: vec![1, 2, 3],
        }
        .encode_to_vec();
        let pad = (8 - rec.len() % 8) % 8;
        let word = rec.len() as u64 | ((0x80 | pad as u64) << 56);
        assert_eq!(&bytes[16..24], &word.to_le_bytes());
        assert_eq!(&bytes[24..24 + rec.len()], rec.as_slice());
    }

    #[test]
    fn corrupt_wals_are_refused_with_where() {
        let bytes = sample(Framing::Padded);
        let cut = &bytes[..bytes.len() - 5];
        assert!(matches!(
            read_wal("w", cut, 0),
            Err(FormatError::Truncated { .. })
        ));
        // The last byte of an unpadded WAL is inside the HardState record's data.
        let mut flipped = sample(Framing::Unpadded);
        let n = flipped.len();
        flipped[n - 1] ^= 0x01;
        let err = read_wal("w", &flipped, 0).unwrap_err();
        assert!(
            matches!(err, FormatError::Crc { .. } | FormatError::Decode { .. }),
            "{err}"
        );
        // A chain that does not start where the file says.
        assert!(matches!(
            read_wal("w", &bytes, 7),
            Err(FormatError::Crc { .. })
        ));
    }

    #[test]
    fn snap_round_trips_and_checks_its_crc() {
        let snap = Snapshot {
            data: br#"{"Root":{}}"#.to_vec(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState { voters: vec![1, 2] }),
                index: 42,
                term: 3,
            }),
        };
        let bytes = encode_snap(&snap);
        assert_eq!(decode_snap("s", &bytes).unwrap(), snap);
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(decode_snap("s", &bad).is_err());
        assert_eq!(snap_name(3, 42), "0000000000000003-000000000000002a.snap");
        assert_eq!(wal_name(0, 0), "0000000000000000-0000000000000000.wal");
    }
}
