//! `vvctl`: one module per command group. `main` parses arguments and calls these.

pub mod audit;
pub mod bench;
mod bench_audit;
pub mod evidence;
pub mod keys;
pub mod operate;
pub mod send;
pub mod spool;
pub mod update;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::client::{ClientError, Producer};
use crate::config::{Config, ConfigError};

/// Why a `vvctl` command failed. Printed as is; the exit code comes from [`CliError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("control socket {path}: {detail}")]
    Control { path: String, detail: String },
    #[error("storage: {0}")]
    Storage(#[from] vvgate_storage::StorageError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    DevPki(#[from] crate::devpki::DevPkiError),
    #[error(transparent)]
    Update(#[from] update::UpdateError),
    /// The command ran and its answer is "no" (a broken audit log, a failed request).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => crate::exit::USAGE,
            CliError::Config(_) => crate::exit::CONFIG,
            CliError::Storage(_) => crate::exit::IOERR,
            CliError::Failed(_) => 1,
            CliError::Update(e) => e.exit_code(),
            CliError::Client(_)
            | CliError::Control { .. }
            | CliError::Io { .. }
            | CliError::DevPki(_) => crate::exit::UNAVAILABLE,
        }
    }
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

/// Which gateway.
#[derive(Args, Debug, Clone, Default)]
pub struct GwArgs {
    /// A dev directory made by `vvgated --dev` (its configuration and PKI).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "vvgate-dev")]
    pub dev: Option<PathBuf>,
    /// The gateway's configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl GwArgs {
    pub fn where_(&self) -> Where {
        Where {
            dev: self.dev.clone(),
            config: self.config.clone(),
        }
    }
}

/// A gateway's state: running (control socket) or stopped (database).
#[derive(Args, Debug, Clone, Default)]
pub struct StateArgs {
    #[command(flatten)]
    pub gw: GwArgs,
    /// Control socket of a running gateway.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// State directory of a stopped gateway.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    pub fn source(&self) -> Result<StateSource, CliError> {
        StateSource::new(
            &self.gw.where_(),
            self.socket.clone(),
            self.state_dir.clone(),
        )
    }
}

/// How to find a gateway: its configuration (from `--dev DIR` or `--config PATH`).
#[derive(Clone, Debug, Default)]
pub struct Where {
    /// A dev directory (`vvgated --dev`): configuration and PKI inside.
    pub dev: Option<PathBuf>,
    /// A configuration file.
    pub config: Option<PathBuf>,
}

impl Where {
    pub fn load(&self) -> Result<Option<Config>, CliError> {
        let path = match (&self.dev, &self.config) {
            (Some(d), _) => d.join("vvgate.toml"),
            (None, Some(c)) => c.clone(),
            (None, None) => return Ok(None),
        };
        Ok(Some(Config::load(&path)?))
    }

    /// The dev PKI directory, if any.
    pub fn pki(&self) -> Option<PathBuf> {
        self.dev.as_ref().map(|d| d.join("pki"))
    }
}

/// Producer credentials given on the command line (or taken from a dev directory).
#[derive(Clone, Debug, Default)]
pub struct ProducerArgs {
    pub target: Option<String>,
    pub server_name: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub signing_key: Option<PathBuf>,
    pub identity: Option<String>,
}

/// A resolved producer: where to connect, as whom.
pub struct ProducerTarget {
    pub addr: SocketAddr,
    pub host: String,
    pub server_name: String,
    pub producer: Producer,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn pick(
    given: &Option<PathBuf>,
    dev: &Option<PathBuf>,
    name: &str,
    flag: &str,
) -> Result<PathBuf, CliError> {
    given
        .clone()
        .or_else(|| dev.as_ref().map(|d| d.join(name)))
        .ok_or_else(|| CliError::Usage(format!("{flag} is required (or --dev DIR)")))
}

pub fn resolve_producer(w: &Where, a: &ProducerArgs) -> Result<ProducerTarget, CliError> {
    let cfg = w.load()?;
    let pki = w.pki();
    let target = match (&a.target, &cfg) {
        (Some(t), _) => t.clone(),
        (None, Some(c)) => {
            let mut addr = c.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip([127, 0, 0, 1].into());
            }
            addr.to_string()
        }
        (None, None) => {
            return Err(CliError::Usage(
                "--target HOST:PORT is required (or --dev DIR / --config PATH)".into(),
            ))
        }
    };
    let addr = target
        .to_socket_addrs()
        .map_err(io_err(format!("cannot resolve {target}")))?
        .next()
        .ok_or_else(|| CliError::Usage(format!("{target} resolves to nothing")))?;
    let ca = pick(&a.ca, &pki, "ca.pem", "--ca")?;
    let cert = pick(&a.cert, &pki, "producer.pem", "--cert")?;
    let key = pick(&a.key, &pki, "producer.key", "--key")?;
    let signing = pick(
        &a.signing_key,
        &pki,
        "producer-signing.seed",
        "--signing-key",
    )?;
    let identity = a
        .identity
        .clone()
        .unwrap_or_else(|| crate::devpki::DEV_IDENTITY.to_owned());
    let producer = Producer::load(&ca, &cert, &key, &signing, &identity)?;
    Ok(ProducerTarget {
        addr,
        host: target,
        server_name: a.server_name.clone().unwrap_or_else(|| "localhost".into()),
        producer,
        cert,
        key,
        ca,
    })
}

/// Send one control command and return the response lines, or `None` if no gateway listens.
pub fn control(path: &Path, request: &str) -> Result<Option<Vec<String>>, CliError> {
    let mut s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(CliError::Control {
                path: path.display().to_string(),
                detail: e.to_string(),
            })
        }
    };
    let ctl = |e: std::io::Error| CliError::Control {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(ctl)?;
    s.write_all(request.as_bytes()).map_err(ctl)?;
    s.write_all(b"\n").map_err(ctl)?;
    let mut lines = Vec::new();
    for line in BufReader::new(s).lines() {
        lines.push(line.map_err(ctl)?);
    }
    if let Some(first) = lines.first() {
        if first.starts_with("{\"error\":") {
            return Err(CliError::Control {
                path: path.display().to_string(),
                detail: first.clone(),
            });
        }
    }
    Ok(Some(lines))
}

/// Where the state of a gateway lives: its control socket (running) or database (stopped).
pub struct StateSource {
    pub socket: Option<PathBuf>,
    pub database: Option<PathBuf>,
    /// The gateway's configuration, when known.
    pub config: Option<Config>,
}

impl StateSource {
    pub fn new(
        w: &Where,
        socket: Option<PathBuf>,
        state_dir: Option<PathBuf>,
    ) -> Result<Self, CliError> {
        let cfg = w.load()?;
        let socket = socket.or_else(|| cfg.as_ref().map(|c| c.control.socket_path.clone()));
        let database = state_dir
            .or_else(|| cfg.as_ref().map(|c| c.state_dir.clone()))
            .map(|d| crate::run::database_path(&d));
        if socket.is_none() && database.is_none() {
            return Err(CliError::Usage(
                "say which gateway: --dev DIR, --config PATH, --socket PATH or --state-dir DIR"
                    .into(),
            ));
        }
        Ok(Self {
            socket,
            database,
            config: cfg,
        })
    }

    /// Ask the running gateway; `None` when it is not running.
    pub fn ask(&self, request: &str) -> Result<Option<Vec<String>>, CliError> {
        match &self.socket {
            Some(p) => control(p, request),
            None => Ok(None),
        }
    }

    /// Open the database directly (the gateway must be stopped).
    pub fn open(&self) -> Result<vvgate_storage::Store, CliError> {
        let path = self.database.as_ref().ok_or_else(|| {
            CliError::Usage("the gateway is not running and no state directory is known".into())
        })?;
        if !path.exists() {
            return Err(CliError::Usage(format!(
                "no database at {}",
                path.display()
            )));
        }
        vvgate_storage::Store::open(path, 8 << 20).map_err(|e| match e {
            vvgate_storage::StorageError::Open { .. } => CliError::Failed(format!(
                "{e}\n(if the gateway is running, use its control socket: --socket PATH)"
            )),
            other => CliError::Storage(other),
        })
    }
}
