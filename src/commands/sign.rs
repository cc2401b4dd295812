//! `etcdimg sign` (and `--sign` on `push-manifest` / `all-push`): signs a pushed release in
//! cosign's formats (`crate::sign`), so that `cosign verify --key` and
//! `cosign verify-attestation` accept it.
//!
//! 1. read: the index and per-arch manifests as pushed (`publish::layout::plan_index`), each
//!    confirmed in the registry
//! 2. sign: a simple-signing signature of the index and of each per-arch manifest, in the
//!    index's repository (where the index references them), under `sha256-<hex>.sig`
//! 3. attest: SLSA provenance v1 and the SPDX document as in-toto statements about the index,
//!    in DSSE envelopes, under `sha256-<hex>.att`
//!
//! Each tag is a list that grows (cosign appends too): the layers others put there are kept,
//! and a signature already there is not added twice (signing is deterministic), so signing
//! again changes nothing. Manifests take the release's format (OCI, or Docker schema 2 with
//! `--manifest-format docker`). The key is never printed.

use anyhow::Result;
use p256::ecdsa::SigningKey;
use serde::Serialize;
use serde_json::{json, Value};

use crate::oci::index::DOCKER_LIST;
use crate::publish::attach::cosign_tag;
use crate::publish::layout::{plan_index, IndexPlan, PushOptions};
use crate::release::ReleaseReport;
use crate::report::Reporter;
use crate::settings::Settings;
use crate::sign::{self, provenance, Layer};

/// How to sign.
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// A path or `env://VAR` (cosign's forms).
    pub key: String,
    /// COSIGN_PASSWORD, for an encrypted key.
    pub password: Option<String>,
    /// `builder.id` of the provenance (default: the CI workflow, else this host).
    pub builder_id: Option<String>,
}

/// One signature or attestation tag.
#[derive(Debug, Clone, Serialize)]
pub struct Attached {
    /// `registry/repository@digest` it is about.
    pub subject: String,
    /// `registry/repository:sha256-<hex>.sig` (or `.att`).
    pub tag: String,
    /// What was added: `signature`, or the predicate types.
    pub what: Vec<String>,
    /// False when everything was already there.
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SignReport {
    pub signatures: Vec<Attached>,
    pub attestations: Vec<Attached>,
}

/// The key, or an error that says where it came from and what to do (never its bytes).
pub fn load_key(options: &SignOptions) -> Result<SigningKey> {
    sign::key::signing_key(&options.key, options.password.as_deref()).map_err(|e| {
        let hint = e.hint();
        anyhow::Error::new(crate::UserError::new(e.to_string(), hint))
    })
}

/// `etcdimg sign`: the release in the layout, as pushed, signed and attested.
pub async fn sign(
    settings: &Settings,
    options: &PushOptions,
    sign_options: &SignOptions,
    reporter: &dyn Reporter,
) -> Result<SignReport> {
    let key = load_key(sign_options)?;
    let p = plan_index(settings, options)?;
    let report = crate::publish::report::assemble(settings, &p)?;
    sign_release(settings, &p, &key, &report, sign_options, reporter).await
}

/// What is signed: the index and every per-arch manifest, by digest, in the index's
/// repository: `(digest, what)`.
pub(crate) fn subjects(p: &IndexPlan) -> Vec<(String, String)> {
    descriptors(p)
        .into_iter()
        .map(|(digest, what, _)| (digest, what))
        .collect()
}

/// [`subjects`] with each one's OCI descriptor (for `subject` under the referrers API).
fn descriptors(p: &IndexPlan) -> Vec<(String, String, Value)> {
    let descriptor = |media_type: &str, digest: &str, size: usize| json!({ "mediaType": media_type, "digest": digest, "size": size });
    let mut out = vec![(
        p.built.digest.clone(),
        "index".to_string(),
        descriptor(&p.built.media_type, &p.built.digest, p.built.bytes.len()),
    )];
    out.extend(p.images.iter().map(|i| {
        (
            i.manifest.digest.clone(),
            format!("{} image", i.arch),
            descriptor(
                &i.manifest.media_type,
                &i.manifest.digest,
                i.manifest.bytes.len(),
            ),
        )
    }));
    out
}

/// Signs and attests the release of `p` (already pushed).
pub(crate) async fn sign_release(
    settings: &Settings,
    p: &IndexPlan,
    key: &SigningKey,
    report: &ReleaseReport,
    options: &SignOptions,
    reporter: &dyn Reporter,
) -> Result<SignReport> {
    let docker = p.built.media_type == DOCKER_LIST;
    let (registry, repo) = (&p.target.registry, &p.target.repository);
    let name = format!("{registry}/{repo}");
    // OCI 1.1 referrers where the registry offers them (the manifests name their subject, and
    // the registry lists them); cosign's tags always, which is where `cosign verify` looks.
    let referrers = !docker
        && matches!(
            p.pusher.referrers(repo, &p.built.digest).await?,
            crate::registry::push::Referrers::Listed(_)
        );
    let mut signatures = Vec::new();
    for (digest, what, descriptor) in descriptors(p) {
        let subject = referrers.then_some(descriptor);
        if p.pusher.manifest_digest(repo, &digest).await?.is_none() {
            anyhow::bail!(crate::UserError::new(
                format!("the {what} {digest} is not in {name}"),
                "push the release first (push-manifest or all-push), or pass --sign to them",
            ));
        }
        let payload = sign::simple_signing_payload(&name, &digest);
        let layer = Layer::signature(payload.clone(), sign::sign(key, &payload));
        let changed = cosign_tag(p, &digest, "sig", &[layer], docker, subject).await?;
        reporter.status(
            if changed { "Signed" } else { "Unchanged" },
            &format!("{what} {name}@{digest}"),
        );
        signatures.push(Attached {
            subject: format!("{name}@{digest}"),
            tag: format!("{name}:{}", sign::tag(&digest, "sig")),
            what: vec!["signature".into()],
            changed,
        });
    }
    let attestations = vec![attest(settings, p, key, report, options, reporter, referrers).await?];
    Ok(SignReport {
        signatures,
        attestations,
    })
}

/// Attests the index of `p`: SLSA provenance v1 and the SPDX document, each an in-toto
/// statement in a DSSE envelope, under the cosign tag `sha256-<hex>.att`.
async fn attest(
    settings: &Settings,
    p: &IndexPlan,
    key: &SigningKey,
    report: &ReleaseReport,
    options: &SignOptions,
    reporter: &dyn Reporter,
    referrers: bool,
) -> Result<Attached> {
    let name = format!("{}/{}", p.target.registry, p.target.repository);
    let docker = p.built.media_type == DOCKER_LIST;
    let index_descriptor = descriptors(p).into_iter().next().map(|(_, _, d)| d);
    let run = run_details(settings, options.builder_id.as_deref());
    let digest = &p.built.digest;
    let statements = [
        (
            sign::SLSA_PROVENANCE_V1,
            provenance::predicate(report, &run),
        ),
        (sign::SPDX_DOCUMENT, crate::release::spdx(report)),
    ];
    let layers: Vec<Layer> = statements
        .iter()
        .map(|(kind, predicate)| {
            let st = sign::statement(&name, digest, kind, predicate.clone());
            Layer::attestation(sign::envelope(key, &st), kind)
        })
        .collect();
    let changed = cosign_tag(
        p,
        digest,
        "att",
        &layers,
        docker,
        index_descriptor.filter(|_| referrers),
    )
    .await?;
    reporter.status(
        if changed { "Attested" } else { "Unchanged" },
        &format!("SLSA provenance and SPDX for {name}@{digest}"),
    );
    Ok(Attached {
        subject: format!("{name}@{digest}"),
        tag: format!("{name}:{}", sign::tag(digest, "att")),
        what: statements.iter().map(|(k, _)| k.to_string()).collect(),
        changed,
    })
}

/// What the provenance says about this run: images.toml's digest, the resolved settings,
/// the builder and the invocation (no time stamps: signing again gives the same statement).
pub(crate) fn run_details(settings: &Settings, builder_id: Option<&str>) -> provenance::Run {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config = std::fs::read(&settings.config_path).unwrap_or_default();
    let sources: serde_json::Map<String, Value> = settings
        .arches
        .iter()
        .map(|a| {
            (
                a.to_string(),
                json!(format!("{:?}", settings.source_for(*a)).to_lowercase()),
            )
        })
        .collect();
    provenance::Run {
        builder_id: provenance::builder_id(builder_id, &env),
        config_path: settings.config_path.display().to_string(),
        config_sha256: crate::fetch::cache::sha256_hex(&config),
        settings: json!({
            "tag": settings.tag(),
            "latest": settings.latest.to_string(),
            "bundled": settings.bundled.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            "revision": settings.revision,
            "arches": settings.arches.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "sources": sources,
            "go_toolchain": settings.gobuild.go_toolchain,
            "strip": settings.gobuild.strip,
            "source_date_epoch": settings.source_date_epoch,
            "binary_mode": format!("{:04o}", settings.binary_mode),
        }),
        invocation: json!({
            "github_workflow_ref": env("GITHUB_WORKFLOW_REF"),
            "github_sha": env("GITHUB_SHA"),
        }),
        invocation_id: match (env("GITHUB_RUN_ID"), env("GITHUB_RUN_ATTEMPT")) {
            (Some(id), Some(attempt)) => format!("{id}/{attempt}"),
            (Some(id), None) => id,
            _ => String::new(),
        },
    }
}
