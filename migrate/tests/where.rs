//! migrate where it really runs (issue "migrate where it really runs"): a data dir that is a
//! mount point (and a member/ that is one, refused), restarts of a container that gives migrate
//! pid 1 every time, data owned by another user, a read-only data dir for the read-only
//! commands, and a bug's exit code. These need root (mounts, namespaces, chown).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{bin_dir, fixtures_bin, migrate_command, stderr, tree_bytes, Etcd};
use serde_json::Value;

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Root, or skip (fail under ETCDIMG_TEST_REQUIRE=all).
fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() != Ok("all"),
        "{test} needs root (mounts, namespaces, chown)"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// What every test here starts from: the fixtures, a bin dir with 3.4.23 and 3.5.1, a temp dir.
struct Case {
    fx: PathBuf,
    bins: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl Case {
    /// None (a skip) without fixtures, or without root when the test needs it.
    fn new(test: &str, needs_root: bool) -> Option<Case> {
        let fx = fixtures_bin()?;
        if needs_root && !root(test) {
            return None;
        }
        let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
        Some(Case {
            fx,
            bins,
            tmp: tempfile::tempdir().unwrap(),
        })
    }
}

/// A data dir written by etcd 3.4.23 (`n` keys), labelled 3.4.23/etcd3.
fn written(fx: &Path, dir: &Path, n: usize) -> PathBuf {
    let data = dir.join("data");
    let etcd = Etcd::start(&fx.join("etcd-3.4.23"), &data);
    for i in 0..n {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(&format!("/registry/k{i:04}")),
            b64(&format!("value {i}"))
        );
        assert!(etcd.post("/v3/kv/put", &body).contains("header"));
    }
    etcd.stop();
    std::fs::write(data.join("version.txt"), "3.4.23/etcd3").unwrap();
    data
}

/// What a script run in a mount namespace left: its exit and the files it wrote to `$OUT`.
struct Scripted {
    run: Output,
    out: PathBuf,
}

impl Scripted {
    /// A file the script wrote to `$OUT` ("" when it wrote none).
    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.out.join(file)).unwrap_or_default()
    }
}

/// A shell script run in a mount namespace of its own (`unshare --mount`), so that its mounts
/// vanish with it; `$MIGRATE`, `$BINS`, `$DATA` and `$OUT` (a new directory in `tmp`) are set.
fn in_mount_namespace(script: &str, bins: &Path, data: &Path, tmp: &Path) -> Scripted {
    let out = tmp.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let run = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-euc", script])
        .env("MIGRATE", env!("CARGO_BIN_EXE_migrate"))
        .env("BINS", bins)
        .env("DATA", data)
        .env("OUT", &out)
        .env("HOSTNAME", "default")
        .output()
        .unwrap();
    Scripted { run, out }
}

/// migrate's command line for the scripts: `$MIGRATE ... --target-version "$1"`.
const MIGRATE: &str = r#"migrate() { DO_NOT_MOVE_BINARIES=true "$MIGRATE" --name default --bin-dir "$BINS" --data-dir "$DATA" --target-storage etcd3 --json --target-version "$@"; }"#;

// guards: with the working copy, journal and lock beside the data dir, a data dir that is a
// mount point failed every time (rename across filesystems: EBUSY/EXDEV), left its sidecars in
// the parent and crash-looped.
#[test]
fn a_data_dir_that_is_a_mount_point_upgrades_and_rolls_back_in_place() {
    let t = "a_data_dir_that_is_a_mount_point_upgrades_and_rolls_back_in_place";
    let Some(Case { fx, bins, tmp }) = Case::new(t, true) else {
        return;
    };
    let pristine = written(&fx, tmp.path(), 200);
    let original = common::fingerprint(&pristine);
    let mount = tmp.path().join("mnt");
    let parent = mount.join("parent");
    let data = parent.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The parent is made read-only: nothing may be written beside the data dir.
    let script = format!(
        r#"{MIGRATE}
mount -t tmpfs -o size=512m tmpfs "$DATA"
cp -a {pristine}/. "$DATA/"
chmod 0555 "$(dirname "$DATA")"
migrate 3.5.1 > "$OUT/up.json" 2> "$OUT/up.err"
"$MIGRATE" --fingerprint --data-dir "$DATA" > "$OUT/up.fp"
migrate 3.4.23 > "$OUT/down.json" 2> "$OUT/down.err"
"$MIGRATE" --fingerprint --data-dir "$DATA" > "$OUT/down.fp"
cat "$DATA/version.txt" > "$OUT/version"
ls -A "$DATA" > "$OUT/inside"
ls -A "$(dirname "$DATA")" > "$OUT/beside"
umount "$DATA"
"#,
        pristine = pristine.display()
    );
    let sc = in_mount_namespace(&script, bins.path(), &data, tmp.path());
    let read = |f: &str| sc.read(f);
    assert!(
        sc.run.status.success(),
        "{}\nup: {}\ndown: {}",
        stderr(&sc.run),
        read("up.err"),
        read("down.err")
    );
    for (run, fp) in [("up", "up.fp"), ("down", "down.fp")] {
        let fp: Value = serde_json::from_str(&read(fp)).unwrap();
        for field in ["history_sha256", "hash_kv", "keys", "revision"] {
            assert_eq!(fp[field], original[field], "{run}: {field}");
        }
    }
    let up: Value = serde_json::from_str(&read("up.json")).unwrap();
    assert_eq!(up["outcome"], "upgraded");
    assert_eq!(read("version").trim(), "3.4.23/etcd3");
    // Nothing but etcd's files and version.txt inside, nothing beside.
    assert_eq!(
        read("inside").split_whitespace().collect::<Vec<_>>(),
        ["member", "version.txt"]
    );
    assert_eq!(
        read("beside").split_whitespace().collect::<Vec<_>>(),
        ["data"]
    );
}

#[test]
fn a_member_dir_on_another_filesystem_is_refused_before_anything_runs() {
    let t = "a_member_dir_on_another_filesystem_is_refused_before_anything_runs";
    let Some(Case { fx, bins, tmp }) = Case::new(t, true) else {
        return;
    };
    let data = written(&fx, tmp.path(), 20);
    let before = tree_bytes(&data);
    let script = format!(
        r#"{MIGRATE}
cp -a "$DATA/member" "$OUT/member-copy"
mount -t tmpfs tmpfs "$DATA/member"
cp -a "$OUT/member-copy/." "$DATA/member/"
set +e
migrate 3.5.1 > "$OUT/json" 2> "$OUT/err"
echo $? > "$OUT/code"
umount "$DATA/member"
"#
    );
    let sc = in_mount_namespace(&script, bins.path(), &data, tmp.path());
    assert!(sc.run.status.success(), "{}", stderr(&sc.run));
    let read = |f: &str| sc.read(f);
    assert_eq!(read("code").trim(), "26", "{}", read("err"));
    assert!(
        read("err").contains("on another filesystem"),
        "{}",
        read("err")
    );
    assert!(tree_bytes(&data) == before, "the data dir changed");
}

/// Runs migrate to `target` as pid 1 of a new pid namespace (as a container runs it), killed
/// with SIGKILL after `kill_after` (None: to the end); the exit code, or None when killed.
fn as_pid_1(bins: &Path, data: &Path, target: &str, kill_after: Option<Duration>) -> Option<i32> {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_migrate"))
        .args(["--name", "default", "--bin-dir"])
        .arg(bins)
        .arg("--data-dir")
        .arg(data)
        .args(["--target-version", target, "--target-storage", "etcd3"])
        .env("DO_NOT_MOVE_BINARIES", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    if let Some(after) = kill_after {
        std::thread::sleep(after);
        // unshare --kill-child: its death takes the namespace's pid 1 (and so every etcd in it).
        let _ = child.kill();
        let status = child.wait().unwrap();
        return status.code();
    }
    child.wait().unwrap().code()
}

// guards: a temp file named after the pid (`.version.txt.tmp.1`) that a killed run left made
// every restart fail with "File exists": in a container migrate is pid 1 every time.
#[test]
fn restarts_as_pid_1_killed_at_any_moment_converge_with_the_keyspace_unchanged() {
    let t = "restarts_as_pid_1_killed_at_any_moment_converge_with_the_keyspace_unchanged";
    let Some(Case { fx, bins, tmp }) = Case::new(t, true) else {
        return;
    };
    let pristine = written(&fx, tmp.path(), 300);
    let original = common::fingerprint(&pristine);
    // How long a whole upgrade takes here, so that the kills spread over it.
    let calibrate = tmp.path().join("calibrate");
    common::copy_dir(&pristine, &calibrate);
    let started = std::time::Instant::now();
    assert_eq!(as_pid_1(bins.path(), &calibrate, "3.5.1", None), Some(0));
    let span = started.elapsed().as_millis().max(100) as u64;
    for seed in 0u64..12 {
        let case = tmp.path().join(format!("seed-{seed}"));
        std::fs::create_dir(&case).unwrap();
        let data = case.join("data");
        common::copy_dir(&pristine, &data);
        if seed == 0 {
            // What a run killed between create and rename left, named after pid 1.
            std::fs::write(data.join(".version.txt.tmp.1"), "3.5.").unwrap();
        }
        let delay = Duration::from_millis((seed * 7919 + 97) % span);
        as_pid_1(bins.path(), &data, "3.5.1", Some(delay));
        // Restarted the same way until it converges (a restart may be killed too).
        let mut code = None;
        for attempt in 0..3 {
            let kill = (attempt == 0 && seed % 3 == 1)
                .then(|| Duration::from_millis(delay.as_millis() as u64 / 2 + 10));
            code = as_pid_1(bins.path(), &data, "3.5.1", kill);
            if code == Some(0) {
                break;
            }
        }
        assert_eq!(code, Some(0), "seed {seed}: never converged");
        assert_eq!(
            std::fs::read_to_string(data.join("version.txt")).unwrap(),
            "3.5.1/etcd3"
        );
        let now = common::fingerprint(&data);
        for field in ["history_sha256", "hash_kv", "keys"] {
            assert_eq!(now[field], original[field], "seed {seed}: {field}");
        }
        let inside: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut inside = inside;
        inside.sort();
        assert_eq!(inside, ["member", "version.txt"], "seed {seed}");
        assert_eq!(
            common::leftovers(&case),
            Vec::<String>::new(),
            "seed {seed}"
        );
    }
}

/// Owner, group and mode of every file and directory under `dir`, by relative path.
fn owners(dir: &Path) -> BTreeMap<String, (u32, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.insert(rel, (m.uid(), m.gid(), m.permissions().mode() & 0o7777));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn data_owned_by_another_user_keeps_its_owner_group_and_modes() {
    let t = "data_owned_by_another_user_keeps_its_owner_group_and_modes";
    let Some(Case { fx, bins, tmp }) = Case::new(t, true) else {
        return;
    };
    let data = written(&fx, tmp.path(), 50);
    let chown = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(chown.success());
    let before = owners(&data);
    for target in ["3.5.1", "3.4.23"] {
        let out = common::migrate_json(bins.path(), &data, target, &[]);
        assert!(out.status.success(), "to {target}: {}", stderr(&out));
        let after = owners(&data);
        for (rel, (uid, gid, mode)) in &after {
            assert_eq!(
                (*uid, *gid),
                (1000, 1000),
                "to {target}: {rel} is not the data's owner's"
            );
            // A file that was there keeps its mode; new ones (WAL segments, snap files) have
            // the mode etcd gives them.
            if let Some((_, _, was)) = before.get(rel) {
                assert_eq!(mode, was, "to {target}: {rel} changed its mode");
            }
        }
    }
}

// --dry-run and --fingerprint write nothing: not a file, a directory or a lock.
#[test]
fn the_read_only_commands_work_on_a_read_only_data_dir() {
    let t = "the_read_only_commands_work_on_a_read_only_data_dir";
    let Some(Case { fx, bins, tmp }) = Case::new(t, true) else {
        return;
    };
    let data = written(&fx, tmp.path(), 20);
    let before = tree_bytes(&data);
    let script = format!(
        r#"{MIGRATE}
mount --bind -o ro "$DATA" "$DATA"
mount -o remount,bind,ro "$DATA"
if touch "$DATA/probe" 2>/dev/null; then echo writable > "$OUT/writable"; fi
migrate 3.5.1 --dry-run > "$OUT/plan.json" 2> "$OUT/plan.err"
"$MIGRATE" --fingerprint --data-dir "$DATA" > "$OUT/fp.json" 2> "$OUT/fp.err"
umount "$DATA"
"#
    );
    let sc = in_mount_namespace(&script, bins.path(), &data, tmp.path());
    let read = |f: &str| sc.read(f);
    assert!(
        sc.run.status.success(),
        "{}\nplan: {}\nfingerprint: {}",
        stderr(&sc.run),
        read("plan.err"),
        read("fp.err")
    );
    assert!(
        !sc.out.join("writable").exists(),
        "the bind mount was writable"
    );
    let plan: Value = serde_json::from_str(&read("plan.json")).unwrap();
    assert_eq!(plan["outcome"], "planned");
    let fp: Value = serde_json::from_str(&read("fp.json")).unwrap();
    assert_eq!(fp["keys"], 20);
    assert!(
        tree_bytes(&data) == before,
        "a read-only command changed the data dir"
    );
    assert!(!data.join(".migrate").exists());
}

#[test]
fn a_bug_exits_70_with_a_message_and_a_rerun_converges() {
    let t = "a_bug_exits_70_with_a_message_and_a_rerun_converges";
    let Some(Case { fx, bins, tmp }) = Case::new(t, false) else {
        return;
    };
    let data = written(&fx, tmp.path(), 20);
    let out = migrate_command(bins.path(), &data, "3.5.1")
        .env("ETCDIMG_MIGRATE_FAILPOINT", "panic:upgrade-staged")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "migrate hit a bug",
        "failpoint `upgrade-staged`",
        "hint: ",
        "run migrate again",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let out = common::migrate_json(bins.path(), &data, "3.5.1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}
