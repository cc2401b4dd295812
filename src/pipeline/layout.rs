//! Stages 7 and 8: the image into the OCI layout (and a docker archive), and all-build's
//! index over every arch's image.
//!
//! Guarantees: every blob is in the layout before the ref that names it; index.json changes
//! only by rename under the layout's lock, so a failure leaves the layout as it was; the
//! archive is written to a temp file and renamed.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::layers::BuiltLayer;
use crate::oci::image::{self};
use crate::oci::layout::Layout;
use crate::oci::{self, docker_archive, MediaType};
use crate::registry::{self};
use crate::release;
use crate::report::Reporter;
use crate::settings::Settings;

use super::assembly::*;
use super::context::*;

/// What stage 7 wrote: the layout ref, and every layer with where it came from.
pub(crate) struct Written {
    pub(crate) reference: String,
    pub(crate) layers: Vec<LayerReport>,
    pub(crate) layout: Layout,
}

/// Stage 7, write: base and added layers, config and manifest into the output layout, then the
/// build record (the release report's input) as a blob, then the image's ref in index.json
/// (under the layout's lock) last, so a failure leaves the layout as it was.
pub(crate) fn write_layout(
    plan: &BuildPlan<'_>,
    base: &registry::BaseImage,
    layers: &[BuiltLayer],
    built: &image::BuiltImage,
    inputs: &Inputs<'_>,
) -> Result<Written> {
    let (settings, arch, output) = (plan.settings, plan.arch, &plan.options.output);
    let reference = settings.layout_ref(arch);
    plan.reporter
        .status("Writing", &format!("{reference} to {}", output.display()));
    let layout = Layout::create(output)?;
    for l in &base.layers {
        layout.put_blob_file(&l.path, &oci::hex(&l.descriptor), l.descriptor.size())?;
    }
    for l in layers {
        let d = &l.digests;
        layout.put_blob_file(&plan.cache.blob_path(&d.digest), &d.digest, d.size)?;
    }
    layout.put_blob_bytes(&built.config)?;
    layout.put_blob_bytes(&built.manifest)?;
    let mut reports: Vec<LayerReport> = base
        .layers
        .iter()
        .map(|l| LayerReport {
            digest: l.descriptor.digest().to_string(),
            size: l.descriptor.size(),
            content: format!("base {}", base.name),
            cached: true,
        })
        .collect();
    reports.extend(layers.iter().map(|l| LayerReport {
        digest: format!("sha256:{}", l.digests.digest),
        size: l.digests.size,
        content: l.content.clone(),
        cached: l.reused,
    }));
    let record = build_record(plan, base, built, inputs, &reports, layers);
    let record_hex = layout.put_blob_bytes(&oci::canonical_json(&record))?;
    let mut desc = oci::descriptor(
        MediaType::ImageManifest,
        &built.manifest_digest,
        built.manifest.len() as u64,
    );
    desc.set_platform(Some(oci::platform_for(arch)));
    desc.set_annotations(Some(
        [(
            release::BUILD_RECORD_ANNOTATION.to_string(),
            format!("sha256:{record_hex}"),
        )]
        .into(),
    ));
    let reporter = &plan.reporter;
    layout.set_ref(&reference, desc, &|m| reporter.status("Waiting", m))?;
    Ok(Written {
        reference,
        layers: reports,
        layout,
    })
}

/// Stage 8, docker archive (`--docker-archive`): the image as `docker load` reads it.
pub(crate) fn write_docker_archive(
    plan: &BuildPlan<'_>,
    built: &image::BuiltImage,
    written: &Written,
) -> Result<()> {
    let Some(archive) = &plan.options.docker_archive else {
        return Ok(());
    };
    let layer_paths: Vec<(String, PathBuf)> = built
        .layers
        .iter()
        .map(|d| (oci::hex(d), written.layout.blob_path(&oci::hex(d))))
        .collect();
    docker_archive::write(
        archive,
        &docker_archive::ArchiveImage {
            repo_tag: plan.settings.arch_image(&plan.settings.registry, plan.arch),
            config: &built.config,
            config_hex: &built.config_digest,
            layers: layer_paths
                .iter()
                .map(|(h, p)| (h.clone(), p.as_path()))
                .collect(),
        },
        plan.mtime,
    )
    .with_context(|| format!("writing the docker archive `{}`", archive.display()))
}

/// The OCI index over `images` (checked against image.arches and each config's platform),
/// its blob in the layout, and the plain tag pointing at it.
pub fn write_index(
    settings: &Settings,
    options: &BuildOptions,
    images: &[BuildReport],
    reporter: &dyn Reporter,
) -> Result<(String, oci::index::BuiltIndex)> {
    let layout = Layout::open(&options.output)?;
    let mut entries = Vec::new();
    for (arch, report) in settings.arches.iter().zip(images) {
        let config = layout.read_blob(report.config_digest.trim_start_matches("sha256:"))?;
        entries.push(oci::index::Entry {
            arch: *arch,
            media_type: oci::index::OCI_MANIFEST.into(),
            digest: report.manifest_digest.clone(),
            size: report.manifest_size,
            config: serde_json::from_slice(&config)?,
        });
    }
    let tag = settings.tag();
    let annotations = oci::index::annotations(&tag, settings.source_date_epoch);
    let built = oci::index::build(
        oci::index::ManifestFormat::Oci,
        &settings.arches,
        &entries,
        &annotations,
    )?;
    layout.put_blob_bytes(&built.bytes)?;
    layout.set_ref(
        &tag,
        oci::descriptor(
            MediaType::ImageIndex,
            built.digest.trim_start_matches("sha256:"),
            built.bytes.len() as u64,
        ),
        &|m| reporter.status("Waiting", m),
    )?;
    Ok((tag, built))
}
