//! `etcdimg scan`: the vulnerability report of the images in the layout (`crate::scan`), and
//! the release verbs' gate on it.
//!
//! 1. read: each arch's image and build record from the layout (`publish::layout::read_image`)
//! 2. extract: its Go binaries from its own layers, checked against the record's sha256
//! 3. scan: govulncheck in binary mode per binary, against the user's database
//! 4. render: a table (or `--json`); `--fail-on` decides the exit

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::oci::index::ManifestFormat;
use crate::platform::Arch;
use crate::publish::layout::{open_layout, read_image, ArchImage};
use crate::report::Reporter;
use crate::scan::{self, BinaryScan, ScanReport, Scanner, Wanted};
use crate::settings::Settings;

/// govulncheck: `--govulncheck` / ETCDIMG_GOVULNCHECK, else the one on PATH.
pub fn scanner(govulncheck: Option<&Path>, db: &str) -> Result<Scanner> {
    let govulncheck = match govulncheck {
        Some(p) => p.to_path_buf(),
        None => which::which("govulncheck").map_err(|_| {
            crate::UserError::new(
                "govulncheck is not installed (and no --govulncheck was given)",
                "install it from the Go module proxy: go install golang.org/x/vuln/cmd/govulncheck@v1.10.0 (scripts/install-deps.sh does, into target/tools/go/bin), or pass --govulncheck PATH",
            )
        })?,
    };
    Ok(Scanner {
        govulncheck,
        db: db.to_string(),
    })
}

/// Scans the images of `arches` in the layout at `layout_dir`.
pub fn scan(
    settings: &Settings,
    layout_dir: &Path,
    arches: &[Arch],
    scanner: &Scanner,
    reporter: &dyn Reporter,
) -> Result<ScanReport> {
    let layout = open_layout(layout_dir)?;
    let mut images = Vec::new();
    for arch in arches {
        images.push(read_image(settings, &layout, *arch, ManifestFormat::Oci)?);
    }
    scan_images(&images, scanner, reporter)
}

/// Scans images already read from the layout (the release verbs have them).
pub(crate) fn scan_images(
    images: &[ArchImage],
    scanner: &Scanner,
    reporter: &dyn Reporter,
) -> Result<ScanReport> {
    let work = tempfile::tempdir().context("creating a scratch directory for the scan")?;
    let mut report = ScanReport {
        scanner: String::new(),
        db: scanner.db.clone(),
        db_modified: String::new(),
        binaries: Vec::new(),
    };
    for image in images {
        let arch = image.arch;
        let record = image.record.as_ref().ok_or_else(|| {
            crate::UserError::new(
                format!("the {arch} image in the layout has no build record, so its binaries are unknown"),
                format!("rebuild it with this etcdimg: etcdimg build --arch {arch}"),
            )
        })?;
        let wanted: Vec<Wanted> = record
            .provenance
            .binaries
            .iter()
            .filter_map(|b| {
                Some(Wanted {
                    path: b.path.clone(),
                    sha256: b.sha256.clone(),
                    go_version: b.go.as_ref()?.go_version.clone(),
                    stripped: b.stripped,
                })
            })
            .collect();
        // The image's own layers (not the base's): the ones the record lists as added.
        let blobs: Vec<PathBuf> = record
            .provenance
            .layers
            .iter()
            .filter(|l| !l.content.starts_with("base "))
            .filter_map(|l| {
                image
                    .manifest
                    .blobs
                    .iter()
                    .find(|b| b.digest == l.digest)
                    .map(|b| b.path.clone())
            })
            .collect();
        let dir = work.path().join(arch.name());
        std::fs::create_dir_all(&dir)?;
        let files = scan::extract(&blobs, &wanted, &dir)
            .with_context(|| format!("extracting the {arch} image's binaries"))?;
        for (w, file) in files {
            reporter.status("Scanning", &format!("{arch} {} ({})", w.path, scanner.db));
            let (name, modified, vulns) = scanner.scan_file(&file)?;
            report.scanner = name;
            report.db_modified = modified;
            let (called, present) = vulns.into_iter().partition(|v| v.level == "called");
            report.binaries.push(BinaryScan {
                arch: arch.to_string(),
                path: w.path,
                go_version: w.go_version,
                stripped: w.stripped,
                called,
                present,
            });
        }
    }
    Ok(report)
}

/// The report as a table: one block per binary, one line per vulnerability.
pub fn render(report: &ScanReport) -> String {
    let mut out = format!(
        "{} against {} (modified {})\n",
        report.scanner, report.db, report.db_modified
    );
    for b in &report.binaries {
        out.push_str(&format!(
            "\n{} /{} ({}): {} called, {} present\n",
            b.arch,
            b.path,
            b.go_version,
            b.called.len(),
            b.present.len()
        ));
        if b.stripped {
            out.push_str("  stripped: govulncheck cannot see which functions it holds, so every vulnerability of a linked package counts as called; build with build.strip = false to tell them apart\n");
        }
        for v in b.called.iter().chain(&b.present) {
            let fixed = v
                .fixed
                .as_deref()
                .map(|f| format!("fixed in {f}"))
                .unwrap_or_else(|| "no fix".into());
            let (label, detail) = match v.level.as_str() {
                "called" => ("called", format!(" [{}]", v.symbols.join(", "))),
                "imported" => (
                    "present",
                    " (its package is linked; no vulnerable symbol)".into(),
                ),
                _ => ("present", " (only its module is in the binary)".into()),
            };
            out.push_str(&format!(
                "  {label:<8} {:<14} {}@{}, {fixed}: {}{detail}\n",
                v.id, v.module, v.found, v.summary
            ));
        }
    }
    out
}

/// The release verbs' gate: refuses a release whose binaries call a vulnerable symbol,
/// unless `allow` (then said on stderr; the scan goes into the release report either way).
pub(crate) fn gate(
    report: &ScanReport,
    allow: bool,
    tag: &str,
    reporter: &dyn Reporter,
) -> Result<()> {
    let called: Vec<String> = report
        .called()
        .map(|(b, v)| {
            format!(
                "{} ({} /{}, fixed in {})",
                v.id,
                b.arch,
                b.path,
                v.fixed.as_deref().unwrap_or("no release")
            )
        })
        .collect();
    if called.is_empty() {
        return Ok(());
    }
    if allow {
        reporter.warn(&format!(
            "called vulnerabilities: {}; releasing anyway (--allow-called-vulns), recorded in the release report",
            called.join("; ")
        ));
        return Ok(());
    }
    anyhow::bail!(crate::UserError::new(
        format!(
            "refusing to release {tag}: its binaries call vulnerable code: {}; nothing was pushed",
            called.join("; ")
        ),
        "rebuild with the fixed Go or module versions (build.go_toolchain / --go-toolchain for Go), or pass --allow-called-vulns (ETCDIMG_ALLOW_CALLED_VULNS=1) to release anyway; `etcdimg scan` shows each one",
    ))
}
