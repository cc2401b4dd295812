//! migrate's bbolt reader on arbitrary bytes: opening the file, listing its buckets, reading
//! its meta and cluster version, and the whole fingerprint walk must return an error or a
//! result, never panic, hang or allocate more than the file could justify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One file per process, rewritten per input (in memory: /dev/shm where it exists).
    thread_local! {
        static PATH: std::path::PathBuf = {
            let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
            dir.join(format!("migrate-fuzz-bbolt-{}", std::process::id()))
        };
    }
    PATH.with(|path| {
        if std::fs::write(path, data).is_err() {
            return;
        }
        if let Ok(db) = migrate::bbolt::Db::open(path) {
            let _ = db.bucket_names();
            let _ = db.locate(b"cluster", b"clusterVersion");
            if let Ok(Some(meta)) = db.bucket(b"meta") {
                let _ = db.for_each(&meta, |_, _| Ok::<_, migrate::bbolt::BoltError>(()));
                let _ = db.last_key(&meta);
            }
        }
        let _ = migrate::backend::fingerprint(path, None);
        let _ = migrate::backend::meta(path);
    });
});
