//! The uploads of a push, through a `registry::push::Pusher`: the tags checked before anything
//! is uploaded (no silent moves), each per-arch image, then the index (per-arch manifests
//! copied by digest into the index repository under legacy naming first).

use anyhow::{Context, Result};

use super::layout::{ArchImage, IndexPlan, Target};
use crate::oci::index;
use crate::oci::{self, MediaType};
use crate::registry::push::{LocalManifest, PushOutcome, Pusher};
use crate::settings::Settings;
use serde::Serialize;

/// Refuses, before anything is uploaded, a run that would move a tag without `--force`.
#[derive(Debug, Serialize)]
pub struct ImagePush {
    pub arch: String,
    pub platform: String,
    #[serde(flatten)]
    pub outcome: PushOutcome,
}

pub(crate) async fn precheck_tags(
    pusher: &Pusher,
    planned: &[(&Target, &str)],
    force: bool,
) -> Result<()> {
    for (t, digest) in planned {
        pusher
            .check_tag(&t.repository, &t.tag, digest, force)
            .await
            .context("nothing was pushed")?;
    }
    Ok(())
}

pub(crate) async fn push_images(
    pusher: &Pusher,
    images: &[ArchImage],
    force: bool,
) -> Result<Vec<ImagePush>> {
    let mut pushed = Vec::new();
    for img in images {
        let outcome = pusher
            .push(
                &img.target.repository,
                &img.manifest,
                &img.target.tag,
                &img.mount_from,
                force,
            )
            .await
            .with_context(|| format!("pushing the {} image", img.arch))?;
        pushed.push(ImagePush {
            arch: img.arch.to_string(),
            platform: oci::platform_string(&oci::platform_for(img.arch)),
            outcome,
        });
    }
    Ok(pushed)
}

/// Makes every per-arch manifest available in the index repository, then pushes the index.
pub(crate) async fn push_index(
    settings: &Settings,
    plan: &IndexPlan,
    force: bool,
) -> Result<PushOutcome> {
    let IndexPlan {
        layout,
        images,
        built,
        target: it,
        pusher,
    } = plan;
    for img in images {
        if img.target.repository == it.repository {
            // Same repository (suffix naming): the per-arch push put it there; confirm.
            if pusher
                .manifest_digest(&it.repository, &img.manifest.digest)
                .await?
                .is_none()
            {
                anyhow::bail!(crate::UserError::new(
                    format!(
                        "the {} image {} is not in {}/{}",
                        img.arch, img.manifest.digest, it.registry, it.repository
                    ),
                    format!(
                        "push it first: etcdimg push --arch {} (or run all-push)",
                        img.arch
                    ),
                ));
            }
        } else {
            // Legacy naming: per-arch repositories; copy each manifest in by digest, its blobs
            // mounted from the per-arch repository.
            let mut from = vec![img.target.repository.clone()];
            from.extend(img.mount_from.iter().cloned());
            pusher
                .push(
                    &it.repository,
                    &img.manifest,
                    &img.manifest.digest,
                    &from,
                    force,
                )
                .await
                .with_context(|| {
                    format!("copying the {} image into {}", img.arch, it.repository)
                })?;
        }
    }
    let manifest = LocalManifest {
        media_type: built.media_type.clone(),
        bytes: built.bytes.clone(),
        digest: built.digest.clone(),
        blobs: Vec::new(),
    };
    let outcome = pusher
        .push(&it.repository, &manifest, &it.tag, &[], force)
        .await
        .context("pushing the index")?;
    // Keep the exact bytes pushed in the layout too, under the plain tag.
    for img in images {
        layout.put_blob_bytes(&img.manifest.bytes)?;
    }
    layout.put_blob_bytes(&built.bytes)?;
    let media = if built.media_type == index::OCI_INDEX {
        MediaType::ImageIndex
    } else {
        MediaType::Other(built.media_type.clone())
    };
    let reporter = pusher.transport.reporter();
    layout.set_ref(
        &settings.tag(),
        oci::descriptor(
            media,
            built.digest.trim_start_matches("sha256:"),
            built.bytes.len() as u64,
        ),
        &|m| reporter.status("Waiting", m),
    )?;
    Ok(outcome)
}
