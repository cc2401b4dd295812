//! What a run did, for the log on stderr and the JSON report on stdout.

use std::fmt;

use serde_json::Value;

/// The fingerprints around one step, as the JSON report shows them, and how long its phases
/// took. Here, below the engine that fills it and the report that shows it.
#[derive(Debug, Clone, Default)]
pub struct StepFingerprints {
    pub before: Value,
    pub after: Value,
    /// Phase name -> seconds, in order.
    pub seconds: Vec<(&'static str, f64)>,
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
    pub fingerprints: Vec<(String, StepFingerprints)>,
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
            "fingerprints": self.fingerprints.iter().map(|(step, f)| serde_json::json!({
                "step": step, "before": f.before, "after": f.after,
                "seconds": f.seconds.iter().map(|(p, s)| (p.to_string(), serde_json::json!((s * 1000.0).round() / 1000.0))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "peak_rss_kib": peak_rss_json(),
        })
        .to_string()
    }
}

/// Logs to stderr with a stable prefix.
pub fn log(message: &str) {
    eprintln!("migrate: {message}");
}

/// Peak resident memory of migrate and of the programs it ran, in KiB.
fn peak_rss_json() -> serde_json::Value {
    let (own, etcd, tools) = crate::process::peak_rss_kib();
    serde_json::json!({ "migrate": own, "etcd": etcd, "tools": tools })
}
