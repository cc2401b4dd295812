//! A container runtime as Kubernetes nodes use it: containerd with runc, driven through its
//! own CLI, `ctr` (every call goes through `process::Cmd`).
//!
//! Owns: starting a private containerd (its root, state and sockets under a temp dir, the CRI
//! plugin off, stopped and cleaned up when dropped) or talking to one at a given address;
//! importing one image of an OCI layout; running containers (`ctr run --net-host`, bind mounts,
//! env), in the foreground or in the background, and stopping them. Never: registering
//! binfmt_misc handlers (that is global to the host kernel), or touching a containerd's
//! namespaces other than its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::oci::layout::{Layout, REF_NAME};
use crate::oci::{self, canonical_json, ImageManifest};
use hostio::process::{Child, Cmd, ProcessError};

/// The containerd namespace etcdimg uses (images and containers of its tests live there).
pub const NAMESPACE: &str = "etcdimg";

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("`{tool}` is not installed: {why}")]
    Missing { tool: &'static str, why: String },
    #[error("starting a private containerd needs root (it mounts container filesystems)")]
    NotRoot,
    #[error("containerd at `{address}` did not answer within {seconds} s; its log ends:\n{log}")]
    NotReady {
        address: String,
        seconds: u64,
        log: String,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] crate::oci::layout::LayoutError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerdError + '_ {
    move |source| ContainerdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Private {
    daemon: Child,
    dir: tempfile::TempDir,
}

/// A containerd to run containers in.
pub struct Containerd {
    pub address: PathBuf,
    private: Option<Private>,
}

/// One container to run.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub image: String,
    pub id: String,
    pub env: Vec<(String, String)>,
    /// Host directory -> path in the container (rbind, read-write).
    pub mounts: Vec<(PathBuf, String)>,
    pub args: Vec<String>,
}

/// A container started in the background; [`Containerd::stop`] ends it.
pub struct Running {
    pub id: String,
    child: Child,
    pub log: PathBuf,
}

impl Running {
    /// The exit status once the container has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait()
    }
}

/// `tool` on PATH, or what to install.
fn require(tool: &'static str) -> Result<(), ContainerdError> {
    which::which(tool)
        .map(drop)
        .map_err(|e| ContainerdError::Missing {
            tool,
            why: format!("{e} (Debian: apt-get install containerd runc)"),
        })
}

impl Containerd {
    /// Starts a private containerd under a temp dir; root only.
    pub fn start_private() -> Result<Containerd, ContainerdError> {
        for tool in ["containerd", "ctr", "runc"] {
            require(tool)?;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ContainerdError::NotRoot);
        }
        let dir = tempfile::Builder::new()
            .prefix("etcdimg-containerd-")
            .tempdir()
            .map_err(io_at(&std::env::temp_dir()))?;
        let d = dir.path();
        let address = d.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            d.join("root").display(),
            d.join("state").display(),
            address.display(),
            address.display(),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).map_err(io_at(&config_path))?;
        let log = d.join("containerd.log");
        let daemon = Cmd::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .spawn_logged(&log)?;
        let c = Containerd {
            address: address.clone(),
            private: Some(Private { daemon, dir }),
        };
        c.wait_ready(Duration::from_secs(30), &log)?;
        Ok(c)
    }

    /// A containerd already running at `address`.
    pub fn connect(address: &Path) -> Result<Containerd, ContainerdError> {
        require("ctr")?;
        let c = Containerd {
            address: address.to_path_buf(),
            private: None,
        };
        c.ctr().arg("version").output()?;
        Ok(c)
    }

    fn wait_ready(&self, timeout: Duration, log: &Path) -> Result<(), ContainerdError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.address.exists() && self.ctr().arg("version").output().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                return Err(ContainerdError::NotReady {
                    address: self.address.display().to_string(),
                    seconds: timeout.as_secs(),
                    log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ctr --address A --namespace etcdimg`.
    pub fn ctr(&self) -> Cmd {
        Cmd::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(NAMESPACE)
    }

    /// Imports the image `ref_name` of the layout as `<base>:<ref_name>` (an OCI archive of that
    /// one image, for `platform`, e.g. `linux/arm64/v8`); returns the image name.
    pub fn import(
        &self,
        layout_dir: &Path,
        ref_name: &str,
        base: &str,
        platform: &str,
    ) -> Result<String, ContainerdError> {
        let layout = Layout::open(layout_dir)?;
        let desc = layout.resolve(Some(ref_name))?;
        let manifest: ImageManifest = serde_json::from_slice(&layout.read_blob(&oci::hex(&desc))?)
            .map_err(|e| ContainerdError::Io {
                path: layout_dir.to_path_buf(),
                source: std::io::Error::other(e),
            })?;
        let tmp = tempfile::Builder::new()
            .prefix("etcdimg-import-")
            .tempdir()
            .map_err(io_at(&std::env::temp_dir()))?;
        let archive = tmp.path().join("image.tar");
        let file = std::fs::File::create(&archive).map_err(io_at(&archive))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        let mut named = desc.clone();
        named.set_annotations(Some([(REF_NAME.to_string(), ref_name.to_string())].into()));
        let index = oci_spec::image::ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(oci_spec::image::MediaType::ImageIndex)
            .manifests(vec![named])
            .build()
            .expect("a valid index");
        let write = (|| -> std::io::Result<()> {
            append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            append(&mut tar, "index.json", &canonical_json(&index))?;
            let mut blobs = vec![oci::hex(&desc), oci::hex(manifest.config())];
            blobs.extend(manifest.layers().iter().map(oci::hex));
            for hex in blobs {
                let mut f = std::fs::File::open(layout.blob_path(&hex))?;
                let mut h = tar::Header::new_ustar();
                h.set_size(f.metadata()?.len());
                h.set_mode(0o644);
                h.set_cksum();
                tar.append_data(&mut h, format!("blobs/sha256/{hex}"), &mut f)?;
            }
            tar.into_inner()?.flush()
        })()
        .map_err(io_at(&archive));
        write?;
        self.ctr()
            .args([
                "images",
                "import",
                "--platform",
                platform,
                "--base-name",
                base,
            ])
            .arg(&archive)
            .output()?;
        Ok(format!("{base}:{ref_name}"))
    }

    /// `ctr run` of `spec`; the same for a container run to completion or in the background
    /// (ctr stays in the foreground either way, its child is what is waited for or not).
    fn run_args(spec: &RunSpec) -> Vec<String> {
        let mut a = vec!["run".to_string(), "--rm".into(), "--net-host".into()];
        for (k, v) in &spec.env {
            a.push("--env".into());
            a.push(format!("{k}={v}"));
        }
        for (host, dst) in &spec.mounts {
            a.push("--mount".into());
            a.push(format!(
                "type=bind,src={},dst={dst},options=rbind:rw",
                host.display()
            ));
        }
        a.push(spec.image.clone());
        a.push(spec.id.clone());
        a.extend(spec.args.iter().cloned());
        a
    }

    /// Runs a container to completion; its output and exit status, whatever the status.
    pub fn run(&self, spec: &RunSpec) -> Result<std::process::Output, ContainerdError> {
        Ok(self.ctr().args(Self::run_args(spec)).output_any()?)
    }

    /// Starts a container in the background, its output in `log`.
    pub fn start(&self, spec: &RunSpec, log: &Path) -> Result<Running, ContainerdError> {
        let child = self.ctr().args(Self::run_args(spec)).spawn_logged(log)?;
        Ok(Running {
            id: spec.id.clone(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// SIGTERM to the container's process, up to `grace` for it to exit, then SIGKILL; its
    /// exit status.
    pub fn stop(&self, running: &mut Running, grace: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + grace;
        let _ = self
            .ctr()
            .args(["task", "kill", "--signal", "SIGTERM"])
            .arg(&running.id)
            .output_any();
        while Instant::now() < deadline {
            if let Some(s) = running.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self
            .ctr()
            .args(["task", "kill", "--signal", "SIGKILL"])
            .arg(&running.id)
            .output_any();
        running.child.wait()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let Some(mut p) = self.private.take() else {
            return;
        };
        // Containers first (their runc shims would outlive the daemon), then the daemon.
        if let Ok(out) = self.ctr().args(["task", "ls", "--quiet"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .ctr()
                    .args(["task", "kill", "--signal", "SIGKILL", id])
                    .output_any();
                let _ = self
                    .ctr()
                    .args(["task", "delete", "--force", id])
                    .output_any();
            }
        }
        p.daemon.signal(libc::SIGTERM);
        p.daemon.wait_or_kill(Duration::from_secs(10));
        // Anything containerd left mounted under its root goes before the dir does.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = p.dir.path().display().to_string();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&root))
                .collect();
            points.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in points {
                let _ = Cmd::new("umount").args(["-l", m]).output_any();
            }
        }
        let _ = p.dir.close();
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, name, bytes)
}

/// Whether the kernel runs `arch` binaries in a container (the host arch, or a registered and
/// enabled binfmt_misc handler for its qemu); `Err` says why not.
pub fn runnable(arch: crate::platform::Arch) -> Result<(), String> {
    if crate::platform::Arch::host() == Some(arch) {
        return Ok(());
    }
    let qemu = arch.qemu_binary();
    let name = qemu.strip_suffix("-static").unwrap_or(qemu);
    let handler = Path::new("/proc/sys/fs/binfmt_misc").join(name);
    match std::fs::read_to_string(&handler) {
        Ok(text) if text.lines().next() == Some("enabled") => Ok(()),
        Ok(_) => Err(format!("the binfmt_misc handler `{}` is disabled", handler.display())),
        Err(_) => Err(format!(
            "no binfmt_misc handler `{}` for {arch} binaries (etcdimg never registers one: that setting is global to the host)",
            handler.display()
        )),
    }
}
