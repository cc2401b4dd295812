//! `etcdimg build --arch A` and `etcdimg all-build`: settings in, [`crate::pipeline`] per
//! arch, reports out. The stages live in `src/pipeline/`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::fetch::cache::Cache;
use crate::oci;
use crate::pipeline::{
    build_checked, display_path, preflight, write_index, BuildOptions, BuildReport, Preflight,
};
use crate::platform::Arch;
use crate::report::Reporter;
use crate::settings::Settings;

/// Says on stderr what the version policy has against the release's versions.
pub fn warn_policy(settings: &Settings, reporter: &dyn Reporter) {
    for f in settings.policy_findings() {
        reporter.warn(&format!(
            "{f}; push and plan refuse to release it without --allow-unsafe-versions"
        ));
    }
}

/// What the Go policy has against the binaries of built images (their build info), as
/// warnings: the build verbs go on, the release verbs refuse (`publish::gates::check_go_policy`).
pub fn warn_go_policy(settings: &Settings, images: &[BuildReport], reporter: &dyn Reporter) {
    let groups = crate::gopolicy::findings(
        &settings.go_policy,
        images
            .iter()
            .map(|i| (i.arch.as_str(), i.binaries.as_slice())),
    );
    for g in groups {
        reporter.warn(&format!(
            "{g}; push and plan refuse to release it ({})",
            crate::gopolicy::HINT
        ));
    }
}

/// `etcdimg build --arch A`: [`preflight`], then [`build_checked`].
pub async fn build(
    settings: &Settings,
    arch: Arch,
    options: &BuildOptions,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<BuildReport> {
    warn_policy(settings, &*reporter);
    let pre = preflight(settings, &[arch], options)?;
    let report = build_checked(settings, arch, options, &pre, cache, reporter.clone()).await?;
    warn_go_policy(settings, std::slice::from_ref(&report), &*reporter);
    Ok(report)
}

#[derive(Debug, Clone, Serialize)]
pub struct AllBuildReport {
    pub layout: String,
    /// The layout ref of the index: the plain tag.
    pub reference: String,
    pub index_digest: String,
    pub platforms: Vec<String>,
    pub images: Vec<BuildReport>,
    /// `go build` runs over all arches (0 when everything came from the build cache).
    pub compiled: usize,
    pub seconds: f64,
}

/// `etcdimg all-build`: [`preflight`] for every arch, each arch through [`build_checked`]
/// into one layout, then the index over them under the plain tag.
pub async fn all_build(
    settings: &Settings,
    options: &BuildOptions,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<AllBuildReport> {
    let started = Instant::now();
    warn_policy(settings, &*reporter);
    let pre = preflight(settings, &settings.arches, options)?;
    let images = build_each(settings, options, &pre, cache, &reporter).await?;
    warn_go_policy(settings, &images, &*reporter);
    let (tag, built) = write_index(settings, options, &images, &*reporter)?;
    Ok(AllBuildReport {
        layout: display_path(&options.output),
        reference: tag,
        index_digest: built.digest,
        platforms: settings
            .arches
            .iter()
            .map(|a| oci::platform_string(&oci::platform_for(*a)))
            .collect(),
        compiled: images
            .iter()
            .flat_map(|r| &r.compiles)
            .filter(|c| c.compiled)
            .count(),
        images,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every arch's image, one after another (each build already uses every core: parallel
/// compression, or `go build`); the first failure stops the run, naming the arch.
async fn build_each(
    settings: &Settings,
    options: &BuildOptions,
    pre: &Preflight,
    cache: &Cache,
    reporter: &Arc<dyn Reporter>,
) -> Result<Vec<BuildReport>> {
    let mut images = Vec::new();
    let n = settings.arches.len();
    for (i, arch) in settings.arches.iter().enumerate() {
        reporter.status(
            "Building",
            &format!("[{}/{n}] {arch} ({:?})", i + 1, settings.source_for(*arch)).to_lowercase(),
        );
        let report = build_checked(settings, *arch, options, pre, cache, reporter.clone())
            .await
            .with_context(|| format!("building the {arch} image ({}/{n})", i + 1))?;
        images.push(report);
    }
    Ok(images)
}
