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
use crate::publish::attach::attach;
pub use crate::publish::attach::Attached;
use crate::publish::layout::{IndexPlan, ReportOptions};
use crate::publish::report::{artifact, assemble};
use crate::release::{ArtifactBlob, ReleaseReport};
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
