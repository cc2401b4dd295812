//! etcdimg: build, verify and push Kubernetes etcd container images without a Docker daemon.
//! See docs/ARCHITECTURE.md for the map.

// Config errors carry file, line, key, message and hint by design; they are returned once per
// run, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod binary;
pub mod buildinfo;
pub mod cli;
pub mod commands;
pub mod config;
pub mod containerd;
pub mod fetch;
pub mod gobuild;
pub mod gopolicy;
pub mod lockfile;
pub mod migrate_build;
pub mod oci;
pub mod pipeline;
pub mod platform;
pub mod pod;
pub mod podcheck;
pub mod publish;
pub mod registry;
pub mod release;
pub mod report;
pub mod scan;
pub mod settings;
pub mod sign;

/// An error whose message and hint are meant for the user as they are.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub hint: String,
}

impl UserError {
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> UserError {
        UserError {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// The hint for the first error in `err`'s chain that has one.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    // A UserError attached with `.context(...)` is found by anyhow's downcast, not the chain's.
    if let Some(e) = err.downcast_ref::<UserError>() {
        return Some(e.hint.clone());
    }
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<config::ConfigError>() {
            if let Some(h) = &e.hint {
                return Some(h.clone());
            }
        }
        if let Some(e) = cause.downcast_ref::<fetch::FetchError>() {
            if let Some(h) = e.hint() {
                return Some(h);
            }
        }
        if let Some(e) = cause.downcast_ref::<registry::RegistryError>() {
            if let Some(h) = e.hint() {
                return Some(h);
            }
        }
        if let Some(e) = cause.downcast_ref::<gobuild::GoBuildError>() {
            if let Some(h) = e.hint() {
                return Some(h);
            }
        }
        if let Some(e) = cause.downcast_ref::<migrate_build::MigrateBuildError>() {
            if let Some(h) = e.hint() {
                return Some(h);
            }
        }
        if let Some(e) = cause.downcast_ref::<UserError>() {
            return Some(e.hint.clone());
        }
        if cause
            .downcast_ref::<fetch::extract::ExtractError>()
            .is_some()
        {
            return Some(
                "the release tarball is not what an etcd release looks like; check the mirror"
                    .into(),
            );
        }
        if cause.downcast_ref::<binary::BinaryError>().is_some() {
            return Some("the release holds binaries for another arch or version; check the mirror and the pins".into());
        }
    }
    None
}

/// Exit code 2 for usage and configuration errors, 1 for everything else.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    if err
        .chain()
        .any(|c| c.downcast_ref::<config::ConfigError>().is_some())
    {
        2
    } else {
        1
    }
}
