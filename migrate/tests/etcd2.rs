//! etcd2 storage on real etcd: v2 keys written by etcd 3.4.23 (`--enable-v2`) with
//! `ETCDCTL_API=2 etcdctl set`, converted by migrate, and read back with the v3 API by etcdctl
//! (not migrate's code).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin_dir, copy_dir, fixtures_bin, free_port, leftovers, read_all, tree_bytes, Etcd};

mod common;

const PREFIX: &str = "/registry/events/";

/// A 3.4.23 data dir holding only v2 keys, version.txt `3.4.23/etcd2`, and the keys it holds.
fn pristine_v2(fx: &Path, dir: &Path) -> (PathBuf, BTreeMap<Vec<u8>, Vec<u8>>) {
    let data = dir.join("pristine");
    let (port, peer) = (free_port(), free_port());
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd = Etcd::spawn_member(
        &fx.join("etcd-3.4.23"),
        &data,
        "default",
        port,
        &peer_url,
        &format!("default={peer_url}"),
        &["--enable-v2=true".to_string()],
    );
    etcd.wait_ready();
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

fn migrate(bins: &Path, data: &Path, target: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DO_NOT_MOVE_BINARIES", "true")
        .args(["--name", "default", "--bin-dir"])
        .arg(bins)
        .arg("--data-dir")
        .arg(data)
        .args(["--target-version", target, "--target-storage", "etcd3"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
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
