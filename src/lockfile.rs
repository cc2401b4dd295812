//! etcdimg's locks, on `hostio::lock`: exclusive `flock`s on small files for what two etcdimg
//! processes may write at once (an OCI layout's index.json, each cache entry while it is
//! produced).
//!
//! A lock file is never removed (nothing is gained: the files are tiny and few), so its only
//! content is who holds it now: `pid <n>: <command line>`. Waits are bounded by
//! `ETCDIMG_LOCK_TIMEOUT` (600 s); a waiter says on stderr (through `notify`) what it waits for
//! and who holds it, once and then every 10 s.

use std::path::Path;
use std::time::Duration;

pub use hostio::lock::{Held, LockError};

/// How long lock waits may last: `ETCDIMG_LOCK_TIMEOUT` seconds, else 10 minutes.
pub fn default_timeout() -> Duration {
    std::env::var("ETCDIMG_LOCK_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(600))
}

/// Takes the exclusive lock on `path` (created with its parents if missing), waiting up to
/// [`default_timeout`] for another holder; `what` names the guarded thing in messages.
pub fn acquire(path: &Path, what: &str, notify: &dyn Fn(&str)) -> Result<Held, LockError> {
    let opts = hostio::lock::LockOptions {
        what,
        timeout: default_timeout(),
        holder: hostio::lock::holder_command_line(),
        remove_on_release: false,
    };
    hostio::lock::acquire(path, &opts, &|b| {
        notify(&format!(
            "for {}, held by {} (up to {} s more)",
            b.what,
            b.holder,
            b.left.as_secs()
        ))
    })
}
