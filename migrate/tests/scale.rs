//! migrate at a size where holding the keyspace would show: hundreds of MB of values written by
//! real etcd 3.4.23, upgraded to 3.5.1 and rolled back, with migrate's own peak memory bounded;
//! and full disks, on a small tmpfs mounted by the test (root only).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use common::{assert_untouched, bin_dir, copy_dir, fixtures_bin, stderr, tree_bytes, Etcd};
use serde_json::Value;

mod common;

/// migrate's peak RSS must stay under this whatever the data size (it is ~10 MB).
const RSS_BOUND_KIB: u64 = 200 * 1024;

/// `n` values of `size` bytes each (pseudo-random, so nothing about them is small), written by
/// etcd 3.4.23 into `dir`, which is then stopped cleanly and labelled 3.4.23/etcd3.
fn write_large(fx: &Path, dir: &Path, n: usize, size: usize) {
    let etcd = Etcd::start_with(
        &fx.join("etcd-3.4.23"),
        dir,
        &["--quota-backend-bytes=8589934592".into()],
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        let mut value = Vec::with_capacity(size);
        while value.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            value.extend_from_slice(&x.to_le_bytes());
        }
        value.truncate(size);
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(format!("/registry/configmaps/big-{i:04}").as_bytes()),
            b64(&value)
        );
        let r = etcd.post("/v3/kv/put", &body);
        assert!(r.contains("header"), "put {i}: {}", &r[..r.len().min(300)]);
    }
    etcd.stop();
    std::fs::write(dir.join("version.txt"), "3.4.23/etcd3").unwrap();
}

/// Runs migrate while sampling its VmHWM from /proc (an independent reading of its peak RSS);
/// returns the output and the highest sample in KiB.
fn migrate_sampled(bins: &Path, data: &Path, target: &str) -> (Output, u64) {
    let child = common::migrate_command(bins, data, target)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = PathBuf::from(format!("/proc/{}/status", child.id()));
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        while let Ok(text) = std::fs::read_to_string(&status) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            match hwm {
                Some(v) => peak = peak.max(v),
                None => break, // a zombie has no memory map
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let out = child.wait_with_output().unwrap();
    (out, sampler.join().unwrap())
}

#[test]
fn migrate_memory_stays_bounded_on_hundreds_of_mb_of_keyspace() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_large(&fx, &data, 320, 1 << 20);
    for (target, outcome) in [("3.5.1", "upgraded"), ("3.4.23", "rolled-back")] {
        let (out, sampled) = migrate_sampled(bins.path(), &data, target);
        assert!(out.status.success(), "to {target}: {}", stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["outcome"], outcome);
        let fp = &r["fingerprints"][0];
        assert_eq!(fp["before"], fp["after"], "to {target}");
        assert_eq!(fp["after"]["keys"], 320);
        let bytes = fp["after"]["bytes"].as_u64().unwrap();
        assert!(
            bytes > 320 << 20,
            "to {target}: only {bytes} bytes of keyspace"
        );
        let peak = r["peak_rss_kib"]["migrate"].as_u64().unwrap();
        assert!(
            peak < RSS_BOUND_KIB && sampled < RSS_BOUND_KIB,
            "to {target}: migrate's peak RSS {peak} KiB (sampled {sampled} KiB) for {} MB of keyspace",
            bytes >> 20
        );
        assert!(sampled > 0, "the sampler saw migrate run");
    }
}

/// A tmpfs of `mib` MiB mounted at a temp dir, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (the test is skipped) unless we are root; with ETCDIMG_TEST_REQUIRE=all, a failure.
    fn mount(mib: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            if std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() == Ok("all") {
                panic!("the disk-full tests mount a tmpfs and need root");
            }
            eprintln!("skipping: the disk-full tests mount a tmpfs and need root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn used_mib(dir: &Path) -> u64 {
    let out = Command::new("du").arg("-sm").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_short_disk_is_refused_up_front_and_a_disk_filled_midway_leaves_the_data_as_it_was() {
    let Some(fx) = fixtures_bin() else { return };
    let bins = bin_dir(&fx, &["3.4.23", "3.5.1"]);
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    write_large(&fx, &pristine, 24, 1 << 20);
    let size = used_mib(&pristine);

    // Too small for a working copy: refused before anything is written, with the figures.
    {
        let Some(fs) = Tmpfs::mount(size + 40) else {
            return;
        };
        let data = fs.path().join("data");
        copy_dir(&pristine, &data);
        let before = tree_bytes(&data);
        let out = common::migrate_json(bins.path(), &data, "3.5.1", &[]);
        assert_untouched(&out, 21, "not enough free space", &data, &before, fs.path());
        assert!(
            stderr(&out).contains("bytes are available") || stderr(&out).contains("are available"),
            "{}",
            stderr(&out)
        );
    }

    // Room enough when checked, then another writer fills the disk: while the copy is staged,
    // and while the new etcd runs on it. Each time the step is undone and the data is as it
    // was; once the space is back the step runs.
    let Some(fs) = Tmpfs::mount(size + 400) else {
        return;
    };
    let data = fs.path().join("data");
    copy_dir(&pristine, &data);
    // The work area is in the data dir, on the data's filesystem: that is where it fills up.
    let filler = data.join(".migrate-test-fill");
    for (target, stage) in [
        ("3.5.1", "upgrade-space-checked"),
        ("3.5.1", "upgrade-staged"),
        ("3.4.23", "rollback-space-checked"),
    ] {
        if target == "3.4.23" {
            let out = common::migrate_json(bins.path(), &data, "3.5.1", &[]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let before = tree_bytes(&data);
        let out = common::migrate_json(
            bins.path(),
            &data,
            target,
            &[("ETCDIMG_MIGRATE_FILL_DISK", stage)],
        );
        assert!(filler.exists(), "{stage}: the disk was not filled");
        std::fs::remove_file(&filler).unwrap();
        // Exit 21, as for a disk short up front: a full disk, the data as it was.
        assert_untouched(&out, 21, "", &data, &before, fs.path());
        let err = stderr(&out);
        assert!(
            err.contains("No space left on device") || err.contains("no space left on device"),
            "{stage}: {err}"
        );
        assert!(
            err.contains("filled up while the step ran"),
            "{stage}: {err}"
        );
    }
    let out = common::migrate_json(bins.path(), &data, "3.4.23", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["fingerprints"][0]["after"]["keys"], 24);
}
