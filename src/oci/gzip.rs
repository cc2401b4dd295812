//! The pinned gzip: flate2 with the zlib-rs backend (pure Rust, version locked in Cargo.lock),
//! a fixed level, and a fixed header (no mtime, no file name, OS = 255 "unknown").
//!
//! Layer bytes, and so every digest, depend on this. Changing the level or the backend changes
//! the bytes of every layer; the golden-digest test in `oci::layer` fails loudly when it does.

use std::io::Write;

/// The compression level of every layer. Level 4 was measured against 6 on the etcd binaries:
/// 30% less wall time for 2% larger layers (BENCHMARKS.md).
pub const LEVEL: u32 = 4;

/// Recorded in the image config labels, so that a reader knows how the layers were made.
pub fn description() -> String {
    format!("gzip level {LEVEL} (flate2 + zlib-rs, mtime 0, no name)")
}

/// A gzip writer with the pinned settings.
pub fn encoder<W: Write>(inner: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(inner, flate2::Compression::new(LEVEL))
}
