//! The release report as it is pushed: assembled from the build records in the layout and the
//! index about to be pushed, rendered (JSON, SPDX), made into an OCI artifact whose subject is
//! the index, and listed (referrers API or the fallback tag) without writing anything. The
//! `report` verb and push's attach step (`commands::report`) and `plan` use it.

use anyhow::{Context, Result};

use super::layout::IndexPlan;
use crate::oci::image;
use crate::registry::push::{Pusher, Referrers};
use crate::release::{self, ArtifactBlob, ReleaseReport};
use crate::settings::Settings;

/// Assembles the report for the index in `plan` from the layout's build records.
pub(crate) fn assemble(settings: &Settings, plan: &IndexPlan) -> Result<ReleaseReport> {
    let input = release::ReportInput {
        image: format!("{}/{}", plan.target.registry, plan.target.repository),
        tag: settings.tag(),
        created: image::rfc3339(settings.source_date_epoch),
        etcd: release::Etcd {
            latest: settings.latest.to_string(),
            bundled: settings.bundled.iter().map(|v| v.to_string()).collect(),
            revision: settings.revision.clone(),
            unsafe_versions_allowed: settings
                .policy_findings()
                .iter()
                .map(|f| f.to_string())
                .collect(),
        },
        index: index_ref(plan),
        unsupported_go_allowed: crate::gopolicy::findings(
            &settings.go_policy,
            plan.images.iter().filter_map(|i| {
                i.record
                    .as_ref()
                    .map(|r| (i.arch.name(), r.provenance.binaries.as_slice()))
            }),
        )
        .iter()
        .map(|g| g.to_string())
        .collect(),
        images: plan
            .images
            .iter()
            .map(|i| release::PushedImage {
                arch: i.arch.to_string(),
                reference: i.target.reference(),
                manifest_digest: i.manifest.digest.clone(),
                manifest_media_type: i.manifest.media_type.clone(),
                layout_manifest_digest: i.layout_digest.clone(),
                config_digest: i.manifest.blobs[0].digest.clone(),
                record: i.record.as_ref(),
            })
            .collect(),
    };
    release::report(input).map_err(|e| {
        let hint = match &e {
            release::ReleaseError::NoRecord { arch, .. }
            | release::ReleaseError::StaleRecord { arch, .. } => format!(
                "rebuild it with this etcdimg (etcdimg build --arch {arch}); a layout merged by hand must keep index.json's annotations and every blob"
            ),
            _ => "rebuild the images with etcdimg all-build".into(),
        };
        anyhow::Error::new(e).context(crate::UserError::new(
            "cannot write the release report",
            hint,
        ))
    })
}

pub(crate) fn index_ref(plan: &IndexPlan) -> release::IndexRef {
    release::IndexRef {
        reference: plan.target.reference(),
        digest: plan.built.digest.clone(),
        media_type: plan.built.media_type.clone(),
        size: plan.built.bytes.len() as u64,
    }
}

/// The report's blobs, in artifact order: JSON first, then SPDX if asked for.
pub(crate) fn blobs(settings: &Settings, report: &ReleaseReport, spdx: bool) -> Vec<ArtifactBlob> {
    let name = format!("release-{}", settings.tag());
    let mut out = vec![ArtifactBlob {
        media_type: release::REPORT_MEDIA_TYPE.into(),
        title: format!("{name}.json"),
        bytes: pretty(&serde_json::to_value(report).expect("serialisable")),
    }];
    if spdx {
        out.push(ArtifactBlob {
            media_type: release::SPDX_MEDIA_TYPE.into(),
            title: format!("{name}.spdx.json"),
            bytes: pretty(&release::spdx(report)),
        });
    }
    out
}

pub(crate) fn pretty(v: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("serialisable");
    bytes.push(b'\n');
    bytes
}

/// The report artifact, in memory: its blobs (JSON, then SPDX) and its manifest.
pub(crate) struct Artifact {
    pub blobs: Vec<ArtifactBlob>,
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of `manifest`.
    pub digest: String,
}

impl Artifact {
    /// Every blob the manifest names, in its order (the empty config first): digest, size, what.
    pub fn blob_list(&self) -> Vec<(String, u64, String)> {
        std::iter::once((release::EMPTY_CONFIG, "empty config".to_string()))
            .chain(
                self.blobs
                    .iter()
                    .map(|b| (b.bytes.as_slice(), b.title.clone())),
            )
            .map(|(bytes, what)| {
                (
                    format!("sha256:{}", crate::fetch::cache::sha256_hex(bytes)),
                    bytes.len() as u64,
                    what,
                )
            })
            .collect()
    }
}

/// The artifact for `report` over the index in `plan`. Nothing is written.
pub(crate) fn artifact(
    settings: &Settings,
    plan: &IndexPlan,
    report: &ReleaseReport,
    spdx: bool,
) -> Artifact {
    let blobs = blobs(settings, report, spdx);
    let manifest = release::artifact_manifest(&index_ref(plan), &blobs, &report.created);
    Artifact {
        digest: format!("sha256:{}", crate::fetch::cache::sha256_hex(&manifest)),
        manifest,
        blobs,
    }
}

/// Is the release in Docker's format (its index a Docker manifest list)?
pub(crate) fn is_docker(plan: &IndexPlan) -> bool {
    plan.built.media_type == crate::oci::index::DOCKER_LIST
}

/// What listing the artifact under the index needs, found out read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listing {
    /// The registry's referrers API lists it (or will, when the artifact is PUT).
    Api,
    /// The referrers API does not list the artifact, which is already there (for example
    /// attached through the fallback tag before the registry gained the API): PUT it again.
    ApiAfterPut,
    /// The repository does not exist yet on a registry with the API: the push decides.
    Undecided,
    /// The fallback tag: `None` when it already lists the artifact, else the index to PUT and
    /// the digest the tag points to now (if it exists).
    Fallback {
        tag: String,
        write: Option<(Vec<u8>, Option<String>)>,
    },
}

/// The fallback tag's index with the artifact added (`None`: already listed), and the digest
/// the tag points to now, if it exists.
pub(crate) async fn fallback_merge(
    pusher: &Pusher,
    plan: &IndexPlan,
    tag: &str,
    artifact: &Artifact,
    created: &str,
) -> Result<Option<(Vec<u8>, Option<String>)>> {
    let (registry, repository) = (&plan.target.registry, &plan.target.repository);
    let existing = pusher
        .get_manifest(repository, tag)
        .await
        .context("reading the referrers fallback tag")?;
    let merged = release::merge_fallback_index(
        existing.as_ref().map(|(t, b)| (t.as_str(), b.as_slice())),
        &artifact.digest,
        artifact.manifest.len() as u64,
        created,
        is_docker(plan),
    )
    .map_err(|e| {
        anyhow::Error::new(e).context(crate::UserError::new(
            format!("cannot list the report under {registry}/{repository}:{tag}"),
            "that tag is reserved for referrers of the index (OCI distribution spec 1.1); remove what another tool put there",
        ))
    })?;
    let previous = existing.map(|(_, b)| format!("sha256:{}", crate::fetch::cache::sha256_hex(&b)));
    Ok(merged.map(|bytes| (bytes, previous)))
}

/// How the artifact is (or would be) listed. `put`: the registry's answer to this run's PUT of
/// the artifact (`Some(OCI-Subject)`); `None` when nothing was PUT, so the referrers API is
/// asked whether it lists the artifact. Per the distribution spec 1.1, a PUT answered without
/// `OCI-Subject` means the client keeps the fallback tag.
pub(crate) async fn listing(
    pusher: &Pusher,
    plan: &IndexPlan,
    artifact: &Artifact,
    created: &str,
    put: Option<Option<&str>>,
    will_put: bool,
) -> Result<Listing> {
    let subject = &plan.built.digest;
    match put {
        Some(Some(s)) if s == subject => return Ok(Listing::Api),
        Some(Some(other)) => pusher.transport.reporter().warn(&format!(
            "the registry answered OCI-Subject {other}, not the index {subject}; listing the report under the fallback tag"
        )),
        Some(None) => {}
        // Docker's format has no referrers: the fallback tag is the listing.
        None if is_docker(plan) => {}
        None => match pusher
            .referrers(&plan.target.repository, subject)
            .await?
        {
            // A registry with the API indexes the artifact when it is PUT.
            Referrers::Listed(listed) if will_put || listed.contains(&artifact.digest) => {
                return Ok(Listing::Api)
            }
            Referrers::Listed(_) => return Ok(Listing::ApiAfterPut),
            Referrers::UnknownRepository => return Ok(Listing::Undecided),
            Referrers::NoApi => {}
        },
    }
    let tag = release::fallback_tag(subject);
    let write = fallback_merge(pusher, plan, &tag, artifact, created).await?;
    Ok(Listing::Fallback { tag, write })
}
