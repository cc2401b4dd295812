//! The etcd binaries of an image: stage 2 (fetch release tarballs, verified against
//! SHA256SUMS and the pin, or compile from source) and stage 3 (extract and check them, and
//! turn every version into a reused layer or a layer job).
//!
//! Guarantees: nothing fetched enters the cache before its contents passed (ELF header,
//! `--version`); compiled binaries were checked before they entered the build cache; the
//! tarballs a build reads are locked, sorted, before any download and until they are kept.

use anyhow::{Context, Result};
use semver::Version;

use crate::binary::{self, VersionCheck};
use crate::fetch::{self, extract, http::Http};
use crate::gobuild;
use crate::platform::Arch;
use crate::report::Reporter;

use super::context::*;
use super::inputs::*;
use super::layers::*;

/// A bundled release version: its layer from the layer cache, or its verified tarball.
pub(crate) enum Release {
    Layer(fetch::Expected, CachedLayer),
    Tarball(fetch::VerifiedTarball),
}

/// What a version's layer holds, for reports and `created_by`.
pub(crate) fn etcd_layer_content(version: &Version, latest: bool) -> String {
    format!(
        "etcd {version}{}",
        if latest {
            " (default etcd, etcdctl)"
        } else {
            ""
        }
    )
}

/// Checks one version's binaries: ELF header always, `--version` where it can run.
pub(crate) fn check_binaries(
    binaries: &[extract::Binary],
    version: &Version,
    arch: Arch,
    reporter: &dyn Reporter,
) -> Result<()> {
    for b in binaries {
        binary::check_elf(&b.name, &b.bytes, arch)
            .with_context(|| format!("checking etcd {version} for {arch}"))?;
    }
    for b in binaries {
        match binary::check_version(&b.name, &b.bytes, arch, version)
            .with_context(|| format!("checking etcd {version} for {arch}"))?
        {
            VersionCheck::Verified => {}
            VersionCheck::Skipped => {
                reporter.warn(&format!("cannot run {arch} binaries here (install qemu-user-static); checked `{}` {version} by ELF header only", b.name));
            }
        }
    }
    Ok(())
}

/// What stage 2 obtained for the bundled versions: release tarballs (or the layers already
/// cached for them), or binaries compiled from source; and the locks of the tarballs this run
/// downloads, held until they are kept.
pub(crate) struct EtcdInputs {
    pub(crate) releases: Vec<Release>,
    pub(crate) compiled: Vec<gobuild::BuiltEtcd>,
    pub(crate) tarball_locks: Vec<crate::lockfile::Held>,
}

impl EtcdInputs {
    pub(crate) fn tarball_reports(&self) -> Vec<TarballReport> {
        self.releases
            .iter()
            .map(|r| match r {
                Release::Layer(e, _) => TarballReport {
                    version: e.version.to_string(),
                    url: e.url.clone(),
                    sha256: e.sha256.clone(),
                    sums_sha256: e.sums_sha256.clone(),
                    downloaded: false,
                },
                Release::Tarball(t) => TarballReport {
                    version: t.version.to_string(),
                    url: t.url.clone(),
                    sha256: t.sha256.clone(),
                    sums_sha256: t.sums_sha256.clone(),
                    downloaded: t.downloaded(),
                },
            })
            .collect()
    }
}

/// Stage 2, fetch or compile: every bundled version, from its release tarball (verified
/// against SHA256SUMS and the pin; a version whose layer is cached needs only SHA256SUMS) or
/// compiled from source (verified before it enters the build cache). Nothing fetched here is in
/// the cache yet: stage 3 keeps the tarballs once their contents passed.
pub(crate) async fn obtain_etcd(plan: &BuildPlan<'_>, pre: &Preflight) -> Result<EtcdInputs> {
    let (settings, arch, cache, reporter) = (plan.settings, plan.arch, plan.cache, &plan.reporter);
    if plan.source.compiles() {
        let builder = pre
            .builder
            .as_ref()
            .expect("preflight detects the builder for source-built arches");
        let compiled = compile(
            settings,
            builder,
            &settings.bundled,
            arch,
            plan.source,
            cache,
            reporter.clone(),
        )
        .await?;
        return Ok(EtcdInputs {
            releases: Vec::new(),
            compiled,
            tarball_locks: Vec::new(),
        });
    }
    // Concurrently: the network is the limit, not the CPU. SHA256SUMS first.
    let http = Http::new()?;
    let expectations = settings.bundled.iter().map(|version| {
        let (http, reporter) = (&http, &**reporter);
        async move {
            fetch::expected(
                http,
                cache,
                &settings.release_url,
                version,
                arch,
                settings.pin_for(version, arch),
                reporter,
            )
            .await
            .with_context(|| format!("fetching etcd {version} for {arch}"))
        }
    });
    let expectations = futures_util::future::join_all(expectations)
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let tarball_locks = lock_tarballs(plan, &expectations)?;
    let fetches = expectations.into_iter().map(|e| {
        let (http, reporter) = (&http, &**reporter);
        let key = plan.etcd_key("etcd", &e.sha256, &e.version);
        async move {
            if let Some(d) = plan.reuse(&key) {
                return Ok(Release::Layer(e, d));
            }
            let version = e.version.clone();
            fetch::fetch(http, cache, e, reporter)
                .await
                .map(Release::Tarball)
                .with_context(|| format!("fetching etcd {version} for {arch}"))
        }
    });
    let releases = futures_util::future::join_all(fetches)
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    Ok(EtcdInputs {
        releases,
        compiled: Vec::new(),
        tarball_locks,
    })
}

/// The locks of the tarballs a build must read (no cached layer), taken sorted before any
/// download, so that concurrent builds sharing the cache download each once and never wait on
/// each other in a cycle.
pub(crate) fn lock_tarballs(
    plan: &BuildPlan<'_>,
    expectations: &[fetch::Expected],
) -> Result<Vec<crate::lockfile::Held>> {
    let mut need: Vec<&str> = expectations
        .iter()
        .filter(|e| {
            plan.reuse(&plan.etcd_key("etcd", &e.sha256, &e.version))
                .is_none()
        })
        .map(|e| e.sha256.as_str())
        .collect();
    need.sort_unstable();
    need.dedup();
    let reporter = &plan.reporter;
    Ok(tokio::task::block_in_place(|| {
        need.iter()
            .map(|sha| {
                plan.cache
                    .lock("tarball", sha, &format!("the download of {sha}"), &|m| {
                        reporter.status("Waiting", m)
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    })?)
}

/// Stage 3, verify: each fresh tarball's etcd/etcdctl/etcdutl extracted safely and checked
/// (ELF header, `--version`), versions concurrently; compiled binaries were checked before
/// they entered the build cache. Every version becomes a reused layer or a layer job. Only
/// once every release passed do fresh downloads enter the cache.
pub(crate) async fn etcd_layers(plan: &BuildPlan<'_>, etcd: EtcdInputs) -> Result<LayerSet> {
    let (settings, arch) = (plan.settings, plan.arch);
    let mut set = LayerSet {
        slots: Vec::new(),
        jobs: Vec::new(),
    };
    let mut verified = Vec::new();
    let mut pending = Vec::new();
    for release in etcd.releases {
        let tarball = match release {
            Release::Layer(e, d) => {
                set.reused(
                    d,
                    etcd_layer_content(&e.version, e.version == settings.latest),
                );
                continue;
            }
            Release::Tarball(t) => t,
        };
        let latest = tarball.version == settings.latest;
        let content = etcd_layer_content(&tarball.version, latest);
        let key = plan.etcd_key("etcd", &tarball.sha256, &tarball.version);
        if let Some(d) = plan.reuse(&key) {
            set.reused(d, content);
            verified.push(tarball);
            continue;
        }
        let (version, r) = (tarball.version.clone(), plan.reporter.clone());
        let (path, name) = (tarball.path.clone(), tarball.file_name.clone());
        let handle = tokio::task::spawn_blocking(move || -> Result<Vec<extract::Binary>> {
            r.status(
                "Verifying",
                &format!("{name}: contents, ELF headers and versions"),
            );
            let binaries = extract::extract(&path, &name)?;
            check_binaries(&binaries, &version, arch, &*r)?;
            Ok(binaries)
        });
        set.slots.push(None);
        pending.push((
            set.slots.len() - 1,
            content,
            key,
            latest,
            tarball.version.clone(),
            handle,
        ));
        verified.push(tarball);
    }
    for (slot, content, key, latest, version, handle) in pending {
        let binaries = handle.await??;
        let make = LayerInput::Etcd {
            version,
            binaries,
            latest,
        };
        set.jobs.push((slot, LayerJob { content, key, make }));
    }
    for built in etcd.compiled {
        let latest = built.version == settings.latest;
        let content = etcd_layer_content(&built.version, latest);
        let key = plan.etcd_key("etcd-built", &built.report.build.key, &built.version);
        match plan.reuse(&key) {
            Some(d) => set.reused(d, content),
            None => set.queue(LayerJob {
                content,
                key,
                make: LayerInput::Etcd {
                    version: built.version,
                    binaries: built.binaries,
                    latest,
                },
            }),
        }
    }
    for tarball in verified {
        tarball.keep(plan.cache)?;
    }
    drop(etcd.tarball_locks);
    Ok(set)
}

/// Every version of `versions` compiled for `arch` from `source` (all resolved before the first
/// compile; see [`gobuild::build_versions`]), the failing version named in the error.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn compile(
    settings: &crate::settings::Settings,
    builder: &gobuild::Builder,
    versions: &[Version],
    arch: Arch,
    source: crate::config::Source,
    cache: &crate::fetch::cache::Cache,
    reporter: std::sync::Arc<dyn crate::report::Reporter>,
) -> Result<Vec<gobuild::BuiltEtcd>> {
    gobuild::build_versions(
        &settings.gobuild,
        builder,
        versions,
        arch,
        source,
        cache,
        reporter,
    )
    .await
    .map_err(|(version, e)| {
        anyhow::Error::new(e).context(format!("building etcd {version} for {arch} from source"))
    })
}
