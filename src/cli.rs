//! Command-line surface. Doc comments are the `--help` text; no logic lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build, verify and push Kubernetes etcd container images, without a Docker daemon.
///
/// Settings come from, highest first: flags, environment (ETCDIMG_* and the Makefile's
/// ETCD_VERSION, BUNDLED_ETCD_VERSIONS, REVISION, ARCH, REGISTRY, PUSH_REGISTRY, BASEIMAGE,
/// ETCD_RELEASE_URL), images.toml, built-in defaults.
#[derive(Debug, Parser)]
#[command(name = "etcdimg", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Path of images.toml.
    #[arg(
        long,
        global = true,
        env = "ETCDIMG_CONFIG",
        default_value = "images.toml"
    )]
    pub config: PathBuf,
    /// Download and layer cache [default: $XDG_CACHE_HOME/etcdimg].
    #[arg(long, global = true, env = "ETCDIMG_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show more detail on stderr (never credentials).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Registry (host[:port]) to reach over plain HTTP. Repeatable. Never implied.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificate (PEM) to trust for registries, besides the system roots
    /// (images.toml `ca_cert`).
    #[arg(long, global = true, env = "ETCDIMG_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the image for one arch into an OCI layout (the Makefile's `make build`).
    Build(BuildArgs),
    /// Test built images without a daemon (the Makefile's `make test`): unpack each into a temp
    /// rootfs, check platform, env and modes, run every bundled etcd/etcdctl (qemu-user for
    /// foreign arches) and a real migration; print a pass/fail table, exit 1 on any failure.
    Test(TestArgs),
    /// Build every arch in images.toml into one OCI layout, with an image index under the plain
    /// tag (the Makefile's `make all-build`).
    AllBuild(AllBuildArgs),
    /// Build if needed, then push one arch's image to `{push_registry}/{image}:{tag}-linux-{arch}`
    /// (or `{image}-{arch}:{tag}` with naming = "legacy") (the Makefile's `make push`).
    Push(PushArgs),
    /// Push the multi-arch index `{push_registry}/{image}:{tag}` over the per-arch images
    /// already pushed (the Makefile's `make push-manifest`).
    PushManifest(PushManifestArgs),
    /// Build and push every arch in images.toml, then the index (the Makefile's `make all-push`).
    AllPush(AllPushArgs),
    /// Show what all-push (or push --arch A) would download, compile, upload, mount or skip,
    /// and which tags it would create or move, without writing to the registry (HEAD/GET only).
    Plan(PlanArgs),
    /// Write the release report (upstream tarballs and sha256, Go toolchains and flags, base
    /// digests, compression, every digest) for the index in the layout; --push attaches it to
    /// the pushed index as an OCI artifact (push-manifest and all-push do this themselves).
    Report(ReportArgs),
    /// Scan every Go binary of the images in the layout with govulncheck (binary mode) against
    /// a vulnerability database: what is called, what is only present, and the fixed versions.
    Scan(ScanArgs),
    /// Merge the OCI layouts of per-arch jobs into one (every arch of images.toml exactly once,
    /// for this tag and revision, with the right platform), for push-manifest, plan, report
    /// and sign.
    Merge(MergeArgs),
    /// Sign the pushed release in cosign's format (the index and each per-arch manifest) and
    /// attest its SLSA provenance and SPDX document to the index; `cosign verify --key` and
    /// `cosign verify-attestation` accept both.
    Sign(SignArgs),
    /// Check a pushed release's signatures and attestations with a public key, as cosign
    /// would (no cosign needed): every manifest signed, provenance and SPDX about the index.
    Verify(VerifyArgs),
    /// Print the resolved settings (after flags, environment and images.toml).
    Settings(SettingsArgs),
    /// Download the official etcd releases of the bundled versions (or --versions), verified
    /// against SHA256SUMS like a build, into a directory as etcd-<V>, etcdctl-<V>, etcdutl-<V>
    /// (what migrate's --bin-dir expects).
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Arch of the binaries (env ARCH).
    #[arg(long, env = "ARCH", default_value = "amd64")]
    pub arch: String,
    /// Versions to fetch, space or comma separated [default: the bundled versions].
    #[arg(long, value_name = "VERSIONS")]
    pub versions: Option<String>,
    /// Where to put them.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: PathBuf,
    /// Where they come from: `release` (tarballs), `build` (a source tree) or `module` (the
    /// release's Go modules through GOPROXY) [default: the arch's `source` in images.toml].
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
}

/// Overrides of images.toml keys, shared by the verbs that resolve a build.
#[derive(Debug, Args, Default)]
pub struct OverrideArgs {
    /// The latest etcd version (images.toml `etcd.latest`; env ETCD_VERSION).
    #[arg(long, value_name = "VERSION")]
    pub etcd_version: Option<String>,
    /// Bundled etcd versions, space or comma separated (env BUNDLED_ETCD_VERSIONS).
    #[arg(long, value_name = "VERSIONS")]
    pub bundled_versions: Option<String>,
    /// Image revision (env REVISION).
    #[arg(long)]
    pub revision: Option<String>,
    /// Registry the image is named for (env REGISTRY).
    #[arg(long)]
    pub registry: Option<String>,
    /// Registry to push to (env PUSH_REGISTRY).
    #[arg(long)]
    pub push_registry: Option<String>,
    /// Base image for the arch: registry reference or oci:PATH[:REF] (env BASEIMAGE).
    #[arg(long, value_name = "REF")]
    pub base_image: Option<String>,
    /// Base URL of etcd release folders, e.g. a mirror (env ETCD_RELEASE_URL).
    #[arg(long, value_name = "URL")]
    pub release_url: Option<String>,
    /// How arches with source = "build" compile etcd: auto (go if installed, else docker), go
    /// or docker (env ETCDIMG_BUILDER; images.toml build.builder).
    #[arg(long, value_name = "BUILDER")]
    pub builder: Option<String>,
    /// The Go every compile uses, e.g. go1.27.3: GOTOOLCHAIN for the local go (fetched
    /// through GOPROXY), the golang image tag for docker. With it, arches whose source is
    /// "release" are rebuilt from the release's Go modules (env ETCDIMG_GO_TOOLCHAIN;
    /// images.toml build.go_toolchain).
    #[arg(long, value_name = "GO")]
    pub go_toolchain: Option<String>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Target arch: amd64, arm, arm64, ppc64le or s390x (env ARCH).
    #[arg(long, env = "ARCH", default_value = "amd64")]
    pub arch: String,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Also write a docker-archive tarball loadable by `docker load`.
    #[arg(long, value_name = "FILE")]
    pub docker_archive: Option<PathBuf>,
}

/// Where images are built and how.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// OCI image layout directory (created if missing; other images in it are kept).
    #[arg(long, env = "ETCDIMG_OUTPUT", default_value = "_output/oci")]
    pub output: PathBuf,
    /// Use this prebuilt static migrate binary instead of building the migrate crate.
    #[arg(long, env = "ETCDIMG_MIGRATE_BINARY", value_name = "PATH")]
    pub migrate_binary: Option<PathBuf>,
    /// Rebuild every layer even when the cache holds one with the same inputs.
    #[arg(long)]
    pub no_layer_cache: bool,
    /// Worker threads for compression [default: available cores]. Output bytes never depend on it.
    #[arg(long, env = "ETCDIMG_JOBS")]
    pub jobs: Option<usize>,
}

/// The manifest format of a push.
#[derive(Debug, Args, Clone)]
pub struct FormatFlag {
    /// `oci` (OCI image index and manifests) or `docker` (Docker manifest list, schema 2).
    #[arg(
        long,
        env = "ETCDIMG_MANIFEST_FORMAT",
        default_value = "oci",
        value_name = "FORMAT"
    )]
    pub manifest_format: String,
}

/// How pushes behave.
#[derive(Debug, Args)]
pub struct PushFlags {
    /// Move a tag that already points to a different digest (refused otherwise).
    #[arg(long)]
    pub force: bool,
    /// Release etcd versions the version policy warns about (below the production minimum,
    /// or a known-bad release); they are recorded in the release report.
    #[arg(long, env = "ETCDIMG_ALLOW_UNSAFE_VERSIONS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unsafe_versions: bool,
    /// Release binaries built with a Go the Go policy warns about (a minor Go no longer
    /// supports, or a patch below a security release); recorded in the release report.
    #[arg(long, env = "ETCDIMG_ALLOW_UNSUPPORTED_GO", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unsupported_go: bool,
    #[command(flatten)]
    pub format: FormatFlag,
    #[command(flatten)]
    pub vuln: VulnFlags,
    /// Release binaries that call vulnerable code (with --vulndb); recorded in the report.
    #[arg(long, env = "ETCDIMG_ALLOW_CALLED_VULNS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_called_vulns: bool,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Arch to push: amd64, arm, arm64, ppc64le or s390x (env ARCH).
    #[arg(long, env = "ARCH", default_value = "amd64")]
    pub arch: String,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub push: PushFlags,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Arch to test [default: every arch in images.toml] (env ARCH).
    #[arg(long, env = "ARCH")]
    pub arch: Option<String>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// OCI image layout holding the images.
    #[arg(long, env = "ETCDIMG_OUTPUT", default_value = "_output/oci")]
    pub output: PathBuf,
    /// Where the image's binaries run: `rootfs` (unpacked, no daemon) or `containerd` (real
    /// containers with runc, as a Kubernetes node runs them).
    #[arg(long, default_value = "rootfs", value_parser = ["rootfs", "containerd"])]
    pub runtime: String,
    /// The containerd to use with --runtime containerd [default: a private one, started and
    /// stopped by this run; needs root].
    #[arg(long, value_name = "SOCKET")]
    pub containerd_address: Option<PathBuf>,
}

/// The release report written and attached after the index.
#[derive(Debug, Args)]
pub struct ReportFlags {
    /// Also write (and attach) the report as an SPDX 2.3 JSON document.
    #[arg(long)]
    pub spdx: bool,
    /// Directory for release-<tag>.json (and release-<tag>.spdx.json).
    #[arg(long, env = "ETCDIMG_REPORT_DIR", default_value = "_output")]
    pub report_dir: PathBuf,
}

/// Signing with a key in cosign's format.
#[derive(Debug, Args, Clone, Default)]
pub struct SignFlags {
    /// The signing key: a file or env://VAR, as `cosign generate-key-pair` writes it (an
    /// encrypted key's password comes from COSIGN_PASSWORD). Never printed.
    #[arg(
        long,
        env = "ETCDIMG_SIGNING_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
    /// `builder.id` of the provenance [default: the GitHub workflow, else this host].
    #[arg(long, env = "ETCDIMG_BUILDER_ID", value_name = "URI")]
    pub builder_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// OCI image layout holding the images that were pushed.
    #[arg(long, env = "ETCDIMG_OUTPUT", default_value = "_output/oci")]
    pub output: PathBuf,
    #[command(flatten)]
    pub format: FormatFlag,
    #[command(flatten)]
    pub sign: SignFlags,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// A layout a per-arch job wrote (repeatable).
    #[arg(long, value_name = "DIR", required = true)]
    pub from: Vec<PathBuf>,
    /// The merged layout (created if missing).
    #[arg(long, env = "ETCDIMG_OUTPUT", default_value = "_output/oci")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// The public key (`cosign.pub`): a file or env://VAR.
    #[arg(long, env = "ETCDIMG_VERIFY_KEY", value_name = "KEY")]
    pub key: String,
    /// The release to check [default: the index push-manifest pushes,
    /// `<push_registry>/<name>:<tag>`].
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct PushManifestArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// OCI image layout holding the per-arch images.
    #[arg(long, env = "ETCDIMG_OUTPUT", default_value = "_output/oci")]
    pub output: PathBuf,
    #[command(flatten)]
    pub push: PushFlags,
    #[command(flatten)]
    pub report: ReportFlags,
    /// Sign and attest the release after pushing it (needs --key).
    #[arg(long)]
    pub sign: bool,
    #[command(flatten)]
    pub signing: SignFlags,
    /// Push the index without writing or attaching the release report.
    #[arg(long)]
    pub no_report: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan `push --arch A` only [default: all-push, every arch and the index].
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Read the images already in the layout instead of building them.
    #[arg(long)]
    pub no_build: bool,
    /// Plan a push with --force: tags that point elsewhere would be moved. Without it such
    /// tags are shown as refused and plan exits 1, as the push would stop.
    #[arg(long)]
    pub force: bool,
    /// Plan a release of etcd versions the version policy warns about (refused otherwise).
    #[arg(long, env = "ETCDIMG_ALLOW_UNSAFE_VERSIONS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unsafe_versions: bool,
    /// Plan a release of binaries built with a Go the Go policy warns about.
    #[arg(long, env = "ETCDIMG_ALLOW_UNSUPPORTED_GO", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unsupported_go: bool,
    #[command(flatten)]
    pub format: FormatFlag,
    /// Plan the release report with an SPDX document, as `all-push --spdx` would attach.
    #[arg(long)]
    pub spdx: bool,
    /// Leave the release report out of the plan, as `all-push --no-report` would.
    #[arg(long)]
    pub no_report: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// OCI image layout holding the images (built by all-build, or merged per-arch layouts).
    #[arg(long, env = "ETCDIMG_OUTPUT", default_value = "_output/oci")]
    pub output: PathBuf,
    #[command(flatten)]
    pub report: ReportFlags,
    /// The format the index was (or will be) pushed in.
    #[command(flatten)]
    pub format: FormatFlag,
    /// Attach the report to the index in the registry (which must already hold it).
    #[arg(long)]
    pub push: bool,
    /// Also write the SLSA provenance v1 predicate (`release-<tag>.provenance.json`), for
    /// `cosign attest --type slsaprovenance1` (keyless signing in CI).
    #[arg(long)]
    pub provenance: bool,
}

#[derive(Debug, Args)]
pub struct AllBuildArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    #[command(flatten)]
    pub image: ImageArgs,
}

#[derive(Debug, Args)]
pub struct AllPushArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub push: PushFlags,
    #[command(flatten)]
    pub report: ReportFlags,
    /// Sign and attest the release after pushing it (needs --key).
    #[arg(long)]
    pub sign: bool,
    #[command(flatten)]
    pub signing: SignFlags,
    /// Push without writing or attaching the release report.
    #[arg(long)]
    pub no_report: bool,
}

/// Where the vulnerability report comes from (scan, and the release verbs' gate).
#[derive(Debug, Args, Clone, Default)]
pub struct VulnFlags {
    /// Go vulnerability database for govulncheck: a URL (https://vuln.go.dev, your mirror) or
    /// a directory in its format. With it, the release verbs scan first and refuse called
    /// vulnerabilities; the scan goes into the release report.
    #[arg(long, env = "ETCDIMG_VULNDB", value_name = "URL|DIR")]
    pub vulndb: Option<String>,
    /// The govulncheck binary [default: govulncheck on PATH].
    #[arg(long, env = "ETCDIMG_GOVULNCHECK", value_name = "PATH")]
    pub govulncheck: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Scan this arch only [default: every arch of images.toml].
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// OCI image layout holding the images.
    #[arg(long, env = "ETCDIMG_OUTPUT", default_value = "_output/oci")]
    pub output: PathBuf,
    #[command(flatten)]
    pub vuln: VulnFlags,
    /// Exit 1 when a vulnerability is `called` (default), or `present` too; `none`: never.
    #[arg(long, default_value = "called", value_name = "LEVEL")]
    pub fail_on: String,
}

#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Arch to resolve (env ARCH).
    #[arg(long, env = "ARCH", default_value = "amd64")]
    pub arch: String,
    #[command(flatten)]
    pub overrides: OverrideArgs,
}
