//! migrate's bbolt reader on hostile bytes, in the ordinary test run: every input the fuzzer
//! ever broke it with (`tests/fuzz_regressions/`, from `bash scripts/fuzz.sh`), and a
//! deterministic sweep of corruptions of a real etcd backend (every page's header and body
//! bytes flipped, cut short at each page). Each must end in a result or an error, never a
//! panic, and quickly. The fuzzer (libFuzzer, nightly) runs far more inputs; this keeps what
//! it found from coming back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fixtures_bin, Etcd};
use migrate::{backend, bbolt};

/// Everything the fuzz target calls; true when the fingerprint was refused.
fn read_all(path: &Path) -> bool {
    if let Ok(db) = bbolt::Db::open(path) {
        let _ = db.bucket_names();
        let _ = db.locate(b"cluster", b"clusterVersion");
        if let Ok(Some(meta)) = db.bucket(b"meta") {
            let _ = db.for_each(&meta, |_, _| Ok::<_, bbolt::BoltError>(()));
            let _ = db.last_key(&meta);
        }
    }
    let _ = backend::meta(path);
    backend::fingerprint(path, None).is_err()
}

/// Reads `bytes` as a backend file; panics with `what` if the reader panicked or took long.
/// Returns whether the fingerprint was refused.
fn survive(dir: &Path, bytes: &[u8], what: &str) -> bool {
    let path = dir.join("db");
    std::fs::write(&path, bytes).unwrap();
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| read_all(&path));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the reader took {:?} on {what}",
        started.elapsed()
    );
    outcome.unwrap_or_else(|_| panic!("the reader panicked on {what}"))
}

#[test]
fn every_input_the_fuzzer_broke_the_reader_with_is_an_error_now() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let tmp = tempfile::tempdir().unwrap();
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        survive(
            tmp.path(),
            &std::fs::read(&path).unwrap(),
            &path.display().to_string(),
        );
        replayed += 1;
    }
    eprintln!("replayed {replayed} inputs");
}

#[test]
fn corruptions_of_a_real_backend_are_errors_not_panics() {
    let Some(fx) = fixtures_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let etcd = Etcd::start(&fx.join("etcd-3.4.23"), &data);
    for i in 0..40 {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(&format!("/registry/k{i:03}")),
            b64(&"v".repeat(i * 37))
        );
        assert!(etcd.post("/v3/kv/put", &body).contains("header"));
    }
    etcd.grant(600);
    etcd.stop();
    let real = std::fs::read(data.join("member/snap/db")).unwrap();
    let page = 4096;
    assert!(real.len() >= 4 * page, "{} bytes", real.len());
    // The untouched file reads.
    assert!(!survive(tmp.path(), &real, "the real backend"));
    let (mut cases, mut refused) = (0, 0);
    for p in 0..real.len() / page {
        // Page header fields (id, flags, count, overflow) and the first element headers.
        for offset in (0..48).chain([page / 2, page - 1]) {
            let at = p * page + offset;
            let mut bad = real.clone();
            bad[at] ^= 0xff;
            refused += survive(tmp.path(), &bad, &format!("byte {at} flipped (page {p})")) as usize;
            cases += 1;
        }
        // Cut short inside this page.
        let cut = &real[..p * page + page / 3];
        assert!(
            survive(tmp.path(), cut, &format!("cut at page {p}")),
            "a backend cut short at page {p} gave a fingerprint"
        );
        cases += 1;
    }
    // Many flips land in free pages or padding and change nothing the fingerprint reads; the
    // ones in the meta pages and the tree's page headers must be caught.
    eprintln!("{cases} corruptions, {refused} refused");
    assert!(cases > 100, "{cases}");
    assert!(
        refused > cases / 20,
        "only {refused} of {cases} corruptions were refused"
    );
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
