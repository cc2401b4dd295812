//! The `etcdimg` binary: parse args, run the verb, render the error, pick the exit code.

mod ui;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Parser;
use etcdimg::cli::{
    AllBuildArgs, BuildArgs, Cli, Command, FetchArgs, GlobalArgs, ImageArgs, OverrideArgs,
    PlanArgs, PushFlags, ReportArgs, ReportFlags, SettingsArgs, TestArgs,
};
use etcdimg::commands::build;
use etcdimg::commands::plan::{self, PlanOptions};
use etcdimg::commands::push::{self, PushOptions, PushReport};
use etcdimg::fetch::cache::Cache;
use etcdimg::pipeline::BuildOptions;
use etcdimg::publish::layout::ReportOptions;
use etcdimg::registry::{RegistryOptions, Session};
use etcdimg::settings::{self, Settings};
use etcdimg::{config, exit_code_for, hint_for};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            render(&err);
            ExitCode::from(exit_code_for(&err) as u8)
        }
    }
}

fn render(err: &anyhow::Error) {
    eprintln!("error: {err}");
    let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
    if !causes.is_empty() {
        eprintln!("\nCaused by:");
        for c in causes {
            for (i, line) in c.lines().enumerate() {
                if i == 0 {
                    eprintln!("    {line}");
                } else {
                    eprintln!("      {line}");
                }
            }
        }
    }
    if let Some(hint) = hint_for(err) {
        eprintln!("\nhint: {hint}");
    }
}

fn resolve(g: &GlobalArgs, overrides: &OverrideArgs) -> Result<Settings> {
    let loaded = config::load(&g.config)?;
    let mut s = settings::resolve(
        &loaded,
        overrides,
        &g.insecure_registries,
        &settings::process_env,
    )?;
    if let Some(ca) = &g.ca_cert {
        s.ca_cert = Some(ca.clone());
    }
    Ok(s)
}

fn build_options(
    settings: &Settings,
    image: &ImageArgs,
    docker_archive: Option<&Path>,
    reporter: &Shared,
) -> BuildOptions {
    let jobs = image.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    BuildOptions {
        output: image.output.clone(),
        docker_archive: docker_archive.map(Path::to_path_buf),
        migrate_binary: image.migrate_binary.clone(),
        jobs,
        reuse_layers: !image.no_layer_cache,
        // One session per run: every base pull and push shares its HTTP client.
        registry: Session::new(
            RegistryOptions {
                insecure: settings.insecure_registries.clone(),
                ca_cert: settings.ca_cert.clone(),
            },
            reporter.clone(),
        ),
    }
}

fn push_options(
    build: BuildOptions,
    flags: &PushFlags,
    report: Option<&ReportFlags>,
) -> Result<PushOptions> {
    let format = flags.format.manifest_format.parse().map_err(|e: String| {
        etcdimg::UserError::new(e, "pass --manifest-format oci or --manifest-format docker")
    })?;
    Ok(PushOptions {
        build,
        force: flags.force,
        allow_unsafe_versions: flags.allow_unsafe_versions,
        allow_unsupported_go: flags.allow_unsupported_go,
        scan: match &flags.vuln.vulndb {
            Some(db) => Some(etcdimg::commands::scan::scanner(
                flags.vuln.govulncheck.as_deref(),
                db,
            )?),
            None => None,
        },
        allow_called_vulns: flags.allow_called_vulns,
        sign: None,
        format,
        report: report.map(|r| ReportOptions {
            dir: r.report_dir.clone(),
            spdx: r.spdx,
        }),
    })
}

fn layout_only(output: &Path) -> ImageArgs {
    ImageArgs {
        output: output.to_path_buf(),
        migrate_binary: None,
        no_layer_cache: false,
        jobs: None,
    }
}

fn print_push(
    report: &PushReport,
    json: bool,
    reporter: &dyn etcdimg::report::Reporter,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for image in &report.images {
        println!("{}@{}", image.outcome.reference, image.outcome.digest);
        reporter.status("Finished", &push::summary(&image.outcome));
    }
    if let Some(index) = &report.index {
        println!("{}@{}", index.reference, index.digest);
        reporter.status("Finished", &push::summary(index));
    }
    if let Some(r) = &report.report {
        reporter.status(
            "Wrote",
            &format!("the release report to {}", r.written.json),
        );
        if let Some(a) = &r.attached {
            println!("{}", a.artifact);
            let how = a.fallback_tag.as_deref().unwrap_or("the referrers API");
            let verb = if a.changed { "Attached" } else { "Unchanged" };
            reporter.status(verb, &format!("release report {} (via {how})", a.digest));
        }
    }
    reporter.status(
        "Done",
        &format!(
            "{} bytes uploaded in {:.2}s",
            report.bytes_uploaded, report.seconds
        ),
    );
    Ok(())
}

type Shared = Arc<dyn etcdimg::report::Reporter>;

/// The verb, run: each arm resolves the settings, calls one pipeline, prints its result
/// (JSON with --json, else the human lines on stdout and status on stderr).
async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    let reporter: Shared = Arc::new(ui::Ui::new());
    match &cli.command {
        Command::Build(args) => build_verb(g, args, reporter).await,
        Command::AllBuild(args) => all_build_verb(g, args, reporter).await,
        Command::Push(args) => {
            let settings = resolve(g, &args.overrides)?;
            let arch = settings::selected_arch(&settings, &args.arch)?;
            let cache = Cache::open(g.cache_dir.as_deref())?;
            let build = build_options(&settings, &args.image, None, &reporter);
            let options = push_options(build, &args.push, None)?;
            let report = push::push(&settings, arch, &options, &cache, reporter.clone()).await?;
            print_push(&report, g.json, &*reporter)
        }
        Command::PushManifest(args) => {
            let settings = resolve(g, &args.overrides)?;
            let image = layout_only(&args.output);
            let report = (!args.no_report).then_some(&args.report);
            let build = build_options(&settings, &image, None, &reporter);
            let mut options = push_options(build, &args.push, report)?;
            options.sign = signing(args.sign, &args.signing)?;
            let report = push::push_manifest(&settings, &options, reporter.clone()).await?;
            print_push(&report, g.json, &*reporter)
        }
        Command::AllPush(args) => {
            let settings = resolve(g, &args.overrides)?;
            let cache = Cache::open(g.cache_dir.as_deref())?;
            let report = (!args.no_report).then_some(&args.report);
            let build = build_options(&settings, &args.image, None, &reporter);
            let mut options = push_options(build, &args.push, report)?;
            options.sign = signing(args.sign, &args.signing)?;
            let report = push::all_push(&settings, &options, &cache, reporter.clone()).await?;
            print_push(&report, g.json, &*reporter)
        }
        Command::Plan(args) => plan_verb(g, args, reporter).await,
        Command::Report(args) => report_verb(g, args, reporter).await,
        Command::Test(args) => test_verb(g, args, &*reporter),
        Command::Fetch(args) => fetch_verb(g, args, reporter).await,
        Command::Settings(args) => settings_verb(g, args),
        Command::Scan(args) => scan_verb(g, args, &*reporter),
        Command::Sign(args) => sign_verb(g, args, reporter).await,
        Command::Merge(args) => {
            let settings = resolve(g, &args.overrides)?;
            let merged =
                etcdimg::publish::merge::merge(&settings, &args.from, &args.output, &*reporter)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&merged)?);
            } else {
                for i in &merged.images {
                    println!("{}@{}", i.reference, i.digest);
                }
            }
            Ok(())
        }
        Command::Verify(args) => verify_verb(g, args, reporter).await,
    }
}

/// Push flags for the verbs that only read or attach to a release already decided (report,
/// sign, verify): the release gates were applied when it was pushed.
fn inspect_flags(format: etcdimg::cli::FormatFlag) -> PushFlags {
    PushFlags {
        force: false,
        allow_unsafe_versions: true,
        allow_unsupported_go: true,
        format,
        vuln: Default::default(),
        allow_called_vulns: true,
    }
}

/// `--sign` with `--key`: how to sign; `--sign` alone is a usage error.
fn signing(
    sign: bool,
    flags: &etcdimg::cli::SignFlags,
) -> Result<Option<etcdimg::commands::sign::SignOptions>> {
    if !sign {
        return Ok(None);
    }
    let Some(key) = &flags.key else {
        anyhow::bail!(etcdimg::UserError::new(
            "--sign needs a signing key",
            "pass --key FILE or --key env://VAR (ETCDIMG_SIGNING_KEY), e.g. one made by `cosign generate-key-pair`",
        ));
    };
    Ok(Some(etcdimg::commands::sign::SignOptions {
        key: key.clone(),
        password: std::env::var("COSIGN_PASSWORD").ok(),
        builder_id: flags.builder_id.clone(),
    }))
}

/// `sign`: the pushed release signed and attested; what was added on stdout.
async fn sign_verb(g: &GlobalArgs, args: &etcdimg::cli::SignArgs, reporter: Shared) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let flags = inspect_flags(args.format.clone());
    let build = build_options(&settings, &layout_only(&args.output), None, &reporter);
    let options = push_options(build, &flags, None)?;
    let sign = signing(true, &args.sign)?.expect("signing(true, ..) is Some or an error");
    let report = etcdimg::commands::sign::sign(&settings, &options, &sign, &*reporter).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for a in report.signatures.iter().chain(&report.attestations) {
            println!("{}", a.tag);
        }
    }
    Ok(())
}

/// `verify`: every check of a pushed release; exit 1 when one fails.
async fn verify_verb(
    g: &GlobalArgs,
    args: &etcdimg::cli::VerifyArgs,
    reporter: Shared,
) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let flags = inspect_flags(etcdimg::cli::FormatFlag {
        manifest_format: "oci".into(),
    });
    let build = build_options(
        &settings,
        &layout_only(Path::new("_output/oci")),
        None,
        &reporter,
    );
    let options = push_options(build, &flags, None)?;
    let outcome = etcdimg::commands::verify::verify(
        &settings,
        &options,
        args.reference.as_deref(),
        &args.key,
        &*reporter,
    )
    .await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print!("{}", etcdimg::commands::verify::render(&outcome));
    }
    let failed = outcome.checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        anyhow::bail!(etcdimg::UserError::new(
            format!("{failed} of {} checks failed for {}", outcome.checks.len(), outcome.reference),
            "the release is not what the key's owner signed: do not deploy it; `etcdimg verify --json` lists each check",
        ));
    }
    Ok(())
}

/// `build --arch A`: the layout reference on stdout, a summary on stderr.
async fn build_verb(g: &GlobalArgs, args: &BuildArgs, reporter: Shared) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let arch = settings::selected_arch(&settings, &args.arch)?;
    let cache = Cache::open(g.cache_dir.as_deref())?;
    let archive = args.docker_archive.as_deref();
    let options = build_options(&settings, &args.image, archive, &reporter);
    let report = build::build(&settings, arch, &options, &cache, reporter.clone()).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let reused = report.layers.iter().filter(|l| l.cached).count();
    reporter.status(
        "Finished",
        &format!(
            "{} in {:.2}s: {} layers ({} reused), {:.1} MB",
            report.image,
            report.seconds,
            report.layers.len(),
            reused,
            report.total_size as f64 / 1e6
        ),
    );
    println!("{}@{}", report.image, report.manifest_digest);
    Ok(())
}

/// `all-build`: the layout's index on stdout.
async fn all_build_verb(g: &GlobalArgs, args: &AllBuildArgs, reporter: Shared) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let cache = Cache::open(g.cache_dir.as_deref())?;
    let options = build_options(&settings, &args.image, None, &reporter);
    let report = build::all_build(&settings, &options, &cache, reporter.clone()).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    reporter.status(
        "Finished",
        &format!(
            "{} arches in {:.2}s ({} compiled): {}",
            report.images.len(),
            report.seconds,
            report.compiled,
            report.platforms.join(", ")
        ),
    );
    println!(
        "{}:{}@{}",
        report.layout, report.reference, report.index_digest
    );
    Ok(())
}

/// `plan`: the plan; exit 1 when the push would stop at a moved tag.
async fn plan_verb(g: &GlobalArgs, args: &PlanArgs, reporter: Shared) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let arch = match &args.arch {
        Some(a) => Some(settings::selected_arch(&settings, a)?),
        None => None,
    };
    let cache = Cache::open(g.cache_dir.as_deref())?;
    let flags = PushFlags {
        force: args.force,
        allow_unsafe_versions: args.allow_unsafe_versions,
        allow_unsupported_go: args.allow_unsupported_go,
        format: args.format.clone(),
        vuln: Default::default(),
        allow_called_vulns: false,
    };
    let build = build_options(&settings, &args.image, None, &reporter);
    let options = PlanOptions {
        push: push_options(build, &flags, None)?,
        build: !args.no_build,
        arch,
        report: (!args.no_report).then_some(plan::ReportScope { spdx: args.spdx }),
    };
    let plan = plan::plan(&settings, &options, &cache, reporter.clone()).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan::render(&plan));
    }
    if plan.summary.tags_refused > 0 {
        anyhow::bail!(etcdimg::UserError::new(
            format!(
                "the push would stop: {} tags already point to other digests",
                plan.summary.tags_refused
            ),
            "bump etcd.revision (REVISION) for a new tag, or pass --force to plan and push if moving the tags is intended",
        ));
    }
    Ok(())
}

/// `report [--push]`: the report's files (and the attached artifact) on stdout.
async fn report_verb(g: &GlobalArgs, args: &ReportArgs, reporter: Shared) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let flags = inspect_flags(args.format.clone());
    let build = build_options(&settings, &layout_only(&args.output), None, &reporter);
    let options = push_options(build, &flags, Some(&args.report))?;
    let outcome =
        etcdimg::commands::report::report(&settings, &options, args.push, args.provenance).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    println!("{}", outcome.written.json);
    for file in [&outcome.written.spdx, &outcome.written.provenance]
        .into_iter()
        .flatten()
    {
        println!("{file}");
    }
    if let Some(a) = &outcome.attached {
        println!("{}", a.artifact);
        let fallback = a
            .fallback_tag
            .as_deref()
            .map(|t| format!(" {t}"))
            .unwrap_or_default();
        reporter.status(
            "Attached",
            &format!(
                "the release report to {} ({}{fallback})",
                a.subject, a.method
            ),
        );
    }
    Ok(())
}

/// `--arch A` alone, or every arch of images.toml.
fn arches_for(settings: &Settings, arch: Option<&str>) -> Result<Vec<etcdimg::platform::Arch>> {
    Ok(match arch {
        Some(a) => vec![settings::selected_arch(settings, a)?],
        None => settings.arches.clone(),
    })
}

/// `test`: one table per arch; exit 1 when any check failed.
fn test_verb(
    g: &GlobalArgs,
    args: &TestArgs,
    reporter: &dyn etcdimg::report::Reporter,
) -> Result<()> {
    use etcdimg::commands::test::{test_image, Runtime};
    use etcdimg::commands::test_containerd;
    let settings = resolve(g, &args.overrides)?;
    let arches = arches_for(&settings, args.arch.as_deref())?;
    build::warn_policy(&settings, reporter);
    let runtime = match args.runtime.as_str() {
        "containerd" => {
            Runtime::Containerd(test_containerd::open(args.containerd_address.as_deref())?)
        }
        _ => Runtime::Rootfs,
    };
    let reports = arches
        .into_iter()
        .map(|arch| test_image(&settings, arch, &args.output, &runtime))
        .collect::<Result<Vec<_>>>()?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            print!("{}", r.table());
        }
    }
    let failed: usize = reports
        .iter()
        .map(|r| r.checks.iter().filter(|c| !c.ok).count())
        .sum();
    if failed == 0 {
        Ok(())
    } else {
        anyhow::bail!("{failed} image checks failed (see the table)")
    }
}

/// `fetch`: the installed binaries' paths on stdout.
async fn fetch_verb(g: &GlobalArgs, args: &FetchArgs, reporter: Shared) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let arch = settings::selected_arch(&settings, &args.arch)?;
    let versions = match &args.versions {
        Some(text) => text
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(|s| {
                config::parse_version(s).map_err(|e| {
                    etcdimg::UserError::new(
                        format!("--versions: {e}"),
                        "list versions like 3.4.45,3.5.33",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => settings.bundled.clone(),
    };
    let source = match &args.source {
        Some(s) => config::parse_source(s).map_err(|e| {
            etcdimg::UserError::new(
                format!("--source: {e}"),
                "--source release (tarballs), build (a source tree) or module (Go modules)",
            )
        })?,
        None => settings.source_for(arch),
    };
    let cache = Cache::open(g.cache_dir.as_deref())?;
    let fetched = etcdimg::commands::fetch::fetch_binaries(
        &settings,
        arch,
        source,
        &versions,
        &args.bin_dir,
        &cache,
        reporter,
    )
    .await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&fetched)?);
        return Ok(());
    }
    for b in fetched.iter().flat_map(|f| &f.binaries) {
        println!("{b}");
    }
    Ok(())
}

/// What the Go policy has against the Go that would compile `arch`'s etcd: the chosen
/// `go_toolchain`, else the local go's GOVERSION (the builds' own binaries are judged from their
/// build info by `build` and the release verbs).
fn go_findings_for_settings(settings: &Settings, arch: etcdimg::platform::Arch) -> Vec<String> {
    if !settings.source_for(arch).compiles() {
        return Vec::new();
    }
    let go = settings.gobuild.go_toolchain.clone().or_else(|| {
        let go = which::which("go").ok()?;
        let out = hostio::process::Cmd::new(go)
            .args(["env", "GOVERSION"])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    go.map(|go| {
        settings
            .go_policy
            .findings(&go)
            .iter()
            .map(|f| f.to_string())
            .collect()
    })
    .unwrap_or_default()
}

/// `scan`: the vulnerability report of the layout's images, as a table or `--json`.
fn scan_verb(
    g: &GlobalArgs,
    args: &etcdimg::cli::ScanArgs,
    reporter: &dyn etcdimg::report::Reporter,
) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let arches = arches_for(&settings, args.arch.as_deref())?;
    let Some(db) = &args.vuln.vulndb else {
        anyhow::bail!(etcdimg::UserError::new(
            "no vulnerability database given",
            "pass --vulndb (ETCDIMG_VULNDB): https://vuln.go.dev, your mirror of it, or a directory in its format",
        ));
    };
    let fail_on = args.fail_on.as_str();
    if !["called", "present", "none"].contains(&fail_on) {
        anyhow::bail!(etcdimg::UserError::new(
            format!("--fail-on {fail_on} is not a level"),
            "pass --fail-on called, present or none",
        ));
    }
    let scanner = etcdimg::commands::scan::scanner(args.vuln.govulncheck.as_deref(), db)?;
    let report =
        etcdimg::commands::scan::scan(&settings, &args.output, &arches, &scanner, reporter)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", etcdimg::commands::scan::render(&report));
    }
    let called = report.called().count();
    let present: usize = report.binaries.iter().map(|b| b.present.len()).sum();
    let failed = match fail_on {
        "called" => called > 0,
        "present" => called + present > 0,
        _ => false,
    };
    if failed {
        anyhow::bail!(etcdimg::UserError::new(
            format!("{called} called and {present} present vulnerabilities in {} binaries", report.binaries.len()),
            "rebuild with the fixed versions the report names (build.go_toolchain / --go-toolchain for Go), or pass --fail-on none to report only",
        ));
    }
    Ok(())
}

/// `settings`: the resolved settings for one arch, as JSON.
fn settings_verb(g: &GlobalArgs, args: &SettingsArgs) -> Result<()> {
    let settings = resolve(g, &args.overrides)?;
    let arch = settings::selected_arch(&settings, &args.arch)?;
    let value = serde_json::json!({
        "config": settings.config_path.display().to_string(),
        "latest": settings.latest.to_string(),
        "bundled": settings.bundled.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "revision": settings.revision,
        "tag": settings.tag(),
        "arches": settings.arches.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "arch": arch.to_string(),
        "image": settings.arch_image(&settings.registry, arch),
        "push_image": settings.arch_image(&settings.push_registry, arch),
        "base": settings.base_for(arch),
        "source": format!("{:?}", settings.source_for(arch)).to_lowercase(),
        "release_url": settings.release_url,
        "binary_mode": format!("{:04o}", settings.binary_mode),
        "insecure_registries": settings.insecure_registries,
        "source_date_epoch": settings.source_date_epoch,
        "policy_findings": settings.policy_findings().iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        "go_toolchain": settings.gobuild.go_toolchain,
        "go_policy": settings.go_policy,
        "go_findings": go_findings_for_settings(&settings, arch),
    });
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
