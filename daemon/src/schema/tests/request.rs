//! Step 17 (§4.1, §4.2) and the schema version read for steps 26–27 (§4.6).

use serde_json::{json, Value};

use super::super::*;
use super::{base_payload, key, PRODUCER_BODY};
use crate::json::Tape;

fn body() -> Value {
    serde_json::from_str(PRODUCER_BODY).expect("vector parses")
}

fn check_src(src: &str) -> Result<(), Violation> {
    let mut tape = Tape::new();
    let doc = tape.parse(src.as_bytes()).expect("test JSON parses");
    parse_request(&doc).map(|_| ())
}

fn err(v: &Value) -> Violation {
    check_src(&v.to_string()).expect_err("step 17 must fail")
}

fn with(field: &str, value: Value) -> Value {
    let mut b = body();
    b[field] = value;
    b
}

#[test]
fn row_29_root_must_be_an_object() {
    for src in ["[1,2]", "\"x\"", "1", "null"] {
        let v = check_src(src).expect_err("not an object");
        assert_eq!(v.kind, "model_type");
        assert!(v.loc.is_empty());
    }
}

#[test]
fn row_29_unknown_top_level_field() {
    let v = err(&with("extra", json!(1)));
    assert_eq!((v.kind, v.loc), ("extra_forbidden", vec![key("extra")]));
}

#[test]
fn row_29_short_nonce() {
    let v = err(&with("nonce", json!("abcde")));
    assert_eq!((v.kind, v.loc), ("string_too_short", vec![key("nonce")]));
    assert_eq!(v.msg, "String should have at least 8 characters");
}

#[test]
fn every_field_is_required() {
    for f in [
        "operator_id",
        "campaign_id",
        "tenant_id",
        "execution_hash",
        "timestamp",
        "nonce",
        "signed_metadata",
        "payload",
    ] {
        let mut b = body();
        b.as_object_mut().expect("object").remove(f);
        let v = err(&b);
        assert_eq!(v.kind, "missing", "{f}");
        assert_eq!(v.loc, vec![LocPart::Key(f.to_owned().into())]);
    }
    for f in ["tenant_id", "operator_id", "campaign_id"] {
        let mut b = body();
        b["signed_metadata"]
            .as_object_mut()
            .expect("object")
            .remove(f);
        let v = err(&b);
        assert_eq!(v.kind, "missing");
        assert_eq!(
            v.loc,
            vec![key("signed_metadata"), LocPart::Key(f.to_owned().into())]
        );
    }
}

#[test]
fn strict_json_types() {
    let cases = [
        ("timestamp", json!(1772107200.0), "int_type"),
        ("timestamp", json!("1772107200"), "int_type"),
        ("timestamp", json!(true), "int_type"),
        ("operator_id", json!(1), "string_type"),
        ("campaign_id", json!(null), "string_type"),
        ("tenant_id", json!(["x"]), "string_type"),
        ("nonce", json!(12345678), "string_type"),
        ("payload", json!("{}"), "dict_type"),
        ("payload", json!([]), "dict_type"),
        ("signed_metadata", json!("x"), "model_type"),
    ];
    for (field, value, kind) in cases {
        let v = err(&with(field, value.clone()));
        assert_eq!(v.kind, kind, "{field} = {value}");
    }
}

#[test]
fn lengths_count_unicode_scalar_values() {
    let ok = |f: &str, s: String| check_src(&with(f, json!(s)).to_string());
    assert!(ok("operator_id", "é".repeat(128)).is_ok());
    assert_eq!(
        ok("operator_id", "é".repeat(129)).expect_err("long").kind,
        "string_too_long"
    );
    assert!(ok("nonce", "\u{1F600}".repeat(8)).is_ok());
    assert!(ok("nonce", "a".repeat(128)).is_ok());
    assert_eq!(
        ok("nonce", "a".repeat(129)).expect_err("long").kind,
        "string_too_long"
    );
    assert_eq!(
        ok("campaign_id", String::new()).expect_err("empty").kind,
        "string_too_short"
    );
    // execution_hash: exactly 64 characters, not checked for hex.
    assert!(ok("execution_hash", "z".repeat(64)).is_ok());
    for n in [63, 65] {
        assert!(ok("execution_hash", "a".repeat(n)).is_err());
    }
}

#[test]
fn tenant_pattern() {
    let ok = |s: &str| check_src(&with("tenant_id", json!(s)).to_string());
    assert!(ok("ABCDEF00-0000-0000-0000-00000000000a").is_ok());
    assert!(ok("------------------------------------").is_ok());
    for bad in [
        "10000000-0000-0000-0000-00000000000",
        "10000000-0000-0000-0000-0000000000001",
        "g0000000-0000-0000-0000-000000000001",
        "10000000-0000-0000-0000-00000000000\u{0661}",
        // 36 bytes, 35 characters.
        "10000000-0000-0000-0000-0000000000\u{e9}",
        "10000000-0000-0000-0000-000000000001\n",
    ] {
        let v = ok(bad).expect_err(bad);
        assert_eq!(v.kind, "string_pattern_mismatch");
    }
    // Escapes are decoded before the pattern applies.
    let src = with("tenant_id", json!("TENANT"))
        .to_string()
        .replace("TENANT", "\\u0031\\u0030000000-0000-0000-0000-000000000001");
    assert!(check_src(&src).is_ok());
    let mut b = body();
    b["signed_metadata"]["tenant_id"] = json!("nope");
    let v = err(&b);
    assert_eq!(v.loc, vec![key("signed_metadata"), key("tenant_id")]);
}

#[test]
fn signed_metadata_rejects_unknown_fields() {
    let mut b = body();
    b["signed_metadata"]["role"] = json!("admin");
    let v = err(&b);
    assert_eq!(v.kind, "extra_forbidden");
    assert_eq!(v.loc, vec![key("signed_metadata"), key("role")]);
}

#[test]
fn field_errors_come_before_unknown_fields() {
    let mut b = with("extra", json!(1));
    b.as_object_mut().expect("object").remove("operator_id");
    assert_eq!(err(&b).kind, "missing");
}

#[test]
fn timestamp_token_is_canonical() {
    let ts = |raw: &str| {
        let src = body().to_string().replace("1772107200", raw);
        let mut tape = Tape::new();
        let doc = tape.parse(src.as_bytes()).expect("parses");
        parse_request(&doc).map(|r| r.timestamp.to_owned())
    };
    assert_eq!(ts("-0").expect("ok"), "0");
    assert_eq!(ts("-5").expect("ok"), "-5");
    let big = "123456789012345678901234567890";
    assert_eq!(ts(big).expect("ok"), big);
    assert_eq!(ts("1E9").expect_err("float").kind, "int_type");
}

#[test]
fn payload_inner_schema_is_not_step_17() {
    // Anything object-shaped passes step 17; step 20 judges it.
    assert!(check_src(&with("payload", json!({"x": 1})).to_string()).is_ok());
}

fn version(attrs: Option<Value>) -> SchemaVersion<'static> {
    let mut p = base_payload();
    match attrs {
        Some(a) => p["attributes"] = a,
        None => {
            p.as_object_mut().expect("object").remove("attributes");
        }
    }
    let src = p.to_string();
    let mut tape = Tape::new();
    let doc = tape.parse(src.as_bytes()).expect("parses");
    match schema_version(&doc, Doc::ROOT) {
        SchemaVersion::Value(v) => SchemaVersion::Value(v.into_owned().into()),
        SchemaVersion::Missing => SchemaVersion::Missing,
        SchemaVersion::NotString => SchemaVersion::NotString,
    }
}

#[test]
fn rows_44_45_schema_version() {
    // Row 44: absent (also when attributes is absent or not an object).
    assert_eq!(version(Some(json!({}))), SchemaVersion::Missing);
    assert_eq!(version(None), SchemaVersion::Missing);
    assert_eq!(version(Some(json!("x"))), SchemaVersion::Missing);
    // Row 45: a value, trimmed (Python strip, incl. U+001C-U+001F), unsanitised.
    let v = |s: &str| version(Some(json!({ "schema_version": s })));
    assert_eq!(v("9.9"), SchemaVersion::Value("9.9".into()));
    assert_eq!(v(" \u{1c}1.0\u{a0}\n"), SchemaVersion::Value("1.0".into()));
    assert_eq!(v("<2.0>"), SchemaVersion::Value("<2.0>".into()));
    assert_eq!(v("   "), SchemaVersion::Value("".into()));
    for other in [
        json!(null),
        json!(1.0),
        json!(2),
        json!(true),
        json!(["1.0"]),
    ] {
        assert_eq!(
            version(Some(json!({ "schema_version": other }))),
            SchemaVersion::NotString
        );
    }
    // The key is matched unsanitised: " schema_version" is another key.
    assert_eq!(
        version(Some(json!({" schema_version": "1.0"}))),
        SchemaVersion::Missing
    );
}
