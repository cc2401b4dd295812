//! Many etcdimg runs at once: parallel builds into one layout, cold builds sharing one cache;
//! files that follow the umask; configuration errors caught before any request is sent.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::world::{json, project, skopeo, world, World};
use common::*;

/// `etcdimg` with the sandbox's environment, not waited for.
fn spawn(sb: &Sandbox, args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdimg"));
    cmd.args(args).current_dir(sb.path()).env("HOME", sb.path());
    for (k, v) in &sb.env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn refs(layout: &Path) -> BTreeSet<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(String::from)
        .collect()
}

// guards: two builds into one --output each rewrote index.json from what they had read, and in
// 6 of 20 rounds the layout ended with one image, both exiting 0.
#[test]
fn parallel_builds_into_one_layout_keep_every_image() {
    let t = "parallel_builds_into_one_layout_keep_every_image";
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("");
    let warm = w.sb.etcdimg(&["all-build", "--output", "warm"]);
    assert_success(&warm);
    let tag = "3.5.1-0";
    let both: BTreeSet<String> = [format!("{tag}-linux-amd64"), format!("{tag}-linux-arm64")]
        .into_iter()
        .collect();
    for round in 0..21 {
        let out = w.sb.path().join(format!("round-{round}"));
        let out_s = out.display().to_string();
        let (a, b) = if round < 20 {
            (
                spawn(&w.sb, &["build", "--arch", "amd64", "--output", &out_s]),
                spawn(&w.sb, &["build", "--arch", "arm64", "--output", &out_s]),
            )
        } else {
            // all-build (both arches, then the index) racing a single-arch build.
            (
                spawn(&w.sb, &["all-build", "--output", &out_s]),
                spawn(&w.sb, &["build", "--arch", "amd64", "--output", &out_s]),
            )
        };
        for child in [a, b] {
            assert_success(&child.wait_with_output().unwrap());
        }
        let got = refs(&out);
        assert!(
            both.is_subset(&got),
            "round {round}: index.json holds {got:?}"
        );
        if round == 20 {
            assert!(got.contains(tag), "round {round}: the index ref: {got:?}");
        }
        for r in &got {
            let o = skopeo(&["inspect", "--raw", &format!("oci:{out_s}:{r}")]);
            assert!(
                o.status.success(),
                "round {round}: skopeo reads {r}: {}",
                stderr(&o)
            );
        }
        // 21 layouts of two full images each would hold gigabytes at once: keep one round's.
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Every file under `dir`, relative, with its permission bits.
fn modes(dir: &Path) -> Vec<(String, u32, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push((rel, meta.permissions().mode() & 0o7777, meta.is_dir()));
        }
    }
    out
}

#[test]
fn two_cold_builds_sharing_a_cache_download_each_tarball_once() {
    let t = "two_cold_builds_sharing_a_cache_download_each_tarball_once";
    let Some(World {
        fx, mirror, mut sb, ..
    }) = world(t, &[])
    else {
        return;
    };
    let counting = FaultProxy::start(mirror.port, |_| Fault::Forward);
    project(
        &mut sb,
        counting.port,
        "127.0.0.1:1/k8s",
        &format!("oci:{}:1.35", fx.join("busybox-oci").display()),
        "",
    );
    let (a, b) = (
        spawn(
            &sb,
            &["build", "--arch", "amd64", "--output", "a", "--json"],
        ),
        spawn(
            &sb,
            &["build", "--arch", "amd64", "--output", "b", "--json"],
        ),
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_success(&a);
    assert_success(&b);
    assert_eq!(
        json(&a)["manifest_digest"],
        json(&b)["manifest_digest"],
        "the same image"
    );
    let waited = stderr(&a).contains("Waiting") || stderr(&b).contains("Waiting");
    assert!(waited, "one build waited for the other's cache entry");
    let gets: Vec<String> = counting
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(".tar.gz"))
        .map(|r| r.path)
        .collect();
    let unique: BTreeSet<&String> = gets.iter().collect();
    assert_eq!(
        gets.len(),
        unique.len(),
        "each tarball downloaded once: {gets:?}"
    );
    assert_eq!(unique.len(), 2, "{gets:?}");
    // Every cache entry is intact, and nothing is left half-written.
    let blobs = sb.cache().join("blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            e.file_name().to_string_lossy(),
            "cache blob {:?}",
            e.path()
        );
    }
    let tmp: Vec<_> = std::fs::read_dir(sb.cache().join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "left in the cache's tmp: {tmp:?}");
}

/// Runs etcdimg under `umask` through sh.
fn under_umask(sb: &Sandbox, umask: &str, args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "umask {umask}; exec '{}' {}",
        env!("CARGO_BIN_EXE_etcdimg"),
        quoted.join(" ")
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .current_dir(sb.path())
        .env("HOME", sb.path());
    for (k, v) in &sb.env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

// guards: every file etcdimg wrote was 0600 (temp files renamed into place with their mode), so
// a layout or cache built by root could not be read by the user who pushes or serves it.
#[test]
fn layouts_caches_reports_and_archives_follow_the_umask() {
    let t = "layouts_caches_reports_and_archives_follow_the_umask";
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("");
    for (umask, file_mode, dir_mode) in [("022", 0o644, 0o755), ("077", 0o600, 0o700)] {
        let root = w.sb.path().join(format!("umask-{umask}"));
        std::fs::create_dir(&root).unwrap();
        w.sb.set("ETCDIMG_CACHE", root.join("cache").display().to_string());
        let layout = root.join("oci").display().to_string();
        let archive = root.join("etcd.tar").display().to_string();
        let reports = root.join("reports").display().to_string();
        for args in [
            vec!["all-build", "--output", &layout],
            vec![
                "build",
                "--arch",
                "amd64",
                "--output",
                &layout,
                "--docker-archive",
                &archive,
            ],
            vec![
                "report",
                "--output",
                &layout,
                "--report-dir",
                &reports,
                "--spdx",
            ],
        ] {
            assert_success(&under_umask(&w.sb, umask, &args));
        }
        let mut seen = 0;
        for dir in ["oci", "cache", "reports"] {
            for (rel, mode, is_dir) in modes(&root.join(dir)) {
                let want = if is_dir { dir_mode } else { file_mode };
                assert_eq!(mode, want, "umask {umask}: {dir}/{rel} is {mode:o}");
                seen += 1;
            }
        }
        let archive_mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
        assert_eq!(archive_mode, file_mode, "umask {umask}: the docker archive");
        assert!(seen > 20, "only {seen} entries checked");
    }
}

#[test]
fn configuration_errors_stop_the_run_before_any_request() {
    let t = "configuration_errors_stop_the_run_before_any_request";
    let Some(World {
        fx, mirror, mut sb, ..
    }) = world(t, &[])
    else {
        return;
    };
    let counting = FaultProxy::start(mirror.port, |_| Fault::Forward);
    let layout_base = format!("oci:{}:1.35", fx.join("busybox-oci").display());
    let nowhere = sb.path().join("nowhere");
    // (what, base, extra images.toml, extra args, stderr must say)
    type Case<'a> = (&'a str, String, String, Vec<String>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "a migrate source dir without the crate",
            layout_base.clone(),
            String::new(),
            vec![],
            vec!["the migrate crate is not at", "migrate.source_dir", "hint:"],
        ),
        (
            "a --migrate-binary that is not there",
            layout_base.clone(),
            String::new(),
            vec![
                "--migrate-binary".into(),
                nowhere.join("migrate").display().to_string(),
            ],
            vec!["--migrate-binary names no file"],
        ),
        (
            "a base reference that does not parse",
            "Not A Reference!".into(),
            String::new(),
            vec![],
            vec!["Not A Reference!", "image.base"],
        ),
        (
            "an oci: base that is not a layout",
            format!("oci:{}:1.35", nowhere.display()),
            String::new(),
            vec![],
            vec!["is not an OCI layout", "image.base"],
        ),
    ];
    for (what, base, _extra, args, needles) in cases {
        project(&mut sb, counting.port, "127.0.0.1:1/k8s", &base, "");
        if what.starts_with("a migrate source dir") {
            // The project's migrate.source_dir points at a directory without the crate.
            let config = std::fs::read_to_string(sb.path().join("images.toml"))
                .unwrap()
                .replace(
                    &repo_root().join("migrate").display().to_string(),
                    &nowhere.display().to_string(),
                );
            std::fs::write(sb.path().join("images.toml"), config).unwrap();
        }
        let before = counting.requests().len();
        let started = std::time::Instant::now();
        let mut all = vec!["build", "--arch", "amd64"];
        all.extend(args.iter().map(String::as_str));
        let out = sb.etcdimg(&all);
        let took = started.elapsed();
        assert!(!out.status.success(), "{what}: succeeded");
        for n in &needles {
            assert!(
                stderr(&out).contains(n),
                "{what}: expected {n:?}: {}",
                stderr(&out)
            );
        }
        assert_eq!(
            counting.requests().len(),
            before,
            "{what}: requests were sent"
        );
        assert!(took.as_secs_f64() < 1.0, "{what}: took {took:?}");
    }
    let _: Option<PathBuf> = None;
}
