//! etcd2 storage on real etcd: v2 keys written by etcd 3.4.23 (`--enable-v2`) with
//! `ETCDCTL_API=2 etcdctl set`, converted by migrate, and read back with the v3 API by etcdctl
//! (not migrate's code).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin_dir, copy_dir, fixtures_bin, leftovers, read_all, tree_bytes, Etcd};

mod common;

const PREFIX: &str = "/registry/events/";

/// A 3.4.23 data dir holding only v2 keys, version.txt `3.4.23/etcd2`, and the keys it holds.
fn pristine_v2(fx: &Path, dir: &Path) -> (PathBuf, BTreeMap<Vec<u8>, Vec<u8>>) {
    let data = dir.join("pristine");
    let etcd = Etcd::start_with(
        &fx.join("etcd-3.4.23"),
        &data,
        &["--enable-v2=true".to_string()],
    );
    let port = etcd.port;
    let mut want = BTreeMap::new();
    let set = |key: &str, value: &str, ttl: Option<u32>| {
        let mut cmd = Command::new(fx.join("etcdctl-3.4.23"));
        cmd.env("ETCDCTL_API", "2")
            .arg(format!("--endpoints=http://127.0.0.1:{port}"))
            .args(["set", key, value]);
        if let Some(t) = ttl {
            cmd.args(["--ttl", &t.to_string()]);
        }
        common::assert_success(&cmd.output().unwrap());
    };
    for i in 0..12 {
        let (k, v) = (format!("{PREFIX}ns-{}/ev-{i}", i % 3), format!("event {i}"));
        set(&k, &v, (i % 2 == 0).then_some(7200));
        want.insert(k, v);
    }
    for (k, v, ttl) in [
        ("/registry/pods/default/web-0", "{\"kind\":\"Pod\"}", None),
        ("/registry/ключ/日本", "значение ✓", None),
        ("/registry/minions/node-1", "node", None),
        // Overwritten: only the last value counts.
        ("/registry/services/api", "v1", None),
        ("/registry/services/api", "v2", None),
        // A TTL outside the prefix: kept as a plain key, as the original did.
        ("/other/lock", "held", Some(900)),
    ] {
        set(k, v, ttl);
        want.insert(k.to_string(), v.to_string());
    }
    etcd.stop();
    std::fs::write(data.join("version.txt"), "3.4.23/etcd2").unwrap();
    let want = want
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
    (data, want)
}

/// migrate on `data` with the bundled binaries in `bins`, `args` and extra `env`.
fn run(bins: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DO_NOT_MOVE_BINARIES", "true")
        .args(["--name", "default", "--bin-dir"])
        .arg(bins)
        .arg("--data-dir")
        .arg(data)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn migrate(bins: &Path, data: &Path, target: &str, env: &[(&str, &str)]) -> Output {
    run(
        bins,
        data,
        &["--target-version", target, "--target-storage", "etcd3"],
        env,
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts etcd `version` on `data` and checks every key, and the leases: one lease of about
/// an hour on exactly the keys under the prefix, none elsewhere.
fn assert_converted(fx: &Path, version: &str, data: &Path, want: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let e = Etcd::start(&fx.join(format!("etcd-{version}")), data);
    let etcdctl = fx.join(format!("etcdctl-{version}"));
    let read = read_all(&etcdctl, e.port);
    let out = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://127.0.0.1:{}", e.port))
        .args(["get", "", "--prefix", "--keys-only", "-w", "json"])
        .output()
        .unwrap();
    common::assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut leases = BTreeMap::new();
    for kv in v["kvs"].as_array().unwrap() {
        let key = String::from_utf8(
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                kv["key"].as_str().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let lease = kv["lease"].as_i64().unwrap_or(0);
        assert_eq!(
            lease != 0,
            key.starts_with(PREFIX),
            "{key}: lease {lease:x} (only keys under {PREFIX} get one)"
        );
        if lease != 0 {
            *leases.entry(lease).or_insert(0) += 1;
        }
    }
    assert_eq!(leases.len(), 1, "one lease for the TTL keys: {leases:?}");
    let (id, n) = leases.into_iter().next().unwrap();
    assert_eq!(n, 12);
    let ttl = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://127.0.0.1:{}", e.port))
        .args(["lease", "timetolive", &format!("{id:x}"), "-w", "json"])
        .output()
        .unwrap();
    common::assert_success(&ttl);
    let t: serde_json::Value = serde_json::from_slice(&ttl.stdout).unwrap();
    e.stop();
    assert_eq!(
        t["grantedTTL"].as_i64().or(t["granted-ttl"].as_i64()),
        Some(3600),
        "{t}"
    );
    let remaining = t["ttl"].as_i64().unwrap();
    assert!(
        (3300..=3600).contains(&remaining),
        "remaining TTL {remaining}"
    );
    assert!(
        read == *want,
        "{} keys read back, {} written",
        read.len(),
        want.len()
    );
}

#[test]
fn etcd2_to_etcd3_converts_every_key_and_leases_the_ttl_keys() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, want) = pristine_v2(&fx, tmp.path());

    // To 3.4.23/etcd3: converted by etcdctl-3.4.23 itself (the original's rule B).
    let case = tmp.path().join("to-3.4");
    std::fs::create_dir(&case).unwrap();
    let data = case.join("data");
    copy_dir(&pristine, &data);
    let out = migrate(bins.path(), &data, "3.4.23", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 keys with a v2 TTL are outside"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        "3.4.23/etcd3"
    );
    assert_converted(&fx, "3.4.23", &data, &want);
    assert!(leftovers(&case).is_empty(), "{:?}", leftovers(&case));

    // To 3.5.1/etcd3: 3.5 has no `etcdctl migrate`, so convert with 3.4.23, then upgrade.
    let case = tmp.path().join("to-3.5");
    std::fs::create_dir(&case).unwrap();
    let data = case.join("data");
    copy_dir(&pristine, &data);
    let out = migrate(bins.path(), &data, "3.5.1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        "3.5.1/etcd3"
    );
    assert_converted(&fx, "3.5.1", &data, &want);
    assert!(leftovers(&case).is_empty(), "{:?}", leftovers(&case));
}

#[test]
fn etcd2_refusals_and_crashes_leave_the_data_safe() {
    let Some(fx) = fixtures_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, want) = pristine_v2(&fx, tmp.path());
    let original = tree_bytes(&pristine);

    // Nothing bundled can convert (3.5 removed `etcdctl migrate`): exit 18, untouched.
    let only_35 = bin_dir(&fx, &["3.5.0", "3.5.1"]);
    let case = tmp.path().join("refused");
    std::fs::create_dir(&case).unwrap();
    let data = case.join("data");
    copy_dir(&pristine, &data);
    let out = migrate(only_35.path(), &data, "3.5.1", &[]);
    assert_eq!(out.status.code(), Some(18), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("etcdctl has `migrate`"),
        "{}",
        stderr(&out)
    );
    assert!(
        tree_bytes(&data) == original,
        "a refusal changed the data dir"
    );
    assert!(leftovers(&case).is_empty());

    // A dry run plans and touches nothing.
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let mut dry = Command::new(env!("CARGO_BIN_EXE_migrate"));
    let out = dry
        .env_clear()
        .args(["--name", "default", "--dry-run", "--bin-dir"])
        .arg(bins.path())
        .arg("--data-dir")
        .arg(&data)
        .args(["--target-version", "3.5.1", "--target-storage", "etcd3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("etcdctl-3.4.23 migrate") && plan.contains("upgrade 3.4.23 -> 3.5.1"),
        "{plan}"
    );
    assert!(
        tree_bytes(&data) == original,
        "a dry run changed the data dir"
    );

    // A crash at every stage of the conversion: the rerun converges with every key.
    for stage in [
        "convert-before-backup",
        "convert-backup-copied",
        "convert-journal-written",
        "running-3.4.23",
        "convert-v2-read",
        "convert-migrated",
        "convert-leases-attached",
        "convert-before-version",
        "convert-version-written",
    ] {
        let case = tmp.path().join(stage);
        std::fs::create_dir(&case).unwrap();
        let data = case.join("data");
        copy_dir(&pristine, &data);
        common::crash_then_rerun(
            &|env| migrate(bins.path(), &data, "3.4.23", env),
            &data,
            stage,
            "3.4.23",
        );
        assert_converted(&fx, "3.4.23", &data, &want);
        assert!(
            leftovers(&case).is_empty(),
            "{stage}: {:?}",
            leftovers(&case)
        );
    }
}

/// A v3 data dir written by etcd 3.4.23 and labelled `3.0.17/etcd3`, the keys it serves, the
/// leased keys, and its member and cluster ids (hex). No etcd 3.0 can be installed here: the
/// bin dir's etcd-3.0.17/etcdctl-3.0.17 are 3.4.23, which serves the same v3 API; the rollback
/// reads the keyspace only through that API. `--snapshot-count=10` makes etcd write v2 snap
/// files and WAL snapshot records, as a long-running 3.0 member has.
struct V3Data {
    dir: PathBuf,
    want: BTreeMap<String, String>,
    leased: Vec<String>,
    member: String,
    cluster: String,
}

fn pristine_v3_as_3_0(fx: &Path, dir: &Path) -> V3Data {
    let data = dir.join("pristine-v3");
    let etcd = Etcd::start_with(
        &fx.join("etcd-3.4.23"),
        &data,
        &["--snapshot-count=10".to_string()],
    );
    let port = etcd.port;
    let ctl = |args: &[&str]| -> String {
        let out = Command::new(fx.join("etcdctl-3.4.23"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{port}"))
            .args(args)
            .output()
            .unwrap();
        common::assert_success(&out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let lease = ctl(&["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    let mut want = BTreeMap::new();
    let mut leased = Vec::new();
    for i in 0..20 {
        let k = format!("/registry/pods/ns-{}/pod-{i}", i % 4);
        ctl(&["put", &k, "first"]);
        ctl(&["put", &k, &format!("{{\"kind\":\"Pod\",\"n\":{i}}}")]);
        want.insert(k, format!("{{\"kind\":\"Pod\",\"n\":{i}}}"));
    }
    for i in 0..6 {
        let k = format!("{PREFIX}ev-{i}");
        ctl(&[
            "put",
            &k,
            &format!("event {i}"),
            &format!("--lease={lease}"),
        ]);
        want.insert(k.clone(), format!("event {i}"));
        leased.push(k);
    }
    ctl(&["put", "/registry/ключ/日本", "значение ✓"]);
    want.insert("/registry/ключ/日本".into(), "значение ✓".into());
    ctl(&["put", "/registry/deleted", "x"]);
    ctl(&["del", "/registry/deleted"]);
    let status: serde_json::Value =
        serde_json::from_str(&ctl(&["endpoint", "status", "-w", "json"])).unwrap();
    let header = &status[0]["Status"]["header"];
    let member = format!("{:x}", header["member_id"].as_u64().unwrap());
    let cluster = format!("{:x}", header["cluster_id"].as_u64().unwrap());
    etcd.stop();
    std::fs::write(data.join("version.txt"), "3.0.17/etcd3").unwrap();
    V3Data {
        dir: data,
        want,
        leased,
        member,
        cluster,
    }
}

/// A bin dir whose etcd-3.0.17 and etcdctl-3.0.17 are the 3.4.23 binaries (see above).
fn bin_dir_3_0(fx: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for name in ["etcd", "etcdctl"] {
        std::os::unix::fs::symlink(
            fx.join(format!("{name}-3.4.23")),
            d.path().join(format!("{name}-3.0.17")),
        )
        .unwrap();
    }
    d
}

fn rollback(bins: &Path, data: &Path, env: &[(&str, &str)]) -> Output {
    let args = [
        "--bundled-versions",
        "2.2.1,3.0.17",
        "--target-version",
        "2.2.1",
        "--target-storage",
        "etcd2",
    ];
    run(bins, data, &args, env)
}

/// Reads the rolled-back dir with etcd's own code (etcd-v2-dump), and checks the member, the
/// cluster, the raft position, the cluster version, every key and the TTLs.
fn assert_v2_dump(fx: &Path, data: &Path, v3: &V3Data) {
    let out = Command::new(fx.join("etcd-v2-dump"))
        .arg(data)
        .output()
        .unwrap();
    common::assert_success(&out);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["node_id"], v3.member.as_str(), "{d}");
    assert_eq!(d["cluster_id"], v3.cluster.as_str(), "{d}");
    assert_eq!(d["cluster_version"], "2.2.0");
    assert_eq!(d["hardstate"]["commit"], d["snapshot_index"]);
    assert_eq!(d["entries"], 0);
    assert_eq!(
        d["voters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| format!("{:x}", v.as_u64().unwrap()))
            .collect::<Vec<_>>(),
        vec![v3.member.clone()]
    );
    let keys = d["keys"].as_object().unwrap();
    let got: BTreeMap<String, String> = keys
        .iter()
        .map(|(k, v)| {
            (
                k.strip_prefix("/1").unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, v3.want);
    for (k, v) in keys {
        let ttl = v["ttl"].as_i64().unwrap();
        if v3.leased.iter().any(|l| format!("/1{l}") == *k) {
            assert!((400..=600).contains(&ttl), "{k}: ttl {ttl}");
        } else {
            assert_eq!(ttl, 0, "{k} has no lease, so no TTL");
        }
    }
    assert!(
        !data.join("member/snap/db").exists(),
        "the v3 backend must be gone"
    );
}

#[test]
fn etcd3_to_etcd2_rollback_is_read_back_by_real_etcd() {
    let Some(fx) = fixtures_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let v3 = pristine_v3_as_3_0(&fx, tmp.path());
    let bins = bin_dir_3_0(&fx);

    let case = tmp.path().join("straight");
    std::fs::create_dir(&case).unwrap();
    let data = case.join("data");
    copy_dir(&v3.dir, &data);
    let out = rollback(bins.path(), &data, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        "2.2.1/etcd2"
    );
    assert!(leftovers(&case).is_empty(), "{:?}", leftovers(&case));
    assert_v2_dump(&fx, &data, &v3);

    // Real etcd serves it through the v2 API. etcd 2.2/2.3 read only the snap and WAL; etcd
    // 3.4 also wants the v3 backend of the snapshot (`<index>.snap.db`, else it stops with
    // "failed to find database snapshot file"), so this copy gets an empty one, taken from a
    // fresh etcd: every key it then serves comes from the v2 snapshot migrate wrote.
    let empty = tmp.path().join("empty");
    Etcd::start(&fx.join("etcd-3.4.23"), &empty).stop();
    let serve = tmp.path().join("serve");
    copy_dir(&data, &serve);
    let dump: serde_json::Value = serde_json::from_slice(
        &Command::new(fx.join("etcd-v2-dump"))
            .arg(&data)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let index = dump["snapshot_index"].as_u64().unwrap();
    std::fs::copy(
        empty.join("member/snap/db"),
        serve.join(format!("member/snap/{index:016x}.snap.db")),
    )
    .unwrap();
    let etcd = Etcd::start_with(
        &fx.join("etcd-3.4.23"),
        &serve,
        &["--enable-v2=true".to_string()],
    );
    let get = |path: &str| -> serde_json::Value {
        let r = etcd.post_method("GET", path, "");
        serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_default()
    };
    let tree = get("/v2/keys/?recursive=true&sorted=true");
    let members = get("/v2/members");
    etcd.stop();
    let mut served = BTreeMap::new();
    let mut stack = vec![&tree["node"]];
    while let Some(n) = stack.pop() {
        if n["dir"].as_bool() == Some(true) {
            stack.extend(n["nodes"].as_array().into_iter().flatten());
        } else {
            let key = n["key"].as_str().unwrap().to_string();
            let ttl = n["ttl"].as_i64().unwrap_or(0);
            assert_eq!(ttl > 0, v3.leased.contains(&key), "{key}: ttl {ttl}");
            served.insert(key, n["value"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        served, v3.want,
        "etcd 3.4.23 --enable-v2 serves the rolled-back keys"
    );
    assert_eq!(members["members"][0]["id"], v3.member.as_str(), "{members}");
}

#[test]
fn etcd2_rollback_refusals_damaged_inputs_and_crashes_leave_the_data_safe() {
    let Some(fx) = fixtures_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let v3 = pristine_v3_as_3_0(&fx, tmp.path());
    let bins = bin_dir_3_0(&fx);
    let original = tree_bytes(&v3.dir);
    let fresh = |name: &str| -> PathBuf {
        let case = tmp.path().join(name);
        std::fs::create_dir(&case).unwrap();
        let data = case.join("data");
        copy_dir(&v3.dir, &data);
        data
    };
    let wal = |data: &Path| -> PathBuf {
        let mut w: Vec<PathBuf> = std::fs::read_dir(data.join("member/wal"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        w.sort();
        w.remove(0)
    };
    // The second record of the first WAL file (the first is the 16-byte CRC record).
    let second = |bytes: &[u8]| -> (usize, usize) {
        let word = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        (24, (word & 0x00ff_ffff_ffff_ffff) as usize)
    };
    type Damage = Box<dyn Fn(&Path)>;
    let damages: Vec<(&str, Damage, &str)> = vec![
        (
            "truncated-wal",
            Box::new(move |data: &Path| {
                let f = wal(data);
                let bytes = std::fs::read(&f).unwrap();
                let (start, len) = second(&bytes);
                std::fs::write(&f, &bytes[..start + len / 2]).unwrap();
            }),
            "truncated",
        ),
        (
            "crc-mismatch",
            Box::new(move |data: &Path| {
                let f = wal(data);
                let mut bytes = std::fs::read(&f).unwrap();
                let (start, len) = second(&bytes);
                bytes[start + len - 1] ^= 0x01;
                std::fs::write(&f, &bytes).unwrap();
            }),
            "CRC mismatch",
        ),
        (
            "missing-snap",
            Box::new(|data: &Path| {
                let mut snaps: Vec<PathBuf> = std::fs::read_dir(data.join("member/snap"))
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                    .collect();
                snaps.sort();
                std::fs::remove_file(snaps.pop().expect("etcd wrote snap files")).unwrap();
            }),
            "has no snap file",
        ),
    ];
    for (name, damage, message) in &damages {
        let data = fresh(name);
        damage(&data);
        let before = tree_bytes(&data);
        let out = rollback(bins.path(), &data, &[]);
        assert_eq!(out.status.code(), Some(20), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
        assert!(tree_bytes(&data) == before, "{name}: the data dir changed");
        assert!(leftovers(data.parent().unwrap()).is_empty(), "{name}");
    }

    // A value the v2 store cannot hold (not UTF-8): exit 19, untouched.
    let data = fresh("binary-value");
    {
        let etcd = Etcd::start(&fx.join("etcd-3.4.23"), &data);
        let r = etcd.post(
            "/v3/kv/put",
            r#"{"key":"L3JlZ2lzdHJ5L2Jpbg==","value":"/4A="}"#,
        );
        assert!(r.contains("header"), "{r}");
        etcd.stop();
    }
    let before = tree_bytes(&data);
    let out = rollback(bins.path(), &data, &[]);
    assert_eq!(out.status.code(), Some(19), "{}", stderr(&out));
    assert!(stderr(&out).contains("/registry/bin"), "{}", stderr(&out));
    assert!(
        tree_bytes(&data) == before,
        "a refusal changed the data dir"
    );

    // From 3.1 to etcd2: too far (13), untouched.
    let data = fresh("from-3.1");
    std::fs::write(data.join("version.txt"), "3.1.12/etcd3").unwrap();
    let before = tree_bytes(&data);
    let out = rollback(bins.path(), &data, &[]);
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    assert!(tree_bytes(&data) == before);

    // A crash at every stage: the rerun converges, read back by etcd's own code.
    for stage in [
        "etcd2-rollback-before-old",
        "etcd2-rollback-backup-copied",
        "running-3.0.17",
        "etcd2-rollback-read",
        "etcd2-rollback-written",
        "etcd2-rollback-verified",
        "rollback-journal-written",
        "rollback-original-aside",
        "rollback-swapped",
    ] {
        let data = fresh(stage);
        let out = rollback(bins.path(), &data, &[("ETCDIMG_MIGRATE_FAILPOINT", stage)]);
        assert!(!out.status.success(), "{stage}: the failpoint did not fire");
        assert!(
            stderr(&out).contains(&format!("failpoint `{stage}`")),
            "{stage}: {}",
            stderr(&out)
        );
        let out = rollback(bins.path(), &data, &[]);
        assert!(out.status.success(), "{stage}: rerun: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            "2.2.1/etcd2",
            "{stage}"
        );
        assert_v2_dump(&fx, &data, &v3);
        assert!(
            leftovers(data.parent().unwrap()).is_empty(),
            "{stage}: {:?}",
            leftovers(data.parent().unwrap())
        );
    }
    assert!(tree_bytes(&v3.dir) == original);
}
