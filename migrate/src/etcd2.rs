//! etcd2 storage: the etcd2 -> etcd3 conversion.
//!
//! The original ran `etcdctl-<target> migrate` straight on the data and then attached a lease
//! to the keys under the TTL keys prefix. This step does the same with the engine's safety:
//! 1. copy the data dir to the backup beside it; write the journal (step `convert`);
//! 2. start etcd-`via` with the v2 API on the data and read every v2 key (the "before");
//! 3. `ETCDCTL_API=3 etcdctl-<via> migrate --data-dir <dir>` writes the v2 keys into the v3
//!    store (etcdctl has `migrate` from 3.0 to 3.4);
//! 4. start etcd-`via`, grant one lease of `--lease-duration` and put every key under the TTL
//!    prefix again with it, checking that its value did not change meanwhile;
//! 5. read the v3 keyspace (the "after"): the same keys and values, and exactly the TTL prefix
//!    keys on that lease; anything else restores the backup;
//! 6. version.txt = `via`/etcd3; the journal, then the backup, go.
//!
//! A crash anywhere is recovered like an upgrade (`engine::recover`): the journal's target is
//! `via`/etcd3, so an unrecorded step restores the backup and runs again.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use semver::Version;
use serde_json::Value;

use crate::datadir::DataDir;
use crate::engine::{self, failpoint, Sidecar, StepFingerprints};
use crate::error::MigrateError;
use crate::keyspace::{self, Fingerprint, KeyspaceError};
use crate::options::Options;
use crate::report::log;
use crate::server::{http, Server};
use crate::version::{Storage, VersionPair};

/// `etcdctl migrate` rewrites the whole v2 store into the v3 backend.
const CONVERT_TIMEOUT: Duration = Duration::from_secs(1800);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: Option<&Value>) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.and_then(Value::as_str).unwrap_or(""))
        .unwrap_or_default()
}

/// The v2 keyspace as etcd-`via` serves it: every non-directory node under `/`.
pub struct V2Keyspace {
    pub fingerprint: Fingerprint,
    /// Keys that carry a v2 TTL.
    pub with_ttl: usize,
    /// Keys with a v2 TTL outside the TTL prefix: they get no lease (as in the original).
    pub ttl_outside: usize,
    /// Keys under the TTL keys prefix (they get the lease).
    pub under_prefix: usize,
}

fn v2_error(server: &Server, message: String) -> MigrateError {
    MigrateError::Keyspace(KeyspaceError::Output {
        cmd: format!("GET {}/v2/keys/?recursive=true", server.client_url),
        message,
    })
}

/// Reads every v2 key through the v2 API of `server` (started with the v2 API enabled).
pub fn read_v2(server: &Server, prefix: &str) -> Result<V2Keyspace, MigrateError> {
    let (status, body) = http(
        server.port,
        "GET",
        "/v2/keys/?recursive=true&sorted=true",
        None,
    )
    .ok_or_else(|| v2_error(server, "no answer".into()))?;
    if status != 200 {
        return Err(v2_error(server, format!("HTTP {status}: {body}")));
    }
    let doc: Value = serde_json::from_str(&body).map_err(|e| v2_error(server, e.to_string()))?;
    let mut entries = Vec::new();
    let (mut with_ttl, mut ttl_outside) = (0, 0);
    let mut stack: Vec<&Value> = doc.get("node").into_iter().collect();
    while let Some(node) = stack.pop() {
        if node.get("dir").and_then(Value::as_bool) == Some(true) {
            stack.extend(
                node.get("nodes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
            continue;
        }
        let key = node.get("key").and_then(Value::as_str).unwrap_or("");
        let value = node.get("value").and_then(Value::as_str).unwrap_or("");
        if node.get("ttl").is_some() {
            with_ttl += 1;
            ttl_outside += usize::from(!key.starts_with(prefix));
        }
        entries.push((key.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    let under_prefix = entries
        .iter()
        .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
        .count();
    let keys = entries.len();
    Ok(V2Keyspace {
        fingerprint: Fingerprint {
            revision: 0,
            keys,
            digest: keyspace::digest(entries),
            leases: Default::default(),
        },
        with_ttl,
        ttl_outside,
        under_prefix,
    })
}

/// The flags that make etcd `via` serve the v2 API: 3.4 serves it only when asked, 3.0-3.3
/// always do (and lack the flag), 3.6+ have no v2 API and never get the flag.
pub fn v2_flags(policy: &etcd_policy::Policy, via: &Version) -> Vec<&'static str> {
    if policy.has_v2_api(via) && (via.major, via.minor) >= (3, 4) {
        vec!["--enable-v2=true"]
    } else {
        Vec::new()
    }
}

/// The key just past every key that starts with `prefix` (etcd's `--prefix` range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The TTL keys prefix with a trailing `/`, as the original's AttachLease used it.
pub fn ttl_prefix(options: &Options) -> String {
    let dir = &options.ttl_keys_directory;
    if dir.ends_with('/') {
        dir.clone()
    } else {
        format!("{dir}/")
    }
}

/// Grants one lease of `seconds` and puts every key under `prefix` again with it, checking
/// that the previous value is the one read (nobody else writes: the client port is private).
/// Returns the lease id and the number of keys, or `None` when no key is under the prefix.
pub fn attach_lease(
    server: &Server,
    version: &Version,
    prefix: &str,
    seconds: i64,
) -> Result<Option<(i64, usize)>, MigrateError> {
    let gw = keyspace::gateway(version);
    let call = |path: &str, body: Value| -> Result<Value, MigrateError> {
        let url = format!("{gw}{path}");
        let fail = |message: String| {
            MigrateError::Keyspace(KeyspaceError::Output {
                cmd: format!("POST {}{url}", server.client_url),
                message,
            })
        };
        let (status, text) = http(server.port, "POST", &url, Some(&body.to_string()))
            .ok_or_else(|| fail("no answer".into()))?;
        if status != 200 {
            return Err(fail(format!("HTTP {status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
    };
    let range = call(
        "/kv/range",
        serde_json::json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))}),
    )?;
    let kvs = range
        .get("kvs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if kvs.is_empty() {
        return Ok(None);
    }
    let grant = call("/lease/grant", serde_json::json!({"TTL": seconds}))?;
    // int64 fields come as JSON strings from the gateway.
    let id: i64 = grant
        .get("ID")
        .and_then(|v| {
            v.as_str()
                .map(String::from)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        })
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            MigrateError::Keyspace(KeyspaceError::Output {
                cmd: format!("POST {}{gw}/lease/grant", server.client_url),
                message: format!("no lease ID in {grant}"),
            })
        })?;
    log(&format!(
        "attaching a lease of {seconds} s ({id:x}) to {} keys under {prefix}",
        kvs.len()
    ));
    for kv in &kvs {
        let (key, value) = (unb64(kv.get("key")), unb64(kv.get("value")));
        let put = call(
            "/kv/put",
            serde_json::json!({"key": b64(&key), "value": b64(&value), "lease": id.to_string(), "prev_kv": true}),
        )?;
        let prev = unb64(put.pointer("/prev_kv/value"));
        if prev != value {
            return Err(MigrateError::Keyspace(KeyspaceError::Output {
                cmd: format!("attaching the lease to {}", String::from_utf8_lossy(&key)),
                message:
                    "concurrent access to the key: its value changed while the lease was attached"
                        .into(),
            }));
        }
    }
    Ok(Some((id, kvs.len())))
}

/// What differs between the v2 keyspace and the converted v3 one.
fn compare(
    v2: &V2Keyspace,
    after: &Fingerprint,
    lease: Option<(i64, usize)>,
    seconds: i64,
) -> Vec<String> {
    let mut out = Vec::new();
    let before = &v2.fingerprint;
    if before.keys != after.keys {
        out.push(format!(
            "key count {} (v2) -> {} (v3)",
            before.keys, after.keys
        ));
    }
    if before.digest != after.digest {
        out.push(format!(
            "keys/values digest {} (v2) -> {} (v3)",
            before.digest, after.digest
        ));
    }
    if lease.map(|(_, n)| n).unwrap_or(0) != v2.under_prefix {
        out.push(format!(
            "{} keys under the TTL prefix, {} got the lease",
            v2.under_prefix,
            lease.map(|(_, n)| n).unwrap_or(0)
        ));
    }
    let want: Vec<i64> = lease.iter().map(|(id, _)| *id).collect();
    let have: Vec<i64> = after.leases.keys().copied().collect();
    if want != have {
        out.push(format!("leases {have:x?}, expected {want:x?}"));
    }
    if let Some((id, n)) = lease {
        if let Some(l) = after.leases.get(&id) {
            if l.granted_ttl != seconds || l.keys != n {
                out.push(format!(
                    "lease {id:x}: granted {} s on {} keys, expected {seconds} s on {n}",
                    l.granted_ttl, l.keys
                ));
            }
        }
    }
    out
}

/// etcd2 `from` to `via`/etcd3 on the data dir (see the module doc).
pub fn convert(
    options: &Options,
    data_dir: &DataDir,
    from: &VersionPair,
    via: &Version,
) -> Result<StepFingerprints, MigrateError> {
    let side = Sidecar::for_dir(&options.data_dir);
    let logs = engine::log_dir()?;
    log(&format!(
        "etcd2 -> etcd3 from {from} with etcd {via}: backing up the data dir"
    ));
    failpoint("convert-before-backup");
    engine::take_backup(options, &side, "convert")?;
    let record = serde_json::json!({
        "step": "convert", "from": from.to_string(), "to": via.to_string(),
        "backup": side.backup.display().to_string(),
    });
    hostio::fs::write_atomic(&side.journal, record.to_string().as_bytes())
        .map_err(engine::io_err(&side.journal))?;
    failpoint("convert-journal-written");
    let fps = match convert_in_place(options, via, logs.path()) {
        Ok(fps) => fps,
        Err(e) => {
            log("the conversion failed; restoring the data dir from its backup");
            engine::abandon(options, &side)?;
            return Err(e);
        }
    };
    failpoint("convert-before-version");
    data_dir.write_version(&VersionPair::new(via.clone(), Storage::Etcd3))?;
    failpoint("convert-version-written");
    engine::finish(options, &side)?;
    log(&format!(
        "converted to {via}/etcd3; every v2 key is in the v3 store"
    ));
    Ok(fps)
}

fn convert_in_place(
    options: &Options,
    via: &Version,
    logs: &Path,
) -> Result<StepFingerprints, MigrateError> {
    let prefix = ttl_prefix(options);
    let v2_flags = v2_flags(&options.policy, via);
    let mut server = engine::start_etcd(options, via, &options.data_dir, logs, &v2_flags)?;
    failpoint(&format!("running-{via}"));
    let v2 = read_v2(&server, &prefix)?;
    server.stop();
    log(&format!(
        "before (v2): {} ({} with a TTL, {} under {prefix})",
        v2.fingerprint.summary(),
        v2.with_ttl,
        v2.under_prefix
    ));
    if v2.ttl_outside > 0 {
        log(&format!(
            "warning: {} keys with a v2 TTL are outside {prefix} and will have no TTL in etcd3 (as with the original migrate; set --ttl-keys-directory to cover them)",
            v2.ttl_outside
        ));
    }
    failpoint("convert-v2-read");
    let etcdctl = engine::bin(options, "etcdctl", via);
    let dir = options.data_dir.as_os_str().to_owned();
    crate::process::run_tool(
        &etcdctl,
        &["migrate".into(), "--data-dir".into(), dir],
        &[("ETCDCTL_API", "3")],
        CONVERT_TIMEOUT,
        || Ok(()),
    )
    .map_err(|e| {
        MigrateError::Keyspace(KeyspaceError::Etcdctl {
            cmd: format!("{} migrate", etcdctl.display()),
            message: e.to_string(),
        })
    })?;
    failpoint("convert-migrated");
    let mut server = engine::start_etcd(options, via, &options.data_dir, logs, &[])?;
    let lease = attach_lease(&server, via, &prefix, options.lease_duration)?;
    failpoint("convert-leases-attached");
    let after = keyspace::take(&etcdctl, &mut server, via)?;
    server.stop();
    log(&format!("after (v3): {}", after.summary()));
    let diffs = compare(&v2, &after, lease, options.lease_duration);
    if !diffs.is_empty() {
        return Err(MigrateError::FingerprintMismatch {
            step: format!("etcd2 -> etcd3 with {via}"),
            differences: diffs.join("; "),
        });
    }
    Ok(StepFingerprints {
        before: v2.fingerprint.to_json(),
        after: after.to_json(),
        seconds: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_and_gateways() {
        assert_eq!(
            prefix_end(b"/registry/events/"),
            b"/registry/events0".to_vec()
        );
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
        let v = |s: &str| Version::parse(s).unwrap();
        assert_eq!(keyspace::gateway(&v("3.0.17")), "/v3alpha");
        assert_eq!(keyspace::gateway(&v("3.3.17")), "/v3beta");
        assert_eq!(keyspace::gateway(&v("3.4.23")), "/v3");
        let policy = etcd_policy::Policy::builtin();
        for (version, flags) in [
            ("3.3.27", vec![]),
            ("3.4.23", vec!["--enable-v2=true"]),
            ("3.5.33", vec!["--enable-v2=true"]),
            ("3.6.14", vec![]),
            ("3.7.1", vec![]),
        ] {
            assert_eq!(v2_flags(&policy, &v(version)), flags, "{version}");
        }
    }
}
