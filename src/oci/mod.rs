//! The pure OCI model: deterministic tar layers, the gzip pin, image config / manifest / index
//! JSON, and OCI layout directories (and docker-archive tarballs) on disk.
//!
//! Never: network I/O or spawning programs. Everything here is a function of its inputs, which
//! is what makes images reproducible and these tests exact.
//!
//! Manifests, indexes and descriptors are oci-spec types. The image *config* is handled as JSON
//! (`serde_json::Value`) instead, so that fields of a base config that oci-spec does not model
//! survive unchanged into ours.

pub mod docker_archive;
pub mod gzip;
pub mod image;
pub mod index;
pub mod layer;
pub mod layout;
pub mod unpack;

use std::str::FromStr;

pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType, Platform};

use crate::platform::Arch;

/// Serialises `value` as canonical JSON: object keys sorted, no insignificant whitespace.
/// (serde_json's `Value` map is a BTreeMap; a unit test guards against `preserve_order`.)
pub fn canonical_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let v = serde_json::to_value(value).expect("serialisable");
    serde_json::to_vec(&v).expect("serialisable")
}

/// A descriptor for a blob with hex sha256 `hex`.
pub fn descriptor(media_type: MediaType, hex: &str, size: u64) -> Descriptor {
    let digest =
        oci_spec::image::Digest::from_str(&format!("sha256:{hex}")).expect("valid sha256 hex");
    Descriptor::new(media_type, size, digest)
}

/// The hex part of a descriptor's digest.
pub fn hex(d: &Descriptor) -> String {
    d.digest().digest().to_string()
}

/// The OCI platform of an arch (arm is v7, arm64 is v8).
pub fn platform_for(arch: Arch) -> Platform {
    let mut p = Platform::default();
    p.set_architecture(oci_spec::image::Arch::from(arch.name()));
    p.set_os(oci_spec::image::Os::from("linux"));
    p.set_variant(arch.variant().map(String::from));
    p
}

/// Does an index entry's platform serve `arch`? arm64 with no variant counts as v8; arm with
/// no variant is refused (it could be v6, which cannot run GOARM=7 code).
pub fn platform_matches(p: &Platform, arch: Arch) -> bool {
    if p.os().to_string() != "linux" || p.architecture().to_string() != arch.name() {
        return false;
    }
    match (arch.variant(), p.variant().as_deref()) {
        (None, _) => true,
        (Some("v8"), None) => true,
        (Some(want), Some(have)) => want == have,
        (Some(_), None) => false,
    }
}

/// Describes a platform as `os/arch[/variant]`.
pub fn platform_string(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// Is this media type a manifest list / image index?
pub fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// The OCI media type for a base layer (Docker's gzip layer type has the same bytes).
pub fn oci_layer_media_type(media_type: &MediaType) -> MediaType {
    match media_type.to_string().as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MediaType::ImageLayerGzip,
        "application/vnd.docker.image.rootfs.diff.tar" => MediaType::ImageLayer,
        _ => media_type.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_has_no_whitespace() {
        let v = serde_json::json!({"b": 1, "a": {"d": [1, 2], "c": "x"}});
        assert_eq!(canonical_json(&v), br#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
        let d = descriptor(MediaType::ImageLayerGzip, &"0".repeat(64), 1);
        let text = String::from_utf8(canonical_json(&d)).unwrap();
        assert!(text.starts_with(r#"{"digest":"sha256:000"#), "{text}");
        assert!(
            text.ends_with(
                r#""mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":1}"#
            ),
            "{text}"
        );
    }

    #[test]
    fn platforms() {
        let p = platform_for(Arch::Arm);
        assert_eq!(platform_string(&p), "linux/arm/v7");
        assert!(platform_matches(&p, Arch::Arm));
        let mut v6 = p.clone();
        v6.set_variant(Some("v6".into()));
        assert!(!platform_matches(&v6, Arch::Arm));
        let mut bare_arm = p.clone();
        bare_arm.set_variant(None);
        assert!(!platform_matches(&bare_arm, Arch::Arm));
        let mut arm64 = platform_for(Arch::Arm64);
        assert!(platform_matches(&arm64, Arch::Arm64));
        arm64.set_variant(None);
        assert!(platform_matches(&arm64, Arch::Arm64));
        assert!(!platform_matches(&arm64, Arch::Amd64));
        assert_eq!(platform_string(&platform_for(Arch::Amd64)), "linux/amd64");
    }
}
