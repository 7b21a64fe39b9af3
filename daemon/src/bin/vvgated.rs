//! `vvgated`: the gateway daemon. Parses arguments, loads and checks the configuration, runs.
//! Exit codes are listed in docs/exit-codes.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vvgate::config::{Config, DEFAULT_CONFIG_PATH};
use vvgate::{devpki, exit, run};

/// The vvgate telemetry ingest gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Validate the configuration, keys and certificates, then exit (0 when valid).
    #[arg(long)]
    check_config: bool,
    /// Development mode: create (on first start) and use a dev configuration, PKI and keys in
    /// --dev-dir; listens on 127.0.0.1:8443 (ops 127.0.0.1:9464).
    #[arg(long)]
    dev: bool,
    /// Directory of the dev configuration.
    #[arg(long, default_value = "vvgate-dev")]
    dev_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    vvgate::logging::init();
    if cfg!(feature = "fuzzing") {
        eprintln!("vvgated: this build has the `fuzzing` feature (forged signatures verify); refusing to start");
        return ExitCode::from(vvgate::exit::USAGE);
    }
    let config_path = if args.dev {
        match devpki::ensure_dev_dir(&args.dev_dir, "127.0.0.1:8443", "127.0.0.1:9464") {
            Ok((path, created)) => {
                if created {
                    eprintln!(
                        "vvgated: created a development configuration, PKI and keys in {}",
                        args.dev_dir.display()
                    );
                }
                print_dev_help(&args.dev_dir);
                path
            }
            Err(e) => {
                eprintln!("vvgated: {e}");
                return ExitCode::from(exit::CANTCREAT);
            }
        }
    } else {
        args.config
    };
    let progress = run::StartupProgress::begin();
    let cfg = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vvgated: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    progress.step("configuration loaded");
    let prepared = match run::prepare(cfg, progress) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vvgated: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if args.check_config {
        println!("vvgated: configuration {} is valid", config_path.display());
        return ExitCode::from(exit::OK);
    }
    match run::run(prepared, &config_path) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("vvgated: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn print_dev_help(dir: &std::path::Path) {
    let d = dir.display();
    // `vvctl` is built beside `vvgated`; name it by path when it is not on PATH.
    let vvctl = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|p| p.join("vvctl")))
        .filter(|p| p.exists())
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            let rel = p
                .strip_prefix(&cwd)
                .map(|r| std::path::Path::new(".").join(r))
                .unwrap_or(p);
            Some(rel.display().to_string())
        })
        .unwrap_or_else(|| "vvctl".into());
    eprintln!(
        "vvgated: development gateway (file keys, redb, spool queue) from {d}/vvgate.toml
  producer listener  https://127.0.0.1:8443  (mutual TLS, certificates in {d}/pki)
  ops listener       http://127.0.0.1:9464/healthz  /readyz  /metrics
send a signed event:       {vvctl} send --dev {d}
the same with curl:        {vvctl} send --dev {d} --curl | sh
see what was accepted:     {vvctl} spool tail --dev {d}
check the audit log:       {vvctl} audit verify --dev {d}"
    );
}
