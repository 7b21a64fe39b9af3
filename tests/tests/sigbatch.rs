//! Batched signature verification against the real daemon: many connections reach check step
//! 14 at the same moment, signed by the two producer keys of a rotation overlap and by a key
//! nobody configured. Every request gets exactly the answer of single (ring) verification:
//! 202 with the audit `key_id` of the key that signed it, or 401 `Invalid telemetry signature`
//! and nothing spooled; the counters show the batches that formed and failed.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::sync::{Arc, Barrier};

use vvgate_e2e::*;

const THREADS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signer {
    Active,
    Next,
    Stranger,
}

struct Outcome {
    signer: Signer,
    status: u16,
    request_id: String,
    detail: String,
}

/// `rounds` rounds in which every thread sends one request at the same moment on its own
/// keep-alive connection; `signer(thread, round)` picks the key.
fn rounds(
    g: &Gateway,
    pki: &Pki,
    rounds: usize,
    signer: impl Fn(usize, usize) -> Signer + Send + Sync + Copy + 'static,
) -> Vec<Outcome> {
    let barrier = Arc::new(Barrier::new(THREADS));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let barrier = Arc::clone(&barrier);
                let mut conn = g.connect();
                let active = pki.producer();
                let next = producer_with(pki, "producer-next.seed");
                let stranger = producer_with(pki, "stranger.seed");
                s.spawn(move || {
                    let mut out = Vec::new();
                    for r in 0..rounds {
                        let who = signer(t, r);
                        let p = match who {
                            Signer::Active => &active,
                            Signer::Next => &next,
                            Signer::Stranger => &stranger,
                        };
                        let req = request(p, &valid());
                        barrier.wait();
                        let resp = conn.send(&req).expect("response");
                        let detail = if resp.status == 202 {
                            String::new()
                        } else {
                            json(&resp)["detail"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned()
                        };
                        out.push(Outcome {
                            signer: who,
                            status: resp.status,
                            request_id: resp.header("x-request-id").unwrap_or_default().to_owned(),
                            detail,
                        });
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    })
}

/// Every outcome is the single-verification answer; returns the number of 202s.
fn check(g: &Gateway, outcomes: &[Outcome], active_id: &str, next_id: &str) -> usize {
    let audit = g.audit();
    let by_id = |id: &str| {
        audit
            .iter()
            .find(|e| e["details"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no audit entry for {id}"))
    };
    let mut accepted = 0;
    for o in outcomes {
        let e = by_id(&o.request_id);
        match o.signer {
            Signer::Active | Signer::Next => {
                assert_eq!(o.status, 202, "{:?}: {}", o.signer, o.detail);
                assert_eq!(e["event_type"], "telemetry.accepted");
                let want = if o.signer == Signer::Active {
                    active_id
                } else {
                    next_id
                };
                assert_eq!(e["details"]["key_id"], want, "{:?}", o.signer);
                accepted += 1;
            }
            Signer::Stranger => {
                assert_eq!(o.status, 401);
                assert_eq!(o.detail, "Invalid telemetry signature");
                assert_eq!(e["event_type"], "telemetry.rejected");
            }
        }
    }
    accepted
}

fn start(dir: &std::path::Path, name: &str, pki: &Pki, next_b64: &str, mode: &str) -> Gateway {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).expect("state dir");
    let t = now();
    Gateway::start_in(
        state,
        pki.clone(),
        Opts::default()
            .with(&format!(
                "spectrastrike_ed25519_next_public_key_b64 = \"{next_b64}\""
            ))
            .with(&format!(
                "spectrastrike_ed25519_next_not_before = {}",
                t - 60
            ))
            .with(&format!("signature_verification = \"{mode}\""))
            .with("rate_limit_per_minute = 100000"),
    )
}

#[test]
fn concurrent_requests_get_single_verification_answers_in_both_modes() {
    let dir = temp_dir("sigbatch");
    let pki = Pki::new(&dir.join("pki"));
    let next_b64 = extra_producer_key(&pki, "producer-next", 0x5a);
    let _ = extra_producer_key(&pki, "stranger", 0xa5);
    let active_id = key_id(&pki.producer_public_b64);
    let next_id = key_id(&next_b64);
    // Phase 1: valid only; each connection keeps its key (even threads the active key, odd
    // the next one), so batches mix both keys. Phase 2: every fourth request is forged.
    let keyed = |t: usize, _r: usize| {
        if t.is_multiple_of(2) {
            Signer::Active
        } else {
            Signer::Next
        }
    };
    let forged = move |t: usize, r: usize| {
        if (t + r) % 4 == 3 {
            Signer::Stranger
        } else {
            keyed(t, r)
        }
    };

    let g = start(&dir, "batch", &pki, &next_b64, "batch");
    let phase1 = rounds(&g, &pki, 12, keyed);
    let ok1 = check(&g, &phase1, &active_id, &next_id);
    assert_eq!(ok1, THREADS * 12);
    let batched = g.metric("vvgate_signature_batched_total");
    let batches = g.metric("vvgate_signature_batches_total");
    assert!(
        batched >= 2 && batches >= 1,
        "concurrent requests formed batches ({batches} batches, {batched} signatures)"
    );
    assert!(batched <= 16 * batches, "at most 16 per batch");
    assert_eq!(
        g.metric("vvgate_signature_batch_failures_total"),
        0,
        "no batch of valid signatures fails (the key of each connection is known after its first request)"
    );
    let phase2 = rounds(&g, &pki, 8, forged);
    let ok2 = check(&g, &phase2, &active_id, &next_id);
    assert_eq!(ok2, THREADS * 8 * 3 / 4);
    assert_eq!(
        g.spool().len(),
        ok1 + ok2,
        "only accepted events are spooled"
    );
    assert!(g.metric("vvgate_signature_batched_total") >= batched);

    // The same traffic verified one by one gives the same answers and never batches.
    let g = start(&dir, "single", &pki, &next_b64, "single");
    let outcomes = rounds(&g, &pki, 6, forged);
    let ok = check(&g, &outcomes, &active_id, &next_id);
    assert_eq!(ok, THREADS * 6 * 3 / 4);
    assert_eq!(g.spool().len(), ok);
    assert_eq!(g.metric("vvgate_signature_batches_total"), 0);
    assert_eq!(
        g.metric("vvgate_signature_single_total"),
        u64::try_from(THREADS * 6).unwrap_or(0)
    );
}
