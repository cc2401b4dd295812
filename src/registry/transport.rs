//! One registry's HTTP: scheme and TLS, authentication on 401, and retries.
//!
//! Written over reqwest rather than oci-client because pushes and pulls need what
//! oci-client's request layer does not expose (nor can it take our HTTP client): per-request
//! retries that honour Retry-After and warn, a token whose scopes cover several repositories
//! (cross-repository mounts), the identity-token exchange, and byte counters.
//!
//! TLS verifies against the system roots plus an optional extra CA. Plain HTTP is used only for
//! a registry the user declared insecure; a TLS failure is never retried over HTTP.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use super::auth::{self, Challenge, Credential};
use super::RegistryError;
use crate::fetch::http::{error_chain, is_transient, retry_after, RetryPolicy};
use crate::report::Reporter;

/// What went wrong with one attempt.
pub enum Failure {
    /// Worth retrying: a 429, a 5xx, a reset or a cut body. `cause` is what the user sees.
    Transient {
        cause: String,
        retry_after: Option<Duration>,
    },
    Fatal(RegistryError),
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        Failure::Fatal(e)
    }
}

/// What we send as `Authorization`. Never formatted.
#[derive(Clone, PartialEq, Eq)]
enum Authorization {
    Anonymous,
    Basic(String),
    /// A bearer token, the scopes it was issued for, and the challenge that named its service.
    Bearer {
        header: String,
        scopes: BTreeSet<String>,
        challenge: Challenge,
    },
}

impl Authorization {
    fn header(&self) -> Option<&str> {
        match self {
            Authorization::Anonymous => None,
            Authorization::Basic(h) => Some(h),
            Authorization::Bearer { header, .. } => Some(header),
        }
    }
}

/// Does a token issued for `have` cover scope `want` (`repository:NAME:ACTIONS`)?
pub fn covers(have: &BTreeSet<String>, want: &str) -> bool {
    let Some((resource, actions)) = want.rsplit_once(':') else {
        return have.contains(want);
    };
    let granted: BTreeSet<&str> = have
        .iter()
        .filter_map(|h| h.rsplit_once(':'))
        .filter(|(r, _)| *r == resource)
        .flat_map(|(_, a)| a.split(','))
        .collect();
    actions.split(',').all(|a| granted.contains(a))
}

pub struct Transport {
    client: reqwest::Client,
    /// host[:port] as the user wrote it.
    pub registry: String,
    base: reqwest::Url,
    insecure: bool,
    credential: Option<Credential>,
    authorization: Mutex<Authorization>,
    /// Token scopes to ask for: pull+push on the target, pull on mount sources.
    scopes: Mutex<BTreeSet<String>>,
    /// Serialises token fetches so that concurrent 401s ask once.
    token_lock: tokio::sync::Mutex<()>,
    pub policy: RetryPolicy,
    reporter: Arc<dyn Reporter>,
    /// Request body bytes sent to blob upload endpoints (what "uploaded nothing" counts).
    pub uploaded_bytes: AtomicU64,
    /// Set once the registry has answered: a refused connection is then a restart (transient),
    /// before it the registry is unreachable (fatal, fast).
    reached: std::sync::atomic::AtomicBool,
}

/// The extra CA certificate (PEM) of `--ca-cert` / `ca_cert`.
pub fn read_ca_cert(path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|e| RegistryError::Request {
        op: "reading the CA certificate".into(),
        reference: path.display().to_string(),
        message: e.to_string(),
        hint: Some("--ca-cert (or ca_cert in images.toml) must name a PEM file".into()),
    })
}

/// Builds the HTTP client: system roots plus `ca_cert`. One per run ([`super::session`]).
pub fn http_client(ca_cert: Option<&Path>) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("etcdimg/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120));
    if let Some(path) = ca_cert {
        let pem = read_ca_cert(path)?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::Request {
                op: "reading the CA certificate".into(),
                reference: path.display().to_string(),
                message: e.to_string(),
                hint: Some("the file must hold PEM certificates".into()),
            })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| RegistryError::Request {
        op: "creating the HTTP client".into(),
        reference: String::new(),
        message: error_chain(&e),
        hint: None,
    })
}

impl Transport {
    pub fn new(
        registry: &str,
        insecure: bool,
        client: reqwest::Client,
        credential: Option<Credential>,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Transport, RegistryError> {
        let scheme = if insecure { "http" } else { "https" };
        let base = reqwest::Url::parse(&format!("{scheme}://{registry}/")).map_err(|e| {
            RegistryError::BadReference {
                reference: registry.into(),
                message: e.to_string(),
            }
        })?;
        // Credentials are sent only after a Basic challenge, never preemptively: a registry
        // that wants a token must not see the password.
        let authorization = Authorization::Anonymous;
        Ok(Transport {
            client,
            registry: registry.into(),
            base,
            insecure,
            credential,
            authorization: Mutex::new(authorization),
            scopes: Mutex::new(BTreeSet::new()),
            token_lock: tokio::sync::Mutex::new(()),
            policy: RetryPolicy::from_env(),
            reporter,
            uploaded_bytes: AtomicU64::new(0),
            reached: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Asks for `actions` (`pull`, `pull,push`) on `repository` in the next token.
    pub fn want_scope(&self, repository: &str, actions: &str) {
        let mut scopes = self.scopes.lock().expect("scopes lock");
        let push = format!("repository:{repository}:pull,push");
        if actions == "pull" && scopes.contains(&push) {
            return;
        }
        if actions != "pull" {
            scopes.remove(&format!("repository:{repository}:pull"));
        }
        scopes.insert(format!("repository:{repository}:{actions}"));
    }

    /// `/v2/...` resolved against the registry, or an absolute `Location` as given.
    pub fn url(&self, path_or_location: &str) -> Result<reqwest::Url, RegistryError> {
        self.base
            .join(path_or_location)
            .map_err(|e| RegistryError::Request {
                op: "resolving a URL".into(),
                reference: path_or_location.into(),
                message: e.to_string(),
                hint: None,
            })
    }

    pub fn reporter(&self) -> &dyn Reporter {
        &*self.reporter
    }

    pub fn count_upload(&self, bytes: u64) {
        self.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn unreachable(&self, what: &str, err: &reqwest::Error) -> RegistryError {
        let message = error_chain(err);
        let lower = message.to_lowercase();
        let hint = if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("unknownissuer")
        {
            format!("the TLS certificate of `{}` is not trusted: pass its CA with --ca-cert (or ca_cert in images.toml)", self.registry)
        } else if !self.insecure
            && (lower.contains("http")
                || lower.contains("wrong version number")
                || lower.contains("corrupt message"))
        {
            format!(
                "if `{}` serves plain HTTP, declare it with --insecure-registry {} (never implied)",
                self.registry, self.registry
            )
        } else {
            format!(
                "is `{}` running and reachable from here? Check the host and port",
                self.registry
            )
        };
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            op: what.into(),
            message,
            hint,
        }
    }

    /// Obtains authorization after a 401, following its challenge. `sent` is what the refused
    /// request carried.
    async fn authenticate(
        &self,
        response: &Response,
        sent: &Authorization,
    ) -> Result<(), RegistryError> {
        let _guard = self.token_lock.lock().await;
        if *self.authorization.lock().expect("auth lock") != *sent {
            // Another request refreshed it while we waited: retry with that.
            return Ok(());
        }
        let header = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let challenge = auth::parse_challenge(header).unwrap_or(Challenge {
            scheme: "basic".into(),
            params: Default::default(),
        });
        let who = self.who();
        let value = match challenge.scheme.as_str() {
            "basic" => {
                if matches!(sent, Authorization::Basic(_)) {
                    return Err(self.refused(format!("the registry refused {who} (401)")));
                }
                match self.credential.as_ref().and_then(Credential::basic_header) {
                    Some(h) => Authorization::Basic(h),
                    None => {
                        return Err(self.refused(format!(
                            "the registry wants a username and password and there are none for `{}` in the docker config",
                            self.registry
                        )))
                    }
                }
            }
            "bearer" => {
                let mut wanted: BTreeSet<String> = self.scope_list().into_iter().collect();
                if let Some(s) = challenge.params.get("scope") {
                    wanted.extend(s.split(' ').filter(|s| !s.is_empty()).map(String::from));
                }
                if let Authorization::Bearer { scopes, .. } = sent {
                    if wanted.iter().all(|w| covers(scopes, w)) {
                        // A token that covers everything asked was refused: retrying would loop.
                        return Err(self.refused(format!(
                            "the registry refused the token issued for {who} (401): it does not grant {}",
                            wanted.iter().cloned().collect::<Vec<_>>().join(" ")
                        )));
                    }
                }
                self.token(&challenge, wanted).await?
            }
            other => {
                return Err(self.refused(format!(
                    "the registry asks for `{other}` authentication, which etcdimg does not speak"
                )))
            }
        };
        *self.authorization.lock().expect("auth lock") = value;
        Ok(())
    }

    async fn token(
        &self,
        challenge: &Challenge,
        scopes: BTreeSet<String>,
    ) -> Result<Authorization, RegistryError> {
        let list: Vec<String> = scopes.iter().cloned().collect();
        let token = auth::TokenRequest {
            client: &self.client,
            registry: &self.registry,
            challenge,
            scopes: &list,
            credential: self.credential.as_ref(),
            insecure: self.insecure,
            policy: &self.policy,
            reporter: &*self.reporter,
        }
        .fetch()
        .await?;
        Ok(Authorization::Bearer {
            header: format!("Bearer {token}"),
            scopes,
            challenge: challenge.clone(),
        })
    }

    /// Before a request: a bearer token that does not cover the scopes wanted now (a new
    /// repository, a mount source) is replaced, instead of waiting for the registry's 401.
    async fn ensure_scopes(&self) -> Result<(), RegistryError> {
        let current = self.authorization.lock().expect("auth lock").clone();
        let Authorization::Bearer {
            scopes, challenge, ..
        } = &current
        else {
            return Ok(());
        };
        let wanted: BTreeSet<String> = self.scope_list().into_iter().collect();
        if wanted.iter().all(|w| covers(scopes, w)) {
            return Ok(());
        }
        let _guard = self.token_lock.lock().await;
        if *self.authorization.lock().expect("auth lock") != current {
            return Ok(());
        }
        let mut all = scopes.clone();
        all.extend(wanted);
        let fresh = self.token(challenge, all).await?;
        *self.authorization.lock().expect("auth lock") = fresh;
        Ok(())
    }

    fn who(&self) -> String {
        self.credential
            .as_ref()
            .map(Credential::describe)
            .unwrap_or_else(|| "anonymous access".into())
    }

    fn refused(&self, message: String) -> RegistryError {
        RegistryError::Auth {
            registry: self.registry.clone(),
            message,
            hint: format!(
                "`{0}` refused the credentials (or anonymous access, where there are none): log in to {0} (credentials are read from $DOCKER_CONFIG/config.json or ~/.docker/config.json: auths, credsStore, credHelpers) with an account that may pull here, and push where etcdimg pushes",
                self.registry
            ),
        }
    }

    fn scope_list(&self) -> Vec<String> {
        self.scopes
            .lock()
            .expect("scopes lock")
            .iter()
            .cloned()
            .collect()
    }

    /// One attempt (plus re-authentication on 401): the response, whatever its status,
    /// except 429/5xx, which come back as transient failures.
    ///
    /// `Authorization` goes only to the registry itself (same scheme, host and port): an upload
    /// `Location` on another host (a CDN) never sees the credentials.
    pub async fn attempt(
        &self,
        what: &str,
        make: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync),
    ) -> Result<Response, Failure> {
        self.ensure_scopes().await?;
        for _ in 0..4 {
            let sent = self.authorization.lock().expect("auth lock").clone();
            let mut request = make(&self.client).build().map_err(|e| {
                Failure::Fatal(RegistryError::Request {
                    op: what.into(),
                    reference: self.registry.clone(),
                    message: error_chain(&e),
                    hint: None,
                })
            })?;
            if let Some(h) = sent.header() {
                if same_origin(request.url(), &self.base) {
                    let value = reqwest::header::HeaderValue::from_str(h).map_err(|_| {
                        Failure::Fatal(
                            self.refused("the credential is not a valid header value".into()),
                        )
                    })?;
                    request.headers_mut().insert(AUTHORIZATION, value);
                }
            }
            let response = match self.client.execute(request).await {
                Ok(r) => r,
                Err(e) if e.is_builder() => return Err(Failure::Fatal(self.unreachable(what, &e))),
                Err(e) if e.is_connect() && !self.reached.load(Ordering::Relaxed) => {
                    return Err(Failure::Fatal(self.unreachable(what, &e)))
                }
                Err(e) => {
                    return Err(Failure::Transient {
                        cause: error_chain(&e),
                        retry_after: None,
                    })
                }
            };
            self.reached.store(true, Ordering::Relaxed);
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                self.authenticate(&response, &sent).await?;
                continue;
            }
            if is_transient(status) {
                let after = retry_after(&response);
                let detail = error_detail(response).await;
                return Err(Failure::Transient {
                    cause: format!("{status}{detail}"),
                    retry_after: after,
                });
            }
            return Ok(response);
        }
        Err(Failure::Fatal(RegistryError::Auth {
            registry: self.registry.clone(),
            message: format!("{what}: the registry kept asking for authentication"),
            hint: "check the credentials for this registry in the docker config".into(),
        }))
    }

    /// Warns about a retry and waits for it.
    pub async fn back_off(&self, what: &str, attempt: u32, cause: &str, after: Option<Duration>) {
        let delay = self.policy.delay(attempt, after);
        self.reporter.warn(&format!(
            "{what}: {cause}; retrying in {:.1}s ({}/{})",
            delay.as_secs_f64(),
            attempt + 1,
            self.policy.retries
        ));
        tokio::time::sleep(delay).await;
    }

    /// [`attempt`](Self::attempt) with retries of transient failures.
    pub async fn send(
        &self,
        what: &str,
        make: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        let mut attempt = 0;
        loop {
            match self.attempt(what, make).await {
                Ok(r) => return Ok(r),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient { cause, retry_after }) => {
                    if attempt >= self.policy.retries {
                        return Err(RegistryError::GaveUp {
                            op: what.into(),
                            registry: self.registry.clone(),
                            attempts: attempt + 1,
                            last: cause,
                        });
                    }
                    self.back_off(what, attempt, &cause, retry_after).await;
                    attempt += 1;
                }
            }
        }
    }

    /// An error for a response whose status the caller did not expect.
    pub async fn unexpected(&self, what: &str, response: Response) -> RegistryError {
        let status = response.status();
        let detail = error_detail(response).await;
        let hint = match status {
            StatusCode::FORBIDDEN => Some(format!(
                "the account has no {} access to this repository on {}",
                if what.starts_with("HEAD") || what.starts_with("GET") {
                    "pull"
                } else {
                    "push"
                },
                self.registry
            )),
            StatusCode::NOT_FOUND => Some("check the repository name and the registry".into()),
            _ => None,
        };
        RegistryError::Request {
            op: what.into(),
            reference: self.registry.clone(),
            message: format!("{status}{detail}"),
            hint,
        }
    }
}

fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `: CODE message` from a distribution error body, or a short text snippet.
pub async fn error_detail(response: Response) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        if let Some(errors) = v.get("errors").and_then(|e| e.as_array()) {
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e.get("code").and_then(|c| c.as_str()).unwrap_or(""),
                        e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                    )
                    .trim()
                    .to_string()
                })
                .collect();
            if !parts.is_empty() {
                return format!(": {}", parts.join("; "));
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.chars().take(200).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_coverage_is_by_resource_and_action() {
        let have: BTreeSet<String> = ["repository:k8s/etcd:pull,push".to_string()].into();
        assert!(covers(&have, "repository:k8s/etcd:pull"));
        assert!(covers(&have, "repository:k8s/etcd:push,pull"));
        assert!(!covers(&have, "repository:library/busybox:pull"));
        assert!(!covers(&have, "repository:k8s/etcd:delete"));
        let origin = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(same_origin(
            &origin("https://r.io/v2/x"),
            &origin("https://r.io:443/")
        ));
        assert!(!same_origin(
            &origin("http://r.io/v2/x"),
            &origin("https://r.io/")
        ));
        assert!(!same_origin(
            &origin("https://cdn.r.io/x"),
            &origin("https://r.io/")
        ));
    }
}
