//! Stage 3: the check chain of `POST /internal/v1/telemetry` (CONTRACT.md §3), in the
//! contract's order; the first failure is the answer.
//!
//! Steps 1–14 (`checks`) are pure. Step 15 claims the nonce key on the event loop (a second
//! request with the same key waits, `replay`) and looks it up in redb. Steps 16–28 run on the
//! parsed body (`schema`) and build the ingest envelope as they go. Steps 29–31 hand the
//! decision to the storage thread (`commit`): nonce, envelope and audit entry in one durable
//! transaction. Every outcome, accepted or not, is audited before it is answered.

pub(crate) mod checks;
pub mod rate;
mod reject;
pub mod replay;
pub mod verify;

use std::sync::atomic::Ordering::SeqCst;

use vvgate_storage::{nonce_key, EnvelopeKind, NonceRecord, NonceSpace, Route};

use crate::audit::{write_details, Detail, ACTOR_GATEWAY};
use crate::cluster;
use crate::commit::{Action, AuditItem, Envelope, Op, Outcome, SubmitError};
use crate::config::SignatureVerification;
use crate::envelope::{self, DeadLetterTrace};
use crate::gateway::Gateway;
use crate::http::conn::ConnInfo;
use crate::http::{error_body, is_identity_encoding, is_json_content_type, Head, Response, Span};
use crate::ids::{self, UuidText};
use crate::json::{Cjson, Tape};
use crate::schema::{self, PayloadError, PayloadPolicy, SchemaVersion};
use crate::time;

pub use checks::parse_epoch;
pub use reject::Rejection;

/// Scratch buffers reused by every request on one connection.
#[derive(Default)]
pub struct ConnState {
    pub(crate) tape: Tape,
    scratch: schema::Scratch,
    /// The signed message of the request being checked (scratch).
    pub(crate) msg: Vec<u8>,
    /// The producer key that verified this connection's last request (tried first).
    key_hint: Option<[u8; 32]>,
    /// The audit `key_id` (hex SHA-256) of the last producer key an accepted request used.
    key_id: Option<([u8; 32], ids::HexHash)>,
    payload: Vec<u8>,
    trace: Vec<u8>,
    normalised: Vec<u8>,
}

impl ConnState {
    /// The audit `key_id` of producer key `key`: hashed once per connection and key.
    fn key_id(&mut self, key: &[u8; 32]) -> ids::HexHash {
        match &self.key_id {
            Some((k, id)) if k == key => id.clone(),
            _ => {
                let id = ids::hex32(&ids::sha256(key));
                self.key_id = Some((*key, id.clone()));
                id
            }
        }
    }
}

/// Who a decision is about, for its audit entry and response headers.
pub struct Ctx<'b> {
    pub request_id: [u8; 16],
    pub request_id_text: UuidText,
    /// The claimed `X-Service-Identity`, if any (recorded even when refused).
    pub identity: Option<&'b str>,
    pub route: Option<Route>,
}

impl<'b> Ctx<'b> {
    pub fn new(gw: &Gateway, head: &Head, buf: &'b [u8], route: Option<Route>) -> Self {
        let request_id = gw.new_request_id();
        Self {
            request_id,
            request_id_text: ids::uuid_text(&request_id),
            identity: head
                .service_identity
                .map(|s| s.str(buf))
                .filter(|s| !s.is_empty())
                .map(|s| &s[..s.len().min(256)]),
            route,
        }
    }
}

/// A refusal with what it writes besides the audit entry.
pub struct Refusal {
    pub rejection: Rejection,
    pub dlq: Option<Box<Envelope>>,
    pub retry_after: Option<u64>,
    pub original: Option<[u8; 16]>,
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Self {
            rejection,
            dlq: None,
            retry_after: None,
            original: None,
        }
    }
}

/// Checks M1–M3 (§3.1): media type, non-empty body, size. Header-only, before the body is read.
pub fn telemetry_before_body(gw: &Gateway, head: &Head, buf: &[u8]) -> Option<Rejection> {
    media_and_size(
        gw,
        head,
        buf,
        [
            Rejection::UnsupportedMediaType,
            Rejection::EmptyBody,
            Rejection::BodyTooLarge,
        ],
    )
}

/// M1–M3 of the federation and cognitive routes, with the generic reasons of §2.4.
pub fn endpoint_before_body(gw: &Gateway, head: &Head, buf: &[u8]) -> Option<Rejection> {
    media_and_size(
        gw,
        head,
        buf,
        [
            Rejection::EndpointUnsupportedMediaType,
            Rejection::PayloadRequired,
            Rejection::PayloadTooLarge,
        ],
    )
}

fn media_and_size(
    gw: &Gateway,
    head: &Head,
    buf: &[u8],
    [media, empty, large]: [Rejection; 3],
) -> Option<Rejection> {
    let ct_ok = head
        .content_type
        .is_some_and(|s| is_json_content_type(s.get(buf)));
    if !ct_ok || !is_identity_encoding(head.content_encoding.map(|s| s.get(buf))) {
        return Some(media);
    }
    match head.content_length {
        None | Some(0) => Some(empty),
        Some(n) if n > u64::try_from(gw.cfg().limits.max_body_bytes).unwrap_or(u64::MAX) => {
            Some(large)
        }
        Some(_) => None,
    }
}

/// The accepted event, ready to commit.
struct Accepted {
    envelope: Vec<u8>,
    integrity_hash: ids::HexHash,
    message_id: UuidText,
    details: Vec<u8>,
}

/// `POST /internal/v1/telemetry` with its body read: steps 1–31.
pub async fn telemetry(
    gw: &Gateway,
    st: &mut ConnState,
    conn: &ConnInfo,
    head: &Head,
    buf: &[u8],
    span: Span,
    out: &mut Vec<u8>,
) -> Response {
    let ctx = Ctx::new(gw, head, buf, Some(Route::Telemetry));
    let body = span.get(buf);
    let cfg = gw.cfg();
    let now = gw.clock.now();
    let secs = now.secs();

    // Steps 1–14.
    let identity = match checks::identity(head, buf, conn.fingerprint, &cfg.identities) {
        Ok(i) => i,
        Err(r) => return gw.refuse(&ctx, r.into(), out).await,
    };
    let (mut signed, sig) =
        match checks::signed_headers(head, buf, secs, cfg.allowed_clock_skew_seconds) {
            Ok(v) => v,
            Err(r) => return gw.refuse(&ctx, r.into(), out).await,
        };
    if let Err(r) = verify_signature(gw, st, &mut signed, sig, body, secs).await {
        return gw.refuse(&ctx, r.into(), out).await;
    }

    // Step 15: one request per nonce key at a time; then look it up.
    let key = nonce_key(signed.ts, signed.nonce);
    let _claim = gw.inflight.claim(key).await;
    let body_sha256 = ids::sha256(body);
    match gw.store.nonce_get(NonceSpace::Telemetry, &key) {
        // Read after the lookup: a sweep raises the horizon before its deletions commit.
        Ok(None) if signed.ts < gw.committer.shared.nonce_horizon.load(SeqCst) => {
            return gw
                .refuse(&ctx, Rejection::TimestampOutsideSkew.into(), out)
                .await;
        }
        Ok(None) => {}
        Ok(Some(rec)) => return gw.resend(&ctx, rec, body_sha256, out).await,
        Err(e) => {
            tracing::error!(error = %e, "nonce lookup failed");
            return gw
                .refuse(&ctx, Rejection::NonceStoreUnavailable.into(), out)
                .await;
        }
    }
    // Cluster mode: a claim of ours left open, then the shared bucket.
    let kv_key = match &gw.cluster {
        None => None,
        Some(b) => {
            let kv_key = cluster::value::kv_key(signed.ts_text, signed.nonce);
            let answers = cluster::settle::TELEMETRY;
            match cluster::settle::check(gw, b, &ctx, key, kv_key, body_sha256, answers, out).await
            {
                Ok(kv_key) => Some(kv_key),
                Err(r) => return r,
            }
        }
    };

    // Steps 16–28.
    let accepted = match evaluate_body(
        gw,
        st,
        &ctx,
        identity,
        &signed,
        head,
        buf,
        body,
        &body_sha256,
        now,
    ) {
        Ok(a) => a,
        Err(refusal) => return gw.refuse(&ctx, refusal, out).await,
    };

    // Steps 29–31.
    let body_len = u64::try_from(accepted.envelope.len()).unwrap_or(u64::MAX);
    if !gw.spool_has_room(body_len) {
        return gw.refuse(&ctx, Rejection::SpoolFull.into(), out).await;
    }
    if gw.committer.room() == 0 {
        return gw.refuse(&ctx, Rejection::Overloaded.into(), out).await;
    }
    let record = NonceRecord::V1 {
        body_sha256,
        request_id: ctx.request_id,
        route: Route::Telemetry,
        accepted_at: secs,
    };
    let envelope = Envelope {
        kind: EnvelopeKind::Ingest,
        msg_id: gw.committer.shared.recycled.msg_id(&accepted.message_id),
        integrity_hash: accepted.integrity_hash,
        body: accepted.envelope,
    };
    if let (Some(b), Some(kv_key)) = (&gw.cluster, kv_key) {
        let a = cluster::settle::Acceptance {
            key,
            kv_key,
            record,
            envelope,
            details: accepted.details,
        };
        gw.reserve_spool(body_len);
        let r = cluster::settle::accept(gw, b, &ctx, a, out).await;
        gw.release_spool(body_len);
        return r;
    }
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action: Action::Accept {
            space: NonceSpace::Telemetry,
            key,
            record,
            spool: Some(envelope),
        },
        audit: AuditItem {
            actor: ACTOR_GATEWAY,
            event_type: "telemetry.accepted",
            details: accepted.details,
        },
        reply: None,
    };
    gw.reserve_spool(body_len);
    let outcome = gw.committer.commit(op).await;
    gw.release_spool(body_len);
    committed_answer(
        gw,
        &ctx,
        outcome,
        Rejection::NonceReused,
        202,
        |out| accepted_body(out, &ctx.request_id_text),
        out,
    )
}

/// Steps 13–14 through the gateway's verifier (batched or single, `signature_verification`).
async fn verify_signature(
    gw: &Gateway,
    st: &mut ConnState,
    signed: &mut checks::Signed<'_>,
    sig_b64: &str,
    body: &[u8],
    now: u64,
) -> Result<(), Rejection> {
    let sig = checks::signature_message(signed, sig_b64, body, &mut st.msg)?;
    let cfg = gw.cfg();
    let mut keys = verify::Candidates::new();
    let mut hinted = false;
    for k in cfg.producer_keys.valid_at(now) {
        if Some(*k) == st.key_hint {
            hinted = true;
            let _ = keys.insert(0, *k);
        } else {
            let _ = keys.push(*k);
        }
    }
    // During a key rotation overlap, a connection's first request finds its key singly; its
    // next ones join batches with that key.
    let mode = if keys.len() > 1 && !hinted {
        SignatureVerification::Single
    } else {
        cfg.signature_verification
    };
    let key = gw
        .verifier
        .verify(mode, keys, &st.msg, &sig)
        .await
        .ok_or(Rejection::SignatureInvalid)?;
    st.key_hint = Some(key);
    signed.key = key;
    Ok(())
}

fn dead_letter(
    gw: &Gateway,
    st: &mut ConnState,
    rejection: Rejection,
    trace: DeadLetterTrace<'_>,
    body: &[u8],
) -> Refusal {
    let (code, _) = rejection.dlq().unwrap_or(("invalid_json", "json_decode"));
    st.payload.clear();
    envelope::write_dead_letter_payload(&mut st.payload, code, rejection.reason(true), body);
    st.trace.clear();
    envelope::write_dead_letter_trace(&mut st.trace, &trace);
    let message_id = ids::uuid_text(&gw.new_request_id());
    let created_at = time::iso(gw.clock.now());
    let mut env = Vec::with_capacity(st.payload.len() + st.trace.len() + 160);
    let integrity_hash = envelope::write(
        &mut env,
        "dead_letter",
        &message_id,
        &created_at,
        &st.payload,
        &st.trace,
    );
    Refusal {
        rejection,
        dlq: Some(Box::new(Envelope {
            kind: EnvelopeKind::DeadLetter,
            msg_id: envelope::dead_letter_msg_id(&st.msg),
            integrity_hash,
            body: env,
        })),
        retry_after: None,
        original: None,
    }
}

/// Steps 16–28 on the parsed body; builds the ingest envelope and the accepted audit entry.
#[allow(clippy::too_many_arguments)] // the request's parts, borrowed separately from its state
fn evaluate_body(
    gw: &Gateway,
    st: &mut ConnState,
    ctx: &Ctx<'_>,
    identity: &str,
    signed: &checks::Signed<'_>,
    head: &Head,
    buf: &[u8],
    body: &[u8],
    body_sha256: &[u8; 32],
    now: time::Micros,
) -> Result<Accepted, Refusal> {
    let cfg = gw.cfg();
    let mut tape = std::mem::take(&mut st.tape);
    let result = (|| {
        // 16.
        let doc = match tape.parse(body) {
            Ok(d) => d,
            Err(_) => {
                return Err(dead_letter(
                    gw,
                    st,
                    Rejection::InvalidJson,
                    DeadLetterTrace::JsonDecode,
                    body,
                ))
            }
        };
        // 17.
        let req = match schema::parse_request(&doc) {
            Ok(r) => r,
            Err(v) => {
                let errors = [v];
                return Err(dead_letter(
                    gw,
                    st,
                    Rejection::SchemaInvalid,
                    DeadLetterTrace::Errors("schema_validation", &errors),
                    body,
                ));
            }
        };
        // 18–19.
        if req.timestamp != signed.ts_text {
            return Err(Rejection::BodyTimestampMismatch.into());
        }
        if req.nonce != signed.nonce {
            return Err(Rejection::BodyNonceMismatch.into());
        }
        // 20–22: the normalised payload, written straight into the envelope payload.
        st.normalised.clear();
        let policy = PayloadPolicy {
            catalogue: gw.catalogue.as_deref(),
        };
        let info = match schema::normalise_payload(
            &doc,
            req.payload,
            policy,
            &mut st.scratch,
            &mut st.normalised,
        ) {
            Ok(info) => info,
            Err(PayloadError::Canonical(v)) => {
                let errors = [v];
                return Err(dead_letter(
                    gw,
                    st,
                    Rejection::CanonicalSchemaInvalid,
                    DeadLetterTrace::Errors("canonical_schema", &errors),
                    body,
                ));
            }
            Err(PayloadError::ContractV2NotObject) => {
                return Err(dead_letter(
                    gw,
                    st,
                    Rejection::ContractV2NotObject,
                    DeadLetterTrace::Message(
                        "contract_v2_validation",
                        schema::CONTRACT_V2_NOT_OBJECT,
                    ),
                    body,
                ))
            }
            Err(PayloadError::ContractV2(v)) => {
                let errors = [v];
                return Err(dead_letter(
                    gw,
                    st,
                    Rejection::ContractV2Invalid,
                    DeadLetterTrace::Errors("contract_v2_schema", &errors),
                    body,
                ));
            }
        };
        // 23.
        let sm = &req.signed_metadata;
        if sm.tenant_id != req.tenant_id
            || sm.operator_id != req.operator_id
            || sm.campaign_id != req.campaign_id
        {
            return Err(Rejection::SignedMetadataMismatch.into());
        }
        // 24–25.
        match cfg.operator_tenant_map.get(req.operator_id.as_ref()) {
            None => return Err(Rejection::OperatorNotMapped.into()),
            Some(t) if *t != req.tenant_id => return Err(Rejection::TenantMappingViolation.into()),
            Some(_) => {}
        }
        // 26–27.
        if cfg.enforce_schema_version {
            match schema::schema_version(&doc, req.payload) {
                SchemaVersion::Missing => return Err(Rejection::SchemaVersionRequired.into()),
                SchemaVersion::Value(v) if v.is_empty() => {
                    return Err(Rejection::SchemaVersionRequired.into())
                }
                SchemaVersion::Value(v) if cfg.allowed_schema_versions.iter().any(|a| *a == v) => {}
                SchemaVersion::Value(_) | SchemaVersion::NotString => {
                    return Err(Rejection::SchemaVersionNotAllowed.into())
                }
            }
        }
        // 28.
        if let Err(retry) =
            gw.rate
                .borrow_mut()
                .hit(&req.operator_id, now.secs(), cfg.rate_limit_per_minute)
        {
            return Err(Refusal {
                retry_after: Some(retry),
                ..Rejection::RateLimited.into()
            });
        }

        // The ingest envelope (§5.3).
        st.payload.clear();
        envelope::write_ingest_payload(&mut st.payload, &req, &st.normalised);
        st.trace.clear();
        envelope::write_ingest_trace(&mut st.trace, &req);
        let message_id = ids::uuid_text(&gw.new_request_id());
        let created_at = time::iso(now);
        // Buffers come back from the storage thread once their decision is committed.
        let recycled = &gw.committer.shared.recycled;
        let mut env = recycled.body(st.payload.len() + st.trace.len() + 192);
        let integrity_hash = envelope::write(
            &mut env,
            "ingest",
            &message_id,
            &created_at,
            &st.payload,
            &st.trace,
        );

        let key_id = st.key_id(&signed.key);
        let body_hash = ids::hex32(body_sha256);
        let mut details = recycled.small(640);
        let mut fields = heapless::Vec::<(&str, Detail<'_>), 13>::new();
        let _ = fields.extend_from_slice(&[
            ("request_id", Detail::Str(&ctx.request_id_text)),
            ("tenant_id", Detail::Str(&req.tenant_id)),
            ("operator_id", Detail::Str(&req.operator_id)),
            ("campaign_id", Detail::Str(&req.campaign_id)),
            ("service_identity", Detail::Str(identity)),
            ("key_id", Detail::Str(&key_id)),
            (
                "signed_timestamp",
                Detail::Int(i64::try_from(signed.ts).unwrap_or(i64::MAX)),
            ),
            ("nonce", Detail::Str(signed.nonce)),
            ("body_sha256", Detail::Str(&body_hash)),
            ("event_id", Detail::Str(&info.event_id)),
            ("message_id", Detail::Str(&message_id)),
        ]);
        if let Some(k) = head.idempotency_key {
            let k = k.str(buf);
            let _ = fields.push(("idempotency_key", Detail::Str(&k[..k.len().min(256)])));
        }
        write_details(&mut details, &mut fields);
        drop(fields);
        Ok(Accepted {
            envelope: env,
            integrity_hash,
            message_id,
            details,
        })
    })();
    st.tape = tape;
    result
}

/// How a route answers an identical re-send with `idempotent_retry = true` (CONTRACT.md
/// §3.6): the status, and a writer of the original success body given the original request
/// id. `None`: the route always answers the plain replay refusal.
pub type IdempotentAnswer<'f> = Option<(u16, &'f dyn Fn(&mut Vec<u8>, &str))>;

/// Step 15 found the nonce: an identical re-send or a plain replay, answered with `replay`
/// (the route's 409) as §3.6 says ([`Gateway::resend`] is telemetry's case).
pub async fn resend_other(
    gw: &Gateway,
    ctx: &Ctx<'_>,
    rec: NonceRecord,
    body_sha256: [u8; 32],
    replay: Rejection,
    idempotent: IdempotentAnswer<'_>,
    out: &mut Vec<u8>,
) -> Response {
    let NonceRecord::V1 {
        body_sha256: recorded,
        request_id: original,
        route,
        ..
    } = rec;
    let identical = Some(route) == ctx.route && recorded == body_sha256;
    let Some((status, write_body)) = idempotent.filter(|_| identical) else {
        return gw.refuse(ctx, replay.into(), out).await;
    };
    if !gw.cfg().idempotent_retry {
        let f = Refusal {
            original: Some(original),
            ..replay.into()
        };
        return gw.refuse(ctx, f, out).await;
    }
    let original_text = ids::uuid_text(&original);
    let mut details = Vec::with_capacity(160);
    write_details(
        &mut details,
        &mut [
            ("request_id", Detail::Str(&ctx.request_id_text)),
            ("status_code", Detail::Int(i64::from(status))),
            ("original_request_id", Detail::Str(&original_text)),
        ],
    );
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action: Action::AuditOnly,
        audit: AuditItem {
            actor: ACTOR_GATEWAY,
            event_type: "telemetry.idempotent_replay",
            details,
        },
        reply: None,
    };
    match gw.committer.commit(op).await {
        Ok(Outcome::Committed { .. }) => {
            write_body(out, &original_text);
            gw.metrics.count(status, "idempotent_replay");
            let mut r = Response::new(status);
            r.request_id = Some(ctx.request_id_text.clone());
            r.idempotent_replay = true;
            r
        }
        Err(SubmitError::Full) => gw.answer(ctx, Rejection::Overloaded.into(), out),
        _ => gw.answer(ctx, Rejection::PersistenceFailed.into(), out),
    }
}

/// Answer the outcome of an accepting commit (any route): `ok` writes
/// the success body once the decision is on disk; the rest become the contract's 409/503.
pub fn committed_answer(
    gw: &Gateway,
    ctx: &Ctx<'_>,
    outcome: Result<Outcome, SubmitError>,
    replay: Rejection,
    status: u16,
    ok: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) -> Response {
    match outcome {
        Ok(Outcome::Committed { .. }) => {
            out.clear();
            ok(out);
            gw.metrics.count(status, "accepted");
            let mut r = Response::new(status);
            r.request_id = Some(ctx.request_id_text.clone());
            r
        }
        // The storage thread already audited these.
        Ok(Outcome::Replay(_)) => gw.answer(ctx, replay.into(), out),
        Ok(Outcome::SpoolFull) => gw.answer(ctx, Rejection::SpoolFull.into(), out),
        Ok(Outcome::Failed) | Err(SubmitError::Closed) => {
            gw.answer(ctx, Rejection::PersistenceFailed.into(), out)
        }
        Err(SubmitError::Full) => gw.answer(ctx, Rejection::Overloaded.into(), out),
    }
}

/// Telemetry's success body, `{"accepted":true,"request_id":"<id>"}` (also the idempotent
/// answer to an identical re-send).
pub fn accepted_body(out: &mut Vec<u8>, request_id: &str) {
    out.extend_from_slice(b"{\"accepted\":true,\"request_id\":\"");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Write the error body of a refusal (with `original` for an identical re-send).
pub fn refusal_body(out: &mut Vec<u8>, reason: &str, original: Option<&UuidText>) {
    match original {
        None => error_body(out, reason),
        Some(id) => {
            let mut w = Cjson::new(out);
            w.begin_obj()
                .key("detail")
                .str(reason)
                .key("original")
                .begin_obj()
                .key("accepted")
                .bool(true)
                .key("request_id")
                .str(id)
                .end_obj()
                .end_obj();
        }
    }
}

/// The body of `GET /healthz` when healthy (CONTRACT.md §2.5).
pub fn health_body(gw: &Gateway, out: &mut Vec<u8>) {
    let cfg = gw.cfg();
    let mut w = Cjson::new(out);
    w.begin_obj()
        .key("status")
        .str("healthy")
        .key("require_mtls")
        .bool(true)
        .key("trusted_identities")
        .begin_arr();
    for name in cfg.identities.pins.keys() {
        w.str(name);
    }
    w.end_arr()
        .key("require_payload_signature")
        .bool(true)
        .key("enforce_schema_version")
        .bool(cfg.enforce_schema_version)
        .key("allowed_schema_version")
        .str(&cfg.allowed_schema_version)
        .key("allowed_schema_versions")
        .begin_arr();
    for v in &cfg.allowed_schema_versions {
        w.str(v);
    }
    w.end_arr()
        .key("nonce_ttl_seconds")
        .u64(cfg.nonce_ttl_seconds)
        .key("nonce_backend")
        .str(cfg.nonce_backend.as_str())
        .key("rate_limit_per_minute")
        .u64(cfg.rate_limit_per_minute)
        .key("queue_backend")
        .str(cfg.queue_backend.as_str())
        .end_obj();
}

#[cfg(test)]
mod tests;
