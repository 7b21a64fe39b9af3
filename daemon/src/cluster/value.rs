//! What a key of the shared nonce bucket is called and what its value says.
//!
//! Key: `n.` + lowercase hex SHA-256 of `"{ts}:{nonce}"` (CONTRACT.md §10, the upstream Redis
//! key without its prefix). Value: one CJSON object that lets any appliance answer an
//! identical re-send as the accepting one would (CONTRACT.md §3.6):
//!
//! ```json
//! {"accepted_at":1772107200,"appliance":"gw-a","body_sha256":"<64 hex>","request_id":"<uuid>","route":"/internal/v1/telemetry","v":1}
//! ```
//!
//! Values are read with serde_json into a struct that refuses unknown fields: they are
//! written by other machines, so anything unexpected is reported, never guessed at.

use serde::Deserialize;
use vvgate_storage::{NonceRecord, Route};

use crate::ids;
use crate::json::Cjson;

/// The bucket key of `(ts, nonce)` in telemetry's namespace (telemetry and both cognitive
/// routes); `ts` is the header's canonical decimal text.
pub fn kv_key(ts_text: &str, nonce: &str) -> String {
    prefixed("n.", ts_text, nonce)
}

/// The bucket key of a federation bundle's `(timestamp, nonce)`: federation has its own
/// namespace (CONTRACT.md §3.5), so its keys start with `f.`.
pub fn federation_kv_key(ts: u64, nonce: &str) -> String {
    prefixed("f.", &ts.to_string(), nonce)
}

fn prefixed(prefix: &str, ts_text: &str, nonce: &str) -> String {
    let d = ids::sha256_parts(&[ts_text.as_bytes(), b":", nonce.as_bytes()]);
    let mut key = String::with_capacity(66);
    key.push_str(prefix);
    key.push_str(&ids::hex32(&d));
    key
}

/// The value this appliance writes for an accepted request.
pub fn encode(record: &NonceRecord, appliance: &str, out: &mut Vec<u8>) {
    let NonceRecord::V1 {
        body_sha256,
        request_id,
        route,
        accepted_at,
    } = record;
    let body = ids::hex32(body_sha256);
    let id = ids::uuid_text(request_id);
    let mut w = Cjson::new(out);
    w.begin_obj()
        .key("accepted_at")
        .u64(*accepted_at)
        .key("appliance")
        .str(appliance)
        .key("body_sha256")
        .str(&body)
        .key("request_id")
        .str(&id)
        .key("route")
        .str(route.path())
        .key("v")
        .u64(1)
        .end_obj();
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    accepted_at: u64,
    appliance: String,
    body_sha256: String,
    request_id: String,
    route: String,
    v: u64,
}

/// A value read from the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub appliance: String,
    pub record: NonceRecord,
}

/// Read a value written by a gateway. The error says what is wrong (for the audit entry).
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| {
        let mut m = e.to_string();
        m.truncate(160);
        format!("not a gateway nonce value: {m}")
    })?;
    if raw.v != 1 {
        return Err(format!("unknown value version {}", raw.v));
    }
    if raw.appliance.is_empty() || raw.appliance.len() > 64 {
        return Err("appliance is empty or longer than 64".into());
    }
    let body_sha256 = ids::parse_hex32(&raw.body_sha256)
        .filter(|_| !raw.body_sha256.bytes().any(|b| b.is_ascii_uppercase()))
        .ok_or_else(|| "body_sha256 is not 64 lowercase hex".to_string())?;
    let request_id = ids::parse_uuid(&raw.request_id)
        .filter(|_| !raw.request_id.bytes().any(|b| b.is_ascii_uppercase()))
        .ok_or_else(|| "request_id is not a canonical UUID".to_string())?;
    let route = [
        Route::Telemetry,
        Route::ExecutionGraph,
        Route::FeedbackQuery,
        Route::FederationVerify,
    ]
    .into_iter()
    .find(|r| r.path() == raw.route)
    .ok_or_else(|| "route is not a gateway route".to_string())?;
    Ok(Value {
        appliance: raw.appliance,
        record: NonceRecord::V1 {
            body_sha256,
            request_id,
            route,
            accepted_at: raw.accepted_at,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_upstream_hash() {
        // CONTRACT.md §13.1: SHA-256("1772107200:3f1c2a9e-0000-4000-8000-000000000001").
        assert_eq!(
            kv_key("1772107200", "3f1c2a9e-0000-4000-8000-000000000001"),
            "n.0aa3f41753eef11d245c373d777a226a9c694ae84aa3036e1cbc4fc95e264c15"
        );
        // Federation's namespace: the same hash under its own prefix.
        assert_eq!(
            federation_kv_key(1_772_107_200, "3f1c2a9e-0000-4000-8000-000000000001"),
            "f.0aa3f41753eef11d245c373d777a226a9c694ae84aa3036e1cbc4fc95e264c15"
        );
    }

    #[test]
    fn values_round_trip() {
        let rec = NonceRecord::V1 {
            body_sha256: [0xab; 32],
            request_id: [0x11; 16],
            route: Route::Telemetry,
            accepted_at: 1_772_107_200,
        };
        let mut out = Vec::new();
        encode(&rec, "gw-a", &mut out);
        let v = parse(&out).unwrap();
        assert_eq!(v.appliance, "gw-a");
        assert_eq!(v.record, rec);
    }

    #[test]
    fn foreign_values_are_refused_with_a_reason() {
        let good = br#"{"accepted_at":1,"appliance":"a","body_sha256":"abababababababababababababababababababababababababababababababab","request_id":"11111111-1111-1111-1111-111111111111","route":"/internal/v1/telemetry","v":1}"#;
        assert!(parse(good).is_ok());
        for (bad, why) in [
            (&b"1"[..], "not a gateway"),
            (b"", "not a gateway"),
            (b"\xff", "not a gateway"),
            (br#"{"v":1}"#, "not a gateway"),
            (&good.replace_all(b"\"v\":1", b"\"v\":2"), "version"),
            (
                &good.replace_all(b"\"appliance\":\"a\"", b"\"appliance\":\"\""),
                "appliance",
            ),
            (&good.replace_all(b"abab", b"ABAB"), "body_sha256"),
            (&good.replace_all(b"11111111-", b"1111111-"), "request_id"),
            (&good.replace_all(b"/telemetry", b"/other"), "route"),
            (
                &good.replace_all(b"\"v\":1}", b"\"v\":1,\"x\":0}"),
                "not a gateway",
            ),
        ] {
            let e = parse(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(e.contains(why), "{e}");
        }
    }

    trait ReplaceAll {
        fn replace_all(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceAll for [u8] {
        fn replace_all(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
            let s = String::from_utf8_lossy(self).replace(
                std::str::from_utf8(from).unwrap(),
                std::str::from_utf8(to).unwrap(),
            );
            s.into_bytes()
        }
    }
}
