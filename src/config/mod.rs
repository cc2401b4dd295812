//! `images.toml`: the schema, and validation that points at file, line and key.
//!
//! Owns: parsing and checking the file. Never: network I/O, spawning, reading the environment
//! (that is `settings`), or defaults that depend on the machine.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use semver::Version;
use serde::Deserialize;
use toml::Spanned;

use crate::platform::Arch;

/// The default etcd release download base URL (the GitHub releases folder of etcd-io/etcd).
pub const DEFAULT_RELEASE_URL: &str = "https://github.com/etcd-io/etcd/releases/download";
pub const DEFAULT_BASE_IMAGE: &str = "docker.io/library/busybox:1.36.1";

/// A problem in `images.toml` (or in an override of one of its keys), located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `environment variable X` / `--flag` for overrides.
    pub origin: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{}:{}:{}: ", self.origin, line, column)?,
            (Some(line), None) => write!(f, "{}:{}: ", self.origin, line)?,
            _ => write!(f, "{}: ", self.origin)?,
        }
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The raw file, as written. Every value a user can get wrong carries its span.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ImagesToml {
    #[serde(default)]
    pub etcd: EtcdSection,
    #[serde(default)]
    pub image: ImageSection,
    /// Per-arch settings, keyed by arch name.
    #[serde(default)]
    pub arch: BTreeMap<Spanned<String>, ArchSection>,
    #[serde(default)]
    pub migrate: MigrateSection,
    #[serde(default)]
    pub build: BuildSection,
    /// Additions to etcd's version policy (new advisories, higher minimums).
    pub policy: Option<Spanned<etcd_policy::Extension>>,
}

/// How etcd is cross-compiled for arches with `source = "build"`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// `auto` (default: go if installed, else docker), `go` or `docker`.
    pub builder: Option<Spanned<String>>,
    /// The `golang:<version>` image tag the docker builder uses.
    pub golang_version: Option<Spanned<String>>,
    /// The Go every compile uses (`go1.27.3`); release arches are then built from modules.
    pub go_toolchain: Option<Spanned<String>>,
    /// Module builds strip symbols like etcd's release builds (default true).
    pub strip: Option<bool>,
    /// The git repository cloned at `v<V>` when a version has no other source.
    pub source_repo: Option<Spanned<String>>,
    /// Directory of `<V>/*.patch`, relative to this file (default `patches`).
    pub patches_dir: Option<String>,
    /// Per-version source overrides, keyed by version.
    #[serde(default)]
    pub source: BTreeMap<Spanned<String>, SourceEntry>,
}

/// Where one version's source comes from: exactly one of `git`, `url`, `dir`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// A git repository, cloned (shallow) at tag `v<V>`.
    pub git: Option<String>,
    /// A source tarball (`.tar.gz`), with its top directory stripped.
    pub url: Option<String>,
    /// The tarball's sha256 (recommended with `url`).
    pub sha256: Option<String>,
    /// A local source tree (offline builds), relative to this file; used read-only.
    pub dir: Option<String>,
    /// A GOPATH holding the source's dependencies: builds in GOPATH mode (with `dir`, the source
    /// must sit in it at its import path; a clone or tarball is put in a GOPATH of its own).
    pub gopath: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// The etcd version the image is named after and whose binaries become `etcd`/`etcdctl`.
    pub latest: Option<Spanned<String>>,
    /// Every etcd version bundled as `etcd-<V>`, oldest first.
    pub bundled: Option<Spanned<Vec<Spanned<String>>>>,
    /// Image revision: the tag is `<latest>-<revision>`.
    pub revision: Option<Spanned<u32>>,
    /// Base URL of the release folders: `<release_url>/v<V>/etcd-v<V>-linux-<arch>.tar.gz`.
    pub release_url: Option<Spanned<String>>,
    /// Pinned sha256 per tarball, keyed `<version>/<arch>`.
    #[serde(default)]
    pub sha256: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub registry: Option<Spanned<String>>,
    pub push_registry: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    /// `suffix` (`<repo>:<tag>-linux-<arch>`) or `legacy` (`<repo>-<arch>:<tag>`).
    pub naming: Option<Spanned<String>>,
    pub arches: Option<Spanned<Vec<Spanned<String>>>>,
    /// Base image for every arch: a multi-arch registry reference or `oci:PATH[:REF]`.
    pub base: Option<Spanned<String>>,
    /// Octal mode of the binaries in the image (default `0555`, as `install -m 0555`).
    pub binary_mode: Option<Spanned<String>>,
    /// Registries reached over plain HTTP (host[:port]). Never implied.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificate (PEM) trusted for registries, relative to this file.
    pub ca_cert: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ArchSection {
    /// `release` (official tarball), `build` (compile a source tree) or `module` (compile the
    /// release's Go modules, fetched through GOPROXY).
    pub source: Option<Spanned<String>>,
    /// Base image override for this arch.
    pub base: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MigrateSection {
    /// The migrate crate, relative to this file (default `migrate`).
    pub source_dir: Option<String>,
    /// Build migrate with cargo-auditable, so that it carries its crate list for scanners
    /// (default true).
    pub auditable: Option<bool>,
}

/// How per-arch images are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `<registry>/<name>:<tag>-linux-<arch>` (the Makefile since 2021).
    Suffix,
    /// `<registry>/<name>-<arch>:<tag>` (the Makefile before 2021).
    Legacy,
}

/// Where an arch's etcd binaries come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The official release tarball, checked against SHA256SUMS.
    Release,
    /// Compiled from a source tree: `[build.source."<V>"]`, else a clone of `build.source_repo`.
    Build,
    /// Compiled from the release's Go modules through the Go module proxy (`[build.source."<V>"]`
    /// still wins for its version, e.g. a GOPATH for 3.4).
    Module,
}

impl Source {
    /// Compiled here (from a tree or from modules), not downloaded.
    pub fn compiles(self) -> bool {
        matches!(self, Source::Build | Source::Module)
    }
}

/// A loaded file: the parsed document and the text needed to locate spans.
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub doc: ImagesToml,
}

impl Loaded {
    /// An error located at `span` in this file.
    pub fn error_at(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_column(&self.text, span.start);
        ConfigError {
            origin: self.path.display().to_string(),
            line: Some(line),
            column: Some(column),
            key: key.to_string(),
            message: message.into(),
            hint: None,
        }
    }
}

/// Reads and parses `path`. A missing file yields the built-in defaults (an empty document).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            return Err(ConfigError {
                origin: path.display().to_string(),
                line: None,
                column: None,
                key: "(file)".into(),
                message: format!("cannot read the file: {err}"),
                hint: Some(
                    "pass --config PATH or run etcdimg from the directory holding images.toml"
                        .into(),
                ),
            })
        }
    };
    parse(path, text)
}

/// Parses `text` as the contents of `path`.
pub fn parse(path: &Path, text: String) -> Result<Loaded, ConfigError> {
    match toml::from_str::<ImagesToml>(&text) {
        Ok(doc) => Ok(Loaded {
            path: path.to_path_buf(),
            text,
            doc,
        }),
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            let (line, column) = line_column(&text, span.start);
            let key = key_at(&text, span.clone());
            let message = err.message().trim().to_string();
            let hint = message.contains("unknown field").then(|| {
                "see the images.toml reference in README.md for the valid keys".to_string()
            });
            Err(ConfigError {
                origin: path.display().to_string(),
                line: Some(line),
                column: Some(column),
                key,
                message,
                hint,
            })
        }
    }
}

/// Parses a version exactly as etcd release tags spell it (`3.5.1`, no `v`).
pub fn parse_version(s: &str) -> Result<Version, String> {
    let trimmed = s.trim();
    let bare = trimmed.strip_prefix('v').unwrap_or(trimmed);
    Version::parse(bare).map_err(|e| {
        format!("invalid semver `{s}`: {e}; expected MAJOR.MINOR.PATCH such as `3.5.1`")
    })
}

pub fn parse_naming(s: &str) -> Result<Naming, String> {
    match s {
        "suffix" => Ok(Naming::Suffix),
        "legacy" => Ok(Naming::Legacy),
        other => Err(format!("unknown naming `{other}`, expected `suffix` (<repo>:<tag>-linux-<arch>) or `legacy` (<repo>-<arch>:<tag>)")),
    }
}

pub fn parse_source(s: &str) -> Result<Source, String> {
    match s {
        "release" => Ok(Source::Release),
        "build" => Ok(Source::Build),
        "module" => Ok(Source::Module),
        other => Err(format!(
            "unknown source `{other}`, expected `release`, `build` or `module`"
        )),
    }
}

pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid file mode `{s}`, expected octal such as `0555`"))
}

pub fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse::<Arch>().map_err(|e| e.to_string())
}

/// 1-based line and column of byte `offset`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

/// The key text at an error span (toml points unknown-field errors at the key itself).
fn key_at(text: &str, span: Range<usize>) -> String {
    let raw = text.get(span).unwrap_or("").trim();
    let key = raw
        .split(['=', '\n'])
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    if key.is_empty() {
        "(document)".into()
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> ConfigError {
        match parse(Path::new("images.toml"), text.to_string()) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse_err("[etcd]\nlatest = \"3.5.1\"\nlatset = \"3.5.1\"\n");
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key, "latset");
        assert!(err.message.contains("unknown field"), "{err}");
        assert!(err.hint.is_some());
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = parse_err("[etdc]\nlatest = \"3.5.1\"\n");
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn wrong_type_is_located() {
        let err = parse_err("[etcd]\nrevision = \"zero\"\n");
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn spans_point_at_values() {
        let loaded = parse(Path::new("x.toml"), "[etcd]\nlatest = \"3.5\"\n".into()).unwrap();
        let latest = loaded.doc.etcd.latest.as_ref().unwrap();
        let err = loaded.error_at(latest.span(), "etcd.latest", "bad");
        assert_eq!((err.line, err.column), (Some(2), Some(10)));
        assert_eq!(err.to_string(), "x.toml:2:10: key `etcd.latest`: bad");
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("3.5.1").unwrap(), Version::new(3, 5, 1));
        assert_eq!(parse_version("v3.4.23").unwrap(), Version::new(3, 4, 23));
        assert!(parse_version("3.5").is_err());
        assert!(parse_version("3.5.1.1").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0555").unwrap(), 0o555);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert!(parse_mode("0999").is_err());
    }

    #[test]
    fn line_columns() {
        assert_eq!(line_column("abc\ndef", 0), (1, 1));
        assert_eq!(line_column("abc\ndef", 5), (2, 2));
    }
}
