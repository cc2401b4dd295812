//! Per-arch jobs merged natively: the OCI layouts that separate jobs (or machines) built, each
//! with some of the arches, copied into one layout that `push-manifest`, `plan`, `report` and
//! `sign` then use. Replaces the `jq` step release.yml had.
//!
//! Refuses, naming the layout: an image for another tag or revision than images.toml's, an
//! arch that is not in images.toml, an arch found twice with different images, an image
//! whose config says another platform than its arch, one without its build record, and an
//! arch of images.toml that no layout holds. Nothing is written to the output before every
//! check passed; blobs are copied content-addressed, refs last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::oci::layout::Layout;
use crate::oci::{self};
use crate::platform::Arch;
use crate::release::BUILD_RECORD_ANNOTATION;
use crate::report::Reporter;
use crate::settings::Settings;

/// One arch's image as merged.
#[derive(Debug, Clone, Serialize)]
pub struct MergedImage {
    pub arch: String,
    pub reference: String,
    pub digest: String,
    /// The layout it came from.
    pub from: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub output: String,
    pub images: Vec<MergedImage>,
    pub blobs_copied: usize,
}

struct Found {
    layout: PathBuf,
    desc: oci_spec::image::Descriptor,
    blobs: Vec<(String, u64)>,
}

fn refuse(what: String, hint: &str) -> anyhow::Error {
    anyhow::Error::new(crate::UserError::new(what, hint))
}

/// Reads every per-arch image of `from` and checks it; see the module doc.
fn collect(settings: &Settings, from: &[PathBuf]) -> Result<BTreeMap<Arch, Found>> {
    let mut found: BTreeMap<Arch, Found> = BTreeMap::new();
    for dir in from {
        let layout =
            Layout::open(dir).with_context(|| format!("opening the layout {}", dir.display()))?;
        for desc in layout.read_index()?.manifests() {
            if let Some((arch, image)) = inspect(settings, &found, &layout, dir, desc)? {
                found.insert(arch, image);
            }
        }
    }
    let missing: Vec<String> = settings
        .arches
        .iter()
        .filter(|a| !found.contains_key(a))
        .map(|a| a.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(refuse(
            format!(
                "no layout holds the {} image of {} ({})",
                missing.join(", "),
                settings.tag(),
                from.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "every arch of image.arches must come from one of the --from layouts",
        ));
    }
    Ok(found)
}

/// The image's config names `arch`'s platform: os/architecture, and the variant where the
/// config names one.
fn check_platform(
    layout: &Layout,
    manifest: &oci::ImageManifest,
    arch: Arch,
    at: &dyn Fn() -> String,
) -> Result<()> {
    let config: Value = serde_json::from_slice(&layout.read_blob(&oci::hex(manifest.config()))?)?;
    let (have, want) = (
        oci::index::config_platform(&config),
        oci::platform_for(arch),
    );
    let same = have.os() == want.os()
        && have.architecture() == want.architecture()
        && (have.variant().is_none() || have.variant() == want.variant());
    if !same {
        let (platform, expected) = (oci::platform_string(&have), oci::platform_string(&want));
        return Err(refuse(
            format!("{}: its config says {platform}, not {expected}", at()),
            "rebuild that arch with etcdimg build --arch",
        ));
    }
    Ok(())
}

/// Every blob of the image (manifest, config, layers, build record), each present and whole.
fn image_blobs(
    layout: &Layout,
    desc: &oci_spec::image::Descriptor,
    manifest: &oci::ImageManifest,
    record: &str,
    at: &dyn Fn() -> String,
) -> Result<Vec<(String, u64)>> {
    let mut blobs = vec![
        (oci::hex(desc), desc.size()),
        (oci::hex(manifest.config()), manifest.config().size()),
    ];
    blobs.extend(manifest.layers().iter().map(|l| (oci::hex(l), l.size())));
    let record_hex = record.trim_start_matches("sha256:").to_string();
    let record_size = layout.read_blob(&record_hex)?.len() as u64;
    blobs.push((record_hex, record_size));
    for (hex, size) in &blobs {
        if !layout.has_blob(hex, *size) {
            return Err(refuse(
                format!("{}: blob sha256:{hex} is missing or damaged", at()),
                "copy the whole layout directory from the job that built it",
            ));
        }
    }
    Ok(blobs)
}

/// One entry of a layout's index: None when it is not a per-arch image (no ref name, or the
/// plain tag of an all-build index, which push-manifest rebuilds from the images) or the same
/// image as one already `found`; else its arch and blobs, once its tag, arch, platform, build
/// record and every blob checked out.
fn inspect(
    settings: &Settings,
    found: &BTreeMap<Arch, Found>,
    layout: &Layout,
    dir: &Path,
    desc: &oci_spec::image::Descriptor,
) -> Result<Option<(Arch, Found)>> {
    let annotation = |key: &str| {
        desc.annotations()
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    let Some(name) = annotation(oci::layout::REF_NAME) else {
        return Ok(None);
    };
    // Per-arch images are `<tag>-linux-<arch>`.
    let Some((tag, arch)) = name.rsplit_once("-linux-") else {
        return Ok(None);
    };
    let at = || format!("{} in {}", name, dir.display());
    let arch: Arch = arch.parse().map_err(|_| {
        refuse(
            format!("{}: `{arch}` is not an image arch", at()),
            "build it with etcdimg build --arch <arch>",
        )
    })?;
    if tag != settings.tag() {
        return Err(refuse(
            format!(
                "{} was built for {tag}, but images.toml releases {}",
                at(),
                settings.tag()
            ),
            "merge layouts of one release: the same etcd.latest and etcd.revision in every job",
        ));
    }
    if !settings.arches.contains(&arch) {
        return Err(refuse(
            format!(
                "{} is for {arch}, which images.toml's image.arches does not name",
                at()
            ),
            "add the arch to image.arches, or leave that layout out",
        ));
    }
    let bytes = layout.read_blob(&oci::hex(desc))?;
    let manifest: oci::ImageManifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing the manifest of {}", at()))?;
    check_platform(layout, &manifest, arch, &at)?;
    let record = annotation(BUILD_RECORD_ANNOTATION).ok_or_else(|| {
        refuse(
            format!("{} has no build record", at()),
            "rebuild it with this etcdimg; a layout copied by hand must keep index.json's annotations",
        )
    })?;
    if let Some(prev) = found.get(&arch) {
        if prev.desc.digest() != desc.digest() {
            return Err(refuse(
                format!(
                    "{arch} is in two layouts with different images: {} ({}) and {} ({})",
                    prev.layout.display(),
                    prev.desc.digest(),
                    dir.display(),
                    desc.digest()
                ),
                "each arch must come from exactly one job",
            ));
        }
        return Ok(None);
    }
    let blobs = image_blobs(layout, desc, &manifest, &record, &at)?;
    let image = Found {
        layout: dir.to_path_buf(),
        desc: desc.clone(),
        blobs,
    };
    Ok(Some((arch, image)))
}

/// Merges the per-arch images of `from` into the layout at `output`.
pub fn merge(
    settings: &Settings,
    from: &[PathBuf],
    output: &Path,
    reporter: &dyn Reporter,
) -> Result<MergeReport> {
    let found = collect(settings, from)?;
    let out = Layout::create(output)?;
    let mut copied = 0;
    for f in found.values() {
        let src = Layout::open(&f.layout)?;
        for (hex, size) in &f.blobs {
            if !out.has_blob(hex, *size) {
                out.put_blob_file(&src.blob_path(hex), hex, *size)?;
                copied += 1;
            }
        }
    }
    let mut images = Vec::new();
    for (arch, f) in &found {
        let name = settings.layout_ref(*arch);
        out.set_ref(&name, f.desc.clone(), &|m| reporter.status("Waiting", m))?;
        reporter.status("Merged", &format!("{name} from {}", f.layout.display()));
        images.push(MergedImage {
            arch: arch.to_string(),
            reference: name,
            digest: f.desc.digest().to_string(),
            from: f.layout.display().to_string(),
        });
    }
    Ok(MergeReport {
        output: output.display().to_string(),
        images,
        blobs_copied: copied,
    })
}
