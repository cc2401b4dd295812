//! The etcd v2 store as its snapshot serialises it (`v2store.Store.Save`, JSON): the tree under
//! `/` with the cluster metadata in `/0` (members, cluster version) and the user keys in `/1`.
//! The shape (field names, the 1000-slot event queue, the stats block, `CurrentVersion` 2) is
//! the one etcd writes; see the module tests for a snapshot decoded from real etcd.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// A user key for the v2 store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Key {
    /// The key as in etcd3 (`/registry/...`); becomes `/1/registry/...`.
    pub key: String,
    pub value: String,
    /// When the key expires (from its lease's remaining TTL), if it has a lease.
    pub expire: Option<SystemTime>,
    pub index: u64,
}

/// A member of the cluster, as `/0/members/<hex id>/{raftAttributes,attributes}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V2Error {
    #[error("key {key:?} cannot be a v2 key: {why}")]
    BadKey { key: String, why: String },
    #[error(
        "key {key:?} is both a value and the directory of {child:?}; the v2 store cannot hold both"
    )]
    LeafAndDir { key: String, child: String },
}

/// Go's `time.Time` JSON form (RFC 3339 with nanoseconds, UTC); the zero time for "never".
pub fn go_time(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "0001-01-01T00:00:00Z".into();
    };
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses [`go_time`]'s output back (for reading a snapshot); `None` for the zero time.
pub fn parse_go_time(text: &str) -> Option<SystemTime> {
    if text.starts_with("0001-01-01") {
        return None;
    }
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").get(..9)?.parse().ok()?
    };
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

fn node(
    path: &str,
    index: u64,
    expire: Option<SystemTime>,
    value: &str,
    children: Option<Map<String, Value>>,
) -> Value {
    json!({
        "Path": path,
        "CreatedIndex": index,
        "ModifiedIndex": index,
        "ExpireTime": go_time(expire),
        "Value": value,
        "Children": children.map(Value::Object).unwrap_or(Value::Null),
    })
}

/// A directory being built: leaves and subdirectories by name.
#[derive(Default)]
struct Dir {
    leaves: BTreeMap<String, (String, Option<SystemTime>, u64)>,
    dirs: BTreeMap<String, Dir>,
}

impl Dir {
    fn to_json(&self, path: &str, index: u64) -> Value {
        let mut children = Map::new();
        let join = |name: &str| {
            if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            }
        };
        for (name, d) in &self.dirs {
            children.insert(name.clone(), d.to_json(&join(name), index));
        }
        for (name, (value, expire, idx)) in &self.leaves {
            children.insert(name.clone(), node(&join(name), *idx, *expire, value, None));
        }
        node(path, index, None, "", Some(children))
    }

    fn insert(
        &mut self,
        segments: &[&str],
        leaf: (String, Option<SystemTime>, u64),
        key: &str,
    ) -> Result<(), V2Error> {
        let (name, rest) = segments.split_first().expect("non-empty");
        if rest.is_empty() {
            if self.dirs.contains_key(*name) {
                return Err(V2Error::LeafAndDir {
                    key: key.into(),
                    child: format!("{key}/..."),
                });
            }
            self.leaves.insert(name.to_string(), leaf);
            return Ok(());
        }
        if self.leaves.contains_key(*name) {
            return Err(V2Error::LeafAndDir {
                key: key
                    .split(rest[0])
                    .next()
                    .unwrap_or(key)
                    .trim_end_matches('/')
                    .into(),
                child: key.into(),
            });
        }
        self.dirs
            .entry(name.to_string())
            .or_default()
            .insert(rest, leaf, key)
    }
}

/// The path segments of a v3 key as a v2 key, or why it cannot be one (v2 keys are clean
/// absolute paths: `/a/b`, no empty, `.` or `..` segment, no trailing `/`).
pub fn segments(key: &str) -> Result<Vec<&str>, V2Error> {
    let bad = |why: &str| V2Error::BadKey {
        key: key.into(),
        why: why.into(),
    };
    let rest = key
        .strip_prefix('/')
        .ok_or_else(|| bad("it does not start with `/`"))?;
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(bad("it has an empty, `.` or `..` path segment"));
    }
    Ok(segs)
}

/// The v2 store JSON for `keys` and `members`, at raft index `index`, with cluster version
/// `cluster_version` (e.g. `2.2.0`).
pub fn build(
    keys: &[V2Key],
    members: &[Member],
    cluster_version: &str,
    index: u64,
) -> Result<Vec<u8>, V2Error> {
    let mut user = Dir::default();
    for k in keys {
        let segs = segments(&k.key)?;
        user.insert(
            &segs,
            (k.value.clone(), k.expire, k.index.min(index)),
            &k.key,
        )?;
    }
    let mut meta = Dir::default();
    for m in members {
        let id = format!("{:x}", m.id);
        let raft = json!({"peerURLs": m.peer_urls}).to_string();
        let attrs = json!({"name": m.name, "clientURLs": m.client_urls}).to_string();
        meta.insert(
            &["members", &id, "raftAttributes"],
            (raft, None, 1),
            "raftAttributes",
        )?;
        meta.insert(
            &["members", &id, "attributes"],
            (attrs, None, 1),
            "attributes",
        )?;
    }
    meta.insert(
        &["version"],
        (cluster_version.to_string(), None, 1),
        "version",
    )?;
    let mut root = Map::new();
    root.insert("0".into(), meta.to_json("/0", 0));
    root.insert("1".into(), user.to_json("/1", 0));
    let store = json!({
        "Root": node("/", 0, None, "", Some(root)),
        "WatcherHub": {"EventHistory": {
            "Queue": {"Events": vec![Value::Null; 1000], "Size": 0, "Front": 0, "Back": 0, "Capacity": 1000},
            "StartIndex": 0, "LastIndex": 0,
        }},
        "CurrentIndex": index,
        "Stats": {
            "getsSuccess": 0, "getsFail": 0, "setsSuccess": 0, "setsFail": 0,
            "deleteSuccess": 0, "deleteFail": 0, "updateSuccess": 0, "updateFail": 0,
            "createSuccess": 0, "createFail": 0, "compareAndSwapSuccess": 0,
            "compareAndSwapFail": 0, "compareAndDeleteSuccess": 0, "compareAndDeleteFail": 0,
            "expireCount": 0, "watchers": 0,
        },
        "CurrentVersion": 2,
    });
    Ok(store.to_string().into_bytes())
}

/// The user keys of a v2 store JSON: key (without `/1`) -> (value, expire time).
pub fn user_keys(store: &Value) -> BTreeMap<String, (String, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<&Value> = store.pointer("/Root/Children/1").into_iter().collect();
    while let Some(n) = stack.pop() {
        match n.get("Children") {
            Some(Value::Object(children)) => stack.extend(children.values()),
            _ => {
                let path = n.get("Path").and_then(Value::as_str).unwrap_or("");
                let key = path.strip_prefix("/1").unwrap_or(path).to_string();
                let value = n
                    .get("Value")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let expire = n
                    .get("ExpireTime")
                    .and_then(Value::as_str)
                    .and_then(parse_go_time);
                out.insert(key, (value, expire));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_times_round_trip() {
        assert_eq!(go_time(None), "0001-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_795_920_893, 830_357_595);
        assert_eq!(go_time(Some(t)), "2026-11-29T02:54:53.830357595Z");
        assert_eq!(parse_go_time("2026-11-29T02:54:53.830357595Z"), Some(t));
        let whole = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(go_time(Some(whole)), "2000-02-29T00:00:00Z");
        assert_eq!(parse_go_time(&go_time(Some(whole))), Some(whole));
        assert_eq!(parse_go_time("0001-01-01T00:00:00Z"), None);
    }

    #[test]
    fn builds_the_tree_etcd_reads() {
        let exp = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let keys = vec![
            V2Key {
                key: "/registry/pods/a".into(),
                value: "pa".into(),
                expire: None,
                index: 7,
            },
            V2Key {
                key: "/registry/events/e".into(),
                value: "ev".into(),
                expire: Some(exp),
                index: 9,
            },
        ];
        let members = vec![Member {
            id: 0x282f2d0bec3a0795,
            name: "default".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec!["http://127.0.0.1:2379".into()],
        }];
        let bytes = build(&keys, &members, "2.2.0", 42).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["CurrentIndex"], 42);
        assert_eq!(v["CurrentVersion"], 2);
        assert_eq!(
            v["WatcherHub"]["EventHistory"]["Queue"]["Events"]
                .as_array()
                .unwrap()
                .len(),
            1000
        );
        assert_eq!(
            v.pointer("/Root/Children/0/Children/version/Value")
                .unwrap(),
            "2.2.0"
        );
        let m = v.pointer("/Root/Children/0/Children/members/Children/282f2d0bec3a0795/Children/raftAttributes").unwrap();
        assert_eq!(m["Path"], "/0/members/282f2d0bec3a0795/raftAttributes");
        assert_eq!(m["Value"], r#"{"peerURLs":["http://127.0.0.1:2380"]}"#);
        let e = v
            .pointer("/Root/Children/1/Children/registry/Children/events/Children/e")
            .unwrap();
        assert_eq!(e["Path"], "/1/registry/events/e");
        assert_eq!(e["Children"], Value::Null);
        assert_eq!(e["ModifiedIndex"], 9);
        let read = user_keys(&v);
        assert_eq!(read["/registry/events/e"], ("ev".to_string(), Some(exp)));
        assert_eq!(read["/registry/pods/a"], ("pa".to_string(), None));
        assert_eq!(read.len(), 2);
    }

    #[test]
    fn keys_the_v2_store_cannot_hold_are_refused() {
        for bad in ["registry/x", "/a//b", "/a/", "/a/./b", "/a/../b", "/"] {
            let k = V2Key {
                key: bad.into(),
                value: "v".into(),
                expire: None,
                index: 1,
            };
            assert!(build(&[k], &[], "2.2.0", 5).is_err(), "{bad}");
        }
        let both = |a: &str, b: &str| {
            let k = |key: &str| V2Key {
                key: key.into(),
                value: "v".into(),
                expire: None,
                index: 1,
            };
            build(&[k(a), k(b)], &[], "2.2.0", 5)
        };
        assert!(matches!(
            both("/a", "/a/b"),
            Err(V2Error::LeafAndDir { .. })
        ));
        assert!(matches!(
            both("/a/b", "/a"),
            Err(V2Error::LeafAndDir { .. })
        ));
        assert!(both("/a/b", "/a/c").is_ok());
    }
}
