//! One arch's image, from resolved settings to an OCI layout: the build pipeline below the
//! `build`, `all-build`, `push` and `plan` verbs. [`build_checked`] reads as its list of
//! stages; each stage is a function with a typed result and a doc comment saying what it
//! guarantees to the next:
//!
//! | stage | function (file) |
//! |---|---|
//! | 0 preflight | [`preflight`] (`inputs.rs`), once per run |
//! | 1 base | `pull_base` (`inputs.rs`) |
//! | 2 fetch or compile | `obtain_etcd` (`etcd.rs`) |
//! | 3 verify | `etcd_layers` (`etcd.rs`) |
//! | 4 migrate | `migrate_layer` (`inputs.rs`) |
//! | 5 compress | `compress` (`layers.rs`) |
//! | 6 assemble | `assemble` (`assembly.rs`) |
//! | 7 write | `write_layout` (`layout.rs`) |
//! | 8 archive | `write_docker_archive` (`layout.rs`) |
//!
//! `context.rs` holds the types every stage takes (arrows point from the stage files to it).
//! A new stage goes into the file of its group, with its guarantee, and one line here.

mod assembly;
mod context;
mod etcd;
mod inputs;
mod layers;
mod layout;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::fetch::cache::Cache;
use crate::gobuild;
use crate::oci::{self};
use crate::platform::Arch;
use crate::report::Reporter;
use crate::settings::Settings;

pub(crate) use context::display_path;
pub use context::{BuildOptions, BuildPlan, BuildReport, LayerReport, TarballReport};
pub(crate) use etcd::{check_binaries, compile};
pub use inputs::{preflight, Preflight};
pub use layout::write_index;

use assembly::*;
use etcd::*;
use inputs::*;
use layers::*;
use layout::*;

/// One arch's image, after [`preflight`] checked its inputs: the pipeline, stage by stage.
pub async fn build_checked(
    settings: &Settings,
    arch: Arch,
    options: &BuildOptions,
    pre: &Preflight,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<BuildReport> {
    let started = Instant::now();
    let plan = BuildPlan {
        settings,
        arch,
        options,
        cache,
        reporter,
        mode: settings.binary_mode,
        mtime: settings.source_date_epoch,
        source: settings.source_for(arch),
    };
    let base = pull_base(&plan).await?;
    let etcd = obtain_etcd(&plan, pre).await?;
    let tarballs = etcd.tarball_reports();
    let compiles: Vec<gobuild::CompileReport> =
        etcd.compiled.iter().map(|c| c.report.clone()).collect();
    let mut layers = etcd_layers(&plan, etcd).await?;
    let (migrate_sha256, migrate_source_sha256) = migrate_layer(&plan, &mut layers).await?;
    let layers = compress(&plan, layers)?;
    let image = assemble(&plan, &base, &layers)?;
    let written = write_layout(
        &plan,
        &base,
        &layers,
        &image,
        &Inputs {
            tarballs: &tarballs,
            compiles: &compiles,
            migrate_sha256: &migrate_sha256,
            migrate_source_sha256: &migrate_source_sha256,
        },
    )?;
    write_docker_archive(&plan, &image, &written)?;
    Ok(BuildReport {
        arch: arch.to_string(),
        platform: oci::platform_string(&oci::platform_for(arch)),
        layout: display_path(&options.output),
        reference: written.reference,
        image: settings.arch_image(&settings.registry, arch),
        manifest_digest: format!("sha256:{}", image.manifest_digest),
        manifest_size: image.manifest.len() as u64,
        config_digest: format!("sha256:{}", image.config_digest),
        base: base.name.clone(),
        base_digest: format!("sha256:{}", base.manifest_digest),
        total_size: written.layers.iter().map(|l| l.size).sum::<u64>()
            + image.config.len() as u64
            + image.manifest.len() as u64,
        layers: written.layers,
        tarballs,
        compiles,
        binaries: all_binaries(&layers),
        docker_archive: options.docker_archive.as_deref().map(display_path),
        seconds: started.elapsed().as_secs_f64(),
    })
}
