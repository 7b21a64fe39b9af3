//! Environment overrides (CONTRACT.md §10): every `[telemetry_gateway]` key has a
//! `VV_TG_<UPPER_NAME>` variable, and the upstream names map onto their vvgate keys. Values are
//! written into the TOML table before it is deserialised, so the same validation applies to
//! both sources; a problem names the variable and the key.

use super::Problem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int,
    Str,
    /// A JSON object (maps: identities, tenants, key references).
    JsonMap,
    /// A JSON array of strings, or comma-separated values.
    List,
    /// Accepted and ignored with a warning (upstream settings without meaning here).
    Ignored,
}

/// `[telemetry_gateway]` keys and their types; each gets `VV_TG_<UPPER_NAME>`.
pub(crate) const GATEWAY_KEYS: &[(&str, Kind)] = &[
    ("mode", Kind::Str),
    ("state_dir", Kind::Str),
    ("listen", Kind::Str),
    ("require_mtls", Kind::Bool),
    ("require_payload_signature", Kind::Bool),
    ("allowed_service_identities", Kind::JsonMap),
    ("spectrastrike_ed25519_public_key_b64", Kind::Str),
    ("spectrastrike_ed25519_public_key_not_after", Kind::Int),
    ("spectrastrike_ed25519_next_public_key_b64", Kind::Str),
    ("spectrastrike_ed25519_next_not_before", Kind::Int),
    ("signature_verification", Kind::Str),
    ("allowed_clock_skew_seconds", Kind::Int),
    ("nonce_ttl_seconds", Kind::Int),
    ("nonce_backend", Kind::Str),
    ("redis_url", Kind::Ignored),
    ("rate_limit_per_minute", Kind::Int),
    ("rate_limit_backend", Kind::Str),
    ("queue_backend", Kind::Str),
    ("nats_url", Kind::List),
    ("queue_subject", Kind::Str),
    ("dlq_subject", Kind::Str),
    ("operator_tenant_map", Kind::JsonMap),
    ("enforce_schema_version", Kind::Bool),
    ("allowed_schema_version", Kind::Str),
    ("allowed_schema_versions", Kind::List),
    ("feedback_ed25519_keys", Kind::JsonMap),
    ("feedback_active_kid", Kind::Str),
    ("fail_on_persistence_error", Kind::Bool),
    ("max_body_bytes", Kind::Int),
    ("max_header_bytes", Kind::Int),
    ("max_connections", Kind::Int),
    ("max_new_connections_per_second", Kind::Int),
    ("new_connection_burst", Kind::Int),
    ("max_in_flight", Kind::Int),
    ("header_read_timeout_seconds", Kind::Int),
    ("body_read_timeout_seconds", Kind::Int),
    ("idle_timeout_seconds", Kind::Int),
    ("idempotent_retry", Kind::Bool),
    ("retry_after_seconds", Kind::Int),
    ("enforce_mitre_catalogue", Kind::Bool),
    ("mitre_catalogue_path", Kind::Str),
    ("graph_max_nodes", Kind::Int),
    ("graph_max_edges", Kind::Int),
    ("graph_retention_per_tenant", Kind::Int),
    ("spool_max_events", Kind::Int),
    ("spool_max_bytes", Kind::Int),
    ("group_commit_max_requests", Kind::Int),
    ("group_commit_max_delay_us", Kind::Int),
    ("storage_cache_bytes", Kind::Int),
];

/// Upstream variable names that do not follow `VV_TG_<UPPER_NAME>`: (variable, section, key).
/// They are applied before the `VV_TG_<UPPER_NAME>` forms, which therefore win.
pub(crate) const ALIASES: &[(&str, &str, &str, Kind)] = &[
    (
        "VV_TG_ALLOWED_SERVICE_IDENTITIES_JSON",
        "telemetry_gateway",
        "allowed_service_identities",
        Kind::JsonMap,
    ),
    (
        "VV_TG_SPECTRASTRIKE_ED25519_PUBKEY",
        "telemetry_gateway",
        "spectrastrike_ed25519_public_key_b64",
        Kind::Str,
    ),
    (
        "VV_TG_FEEDBACK_ED25519_KEYS_JSON",
        "telemetry_gateway",
        "feedback_ed25519_keys",
        Kind::JsonMap,
    ),
    (
        "VV_SERVICE_IDENTITY_CERT_PATH",
        "tls",
        "server_cert_path",
        Kind::Str,
    ),
    (
        "VV_SERVICE_IDENTITY_KEY_PATH",
        "tls",
        "server_key",
        Kind::Str,
    ),
    (
        "VV_SERVICE_IDENTITY_CA_PATH",
        "tls",
        "client_ca_path",
        Kind::Str,
    ),
    (
        "VV_FEDERATION_SPECTRASTRIKE_ED25519_PUBKEY",
        "federation",
        "spectrastrike_ed25519_public_key_b64",
        Kind::Str,
    ),
    ("VV_TAMPER_LOG_PATH", "audit", "export_path", Kind::Str),
    ("VV_TAMPER_LOG_SEAL_EVERY", "audit", "seal_every", Kind::Int),
    (
        "VV_HSM_EVIDENCE_ROOT_KEY_ID",
        "evidence",
        "active_key_id",
        Kind::Str,
    ),
    ("VV_HSM_ROOT_KEYS_JSON", "evidence", "keys", Kind::JsonMap),
    ("VVGATE_PKCS11_MODULE", "keystore", "module", Kind::Str),
];

/// The `VV_TG_*` name of a `[telemetry_gateway]` key.
pub(crate) fn gateway_var(key: &str) -> String {
    format!("VV_TG_{}", key.to_ascii_uppercase())
}

/// Apply every set variable of `env` onto `table`. Problems and warnings are collected.
pub(crate) fn apply(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) {
    for &(var, section, key, kind) in ALIASES {
        if let Some(v) = env(var) {
            set(table, var, section, key, kind, &v, problems, warnings);
        }
    }
    for &(key, kind) in GATEWAY_KEYS {
        let var = gateway_var(key);
        if let Some(v) = env(&var) {
            set(
                table,
                &var,
                "telemetry_gateway",
                key,
                kind,
                &v,
                problems,
                warnings,
            );
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site per source; a struct would only rename them
fn set(
    table: &mut toml::Table,
    var: &str,
    section: &str,
    key: &str,
    kind: Kind,
    raw: &str,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) {
    let name = format!("{var} ({section}.{key})");
    let value = match convert(kind, raw) {
        Ok(Some(v)) => v,
        Ok(None) => {
            warnings.push(format!("{name} is not used by vvgate and is ignored"));
            return;
        }
        Err(problem) => {
            problems.push(Problem::new(name, problem));
            return;
        }
    };
    let sec = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match sec {
        toml::Value::Table(t) => {
            t.insert(key.to_owned(), value);
        }
        _ => problems.push(Problem::new(name, format!("[{section}] is not a table"))),
    }
}

/// Parse a boolean the way the contract says: `1 true yes on` / `0 false no off`.
pub fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "expected one of 1 true yes on / 0 false no off, got {raw:?}"
        )),
    }
}

fn convert(kind: Kind, raw: &str) -> Result<Option<toml::Value>, String> {
    Ok(Some(match kind {
        Kind::Ignored => return Ok(None),
        Kind::Bool => toml::Value::Boolean(parse_bool(raw)?),
        Kind::Int => toml::Value::Integer(
            raw.trim()
                .parse::<i64>()
                .map_err(|_| format!("expected an integer, got {raw:?}"))?,
        ),
        Kind::Str => toml::Value::String(raw.to_owned()),
        Kind::JsonMap => {
            let v: serde_json::Value =
                serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))?;
            if !v.is_object() {
                return Err("expected a JSON object".into());
            }
            json_to_toml(&v)?
        }
        Kind::List => {
            let t = raw.trim();
            if t.starts_with('[') {
                let v: serde_json::Value =
                    serde_json::from_str(t).map_err(|e| format!("invalid JSON array: {e}"))?;
                json_to_toml(&v)?
            } else {
                toml::Value::Array(
                    t.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                )
            }
        }
    }))
}

fn json_to_toml(v: &serde_json::Value) -> Result<toml::Value, String> {
    Ok(match v {
        serde_json::Value::Null => return Err("null is not allowed here".into()),
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => return Err(format!("{n} is not an integer")),
        },
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Array(a) => {
            toml::Value::Array(a.iter().map(json_to_toml).collect::<Result<_, _>>()?)
        }
        serde_json::Value::Object(o) => {
            let mut t = toml::Table::new();
            for (k, v) in o {
                t.insert(k.clone(), json_to_toml(v)?);
            }
            toml::Value::Table(t)
        }
    })
}
