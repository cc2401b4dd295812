//! Resolves flags > environment > images.toml > defaults into one typed [`Settings`], once.
//!
//! Every later stage trusts these values; all validation of user input happens here or in
//! `config`, and every error names where the bad value came from (file:line and key, the
//! environment variable, or the flag).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::Version;
use toml::Spanned;

use crate::cli::OverrideArgs;
use crate::config::{self, ConfigError, Loaded, Naming, Source};
use crate::platform::Arch;

/// Everything a build needs to know, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    /// Directory of images.toml; relative paths in it are relative to this.
    pub config_dir: PathBuf,
    pub latest: Version,
    pub bundled: Vec<Version>,
    pub revision: String,
    pub arches: Vec<Arch>,
    pub registry: String,
    pub push_registry: String,
    pub image_name: String,
    pub naming: Naming,
    pub release_url: String,
    pub binary_mode: u32,
    pub insecure_registries: Vec<String>,
    pub ca_cert: Option<PathBuf>,
    pub migrate_source_dir: PathBuf,
    /// Build migrate with cargo-auditable (images.toml `migrate.auditable`, default true).
    pub migrate_auditable: bool,
    base_default: String,
    base_per_arch: BTreeMap<Arch, String>,
    sources: BTreeMap<Arch, Source>,
    pins: BTreeMap<(Version, Arch), String>,
    /// SOURCE_DATE_EPOCH, or 0: the mtime of every file and the `created` time.
    pub source_date_epoch: u64,
    /// How arches with `source = "build"` are compiled.
    pub gobuild: crate::gobuild::GoBuildSettings,
    /// etcd's version policy: the built-in one plus images.toml's `[policy]`.
    pub policy: etcd_policy::Policy,
    /// The Go toolchain policy: the built-in one plus images.toml's `[policy.go]`.
    pub go_policy: etcd_policy::go::GoPolicy,
}

impl Settings {
    /// What the policy has against the release's versions (latest first, then the bundled).
    pub fn policy_findings(&self) -> Vec<etcd_policy::Finding> {
        let mut versions = vec![&self.latest];
        versions.extend(self.bundled.iter().filter(|v| **v != self.latest));
        versions
            .into_iter()
            .flat_map(|v| self.policy.findings(v))
            .collect()
    }

    /// `<latest>-<revision>`, the Makefile's IMAGE_TAG.
    pub fn tag(&self) -> String {
        format!("{}-{}", self.latest, self.revision)
    }

    /// The ref name of an arch's image inside the OCI layout.
    pub fn layout_ref(&self, arch: Arch) -> String {
        format!("{}-linux-{}", self.tag(), arch)
    }

    /// The per-arch image reference in `registry`.
    pub fn arch_image(&self, registry: &str, arch: Arch) -> String {
        match self.naming {
            Naming::Suffix => format!("{registry}/{}:{}-linux-{arch}", self.image_name, self.tag()),
            Naming::Legacy => format!("{registry}/{}-{arch}:{}", self.image_name, self.tag()),
        }
    }

    pub fn base_for(&self, arch: Arch) -> &str {
        self.base_per_arch.get(&arch).unwrap_or(&self.base_default)
    }

    /// Where `arch`'s etcd comes from. With a chosen Go (`build.go_toolchain`), a release
    /// tarball cannot be what ships: such arches are rebuilt from the release's Go modules
    /// (the same source the tarball was built from), so every binary moves to that Go.
    pub fn source_for(&self, arch: Arch) -> Source {
        let configured = self
            .sources
            .get(&arch)
            .copied()
            .unwrap_or(if arch == Arch::Amd64 {
                Source::Release
            } else {
                Source::Build
            });
        match configured {
            Source::Release if self.gobuild.go_toolchain.is_some() => Source::Module,
            other => other,
        }
    }

    pub fn pin_for(&self, version: &Version, arch: Arch) -> Option<&str> {
        self.pins.get(&(version.clone(), arch)).map(String::as_str)
    }
}

/// Reads an environment variable; empty counts as unset (as the Makefile and migrate do).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where a value came from, for error messages.
enum Origin<'a> {
    Flag(&'a str),
    Env(&'a str),
    File(std::ops::Range<usize>),
    Default,
}

struct Resolver<'a> {
    loaded: &'a Loaded,
    env: EnvLookup<'a>,
    overrides: &'a OverrideArgs,
}

impl<'a> Resolver<'a> {
    fn error(&self, origin: &Origin<'_>, key: &str, message: String) -> ConfigError {
        match origin {
            Origin::File(span) => self.loaded.error_at(span.clone(), key, message),
            Origin::Env(var) => ConfigError {
                origin: format!("environment variable {var}"),
                line: None,
                column: None,
                key: key.into(),
                message,
                hint: Some(format!("fix or unset {var}")),
            },
            Origin::Flag(flag) => ConfigError {
                origin: format!("flag {flag}"),
                line: None,
                column: None,
                key: key.into(),
                message,
                hint: None,
            },
            Origin::Default => ConfigError {
                origin: "built-in default".into(),
                line: None,
                column: None,
                key: key.into(),
                message,
                hint: None,
            },
        }
    }

    /// The first of `vars` that is set (a Makefile variable may have had two names).
    fn first_set<'s>(&self, vars: &[&'s str]) -> Option<&'s str> {
        vars.iter().copied().find(|v| (self.env)(v).is_some())
    }

    /// flag > env > file > default, with the origin of the winner.
    fn pick<'s>(
        &self,
        flag: Option<(&'s str, &'s str)>,
        env_var: Option<&'s str>,
        file: Option<&'s Spanned<String>>,
    ) -> Option<(String, Origin<'s>)> {
        if let Some((name, value)) = flag {
            return Some((value.to_string(), Origin::Flag(name)));
        }
        if let Some(var) = env_var {
            if let Some(value) = (self.env)(var) {
                return Some((value, Origin::Env(var)));
            }
        }
        file.map(|v| (v.get_ref().clone(), Origin::File(v.span())))
    }
}

/// Resolves the settings for `loaded` with CLI overrides and the environment.
///
/// Each field group is resolved by its own [`Resolver`] method, which applies the sources in
/// the same order (flag > environment > images.toml > default) and names the winner's origin
/// in any error.
pub fn resolve(
    loaded: &Loaded,
    overrides: &OverrideArgs,
    cli_insecure: &[String],
    env: EnvLookup<'_>,
) -> Result<Settings, ConfigError> {
    let r = Resolver {
        loaded,
        env,
        overrides,
    };
    // In the order errors are reported when several values are bad.
    let bundled = r.bundled()?;
    let latest = r.latest(&bundled)?;
    let revision = r.revision()?;
    let arches = r.arches()?;
    let names = r.names()?;
    let bases = r.bases()?;
    let pins = r.pins()?;
    let insecure_registries = r.insecure_registries(cli_insecure);
    let source_date_epoch = r.source_date_epoch()?;
    let paths = r.paths();
    let gobuild = resolve_gobuild(&r, overrides, &paths.config_dir)?;
    let policy = r.policy()?;
    let go_policy = r.go_policy()?;
    Ok(Settings {
        policy,
        go_policy,
        gobuild,
        config_path: loaded.path.clone(),
        config_dir: paths.config_dir,
        latest,
        bundled,
        revision,
        arches,
        registry: names.registry,
        push_registry: names.push_registry,
        image_name: names.image_name,
        naming: names.naming,
        release_url: names.release_url,
        binary_mode: names.binary_mode,
        insecure_registries,
        ca_cert: paths.ca_cert,
        migrate_source_dir: paths.migrate_source_dir,
        migrate_auditable: loaded.doc.migrate.auditable.unwrap_or(true),
        base_default: bases.default,
        base_per_arch: bases.per_arch,
        sources: bases.sources,
        pins,
        source_date_epoch,
    })
}

/// Where the image goes and how it is named.
struct Names {
    registry: String,
    push_registry: String,
    image_name: String,
    naming: Naming,
    release_url: String,
    binary_mode: u32,
}

/// Base images and etcd sources, per arch.
struct Bases {
    default: String,
    per_arch: BTreeMap<Arch, String>,
    sources: BTreeMap<Arch, Source>,
}

/// Paths relative to images.toml's directory.
struct Paths {
    config_dir: PathBuf,
    migrate_source_dir: PathBuf,
    ca_cert: Option<PathBuf>,
}

fn flag<'v>(name: &'static str, value: &'v Option<String>) -> Option<(&'static str, &'v str)> {
    value.as_deref().map(|v| (name, v))
}

impl Resolver<'_> {
    /// etcd.bundled: a list in the file, a space/comma separated string in env and flags;
    /// non-empty, unique and ascending.
    fn bundled(&self) -> Result<Vec<Version>, ConfigError> {
        let (loaded, doc) = (self.loaded, &self.loaded.doc);
        let (bundled, origin) = match self.pick(
            flag("--bundled-versions", &self.overrides.bundled_versions),
            Some("BUNDLED_ETCD_VERSIONS"),
            None,
        ) {
            Some((text, origin)) => {
                let items: Vec<&str> = text.split([' ', ',']).filter(|s| !s.is_empty()).collect();
                if items.is_empty() {
                    return Err(self.error(
                        &origin,
                        "etcd.bundled",
                        "empty version list; list at least the latest version".into(),
                    ));
                }
                let versions = items
                    .iter()
                    .map(|s| {
                        config::parse_version(s).map_err(|m| self.error(&origin, "etcd.bundled", m))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (versions, origin)
            }
            None => match &doc.etcd.bundled {
                Some(list) => {
                    if list.get_ref().is_empty() {
                        return Err(loaded.error_at(
                            list.span(),
                            "etcd.bundled",
                            "empty version list; list at least the latest version",
                        ));
                    }
                    let versions = list
                        .get_ref()
                        .iter()
                        .map(|v| {
                            config::parse_version(v.get_ref())
                                .map_err(|m| loaded.error_at(v.span(), "etcd.bundled", m))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    (versions, Origin::File(list.span()))
                }
                None => {
                    return Err(self.error(
                        &Origin::File(0..0),
                        "etcd.bundled",
                        "missing; list the etcd versions to bundle, oldest first".into(),
                    ))
                }
            },
        };
        for pair in bundled.windows(2) {
            if pair[0] >= pair[1] {
                return Err(self.error(
                    &origin,
                    "etcd.bundled",
                    format!("versions must be unique and ascending (oldest first), but `{}` comes before `{}`", pair[0], pair[1]),
                ));
            }
        }
        Ok(bundled)
    }

    /// etcd.latest: one of `bundled`; the newest bundled version when unset.
    fn latest(&self, bundled: &[Version]) -> Result<Version, ConfigError> {
        let Some((text, origin)) = self.pick(
            flag("--etcd-version", &self.overrides.etcd_version),
            // LATEST_ETCD_VERSION is the Makefile's name; ETCD_VERSION the older one.
            self.first_set(&["ETCD_VERSION", "LATEST_ETCD_VERSION"]),
            self.loaded.doc.etcd.latest.as_ref(),
        ) else {
            return Ok(bundled.last().cloned().expect("bundled is non-empty"));
        };
        let v = config::parse_version(&text).map_err(|m| self.error(&origin, "etcd.latest", m))?;
        if !bundled.contains(&v) {
            let list: Vec<String> = bundled.iter().map(|v| v.to_string()).collect();
            let mut err = self.error(
                &origin,
                "etcd.latest",
                format!(
                    "latest version `{v}` is not in the bundled list [{}]",
                    list.join(", ")
                ),
            );
            err.hint = Some(
                "add it to etcd.bundled (BUNDLED_ETCD_VERSIONS) or pick a bundled version".into(),
            );
            return Err(err);
        }
        Ok(v)
    }

    /// etcd.revision: the tag's suffix, `0` when unset.
    fn revision(&self) -> Result<String, ConfigError> {
        match (
            &self.overrides.revision,
            (self.env)("REVISION"),
            &self.loaded.doc.etcd.revision,
        ) {
            (Some(v), _, _) => check_revision(v)
                .map_err(|m| self.error(&Origin::Flag("--revision"), "etcd.revision", m)),
            (None, Some(v), _) => check_revision(&v)
                .map_err(|m| self.error(&Origin::Env("REVISION"), "etcd.revision", m)),
            (None, None, Some(v)) => Ok(v.get_ref().to_string()),
            (None, None, None) => Ok("0".into()),
        }
    }

    /// image.arches (ALL_ARCH): de-duplicated, in the order given; every arch when unset.
    fn arches(&self) -> Result<Vec<Arch>, ConfigError> {
        let loaded = self.loaded;
        match ((self.env)("ALL_ARCH"), &loaded.doc.image.arches) {
            (Some(text), _) => {
                let list: Vec<&str> = text.split([' ', ',']).filter(|s| !s.is_empty()).collect();
                let origin = Origin::Env("ALL_ARCH");
                parse_arch_list(&list, |m| self.error(&origin, "image.arches", m))
            }
            (None, Some(list)) => {
                if list.get_ref().is_empty() {
                    return Err(loaded.error_at(list.span(), "image.arches", "empty arch list"));
                }
                let mut out = Vec::new();
                for a in list.get_ref() {
                    let arch = config::parse_arch(a.get_ref())
                        .map_err(|m| loaded.error_at(a.span(), "image.arches", m))?;
                    if !out.contains(&arch) {
                        out.push(arch);
                    }
                }
                Ok(out)
            }
            (None, None) => Ok(Arch::ALL.to_vec()),
        }
    }

    /// A string field: flag > env > file > `default`.
    fn string(
        &self,
        flag_value: Option<(&'static str, &str)>,
        var: Option<&'static str>,
        file: Option<&Spanned<String>>,
        default: &str,
    ) -> String {
        self.pick(flag_value, var, file)
            .map(|(v, _)| v)
            .unwrap_or_else(|| default.to_string())
    }

    /// Registries, image name, naming scheme, release URL (http or https) and binary mode.
    fn names(&self) -> Result<Names, ConfigError> {
        let (loaded, doc, o) = (self.loaded, &self.loaded.doc, self.overrides);
        let (release_url, url_origin) = self
            .pick(
                flag("--release-url", &o.release_url),
                Some("ETCD_RELEASE_URL"),
                doc.etcd.release_url.as_ref(),
            )
            .unwrap_or_else(|| (config::DEFAULT_RELEASE_URL.to_string(), Origin::Default));
        let release_url = release_url.trim_end_matches('/').to_string();
        if !(release_url.starts_with("http://") || release_url.starts_with("https://")) {
            return Err(self.error(
                &url_origin,
                "etcd.release_url",
                format!("`{release_url}` is not an http(s) URL"),
            ));
        }
        Ok(Names {
            registry: self.string(
                flag("--registry", &o.registry),
                Some("REGISTRY"),
                doc.image.registry.as_ref(),
                "registry.k8s.io",
            ),
            push_registry: self.string(
                flag("--push-registry", &o.push_registry),
                Some("PUSH_REGISTRY"),
                doc.image.push_registry.as_ref(),
                "staging-k8s.gcr.io",
            ),
            image_name: self.string(
                None,
                Some("ETCDIMG_IMAGE_NAME"),
                doc.image.name.as_ref(),
                "etcd",
            ),
            release_url,
            naming: match &doc.image.naming {
                Some(n) => config::parse_naming(n.get_ref())
                    .map_err(|m| loaded.error_at(n.span(), "image.naming", m))?,
                None => Naming::Suffix,
            },
            binary_mode: match &doc.image.binary_mode {
                Some(m) => config::parse_mode(m.get_ref())
                    .map_err(|e| loaded.error_at(m.span(), "image.binary_mode", e))?,
                None => 0o555,
            },
        })
    }

    /// Bases and sources. BASEIMAGE / --base-image override every arch's base, as the
    /// Makefile's did per run.
    fn bases(&self) -> Result<Bases, ConfigError> {
        let (loaded, doc) = (self.loaded, &self.loaded.doc);
        let base_override = self
            .pick(
                flag("--base-image", &self.overrides.base_image),
                Some("BASEIMAGE"),
                None,
            )
            .map(|(v, _)| v);
        let default = base_override.clone().unwrap_or_else(|| {
            doc.image
                .base
                .as_ref()
                .map(|b| b.get_ref().clone())
                .unwrap_or_else(|| config::DEFAULT_BASE_IMAGE.into())
        });
        let mut per_arch = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for (name, section) in &doc.arch {
            let arch = config::parse_arch(name.get_ref())
                .map_err(|m| loaded.error_at(name.span(), "arch", m))?;
            if let (Some(base), None) = (&section.base, &base_override) {
                per_arch.insert(arch, base.get_ref().clone());
            }
            if let Some(source) = &section.source {
                let s = config::parse_source(source.get_ref()).map_err(|m| {
                    loaded.error_at(source.span(), &format!("arch.{arch}.source"), m)
                })?;
                sources.insert(arch, s);
            }
        }
        Ok(Bases {
            default,
            per_arch,
            sources,
        })
    }

    /// etcd.sha256: `"<version>/<arch>" = "<hex>"` pins, lower-cased, `sha256:` stripped.
    fn pins(&self) -> Result<BTreeMap<(Version, Arch), String>, ConfigError> {
        let loaded = self.loaded;
        let mut pins = BTreeMap::new();
        for (key, value) in &loaded.doc.etcd.sha256 {
            let k = key.get_ref();
            let (v, a) = k.split_once('/').ok_or_else(|| {
                loaded.error_at(
                    key.span(),
                    "etcd.sha256",
                    format!("key `{k}` must be `<version>/<arch>`, e.g. `3.5.1/amd64`"),
                )
            })?;
            let version = config::parse_version(v)
                .map_err(|m| loaded.error_at(key.span(), "etcd.sha256", m))?;
            let arch =
                config::parse_arch(a).map_err(|m| loaded.error_at(key.span(), "etcd.sha256", m))?;
            let digest = value.get_ref().trim().to_ascii_lowercase();
            let digest = digest
                .strip_prefix("sha256:")
                .unwrap_or(&digest)
                .to_string();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(loaded.error_at(
                    value.span(),
                    &format!("etcd.sha256.\"{k}\""),
                    "expected 64 hex digits of a sha256",
                ));
            }
            pins.insert((version, arch), digest);
        }
        Ok(pins)
    }

    /// The file's list, then `--insecure-registry` flags, then ETCDIMG_INSECURE_REGISTRIES.
    fn insecure_registries(&self, cli_insecure: &[String]) -> Vec<String> {
        let mut out = self.loaded.doc.image.insecure_registries.clone();
        out.extend(cli_insecure.iter().cloned());
        if let Some(list) = (self.env)("ETCDIMG_INSECURE_REGISTRIES") {
            out.extend(
                list.split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
        out
    }

    /// SOURCE_DATE_EPOCH, or 0.
    fn source_date_epoch(&self) -> Result<u64, ConfigError> {
        match (self.env)("SOURCE_DATE_EPOCH") {
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                self.error(
                    &Origin::Env("SOURCE_DATE_EPOCH"),
                    "SOURCE_DATE_EPOCH",
                    format!("`{v}` is not a unix timestamp"),
                )
            }),
            None => Ok(0),
        }
    }

    /// images.toml's directory (`.` for a bare file name) and the paths relative to it.
    fn paths(&self) -> Paths {
        let doc = &self.loaded.doc;
        let config_dir = self
            .loaded
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let config_dir = if config_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            config_dir
        };
        Paths {
            migrate_source_dir: config_dir
                .join(doc.migrate.source_dir.as_deref().unwrap_or("migrate")),
            ca_cert: doc.image.ca_cert.as_ref().map(|c| config_dir.join(c)),
            config_dir,
        }
    }

    /// The built-in policy, tightened by images.toml's `[policy]`.
    fn policy(&self) -> Result<etcd_policy::Policy, ConfigError> {
        let mut policy = etcd_policy::Policy::builtin();
        if let Some(ext) = &self.loaded.doc.policy {
            policy
                .extend(ext.get_ref())
                .map_err(|message| self.loaded.error_at(ext.span(), "policy", message))?;
        }
        Ok(policy)
    }

    /// The built-in Go policy, tightened by images.toml's `[policy.go]`.
    fn go_policy(&self) -> Result<etcd_policy::go::GoPolicy, ConfigError> {
        let mut policy = etcd_policy::go::GoPolicy::builtin();
        if let Some(ext) = &self.loaded.doc.policy {
            if let Some(go) = &ext.get_ref().go {
                policy
                    .extend(go)
                    .map_err(|message| self.loaded.error_at(ext.span(), "policy.go", message))?;
            }
        }
        Ok(policy)
    }
}

/// `[build.source."<version>"]`: where each version's source comes from (exactly one of
/// `git`, `url`, `dir`), paths taken relative to images.toml.
fn build_sources(
    loaded: &Loaded,
    config_dir: &Path,
) -> Result<BTreeMap<semver::Version, crate::gobuild::SourceSpec>, ConfigError> {
    use crate::gobuild::SourceSpec;
    let build = &loaded.doc.build;
    let mut sources = BTreeMap::new();
    for (key, entry) in &build.source {
        let k = format!("build.source.\"{}\"", key.get_ref());
        let version =
            config::parse_version(key.get_ref()).map_err(|m| loaded.error_at(key.span(), &k, m))?;
        let spec = match (&entry.git, &entry.url, &entry.dir) {
            (Some(repo), None, None) => SourceSpec::Git {
                repo: repo.clone(),
                gopath: entry.gopath.as_ref().map(|g| config_dir.join(g)),
            },
            (None, Some(url), None) => SourceSpec::Url {
                url: url.clone(),
                sha256: entry.sha256.clone(),
                gopath: entry.gopath.as_ref().map(|g| config_dir.join(g)),
            },
            (None, None, Some(dir)) => SourceSpec::Dir {
                path: config_dir.join(dir),
                gopath: entry.gopath.as_ref().map(|g| config_dir.join(g)),
            },
            _ => {
                return Err(loaded.error_at(
                    key.span(),
                    &k,
                    "give exactly one of `git`, `url` or `dir`",
                ))
            }
        };
        sources.insert(version, spec);
    }
    Ok(sources)
}

fn resolve_gobuild(
    r: &Resolver<'_>,
    overrides: &OverrideArgs,
    config_dir: &Path,
) -> Result<crate::gobuild::GoBuildSettings, ConfigError> {
    use crate::gobuild::{self, BuilderChoice};
    let loaded = r.loaded;
    let build = &loaded.doc.build;
    let builder = match r.pick(
        overrides.builder.as_deref().map(|v| ("--builder", v)),
        Some("ETCDIMG_BUILDER"),
        build.builder.as_ref(),
    ) {
        Some((v, origin)) => v
            .parse::<BuilderChoice>()
            .map_err(|m| r.error(&origin, "build.builder", m))?,
        None => BuilderChoice::Auto,
    };
    let golang_version = r
        .pick(None, Some("GOLANG_VERSION"), build.golang_version.as_ref())
        .map(|(v, _)| v.trim().to_string())
        .unwrap_or_else(|| gobuild::DEFAULT_GOLANG_VERSION.into());
    let go_toolchain = match r.pick(
        overrides
            .go_toolchain
            .as_deref()
            .map(|v| ("--go-toolchain", v)),
        Some("ETCDIMG_GO_TOOLCHAIN"),
        build.go_toolchain.as_ref(),
    ) {
        Some((v, origin)) => {
            let v = v.trim().to_string();
            let ok = v.starts_with("go")
                && etcd_policy::go::parse_go_version(&v).is_some_and(|p| p.pre.is_empty())
                && !v.contains(char::is_whitespace);
            if !ok {
                return Err(r.error(
                    &origin,
                    "build.go_toolchain",
                    format!("`{v}` is not a Go release like go1.27.3 (what GOTOOLCHAIN takes)"),
                ));
            }
            Some(v)
        }
        None => None,
    };
    let source_repo = build
        .source_repo
        .as_ref()
        .map(|v| v.get_ref().trim().to_string())
        .unwrap_or_else(|| gobuild::DEFAULT_SOURCE_REPO.into());
    let patches_dir = config_dir.join(build.patches_dir.as_deref().unwrap_or("patches"));
    let sources = build_sources(loaded, config_dir)?;
    Ok(crate::gobuild::GoBuildSettings {
        builder,
        golang_version,
        go_toolchain,
        strip: build.strip.unwrap_or(true),
        source_repo,
        patches_dir,
        sources,
    })
}

fn check_revision(v: &str) -> Result<String, String> {
    let v = v.trim();
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        Ok(v.to_string())
    } else {
        Err(format!(
            "invalid revision `{v}`, expected a number such as `0`"
        ))
    }
}

fn parse_arch_list(
    items: &[&str],
    err: impl Fn(String) -> ConfigError,
) -> Result<Vec<Arch>, ConfigError> {
    if items.is_empty() {
        return Err(err("empty arch list".into()));
    }
    let mut out = Vec::new();
    for item in items {
        let arch = config::parse_arch(item).map_err(&err)?;
        if !out.contains(&arch) {
            out.push(arch);
        }
    }
    Ok(out)
}

/// Parses the arch a verb was asked for (`--arch` / ARCH) and checks it is configured.
pub fn selected_arch(settings: &Settings, text: &str) -> Result<Arch, ConfigError> {
    let arch = config::parse_arch(text).map_err(|m| ConfigError {
        origin: "flag --arch (or ARCH)".into(),
        line: None,
        column: None,
        key: "arch".into(),
        message: m,
        hint: None,
    })?;
    if !settings.arches.contains(&arch) {
        return Err(ConfigError {
            origin: settings.config_path.display().to_string(),
            line: None,
            column: None,
            key: "image.arches".into(),
            message: format!("arch `{arch}` is not in image.arches"),
            hint: Some("add it to image.arches in images.toml (or ALL_ARCH)".into()),
        });
    }
    Ok(arch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD: &str = r#"
[etcd]
latest = "3.5.1"
bundled = ["3.4.23", "3.5.1"]
revision = 2

[image]
registry = "example.com/k8s"
arches = ["amd64", "arm64"]
"#;

    fn resolve_with(
        text: &str,
        env: &[(&str, &str)],
        overrides: OverrideArgs,
    ) -> Result<Settings, ConfigError> {
        let loaded = config::parse(Path::new("images.toml"), text.to_string()).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.get(k).cloned().filter(|v| !v.is_empty());
        resolve(&loaded, &overrides, &[], &lookup)
    }

    #[test]
    fn file_values() {
        let s = resolve_with(GOOD, &[], OverrideArgs::default()).unwrap();
        assert_eq!(s.tag(), "3.5.1-2");
        assert_eq!(s.arches, vec![Arch::Amd64, Arch::Arm64]);
        assert_eq!(
            s.arch_image("r.io", Arch::Arm64),
            "r.io/etcd:3.5.1-2-linux-arm64"
        );
        assert_eq!(s.source_for(Arch::Amd64), Source::Release);
        assert_eq!(s.source_for(Arch::Arm64), Source::Build);
        assert_eq!(s.binary_mode, 0o555);
    }

    #[test]
    fn env_beats_file_and_flag_beats_env() {
        let s = resolve_with(
            GOOD,
            &[("REVISION", "7"), ("REGISTRY", "env.io")],
            OverrideArgs::default(),
        )
        .unwrap();
        assert_eq!(s.revision, "7");
        assert_eq!(s.registry, "env.io");
        let o = OverrideArgs {
            revision: Some("9".into()),
            ..Default::default()
        };
        let s = resolve_with(GOOD, &[("REVISION", "7")], o).unwrap();
        assert_eq!(s.revision, "9");
    }

    #[test]
    fn makefile_bundled_list() {
        let s = resolve_with(
            GOOD,
            &[("BUNDLED_ETCD_VERSIONS", "3.4.23 3.5.0 3.5.1")],
            OverrideArgs::default(),
        )
        .unwrap();
        assert_eq!(s.bundled.len(), 3);
    }

    #[test]
    fn latest_not_bundled_names_the_line() {
        let text = GOOD.replace("latest = \"3.5.1\"", "latest = \"3.5.2\"");
        let err = resolve_with(&text, &[], OverrideArgs::default()).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key, "etcd.latest");
        assert!(err.message.contains("not in the bundled list"), "{err}");
    }

    #[test]
    fn bad_semver_names_the_line() {
        let text = GOOD.replace("\"3.4.23\"", "\"3.4\"");
        let err = resolve_with(&text, &[], OverrideArgs::default()).unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("invalid semver `3.4`"), "{err}");
    }

    #[test]
    fn bad_env_semver_names_the_variable() {
        let err =
            resolve_with(GOOD, &[("ETCD_VERSION", "three")], OverrideArgs::default()).unwrap_err();
        assert_eq!(err.origin, "environment variable ETCD_VERSION");
    }

    #[test]
    fn makefile_names_latest_etcd_version_and_golang_version_work() {
        let s = resolve_with(
            GOOD,
            &[
                ("LATEST_ETCD_VERSION", "3.5.0"),
                ("BUNDLED_ETCD_VERSIONS", "3.4.23 3.5.0"),
                ("GOLANG_VERSION", "1.19.9"),
            ],
            OverrideArgs::default(),
        )
        .unwrap();
        assert_eq!(s.latest.to_string(), "3.5.0");
        assert_eq!(s.gobuild.golang_version, "1.19.9");
        // ETCD_VERSION wins over LATEST_ETCD_VERSION; a bad value names the one it came from.
        let err = resolve_with(
            GOOD,
            &[("ETCD_VERSION", "3.5.1"), ("LATEST_ETCD_VERSION", "x")],
            OverrideArgs::default(),
        )
        .map(|s| s.latest.to_string());
        assert_eq!(err.unwrap(), "3.5.1");
        let err = resolve_with(
            GOOD,
            &[("LATEST_ETCD_VERSION", "x")],
            OverrideArgs::default(),
        )
        .unwrap_err();
        assert_eq!(err.origin, "environment variable LATEST_ETCD_VERSION");
    }

    #[test]
    fn unknown_arch_names_the_line() {
        let text = GOOD.replace("\"arm64\"]", "\"mips\"]");
        let err = resolve_with(&text, &[], OverrideArgs::default()).unwrap_err();
        assert_eq!(err.line, Some(9));
        assert!(err.message.contains("unknown arch `mips`"), "{err}");
    }

    #[test]
    fn empty_lists_are_errors() {
        let text = GOOD.replace("bundled = [\"3.4.23\", \"3.5.1\"]", "bundled = []");
        let err = resolve_with(&text, &[], OverrideArgs::default()).unwrap_err();
        assert!(err.message.contains("empty version list"), "{err}");
        let text = GOOD.replace("arches = [\"amd64\", \"arm64\"]", "arches = []");
        assert!(resolve_with(&text, &[], OverrideArgs::default())
            .unwrap_err()
            .message
            .contains("empty arch list"));
    }

    #[test]
    fn unsorted_bundled_is_an_error() {
        let text = GOOD.replace("[\"3.4.23\", \"3.5.1\"]", "[\"3.5.1\", \"3.4.23\"]");
        assert!(resolve_with(&text, &[], OverrideArgs::default())
            .unwrap_err()
            .message
            .contains("ascending"));
    }

    #[test]
    fn pins_are_checked() {
        let text = GOOD.replace(
            "revision = 2\n",
            "revision = 2\nsha256 = { \"3.5.1/amd64\" = \"abc\" }\n",
        );
        let err = resolve_with(&text, &[], OverrideArgs::default()).unwrap_err();
        assert!(err.message.contains("64 hex digits"), "{err}");
        let good_pin = "a".repeat(64);
        let text = text.replace("\"abc\"", &format!("\"sha256:{good_pin}\""));
        let s = resolve_with(&text, &[], OverrideArgs::default()).unwrap();
        assert_eq!(
            s.pin_for(&Version::new(3, 5, 1), Arch::Amd64),
            Some(good_pin.as_str())
        );
    }

    #[test]
    fn base_image_override_applies_to_every_arch() {
        let text = format!("{GOOD}\n[arch.arm64]\nbase = \"other/busybox:1\"\n");
        let s = resolve_with(&text, &[], OverrideArgs::default()).unwrap();
        assert_eq!(s.base_for(Arch::Arm64), "other/busybox:1");
        let s = resolve_with(&text, &[("BASEIMAGE", "oci:/x:1")], OverrideArgs::default()).unwrap();
        assert_eq!(s.base_for(Arch::Arm64), "oci:/x:1");
        assert_eq!(s.base_for(Arch::Amd64), "oci:/x:1");
    }
}
