//! The crash-safe order of an acceptance in cluster mode, and settling what a crash or an
//! outage left open (docs/scale-out.md has the states and the recovery).
//!
//! 1. **Claim** (group commit, durable): the nonce key, the bucket key and value, the nonce
//!    record, the envelope and the audit details go into the `claims` table. Nothing is
//!    spooled or audited: a claim is not an acceptance, and is never forwarded.
//! 2. **Own the key**: create-only write of the bucket key with this appliance's value; if
//!    it exists, read it. The bucket holding exactly our value means the key is ours.
//! 3. **Confirm** (group commit, durable): the claim becomes the nonce record, the spooled
//!    envelope and the `telemetry.accepted` entry; then 202. If the key is another
//!    appliance's, the claim is released and the request is answered as a re-send of that
//!    appliance's acceptance (CONTRACT.md §3.6).
//!
//! A crash after 1 leaves a claim; after 2 a claim whose key may be ours. Either way the
//! claim is settled later by running 2 again (idempotent: it gives "ours" exactly when the
//! bucket holds our value) and then 3 or a release, by the next request with that nonce or by
//! the settler task. So an event is kept whenever its key is ours, a key is never ours without
//! a durable claim behind it, and no key is burned without an appliance keeping its event.
//!
//! Telemetry and execution graphs (which keep something: an event to forward, a graph
//! record) go through all three steps. The feedback query and federation verify keep nothing
//! but their nonce and audit entry, so they own the key (step 2) and then commit: a crash in
//! between burns the nonce cluster-wide, and the producer's re-send is answered as a re-send
//! (federation: its deterministic `bundle_hash`; feedback: the plain 409, as for any re-send).

use std::rc::Rc;
use std::time::Duration;

use smol::Timer;
use vvgate_storage::{Claim, NonceRecord, Route, SpoolItem};

use super::{value, Answer, NonceBucket, Owner};
use crate::audit::{write_details, Detail, ACTOR_GATEWAY, ACTOR_SYSTEM};
use crate::commit::{Action, AuditItem, Envelope, Op, Outcome, SubmitError};
use crate::gateway::Gateway;
use crate::http::Response;
use crate::ids;
use crate::ingest::{self, Ctx, IdempotentAnswer, Rejection};

/// Writes a route's success body given the accepting request's id.
pub type BodyWriter<'f> = dyn Fn(&mut Vec<u8>, &str) + 'f;

/// How a route answers (CONTRACT.md §3.6): its plain replay refusal, and the status and body
/// of its success, which is also the answer to an identical re-send with `idempotent_retry`.
#[derive(Clone, Copy)]
pub struct Answers<'f> {
    /// The route's 409.
    pub replay: Rejection,
    /// A foreign or malformed value under the route's key (a 409 audited with the reason).
    pub foreign: Rejection,
    /// The success status and a writer of its body given the accepting request's id.
    pub success: (u16, &'f BodyWriter<'f>),
    /// Whether an identical re-send may get `success` (the feedback query's never does: its
    /// signed response is not stored).
    pub resend_succeeds: bool,
}

impl<'f> Answers<'f> {
    /// A route of telemetry's nonce namespace (the cognitive routes), with its success.
    pub fn shared_nonces(success: (u16, &'f BodyWriter<'f>), resend_succeeds: bool) -> Self {
        Self {
            replay: Rejection::NonceReused,
            foreign: Rejection::NonceForeignValue,
            success,
            resend_succeeds,
        }
    }

    fn idempotent(&self) -> IdempotentAnswer<'f> {
        self.resend_succeeds.then_some(self.success)
    }
}

/// Telemetry's answers.
pub const TELEMETRY: Answers<'static> = Answers {
    replay: Rejection::NonceReused,
    foreign: Rejection::NonceForeignValue,
    success: (202, &ingest::accepted_body),
    resend_succeeds: true,
};

/// The value this appliance writes under the key of an acceptance.
pub fn kv_value(b: &NonceBucket, record: &NonceRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(224);
    value::encode(record, &b.appliance, &mut v);
    v
}

/// Step 15 after the local miss, for the routes of telemetry's namespace: a claim of ours
/// left open (settled now), then the bucket. `Ok(kv_key)` when the nonce is free everywhere;
/// `Err` is the answer already given.
#[allow(clippy::too_many_arguments)] // the request's parts and the route's answers
pub async fn check(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    key: [u8; 24],
    kv_key: String,
    body_sha256: [u8; 32],
    answers: Answers<'_>,
    out: &mut Vec<u8>,
) -> Result<String, Response> {
    match gw.store.claim_get(&key) {
        Ok(None) => {}
        Ok(Some(raw)) => return Err(resume(gw, b, ctx, key, &raw, body_sha256, answers, out).await),
        Err(e) => {
            tracing::error!(error = %e, "cluster claim lookup failed");
            return Err(gw
                .refuse(ctx, Rejection::NonceStoreUnavailable.into(), out)
                .await);
        }
    }
    match lookup(gw, b, ctx, &kv_key, body_sha256, answers, out).await {
        None => Ok(kv_key),
        Some(r) => Err(r),
    }
}

/// Step 15 after the local miss: the bucket. `None` when the key is free.
pub async fn lookup(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    kv_key: &str,
    body_sha256: [u8; 32],
    answers: Answers<'_>,
    out: &mut Vec<u8>,
) -> Option<Response> {
    match b.get(kv_key).await {
        Answer::Found(None) => None,
        Answer::Found(Some(v)) => Some(answer_found(gw, ctx, &v, body_sha256, answers, out).await),
        Answer::Unavailable { .. } | Answer::Created | Answer::Exists => Some(
            gw.refuse(ctx, Rejection::NonceBucketUnavailable.into(), out)
                .await,
        ),
    }
}

/// The key holds `v`: answer as a re-send of that acceptance, or fail closed on a value no
/// gateway wrote.
async fn answer_found(
    gw: &Gateway,
    ctx: &Ctx<'_>,
    v: &[u8],
    body_sha256: [u8; 32],
    answers: Answers<'_>,
    out: &mut Vec<u8>,
) -> Response {
    match value::parse(v) {
        Ok(found) => {
            ingest::resend_other(
                gw,
                ctx,
                found.record,
                body_sha256,
                answers.replay,
                answers.idempotent(),
                out,
            )
            .await
        }
        Err(why) => {
            tracing::warn!(request_id = %ctx.request_id_text, problem = %why, "the nonce bucket holds a value no gateway wrote; answered as a replay");
            gw.refuse(ctx, answers.foreign.into(), out).await
        }
    }
}

/// Step 2 alone, for the routes that keep nothing but their nonce and audit entry (feedback
/// query, federation verify): `None` when the key is now ours and the route may commit.
pub async fn own_key(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    kv_key: &str,
    record: &NonceRecord,
    answers: Answers<'_>,
    out: &mut Vec<u8>,
) -> Option<Response> {
    match b.own(kv_key, &kv_value(b, record)).await {
        Owner::Ours => None,
        Owner::Theirs(v) => Some(answer_found(gw, ctx, &v, body_hash(record), answers, out).await),
        Owner::Unavailable { .. } => Some(
            gw.refuse(ctx, Rejection::NonceBucketUnavailable.into(), out)
                .await,
        ),
    }
}

/// What an accepted telemetry request keeps.
pub struct Acceptance {
    pub key: [u8; 24],
    pub kv_key: String,
    pub record: NonceRecord,
    pub envelope: Envelope,
    pub details: Vec<u8>,
}

/// Steps 29–31 of telemetry in cluster mode: claim, own the key, confirm.
pub async fn accept(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    a: Acceptance,
    out: &mut Vec<u8>,
) -> Response {
    let kv_value = kv_value(b, &a.record);
    let claim = Claim::V1 {
        kv_key: &a.kv_key,
        kv_value: &kv_value,
        record: a.record,
        envelope: SpoolItem {
            kind: a.envelope.kind,
            msg_id: &a.envelope.msg_id,
            integrity_hash: &a.envelope.integrity_hash,
            body: &a.envelope.body,
        },
        audit_details: &a.details,
    };
    accept_claim(gw, b, ctx, a.key, &claim, TELEMETRY, out).await
}

/// Claim, own the key, confirm: the acceptance of a request that keeps something (a
/// telemetry event, an execution graph), held in `claim`.
pub async fn accept_claim(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    key: [u8; 24],
    claim: &Claim<'_>,
    answers: Answers<'_>,
    out: &mut Vec<u8>,
) -> Response {
    let mut encoded = Vec::with_capacity(1024);
    if let Err(e) = vvgate_storage::encode_claim(claim, &mut encoded) {
        tracing::error!(error = %e, "cannot encode a cluster claim");
        return gw.answer(ctx, Rejection::PersistenceFailed.into(), out);
    }
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action: Action::Claim {
            key,
            claim: encoded,
        },
        audit: accepted_item("telemetry.accepted", Vec::new()),
        reply: None,
    };
    match gw.committer.commit(op).await {
        Ok(Outcome::Committed { .. }) => {}
        // Audited by the storage thread.
        Ok(Outcome::Replay(_)) => return gw.answer(ctx, answers.replay.into(), out),
        Ok(Outcome::SpoolFull) => return gw.answer(ctx, Rejection::SpoolFull.into(), out),
        Ok(Outcome::Failed) | Err(SubmitError::Closed) => {
            return gw.answer(ctx, Rejection::PersistenceFailed.into(), out)
        }
        Err(SubmitError::Full) => return gw.answer(ctx, Rejection::Overloaded.into(), out),
    }
    let (kv_key, kv_value) = claim.kv();
    match b.own(kv_key, kv_value).await {
        Owner::Ours => {
            let id = ctx.request_id_text.clone();
            confirm(gw, b, ctx, key, claim, &id, answers, out).await
        }
        Owner::Theirs(v) => {
            release(gw, ctx.request_id, route_of(claim), key, None).await;
            answer_found(gw, ctx, &v, body_hash(claim.record()), answers, out).await
        }
        Owner::Unavailable { sent } => {
            if sent {
                // The create may have landed: the claim stays until the bucket says whose
                // the key is.
                b.unsettled.set(true);
            } else {
                release(gw, ctx.request_id, route_of(claim), key, None).await;
            }
            gw.refuse(ctx, Rejection::NonceBucketUnavailable.into(), out)
                .await
        }
    }
}

/// Step 15 found a claim of ours (a crash or an outage left it open): settle it now.
#[allow(clippy::too_many_arguments)] // the request's parts and the route's answers
async fn resume(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    key: [u8; 24],
    raw: &[u8],
    body_sha256: [u8; 32],
    answers: Answers<'_>,
    out: &mut Vec<u8>,
) -> Response {
    let Ok(claim) = vvgate_storage::decode_claim(raw) else {
        tracing::error!("an unreadable cluster claim in storage");
        return gw
            .refuse(ctx, Rejection::NonceStoreUnavailable.into(), out)
            .await;
    };
    let NonceRecord::V1 {
        body_sha256: claimed,
        route,
        request_id,
        ..
    } = *claim.record();
    if claimed != body_sha256 || Some(route) != ctx.route {
        // Another body or route under a held nonce: a plain replay, whoever ends up owning it.
        return gw.refuse(ctx, answers.replay.into(), out).await;
    }
    let (kv_key, kv_value) = claim.kv();
    match b.own(kv_key, kv_value).await {
        Owner::Ours => {
            // The original acceptance completes now; the producer gets its request id.
            let id = ids::uuid_text(&request_id);
            confirm(gw, b, ctx, key, &claim, &id, answers, out).await
        }
        Owner::Theirs(v) => {
            release(gw, request_id, route, key, None).await;
            answer_found(gw, ctx, &v, body_sha256, answers, out).await
        }
        Owner::Unavailable { .. } => {
            b.unsettled.set(true);
            gw.refuse(ctx, Rejection::NonceBucketUnavailable.into(), out)
                .await
        }
    }
}

fn owned(item: &SpoolItem<'_>) -> Envelope {
    Envelope {
        kind: item.kind,
        msg_id: item.msg_id.to_owned(),
        integrity_hash: ids::HexHash::try_from(item.integrity_hash).unwrap_or_default(),
        body: item.body.to_vec(),
    }
}

fn body_hash(r: &NonceRecord) -> [u8; 32] {
    let NonceRecord::V1 { body_sha256, .. } = r;
    *body_sha256
}

fn route_of(claim: &Claim<'_>) -> Route {
    let NonceRecord::V1 { route, .. } = claim.record();
    *route
}

fn accepted_item(event_type: &'static str, details: Vec<u8>) -> AuditItem {
    AuditItem {
        actor: ACTOR_GATEWAY,
        event_type,
        details,
    }
}

/// What confirming `claim` writes: the acceptance of its route, and its audit entry.
fn confirming(claim: &Claim<'_>, key: [u8; 24]) -> (Action, AuditItem) {
    match claim {
        Claim::V1 {
            record,
            envelope,
            audit_details,
            ..
        } => (
            Action::Confirm {
                key,
                record: *record,
                spool: owned(envelope),
            },
            accepted_item("telemetry.accepted", audit_details.to_vec()),
        ),
        Claim::Graph {
            record,
            tenant_id,
            graph,
            retention,
            audit_details,
            ..
        } => (
            Action::StoreGraph {
                key,
                record: *record,
                tenant_id: (*tenant_id).to_owned(),
                graph: graph.clone(),
                retention: *retention,
                claimed: true,
            },
            accepted_item("cognitive.graph.accepted", audit_details.to_vec()),
        ),
    }
}

/// The key is ours: make the acceptance durable, then the route's success with `request_id`.
#[allow(clippy::too_many_arguments)] // the request's parts and the route's answers
async fn confirm(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    key: [u8; 24],
    claim: &Claim<'_>,
    request_id: &ids::UuidText,
    answers: Answers<'_>,
    out: &mut Vec<u8>,
) -> Response {
    let (action, audit) = confirming(claim, key);
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action,
        audit,
        reply: None,
    };
    match gw.committer.commit(op).await {
        Ok(Outcome::Committed { .. }) => {
            let (status, write) = answers.success;
            out.clear();
            write(out, request_id);
            gw.metrics.count(status, "accepted");
            let mut r = Response::new(status);
            r.request_id = Some(ctx.request_id_text.clone());
            r
        }
        other => {
            // The claim is still on disk and the key is ours: the settler confirms it.
            b.unsettled.set(true);
            let rejection = match other {
                Err(SubmitError::Full) => Rejection::Overloaded,
                _ => Rejection::PersistenceFailed,
            };
            gw.answer(ctx, rejection.into(), out)
        }
    }
}

/// Drop a claim. `audit`: the owner and why, for a settlement without a request.
async fn release(
    gw: &Gateway,
    request_id: [u8; 16],
    route: Route,
    key: [u8; 24],
    audit: Option<(&str, &str)>,
) -> bool {
    let (audited, item) = match audit {
        None => (false, accepted_item("telemetry.accepted", Vec::new())),
        Some((owner, reason)) => {
            let id = ids::uuid_text(&request_id);
            let mut details = Vec::with_capacity(160);
            write_details(
                &mut details,
                &mut [
                    ("request_id", Detail::Str(&id)),
                    ("outcome", Detail::Str("released")),
                    ("owner", Detail::Str(owner)),
                    ("reason", Detail::Str(reason)),
                ],
            );
            (
                true,
                AuditItem {
                    actor: ACTOR_SYSTEM,
                    event_type: "cluster.claim_settled",
                    details,
                },
            )
        }
    };
    let op = Op {
        request_id,
        route: Some(route),
        action: Action::Release { key, audited },
        audit: item,
        reply: None,
    };
    matches!(gw.committer.commit(op).await, Ok(Outcome::Committed { .. }))
}

/// Settle every claim in storage once the bucket is reachable: at start (claims a crash
/// left) and after an ambiguous create. Runs until the gateway stops.
pub async fn settler(gw: Rc<Gateway>, b: Rc<NonceBucket>) {
    loop {
        let listener = b.settle_wake.listen();
        if b.unsettled.get() && b.ready() {
            match settle_all(&gw, &b).await {
                Ok(n) => {
                    b.unsettled.set(false);
                    if n > 0 {
                        tracing::info!(claims = n, "open cluster claims settled");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "settling cluster claims paused"),
            }
        }
        futures_lite::future::or(listener, async {
            Timer::after(Duration::from_secs(2)).await;
        })
        .await;
    }
}

async fn settle_all(gw: &Gateway, b: &NonceBucket) -> Result<usize, String> {
    let claims = gw
        .store
        .read()
        .and_then(|r| r.claims())
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    for (key, _) in claims {
        // Not while a request holds the nonce; then read the claim again.
        let _hold = gw.inflight.claim(key).await;
        let raw = match gw.store.claim_get(&key) {
            Ok(Some(raw)) => raw,
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        };
        let Ok(claim) = vvgate_storage::decode_claim(&raw) else {
            return Err("an unreadable cluster claim in storage".into());
        };
        let NonceRecord::V1 {
            request_id, route, ..
        } = *claim.record();
        let (kv_key, kv_value) = claim.kv();
        match b.own(kv_key, kv_value).await {
            Owner::Ours => {
                let (action, audit) = confirming(&claim, key);
                let op = Op {
                    request_id,
                    route: Some(route),
                    action,
                    audit,
                    reply: None,
                };
                if !matches!(gw.committer.commit(op).await, Ok(Outcome::Committed { .. })) {
                    return Err("storage refused a confirmation".into());
                }
            }
            Owner::Theirs(v) => {
                let owner = value::parse(&v).map(|v| v.appliance);
                let (owner, reason) = match &owner {
                    Ok(a) => (a.as_str(), "the key belongs to another appliance"),
                    Err(_) => ("unknown", "kv_value_malformed"),
                };
                if !release(gw, request_id, route, key, Some((owner, reason))).await {
                    return Err("storage refused a release".into());
                }
            }
            Owner::Unavailable { .. } => return Err("the nonce bucket is unreachable".into()),
        }
        b.stats.settled.set(b.stats.settled.get() + 1);
        n += 1;
    }
    Ok(n)
}
