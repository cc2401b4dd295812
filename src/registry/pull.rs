//! Pulling a base image for one platform from a registry, over the run's [`Session`].
//!
//! The same transport as pushes (one HTTP client per run, the bearer-token and
//! identity-token flows, retries that honour Retry-After). Adds what a base pull needs: a
//! pinned digest checked against the bytes, platform selection with variants, a check that
//! a single-arch base really is the arch asked for, and blobs streamed into the
//! content-addressed cache (verified by digest and size before they become visible; memory
//! does not grow with the layer).

use std::io::Write;
use std::path::PathBuf;

use futures_util::StreamExt;
use oci_spec::distribution::Reference;
use serde_json::Value;

use super::push::{short, Pusher};
use super::session::Session;
use super::transport::Transport;
use super::{check_config_platform, is_index_document, parse_json, select};
use super::{BaseImage, BaseLayer, RegistryError};
use crate::fetch::cache::{sha256_hex, Cache, CacheError};
use crate::oci::{self, Descriptor, ImageIndex, ImageManifest};
use crate::platform::Arch;
use crate::report::Reporter;

/// `base` (as configured, `name`) for `arch`: its platform manifest, config and layers, the
/// blobs in the cache.
pub(crate) async fn base_from_registry(
    name: &str,
    reference: &Reference,
    arch: Arch,
    cache: &Cache,
    session: &Session,
    reporter: &dyn Reporter,
) -> Result<BaseImage, RegistryError> {
    let registry = reference.resolve_registry();
    let transport = session.transport(registry)?;
    let reader = Pusher::read_only(transport.clone());
    let repo = reference.repository();
    reporter.status("Resolving", &format!("base {name} for {arch}"));

    let wanted = reference
        .digest()
        .or(reference.tag())
        .unwrap_or("latest")
        .to_string();
    let bytes = get_manifest(&reader, name, repo, &wanted).await?;
    if let Some(pinned) = reference.digest() {
        check_digest(
            name,
            pinned.strip_prefix("sha256:").unwrap_or(pinned),
            &bytes,
        )?;
    }
    let (manifest_hex, manifest_bytes) = if is_index_document(&bytes) {
        let index: ImageIndex = parse_json(name, "image index", &bytes)?;
        let hex = oci::hex(&select(name, &index, arch)?);
        let m = get_manifest(&reader, name, repo, &format!("sha256:{hex}")).await?;
        check_digest(name, &hex, &m)?;
        (hex, m)
    } else {
        (sha256_hex(&bytes), bytes)
    };
    let manifest: ImageManifest = parse_json(name, "image manifest", &manifest_bytes)?;

    let config_path = pull_blob(&transport, name, repo, manifest.config(), cache, reporter).await?;
    let config_bytes = std::fs::read(&config_path).map_err(|e| {
        RegistryError::Cache(CacheError::Io {
            path: config_path.clone(),
            source: e,
        })
    })?;
    let config: Value = parse_json(name, "image config", &config_bytes)?;
    check_config_platform(name, &config, arch)?;
    let mut layers = Vec::new();
    for d in manifest.layers() {
        let path = pull_blob(&transport, name, repo, d, cache, reporter).await?;
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

async fn get_manifest(
    reader: &Pusher,
    name: &str,
    repo: &str,
    reference: &str,
) -> Result<Vec<u8>, RegistryError> {
    match reader.get_manifest(repo, reference).await? {
        Some((_, bytes)) => Ok(bytes),
        None => Err(RegistryError::Request {
            op: "GET manifest".into(),
            reference: format!("{name} ({reference})"),
            message: "404 Not Found".into(),
            hint: Some(
                "check the base image's repository and tag (BASEIMAGE, --base-image or image.base in images.toml)"
                    .into(),
            ),
        }),
    }
}

fn check_digest(name: &str, expected_hex: &str, bytes: &[u8]) -> Result<(), RegistryError> {
    let actual = sha256_hex(bytes);
    if actual == expected_hex {
        Ok(())
    } else {
        Err(RegistryError::DigestMismatch {
            reference: name.into(),
            expected: expected_hex.into(),
            actual,
        })
    }
}

/// The blob `d` of `repo`, from the cache or streamed into it. A body cut short is retried
/// from the start (the transport's retry policy); one longer than the descriptor says, or
/// with other bytes, never enters the cache.
async fn pull_blob(
    transport: &Transport,
    name: &str,
    repo: &str,
    d: &Descriptor,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<PathBuf, RegistryError> {
    let hex = oci::hex(d);
    if let Some(p) = cache.get(&hex) {
        return Ok(p);
    }
    reporter.status(
        "Pulling",
        &format!(
            "{} ({} bytes) from {name}",
            short(d.digest().as_ref()),
            d.size()
        ),
    );
    transport.want_scope(repo, "pull");
    let url = transport.url(&format!("/v2/{repo}/blobs/{}", d.digest()))?;
    let what = format!("GET blob {}/{repo}@{}", transport.registry, d.digest());
    let mut attempt = 0;
    loop {
        let response = transport.send(&what, &|c| c.get(url.clone())).await?;
        if !response.status().is_success() {
            return Err(transport.unexpected(&what, response).await);
        }
        let mut pending = cache.pending()?;
        let cause = match stream_body(response, &mut pending, d.size()).await {
            Ok(()) if pending.written == d.size() => {
                return match cache.commit(pending, Some(&hex))? {
                    Ok(_) => Ok(cache.blob_path(&hex)),
                    Err(actual) => Err(RegistryError::DigestMismatch {
                        reference: name.into(),
                        expected: hex,
                        actual,
                    }),
                };
            }
            Ok(()) => format!(
                "the body ended after {} of {} bytes",
                pending.written,
                d.size()
            ),
            Err(Body::TooLong) => {
                return Err(RegistryError::Malformed {
                    reference: name.into(),
                    what: format!("blob {}", d.digest()),
                    message: format!(
                        "the registry sent more than the {} bytes the manifest lists",
                        d.size()
                    ),
                })
            }
            Err(Body::Cut(cause)) => cause,
            Err(Body::Write(e)) => return Err(RegistryError::Cache(e)),
        };
        if attempt >= transport.policy.retries {
            return Err(RegistryError::GaveUp {
                op: what,
                registry: transport.registry.clone(),
                attempts: attempt + 1,
                last: cause,
            });
        }
        transport.back_off(&what, attempt, &cause, None).await;
        attempt += 1;
    }
}

enum Body {
    Cut(String),
    TooLong,
    Write(CacheError),
}

async fn stream_body(
    response: reqwest::Response,
    pending: &mut crate::fetch::cache::PendingBlob,
    limit: u64,
) -> Result<(), Body> {
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Body::Cut(crate::fetch::http::error_chain(&e)))?;
        if pending.written + chunk.len() as u64 > limit {
            return Err(Body::TooLong);
        }
        pending.write_all(&chunk).map_err(|e| {
            Body::Write(CacheError::Io {
                path: pending.path().to_path_buf(),
                source: e,
            })
        })?;
    }
    Ok(())
}
