//! The cognitive routes (CONTRACT.md §8): execution-graph metadata in, signed feedback out.
//!
//! Both are signed like telemetry: M1–M3 with the generic reasons, identity steps 1–6, the
//! signed headers and the Ed25519 signature over `"{ts}.{nonce}." + body` (steps 7–14), and
//! step 15 in the telemetry nonce namespace (shared with telemetry). Then each route's own
//! checks, in the contract's order, and one durable commit of the nonce with the audit entry
//! before the answer.
//!
//! Graph metadata is stored in redb under its `tenant_id` (the newest
//! `graph_retention_per_tenant` per tenant). A feedback query reads exactly its own tenant's
//! key range, and the tenant must be the one its operator is mapped to: a tenant never sees
//! another's records. The response is signed with the feedback key from the key store over
//! `{tenant_id}|{signed_at}|{nonce}|{schema_version}|{kid}|{CJSON of data}`.

use std::sync::Arc;

use base64::Engine;
use vvgate_hsm::RecordSigner;
use vvgate_storage::{nonce_key, Claim, GraphRecord, NonceRecord, NonceSpace, Route};

use crate::audit::{write_details, Detail, ACTOR_GATEWAY};
use crate::cluster::{self, settle::Answers};
use crate::commit::{Action, AuditItem, Op};
use crate::gateway::Gateway;
use crate::http::conn::ConnInfo;
use crate::http::{Head, Response, Span};
use crate::ids;
use crate::ingest::replay::Claim as InFlightClaim;
use crate::ingest::{self, checks, ConnState, Ctx, Rejection};
use crate::json::{Cjson, Doc, Tape};
use crate::schema::service::{
    graph_shape, parse_execution_graph, parse_feedback_query, GraphError,
};

/// The schema version a graph must carry when `enforce_schema_version` is on.
pub const GRAPH_SCHEMA_VERSION: &str = "execution.graph.v1";
/// `schema_version` of a feedback response.
pub const RESPONSE_SCHEMA_VERSION: &str = "feedback.response.v1";
/// `schema_version` of each adjustment.
pub const ADJUSTMENT_SCHEMA_VERSION: &str = "feedback.adjustment.v1";
/// Nodes from which a graph counts as high-complexity (`tighten`).
const TIGHTEN_NODES: u32 = 8;
const TTL_SECONDS: u64 = 1800;

/// The active feedback signing key: its id and the key store's signer.
#[derive(Clone)]
pub struct FeedbackKey {
    pub kid: String,
    pub signer: Arc<dyn RecordSigner>,
}

impl std::fmt::Debug for FeedbackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What steps 1–15 hand to a cognitive route.
struct Verified<'b> {
    signed: checks::Signed<'b>,
    key: [u8; 24],
    body_sha256: [u8; 32],
    /// Cluster mode: the nonce's key in the shared bucket, free there.
    kv_key: Option<String>,
}

/// Steps 1–15 shared by both cognitive routes: identity, signed headers, signature, then the
/// nonce in telemetry's namespace (locally, and in cluster mode in a claim left open and in
/// the shared bucket), answering a replay or a re-send with `answers`. The caller holds
/// `hold` (one request per nonce key at a time) until its own answer. `Err` is the answer
/// already given.
#[allow(clippy::too_many_arguments)] // the request's parts, the route's answers, the hold
async fn admit<'g, 'b>(
    gw: &'g Gateway,
    st: &mut ConnState,
    conn: &ConnInfo,
    head: &Head,
    buf: &'b [u8],
    body: &[u8],
    now: u64,
    ctx: &Ctx<'_>,
    answers: Answers<'_>,
    hold: &mut Option<InFlightClaim<'g>>,
    out: &mut Vec<u8>,
) -> Result<Verified<'b>, Response> {
    let cfg = gw.cfg();
    let verified = (|| -> Result<_, Rejection> {
        checks::identity(head, buf, conn.fingerprint, &cfg.identities)?;
        let (mut signed, sig) =
            checks::signed_headers(head, buf, now, cfg.allowed_clock_skew_seconds)?;
        checks::verify_signature(&mut signed, sig, body, &cfg.producer_keys, now, &mut st.msg)?;
        Ok(signed)
    })();
    let signed = match verified {
        Ok(s) => s,
        Err(r) => return Err(gw.refuse(ctx, r.into(), out).await),
    };
    let key = nonce_key(signed.ts, signed.nonce);
    *hold = Some(gw.inflight.claim(key).await);
    let body_sha256 = ids::sha256(body);
    match gw.store.nonce_get(NonceSpace::Telemetry, &key) {
        Ok(None) => {}
        Ok(Some(rec)) => {
            let idempotent = answers.resend_succeeds.then_some(answers.success);
            return Err(ingest::resend_other(
                gw,
                ctx,
                rec,
                body_sha256,
                answers.replay,
                idempotent,
                out,
            )
            .await);
        }
        Err(e) => {
            tracing::error!(error = %e, "nonce lookup failed");
            return Err(gw
                .refuse(ctx, Rejection::NonceStoreUnavailable.into(), out)
                .await);
        }
    }
    let kv_key = match &gw.cluster {
        None => None,
        Some(b) => {
            let kv_key = cluster::value::kv_key(signed.ts_text, signed.nonce);
            Some(cluster::settle::check(gw, b, ctx, key, kv_key, body_sha256, answers, out).await?)
        }
    };
    Ok(Verified {
        signed,
        key,
        body_sha256,
        kv_key,
    })
}

/// Body timestamp and nonce against the signed headers (§3.1 steps 18–19).
fn body_matches_headers(
    signed: &checks::Signed<'_>,
    timestamp: &str,
    nonce: &str,
) -> Result<(), Rejection> {
    if timestamp != signed.ts_text {
        return Err(Rejection::BodyTimestampMismatch);
    }
    if nonce != signed.nonce {
        return Err(Rejection::BodyNonceMismatch);
    }
    Ok(())
}

/// The operator is mapped, to exactly this tenant (§3.1 steps 24–25).
fn operator_owns_tenant(gw: &Gateway, operator_id: &str, tenant_id: &str) -> Result<(), Rejection> {
    match gw.cfg().operator_tenant_map.get(operator_id) {
        None => Err(Rejection::OperatorNotMapped),
        Some(t) if t != tenant_id => Err(Rejection::TenantMappingViolation),
        Some(_) => Ok(()),
    }
}

fn graph_success_body(out: &mut Vec<u8>, request_id: &str) {
    Cjson::new(out)
        .begin_obj()
        .key("request_id")
        .str(request_id)
        .key("status")
        .str("accepted")
        .key("data")
        .begin_obj()
        .key("graph_synced")
        .bool(true)
        .end_obj()
        .key("errors")
        .begin_arr()
        .end_arr()
        .end_obj();
}

/// `POST /internal/v1/cognitive/execution-graph` with its body read.
pub async fn execution_graph(
    gw: &Gateway,
    st: &mut ConnState,
    conn: &ConnInfo,
    head: &Head,
    buf: &[u8],
    span: Span,
    out: &mut Vec<u8>,
) -> Response {
    let ctx = Ctx::new(gw, head, buf, Some(Route::ExecutionGraph));
    let body = span.get(buf);
    let now = gw.clock.now().secs();
    let answers = Answers::shared_nonces((202, &graph_success_body), true);
    let mut hold = None;
    let v = match admit(
        gw, st, conn, head, buf, body, now, &ctx, answers, &mut hold, out,
    )
    .await
    {
        Ok(v) => v,
        Err(r) => return r,
    };

    let mut tape = std::mem::take(&mut st.tape);
    let decided = check_graph(gw, &mut tape, body, &v, &ctx, now);
    st.tape = tape;
    let (tenant_id, graph, details) = match decided {
        Ok(x) => x,
        Err(f) => return gw.refuse(&ctx, f, out).await,
    };
    if gw.committer.room() == 0 {
        return gw.refuse(&ctx, Rejection::Overloaded.into(), out).await;
    }
    let record = NonceRecord::V1 {
        body_sha256: v.body_sha256,
        request_id: ctx.request_id,
        route: Route::ExecutionGraph,
        accepted_at: now,
    };
    let retention = u64::try_from(gw.cfg().graph.retention_per_tenant).unwrap_or(u64::MAX);
    if let (Some(b), Some(kv_key)) = (&gw.cluster, &v.kv_key) {
        let kv_value = cluster::settle::kv_value(b, &record);
        let claim = Claim::Graph {
            kv_key,
            kv_value: &kv_value,
            record,
            tenant_id: &tenant_id,
            graph,
            retention,
            audit_details: &details,
        };
        return cluster::settle::accept_claim(gw, b, &ctx, v.key, &claim, answers, out).await;
    }
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action: Action::StoreGraph {
            key: v.key,
            record,
            tenant_id,
            graph,
            retention,
            claimed: false,
        },
        audit: AuditItem {
            actor: ACTOR_GATEWAY,
            event_type: "cognitive.graph.accepted",
            details,
        },
        reply: None,
    };
    let outcome = gw.committer.commit(op).await;
    ingest::committed_answer(
        gw,
        &ctx,
        outcome,
        Rejection::NonceReused,
        202,
        |o| graph_success_body(o, &ctx.request_id_text),
        out,
    )
}

/// The execution-graph checks after step 15 (CONTRACT.md §8.1), in order. Returns the tenant,
/// the record to store and the accepted audit details.
fn check_graph(
    gw: &Gateway,
    tape: &mut Tape,
    body: &[u8],
    v: &Verified<'_>,
    ctx: &Ctx<'_>,
    now: u64,
) -> Result<(String, GraphRecord, Vec<u8>), ingest::Refusal> {
    let cfg = gw.cfg();
    let doc: Doc<'_> = tape.parse(body).map_err(|_| Rejection::InvalidJson)?;
    let g = parse_execution_graph(&doc).map_err(|e| {
        tracing::debug!(violation = ?e, "execution graph refused");
        Rejection::GraphSchemaInvalid
    })?;
    let shape = match graph_shape(&doc, g.graph, cfg.graph.max_nodes, cfg.graph.max_edges) {
        Ok(s) => s,
        Err(GraphError::TooLarge) => return Err(Rejection::GraphTooLarge.into()),
        Err(GraphError::Schema(e)) => {
            tracing::debug!(violation = ?e, "execution graph refused");
            return Err(Rejection::GraphSchemaInvalid.into());
        }
    };
    body_matches_headers(&v.signed, g.timestamp, &g.nonce)?;
    if cfg.enforce_schema_version && g.schema_version != GRAPH_SCHEMA_VERSION {
        return Err(Rejection::GraphSchemaVersionNotAllowed.into());
    }
    operator_owns_tenant(gw, &g.operator_id, &g.tenant_id)?;
    let rate_key = format!("graph:{}", g.operator_id);
    if let Err(retry) = gw
        .rate
        .borrow_mut()
        .hit(&rate_key, now, cfg.rate_limit_per_minute)
    {
        return Err(ingest::Refusal {
            retry_after: Some(retry),
            ..Rejection::RateLimited.into()
        });
    }
    let fingerprint = g.execution_fingerprint.to_ascii_lowercase();
    let mut details = Vec::with_capacity(320);
    write_details(
        &mut details,
        &mut [
            ("request_id", Detail::Str(&ctx.request_id_text)),
            ("tenant_id", Detail::Str(&g.tenant_id)),
            ("operator_id", Detail::Str(&g.operator_id)),
            ("execution_fingerprint", Detail::Str(&fingerprint)),
            ("schema_version", Detail::Str(&g.schema_version)),
        ],
    );
    let count = |n: Option<usize>| n.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let record = GraphRecord::V1 {
        request_id: ctx.request_id,
        operator_id: g.operator_id.clone().into_owned(),
        execution_fingerprint: fingerprint,
        attestation_measurement_hash: g.attestation_measurement_hash.to_ascii_lowercase(),
        schema_version: g.schema_version.clone().into_owned(),
        target_urn: shape.target_urn,
        nodes: count(shape.nodes),
        edges: count(shape.edges),
        body_sha256: v.body_sha256,
        accepted_at: now,
    };
    Ok((g.tenant_id.into_owned(), record, details))
}

/// `POST /internal/v1/cognitive/feedback/adjustments/query` with its body read.
pub async fn query(
    gw: &Gateway,
    st: &mut ConnState,
    conn: &ConnInfo,
    head: &Head,
    buf: &[u8],
    span: Span,
    out: &mut Vec<u8>,
) -> Response {
    let ctx = Ctx::new(gw, head, buf, Some(Route::FeedbackQuery));
    let body = span.get(buf);
    let now = gw.clock.now().secs();
    // Its signed response is not stored: an identical re-send is a plain replay.
    let answers = Answers::shared_nonces((200, &|_: &mut Vec<u8>, _: &str| {}), false);
    let mut hold = None;
    let v = match admit(
        gw, st, conn, head, buf, body, now, &ctx, answers, &mut hold, out,
    )
    .await
    {
        Ok(v) => v,
        Err(r) => return r,
    };

    let mut tape = std::mem::take(&mut st.tape);
    let decided = (|| -> Result<(String, usize), Rejection> {
        let doc = tape.parse(body).map_err(|_| Rejection::InvalidJson)?;
        let q = parse_feedback_query(&doc).map_err(|e| {
            tracing::debug!(violation = ?e, "feedback query refused");
            Rejection::FeedbackSchemaInvalid
        })?;
        body_matches_headers(&v.signed, q.timestamp, &q.nonce)?;
        operator_owns_tenant(gw, &q.operator_id, &q.tenant_id)?;
        Ok((q.tenant_id.into_owned(), q.limit))
    })();
    st.tape = tape;
    let (tenant_id, limit) = match decided {
        Ok(x) => x,
        Err(r) => return gw.refuse(&ctx, r.into(), out).await,
    };
    let records = match gw.store.read().and_then(|r| r.graphs(&tenant_id, limit)) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "reading graph records failed");
            return gw
                .refuse(&ctx, Rejection::PersistenceFailed.into(), out)
                .await;
        }
    };

    // Signed after every other check; a missing or failing key fails this route alone.
    let Some(key) = gw.feedback_key.as_ref() else {
        return gw
            .refuse(&ctx, Rejection::FeedbackKeyUnavailable.into(), out)
            .await;
    };
    let mut nonce_bytes = [0u8; 18];
    gw.rng.borrow_mut().fill(&mut nonce_bytes);
    let response_nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce_bytes);
    let response = match Signing::new(&tenant_id, now, &response_nonce, &key.kid, &records)
        .sign(key.signer.as_ref())
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(kid = %key.kid, error = %e, "feedback signing failed");
            return gw
                .refuse(&ctx, Rejection::FeedbackKeyUnavailable.into(), out)
                .await;
        }
    };
    let mut details = Vec::with_capacity(320);
    write_details(
        &mut details,
        &mut [
            ("request_id", Detail::Str(&ctx.request_id_text)),
            ("tenant_id", Detail::Str(&tenant_id)),
            (
                "adjustment_count",
                Detail::Int(i64::try_from(records.len()).unwrap_or(i64::MAX)),
            ),
            ("kid", Detail::Str(&key.kid)),
            ("response_nonce", Detail::Str(&response_nonce)),
            (
                "signed_at",
                Detail::Int(i64::try_from(now).unwrap_or(i64::MAX)),
            ),
        ],
    );
    if gw.committer.room() == 0 {
        return gw.refuse(&ctx, Rejection::Overloaded.into(), out).await;
    }
    let record = NonceRecord::V1 {
        body_sha256: v.body_sha256,
        request_id: ctx.request_id,
        route: Route::FeedbackQuery,
        accepted_at: now,
    };
    // Cluster mode: the key first (nothing is kept that a crash before the commit could lose).
    if let (Some(b), Some(kv_key)) = (&gw.cluster, &v.kv_key) {
        if let Some(r) = cluster::settle::own_key(gw, b, &ctx, kv_key, &record, answers, out).await
        {
            return r;
        }
    }
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action: Action::Accept {
            space: NonceSpace::Telemetry,
            key: v.key,
            record,
            spool: None,
        },
        audit: AuditItem {
            actor: ACTOR_GATEWAY,
            event_type: "cognitive.feedback.issued",
            details,
        },
        reply: None,
    };
    let outcome = gw.committer.commit(op).await;
    ingest::committed_answer(
        gw,
        &ctx,
        outcome,
        Rejection::NonceReused,
        200,
        |o| response.write(o, &ctx.request_id_text),
        out,
    )
}

/// One adjustment item (CONTRACT.md §8.2), derived from one graph record.
struct Adjustment<'r> {
    tenant_id: &'r str,
    execution_fingerprint: &'r str,
    target_urn: &'r str,
    tighten: bool,
    timestamp: u64,
    attestation_measurement_hash: &'r str,
}

impl Adjustment<'_> {
    fn action(&self) -> (&'static str, &'static str, &'static str) {
        if self.tighten {
            (
                "tighten",
                "0.82",
                "high-complexity execution graph exceeded cognitive threshold",
            )
        } else {
            (
                "observe",
                "0.55",
                "graph telemetry received; monitoring baseline adjustments",
            )
        }
    }

    /// The response form: keys in the contract's order.
    fn write_ordered(&self, w: &mut Cjson<'_>) {
        let (action, confidence, rationale) = self.action();
        w.begin_obj()
            .key("tenant_id")
            .str(self.tenant_id)
            .key("execution_fingerprint")
            .str(self.execution_fingerprint)
            .key("target_urn")
            .str(self.target_urn)
            .key("action")
            .str(action)
            .key("confidence")
            .raw(confidence.as_bytes())
            .key("rationale")
            .str(rationale)
            .key("control")
            .str("execution")
            .key("ttl_seconds")
            .u64(TTL_SECONDS)
            .key("timestamp")
            .u64(self.timestamp)
            .key("schema_version")
            .str(ADJUSTMENT_SCHEMA_VERSION)
            .key("attestation_measurement_hash")
            .str(self.attestation_measurement_hash)
            .end_obj();
    }

    /// The signed form: CJSON, keys sorted.
    fn write_canonical(&self, w: &mut Cjson<'_>) {
        let (action, confidence, rationale) = self.action();
        w.begin_obj()
            .key("action")
            .str(action)
            .key("attestation_measurement_hash")
            .str(self.attestation_measurement_hash)
            .key("confidence")
            .raw(confidence.as_bytes())
            .key("control")
            .str("execution")
            .key("execution_fingerprint")
            .str(self.execution_fingerprint)
            .key("rationale")
            .str(rationale)
            .key("schema_version")
            .str(ADJUSTMENT_SCHEMA_VERSION)
            .key("target_urn")
            .str(self.target_urn)
            .key("tenant_id")
            .str(self.tenant_id)
            .key("timestamp")
            .u64(self.timestamp)
            .key("ttl_seconds")
            .u64(TTL_SECONDS)
            .end_obj();
    }
}

/// A feedback response being built: the signed string and the response's `data`.
pub struct Signing<'r> {
    tenant_id: &'r str,
    signed_at: u64,
    nonce: &'r str,
    kid: &'r str,
    items: Vec<Adjustment<'r>>,
}

/// A signed feedback response, ready to write.
pub struct SignedResponse {
    data: Vec<u8>,
    signature_b64: String,
    kid: String,
    signed_at: u64,
    nonce: String,
}

impl<'r> Signing<'r> {
    /// The response for the graph records `records` of `tenant_id` (oldest first).
    pub fn new(
        tenant_id: &'r str,
        signed_at: u64,
        nonce: &'r str,
        kid: &'r str,
        records: &'r [GraphRecord],
    ) -> Self {
        let items = records
            .iter()
            .map(
                |GraphRecord::V1 {
                     execution_fingerprint,
                     attestation_measurement_hash,
                     target_urn,
                     nodes,
                     ..
                 }| Adjustment {
                    tenant_id,
                    execution_fingerprint,
                    target_urn: target_urn.as_deref().unwrap_or("urn:target:unknown"),
                    tighten: nodes.is_some_and(|n| n >= TIGHTEN_NODES),
                    timestamp: signed_at,
                    attestation_measurement_hash,
                },
            )
            .collect();
        Self {
            tenant_id,
            signed_at,
            nonce,
            kid,
            items,
        }
    }

    /// `{tenant_id}|{signed_at}|{nonce}|{schema_version}|{kid}|{canonical_data}`.
    pub fn signed_string(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.items.len() * 512);
        for part in [
            self.tenant_id,
            &self.signed_at.to_string(),
            self.nonce,
            RESPONSE_SCHEMA_VERSION,
            self.kid,
        ] {
            out.extend_from_slice(part.as_bytes());
            out.push(b'|');
        }
        let mut w = Cjson::new(&mut out);
        w.begin_arr();
        for item in &self.items {
            item.write_canonical(&mut w);
        }
        w.end_arr();
        out
    }

    /// Sign with the feedback key.
    pub fn sign(&self, signer: &dyn RecordSigner) -> Result<SignedResponse, vvgate_hsm::HsmError> {
        // A PKCS#11 signer blocks this thread for one token round trip (the query route is
        // not rate-limited but is signed and replay-checked; one signature per response).
        let sig = signer.sign(&self.signed_string())?;
        let mut data = Vec::with_capacity(self.items.len() * 512 + 2);
        let mut w = Cjson::new(&mut data);
        w.begin_arr();
        for item in &self.items {
            item.write_ordered(&mut w);
        }
        w.end_arr();
        Ok(SignedResponse {
            data,
            signature_b64: base64::engine::general_purpose::STANDARD.encode(sig),
            kid: self.kid.to_owned(),
            signed_at: self.signed_at,
            nonce: self.nonce.to_owned(),
        })
    }
}

impl SignedResponse {
    /// The response body, keys in the contract's order.
    pub fn write(&self, out: &mut Vec<u8>, request_id: &str) {
        Cjson::new(out)
            .begin_obj()
            .key("request_id")
            .str(request_id)
            .key("status")
            .str("accepted")
            .key("data")
            .raw(&self.data)
            .key("errors")
            .begin_arr()
            .end_arr()
            .key("signature")
            .str(&self.signature_b64)
            .key("kid")
            .str(&self.kid)
            .key("signature_algorithm")
            .str("Ed25519")
            .key("signed_at")
            .u64(self.signed_at)
            .key("nonce")
            .str(&self.nonce)
            .key("schema_version")
            .str(RESPONSE_SCHEMA_VERSION)
            .end_obj();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    struct Seed(Ed25519KeyPair);

    impl RecordSigner for Seed {
        fn public_key(&self) -> [u8; 32] {
            self.0.public_key().as_ref().try_into().unwrap()
        }
        fn sign(&self, msg: &[u8]) -> Result<[u8; 64], vvgate_hsm::HsmError> {
            Ok(self.0.sign(msg).as_ref().try_into().unwrap())
        }
    }

    const TENANT: &str = "10000000-0000-0000-0000-000000000001";

    fn signer() -> Seed {
        Seed(Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap())
    }

    /// CONTRACT.md §13.1, the feedback vector with empty data.
    #[test]
    fn contract_vector_empty() {
        let s = signer();
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(s.public_key()),
            "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="
        );
        let signing = Signing::new(TENANT, 1_772_107_255, "fb-nonce-0002", "vv-fb-2026q1", &[]);
        assert_eq!(
            signing.signed_string(),
            format!("{TENANT}|1772107255|fb-nonce-0002|feedback.response.v1|vv-fb-2026q1|[]")
                .as_bytes()
        );
        let r = signing.sign(&s).unwrap();
        assert_eq!(
            r.signature_b64,
            "mrtcteIorUiurbKIS56pk/jdqthBEo/d60VOMedCb2EtnbyyF3S8kGFPS8YvWYsrAGCR8qbTF8l9yhnoNbVxDw=="
        );
        let mut out = Vec::new();
        r.write(&mut out, "00000000-0000-4000-8000-000000000000");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"], serde_json::json!([]));
        assert_eq!(v["signed_at"], 1_772_107_255);
        assert_eq!(v["signature_algorithm"], "Ed25519");
    }

    /// The canonical form of an item is CJSON (the vector's item, with this gateway's
    /// `confidence`, `rationale` and `ttl_seconds`), and the response form has the contract's
    /// key order.
    #[test]
    fn items_in_both_forms() {
        let rec = GraphRecord::V1 {
            request_id: [0; 16],
            operator_id: "op-001".into(),
            execution_fingerprint:
                "0c40dbd5295bc42311cb7f980880d9407e386bca6f83639de3a38144a037e6cd".into(),
            attestation_measurement_hash:
                "5c83f7d75de535ed4e51f088c71824dc6b2c2d3080e5de24b67eb5daa259fe10".into(),
            schema_version: "execution.graph.v1".into(),
            target_urn: Some("urn:target:ip:10.0.0.5".into()),
            nodes: Some(8),
            edges: None,
            body_sha256: [0; 32],
            accepted_at: 1,
        };
        let records = [rec];
        let signing = Signing::new(TENANT, 1_772_107_250, "n", "k", &records);
        let signed = String::from_utf8(signing.signed_string()).unwrap();
        let data = signed.splitn(6, '|').nth(5).unwrap();
        let reparsed: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            crate::keys::cjson(&reparsed).unwrap(),
            data.as_bytes(),
            "the signed data is CJSON"
        );
        assert_eq!(reparsed[0]["action"], "tighten");
        assert_eq!(reparsed[0]["confidence"], 0.82);
        let r = signing.sign(&signer()).unwrap();
        let text = String::from_utf8(r.data.clone()).unwrap();
        assert!(text.starts_with(
            r#"[{"tenant_id":"10000000-0000-0000-0000-000000000001","execution_fingerprint":"0c40"#
        ));
        assert!(text.ends_with(r#""schema_version":"feedback.adjustment.v1","attestation_measurement_hash":"5c83f7d75de535ed4e51f088c71824dc6b2c2d3080e5de24b67eb5daa259fe10"}]"#));
        // Seven nodes only observe; no target falls back to the unknown URN.
        let small = [GraphRecord::V1 {
            request_id: [0; 16],
            operator_id: "op".into(),
            execution_fingerprint: "a".repeat(64),
            attestation_measurement_hash: "b".repeat(64),
            schema_version: "x".into(),
            target_urn: None,
            nodes: Some(7),
            edges: None,
            body_sha256: [0; 32],
            accepted_at: 1,
        }];
        let s =
            String::from_utf8(Signing::new(TENANT, 1, "n", "k", &small).signed_string()).unwrap();
        assert!(s.contains(r#""action":"observe""#) && s.contains(r#""confidence":0.55"#));
        assert!(s.contains("urn:target:unknown"));
    }
}
