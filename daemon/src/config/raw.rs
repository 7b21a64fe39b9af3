//! The configuration file as written: every key optional, unknown keys refused.
//! [`super::validate`] turns this into a checked [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) telemetry_gateway: RawGateway,
    #[serde(default)]
    pub(crate) tls: RawTls,
    #[serde(default)]
    pub(crate) nats: RawNats,
    #[serde(default)]
    pub(crate) cluster: RawCluster,
    #[serde(default)]
    pub(crate) audit: RawAudit,
    #[serde(default)]
    pub(crate) federation: RawFederation,
    #[serde(default)]
    pub(crate) ops: RawOps,
    #[serde(default)]
    pub(crate) keystore: RawKeystore,
    #[serde(default)]
    pub(crate) control: RawControl,
    #[serde(default)]
    pub(crate) evidence: RawEvidence,
}

/// One string or a list: a pin (one fingerprint, or several during certificate rotation), or
/// `nats_url` (one queue node, or several tried in turn).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum PinSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub(crate) mode: Option<String>,
    pub(crate) state_dir: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) require_mtls: Option<bool>,
    pub(crate) require_payload_signature: Option<bool>,
    pub(crate) allowed_service_identities: Option<BTreeMap<String, PinSpec>>,
    pub(crate) spectrastrike_ed25519_public_key_b64: Option<String>,
    pub(crate) spectrastrike_ed25519_public_key_not_after: Option<i64>,
    pub(crate) spectrastrike_ed25519_next_public_key_b64: Option<String>,
    pub(crate) spectrastrike_ed25519_next_not_before: Option<i64>,
    pub(crate) signature_verification: Option<String>,
    pub(crate) allowed_clock_skew_seconds: Option<i64>,
    pub(crate) nonce_ttl_seconds: Option<i64>,
    pub(crate) nonce_backend: Option<String>,
    pub(crate) redis_url: Option<String>,
    pub(crate) rate_limit_per_minute: Option<i64>,
    pub(crate) rate_limit_backend: Option<String>,
    pub(crate) queue_backend: Option<String>,
    pub(crate) nats_url: Option<PinSpec>,
    pub(crate) queue_subject: Option<String>,
    pub(crate) dlq_subject: Option<String>,
    pub(crate) operator_tenant_map: Option<BTreeMap<String, String>>,
    pub(crate) enforce_schema_version: Option<bool>,
    pub(crate) allowed_schema_version: Option<String>,
    pub(crate) allowed_schema_versions: Option<Vec<String>>,
    pub(crate) feedback_ed25519_keys: Option<BTreeMap<String, String>>,
    pub(crate) feedback_active_kid: Option<String>,
    pub(crate) fail_on_persistence_error: Option<bool>,
    pub(crate) max_body_bytes: Option<i64>,
    pub(crate) max_header_bytes: Option<i64>,
    pub(crate) max_connections: Option<i64>,
    pub(crate) max_new_connections_per_second: Option<i64>,
    pub(crate) new_connection_burst: Option<i64>,
    pub(crate) max_in_flight: Option<i64>,
    pub(crate) header_read_timeout_seconds: Option<i64>,
    pub(crate) body_read_timeout_seconds: Option<i64>,
    pub(crate) idle_timeout_seconds: Option<i64>,
    pub(crate) idempotent_retry: Option<bool>,
    pub(crate) retry_after_seconds: Option<i64>,
    pub(crate) enforce_mitre_catalogue: Option<bool>,
    pub(crate) mitre_catalogue_path: Option<String>,
    pub(crate) graph_max_nodes: Option<i64>,
    pub(crate) graph_max_edges: Option<i64>,
    pub(crate) graph_retention_per_tenant: Option<i64>,
    pub(crate) spool_max_events: Option<i64>,
    pub(crate) spool_max_bytes: Option<i64>,
    pub(crate) group_commit_max_requests: Option<i64>,
    pub(crate) group_commit_max_delay_us: Option<i64>,
    pub(crate) storage_cache_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) server_cert_path: Option<String>,
    pub(crate) server_key: Option<String>,
    pub(crate) client_ca_path: Option<String>,
    pub(crate) min_version: Option<String>,
    pub(crate) crl_paths: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNats {
    pub(crate) ca_path: Option<String>,
    pub(crate) cert_path: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) credentials_file: Option<String>,
    pub(crate) stream: Option<String>,
    pub(crate) create_stream: Option<bool>,
    pub(crate) max_in_flight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) appliance_id: Option<String>,
    pub(crate) bucket: Option<String>,
    pub(crate) replicas: Option<i64>,
    pub(crate) create_bucket: Option<bool>,
    pub(crate) ttl_seconds: Option<i64>,
    pub(crate) timeout_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub(crate) seal_every: Option<i64>,
    pub(crate) seal_interval_seconds: Option<i64>,
    pub(crate) checkpoint_origin: Option<String>,
    pub(crate) checkpoint_key: Option<String>,
    pub(crate) checkpoint_subject: Option<String>,
    pub(crate) export_path: Option<String>,
    pub(crate) witness_keys: Option<Vec<String>>,
    pub(crate) cosignature_subject: Option<String>,
    pub(crate) segment_subject: Option<String>,
    pub(crate) segment_entries: Option<i64>,
    pub(crate) retain_entries: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFederation {
    pub(crate) allowed_clock_skew_seconds: Option<i64>,
    pub(crate) spectrastrike_ed25519_public_key_b64: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOps {
    pub(crate) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeystore {
    pub(crate) backend: Option<String>,
    pub(crate) module: Option<String>,
    pub(crate) token_label: Option<String>,
    pub(crate) token_serial: Option<String>,
    pub(crate) pin_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub(crate) socket_path: Option<String>,
    pub(crate) allowed_uid: Option<i64>,
    pub(crate) allowed_gid: Option<i64>,
    pub(crate) rearm_officers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvidence {
    pub(crate) active_key_id: Option<String>,
    pub(crate) keys: Option<BTreeMap<String, String>>,
}
