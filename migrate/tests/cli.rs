//! The migrate binary's command-line contract: env fallbacks, the paths implemented so far,
//! distinct exit codes, and a data directory left untouched on every refusal.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

mod common;

fn bin_dir_with(versions: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for v in versions {
        for name in ["etcd", "etcdctl"] {
            fs::write(d.path().join(format!("{name}-{v}")), format!("{name} {v}")).unwrap();
        }
    }
    d
}

fn migrate(bin_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrate"));
    cmd.env_clear()
        .env("HOSTNAME", "test")
        .arg("--bin-dir")
        .arg(bin_dir)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap_or_default(),
            ));
        }
    }
    out.sort();
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn empty_or_missing_data_dir_is_initialised_from_env() {
    let bins = bin_dir_with(&["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("a/b/data");
    let out = migrate(
        bins.path(),
        &[
            ("DATA_DIRECTORY", data.to_str().unwrap()),
            ("TARGET_VERSION", "3.5.1"),
            ("TARGET_STORAGE", "etcd3"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(data.join("version.txt")).unwrap(),
        "3.5.1/etcd3"
    );
    // the default binaries were swapped for the target pair
    assert_eq!(
        fs::read_to_string(bins.path().join("etcd")).unwrap(),
        "etcd 3.5.1"
    );
    assert_eq!(
        fs::read_to_string(bins.path().join("etcdctl")).unwrap(),
        "etcdctl 3.5.1"
    );
}

#[test]
fn same_version_does_nothing() {
    let bins = bin_dir_with(&["3.5.1"]);
    let data = tempfile::tempdir().unwrap();
    fs::write(data.path().join("version.txt"), "3.5.1/etcd3").unwrap();
    fs::create_dir(data.path().join("member")).unwrap();
    let before = fs::metadata(data.path().join("version.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let out = migrate(
        bins.path(),
        &[("DO_NOT_MOVE_BINARIES", "true")],
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--target-version",
            "3.5.1",
            "--target-storage",
            "etcd3",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"outcome\":\"up-to-date\""), "{json}");
    assert_eq!(
        fs::metadata(data.path().join("version.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    assert!(
        !bins.path().join("etcd").exists(),
        "DO_NOT_MOVE_BINARIES=true keeps the defaults"
    );
}

#[test]
fn patch_change_only_rewrites_version_txt() {
    let bins = bin_dir_with(&["3.5.0", "3.5.1"]);
    let data = tempfile::tempdir().unwrap();
    fs::write(data.path().join("version.txt"), "3.5.0/etcd3").unwrap();
    let out = migrate(
        bins.path(),
        &[],
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--target-version",
            "3.5.1",
            "--target-storage",
            "etcd3",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(data.path().join("version.txt")).unwrap(),
        "3.5.1/etcd3"
    );
}

#[test]
fn refusals_have_distinct_codes_and_touch_nothing() {
    let bins = bin_dir_with(&["3.4.23", "3.5.1"]);
    type Case<'a> = (&'a str, Option<&'a str>, &'a [&'a str], i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed version.txt",
            Some("3.5/etcd3"),
            &["--target-version", "3.5.1", "--target-storage", "etcd3"],
            10,
            "failed to parse etcd",
        ),
        (
            "no version.txt in a non-empty dir",
            None,
            &["--target-version", "3.5.1", "--target-storage", "etcd3"],
            11,
            "missing version.txt",
        ),
        (
            "target not bundled",
            Some("3.4.23/etcd3"),
            &["--target-version", "3.6.0", "--target-storage", "etcd3"],
            12,
            "not bundled",
        ),
        (
            "unknown storage",
            Some("3.4.23/etcd3"),
            &["--target-version", "3.5.1", "--target-storage", "etcd4"],
            14,
            "unrecognized storage",
        ),
        (
            "bad target version",
            Some("3.4.23/etcd3"),
            &["--target-version", "3.5", "--target-storage", "etcd3"],
            2,
            "--target-version",
        ),
    ];
    for (name, version_txt, args, code, message) in cases {
        let data = tempfile::tempdir().unwrap();
        fs::write(data.path().join("keep.db"), b"user data").unwrap();
        if let Some(v) = version_txt {
            fs::write(data.path().join("version.txt"), v).unwrap();
        }
        let before = snapshot(data.path());
        let mut all = vec!["--data-dir", data.path().to_str().unwrap()];
        all.extend_from_slice(args);
        let out = migrate(bins.path(), &[("DO_NOT_MOVE_BINARIES", "true")], &all);
        assert_eq!(out.status.code(), Some(code), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
        assert_eq!(
            snapshot(data.path()),
            before,
            "{name}: the data dir must be untouched"
        );
    }
}

#[test]
fn missing_required_settings_are_usage_errors() {
    let bins = bin_dir_with(&["3.5.1"]);
    let out = migrate(
        bins.path(),
        &[],
        &["--target-version", "3.5.1", "--target-storage", "etcd3"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--data-dir is required (or set DATA_DIRECTORY)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dry_run_changes_nothing() {
    let bins = bin_dir_with(&["3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = migrate(
        bins.path(),
        &[],
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--target-version",
            "3.5.1",
            "--target-storage",
            "etcd3",
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("write version.txt = 3.5.1/etcd3"));
    assert!(!data.exists());
    assert!(!bins.path().join("etcd").exists());
}

#[test]
fn wrapper_script_keeps_the_env_contract() {
    let bins = bin_dir_with(&["3.4.23", "3.5.1"]);
    fs::copy(env!("CARGO_BIN_EXE_migrate"), bins.path().join("migrate")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrate-if-needed.sh");
    fs::copy(&script, bins.path().join("migrate-if-needed.sh")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data-events");
    let out = Command::new("sh")
        .arg(bins.path().join("migrate-if-needed.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOSTNAME", "node")
        .env("TARGET_VERSION", "3.4.23")
        .env("TARGET_STORAGE", "etcd3")
        .env("DATA_DIRECTORY", &data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        log.contains("defaulting to etcd-node=http://localhost:2381"),
        "event dirs use peer port 2381: {log}"
    );
    assert_eq!(
        fs::read_to_string(data.join("version.txt")).unwrap(),
        "3.4.23/etcd3"
    );
    assert_eq!(
        fs::read_to_string(bins.path().join("etcd")).unwrap(),
        "etcd 3.4.23"
    );

    let out = Command::new("sh")
        .arg(bins.path().join("migrate-if-needed.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DATA_DIRECTORY variable unset"));
}

#[test]
fn plan_refusals_and_dry_run_plans() {
    type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            "downgrade of two minors",
            &["3.3.17", "3.4.23", "3.5.1"],
            "3.5.1/etcd3",
            "3.3.17",
            13,
            "previous minor of 3.x only",
        ),
        (
            "a minor missing between data and target",
            &["3.3.17", "3.5.1"],
            "3.3.17/etcd3",
            "3.5.1",
            12,
            "needs a bundled etcd 3.4.x",
        ),
        (
            "etcd2 data newer than every bundled converter (3.0-3.4)",
            &["3.3.17", "3.5.1"],
            "3.4.23/etcd2",
            "3.5.1",
            18,
            "etcdctl has `migrate`",
        ),
    ];
    for (name, bundled, version_txt, target, code, message) in cases {
        let bins = bin_dir_with(bundled);
        let data = tempfile::tempdir().unwrap();
        fs::write(data.path().join("keep.db"), b"user data").unwrap();
        fs::write(data.path().join("version.txt"), version_txt).unwrap();
        let before = snapshot(data.path());
        let out = migrate(
            bins.path(),
            &[("DO_NOT_MOVE_BINARIES", "true")],
            &[
                "--data-dir",
                data.path().to_str().unwrap(),
                "--target-version",
                target,
                "--target-storage",
                "etcd3",
            ],
        );
        assert_eq!(out.status.code(), Some(code), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("hint:") || code == 3,
            "{name}: {}",
            stderr(&out)
        );
        assert_eq!(snapshot(data.path()), before, "{name}: untouched");
    }

    // A step whose binary is missing: refused before anything runs.
    let bins = bin_dir_with(&["3.4.23", "3.5.1"]);
    fs::remove_file(bins.path().join("etcdctl-3.5.1")).unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::write(data.path().join("version.txt"), "3.4.23/etcd3").unwrap();
    let before = snapshot(data.path());
    let args = [
        "--data-dir",
        data.path().to_str().unwrap(),
        "--target-version",
        "3.5.1",
        "--target-storage",
        "etcd3",
    ];
    let out = migrate(bins.path(), &[("DO_NOT_MOVE_BINARIES", "true")], &args);
    assert_eq!(out.status.code(), Some(16), "{}", stderr(&out));
    assert!(stderr(&out).contains("etcdctl-3.5.1"), "{}", stderr(&out));
    assert_eq!(snapshot(data.path()), before);

    // The dry-run plan of an upgrade through every minor.
    let bins = bin_dir_with(&["3.3.17", "3.4.23", "3.5.1"]);
    let data = tempfile::tempdir().unwrap();
    fs::write(data.path().join("version.txt"), "3.3.17/etcd3").unwrap();
    let before = snapshot(data.path());
    let mut dry = args.to_vec();
    dry[1] = data.path().to_str().unwrap();
    dry.push("--dry-run");
    let out = migrate(bins.path(), &[], &dry);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1. upgrade 3.3.17 -> 3.4.23"), "{text}");
    assert!(text.contains("2. upgrade 3.4.23 -> 3.5.1"), "{text}");
    assert_eq!(snapshot(data.path()), before);
    assert!(!bins.path().join("etcd").exists());
}

#[test]
fn a_data_dir_held_by_a_live_etcd_is_refused() {
    let etcd = Path::new("/usr/bin/etcd");
    if !etcd.is_file() {
        if std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() == Ok("all") {
            panic!("/usr/bin/etcd missing (Debian etcd-server); run scripts/install-deps.sh");
        }
        eprintln!("skipping: /usr/bin/etcd missing");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("etcd");
    let mut live = common::Etcd::start(etcd, &dir);
    fs::write(dir.join("version.txt"), "3.4.23/etcd3").unwrap();
    let bins = bin_dir_with(&["3.4.23", "3.5.1"]);
    let args = [
        "--data-dir",
        dir.to_str().unwrap(),
        "--target-version",
        "3.5.1",
        "--target-storage",
        "etcd3",
    ];
    let out = migrate(bins.path(), &[("DO_NOT_MOVE_BINARIES", "true")], &args);
    let _ = live.child.kill();
    let _ = live.child.wait();
    assert_eq!(out.status.code(), Some(15), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in use by a running etcd"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(dir.join("version.txt")).unwrap(),
        "3.4.23/etcd3"
    );
    // With etcd gone the same run gets past the lock check.
    let out = migrate(bins.path(), &[("DO_NOT_MOVE_BINARIES", "true")], &args);
    assert_ne!(out.status.code(), Some(15), "{}", stderr(&out));
}

// guards: a failed or refused migration left the target etcd as the default, and a manifest
// without `set -o errexit` then started it on data of the old version.
#[test]
fn the_default_etcd_follows_the_data_not_the_target() {
    let bins = bin_dir_with(&["3.4.23", "3.5.1"]);
    let default_etcd = bins.path().join("etcd");
    let reset = || {
        let _ = fs::remove_file(&default_etcd);
        fs::hard_link(bins.path().join("etcd-3.5.1"), &default_etcd).unwrap();
    };
    // (version.txt, target, exit code, the default etcd afterwards)
    let cases: [(&str, &str, i32, &str); 4] = [
        ("3.4.23/etcd3", "3.6.0", 12, "etcd 3.4.23"),
        // The step cannot run (these "binaries" are text), so the data stays at 3.4.23.
        ("3.4.23/etcd3", "3.5.1", 1, "etcd 3.4.23"),
        // Not bundled itself: the newest bundled patch of its minor.
        ("3.4.20/etcd3", "3.6.0", 12, "etcd 3.4.23"),
        ("3.5.1/etcd3", "3.5.1", 0, "etcd 3.5.1"),
    ];
    for (version_txt, target, code, want) in cases {
        reset();
        let data = tempfile::tempdir().unwrap();
        fs::write(data.path().join("keep.db"), b"user data").unwrap();
        fs::write(data.path().join("version.txt"), version_txt).unwrap();
        let before = snapshot(data.path());
        let out = migrate(
            bins.path(),
            &[],
            &[
                "--data-dir",
                data.path().to_str().unwrap(),
                "--target-version",
                target,
                "--target-storage",
                "etcd3",
            ],
        );
        let ctx = format!("{version_txt} -> {target}");
        assert_eq!(out.status.code(), Some(code), "{ctx}: {}", stderr(&out));
        assert_eq!(fs::read_to_string(&default_etcd).unwrap(), want, "{ctx}");
        assert_eq!(
            fs::read_to_string(bins.path().join("etcdctl")).unwrap(),
            want.replace("etcd ", "etcdctl "),
            "{ctx}"
        );
        assert_eq!(
            fs::read_to_string(bins.path().join("etcd-3.5.1")).unwrap(),
            "etcd 3.5.1",
            "{ctx}: etcd-<V> is never written through"
        );
        if code != 0 {
            assert_eq!(snapshot(data.path()), before, "{ctx}: data untouched");
        }
    }
    // An empty data dir is initialised at the target, and the default follows it.
    reset();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("new");
    let out = migrate(
        bins.path(),
        &[],
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "--target-version",
            "3.4.23",
            "--target-storage",
            "etcd3",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(&default_etcd).unwrap(), "etcd 3.4.23");
}

#[test]
fn a_name_missing_from_the_initial_cluster_is_refused_before_anything_runs() {
    let bins = bin_dir_with(&["3.4.23", "3.5.1"]);
    let data = tempfile::tempdir().unwrap();
    fs::write(data.path().join("keep.db"), b"user data").unwrap();
    fs::write(data.path().join("version.txt"), "3.5.1/etcd3").unwrap();
    let before = snapshot(data.path());
    let dir = data.path().to_str().unwrap();
    let args = [
        "--data-dir",
        dir,
        "--target-version",
        "3.4.23",
        "--target-storage",
        "etcd3",
    ];
    let env = [
        ("HOSTNAME", "node-1"),
        ("INITIAL_CLUSTER", "etcd-node-0=http://localhost:2380"),
        ("DO_NOT_MOVE_BINARIES", "true"),
    ];
    let out = migrate(bins.path(), &env, &args);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "`etcd-node-1` (from etcd-$HOSTNAME)",
        "`etcd-node-0=http://localhost:2380` (from INITIAL_CLUSTER)",
        "hint:",
    ] {
        assert!(err.contains(needle), "expected {needle:?}: {err}");
    }
    assert!(!err.contains("reading the keyspace"), "{err}");
    assert_eq!(snapshot(data.path()), before);
    // The name from MIGRATE_ETCD_NAME, which etcd itself does not read, matches: now the
    // (text) binaries fail to run, but the configuration passed.
    let env = [
        ("MIGRATE_ETCD_NAME", "etcd-node-0"),
        ("HOSTNAME", "node-1"),
        ("INITIAL_CLUSTER", "etcd-node-0=http://localhost:2380"),
        ("DO_NOT_MOVE_BINARIES", "true"),
    ];
    let out = migrate(bins.path(), &env, &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("initial cluster"),
        "{}",
        stderr(&out)
    );
    // Clashing ports are refused the same way.
    let env = [
        ("HOSTNAME", "node-0"),
        ("DO_NOT_MOVE_BINARIES", "true"),
        ("LISTEN_CLIENT_URLS", "http://127.0.0.1:2380"),
    ];
    let out = migrate(bins.path(), &env, &args);
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("port 2380 is both"),
        "{}",
        stderr(&out)
    );
}

// guards: the data-dir lock was dropped before the default binaries were switched, so a
// second migrate could change the data while the first was still choosing its binaries.
#[test]
fn the_data_dir_stays_locked_until_the_default_binaries_are_switched() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let bins = bin_dir_with(&["3.5.0", "3.5.1"]);
    let data = tempfile::tempdir().unwrap();
    fs::write(data.path().join("version.txt"), "3.5.0/etcd3").unwrap();
    let args = |target: &str| -> Vec<String> {
        [
            "--data-dir",
            data.path().to_str().unwrap(),
            "--target-version",
            target,
            "--target-storage",
            "etcd3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut first = Command::new(env!("CARGO_BIN_EXE_migrate"))
        .env_clear()
        .env("HOSTNAME", "test")
        .env("ETCDIMG_MIGRATE_FAILPOINT", "stall:binaries-before-replace")
        .arg("--bin-dir")
        .arg(bins.path())
        .args(args("3.5.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("migrate ended before the failpoint: {seen:?}"))
            .unwrap();
        let stalled = line.contains("failpoint `binaries-before-replace`");
        seen.push(line);
        if stalled {
            break;
        }
    }
    // The data is migrated and the binaries not yet switched: the lock is still held.
    assert_eq!(
        fs::read_to_string(data.path().join("version.txt")).unwrap(),
        "3.5.1/etcd3"
    );
    assert!(!bins.path().join("etcd").exists());
    let second = migrate(
        bins.path(),
        &[("MIGRATE_LOCK_WAIT", "0")],
        &args("3.5.0").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(second.status.code(), Some(22), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another migrate (pid "),
        "{}",
        stderr(&second)
    );
    drop(first.stdin.take());
    let status = first.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "{seen:?} {rest:?}");
    assert_eq!(
        fs::read_to_string(bins.path().join("etcd")).unwrap(),
        "etcd 3.5.1"
    );
    assert_eq!(
        fs::read_to_string(data.path().join("version.txt")).unwrap(),
        "3.5.1/etcd3",
        "the refused run changed nothing"
    );
}
