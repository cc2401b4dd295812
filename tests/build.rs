//! `etcdimg build` against real artifacts: the loopback release mirror of official and
//! Debian-built etcd tarballs, a busybox base in a real docker-registry, checked with skopeo
//! and umoci (which we did not write).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const REF: &str = "3.5.1-0-linux-amd64";

fn tools(test: &str, list: &[&str]) -> bool {
    list.iter().all(|t| require(test, t))
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

fn version_of(binary: &Path, arg: &str) -> String {
    let out = run(Command::new(binary).arg(arg).env("ETCDCTL_API", "3"));
    stdout(&out)
}

#[test]
fn build_amd64_from_registry_base_is_correct_per_skopeo_and_umoci() {
    let t = "build_amd64_from_registry_base_is_correct_per_skopeo_and_umoci";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["docker-registry", "skopeo", "umoci", "python3"]) {
        return;
    }
    let registry = registry();
    let base = push_base(&fx, &registry);
    let mirror = http_mirror(&fx.join("mirror"));
    let mut sb = Sandbox::new();
    sb.set(
        "ETCD_RELEASE_URL",
        format!("http://127.0.0.1:{}", mirror.port),
    )
    .set("BASEIMAGE", base.clone());
    let out_dir = sb.path().join("out");
    let insecure = format!("127.0.0.1:{}", registry.port);
    let out = sb.etcdimg(&[
        "build",
        "--arch",
        "amd64",
        "--json",
        "--insecure-registry",
        &insecure,
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert_success(&out);
    let report = json(&out);
    assert_eq!(report["reference"], REF);

    // skopeo reads our layout: platform, env, labels, layer count.
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:{REF}", out_dir.display())));
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Digest"], report["manifest_digest"]);
    assert_eq!(
        v["Layers"].as_array().unwrap().len(),
        1 + 2 + 1,
        "base + one per bundled version + migrate"
    );
    let env: Vec<&str> = v["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.iter()
            .any(|e| e.starts_with("PATH=") && e.contains("/usr/local/bin")),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("ETCD_UNSUPPORTED_ARCH")),
        "amd64 gets no ETCD_UNSUPPORTED_ARCH"
    );
    assert_eq!(v["Labels"]["org.opencontainers.image.version"], "3.5.1-0");
    assert_eq!(v["Labels"]["dev.etcdimg.etcd.bundled"], "3.4.23,3.5.1");
    assert_eq!(
        v["Labels"]["org.opencontainers.image.base.name"],
        base.as_str()
    );
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{base}")));
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let amd64 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap();
    assert_eq!(
        v["Labels"]["org.opencontainers.image.base.digest"], amd64["digest"],
        "base digest is the per-arch manifest"
    );
    let base_inspect = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--override-arch", "amd64"])
        .arg(format!("docker://{base}")));
    let bv: serde_json::Value = serde_json::from_slice(&base_inspect.stdout).unwrap();
    assert_eq!(
        v["Layers"][0], bv["Layers"][0],
        "base layer kept byte for byte"
    );

    // umoci unpacks it: every binary reports its version, modes are 0555.
    let rootfs = umoci_unpack(&out_dir, REF, sb.path());
    let bin = rootfs.join("usr/local/bin");
    // The image's migrate has none of the tests' hooks (they exist only under the test-hooks
    // feature): not the variables that name them, which the sources do hold.
    let shipped = std::fs::read(bin.join("migrate")).unwrap();
    let sources = std::fs::read_to_string(repo_root().join("migrate/src/engine.rs")).unwrap();
    for hook in [
        "ETCDIMG_MIGRATE_FAILPOINT",
        "ETCDIMG_MIGRATE_TEST_TAMPER",
        "ETCDIMG_MIGRATE_FILL_DISK",
    ] {
        assert!(
            sources.contains(hook),
            "{hook} is not a hook of migrate any more"
        );
        assert!(
            !shipped.windows(hook.len()).any(|w| w == hook.as_bytes()),
            "the image's migrate contains the test hook {hook}"
        );
    }
    for (name, want) in [
        ("etcd-3.4.23", "3.4.23"),
        ("etcd-3.5.1", "3.5.1"),
        ("etcd", "3.5.1"),
    ] {
        let text = version_of(&bin.join(name), "--version");
        assert!(
            text.contains(&format!("etcd Version: {want}")),
            "{name}: {text}"
        );
    }
    for (name, want) in [
        ("etcdctl-3.4.23", "3.4.23"),
        ("etcdctl-3.5.1", "3.5.1"),
        ("etcdctl", "3.5.1"),
        ("etcdutl-3.5.1", "3.5.1"),
    ] {
        let text = version_of(&bin.join(name), "version");
        assert!(text.contains(&format!("version: {want}")), "{name}: {text}");
    }
    let help = run(Command::new(bin.join("migrate")).arg("--help"));
    assert!(stdout(&help).contains("--target-version"));
    for entry in std::fs::read_dir(&bin).unwrap().flatten() {
        let mode = entry.metadata().unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o555, "{:?}", entry.file_name());
    }
    // The effective version policy sits where migrate looks for it, beside its bin dir.
    let policy = bin.join("..").join(etcd_policy::IMAGE_FILE);
    let policy_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&policy).expect("the image's version policy"))
            .unwrap();
    assert!(policy_json.is_object(), "{policy_json}");
    // The default etcd is stored once: a hard link to etcd-3.5.1, not a second copy.
    assert_eq!(
        std::fs::metadata(bin.join("etcd")).unwrap().ino(),
        std::fs::metadata(bin.join("etcd-3.5.1")).unwrap().ino()
    );

    // The wrapper swaps the default etcd for TARGET_VERSION by rename, never through the link.
    let data = sb.path().join("data");
    let wrapper = run(Command::new(bin.join("migrate-if-needed.sh"))
        .env("TARGET_VERSION", "3.4.23")
        .env("TARGET_STORAGE", "etcd3")
        .env("DATA_DIRECTORY", &data)
        .env("ETCD_NAME", "etcd-test"));
    let _ = wrapper;
    assert_eq!(
        std::fs::read_to_string(data.join("version.txt")).unwrap(),
        "3.4.23/etcd3"
    );
    assert!(version_of(&bin.join("etcd"), "--version").contains("etcd Version: 3.4.23"));
    assert!(
        version_of(&bin.join("etcd-3.5.1"), "--version").contains("etcd Version: 3.5.1"),
        "etcd-3.5.1 must be untouched"
    );
    assert!(version_of(&bin.join("etcdctl"), "version").contains("etcdctl version: 3.4.23"));
}

#[test]
fn builds_are_byte_reproducible_across_dirs_caches_and_threads() {
    let t = "builds_are_byte_reproducible_across_dirs_caches_and_threads";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["python3", "skopeo"]) {
        return;
    }
    let mirror = http_mirror(&fx.join("mirror"));
    let base = format!("oci:{}:1.35", fx.join("busybox-oci").display());
    let mut digests = Vec::new();
    for (jobs, cwd_sub) in [("1", "a"), ("2", "b/c")] {
        let mut sb = Sandbox::new();
        sb.set(
            "ETCD_RELEASE_URL",
            format!("http://127.0.0.1:{}", mirror.port),
        )
        .set("BASEIMAGE", base.clone());
        let cwd = sb.path().join(cwd_sub);
        std::fs::create_dir_all(&cwd).unwrap();
        let out_dir = sb.path().join(format!("out-{jobs}"));
        let out = sb.etcdimg_in(
            &cwd,
            &[
                "build",
                "--json",
                "--jobs",
                jobs,
                "--output",
                out_dir.to_str().unwrap(),
            ],
        );
        assert_success(&out);
        let report = json(&out);
        assert!(
            report["layers"]
                .as_array()
                .unwrap()
                .iter()
                .skip(1)
                .all(|l| l["cached"] == false),
            "cold build in a fresh cache"
        );
        digests.push(report["manifest_digest"].as_str().unwrap().to_string());
        // skopeo agrees on the digest, and every blob is present and intact
        let inspect = run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:{REF}", out_dir.display())));
        let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(v["Digest"], report["manifest_digest"]);
    }
    assert_eq!(
        digests[0], digests[1],
        "same inputs must give the same manifest digest"
    );
}

#[test]
fn warm_build_reuses_every_layer_and_docker_archive_is_readable() {
    let t = "warm_build_reuses_every_layer_and_docker_archive_is_readable";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["python3", "skopeo"]) {
        return;
    }
    let mirror = http_mirror(&fx.join("mirror"));
    let mut sb = Sandbox::new();
    sb.local_sources(&fx, &mirror);
    let out_dir = sb.path().join("out");
    let first = sb.etcdimg(&["build", "--json", "--output", out_dir.to_str().unwrap()]);
    assert_success(&first);
    drop(mirror); // the warm build must not need the network for cached releases... except SHA256SUMS, which is cached too
    let archive = sb.path().join("etcd.tar");
    let second = sb.etcdimg(&[
        "build",
        "--json",
        "--output",
        out_dir.to_str().unwrap(),
        "--docker-archive",
        archive.to_str().unwrap(),
    ]);
    assert_success(&second);
    let (a, b) = (json(&first), json(&second));
    assert_eq!(a["manifest_digest"], b["manifest_digest"]);
    assert!(
        b["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["cached"] == true),
        "{b}"
    );
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", archive.display())));
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 4);
    let listing = run(Command::new("tar")
        .arg("xOf")
        .arg(&archive)
        .arg("manifest.json"));
    let manifest: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert_eq!(
        manifest[0]["RepoTags"][0],
        "registry.k8s.io/etcd:3.5.1-0-linux-amd64"
    );
    assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 4);

    // guards: a warm build never reads a release tarball whose layer is cached (SHA256SUMS
    // decides the layer key), and a build that does read one still re-verifies it.
    let tarballs: Vec<PathBuf> = a["tarballs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            sb.cache()
                .join("blobs/sha256")
                .join(t["sha256"].as_str().unwrap())
        })
        .collect();
    for t in &tarballs {
        flip_byte(t, 100);
    }
    let third = sb.etcdimg(&["build", "--json", "--output", out_dir.to_str().unwrap()]);
    assert_success(&third);
    assert_eq!(json(&third)["manifest_digest"], a["manifest_digest"]);
    assert!(!stderr(&third).contains("corrupt"), "{}", stderr(&third));
    let mirror = http_mirror(&fx.join("mirror"));
    sb.local_sources(&fx, &mirror);
    let fourth = sb.etcdimg(&[
        "build",
        "--json",
        "--no-layer-cache",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert_success(&fourth);
    assert_eq!(json(&fourth)["manifest_digest"], a["manifest_digest"]);
    assert!(
        stderr(&fourth).contains("was corrupt; downloading it again"),
        "{}",
        stderr(&fourth)
    );
    for t in json(&fourth)["tarballs"].as_array().unwrap() {
        assert_eq!(t["downloaded"], true, "{t}");
    }
}

/// A bad input must fail clearly, exit non-zero, and leave no cache entry and no image.
fn assert_clean_failure(sb: &Sandbox, out: &std::process::Output, out_dir: &Path, expect: &[&str]) {
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{}",
        stderr(out)
    );
    let err = stderr(out);
    for e in expect {
        assert!(err.contains(e), "stderr lacks {e:?}:\n{err}");
    }
    assert!(err.contains("error: "), "{err}");
    assert_eq!(
        sb.cache_entries(),
        Vec::<String>::new(),
        "the cache must stay empty:\n{err}"
    );
    let index = out_dir.join("index.json");
    if index.exists() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
        assert_eq!(
            v["manifests"].as_array().map(|a| a.len()).unwrap_or(0),
            0,
            "no image may be written"
        );
    }
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites a tarball with a mapping over (path, bytes) and optional extra raw entries.
fn rewrite_tarball(
    src: &Path,
    dest: &Path,
    rename: impl Fn(&str) -> String,
    extra: Option<(&str, &[u8])>,
) {
    use std::io::Read;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(src).unwrap(),
    ));
    let mut entries: Vec<(String, Vec<u8>, tar::EntryType)> = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = e.header().entry_type();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        entries.push((rename(&name), body, kind));
    }
    let file = std::fs::File::create(dest).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut append = |name: &str, body: &[u8], kind: tar::EntryType| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, body).unwrap();
    };
    for (name, body, kind) in &entries {
        append(name, body, *kind);
    }
    if let Some((name, body)) = extra {
        append(name, body, tar::EntryType::Regular);
    }
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing_behind() {
    let t = "bad_inputs_fail_clearly_and_leave_nothing_behind";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["python3"]) {
        return;
    }
    let base = format!("oci:{}:1.35", fx.join("busybox-oci").display());
    let amd = "etcd-v3.5.1-linux-amd64.tar.gz";
    let zeros = "0".repeat(64);

    // Each case: (name, mirror mutation, extra env, expected stderr fragments)
    type Mutate = Box<dyn Fn(&Path)>;
    type Case<'a> = (&'a str, Mutate, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "corrupted tarball",
            Box::new(move |m: &Path| flip_byte(&m.join("v3.5.1").join(amd), 5000)),
            vec![],
            vec![
                "checksum mismatch for `etcd-v3.5.1-linux-amd64.tar.gz`",
                "expected: sha256:",
                "actual:   sha256:",
                "SHA256SUMS",
            ],
        ),
        (
            "SHA256SUMS mismatch",
            Box::new(move |m: &Path| {
                let p = m.join("v3.5.1/SHA256SUMS");
                let text = std::fs::read_to_string(&p).unwrap();
                let line = text.lines().find(|l| l.ends_with(amd)).unwrap().to_string();
                let bad = format!("{}{}", "0".repeat(64), &line[64..]);
                std::fs::write(&p, text.replace(&line, &bad)).unwrap();
            }),
            vec![],
            vec!["checksum mismatch", zeros.as_str()],
        ),
        (
            "tarball missing from SHA256SUMS",
            Box::new(move |m: &Path| {
                let p = m.join("v3.5.1/SHA256SUMS");
                let text: String = std::fs::read_to_string(&p)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.ends_with(amd))
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(&p, text).unwrap();
            }),
            vec![],
            vec!["is not listed in", "SHA256SUMS"],
        ),
        (
            "404",
            Box::new(|_: &Path| {}),
            vec![
                ("BUNDLED_ETCD_VERSIONS", "3.4.23 3.5.9"),
                ("ETCD_VERSION", "3.5.9"),
            ],
            vec!["404", "v3.5.9/SHA256SUMS", "hint:"],
        ),
        (
            "tarball with a ../ entry",
            Box::new(move |m: &Path| {
                let p = m.join("v3.5.1").join(amd);
                let tmp = m.join("tmp.tar.gz");
                rewrite_tarball(
                    &p,
                    &tmp,
                    |n| n.to_string(),
                    Some(("etcd-v3.5.1-linux-amd64/../../evil", b"x")),
                );
                std::fs::rename(&tmp, &p).unwrap();
                regenerate_sums(&m.join("v3.5.1"));
            }),
            vec![],
            vec!["../../evil", "`..`", "refusing the whole tarball"],
        ),
        (
            "cargo-auditable missing",
            Box::new(|_: &Path| {}),
            vec![("ETCDIMG_CARGO_AUDITABLE", "/nonexistent/cargo-auditable")],
            vec![
                "cargo-auditable is not installed",
                "ETCDIMG_CARGO_AUDITABLE=/nonexistent/cargo-auditable names no executable",
                "migrate.auditable = false",
            ],
        ),
        (
            "arm64 etcd under the amd64 name",
            Box::new(move |m: &Path| {
                let arm = m.join("v3.5.1/etcd-v3.5.1-linux-arm64.tar.gz");
                let p = m.join("v3.5.1").join(amd);
                rewrite_tarball(&arm, &p, |n| n.replace("linux-arm64", "linux-amd64"), None);
                regenerate_sums(&m.join("v3.5.1"));
            }),
            vec![],
            vec!["AArch64", "x86-64", "image arch `amd64`"],
        ),
    ];
    for (name, mutate, env, expect) in cases {
        let mut sb = Sandbox::new();
        let mirror_dir = mirror_copy(&fx, sb.path());
        mutate(&mirror_dir);
        let mirror = http_mirror(&mirror_dir);
        sb.set(
            "ETCD_RELEASE_URL",
            format!("http://127.0.0.1:{}", mirror.port),
        )
        .set("BASEIMAGE", base.clone());
        for (k, v) in env {
            sb.set(k, v);
        }
        let out_dir = sb.path().join("out");
        let out = sb.etcdimg(&["build", "--output", out_dir.to_str().unwrap()]);
        eprintln!("case {name}: {}", stderr(&out));
        assert_clean_failure(&sb, &out, &out_dir, &expect);
        assert_eq!(out.status.code(), Some(1), "{name}");
    }
}

#[test]
fn truncated_downloads_are_retried_with_range_and_fail_clearly_when_they_persist() {
    let t = "truncated_downloads_are_retried_with_range_and_fail_clearly_when_they_persist";
    let Some(fx) = fixtures(t) else { return };
    let base = format!("oci:{}:1.35", fx.join("busybox-oci").display());
    let mirror = fx.join("mirror");

    // In front of the mirror: every first attempt at a tarball is cut mid-body; a retry with
    // Range gets the rest (the mirror's http.server has no Range support, so the proxy
    // answers it), unless `cut_always`.
    let upstream = http_mirror(&mirror);
    let upstream_port = upstream.port;
    let serve = move |cut_always: bool| {
        let mirror = mirror.clone();
        FaultProxy::start(upstream_port, move |req: &ProxyRequest| {
            let path = req.path.as_str();
            if !path.ends_with(".tar.gz") {
                return Fault::Forward;
            }
            let Ok(bytes) = std::fs::read(mirror.join(path.trim_start_matches('/'))) else {
                return Fault::Forward;
            };
            let start = req.range().unwrap_or(0) as usize;
            let body = &bytes[start..];
            let content_range = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
            let status = if start > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let headers = [
                ("Content-Length", body.len().to_string()),
                ("Content-Range", content_range),
            ];
            if start > 0 && !cut_always {
                return Fault::Respond(http_response(status, &headers, body));
            }
            // Announce the whole body, send a third, hang up.
            let mut r = http_response(status, &headers, &[]);
            r.extend_from_slice(&body[..body.len() / 3]);
            Fault::Respond(r)
        })
    };

    let server = serve(false);
    let mut sb = Sandbox::new();
    sb.set(
        "ETCD_RELEASE_URL",
        format!("http://127.0.0.1:{}", server.port),
    )
    .set("BASEIMAGE", base.clone());
    let out_dir = sb.path().join("out");
    let out = sb.etcdimg(&["build", "--output", out_dir.to_str().unwrap()]);
    assert_success(&out);
    assert!(stderr(&out).contains("retrying GET"), "{}", stderr(&out));
    drop(server);

    let server = serve(true);
    let mut sb = Sandbox::new();
    sb.set(
        "ETCD_RELEASE_URL",
        format!("http://127.0.0.1:{}", server.port),
    )
    .set("BASEIMAGE", base)
    .set("ETCDIMG_HTTP_RETRIES", "2");
    let out_dir = sb.path().join("out");
    let out = sb.etcdimg(&["build", "--output", out_dir.to_str().unwrap()]);
    assert_clean_failure(
        &sb,
        &out,
        &out_dir,
        &["failed after 3 attempts", "truncated"],
    );
}

#[test]
fn malformed_images_toml_is_a_located_usage_error() {
    let mut sb = Sandbox::new();
    // Every case is about the file itself.
    sb.unset("ETCD_VERSION").unset("BUNDLED_ETCD_VERSIONS");
    let cases = [
        (
            "[etcd]\nlatest = \"3.5.1\"\nbundled = [\"3.5.1\"]\nbundeld = 1\n",
            "images.toml:4:1: key `bundeld`: unknown field",
        ),
        (
            "[etcd]\nlatest = \"3.5\"\nbundled = [\"3.5.1\"]\n",
            "images.toml:2:10: key `etcd.latest`: invalid semver `3.5`",
        ),
        (
            "[etcd]\nlatest = \"3.5.2\"\nbundled = [\"3.5.1\"]\n",
            "key `etcd.latest`: latest version `3.5.2` is not in the bundled list",
        ),
        (
            "[etcd]\nbundled = []\n",
            "images.toml:2:11: key `etcd.bundled`: empty version list",
        ),
        (
            "[etcd]\nbundled = [\"3.5.1\"]\n[image]\narches = [\"amd64\", \"sparc\"]\n",
            "images.toml:4:20: key `image.arches`: unknown arch `sparc`",
        ),
        ("[etcd\nlatest = 1\n", "images.toml:1:"),
    ];
    for (text, expect) in cases {
        let path = sb.path().join("images.toml");
        std::fs::write(&path, text).unwrap();
        sb.set("ETCDIMG_CONFIG", path.display().to_string());
        let out_dir = sb.path().join("out");
        let out = sb.etcdimg(&["build", "--output", out_dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expect),
            "expected {expect:?} in:\n{}",
            stderr(&out)
        );
        assert!(!out_dir.exists());
        assert_eq!(sb.cache_entries(), Vec::<String>::new());
    }
    // An env override with a bad value names the variable.
    sb.set(
        "ETCDIMG_CONFIG",
        repo_root().join("images.toml").display().to_string(),
    )
    .set("ETCD_VERSION", "latest");
    let out = sb.etcdimg(&["settings"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("environment variable ETCD_VERSION"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn settings_follow_flag_env_file_precedence() {
    let mut sb = Sandbox::new();
    sb.unset("ETCD_VERSION").unset("BUNDLED_ETCD_VERSIONS");
    let out = sb.etcdimg(&["settings"]);
    assert_success(&out);
    let v = json(&out);
    // images.toml's defaults: what a release would ship today, and the policy has nothing
    // against them.
    assert_eq!(v["tag"], "3.6.17-0");
    assert_eq!(v["image"], "registry.k8s.io/etcd:3.6.17-0-linux-amd64");
    assert_eq!(v["bundled"], serde_json::json!(["3.5.36", "3.6.17"]));
    assert_eq!(v["policy_findings"], serde_json::json!([]));
    // The compiled arches take the release's Go modules.
    let arm64 = json(&sb.etcdimg(&["settings", "--arch", "arm64"]));
    assert_eq!(arm64["source"], "module");
    sb.set("REVISION", "3")
        .set("REGISTRY", "example.com/k8s")
        .set("ETCD_VERSION", "3.5.1")
        .set("BUNDLED_ETCD_VERSIONS", "3.4.23 3.5.0 3.5.1");
    let v = json(&sb.etcdimg(&["settings", "--arch", "amd64"]));
    assert_eq!(v["tag"], "3.5.1-3");
    let findings = v["policy_findings"].to_string();
    assert!(
        findings.contains("etcd 3.5.1 is below the production minimum 3.5.6"),
        "{findings}"
    );
    assert!(findings.contains("etcd-io/etcd#13766"), "{findings}");
    assert_eq!(
        v["bundled"],
        serde_json::json!(["3.4.23", "3.5.0", "3.5.1"])
    );
    assert_eq!(v["image"], "example.com/k8s/etcd:3.5.1-3-linux-amd64");
    let v = json(&sb.etcdimg(&["settings", "--revision", "9"]));
    assert_eq!(v["tag"], "3.5.1-9", "a flag beats the environment");
}

/// A registry that demands the bearer-token flow: `/v2/` answers 401 with a Bearer challenge,
/// the realm hands out a token for the requested scope, and manifests and blobs need it.
/// docker-registry's token auth needs a separate token service, so a proxy in front of the
/// real registry plays both parts (challenge and token); what is pulled comes from the real
/// registry. Anonymous pulls without the proxy are tested above.
#[test]
fn base_pull_follows_the_bearer_token_flow() {
    let t = "base_pull_follows_the_bearer_token_flow";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["python3", "skopeo", "docker-registry"]) {
        return;
    }
    let layout = fx.join("busybox-oci");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let top = index["manifests"][0].clone();
    let real = registry();
    push_base(&fx, &real);
    let seen_scope = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = seen_scope.clone();
    let server = FaultProxy::start(real.port, move |req: &ProxyRequest| {
        if req.path.starts_with("/token") {
            *seen.lock().unwrap() = req.path.clone();
            let body = br#"{"token":"good-token","expires_in":300}"#;
            return Fault::Respond(http_response(
                "200 OK",
                &[
                    ("Content-Type", "application/json".into()),
                    ("Content-Length", body.len().to_string()),
                ],
                body,
            ));
        }
        if req.header("authorization") == Some("Bearer good-token") {
            return Fault::Forward;
        }
        let host = req.header("host").unwrap_or_default();
        let challenge = format!(
            r#"Bearer realm="http://{host}/token",service="test-registry",scope="repository:library/busybox:pull""#
        );
        Fault::Respond(http_response(
            "401 Unauthorized",
            &[
                ("WWW-Authenticate", challenge),
                ("Content-Length", "0".into()),
            ],
            b"",
        ))
    });
    let mirror = http_mirror(&fx.join("mirror"));
    let mut sb = Sandbox::new();
    let registry = format!("127.0.0.1:{}", server.port);
    sb.set(
        "ETCD_RELEASE_URL",
        format!("http://127.0.0.1:{}", mirror.port),
    )
    .set("BASEIMAGE", format!("{registry}/library/busybox:1.35"));
    let out_dir = sb.path().join("out");
    let out = sb.etcdimg(&[
        "build",
        "--json",
        "--insecure-registry",
        &registry,
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert_success(&out);
    assert!(
        seen_scope.lock().unwrap().contains("scope=repository"),
        "the token was requested with a scope: {}",
        seen_scope.lock().unwrap()
    );
    let report = json(&out);
    let raw: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout.join("blobs/sha256").join(
                top["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    let amd64 = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap();
    assert_eq!(report["base_digest"], amd64["digest"]);

    // Without --insecure-registry the plain-HTTP registry is not silently used.
    let mut sb = Sandbox::new();
    sb.set(
        "ETCD_RELEASE_URL",
        format!("http://127.0.0.1:{}", mirror.port),
    )
    .set("BASEIMAGE", format!("{registry}/library/busybox:1.35"));
    let out = sb.etcdimg(&["build", "--output", sb.path().join("out").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--insecure-registry"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn fetch_installs_verified_release_binaries_and_refuses_a_corrupt_one() {
    let t = "fetch_installs_verified_release_binaries_and_refuses_a_corrupt_one";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["python3"]) {
        return;
    }
    let mut sb = Sandbox::new();
    let mirror_dir = mirror_copy(&fx, sb.path());
    let mirror = http_mirror(&mirror_dir);
    sb.set(
        "ETCD_RELEASE_URL",
        format!("http://127.0.0.1:{}", mirror.port),
    );
    let bin = sb.path().join("bin");
    let bin_s = bin.display().to_string();
    let out = sb.etcdimg(&[
        "fetch",
        "--arch",
        "amd64",
        "--versions",
        "3.4.23,3.5.1",
        "--bin-dir",
        &bin_s,
        "--json",
    ]);
    assert_success(&out);
    let fetched = json(&out);
    assert_eq!(fetched.as_array().unwrap().len(), 2);
    for (name, version) in [
        ("etcd", "3.4.23"),
        ("etcdctl", "3.4.23"),
        ("etcd", "3.5.1"),
        ("etcdctl", "3.5.1"),
        ("etcdutl", "3.5.1"),
    ] {
        let path = bin.join(format!("{name}-{version}"));
        let arg = if name == "etcdutl" {
            "version"
        } else {
            "--version"
        };
        let o = std::process::Command::new(&path).arg(arg).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(text.contains(version), "{}: {text}", path.display());
    }
    // The same bytes as upstream's: each sha256 is what SHA256SUMS lists.
    for f in fetched.as_array().unwrap() {
        let v = f["version"].as_str().unwrap();
        let sums = std::fs::read_to_string(mirror_dir.join(format!("v{v}/SHA256SUMS"))).unwrap();
        assert!(sums.contains(f["sha256"].as_str().unwrap()), "{v}");
    }
    // A corrupted tarball: refused, and nothing installed for it.
    let amd = mirror_dir.join("v3.5.0/etcd-v3.5.0-linux-amd64.tar.gz");
    flip_byte(&amd, 5000);
    let out = sb.etcdimg(&["fetch", "--versions", "3.5.0", "--bin-dir", &bin_s]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
    assert!(!bin.join("etcd-3.5.0").exists());
}

/// Base layers are streamed from a real registry into the cache. A proxy in front of it cuts
/// the first response mid-body (retried from the start, then the build succeeds), or sends
/// other bytes of the right length, or more bytes than the manifest lists: those fail
/// naming the blob, and the layer never enters the cache (no temp file is left either).
#[test]
fn base_layer_pulls_retry_a_cut_body_and_refuse_wrong_or_oversized_bytes() {
    let t = "base_layer_pulls_retry_a_cut_body_and_refuse_wrong_or_oversized_bytes";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["python3", "skopeo", "docker-registry"]) {
        return;
    }
    let layout = fx.join("busybox-oci");
    let blob = |digest: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let top: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let amd64 = top["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(amd64["digest"].as_str().unwrap())).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer_bytes = blob(&layer);
    let real = registry();
    push_base(&fx, &real);
    let mirror = http_mirror(&fx.join("mirror"));

    for case in ["cut", "wrong", "long"] {
        let (needle, bytes) = (format!("/blobs/{layer}"), layer_bytes.clone());
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = answered.clone();
        let proxy = FaultProxy::start(real.port, move |req: &ProxyRequest| {
            if req.method != "GET" || !req.path.ends_with(&needle) {
                return Fault::Forward;
            }
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let full = [("Content-Length", bytes.len().to_string())];
            match case {
                "cut" if n == 0 => {
                    let mut r = http_response("200 OK", &full, &[]);
                    r.extend_from_slice(&bytes[..bytes.len() / 2]);
                    Fault::Respond(r)
                }
                "wrong" => {
                    let mut other = bytes.clone();
                    other[bytes.len() / 2] ^= 0xff;
                    Fault::Respond(http_response("200 OK", &full, &other))
                }
                "long" => {
                    let mut more = bytes.clone();
                    more.extend_from_slice(&[0u8; 4096]);
                    let len = [("Content-Length", more.len().to_string())];
                    Fault::Respond(http_response("200 OK", &len, &more))
                }
                _ => Fault::Forward,
            }
        });
        let host = format!("127.0.0.1:{}", proxy.port);
        let mut sb = Sandbox::new();
        sb.set(
            "ETCD_RELEASE_URL",
            format!("http://127.0.0.1:{}", mirror.port),
        )
        .set("BASEIMAGE", format!("{host}/library/busybox:1.35"))
        .set("ETCDIMG_HTTP_RETRY_DELAY_MS", "10");
        let out_dir = sb.path().join("out");
        let out = sb.etcdimg(&[
            "build",
            "--insecure-registry",
            &host,
            "--output",
            out_dir.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        let cached = sb
            .cache()
            .join("blobs/sha256")
            .join(layer.trim_start_matches("sha256:"));
        let tmp: Vec<_> = std::fs::read_dir(sb.cache().join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "{case}: a temp file was left in the cache");
        if case == "cut" {
            assert_success(&out);
            assert!(
                err.contains("GET blob") && err.contains("retrying"),
                "{err}"
            );
            assert!(answered.load(std::sync::atomic::Ordering::SeqCst) >= 2);
            assert_eq!(
                sha256_of(&cached),
                layer.trim_start_matches("sha256:"),
                "the cached layer is the registry's"
            );
            continue;
        }
        assert!(!out.status.success(), "{case}: {err}");
        let expect = if case == "wrong" {
            "digest mismatch"
        } else {
            "more than the"
        };
        assert!(
            err.contains(expect) && err.contains("busybox"),
            "{case}: {err}"
        );
        assert!(
            !cached.exists(),
            "{case}: the refused layer entered the cache"
        );
        assert!(
            !out_dir.join("index.json").exists() || {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).unwrap())
                        .unwrap();
                v["manifests"].as_array().is_none_or(|a| a.is_empty())
            }
        );
    }
}

fn sha256_of(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    stdout(&out)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn migrate_carries_its_crate_list_unless_told_not_to() {
    let t = "migrate_carries_its_crate_list_unless_told_not_to";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["python3", "cargo-auditable"]) {
        return;
    }
    let mirror = http_mirror(&fx.join("mirror"));
    let migrate_of = |out: &std::process::Output| -> serde_json::Value {
        let v = json(out);
        let binaries = v["binaries"].as_array().unwrap().clone();
        binaries
            .into_iter()
            .find(|b| b["path"] == "usr/local/bin/migrate")
            .unwrap_or_else(|| panic!("no migrate in {v}"))
    };
    // By default (cargo-auditable on PATH): the build record lists migrate's crates.
    let mut sb = Sandbox::new();
    sb.local_sources(&fx, &mirror);
    let out = sb.etcdimg(&["build", "--arch", "amd64", "--json"]);
    assert_success(&out);
    let migrate = migrate_of(&out);
    assert_eq!(migrate["rust"]["root"]["name"], "migrate", "{migrate}");
    assert!(migrate["rust"]["crates"].as_array().unwrap().len() > 20);
    assert!(migrate.get("go").is_none());

    // `migrate.auditable = false`: built by plain cargo, no crate list, and no cargo-auditable
    // needed.
    let config = std::fs::read_to_string(repo_root().join("images.toml"))
        .unwrap()
        .replace(
            "source_dir = \"migrate\"",
            &format!(
                "source_dir = \"{}\"\nauditable = false",
                repo_root().join("migrate").display()
            ),
        );
    assert!(config.contains("auditable = false"));
    let mut sb = Sandbox::new();
    sb.use_config(&config)
        .local_sources(&fx, &mirror)
        .set("ETCD_VERSION", "3.5.1")
        .set("BUNDLED_ETCD_VERSIONS", "3.4.23 3.5.1")
        .set("ETCDIMG_CARGO_AUDITABLE", "/nonexistent/cargo-auditable");
    let out = sb.etcdimg(&["build", "--arch", "amd64", "--json"]);
    assert_success(&out);
    let migrate = migrate_of(&out);
    assert!(migrate.get("rust").is_none(), "{migrate}");

    // And back: cargo's own fingerprints do not tell the two builds apart, so neither may
    // hand its binary to the other.
    let mut sb = Sandbox::new();
    sb.local_sources(&fx, &mirror);
    let out = sb.etcdimg(&["build", "--arch", "amd64", "--json"]);
    assert_success(&out);
    assert_eq!(migrate_of(&out)["rust"]["root"]["name"], "migrate");
}
