//! docker-archive tarballs (`docker save` format), loadable by `docker load` and readable by
//! `skopeo ... docker-archive:FILE`: `manifest.json`, the config, and the (gzip) layers.

use std::io::{self, Write};
use std::path::Path;

use serde_json::json;

use super::canonical_json;

/// One image to put in the archive.
pub struct ArchiveImage<'a> {
    pub repo_tag: String,
    pub config: &'a [u8],
    pub config_hex: &'a str,
    /// (hex digest, path of the blob) in manifest order.
    pub layers: Vec<(String, &'a Path)>,
}

/// Writes the archive to `dest` atomically (temp file + rename).
pub fn write(dest: &Path, image: &ArchiveImage<'_>, mtime: u64) -> io::Result<()> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = hostio::fs::temp_file_in(dir, ".tmp-", hostio::fs::FILE_MODE)?;
    {
        let mut tar = tar::Builder::new(io::BufWriter::new(tmp.as_file()));
        tar.mode(tar::HeaderMode::Deterministic);
        let mut add = |name: &str, data: &mut dyn io::Read, size: u64| -> io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(mtime);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, data)
        };
        let config_name = format!("blobs/sha256/{}", image.config_hex);
        let layer_names: Vec<String> = image
            .layers
            .iter()
            .map(|(h, _)| format!("blobs/sha256/{h}"))
            .collect();
        let manifest =
            json!([{ "Config": config_name, "RepoTags": [image.repo_tag], "Layers": layer_names }]);
        let manifest = canonical_json(&manifest);
        add("manifest.json", &mut &manifest[..], manifest.len() as u64)?;
        add(
            &config_name,
            &mut &image.config[..],
            image.config.len() as u64,
        )?;
        let mut written = std::collections::BTreeSet::new();
        for ((hex, path), name) in image.layers.iter().zip(&layer_names) {
            if !written.insert(hex.clone()) {
                continue;
            }
            let mut f = std::fs::File::open(path)?;
            let size = f.metadata()?.len();
            add(name, &mut f, size)?;
        }
        tar.into_inner()?.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}
