//! Everything that talks to a registry. This file: references, and pulling a base image for
//! one platform over oci-client. `auth`, `transport` and `push` are the push side.
//!
//! Owns: every socket to a registry. oci-client does the protocol (manifest and blob GETs,
//! the bearer-token flow, digest checks of blobs); this module adds what it lacks for us:
//! platform selection with variants (its resolvers ignore them), a check that a single-arch
//! base really is the arch asked for, and the content-addressed cache.

pub mod auth;
pub mod push;
pub mod reference;
pub mod transport;

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

use crate::fetch::cache::{sha256_hex, Cache};
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

/// Registry connection options.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    pub insecure: Vec<String>,
    pub ca_cert: Option<PathBuf>,
}

pub fn client(options: &RegistryOptions) -> Result<Client, RegistryError> {
    let mut config = ClientConfig {
        protocol: if options.insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(options.insecure.clone())
        },
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    if let Some(ca) = &options.ca_cert {
        let data = transport::read_ca_cert(ca)?;
        config
            .extra_root_certificates
            .push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data,
            });
    }
    Ok(Client::new(config))
}

const ACCEPT: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fn request_error(
    op: &str,
    reference: &str,
    registry: &str,
    insecure: bool,
    err: impl std::fmt::Display,
) -> RegistryError {
    let message = err.to_string();
    let lower = message.to_lowercase();
    let hint = if lower.contains("not authorized")
        || lower.contains("unauthorized")
        || lower.contains("401")
        || lower.contains("403")
    {
        Some(format!(
            "`{registry}` refused the credentials for it in the docker config (or anonymous access, if there are none): check DOCKER_CONFIG / ~/.docker/config.json (docker login {registry})"
        ))
    } else if !insecure
        && (lower.contains("http")
            || lower.contains("tls")
            || lower.contains("certificate")
            || lower.contains("connect"))
    {
        Some(format!(
            "is `{registry}` reachable? If it serves plain HTTP, declare it insecure with --insecure-registry {registry} (never implied); if it uses a private CA, pass --ca-cert"
        ))
    } else {
        Some(format!(
            "check that `{reference}` exists and `{registry}` is reachable"
        ))
    };
    RegistryError::Request {
        op: op.into(),
        reference: reference.into(),
        message,
        hint,
    }
}

/// Resolves `base` for `arch` and makes its config and layers available locally.
pub async fn pull_base(
    base: &str,
    arch: Arch,
    cache: &Cache,
    options: &RegistryOptions,
    reporter: &dyn Reporter,
) -> Result<BaseImage, RegistryError> {
    match parse_base(base)? {
        BaseRef::Layout { path, name } => base_from_layout(base, &path, name.as_deref(), arch),
        BaseRef::Registry(reference) => {
            base_from_registry(base, &reference, arch, cache, options, reporter).await
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

async fn base_from_registry(
    name: &str,
    reference: &Reference,
    arch: Arch,
    cache: &Cache,
    options: &RegistryOptions,
    reporter: &dyn Reporter,
) -> Result<BaseImage, RegistryError> {
    let registry = reference.resolve_registry().to_string();
    let insecure = options
        .insecure
        .iter()
        .any(|h| h == &registry || h == reference.registry());
    let client = client(options)?;
    // The docker config's username/password, if any (a private base); oci-client has no
    // identity-token exchange, so such a registry is read anonymously.
    let auth = match auth::lookup(&registry)? {
        Some(auth::Credential::Basic { username, password }) => {
            RegistryAuth::Basic(username, password)
        }
        _ => RegistryAuth::Anonymous,
    };
    let err = |op: &str, e: oci_client::errors::OciDistributionError| {
        request_error(op, name, &registry, insecure, e)
    };

    reporter.status("Resolving", &format!("base {name} for {arch}"));
    let (bytes, digest) = client
        .pull_manifest_raw(reference, &auth, &ACCEPT)
        .await
        .map_err(|e| err("GET manifest", e))?;
    let top_hex = digest
        .strip_prefix("sha256:")
        .unwrap_or(&digest)
        .to_string();
    if let Some(pinned) = reference.digest() {
        let actual = sha256_hex(&bytes);
        let expected = pinned.strip_prefix("sha256:").unwrap_or(pinned);
        if actual != expected {
            return Err(RegistryError::DigestMismatch {
                reference: name.into(),
                expected: expected.into(),
                actual,
            });
        }
    }
    let (manifest_hex, manifest_bytes) = if is_index_document(&bytes) {
        let index: ImageIndex = parse_json(name, "image index", &bytes)?;
        let desc = select(name, &index, arch)?;
        let hex = oci::hex(&desc);
        let by_digest = reference.clone_with_digest(format!("sha256:{hex}"));
        let (m, _) = client
            .pull_manifest_raw(&by_digest, &auth, &ACCEPT)
            .await
            .map_err(|e| err("GET manifest", e))?;
        let actual = sha256_hex(&m);
        if actual != hex {
            return Err(RegistryError::DigestMismatch {
                reference: name.into(),
                expected: hex,
                actual,
            });
        }
        (hex, m.to_vec())
    } else {
        (top_hex, bytes.to_vec())
    };
    let manifest: ImageManifest = parse_json(name, "image manifest", &manifest_bytes)?;

    // Blobs come from the cache when present; new ones are pulled (oci-client checks digests)
    // and verified again as they enter the cache.
    let fetch_blob = async |d: &Descriptor| -> Result<PathBuf, RegistryError> {
        let hex = oci::hex(d);
        if let Some(p) = cache.get(&hex) {
            return Ok(p);
        }
        reporter.status(
            "Pulling",
            &format!("{} ({} bytes) from {name}", d.digest(), d.size()),
        );
        let mut buf: Vec<u8> = Vec::with_capacity(d.size() as usize);
        let digest = d.digest().to_string();
        client
            .pull_blob(reference, digest.as_str(), &mut buf)
            .await
            .map_err(|e| err("GET blob", e))?;
        let actual = sha256_hex(&buf);
        if actual != hex {
            return Err(RegistryError::DigestMismatch {
                reference: name.into(),
                expected: hex,
                actual,
            });
        }
        cache.put_bytes(&buf)?;
        Ok(cache.blob_path(&hex))
    };
    let config_path = fetch_blob(manifest.config()).await?;
    let config_bytes = std::fs::read(&config_path).map_err(|e| {
        RegistryError::Cache(crate::fetch::cache::CacheError::Io {
            path: config_path.clone(),
            source: e,
        })
    })?;
    let config: Value = parse_json(name, "image config", &config_bytes)?;
    check_config_platform(name, &config, arch)?;
    let mut layers = Vec::new();
    for d in manifest.layers() {
        let path = fetch_blob(d).await?;
        layers.push(BaseLayer {
            descriptor: d.clone(),
            path,
        });
    }
    Ok(BaseImage {
        name: name.into(),
        manifest_digest: manifest_hex,
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
