//! etcd's version policy, in one place, with its sources: per minor, the lowest patch etcd
//! supports in production, the lowest patch that may step to the next minor, which tool
//! restores a snapshot, and what the tools of that minor can do; plus the known-bad releases,
//! each with the etcd issue that explains it.
//!
//! `etcdimg` reads it to warn about (build, test) and refuse to release (push, plan) unsafe
//! versions; `migrate` reads it to plan upgrade steps and restores. Users extend it in
//! images.toml (`[policy]`, see [`Extension`]) when etcd publishes a new advisory; etcdimg
//! ships the effective policy in the image as JSON for migrate ([`Policy::to_json`]). An
//! extension may only make the policy stricter.
//!
//! The Go toolchain policy ([`go`]) sits beside it: which Go built a bundled binary matters to
//! every scanner.
//!
//! This crate reads nothing and prints nothing.

pub mod go;

use std::collections::BTreeMap;
use std::fmt;

use semver::Version;
use serde::{Deserialize, Serialize};

/// etcd's upgrade guide for 3.6: every member on a recent 3.5 first, no custom v2 data.
/// Where an image holds its effective policy, relative to the prefix of the bin dir
/// (`/usr/local`): etcdimg writes it there and migrate reads `<bin-dir>/../` + this.
pub const IMAGE_FILE: &str = "share/etcdimg/version-policy.json";

pub const UPGRADE_GUIDE_3_6: &str = "https://etcd.io/docs/v3.6/upgrades/upgrade_3_6/";
/// etcd's upgrade guide for 3.7.
pub const UPGRADE_GUIDE_3_7: &str = "https://etcd.io/docs/v3.7/upgrades/upgrade_3_7/";

/// Which tool restores a snapshot into a data dir of this minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreTool {
    /// `etcdctl snapshot restore` (up to 3.4; there is no etcdutl).
    Etcdctl,
    /// `etcdutl snapshot restore`; etcdctl's still works but is deprecated (3.5).
    EtcdutlPreferred,
    /// `etcdutl snapshot restore` only: etcdctl's was removed (3.6+, etcd-io/etcd#13809).
    EtcdutlOnly,
}

/// What the policy says about one minor version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Minor {
    /// `3.5`.
    pub minor: String,
    /// The lowest patch etcd supports in production.
    pub production_minimum: Option<Version>,
    pub production_minimum_source: Option<String>,
    /// The lowest patch of this minor that may step to the next minor.
    pub upgrade_minimum: Option<Version>,
    pub upgrade_minimum_source: Option<String>,
    pub restore_tool: RestoreTool,
    /// `etcdutl migrate` (offline storage-version change) exists: 3.6+.
    pub storage_migrate: bool,
    /// The first patch whose etcdutl has `check v2store` (3.5.18; it scans the WAL too from
    /// 3.5.32).
    pub v2store_check: Option<Version>,
    /// The server still has the v2 API (`--enable-v2`): up to 3.5.
    pub v2_api: bool,
    /// The server refuses every `--experimental-*` flag (3.7 removed them).
    pub no_experimental_flags: bool,
    /// A cluster of this minor downgrades online to the previous minor (`etcdctl downgrade
    /// enable`, 3.6+): the running members lower the cluster and storage versions themselves.
    #[serde(default)]
    pub online_downgrade: bool,
    /// etcd no longer supports this minor: where that is said (no patches follow; data of it
    /// still migrates away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_life: Option<String>,
}

/// A range of releases known to be unsafe, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advisory {
    /// First bad release.
    pub from: Version,
    /// Last bad release (inclusive).
    pub to: Version,
    /// Where it is explained, e.g. `etcd-io/etcd#13766`.
    pub issue: String,
    pub summary: String,
}

/// The whole policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub minors: Vec<Minor>,
    pub advisories: Vec<Advisory>,
}

/// Why a version should not be released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    BelowMinimum {
        version: Version,
        minimum: Version,
        source: String,
    },
    KnownBad {
        version: Version,
        advisory: Advisory,
    },
    EndOfLife {
        version: Version,
        source: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::BelowMinimum {
                version,
                minimum,
                source,
            } => write!(
                f,
                "etcd {version} is below the production minimum {minimum} of its minor ({source})"
            ),
            Finding::KnownBad { version, advisory } => write!(
                f,
                "etcd {version} is a known-bad release ({} to {}: {}, {})",
                advisory.from, advisory.to, advisory.summary, advisory.issue
            ),
            Finding::EndOfLife { version, source } => write!(
                f,
                "etcd {version} is of a minor etcd no longer supports ({source}); data of it still migrates to the next minor"
            ),
        }
    }
}

fn v(s: &str) -> Version {
    Version::parse(s).expect("a valid built-in version")
}

const K8S_MINIMUMS: &str = "etcd's minimum versions for production, kubernetes/website PR #40816";
/// etcd's CHANGELOG-3.4, v3.4.45 (2026-06-01): "this release marks the end of support (EOL)
/// for v3.4. No further patches will be issued."
pub const EOL_3_4: &str =
    "end of support since v3.4.45, 2026-06-01: etcd's CHANGELOG-3.4 (\"no further patches will be issued\")";
const EOL_BEFORE_3_4: &str = "superseded before 3.4 reached its end of support (etcd supports the two newest minors, see etcd's CHANGELOG-3.4)";

impl Policy {
    /// The policy etcdimg ships with (sources in each entry).
    pub fn builtin() -> Policy {
        let minor = |m: &str, restore: RestoreTool| Minor {
            minor: m.into(),
            production_minimum: None,
            production_minimum_source: None,
            upgrade_minimum: None,
            upgrade_minimum_source: None,
            restore_tool: restore,
            storage_migrate: false,
            v2store_check: None,
            v2_api: true,
            no_experimental_flags: false,
            online_downgrade: false,
            end_of_life: None,
        };
        let mut m34 = minor("3.4", RestoreTool::Etcdctl);
        m34.end_of_life = Some(EOL_3_4.into());
        m34.production_minimum = Some(v("3.4.22"));
        m34.production_minimum_source = Some(K8S_MINIMUMS.into());
        let mut m35 = minor("3.5", RestoreTool::EtcdutlPreferred);
        m35.production_minimum = Some(v("3.5.6"));
        m35.production_minimum_source = Some(K8S_MINIMUMS.into());
        m35.upgrade_minimum = Some(v("3.5.32"));
        m35.upgrade_minimum_source = Some(format!(
            "etcd's upgrade guide for 3.6, {UPGRADE_GUIDE_3_6} (raised from 3.5.20 and 3.5.26 after the zombie-member incidents etcd-io/etcd#19557, #20793, #20967)"
        ));
        m35.v2store_check = Some(v("3.5.18"));
        let mut m36 = minor("3.6", RestoreTool::EtcdutlOnly);
        m36.upgrade_minimum = Some(v("3.6.11"));
        m36.upgrade_minimum_source =
            Some(format!("etcd's upgrade guide for 3.7, {UPGRADE_GUIDE_3_7}"));
        m36.storage_migrate = true;
        m36.v2_api = false;
        m36.online_downgrade = true;
        let mut m37 = minor("3.7", RestoreTool::EtcdutlOnly);
        m37.storage_migrate = true;
        m37.v2_api = false;
        m37.online_downgrade = true;
        m37.no_experimental_flags = true;
        let mut minors: Vec<Minor> = ["3.0", "3.1", "3.2", "3.3"]
            .into_iter()
            .map(|m| Minor {
                end_of_life: Some(EOL_BEFORE_3_4.into()),
                ..minor(m, RestoreTool::Etcdctl)
            })
            .collect();
        minors.extend([m34, m35, m36, m37]);
        Policy {
            minors,
            advisories: vec![
                Advisory {
                    from: v("3.5.0"),
                    to: v("3.5.2"),
                    issue: "etcd-io/etcd#13766".into(),
                    summary: "data inconsistency after a crash under load (etcd's v3.5 data inconsistency postmortem)".into(),
                },
                Advisory {
                    from: v("3.5.0"),
                    to: v("3.5.4"),
                    issue: "etcd-io/etcd#14370".into(),
                    summary: "a single-member cluster can lose acknowledged writes when it crashes (fixed in 3.5.5)".into(),
                },
                Advisory {
                    from: v("3.5.4"),
                    to: v("3.5.4"),
                    issue: "etcd-io/etcd#14139".into(),
                    summary: "inconsistent revisions after a reboot".into(),
                },
            ],
        }
    }

    /// The entry of `v`'s minor.
    pub fn minor(&self, v: &Version) -> Option<&Minor> {
        let name = format!("{}.{}", v.major, v.minor);
        self.minors.iter().find(|m| m.minor == name)
    }

    /// Why `v` should not be released (empty: nothing known against it).
    pub fn findings(&self, v: &Version) -> Vec<Finding> {
        let mut out = Vec::new();
        if let Some(m) = self.minor(v) {
            if let Some(source) = &m.end_of_life {
                out.push(Finding::EndOfLife {
                    version: v.clone(),
                    source: source.clone(),
                });
            }
            if let Some(min) = &m.production_minimum {
                if v < min {
                    out.push(Finding::BelowMinimum {
                        version: v.clone(),
                        minimum: min.clone(),
                        source: m
                            .production_minimum_source
                            .clone()
                            .unwrap_or_else(|| "the policy".into()),
                    });
                }
            }
        }
        for a in &self.advisories {
            if &a.from <= v && v <= &a.to {
                out.push(Finding::KnownBad {
                    version: v.clone(),
                    advisory: a.clone(),
                });
            }
        }
        out
    }

    /// Which tool restores a snapshot for `v` (by etcd's rule when the minor is not listed).
    pub fn restore_tool(&self, v: &Version) -> RestoreTool {
        match self.minor(v) {
            Some(m) => m.restore_tool,
            None if (v.major, v.minor) <= (3, 4) => RestoreTool::Etcdctl,
            None if (v.major, v.minor) == (3, 5) => RestoreTool::EtcdutlPreferred,
            None => RestoreTool::EtcdutlOnly,
        }
    }

    /// The lowest patch of `v`'s minor that may step to the next minor, and its source.
    pub fn upgrade_minimum(&self, v: &Version) -> Option<(Version, String)> {
        let m = self.minor(v)?;
        Some((
            m.upgrade_minimum.clone()?,
            m.upgrade_minimum_source
                .clone()
                .unwrap_or_else(|| "the policy".into()),
        ))
    }

    /// `etcdutl-<v> migrate` exists.
    pub fn has_storage_migrate(&self, v: &Version) -> bool {
        self.minor(v)
            .map_or((v.major, v.minor) >= (3, 6), |m| m.storage_migrate)
    }

    /// `etcdutl-<v> check v2store` exists.
    pub fn has_v2store_check(&self, v: &Version) -> bool {
        self.minor(v)
            .and_then(|m| m.v2store_check.as_ref())
            .is_some_and(|first| v >= first)
    }

    /// etcd `v` has the v2 API (`--enable-v2`).
    pub fn has_v2_api(&self, v: &Version) -> bool {
        self.minor(v)
            .map_or((v.major, v.minor) <= (3, 5), |m| m.v2_api)
    }

    /// A cluster at `v` downgrades online to the previous minor (etcd's downgrade API, 3.6+).
    pub fn has_online_downgrade(&self, v: &Version) -> bool {
        self.minor(v)
            .map_or((v.major, v.minor) >= (3, 6), |m| m.online_downgrade)
    }

    /// etcd `v` refuses `--experimental-*` flags.
    pub fn refuses_experimental_flags(&self, v: &Version) -> bool {
        self.minor(v)
            .map_or((v.major, v.minor) >= (3, 7), |m| m.no_experimental_flags)
    }

    /// Adds a user's extension. It may add minors and advisories and raise minimums; lowering
    /// a built-in minimum is refused (the policy only grows stricter).
    pub fn extend(&mut self, ext: &Extension) -> Result<(), String> {
        for (name, o) in &ext.minor {
            let parsed = Version::parse(&format!("{name}.0"))
                .map_err(|_| format!("`{name}` is not a minor version like `3.6`"))?;
            let entry = match self.minor(&parsed).cloned() {
                Some(m) => m,
                None => {
                    let mut m = Policy::builtin()
                        .minor(&Version::new(3, 7, 0))
                        .cloned()
                        .expect("3.7 is built in");
                    m.minor = name.clone();
                    m.production_minimum = None;
                    m.upgrade_minimum = None;
                    self.minors.push(m.clone());
                    m
                }
            };
            let mut updated = entry.clone();
            for (field, new, old, source) in [
                (
                    "production_minimum",
                    &o.production_minimum,
                    &entry.production_minimum,
                    &mut updated.production_minimum_source,
                ),
                (
                    "upgrade_minimum",
                    &o.upgrade_minimum,
                    &entry.upgrade_minimum,
                    &mut updated.upgrade_minimum_source,
                ),
            ] {
                let Some(new) = new else { continue };
                if (new.major, new.minor) != (parsed.major, parsed.minor) {
                    return Err(format!(
                        "minor.\"{name}\".{field} = \"{new}\" is not a {name} release"
                    ));
                }
                if let Some(old) = old {
                    if new < old {
                        return Err(format!(
                            "minor.\"{name}\".{field} = \"{new}\" would lower the built-in {old}; the policy only grows stricter"
                        ));
                    }
                }
                *source = Some(
                    o.source
                        .clone()
                        .unwrap_or_else(|| "images.toml [policy]".into()),
                );
            }
            if let Some(min) = &o.production_minimum {
                updated.production_minimum = Some(min.clone());
            }
            if let Some(min) = &o.upgrade_minimum {
                updated.upgrade_minimum = Some(min.clone());
            }
            if o.end_of_life {
                updated.end_of_life = Some(
                    o.source
                        .clone()
                        .unwrap_or_else(|| "images.toml [policy]".into()),
                );
            }
            if let Some(m) = self.minors.iter_mut().find(|m| m.minor == *name) {
                *m = updated;
            }
        }
        for a in &ext.advisory {
            if a.to < a.from {
                return Err(format!(
                    "advisory {}: `to` ({}) is before `from` ({})",
                    a.issue, a.to, a.from
                ));
            }
            self.advisories.push(a.clone());
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the policy serialises")
    }

    pub fn from_json(text: &str) -> Result<Policy, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// What a user may add in images.toml:
///
/// ```toml
/// [policy.minor."3.6"]
/// production_minimum = "3.6.3"
/// source = "etcd advisory ..."
///
/// [[policy.advisory]]
/// from = "3.6.0"
/// to = "3.6.2"
/// issue = "etcd-io/etcd#NNNNN"
/// summary = "what goes wrong"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    #[serde(default)]
    pub minor: BTreeMap<String, MinorOverride>,
    #[serde(default)]
    pub advisory: Vec<Advisory>,
    /// `[policy.go]`: the Go toolchain policy's extension ([`go::GoExtension`]).
    #[serde(default)]
    pub go: Option<go::GoExtension>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinorOverride {
    pub production_minimum: Option<Version>,
    pub upgrade_minimum: Option<Version>,
    /// etcd no longer supports this minor (an extension can only add this, never lift it).
    #[serde(default)]
    pub end_of_life: bool,
    /// Where the new minimum or the end of support comes from (shown in messages).
    pub source: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(version: &str, want: &[&str]) {
        let got: Vec<String> = Policy::builtin()
            .findings(&v(version))
            .iter()
            .map(|f| match f {
                Finding::BelowMinimum { minimum, .. } => format!("below {minimum}"),
                Finding::KnownBad { advisory, .. } => advisory.issue.clone(),
                Finding::EndOfLife { .. } => "end of life".into(),
            })
            .collect();
        assert_eq!(got, want, "{version}");
    }

    #[test]
    fn findings_per_release() {
        check("3.4.21", &["end of life", "below 3.4.22"]);
        check("3.4.22", &["end of life"]);
        check("3.4.45", &["end of life"]);
        check("3.3.27", &["end of life"]);
        check(
            "3.5.0",
            &["below 3.5.6", "etcd-io/etcd#13766", "etcd-io/etcd#14370"],
        );
        check(
            "3.5.1",
            &["below 3.5.6", "etcd-io/etcd#13766", "etcd-io/etcd#14370"],
        );
        check("3.5.3", &["below 3.5.6", "etcd-io/etcd#14370"]);
        check(
            "3.5.4",
            &["below 3.5.6", "etcd-io/etcd#14370", "etcd-io/etcd#14139"],
        );
        check("3.5.5", &["below 3.5.6"]);
        check("3.5.6", &[]);
        check("3.5.33", &[]);
        check("3.6.14", &[]);
        check("3.7.1", &[]);
        check("3.5.36", &[]);
        check("3.6.17", &[]);
        check("3.7.4", &[]);
    }

    #[test]
    fn an_extension_can_end_a_minor_but_never_revive_one() {
        let mut p = Policy::builtin();
        let ext: Extension = serde_json::from_str(
            r#"{"minor": {"3.5": {"end_of_life": true, "source": "etcd's CHANGELOG-3.5"}}}"#,
        )
        .unwrap();
        p.extend(&ext).unwrap();
        let f = p.findings(&v("3.5.36"));
        assert_eq!(f.len(), 1);
        assert!(
            f[0].to_string().contains("etcd's CHANGELOG-3.5"),
            "{}",
            f[0]
        );
        // `end_of_life = false` is no override: 3.4 stays ended.
        let ext: Extension =
            serde_json::from_str(r#"{"minor": {"3.4": {"end_of_life": false}}}"#).unwrap();
        p.extend(&ext).unwrap();
        assert!(matches!(
            p.findings(&v("3.4.45"))[0],
            Finding::EndOfLife { .. }
        ));
        // It survives the trip into the image.
        assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn tools_and_capabilities_per_minor() {
        let p = Policy::builtin();
        for (ver, tool, migrate, check, v2) in [
            ("3.3.27", RestoreTool::Etcdctl, false, false, true),
            ("3.4.45", RestoreTool::Etcdctl, false, false, true),
            ("3.5.17", RestoreTool::EtcdutlPreferred, false, false, true),
            ("3.5.18", RestoreTool::EtcdutlPreferred, false, true, true),
            ("3.6.14", RestoreTool::EtcdutlOnly, true, false, false),
            ("3.7.1", RestoreTool::EtcdutlOnly, true, false, false),
            ("3.8.0", RestoreTool::EtcdutlOnly, true, false, false),
        ] {
            let x = v(ver);
            assert_eq!(p.restore_tool(&x), tool, "{ver}");
            assert_eq!(p.has_storage_migrate(&x), migrate, "{ver}");
            assert_eq!(p.has_v2store_check(&x), check, "{ver}");
            assert_eq!(p.has_v2_api(&x), v2, "{ver}");
        }
        assert_eq!(p.upgrade_minimum(&v("3.5.1")).unwrap().0, v("3.5.32"));
        assert_eq!(p.upgrade_minimum(&v("3.6.0")).unwrap().0, v("3.6.11"));
        assert!(p.upgrade_minimum(&v("3.4.0")).is_none());
        assert!(p.refuses_experimental_flags(&v("3.7.0")));
        assert!(!p.refuses_experimental_flags(&v("3.6.14")));
    }

    #[test]
    fn extensions_only_tighten_and_round_trip_through_json() {
        let mut p = Policy::builtin();
        let ext = Extension {
            minor: [(
                "3.6".to_string(),
                MinorOverride {
                    production_minimum: Some(v("3.6.3")),
                    upgrade_minimum: None,
                    end_of_life: false,
                    source: Some("a new advisory".into()),
                },
            )]
            .into(),
            advisory: vec![Advisory {
                from: v("3.6.0"),
                to: v("3.6.2"),
                issue: "etcd-io/etcd#99999".into(),
                summary: "test".into(),
            }],
            go: None,
        };
        p.extend(&ext).unwrap();
        let f: Vec<String> = p
            .findings(&v("3.6.1"))
            .iter()
            .map(|f| f.to_string())
            .collect();
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].contains("3.6.3") && f[0].contains("a new advisory"),
            "{f:?}"
        );
        assert!(p.findings(&v("3.6.3")).is_empty());
        assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p);

        let lower = Extension {
            minor: [(
                "3.5".to_string(),
                MinorOverride {
                    production_minimum: Some(v("3.5.1")),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let err = Policy::builtin().extend(&lower).unwrap_err();
        assert!(err.contains("would lower the built-in 3.5.6"), "{err}");
        let wrong_minor = Extension {
            minor: [(
                "3.5".to_string(),
                MinorOverride {
                    upgrade_minimum: Some(v("3.6.0")),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        assert!(Policy::builtin().extend(&wrong_minor).is_err());
        let backwards = Extension {
            advisory: vec![Advisory {
                from: v("3.6.2"),
                to: v("3.6.0"),
                issue: "x".into(),
                summary: "y".into(),
            }],
            ..Default::default()
        };
        assert!(Policy::builtin().extend(&backwards).is_err());
    }
}
