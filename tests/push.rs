//! `etcdimg push`, `push-manifest` and `all-push` against Debian's docker-registry (distribution
//! 2.8) on 127.0.0.1, checked with skopeo and umoci (which we did not write). Faults come from
//! a small proxy in front of the real registry.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::world::*;
use common::*;
use serde_json::Value;

/// Every file in a umoci-unpacked rootfs: path -> (mode, sha256 or link target).
fn tree(rootfs: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![rootfs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(rootfs).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))
            };
            out.insert(rel, format!("{:o} {what}", meta.permissions().mode()));
        }
    }
    out
}

fn unpack(image: &str, into: &Path) -> PathBuf {
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", image])
        .arg(into));
    into.join("rootfs")
}

#[test]
fn all_push_to_a_real_registry_is_correct_per_skopeo_and_umoci() {
    let t = "all_push_to_a_real_registry_is_correct_per_skopeo_and_umoci";
    let Some(World {
        fx,
        registry,
        host,
        mirror,
        mut sb,
    }) = world(t, &["umoci"])
    else {
        return;
    };
    let base = push_base(&fx, &registry);
    project(
        &mut sb,
        mirror.port,
        &format!("{host}/k8s"),
        &base,
        &format!("insecure_registries = [\"{host}\"]"),
    );

    let out = sb.etcdimg(&["all-push", "--json"]);
    assert_success(&out);
    let report = json(&out);
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for img in images {
        assert_eq!(img["tag"]["status"], "created", "{img}");
        // The busybox layer is mounted from library/busybox, never uploaded again.
        assert_eq!(img["blobs_mounted"], 1, "{img}");
        assert_eq!(img["blobs_uploaded"], 4, "{img}");
    }
    assert_eq!(report["index"]["tag"]["status"], "created");
    let index_ref = format!("docker://{host}/k8s/etcd:3.5.1-0");
    assert_eq!(
        report["index"]["reference"],
        format!("{host}/k8s/etcd:3.5.1-0")
    );

    // The index, as skopeo reads it: both arches, arm64 with v8, amd64 with no variant.
    let raw = skopeo_json(&["inspect", "--raw", "--tls-verify=false", &index_ref]);
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    let platforms: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            match p.get("variant") {
                Some(v) => format!("{}/{}/{}", p["os"], p["architecture"], v),
                None => format!("{}/{}", p["os"], p["architecture"]),
            }
            .replace('"', "")
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    for (i, img) in images.iter().enumerate() {
        assert_eq!(raw["manifests"][i]["digest"], img["digest"]);
    }
    assert_eq!(
        report["index"]["digest"],
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                serde_json::to_vec(&raw).unwrap()
            ))
        ),
        "the index digest is over the bytes the registry serves"
    );

    // Each arch's config, resolved through the index by skopeo.
    for (arch, variant) in [("amd64", ""), ("arm64", "v8")] {
        let v = skopeo_json(&[
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            arch,
            "--override-variant",
            variant,
            &index_ref,
        ]);
        assert_eq!(v["Architecture"], arch);
        assert_eq!(v["Os"], "linux");
        let config = skopeo_json(&[
            "inspect",
            "--config",
            "--tls-verify=false",
            "--override-arch",
            arch,
            "--override-variant",
            variant,
            &index_ref,
        ]);
        assert_eq!(config["architecture"], arch);
        if variant.is_empty() {
            assert!(config.get("variant").is_none(), "{config}");
        } else {
            assert_eq!(config["variant"], variant);
        }
        let env = v["Env"].to_string();
        assert_eq!(
            env.contains("ETCD_UNSUPPORTED_ARCH"),
            arch != "amd64",
            "{arch}: {env}"
        );
    }

    // Copy back with skopeo, unpack with umoci: the same files as the local layout.
    let back = sb.path().join("back");
    for arch in ["amd64", "arm64"] {
        let reference = format!("3.5.1-0-linux-{arch}");
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{host}/k8s/etcd:{reference}"),
            &format!("oci:{}:{reference}", back.display()),
        ]));
        let remote = unpack(
            &format!("{}:{reference}", back.display()),
            &sb.path().join(format!("remote-{arch}")),
        );
        let local = unpack(
            &format!("{}:{reference}", sb.path().join("oci").display()),
            &sb.path().join(format!("local-{arch}")),
        );
        let (r, l) = (tree(&remote), tree(&local));
        assert!(r.len() > 10, "{r:?}");
        assert_eq!(r, l, "{arch}: pushed files differ from the layout's");
        assert!(r.contains_key("usr/local/bin/etcd-3.4.23"));
    }

    // The index was also written to the layout under the plain tag, byte for byte.
    let local_index = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:3.5.1-0", sb.path().join("oci").display()),
    ]);
    assert!(local_index.status.success(), "{}", stderr(&local_index));
    assert_eq!(
        serde_json::from_slice::<Value>(&local_index.stdout).unwrap(),
        raw
    );

    // A second push, through a counting proxy: zero blob bytes, no upload requests at all.
    // (The release report names the registry, and the proxy's name differs; that a re-push
    // re-attaches nothing is checked in release.rs.)
    let proxy = FaultProxy::start(registry.port, |_| Fault::Forward);
    let via = format!("127.0.0.1:{}", proxy.port);
    let out = sb.etcdimg(&[
        "all-push",
        "--json",
        "--no-report",
        "--push-registry",
        &format!("{via}/k8s"),
        "--insecure-registry",
        &via,
    ]);
    assert_success(&out);
    let again = json(&out);
    assert_eq!(again["bytes_uploaded"], 0);
    for img in again["images"].as_array().unwrap() {
        assert_eq!(img["tag"]["status"], "unchanged", "{img}");
    }
    let requests = proxy.requests();
    let uploads: Vec<_> = requests.iter().filter(|r| r.is_blob_upload()).collect();
    assert!(uploads.is_empty(), "re-push sent uploads: {uploads:?}");
    assert_eq!(requests.iter().map(|r| r.body_len).sum::<usize>(), 0);
    assert!(
        requests
            .iter()
            .all(|r| r.method == "HEAD" || r.method == "GET"),
        "{requests:?}"
    );
}

#[test]
fn legacy_naming_and_docker_manifest_list_via_push_and_push_manifest() {
    let t = "legacy_naming_and_docker_manifest_list_via_push_and_push_manifest";
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("naming = \"legacy\"");
    let World { host, mut sb, .. } = w;
    sb.set("ETCDIMG_MANIFEST_FORMAT", "docker");

    // push-manifest before the images exist locally: a clear error, nothing pushed.
    let out = sb.etcdimg(&["push-manifest"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("etcdimg build --arch"),
        "{}",
        stderr(&out)
    );

    for arch in ["amd64", "arm64"] {
        let out = sb.etcdimg(&["push", "--arch", arch, "--json"]);
        assert_success(&out);
        let r = json(&out);
        assert_eq!(
            r["images"][0]["reference"],
            format!("{host}/etcd-{arch}:3.5.1-0")
        );
        assert_eq!(
            r["images"][0]["media_type"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let raw = skopeo_json(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/etcd-{arch}:3.5.1-0"),
        ]);
        assert_eq!(
            raw["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            raw["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    let out = sb.etcdimg(&["push-manifest", "--json"]);
    assert_success(&out);
    let r = json(&out);
    assert_eq!(r["index"]["reference"], format!("{host}/etcd:3.5.1-0"));
    let list = skopeo_json(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/etcd:3.5.1-0"),
    ]);
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(list["manifests"][1]["platform"]["variant"], "v8");
    // The per-arch manifests were copied into the index repository, so the list resolves.
    let v = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{host}/etcd:3.5.1-0"),
    ]);
    assert_eq!(v["Architecture"], "arm64");
    let dest = sb.path().join("copied");
    run(Command::new("skopeo").args([
        "copy",
        "--all",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{host}/etcd:3.5.1-0"),
        &format!("oci:{}:copied", dest.display()),
    ]));
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and an htpasswd file.
fn tls_and_htpasswd(
    dir: &Path,
    user: &str,
    password: &str,
) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.crt");
    let ext = dir.join("ext.cnf");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg("/CN=etcdimg test CA")
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    let htpasswd = dir.join("htpasswd");
    let out = run(Command::new("htpasswd").args(["-Bbn", user, password]));
    std::fs::write(&htpasswd, out.stdout).unwrap();
    (ca, cert, key, htpasswd)
}

fn docker_config(dir: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), body).unwrap();
    dir.to_path_buf()
}

#[test]
fn push_with_basic_auth_over_tls_and_never_a_password_in_output() {
    let t = "push_with_basic_auth_over_tls_and_never_a_password_in_output";
    let Some(fx) = fixtures(t) else { return };
    if !tools(
        t,
        &[
            "docker-registry",
            "skopeo",
            "python3",
            "openssl",
            "htpasswd",
        ],
    ) {
        return;
    }
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pki = tempfile::tempdir().unwrap();
    let password = "Pa55-w0rd-etcdimg";
    let (ca, cert, key, htpasswd) = tls_and_htpasswd(pki.path(), "releaser", password);
    let registry = registry_with(Some((&cert, &key)), Some(&htpasswd_auth(&htpasswd)));
    let host = format!("127.0.0.1:{}", registry.port);
    let mirror = http_mirror(&fx.join("mirror"));
    let mut sb = Sandbox::new();
    let base = format!("oci:{}:1.35", fx.join("busybox-oci").display());
    project(&mut sb, mirror.port, &host, &base, "");
    // Build first so that the pushes below only push.
    assert_success(&sb.etcdimg(&["build", "--arch", "amd64"]));
    let ca_arg = ca.display().to_string();

    // Wrong password: a clear error without the password, even with --verbose.
    let wrong = "Wr0ng-secret-value";
    let cfg = docker_config(
        &sb.path().join("docker-wrong"),
        &format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
            b64(&format!("releaser:{wrong}"))
        ),
    );
    sb.set("DOCKER_CONFIG", cfg.display().to_string());
    let out = sb.etcdimg(&["push", "--arch", "amd64", "--ca-cert", &ca_arg, "--verbose"]);
    assert!(!out.status.success());
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("authentication with"), "{all}");
    assert!(all.contains("refused user `releaser`"), "{all}");
    assert!(all.contains("DOCKER_CONFIG"), "{all}");
    for secret in [
        wrong.to_string(),
        b64(&format!("releaser:{wrong}")),
        password.to_string(),
    ] {
        assert!(!all.contains(&secret), "output leaks a secret: {all}");
    }
    assert_eq!(out.status.code(), Some(1));

    // No credentials at all: the error says there are none.
    let empty = docker_config(&sb.path().join("docker-empty"), r#"{"auths": {}}"#);
    sb.set("DOCKER_CONFIG", empty.display().to_string());
    let out = sb.etcdimg(&["push", "--arch", "amd64", "--ca-cert", &ca_arg]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("wants a username and password"),
        "{}",
        stderr(&out)
    );

    // Right credentials, but no CA: certificate verification fails, with a hint.
    let good = docker_config(
        &sb.path().join("docker-good"),
        &format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
            b64(&format!("releaser:{password}"))
        ),
    );
    sb.set("DOCKER_CONFIG", good.display().to_string());
    let out = sb.etcdimg(&["push", "--arch", "amd64"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    assert!(!err.contains(password));

    // With the CA: pushed, and skopeo (with the same CA and credentials) reads it back.
    let out = sb.etcdimg(&[
        "push",
        "--arch",
        "amd64",
        "--ca-cert",
        &ca_arg,
        "--json",
        "-v",
    ]);
    assert_success(&out);
    assert!(!format!("{}{}", stdout(&out), stderr(&out)).contains(password));
    let r = json(&out);
    let certs = pki.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let v = skopeo_json(&[
        "inspect",
        "--raw",
        "--cert-dir",
        certs.to_str().unwrap(),
        "--creds",
        &format!("releaser:{password}"),
        &format!("docker://{host}/etcd:3.5.1-0-linux-amd64"),
    ]);
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            serde_json::to_vec(&v).unwrap()
        ))
    );
    assert_eq!(r["images"][0]["digest"], digest);

    // A credential helper (credHelpers) works too, and is what a CI runner typically uses.
    let bin = sb.path().join("helper-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-etcdimgtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\necho '{{\"ServerURL\":\"'\"$server\"'\",\"Username\":\"releaser\",\"Secret\":\"{password}\"}}'\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let helpers = docker_config(
        &sb.path().join("docker-helper"),
        &format!(r#"{{"credHelpers": {{"{host}": "etcdimgtest"}}}}"#),
    );
    sb.set("DOCKER_CONFIG", helpers.display().to_string());
    sb.set(
        "PATH",
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    );
    let out = sb.etcdimg(&[
        "push",
        "--arch",
        "amd64",
        "--ca-cert",
        &ca_arg,
        "--json",
        "--revision",
        "1",
    ]);
    assert_success(&out);
    assert_eq!(json(&out)["images"][0]["tag"]["status"], "created");
}

/// A fault injected the first time `when` matches; every other request is forwarded.
fn first_time(
    when: impl Fn(&ProxyRequest) -> bool + Send + Sync + 'static,
    fault: impl Fn() -> Fault + Send + Sync + 'static,
) -> Box<dyn Fn(&ProxyRequest) -> Fault + Send + Sync> {
    let fired = std::sync::atomic::AtomicBool::new(false);
    Box::new(move |r| {
        if when(r) && !fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
            fault()
        } else {
            Fault::Forward
        }
    })
}

/// The registry serves a manifest only if all its blobs are there: copying every tag out with
/// skopeo fails otherwise.
fn assert_complete(host: &str, reference: &str, into: &Path) {
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{host}/{reference}"),
        &format!("dir:{}", into.display()),
    ]));
}

fn tags(port: u16, repo: &str) -> Vec<String> {
    let out = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{port}/{repo}"),
    ]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn push_survives_faults_and_never_leaves_a_manifest_without_blobs() {
    let t = "push_survives_faults_and_never_leaves_a_manifest_without_blobs";
    let Some(w) = world(t, &[]) else { return };
    let base = w.layout_base();
    let World {
        registry,
        mirror,
        mut sb,
        ..
    } = w;
    project(&mut sb, mirror.port, "example.invalid", &base, "");
    assert_success(&sb.etcdimg(&["build", "--arch", "amd64"]));
    let big = 4 << 20; // the etcd layers are 14-20 MB; the busybox layer is ~1 MB
    let direct = format!("127.0.0.1:{}", registry.port);
    let copies = sb.path().join("copies");
    std::fs::create_dir_all(&copies).unwrap();

    // Pushes to `repo` through a proxy injecting `fault`; on success checks with skopeo that
    // the registry has every blob of the pushed manifest. Returns the push's stderr.
    let scenario = |repo: &str, fault: Box<dyn Fn(&ProxyRequest) -> Fault + Send + Sync>| {
        let proxy = FaultProxy::start(registry.port, fault);
        let via = format!("127.0.0.1:{}", proxy.port);
        let out = sb.etcdimg(&[
            "push",
            "--arch",
            "amd64",
            "--json",
            "--push-registry",
            &format!("{via}/{repo}"),
            "--insecure-registry",
            &via,
        ]);
        if out.status.success() {
            assert_complete(
                &direct,
                &format!("{repo}/etcd:3.5.1-0-linux-amd64"),
                &copies.join(repo),
            );
        }
        (out, proxy.requests())
    };

    // A 500 once, on the first blob upload.
    let (out, _) = scenario(
        "five-hundred",
        first_time(
            |r| r.method == "PUT" && r.is_blob_upload(),
            || Fault::Respond(http_response("500 Internal Server Error", &[], b"boom")),
        ),
    );
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains("500 Internal Server Error: boom; retrying"),
        "{err}"
    );

    // A 429 with Retry-After: 1 on the first upload session: waited for 1 s, not the backoff.
    let (out, _) = scenario(
        "too-many",
        first_time(
            |r| r.method == "POST",
            || {
                Fault::Respond(http_response(
                    "429 Too Many Requests",
                    &[("Retry-After", "1".into()), ("Content-Length", "0".into())],
                    b"",
                ))
            },
        ),
    );
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains("429 Too Many Requests; retrying in 1.0s"),
        "{err}"
    );

    // A connection cut in the middle of a big monolithic blob upload.
    let (out, _) = scenario(
        "cut",
        first_time(
            move |r| r.method == "PUT" && r.content_length() > big,
            move || Fault::Cut(big / 2),
        ),
    );
    assert_success(&out);
    assert!(stderr(&out).contains("retrying"), "{}", stderr(&out));

    // 413 for any body over 4 MiB: chunked uploads (halving to fit), and a cut in the middle
    // of a later chunk resumes from the registry's Range instead of starting over.
    let cut_later_chunk = first_time(
        move |r| r.method == "PATCH" && r.range_start() >= big,
        || Fault::Cut(1 << 20),
    );
    let (out, requests) = scenario(
        "chunked",
        Box::new(move |r| {
            if r.content_length() > big {
                Fault::Respond(http_response(
                    "413 Request Entity Too Large",
                    &[("Content-Length", "0".into())],
                    b"",
                ))
            } else {
                cut_later_chunk(r)
            }
        }),
    );
    assert_success(&out);
    let err = stderr(&out);
    assert!(err.contains("(413); switching to chunked uploads"), "{err}");
    assert!(err.contains("using 4194304-byte chunks"), "{err}");
    assert!(err.contains("resuming at byte"), "{err}");
    let cut_at = requests
        .iter()
        .position(|r| r.method == "PATCH" && r.body_len < r.content_length())
        .expect("a cut PATCH");
    let cut_start = requests[cut_at].range_start();
    assert!(
        requests[cut_at + 1..]
            .iter()
            .any(|r| r.method == "PATCH" && r.range_start() == cut_start),
        "the chunk cut at {cut_start} was resent from its start, not from 0: {requests:#?}"
    );

    // A blob that always fails: the push fails with the last real cause, and no tag exists.
    let (out, _) = scenario(
        "broken",
        Box::new(move |r| {
            if r.method == "PUT" && r.content_length() > big {
                Fault::Respond(http_response(
                    "503 Service Unavailable",
                    &[("Content-Length", "4".into())],
                    b"down",
                ))
            } else {
                Fault::Forward
            }
        }),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("failed after 5 attempts"), "{err}");
    assert!(
        err.contains("last error: 503 Service Unavailable: down"),
        "{err}"
    );
    assert!(tags(registry.port, "broken/etcd").is_empty());

    // An unreachable registry fails fast, with a clear error.
    let dead = free_port();
    let started = Instant::now();
    let out = sb.etcdimg(&[
        "push",
        "--arch",
        "amd64",
        "--push-registry",
        &format!("127.0.0.1:{dead}"),
        "--insecure-registry",
        &format!("127.0.0.1:{dead}"),
    ]);
    assert!(!out.status.success());
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach registry `127.0.0.1:{dead}`")),
        "{err}"
    );
    assert!(err.contains("running and reachable"), "{err}");

    // A plain-HTTP registry not declared insecure: refused, never silently downgraded.
    let out = sb.etcdimg(&["push", "--arch", "amd64", "--push-registry", &direct]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("--insecure-registry {direct}")),
        "{err}"
    );
    assert!(tags(registry.port, "etcd").is_empty());
}

#[test]
fn an_existing_tag_is_not_moved_without_force() {
    let t = "an_existing_tag_is_not_moved_without_force";
    let Some(mut w) = world(t, &[]) else { return };
    w.local_project("");
    let World {
        registry,
        host,
        mut sb,
        ..
    } = w;
    let out = sb.etcdimg(&["all-push", "--json"]);
    assert_success(&out);
    let first = json(&out);
    let old = first["images"][0]["digest"].as_str().unwrap().to_string();
    let old_index = first["index"]["digest"].as_str().unwrap().to_string();

    // A different image under the same tag (another build time).
    sb.set("SOURCE_DATE_EPOCH", "1700000000");
    let out = sb.etcdimg(&["push", "--arch", "amd64"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "`{host}/etcd:3.5.1-0-linux-amd64` already points to {old}"
        )),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let now = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/etcd:3.5.1-0-linux-amd64"),
    ]);
    assert_eq!(now["Digest"], old.as_str(), "the tag did not move");

    // all-push refuses before uploading anything.
    let proxy = FaultProxy::start(registry.port, |_| Fault::Forward);
    let via = format!("127.0.0.1:{}", proxy.port);
    let out = sb.etcdimg(&[
        "all-push",
        "--push-registry",
        &via,
        "--insecure-registry",
        &via,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing was pushed"),
        "{}",
        stderr(&out)
    );
    assert!(
        proxy
            .requests()
            .iter()
            .all(|r| r.method == "HEAD" || r.method == "GET"),
        "{:?}",
        proxy.requests()
    );

    // --force moves it and says from where.
    let out = sb.etcdimg(&["all-push", "--force", "--json"]);
    assert_success(&out);
    let moved = json(&out);
    assert_eq!(moved["images"][0]["tag"]["status"], "moved");
    assert_eq!(moved["images"][0]["tag"]["previous"], old.as_str());
    assert_eq!(moved["index"]["tag"]["previous"], old_index.as_str());
    let now = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/etcd:3.5.1-0-linux-amd64"),
    ]);
    assert_eq!(now["Digest"], moved["images"][0]["digest"]);
}

/// One request to the test token service.
#[derive(Debug, Clone)]
struct TokenRequest {
    method: String,
    /// The user of a valid basic-auth header.
    user: Option<String>,
    refresh_token: Option<String>,
    scopes: Vec<String>,
    granted: bool,
}

/// A token service for the real registry's `auth: token` mode: it checks basic credentials
/// (GET) or an identity token (POST, OAuth2 refresh-token grant), and issues RS256 JWTs signed
/// with openssl, carrying the scopes asked for (anonymous callers get pull only).
struct TokenService {
    server: FaultProxy,
    log: std::sync::Arc<std::sync::Mutex<Vec<TokenRequest>>>,
    cert: PathBuf,
}

const SERVICE: &str = "etcdimg-test-registry";
const ISSUER: &str = "etcdimg-test-issuer";

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn token_service(dir: &Path, user: &str, password: &str, identity: &str) -> TokenService {
    use base64::Engine;
    use std::sync::{Arc, Mutex};
    let key = dir.join("token.key");
    let cert = dir.join("token.crt");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=etcdimg token issuer", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let der = run(Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert))
    .stdout;
    let x5c = base64::engine::general_purpose::STANDARD.encode(der);
    let log = Arc::new(Mutex::new(Vec::new()));
    let (log2, user, password, identity) = (
        log.clone(),
        user.to_string(),
        password.to_string(),
        identity.to_string(),
    );
    let server = FaultProxy::serve(move |r| {
        let (r, log, key, x5c) = (r.clone(), log2.clone(), key.clone(), x5c.clone());
        let (user, password, identity) = (user.clone(), password.clone(), identity.clone());
        Fault::Answer(Box::new(move |body| {
            let query = r.path.split_once('?').map(|(_, q)| q).unwrap_or("");
            let form = if r.method == "POST" {
                form_pairs(&String::from_utf8_lossy(body))
            } else {
                form_pairs(query)
            };
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let scopes: Vec<String> = form
                .iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(String::from).collect::<Vec<_>>())
                .filter(|s| !s.is_empty())
                .collect();
            let basic = r
                .header("authorization")
                .and_then(|h| h.strip_prefix("Basic "))
                .map(|b| {
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap())
                        .unwrap()
                });
            let mut req = TokenRequest {
                method: r.method.clone(),
                user: None,
                refresh_token: get("refresh_token"),
                scopes: scopes.clone(),
                granted: false,
            };
            let who = if r.method == "POST" {
                (get("grant_type").as_deref() == Some("refresh_token")
                    && req.refresh_token.as_deref() == Some(identity.as_str()))
                .then(|| user.clone())
            } else {
                match &basic {
                    Some(b) if *b == format!("{user}:{password}") => Some(user.clone()),
                    Some(_) => None,
                    None => Some(String::new()), // anonymous
                }
            };
            let Some(who) = who else {
                log.lock().unwrap().push(req);
                return http_response("401 Unauthorized", &[("Content-Length", "0".into())], b"");
            };
            req.user = (!who.is_empty()).then(|| who.clone());
            req.granted = true;
            log.lock().unwrap().push(req);
            let access: Vec<Value> = scopes
                .iter()
                .filter_map(|s| {
                    let mut parts = s.splitn(3, ':');
                    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                    let actions: Vec<&str> = actions
                        .split(',')
                        .filter(|a| !who.is_empty() || *a == "pull")
                        .collect();
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
            let claims = serde_json::json!({
                "iss": ISSUER, "sub": who, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
                "iat": now - 10, "jti": format!("{now}-{}", r.n), "access": access,
            });
            let input = format!(
                "{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            );
            let mut sign = Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(&key)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            sign.stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let signature = sign.wait_with_output().unwrap().stdout;
            let jwt = format!("{input}.{}", b64url(&signature));
            let body = serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300})
                .to_string();
            http_response(
                "200 OK",
                &[
                    ("Content-Type", "application/json".into()),
                    ("Content-Length", body.len().to_string()),
                ],
                body.as_bytes(),
            )
        }))
    });
    TokenService { server, log, cert }
}

#[test]
fn bearer_tokens_with_scopes_and_identity_tokens_on_a_token_auth_registry() {
    let t = "bearer_tokens_with_scopes_and_identity_tokens_on_a_token_auth_registry";
    let Some(fx) = fixtures(t) else { return };
    if !tools(t, &["docker-registry", "skopeo", "python3", "openssl"]) {
        return;
    }
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pki = tempfile::tempdir().unwrap();
    let (password, identity) = ("t0ken-flow-pw", "idt-9f8e7d6c5b");
    let tokens = token_service(pki.path(), "releaser", password, identity);
    let realm = format!("http://127.0.0.1:{}/token", tokens.server.port);
    let registry = registry_with(
        None,
        Some(&token_auth(&realm, SERVICE, ISSUER, &tokens.cert)),
    );
    let host = format!("127.0.0.1:{}", registry.port);
    // The base, pushed by skopeo through the same token service.
    run(Command::new("skopeo")
        .args(["copy", "--all", "--quiet", "--dest-tls-verify=false"])
        .args(["--dest-creds", &format!("releaser:{password}")])
        .arg(format!("oci:{}:1.35", fx.join("busybox-oci").display()))
        .arg(format!("docker://{host}/library/busybox:1.35")));
    let mirror = http_mirror(&fx.join("mirror"));
    let mut sb = Sandbox::new();
    project(
        &mut sb,
        mirror.port,
        &format!("{host}/k8s"),
        &format!("{host}/library/busybox:1.35"),
        &format!("insecure_registries = [\"{host}\"]"),
    );
    tokens.log.lock().unwrap().clear();

    // Username and password: GET tokens with basic auth, one token covering the target and
    // the mount source, so that the base layer is mounted (a token without pull on
    // library/busybox would make the registry refuse the mount).
    let cfg = docker_config(
        &sb.path().join("docker"),
        &format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
            b64(&format!("releaser:{password}"))
        ),
    );
    sb.set("DOCKER_CONFIG", cfg.display().to_string());
    // all-push checks every tag first (a token for k8s/etcd), then mounts from
    // library/busybox: the token must grow its scopes on the way.
    let out = sb.etcdimg(&["all-push", "--json", "-v"]);
    assert_success(&out);
    let r = json(&out);
    for img in r["images"].as_array().unwrap() {
        assert_eq!(img["blobs_mounted"], 1, "{r}");
    }
    assert!(!format!("{}{}", stdout(&out), stderr(&out)).contains(password));
    let log = tokens.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|q| q.method == "GET"
            && q.user.as_deref() == Some("releaser")
            && q.scopes
                .contains(&"repository:k8s/etcd:pull,push".to_string())
            && q.scopes
                .contains(&"repository:library/busybox:pull".to_string())),
        "{log:#?}"
    );

    // plan needs read access only: every token it asks for has pull scopes, none push.
    tokens.log.lock().unwrap().clear();
    let out = sb.etcdimg(&["plan", "--json", "--no-build"]);
    assert_success(&out);
    assert_eq!(json(&out)["summary"]["tags_unchanged"], 3);
    let log = tokens.log.lock().unwrap().clone();
    assert!(!log.is_empty(), "plan asked for no token");
    for q in &log {
        assert!(
            q.scopes.iter().all(|s| s.ends_with(":pull")),
            "plan asked for more than pull: {:?}",
            q.scopes
        );
    }

    // An identity token: exchanged with the OAuth2 refresh-token grant (POST), never shown.
    tokens.log.lock().unwrap().clear();
    let cfg = docker_config(
        &sb.path().join("docker-idt"),
        &format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}", "identitytoken": "{identity}"}}}}}}"#,
            b64("<token>:")
        ),
    );
    sb.set("DOCKER_CONFIG", cfg.display().to_string());
    let out = sb.etcdimg(&["push", "--arch", "amd64", "--json", "-v", "--revision", "1"]);
    assert_success(&out);
    assert!(!format!("{}{}", stdout(&out), stderr(&out)).contains(identity));
    let log = tokens.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|q| q.method == "POST"
            && q.granted
            && q.refresh_token.as_deref() == Some(identity)
            && q.scopes
                .contains(&"repository:k8s/etcd:pull,push".to_string())),
        "{log:#?}"
    );
    let v = skopeo_json(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("releaser:{password}"),
        &format!("docker://{host}/k8s/etcd:3.5.1-1-linux-amd64"),
    ]);
    assert_eq!(v["schemaVersion"], 2);

    // A refused password: a clear error naming the user, never the password.
    let bad = "not-the-pw-123";
    let cfg = docker_config(
        &sb.path().join("docker-bad"),
        &format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
            b64(&format!("releaser:{bad}"))
        ),
    );
    sb.set("DOCKER_CONFIG", cfg.display().to_string());
    // Pulling the base is refused first, with a hint about the credentials...
    let out = sb.etcdimg(&["push", "--arch", "amd64", "-v", "--revision", "2"]);
    assert!(!out.status.success());
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("refused the credentials"), "{all}");
    assert!(
        !all.contains(bad) && !all.contains(&b64(&format!("releaser:{bad}"))),
        "{all}"
    );
    // ... and with a local base, the push itself is refused: named user, no password.
    let local_base = format!("oci:{}:1.35", fx.join("busybox-oci").display());
    let out = sb.etcdimg(&[
        "push",
        "--arch",
        "amd64",
        "-v",
        "--revision",
        "2",
        "--base-image",
        &local_base,
    ]);
    assert!(!out.status.success());
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("refused user `releaser`"), "{all}");
    assert!(
        !all.contains(bad) && !all.contains(&b64(&format!("releaser:{bad}"))),
        "{all}"
    );
}
