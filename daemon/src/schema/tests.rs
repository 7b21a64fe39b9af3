//! Unit tests of the body schema. Shared helpers and the §13.1 producer vector live here;
//! the rest is split by topic under `tests/`.

mod contract;
mod payload;
mod request;
mod sanitizer;
mod time_and_mitre;

use std::sync::OnceLock;

use serde_json::{json, Value};

use super::*;
use crate::ids::{hex32, sha256};
use crate::json::Tape;

/// The §13.1 producer request body, byte for byte.
pub(super) const PRODUCER_BODY: &str = r##"{"campaign_id":"cmp-001","execution_hash":"0c40dbd5295bc42311cb7f980880d9407e386bca6f83639de3a38144a037e6cd","nonce":"3f1c2a9e-0000-4000-8000-000000000001","operator_id":"op-001","payload":{"attributes":{"asset_ref":"urn:target:ip:10.0.0.5","attestation_measurement_hash":"5c83f7d75de535ed4e51f088c71824dc6b2c2d3080e5de24b67eb5daa259fe10","campaign_id":"cmp-001","execution_fingerprint":"0c40dbd5295bc42311cb7f980880d9407e386bca6f83639de3a38144a037e6cd","host_count":1,"intent_hash":"94ab0d7b10ab2e919407dde5de9b6fe993e3581c33dba7ec7509d4b43baf3472","intent_id":"intent-00000001","iso27001_annex_a_controls":"A.8.15,A.8.16,A.8.24","manifest_hash":"mh-2de51c3d632eb1a7ceb9513fb10b7252219e64ae0d0ae05177c7d68fa06f354c","ml_record":"{\"actor\":\"op-001\",\"attribute_keys\":[\"campaign_id\",\"host_count\",\"scan_summary\",\"severity\",\"tenant_id\"],\"event_id\":\"3f1c2a9e-0000-4000-8000-000000000001\",\"event_namespace\":\"nmap\",\"event_type\":\"nmap_scan_completed\",\"schema_version\":\"telemetry.ml.v1\",\"status\":\"success\",\"status_code\":1,\"stream_position\":1,\"target\":\"urn:target:ip:10.0.0.5\",\"tenant_id\":\"10000000-0000-0000-0000-000000000001\",\"timestamp\":\"2026-02-26T12:00:00.123456+00:00\"}","nist_800_53_controls":"AU-2,AU-8,SI-4","nonce":"3f1c2a9e-0000-4000-8000-000000000001","policy_decision_hash":"ph-9e22c9800690305e10f757c0b7c6a8f2ee5f0e25c073888c2011ccd721f48501","scan_summary":"{\"open_ports\":[22,443]}","schema_version":"1.0","severity":"HIGH","soc2_controls":"CC7.2,CC7.3,A1.2","tenant_id":"10000000-0000-0000-0000-000000000001","tool_sha256":"sha256:69df8b6c2914c53632a300e8d9c8af3be3a47bd7dc80027f97c53f6305eecf00","write_ahead":true},"description":"SpectraStrike telemetry event nmap_scan_completed status=success","event_id":"3f1c2a9e-0000-4000-8000-000000000001","event_type":"NMAP_SCAN_COMPLETED","mitre_tactics":["TA0043"],"mitre_techniques":["T1595"],"observed_at":"2026-02-26T12:00:00.123456+00:00","severity":"high","source_system":"spectrastrike"},"signed_metadata":{"campaign_id":"cmp-001","operator_id":"op-001","tenant_id":"10000000-0000-0000-0000-000000000001"},"tenant_id":"10000000-0000-0000-0000-000000000001","timestamp":1772107200}"##;

pub(super) fn catalogue() -> &'static Catalogue {
    static CAT: OnceLock<Catalogue> = OnceLock::new();
    CAT.get_or_init(Catalogue::builtin)
}

/// A valid canonical payload (every §4.3 rule met, schema version 1.0).
pub(super) fn base_payload() -> Value {
    json!({
        "event_id": "evt-0001",
        "event_type": "NMAP_SCAN_COMPLETED",
        "source_system": "spectrastrike",
        "severity": "high",
        "observed_at": "2026-02-26T12:00:00.123456+00:00",
        "mitre_techniques": ["T1595"],
        "mitre_tactics": ["TA0043"],
        "description": "scan finished",
        "attributes": {
            "attestation_measurement_hash": HASH,
            "schema_version": "1.0",
        },
    })
}

pub(super) const HASH: &str = "5c83f7d75de535ed4e51f088c71824dc6b2c2d3080e5de24b67eb5daa259fe10";

/// Normalise a payload given as JSON text (the payload is the document root).
pub(super) fn run_src(src: &str, cat: Option<&Catalogue>) -> Result<String, PayloadError> {
    let mut tape = Tape::new();
    let doc = tape.parse(src.as_bytes()).expect("test JSON parses");
    let mut out = Vec::new();
    let policy = PayloadPolicy { catalogue: cat };
    normalise_payload(&doc, Doc::ROOT, policy, &mut Scratch::default(), &mut out)?;
    Ok(String::from_utf8(out).expect("CJSON is ASCII"))
}

/// Normalise with the builtin catalogue enforced.
pub(super) fn run(p: &Value) -> Result<String, PayloadError> {
    run_src(&p.to_string(), Some(catalogue()))
}

/// The normalised payload as a JSON value (for picking out members).
pub(super) fn run_ok(p: &Value) -> Value {
    let out = run(p).unwrap_or_else(|e| panic!("payload rejected: {e:?}"));
    serde_json::from_str(&out).expect("output is JSON")
}

/// The step-20 violation of a payload that must fail there.
pub(super) fn canonical_err(p: &Value) -> Violation {
    match run(p) {
        Err(PayloadError::Canonical(v)) => v,
        other => panic!("expected a canonical failure, got {other:?}"),
    }
}

pub(super) fn key(k: &'static str) -> LocPart {
    LocPart::from(k)
}

/// Build the ingest envelope `payload` (§5.3) of a request body as CJSON.
fn envelope_payload(body: &str) -> Vec<u8> {
    let mut tape = Tape::new();
    let doc = tape.parse(body.as_bytes()).expect("body parses");
    let req = parse_request(&doc).expect("step 17 passes");
    let policy = PayloadPolicy {
        catalogue: Some(catalogue()),
    };
    let mut normalised = Vec::new();
    normalise_payload(
        &doc,
        req.payload,
        policy,
        &mut Scratch::default(),
        &mut normalised,
    )
    .expect("steps 20-22 pass");
    let mut out = Vec::new();
    crate::envelope::write_ingest_payload(&mut out, &req, &normalised);
    out
}

#[test]
fn producer_request_vector_is_byte_exact() {
    assert_eq!(PRODUCER_BODY.len(), 2190);
    assert_eq!(
        hex32(&sha256(PRODUCER_BODY.as_bytes())).as_str(),
        "c34d5aa6db1a40db4b3071f5f3c048e898b4329fe5ba3bdd5ea1075c6c406dae"
    );
    let out = envelope_payload(PRODUCER_BODY);
    assert_eq!(out.len(), 2401);
    assert_eq!(
        hex32(&sha256(&out)).as_str(),
        "a0a7cfc1f0cd6f5ce137b423f951456332fad8593c77e2ac6f28e77defa5aa29"
    );
    let text = String::from_utf8(out).expect("ASCII");
    assert!(text.contains(r#""observed_at":"2026-02-26T12:00:00.123456Z""#));
    assert!(text.contains(r#""scan_summary":"{&quot;open_ports&quot;:[22,443]}""#));
}

#[test]
fn producer_request_vector_step_17_fields() {
    let mut tape = Tape::new();
    let doc = tape.parse(PRODUCER_BODY.as_bytes()).expect("parses");
    let req = parse_request(&doc).expect("valid");
    assert_eq!(req.timestamp, "1772107200");
    assert_eq!(req.nonce, "3f1c2a9e-0000-4000-8000-000000000001");
    assert_eq!(req.operator_id, "op-001");
    assert_eq!(req.signed_metadata.operator_id, "op-001");
    assert_eq!(
        schema_version(&doc, req.payload),
        SchemaVersion::Value("1.0".into())
    );
}

#[test]
fn scratch_reuse_gives_identical_output() {
    let mut tape = Tape::new();
    let doc = tape.parse(PRODUCER_BODY.as_bytes()).expect("parses");
    let req = parse_request(&doc).expect("valid");
    let policy = PayloadPolicy {
        catalogue: Some(catalogue()),
    };
    let mut scratch = Scratch::default();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    normalise_payload(&doc, req.payload, policy, &mut scratch, &mut a).expect("ok");
    // A failing payload in between must not leave state behind.
    let bad = json!({"attributes": {"a": {"b": {"c": "drop table x"}}}}).to_string();
    let mut t2 = Tape::new();
    let d2 = t2.parse(bad.as_bytes()).expect("parses");
    let _ = normalise_payload(&d2, Doc::ROOT, policy, &mut scratch, &mut Vec::new());
    normalise_payload(&doc, req.payload, policy, &mut scratch, &mut b).expect("ok");
    assert_eq!(a, b);
}
