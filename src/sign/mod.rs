//! Signatures and attestations in cosign's formats, so that `cosign verify` and
//! `cosign verify-attestation` accept what etcdimg signs, and `etcdimg verify` checks the same
//! without cosign. Pure: bytes in, bytes out; the registry side is `commands::sign`.
//!
//! - **Signature** (cosign "simple signing"): the payload names the image's repository and
//!   manifest digest; ECDSA P-256 over its SHA-256, DER, base64, in the layer annotation
//!   `dev.cosignproject.cosign/signature`. Stored as a layer of the manifest tagged
//!   `sha256-<hex>.sig` in the image's repository (cosign's tag scheme), one layer per
//!   signature.
//! - **Attestation**: an in-toto statement (subject = the image digest) in a DSSE envelope,
//!   signed over DSSE's pre-authentication encoding; one layer per statement in the manifest
//!   tagged `sha256-<hex>.att`, with the `predicateType` annotation cosign filters on.
//!
//! Signing is deterministic (RFC 6979): signing the same thing again gives the same layer, so
//! a second `sign` adds nothing.

pub mod key;
pub mod provenance;

use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const INTOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// cosign's `--type slsaprovenance1`.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// cosign's `--type spdxjson`.
pub const SPDX_DOCUMENT: &str = "https://spdx.dev/Document";
const PREDICATE_ANNOTATION: &str = "predicateType";

/// The cosign tag of what is attached to `digest`: `sha256-<hex>.sig` or `.att`.
pub fn tag(digest: &str, suffix: &str) -> String {
    format!("{}.{suffix}", digest.replacen(':', "-", 1))
}

/// The simple-signing payload for the image `repository@digest`.
pub fn simple_signing_payload(repository: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": repository },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("json")
}

/// ECDSA P-256 over SHA-256 of `message`, DER, base64.
pub fn sign(key: &SigningKey, message: &[u8]) -> String {
    let sig: DerSignature = key.sign(message);
    B64.encode(sig.as_bytes())
}

/// Does `b64` verify `message` under `key`?
pub fn verify(key: &VerifyingKey, message: &[u8], b64: &str) -> bool {
    let Ok(der) = B64.decode(b64) else {
        return false;
    };
    let Ok(sig) = p256::ecdsa::Signature::from_der(&der) else {
        return false;
    };
    key.verify(message, &sig).is_ok()
}

/// DSSE's pre-authentication encoding: what the envelope's signatures sign.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// An in-toto statement v1 about `subject` (`name`, `sha256:<hex>`).
pub fn statement(name: &str, digest: &str, predicate_type: &str, predicate: Value) -> Vec<u8> {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::to_vec(&json!({
        "_type": INTOTO_STATEMENT_V1,
        "subject": [{ "name": name, "digest": { "sha256": hex } }],
        "predicateType": predicate_type,
        "predicate": predicate,
    }))
    .expect("json")
}

/// The DSSE envelope of `statement`, signed with `key`.
pub fn envelope(key: &SigningKey, statement: &[u8]) -> Vec<u8> {
    let sig = sign(key, &pae(INTOTO_PAYLOAD_TYPE, statement));
    serde_json::to_vec(&json!({
        "payloadType": INTOTO_PAYLOAD_TYPE,
        "payload": B64.encode(statement),
        "signatures": [{ "keyid": "", "sig": sig }],
    }))
    .expect("json")
}

/// The statement inside `envelope` if one of its signatures verifies under `key`.
pub fn open_envelope(key: &VerifyingKey, envelope: &[u8]) -> Result<Value, String> {
    let env: Value =
        serde_json::from_slice(envelope).map_err(|e| format!("not a DSSE envelope: {e}"))?;
    if env["payloadType"] != INTOTO_PAYLOAD_TYPE {
        return Err(format!("payloadType {} is not in-toto", env["payloadType"]));
    }
    let payload = B64
        .decode(env["payload"].as_str().unwrap_or(""))
        .map_err(|_| "the payload is not base64".to_string())?;
    let pae = pae(INTOTO_PAYLOAD_TYPE, &payload);
    let signed = env["signatures"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["sig"].as_str().is_some_and(|sig| verify(key, &pae, sig)));
    if !signed {
        return Err("no signature of the envelope verifies with the key".into());
    }
    serde_json::from_slice(&payload).map_err(|e| format!("the statement is not JSON: {e}"))
}

/// Does `statement` name `digest` among its subjects (what cosign's claim check requires)?
pub fn statement_names(statement: &Value, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["digest"]["sha256"] == hex)
}

/// One layer of a cosign signature or attestation manifest: its bytes and annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub annotations: serde_json::Map<String, Value>,
}

impl Layer {
    pub fn digest(&self) -> String {
        format!("sha256:{}", crate::fetch::cache::sha256_hex(&self.bytes))
    }

    /// The signature layer of `payload`.
    pub fn signature(payload: Vec<u8>, b64: String) -> Layer {
        let mut annotations = serde_json::Map::new();
        annotations.insert(SIGNATURE_ANNOTATION.into(), json!(b64));
        Layer {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
            bytes: payload,
            annotations,
        }
    }

    /// The attestation layer of a signed `envelope` of a `predicate_type` statement.
    pub fn attestation(envelope: Vec<u8>, predicate_type: &str) -> Layer {
        let mut annotations = serde_json::Map::new();
        annotations.insert(SIGNATURE_ANNOTATION.into(), json!(""));
        annotations.insert(PREDICATE_ANNOTATION.into(), json!(predicate_type));
        Layer {
            media_type: DSSE_MEDIA_TYPE.into(),
            bytes: envelope,
            annotations,
        }
    }
}

/// A cosign manifest's descriptor of a layer already in the registry (kept when adding ours).
pub fn layer_descriptor(layer: &Layer) -> Value {
    json!({
        "mediaType": layer.media_type,
        "size": layer.bytes.len(),
        "digest": layer.digest(),
        "annotations": layer.annotations,
    })
}

/// The manifest (and its config) cosign would write for `layers` (existing descriptors first,
/// kept as they are): OCI, or Docker schema 2 for a Docker-format release. `subject` (the
/// signed manifest's descriptor, OCI only) makes a registry with the referrers API (OCI
/// distribution 1.1) list it as a referrer as well. `None` when every new layer is already
/// there.
pub fn manifest(
    existing: &[Value],
    new: &[Layer],
    docker: bool,
    subject: Option<Value>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut layers: Vec<Value> = existing.to_vec();
    let mut added = false;
    for l in new {
        let d = layer_descriptor(l);
        let present = layers.iter().any(|e| {
            e["digest"] == d["digest"]
                && e["annotations"].get(SIGNATURE_ANNOTATION)
                    == d["annotations"].get(SIGNATURE_ANNOTATION)
        });
        if !present {
            layers.push(d);
            added = true;
        }
    }
    if !added {
        return None;
    }
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    // What cosign (go-containerregistry's empty image plus layers) writes as the config.
    let config = crate::oci::canonical_json(&json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": layers.iter().map(|_| json!({"created": "0001-01-01T00:00:00Z"})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": {},
    }));
    let (manifest_type, config_type) = if docker {
        (
            crate::oci::index::DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            crate::oci::index::OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {
            "mediaType": config_type,
            "size": config.len(),
            "digest": format!("sha256:{}", crate::fetch::cache::sha256_hex(&config)),
        },
        "layers": layers,
    });
    if let Some(subject) = subject.filter(|_| !docker) {
        manifest["subject"] = subject;
    }
    Some((crate::oci::canonical_json(&manifest), config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        let k = key();
        let payload = simple_signing_payload("r.example/etcd", "sha256:ab");
        let sig = sign(&k, &payload);
        assert!(verify(k.verifying_key(), &payload, &sig));
        assert_eq!(sig, sign(&k, &payload), "RFC 6979: deterministic");
        let mut other = payload.clone();
        other[10] ^= 1;
        assert!(!verify(k.verifying_key(), &other, &sig));
        let other_key = SigningKey::from_slice(&[9u8; 32]).unwrap();
        assert!(!verify(other_key.verifying_key(), &payload, &sig));
    }

    #[test]
    fn envelopes_open_only_with_their_key_and_name_their_subject() {
        let k = key();
        let st = statement(
            "r.example/etcd",
            "sha256:abcd",
            SLSA_PROVENANCE_V1,
            json!({}),
        );
        let env = envelope(&k, &st);
        let opened = open_envelope(k.verifying_key(), &env).unwrap();
        assert!(statement_names(&opened, "sha256:abcd"));
        assert!(!statement_names(&opened, "sha256:abce"));
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        assert!(open_envelope(other.verifying_key(), &env).is_err());
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab");
    }

    #[test]
    fn a_second_signature_of_the_same_is_no_change() {
        let k = key();
        let payload = simple_signing_payload("r.example/etcd", "sha256:ab");
        let layer = Layer::signature(payload.clone(), sign(&k, &payload));
        let (m, _) = manifest(&[], std::slice::from_ref(&layer), false, None).unwrap();
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert!(v.get("subject").is_none());
        let existing = v["layers"].as_array().unwrap().clone();
        assert!(manifest(&existing, std::slice::from_ref(&layer), false, None).is_none());
        // With the referrers API: the subject is named (OCI only).
        let subject = json!({"mediaType": "m", "digest": "sha256:ab", "size": 1});
        let (m, _) = manifest(
            &[],
            std::slice::from_ref(&layer),
            false,
            Some(subject.clone()),
        )
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&m).unwrap()["subject"],
            subject
        );
        let (m, _) = manifest(&[], &[layer], true, Some(subject)).unwrap();
        assert!(serde_json::from_slice::<Value>(&m)
            .unwrap()
            .get("subject")
            .is_none());
    }
}
