//! `etcdimg test [--arch A] [--runtime rootfs|containerd]`: the Makefile's `make test` for a
//! built image.
//!
//! With the default runtime, `rootfs`, no daemon is needed: the image is read from the OCI
//! layout, its layers unpacked into a temp rootfs (whiteouts applied), and each check becomes
//! one row of a pass/fail table:
//! - the config's os/architecture/variant, its env (PATH; ETCD_UNSUPPORTED_ARCH off amd64);
//! - every bundled `etcd-<V>`/`etcdctl-<V>` present with the configured mode and reporting V
//!   (qemu-user for foreign arches), and the default `etcd`/`etcdctl` reporting the latest;
//! - a real migration in the rootfs: `migrate-if-needed.sh` (the image's own, with its own
//!   migrate and etcd binaries) initialises a temp data dir at the oldest bundled version,
//!   then brings it to the latest, starting the image's etcd of each step.
//!
//! With `--runtime containerd` the same rows run in real containers, as a Kubernetes node runs
//! the image (containerd + runc, [`crate::containerd`]): the image is imported from the layout
//! into a private containerd (or the one at `--containerd-address`); the user and env as the
//! container sees them; every bundled binary's reported version; and the static-pod command
//! (`migrate-if-needed.sh ...; exec /usr/local/bin/etcd ...`) on a bind-mounted /var/etcd, from
//! the oldest bundled version to the latest and back one minor, with the served `/version`,
//! version.txt and a key written at the start checked each time. A foreign arch runs only where
//! binfmt_misc already has its qemu handler; otherwise its container rows say why they did not
//! run (SKIP).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use semver::Version;
use serde_json::Value;

use crate::binary::{self, VersionCheck};
use crate::oci::layout::Layout;
use crate::oci::{self, unpack, ImageManifest};
use crate::platform::Arch;
use crate::settings::Settings;
use hostio::process::Cmd;

pub use super::test_report::{Check, TestReport};

const BIN_DIR: &str = "usr/local/bin";

/// Where the image's binaries run.
pub enum Runtime {
    /// Unpacked into a temp rootfs (qemu-user for foreign arches); no daemon.
    Rootfs,
    /// In containers of this containerd (one per run, shared by every arch; see
    /// [`super::test_containerd::open`]).
    Containerd(crate::containerd::Containerd),
}

/// Tests the image of `arch` in the layout at `layout_dir`, its binaries run by `runtime`.
pub fn test_image(
    settings: &Settings,
    arch: Arch,
    layout_dir: &Path,
    runtime: &Runtime,
) -> Result<TestReport> {
    let image = settings.layout_ref(arch);
    let layout = Layout::open(layout_dir)?;
    let desc = layout.resolve(Some(&image))?;
    let manifest: ImageManifest = serde_json::from_slice(&layout.read_blob(&oci::hex(&desc))?)
        .with_context(|| format!("the manifest of `{image}`"))?;
    let config: Value = serde_json::from_slice(&layout.read_blob(&oci::hex(manifest.config()))?)
        .with_context(|| format!("the config of `{image}`"))?;
    let mut report = TestReport {
        arch: arch.name().into(),
        image: image.clone(),
        checks: Vec::new(),
    };

    config_checks(&mut report, &config, arch);
    if let Runtime::Containerd(ctd) = runtime {
        super::test_containerd::checks(&mut report, settings, arch, layout_dir, ctd)?;
        return Ok(report);
    }
    let root = tempfile::tempdir().context("a temp dir for the rootfs")?;
    let mut stats = unpack::Unpacked::default();
    for layer in manifest.layers() {
        let blob = layer_reader(&layout, layer)?;
        unpack::apply_layer(&oci::hex(layer), blob, root.path(), &mut stats)?;
    }
    let bin = root.path().join(BIN_DIR);

    binary_checks(&mut report, &bin, settings, arch);
    report.check("migration", migration(&bin, arch, settings));
    Ok(report)
}

fn layer_reader<'a>(layout: &Layout, layer: &oci::Descriptor) -> Result<Box<dyn Read + 'a>> {
    let bytes = layout.read_blob(&oci::hex(layer))?;
    let gz = layer.media_type().to_string().contains("gzip");
    Ok(if gz {
        Box::new(flate2::read::GzDecoder::new(std::io::Cursor::new(bytes)))
    } else {
        Box::new(std::io::Cursor::new(bytes))
    })
}

/// The config's platform (os, architecture, variant) and env (PATH; ETCD_UNSUPPORTED_ARCH
/// exactly on the non-amd64 arches).
fn config_checks(report: &mut TestReport, config: &Value, arch: Arch) {
    let want = (Some("linux"), Some(arch.name()), arch.variant());
    let got = (
        config.get("os").and_then(Value::as_str),
        config.get("architecture").and_then(Value::as_str),
        config.get("variant").and_then(Value::as_str),
    );
    report.check(
        "config platform",
        if got == want {
            Ok(format!(
                "{}/{}{}",
                "linux",
                arch.name(),
                arch.variant().map(|v| format!("/{v}")).unwrap_or_default()
            ))
        } else {
            Err(format!(
                "os/architecture/variant {got:?}, expected {want:?}"
            ))
        },
    );
    let env: Vec<&str> = config
        .pointer("/config/Env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let unsupported = format!("ETCD_UNSUPPORTED_ARCH={}", arch.name());
    let env_ok = env.iter().any(|e| e.starts_with("PATH="))
        && (arch == Arch::Amd64) != env.contains(&unsupported.as_str());
    report.check(
        "config env",
        if env_ok {
            Ok(env.join(" "))
        } else {
            Err(format!(
                "{env:?}: expected PATH{}",
                if arch == Arch::Amd64 {
                    ""
                } else {
                    " and ETCD_UNSUPPORTED_ARCH"
                }
            ))
        },
    );
}

/// Every bundled etcd and etcdctl, and the defaults: mode, and the version they report.
fn binary_checks(report: &mut TestReport, bin: &Path, settings: &Settings, arch: Arch) {
    for v in &settings.bundled {
        for name in ["etcd", "etcdctl"] {
            report.check(
                format!("{name}-{v}"),
                binary_check(
                    &bin.join(format!("{name}-{v}")),
                    name,
                    arch,
                    v,
                    settings.binary_mode,
                ),
            );
        }
    }
    for name in ["etcd", "etcdctl"] {
        report.check(
            format!("{name} (default)"),
            binary_check(
                &bin.join(name),
                name,
                arch,
                &settings.latest,
                settings.binary_mode,
            ),
        );
    }
}

fn binary_check(
    path: &Path,
    name: &str,
    arch: Arch,
    v: &Version,
    want_mode: u32,
) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode != want_mode {
        return Err(format!("mode {mode:o}, expected {want_mode:o}"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    match binary::check_version(name, &bytes, arch, v) {
        Ok(VersionCheck::Verified) => Ok(format!("reports {v}, mode {mode:o}")),
        Ok(VersionCheck::Skipped) => Err(format!(
            "cannot run {arch} binaries here: install qemu-user-static"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Fills `dir` with the image's bin dir: scripts copied, ELF binaries as shims that exec them
/// under `prefix` (qemu-user).
fn shim_dir(bin: &Path, prefix: &[String], dir: &Path) -> std::io::Result<()> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    for e in std::fs::read_dir(bin)? {
        let e = e?;
        let path = e.path();
        let to = dir.join(e.file_name());
        let mut head = [0u8; 4];
        let is_elf = std::fs::File::open(&path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && head == *b"\x7fELF";
        if is_elf {
            let argv: Vec<String> = prefix
                .iter()
                .map(|p| quote(p))
                .chain([quote(&path.display().to_string())])
                .collect();
            std::fs::write(&to, format!("#!/bin/sh\nexec {} \"$@\"\n", argv.join(" ")))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        } else if path.is_file() {
            std::fs::copy(&path, &to)?;
        }
    }
    Ok(())
}

/// `migrate-if-needed.sh` from the rootfs on a temp data dir: initialise at the oldest bundled
/// version, then migrate to the latest; version.txt must follow.
fn migration(bin: &Path, arch: Arch, settings: &Settings) -> Result<String, String> {
    let (Some(oldest), latest) = (settings.bundled.iter().min(), &settings.latest) else {
        return Err("no bundled versions".into());
    };
    // A foreign arch runs through qemu-user: every ELF binary of the image gets a shim that
    // runs it under qemu, so that migrate (itself under qemu) starts the image's etcd the same
    // way; qemu-user passes an exec of the shim to the host kernel. No binfmt_misc needed.
    let shims = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = match binary::runner(arch) {
        Some(prefix) if prefix.is_empty() => bin.to_path_buf(),
        Some(prefix) => {
            shim_dir(bin, &prefix, shims.path()).map_err(|e| format!("shims for qemu: {e}"))?;
            shims.path().to_path_buf()
        }
        None => {
            return Err(format!(
                "cannot run {arch} binaries here: install qemu-user-static"
            ))
        }
    };
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data_dir = data.path().join("data");
    let run = |target: &Version| -> Result<(), String> {
        let mut cmd = Cmd::new("sh")
            .arg(bin.join("migrate-if-needed.sh"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIRECTORY", data_dir.as_os_str())
            .env("TARGET_VERSION", target.to_string())
            .env("TARGET_STORAGE", "etcd3")
            .env("ETCD_NAME", "etcdimg-test");
        if arch != Arch::Amd64 {
            // As the image's env sets it (etcd refuses to start on these arches otherwise).
            cmd = cmd.env("ETCD_UNSUPPORTED_ARCH", arch.name());
        }
        cmd.output().map(|_| ()).map_err(|e| e.to_string())
    };
    run(oldest)?;
    run(latest)?;
    let written =
        std::fs::read_to_string(data_dir.join("version.txt")).map_err(|e| e.to_string())?;
    if written.trim() != format!("{latest}/etcd3") {
        return Err(format!(
            "version.txt says {written:?} after migrating to {latest}"
        ));
    }
    if oldest != latest && !data_dir.join("member").is_dir() {
        return Err("no etcd ran on the data dir".into());
    }
    Ok(format!(
        "{oldest} -> {latest}: version.txt = {latest}/etcd3"
    ))
}
