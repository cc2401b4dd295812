//! One registry's HTTP: scheme and TLS, authentication on 401, and retries.
//!
//! Written over reqwest rather than oci-client because pushing needs what oci-client's request
//! layer does not expose: per-request retries that honour Retry-After and warn, a token whose
//! scopes cover several repositories (cross-repository mounts), the identity-token exchange,
//! and byte counters.
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

#[derive(Clone)]
enum Authorization {
    Anonymous,
    /// An `Authorization` header value (basic or bearer). Never formatted.
    Header(String),
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
}

/// Builds the HTTP client: system roots plus `ca_cert`.
pub fn http_client(ca_cert: Option<&Path>) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("etcdimg/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| RegistryError::Request {
            op: "reading the CA certificate".into(),
            reference: path.display().to_string(),
            message: e.to_string(),
            hint: Some("--ca-cert (or ca_cert in images.toml) must name a PEM file".into()),
        })?;
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
        ca_cert: Option<&Path>,
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
            client: http_client(ca_cert)?,
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

    /// Obtains authorization after a 401, following its challenge.
    async fn authenticate(
        &self,
        response: &Response,
        sent: &Authorization,
    ) -> Result<(), RegistryError> {
        let _guard = self.token_lock.lock().await;
        {
            // Another request may have refreshed it while we waited.
            let current = self.authorization.lock().expect("auth lock").clone();
            if let (Authorization::Header(a), Authorization::Header(b)) = (&current, sent) {
                if a != b {
                    return Ok(());
                }
            }
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
        let who = self
            .credential
            .as_ref()
            .map(Credential::describe)
            .unwrap_or_else(|| "anonymous access".into());
        let refused = |message: String| {
            RegistryError::Auth {
            registry: self.registry.clone(),
            message,
            hint: format!(
                "log in to {} (credentials are read from $DOCKER_CONFIG/config.json or ~/.docker/config.json: auths, credsStore, credHelpers) with an account that may push here",
                self.registry
            ),
        }
        };
        let value = match challenge.scheme.as_str() {
            "basic" => {
                if matches!(sent, Authorization::Header(_)) {
                    return Err(refused(format!("the registry refused {who} (401)")));
                }
                match self.credential.as_ref().and_then(Credential::basic_header) {
                    Some(h) => h,
                    None => {
                        return Err(refused(format!(
                            "the registry wants a username and password and there are none for `{}` in the docker config",
                            self.registry
                        )))
                    }
                }
            }
            "bearer" => {
                if matches!(sent, Authorization::Header(h) if h.starts_with("Bearer "))
                    && !challenge
                        .params
                        .get("error")
                        .is_some_and(|e| e == "invalid_token")
                {
                    // A fresh token was refused: retrying would loop.
                    return Err(refused(format!(
                        "the registry refused the token issued for {who} (401): it lacks the scopes {}",
                        self.scope_list().join(" ")
                    )));
                }
                let mut scopes = self.scope_list();
                if let Some(s) = challenge.params.get("scope") {
                    for s in s.split(' ') {
                        if !scopes.iter().any(|have| have == s) {
                            scopes.push(s.to_string());
                        }
                    }
                }
                let token = auth::fetch_token(
                    &self.client,
                    &self.registry,
                    &challenge,
                    &scopes,
                    self.credential.as_ref(),
                )
                .await?;
                format!("Bearer {token}")
            }
            other => {
                return Err(refused(format!(
                    "the registry asks for `{other}` authentication, which etcdimg does not speak"
                )))
            }
        };
        *self.authorization.lock().expect("auth lock") = Authorization::Header(value);
        Ok(())
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
    pub async fn attempt(
        &self,
        what: &str,
        make: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync),
    ) -> Result<Response, Failure> {
        for _ in 0..3 {
            let sent = self.authorization.lock().expect("auth lock").clone();
            let mut request = make(&self.client);
            if let Authorization::Header(h) = &sent {
                request = request.header(AUTHORIZATION, h);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() || e.is_builder() => {
                    return Err(Failure::Fatal(self.unreachable(what, &e)))
                }
                Err(e) => {
                    return Err(Failure::Transient {
                        cause: error_chain(&e),
                        retry_after: None,
                    })
                }
            };
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
                "the account has no push access to this repository on {}",
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
