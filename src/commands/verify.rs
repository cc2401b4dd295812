//! `etcdimg verify`: what `cosign verify --key` and `cosign verify-attestation` check, on a
//! pushed release, without cosign: the index and every manifest it lists carry a signature
//! that verifies with the public key and names that very digest; the index carries a SLSA
//! provenance and an SPDX attestation whose envelopes verify and whose statements name the
//! index. Reads only (HEAD/GET).

use anyhow::Result;
use p256::ecdsa::VerifyingKey;
use serde::Serialize;
use serde_json::Value;

use crate::publish::layout::{target, PushOptions};
use crate::registry::push::Pusher;
use crate::report::Reporter;
use crate::settings::Settings;
use crate::sign;

/// Attestations and signatures are small; anything bigger is refused, not read.
const BLOB_LIMIT: usize = 16 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `signature of the index`, `signature of linux/arm64`, `provenance`, `SPDX`.
    pub what: String,
    /// `registry/repository@digest`.
    pub subject: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutcome {
    pub reference: String,
    pub digest: String,
    pub checks: Vec<Check>,
}

/// Checks the release at `reference` (default: the index push-manifest pushes).
pub async fn verify(
    settings: &Settings,
    options: &PushOptions,
    reference: Option<&str>,
    key_source: &str,
    reporter: &dyn Reporter,
) -> Result<VerifyOutcome> {
    let key = sign::key::verifying_key(key_source).map_err(|e| {
        let hint = e.hint();
        anyhow::Error::new(crate::UserError::new(e.to_string(), hint))
    })?;
    let reference = reference.map(str::to_string).unwrap_or_else(|| {
        format!(
            "{}/{}:{}",
            settings.push_registry,
            settings.image_name,
            settings.tag()
        )
    });
    let t = target(&reference)?;
    let pusher = crate::publish::plan::read_only(options, &t.registry)?;
    let repo = &t.repository;
    let name = format!("{}/{repo}", t.registry);
    let Some((media_type, index)) = pusher.get_manifest(repo, &t.tag).await? else {
        anyhow::bail!(crate::UserError::new(
            format!("{reference} does not exist"),
            "check the reference (and --push-registry / REVISION): verify reads the pushed release",
        ));
    };
    let digest = format!("sha256:{}", crate::fetch::cache::sha256_hex(&index));
    reporter.status(
        "Verifying",
        &format!("{reference} ({digest}, {media_type})"),
    );
    let mut subjects = vec![(digest.clone(), "the index".to_string())];
    let parsed: Value = serde_json::from_slice(&index).unwrap_or(Value::Null);
    for m in parsed["manifests"].as_array().into_iter().flatten() {
        let (Some(d), p) = (m["digest"].as_str(), &m["platform"]) else {
            continue;
        };
        let mut platform = format!(
            "{}/{}",
            p["os"].as_str().unwrap_or("?"),
            p["architecture"].as_str().unwrap_or("?")
        );
        if let Some(v) = p["variant"].as_str() {
            platform = format!("{platform}/{v}");
        }
        subjects.push((d.to_string(), platform));
    }
    let mut checks = Vec::new();
    for (d, what) in &subjects {
        let (ok, detail) = check_signature(&pusher, repo, d, &key).await?;
        checks.push(Check {
            what: format!("signature of {what}"),
            subject: format!("{name}@{d}"),
            ok,
            detail,
        });
    }
    for (predicate, what) in [
        (sign::SLSA_PROVENANCE_V1, "SLSA provenance"),
        (sign::SPDX_DOCUMENT, "SPDX"),
    ] {
        let (ok, detail) = check_attestation(&pusher, repo, &digest, predicate, &key).await?;
        checks.push(Check {
            what: format!("{what} attestation of the index"),
            subject: format!("{name}@{digest}"),
            ok,
            detail,
        });
    }
    Ok(VerifyOutcome {
        reference,
        digest,
        checks,
    })
}

/// The layers of the cosign manifest tagged `sha256-<hex>.<suffix>`, if there is one.
async fn cosign_layers(
    pusher: &Pusher,
    repo: &str,
    digest: &str,
    suffix: &str,
) -> Result<Option<Vec<Value>>> {
    let tag = sign::tag(digest, suffix);
    Ok(pusher.get_manifest(repo, &tag).await?.map(|(_, bytes)| {
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["layers"].as_array().cloned())
            .unwrap_or_default()
    }))
}

/// Is `digest` signed with `key`? A signature counts when it verifies over its payload and
/// the payload names `digest` (cosign's claim check).
async fn check_signature(
    pusher: &Pusher,
    repo: &str,
    digest: &str,
    key: &VerifyingKey,
) -> Result<(bool, String)> {
    let Some(layers) = cosign_layers(pusher, repo, digest, "sig").await? else {
        return Ok((
            false,
            format!(
                "no signatures ({} does not exist)",
                sign::tag(digest, "sig")
            ),
        ));
    };
    let mut seen = Vec::new();
    for l in &layers {
        let (Some(d), Some(sig)) = (
            l["digest"].as_str(),
            l["annotations"][sign::SIGNATURE_ANNOTATION].as_str(),
        ) else {
            continue;
        };
        let Some(payload) = pusher.get_small_blob(repo, d, BLOB_LIMIT).await? else {
            seen.push(format!("{d}: its payload is missing"));
            continue;
        };
        if !sign::verify(key, &payload, sig) {
            seen.push("a signature made with another key".to_string());
            continue;
        }
        let p: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        let claimed = p["critical"]["image"]["docker-manifest-digest"]
            .as_str()
            .unwrap_or("");
        if claimed != digest {
            seen.push(format!("a valid signature of another manifest ({claimed})"));
            continue;
        }
        let named = p["critical"]["identity"]["docker-reference"]
            .as_str()
            .unwrap_or("");
        return Ok((true, format!("signed for {named}")));
    }
    Ok((
        false,
        if seen.is_empty() {
            "no signature layers".into()
        } else {
            format!("no signature verifies: {}", seen.join("; "))
        },
    ))
}

/// Does the index carry a `predicate_type` attestation signed with `key` about itself?
async fn check_attestation(
    pusher: &Pusher,
    repo: &str,
    digest: &str,
    predicate_type: &str,
    key: &VerifyingKey,
) -> Result<(bool, String)> {
    let Some(layers) = cosign_layers(pusher, repo, digest, "att").await? else {
        return Ok((
            false,
            format!(
                "no attestations ({} does not exist)",
                sign::tag(digest, "att")
            ),
        ));
    };
    let mut seen = Vec::new();
    for l in &layers {
        if l["annotations"]["predicateType"] != predicate_type {
            continue;
        }
        let Some(d) = l["digest"].as_str() else {
            continue;
        };
        let Some(envelope) = pusher.get_small_blob(repo, d, BLOB_LIMIT).await? else {
            seen.push(format!("{d}: its envelope is missing"));
            continue;
        };
        match sign::open_envelope(key, &envelope) {
            Err(e) => seen.push(e),
            Ok(st) if st["predicateType"] != predicate_type => seen.push(format!(
                "the statement's predicateType is {}",
                st["predicateType"]
            )),
            Ok(st) if !sign::statement_names(&st, digest) => seen.push(format!(
                "the statement's subject is {}, not the index",
                st["subject"]
            )),
            Ok(st) => {
                let builder = st["predicate"]["runDetails"]["builder"]["id"]
                    .as_str()
                    .map(|b| format!(", built by {b}"))
                    .unwrap_or_default();
                return Ok((true, format!("signed statement about the index{builder}")));
            }
        }
    }
    Ok((
        false,
        if seen.is_empty() {
            format!("no {predicate_type} attestation")
        } else {
            format!("none verifies: {}", seen.join("; "))
        },
    ))
}

/// One line per check.
pub fn render(outcome: &VerifyOutcome) -> String {
    let mut out = format!("{} ({})\n", outcome.reference, outcome.digest);
    for c in &outcome.checks {
        out.push_str(&format!(
            "  {}  {:<40} {}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.what,
            c.detail
        ));
    }
    out
}
