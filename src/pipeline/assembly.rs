//! Stage 6, assemble: the image config (the base's, plus env and labels) and manifest as
//! canonical JSON, and the build record (where every input came from; the release report's
//! input).
//!
//! Guarantees: the same inputs give the same bytes (canonical JSON, no timestamps but
//! SOURCE_DATE_EPOCH); digests are computed here, once.

use std::collections::BTreeMap;

use anyhow::Result;

use super::layers::BuiltLayer;
use crate::gobuild;
use crate::oci::image::{self, AddedLayer, ImageSpec};
use crate::oci::{self, gzip};
use crate::platform::Arch;
use crate::registry::{self};
use crate::release;

use super::context::*;

/// The label (and annotation) that records the Go of every Go binary in the image.
pub(crate) const GO_LABEL: &str = "dev.etcdimg.go";

/// `etcd-3.6.17=go1.27.3,etcdctl-3.6.17=go1.27.3,...`: each Go binary by its versioned name
/// (the default `etcd`/`etcdctl` are links to those), sorted; None without Go binaries.
fn go_label(layers: &[BuiltLayer]) -> Option<String> {
    let mut pairs: Vec<String> = all_binaries(layers)
        .iter()
        .filter_map(|b| {
            let go = b.go.as_ref()?;
            let path = b
                .links
                .iter()
                .chain(std::iter::once(&b.path))
                .find(|p| p.rsplit('/').next().is_some_and(|n| n.contains('-')))
                .unwrap_or(&b.path);
            let name = path.rsplit('/').next().unwrap_or(path);
            Some(format!(
                "{name}={}",
                go.go_version.split_whitespace().next().unwrap_or("")
            ))
        })
        .collect();
    pairs.sort();
    (!pairs.is_empty()).then(|| pairs.join(","))
}

/// Stage 6, assemble: the image config (the base's, plus env and labels) and manifest, as
/// canonical JSON.
pub(crate) fn assemble(
    plan: &BuildPlan<'_>,
    base: &registry::BaseImage,
    layers: &[BuiltLayer],
) -> Result<image::BuiltImage> {
    let (settings, arch) = (plan.settings, plan.arch);
    let created = image::rfc3339(plan.mtime);
    let bundled: Vec<String> = settings.bundled.iter().map(|v| v.to_string()).collect();
    let labels: BTreeMap<String, String> = [
        ("org.opencontainers.image.title", "etcd".to_string()),
        ("org.opencontainers.image.version", settings.tag()),
        ("org.opencontainers.image.created", created.clone()),
        ("org.opencontainers.image.base.name", base.name.clone()),
        (
            "org.opencontainers.image.base.digest",
            format!("sha256:{}", base.manifest_digest),
        ),
        ("dev.etcdimg.etcd.version", settings.latest.to_string()),
        ("dev.etcdimg.etcd.bundled", bundled.join(",")),
        ("dev.etcdimg.revision", settings.revision.clone()),
        ("dev.etcdimg.compression", gzip::description()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(go_label(layers).map(|v| (GO_LABEL.to_string(), v)))
    .collect();
    let mut env = Vec::new();
    if arch != Arch::Amd64 {
        // As the Makefile did for every non-amd64 arch: etcd refuses to start on arches it
        // calls unsupported unless this is set.
        env.push(("ETCD_UNSUPPORTED_ARCH".to_string(), arch.name().to_string()));
    }
    let spec = ImageSpec {
        base_config: base.config.clone(),
        base_layers: base
            .layers
            .iter()
            .map(|l| {
                let mut d = l.descriptor.clone();
                d.set_media_type(oci::oci_layer_media_type(d.media_type()));
                d.set_annotations(None);
                d.set_urls(None);
                d
            })
            .collect(),
        added: layers
            .iter()
            .map(|l| AddedLayer {
                digests: l.digests.clone(),
                created_by: format!("etcdimg: {}", l.content),
            })
            .collect(),
        arch,
        env,
        labels: labels.clone(),
        annotations: labels,
        exposed_ports: vec![2379, 2380, 4001, 7001],
        created,
    };
    Ok(image::build(&spec)?)
}

/// Where the etcd and migrate of an image came from (stages 2-4), for its build record.
#[derive(Clone, Copy)]
pub(crate) struct Inputs<'a> {
    pub(crate) tarballs: &'a [TarballReport],
    pub(crate) compiles: &'a [gobuild::CompileReport],
    pub(crate) migrate_sha256: &'a str,
    pub(crate) migrate_source_sha256: &'a str,
}

/// Every executable of the image's added layers, in image order.
pub(crate) fn all_binaries(layers: &[BuiltLayer]) -> Vec<release::ImageBinary> {
    layers.iter().flat_map(|l| l.binaries.clone()).collect()
}

/// The build record of an image: where every input came from (the release report's input).
pub(crate) fn build_record(
    plan: &BuildPlan<'_>,
    base: &registry::BaseImage,
    built: &image::BuiltImage,
    inputs: &Inputs<'_>,
    layers: &[LayerReport],
    built_layers: &[BuiltLayer],
) -> release::BuildRecord {
    let Inputs {
        tarballs,
        compiles,
        migrate_sha256,
        migrate_source_sha256,
    } = *inputs;
    release::BuildRecord {
        arch: plan.arch.to_string(),
        manifest_digest: format!("sha256:{}", built.manifest_digest),
        config_digest: format!("sha256:{}", built.config_digest),
        provenance: release::Provenance {
            platform: oci::platform_string(&oci::platform_for(plan.arch)),
            base: release::Base {
                name: base.name.clone(),
                digest: format!("sha256:{}", base.manifest_digest),
            },
            upstream: tarballs
                .iter()
                .map(|t| release::Upstream {
                    version: t.version.clone(),
                    url: t.url.clone(),
                    sha256: t.sha256.clone(),
                    sha256sums: t.sums_sha256.clone(),
                })
                .collect(),
            compiles: compiles.iter().map(|c| c.build.clone()).collect(),
            migrate_sha256: migrate_sha256.to_string(),
            migrate_source_sha256: migrate_source_sha256.to_string(),
            binaries: all_binaries(built_layers),
            compression: gzip::description(),
            binary_mode: format!("{:o}", plan.mode),
            source_date_epoch: plan.mtime,
            layers: layers
                .iter()
                .map(|l| release::Layer {
                    digest: l.digest.clone(),
                    size: l.size,
                    content: l.content.clone(),
                })
                .collect(),
        },
    }
}
