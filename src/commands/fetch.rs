//! `etcdimg fetch --arch A --bin-dir DIR`: the etcd binaries of the bundled versions (or
//! `--versions`) from the arch's source (or `--source`), obtained exactly as a build obtains
//! them: release tarballs through the cache, verified against SHA256SUMS (and the pins); or
//! compiled from a source tree or the release's Go modules through the build cache. Each is
//! checked (ELF header, `--version` where it can run), then written to `DIR/etcd-<V>`,
//! `etcdctl-<V>`, `etcdutl-<V>`: the layout migrate's `--bin-dir` expects. The fixtures script
//! builds the test suite's etcd 3.5-3.7 with it (`--source module`); the GitHub job that runs
//! migrate's version matrix on official releases uses it with release tarballs.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use semver::Version;
use serde::Serialize;

use crate::config::Source;
use crate::fetch::{self, cache::Cache, extract, http::Http};
use crate::gobuild;
use crate::platform::Arch;
use crate::report::Reporter;
use crate::settings::Settings;

#[derive(Debug, Serialize)]
pub struct Fetched {
    pub version: String,
    /// `release`, `build` or `module`.
    pub source: String,
    /// The release tarball (release source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Downloaded now (release) or compiled now (build, module), not found in the cache.
    pub downloaded: bool,
    /// How it was compiled (build and module sources).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile: Option<gobuild::CompileReport>,
    pub binaries: Vec<String>,
}

/// Fetches `versions` for `arch` from `source` into `bin_dir`; see the module doc.
pub async fn fetch_binaries(
    settings: &Settings,
    arch: Arch,
    source: Source,
    versions: &[Version],
    bin_dir: &Path,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<Fetched>> {
    std::fs::create_dir_all(bin_dir)
        .with_context(|| format!("creating `{}`", bin_dir.display()))?;
    if source.compiles() {
        return compile_binaries(settings, arch, source, versions, bin_dir, cache, reporter).await;
    }
    let http = Http::new()?;
    let mut out = Vec::new();
    for version in versions {
        let e = fetch::expected(
            &http,
            cache,
            &settings.release_url,
            version,
            arch,
            settings.pin_for(version, arch),
            &*reporter,
        )
        .await
        .with_context(|| format!("fetching etcd {version} for {arch}"))?;
        let tarball = fetch::fetch(&http, cache, e, &*reporter)
            .await
            .with_context(|| format!("fetching etcd {version} for {arch}"))?;
        let binaries = extract::extract(&tarball.path, &tarball.file_name)?;
        crate::pipeline::check_binaries(&binaries, version, arch, &*reporter)?;
        let mut names = Vec::new();
        for b in &binaries {
            let dest = bin_dir.join(format!("{}-{version}", b.name));
            write_executable(&dest, &b.bytes)?;
            names.push(dest.display().to_string());
        }
        reporter.status(
            "Installed",
            &format!(
                "etcd {version} ({}) into {}",
                binaries.len(),
                bin_dir.display()
            ),
        );
        out.push(Fetched {
            version: version.to_string(),
            source: "release".into(),
            url: Some(tarball.url.clone()),
            sha256: Some(tarball.sha256.clone()),
            downloaded: tarball.downloaded(),
            compile: None,
            binaries: names,
        });
        tarball.keep(cache)?;
    }
    Ok(out)
}

/// The compiled sources: every version's source resolved first (so that a version the source
/// cannot give fails before anything compiles), then each compiled through the build cache.
async fn compile_binaries(
    settings: &Settings,
    arch: Arch,
    source: Source,
    versions: &[Version],
    bin_dir: &Path,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<Fetched>> {
    let builder = gobuild::Builder::detect(
        settings.gobuild.builder,
        &settings.gobuild.golang_version,
        settings.gobuild.go_toolchain.as_deref(),
    )
    .context("choosing how to compile etcd from source")?;
    let compiled = crate::pipeline::compile(
        settings,
        &builder,
        versions,
        arch,
        source,
        cache,
        reporter.clone(),
    )
    .await?;
    let mut out = Vec::new();
    for built in compiled {
        let version = built.version.clone();
        let mut names = Vec::new();
        for b in &built.binaries {
            let dest = bin_dir.join(format!("{}-{version}", b.name));
            write_executable(&dest, &b.bytes)?;
            names.push(dest.display().to_string());
        }
        reporter.status(
            "Installed",
            &format!(
                "etcd {version} ({}, {}) into {}",
                built.binaries.len(),
                if built.report.compiled {
                    "compiled"
                } else {
                    "compiled earlier"
                },
                bin_dir.display()
            ),
        );
        out.push(Fetched {
            version: version.to_string(),
            source: format!("{source:?}").to_lowercase(),
            url: None,
            sha256: None,
            downloaded: built.report.compiled,
            compile: Some(built.report),
            binaries: names,
        });
    }
    Ok(out)
}

/// Writes `bytes` to `dest` by temp file and rename, executable (0777 under the umask).
fn write_executable(dest: &Path, bytes: &[u8]) -> Result<()> {
    hostio::fs::write_atomic_mode(dest, bytes, hostio::fs::EXEC_MODE)
        .with_context(|| format!("writing `{}`", dest.display()))
}
