//! Registry credentials and the token dance.
//!
//! Credentials come from docker's config.json (`DOCKER_CONFIG` or `~/.docker/config.json`:
//! `auths`, `credsStore`, `credHelpers`), read by the docker_credential crate. A registry says
//! how it wants to be authenticated in its 401's `WWW-Authenticate`: `Basic` (send the
//! credentials) or `Bearer` (ask its token service for a token covering the scopes we need,
//! with the credentials as basic auth, or exchanging an identity token as an OAuth2 refresh
//! token, as docker does).
//!
//! Nothing in this module formats a secret: [`Credential`]'s `Debug` is redacted, and errors
//! name the registry and the realm, never a header.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::RegistryError;

/// A secret to authenticate with. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in config.json).
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}:<redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credential {
    /// The `Authorization` value for basic auth, if this is a username and password.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credential::IdentityToken(_) => None,
        }
    }

    /// Where this credential is described for the user (never its value).
    pub fn describe(&self) -> String {
        match self {
            Credential::Basic { username, .. } => format!("user `{username}`"),
            Credential::IdentityToken(_) => "an identity token".into(),
        }
    }
}

/// docker's config.json: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<std::path::PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".docker")))
        .map(|d| d.join("config.json"))
}

/// Looks up the credential for `registry` (host[:port]) in docker's config.
///
/// No config file or no entry means anonymous. A broken config or a failing helper is an
/// error: pushing anonymously when the user configured credentials would only fail later
/// with a more confusing 401.
pub fn lookup(registry: &str) -> Result<Option<Credential>, RegistryError> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let file =
        match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RegistryError::Auth {
                registry: registry.into(),
                message: format!("reading {}: {e}", path.display()),
                hint:
                    "make the docker config readable, or point DOCKER_CONFIG at another directory"
                        .into(),
            }),
        };
    let server = match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), server) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(Some(Credential::IdentityToken(token))),
        Err(E::NoCredentialConfigured) | Err(E::ConfigNotFound) => Ok(None),
        Err(e) => {
            // HelperFailure's Display includes the helper's stdout, which may hold a secret.
            let message = match e {
                E::HelperFailure { helper, .. } => {
                    format!("credential helper `docker-credential-{helper}` failed")
                }
                E::ConfigReadError => "it is not valid JSON".into(),
                other => other.to_string().to_lowercase(),
            };
            Err(RegistryError::Auth {
                registry: registry.into(),
                message: format!("reading credentials from {}: {message}", path.display()),
                hint: "fix the docker config (auths, credsStore, credHelpers), or point DOCKER_CONFIG at another directory".into(),
            })
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-case scheme: `basic` or `bearer`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="https://auth",service="registry",scope="repository:a:pull,push"`.
/// Quoted values may contain commas; unquoted values end at a comma.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_lowercase(),
        params,
    })
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// One token request: who asks the token service of `challenge`, for what.
pub struct TokenRequest<'a> {
    pub client: &'a reqwest::Client,
    pub registry: &'a str,
    pub challenge: &'a Challenge,
    pub scopes: &'a [String],
    pub credential: Option<&'a Credential>,
    /// The registry was declared plain HTTP (credentials may then go to a plain-HTTP realm).
    pub insecure: bool,
    pub policy: &'a crate::fetch::http::RetryPolicy,
    pub reporter: &'a dyn crate::report::Reporter,
}

/// The token service's URL (with `service` and `scope` in the query), and its redacted form.
struct Realm {
    url: reqwest::Url,
    shown: String,
    service: String,
}

impl TokenRequest<'_> {
    fn error(&self, message: String, hint: &str) -> RegistryError {
        RegistryError::Auth {
            registry: self.registry.into(),
            message,
            hint: hint.into(),
        }
    }

    /// Asks the token service named in the challenge for a token covering the scopes.
    ///
    /// With an identity token this is docker's OAuth2 refresh-token grant (POST); otherwise a
    /// GET, with basic auth when there are credentials, anonymous when not. Credentials go to
    /// a plain-HTTP realm only when the registry itself was declared insecure. 429, 5xx and
    /// resets are retried like registry requests.
    pub async fn fetch(&self) -> Result<String, RegistryError> {
        let realm = self.realm()?;
        let response = self.send(&realm).await?;
        self.read_token(&realm, response).await
    }

    fn realm(&self) -> Result<Realm, RegistryError> {
        let broken = "the registry's auth configuration is broken; ask its operator";
        let realm = self.challenge.params.get("realm").ok_or_else(|| {
            self.error(
                "the registry asked for a bearer token but named no realm".into(),
                broken,
            )
        })?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| self.error(format!("token realm `{realm}` is not a URL: {e}"), broken))?;
        let shown = {
            let mut u = url.clone();
            u.set_query(None);
            crate::fetch::http::redact_url(u.as_str())
        };
        if url.scheme() != "https" && self.credential.is_some() && !self.insecure {
            return Err(self.error(
                format!("the token service {shown} is plain HTTP; credentials are not sent over it"),
                "use an HTTPS token service, or declare the registry with --insecure-registry if plain HTTP is intended",
            ));
        }
        let service = self
            .challenge
            .params
            .get("service")
            .cloned()
            .unwrap_or_default();
        {
            let mut q = url.query_pairs_mut();
            if !service.is_empty() {
                q.append_pair("service", &service);
            }
            for s in self.scopes {
                q.append_pair("scope", s);
            }
        }
        Ok(Realm {
            url,
            shown,
            service,
        })
    }

    /// The request for the credential: the refresh-token grant, or a GET.
    fn request(&self, realm: &Realm) -> reqwest::RequestBuilder {
        match self.credential {
            Some(Credential::IdentityToken(token)) => {
                let scope = self.scopes.join(" ");
                let form: Vec<(&str, &str)> = vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", "etcdimg"),
                    ("refresh_token", token.as_str()),
                    ("service", realm.service.as_str()),
                    ("scope", scope.as_str()),
                ];
                let mut plain = realm.url.clone();
                plain.set_query(None);
                self.client.post(plain).form(&form)
            }
            other => {
                let mut r = self.client.get(realm.url.clone());
                if let Some(h) = other.and_then(Credential::basic_header) {
                    r = r.header(reqwest::header::AUTHORIZATION, h);
                }
                r
            }
        }
    }

    /// Sends the request, retrying 429, 5xx and resets (not a refused connection).
    async fn send(&self, realm: &Realm) -> Result<reqwest::Response, RegistryError> {
        let (policy, shown) = (self.policy, &realm.shown);
        let mut attempt = 0;
        loop {
            let (cause, after) = match self.request(realm).send().await {
                Ok(r) if crate::fetch::http::is_transient(r.status()) => {
                    (r.status().to_string(), crate::fetch::http::retry_after(&r))
                }
                Ok(r) => return Ok(r),
                Err(e) if e.is_connect() || attempt >= policy.retries => {
                    return Err(self.error(
                        format!(
                            "token service {shown}: {}",
                            crate::fetch::http::error_chain(&e)
                        ),
                        "is the token service reachable from here?",
                    ))
                }
                Err(e) => (crate::fetch::http::error_chain(&e), None),
            };
            if attempt >= policy.retries {
                return Err(self.error(
                    format!(
                        "token service {shown} answered {cause} {} times",
                        attempt + 1
                    ),
                    "retry later, or ask the registry's operator",
                ));
            }
            let delay = policy.delay(attempt, after);
            self.reporter.warn(&format!(
                "token service {shown}: {cause}; retrying in {:.1}s ({}/{})",
                delay.as_secs_f64(),
                attempt + 1,
                policy.retries
            ));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The token of a 2xx answer (`token`, else `access_token`); a refusal names who was
    /// refused, never the secret.
    async fn read_token(
        &self,
        realm: &Realm,
        response: reqwest::Response,
    ) -> Result<String, RegistryError> {
        let shown = &realm.shown;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            let who = self
                .credential
                .map(Credential::describe)
                .unwrap_or_else(|| "anonymous access".into());
            return Err(self.error(
                format!("token service {shown} refused {who} ({status})"),
                "the token service refused the credentials for this registry in DOCKER_CONFIG (or anonymous access, where there are none): check them (docker login), and that they may pull this repository (and push, where etcdimg pushes)",
            ));
        }
        if !status.is_success() {
            return Err(self.error(
                format!("token service {shown} answered {status}"),
                "retry later, or ask the registry's operator",
            ));
        }
        let body: TokenResponse = response.json().await.map_err(|e| {
            self.error(
                format!("token service {shown} sent no token: {e}"),
                "ask the registry's operator",
            )
        })?;
        body.token
            .filter(|t| !t.is_empty())
            .or(body.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                self.error(
                    format!("token service {shown} sent an empty token"),
                    "ask the registry's operator",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_commas_in_quotes() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "registry.example");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn basic_challenge() {
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Basic {
            username: "alice".into(),
            password: "s3cret-pw".into(),
        };
        let shown = format!("{c:?} {}", c.describe());
        assert!(shown.contains("alice"));
        assert!(!shown.contains("s3cret-pw"));
        let t = Credential::IdentityToken("tok-123".into());
        assert!(!format!("{t:?} {}", t.describe()).contains("tok-123"));
        assert_eq!(
            c.basic_header().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw")
            )
        );
    }
}
