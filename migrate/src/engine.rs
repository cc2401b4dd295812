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
use crate::server::{Launch, Peers, Server};
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

/// The files a step keeps beside `data_dir` (same filesystem, so renames are atomic).
pub struct Sidecar {
    pub journal: PathBuf,
    /// Upgrade: the copy of the data taken before the new etcd opens it.
    pub backup: PathBuf,
    backup_tmp: PathBuf,
    /// Rollback: the snapshot, the restored dir, and the original set aside during the swap.
    snapshot: PathBuf,
    pub(crate) new: PathBuf,
    old: PathBuf,
}

impl Sidecar {
    pub fn for_dir(data_dir: &Path) -> Sidecar {
        let parent = data_dir.parent().unwrap_or(Path::new("."));
        let name = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        let at = |suffix: &str| parent.join(format!(".{name}.migrate-{suffix}"));
        Sidecar {
            journal: at("journal"),
            backup: at("backup"),
            backup_tmp: at("backup.tmp"),
            snapshot: at("snapshot.db"),
            new: at("new"),
            old: at("old"),
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MigrateError + '_ {
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

pub(crate) fn remove_tree(path: &Path) -> Result<(), MigrateError> {
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

/// A private directory for the logs of a step's etcd runs (removed when dropped).
pub(crate) fn log_dir() -> Result<tempfile::TempDir, MigrateError> {
    tempfile::Builder::new()
        .prefix("migrate-logs-")
        .tempdir()
        .map_err(|source| MigrateError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })
}

/// Copies the data dir to the backup beside it (temp name, fsync, rename); `{stage}-backup-copied`
/// is the failpoint between the copy and the rename.
pub(crate) fn take_backup(
    options: &Options,
    side: &Sidecar,
    stage: &str,
) -> Result<(), MigrateError> {
    remove_tree(&side.backup_tmp)?;
    copy_tree(&options.data_dir, &side.backup_tmp)?;
    failpoint(&format!("{stage}-backup-copied"));
    fs::rename(&side.backup_tmp, &side.backup).map_err(io_err(&side.backup))
}

/// A failed step: the backup goes back over the data dir, and the journal goes.
pub(crate) fn abandon(options: &Options, side: &Sidecar) -> Result<(), MigrateError> {
    restore_backup(&options.data_dir, side)?;
    let _ = fs::remove_file(&side.journal);
    Ok(())
}

/// A recorded step: the journal, then the backup, go.
pub(crate) fn finish(options: &Options, side: &Sidecar) -> Result<(), MigrateError> {
    fs::remove_file(&side.journal).map_err(io_err(&side.journal))?;
    remove_tree(&side.backup)?;
    if let Some(parent) = options.data_dir.parent() {
        fsync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(())
}

/// Finishes or undoes a step interrupted by a crash, before anything else runs.
pub fn recover(options: &Options, data_dir: &DataDir) -> Result<(), MigrateError> {
    let side = Sidecar::for_dir(&options.data_dir);
    remove_tree(&side.backup_tmp)?;
    let journal = match fs::read_to_string(&side.journal) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Without a journal nothing irreversible happened: leftovers are copies.
            if side.backup.exists() || side.new.exists() || side.snapshot.exists() {
                log("removing copies left by an interrupted run (the data dir was not touched)");
                remove_tree(&side.backup)?;
                remove_tree(&side.new)?;
                let _ = fs::remove_file(&side.snapshot);
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
    if record.get("step").and_then(Value::as_str) == Some("rollback") {
        let storage = match record.get("storage").and_then(Value::as_str) {
            Some("etcd2") => Storage::Etcd2,
            _ => Storage::Etcd3,
        };
        recover_rollback(options, &VersionPair::new(to, storage))?;
        fs::remove_file(&side.journal).map_err(io_err(&side.journal))?;
        return Ok(());
    }
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

pub(crate) fn bin(options: &Options, name: &str, v: &Version) -> PathBuf {
    options.bin_dir.join(format!("{name}-{v}"))
}

/// The bundled version that runs `v`'s minor (the highest bundled patch of it).
pub(crate) fn runner_for(options: &Options, v: &Version) -> Version {
    options
        .bundled_versions
        .iter()
        .filter(|b| b.major == v.major && b.minor == v.minor)
        .max()
        .cloned()
        .unwrap_or_else(|| v.clone())
}

/// Starts the bundled etcd `version` on `dir` for a step (with `flags`, before the user's extra
/// args) and waits until it is healthy.
pub(crate) fn start_etcd(
    options: &Options,
    version: &Version,
    dir: &Path,
    logs: &Path,
    flags: &[&str],
) -> Result<Server, MigrateError> {
    let peers = peers(options);
    let extra_args: Vec<String> = flags
        .iter()
        .map(|f| f.to_string())
        .chain(options.etcd_server_extra_args.iter().cloned())
        .collect();
    Ok(Server::start(&Launch {
        bin: &bin(options, "etcd", version),
        version: &version.to_string(),
        data_dir: dir,
        name: &options.name,
        peers: &peers,
        extra_args: &extra_args,
        log_dir: logs,
        timeout: READY_TIMEOUT,
    })?)
}

pub fn peers(options: &Options) -> Peers {
    Peers::from_initial_cluster(
        &options.initial_cluster,
        &options.listen_peer_urls,
        &options.initial_advertise_peer_urls,
    )
}

/// What differs between the fingerprints around a step. A single member is alone with its
/// data (private ports), so the keyspace must be identical. A member of a live multi-member
/// cluster catches up with writes the others took while it was stopped: there its revision
/// may only move forward, and the keyspace is compared when it did not move.
fn compare(options: &Options, before: &Fingerprint, after: &Fingerprint) -> Vec<String> {
    if matches!(peers(options), Peers::Cluster { .. }) {
        if after.revision < before.revision {
            let mut diffs = before.differences(after);
            diffs.insert(
                0,
                format!(
                    "the member's revision went back from {} to {}",
                    before.revision, after.revision
                ),
            );
            return diffs;
        }
        if after.revision > before.revision {
            log(&format!(
                "the cluster moved from revision {} to {} during the step (the other members took writes); the member caught up, so the keyspace is not compared",
                before.revision, after.revision
            ));
            return Vec::new();
        }
    }
    before.differences(after)
}

fn run_and_fingerprint(
    options: &Options,
    version: &Version,
    logs: &Path,
) -> Result<Fingerprint, MigrateError> {
    let mut server = start_etcd(options, version, &options.data_dir, logs, &[])?;
    failpoint(&format!("running-{version}"));
    let fp = fingerprint::take(&bin(options, "etcdctl", version), &mut server)?;
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
    let logs = log_dir()?;
    let old = runner_for(options, from);
    log(&format!(
        "upgrade {from} -> {to}: reading the keyspace with etcd {old}"
    ));
    failpoint("upgrade-before-old");
    let before = run_and_fingerprint(options, &old, logs.path())?;
    log(&format!("before: {}", before.summary()));
    failpoint("upgrade-before-backup");
    take_backup(options, &side, "upgrade")?;
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
            abandon(options, &side)?;
            return Err(e);
        }
    };
    log(&format!("after: {}", after.summary()));
    let diffs = compare(options, &before, &after);
    if !diffs.is_empty() {
        abandon(options, &side)?;
        return Err(MigrateError::FingerprintMismatch {
            step: format!("upgrade {from} -> {to}"),
            differences: diffs.join("; "),
        });
    }
    failpoint("upgrade-before-version");
    data_dir.write_version(&VersionPair::new(to.clone(), Storage::Etcd3))?;
    failpoint("upgrade-version-written");
    finish(options, &side)?;
    log(&format!("upgraded to {to}/etcd3; fingerprints identical"));
    Ok(StepFingerprints { before, after })
}

/// Puts the verified new directory in place of the data dir: the journal `record` first, then
/// two renames (the original aside, the new one in), then the journal and the original go.
/// A crash anywhere is finished or undone by [`recover`].
pub(crate) fn swap_in(
    options: &Options,
    side: &Sidecar,
    record: &Value,
) -> Result<(), MigrateError> {
    write_atomic(&side.journal, record.to_string().as_bytes(), 0o600)?;
    failpoint("rollback-journal-written");
    fs::rename(&options.data_dir, &side.old).map_err(io_err(&options.data_dir))?;
    failpoint("rollback-original-aside");
    fs::rename(&side.new, &options.data_dir).map_err(io_err(&side.new))?;
    if let Some(parent) = options.data_dir.parent() {
        fsync_dir(parent).map_err(io_err(parent))?;
    }
    failpoint("rollback-swapped");
    fs::remove_file(&side.journal).map_err(io_err(&side.journal))?;
    remove_tree(&side.old)?;
    let _ = fs::remove_file(&side.snapshot);
    if let Some(parent) = options.data_dir.parent() {
        fsync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(())
}

/// Finishes or undoes an interrupted rollback (called by [`recover`] for a rollback journal).
fn recover_rollback(options: &Options, to: &VersionPair) -> Result<(), MigrateError> {
    let p = Sidecar::for_dir(&options.data_dir);
    if !options.data_dir.exists() && p.old.exists() {
        // Crashed between the two renames: the original goes back.
        log("an interrupted rollback had moved the data dir aside; putting it back");
        fs::rename(&p.old, &options.data_dir).map_err(io_err(&p.old))?;
    }
    let done = DataDir::new(&options.data_dir).read_version()?.as_ref() == Some(to);
    if done {
        log(&format!(
            "an interrupted rollback to {to} had finished; cleaning up"
        ));
    } else {
        log(&format!(
            "a rollback to {to} was interrupted before the swap; the data dir is the original, starting over"
        ));
    }
    remove_tree(&p.old)?;
    remove_tree(&p.new)?;
    let _ = fs::remove_file(&p.snapshot);
    Ok(())
}

/// The tool that restores a snapshot for `to`: etcdutl from 3.5, etcdctl before.
fn restore_tool(options: &Options, to: &Version) -> PathBuf {
    let etcdutl = bin(options, "etcdutl", to);
    if etcdutl.is_file() {
        etcdutl
    } else {
        bin(options, "etcdctl", to)
    }
}

/// One 3.x minor down, from `from` (version.txt) to `to`: snapshot with the current minor's
/// etcd, restore with the target's tool into a new directory beside the data dir (same mode and
/// owner), verify it by fingerprint under etcd-`to`, then swap the directories. The original
/// stays in place until the restored copy is verified, and aside until the swap is recorded.
pub fn rollback(
    options: &Options,
    from: &Version,
    to: &Version,
) -> Result<StepFingerprints, MigrateError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let side = Sidecar::for_dir(&options.data_dir);
    let p = &side;
    let logs = log_dir()?;
    let current = runner_for(options, from);
    remove_tree(&p.new)?;
    let _ = fs::remove_file(&p.snapshot);

    log(&format!(
        "rollback {from} -> {to}: snapshot with etcd {current}"
    ));
    failpoint("rollback-before-old");
    let mut server = start_etcd(options, &current, &options.data_dir, logs.path(), &[])?;
    failpoint(&format!("running-{current}"));
    let etcdctl = bin(options, "etcdctl", &current);
    let before = fingerprint::take(&etcdctl, &mut server)?;
    log(&format!("before: {}", before.summary()));
    crate::fingerprint::snapshot_save(&etcdctl, &mut server, &p.snapshot)?;
    server.stop();
    failpoint("rollback-snapshot-saved");

    let tool = restore_tool(options, to);
    log(&format!("restoring with {}", tool.display()));
    crate::fingerprint::snapshot_restore(
        &tool,
        &p.snapshot,
        &p.new,
        &options.name,
        &options.initial_cluster,
        &options.initial_advertise_peer_urls,
    )?;
    // The restored dir takes the original's mode and owner.
    let meta = fs::metadata(&options.data_dir).map_err(io_err(&options.data_dir))?;
    fs::set_permissions(
        &p.new,
        fs::Permissions::from_mode(meta.permissions().mode()),
    )
    .map_err(io_err(&p.new))?;
    let c = std::ffi::CString::new(p.new.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: chown on a path we just created; failure only matters when not root.
    if unsafe { libc::chown(c.as_ptr(), meta.uid(), meta.gid()) } != 0
        && meta.uid() != unsafe { libc::geteuid() }
    {
        return Err(io_err(&p.new)(io::Error::last_os_error()));
    }
    DataDir::new(&p.new).write_version(&VersionPair::new(to.clone(), Storage::Etcd3))?;
    failpoint("rollback-restored");

    let mut verify = start_etcd(options, to, &p.new, logs.path(), &[]).inspect_err(|_| {
        let _ = remove_tree(&p.new);
    })?;
    failpoint(&format!("running-{to}"));
    let after = fingerprint::take(&bin(options, "etcdctl", to), &mut verify);
    verify.stop();
    let after = after?;
    log(&format!("after: {}", after.summary()));
    let diffs = compare(options, &before, &after);
    if !diffs.is_empty() {
        remove_tree(&p.new)?;
        let _ = fs::remove_file(&p.snapshot);
        return Err(MigrateError::FingerprintMismatch {
            step: format!("rollback {from} -> {to}"),
            differences: diffs.join("; "),
        });
    }
    failpoint("rollback-verified");

    let record = serde_json::json!({
        "step": "rollback", "from": from.to_string(), "to": to.to_string(),
        "before": before.to_json(),
    });
    swap_in(options, &side, &record)?;
    log(&format!(
        "rolled back to {to}/etcd3; fingerprints identical"
    ));
    Ok(StepFingerprints { before, after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The reference's "backup" and "copy file" unit cases, for the copy an upgrade keeps.
    #[test]
    fn backup_copy_keeps_bytes_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data-dir");
        fs::create_dir_all(data.join("member/wal")).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(data.join("empty.txt"), b"").unwrap();
        fs::write(data.join("member/wal/0.wal"), vec![7u8; 100_000]).unwrap();
        fs::set_permissions(
            data.join("member/wal/0.wal"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let side = Sidecar::for_dir(&data);
        copy_tree(&data, &side.backup).unwrap();
        assert_eq!(side.backup, tmp.path().join(".data-dir.migrate-backup"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&side.backup), 0o750);
        assert_eq!(fs::read(side.backup.join("empty.txt")).unwrap(), b"");
        assert_eq!(
            fs::read(side.backup.join("member/wal/0.wal")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(mode(&side.backup.join("member/wal/0.wal")), 0o600);
        // A second copy onto an existing backup is refused, never merged.
        assert!(copy_tree(&data, &side.backup).is_err());
    }

    #[test]
    fn peers_follow_initial_cluster() {
        let one = Peers::from_initial_cluster("a=http://x:2380", "http://x:2380", "http://x:2380");
        assert_eq!(one, Peers::Alone);
        // One member with two peer URLs is still one member.
        let same = Peers::from_initial_cluster(
            "a=http://x:2380,a=http://y:2380",
            "http://x:2380",
            "http://x:2380",
        );
        assert_eq!(same, Peers::Alone);
        let three = Peers::from_initial_cluster(
            "a=https://x:1,b=https://x:2,c=https://x:3",
            "https://x:1",
            "https://x:1",
        );
        assert!(matches!(three, Peers::Cluster { .. }));
    }
}
