//! What can go wrong, with a distinct exit code per refusal and a hint for each.

use crate::datadir::DataDirError;
use crate::{cluster, keyspace, lock, plan, server, stage};

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
    InsufficientSpace = 21,
    DataDirLocked = 22,
    ClusterConfig = 23,
    BelowUpgradeMinimum = 24,
    CustomV2Content = 25,
    /// `member/` (or its `wal/`, `snap/`) is on another filesystem than the data dir: it
    /// cannot be swapped by rename.
    CrossDevice = 26,
    /// A bug: migrate panicked (the message says where); the journal makes a rerun converge.
    Bug = 70,
}

impl ExitCode {
    /// Every code with its README name, for the exit-code table's test.
    pub const ALL: [ExitCode; 22] = [
        ExitCode::Ok,
        ExitCode::Failure,
        ExitCode::Usage,
        ExitCode::NotSupportedYet,
        ExitCode::MalformedVersionFile,
        ExitCode::MissingVersionFile,
        ExitCode::TargetNotBundled,
        ExitCode::DowngradeTooFar,
        ExitCode::UnknownStorage,
        ExitCode::DataDirInUse,
        ExitCode::MissingBinary,
        ExitCode::ClusterRollback,
        ExitCode::NoEtcd2Converter,
        ExitCode::NotRepresentableInV2,
        ExitCode::DamagedDataDir,
        ExitCode::InsufficientSpace,
        ExitCode::DataDirLocked,
        ExitCode::ClusterConfig,
        ExitCode::BelowUpgradeMinimum,
        ExitCode::CustomV2Content,
        ExitCode::CrossDevice,
        ExitCode::Bug,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("`{path}` is on another filesystem than the data dir `{data_dir}`: migrate swaps `member/` by rename inside the data dir, which cannot cross filesystems; nothing was changed")]
    CrossDevice { path: String, data_dir: String },
    #[error("existing data directory `{0}` is missing version.txt file, unable to migrate")]
    MissingVersionFile(String),
    #[error("target version {target} is not bundled (bundled: {bundled})")]
    TargetNotBundled { target: String, bundled: String },
    #[error("{binary} is missing: needed for {why}")]
    MissingBinary { binary: String, why: String },
    #[error("migration from {current} to {target} is not supported yet by this migrate; the data directory was not changed")]
    NotSupportedYet { current: String, target: String },
    #[error("rolling back {from} -> {to} as one member of the cluster `{initial_cluster}`: {why}; the data dir was not changed")]
    ClusterRollback {
        from: String,
        to: String,
        initial_cluster: String,
        why: String,
        /// etcd's online downgrade exists for `from` (3.6+).
        online: bool,
    },
    #[error(
        "the keyspace cannot be rolled back to etcd2: {key}: {why}; the data dir was not changed"
    )]
    NotRepresentableInV2 { key: String, why: String },
    #[error("the data directory `{dir}` is damaged: {message}; nothing was changed")]
    DamagedDataDir { dir: String, message: String },
    #[error(transparent)]
    Plan(Box<plan::PlanError>),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("reading the keyspace: {0}")]
    Keyspace(#[from] keyspace::KeyspaceError),
    #[error(transparent)]
    Stage(#[from] stage::StageError),
    #[error("restoring the snapshot: {0}")]
    Restore(String),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("etcd {version} refuses every --experimental-* flag, and the extra etcd args have: {flags}; nothing was changed")]
    RemovedFlags { version: String, flags: String },
    #[error("the data holds custom v2 content, which etcd {to} refuses (it keeps only membership in the v2 store): {keys}{etcdutl}; nothing was changed")]
    CustomV2 {
        from: String,
        to: String,
        keys: String,
        etcdutl: String,
    },
    #[error("the cluster configuration cannot work: {0}; nothing was changed")]
    ClusterConfig(Box<cluster::ClusterConfigError>),
    #[error("the data directory `{dir}` cannot be brought to a complete backend: {message}; the data dir was not migrated")]
    Unsettled { dir: String, message: String },
    // etcd3 steps worked on a copy, which is removed; etcd2 steps restore their backup.
    #[error("{step}: the keyspace differs after the step ({differences}); the step was undone and the data dir is as it was")]
    FingerprintMismatch { step: String, differences: String },
    #[error("{step}: the restored copy still carries a version above {to} ({found}); the copy was removed and the data dir was not changed")]
    VersionAboveTarget {
        step: String,
        to: String,
        found: String,
    },
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
        // A disk that filled up midway (another writer, or the copy itself): the data dir is as
        // it was, and the code says what to fix, whichever step it hit.
        if self.is_no_space() {
            return ExitCode::InsufficientSpace;
        }
        match self {
            MigrateError::CrossDevice { .. } => ExitCode::CrossDevice,
            MigrateError::DataDir(DataDirError::Malformed { .. }) => ExitCode::MalformedVersionFile,
            MigrateError::DataDir(_) => ExitCode::Failure,
            MigrateError::MissingVersionFile(_) => ExitCode::MissingVersionFile,
            MigrateError::TargetNotBundled { .. } => ExitCode::TargetNotBundled,
            MigrateError::MissingBinary { .. } => ExitCode::MissingBinary,
            MigrateError::NotSupportedYet { .. } => ExitCode::NotSupportedYet,
            MigrateError::Binaries { .. } => ExitCode::Failure,
            MigrateError::Plan(p) => plan_exit_code(p),
            MigrateError::InUse { .. } => ExitCode::DataDirInUse,
            MigrateError::ClusterRollback { .. } => ExitCode::ClusterRollback,
            MigrateError::NotRepresentableInV2 { .. } => ExitCode::NotRepresentableInV2,
            MigrateError::DamagedDataDir { .. } => ExitCode::DamagedDataDir,
            MigrateError::Stage(stage::StageError::NoSpace { .. }) => ExitCode::InsufficientSpace,
            MigrateError::Lock(lock::LockError::Held { .. }) => ExitCode::DataDirLocked,
            MigrateError::ClusterConfig(_) => ExitCode::ClusterConfig,
            MigrateError::CustomV2 { .. } => ExitCode::CustomV2Content,
            MigrateError::RemovedFlags { .. } => ExitCode::Usage,
            MigrateError::Lock(_) => ExitCode::Failure,
            MigrateError::Server(_)
            | MigrateError::Keyspace(_)
            | MigrateError::Stage(_)
            | MigrateError::Restore(_)
            | MigrateError::Unsettled { .. }
            | MigrateError::FingerprintMismatch { .. }
            | MigrateError::VersionAboveTarget { .. }
            | MigrateError::Io { .. }
            | MigrateError::Journal { .. } => ExitCode::Failure,
            MigrateError::LockProbe { .. } => ExitCode::Failure,
        }
    }

    /// Whether the disk was full: an ENOSPC anywhere in the error's sources, or in the message
    /// of a tool migrate ran (etcd, etcdutl: their errors reach us as text).
    pub fn is_no_space(&self) -> bool {
        if matches!(self, MigrateError::Stage(stage::StageError::NoSpace { .. })) {
            return true;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.raw_os_error() == Some(libc::ENOSPC) {
                    return true;
                }
            }
            if e.to_string().contains("no space left on device")
                || e.to_string().contains("No space left on device")
            {
                return true;
            }
            source = e.source();
        }
        false
    }

    pub fn hint(&self) -> Option<String> {
        if self.is_no_space()
            && !matches!(self, MigrateError::Stage(stage::StageError::NoSpace { .. }))
        {
            return Some("the filesystem of the data dir filled up while the step ran (the data dir is as it was): free space there and run migrate again; a step needs about the size of member/snap/db plus 150 MB".into());
        }
        match self {
            MigrateError::CrossDevice { .. } => Some("mount the volume at the data dir itself (not at member/ or below); migrate stages its copy inside the data dir".into()),
            MigrateError::Plan(p) => plan_hint(p),
            MigrateError::DataDir(DataDirError::Malformed { path, .. }) => Some(format!(
                "version.txt must hold `<major>.<minor>.<patch>/<etcd2|etcd3>`, e.g. `3.4.23/etcd3`; fix `{}` by hand after checking which etcd wrote the data",
                path.display()
            )),
            MigrateError::MissingVersionFile(_) => Some(
                "migrate never guesses the version of existing data; write version.txt by hand (e.g. `3.4.23/etcd3`) after checking which etcd wrote it".into(),
            ),
            MigrateError::TargetNotBundled { .. } => Some("set TARGET_VERSION to one of the bundled versions".into()),
            MigrateError::MissingBinary { .. } => Some("the image is incomplete: every bundled version needs etcd-<V> and etcdctl-<V> in --bin-dir".into()),
            MigrateError::NotRepresentableInV2 { .. } => Some("the v2 store holds UTF-8 strings at clean paths (Kubernetes must have stored JSON, --storage-media-type=application/json); keep etcd3 storage, or rewrite those keys first".into()),
            MigrateError::DamagedDataDir { .. } => Some("start this etcd version on the data once (it repairs a torn WAL tail) or restore a backup, then run migrate again".into()),
            MigrateError::ClusterRollback { from, to, online: true, .. } => {
                let minor = to.rsplit_once('.').map_or(to.as_str(), |(m, _)| m);
                Some(format!("etcd downgrades a running cluster itself: 1. put this member back at {from} (TARGET_VERSION={from}) so that it rejoins; 2. `etcdctl downgrade validate {minor}`, then `etcdctl downgrade enable {minor}` (as root where auth is on); 3. wait until `etcdctl endpoint status -w json` shows storageVersion {minor}.0 on every member; 4. then set TARGET_VERSION={to} one member at a time: migrate finds the downgrade in the member's data and only records the version. etcd finishes the downgrade when every member runs {minor}"))
            }
            MigrateError::ClusterRollback { .. } => Some("as with the original image, HA rollbacks from before etcd 3.6 are not supported: stop every member, roll back one member with a single-member --initial-cluster, then re-add the others as new members".into()),
            MigrateError::Lock(lock::LockError::Held { .. }) => Some("two migrates never work on one data dir at once; wait for the other to finish (or stop it), or raise --lock-wait / MIGRATE_LOCK_WAIT".into()),
            MigrateError::CustomV2 { from, .. } => Some(format!("remove the custom v2 keys with etcd {from} (started with --enable-v2, through its v2 API), then migrate again; or follow {} (its --v2-deprecation=write-only-skip-check is at your own risk)", etcd_policy::UPGRADE_GUIDE_3_6)),
            MigrateError::RemovedFlags { .. } => Some("etcd 3.7 removed the deprecated --experimental-* flags: use their new names or feature gates (etcd's 3.7 upgrade guide) in ETCD_CREDS / --etcd-server-extra-args".into()),
            MigrateError::ClusterConfig(_) => Some("--name (MIGRATE_ETCD_NAME, ETCD_NAME, or etcd-$ETCD_HOSTNAME / etcd-$HOSTNAME) must be one of the names in --initial-cluster (INITIAL_CLUSTER), with --initial-advertise-peer-urls equal to that member's URLs there: etcd refuses anything else when it restores or starts a member".into()),
            MigrateError::Stage(stage::StageError::NoSpace { .. }) => Some("free space on that filesystem (or give the data dir's volume more), then run again; see the README for what each step needs".into()),
            MigrateError::VersionAboveTarget { .. } => Some("the newer minor's etcdutl did not take the data down to the target; keep serving it with the current version (version.txt is unchanged), and report the data's WAL and meta bucket (`etcdutl migrate --target-version` on a copy shows what it refuses)".into()),
            MigrateError::InUse { .. } => Some("migrate runs before etcd starts; stop the etcd that uses this data directory (or wait for it to exit) and run again".into()),
            _ => None,
        }
    }
}

impl From<cluster::ClusterConfigError> for MigrateError {
    fn from(e: cluster::ClusterConfigError) -> MigrateError {
        MigrateError::ClusterConfig(Box::new(e))
    }
}

impl From<plan::PlanError> for MigrateError {
    fn from(e: plan::PlanError) -> MigrateError {
        MigrateError::Plan(Box::new(e))
    }
}

fn plan_exit_code(p: &plan::PlanError) -> ExitCode {
    match p {
        plan::PlanError::DowngradeTooFar { .. } => ExitCode::DowngradeTooFar,
        plan::PlanError::MissingMinor { .. } => ExitCode::TargetNotBundled,
        plan::PlanError::StorageChange { .. } => ExitCode::NotSupportedYet,
        plan::PlanError::NoConverter { .. } => ExitCode::NoEtcd2Converter,
        plan::PlanError::MajorChange { from, to } if to < from => ExitCode::DowngradeTooFar,
        plan::PlanError::MajorChange { .. } => ExitCode::NotSupportedYet,
        plan::PlanError::BelowUpgradeMinimum { .. } => ExitCode::BelowUpgradeMinimum,
    }
}

fn plan_hint(p: &plan::PlanError) -> Option<String> {
    match p {
        plan::PlanError::DowngradeTooFar { .. } => Some("roll back one minor at a time with the image of each minor, or restore a backup".into()),
        plan::PlanError::MissingMinor { .. } => Some("use an image that bundles every minor version between the data's and the target".into()),
        plan::PlanError::NoConverter { .. } => Some("use an image that bundles an etcd 3.0-3.4 (e.g. 3.4.23) to convert the etcd2 data, then this one".into()),
        plan::PlanError::BelowUpgradeMinimum { minor, minimum, .. } => Some(format!("bundle an etcd {minor}.x at {minimum} or later in the image (migrate then runs it on the data first), or upgrade the data to it with an image that has one; see {}", etcd_policy::UPGRADE_GUIDE_3_6)),
        _ => None,
    }
}

#[cfg(test)]
mod exit_code_table {
    use super::ExitCode;

    /// The README's exit-code table lists exactly the codes migrate can return.
    #[test]
    fn the_readme_table_lists_every_exit_code() {
        let readme = include_str!("../../README.md");
        let mut in_readme: Vec<i32> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| code | meaning |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                l.trim_start_matches('|')
                    .split('|')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        in_readme.sort_unstable();
        let mut in_code: Vec<i32> = ExitCode::ALL.iter().map(|c| *c as i32).collect();
        in_code.sort_unstable();
        assert!(!in_readme.is_empty(), "README.md has no exit-code table");
        assert_eq!(
            in_readme, in_code,
            "README.md's exit-code table and ExitCode::ALL differ"
        );
    }
}
