//! `etcdimg build --arch A`: one arch's image, from images.toml to an OCI layout.
//!
//! 1. resolve   — settings were resolved by the caller (flags > env > images.toml > defaults)
//! 2. base      — pull the base for the arch's platform (registry or `oci:` layout)
//! 3. fetch     — each bundled version's release tarball, verified against SHA256SUMS (+ pin)
//! 4. verify    — extract etcd/etcdctl/etcdutl safely; ELF and `--version` checks
//! 5. compile   — the static migrate binary for the arch (cached by its inputs)
//! 6. assemble  — one deterministic layer per version (+ migrate), reused when inputs match
//! 7. write     — blobs, config, manifest into the OCI layout; index.json swapped last

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use semver::Version;
use serde::Serialize;

use crate::binary::{self, VersionCheck};
use crate::fetch::{self, cache::Cache, extract, http::Http};
use crate::gobuild;
use crate::migrate_build;
use crate::oci::image::{self, AddedLayer, ImageSpec};
use crate::oci::layer::{self, Body, Entry, LayerDigests};
use crate::oci::layout::Layout;
use crate::oci::{self, docker_archive, gzip, MediaType};
use crate::platform::Arch;
use crate::registry::{self, Session};
use crate::release;
use crate::report::Reporter;
use crate::settings::Settings;

/// Bumped whenever the layout of our layers changes, so that old cache entries are not reused.
const LAYER_FORMAT: &str = "etcdimg-layer-v1";
const BIN_DIR: &str = "usr/local/bin";
/// The prefix of [`BIN_DIR`]; the version policy goes at [`etcd_policy::IMAGE_FILE`] under it.
const PREFIX: &str = "usr/local";

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
    pub docker_archive: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TarballReport {
    pub version: String,
    pub url: String,
    pub sha256: String,
    /// True when this run downloaded it (false: from the cache).
    pub downloaded: bool,
}

/// A bundled release version: its layer from the layer cache, or its verified tarball.
enum Release {
    Layer(fetch::Expected, LayerDigests),
    Tarball(fetch::VerifiedTarball),
}

/// What a version's layer holds, for reports and `created_by`.
fn etcd_layer_content(version: &Version, latest: bool) -> String {
    format!(
        "etcd {version}{}",
        if latest {
            " (default etcd, etcdctl)"
        } else {
            ""
        }
    )
}

/// The layer cache key of a version's layer: everything that determines its bytes. `kind` is
/// `etcd` (from a release tarball, `input` its sha256) or `etcd-built` (`input` the compile key).
fn etcd_layer_key(
    kind: &str,
    input: &str,
    version: &Version,
    arch: Arch,
    latest: bool,
    mode: u32,
    mtime: u64,
) -> String {
    layer_key(&[
        kind,
        input,
        &version.to_string(),
        arch.name(),
        &latest.to_string(),
        &format!("{mode:o}"),
        &mtime.to_string(),
    ])
}

/// A layer to produce: its cache key and how to make it if the cache misses.
struct LayerJob {
    content: String,
    key: String,
    make: LayerInput,
}

enum LayerInput {
    /// A version's binaries; `latest` adds `etcd`/`etcdctl` as hard links.
    Etcd {
        version: Version,
        binaries: Vec<extract::Binary>,
        latest: bool,
    },
    Migrate {
        binary: Vec<u8>,
        policy: Vec<u8>,
    },
}

fn etcd_entries<'a>(
    version: &Version,
    binaries: &'a [extract::Binary],
    latest: bool,
    mode: u32,
) -> Vec<Entry<'a>> {
    let mut entries = Vec::new();
    for b in binaries {
        let versioned = format!("{BIN_DIR}/{}-{version}", b.name);
        if latest && (b.name == "etcd" || b.name == "etcdctl") {
            // The default binaries hold the bytes; the versioned names link to them. In sorted
            // order `etcd` precedes `etcd-<V>`, so the link follows its target.
            let default = format!("{BIN_DIR}/{}", b.name);
            entries.push(Entry {
                path: default.clone(),
                mode,
                body: Body::File(&b.bytes),
            });
            entries.push(Entry {
                path: versioned,
                mode,
                body: Body::HardLink(default),
            });
        } else {
            entries.push(Entry {
                path: versioned,
                mode,
                body: Body::File(&b.bytes),
            });
        }
    }
    entries
}

fn layer_key(parts: &[&str]) -> String {
    let mut text = String::from(LAYER_FORMAT);
    text.push('\n');
    text.push_str(&gzip::description());
    for p in parts {
        text.push('\n');
        text.push_str(p);
    }
    fetch::cache::sha256_hex(text.as_bytes())
}

fn cached_layer(cache: &Cache, key: &str) -> Option<LayerDigests> {
    let record = cache.get_ref("layers", key)?;
    let digests: LayerDigests = serde_json::from_str(&record).ok()?;
    let meta = std::fs::metadata(cache.blob_path(&digests.digest)).ok()?;
    (meta.len() == digests.size).then_some(digests)
}

/// Compresses the layer of `job` into the cache, unless a process sharing the cache made it
/// while we waited for the entry's lock.
fn make_layer(
    job: &LayerJob,
    mode: u32,
    mtime: u64,
    cache: &Cache,
    reuse: bool,
    reporter: &dyn Reporter,
) -> Result<LayerDigests> {
    let _held = cache.lock(
        "layer",
        &job.key,
        &format!("the layer {}", job.content),
        &|m| reporter.status("Waiting", m),
    )?;
    if let Some(d) = cached_layer(cache, &job.key).filter(|_| reuse) {
        return Ok(d);
    }
    reporter.status("Compressing", &format!("layer {}", job.content));
    let script = migrate_build::WRAPPER_SCRIPT.as_bytes();
    let entries = match &job.make {
        LayerInput::Etcd {
            version,
            binaries,
            latest,
        } => etcd_entries(version, binaries, *latest, mode),
        LayerInput::Migrate { binary, policy } => vec![
            Entry {
                path: format!("{BIN_DIR}/migrate"),
                mode,
                body: Body::File(binary),
            },
            Entry {
                path: format!("{BIN_DIR}/migrate-if-needed.sh"),
                mode,
                body: Body::File(script),
            },
            // migrate reads the effective version policy (images.toml's [policy] included) here.
            Entry {
                path: format!("{PREFIX}/{}", etcd_policy::IMAGE_FILE),
                mode: 0o444,
                body: Body::File(policy),
            },
        ],
    };
    let mut pending = cache.pending()?;
    let digests = layer::write_layer(
        entries,
        mtime,
        std::io::BufWriter::with_capacity(1 << 20, &mut pending),
    )
    .with_context(|| format!("building the layer for {}", job.content))?;
    match cache.commit(pending, Some(&digests.digest))? {
        Ok(_) => {}
        Err(actual) => anyhow::bail!(
            "layer for {} hashed to {actual} on disk, expected {}",
            job.content,
            digests.digest
        ),
    }
    cache.put_ref("layers", &job.key, &serde_json::to_string(&digests)?)?;
    Ok(digests)
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

/// What the builds of a run need that can be checked offline, checked before any download or
/// compile (a bad value fails in milliseconds, naming its flag or images.toml key), and the Go
/// builder, detected once per run.
pub struct Preflight {
    /// For the arches built from source (None when every arch uses release tarballs).
    pub builder: Option<gobuild::Builder>,
}

/// Checks the inputs of building `arches`; see [`Preflight`]. The version policy is not its
/// business: the build verbs warn ([`warn_policy`]), push and plan refuse or allow first.
pub fn preflight(
    settings: &Settings,
    arches: &[Arch],
    options: &BuildOptions,
) -> Result<Preflight> {
    migrate_build::check_inputs(
        &settings.migrate_source_dir,
        options.migrate_binary.as_deref(),
    )?;
    for arch in arches {
        let base = settings.base_for(*arch);
        match registry::parse_base(base).with_context(|| {
            format!("the base image for {arch} (images.toml `image.base`, BASEIMAGE)")
        })? {
            registry::BaseRef::Layout { path, .. } if !path.join("oci-layout").is_file() => {
                anyhow::bail!(crate::UserError::new(
                    format!(
                        "the base image `{base}` for {arch} names `{}`, which is not an OCI layout (no oci-layout file)",
                        path.display()
                    ),
                    "point image.base (or BASEIMAGE) at an OCI layout directory, e.g. one written by `skopeo copy ... oci:DIR:TAG`",
                ));
            }
            _ => {}
        }
        for (registry, key) in [
            (&settings.registry, "image.registry (REGISTRY)"),
            (
                &settings.push_registry,
                "image.push_registry (PUSH_REGISTRY)",
            ),
        ] {
            let image = settings.arch_image(registry, *arch);
            registry::reference::parse(&image).map_err(|message| {
                crate::UserError::new(
                    format!("`{image}` is not an image reference: {message}"),
                    format!("check {key} and image.name in images.toml"),
                )
            })?;
        }
    }
    let builder = if arches.iter().any(|a| settings.source_for(*a).compiles()) {
        Some(
            gobuild::Builder::detect(settings.gobuild.builder, &settings.gobuild.golang_version)
                .context("choosing how to compile etcd from source")?,
        )
    } else {
        None
    };
    Ok(Preflight { builder })
}

/// Says on stderr what the version policy has against the release's versions.
pub fn warn_policy(settings: &Settings, reporter: &dyn Reporter) {
    for f in settings.policy_findings() {
        reporter.warn(&format!(
            "{f}; push and plan refuse to release it without --allow-unsafe-versions"
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
    build_checked(settings, arch, options, &pre, cache, reporter).await
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

impl BuildPlan<'_> {
    fn etcd_key(&self, kind: &str, input: &str, version: &Version) -> String {
        etcd_layer_key(
            kind,
            input,
            version,
            self.arch,
            *version == self.settings.latest,
            self.mode,
            self.mtime,
        )
    }

    /// A cached layer for `key`, unless `--no-layer-cache`.
    fn reuse(&self, key: &str) -> Option<LayerDigests> {
        cached_layer(self.cache, key).filter(|_| self.options.reuse_layers)
    }
}

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
    let migrate_sha256 = migrate_layer(&plan, &mut layers).await?;
    let layers = compress(&plan, layers)?;
    let image = assemble(&plan, &base, &layers)?;
    let written = write_layout(
        &plan,
        &base,
        &layers,
        &image,
        &tarballs,
        &compiles,
        &migrate_sha256,
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
        docker_archive: options.docker_archive.as_deref().map(display_path),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Stage 1, base: the base image's platform manifest for the arch, its config and layers in
/// the cache (verified by digest).
async fn pull_base(plan: &BuildPlan<'_>) -> Result<registry::BaseImage> {
    let base_ref = plan.settings.base_for(plan.arch).to_string();
    registry::pull_base(
        &base_ref,
        plan.arch,
        plan.cache,
        &plan.options.registry,
        &*plan.reporter,
    )
    .await
    .with_context(|| format!("resolving the base image `{base_ref}` for {}", plan.arch))
}

/// What stage 2 obtained for the bundled versions: release tarballs (or the layers already
/// cached for them), or binaries compiled from source; and the locks of the tarballs this run
/// downloads, held until they are kept.
struct EtcdInputs {
    releases: Vec<Release>,
    compiled: Vec<gobuild::BuiltEtcd>,
    tarball_locks: Vec<crate::lockfile::Held>,
}

impl EtcdInputs {
    fn tarball_reports(&self) -> Vec<TarballReport> {
        self.releases
            .iter()
            .map(|r| match r {
                Release::Layer(e, _) => TarballReport {
                    version: e.version.to_string(),
                    url: e.url.clone(),
                    sha256: e.sha256.clone(),
                    downloaded: false,
                },
                Release::Tarball(t) => TarballReport {
                    version: t.version.to_string(),
                    url: t.url.clone(),
                    sha256: t.sha256.clone(),
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
async fn obtain_etcd(plan: &BuildPlan<'_>, pre: &Preflight) -> Result<EtcdInputs> {
    let (settings, arch, cache, reporter) = (plan.settings, plan.arch, plan.cache, &plan.reporter);
    if plan.source.compiles() {
        let builder = pre
            .builder
            .as_ref()
            .expect("preflight detects the builder for source-built arches");
        let compiled = gobuild::build_versions(
            &settings.gobuild,
            builder,
            &settings.bundled,
            arch,
            plan.source,
            cache,
            reporter.clone(),
        )
        .await
        .map_err(|(version, e)| {
            anyhow::Error::new(e).context(format!("building etcd {version} for {arch} from source"))
        })?;
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
fn lock_tarballs(
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

/// The layers of an image being assembled: one slot per layer in image order (`Some` once
/// its digests are known: `(digests, content, reused)`), and the jobs that fill the others.
struct LayerSet {
    slots: Vec<Option<(LayerDigests, String, bool)>>,
    jobs: Vec<(usize, LayerJob)>,
}

impl LayerSet {
    fn reused(&mut self, d: LayerDigests, content: String) {
        self.slots.push(Some((d, content, true)));
    }

    fn queue(&mut self, job: LayerJob) {
        self.slots.push(None);
        self.jobs.push((self.slots.len() - 1, job));
    }
}

/// Stage 3, verify: each fresh tarball's etcd/etcdctl/etcdutl extracted safely and checked
/// (ELF header, `--version`), versions concurrently; compiled binaries were checked before
/// they entered the build cache. Every version becomes a reused layer or a layer job. Only
/// once every release passed do fresh downloads enter the cache.
async fn etcd_layers(plan: &BuildPlan<'_>, etcd: EtcdInputs) -> Result<LayerSet> {
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

/// Stage 4, migrate: the static migrate binary for the arch (after the etcd checks, so that a
/// bad release leaves nothing in the cache), with migrate-if-needed.sh and the effective version
/// policy, as the last layer. Returns the binary's sha256.
async fn migrate_layer(plan: &BuildPlan<'_>, set: &mut LayerSet) -> Result<String> {
    let source_dir = plan.settings.migrate_source_dir.clone();
    let prebuilt = plan.options.migrate_binary.clone();
    let (cache, reporter, arch) = (plan.cache.clone(), plan.reporter.clone(), plan.arch);
    let migrate = tokio::task::spawn_blocking(move || {
        migrate_build::migrate_binary(&source_dir, prebuilt.as_deref(), arch, &cache, &*reporter)
    })
    .await??;
    let script_digest = fetch::cache::sha256_hex(migrate_build::WRAPPER_SCRIPT.as_bytes());
    let policy_json = plan.settings.policy.to_json().into_bytes();
    let key = layer_key(&[
        "migrate",
        &migrate.sha256,
        &script_digest,
        &fetch::cache::sha256_hex(&policy_json),
        &format!("{:o}", plan.mode),
        &plan.mtime.to_string(),
    ]);
    let content = "migrate, migrate-if-needed.sh".to_string();
    match plan.reuse(&key) {
        Some(d) => set.reused(d, content),
        None => set.queue(LayerJob {
            content,
            key,
            make: LayerInput::Migrate {
                binary: migrate.bytes,
                policy: policy_json,
            },
        }),
    }
    Ok(migrate.sha256)
}

/// Stage 5, compress: every layer job, biggest first, `--jobs` at a time, into the layer
/// cache; the bytes never depend on the order. Returns every layer in image order.
fn compress(plan: &BuildPlan<'_>, set: LayerSet) -> Result<Vec<(LayerDigests, String, bool)>> {
    let LayerSet {
        mut slots,
        mut jobs,
    } = set;
    jobs.sort_by_key(|(_, j)| {
        std::cmp::Reverse(match &j.make {
            LayerInput::Etcd { binaries, .. } => {
                binaries.iter().map(|b| b.bytes.len()).sum::<usize>()
            }
            LayerInput::Migrate { binary, .. } => binary.len(),
        })
    });
    let queue = std::sync::Mutex::new(jobs.into_iter());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..plan.options.jobs.max(1) {
            handles.push(scope.spawn(|| -> Result<()> {
                loop {
                    let next = queue.lock().expect("queue").next();
                    let Some((slot, job)) = next else {
                        return Ok(());
                    };
                    let reuse = plan.options.reuse_layers;
                    let d = make_layer(
                        &job,
                        plan.mode,
                        plan.mtime,
                        plan.cache,
                        reuse,
                        &*plan.reporter,
                    )?;
                    results
                        .lock()
                        .expect("results")
                        .push((slot, d, job.content));
                }
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a layer worker panicked"))??;
        }
        Ok(())
    })?;
    for (slot, d, content) in results.into_inner().expect("results") {
        slots[slot] = Some((d, content, false));
    }
    Ok(slots
        .into_iter()
        .map(|l| l.expect("every layer built"))
        .collect())
}

/// Stage 6, assemble: the image config (the base's, plus env and labels) and manifest, as
/// canonical JSON.
fn assemble(
    plan: &BuildPlan<'_>,
    base: &registry::BaseImage,
    layers: &[(LayerDigests, String, bool)],
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
            .map(|(d, content, _)| AddedLayer {
                digests: d.clone(),
                created_by: format!("etcdimg: {content}"),
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

/// What stage 7 wrote: the layout ref, and every layer with where it came from.
struct Written {
    reference: String,
    layers: Vec<LayerReport>,
    layout: Layout,
}

/// Stage 7, write: base and added layers, config and manifest into the output layout, then the
/// build record (the release report's input) as a blob, then the image's ref in index.json
/// (under the layout's lock) last, so a failure leaves the layout as it was.
fn write_layout(
    plan: &BuildPlan<'_>,
    base: &registry::BaseImage,
    layers: &[(LayerDigests, String, bool)],
    built: &image::BuiltImage,
    tarballs: &[TarballReport],
    compiles: &[gobuild::CompileReport],
    migrate_sha256: &str,
) -> Result<Written> {
    let (settings, arch, output) = (plan.settings, plan.arch, &plan.options.output);
    let reference = settings.layout_ref(arch);
    plan.reporter
        .status("Writing", &format!("{reference} to {}", output.display()));
    let layout = Layout::create(output)?;
    for l in &base.layers {
        layout.put_blob_file(&l.path, &oci::hex(&l.descriptor), l.descriptor.size())?;
    }
    for (d, _, _) in layers {
        layout.put_blob_file(&plan.cache.blob_path(&d.digest), &d.digest, d.size)?;
    }
    layout.put_blob_bytes(&built.config)?;
    layout.put_blob_bytes(&built.manifest)?;
    let mut reports: Vec<LayerReport> = base
        .layers
        .iter()
        .map(|l| LayerReport {
            digest: l.descriptor.digest().to_string(),
            size: l.descriptor.size(),
            content: format!("base {}", base.name),
            cached: true,
        })
        .collect();
    reports.extend(layers.iter().map(|(d, content, cached)| LayerReport {
        digest: format!("sha256:{}", d.digest),
        size: d.size,
        content: content.clone(),
        cached: *cached,
    }));
    let record = build_record(
        plan,
        base,
        built,
        tarballs,
        compiles,
        migrate_sha256,
        &reports,
    );
    let record_hex = layout.put_blob_bytes(&oci::canonical_json(&record))?;
    let mut desc = oci::descriptor(
        MediaType::ImageManifest,
        &built.manifest_digest,
        built.manifest.len() as u64,
    );
    desc.set_platform(Some(oci::platform_for(arch)));
    desc.set_annotations(Some(
        [(
            release::BUILD_RECORD_ANNOTATION.to_string(),
            format!("sha256:{record_hex}"),
        )]
        .into(),
    ));
    let reporter = &plan.reporter;
    layout.set_ref(&reference, desc, &|m| reporter.status("Waiting", m))?;
    Ok(Written {
        reference,
        layers: reports,
        layout,
    })
}

/// The build record of an image: where every input came from (the release report's input).
fn build_record(
    plan: &BuildPlan<'_>,
    base: &registry::BaseImage,
    built: &image::BuiltImage,
    tarballs: &[TarballReport],
    compiles: &[gobuild::CompileReport],
    migrate_sha256: &str,
    layers: &[LayerReport],
) -> release::BuildRecord {
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
                })
                .collect(),
            compiles: compiles.iter().map(|c| c.build.clone()).collect(),
            migrate_sha256: migrate_sha256.to_string(),
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

/// Stage 8, docker archive (`--docker-archive`): the image as `docker load` reads it.
fn write_docker_archive(
    plan: &BuildPlan<'_>,
    built: &image::BuiltImage,
    written: &Written,
) -> Result<()> {
    let Some(archive) = &plan.options.docker_archive else {
        return Ok(());
    };
    let layer_paths: Vec<(String, PathBuf)> = built
        .layers
        .iter()
        .map(|d| (oci::hex(d), written.layout.blob_path(&oci::hex(d))))
        .collect();
    docker_archive::write(
        archive,
        &docker_archive::ArchiveImage {
            repo_tag: plan.settings.arch_image(&plan.settings.registry, plan.arch),
            config: &built.config,
            config_hex: &built.config_digest,
            layers: layer_paths
                .iter()
                .map(|(h, p)| (h.clone(), p.as_path()))
                .collect(),
        },
        plan.mtime,
    )
    .with_context(|| format!("writing the docker archive `{}`", archive.display()))
}

fn display_path(p: &Path) -> String {
    p.display().to_string()
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

/// The OCI index over `images` (checked against image.arches and each config's platform),
/// its blob in the layout, and the plain tag pointing at it.
fn write_index(
    settings: &Settings,
    options: &BuildOptions,
    images: &[BuildReport],
    reporter: &dyn Reporter,
) -> Result<(String, oci::index::BuiltIndex)> {
    let layout = Layout::open(&options.output)?;
    let mut entries = Vec::new();
    for (arch, report) in settings.arches.iter().zip(images) {
        let config = layout.read_blob(report.config_digest.trim_start_matches("sha256:"))?;
        entries.push(oci::index::Entry {
            arch: *arch,
            media_type: oci::index::OCI_MANIFEST.into(),
            digest: report.manifest_digest.clone(),
            size: report.manifest_size,
            config: serde_json::from_slice(&config)?,
        });
    }
    let tag = settings.tag();
    let annotations = oci::index::annotations(&tag, settings.source_date_epoch);
    let built = oci::index::build(
        oci::index::ManifestFormat::Oci,
        &settings.arches,
        &entries,
        &annotations,
    )?;
    layout.put_blob_bytes(&built.bytes)?;
    layout.set_ref(
        &tag,
        oci::descriptor(
            MediaType::ImageIndex,
            built.digest.trim_start_matches("sha256:"),
            built.bytes.len() as u64,
        ),
        &|m| reporter.status("Waiting", m),
    )?;
    Ok((tag, built))
}
