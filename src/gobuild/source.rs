//! The etcd source tree for one version: a shallow git clone, a source tarball, or a local
//! directory (offline builds). Clones and tarballs land in the cache under
//! `sources/<key>/`, renamed into place only when complete, so an interrupted fetch leaves
//! nothing that a later build could mistake for a source tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use semver::Version;

use super::GoBuildError;
use crate::fetch::cache::{sha256_hex, Cache};
use crate::fetch::http::Http;
use crate::report::Reporter;
use hostio::process::Cmd;

/// Where a version's source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `gopath`: a GOPATH of dependencies; the clone joins it (GOPATH mode).
    Git {
        repo: String,
        gopath: Option<PathBuf>,
    },
    Url {
        url: String,
        sha256: Option<String>,
        gopath: Option<PathBuf>,
    },
    Dir {
        path: PathBuf,
        gopath: Option<PathBuf>,
    },
    /// The release's Go modules, through the go command's GOPROXY ([`super::module`]).
    Module,
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Git { repo, .. } => write!(f, "git {repo}"),
            SourceSpec::Url { url, .. } => write!(f, "{}", crate::fetch::http::redact_url(url)),
            SourceSpec::Dir { path, gopath: None } => write!(f, "dir {}", path.display()),
            SourceSpec::Dir {
                path,
                gopath: Some(g),
            } => write!(f, "dir {} (GOPATH {})", path.display(), g.display()),
            SourceSpec::Module => write!(f, "go modules"),
        }
    }
}

impl SourceSpec {
    /// The dependencies' GOPATH, if this source builds in GOPATH mode.
    pub fn gopath(&self) -> Option<&Path> {
        match self {
            SourceSpec::Git { gopath, .. }
            | SourceSpec::Url { gopath, .. }
            | SourceSpec::Dir { gopath, .. } => gopath.as_deref(),
            SourceSpec::Module => None,
        }
    }
}

/// A source tree ready to build.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub root: PathBuf,
    /// GOPATH mode: the GOPATH entries, the first one holding `root` at its import path.
    pub gopath: Vec<PathBuf>,
    /// What identifies the contents: a commit, a tarball digest, or a fingerprint of the tree.
    pub identity: String,
    /// The commit, when known (upstream's builds stamp its short form as GitSHA).
    pub commit: Option<String>,
    /// The Go modules the tree was assembled from (module sources only).
    pub modules: Vec<super::module::TreeModule>,
}

const COMPLETE: &str = ".etcdimg-complete";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GoBuildError + '_ {
    move |source| GoBuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A fingerprint of every file under `dir`: relative path, size and mtime. Hashing ~17k files
/// of Debian's GOPATH by content would cost seconds on every build; a changed file changes its
/// size or mtime. Memoised per process.
pub fn fingerprint(dir: &Path) -> Result<String, GoBuildError> {
    static MEMO: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    if let Some(f) = MEMO
        .lock()
        .expect("memo")
        .get_or_insert_with(HashMap::new)
        .get(dir)
    {
        return Ok(f.clone());
    }
    let mut lines = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).map_err(io(&p))?;
            if meta.is_dir() {
                if e.file_name() != ".git" {
                    stack.push(p);
                }
                continue;
            }
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
            lines.push(format!("{rel}\0{}\0{mtime}", meta.len()));
        }
    }
    lines.sort();
    let f = sha256_hex(lines.join("\n").as_bytes());
    MEMO.lock()
        .expect("memo")
        .get_or_insert_with(HashMap::new)
        .insert(dir.to_path_buf(), f.clone());
    Ok(f)
}

/// Makes the source for `version` available.
///
/// Clones and tarballs are stored GOPATH-shaped (`sources/<key>/src/<import path>`), so that
/// with a dependencies GOPATH they build in GOPATH mode with `GOPATH=<key dir>:<deps>`.
pub async fn prepare(
    spec: &SourceSpec,
    version: &Version,
    recipe: &super::Recipe,
    builder: &super::Builder,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<Prepared, GoBuildError> {
    let import_path = recipe.import_path;
    match spec {
        SourceSpec::Module => {
            let super::Builder::Go { go, .. } = builder else {
                return Err(GoBuildError::Unsupported {
                    version: version.clone(),
                    message: "the Go-module source builds with the local Go toolchain (--builder go): GOPROXY, GOSUMDB and the module cache are the host's".into(),
                });
            };
            let tree = super::module::prepare(go, version, recipe, cache, reporter)?;
            Ok(Prepared {
                root: tree.root,
                gopath: Vec::new(),
                identity: format!("modules:{}", tree.key),
                commit: tree.commit,
                modules: tree.modules,
            })
        }
        SourceSpec::Dir { path, .. } => prepare_dir(spec, path),
        SourceSpec::Git { repo, .. } => {
            prepare_git(spec, repo, version, import_path, cache, reporter)
        }
        SourceSpec::Url { url, sha256, .. } => {
            let sha256 = sha256.as_deref();
            prepare_url(spec, url, sha256, version, import_path, cache, reporter).await
        }
    }
}

/// The dependencies GOPATH of `spec` (if any) and the identity over the source's and theirs.
fn with_deps(spec: &SourceSpec, identity: String) -> Result<(Vec<PathBuf>, String), GoBuildError> {
    match spec.gopath() {
        Some(g) => {
            if !g.join("src").is_dir() {
                return Err(GoBuildError::NoSourceDir(g.join("src")));
            }
            let f = fingerprint(&g.join("src"))?;
            Ok((
                vec![g.to_path_buf()],
                sha256_hex(format!("{identity}\n{f}").as_bytes()),
            ))
        }
        None => Ok((Vec::new(), identity)),
    }
}

/// A checked-out tree, used in place; identified by a fingerprint of its files.
fn prepare_dir(spec: &SourceSpec, path: &Path) -> Result<Prepared, GoBuildError> {
    if !path.is_dir() {
        return Err(GoBuildError::NoSourceDir(path.to_path_buf()));
    }
    let (gopath, identity) = with_deps(spec, fingerprint(path)?)?;
    let commit = Cmd::new("git")
        .arg("-C")
        .arg(path)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| c.len() >= 7);
    Ok(Prepared {
        root: path.to_path_buf(),
        gopath,
        identity,
        commit,
        modules: Vec::new(),
    })
}

/// A shallow clone of tag `v<version>`, cached by repo and tag; identified by its commit.
fn prepare_git(
    spec: &SourceSpec,
    repo: &str,
    version: &Version,
    import_path: &str,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<Prepared, GoBuildError> {
    let tag = format!("v{version}");
    let key = sha256_hex(format!("git\n{repo}\n{tag}").as_bytes());
    let dir = cache.root().join("sources").join(&key[..32]);
    if !dir.join(COMPLETE).is_file() {
        reporter.status("Cloning", &format!("{repo} at {tag} (shallow)"));
        let tmp = staging(cache, &key)?;
        Cmd::new("git")
            .args(["clone", "--quiet", "--depth", "1", "--branch", &tag])
            .arg(repo)
            .arg(tmp.join("src").join(import_path))
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| GoBuildError::Fetch {
                what: format!("cloning {repo} at {tag}"),
                message: e.to_string(),
            })?;
        finish(&tmp, &dir)?;
    }
    let root = dir.join("src").join(import_path);
    let commit = Cmd::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .map_err(|e| GoBuildError::Fetch {
            what: format!("reading the commit of {}", dir.display()),
            message: e.to_string(),
        })?;
    let identity = format!("git:{commit}");
    in_cache(spec, dir, root, identity, Some(commit))
}

/// A source stored in the cache at `dir` (GOPATH-shaped): with a dependencies GOPATH, `dir`
/// is the first GOPATH entry.
fn in_cache(
    spec: &SourceSpec,
    dir: PathBuf,
    root: PathBuf,
    identity: String,
    commit: Option<String>,
) -> Result<Prepared, GoBuildError> {
    let (mut gopath, identity) = with_deps(spec, identity)?;
    if !gopath.is_empty() {
        gopath.insert(0, dir);
    }
    Ok(Prepared {
        root,
        gopath,
        identity,
        commit,
        modules: Vec::new(),
    })
}

/// A source tarball, checked against its pinned sha256 (if given), unpacked and cached by
/// URL and pin; identified by the tarball's digest.
async fn prepare_url(
    spec: &SourceSpec,
    url: &str,
    sha256: Option<&str>,
    version: &Version,
    import_path: &str,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<Prepared, GoBuildError> {
    let shown = crate::fetch::http::redact_url(url);
    let key = sha256_hex(format!("url\n{url}\n{}", sha256.unwrap_or("")).as_bytes());
    let dir = cache.root().join("sources").join(&key[..32]);
    let digest_file = dir.join(COMPLETE);
    if !digest_file.is_file() {
        reporter.status("Downloading", &format!("etcd {version} source {shown}"));
        let fetch_err = |what: String| {
            move |e: crate::fetch::FetchError| GoBuildError::Fetch {
                what,
                message: e.to_string(),
            }
        };
        let http = Http::new().map_err(fetch_err("creating the HTTP client".into()))?;
        let bytes = http
            .get_bytes(url, reporter)
            .await
            .map_err(fetch_err(format!("downloading {shown}")))?;
        let actual = sha256_hex(&bytes);
        if let Some(want) = sha256 {
            let want = want.trim_start_matches("sha256:").to_ascii_lowercase();
            if want != actual {
                return Err(GoBuildError::SourceDigest {
                    url: shown,
                    expected: want,
                    actual,
                });
            }
        }
        let tmp = staging(cache, &key)?;
        unpack(&bytes, &tmp.join("src").join(import_path)).map_err(|e| GoBuildError::Fetch {
            what: format!("unpacking {shown}"),
            message: e,
        })?;
        std::fs::write(tmp.join(COMPLETE), &actual).map_err(io(&tmp))?;
        finish_written(&tmp, &dir)?;
    }
    let actual = std::fs::read_to_string(&digest_file).map_err(io(&digest_file))?;
    let root = dir.join("src").join(import_path);
    in_cache(spec, dir, root, format!("url:{}", actual.trim()), None)
}

fn staging(cache: &Cache, key: &str) -> Result<PathBuf, GoBuildError> {
    let tmp = cache
        .root()
        .join("tmp")
        .join(format!("src-{}-{}", &key[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.parent().expect("has parent")).map_err(io(&tmp))?;
    Ok(tmp)
}

fn finish(tmp: &Path, dir: &Path) -> Result<(), GoBuildError> {
    std::fs::write(tmp.join(COMPLETE), b"").map_err(io(tmp))?;
    finish_written(tmp, dir)
}

fn finish_written(tmp: &Path, dir: &Path) -> Result<(), GoBuildError> {
    std::fs::create_dir_all(dir.parent().expect("has parent")).map_err(io(dir))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(tmp, dir).map_err(io(dir))
}

/// Unpacks a `.tar.gz` source tarball, dropping its top directory and refusing unsafe paths.
fn unpack(bytes: &[u8], into: &Path) -> Result<(), String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let rel: PathBuf = path.components().skip(1).collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("unsafe path `{}` in the tarball", path.display()));
        }
        let kind = entry.header().entry_type();
        let dest = into.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
        } else if kind.is_file() {
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
            }
            entry.unpack(&dest).map_err(|e| e.to_string())?;
        } else if kind.is_symlink() {
            // Source tarballs of etcd hold a few relative symlinks; keep them inside the tree.
            let target = entry
                .link_name()
                .map_err(|e| e.to_string())?
                .unwrap_or_default()
                .into_owned();
            if target.is_absolute() {
                return Err(format!(
                    "absolute symlink `{}` in the tarball",
                    path.display()
                ));
            }
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
            }
            std::os::unix::fs::symlink(&target, &dest).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
