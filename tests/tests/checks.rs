//! The check chain of POST /internal/v1/telemetry against the real daemon over mutual TLS:
//! CONTRACT.md §13 rows 1–45 and 52, each with its status, reason, and what is (not) stored
//! and audited.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use vvgate::client::{post_request, ProducerHeaders};
use vvgate_e2e::*;

const TELEMETRY: &str = "/internal/v1/telemetry";

/// A change to a request's headers.
type Edit = Box<dyn Fn(&mut ProducerHeaders)>;

fn headers(g: &Gateway, s: &Signed) -> ProducerHeaders {
    g.pki.producer().headers(s.ts, &s.nonce, &s.body, None)
}

/// Send a request with edited headers and return (status, detail, request id).
fn send_with(
    g: &Gateway,
    s: &Signed,
    edit: impl FnOnce(&mut ProducerHeaders),
) -> (u16, String, String) {
    let mut h = headers(g, s);
    edit(&mut h);
    let mut c = g.connect();
    let r = c
        .send(&post_request(TELEMETRY, "localhost", &h, &s.body))
        .expect("response");
    let v = json(&r);
    let id = r.header("x-request-id").unwrap_or_default().to_owned();
    (
        r.status,
        v["detail"].as_str().unwrap_or_default().to_owned(),
        id,
    )
}

/// Send raw request text (head and body) and return (status, detail).
fn send_raw(g: &Gateway, raw: &[u8]) -> (u16, String) {
    let mut c = g.connect();
    let r = c.send(raw).expect("response");
    (
        r.status,
        json(&r)["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

fn assert_rejected(g: &Gateway, id: &str, status: u16, detail: &str) {
    let e = g
        .audit_for(id)
        .unwrap_or_else(|| panic!("no audit entry for {id}"));
    assert_eq!(e["event_type"], "telemetry.rejected");
    assert_eq!(e["details"]["status_code"], status);
    assert_eq!(e["details"]["detail"], detail);
}

#[test]
fn valid_event_is_accepted_spooled_and_audited() {
    let g = Gateway::start();
    let s = valid();
    let mut c = g.connect();
    let r = c.send(&request(&g.pki.producer(), &s)).unwrap();
    assert_eq!(r.status, 202, "{}", r.body_text());
    let v = json(&r);
    assert_eq!(v["accepted"], true);
    let id = v["request_id"].as_str().unwrap();
    assert_eq!(r.header("x-request-id"), Some(id));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // The request is in the latency histogram (one observation, in every bucket up to +Inf).
    let m = g.ops_get("/metrics").body_text();
    assert!(
        m.contains("vvgate_request_duration_seconds_count 1\n")
            && m.contains("vvgate_request_duration_seconds_bucket{le=\"+Inf\"} 1\n")
            && m.contains("vvgate_request_duration_seconds_bucket{le=\"5.000000\"} 1\n"),
        "{m}"
    );

    // One ingest envelope whose integrity hash a consumer can recompute.
    let spool = g.spool();
    assert_eq!(spool.len(), 1);
    let env = &spool[0]["body"];
    assert_eq!(env["kind"], "ingest");
    assert_eq!(env["payload"]["nonce"], s.nonce.as_str());
    let payload = vvgate::client::canonical(&env["payload"]).unwrap();
    assert_eq!(
        env["integrity_hash"].as_str().unwrap(),
        vvgate::ids::hex32(&vvgate::ids::sha256(&payload)).as_str()
    );
    assert_eq!(spool[0]["integrity_hash"], env["integrity_hash"]);

    // telemetry.accepted with the contract's details.
    let e = g.audit_for(id).expect("audit entry");
    assert_eq!(e["event_type"], "telemetry.accepted");
    assert_eq!(e["actor"], "telemetry_gateway");
    let d = &e["details"];
    assert_eq!(d["tenant_id"], "10000000-0000-0000-0000-000000000001");
    assert_eq!(d["operator_id"], "op-001");
    assert_eq!(d["service_identity"], "spectrastrike-producer");
    assert_eq!(d["nonce"], s.nonce.as_str());
    assert_eq!(d["message_id"], env["message_id"]);
    assert_eq!(d["signed_timestamp"], s.ts);
    assert_eq!(
        d["body_sha256"].as_str().unwrap(),
        vvgate::ids::hex32(&vvgate::ids::sha256(&s.body)).as_str()
    );
}

#[test]
fn identity_headers_rows_5_to_11() {
    let g = Gateway::start();
    let s = valid();
    let cases: Vec<(&str, Edit, u16, &str)> = vec![
        (
            "5",
            Box::new(|h| h.identity.clear()),
            401,
            "Missing required header: X-Service-Identity",
        ),
        (
            "5 blank",
            Box::new(|h| h.identity = "   ".into()),
            401,
            "Missing required header: X-Service-Identity",
        ),
        (
            "6",
            Box::new(|h| h.cert_sha256.clear()),
            401,
            "Missing required header: X-Client-Cert-Sha256",
        ),
        (
            "7",
            Box::new(|h| {
                let colons: Vec<String> = h
                    .cert_sha256
                    .as_bytes()
                    .chunks(2)
                    .map(|c| String::from_utf8(c.to_vec()).unwrap())
                    .collect();
                h.cert_sha256 = colons.join(":");
            }),
            401,
            "Invalid client certificate fingerprint format",
        ),
        (
            "8",
            Box::new(|h| h.identity = "unknown-service".into()),
            401,
            "Unknown service identity",
        ),
        (
            "8 no ts",
            Box::new(|h| {
                h.identity = "unknown-service".into();
                h.timestamp.clear();
            }),
            401,
            "Unknown service identity",
        ),
        (
            "9",
            Box::new(|h| h.cert_sha256 = "b".repeat(64)),
            401,
            "Service identity certificate fingerprint mismatch",
        ),
    ];
    for (row, edit, status, detail) in cases {
        let (st, d, id) = send_with(&g, &s, edit);
        assert_eq!((st, d.as_str()), (status, detail), "row {row}");
        assert_rejected(&g, &id, status, detail);
    }
    // Row 11: the fingerprint in uppercase is accepted.
    let (st, d, _) = send_with(&g, &s, |h| h.cert_sha256 = h.cert_sha256.to_uppercase());
    assert_eq!(st, 202, "{d}");
    assert_eq!(g.spool().len(), 1, "only the accepted request is stored");
}

#[test]
fn another_pinned_certificate_cannot_claim_the_producer_row_10() {
    let g = Gateway::start();
    let s = valid();
    // Certificate Q (pinned for other-service) presenting P's fingerprint and identity.
    let q = g.pki.producer_as("other", "spectrastrike-producer");
    let mut h = q.headers(s.ts, &s.nonce, &s.body, None);
    h.cert_sha256 = g.pki.producer_pin.clone();
    let mut c = g.connect_as(&q);
    let r = c
        .send(&post_request(TELEMETRY, "localhost", &h, &s.body))
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        json(&r)["detail"],
        "Service identity certificate fingerprint mismatch"
    );
    let id = r.header("x-request-id").unwrap();
    let e = g.audit_for(id).unwrap();
    assert_eq!(e["details"]["sub_reason"], "presented_certificate_mismatch");
    // Q claiming its own identity with its own pin is not this identity's pin.
    let mut h = q.headers(s.ts, &s.nonce, &s.body, None);
    h.identity = "spectrastrike-producer".into();
    let r = c
        .send(&post_request(TELEMETRY, "localhost", &h, &s.body))
        .unwrap();
    assert_eq!(r.status, 401);
    let e = g.audit_for(r.header("x-request-id").unwrap()).unwrap();
    assert_eq!(e["details"]["sub_reason"], "header_not_pinned");
    assert!(g.spool().is_empty());
}

#[test]
fn signed_headers_rows_12_to_21() {
    let g = Gateway::start();
    let s = valid();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "12",
            Box::new(|h| h.timestamp.clear()),
            "Missing required header: X-Telemetry-Timestamp",
        ),
        (
            "13",
            Box::new(|h| h.nonce.clear()),
            "Missing required header: X-Telemetry-Nonce",
        ),
        (
            "14",
            Box::new(|h| h.signature.clear()),
            "Missing required header: X-Telemetry-Signature",
        ),
        (
            "15",
            Box::new(|h| h.signature = format!("-_{}", &h.signature[2..])),
            "Signature header is not valid base64",
        ),
        (
            "16",
            Box::new(|h| h.timestamp = "12a".into()),
            "Telemetry timestamp must be unix epoch seconds",
        ),
        (
            "16 +",
            Box::new(|h| h.timestamp = format!("+{}", h.timestamp)),
            "Telemetry timestamp must be unix epoch seconds",
        ),
        (
            "16 0",
            Box::new(|h| h.timestamp = format!("0{}", h.timestamp)),
            "Telemetry timestamp must be unix epoch seconds",
        ),
        (
            "19",
            Box::new(|h| h.signature = "QUFBQUE".into()),
            "Malformed signature encoding",
        ),
        (
            "20",
            Box::new(|h| h.signature = "QUFB".into()),
            "Invalid telemetry signature",
        ),
    ];
    for (row, edit, detail) in cases {
        let (st, d, id) = send_with(&g, &s, edit);
        assert_eq!((st, d.as_str()), (401, detail), "row {row}");
        assert_rejected(&g, &id, 401, detail);
    }
    // Row 18: outside the skew window (either side), signed correctly.
    for ts in [now() - 33, now() + 33] {
        let old = event_with(ts, &nonce(), |_| {});
        let (st, d, _) = send_with(&g, &old, |_| {});
        assert_eq!(
            (st, d.as_str()),
            (401, "Telemetry timestamp out of allowed clock skew")
        );
    }
    // Row 17: inside the window on both sides.
    for ts in [now() - 28, now() + 28] {
        let (st, d, _) = send_with(&g, &event_with(ts, &nonce(), |_| {}), |_| {});
        assert_eq!(st, 202, "{d}");
    }
    // Row 21: a body byte changed after signing; signed by another key.
    let tampered = valid();
    let (st, d, _) = send_with(&g, &tampered, |h| {
        let other = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).unwrap();
        h.signature = vvgate::client::sign(&other, tampered.ts, &tampered.nonce, &tampered.body);
    });
    assert_eq!((st, d.as_str()), (401, "Invalid telemetry signature"));
    let mut changed = valid();
    let h = headers(&g, &changed);
    let pos = changed.body.iter().position(|&b| b == b'o').unwrap();
    changed.body[pos] = b'O';
    let r = g
        .connect()
        .send(&post_request(TELEMETRY, "localhost", &h, &changed.body))
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(g.spool().len(), 2, "only rows 17's two requests are stored");
}

#[test]
fn replays_and_resends_rows_22_to_26() {
    let g = Gateway::start();
    let p = g.pki.producer();
    let s = valid();
    let mut c = g.connect();
    let first = c.send(&request(&p, &s)).unwrap();
    assert_eq!(first.status, 202);
    let original = json(&first)["request_id"].as_str().unwrap().to_owned();

    // Row 23: a byte-identical re-send: 409 with the original, nothing spooled.
    let r = c.send(&request(&p, &s)).unwrap();
    assert_eq!(r.status, 409);
    let v = json(&r);
    assert_eq!(v["detail"], "Replay detected: nonce already used");
    assert_eq!(v["original"]["accepted"], true);
    assert_eq!(v["original"]["request_id"], original.as_str());
    let e = g.audit_for(r.header("x-request-id").unwrap()).unwrap();
    assert_eq!(e["details"]["original_request_id"], original.as_str());

    // Row 22: same ts and nonce, another body, validly signed: a plain replay.
    let other = event_with(s.ts, &s.nonce, |v| v["campaign_id"] = "cmp-002".into());
    let r = c.send(&request(&p, &other)).unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(
        r.body_text(),
        r#"{"detail":"Replay detected: nonce already used"}"#
    );

    // Row 25: the same nonce with another timestamp is a new key.
    let later = event_with(s.ts + 1, &s.nonce, |_| {});
    assert_eq!(c.send(&request(&p, &later)).unwrap().status, 202);
    assert_eq!(g.spool().len(), 2);

    // Row 52: a bad signature takes precedence over a used nonce.
    let mut h = headers(&g, &s);
    h.signature = "A".repeat(86) + "==";
    let r = c
        .send(&post_request(TELEMETRY, "localhost", &h, &s.body))
        .unwrap();
    assert_eq!(json(&r)["detail"], "Invalid telemetry signature");
}

#[test]
fn idempotent_retry_answers_the_original_202_row_24() {
    let g = Gateway::start_with(Opts::default().with("idempotent_retry = true"));
    let p = g.pki.producer();
    let s = valid();
    let mut c = g.connect();
    let first = c.send(&request(&p, &s)).unwrap();
    assert_eq!(first.status, 202);
    let again = c.send(&request(&p, &s)).unwrap();
    assert_eq!(again.status, 202);
    assert_eq!(again.body, first.body, "the original body");
    assert_eq!(again.header("x-idempotent-replay"), Some("true"));
    assert_ne!(again.header("x-request-id"), first.header("x-request-id"));
    let e = g.audit_for(again.header("x-request-id").unwrap()).unwrap();
    assert_eq!(e["event_type"], "telemetry.idempotent_replay");
    assert_eq!(
        e["details"]["original_request_id"],
        json(&first)["request_id"]
    );
    assert_eq!(g.spool().len(), 1, "never queued twice");
}

#[test]
fn concurrent_identical_requests_store_one_envelope_row_26() {
    let g = Gateway::start();
    for _ in 0..5 {
        let s = valid();
        let req = request(&g.pki.producer(), &s);
        let mut conns: Vec<_> = (0..4).map(|_| g.connect()).collect();
        for c in &mut conns {
            c.write_raw(&req).unwrap();
        }
        let statuses: Vec<u16> = conns
            .iter_mut()
            .map(|c| c.read_response().unwrap().status)
            .collect();
        assert_eq!(
            statuses.iter().filter(|&&s| s == 202).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|&&s| s == 409).count(),
            3,
            "{statuses:?}"
        );
    }
    assert_eq!(g.spool().len(), 5);
}

fn dlq_entries(g: &Gateway) -> Vec<serde_json::Value> {
    g.spool()
        .into_iter()
        .filter(|e| e["kind"] == "dead_letter")
        .collect()
}

#[test]
fn poison_payloads_go_to_the_dead_letter_queue_rows_27_to_35() {
    let g = Gateway::start();
    let p = g.pki.producer();
    let mut c = g.connect();
    let raw = |body: &[u8]| Signed {
        body: body.to_vec(),
        ts: now(),
        nonce: nonce(),
    };
    let cases: Vec<(&str, Signed, &str, &str)> = vec![
        (
            "27",
            raw(b"{\"a\":1,"),
            "Invalid JSON payload",
            "invalid_json",
        ),
        (
            "28",
            raw(b"{\"a\":\"\xff\"}"),
            "Invalid JSON payload",
            "invalid_json",
        ),
        (
            "29",
            raw(b"[1,2]"),
            "Telemetry schema validation failed",
            "schema_validation_failed",
        ),
        (
            "29 extra",
            event_with(now(), &nonce(), |v| v["extra"] = 1.into()),
            "Telemetry schema validation failed",
            "schema_validation_failed",
        ),
        (
            "32",
            event_with(now(), &nonce(), |v| {
                v["payload"]["mitre_techniques"] = serde_json::json!(["TX9999"])
            }),
            "Canonical telemetry schema validation failed",
            "canonical_schema_failed",
        ),
        (
            "33",
            event_with(now(), &nonce(), |v| {
                v["payload"]["mitre_techniques"] = serde_json::json!(["T9999"])
            }),
            "Canonical telemetry schema validation failed",
            "canonical_schema_failed",
        ),
        (
            "34",
            event_with(now(), &nonce(), |v| {
                v["payload"]["description"] = "UNION SELECT password FROM users".into()
            }),
            "Canonical telemetry schema validation failed",
            "canonical_schema_failed",
        ),
        (
            "34 attr",
            event_with(now(), &nonce(), |v| {
                v["payload"]["attributes"]["q"] = "x' OR 1=1".into()
            }),
            "Canonical telemetry schema validation failed",
            "canonical_schema_failed",
        ),
        (
            "35",
            event_with(now(), &nonce(), |v| {
                v["payload"]["attributes"]
                    .as_object_mut()
                    .unwrap()
                    .remove("attestation_measurement_hash");
            }),
            "Canonical telemetry schema validation failed",
            "canonical_schema_failed",
        ),
    ];
    for (i, (row, s, detail, code)) in cases.iter().enumerate() {
        let r = c.send(&request(&p, s)).unwrap();
        assert_eq!(r.status, 422, "row {row}: {}", r.body_text());
        assert_eq!(json(&r)["detail"], *detail, "row {row}");
        let dlq = dlq_entries(&g);
        assert_eq!(dlq.len(), i + 1, "row {row}: one dead letter each");
        let env = &dlq[i]["body"];
        assert_eq!(env["payload"]["error_code"], *code, "row {row}");
        assert_eq!(env["payload"]["error_message"], *detail);
        assert!(dlq[i]["msg_id"].as_str().unwrap().starts_with("dlq:"));
        assert!(env["trace"]["reason"].is_string());
    }
    let dlq = dlq_entries(&g);
    assert_eq!(dlq[0]["body"]["payload"]["raw_body"], "{\"a\":1,");
    assert_eq!(
        dlq[0]["body"]["trace"],
        serde_json::json!({"reason": "json_decode"})
    );
    assert_eq!(dlq[1]["body"]["payload"]["raw_body"], "eyJhIjoi/yJ9");
    assert_eq!(dlq[2]["body"]["trace"]["reason"], "schema_validation");
    assert!(dlq[2]["body"]["trace"]["errors"]
        .as_array()
        .is_some_and(|e| !e.is_empty()));
    // No ingest envelope, and the nonces are not burned: the same signed bytes fail the same way.
    assert!(g.spool().iter().all(|e| e["kind"] == "dead_letter"));
    let r = c.send(&request(&p, &cases[4].1)).unwrap();
    assert_eq!(r.status, 422, "a 422 leaves the nonce unused");
}

#[test]
fn normalisation_and_sanitising_rows_36_37() {
    let g = Gateway::start();
    let s = event_with(now(), &nonce(), |v| {
        v["payload"]["severity"] = " HIGH ".into();
        v["payload"]["mitre_techniques"] = serde_json::json!([" t1059 "]);
        v["payload"]["description"] = "<script>alert('x')</script>".into();
        v["payload"]["attributes"]["note"] = "<img src=x onerror=alert(1)>".into();
    });
    let r = g.connect().send(&request(&g.pki.producer(), &s)).unwrap();
    assert_eq!(r.status, 202, "{}", r.body_text());
    let env = &g.spool()[0]["body"]["payload"]["payload"];
    assert_eq!(env["severity"], "high");
    assert_eq!(env["mitre_techniques"], serde_json::json!(["T1059"]));
    assert_eq!(
        env["description"],
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    );
    assert_eq!(
        env["attributes"]["note"],
        "&lt;img src=x onerror=alert(1)&gt;"
    );
    assert_eq!(env["observed_at"], "2026-02-26T12:00:00.123456Z");
}

#[test]
fn body_header_and_tenant_checks_rows_30_31_41_to_45() {
    let g = Gateway::start();
    let p = g.pki.producer();
    let mut c = g.connect();
    let cases: Vec<(&str, Signed, u16, &str)> = vec![
        (
            "30",
            event_with(now(), &nonce(), |v| {
                v["timestamp"] = (v["timestamp"].as_u64().unwrap() - 1).into()
            }),
            401,
            "Body timestamp mismatch with signed header",
        ),
        (
            "41",
            event_with(now(), &nonce(), |v| {
                v["signed_metadata"]["operator_id"] = "op-other".into()
            }),
            401,
            "Signed metadata mapping mismatch",
        ),
        (
            "42",
            event_with(now(), &nonce(), |v| {
                v["operator_id"] = "op-zzz".into();
                v["signed_metadata"]["operator_id"] = "op-zzz".into();
            }),
            403,
            "Operator is not mapped to any tenant",
        ),
        (
            "43",
            event_with(now(), &nonce(), |v| {
                v["tenant_id"] = "20000000-0000-0000-0000-000000000002".into();
                v["signed_metadata"]["tenant_id"] = "20000000-0000-0000-0000-000000000002".into();
            }),
            403,
            "Operator tenant mapping violation",
        ),
        (
            "44",
            event_with(now(), &nonce(), |v| {
                v["payload"]["attributes"]
                    .as_object_mut()
                    .unwrap()
                    .remove("schema_version");
            }),
            422,
            "Telemetry schema version is required by gateway policy",
        ),
        (
            "45",
            event_with(now(), &nonce(), |v| {
                v["payload"]["attributes"]["schema_version"] = "9.9".into()
            }),
            422,
            "Telemetry schema version is not allowed",
        ),
        (
            "52 mitre+meta",
            event_with(now(), &nonce(), |v| {
                v["payload"]["mitre_techniques"] = serde_json::json!(["T9999"]);
                v["signed_metadata"]["operator_id"] = "x".into();
            }),
            422,
            "Canonical telemetry schema validation failed",
        ),
        (
            "52 unmapped+version",
            event_with(now(), &nonce(), |v| {
                v["operator_id"] = "op-zzz".into();
                v["signed_metadata"]["operator_id"] = "op-zzz".into();
                v["payload"]["attributes"]["schema_version"] = "9.9".into();
            }),
            403,
            "Operator is not mapped to any tenant",
        ),
    ];
    for (row, s, status, detail) in &cases {
        let r = c.send(&request(&p, s)).unwrap();
        assert_eq!(
            (r.status, json(&r)["detail"].as_str().unwrap()),
            (*status, *detail),
            "row {row}"
        );
        assert_rejected(&g, r.header("x-request-id").unwrap(), *status, detail);
    }
    // Row 31: the body nonce differs from the header nonce.
    let s = valid();
    let mut h = headers(&g, &s);
    h.nonce = nonce();
    h.signature = vvgate::client::sign(&p.key, s.ts, &h.nonce, &s.body);
    let r = c
        .send(&post_request(TELEMETRY, "localhost", &h, &s.body))
        .unwrap();
    assert_eq!(json(&r)["detail"], "Body nonce mismatch with signed header");
    // 401, 403 and the policy 422s store nothing and dead-letter nothing (except row 52's 422).
    let spool = g.spool();
    assert_eq!(spool.len(), 1, "{spool:?}");
    assert_eq!(spool[0]["kind"], "dead_letter");
}

#[test]
fn media_type_size_and_framing_rows_2_to_4_and_55_to_57() {
    let g = Gateway::start_with(Opts::default().with("header_read_timeout_seconds = 1"));
    let p = g.pki.producer();
    let s = valid();
    let h = p.headers(s.ts, &s.nonce, &s.body, None);
    // Row 2.
    let text = String::from_utf8(post_request(TELEMETRY, "localhost", &h, &s.body)).unwrap();
    let (st, d) = send_raw(
        &g,
        text.replace("application/json", "text/plain").as_bytes(),
    );
    assert_eq!(
        (st, d.as_str()),
        (415, "Telemetry endpoint only accepts application/json")
    );
    // Row 3.
    let (st, d) = send_raw(&g, post_request(TELEMETRY, "localhost", &h, b"").as_slice());
    assert_eq!((st, d.as_str()), (422, "Telemetry payload is required"));
    // Row 4: 1048577 bytes announced; answered without reading the body, connection closed.
    let big = text.replace(
        &format!("Content-Length: {}", s.body.len()),
        "Content-Length: 1048577",
    );
    let head = &big[..big.find("\r\n\r\n").unwrap() + 4];
    let mut c = g.connect();
    c.write_raw(head.as_bytes()).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(json(&r)["detail"], "Telemetry payload exceeds 1MiB limit");
    assert_eq!(r.header("connection"), Some("close"));
    // Row 55.
    let chunked = text.replace(
        &format!("Content-Length: {}", s.body.len()),
        "Transfer-Encoding: chunked",
    );
    let (st, d) = send_raw(&g, chunked.as_bytes());
    assert_eq!((st, d.as_str()), (411, "Content-Length required"));
    let (st, d) = send_raw(&g, b"GARBAGE\r\n\r\n");
    assert_eq!((st, d.as_str()), (400, "Malformed HTTP request"));
    let huge = format!(
        "POST {TELEMETRY} HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let (st, d) = send_raw(&g, huge.as_bytes());
    assert_eq!((st, d.as_str()), (431, "Request header fields too large"));
    let dup = text.replace(
        "X-Telemetry-Nonce:",
        "X-Telemetry-Nonce: a\r\nX-Telemetry-Nonce:",
    );
    assert_eq!(send_raw(&g, dup.as_bytes()).0, 400);
    let bad_byte = text.replace("User-Agent: vvctl", "User-Agent: vv\u{e9}ctl");
    assert_eq!(send_raw(&g, bad_byte.as_bytes()).0, 400);
    // Row 56.
    let mut c = g.connect();
    let r = c
        .send(format!("GET {TELEMETRY} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(json(&r)["detail"], "Method Not Allowed");
    let r = c
        .send(
            format!("POST {TELEMETRY}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(
        (r.status, json(&r)["detail"].as_str()),
        (404, Some("Not Found"))
    );
    let r = c.send(b"GET /docs HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 404);
    // Row 57: a request line, then silence: 408 and the connection is closed.
    let mut c = g.connect();
    c.write_raw(format!("POST {TELEMETRY} HTTP/1.1\r\n").as_bytes())
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(
        (r.status, json(&r)["detail"].as_str()),
        (408, Some("Request timeout"))
    );
    assert_eq!(r.header("connection"), Some("close"));
    // H-level refusals are audited as http.rejected.
    let audit = g.audit();
    let http: Vec<_> = audit
        .iter()
        .filter(|e| e["event_type"] == "http.rejected")
        .collect();
    for status in [400, 404, 405, 408, 411, 431] {
        assert!(
            http.iter().any(|e| e["details"]["status_code"] == status),
            "no http.rejected {status}"
        );
    }
    assert!(g.spool().is_empty());
}

#[test]
fn health_and_readiness_on_both_listeners() {
    let g = Gateway::start();
    let r = g.ops_get("/healthz");
    assert_eq!(r.status, 200);
    let v = json(&r);
    assert_eq!(v["status"], "healthy");
    assert_eq!(
        v["trusted_identities"],
        serde_json::json!(["foreign-service", "other-service", "spectrastrike-producer"])
    );
    assert_eq!(v["nonce_backend"], "redb");
    assert_eq!(v["queue_backend"], "spool");
    assert_eq!(g.ops_get("/readyz").body_text(), r#"{"status":"ready"}"#);
    let m = g.ops_get("/metrics");
    assert!(m.body_text().contains("vvgate_ready 1"));
    assert_eq!(g.ops_get("/nope").status, 404);
    let mut c = g.connect();
    let r = c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(json(&r)["status"], "healthy");
    assert!(r.header("x-request-id").is_some());
    let r = c.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn rate_limit_429_does_not_burn_the_nonce_row_46() {
    let mut g = Gateway::start_with(Opts::default().with("rate_limit_per_minute = 2"));
    let p = g.pki.producer();
    let mut c = g.connect();
    // Start right after a window boundary would make this exact; with 60 s windows, send three
    // quickly and accept that a boundary may fall between them (then retry the set once).
    let mut third = valid();
    for attempt in 0..2 {
        let r1 = c.send(&request(&p, &valid())).unwrap().status;
        let r2 = c.send(&request(&p, &valid())).unwrap().status;
        third = valid();
        let r = c.send(&request(&p, &third)).unwrap();
        if r.status == 429 {
            assert_eq!((r1, r2), (202, 202));
            assert_eq!(json(&r)["detail"], "Operator burst anomaly detected");
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry));
            break;
        }
        assert_eq!(attempt, 0, "no 429 after two attempts");
    }
    // A restart resets the window; the same bytes are then accepted.
    drop(c);
    g.restart();
    let r = g.connect().send(&request(&p, &third)).unwrap();
    assert_eq!(r.status, 202, "{}", r.body_text());
}

#[test]
fn spool_full_is_503_with_retry_after_rows_47_48() {
    let g = Gateway::start_with(Opts::default().with("spool_max_events = 2"));
    let p = g.pki.producer();
    let mut c = g.connect();
    assert_eq!(c.send(&request(&p, &valid())).unwrap().status, 202);
    assert_eq!(c.send(&request(&p, &valid())).unwrap().status, 202);
    let r = c.send(&request(&p, &valid())).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(json(&r)["detail"], "Telemetry queue publish failed");
    assert_eq!(r.header("retry-after"), Some("1"));
    let poison = event_with(now(), &nonce(), |v| {
        v["payload"]["mitre_techniques"] = serde_json::json!(["T9999"])
    });
    let r = c.send(&request(&p, &poison)).unwrap();
    assert_eq!(
        (r.status, json(&r)["detail"].as_str()),
        (503, Some("Telemetry DLQ publish failed"))
    );
    assert_eq!(g.spool().len(), 2);
    let ready = g.ops_get("/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(json(&ready)["reasons"], serde_json::json!(["spool_full"]));
}

#[test]
fn a_full_storage_queue_is_503_overloaded_never_a_loss_row_49() {
    let g = Gateway::start_with(
        Opts::default()
            .with("max_in_flight = 1")
            .with("rate_limit_per_minute = 1000000"),
    );
    let p = g.pki.producer();
    let reqs: Vec<(Signed, Vec<u8>)> = (0..60)
        .map(|_| {
            let s = valid();
            let r = request(&p, &s);
            (s, r)
        })
        .collect();
    let mut conns: Vec<_> = (0..20).map(|_| g.connect()).collect();
    let mut accepted = Vec::new();
    let mut overloaded = 0;
    for batch in reqs.chunks(20) {
        for (c, (_, r)) in conns.iter_mut().zip(batch) {
            c.write_raw(r).unwrap();
        }
        for (c, (s, _)) in conns.iter_mut().zip(batch) {
            let r = c.read_response().unwrap();
            match r.status {
                202 => accepted.push(s.nonce.clone()),
                503 => {
                    assert_eq!(json(&r)["detail"], "Telemetry gateway overloaded");
                    assert_eq!(r.header("retry-after"), Some("1"));
                    overloaded += 1;
                }
                other => panic!("unexpected {other}: {}", r.body_text()),
            }
        }
    }
    assert!(
        overloaded > 0,
        "a one-slot queue must push back under a burst"
    );
    let spool: Vec<String> = g
        .spool()
        .iter()
        .map(|e| e["body"]["payload"]["nonce"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        spool.len(),
        accepted.len(),
        "every 202 stored, nothing else"
    );
    for n in &accepted {
        assert!(spool.contains(n));
    }
}
