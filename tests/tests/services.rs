//! Federation verify, the cognitive routes and evidence envelopes against the real daemon over
//! mutual TLS: CONTRACT.md §7, §8, §9 and §13 rows 57–69 and 72. Every refusal is checked for
//! its status, its reason and its audit entry; feedback responses are verified by an
//! independent Python verifier (the producer's checks) with the `cryptography` package.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use vvgate::client::{post_request, Producer, ProducerHeaders};
use vvgate_e2e::*;

const FEDERATION: &str = "/internal/v1/federation/verify";
const GRAPH: &str = "/internal/v1/cognitive/execution-graph";
const FEEDBACK: &str = "/internal/v1/cognitive/feedback/adjustments/query";
const T1: &str = "10000000-0000-0000-0000-000000000001";
const T2: &str = "20000000-0000-0000-0000-000000000002";
const KID: &str = "vv-fb-e2e";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A gateway with the dev feedback key configured as the active key.
fn gateway(extra: &str) -> Gateway {
    let dir = temp_dir("svc");
    let pki = Pki::new(&dir.join("pki"));
    let opts = Opts::default()
        .with(&format!("feedback_active_kid = \"{KID}\""))
        .with(&format!(
            "feedback_ed25519_keys = {{ \"{KID}\" = \"file:{}\" }}",
            pki.path("feedback.pem").display()
        ))
        .with(extra);
    Gateway::start_in(dir, pki, opts)
}

struct Answer {
    status: u16,
    body: Value,
    raw: String,
    id: String,
}

impl Answer {
    fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }
}

fn send_as(g: &Gateway, p: &Producer, path: &str, h: &ProducerHeaders, body: &[u8]) -> Answer {
    let mut c = g.connect_as(p);
    let r = c
        .send(&post_request(path, "localhost", h, body))
        .expect("response");
    Answer {
        status: r.status,
        body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        raw: r.body_text(),
        id: r.header("x-request-id").unwrap_or_default().to_owned(),
    }
}

/// Sign `body` for `ts`/`nonce` as producer P and post it to `path`.
fn post(g: &Gateway, path: &str, ts: u64, nonce: &str, body: &[u8]) -> Answer {
    let p = g.pki.producer();
    let h = p.headers(ts, nonce, body, None);
    send_as(g, &p, path, &h, body)
}

/// Post a body with only the identity headers (federation verify needs no signed headers).
fn post_unsigned(g: &Gateway, path: &str, body: &[u8]) -> Answer {
    let p = g.pki.producer();
    let h = ProducerHeaders {
        identity: p.identity.clone(),
        cert_sha256: p.cert_sha256.clone(),
        ..Default::default()
    };
    let mut req = post_request(path, "localhost", &h, body);
    // Drop the empty signed headers.
    let text = String::from_utf8_lossy(&req).into_owned();
    let head_end = text.find("\r\n\r\n").expect("head");
    let head: String = text[..head_end]
        .lines()
        .filter(|l| !l.starts_with("X-Telemetry-"))
        .collect::<Vec<_>>()
        .join("\r\n");
    req = [head.as_bytes(), b"\r\n\r\n", body].concat();
    let mut c = g.connect_as(&p);
    let r = c.send(&req).expect("response");
    Answer {
        status: r.status,
        body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        raw: r.body_text(),
        id: r.header("x-request-id").unwrap_or_default().to_owned(),
    }
}

/// The audit entry of a request: its event type and status code.
fn audited(g: &Gateway, a: &Answer) -> (String, i64) {
    let e = g
        .audit_for(&a.id)
        .unwrap_or_else(|| panic!("no audit entry for {}", a.id));
    (
        e["event_type"].as_str().unwrap_or_default().to_owned(),
        e["details"]["status_code"].as_i64().unwrap_or(0),
    )
}

fn assert_refused(g: &Gateway, a: &Answer, status: u16, detail: &str, event: &str) {
    assert_eq!((a.status, a.detail()), (status, detail), "{}", a.body);
    assert_eq!(audited(g, a), (event.to_owned(), i64::from(status)));
}

fn bundle(key: &Ed25519KeyPair, ts: u64, nonce: &str) -> (Value, String) {
    let exec = "ab".repeat(32);
    let msg = format!("op-001|cmp-001|{exec}|{ts}|{nonce}");
    let sig = B64.encode(key.sign(msg.as_bytes()));
    let hash = vvgate::ids::hex32(&vvgate::ids::sha256(msg.as_bytes())).to_string();
    (
        json!({"bundle": {"operator_id": "op-001", "campaign_id": "cmp-001", "execution_hash": exec,
            "timestamp": ts, "nonce": nonce, "signature": sig}}),
        hash,
    )
}

fn producer_key(g: &Gateway) -> Ed25519KeyPair {
    vvgate::client::signing_key(&g.pki.path("producer-signing.seed")).expect("producer key")
}

#[test]
fn federation_verify_red_team() {
    let g = gateway("");
    let key = producer_key(&g);
    let n = format!("fed-{}", nonce());
    let (b, hash) = bundle(&key, now(), &n);
    let body = serde_json::to_vec(&b).unwrap();

    // Row 68: accepted, with the bundle hash; audited.
    let a = post_unsigned(&g, FEDERATION, &body);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"accepted": true, "bundle_hash": hash}));
    let e = g.audit_for(&a.id).expect("audit");
    assert_eq!(e["event_type"], "federation.accepted");
    assert_eq!(e["details"]["bundle_hash"], hash.as_str());

    // Row 69: replay; another key; an extra field (both levels); 301 s old.
    let a = post_unsigned(&g, FEDERATION, &body);
    assert_refused(
        &g,
        &a,
        409,
        "Replay detected: federation bundle nonce already used",
        "federation.rejected",
    );
    assert_eq!(
        a.body["original"]["accepted"], true,
        "identical re-send names the original"
    );
    let other = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
    let (b2, _) = bundle(&other, now(), &format!("fed-{}", nonce()));
    let a = post_unsigned(&g, FEDERATION, &serde_json::to_vec(&b2).unwrap());
    assert_refused(
        &g,
        &a,
        401,
        "Federation proof-of-origin verification failed",
        "federation.rejected",
    );
    let (mut b3, _) = bundle(&key, now(), &format!("fed-{}", nonce()));
    b3["bundle"]["extra"] = json!(1);
    let a = post_unsigned(&g, FEDERATION, &serde_json::to_vec(&b3).unwrap());
    assert_refused(
        &g,
        &a,
        422,
        "Federation bundle schema validation failed",
        "federation.rejected",
    );
    let (mut b4, _) = bundle(&key, now(), &format!("fed-{}", nonce()));
    b4["extra"] = json!(1);
    let a = post_unsigned(&g, FEDERATION, &serde_json::to_vec(&b4).unwrap());
    assert_refused(
        &g,
        &a,
        422,
        "Federation bundle schema validation failed",
        "federation.rejected",
    );
    let (b5, _) = bundle(&key, now() - 301, &format!("fed-{}", nonce()));
    let a = post_unsigned(&g, FEDERATION, &serde_json::to_vec(&b5).unwrap());
    assert_refused(
        &g,
        &a,
        401,
        "Federation bundle timestamp out of allowed clock skew",
        "federation.rejected",
    );
    // A field changed after signing.
    let (mut b6, _) = bundle(&key, now(), &format!("fed-{}", nonce()));
    b6["bundle"]["campaign_id"] = json!("cmp-002");
    let a = post_unsigned(&g, FEDERATION, &serde_json::to_vec(&b6).unwrap());
    assert_refused(
        &g,
        &a,
        401,
        "Federation proof-of-origin verification failed",
        "federation.rejected",
    );
    // Another service's certificate claiming the producer's identity and fingerprint.
    let q = g.pki.producer_as("other", "spectrastrike-producer");
    let h = ProducerHeaders {
        identity: "spectrastrike-producer".into(),
        cert_sha256: g.pki.producer_pin.clone(),
        ..Default::default()
    };
    let (b7, _) = bundle(&key, now(), &format!("fed-{}", nonce()));
    let a = send_as(&g, &q, FEDERATION, &h, &serde_json::to_vec(&b7).unwrap());
    assert_refused(
        &g,
        &a,
        401,
        "Service identity certificate fingerprint mismatch",
        "federation.rejected",
    );
    // Row 57: 1048577 bytes; text/plain; GET.
    let big = vec![b' '; 1_048_577];
    let a = post_unsigned(&g, FEDERATION, &big);
    assert_refused(
        &g,
        &a,
        413,
        "Request payload exceeds 1MiB limit",
        "federation.rejected",
    );
    let mut c = g.connect();
    let r = c
        .send(b"POST /internal/v1/federation/verify HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    assert_eq!(r.status, 415);
    assert_eq!(json(&r)["detail"], "Endpoint only accepts application/json");
    let r = c
        .send(b"GET /internal/v1/federation/verify HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));

    // Federation nonces are their own namespace: telemetry with the bundle's (ts, nonce) passes.
    let (b8, _) = bundle(&key, now(), &format!("fed-{}", nonce()));
    let ts = b8["bundle"]["timestamp"].as_u64().unwrap();
    let fed_nonce = b8["bundle"]["nonce"].as_str().unwrap().to_owned();
    assert_eq!(
        post_unsigned(&g, FEDERATION, &serde_json::to_vec(&b8).unwrap()).status,
        200
    );
    let ev = event_with(ts, &fed_nonce, |_| {});
    let mut c = g.connect();
    let r = c.send(&request(&g.pki.producer(), &ev)).unwrap();
    assert_eq!(r.status, 202, "{}", r.body_text());
}

fn graph(ts: u64, nonce: &str, tenant: &str, op: &str, nodes: usize, urn: &str) -> Vec<u8> {
    let fp = "0C40DBD5295BC42311CB7F980880D9407E386BCA6F83639DE3A38144A037E6CD";
    let nodes: Vec<Value> = (0..nodes)
        .map(|i| json!({"id": format!("n{i}"), "type": "step"}))
        .collect();
    serde_json::to_vec(&json!({
        "operator_id": op, "tenant_id": tenant, "execution_fingerprint": fp,
        "timestamp": ts, "nonce": nonce, "schema_version": "execution.graph.v1",
        "attestation_measurement_hash": "5c83f7d75de535ed4e51f088c71824dc6b2c2d3080e5de24b67eb5daa259fe10",
        "graph": {"graph_id": "g-1", "tenant_id": tenant, "execution_fingerprint": fp,
                  "operator_id": op, "nodes": nodes, "edges": [], "target_urn": urn}
    }))
    .unwrap()
}

fn query(ts: u64, nonce: &str, tenant: &str, op: &str, limit: Option<u64>) -> Vec<u8> {
    let mut v = json!({"operator_id": op, "tenant_id": tenant, "timestamp": ts, "nonce": nonce});
    if let Some(l) = limit {
        v["limit"] = json!(l);
    }
    serde_json::to_vec(&v).unwrap()
}

/// Post a graph (or query) body built for a fresh `(now, nonce)`.
fn fresh(g: &Gateway, path: &str, make: impl FnOnce(u64, &str) -> Vec<u8>) -> Answer {
    let (ts, n) = (now(), nonce());
    post(g, path, ts, &n, &make(ts, &n))
}

fn feedback_public_key(g: &Gateway) -> [u8; 32] {
    let pem = std::fs::read(g.pki.path("feedback.pem")).unwrap();
    let pair = vvgate_hsm::file::ed25519_from_bytes(&pem).unwrap();
    pair.public_key().as_ref().try_into().unwrap()
}

/// The signed string of §8.2, rebuilt from the response as the producer does.
fn rebuilt(resp: &Value, tenant: &str) -> Vec<u8> {
    let data = vvgate::keys::cjson(&resp["data"]).unwrap();
    let mut s = format!(
        "{tenant}|{}|{}|{}|{}|",
        resp["signed_at"],
        resp["nonce"].as_str().unwrap(),
        resp["schema_version"].as_str().unwrap(),
        resp["kid"].as_str().unwrap()
    )
    .into_bytes();
    s.extend_from_slice(&data);
    s
}

#[test]
fn execution_graph_and_feedback_red_team() {
    let g = gateway("");
    // Row 58: accepted.
    let a = fresh(&g, GRAPH, |ts, n| {
        graph(ts, n, T1, "op-001", 8, "urn:target:ip:10.0.0.5")
    });
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"request_id": a.id, "status": "accepted", "data": {"graph_synced": true}, "errors": []})
    );
    let e = g.audit_for(&a.id).unwrap();
    assert_eq!(e["event_type"], "cognitive.graph.accepted");
    assert_eq!(
        e["details"]["execution_fingerprint"],
        "0c40dbd5295bc42311cb7f980880d9407e386bca6f83639de3a38144a037e6cd"
    );

    // Row 63: the signed feedback response.
    let a = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T1, "op-001", None));
    assert_eq!(a.status, 200, "{}", a.body);
    let order = [
        "\"request_id\":",
        "\"status\":",
        "\"data\":",
        "\"errors\":",
        "\"signature\":",
        "\"kid\":",
        "\"signature_algorithm\":",
        "\"signed_at\":",
        "\"nonce\":",
        "\"schema_version\":\"feedback.response.v1\"}",
    ];
    let pos: Vec<usize> = order.iter().map(|k| a.raw.rfind(k).expect(k)).collect();
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "response keys in the contract's order: {}",
        a.raw
    );
    assert!(a.raw.starts_with("{\"request_id\":"));
    assert_eq!(a.body["data"][0]["action"], "tighten");
    assert_eq!(a.body["data"][0]["confidence"], 0.82);
    assert_eq!(a.body["data"][0]["target_urn"], "urn:target:ip:10.0.0.5");
    assert_eq!(a.body["kid"], KID);
    assert_eq!(a.body["nonce"].as_str().unwrap().len(), 24);
    let sig = B64.decode(a.body["signature"].as_str().unwrap()).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, feedback_public_key(&g))
        .verify(&rebuilt(&a.body, T1), &sig)
        .expect("feedback signature verifies");
    let e = g.audit_for(&a.id).unwrap();
    assert_eq!(e["event_type"], "cognitive.feedback.issued");
    assert_eq!(e["details"]["adjustment_count"], 1);
    assert_eq!(e["details"]["response_nonce"], a.body["nonce"]);

    // Rows 59–62 and the red-team cases of the graph route.
    let a = fresh(&g, GRAPH, |ts, n| {
        let mut v: Value = serde_json::from_slice(&graph(ts, n, T1, "op-001", 1, "urn:x")).unwrap();
        v["schema_version"] = json!("execution.graph.v0");
        serde_json::to_vec(&v).unwrap()
    });
    assert_refused(
        &g,
        &a,
        422,
        "Execution graph schema version is not allowed",
        "cognitive.graph.rejected",
    );
    let a = fresh(&g, GRAPH, |ts, n| {
        let mut v: Value = serde_json::from_slice(&graph(ts, n, T1, "op-001", 1, "urn:x")).unwrap();
        v["extra"] = json!(true);
        serde_json::to_vec(&v).unwrap()
    });
    assert_refused(
        &g,
        &a,
        422,
        "Execution graph schema validation failed",
        "cognitive.graph.rejected",
    );
    let a = post(&g, GRAPH, now(), &nonce(), b"");
    assert_refused(
        &g,
        &a,
        422,
        "Request payload is required",
        "cognitive.graph.rejected",
    );
    let a = fresh(&g, GRAPH, |ts, n| graph(ts, n, T1, "op-001", 4097, "urn:x"));
    assert_refused(
        &g,
        &a,
        422,
        "Execution graph exceeds size limits",
        "cognitive.graph.rejected",
    );
    let a = fresh(&g, GRAPH, |ts, n| graph(ts, n, T2, "op-001", 1, "urn:x"));
    assert_refused(
        &g,
        &a,
        403,
        "Operator tenant mapping violation",
        "cognitive.graph.rejected",
    );
    // Invalid signature: the body changed after signing.
    let (ts, n) = (now(), nonce());
    let body = graph(ts, &n, T1, "op-001", 1, "urn:x");
    let p = g.pki.producer();
    let h = p.headers(ts, &n, &body, None);
    let tampered = graph(ts, &n, T1, "op-001", 2, "urn:x");
    let a = send_as(&g, &p, GRAPH, &h, &tampered);
    assert_refused(
        &g,
        &a,
        401,
        "Invalid telemetry signature",
        "cognitive.graph.rejected",
    );
    // Stale.
    let (ts, n) = (now() - 31, nonce());
    let a = post(&g, GRAPH, ts, &n, &graph(ts, &n, T1, "op-001", 1, "urn:x"));
    assert_refused(
        &g,
        &a,
        401,
        "Telemetry timestamp out of allowed clock skew",
        "cognitive.graph.rejected",
    );
    // Replay of an accepted graph (identical re-send).
    let (ts, n) = (now(), nonce());
    let body = graph(ts, &n, T1, "op-001", 2, "urn:x");
    let first = post(&g, GRAPH, ts, &n, &body);
    assert_eq!(first.status, 202);
    let a = post(&g, GRAPH, ts, &n, &body);
    assert_refused(
        &g,
        &a,
        409,
        "Replay detected: nonce already used",
        "cognitive.graph.rejected",
    );
    assert_eq!(a.body["original"]["request_id"], first.id.as_str());
    // Oversized body.
    let big = vec![b' '; 1_048_577];
    let a = post(&g, GRAPH, now(), &nonce(), &big);
    assert_refused(
        &g,
        &a,
        413,
        "Request payload exceeds 1MiB limit",
        "cognitive.graph.rejected",
    );
    // Row 67: a telemetry nonce is burned for the graph route too (shared namespace).
    let ev = valid();
    let mut c = g.connect();
    assert_eq!(
        c.send(&request(&g.pki.producer(), &ev)).unwrap().status,
        202
    );
    let a = post(
        &g,
        GRAPH,
        ev.ts,
        &ev.nonce,
        &graph(ev.ts, &ev.nonce, T1, "op-001", 1, "urn:x"),
    );
    assert_refused(
        &g,
        &a,
        409,
        "Replay detected: nonce already used",
        "cognitive.graph.rejected",
    );

    // Rows 64–65 and the red-team cases of the query route.
    let a = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T1, "op-001", Some(0)));
    assert_refused(
        &g,
        &a,
        422,
        "Feedback query schema validation failed",
        "cognitive.feedback.rejected",
    );
    let a = fresh(&g, FEEDBACK, |ts, n| {
        let mut v: Value = serde_json::from_slice(&query(ts, n, T1, "op-001", None)).unwrap();
        v["extra"] = json!(1);
        serde_json::to_vec(&v).unwrap()
    });
    assert_refused(
        &g,
        &a,
        422,
        "Feedback query schema validation failed",
        "cognitive.feedback.rejected",
    );
    let (ts, n) = (now(), nonce());
    let body = query(ts, &n, T1, "op-001", Some(5));
    assert_eq!(post(&g, FEEDBACK, ts, &n, &body).status, 200);
    let a = post(&g, FEEDBACK, ts, &n, &body);
    assert_refused(
        &g,
        &a,
        409,
        "Replay detected: nonce already used",
        "cognitive.feedback.rejected",
    );
    assert!(
        a.body.get("original").is_none(),
        "a feedback re-send is a plain replay"
    );
    let a = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T2, "op-001", None));
    assert_refused(
        &g,
        &a,
        403,
        "Operator tenant mapping violation",
        "cognitive.feedback.rejected",
    );
    let a = post_unsigned(&g, FEEDBACK, &query(now(), &nonce(), T1, "op-001", None));
    assert_refused(
        &g,
        &a,
        401,
        "Missing required header: X-Telemetry-Timestamp",
        "cognitive.feedback.rejected",
    );
    let (ts, n) = (now() + 31, nonce());
    let a = post(&g, FEEDBACK, ts, &n, &query(ts, &n, T1, "op-001", None));
    assert_refused(
        &g,
        &a,
        401,
        "Telemetry timestamp out of allowed clock skew",
        "cognitive.feedback.rejected",
    );
    let (ts, n) = (now(), nonce());
    let body = query(ts, &n, T1, "op-001", None);
    let mut h = g.pki.producer().headers(ts, &n, &body, None);
    h.signature = B64.encode([0u8; 64]);
    let a = send_as(&g, &g.pki.producer(), FEEDBACK, &h, &body);
    assert_refused(
        &g,
        &a,
        401,
        "Invalid telemetry signature",
        "cognitive.feedback.rejected",
    );
    let a = post(&g, FEEDBACK, now(), &nonce(), &vec![b' '; 1_048_577]);
    assert_refused(
        &g,
        &a,
        413,
        "Request payload exceeds 1MiB limit",
        "cognitive.feedback.rejected",
    );
}

#[test]
fn a_tenant_never_reads_another_tenants_graphs() {
    let g = gateway("graph_retention_per_tenant = 3");
    for i in 0..5 {
        let urn = format!("urn:t1:{i}");
        let a = fresh(&g, GRAPH, |ts, n| graph(ts, n, T1, "op-001", 1, &urn));
        assert_eq!(a.status, 202);
    }
    let a = fresh(&g, GRAPH, |ts, n| graph(ts, n, T2, "op-002", 9, "urn:t2:0"));
    assert_eq!(a.status, 202);
    let urns = |a: &Answer| -> Vec<String> {
        a.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["target_urn"].as_str().unwrap().to_owned())
            .collect()
    };
    // Tenant 1 sees its newest three (retention), oldest first; tenant 2 only its own.
    let q1 = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T1, "op-001", None));
    assert_eq!(urns(&q1), ["urn:t1:2", "urn:t1:3", "urn:t1:4"]);
    assert!(q1.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["tenant_id"] == T1));
    let q2 = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T2, "op-002", None));
    assert_eq!(urns(&q2), ["urn:t2:0"]);
    assert_eq!(q2.body["data"][0]["action"], "tighten");
    let q = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T1, "op-001", Some(2)));
    assert_eq!(urns(&q), ["urn:t1:3", "urn:t1:4"]);
    // Each operator asking for the other's tenant is refused; nothing leaks in the body.
    for (tenant, op) in [(T1, "op-002"), (T2, "op-001")] {
        let a = fresh(&g, FEEDBACK, |ts, n| query(ts, n, tenant, op, None));
        assert_eq!(a.status, 403);
        assert_eq!(
            a.body,
            json!({"detail": "Operator tenant mapping violation"})
        );
    }
    // An unmapped operator with a real tenant.
    let a = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T1, "op-999", None));
    assert_eq!(
        (a.status, a.detail()),
        (403, "Operator is not mapped to any tenant")
    );
}

fn python_verify(dir: &std::path::Path, resp: &Value, pk: &str, now: Option<u64>) -> String {
    let file = dir.join(format!("resp-{}.json", nonce()));
    std::fs::write(&file, serde_json::to_vec(resp).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/verify_feedback.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--public-key", pk, "--kid", KID, "--tenant", T1])
        .arg("--cache")
        .arg(dir.join("nonce-cache.json"))
        .arg(&file);
    if let Some(n) = now {
        cmd.args(["--now", &n.to_string()]);
    }
    let out = cmd.output().expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_producer_verifies_our_feedback_responses() {
    let g = gateway("");
    for nodes in [8, 2] {
        let a = fresh(&g, GRAPH, |ts, n| {
            graph(ts, n, T1, "op-001", nodes, "urn:target:ip:10.0.0.5")
        });
        assert_eq!(a.status, 202);
    }
    let a = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T1, "op-001", None));
    assert_eq!(a.status, 200);
    let resp = a.body.clone();
    let pk = B64.encode(feedback_public_key(&g));
    let dir = temp_dir("pyverify");

    // Genuine: accepted once; the same response again is a replay.
    assert_eq!(python_verify(&dir, &resp, &pk, None), "accepted");
    assert_eq!(
        python_verify(&dir, &resp, &pk, None),
        "rejected: replayed nonce"
    );
    // A fresh response for another scenario each time (the cache remembers nonces).
    let fresh_resp = || fresh(&g, FEEDBACK, |ts, n| query(ts, n, T1, "op-001", None)).body;
    // Tampered data (an action changed), tampered signed_at, another kid's signature.
    let mut t = fresh_resp();
    t["data"][1]["action"] = json!("tighten");
    assert_eq!(
        python_verify(&dir, &t, &pk, None),
        "rejected: invalid signature"
    );
    let mut t = fresh_resp();
    t["signed_at"] = json!(t["signed_at"].as_u64().unwrap() - 1);
    assert_eq!(
        python_verify(&dir, &t, &pk, None),
        "rejected: invalid signature"
    );
    let t = fresh_resp();
    let other = B64.encode([1u8; 32]);
    assert!(python_verify(&dir, &t, &other, None).starts_with("rejected"));
    // Unsigned.
    let mut t = fresh_resp();
    t.as_object_mut().unwrap().remove("signature");
    assert_eq!(
        python_verify(&dir, &t, &pk, None),
        "rejected: unsigned or incomplete response"
    );
    // Stale: verified 301 s after it was signed.
    let t = fresh_resp();
    let late = t["signed_at"].as_u64().unwrap() + 301;
    assert_eq!(
        python_verify(&dir, &t, &pk, Some(late)),
        "rejected: stale response"
    );
    // The same untouched response is still accepted within the window.
    assert_eq!(python_verify(&dir, &t, &pk, None), "accepted");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_feedback_key_fails_only_the_feedback_route() {
    let g = Gateway::start();
    let a = fresh(&g, FEEDBACK, |ts, n| query(ts, n, T1, "op-001", None));
    assert_refused(
        &g,
        &a,
        503,
        "Feedback signing key load failed",
        "cognitive.feedback.rejected",
    );
    let mut c = g.connect();
    assert_eq!(
        c.send(&request(&g.pki.producer(), &valid()))
            .unwrap()
            .status,
        202
    );
    let a = fresh(&g, GRAPH, |ts, n| graph(ts, n, T1, "op-001", 1, "urn:x"));
    assert_eq!(a.status, 202);
}

#[test]
fn vvctl_evidence_seal_open_rotation_and_tamper() {
    let dir = temp_dir("evidence");
    let pki = Pki::new(&dir.join("pki"));
    let kek2 = pki.path("evidence-kek-v2.bin");
    std::fs::write(&kek2, [0x5a; 32]).unwrap();
    std::fs::set_permissions(&kek2, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = dir.join("vvgate.toml");
    let write_config = |active: &str, with_v2: bool| {
        let mut keys = format!(
            "\"vv-evidence-kek-v1\" = \"file:{}\"",
            pki.path("evidence-kek.bin").display()
        );
        if with_v2 {
            keys.push_str(&format!(
                ", \"vv-evidence-kek-v2\" = \"file:{}\"",
                kek2.display()
            ));
        }
        let opts = Opts {
            extra_toml: format!("[evidence]\nactive_key_id = \"{active}\"\nkeys = {{ {keys} }}\n"),
            ..Opts::default()
        };
        std::fs::write(&config, config_text(&dir, &pki, &opts)).unwrap();
    };
    let cfg = config.to_str().unwrap().to_owned();
    let blob = dir.join("blob.bin");
    std::fs::write(&blob, b"{\"finding\":\"critical\"}\x00\xff").unwrap();
    let seal = |blob_id: &str, out: &std::path::Path| {
        let r = vvctl(&[
            "evidence",
            "seal",
            "--config",
            &cfg,
            "--tenant",
            T1,
            "--blob-id",
            blob_id,
            "--in",
            blob.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(r.0, 0, "{}", r.2);
    };
    let open = |env: &std::path::Path, tenant: &str, blob_id: Option<&str>| {
        let mut args = vec![
            "evidence",
            "open",
            "--config",
            &cfg,
            "--tenant",
            tenant,
            "--in",
            env.to_str().unwrap(),
        ];
        if let Some(b) = blob_id {
            args.extend(["--blob-id", b]);
        }
        let out = Command::new(bin("vvctl")).args(&args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let plain = std::fs::read(&blob).unwrap();

    write_config("vv-evidence-kek-v1", false);
    let env1 = dir.join("env1.json");
    seal("blob-0001", &env1);
    let v: Value = serde_json::from_slice(&std::fs::read(&env1).unwrap()).unwrap();
    assert_eq!(v["version"], "vv-evidence-env-v2");
    assert_eq!(v["key_id"], "vv-evidence-kek-v1");
    assert!(!String::from_utf8_lossy(&std::fs::read(&env1).unwrap()).contains("critical"));
    let (code, out, err) = open(&env1, T1, Some("blob-0001"));
    assert_eq!((code, out.as_slice()), (0, plain.as_slice()), "{err}");

    // Rotation: v2 becomes active; the v1 envelope still opens, the new one names v2.
    write_config("vv-evidence-kek-v2", true);
    let env2 = dir.join("env2.json");
    seal("blob-0002", &env2);
    let v2: Value = serde_json::from_slice(&std::fs::read(&env2).unwrap()).unwrap();
    assert_eq!(v2["key_id"], "vv-evidence-kek-v2");
    assert_eq!(open(&env1, T1, None).1, plain);
    assert_eq!(open(&env2, T1, None).1, plain);

    // Tamper: each fails closed with the contract's reason and no plaintext.
    let tampered = |f: &dyn Fn(&mut Value)| {
        let mut e = v.clone();
        f(&mut e);
        let p = dir.join(format!("t-{}.json", nonce()));
        std::fs::write(&p, serde_json::to_vec(&e).unwrap()).unwrap();
        p
    };
    let auth = "Evidence envelope authentication failed";
    let cases: Vec<(std::path::PathBuf, &str, &str)> = vec![
        (
            tampered(&|e| {
                let mut ct = B64.decode(e["ciphertext_b64"].as_str().unwrap()).unwrap();
                ct[3] ^= 0x80;
                e["ciphertext_b64"] = B64.encode(ct).into();
            }),
            T1,
            auth,
        ),
        (tampered(&|e| e["blob_id"] = "blob-0002".into()), T1, auth),
        (
            tampered(&|e| e["key_id"] = "vv-evidence-kek-v2".into()),
            T1,
            auth,
        ),
        (
            tampered(&|e| e["key_id"] = "vv-evidence-kek-v7".into()),
            T1,
            "Evidence key not found",
        ),
        (
            tampered(&|e| e["version"] = "vv-evidence-env-v9".into()),
            T1,
            "Unsupported evidence envelope version",
        ),
        (env1.clone(), T2, "Tenant mismatch for evidence envelope"),
    ];
    for (path, tenant, reason) in cases {
        let (code, out, err) = open(&path, tenant, None);
        assert_eq!(code, 1, "{reason}: {err}");
        assert!(out.is_empty(), "no plaintext on failure");
        assert_eq!(err.trim(), format!("vvctl: {reason}"));
    }
    // The envelope's blob id must be the one asked for.
    let (code, _, err) = open(&env1, T1, Some("blob-0002"));
    assert_eq!(
        (code, err.trim()),
        (1, "vvctl: Evidence envelope authentication failed")
    );

    // Row 72: the upstream v1 vector with root key `A`×32, given explicitly.
    let v1 = json!({
        "version": "vv-evidence-env-v1", "algorithm": "AES-256-GCM+HKDF-SHA256",
        "key_id": "vv-evidence-root-v1", "tenant_id": T1,
        "wrapped_dek_b64": "/df5ryWTHmSP5Fdfdu94yWZH8AqM48r/rki653jBsipwg/WZ5aaCbEoClVPlaC0k",
        "dek_wrap_nonce_b64": "MzMzMzMzMzMzMzMz", "data_nonce_b64": "IiIiIiIiIiIiIiIi",
        "ciphertext_b64": "bNVhIK6r9jGCHeQeK9SAoXbwrI5IrY4uJCZujWeCACF/XcluPMrbo77D3wXxE8MYH+D5jaVRUIA="
    });
    let v1_path = dir.join("v1.json");
    std::fs::write(&v1_path, serde_json::to_vec(&v1).unwrap()).unwrap();
    let root = dir.join("root.b64");
    std::fs::write(&root, B64.encode([b'A'; 32])).unwrap();
    let out = Command::new(bin("vvctl"))
        .args([
            "evidence",
            "open",
            "--tenant",
            T1,
            "--in",
            v1_path.to_str().unwrap(),
            "--v1-root-key-file",
            root.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.stdout, br#"{"finding":"critical","evidence":"blob"}"#);
    // Without the root key the configured KEKs do not open it.
    assert_eq!(
        open(&v1_path, T1, None).2.trim(),
        "vvctl: Unsupported evidence envelope version"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
