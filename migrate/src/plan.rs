//! From (version.txt, bundled versions, target) to the steps that get there, or a refusal.
//!
//! Everything that can be refused is refused here, before anything runs, so that a refusal
//! never leaves a half-done data directory: a downgrade of more than one minor, a target or an
//! intermediate minor that is not bundled, a missing binary for a step.

// A refusal is built once per run and names every version it is about; its size does not matter.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::path::{Path, PathBuf};

use etcd_policy::{Policy, RestoreTool};
use semver::Version;

use crate::version::{Storage, VersionPair};

/// One step of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Same minor, another patch: the data format is the same; only version.txt changes.
    PatchChange { to: VersionPair },
    /// One minor up: etcd-`to` opens the data written by etcd-`from` (fingerprinted before and
    /// after), then version.txt records `to`.
    Upgrade { from: Version, to: Version },
    /// Same minor, a newer patch that etcd requires before the next minor (3.5.32+ before 3.6):
    /// etcd-`to` really runs on the data (it repairs what older patches left, e.g. zombie
    /// members), exactly like an upgrade step.
    PatchUpgrade { from: Version, to: Version },
    /// etcd2 storage to etcd3: `etcdctl-<via> migrate` converts the v2 keys (etcdctl has
    /// `migrate` up to 3.4), etcd-`via` then attaches a lease to every key under the TTL keys
    /// prefix, and version.txt records `via`/etcd3.
    Convert { from: VersionPair, via: Version },
    /// etcd 3.0 to 2.2/2.3 (etcd2 storage): the v3 keyspace, read through etcd-`from`, becomes
    /// a v2 store in a new snapshot and WAL (same member and cluster ids) beside the data dir,
    /// verified, then swapped in.
    RollbackToEtcd2 { from: Version, to: VersionPair },
    /// One 3.x minor down: a snapshot taken by etcd-`from`, restored with `to`'s tool into a new
    /// directory, verified, then swapped in.
    Rollback { from: Version, to: Version },
    /// One member of a cluster that etcd itself is downgrading online (`etcdctl downgrade
    /// enable`, 3.6+): the running members already lowered the cluster and storage versions in
    /// this member's backend, so only version.txt changes and etcd-`to` rejoins the cluster.
    OnlineDowngrade { from: Version, to: Version },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::PatchChange { to } => write!(f, "patch change: write version.txt = {to}"),
            Step::Upgrade { from, to } => write!(
                f,
                "upgrade {from} -> {to}: start etcd-{to} on a working copy, compare fingerprints, swap, version.txt = {to}/etcd3"
            ),
            Step::PatchUpgrade { from, to } => write!(
                f,
                "patch upgrade {from} -> {to}: etcd requires {to} before the next minor; start etcd-{to} on a working copy, compare fingerprints, swap, version.txt = {to}/etcd3"
            ),
            Step::Convert { from, via } => write!(
                f,
                "etcd2 -> etcd3: read the v2 keys with etcd-{via}, convert them with `etcdctl-{via} migrate`, attach a lease to the TTL keys, compare, write version.txt = {via}/etcd3 (from {from})"
            ),
            Step::RollbackToEtcd2 { from, to } => write!(
                f,
                "rollback {from} -> {to}: read the v3 keyspace with etcd-{from}, write a v2 snapshot and WAL beside the data dir, verify, swap, write version.txt = {to}"
            ),
            Step::Rollback { from, to } => write!(
                f,
                "rollback {from} -> {to}: snapshot with etcd-{from}, restore with {to}'s tool beside the data dir, verify, swap, write version.txt = {to}/etcd3"
            ),
            Step::OnlineDowngrade { from, to } => write!(
                f,
                "online downgrade {from} -> {to}: the cluster downgrades to {}.{} (etcd's downgrade is enabled and this member's backend is at it); write version.txt = {to}/etcd3, the data is not touched",
                to.major, to.minor
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("downgrading from {from} to {to} is not supported: a rollback goes to the previous minor of 3.x only (3.y to 3.(y-1)), and from 3.0.x to etcd2 storage at 2.2.x or 2.3.x")]
    DowngradeTooFar { from: Version, to: Version },
    #[error("upgrading from {from} to {to} needs a bundled etcd {major}.{minor}.x (upgrades go one minor version at a time); bundled: {bundled}")]
    MissingMinor {
        from: Version,
        to: Version,
        major: u64,
        minor: u64,
        bundled: String,
    },
    #[error("{from} to {to} changes the storage between etcd2 and etcd3, which this migrate does not do yet")]
    StorageChange { from: VersionPair, to: VersionPair },
    #[error("{from} to {to} converts etcd2 storage, which needs a bundled etcd 3.0 to 3.4 (their etcdctl has `migrate`; 3.5 removed it) no older than {from_version}; bundled: {bundled}")]
    NoConverter {
        from: String,
        to: String,
        from_version: String,
        bundled: String,
    },
    #[error("{from} to {to} crosses a major version, which etcd does not support")]
    MajorChange { from: Version, to: Version },
    #[error("etcd steps to {next} only from {minimum} or later ({why}); the data is at {at} and no bundled {minor}.x is at {minimum} or later (bundled: {bundled})")]
    BelowUpgradeMinimum {
        at: Version,
        minor: String,
        next: String,
        minimum: Version,
        why: String,
        bundled: String,
    },
}

/// The highest bundled version with `major.minor`.
pub fn bundled_minor(bundled: &[Version], major: u64, minor: u64) -> Option<Version> {
    bundled
        .iter()
        .filter(|v| v.major == major && v.minor == minor)
        .max()
        .cloned()
}

fn listed(bundled: &[Version]) -> String {
    bundled
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The steps from `current` to `target` through `bundled` (the versions in the image), under
/// `policy`'s upgrade rules.
pub fn plan(
    current: &VersionPair,
    target: &VersionPair,
    bundled: &[Version],
    policy: &Policy,
) -> Result<Vec<Step>, PlanError> {
    if current == target {
        return Ok(Vec::new());
    }
    if current.storage == Storage::Etcd2 && target.storage == Storage::Etcd3 {
        return plan_etcd2_to_etcd3(current, target, bundled, policy);
    }
    if current.storage == Storage::Etcd3 && target.storage == Storage::Etcd2 {
        return plan_etcd3_to_etcd2(&current.version, target);
    }
    if current.storage != target.storage || target.storage != Storage::Etcd3 {
        return Err(PlanError::StorageChange {
            from: current.clone(),
            to: target.clone(),
        });
    }
    let (from, to) = (&current.version, &target.version);
    if from.major != to.major {
        return Err(PlanError::MajorChange {
            from: from.clone(),
            to: to.clone(),
        });
    }
    if from.minor == to.minor {
        return Ok(vec![Step::PatchChange { to: target.clone() }]);
    }
    if to < from {
        if to.minor + 1 == from.minor && to.major == 3 {
            return Ok(vec![Step::Rollback {
                from: from.clone(),
                to: to.clone(),
            }]);
        }
        return Err(PlanError::DowngradeTooFar {
            from: from.clone(),
            to: to.clone(),
        });
    }
    plan_upgrade(from, to, bundled, policy)
}

/// The etcd3 -> etcd2 rollback: 3.0.x -> 2.2.x as the original supported (2.3.x reads the
/// same data, the 2.2 WAL); anything else is too far.
fn plan_etcd3_to_etcd2(from: &Version, target: &VersionPair) -> Result<Vec<Step>, PlanError> {
    let to = &target.version;
    if (from.major, from.minor) == (3, 0) && to.major == 2 && (to.minor == 2 || to.minor == 3) {
        return Ok(vec![Step::RollbackToEtcd2 {
            from: from.clone(),
            to: target.clone(),
        }]);
    }
    Err(PlanError::DowngradeTooFar {
        from: from.clone(),
        to: to.clone(),
    })
}

/// One minor at a time from `from` up to `to` (same major), through the bundled version of
/// each minor between, with a patch upgrade first wherever `policy` requires a recent patch
/// before the next minor.
fn plan_upgrade(
    from: &Version,
    to: &Version,
    bundled: &[Version],
    policy: &Policy,
) -> Result<Vec<Step>, PlanError> {
    let mut steps = Vec::new();
    let mut at = from.clone();
    for minor in from.minor + 1..=to.minor {
        // etcd may require a recent patch of this minor before the next one.
        if let Some((minimum, source)) = policy.upgrade_minimum(&at) {
            if at < minimum {
                let safe = bundled_minor(bundled, at.major, at.minor).filter(|b| *b >= minimum);
                let Some(safe) = safe else {
                    return Err(PlanError::BelowUpgradeMinimum {
                        at: at.clone(),
                        minor: format!("{}.{}", at.major, at.minor),
                        next: format!("{}.{minor}", at.major),
                        minimum,
                        why: source,
                        bundled: listed(bundled),
                    });
                };
                steps.push(Step::PatchUpgrade {
                    from: at.clone(),
                    to: safe.clone(),
                });
                at = safe;
            }
        }
        let next = if minor == to.minor {
            to.clone()
        } else {
            bundled_minor(bundled, to.major, minor).ok_or_else(|| PlanError::MissingMinor {
                from: from.clone(),
                to: to.clone(),
                major: to.major,
                minor,
                bundled: listed(bundled),
            })?
        };
        steps.push(Step::Upgrade {
            from: at.clone(),
            to: next.clone(),
        });
        at = next;
    }
    Ok(steps)
}

/// Whether etcdctl of `v` still has `migrate` (the v2 to v3 converter): 3.0 to 3.4.
fn has_v2_migrate(v: &Version) -> bool {
    v.major == 3 && v.minor <= 4
}

/// etcd2 to etcd3: convert with the target itself when its etcdctl can (as the original did,
/// rule B), else with the newest bundled 3.0-3.4; then upgrade minor by minor to the target.
fn plan_etcd2_to_etcd3(
    current: &VersionPair,
    target: &VersionPair,
    bundled: &[Version],
    policy: &Policy,
) -> Result<Vec<Step>, PlanError> {
    let via = if has_v2_migrate(&target.version) {
        Some(target.version.clone())
    } else {
        bundled.iter().filter(|v| has_v2_migrate(v)).max().cloned()
    };
    let older = |v: &Version| (v.major, v.minor) < (current.version.major, current.version.minor);
    let via = via
        .filter(|v| !older(v))
        .ok_or_else(|| PlanError::NoConverter {
            from: current.to_string(),
            to: target.to_string(),
            from_version: current.version.to_string(),
            bundled: bundled
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let mut steps = vec![Step::Convert {
        from: current.clone(),
        via: via.clone(),
    }];
    steps.extend(plan(
        &VersionPair::new(via, Storage::Etcd3),
        target,
        bundled,
        policy,
    )?);
    Ok(steps)
}

/// The plan as `--dry-run` prints it: each step, with the tools a rollback uses and the checks
/// that run before anything does.
pub fn describe(
    steps: &[Step],
    bundled: &[Version],
    bin_dir: &Path,
    policy: &Policy,
) -> Vec<String> {
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Upgrade { from, to } if policy.has_v2_api(from) && !policy.has_v2_api(to) => {
                out.push(format!(
                    "check: the v2 store holds no custom content (etcd {to} refuses it; v2 snapshot and WAL read by migrate{})",
                    if policy.has_v2store_check(&bundled_minor(bundled, from.major, from.minor).unwrap_or_else(|| from.clone())) {
                        ", and `etcdutl check v2store`"
                    } else {
                        ""
                    }
                ));
                out.push(step.to_string());
            }
            Step::Rollback { from, to } => {
                let current =
                    bundled_minor(bundled, from.major, from.minor).unwrap_or_else(|| from.clone());
                let tool = restore_binary(policy, to, bin_dir);
                let tool = tool
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let storage = if policy.has_storage_migrate(&current) {
                    format!(
                        ", set the storage version to {}.{} with `etcdutl-{current} migrate`",
                        to.major, to.minor
                    )
                } else {
                    String::new()
                };
                out.push(format!(
                    "rollback {from} -> {to}: restore the stopped member's backend with `{tool} snapshot restore --skip-hash-check` beside the data dir{storage}, run etcd-{to} on it, compare fingerprints, swap, version.txt = {to}/etcd3"
                ));
            }
            other => out.push(other.to_string()),
        }
    }
    out
}

/// The restore tool for a rollback to `to`, and whether it must be etcdutl.
pub fn restore_binary(policy: &Policy, to: &Version, bin_dir: &Path) -> PathBuf {
    let etcdutl = bin_dir.join(format!("etcdutl-{to}"));
    match policy.restore_tool(to) {
        RestoreTool::Etcdctl => bin_dir.join(format!("etcdctl-{to}")),
        RestoreTool::EtcdutlPreferred if !etcdutl.is_file() => {
            bin_dir.join(format!("etcdctl-{to}"))
        }
        RestoreTool::EtcdutlPreferred | RestoreTool::EtcdutlOnly => etcdutl,
    }
}

/// The bundled binaries a step runs, as paths under `bin_dir`. The old side of an upgrade may
/// be any bundled patch of its minor (they all read that minor's data).
pub fn binaries_for(
    step: &Step,
    bundled: &[Version],
    bin_dir: &Path,
    policy: &Policy,
) -> Vec<PathBuf> {
    let pair = |v: &Version| {
        vec![
            bin_dir.join(format!("etcd-{v}")),
            bin_dir.join(format!("etcdctl-{v}")),
        ]
    };
    let runner =
        |v: &Version| bundled_minor(bundled, v.major, v.minor).unwrap_or_else(|| v.clone());
    match step {
        Step::PatchChange { .. } => Vec::new(),
        Step::Convert { via, .. } => pair(via),
        Step::OnlineDowngrade { to, .. } => pair(to),
        Step::RollbackToEtcd2 { from, .. } => pair(&runner(from)),
        Step::Upgrade { from, to } | Step::PatchUpgrade { from, to } => {
            let mut out = pair(&runner(from));
            out.extend(pair(to));
            out.dedup();
            out
        }
        Step::Rollback { from, to } => {
            let current = runner(from);
            let mut out = pair(&current);
            out.extend(pair(to));
            out.push(restore_binary(policy, to, bin_dir));
            if policy.has_storage_migrate(&current) {
                // `etcdutl-<from> migrate` takes the storage version down after the restore.
                out.push(bin_dir.join(format!("etcdutl-{current}")));
            }
            out.dedup();
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn p(s: &str) -> VersionPair {
        VersionPair::parse(s).unwrap()
    }

    fn pol() -> Policy {
        Policy::builtin()
    }

    #[test]
    fn upgrades_go_one_minor_at_a_time_through_bundled_versions() {
        let bundled = [v("3.3.17"), v("3.4.20"), v("3.4.23"), v("3.5.1")];
        let steps = plan(&p("3.3.10/etcd3"), &p("3.5.1/etcd3"), &bundled, &pol()).unwrap();
        assert_eq!(
            steps,
            [
                Step::Upgrade {
                    from: v("3.3.10"),
                    to: v("3.4.23")
                },
                Step::Upgrade {
                    from: v("3.4.23"),
                    to: v("3.5.1")
                },
            ]
        );
        assert_eq!(
            plan(&p("3.4.20/etcd3"), &p("3.4.23/etcd3"), &bundled, &pol()).unwrap(),
            [Step::PatchChange {
                to: p("3.4.23/etcd3")
            }]
        );
        assert!(plan(&p("3.5.1/etcd3"), &p("3.5.1/etcd3"), &bundled, &pol())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_missing_intermediate_minor_is_refused() {
        let err = plan(
            &p("3.3.10/etcd3"),
            &p("3.5.1/etcd3"),
            &[v("3.3.10"), v("3.5.1")],
            &pol(),
        )
        .unwrap_err();
        assert!(
            matches!(err, PlanError::MissingMinor { minor: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn rollbacks_go_back_one_minor_only() {
        let bundled = [v("3.3.17"), v("3.4.23"), v("3.5.1")];
        assert_eq!(
            plan(&p("3.5.1/etcd3"), &p("3.4.23/etcd3"), &bundled, &pol()).unwrap(),
            [Step::Rollback {
                from: v("3.5.1"),
                to: v("3.4.23")
            }]
        );
        let err = plan(&p("3.5.1/etcd3"), &p("3.3.17/etcd3"), &bundled, &pol()).unwrap_err();
        assert!(matches!(err, PlanError::DowngradeTooFar { .. }), "{err}");
        // etcd2 is reached from 3.0 only.
        assert!(matches!(
            plan(&p("3.4.23/etcd3"), &p("2.3.7/etcd2"), &bundled, &pol()).unwrap_err(),
            PlanError::DowngradeTooFar { .. }
        ));
    }

    #[test]
    fn binaries_per_step() {
        let bin = Path::new("/b");
        let bundled = [v("3.4.23"), v("3.5.1")];
        let need = binaries_for(
            &Step::Upgrade {
                from: v("3.4.20"),
                to: v("3.5.1"),
            },
            &bundled,
            bin,
            &pol(),
        );
        assert_eq!(
            need,
            [
                "/b/etcd-3.4.23",
                "/b/etcdctl-3.4.23",
                "/b/etcd-3.5.1",
                "/b/etcdctl-3.5.1"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn rollback_to_etcd2_only_from_3_0_to_2_2_or_2_3() {
        let bundled = [v("2.2.1"), v("3.0.17"), v("3.1.12")];
        assert_eq!(
            plan(&p("3.0.17/etcd3"), &p("2.2.1/etcd2"), &bundled, &pol()).unwrap(),
            vec![Step::RollbackToEtcd2 {
                from: v("3.0.17"),
                to: p("2.2.1/etcd2")
            }]
        );
        assert!(plan(&p("3.0.17/etcd3"), &p("2.3.7/etcd2"), &bundled, &pol()).is_ok());
        for (cur, tgt) in [
            ("3.1.12/etcd3", "2.2.1/etcd2"),
            ("3.0.17/etcd3", "2.1.0/etcd2"),
        ] {
            assert!(matches!(
                plan(&p(cur), &p(tgt), &bundled, &pol()),
                Err(PlanError::DowngradeTooFar { .. })
            ));
        }
    }

    #[test]
    fn etcd2_converts_with_an_etcdctl_that_has_migrate_then_upgrades() {
        let bundled = [v("3.4.23"), v("3.5.0"), v("3.5.1")];
        // The target can convert itself (the original's rule B).
        assert_eq!(
            plan(&p("3.4.23/etcd2"), &p("3.4.23/etcd3"), &bundled, &pol()).unwrap(),
            vec![Step::Convert {
                from: p("3.4.23/etcd2"),
                via: v("3.4.23")
            }]
        );
        assert_eq!(
            plan(&p("2.2.1/etcd2"), &p("3.4.23/etcd3"), &bundled, &pol()).unwrap()[0],
            Step::Convert {
                from: p("2.2.1/etcd2"),
                via: v("3.4.23")
            }
        );
        // 3.5 has no `etcdctl migrate`: convert with 3.4, then upgrade.
        assert_eq!(
            plan(&p("3.4.23/etcd2"), &p("3.5.1/etcd3"), &bundled, &pol()).unwrap(),
            vec![
                Step::Convert {
                    from: p("3.4.23/etcd2"),
                    via: v("3.4.23")
                },
                Step::Upgrade {
                    from: v("3.4.23"),
                    to: v("3.5.1")
                }
            ]
        );
        // Nothing bundled can convert, or only something older than the data.
        for (cur, bundled) in [
            ("3.4.23/etcd2", vec![v("3.5.0"), v("3.5.1")]),
            ("3.4.23/etcd2", vec![v("3.3.17"), v("3.5.1")]),
        ] {
            assert!(matches!(
                plan(&p(cur), &p("3.5.1/etcd3"), &bundled, &pol()),
                Err(PlanError::NoConverter { .. })
            ));
        }
        assert_eq!(
            binaries_for(
                &Step::Convert {
                    from: p("2.2.1/etcd2"),
                    via: v("3.4.23")
                },
                &bundled,
                Path::new("/b"),
                &pol()
            ),
            vec![
                PathBuf::from("/b/etcd-3.4.23"),
                PathBuf::from("/b/etcdctl-3.4.23")
            ]
        );
    }

    /// `up A->B`, `patch-up A->B`, `down A->B`, `patch ->B` for each step, or the error's kind.
    fn summary(r: Result<Vec<Step>, PlanError>) -> Result<Vec<String>, &'static str> {
        match r {
            Ok(steps) => Ok(steps
                .iter()
                .map(|s| match s {
                    Step::Upgrade { from, to } => format!("up {from}->{to}"),
                    Step::PatchUpgrade { from, to } => format!("patch-up {from}->{to}"),
                    Step::Rollback { from, to } => format!("down {from}->{to}"),
                    Step::PatchChange { to } => format!("patch ->{}", to.version),
                    other => format!("{other}"),
                })
                .collect()),
            Err(PlanError::BelowUpgradeMinimum { .. }) => Err("below-minimum"),
            Err(PlanError::MissingMinor { .. }) => Err("missing-minor"),
            Err(PlanError::DowngradeTooFar { .. }) => Err("too-far"),
            Err(_) => Err("other"),
        }
    }

    #[test]
    fn plans_from_3_4_to_3_7_follow_etcds_rules() {
        type Case<'a> = (
            &'a [&'a str],
            &'a str,
            &'a str,
            Result<&'a [&'a str], &'a str>,
        );
        let cases: Vec<Case> = vec![
            // Today's defaults: 3.4 data reaches 3.6 through a 3.5 at the step minimum.
            (
                &["3.4.45", "3.5.33", "3.6.14"],
                "3.4.45",
                "3.6.14",
                Ok(&["up 3.4.45->3.5.33", "up 3.5.33->3.6.14"]),
            ),
            (
                &["3.4.23", "3.5.1"],
                "3.4.23",
                "3.5.1",
                Ok(&["up 3.4.23->3.5.1"]),
            ),
            // An old 3.5 goes through a safe 3.5 first, with a real server run.
            (
                &["3.5.1", "3.5.33", "3.6.14"],
                "3.5.1",
                "3.6.14",
                Ok(&["patch-up 3.5.1->3.5.33", "up 3.5.33->3.6.14"]),
            ),
            (
                &["3.5.32", "3.6.14"],
                "3.5.32",
                "3.6.14",
                Ok(&["up 3.5.32->3.6.14"]),
            ),
            // ... and without one it is refused.
            (
                &["3.5.1", "3.6.14"],
                "3.5.1",
                "3.6.14",
                Err("below-minimum"),
            ),
            (&["3.6.14"], "3.5.1", "3.6.14", Err("below-minimum")),
            (
                &["3.4.23", "3.5.21", "3.6.14"],
                "3.4.23",
                "3.6.14",
                Err("below-minimum"),
            ),
            // 3.6 -> 3.7 needs 3.6.11+.
            (
                &["3.4.45", "3.5.33", "3.6.14", "3.7.1"],
                "3.4.45",
                "3.7.1",
                Ok(&["up 3.4.45->3.5.33", "up 3.5.33->3.6.14", "up 3.6.14->3.7.1"]),
            ),
            (&["3.6.5", "3.7.1"], "3.6.5", "3.7.1", Err("below-minimum")),
            (
                &["3.6.5", "3.6.14", "3.7.1"],
                "3.6.5",
                "3.7.1",
                Ok(&["patch-up 3.6.5->3.6.14", "up 3.6.14->3.7.1"]),
            ),
            (
                &["3.5.21", "3.5.33", "3.6.10", "3.7.1"],
                "3.5.21",
                "3.7.1",
                Err("below-minimum"),
            ),
            (
                &["3.5.33", "3.7.1"],
                "3.5.33",
                "3.7.1",
                Err("missing-minor"),
            ),
            // Rollbacks: one minor, every pair.
            (
                &["3.6.14", "3.7.1"],
                "3.7.1",
                "3.6.14",
                Ok(&["down 3.7.1->3.6.14"]),
            ),
            (
                &["3.5.33", "3.6.14"],
                "3.6.14",
                "3.5.33",
                Ok(&["down 3.6.14->3.5.33"]),
            ),
            (
                &["3.4.45", "3.5.33"],
                "3.5.33",
                "3.4.45",
                Ok(&["down 3.5.33->3.4.45"]),
            ),
            (
                &["3.5.33", "3.6.14", "3.7.1"],
                "3.7.1",
                "3.5.33",
                Err("too-far"),
            ),
            (
                &["3.4.45", "3.5.33", "3.6.14"],
                "3.6.14",
                "3.4.45",
                Err("too-far"),
            ),
            // A patch change needs no server run, old 3.5 or not: the target etcd starts next.
            (
                &["3.5.1", "3.5.33"],
                "3.5.1",
                "3.5.33",
                Ok(&["patch ->3.5.33"]),
            ),
            (
                &["3.6.5", "3.6.14"],
                "3.6.14",
                "3.6.5",
                Ok(&["patch ->3.6.5"]),
            ),
        ];
        for (bundled, current, target, want) in cases {
            let bundled: Vec<Version> = bundled.iter().map(|b| v(b)).collect();
            let got = summary(plan(
                &p(&format!("{current}/etcd3")),
                &p(&format!("{target}/etcd3")),
                &bundled,
                &pol(),
            ));
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{current} -> {target} with {bundled:?}");
        }
    }

    #[test]
    fn a_refusal_below_the_step_minimum_names_the_versions_and_the_guide() {
        let err = plan(
            &p("3.5.1/etcd3"),
            &p("3.6.14/etcd3"),
            &[v("3.5.1"), v("3.6.14")],
            &pol(),
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "3.5.32",
            "3.5.1",
            "3.6",
            "upgrade_3_6",
            "bundled: 3.5.1, 3.6.14",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn rollback_binaries_follow_the_restore_rules() {
        let bin = Path::new("/nowhere");
        let names = |from: &str, to: &str, bundled: &[&str]| -> Vec<String> {
            let bundled: Vec<Version> = bundled.iter().map(|b| v(b)).collect();
            binaries_for(
                &Step::Rollback {
                    from: v(from),
                    to: v(to),
                },
                &bundled,
                bin,
                &pol(),
            )
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
        };
        // 3.4: etcdctl restores; nothing migrates the storage version.
        assert_eq!(
            names("3.5.1", "3.4.23", &["3.4.23", "3.5.1"]),
            [
                "etcd-3.5.1",
                "etcdctl-3.5.1",
                "etcd-3.4.23",
                "etcdctl-3.4.23"
            ]
        );
        // 3.6 -> 3.5: 3.5's tool restores (etcdctl when no etcdutl is bundled), 3.6's etcdutl
        // clears the storage version.
        assert_eq!(
            names("3.6.14", "3.5.33", &["3.5.33", "3.6.14"]),
            [
                "etcd-3.6.14",
                "etcdctl-3.6.14",
                "etcd-3.5.33",
                "etcdctl-3.5.33",
                "etcdutl-3.6.14"
            ]
        );
        // 3.7 -> 3.6: etcdutl only, both sides.
        assert_eq!(
            names("3.7.1", "3.6.14", &["3.6.14", "3.7.1"]),
            [
                "etcd-3.7.1",
                "etcdctl-3.7.1",
                "etcd-3.6.14",
                "etcdctl-3.6.14",
                "etcdutl-3.6.14",
                "etcdutl-3.7.1"
            ]
        );
    }
}
