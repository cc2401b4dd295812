//! Swaps the default `etcd`/`etcdctl` for the target version's pair (unless
//! DO_NOT_MOVE_BINARIES=true). In the image, `etcd` may be a hard link to `etcd-<latest>`:
//! writing through it would overwrite that version. So the copy goes to a temp file in the same
//! directory and is renamed over the default name, which replaces the link, not its target.

use std::path::Path;

use semver::Version;

use crate::datadir::DataDir;
use crate::error::MigrateError;
use crate::options::Options;
use crate::report::log;

/// Makes the default `etcd` and `etcdctl` those of the version in the data dir's version.txt
/// (that version if bundled, else the newest bundled patch of its minor). Without a readable
/// version.txt, or with no bundled binary of its minor, the defaults stay as they are.
pub fn match_data(options: &Options) -> Result<(), MigrateError> {
    let pair = match DataDir::new(&options.data_dir).read_version() {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            log("the data dir has no version.txt; the default etcd stays as it is");
            return Ok(());
        }
        Err(e) => {
            log(&format!("{e}; the default etcd stays as it is"));
            return Ok(());
        }
    };
    let v = &pair.version;
    let exact = options
        .bundled_versions
        .iter()
        .find(|b| b.cmp_precedence(v).is_eq());
    let chosen = exact
        .cloned()
        .or_else(|| crate::plan::bundled_minor(&options.bundled_versions, v.major, v.minor));
    let Some(chosen) = chosen else {
        log(&format!(
            "no bundled etcd {}.{}.x for the data's version {v}; the default etcd stays as it is",
            v.major, v.minor
        ));
        return Ok(());
    };
    crate::engine::failpoint("binaries-before-replace");
    for name in ["etcd", "etcdctl"] {
        replace_default(&options.bin_dir, name, &chosen)?;
    }
    log(&format!(
        "the default etcd and etcdctl are {chosen}, for the data's version {pair}"
    ));
    Ok(())
}

/// Replaces `<bin_dir>/<name>` with a copy of `<bin_dir>/<name>-<version>`, keeping its mode.
pub fn replace_default(bin_dir: &Path, name: &str, version: &Version) -> Result<(), MigrateError> {
    let source = bin_dir.join(format!("{name}-{version}"));
    let dest = bin_dir.join(name);
    if !source.is_file() {
        return Err(MigrateError::MissingBinary {
            binary: source.display().to_string(),
            why: format!("making it the default `{name}`"),
        });
    }
    // A temp file with a random name beside it, the mode copied exactly, fsync, rename, fsync
    // the directory: never written through the old file, which may be a hard link.
    let result = hostio::fs::copy_atomic(&source, &dest);
    result.map_err(|source| MigrateError::Binaries {
        path: dest.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;

    // guards: writing through a hard link `etcd` -> `etcd-3.5.1` would turn etcd-3.5.1 into 3.4.23
    #[test]
    fn replaces_a_hard_link_without_touching_its_target() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("etcd-3.5.1"), "three five one").unwrap();
        fs::write(d.path().join("etcd-3.4.23"), "three four").unwrap();
        fs::set_permissions(
            d.path().join("etcd-3.4.23"),
            fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        fs::hard_link(d.path().join("etcd-3.5.1"), d.path().join("etcd")).unwrap();
        replace_default(d.path(), "etcd", &Version::new(3, 4, 23)).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("etcd")).unwrap(),
            "three four"
        );
        assert_eq!(
            fs::read_to_string(d.path().join("etcd-3.5.1")).unwrap(),
            "three five one"
        );
        assert_eq!(
            fs::metadata(d.path().join("etcd")).unwrap().mode() & 0o777,
            0o555
        );
        assert_eq!(
            fs::metadata(d.path().join("etcd-3.5.1")).unwrap().nlink(),
            1
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            3,
            "no temp file left"
        );
    }

    #[test]
    fn missing_source_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let err = replace_default(d.path(), "etcdctl", &Version::new(3, 5, 1)).unwrap_err();
        assert!(matches!(err, MigrateError::MissingBinary { .. }));
    }
}
