//! `etcdimg plan` and the release report against Debian's docker-registry (distribution 2.8) on
//! 127.0.0.1. What the registry holds is read back with skopeo; the SPDX document is checked by
//! pyspdxtools (spdx-tools from PyPI); a counting proxy proves that a plan never writes.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

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

/// spdx-tools' validator: installed by scripts/install-deps.sh into target/tools/spdx, or on PATH.
fn pyspdxtools(test: &str) -> Option<std::path::PathBuf> {
    let local = repo_root().join("target/tools/spdx/bin/pyspdxtools");
    if local.is_file() {
        return Some(local);
    }
    require(test, "pyspdxtools").then(|| which("pyspdxtools").unwrap())
}

/// A 200 answer carrying an empty OCI image index.
fn empty_oci_index() -> Vec<u8> {
    http_response(
        "200 OK",
        &[(
            "Content-Type",
            "application/vnd.oci.image.index.v1+json".into(),
        )],
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
    )
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
    assert_eq!(empty["report"]["method"], "fallback-tag"); // distribution 2.8
    assert_eq!(empty["report"]["fallback"]["tag"]["status"], "created");
    // 8 image blobs + the report's empty config and JSON
    assert_eq!(empty["summary"]["uploads"], 10, "{}", empty["summary"]);
    assert_eq!(empty["summary"]["report_changes"], 2);
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
    for key in [
        "uploads",
        "mounts",
        "tags_created",
        "tags_moved",
        "copies",
        "report_changes",
    ] {
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
    // Without --force the push would stop at the first tag: plan says so and exits 1, with
    // the whole plan on stdout.
    let refused = sb.etcdimg(&["plan", "--json"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("the push would stop: 3 tags already point to other digests"),
        "{}",
        stderr(&refused)
    );
    let refused = json(&refused);
    assert_eq!(refused["summary"]["tags_refused"], 3);
    assert_eq!(refused["index"]["refused"], true);
    let moved = plan(&sb, &["--force", "--no-build"]);
    assert_eq!(moved["summary"]["tags_refused"], 0);
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
        text.contains(&format!(
            "move     {via}/k8s/etcd:3.5.1-0: {current} -> {}  (REFUSED without --force)",
            moved["index"]["digest"].as_str().unwrap()
        )),
        "{text}"
    );
    // One arch alone plans `push --arch`: no index.
    let one = plan(&sb, &["--arch", "arm64", "--no-build", "--force"]);
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
    let Some(mut w) = world(t, &["curl"]) else {
        return;
    };
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

    // A registry that offers the referrers API (distribution 2.8 cannot, so a proxy adds it):
    // the artifact PUT is passed on to the registry with curl and answered with OCI-Subject;
    // GET /v2/etcd/referrers/<index> lists what was PUT there. No fallback tag is written,
    // and a second push finds the report listed and changes nothing.
    assert_success(&sb.etcdimg(&["all-build"]));
    let upstream = w.registry.port;
    let listed: Arc<Mutex<Vec<(String, String)>>> = Arc::default(); // (subject, artifact)
    let seen = listed.clone();
    let proxy = FaultProxy::start(upstream, move |r| {
        let listed = seen.clone();
        if r.method == "PUT" && r.path.contains("/manifests/sha256:") {
            let path = r.path.clone();
            Fault::Answer(Box::new(move |body| {
                let m: Value = serde_json::from_slice(body).unwrap();
                let subject = m["subject"]["digest"].as_str().unwrap_or("").to_string();
                let digest = path.rsplit('/').next().unwrap().to_string();
                let file = std::env::temp_dir().join(format!("etcdimg-test-{digest}"));
                std::fs::write(&file, body).unwrap();
                let out = run(Command::new("curl")
                    .args(["-sf", "-X", "PUT", "-H"])
                    .arg("Content-Type: application/vnd.oci.image.manifest.v1+json")
                    .arg("--data-binary")
                    .arg(format!("@{}", file.display()))
                    .arg(format!("http://127.0.0.1:{upstream}{path}")));
                let _ = std::fs::remove_file(&file);
                assert!(out.status.success());
                listed
                    .lock()
                    .unwrap()
                    .push((subject.clone(), digest.clone()));
                http_response(
                    "201 Created",
                    &[("OCI-Subject", subject), ("Docker-Content-Digest", digest)],
                    b"",
                )
            }))
        } else if r.method == "GET" && r.path.contains("/referrers/") {
            let subject = r.path.rsplit('/').next().unwrap().to_string();
            let manifests: Vec<Value> = listed
                .lock()
                .unwrap()
                .iter()
                .filter(|(s, _)| *s == subject)
                .map(|(_, a)| serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": a}))
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }))
            .unwrap();
            Fault::Respond(http_response(
                "200 OK",
                &[(
                    "Content-Type",
                    "application/vnd.oci.image.index.v1+json".into(),
                )],
                &body,
            ))
        } else {
            Fault::Forward
        }
    });
    let via = format!("127.0.0.1:{}", proxy.port);
    let push = |extra: &[&str]| {
        let mut args = vec![
            "all-push",
            "--json",
            "--push-registry",
            &via,
            "--insecure-registry",
            &via,
        ];
        args.extend_from_slice(extra);
        let out = sb.etcdimg(&args);
        assert_success(&out);
        json(&out)
    };
    let v = push(&[]);
    let attached = &v["report"]["attached"];
    assert_eq!(attached["method"], "referrers-api", "{attached}");
    assert!(attached["fallback_tag"].is_null());
    assert_eq!(attached["changed"], true);
    let index = v["index"]["digest"].as_str().unwrap().to_string();
    assert_eq!(
        *listed.lock().unwrap(),
        vec![(
            index.clone(),
            attached["digest"].as_str().unwrap().to_string()
        )],
        "the artifact PUT names the index as its subject"
    );
    // Stored for real: skopeo reads it from the registry itself.
    let stored: Value = serde_json::from_slice(&raw(&format!(
        "docker://{host}/etcd@{}",
        attached["digest"].as_str().unwrap()
    )))
    .unwrap();
    assert_eq!(stored["subject"]["digest"], index.as_str());
    let again = push(&[]);
    assert_eq!(again["report"]["attached"]["method"], "referrers-api");
    assert_eq!(again["report"]["attached"]["changed"], false);
    // The API forgets it (as after a registry upgrade): plan says the artifact is PUT again,
    // and the push does so, which lists it.
    listed.lock().unwrap().clear();
    let args = vec![
        "plan",
        "--json",
        "--no-build",
        "--push-registry",
        &via,
        "--insecure-registry",
        &via,
    ];
    let out = sb.etcdimg(&args);
    assert_success(&out);
    let p = json(&out);
    assert_eq!(p["report"]["method"], "referrers-api");
    assert_eq!(p["report"]["artifact"]["tag"]["status"], "untagged");
    assert_eq!(p["summary"]["report_changes"], 1);
    let third = push(&[]);
    assert_eq!(third["report"]["attached"]["method"], "referrers-api");
    assert_eq!(third["report"]["attached"]["changed"], true);
    assert_eq!(listed.lock().unwrap().len(), 1);
    let fallback_requests: Vec<_> = proxy
        .requests()
        .into_iter()
        // The fallback tag `sha256-<hex>`, not cosign's `.sig`/`.att` tags plan looks up.
        .filter(|r| {
            r.path.contains("/manifests/sha256-")
                && !r.path.ends_with(".sig")
                && !r.path.ends_with(".att")
        })
        .collect();
    assert!(fallback_requests.is_empty(), "{fallback_requests:?}");
    assert!(!tags(&host, "etcd").iter().any(|t| t.starts_with("sha256-")));
    drop(proxy);

    // A registry whose referrers API answers, but whose PUT does not say OCI-Subject: per the
    // spec the client keeps the fallback tag.
    let proxy = FaultProxy::start(upstream, |r| {
        if r.method == "GET" && r.path.contains("/referrers/") {
            Fault::Respond(empty_oci_index())
        } else {
            Fault::Forward
        }
    });
    let via = format!("127.0.0.1:{}", proxy.port);
    let out = sb.etcdimg(&[
        "all-push",
        "--json",
        "--revision",
        "7",
        "--push-registry",
        &via,
        "--insecure-registry",
        &via,
    ]);
    assert_success(&out);
    let v = json(&out);
    assert_eq!(
        v["report"]["attached"]["method"], "fallback-tag",
        "{}",
        v["report"]
    );
    let index = v["index"]["digest"].as_str().unwrap();
    let fallback: Value = serde_json::from_slice(&raw(&format!(
        "docker://{host}/etcd:{}",
        index.replace(':', "-")
    )))
    .unwrap();
    assert_eq!(
        fallback["manifests"][0]["digest"],
        v["report"]["attached"]["digest"]
    );
}

#[test]
fn a_report_left_unlisted_is_planned_and_attached_by_the_suggested_command() {
    let t = "a_report_left_unlisted_is_planned_and_attached_by_the_suggested_command";
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("");
    let (sb, host) = (&w.sb, w.host.clone());
    // The registry fails every write of the fallback tag (until `down` is cleared): the
    // artifact is pushed, not listed.
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let is_down = down.clone();
    let proxy = FaultProxy::start(w.registry.port, move |r| {
        if r.method == "PUT"
            && r.path.contains("/manifests/sha256-")
            && is_down.load(std::sync::atomic::Ordering::SeqCst)
        {
            Fault::Respond(http_response("500 Internal Server Error", &[], b"down"))
        } else {
            Fault::Forward
        }
    });
    let via = format!("127.0.0.1:{}", proxy.port);
    let flags = ["--push-registry", &via, "--insecure-registry", &via];
    let mut args = vec!["all-push"];
    args.extend_from_slice(&flags);
    let out = sb.etcdimg(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("the index is pushed"), "{err}");
    assert!(err.contains("is not attached"), "{err}");
    assert!(err.contains(" etcdimg report --push --config "), "{err}");
    assert_eq!(tags(&host, "etcd").len(), 3, "{:?}", tags(&host, "etcd"));

    // plan sees the artifact there but unlisted: not "nothing to push".
    let mut args = vec!["plan", "--json", "--no-build"];
    args.extend_from_slice(&flags);
    let out = sb.etcdimg(&args);
    assert_success(&out);
    let p = json(&out);
    assert_eq!(p["report"]["artifact"]["tag"]["status"], "unchanged");
    assert_eq!(p["report"]["fallback"]["tag"]["status"], "created");
    assert_eq!(p["report"]["attached"], false);
    assert_eq!(p["summary"]["report_changes"], 1);
    assert_eq!(p["summary"]["uploads"], 0);

    // The suggested command, run as printed, once the registry takes writes again, lists it.
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    let command = err
        .split("once the cause is fixed, `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no command in: {err}"))
        .replace(
            "etcdimg report",
            &format!("{} report", env!("CARGO_BIN_EXE_etcdimg")),
        );
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(&command)
        .current_dir(sb.path())
        .env("HOME", sb.path());
    for (k, v) in &sb.env {
        sh.env(k, v);
    }
    for k in [
        "ETCDIMG_CONFIG",
        "ETCDIMG_OUTPUT",
        "PUSH_REGISTRY",
        "ALL_ARCH",
        "REVISION",
    ] {
        sh.env_remove(k); // the command must carry them itself
    }
    let out = sh.output().unwrap();
    assert_success(&out);
    let mut args = vec!["plan", "--no-build"];
    args.extend_from_slice(&flags);
    let out = sb.etcdimg(&args);
    assert_success(&out);
    assert!(stdout(&out).contains("nothing to push"), "{}", stdout(&out));
    drop(proxy);

    // A registry that keeps serving a stale fallback tag: three writes, then a clear error.
    let stale = FaultProxy::start(w.registry.port, |r| {
        if r.method == "GET" && r.path.contains("/manifests/sha256-") {
            Fault::Respond(empty_oci_index())
        } else {
            Fault::Forward
        }
    });
    let via = format!("127.0.0.1:{}", stale.port);
    let out = sb.etcdimg(&[
        "all-push",
        "--push-registry",
        &via,
        "--insecure-registry",
        &via,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("keeps losing it"), "{err}");
    let writes = stale
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/sha256-"))
        .count();
    // Bounded: the first write lands, the next ones find the tag already holding those bytes.
    assert!((1..=3).contains(&writes), "{writes} writes");
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
        err.contains(&format!("cannot reach registry `{dead}`")),
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
