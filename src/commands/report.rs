//! The release report: `etcdimg report`, and the attach step of `push-manifest` / `all-push`.
//!
//! 1. read: the index and its per-arch images as they are (or will be) pushed, each with the
//!    build record its build left in the layout (`publish::layout::plan_index`)
//! 2. assemble: `release::report` (JSON) and, with `--spdx`, `release::spdx`
//! 3. write: `<report-dir>/release-<tag>.json` (and `.spdx.json`), atomically
//! 4. attach (optional): the report blobs and an artifact manifest whose `subject` is the index,
//!    pushed by digest; where the registry has no referrers API, the artifact is added to the
//!    index under the fallback tag `sha256-<index hex>` (other tools' entries are kept)

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::oci::index;
use crate::publish::layout::{IndexPlan, ReportOptions, Target};
use crate::publish::report::{artifact, assemble, fallback_merge, listing, Artifact, Listing};
use crate::registry::push::{LocalBlob, LocalManifest};
use crate::release::{self, ArtifactBlob, ReleaseReport};
use crate::settings::Settings;

/// The files a report was written to.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub json: String,
    pub spdx: Option<String>,
    /// The SLSA provenance v1 predicate (`report --provenance`), for `cosign attest
    /// --predicate ... --type slsaprovenance1` (release.yml's keyless signing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
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

fn write_files(dir: &Path, blobs: &[ArtifactBlob]) -> Result<Written> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the report directory {}", dir.display()))?;
    let mut paths = Vec::new();
    for b in blobs {
        let path = dir.join(&b.title);
        hostio::fs::write_atomic(&path, &b.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        paths.push(path.display().to_string());
    }
    Ok(Written {
        json: paths[0].clone(),
        spdx: paths.get(1).cloned(),
        provenance: None,
    })
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

/// The command that attaches the report later: every setting the report depends on, spelled
/// out, so it works whatever flags and environment this run had.
fn retry_command(settings: &Settings, plan: &IndexPlan, options: &ReportOptions) -> String {
    let arches: Vec<&str> = settings.arches.iter().map(|a| a.name()).collect();
    let bundled: Vec<String> = settings.bundled.iter().map(|v| v.to_string()).collect();
    let mut cmd = format!(
        "ALL_ARCH={} ",
        hostio::process::shell_quote(&arches.join(" "))
    );
    if settings.source_date_epoch != 0 {
        cmd.push_str(&format!(
            "SOURCE_DATE_EPOCH={} ",
            settings.source_date_epoch
        ));
    }
    cmd.push_str(&format!(
        "etcdimg report --push --config {} --output {} --report-dir {} --etcd-version {} --bundled-versions {} --revision {} --registry {} --push-registry {}",
        hostio::process::shell_quote(&settings.config_path.display().to_string()),
        hostio::process::shell_quote(&plan.layout.root().display().to_string()),
        hostio::process::shell_quote(&options.dir.display().to_string()),
        settings.latest,
        hostio::process::shell_quote(&bundled.join(",")),
        hostio::process::shell_quote(&settings.revision),
        hostio::process::shell_quote(&settings.registry),
        hostio::process::shell_quote(&settings.push_registry),
    ));
    for r in &settings.insecure_registries {
        cmd.push_str(&format!(
            " --insecure-registry {}",
            hostio::process::shell_quote(r)
        ));
    }
    if let Some(ca) = &settings.ca_cert {
        cmd.push_str(&format!(
            " --ca-cert {}",
            hostio::process::shell_quote(&ca.display().to_string())
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
    push_options: &crate::publish::layout::PushOptions,
    push: bool,
    provenance: bool,
) -> Result<ReportOutcome> {
    let options = push_options
        .report
        .as_ref()
        .expect("the report verb always has report options");
    let plan = crate::publish::layout::plan_index(settings, push_options)?;
    let report = assemble(settings, &plan)?;
    let predicate = provenance.then(|| {
        let run = super::sign::run_details(settings, None);
        crate::sign::provenance::predicate(&report, &run)
    });
    let mut outcome = write_and_attach(settings, &plan, options, report, push).await?;
    if let Some(predicate) = predicate {
        let path = options
            .dir
            .join(format!("release-{}.provenance.json", settings.tag()));
        hostio::fs::write_atomic(&path, &crate::publish::report::pretty(&predicate))
            .with_context(|| format!("writing {}", path.display()))?;
        outcome.written.provenance = Some(path.display().to_string());
    }
    Ok(outcome)
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
