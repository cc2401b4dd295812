//! Signed releases (issue #23), checked by the real cosign (built from the Go module proxy by
//! scripts/install-deps.sh) against Debian's docker-registry on 127.0.0.1, with keys cosign
//! itself generates (encrypted, COSIGN_PASSWORD). Offline: the transparency-log checks are off
//! (`--insecure-ignore-tlog`), as a registry without Rekor requires.
//!
//! What must pass: `cosign verify` of the index and of each per-arch manifest,
//! `cosign verify-attestation --type slsaprovenance1` and `--type spdxjson` of the index, and
//! `etcdimg verify`. What must be refused, by cosign and by etcdimg verify alike: a tampered
//! manifest under the tag, a signature made with another key, and a provenance statement
//! whose subject is another digest.
//!
//! Where the registry offers the OCI 1.1 referrers API (go-containerregistry's registry,
//! scripts/go/ggcr-registry), the signatures, attestations and release report name their
//! subject and the registry lists them, and cosign and `etcdimg verify` still find them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::world::{json, skopeo, world, World};
use common::*;
use serde_json::Value;

fn cosign(t: &str) -> Option<PathBuf> {
    go_tool(t, "cosign")
}

/// `cosign generate-key-pair` into `dir/<prefix>.key` / `.pub`, encrypted with `password`.
fn key_pair(cosign: &Path, dir: &Path, prefix: &str, password: &str) -> (PathBuf, PathBuf) {
    let out = run(Command::new(cosign)
        .args(["generate-key-pair", "--output-key-prefix", prefix])
        .current_dir(dir)
        .env("COSIGN_PASSWORD", password));
    assert_success(&out);
    (
        dir.join(format!("{prefix}.key")),
        dir.join(format!("{prefix}.pub")),
    )
}

/// A cosign verification of `reference` (extra args before it); offline, plain HTTP.
fn cosign_verify(cosign: &Path, verb: &str, key: &Path, reference: &str, extra: &[&str]) -> Output {
    Command::new(cosign)
        .arg(verb)
        .arg("--key")
        .arg(key)
        .args([
            "--insecure-ignore-tlog=true",
            "--allow-http-registry=true",
            "--allow-insecure-registry=true",
        ])
        .args(extra)
        .arg(reference)
        .env("SIGSTORE_NO_CACHE", "1")
        .env("TUF_ROOT", "/nonexistent")
        .output()
        .unwrap()
}

/// A blob and a manifest PUT straight to the registry's API (python's urllib, not our client).
fn put(host: &str, repo: &str, blobs: &[&[u8]], tag: &str, media_type: &str, manifest: &[u8]) {
    let script = r#"
import hashlib, sys, urllib.request
host, repo, tag, media_type = sys.argv[1:5]
blobs = [open(p, "rb").read() for p in sys.argv[6:]]
manifest = open(sys.argv[5], "rb").read()
for b in blobs:
    d = "sha256:" + hashlib.sha256(b).hexdigest()
    r = urllib.request.urlopen(urllib.request.Request(f"http://{host}/v2/{repo}/blobs/uploads/", method="POST"))
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else f"http://{host}{loc}"
    sep = "&" if "?" in loc else "?"
    urllib.request.urlopen(urllib.request.Request(f"{loc}{sep}digest={d}", data=b, method="PUT", headers={"Content-Type": "application/octet-stream"}))
urllib.request.urlopen(urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", data=manifest, method="PUT", headers={"Content-Type": media_type}))
"#;
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("manifest");
    std::fs::write(&manifest_path, manifest).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, host, repo, tag, media_type])
        .arg(&manifest_path);
    for (i, b) in blobs.iter().enumerate() {
        let p = dir.path().join(format!("blob{i}"));
        std::fs::write(&p, b).unwrap();
        cmd.arg(p);
    }
    assert_success(&run(&mut cmd));
}

fn raw(reference: &str) -> Vec<u8> {
    let out = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]);
    assert!(out.status.success(), "{reference}: {}", stderr(&out));
    out.stdout
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[test]
fn cosign_verifies_what_etcdimg_signs_and_both_refuse_what_was_tampered_with() {
    let t = "cosign_verifies_what_etcdimg_signs_and_both_refuse_what_was_tampered_with";
    let Some(mut w) = world(t, &[]) else {
        return;
    };
    let Some(cosign) = cosign(t) else { return };
    w.local_project("");
    let World { mut sb, host, .. } = w;
    let (key, public) = key_pair(&cosign, sb.path(), "release", "s3cret");
    let (other_key, other_public) = key_pair(&cosign, sb.path(), "other", "other");
    sb.set("COSIGN_PASSWORD", "s3cret");

    // A wrong password stops the run before anything is pushed, and never shows the key.
    sb.set("COSIGN_PASSWORD", "wrong");
    let out = sb.etcdimg(&["all-push", "--sign", "--key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not decrypt with COSIGN_PASSWORD"),
        "{}",
        stderr(&out)
    );
    let key_text = std::fs::read_to_string(&key).unwrap();
    let body_line = key_text.lines().nth(1).unwrap();
    assert!(!stderr(&out).contains(body_line), "the key leaked");
    sb.set("COSIGN_PASSWORD", "s3cret");

    let out = sb.etcdimg(&[
        "all-push",
        "--sign",
        "--key",
        key.to_str().unwrap(),
        "--json",
    ]);
    assert_success(&out);
    let pushed = json(&out);
    let index_digest = pushed["index"]["digest"].as_str().unwrap().to_string();
    let repo_ref = format!("{host}/etcd");
    let tag_ref = format!("{repo_ref}:3.5.1-0");
    assert_eq!(
        pushed["signed"]["signatures"].as_array().unwrap().len(),
        3,
        "{pushed}"
    );

    // The real cosign accepts the index, each per-arch manifest and both attestations.
    let out = cosign_verify(&cosign, "verify", &public, &tag_ref, &[]);
    assert_success(&out);
    // cosign prints the verified payloads: ours, naming the index.
    assert!(
        stdout(&out).contains(&format!("\"docker-manifest-digest\":\"{index_digest}\"")),
        "{}",
        stdout(&out)
    );
    let index: Value = serde_json::from_slice(&raw(&tag_ref)).unwrap();
    for m in index["manifests"].as_array().unwrap() {
        let by_digest = format!("{repo_ref}@{}", m["digest"].as_str().unwrap());
        assert_success(&cosign_verify(&cosign, "verify", &public, &by_digest, &[]));
    }
    for kind in ["slsaprovenance1", "spdxjson"] {
        let out = cosign_verify(
            &cosign,
            "verify-attestation",
            &public,
            &tag_ref,
            &["--type", kind],
        );
        assert_success(&out);
        assert!(
            stdout(&out).contains("\"payloadType\":\"application/vnd.in-toto+json\""),
            "{}",
            stdout(&out)
        );
    }
    // etcdimg verify agrees.
    let out = sb.etcdimg(&[
        "verify",
        "--key",
        public.to_str().unwrap(),
        &tag_ref,
        "--json",
    ]);
    assert_success(&out);
    let v = json(&out);
    assert_eq!(v["digest"], index_digest.as_str());
    assert_eq!(v["checks"].as_array().unwrap().len(), 5, "{v}");

    // The provenance names every input with its digest, and images.toml's.
    let att: Value = serde_json::from_slice(&raw(&format!(
        "{repo_ref}:{}",
        etcdimg::sign::tag(&index_digest, "att")
    )))
    .unwrap();
    let layer = att["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["predicateType"] == etcdimg::sign::SLSA_PROVENANCE_V1)
        .unwrap();
    let envelope = common::world::blob(&host, "etcd", layer["digest"].as_str().unwrap());
    let verifying = etcdimg::sign::key::verifying_key(public.to_str().unwrap()).unwrap();
    let statement = etcdimg::sign::open_envelope(&verifying, &envelope).unwrap();
    let predicate = &statement["predicate"];
    let config = std::fs::read(sb.path().join("images.toml")).unwrap();
    assert_eq!(
        predicate["buildDefinition"]["externalParameters"]["config"]["digest"]["sha256"],
        sha256(&config).trim_start_matches("sha256:"),
        "{predicate}"
    );
    let deps = predicate["buildDefinition"]["resolvedDependencies"].to_string();
    for needle in [
        "etcd-v3.5.1-linux-amd64.tar.gz",
        "etcd-v3.5.1-linux-arm64.tar.gz",
        "SHA256SUMS",
        "pkg:oci/",
        "etcdimg-migrate-source",
    ] {
        assert!(deps.contains(needle), "{needle}: {deps}");
    }
    assert!(
        predicate["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["digest"]["sha256"]
                .as_str()
                .is_some_and(|h| h.len() == 64)),
        "every input has its sha256: {deps}"
    );

    // plan shows what is signed (and, before signing, what is not).
    let out = sb.etcdimg(&["plan", "--no-build", "--json"]);
    assert_success(&out);
    let planned = json(&out);
    let sigs = planned["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 3, "{planned}");
    assert!(sigs.iter().all(|s| s["signed"] == true), "{planned}");
    assert_eq!(sigs[0]["attested"], true, "{planned}");

    // Signing again adds nothing.
    let out = sb.etcdimg(&["sign", "--key", key.to_str().unwrap(), "--json"]);
    assert_success(&out);
    let again = json(&out);
    assert!(
        again["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["changed"] == false)
            && again["attestations"][0]["changed"] == false,
        "{again}"
    );

    // Another key: cosign and etcdimg refuse.
    let out = cosign_verify(&cosign, "verify", &other_public, &tag_ref, &[]);
    assert!(!out.status.success(), "cosign accepted another key");
    let out = sb.etcdimg(&["verify", "--key", other_public.to_str().unwrap(), &tag_ref]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("another key"), "{}", stdout(&out));

    // A release signed with another key only (revision 1): refused with the release key.
    sb.set("COSIGN_PASSWORD", "other");
    let out = sb.etcdimg(&[
        "all-push",
        "--revision",
        "1",
        "--sign",
        "--key",
        other_key.to_str().unwrap(),
    ]);
    assert_success(&out);
    let rev1 = format!("{repo_ref}:3.5.1-1");
    assert!(!cosign_verify(&cosign, "verify", &public, &rev1, &[])
        .status
        .success());
    let out = sb.etcdimg(&["verify", "--key", public.to_str().unwrap(), &rev1]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    // A provenance statement about another digest, signed with the right key, in the index's
    // attestations: refused by both.
    let signing = etcdimg::sign::key::signing_key(key.to_str().unwrap(), Some("s3cret")).unwrap();
    let wrong = etcdimg::sign::statement(
        &repo_ref,
        &sha256(b"another image"),
        etcdimg::sign::SLSA_PROVENANCE_V1,
        serde_json::json!({"buildDefinition": {"buildType": "x", "externalParameters": {}}, "runDetails": {"builder": {"id": "x"}}}),
    );
    let layer = etcdimg::sign::Layer::attestation(
        etcdimg::sign::envelope(&signing, &wrong),
        etcdimg::sign::SLSA_PROVENANCE_V1,
    );
    let (manifest, config) =
        etcdimg::sign::manifest(&[], std::slice::from_ref(&layer), false, None).unwrap();
    sb.set("COSIGN_PASSWORD", "s3cret");
    let out = sb.etcdimg(&["all-push", "--revision", "2", "--no-report"]);
    assert_success(&out);
    let rev2 = format!("{repo_ref}:3.5.1-2");
    let rev2_digest = sha256(&raw(&rev2));
    put(
        &host,
        "etcd",
        &[&config, &layer.bytes],
        &etcdimg::sign::tag(&rev2_digest, "att"),
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    let out = cosign_verify(
        &cosign,
        "verify-attestation",
        &public,
        &rev2,
        &["--type", "slsaprovenance1"],
    );
    assert!(
        !out.status.success(),
        "cosign accepted a statement about another digest"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no matching subject digest"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sb.etcdimg(&["verify", "--key", public.to_str().unwrap(), &rev2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("not the index"), "{}", stdout(&out));

    // A tampered index under the signed tag: no signature names its digest.
    let mut tampered: Value = serde_json::from_slice(&raw(&tag_ref)).unwrap();
    tampered["annotations"] = serde_json::json!({"tampered": "yes"});
    let bytes = serde_json::to_vec(&tampered).unwrap();
    put(
        &host,
        "etcd",
        &[],
        "3.5.1-0",
        tampered["mediaType"].as_str().unwrap(),
        &bytes,
    );
    assert!(!cosign_verify(&cosign, "verify", &public, &tag_ref, &[])
        .status
        .success());
    let out = sb.etcdimg(&["verify", "--key", public.to_str().unwrap(), &tag_ref]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("no signatures"), "{}", stdout(&out));
}

/// The media type of what `reference` points to, and of the config of a manifest.
fn media_types(reference: &str) -> Vec<String> {
    let v: Value = serde_json::from_slice(&raw(reference)).unwrap();
    let mut out = vec![v["mediaType"].as_str().unwrap_or("(none)").to_string()];
    if let Some(c) = v["config"]["mediaType"].as_str() {
        out.push(format!("config {c}"));
    }
    out
}

// guards: etcd's releases were published with four manifest media types at once
// (etcd-io/etcd#21007), which broke kubeadm (kubernetes/kubernetes#135697).
#[test]
fn a_release_has_one_manifest_format_signatures_attestations_and_report_included() {
    let t = "a_release_has_one_manifest_format_signatures_attestations_and_report_included";
    for format in ["oci", "docker"] {
        let Some(mut w) = world(t, &[]) else {
            return;
        };
        let Some(cosign) = cosign(t) else { return };
        w.local_project("");
        let World { mut sb, host, .. } = w;
        let (key, public) = key_pair(&cosign, sb.path(), "release", "pw");
        sb.set("COSIGN_PASSWORD", "pw");
        let out = sb.etcdimg(&[
            "all-push",
            "--manifest-format",
            format,
            "--spdx",
            "--sign",
            "--key",
            key.to_str().unwrap(),
        ]);
        assert_success(&out);
        let repo = format!("{host}/etcd");
        let tag_ref = format!("{repo}:3.5.1-0");
        let index_bytes = raw(&tag_ref);
        let index_digest = sha256(&index_bytes);
        let index: Value = serde_json::from_slice(&index_bytes).unwrap();
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut walk = |what: String, reference: String| {
            for m in media_types(&reference) {
                seen.push((what.clone(), m));
            }
        };
        walk("index".into(), tag_ref.clone());
        let mut signed = vec![index_digest.clone()];
        for m in index["manifests"].as_array().unwrap() {
            let d = m["digest"].as_str().unwrap().to_string();
            walk(format!("manifest {d}"), format!("{repo}@{d}"));
            signed.push(d);
        }
        for d in &signed {
            let sig = format!("{repo}:{}", etcdimg::sign::tag(d, "sig"));
            // distribution 2.8 has no referrers API: cosign's tag only, no `subject`.
            let m: Value = serde_json::from_slice(&raw(&sig)).unwrap();
            assert!(m.get("subject").is_none(), "{m}");
            walk(format!("signature of {d}"), sig);
        }
        walk(
            "attestations".into(),
            format!("{repo}:{}", etcdimg::sign::tag(&index_digest, "att")),
        );
        let fallback = format!("{repo}:{}", index_digest.replacen(':', "-", 1));
        walk("report listing".into(), fallback.clone());
        let listing: Value = serde_json::from_slice(&raw(&fallback)).unwrap();
        for a in listing["manifests"].as_array().unwrap() {
            let d = a["digest"].as_str().unwrap();
            walk(format!("report {d}"), format!("{repo}@{d}"));
        }
        let allowed: &[&str] = if format == "oci" {
            &[
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
                "config application/vnd.oci.image.config.v1+json",
                "config application/vnd.oci.empty.v1+json",
            ]
        } else {
            &[
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "config application/vnd.docker.container.image.v1+json",
            ]
        };
        let wrong: Vec<&(String, String)> = seen
            .iter()
            .filter(|(_, m)| !allowed.contains(&m.as_str()))
            .collect();
        assert!(wrong.is_empty(), "{format}: {wrong:?}");
        assert!(seen.len() >= 12, "{format}: {seen:?}");
        // And cosign still verifies the signature and the attestations in that format.
        assert_success(&cosign_verify(&cosign, "verify", &public, &tag_ref, &[]));
        assert_success(&cosign_verify(
            &cosign,
            "verify-attestation",
            &public,
            &tag_ref,
            &["--type", "slsaprovenance1"],
        ));
    }
}

/// `GET /v2/<repo>/referrers/<digest>` from the registry (python's urllib): the referrers'
/// digests.
fn referrers(host: &str, repo: &str, digest: &str) -> Vec<String> {
    let body = common::world::http_get(&format!("http://{host}/v2/{repo}/referrers/{digest}"));
    let index: Value = serde_json::from_slice(&body).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_registry_with_the_referrers_api_lists_what_is_signed_and_cosign_still_verifies_it() {
    let t = "a_registry_with_the_referrers_api_lists_what_is_signed_and_cosign_still_verifies_it";
    let Some(mut w) = world(t, &[]) else {
        return;
    };
    let Some(cosign) = cosign(t) else { return };
    let Some(ggcr) = go_tool(t, "ggcr-registry") else {
        return;
    };
    // The same project, pushing to a registry that has the referrers API.
    w.registry = ggcr_registry(&ggcr);
    w.host = format!("127.0.0.1:{}", w.registry.port);
    w.local_project("");
    let World {
        mut sb,
        host,
        registry: _registry,
        ..
    } = w;
    let (key, public) = key_pair(&cosign, sb.path(), "release", "pw");
    sb.set("COSIGN_PASSWORD", "pw");
    let out = sb.etcdimg(&[
        "all-push",
        "--spdx",
        "--sign",
        "--key",
        key.to_str().unwrap(),
        "--json",
    ]);
    assert_success(&out);
    let pushed = json(&out);
    let repo = format!("{host}/etcd");
    let tag_ref = format!("{repo}:3.5.1-0");
    let index_bytes = raw(&tag_ref);
    let index_digest = sha256(&index_bytes);
    let index: Value = serde_json::from_slice(&index_bytes).unwrap();

    // Every signature manifest names what it signs as its subject, and the registry lists it
    // among that manifest's referrers.
    let mut signed = vec![index_digest.clone()];
    signed.extend(
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_string()),
    );
    assert_eq!(signed.len(), 3);
    for d in &signed {
        let sig_bytes = raw(&format!("{repo}:{}", etcdimg::sign::tag(d, "sig")));
        let sig: Value = serde_json::from_slice(&sig_bytes).unwrap();
        assert_eq!(sig["subject"]["digest"], d.as_str(), "{sig}");
        let listed = referrers(&host, "etcd", d);
        assert!(
            listed.contains(&sha256(&sig_bytes)),
            "the signature of {d} is not among its referrers: {listed:?}"
        );
    }
    // The attestations and the release report are the index's referrers as well.
    let att_bytes = raw(&format!(
        "{repo}:{}",
        etcdimg::sign::tag(&index_digest, "att")
    ));
    let listed = referrers(&host, "etcd", &index_digest);
    assert!(listed.contains(&sha256(&att_bytes)), "{listed:?}");
    let report = pushed["report"]["attached"]["digest"].as_str().unwrap();
    assert!(listed.contains(&report.to_string()), "{report}: {listed:?}");
    assert_eq!(
        listed.len(),
        3,
        "signature, attestations, report: {listed:?}"
    );
    // This registry answers the report's PUT without `OCI-Subject`, so per the distribution
    // spec 1.1 the fallback tag lists the report as well.
    let attached = &pushed["report"]["attached"];
    assert_eq!(attached["method"], "fallback-tag", "{attached}");
    let fallback: Value = serde_json::from_slice(&raw(&format!(
        "{repo}:{}",
        index_digest.replacen(':', "-", 1)
    )))
    .unwrap();
    assert_eq!(fallback["manifests"][0]["digest"], report, "{fallback}");

    // cosign (which reads its own tags) and etcdimg verify accept the release.
    assert_success(&cosign_verify(&cosign, "verify", &public, &tag_ref, &[]));
    for kind in ["slsaprovenance1", "spdxjson"] {
        assert_success(&cosign_verify(
            &cosign,
            "verify-attestation",
            &public,
            &tag_ref,
            &["--type", kind],
        ));
    }
    let out = sb.etcdimg(&["verify", "--key", public.to_str().unwrap(), &tag_ref]);
    assert_success(&out);
    // plan sees the release as signed, and the report as listed by the API.
    let out = sb.etcdimg(&["plan", "--no-build", "--json"]);
    assert_success(&out);
    let planned = json(&out);
    assert_eq!(planned["report"]["method"], "referrers-api", "{planned}");
    let sigs = planned["signatures"].as_array().unwrap();
    assert!(
        sigs.len() == 3 && sigs.iter().all(|s| s["signed"] == true),
        "{planned}"
    );
}

/// `openssl <args>` (split at spaces) in `dir`, which must succeed.
fn openssl(dir: &Path, args: &str) -> Output {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split(' '))
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    out
}

// guards: a key given unencrypted (SEC1 or PKCS#8, as openssl writes them), from a file or
// from `env://VAR`, signs what openssl then verifies against the key's own public half; the
// key's text never shows in an error.
#[test]
fn unencrypted_keys_from_a_file_or_the_environment_sign_what_openssl_verifies() {
    let t = "unencrypted_keys_from_a_file_or_the_environment_sign_what_openssl_verifies";
    if !require(t, "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, "ecparam -name prime256v1 -genkey -noout -out sec1.pem");
    openssl(d, "pkcs8 -topk8 -nocrypt -in sec1.pem -out pkcs8.pem");
    openssl(d, "ec -in sec1.pem -pubout -out pub.pem");
    let sec1 = std::fs::read_to_string(d.join("sec1.pem")).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    let pkcs8 = std::fs::read_to_string(d.join("pkcs8.pem")).unwrap();
    assert!(pkcs8.contains("BEGIN PRIVATE KEY"), "{pkcs8}");
    let var = "ETCDIMG_TEST_UNENCRYPTED_SIGNING_KEY";
    std::env::set_var(var, &pkcs8);
    let sources = [
        d.join("sec1.pem").display().to_string(),
        d.join("pkcs8.pem").display().to_string(),
        format!("env://{var}"),
    ];
    let payload = etcdimg::sign::simple_signing_payload(
        "127.0.0.1:5000/etcd",
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    );
    std::fs::write(d.join("payload"), &payload).unwrap();
    let public = etcdimg::sign::key::verifying_key(d.join("pub.pem").to_str().unwrap()).unwrap();
    for source in &sources {
        // No password is asked of an unencrypted key, whatever COSIGN_PASSWORD holds.
        let key = etcdimg::sign::key::signing_key(source, Some("unused")).unwrap();
        assert_eq!(key.verifying_key(), &public, "{source}: another key");
        let sig = etcdimg::sign::sign(&key, &payload);
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &sig).unwrap();
        std::fs::write(d.join("sig.der"), der).unwrap();
        let out = openssl(d, "dgst -sha256 -verify pub.pem -signature sig.der payload");
        assert!(
            stdout(&out).contains("Verified OK"),
            "{source}: {}",
            stdout(&out)
        );
    }
    // A damaged key is refused, naming where it came from and not what it holds.
    let body = pkcs8.lines().nth(1).unwrap().to_string();
    let reversed: String = body.chars().rev().collect();
    std::env::set_var(var, pkcs8.replace(&body, &reversed));
    let err = etcdimg::sign::key::signing_key(&format!("env://{var}"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(var), "{err}");
    assert!(!err.contains(&body[..20]), "the key leaked: {err}");
    std::env::remove_var(var);
}
