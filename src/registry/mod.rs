//! Everything that talks to a registry. This file: references, base images from an OCI
//! layout, and the platform checks a base must pass.
//!
//! Owns: every socket to a registry, all through one [`Session`] per run (`session`: one HTTP
//! client, one `transport` per registry: TLS, authentication, retries). `pull` reads base
//! images, `push` writes images, indexes and artifacts, `auth` reads the docker config and
//! speaks the token protocols, `reference` parses image references into oci-spec's
//! `Reference`. No oci-client: its `Client` cannot share our HTTP client and has no
//! identity-token exchange (see docs/ARCHITECTURE.md, Decisions).

pub mod auth;
mod pull;
pub mod push;
pub mod reference;
pub mod session;
pub mod transport;

pub use session::{RegistryOptions, Session};

use std::path::{Path, PathBuf};

use oci_spec::distribution::Reference;
use serde_json::Value;

use crate::fetch::cache::Cache;
use crate::oci::layout::{Layout, LayoutError};
use crate::oci::{self, platform_matches, platform_string, Descriptor, ImageIndex, ImageManifest};
use crate::platform::Arch;
use crate::report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference `{reference}`: {message}")]
    BadReference { reference: String, message: String },
    #[error("{op} `{reference}` failed: {message}")]
    Request {
        op: String,
        reference: String,
        message: String,
        hint: Option<String>,
    },
    #[error("`{reference}` has no image for {wanted}; it has: {available}")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("`{reference}` is a single-arch image for {actual}, not {wanted}")]
    WrongPlatform {
        reference: String,
        wanted: String,
        actual: String,
    },
    #[error("`{reference}`: digest mismatch: expected sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("`{reference}`: malformed {what}: {message}")]
    Malformed {
        reference: String,
        what: String,
        message: String,
    },
    #[error("authentication with `{registry}` failed: {message}")]
    Auth {
        registry: String,
        message: String,
        hint: String,
    },
    #[error("cannot reach registry `{registry}` ({op}): {message}")]
    Unreachable {
        registry: String,
        op: String,
        message: String,
        hint: String,
    },
    #[error("{op} on `{registry}` failed after {attempts} attempts; last error: {last}")]
    GaveUp {
        op: String,
        registry: String,
        attempts: u32,
        last: String,
    },
    #[error("`{reference}` already points to {current}, not {new}")]
    TagExists {
        reference: String,
        current: String,
        new: String,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Cache(#[from] crate::fetch::cache::CacheError),
}

impl RegistryError {
    pub fn hint(&self) -> Option<String> {
        match self {
            RegistryError::Request { hint, .. } => hint.clone(),
            RegistryError::Auth { hint, .. } | RegistryError::Unreachable { hint, .. } => {
                Some(hint.clone())
            }
            RegistryError::GaveUp { .. } => Some(
                "the registry kept failing; retry later (ETCDIMG_HTTP_RETRIES sets the number of retries)".into(),
            ),
            RegistryError::TagExists { .. } => Some(
                "tags are not moved silently: bump REVISION for a new image, or pass --force to move the tag".into(),
            ),
            RegistryError::NoPlatform { .. } | RegistryError::WrongPlatform { .. } => Some(
                "pick a multi-arch base that has this platform, or set a per-arch base in images.toml ([arch.<arch>] base = ...)".into(),
            ),
            _ => None,
        }
    }
}

/// Where a base image comes from.
#[derive(Debug, Clone)]
pub enum BaseRef {
    /// `oci:PATH[:REF]`, as skopeo spells it.
    Layout {
        path: PathBuf,
        name: Option<String>,
    },
    Registry(Reference),
}

pub fn parse_base(s: &str) -> Result<BaseRef, RegistryError> {
    if let Some(rest) = s.strip_prefix("oci:") {
        // The ref is after the last `:` unless that `:` is part of the path (no `/` after it).
        let (path, name) = match rest.rsplit_once(':') {
            Some((p, n)) if !n.contains('/') && !p.is_empty() => (p, Some(n.to_string())),
            _ => (rest, None),
        };
        if path.is_empty() {
            return Err(RegistryError::BadReference {
                reference: s.into(),
                message: "expected oci:PATH[:REF]".into(),
            });
        }
        return Ok(BaseRef::Layout {
            path: PathBuf::from(path),
            name,
        });
    }
    reference::parse(s)
        .map(BaseRef::Registry)
        .map_err(|message| RegistryError::BadReference {
            reference: s.into(),
            message,
        })
}

/// One base layer and where its verified bytes are.
#[derive(Debug, Clone)]
pub struct BaseLayer {
    pub descriptor: Descriptor,
    pub path: PathBuf,
}

/// A base image resolved for one platform.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// The reference as configured.
    pub name: String,
    /// Hex digest of the per-platform manifest (what `org.opencontainers.image.base.digest` names).
    pub manifest_digest: String,
    pub config: Value,
    pub layers: Vec<BaseLayer>,
}

/// Resolves `base` for `arch` and makes its config and layers available locally.
pub async fn pull_base(
    base: &str,
    arch: Arch,
    cache: &Cache,
    session: &Session,
    reporter: &dyn Reporter,
) -> Result<BaseImage, RegistryError> {
    match parse_base(base)? {
        BaseRef::Layout { path, name } => base_from_layout(base, &path, name.as_deref(), arch),
        BaseRef::Registry(reference) => {
            pull::base_from_registry(base, &reference, arch, cache, session, reporter).await
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    reference: &str,
    what: &str,
    bytes: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Malformed {
        reference: reference.into(),
        what: what.into(),
        message: e.to_string(),
    })
}

fn is_index_document(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("manifests").map(|m| m.is_array()))
        .unwrap_or(false)
}

/// Picks the entry of `index` for `arch`.
fn select(reference: &str, index: &ImageIndex, arch: Arch) -> Result<Descriptor, RegistryError> {
    let wanted = oci::platform_for(arch);
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| platform_matches(p, arch))
        })
        .cloned()
        .ok_or_else(|| RegistryError::NoPlatform {
            reference: reference.into(),
            wanted: platform_string(&wanted),
            available: index
                .manifests()
                .iter()
                .map(|d| {
                    d.platform()
                        .as_ref()
                        .map(platform_string)
                        .unwrap_or_else(|| "(no platform)".into())
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A single-arch manifest's config must describe `arch`.
fn check_config_platform(reference: &str, config: &Value, arch: Arch) -> Result<(), RegistryError> {
    let os = config.get("os").and_then(Value::as_str).unwrap_or("");
    let architecture = config
        .get("architecture")
        .and_then(Value::as_str)
        .unwrap_or("");
    let variant = config
        .get("variant")
        .and_then(Value::as_str)
        .map(String::from);
    let mut p = oci::Platform::default();
    p.set_os(oci_spec::image::Os::from(os));
    p.set_architecture(oci_spec::image::Arch::from(architecture));
    p.set_variant(variant);
    if platform_matches(&p, arch) {
        Ok(())
    } else {
        Err(RegistryError::WrongPlatform {
            reference: reference.into(),
            wanted: platform_string(&oci::platform_for(arch)),
            actual: platform_string(&p),
        })
    }
}

fn base_from_layout(
    reference: &str,
    path: &Path,
    name: Option<&str>,
    arch: Arch,
) -> Result<BaseImage, RegistryError> {
    let layout = Layout::open(path)?;
    let mut desc = layout.resolve(name)?;
    let mut bytes = layout.read_blob(&oci::hex(&desc))?;
    if oci::is_index(desc.media_type().as_ref()) || is_index_document(&bytes) {
        let index: ImageIndex = parse_json(reference, "image index", &bytes)?;
        desc = select(reference, &index, arch)?;
        bytes = layout.read_blob(&oci::hex(&desc))?;
    }
    let manifest: ImageManifest = parse_json(reference, "image manifest", &bytes)?;
    let config_bytes = layout.read_blob(&oci::hex(manifest.config()))?;
    let config: Value = parse_json(reference, "image config", &config_bytes)?;
    check_config_platform(reference, &config, arch)?;
    let layers = manifest
        .layers()
        .iter()
        .map(|d| BaseLayer {
            descriptor: d.clone(),
            path: layout.blob_path(&oci::hex(d)),
        })
        .collect();
    Ok(BaseImage {
        name: reference.into(),
        manifest_digest: oci::hex(&desc),
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_layout_references() {
        match parse_base("oci:/tmp/base:1.35").unwrap() {
            BaseRef::Layout { path, name } => {
                assert_eq!(path, PathBuf::from("/tmp/base"));
                assert_eq!(name.as_deref(), Some("1.35"));
            }
            other => panic!("{other:?}"),
        }
        match parse_base("oci:relative/dir").unwrap() {
            BaseRef::Layout { path, name } => {
                assert_eq!(path, PathBuf::from("relative/dir"));
                assert_eq!(name, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn registry_references() {
        match parse_base("127.0.0.1:5000/library/busybox:1.35").unwrap() {
            BaseRef::Registry(r) => {
                assert_eq!(r.registry(), "127.0.0.1:5000");
                assert_eq!(r.repository(), "library/busybox");
                assert_eq!(r.tag(), Some("1.35"));
            }
            other => panic!("{other:?}"),
        }
        let pinned = format!("busybox:1.36@sha256:{}", "a".repeat(64));
        match parse_base(&pinned).unwrap() {
            BaseRef::Registry(r) => assert!(r.digest().is_some()),
            other => panic!("{other:?}"),
        }
        assert!(parse_base("UPPER/Case:x").is_err());
    }
}
