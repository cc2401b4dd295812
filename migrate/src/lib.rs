//! `migrate`: brings an etcd data directory to a target version and storage before etcd starts.
//!
//! This library does the work; `main.rs` only parses, renders and exits. Safety rules:
//! - a refusal (bad input, unsupported path) changes nothing in the data directory;
//! - version.txt is written atomically and only when its content changes;
//! - the default `etcd`/`etcdctl` are replaced by rename, never written through (they may be
//!   hard links to `etcd-<V>` in the image).
//!
//! Layers, top down: this file (the run: checks, recovery, plan, steps) → the steps (`engine`
//! for etcd3, `etcd2`, `v2rollback`) → what they use (`stage`, `backend` over `bbolt`,
//! `keyspace`, `server`, `process`, `raftlog`, `v2store`, `datadir`) → the shared types
//! (`error`, `report`, `options`, `plan`, `version`).

pub mod backend;
pub mod bbolt;
pub mod binaries;
pub mod cluster;
pub mod datadir;
pub mod engine;
pub mod error;
pub mod etcd2;
pub mod keyspace;
pub mod lock;
pub mod options;
pub mod plan;
pub mod process;
pub mod raftlog;
pub mod report;
pub mod server;
pub mod stage;
pub mod v2check;
pub mod v2rollback;
pub mod v2store;
pub mod version;

use datadir::DataDir;
pub use error::{ExitCode, MigrateError};
use options::Options;
pub use report::{log, Outcome, Report};
use version::VersionPair;

/// A whole run, as the binary does it: hold the data dir ([`lock::DataDirLock`]), migrate, and
/// then (unless `move_binaries` is false or it is a dry run) make the default `etcd`/`etcdctl`
/// the binaries of the version version.txt now names, whether the migration succeeded or not.
/// The original switched them to the target before migrating, so a failed migration left the
/// target etcd to start on old data.
pub fn run(options: &Options, move_binaries: bool) -> Result<Report, MigrateError> {
    if options.dry_run {
        // Read only: no lock, no work area, nothing created (the data dir may be read-only).
        return migrate_if_needed(options);
    }
    let wait = std::time::Duration::from_secs(options.lock_wait.max(0) as u64);
    // Another migrate holding the data dir also switches the binaries when it is done.
    let held = lock::DataDirLock::acquire(&options.data_dir, wait, &log)?;
    let result = migrate_if_needed(options);
    // Under the same lock: the binaries follow the data it guards.
    let matched = if move_binaries {
        binaries::match_data(options)
    } else {
        Ok(())
    };
    drop(held);
    // The work area goes when it is empty (the lock file was its last entry).
    let _ = std::fs::remove_dir(options.data_dir.join(engine::WORK_DIR));
    match (result, matched) {
        (Ok(_), Err(e)) => Err(e),
        (result, _) => result,
    }
}

/// Runs the migration described by `options` (the caller holds the data dir).
pub fn migrate_if_needed(options: &Options) -> Result<Report, MigrateError> {
    let target = &options.target;
    let data_dir = DataDir::new(&options.data_dir);
    check_target_bundled(options)?;
    log(&format!(
        "starting migration of `{}` to {target}",
        options.data_dir.display()
    ));
    if data_dir.exists() {
        // Never touch a data dir a live etcd is using, not even to recover.
        refuse_if_in_use(options)?;
    }
    // An interrupted step is finished or undone first, even when the data dir itself is
    // missing (a rollback interrupted between its two renames): it must never look empty.
    if options.dry_run {
        if engine::Sidecar::for_dir(&options.data_dir).journal.exists()
            || engine::Sidecar::legacy(&options.data_dir).journal.exists()
        {
            log("an interrupted step would be recovered first");
        }
    } else {
        data_dir.clear_stale_temps()?;
        engine::recover(options, &data_dir)?;
    }
    if data_dir.is_empty()? {
        return initialize(options, &data_dir);
    }
    let current = data_dir
        .read_version()?
        .ok_or_else(|| MigrateError::MissingVersionFile(options.data_dir.display().to_string()))?;
    log(&format!(
        "converging current version '{current}' to target version '{target}'"
    ));
    if current == *target {
        log("data directory is already at the target version; nothing to do");
        return Ok(report(
            options,
            Some(&current),
            Outcome::UpToDate,
            Vec::new(),
        ));
    }
    let steps = plan_steps(options, &current)?;
    if options.dry_run {
        let outcome = match steps.as_slice() {
            [plan::Step::PatchChange { .. }] => Outcome::PatchChange,
            _ => Outcome::Planned,
        };
        let described = plan::describe(
            &steps,
            &options.bundled_versions,
            &options.bin_dir,
            &options.policy,
        );
        return Ok(report(options, Some(&current), outcome, described));
    }
    run_steps(options, &data_dir, &current, &steps)
}

fn report(
    options: &Options,
    from: Option<&VersionPair>,
    outcome: Outcome,
    steps: Vec<String>,
) -> Report {
    Report {
        data_dir: options.data_dir.display().to_string(),
        from: from.map(|p| p.to_string()),
        to: options.target.to_string(),
        outcome,
        dry_run: options.dry_run,
        steps,
        fingerprints: Vec::new(),
    }
}

fn check_target_bundled(options: &Options) -> Result<(), MigrateError> {
    let target = &options.target.version;
    if options
        .bundled_versions
        .iter()
        .any(|v| v.cmp_precedence(target).is_eq())
    {
        return Ok(());
    }
    Err(MigrateError::TargetNotBundled {
        target: target.to_string(),
        bundled: options
            .bundled_versions
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn refuse_if_in_use(options: &Options) -> Result<(), MigrateError> {
    let dir = options.data_dir.display().to_string();
    match lock::held_by_live_etcd(&options.data_dir) {
        Ok(None) => Ok(()),
        Ok(Some(file)) => Err(MigrateError::InUse {
            dir,
            file: file.display().to_string(),
        }),
        Err(source) => Err(MigrateError::LockProbe { dir, source }),
    }
}

/// An empty or missing data dir: version.txt says the target (etcd initialises the rest).
fn initialize(options: &Options, data_dir: &DataDir) -> Result<Report, MigrateError> {
    let target = &options.target;
    let step = format!("initialize empty data directory: write version.txt = {target}");
    if options.dry_run {
        return Ok(report(options, None, Outcome::Initialized, vec![step]));
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
    Ok(report(options, None, Outcome::Initialized, vec![step]))
}

/// The steps from `current` to the target, with every refusal decided before anything runs.
fn plan_steps(options: &Options, current: &VersionPair) -> Result<Vec<plan::Step>, MigrateError> {
    let policy = &options.policy;
    let steps = plan::plan(current, &options.target, &options.bundled_versions, policy)?;
    for step in &steps {
        for binary in plan::binaries_for(step, &options.bundled_versions, &options.bin_dir, policy)
        {
            if !binary.is_file() {
                return Err(MigrateError::MissingBinary {
                    binary: binary.display().to_string(),
                    why: step.to_string(),
                });
            }
        }
    }
    refuse_if_in_use(options)?;
    let runs_etcd = steps
        .iter()
        .any(|s| !matches!(s, plan::Step::PatchChange { .. }));
    if runs_etcd {
        cluster::check(options)?;
        refuse_removed_flags(options, &steps)?;
        one_filesystem(options)?;
    }
    for step in &steps {
        if let plan::Step::Upgrade { from, to } = step {
            if policy.has_v2_api(from) && !policy.has_v2_api(to) {
                refuse_custom_v2(options, from, to)?;
            }
        }
    }
    if runs_etcd
        && options
            .etcd_server_extra_args
            .iter()
            .any(|a| a == "--wal-dir" || a.starts_with("--wal-dir="))
    {
        // The step's etcd runs on a copy of the data dir; a separate WAL dir would be shared
        // with the original, and the copy could not be thrown away.
        return Err(MigrateError::NotSupportedYet {
            current: current.to_string(),
            target: format!("{} with --wal-dir in the extra etcd args", options.target),
        });
    }
    if let [plan::Step::Rollback { from, .. } | plan::Step::RollbackToEtcd2 { from, .. }] =
        steps.as_slice()
    {
        if matches!(engine::peers(options), server::Peers::Cluster { .. }) {
            let online = matches!(steps[0], plan::Step::Rollback { .. })
                && policy.has_online_downgrade(from);
            let refuse = |why: String| MigrateError::ClusterRollback {
                from: from.to_string(),
                to: options.target.to_string(),
                initial_cluster: options.initial_cluster.clone(),
                why,
                online,
            };
            if !online {
                return Err(refuse(
                    "a rollback restores a snapshot, which makes a new cluster, and etcd before 3.6 has no online downgrade".into(),
                ));
            }
            engine::online_downgrade_ready(options, &options.target.version).map_err(refuse)?;
            return Ok(vec![plan::Step::OnlineDowngrade {
                from: from.clone(),
                to: options.target.version.clone(),
            }]);
        }
    }
    Ok(steps)
}

/// A step swaps `member/` by rename inside the data dir, so `member/`, `member/snap` and
/// `member/wal` must be on the data dir's filesystem (a volume mounted at `member/` is not);
/// refused before anything runs.
fn one_filesystem(options: &Options) -> Result<(), MigrateError> {
    use std::os::unix::fs::MetadataExt;
    let dir = &options.data_dir;
    let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let Some(own) = dev(dir) else { return Ok(()) };
    for sub in ["member", "member/snap", "member/wal"] {
        let p = dir.join(sub);
        if dev(&p).is_some_and(|d| d != own) {
            return Err(MigrateError::CrossDevice {
                path: p.display().to_string(),
                data_dir: dir.display().to_string(),
            });
        }
    }
    Ok(())
}

/// etcd 3.7 refuses every `--experimental-*` flag: a step that would run it with one in the
/// extra args is refused before anything runs.
fn refuse_removed_flags(options: &Options, steps: &[plan::Step]) -> Result<(), MigrateError> {
    let runs = |v: &semver::Version| options.policy.refuses_experimental_flags(v);
    let newest = steps.iter().find_map(|s| match s {
        plan::Step::Upgrade { to, .. } | plan::Step::PatchUpgrade { to, .. } if runs(to) => {
            Some(to.clone())
        }
        _ => None,
    });
    let Some(version) = newest else {
        return Ok(());
    };
    let flags: Vec<&String> = options
        .etcd_server_extra_args
        .iter()
        .filter(|a| a.starts_with("--experimental-"))
        .collect();
    if flags.is_empty() {
        return Ok(());
    }
    Err(MigrateError::RemovedFlags {
        version: version.to_string(),
        flags: flags
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// Before a step onto a minor without the v2 store (3.5 -> 3.6): the data must hold no custom
/// v2 content. migrate reads the v2 snapshot and WAL itself, and also runs the bundled
/// `etcdutl check v2store` of the data's minor where it has the command.
fn refuse_custom_v2(
    options: &Options,
    from: &semver::Version,
    to: &semver::Version,
) -> Result<(), MigrateError> {
    let dir = &options.data_dir;
    let custom = v2check::scan(dir).map_err(|message| MigrateError::DamagedDataDir {
        dir: dir.display().to_string(),
        message,
    })?;
    let runner = plan::bundled_minor(&options.bundled_versions, from.major, from.minor)
        .unwrap_or_else(|| from.clone());
    let etcdutl = options.bin_dir.join(format!("etcdutl-{runner}"));
    let mut by_etcdutl = None;
    let mut wal_only = false;
    if options.policy.has_v2store_check(&runner) && etcdutl.is_file() {
        let args = [
            "check".into(),
            "v2store".into(),
            "--data-dir".into(),
            dir.as_os_str().to_owned(),
        ];
        let run = process::run_tool(
            &etcdutl,
            &args,
            &[],
            std::time::Duration::from_secs(600),
            || Ok(()),
        );
        match run {
            Ok(_) => {}
            // Only the tool's own message counts: the command line holds the data dir's path,
            // which may itself contain "custom".
            Err(process::ProcessError::Failed { status, stderr, .. })
                if stderr.contains("custom") =>
            {
                wal_only = stderr.contains("in WAL records") && !stderr.contains("both");
                by_etcdutl = Some(format!(
                    "; `{} check v2store` found it too: {status}: {}",
                    etcdutl.display(),
                    stderr.trim()
                ));
            }
            Err(e) => log(&format!(
                "warning: `{} check v2store` did not run ({e}); migrate's own reading of the v2 store decides",
                etcdutl.display()
            )),
        }
    }
    // etcdutl's WAL finding, explained by requests that hold no data: the step's snapshot
    // run takes care of them (engine::upgrade), nothing is refused.
    if custom.is_empty() && wal_only && !custom.unreplayable.is_empty() {
        by_etcdutl = None;
    }
    if custom.is_empty() && by_etcdutl.is_none() {
        log(&format!(
            "checked: the v2 store holds no custom content (etcd {to} refuses it)"
        ));
        if !custom.unreplayable.is_empty() {
            log(&format!(
                "the WAL holds {} v2 request(s) without data that etcd {to} would not replay ({}); etcd {runner} takes a snapshot past them first",
                custom.unreplayable.len(),
                custom.unreplayable.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        return Ok(());
    }
    Err(MigrateError::CustomV2 {
        from: from.to_string(),
        to: to.to_string(),
        keys: if custom.is_empty() {
            "(keys not named: only etcdutl found them)".into()
        } else {
            custom.named()
        },
        etcdutl: by_etcdutl.unwrap_or_default(),
    })
}

/// Runs the planned steps in order; each leaves the data dir at a version it records.
fn run_steps(
    options: &Options,
    data_dir: &DataDir,
    current: &VersionPair,
    steps: &[plan::Step],
) -> Result<Report, MigrateError> {
    let described = steps.iter().map(|s| s.to_string()).collect();
    let mut r = report(options, Some(current), Outcome::PatchChange, described);
    for step in steps {
        let fps = match step {
            plan::Step::PatchChange { to } => {
                // A patch release reads and writes the same data format: no server run needed.
                data_dir.write_version(to)?;
                log(&format!("wrote version.txt = {to}"));
                continue;
            }
            plan::Step::Upgrade { from, to } | plan::Step::PatchUpgrade { from, to } => {
                r.outcome = Outcome::Upgraded;
                engine::upgrade(options, from, to)?
            }
            plan::Step::Convert { from, via } => {
                r.outcome = Outcome::Upgraded;
                etcd2::convert(options, data_dir, from, via)?
            }
            plan::Step::Rollback { from, to } => {
                r.outcome = Outcome::RolledBack;
                engine::rollback(options, from, to)?
            }
            plan::Step::OnlineDowngrade { to, .. } => {
                r.outcome = Outcome::RolledBack;
                engine::online_downgrade(options, data_dir, to)?
            }
            plan::Step::RollbackToEtcd2 { from, to } => {
                r.outcome = Outcome::RolledBack;
                v2rollback::rollback(options, from, to)?
            }
        };
        r.fingerprints.push((step.to_string(), fps));
    }
    Ok(r)
}
