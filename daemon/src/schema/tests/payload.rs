//! Step 20: the canonical payload (§4.3–§4.5) and its normalised CJSON.

use serde_json::{json, Value};

use super::super::*;
use super::{base_payload, canonical_err, catalogue, key, run, run_ok, run_src, HASH};

const INJECTION: &str = "Potential injection pattern detected";
const ATTESTATION: &str = "attributes.attestation_measurement_hash must be 64-char sha256 hex";

fn with(field: &str, value: Value) -> Value {
    let mut p = base_payload();
    p[field] = value;
    p
}

fn with_attr(k: &str, value: Value) -> Value {
    let mut p = base_payload();
    p["attributes"][k] = value;
    p
}

fn without(field: &str) -> Value {
    let mut p = base_payload();
    p.as_object_mut().expect("object").remove(field);
    p
}

#[test]
fn output_has_all_nine_fields_in_key_order() {
    let p = base_payload();
    let out = run(&p).expect("valid");
    assert_eq!(
        out,
        format!(
            "{{\"attributes\":{{\"attestation_measurement_hash\":\"{HASH}\",\"schema_version\":\
             \"1.0\"}},\"description\":\"scan finished\",\"event_id\":\"evt-0001\",\
             \"event_type\":\"NMAP_SCAN_COMPLETED\",\"mitre_tactics\":[\"TA0043\"],\
             \"mitre_techniques\":[\"T1595\"],\"observed_at\":\"2026-02-26T12:00:00.123456Z\",\
             \"severity\":\"high\",\"source_system\":\"spectrastrike\"}}"
        )
    );
}

#[test]
fn defaults_for_optional_fields() {
    let mut p = without("mitre_tactics");
    p.as_object_mut().expect("object").remove("description");
    let out = run_ok(&p);
    assert_eq!(out["mitre_tactics"], json!([]));
    assert_eq!(out["description"], Value::Null);
    let out = run_ok(&with("description", Value::Null));
    assert_eq!(out["description"], Value::Null);
    // No attributes: the default `{}` lacks the attestation hash.
    let v = canonical_err(&without("attributes"));
    assert_eq!(v.msg, ATTESTATION);
}

#[test]
fn payload_info_carries_the_event_id_as_received() {
    let src = base_payload()
        .to_string()
        .replace("evt-0001", "evt\\u002d0001");
    let mut tape = crate::json::Tape::new();
    let doc = tape.parse(src.as_bytes()).expect("parses");
    let policy = PayloadPolicy { catalogue: None };
    let info = normalise_payload(
        &doc,
        Doc::ROOT,
        policy,
        &mut Scratch::default(),
        &mut Vec::new(),
    )
    .expect("valid");
    assert_eq!(info.event_id, "evt-0001");
}

#[test]
fn required_fields_and_unknown_fields() {
    for f in [
        "event_id",
        "event_type",
        "source_system",
        "severity",
        "observed_at",
        "mitre_techniques",
    ] {
        let v = canonical_err(&without(f));
        assert_eq!(v.kind, "missing", "{f}");
        assert_eq!(v.loc, vec![LocPart::Key(f.to_owned().into())]);
    }
    let v = canonical_err(&with("priority", json!(1)));
    assert_eq!((v.kind, v.loc), ("extra_forbidden", vec![key("priority")]));
}

#[test]
fn identifier_fields() {
    let bad = [
        ("event_id", json!(""), "string_too_short"),
        ("event_id", json!("a".repeat(129)), "string_too_long"),
        ("event_id", json!("evt 1"), "string_pattern_mismatch"),
        ("event_id", json!(7), "string_type"),
        ("event_type", json!("a".repeat(65)), "string_too_long"),
        ("event_type", json!("scan/done"), "string_pattern_mismatch"),
        ("source_system", json!("é"), "string_pattern_mismatch"),
        ("source_system", json!(null), "string_type"),
    ];
    for (f, value, kind) in bad {
        assert_eq!(
            canonical_err(&with(f, value.clone())).kind,
            kind,
            "{f}={value}"
        );
    }
    let out = run_ok(&with("event_id", json!("A.b_c:d-9")));
    assert_eq!(out["event_id"], "A.b_c:d-9");
    assert!(run(&with("event_id", json!("a".repeat(128)))).is_ok());
}

#[test]
fn row_36_severity_and_mitre_are_normalised() {
    let mut p = with("severity", json!(" HIGH "));
    p["mitre_techniques"] = json!([" t1059 ", "T1059.001"]);
    p["mitre_tactics"] = json!(["\tta0002\u{2003}"]);
    let out = run_ok(&p);
    assert_eq!(out["severity"], "high");
    assert_eq!(out["mitre_techniques"], json!(["T1059", "T1059.001"]));
    assert_eq!(out["mitre_tactics"], json!(["TA0002"]));
    assert_eq!(
        run_ok(&with("severity", json!("Critical\n")))["severity"],
        "critical"
    );
}

#[test]
fn severity_rules() {
    let v = canonical_err(&with("severity", json!("urgent")));
    assert_eq!((v.kind, v.loc), ("value_error", vec![key("severity")]));
    assert_eq!(
        v.msg,
        "severity must be one of info|low|medium|high|critical"
    );
    // Length is checked on the value as received, before trimming.
    assert_eq!(
        canonical_err(&with("severity", json!("x"))).kind,
        "string_too_short"
    );
    let padded = format!("{:<17}", "low");
    assert_eq!(
        canonical_err(&with("severity", json!(padded))).kind,
        "string_too_long"
    );
    assert!(run(&with("severity", json!(format!("{:<16}", "low")))).is_ok());
    assert_eq!(
        canonical_err(&with("severity", json!(" i "))).kind,
        "value_error"
    );
    assert_eq!(
        canonical_err(&with("severity", json!(3))).kind,
        "string_type"
    );
}

#[test]
fn mitre_list_rules() {
    let t = |v: Value| canonical_err(&with("mitre_techniques", v));
    assert_eq!(t(json!([])).kind, "too_short");
    assert_eq!(t(json!(vec!["T1595"; 33])).kind, "too_long");
    assert!(run(&with("mitre_techniques", json!(vec!["T1595"; 32]))).is_ok());
    assert_eq!(t(json!("T1595")).kind, "list_type");
    let v = t(json!(["T1595", 1595]));
    assert_eq!(
        (v.kind, v.loc),
        (
            "string_type",
            vec![key("mitre_techniques"), LocPart::Index(1)]
        )
    );
    let v = t(json!([""]));
    assert_eq!(v.msg, "mitre_techniques entries must be non-empty strings");
    for bad in [
        "   ",
        "TX9999",
        "T12345",
        "T1595.01",
        "T1595.0001",
        "1595",
        "T１５９５",
        "T159a",
    ] {
        let v = t(json!([bad]));
        assert_eq!(
            v.msg, "mitre_techniques entries must match T#### or T####.###",
            "{bad}"
        );
    }
    let a = |v: Value| canonical_err(&with("mitre_tactics", v));
    assert_eq!(a(json!(null)).kind, "list_type");
    assert_eq!(a(json!(vec!["TA0043"; 33])).kind, "too_long");
    assert!(run(&with("mitre_tactics", json!([]))).is_ok());
    assert_eq!(
        a(json!([""])).msg,
        "mitre_tactics entries must be non-empty strings"
    );
    for bad in ["T1595", "TA004", "TB0043", "TA0043.001"] {
        assert_eq!(
            a(json!([bad])).msg,
            "mitre_tactics entries must match TA####"
        );
    }
}

#[test]
fn rows_32_33_unknown_mitre_identifiers() {
    // Row 32: bad format.
    let v = canonical_err(&with("mitre_techniques", json!(["TX9999"])));
    assert_eq!(v.kind, "value_error");
    // Row 33: well-formed but not in the catalogue (upstream accepts it).
    let p = with("mitre_techniques", json!(["T1595", "t9999"]));
    let v = canonical_err(&p);
    assert_eq!(v.msg, "unknown MITRE ATT&CK identifier T9999");
    assert_eq!(v.loc, vec![key("mitre_techniques")]);
    assert!(
        run_src(&p.to_string(), None).is_ok(),
        "format-only without a catalogue"
    );
    let v = canonical_err(&with("mitre_tactics", json!(["TA9999"])));
    assert_eq!(v.msg, "unknown MITRE ATT&CK identifier TA9999");
    // A tactic id where a technique belongs (and the reverse) never passes.
    assert!(run(&with("mitre_techniques", json!(["TA0043"]))).is_err());
    assert!(run(&with("mitre_tactics", json!(["T1595"]))).is_err());
    // A catalogue whose kinds disagree with the list is enforced by kind.
    let odd = Catalogue::from_tsv("T1595\tx\tsubtechnique\n").err();
    assert!(odd.is_some(), "kind and id form must agree");
}

#[test]
fn observed_at_is_reserialised() {
    let cases = [
        (
            "2026-02-26T12:00:00.123456+00:00",
            "2026-02-26T12:00:00.123456Z",
        ),
        ("2026-02-26T12:00:00.000Z", "2026-02-26T12:00:00Z"),
        ("2026-02-26T12:00:00-00:00", "2026-02-26T12:00:00Z"),
        (
            "2026-02-26T12:00:00.5+05:30",
            "2026-02-26T12:00:00.500000+05:30",
        ),
        (
            "2026-02-26T12:00:00.123456789z",
            "2026-02-26T12:00:00.123456Z",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            run_ok(&with("observed_at", json!(input)))["observed_at"],
            want
        );
    }
    let v = canonical_err(&with("observed_at", json!("2026-02-26T12:00:00")));
    assert_eq!(
        (v.kind, v.loc),
        ("datetime_parsing", vec![key("observed_at")])
    );
    for bad in [json!(1772107200), json!(null), json!(1.5)] {
        assert_eq!(
            canonical_err(&with("observed_at", bad)).kind,
            "datetime_type"
        );
    }
}

#[test]
fn description_rules() {
    // Row 37.
    let d = |s: &str| run_ok(&with("description", json!(s)))["description"].clone();
    assert_eq!(
        d("<script>alert('x')</script>"),
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    );
    assert_eq!(d(""), "");
    assert_eq!(d(" \u{1f}\u{3000} "), "");
    assert_eq!(d("  a & \"b\"  "), "a &amp; &quot;b&quot;");
    // At most 2048 characters before sanitising; the escaped text is not cut.
    let long = run_ok(&with("description", json!("<".repeat(2048))));
    assert_eq!(long["description"].as_str().map(str::len), Some(8192));
    let v = canonical_err(&with("description", json!("a".repeat(2049))));
    assert_eq!(
        (v.kind, v.loc),
        ("string_too_long", vec![key("description")])
    );
    assert_eq!(
        canonical_err(&with("description", json!(5))).kind,
        "string_type"
    );
    // Row 34.
    let v = canonical_err(&with(
        "description",
        json!("UNION SELECT password FROM users"),
    ));
    assert_eq!((v.kind, v.msg.as_ref()), ("value_error", INJECTION));
    assert!(v.loc.is_empty());
}

#[test]
fn rows_34_37_attribute_values() {
    let v = canonical_err(&with_attr("note", json!("OR 1=1")));
    assert_eq!(v.msg, INJECTION);
    let out = run_ok(&with_attr("img", json!("<img src=x onerror=alert(1)>")));
    assert_eq!(
        out["attributes"]["img"],
        "&lt;img src=x onerror=alert(1)&gt;"
    );
    // Nested strings and arrays are checked too; keys are not.
    assert_eq!(
        canonical_err(&with_attr("a", json!({"b": ["ok", "drop table t"]}))).msg,
        INJECTION
    );
    assert!(run(&with_attr("drop table t", json!(1))).is_ok());
}

#[test]
fn row_35_attestation_hash() {
    let mut p = base_payload();
    p["attributes"]
        .as_object_mut()
        .expect("object")
        .remove("attestation_measurement_hash");
    let v = canonical_err(&p);
    assert_eq!((v.kind, v.msg.as_ref()), ("value_error", ATTESTATION));
    assert!(v.loc.is_empty());
    let ok = |v: Value| run(&with_attr("attestation_measurement_hash", v)).is_ok();
    assert!(ok(json!(HASH.to_uppercase())));
    assert!(ok(json!(format!(" {HASH}\n"))));
    for bad in [
        json!(&HASH[1..]),
        json!(format!("{HASH}0")),
        json!(format!("{}g", &HASH[1..])),
        json!(null),
        json!(true),
        json!(1.5),
        json!([HASH]),
        json!({ "h": HASH }),
    ] {
        assert!(!ok(bad.clone()), "{bad}");
    }
    // A JSON integer passes only as exactly 64 digits.
    let int = |digits: &str| {
        let src = base_payload()
            .to_string()
            .replace(&format!("\"{HASH}\""), digits);
        run_src(&src, None).is_ok()
    };
    assert!(int(&"1".repeat(64)));
    assert!(!int(&format!("-{}", "1".repeat(64))));
    assert!(!int(&"1".repeat(63)));
    assert!(!int("1e63"));
    // Checked after sanitising: trailing text beyond the 2048-character cut is gone.
    let padded = format!("{HASH}{}x", " ".repeat(2000));
    assert!(ok(json!(padded)));
    // A later key that collides after sanitising overwrites it.
    let mut p = base_payload();
    p["attributes"]["attestation_measurement_hash "] = json!("nope");
    assert_eq!(canonical_err(&p).msg, ATTESTATION);
}

#[test]
fn injection_precedes_attestation() {
    let mut p = with_attr("z", json!("delete from t"));
    p["attributes"]
        .as_object_mut()
        .expect("object")
        .remove("attestation_measurement_hash");
    assert_eq!(canonical_err(&p).msg, INJECTION);
}

#[test]
fn attribute_values_keep_their_json_form() {
    let src = base_payload().to_string().replace(
        "\"schema_version\":\"1.0\"",
        "\"schema_version\":\"1.0\",\"n\":[-0,1E2,1.0,-0.0,2.5e-7,12345678901234567890123,true,null,{}]",
    );
    let out: Value = serde_json::from_str(&run_src(&src, None).expect("valid")).expect("json");
    let text = run_src(&src, None).expect("valid");
    assert!(text.contains(r#""n":[0,100.0,1.0,-0.0,2.5e-07,12345678901234567890123,true,null,{}]"#));
    assert_eq!(out["attributes"]["n"][6], json!(true));
}

#[test]
fn attribute_keys_are_escaped_cut_sorted_and_collide() {
    let long = format!("{}tail", "k".repeat(80));
    let mut p = base_payload();
    let a = &mut p["attributes"];
    a["b<"] = json!(1);
    a[" a "] = json!(2);
    a["é"] = json!(3);
    a[long.as_str()] = json!(4);
    a["n"] = json!({" z ": {"y": " v "}, "x'": [" w "]});
    let text = run(&p).expect("valid");
    assert!(text.contains(&format!(
        r#"{{"a":2,"attestation_measurement_hash":"{HASH}","b&lt;":1,"{}":4,"n":{{"x&#x27;":["w"],"z":{{"y":"v"}}}},"schema_version":"1.0","\u00e9":3}}"#,
        "k".repeat(80)
    )));
    // Collisions: the later key (document order) wins; serde_json sorts keys, so build text.
    let src = base_payload().to_string().replace(
        "\"schema_version\":\"1.0\"",
        "\"schema_version\":\"1.0\",\"dup \":\"first\",\" dup\":\"second\"",
    );
    assert!(run_src(&src, None)
        .expect("valid")
        .contains(r#""dup":"second""#));
    // ... but the overwritten value was still injection-checked.
    let src = base_payload().to_string().replace(
        "\"schema_version\":\"1.0\"",
        "\"schema_version\":\"1.0\",\"dup \":\"or 1 = 1\",\" dup\":\"ok\"",
    );
    assert!(matches!(
        run_src(&src, None),
        Err(PayloadError::Canonical(_))
    ));
}

#[test]
fn attribute_strings_are_cut_to_2048_after_escaping() {
    let out = run_ok(&with_attr("s", json!(format!("{}&", "a".repeat(2046)))));
    assert_eq!(out["attributes"]["s"], format!("{}&a", "a".repeat(2046)));
    let out = run_ok(&with_attr("s", json!("\u{1F600}".repeat(3000))));
    assert_eq!(
        out["attributes"]["s"].as_str().map(|s| s.chars().count()),
        Some(2048)
    );
}

#[test]
fn catalogue_is_optional_for_format_checks() {
    assert!(run_src(&base_payload().to_string(), Some(catalogue())).is_ok());
    assert!(run_src(&base_payload().to_string(), None).is_ok());
}
