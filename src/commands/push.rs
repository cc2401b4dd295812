//! `push --arch A`, `push-manifest` and `all-push`: the Makefile's push targets, without Docker.
//!
//! 1. images: `push` and `all-push` build first (a warm build is a cache hit); every verb then
//!    reads the per-arch images from the OCI layout (converted to Docker schema 2 with
//!    `--manifest-format docker`)
//! 2. tags: HEAD every tag this run will write; a tag that would move stops the run before any
//!    upload, unless `--force`
//! 3. push: blobs (skip / mount / upload), then each per-arch manifest, by tag
//! 4. index: checked (every arch, config platforms), per-arch manifests confirmed in the index
//!    repository (copied by digest under legacy naming), then the index, by tag
//! 5. report: the release report written and attached to the index (`commands/report.rs`);
//!    assembled once before the first upload, so a missing build record stops the run early

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::report;
use crate::fetch::cache::Cache;
use crate::oci::layout::Layout;
use crate::pipeline;
use crate::platform::Arch;
use crate::publish::gates;
use crate::publish::layout::{plan_index, pusher, read_image, ArchImage, IndexPlan, Target};
pub use crate::publish::layout::{PushOptions, ReportOptions};
pub use crate::publish::push::ImagePush;
use crate::publish::push::{precheck_tags, push_images, push_index};
use crate::registry::push::{PushOutcome, Pusher, TagChange};
use crate::release;
use crate::report::Reporter;
use crate::settings::Settings;

#[derive(Debug, Serialize)]
pub struct PushReport {
    pub registry: String,
    pub format: String,
    pub images: Vec<ImagePush>,
    pub index: Option<PushOutcome>,
    /// The release report: where it was written and how it was attached.
    pub report: Option<ReportRef>,
    /// Signatures and attestations added (`--sign`).
    pub signed: Option<super::sign::SignReport>,
    /// Blob bytes sent over the whole run (retries included).
    pub bytes_uploaded: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ReportRef {
    pub written: report::Written,
    pub attached: Option<report::Attached>,
}

pub(crate) async fn build_all(
    settings: &Settings,
    arches: &[Arch],
    options: &PushOptions,
    cache: &Cache,
    reporter: &Arc<dyn Reporter>,
) -> Result<Vec<pipeline::BuildReport>> {
    let pre = pipeline::preflight(settings, arches, &options.build)?;
    let mut reports = Vec::new();
    for arch in arches {
        reports.push(
            pipeline::build_checked(
                settings,
                *arch,
                &options.build,
                &pre,
                cache,
                reporter.clone(),
            )
            .await
            .with_context(|| format!("building the {arch} image to push"))?,
        );
    }
    Ok(reports)
}

fn push_report(
    pusher: &Pusher,
    options: &PushOptions,
    images: Vec<ImagePush>,
    index: Option<PushOutcome>,
    report: Option<ReportRef>,
    started: Instant,
) -> PushReport {
    PushReport {
        registry: pusher.transport.registry.clone(),
        format: options.format.to_string(),
        images,
        index,
        report,
        signed: None,
        bytes_uploaded: pusher
            .transport
            .uploaded_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// `etcdimg push --arch A`.
pub async fn push(
    settings: &Settings,
    arch: Arch,
    options: &PushOptions,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport> {
    let started = Instant::now();
    gates::check_policy(settings, options, &*reporter)?;
    build_all(settings, &[arch], options, cache, &reporter).await?;
    let layout = Layout::open(&options.build.output)?;
    let image = read_image(settings, &layout, arch, options.format)?;
    gates::check_go_policy(settings, options, [&image], &*reporter)?;
    scan_gate(settings, options, std::slice::from_ref(&image), &*reporter)?;
    let pusher = pusher(options, &image.target.registry)?;
    let images = push_images(&pusher, std::slice::from_ref(&image), options.force).await?;
    Ok(push_report(&pusher, options, images, None, None, started))
}

/// `etcdimg push-manifest`: the index over per-arch images already pushed.
pub async fn push_manifest(
    settings: &Settings,
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport> {
    let started = Instant::now();
    let signer = signer(options)?;
    gates::check_policy(settings, options, &*reporter)?;
    let p = plan_index(settings, options)?;
    gates::check_go_policy(settings, options, &p.images, &*reporter)?;
    let vulns = scan_gate(settings, options, &p.images, &*reporter)?;
    let assembled = check_report(settings, &p, options, vulns)?;
    let outcome = push_index(settings, &p, options.force).await?;
    let report = attach_report(settings, &p, options, assembled.clone()).await?;
    let signed = sign_after_push(settings, &p, signer, assembled, &*reporter).await?;
    let mut out = push_report(
        &p.pusher,
        options,
        Vec::new(),
        Some(outcome),
        report,
        started,
    );
    out.signed = signed;
    Ok(out)
}

/// `etcdimg all-push`: build and push every arch, then the index. Every tag is checked before
/// the first byte is sent.
pub async fn all_push(
    settings: &Settings,
    options: &PushOptions,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport> {
    let started = Instant::now();
    let signer = signer(options)?;
    gates::check_policy(settings, options, &*reporter)?;
    build_all(settings, &settings.arches, options, cache, &reporter).await?;
    let p = plan_index(settings, options)?;
    gates::check_go_policy(settings, options, &p.images, &*reporter)?;
    let vulns = scan_gate(settings, options, &p.images, &*reporter)?;
    let mut planned: Vec<(&Target, &str)> = p
        .images
        .iter()
        .map(|i| (&i.target, i.manifest.digest.as_str()))
        .collect();
    planned.push((&p.target, p.built.digest.as_str()));
    let assembled = check_report(settings, &p, options, vulns)?;
    precheck_tags(&p.pusher, &planned, options.force).await?;
    let pushed = push_images(&p.pusher, &p.images, options.force).await?;
    let outcome = push_index(settings, &p, options.force).await?;
    let report = attach_report(settings, &p, options, assembled.clone()).await?;
    let signed = sign_after_push(settings, &p, signer, assembled, &*reporter).await?;
    let mut out = push_report(&p.pusher, options, pushed, Some(outcome), report, started);
    out.signed = signed;
    Ok(out)
}

/// Before anything is pushed: the release report can be assembled (every image has a build
/// record that matches it), so a run never stops between the index and its report.
fn check_report(
    settings: &Settings,
    plan: &IndexPlan,
    options: &PushOptions,
    vulnerabilities: Option<crate::scan::ScanReport>,
) -> Result<Option<release::ReleaseReport>> {
    if options.report.is_none() {
        return Ok(None);
    }
    let mut report =
        crate::publish::report::assemble(settings, plan).context("nothing was pushed")?;
    report.vulnerabilities = vulnerabilities;
    Ok(Some(report))
}

/// With `--vulndb`: the images' Go binaries scanned before anything is pushed; called
/// vulnerabilities refuse the release unless allowed ([`super::scan::gate`]).
fn scan_gate(
    settings: &Settings,
    options: &PushOptions,
    images: &[ArchImage],
    reporter: &dyn Reporter,
) -> Result<Option<crate::scan::ScanReport>> {
    let Some(scanner) = &options.scan else {
        return Ok(None);
    };
    let report = super::scan::scan_images(images, scanner, reporter)
        .context("scanning the images before release; nothing was pushed")?;
    super::scan::gate(
        &report,
        options.allow_called_vulns,
        &settings.tag(),
        reporter,
    )?;
    Ok(Some(report))
}

/// After the index: the release report, written and attached (unless `--no-report`).
async fn attach_report(
    settings: &Settings,
    plan: &IndexPlan,
    options: &PushOptions,
    assembled: Option<release::ReleaseReport>,
) -> Result<Option<ReportRef>> {
    let (Some(report_options), Some(assembled)) = (&options.report, assembled) else {
        return Ok(None);
    };
    let outcome = report::write_and_attach(settings, plan, report_options, assembled, true)
        .await
        .context("the index is pushed")?;
    Ok(Some(ReportRef {
        written: outcome.written,
        attached: outcome.attached,
    }))
}

/// `--sign`: the key, loaded before anything is pushed (a bad key or password stops the run
/// first).
fn signer(
    options: &PushOptions,
) -> Result<Option<(p256::ecdsa::SigningKey, &super::sign::SignOptions)>> {
    options
        .sign
        .as_ref()
        .map(|s| super::sign::load_key(s).map(|k| (k, s)))
        .transpose()
}

/// After the index (and its report): the release signed and attested, with `--sign`.
async fn sign_after_push(
    settings: &Settings,
    p: &IndexPlan,
    signer: Option<(p256::ecdsa::SigningKey, &super::sign::SignOptions)>,
    assembled: Option<release::ReleaseReport>,
    reporter: &dyn Reporter,
) -> Result<Option<super::sign::SignReport>> {
    let Some((key, options)) = signer else {
        return Ok(None);
    };
    let report = match assembled {
        Some(r) => r,
        None => crate::publish::report::assemble(settings, p)?,
    };
    let signed = super::sign::sign_release(settings, p, &key, &report, options, reporter)
        .await
        .context("the release is pushed but not signed; finish with `etcdimg sign`")?;
    Ok(Some(signed))
}

/// A one-line summary of a push for the terminal.
pub fn summary(outcome: &PushOutcome) -> String {
    let tag = match &outcome.tag {
        TagChange::Created => "created".to_string(),
        TagChange::Unchanged => "unchanged".to_string(),
        TagChange::Moved(prev) => format!("moved from {prev}"),
        TagChange::Untagged => "by digest".to_string(),
    };
    format!(
        "{}@{} ({tag}; {} uploaded, {} mounted, {} already there; {} bytes)",
        outcome.reference,
        outcome.digest,
        outcome.blobs_uploaded,
        outcome.blobs_mounted,
        outcome.blobs_present,
        outcome.bytes_uploaded
    )
}
