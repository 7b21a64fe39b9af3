//! `vvctl evidence seal` and `vvctl evidence open`: evidence envelopes (CONTRACT.md §9) with
//! the gateway's configured KEKs (`[evidence] keys`, through its key store: the KEK never
//! leaves it). Seal uses `active_key_id` unless told otherwise; open uses the envelope's
//! `key_id`, so envelopes sealed before a rotation still open while their KEK stays
//! configured. An upstream v1 envelope opens only with its root key given explicitly.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use clap::{Args, Subcommand};
use vvgate_hsm::Kek;
use zeroize::Zeroizing;

use super::{io_err, CliError, GwArgs};
use crate::evidence::{self, EvidenceError};

#[derive(Subcommand, Debug)]
pub enum EvidenceCmd {
    /// Seal a blob (stdin or --in) for a tenant; prints the envelope JSON.
    Seal {
        #[command(flatten)]
        gw: GwArgs,
        #[command(flatten)]
        io: Io,
        /// Tenant id (`^[a-fA-F0-9-]{36}$`).
        #[arg(long)]
        tenant: String,
        /// Blob id bound into the envelope (1–128 of `[A-Za-z0-9._:-]`).
        #[arg(long)]
        blob_id: String,
        /// KEK id to seal with (default: `[evidence] active_key_id`).
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Open an envelope (stdin or --in) for a tenant; writes the blob.
    Open {
        #[command(flatten)]
        gw: GwArgs,
        #[command(flatten)]
        io: Io,
        #[arg(long)]
        tenant: String,
        /// Require this blob id.
        #[arg(long)]
        blob_id: Option<String>,
        /// For an upstream `vv-evidence-env-v1` envelope: a file holding the root key as
        /// standard base64 (the value of `VV_HSM_ROOT_KEYS_JSON`).
        #[arg(long, value_name = "FILE")]
        v1_root_key_file: Option<PathBuf>,
        /// The v1 root key's id.
        #[arg(long, default_value = "vv-evidence-root-v1")]
        v1_root_key_id: String,
    },
}

#[derive(Args, Debug)]
pub struct Io {
    /// Read from this file instead of stdin.
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Write to this file instead of stdout.
    #[arg(long = "out", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl Io {
    fn read(&self) -> Result<Zeroizing<Vec<u8>>, CliError> {
        let mut buf = Zeroizing::new(Vec::new());
        match &self.input {
            Some(p) => {
                std::fs::File::open(p)
                    .and_then(|f| {
                        f.take(evidence::MAX_PLAINTEXT as u64 * 2 + 4096)
                            .read_to_end(&mut buf)
                    })
                    .map_err(io_err(format!("reading {}", p.display())))?;
            }
            None => {
                std::io::stdin()
                    .take(evidence::MAX_PLAINTEXT as u64 * 2 + 4096)
                    .read_to_end(&mut buf)
                    .map_err(io_err("reading stdin"))?;
            }
        }
        Ok(buf)
    }

    fn write(&self, bytes: &[u8]) -> Result<(), CliError> {
        match &self.output {
            Some(p) => std::fs::write(p, bytes).map_err(io_err(format!("writing {}", p.display()))),
            None => std::io::stdout()
                .write_all(bytes)
                .map_err(io_err("writing stdout")),
        }
    }
}

/// The configured KEKs by key id, with the key store they came from (a PKCS#11 store must
/// outlive the keys taken from it).
struct Keks {
    active: String,
    by_id: BTreeMap<String, Arc<dyn Kek>>,
    _store: Arc<dyn vvgate_hsm::KeyStore>,
    _probe: Option<crate::gateway::KeystoreProbe>,
}

/// The active key id and the configured KEKs, opened through the configured key store.
fn keks(gw: &GwArgs) -> Result<Keks, CliError> {
    let cfg = gw
        .where_()
        .load()?
        .ok_or_else(|| CliError::Usage("give --config PATH or --dev DIR".into()))?;
    let (store, probe) =
        crate::run::open_keystore(&cfg).map_err(|e| CliError::Failed(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (kid, key) in &cfg.evidence.keys {
        let kek = store
            .kek(key)
            .map_err(|e| CliError::Failed(format!("evidence.keys.{kid}: {e}")))?;
        out.insert(kid.clone(), kek);
    }
    Ok(Keks {
        active: cfg.evidence.active_key_id.clone(),
        by_id: out,
        _store: store,
        _probe: probe,
    })
}

fn refused(e: EvidenceError) -> CliError {
    CliError::Failed(e.to_string())
}

pub fn run(cmd: EvidenceCmd) -> Result<(), CliError> {
    match cmd {
        EvidenceCmd::Seal {
            gw,
            io,
            tenant,
            blob_id,
            key_id,
        } => {
            let keks = keks(&gw)?;
            let kid = key_id.unwrap_or_else(|| keks.active.clone());
            let kek = keks
                .by_id
                .get(&kid)
                .ok_or_else(|| refused(EvidenceError::KeyNotFound))?;
            let plaintext = io.read()?;
            let mut rng = crate::ids::Random::new();
            let env = evidence::seal(
                kek.as_ref(),
                &kid,
                &tenant,
                &blob_id,
                &plaintext,
                &mut |b| rng.fill(b),
            )
            .map_err(refused)?;
            let mut text = serde_json::to_vec(&env).map_err(|e| CliError::Failed(e.to_string()))?;
            text.push(b'\n');
            io.write(&text)
        }
        EvidenceCmd::Open {
            gw,
            io,
            tenant,
            blob_id,
            v1_root_key_file,
            v1_root_key_id,
        } => {
            let input = io.read()?;
            let env: serde_json::Value = serde_json::from_slice(&input)
                .map_err(|_| refused(EvidenceError::UnsupportedVersion))?;
            let plaintext = match v1_root_key_file {
                Some(path) => {
                    let text = Zeroizing::new(
                        std::fs::read_to_string(&path)
                            .map_err(io_err(format!("reading {}", path.display())))?,
                    );
                    let root = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(text.trim())
                            .map_err(|_| {
                                CliError::Usage(format!(
                                    "{} does not hold a base64 root key",
                                    path.display()
                                ))
                            })?,
                    );
                    evidence::open_v1(&env, &tenant, &v1_root_key_id, &root).map_err(refused)?
                }
                None => {
                    let keks = keks(&gw)?;
                    evidence::open(&env, &tenant, blob_id.as_deref(), &|id| {
                        keks.by_id.get(id).cloned()
                    })
                    .map_err(refused)?
                }
            };
            io.write(&plaintext)
        }
    }
}
