//! Record encodings (postcard). Each record is an enum whose variant is its format version, so a
//! later format adds a variant and old records stay readable.

use serde::{Deserialize, Serialize};

/// Which route accepted a nonce (telemetry and the cognitive routes share one namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// `POST /internal/v1/telemetry`.
    Telemetry,
    /// `POST /internal/v1/cognitive/execution-graph`.
    ExecutionGraph,
    /// `POST /internal/v1/cognitive/feedback/adjustments/query`.
    FeedbackQuery,
    /// `POST /internal/v1/federation/verify`.
    FederationVerify,
}

impl Route {
    /// The request path of this route.
    pub fn path(self) -> &'static str {
        match self {
            Route::Telemetry => "/internal/v1/telemetry",
            Route::ExecutionGraph => "/internal/v1/cognitive/execution-graph",
            Route::FeedbackQuery => "/internal/v1/cognitive/feedback/adjustments/query",
            Route::FederationVerify => "/internal/v1/federation/verify",
        }
    }
}

/// What is remembered of an accepted nonce (CONTRACT.md §3.5): enough to recognise an
/// identical re-send and answer it with the original request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NonceRecord {
    /// Format 1.
    V1 {
        /// SHA-256 of the request body.
        body_sha256: [u8; 32],
        /// The `request_id` of the accepting request.
        request_id: [u8; 16],
        /// The route that accepted it.
        route: Route,
        /// When it was accepted, Unix seconds.
        accepted_at: u64,
    },
}

/// A cluster claim (`nonce_backend = "jetstream_kv"`): a request accepted here whose nonce key
/// is being (or may have been) created in the shared bucket. It holds everything the
/// acceptance writes, so that once the bucket confirms the key is this appliance's the claim
/// becomes the nonce record, the spooled envelope and the `telemetry.accepted` audit entry;
/// if the key is another appliance's, the claim is dropped. Nothing of it is forwarded while
/// it is a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Claim<'a> {
    /// Format 1.
    V1 {
        /// The bucket key (`n.` + hex SHA-256 of `"{ts}:{nonce}"`).
        #[serde(borrow)]
        kv_key: &'a str,
        /// The value this appliance writes under it.
        #[serde(borrow, serialize_with = "bytes")]
        kv_value: &'a [u8],
        /// The nonce record the acceptance writes.
        record: NonceRecord,
        /// The envelope it spools.
        #[serde(borrow)]
        envelope: SpoolItem<'a>,
        /// The details (CJSON) of its `telemetry.accepted` audit entry.
        #[serde(borrow, serialize_with = "bytes")]
        audit_details: &'a [u8],
    },
    /// An accepted execution graph (`POST /internal/v1/cognitive/execution-graph`, which
    /// shares telemetry's nonces): it becomes the nonce record, the graph record under its
    /// tenant and the `cognitive.graph.accepted` audit entry.
    Graph {
        /// The bucket key.
        #[serde(borrow)]
        kv_key: &'a str,
        /// The value this appliance writes under it.
        #[serde(borrow, serialize_with = "bytes")]
        kv_value: &'a [u8],
        /// The nonce record the acceptance writes.
        record: NonceRecord,
        /// The tenant the graph is stored under.
        #[serde(borrow)]
        tenant_id: &'a str,
        /// The graph record.
        graph: GraphRecord,
        /// How many graph records of the tenant are kept.
        retention: u64,
        /// The details (CJSON) of its `cognitive.graph.accepted` audit entry.
        #[serde(borrow, serialize_with = "bytes")]
        audit_details: &'a [u8],
    },
}

impl Claim<'_> {
    /// The bucket key and the value this appliance writes under it.
    pub fn kv(&self) -> (&str, &[u8]) {
        match self {
            Claim::V1 {
                kv_key, kv_value, ..
            }
            | Claim::Graph {
                kv_key, kv_value, ..
            } => (kv_key, kv_value),
        }
    }

    /// The nonce record the acceptance writes.
    pub fn record(&self) -> &NonceRecord {
        match self {
            Claim::V1 { record, .. } | Claim::Graph { record, .. } => record,
        }
    }
}

/// What kind of envelope a spool entry carries (CONTRACT.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// Accepted telemetry, for `queue_subject`.
    Ingest,
    /// A rejected payload, for `dlq_subject`.
    DeadLetter,
    /// A signed audit checkpoint, for `[audit] checkpoint_subject`.
    Checkpoint,
    /// A chunk of exported audit entries (JSONL), for `[audit] segment_subject`.
    AuditEntries,
}

impl EnvelopeKind {
    /// The envelope's `kind` field and `Vv-Envelope-Kind` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvelopeKind::Ingest => "ingest",
            EnvelopeKind::DeadLetter => "dead_letter",
            EnvelopeKind::Checkpoint => "checkpoint",
            EnvelopeKind::AuditEntries => "audit_entries",
        }
    }
}

/// One envelope in the outbox: a message ready to publish, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolItem<'a> {
    /// Envelope kind; selects the subject.
    pub kind: EnvelopeKind,
    /// `Nats-Msg-Id` header value.
    #[serde(borrow)]
    pub msg_id: &'a str,
    /// Lowercase hex `integrity_hash` (`Vv-Integrity-Hash`); empty for checkpoints.
    #[serde(borrow)]
    pub integrity_hash: &'a str,
    /// The message body (the CJSON envelope).
    #[serde(borrow, serialize_with = "bytes")]
    pub body: &'a [u8],
}

/// A spool segment: the envelopes spooled by one group commit, in acceptance order.
/// Segments are written and deleted whole, so the outbox costs one B-tree insert per group
/// instead of one per envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpoolSegment<'a> {
    /// Format 1.
    V1 {
        /// When it was spooled, Unix microseconds.
        spooled_at: u64,
        /// Its envelopes.
        #[serde(borrow)]
        items: Vec<SpoolItem<'a>>,
    },
}

impl<'a> SpoolSegment<'a> {
    /// The envelopes.
    pub fn items(&self) -> &[SpoolItem<'a>] {
        match self {
            SpoolSegment::V1 { items, .. } => items,
        }
    }

    /// When it was spooled, Unix microseconds.
    pub fn spooled_at(&self) -> u64 {
        match self {
            SpoolSegment::V1 { spooled_at, .. } => *spooled_at,
        }
    }

    /// Sum of the envelopes' sizes.
    pub fn body_bytes(&self) -> u64 {
        self.items()
            .iter()
            .map(|i| u64::try_from(i.body.len()).unwrap_or(u64::MAX))
            .sum()
    }
}

/// The head of the audit chain: what the next append needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Index of the last entry (0 when the log is empty).
    pub index: u64,
    /// `entry_hash` of the last entry (raw bytes; all zero when empty).
    pub hash: [u8; 32],
    /// Index of the last `log.sealed` entry (0 when none).
    pub last_seal: u64,
}

/// Where audit-log retention stands (`meta` record `audit_retention`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRetention {
    /// Entries up to this index are exported and covered by an anchored checkpoint.
    pub exported_through: u64,
    /// An export in flight: its spool segment and the last entry it carries.
    pub pending: Option<(u64, u64)>,
    /// Entries up to this index are deleted locally.
    pub pruned_through: u64,
    /// `entry_hash` of entry `pruned_through` (where the local chain starts).
    pub pruned_hash: [u8; 32],
}

/// Spool occupancy, kept in the same transactions that change it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStats {
    /// Sequence number the next segment gets.
    pub next_seq: u64,
    /// Envelopes in the spool.
    pub count: u64,
    /// Sum of the envelopes' sizes.
    pub bytes: u64,
}

/// The metadata kept of one accepted execution graph (CONTRACT.md §8.1), under its tenant.
/// The graph itself is not kept: only what feedback needs and what identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GraphRecord {
    /// Format 1.
    V1 {
        /// The accepting request's id.
        request_id: [u8; 16],
        /// The operator that sent it.
        operator_id: String,
        /// `execution_fingerprint`, lowercase hex.
        execution_fingerprint: String,
        /// `attestation_measurement_hash`, lowercase hex.
        attestation_measurement_hash: String,
        /// The body's `schema_version`.
        schema_version: String,
        /// `graph.target_urn`, if given.
        target_urn: Option<String>,
        /// Length of `graph.nodes` (`None` when absent).
        nodes: Option<u32>,
        /// Length of `graph.edges` (`None` when absent).
        edges: Option<u32>,
        /// SHA-256 of the request body.
        body_sha256: [u8; 32],
        /// When it was accepted, Unix seconds.
        accepted_at: u64,
    },
}

/// The kill switch (CONTRACT.md §2.4): whether producer traffic is refused, and the last
/// change. Written in the same transaction as its `control.kill` / `control.rearm` audit entry,
/// before the operator is answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KillSwitch {
    /// Never engaged on this database.
    #[default]
    Armed,
    /// Format 1.
    V1 {
        /// Whether the switch is engaged.
        engaged: bool,
        /// When it last changed, Unix seconds.
        changed_at: u64,
        /// The audit index of the entry that recorded the change.
        audit_index: u64,
        /// Where the change came from (`socket`, `console`) and who (`uid=…`, officers).
        by: String,
        /// The operator's stated reason (kill) or empty.
        reason: String,
    },
}

impl KillSwitch {
    /// Whether producer traffic is refused.
    pub fn engaged(&self) -> bool {
        matches!(self, KillSwitch::V1 { engaged: true, .. })
    }
}

/// A byte string written as one length-prefixed run. serde writes `&[u8]` as a sequence of
/// single bytes by default; postcard encodes both the same way (varint length, then the raw
/// bytes), so this changes no stored record, only avoids a call per byte (a spooled envelope
/// is a few KiB). Reading borrows the bytes either way.
fn bytes<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

/// Encode a record with postcard.
pub fn encode<T: Serialize>(v: &T, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    out.clear();
    let bytes = postcard::to_extend(v, std::mem::take(out))?;
    *out = bytes;
    Ok(())
}

/// Decode a record with postcard.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte strings written as one run encode exactly as serde's default sequence of bytes
    /// did, so records stored before still read, and records written now read with the
    /// decoder of before.
    #[test]
    fn byte_strings_encode_as_the_sequence_they_replaced() {
        #[derive(Serialize)]
        struct AsSequence<'a> {
            kind: EnvelopeKind,
            msg_id: &'a str,
            integrity_hash: &'a str,
            body: &'a [u8],
        }
        let body: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let item = SpoolItem {
            kind: EnvelopeKind::Ingest,
            msg_id: "m-1",
            integrity_hash: "ab",
            body: &body,
        };
        let mut now = Vec::new();
        encode(&item, &mut now).unwrap();
        let mut before = Vec::new();
        encode(
            &AsSequence {
                kind: EnvelopeKind::Ingest,
                msg_id: "m-1",
                integrity_hash: "ab",
                body: &body,
            },
            &mut before,
        )
        .unwrap();
        assert_eq!(now, before);
        assert_eq!(decode::<SpoolItem<'_>>(&before).unwrap(), item);
    }

    #[test]
    fn records_round_trip() {
        let n = NonceRecord::V1 {
            body_sha256: [7; 32],
            request_id: [9; 16],
            route: Route::Telemetry,
            accepted_at: 1_772_107_200,
        };
        let mut buf = Vec::new();
        encode(&n, &mut buf).unwrap();
        assert_eq!(decode::<NonceRecord>(&buf).unwrap(), n);

        let k = KillSwitch::V1 {
            engaged: true,
            changed_at: 1_772_107_200,
            audit_index: 42,
            by: "socket uid=0".into(),
            reason: "compromise".into(),
        };
        encode(&k, &mut buf).unwrap();
        assert_eq!(decode::<KillSwitch>(&buf).unwrap(), k);
        assert!(k.engaged());
        assert!(!KillSwitch::default().engaged());

        let s = SpoolSegment::V1 {
            spooled_at: 5,
            items: vec![SpoolItem {
                kind: EnvelopeKind::DeadLetter,
                msg_id: "dlq:abc",
                integrity_hash: "00ff",
                body: b"{}",
            }],
        };
        encode(&s, &mut buf).unwrap();
        let back: SpoolSegment<'_> = decode(&buf).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.items()[0].body, b"{}");
        assert_eq!(back.body_bytes(), 2);
    }

    #[test]
    fn claims_of_both_kinds_round_trip() {
        let record = NonceRecord::V1 {
            body_sha256: [7; 32],
            request_id: [9; 16],
            route: Route::ExecutionGraph,
            accepted_at: 1_772_107_200,
        };
        let telemetry = Claim::V1 {
            kv_key: "n.ab",
            kv_value: b"{}",
            record,
            envelope: SpoolItem {
                kind: EnvelopeKind::Ingest,
                msg_id: "m",
                integrity_hash: "00",
                body: b"{}",
            },
            audit_details: b"{}",
        };
        let mut buf = Vec::new();
        encode(&telemetry, &mut buf).unwrap();
        // The first format keeps its encoding (variant 0): claims written before the graph
        // variant existed still decode.
        assert_eq!(buf[0], 0);
        assert_eq!(decode::<Claim<'_>>(&buf).unwrap(), telemetry);
        let graph = Claim::Graph {
            kv_key: "n.cd",
            kv_value: b"{\"v\":1}",
            record,
            tenant_id: "t",
            graph: GraphRecord::V1 {
                request_id: [9; 16],
                operator_id: "op".into(),
                execution_fingerprint: "ff".into(),
                attestation_measurement_hash: "ee".into(),
                schema_version: "execution.graph.v1".into(),
                target_urn: None,
                nodes: Some(3),
                edges: None,
                body_sha256: [7; 32],
                accepted_at: 1,
            },
            retention: 10,
            audit_details: b"{}",
        };
        encode(&graph, &mut buf).unwrap();
        let back: Claim<'_> = decode(&buf).unwrap();
        assert_eq!(back, graph);
        assert_eq!(back.kv(), ("n.cd", &b"{\"v\":1}"[..]));
        assert_eq!(back.record(), &record);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0xff][..],
            &[0, 0, 0][..],
            &[1, 200, 200, 200][..],
        ] {
            assert!(decode::<NonceRecord>(bytes).is_err(), "{bytes:?}");
        }
        // An empty segment (`[0, 0, 0]`) is valid; truncated or unknown ones are not.
        for bytes in [
            &[][..],
            &[0xff][..],
            &[1][..],
            &[0, 5][..],
            &[0, 5, 3, 0][..],
        ] {
            assert!(decode::<SpoolSegment<'_>>(bytes).is_err(), "{bytes:?}");
        }
    }
}
