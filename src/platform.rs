//! Target architectures: every fact etcdimg needs about one of the five image arches lives here
//! (GOARCH, OCI variant, ELF header values, qemu-user binary, Rust target). No I/O.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Amd64,
    Arm,
    Arm64,
    Ppc64le,
    S390x,
}

/// ELF identification the binaries of an arch must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfIdent {
    /// EI_CLASS: 1 = 32-bit, 2 = 64-bit.
    pub class: u8,
    /// EI_DATA: 1 = little endian, 2 = big endian.
    pub data: u8,
    /// e_machine.
    pub machine: u16,
}

impl Arch {
    pub const ALL: [Arch; 5] = [
        Arch::Amd64,
        Arch::Arm,
        Arch::Arm64,
        Arch::Ppc64le,
        Arch::S390x,
    ];

    /// The name used in etcd release tarballs, GOARCH and OCI `architecture`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm => "arm",
            Arch::Arm64 => "arm64",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
        }
    }

    /// OCI platform variant. The Makefile's `docker manifest annotate` set none; the image spec
    /// says arm is v7 (what GOARM=7 builds) and arm64 is v8.
    pub fn variant(self) -> Option<&'static str> {
        match self {
            Arch::Arm => Some("v7"),
            Arch::Arm64 => Some("v8"),
            _ => None,
        }
    }

    pub fn elf(self) -> ElfIdent {
        match self {
            Arch::Amd64 => ElfIdent {
                class: 2,
                data: 1,
                machine: 62,
            },
            Arch::Arm => ElfIdent {
                class: 1,
                data: 1,
                machine: 40,
            },
            Arch::Arm64 => ElfIdent {
                class: 2,
                data: 1,
                machine: 183,
            },
            Arch::Ppc64le => ElfIdent {
                class: 2,
                data: 1,
                machine: 21,
            },
            Arch::S390x => ElfIdent {
                class: 2,
                data: 2,
                machine: 22,
            },
        }
    }

    /// The qemu-user binary that runs this arch's programs on another host.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::Amd64 => "qemu-x86_64-static",
            Arch::Arm => "qemu-arm-static",
            Arch::Arm64 => "qemu-aarch64-static",
            Arch::Ppc64le => "qemu-ppc64le-static",
            Arch::S390x => "qemu-s390x-static",
        }
    }

    /// The Rust target that builds a static `migrate` for this arch.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
            Arch::Arm => "armv7-unknown-linux-gnueabihf",
            Arch::Ppc64le => "powerpc64le-unknown-linux-gnu",
            Arch::S390x => "s390x-unknown-linux-gnu",
        }
    }

    /// The arch of the machine etcdimg runs on, if it is one of ours.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            "arm" => Some(Arch::Arm),
            "powerpc64" if cfg!(target_endian = "little") => Some(Arch::Ppc64le),
            "s390x" => Some(Arch::S390x),
            _ => None,
        }
    }

    /// Describes an ELF identification in words, for error messages.
    pub fn describe_elf(ident: ElfIdent) -> String {
        let machine = match ident.machine {
            62 => "x86-64".to_string(),
            40 => "ARM".to_string(),
            183 => "AArch64".to_string(),
            21 => "PowerPC64".to_string(),
            22 => "S/390".to_string(),
            3 => "i386".to_string(),
            other => format!("machine {other}"),
        };
        let class = if ident.class == 1 { "32-bit" } else { "64-bit" };
        let data = if ident.data == 2 {
            "big-endian"
        } else {
            "little-endian"
        };
        format!("{class} {data} {machine}")
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown arch `{0}`, expected one of amd64, arm, arm64, ppc64le, s390x")]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownArch(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
        }
        assert!("x86_64".parse::<Arch>().is_err());
    }

    #[test]
    fn variants_follow_the_image_spec() {
        assert_eq!(Arch::Arm.variant(), Some("v7"));
        assert_eq!(Arch::Arm64.variant(), Some("v8"));
        assert_eq!(Arch::Amd64.variant(), None);
    }

    #[test]
    fn s390x_is_big_endian() {
        assert_eq!(Arch::S390x.elf().data, 2);
        assert_eq!(Arch::Ppc64le.elf().data, 1);
    }
}
