//! The Go toolchain policy, beside etcd's: which Go minors are still supported, and the lowest
//! patch of each that a security release requires, each with its source. A binary built with
//! a Go outside it is what scanners report (their findings come from the Go version in the
//! binary's build info), and a rebuild with a newer patch is the fix.
//!
//! Users extend it in images.toml (`[policy.go]`, see [`GoExtension`]); like etcd's policy it
//! only grows stricter.

use std::fmt;

use semver::Version;
use serde::{Deserialize, Serialize};

/// Go's release policy: "each major Go release is supported until there are two newer major
/// releases".
pub const GO_RELEASE_POLICY: &str = "https://go.dev/doc/devel/release#policy";

/// The Go vulnerability database snapshot the built-in minimums were read from.
pub const VULNDB_SNAPSHOT: &str = "golang.org/x/vulndb@v0.0.0-20261105234957-e22db6528018";

/// One supported Go minor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoMinor {
    /// `1.26`.
    pub minor: String,
    /// The lowest patch without a known standard-library vulnerability fixed in this minor.
    pub minimum: Option<Version>,
    pub minimum_source: Option<String>,
}

/// The Go policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoPolicy {
    /// The supported minors, newest first.
    pub supported: Vec<GoMinor>,
    pub supported_source: String,
}

/// Why a binary's Go should not be released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoFinding {
    Unsupported {
        go: String,
        supported: Vec<String>,
        source: String,
    },
    BelowMinimum {
        go: String,
        minimum: Version,
        source: String,
    },
    /// A Go version string this policy cannot read (`devel +abc`, garbage).
    Unknown { go: String },
}

impl fmt::Display for GoFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GoFinding::Unsupported {
                go,
                supported,
                source,
            } => write!(
                f,
                "built with {go}, a Go minor no longer supported (supported: {}; {source})",
                supported.join(", ")
            ),
            GoFinding::BelowMinimum {
                go,
                minimum,
                source,
            } => write!(
                f,
                "built with {go}, below go{minimum}, the lowest patch of its minor without a known standard-library vulnerability ({source})"
            ),
            GoFinding::Unknown { go } => write!(
                f,
                "built with `{go}`, not a Go release the policy can judge"
            ),
        }
    }
}

/// `go1.26.8` (or `1.26.8`, `go1.27rc1`, with experiments after a space) as a semver version:
/// `go1.27` is `1.27.0`; a pre-release is below its release.
pub fn parse_go_version(go: &str) -> Option<Version> {
    let first = go.split_whitespace().next()?;
    let v = first.strip_prefix("go").unwrap_or(first);
    let (release, pre) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&v[..i], Some(&v[i..])),
        None => (v, None),
    };
    let mut parts = release.split('.').map(|p| p.parse::<u64>().ok());
    let (major, minor) = (parts.next()??, parts.next()??);
    let patch = parts.next().unwrap_or(Some(0))?;
    if parts.next().is_some() {
        return None;
    }
    let mut version = Version::new(major, minor, patch);
    if let Some(pre) = pre {
        version.pre = semver::Prerelease::new(pre).ok()?;
    }
    Some(version)
}

impl GoPolicy {
    /// The policy etcdimg ships with (sources in each entry).
    pub fn builtin() -> GoPolicy {
        let from_vulndb = |id: &str, what: &str| {
            Some(format!(
                "{id} ({what}) in the Go vulnerability database, {VULNDB_SNAPSHOT}"
            ))
        };
        GoPolicy {
            supported: vec![
                GoMinor {
                    minor: "1.27".into(),
                    minimum: Some(Version::new(1, 27, 3)),
                    minimum_source: from_vulndb(
                        "GO-2026-6809",
                        "crypto/x509 trusted compromised intermediates, fixed in 1.27.3 and 1.26.10",
                    ),
                },
                GoMinor {
                    minor: "1.26".into(),
                    minimum: Some(Version::new(1, 26, 10)),
                    minimum_source: from_vulndb(
                        "GO-2026-6809",
                        "crypto/x509 trusted compromised intermediates, fixed in 1.27.3 and 1.26.10",
                    ),
                },
            ],
            supported_source: format!(
                "Go supports the two newest major releases, {GO_RELEASE_POLICY}"
            ),
        }
    }

    fn minor(&self, v: &Version) -> Option<&GoMinor> {
        let name = format!("{}.{}", v.major, v.minor);
        self.supported.iter().find(|m| m.minor == name)
    }

    /// Why a binary built with `go` (its build info's Go version) should not be released.
    pub fn findings(&self, go: &str) -> Vec<GoFinding> {
        let Some(v) = parse_go_version(go) else {
            return vec![GoFinding::Unknown { go: go.into() }];
        };
        let Some(minor) = self.minor(&v) else {
            return vec![GoFinding::Unsupported {
                go: go.into(),
                supported: self.supported.iter().map(|m| m.minor.clone()).collect(),
                source: self.supported_source.clone(),
            }];
        };
        match &minor.minimum {
            Some(min) if &v < min => vec![GoFinding::BelowMinimum {
                go: go.into(),
                minimum: min.clone(),
                source: minor
                    .minimum_source
                    .clone()
                    .unwrap_or_else(|| "the policy".into()),
            }],
            _ => Vec::new(),
        }
    }

    /// The newest supported Go release the policy knows is fine: the highest minimum.
    pub fn recommended(&self) -> Option<Version> {
        self.supported
            .iter()
            .filter_map(|m| m.minimum.clone())
            .max()
    }

    /// Adds a user's extension: it may drop minors from the supported set and raise minimums;
    /// supporting a minor the built-in policy does not, or lowering a minimum, is refused.
    pub fn extend(&mut self, ext: &GoExtension) -> Result<(), String> {
        if let Some(only) = &ext.supported {
            for m in only {
                if !self.supported.iter().any(|s| &s.minor == m) {
                    return Err(format!(
                        "go.supported names {m}, which the built-in Go policy does not support ({}); the policy only grows stricter",
                        self.supported.iter().map(|s| s.minor.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            self.supported.retain(|s| only.contains(&s.minor));
        }
        for (name, min) in &ext.minimum {
            let parsed = parse_go_version(min)
                .filter(|v| v.pre.is_empty())
                .ok_or_else(|| {
                    format!("go.minimum.\"{name}\" = \"{min}\" is not a Go release like 1.26.10")
                })?;
            if format!("{}.{}", parsed.major, parsed.minor) != *name {
                return Err(format!(
                    "go.minimum.\"{name}\" = \"{min}\" is not a {name} release"
                ));
            }
            let entry = self
                .supported
                .iter_mut()
                .find(|m| m.minor == *name)
                .ok_or_else(|| {
                    format!("go.minimum names {name}, which is not a supported Go minor")
                })?;
            if entry.minimum.as_ref().is_some_and(|old| &parsed < old) {
                return Err(format!(
                    "go.minimum.\"{name}\" = \"{min}\" would lower the built-in {}; the policy only grows stricter",
                    entry.minimum.as_ref().expect("checked")
                ));
            }
            entry.minimum = Some(parsed);
            entry.minimum_source = Some(
                ext.source
                    .clone()
                    .unwrap_or_else(|| "images.toml [policy.go]".into()),
            );
        }
        Ok(())
    }
}

/// What a user may add in images.toml:
///
/// ```toml
/// [policy.go]
/// minimum = { "1.27" = "1.27.4" }
/// supported = ["1.27"]
/// source = "GO-2026-NNNN"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoExtension {
    #[serde(default)]
    pub minimum: std::collections::BTreeMap<String, String>,
    /// Only these minors count as supported (a subset of the built-in ones).
    pub supported: Option<Vec<String>>,
    pub source: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(go: &str) -> Vec<&'static str> {
        kinds_of(&GoPolicy::builtin(), go)
    }

    #[test]
    fn findings_per_go_release() {
        assert_eq!(kinds("go1.24.10"), ["unsupported"]);
        assert_eq!(kinds("go1.25.13"), ["unsupported"]);
        assert_eq!(kinds("go1.26.8"), ["below"]);
        assert!(kinds("go1.26.10").is_empty());
        assert!(kinds("go1.26.11 X:boringcrypto").is_empty());
        assert_eq!(kinds("go1.27rc1"), ["below"]);
        assert_eq!(kinds("go1.27.2"), ["below"]);
        assert!(kinds("go1.27.3").is_empty());
        assert_eq!(kinds("devel go1.28-abcdef"), ["unknown"]);
    }

    #[test]
    fn go_versions_parse_like_go_orders_them() {
        assert_eq!(parse_go_version("go1.27"), Some(Version::new(1, 27, 0)));
        assert!(parse_go_version("go1.27rc1").unwrap() < Version::new(1, 27, 0));
        assert_eq!(parse_go_version("1.26.8"), Some(Version::new(1, 26, 8)));
        assert_eq!(parse_go_version("go1"), None);
    }

    #[test]
    fn an_extension_only_tightens() {
        let mut p = GoPolicy::builtin();
        let ext =
            |json: serde_json::Value| -> GoExtension { serde_json::from_value(json).unwrap() };
        p.extend(&ext(
            serde_json::json!({"minimum": {"1.27": "1.27.4"}, "source": "GO-2026-9999"}),
        ))
        .unwrap();
        assert_eq!(kinds_of(&p, "go1.27.3"), ["below"]);
        assert!(p
            .extend(&ext(serde_json::json!({"minimum": {"1.27": "1.27.1"}})))
            .unwrap_err()
            .contains("would lower"));
        assert!(p
            .extend(&ext(serde_json::json!({"supported": ["1.25"]})))
            .unwrap_err()
            .contains("does not support"));
        p.extend(&ext(serde_json::json!({"supported": ["1.27"]})))
            .unwrap();
        assert_eq!(kinds_of(&p, "go1.26.11"), ["unsupported"]);
    }

    fn kinds_of(p: &GoPolicy, go: &str) -> Vec<&'static str> {
        p.findings(go)
            .iter()
            .map(|f| match f {
                GoFinding::Unsupported { .. } => "unsupported",
                GoFinding::BelowMinimum { .. } => "below",
                GoFinding::Unknown { .. } => "unknown",
            })
            .collect()
    }
}
