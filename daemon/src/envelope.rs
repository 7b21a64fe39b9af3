//! Queue envelopes (CONTRACT.md §5.2–§5.4): `{created_at, integrity_hash, kind, message_id,
//! payload, trace}` as CJSON, where `integrity_hash` is the SHA-256 of the payload's CJSON.
//! Built at ingest, stored in the spool byte for byte, published unchanged by the forwarder.

use base64::Engine;

use crate::ids::{self, HexHash};
use crate::json::Cjson;
use crate::schema::{TelemetryRequest, Violation};

/// Write an envelope around `payload` and `trace` (both CJSON). Returns the integrity hash.
pub fn write(
    out: &mut Vec<u8>,
    kind: &str,
    message_id: &str,
    created_at: &str,
    payload: &[u8],
    trace: &[u8],
) -> HexHash {
    let hash = ids::hex32(&ids::sha256(payload));
    Cjson::new(out)
        .begin_obj()
        .key("created_at")
        .str(created_at)
        .key("integrity_hash")
        .str(&hash)
        .key("kind")
        .str(kind)
        .key("message_id")
        .str(message_id)
        .key("payload")
        .raw(payload)
        .key("trace")
        .raw(trace)
        .end_obj();
    hash
}

/// The ingest envelope's `payload` (§5.3): the validated top level with `payload` replaced by
/// the normalised canonical payload (`normalised`, CJSON).
pub fn write_ingest_payload(out: &mut Vec<u8>, req: &TelemetryRequest<'_>, normalised: &[u8]) {
    let sm = &req.signed_metadata;
    Cjson::new(out)
        .begin_obj()
        .key("campaign_id")
        .str(&req.campaign_id)
        .key("execution_hash")
        .str(&req.execution_hash)
        .key("nonce")
        .str(&req.nonce)
        .key("operator_id")
        .str(&req.operator_id)
        .key("payload")
        .raw(normalised)
        .key("signed_metadata")
        .begin_obj()
        .key("campaign_id")
        .str(&sm.campaign_id)
        .key("operator_id")
        .str(&sm.operator_id)
        .key("tenant_id")
        .str(&sm.tenant_id)
        .end_obj()
        .key("tenant_id")
        .str(&req.tenant_id)
        .key("timestamp")
        .raw(req.timestamp.as_bytes())
        .end_obj();
}

/// The ingest envelope's `trace`: `{campaign_id, operator_id, tenant_id}`.
pub fn write_ingest_trace(out: &mut Vec<u8>, req: &TelemetryRequest<'_>) {
    Cjson::new(out)
        .begin_obj()
        .key("campaign_id")
        .str(&req.campaign_id)
        .key("operator_id")
        .str(&req.operator_id)
        .key("tenant_id")
        .str(&req.tenant_id)
        .end_obj();
}

/// The dead-letter payload `{error_code, error_message, raw_body}`: the body as text when it is
/// UTF-8, else its standard base64.
pub fn write_dead_letter_payload(
    out: &mut Vec<u8>,
    error_code: &str,
    error_message: &str,
    body: &[u8],
) {
    let mut w = Cjson::new(out);
    w.begin_obj()
        .key("error_code")
        .str(error_code)
        .key("error_message")
        .str(error_message)
        .key("raw_body");
    match std::str::from_utf8(body) {
        Ok(text) => w.str(text),
        Err(_) => w.str(&base64::engine::general_purpose::STANDARD.encode(body)),
    };
    w.end_obj();
}

/// What a dead-letter trace says (§5.4).
pub enum DeadLetterTrace<'a> {
    /// `{"reason":"json_decode"}`.
    JsonDecode,
    /// `{"errors":[…],"reason":…}` for the schema reasons.
    Errors(&'static str, &'a [Violation]),
    /// `{"error":"<message>","reason":"contract_v2_validation"}`.
    Message(&'static str, &'a str),
}

pub fn write_dead_letter_trace(out: &mut Vec<u8>, trace: &DeadLetterTrace<'_>) {
    let mut w = Cjson::new(out);
    w.begin_obj();
    match trace {
        DeadLetterTrace::JsonDecode => {
            w.key("reason").str("json_decode");
        }
        DeadLetterTrace::Errors(reason, errors) => {
            w.key("errors").begin_arr();
            for e in errors.iter() {
                e.write(&mut w);
            }
            w.end_arr().key("reason").str(reason);
        }
        DeadLetterTrace::Message(reason, message) => {
            w.key("error").str(message).key("reason").str(reason);
        }
    }
    w.end_obj();
}

/// `Nats-Msg-Id` of a dead letter: `dlq:` + SHA-256 of the signed message, so identical
/// re-sends of a rejected request are deduplicated by the stream.
pub fn dead_letter_msg_id(signed_message: &[u8]) -> String {
    let mut s = String::with_capacity(68);
    s.push_str("dlq:");
    s.push_str(&ids::hex32(&ids::sha256(signed_message)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{LocPart, Violation};

    #[test]
    fn dead_letter_shapes() {
        let mut p = Vec::new();
        write_dead_letter_payload(&mut p, "invalid_json", "Invalid JSON payload", b"{\"a\":1,");
        assert_eq!(
            String::from_utf8(p.clone()).unwrap(),
            r#"{"error_code":"invalid_json","error_message":"Invalid JSON payload","raw_body":"{\"a\":1,"}"#
        );
        let mut binary = Vec::new();
        write_dead_letter_payload(
            &mut binary,
            "invalid_json",
            "Invalid JSON payload",
            &[b'"', 0xff, b'"'],
        );
        assert!(String::from_utf8(binary)
            .unwrap()
            .ends_with(r#""raw_body":"Iv8i"}"#));

        let v = [Violation::new(
            "missing",
            [LocPart::from("nonce")],
            "Field required",
        )];
        let mut t = Vec::new();
        write_dead_letter_trace(&mut t, &DeadLetterTrace::Errors("schema_validation", &v));
        assert_eq!(
            String::from_utf8(t).unwrap(),
            r#"{"errors":[{"loc":["nonce"],"msg":"Field required","type":"missing"}],"reason":"schema_validation"}"#
        );
        let mut t = Vec::new();
        write_dead_letter_trace(
            &mut t,
            &DeadLetterTrace::Message("contract_v2_validation", "m"),
        );
        assert_eq!(
            String::from_utf8(t).unwrap(),
            r#"{"error":"m","reason":"contract_v2_validation"}"#
        );

        let mut env = Vec::new();
        let h = write(
            &mut env,
            "dead_letter",
            "id",
            "t",
            &p,
            b"{\"reason\":\"json_decode\"}",
        );
        assert_eq!(h, ids::hex32(&ids::sha256(&p)));
        let text = String::from_utf8(env).unwrap();
        assert!(text.starts_with(r#"{"created_at":"t","integrity_hash":""#));
        assert!(text.ends_with(r#","kind":"dead_letter","message_id":"id","payload":{"error_code":"invalid_json","error_message":"Invalid JSON payload","raw_body":"{\"a\":1,"},"trace":{"reason":"json_decode"}}"#));
    }
}
