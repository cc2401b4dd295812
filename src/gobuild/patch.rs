//! `patches/<V>/*.patch`, applied in name order before etcd <V> is compiled.
//!
//! The source tree is never modified (it may be Debian's read-only GOPATH or a shared cache
//! entry). Instead every file a patch touches is copied into a private directory, the patches
//! are applied there with GNU `patch`, and the compiler is pointed at the results with
//! `go build -overlay`, which replaces (or adds, or deletes) those files for this build only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::fetch::cache::sha256_hex;
use hostio::process::{Cmd, ProcessError};

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("patch `{patch}` does not apply to etcd {version}: {detail}")]
    DoesNotApply {
        patch: PathBuf,
        version: String,
        detail: String,
    },
    #[error("patch `{patch}` touches `{file}`, which is outside the source tree")]
    OutsideTree { patch: PathBuf, file: String },
    #[error("reading `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PatchError + '_ {
    move |source| PatchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The patches for one version, in order.
#[derive(Debug, Clone, Default)]
pub struct Patches {
    pub files: Vec<PathBuf>,
    /// sha256 over the names and contents, in order ("" when there are none): part of the
    /// build cache key.
    pub digest: String,
}

/// Lists `<dir>/<version>/*.patch` in name order.
pub fn list(dir: &Path, version: &str) -> Result<Patches, PatchError> {
    let vdir = dir.join(version);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&vdir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "patch"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&vdir)(e)),
    };
    files.sort();
    if files.is_empty() {
        return Ok(Patches::default());
    }
    let mut text = Vec::new();
    for f in &files {
        text.extend_from_slice(f.file_name().unwrap_or_default().as_encoded_bytes());
        text.push(0);
        text.extend_from_slice(sha256_hex(&std::fs::read(f).map_err(io(f))?).as_bytes());
        text.push(b'\n');
    }
    Ok(Patches {
        files,
        digest: sha256_hex(&text),
    })
}

/// The files a unified diff touches, relative to the tree root (`-p1`).
pub fn touched_files(diff: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in diff.lines() {
        let Some(rest) = line
            .strip_prefix("+++ ")
            .or_else(|| line.strip_prefix("--- "))
        else {
            continue;
        };
        let path = rest.split('\t').next().unwrap_or("").trim();
        if path == "/dev/null" {
            continue;
        }
        // -p1: drop the first component (a/, b/).
        let stripped = path.split_once('/').map(|(_, p)| p).unwrap_or(path);
        if !stripped.is_empty() && !out.iter().any(|p| p == stripped) {
            out.push(stripped.to_string());
        }
    }
    out
}

/// Patched files: original path in the tree (relative) -> patched copy (None: deleted).
#[derive(Debug, Default)]
pub struct Patched {
    pub files: BTreeMap<String, Option<PathBuf>>,
}

/// Applies `patches` to copies of the files they touch under `root`, in `work`.
pub fn apply(
    patches: &Patches,
    root: &Path,
    version: &str,
    work: &Path,
) -> Result<Patched, PatchError> {
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree).map_err(io(&tree))?;
    let mut touched: Vec<String> = Vec::new();
    for patch in &patches.files {
        let text = std::fs::read_to_string(patch).map_err(io(patch))?;
        for rel in touched_files(&text) {
            if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
                return Err(PatchError::OutsideTree {
                    patch: patch.clone(),
                    file: rel,
                });
            }
            if touched.contains(&rel) {
                continue;
            }
            let src = root.join(&rel);
            let dst = tree.join(&rel);
            if src.is_file() {
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::copy(&src, &dst).map_err(io(&src))?;
            }
            touched.push(rel);
        }
        let out = Cmd::new("patch")
            .args([
                "-p1",
                "--batch",
                "--forward",
                "--no-backup-if-mismatch",
                "-r",
                "-",
            ])
            .arg("-d")
            .arg(&tree)
            .arg("-i")
            .arg(patch)
            .output_any()?;
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return Err(PatchError::DoesNotApply {
                patch: patch.clone(),
                version: version.into(),
                detail: failure_detail(&text),
            });
        }
    }
    let mut out = Patched::default();
    for rel in touched {
        let p = tree.join(&rel);
        out.files.insert(rel, p.is_file().then_some(p));
    }
    Ok(out)
}

/// The lines of `patch`'s output that say what failed ("Hunk #2 FAILED at 40.", "can't find
/// file to patch", ...).
fn failure_detail(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.contains("FAILED")
                || l.contains("can't find file")
                || l.contains("malformed")
                || l.contains("Reversed")
                || l.contains("No file to patch")
                || l.starts_with("patching file")
                || l.contains("Only garbage")
        })
        .collect();
    if lines.is_empty() {
        output.trim().lines().last().unwrap_or("").to_string()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_files_strip_one_component() {
        let diff = "--- a/version/version.go\t2020-01-01\n+++ b/version/version.go\n@@ -1 +1 @@\n-x\n+y\n--- /dev/null\n+++ b/new/file.go\n";
        assert_eq!(
            touched_files(diff),
            ["version/version.go".to_string(), "new/file.go".to_string()]
        );
    }

    #[test]
    fn failure_lines_name_the_hunk() {
        let out = "patching file version/version.go\nHunk #1 FAILED at 29.\n1 out of 1 hunk FAILED -- saving rejects to file -\n";
        let d = failure_detail(out);
        assert!(d.contains("Hunk #1 FAILED at 29."), "{d}");
        assert!(d.contains("patching file version/version.go"), "{d}");
    }
}
