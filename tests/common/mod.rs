//! Test harness: real external tools, real servers on 127.0.0.1, a temp sandbox per test.
//!
//! A test that needs a tool calls `require(...)`: when the tool is missing it prints
//! `skipping <test>: <tool> not found` and returns false, unless ETCDIMG_TEST_REQUIRE=all (set
//! by CI), where it panics instead.
#![allow(dead_code)]

pub mod world;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn require_all() -> bool {
    std::env::var("ETCDIMG_TEST_REQUIRE")
        .map(|v| v == "all")
        .unwrap_or(false)
}

/// True if `tool` is on PATH; otherwise skips (or fails under ETCDIMG_TEST_REQUIRE=all).
pub fn require(test: &str, tool: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    if require_all() {
        panic!("{test}: required tool `{tool}` not found (ETCDIMG_TEST_REQUIRE=all); run scripts/install-deps.sh");
    }
    eprintln!("skipping {test}: {tool} not found");
    false
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// The fixtures built by scripts/fixtures.sh, or skip.
pub fn fixtures(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("ETCDIMG_TEST_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/fixtures"));
    if dir.join("mirror").is_dir() && dir.join("busybox-oci/index.json").is_file() {
        return Some(dir);
    }
    if require_all() {
        panic!(
            "{test}: fixtures missing at {} (ETCDIMG_TEST_REQUIRE=all); run scripts/fixtures.sh",
            dir.display()
        );
    }
    eprintln!("skipping {test}: fixtures not built (run scripts/fixtures.sh)");
    None
}

#[path = "../../migrate/tests/common/tree.rs"]
mod tree;
#[allow(unused_imports)]
pub use tree::tree_bytes;

/// A free loopback port (see [`hostio::ports`]).
pub fn free_port() -> u16 {
    hostio::ports::free_port().expect("a free loopback port")
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not start listening on 127.0.0.1:{port}");
}

/// A child process killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A static file server (python3 http.server, which we did not write) over `dir`, laid out
/// like the GitHub releases URL: /v<V>/etcd-v<V>-linux-<arch>.tar.gz, /v<V>/SHA256SUMS.
pub fn http_mirror(dir: &Path) -> Server {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 http.server");
    wait_for_port(port, "http mirror");
    Server {
        child,
        port,
        _dir: None,
    }
}

/// Debian's docker-registry (distribution 2.8) with filesystem storage, on 127.0.0.1.
pub fn registry() -> Server {
    registry_with(None, None)
}

/// Like [`registry`], optionally behind TLS (`(cert, key)` PEM files) and with an `auth:`
/// section (see [`htpasswd_auth`], [`token_auth`]).
pub fn registry_with(tls: Option<(&Path, &Path)>, auth: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    if let Some((cert, key)) = tls {
        config.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ));
    }
    if let Some(auth) = auth {
        config.push_str(auth);
    }
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry");
    wait_for_port(port, "docker-registry");
    Server {
        child,
        port,
        _dir: Some(dir),
    }
}

/// go-containerregistry's registry with its OCI 1.1 referrers API on (scripts/go/ggcr-registry,
/// built by scripts/install-deps.sh) on 127.0.0.1, blobs on disk: a real registry that offers
/// the API, which distribution 2.8 lacks.
pub fn ggcr_registry(binary: &Path) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(binary)
        .arg(format!("127.0.0.1:{port}"))
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ggcr-registry");
    wait_for_port(port, "ggcr-registry");
    Server {
        child,
        port,
        _dir: Some(dir),
    }
}

/// The `auth:` section for htpasswd basic auth.
pub fn htpasswd_auth(path: &Path) -> String {
    format!(
        "auth:\n  htpasswd:\n    realm: etcdimg-test\n    path: {}\n",
        path.display()
    )
}

/// The `auth:` section for the bearer-token flow: tokens from `realm`, signed by the key of
/// `cert` (which the registry trusts as its root bundle).
pub fn token_auth(realm: &str, service: &str, issuer: &str, cert: &Path) -> String {
    format!(
        "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
        cert.display()
    )
}

/// Copies the fixture busybox layout into `registry` with skopeo; returns the reference.
pub fn push_base(fixtures: &Path, registry: &Server) -> String {
    let reference = format!("127.0.0.1:{}/library/busybox:1.35", registry.port);
    let out = Command::new("skopeo")
        .args(["copy", "--all", "--quiet", "--dest-tls-verify=false"])
        .arg(format!(
            "oci:{}:1.35",
            fixtures.join("busybox-oci").display()
        ))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

/// The Go module cache scripts/fixtures.sh filled, shared by the tests.
pub fn go_mod_cache() -> PathBuf {
    std::env::var_os("GOMODCACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/go/mod"))
}

/// The go command's module settings for tests: the shared module cache, and as GOPROXY its
/// download folder (a GOPROXY directory that also serves the checksum database's cached
/// tiles), so that no test reaches the network; the checksum database stays on.
pub fn go_module_env() -> Vec<(String, String)> {
    let cache = go_mod_cache();
    vec![
        ("GOMODCACHE".to_string(), cache.display().to_string()),
        (
            "GOPROXY".to_string(),
            format!("file://{}", cache.join("cache/download").display()),
        ),
        ("GOSUMDB".to_string(), "sum.golang.org".to_string()),
        ("GONOSUMDB".to_string(), String::new()),
        ("GOPRIVATE".to_string(), String::new()),
        ("GONOPROXY".to_string(), String::new()),
        ("GOTOOLCHAIN".to_string(), "local".to_string()),
        // The checksum database's verified tree head (pkg/sumdb) of the fixtures' go runs.
        (
            "GOPATH".to_string(),
            std::env::var("ETCDIMG_TEST_GOPATH")
                .unwrap_or_else(|_| repo_root().join("target/go/path").display().to_string()),
        ),
    ]
}

/// The amd64 etcd versions scripts/fixtures.sh built into `<fixtures>/bin`, oldest first.
pub fn fixture_versions(fx: &Path) -> Vec<semver::Version> {
    let text = std::fs::read_to_string(fx.join("etcd-versions")).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/fixtures.sh",
            fx.join("etcd-versions").display()
        )
    });
    let mut v: Vec<semver::Version> = text
        .split_whitespace()
        .map(|s| semver::Version::parse(s).expect("a version in etcd-versions"))
        .collect();
    v.sort();
    v
}

/// The newest fixture version of minor 3.`minor`.
pub fn newest_fixture(fx: &Path, minor: u64) -> semver::Version {
    fixture_versions(fx)
        .into_iter()
        .filter(|v| (v.major, v.minor) == (3, minor))
        .max()
        .unwrap_or_else(|| panic!("no etcd 3.{minor} in the fixtures; run scripts/fixtures.sh"))
}

/// A per-test sandbox: its own cache, output dir and working dir.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let env = vec![
            (
                "ETCDIMG_CACHE".to_string(),
                dir.path().join("cache").display().to_string(),
            ),
            (
                "ETCDIMG_CONFIG".to_string(),
                repo_root().join("images.toml").display().to_string(),
            ),
            ("ETCDIMG_NO_PROGRESS".to_string(), "1".to_string()),
            // Most tests build the fixtures' small, old pair (3.5.1 bundling 3.4.23) through the
            // Makefile's override variables; `use_config` drops these, and `unset` them to
            // build images.toml's defaults (3.6.17 bundling 3.5.36), which the loopback mirror
            // also holds (built from their Go modules by scripts/fixtures.sh).
            ("ETCD_VERSION".to_string(), "3.5.1".to_string()),
            (
                "BUNDLED_ETCD_VERSIONS".to_string(),
                "3.4.23 3.5.1".to_string(),
            ),
            // Those are below etcd's production minimum (3.5.6): the release verbs refuse them
            // unless allowed. The tests that are about that refusal unset this.
            ("ETCDIMG_ALLOW_UNSAFE_VERSIONS".to_string(), "1".to_string()),
            // The fixtures are built with the machine's Go (1.26.8), below the Go policy's
            // minimum (1.26.10): the release verbs refuse them unless allowed. The tests about
            // that refusal unset this.
            ("ETCDIMG_ALLOW_UNSUPPORTED_GO".to_string(), "1".to_string()),
            ("ETCDIMG_HTTP_RETRY_DELAY_MS".to_string(), "20".to_string()),
            // HOME moves into the sandbox; Go's compile cache stays shared between tests (it
            // is keyed by content, and cross-compiling etcd cold takes a minute per arch).
            (
                "GOCACHE".to_string(),
                std::env::var("GOCACHE")
                    .unwrap_or_else(|_| repo_root().join("target/go-build").display().to_string()),
            ),
        ];
        let mut env = env;
        env.extend(go_module_env());
        Sandbox { dir, env }
    }

    /// Releases from the loopback `mirror`, the base from the fixtures' busybox layout.
    pub fn local_sources(&mut self, fx: &Path, mirror: &Server) -> &mut Sandbox {
        self.set(
            "ETCD_RELEASE_URL",
            format!("http://127.0.0.1:{}", mirror.port),
        )
        .set(
            "BASEIMAGE",
            format!("oci:{}:1.35", fx.join("busybox-oci").display()),
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `config` as the sandbox's images.toml and builds into `<sandbox>/oci`.
    pub fn use_config(&mut self, config: &str) -> &mut Sandbox {
        let path = self.path().join("images.toml");
        std::fs::write(&path, config).unwrap();
        self.unset("ETCD_VERSION").unset("BUNDLED_ETCD_VERSIONS");
        let output = self.path().join("oci");
        self.set("ETCDIMG_CONFIG", path.display().to_string())
            .set("ETCDIMG_OUTPUT", output.display().to_string())
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn unset(&mut self, key: &str) -> &mut Sandbox {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Sandbox {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn etcdimg(&self, args: &[&str]) -> Output {
        self.etcdimg_in(self.path(), args)
    }

    pub fn etcdimg_in(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdimg"));
        cmd.args(args).current_dir(cwd).env("HOME", self.path());
        for var in [
            "ETCD_VERSION",
            "BUNDLED_ETCD_VERSIONS",
            "REVISION",
            "ARCH",
            "REGISTRY",
            "PUSH_REGISTRY",
            "BASEIMAGE",
            "ETCD_RELEASE_URL",
            "SOURCE_DATE_EPOCH",
            "ALL_ARCH",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Every file under the cache's blobs and refs (what a failed build must not leave).
    pub fn cache_entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["blobs/sha256", "refs", "tmp"] {
            walk(&self.cache().join(sub), &mut out);
        }
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p.display().to_string());
        }
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Makes a mirror directory whose files are hard links to the fixture mirror, to be altered.
pub fn mirror_copy(fixtures: &Path, into: &Path) -> PathBuf {
    let dest = into.join("mirror");
    for version_dir in std::fs::read_dir(fixtures.join("mirror"))
        .unwrap()
        .flatten()
    {
        let vd = dest.join(version_dir.file_name());
        std::fs::create_dir_all(&vd).unwrap();
        for f in std::fs::read_dir(version_dir.path()).unwrap().flatten() {
            std::fs::copy(f.path(), vd.join(f.file_name())).unwrap();
        }
    }
    dest
}

/// Rewrites a mirror folder's SHA256SUMS to match its files (as a consistent but bad mirror).
pub fn regenerate_sums(version_dir: &Path) {
    use sha2::{Digest, Sha256};
    let mut lines = String::new();
    let mut names: Vec<_> = std::fs::read_dir(version_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let n = n.to_string_lossy().into_owned();
        if n.ends_with(".tar.gz") {
            let bytes = std::fs::read(version_dir.join(&n)).unwrap();
            lines.push_str(&format!("{}  {n}\n", hex::encode(Sha256::digest(&bytes))));
        }
    }
    std::fs::write(version_dir.join("SHA256SUMS"), lines).unwrap();
}

pub fn http_response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// One request as the fault proxy saw it.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    /// Request number, from 0.
    pub n: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Body bytes received from the client.
    pub body_len: usize,
}

impl ProxyRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The first byte of a chunked upload's `Content-Range: start-end`, or 0.
    pub fn range_start(&self) -> usize {
        self.header("content-range")
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn is_blob_upload(&self) -> bool {
        self.path.contains("/blobs/uploads/")
    }

    /// The first byte of a download's `Range: bytes=N-`, if it asked for one.
    pub fn range(&self) -> Option<u64> {
        self.header("range")
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse().ok())
    }
}

/// Makes a response from a request body.
pub type Answer = Box<dyn FnOnce(&[u8]) -> Vec<u8> + Send>;

/// What the proxy does with a request.
pub enum Fault {
    Forward,
    /// Read the whole body, then answer with what this returns (a server of our own, for
    /// things like a token service).
    Answer(Answer),
    /// Answer this instead of the registry.
    Respond(Vec<u8>),
    /// Read this many body bytes, then close the connection without answering.
    Cut(usize),
}

/// The tests' one in-process server: a threaded HTTP/1.1 proxy in front of a real server (the
/// registry, the release mirror) that injects faults the real one will not produce by itself,
/// and logs every request (what "uploaded zero bytes" counts). Each response closes its
/// connection. [`FaultProxy::serve`] has no upstream, for a server of our own (a token
/// service).
pub struct FaultProxy {
    pub port: u16,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<ProxyRequest>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FaultProxy {
    /// No upstream: every request is answered by `decide` (`Forward` gets a 502).
    pub fn serve<F>(decide: F) -> FaultProxy
    where
        F: Fn(&ProxyRequest) -> Fault + Send + Sync + 'static,
    {
        FaultProxy::start(0, decide)
    }

    pub fn start<F>(upstream: u16, decide: F) -> FaultProxy
    where
        F: Fn(&ProxyRequest) -> Fault + Send + Sync + 'static,
    {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicUsize::new(0));
        let decide = Arc::new(decide);
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let (log, decide, counter) = (log2.clone(), decide.clone(), counter.clone());
                std::thread::spawn(move || {
                    let _ = proxy_connection(stream, upstream, &*decide, &log, &counter);
                });
            }
        });
        FaultProxy { port, log, stop }
    }

    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn proxy_connection(
    mut client: TcpStream,
    upstream: u16,
    decide: &(dyn Fn(&ProxyRequest) -> Fault + Send + Sync),
    log: &std::sync::Mutex<Vec<ProxyRequest>>,
    counter: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let k = client.read(&mut chunk)?;
        if k == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..k]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut req = ProxyRequest {
        n: counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        method,
        path,
        headers,
        body_len: 0,
    };
    let fault = decide(&req);
    let mut body = buf[head_end..].to_vec();
    let limit = match fault {
        Fault::Cut(n) => n.min(length),
        _ => length,
    };
    while body.len() < limit {
        let k = client.read(&mut chunk)?;
        if k == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..k]);
    }
    req.body_len = body.len().min(length);
    log.lock().unwrap().push(req.clone());
    match fault {
        Fault::Cut(_) => {
            let _ = client.shutdown(std::net::Shutdown::Both);
            Ok(())
        }
        Fault::Respond(bytes) => {
            client.write_all(&bytes)?;
            client.flush()
        }
        Fault::Answer(answer) => {
            client.write_all(&answer(&body))?;
            client.flush()
        }
        Fault::Forward if upstream == 0 => {
            client.write_all(&http_response(
                "502 Bad Gateway",
                &[("Content-Length", "0".into())],
                b"",
            ))?;
            client.flush()
        }
        Fault::Forward => {
            let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
            let mut out = format!("{request_line}\r\n");
            for (k, v) in &req.headers {
                if !k.eq_ignore_ascii_case("connection") {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            out.push_str("Connection: close\r\n\r\n");
            up.write_all(out.as_bytes())?;
            up.write_all(&body)?;
            let mut response = Vec::new();
            up.read_to_end(&mut response)?;
            client.write_all(&response)?;
            client.flush()
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (a query string or a form body).
pub fn form_pairs(text: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let h = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                    out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `go version -m BINARY` as JSON in the shape of `etcdimg::buildinfo::GoBuildInfo` (go_version,
/// path, main, deps with replace, settings): the Go toolchain's own reading, to check ours by.
pub fn go_version_m(binary: &Path) -> serde_json::Value {
    let out = run(Command::new("go").arg("version").arg("-m").arg(binary));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let go_version = first.rsplit_once(": ").map(|(_, v)| v).unwrap_or("");
    let module = |f: &[&str]| {
        serde_json::json!({
            "path": f.first().copied().unwrap_or(""),
            "version": f.get(1).copied().unwrap_or(""),
            "sum": f.get(2).copied().unwrap_or(""),
        })
    };
    let (mut path, mut main, mut deps) = (String::new(), None, Vec::<serde_json::Value>::new());
    let mut settings = serde_json::Map::new();
    let mut last_main = false;
    for line in lines {
        let line = line.strip_prefix('\t').unwrap_or(line);
        let (kind, rest) = line.split_once('\t').unwrap_or((line, ""));
        let fields: Vec<&str> = rest.split('\t').collect();
        match kind {
            "path" => path = rest.to_string(),
            "mod" => {
                main = Some(module(&fields));
                last_main = true;
            }
            "dep" => {
                deps.push(module(&fields));
                last_main = false;
            }
            "=>" => {
                let target = if last_main {
                    main.as_mut()
                } else {
                    deps.last_mut()
                };
                target.unwrap()["replace"] = module(&fields);
            }
            "build" => {
                // `go version -m` prints settings as the binary holds them (quoted where
                // needed); unquote the simple cases the same way ours does.
                let (k, v) = rest.split_once('=').unwrap();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
                    .unwrap_or_else(|| v.to_string());
                settings.insert(k.to_string(), serde_json::Value::String(v));
            }
            _ => {}
        }
    }
    serde_json::json!({
        "go_version": go_version, "path": path, "main": main, "deps": deps, "settings": settings,
    })
}

/// Our reading of a binary's build info, in the same shape as [`go_version_m`] (sums and
/// replacements always present, for an exact comparison).
pub fn our_build_info(info: &serde_json::Value) -> serde_json::Value {
    let module = |m: &serde_json::Value| {
        let mut out = serde_json::json!({
            "path": m["path"], "version": m["version"],
            "sum": m.get("sum").cloned().unwrap_or(serde_json::json!("")),
        });
        if let Some(r) = m.get("replace") {
            out["replace"] = serde_json::json!({
                "path": r["path"], "version": r["version"],
                "sum": r.get("sum").cloned().unwrap_or(serde_json::json!("")),
            });
        }
        out
    };
    serde_json::json!({
        "go_version": info["go_version"],
        "path": info["path"],
        "main": if info["main"].is_null() { serde_json::Value::Null } else { module(&info["main"]) },
        "deps": info["deps"].as_array().map(|d| d.iter().map(module).collect::<Vec<_>>()).unwrap_or_default(),
        "settings": info["settings"],
    })
}

/// Unpacks `layout:reference` with umoci (rootless); returns the rootfs.
pub fn umoci_unpack(layout: &Path, reference: &str, into: &Path) -> PathBuf {
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{reference}", layout.display()))
        .arg(into));
    into.join("rootfs")
}

/// Every binary a build reported (`binaries` of `build --json`) that has Go build info reads
/// the same with `go version -m` from the unpacked image; returns how many were compared.
pub fn check_build_info(rootfs: &Path, binaries: &serde_json::Value) -> usize {
    let mut checked = 0;
    for b in binaries.as_array().expect("binaries") {
        let path = rootfs.join(b["path"].as_str().unwrap());
        if b["go"].is_null() {
            continue;
        }
        assert_eq!(
            our_build_info(&b["go"]),
            go_version_m(&path),
            "{}",
            path.display()
        );
        checked += 1;
    }
    checked
}

/// images.toml for module-built amd64 images bundling `bundled` (the newest is the latest).
pub fn module_images_config(fx: &Path, bundled: &[String], push_registry: &str) -> String {
    let list: Vec<String> = bundled.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        r#"[etcd]
latest = "{}"
bundled = [{}]
release_url = "http://127.0.0.1:9"

[image]
push_registry = "{push_registry}"
arches = ["amd64"]
base = "oci:{}:1.35"
insecure_registries = ["{push_registry}"]

[arch.amd64]
source = "module"

[migrate]
source_dir = "{}"
"#,
        bundled.last().unwrap(),
        list.join(", "),
        fx.join("busybox-oci").display(),
        repo_root().join("migrate").display()
    )
}

/// A Go tool install-deps builds into target/tools/go/bin (or one on PATH).
pub fn go_tool(test: &str, name: &str) -> Option<PathBuf> {
    let local = repo_root().join("target/tools/go/bin").join(name);
    if local.is_file() {
        return Some(local);
    }
    require(test, name).then(|| which(name).unwrap())
}
