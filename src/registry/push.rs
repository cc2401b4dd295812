//! Pushing one image (or index) to a repository, safely and without redundant bytes.
//!
//! Order is the safety argument: every blob is confirmed in the repository before the manifest
//! that names it is PUT, so a failure at any point leaves at most unreferenced blobs, never a
//! manifest with missing blobs. A tag is never moved to a different digest unless the caller
//! forces it.
//!
//! Blob uploads follow the distribution spec: POST a session, then one monolithic PUT; a 413
//! switches this pusher to chunked PATCH uploads (halving the chunk on further 413s). After a
//! cut connection or a 5xx the session's status (GET on the upload URL) says how much the
//! registry holds, and the upload resumes from there; a session the registry lost is restarted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::StatusCode;
use serde::Serialize;

use super::transport::{Failure, Transport};
use super::RegistryError;
use crate::report::Progress;

/// Manifest media types we accept when asking what a tag points to.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

const DEFAULT_CHUNK: usize = 16 << 20;
const MIN_CHUNK: usize = 64 << 10;
/// Progress granularity of a streamed request body.
const STREAM_PIECE: usize = 256 << 10;
/// Blobs uploaded at once: enough to overlap round trips, few enough not to thrash 2 cores.
const CONCURRENT_BLOBS: usize = 3;

/// The referrers of a manifest, as the registry tells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Referrers {
    /// The referrers API answered: these digests refer to the manifest.
    Listed(Vec<String>),
    /// The registry has no referrers API (clients use the fallback tag).
    NoApi,
    /// A registry with the API does not have the repository yet.
    UnknownRepository,
}

/// The target of a `Link: <url>; rel="next"` header.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .contains("rel=\"next\"")
            .then(|| target.trim().trim_start_matches('<').trim_end_matches('>'))
    })
}

/// A blob on local disk.
#[derive(Debug, Clone)]
pub struct LocalBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    pub path: PathBuf,
}

/// A manifest (image or index) and the blobs it needs in the repository.
#[derive(Debug, Clone)]
pub struct LocalManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub blobs: Vec<LocalBlob>,
}

/// What a tag did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "previous")]
pub enum TagChange {
    /// The tag did not exist.
    Created,
    /// The tag already pointed at this digest; nothing was sent.
    Unchanged,
    /// The tag pointed at another digest (named) and `--force` moved it.
    Moved(String),
    /// Pushed by digest, no tag.
    Untagged,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushOutcome {
    /// `registry/repository:tag` (or `@digest`).
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    pub tag: TagChange,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    /// Blob bytes sent, retries included.
    pub bytes_uploaded: u64,
    /// The registry's `OCI-Subject` answer to a manifest with a subject: it indexed the
    /// manifest for the referrers API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_subject: Option<String>,
    /// True when the manifest was PUT by this push (false: it was already there).
    #[serde(skip)]
    pub manifest_put: bool,
}

enum BlobResult {
    Present,
    Mounted,
    Uploaded(u64),
}

struct Upload {
    location: Option<reqwest::Url>,
    offset: u64,
    /// Ask the registry where the session stands before sending more.
    resync: bool,
    sent: u64,
}

/// Pushes into one registry through a [`Transport`].
pub struct Pusher {
    pub transport: Arc<Transport>,
    /// Token scopes: `pull` for a pusher that only looks (plan), `pull,push` otherwise.
    actions: &'static str,
    chunked: AtomicBool,
    chunk: AtomicUsize,
}

fn is_digest(reference: &str) -> bool {
    reference.starts_with("sha256:")
}

/// The first 12 hex digits of a digest, for messages.
pub(crate) fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// The end offset (exclusive) from a `Range: 0-N` header (`bytes=0-N` tolerated). Distribution
/// says `0-0` for an empty session; resuming from 0 is right for it, and a registry that did
/// hold one byte answers the next PATCH with 416, which restarts the session.
fn range_end(value: &str) -> Option<u64> {
    let v = value.trim().trim_start_matches("bytes=");
    let (_, end) = v.split_once('-')?;
    let end: u64 = end.trim().parse().ok()?;
    Some(if end == 0 { 0 } else { end + 1 })
}

/// A body that advances `progress` as hyper pulls it, with an explicit length.
fn progress_body(data: Bytes, progress: Arc<dyn Progress>) -> reqwest::Body {
    let pieces: Vec<Bytes> = (0..data.len())
        .step_by(STREAM_PIECE)
        .map(|start| data.slice(start..(start + STREAM_PIECE).min(data.len())))
        .collect();
    let stream = futures_util::stream::iter(pieces).map(move |piece| {
        progress.advance(piece.len() as u64);
        Ok::<Bytes, std::io::Error>(piece)
    });
    reqwest::Body::wrap_stream(stream)
}

impl Pusher {
    pub fn new(transport: Arc<Transport>) -> Pusher {
        let chunk = std::env::var("ETCDIMG_PUSH_CHUNK_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_CHUNK)
            .max(MIN_CHUNK);
        Pusher {
            transport,
            actions: "pull,push",
            chunked: AtomicBool::new(false),
            chunk: AtomicUsize::new(chunk),
        }
    }

    /// A pusher that only reads (HEAD/GET), asking for `pull` scopes only.
    pub fn read_only(transport: Arc<Transport>) -> Pusher {
        Pusher {
            actions: "pull",
            ..Pusher::new(transport)
        }
    }

    fn reference(&self, repo: &str, reference: &str) -> String {
        let sep = if is_digest(reference) { '@' } else { ':' };
        format!("{}/{repo}{sep}{reference}", self.transport.registry)
    }

    /// HEAD or GET of a manifest; `None` on 404.
    async fn manifest_request(
        &self,
        method: reqwest::Method,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(String, reqwest::Response)>, RegistryError> {
        self.transport.want_scope(repo, self.actions);
        let url = self
            .transport
            .url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let what = format!("{method} manifest {}", self.reference(repo, reference));
        let response = self
            .transport
            .send(&what, &|c| {
                c.request(method.clone(), url.clone())
                    .header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        match response.status() {
            StatusCode::OK => Ok(Some((what, response))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.transport.unexpected(&what, response).await),
        }
    }

    /// The digest `reference` (a tag or digest) points to in `repo`, if it exists.
    pub async fn manifest_digest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let Some((_, response)) = self
            .manifest_request(reqwest::Method::HEAD, repo, reference)
            .await?
        else {
            return Ok(None);
        };
        if let Some(d) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            return Ok(Some(d.to_string()));
        }
        // Not every registry sends the digest on HEAD; hash the manifest itself.
        Ok(self
            .get_manifest(repo, reference)
            .await?
            .map(|(_, body)| format!("sha256:{}", crate::fetch::cache::sha256_hex(&body))))
    }

    /// What pushing `digest` to `tag` would do; an error if it would move the tag without
    /// `force`.
    pub async fn check_tag(
        &self,
        repo: &str,
        tag: &str,
        digest: &str,
        force: bool,
    ) -> Result<TagChange, RegistryError> {
        match self.manifest_digest(repo, tag).await? {
            None => Ok(TagChange::Created),
            Some(current) if current == digest => Ok(TagChange::Unchanged),
            Some(current) if force => Ok(TagChange::Moved(current)),
            Some(current) => Err(RegistryError::TagExists {
                reference: self.reference(repo, tag),
                current,
                new: digest.into(),
            }),
        }
    }

    /// The media type and bytes of the manifest `reference` points to in `repo`, if any.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>, RegistryError> {
        let Some((what, response)) = self
            .manifest_request(reqwest::Method::GET, repo, reference)
            .await?
        else {
            return Ok(None);
        };
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response.bytes().await.map_err(|e| RegistryError::Request {
            op: what,
            reference: self.transport.registry.clone(),
            message: crate::fetch::http::error_chain(&e),
            hint: None,
        })?;
        Ok(Some((media_type, body.to_vec())))
    }

    /// What the registry lists as referrers of `digest` (`GET /v2/<repo>/referrers/<digest>`,
    /// every page of its `Link` chain).
    pub async fn referrers(&self, repo: &str, digest: &str) -> Result<Referrers, RegistryError> {
        self.transport.want_scope(repo, self.actions);
        let mut url = self
            .transport
            .url(&format!("/v2/{repo}/referrers/{digest}"))?;
        let what = format!("GET referrers of {}", self.reference(repo, digest));
        let mut listed = Vec::new();
        for _ in 0..100 {
            let response = self
                .transport
                .send(&what, &|c| {
                    c.get(url.clone())
                        .header(ACCEPT, crate::oci::index::OCI_INDEX)
                })
                .await?;
            let status = response.status();
            let is_index = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(crate::oci::index::OCI_INDEX));
            let next = response
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(String::from);
            let body = response.bytes().await.map_err(|e| RegistryError::Request {
                op: what.clone(),
                reference: self.transport.registry.clone(),
                message: crate::fetch::http::error_chain(&e),
                hint: None,
            })?;
            if status == StatusCode::NOT_FOUND {
                // A registry with the API says NAME_UNKNOWN for a repository it does not have;
                // one without it (distribution 2.x: "404 page not found") knows no such route.
                let unknown = String::from_utf8_lossy(&body).contains("NAME_UNKNOWN");
                return Ok(if unknown && listed.is_empty() {
                    Referrers::UnknownRepository
                } else {
                    Referrers::NoApi
                });
            }
            if status != StatusCode::OK || !is_index {
                return Err(RegistryError::Request {
                    op: what,
                    reference: self.transport.registry.clone(),
                    message: format!("{status}, expected an OCI image index or 404"),
                    hint: Some(
                        "the registry's referrers API does not follow the distribution spec 1.1"
                            .into(),
                    ),
                });
            }
            let index: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Request {
                    op: what.clone(),
                    reference: self.transport.registry.clone(),
                    message: format!("the referrers list is not JSON: {e}"),
                    hint: None,
                })?;
            listed.extend(
                index["manifests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d["digest"].as_str().map(String::from)),
            );
            match next {
                Some(link) => url = self.transport.url(&link)?,
                None => return Ok(Referrers::Listed(listed)),
            }
        }
        Ok(Referrers::Listed(listed))
    }

    /// PUTs `manifest` by digest again (idempotent; its blobs must be there), for a registry
    /// that should index its `subject`. Returns the `OCI-Subject` answer.
    pub async fn put_manifest_again(
        &self,
        repo: &str,
        manifest: &LocalManifest,
    ) -> Result<Option<String>, RegistryError> {
        self.transport.want_scope(repo, self.actions);
        let url = self
            .transport
            .url(&format!("/v2/{repo}/manifests/{}", manifest.digest))?;
        let what = format!("PUT manifest {}", self.reference(repo, &manifest.digest));
        let body = Bytes::from(manifest.bytes.clone());
        let response = self
            .transport
            .send(&what, &|c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, manifest.media_type.as_str())
                    .body(body.clone())
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.transport.unexpected(&what, response).await);
        }
        Ok(response
            .headers()
            .get("oci-subject")
            .and_then(|v| v.to_str().ok())
            .map(String::from))
    }

    /// Does `repo` hold `blob`? A size of 0 counts: some registries send no Content-Length on
    /// HEAD. Another size means a different blob under that name: upload it again.
    pub async fn has_blob(&self, repo: &str, blob: &LocalBlob) -> Result<bool, RegistryError> {
        Ok(self
            .blob_size(repo, &blob.digest)
            .await?
            .is_some_and(|size| size == blob.size || size == 0))
    }

    /// The size of `digest` in `repo`, if the registry has it there.
    pub async fn blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>, RegistryError> {
        let url = self.transport.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let what = format!("HEAD blob {} in {repo}", short(digest));
        let response = self.transport.send(&what, &|c| c.head(url.clone())).await?;
        match response.status() {
            s if s.is_success() => Ok(Some(
                response
                    .headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.transport.unexpected(&what, response).await),
        }
    }

    /// A small blob's bytes (signatures, attestations, reports), checked against its digest;
    /// None when `repo` does not have it. Bigger than `limit` bytes is an error.
    pub async fn get_small_blob(
        &self,
        repo: &str,
        digest: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.transport.want_scope(repo, self.actions);
        let url = self.transport.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let what = format!("GET blob {} in {repo}", short(digest));
        let response = self.transport.send(&what, &|c| c.get(url.clone())).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.transport.unexpected(&what, response).await);
        }
        let fail = |message: String| RegistryError::Request {
            op: what.clone(),
            reference: self.transport.registry.clone(),
            message,
            hint: None,
        };
        if response
            .content_length()
            .is_some_and(|n| n as usize > limit)
        {
            return Err(fail(format!("larger than {limit} bytes")));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| fail(crate::fetch::http::error_chain(&e)))?;
        if body.len() > limit {
            return Err(fail(format!("larger than {limit} bytes")));
        }
        let actual = format!("sha256:{}", crate::fetch::cache::sha256_hex(&body));
        if actual != digest {
            return Err(fail(format!("the registry served {actual}")));
        }
        Ok(Some(body.to_vec()))
    }

    fn location(
        &self,
        what: &str,
        response: &reqwest::Response,
    ) -> Result<reqwest::Url, RegistryError> {
        let loc = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Request {
                op: what.into(),
                reference: self.transport.registry.clone(),
                message: format!("{} without a Location header", response.status()),
                hint: Some("the registry does not follow the distribution spec".into()),
            })?;
        self.transport.url(loc)
    }

    /// Tries a cross-repository mount. `Ok(None)` when mounted; otherwise the upload session
    /// the registry opened instead.
    async fn mount(
        &self,
        repo: &str,
        digest: &str,
        from: &str,
    ) -> Result<Option<reqwest::Url>, RegistryError> {
        let mut url = self.transport.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let what = format!("mount blob {} from {from} into {repo}", short(digest));
        let response = self
            .transport
            .send(&what, &|c| c.post(url.clone()).header(CONTENT_LENGTH, "0"))
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(None),
            StatusCode::ACCEPTED => Ok(Some(self.location(&what, &response)?)),
            _ => Err(self.transport.unexpected(&what, response).await),
        }
    }

    /// Cancels an upload session (best effort: the registry purges stale ones anyway).
    async fn abandon(&self, location: &reqwest::Url) {
        let _ = self
            .transport
            .attempt("cancel an upload session", &|c| c.delete(location.clone()))
            .await;
    }

    async fn start_upload(&self, repo: &str) -> Result<reqwest::Url, RegistryError> {
        let url = self.transport.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        let what = format!("start an upload in {repo}");
        let response = self
            .transport
            .send(&what, &|c| c.post(url.clone()).header(CONTENT_LENGTH, "0"))
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.transport.unexpected(&what, response).await);
        }
        self.location(&what, &response)
    }

    /// One request inside an upload session; when it fails, the session's state on the
    /// registry is unknown and must be asked for before the next byte.
    async fn in_session(
        &self,
        state: &mut Upload,
        what: &str,
        make: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response, Failure> {
        let result = self.transport.attempt(what, make).await;
        if result.is_err() {
            state.resync = true;
        }
        result
    }

    /// One pass of the upload state machine. `Ok(true)` when the blob is committed.
    ///
    /// No session: open one. A session in doubt: ask where it stands. At byte 0 (and
    /// monolithic uploads not refused yet): one PUT. Otherwise PATCH chunks from the offset,
    /// then close with an empty PUT.
    async fn upload_step(
        &self,
        repo: &str,
        blob: &LocalBlob,
        data: &Bytes,
        state: &mut Upload,
        progress: &Arc<dyn Progress>,
    ) -> Result<bool, Failure> {
        let what = format!("upload blob {} to {repo}", short(&blob.digest));
        let Some(location) = state.location.clone() else {
            state.location = Some(self.start_upload(repo).await?);
            state.offset = 0;
            state.resync = false;
            return Ok(false);
        };
        if state.resync {
            self.resync(&what, blob, data, &location, state).await?;
            return Ok(false);
        }
        progress.set_position(state.offset);
        if !self.chunked.load(Ordering::Relaxed) && state.offset == 0 {
            return self
                .put_whole(&what, blob, data, &location, state, progress)
                .await;
        }
        if !self.patch_chunks(&what, data, state, progress).await? {
            return Ok(false);
        }
        let mut url = state.location.clone().expect("session open");
        url.query_pairs_mut().append_pair("digest", &blob.digest);
        let response = self
            .in_session(state, &what, &|c| {
                c.put(url.clone()).header(CONTENT_LENGTH, "0")
            })
            .await?;
        self.committed(&what, response, state).await
    }

    /// The answer to a PUT that closes a session: committed, or a session to start over.
    async fn committed(
        &self,
        what: &str,
        response: reqwest::Response,
        state: &mut Upload,
    ) -> Result<bool, Failure> {
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::NOT_FOUND | StatusCode::RANGE_NOT_SATISFIABLE => {
                state.location = None;
                Ok(false)
            }
            _ => Err(Failure::Fatal(
                self.transport.unexpected(what, response).await,
            )),
        }
    }

    /// Asks the registry how much of the upload it holds. The flag is cleared only once it
    /// has answered: sending at a stale offset would corrupt the upload.
    async fn resync(
        &self,
        what: &str,
        blob: &LocalBlob,
        data: &Bytes,
        location: &reqwest::Url,
        state: &mut Upload,
    ) -> Result<(), Failure> {
        let response = self
            .transport
            .attempt(what, &|c| c.get(location.clone()))
            .await?;
        state.resync = false;
        let end = match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => response
                .headers()
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range_end)
                .unwrap_or(0),
            _ => 0,
        };
        if end == 0 || end > data.len() as u64 {
            // Nothing held (or `0-0`, which distribution also says for one byte), or a
            // session the registry lost: a fresh session is the only unambiguous start.
            state.location = None;
            return Ok(());
        }
        if let Ok(l) = self.location(what, &response) {
            state.location = Some(l);
        }
        self.transport.reporter().warn(&format!(
            "{what}: resuming at byte {end} of {}, where the registry's copy ends",
            blob.size
        ));
        // Resuming is chunked: the monolithic branch only ever starts at byte 0.
        state.offset = end;
        Ok(())
    }

    /// The whole blob in one PUT; a 413 switches this pusher to chunked uploads.
    async fn put_whole(
        &self,
        what: &str,
        blob: &LocalBlob,
        data: &Bytes,
        location: &reqwest::Url,
        state: &mut Upload,
        progress: &Arc<dyn Progress>,
    ) -> Result<bool, Failure> {
        let t = &self.transport;
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", &blob.digest);
        let len = data.len();
        state.sent += len as u64;
        t.count_upload(len as u64);
        let response = self
            .in_session(state, what, &|c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, len.to_string())
                    .body(progress_body(data.clone(), progress.clone()))
            })
            .await?;
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            self.chunked.store(true, Ordering::Relaxed);
            t.reporter().warn(&format!(
                "{what}: the registry refused a {len}-byte monolithic upload (413); switching to chunked uploads of {} bytes",
                self.chunk.load(Ordering::Relaxed)
            ));
            state.resync = true;
            return Ok(false);
        }
        self.committed(what, response, state).await
    }

    /// PATCHes the rest of the blob from `state.offset`, a chunk at a time. `Ok(true)` when
    /// every byte was accepted; `Ok(false)` when the session must be asked about or
    /// restarted first (a 413 halves the chunk).
    async fn patch_chunks(
        &self,
        what: &str,
        data: &Bytes,
        state: &mut Upload,
        progress: &Arc<dyn Progress>,
    ) -> Result<bool, Failure> {
        let t = &self.transport;
        let len = data.len() as u64;
        while state.offset < len {
            let chunk = self.chunk.load(Ordering::Relaxed) as u64;
            let start = state.offset;
            let end = (start + chunk).min(len);
            let piece = data.slice(start as usize..end as usize);
            let url = state.location.clone().expect("session open");
            state.sent += end - start;
            t.count_upload(end - start);
            let response = self
                .in_session(state, what, &|c| {
                    c.patch(url.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header("Content-Range", format!("{start}-{}", end - 1))
                        .header(CONTENT_LENGTH, (end - start).to_string())
                        .body(progress_body(piece.clone(), progress.clone()))
                })
                .await?;
            match response.status() {
                StatusCode::ACCEPTED | StatusCode::NO_CONTENT => {
                    state.location = Some(self.location(what, &response)?);
                    state.offset = response
                        .headers()
                        .get(RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(range_end)
                        .filter(|e| *e > start)
                        .unwrap_or(end);
                }
                StatusCode::PAYLOAD_TOO_LARGE => {
                    let smaller = (chunk as usize / 2).max(MIN_CHUNK);
                    if smaller == chunk as usize {
                        return Err(Failure::Fatal(t.unexpected(what, response).await));
                    }
                    self.chunk.store(smaller, Ordering::Relaxed);
                    t.reporter().warn(&format!(
                        "{what}: the registry refused a {chunk}-byte chunk (413); using {smaller}-byte chunks"
                    ));
                    state.resync = true;
                    return Ok(false);
                }
                StatusCode::RANGE_NOT_SATISFIABLE | StatusCode::NOT_FOUND => {
                    // The registry disagrees about the offset, or lost the session: start over.
                    state.location = None;
                    return Ok(false);
                }
                _ => return Err(Failure::Fatal(t.unexpected(what, response).await)),
            }
        }
        Ok(true)
    }

    async fn upload(
        &self,
        repo: &str,
        blob: &LocalBlob,
        session: Option<reqwest::Url>,
        progress: Arc<dyn Progress>,
    ) -> Result<u64, RegistryError> {
        let data = Bytes::from(
            std::fs::read(&blob.path).map_err(|e| RegistryError::Request {
                op: format!("reading blob {}", blob.path.display()),
                reference: blob.digest.clone(),
                message: e.to_string(),
                hint: Some("the OCI layout is incomplete; rebuild it".into()),
            })?,
        );
        let mut state = Upload {
            location: session,
            offset: 0,
            resync: false,
            sent: 0,
        };
        let what = format!("upload blob {} to {repo}", short(&blob.digest));
        let mut failures = 0;
        // Protocol detours (413, lost sessions) are bounded too, so a broken registry cannot
        // keep us looping.
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > 64 {
                return Err(RegistryError::GaveUp {
                    op: what,
                    registry: self.transport.registry.clone(),
                    attempts: steps,
                    last: "the upload made no progress".into(),
                });
            }
            match self
                .upload_step(repo, blob, &data, &mut state, &progress)
                .await
            {
                Ok(true) => {
                    progress.finish();
                    return Ok(state.sent);
                }
                Ok(false) => {}
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient { cause, retry_after }) => {
                    if failures >= self.transport.policy.retries {
                        return Err(RegistryError::GaveUp {
                            op: what,
                            registry: self.transport.registry.clone(),
                            attempts: failures + 1,
                            last: cause,
                        });
                    }
                    self.transport
                        .back_off(&what, failures, &cause, retry_after)
                        .await;
                    failures += 1;
                }
            }
        }
    }

    async fn push_blob(
        &self,
        repo: &str,
        blob: &LocalBlob,
        mount_from: &[String],
        overall: &dyn Progress,
    ) -> Result<BlobResult, RegistryError> {
        if self.has_blob(repo, blob).await? {
            overall.advance(blob.size);
            return Ok(BlobResult::Present);
        }
        let mut session: Option<reqwest::Url> = None;
        for from in mount_from.iter().filter(|f| f.as_str() != repo) {
            if let Some(previous) = session.take() {
                // A failed mount opened an upload session; close it rather than leave it.
                self.abandon(&previous).await;
            }
            match self.mount(repo, &blob.digest, from).await? {
                None => {
                    overall.advance(blob.size);
                    return Ok(BlobResult::Mounted);
                }
                Some(location) => session = Some(location),
            }
        }
        let progress: Arc<dyn Progress> = Arc::from(self.transport.reporter().progress(
            "Pushing",
            &format!("blob {} to {repo}", short(&blob.digest)),
            Some(blob.size),
        ));
        let sent = self.upload(repo, blob, session, progress).await?;
        overall.advance(blob.size);
        Ok(BlobResult::Uploaded(sent))
    }

    /// Pushes `manifest` and its blobs to `repo` at `reference` (a tag, or the manifest's
    /// digest). Blobs the repository has are skipped; blobs in `mount_from` repositories (same
    /// registry) are mounted.
    ///
    /// Stages: the tag (or digest) checked, nothing sent when it is already there; the blobs,
    /// concurrently; every blob confirmed present; then the manifest, checked against the
    /// digest the registry computed.
    pub async fn push(
        &self,
        repo: &str,
        manifest: &LocalManifest,
        reference: &str,
        mount_from: &[String],
        force: bool,
    ) -> Result<PushOutcome, RegistryError> {
        let t = &self.transport;
        t.want_scope(repo, "pull,push");
        for from in mount_from {
            t.want_scope(from, "pull");
        }
        let shown = self.reference(repo, reference);
        let mut outcome = PushOutcome {
            reference: shown.clone(),
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            tag: TagChange::Untagged,
            blobs_uploaded: 0,
            blobs_mounted: 0,
            blobs_present: 0,
            bytes_uploaded: 0,
            oci_subject: None,
            manifest_put: false,
        };
        if is_digest(reference) {
            if self.manifest_digest(repo, reference).await?.is_some() {
                return Ok(outcome);
            }
        } else {
            outcome.tag = self
                .check_tag(repo, reference, &manifest.digest, force)
                .await?;
            if outcome.tag == TagChange::Unchanged {
                t.reporter().status(
                    "Unchanged",
                    &format!("{shown} is already {}", manifest.digest),
                );
                return Ok(outcome);
            }
        }
        self.push_blobs(repo, manifest, mount_from, &shown, &mut outcome)
            .await?;
        self.confirm_blobs(repo, manifest, &shown).await?;
        outcome.oci_subject = self.put_manifest(repo, manifest, reference, &shown).await?;
        outcome.manifest_put = true;
        let pushed = if is_digest(reference) {
            shown
        } else {
            format!("{shown}@{}", manifest.digest)
        };
        t.reporter().status("Pushed", &pushed);
        Ok(outcome)
    }

    /// Every blob of `manifest`, [`CONCURRENT_BLOBS`] at a time, counted into `outcome`.
    async fn push_blobs(
        &self,
        repo: &str,
        manifest: &LocalManifest,
        mount_from: &[String],
        shown: &str,
        outcome: &mut PushOutcome,
    ) -> Result<(), RegistryError> {
        let total: u64 = manifest.blobs.iter().map(|b| b.size).sum();
        let overall: Box<dyn Progress> = if manifest.blobs.is_empty() {
            Box::new(crate::report::NoProgress)
        } else {
            self.transport.reporter().progress(
                "Pushing",
                &format!("{shown} ({} blobs)", manifest.blobs.len()),
                Some(total),
            )
        };
        let results: Vec<Result<BlobResult, RegistryError>> =
            futures_util::stream::iter(manifest.blobs.iter())
                .map(|b| self.push_blob(repo, b, mount_from, &*overall))
                .buffer_unordered(CONCURRENT_BLOBS)
                .collect()
                .await;
        overall.finish();
        for r in results {
            match r? {
                BlobResult::Present => outcome.blobs_present += 1,
                BlobResult::Mounted => outcome.blobs_mounted += 1,
                BlobResult::Uploaded(n) => {
                    outcome.blobs_uploaded += 1;
                    outcome.bytes_uploaded += n;
                }
            }
        }
        Ok(())
    }

    /// Every blob must be there before the manifest names it.
    async fn confirm_blobs(
        &self,
        repo: &str,
        manifest: &LocalManifest,
        shown: &str,
    ) -> Result<(), RegistryError> {
        for b in &manifest.blobs {
            if self.blob_size(repo, &b.digest).await?.is_none() {
                return Err(RegistryError::Request {
                    op: format!("confirming blob {} in {repo}", short(&b.digest)),
                    reference: shown.into(),
                    message: "the registry does not have it after the upload".into(),
                    hint: Some("the manifest was not pushed; retry the push".into()),
                });
            }
        }
        Ok(())
    }

    /// PUTs the manifest; returns the `OCI-Subject` the registry answered with, if any. A
    /// registry that computes another digest is an error.
    async fn put_manifest(
        &self,
        repo: &str,
        manifest: &LocalManifest,
        reference: &str,
        shown: &str,
    ) -> Result<Option<String>, RegistryError> {
        let t = &self.transport;
        let url = t.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let what = format!("PUT manifest {shown}");
        let body = Bytes::from(manifest.bytes.clone());
        let response = t
            .send(&what, &|c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, manifest.media_type.as_str())
                    .body(body.clone())
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(t.unexpected(&what, response).await);
        }
        if let Some(d) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if d != manifest.digest {
                return Err(RegistryError::DigestMismatch {
                    reference: shown.into(),
                    expected: manifest.digest.trim_start_matches("sha256:").into(),
                    actual: d.trim_start_matches("sha256:").into(),
                });
            }
        }
        Ok(response
            .headers()
            .get("oci-subject")
            .and_then(|v| v.to_str().ok())
            .map(String::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        assert_eq!(
            next_link(r#"</v2/r/referrers/sha256:a?n=1&last=x>; rel="next""#),
            Some("/v2/r/referrers/sha256:a?n=1&last=x")
        );
        assert_eq!(next_link(r#"<https://a/b>; rel="prev""#), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(range_end("0-0"), Some(0));
        assert_eq!(range_end("0-1023"), Some(1024));
        assert_eq!(range_end("bytes=0-9"), Some(10));
        assert_eq!(range_end("garbage"), None);
    }

    #[test]
    fn tag_change_json() {
        let v = serde_json::to_value(TagChange::Moved("sha256:ab".into())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "moved", "previous": "sha256:ab"})
        );
        let v = serde_json::to_value(TagChange::Created).unwrap();
        assert_eq!(v, serde_json::json!({"status": "created"}));
    }
}
