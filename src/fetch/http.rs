//! HTTP GET with retries and resume. Transient failures (5xx, 429, resets, timeouts, a body cut
//! short) are retried with exponential backoff; a retry resumes with `Range` when the server
//! answers 206, and starts over when it answers 200. Each retry warns; the final error keeps
//! the last real cause.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE, RETRY_AFTER};
use reqwest::StatusCode;

use super::cache::PendingBlob;
use super::FetchError;
use crate::report::Reporter;

/// Shows a URL without any userinfo (`https://user:pass@host` → `https://host`).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.split('@').next_back().unwrap_or(url).to_string(),
    }
}

/// How often and how patiently transient failures are retried; shared by downloads and pushes.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    pub base_delay: Duration,
}

impl RetryPolicy {
    /// `ETCDIMG_HTTP_RETRIES` (default 4) and `ETCDIMG_HTTP_RETRY_DELAY_MS` (default 500,
    /// doubling each time).
    pub fn from_env() -> RetryPolicy {
        let retries = std::env::var("ETCDIMG_HTTP_RETRIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let delay_ms = std::env::var("ETCDIMG_HTTP_RETRY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        RetryPolicy {
            retries,
            base_delay: Duration::from_millis(delay_ms),
        }
    }

    /// The wait before retry number `attempt + 1`: the server's Retry-After when it gave one
    /// (capped at 60 s), exponential backoff otherwise.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.base_delay.saturating_mul(1 << attempt.min(6));
        retry_after.unwrap_or(backoff).min(Duration::from_secs(60))
    }
}

#[derive(Clone)]
pub struct Http {
    /// Built on first use: loading the system's TLS roots costs tens of milliseconds, and a
    /// warm build downloads nothing.
    client: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
    /// Retries after the first attempt.
    pub retries: u32,
    pub base_delay: Duration,
}

enum Attempt {
    Done,
    /// Retry; the message says why.
    Retry(String, Option<Duration>),
}

impl Http {
    /// A client with the retry policy from `ETCDIMG_HTTP_RETRIES` (default 4) and
    /// `ETCDIMG_HTTP_RETRY_DELAY_MS` (default 500, doubling each time).
    pub fn new() -> Result<Http, FetchError> {
        let RetryPolicy {
            retries,
            base_delay,
        } = RetryPolicy::from_env();
        Ok(Http {
            client: Default::default(),
            retries,
            base_delay,
        })
    }

    fn client(&self) -> Result<&reqwest::Client, FetchError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let built = reqwest::Client::builder()
            .user_agent(concat!("etcdimg/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(self.client.get_or_init(|| built))
    }

    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        RetryPolicy {
            retries: self.retries,
            base_delay: self.base_delay,
        }
        .delay(attempt, retry_after)
    }

    /// GETs a small document into memory.
    pub async fn get_bytes(
        &self,
        url: &str,
        reporter: &dyn Reporter,
    ) -> Result<Vec<u8>, FetchError> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                reporter.warn(&format!(
                    "retrying GET {} ({}/{}) after: {last}",
                    redact_url(url),
                    attempt,
                    self.retries
                ));
            }
            match self.client()?.get(url).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        match resp.bytes().await {
                            Ok(b) => return Ok(b.to_vec()),
                            Err(e) => last = format!("reading the body: {}", error_chain(&e)),
                        }
                    } else if is_transient(status) {
                        let after = retry_after(&resp);
                        last = format!("{status}");
                        tokio::time::sleep(self.delay(attempt, after)).await;
                        continue;
                    } else {
                        return Err(FetchError::Status {
                            url: redact_url(url),
                            status: status.to_string(),
                        });
                    }
                }
                Err(e) => last = error_chain(&e),
            }
            tokio::time::sleep(self.delay(attempt, None)).await;
        }
        Err(FetchError::Network {
            url: redact_url(url),
            attempts: self.retries + 1,
            last,
        })
    }

    /// Streams `url` into `sink`, resuming after transient failures.
    pub async fn download(
        &self,
        url: &str,
        sink: &mut PendingBlob,
        reporter: &dyn Reporter,
        label: &str,
    ) -> Result<(), FetchError> {
        let progress = reporter.progress("Downloading", label, None);
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                reporter.warn(&format!(
                    "retrying GET {} ({}/{}, have {} bytes) after: {last}",
                    redact_url(url),
                    attempt,
                    self.retries,
                    sink.written
                ));
            }
            match self.attempt(url, sink, &*progress).await? {
                Attempt::Done => {
                    progress.finish();
                    return Ok(());
                }
                Attempt::Retry(why, after) => {
                    last = why;
                    tokio::time::sleep(self.delay(attempt, after)).await;
                }
            }
        }
        progress.finish();
        Err(FetchError::Network {
            url: redact_url(url),
            attempts: self.retries + 1,
            last,
        })
    }

    async fn attempt(
        &self,
        url: &str,
        sink: &mut PendingBlob,
        progress: &dyn crate::report::Progress,
    ) -> Result<Attempt, FetchError> {
        let mut request = self.client()?.get(url);
        let have = sink.written;
        if have > 0 {
            request = request.header(RANGE, format!("bytes={have}-"));
        }
        let resp = match request.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(error_chain(&e), None)),
        };
        let status = resp.status();
        if is_transient(status) {
            return Ok(Attempt::Retry(status.to_string(), retry_after(&resp)));
        }
        match status {
            StatusCode::OK => {
                if have > 0 {
                    // The server ignored Range: start over.
                    sink_reset(sink).map_err(|e| FetchError::Io(e.to_string()))?;
                    progress.set_position(0);
                }
            }
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(have) {
                    sink_reset(sink).map_err(|e| FetchError::Io(e.to_string()))?;
                    progress.set_position(0);
                    return Ok(Attempt::Retry(
                        format!("server resumed at {start:?}, expected {have}"),
                        None,
                    ));
                }
            }
            _ => {
                return Err(FetchError::Status {
                    url: redact_url(url),
                    status: status.to_string(),
                })
            }
        }
        let expected_total = resp.content_length().map(|n| n + sink.written);
        if let Some(total) = expected_total {
            progress.set_length(total);
        }
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    sink.write_all(&bytes)
                        .map_err(|e| FetchError::Io(e.to_string()))?;
                    progress.advance(bytes.len() as u64);
                }
                Err(e) => {
                    return Ok(Attempt::Retry(
                        format!(
                            "body truncated: connection lost after {} bytes: {}",
                            sink.written,
                            error_chain(&e)
                        ),
                        None,
                    ))
                }
            }
        }
        if let Some(total) = expected_total {
            if sink.written < total {
                return Ok(Attempt::Retry(
                    format!("body truncated: got {} of {total} bytes", sink.written),
                    None,
                ));
            }
        }
        Ok(Attempt::Done)
    }
}

fn sink_reset(sink: &mut PendingBlob) -> std::io::Result<()> {
    sink.reset()
}

pub(crate) fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// An error and its causes on one line, with any URL redacted.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let joined = parts.join(": ");
    // reqwest includes the URL in its messages; strip any userinfo from it.
    joined
        .split(' ')
        .map(|w| {
            if w.contains("://") && w.contains('@') {
                redact_url(w.trim_matches(['(', ')']))
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_userinfo() {
        assert_eq!(
            redact_url("https://user:secret@example.com/x"),
            "https://example.com/x"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/v3.5.1/SHA256SUMS"),
            "http://127.0.0.1:8080/v3.5.1/SHA256SUMS"
        );
    }
}
