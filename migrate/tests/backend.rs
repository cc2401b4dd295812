//! migrate's offline fingerprint (its own bbolt reader) against etcd and bbolt themselves, on
//! data written by real etcd 3.4.23 and 3.5.1; what the fingerprint catches; and the steps on
//! data a crashed etcd left behind and on data with etcd auth enabled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use common::{bin_dir, copy_dir, fixtures_bin, tree_bytes, Etcd};
use serde_json::Value;

mod common;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn put(etcd: &Etcd, key: &str, value: &[u8], lease: Option<&str>) {
    let body = match lease {
        Some(l) => format!(
            r#"{{"key":"{}","value":"{}","lease":"{l}"}}"#,
            b64(key.as_bytes()),
            b64(value)
        ),
        None => format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(key.as_bytes()),
            b64(value)
        ),
    };
    let r = etcd.post("/v3/kv/put", &body);
    assert!(r.contains("header"), "put {key} failed: {r}");
}

fn delete(etcd: &Etcd, key: &str) {
    let r = etcd.post(
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes())),
    );
    assert!(r.contains("\"deleted\":\"1\""), "delete {key}: {r}");
}

/// `etcdctl-<version>` against 127.0.0.1:`port`, with `extra` global flags.
fn etcdctl(fx: &Path, version: &str, port: u16, args: &[&str]) -> Output {
    Command::new(fx.join(format!("etcdctl-{version}")))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://127.0.0.1:{port}"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

use common::fingerprint;

/// bbolt's own reading of a backend file: bucket -> (keys, sha256).
fn db_dump(fx: &Path, db: &Path) -> BTreeMap<String, (u64, String)> {
    let out = etcd_db_dump(fx, &[db.as_os_str()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                (
                    v["keys"].as_u64().unwrap(),
                    v["sha256"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// The fixtures' `etcd-db-dump` (bbolt's own Go package) with `args`, which must succeed.
fn etcd_db_dump(fx: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(fx.join("etcd-db-dump"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcd-db-dump {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mutate(fx: &Path, db: &Path, change: &str) {
    etcd_db_dump(fx, &["mutate".as_ref(), db.as_os_str(), change.as_ref()]);
}

fn db(data: &Path) -> PathBuf {
    data.join("member/snap/db")
}

/// Puts, overwrites, deletes, a lease on some keys, a compaction at the then current revision,
/// then new keys and a delete after it: every shape the key bucket has.
fn write_history(etcd: &Etcd, fx: &Path, version: &str) {
    let lease = etcd.grant(600);
    for i in 0..200 {
        let lease = (i % 40 == 0).then_some(lease.as_str());
        put(
            etcd,
            &format!("/registry/pods/p{i}"),
            format!("v{i}").as_bytes(),
            lease,
        );
    }
    for i in 0..50 {
        put(
            etcd,
            &format!("/registry/pods/p{i}"),
            format!("w{i}").as_bytes(),
            None,
        );
    }
    for i in 190..200 {
        delete(etcd, &format!("/registry/pods/p{i}"));
    }
    let status = ok_json(etcdctl(
        fx,
        version,
        etcd.port,
        &["endpoint", "status", "-w", "json"],
    ));
    let rev = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    let out = etcdctl(fx, version, etcd.port, &["compaction", &rev.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..20 {
        put(
            etcd,
            &format!("/registry/events/e{i}"),
            &[i as u8; 3000],
            None,
        );
    }
    delete(etcd, "/registry/events/e3");
}

/// A data dir at `data` holding [`write_history`] as etcd 3.4.23 wrote it, cleanly stopped.
fn history_3_4(fx: &Path, data: &Path) {
    let etcd = Etcd::start(&fx.join("etcd-3.4.23"), data);
    write_history(&etcd, fx, "3.4.23");
    etcd.stop();
}

#[test]
fn the_offline_fingerprint_agrees_with_etcd_and_with_bbolt() {
    let Some(fx) = fixtures_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for version in ["3.4.23", "3.5.1"] {
        let data = tmp.path().join(version);
        let etcd = Etcd::start(&fx.join(format!("etcd-{version}")), &data);
        write_history(&etcd, &fx, version);
        // What etcd itself says about the same data.
        let hashkv = ok_json(etcdctl(
            &fx,
            version,
            etcd.port,
            &["endpoint", "hashkv", "-w", "json"],
        ));
        let keys = ok_json(etcdctl(
            &fx,
            version,
            etcd.port,
            &["get", "", "--prefix", "--keys-only", "-w", "json"],
        ));
        etcd.stop();
        let fp = fingerprint(&data);
        assert_eq!(
            fp["hash_kv"].as_u64(),
            hashkv[0]["HashKV"]["hash"].as_u64(),
            "{version}: HashKV"
        );
        assert_eq!(
            fp["revision"].as_i64(),
            hashkv[0]["HashKV"]["header"]["revision"].as_i64(),
            "{version}: revision"
        );
        assert_eq!(
            fp["compact_revision"].as_i64(),
            hashkv[0]["HashKV"]["compact_revision"].as_i64(),
            "{version}: compaction"
        );
        assert_eq!(
            fp["keys"].as_u64(),
            keys["count"].as_u64(),
            "{version}: keys"
        );
        assert_eq!(
            fp["keys"], 209,
            "{version}: 200 pods - 10 deleted + 20 events - 1 deleted"
        );
        assert_eq!(fp["leases"], 1, "{version}");
        // What bbolt itself reads from the file.
        let buckets = db_dump(&fx, &db(&data));
        assert_eq!(
            fp["revisions"].as_u64(),
            Some(buckets["key"].0),
            "{version}"
        );
        assert_eq!(
            fp["history_sha256"].as_str(),
            Some(buckets["key"].1.as_str()),
            "{version}"
        );
        assert_eq!(fp["leases"].as_u64(), Some(buckets["lease"].0), "{version}");
        assert!(
            migrate::engine::unsettled(&data).unwrap().is_none(),
            "{version}: a cleanly stopped member's backend is complete"
        );
    }
}

#[test]
fn the_fingerprint_catches_a_changed_value_a_missing_revision_and_a_changed_lease() {
    let Some(fx) = fixtures_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    history_3_4(&fx, &data);
    let reference = migrate::backend::fingerprint(&db(&data), None).unwrap();
    for (change, field) in [
        ("value-last", "history sha256"),
        ("value-first", "history sha256"),
        ("drop-revision", "revisions"),
        ("lease-ttl", "leases sha256"),
    ] {
        let copy = tmp.path().join(change);
        copy_dir(&data, &copy);
        mutate(&fx, &db(&copy), change);
        let changed = migrate::backend::fingerprint(&db(&copy), None).unwrap();
        let diffs = reference.differences(&changed);
        assert!(
            diffs.iter().any(|d| d.starts_with(field)),
            "{change}: {diffs:?}"
        );
    }
    // The newest revision was the delete of e3; dropping it brings e3 back: one key more.
    let copy = tmp.path().join("drop-revision");
    let changed = migrate::backend::fingerprint(&db(&copy), None).unwrap();
    assert_eq!(changed.keys, reference.keys + 1);
}

use common::{assert_untouched, migrate_json as migrate_run, stderr};

#[test]
fn a_step_whose_copy_differs_is_undone_and_the_data_dir_is_untouched() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("case");
    std::fs::create_dir(&case).unwrap();
    let data = case.join("data");
    history_3_4(&fx, &data);
    std::fs::write(data.join("version.txt"), "3.4.23/etcd3").unwrap();
    let dump = fx.join("etcd-db-dump");
    let tampered = |change: &str, target: &str| {
        let before = tree_bytes(&data);
        let tamper = format!("{} mutate {{db}} {change}", dump.display());
        let out = migrate_run(
            bins.path(),
            &data,
            target,
            &[("ETCDIMG_MIGRATE_TEST_TAMPER", &tamper)],
        );
        assert_untouched(
            &out,
            1,
            "the keyspace differs after the step",
            &data,
            &before,
            &case,
        );
    };
    tampered("value-last", "3.5.1");
    tampered("lease-ttl", "3.5.1");
    // Untampered, the same data upgrades; a tampered rollback is undone too.
    let out = migrate_run(bins.path(), &data, "3.5.1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    tampered("value-first", "3.4.23");
}

#[test]
fn data_a_crashed_etcd_left_is_settled_by_its_own_etcd_first() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // With a batch interval of an hour, the backend commits nothing until etcd stops: a SIGKILL
    // leaves every write in the WAL only, as a crash between two commits does.
    let etcd = Etcd::start_with(
        &fx.join("etcd-3.4.23"),
        &data,
        &[
            "--backend-batch-interval=1h".into(),
            "--backend-batch-limit=1000000".into(),
        ],
    );
    let mut want = BTreeMap::new();
    for i in 0..300 {
        let (k, v) = (format!("/registry/k{i:03}"), format!("value {i}"));
        put(&etcd, &k, v.as_bytes(), None);
        want.insert(k.into_bytes(), v.into_bytes());
    }
    let mut etcd = etcd;
    etcd.child.kill().unwrap();
    etcd.child.wait().unwrap();
    std::fs::write(data.join("version.txt"), "3.4.23/etcd3").unwrap();
    let why = migrate::engine::unsettled(&data).unwrap();
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("requests in the WAL")),
        "{why:?}"
    );
    let out = migrate_run(bins.path(), &data, "3.5.1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("etcd 3.4.23 applies it first"),
        "{}",
        stderr(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fingerprints"][0]["before"]["keys"], 300);
    assert_eq!(report["fingerprints"][0]["after"]["keys"], 300);
    let e = Etcd::start(&fx.join("etcd-3.5.1"), &data);
    let read = common::read_all(&fx.join("etcdctl-3.5.1"), e.port);
    e.stop();
    assert!(read == want, "{} keys read back", read.len());
}

#[test]
fn auth_enabled_data_upgrades_and_rolls_back_with_its_users_and_roles() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let etcd = Etcd::start(&fx.join("etcd-3.4.23"), &data);
    for i in 0..50 {
        put(&etcd, &format!("/registry/r{i}"), b"kube data", None);
        put(&etcd, &format!("/other/o{i}"), b"not for kube", None);
    }
    let ctl = |args: &[&str]| {
        let out = etcdctl(&fx, "3.4.23", etcd.port, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl(&["user", "add", "root:rootpw"]);
    ctl(&["role", "add", "reader"]);
    ctl(&[
        "role",
        "grant-permission",
        "reader",
        "--prefix=true",
        "read",
        "/registry/",
    ]);
    ctl(&["user", "add", "kube:kubepw"]);
    ctl(&["user", "grant-role", "kube", "reader"]);
    ctl(&["auth", "enable"]);
    etcd.stop();
    std::fs::write(data.join("version.txt"), "3.4.23/etcd3").unwrap();
    assert_eq!(fingerprint(&data)["auth_enabled"], true);

    for target in ["3.5.1", "3.4.23"] {
        let out = migrate_run(bins.path(), &data, target, &[]);
        assert!(out.status.success(), "to {target}: {}", stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["fingerprints"][0]["after"]["auth_enabled"], true);
        assert_eq!(r["fingerprints"][0]["after"]["keys"], 100);
        let e = Etcd::start_unready(&fx.join(format!("etcd-{target}")), &data);
        let get = |user: Option<&str>, key: &str| {
            let mut args = vec!["get", key, "--prefix", "--keys-only", "-w", "json"];
            let flag;
            if let Some(u) = user {
                flag = format!("--user={u}");
                args.push(&flag);
            }
            e.wait_until(|| {
                etcdctl(
                    &fx,
                    target,
                    e.port,
                    &["--user=root:rootpw", "endpoint", "health"],
                )
                .status
                .success()
            });
            etcdctl(&fx, target, e.port, &args)
        };
        let all = ok_json(get(Some("root:rootpw"), ""));
        assert_eq!(all["count"], 100, "{target}: root reads everything");
        let kube = ok_json(get(Some("kube:kubepw"), "/registry/"));
        assert_eq!(kube["count"], 50, "{target}: kube reads /registry/");
        let denied = get(Some("kube:kubepw"), "/other/");
        assert!(
            !denied.status.success(),
            "{target}: kube must not read /other/"
        );
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
            "{target}: {}",
            String::from_utf8_lossy(&denied.stderr)
        );
        let anonymous = get(None, "");
        assert!(!anonymous.status.success(), "{target}: auth is still on");
        e.stop();
    }
}

// guards: the reader assumed 4 KiB pages; a member on a 64 KiB-page kernel (arm64, ppc64le)
// writes its backend in 64 KiB pages.
#[test]
fn backends_with_pages_of_4_to_64_kib_fingerprint_alike() {
    let Some(fx) = fixtures_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("4k");
    history_3_4(&fx, &data);
    let reference = fingerprint(&data);
    let buckets = db_dump(&fx, &db(&data));
    for size in [4096u32, 8192, 16384, 32768, 65536] {
        let case = tmp.path().join(format!("pages-{size}"));
        copy_dir(&data, &case);
        std::fs::remove_file(db(&case)).unwrap();
        let (from, to, size_arg) = (db(&data), db(&case), size.to_string());
        etcd_db_dump(
            &fx,
            &[
                "repage".as_ref(),
                from.as_os_str(),
                to.as_os_str(),
                size_arg.as_ref(),
            ],
        );
        // The file really has the page size: bbolt's meta page records it at offset 24.
        let head = std::fs::read(db(&case)).unwrap();
        assert_eq!(
            u32::from_le_bytes(head[24..28].try_into().unwrap()),
            size,
            "the meta page's page size"
        );
        assert_eq!(
            db_dump(&fx, &db(&case)),
            buckets,
            "{size}: bbolt reads the copy"
        );
        assert_eq!(fingerprint(&case), reference, "{size}-byte pages");
    }
}
