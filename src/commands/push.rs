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
use serde_json::Value;

use super::build::{self, BuildOptions};
use super::report;
use crate::fetch::cache::{sha256_hex, Cache};
use crate::oci::index::{self, ManifestFormat};
use crate::oci::layout::Layout;
use crate::oci::{self, MediaType};
use crate::platform::Arch;
use crate::registry::push::{LocalBlob, LocalManifest, PushOutcome, Pusher, TagChange};
use crate::registry::transport::Transport;
use crate::registry::{auth, parse_base, reference, BaseRef, RegistryError};
use crate::release;
use crate::report::Reporter;
use crate::settings::Settings;

pub struct PushOptions {
    pub build: BuildOptions,
    pub force: bool,
    /// Release versions the version policy has findings against.
    pub allow_unsafe_versions: bool,
    pub format: ManifestFormat,
    /// Write the release report and attach it to the index (push-manifest, all-push).
    pub report: Option<report::ReportOptions>,
}

#[derive(Debug, Serialize)]
pub struct ImagePush {
    pub arch: String,
    pub platform: String,
    #[serde(flatten)]
    pub outcome: PushOutcome,
}

#[derive(Debug, Serialize)]
pub struct PushReport {
    pub registry: String,
    pub format: String,
    pub images: Vec<ImagePush>,
    pub index: Option<PushOutcome>,
    /// The release report: where it was written and how it was attached.
    pub report: Option<ReportRef>,
    /// Blob bytes sent over the whole run (retries included).
    pub bytes_uploaded: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ReportRef {
    pub written: report::Written,
    pub attached: Option<report::Attached>,
}

/// `registry/repository:tag` split the way the registry sees it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl Target {
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

fn target(image: &str) -> Result<Target> {
    let r = reference::parse(image).map_err(|message| RegistryError::BadReference {
        reference: image.into(),
        message,
    })?;
    Ok(Target {
        registry: r.resolve_registry().to_string(),
        repository: r.repository().to_string(),
        tag: r.tag().unwrap_or("latest").to_string(),
    })
}

pub(crate) fn index_target(settings: &Settings) -> Result<Target> {
    target(&format!(
        "{}/{}:{}",
        settings.push_registry,
        settings.image_name,
        settings.tag()
    ))
}

pub(crate) fn open_layout(dir: &std::path::Path) -> Result<Layout> {
    Layout::open(dir).map_err(|e| {
        anyhow::Error::new(e).context(crate::UserError::new(
            format!("no OCI layout at {}", dir.display()),
            "build the images first: etcdimg build --arch <arch> for each arch, or use all-push, which builds them",
        ))
    })
}

/// One per-arch image read from the layout, ready to push.
pub(crate) struct ArchImage {
    pub arch: Arch,
    pub target: Target,
    pub manifest: LocalManifest,
    pub config: Value,
    /// Repositories on the push registry that may already hold some of its blobs.
    pub mount_from: Vec<String>,
    /// The OCI manifest digest in the layout (the pushed one differs in Docker format).
    pub layout_digest: String,
    /// What each blob is (config, base, etcd V, migrate), for plans.
    pub contents: Vec<String>,
    /// The build record the build left in the layout, if any.
    pub record: Option<release::BuildRecord>,
}

/// The build record named by a layout entry's annotation, if it has one.
fn read_record(layout: &Layout, desc: &oci::Descriptor) -> Result<Option<release::BuildRecord>> {
    let Some(digest) = desc
        .annotations()
        .as_ref()
        .and_then(|a| a.get(release::BUILD_RECORD_ANNOTATION))
    else {
        return Ok(None);
    };
    let hex = digest.trim_start_matches("sha256:");
    if !layout.blob_path(hex).exists() {
        return Ok(None);
    }
    let bytes = layout.read_blob(hex)?;
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
        format!("parsing the build record {digest}")
    })?))
}

pub(crate) fn read_image(
    settings: &Settings,
    layout: &Layout,
    arch: Arch,
    format: ManifestFormat,
) -> Result<ArchImage> {
    let name = settings.layout_ref(arch);
    let desc = layout.resolve(Some(&name)).with_context(|| {
        format!("no image for {arch} in {}", layout.root().display())
    }).map_err(|e| {
        e.context(crate::UserError::new(
            format!("the OCI layout has no image `{name}`"),
            format!("build it first: etcdimg build --arch {arch} (or use all-push, which builds every arch)"),
        ))
    })?;
    let bytes = layout.read_blob(&oci::hex(&desc))?;
    let m: oci::ImageManifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing the manifest of `{name}`"))?;
    let config: Value = serde_json::from_slice(&layout.read_blob(&oci::hex(m.config()))?)
        .with_context(|| format!("parsing the config of `{name}`"))?;
    let mut blobs = vec![m.config().clone()];
    blobs.extend(m.layers().iter().cloned());
    let record = read_record(layout, &desc)?;
    let contents = blobs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i == 0 {
                return "config".to_string();
            }
            record
                .as_ref()
                .and_then(|r| {
                    r.provenance
                        .layers
                        .iter()
                        .find(|l| l.digest == d.digest().to_string())
                })
                .map_or_else(|| "layer".to_string(), |l| l.content.clone())
        })
        .collect();
    let blobs = blobs
        .iter()
        .map(|d| LocalBlob {
            digest: d.digest().to_string(),
            size: d.size(),
            path: layout.blob_path(&oci::hex(d)),
        })
        .collect();
    let (media_type, bytes) = match format {
        ManifestFormat::Oci => (index::OCI_MANIFEST.to_string(), bytes),
        ManifestFormat::Docker => (
            index::DOCKER_MANIFEST.to_string(),
            index::to_docker_manifest(&bytes)?,
        ),
    };
    let target = target(&settings.arch_image(&settings.push_registry, arch))?;
    // The base image's repository, when it lives on the push registry, holds the base layers.
    let mut mount_from = Vec::new();
    if let Ok(BaseRef::Registry(base)) = parse_base(settings.base_for(arch)) {
        if base.resolve_registry() == target.registry && base.repository() != target.repository {
            mount_from.push(base.repository().to_string());
        }
    }
    Ok(ArchImage {
        arch,
        target,
        manifest: LocalManifest {
            digest: format!("sha256:{}", sha256_hex(&bytes)),
            media_type,
            bytes,
            blobs,
        },
        config,
        mount_from,
        layout_digest: desc.digest().to_string(),
        contents,
        record,
    })
}

pub(crate) fn pusher(
    settings: &Settings,
    registry: &str,
    reporter: Arc<dyn Reporter>,
) -> Result<Pusher> {
    let insecure = settings.is_insecure(registry);
    let credential = auth::lookup(registry)?;
    let transport = Transport::new(
        registry,
        insecure,
        settings.ca_cert.as_deref(),
        credential,
        reporter,
    )?;
    Ok(Pusher::new(Arc::new(transport)))
}

/// Refuses a release of versions the version policy has findings against, unless the user
/// allowed it (`--allow-unsafe-versions`); an allowed one is said on stderr (and recorded in the
/// release report).
pub fn check_policy(
    settings: &Settings,
    options: &PushOptions,
    reporter: &dyn Reporter,
) -> Result<()> {
    let findings = settings.policy_findings();
    if findings.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    if options.allow_unsafe_versions {
        for t in &text {
            reporter.warn(&format!(
                "{t}; releasing it anyway (--allow-unsafe-versions)"
            ));
        }
        return Ok(());
    }
    anyhow::bail!(crate::UserError::new(
        format!(
            "refusing to release {}: {}; nothing was pushed",
            settings.tag(),
            text.join("; ")
        ),
        "pick versions the policy accepts (README, \"etcd version policy\"), or pass --allow-unsafe-versions (ETCDIMG_ALLOW_UNSAFE_VERSIONS=1) to release them anyway; the release report records them",
    ))
}

pub(crate) async fn build_all(
    settings: &Settings,
    arches: &[Arch],
    options: &PushOptions,
    cache: &Cache,
    reporter: &Arc<dyn Reporter>,
) -> Result<Vec<build::BuildReport>> {
    let pre = build::preflight(settings, arches, &options.build, &**reporter)?;
    let mut reports = Vec::new();
    for arch in arches {
        reports.push(
            build::build_checked(
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

/// Refuses, before anything is uploaded, a run that would move a tag without `--force`.
async fn precheck_tags(pusher: &Pusher, planned: &[(&Target, &str)], force: bool) -> Result<()> {
    for (t, digest) in planned {
        pusher
            .check_tag(&t.repository, &t.tag, digest, force)
            .await
            .context("nothing was pushed")?;
    }
    Ok(())
}

async fn push_images(pusher: &Pusher, images: &[ArchImage], force: bool) -> Result<Vec<ImagePush>> {
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

pub(crate) fn built_index(
    settings: &Settings,
    images: &[ArchImage],
    format: ManifestFormat,
) -> Result<index::BuiltIndex> {
    let entries: Vec<index::Entry> = images
        .iter()
        .map(|i| index::Entry {
            arch: i.arch,
            media_type: i.manifest.media_type.clone(),
            digest: i.manifest.digest.clone(),
            size: i.manifest.bytes.len() as u64,
            config: i.config.clone(),
        })
        .collect();
    let annotations = index::annotations(&settings.tag(), settings.source_date_epoch);
    index::build(format, &settings.arches, &entries, &annotations)
        .context("refusing to push an index that does not match images.toml")
}

/// Makes every per-arch manifest available in the index repository, then pushes the index.
async fn push_index(settings: &Settings, plan: &IndexPlan, force: bool) -> Result<PushOutcome> {
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
    check_policy(settings, options, &*reporter)?;
    build_all(settings, &[arch], options, cache, &reporter).await?;
    let layout = Layout::open(&options.build.output)?;
    let image = read_image(settings, &layout, arch, options.format)?;
    let pusher = pusher(settings, &image.target.registry, reporter)?;
    let images = push_images(&pusher, std::slice::from_ref(&image), options.force).await?;
    Ok(push_report(&pusher, options, images, None, None, started))
}

/// Everything an index push needs, read from the layout and checked.
pub(crate) struct IndexPlan {
    pub layout: Layout,
    pub images: Vec<ArchImage>,
    pub built: index::BuiltIndex,
    pub target: Target,
    pub pusher: Pusher,
}

pub(crate) fn plan_index(
    settings: &Settings,
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<IndexPlan> {
    let layout = open_layout(&options.build.output)?;
    let images = settings
        .arches
        .iter()
        .map(|a| read_image(settings, &layout, *a, options.format))
        .collect::<Result<Vec<_>>>()?;
    let built = built_index(settings, &images, options.format)?;
    let target = index_target(settings)?;
    let pusher = pusher(settings, &target.registry, reporter)?;
    Ok(IndexPlan {
        layout,
        images,
        built,
        target,
        pusher,
    })
}

/// `etcdimg push-manifest`: the index over per-arch images already pushed.
pub async fn push_manifest(
    settings: &Settings,
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport> {
    let started = Instant::now();
    check_policy(settings, options, &*reporter)?;
    let p = plan_index(settings, options, reporter)?;
    let assembled = check_report(settings, &p, options)?;
    let outcome = push_index(settings, &p, options.force).await?;
    let report = attach_report(settings, &p, options, assembled).await?;
    Ok(push_report(
        &p.pusher,
        options,
        Vec::new(),
        Some(outcome),
        report,
        started,
    ))
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
    check_policy(settings, options, &*reporter)?;
    build_all(settings, &settings.arches, options, cache, &reporter).await?;
    let p = plan_index(settings, options, reporter)?;
    let mut planned: Vec<(&Target, &str)> = p
        .images
        .iter()
        .map(|i| (&i.target, i.manifest.digest.as_str()))
        .collect();
    planned.push((&p.target, p.built.digest.as_str()));
    let assembled = check_report(settings, &p, options)?;
    precheck_tags(&p.pusher, &planned, options.force).await?;
    let pushed = push_images(&p.pusher, &p.images, options.force).await?;
    let outcome = push_index(settings, &p, options.force).await?;
    let report = attach_report(settings, &p, options, assembled).await?;
    Ok(push_report(
        &p.pusher,
        options,
        pushed,
        Some(outcome),
        report,
        started,
    ))
}

/// Before anything is pushed: the release report can be assembled (every image has a build
/// record that matches it), so a run never stops between the index and its report.
fn check_report(
    settings: &Settings,
    plan: &IndexPlan,
    options: &PushOptions,
) -> Result<Option<release::ReleaseReport>> {
    if options.report.is_none() {
        return Ok(None);
    }
    Ok(Some(
        report::assemble(settings, plan).context("nothing was pushed")?,
    ))
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
