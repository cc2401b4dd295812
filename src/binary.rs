//! Checks a binary before it is packaged: its ELF header must match the image arch, and where
//! it can run (natively, or under qemu-user when installed) it must report the expected etcd
//! version and Go OS/Arch. Guards the class of bug where Kubernetes shipped etcd 3.5.21 in its
//! arm64 3.6.0 image.
//!
//! The ELF identification is 20 bytes at fixed offsets; a parsing crate would add a dependency
//! for less code than this check.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use semver::Version;

use crate::platform::{Arch, ElfIdent};
use hostio::process::Cmd;

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("`{name}` is not an ELF binary{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    NotElf { name: String, detail: String },
    #[error("`{name}` is built for {actual}, but the image arch `{arch}` needs {expected}")]
    WrongArch {
        name: String,
        arch: Arch,
        expected: String,
        actual: String,
    },
    #[error("`{name}` reports {what} `{actual}`, expected `{expected}`\n  output: {output}")]
    WrongVersion {
        name: String,
        what: String,
        expected: String,
        actual: String,
        output: String,
    },
    #[error("running `{name}` to check its version failed: {source}")]
    Run {
        name: String,
        source: hostio::process::ProcessError,
    },
    #[error("writing a temp copy of `{name}`: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Reads the ELF identification of `bytes`.
pub fn elf_ident(name: &str, bytes: &[u8]) -> Result<ElfIdent, BinaryError> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err(BinaryError::NotElf {
            name: name.into(),
            detail: String::new(),
        });
    }
    let class = bytes[4];
    let data = bytes[5];
    let machine = match data {
        1 => u16::from_le_bytes([bytes[18], bytes[19]]),
        2 => u16::from_be_bytes([bytes[18], bytes[19]]),
        other => {
            return Err(BinaryError::NotElf {
                name: name.into(),
                detail: format!("unknown data encoding {other}"),
            })
        }
    };
    Ok(ElfIdent {
        class,
        data,
        machine,
    })
}

/// The ELF machine, class and endianness of `bytes` must be those of `arch`.
pub fn check_elf(name: &str, bytes: &[u8], arch: Arch) -> Result<(), BinaryError> {
    let actual = elf_ident(name, bytes)?;
    let expected = arch.elf();
    if actual != expected {
        return Err(BinaryError::WrongArch {
            name: name.into(),
            arch,
            expected: Arch::describe_elf(expected),
            actual: Arch::describe_elf(actual),
        });
    }
    Ok(())
}

/// How a binary of `arch` can be run here, if at all.
pub fn runner(arch: Arch) -> Option<Vec<String>> {
    if Arch::host() == Some(arch) {
        return Some(Vec::new());
    }
    which::which(arch.qemu_binary())
        .ok()
        .map(|q| vec![q.display().to_string()])
}

/// Outcome of a version check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionCheck {
    Verified,
    /// Not runnable here (foreign arch and no qemu-user).
    Skipped,
}

/// Runs the binary (`etcd --version`, `etcdctl version`, `etcdutl version`) and checks the
/// version it reports and, for etcd, the Go OS/Arch.
pub fn check_version(
    name: &str,
    bytes: &[u8],
    arch: Arch,
    expected: &Version,
) -> Result<VersionCheck, BinaryError> {
    let Some(prefix) = runner(arch) else {
        return Ok(VersionCheck::Skipped);
    };
    let io = |source| BinaryError::Io {
        name: name.into(),
        source,
    };
    let dir = tempfile::tempdir().map_err(io)?;
    let path = dir.path().join(name);
    {
        let mut f = std::fs::File::create(&path).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(io)?;
    }
    let output = run_version(&prefix, &path, name).map_err(|source| BinaryError::Run {
        name: name.into(),
        source,
    })?;
    let reported = parse_reported_version(name, &output);
    let wrong = |what: &str, expected: String, actual: String| BinaryError::WrongVersion {
        name: name.into(),
        what: what.into(),
        expected,
        actual,
        output: output.trim().replace('\n', " | "),
    };
    // Build metadata (`3.4.23+patched`, from a patch) does not change which release it is.
    let same = |v: &str| {
        Version::parse(v)
            .map(|r| {
                r.major == expected.major
                    && r.minor == expected.minor
                    && r.patch == expected.patch
                    && r.pre == expected.pre
            })
            .unwrap_or(false)
    };
    match reported {
        Some(v) if same(&v) => {}
        Some(v) => return Err(wrong("version", expected.to_string(), v)),
        None => return Err(wrong("version", expected.to_string(), "(none)".into())),
    }
    if name == "etcd" {
        if let Some(os_arch) = output.lines().find_map(|l| l.strip_prefix("Go OS/Arch:")) {
            let want = format!("linux/{arch}");
            if os_arch.trim() != want {
                return Err(wrong("Go OS/Arch", want, os_arch.trim().into()));
            }
        }
    }
    Ok(VersionCheck::Verified)
}

fn run_version(
    prefix: &[String],
    path: &Path,
    name: &str,
) -> Result<String, hostio::process::ProcessError> {
    let (program, mut args): (String, Vec<String>) = match prefix.split_first() {
        Some((q, rest)) => (
            q.clone(),
            rest.iter()
                .cloned()
                .chain([path.display().to_string()])
                .collect(),
        ),
        None => (path.display().to_string(), Vec::new()),
    };
    if name == "etcd" {
        args.push("--version".into());
    } else {
        args.push("version".into());
    }
    let out = Cmd::new(program)
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds the version in `etcd --version` (`etcd Version: X`), `etcdctl version`
/// (`etcdctl version: X`) or `etcdutl version` output.
pub fn parse_reported_version(name: &str, output: &str) -> Option<String> {
    let prefixes = [format!("{name} Version:"), format!("{name} version:")];
    output.lines().find_map(|line| {
        let line = line.trim();
        prefixes
            .iter()
            .find_map(|p| line.strip_prefix(p.as_str()))
            .map(|v| v.trim().to_string())
    })
}

/// True when the file at `path` can be run here for `arch`.
pub fn can_run(arch: Arch) -> bool {
    runner(arch).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        let m = if data == 2 {
            machine.to_be_bytes()
        } else {
            machine.to_le_bytes()
        };
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn every_arch_accepts_its_own_header() {
        for arch in Arch::ALL {
            let e = arch.elf();
            check_elf("etcd", &header(e.class, e.data, e.machine), arch).unwrap();
        }
    }

    // guards: an arm64 etcd packed under the amd64 name (k/k#132368 class of bug)
    #[test]
    fn arm64_binary_in_amd64_image_is_refused() {
        let e = Arch::Arm64.elf();
        let err = check_elf("etcd", &header(e.class, e.data, e.machine), Arch::Amd64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("64-bit little-endian AArch64"), "{err}");
        assert!(err.contains("x86-64"), "{err}");
    }

    #[test]
    fn endianness_matters() {
        let e = Arch::S390x.elf();
        assert!(check_elf("etcd", &header(e.class, 1, e.machine), Arch::S390x).is_err());
    }

    #[test]
    fn scripts_are_not_elf() {
        assert!(matches!(
            check_elf("etcd", b"#!/bin/sh\necho 3.5.1\n", Arch::Amd64),
            Err(BinaryError::NotElf { .. })
        ));
    }

    #[test]
    fn version_lines() {
        let etcd = "etcd Version: 3.5.1\nGit SHA: e8732fb5f\nGo Version: go1.16.3\nGo OS/Arch: linux/amd64\n";
        assert_eq!(
            parse_reported_version("etcd", etcd).as_deref(),
            Some("3.5.1")
        );
        let ctl = "etcdctl version: 3.4.23\nAPI version: 3.4\n";
        assert_eq!(
            parse_reported_version("etcdctl", ctl).as_deref(),
            Some("3.4.23")
        );
        assert_eq!(
            parse_reported_version("etcdutl", "etcdutl version: 3.5.0\n").as_deref(),
            Some("3.5.0")
        );
    }
}
