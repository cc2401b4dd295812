//! `etcdimg plan` and the release report against Debian's docker-registry (distribution 2.8) on
//! 127.0.0.1. What the registry holds is read back with skopeo; the SPDX document is checked by
//! pyspdxtools (spdx-tools from PyPI); a counting proxy proves that a plan never writes.

mod common;

use std::path::Path;
use std::process::Command;

use common::world::*;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn raw(reference: &str) -> Vec<u8> {
    let out = skopeo(&["inspect", "--raw", "--tls-verify=false", reference]);
    assert!(
        out.status.success(),
        "skopeo inspect --raw {reference}: {}",
        stderr(&out)
    );
    out.stdout
}

/// A blob straight from the registry's HTTP API (python's urllib, not our client).
fn blob(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let out = run(Command::new("python3").args([
        "-c",
        "import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())",
        &format!("http://{host}/v2/{repo}/blobs/{digest}"),
    ]));
    assert_eq!(
        sha256(&out.stdout),
        digest,
        "the registry served other bytes"
    );
    out.stdout
}

/// spdx-tools' validator: installed by scripts/install-deps.sh into target/tools/spdx, or on PATH.
fn pyspdxtools(test: &str) -> Option<std::path::PathBuf> {
    let local = repo_root().join("target/tools/spdx/bin/pyspdxtools");
    if local.is_file() {
        return Some(local);
    }
    require(test, "pyspdxtools").then(|| which("pyspdxtools").unwrap())
}

/// Requests the proxy saw from index `from` on that could change the registry.
fn writes(proxy: &FaultProxy, from: usize) -> Vec<String> {
    proxy.requests()[from..]
        .iter()
        .filter(|r| r.method != "HEAD" && r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn plan(sb: &Sandbox, extra: &[&str]) -> Value {
    let mut args = vec!["plan", "--json"];
    args.extend_from_slice(extra);
    let out = sb.etcdimg(&args);
    assert_success(&out);
    json(&out)
}

fn actions(plan: &Value) -> Vec<(String, String, String)> {
    plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["blobs"].as_array().unwrap().clone())
        .map(|b| {
            (
                b["action"].as_str().unwrap().to_string(),
                b["content"].as_str().unwrap().to_string(),
                b["from"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn tag_status(plan: &Value) -> Vec<String> {
    let mut out: Vec<String> = plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["tag"]["status"].as_str().unwrap().to_string())
        .collect();
    out.push(plan["index"]["tag"]["status"].as_str().unwrap().to_string());
    out
}

fn set_binary_mode(sb: &Sandbox, mode: &str) {
    let path = sb.path().join("images.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "[image]\n",
        &format!("[image]\nbinary_mode = \"{mode}\"\n"),
        1,
    );
    std::fs::write(&path, text).unwrap();
}

#[test]
fn plan_lists_every_upload_then_nothing_then_only_what_a_change_touches() {
    let t = "plan_lists_every_upload_then_nothing_then_only_what_a_change_touches";
    let Some(w) = world(t, &[]) else { return };
    let World {
        fx,
        registry,
        mirror,
        mut sb,
        ..
    } = w;
    // Every request goes through a counting proxy; the base lives in the same registry, so its
    // layers can be mounted.
    let base = push_base(&fx, &registry);
    let proxy = FaultProxy::start(registry.port, |_| Fault::Forward);
    let via = format!("127.0.0.1:{}", proxy.port);
    let base = base.replace(&format!("127.0.0.1:{}", registry.port), &via);
    project(
        &mut sb,
        mirror.port,
        &format!("{via}/k8s"),
        &base,
        &format!("insecure_registries = [\"{via}\"]"),
    );

    // 1. An empty repository: every blob is an upload, except the base layers, which are
    //    mounted from library/busybox; every tag is created; the report is not attached.
    let empty = plan(&sb, &[]);
    assert!(
        writes(&proxy, 0).is_empty(),
        "plan wrote: {:?}",
        writes(&proxy, 0)
    );
    let a = actions(&empty);
    assert_eq!(a.len(), 10, "{a:?}");
    for (action, content, from) in &a {
        if content.starts_with("base ") {
            assert_eq!(
                (action.as_str(), from.as_str()),
                ("mount", "library/busybox")
            );
        } else {
            assert_eq!(action, "upload", "{content}");
        }
    }
    assert_eq!(tag_status(&empty), ["created"; 3]);
    assert_eq!(empty["report"]["attached"], false);
    assert_eq!(empty["summary"]["uploads"], 9); // 8 image blobs + the report
                                                // The text form says the same, on stdout.
    let text = sb.etcdimg(&["plan"]);
    assert_success(&text);
    let text = stdout(&text);
    assert!(
        text.contains(&format!("create   {via}/k8s/etcd:3.5.1-0 -> ")),
        "{text}"
    );
    assert!(
        text.contains("mount  ") && text.contains("from library/busybox"),
        "{text}"
    );

    // 2. Push; the plan's digests are what was pushed, and a new plan lists nothing.
    let out = sb.etcdimg(&["all-push", "--json", "--spdx"]);
    assert_success(&out);
    let pushed = json(&out);
    for (p, i) in empty["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(pushed["images"].as_array().unwrap())
    {
        assert_eq!(p["digest"], i["digest"]);
    }
    assert_eq!(empty["index"]["digest"], pushed["index"]["digest"]);
    for i in pushed["images"].as_array().unwrap() {
        assert_eq!(i["blobs_mounted"], 1, "the base layer is mounted: {i}");
    }
    let seen = proxy.requests().len();
    let after = plan(&sb, &["--spdx"]);
    assert!(writes(&proxy, seen).is_empty());
    assert_eq!(tag_status(&after), ["unchanged"; 3]);
    assert!(actions(&after).iter().all(|(a, _, _)| a == "skip"));
    assert_eq!(after["report"]["attached"], true);
    for key in ["uploads", "mounts", "tags_created", "tags_moved", "copies"] {
        assert_eq!(after["summary"][key], 0, "{key}: {}", after["summary"]);
    }
    assert_eq!(after["summary"]["tags_unchanged"], 3);
    let text = stdout(&sb.etcdimg(&["plan", "--spdx", "--no-build"]));
    assert!(text.contains("nothing to push"), "{text}");

    // 3. A REVISION bump: new tags; only the configs change (the revision is a label), every
    //    layer is already there.
    sb.set("REVISION", "1");
    let bumped = plan(&sb, &[]);
    assert_eq!(tag_status(&bumped), ["created"; 3]);
    let uploads: Vec<_> = actions(&bumped)
        .into_iter()
        .filter(|(a, _, _)| a != "skip")
        .collect();
    assert_eq!(
        uploads,
        vec![("upload".to_string(), "config".to_string(), String::new()); 2]
    );
    assert!(bumped["index"]["reference"]
        .as_str()
        .unwrap()
        .ends_with(":3.5.1-1"));
    sb.set("REVISION", "0");

    // 4. Same tag, other bytes (binaries 0755): every tag would move, old -> new, and the old
    //    digests are what the registry serves; the etcd and migrate layers change, the base
    //    layers do not.
    set_binary_mode(&sb, "0755");
    let moved = plan(&sb, &[]);
    assert_eq!(tag_status(&moved), ["moved"; 3]);
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let current = sha256(&raw(&format!(
            "docker://{via}/k8s/etcd:3.5.1-0-linux-{arch}"
        )));
        assert_eq!(moved["images"][i]["tag"]["previous"], current.as_str());
        assert_ne!(moved["images"][i]["digest"], current.as_str());
    }
    let current = sha256(&raw(&format!("docker://{via}/k8s/etcd:3.5.1-0")));
    assert_eq!(moved["index"]["tag"]["previous"], current.as_str());
    for (action, content, _) in actions(&moved) {
        let expected = if content.starts_with("base ") {
            "skip"
        } else {
            "upload"
        };
        assert_eq!(action, expected, "{content}");
    }
    let text = stdout(&sb.etcdimg(&["plan", "--no-build"]));
    assert!(
        text.contains(&format!("move     {via}/k8s/etcd:3.5.1-0: {current} -> ")),
        "{text}"
    );
    // One arch alone plans `push --arch`: no index.
    let one = plan(&sb, &["--arch", "arm64", "--no-build"]);
    assert_eq!(one["images"].as_array().unwrap().len(), 1);
    assert!(one["index"].is_null());
    assert!(
        writes(&proxy, seen).is_empty(),
        "{:?}",
        writes(&proxy, seen)
    );
}

#[test]
fn the_release_report_is_attached_to_the_index_and_matches_what_skopeo_reads() {
    let t = "the_release_report_is_attached_to_the_index_and_matches_what_skopeo_reads";
    let Some(pyspdxtools) = pyspdxtools(t) else {
        return;
    };
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("");
    let (sb, host, fx) = (&w.sb, w.host.clone(), w.fx.clone());
    let reports = sb.path().join("reports");
    let reports_arg = reports.display().to_string();

    let out = sb.etcdimg(&["all-push", "--json", "--spdx", "--report-dir", &reports_arg]);
    assert_success(&out);
    let pushed = json(&out);
    let attached = &pushed["report"]["attached"];
    // distribution 2.8 has no referrers API: the fallback tag scheme.
    assert_eq!(attached["method"], "fallback-tag", "{attached}");

    // Read it all back with skopeo.
    let index_bytes = raw(&format!("docker://{host}/etcd:3.5.1-0"));
    let index_digest = sha256(&index_bytes);
    assert_eq!(pushed["index"]["digest"], index_digest.as_str());
    let fallback: Value = serde_json::from_slice(&raw(&format!(
        "docker://{host}/etcd:{}",
        index_digest.replace(':', "-")
    )))
    .unwrap();
    let listed = &fallback["manifests"][0];
    assert_eq!(
        listed["artifactType"],
        "application/vnd.etcdimg.release-report.v1+json"
    );
    assert_eq!(listed["digest"], attached["digest"]);
    let artifact_bytes = raw(&format!(
        "docker://{host}/etcd@{}",
        listed["digest"].as_str().unwrap()
    ));
    let artifact: Value = serde_json::from_slice(&artifact_bytes).unwrap();
    assert_eq!(artifact["subject"]["digest"], index_digest.as_str());
    assert_eq!(artifact["subject"]["size"], index_bytes.len());
    let layers = artifact["layers"].as_array().unwrap();
    assert_eq!(layers[1]["mediaType"], "application/spdx+json");

    // The report blob, from the registry, is the file written to the report dir.
    let report_bytes = blob(&host, "etcd", layers[0]["digest"].as_str().unwrap());
    assert_eq!(
        report_bytes,
        std::fs::read(reports.join("release-3.5.1-0.json")).unwrap()
    );
    let report: Value = serde_json::from_slice(&report_bytes).unwrap();
    assert_eq!(report["index"]["digest"], index_digest.as_str());
    assert_eq!(
        report["etcd"]["bundled"],
        serde_json::json!(["3.4.23", "3.5.1"])
    );
    let base_index: Value =
        serde_json::from_slice(&std::fs::read(fx.join("busybox-oci/index.json")).unwrap()).unwrap();
    let base_list: Value = serde_json::from_slice(
        &std::fs::read(
            fx.join("busybox-oci/blobs/sha256").join(
                base_index["manifests"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let image = &report["images"][i];
        assert_eq!(image["arch"], *arch);
        let manifest_bytes = raw(&format!("docker://{host}/etcd:3.5.1-0-linux-{arch}"));
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(image["manifest_digest"], sha256(&manifest_bytes).as_str());
        assert_eq!(image["config_digest"], manifest["config"]["digest"]);
        let layer_digests: Vec<&Value> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        let reported: Vec<&Value> = image["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        assert_eq!(reported, layer_digests);
        assert!(image["compression"]
            .as_str()
            .unwrap()
            .starts_with("gzip level "));
        // The base digest is the platform manifest in the busybox fixture.
        let entry = base_list["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == *arch)
            .unwrap();
        assert_eq!(image["base"]["digest"], entry["digest"]);
        // Each upstream tarball: the URL it came from and the sha256 of the file served.
        let upstream = image["upstream"].as_array().unwrap();
        assert_eq!(upstream.len(), 2);
        for u in upstream {
            let v = u["version"].as_str().unwrap();
            let file = format!("etcd-v{v}-linux-{arch}.tar.gz");
            assert!(
                u["url"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/v{v}/{file}")),
                "{u}"
            );
            let bytes = std::fs::read(fx.join("mirror").join(format!("v{v}")).join(&file)).unwrap();
            assert_eq!(
                format!("sha256:{}", u["sha256"].as_str().unwrap()),
                sha256(&bytes)
            );
        }
    }

    // The SPDX document is valid SPDX 2.3 for a validator we did not write.
    let spdx = reports.join("release-3.5.1-0.spdx.json");
    let check = Command::new(&pyspdxtools)
        .arg("-i")
        .arg(&spdx)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "pyspdxtools: {}{}",
        stdout(&check),
        stderr(&check)
    );
    assert_eq!(
        blob(&host, "etcd", layers[1]["digest"].as_str().unwrap()),
        std::fs::read(&spdx).unwrap()
    );

    // Pushing again attaches nothing new.
    let again = json(&sb.etcdimg(&["all-push", "--json", "--spdx", "--report-dir", &reports_arg]));
    assert_eq!(again["bytes_uploaded"], 0);
    assert_eq!(
        again["report"]["attached"]["changed"], false,
        "{}",
        again["report"]
    );
    let fallback_again: Value = serde_json::from_slice(&raw(&format!(
        "docker://{host}/etcd:{}",
        index_digest.replace(':', "-")
    )))
    .unwrap();
    assert_eq!(fallback_again, fallback);
}

/// Strips the build-record annotations from a layout's index.json (a layout merged by hand).
fn strip_records(layout: &Path) {
    let path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        if let Some(a) = m["annotations"].as_object_mut() {
            a.remove("dev.etcdimg.build-record");
        }
    }
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn report_refusals_leave_the_registry_as_it_was_and_the_referrers_api_is_used_where_offered() {
    let t =
        "report_refusals_leave_the_registry_as_it_was_and_the_referrers_api_is_used_where_offered";
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("");
    let (sb, host) = (&w.sb, w.host.clone());
    let layout = sb.path().join("oci");

    // Attaching before the index is pushed: refused, nothing written to the registry.
    assert_success(&sb.etcdimg(&["all-build"]));
    let out = sb.etcdimg(&["report", "--push"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is not in") && err.contains("push-manifest"),
        "{err}"
    );
    assert!(tags(&host, "etcd").is_empty(), "{:?}", tags(&host, "etcd"));
    // Written locally all the same (the default report dir, relative to the working dir).
    assert!(sb.path().join("_output/release-3.5.1-0.json").is_file());

    // A layout without build records: all-push refuses before pushing anything.
    strip_records(&layout);
    let out = sb.etcdimg(&["push-manifest"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("has no build record") && err.contains("nothing was pushed"),
        "{err}"
    );
    assert!(err.contains("hint: rebuild it"), "{err}");
    assert!(tags(&host, "etcd").is_empty());

    // A registry that offers the referrers API (OCI-Subject on the manifest PUT, as the
    // distribution spec 1.1 says; 2.8 cannot, so a proxy answers for it): no fallback tag.
    assert_success(&sb.etcdimg(&["all-build"]));
    let proxy = FaultProxy::start(w.registry.port, |r| {
        if r.method == "PUT" && r.path.contains("/manifests/sha256:") {
            Fault::Answer(Box::new(|body| {
                let m: Value = serde_json::from_slice(body).unwrap();
                let subject = m["subject"]["digest"].as_str().unwrap_or("").to_string();
                http_response("201 Created", &[("OCI-Subject", subject)], b"")
            }))
        } else {
            Fault::Forward
        }
    });
    let via = format!("127.0.0.1:{}", proxy.port);
    let out = sb.etcdimg(&[
        "all-push",
        "--json",
        "--push-registry",
        &via,
        "--insecure-registry",
        &via,
    ]);
    assert_success(&out);
    let v = json(&out);
    assert_eq!(
        v["report"]["attached"]["method"], "referrers-api",
        "{}",
        v["report"]
    );
    assert!(v["report"]["attached"]["fallback_tag"].is_null());
    let fallback_puts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/sha256-"))
        .collect();
    assert!(fallback_puts.is_empty(), "{fallback_puts:?}");
}

/// The tags of `repo` (empty when the repository does not exist).
fn tags(host: &str, repo: &str) -> Vec<String> {
    let out = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/{repo}"),
    ]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn plan_against_an_unreachable_registry_fails_clearly() {
    let t = "plan_against_an_unreachable_registry_fails_clearly";
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("");
    let dead = format!("127.0.0.1:{}", free_port());
    let out = w.sb.etcdimg(&[
        "plan",
        "--push-registry",
        &dead,
        "--insecure-registry",
        &dead,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach registry") || err.contains(&dead),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn plan_under_legacy_naming_copies_each_arch_into_the_index_repository() {
    let t = "plan_under_legacy_naming_copies_each_arch_into_the_index_repository";
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("naming = \"legacy\"");
    let sb = &w.sb;
    let empty = plan(sb, &[]);
    let copies = empty["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{}", empty["copies"]);
    for (copy, arch) in copies.iter().zip(["amd64", "arm64"]) {
        assert_eq!(copy["tag"]["status"], "untagged");
        // Every blob the per-arch push uploads to etcd-<arch> is mounted from there.
        for b in copy["blobs"].as_array().unwrap() {
            assert_eq!(b["action"], "mount", "{b}");
            assert_eq!(b["from"], format!("etcd-{arch}").as_str(), "{b}");
        }
    }
    assert_eq!(empty["summary"]["copies"], 2);
    assert_success(&sb.etcdimg(&["all-push"]));
    let after = plan(sb, &[]);
    assert_eq!(after["summary"]["copies"], 0, "{}", after["summary"]);
    assert_eq!(after["summary"]["uploads"], 0);
    assert_eq!(after["summary"]["mounts"], 0);
    assert_eq!(tag_status(&after), ["unchanged"; 3]);
}
