//! Cross-building etcd from source: Debian's etcd 3.4.23 source (golang-etcd-server-dev, GOPATH
//! layout) compiled by Debian's Go for arm64, ppc64le, s390x and arm, run under qemu-user, and
//! checked with skopeo and umoci (which we did not write).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const GOPATH: &str = "/usr/share/gocode";
const SOURCE: &str = "/usr/share/gocode/src/go.etcd.io/etcd";

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

/// Skips (or fails under ETCDIMG_TEST_REQUIRE=all) without the tools and Debian's source.
fn ready(t: &str, tools: &[&str]) -> Option<PathBuf> {
    let fx = fixtures(t)?;
    if !tools.iter().all(|tool| require(t, tool)) {
        return None;
    }
    if !Path::new(SOURCE).join("version/version.go").is_file() {
        if std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() == Ok("all") {
            panic!("{t}: {SOURCE} missing; run scripts/install-deps.sh (golang-etcd-server-dev)");
        }
        eprintln!("skipping {t}: {SOURCE} missing");
        return None;
    }
    Some(fx)
}

/// images.toml: etcd 3.4.23 only, built from Debian's source for the `build` arches.
fn project(
    sb: &mut Sandbox,
    fx: &Path,
    mirror: Option<u16>,
    arches: &[&str],
    release: &[&str],
    extra: &str,
) {
    let list = arches
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sections = String::new();
    for a in arches {
        let source = if release.contains(a) {
            "release"
        } else {
            "build"
        };
        sections.push_str(&format!("[arch.{a}]\nsource = \"{source}\"\n"));
    }
    let config = format!(
        r#"[etcd]
latest = "3.4.23"
bundled = ["3.4.23"]
release_url = "http://127.0.0.1:{}"

[image]
arches = [{list}]
base = "oci:{}:1.35"

{sections}
[migrate]
source_dir = "{}"

[build]
{extra}

[build.source."3.4.23"]
dir = "{SOURCE}"
gopath = "{GOPATH}"
"#,
        mirror.unwrap_or(9),
        fx.join("busybox-oci").display(),
        repo_root().join("migrate").display()
    );
    sb.use_config(&config);
}

fn qemu(arch: &str) -> &'static str {
    match arch {
        "arm64" => "qemu-aarch64-static",
        "ppc64le" => "qemu-ppc64le-static",
        "s390x" => "qemu-s390x-static",
        "arm" => "qemu-arm-static",
        _ => panic!("{arch}"),
    }
}

/// ELF e_machine of a file (None if not ELF).
fn elf_machine(path: &Path) -> Option<u16> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 20 || &b[..4] != b"\x7fELF" {
        return None;
    }
    Some(if b[5] == 1 {
        u16::from_le_bytes([b[18], b[19]])
    } else {
        u16::from_be_bytes([b[18], b[19]])
    })
}

fn machine_for(arch: &str) -> u16 {
    match arch {
        "amd64" => 62,
        "arm64" => 183,
        "ppc64le" => 21,
        "s390x" => 22,
        "arm" => 40,
        _ => panic!("{arch}"),
    }
}

#[test]
fn cross_built_ppc64le_and_arm64_images_run_under_qemu() {
    let t = "cross_built_ppc64le_and_arm64_images_run_under_qemu";
    let Some(fx) = ready(
        t,
        &[
            "go",
            "umoci",
            "skopeo",
            "qemu-ppc64le-static",
            "qemu-aarch64-static",
        ],
    ) else {
        return;
    };
    let mut sb = Sandbox::new();
    project(&mut sb, &fx, None, &["ppc64le", "arm64"], &[], "");
    for arch in ["ppc64le", "arm64"] {
        let out = sb.etcdimg(&["build", "--arch", arch, "--json"]);
        assert_success(&out);
        let r = json(&out);
        let c = &r["compiles"][0];
        assert_eq!(c["version"], "3.4.23");
        assert_eq!(c["mode"], "gopath");
        assert_eq!(c["builder"], "go");
        assert_eq!(c["compiled"], true, "{r}");
        assert!(
            r["tarballs"].as_array().unwrap().is_empty(),
            "nothing downloaded"
        );
        assert!(
            c["flags"]
                .to_string()
                .contains("-X go.etcd.io/etcd/version.GitSHA="),
            "{c}"
        );

        let reference = format!("3.4.23-0-linux-{arch}");
        let config = run(Command::new("skopeo").args([
            "inspect",
            "--config",
            &format!("oci:{}:{reference}", sb.path().join("oci").display()),
        ]));
        let config: Value = serde_json::from_slice(&config.stdout).unwrap();
        assert_eq!(config["architecture"], arch);

        let rootfs = umoci_unpack(
            &sb.path().join("oci"),
            &reference,
            &sb.path().join(format!("u-{arch}")),
        );
        let bin = rootfs.join("usr/local/bin");
        let etcd = run(Command::new(qemu(arch))
            .arg(bin.join("etcd"))
            .arg("--version"));
        let text = stdout(&etcd);
        assert!(text.contains("etcd Version: 3.4.23"), "{text}");
        assert!(
            text.contains(&format!("Go OS/Arch: linux/{arch}")),
            "{text}"
        );
        let ctl = run(Command::new(qemu(arch))
            .arg(bin.join("etcdctl-3.4.23"))
            .arg("version")
            .env("ETCDCTL_API", "3"));
        assert!(
            stdout(&ctl).contains("etcdctl version: 3.4.23"),
            "{}",
            stdout(&ctl)
        );
        let migrate = run(Command::new(qemu(arch))
            .arg(bin.join("migrate"))
            .arg("--version"));
        assert!(
            stdout(&migrate).starts_with("migrate "),
            "{}",
            stdout(&migrate)
        );
        for name in ["etcd", "etcdctl", "migrate"] {
            assert_eq!(
                elf_machine(&bin.join(name)),
                Some(machine_for(arch)),
                "{arch} {name}"
            );
        }
    }
}

/// A unified diff of `version/version.go` that sets the version to `to`.
fn version_patch(to: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let original = Path::new(SOURCE).join("version/version.go");
    let text = std::fs::read_to_string(&original).unwrap();
    let changed = text.replace(
        "Version           = \"3.4.23\"",
        &format!("Version           = \"{to}\""),
    );
    assert_ne!(text, changed, "version.go has the expected line");
    let modified = dir.path().join("version.go");
    std::fs::write(&modified, changed).unwrap();
    let out = Command::new("diff")
        .args([
            "-u",
            "--label",
            "a/version/version.go",
            "--label",
            "b/version/version.go",
        ])
        .arg(&original)
        .arg(&modified)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn gobuild_refs(sb: &Sandbox) -> usize {
    std::fs::read_dir(sb.cache().join("refs/gobuild"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

#[test]
fn a_patch_changes_the_build_and_a_broken_patch_fails_clearly() {
    let t = "a_patch_changes_the_build_and_a_broken_patch_fails_clearly";
    let Some(fx) = ready(t, &["go", "umoci", "patch", "diff"]) else {
        return;
    };
    let mut sb = Sandbox::new();
    let patches = sb.path().join("my-patches");
    project(
        &mut sb,
        &fx,
        None,
        &["amd64"],
        &[],
        &format!("patches_dir = \"{}\"", patches.display()),
    );
    let out = sb.etcdimg(&["build", "--arch", "amd64", "--json"]);
    assert_success(&out);
    let plain = json(&out);
    let plain_key = plain["compiles"][0]["key"].as_str().unwrap().to_string();
    assert!(plain["compiles"][0]["patches"]
        .as_array()
        .unwrap()
        .is_empty());

    std::fs::create_dir_all(patches.join("3.4.23")).unwrap();
    std::fs::write(
        patches.join("3.4.23/0001-mark-the-build.patch"),
        version_patch("3.4.23+etcdimg.patched"),
    )
    .unwrap();
    let out = sb.etcdimg(&["build", "--arch", "amd64", "--json"]);
    assert_success(&out);
    let patched = json(&out);
    let c = &patched["compiles"][0];
    assert_ne!(
        c["key"],
        plain_key.as_str(),
        "the patch is part of the cache key"
    );
    assert_eq!(c["compiled"], true);
    assert_eq!(c["patches"][0], "0001-mark-the-build.patch");
    assert_ne!(patched["manifest_digest"], plain["manifest_digest"]);
    let rootfs = umoci_unpack(
        &sb.path().join("oci"),
        "3.4.23-0-linux-amd64",
        &sb.path().join("u"),
    );
    let v = run(Command::new(rootfs.join("usr/local/bin/etcd")).arg("--version"));
    assert!(
        stdout(&v).contains("etcd Version: 3.4.23+etcdimg.patched"),
        "{}",
        stdout(&v)
    );
    // The source tree itself was not touched.
    let original = std::fs::read_to_string(Path::new(SOURCE).join("version/version.go")).unwrap();
    assert!(original.contains("Version           = \"3.4.23\""));

    // A patch whose context does not match: a clear error naming it and its hunk, and nothing
    // new in the build cache.
    let refs = gobuild_refs(&sb);
    let broken = version_patch("3.4.23+x").replace("MinClusterVersion", "MinClusterVersionX");
    std::fs::write(patches.join("3.4.23/0002-broken.patch"), broken).unwrap();
    let out = sb.etcdimg(&["build", "--arch", "amd64"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("patch `") && err.contains("0002-broken.patch` does not apply to etcd 3.4.23"),
        "{err}"
    );
    assert!(err.contains("Hunk #1 FAILED"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(gobuild_refs(&sb), refs);
}

#[test]
fn all_build_five_arches_into_one_index_then_again_compiles_nothing() {
    let t = "all_build_five_arches_into_one_index_then_again_compiles_nothing";
    let Some(fx) = ready(
        t,
        &[
            "go",
            "umoci",
            "skopeo",
            "python3",
            "qemu-s390x-static",
            "qemu-arm-static",
        ],
    ) else {
        return;
    };
    let mirror = http_mirror(&fx.join("mirror"));
    let mut sb = Sandbox::new();
    let arches = ["amd64", "arm64", "ppc64le", "s390x", "arm"];
    project(&mut sb, &fx, Some(mirror.port), &arches, &["amd64"], "");
    let out = sb.etcdimg(&["all-build", "--json"]);
    assert_success(&out);
    let first = json(&out);
    assert_eq!(first["compiled"], 4, "{}", stderr(&out));
    let layout = sb.path().join("oci");

    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci:{}:3.4.23-0", layout.display()),
    ]));
    let index: Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!("{}/{}", p["os"], p["architecture"]).replace('"', "");
            if let Some(v) = p.get("variant") {
                s = format!("{s}/{}", v.as_str().unwrap());
            }
            s
        })
        .collect();
    assert_eq!(
        platforms,
        [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/ppc64le",
            "linux/s390x",
            "linux/arm/v7"
        ]
    );
    for arch in arches {
        let rootfs = umoci_unpack(
            &layout,
            &format!("3.4.23-0-linux-{arch}"),
            &sb.path().join(format!("u-{arch}")),
        );
        let bin = rootfs.join("usr/local/bin");
        let mut checked = 0;
        for e in std::fs::read_dir(&bin).unwrap().flatten() {
            if let Some(m) = elf_machine(&e.path()) {
                assert_eq!(m, machine_for(arch), "{arch}: {}", e.path().display());
                checked += 1;
            }
        }
        assert!(
            checked >= 5,
            "{arch}: etcd, etcdctl (+ versioned names) and migrate: {checked}"
        );
        // The Go build info etcdimg read (no Go toolchain; s390x is big-endian, arm 32-bit)
        // is what `go version -m` reads from the same files.
        let image = first["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["arch"] == arch)
            .unwrap();
        let compared = check_build_info(&rootfs, &image["binaries"]);
        assert!(
            compared >= 2,
            "{arch}: {compared} binaries with Go build info"
        );
        for b in image["binaries"].as_array().unwrap() {
            if !b["go"].is_null() {
                assert_eq!(b["go"]["settings"]["GOARCH"], arch, "{b}");
            }
        }
    }

    // Again: nothing compiled, the same index.
    let out = sb.etcdimg(&["all-build", "--json"]);
    assert_success(&out);
    let again = json(&out);
    assert_eq!(again["compiled"], 0);
    assert_eq!(again["index_digest"], first["index_digest"]);
    for img in again["images"].as_array().unwrap() {
        for c in img["compiles"].as_array().unwrap() {
            assert_eq!(c["compiled"], false, "{c}");
        }
    }
    assert!(!stderr(&out).contains("Compiling"), "{}", stderr(&out));
}

#[test]
fn docker_builder_command_and_missing_builders() {
    let t = "docker_builder_command_and_missing_builders";
    let Some(fx) = ready(t, &[]) else { return };
    let mut sb = Sandbox::new();
    project(
        &mut sb,
        &fx,
        None,
        &["arm"],
        &[],
        "golang_version = \"1.19.9\"",
    );
    // A recording `docker`: these machines have no Docker engine. It records its argv and
    // exits 0 without producing anything.
    let bin = sb.path().join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = sb.path().join("docker.log");
    let docker = bin.join("docker");
    std::fs::write(
        &docker,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> {}\necho --- >> {}\n",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var("PATH").unwrap();
    sb.set("PATH", format!("{}:{path}", bin.display()));

    let out = sb.etcdimg(&["build", "--arch", "arm", "--builder", "docker"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the docker builder produced no `etcd` for etcd 3.4.23"),
        "{err}"
    );
    let argv: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .take_while(|l| *l != "---")
        .map(String::from)
        .collect();
    let expected: Vec<String> = [
        "run",
        "--rm",
        "-v",
        &format!("{GOPATH}:/gopath:ro"),
        "-v",
        &format!(
            "{}:/out",
            argv.get(5)
                .cloned()
                .unwrap_or_default()
                .trim_end_matches(":/out")
        ),
        "-e",
        "GOOS=linux",
        "-e",
        "GOARCH=arm",
        "-e",
        "CGO_ENABLED=0",
        "-e",
        "GO111MODULE=off",
        "-e",
        "GOFLAGS=",
        "-e",
        "GOARM=7",
        "-e",
        "GOPATH=/gopath",
        "-w",
        "/gopath/src/go.etcd.io/etcd",
        "golang:1.19.9",
        "go",
        "build",
        "-trimpath",
        "-ldflags",
        "-X go.etcd.io/etcd/version.GitSHA=GitNotFound",
        "-o",
        "/out/etcd",
        "go.etcd.io/etcd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(argv, expected);

    // --builder go without Go on PATH, and auto with neither builder: clear errors (migrate's
    // cargo-auditable, checked first, is named by its path).
    if let Some(tool) = which("cargo-auditable") {
        sb.set("ETCDIMG_CARGO_AUDITABLE", tool.display().to_string());
    }
    sb.set("PATH", bin.display().to_string());
    let out = sb.etcdimg(&["build", "--arch", "arm", "--builder", "go"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("`go` is not on PATH"), "{err}");
    assert!(err.contains("apt-get install golang-go"), "{err}");
    std::fs::remove_file(&docker).unwrap();
    let out = sb.etcdimg(&["build", "--arch", "arm"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("neither `go` nor `docker` is on PATH"),
        "{err}"
    );
    assert!(err.contains("source to \"release\""), "{err}");
}

#[test]
fn a_missing_rust_target_names_the_rustup_command() {
    let t = "a_missing_rust_target_names_the_rustup_command";
    let Some(fx) = ready(t, &["python3"]) else {
        return;
    };
    let mirror = http_mirror(&fx.join("mirror"));
    let mut sb = Sandbox::new();
    project(&mut sb, &fx, Some(mirror.port), &["arm64"], &["arm64"], "");
    // A `rustc` whose sysroot has no targets (what a toolchain without the target looks like).
    let bin = sb.path().join("fake-bin");
    let sysroot = sb.path().join("empty-sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib")).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let rustc = bin.join("rustc");
    std::fs::write(
        &rustc,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --print ]; then echo {}; else echo 'rustc 0.0.0-fake'; fi\n",
            sysroot.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.set(
        "PATH",
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    );
    let out = sb.etcdimg(&["build", "--arch", "arm64"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the Rust target `aarch64-unknown-linux-musl`"),
        "{err}"
    );
    assert!(
        err.contains("rustup target add aarch64-unknown-linux-musl"),
        "{err}"
    );
}

/// Rewrites the `[build.source."3.4.23"]` table of the sandbox's images.toml.
fn set_source(sb: &Sandbox, table: &str) {
    let path = sb.path().join("images.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text
        .split("[build.source.\"3.4.23\"]")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&path, format!("{head}[build.source.\"3.4.23\"]\n{table}\n")).unwrap();
}

#[test]
fn git_and_tarball_sources_build_offline_against_a_dependencies_gopath() {
    let t = "git_and_tarball_sources_build_offline_against_a_dependencies_gopath";
    let Some(fx) = ready(
        t,
        &[
            "go",
            "git",
            "tar",
            "python3",
            "umoci",
            "qemu-aarch64-static",
        ],
    ) else {
        return;
    };
    let mut sb = Sandbox::new();
    project(&mut sb, &fx, None, &["arm64"], &[], "");

    // A git repository holding Debian's etcd source, tagged v3.4.23, cloned over file://.
    let repo = sb.path().join("etcd-repo");
    run(Command::new("cp").args(["-a", SOURCE]).arg(&repo));
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .arg("-C")
            .arg(&repo)
            .args(args))
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "etcd 3.4.23 from Debian"]);
    git(&["tag", "v3.4.23"]);
    let commit = stdout(&git(&["rev-parse", "HEAD"])).trim().to_string();
    set_source(
        &sb,
        &format!("git = \"file://{}\"\ngopath = \"{GOPATH}\"", repo.display()),
    );
    let out = sb.etcdimg(&["build", "--arch", "arm64", "--json"]);
    assert_success(&out);
    let r = json(&out);
    assert_eq!(
        r["compiles"][0]["source"],
        format!("git file://{}", repo.display())
    );
    assert_eq!(r["compiles"][0]["mode"], "gopath");
    let rootfs = umoci_unpack(
        &sb.path().join("oci"),
        "3.4.23-0-linux-arm64",
        &sb.path().join("u-git"),
    );
    let v = run(Command::new(qemu("arm64"))
        .arg(rootfs.join("usr/local/bin/etcd"))
        .arg("--version"));
    assert!(
        stdout(&v).contains(&format!("Git SHA: {}", &commit[..7])),
        "the clone's commit is stamped: {}",
        stdout(&v)
    );

    // The same source as a tarball on a loopback server, pinned by sha256.
    let served = sb.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    run(Command::new("tar")
        .arg("-czf")
        .arg(served.join("etcd-3.4.23.tar.gz"))
        .arg("-C")
        .arg(Path::new(SOURCE).parent().unwrap())
        .arg("--transform=s,^etcd,etcd-3.4.23,")
        .arg("etcd"));
    let digest = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(
            std::fs::read(served.join("etcd-3.4.23.tar.gz")).unwrap(),
        ))
    };
    let server = http_mirror(&served);
    let url = format!("http://127.0.0.1:{}/etcd-3.4.23.tar.gz", server.port);
    set_source(
        &sb,
        &format!(
            "url = \"{url}\"\nsha256 = \"{}\"\ngopath = \"{GOPATH}\"",
            "0".repeat(64)
        ),
    );
    let out = sb.etcdimg(&["build", "--arch", "arm64"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("has sha256 {digest}, expected {}", "0".repeat(64))),
        "{err}"
    );
    set_source(
        &sb,
        &format!("url = \"{url}\"\nsha256 = \"{digest}\"\ngopath = \"{GOPATH}\""),
    );
    let out = sb.etcdimg(&["build", "--arch", "arm64", "--json"]);
    assert_success(&out);
    let r = json(&out);
    assert_eq!(r["compiles"][0]["source"], url);
    assert_eq!(r["compiles"][0]["compiled"], true);
}

#[test]
fn an_interrupted_cross_build_leaves_no_cache_entry() {
    let t = "an_interrupted_cross_build_leaves_no_cache_entry";
    let Some(fx) = ready(t, &["go"]) else { return };
    let mut sb = Sandbox::new();
    project(&mut sb, &fx, None, &["s390x"], &[], "");
    // Start a build and kill -9 it as soon as it starts compiling.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdimg"));
    cmd.args(["build", "--arch", "s390x"])
        .current_dir(sb.path())
        .env("HOME", sb.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    for (k, v) in &sb.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Compiling etcd 3.4.23") {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    assert!(seen.contains("Compiling etcd 3.4.23"), "{seen}");
    assert_eq!(gobuild_refs(&sb), 0, "no build cache entry after the kill");
    // A rerun completes and records the entry.
    let out = sb.etcdimg(&["build", "--arch", "s390x", "--json"]);
    assert_success(&out);
    assert_eq!(json(&out)["compiles"][0]["compiled"], true);
    assert_eq!(gobuild_refs(&sb), 1);
}
