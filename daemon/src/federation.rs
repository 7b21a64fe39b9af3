//! Federation verify, `POST /internal/v1/federation/verify` (CONTRACT.md §7): a signed evidence
//! bundle is checked for proof of origin and freshness and its hash returned.
//!
//! Order: M1–M3 (generic reasons, before the body is read) → identity steps 1–6 (the same
//! check as telemetry) → JSON → schema (`extra = forbid` at both levels) → timestamp within
//! `[federation] allowed_clock_skew_seconds` → Ed25519 over
//! `{operator_id}|{campaign_id}|{execution_hash}|{timestamp}|{nonce}` with the federation key →
//! `(timestamp, nonce)` not in the federation nonce table (its own namespace, separate from
//! telemetry's) → one durable commit of the nonce and `federation.accepted`. Every refusal is
//! audited as `federation.rejected`.

use base64::Engine;
use ring::signature::{UnparsedPublicKey, ED25519};
use vvgate_storage::{nonce_key, NonceRecord, NonceSpace, Route};

use crate::audit::{write_details, Detail, ACTOR_GATEWAY};
use crate::cluster::{self, settle::Answers};
use crate::commit::{Action, AuditItem, Op};
use crate::gateway::Gateway;
use crate::http::conn::ConnInfo;
use crate::http::{Head, Response, Span};
use crate::ids;
use crate::ingest::{self, checks, ConnState, Ctx, Rejection};
use crate::json::Cjson;
use crate::schema::service::{parse_federation, FederationBundle};

/// The proof-of-origin string of a bundle (also the input of `bundle_hash`).
pub fn signed_string(b: &FederationBundle<'_>, out: &mut Vec<u8>) {
    out.clear();
    for (i, part) in [
        &*b.operator_id,
        &*b.campaign_id,
        &*b.execution_hash,
        b.timestamp,
        &*b.nonce,
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            out.push(b'|');
        }
        out.extend_from_slice(part.as_bytes());
    }
}

/// Strict standard base64 of a 64-byte Ed25519 signature that verifies `msg` under `key`.
pub fn proof_of_origin(signature_b64: &str, msg: &[u8], key: &[u8; 32]) -> bool {
    let mut sig = [0u8; 66];
    match base64::engine::general_purpose::STANDARD.decode_slice(signature_b64, &mut sig) {
        Ok(64) => UnparsedPublicKey::new(&ED25519, key)
            .verify(msg, &sig[..64])
            .is_ok(),
        _ => false,
    }
}

fn success_body(out: &mut Vec<u8>, bundle_hash: &str) {
    Cjson::new(out)
        .begin_obj()
        .key("accepted")
        .bool(true)
        .key("bundle_hash")
        .str(bundle_hash)
        .end_obj();
}

/// `POST /internal/v1/federation/verify` with its body read.
pub async fn verify(
    gw: &Gateway,
    st: &mut ConnState,
    conn: &ConnInfo,
    head: &Head,
    buf: &[u8],
    span: Span,
    out: &mut Vec<u8>,
) -> Response {
    let ctx = Ctx::new(gw, head, buf, Some(Route::FederationVerify));
    let body = span.get(buf);
    let cfg = gw.cfg();
    let now = gw.clock.now().secs();

    if let Err(r) = checks::identity(head, buf, conn.fingerprint, &cfg.identities) {
        return gw.refuse(&ctx, r.into(), out).await;
    }
    let mut tape = std::mem::take(&mut st.tape);
    let mut msg = std::mem::take(&mut st.msg);
    let decided = (|| {
        let doc = tape.parse(body).map_err(|_| Rejection::InvalidJson)?;
        let bundle = parse_federation(&doc).map_err(|v| {
            tracing::debug!(violation = ?v, "federation bundle refused");
            Rejection::FederationSchemaInvalid
        })?;
        let ts = checks::parse_epoch(bundle.timestamp)
            .filter(|ts| now.abs_diff(*ts) <= cfg.federation.allowed_clock_skew_seconds)
            .ok_or(Rejection::FederationTimestampOutsideSkew)?;
        signed_string(&bundle, &mut msg);
        if !proof_of_origin(&bundle.signature, &msg, &cfg.federation.public_key) {
            return Err(Rejection::FederationSignatureInvalid);
        }
        let key = nonce_key(ts, &bundle.nonce);
        let hash = ids::hex32(&ids::sha256(&msg));
        let mut details = Vec::with_capacity(320);
        write_details(
            &mut details,
            &mut [
                ("request_id", Detail::Str(&ctx.request_id_text)),
                ("bundle_hash", Detail::Str(&hash)),
                ("operator_id", Detail::Str(&bundle.operator_id)),
                ("nonce", Detail::Str(&bundle.nonce)),
                (
                    "timestamp",
                    Detail::Int(i64::try_from(ts).unwrap_or(i64::MAX)),
                ),
            ],
        );
        let kv_key = gw
            .cluster
            .as_ref()
            .map(|_| cluster::value::federation_kv_key(ts, &bundle.nonce));
        Ok((key, hash, details, kv_key))
    })();
    st.tape = tape;
    st.msg = msg;
    let (key, bundle_hash, details, kv_key) = match decided {
        Ok(v) => v,
        Err(r) => return gw.refuse(&ctx, r.into(), out).await,
    };

    // Replay, in the federation namespace; one request per key at a time.
    let _claim = gw.inflight.claim(key).await;
    let body_sha256 = ids::sha256(body);
    let write = |o: &mut Vec<u8>, _: &str| success_body(o, &bundle_hash);
    let answers = Answers {
        replay: Rejection::FederationNonceReused,
        foreign: Rejection::FederationNonceForeignValue,
        success: (200, &write),
        resend_succeeds: true,
    };
    match gw.store.nonce_get(NonceSpace::Federation, &key) {
        Ok(None) => {}
        Ok(Some(rec)) => {
            return ingest::resend_other(
                gw,
                &ctx,
                rec,
                body_sha256,
                answers.replay,
                Some(answers.success),
                out,
            )
            .await;
        }
        Err(e) => {
            tracing::error!(error = %e, "federation nonce lookup failed");
            return gw
                .refuse(&ctx, Rejection::NonceStoreUnavailable.into(), out)
                .await;
        }
    }
    if gw.committer.room() == 0 {
        return gw.refuse(&ctx, Rejection::Overloaded.into(), out).await;
    }
    let record = NonceRecord::V1 {
        body_sha256,
        request_id: ctx.request_id,
        route: Route::FederationVerify,
        accepted_at: now,
    };
    // Cluster mode: the bundle's key in the shared bucket (its own `f.` namespace), looked up
    // and then owned before the commit. Nothing is kept but the nonce and the audit entry, so
    // a crash in between costs no data: the re-send is answered with the same bundle hash.
    if let (Some(b), Some(kv_key)) = (&gw.cluster, kv_key) {
        if let Some(r) =
            cluster::settle::lookup(gw, b, &ctx, &kv_key, body_sha256, answers, out).await
        {
            return r;
        }
        if let Some(r) = cluster::settle::own_key(gw, b, &ctx, &kv_key, &record, answers, out).await
        {
            return r;
        }
    }
    let op = Op {
        request_id: ctx.request_id,
        route: ctx.route,
        action: Action::Accept {
            space: NonceSpace::Federation,
            key,
            record,
            spool: None,
        },
        audit: AuditItem {
            actor: ACTOR_GATEWAY,
            event_type: "federation.accepted",
            details,
        },
        reply: None,
    };
    let outcome = gw.committer.commit(op).await;
    ingest::committed_answer(
        gw,
        &ctx,
        outcome,
        Rejection::FederationNonceReused,
        200,
        |o| success_body(o, &bundle_hash),
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Tape;

    /// CONTRACT.md §13.1, the federation vector.
    #[test]
    fn contract_vector() {
        let text = format!(
            r#"{{"bundle":{{"operator_id":"op-001","campaign_id":"cmp-001","execution_hash":"{}","timestamp":1772107200,"nonce":"nonce-federation-00000001","signature":"ROXfV7V7SPgHvwfvt7Nrgnn/pmxi8r80kMcjPyCcfPDW472mRo+AAjIGkKPQXZmvd3GcXmxOkWALL8f7flWXAw=="}}}}"#,
            "f".repeat(64)
        );
        let mut tape = Tape::new();
        let doc = tape.parse(text.as_bytes()).unwrap();
        let b = parse_federation(&doc).unwrap();
        let mut msg = Vec::new();
        signed_string(&b, &mut msg);
        assert_eq!(
            ids::hex32(&ids::sha256(&msg)).as_str(),
            "7262fd3691290de5a42514de68c0da5194f2f45024b074abf473a225c014e9b9"
        );
        let seed: Vec<u8> = (0u8..32).collect();
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let pk: [u8; 32] = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .try_into()
            .unwrap();
        assert!(proof_of_origin(&b.signature, &msg, &pk));
        // Another key, a changed field, bad padding, a short signature: all refused.
        assert!(!proof_of_origin(&b.signature, &msg, &[9; 32]));
        let mut other = msg.clone();
        other[0] ^= 1;
        assert!(!proof_of_origin(&b.signature, &other, &pk));
        assert!(!proof_of_origin(&b.signature[..87], &msg, &pk));
        assert!(!proof_of_origin("QUFBQUFBQUFBQUFB", &msg, &pk));
        assert!(!proof_of_origin(&b.signature.replace('=', "A"), &msg, &pk));
    }
}
