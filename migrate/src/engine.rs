//! The etcd3 steps: the one-minor upgrade and the one-minor rollback, and the crash recovery
//! both share.
//!
//! Neither step lets etcd open the data dir for the change itself. Each builds a verified copy
//! of `member/` in the work area `<data dir>/.migrate/` and swaps it in by rename:
//! - **upgrade** ([`upgrade`]): stage a copy at `.migrate/new` (hard links for the files etcd
//!   never rewrites, see [`crate::stage`]), run the new etcd on the copy, stop it, compare the
//!   copy's backend fingerprint with the original's ([`crate::backend`], read offline), swap;
//! - **rollback** ([`rollback`]): restore the original's bbolt file (a cleanly stopped member's
//!   backend is a snapshot) with the target's tool into `.migrate/new`, run the target etcd on
//!   it, stop it, compare fingerprints, swap.
//!
//! Everything lives inside the data dir, on its own filesystem: a data dir that is a mount
//! point (a PV, a hostPath, a tmpfs) works like any other, the parent is never written (it may
//! be read-only, or the container's own rootfs), and the data dir itself is never renamed. Only
//! `member/` is swapped; other entries of the data dir (`lost+found` on a fresh filesystem) stay
//! as they are.
//!
//! Before either, [`settle`] makes sure the backend holds everything: a data dir left by an
//! etcd that crashed can hold requests only its WAL has, or an unfinished compaction, and the
//! data's own etcd applies them first (a clean stop leaves none, and then no etcd is started
//! for the "before" side at all).
//!
//! The swap ([`swap_in`]) writes a journal `.migrate/journal` first, then renames `member/`
//! aside (`.migrate/old-member`) and the copy's `member/` into its place, then writes
//! version.txt. A crash anywhere converges on rerun ([`recover`]): no journal means the work
//! area holds scratch, which is removed; with a journal, the two member directories say where
//! the swap stopped: no `member/` (put the original back), both (the swap happened: write
//! version.txt), no set-aside original (nothing moved yet). Data left by migrates before this
//! layout (`.<name>.migrate-*` beside the data dir) is recovered as they would have.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use serde_json::Value;

use crate::datadir::DataDir;
use crate::error::MigrateError;
use crate::report::log;
use crate::server::{Launch, Peers, Server};
use crate::version::{Storage, VersionPair};
use crate::{backend, options::Options, process, raftlog, stage};
use hostio::fs::fsync_dir;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Test hook (feature `test-hooks`): aborts the process at `stage` when
/// `ETCDIMG_MIGRATE_FAILPOINT` names it (tests kill here), panics there when it says
/// `panic:<stage>`, or waits there until its stdin closes when it says `stall:<stage>` (tests
/// look at what is held at that moment).
#[cfg(feature = "test-hooks")]
pub fn failpoint(stage: &str) {
    match std::env::var("ETCDIMG_MIGRATE_FAILPOINT") {
        Ok(v) if v == stage => {
            log(&format!("failpoint `{stage}`: aborting"));
            std::process::abort();
        }
        Ok(v) if v.strip_prefix("panic:") == Some(stage) => {
            panic!("failpoint `{stage}`");
        }
        Ok(v) if v.strip_prefix("stall:") == Some(stage) => {
            log(&format!("failpoint `{stage}`: stalled until stdin closes"));
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        }
        _ => {}
    }
}

/// Without the tests' hooks: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn failpoint(_stage: &str) {}

/// Where a step keeps its work: `.migrate/` inside the data dir (the same filesystem as
/// `member/`, so every rename is atomic, whatever is mounted where).
pub struct Sidecar {
    /// `<data>/.migrate`.
    pub dir: PathBuf,
    pub journal: PathBuf,
    /// etcd2 steps: `member/` and version.txt as they were before the step.
    pub backup: PathBuf,
    backup_tmp: PathBuf,
    /// Rollback: the snapshot; every step: the new data dir (its `member/` is swapped in) and the
    /// original `member/` set aside during the swap.
    snapshot: PathBuf,
    pub(crate) new: PathBuf,
    old: PathBuf,
    /// Before this layout: the sidecars lived beside the data dir and the whole dir was swapped.
    legacy: bool,
}

/// The work area's name inside the data dir.
pub const WORK_DIR: &str = ".migrate";

impl Sidecar {
    pub fn for_dir(data_dir: &Path) -> Sidecar {
        let dir = data_dir.join(WORK_DIR);
        Sidecar {
            journal: dir.join("journal"),
            backup: dir.join("backup"),
            backup_tmp: dir.join("backup.tmp"),
            snapshot: dir.join("snapshot.db"),
            new: dir.join("new"),
            old: dir.join("old-member"),
            dir,
            legacy: false,
        }
    }

    /// The sidecars of migrates before the in-dir layout: `.<name>.migrate-*` beside the data
    /// dir (read for recovery only).
    pub fn legacy(data_dir: &Path) -> Sidecar {
        let parent = data_dir.parent().unwrap_or(Path::new("."));
        let name = data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        let at = |suffix: &str| parent.join(format!(".{name}.migrate-{suffix}"));
        Sidecar {
            dir: parent.to_path_buf(),
            journal: at("journal"),
            backup: at("backup"),
            backup_tmp: at("backup.tmp"),
            snapshot: at("snapshot.db"),
            new: at("new"),
            old: at("old"),
            legacy: true,
        }
    }

    /// Creates the work area (mode 0700 under the umask: it holds copies of the data).
    pub fn ensure(&self) -> Result<(), MigrateError> {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err(&self.dir)(e)),
            _ => Ok(()),
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

/// Puts the backup back: its `member/` in place of the data dir's, its version.txt (the data
/// dir's current `member/` is discarded). Safe to run again after a crash at any point: the
/// data dir's `member/` is discarded only while the backup still holds one to put in its place
/// (once moved in, the restored `member/` is the data).
fn restore_backup(data_dir: &Path, side: &Sidecar) -> Result<(), MigrateError> {
    if side.legacy {
        return legacy_restore_backup(data_dir, side);
    }
    let discard = side.dir.join("discard");
    remove_tree(&discard)?;
    let member = data_dir.join("member");
    let saved = side.backup.join("member");
    if saved.exists() {
        if member.exists() {
            fs::rename(&member, &discard).map_err(io_err(&member))?;
        }
        fs::rename(&saved, &member).map_err(io_err(&saved))?;
        failpoint("restore-backup-member-moved");
    }
    match fs::read(side.backup.join(crate::datadir::VERSION_FILE)) {
        Ok(text) => {
            let path = data_dir.join(crate::datadir::VERSION_FILE);
            hostio::fs::write_atomic(&path, &text).map_err(io_err(&path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&side.backup)(e)),
    }
    fsync_dir(data_dir).map_err(io_err(data_dir))?;
    remove_tree(&discard)?;
    remove_tree(&side.backup)
}

/// [`restore_backup`] for the legacy layout, whose backup is a whole copy of the data dir
/// beside it. The data dir itself is never renamed (it holds this migrate's lock): the backup
/// moves into the work area inside it by one rename (the same filesystem: the legacy layout
/// renamed the data dir within its parent), and is restored from there like any other.
fn legacy_restore_backup(data_dir: &Path, side: &Sidecar) -> Result<(), MigrateError> {
    let in_dir = Sidecar::for_dir(data_dir);
    in_dir.ensure()?;
    if side.backup.exists() {
        if in_dir.backup.exists() {
            return Err(MigrateError::Journal {
                path: side.journal.display().to_string(),
                message: format!(
                    "both `{}` and `{}` hold a backup; refusing to guess which is the data",
                    side.backup.display(),
                    in_dir.backup.display()
                ),
            });
        }
        fs::rename(&side.backup, &in_dir.backup).map_err(io_err(&side.backup))?;
        fsync_dir(&in_dir.dir).map_err(io_err(&in_dir.dir))?;
        fsync_dir(&side.dir).map_err(io_err(&side.dir))?;
    }
    restore_backup(data_dir, &in_dir)
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

/// Copies the data dir's `member/` and version.txt into the backup in the work area (temp
/// name, fsync, rename); `{stage}-backup-copied` is the failpoint between the copy and the
/// rename.
pub(crate) fn take_backup(
    options: &Options,
    side: &Sidecar,
    stage: &str,
) -> Result<(), MigrateError> {
    side.ensure()?;
    remove_tree(&side.backup_tmp)?;
    remove_tree(&side.backup)?;
    fs::create_dir(&side.backup_tmp).map_err(io_err(&side.backup_tmp))?;
    let member = options.data_dir.join("member");
    if member.exists() {
        copy_tree(&member, &side.backup_tmp.join("member"))?;
    }
    let version = options.data_dir.join(crate::datadir::VERSION_FILE);
    if version.exists() {
        let to = side.backup_tmp.join(crate::datadir::VERSION_FILE);
        hostio::fs::copy_atomic(&version, &to).map_err(io_err(&to))?;
    }
    fsync_dir(&side.backup_tmp).map_err(io_err(&side.backup_tmp))?;
    failpoint(&format!("{stage}-backup-copied"));
    fs::rename(&side.backup_tmp, &side.backup).map_err(io_err(&side.backup))?;
    fsync_dir(&side.dir).map_err(io_err(&side.dir))
}

/// A failed step: the backup goes back over the data dir, and the journal goes.
pub(crate) fn abandon(options: &Options, side: &Sidecar) -> Result<(), MigrateError> {
    restore_backup(&options.data_dir, side)?;
    let _ = fs::remove_file(&side.journal);
    Ok(())
}

/// A recorded step: the journal, then the backup, go.
pub(crate) fn finish(_options: &Options, side: &Sidecar) -> Result<(), MigrateError> {
    fs::remove_file(&side.journal).map_err(io_err(&side.journal))?;
    remove_tree(&side.backup)?;
    fsync_dir(&side.dir).map_err(io_err(&side.dir))
}

/// Finishes or undoes a step interrupted by a crash, before anything else runs: first what a
/// migrate before the in-dir layout left beside the data dir, then the work area.
pub fn recover(options: &Options, data_dir: &DataDir) -> Result<(), MigrateError> {
    recover_in(options, data_dir, &Sidecar::legacy(&options.data_dir))?;
    recover_in(options, data_dir, &Sidecar::for_dir(&options.data_dir))
}

fn recover_in(options: &Options, data_dir: &DataDir, side: &Sidecar) -> Result<(), MigrateError> {
    if !side.legacy && !side.dir.exists() {
        return Ok(());
    }
    remove_tree(&side.backup_tmp)?;
    let journal = match fs::read_to_string(&side.journal) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return remove_scratch(options, side),
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
    let step = record.get("step").and_then(Value::as_str).unwrap_or("step");
    let storage = match record.get("storage").and_then(Value::as_str) {
        Some("etcd2") => Storage::Etcd2,
        _ => Storage::Etcd3,
    };
    // Rollbacks always swap; upgrades swap since the working-copy engine (older journals of
    // upgrades and every etcd2 conversion name a backup instead).
    if step == "rollback" || record.get("method").and_then(Value::as_str) == Some("swap") {
        let to = VersionPair::new(to, storage);
        if side.legacy {
            legacy_recover_swap(options, step, &to, side)?;
        } else {
            recover_swap(options, step, &to, side)?;
        }
        fs::remove_file(&side.journal).map_err(io_err(&side.journal))?;
        return Ok(());
    }
    let done = data_dir.read_version()? == Some(VersionPair::new(to.clone(), Storage::Etcd3));
    if done {
        log(&format!(
            "an interrupted upgrade to {to} had finished; cleaning up"
        ));
    } else if side.backup.exists()
        || (side.legacy && Sidecar::for_dir(&options.data_dir).backup.exists())
    {
        // (A legacy backup already moved into the work area by an interrupted recovery.)
        log(&format!(
            "an upgrade to {to} was interrupted; restoring the data dir from its backup and starting the step again"
        ));
        restore_backup(&options.data_dir, side)?;
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
    fsync_dir(&side.dir).map_err(io_err(&side.dir))
}

/// Without a journal nothing irreversible is under way: what the work area holds is copies, or
/// the set-aside original of a swap that finished (the journal goes before it).
fn remove_scratch(options: &Options, side: &Sidecar) -> Result<(), MigrateError> {
    // In either layout the data is missing when `member/` is (see [`legacy_data_missing`]).
    let member = options.data_dir.join("member");
    if !member.exists() && side.old.exists() {
        // Cannot happen after a swap (the journal outlives the renames), but if the data is
        // missing the set-aside original is the one thing to keep.
        log("the data is missing and a set-aside original exists; putting it back");
        if side.legacy {
            legacy_put_back(&side.old, &options.data_dir)?;
        } else {
            fs::rename(&side.old, &member).map_err(io_err(&side.old))?;
        }
    }
    if side.backup.exists() || side.new.exists() || side.snapshot.exists() || side.old.exists() {
        log("removing copies left by an interrupted run");
        remove_tree(&side.backup)?;
        remove_tree(&side.new)?;
        remove_tree(&side.old)?;
        remove_tree(&side.dir.join("discard"))?;
        let _ = fs::remove_file(&side.snapshot);
    }
    Ok(())
}

pub(crate) fn bin(options: &Options, name: &str, v: &Version) -> PathBuf {
    options.bin_dir.join(format!("{name}-{v}"))
}

/// The bundled version that runs `v`'s minor (the highest bundled patch of it).
pub(crate) fn runner_for(options: &Options, v: &Version) -> Version {
    crate::plan::bundled_minor(&options.bundled_versions, v.major, v.minor)
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

pub use crate::report::StepFingerprints;

/// Times the phases of a step.
pub(crate) struct Phases {
    last: std::time::Instant,
    pub seconds: Vec<(&'static str, f64)>,
}

impl Phases {
    pub(crate) fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            seconds: Vec::new(),
        }
    }

    /// Records the time since the previous mark as `phase`.
    pub(crate) fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.seconds.push((phase, (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

/// Why the backend of `dir` may lack something its WAL holds, if it may: a compaction that was
/// scheduled but not finished, requests after the backend's consistent index that change the v3
/// store, or a WAL tail that does not read to its end. `None`: the backend is complete.
pub fn unsettled(dir: &Path) -> Result<Option<String>, MigrateError> {
    let db = backend::db_path(dir);
    if !db.is_file() {
        return Ok(Some("no backend file yet".into()));
    }
    let meta = backend::meta(&db).map_err(|e| damaged(dir, e.to_string()))?;
    if meta.scheduled_compact > meta.finished_compact {
        return Ok(Some(format!(
            "a compaction to revision {} that was not finished",
            meta.scheduled_compact
        )));
    }
    let wal_dir = dir.join("member/wal");
    let tail = raftlog::tail_after(&wal_dir, meta.consistent_index).map_err(io_err(&wal_dir))?;
    if let Some(why) = tail.damaged {
        return Ok(Some(format!("a WAL tail that etcd must repair ({why})")));
    }
    if tail.requests > 0 {
        return Ok(Some(format!(
            "{} requests in the WAL after the backend's consistent index {}",
            tail.requests, meta.consistent_index
        )));
    }
    Ok(None)
}

fn damaged(dir: &Path, message: String) -> MigrateError {
    MigrateError::DamagedDataDir {
        dir: dir.display().to_string(),
        message,
    }
}

/// Lets the data's own etcd (`runner`) apply what only the WAL holds, when [`unsettled`] says
/// there is something: start it on the data dir, wait until it is healthy and any unfinished
/// compaction is done, stop it cleanly. Afterwards the backend file is the whole state.
fn settle(options: &Options, runner: &Version, logs: &Path) -> Result<(), MigrateError> {
    let Some(reason) = unsettled(&options.data_dir)? else {
        return Ok(());
    };
    log(&format!(
        "the data dir holds {reason}; etcd {runner} applies it first"
    ));
    failpoint("settle-before");
    let mut server = start_etcd(options, runner, &options.data_dir, logs, &[])?;
    failpoint(&format!("running-{runner}"));
    if reason.starts_with("a compaction")
        && !server.wait_for_log("finished scheduled compaction", COMPACTION_TIMEOUT)
    {
        server.stop();
        return Err(MigrateError::Unsettled {
            dir: options.data_dir.display().to_string(),
            message: format!(
                "etcd {runner} did not finish the compaction within {} s",
                COMPACTION_TIMEOUT.as_secs()
            ),
        });
    }
    if !server.stop() {
        return Err(MigrateError::Unsettled {
            dir: options.data_dir.display().to_string(),
            message: format!("etcd {runner} did not stop cleanly"),
        });
    }
    // A healthy etcd has applied every committed entry (its /health is a linearizable read),
    // and a clean stop commits the backend. The consistent index is no proof of that in 3.4:
    // it moves only with key-value writes, so lease and auth requests stay "after" it even once
    // applied (and a restart replays them, which is idempotent). What can still be pending is
    // a compaction.
    let meta = backend::meta(&backend::db_path(&options.data_dir))
        .map_err(|e| damaged(&options.data_dir, e.to_string()))?;
    if meta.scheduled_compact > meta.finished_compact {
        return Err(MigrateError::Unsettled {
            dir: options.data_dir.display().to_string(),
            message: format!(
                "after etcd {runner} ran on it, the compaction to revision {} is still unfinished",
                meta.scheduled_compact
            ),
        });
    }
    Ok(())
}

/// How long an unfinished compaction may take to finish during [`settle`].
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the step's etcd `version` on `dir` until it is healthy, then stops it; the stop must be
/// clean, so that the backend file holds everything.
fn run_once(
    options: &Options,
    version: &Version,
    dir: &Path,
    logs: &Path,
) -> Result<(), MigrateError> {
    let mut server = start_etcd(options, version, dir, logs, &[])?;
    failpoint(&format!("running-{version}"));
    wait_storage_version(options, version, &mut server, dir)?;
    if !server.stop() {
        return Err(MigrateError::Unsettled {
            dir: dir.display().to_string(),
            message: format!("etcd {version} did not stop cleanly"),
        });
    }
    Ok(())
}

/// Before a step onto a minor without the v2 store (3.5 -> 3.6): when the copy's WAL after its
/// newest snapshot holds v2 requests without data that `to` would not replay (3.4's `/health`
/// QGETs; see [`v2check`]), the data's own etcd `runner` runs on the copy once with
/// `--snapshot-count=1`, so that it snapshots right after it starts and `to` replays nothing
/// older. The data is the same (the fingerprints still compare), the snapshot is etcd's own.
fn snapshot_past_unreplayable(
    options: &Options,
    runner: &Version,
    to: &Version,
    copy: &Path,
    logs: &Path,
) -> Result<(), MigrateError> {
    if options.policy.has_v2_api(to) || !options.policy.has_v2_api(runner) {
        return Ok(());
    }
    let found = |copy: &Path| {
        crate::v2check::scan(copy)
            .map(|c| c.unreplayable)
            .map_err(|e| damaged(copy, e))
    };
    let before = found(copy)?;
    if before.is_empty() {
        return Ok(());
    }
    log(&format!(
        "etcd {runner} takes a snapshot of the working copy first: its WAL holds {} v2 request(s) etcd {to} would not replay ({})",
        before.len(),
        before.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
    ));
    let mut server = start_etcd(options, runner, copy, logs, &["--snapshot-count=1"])?;
    if !server.stop() {
        return Err(MigrateError::Unsettled {
            dir: copy.display().to_string(),
            message: format!("etcd {runner} did not stop cleanly after its snapshot"),
        });
    }
    let after = found(copy)?;
    if !after.is_empty() {
        return Err(MigrateError::Unsettled {
            dir: copy.display().to_string(),
            message: format!(
                "after etcd {runner}'s snapshot the WAL still holds v2 requests etcd {to} would not replay: {}",
                after.join(", ")
            ),
        });
    }
    Ok(())
}

/// How long a single member's etcd 3.6+ may take to write its storage version.
const STORAGE_VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// etcd 3.6+ writes `meta/storageVersion` after it decided the cluster version (its storage
/// version monitor), not when it becomes healthy: a single member is stopped only once it
/// reports its own minor as the storage version, so the data leaves the step as etcd of that
/// minor leaves it (found by the chain test: stopped right after `/health`, the backend of an
/// upgrade to 3.6 had no storage version at all). A member of a cluster is not waited for: its
/// storage version follows the cluster's version, which the other members decide.
fn wait_storage_version(
    options: &Options,
    version: &Version,
    server: &mut Server,
    dir: &Path,
) -> Result<(), MigrateError> {
    if !options.policy.has_storage_migrate(version)
        || matches!(peers(options), Peers::Cluster { .. })
    {
        return Ok(());
    }
    let want = format!("{}.{}.0", version.major, version.minor);
    let deadline = std::time::Instant::now() + STORAGE_VERSION_TIMEOUT;
    loop {
        if crate::server::storage_version(server.port).as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline || server.exited().is_some() {
            let seen = crate::server::storage_version(server.port);
            server.stop();
            return Err(MigrateError::Unsettled {
                dir: dir.display().to_string(),
                message: format!(
                    "etcd {version} did not set the storage version to {want} within {} s (it reports {})",
                    STORAGE_VERSION_TIMEOUT.as_secs(),
                    seen.as_deref().unwrap_or("none")
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The original's fingerprint, read on a thread of its own from before the copy is staged to
/// the end of the step's etcd run: the copy (or the restore) and this read go through the same
/// page cache, so the original is read from disk once, and the hashing overlaps the copy and
/// etcd's start. Only for a single member: a member of a cluster compares a window of
/// revisions that is known only after the step ([`verify_copy`]). The original is not touched
/// from here to the swap (settled, and the lock held).
pub(crate) struct EarlyFingerprint(Option<std::thread::JoinHandle<FingerprintResult>>);

type FingerprintResult = Result<backend::Fingerprint, backend::BackendError>;

impl EarlyFingerprint {
    pub(crate) fn start(options: &Options) -> EarlyFingerprint {
        if matches!(peers(options), Peers::Cluster { .. }) {
            return EarlyFingerprint(None);
        }
        let db = backend::db_path(&options.data_dir);
        EarlyFingerprint(Some(std::thread::spawn(move || {
            backend::fingerprint(&db, None)
        })))
    }

    fn join(self) -> Option<FingerprintResult> {
        self.0.map(|h| h.join().expect("fingerprint thread"))
    }
}

/// Runs etcd `version` on the copy once ([`run_once`]), then compares the copy's fingerprint
/// with the original's ([`verify_copy`]), which `early` has been reading since before the copy
/// was made.
fn run_and_verify(
    options: &Options,
    version: &Version,
    step: &str,
    copy: &Path,
    logs: &Path,
    phases: &mut Phases,
    early: EarlyFingerprint,
) -> Result<StepFingerprints, MigrateError> {
    let original = &options.data_dir;
    run_once(options, version, copy, logs)?;
    phases.mark("etcd");
    tamper_hook(copy);
    let fps = verify_copy(options, step, original, copy, early.join())?;
    phases.mark("verify");
    Ok(fps)
}

/// The fingerprints of the original data dir (unless already read: `before`) and of the new
/// copy, read offline, in parallel. A single member must have identical ones. A member of a
/// cluster that caught up with writes the others took while it was down compares only the
/// revisions both sides hold, above the later of the two compactions.
fn verify_copy(
    options: &Options,
    step: &str,
    original: &Path,
    copy: &Path,
    before: Option<Result<backend::Fingerprint, backend::BackendError>>,
) -> Result<StepFingerprints, MigrateError> {
    let fail = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |e: backend::BackendError| damaged(&dir, e.to_string())
    };
    let (before_db, after_db) = (backend::db_path(original), backend::db_path(copy));
    let cluster = matches!(peers(options), Peers::Cluster { .. });
    let window = if cluster {
        let (b, a) = (
            backend::meta(&before_db).map_err(fail(original))?,
            backend::meta(&after_db).map_err(fail(copy))?,
        );
        let high = backend::current_revision(&before_db).map_err(fail(original))?;
        Some(backend::Window {
            low: b.finished_compact.max(a.finished_compact),
            high,
        })
    } else {
        None
    };
    let (before, after) = std::thread::scope(|s| {
        let before = before.unwrap_or_else(|| {
            s.spawn(|| backend::fingerprint(&before_db, window))
                .join()
                .expect("fingerprint thread")
        });
        (before, backend::fingerprint(&after_db, window))
    });
    let (before, after) = (before.map_err(fail(original))?, after.map_err(fail(copy))?);
    log(&format!("before: {}", before.summary()));
    log(&format!("after:  {}", after.summary()));
    let diffs = compare(cluster, &before, &after);
    if !diffs.is_empty() {
        return Err(MigrateError::FingerprintMismatch {
            step: step.into(),
            differences: diffs.join("; "),
        });
    }
    Ok(StepFingerprints {
        before: before.to_json(),
        after: after.to_json(),
        seconds: Vec::new(),
    })
}

/// What differs between the fingerprints around a step; see [`verify_copy`].
fn compare(
    cluster: bool,
    before: &backend::Fingerprint,
    after: &backend::Fingerprint,
) -> Vec<String> {
    if !cluster || after.revision == before.revision {
        return before.differences(after);
    }
    if after.revision < before.revision {
        return vec![format!(
            "the member's revision went back from {} to {}",
            before.revision, after.revision
        )];
    }
    log(&format!(
        "the cluster moved from revision {} to {} during the step (the other members took writes); comparing the revisions both sides hold",
        before.revision, after.revision
    ));
    match (&before.window, &after.window) {
        (Some((w, b, nb)), Some((_, a, na))) if b != a || nb != na => vec![format!(
            "revisions {} to {} differ ({nb} entries before, {na} after)",
            w.low + 1,
            w.high
        )],
        _ => Vec::new(),
    }
}

/// The end of a swap step (upgrade or rollback) whose new copy was built and verified at
/// `side.new`: a failure removes that copy (the data dir was never changed); success swaps it
/// in under the journal.
struct Done {
    step: &'static str,
    /// What `side.new` holds, for the log.
    copy: &'static str,
    /// The step in the past tense, for the log.
    past: &'static str,
}

impl Done {
    fn commit(
        &self,
        options: &Options,
        side: &Sidecar,
        built: Result<StepFingerprints, MigrateError>,
        from: &Version,
        to: &Version,
        mut phases: Phases,
    ) -> Result<StepFingerprints, MigrateError> {
        let mut fps = match built {
            Ok(fps) => fps,
            Err(e) => {
                log(&format!(
                    "the step failed; removing the {} (the data dir was not changed)",
                    self.copy
                ));
                remove_tree(&side.new)?;
                return Err(e);
            }
        };
        let record = serde_json::json!({
            "step": self.step, "method": "swap", "from": from.to_string(), "to": to.to_string(),
            "before": fps.before,
        });
        swap_in(options, side, &record, self.step)?;
        phases.mark("swap");
        fps.seconds = phases.seconds;
        log(&format!(
            "{} to {to}/etcd3; fingerprints identical ({})",
            self.past,
            format_phases(&fps.seconds)
        ));
        Ok(fps)
    }
}

/// One minor up, from `from` (version.txt) to `to`; see the module doc.
pub fn upgrade(
    options: &Options,
    from: &Version,
    to: &Version,
) -> Result<StepFingerprints, MigrateError> {
    let side = Sidecar::for_dir(&options.data_dir);
    let logs = log_dir()?;
    let old = runner_for(options, from);
    let mut phases = Phases::start();
    side.ensure()?;
    remove_tree(&side.new)?;
    failpoint("upgrade-before-settle");
    settle(options, &old, logs.path())?;
    phases.mark("settle");
    let plan = stage::plan(&options.data_dir)?;
    // The copy is made in the data dir's own filesystem.
    let parent = options.data_dir.as_path();
    let need = stage::check_space(
        parent,
        &format!("the upgrade {from} -> {to}"),
        &[
            (plan.copy_bytes, "working copy"),
            (stage::WAL_SEGMENT_BYTES, "new WAL segment"),
        ],
    )?;
    log(&format!(
        "upgrade {from} -> {to}: staging a working copy ({} MB copied, {} MB free needed)",
        plan.copy_bytes / 1_000_000,
        need / 1_000_000
    ));
    fill_disk_failpoint("upgrade-space-checked", parent);
    let early = EarlyFingerprint::start(options);
    let staged = (|| {
        stage::stage(&plan, &options.data_dir, &side.new)?;
        phases.mark("stage");
        failpoint("upgrade-staged");
        fill_disk_failpoint("upgrade-staged", parent);
        snapshot_past_unreplayable(options, &old, to, &side.new, logs.path())?;
        log(&format!("starting etcd {to} on the working copy"));
        let step = format!("upgrade {from} -> {to}");
        let fps = run_and_verify(
            options,
            to,
            &step,
            &side.new,
            logs.path(),
            &mut phases,
            early,
        )?;
        failpoint("upgrade-verified");
        stage::make_durable(&side.new)?;
        DataDir::new(&side.new).write_version(&VersionPair::new(to.clone(), Storage::Etcd3))?;
        phases.mark("durable");
        Ok::<_, MigrateError>(fps)
    })();
    let done = Done {
        step: "upgrade",
        copy: "working copy",
        past: "upgraded",
    };
    done.commit(options, &side, staged, from, to, phases)
}

/// `stage 0.41 s, etcd 2.10 s, ...`
pub(crate) fn format_phases(seconds: &[(&'static str, f64)]) -> String {
    seconds
        .iter()
        .map(|(p, s)| format!("{p} {s:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Without the tests' hooks: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
fn tamper_hook(_copy: &Path) {}

/// Test hook (feature `test-hooks`): `ETCDIMG_MIGRATE_TEST_TAMPER="<program> <args>"` runs the
/// program on the working copy after the step's etcd stopped and before the fingerprints are
/// compared, with `{db}` in the args replaced by the copy's bbolt file (the tests damage the
/// copy with it to prove that the comparison catches it).
#[cfg(feature = "test-hooks")]
fn tamper_hook(copy: &Path) {
    let Ok(template) = std::env::var("ETCDIMG_MIGRATE_TEST_TAMPER") else {
        return;
    };
    let db = backend::db_path(copy);
    let mut words = template.split_whitespace();
    let Some(program) = words.next() else { return };
    let args: Vec<std::ffi::OsString> = words
        .map(|w| w.replace("{db}", &db.display().to_string()).into())
        .collect();
    log(&format!("test hook: tampering with `{}`", db.display()));
    if let Err(e) = process::run_tool(
        Path::new(program),
        &args,
        &[],
        Duration::from_secs(60),
        || Ok(()),
    ) {
        log(&format!("test hook failed: {e}"));
    }
}

/// Without the tests' hooks: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
fn fill_disk_failpoint(_stage: &str, _dir: &Path) {}

/// Test hook (feature `test-hooks`): `ETCDIMG_MIGRATE_FILL_DISK=<stage>` fills the filesystem
/// of `dir` at `stage`, as another writer would, with `.migrate-test-fill` in `dir`.
#[cfg(feature = "test-hooks")]
fn fill_disk_failpoint(stage: &str, dir: &Path) {
    if std::env::var("ETCDIMG_MIGRATE_FILL_DISK").as_deref() != Ok(stage) {
        return;
    }
    use std::io::Write;
    log(&format!("failpoint `{stage}`: filling the disk"));
    if let Ok(mut f) = fs::File::create(dir.join(".migrate-test-fill")) {
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
}
/// Puts the verified new data dir's `member/` in place of the data dir's: the journal `record`
/// first (its `to` and `storage` say the version), then two renames (the original `member/`
/// aside, the new one in), then version.txt, then the journal and the original go. A crash
/// anywhere is finished or undone by [`recover`].
pub(crate) fn swap_in(
    options: &Options,
    side: &Sidecar,
    record: &Value,
    step: &str,
) -> Result<(), MigrateError> {
    let to = journal_target(record)?;
    let data = &options.data_dir;
    let member = data.join("member");
    hostio::fs::write_atomic(&side.journal, record.to_string().as_bytes())
        .map_err(io_err(&side.journal))?;
    failpoint(&format!("{step}-journal-written"));
    fs::rename(&member, &side.old).map_err(io_err(&member))?;
    fsync_dir(data).map_err(io_err(data))?;
    failpoint(&format!("{step}-original-aside"));
    let new_member = side.new.join("member");
    fs::rename(&new_member, &member).map_err(io_err(&new_member))?;
    fsync_dir(data).map_err(io_err(data))?;
    failpoint(&format!("{step}-swapped"));
    record_version(data, &to)?;
    fs::remove_file(&side.journal).map_err(io_err(&side.journal))?;
    remove_tree(&side.old)?;
    remove_tree(&side.new)?;
    let _ = fs::remove_file(&side.snapshot);
    fsync_dir(&side.dir).map_err(io_err(&side.dir))
}

/// The version a swap journal records (`to`, `storage`).
fn journal_target(record: &Value) -> Result<VersionPair, MigrateError> {
    let version = record
        .get("to")
        .and_then(Value::as_str)
        .and_then(|v| Version::parse(v).ok())
        .ok_or_else(|| MigrateError::Journal {
            path: "the journal being written".into(),
            message: "no target version".into(),
        })?;
    let storage = match record.get("storage").and_then(Value::as_str) {
        Some("etcd2") => Storage::Etcd2,
        _ => Storage::Etcd3,
    };
    Ok(VersionPair::new(version, storage))
}

/// version.txt of the data dir says `to`, owned like the data dir.
fn record_version(data: &Path, to: &VersionPair) -> Result<(), MigrateError> {
    DataDir::new(data).write_version(to)?;
    let meta = fs::metadata(data).map_err(io_err(data))?;
    stage::copy_owner(&meta, &data.join(crate::datadir::VERSION_FILE))?;
    Ok(())
}

/// Finishes or undoes an interrupted swap of `member/` (called by [`recover`] for a swap
/// journal): the two member directories say where it stopped.
fn recover_swap(
    options: &Options,
    step: &str,
    to: &VersionPair,
    side: &Sidecar,
) -> Result<(), MigrateError> {
    let member = options.data_dir.join("member");
    match (member.exists(), side.old.exists()) {
        (false, true) => {
            // Between the two renames: the original goes back.
            log(&format!(
                "an interrupted {step} had moved member/ aside; putting it back"
            ));
            fs::rename(&side.old, &member).map_err(io_err(&side.old))?;
            fsync_dir(&options.data_dir).map_err(io_err(&options.data_dir))?;
        }
        (true, true) => {
            // Both renames happened: the new member is in place; version.txt may lag.
            log(&format!(
                "an interrupted {step} to {to} had swapped its data in; finishing"
            ));
            record_version(&options.data_dir, to)?;
        }
        _ => log(&format!(
            "a {step} to {to} was interrupted before the swap; the data is the original, starting over"
        )),
    }
    remove_tree(&side.old)?;
    remove_tree(&side.new)?;
    let _ = fs::remove_file(&side.snapshot);
    Ok(())
}

/// In the legacy layout the whole data dir was swapped, so "missing" means no `member/`: this
/// migrate's lock (`.migrate/lock`) creates the data dir before recovery runs, and an older
/// migrate that crashed between its two renames left the original aside.
fn legacy_data_missing(data_dir: &Path) -> bool {
    !data_dir.join("member").exists()
}

/// Puts an original an older migrate set aside (`old`) back at `data_dir`. A data dir that does
/// not exist takes it by one rename. One that does (it holds this migrate's lock) takes its
/// owner and mode and then each entry, `member/` last, so that a crash midway is still seen as
/// "missing" and finished by the next run; nothing already in the data dir is replaced.
fn legacy_put_back(old: &Path, data_dir: &Path) -> Result<(), MigrateError> {
    if !data_dir.exists() {
        return fs::rename(old, data_dir).map_err(io_err(old));
    }
    let meta = fs::metadata(old).map_err(io_err(old))?;
    stage::copy_owner_and_mode(&meta, data_dir)?;
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(old)
        .map_err(io_err(old))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(old))?;
    names.sort_by_key(|n| n == "member");
    for name in names {
        let to = data_dir.join(&name);
        if !to.exists() {
            let from = old.join(&name);
            fs::rename(&from, &to).map_err(io_err(&from))?;
        }
    }
    fsync_dir(data_dir).map_err(io_err(data_dir))
}

/// [`recover_swap`] for the legacy layout (the whole data dir was renamed).
fn legacy_recover_swap(
    options: &Options,
    step: &str,
    to: &VersionPair,
    p: &Sidecar,
) -> Result<(), MigrateError> {
    if legacy_data_missing(&options.data_dir) && p.old.exists() {
        // Crashed between the two renames: the original goes back.
        log(&format!(
            "an interrupted {step} had moved the data dir aside; putting it back"
        ));
        legacy_put_back(&p.old, &options.data_dir)?;
    }
    let done = DataDir::new(&options.data_dir).read_version()?.as_ref() == Some(to);
    if done {
        log(&format!(
            "an interrupted {step} to {to} had finished; cleaning up"
        ));
    } else {
        log(&format!(
            "a {step} to {to} was interrupted before the swap; the data dir is the original, starting over"
        ));
    }
    remove_tree(&p.old)?;
    remove_tree(&p.new)?;
    let _ = fs::remove_file(&p.snapshot);
    Ok(())
}

/// One 3.x minor down, from `from` (version.txt) to `to`; see the module doc. The snapshot is
/// the original's own bbolt file (a cleanly stopped member's backend is exactly what `snapshot
/// save` would stream, minus the checksum trailer: hence `--skip-hash-check`), so no etcd has to
/// serve it, and no credentials are needed when auth is on.
pub fn rollback(
    options: &Options,
    from: &Version,
    to: &Version,
) -> Result<StepFingerprints, MigrateError> {
    let side = Sidecar::for_dir(&options.data_dir);
    let logs = log_dir()?;
    let current = runner_for(options, from);
    side.ensure()?;
    remove_tree(&side.new)?;
    let _ = fs::remove_file(&side.snapshot);
    let mut phases = Phases::start();
    failpoint("rollback-before-settle");
    settle(options, &current, logs.path())?;
    phases.mark("settle");
    let db = backend::db_path(&options.data_dir);
    let db_bytes = fs::metadata(&db).map_err(io_err(&db))?.len();
    // The restored copy is made in the data dir's own filesystem.
    let parent = options.data_dir.as_path();
    stage::check_space(
        parent,
        &format!("the rollback {from} -> {to}"),
        &[
            (db_bytes, "restored backend"),
            (
                2 * stage::WAL_SEGMENT_BYTES,
                "restored and new WAL segments",
            ),
        ],
    )?;
    fill_disk_failpoint("rollback-space-checked", parent);
    let tool = crate::plan::restore_binary(&options.policy, to, &options.bin_dir);
    log(&format!(
        "rollback {from} -> {to}: restoring the backend ({} MB) with {}",
        db_bytes / 1_000_000,
        tool.display()
    ));
    let early = EarlyFingerprint::start(options);
    let restored = (|| {
        snapshot_restore(&tool, &db, &side.new, options)?;
        if options.policy.has_storage_migrate(&current) {
            // The restored backend still says the newer storage version; the target would
            // refuse it (3.7 -> 3.6), or a later upgrade would take it for newer data than it
            // is (3.6 -> 3.5). The newer minor's own etcdutl takes it down, and refuses when
            // the WAL holds entries the target cannot read.
            storage_migrate(options, &current, to, &side.new)?;
        }
        lower_cluster_version(&side.new, to)?;
        // The restore ran as us; the restored member belongs to whoever owns the original.
        let meta = fs::metadata(&options.data_dir).map_err(io_err(&options.data_dir))?;
        stage::copy_owner_and_mode(&meta, &side.new)?;
        let member = options.data_dir.join("member");
        let member_meta = fs::metadata(&member).map_err(io_err(&member))?;
        stage::copy_owner_tree(&member_meta, &side.new.join("member"))?;
        stage::copy_owner_and_mode(&member_meta, &side.new.join("member"))?;
        DataDir::new(&side.new).write_version(&VersionPair::new(to.clone(), Storage::Etcd3))?;
        phases.mark("restore");
        failpoint("rollback-restored");
        log(&format!("starting etcd {to} on the restored copy"));
        let step = format!("rollback {from} -> {to}");
        let fps = run_and_verify(
            options,
            to,
            &step,
            &side.new,
            logs.path(),
            &mut phases,
            early,
        )?;
        check_rolled_back_versions(&side.new, to)?;
        failpoint("rollback-verified");
        stage::make_durable(&side.new)?;
        phases.mark("durable");
        Ok::<_, MigrateError>(fps)
    })();
    let done = Done {
        step: "rollback",
        copy: "restored copy",
        past: "rolled back",
    };
    done.commit(options, &side, restored, from, to, phases)
}

/// Whether this member's data is ready for etcd `to` in a cluster that etcd itself downgrades
/// online (`etcdctl downgrade enable`, 3.6+; etcd's `etcdctl/README.md` "Downgrade"): the
/// member's backend holds the enabled downgrade to `to`'s minor, the cluster version and the
/// storage version the running members lowered to it, and its WAL after the newest snapshot
/// sets no higher cluster version (etcd forces a snapshot when it lowers the cluster version,
/// and `to`'s etcd would panic replaying a higher one). Read offline; `Err` says what is
/// missing.
pub fn online_downgrade_ready(options: &Options, to: &Version) -> Result<(), String> {
    let dir = &options.data_dir;
    let db = backend::db_path(dir);
    let minor = format!("{}.{}", to.major, to.minor);
    let above = |text: &str| {
        Version::parse(text).map_or(true, |v| (v.major, v.minor) > (to.major, to.minor))
    };
    let read = |e: backend::BackendError| format!("its backend cannot be read: {e}");
    match backend::downgrade_info(&db).map_err(read)? {
        Some((true, target)) if !above(&target) && target.starts_with(&format!("{minor}.")) => {}
        Some((true, target)) => {
            return Err(format!(
                "the cluster is downgrading to {target}, not to {minor}"
            ))
        }
        _ => {
            return Err(format!(
                "no downgrade to {minor} is enabled in this member's data (etcdctl downgrade enable {minor} was not run, or this member stopped before it)"
            ))
        }
    }
    if let Some(v) = backend::cluster_version(&db)
        .map_err(read)?
        .filter(|v| above(v))
    {
        return Err(format!(
            "its backend still has cluster version {v}: the downgrade was enabled, but this member stopped before the cluster version dropped to {minor}"
        ));
    }
    let meta = backend::meta(&db).map_err(read)?;
    if let Some(v) = meta.storage_version.filter(|v| above(v)) {
        return Err(format!(
            "its storage version is still {v}: stop a member only after `etcdctl endpoint status` shows storageVersion {minor}.0 for it"
        ));
    }
    let snap = crate::v2check::newest_snap(&dir.join("member/snap"))
        .map_err(|e| format!("its snapshots cannot be read: {e}"))?
        .map_or(0, |(_, index)| index);
    let versions = raftlog::cluster_versions_after(&dir.join("member/wal"), snap)
        .map_err(|e| format!("its WAL cannot be read: {e}"))?;
    if let Some(v) = versions.iter().find(|v| above(v)) {
        return Err(format!(
            "its WAL after the newest snapshot still sets cluster version {v}, which etcd {to} would not replay"
        ));
    }
    Ok(())
}

/// One member of a cluster that etcd downgrades online ([`online_downgrade_ready`], checked
/// again under the data dir's lock): version.txt says `to`, nothing else changes. The
/// fingerprint is read once, as both sides of the step.
pub fn online_downgrade(
    options: &Options,
    data_dir: &DataDir,
    to: &Version,
) -> Result<StepFingerprints, MigrateError> {
    let dir = &options.data_dir;
    online_downgrade_ready(options, to).map_err(|why| MigrateError::ClusterRollback {
        from: String::new(),
        to: to.to_string(),
        initial_cluster: options.initial_cluster.clone(),
        why,
        online: true,
    })?;
    let fp = backend::fingerprint(&backend::db_path(dir), None)
        .map_err(|e| damaged(dir, e.to_string()))?
        .to_json();
    data_dir.write_version(&VersionPair::new(to.clone(), Storage::Etcd3))?;
    log(&format!(
        "online downgrade: the cluster runs at {}.{}, this member's data is at it; version.txt = {to}/etcd3, the data is unchanged",
        to.major, to.minor
    ));
    Ok(StepFingerprints {
        before: fp.clone(),
        after: fp,
        seconds: Vec::new(),
    })
}

/// `etcdutl-<current> migrate` of the restored `dir` down to `to`'s minor.
fn storage_migrate(
    options: &Options,
    current: &Version,
    to: &Version,
    dir: &Path,
) -> Result<(), MigrateError> {
    let tool = bin(options, "etcdutl", current);
    log(&format!(
        "setting the restored backend's storage version to {}.{} with {}",
        to.major,
        to.minor,
        tool.display()
    ));
    process::run_tool(
        &tool,
        &storage_migrate_args(dir, to),
        &[],
        RESTORE_TIMEOUT,
        || Ok(()),
    )
    .map_err(|e| MigrateError::Restore(e.to_string()))?;
    Ok(())
}

/// A restore keeps the snapshot's `cluster/clusterVersion` (3.5+ keep it in the backend), and
/// etcd 3.6+ refuses to start under a cluster version above its own ("invalid downgrade",
/// etcd's `MustDetectDowngrade`); `etcdutl migrate` changes only the storage version. After a
/// restore the membership is this one member, running the target, so the cluster version
/// etcd itself decides on its first start is the target's minor: it is written in place now
/// (`3.7.0` -> `3.6.0`, the same length), on the restored copy, before the target runs on it.
/// etcd's own online downgrade writes the same value (`ClusterVersionSet`).
fn lower_cluster_version(copy: &Path, to: &Version) -> Result<(), MigrateError> {
    let db = backend::db_path(copy);
    let damaged_copy = |e: backend::BackendError| damaged(copy, e.to_string());
    let Some(found) = backend::cluster_version(&db).map_err(damaged_copy)? else {
        return Ok(());
    };
    let target = format!("{}.{}.0", to.major, to.minor);
    let above = Version::parse(&found).map_or(true, |v| (v.major, v.minor) > (to.major, to.minor));
    if !above {
        return Ok(());
    }
    if found.len() != target.len() {
        return Err(MigrateError::VersionAboveTarget {
            step: format!("rollback to {to}"),
            to: to.to_string(),
            found: format!("the restored backend keeps cluster version {found}, which cannot be rewritten in place as {target}"),
        });
    }
    log(&format!(
        "setting the restored backend's cluster version {found} to {target} (the one member now runs {to})"
    ));
    backend::set_cluster_version(&db, &found, &target).map_err(damaged_copy)
}

/// `migrate --data-dir <dir> --target-version <major.minor>` (etcdutl 3.6+).
pub fn storage_migrate_args(dir: &Path, to: &Version) -> Vec<std::ffi::OsString> {
    vec![
        "migrate".into(),
        "--data-dir".into(),
        dir.as_os_str().to_owned(),
        "--target-version".into(),
        format!("{}.{}", to.major, to.minor).into(),
    ]
}

/// After a rollback's target ran on the restored copy: its backend claims no storage version
/// above `to`'s minor, and no WAL entry sets a cluster version above it (etcd 3.5 panics on
/// one, and a later upgrade would take the data for newer than it is).
fn check_rolled_back_versions(copy: &Path, to: &Version) -> Result<(), MigrateError> {
    let above = |text: &str| {
        let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) > (to.major, to.minor)
    };
    let db = backend::db_path(copy);
    let meta = backend::meta(&db).map_err(|e| damaged(copy, e.to_string()))?;
    if let Some(v) = meta.storage_version.as_deref().filter(|v| above(v)) {
        return Err(MigrateError::VersionAboveTarget {
            step: format!("rollback to {to}"),
            to: to.to_string(),
            found: format!("its backend claims storage version {v}"),
        });
    }
    let cluster = backend::cluster_version(&db).map_err(|e| damaged(copy, e.to_string()))?;
    if let Some(v) = cluster.as_deref().filter(|v| above(v)) {
        return Err(MigrateError::VersionAboveTarget {
            step: format!("rollback to {to}"),
            to: to.to_string(),
            found: format!("its backend claims cluster version {v}"),
        });
    }
    let wal = copy.join("member/wal");
    let versions = raftlog::cluster_versions_after(&wal, 0).map_err(io_err(&wal))?;
    if let Some(v) = versions.iter().find(|v| above(v)) {
        return Err(MigrateError::VersionAboveTarget {
            step: format!("rollback to {to}"),
            to: to.to_string(),
            found: format!("a WAL entry sets cluster version {v}"),
        });
    }
    Ok(())
}

/// `snapshot restore` of the bbolt file `db` into the new directory `new_dir`, as this member.
fn snapshot_restore(
    tool: &Path,
    db: &Path,
    new_dir: &Path,
    options: &Options,
) -> Result<(), MigrateError> {
    let args = restore_args(db, new_dir, options);
    let env: &[(&str, &str)] = &[("ETCDCTL_API", "3")];
    process::run_tool(tool, &args, env, RESTORE_TIMEOUT, || Ok(()))
        .map_err(|e| MigrateError::Restore(e.to_string()))?;
    Ok(())
}

/// The restore command line (after the tool): the same for etcdctl 3.x and etcdutl 3.5+.
pub fn restore_args(db: &Path, new_dir: &Path, options: &Options) -> Vec<std::ffi::OsString> {
    vec![
        "snapshot".into(),
        "restore".into(),
        db.as_os_str().to_owned(),
        "--skip-hash-check".into(),
        "--data-dir".into(),
        new_dir.as_os_str().to_owned(),
        format!("--name={}", options.name).into(),
        format!("--initial-cluster={}", options.initial_cluster).into(),
        format!(
            "--initial-advertise-peer-urls={}",
            options.initial_advertise_peer_urls
        )
        .into(),
    ]
}

/// A restore copies the whole backend once.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(1800);

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
        fs::write(data.join("version.txt"), b"2.2.1/etcd2").unwrap();
        fs::write(data.join("lost+found"), b"not ours").unwrap();
        fs::write(data.join("member/wal/0.wal"), vec![7u8; 100_000]).unwrap();
        fs::set_permissions(
            data.join("member/wal/0.wal"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let side = Sidecar::for_dir(&data);
        let options = crate::options::Flags {
            data_dir: Some(data.clone()),
            target_version: Some("3.4.23".into()),
            target_storage: Some("etcd3".into()),
            ..Default::default()
        }
        .resolve(&|_| None)
        .unwrap();
        take_backup(&options, &side, "test").unwrap();
        // In the work area inside the data dir, on its filesystem.
        assert_eq!(side.backup, data.join(".migrate/backup"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            fs::read(side.backup.join("version.txt")).unwrap(),
            b"2.2.1/etcd2"
        );
        assert!(
            !side.backup.join("lost+found").exists(),
            "only etcd's files"
        );
        assert_eq!(
            fs::read(side.backup.join("member/wal/0.wal")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(mode(&side.backup.join("member/wal/0.wal")), 0o600);
        // Restoring it puts member/ and version.txt back, nothing else is touched.
        fs::write(data.join("member/wal/0.wal"), b"changed").unwrap();
        fs::write(data.join("version.txt"), b"3.4.23/etcd3").unwrap();
        restore_backup(&data, &side).unwrap();
        assert_eq!(
            fs::read(data.join("member/wal/0.wal")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(fs::read(data.join("version.txt")).unwrap(), b"2.2.1/etcd2");
        assert_eq!(fs::read(data.join("lost+found")).unwrap(), b"not ours");
        assert!(!side.backup.exists());
    }

    /// The exact restore and storage-migrate command lines per version (the tool and its flags).
    #[test]
    fn restore_command_lines_per_version() {
        let bins = tempfile::tempdir().unwrap();
        std::fs::write(bins.path().join("etcdutl-3.5.33"), b"").unwrap();
        let flags = crate::options::Flags {
            name: Some("etcd-a".into()),
            data_dir: Some("/var/etcd/data".into()),
            initial_cluster: Some("etcd-a=http://localhost:2380".into()),
            target_version: Some("3.5.33".into()),
            target_storage: Some("etcd3".into()),
            bundled_versions: Some("3.4.45,3.5.33,3.6.14,3.7.1".into()),
            bin_dir: bins.path().to_path_buf(),
            ..Default::default()
        };
        let options = flags.resolve(&|_| None).unwrap();
        let line = |to: &str| {
            let v = Version::parse(to).unwrap();
            let tool = crate::plan::restore_binary(&options.policy, &v, &options.bin_dir);
            let args = restore_args(
                Path::new("/var/etcd/data/member/snap/db"),
                Path::new("/var/etcd/.data.migrate-new"),
                &options,
            );
            let mut words = vec![tool.file_name().unwrap().to_string_lossy().into_owned()];
            words.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
            words.join(" ")
        };
        let rest = "snapshot restore /var/etcd/data/member/snap/db --skip-hash-check --data-dir /var/etcd/.data.migrate-new --name=etcd-a --initial-cluster=etcd-a=http://localhost:2380 --initial-advertise-peer-urls=http://localhost:2380";
        assert_eq!(line("3.4.45"), format!("etcdctl-3.4.45 {rest}"));
        // 3.5: etcdutl when the image has it (etcdctl's restore is deprecated) ...
        assert_eq!(line("3.5.33"), format!("etcdutl-3.5.33 {rest}"));
        // ... and only etcdutl from 3.6 (etcdctl's restore was removed).
        assert_eq!(line("3.6.14"), format!("etcdutl-3.6.14 {rest}"));
        assert_eq!(line("3.7.1"), format!("etcdutl-3.7.1 {rest}"));
        let migrate = storage_migrate_args(
            Path::new("/var/etcd/.data.migrate-new"),
            &Version::parse("3.5.33").unwrap(),
        );
        let migrate: Vec<String> = migrate
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            migrate.join(" "),
            "migrate --data-dir /var/etcd/.data.migrate-new --target-version 3.5"
        );
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
