//! Running the steps that need etcd: today the one-minor upgrade (rollback is next).
//!
//! An upgrade never risks the only copy of the data:
//! 1. fingerprint the keyspace with the current minor's etcd (read-only);
//! 2. copy the data dir to `.<name>.migrate-backup` beside it (temp name, fsync, rename);
//! 3. write the journal `.<name>.migrate-journal` (atomic): step, versions, fingerprint;
//! 4. start the new etcd on the data, fingerprint, stop; a difference restores the backup;
//! 5. write version.txt; 6. remove the journal, then the backup.
//!
//! A crash anywhere converges on rerun ([`recover`]): a journal whose step is recorded in
//! version.txt is finished (journal and backup removed); one that is not restores the backup
//! over the data dir and the step runs again; a backup without a journal is an unfinished copy
//! of data that nothing has touched, and is removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use serde_json::Value;

use crate::datadir::{fsync_dir, write_atomic, DataDir};

use crate::fingerprint::{self, Fingerprint};
use crate::server::Server;
use crate::version::{Storage, VersionPair};
use crate::{log, options::Options, MigrateError};

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Aborts the process at `stage` when `ETCDIMG_MIGRATE_FAILPOINT` names it (tests kill here).
pub fn failpoint(stage: &str) {
    if std::env::var("ETCDIMG_MIGRATE_FAILPOINT").as_deref() == Ok(stage) {
        log(&format!("failpoint `{stage}`: aborting"));
        std::process::abort();
    }
}

/// The journal and backup paths beside `data_dir`.
pub struct Sidecar {
    pub journal: PathBuf,
    pub backup: PathBuf,
    backup_tmp: PathBuf,
}

impl Sidecar {
    pub fn for_dir(data_dir: &Path) -> Sidecar {
        let parent = data_dir.parent().unwrap_or(Path::new("."));
        let name = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        Sidecar {
            journal: parent.join(format!(".{name}.migrate-journal")),
            backup: parent.join(format!(".{name}.migrate-backup")),
            backup_tmp: parent.join(format!(".{name}.migrate-backup.tmp")),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Copies `src` to `dst` (files, dirs, modes), fsyncing every file and directory.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), MigrateError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(src).map_err(io_err(src))?;
    fs::create_dir(dst).map_err(io_err(dst))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.permissions().mode()))
        .map_err(io_err(dst))?;
    for e in fs::read_dir(src).map_err(io_err(src))? {
        let e = e.map_err(io_err(src))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ft = e.file_type().map_err(io_err(&from))?;
        if ft.is_dir() {
            copy_tree(&from, &to)?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(io_err(&from))?;
            fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&to))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err(&from))?;
            std::os::unix::fs::symlink(target, &to).map_err(io_err(&to))?;
        }
    }
    fsync_dir(dst).map_err(io_err(dst))
}

fn remove_tree(path: &Path) -> Result<(), MigrateError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Puts the backup back as the data dir (the data dir's current content is discarded).
fn restore_backup(data_dir: &Path, side: &Sidecar) -> Result<(), MigrateError> {
    let discard = data_dir.with_extension("migrate-discard");
    remove_tree(&discard)?;
    if data_dir.exists() {
        fs::rename(data_dir, &discard).map_err(io_err(data_dir))?;
    }
    fs::rename(&side.backup, data_dir).map_err(io_err(&side.backup))?;
    if let Some(parent) = data_dir.parent() {
        fsync_dir(parent).map_err(io_err(parent))?;
    }
    remove_tree(&discard)
}

/// Finishes or undoes a step interrupted by a crash, before anything else runs.
pub fn recover(options: &Options, data_dir: &DataDir) -> Result<(), MigrateError> {
    let side = Sidecar::for_dir(&options.data_dir);
    remove_tree(&side.backup_tmp)?;
    let journal = match fs::read_to_string(&side.journal) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if side.backup.exists() {
                log("removing an unfinished backup copy left by an interrupted run (the data dir was not touched)");
                remove_tree(&side.backup)?;
            }
            return Ok(());
        }
        Err(e) => return Err(io_err(&side.journal)(e)),
    };
    let record: Value = serde_json::from_str(&journal).map_err(|e| MigrateError::Journal {
        path: side.journal.display().to_string(),
        message: e.to_string(),
    })?;
    let to = record
        .get("to")
        .and_then(Value::as_str)
        .and_then(|v| Version::parse(v).ok())
        .ok_or_else(|| MigrateError::Journal {
            path: side.journal.display().to_string(),
            message: "no target version".into(),
        })?;
    let done = data_dir.read_version()? == Some(VersionPair::new(to.clone(), Storage::Etcd3));
    if done {
        log(&format!(
            "an interrupted upgrade to {to} had finished; cleaning up"
        ));
    } else if side.backup.exists() {
        log(&format!(
            "an upgrade to {to} was interrupted; restoring the data dir from its backup and starting the step again"
        ));
        restore_backup(&options.data_dir, &side)?;
    } else {
        return Err(MigrateError::Journal {
            path: side.journal.display().to_string(),
            message: format!(
                "the step to {to} is unfinished and its backup `{}` is missing; refusing to guess",
                side.backup.display()
            ),
        });
    }
    fs::remove_file(&side.journal).map_err(io_err(&side.journal))?;
    remove_tree(&side.backup)?;
    if let Some(parent) = options.data_dir.parent() {
        fsync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(())
}

fn bin(options: &Options, name: &str, v: &Version) -> PathBuf {
    options.bin_dir.join(format!("{name}-{v}"))
}

/// The bundled version that runs `v`'s minor (the highest bundled patch of it).
fn runner_for(options: &Options, v: &Version) -> Version {
    options
        .bundled_versions
        .iter()
        .filter(|b| b.major == v.major && b.minor == v.minor)
        .max()
        .cloned()
        .unwrap_or_else(|| v.clone())
}

fn run_and_fingerprint(
    options: &Options,
    version: &Version,
    logs: &Path,
) -> Result<Fingerprint, MigrateError> {
    let mut server = Server::start(
        &bin(options, "etcd", version),
        &version.to_string(),
        &options.data_dir,
        &options.name,
        &options.etcd_server_extra_args,
        logs,
        READY_TIMEOUT,
    )?;
    failpoint(&format!("running-{version}"));
    let fp = fingerprint::take(&bin(options, "etcdctl", version), &server.client_url)?;
    server.stop();
    Ok(fp)
}

/// The fingerprints around one step.
#[derive(Debug, Clone)]
pub struct StepFingerprints {
    pub before: Fingerprint,
    pub after: Fingerprint,
}

/// One minor up, from `from` (version.txt) to `to`.
pub fn upgrade(
    options: &Options,
    data_dir: &DataDir,
    from: &Version,
    to: &Version,
) -> Result<StepFingerprints, MigrateError> {
    let side = Sidecar::for_dir(&options.data_dir);
    let logs = tempfile::Builder::new()
        .prefix("migrate-logs-")
        .tempdir()
        .map_err(io_err(Path::new("/tmp")))?;
    let old = runner_for(options, from);
    log(&format!(
        "upgrade {from} -> {to}: reading the keyspace with etcd {old}"
    ));
    failpoint("upgrade-before-old");
    let before = run_and_fingerprint(options, &old, logs.path())?;
    log(&format!("before: {}", before.summary()));
    failpoint("upgrade-before-backup");
    remove_tree(&side.backup_tmp)?;
    copy_tree(&options.data_dir, &side.backup_tmp)?;
    failpoint("upgrade-backup-copied");
    fs::rename(&side.backup_tmp, &side.backup).map_err(io_err(&side.backup))?;
    let record = serde_json::json!({
        "step": "upgrade", "from": from.to_string(), "to": to.to_string(),
        "before": before.to_json(), "backup": side.backup.display().to_string(),
    });
    write_atomic(&side.journal, record.to_string().as_bytes(), 0o600)?;
    failpoint("upgrade-journal-written");
    log(&format!("starting etcd {to} on the data dir"));
    let after = match run_and_fingerprint(options, to, logs.path()) {
        Ok(fp) => fp,
        Err(e) => {
            log(&format!(
                "etcd {to} failed; restoring the data dir from its backup"
            ));
            restore_backup(&options.data_dir, &side)?;
            let _ = fs::remove_file(&side.journal);
            return Err(e);
        }
    };
    log(&format!("after: {}", after.summary()));
    let diffs = before.differences(&after);
    if !diffs.is_empty() {
        restore_backup(&options.data_dir, &side)?;
        let _ = fs::remove_file(&side.journal);
        return Err(MigrateError::FingerprintMismatch {
            step: format!("upgrade {from} -> {to}"),
            differences: diffs.join("; "),
        });
    }
    failpoint("upgrade-before-version");
    data_dir.write_version(&VersionPair::new(to.clone(), Storage::Etcd3))?;
    failpoint("upgrade-version-written");
    fs::remove_file(&side.journal).map_err(io_err(&side.journal))?;
    remove_tree(&side.backup)?;
    if let Some(parent) = options.data_dir.parent() {
        fsync_dir(parent).map_err(io_err(parent))?;
    }
    log(&format!("upgraded to {to}/etcd3; fingerprints identical"));
    Ok(StepFingerprints { before, after })
}
