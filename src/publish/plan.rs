//! What a push would do, read-only: the plan behind `etcdimg plan` (tags, blobs, the index,
//! the release report), its summary and its rendering. HEAD and GET only, with pull scopes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::Serialize;

use super::layout::{ArchImage, IndexPlan, PushOptions, Target};
use super::report;
use crate::registry::push::{short, LocalBlob, Pusher, TagChange};
use crate::settings::Settings;

/// Work the build did locally to compute the digests.
#[derive(Debug, Serialize)]
pub struct LocalWork {
    pub arch: String,
    /// `download` (fetched by this plan, now cached), `compile` (compiled by this plan, now
    /// cached) or `cached`.
    pub action: String,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlobAction {
    pub digest: String,
    pub size: u64,
    pub content: String,
    /// `upload`, `mount` or `skip`.
    pub action: String,
    /// The repository a mount comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Why a blob is skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ManifestPlan {
    /// `registry/repository:tag` (or `@digest`).
    pub reference: String,
    pub digest: String,
    pub tag: TagChange,
    /// The push would refuse to move this tag (it points elsewhere; no `--force`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
    pub blobs: Vec<BlobAction>,
}

#[derive(Debug, Serialize)]
pub struct ImagePlan {
    pub arch: String,
    #[serde(flatten)]
    pub manifest: ManifestPlan,
}

/// Whether a manifest of the release is signed (cosign's `sha256-<hex>.sig` tag) and, for the
/// index, attested (`.att`), as the registry holds it now.
#[derive(Debug, Serialize)]
pub struct SignaturePlan {
    /// `index` or `linux/arm64 image`.
    pub what: String,
    pub digest: String,
    pub signed: bool,
    /// Index only: provenance and SPDX attestations are there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attested: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct ReportPlan {
    /// The artifact manifest, pushed by digest (`unchanged` when the registry holds it).
    pub artifact: ManifestPlan,
    /// `referrers-api` or `fallback-tag`.
    pub method: String,
    /// The fallback tag and what the push would do to it.
    pub fallback: Option<ManifestPlan>,
    /// True when the report is attached and listed already: nothing to do.
    pub attached: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub uploads: usize,
    pub upload_bytes: u64,
    pub mounts: usize,
    pub skips: usize,
    pub tags_created: usize,
    pub tags_moved: usize,
    pub tags_unchanged: usize,
    /// Tag moves the push would refuse without `--force` (the push would stop before any
    /// upload).
    pub tags_refused: usize,
    /// Release report changes: the artifact to push, the fallback tag to write.
    pub report_changes: usize,
    /// Per-arch manifests copied into the index repository by digest (legacy naming).
    pub copies: usize,
    pub downloads: usize,
    pub compiles: usize,
}

impl Summary {
    /// True when a push would change nothing in the registry.
    pub fn is_noop(&self) -> bool {
        self.uploads
            + self.mounts
            + self.tags_created
            + self.tags_moved
            + self.copies
            + self.report_changes
            == 0
    }
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub registry: String,
    pub format: String,
    pub local: Vec<LocalWork>,
    pub images: Vec<ImagePlan>,
    /// Manifests copied into the index repository by digest (legacy naming).
    pub copies: Vec<ManifestPlan>,
    pub index: Option<ManifestPlan>,
    pub report: Option<ReportPlan>,
    /// What is and is not signed in the registry (`etcdimg sign` signs it).
    pub signatures: Vec<SignaturePlan>,
    pub summary: Summary,
}

impl Plan {
    /// Every manifest the push would write or keep: images, copies, then the index.
    fn manifests(&self) -> impl Iterator<Item = &ManifestPlan> {
        self.images
            .iter()
            .map(|i| &i.manifest)
            .chain(&self.copies)
            .chain(&self.index)
    }
}

/// Blobs each repository has or will have by this point of the push.
#[derive(Default)]
pub(crate) struct Known(BTreeMap<String, BTreeSet<String>>);

impl Known {
    fn has(&self, repo: &str, digest: &str) -> bool {
        self.0.get(repo).is_some_and(|s| s.contains(digest))
    }
    fn add(&mut self, repo: &str, digest: &str) {
        self.0
            .entry(repo.to_string())
            .or_default()
            .insert(digest.to_string());
    }
}

pub(crate) async fn blob_actions(
    pusher: &Pusher,
    repo: &str,
    blobs: &[LocalBlob],
    contents: &[String],
    mount_from: &[String],
    known: &mut Known,
) -> Result<Vec<BlobAction>> {
    let mut out = Vec::new();
    for (i, blob) in blobs.iter().enumerate() {
        let mut action = BlobAction {
            digest: blob.digest.clone(),
            size: blob.size,
            content: contents.get(i).cloned().unwrap_or_else(|| "blob".into()),
            action: "skip".into(),
            from: None,
            reason: None,
        };
        if known.has(repo, &blob.digest) {
            action.reason = Some("pushed earlier in this run".into());
        } else if pusher.has_blob(repo, blob).await? {
            action.reason = Some("already in the repository".into());
        } else {
            action.action = "upload".into();
        }
        if action.action == "upload" {
            for from in mount_from.iter().filter(|f| f.as_str() != repo) {
                pusher.transport.want_scope(from, "pull");
                if known.has(from, &blob.digest)
                    || pusher.blob_size(from, &blob.digest).await?.is_some()
                {
                    action.action = "mount".into();
                    action.from = Some(from.clone());
                    break;
                }
            }
        }
        known.add(repo, &blob.digest);
        out.push(action);
    }
    Ok(out)
}

pub(crate) async fn image_plan(
    pusher: &Pusher,
    img: &ArchImage,
    force: bool,
    known: &mut Known,
) -> Result<ImagePlan> {
    let t = &img.target;
    let tag = pusher
        .check_tag(&t.repository, &t.tag, &img.manifest.digest, true)
        .await
        .with_context(|| format!("looking up {}", t.reference()))?;
    let blobs = if tag == TagChange::Unchanged {
        // The registry holds the manifest, so it holds every blob it names.
        for b in &img.manifest.blobs {
            known.add(&t.repository, &b.digest);
        }
        skipped(img, "the tag already points at this image")
    } else {
        blob_actions(
            pusher,
            &t.repository,
            &img.manifest.blobs,
            &img.contents,
            &img.mount_from,
            known,
        )
        .await?
    };
    Ok(ImagePlan {
        arch: img.arch.to_string(),
        manifest: ManifestPlan {
            reference: t.reference(),
            digest: img.manifest.digest.clone(),
            refused: refused(&tag, force),
            tag,
            blobs,
        },
    })
}

pub(crate) fn skipped(img: &ArchImage, reason: &str) -> Vec<BlobAction> {
    img.manifest
        .blobs
        .iter()
        .zip(&img.contents)
        .map(|(b, content)| BlobAction {
            digest: b.digest.clone(),
            size: b.size,
            content: content.clone(),
            action: "skip".into(),
            from: None,
            reason: Some(reason.into()),
        })
        .collect()
}

/// Legacy naming: each per-arch manifest is copied into the index repository by digest.
pub(crate) async fn copy_plan(
    pusher: &Pusher,
    index_target: &Target,
    img: &ArchImage,
    known: &mut Known,
) -> Result<Option<ManifestPlan>> {
    let repo = &index_target.repository;
    if img.target.repository == *repo {
        return Ok(None);
    }
    let present = pusher
        .manifest_digest(repo, &img.manifest.digest)
        .await?
        .is_some();
    let blobs = if present {
        skipped(img, "the manifest is already in the index repository")
    } else {
        let mut from = vec![img.target.repository.clone()];
        from.extend(img.mount_from.iter().cloned());
        blob_actions(
            pusher,
            repo,
            &img.manifest.blobs,
            &img.contents,
            &from,
            known,
        )
        .await?
    };
    Ok(Some(ManifestPlan {
        reference: format!("{}/{}@{}", index_target.registry, repo, img.manifest.digest),
        digest: img.manifest.digest.clone(),
        tag: if present {
            TagChange::Unchanged
        } else {
            TagChange::Untagged
        },
        refused: false,
        blobs,
    }))
}

pub(crate) fn local_work(reports: &[crate::pipeline::BuildReport]) -> Vec<LocalWork> {
    let mut out = Vec::new();
    for r in reports {
        for t in &r.tarballs {
            out.push(LocalWork {
                arch: r.arch.clone(),
                action: if t.downloaded { "download" } else { "cached" }.into(),
                what: format!("etcd {} release tarball {}", t.version, t.url),
            });
        }
        for c in &r.compiles {
            out.push(LocalWork {
                arch: r.arch.clone(),
                action: if c.compiled { "compile" } else { "cached" }.into(),
                what: format!(
                    "etcd {} from {} with {}",
                    c.build.version, c.build.source, c.build.toolchain
                ),
            });
        }
    }
    out
}

pub(crate) fn summarise(plan: &mut Plan) {
    let mut s = Summary::default();
    let tagged = plan.images.iter().map(|i| &i.manifest).chain(&plan.index);
    for m in tagged {
        s.tags_refused += usize::from(m.refused);
        match &m.tag {
            TagChange::Created => s.tags_created += 1,
            TagChange::Moved(_) => s.tags_moved += 1,
            TagChange::Unchanged => s.tags_unchanged += 1,
            TagChange::Untagged => {}
        }
    }
    s.copies = plan
        .copies
        .iter()
        .filter(|c| c.tag == TagChange::Untagged)
        .count();
    let report = plan.report.iter().map(|r| &r.artifact);
    for m in plan.manifests().chain(report) {
        for b in &m.blobs {
            match b.action.as_str() {
                "upload" => {
                    s.uploads += 1;
                    s.upload_bytes += b.size;
                }
                "mount" => s.mounts += 1,
                _ => s.skips += 1,
            }
        }
    }
    if let Some(r) = &plan.report {
        s.report_changes = usize::from(r.artifact.tag == TagChange::Untagged)
            + r.fallback
                .as_ref()
                .map_or(0, |f| usize::from(f.tag != TagChange::Unchanged));
    }
    s.downloads = plan.local.iter().filter(|l| l.action == "download").count();
    s.compiles = plan.local.iter().filter(|l| l.action == "compile").count();
    plan.summary = s;
}

/// A tag move the push would refuse.
pub(crate) fn refused(tag: &TagChange, force: bool) -> bool {
    matches!(tag, TagChange::Moved(_)) && !force
}

/// What attaching the release report would do: push the artifact (its blobs as any image's),
/// then list it through the referrers API or under the fallback tag, as `report::attach` would.
pub(crate) async fn report_plan(
    settings: &Settings,
    p: &IndexPlan,
    pusher: &Pusher,
    spdx: bool,
    known: &mut Known,
) -> Result<ReportPlan> {
    let repo = &p.target.repository;
    let report = report::assemble(settings, p)?;
    let artifact = report::artifact(settings, p, &report, spdx);
    let present = pusher
        .manifest_digest(repo, &artifact.digest)
        .await?
        .is_some();
    let list = artifact.blob_list();
    let blobs: Vec<LocalBlob> = list
        .iter()
        .map(|(digest, size, _)| LocalBlob {
            digest: digest.clone(),
            size: *size,
            path: Default::default(),
        })
        .collect();
    let contents: Vec<String> = list.into_iter().map(|(_, _, what)| what).collect();
    let blobs = if present {
        Vec::new()
    } else {
        blob_actions(pusher, repo, &blobs, &contents, &[], known).await?
    };
    let listing = report::listing(pusher, p, &artifact, &report.created, None, !present).await?;
    // A present artifact the referrers API does not list is PUT again.
    let put = !present || listing == report::Listing::ApiAfterPut;
    let (method, fallback) = match listing {
        report::Listing::Api | report::Listing::ApiAfterPut => ("referrers-api", None),
        report::Listing::Undecided => (
            "decided by the push: the repository does not exist yet",
            None,
        ),
        report::Listing::Fallback { tag, write } => {
            let (change, digest) = match write {
                None => (TagChange::Unchanged, String::new()),
                Some((bytes, previous)) => (
                    previous.map_or(TagChange::Created, TagChange::Moved),
                    format!("sha256:{}", crate::fetch::cache::sha256_hex(&bytes)),
                ),
            };
            let fallback = ManifestPlan {
                reference: format!("{}/{repo}:{tag}", p.target.registry),
                digest,
                tag: change,
                refused: false,
                blobs: Vec::new(),
            };
            ("fallback-tag", Some(fallback))
        }
    };
    let attached = !put
        && fallback
            .as_ref()
            .is_none_or(|f| f.tag == TagChange::Unchanged);
    Ok(ReportPlan {
        artifact: ManifestPlan {
            reference: format!("{}/{repo}@{}", p.target.registry, artifact.digest),
            digest: artifact.digest,
            tag: if put {
                TagChange::Untagged
            } else {
                TagChange::Unchanged
            },
            refused: false,
            blobs,
        },
        method: method.into(),
        fallback,
        attached,
    })
}

pub(crate) fn read_only(options: &PushOptions, registry: &str) -> Result<Pusher> {
    Ok(Pusher::read_only(
        options.build.registry.transport(registry)?,
    ))
}

pub(crate) fn tag_line(m: &ManifestPlan) -> String {
    let line = match &m.tag {
        TagChange::Created => format!("create   {} -> {}", m.reference, m.digest),
        TagChange::Moved(prev) => format!("move     {}: {prev} -> {}", m.reference, m.digest),
        TagChange::Unchanged if m.reference.ends_with(&m.digest) => {
            format!("keep     {}", m.reference)
        }
        TagChange::Unchanged => format!("keep     {} = {}", m.reference, m.digest),
        TagChange::Untagged => format!("copy     {}", m.reference),
    };
    if m.refused {
        format!("{line}  (REFUSED without --force)")
    } else {
        line
    }
}

pub(crate) fn blob_lines(out: &mut String, blobs: &[BlobAction]) {
    use std::fmt::Write;
    for b in blobs.iter().filter(|b| b.action != "skip") {
        let from = b
            .from
            .as_deref()
            .map(|f| format!(" from {f}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<6} {} {:>10} {}{from}",
            b.action,
            short(&b.digest),
            b.size,
            b.content
        );
    }
}

/// The plan as text for a terminal: one line per change, then a summary.
pub fn render(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for l in &plan.local {
        let _ = writeln!(out, "{:<9} {:<8} {}", l.action, l.arch, l.what);
    }
    for m in plan.manifests() {
        let _ = writeln!(out, "{}", tag_line(m));
        blob_lines(&mut out, &m.blobs);
    }
    if let Some(r) = &plan.report {
        if r.attached {
            let _ = writeln!(out, "keep     release report {}", r.artifact.reference);
        } else {
            let _ = writeln!(
                out,
                "attach   release report {} ({})",
                r.artifact.reference, r.method
            );
            blob_lines(&mut out, &r.artifact.blobs);
            if let Some(f) = r
                .fallback
                .as_ref()
                .filter(|f| f.tag != TagChange::Unchanged)
            {
                let _ = writeln!(out, "  {}", tag_line(f));
            }
        }
    }
    for sp in &plan.signatures {
        let attested = match sp.attested {
            Some(true) => ", attested",
            Some(false) => ", not attested",
            None => "",
        };
        let _ = writeln!(
            out,
            "{:<8} {} {}{attested}",
            if sp.signed { "signed" } else { "unsigned" },
            sp.what,
            sp.digest
        );
    }
    let s = &plan.summary;
    let _ = writeln!(
        out,
        "summary: {} to upload ({} bytes), {} to mount, {} skipped; {} manifests to copy; tags: {} created, {} moved, {} unchanged; {} release report changes{}{}",
        s.uploads,
        s.upload_bytes,
        s.mounts,
        s.skips,
        s.copies,
        s.tags_created,
        s.tags_moved,
        s.tags_unchanged,
        s.report_changes,
        if s.tags_refused > 0 {
            format!(
                "; all-push would REFUSE: {} tags point elsewhere (pass --force to move them)",
                s.tags_refused
            )
        } else {
            String::new()
        },
        if s.is_noop() { "; nothing to push" } else { "" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(action: &str, size: u64) -> BlobAction {
        BlobAction {
            digest: format!("sha256:{action}{size}"),
            size,
            content: "c".into(),
            action: action.into(),
            from: None,
            reason: None,
        }
    }

    #[test]
    fn summary_counts_blobs_tags_and_the_report() {
        let mut plan = Plan {
            registry: "r".into(),
            format: "oci".into(),
            local: vec![],
            images: vec![ImagePlan {
                arch: "amd64".into(),
                manifest: ManifestPlan {
                    reference: "r/etcd:t-linux-amd64".into(),
                    digest: "sha256:m".into(),
                    tag: TagChange::Moved("sha256:old".into()),
                    refused: true,
                    blobs: vec![blob("upload", 10), blob("mount", 5), blob("skip", 7)],
                },
            }],
            copies: vec![],
            index: Some(ManifestPlan {
                reference: "r/etcd:t".into(),
                digest: "sha256:i".into(),
                tag: TagChange::Unchanged,
                refused: false,
                blobs: vec![],
            }),
            signatures: Vec::new(),
            report: Some(ReportPlan {
                artifact: ManifestPlan {
                    reference: "r/etcd@sha256:a".into(),
                    digest: "sha256:a".into(),
                    tag: TagChange::Untagged,
                    refused: false,
                    blobs: vec![blob("upload", 3)],
                },
                method: "fallback-tag".into(),
                fallback: Some(ManifestPlan {
                    reference: "r/etcd:sha256-i".into(),
                    digest: String::new(),
                    tag: TagChange::Created,
                    refused: false,
                    blobs: vec![],
                }),
                attached: false,
            }),
            summary: Summary::default(),
        };
        summarise(&mut plan);
        let s = &plan.summary;
        assert_eq!(
            (s.uploads, s.upload_bytes, s.mounts, s.skips),
            (2, 13, 1, 1)
        );
        assert_eq!((s.tags_created, s.tags_moved, s.tags_unchanged), (0, 1, 1));
        assert_eq!((s.tags_refused, s.report_changes), (1, 2));
        assert!(!s.is_noop());
        let text = render(&plan);
        assert!(
            text.contains("move     r/etcd:t-linux-amd64: sha256:old -> sha256:m  (REFUSED"),
            "{text}"
        );
        assert!(text.contains("  create   r/etcd:sha256-i"), "{text}");
        assert!(text.contains("all-push would REFUSE: 1 tags"), "{text}");
        assert!(!text.contains("skip "), "{text}");
    }

    #[test]
    fn known_blobs_are_per_repository() {
        let mut k = Known::default();
        k.add("a", "sha256:1");
        assert!(k.has("a", "sha256:1"));
        assert!(!k.has("b", "sha256:1"));
    }
}
