//! `etcdimg test` on a real built image (fixture mirror + busybox base), and on copies of it
//! broken one way each: the verb must pass the good one and fail exactly the broken check.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};

const REF: &str = "3.5.1-0-linux-amd64";

/// Writes `bytes` as a blob of the layout; returns its digest.
fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = format!("{:x}", Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// Rewrites the image `REF` of the layout: `edit` changes its manifest and config JSON.
fn edit_image(
    layout: &Path,
    edit: impl FnOnce(&Path, &mut serde_json::Value, &mut serde_json::Value),
) {
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == REF)
        .unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&read_blob(layout, entry["digest"].as_str().unwrap())).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&read_blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    edit(layout, &mut manifest, &mut config);
    let config = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = put_blob(layout, &config).into();
    manifest["config"]["size"] = config.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    entry["digest"] = put_blob(layout, &manifest).into();
    entry["size"] = manifest.len().into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// Adds an uncompressed layer holding `files` (path in the image, bytes, mode) on top, and its
/// diff ID to the config (a container runtime checks they match).
fn add_layer(
    layout: &Path,
    manifest: &mut serde_json::Value,
    config: &mut serde_json::Value,
    files: &[(&str, Vec<u8>, u32)],
) {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let digest = put_blob(layout, &tar);
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(digest.clone().into());
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": tar.len(),
        }));
}

fn failing(out: &std::process::Output) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)));
    v[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

type Break = Box<dyn Fn(&Path, &mut serde_json::Value, &mut serde_json::Value)>;

/// Copies of a good image broken one way each (the order the tests' expectations follow).
fn broken_images(fx: &Path) -> Vec<(&'static str, Break)> {
    let old_etcd = std::fs::read(fx.join("bin/etcd-3.4.23")).unwrap();
    vec![
        (
            "a binary reporting the wrong version",
            Box::new(
                move |l: &Path, m: &mut serde_json::Value, c: &mut serde_json::Value| {
                    add_layer(
                        l,
                        m,
                        c,
                        &[("usr/local/bin/etcd-3.5.1", old_etcd.clone(), 0o555)],
                    );
                },
            ),
        ),
        (
            "a config with the wrong architecture",
            Box::new(
                |_: &Path, _: &mut serde_json::Value, c: &mut serde_json::Value| {
                    c["architecture"] = "arm64".into();
                },
            ),
        ),
        (
            "a missing etcdctl",
            Box::new(
                |l: &Path, m: &mut serde_json::Value, c: &mut serde_json::Value| {
                    add_layer(
                        l,
                        m,
                        c,
                        &[("usr/local/bin/.wh.etcdctl-3.5.1", Vec::new(), 0o644)],
                    );
                },
            ),
        ),
        (
            "a migrate that exits 1",
            Box::new(
                |l: &Path, m: &mut serde_json::Value, c: &mut serde_json::Value| {
                    let script = b"#!/bin/sh\nexit 1\n".to_vec();
                    add_layer(l, m, c, &[("usr/local/bin/migrate", script, 0o555)]);
                },
            ),
        ),
        (
            "an image that runs as another user",
            Box::new(
                |_: &Path, _: &mut serde_json::Value, c: &mut serde_json::Value| {
                    c["config"]["User"] = "65534".into();
                },
            ),
        ),
    ]
}

/// For each of `broken` (paired in order with `want`): breaks a copy of the `good` layout,
/// runs `test` on it and asserts it exits 1 failing exactly the wanted rows. Returns each
/// case's output for the caller's own checks.
fn fail_broken_copies(
    sb: &Sandbox,
    good: &Path,
    broken: Vec<(&'static str, Break)>,
    want: &[&[&str]],
    test: impl Fn(&Path) -> std::process::Output,
) -> Vec<(&'static str, std::process::Output)> {
    assert_eq!(
        broken.len(),
        want.len(),
        "one wanted row list per broken image"
    );
    let mut outputs = Vec::new();
    for ((what, damage), want) in broken.into_iter().zip(want) {
        let layout = sb.path().join(what.replace(' ', "-"));
        run(std::process::Command::new("cp")
            .arg("-a")
            .arg(good)
            .arg(&layout));
        edit_image(&layout, |l, m, c| damage(l, m, c));
        let out = test(&layout);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert_eq!(failing(&out), want.to_vec(), "{what}");
        outputs.push((what, out));
    }
    outputs
}

/// The amd64 image built from the fixtures into `<sandbox>/good` (the mirror must outlive it).
fn good_image(fx: &Path) -> (Server, Sandbox, PathBuf) {
    let mirror = http_mirror(&fx.join("mirror"));
    let mut sb = Sandbox::new();
    sb.local_sources(fx, &mirror);
    let good = sb.path().join("good");
    assert_success(&sb.etcdimg(&[
        "build",
        "--arch",
        "amd64",
        "--output",
        good.to_str().unwrap(),
    ]));
    (mirror, sb, good)
}

/// `etcdimg test --arch amd64 --json` of the layout, with `extra` flags.
fn test_json(sb: &Sandbox, layout: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["test", "--arch", "amd64"];
    args.extend_from_slice(extra);
    args.extend(["--json", "--output", layout.to_str().unwrap()]);
    sb.etcdimg(&args)
}

#[test]
fn test_verb_passes_a_good_image_and_fails_each_broken_one() {
    let t = "test_verb_passes_a_good_image_and_fails_each_broken_one";
    let Some(fx) = fixtures(t) else { return };
    let (_mirror, sb, good) = good_image(&fx);
    let test = |layout: &Path| test_json(&sb, layout, &[]);
    let out = test(&good);
    assert_success(&out);
    assert_eq!(failing(&out), Vec::<String>::new());
    let table = sb.etcdimg(&[
        "test",
        "--arch",
        "amd64",
        "--output",
        good.to_str().unwrap(),
    ]);
    assert_success(&table);
    assert!(
        stdout(&table).contains("PASS  migration"),
        "{}",
        stdout(&table)
    );

    let want: [&[&str]; 4] = [
        &["etcd-3.5.1"],
        &["config platform"],
        // migrate refuses to run a step without its etcdctl, so the migration fails too.
        &["etcdctl-3.5.1", "migration"],
        &["migration"],
    ];
    let broken = broken_images(&fx)
        .into_iter()
        .filter(|(what, _)| *what != "an image that runs as another user")
        .collect();
    for (what, out) in fail_broken_copies(&sb, &good, broken, &want, test) {
        assert!(
            stderr(&out).contains("image checks failed"),
            "{what}: {}",
            stderr(&out)
        );
    }
}

/// A project images.toml for one foreign arch: `source` "release" (the fixture mirror) or
/// "build" (Debian's etcd source, which has 3.4.23 only).
fn foreign_project(sb: &mut Sandbox, fx: &Path, mirror: u16, arch: &str, source: &str) {
    let (latest, bundled) = if source == "release" {
        ("3.5.1", r#"["3.4.23", "3.5.1"]"#)
    } else {
        ("3.4.23", r#"["3.4.23"]"#)
    };
    let config = format!(
        r#"[etcd]
latest = "{latest}"
bundled = {bundled}
release_url = "http://127.0.0.1:{mirror}"

[image]
arches = ["{arch}"]
base = "oci:{}:1.35"

[arch.{arch}]
source = "{source}"

[migrate]
source_dir = "{}"

[build.source."3.4.23"]
dir = "/usr/share/gocode/src/go.etcd.io/etcd"
gopath = "/usr/share/gocode"
"#,
        fx.join("busybox-oci").display(),
        repo_root().join("migrate").display()
    );
    let path = sb.path().join(format!("images-{arch}.toml"));
    std::fs::write(&path, config).unwrap();
    sb.set("ETCDIMG_CONFIG", path.display().to_string())
        .unset("ETCD_VERSION")
        .unset("BUNDLED_ETCD_VERSIONS");
}

/// Foreign arches under qemu-user: an arm64 image from the release mirror (3.4.23 and 3.5.1;
/// the migration runs the image's arm64 migrate and etcd) and a ppc64le image cross-built from
/// Debian's source (3.4.23 only, so its migration initialises the data dir).
#[test]
fn test_verb_passes_arm64_and_ppc64le_images_under_qemu() {
    let t = "test_verb_passes_arm64_and_ppc64le_images_under_qemu";
    let Some(fx) = fixtures(t) else { return };
    if !["qemu-aarch64-static", "qemu-ppc64le-static", "go"]
        .iter()
        .all(|q| require(t, q))
    {
        return;
    }
    let mirror = http_mirror(&fx.join("mirror"));
    for (arch, source, migration) in [
        ("arm64", "release", "3.4.23 -> 3.5.1"),
        ("ppc64le", "build", "3.4.23 -> 3.4.23"),
    ] {
        let mut sb = Sandbox::new();
        foreign_project(&mut sb, &fx, mirror.port, arch, source);
        let out_dir = sb.path().join("oci");
        let out = out_dir.to_str().unwrap();
        assert_success(&sb.etcdimg(&["build", "--arch", arch, "--output", out]));
        let res = sb.etcdimg(&["test", "--arch", arch, "--json", "--output", out]);
        assert_success(&res);
        assert_eq!(failing(&res), Vec::<String>::new(), "{arch}");
        let v: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
        let checks = v[0]["checks"].as_array().unwrap();
        let detail = |name: &str| {
            checks
                .iter()
                .find(|c| c["name"] == name)
                .map(|c| c["detail"].as_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert!(
            detail("migration").starts_with(migration),
            "{arch}: {}",
            detail("migration")
        );
        assert!(
            detail("config platform").starts_with(&format!("linux/{arch}")),
            "{arch}"
        );
    }
}

// `etcdimg test --runtime containerd`: the same image and the same broken copies, run in real
// containers by a private containerd (root only).
#[test]
fn test_verb_in_containerd_passes_a_good_image_and_fails_each_broken_one() {
    let t = "test_verb_in_containerd_passes_a_good_image_and_fails_each_broken_one";
    let Some(fx) = fixtures(t) else { return };
    if !(require(t, "containerd") && require(t, "ctr") && require(t, "runc")) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!require_all(), "{t}: a private containerd needs root");
        return;
    }
    let (_mirror, sb, good) = good_image(&fx);
    let test = |layout: &Path| test_json(&sb, layout, &["--runtime", "containerd"]);
    let out = test(&good);
    assert_success(&out);
    assert_eq!(failing(&out), Vec::<String>::new());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = report[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"container user and env") && names.contains(&"migration"),
        "{names:?}"
    );
    let migration = report[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "migration")
        .unwrap()["detail"]
        .to_string();
    assert!(
        migration.contains("3.4.23 -> 3.5.1 -> 3.4.23"),
        "{migration}"
    );

    let want: [&[&str]; 5] = [
        // In a container the pod's etcd after the upgrade is that binary: it serves 3.4.23.
        &["etcd-3.5.1", "migration"],
        &["config platform"],
        &["etcdctl-3.5.1", "migration"],
        &["migration"],
        &["container user and env", "migration"],
    ];
    fail_broken_copies(&sb, &good, broken_images(&fx), &want, test);
}
