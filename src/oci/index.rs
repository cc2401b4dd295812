//! The multi-arch index over per-arch images, and the manifest formats it can be pushed in.
//!
//! Before an index exists it is checked: every arch asked for has an image, and each image's
//! config says the os/architecture/variant its index entry claims (Kubernetes once shipped an
//! arm64 entry whose config said amd64). arm is `v7` and arm64 is `v8`; the Makefile's
//! `docker manifest annotate` set no variant at all.
//!
//! `--manifest-format docker` pushes Docker schema 2 manifests and a Docker manifest list. The
//! conversion only renames media types (the config and layer bytes are the same) and drops
//! annotations, which schema 2 does not have; it is deterministic, so digests are stable.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{canonical_json, platform_for, platform_string, Platform};
use crate::platform::Arch;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    #[default]
    Oci,
    Docker,
}

impl std::str::FromStr for ManifestFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "oci" => Ok(ManifestFormat::Oci),
            "docker" => Ok(ManifestFormat::Docker),
            other => Err(format!(
                "unknown manifest format `{other}`: expected `oci` (OCI image index) or `docker` (Docker manifest list, schema 2)"
            )),
        }
    }
}

impl std::fmt::Display for ManifestFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ManifestFormat::Oci => "oci",
            ManifestFormat::Docker => "docker",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("no image for {missing} in the layout (images.toml lists {wanted})")]
    Missing { missing: String, wanted: String },
    #[error(
        "the image for {arch} has a config for {actual}, but its index entry would say {expected}"
    )]
    WrongPlatform {
        arch: Arch,
        expected: String,
        actual: String,
    },
    #[error("malformed manifest: {0}")]
    Malformed(String),
}

/// One per-arch image, as the index will name it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub arch: Arch,
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    /// The image's config, to check its platform.
    pub config: Value,
}

/// A built index: its bytes are what is pushed, and what the digest is over.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

/// The platform a config describes.
pub fn config_platform(config: &Value) -> Platform {
    let s = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or("");
    let mut p = Platform::default();
    p.set_os(oci_spec::image::Os::from(s("os")));
    p.set_architecture(oci_spec::image::Arch::from(s("architecture")));
    p.set_variant(
        config
            .get("variant")
            .and_then(Value::as_str)
            .map(String::from),
    );
    p
}

/// Converts an OCI image manifest to Docker schema 2 (same blobs, Docker media types).
pub fn to_docker_manifest(oci_manifest: &[u8]) -> Result<Vec<u8>, IndexError> {
    let mut m: Value =
        serde_json::from_slice(oci_manifest).map_err(|e| IndexError::Malformed(e.to_string()))?;
    let obj = m
        .as_object_mut()
        .ok_or_else(|| IndexError::Malformed("not a JSON object".into()))?;
    obj.insert("mediaType".into(), json!(DOCKER_MANIFEST));
    obj.remove("annotations");
    obj.remove("artifactType");
    obj.remove("subject");
    let config = obj
        .get_mut("config")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| IndexError::Malformed("no config descriptor".into()))?;
    config.insert("mediaType".into(), json!(DOCKER_CONFIG));
    config.remove("annotations");
    let layers = obj
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| IndexError::Malformed("no layers".into()))?;
    for layer in layers {
        let l = layer
            .as_object_mut()
            .ok_or_else(|| IndexError::Malformed("a layer is not an object".into()))?;
        let mt = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
        let docker = match mt {
            "application/vnd.oci.image.layer.v1.tar+gzip" | DOCKER_LAYER_GZIP => DOCKER_LAYER_GZIP,
            "application/vnd.oci.image.layer.v1.tar" | DOCKER_LAYER => DOCKER_LAYER,
            other => {
                return Err(IndexError::Malformed(format!(
                    "layer media type `{other}` has no Docker schema 2 equivalent"
                )))
            }
        };
        l.insert("mediaType".into(), json!(docker));
        l.remove("annotations");
    }
    Ok(canonical_json(&m))
}

/// The annotations every index of ours carries: the tag and the build time.
pub fn annotations(tag: &str, source_date_epoch: u64) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "org.opencontainers.image.version".to_string(),
            tag.to_string(),
        ),
        (
            "org.opencontainers.image.created".to_string(),
            super::image::rfc3339(source_date_epoch),
        ),
    ])
}

/// Checks `entries` against `wanted` and builds the index, entries in `wanted`'s order.
pub fn build(
    format: ManifestFormat,
    wanted: &[Arch],
    entries: &[Entry],
    annotations: &BTreeMap<String, String>,
) -> Result<BuiltIndex, IndexError> {
    let missing: Vec<String> = wanted
        .iter()
        .filter(|a| !entries.iter().any(|e| e.arch == **a))
        .map(|a| a.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(IndexError::Missing {
            missing: missing.join(", "),
            wanted: wanted
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut manifests = Vec::new();
    for arch in wanted {
        let e = entries.iter().find(|e| e.arch == *arch).expect("checked");
        let expected = platform_for(*arch);
        let actual = config_platform(&e.config);
        if platform_string(&expected) != platform_string(&actual) {
            return Err(IndexError::WrongPlatform {
                arch: *arch,
                expected: platform_string(&expected),
                actual: platform_string(&actual),
            });
        }
        let mut platform = json!({"os": "linux", "architecture": arch.name()});
        if let Some(v) = arch.variant() {
            platform["variant"] = json!(v);
        }
        manifests.push(json!({
            "mediaType": e.media_type,
            "digest": e.digest,
            "size": e.size,
            "platform": platform,
        }));
    }
    let (media_type, mut doc) = match format {
        ManifestFormat::Oci => (
            OCI_INDEX,
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
        ),
        ManifestFormat::Docker => (
            DOCKER_LIST,
            json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": manifests}),
        ),
    };
    if format == ManifestFormat::Oci && !annotations.is_empty() {
        doc["annotations"] = json!(annotations);
    }
    let bytes = canonical_json(&doc);
    let digest = format!("sha256:{}", crate::fetch::cache::sha256_hex(&bytes));
    Ok(BuiltIndex {
        media_type: media_type.into(),
        bytes,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: Arch, config_arch: &str, variant: Option<&str>) -> Entry {
        let mut config = json!({"os": "linux", "architecture": config_arch});
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        Entry {
            arch,
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 100,
            config,
        }
    }

    #[test]
    fn variants_and_order() {
        let entries = vec![
            entry(Arch::Arm, "arm", Some("v7")),
            entry(Arch::Amd64, "amd64", None),
            entry(Arch::Arm64, "arm64", Some("v8")),
        ];
        let wanted = [Arch::Amd64, Arch::Arm, Arch::Arm64];
        let built = build(ManifestFormat::Oci, &wanted, &entries, &BTreeMap::new()).unwrap();
        let v: Value = serde_json::from_slice(&built.bytes).unwrap();
        assert_eq!(v["mediaType"], OCI_INDEX);
        let platforms: Vec<String> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let p = &m["platform"];
                format!("{}/{}/{}", p["os"], p["architecture"], p["variant"]).replace('"', "")
            })
            .collect();
        assert_eq!(
            platforms,
            ["linux/amd64/null", "linux/arm/v7", "linux/arm64/v8"]
        );
        assert_eq!(
            built.digest,
            format!("sha256:{}", crate::fetch::cache::sha256_hex(&built.bytes))
        );
        let docker = build(ManifestFormat::Docker, &wanted, &entries, &BTreeMap::new()).unwrap();
        assert_eq!(docker.media_type, DOCKER_LIST);
        assert_ne!(docker.digest, built.digest);
    }

    #[test]
    fn refuses_a_missing_arch_and_a_lying_config() {
        let wanted = [Arch::Amd64, Arch::Arm64];
        let err = build(
            ManifestFormat::Oci,
            &wanted,
            &[entry(Arch::Amd64, "amd64", None)],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no image for arm64"), "{err}");
        let err = build(
            ManifestFormat::Oci,
            &wanted,
            &[
                entry(Arch::Amd64, "amd64", None),
                entry(Arch::Arm64, "amd64", None),
            ],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("the image for arm64 has a config for linux/amd64"),
            "{err}"
        );
        // arm without v7 in its config is refused too.
        let err = build(
            ManifestFormat::Oci,
            &[Arch::Arm],
            &[entry(Arch::Arm, "arm", None)],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("linux/arm/v7"), "{err}");
    }

    #[test]
    fn docker_conversion_renames_media_types_only() {
        let oci = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:c", "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:l", "size": 2}],
            "annotations": {"a": "b"}
        });
        let docker: Value =
            serde_json::from_slice(&to_docker_manifest(&canonical_json(&oci)).unwrap()).unwrap();
        assert_eq!(docker["mediaType"], DOCKER_MANIFEST);
        assert_eq!(docker["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(docker["config"]["digest"], "sha256:c");
        assert_eq!(docker["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        assert_eq!(docker["layers"][0]["size"], 2);
        assert!(docker.get("annotations").is_none());
        let zstd = json!({"config": {"mediaType": "x"}, "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd"}]});
        assert!(to_docker_manifest(&canonical_json(&zstd)).is_err());
    }
}
