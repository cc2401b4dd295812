//! The release as the OCI layout holds it: each arch's image read back and checked, the
//! index over them, and where each goes; and the options of a push. What `push`, `report`
//! and `plan` share, so that those verbs depend on this module and never on each other.
//!
//! Reads the layout and the docker config; never writes, and never talks to a registry
//! (a [`Pusher`] is made here, but used by the callers).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::fetch::cache::sha256_hex;
use crate::oci;
use crate::oci::index::{self, ManifestFormat};
use crate::oci::layout::Layout;
use crate::pipeline::BuildOptions;
use crate::platform::Arch;
use crate::registry::push::{LocalBlob, LocalManifest, Pusher};
use crate::registry::{parse_base, reference, BaseRef, RegistryError};
use crate::release;
use crate::settings::Settings;

/// How `push-manifest`, `all-push` and `report` write the release report.
pub struct ReportOptions {
    /// Directory for release-<tag>.json (and .spdx.json).
    pub dir: PathBuf,
    pub spdx: bool,
}

pub struct PushOptions {
    pub build: BuildOptions,
    pub force: bool,
    /// Release versions the version policy has findings against.
    pub allow_unsafe_versions: bool,
    /// Release binaries built with a Go the Go policy has findings against.
    pub allow_unsupported_go: bool,
    /// Scan the images before release (`--vulndb`); the scan goes into the release report.
    pub scan: Option<crate::scan::Scanner>,
    /// Release binaries that call vulnerable code.
    pub allow_called_vulns: bool,
    /// Sign and attest the release after pushing it (push-manifest, all-push).
    pub sign: Option<crate::commands::sign::SignOptions>,
    pub format: ManifestFormat,
    /// Write the release report and attach it to the index (push-manifest, all-push).
    pub report: Option<ReportOptions>,
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

pub(crate) fn target(image: &str) -> Result<Target> {
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
pub(crate) fn read_record(
    layout: &Layout,
    desc: &oci::Descriptor,
) -> Result<Option<release::BuildRecord>> {
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

/// A pusher to `registry` over the run's session (its transport shared with base pulls).
pub(crate) fn pusher(options: &PushOptions, registry: &str) -> Result<Pusher> {
    Ok(Pusher::new(options.build.registry.transport(registry)?))
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

/// Everything an index push needs, read from the layout and checked.
pub(crate) struct IndexPlan {
    pub layout: Layout,
    pub images: Vec<ArchImage>,
    pub built: index::BuiltIndex,
    pub target: Target,
    pub pusher: Pusher,
}

pub(crate) fn plan_index(settings: &Settings, options: &PushOptions) -> Result<IndexPlan> {
    let layout = open_layout(&options.build.output)?;
    let images = settings
        .arches
        .iter()
        .map(|a| read_image(settings, &layout, *a, options.format))
        .collect::<Result<Vec<_>>>()?;
    let built = built_index(settings, &images, options.format)?;
    let target = index_target(settings)?;
    let pusher = pusher(options, &target.registry)?;
    Ok(IndexPlan {
        layout,
        images,
        built,
        target,
        pusher,
    })
}
