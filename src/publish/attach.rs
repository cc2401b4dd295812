//! Attaching a release artifact to its index in the registry: pushed by digest, then made
//! findable through the referrers API where the registry has one, else listed under the
//! fallback tag `sha256-<index hex>` with other tools' entries kept. Nothing is attached to an
//! index the registry does not hold.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::oci::index;
use crate::publish::layout::{IndexPlan, Target};
use crate::publish::report::{fallback_merge, listing, Artifact, Listing};
use crate::registry::push::{LocalBlob, LocalManifest};
use crate::release;
use crate::sign::{self, Layer};
use serde_json::Value;

/// How the report reached the registry.
#[derive(Debug, Clone, Serialize)]
pub struct Attached {
    /// `registry/repository@digest` of the artifact manifest.
    pub artifact: String,
    pub digest: String,
    /// The index it is attached to.
    pub subject: String,
    /// `referrers-api`, or `fallback-tag` (registries without the referrers API).
    pub method: String,
    /// The fallback tag (`registry/repository:sha256-<hex>`) when that method was used.
    pub fallback_tag: Option<String>,
    /// False when the registry already held this exact artifact and listing.
    pub changed: bool,
}

/// Puts the artifact's blobs into the layout (the pusher uploads from files).
fn stage(plan: &IndexPlan, artifact: &Artifact) -> Result<LocalManifest> {
    let mut local = Vec::new();
    for bytes in std::iter::once(release::EMPTY_CONFIG)
        .chain(artifact.blobs.iter().map(|b| b.bytes.as_slice()))
    {
        let hex = plan.layout.put_blob_bytes(bytes)?;
        local.push(LocalBlob {
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
            path: plan.layout.blob_path(&hex),
        });
    }
    Ok(LocalManifest {
        media_type: if crate::publish::report::is_docker(plan) {
            index::DOCKER_MANIFEST.into()
        } else {
            index::OCI_MANIFEST.into()
        },
        digest: artifact.digest.clone(),
        bytes: artifact.manifest.clone(),
        blobs: local,
    })
}

/// Pushes the artifact by digest and makes it findable from the index: through the referrers
/// API where the registry has it, else under the fallback tag.
pub(crate) async fn attach(
    plan: &IndexPlan,
    artifact: &Artifact,
    created: &str,
    retry: &str,
) -> Result<Attached> {
    let pusher = &plan.pusher;
    let Target {
        registry,
        repository,
        ..
    } = &plan.target;
    let subject = plan.built.digest.clone();
    if pusher
        .manifest_digest(repository, &subject)
        .await?
        .is_none()
    {
        anyhow::bail!(crate::UserError::new(
            format!("the index {subject} is not in {registry}/{repository}"),
            "push it first: etcdimg push-manifest (or all-push, which attaches the report itself)",
        ));
    }
    let manifest = stage(plan, artifact)?;
    let pushed = pusher
        .push(repository, &manifest, &manifest.digest, &[], false)
        .await
        .context("pushing the release report artifact")?;
    let mut changed = pushed.manifest_put;
    let put = pushed.manifest_put.then_some(pushed.oci_subject.as_deref());
    let mut attached = Attached {
        artifact: format!("{registry}/{repository}@{}", manifest.digest),
        digest: manifest.digest.clone(),
        subject: format!("{registry}/{repository}@{subject}"),
        method: "referrers-api".into(),
        fallback_tag: None,
        changed,
    };
    let mut found = listing(pusher, plan, artifact, created, put, false).await?;
    if found == Listing::ApiAfterPut {
        // Already there but not listed: a PUT is idempotent and makes the registry index it.
        let answer = pusher
            .put_manifest_again(repository, &manifest)
            .await
            .context("pushing the release report artifact again for the referrers API")?;
        changed = true;
        attached.changed = true;
        found = listing(
            pusher,
            plan,
            artifact,
            created,
            Some(answer.as_deref()),
            false,
        )
        .await?;
    }
    let (tag, write) = match found {
        Listing::Api => return Ok(attached),
        Listing::Fallback { tag, write } => (tag, write),
        Listing::ApiAfterPut | Listing::Undecided => anyhow::bail!(
            "the registry lists no referrers for the index it holds; cannot attach the report"
        ),
    };
    let changed = write_fallback(plan, artifact, created, retry, &tag, write).await? || changed;
    attached.method = "fallback-tag".into();
    attached.fallback_tag = Some(format!("{registry}/{repository}:{tag}"));
    attached.changed = changed;
    Ok(attached)
}

/// Lists the artifact under the referrers fallback `tag`: the merged index `write` holds is
/// pushed, then read back and merged again while another writer keeps dropping our entry (up
/// to 3 times). Returns whether the tag was written.
async fn write_fallback(
    plan: &IndexPlan,
    artifact: &Artifact,
    created: &str,
    retry: &str,
    tag: &str,
    mut write: Option<(Vec<u8>, Option<String>)>,
) -> Result<bool> {
    let (
        pusher,
        Target {
            registry,
            repository,
            ..
        },
    ) = (&plan.pusher, &plan.target);
    // Read, merge, write, read back: another tool may write the same tag at the same time.
    // (The distribution API has no conditional PUT: an entry another tool adds between our
    // read and write can still be lost; the read-back only guarantees ours.)
    let mut attempts = 0;
    let mut changed = false;
    while let Some((bytes, _)) = write {
        attempts += 1;
        if attempts > 3 {
            anyhow::bail!(crate::UserError::new(
                format!("the report is pushed but {registry}/{repository}:{tag} keeps losing it"),
                format!(
                    "another tool is rewriting the referrers fallback tag at the same time (or the registry serves stale reads); run `{retry}` again",
                ),
            ));
        }
        let index = LocalManifest {
            media_type: if crate::publish::report::is_docker(plan) {
                index::DOCKER_LIST.into()
            } else {
                index::OCI_INDEX.into()
            },
            digest: format!("sha256:{}", crate::fetch::cache::sha256_hex(&bytes)),
            bytes,
            blobs: Vec::new(),
        };
        // The fallback tag is a list that grows: moving it is its purpose, and the merge kept
        // every entry it had.
        pusher
            .push(repository, &index, tag, &[], true)
            .await
            .context("listing the report under the referrers fallback tag")?;
        changed = true;
        write = fallback_merge(pusher, plan, tag, artifact, created).await?;
    }
    Ok(changed)
}

/// Adds `layers` to the cosign tag `sha256-<hex>.<suffix>` of `digest` (the layers already
/// there kept); true when something was added. Read back after the push, and merged again if
/// another signer rewrote the tag in between (up to 3 times).
pub(crate) async fn cosign_tag(
    p: &IndexPlan,
    digest: &str,
    suffix: &str,
    layers: &[Layer],
    docker: bool,
    subject: Option<Value>,
) -> Result<bool> {
    let repo = &p.target.repository;
    let tag = sign::tag(digest, suffix);
    let mut changed = false;
    for _ in 0..3 {
        let existing: Vec<Value> = match p.pusher.get_manifest(repo, &tag).await? {
            Some((_, bytes)) => serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["layers"].as_array().cloned())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let Some((manifest, config)) = sign::manifest(&existing, layers, docker, subject.clone())
        else {
            return Ok(changed);
        };
        let mut blobs = Vec::new();
        for bytes in std::iter::once(&config).chain(layers.iter().map(|l| &l.bytes)) {
            let hex = p.layout.put_blob_bytes(bytes)?;
            blobs.push(LocalBlob {
                digest: format!("sha256:{hex}"),
                size: bytes.len() as u64,
                path: p.layout.blob_path(&hex),
            });
        }
        // The layers already in the tag are in the repository: pushing skips them.
        for e in &existing {
            let d = e["digest"].as_str().unwrap_or("").to_string();
            blobs.push(LocalBlob {
                path: p.layout.blob_path(d.trim_start_matches("sha256:")),
                size: e["size"].as_u64().unwrap_or(0),
                digest: d,
            });
        }
        let local = LocalManifest {
            media_type: if docker {
                crate::oci::index::DOCKER_MANIFEST.into()
            } else {
                crate::oci::index::OCI_MANIFEST.into()
            },
            digest: format!("sha256:{}", crate::fetch::cache::sha256_hex(&manifest)),
            bytes: manifest,
            blobs,
        };
        p.pusher
            .push(repo, &local, &tag, &[], true)
            .await
            .with_context(|| format!("pushing {tag}"))?;
        changed = true;
    }
    anyhow::bail!(crate::UserError::new(
        format!("{tag} kept changing while it was written (another signer at the same time?)"),
        "run etcdimg sign again; a signature already there is not added twice",
    ))
}
