//! Go build info read by etcdimg (no Go toolchain) against `go version -m`, on every real etcd
//! binary of the fixtures: module-built 3.5, 3.6 and 3.7 (every dependency with its sum, the
//! local replacements of etcd's own modules), Debian's GOPATH-built 3.4.23, and foreign-arch
//! builds (arm64; s390x, big-endian). The five image arches are checked the same way on the
//! images tests/crossbuild.rs builds.

mod common;

use std::path::PathBuf;

use common::{fixtures, go_version_m, our_build_info, require};

fn read(path: &std::path::Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let info = etcdimg::buildinfo::read(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{}: no Go build info", path.display()));
    serde_json::to_value(info).unwrap()
}

#[test]
fn build_info_matches_go_version_m_on_every_fixture_binary() {
    let t = "build_info_matches_go_version_m_on_every_fixture_binary";
    let Some(fx) = fixtures(t) else { return };
    if !require(t, "go") {
        return;
    }
    let mut binaries: Vec<PathBuf> = Vec::new();
    for dir in ["bin", "bin-arm64", "bin-s390x"] {
        let Ok(entries) = std::fs::read_dir(fx.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("etcd-")
                || name.starts_with("etcdctl-")
                || name.starts_with("etcdutl-")
            {
                binaries.push(e.path());
            }
        }
    }
    binaries.sort();
    assert!(binaries.len() >= 20, "{binaries:?}");
    let (mut with_deps, mut big_endian, mut replaced) = (0, 0, 0);
    for b in &binaries {
        let ours = read(b);
        let theirs = go_version_m(b);
        assert_eq!(our_build_info(&ours), theirs, "{}", b.display());
        let deps = ours["deps"].as_array().unwrap();
        if deps.len() > 20 {
            with_deps += 1;
        }
        if deps.iter().any(|d| {
            d["replace"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("./") || p.starts_with("../"))
        }) {
            replaced += 1;
        }
        if b.parent().unwrap().ends_with("bin-s390x") {
            big_endian += 1;
            assert_eq!(ours["settings"]["GOARCH"], "s390x", "{}", b.display());
        }
    }
    assert!(
        with_deps >= 9,
        "module-built binaries list their dependencies: {with_deps}"
    );
    assert!(
        replaced >= 9,
        "etcd's own modules are local replacements: {replaced}"
    );
    assert!(big_endian >= 6, "s390x binaries: {big_endian}");
}

#[test]
fn a_binary_without_go_build_info_and_a_damaged_one_are_told_apart() {
    // A static Rust binary (migrate is one): no Go build info, not an error, though this
    // test's own binary holds the magic string (as a constant, outside the data segment).
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(etcdimg::buildinfo::read(&me).unwrap().is_none());
    // Not ELF at all.
    assert!(etcdimg::buildinfo::read(b"#!/bin/sh\necho hi\n").is_err());
    let t = "a_binary_without_go_build_info_and_a_damaged_one_are_told_apart";
    let Some(fx) = fixtures(t) else { return };
    // A Go binary whose module info length runs past its section: damaged, said so.
    let original = std::fs::read(fx.join("bin/etcdctl-3.6.17")).unwrap();
    // Without a section table (e_shoff, e_shnum, e_shstrndx zeroed in the 64-bit
    // little-endian header), the build info is found in the data segment, as Go finds it.
    let want = etcdimg::buildinfo::read(&original)
        .unwrap()
        .expect("build info");
    let mut no_sections = original.clone();
    no_sections[0x28..0x30].fill(0);
    no_sections[0x3c..0x40].fill(0);
    assert_eq!(etcdimg::buildinfo::read(&no_sections).unwrap(), Some(want));
    let mut bytes = original;
    let at = bytes
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .expect("the magic");
    assert_eq!(bytes[at + 15] & 2, 2, "Go 1.18+ inline strings");
    // The version string's length varint: make it huge.
    bytes[at + 32] = 0xff;
    bytes[at + 33] = 0xff;
    bytes[at + 34] = 0x7f;
    let err = etcdimg::buildinfo::read(&bytes).unwrap_err().to_string();
    assert!(
        err.contains("damaged") && err.contains("runs past"),
        "{err}"
    );
}
