//! Custom content in the v2 store, which etcd 3.6 refuses (it keeps only membership there): read
//! offline from the newest v2 snap file and the WAL after it, the way `etcdutl check v2store`
//! (3.5.18+, WAL too from 3.5.32) does. Where a bundled etcdutl has the command, migrate runs it
//! as well, and either finding refuses the step.
//!
//! Custom content is anything outside `/0` (etcd's own membership and cluster version): keys
//! under `/1` in the snapshot, and v2 writes (PUT, POST, DELETE) to paths outside `/0` in the
//! WAL entries after the snapshot.

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
}

impl Custom {
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

fn newest_snap(snap_dir: &Path) -> std::io::Result<Option<(PathBuf, u64)>> {
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
            if writes && !(r.path == "/0" || r.path.starts_with("/0/")) {
                custom
                    .in_wal
                    .push(r.path.strip_prefix("/1").unwrap_or(&r.path).to_string());
            }
        }
    })
    .map_err(|e| e.to_string())?;
    custom.in_wal.sort();
    custom.in_wal.dedup();
    Ok(custom)
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
        };
        assert!(c.named().ends_with("... (25 in all)"), "{}", c.named());
    }
}
