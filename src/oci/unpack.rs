//! Unpacks image layers into a root directory, as a container runtime applies them: in order,
//! each layer's whiteouts removing what lower layers put there (`.wh.<name>` removes `<name>`,
//! `.wh..wh..opq` empties its directory of lower-layer entries).
//!
//! Safe on hostile input: a path with `..`, a path through a symlink, or a hard link whose
//! target is outside the root or missing is an error, never a write outside `root`. Devices
//! and FIFOs are skipped (nothing here needs them; creating them needs privileges). Owners are
//! not applied; modes are.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("layer {layer}: entry `{entry}`: {why}")]
    Entry {
        layer: String,
        entry: String,
        why: String,
    },
}

/// What unpacking did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: usize,
    pub whiteouts: usize,
    /// Devices and FIFOs not created.
    pub skipped: usize,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The entry path as a clean relative path (`./a/b/` -> `a/b`), or why it is not one.
fn clean(name: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("`..` in the path".into()),
            Component::Prefix(_) => return Err("a path prefix".into()),
        }
    }
    Ok(out)
}

/// Fails if an existing ancestor of `rel` under `root` is a symlink (writing through it could
/// land outside the root).
fn no_symlink_ancestor(root: &Path, rel: &Path) -> Result<(), String> {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("its parent `{}` is a symlink", at.display()))
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!("its parent `{}` is not a directory", at.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (file, link or tree); nothing there is fine.
fn remove_any(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => fs::remove_file(path).map_err(io_err(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Applies `rel` if it is a whiteout: an opaque one (`.wh..wh..opq`) empties its directory of
/// what lower layers put there, `.wh.<name>` removes `<name>` unless this layer wrote it. True
/// when it was one.
fn whiteout(
    root: &Path,
    rel: &Path,
    mine: &HashSet<PathBuf>,
    stats: &mut Unpacked,
) -> Result<bool, UnpackError> {
    let file_name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    if file_name == ".wh..wh..opq" {
        stats.whiteouts += 1;
        if let Ok(rd) = fs::read_dir(root.join(&parent)) {
            for child in rd.flatten() {
                if !mine.contains(&parent.join(child.file_name())) {
                    remove_any(&child.path())?;
                }
            }
        }
        return Ok(true);
    }
    if let Some(hidden) = file_name.strip_prefix(".wh.") {
        stats.whiteouts += 1;
        let target = parent.join(hidden);
        if !mine.contains(&target) {
            remove_any(&root.join(&target))?;
        }
        return Ok(true);
    }
    Ok(false)
}

/// A directory at `dest` with `mode` (whatever else was there replaced).
fn directory(dest: &Path, mode: u32) -> Result<(), UnpackError> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            remove_any(dest)?;
            fs::create_dir_all(dest).map_err(io_err(dest))?;
        }
        Err(_) => fs::create_dir_all(dest).map_err(io_err(dest))?,
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(io_err(dest))
}

/// Applies one uncompressed tar layer (`name` is for messages) onto `root`.
pub fn apply_layer(
    name: &str,
    tar_stream: impl Read,
    root: &Path,
    stats: &mut Unpacked,
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(tar_stream);
    // Paths this layer wrote: an opaque whiteout or a whiteout removes only lower layers' entries.
    let mut mine: HashSet<PathBuf> = HashSet::new();
    let bad = |entry: &Path, why: String| UnpackError::Entry {
        layer: name.into(),
        entry: entry.display().to_string(),
        why,
    };
    for entry in archive.entries().map_err(io_err(root))? {
        let mut entry = entry.map_err(io_err(root))?;
        let raw = entry.path().map_err(io_err(root))?.into_owned();
        let rel = clean(&raw).map_err(|why| bad(&raw, why))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        no_symlink_ancestor(root, &rel).map_err(|why| bad(&raw, why))?;
        if whiteout(root, &rel, &mine, stats)? {
            continue;
        }
        let dest = root.join(&rel);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(io_err(&dest))? & 0o7777;
        stats.entries += 1;
        if kind.is_dir() {
            directory(&dest, mode)?;
            mine.insert(rel);
            continue;
        }
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).map_err(io_err(p))?;
        }
        remove_any(&dest)?;
        if kind.is_file() {
            let mut out = fs::File::create(&dest).map_err(io_err(&dest))?;
            io::copy(&mut entry, &mut out).map_err(io_err(&dest))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).map_err(io_err(&dest))?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(io_err(&dest))?
                .ok_or_else(|| bad(&raw, "a symlink without a target".into()))?;
            std::os::unix::fs::symlink(&target, &dest).map_err(io_err(&dest))?;
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(io_err(&dest))?
                .ok_or_else(|| bad(&raw, "a hard link without a target".into()))?;
            let target = clean(&target).map_err(|why| bad(&raw, format!("link target: {why}")))?;
            no_symlink_ancestor(root, &target)
                .map_err(|why| bad(&raw, format!("link target: {why}")))?;
            let from = root.join(&target);
            match fs::symlink_metadata(&from) {
                Ok(m) if m.is_file() => fs::hard_link(&from, &dest).map_err(io_err(&dest))?,
                _ => {
                    return Err(bad(
                        &raw,
                        format!(
                            "hard link to `{}`, which is not a file here",
                            target.display()
                        ),
                    ))
                }
            }
        } else {
            stats.entries -= 1;
            stats.skipped += 1;
            continue;
        }
        mine.insert(rel);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8], u32),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Fifo(&'a str),
    }

    fn layer(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_ustar();
            let (path, data): (&str, &[u8]) = match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    (p, b"")
                }
                E::File(p, d, m) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*m);
                    (p, d)
                }
                E::Link(p, t) | E::Hard(p, t) => {
                    h.set_entry_type(if matches!(e, E::Link(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    h.set_link_name(t).unwrap();
                    (p, b"")
                }
                E::Fifo(p) => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_mode(0o644);
                    (p, b"")
                }
            };
            h.set_size(data.len() as u64);
            // Raw names, so that hostile paths reach the unpacker unchanged.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, layers: &[Vec<u8>]) -> Result<Unpacked, UnpackError> {
        let mut stats = Unpacked::default();
        for (i, l) in layers.iter().enumerate() {
            apply_layer(&format!("#{i}"), l.as_slice(), root, &mut stats)?;
        }
        Ok(stats)
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let base = layer(&[
            E::Dir("a/"),
            E::File("a/b", b"b", 0o644),
            E::File("a/c", b"c", 0o555),
            E::Dir("d/"),
            E::File("d/x", b"x", 0o644),
            E::File("e", b"e", 0o644),
            E::Fifo("dev/fifo"),
        ]);
        let top = layer(&[
            E::File("a/.wh.b", b"", 0o644),
            E::File(".wh.e", b"", 0o644),
            E::File("d/y", b"y", 0o600),
            // Opaque after y: y is this layer's, so it stays; x goes.
            E::File("d/.wh..wh..opq", b"", 0o644),
            E::Hard("f", "a/c"),
            E::Link("g", "a/c"),
            E::File("./h", b"replaced later", 0o644),
            E::File("h", b"h", 0o640),
        ]);
        let stats = apply(r, &[base, top]).unwrap();
        assert!(!r.join("a/b").exists() && !r.join("e").exists() && !r.join("d/x").exists());
        assert_eq!(fs::read(r.join("d/y")).unwrap(), b"y");
        assert_eq!(fs::read(r.join("h")).unwrap(), b"h");
        let mode = |p: &str| fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode("a/c"), mode("d/y"), mode("h")), (0o555, 0o600, 0o640));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(r.join("f")).unwrap().ino(),
            fs::metadata(r.join("a/c")).unwrap().ino(),
            "a hard link shares the inode"
        );
        assert_eq!(fs::read_link(r.join("g")).unwrap(), Path::new("a/c"));
        assert!(!r.join("dev/fifo").exists());
        assert_eq!((stats.whiteouts, stats.skipped), (3, 1));
    }

    #[test]
    fn hostile_layers_never_write_outside_the_root() {
        for (what, l) in [
            ("dotdot", layer(&[E::File("../escape", b"x", 0o644)])),
            (
                "through a symlink",
                layer(&[E::Link("up", "/tmp"), E::File("up/escape", b"x", 0o644)]),
            ),
            ("hard link out", layer(&[E::Hard("h", "../../etc/passwd")])),
            ("hard link to nothing", layer(&[E::Hard("h", "missing")])),
        ] {
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("root");
            fs::create_dir(&root).unwrap();
            let err = apply(&root, &[l]).unwrap_err();
            assert!(matches!(err, UnpackError::Entry { .. }), "{what}: {err}");
            assert!(!outer.path().join("escape").exists(), "{what}");
            assert!(!Path::new("/tmp/escape").exists(), "{what}");
        }
    }
}
