//! Produces the static `migrate` binary for an image arch: a prebuilt file, or a cargo build of
//! the migrate crate, cached by a digest of its inputs (sources, Cargo.lock, target, flags and
//! the rustc version) so that an unchanged crate is never rebuilt.
//!
//! By default the build goes through cargo-auditable (`cargo auditable build`), which embeds
//! the crate list (`.dep-v0`) that syft, trivy and grype read, and that the release's SPDX
//! names; `migrate.auditable = false` builds with plain cargo.

use std::path::{Path, PathBuf};

use crate::binary;
use crate::fetch::cache::{sha256_hex, Cache};
use crate::platform::Arch;
use crate::report::Reporter;
use hostio::process::{Cmd, ProcessError};

/// The wrapper script every image carries, as shipped in the migrate crate.
pub const WRAPPER_SCRIPT: &str = include_str!("../migrate/migrate-if-needed.sh");

#[derive(Debug, thiserror::Error)]
pub enum MigrateBuildError {
    #[error("the Rust target `{target}` (static migrate for {arch}) is not installed")]
    MissingTarget { target: String, arch: Arch },
    #[error("the migrate crate is not at `{0}` (images.toml `migrate.source_dir`)")]
    NoSource(PathBuf),
    #[error("cargo-auditable is not installed ({0}), and migrate is built with it (images.toml `migrate.auditable`)")]
    NoAuditable(String),
    #[error("building migrate: {0}")]
    Build(#[from] ProcessError),
    #[error("reading `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the migrate binary is not usable: {0}")]
    Check(#[from] binary::BinaryError),
    #[error(transparent)]
    Cache(#[from] crate::fetch::cache::CacheError),
}

impl MigrateBuildError {
    pub fn hint(&self) -> Option<String> {
        match self {
            MigrateBuildError::MissingTarget { target, .. } => {
                Some(format!("run `rustup target add {target}`"))
            }
            MigrateBuildError::NoSource(_) => Some(
                "run etcdimg from the etcdimg repository, or pass --migrate-binary PATH".into(),
            ),
            MigrateBuildError::NoAuditable(_) => Some(
                "install it (`cargo install --locked cargo-auditable`; scripts/install-deps.sh does), point ETCDIMG_CARGO_AUDITABLE at it, or set `migrate.auditable = false` to ship migrate without its crate list".into(),
            ),
            _ => None,
        }
    }
}

/// The migrate binary for the image.
pub struct MigrateBinary {
    pub bytes: Vec<u8>,
    pub sha256: String,
    /// sha256 over the source tree, its path dependencies and Cargo.lock (empty: prebuilt).
    pub source_sha256: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MigrateBuildError + '_ {
    move |source| MigrateBuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Extra rustc flags for a target: static linking everywhere, and paths remapped so the binary
/// does not depend on where the repository or cargo home is.
fn rustflags(arch: Arch, source_root: &Path) -> String {
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dirs::home_dir().unwrap_or_default().join(".cargo"));
    let mut flags = vec![
        "-C target-feature=+crt-static".to_string(),
        format!("--remap-path-prefix={}=/src", source_root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ];
    if arch == Arch::Arm64 {
        // aarch64-musl links statically with the bundled lld; no cross gcc needed.
        flags.push("-C linker=rust-lld".into());
    }
    flags.join(" ")
}

/// The cross linker a gnu target needs (Debian's cross gcc), as cargo's env var.
fn linker_env(arch: Arch) -> Option<(String, &'static str)> {
    let gcc = match arch {
        Arch::Ppc64le => "powerpc64le-linux-gnu-gcc",
        Arch::S390x => "s390x-linux-gnu-gcc",
        Arch::Arm => "arm-linux-gnueabihf-gcc",
        _ => return None,
    };
    let var = format!(
        "CARGO_TARGET_{}_LINKER",
        arch.rust_target().to_uppercase().replace('-', "_")
    );
    Some((var, gcc))
}

fn digest_tree(dir: &Path, out: &mut Vec<u8>) -> Result<(), MigrateBuildError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            digest_tree(&path, out)?;
        } else {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            out.extend_from_slice(path.to_string_lossy().as_bytes());
            out.push(0);
            out.extend_from_slice(sha256_hex(&bytes).as_bytes());
            out.push(b'\n');
        }
    }
    Ok(())
}

/// The directories of `path = "..."` dependencies in the crate's Cargo.toml.
fn path_dependencies(crate_dir: &Path) -> Result<Vec<PathBuf>, MigrateBuildError> {
    let manifest = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(io(&manifest))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.split("path = \"").nth(1) else {
            continue;
        };
        let Some(rel) = rest.split('"').next() else {
            continue;
        };
        let dir = crate_dir.join(rel);
        if dir.join("Cargo.toml").is_file() {
            out.push(dir.canonicalize().map_err(io(&dir))?);
        }
    }
    out.sort();
    Ok(out)
}

fn rustc_version() -> String {
    Cmd::new("rustc")
        .arg("-vV")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The workspace root above the migrate crate (where Cargo.lock is).
fn workspace_root(source_dir: &Path) -> PathBuf {
    let mut dir = source_dir.to_path_buf();
    while let Some(parent) = dir.parent() {
        if parent.join("Cargo.lock").is_file() {
            return parent.to_path_buf();
        }
        dir = parent.to_path_buf();
    }
    source_dir.to_path_buf()
}

/// cargo-auditable: `ETCDIMG_CARGO_AUDITABLE` (a path or a name on PATH), else
/// `cargo-auditable` on PATH.
fn cargo_auditable() -> Result<PathBuf, MigrateBuildError> {
    let wanted = std::env::var("ETCDIMG_CARGO_AUDITABLE")
        .ok()
        .filter(|v| !v.is_empty());
    let name = wanted.as_deref().unwrap_or("cargo-auditable");
    which::which(name).map_err(|_| {
        MigrateBuildError::NoAuditable(match &wanted {
            Some(v) => format!("ETCDIMG_CARGO_AUDITABLE={v} names no executable"),
            None => "no cargo-auditable on PATH".into(),
        })
    })
}

/// What [`migrate_binary`] needs, checked before a build does any work: the prebuilt binary, or
/// the crate to compile (and cargo-auditable when `auditable`).
pub fn check_inputs(
    source_dir: &Path,
    prebuilt: Option<&Path>,
    auditable: bool,
) -> Result<(), MigrateBuildError> {
    if prebuilt.is_none() && auditable {
        cargo_auditable()?;
    }
    match prebuilt {
        Some(path) if !path.is_file() => Err(MigrateBuildError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "--migrate-binary names no file",
            ),
        }),
        Some(_) => Ok(()),
        None if !source_dir.join("Cargo.toml").is_file() => {
            Err(MigrateBuildError::NoSource(source_dir.to_path_buf()))
        }
        None => Ok(()),
    }
}

pub fn migrate_binary(
    source_dir: &Path,
    prebuilt: Option<&Path>,
    auditable: bool,
    arch: Arch,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<MigrateBinary, MigrateBuildError> {
    if let Some(path) = prebuilt {
        let bytes = std::fs::read(path).map_err(io(path))?;
        binary::check_elf("migrate", &bytes, arch)?;
        let sha256 = sha256_hex(&bytes);
        return Ok(MigrateBinary {
            bytes,
            sha256,
            source_sha256: String::new(),
        });
    }
    if !source_dir.join("Cargo.toml").is_file() {
        return Err(MigrateBuildError::NoSource(source_dir.to_path_buf()));
    }
    let source_dir = source_dir.canonicalize().map_err(io(source_dir))?;
    let build = CargoBuild::new(&source_dir, arch, auditable)?;
    let (key, source_sha256) = build.cache_key()?;
    let _held = cache.lock(
        "migrate",
        &key,
        &format!("the migrate build for {arch}"),
        &|m| reporter.status("Waiting", m),
    )?;
    if let Some((bytes, sha256)) = cached(cache, &key)? {
        return Ok(MigrateBinary {
            bytes,
            sha256,
            source_sha256,
        });
    }
    let bytes = build.run(reporter)?;
    let sha256 = cache.put_bytes(&bytes)?;
    cache.put_ref("migrate", &key, &sha256)?;
    Ok(MigrateBinary {
        bytes,
        sha256,
        source_sha256,
    })
}

/// The binary the cache holds under `key`, if its bytes still match.
fn cached(cache: &Cache, key: &str) -> Result<Option<(Vec<u8>, String)>, MigrateBuildError> {
    let Some(hex) = cache.get_ref("migrate", key) else {
        return Ok(None);
    };
    let Some(path) = cache.get(hex.trim()) else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    Ok((sha256_hex(&bytes) == hex.trim()).then(|| (bytes, hex.trim().to_string())))
}

/// One cargo build of migrate for an arch: what it compiles, with which flags and driver.
struct CargoBuild<'a> {
    source_dir: &'a Path,
    root: PathBuf,
    arch: Arch,
    target: &'static str,
    flags: String,
    /// cargo-auditable and the sha256 of its bytes; None: plain cargo.
    auditable: Option<(PathBuf, String)>,
}

impl<'a> CargoBuild<'a> {
    fn new(source_dir: &'a Path, arch: Arch, auditable: bool) -> Result<Self, MigrateBuildError> {
        let root = workspace_root(source_dir);
        let flags = rustflags(arch, &root);
        // The tool that drives the build, by its bytes: a new cargo-auditable may embed
        // another format.
        let auditable = match auditable {
            true => {
                let tool = cargo_auditable()?;
                let bytes = std::fs::read(&tool).map_err(io(&tool))?;
                Some((tool, sha256_hex(&bytes)))
            }
            false => None,
        };
        Ok(CargoBuild {
            source_dir,
            root,
            arch,
            target: arch.rust_target(),
            flags,
            auditable,
        })
    }

    /// The cache key (sources, Cargo.lock, target, flags, compiler, driver) and the sha256 of
    /// the sources alone (what the provenance names).
    fn cache_key(&self) -> Result<(String, String), MigrateBuildError> {
        let driver = self
            .auditable
            .as_ref()
            .map_or("cargo".to_string(), |(_, sum)| {
                format!("cargo-auditable {sum}")
            });
        let mut key_input = format!(
            "migrate-build-v2\n{}\n{}\n{}\n{driver}\n",
            self.target,
            self.flags,
            rustc_version()
        )
        .into_bytes();
        // Paths in the key are relative to the workspace, so a moved checkout still hits the
        // cache.
        let mut tree = Vec::new();
        digest_tree(self.source_dir, &mut tree)?;
        // Local path dependencies (the shared crates) are sources of migrate too.
        for dep in path_dependencies(self.source_dir)? {
            digest_tree(&dep, &mut tree)?;
        }
        let tree = String::from_utf8_lossy(&tree).replace(&*self.root.to_string_lossy(), "");
        let mut source = tree.into_bytes();
        if let Ok(bytes) = std::fs::read(self.root.join("Cargo.lock")) {
            source.extend_from_slice(sha256_hex(&bytes).as_bytes());
        }
        let source_sha256 = sha256_hex(&source);
        key_input.extend_from_slice(&source);
        Ok((sha256_hex(&key_input), source_sha256))
    }

    /// Compiles migrate and returns its checked bytes.
    fn run(&self, reporter: &dyn Reporter) -> Result<Vec<u8>, MigrateBuildError> {
        let (arch, target) = (self.arch, self.target);
        let sysroot = Cmd::new("rustc").arg("--print").arg("sysroot").output()?;
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        if !sysroot.join("lib/rustlib").join(target).is_dir() {
            return Err(MigrateBuildError::MissingTarget {
                target: target.into(),
                arch,
            });
        }
        let how = if self.auditable.is_some() {
            ", cargo-auditable"
        } else {
            ""
        };
        reporter.status("Compiling", &format!("migrate for {arch} ({target}{how})"));
        // One target dir per driver: cargo's fingerprints do not see cargo-auditable (it works
        // through RUSTC_WORKSPACE_WRAPPER), so a shared one would hand a plain build's binary
        // to an auditable build, and the other way round.
        let target_dir = self.root.join(match self.auditable {
            Some(_) => "target/image-auditable",
            None => "target/image",
        });
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = match &self.auditable {
            // cargo's external subcommand protocol: the tool gets its own name first, and
            // runs the cargo of `CARGO`.
            Some((tool, _)) => Cmd::new(tool).arg("auditable").env("CARGO", &cargo),
            None => Cmd::new(&cargo),
        };
        cmd = cmd
            .args(["build", "--locked", "--profile", "image", "-p", "migrate"])
            .args(["--target", target])
            .arg("--manifest-path")
            .arg(self.source_dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .env("RUSTFLAGS", &self.flags)
            .env("SOURCE_DATE_EPOCH", "0");
        if let Some((var, gcc)) = linker_env(arch) {
            cmd = cmd.env(var, gcc);
        }
        cmd.output()?;
        let built = target_dir.join(target).join("image/migrate");
        let bytes = std::fs::read(&built).map_err(io(&built))?;
        binary::check_elf("migrate", &bytes, arch)?;
        Ok(bytes)
    }
}
