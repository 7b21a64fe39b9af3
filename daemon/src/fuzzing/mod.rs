//! Entry points for the fuzz targets in `fuzz/` (one call each). Every parser that reads bytes
//! from outside is reachable from here: the HTTP/1.1 head and body framing, a whole request
//! through the check chain, the payload schema and MITRE catalogue, the config file, the redb
//! record encodings, the NATS protocol, the checkpoint and signed-note parser, the audit
//! export reader, the bodies of the federation and cognitive routes, the values of the
//! cluster's nonce bucket, and evidence envelopes.
//!
//! Each entry point must return normally on any input: a panic, a hang or unbounded memory is
//! a bug in the parser it reaches. Invariants that must hold for any input are asserted here,
//! so the fuzzer reports their violation as a crash.
//!
//! `request` runs the real producer service on an in-memory connection against a real store;
//! with the `fuzzing` feature its signature check accepts forged signatures (see
//! `ingest::checks`), otherwise every request stops at the signature.

mod rig;
pub mod seeds;
mod wire;

use vvgate_storage::records::{self, AuditHead, AuditRetention, NonceRecord, SpoolSegment};
use vvgate_storage::records::{Route as RecordRoute, SpoolStats};

use crate::audit::checkpoint::{self, Checkpoint, Keys, VerifierKey};
use crate::audit::query::Inclusion;
use crate::audit::{verify_checkpoints, verify_entries, CheckpointInput, VerifyOptions};
use crate::http::conn::{self, ConnInfo, ConnLimits, FramingError, Service};
use crate::http::{parse_head, Head, HeadError, Response, Span};
use crate::json::Tape;
use crate::schema::{self, Catalogue, PayloadPolicy};

pub use rig::request;
use wire::Wire;

/// The seed of the Ed25519 key that signs fuzzing checkpoints (public, like everything here).
pub const CHECKPOINT_SEED: [u8; 32] = [7; 32];
/// The origin (and key name) of fuzzing checkpoints.
pub const CHECKPOINT_ORIGIN: &str = "vvgate.fuzz/audit";

/// A service that accepts every framed request, so the fuzzer drives the connection loop alone.
struct Framing {
    closing: event_listener::Event,
}

impl Service for Framing {
    type State = u32;

    fn new_state(&self) -> u32 {
        0
    }

    fn closing(&self, _conn: &ConnInfo) -> bool {
        false
    }

    fn closing_event(&self) -> &event_listener::Event {
        &self.closing
    }

    async fn framing_error(
        &self,
        _st: &mut u32,
        _conn: &ConnInfo,
        err: FramingError,
        body: &mut Vec<u8>,
    ) -> Response {
        crate::http::error_body(body, "framing");
        Response::new(match err {
            FramingError::Malformed => 400,
            FramingError::Timeout => 408,
            FramingError::LengthRequired => 411,
            FramingError::HeaderTooLarge => 431,
        })
    }

    async fn before_body(
        &self,
        st: &mut u32,
        _conn: &ConnInfo,
        head: &Head,
        buf: &[u8],
        body: &mut Vec<u8>,
    ) -> Option<Response> {
        *st += 1;
        check_head(head, buf);
        // Answer some requests from the head alone, so the body-skipping path runs too.
        if head.path.get(buf).starts_with(b"/early") {
            crate::http::error_body(body, "Not Found");
            return Some(Response::new(404));
        }
        None
    }

    async fn handle(
        &self,
        _st: &mut u32,
        _conn: &ConnInfo,
        head: &Head,
        buf: &[u8],
        span: Span,
        body: &mut Vec<u8>,
    ) -> Response {
        assert!(span.start <= span.end && span.end <= buf.len(), "body span");
        let announced = head.content_length.unwrap_or(0);
        assert_eq!(u64::try_from(span.end - span.start).ok(), Some(announced));
        body.extend_from_slice(b"{}");
        Response::new(202)
    }
}

/// The spans of a parsed head lie inside the bytes it was parsed from.
fn check_head(head: &Head, buf: &[u8]) {
    assert!(head.len <= buf.len(), "head length");
    let spans = [
        Some(head.path),
        head.content_type,
        head.content_encoding,
        head.service_identity,
        head.cert_sha256,
        head.timestamp,
        head.nonce,
        head.signature,
        head.idempotency_key,
    ];
    for s in spans.into_iter().flatten() {
        assert!(
            s.start <= s.end && s.end <= head.len,
            "span outside the head"
        );
    }
}

/// Connection limits small enough that every limit is reachable by fuzz input.
pub(crate) fn small_limits() -> ConnLimits {
    ConnLimits {
        max_header_bytes: 2048,
        max_body_bytes: 16 * 1024,
        header_read_timeout: std::time::Duration::from_secs(5),
        body_read_timeout: std::time::Duration::from_secs(5),
        idle_timeout: std::time::Duration::from_secs(5),
    }
}

pub(crate) fn conn_info(fingerprint: Option<[u8; 32]>) -> ConnInfo {
    ConnInfo {
        id: 1,
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        fingerprint,
    }
}

/// HTTP/1.1 framing: the head parser on its own, then the connection loop over the bytes as
/// a client would send them. The first byte `k` (mod 16) is followed by `k` bytes that give
/// the sizes of successive reads, so partial heads and bodies are exercised.
pub fn http_framing(data: &[u8]) {
    if let Some(end) = crate::http::find_head_end(data, 0) {
        match parse_head(&data[..end]) {
            Ok(head) => check_head(&head, &data[..end]),
            Err(HeadError::Malformed | HeadError::TooLarge) => {}
        }
    }
    let (chunks, stream) = wire::split(data);
    let svc = Framing {
        closing: event_listener::Event::new(),
    };
    let mut io = Wire::new(stream, chunks);
    futures_lite::future::block_on(conn::serve(
        &svc,
        &mut io,
        &conn_info(None),
        &small_limits(),
    ));
    assert!(io.written() > 0 || stream.is_empty() || io.read() > 0);
}

/// The payload schema and MITRE validation: a telemetry body through parse, request schema,
/// payload normalisation (with the built-in catalogue) and the schema-version lookup.
pub fn payload(data: &[u8]) {
    thread_local! {
        static CATALOGUE: Catalogue = Catalogue::builtin();
    }
    let mut tape = Tape::new();
    let Ok(doc) = tape.parse(data) else {
        return;
    };
    let _ = schema::schema_version(&doc, crate::json::Doc::ROOT);
    let Ok(req) = schema::parse_request(&doc) else {
        return;
    };
    let _ = schema::schema_version(&doc, req.payload);
    let mut scratch = schema::Scratch::default();
    let mut out = Vec::new();
    CATALOGUE.with(|c| {
        let policy = PayloadPolicy { catalogue: Some(c) };
        if schema::normalise_payload(&doc, req.payload, policy, &mut scratch, &mut out).is_ok() {
            // The normalised payload is canonical JSON.
            assert!(
                Tape::new().parse(&out).is_ok(),
                "normalised payload is not JSON"
            );
        }
    });
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = schema::parse_rfc3339(text);
        let _ = schema::injection_detected(text);
        let _ = Catalogue::from_tsv(text);
    }
}

/// The config file: TOML syntax, environment overrides and full validation. Relative paths
/// resolve inside a scratch directory holding a dev PKI, so file references can succeed.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = rig::pki_dir();
    let env = |k: &str| -> Option<String> {
        // A few overrides, driven by the text itself, so the environment path runs too.
        (k.ends_with("RATE_LIMIT_PER_MINUTE") && text.contains("#env")).then(|| "7".into())
    };
    if let Ok(cfg) = crate::config::Config::parse(text, "fuzz.toml", &base, &env) {
        assert!(
            cfg.limits.max_connections > 0,
            "validated config without connections"
        );
    }
}

/// The redb record encodings: every record type decodes or fails cleanly, and what decodes
/// encodes back to bytes that decode to the same value.
pub fn records(data: &[u8]) {
    // A macro, not a generic function: borrowed records (`SpoolSegment<'a>`) decode from
    // both the input and the re-encoding, two different lifetimes.
    macro_rules! round_trip {
        ($t:ty) => {
            if let Ok(v) = records::decode::<$t>(data) {
                let mut out = Vec::new();
                records::encode(&v, &mut out).expect("a decoded record encodes");
                let back = records::decode::<$t>(&out).expect("a re-encoded record decodes");
                assert_eq!(back, v, "a record changed in a round trip");
            }
        };
    }
    round_trip!(NonceRecord);
    round_trip!(SpoolSegment<'_>);
    round_trip!(AuditHead);
    round_trip!(AuditRetention);
    round_trip!(SpoolStats);
    round_trip!(RecordRoute);
    if let Ok(seg) = vvgate_storage::decode_spool(data) {
        let _ = (seg.body_bytes(), seg.spooled_at());
    }
}

/// The NATS protocol as the server speaks it: operations parsed one after another from the
/// buffer (as the client's read loop does), `INFO` JSON, header status lines and PubAcks.
pub fn nats(data: &[u8]) {
    let max_payload = 4096;
    let mut rest = data;
    let mut tape = Tape::new();
    while let Ok(Some((op, used))) = crate::nats::proto::parse(rest, max_payload) {
        assert!(
            used > 0 && used <= rest.len(),
            "parser used {used} of {}",
            rest.len()
        );
        match op {
            crate::nats::proto::ServerOp::Info(json) => {
                let _ = crate::nats::client::parse_info(json);
            }
            crate::nats::proto::ServerOp::Msg(m) => {
                assert!(m.payload.len() <= max_payload, "payload over the limit");
                let status = m.status();
                let _ = crate::nats::jetstream::parse_pub_ack(status, m.payload, &mut tape);
            }
            _ => {}
        }
        rest = &rest[used..];
    }
    let _ = crate::nats::jetstream::parse_pub_ack(None, data, &mut tape);
}

/// The fuzzing checkpoint key as a verifier key.
pub fn checkpoint_key() -> VerifierKey {
    use ring::signature::KeyPair as _;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&CHECKPOINT_SEED)
        .expect("a 32-byte seed");
    let key: [u8; 32] = pair.public_key().as_ref().try_into().expect("32 bytes");
    VerifierKey {
        name: CHECKPOINT_ORIGIN.to_owned(),
        alg: checkpoint::ALG_ED25519,
        key,
    }
}

/// Checkpoints and signed notes: the note is opened against the fuzzing key (so seeds signed
/// with it reach the body parser and cosignature checks), its body parsed on its own, and the
/// text also read as a verifier key and as a tlog-proof.
pub fn checkpoint(data: &[u8]) {
    let key = checkpoint_key();
    let keys = Keys::new(std::slice::from_ref(&key), std::slice::from_ref(&key));
    if let Ok(opened) = checkpoint::open(data, Some(CHECKPOINT_ORIGIN), &keys) {
        // A checkpoint that verified prints back to the text that was signed.
        let body = opened.checkpoint.body();
        assert!(Checkpoint::parse(body.as_bytes()).is_ok());
        let _ = checkpoint::merge_cosignatures(data, data, &keys);
    }
    let _ = Checkpoint::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = VerifierKey::parse(text.trim_end());
        let _ = Inclusion::parse_tlog_proof(text);
    }
}

/// The audit export reader: JSONL entries (as `vvctl audit export` writes them), then after a
/// line `--` the signed checkpoint notes to check against them (one per `~~`-separated part).
pub fn audit_export(data: &[u8]) {
    let (entries, notes) = match find(data, b"\n--\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, &[][..]),
    };
    let checkpoints: Vec<CheckpointInput> = if notes.is_empty() {
        Vec::new()
    } else {
        notes
            .split(|&b| b == b'~')
            .filter(|n| !n.is_empty())
            .take(16)
            .map(|n| CheckpointInput {
                note: n.to_vec(),
                source: "fuzz",
            })
            .collect()
    };
    let sizes: Vec<u64> = checkpoints
        .iter()
        .filter_map(|c| signed_note::Note::from_bytes(&c.note).ok())
        .filter_map(|n| Checkpoint::parse(n.text()).ok())
        .map(|c| c.size)
        .collect();
    let lines = entries
        .split(|&b| b == b'\n')
        .map(|l| Ok::<_, std::convert::Infallible>(l.to_vec()));
    for upstream in [false, true] {
        let opts = VerifyOptions {
            upstream,
            ..VerifyOptions::default()
        };
        let Ok(found) = verify_entries(lines.clone(), &opts, &sizes);
        let _ = found.verdict.to_json();
        let key = checkpoint_key();
        let keys = Keys::new(std::slice::from_ref(&key), &[]);
        let _ = verify_checkpoints(&found, &checkpoints, Some(CHECKPOINT_ORIGIN), &keys);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = crate::audit::query::start_of(&v);
        let _ = Inclusion::from_json(&v);
    }
}

/// The bodies of the other producer routes: a federation bundle (schema, then its
/// proof-of-origin string and signature check), an execution graph (model and size limits)
/// and a feedback query, each parsed from the same JSON document.
pub fn service_bodies(data: &[u8]) {
    use crate::schema::service::{
        graph_shape, parse_execution_graph, parse_federation, parse_feedback_query,
    };
    let mut tape = Tape::new();
    let Ok(doc) = tape.parse(data) else {
        return;
    };
    if let Ok(bundle) = parse_federation(&doc) {
        let mut msg = Vec::new();
        crate::federation::signed_string(&bundle, &mut msg);
        // Five fields joined by four separators.
        assert!(
            msg.iter().filter(|&&b| b == b'|').count() >= 4,
            "signed string"
        );
        let _ = crate::ingest::checks::parse_epoch(bundle.timestamp);
        let key = checkpoint_key().key;
        let _ = crate::federation::proof_of_origin(&bundle.signature, &msg, &key);
    }
    if let Ok(graph) = parse_execution_graph(&doc) {
        let _ = crate::ingest::checks::parse_epoch(graph.timestamp);
        if let Ok(shape) = graph_shape(&doc, graph.graph, 64, 64) {
            assert!(shape.nodes.is_none_or(|n| n <= 64), "nodes over the limit");
            assert!(shape.edges.is_none_or(|n| n <= 64), "edges over the limit");
        }
    }
    if let Ok(q) = parse_feedback_query(&doc) {
        let _ = crate::ingest::checks::parse_epoch(q.timestamp);
    }
}

/// A value read from the cluster's nonce bucket (written by any client of the bucket): it
/// parses or is refused with a reason, and what parses encodes back to itself.
pub fn kv_value(data: &[u8]) {
    match crate::cluster::value::parse(data) {
        Ok(v) => {
            let mut out = Vec::new();
            crate::cluster::value::encode(&v.record, &v.appliance, &mut out);
            let back = crate::cluster::value::parse(&out).expect("an encoded value parses");
            assert_eq!(back, v, "a bucket value changed in a round trip");
        }
        Err(reason) => assert!(!reason.is_empty(), "a refusal without a reason"),
    }
}

/// The tenant, key ids and root key the evidence seeds are sealed for.
pub const EVIDENCE_TENANT: &str = "10000000-0000-0000-0000-000000000001";
pub const EVIDENCE_KEK_ID: &str = "vv-evidence-kek-fuzz";
pub const EVIDENCE_V1_ROOT_ID: &str = "vv-evidence-root-v1";
pub const EVIDENCE_V1_ROOT: [u8; 32] = [b'A'; 32];

/// A KEK with a fixed key, through the trait the key stores implement.
pub struct FuzzKek;

impl FuzzKek {
    fn key() -> ring::aead::LessSafeKey {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[0x55; 32])
            .expect("a 32-byte AES key");
        ring::aead::LessSafeKey::new(unbound)
    }
}

impl vvgate_hsm::Kek for FuzzKek {
    fn seal_dek(
        &self,
        dek: &[u8; 32],
        aad: &[u8],
    ) -> Result<vvgate_hsm::SealedDek, vvgate_hsm::HsmError> {
        let iv = [0x66; 12];
        let ct = crate::evidence::seal_data(&[0x55; 32], iv, aad, dek);
        let ct = ct
            .try_into()
            .map_err(|_| vvgate_hsm::HsmError::AuthenticationFailed)?;
        Ok(vvgate_hsm::SealedDek { iv, ct })
    }

    fn open_dek(
        &self,
        sealed: &vvgate_hsm::SealedDek,
        aad: &[u8],
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, vvgate_hsm::HsmError> {
        let mut buf = sealed.ct;
        let plain = Self::key()
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(sealed.iv),
                ring::aead::Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| vvgate_hsm::HsmError::AuthenticationFailed)?;
        let dek: [u8; 32] = (&*plain)
            .try_into()
            .map_err(|_| vvgate_hsm::HsmError::AuthenticationFailed)?;
        Ok(zeroize::Zeroizing::new(dek))
    }
}

/// Evidence envelopes: the input as an envelope (v2 with the fuzzing KEK, v1 with the fuzzing
/// root key, for the tenant it names, so seeds reach decryption); and the input as a blob,
/// which must open to itself after sealing.
pub fn evidence(data: &[u8]) {
    use crate::evidence::{open, open_v1, seal};
    if let Ok(env) = serde_json::from_slice::<serde_json::Value>(data) {
        let tenant = env
            .get("tenant_id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(EVIDENCE_TENANT);
        let kek: std::sync::Arc<dyn vvgate_hsm::Kek> = std::sync::Arc::new(FuzzKek);
        let blob = env.get("blob_id").and_then(serde_json::Value::as_str);
        let _ = open(&env, tenant, blob, &|id| {
            (id == EVIDENCE_KEK_ID).then(|| std::sync::Arc::clone(&kek))
        });
        let _ = open_v1(&env, tenant, EVIDENCE_V1_ROOT_ID, &EVIDENCE_V1_ROOT);
    }
    let mut counter = 0u8;
    let mut random = |out: &mut [u8]| {
        counter = counter.wrapping_add(1);
        out.fill(counter);
    };
    if let Ok(env) = seal(
        &FuzzKek,
        EVIDENCE_KEK_ID,
        EVIDENCE_TENANT,
        "blob-1",
        data,
        &mut random,
    ) {
        let plain = open(&env, EVIDENCE_TENANT, Some("blob-1"), &|id| {
            (id == EVIDENCE_KEK_ID)
                .then(|| std::sync::Arc::new(FuzzKek) as std::sync::Arc<dyn vvgate_hsm::Kek>)
        })
        .expect("a sealed blob opens");
        assert_eq!(&plain[..], data, "a blob changed in a seal/open round trip");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests;
