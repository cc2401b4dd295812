//! The vulnerability report that says what is called: every Go binary of an image scanned by
//! govulncheck (golang.org/x/vuln) in binary mode, against a vulnerability database the user
//! names (their own mirror, a directory, or https://vuln.go.dev). Each vulnerability is
//! classified the way govulncheck's traces say: **called** (a vulnerable symbol is in the
//! binary), or only **present** (its package is linked, or only its module is required).
//!
//! The binaries come from the image's own layers in the OCI layout (the bytes that ship),
//! found through the build record and checked against its sha256. govulncheck is run, not
//! reimplemented: its call analysis is the reference scanners defer to.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use hostio::process::Cmd;

/// How long one binary's scan may take (govulncheck reads the binary and the database).
const SCAN_TIMEOUT: Duration = Duration::from_secs(600);

/// What govulncheck found for one vulnerability in one binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vulnerability {
    /// `GO-2026-6809`.
    pub id: String,
    /// CVE and GHSA ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub summary: String,
    /// `stdlib` or the module path.
    pub module: String,
    /// The version in the binary (`go1.26.8` for the standard library).
    pub found: String,
    /// The first version that fixes it (`go1.26.10`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    /// `called`, `imported` (package linked, no vulnerable symbol) or `required` (module only).
    pub level: String,
    /// The vulnerable symbols found in the binary (`crypto/x509.Certificate.Verify`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<String>,
}

/// One binary's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryScan {
    pub arch: String,
    /// Its path in the image.
    pub path: String,
    pub go_version: String,
    /// No symbol table: govulncheck cannot see which functions it holds, and counts every
    /// vulnerability of a linked package as called (golang/go#57764).
    pub stripped: bool,
    /// Vulnerabilities with a vulnerable symbol in the binary.
    pub called: Vec<Vulnerability>,
    /// Vulnerabilities of linked packages or required modules whose symbols are not in it.
    pub present: Vec<Vulnerability>,
}

/// A whole scan: what scanned, against which database, and every binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    /// `govulncheck v1.10.0`.
    pub scanner: String,
    /// The database as given (URL or directory).
    pub db: String,
    /// The database's own last-modified time.
    pub db_modified: String,
    pub binaries: Vec<BinaryScan>,
}

impl ScanReport {
    /// Every (binary, vulnerability) that is called.
    pub fn called(&self) -> impl Iterator<Item = (&BinaryScan, &Vulnerability)> {
        self.binaries
            .iter()
            .flat_map(|b| b.called.iter().map(move |v| (b, v)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("govulncheck failed on `{binary}`: {message}")]
    Scanner { binary: String, message: String },
    #[error("reading govulncheck's output for `{binary}`: {message}")]
    Output { binary: String, message: String },
    #[error("{0}")]
    Io(String),
}

/// How to scan: the govulncheck binary and the database (`-db`).
#[derive(Debug, Clone)]
pub struct Scanner {
    pub govulncheck: PathBuf,
    pub db: String,
}

impl Scanner {
    /// `db` as govulncheck takes it: a URL as is, a directory as a `file://` URL.
    pub fn db_url(&self) -> String {
        if self.db.contains("://") {
            self.db.clone()
        } else {
            let abs = std::path::absolute(&self.db).unwrap_or_else(|_| PathBuf::from(&self.db));
            format!("file://{}", abs.display())
        }
    }

    /// Scans one binary file.
    pub fn scan_file(
        &self,
        file: &Path,
    ) -> Result<(String, String, Vec<Vulnerability>), ScanError> {
        let binary = file.display().to_string();
        let out = Cmd::new(&self.govulncheck)
            .args(["-mode=binary", "-format", "json", "-db"])
            .arg(self.db_url())
            .arg(file)
            .timeout(SCAN_TIMEOUT)
            .output_any()
            .map_err(|e| ScanError::Scanner {
                binary: binary.clone(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(ScanError::Scanner {
                binary,
                message: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        parse_stream(&out.stdout).map_err(|message| ScanError::Output { binary, message })
    }
}

/// govulncheck's `-format json` stream: (scanner, db last-modified, vulnerabilities), each
/// vulnerability at the deepest level any of its findings reached.
pub fn parse_stream(bytes: &[u8]) -> Result<(String, String, Vec<Vulnerability>), String> {
    let mut scanner = String::new();
    let mut modified = String::new();
    let mut osv: BTreeMap<String, Value> = BTreeMap::new();
    // id -> (deepest level reached: 1 module, 2 package, 3 symbol; what was found)
    let mut found: BTreeMap<String, (usize, Vulnerability)> = BTreeMap::new();
    for item in serde_json::Deserializer::from_slice(bytes).into_iter::<Value>() {
        let item = item.map_err(|e| e.to_string())?;
        if let Some(c) = item.get("config") {
            scanner = format!(
                "{} {}",
                c["scanner_name"].as_str().unwrap_or("govulncheck"),
                c["scanner_version"].as_str().unwrap_or("")
            );
            modified = c["db_last_modified"].as_str().unwrap_or("").to_string();
        } else if let Some(entry) = item.get("osv") {
            if let Some(id) = entry["id"].as_str() {
                osv.insert(id.to_string(), entry.clone());
            }
        } else if let Some(f) = item.get("finding") {
            let id = f["osv"].as_str().ok_or("a finding without an osv id")?;
            let frame = &f["trace"][0];
            let (rank, symbol) = match (frame["package"].as_str(), frame["function"].as_str()) {
                (Some(p), Some(func)) => {
                    let receiver = frame["receiver"]
                        .as_str()
                        .map(|r| format!("{}.", r.trim_start_matches('*')))
                        .unwrap_or_default();
                    (3, Some(format!("{p}.{receiver}{func}")))
                }
                (Some(_), None) => (2, None),
                _ => (1, None),
            };
            let module = frame["module"].as_str().unwrap_or("").to_string();
            let e = found.entry(id.to_string()).or_insert_with(|| {
                (
                    0,
                    Vulnerability {
                        id: id.to_string(),
                        aliases: Vec::new(),
                        summary: String::new(),
                        found: go_style(&module, frame["version"].as_str().unwrap_or("")),
                        fixed: f["fixed_version"]
                            .as_str()
                            .filter(|v| !v.is_empty())
                            .map(|v| go_style(&module, v)),
                        module,
                        level: String::new(),
                        symbols: Vec::new(),
                    },
                )
            });
            e.0 = e.0.max(rank);
            if let Some(s) = symbol.filter(|s| !e.1.symbols.contains(s)) {
                e.1.symbols.push(s);
            }
        }
    }
    let vulns = found
        .into_values()
        .map(|(rank, mut v)| {
            v.symbols.sort();
            v.level = ["required", "required", "imported", "called"][rank].to_string();
            if let Some(entry) = osv.get(&v.id) {
                v.summary = entry["summary"]
                    .as_str()
                    .or(entry["details"].as_str())
                    .unwrap_or("")
                    .to_string();
                v.aliases = entry["aliases"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            v
        })
        .collect();
    Ok((scanner, modified, vulns))
}

/// govulncheck writes the standard library's versions as `v1.26.8`; Go calls them `go1.26.8`.
fn go_style(module: &str, version: &str) -> String {
    match (module, version.strip_prefix('v')) {
        ("stdlib" | "toolchain", Some(v)) => format!("go{v}"),
        _ => version.to_string(),
    }
}

/// One Go binary to scan: where it is in the image, and its bytes' sha256.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub path: String,
    pub sha256: String,
    pub go_version: String,
    pub stripped: bool,
}

/// Extracts the `wanted` files from gzip-compressed tar layers (`blobs`, image order, later
/// layers win) into `dir` (named by the file's base name); each must hash to its sha256.
pub fn extract(
    blobs: &[PathBuf],
    wanted: &[Wanted],
    dir: &Path,
) -> Result<Vec<(Wanted, PathBuf)>, ScanError> {
    use sha2::{Digest, Sha256};
    let io = |what: String| move |e: std::io::Error| ScanError::Io(format!("{what}: {e}"));
    let mut out: BTreeMap<String, (Wanted, PathBuf)> = BTreeMap::new();
    for blob in blobs {
        let file = std::fs::File::open(blob).map_err(io(format!("opening {}", blob.display())))?;
        let mut archive =
            tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
        let entries = archive
            .entries()
            .map_err(io(format!("reading {}", blob.display())))?;
        for entry in entries {
            let mut entry = entry.map_err(io(format!("reading {}", blob.display())))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry
                .path()
                .map_err(io(format!("reading {}", blob.display())))?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_string();
            let Some(w) = wanted.iter().find(|w| w.path == path) else {
                continue;
            };
            let name = path.rsplit('/').next().unwrap_or(&path).to_string();
            let dest = dir.join(&name);
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(io(format!("reading {path} from {}", blob.display())))?;
            let got = hex::encode(Sha256::digest(&bytes));
            if got != w.sha256 {
                return Err(ScanError::Io(format!(
                    "{path} in the layout hashes to {got}, but the build record says {}",
                    w.sha256
                )));
            }
            std::fs::write(&dest, &bytes).map_err(io(format!("writing {}", dest.display())))?;
            out.insert(path, (w.clone(), dest));
        }
    }
    if let Some(missing) = wanted.iter().find(|w| !out.contains_key(&w.path)) {
        return Err(ScanError::Io(format!(
            "{} is in the build record but in no layer of the image",
            missing.path
        )));
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_finding_decides_and_symbols_are_named() {
        let stream = br#"{"config":{"scanner_name":"govulncheck","scanner_version":"v1.10.0","db_last_modified":"2026-11-05T23:49:57Z"}}
{"osv":{"id":"GO-1","summary":"one","aliases":["CVE-1"]}}
{"osv":{"id":"GO-2","summary":"two"}}
{"finding":{"osv":"GO-1","fixed_version":"v1.26.10","trace":[{"module":"stdlib","version":"v1.26.8"}]}}
{"finding":{"osv":"GO-1","fixed_version":"v1.26.10","trace":[{"module":"stdlib","version":"v1.26.8","package":"crypto/x509","function":"Verify","receiver":"*Certificate"}]}}
{"finding":{"osv":"GO-2","fixed_version":"v0.62.0","trace":[{"module":"golang.org/x/net","version":"v0.61.0","package":"golang.org/x/net/html"}]}}
"#;
        let (scanner, modified, v) = parse_stream(stream).unwrap();
        assert_eq!(scanner, "govulncheck v1.10.0");
        assert_eq!(modified, "2026-11-05T23:49:57Z");
        assert_eq!(v[0].level, "called");
        assert_eq!(v[0].symbols, ["crypto/x509.Certificate.Verify"]);
        assert_eq!(
            (v[0].found.as_str(), v[0].fixed.as_deref()),
            ("go1.26.8", Some("go1.26.10"))
        );
        assert_eq!(v[0].aliases, ["CVE-1"]);
        assert_eq!(v[1].level, "imported");
        assert_eq!(v[1].fixed.as_deref(), Some("v0.62.0"));
    }

    #[test]
    fn a_broken_stream_is_an_error() {
        assert!(parse_stream(b"{\"finding\":").is_err());
    }
}
