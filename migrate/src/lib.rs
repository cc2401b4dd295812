//! `migrate`: brings an etcd data directory to a target version and storage before etcd starts.
//!
//! This library does the work; `main.rs` only parses, renders and exits. Safety rules:
//! - a refusal (bad input, unsupported path) changes nothing in the data directory;
//! - version.txt is written atomically and only when its content changes;
//! - the default `etcd`/`etcdctl` are replaced by rename, never written through (they may be
//!   hard links to `etcd-<V>` in the image).

pub mod binaries;
pub mod datadir;
pub mod engine;
pub mod etcd2;
pub mod fingerprint;
pub mod lock;
pub mod options;
pub mod plan;
pub mod raftlog;
pub mod server;
pub mod v2rollback;
pub mod v2store;
pub mod version;

use std::fmt;

use datadir::{DataDir, DataDirError};
use options::Options;
use version::VersionPair;

/// Distinct exit codes, so that a supervisor can tell refusals apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    NotSupportedYet = 3,
    MalformedVersionFile = 10,
    MissingVersionFile = 11,
    TargetNotBundled = 12,
    DowngradeTooFar = 13,
    UnknownStorage = 14,
    DataDirInUse = 15,
    MissingBinary = 16,
    ClusterRollback = 17,
    NoEtcd2Converter = 18,
    NotRepresentableInV2 = 19,
    DamagedDataDir = 20,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("existing data directory `{0}` is missing version.txt file, unable to migrate")]
    MissingVersionFile(String),
    #[error("target version {target} is not bundled (bundled: {bundled})")]
    TargetNotBundled { target: String, bundled: String },
    #[error("{binary} is missing: needed for {why}")]
    MissingBinary { binary: String, why: String },
    #[error("migration from {current} to {target} is not supported yet by this migrate; the data directory was not changed")]
    NotSupportedYet { current: String, target: String },
    #[error("rolling back {from} -> {to} as one member of the cluster `{initial_cluster}` is not supported: a rollback restores a snapshot, which makes a new cluster")]
    ClusterRollback {
        from: String,
        to: String,
        initial_cluster: String,
    },
    #[error(
        "the keyspace cannot be rolled back to etcd2: {key}: {why}; the data dir was not changed"
    )]
    NotRepresentableInV2 { key: String, why: String },
    #[error("the data directory `{dir}` is damaged: {message}; nothing was changed")]
    DamagedDataDir { dir: String, message: String },
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("reading the keyspace: {0}")]
    Fingerprint(#[from] fingerprint::FingerprintError),
    #[error("{step}: the keyspace differs after the step ({differences}); the data dir was restored from its backup")]
    FingerprintMismatch { step: String, differences: String },
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the journal `{path}` of an interrupted run is unusable: {message}")]
    Journal { path: String, message: String },
    #[error("the data directory `{dir}` is in use by a running etcd (it holds a lock on `{file}`); stop it before migrating")]
    InUse { dir: String, file: String },
    #[error("checking whether `{dir}` is in use: {source}")]
    LockProbe { dir: String, source: std::io::Error },
    #[error("replacing `{path}`: {source}")]
    Binaries {
        path: String,
        source: std::io::Error,
    },
}

impl MigrateError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            MigrateError::DataDir(DataDirError::Malformed { .. }) => ExitCode::MalformedVersionFile,
            MigrateError::DataDir(_) => ExitCode::Failure,
            MigrateError::MissingVersionFile(_) => ExitCode::MissingVersionFile,
            MigrateError::TargetNotBundled { .. } => ExitCode::TargetNotBundled,
            MigrateError::MissingBinary { .. } => ExitCode::MissingBinary,
            MigrateError::NotSupportedYet { .. } => ExitCode::NotSupportedYet,
            MigrateError::Binaries { .. } => ExitCode::Failure,
            MigrateError::Plan(plan::PlanError::DowngradeTooFar { .. }) => {
                ExitCode::DowngradeTooFar
            }
            MigrateError::Plan(plan::PlanError::MissingMinor { .. }) => ExitCode::TargetNotBundled,
            MigrateError::Plan(plan::PlanError::StorageChange { .. }) => ExitCode::NotSupportedYet,
            MigrateError::Plan(plan::PlanError::NoConverter { .. }) => ExitCode::NoEtcd2Converter,
            MigrateError::Plan(plan::PlanError::MajorChange { from, to }) => {
                if to < from {
                    ExitCode::DowngradeTooFar
                } else {
                    ExitCode::NotSupportedYet
                }
            }
            MigrateError::InUse { .. } => ExitCode::DataDirInUse,
            MigrateError::ClusterRollback { .. } => ExitCode::ClusterRollback,
            MigrateError::NotRepresentableInV2 { .. } => ExitCode::NotRepresentableInV2,
            MigrateError::DamagedDataDir { .. } => ExitCode::DamagedDataDir,
            MigrateError::Server(_)
            | MigrateError::Fingerprint(_)
            | MigrateError::FingerprintMismatch { .. }
            | MigrateError::Io { .. }
            | MigrateError::Journal { .. } => ExitCode::Failure,
            MigrateError::LockProbe { .. } => ExitCode::Failure,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            MigrateError::DataDir(DataDirError::Malformed { path, .. }) => Some(format!(
                "version.txt must hold `<major>.<minor>.<patch>/<etcd2|etcd3>`, e.g. `3.4.23/etcd3`; fix `{}` by hand after checking which etcd wrote the data",
                path.display()
            )),
            MigrateError::MissingVersionFile(_) => Some(
                "migrate never guesses the version of existing data; write version.txt by hand (e.g. `3.4.23/etcd3`) after checking which etcd wrote it".into(),
            ),
            MigrateError::TargetNotBundled { .. } => Some("set TARGET_VERSION to one of the bundled versions".into()),
            MigrateError::Plan(plan::PlanError::DowngradeTooFar { .. }) => Some("roll back one minor at a time with the image of each minor, or restore a backup".into()),
            MigrateError::Plan(plan::PlanError::MissingMinor { .. }) => Some("use an image that bundles every minor version between the data's and the target".into()),
            MigrateError::Plan(plan::PlanError::NoConverter { .. }) => Some("use an image that bundles an etcd 3.0-3.4 (e.g. 3.4.23) to convert the etcd2 data, then this one".into()),
            MigrateError::MissingBinary { .. } => Some("the image is incomplete: every bundled version needs etcd-<V> and etcdctl-<V> in --bin-dir".into()),
            MigrateError::NotRepresentableInV2 { .. } => Some("the v2 store holds UTF-8 strings at clean paths (Kubernetes must have stored JSON, --storage-media-type=application/json); keep etcd3 storage, or rewrite those keys first".into()),
            MigrateError::DamagedDataDir { .. } => Some("start this etcd version on the data once (it repairs a torn WAL tail) or restore a backup, then run migrate again".into()),
            MigrateError::ClusterRollback { .. } => Some("as with the original image, HA rollbacks are not supported: stop every member, roll back one member with a single-member --initial-cluster, then re-add the others as new members".into()),
            MigrateError::InUse { .. } => Some("migrate runs before etcd starts; stop the etcd that uses this data directory (or wait for it to exit) and run again".into()),
            _ => None,
        }
    }
}

/// What a run did (or, with --dry-run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Empty or missing data dir: version.txt set to the target.
    Initialized,
    /// Already at the target: nothing written.
    UpToDate,
    /// Same minor, other patch: only version.txt changes (no server run needed).
    PatchChange,
    /// `--dry-run` of a migration that runs etcd: the plan only.
    Planned,
    /// One or more upgrade steps ran, each with identical fingerprints.
    Upgraded,
    /// A one-minor rollback ran, with identical fingerprints.
    RolledBack,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Initialized => "initialized",
            Outcome::UpToDate => "up-to-date",
            Outcome::PatchChange => "patch-change",
            Outcome::Planned => "planned",
            Outcome::Upgraded => "upgraded",
            Outcome::RolledBack => "rolled-back",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub data_dir: String,
    pub from: Option<String>,
    pub to: String,
    pub outcome: Outcome,
    pub dry_run: bool,
    pub steps: Vec<String>,
    /// Per executed step: its description and the before/after fingerprints.
    pub fingerprints: Vec<(String, fingerprint::Fingerprint, fingerprint::Fingerprint)>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "data_dir": self.data_dir,
            "from": self.from,
            "to": self.to,
            "outcome": self.outcome.to_string(),
            "dry_run": self.dry_run,
            "steps": self.steps,
            "fingerprints": self.fingerprints.iter().map(|(step, before, after)| serde_json::json!({
                "step": step, "before": before.to_json(), "after": after.to_json(),
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

/// Logs to stderr with a stable prefix.
pub fn log(message: &str) {
    eprintln!("migrate: {message}");
}

/// Runs the migration described by `options`.
pub fn migrate_if_needed(options: &Options) -> Result<Report, MigrateError> {
    let target = &options.target;
    let data_dir = DataDir::new(&options.data_dir);
    let bundled_text = options
        .bundled_versions
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if !options
        .bundled_versions
        .iter()
        .any(|v| v.cmp_precedence(&target.version).is_eq())
    {
        return Err(MigrateError::TargetNotBundled {
            target: target.version.to_string(),
            bundled: bundled_text,
        });
    }
    let report = |from: Option<&VersionPair>, outcome: Outcome, steps: Vec<String>| Report {
        data_dir: options.data_dir.display().to_string(),
        from: from.map(|p| p.to_string()),
        to: target.to_string(),
        outcome,
        dry_run: options.dry_run,
        steps,
        fingerprints: Vec::new(),
    };

    log(&format!(
        "starting migration of `{}` to {target}",
        options.data_dir.display()
    ));
    if data_dir.exists() {
        // Never touch a data dir a live etcd is using, not even to recover.
        if let Some(file) = lock::held_by_live_etcd(&options.data_dir).map_err(|source| {
            MigrateError::LockProbe {
                dir: options.data_dir.display().to_string(),
                source,
            }
        })? {
            return Err(MigrateError::InUse {
                dir: options.data_dir.display().to_string(),
                file: file.display().to_string(),
            });
        }
    }
    // An interrupted step is finished or undone first, even when the data dir itself is
    // missing (a rollback interrupted between its two renames): it must never look empty.
    if options.dry_run {
        if engine::Sidecar::for_dir(&options.data_dir).journal.exists() {
            log("an interrupted step would be recovered first");
        }
    } else {
        engine::recover(options, &data_dir)?;
    }
    if data_dir.is_empty()? {
        let step = format!("initialize empty data directory: write version.txt = {target}");
        if options.dry_run {
            return Ok(report(None, Outcome::Initialized, vec![step]));
        }
        if !data_dir.exists() {
            log(&format!(
                "data directory `{}` does not exist, creating it",
                options.data_dir.display()
            ));
            data_dir.create()?;
        }
        data_dir.write_version(target)?;
        log(&format!(
            "initialized empty data directory with version {target}"
        ));
        return Ok(report(None, Outcome::Initialized, vec![step]));
    }
    let current = data_dir
        .read_version()?
        .ok_or_else(|| MigrateError::MissingVersionFile(options.data_dir.display().to_string()))?;
    log(&format!(
        "converging current version '{current}' to target version '{target}'"
    ));
    if current == *target {
        log("data directory is already at the target version; nothing to do");
        return Ok(report(Some(&current), Outcome::UpToDate, Vec::new()));
    }
    // Every refusal is decided before anything changes.
    let steps = plan::plan(&current, target, &options.bundled_versions)?;
    for step in &steps {
        for binary in plan::binaries_for(step, &options.bundled_versions, &options.bin_dir) {
            if !binary.is_file() {
                return Err(MigrateError::MissingBinary {
                    binary: binary.display().to_string(),
                    why: step.to_string(),
                });
            }
        }
    }
    if let Some(file) =
        lock::held_by_live_etcd(&options.data_dir).map_err(|source| MigrateError::LockProbe {
            dir: options.data_dir.display().to_string(),
            source,
        })?
    {
        return Err(MigrateError::InUse {
            dir: options.data_dir.display().to_string(),
            file: file.display().to_string(),
        });
    }
    if let [plan::Step::Rollback { from, .. } | plan::Step::RollbackToEtcd2 { from, .. }] =
        steps.as_slice()
    {
        if matches!(engine::peers(options), server::Peers::Cluster { .. }) {
            return Err(MigrateError::ClusterRollback {
                from: from.to_string(),
                to: target.to_string(),
                initial_cluster: options.initial_cluster.clone(),
            });
        }
    }
    let described: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    if options.dry_run {
        let outcome = match steps.as_slice() {
            [plan::Step::PatchChange { .. }] => Outcome::PatchChange,
            _ => Outcome::Planned,
        };
        return Ok(report(Some(&current), outcome, described));
    }
    let mut r = report(Some(&current), Outcome::PatchChange, described);
    for step in &steps {
        let fps = match step {
            plan::Step::PatchChange { to } => {
                // A patch release reads and writes the same data format: no server run needed.
                data_dir.write_version(to)?;
                log(&format!("wrote version.txt = {to}"));
                continue;
            }
            plan::Step::Upgrade { from, to } => {
                r.outcome = Outcome::Upgraded;
                engine::upgrade(options, &data_dir, from, to)?
            }
            plan::Step::Convert { from, via } => {
                r.outcome = Outcome::Upgraded;
                etcd2::convert(options, &data_dir, from, via)?
            }
            plan::Step::Rollback { from, to } => {
                r.outcome = Outcome::RolledBack;
                engine::rollback(options, from, to)?
            }
            plan::Step::RollbackToEtcd2 { from, to } => {
                r.outcome = Outcome::RolledBack;
                v2rollback::rollback(options, from, to)?
            }
        };
        r.fingerprints
            .push((step.to_string(), fps.before, fps.after));
    }
    Ok(r)
}
