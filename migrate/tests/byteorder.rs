//! Big-endian data: bbolt writes its pages in the writing host's byte order, so an s390x
//! member's backend is big-endian. The fixtures' s390x etcd (3.4.23 from Debian's source, the
//! current 3.6 from its Go modules) writes one under qemu-user; migrate on amd64 must read it
//! exactly as it reads the same keyspace written by amd64 etcd.

mod common;

use std::path::{Path, PathBuf};

use common::{fingerprint, fixtures_bin, Etcd};
use serde_json::Value;

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `<fixtures>/bin-s390x` and qemu-s390x-static, or skip (fail under ETCDIMG_TEST_REQUIRE=all).
fn s390x(test: &str) -> Option<PathBuf> {
    let fx = fixtures_bin()?;
    let dir = fx.parent().unwrap().join("bin-s390x");
    let qemu = std::process::Command::new("qemu-s390x-static")
        .arg("--version")
        .output()
        .is_ok();
    if dir.is_dir() && qemu {
        return Some(dir);
    }
    if std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() == Ok("all") {
        panic!(
            "{test}: needs {} and qemu-s390x-static (scripts/fixtures.sh, install-deps.sh)",
            dir.display()
        );
    }
    eprintln!("skipping {test}: no s390x etcd or qemu-s390x-static");
    None
}

/// A script that runs the s390x `bin` under qemu-user (no binfmt_misc handler is registered
/// here: that setting is global to the host).
fn under_qemu(dir: &Path, bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(format!(
        "qemu-{}",
        bin.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec qemu-s390x-static '{}' \"$@\"\n",
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The same keyspace, in the same order: puts, overwrites and deletes (no leases: their ids are
/// random per cluster).
fn write_keyspace(etcd: &Etcd) {
    for i in 0..120 {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(&format!("/registry/pods/p{i:03}")),
            b64(&format!("value {i} ").repeat(1 + i % 9))
        );
        assert!(etcd.post("/v3/kv/put", &body).contains("header"));
    }
    for i in (0..120).step_by(7) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(&format!("/registry/pods/p{i:03}")),
            b64("rewritten")
        );
        assert!(etcd.post("/v3/kv/put", &body).contains("header"));
    }
    for i in (0..120).step_by(11) {
        let body = format!(r#"{{"key":"{}"}}"#, b64(&format!("/registry/pods/p{i:03}")));
        assert!(etcd.post("/v3/kv/deleterange", &body).contains("header"));
    }
}

#[test]
fn a_big_endian_backend_fingerprints_like_the_same_keyspace_written_on_amd64() {
    let t = "a_big_endian_backend_fingerprints_like_the_same_keyspace_written_on_amd64";
    let (Some(s390x), Some(amd64)) = (s390x(t), fixtures_bin()) else {
        return;
    };
    let versions: Vec<String> = std::fs::read_dir(&s390x)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_prefix("etcd-").map(String::from)
        })
        .filter(|v| amd64.join(format!("etcd-{v}")).is_file())
        .collect();
    assert!(
        versions.iter().any(|v| v.starts_with("3.4."))
            && versions.iter().any(|v| v.starts_with("3.6.")),
        "s390x and amd64 etcd 3.4 and 3.6 expected, got {versions:?}"
    );
    for v in versions {
        let tmp = tempfile::tempdir().unwrap();
        let written = |bin: &Path, name: &str| -> (PathBuf, Value) {
            let data = tmp.path().join(name);
            let etcd = Etcd::start(bin, &data);
            write_keyspace(&etcd);
            etcd.stop();
            let fp = fingerprint(&data);
            (data, fp)
        };
        let (_, on_amd64) = written(&amd64.join(format!("etcd-{v}")), "amd64");
        let qemu = under_qemu(tmp.path(), &s390x.join(format!("etcd-{v}")));
        let (data, on_s390x) = written(&qemu, "s390x");
        // Really big-endian: the meta page's magic 0xED0CDAED as s390x wrote it.
        let db = std::fs::read(data.join("member/snap/db")).unwrap();
        assert_eq!(&db[16..20], &[0xed, 0x0c, 0xda, 0xed], "etcd {v} on s390x");
        let db = std::fs::read(tmp.path().join("amd64/member/snap/db")).unwrap();
        assert_eq!(&db[16..20], &[0xed, 0xda, 0x0c, 0xed], "etcd {v} on amd64");
        for field in [
            "history_sha256",
            "hash_kv",
            "revision",
            "compact_revision",
            "keys",
            "revisions",
            "auth_sha256",
        ] {
            assert_eq!(on_s390x[field], on_amd64[field], "etcd {v}: {field}");
        }
        assert_eq!(on_s390x["keys"], 120 - 11, "etcd {v}");
    }
}
