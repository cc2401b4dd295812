//! What scanners see (issue #22): the SPDX release report names, per binary, the Go standard
//! library and every module compiled in, and migrate's Rust crates (from its cargo-auditable
//! list), the same as syft (built from the Go module proxy by scripts/install-deps.sh) finds
//! in the image; the Go policy warns on build and refuses
//! release of binaries built with a Go below a security release, unless allowed and recorded;
//! and a chosen Go (`--go-toolchain go1.27.3`) rebuilds every bundled binary, amd64 included,
//! as the build info then says.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::world::{json, world, World};
use common::*;
use serde_json::Value;

/// (name, version, purl) of a package set.
type Pkg = (String, String, String);

/// Per binary name, what our SPDX document says it CONTAINS.
fn spdx_contents(doc: &Value) -> BTreeMap<String, BTreeSet<Pkg>> {
    let packages: BTreeMap<&str, &Value> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["SPDXID"].as_str().unwrap(), p))
        .collect();
    let mut out: BTreeMap<String, BTreeSet<Pkg>> = BTreeMap::new();
    for r in doc["relationships"].as_array().unwrap() {
        let from = r["spdxElementId"].as_str().unwrap();
        if r["relationshipType"] != "CONTAINS" || !from.starts_with("SPDXRef-Binary-") {
            continue;
        }
        let (bin, pkg) = (
            packages[from],
            packages[r["relatedSpdxElement"].as_str().unwrap()],
        );
        let purl = pkg["externalRefs"][0]["referenceLocator"]
            .as_str()
            .unwrap()
            .to_string();
        out.entry(bin["name"].as_str().unwrap().to_string())
            .or_default()
            .insert((
                pkg["name"].as_str().unwrap().to_string(),
                pkg["versionInfo"].as_str().unwrap().to_string(),
                purl,
            ));
    }
    out
}

/// Per path in the image (`/usr/local/bin/etcd`), the Go modules and Rust crates syft
/// catalogued there.
fn syft_contents(doc: &Value) -> BTreeMap<String, BTreeSet<Pkg>> {
    let mut out: BTreeMap<String, BTreeSet<Pkg>> = BTreeMap::new();
    for a in doc["artifacts"].as_array().unwrap() {
        if a["type"] != "go-module" && a["type"] != "rust-crate" {
            continue;
        }
        for l in a["locations"].as_array().unwrap() {
            out.entry(l["path"].as_str().unwrap().to_string())
                .or_default()
                .insert((
                    a["name"].as_str().unwrap().to_string(),
                    a["version"].as_str().unwrap().to_string(),
                    a["purl"].as_str().unwrap().to_string(),
                ));
        }
    }
    out
}

#[test]
fn the_spdx_lists_the_go_modules_and_stdlib_syft_finds_in_every_binary() {
    let t = "the_spdx_lists_the_go_modules_and_stdlib_syft_finds_in_every_binary";
    let Some(fx) = fixtures(t) else { return };
    if !require(t, "go") {
        return;
    }
    let Some(syft) = go_tool(t, "syft") else {
        return;
    };
    let (v35, v36) = (newest_fixture(&fx, 5), newest_fixture(&fx, 6));
    let mut sb = Sandbox::new();
    sb.use_config(&module_images_config(
        &fx,
        &[v35.to_string(), v36.to_string()],
        "127.0.0.1:9",
    ));
    let out = sb.etcdimg(&["all-build", "--json"]);
    assert_success(&out);
    let reports = sb.path().join("reports");
    let out = sb.etcdimg(&[
        "report",
        "--spdx",
        "--report-dir",
        reports.to_str().unwrap(),
        "--json",
    ]);
    assert_success(&out);
    let written = json(&out);
    let read = |key: &str| -> Value {
        let path = written["written"][key].as_str().unwrap();
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let (report, spdx) = (read("json"), read("spdx"));
    let ours = spdx_contents(&spdx);

    let syft_json = sb.path().join("syft.json");
    let layout = sb.path().join("oci");
    run(Command::new(&syft)
        .args(["scan", "-q"])
        .arg(format!("oci-dir:{}", layout.display()))
        .arg("-o")
        .arg(format!("syft-json={}", syft_json.display()))
        .env("SYFT_CHECK_FOR_APP_UPDATE", "false"));
    let theirs =
        syft_contents(&serde_json::from_slice(&std::fs::read(&syft_json).unwrap()).unwrap());

    let binaries = report["images"][0]["binaries"].as_array().unwrap();
    let (mut compared, mut replaced, mut rust_compared) = (0, 0, 0);
    for b in binaries {
        if let Some(rust) = b.get("rust") {
            // migrate: syft's crates there are its own package and what our SPDX says it
            // CONTAINS, names, versions and purls alike.
            let path = b["path"].as_str().unwrap();
            let name = path.rsplit('/').next().unwrap();
            let root = &rust["root"];
            let mut expected = ours[name].clone();
            let (root_name, root_version) = (
                root["name"].as_str().unwrap(),
                root["version"].as_str().unwrap(),
            );
            expected.insert((
                root_name.into(),
                root_version.into(),
                format!("pkg:cargo/{root_name}@{root_version}"),
            ));
            assert_eq!(
                theirs[&format!("/{path}")],
                expected,
                "{path}: syft vs our SPDX"
            );
            assert!(expected.len() > 20, "{expected:?}");
            for c in ["clap", "hostio", "etcd-policy", "serde_json"] {
                assert!(expected.iter().any(|p| p.0 == c), "{c} in {expected:?}");
            }
            // Build-time crates (proc macros) are in neither.
            assert!(
                !expected.iter().any(|p| p.0 == "serde_derive"),
                "{expected:?}"
            );
            rust_compared += 1;
            continue;
        }
        let Some(go) = b.get("go") else { continue };
        assert!(go["deps"].as_array().unwrap().len() > 20, "{}", b["path"]);
        let path = b["path"].as_str().unwrap();
        let name = path.rsplit('/').next().unwrap();
        let ours = &ours[name];
        // etcd's own modules, replaced by folders of the release tree: path -> version.
        let local: BTreeMap<&str, &str> = go["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["replace"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with('.'))
            })
            .map(|d| (d["path"].as_str().unwrap(), d["version"].as_str().unwrap()))
            .collect();
        replaced += local.len();
        let main = go["main"]["path"].as_str().unwrap();
        let mut paths = vec![path.to_string()];
        paths.extend(
            b["links"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| l.as_str().unwrap().to_string()),
        );
        for p in paths {
            let found: BTreeSet<&Pkg> = theirs[&format!("/{p}")]
                .iter()
                .filter(|(n, _, _)| n != main)
                .collect();
            let names = |s: &mut dyn Iterator<Item = &Pkg>| -> BTreeSet<String> {
                s.map(|x| x.0.clone()).collect()
            };
            assert_eq!(
                names(&mut found.iter().copied()),
                names(&mut ours.iter()),
                "{p}: module names (syft vs our SPDX)"
            );
            for (n, v, purl) in &found {
                let (_, our_v, our_purl) = ours.iter().find(|x| &x.0 == n).unwrap();
                if let Some(dep_version) = local.get(n.as_str()) {
                    // syft cannot tell these folders' version; ours is the version the build
                    // info records for the module they stand for (the release's own).
                    assert!(v.is_empty() || v == "UNKNOWN", "{p}: {n} {v}");
                    assert_eq!(our_v, dep_version, "{p}: {n}");
                    assert!(our_purl.ends_with(&format!("@{our_v}")), "{our_purl}");
                } else {
                    assert_eq!((v, purl), (our_v, our_purl), "{p}: {n}");
                }
            }
            assert!(
                found
                    .iter()
                    .any(|(n, v, _)| n == "stdlib" && v == go["go_version"].as_str().unwrap()),
                "{p}: the Go standard library at the binary's Go"
            );
            compared += 1;
        }
    }
    // etcd, etcdctl (each also under its versioned name) and etcdutl, for two versions.
    assert!(compared >= 8, "{compared}");
    assert_eq!(rust_compared, 1, "migrate's crates were compared");
    assert!(
        replaced >= 6,
        "etcd's own modules are local replacements: {replaced}"
    );

    // The document stays valid SPDX 2.3 with the Go packages in it.
    let tools = repo_root().join("target/tools/spdx/bin/pyspdxtools");
    if tools.is_file() || require(t, "pyspdxtools") {
        let tool = if tools.is_file() {
            tools
        } else {
            which("pyspdxtools").unwrap()
        };
        let path = written["written"]["spdx"].as_str().unwrap();
        let out = run(Command::new(tool).args(["-i", path]));
        assert_success(&out);
    }
}

#[test]
fn the_go_policy_refuses_an_old_go_and_a_chosen_go_rebuilds_every_binary() {
    let t = "the_go_policy_refuses_an_old_go_and_a_chosen_go_rebuilds_every_binary";
    let Some(World {
        fx,
        registry,
        mut sb,
        ..
    }) = world(t, &["go", "umoci"])
    else {
        return;
    };
    let counting = FaultProxy::start(registry.port, |_| Fault::Forward);
    let host = format!("127.0.0.1:{}", counting.port);
    let v36 = newest_fixture(&fx, 6);
    sb.use_config(&module_images_config(&fx, &[v36.to_string()], &host));
    sb.unset("ETCDIMG_ALLOW_UNSUPPORTED_GO");
    let local_go = String::from_utf8(run(Command::new("go").args(["env", "GOVERSION"])).stdout)
        .unwrap()
        .trim()
        .to_string();
    let old = etcd_policy::go::GoPolicy::builtin().findings(&local_go);
    assert!(
        !old.is_empty(),
        "this test needs a machine Go below the policy's minimum (it has {local_go})"
    );

    // settings lists the finding for the Go that would compile.
    let out = sb.etcdimg(&["settings", "--arch", "amd64"]);
    assert_success(&out);
    let settings = json(&out);
    assert!(
        settings["go_findings"].to_string().contains(&local_go),
        "{settings}"
    );

    // build warns, naming the Go, the advisory and the way out; the build goes on.
    let out = sb.etcdimg(&["all-build"]);
    assert_success(&out);
    for needle in [
        format!("built with {local_go}, below go1.26.10"),
        "GO-2026-6809".to_string(),
        "--allow-unsupported-go".to_string(),
        "go_toolchain".to_string(),
    ] {
        assert!(
            stderr(&out).contains(&needle),
            "build: {needle}: {}",
            stderr(&out)
        );
    }

    // Every release verb refuses before its first request.
    for args in [
        vec!["push", "--arch", "amd64"],
        vec!["all-push"],
        vec!["push-manifest"],
        vec!["plan", "--no-build"],
    ] {
        let out = sb.etcdimg(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        for needle in ["refusing to release", &local_go, "--allow-unsupported-go"] {
            assert!(
                stderr(&out).contains(needle),
                "{args:?}: {needle}: {}",
                stderr(&out)
            );
        }
    }
    assert!(
        counting.requests().is_empty(),
        "a refused release sent requests"
    );

    // Allowed: pushed, and recorded in the release report.
    let report = common::world::all_push_report(&sb, &["--allow-unsupported-go"]);
    assert!(
        report["unsupported_go_allowed"]
            .to_string()
            .contains(&local_go),
        "{}",
        report["unsupported_go_allowed"]
    );

    // A chosen Go rebuilds every bundled binary (amd64's source is "module" here; "release"
    // arches switch to modules the same way, see settings' unit tests).
    sb.set("ETCDIMG_GO_TOOLCHAIN", "go1.27.3");
    let out = sb.etcdimg(&["settings", "--arch", "amd64"]);
    assert_success(&out);
    assert_eq!(json(&out)["go_findings"], serde_json::json!([]));
    let out = sb.etcdimg(&["all-build", "--json"]);
    assert_success(&out);
    assert!(!stderr(&out).contains("built with"), "{}", stderr(&out));
    let built = json(&out);
    let image = &built["images"][0];
    for c in image["compiles"].as_array().unwrap() {
        assert_eq!(c["toolchain"], "go go1.27.3", "{c}");
    }
    let gos: Vec<&str> = image["binaries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["go"]["go_version"].as_str())
        .collect();
    assert_eq!(gos, ["go1.27.3"; 3], "{}", image["binaries"]);
    // `go version -m` agrees, and the image's label records each binary's Go.
    let rootfs = umoci_unpack(
        &sb.path().join("oci"),
        &format!("{v36}-0-linux-amd64"),
        &sb.path().join("unpacked"),
    );
    assert_eq!(check_build_info(&rootfs, &image["binaries"]), 3);
    let config = common::world::skopeo_json(&[
        "inspect",
        "--config",
        &format!(
            "oci:{}:{v36}-0-linux-amd64",
            sb.path().join("oci").display()
        ),
    ]);
    let label = config["config"]["Labels"]["dev.etcdimg.go"].to_string();
    assert!(
        label.contains(&format!("etcd-{v36}=go1.27.3"))
            && label.contains(&format!("etcdutl-{v36}=go1.27.3")),
        "the dev.etcdimg.go label: {label}"
    );
    // Now the release goes through without any allowance, as a new revision (the tag of the
    // old Go's release is not moved).
    let out = sb.etcdimg(&["all-push", "--no-report", "--revision", "1"]);
    assert_success(&out);
    assert!(!stderr(&out).contains("built with"), "{}", stderr(&out));
}
