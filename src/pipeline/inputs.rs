//! The inputs of a build besides etcd: the preflight of a run (every offline check before the
//! first request or compile), stage 1 (the base image for the arch) and stage 4 (the static
//! migrate binary, migrate-if-needed.sh and the version policy as the last layer).
//!
//! Guarantees: a configuration error stops the run before anything is fetched or compiled;
//! the base's platform manifest, config and layers are in the cache, verified by digest; the
//! migrate layer is built after the etcd checks, so a bad release leaves nothing in the cache.

use anyhow::{Context, Result};

use crate::fetch::{self};
use crate::gobuild;
use crate::migrate_build;
use crate::platform::Arch;
use crate::registry::{self};
use crate::settings::Settings;

use super::context::*;
use super::layers::*;

/// What the builds of a run need that can be checked offline, checked before any download or
/// compile (a bad value fails in milliseconds, naming its flag or images.toml key), and the Go
/// builder, detected once per run.
pub struct Preflight {
    /// For the arches built from source (None when every arch uses release tarballs).
    pub builder: Option<gobuild::Builder>,
}

/// Checks the inputs of building `arches`; see [`Preflight`]. The version policy is not its
/// business: the build verbs warn ([`warn_policy`]), push and plan refuse or allow first.
pub fn preflight(
    settings: &Settings,
    arches: &[Arch],
    options: &BuildOptions,
) -> Result<Preflight> {
    migrate_build::check_inputs(
        &settings.migrate_source_dir,
        options.migrate_binary.as_deref(),
        settings.migrate_auditable,
    )?;
    for arch in arches {
        let base = settings.base_for(*arch);
        match registry::parse_base(base).with_context(|| {
            format!("the base image for {arch} (images.toml `image.base`, BASEIMAGE)")
        })? {
            registry::BaseRef::Layout { path, .. } if !path.join("oci-layout").is_file() => {
                anyhow::bail!(crate::UserError::new(
                    format!(
                        "the base image `{base}` for {arch} names `{}`, which is not an OCI layout (no oci-layout file)",
                        path.display()
                    ),
                    "point image.base (or BASEIMAGE) at an OCI layout directory, e.g. one written by `skopeo copy ... oci:DIR:TAG`",
                ));
            }
            _ => {}
        }
        for (registry, key) in [
            (&settings.registry, "image.registry (REGISTRY)"),
            (
                &settings.push_registry,
                "image.push_registry (PUSH_REGISTRY)",
            ),
        ] {
            let image = settings.arch_image(registry, *arch);
            registry::reference::parse(&image).map_err(|message| {
                crate::UserError::new(
                    format!("`{image}` is not an image reference: {message}"),
                    format!("check {key} and image.name in images.toml"),
                )
            })?;
        }
    }
    let builder = if arches.iter().any(|a| settings.source_for(*a).compiles()) {
        Some(
            gobuild::Builder::detect(
                settings.gobuild.builder,
                &settings.gobuild.golang_version,
                settings.gobuild.go_toolchain.as_deref(),
            )
            .context("choosing how to compile etcd from source")?,
        )
    } else {
        None
    };
    Ok(Preflight { builder })
}

/// Stage 1, base: the base image's platform manifest for the arch, its config and layers in
/// the cache (verified by digest).
pub(crate) async fn pull_base(plan: &BuildPlan<'_>) -> Result<registry::BaseImage> {
    let base_ref = plan.settings.base_for(plan.arch).to_string();
    registry::pull_base(
        &base_ref,
        plan.arch,
        plan.cache,
        &plan.options.registry,
        &*plan.reporter,
    )
    .await
    .with_context(|| format!("resolving the base image `{base_ref}` for {}", plan.arch))
}

/// Stage 4, migrate: the static migrate binary for the arch (after the etcd checks, so that a
/// bad release leaves nothing in the cache), with migrate-if-needed.sh and the effective version
/// policy, as the last layer. Returns the binary's sha256 and its source tree's.
pub(crate) async fn migrate_layer(
    plan: &BuildPlan<'_>,
    set: &mut LayerSet,
) -> Result<(String, String)> {
    let source_dir = plan.settings.migrate_source_dir.clone();
    let auditable = plan.settings.migrate_auditable;
    let prebuilt = plan.options.migrate_binary.clone();
    let (cache, reporter, arch) = (plan.cache.clone(), plan.reporter.clone(), plan.arch);
    let migrate = tokio::task::spawn_blocking(move || {
        migrate_build::migrate_binary(
            &source_dir,
            prebuilt.as_deref(),
            auditable,
            arch,
            &cache,
            &*reporter,
        )
    })
    .await??;
    let script_digest = fetch::cache::sha256_hex(migrate_build::WRAPPER_SCRIPT.as_bytes());
    let policy_json = plan.settings.policy.to_json().into_bytes();
    let key = layer_key(&[
        "migrate",
        &migrate.sha256,
        &script_digest,
        &fetch::cache::sha256_hex(&policy_json),
        &format!("{:o}", plan.mode),
        &plan.mtime.to_string(),
    ]);
    let content = "migrate, migrate-if-needed.sh".to_string();
    match plan.reuse(&key) {
        Some(d) => set.reused(d, content),
        None => set.queue(LayerJob {
            content,
            key,
            make: LayerInput::Migrate {
                binary: migrate.bytes,
                policy: policy_json,
            },
        }),
    }
    Ok((migrate.sha256, migrate.source_sha256))
}
