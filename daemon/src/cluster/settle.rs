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
use crate::ingest::{Ctx, Rejection};

/// Step 15 after the local miss: the bucket. `None` when the key is free.
pub async fn lookup(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    kv_key: &str,
    body_sha256: [u8; 32],
    out: &mut Vec<u8>,
) -> Option<Response> {
    match b.get(kv_key).await {
        Answer::Found(None) => None,
        Answer::Found(Some(v)) => Some(answer_found(gw, ctx, &v, body_sha256, out).await),
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
    out: &mut Vec<u8>,
) -> Response {
    match value::parse(v) {
        Ok(found) => gw.resend(ctx, found.record, body_sha256, out).await,
        Err(why) => {
            tracing::warn!(request_id = %ctx.request_id_text, problem = %why, "the nonce bucket holds a value no gateway wrote; answered as a replay");
            gw.refuse(ctx, Rejection::NonceForeignValue.into(), out)
                .await
        }
    }
}

/// What an accepted request keeps.
pub struct Acceptance {
    pub key: [u8; 24],
    pub kv_key: String,
    pub record: NonceRecord,
    pub envelope: Envelope,
    pub details: Vec<u8>,
}

/// Steps 29–31 in cluster mode: claim, own the key, confirm.
pub async fn accept(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    a: Acceptance,
    out: &mut Vec<u8>,
) -> Response {
    let mut kv_value = Vec::with_capacity(224);
    value::encode(&a.record, &b.appliance, &mut kv_value);
    let mut claim = Vec::with_capacity(a.envelope.body.len() + a.details.len() + 512);
    let encoded = vvgate_storage::encode_claim(
        &Claim::V1 {
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
        },
        &mut claim,
    );
    if let Err(e) = encoded {
        tracing::error!(error = %e, "cannot encode a cluster claim");
        return gw.answer(ctx, Rejection::PersistenceFailed.into(), out);
    }
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action: Action::Claim { key: a.key, claim },
        audit: accepted_item(Vec::new()),
        reply: None,
    };
    match gw.committer.commit(op).await {
        Ok(Outcome::Committed { .. }) => {}
        // Audited by the storage thread.
        Ok(Outcome::Replay(_)) => return gw.answer(ctx, Rejection::NonceReused.into(), out),
        Ok(Outcome::SpoolFull) => return gw.answer(ctx, Rejection::SpoolFull.into(), out),
        Ok(Outcome::Failed) | Err(SubmitError::Closed) => {
            return gw.answer(ctx, Rejection::PersistenceFailed.into(), out)
        }
        Err(SubmitError::Full) => return gw.answer(ctx, Rejection::Overloaded.into(), out),
    }
    match b.own(&a.kv_key, &kv_value).await {
        Owner::Ours => {
            let id = ctx.request_id_text.clone();
            confirm(gw, b, ctx, a.key, a.record, a.envelope, a.details, &id, out).await
        }
        Owner::Theirs(v) => {
            release(gw, ctx.request_id, a.key, None).await;
            answer_found(gw, ctx, &v, body_hash(&a.record), out).await
        }
        Owner::Unavailable { sent } => {
            if sent {
                // The create may have landed: the claim stays until the bucket says whose
                // the key is.
                b.unsettled.set(true);
            } else {
                release(gw, ctx.request_id, a.key, None).await;
            }
            gw.refuse(ctx, Rejection::NonceBucketUnavailable.into(), out)
                .await
        }
    }
}

/// Step 15 found a claim of ours (a crash or an outage left it open): settle it now.
pub async fn resume(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    key: [u8; 24],
    raw: &[u8],
    body_sha256: [u8; 32],
    out: &mut Vec<u8>,
) -> Response {
    let Ok(Claim::V1 {
        kv_key,
        kv_value,
        record,
        envelope,
        audit_details,
    }) = vvgate_storage::decode_claim(raw)
    else {
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
    } = record;
    if claimed != body_sha256 || Some(route) != ctx.route {
        // Another body under a held nonce: a plain replay, whoever ends up owning it.
        return gw.refuse(ctx, Rejection::NonceReused.into(), out).await;
    }
    match b.own(kv_key, kv_value).await {
        Owner::Ours => {
            // The original acceptance completes now; the producer gets its request id.
            let envelope = owned(&envelope);
            let id = ids::uuid_text(&request_id);
            confirm(
                gw,
                b,
                ctx,
                key,
                record,
                envelope,
                audit_details.to_vec(),
                &id,
                out,
            )
            .await
        }
        Owner::Theirs(v) => {
            release(gw, request_id, key, None).await;
            answer_found(gw, ctx, &v, body_sha256, out).await
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

fn accepted_item(details: Vec<u8>) -> AuditItem {
    AuditItem {
        actor: ACTOR_GATEWAY,
        event_type: "telemetry.accepted",
        details,
    }
}

/// The key is ours: make the acceptance durable, then 202 with `request_id`.
#[allow(clippy::too_many_arguments)] // the acceptance's parts, moved into the commit
async fn confirm(
    gw: &Gateway,
    b: &NonceBucket,
    ctx: &Ctx<'_>,
    key: [u8; 24],
    record: NonceRecord,
    envelope: Envelope,
    details: Vec<u8>,
    request_id: &ids::UuidText,
    out: &mut Vec<u8>,
) -> Response {
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action: Action::Confirm {
            key,
            record,
            spool: envelope,
        },
        audit: accepted_item(details),
        reply: None,
    };
    match gw.committer.commit(op).await {
        Ok(Outcome::Committed { .. }) => {
            out.clear();
            out.extend_from_slice(b"{\"accepted\":true,\"request_id\":\"");
            out.extend_from_slice(request_id.as_bytes());
            out.extend_from_slice(b"\"}");
            gw.metrics.count(202, "accepted");
            let mut r = Response::new(202);
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
    key: [u8; 24],
    audit: Option<(&str, &str)>,
) -> bool {
    let (audited, item) = match audit {
        None => (false, accepted_item(Vec::new())),
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
        route: Some(Route::Telemetry),
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
        let Ok(Claim::V1 {
            kv_key,
            kv_value,
            record,
            envelope,
            audit_details,
        }) = vvgate_storage::decode_claim(&raw)
        else {
            return Err("an unreadable cluster claim in storage".into());
        };
        let NonceRecord::V1 { request_id, .. } = record;
        match b.own(kv_key, kv_value).await {
            Owner::Ours => {
                let op = Op {
                    request_id,
                    route: Some(Route::Telemetry),
                    action: Action::Confirm {
                        key,
                        record,
                        spool: owned(&envelope),
                    },
                    audit: accepted_item(audit_details.to_vec()),
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
                if !release(gw, request_id, key, Some((owner, reason))).await {
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
