//! Layers: their cache keys (a digest of everything that determines the bytes), the layer
//! cache, the set of layers an image is assembled from, and stage 5, compress.
//!
//! Guarantees: a layer's bytes depend only on its key's inputs (sorted entries, uid/gid 0, the
//! fixed mtime, the pinned gzip); a cached layer is used only when its key matches; stage 5
//! writes every missing layer into the layer cache (in parallel, `--jobs`) and returns every
//! layer in image order with its digests and diff_id.

use anyhow::{Context, Result};
use semver::Version;

use serde::{Deserialize, Serialize};

use crate::buildinfo;
use crate::fetch::{self, cache::Cache, extract};
use crate::migrate_build;
use crate::oci::gzip;
use crate::oci::layer::{self, Body, Entry, LayerDigests};
use crate::platform::Arch;
use crate::release::ImageBinary;
use crate::report::Reporter;

use super::context::*;

/// Bumped whenever the layout of our layers changes, so that old cache entries are not reused.
/// v2: a cache entry also lists the layer's executables with their Go build info.
pub(crate) const LAYER_FORMAT: &str = "etcdimg-layer-v2";
pub(crate) const BIN_DIR: &str = "usr/local/bin";
/// The prefix of [`BIN_DIR`]; the version policy goes at [`etcd_policy::IMAGE_FILE`] under it.
pub(crate) const PREFIX: &str = "usr/local";

/// The layer cache key of a version's layer: everything that determines its bytes. `kind` is
/// `etcd` (from a release tarball, `input` its sha256) or `etcd-built` (`input` the compile key).
pub(crate) fn etcd_layer_key(
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
pub(crate) struct LayerJob {
    pub(crate) content: String,
    pub(crate) key: String,
    pub(crate) make: LayerInput,
}

pub(crate) enum LayerInput {
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

pub(crate) fn etcd_entries<'a>(
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

pub(crate) fn layer_key(parts: &[&str]) -> String {
    let mut text = String::from(LAYER_FORMAT);
    text.push('\n');
    text.push_str(&gzip::description());
    for p in parts {
        text.push('\n');
        text.push_str(p);
    }
    fetch::cache::sha256_hex(text.as_bytes())
}

/// A layer in the layer cache: its digests and what the SBOM says of its executables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CachedLayer {
    #[serde(flatten)]
    pub(crate) digests: LayerDigests,
    pub(crate) binaries: Vec<ImageBinary>,
}

/// One layer of an image being assembled, as stage 5 returns it.
#[derive(Debug, Clone)]
pub(crate) struct BuiltLayer {
    pub(crate) digests: LayerDigests,
    /// What it holds, in words (`etcd 3.6.17 (default etcd, etcdctl)`).
    pub(crate) content: String,
    /// Taken from the layer cache rather than compressed by this build.
    pub(crate) reused: bool,
    pub(crate) binaries: Vec<ImageBinary>,
}

pub(crate) fn cached_layer(cache: &Cache, key: &str) -> Option<CachedLayer> {
    let record = cache.get_ref("layers", key)?;
    let cached: CachedLayer = serde_json::from_str(&record).ok()?;
    let meta = std::fs::metadata(cache.blob_path(&cached.digests.digest)).ok()?;
    (meta.len() == cached.digests.size).then_some(cached)
}

/// The ELF executables among a layer's entries, each with its sha256, the hard links to it
/// and its Go build info, or for a Rust binary (migrate) its cargo-auditable crate list.
pub(crate) fn image_binaries(entries: &[Entry<'_>]) -> Result<Vec<ImageBinary>> {
    let mut binaries = Vec::new();
    for e in entries {
        let Body::File(bytes) = &e.body else { continue };
        if !bytes.starts_with(b"\x7fELF") {
            continue;
        }
        let go = buildinfo::read(bytes)
            .with_context(|| format!("reading the Go build info of `{}`", e.path))?;
        let rust = match go {
            Some(_) => None,
            None => buildinfo::read_rust(bytes)
                .with_context(|| format!("reading the Rust crate list of `{}`", e.path))?,
        };
        binaries.push(ImageBinary {
            path: e.path.clone(),
            links: entries
                .iter()
                .filter(|l| matches!(&l.body, Body::HardLink(t) if *t == e.path))
                .map(|l| l.path.clone())
                .collect(),
            sha256: fetch::cache::sha256_hex(bytes),
            size: bytes.len() as u64,
            stripped: !buildinfo::has_symbol_table(bytes),
            go,
            rust,
        });
    }
    Ok(binaries)
}

/// Compresses the layer of `job` into the cache, unless a process sharing the cache made it
/// while we waited for the entry's lock.
pub(crate) fn make_layer(
    job: &LayerJob,
    mode: u32,
    mtime: u64,
    cache: &Cache,
    reuse: bool,
    reporter: &dyn Reporter,
) -> Result<CachedLayer> {
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
    let binaries = image_binaries(&entries)
        .with_context(|| format!("building the layer for {}", job.content))?;
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
    let cached = CachedLayer { digests, binaries };
    cache.put_ref("layers", &job.key, &serde_json::to_string(&cached)?)?;
    Ok(cached)
}

impl BuildPlan<'_> {
    pub(crate) fn etcd_key(&self, kind: &str, input: &str, version: &Version) -> String {
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
    pub(crate) fn reuse(&self, key: &str) -> Option<CachedLayer> {
        cached_layer(self.cache, key).filter(|_| self.options.reuse_layers)
    }
}

/// The layers of an image being assembled: one slot per layer in image order (`Some` once
/// its digests are known), and the jobs that fill the others.
pub(crate) struct LayerSet {
    pub(crate) slots: Vec<Option<BuiltLayer>>,
    pub(crate) jobs: Vec<(usize, LayerJob)>,
}

impl LayerSet {
    pub(crate) fn reused(&mut self, c: CachedLayer, content: String) {
        self.slots.push(Some(BuiltLayer {
            digests: c.digests,
            content,
            reused: true,
            binaries: c.binaries,
        }));
    }

    pub(crate) fn queue(&mut self, job: LayerJob) {
        self.slots.push(None);
        self.jobs.push((self.slots.len() - 1, job));
    }
}

/// Stage 5, compress: every layer job, biggest first, `--jobs` at a time, into the layer
/// cache; the bytes never depend on the order. Returns every layer in image order.
pub(crate) fn compress(plan: &BuildPlan<'_>, set: LayerSet) -> Result<Vec<BuiltLayer>> {
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
    for (slot, c, content) in results.into_inner().expect("results") {
        slots[slot] = Some(BuiltLayer {
            digests: c.digests,
            content,
            reused: false,
            binaries: c.binaries,
        });
    }
    Ok(slots
        .into_iter()
        .map(|l| l.expect("every layer built"))
        .collect())
}
