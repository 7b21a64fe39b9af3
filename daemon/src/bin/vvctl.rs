//! `vvctl`: the operator and producer-side CLI. Parses arguments and calls `vvgate::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vvgate::cli::{self, CliError, GwArgs as Gw, ProducerArgs, StateArgs as State};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Operate a vvgate gateway and send it signed telemetry"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The producer's credentials (default: from --dev).
#[derive(Args, Debug, Clone, Default)]
struct Producer {
    /// Gateway address (default: the configuration's listen address).
    #[arg(long)]
    target: Option<String>,
    /// TLS server name to verify (default: localhost).
    #[arg(long)]
    server_name: Option<String>,
    /// CA certificate of the gateway.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Producer client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Producer client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Producer Ed25519 signing key (raw 32-byte seed or PKCS#8 PEM).
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// X-Service-Identity (default: spectrastrike-producer).
    #[arg(long)]
    identity: Option<String>,
}

impl Producer {
    fn args(&self) -> ProducerArgs {
        ProducerArgs {
            target: self.target.clone(),
            server_name: self.server_name.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            signing_key: self.signing_key.clone(),
            identity: self.identity.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a development PKI: CA, server certificate, producer client certificate and
    /// Ed25519 signing key, gateway keys; prints the pin and public key.
    DevPki {
        /// Output directory.
        #[arg(long, default_value = "vvgate-pki")]
        out: PathBuf,
    },
    /// Sign and send events as the producer does (CJSON body, Ed25519, contract headers).
    Send {
        #[command(flatten)]
        gw: Gw,
        #[command(flatten)]
        producer: Producer,
        #[command(flatten)]
        args: cli::send::SendArgs,
    },
    /// The outbox.
    Spool {
        #[command(subcommand)]
        cmd: SpoolCmd,
    },
    /// The audit log: verify, export, checkpoints, proofs, cosignatures.
    Audit {
        #[command(subcommand)]
        cmd: cli::audit::AuditCmd,
    },
    /// Status of a running gateway.
    Status {
        #[command(flatten)]
        state: State,
    },
    /// Engage the kill switch: every producer connection is closed and every request refused
    /// (403) until two officers re-arm it. Stored before it is confirmed.
    Kill {
        #[command(flatten)]
        state: State,
        /// Why (recorded in the audit entry).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Re-arm the kill switch: two officers, each with their own secret file.
    Rearm {
        #[command(flatten)]
        state: State,
        /// NAME=SECRET_FILE, once per officer (twice).
        #[arg(long = "officer", value_name = "NAME=SECRET_FILE")]
        officers: Vec<String>,
    },
    /// Re-read and apply the configuration (as SIGHUP): refused as a whole if anything in it
    /// is wrong.
    Reload {
        #[command(flatten)]
        state: State,
    },
    /// Officer secrets for re-arming the kill switch.
    Officer {
        #[command(subcommand)]
        cmd: OfficerCmd,
    },
    /// Key ceremonies on the PKCS#11 token, under dual control (docs/key-ceremony.md).
    Keys {
        #[command(subcommand)]
        cmd: cli::keys::KeysCmd,
    },
    /// Evidence envelopes: seal and open blobs with the configured KEKs.
    Evidence {
        #[command(subcommand)]
        cmd: cli::evidence::EvidenceCmd,
    },
    /// Signed A/B image updates: verify a bundle, install it into the free slot.
    Update {
        #[command(subcommand)]
        cmd: cli::update::UpdateCmd,
    },
    /// Load a running gateway with pre-signed requests and report throughput, latency, CPU, RSS.
    Bench {
        #[command(flatten)]
        gw: Gw,
        #[command(flatten)]
        producer: Producer,
        #[command(flatten)]
        args: cli::bench::BenchArgs,
    },
}

#[derive(Subcommand, Debug)]
enum OfficerCmd {
    /// Make a new officer secret file and print its verifier for [control] rearm_officers.
    New {
        /// The officer's name.
        #[arg(long)]
        name: String,
        /// Where to write the secret (created 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// PBKDF2 rounds of the verifier.
        #[arg(long, default_value_t = vvgate::killswitch::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

#[derive(Subcommand, Debug)]
enum SpoolCmd {
    /// Print the newest spooled envelopes, one JSON line each.
    Tail {
        #[command(flatten)]
        state: State,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 10)]
        limit: usize,
    },
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Cmd::DevPki { out } => {
            let pki = vvgate::devpki::generate(&out)?;
            println!("dev PKI written to {}", pki.dir.display());
            println!(
                "producer certificate pin (X-Client-Cert-Sha256): {}",
                pki.producer_pin
            );
            println!(
                "producer Ed25519 public key (spectrastrike_ed25519_public_key_b64): {}",
                pki.producer_public_b64
            );
            Ok(())
        }
        Cmd::Send { gw, producer, args } => cli::send::run(&gw.where_(), &producer.args(), &args),
        Cmd::Spool {
            cmd: SpoolCmd::Tail { state, limit },
        } => cli::spool::tail(&state.source()?, limit),
        Cmd::Audit { cmd } => cli::audit::run(cmd),
        Cmd::Status { state } => match state.source()?.ask("{\"cmd\":\"status\"}")? {
            Some(lines) => {
                for l in lines {
                    println!("{l}");
                }
                Ok(())
            }
            None => Err(CliError::Failed(
                "the gateway is not running (no control socket)".into(),
            )),
        },
        Cmd::Kill { state, reason } => cli::operate::kill(&state.source()?, &reason),
        Cmd::Rearm { state, officers } => cli::operate::rearm(&state.source()?, &officers),
        Cmd::Reload { state } => cli::operate::reload(&state.source()?),
        Cmd::Officer {
            cmd:
                OfficerCmd::New {
                    name,
                    out,
                    iterations,
                },
        } => cli::operate::officer_new(&name, &out, iterations),
        Cmd::Keys { cmd } => cli::keys::run(cmd),
        Cmd::Evidence { cmd } => cli::evidence::run(cmd),
        Cmd::Update { cmd } => cli::update::run(cmd),
        Cmd::Bench { gw, producer, args } => cli::bench::run(&gw.where_(), &producer.args(), &args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vvgate::logging::init();
    vvgate::logging::raise_fd_limit();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vvctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
