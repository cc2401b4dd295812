//! Image config and manifest: the base's config plus our layers, env, labels and platform.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::layer::LayerDigests;
use super::{canonical_json, descriptor, Descriptor, ImageManifest, MediaType};
use crate::fetch::cache::sha256_hex;
use crate::platform::Arch;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("base config is not a JSON object")]
    ConfigNotObject,
    #[error("base config lists {diff_ids} diff_ids but its manifest has {layers} layers")]
    LayerCountMismatch { diff_ids: usize, layers: usize },
    #[error("building the manifest: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// A layer etcdimg adds, with the history line that describes it.
#[derive(Debug, Clone)]
pub struct AddedLayer {
    pub digests: LayerDigests,
    pub created_by: String,
}

/// Everything that determines one image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub base_config: Value,
    /// Base layers, byte for byte (media types mapped to their OCI equivalents).
    pub base_layers: Vec<Descriptor>,
    pub added: Vec<AddedLayer>,
    pub arch: Arch,
    /// Variables set in the config env (replacing any base value of the same name).
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub exposed_ports: Vec<u16>,
    /// RFC 3339.
    pub created: String,
}

/// A finished image: the exact bytes of its config and manifest.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub layers: Vec<Descriptor>,
}

/// RFC 3339 (UTC) for a unix timestamp, without a date crate.
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The container config (`config`): the spec's environment (replacing a base's value of the
/// same variable), labels and exposed ports over the base's.
fn run_config(obj: &mut serde_json::Map<String, Value>, spec: &ImageSpec) {
    let inner = obj.entry("config").or_insert_with(|| json!({}));
    if !inner.is_object() {
        *inner = json!({});
    }
    let inner = inner.as_object_mut().expect("object");
    let mut env: Vec<String> = inner
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for (key, value) in &spec.env {
        let prefix = format!("{key}=");
        let line = format!("{key}={value}");
        match env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(existing) => *existing = line,
            None => env.push(line),
        }
    }
    if !env.is_empty() {
        inner.insert("Env".into(), json!(env));
    }
    let labels = inner.entry("Labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    let labels = labels.as_object_mut().expect("object");
    for (k, v) in &spec.labels {
        labels.insert(k.clone(), json!(v));
    }
    if !spec.exposed_ports.is_empty() {
        let ports = inner.entry("ExposedPorts").or_insert_with(|| json!({}));
        if !ports.is_object() {
            *ports = json!({});
        }
        let ports = ports.as_object_mut().expect("object");
        for p in &spec.exposed_ports {
            ports.insert(format!("{p}/tcp"), json!({}));
        }
    }
}

/// The added layers' diff_ids after the base's (whose count must match its layers) and a
/// history entry for each.
fn add_layers(
    obj: &mut serde_json::Map<String, Value>,
    spec: &ImageSpec,
) -> Result<(), ImageError> {
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let diff_ids = rootfs
        .as_object_mut()
        .ok_or(ImageError::ConfigNotObject)?
        .entry("diff_ids")
        .or_insert_with(|| json!([]));
    let ids = diff_ids.as_array_mut().ok_or(ImageError::ConfigNotObject)?;
    if ids.len() != spec.base_layers.len() {
        return Err(ImageError::LayerCountMismatch {
            diff_ids: ids.len(),
            layers: spec.base_layers.len(),
        });
    }
    for added in &spec.added {
        ids.push(json!(format!("sha256:{}", added.digests.diff_id)));
    }
    let history = obj.entry("history").or_insert_with(|| json!([]));
    if let Some(h) = history.as_array_mut() {
        for added in &spec.added {
            h.push(json!({"created": spec.created, "created_by": added.created_by, "comment": "etcdimg"}));
        }
    }
    Ok(())
}

pub fn build(spec: &ImageSpec) -> Result<BuiltImage, ImageError> {
    let mut config = spec.base_config.clone();
    let obj = config.as_object_mut().ok_or(ImageError::ConfigNotObject)?;
    obj.insert("architecture".into(), json!(spec.arch.name()));
    obj.insert("os".into(), json!("linux"));
    match spec.arch.variant() {
        Some(v) => obj.insert("variant".into(), json!(v)),
        None => obj.remove("variant"),
    };
    obj.insert("created".into(), json!(spec.created));
    // Fields describing how the *base* was built say nothing true about this image.
    for stale in ["container", "container_config", "docker_version"] {
        obj.remove(stale);
    }

    run_config(obj, spec);
    add_layers(obj, spec)?;

    let config_bytes = canonical_json(&config);
    let config_digest = sha256_hex(&config_bytes);
    let mut layers = spec.base_layers.clone();
    for added in &spec.added {
        layers.push(descriptor(
            MediaType::ImageLayerGzip,
            &added.digests.digest,
            added.digests.size,
        ));
    }
    let annotations: HashMap<String, String> = spec.annotations.clone().into_iter().collect();
    let mut builder = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config_digest,
            config_bytes.len() as u64,
        ))
        .layers(layers.clone());
    if !annotations.is_empty() {
        builder = builder.annotations(annotations);
    }
    let manifest: ImageManifest = builder.build()?;
    let manifest_bytes = canonical_json(&manifest);
    let manifest_digest = sha256_hex(&manifest_bytes);
    Ok(BuiltImage {
        config: config_bytes,
        config_digest,
        manifest: manifest_bytes,
        manifest_digest,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            base_config: json!({
                "architecture": "amd64", "os": "linux", "container": "abc",
                "config": {"Env": ["PATH=/bin", "FOO=1"], "Cmd": ["sh"]},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
                "history": [{"created_by": "base"}]
            }),
            base_layers: vec![descriptor(MediaType::ImageLayerGzip, &"1".repeat(64), 10)],
            added: vec![AddedLayer {
                digests: LayerDigests {
                    digest: "2".repeat(64),
                    diff_id: "3".repeat(64),
                    size: 20,
                },
                created_by: "etcd 3.5.1".into(),
            }],
            arch: Arch::Arm,
            env: vec![
                ("FOO".into(), "2".into()),
                ("ETCD_UNSUPPORTED_ARCH".into(), "arm".into()),
            ],
            labels: BTreeMap::from([("org.opencontainers.image.version".into(), "3.5.1-0".into())]),
            annotations: BTreeMap::from([("a".into(), "b".into())]),
            exposed_ports: vec![2379, 2380],
            created: rfc3339(0),
        }
    }

    #[test]
    fn config_keeps_base_and_adds_ours() {
        let built = build(&spec()).unwrap();
        let c: Value = serde_json::from_slice(&built.config).unwrap();
        assert_eq!(c["architecture"], "arm");
        assert_eq!(c["variant"], "v7");
        assert_eq!(
            c["config"]["Env"],
            json!(["PATH=/bin", "FOO=2", "ETCD_UNSUPPORTED_ARCH=arm"])
        );
        assert_eq!(c["config"]["Cmd"], json!(["sh"]));
        assert_eq!(c["config"]["ExposedPorts"]["2379/tcp"], json!({}));
        assert_eq!(
            c["rootfs"]["diff_ids"][1],
            format!("sha256:{}", "3".repeat(64))
        );
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert!(c.get("container").is_none());
        let m: Value = serde_json::from_slice(&built.manifest).unwrap();
        assert_eq!(
            m["config"]["digest"],
            format!("sha256:{}", built.config_digest)
        );
        assert_eq!(m["layers"].as_array().unwrap().len(), 2);
        assert_eq!(m["annotations"]["a"], "b");
    }

    #[test]
    fn mismatched_base_is_refused() {
        let mut s = spec();
        s.base_layers.clear();
        assert!(matches!(
            build(&s),
            Err(ImageError::LayerCountMismatch { .. })
        ));
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
