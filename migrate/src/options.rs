//! The command line of the reference (§3.1, §7.1): every flag, its env fallback and default.
//! An empty environment variable counts as unset. Precedence: flag > env > default.

use std::path::PathBuf;

use clap::Parser;
use semver::Version;

use crate::version::{parse_version, Storage, VersionPair};

/// Migrates an etcd data directory to TARGET_VERSION/TARGET_STORAGE before etcd starts.
///
/// Upgrades one minor version at a time through the bundled versions; never loses data.
#[derive(Debug, Parser, Clone, Default)]
#[command(name = "migrate", version)]
pub struct Flags {
    /// Member name for the temporary server and restores [env: MIGRATE_ETCD_NAME, then ETCD_NAME; default: etcd-$ETCD_HOSTNAME, etcd-$HOSTNAME, or etcd-<hostname>].
    #[arg(long)]
    pub name: Option<String>,
    /// etcd data directory.
    #[arg(long, env = "DATA_DIRECTORY")]
    pub data_dir: Option<PathBuf>,
    /// Client port of the temporary etcd [default: 18631 if the data dir path contains "event", else 18629].
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Peer port of the temporary etcd [default: 2381 if the data dir path contains "event", else 2380].
    #[arg(long, default_value_t = 0)]
    pub peer_port: u16,
    /// --initial-cluster for the temporary etcd and restores [default: <name>=http://localhost:<peer-port>].
    #[arg(long, env = "INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// --listen-peer-urls for the temporary etcd [default: http://localhost:<peer-port>].
    #[arg(long, env = "LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// --initial-advertise-peer-urls for the temporary etcd and restores [default: http://localhost:<peer-port>].
    #[arg(long, env = "INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// --listen-client-urls for the temporary etcd [default: http://127.0.0.1:<port>].
    #[arg(long, env = "LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Version to migrate to, MAJOR.MINOR.PATCH.
    #[arg(long, env = "TARGET_VERSION")]
    pub target_version: Option<String>,
    /// Storage to migrate to: etcd2 or etcd3.
    #[arg(long, env = "TARGET_STORAGE")]
    pub target_storage: Option<String>,
    /// Key prefix of the Kubernetes data.
    #[arg(long, env = "ETCD_DATA_PREFIX", default_value = "/registry")]
    pub etcd_data_prefix: String,
    /// Keys under this prefix get a 1h lease after an etcd2→etcd3 upgrade [env: TTL_KEYS_DIRECTORY; default: <prefix>/events].
    #[arg(long)]
    pub ttl_keys_directory: Option<String>,
    /// Lease given to the keys under --ttl-keys-directory after an etcd2→etcd3 upgrade: seconds, or a duration such as 1h, 90m, 3600s (the original attachlease's --lease-duration).
    #[arg(long, default_value = "1h", value_parser = parse_duration_seconds)]
    pub lease_duration: i64,
    /// Extra flags for the temporary etcd, split on whitespace (e.g. peer TLS flags).
    #[arg(long, env = "ETCD_CREDS", default_value = "")]
    pub etcd_server_extra_args: String,
    /// Bundled etcd versions, comma separated, oldest first [default: every <bin-dir>/etcd-<V>].
    #[arg(long, alias = "supported-versions")]
    pub bundled_versions: Option<String>,
    /// Directory holding etcd-<V> and etcdctl-<V>.
    #[arg(long, default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// etcd's version policy as JSON (written into the image by etcdimg from images.toml)
    /// [default: <bin-dir>/../share/etcdimg/version-policy.json if present, else the built-in
    /// policy].
    #[arg(long, env = "MIGRATE_VERSION_POLICY")]
    pub version_policy: Option<PathBuf>,
    /// How long to wait for another migrate that holds the same data dir before refusing
    /// (exit 22): seconds, or a duration such as 10m.
    #[arg(long, env = "MIGRATE_LOCK_WAIT", default_value = "10m", value_parser = parse_wait_seconds)]
    pub lock_wait: i64,
    /// Print the fingerprint of the data dir's backend as JSON and exit (read only, offline:
    /// etcd must be stopped; the same fingerprint migrate compares around every step).
    #[arg(long)]
    pub fingerprint: bool,
}

/// Options after defaulting; every field is set.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    /// Where `name` came from (`--name`, `ETCD_NAME`, `HOSTNAME`, ...), for error messages.
    pub name_source: String,
    pub data_dir: PathBuf,
    pub port: u16,
    pub peer_port: u16,
    pub initial_cluster: String,
    /// Where `initial_cluster` came from (`--initial-cluster`, `INITIAL_CLUSTER`, the default).
    pub initial_cluster_source: String,
    pub listen_peer_urls: String,
    pub initial_advertise_peer_urls: String,
    pub listen_client_urls: String,
    pub target: VersionPair,
    pub etcd_data_prefix: String,
    pub ttl_keys_directory: String,
    /// Seconds.
    pub lease_duration: i64,
    pub etcd_server_extra_args: Vec<String>,
    pub bundled_versions: Vec<Version>,
    pub bin_dir: PathBuf,
    pub dry_run: bool,
    pub json: bool,
    /// Seconds to wait for another migrate holding the data dir.
    pub lock_wait: i64,
    /// etcd's version policy (upgrade minimums, restore tools).
    pub policy: etcd_policy::Policy,
    /// Log lines about defaults that were applied.
    pub defaults_log: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("--{0} is required (or set {1})")]
    Required(&'static str, &'static str),
    #[error("defaulting --name failed: set --name, ETCD_NAME, ETCD_HOSTNAME or HOSTNAME")]
    NoName,
    #[error("--target-version: {0}")]
    BadTargetVersion(String),
    #[error("--target-storage: {0}")]
    UnknownStorage(String),
    #[error("--bundled-versions: {0}")]
    BadBundled(String),
    #[error("the version policy `{path}`: {message}")]
    BadPolicy { path: String, message: String },
}

/// `fallbackToEnv` of the reference: the variable's value, or an error when unset or empty.
pub fn fallback_to_env(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<String, String> {
    env(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{name} variable unset - expected failure"))
}

/// `fallbackToEnvWithDefault`: the variable's value, or `default` when unset or empty.
pub fn fallback_to_env_with_default(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: &str,
) -> String {
    env(name)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// `3600`, `3600s`, `90m`, `1h` or a sum such as `1h30m` -> seconds (at least 1).
pub fn parse_duration_seconds(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return if n > 0 {
            Ok(n)
        } else {
            Err(format!("`{text}` must be positive"))
        };
    }
    let (mut total, mut number) = (0i64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "`{text}`: expected seconds or a duration like 1h, 90m, 3600s"
                ))
            }
        };
        let n: i64 = number
            .parse()
            .map_err(|_| format!("`{text}`: a number must come before `{c}`"))?;
        total = total
            .checked_add(n.checked_mul(unit).ok_or("duration too long")?)
            .ok_or("duration too long")?;
        number.clear();
    }
    if !number.is_empty() || total <= 0 {
        return Err(format!(
            "`{text}`: expected seconds or a duration like 1h, 90m, 3600s"
        ));
    }
    Ok(total)
}

/// The version policy: `explicit`, else `<bin_dir>/../share/etcdimg/version-policy.json` when
/// the image has one, else the built-in policy.
fn load_policy(
    explicit: Option<&std::path::Path>,
    bin_dir: &std::path::Path,
) -> Result<etcd_policy::Policy, OptionsError> {
    let shipped = bin_dir.join("..").join(etcd_policy::IMAGE_FILE);
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if shipped.is_file() => shipped,
        None => return Ok(etcd_policy::Policy::builtin()),
    };
    let fail = |message: String| OptionsError::BadPolicy {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
    etcd_policy::Policy::from_json(&text).map_err(fail)
}

/// Like [`parse_duration_seconds`], but 0 (do not wait) is allowed.
pub fn parse_wait_seconds(text: &str) -> Result<i64, String> {
    if text.trim().trim_end_matches('s') == "0" {
        return Ok(0);
    }
    parse_duration_seconds(text)
}

/// Parses a comma (or space) separated list of strict semver versions.
pub fn parse_bundled(text: &str) -> Result<Vec<Version>, String> {
    let mut out = Vec::new();
    for item in text
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        out.push(parse_version(item)?);
    }
    if out.is_empty() {
        return Err("empty list".into());
    }
    Ok(out)
}

/// Finds bundled versions from `<bin_dir>/etcd-<V>` files.
pub fn discover_bundled(bin_dir: &std::path::Path) -> Vec<Version> {
    let mut out: Vec<Version> = std::fs::read_dir(bin_dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("etcd-"))
                        .and_then(|v| Version::parse(v).ok())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Reads the environment; empty counts as unset.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The member's URLs, each the flag or its default.
struct Urls {
    initial_cluster: String,
    initial_cluster_source: String,
    listen_peer_urls: String,
    initial_advertise_peer_urls: String,
    listen_client_urls: String,
}

fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    (rc == 0 && end > 0).then(|| String::from_utf8_lossy(&buf[..end]).into_owned())
}

impl Flags {
    /// Applies defaults in the reference's order; `env` reads the environment (empty = unset).
    /// Every default taken is logged (`defaults_log`), as the original's script did.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Options, OptionsError> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        let mut log = Vec::new();
        let (name, name_source) = self.member_name(&get, &mut log)?;
        let data_dir = self
            .data_dir
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or(OptionsError::Required("data-dir", "DATA_DIRECTORY"))?;
        // Absolute from here on: the sidecars (journal, working copy, lock) are named after
        // the data dir and placed beside it, and every etcd the run starts gets this path; a
        // relative `data` would leave a journal named `.data.migrate-journal` that recovery
        // then looked for in another directory.
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        let (port, peer_port) = self.ports(&data_dir);
        let urls = self.urls(&name, port, peer_port, &get, &mut log);
        let target = self.target()?;
        let prefix = self.etcd_data_prefix.clone();
        let ttl_keys_directory = match self
            .ttl_keys_directory
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| get("TTL_KEYS_DIRECTORY"))
        {
            Some(t) => t,
            None => format!("{}/events", prefix.trim_end_matches('/')),
        };
        let bundled_versions = match &self.bundled_versions {
            Some(text) => parse_bundled(text).map_err(OptionsError::BadBundled)?,
            None => discover_bundled(&self.bin_dir),
        };
        let policy = load_policy(self.version_policy.as_deref(), &self.bin_dir)?;
        Ok(Options {
            policy,
            name,
            name_source,
            data_dir,
            port,
            peer_port,
            initial_cluster: urls.initial_cluster,
            initial_cluster_source: urls.initial_cluster_source,
            listen_peer_urls: urls.listen_peer_urls,
            initial_advertise_peer_urls: urls.initial_advertise_peer_urls,
            listen_client_urls: urls.listen_client_urls,
            target,
            etcd_data_prefix: prefix,
            ttl_keys_directory,
            lease_duration: self.lease_duration,
            etcd_server_extra_args: self
                .etcd_server_extra_args
                .split_whitespace()
                .map(String::from)
                .collect(),
            bundled_versions,
            bin_dir: self.bin_dir.clone(),
            dry_run: self.dry_run,
            json: self.json,
            lock_wait: self.lock_wait,
            defaults_log: log,
        })
    }

    /// The member name and where it came from: --name, MIGRATE_ETCD_NAME, ETCD_NAME, then
    /// `etcd-<host>` from ETCD_HOSTNAME, HOSTNAME or the system's hostname.
    fn member_name(
        &self,
        get: Env<'_>,
        log: &mut Vec<String>,
    ) -> Result<(String, String), OptionsError> {
        if let Some(n) = self.name.as_ref().filter(|n| !n.is_empty()) {
            return Ok((n.clone(), "--name".into()));
        }
        for var in ["MIGRATE_ETCD_NAME", "ETCD_NAME"] {
            if let Some(n) = get(var) {
                return Ok((n, var.into()));
            }
        }
        for var in ["ETCD_HOSTNAME", "HOSTNAME"] {
            if let Some(h) = get(var) {
                log.push(format!("--name unset, defaulting to etcd-{h} ({var})"));
                return Ok((format!("etcd-{h}"), format!("etcd-${var}")));
            }
        }
        match system_hostname() {
            Some(h) => {
                log.push(format!("--name unset, defaulting to etcd-{h} (hostname)"));
                Ok((format!("etcd-{h}"), "etcd-<hostname>".into()))
            }
            None => Err(OptionsError::NoName),
        }
    }

    /// Client and peer ports: the flags, else the reference's defaults (events data dirs get
    /// their own pair, so that both members of a host can migrate at once).
    fn ports(&self, data_dir: &std::path::Path) -> (u16, u16) {
        let events = data_dir.to_string_lossy().contains("event");
        let port = match (self.port, events) {
            (0, true) => 18631,
            (0, false) => 18629,
            (p, _) => p,
        };
        let peer_port = match (self.peer_port, events) {
            (0, true) => 2381,
            (0, false) => 2380,
            (p, _) => p,
        };
        (port, peer_port)
    }

    fn urls(
        &self,
        name: &str,
        port: u16,
        peer_port: u16,
        get: Env<'_>,
        log: &mut Vec<String>,
    ) -> Urls {
        let mut default = |value: &Option<String>, flag: &str, def: String| -> String {
            match value.as_ref().filter(|v| !v.is_empty()) {
                Some(v) => v.clone(),
                None => {
                    log.push(format!("--{flag} unset - defaulting to {def}"));
                    def
                }
            }
        };
        let initial_cluster_source = match self.initial_cluster.as_ref().filter(|v| !v.is_empty()) {
            None => "the default <name>=http://localhost:<peer port>".to_string(),
            Some(v) if get("INITIAL_CLUSTER").as_ref() == Some(v) => "INITIAL_CLUSTER".into(),
            Some(_) => "--initial-cluster".into(),
        };
        let peer = format!("http://localhost:{peer_port}");
        Urls {
            initial_cluster: default(
                &self.initial_cluster,
                "initial-cluster",
                format!("{name}={peer}"),
            ),
            initial_cluster_source,
            listen_peer_urls: default(&self.listen_peer_urls, "listen-peer-urls", peer.clone()),
            initial_advertise_peer_urls: default(
                &self.initial_advertise_peer_urls,
                "initial-advertise-peer-urls",
                peer,
            ),
            listen_client_urls: default(
                &self.listen_client_urls,
                "listen-client-urls",
                format!("http://127.0.0.1:{port}"),
            ),
        }
    }

    /// TARGET_VERSION and TARGET_STORAGE, both required.
    fn target(&self) -> Result<VersionPair, OptionsError> {
        let target_version = self
            .target_version
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or(OptionsError::Required("target-version", "TARGET_VERSION"))?;
        let target_storage = self
            .target_storage
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or(OptionsError::Required("target-storage", "TARGET_STORAGE"))?;
        let version =
            parse_version(target_version.trim()).map_err(OptionsError::BadTargetVersion)?;
        let storage =
            Storage::parse(target_storage.trim()).map_err(OptionsError::UnknownStorage)?;
        Ok(VersionPair::new(version, storage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    // Reference §5.3 "Unit: options".
    #[test]
    fn fallback_to_env_cases() {
        assert!(fallback_to_env(&env_of(&[]), "FOO").is_err());
        assert!(fallback_to_env(&env_of(&[("FOO", "")]), "FOO").is_err());
        assert_eq!(
            fallback_to_env(&env_of(&[("FOO", "foo")]), "FOO").unwrap(),
            "foo"
        );
        assert_eq!(
            fallback_to_env_with_default(&env_of(&[]), "FOO", "default"),
            "default"
        );
        assert_eq!(
            fallback_to_env_with_default(&env_of(&[("FOO", "")]), "FOO", "default"),
            "default"
        );
        assert_eq!(
            fallback_to_env_with_default(&env_of(&[("FOO", "foo")]), "FOO", "default"),
            "foo"
        );
    }

    fn flags() -> Flags {
        Flags {
            data_dir: Some("/var/etcd/data".into()),
            target_version: Some("3.5.1".into()),
            target_storage: Some("etcd3".into()),
            etcd_data_prefix: "/registry".into(),
            bundled_versions: Some("3.4.23, 3.5.1".into()),
            bin_dir: "/usr/local/bin".into(),
            lease_duration: 3600,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_the_reference() {
        let o = flags().resolve(&env_of(&[("HOSTNAME", "node1")])).unwrap();
        assert_eq!(o.name, "etcd-node1");
        assert_eq!((o.port, o.peer_port), (18629, 2380));
        assert_eq!(o.initial_cluster, "etcd-node1=http://localhost:2380");
        assert_eq!(o.listen_client_urls, "http://127.0.0.1:18629");
        assert_eq!(o.ttl_keys_directory, "/registry/events");
        assert_eq!(o.bundled_versions.len(), 2);
        assert_eq!(o.target.to_string(), "3.5.1/etcd3");
    }

    #[test]
    fn event_data_dirs_use_other_ports() {
        let mut f = flags();
        f.data_dir = Some("/var/etcd/data-events".into());
        let o = f.resolve(&env_of(&[("ETCD_NAME", "m")])).unwrap();
        assert_eq!((o.port, o.peer_port), (18631, 2381));
        assert_eq!(o.name, "m");
    }

    #[test]
    fn name_prefers_etcd_hostname() {
        let o = flags()
            .resolve(&env_of(&[("ETCD_HOSTNAME", "a"), ("HOSTNAME", "b")]))
            .unwrap();
        assert_eq!(o.name, "etcd-a");
    }

    #[test]
    fn required_and_invalid() {
        let mut f = flags();
        f.target_storage = None;
        assert_eq!(
            f.resolve(&env_of(&[("HOSTNAME", "h")])).unwrap_err(),
            OptionsError::Required("target-storage", "TARGET_STORAGE")
        );
        let mut f = flags();
        f.target_storage = Some("etcd4".into());
        assert!(matches!(
            f.resolve(&env_of(&[("HOSTNAME", "h")])),
            Err(OptionsError::UnknownStorage(_))
        ));
        let mut f = flags();
        f.target_version = Some("3.5".into());
        assert!(matches!(
            f.resolve(&env_of(&[("HOSTNAME", "h")])),
            Err(OptionsError::BadTargetVersion(_))
        ));
        // Nothing in the environment: the OS hostname, as the original's os.Hostname().
        let o = flags().resolve(&env_of(&[])).unwrap();
        assert!(
            o.name.starts_with("etcd-") && o.name.len() > 5,
            "{}",
            o.name
        );
        assert_eq!(o.name_source, "etcd-<hostname>");
    }

    #[test]
    fn name_sources_are_recorded() {
        for (env, name, source) in [
            (
                vec![("MIGRATE_ETCD_NAME", "m"), ("ETCD_NAME", "e")],
                "m",
                "MIGRATE_ETCD_NAME",
            ),
            (
                vec![("ETCD_NAME", "e"), ("HOSTNAME", "h")],
                "e",
                "ETCD_NAME",
            ),
            (vec![("HOSTNAME", "h")], "etcd-h", "etcd-$HOSTNAME"),
        ] {
            let o = flags().resolve(&env_of(&env)).unwrap();
            assert_eq!((o.name.as_str(), o.name_source.as_str()), (name, source));
        }
        let mut f = flags();
        f.initial_cluster = Some("a=http://x:1".into());
        let o = f
            .resolve(&env_of(&[
                ("HOSTNAME", "h"),
                ("INITIAL_CLUSTER", "a=http://x:1"),
            ]))
            .unwrap();
        assert_eq!(o.initial_cluster_source, "INITIAL_CLUSTER");
        let o = f.resolve(&env_of(&[("HOSTNAME", "h")])).unwrap();
        assert_eq!(o.initial_cluster_source, "--initial-cluster");
        let o = flags().resolve(&env_of(&[("HOSTNAME", "h")])).unwrap();
        assert!(o.initial_cluster_source.starts_with("the default"));
    }

    #[test]
    fn lease_durations() {
        for (text, want) in [
            ("1h", 3600),
            ("3600", 3600),
            ("90m", 5400),
            ("1h30m", 5400),
            ("45s", 45),
        ] {
            assert_eq!(parse_duration_seconds(text), Ok(want), "{text}");
        }
        for bad in ["", "0", "-5", "h", "1d", "10x", "1h5"] {
            assert!(parse_duration_seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttl_keys_directory_env_is_honoured() {
        let o = flags()
            .resolve(&env_of(&[
                ("HOSTNAME", "h"),
                ("TTL_KEYS_DIRECTORY", "/x/ttl"),
            ]))
            .unwrap();
        assert_eq!(o.ttl_keys_directory, "/x/ttl");
    }
}
