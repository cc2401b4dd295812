//! The version matrix on real etcd: the chain a pod walks from 3.4 to 3.7 and back, one
//! TARGET_VERSION change at a time (plain, and with auth and leases), and the refusals etcd's
//! own rules call for (a 3.5 below the 3.6 step minimum, custom v2 content before 3.6, 3.7's
//! removed flags). The versions are every etcd scripts/fixtures.sh built (3.4.23 from Debian's
//! source, 3.5.0/3.5.1 from PyPI, the current 3.5, 3.6 and 3.7 from their Go modules), or
//! `ETCDIMG_TEST_ETCD_VERSIONS` in `ETCDIMG_TEST_ETCD_BIN_DIR` (the GitHub job: official
//! releases). A matrix without 3.4-3.7 fails under ETCDIMG_TEST_REQUIRE=all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use common::{assert_untouched, matrix, migrate_json, stderr, tree_bytes, Etcd};
use semver::Version;
use serde_json::Value;

mod common;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A bin dir with the named versions from `dir`; `fakes` are files that stand in for versions
/// not at hand (never run), `aliases` name a real binary under another version.
fn bins(
    dir: &Path,
    real: &[&Version],
    aliases: &[(&Version, &str)],
    fakes: &[&str],
) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let link = |from: &Path, to: &str| {
        if from.exists() {
            std::os::unix::fs::symlink(from, d.path().join(to)).unwrap();
        }
    };
    for v in real {
        for n in ["etcd", "etcdctl", "etcdutl"] {
            link(&dir.join(format!("{n}-{v}")), &format!("{n}-{v}"));
        }
    }
    for (v, as_version) in aliases {
        for n in ["etcd", "etcdctl", "etcdutl"] {
            link(&dir.join(format!("{n}-{v}")), &format!("{n}-{as_version}"));
        }
    }
    for f in fakes {
        for n in ["etcd", "etcdctl", "etcdutl"] {
            std::fs::write(d.path().join(format!("{n}-{f}")), b"#!/bin/false\n").unwrap();
        }
    }
    d
}

/// Keys written through etcd's JSON gateway (one leased), what the data must hold after.
fn fill(etcd: &Etcd, n: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let id = etcd.grant(3600);
    let mut want = BTreeMap::new();
    for i in 0..n {
        let (k, v) = (
            format!("/registry/pods/p{i:04}"),
            format!("value {i}").repeat(1 + i % 7),
        );
        let lease = if i % 10 == 0 {
            format!(r#","lease":"{id}""#)
        } else {
            String::new()
        };
        let r = etcd.post(
            "/v3/kv/put",
            &format!(
                r#"{{"key":"{}","value":"{}"{lease}}}"#,
                b64(k.as_bytes()),
                b64(v.as_bytes())
            ),
        );
        assert!(r.contains("header"), "put: {r}");
        want.insert(k.into_bytes(), v.into_bytes());
    }
    want
}

fn written_by(
    dir: &Path,
    bin_dir: &Path,
    v: &Version,
    n: usize,
) -> (PathBuf, BTreeMap<Vec<u8>, Vec<u8>>) {
    let data = dir.join("data");
    let etcd = Etcd::start(&bin_dir.join(format!("etcd-{v}")), &data);
    let want = fill(&etcd, n);
    etcd.stop();
    std::fs::write(data.join("version.txt"), format!("{v}/etcd3")).unwrap();
    (data, want)
}

fn serves(bin_dir: &Path, v: &Version, data: &Path, want: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let e = Etcd::start(&bin_dir.join(format!("etcd-{v}")), data);
    let read = common::read_all(&bin_dir.join(format!("etcdctl-{v}")), e.port);
    e.stop();
    assert!(
        read == *want,
        "etcd {v}: {} keys read back, {} written",
        read.len(),
        want.len()
    );
}

/// The newest patch of each minor, oldest first.
fn newest_per_minor(versions: &[Version]) -> Vec<Version> {
    let mut by_minor: BTreeMap<(u64, u64), Version> = BTreeMap::new();
    for v in versions {
        let e = by_minor
            .entry((v.major, v.minor))
            .or_insert_with(|| v.clone());
        if v > e {
            *e = v.clone();
        }
    }
    by_minor.into_values().collect()
}

fn step_names(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().split(':').next().unwrap().to_string())
        .collect()
}

/// The matrix's versions on 3.`minor`, in the matrix's order.
fn on_minor(versions: &[Version], minor: u64) -> impl Iterator<Item = &Version> {
    versions
        .iter()
        .filter(move |v| (v.major, v.minor) == (3, minor))
}

/// The versions a pod steps through, one TARGET_VERSION change at a time: the newest patch of
/// each minor in the matrix, oldest first. The chain tests need 3.4 through 3.7.
fn pod_chain(test: &str, versions: &[Version]) -> Option<Vec<Version>> {
    let chain = newest_per_minor(versions);
    let minors: Vec<u64> = chain.iter().map(|v| v.minor).collect();
    if ![4, 5, 6, 7].iter().all(|m| minors.contains(m)) {
        common::missing_versions(test, "etcd 3.4, 3.5, 3.6 and 3.7");
        return None;
    }
    Some(chain)
}

/// `meta/storageVersion` of the data's backend as bbolt's own Go reader sees it (the fixtures'
/// etcd-db-dump), else as migrate's fingerprint does (the GitHub job has no fixtures).
fn storage_version(data: &Path, fingerprint: &Value) -> Option<String> {
    let Some(dump) = common::fixtures_bin().map(|b| b.join("etcd-db-dump")) else {
        return fingerprint["storage_version"].as_str().map(String::from);
    };
    let out = std::process::Command::new(dump)
        .arg("get")
        .arg(data.join("member/snap/db"))
        .args(["meta", "storageVersion"])
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => Some(String::from_utf8(out.stdout).unwrap()),
        Some(3) => None,
        _ => panic!("etcd-db-dump: {}", stderr(&out)),
    }
}

/// What a minor's etcd leaves as the storage version: 3.6+ writes `<major>.<minor>.0`, 3.5 and
/// older write none.
fn expected_storage(v: &Version) -> Option<String> {
    (v.minor >= 6).then(|| format!("{}.{}.0", v.major, v.minor))
}

/// Users and roles: `root` may do anything, `kube` may only read `/registry/`.
fn enable_auth(etcdctl: &Path, port: u16) {
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{port}"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
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
}

/// etcd `v` on `data` serves exactly `want` (as root where auth is on), and with auth `kube`
/// reads `/registry/` but nothing else, and an anonymous read is refused.
fn serves_as(
    bin_dir: &Path,
    v: &Version,
    data: &Path,
    want: &BTreeMap<Vec<u8>, Vec<u8>>,
    auth: bool,
) {
    if !auth {
        return serves(bin_dir, v, data, want);
    }
    let e = Etcd::start_unready(&bin_dir.join(format!("etcd-{v}")), data);
    let ctl = bin_dir.join(format!("etcdctl-{v}"));
    let run = |user: Option<&str>, prefix: &str| {
        let mut cmd = std::process::Command::new(&ctl);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{}", e.port));
        if let Some(u) = user {
            cmd.arg(format!("--user={u}"));
        }
        cmd.args(["get", prefix, "--prefix", "--keys-only", "-w", "json"])
            .output()
            .unwrap()
    };
    e.wait_until(|| run(Some("root:rootpw"), "/").status.success());
    let read = common::read_all_as(&ctl, e.port, Some("root:rootpw"));
    let kube = run(Some("kube:kubepw"), "/registry/");
    let denied = run(Some("kube:kubepw"), "/other/");
    let anonymous = run(None, "/");
    e.stop();
    assert!(
        read == *want,
        "etcd {v}: {} keys read back as root, {} written",
        read.len(),
        want.len()
    );
    let kube: Value = serde_json::from_slice(&kube.stdout).unwrap();
    let registry = want.keys().filter(|k| k.starts_with(b"/registry/")).count();
    assert_eq!(kube["count"], registry, "etcd {v}: kube reads /registry/");
    assert!(
        stderr(&denied).contains("permission denied"),
        "etcd {v}: kube must not read /other/: {}",
        stderr(&denied)
    );
    assert!(!anonymous.status.success(), "etcd {v}: auth is still on");
}

/// Data written by the oldest etcd of the chain: keys (a tenth of them leased) and, with
/// `auth`, keys outside `/registry/`, users, roles and auth enabled.
fn chain_data(
    dir: &Path,
    bin_dir: &Path,
    v: &Version,
    auth: bool,
) -> (PathBuf, BTreeMap<Vec<u8>, Vec<u8>>) {
    let data = dir.join("data");
    let etcd = Etcd::start(&bin_dir.join(format!("etcd-{v}")), &data);
    let mut want = fill(&etcd, 300);
    if auth {
        for i in 0..20 {
            let (k, val) = (format!("/other/o{i:02}"), b"not for kube".to_vec());
            let r = etcd.post(
                "/v3/kv/put",
                &format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    b64(k.as_bytes()),
                    b64(&val)
                ),
            );
            assert!(r.contains("header"), "put: {r}");
            want.insert(k.into_bytes(), val);
        }
        enable_auth(&bin_dir.join(format!("etcdctl-{v}")), etcd.port);
    }
    etcd.stop();
    std::fs::write(data.join("version.txt"), format!("{v}/etcd3")).unwrap();
    (data, want)
}

/// As a pod sees it: TARGET_VERSION moves up one minor per run from the oldest etcd to the
/// newest, then back down one minor per run. Every step keeps the MVCC history, the leases and
/// the users and roles (fingerprints equal to the original's), leaves the storage version of
/// its minor (read back with bbolt's own reader), and the step's etcd serves every key.
fn walk_the_chain(test: &str, auth: bool) {
    let Some((dir, versions)) = matrix() else {
        return;
    };
    let Some(chain) = pod_chain(test, &versions) else {
        return;
    };
    let all: Vec<&Version> = chain.iter().collect();
    let bin = bins(&dir, &all, &[], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let (data, want) = chain_data(tmp.path(), &dir, &chain[0], auth);
    let original = common::fingerprint(&data);
    assert_eq!(original["auth_enabled"], auth);
    let same = |f: &Value, what: &str| {
        for field in [
            "history_sha256",
            "hash_kv",
            "leases_sha256",
            "auth_sha256",
            "keys",
            "revision",
        ] {
            assert_eq!(f[field], original[field], "{what}: {field}");
        }
    };
    let mut runs: Vec<(Version, &str)> =
        chain[1..].iter().map(|v| (v.clone(), "upgraded")).collect();
    runs.extend(
        chain
            .iter()
            .rev()
            .skip(1)
            .map(|v| (v.clone(), "rolled-back")),
    );
    for (to, outcome) in runs {
        let what = format!("{outcome} to {to}");
        let out = migrate_json(bin.path(), &data, &to.to_string(), &[]);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["outcome"], outcome, "{what}");
        let fps = r["fingerprints"].as_array().unwrap();
        assert!(!fps.is_empty(), "{what}: no step ran");
        for f in fps {
            same(&f["after"], &what);
        }
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            format!("{to}/etcd3"),
            "{what}"
        );
        let now = common::fingerprint(&data);
        same(&now, &what);
        assert_eq!(
            storage_version(&data, &now),
            expected_storage(&to),
            "{what}: storage version"
        );
        serves_as(&dir, &to, &data, &want, auth);
    }
}

#[test]
fn the_pod_chain_up_and_down_keeps_every_key_and_lease() {
    walk_the_chain("the_pod_chain_up_and_down_keeps_every_key_and_lease", false);
}

#[test]
fn the_pod_chain_keeps_users_roles_and_permissions_with_auth_on() {
    walk_the_chain(
        "the_pod_chain_keeps_users_roles_and_permissions_with_auth_on",
        true,
    );
}

#[test]
fn a_step_onto_3_7_with_a_removed_experimental_flag_is_refused_on_real_data() {
    let t = "a_step_onto_3_7_with_a_removed_experimental_flag_is_refused_on_real_data";
    let Some((dir, versions)) = matrix() else {
        return;
    };
    let Some(chain) = pod_chain(t, &versions) else {
        return;
    };
    let (v36, v37) = (&chain[2], &chain[3]);
    let flag = "--experimental-compact-hash-check-enabled=true";
    // etcd 3.7 itself refuses the flag: the refusal follows etcd, not a guess.
    let real = tempfile::tempdir().unwrap();
    let started = std::process::Command::new(dir.join(format!("etcd-{v37}")))
        .arg("--data-dir")
        .arg(real.path().join("d"))
        .arg(flag)
        .output()
        .unwrap();
    assert!(!started.status.success(), "etcd {v37} accepted {flag}");
    let bin = bins(&dir, &[v36, v37], &[], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = written_by(tmp.path(), &dir, v36, 30);
    let before = tree_bytes(&data);
    let out = migrate_json(bin.path(), &data, &v37.to_string(), &[("ETCD_CREDS", flag)]);
    assert_untouched(
        &out,
        2,
        "--experimental-compact-hash-check-enabled",
        &data,
        &before,
        tmp.path(),
    );
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
}

#[test]
fn an_old_patch_goes_through_a_safe_one_before_the_next_minor() {
    let Some((dir, versions)) = matrix() else {
        return;
    };
    // Needs a 3.5 below 3.5.32, one at or above it, and a 3.6: only in the GitHub job.
    let old = on_minor(&versions, 5).find(|v| v.patch < 32);
    let safe = on_minor(&versions, 5).find(|v| v.patch >= 32);
    let next = on_minor(&versions, 6).next();
    let (Some(old), Some(safe), Some(next)) = (old, safe, next) else {
        common::missing_versions(
            "an_old_patch_goes_through_a_safe_one_before_the_next_minor",
            "a 3.5 below 3.5.32, one at or above it, and a 3.6",
        );
        return;
    };
    let bin = bins(&dir, &[old, safe, next], &[], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let (data, want) = written_by(tmp.path(), &dir, old, 200);
    let out = migrate_json(bin.path(), &data, &next.to_string(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        step_names(&r),
        [
            format!("patch upgrade {old} -> {safe}"),
            format!("upgrade {safe} -> {next}")
        ]
    );
    serves(&dir, next, &data, &want);
}

#[test]
fn an_old_3_5_without_a_safe_3_5_is_refused_before_anything_runs() {
    let Some((dir, versions)) = matrix() else {
        return;
    };
    let old = on_minor(&versions, 5)
        .filter(|v| v.patch < 32)
        .max()
        .expect("a 3.5 below 3.5.32 in the matrix");
    let real_36 = on_minor(&versions, 6).next().cloned();
    let target = real_36.clone().unwrap_or(Version::new(3, 6, 14));
    let fake = target.to_string();
    let bin = match &real_36 {
        Some(v) => bins(&dir, &[old, v], &[], &[]),
        None => bins(&dir, &[old], &[], &[&fake]),
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = written_by(tmp.path(), &dir, old, 50);
    let before = tree_bytes(&data);
    for dry_run in [true, false] {
        let mut cmd = common::migrate_command(bin.path(), &data, &target.to_string());
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        assert_untouched(
            &out,
            24,
            "only from 3.5.32 or later",
            &data,
            &before,
            tmp.path(),
        );
        for needle in [old.to_string(), "upgrade_3_6".into(), "hint:".into()] {
            assert!(stderr(&out).contains(&needle), "{needle}: {}", stderr(&out));
        }
    }
}

/// Writes a v2 key through etcd's v2 API (etcd started with --enable-v2): a form-encoded PUT.
fn v2_put(port: u16, key: &str, value: &str) {
    use std::io::{Read, Write};
    let body = format!("value={value}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT /v2/keys{key} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.contains("\"action\":\"set\""),
        "v2 put {key}: {answer}"
    );
}

#[test]
fn custom_v2_content_is_refused_before_3_6_and_named() {
    let Some((dir, versions)) = matrix() else {
        return;
    };
    // A 3.5 at or above the step minimum writes the data; where there is none (here), the
    // newest 3.5 at hand stands in for 3.5.33 (the check reads files, it runs no etcd).
    let newest_35 = on_minor(&versions, 5)
        .max()
        .expect("a 3.5 in the matrix")
        .clone();
    let label = if newest_35.patch >= 32 {
        newest_35.clone()
    } else {
        Version::new(3, 5, 33)
    };
    let real_36 = on_minor(&versions, 6).next().cloned();
    let target = real_36.clone().unwrap_or(Version::new(3, 6, 14));
    let fake = target.to_string();
    let alias = label.to_string();
    let bin = match (&real_36, newest_35 == label) {
        (Some(v), true) => bins(&dir, &[&newest_35, v], &[], &[]),
        (Some(v), false) => bins(&dir, &[v], &[(&newest_35, &alias)], &[]),
        (None, true) => bins(&dir, &[&newest_35], &[], &[&fake]),
        (None, false) => bins(&dir, &[], &[(&newest_35, &alias)], &[&fake]),
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A small snapshot count: some v2 keys land in a .snap file, the last ones only in the WAL.
    let etcd = Etcd::start_with(
        &dir.join(format!("etcd-{newest_35}")),
        &data,
        &["--enable-v2=true".into(), "--snapshot-count=10".into()],
    );
    fill(&etcd, 30);
    for i in 0..15 {
        v2_put(etcd.port, &format!("/legacy/k{i:02}"), "v2-value");
    }
    etcd.stop();
    std::fs::write(data.join("version.txt"), format!("{label}/etcd3")).unwrap();
    let snaps = std::fs::read_dir(data.join("member/snap"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .count();
    assert!(snaps > 0, "the data has a v2 snapshot");
    let before = tree_bytes(&data);
    let out = migrate_json(bin.path(), &data, &target.to_string(), &[]);
    assert_untouched(&out, 25, "custom v2 content", &data, &before, tmp.path());
    let err = stderr(&out);
    for needle in ["/legacy/k00", "/legacy/k14", "upgrade_3_6", "--enable-v2"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // The dry run shows the check before the step.
    let out = common::migrate_command(bin.path(), &data, &target.to_string())
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(25), "{}", stderr(&out));
    assert!(tree_bytes(&data) == before);
}

// guards: etcd 3.4's /health proposes a v2 QGET on every probe (kubelet's liveness probe);
// etcd 3.6 panics replaying one ("detected disallowed v2 WAL"), and `etcdutl check v2store`
// reports it as custom v2 content. migrate lets 3.5 snapshot past them instead of refusing.
#[test]
fn health_probes_of_3_4_in_the_wal_do_not_block_the_step_to_3_6() {
    let t = "health_probes_of_3_4_in_the_wal_do_not_block_the_step_to_3_6";
    let Some((dir, versions)) = matrix() else {
        return;
    };
    let Some(chain) = pod_chain(t, &versions) else {
        return;
    };
    let (v34, v35, v36) = (&chain[0], &chain[1], &chain[2]);
    let bin = bins(&dir, &[v34, v35, v36], &[], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let etcd = Etcd::start(&dir.join(format!("etcd-{v34}")), &data);
    let want = fill(&etcd, 40);
    for _ in 0..5 {
        let health = etcd.post_method("GET", "/health", "");
        assert!(health.contains("\"health\":\"true\""), "{health}");
    }
    etcd.stop();
    std::fs::write(data.join("version.txt"), format!("{v34}/etcd3")).unwrap();
    let out = migrate_json(bin.path(), &data, &v35.to_string(), &[]);
    assert!(out.status.success(), "to {v35}: {}", stderr(&out));
    // What etcd's own check says of the data now: a 3.6 start would panic on it.
    let check = std::process::Command::new(dir.join(format!("etcdutl-{v35}")))
        .args(["check", "v2store", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        stderr(&check).contains("custom v2 content in WAL records"),
        "etcdutl {v35} check v2store: {}{}",
        String::from_utf8_lossy(&check.stdout),
        stderr(&check)
    );
    let out = migrate_json(bin.path(), &data, &v36.to_string(), &[]);
    assert!(out.status.success(), "to {v36}: {}", stderr(&out));
    assert!(
        stderr(&out).contains("takes a snapshot"),
        "{}",
        stderr(&out)
    );
    serves(&dir, v36, &data, &want);
}
