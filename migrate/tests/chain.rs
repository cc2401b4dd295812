//! The version matrix: the upgrade chain from the oldest to the newest version under test, the
//! rollbacks one minor at a time back down, and the refusals etcd's own rules call for before
//! 3.6 (an old 3.5, custom v2 content). The versions come from the environment
//! (`ETCDIMG_TEST_ETCD_VERSIONS`, `ETCDIMG_TEST_ETCD_BIN_DIR`): the GitHub job runs these tests on
//! the official 3.4.45, 3.5.21, 3.5.33, 3.6.14 and 3.7.1 releases; here they run on the fixtures'
//! 3.4.23, 3.5.0 and 3.5.1. Refusals are decided before any etcd runs, so where no real 3.6 is at
//! hand they are checked against a stand-in file that is never executed.

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

#[test]
fn the_upgrade_chain_and_the_rollbacks_keep_every_key() {
    let Some((dir, versions)) = matrix() else {
        return;
    };
    let newest = newest_per_minor(&versions);
    let oldest = versions[0].clone();
    let latest = versions.last().unwrap().clone();
    let all: Vec<&Version> = versions.iter().collect();
    let bin = bins(&dir, &all, &[], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let (data, want) = written_by(tmp.path(), &dir, &oldest, 300);

    // Up: oldest -> newest in one run, one minor at a time (plus any patch step etcd requires).
    let out = migrate_json(bin.path(), &data, &latest.to_string(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let minors_crossed = (latest.minor - oldest.minor) as usize;
    let fps = r["fingerprints"].as_array().unwrap();
    assert!(fps.len() >= minors_crossed, "{:?}", step_names(&r));
    let first = &fps[0]["before"]["history_sha256"];
    for f in fps {
        assert_eq!(&f["after"]["history_sha256"], first, "{}", f["step"]);
        assert_eq!(f["after"]["keys"], 300, "{}", f["step"]);
    }
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        format!("{latest}/etcd3")
    );
    serves(&dir, &latest, &data, &want);

    // Down: one minor at a time to the oldest minor's newest patch.
    for to in newest.iter().rev().skip(1) {
        let out = migrate_json(bin.path(), &data, &to.to_string(), &[]);
        assert!(out.status.success(), "to {to}: {}", stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["outcome"], "rolled-back", "to {to}");
        let f = &r["fingerprints"][0];
        assert_eq!(&f["after"]["history_sha256"], first, "to {to}");
        assert_eq!(f["after"]["keys"], 300, "to {to}");
        assert!(
            f["after"]["storage_version"].is_null()
                || f["after"]["storage_version"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("{}.{}.", to.major, to.minor))),
            "to {to}: storage version {}",
            f["after"]["storage_version"]
        );
        serves(&dir, to, &data, &want);
    }
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
        eprintln!("skipping the patch-upgrade run: it needs 3.5.<32, 3.5.32+ and 3.6 (the GitHub job has them)");
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
