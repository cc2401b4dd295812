//! Release downloads: SHA256SUMS, pins, the content-addressed cache, safe extraction.
//!
//! Owns: every byte that comes from the etcd release URL, and the guarantee that no such byte
//! is used before its sha256 matched both SHA256SUMS and the pin (if any). Never: building
//! layers or talking to registries.

pub mod cache;
pub mod extract;
pub mod http;

use semver::Version;

use crate::platform::Arch;
use crate::report::Reporter;
use cache::{Cache, CacheError};
use http::{redact_url, Http};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url} failed: {status}")]
    Status { url: String, status: String },
    #[error("GET {url} failed after {attempts} attempts: {last}")]
    Network {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("writing a download: {0}")]
    Io(String),
    #[error(
        "checksum mismatch for `{file}`\n  expected: sha256:{expected} (from {source_of_expected})\n  actual:   sha256:{actual}\nthe file was not used and nothing was cached"
    )]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
        source_of_expected: String,
    },
    #[error("`{file}` is not listed in {sums_url}; refusing to use an unverifiable tarball")]
    MissingFromSums { file: String, sums_url: String },
    #[error("{sums_url} line {line}: malformed entry `{text}`, expected `<sha256>  <file>`")]
    MalformedSums {
        sums_url: String,
        line: usize,
        text: String,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl FetchError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            FetchError::Status { status, .. } if status.starts_with("404") => Some(
                "check etcd.release_url (ETCD_RELEASE_URL) and that this etcd version has a release for this arch".into(),
            ),
            FetchError::Network { .. } => Some("check the network or point ETCD_RELEASE_URL at a reachable mirror".into()),
            FetchError::ChecksumMismatch { source_of_expected, .. } if source_of_expected.contains("images.toml") => {
                Some("if the release really changed, update the pin in etcd.sha256 after checking it by hand".into())
            }
            FetchError::ChecksumMismatch { .. } => {
                Some("the download or the mirror is corrupt; retry, or check the mirror against upstream".into())
            }
            _ => None,
        }
    }
}

/// A release tarball whose digest was checked against SHA256SUMS (and the pin). A fresh
/// download stays a temp file until [`VerifiedTarball::keep`]: the caller keeps it only after
/// its contents passed every check, so a bad tarball never enters the cache.
pub struct VerifiedTarball {
    pub version: Version,
    pub arch: Arch,
    pub file_name: String,
    pub url: String,
    pub sha256: String,
    /// sha256 of the SHA256SUMS it was checked against.
    pub sums_sha256: String,
    pub path: std::path::PathBuf,
    fresh: Option<(cache::PendingBlob, String, String)>,
}

impl VerifiedTarball {
    /// True when this run downloaded it (false: it came from the cache).
    pub fn downloaded(&self) -> bool {
        self.fresh.is_some()
    }

    /// Commits a fresh download (and its SHA256SUMS) to the cache.
    pub fn keep(mut self, cache: &Cache) -> Result<(), CacheError> {
        if let Some((pending, sums_key, sums_text)) = self.fresh.take() {
            cache
                .commit(pending, Some(&self.sha256))?
                .map_err(|actual| CacheError::Corrupt {
                    path: self.path.clone(),
                    expected: self.sha256.clone(),
                    actual,
                })?;
            cache.put_ref("sha256sums", &sums_key, &sums_text)?;
        }
        Ok(())
    }
}

pub fn tarball_name(version: &Version, arch: Arch) -> String {
    format!("etcd-v{version}-linux-{arch}.tar.gz")
}

/// Parses `sha256sum` output: `<hex>  <name>` or `<hex> *<name>`.
pub fn parse_sums(text: &str, sums_url: &str) -> Result<Vec<(String, String)>, FetchError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let malformed = || FetchError::MalformedSums {
            sums_url: sums_url.into(),
            line: i + 1,
            text: line.chars().take(120).collect(),
        };
        let (digest, rest) = line.split_once(char::is_whitespace).ok_or_else(malformed)?;
        let name = rest.trim_start().trim_start_matches('*');
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
            return Err(malformed());
        }
        out.push((digest.to_ascii_lowercase(), name.to_string()));
    }
    Ok(out)
}

/// What a release tarball must be: its URL and the sha256 it is verified against (from
/// SHA256SUMS, cached by URL, and the pin if there is one). Nothing is downloaded but
/// SHA256SUMS, so a build whose layer cache already holds the version's layer never reads the
/// tarball.
pub struct Expected {
    pub version: Version,
    pub arch: Arch,
    pub file_name: String,
    /// Redacted.
    pub url: String,
    pub sha256: String,
    /// sha256 of the SHA256SUMS that named it.
    pub sums_sha256: String,
    raw_url: String,
    source: String,
    sums_key: String,
    sums_text: String,
}

pub async fn expected(
    http: &Http,
    cache: &Cache,
    release_url: &str,
    version: &Version,
    arch: Arch,
    pin: Option<&str>,
    reporter: &dyn Reporter,
) -> Result<Expected, FetchError> {
    let file_name = tarball_name(version, arch);
    let folder = format!("{release_url}/v{version}");
    let sums_url = format!("{folder}/SHA256SUMS");
    let url = format!("{folder}/{file_name}");

    // SHA256SUMS of a published release never changes; keep it by URL.
    let sums_key = cache::sha256_hex(sums_url.as_bytes());
    let sums_text = match cache.get_ref("sha256sums", &sums_key) {
        Some(text) => text,
        None => {
            let bytes = http.get_bytes(&sums_url, reporter).await?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    let sums = parse_sums(&sums_text, &redact_url(&sums_url))?;
    let from_sums = sums
        .iter()
        .find(|(_, name)| name == &file_name)
        .map(|(d, _)| d.clone())
        .ok_or_else(|| FetchError::MissingFromSums {
            file: file_name.clone(),
            sums_url: redact_url(&sums_url),
        })?;
    if let Some(pin) = pin {
        if pin != from_sums {
            return Err(FetchError::ChecksumMismatch {
                file: file_name,
                expected: pin.to_string(),
                actual: from_sums,
                source_of_expected: format!(
                    "the pin etcd.sha256.\"{version}/{arch}\" in images.toml; actual is from {}",
                    redact_url(&sums_url)
                ),
            });
        }
    }
    let source = if pin.is_some() {
        format!("{} and the pin in images.toml", redact_url(&sums_url))
    } else {
        redact_url(&sums_url)
    };
    Ok(Expected {
        version: version.clone(),
        arch,
        file_name,
        url: redact_url(&url),
        sha256: from_sums,
        sums_sha256: cache::sha256_hex(sums_text.as_bytes()),
        raw_url: url,
        source,
        sums_key,
        sums_text,
    })
}

/// Finds the expected tarball in the cache (re-verified) or downloads and verifies it.
pub async fn fetch(
    http: &Http,
    cache: &Cache,
    e: Expected,
    reporter: &dyn Reporter,
) -> Result<VerifiedTarball, FetchError> {
    let Expected {
        version,
        arch,
        file_name,
        url: _,
        sha256: expected,
        sums_sha256,
        raw_url: url,
        source: expected_source,
        sums_key,
        sums_text,
    } = e;
    // Re-verify a cached copy on use; a corrupt one is dropped and fetched again.
    match cache.get_verified(&expected) {
        Ok(Some(path)) => {
            return Ok(VerifiedTarball {
                sums_sha256: sums_sha256.clone(),
                version,
                arch,
                file_name,
                url: redact_url(&url),
                sha256: expected,
                path,
                fresh: None,
            })
        }
        Ok(None) => {}
        Err(CacheError::Corrupt { .. }) => reporter.warn(&format!(
            "cached `{file_name}` was corrupt; downloading it again"
        )),
        Err(e) => return Err(e.into()),
    }

    let mut pending = cache.pending()?;
    http.download(&url, &mut pending, reporter, &file_name)
        .await?;
    reporter.status(
        "Verifying",
        &format!("{file_name} against {expected_source}"),
    );
    let actual = pending.digest();
    if actual != expected {
        return Err(FetchError::ChecksumMismatch {
            file: file_name,
            expected,
            actual,
            source_of_expected: expected_source,
        });
    }
    let path = pending.path().to_path_buf();
    Ok(VerifiedTarball {
        sums_sha256,
        version,
        arch,
        file_name,
        url: redact_url(&url),
        sha256: expected,
        path,
        fresh: Some((pending, sums_key, sums_text)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_parse_both_styles() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let text =
            format!("{a}  etcd-v3.5.1-linux-amd64.tar.gz\n{b} *etcd-v3.5.1-linux-arm64.tar.gz\n\n");
        let sums = parse_sums(&text, "u").unwrap();
        assert_eq!(sums[0], (a, "etcd-v3.5.1-linux-amd64.tar.gz".to_string()));
        assert_eq!(sums[1].0, "b".repeat(64));
        assert_eq!(sums[1].1, "etcd-v3.5.1-linux-arm64.tar.gz");
    }

    #[test]
    fn malformed_sums_name_the_line() {
        let err = parse_sums("<html>not found</html>\n", "u").unwrap_err();
        assert!(
            matches!(err, FetchError::MalformedSums { line: 1, .. }),
            "{err}"
        );
    }
}
