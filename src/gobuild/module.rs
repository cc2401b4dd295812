//! etcd rebuilt from its Go modules (`source = "module"`): the source tree of a release,
//! assembled from the module zips the Go module proxy serves, for sites that reach a module
//! proxy (proxy.golang.org, Athens, Artifactory, a `file://` directory) but never GitHub.
//!
//! etcd 3.5+ is several modules in one repository. Each binary is the main package of its own
//! module (`server/` = etcd, `etcdctl/`, `etcdutl/`), whose go.mod `replace`s the sibling
//! modules by relative directory (`go.etcd.io/etcd/api/v3 => ../api`). So the tree is:
//!
//! 1. the three binaries' modules at `v<V>` (`go mod download -json`), at their folders;
//! 2. every module their `replace` lines point to that they also `require`, at the version
//!    they require (3.5's `client/v2` is `v2.305.x`), at the folder the replace names;
//! 3. copied out of the module cache into `<cache>/sources/<key>/`, each module's copy checked
//!    against the `h1:` sum the go command verified (checksum database or GONOSUMDB/GOPRIVATE,
//!    as the user's environment says), and re-checked on every later use.
//!
//! The go command does every download and every verification against the checksum database
//! and the release's go.sum (`-mod=readonly`): the user's GOPROXY, GOSUMDB, GONOSUMDB,
//! GOPRIVATE, GONOPROXY, GOINSECURE, GOFLAGS, GOTOOLCHAIN, GOMODCACHE and GOCACHE reach it
//! unchanged. What this module adds is the layout and the check of its own copy.
//!
//! The root module `go.etcd.io/etcd/v3` is not needed: it holds no binary's main package and
//! no go.sum a binary builds with (and the proxies serve few of its versions). etcd's own
//! build (`scripts/build_lib.sh`) uses the repository's go.work; a tree of modules has none,
//! so each binary builds in its own module with `GOWORK=off` against its own go.sum.
//!
//! Never: writes into the module cache, or runs anything but the go command.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{GoBuildError, Recipe};
use crate::fetch::cache::{sha256_file, sha256_hex, Cache};
use crate::report::Reporter;
use hostio::process::Cmd;

/// Bumped when the tree's layout changes.
const TREE_FORMAT: &str = "etcdimg-module-tree-v1";
/// The record of a complete tree, written last.
const TREE_RECORD: &str = ".etcdimg-modules.json";

/// One module of the tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TreeModule {
    /// Folder in the tree, `/`-separated (`server`, `client/pkg`).
    pub dir: String,
    pub path: String,
    pub version: String,
    /// The go command's `h1:` hash of the module's files.
    pub sum: String,
}

/// A release's source tree, ready to build.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    pub root: PathBuf,
    pub modules: Vec<TreeModule>,
    /// The commit the proxy's `.info` names (`Origin.Hash`), when it names one.
    pub commit: Option<String>,
    /// Digest over every module's path, version, sum and folder.
    pub key: String,
}

/// What `go mod download -json` says of one module.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Download {
    path: String,
    version: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    sum: Option<String>,
    #[serde(default)]
    origin: Option<Origin>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Origin {
    #[serde(default)]
    hash: Option<String>,
}

/// What `go mod edit -json` says of a go.mod.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoMod {
    #[serde(default)]
    require: Vec<ModVersion>,
    #[serde(default)]
    replace: Vec<Replace>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ModVersion {
    path: String,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Replace {
    old: ModVersion,
    new: ModVersion,
}

/// The module each binary is the main package of, and its folder: `go.etcd.io/etcd/server/v3`
/// in `server`.
fn main_modules(recipe: &Recipe) -> Vec<(String, String)> {
    recipe
        .targets
        .iter()
        .map(|t| (t.package.clone(), t.module_dir.to_string()))
        .collect()
}

/// Refuses versions that were never published as modules with release versions.
pub fn check_version(version: &Version, recipe: &Recipe) -> Result<(), GoBuildError> {
    if version.minor < 5 || !recipe.module_mode || recipe.gopath_mode {
        return Err(GoBuildError::Unsupported {
            version: version.clone(),
            message: format!(
                "etcd {version} is not published as Go modules with release versions (before 3.5 etcd was one module, `go.etcd.io/etcd` without the /v3 suffix, so a proxy holds only pseudo-versions of it); give it a source of its own with [build.source.\"{version}\"] (e.g. Debian's golang-etcd-server-dev as a GOPATH), or use its release tarball"
            ),
        });
    }
    Ok(())
}

/// The tree for `version`: its modules resolved and downloaded by the go command, copied into
/// the cache (or found there, re-checked). Fails before anything is built when the proxy does
/// not serve a module, naming the module and version.
pub fn prepare(
    go: &Path,
    version: &Version,
    recipe: &Recipe,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<ModuleTree, GoBuildError> {
    check_version(version, recipe)?;
    let scratch = scratch_dir(cache)?;
    let tag = format!("v{version}");
    let mains = main_modules(recipe);
    let proxy = goproxy_shown(go);
    reporter.status(
        "Resolving",
        &format!("etcd {version} from Go modules ({proxy})"),
    );
    let requested: Vec<(String, String)> = mains
        .iter()
        .map(|(path, _)| (path.clone(), tag.clone()))
        .collect();
    let downloaded = download(go, scratch.path(), &requested, &proxy)?;
    let mut modules: BTreeMap<String, TreeModule> = BTreeMap::new();
    let mut commit = None;
    let mut replaced: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (path, dir) in &mains {
        let d = &downloaded[path];
        commit = commit.or_else(|| d.origin.as_ref().and_then(|o| o.hash.clone()));
        insert(&mut modules, tree_module(d, dir, &proxy)?, version)?;
        let module_dir = PathBuf::from(d.dir.as_deref().unwrap_or_default());
        let gomod = read_gomod(go, &module_dir.join("go.mod"), scratch.path())?;
        for (p, v, at) in replacements(&gomod, dir).map_err(|message| layout(version, message))? {
            match replaced.get(&p) {
                Some((v0, at0)) if (v0, at0) != (&v, &at) => {
                    return Err(layout(
                        version,
                        format!("the release's modules disagree on `{p}`: {v0} at `{at0}` and {v} at `{at}`"),
                    ));
                }
                _ => {
                    replaced.insert(p, (v, at));
                }
            }
        }
    }
    let wanted = replaced_to_fetch(&modules, &replaced, version)?;
    let more = download(go, scratch.path(), &wanted, &proxy)?;
    for (path, (_, at)) in &replaced {
        if let Some(d) = more.get(path) {
            insert(&mut modules, tree_module(d, at, &proxy)?, version)?;
        }
    }
    let modules: Vec<TreeModule> = modules.into_values().collect();
    let sources: BTreeMap<String, PathBuf> = downloaded
        .values()
        .chain(more.values())
        .map(|d| {
            (
                d.path.clone(),
                PathBuf::from(d.dir.clone().unwrap_or_default()),
            )
        })
        .collect();
    let key = tree_key(&modules);
    let root = assemble(cache, &key, &modules, &sources, version, reporter)?;
    Ok(ModuleTree {
        root,
        modules,
        commit,
        key,
    })
}

/// The modules the release's `replace` directives point to that are not main modules
/// already: (path, version) to download. A main module another one replaces (3.5's etcdctl
/// replaces ../server) must be the same version at the same place.
fn replaced_to_fetch(
    modules: &BTreeMap<String, TreeModule>,
    replaced: &BTreeMap<String, (String, String)>,
    version: &Version,
) -> Result<Vec<(String, String)>, GoBuildError> {
    let mut wanted = Vec::new();
    for (path, (v, at)) in replaced {
        match modules.values().find(|m| &m.path == path) {
            // A main module another one replaces (3.5's etcdctl replaces ../server).
            Some(m) if &m.version == v && &m.dir == at => {}
            Some(m) => {
                return Err(layout(
                    version,
                    format!(
                        "`{path}` is {} at `{}`, but a replace wants {v} at `{at}`",
                        m.version, m.dir
                    ),
                ))
            }
            None => wanted.push((path.clone(), v.clone())),
        }
    }
    Ok(wanted)
}

fn layout(version: &Version, message: String) -> GoBuildError {
    GoBuildError::Unsupported {
        version: version.clone(),
        message,
    }
}

/// Adds `m`, refusing two modules in one folder.
fn insert(
    modules: &mut BTreeMap<String, TreeModule>,
    m: TreeModule,
    version: &Version,
) -> Result<(), GoBuildError> {
    if let Some(other) = modules.get(&m.dir) {
        if other.path != m.path {
            return Err(layout(
                version,
                format!(
                    "`{}` and `{}` would both be at `{}`",
                    other.path, m.path, m.dir
                ),
            ));
        }
        return Ok(());
    }
    modules.insert(m.dir.clone(), m);
    Ok(())
}

fn tree_module(d: &Download, dir: &str, proxy: &str) -> Result<TreeModule, GoBuildError> {
    let sum = d
        .sum
        .clone()
        .filter(|s| s.starts_with("h1:"))
        .ok_or_else(|| GoBuildError::ModuleUnavailable {
            module: d.path.clone(),
            version: d.version.clone(),
            proxy: proxy.to_string(),
            message: "the go command reported no h1: sum for it".into(),
        })?;
    Ok(TreeModule {
        dir: dir.to_string(),
        path: d.path.clone(),
        version: d.version.clone(),
        sum,
    })
}

/// GOPROXY as the go command sees it (environment, `go env -w`, or Go's default), for
/// messages, with credentials in its URLs redacted.
pub fn goproxy_shown(go: &Path) -> String {
    let proxy = Cmd::new(go)
        .args(["env", "GOPROXY"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "(unknown: `go env GOPROXY` failed)".into());
    let shown: Vec<String> = proxy
        .split(',')
        .flat_map(|p| p.split('|'))
        .map(crate::fetch::http::redact_url)
        .collect();
    format!("GOPROXY={}", shown.join(","))
}

/// `go mod download -json` of `modules` (path, version), outside any module. Every module the
/// proxy does not serve is an error naming it.
fn download(
    go: &Path,
    scratch: &Path,
    modules: &[(String, String)],
    proxy: &str,
) -> Result<BTreeMap<String, Download>, GoBuildError> {
    let mut out = BTreeMap::new();
    if modules.is_empty() {
        return Ok(out);
    }
    let cmd = go_cmd(go, scratch)
        .args(["mod", "download", "-json"])
        .args(modules.iter().map(|(p, v)| format!("{p}@{v}")));
    let output = cmd.output_any().map_err(GoBuildError::Toolchain)?;
    let stream = serde_json::Deserializer::from_slice(&output.stdout).into_iter::<Download>();
    for d in stream {
        let d = d.map_err(|e| GoBuildError::Fetch {
            what: format!("reading the output of `{cmd}`"),
            message: e.to_string(),
        })?;
        if let Some(error) = &d.error {
            return Err(GoBuildError::ModuleUnavailable {
                module: d.path.clone(),
                version: d.version.clone(),
                proxy: proxy.to_string(),
                message: error.trim().to_string(),
            });
        }
        out.insert(d.path.clone(), d);
    }
    for (p, v) in modules {
        if !out.contains_key(p) {
            return Err(GoBuildError::ModuleUnavailable {
                module: p.clone(),
                version: v.clone(),
                proxy: proxy.to_string(),
                message: format!(
                    "`{cmd}` did not report it ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
    }
    Ok(out)
}

/// The go command outside any module or workspace, in `scratch`; everything else in the
/// environment is the user's.
fn go_cmd(go: &Path, scratch: &Path) -> Cmd {
    Cmd::new(go)
        .env("GO111MODULE", "on")
        .env("GOWORK", "off")
        .current_dir(scratch)
}

fn read_gomod(go: &Path, file: &Path, scratch: &Path) -> Result<GoMod, GoBuildError> {
    let out = go_cmd(go, scratch)
        .args(["mod", "edit", "-json"])
        .arg(file)
        .output()
        .map_err(GoBuildError::Toolchain)?;
    serde_json::from_slice(&out.stdout).map_err(|e| GoBuildError::Fetch {
        what: format!("reading `{}`", file.display()),
        message: e.to_string(),
    })
}

/// The modules `gomod` (of the module in folder `dir`) replaces by a directory and also
/// requires: (path, required version, folder in the tree).
fn replacements(gomod: &GoMod, dir: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    for r in &gomod.replace {
        let local = r.new.path.starts_with("./") || r.new.path.starts_with("../");
        if !local {
            if r.new.path.starts_with('/') {
                return Err(format!(
                    "`{}` is replaced by the absolute path `{}`",
                    r.old.path, r.new.path
                ));
            }
            continue;
        }
        let Some(required) = gomod
            .require
            .iter()
            .find(|q| q.path == r.old.path)
            .and_then(|q| q.version.clone())
        else {
            // Replaced but not required: etcd's FORBIDDEN_DEPENDENCY guards.
            continue;
        };
        if r.old.version.as_ref().is_some_and(|v| *v != required) {
            continue;
        }
        let at = join_relative(dir, &r.new.path)?;
        out.push((r.old.path.clone(), required, at));
    }
    Ok(out)
}

/// `dir` joined with the relative `rel`, `/`-separated, never above the tree's root.
fn join_relative(dir: &str, rel: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = dir
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "`{rel}` from `{dir}` leaves the release's source tree"
                    ));
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Ok(".".into());
    }
    Ok(parts.join("/"))
}

fn tree_key(modules: &[TreeModule]) -> String {
    let mut text = String::from(TREE_FORMAT);
    for m in modules {
        text.push_str(&format!("\n{} {} {} {}", m.dir, m.path, m.version, m.sum));
    }
    sha256_hex(text.as_bytes())
}

fn scratch_dir(cache: &Cache) -> Result<tempfile::TempDir, GoBuildError> {
    let t = cache.root().join("tmp");
    tempfile::Builder::new()
        .prefix("gomod-")
        .tempdir_in(&t)
        .map_err(|source| GoBuildError::Io { path: t, source })
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> GoBuildError + '_ {
    move |source| GoBuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The tree at `<cache>/sources/<key>`: reused when its record names the same modules and
/// every module's files still hash to its sum; else (re)built from the module cache under the
/// tree's lock, checked, and renamed into place.
fn assemble(
    cache: &Cache,
    key: &str,
    modules: &[TreeModule],
    sources: &BTreeMap<String, PathBuf>,
    version: &Version,
    reporter: &dyn Reporter,
) -> Result<PathBuf, GoBuildError> {
    let dir = cache.root().join("sources").join(&key[..32]);
    let _held = cache
        .lock(
            "module-tree",
            key,
            &format!("the module tree of etcd {version}"),
            &|m| reporter.status("Waiting", m),
        )
        .map_err(GoBuildError::from)?;
    if dir.join(TREE_RECORD).is_file() {
        match verify_tree(&dir, modules) {
            Ok(()) => return Ok(dir),
            Err(mismatch) => reporter.warn(&format!(
                "the cached source tree of etcd {version} at {} no longer matches its module sums ({mismatch}); assembling it again",
                dir.display()
            )),
        }
    }
    reporter.status(
        "Assembling",
        &format!("etcd {version} source tree from {} modules", modules.len()),
    );
    let tmp = tempfile::Builder::new()
        .prefix("tree-")
        .tempdir_in(cache.root().join("tmp"))
        .map_err(io_at(cache.root()))?;
    for m in modules {
        let from = &sources[&m.path];
        let to = tmp.path().join(&m.dir);
        copy_tree(from, &to)?;
    }
    if let Err(mismatch) = verify_tree(tmp.path(), modules) {
        return Err(GoBuildError::ModuleSum { message: mismatch });
    }
    let record = serde_json::to_vec_pretty(modules).expect("serialisable");
    std::fs::write(tmp.path().join(TREE_RECORD), record).map_err(io_at(tmp.path()))?;
    let parent = dir.parent().expect("has a parent");
    std::fs::create_dir_all(parent).map_err(io_at(parent))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
    }
    let tmp = tmp.keep();
    std::fs::rename(&tmp, &dir).map_err(io_at(&dir))?;
    Ok(dir)
}

/// Every module's folder in `root` hashes to its sum (folders of other modules inside it and
/// the tree record left out).
fn verify_tree(root: &Path, modules: &[TreeModule]) -> Result<(), String> {
    for m in modules {
        let dir = root.join(&m.dir);
        let nested: Vec<PathBuf> = modules
            .iter()
            .filter(|o| {
                o.dir != m.dir && (m.dir == "." || o.dir.starts_with(&format!("{}/", m.dir)))
            })
            .map(|o| root.join(&o.dir))
            .chain(std::iter::once(root.join(TREE_RECORD)))
            .collect();
        let actual = hash_dir(&dir, &format!("{}@{}", m.path, m.version), &nested)
            .map_err(|e| format!("reading `{}`: {e}", dir.display()))?;
        if actual != m.sum {
            return Err(format!(
                "{}@{} at `{}` hashes to {actual}, the go command verified {}",
                m.path,
                m.version,
                dir.display(),
                m.sum
            ));
        }
    }
    Ok(())
}

/// The go command's `h1:` directory hash (golang.org/x/mod/sumdb/dirhash `Hash1` over
/// `HashDir`): SHA-256 over the sorted lines `"<hex sha256 of file>  <prefix>/<path>\n"`,
/// base64. Written here because no Rust crate implements it; it is a dozen lines.
pub fn hash_dir(dir: &Path, prefix: &str, skip: &[PathBuf]) -> io::Result<String> {
    let mut files = Vec::new();
    walk_files(dir, dir, skip, &mut files)?;
    let mut names: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|(rel, path)| (format!("{prefix}/{rel}"), path))
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for (name, path) in names {
        if name.contains('\n') {
            return Err(io::Error::other(format!(
                "file name `{name}` has a newline"
            )));
        }
        h.update(format!("{}  {name}\n", sha256_file(&path)?));
    }
    Ok(format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(h.finalize())
    ))
}

fn walk_files(
    root: &Path,
    dir: &Path,
    skip: &[PathBuf],
    out: &mut Vec<(String, PathBuf)>,
) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if skip.contains(&p) {
            continue;
        }
        if e.file_type()?.is_dir() {
            walk_files(root, &p, skip, out)?;
        } else {
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            out.push((rel, p));
        }
    }
    Ok(())
}

/// Copies a module's folder from the (read-only) module cache: regular files with the mode an
/// ordinary `open` gives under the umask (executable ones 0777 before it), directories 0777
/// before it. Module zips hold nothing else.
fn copy_tree(from: &Path, to: &Path) -> Result<(), GoBuildError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(to).map_err(io_at(to))?;
    for e in std::fs::read_dir(from).map_err(io_at(from))? {
        let e = e.map_err(io_at(from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&src).map_err(io_at(&src))?;
        if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o777
            } else {
                0o666
            };
            let mut input = std::fs::File::open(&src).map_err(io_at(&src))?;
            let mut output = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&dst)
                .map_err(io_at(&dst))?;
            io::copy(&mut input, &mut output).map_err(io_at(&dst))?;
        } else {
            return Err(GoBuildError::ModuleSum {
                message: format!(
                    "`{}` in the module cache is neither a file nor a folder",
                    src.display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_replace_paths_stay_in_the_tree() {
        let check = |dir: &str, rel: &str, want: Result<&str, ()>| {
            let got = join_relative(dir, rel);
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(w), "{dir} + {rel}"),
                Err(()) => assert!(got.is_err(), "{dir} + {rel}: {got:?}"),
            }
        };
        check("server", "../api", Ok("api"));
        check("server", "../client/pkg", Ok("client/pkg"));
        check("etcdctl", "../server", Ok("server"));
        check(
            "server",
            "./FORBIDDEN_DEPENDENCY",
            Ok("server/FORBIDDEN_DEPENDENCY"),
        );
        check("server", "..", Ok("."));
        check("server", "../../x", Err(()));
    }

    fn gomod(text: &str) -> GoMod {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn only_required_modules_replaced_by_a_folder_join_the_tree() {
        // As `go mod edit -json` prints etcd 3.5's server/go.mod (abridged).
        let m = gomod(
            r#"{"Module":{"Path":"go.etcd.io/etcd/server/v3"},
                "Require":[{"Path":"go.etcd.io/etcd/api/v3","Version":"v3.5.36"},
                           {"Path":"go.etcd.io/etcd/client/v2","Version":"v2.305.36"},
                           {"Path":"github.com/x/y","Version":"v1.0.0"}],
                "Replace":[{"Old":{"Path":"go.etcd.io/etcd/api/v3"},"New":{"Path":"../api"}},
                           {"Old":{"Path":"go.etcd.io/etcd/client/v2"},"New":{"Path":"../client/v2"}},
                           {"Old":{"Path":"go.etcd.io/etcd"},"New":{"Path":"./FORBIDDEN_DEPENDENCY"}},
                           {"Old":{"Path":"github.com/x/y"},"New":{"Path":"github.com/x/z","Version":"v1.0.1"}}]}"#,
        );
        let r = replacements(&m, "server").unwrap();
        assert_eq!(
            r,
            vec![
                (
                    "go.etcd.io/etcd/api/v3".into(),
                    "v3.5.36".into(),
                    "api".into()
                ),
                (
                    "go.etcd.io/etcd/client/v2".into(),
                    "v2.305.36".into(),
                    "client/v2".into()
                ),
            ]
        );
        let abs = gomod(
            r#"{"Require":[{"Path":"a","Version":"v1.0.0"}],
                "Replace":[{"Old":{"Path":"a"},"New":{"Path":"/abs/a"}}]}"#,
        );
        assert!(replacements(&abs, "server").is_err());
    }

    #[test]
    fn the_dirhash_is_the_go_commands_h1() {
        // golang.org/x/mod/sumdb/dirhash: a module `m@v1.0.0` holding go.mod = "module m\n"
        // and a/b.go = "package a\n" hashes to this (computed with the Go package).
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("go.mod"), "module m\n").unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/b.go"), "package a\n").unwrap();
        let lines = format!(
            "{}  m@v1.0.0/a/b.go\n{}  m@v1.0.0/go.mod\n",
            sha256_hex(b"package a\n"),
            sha256_hex(b"module m\n")
        );
        let want = format!(
            "h1:{}",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(lines.as_bytes()))
        );
        assert_eq!(hash_dir(d.path(), "m@v1.0.0", &[]).unwrap(), want);
        // A skipped path (a nested module, the tree record) is not part of it.
        std::fs::write(d.path().join("extra"), "x").unwrap();
        assert_ne!(hash_dir(d.path(), "m@v1.0.0", &[]).unwrap(), want);
        assert_eq!(
            hash_dir(d.path(), "m@v1.0.0", &[d.path().join("extra")]).unwrap(),
            want
        );
    }
}
