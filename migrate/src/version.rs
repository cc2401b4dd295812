//! `version.txt`: `<semver>/<etcd2|etcd3>`, e.g. `3.4.23/etcd3`.

use std::fmt;

use semver::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Storage {
    Etcd2,
    Etcd3,
}

impl Storage {
    pub fn parse(s: &str) -> Result<Storage, String> {
        match s {
            "etcd2" => Ok(Storage::Etcd2),
            "etcd3" => Ok(Storage::Etcd3),
            other => Err(format!("unrecognized storage version: {other}")),
        }
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Storage::Etcd2 => "etcd2",
            Storage::Etcd3 => "etcd3",
        })
    }
}

/// A version and storage pair, as in version.txt.
#[derive(Debug, Clone)]
pub struct VersionPair {
    pub version: Version,
    pub storage: Storage,
}

/// Equality as the original defines it: SemVer precedence (prerelease counts, build metadata
/// does not) and the same storage.
impl PartialEq for VersionPair {
    fn eq(&self, other: &Self) -> bool {
        self.version.cmp_precedence(&other.version).is_eq() && self.storage == other.storage
    }
}

impl Eq for VersionPair {}

impl fmt::Display for VersionPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.version, self.storage)
    }
}

/// Strict SemVer 2.0: three numeric parts, optional prerelease/build, no `v`, no leading zeros.
pub fn parse_version(s: &str) -> Result<Version, String> {
    Version::parse(s).map_err(|e| format!("invalid version `{s}`: {e}"))
}

impl VersionPair {
    pub fn new(version: Version, storage: Storage) -> VersionPair {
        VersionPair { version, storage }
    }

    /// Parses version.txt contents (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<VersionPair, String> {
        let s = text.trim();
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() != 2 {
            return Err(format!(
                "malformed version file, expected <major>.<minor>.<patch>/<storage> but got `{s}`"
            ));
        }
        let version = parse_version(parts[0])?;
        let storage = Storage::parse(parts[1])?;
        Ok(VersionPair { version, storage })
    }

    pub fn major_minor_equals(&self, other: &Version) -> bool {
        self.version.major == other.major && self.version.minor == other.minor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_roundtrip(input: &str, version: &str, storage: Storage) {
        let p = VersionPair::parse(input).unwrap();
        assert_eq!(
            p,
            VersionPair::new(Version::parse(version).unwrap(), storage)
        );
        assert_eq!(p.to_string(), input);
    }

    // Reference §5.1, "Unit: versions".
    #[test]
    fn parse_and_roundtrip() {
        check_roundtrip("3.1.2/etcd3", "3.1.2", Storage::Etcd3);
        check_roundtrip("2.2.1/etcd2", "2.2.1", Storage::Etcd2);
        check_roundtrip("1.1.1-rc.0/etcd3", "1.1.1-rc.0", Storage::Etcd3);
        check_roundtrip("10.100.1000/etcd3", "10.100.1000", Storage::Etcd3);
    }

    #[test]
    fn inequality() {
        let a = VersionPair::parse("2.2.2/etcd2").unwrap();
        assert_ne!(a, VersionPair::parse("2.2.1/etcd2").unwrap());
        assert_ne!(
            VersionPair::parse("2.2.1/etcd3").unwrap(),
            VersionPair::parse("2.2.1/etcd2").unwrap()
        );
        // build metadata does not count
        assert_eq!(
            VersionPair::parse("3.5.1+x/etcd3").unwrap(),
            VersionPair::parse("3.5.1/etcd3").unwrap()
        );
    }

    #[test]
    fn unparsable() {
        for bad in [
            "1.1/etcd3",
            "1.1.1.1/etcd3",
            "1.1.1/etcd4",
            "",
            "3.5.1",
            "3.5.1/etcd3/x",
            "v3.5.1/etcd3",
            "03.5.1/etcd3",
        ] {
            assert!(VersionPair::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn whitespace_is_trimmed() {
        assert_eq!(
            VersionPair::parse("3.1.12/etcd3\n").unwrap().to_string(),
            "3.1.12/etcd3"
        );
    }

    #[test]
    fn major_minor() {
        let p = |s: &str| VersionPair::parse(&format!("{s}/etcd3")).unwrap();
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(p("3.1.2").major_minor_equals(&v("3.1.0")));
        assert!(p("3.1.2").major_minor_equals(&v("3.1.2")));
        assert!(!p("3.0.0").major_minor_equals(&v("3.1.0")));
        assert!(!p("2.0.0").major_minor_equals(&v("3.0.0")));
    }
}
