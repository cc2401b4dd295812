//! The keyspace as a running etcd serves it, for the etcd2 steps: the key count, a sha256 over
//! every key and value in key order, and the leases attached to keys with their granted and
//! remaining TTLs. Reading only: nothing is written into the keyspace.
//!
//! The etcd3 steps do not use this: they compare backend files offline ([`crate::backend`]).
//! The etcd2 steps need the latest value of every key (a v2 store is one JSON document of
//! them), so they read pages of [`PAGE_KEYS`] keys through etcd's JSON gateway at one fixed
//! revision; the digest is computed as the pages arrive. Their data comes from etcd2, which held
//! its whole store in memory, and the conversions keep the key list the v2 side needs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::server::Server;

#[derive(Debug, thiserror::Error)]
pub enum KeyspaceError {
    #[error("running `{cmd}`: {message}")]
    Etcdctl { cmd: String, message: String },
    #[error("unexpected etcdctl output for `{cmd}`: {message}")]
    Output { cmd: String, message: String },
}

/// A lease as seen from the keys attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub granted_ttl: i64,
    pub remaining_ttl: i64,
    pub keys: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The store revision the keyspace was read at (0 in journals of older runs).
    pub revision: i64,
    pub keys: usize,
    /// Hex sha256 over (key length, key, value length, value) for every key in order.
    pub digest: String,
    /// Lease id -> lease.
    pub leases: BTreeMap<i64, Lease>,
}

/// The longest an etcdctl read may take (its own --command-timeout is 60 s).
const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

/// How far a remaining TTL may drift between two fingerprints (time passes, and etcd refreshes
/// leases on a leader change).
pub const TTL_TOLERANCE_SECONDS: i64 = 120;

impl Fingerprint {
    pub fn summary(&self) -> String {
        format!(
            "revision {}, {} keys, sha256 {}, {} leases",
            self.revision,
            self.keys,
            &self.digest[..16],
            self.leases.len()
        )
    }

    /// What differs between `self` (before) and `after`, if anything.
    pub fn differences(&self, after: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.keys != after.keys {
            out.push(format!("key count {} -> {}", self.keys, after.keys));
        }
        if self.digest != after.digest {
            out.push(format!(
                "keys/values digest {} -> {}",
                self.digest, after.digest
            ));
        }
        for (id, before) in &self.leases {
            match after.leases.get(id) {
                None => out.push(format!("lease {id:x} is gone")),
                Some(a) => {
                    if a.granted_ttl != before.granted_ttl || a.keys != before.keys {
                        out.push(format!(
                            "lease {id:x}: granted TTL {} -> {}, keys {} -> {}",
                            before.granted_ttl, a.granted_ttl, before.keys, a.keys
                        ));
                    }
                    // A TTL never grows beyond the granted one; it may be refreshed up to it.
                    if a.remaining_ttl < before.remaining_ttl - TTL_TOLERANCE_SECONDS {
                        out.push(format!(
                            "lease {id:x}: remaining TTL {} -> {}",
                            before.remaining_ttl, a.remaining_ttl
                        ));
                    }
                }
            }
        }
        for id in after.leases.keys() {
            if !self.leases.contains_key(id) {
                out.push(format!("lease {id:x} appeared"));
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "revision": self.revision,
            "keys": self.keys,
            "sha256": self.digest,
            "leases": self.leases.iter().map(|(id, l)| serde_json::json!({
                "id": format!("{id:x}"), "granted_ttl": l.granted_ttl,
                "remaining_ttl": l.remaining_ttl, "keys": l.keys,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> Option<Fingerprint> {
        let mut leases = BTreeMap::new();
        for l in v.get("leases")?.as_array()? {
            let id = i64::from_str_radix(l.get("id")?.as_str()?, 16).ok()?;
            leases.insert(
                id,
                Lease {
                    granted_ttl: l.get("granted_ttl")?.as_i64()?,
                    remaining_ttl: l.get("remaining_ttl")?.as_i64()?,
                    keys: l.get("keys")?.as_u64()? as usize,
                },
            );
        }
        Some(Fingerprint {
            revision: v.get("revision").and_then(Value::as_i64).unwrap_or(0),
            keys: v.get("keys")?.as_u64()? as usize,
            digest: v.get("sha256")?.as_str()?.to_string(),
            leases,
        })
    }
}

fn etcdctl(etcdctl: &Path, server: &mut Server, args: &[&str]) -> Result<Value, KeyspaceError> {
    let cmd = format!("{} {}", etcdctl.display(), args.join(" "));
    let mut full: Vec<std::ffi::OsString> = vec![
        format!("--endpoints={}", server.client_url).into(),
        "--command-timeout=60s".into(),
    ];
    full.extend(args.iter().map(Into::into));
    full.extend(["-w".into(), "json".into()]);
    let out = crate::process::run_tool(
        etcdctl,
        &full,
        &[("ETCDCTL_API", "3")],
        TOOL_TIMEOUT,
        || match server.exited() {
            Some(status) => Err(format!(
                "etcd {} exited while it ran ({status})",
                server.version
            )),
            None => Ok(()),
        },
    )
    .map_err(|e| KeyspaceError::Etcdctl {
        cmd: cmd.clone(),
        message: e.to_string(),
    })?;
    serde_json::from_slice(&out).map_err(|e| KeyspaceError::Output {
        cmd,
        message: e.to_string(),
    })
}

fn b64(cmd: &str, v: Option<&Value>) -> Result<Vec<u8>, KeyspaceError> {
    let text = v.and_then(Value::as_str).unwrap_or("");
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| KeyspaceError::Output {
            cmd: cmd.into(),
            message: format!("bad base64: {e}"),
        })
}

/// One key as read through etcdctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// 0: no lease.
    pub lease: i64,
    pub mod_revision: i64,
}

/// Keys per page read through the gateway.
pub const PAGE_KEYS: usize = 256;

/// The JSON gateway's path prefix in etcd `v`.
pub fn gateway(v: &semver::Version) -> &'static str {
    match (v.major, v.minor) {
        (3, 0..=2) => "/v3alpha",
        (3, 3) => "/v3beta",
        _ => "/v3",
    }
}

/// The gateway prefix `server` answers on: the one its version should have, else the first
/// other that answers (a binary may be newer than the version it is bundled as).
pub fn serving_gateway(server: &Server, version: &semver::Version) -> &'static str {
    let expected = gateway(version);
    let probe = r#"{"key":"AA==","limit":1}"#;
    for prefix in [expected, "/v3", "/v3beta", "/v3alpha"] {
        let path = format!("{prefix}/kv/range");
        if matches!(
            crate::server::http(server.port, "POST", &path, Some(probe)),
            Some((200, _))
        ) {
            return prefix;
        }
    }
    expected
}

fn b64e(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The JSON gateway encodes int64 fields as strings.
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(v) => v.as_i64().unwrap_or(0),
        None => 0,
    }
}

/// Every key served by `server`, page by page at one revision: `f` sees each in key order.
/// Returns the revision read at.
pub fn scan(
    server: &Server,
    version: &semver::Version,
    mut f: impl FnMut(Kv) -> Result<(), KeyspaceError>,
) -> Result<i64, KeyspaceError> {
    let path = format!("{}/kv/range", serving_gateway(server, version));
    let cmd = format!("POST {}{path}", server.client_url);
    let fail = |message: String| KeyspaceError::Output {
        cmd: cmd.clone(),
        message,
    };
    let (mut start, mut revision) = (vec![0u8], 0i64);
    loop {
        let body = serde_json::json!({
            "key": b64e(&start), "range_end": b64e(&[0]), "limit": PAGE_KEYS,
            "revision": revision,
        });
        let (status, text) =
            crate::server::http(server.port, "POST", &path, Some(&body.to_string()))
                .ok_or_else(|| fail("no answer".into()))?;
        if status != 200 {
            return Err(fail(format!("HTTP {status}: {}", text.trim())));
        }
        let page: Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if revision == 0 {
            revision = int(page.pointer("/header/revision"));
        }
        let kvs = page
            .get("kvs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut last = None;
        for kv in &kvs {
            let kv = Kv {
                key: b64(&cmd, kv.get("key"))?,
                value: b64(&cmd, kv.get("value"))?,
                lease: int(kv.get("lease")),
                mod_revision: int(kv.get("mod_revision")),
            };
            last = Some(kv.key.clone());
            f(kv)?;
        }
        let more = page.get("more").and_then(Value::as_bool).unwrap_or(false);
        match last {
            Some(mut k) if more => {
                k.push(0);
                start = k;
            }
            _ => return Ok(revision),
        }
    }
}

/// The fingerprint of the keyspace served by `server` (etcd `version`), and, with `keep`, every
/// key (the etcd2 rollback needs them all to build a v2 store).
pub fn read(
    etcdctl_bin: &Path,
    server: &mut Server,
    version: &semver::Version,
    keep: bool,
) -> Result<(Fingerprint, Vec<Kv>), KeyspaceError> {
    let mut kvs = Vec::new();
    let mut lease_ids: BTreeMap<i64, usize> = BTreeMap::new();
    let mut h = Sha256::new();
    let mut count = 0usize;
    let revision = scan(server, version, |kv| {
        if kv.lease != 0 {
            *lease_ids.entry(kv.lease).or_default() += 1;
        }
        digest_entry(&mut h, &kv.key, &kv.value);
        count += 1;
        if keep {
            kvs.push(kv);
        }
        Ok(())
    })?;
    let mut leases = BTreeMap::new();
    for (id, keys) in lease_ids {
        let hex = format!("{id:x}");
        let l = etcdctl(etcdctl_bin, server, &["lease", "timetolive", &hex])?;
        leases.insert(
            id,
            Lease {
                granted_ttl: l.get("granted-ttl").and_then(Value::as_i64).unwrap_or(-1),
                remaining_ttl: l.get("ttl").and_then(Value::as_i64).unwrap_or(-1),
                keys,
            },
        );
    }
    let fp = Fingerprint {
        revision,
        keys: count,
        digest: hex_digest(h.finalize().as_slice()),
        leases,
    };
    Ok((fp, kvs))
}

/// The fingerprint of the whole keyspace served by `server`.
pub fn take(
    etcdctl_bin: &Path,
    server: &mut Server,
    version: &semver::Version,
) -> Result<Fingerprint, KeyspaceError> {
    read(etcdctl_bin, server, version, false).map(|(fp, _)| fp)
}

/// `etcdctl <args> -w json` against `server` (member list, endpoint status, ...).
pub fn query(
    etcdctl_bin: &Path,
    server: &mut Server,
    args: &[&str],
) -> Result<Value, KeyspaceError> {
    etcdctl(etcdctl_bin, server, args)
}

/// The keyspace digest: sha256 over (key length, key, value length, value) in key order.
pub fn digest(mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> String {
    entries.sort();
    let mut h = Sha256::new();
    for (k, v) in &entries {
        digest_entry(&mut h, k, v);
    }
    hex_digest(h.finalize().as_slice())
}

fn digest_entry(h: &mut Sha256, k: &[u8], v: &[u8]) {
    h.update((k.len() as u64).to_be_bytes());
    h.update(k);
    h.update((v.len() as u64).to_be_bytes());
    h.update(v);
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(keys: usize, digest: &str, leases: &[(i64, i64, i64, usize)]) -> Fingerprint {
        Fingerprint {
            revision: 9,
            keys,
            digest: digest.into(),
            leases: leases
                .iter()
                .map(|(id, g, r, k)| {
                    (
                        *id,
                        Lease {
                            granted_ttl: *g,
                            remaining_ttl: *r,
                            keys: *k,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn differences_and_json_roundtrip() {
        let a = fp(3, &"a".repeat(64), &[(7, 3600, 3500, 2)]);
        assert!(a.differences(&a).is_empty());
        assert!(a
            .differences(&fp(3, &"a".repeat(64), &[(7, 3600, 3590, 2)]))
            .is_empty());
        assert_eq!(a.differences(&fp(2, &"b".repeat(64), &[])).len(), 3);
        assert_eq!(
            a.differences(&fp(3, &"a".repeat(64), &[(7, 3600, 100, 2)]))
                .len(),
            1
        );
        assert_eq!(Fingerprint::from_json(&a.to_json()), Some(a));
    }
}
