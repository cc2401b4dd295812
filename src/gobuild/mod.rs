//! Cross-compiles etcd from source for arches with `source = "build"`, without Docker unless
//! asked: a local Go toolchain (`--builder go`) or a `golang:<version>` container
//! (`--builder docker`), detected with `which` when not chosen.
//!
//! 1. recipe: what each etcd version needs: import path, GOPATH or module mode, the packages
//!    for etcd/etcdctl/etcdutl, where GitSHA is stamped. Upstream moved its build script
//!    (./build, ./build.sh, scripts/build.sh) and its module layout; the recipe follows the
//!    version instead of calling whichever script is there.
//! 2. source: `source::prepare`: git clone, tarball or local dir
//! 3. patches: `patch::apply` on private copies, handed to `go build -overlay`
//! 4. key: (version, arch, GOARM, Go version or image, mode, flags, patches, source); a hit in
//!    the cache compiles nothing
//! 5. compile: one `go build` per binary, in sequence (each already uses every core)
//! 6. verify: ELF machine/class/endianness, and under qemu-user `--version` must report the
//!    version and `linux/<goarch>`; only then do the binaries enter the cache

pub mod module;
pub mod patch;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::binary;
use crate::fetch::cache::{sha256_hex, Cache};
use crate::fetch::extract::Binary;
use crate::platform::Arch;
use crate::report::Reporter;
use hostio::process::{Cmd, ProcessError};
pub use source::SourceSpec;

/// Bumped when the way binaries are built changes, so that old cache entries are not reused.
const FORMAT: &str = "etcdimg-gobuild-v1";
pub const DEFAULT_GOLANG_VERSION: &str = "1.20.13";
pub const DEFAULT_SOURCE_REPO: &str = "https://github.com/etcd-io/etcd";

#[derive(Debug, thiserror::Error)]
pub enum GoBuildError {
    #[error("no Go builder: neither `go` nor `docker` is on PATH")]
    NoBuilder,
    #[error("`{0}` is not on PATH (--builder {0})")]
    Missing(&'static str),
    #[error("the local Go toolchain does not work: {0}")]
    Toolchain(ProcessError),
    #[error("etcd {version} cannot be built from this source: {message}")]
    Unsupported { version: Version, message: String },
    #[error("the source directory `{0}` does not exist")]
    NoSourceDir(PathBuf),
    #[error("{what}: {message}")]
    Fetch { what: String, message: String },
    #[error("the source tarball {url} has sha256 {actual}, expected {expected}")]
    SourceDigest {
        url: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Patch(#[from] patch::PatchError),
    #[error("compiling {binary} {version} for {arch} failed: {source}")]
    Compile {
        binary: String,
        version: Version,
        arch: Arch,
        source: ProcessError,
    },
    #[error("the {builder} builder produced no `{binary}` for etcd {version}")]
    NoOutput {
        builder: String,
        binary: String,
        version: Version,
    },
    #[error("the {binary} built for etcd {version}/{arch} failed its check: {source}")]
    Check {
        binary: String,
        version: Version,
        arch: Arch,
        source: binary::BinaryError,
    },
    #[error("reading `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] crate::fetch::cache::CacheError),
    #[error("`{module}@{version}` is not available from the Go module proxy ({proxy}): {message}")]
    ModuleUnavailable {
        module: String,
        version: String,
        proxy: String,
        message: String,
    },
    #[error("the etcd source tree does not match the module sums: {message}")]
    ModuleSum { message: String },
    #[error("the Go toolchain for etcd {version} ({dir}) is not usable: {source}")]
    ModuleToolchain {
        version: Version,
        dir: PathBuf,
        source: ProcessError,
    },
}

impl GoBuildError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            GoBuildError::NoBuilder => "install Go (Debian: apt-get install golang-go; or https://go.dev/dl) for --builder go, or Docker for --builder docker; or set the arch's source to \"release\" in images.toml".into(),
            GoBuildError::Toolchain(_) => "check `go env GOVERSION` by hand: GOTOOLCHAIN, where set, names the Go the go command runs (`local` is the one on PATH); or use --builder docker".into(),
            GoBuildError::Missing("go") => "install Go (Debian: apt-get install golang-go), or use --builder docker".into(),
            GoBuildError::Missing(_) => "install Docker, or use --builder go with a local Go toolchain".into(),
            GoBuildError::Unsupported { .. } => "see the [build.source.\"<V>\"] keys in the README's images.toml reference".into(),
            GoBuildError::NoSourceDir(_) => "fix [build.source.\"<V>\"] dir/gopath in images.toml".into(),
            GoBuildError::Fetch { .. } => "without network access, point [build.source.\"<V>\"] at a local `dir` (offline build)".into(),
            GoBuildError::SourceDigest { .. } => "the tarball changed or the pin is wrong; check [build.source.\"<V>\"] sha256".into(),
            GoBuildError::Patch(_) => "fix or remove the patch under patches/<V>/ (files apply in name order with `patch -p1`)".into(),
            GoBuildError::Compile { .. } => "the Go compiler's output is above; a newer Go may be needed for this etcd version (golang_version / a newer local Go)".into(),
            GoBuildError::Check { .. } => "the compiled binary is not what it should be; check the patches and the Go toolchain".into(),
            GoBuildError::ModuleUnavailable { module, version, .. } => format!("check that your proxy serves it: `go mod download -json {module}@{version}`; an air-gapped proxy (Athens, Artifactory, a GOPROXY=file:// directory) needs etcd's modules of that version and their dependencies; or take the release tarball (source = \"release\")"),
            GoBuildError::ModuleSum { .. } => "the module cache may be damaged: run `go clean -modcache` (or check it with `go mod verify`), then build again".into(),
            GoBuildError::ModuleToolchain { .. } => "the release's go.mod names the Go it needs (`go` and `toolchain` lines); GOTOOLCHAIN decides which Go builds it: `local` (the Go on PATH), `auto` (etcd's own choice, downloaded through GOPROXY) or a version such as `go1.27.3`".into(),
            _ => return None,
        })
    }
}

/// Which builder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuilderChoice {
    #[default]
    Auto,
    Go,
    Docker,
}

impl std::str::FromStr for BuilderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BuilderChoice::Auto),
            "go" => Ok(BuilderChoice::Go),
            "docker" => Ok(BuilderChoice::Docker),
            other => Err(format!(
                "unknown builder `{other}`, expected `auto`, `go` or `docker`"
            )),
        }
    }
}

/// The cross-build settings, resolved from images.toml, env and flags.
#[derive(Debug, Clone)]
pub struct GoBuildSettings {
    pub builder: BuilderChoice,
    pub golang_version: String,
    /// The Go every compile uses (`go1.27.3`): GOTOOLCHAIN for the local go command (which
    /// fetches that toolchain through GOPROXY), the golang image's tag for docker. None: the
    /// Go on PATH as the user's environment resolves it.
    pub go_toolchain: Option<String>,
    /// Module builds strip the symbol table as etcd's release builds do (`-s -w`); false keeps
    /// it, so that govulncheck can tell which vulnerable symbols are called.
    pub strip: bool,
    pub source_repo: String,
    pub patches_dir: PathBuf,
    pub sources: BTreeMap<Version, SourceSpec>,
}

impl GoBuildSettings {
    /// `version`'s source: its `[build.source."<V>"]` entry, else what the arch's `source`
    /// says (`module`: the Go modules; `build`: a clone of `source_repo`).
    pub fn source_for(&self, version: &Version, kind: crate::config::Source) -> SourceSpec {
        self.sources.get(version).cloned().unwrap_or_else(|| {
            if kind == crate::config::Source::Module {
                SourceSpec::Module
            } else {
                SourceSpec::Git {
                    repo: self.source_repo.clone(),
                    gopath: None,
                }
            }
        })
    }
}

/// A resolved builder.
#[derive(Debug, Clone)]
pub enum Builder {
    /// `toolchain`: GOTOOLCHAIN for every go command of a compile (the chosen Go).
    Go {
        go: PathBuf,
        version: String,
        toolchain: Option<String>,
        /// GOROOT of the Go that compiles (`GOTOOLCHAIN` applied): its `bin/go` is hashed
        /// into the build record.
        goroot: PathBuf,
    },
    Docker {
        docker: PathBuf,
        image: String,
    },
}

impl Builder {
    /// The builder `choice` asks for; with `toolchain` (`go1.27.3`), the local go command
    /// runs that Go (GOTOOLCHAIN; fetched now, so a Go that cannot be had fails before any
    /// compile) and docker runs `golang:1.27.3`.
    pub fn detect(
        choice: BuilderChoice,
        golang_version: &str,
        toolchain: Option<&str>,
    ) -> Result<Builder, GoBuildError> {
        let go = || -> Result<Builder, GoBuildError> {
            let go = which::which("go").map_err(|_| GoBuildError::Missing("go"))?;
            let mut cmd = Cmd::new(&go).args(["env", "GOVERSION", "GOROOT"]);
            if let Some(t) = toolchain {
                cmd = cmd.env("GOTOOLCHAIN", t);
            }
            let out = cmd
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .map_err(GoBuildError::Toolchain)?;
            let mut lines = out.lines().map(str::trim);
            let version = lines.next().unwrap_or("").to_string();
            let goroot = PathBuf::from(lines.next().unwrap_or(""));
            Ok(Builder::Go {
                go,
                version,
                toolchain: toolchain.map(str::to_string),
                goroot,
            })
        };
        let docker = || -> Result<Builder, GoBuildError> {
            let docker = which::which("docker").map_err(|_| GoBuildError::Missing("docker"))?;
            let tag = toolchain
                .map(|t| t.trim_start_matches("go").to_string())
                .unwrap_or_else(|| golang_version.to_string());
            Ok(Builder::Docker {
                docker,
                image: format!("golang:{tag}"),
            })
        };
        match choice {
            BuilderChoice::Go => go(),
            BuilderChoice::Docker => docker(),
            // A Go on PATH that does not work (say, GOTOOLCHAIN names a Go that cannot be had)
            // is reported, not passed over for docker.
            BuilderChoice::Auto if which::which("go").is_ok() => go(),
            BuilderChoice::Auto => docker().map_err(|_| GoBuildError::NoBuilder),
        }
    }

    /// What goes into the cache key: the toolchain's identity.
    pub fn identity(&self) -> String {
        match self {
            Builder::Go { version, .. } => format!("go {version}"),
            Builder::Docker { image, .. } => format!("docker {image}"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Builder::Go { .. } => "go",
            Builder::Docker { .. } => "docker",
        }
    }
}

/// How one binary is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: &'static str,
    /// Module mode: the directory (relative to the source root) to run `go build .` in.
    pub module_dir: &'static str,
    /// GOPATH mode: the import path to build.
    pub package: String,
}

/// What a version needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub import_path: &'static str,
    /// The package whose `GitSHA` is stamped with `-X`.
    pub version_pkg: &'static str,
    pub gopath_mode: bool,
    pub module_mode: bool,
    pub targets: Vec<Target>,
}

pub fn recipe(version: &Version) -> Result<Recipe, GoBuildError> {
    let (major, minor) = (version.major, version.minor);
    if major != 3 {
        return Err(GoBuildError::Unsupported {
            version: version.clone(),
            message: "only etcd 3.x is built from source".into(),
        });
    }
    Ok(match minor {
        // github.com/coreos/etcd with vendored dependencies; GOPATH only.
        0..=3 => {
            let ip = "github.com/coreos/etcd";
            Recipe {
                import_path: ip,
                version_pkg: "github.com/coreos/etcd/version",
                gopath_mode: true,
                module_mode: false,
                targets: vec![
                    Target {
                        name: "etcd",
                        module_dir: ".",
                        package: ip.into(),
                    },
                    Target {
                        name: "etcdctl",
                        module_dir: "etcdctl",
                        package: format!("{ip}/etcdctl"),
                    },
                ],
            }
        }
        // go.etcd.io/etcd, one module (go.mod at the root); GOPATH mode works too (Debian).
        4 => {
            let ip = "go.etcd.io/etcd";
            Recipe {
                import_path: ip,
                version_pkg: "go.etcd.io/etcd/version",
                gopath_mode: true,
                module_mode: true,
                targets: vec![
                    Target {
                        name: "etcd",
                        module_dir: ".",
                        package: ip.into(),
                    },
                    Target {
                        name: "etcdctl",
                        module_dir: "etcdctl",
                        package: format!("{ip}/etcdctl"),
                    },
                ],
            }
        }
        // 3.5+: one module per binary (server/, etcdctl/, etcdutl/); module mode only.
        _ => Recipe {
            import_path: "go.etcd.io/etcd",
            version_pkg: "go.etcd.io/etcd/api/v3/version",
            gopath_mode: false,
            module_mode: true,
            targets: vec![
                Target {
                    name: "etcd",
                    module_dir: "server",
                    package: "go.etcd.io/etcd/server/v3".into(),
                },
                Target {
                    name: "etcdctl",
                    module_dir: "etcdctl",
                    package: "go.etcd.io/etcd/etcdctl/v3".into(),
                },
                Target {
                    name: "etcdutl",
                    module_dir: "etcdutl",
                    package: "go.etcd.io/etcd/etcdutl/v3".into(),
                },
            ],
        },
    })
}

/// The `go build` flags of a source tree, identical for both builders.
pub fn go_flags(recipe: &Recipe, git_sha: &str) -> Vec<String> {
    vec![
        "-trimpath".into(),
        "-ldflags".into(),
        format!("-X {}.GitSHA={git_sha}", recipe.version_pkg),
    ]
}

/// The `go build` flags of a module build: exactly those of etcd's release builds
/// (`scripts/build-binary.sh` sets `GO_LDFLAGS="-s -w"`, `scripts/build_lib.sh` adds
/// `-trimpath -installsuffix=cgo` and the GitSHA), plus `-mod=readonly`: every dependency at
/// the version and sum of the release's go.sum, nothing resolved anew. `strip: false` leaves
/// out `-s -w`: the symbol table stays, which govulncheck needs to tell called code from
/// merely linked code (the binaries grow by about a third).
pub fn module_flags(recipe: &Recipe, git_sha: &str, strip: bool) -> Vec<String> {
    let strip = if strip { "-s -w " } else { "" };
    vec![
        "-mod=readonly".into(),
        "-trimpath".into(),
        "-installsuffix=cgo".into(),
        format!("-ldflags={strip}-X={}.GitSHA={git_sha}", recipe.version_pkg),
    ]
}

/// How the compile's environment treats the user's Go settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoMode {
    /// GOPATH mode (`GO111MODULE=off`, GOPATH set).
    Gopath,
    /// A source tree in module mode; GOFLAGS cleared (the tree's own build, nothing else).
    Tree,
    /// The release's modules: GOFLAGS, GOPROXY, GOSUMDB, GOTOOLCHAIN... stay the user's, and
    /// no go.work above the tree applies (`GOWORK=off`).
    Modules,
}

/// The environment every compile gets.
pub fn go_env(arch: Arch, gopath: Option<&str>) -> Vec<(String, String)> {
    go_env_for(
        arch,
        gopath,
        if gopath.is_some() {
            GoMode::Gopath
        } else {
            GoMode::Tree
        },
    )
}

/// [`go_env`] for a [`GoMode`].
pub fn go_env_for(arch: Arch, gopath: Option<&str>, mode: GoMode) -> Vec<(String, String)> {
    let mut env = vec![
        ("GOOS".to_string(), "linux".to_string()),
        ("GOARCH".to_string(), arch.name().to_string()),
        ("CGO_ENABLED".to_string(), "0".to_string()),
        (
            "GO111MODULE".to_string(),
            if mode == GoMode::Gopath { "off" } else { "on" }.to_string(),
        ),
    ];
    match mode {
        GoMode::Modules => env.push(("GOWORK".to_string(), "off".to_string())),
        _ => env.push(("GOFLAGS".to_string(), String::new())),
    }
    if arch == Arch::Arm {
        env.push(("GOARM".to_string(), "7".to_string()));
    }
    if let Some(g) = gopath {
        env.push(("GOPATH".to_string(), g.to_string()));
    }
    env
}

/// Everything one compile needs, independent of the builder.
pub struct Job<'a> {
    pub recipe: &'a Recipe,
    pub target: &'a Target,
    pub arch: Arch,
    pub root: &'a Path,
    /// GOPATH mode: the GOPATH entries (the first holds `root`); empty in module mode.
    pub gopath: &'a [PathBuf],
    pub overlay: Option<&'a Path>,
    pub out_dir: &'a Path,
    /// The `go build` flags ([`go_flags`] or [`module_flags`]).
    pub flags: &'a [String],
    /// The release's modules ([`GoMode::Modules`]) rather than a source tree.
    pub modules: bool,
}

/// Where the docker builder mounts GOPATH entry `i`.
fn container_gopath(i: usize) -> String {
    if i == 0 {
        "/gopath".into()
    } else {
        format!("/gopath{i}")
    }
}

/// The command for one compile. Pure: the docker test checks exactly this.
pub fn command(builder: &Builder, job: &Job<'_>) -> Cmd {
    let flags = job.flags;
    let gopath_mode = !job.gopath.is_empty();
    let mode = if gopath_mode {
        GoMode::Gopath
    } else if job.modules {
        GoMode::Modules
    } else {
        GoMode::Tree
    };
    let package = if gopath_mode {
        job.target.package.clone()
    } else {
        ".".to_string()
    };
    match builder {
        Builder::Go { go, toolchain, .. } => {
            let mut cmd = Cmd::new(go).arg("build").args(flags);
            if let Some(t) = toolchain {
                cmd = cmd.env("GOTOOLCHAIN", t);
            }
            if let Some(o) = job.overlay {
                cmd = cmd.arg("-overlay").arg(o);
            }
            cmd = cmd
                .arg("-o")
                .arg(job.out_dir.join(job.target.name))
                .arg(package);
            let gopath = std::env::join_paths(job.gopath)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            for (k, v) in go_env_for(job.arch, gopath_mode.then_some(gopath.as_str()), mode) {
                cmd = cmd.env(k, v);
            }
            cmd.current_dir(&if gopath_mode {
                job.root.to_path_buf()
            } else {
                job.root.join(job.target.module_dir)
            })
        }
        Builder::Docker { docker, image } => {
            // The source is mounted read-only where the import path says (GOPATH mode: every
            // GOPATH entry), the output dir read-write, the overlay files read-only.
            let mut cmd = Cmd::new(docker).args(["run", "--rm"]);
            let workdir = if gopath_mode {
                for (i, g) in job.gopath.iter().enumerate() {
                    cmd = cmd
                        .arg("-v")
                        .arg(format!("{}:{}:ro", g.display(), container_gopath(i)));
                }
                let rel = job.root.strip_prefix(&job.gopath[0]).unwrap_or(job.root);
                Path::new("/gopath").join(rel)
            } else {
                cmd = cmd.arg("-v").arg(format!("{}:/src:ro", job.root.display()));
                Path::new("/src").join(job.target.module_dir)
            };
            cmd = cmd.arg("-v").arg(format!("{}:/out", job.out_dir.display()));
            if let Some(o) = job.overlay {
                let dir = o.parent().unwrap_or(o);
                cmd = cmd.arg("-v").arg(format!("{}:/overlay:ro", dir.display()));
            }
            let container: Vec<String> = (0..job.gopath.len()).map(container_gopath).collect();
            let joined = container.join(":");
            for (k, v) in go_env_for(job.arch, gopath_mode.then_some(joined.as_str()), mode) {
                cmd = cmd.arg("-e").arg(format!("{k}={v}"));
            }
            cmd = cmd
                .arg("-w")
                .arg(&workdir)
                .arg(image)
                .args(["go", "build"])
                .args(flags);
            if job.overlay.is_some() {
                cmd = cmd.args(["-overlay", "/overlay/overlay-docker.json"]);
            }
            cmd.arg("-o")
                .arg(format!("/out/{}", job.target.name))
                .arg(package)
        }
    }
}

/// Writes the overlay files for the patched sources: `overlay.json` with host paths and
/// `overlay-docker.json` with the paths the docker builder mounts.
fn write_overlay(
    patched: &patch::Patched,
    root: &Path,
    gopath: Option<&Path>,
    work: &Path,
) -> Result<PathBuf, GoBuildError> {
    // `gopath` is the first GOPATH entry (the one holding `root`), mounted at /gopath.
    let mut host = serde_json::Map::new();
    let mut docker = serde_json::Map::new();
    for (rel, file) in &patched.files {
        let original = root.join(rel);
        let container_original = match gopath {
            Some(g) => Path::new("/gopath").join(original.strip_prefix(g).unwrap_or(&original)),
            None => Path::new("/src").join(rel),
        };
        let (h, d) = match file {
            Some(f) => (
                serde_json::Value::String(f.display().to_string()),
                serde_json::Value::String(
                    Path::new("/overlay")
                        .join(f.strip_prefix(work).unwrap_or(f))
                        .display()
                        .to_string(),
                ),
            ),
            None => (
                serde_json::Value::String(String::new()),
                serde_json::Value::String(String::new()),
            ),
        };
        host.insert(original.display().to_string(), h);
        docker.insert(container_original.display().to_string(), d);
    }
    let path = work.join("overlay.json");
    let write = |p: &Path, m: serde_json::Map<String, serde_json::Value>| {
        std::fs::write(p, serde_json::json!({ "Replace": m }).to_string()).map_err(|source| {
            GoBuildError::Io {
                path: p.to_path_buf(),
                source,
            }
        })
    };
    write(&path, host)?;
    write(&work.join("overlay-docker.json"), docker)?;
    Ok(path)
}

/// What a compile (or cache hit) reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileReport {
    /// What was compiled, how and from what (kept in the release report).
    #[serde(flatten)]
    pub build: crate::release::Compile,
    pub arch: String,
    /// False when the cache had the binaries (nothing compiled).
    pub compiled: bool,
    pub seconds: f64,
}

/// Built (or cached) binaries for one version and arch.
pub struct BuiltEtcd {
    pub version: Version,
    pub binaries: Vec<Binary>,
    pub report: CompileReport,
}

#[derive(Serialize, Deserialize)]
struct CacheRecord {
    /// binary name -> hex digest of its blob.
    binaries: BTreeMap<String, String>,
    report: CompileReport,
}

fn load_cached(cache: &Cache, key: &str) -> Option<(Vec<Binary>, CompileReport)> {
    let record: CacheRecord = serde_json::from_str(&cache.get_ref("gobuild", key)?).ok()?;
    let mut binaries = Vec::new();
    for (name, hex) in &record.binaries {
        let bytes = std::fs::read(cache.get(hex)?).ok()?;
        if sha256_hex(&bytes) != *hex {
            return None;
        }
        binaries.push(Binary {
            name: name.clone(),
            bytes,
        });
    }
    Some((binaries, record.report))
}

/// Everything one compile is a function of, resolved before it starts: the recipe, the
/// prepared source, the patches, the toolchain, the flags, and the cache key over all of them.
pub struct Inputs {
    pub version: Version,
    pub arch: Arch,
    recipe: Recipe,
    spec: SourceSpec,
    prepared: source::Prepared,
    patches: patch::Patches,
    flags: Vec<String>,
    goarm: Option<String>,
    /// `gopath`, `module` (a tree in module mode) or `modules` (the release's Go modules).
    mode: &'static str,
    /// What built it: `go go1.26.8` (for modules, as GOTOOLCHAIN resolved it in the tree).
    toolchain: String,
    /// sha256 of that Go's `go` command (empty for the docker builder).
    toolchain_sha256: String,
    pub key: String,
}

/// Builds (or takes from the cache) every version of `versions` for `arch`: all of them
/// [`resolve`]d first, so that a version its source cannot give (a module the proxy does not
/// serve, a missing tag) fails before anything is compiled; then each [`build_resolved`], in
/// sequence (each `go build` already uses every core).
#[allow(clippy::too_many_arguments)]
pub async fn build_versions(
    settings: &GoBuildSettings,
    builder: &Builder,
    versions: &[Version],
    arch: Arch,
    kind: crate::config::Source,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<BuiltEtcd>, (Version, GoBuildError)> {
    let mut resolved = Vec::new();
    for version in versions {
        let inputs = resolve(settings, builder, version, arch, kind, cache, &*reporter)
            .await
            .map_err(|e| (version.clone(), e))?;
        resolved.push(inputs);
    }
    let mut built = Vec::new();
    for inputs in resolved {
        let version = inputs.version.clone();
        let b = build_resolved(settings, builder, inputs, cache, reporter.clone())
            .await
            .map_err(|e| (version.clone(), e))?;
        if !b.report.compiled {
            reporter.status(
                "Cached",
                &format!(
                    "etcd {version} for {arch} (compiled earlier, key {})",
                    &b.report.build.key[..12]
                ),
            );
        }
        built.push(b);
    }
    Ok(built)
}

/// Builds (or takes from the cache) etcd `version` for `arch`: [`resolve`], then
/// [`build_resolved`].
pub async fn build_etcd(
    settings: &GoBuildSettings,
    builder: &Builder,
    version: &Version,
    arch: Arch,
    kind: crate::config::Source,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<BuiltEtcd, GoBuildError> {
    let inputs = resolve(settings, builder, version, arch, kind, cache, &*reporter).await?;
    build_resolved(settings, builder, inputs, cache, reporter).await
}

/// Compiles resolved inputs: wait for any other process compiling the same key, reuse its
/// result or compile each binary into a private work dir, check each (ELF, `--version`), and
/// only then store them in the cache.
pub async fn build_resolved(
    settings: &GoBuildSettings,
    builder: &Builder,
    inputs: Inputs,
    cache: &Cache,
    reporter: Arc<dyn Reporter>,
) -> Result<BuiltEtcd, GoBuildError> {
    let started = Instant::now();
    let (version, arch) = (inputs.version.clone(), inputs.arch);
    // Another process compiling the same thing into this cache: wait for it, then reuse.
    let _held = cache
        .lock(
            "gobuild",
            &inputs.key,
            &format!("the compile of etcd {version} for {arch}"),
            &|m| reporter.status("Waiting", m),
        )
        .map_err(GoBuildError::from)?;
    if let Some((binaries, mut report)) = load_cached(cache, &inputs.key) {
        report.compiled = false;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(BuiltEtcd {
            version,
            binaries,
            report,
        });
    }
    let work = work_dir(cache)?;
    let overlay = patch_overlay(settings, &inputs, &version, work.path(), &*reporter)?;
    let out_dir = work.path().join("out");
    std::fs::create_dir_all(&out_dir).map_err(|source| GoBuildError::Io {
        path: out_dir.clone(),
        source,
    })?;
    let binaries = compile_all(
        builder,
        &inputs,
        &version,
        arch,
        overlay.as_deref(),
        &out_dir,
        reporter,
    )
    .await?;
    let report = compile_report(builder, &inputs, &version, arch, started);
    store(cache, &inputs.key, &binaries, &report)?;
    Ok(BuiltEtcd {
        version,
        binaries,
        report,
    })
}

/// GOPATH mode for etcd before 3.5 only, module mode for 3.4 and later.
fn check_build_mode(
    recipe: &Recipe,
    version: &Version,
    gopath_mode: bool,
) -> Result<(), GoBuildError> {
    if gopath_mode && !recipe.gopath_mode {
        return Err(GoBuildError::Unsupported {
            version: version.clone(),
            message: "etcd 3.5 and later are several Go modules and cannot build in GOPATH mode; drop `gopath`".into(),
        });
    }
    if !gopath_mode && !recipe.module_mode {
        return Err(GoBuildError::Unsupported {
            version: version.clone(),
            message: format!("etcd before 3.4 builds in GOPATH mode only: set [build.source.\"{version}\"] dir = \"<GOPATH>/src/{}\" and gopath = \"<GOPATH>\"", recipe.import_path),
        });
    }
    Ok(())
}

/// In GOPATH mode the source must sit at its import path under the GOPATH.
fn check_gopath_root(
    prepared: &source::Prepared,
    recipe: &Recipe,
    version: &Version,
) -> Result<(), GoBuildError> {
    if let Some(g) = prepared.gopath.first() {
        let expected = g.join("src").join(recipe.import_path);
        if prepared.root != expected {
            return Err(GoBuildError::Unsupported {
                version: version.clone(),
                message: format!(
                    "in GOPATH mode the source must be at {} (its import path), not {}",
                    expected.display(),
                    prepared.root.display()
                ),
            });
        }
    }
    Ok(())
}

/// The recipe for `version`, the source prepared (fetched, unpacked or assembled from
/// modules, checked against its mode), the patches listed, the toolchain, and the cache key.
/// Nothing is compiled: a run resolves every version first, so that a version the source
/// cannot give fails before the first compile.
pub async fn resolve(
    settings: &GoBuildSettings,
    builder: &Builder,
    version: &Version,
    arch: Arch,
    kind: crate::config::Source,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<Inputs, GoBuildError> {
    let recipe = recipe(version)?;
    let spec = settings.source_for(version, kind);
    let gopath_mode = spec.gopath().is_some();
    check_build_mode(&recipe, version, gopath_mode)?;
    let modules = spec == SourceSpec::Module;
    let prepared = source::prepare(&spec, version, &recipe, builder, cache, reporter).await?;
    check_gopath_root(&prepared, &recipe, version)?;
    let patches = patch::list(&settings.patches_dir, &version.to_string())?;
    let git_sha = prepared
        .commit
        .as_deref()
        .map(|c| c[..c.len().min(7)].to_string())
        .unwrap_or_else(|| "GitNotFound".into());
    let flags = if modules {
        module_flags(&recipe, &git_sha, settings.strip)
    } else {
        go_flags(&recipe, &git_sha)
    };
    let goarm = (arch == Arch::Arm).then(|| "7".to_string());
    let mode = match (gopath_mode, modules) {
        (true, _) => "gopath",
        (false, false) => "module",
        (false, true) => "modules",
    };
    let (toolchain, toolchain_key, toolchain_digest) = if modules {
        module_toolchain(builder, &prepared.root, &recipe, version, arch)?
    } else {
        let digest = match builder {
            Builder::Go { goroot, .. } => toolchain_sha256(goroot),
            Builder::Docker { .. } => String::new(),
        };
        (builder.identity(), builder.identity(), digest)
    };
    let key = sha256_hex(
        [
            FORMAT,
            &version.to_string(),
            arch.name(),
            goarm.as_deref().unwrap_or(""),
            &toolchain_key,
            mode,
            &flags.join(" "),
            &patches.digest,
            &prepared.identity,
        ]
        .join("\n")
        .as_bytes(),
    );
    Ok(Inputs {
        version: version.clone(),
        arch,
        recipe,
        spec,
        prepared,
        patches,
        flags,
        goarm,
        mode,
        toolchain,
        toolchain_sha256: toolchain_digest,
        key,
    })
}

/// The Go that builds a module tree, as the go command resolves it in the tree with the
/// user's environment (GOTOOLCHAIN may pick another Go than the one on PATH, or refuse when
/// the go.mod needs a newer one), and the settings of it that change the bytes it writes
/// (GOFLAGS, GOEXPERIMENT, the arch's microarchitecture level): (shown, cache key part).
fn module_toolchain(
    builder: &Builder,
    root: &Path,
    recipe: &Recipe,
    version: &Version,
    arch: Arch,
) -> Result<(String, String, String), GoBuildError> {
    let Builder::Go { go, toolchain, .. } = builder else {
        return Err(GoBuildError::Unsupported {
            version: version.clone(),
            message: "the Go-module source builds with the local Go toolchain (--builder go): GOPROXY, GOSUMDB and the module cache are the host's".into(),
        });
    };
    let dir = root.join(recipe.targets[0].module_dir);
    let vars = [
        "GOVERSION",
        "GOFLAGS",
        "GOEXPERIMENT",
        "GOAMD64",
        "GOARM64",
        "GOPPC64",
        "GOARM",
    ];
    let mut cmd = Cmd::new(go)
        .arg("env")
        .args(vars)
        .arg("GOROOT")
        .current_dir(&dir);
    for (k, v) in go_env_for(arch, None, GoMode::Modules) {
        cmd = cmd.env(k, v);
    }
    if let Some(t) = toolchain {
        cmd = cmd.env("GOTOOLCHAIN", t);
    }
    if arch == Arch::Arm {
        cmd = cmd.env("GOARM", "7");
    }
    let out = cmd
        .output()
        .map_err(|source| GoBuildError::ModuleToolchain {
            version: version.clone(),
            dir: dir.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let values: Vec<&str> = text.lines().collect();
    let goversion = values.first().copied().unwrap_or("").trim().to_string();
    let key = vars
        .iter()
        .zip(values.iter())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    // GOROOT is where the Go lives, not what it writes: out of the key.
    let goroot = PathBuf::from(values.get(vars.len()).copied().unwrap_or("").trim());
    Ok((format!("go {goversion}"), key, toolchain_sha256(&goroot)))
}

/// sha256 of the `go` command of a GOROOT (empty when it cannot be read): the toolchain's
/// digest in the build record and the provenance.
fn toolchain_sha256(goroot: &Path) -> String {
    std::fs::read(goroot.join("bin/go"))
        .map(|b| sha256_hex(&b))
        .unwrap_or_default()
}

/// A private work dir under the cache's `tmp/` (same filesystem; removed when dropped).
fn work_dir(cache: &Cache) -> Result<tempfile::TempDir, GoBuildError> {
    let t = cache.root().join("tmp");
    std::fs::create_dir_all(&t).map_err(|source| GoBuildError::Io {
        path: t.clone(),
        source,
    })?;
    tempfile::Builder::new()
        .prefix("gobuild-")
        .tempdir_in(&t)
        .map_err(|source| GoBuildError::Io { path: t, source })
}

/// The patches applied into `work` and the `go build -overlay` file naming them; `None`
/// without patches. The source tree itself is never modified.
fn patch_overlay(
    settings: &GoBuildSettings,
    inputs: &Inputs,
    version: &Version,
    work: &Path,
    reporter: &dyn Reporter,
) -> Result<Option<PathBuf>, GoBuildError> {
    let patches = &inputs.patches;
    if patches.files.is_empty() {
        return Ok(None);
    }
    reporter.status(
        "Patching",
        &format!(
            "etcd {version}: {} patch(es) from {}",
            patches.files.len(),
            settings.patches_dir.join(version.to_string()).display()
        ),
    );
    let root = &inputs.prepared.root;
    let patched = patch::apply(patches, root, &version.to_string(), work)?;
    Ok(Some(write_overlay(
        &patched,
        root,
        inputs.prepared.gopath.first().map(PathBuf::as_path),
        work,
    )?))
}

/// Compiles each of the recipe's binaries into `out_dir`, one at a time (each `go build`
/// already uses every core), checking each while the next compiles. Returns them only when
/// all passed.
async fn compile_all(
    builder: &Builder,
    inputs: &Inputs,
    version: &Version,
    arch: Arch,
    overlay: Option<&Path>,
    out_dir: &Path,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<Binary>, GoBuildError> {
    let joined = |e: tokio::task::JoinError| GoBuildError::Io {
        path: out_dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let prepared = &inputs.prepared;
    let mut checks = Vec::new();
    for target in &inputs.recipe.targets {
        if inputs.mode != "gopath" && !prepared.root.join(target.module_dir).is_dir() {
            if target.name == "etcdutl" {
                continue;
            }
            return Err(GoBuildError::Unsupported {
                version: version.clone(),
                message: format!("the source has no `{}` directory", target.module_dir),
            });
        }
        let job = Job {
            recipe: &inputs.recipe,
            target,
            arch,
            root: &prepared.root,
            gopath: &prepared.gopath,
            overlay,
            out_dir,
            flags: &inputs.flags,
            modules: inputs.mode == "modules",
        };
        let cmd = command(builder, &job);
        reporter.status(
            "Compiling",
            &format!(
                "{} {version} for {arch} ({}, {})",
                target.name, inputs.toolchain, inputs.mode
            ),
        );
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(joined)?
            .map_err(|source| GoBuildError::Compile {
                binary: target.name.into(),
                version: version.clone(),
                arch,
                source,
            })?;
        let bytes =
            std::fs::read(out_dir.join(target.name)).map_err(|_| GoBuildError::NoOutput {
                builder: builder.name().into(),
                binary: target.name.into(),
                version: version.clone(),
            })?;
        let (name, v, r) = (target.name.to_string(), version.clone(), reporter.clone());
        checks.push(tokio::task::spawn_blocking(move || {
            check_built(name, bytes, arch, &v, &*r)
        }));
    }
    let mut binaries = Vec::new();
    for c in checks {
        binaries.push(c.await.map_err(joined)??);
    }
    Ok(binaries)
}

/// A compiled binary's checks: its ELF header is for `arch`, and `--version` (under qemu for
/// a foreign arch, where qemu-user is installed) says `version`.
fn check_built(
    name: String,
    bytes: Vec<u8>,
    arch: Arch,
    version: &Version,
    reporter: &dyn Reporter,
) -> Result<Binary, GoBuildError> {
    let check = |source| GoBuildError::Check {
        binary: name.clone(),
        version: version.clone(),
        arch,
        source,
    };
    binary::check_elf(&name, &bytes, arch).map_err(check)?;
    if binary::check_version(&name, &bytes, arch, version).map_err(check)?
        == binary::VersionCheck::Skipped
    {
        reporter.warn(&format!(
            "cannot run {arch} binaries here (install qemu-user-static); checked the built `{name}` {version} by ELF header only"
        ));
    }
    Ok(Binary { name, bytes })
}

fn compile_report(
    builder: &Builder,
    inputs: &Inputs,
    version: &Version,
    arch: Arch,
    started: Instant,
) -> CompileReport {
    CompileReport {
        build: crate::release::Compile {
            version: version.to_string(),
            builder: builder.name().into(),
            toolchain: inputs.toolchain.clone(),
            toolchain_sha256: inputs.toolchain_sha256.clone(),
            goarm: inputs.goarm.clone(),
            mode: inputs.mode.into(),
            flags: inputs.flags.clone(),
            source: inputs.spec.to_string(),
            modules: inputs
                .prepared
                .modules
                .iter()
                .map(|m| crate::release::GoModule {
                    path: m.path.clone(),
                    version: m.version.clone(),
                    sum: m.sum.clone(),
                    dir: m.dir.clone(),
                })
                .collect(),
            patches: inputs
                .patches
                .files
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect(),
            key: inputs.key.clone(),
        },
        arch: arch.to_string(),
        compiled: true,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The binaries' blobs, then the record naming them (the record last: a reader never sees
/// a record whose blobs are missing).
fn store(
    cache: &Cache,
    key: &str,
    binaries: &[Binary],
    report: &CompileReport,
) -> Result<(), GoBuildError> {
    let mut record = CacheRecord {
        binaries: BTreeMap::new(),
        report: report.clone(),
    };
    for b in binaries {
        record
            .binaries
            .insert(b.name.clone(), cache.put_bytes(&b.bytes)?);
    }
    cache.put_ref(
        "gobuild",
        key,
        &serde_json::to_string(&record).expect("serialisable"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn recipes_follow_the_version() {
        let r = recipe(&v("3.3.25")).unwrap();
        assert_eq!(r.import_path, "github.com/coreos/etcd");
        assert!(r.gopath_mode && !r.module_mode);
        let r = recipe(&v("3.4.23")).unwrap();
        assert_eq!(r.targets[1].package, "go.etcd.io/etcd/etcdctl");
        assert_eq!(r.version_pkg, "go.etcd.io/etcd/version");
        let r = recipe(&v("3.6.0")).unwrap();
        assert_eq!(r.targets[0].module_dir, "server");
        assert_eq!(r.version_pkg, "go.etcd.io/etcd/api/v3/version");
        assert_eq!(r.targets.len(), 3);
        assert!(recipe(&v("2.3.7")).is_err());
    }

    #[test]
    fn arm_gets_goarm_7_and_gopath_mode_turns_modules_off() {
        let env = go_env(Arch::Arm, None);
        assert!(env.contains(&("GOARM".into(), "7".into())));
        assert!(env.contains(&("GO111MODULE".into(), "on".into())));
        let env = go_env(Arch::Ppc64le, Some("/usr/share/gocode"));
        assert!(!env.iter().any(|(k, _)| k == "GOARM"));
        assert!(env.contains(&("GO111MODULE".into(), "off".into())));
        assert!(env.contains(&("CGO_ENABLED".into(), "0".into())));
    }
}
