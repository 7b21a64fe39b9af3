//! Turn a [`RawConfig`] into a [`Config`], collecting every problem.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use vvgate_hsm::pkcs11::{Pkcs11Config, Purpose, TokenSelector};
use vvgate_hsm::KeyRef;

use super::raw::{PinSpec, RawConfig};
use super::*;

/// Default of `max_new_connections_per_second` (and of `new_connection_burst`).
const DEFAULT_NEW_CONNECTIONS_PER_SECOND: i64 = 1000;

/// Collects problems while reading values; every getter returns a usable default on error so
/// that validation goes on and reports everything at once.
struct Checker<'b> {
    problems: Vec<Problem>,
    warnings: Vec<String>,
    base: &'b Path,
    mode: Mode,
    /// The key store every key reference must belong to.
    backend: KeystoreBackend,
}

impl Checker<'_> {
    fn bad(&mut self, key: &str, problem: impl Into<String>) {
        self.problems.push(Problem::new(key, problem));
    }

    fn int(&mut self, key: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> u64 {
        let v = v.unwrap_or(default);
        if v < lo || v > hi {
            self.bad(key, format!("must be between {lo} and {hi} (got {v})"));
            return u64::try_from(default).unwrap_or(0);
        }
        u64::try_from(v).unwrap_or(0)
    }

    fn usize(&mut self, key: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> usize {
        usize::try_from(self.int(key, v, default, lo, hi)).unwrap_or(usize::MAX)
    }

    fn secs(&mut self, key: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Duration {
        Duration::from_secs(self.int(key, v, default, lo, hi))
    }

    fn path(&mut self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        let joined = if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        };
        // Drop `.` components so messages and socket paths read cleanly.
        joined
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    }

    fn required<T>(&mut self, key: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.bad(key, "is required");
        }
        v
    }

    fn addr(&mut self, key: &str, v: Option<String>, default: &str) -> SocketAddr {
        let s = v.unwrap_or_else(|| default.to_owned());
        match s.parse() {
            Ok(a) => a,
            Err(_) => {
                self.bad(key, format!("expected ip:port, got {s:?}"));
                default
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
            }
        }
    }

    /// A key reference for `key`, of the configured key store; a PKCS#11 `CKA_ID` must be
    /// `purpose ‖ version` with one of the `purposes` (so that, say, the feedback key cannot
    /// be configured as the checkpoint key).
    fn key_ref(&mut self, key: &str, v: &str, purposes: &[Purpose]) -> Option<KeyRef> {
        match KeyRef::parse(v) {
            Ok(KeyRef::File(p)) => {
                if self.mode == Mode::Production {
                    self.bad(
                        key,
                        "file keys are refused in production mode; use pkcs11:<CKA_ID>",
                    );
                } else if self.backend == KeystoreBackend::Pkcs11 {
                    self.bad(
                        key,
                        format!("{v:?} is a file key but [keystore] backend is \"pkcs11\"; use pkcs11:<hex CKA_ID>"),
                    );
                }
                Some(KeyRef::File(self.path(&p.to_string_lossy())))
            }
            Ok(r @ KeyRef::Pkcs11 { .. }) => {
                if self.backend == KeystoreBackend::File {
                    self.bad(
                        key,
                        format!("{r} is a PKCS#11 key but [keystore] backend is \"file\""),
                    );
                    return Some(r);
                }
                let KeyRef::Pkcs11 { id } = &r else {
                    return Some(r);
                };
                let purpose = match id.as_slice() {
                    [p, v] if *v > 0 => Purpose::from_byte(*p),
                    _ => None,
                };
                let want = purposes
                    .iter()
                    .map(|p| format!("{} ({:02x}xx)", p.name(), p.byte()))
                    .collect::<Vec<_>>()
                    .join(" or ");
                match purpose {
                    Some(p) if purposes.contains(&p) => {}
                    Some(p) => self.bad(
                        key,
                        format!(
                            "{r} is a {} key (CKA_ID purpose byte {:02x}); this key must be a {want} key",
                            p.name(),
                            p.byte()
                        ),
                    ),
                    None => self.bad(
                        key,
                        format!("{r}: a CKA_ID is two bytes, purpose ‖ version (version ≥ 1); expected {want}"),
                    ),
                }
                Some(r)
            }
            Err(e) => {
                self.bad(key, e.to_string());
                None
            }
        }
    }

    fn subject(&mut self, key: &str, v: Option<String>, default: &str) -> String {
        let s = v.unwrap_or_else(|| default.to_owned());
        let ok = !s.is_empty()
            && s.len() <= 256
            && s.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
            });
        if !ok {
            self.bad(
                key,
                format!(
                    "{s:?} is not a NATS subject (dot-separated tokens, no wildcards or spaces)"
                ),
            );
        }
        s
    }

    fn ed25519_key(&mut self, key: &str, b64: &str) -> Option<[u8; 32]> {
        match parse_ed25519_public(b64) {
            Ok(k) => Some(k),
            Err(e) => {
                self.bad(key, e);
                None
            }
        }
    }
}

/// Decode a producer public key: strict standard base64 of 32 bytes, the canonical encoding of
/// a point of the prime-order subgroup (so not of small order, the all-zero key among them, and
/// without a torsion component). Every key that Ed25519 key generation produces is one; the
/// others are where verifiers may disagree (docs/signature-batching.md), so none is accepted.
pub fn parse_ed25519_public(b64: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("not valid standard base64: {e}"))?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "decodes to {} bytes, an Ed25519 public key has 32",
            bytes.len()
        )
    })?;
    if key.iter().all(|&b| b == 0) {
        return Err("is all zero bytes (a placeholder, not a key)".into());
    }
    let point = curve25519_dalek::edwards::CompressedEdwardsY(key)
        .decompress()
        .ok_or("is not a valid Ed25519 point")?;
    if point.is_small_order() {
        return Err("is a small-order point, not a usable key".into());
    }
    if point.compress().0 != key {
        return Err("is not the canonical encoding of its point".into());
    }
    if !point.is_torsion_free() {
        return Err("has a small-order (torsion) component, which no Ed25519 key pair has".into());
    }
    Ok(key)
}

/// Parse a certificate pin: 64 hex (any case) or `AB:CD:…`; placeholders refused.
pub fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    let t = s.trim();
    let hex: String = if t.contains(':') {
        let parts: Vec<&str> = t.split(':').collect();
        if parts.len() != 32 || parts.iter().any(|p| p.len() != 2) {
            return Err(format!("{s:?} is not a SHA-256 fingerprint (32 hex pairs)"));
        }
        parts.concat()
    } else {
        t.to_owned()
    };
    let pin = crate::ids::parse_hex32(&hex)
        .ok_or_else(|| format!("{s:?} is not a SHA-256 fingerprint (64 hex characters)"))?;
    let lower = hex.to_ascii_lowercase();
    if lower.bytes().all(|b| b == lower.as_bytes()[0]) {
        return Err(format!(
            "{s:?} is a placeholder pin, not a certificate fingerprint"
        ));
    }
    Ok(pin)
}

fn is_canonical_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// The `[keystore]` section. `VVGATE_PKCS11_MODULE` has already replaced `module`.
fn keystore(c: &mut Checker<'_>, ks: super::raw::RawKeystore, mode: Mode) -> KeystoreConfig {
    let default_backend = if mode == Mode::Dev { "file" } else { "pkcs11" };
    let backend = match ks.backend.as_deref().unwrap_or(default_backend) {
        "file" => {
            if mode == Mode::Production {
                c.bad(
                    "keystore.backend",
                    "the file key store is for development only and refused in production mode",
                );
            }
            KeystoreBackend::File
        }
        "pkcs11" => KeystoreBackend::Pkcs11,
        other => {
            c.bad(
                "keystore.backend",
                format!("must be file or pkcs11 (got {other:?})"),
            );
            KeystoreBackend::File
        }
    };
    if backend == KeystoreBackend::File {
        for (key, set) in [
            ("keystore.module", ks.module.is_some()),
            ("keystore.token_label", ks.token_label.is_some()),
            ("keystore.token_serial", ks.token_serial.is_some()),
            ("keystore.pin_file", ks.pin_file.is_some()),
        ] {
            if set {
                c.warnings.push(format!(
                    "{key} is only used with [keystore] backend = \"pkcs11\" and is ignored"
                ));
            }
        }
        return KeystoreConfig {
            backend,
            pkcs11: None,
        };
    }
    let module = c.path(ks.module.as_deref().unwrap_or(DEFAULT_PKCS11_MODULE));
    // CK_TOKEN_INFO: a 32-byte label, a 16-byte serial number.
    let field = |c: &mut Checker<'_>, key: &str, v: String, max: usize| {
        let t = v.trim_end().to_owned();
        if t.is_empty() || t.len() > max || t.chars().any(char::is_control) {
            c.bad(
                key,
                format!("must be 1–{max} bytes of printable text (got {v:?})"),
            );
            return None;
        }
        Some(t)
    };
    let token = match (ks.token_label, ks.token_serial) {
        (Some(_), Some(_)) => {
            c.bad(
                "keystore.token_serial",
                "set token_label or token_serial, not both",
            );
            None
        }
        (Some(l), None) => field(c, "keystore.token_label", l, 32).map(TokenSelector::Label),
        (None, Some(s)) => field(c, "keystore.token_serial", s, 16).map(TokenSelector::Serial),
        (None, None) => {
            c.bad(
                "keystore.token_label",
                "is required with backend = \"pkcs11\" (or token_serial)",
            );
            None
        }
    };
    let pin_file = match ks.pin_file {
        Some(p) if !p.is_empty() => Some(c.path(&p)),
        _ => {
            c.bad(
                "keystore.pin_file",
                "is required with backend = \"pkcs11\": the file holding the token's user PIN \
                 (a systemd credential, e.g. $CREDENTIALS_DIRECTORY/hsm-pin)",
            );
            None
        }
    };
    KeystoreConfig {
        backend,
        pkcs11: match (token, pin_file) {
            (Some(token), Some(pin_file)) => Some(Pkcs11Config {
                module,
                token,
                pin_file,
            }),
            _ => None,
        },
    }
}

pub(super) fn validate(
    raw: RawConfig,
    base: &Path,
    problems: Vec<Problem>,
    warnings: Vec<String>,
) -> Result<Config, ConfigError> {
    let mut c = Checker {
        problems,
        warnings,
        base,
        mode: Mode::Production,
        backend: KeystoreBackend::Pkcs11,
    };
    let g = raw.telemetry_gateway;
    const G: &str = "telemetry_gateway";
    let k = |name: &str| format!("{G}.{name}");

    let mode = match g.mode.as_deref().unwrap_or("production") {
        "production" => Mode::Production,
        "dev" => Mode::Dev,
        other => {
            c.bad(
                &k("mode"),
                format!("must be production or dev (got {other:?})"),
            );
            Mode::Production
        }
    };
    c.mode = mode;
    // The key store first: every key reference below must belong to it.
    let keystore = keystore(&mut c, raw.keystore, mode);
    c.backend = keystore.backend;
    let state_dir = c.path(g.state_dir.as_deref().unwrap_or("/var/lib/vvgate"));
    let listen = c.addr(&k("listen"), g.listen, "0.0.0.0:8443");

    if g.require_mtls == Some(false) {
        c.bad(
            &k("require_mtls"),
            "false is refused: mutual TLS is always required",
        );
    }
    if g.require_payload_signature == Some(false) {
        c.bad(
            &k("require_payload_signature"),
            "false is refused: every request must be signed",
        );
    }
    if g.fail_on_persistence_error == Some(false) {
        c.bad(
            &k("fail_on_persistence_error"),
            "false is refused: the gateway always fails closed on persistence errors",
        );
    }

    // Identities and pins.
    let mut identities = Identities::default();
    match g.allowed_service_identities {
        None => c.bad(
            &k("allowed_service_identities"),
            "is required (identity → pin)",
        ),
        Some(map) if map.is_empty() => c.bad(
            &k("allowed_service_identities"),
            "must name at least one identity",
        ),
        Some(map) => {
            for (name, spec) in map {
                let key = format!("{G}.allowed_service_identities.{name}");
                if name.is_empty()
                    || name.trim() != name
                    || name.len() > 256
                    || !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                {
                    c.bad(&key, "identity names are 1–256 visible ASCII characters without surrounding spaces");
                    continue;
                }
                let list = match spec {
                    PinSpec::One(s) => vec![s],
                    PinSpec::Many(v) => v,
                };
                if list.is_empty() {
                    c.bad(&key, "needs at least one pin");
                }
                let mut pins = Vec::new();
                for s in list {
                    match parse_pin(&s) {
                        Ok(pin) => {
                            if let Some(other) = identities.by_pin.get(&pin) {
                                if other != &name {
                                    c.bad(
                                        &key,
                                        format!("pin {s} is already pinned for identity {other:?}; a fingerprint belongs to one identity"),
                                    );
                                    continue;
                                }
                            }
                            identities.by_pin.insert(pin, name.clone());
                            if !pins.contains(&pin) {
                                pins.push(pin);
                            }
                        }
                        Err(e) => c.bad(&key, e),
                    }
                }
                identities.pins.insert(name, pins);
            }
        }
    }

    // Producer keys.
    let active = c
        .required(
            &k("spectrastrike_ed25519_public_key_b64"),
            g.spectrastrike_ed25519_public_key_b64,
        )
        .and_then(|b| c.ed25519_key(&k("spectrastrike_ed25519_public_key_b64"), &b));
    let epoch = |c: &mut Checker<'_>, key: &str, v: Option<i64>| -> Option<u64> {
        v.and_then(|t| match u64::try_from(t) {
            Ok(t) => Some(t),
            Err(_) => {
                c.bad(key, "must be epoch seconds ≥ 0");
                None
            }
        })
    };
    let active_not_after = epoch(
        &mut c,
        &k("spectrastrike_ed25519_public_key_not_after"),
        g.spectrastrike_ed25519_public_key_not_after,
    );
    let next_not_before = epoch(
        &mut c,
        &k("spectrastrike_ed25519_next_not_before"),
        g.spectrastrike_ed25519_next_not_before,
    );
    let next = match g.spectrastrike_ed25519_next_public_key_b64 {
        Some(b) => c
            .ed25519_key(&k("spectrastrike_ed25519_next_public_key_b64"), &b)
            .map(|key| (key, next_not_before)),
        None => {
            if next_not_before.is_some() {
                c.bad(
                    &k("spectrastrike_ed25519_next_not_before"),
                    "is set but spectrastrike_ed25519_next_public_key_b64 is not",
                );
            }
            None
        }
    };
    if let (Some(a), Some((n, _))) = (active, &next) {
        if a == *n {
            c.bad(
                &k("spectrastrike_ed25519_next_public_key_b64"),
                "is the same key as the active one",
            );
        }
    }
    let producer_keys = ProducerKeys {
        active: active.unwrap_or([0; 32]),
        active_not_after,
        next,
    };

    let allowed_clock_skew_seconds = c.int(
        &k("allowed_clock_skew_seconds"),
        g.allowed_clock_skew_seconds,
        30,
        1,
        3600,
    );
    let nonce_ttl_seconds = c.int(
        &k("nonce_ttl_seconds"),
        g.nonce_ttl_seconds,
        120,
        30,
        2_592_000,
    );
    let signature_verification = match g.signature_verification.as_deref().unwrap_or("batch") {
        "batch" => SignatureVerification::Batch,
        "single" => SignatureVerification::Single,
        other => {
            c.bad(
                &k("signature_verification"),
                format!("must be batch or single (got {other:?})"),
            );
            SignatureVerification::Batch
        }
    };
    let nonce_backend = match g.nonce_backend.as_deref().unwrap_or("redb") {
        "redb" => NonceBackend::Redb,
        "jetstream_kv" => NonceBackend::JetstreamKv,
        other => {
            c.bad(
                &k("nonce_backend"),
                format!("must be redb or jetstream_kv (got {other:?}; redis and memory are upstream backends)"),
            );
            NonceBackend::Redb
        }
    };
    if g.redis_url.is_some() {
        c.warnings.push(format!(
            "{} is not used by vvgate and is ignored",
            k("redis_url")
        ));
    }
    let rate_limit_per_minute = c.int(
        &k("rate_limit_per_minute"),
        g.rate_limit_per_minute,
        120,
        1,
        1_000_000_000_000,
    );
    match g.rate_limit_backend.as_deref() {
        None | Some("memory") => {}
        Some(other) => c.bad(
            &k("rate_limit_backend"),
            format!("must be memory (got {other:?})"),
        ),
    }

    let queue_backend = match g.queue_backend.as_deref().unwrap_or("spool") {
        "spool" => QueueBackend::Spool,
        "nats" => QueueBackend::Nats,
        other => {
            c.bad(
                &k("queue_backend"),
                format!("must be spool or nats (got {other:?})"),
            );
            QueueBackend::Spool
        }
    };
    let queue_subject = c.subject(
        &k("queue_subject"),
        g.queue_subject,
        "vectorvue.telemetry.ingest",
    );
    let dlq_subject = c.subject(&k("dlq_subject"), g.dlq_subject, "vectorvue.telemetry.dlq");
    if queue_subject == dlq_subject {
        c.bad(&k("dlq_subject"), "must differ from queue_subject");
    }

    let mut operator_tenant_map = HashMap::new();
    for (op, tenant) in g.operator_tenant_map.unwrap_or_default() {
        let key = format!("{G}.operator_tenant_map.{op}");
        if op.is_empty() || op.chars().count() > 128 {
            c.bad(&key, "operator ids are 1–128 characters");
        } else if !is_canonical_uuid(&tenant) {
            c.bad(
                &key,
                format!("{tenant:?} is not a canonical lowercase 8-4-4-4-12 UUID"),
            );
        } else {
            operator_tenant_map.insert(op, tenant);
        }
    }
    if operator_tenant_map.is_empty() {
        c.warnings.push(format!(
            "{} is empty: every request will be refused with 403 Operator is not mapped to any tenant",
            k("operator_tenant_map")
        ));
    }

    let enforce_schema_version = g.enforce_schema_version.unwrap_or(true);
    let allowed_schema_version = g.allowed_schema_version.unwrap_or_else(|| "1.0".into());
    if allowed_schema_version.trim().is_empty() {
        c.bad(&k("allowed_schema_version"), "must not be empty");
    }
    let mut allowed_schema_versions = Vec::new();
    for v in g.allowed_schema_versions.unwrap_or_default() {
        let t = v.trim().to_owned();
        if t.is_empty() || t.chars().count() > 64 {
            c.bad(
                &k("allowed_schema_versions"),
                format!("{v:?} is not a schema version"),
            );
        } else if !allowed_schema_versions.contains(&t) {
            allowed_schema_versions.push(t);
        }
    }
    if allowed_schema_versions.is_empty() {
        allowed_schema_versions.push(allowed_schema_version.trim().to_owned());
    }

    let mut feedback_keys = BTreeMap::new();
    for (kid, r) in g.feedback_ed25519_keys.unwrap_or_default() {
        let key = format!("{G}.feedback_ed25519_keys.{kid}");
        if kid.is_empty() || kid.len() > 128 || kid.contains('|') {
            c.bad(&key, "key ids are 1–128 characters without '|'");
            continue;
        }
        if let Some(r) = c.key_ref(&key, &r, &[Purpose::Feedback]) {
            feedback_keys.insert(kid, r);
        }
    }
    let feedback_active_kid = g.feedback_active_kid;
    if let Some(kid) = &feedback_active_kid {
        if !feedback_keys.contains_key(kid) {
            c.bad(
                &k("feedback_active_kid"),
                format!("{kid:?} is not a key of feedback_ed25519_keys"),
            );
        }
    }

    // The default admits a fleet reconnecting after a restart within a few seconds while the
    // handshakes it admits take at most about half of the event loop's core (docs/config.md).
    let new_connections_per_second = c.int(
        &k("max_new_connections_per_second"),
        g.max_new_connections_per_second,
        DEFAULT_NEW_CONNECTIONS_PER_SECOND,
        1,
        1_000_000,
    );
    let limits = Limits {
        max_body_bytes: c.usize(
            &k("max_body_bytes"),
            g.max_body_bytes,
            1_048_576,
            1024,
            64 << 20,
        ),
        max_header_bytes: c.usize(
            &k("max_header_bytes"),
            g.max_header_bytes,
            16_384,
            1024,
            1 << 20,
        ),
        max_connections: c.usize(&k("max_connections"), g.max_connections, 4096, 1, 1_000_000),
        max_new_connections_per_second: new_connections_per_second,
        new_connection_burst: c.int(
            &k("new_connection_burst"),
            g.new_connection_burst,
            i64::try_from(new_connections_per_second).unwrap_or(i64::MAX),
            1,
            1_000_000,
        ),
        max_in_flight: c.usize(&k("max_in_flight"), g.max_in_flight, 1024, 1, 1_000_000),
        header_read_timeout: c.secs(
            &k("header_read_timeout_seconds"),
            g.header_read_timeout_seconds,
            10,
            1,
            3600,
        ),
        body_read_timeout: c.secs(
            &k("body_read_timeout_seconds"),
            g.body_read_timeout_seconds,
            10,
            1,
            3600,
        ),
        idle_timeout: c.secs(
            &k("idle_timeout_seconds"),
            g.idle_timeout_seconds,
            60,
            1,
            86_400,
        ),
    };
    let idempotent_retry = g.idempotent_retry.unwrap_or(false);
    let retry_after_seconds = c.int(&k("retry_after_seconds"), g.retry_after_seconds, 1, 1, 3600);
    let enforce_mitre_catalogue = g.enforce_mitre_catalogue.unwrap_or(true);
    let mitre_catalogue_path = g.mitre_catalogue_path.as_deref().map(|p| c.path(p));
    let graph = GraphLimits {
        max_nodes: c.usize(&k("graph_max_nodes"), g.graph_max_nodes, 4096, 1, 1_000_000),
        max_edges: c.usize(
            &k("graph_max_edges"),
            g.graph_max_edges,
            16_384,
            1,
            4_000_000,
        ),
        retention_per_tenant: c.usize(
            &k("graph_retention_per_tenant"),
            g.graph_retention_per_tenant,
            1000,
            1,
            1_000_000,
        ),
    };
    let spool_max_events = c.int(
        &k("spool_max_events"),
        g.spool_max_events,
        1_000_000,
        1,
        i64::MAX,
    );
    let spool_max_bytes = c.int(
        &k("spool_max_bytes"),
        g.spool_max_bytes,
        1 << 30,
        1 << 20,
        i64::MAX,
    );
    let group_commit_max_requests = c.usize(
        &k("group_commit_max_requests"),
        g.group_commit_max_requests,
        256,
        1,
        65_536,
    );
    let group_commit_max_delay = Duration::from_micros(c.int(
        &k("group_commit_max_delay_us"),
        g.group_commit_max_delay_us,
        2000,
        0,
        1_000_000,
    ));
    let storage_cache_bytes = c.usize(
        &k("storage_cache_bytes"),
        g.storage_cache_bytes,
        super::DEFAULT_STORAGE_CACHE_BYTES as i64,
        1 << 20,
        64 << 30,
    );

    // [tls]
    let t = raw.tls;
    let server_cert_path = c
        .required("tls.server_cert_path", t.server_cert_path)
        .map(|p| c.path(&p));
    let server_key = c
        .required("tls.server_key", t.server_key)
        .and_then(|v| c.key_ref("tls.server_key", &v, &[Purpose::Tls, Purpose::TlsEd25519]));
    let client_ca_path = c
        .required("tls.client_ca_path", t.client_ca_path)
        .map(|p| c.path(&p));
    let min_version = match t.min_version.as_deref().unwrap_or("1.3") {
        "1.3" => TlsVersion::V13,
        "1.2" => TlsVersion::V12,
        other => {
            c.bad(
                "tls.min_version",
                format!("must be 1.2 or 1.3 (got {other:?})"),
            );
            TlsVersion::V13
        }
    };
    let crl_paths = t
        .crl_paths
        .unwrap_or_default()
        .iter()
        .map(|p| c.path(p))
        .collect();

    // [nats]
    let n = raw.nats;
    let nats_key = n
        .key
        .as_deref()
        .and_then(|v| c.key_ref("nats.key", v, &[Purpose::Tls, Purpose::TlsEd25519]));
    let nats_urls = match g.nats_url.clone() {
        None => Vec::new(),
        Some(PinSpec::One(u)) => vec![u],
        Some(PinSpec::Many(v)) => v,
    };
    let nats = NatsConfig {
        urls: nats_urls,
        ca_path: n.ca_path.as_deref().map(|p| c.path(p)),
        cert_path: n.cert_path.as_deref().map(|p| c.path(p)),
        key: nats_key,
        credentials_file: n.credentials_file.as_deref().map(|p| c.path(p)),
        stream: n.stream.unwrap_or_else(|| "VECTORVUE_TELEMETRY".into()),
        create_stream: n.create_stream.unwrap_or(false),
        max_in_flight: c.usize("nats.max_in_flight", n.max_in_flight, 256, 1, 65_536),
    };
    if nats.stream.is_empty()
        || !nats
            .stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.bad(
            "nats.stream",
            "stream names are letters, digits, '_' and '-'",
        );
    }
    if queue_backend == QueueBackend::Nats {
        if nats.urls.is_empty() {
            c.bad(
                &k("nats_url"),
                "is required with queue_backend = \"nats\" (one tls://host:port or a list)",
            );
        }
        for (i, u) in nats.urls.iter().enumerate() {
            if crate::forward::parse_url(u).is_none() {
                let key = if nats.urls.len() == 1 {
                    k("nats_url")
                } else {
                    format!("{}[{i}]", k("nats_url"))
                };
                c.bad(
                    &key,
                    format!(
                        "must be tls://host:port (got {u:?}); the queue connection is always TLS"
                    ),
                );
            }
        }
        for (key, missing) in [
            ("nats.ca_path", nats.ca_path.is_none()),
            ("nats.cert_path", nats.cert_path.is_none()),
            ("nats.key", nats.key.is_none()),
        ] {
            if missing {
                c.bad(
                    key,
                    "is required with queue_backend = \"nats\" (the queue connection is mutual TLS)",
                );
            }
        }
    }
    // [cluster]
    let cluster = cluster(
        &mut c,
        raw.cluster,
        nonce_backend,
        queue_backend,
        allowed_clock_skew_seconds,
        nonce_ttl_seconds,
    );
    // [audit]
    let a = raw.audit;
    let checkpoint_origin = c
        .required("audit.checkpoint_origin", a.checkpoint_origin)
        .unwrap_or_default();
    if !checkpoint_origin.is_empty()
        && (checkpoint_origin.contains(' ')
            || checkpoint_origin.contains('+')
            || checkpoint_origin.contains("://")
            || checkpoint_origin.chars().any(char::is_control))
    {
        c.bad(
            "audit.checkpoint_origin",
            "must be a schema-less name without spaces or '+', e.g. vvgate.example.net/gw-01/audit",
        );
    }
    let checkpoint_key = c
        .required("audit.checkpoint_key", a.checkpoint_key)
        .and_then(|v| c.key_ref("audit.checkpoint_key", &v, &[Purpose::Checkpoint]));
    if a.export_path.is_some() {
        c.warnings.push(
            "audit.export_path (VV_TAMPER_LOG_PATH) is accepted for compatibility but unused: the log lives in the database; export it with `vvctl audit export`, and off the box it is exported through audit.segment_subject".into(),
        );
    }
    let audit = AuditConfig {
        seal_every: c.int("audit.seal_every", a.seal_every, 50, 1, 1_000_000),
        seal_interval_seconds: c.int(
            "audit.seal_interval_seconds",
            a.seal_interval_seconds,
            60,
            1,
            86_400,
        ),
        checkpoint_origin,
        checkpoint_key: checkpoint_key.unwrap_or(KeyRef::Pkcs11 { id: vec![] }),
        checkpoint_subject: c.subject(
            "audit.checkpoint_subject",
            a.checkpoint_subject,
            "vectorvue.audit.checkpoint",
        ),
        export_path: a.export_path.as_deref().map(|p| c.path(p)),
        witness_keys: {
            let mut keys: Vec<crate::audit::checkpoint::VerifierKey> = Vec::new();
            for (i, v) in a.witness_keys.unwrap_or_default().iter().enumerate() {
                let key = format!("audit.witness_keys[{i}]");
                match crate::audit::checkpoint::VerifierKey::parse(v) {
                    Ok(k) if keys.iter().any(|o| o.name == k.name && o.id() == k.id()) => {
                        c.bad(&key, "is listed twice");
                    }
                    Ok(k) => keys.push(k),
                    Err(e) => c.bad(&key, &e),
                }
            }
            keys
        },
        cosignature_subject: a
            .cosignature_subject
            .map(|v| c.subject("audit.cosignature_subject", Some(v), "")),
        segment_subject: c.subject(
            "audit.segment_subject",
            a.segment_subject,
            "vectorvue.audit.segment",
        ),
        segment_entries: {
            let v = c.int(
                "audit.segment_entries",
                a.segment_entries,
                8192,
                16,
                1 << 20,
            );
            if !v.is_power_of_two() {
                c.bad(
                    "audit.segment_entries",
                    format!("must be a power of two (got {v})"),
                );
            }
            v
        },
        retain_entries: c.int(
            "audit.retain_entries",
            a.retain_entries,
            1 << 20,
            0,
            1 << 40,
        ),
    };

    // [federation]
    let f = raw.federation;
    let fed_key = f
        .spectrastrike_ed25519_public_key_b64
        .as_deref()
        .and_then(|b| c.ed25519_key("federation.spectrastrike_ed25519_public_key_b64", b));
    let federation = FederationConfig {
        allowed_clock_skew_seconds: c.int(
            "federation.allowed_clock_skew_seconds",
            f.allowed_clock_skew_seconds,
            300,
            1,
            3600,
        ),
        public_key: fed_key.unwrap_or(producer_keys.active),
    };

    let ops_listen = c.addr("ops.listen", raw.ops.listen, "127.0.0.1:9464");

    // [control]
    let ctl = raw.control;
    let id = |c: &mut Checker<'_>, key: &str, v: Option<i64>| -> Option<u32> {
        v.and_then(|x| match u32::try_from(x) {
            Ok(x) => Some(x),
            Err(_) => {
                c.bad(key, format!("{x} is not a user or group id"));
                None
            }
        })
    };
    let control = ControlConfig {
        socket_path: match ctl.socket_path {
            Some(p) => c.path(&p),
            None if mode == Mode::Dev => state_dir.join("control.sock"),
            None => PathBuf::from("/run/vvgate/control.sock"),
        },
        allowed_uid: id(&mut c, "control.allowed_uid", ctl.allowed_uid),
        allowed_gid: id(&mut c, "control.allowed_gid", ctl.allowed_gid),
        rearm_officers: rearm_officers(&mut c, ctl.rearm_officers.unwrap_or_default()),
    };

    // [evidence]
    let ev = raw.evidence;
    let mut ev_keys = BTreeMap::new();
    for (kid, r) in ev.keys.unwrap_or_default() {
        let key = format!("evidence.keys.{kid}");
        if kid.is_empty() || kid.len() > 128 || kid.contains('|') {
            c.bad(&key, "key ids are 1–128 characters without '|'");
            continue;
        }
        if let Some(r) = c.key_ref(&key, &r, &[Purpose::Kek]) {
            ev_keys.insert(kid, r);
        }
    }
    let evidence = EvidenceConfig {
        active_key_id: ev
            .active_key_id
            .unwrap_or_else(|| "vv-evidence-kek-v1".into()),
        keys: ev_keys,
    };
    if !evidence.keys.is_empty() && !evidence.keys.contains_key(&evidence.active_key_id) {
        c.bad(
            "evidence.active_key_id",
            format!(
                "{:?} is not a key of [evidence] keys",
                evidence.active_key_id
            ),
        );
    }

    if !c.problems.is_empty() {
        return Err(ConfigError::Invalid(c.problems));
    }
    Ok(Config {
        mode,
        state_dir,
        listen,
        identities,
        producer_keys,
        signature_verification,
        allowed_clock_skew_seconds,
        nonce_ttl_seconds,
        nonce_backend,
        rate_limit_per_minute,
        queue_backend,
        queue_subject,
        dlq_subject,
        operator_tenant_map,
        enforce_schema_version,
        allowed_schema_version,
        allowed_schema_versions,
        feedback_keys,
        feedback_active_kid,
        limits,
        idempotent_retry,
        retry_after_seconds,
        enforce_mitre_catalogue,
        mitre_catalogue_path,
        graph,
        spool_max_events,
        spool_max_bytes,
        group_commit_max_requests,
        group_commit_max_delay,
        storage_cache_bytes,
        tls: TlsConfig {
            server_cert_path: server_cert_path.unwrap_or_default(),
            server_key: server_key.unwrap_or(KeyRef::Pkcs11 { id: vec![] }),
            client_ca_path: client_ca_path.unwrap_or_default(),
            min_version,
            crl_paths,
        },
        nats,
        cluster,
        audit,
        federation,
        ops_listen,
        keystore,
        control,
        evidence,
        warnings: c.warnings,
    })
}

/// The shortest bucket TTL that keeps a key while a re-send of its request can still pass the
/// skew check anywhere, and for `nonce_ttl_seconds` after acceptance (CONTRACT.md §3.5): a key
/// is written at the earliest `ts - skew`, and must live until `ts + skew + 1` and until
/// `accepted_at + nonce_ttl`.
pub fn min_bucket_ttl_secs(skew: u64, nonce_ttl: u64) -> u64 {
    2 * skew + nonce_ttl + 1
}

/// `[cluster]`: checked whenever present; required with `nonce_backend = "jetstream_kv"`.
fn cluster(
    c: &mut Checker<'_>,
    r: super::raw::RawCluster,
    backend: NonceBackend,
    queue: QueueBackend,
    skew: u64,
    nonce_ttl: u64,
) -> Option<super::ClusterConfig> {
    let min_ttl = min_bucket_ttl_secs(skew, nonce_ttl);
    let replicas = c.int("cluster.replicas", r.replicas, 3, 1, 5);
    let ttl_secs = c.int(
        "cluster.ttl_seconds",
        r.ttl_seconds,
        i64::try_from(min_ttl.max(3600)).unwrap_or(3600),
        1,
        31_536_000,
    );
    if ttl_secs < min_ttl {
        c.bad(
            "cluster.ttl_seconds",
            format!("must be at least {min_ttl} (2 x allowed_clock_skew_seconds + nonce_ttl_seconds + 1), got {ttl_secs}"),
        );
    }
    let timeout_ms = c.int("cluster.timeout_ms", r.timeout_ms, 2000, 50, 60_000);
    let bucket = r.bucket.unwrap_or_else(|| "VVGATE_NONCES".into());
    if bucket.is_empty()
        || bucket.len() > 64
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.bad(
            "cluster.bucket",
            "bucket names are 1-64 letters, digits, '_' and '-'",
        );
    }
    let appliance_id = r.appliance_id.unwrap_or_default();
    if backend != NonceBackend::JetstreamKv {
        return None;
    }
    if appliance_id.is_empty() {
        c.bad(
            "cluster.appliance_id",
            "is required with nonce_backend = \"jetstream_kv\" (a name unique to this appliance)",
        );
    } else if appliance_id.len() > 64
        || !appliance_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        c.bad(
            "cluster.appliance_id",
            "must be 1-64 letters, digits, '.', '_' and '-'",
        );
    }
    if queue != QueueBackend::Nats {
        c.bad(
            "telemetry_gateway.nonce_backend",
            "jetstream_kv needs queue_backend = \"nats\" (the bucket lives on the same JetStream cluster)",
        );
    }
    Some(super::ClusterConfig {
        appliance_id,
        bucket,
        replicas,
        create_bucket: r.create_bucket.unwrap_or(false),
        ttl: Duration::from_secs(ttl_secs),
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// `[control] rearm_officers`: officer name → salted verifier of their secret. Either none
/// (the kill switch cannot be re-armed until officers are configured) or at least two.
fn rearm_officers(
    c: &mut Checker<'_>,
    raw: BTreeMap<String, String>,
) -> BTreeMap<String, crate::killswitch::OfficerVerifier> {
    let mut out = BTreeMap::new();
    for (name, text) in raw {
        let key = format!("control.rearm_officers.{name}");
        if name.is_empty() || name.len() > 64 || name.chars().any(|ch| ch.is_control() || ch == ',')
        {
            c.bad(
                &key,
                "officer names are 1–64 characters, no control characters or ','",
            );
            continue;
        }
        match crate::killswitch::OfficerVerifier::parse(&text) {
            Ok(v) => {
                if out.values().any(|o| *o == v) {
                    c.bad(
                        &key,
                        "the same verifier as another officer: each officer has their own secret",
                    );
                } else {
                    out.insert(name, v);
                }
            }
            Err(e) => c.bad(&key, e),
        }
    }
    if out.len() == 1 {
        c.bad(
            "control.rearm_officers",
            "one officer configured: re-arming the kill switch needs two",
        );
    }
    out
}
