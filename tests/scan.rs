//! `etcdimg scan` and the release gate on it (issue #22): govulncheck (built from the Go module
//! proxy by scripts/install-deps.sh) in binary mode on every Go binary of a module-built image,
//! against a small database in govulncheck's format that the test writes: the real entry
//! GO-2026-6809 from the Go vulnerability database (golang.org/x/vulndb, crypto/x509
//! Certificate.Verify, which etcd calls; fixed in go1.26.10, the fixtures' Go is 1.26.8), and
//! one test-written stdlib entry for net/smtp.SendMail, which etcd does not call. The real
//! database has no stdlib entry affecting go1.26.8 whose symbols etcd does not call (all 13
//! of them are called), hence the written one, in the same OSV format.

mod common;

use std::path::{Path, PathBuf};

use common::world::{json, world, World};
use common::*;
use serde_json::{json, Value};

const CALLED: &str = "GO-2026-6809";
const NOT_CALLED: &str = "GO-2099-0001";

/// The database, in govulncheck's v1 layout (index/db.json, index/modules.json, ID/<id>.json).
fn write_db(dir: &Path) -> PathBuf {
    let vulndb = std::fs::read_dir(go_mod_cache().join("golang.org/x"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vulndb@")
        })
        .expect("scripts/fixtures.sh downloads golang.org/x/vulndb");
    let real: Value = serde_json::from_slice(
        &std::fs::read(vulndb.join(format!("data/osv/{CALLED}.json"))).unwrap(),
    )
    .unwrap();
    let written = json!({
        "schema_version": "1.3.1",
        "id": NOT_CALLED,
        "modified": "2026-11-01T00:00:00Z",
        "published": "2026-11-01T00:00:00Z",
        "summary": "Test entry: net/smtp SendMail (written by tests/scan.rs)",
        "details": "Not a real vulnerability.",
        "affected": [{
            "package": {"name": "stdlib", "ecosystem": "Go"},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.26.10"}]}],
            "ecosystem_specific": {"imports": [{"path": "net/smtp", "symbols": ["SendMail"]}]}
        }]
    });
    let db = dir.join("vulndb");
    std::fs::create_dir_all(db.join("ID")).unwrap();
    std::fs::create_dir_all(db.join("index")).unwrap();
    for entry in [&real, &written] {
        let id = entry["id"].as_str().unwrap();
        std::fs::write(db.join(format!("ID/{id}.json")), entry.to_string()).unwrap();
    }
    let vulns: Vec<Value> = [&real, &written]
        .iter()
        .map(|e| json!({"id": e["id"], "modified": e["modified"], "fixed": "1.26.10"}))
        .collect();
    std::fs::write(
        db.join("index/modules.json"),
        json!([{"path": "stdlib", "vulns": vulns}]).to_string(),
    )
    .unwrap();
    std::fs::write(
        db.join("index/db.json"),
        json!({"modified": "2026-11-05T23:49:57Z"}).to_string(),
    )
    .unwrap();
    db
}

fn levels(scan: &Value, binary: &Value) -> (Vec<String>, Vec<String>) {
    let ids = |k: &str| -> Vec<String> {
        binary[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    let _ = scan;
    (ids("called"), ids("present"))
}

#[test]
fn the_scan_tells_called_from_present_and_gates_the_release() {
    let t = "the_scan_tells_called_from_present_and_gates_the_release";
    let Some(World {
        fx,
        registry,
        mut sb,
        ..
    }) = world(t, &["go"])
    else {
        return;
    };
    let Some(govulncheck) = go_tool(t, "govulncheck") else {
        return;
    };
    let counting = FaultProxy::start(registry.port, |_| Fault::Forward);
    let host = format!("127.0.0.1:{}", counting.port);
    let v36 = newest_fixture(&fx, 6);
    let config = module_images_config(&fx, &[v36.to_string()], &host);
    // Symbols kept: govulncheck can see which functions each binary holds.
    sb.use_config(&format!("{config}\n[build]\nstrip = false\n"));
    sb.set("ETCDIMG_GOVULNCHECK", govulncheck.display().to_string());
    let db = write_db(sb.path());
    let db = db.to_str().unwrap();
    let out = sb.etcdimg(&["all-build"]);
    assert_success(&out);

    let out = sb.etcdimg(&["scan", "--vulndb", db, "--json", "--fail-on", "none"]);
    assert_success(&out);
    let scan = json(&out);
    assert!(
        scan["scanner"]
            .as_str()
            .unwrap()
            .starts_with("govulncheck v"),
        "{scan}"
    );
    let binaries = scan["binaries"].as_array().unwrap();
    assert_eq!(binaries.len(), 3, "etcd, etcdctl, etcdutl: {scan}");
    for b in binaries {
        assert_eq!(b["stripped"], false, "{b}");
        let (called, present) = levels(&scan, b);
        assert_eq!(called, [CALLED], "{}", b["path"]);
        assert_eq!(present, [NOT_CALLED], "{}", b["path"]);
        let v = &b["called"][0];
        assert_eq!(v["fixed"], "go1.26.10", "{v}");
        assert_eq!(v["found"], b["go_version"], "{v}");
        assert!(
            v["symbols"]
                .to_string()
                .contains("crypto/x509.Certificate.Verify"),
            "{v}"
        );
    }
    // The table, and the default --fail-on called: exit 1.
    let out = sb.etcdimg(&["scan", "--vulndb", db]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let table = stdout(&out);
    for needle in [
        format!("called   {CALLED}"),
        format!("present  {NOT_CALLED}"),
        "fixed in go1.26.10".to_string(),
    ] {
        assert!(table.contains(&needle), "{needle}: {table}");
    }
    assert!(
        stderr(&out).contains("3 called and 3 present"),
        "{}",
        stderr(&out)
    );

    // The release gate: refused before the first request, naming the vulnerability.
    let out = sb.etcdimg(&["all-push", "--vulndb", db]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for needle in ["refusing to release", CALLED, "--allow-called-vulns"] {
        assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
    }
    assert!(
        counting.requests().is_empty(),
        "a refused release sent requests"
    );
    // Allowed: pushed, and the scan is in the release report.
    let report = common::world::all_push_report(&sb, &["--vulndb", db, "--allow-called-vulns"]);
    assert_eq!(
        report["vulnerabilities"]["binaries"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "{}",
        report["vulnerabilities"]
    );

    // Stripped (etcd's release flags, the default): govulncheck cannot see the calls, and the
    // scan says so; the uncalled entry is then reported as called too.
    sb.use_config(&config);
    let out = sb.etcdimg(&["all-build"]);
    assert_success(&out);
    let out = sb.etcdimg(&["scan", "--vulndb", db, "--json", "--fail-on", "none"]);
    assert_success(&out);
    let scan = json(&out);
    for b in scan["binaries"].as_array().unwrap() {
        assert_eq!(b["stripped"], true, "{b}");
        let (called, _) = levels(&scan, b);
        assert_eq!(called, [CALLED, NOT_CALLED], "{}", b["path"]);
    }
    let out = sb.etcdimg(&["scan", "--vulndb", db, "--fail-on", "none"]);
    assert!(
        stdout(&out).contains("build.strip = false"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_scan_without_a_database_or_scanner_says_what_to_do() {
    let mut sb = Sandbox::new();
    let out = sb.etcdimg(&["scan"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--vulndb"), "{}", stderr(&out));
    sb.set("ETCDIMG_GOVULNCHECK", "/nonexistent/govulncheck");
    sb.set("PATH", "/nonexistent");
    let out = sb.etcdimg(&["scan", "--vulndb", "/tmp", "--output", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
}
