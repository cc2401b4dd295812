//! Signing keys in the forms cosign reads and writes: `cosign generate-key-pair`'s encrypted
//! private key (`ENCRYPTED SIGSTORE PRIVATE KEY`, or the older `ENCRYPTED COSIGN PRIVATE KEY`:
//! scrypt + NaCl secretbox over PKCS#8, go-securesystemslib's `encrypted` format), an
//! unencrypted PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) ECDSA P-256 key, and the
//! public key as PKIX (`PUBLIC KEY`).
//!
//! A key comes from a file or, as cosign writes it, `env://VAR`; the password of an encrypted
//! one from `COSIGN_PASSWORD` (cosign's variable). Neither is ever printed: errors name where
//! the key came from, never what it holds.

use base64::Engine;
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use serde::Deserialize;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the key {source_name}: {message}")]
    Read {
        source_name: String,
        message: String,
    },
    #[error("the key {source_name} is encrypted and COSIGN_PASSWORD is not set")]
    NoPassword { source_name: String },
    #[error("the key {source_name} does not decrypt with COSIGN_PASSWORD (wrong password, or a damaged key)")]
    Decrypt { source_name: String },
    #[error("the key {source_name} is not an ECDSA P-256 key in a form cosign writes: {message}")]
    Format {
        source_name: String,
        message: String,
    },
}

impl KeyError {
    pub fn hint(&self) -> &'static str {
        match self {
            KeyError::NoPassword { .. } | KeyError::Decrypt { .. } => "set COSIGN_PASSWORD to the key's password (empty for a key made with an empty one)",
            _ => "pass a key made by `cosign generate-key-pair` (or an ECDSA P-256 PKCS#8 PEM) as a file or env://VAR; verification takes its .pub",
        }
    }
}

/// Where a key comes from: a path, or `env://VAR`.
pub fn read_source(source: &str) -> Result<Vec<u8>, KeyError> {
    let read = |message: String| KeyError::Read {
        source_name: shown(source),
        message,
    };
    match source.strip_prefix("env://") {
        Some(var) => std::env::var(var)
            .map(String::into_bytes)
            .map_err(|_| read(format!("the environment variable {var} is not set"))),
        None => std::fs::read(source).map_err(|e| read(e.to_string())),
    }
}

/// How a key source is named in messages: the path or the variable, never the contents.
fn shown(source: &str) -> String {
    format!("`{source}`")
}

/// The first PEM block of `text`: its label and decoded body.
fn pem_block(text: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(text).ok()?;
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end = rest.find(&format!("-----END {label}-----"))?;
    let body: String = rest[body_start..end]
        .lines()
        .filter(|l| !l.contains(':'))
        .collect::<Vec<_>>()
        .concat();
    Some((label, B64.decode(body.trim()).ok()?))
}

#[derive(Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: String,
}

#[derive(Deserialize)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// Decrypts go-securesystemslib's `encrypted` JSON with `password`: the PKCS#8 DER inside.
fn decrypt(json: &[u8], password: &[u8], source_name: &str) -> Result<Vec<u8>, KeyError> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let format = |message: &str| KeyError::Format {
        source_name: source_name.to_string(),
        message: message.to_string(),
    };
    let e: Encrypted =
        serde_json::from_slice(json).map_err(|_| format("unreadable encrypted key"))?;
    if e.kdf.name != "scrypt" || e.cipher.name != "nacl/secretbox" {
        return Err(format("an encryption other than scrypt + nacl/secretbox"));
    }
    // The three parameter sets go-securesystemslib writes (N = 2^15, 2^16, 2^17; r 8; p 1).
    if ![32768, 65536, 131072].contains(&e.kdf.params.n)
        || e.kdf.params.r != 8
        || e.kdf.params.p != 1
    {
        return Err(format("unsupported scrypt parameters"));
    }
    let log_n = e.kdf.params.n.trailing_zeros() as u8;
    let params = scrypt::Params::new(log_n, e.kdf.params.r, e.kdf.params.p, 32)
        .map_err(|_| format("unsupported scrypt parameters"))?;
    let salt = B64.decode(&e.kdf.salt).map_err(|_| format("bad salt"))?;
    let nonce = B64
        .decode(&e.cipher.nonce)
        .map_err(|_| format("bad nonce"))?;
    let ciphertext = B64
        .decode(&e.ciphertext)
        .map_err(|_| format("bad ciphertext"))?;
    if nonce.len() != 24 {
        return Err(format("bad nonce"));
    }
    let mut key = [0u8; 32];
    scrypt::scrypt(password, &salt, &params, &mut key).map_err(|_| format("scrypt failed"))?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key.into());
    cipher
        .decrypt(nonce.as_slice().into(), ciphertext.as_slice())
        .map_err(|_| KeyError::Decrypt {
            source_name: source_name.to_string(),
        })
}

/// The signing key at `source` (a path or `env://VAR`); `password` is COSIGN_PASSWORD.
pub fn signing_key(source: &str, password: Option<&str>) -> Result<SigningKey, KeyError> {
    let name = shown(source);
    let format = |message: String| KeyError::Format {
        source_name: name.clone(),
        message,
    };
    let bytes = read_source(source)?;
    let (label, der) = pem_block(&bytes).ok_or_else(|| format("no PEM block".into()))?;
    let pkcs8 = match label.as_str() {
        "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => {
            let password = password.ok_or_else(|| KeyError::NoPassword {
                source_name: name.clone(),
            })?;
            decrypt(&der, password.as_bytes(), &name)?
        }
        "PRIVATE KEY" => der,
        "EC PRIVATE KEY" => {
            let secret =
                p256::SecretKey::from_sec1_der(&der).map_err(|e| format(format!("SEC1: {e}")))?;
            return Ok(SigningKey::from(secret));
        }
        other => return Err(format(format!("a PEM block labelled `{other}`"))),
    };
    SigningKey::from_pkcs8_der(&pkcs8).map_err(|e| format(format!("PKCS#8: {e}")))
}

/// The verification key at `source` (a `PUBLIC KEY` PEM, as `cosign.pub`).
pub fn verifying_key(source: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = read_source(source)?;
    let text = String::from_utf8_lossy(&bytes);
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| KeyError::Format {
        source_name: shown(source),
        message: format!("public key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_or_missing_key_names_its_source_not_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(
            &path,
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = signing_key(path.to_str().unwrap(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("k.pem") && err.contains("RSA PRIVATE KEY"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");
        let err = signing_key("env://ETCDIMG_NO_SUCH_KEY_VAR", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ETCDIMG_NO_SUCH_KEY_VAR is not set"), "{err}");
    }
}
