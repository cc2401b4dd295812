//! etcd from its Go modules (`source = "module"`), against the module proxy directory that
//! scripts/fixtures.sh filled (GOPROXY=file://..., the checksum database's tiles beside it): the
//! binaries are those of a plain `go build` of the release's tree, identical whatever the cache
//! dir, stamped as etcd's release builds stamp them; a version or module the proxy does not
//! serve, a tampered module and an unusable toolchain fail before anything is compiled; the
//! cached tree is re-checked; and images cross-built this way pass `etcdimg test` under qemu.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

fn ready(t: &str) -> Option<PathBuf> {
    let fx = fixtures(t)?;
    require(t, "go").then_some(fx)
}

/// `etcdimg --json fetch --source module` of `versions` for `arch` into `<sandbox>/<dir>`.
fn fetch(sb: &Sandbox, arch: &str, versions: &str, dir: &str) -> Output {
    let bin = sb.path().join(dir);
    sb.etcdimg(&[
        "--json",
        "fetch",
        "--source",
        "module",
        "--arch",
        arch,
        "--versions",
        versions,
        "--bin-dir",
        bin.to_str().unwrap(),
    ])
}

fn sha256(path: &Path) -> String {
    etcdimg::fetch::cache::sha256_file(path).unwrap()
}

/// What `go mod download -json M@V` says the module's h1 sum is (the go command's word, not
/// ours), through the tests' module environment.
fn go_sum(module: &str, version: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("go");
    cmd.args(["mod", "download", "-json", &format!("{module}@{version}")])
        .current_dir(scratch.path())
        .env("GOWORK", "off");
    for (k, v) in go_module_env() {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    json(&out)["Sum"].as_str().unwrap().to_string()
}

#[test]
fn a_module_build_is_the_same_from_any_cache_dir_and_stamped_like_a_release() {
    let t = "a_module_build_is_the_same_from_any_cache_dir_and_stamped_like_a_release";
    let Some(fx) = ready(t) else { return };
    let v36 = newest_fixture(&fx, 6);
    let sb = Sandbox::new();
    let out = fetch(&sb, "amd64", &v36.to_string(), "bin");
    assert_success(&out);
    let r = json(&out);
    let c = &r[0]["compile"];
    assert_eq!(c["mode"], "modules", "{c}");
    assert_eq!(r[0]["source"], "module");
    // guards: two runs with different cache dirs (the fixtures' and this sandbox's, so the tree
    // sat at different paths) must give the same bytes.
    for name in ["etcd", "etcdctl", "etcdutl"] {
        let ours = sb.path().join(format!("bin/{name}-{v36}"));
        let theirs = fx.join(format!("bin/{name}-{v36}"));
        assert_eq!(sha256(&ours), sha256(&theirs), "{name} differs");
    }
    // The tree is the release's modules at the sums the go command verified.
    let modules = c["modules"].as_array().unwrap();
    let dirs: Vec<&str> = modules.iter().map(|m| m["dir"].as_str().unwrap()).collect();
    for want in [
        "server",
        "etcdctl",
        "etcdutl",
        "api",
        "pkg",
        "client/pkg",
        "client/v3",
    ] {
        assert!(dirs.contains(&want), "{want} missing: {dirs:?}");
    }
    for m in modules {
        let (path, version) = (m["path"].as_str().unwrap(), m["version"].as_str().unwrap());
        assert_eq!(m["sum"].as_str().unwrap(), go_sum(path, version), "{path}");
    }
    // Stamped as etcd's release builds are (scripts/build-binary.sh, build_lib.sh).
    let etcd = sb.path().join(format!("bin/etcd-{v36}"));
    let info = stdout(&run(Command::new("go").args(["version", "-m"]).arg(&etcd)));
    for needle in [
        "path\tgo.etcd.io/etcd/server/v3",
        "build\t-trimpath=true",
        "build\tCGO_ENABLED=0",
        "build\tGOOS=linux",
        "build\tGOARCH=amd64",
    ] {
        assert!(info.contains(needle), "{needle}: {info}");
    }
    // The replaced sibling modules are recorded at the release's version (their sums, which
    // the build info cannot hold for a directory replacement, are in the compile record).
    assert!(
        info.contains(&format!("dep\tgo.etcd.io/etcd/api/v3\tv{v36}")),
        "{info}"
    );
    // The go command leaves -ldflags out of the build info under -trimpath; the record has them.
    assert_eq!(
        c["flags"],
        serde_json::json!([
            "-mod=readonly",
            "-trimpath",
            "-installsuffix=cgo",
            "-ldflags=-s -w -X=go.etcd.io/etcd/api/v3/version.GitSHA=GitNotFound"
        ])
    );
    let version = stdout(&run(Command::new(&etcd).arg("--version")));
    assert!(
        version.contains(&format!("etcd Version: {v36}")),
        "{version}"
    );
    // No Git SHA is known from module zips: said the way etcd's build says it.
    assert!(version.contains("Git SHA: GitNotFound"), "{version}");
    // Static: no program interpreter.
    let headers = stdout(&run(Command::new("readelf").arg("-lW").arg(&etcd)));
    assert!(!headers.contains("INTERP"), "{headers}");

    // A second run compiles nothing; a cached tree whose files changed is assembled again.
    let again = fetch(&sb, "amd64", &v36.to_string(), "bin2");
    assert_success(&again);
    assert_eq!(json(&again)[0]["downloaded"], false);
    let tree = std::fs::read_dir(sb.cache().join("sources"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(tree.join("server/main.go"), "package main // tampered\n").unwrap();
    let third = fetch(&sb, "amd64", &v36.to_string(), "bin3");
    assert_success(&third);
    assert!(
        stderr(&third).contains("no longer matches its module sums"),
        "{}",
        stderr(&third)
    );
    assert_eq!(
        sha256(&sb.path().join(format!("bin3/etcd-{v36}"))),
        sha256(&etcd)
    );
}

#[test]
fn a_version_the_proxy_does_not_serve_fails_before_anything_is_built() {
    let t = "a_version_the_proxy_does_not_serve_fails_before_anything_is_built";
    let Some(fx) = ready(t) else { return };
    let v36 = newest_fixture(&fx, 6);
    let sb = Sandbox::new();
    let out = fetch(&sb, "amd64", &format!("{v36} 3.6.99"), "bin");
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in [
        "`go.etcd.io/etcd/server/v3@v3.6.99` is not available from the Go module proxy",
        "GOPROXY=file://",
        "hint: check that your proxy serves it",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("Compiling"), "{err}");
    assert!(
        !sb.path().join("bin").join(format!("etcd-{v36}")).exists(),
        "{v36} was built although 3.6.99 could not be"
    );
    let refs = sb.cache().join("refs/gobuild");
    assert!(
        !refs.exists() || std::fs::read_dir(&refs).unwrap().next().is_none(),
        "a compile entered the cache"
    );
    // 3.4 was never published as modules with release versions.
    let out = fetch(&sb, "amd64", "3.4.23", "bin");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not published as Go modules"),
        "{}",
        stderr(&out)
    );
}

/// A GOPROXY directory holding only `module@version` with `file` in its zip changed, listed
/// before the fixtures' proxy (the go command falls back on "not found").
fn tampered_proxy(dir: &Path, module: &str, version: &str, file: &str) -> String {
    let from = go_mod_cache()
        .join("cache/download")
        .join(module)
        .join("@v");
    let to = dir.join(module).join("@v");
    std::fs::create_dir_all(&to).unwrap();
    for ext in ["info", "mod"] {
        std::fs::copy(
            from.join(format!("{version}.{ext}")),
            to.join(format!("{version}.{ext}")),
        )
        .unwrap();
    }
    std::fs::write(to.join("list"), format!("{version}\n")).unwrap();
    let script = r#"
import sys, zipfile
src, dst, name = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
    for i in a.infolist():
        data = a.read(i)
        if i.filename.endswith("/" + name):
            data += b"\n# changed by an attacker\n"
        b.writestr(i, data)
"#;
    run(Command::new("python3")
        .args(["-c", script])
        .arg(from.join(format!("{version}.zip")))
        .arg(to.join(format!("{version}.zip")))
        .arg(file));
    format!(
        "file://{},file://{}",
        dir.display(),
        go_mod_cache().join("cache/download").display()
    )
}

#[test]
fn the_checksum_database_refuses_a_tampered_module_unless_the_user_says_otherwise() {
    let t = "the_checksum_database_refuses_a_tampered_module_unless_the_user_says_otherwise";
    let Some(fx) = ready(t) else { return };
    let v36 = newest_fixture(&fx, 6);
    let proxy_dir = tempfile::tempdir().unwrap();
    let module = "go.etcd.io/etcd/etcdutl/v3";
    let proxy = tampered_proxy(proxy_dir.path(), module, &format!("v{v36}"), "LICENSE");
    let mut sb = Sandbox::new();
    let modcache = sb.path().join("gomod");
    sb.set("GOPROXY", proxy)
        .set("GOMODCACHE", modcache.display().to_string())
        .set("GOFLAGS", "-modcacherw");
    let out = fetch(&sb, "amd64", &v36.to_string(), "bin");
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in [
        format!("`{module}@v{v36}`"),
        "checksum mismatch".to_string(),
    ] {
        assert!(err.contains(&needle), "{needle}: {err}");
    }
    assert!(!err.contains("Compiling"), "{err}");
    // GONOSUMDB (like GOPRIVATE) tells the go command to trust the proxy for that module: the
    // user's setting reaches it (a later unserved version stops the run before any compile).
    sb.set("GONOSUMDB", "go.etcd.io/etcd/etcdutl");
    let out = fetch(&sb, "amd64", &format!("{v36} 3.6.99"), "bin");
    let err = stderr(&out);
    assert!(!err.contains("checksum mismatch"), "{err}");
    assert!(
        err.contains(&format!("Assembling etcd {v36} source tree")),
        "{err}"
    );
    assert!(err.contains("server/v3@v3.6.99"), "{err}");
}

#[test]
fn the_toolchain_gotoolchain_names_is_the_one_that_builds() {
    let t = "the_toolchain_gotoolchain_names_is_the_one_that_builds";
    let Some(fx) = ready(t) else { return };
    let v36 = newest_fixture(&fx, 6);
    let mut sb = Sandbox::new();
    // A Go the proxy does not have: the go command cannot switch to it, and says so.
    sb.set("GOTOOLCHAIN", "go1.99.0");
    let out = fetch(&sb, "amd64", &v36.to_string(), "bin");
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in [
        "the local Go toolchain does not work",
        "go1.99.0",
        "GOTOOLCHAIN",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("Compiling"), "{err}");
    // `auto`: the release's own toolchain line decides, in the tree; that Go is not on the
    // tests' proxy, and the error names it.
    let gomod = go_mod_cache().join(format!("go.etcd.io/etcd/server/v3@v{v36}/go.mod"));
    let wanted = std::fs::read_to_string(&gomod)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("toolchain ").map(str::to_string))
        .expect("etcd's go.mod names a toolchain");
    sb.set("GOTOOLCHAIN", "auto");
    let out = fetch(&sb, "amd64", &v36.to_string(), "bin");
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in ["is not usable", &wanted, "hint: the release's go.mod"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("Compiling"), "{err}");
}

/// images.toml for module-built images of `arches` bundling `bundled`.
fn module_project(sb: &mut Sandbox, fx: &Path, arch: &str, bundled: &[String]) {
    let latest = bundled.last().unwrap();
    let list = bundled
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        r#"[etcd]
latest = "{latest}"
bundled = [{list}]
release_url = "http://127.0.0.1:9"

[image]
arches = ["{arch}"]
base = "oci:{}:1.35"

[arch.{arch}]
source = "module"

[migrate]
source_dir = "{}"
"#,
        fx.join("busybox-oci").display(),
        repo_root().join("migrate").display()
    );
    sb.use_config(&config);
}

/// arm64, ppc64le and s390x images of current etcd, cross-compiled from its modules with no
/// release tarball anywhere (the release URL is dead), pass `etcdimg test` under qemu-user: the
/// bundled binaries report their version and arch, and arm64's migrate upgrades 3.5 data to
/// 3.6 with the image's own etcd.
#[test]
fn module_built_foreign_images_pass_etcdimg_test_under_qemu() {
    let t = "module_built_foreign_images_pass_etcdimg_test_under_qemu";
    let Some(fx) = ready(t) else { return };
    let tools = [
        "qemu-aarch64-static",
        "qemu-ppc64le-static",
        "qemu-s390x-static",
    ];
    if !tools.iter().all(|q| require(t, q)) {
        return;
    }
    let (v35, v36) = (newest_fixture(&fx, 5), newest_fixture(&fx, 6));
    for (arch, bundled, migration) in [
        (
            "arm64",
            vec![v35.to_string(), v36.to_string()],
            format!("{v35} -> {v36}"),
        ),
        ("ppc64le", vec![v36.to_string()], format!("{v36} -> {v36}")),
        // s390x migrate under qemu upgrades big-endian data that s390x etcd wrote.
        (
            "s390x",
            vec![v35.to_string(), v36.to_string()],
            format!("{v35} -> {v36}"),
        ),
    ] {
        let mut sb = Sandbox::new();
        module_project(&mut sb, &fx, arch, &bundled);
        let out = sb.etcdimg(&["build", "--arch", arch, "--json"]);
        assert_success(&out);
        let r = json(&out);
        assert!(
            r["tarballs"].as_array().unwrap().is_empty(),
            "{arch}: a tarball"
        );
        for c in r["compiles"].as_array().unwrap() {
            assert_eq!(c["mode"], "modules", "{arch}: {c}");
            assert!(
                c["toolchain"].as_str().unwrap().starts_with("go go1."),
                "{c}"
            );
        }
        // The Go build info etcdimg read is what `go version -m` reads, dependencies and
        // sums included, on every arch (s390x: big-endian).
        let rootfs = umoci_unpack(
            &sb.path().join("oci"),
            &format!("{v36}-0-linux-{arch}"),
            &sb.path().join("unpacked"),
        );
        assert!(check_build_info(&rootfs, &r["binaries"]) >= 3, "{arch}");
        let res = sb.etcdimg(&["test", "--arch", arch, "--json"]);
        assert_success(&res);
        let v = json(&res);
        let checks = v[0]["checks"].as_array().unwrap();
        let failed: Vec<&Value> = checks.iter().filter(|c| c["ok"] != true).collect();
        assert!(failed.is_empty(), "{arch}: {failed:?}");
        let detail = |name: &str| {
            checks
                .iter()
                .find(|c| c["name"] == name)
                .and_then(|c| c["detail"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            detail("migration").starts_with(&migration),
            "{arch}: {}",
            detail("migration")
        );
        // Each bundled binary ran under qemu and reported its version (and linux/<arch>,
        // which binary::check_version requires).
        assert!(
            detail(&format!("etcd-{v36}")).starts_with(&format!("reports {v36}")),
            "{arch}: {}",
            detail(&format!("etcd-{v36}"))
        );
    }
}
