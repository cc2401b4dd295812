//! The `migrate` binary: parse flags (with env fallbacks), run, render, exit with a distinct code.

use clap::Parser;
use migrate::options::Flags;
use migrate::{log, ExitCode};

fn main() {
    // A panic is a bug; it ends with its own exit code and a message that says what to do (the
    // image's profile aborts on panic, so this hook is the last thing that runs). Every step
    // is journalled: a rerun converges whatever the moment.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "error: migrate hit a bug and stopped: {info}\nhint: the data dir is as the journal in its .migrate/ says; run migrate again (it finishes or undoes the interrupted step), and report this message"
        );
        std::process::exit(ExitCode::Bug as i32);
    }));
    let flags = match Flags::try_parse() {
        Ok(f) => f,
        Err(e) => {
            let code = if e.use_stderr() {
                ExitCode::Usage as i32
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if flags.fingerprint {
        std::process::exit(print_fingerprint(&flags));
    }
    let options = match flags.resolve(&env) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            let code = match e {
                migrate::options::OptionsError::UnknownStorage(_) => ExitCode::UnknownStorage,
                _ => ExitCode::Usage,
            };
            std::process::exit(code as i32);
        }
    };
    for line in &options.defaults_log {
        log(line);
    }
    let move_binaries = env("DO_NOT_MOVE_BINARIES").as_deref() != Some("true");
    match migrate::run(&options, move_binaries) {
        Ok(report) => {
            if options.json {
                println!("{}", report.to_json());
            } else if options.dry_run {
                println!(
                    "plan for {} ({} -> {}):",
                    report.data_dir,
                    report.from.as_deref().unwrap_or("(empty)"),
                    report.to
                );
                if report.steps.is_empty() {
                    println!("  nothing to do");
                }
                for (i, s) in report.steps.iter().enumerate() {
                    println!("  {}. {s}", i + 1);
                }
            }
            log(&format!("finished: {}", report.outcome));
        }
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(h) = e.hint() {
                eprintln!("hint: {h}");
            }
            std::process::exit(e.exit_code() as i32);
        }
    }
}

/// `--fingerprint`: the backend fingerprint of `--data-dir`, offline.
fn print_fingerprint(flags: &Flags) -> i32 {
    let Some(dir) = &flags.data_dir else {
        eprintln!("error: --fingerprint needs --data-dir (or DATA_DIRECTORY)");
        return ExitCode::Usage as i32;
    };
    if let Ok(Some(file)) = migrate::lock::held_by_live_etcd(dir) {
        eprintln!(
            "error: `{}` is in use by a running etcd (it holds `{}`); stop it first",
            dir.display(),
            file.display()
        );
        return ExitCode::DataDirInUse as i32;
    }
    match migrate::backend::fingerprint(&migrate::backend::db_path(dir), None) {
        Ok(fp) => {
            println!("{}", fp.to_json());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::DamagedDataDir as i32
        }
    }
}
