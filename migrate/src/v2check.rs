//! Custom content in the v2 store, which etcd 3.6 refuses (it keeps only membership there): read
//! offline from the newest v2 snap file and the WAL after it, the way `etcdutl check v2store`
//! (3.5.18+, WAL too from 3.5.32) does. Where a bundled etcdutl has the command, migrate runs it
//! as well, and either finding refuses the step.
//!
//! Custom content is anything outside `/0` (etcd's own membership and cluster version): keys
//! under `/1` in the snapshot, and v2 writes (PUT, POST, DELETE) to paths outside `/0` in the
//! WAL entries after the snapshot.
//!
//! Apart from that, etcd 3.6 replays only two kinds of v2 request from the WAL after the
//! newest snapshot (`v2ToV3Request`: a PUT of a member's attributes or of `/0/version`) and
//! panics on any other ("detected disallowed v2 WAL"). Some hold no data: the `QGET` that
//! etcd 3.4's `/health` proposes on every probe (kubelet's liveness probe, migrate's own
//! readiness check on 3.4), the leader's TTL `SYNC`. Those are [`Custom::unreplayable`]: not a
//! reason to refuse, but the WAL must be cut past them by a 3.5 snapshot before 3.6 starts
//! (`etcdutl check v2store` flags them as "custom v2 content in WAL records").

use std::path::{Path, PathBuf};

use prost::Message;
use serde_json::Value;

use crate::raftlog;

/// At most this many keys are named in a message.
pub const NAMED: usize = 20;

/// What was found: the keys (or paths written), and where they were seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Custom {
    pub in_snapshot: Vec<String>,
    pub in_wal: Vec<String>,
    /// v2 requests after the newest snapshot that hold no data but that etcd 3.6 refuses to
    /// replay (`QGET at index 17`).
    pub unreplayable: Vec<String>,
}

impl Custom {
    /// No custom data (unreplayable requests aside).
    pub fn is_empty(&self) -> bool {
        self.in_snapshot.is_empty() && self.in_wal.is_empty()
    }

    /// `/a, /b, ... (N in all)`.
    pub fn named(&self) -> String {
        let mut all: Vec<&String> = self.in_snapshot.iter().chain(&self.in_wal).collect();
        all.sort();
        all.dedup();
        let total = all.len();
        let mut text = all
            .iter()
            .take(NAMED)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if total > NAMED {
            text.push_str(&format!(", ... ({total} in all)"));
        }
        text
    }
}

/// `etcdserverpb.Request`, the parts that say what a v2 request writes.
#[derive(Clone, PartialEq, Message)]
struct V2Request {
    #[prost(string, tag = "2")]
    method: String,
    #[prost(string, tag = "3")]
    path: String,
}

/// The newest `<term>-<index>.snap` of `snap_dir` and its index: where etcd's replay of the
/// WAL starts.
pub fn newest_snap(snap_dir: &Path) -> std::io::Result<Option<(PathBuf, u64)>> {
    let mut best: Option<(u64, u64, PathBuf)> = None;
    let rd = match std::fs::read_dir(snap_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for e in rd {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".snap") else {
            continue;
        };
        let Some((term, index)) = stem.split_once('-') else {
            continue;
        };
        let (Ok(term), Ok(index)) = (
            u64::from_str_radix(term, 16),
            u64::from_str_radix(index, 16),
        ) else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|(t, i, _)| (term, index) > (*t, *i))
        {
            best = Some((term, index, p));
        }
    }
    Ok(best.map(|(_, index, p)| (p, index)))
}

/// Leaves and non-empty directories outside `/0` in a v2 store snapshot's JSON.
fn custom_in_store(store: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(Value::Object(top)) = store.pointer("/Root/Children") else {
        return out;
    };
    for (name, node) in top {
        if name == "0" {
            continue;
        }
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            match n.get("Children") {
                Some(Value::Object(children)) if !children.is_empty() => {
                    stack.extend(children.values())
                }
                Some(Value::Object(_)) => {}
                _ => out.push(
                    n.get("Path")
                        .and_then(Value::as_str)
                        .map(|p| p.strip_prefix("/1").unwrap_or(p).to_string())
                        .unwrap_or_else(|| format!("/{name}")),
                ),
            }
        }
    }
    out.sort();
    out
}

/// Reads `data_dir`'s v2 store for custom content (read only).
pub fn scan(data_dir: &Path) -> Result<Custom, String> {
    let member = data_dir.join("member");
    let mut custom = Custom::default();
    let mut after = 0;
    if let Some((path, index)) = newest_snap(&member.join("snap")).map_err(|e| e.to_string())? {
        let what = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| format!("`{what}`: {e}"))?;
        let snap = raftlog::decode_snap(&what, &bytes).map_err(|e| e.to_string())?;
        let store: Value = serde_json::from_slice(&snap.data)
            .map_err(|e| format!("`{what}`: the v2 store does not parse: {e}"))?;
        custom.in_snapshot = custom_in_store(&store);
        after = index;
    }
    raftlog::for_each_entry_after(&member.join("wal"), after, |entry| {
        if entry.r#type != raftlog::ENTRY_NORMAL || entry.data.is_empty() {
            return;
        }
        let request = if raftlog::is_raw_v2_request(&entry.data) {
            V2Request::decode(entry.data.as_slice()).ok()
        } else {
            raftlog::wrapped_v2_request(&entry.data)
                .and_then(|inner| V2Request::decode(inner.as_slice()).ok())
        };
        if let Some(r) = request {
            let writes = matches!(r.method.as_str(), "PUT" | "POST" | "DELETE");
            let membership = r.path == "/0" || r.path.starts_with("/0/");
            if writes && !membership {
                custom
                    .in_wal
                    .push(r.path.strip_prefix("/1").unwrap_or(&r.path).to_string());
            } else if !replayed_by_3_6(&r.method, &r.path) {
                custom.unreplayable.push(
                    format!("{} {} at index {}", r.method, r.path, entry.index).replace("  ", " "),
                );
            }
        }
    })
    .map_err(|e| e.to_string())?;
    custom.in_wal.sort();
    custom.in_wal.dedup();
    Ok(custom)
}

/// etcd 3.6's `v2ToV3Request`: the only v2 requests it replays are PUTs of a member's
/// attributes (`/0/members/<hex id>/attributes`) and of the cluster version (`/0/version`).
fn replayed_by_3_6(method: &str, path: &str) -> bool {
    if method != "PUT" {
        return false;
    }
    if path == "/0/version" {
        return true;
    }
    path.strip_prefix("/0/members/")
        .and_then(|rest| rest.strip_suffix("/attributes"))
        .is_some_and(|id| (1..=16).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_outside_the_membership_counts() {
        let store = serde_json::json!({"Root": {"Path": "/", "Children": {
            "0": {"Path": "/0", "Children": {"members": {"Path": "/0/members", "Children": {}},
                                              "version": {"Path": "/0/version", "Value": "3.5.0"}}},
            "1": {"Path": "/1", "Children": {
                "registry": {"Path": "/1/registry", "Children": {
                    "a": {"Path": "/1/registry/a", "Value": "x"}}},
                "empty": {"Path": "/1/empty", "Children": {}}}}
        }}});
        assert_eq!(custom_in_store(&store), ["/registry/a"]);
        let meta_only = serde_json::json!({"Root": {"Path": "/", "Children": {
            "0": {"Path": "/0", "Children": {"version": {"Path": "/0/version", "Value": "3.5.0"}}},
            "1": {"Path": "/1", "Children": {}}}}});
        assert!(custom_in_store(&meta_only).is_empty());
        let c = Custom {
            in_snapshot: (0..25).map(|i| format!("/k{i:02}")).collect(),
            in_wal: vec!["/k00".into()],
            unreplayable: vec![],
        };
        assert!(c.named().ends_with("... (25 in all)"), "{}", c.named());
    }

    #[test]
    fn etcd_3_6_replays_only_member_attributes_and_the_cluster_version() {
        for (method, path, replayed) in [
            ("PUT", "/0/version", true),
            ("PUT", "/0/members/bdae9bbc11dd390d/attributes", true),
            ("PUT", "/0/members/1/attributes", true),
            ("QGET", "", false),
            ("SYNC", "", false),
            ("GET", "/0/version", false),
            ("DELETE", "/0/members/bdae9bbc11dd390d", false),
            ("PUT", "/0/members/bdae9bbc11dd390d/raftAttributes", false),
            ("PUT", "/0/members/xyz/attributes", false),
            ("PUT", "/0/members/12345678901234567/attributes", false),
        ] {
            assert_eq!(replayed_by_3_6(method, path), replayed, "{method} {path}");
        }
    }
}
