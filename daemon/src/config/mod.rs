//! Configuration: a TOML file (CONTRACT.md §10) plus `VV_TG_*` and upstream environment
//! overrides, validated completely at start. Every problem names its key; all problems are
//! reported at once, and an invalid configuration never starts the gateway.
//!
//! Stage 0 of the request path: everything later reads the checked [`Config`].

mod env;
mod raw;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vvgate_hsm::KeyRef;

pub use env::parse_bool;
pub use validate::{parse_ed25519_public, parse_pin};

/// Where the configuration file is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vvgate/vvgate.toml";

/// redb's page cache by default (`storage_cache_bytes`): it holds the B-tree's branch pages
/// and the leaves new nonces land in; at 16 MiB the cache alone put the gateway with 1,000 open
/// connections above 64 MiB RSS, with no throughput gained (docs/benchmarks.md).
pub const DEFAULT_STORAGE_CACHE_BYTES: usize = 8 << 20;

/// One configuration problem: the key (or variable) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub problem: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {detail}")]
    Syntax { path: String, detail: String },
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.0.len())?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for p in self.0 {
            write!(f, "\n  {}: {}", p.key, p.problem)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Production,
    Dev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceBackend {
    /// Replay protection from this appliance's own redb nonce table.
    Redb,
    /// Cluster-wide: a create-only key in a JetStream KV bucket shared by every appliance,
    /// with the redb table as the local fast path (`[cluster]`, docs/scale-out.md).
    JetstreamKv,
}

impl NonceBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            NonceBackend::Redb => "redb",
            NonceBackend::JetstreamKv => "jetstream_kv",
        }
    }
}

/// How check step 14 verifies producer signatures (`signature_verification`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureVerification {
    /// Signatures that reach step 14 in the same event-loop turn are verified together (at
    /// most 16, one random linear combination); a lone one, and every one of a failed batch,
    /// with ring as in `Single` (docs/signature-batching.md).
    Batch,
    /// Each signature on its own with ring, the contract's reference verifier.
    Single,
}

impl SignatureVerification {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureVerification::Batch => "batch",
            SignatureVerification::Single => "single",
        }
    }
}

/// `[cluster]`: several appliances sharing one JetStream KV bucket of nonces.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This appliance's name in the bucket's values (unique per appliance).
    pub appliance_id: String,
    /// The KV bucket (stream `KV_<bucket>`).
    pub bucket: String,
    /// Replicas the bucket must have (and is created with).
    pub replicas: u64,
    /// Create the bucket when it does not exist.
    pub create_bucket: bool,
    /// The TTL a created bucket gets; an existing bucket's must be at least the retention rule.
    pub ttl: Duration,
    /// How long a KV create or read may wait for its answer before the bucket counts as
    /// unreachable (503).
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueBackend {
    /// Envelopes stay in the redb outbox (`vvctl spool tail` reads them).
    Spool,
    /// Envelopes are forwarded to NATS JetStream over TLS.
    Nats,
}

impl QueueBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueBackend::Spool => "spool",
            QueueBackend::Nats => "nats",
        }
    }
}

/// Service identities and their pinned certificate fingerprints (CONTRACT.md §3.2).
#[derive(Clone, Debug, Default)]
pub struct Identities {
    /// identity → pins (SHA-256 of the DER leaf certificate).
    pub pins: BTreeMap<String, Vec<[u8; 32]>>,
    /// pin → identity (a fingerprint belongs to one identity only).
    pub by_pin: HashMap<[u8; 32], String>,
}

/// The producer's Ed25519 public keys (CONTRACT.md §3.4, §10): an active key, optionally
/// retired after `active_not_after`, and a next key valid from `next_not_before`.
#[derive(Clone, Debug)]
pub struct ProducerKeys {
    pub active: [u8; 32],
    pub active_not_after: Option<u64>,
    pub next: Option<([u8; 32], Option<u64>)>,
}

impl ProducerKeys {
    /// The keys valid at `now` (Unix seconds), active first.
    pub fn valid_at(&self, now: u64) -> impl Iterator<Item = &[u8; 32]> {
        let active = match self.active_not_after {
            Some(t) if now > t => None,
            _ => Some(&self.active),
        };
        let next = match &self.next {
            Some((k, Some(from))) if now >= *from => Some(k),
            Some((k, None)) => Some(k),
            _ => None,
        };
        active.into_iter().chain(next)
    }
}

/// Connection and request limits.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// New producer connections admitted per second on average (token bucket refill).
    pub max_new_connections_per_second: u64,
    /// New producer connections admitted at once after a quiet spell (token bucket size).
    pub new_connection_burst: u64,
    pub max_in_flight: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub server_cert_path: PathBuf,
    pub server_key: KeyRef,
    pub client_ca_path: PathBuf,
    pub min_version: TlsVersion,
    pub crl_paths: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// The queue nodes (`tls://host:port`), tried in turn; empty without `nats_url`.
    pub urls: Vec<String>,
    pub ca_path: Option<PathBuf>,
    pub cert_path: Option<PathBuf>,
    pub key: Option<KeyRef>,
    pub credentials_file: Option<PathBuf>,
    pub stream: String,
    pub create_stream: bool,
    pub max_in_flight: usize,
}

#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub seal_every: u64,
    pub seal_interval_seconds: u64,
    pub checkpoint_origin: String,
    pub checkpoint_key: KeyRef,
    pub checkpoint_subject: String,
    pub export_path: Option<PathBuf>,
    /// Witnesses whose cosignatures are verified and stored.
    pub witness_keys: Vec<crate::audit::checkpoint::VerifierKey>,
    /// Where witnesses publish cosigned checkpoints (NATS); `None`: only `vvctl audit cosign`.
    pub cosignature_subject: Option<String>,
    /// Where exported audit segments are published (NATS).
    pub segment_subject: String,
    /// Entries per exported segment (a power of two).
    pub segment_entries: u64,
    /// Entries kept locally after they are exported and anchored.
    pub retain_entries: u64,
}

#[derive(Clone, Debug)]
pub struct FederationConfig {
    pub allowed_clock_skew_seconds: u64,
    /// The federation key, else the telemetry producer's active key.
    pub public_key: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeystoreBackend {
    File,
    Pkcs11,
}

impl KeystoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            KeystoreBackend::File => "file",
            KeystoreBackend::Pkcs11 => "pkcs11",
        }
    }
}

/// The PKCS#11 module used when `[keystore] module` and `VVGATE_PKCS11_MODULE` are unset
/// (Debian's SoftHSM; a real HSM names its vendor library).
pub const DEFAULT_PKCS11_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[derive(Clone, Debug)]
pub struct KeystoreConfig {
    pub backend: KeystoreBackend,
    /// The module, token and PIN file; set exactly when `backend` is `Pkcs11`.
    pub pkcs11: Option<vvgate_hsm::pkcs11::Pkcs11Config>,
}

#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub socket_path: PathBuf,
    pub allowed_uid: Option<u32>,
    pub allowed_gid: Option<u32>,
    /// Officer name → verifier of their secret; a re-arm needs two of them.
    pub rearm_officers: BTreeMap<String, crate::killswitch::OfficerVerifier>,
}

#[derive(Clone, Debug)]
pub struct EvidenceConfig {
    pub active_key_id: String,
    pub keys: BTreeMap<String, KeyRef>,
}

#[derive(Clone, Debug)]
pub struct GraphLimits {
    pub max_nodes: usize,
    pub max_edges: usize,
    pub retention_per_tenant: usize,
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub identities: Identities,
    pub producer_keys: ProducerKeys,
    pub signature_verification: SignatureVerification,
    pub allowed_clock_skew_seconds: u64,
    pub nonce_ttl_seconds: u64,
    pub nonce_backend: NonceBackend,
    pub rate_limit_per_minute: u64,
    pub queue_backend: QueueBackend,
    pub queue_subject: String,
    pub dlq_subject: String,
    pub operator_tenant_map: HashMap<String, String>,
    pub enforce_schema_version: bool,
    pub allowed_schema_version: String,
    pub allowed_schema_versions: Vec<String>,
    pub feedback_keys: BTreeMap<String, KeyRef>,
    pub feedback_active_kid: Option<String>,
    pub limits: Limits,
    pub idempotent_retry: bool,
    pub retry_after_seconds: u64,
    pub enforce_mitre_catalogue: bool,
    pub mitre_catalogue_path: Option<PathBuf>,
    pub graph: GraphLimits,
    pub spool_max_events: u64,
    pub spool_max_bytes: u64,
    pub group_commit_max_requests: usize,
    pub group_commit_max_delay: Duration,
    pub storage_cache_bytes: usize,
    pub tls: TlsConfig,
    pub nats: NatsConfig,
    /// Set exactly when `nonce_backend = "jetstream_kv"`.
    pub cluster: Option<ClusterConfig>,
    pub audit: AuditConfig,
    pub federation: FederationConfig,
    pub ops_listen: SocketAddr,
    pub keystore: KeystoreConfig,
    pub control: ControlConfig,
    pub evidence: EvidenceConfig,
    /// Things worth telling the operator that do not stop the gateway.
    pub warnings: Vec<String>,
}

impl Config {
    /// How long a telemetry nonce is kept after its signed timestamp: the skew window, the
    /// nonce TTL and a second of margin (also the queue's minimum duplicate window).
    pub fn nonce_retention_secs(&self) -> u64 {
        self.allowed_clock_skew_seconds + self.nonce_ttl_seconds + 1
    }

    /// The same for federation nonces, with federation's own skew window.
    pub fn federation_nonce_retention_secs(&self) -> u64 {
        self.federation.allowed_clock_skew_seconds + self.nonce_ttl_seconds + 1
    }

    /// Read `path`, apply the process environment, validate.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// Read `path`, apply `env`, validate. Relative paths in the file are resolved against the
    /// file's directory.
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base, env)
    }

    /// Validate configuration text. `origin` names it in messages.
    pub fn parse(
        text: &str,
        origin: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            detail: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        env::apply(&mut table, env, &mut problems, &mut warnings);
        let raw: raw::RawConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    detail: e.to_string(),
                })?;
        validate::validate(raw, base_dir, problems, warnings)
    }
}

#[cfg(test)]
mod tests;
