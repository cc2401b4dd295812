//! The SLSA provenance v1 predicate of a release (https://slsa.dev/spec/v1.0/provenance),
//! from its release report: who built it (the builder), from what (images.toml's digest and
//! the resolved settings), with which inputs (every tarball and SHA256SUMS, every Go module
//! sum, the base image, the Go toolchains, migrate's binary and source tree), and how (the
//! invocation). Pure: the caller passes what it knows of the run.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::release::ReleaseReport;

/// Our build type: what `externalParameters` and `internalParameters` mean (README,
/// "Verifying a release").
pub const BUILD_TYPE: &str = "https://etcdimg.invalid/provenance/v1";

/// What the run knows about itself.
pub struct Run {
    /// `builder.id`: the CI workflow (GitHub: `https://github.com/<workflow ref>`), or
    /// `--builder-id`.
    pub builder_id: String,
    /// images.toml: its path as given and the sha256 of its bytes.
    pub config_path: String,
    pub config_sha256: String,
    /// The resolved settings that decide the bytes (tag, arches, sources, toolchain, ...).
    pub settings: Value,
    /// The command line (without secrets) and, in CI, the run's id.
    pub invocation: Value,
    pub invocation_id: String,
}

/// A resource descriptor: `uri`, `digest` (algorithm -> value), and a name.
fn resource(uri: &str, digest: &[(&str, &str)], name: Option<&str>) -> Value {
    let mut r = json!({ "uri": uri });
    if !digest.is_empty() {
        let d: BTreeMap<&str, &str> = digest
            .iter()
            .map(|(a, v)| (*a, v.trim_start_matches("sha256:")))
            .collect();
        r["digest"] = json!(d);
    }
    if let Some(n) = name {
        r["name"] = json!(n);
    }
    r
}

/// Every input of the release, once per URI, in a stable order.
pub fn resolved_dependencies(report: &ReleaseReport) -> Vec<Value> {
    let mut deps: BTreeMap<String, Value> = BTreeMap::new();
    let mut add = |v: Value| {
        let key = format!(
            "{}|{}",
            v["uri"].as_str().unwrap_or(""),
            v["name"].as_str().unwrap_or("")
        );
        deps.entry(key).or_insert(v);
    };
    for image in &report.images {
        let p = &image.provenance;
        add(resource(
            &format!("pkg:oci/{}", p.base.name),
            &[("sha256", &p.base.digest)],
            Some(&format!("base image for {}", p.platform)),
        ));
        for u in &p.upstream {
            add(resource(
                &u.url,
                &[("sha256", &u.sha256)],
                Some(&format!("etcd {} release tarball", u.version)),
            ));
            if !u.sha256sums.is_empty() {
                let sums = u
                    .url
                    .rsplit_once('/')
                    .map(|(dir, _)| format!("{dir}/SHA256SUMS"))
                    .unwrap_or_default();
                add(resource(
                    &sums,
                    &[("sha256", &u.sha256sums)],
                    Some(&format!("etcd {} SHA256SUMS", u.version)),
                ));
            }
        }
        for c in &p.compiles {
            let go = c
                .toolchain
                .trim_start_matches("go ")
                .trim_start_matches("docker ");
            add(resource(
                &format!("pkg:golang/toolchain@{go}"),
                &[],
                Some(&format!("Go toolchain ({} builder)", c.builder)),
            ));
            for m in &c.modules {
                // dirHash: Go's module hash (h1), the in-toto digest name for it.
                add(resource(
                    &crate::buildinfo::purl(&m.path, &m.version),
                    &[("dirHash", &m.sum)],
                    None,
                ));
            }
        }
        add(resource(
            "pkg:generic/etcdimg-migrate",
            &[("sha256", &p.migrate_sha256)],
            Some(&format!("migrate for {}", p.platform)),
        ));
        if !p.migrate_source_sha256.is_empty() {
            add(resource(
                "pkg:generic/etcdimg-migrate-source",
                &[("sha256", &p.migrate_source_sha256)],
                Some("migrate's source tree, path dependencies and Cargo.lock"),
            ));
        }
    }
    deps.into_values().collect()
}

/// The provenance predicate of `report`.
pub fn predicate(report: &ReleaseReport, run: &Run) -> Value {
    json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "config": {
                    "path": run.config_path,
                    "digest": { "sha256": run.config_sha256 },
                },
                "settings": run.settings,
                "invocation": run.invocation,
            },
            "internalParameters": {
                "generator": report.generator,
                "etcd": report.etcd,
            },
            "resolvedDependencies": resolved_dependencies(report),
        },
        "runDetails": {
            "builder": { "id": run.builder_id },
            "metadata": {
                "invocationId": run.invocation_id,
            },
            "byproducts": report.images.iter().map(|i| json!({
                "name": i.reference,
                "digest": { "sha256": i.manifest_digest.trim_start_matches("sha256:") },
            })).collect::<Vec<_>>(),
        },
    })
}

/// `builder.id` for this run: `--builder-id` / ETCDIMG_BUILDER_ID, else the GitHub workflow
/// (`GITHUB_WORKFLOW_REF`), else this host.
pub fn builder_id(explicit: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> String {
    if let Some(id) = explicit.filter(|s| !s.is_empty()) {
        return id.to_string();
    }
    if let (Some(server), Some(workflow)) = (env("GITHUB_SERVER_URL"), env("GITHUB_WORKFLOW_REF")) {
        return format!("{server}/{workflow}");
    }
    let host = env("HOSTNAME").unwrap_or_else(|| "localhost".into());
    format!("urn:etcdimg:local:{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_is_the_workflow_in_ci_and_the_host_otherwise() {
        let ci = |k: &str| match k {
            "GITHUB_SERVER_URL" => Some("https://github.com".to_string()),
            "GITHUB_WORKFLOW_REF" => {
                Some("o/r/.github/workflows/release.yml@refs/tags/v1".to_string())
            }
            _ => None,
        };
        assert_eq!(
            builder_id(None, &ci),
            "https://github.com/o/r/.github/workflows/release.yml@refs/tags/v1"
        );
        assert_eq!(builder_id(Some("x"), &ci), "x");
        let local = |k: &str| (k == "HOSTNAME").then(|| "h1".to_string());
        assert_eq!(builder_id(None, &local), "urn:etcdimg:local:h1");
    }
}
