//! `etcdimg fetch --arch A --bin-dir DIR`: the official etcd release binaries of the bundled
//! versions (or `--versions`), downloaded through the cache and verified against SHA256SUMS (and
//! the pins) exactly as a build does, checked (ELF header, `--version` where it can run), then
//! written to `DIR/etcd-<V>`, `etcdctl-<V>`, `etcdutl-<V>`: the layout migrate's `--bin-dir`
//! expects. The GitHub job that runs migrate's version matrix on real 3.4-3.7 releases uses it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use semver::Version;
use serde::Serialize;

use crate::fetch::{self, cache::Cache, extract, http::Http};
use crate::platform::Arch;
use crate::report::Reporter;
use crate::settings::Settings;

#[derive(Debug, Serialize)]
pub struct Fetched {
    pub version: String,
    pub url: String,
    pub sha256: String,
    pub downloaded: bool,
    pub binaries: Vec<String>,
}

/// Fetches `versions` for `arch` into `bin_dir`; see the module doc.
pub async fn fetch_binaries(
    settings: &Settings,
    arch: Arch,
    versions: &[Version],
    bin_dir: &Path,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<Fetched>> {
    std::fs::create_dir_all(bin_dir)
        .with_context(|| format!("creating `{}`", bin_dir.display()))?;
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
        crate::commands::build::check_binaries(&binaries, version, arch, &*reporter)?;
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
            url: tarball.url.clone(),
            sha256: tarball.sha256.clone(),
            downloaded: tarball.downloaded(),
            binaries: names,
        });
        tarball.keep(cache)?;
    }
    Ok(out)
}

/// Writes `bytes` to `dest` by temp file and rename, executable (0777 under the umask).
fn write_executable(dest: &Path, bytes: &[u8]) -> Result<()> {
    crate::fetch::cache::write_atomic_mode(dest, bytes, 0o777)
        .with_context(|| format!("writing `{}`", dest.display()))
}
