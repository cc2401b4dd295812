//! One run's registry connections: one HTTP client (the system roots and `--ca-cert`, loaded
//! once, on first use) and one [`Transport`] per registry, so base pulls, pushes and plans
//! share connections, tokens and retry counters.
//!
//! Owns: which registries are plain HTTP (`--insecure-registry`; never implied) and the
//! credentials looked up for each (docker config, once per registry).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use super::transport::{http_client, Transport};
use super::{auth, RegistryError};
use crate::report::Reporter;

/// Registry connection options.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (host[:port]) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// An extra CA certificate (PEM) trusted beside the system roots.
    pub ca_cert: Option<PathBuf>,
}

pub struct Session {
    options: RegistryOptions,
    reporter: Arc<dyn Reporter>,
    client: OnceLock<reqwest::Client>,
    transports: Mutex<BTreeMap<String, Arc<Transport>>>,
}

impl Session {
    pub fn new(options: RegistryOptions, reporter: Arc<dyn Reporter>) -> Arc<Session> {
        Arc::new(Session {
            options,
            reporter,
            client: OnceLock::new(),
            transports: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// Is `registry` one the user declared plain HTTP?
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.options.insecure.iter().any(|h| h == registry)
    }

    /// The run's HTTP client (a cheap handle to one connection pool).
    fn client(&self) -> Result<reqwest::Client, RegistryError> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let built = http_client(self.options.ca_cert.as_deref())?;
        Ok(self.client.get_or_init(|| built).clone())
    }

    /// The transport to `registry` (host[:port]), made on first use.
    pub fn transport(&self, registry: &str) -> Result<Arc<Transport>, RegistryError> {
        if let Some(t) = self.transports.lock().expect("transports").get(registry) {
            return Ok(t.clone());
        }
        let credential = auth::lookup(registry)?;
        let transport = Arc::new(Transport::new(
            registry,
            self.is_insecure(registry),
            self.client()?,
            credential,
            self.reporter.clone(),
        )?);
        Ok(self
            .transports
            .lock()
            .expect("transports")
            .entry(registry.to_string())
            .or_insert(transport)
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transport_per_registry_for_the_whole_run() {
        let session = Session::new(
            RegistryOptions {
                insecure: vec!["127.0.0.1:5000".into()],
                ca_cert: None,
            },
            Arc::new(crate::report::Silent),
        );
        let a = session.transport("127.0.0.1:5000").unwrap();
        let b = session.transport("127.0.0.1:5000").unwrap();
        let c = session.transport("registry.example").unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same registry shares one transport"
        );
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(
            session.client.get().is_some(),
            "the client was built once, on first use"
        );
        assert!(session.is_insecure("127.0.0.1:5000"));
        assert!(!session.is_insecure("registry.example"));
    }
}
