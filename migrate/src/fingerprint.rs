//! A fingerprint of the user keyspace, read through the bundled etcdctl (ETCDCTL_API=3): the key
//! count, a sha256 over every key and value in key order, and the leases attached to keys with
//! their granted and remaining TTLs. Reading only: nothing is written into the keyspace.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::server::Server;

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
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
/// Snapshot save and restore of a large keyspace.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

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

/// Runs an etcd tool (`ETCDCTL_API=3`, the environment scrubbed) and returns its stdout. The
/// tool dies with us (PR_SET_PDEATHSIG) and is killed after `timeout`: etcdctl's own
/// `--command-timeout` does not bound every command (`lease timetolive` against an etcd that
/// died mid-call was seen waiting for 20 minutes). With `server`, the tool is also stopped as
/// soon as that etcd exits.
pub fn run_tool(
    bin: &Path,
    args: &[std::ffi::OsString],
    timeout: Duration,
    mut server: Option<&mut Server>,
) -> Result<Vec<u8>, FingerprintError> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let cmd = format!(
        "{} {}",
        bin.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let fail = |message: String| FingerprintError::Etcdctl {
        cmd: cmd.clone(),
        message,
    };
    let mut command = Command::new(bin);
    crate::server::scrub_env(&mut command);
    command
        .env("ETCDCTL_API", "3")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the tool with us.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| fail(e.to_string()))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = server.as_deref_mut().and_then(Server::exited) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "etcd {} exited while it ran ({status}); killed",
                server.map(|s| s.version.clone()).unwrap_or_default()
            )));
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "did not finish within {} s; killed",
                    timeout.as_secs()
                )));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(format!(
            "{status}: {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    Ok(out)
}

fn etcdctl(etcdctl: &Path, server: &mut Server, args: &[&str]) -> Result<Value, FingerprintError> {
    let cmd = format!("{} {}", etcdctl.display(), args.join(" "));
    let mut full: Vec<std::ffi::OsString> = vec![
        format!("--endpoints={}", server.client_url).into(),
        "--command-timeout=60s".into(),
    ];
    full.extend(args.iter().map(Into::into));
    full.extend(["-w".into(), "json".into()]);
    let out = run_tool(etcdctl, &full, TOOL_TIMEOUT, Some(server))?;
    serde_json::from_slice(&out).map_err(|e| FingerprintError::Output {
        cmd,
        message: e.to_string(),
    })
}

fn b64(cmd: &str, v: Option<&Value>) -> Result<Vec<u8>, FingerprintError> {
    let text = v.and_then(Value::as_str).unwrap_or("");
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| FingerprintError::Output {
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

/// The whole keyspace served by `server`, with the fingerprint of it.
pub fn read(
    etcdctl_bin: &Path,
    server: &mut Server,
) -> Result<(Fingerprint, Vec<Kv>), FingerprintError> {
    let all = etcdctl(etcdctl_bin, server, &["get", "", "--prefix"])?;
    let raw = all
        .get("kvs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut kvs = Vec::with_capacity(raw.len());
    let mut lease_ids: BTreeMap<i64, usize> = BTreeMap::new();
    for kv in &raw {
        let lease = kv.get("lease").and_then(Value::as_i64).unwrap_or(0);
        if lease != 0 {
            *lease_ids.entry(lease).or_default() += 1;
        }
        kvs.push(Kv {
            key: b64("get", kv.get("key"))?,
            value: b64("get", kv.get("value"))?,
            lease,
            mod_revision: kv.get("mod_revision").and_then(Value::as_i64).unwrap_or(0),
        });
    }
    let digest = digest(
        kvs.iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
    );
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
    let revision = all
        .pointer("/header/revision")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let fp = Fingerprint {
        revision,
        keys: kvs.len(),
        digest,
        leases,
    };
    Ok((fp, kvs))
}

/// The fingerprint of the whole keyspace served by `server`.
pub fn take(etcdctl_bin: &Path, server: &mut Server) -> Result<Fingerprint, FingerprintError> {
    read(etcdctl_bin, server).map(|(fp, _)| fp)
}

/// `etcdctl <args> -w json` against `server` (member list, endpoint status, ...).
pub fn query(
    etcdctl_bin: &Path,
    server: &mut Server,
    args: &[&str],
) -> Result<Value, FingerprintError> {
    etcdctl(etcdctl_bin, server, args)
}

/// `etcdctl snapshot save` from the etcd at `endpoint` into `to`.
pub fn snapshot_save(
    etcdctl: &Path,
    server: &mut Server,
    to: &Path,
) -> Result<(), FingerprintError> {
    let args = [
        format!("--endpoints={}", server.client_url).into(),
        "--command-timeout=300s".into(),
        "snapshot".into(),
        "save".into(),
        to.as_os_str().to_owned(),
    ];
    run_tool(etcdctl, &args, SNAPSHOT_TIMEOUT, Some(server))?;
    if !to.is_file() {
        return Err(FingerprintError::Etcdctl {
            cmd: format!("{} snapshot save {}", etcdctl.display(), to.display()),
            message: "succeeded but wrote no snapshot".into(),
        });
    }
    Ok(())
}

/// `snapshot restore` of `snapshot` into the new directory `data_dir`, as member `name`.
pub fn snapshot_restore(
    tool: &Path,
    snapshot: &Path,
    data_dir: &Path,
    name: &str,
    initial_cluster: &str,
    advertise_peer_urls: &str,
) -> Result<(), FingerprintError> {
    let args = [
        "snapshot".into(),
        "restore".into(),
        snapshot.as_os_str().to_owned(),
        "--data-dir".into(),
        data_dir.as_os_str().to_owned(),
        format!("--name={name}").into(),
        format!("--initial-cluster={initial_cluster}").into(),
        format!("--initial-advertise-peer-urls={advertise_peer_urls}").into(),
    ];
    run_tool(tool, &args, SNAPSHOT_TIMEOUT, None)?;
    Ok(())
}

/// The keyspace digest: sha256 over (key length, key, value length, value) in key order.
pub fn digest(mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> String {
    entries.sort();
    let mut h = Sha256::new();
    for (k, v) in &entries {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k);
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    hex_digest(h.finalize().as_slice())
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
