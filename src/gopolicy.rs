//! What the Go toolchain policy ([`etcd_policy::go`]) has against the binaries of a build or a
//! release, read from their Go build info: `build` warns, the release verbs refuse unless
//! `--allow-unsupported-go`, and the release report records what was allowed.

use std::collections::BTreeMap;

use etcd_policy::go::GoPolicy;
use serde::Serialize;

use crate::release::ImageBinary;

/// One finding and every binary it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoFindingGroup {
    /// `built with go1.26.8, below go1.26.10, ...`.
    pub finding: String,
    /// `amd64: usr/local/bin/etcd-3.6.17`, one per binary.
    pub binaries: Vec<String>,
}

impl std::fmt::Display for GoFindingGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 4;
        let mut names: Vec<&str> = self
            .binaries
            .iter()
            .take(SHOWN)
            .map(String::as_str)
            .collect();
        let more = self.binaries.len().saturating_sub(SHOWN);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        names.sort_unstable();
        write!(f, "{} ({}{more})", self.finding, names.join(", "))
    }
}

/// The findings against `images` (arch and its binaries), grouped by finding, in a stable
/// order. Binaries without Go build info (migrate) have none.
pub fn findings<'a>(
    policy: &GoPolicy,
    images: impl IntoIterator<Item = (&'a str, &'a [ImageBinary])>,
) -> Vec<GoFindingGroup> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (arch, binaries) in images {
        for b in binaries {
            let Some(go) = &b.go else { continue };
            for f in policy.findings(&go.go_version) {
                groups
                    .entry(f.to_string())
                    .or_default()
                    .push(format!("{arch}: {}", b.path));
            }
        }
    }
    groups
        .into_iter()
        .map(|(finding, binaries)| GoFindingGroup { finding, binaries })
        .collect()
}

/// The hint every refusal and warning carries.
pub const HINT: &str = "rebuild with a supported Go: set build.go_toolchain in images.toml, --go-toolchain or ETCDIMG_GO_TOOLCHAIN (e.g. go1.27.3); or pass --allow-unsupported-go (ETCDIMG_ALLOW_UNSUPPORTED_GO=1) to release anyway, recorded in the release report (README, \"Scanners, SBOM and patched Go\")";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildinfo::GoBuildInfo;

    fn binary(path: &str, go: Option<&str>) -> ImageBinary {
        ImageBinary {
            path: path.into(),
            links: vec![],
            sha256: "00".repeat(32),
            size: 1,
            stripped: true,
            go: go.map(|g| GoBuildInfo {
                go_version: g.into(),
                path: "go.etcd.io/etcd/server/v3".into(),
                main: None,
                deps: vec![],
                settings: Default::default(),
            }),
            rust: None,
        }
    }

    #[test]
    fn findings_group_binaries_and_skip_rust() {
        let amd64 = [
            binary("usr/local/bin/etcd-3.6.17", Some("go1.26.8")),
            binary("usr/local/bin/etcdctl-3.6.17", Some("go1.26.8")),
            binary("usr/local/bin/migrate", None),
            binary("usr/local/bin/etcd-3.5.36", Some("go1.27.3")),
        ];
        let arm64 = [binary("usr/local/bin/etcd-3.6.17", Some("go1.24.10"))];
        let got = findings(
            &GoPolicy::builtin(),
            [("amd64", &amd64[..]), ("arm64", &arm64[..])],
        );
        assert_eq!(got.len(), 2, "{got:?}");
        let below = got.iter().find(|g| g.finding.contains("below")).unwrap();
        assert_eq!(
            below.binaries,
            [
                "amd64: usr/local/bin/etcd-3.6.17",
                "amd64: usr/local/bin/etcdctl-3.6.17"
            ]
        );
        let unsupported = got
            .iter()
            .find(|g| g.finding.contains("no longer"))
            .unwrap();
        assert_eq!(unsupported.binaries, ["arm64: usr/local/bin/etcd-3.6.17"]);
    }
}
