//! The release report: `etcdimg report`, and the attach step of `push-manifest` / `all-push`.
//!
//! 1. read: the index and its per-arch images as they are (or will be) pushed, each with the
//!    build record its build left in the layout (`index_plan::plan_index`)
//! 2. assemble: `release::report` (JSON) and, with `--spdx`, `release::spdx`
//! 3. write: `<report-dir>/release-<tag>.json` (and `.spdx.json`), atomically
//! 4. attach (optional): the report blobs and an artifact manifest whose `subject` is the index,
//!    pushed by digest; where the registry has no referrers API, the artifact is added to the
//!    index under the fallback tag `sha256-<index hex>` (other tools' entries are kept)

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::index_plan::{IndexPlan, ReportOptions, Target};
use crate::oci::image;
use crate::oci::index;
use crate::registry::push::{LocalBlob, LocalManifest, Pusher, Referrers};
use crate::release::{self, ArtifactBlob, ReleaseReport};
use crate::settings::Settings;

/// The files a report was written to.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub json: String,
    pub spdx: Option<String>,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct ReportOutcome {
    pub report: ReleaseReport,
    pub written: Written,
    pub attached: Option<Attached>,
}

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

fn index_ref(plan: &IndexPlan) -> release::IndexRef {
    release::IndexRef {
        reference: plan.target.reference(),
        digest: plan.built.digest.clone(),
        media_type: plan.built.media_type.clone(),
        size: plan.built.bytes.len() as u64,
    }
}

/// The report's blobs, in artifact order: JSON first, then SPDX if asked for.
fn blobs(settings: &Settings, report: &ReleaseReport, spdx: bool) -> Vec<ArtifactBlob> {
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

fn pretty(v: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("serialisable");
    bytes.push(b'\n');
    bytes
}

fn write_files(dir: &Path, blobs: &[ArtifactBlob]) -> Result<Written> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the report directory {}", dir.display()))?;
    let mut paths = Vec::new();
    for b in blobs {
        let path = dir.join(&b.title);
        crate::fetch::cache::write_atomic(&path, &b.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        paths.push(path.display().to_string());
    }
    Ok(Written {
        json: paths[0].clone(),
        spdx: paths.get(1).cloned(),
    })
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
        media_type: index::OCI_MANIFEST.into(),
        digest: artifact.digest.clone(),
        bytes: artifact.manifest.clone(),
        blobs: local,
    })
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
async fn fallback_merge(
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

/// Pushes the artifact by digest and makes it findable from the index: through the referrers
/// API where the registry has it, else under the fallback tag.
async fn attach(
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
    let (tag, mut write) = match found {
        Listing::Api => return Ok(attached),
        Listing::Fallback { tag, write } => (tag, write),
        Listing::ApiAfterPut | Listing::Undecided => anyhow::bail!(
            "the registry lists no referrers for the index it holds; cannot attach the report"
        ),
    };
    // Read, merge, write, read back: another tool may write the same tag at the same time.
    // (The distribution API has no conditional PUT: an entry another tool adds between our
    // read and write can still be lost; the read-back only guarantees ours.)
    let mut attempts = 0;
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
            media_type: index::OCI_INDEX.into(),
            digest: format!("sha256:{}", crate::fetch::cache::sha256_hex(&bytes)),
            bytes,
            blobs: Vec::new(),
        };
        // The fallback tag is a list that grows: moving it is its purpose, and the merge kept
        // every entry it had.
        pusher
            .push(repository, &index, &tag, &[], true)
            .await
            .context("listing the report under the referrers fallback tag")?;
        changed = true;
        write = fallback_merge(pusher, plan, &tag, artifact, created).await?;
    }
    attached.method = "fallback-tag".into();
    attached.fallback_tag = Some(format!("{registry}/{repository}:{tag}"));
    attached.changed = changed;
    Ok(attached)
}

fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The command that attaches the report later: every setting the report depends on, spelled
/// out, so it works whatever flags and environment this run had.
fn retry_command(settings: &Settings, plan: &IndexPlan, options: &ReportOptions) -> String {
    let arches: Vec<&str> = settings.arches.iter().map(|a| a.name()).collect();
    let bundled: Vec<String> = settings.bundled.iter().map(|v| v.to_string()).collect();
    let mut cmd = format!("ALL_ARCH={} ", sh_quote(&arches.join(" ")));
    if settings.source_date_epoch != 0 {
        cmd.push_str(&format!(
            "SOURCE_DATE_EPOCH={} ",
            settings.source_date_epoch
        ));
    }
    cmd.push_str(&format!(
        "etcdimg report --push --config {} --output {} --report-dir {} --etcd-version {} --bundled-versions {} --revision {} --registry {} --push-registry {}",
        sh_quote(&settings.config_path.display().to_string()),
        sh_quote(&plan.layout.root().display().to_string()),
        sh_quote(&options.dir.display().to_string()),
        settings.latest,
        sh_quote(&bundled.join(",")),
        sh_quote(&settings.revision),
        sh_quote(&settings.registry),
        sh_quote(&settings.push_registry),
    ));
    for r in &settings.insecure_registries {
        cmd.push_str(&format!(" --insecure-registry {}", sh_quote(r)));
    }
    if let Some(ca) = &settings.ca_cert {
        cmd.push_str(&format!(
            " --ca-cert {}",
            sh_quote(&ca.display().to_string())
        ));
    }
    if options.spdx {
        cmd.push_str(" --spdx");
    }
    if plan.built.media_type != index::OCI_INDEX {
        cmd.push_str(" --manifest-format docker");
    }
    cmd
}

/// `etcdimg report`: the report for the index over the layout's images; `push` attaches it.
pub async fn report(
    settings: &Settings,
    push_options: &super::index_plan::PushOptions,
    push: bool,
) -> Result<ReportOutcome> {
    let options = push_options
        .report
        .as_ref()
        .expect("the report verb always has report options");
    let plan = super::index_plan::plan_index(settings, push_options)?;
    let report = assemble(settings, &plan)?;
    write_and_attach(settings, &plan, options, report, push).await
}

/// Writes `report` (assembled for the index in `plan`) and, when `push`, attaches it in the
/// registry.
pub(crate) async fn write_and_attach(
    settings: &Settings,
    plan: &IndexPlan,
    options: &ReportOptions,
    report: ReleaseReport,
    push: bool,
) -> Result<ReportOutcome> {
    let artifact = artifact(settings, plan, &report, options.spdx);
    let written = write_files(&options.dir, &artifact.blobs)?;
    let attached = if push {
        let retry = retry_command(settings, plan, options);
        Some(
            attach(plan, &artifact, &report.created, &retry)
                .await
                .with_context(|| {
                    format!(
                        "the release report (written to {}) is not attached; once the cause is fixed, `{retry}` attaches it",
                        written.json,
                    )
                })?,
        )
    } else {
        None
    };
    Ok(ReportOutcome {
        report,
        written,
        attached,
    })
}
