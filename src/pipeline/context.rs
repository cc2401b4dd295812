//! What every stage of a build takes and what a build reports: the options of the verbs, the
//! plan one arch's build works from (resolved once, so no stage looks up a setting), and the
//! report. Types only; the stages are in the sibling files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::fetch::cache::Cache;
use crate::gobuild;
use crate::platform::Arch;
use crate::registry::Session;
use crate::report::Reporter;
use crate::settings::Settings;

pub struct BuildOptions {
    pub output: PathBuf,
    pub docker_archive: Option<PathBuf>,
    pub migrate_binary: Option<PathBuf>,
    pub jobs: usize,
    /// The run's registry connections (base pulls; pushes share them).
    pub registry: Arc<Session>,
    /// Reuse cached layers whose inputs match (off with --no-layer-cache).
    pub reuse_layers: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub digest: String,
    pub size: u64,
    pub content: String,
    /// True when the layer came from the cache (nothing compressed).
    pub cached: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub arch: String,
    pub platform: String,
    pub layout: String,
    pub reference: String,
    pub image: String,
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub base: String,
    pub base_digest: String,
    pub layers: Vec<LayerReport>,
    pub total_size: u64,
    pub tarballs: Vec<TarballReport>,
    /// Versions compiled from source (or taken from the build cache) for this arch.
    pub compiles: Vec<gobuild::CompileReport>,
    /// Every executable the build added, with its Go build info.
    pub binaries: Vec<crate::release::ImageBinary>,
    pub docker_archive: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TarballReport {
    pub version: String,
    pub url: String,
    pub sha256: String,
    /// sha256 of the SHA256SUMS it was checked against.
    pub sums_sha256: String,
    /// True when this run downloaded it (false: from the cache).
    pub downloaded: bool,
}

/// What one arch's build works from, resolved once; every stage takes it.
pub struct BuildPlan<'a> {
    pub settings: &'a Settings,
    pub arch: Arch,
    pub options: &'a BuildOptions,
    pub cache: &'a Cache,
    pub reporter: Arc<dyn Reporter>,
    /// `binary_mode` and the mtime of every file (SOURCE_DATE_EPOCH or 0).
    pub mode: u32,
    pub mtime: u64,
    /// Where the arch's etcd comes from: release tarballs, or compiled (a tree or modules).
    pub source: crate::config::Source,
}

pub(crate) fn display_path(p: &Path) -> String {
    p.display().to_string()
}
