//! A bundled etcd run on the data directory for a migration step: bound to 127.0.0.1 on free
//! ports (never the ports clients use), its output in a log file, and killed with us if we die
//! (PR_SET_PDEATHSIG). Readiness is `GET /health`, which reads and never writes the keyspace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::Child;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start `{bin}`: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("etcd {version} exited before it was ready ({status}); last log lines:\n{log}")]
    Exited {
        version: String,
        status: String,
        log: String,
    },
    #[error("etcd {version} was not ready after {seconds} s; last log lines:\n{log}")]
    NotReady {
        version: String,
        seconds: u64,
        log: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How the step's etcd meets its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// The data belongs to a single-member cluster: the peer port is a private loopback one,
    /// and raft's timers are short (there is nobody to elect against, and with etcd's defaults
    /// the first election alone takes 1-2 s of every start).
    Alone,
    /// A member of a multi-member cluster: the other members must reach it, so it listens on
    /// the configured peer URLs and keeps etcd's timers (or those in the extra args).
    Cluster {
        initial_cluster: String,
        listen_peer_urls: String,
        initial_advertise_peer_urls: String,
    },
}

impl Peers {
    /// `Cluster` when `initial_cluster` names more than one member.
    pub fn from_initial_cluster(
        initial_cluster: &str,
        listen_peer_urls: &str,
        initial_advertise_peer_urls: &str,
    ) -> Peers {
        let mut names: Vec<&str> = initial_cluster
            .split(',')
            .filter_map(|m| m.split_once('=').map(|(n, _)| n.trim()))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.len() > 1 {
            Peers::Cluster {
                initial_cluster: initial_cluster.into(),
                listen_peer_urls: listen_peer_urls.into(),
                initial_advertise_peer_urls: initial_advertise_peer_urls.into(),
            }
        } else {
            Peers::Alone
        }
    }
}

/// What to start: one bundled etcd on one data dir.
pub struct Launch<'a> {
    pub bin: &'a Path,
    pub version: &'a str,
    pub data_dir: &'a Path,
    pub name: &'a str,
    pub peers: &'a Peers,
    /// `--etcd-server-extra-args`; they come last, so they override migrate's own flags.
    pub extra_args: &'a [String],
    pub log_dir: &'a Path,
    pub timeout: Duration,
}

pub struct Server {
    child: Option<Child>,
    pub version: String,
    pub client_url: String,
    pub port: u16,
    log: PathBuf,
}

/// How many times a start that lost one of its picked ports to another process is tried.
const PORT_ATTEMPTS: u32 = 5;

/// What Go's net package says when a listener's port is taken.
const ADDRESS_IN_USE: &str = "address already in use";

use hostio::ports::free_port;

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP/1.0 request to the etcd on 127.0.0.1:`port`: (status, body). `None` when it could
/// not connect or the answer is not HTTP.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .strip_prefix("HTTP/1.")?
        .get(2..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((status, body.to_string()))
}

/// `GET /health`: true when etcd answers `"health":"true"`.
/// The storage version the running etcd reports (`GET /version`, 3.6+: `"storage":"3.6.0"`).
pub fn storage_version(client_port: u16) -> Option<String> {
    let (status, body) = http(client_port, "GET", "/version", None)?;
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    v["storage"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
}

fn healthy(client_port: u16) -> bool {
    matches!(http(client_port, "GET", "/health", None), Some((200, body)) if body.contains("\"health\":\"true\""))
}

impl Server {
    /// Starts the etcd of `launch` and waits until it is healthy.
    ///
    /// The loopback ports are picked free, then released for etcd to bind, so another process
    /// can take one in between (any outgoing connection on the host may get it as its local
    /// port). etcd binds its listeners before it opens the data dir, so a start that failed
    /// with "address already in use" touched nothing: it is retried on fresh ports, up to
    /// [`PORT_ATTEMPTS`] times.
    pub fn start(launch: &Launch) -> Result<Server, ServerError> {
        let mut attempt = 1;
        loop {
            match Server::spawn(launch)?.wait_ready(launch.timeout) {
                Err(ServerError::Exited { log, .. })
                    if attempt < PORT_ATTEMPTS && log.contains(ADDRESS_IN_USE) =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Spawns the etcd of `launch` on fresh loopback ports, its output in the log file.
    fn spawn(launch: &Launch) -> Result<Server, ServerError> {
        let Launch {
            bin,
            version,
            data_dir,
            name,
            peers,
            extra_args,
            log_dir,
            timeout: _,
        } = *launch;
        let client = free_port()?;
        let client_url = format!("http://127.0.0.1:{client}");
        let log = log_dir.join(format!("etcd-{version}.log"));
        let mut cmd = crate::process::etcd(bin)
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(data_dir)
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"));
        match peers {
            Peers::Alone => {
                let peer_url = format!("http://127.0.0.1:{}", free_port()?);
                cmd = cmd
                    .arg(format!("--listen-peer-urls={peer_url}"))
                    .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                    .arg(format!("--initial-cluster={name}={peer_url}"))
                    .args(["--heartbeat-interval=10", "--election-timeout=100"]);
            }
            Peers::Cluster {
                initial_cluster,
                listen_peer_urls,
                initial_advertise_peer_urls,
            } => {
                cmd = cmd
                    .arg(format!("--listen-peer-urls={listen_peer_urls}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls={initial_advertise_peer_urls}"
                    ))
                    .arg(format!("--initial-cluster={initial_cluster}"));
            }
        }
        let child = cmd
            .args(extra_args)
            .spawn_logged(&log)
            .map_err(|e| match e {
                hostio::process::ProcessError::Spawn { source, .. } => ServerError::Spawn {
                    bin: bin.display().to_string(),
                    source,
                },
                other => ServerError::Spawn {
                    bin: bin.display().to_string(),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
        Ok(Server {
            child: Some(child),
            version: version.into(),
            client_url,
            port: client,
            log,
        })
    }

    /// Waits until the spawned etcd answers `/health`, exits, or `timeout` passes (then it is
    /// stopped).
    fn wait_ready(mut self, timeout: Duration) -> Result<Server, ServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Err(ServerError::Exited {
                    version: self.version.clone(),
                    status: status.to_string(),
                    log: tail(&self.log, 15),
                });
            }
            if healthy(self.port) {
                return Ok(self);
            }
            if Instant::now() > deadline {
                let log = tail(&self.log, 15);
                self.stop();
                return Err(ServerError::NotReady {
                    version: self.version.clone(),
                    seconds: timeout.as_secs(),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The exit status, once the etcd has exited (later calls return None).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait()?;
        self.child = None;
        Some(status)
    }

    /// The log file etcd writes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until etcd's log holds `needle` (true), or until `timeout` or etcd's exit (false).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains(needle)) {
                return true;
            }
            if Instant::now() > deadline || self.exited().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to [`STOP_GRACE`] for etcd to close its backend and WAL, then SIGKILL.
    /// Returns whether etcd stopped cleanly: it exited by itself after the SIGTERM, having
    /// committed and closed everything (a SIGKILLed or crashed etcd may leave entries that only
    /// its WAL holds).
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        if child.try_wait().is_some() {
            return false;
        }
        child.signal(libc::SIGTERM);
        match child.wait_or_kill(STOP_GRACE) {
            (Some(status), true) => {
                use std::os::unix::process::ExitStatusExt;
                status.success() || status.signal() == Some(libc::SIGTERM)
            }
            _ => false,
        }
    }
}

/// How long etcd may take to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(60);

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
