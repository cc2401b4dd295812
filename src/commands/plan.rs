//! `etcdimg plan`: what a push would do, found out without writing to the registry.
//!
//! 1. local: build every arch (or, with `--no-build`, read the layout); a warm build is a cache
//!    hit, so the digests computed here are the digests `all-push` sends. What the build had
//!    to download or compile is reported (it is cached now; the push will not redo it).
//! 2. tags: HEAD each tag the push would write: created, unchanged, or moved (old -> new).
//! 3. blobs: for each image whose tag is not unchanged, HEAD each blob in the target
//!    repository (skip), then in the repositories it could be mounted from (mount), else
//!    upload; a blob an earlier image of the same run uploads counts once.
//! 4. index and report: the index tag, the per-arch copies under legacy naming, and whether
//!    the release report artifact is already attached.
//!
//! Only HEAD and GET requests, with `pull` scopes: a plan runs with read-only credentials.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::push;
use crate::fetch::cache::Cache;
use crate::platform::Arch;
use crate::publish::layout::{self as index_plan, PushOptions};
use crate::publish::plan::*;
pub use crate::publish::plan::{render, Plan};
use crate::registry::push::Pusher;
use crate::report::Reporter;
use crate::settings::Settings;

pub struct PlanOptions {
    pub push: PushOptions,
    /// Build first (default); false reads the images already in the layout.
    pub build: bool,
    /// One arch's push (`push --arch A`) instead of `all-push`.
    pub arch: Option<Arch>,
    /// Plan the release report's attach too (absent with `--no-report`). A plan writes no
    /// report, so only the report's form matters here, not its directory.
    pub report: Option<ReportScope>,
}

/// Which release report the push would attach.
pub struct ReportScope {
    /// With the SPDX document (`--spdx`).
    pub spdx: bool,
}

/// For the index and each per-arch manifest: is it signed (and the index attested) now?
async fn signature_plan(
    pusher: &crate::registry::push::Pusher,
    p: &crate::publish::layout::IndexPlan,
) -> Result<Vec<crate::publish::plan::SignaturePlan>> {
    let repo = &p.target.repository;
    let mut out = Vec::new();
    for (digest, what) in super::sign::subjects(p) {
        let has = |suffix: &'static str| {
            let tag = crate::sign::tag(&digest, suffix);
            async move {
                pusher
                    .manifest_digest(repo, &tag)
                    .await
                    .map(|d| d.is_some())
            }
        };
        let signed = has("sig").await?;
        let attested = if what == "index" {
            Some(has("att").await?)
        } else {
            None
        };
        out.push(crate::publish::plan::SignaturePlan {
            what,
            digest,
            signed,
            attested,
        });
    }
    Ok(out)
}

/// `etcdimg plan`.
pub async fn plan(
    settings: &Settings,
    options: &PlanOptions,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<Plan> {
    crate::publish::gates::check_policy(settings, &options.push, &*reporter)?;
    let arches = match options.arch {
        Some(a) => vec![a],
        None => settings.arches.clone(),
    };
    // 1. local
    let reports = if options.build {
        push::build_all(settings, &arches, &options.push, cache, &reporter).await?
    } else {
        Vec::new()
    };
    let local = local_work(&reports);
    let mut known = Known::default();
    let mut plan = Plan {
        registry: String::new(),
        format: options.push.format.to_string(),
        local,
        images: Vec::new(),
        copies: Vec::new(),
        index: None,
        report: None,
        signatures: Vec::new(),
        summary: Summary::default(),
    };
    if let Some(arch) = options.arch {
        let layout = index_plan::open_layout(&options.push.build.output)?;
        let img = index_plan::read_image(settings, &layout, arch, options.push.format)?;
        crate::publish::gates::check_go_policy(settings, &options.push, [&img], &*reporter)?;
        let pusher = read_only(&options.push, &img.target.registry)?;
        plan.registry = img.target.registry.clone();
        // 2 + 3.
        plan.images
            .push(image_plan(&pusher, &img, options.push.force, &mut known).await?);
        summarise(&mut plan);
        return Ok(plan);
    }
    let p = index_plan::plan_index(settings, &options.push)?;
    crate::publish::gates::check_go_policy(settings, &options.push, &p.images, &*reporter)?;
    let pusher = Pusher::read_only(p.pusher.transport.clone());
    plan.registry = p.target.registry.clone();
    for img in &p.images {
        plan.images
            .push(image_plan(&pusher, img, options.push.force, &mut known).await?);
    }
    // 4.
    for img in &p.images {
        if let Some(c) = copy_plan(&pusher, &p.target, img, &mut known).await? {
            plan.copies.push(c);
        }
    }
    let tag = pusher
        .check_tag(&p.target.repository, &p.target.tag, &p.built.digest, true)
        .await
        .with_context(|| format!("looking up {}", p.target.reference()))?;
    plan.index = Some(ManifestPlan {
        reference: p.target.reference(),
        digest: p.built.digest.clone(),
        refused: refused(&tag, options.push.force),
        tag,
        blobs: Vec::new(),
    });
    if let Some(scope) = &options.report {
        plan.report = Some(report_plan(settings, &p, &pusher, scope.spdx, &mut known).await?);
    }
    plan.signatures = signature_plan(&pusher, &p).await?;
    summarise(&mut plan);
    Ok(plan)
}
