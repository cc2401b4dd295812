//! Release provenance: the build record each build leaves beside its image in the OCI layout,
//! the release report assembled from those records for an index (JSON, and SPDX 2.3), and the
//! OCI artifact manifest that attaches the report to the index (plus the referrers fallback
//! tag's index, for registries without the referrers API).
//!
//! Never: network I/O or spawning programs. Everything is a function of its inputs, so a rerun
//! over the same layout gives the same bytes, and re-attaching a report is a no-op.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// Annotation on a per-arch manifest's entry in the layout's index.json: the digest of its
/// build record blob.
pub const BUILD_RECORD_ANNOTATION: &str = "dev.etcdimg.build-record";
pub const BUILD_RECORD_MEDIA_TYPE: &str = "application/vnd.etcdimg.build-record.v1+json";
/// Media type of the release report blob, and the artifactType of its manifest.
pub const REPORT_MEDIA_TYPE: &str = "application/vnd.etcdimg.release-report.v1+json";
pub const SPDX_MEDIA_TYPE: &str = "application/spdx+json";
/// The OCI empty descriptor (`{}`), the config of an artifact manifest.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";
const SCHEMA: &str = "etcdimg.release-report.v1";

#[derive(Debug, Error)]
pub enum ReleaseError {
    #[error("the {arch} image `{manifest}` in the layout has no build record")]
    NoRecord { arch: String, manifest: String },
    #[error("the build record of the {arch} image describes {what} `{recorded}`, but the image has `{actual}`")]
    StaleRecord {
        arch: String,
        what: &'static str,
        recorded: String,
        actual: String,
    },
    #[error(
        "the referrers fallback tag holds something other than the release's index format ({media_type})"
    )]
    BadFallbackIndex { media_type: String },
    #[error("parsing a release document")]
    Json(#[from] serde_json::Error),
}

/// An upstream release tarball and the sha256 it was verified against (SHA256SUMS + pins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub version: String,
    pub url: String,
    pub sha256: String,
    /// sha256 of the SHA256SUMS it was verified against.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256sums: String,
}

/// One cross-compile of etcd from source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compile {
    pub version: String,
    pub builder: String,
    /// `go version` of the toolchain (or the golang image for the docker builder).
    pub toolchain: String,
    /// sha256 of that toolchain's `go` command (none for the docker builder).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub toolchain_sha256: String,
    pub goarm: Option<String>,
    pub mode: String,
    pub flags: Vec<String>,
    pub source: String,
    pub patches: Vec<String>,
    /// The build cache key: a digest of every input above and the source tree.
    pub key: String,
    /// The release's Go modules the tree was assembled from (`source = "module"`), each with
    /// the `h1:` sum the go command verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<GoModule>,
}

/// One Go module of an etcd source tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoModule {
    pub path: String,
    pub version: String,
    pub sum: String,
    /// Its folder in the tree.
    pub dir: String,
}

/// An executable in an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBinary {
    /// Its path in the image (`usr/local/bin/etcd-3.6.17`).
    pub path: String,
    /// Other paths of the same file (hard links: `usr/local/bin/etcd` for the default version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    pub sha256: String,
    pub size: u64,
    /// Built without a symbol table (`-ldflags=-s`, as etcd's release builds are).
    #[serde(default)]
    pub stripped: bool,
    /// Its Go build info (None for migrate, a Rust binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go: Option<crate::buildinfo::GoBuildInfo>,
    /// A Rust binary's crates, from its cargo-auditable section (migrate built by etcdimg).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rust: Option<crate::buildinfo::RustBuildInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub name: String,
    /// Digest of the platform manifest the image was built on.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    pub content: String,
}

/// Where an image's bytes came from: what one build knew and nothing in the image says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub platform: String,
    pub base: Base,
    pub upstream: Vec<Upstream>,
    pub compiles: Vec<Compile>,
    pub migrate_sha256: String,
    /// sha256 over migrate's source tree (its files, path dependencies and Cargo.lock); empty
    /// for a prebuilt `--migrate-binary`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub migrate_source_sha256: String,
    /// Every executable the build added, with its Go build info (the SBOM's packages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binaries: Vec<ImageBinary>,
    pub compression: String,
    pub binary_mode: String,
    pub source_date_epoch: u64,
    pub layers: Vec<Layer>,
}

/// A build's record of its image, stored as a blob in the layout and named by an annotation on
/// the image's index.json entry, so it travels with the layout (release.yml merges per-arch
/// layouts by copying blobs and entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub arch: String,
    /// The OCI manifest in the layout (a Docker-format push has another digest, same config).
    pub manifest_digest: String,
    pub config_digest: String,
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// The index a report describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    /// `registry/repository:tag` it is (or will be) pushed to.
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Etcd {
    pub latest: String,
    pub bundled: Vec<String>,
    pub revision: String,
    /// What the version policy had against these versions, when the release was allowed
    /// anyway (`--allow-unsafe-versions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsafe_versions_allowed: Vec<String>,
}

/// One per-arch image as pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportImage {
    pub arch: String,
    pub reference: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub config_digest: String,
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// The release report: everything a release manager needs to audit one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReport {
    pub schema: String,
    pub generator: String,
    pub image: String,
    pub tag: String,
    pub created: String,
    pub etcd: Etcd,
    pub index: IndexRef,
    pub images: Vec<ReportImage>,
    /// What the Go policy had against the binaries, when the release was allowed anyway
    /// (`--allow-unsupported-go`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported_go_allowed: Vec<String>,
    /// The vulnerability scan of every Go binary, when the release was scanned (`--vulndb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerabilities: Option<crate::scan::ScanReport>,
}

/// A per-arch image as it will be pushed, with its build record.
pub struct PushedImage<'a> {
    pub arch: String,
    pub reference: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The OCI manifest digest in the layout (what the record must name).
    pub layout_manifest_digest: String,
    pub config_digest: String,
    pub record: Option<&'a BuildRecord>,
}

pub struct ReportInput<'a> {
    pub image: String,
    pub tag: String,
    pub created: String,
    pub etcd: Etcd,
    pub index: IndexRef,
    pub images: Vec<PushedImage<'a>>,
    pub unsupported_go_allowed: Vec<String>,
}

/// Assembles the report; every image must carry a build record that matches it.
pub fn report(input: ReportInput<'_>) -> Result<ReleaseReport, ReleaseError> {
    let mut images = Vec::new();
    for i in input.images {
        let record = i.record.ok_or_else(|| ReleaseError::NoRecord {
            arch: i.arch.clone(),
            manifest: i.layout_manifest_digest.clone(),
        })?;
        for (what, recorded, actual) in [
            (
                "manifest",
                &record.manifest_digest,
                &i.layout_manifest_digest,
            ),
            ("config", &record.config_digest, &i.config_digest),
        ] {
            if recorded != actual {
                return Err(ReleaseError::StaleRecord {
                    arch: i.arch.clone(),
                    what,
                    recorded: recorded.clone(),
                    actual: actual.clone(),
                });
            }
        }
        images.push(ReportImage {
            arch: i.arch,
            reference: i.reference,
            manifest_digest: i.manifest_digest,
            manifest_media_type: i.manifest_media_type,
            config_digest: i.config_digest,
            provenance: record.provenance.clone(),
        });
    }
    Ok(ReleaseReport {
        schema: SCHEMA.into(),
        generator: generator(),
        image: input.image,
        tag: input.tag,
        created: input.created,
        etcd: input.etcd,
        index: input.index,
        images,
        unsupported_go_allowed: input.unsupported_go_allowed,
        vulnerabilities: None,
    })
}

fn generator() -> String {
    format!("etcdimg {}", env!("CARGO_PKG_VERSION"))
}

/// An SPDX ID from free text (`[A-Za-z0-9.-]` only).
fn spdx_id(parts: &[&str]) -> String {
    let raw = parts.join("-");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{clean}")
}

fn sha256_checksum(digest: &str) -> Value {
    json!([{ "algorithm": "SHA256", "checksumValue": digest.trim_start_matches("sha256:") }])
}

/// `pkg:oci/<name>@<digest>?repository_url=<registry/repository>` (purl spec, type `oci`).
fn oci_purl(reference: &str, digest: &str) -> String {
    let repository = reference
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(reference, |(repo, _)| repo);
    let name = repository.rsplit('/').next().unwrap_or(repository);
    format!(
        "pkg:oci/{name}@{}?repository_url={repository}",
        digest.replace(':', "%3A")
    )
}

fn package(
    id: &str,
    name: &str,
    version: Option<&str>,
    location: &str,
) -> serde_json::Map<String, Value> {
    let mut p = serde_json::Map::new();
    p.insert("SPDXID".into(), json!(id));
    p.insert("name".into(), json!(name));
    if let Some(v) = version {
        p.insert("versionInfo".into(), json!(v));
    }
    p.insert("downloadLocation".into(), json!(location));
    p.insert("filesAnalyzed".into(), json!(false));
    p.insert("licenseConcluded".into(), json!("NOASSERTION"));
    p.insert("copyrightText".into(), json!("NOASSERTION"));
    p
}

fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({ "spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": to })
}

/// Can `url` be an SPDX downloadLocation? SPDX 2.3 (section 7.7) wants a URL whose host is a
/// domain name with a top-level domain; a loopback mirror (`http://127.0.0.1:8080/...`) is not
/// one, so such a package says NOASSERTION and keeps the URL in `sourceInfo`.
fn spdx_download_location(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', ':']).next().unwrap_or("");
    let tld = host.rsplit('.').next().unwrap_or("");
    ["http", "https", "ftp", "git", "ssh", "sftp", "svn"].contains(&scheme)
        && host.contains('.')
        && (2..=5).contains(&tld.len())
        && tld.chars().all(|c| c.is_ascii_alphabetic())
}

/// A binary's SPDX package (image CONTAINS binary) and what it says it holds (binary CONTAINS
/// each), added to `libraries` once per purl: from Go build info, the Go standard library and
/// every module compiled in; from a Rust binary's cargo-auditable list, every crate linked in.
/// A Go dependency replaced by a directory of the release's own tree (`=> ./api`, as etcd's
/// builds do) is named by the module it stands for, at the version the build info records for
/// it: those directories are that module at that version.
fn binary_packages(
    arch: &str,
    image_id: &str,
    b: &ImageBinary,
    libraries: &mut BTreeMap<String, Value>,
    packages: &mut Vec<Value>,
    relationships: &mut Vec<Value>,
) {
    let name = b.path.rsplit('/').next().unwrap_or(&b.path);
    let id = spdx_id(&["Binary", arch, name]);
    let version =
        b.go.as_ref()
            .and_then(|g| g.main.as_ref())
            .map(|m| m.version.as_str())
            .or(b.rust.as_ref().map(|r| r.root.version.as_str()))
            .filter(|v| !v.is_empty() && *v != "(devel)");
    let mut p = package(&id, name, version, "NOASSERTION");
    p.insert("checksums".into(), sha256_checksum(&b.sha256));
    p.insert("primaryPackagePurpose".into(), json!("APPLICATION"));
    let mut paths = vec![format!("/{}", b.path)];
    paths.extend(b.links.iter().map(|l| format!("/{l}")));
    let built_with = match (&b.go, &b.rust) {
        (Some(g), _) => format!(", built with {}", g.go_version),
        (None, Some(r)) => format!(", Rust crate {} {}", r.root.name, r.root.version),
        (None, None) => String::new(),
    };
    p.insert(
        "sourceInfo".into(),
        json!(format!("at {}{built_with}", paths.join(", "))),
    );
    packages.push(Value::Object(p));
    relationships.push(relationship(image_id, "CONTAINS", &id));
    // (kind for the SPDX id, name, version, purl)
    let mut contained: Vec<(&str, String, String, String)> = Vec::new();
    if let Some(go) = &b.go {
        contained.push((
            "Go",
            "stdlib".to_string(),
            format!("go{}", go.stdlib_version()),
            crate::buildinfo::stdlib_purl(go),
        ));
        for m in go.main.iter().chain(go.deps.iter()) {
            let m = if m.is_local_replace() {
                m
            } else {
                m.effective()
            };
            if m.version.is_empty() || m.version == "(devel)" {
                continue;
            }
            contained.push((
                "Go",
                m.path.clone(),
                m.version.clone(),
                crate::buildinfo::purl(&m.path, &m.version),
            ));
        }
    }
    if let Some(rust) = &b.rust {
        for c in &rust.crates {
            contained.push(("Crate", c.name.clone(), c.version.clone(), c.purl()));
        }
    }
    for (kind, name, version, purl) in contained {
        let digest = crate::fetch::cache::sha256_hex(purl.as_bytes());
        let library_id = spdx_id(&[kind, &name, &version, &digest[..8]]);
        libraries.entry(purl.clone()).or_insert_with(|| {
            let mut p = package(&library_id, &name, Some(&version), "NOASSERTION");
            p.insert("primaryPackagePurpose".into(), json!("LIBRARY"));
            p.insert(
                "externalRefs".into(),
                json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                         "referenceLocator": purl }]),
            );
            Value::Object(p)
        });
        relationships.push(relationship(&id, "CONTAINS", &library_id));
    }
}

/// The etcd each image bundles (image CONTAINS each): an official tarball with its sha256 and
/// URL, or a compile from source with its toolchain, builder, flags and patches.
fn etcd_packages(
    image: &ReportImage,
    image_id: &str,
    packages: &mut Vec<Value>,
    relationships: &mut Vec<Value>,
) {
    for u in &image.provenance.upstream {
        let id = spdx_id(&["Etcd", &u.version, &image.arch]);
        let location = if spdx_download_location(&u.url) {
            u.url.as_str()
        } else {
            "NOASSERTION"
        };
        let mut p = package(&id, "etcd", Some(&u.version), location);
        p.insert(
            "sourceInfo".into(),
            json!(format!("downloaded from {}", u.url)),
        );
        p.insert("checksums".into(), sha256_checksum(&u.sha256));
        p.insert("licenseDeclared".into(), json!("Apache-2.0"));
        p.insert("supplier".into(), json!("Organization: etcd-io"));
        p.insert("primaryPackagePurpose".into(), json!("ARCHIVE"));
        packages.push(Value::Object(p));
        relationships.push(relationship(image_id, "CONTAINS", &id));
    }
    for c in &image.provenance.compiles {
        let id = spdx_id(&["Etcd", &c.version, &image.arch, "built"]);
        let mut p = package(&id, "etcd", Some(&c.version), "NOASSERTION");
        p.insert("licenseDeclared".into(), json!("Apache-2.0"));
        p.insert("primaryPackagePurpose".into(), json!("APPLICATION"));
        p.insert(
            "sourceInfo".into(),
            json!(format!(
                "built from {} with {} ({}; {}{}; flags: {}; patches: {})",
                c.source,
                c.toolchain,
                c.builder,
                c.mode,
                c.goarm
                    .as_deref()
                    .map(|g| format!(", GOARM={g}"))
                    .unwrap_or_default(),
                c.flags.join(" "),
                if c.patches.is_empty() {
                    "none".to_string()
                } else {
                    c.patches.join(", ")
                }
            )),
        );
        packages.push(Value::Object(p));
        relationships.push(relationship(image_id, "CONTAINS", &id));
    }
}

/// The report as an SPDX 2.3 JSON document: the index, each image, its base, and each etcd
/// it bundles (an upstream tarball with its sha256, or a compile from source).
pub fn spdx(report: &ReleaseReport) -> Value {
    let index_id = spdx_id(&["Index"]);
    let mut packages = Vec::new();
    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", &index_id)];
    let mut index = package(&index_id, &report.image, Some(&report.tag), "NOASSERTION");
    index.insert("checksums".into(), sha256_checksum(&report.index.digest));
    index.insert("primaryPackagePurpose".into(), json!("CONTAINER"));
    index.insert(
        "externalRefs".into(),
        json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                 "referenceLocator": oci_purl(&report.index.reference, &report.index.digest) }]),
    );
    packages.push(Value::Object(index));
    let mut bases = BTreeMap::new();
    // Go modules, Go standard libraries and Rust crates, one package per purl across the
    // document.
    let mut libraries = BTreeMap::new();
    for image in &report.images {
        let image_id = spdx_id(&["Image", &image.arch]);
        let mut p = package(
            &image_id,
            &format!("{} ({})", report.image, image.provenance.platform),
            Some(&report.tag),
            "NOASSERTION",
        );
        p.insert("checksums".into(), sha256_checksum(&image.manifest_digest));
        p.insert("primaryPackagePurpose".into(), json!("CONTAINER"));
        p.insert(
            "externalRefs".into(),
            json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                     "referenceLocator": oci_purl(&image.reference, &image.manifest_digest) }]),
        );
        packages.push(Value::Object(p));
        relationships.push(relationship(&index_id, "CONTAINS", &image_id));

        let base = &image.provenance.base;
        let base_id = spdx_id(&["Base", &base.digest]);
        bases.entry(base_id.clone()).or_insert_with(|| {
            let mut b = package(&base_id, &base.name, None, "NOASSERTION");
            b.insert("checksums".into(), sha256_checksum(&base.digest));
            b.insert("primaryPackagePurpose".into(), json!("CONTAINER"));
            Value::Object(b)
        });
        relationships.push(relationship(&image_id, "DESCENDANT_OF", &base_id));

        etcd_packages(image, &image_id, &mut packages, &mut relationships);
        for b in &image.provenance.binaries {
            binary_packages(
                &image.arch,
                &image_id,
                b,
                &mut libraries,
                &mut packages,
                &mut relationships,
            );
        }
    }
    packages.extend(bases.into_values());
    packages.extend(libraries.into_values());
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}:{}", report.image, report.tag),
        // Unique per document (SPDX 2.3 section 6.5): the index and the report's own digest.
        "documentNamespace": format!(
            "https://etcdimg.invalid/spdx/{}/{}/{}",
            report.image,
            report.index.digest.replace(':', "-"),
            crate::fetch::cache::sha256_hex(&crate::oci::canonical_json(report))
        ),
        "creationInfo": { "created": report.created, "creators": [format!("Tool: {}", report.generator.replace(' ', "-"))] },
        "packages": packages,
        "relationships": relationships,
    })
}

/// A blob of the artifact: its media type, bytes and a file name for `org.opencontainers.image.title`.
pub struct ArtifactBlob {
    pub media_type: String,
    pub title: String,
    pub bytes: Vec<u8>,
}

/// The manifest that carries the report blobs. For an OCI release: an OCI image manifest with
/// `subject` = the index, per the image spec 1.1 artifact guidance (empty config,
/// `artifactType`). For a Docker-format release (the index is a Docker manifest list): a Docker
/// schema 2 manifest with a `{}` config, since a release never mixes formats; Docker's format
/// has no `subject`, so it is listed under the fallback tag only.
pub fn artifact_manifest(subject: &IndexRef, blobs: &[ArtifactBlob], created: &str) -> Vec<u8> {
    let docker = subject.media_type == crate::oci::index::DOCKER_LIST;
    let layers: Vec<Value> = blobs
        .iter()
        .map(|b| {
            let mut l = json!({
                "mediaType": b.media_type,
                "digest": format!("sha256:{}", crate::fetch::cache::sha256_hex(&b.bytes)),
                "size": b.bytes.len(),
            });
            if !docker {
                l["annotations"] = json!({ "org.opencontainers.image.title": b.title });
            }
            l
        })
        .collect();
    let config_digest = format!("sha256:{}", crate::fetch::cache::sha256_hex(EMPTY_CONFIG));
    if docker {
        return crate::oci::canonical_json(&json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::index::DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": EMPTY_CONFIG.len(),
            },
            "layers": layers,
        }));
    }
    crate::oci::canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::index::OCI_MANIFEST,
        "artifactType": REPORT_MEDIA_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": config_digest,
            "size": EMPTY_CONFIG.len(),
            "data": "e30=",
        },
        "layers": layers,
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": { "org.opencontainers.image.created": created },
    }))
}

/// The media type of a Docker image config (the report artifact's, in a Docker-format release).
pub const DOCKER_CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";

/// The referrers fallback tag for a subject: `sha256-<hex>`.
pub fn fallback_tag(subject_digest: &str) -> String {
    subject_digest.replacen(':', "-", 1)
}

/// Adds the artifact to the fallback tag's index (`existing` is its current bytes, if the tag
/// exists). `None` when it is already listed: nothing to push. Entries by other tools stay.
pub fn merge_fallback_index(
    existing: Option<(&str, &[u8])>,
    artifact_digest: &str,
    artifact_size: u64,
    created: &str,
    docker: bool,
) -> Result<Option<Vec<u8>>, ReleaseError> {
    // A release never mixes formats: a Docker-format release lists its artifact in a Docker
    // manifest list, with the platform `unknown/unknown` that BuildKit gives attestations.
    let list_type = if docker {
        crate::oci::index::DOCKER_LIST
    } else {
        crate::oci::index::OCI_INDEX
    };
    let mut index: Value = match existing {
        Some((content_type, bytes)) => {
            let mut v: Value = serde_json::from_slice(bytes)?;
            // `mediaType` is optional in an OCI index; the response's Content-Type then says.
            if v.get("mediaType").is_none() && content_type.starts_with(list_type) {
                v["mediaType"] = json!(list_type);
            }
            v
        }
        None => json!({
            "schemaVersion": 2,
            "mediaType": list_type,
            "manifests": [],
        }),
    };
    let media_type = index
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if media_type != list_type {
        return Err(ReleaseError::BadFallbackIndex { media_type });
    }
    let manifests = index
        .as_object_mut()
        .expect("an object")
        .entry("manifests")
        .or_insert_with(|| json!([]));
    let Some(list) = manifests.as_array_mut() else {
        return Err(ReleaseError::BadFallbackIndex { media_type });
    };
    if list
        .iter()
        .any(|d| d.get("digest").and_then(Value::as_str) == Some(artifact_digest))
    {
        return Ok(None);
    }
    list.push(if docker {
        json!({
            "mediaType": crate::oci::index::DOCKER_MANIFEST,
            "digest": artifact_digest,
            "size": artifact_size,
            "platform": { "architecture": "unknown", "os": "unknown" },
        })
    } else {
        json!({
            "mediaType": crate::oci::index::OCI_MANIFEST,
            "digest": artifact_digest,
            "size": artifact_size,
            "artifactType": REPORT_MEDIA_TYPE,
            "annotations": { "org.opencontainers.image.created": created },
        })
    });
    Ok(Some(crate::oci::canonical_json(&index)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(arch: &str) -> BuildRecord {
        BuildRecord {
            arch: arch.into(),
            manifest_digest: format!("sha256:m-{arch}"),
            config_digest: format!("sha256:c-{arch}"),
            provenance: Provenance {
                platform: format!("linux/{arch}"),
                base: Base {
                    name: "docker.io/library/busybox:1.36.1".into(),
                    digest: format!("sha256:b-{arch}"),
                },
                upstream: vec![Upstream {
                    version: "3.5.1".into(),
                    url: "https://example.invalid/v3.5.1/etcd-v3.5.1-linux-amd64.tar.gz".into(),
                    sha256: "ab".repeat(32),
                    sha256sums: "cd".repeat(32),
                }],
                compiles: vec![Compile {
                    version: "3.4.23".into(),
                    builder: "go".into(),
                    toolchain: "go1.19.8".into(),
                    toolchain_sha256: String::new(),
                    goarm: None,
                    mode: "gopath".into(),
                    flags: vec!["-trimpath".into()],
                    source: "/usr/share/gocode".into(),
                    patches: vec![],
                    key: "k".into(),
                    modules: vec![],
                }],
                migrate_sha256: "cd".repeat(32),
                migrate_source_sha256: "ef".repeat(32),
                binaries: Vec::new(),
                compression: "gzip level 4".into(),
                binary_mode: "555".into(),
                source_date_epoch: 0,
                layers: vec![],
            },
        }
    }

    fn input<'a>(records: &'a [BuildRecord], config_of_amd64: &str) -> ReportInput<'a> {
        ReportInput {
            image: "r.example/etcd".into(),
            tag: "3.5.1-0".into(),
            created: "1970-01-01T00:00:00Z".into(),
            etcd: Etcd {
                latest: "3.5.1".into(),
                bundled: vec!["3.4.23".into(), "3.5.1".into()],
                revision: "0".into(),
                unsafe_versions_allowed: Vec::new(),
            },
            index: IndexRef {
                reference: "r.example/etcd:3.5.1-0".into(),
                digest: "sha256:i".into(),
                media_type: crate::oci::index::OCI_INDEX.into(),
                size: 10,
            },
            images: records
                .iter()
                .map(|r| PushedImage {
                    arch: r.arch.clone(),
                    reference: format!("r.example/etcd:3.5.1-0-linux-{}", r.arch),
                    manifest_digest: format!("sha256:docker-{}", r.arch),
                    manifest_media_type: "d".into(),
                    layout_manifest_digest: r.manifest_digest.clone(),
                    config_digest: if r.arch == "amd64" {
                        config_of_amd64.into()
                    } else {
                        r.config_digest.clone()
                    },
                    record: Some(r),
                })
                .collect(),
            unsupported_go_allowed: Vec::new(),
        }
    }

    #[test]
    fn report_takes_pushed_digests_and_record_provenance() {
        let records = [record("amd64"), record("arm64")];
        let r = report(input(&records, "sha256:c-amd64")).unwrap();
        assert_eq!(r.images.len(), 2);
        assert_eq!(r.images[0].manifest_digest, "sha256:docker-amd64");
        assert_eq!(r.images[1].provenance, records[1].provenance);
        assert_eq!(r.images[1].provenance.compiles[0].toolchain, "go1.19.8");
        assert_eq!(r.schema, SCHEMA);
    }

    #[test]
    fn a_stale_or_missing_record_is_refused() {
        let records = [record("amd64")];
        let e = report(input(&records, "sha256:other")).unwrap_err();
        assert!(e.to_string().contains("config `sha256:c-amd64`"), "{e}");
        let mut i = input(&records, "sha256:c-amd64");
        i.images[0].record = None;
        assert!(matches!(report(i), Err(ReleaseError::NoRecord { .. })));
    }

    #[test]
    fn spdx_names_every_package_with_valid_ids() {
        let records = [record("amd64"), record("arm64")];
        let doc = spdx(&report(input(&records, "sha256:c-amd64")).unwrap());
        let ids: Vec<&str> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["SPDXID"].as_str().unwrap())
            .collect();
        // index, 2 images, 2 tarballs, 2 compiles, 2 distinct bases
        assert_eq!(ids.len(), 9, "{ids:?}");
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in ids {
            assert!(id[8..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
        }
        for (url, ok) in [
            (
                "https://github.com/etcd-io/etcd/releases/download/v3.5.1/e.tar.gz",
                true,
            ),
            ("http://127.0.0.1:8080/v3.5.1/e.tar.gz", false),
            ("http://localhost/e.tar.gz", false),
            ("file:///srv/e.tar.gz", false),
        ] {
            assert_eq!(spdx_download_location(url), ok, "{url}");
        }
        assert_eq!(
            oci_purl("r.example:5000/k8s/etcd:3.5.1-0", "sha256:ab"),
            "pkg:oci/etcd@sha256%3Aab?repository_url=r.example:5000/k8s/etcd"
        );
    }

    #[test]
    fn the_fallback_index_keeps_others_and_adds_once() {
        const OCI: &str = crate::oci::index::OCI_INDEX;
        let first = merge_fallback_index(None, "sha256:a1", 5, "t", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            merge_fallback_index(Some((OCI, &first)), "sha256:a1", 5, "t", false).unwrap(),
            None
        );
        let second = merge_fallback_index(Some((OCI, &first)), "sha256:b2", 6, "t", false)
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&second).unwrap();
        let digests: Vec<&str> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, ["sha256:a1", "sha256:b2"]);
        let docker: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(merge_fallback_index(Some((OCI, docker)), "sha256:a1", 5, "t", false).is_err());
        // An index without mediaType is taken on its Content-Type.
        let bare: &[u8] = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(
            merge_fallback_index(Some((OCI, bare)), "sha256:a1", 5, "t", false)
                .unwrap()
                .is_some()
        );
        assert!(
            merge_fallback_index(Some(("application/json", bare)), "sha256:a1", 5, "t", false)
                .is_err()
        );
        assert_eq!(fallback_tag("sha256:abc"), "sha256-abc");
    }

    #[test]
    fn the_artifact_names_its_subject_and_blobs() {
        let subject = IndexRef {
            reference: "r/etcd:t".into(),
            digest: "sha256:i".into(),
            media_type: crate::oci::index::OCI_INDEX.into(),
            size: 3,
        };
        let m: Value = serde_json::from_slice(&artifact_manifest(
            &subject,
            &[ArtifactBlob {
                media_type: REPORT_MEDIA_TYPE.into(),
                title: "release.json".into(),
                bytes: b"{}".to_vec(),
            }],
            "t",
        ))
        .unwrap();
        assert_eq!(m["subject"]["digest"], "sha256:i");
        assert_eq!(m["artifactType"], REPORT_MEDIA_TYPE);
        assert_eq!(
            m["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(m["layers"][0]["size"], 2);
    }
}
