//! The release gates every release verb passes before its first request (push, push-manifest,
//! all-push, plan): etcd's version policy (`--allow-unsafe-versions`) and the Go toolchain
//! policy read from the images' build records (`--allow-unsupported-go`). An allowed finding is
//! said on stderr and recorded in the release report; a refusal names the flag that allows it.

use anyhow::Result;

use super::layout::{ArchImage, PushOptions};
use crate::report::Reporter;
use crate::settings::Settings;

/// Refuses a release of versions the version policy has findings against, unless the user
/// allowed it (`--allow-unsafe-versions`); an allowed one is said on stderr (and recorded in the
/// release report).
pub fn check_policy(
    settings: &Settings,
    options: &PushOptions,
    reporter: &dyn Reporter,
) -> Result<()> {
    let findings = settings.policy_findings();
    if findings.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    if options.allow_unsafe_versions {
        for t in &text {
            reporter.warn(&format!(
                "{t}; releasing it anyway (--allow-unsafe-versions)"
            ));
        }
        return Ok(());
    }
    anyhow::bail!(crate::UserError::new(
        format!(
            "refusing to release {}: {}; nothing was pushed",
            settings.tag(),
            text.join("; ")
        ),
        "pick versions the policy accepts (README, \"etcd version policy\"), or pass --allow-unsafe-versions (ETCDIMG_ALLOW_UNSAFE_VERSIONS=1) to release them anyway; the release report records them",
    ))
}

/// Refuses a release of binaries whose Go the Go policy has findings against (read from the
/// build records' Go build info), unless the user allowed it (`--allow-unsupported-go`); an
/// allowed one is said on stderr and recorded in the release report.
pub(crate) fn check_go_policy<'a>(
    settings: &Settings,
    options: &PushOptions,
    images: impl IntoIterator<Item = &'a ArchImage>,
    reporter: &dyn Reporter,
) -> Result<()> {
    let images: Vec<&ArchImage> = images.into_iter().collect();
    let groups = crate::gopolicy::findings(
        &settings.go_policy,
        images.iter().filter_map(|i| {
            i.record
                .as_ref()
                .map(|r| (i.arch.name(), r.provenance.binaries.as_slice()))
        }),
    );
    if groups.is_empty() {
        return Ok(());
    }
    if options.allow_unsupported_go {
        for g in &groups {
            reporter.warn(&format!(
                "{g}; releasing it anyway (--allow-unsupported-go)"
            ));
        }
        return Ok(());
    }
    let text: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    anyhow::bail!(crate::UserError::new(
        format!(
            "refusing to release {}: {}; nothing was pushed",
            settings.tag(),
            text.join("; ")
        ),
        crate::gopolicy::HINT,
    ))
}
