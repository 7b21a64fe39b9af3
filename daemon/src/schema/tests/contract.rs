//! Steps 21–22: contract v2 (§4.6).

use serde_json::{json, Value};

use super::super::*;
use super::{base_payload, key, run, run_ok, run_src};

fn contract() -> Value {
    json!({
        "execution": {
            "execution_id": "exec-1",
            "lifecycle_state": "running",
            "previous_lifecycle_state": "dispatched",
            "started_at": "2026-02-26T12:00:00Z",
            "completed_at": null,
            "failure_reason": null,
            "correlation_id": "corr-1",
        },
        "asset": {"asset_id": "a-1", "asset_ref": "urn:target:ip:10.0.0.5", "hostname": "h"},
        "identity": {"principal_id": "p", "principal_type": "user", "privilege_level": "admin"},
        "ttp": {"technique_id": "T1059", "tactic_id": "TA0002", "subtechnique_id": "T1059.001"},
        "detection": {"detected": true, "detection_latency_seconds": 0},
        "response": {"responded": false},
        "control": {"control_id": "c", "control_type": "edr", "effectiveness_score": 0.5},
    })
}

fn v2(c: Value) -> Value {
    let mut p = base_payload();
    p["attributes"]["schema_version"] = json!("2.0");
    p["attributes"]["contract_v2"] = c;
    p
}

fn edit(block: &str, field: &str, value: Option<Value>) -> Value {
    let mut c = contract();
    let b = c[block].as_object_mut().expect("block");
    match value {
        Some(v) => {
            b.insert(field.to_owned(), v);
        }
        None => {
            b.remove(field);
        }
    }
    v2(c)
}

fn v2_err(p: &Value) -> Violation {
    match run(p) {
        Err(PayloadError::ContractV2(v)) => v,
        other => panic!("expected a contract v2 failure, got {other:?}"),
    }
}

#[test]
fn row_38_valid_contract_is_carried_sanitised() {
    let mut c = contract();
    c["asset"]["hostname"] = json!(" <h> ");
    let out = run_ok(&v2(c));
    assert_eq!(
        out["attributes"]["contract_v2"]["asset"]["hostname"],
        "&lt;h&gt;"
    );
    assert_eq!(
        out["attributes"]["contract_v2"]["execution"]["completed_at"],
        Value::Null
    );
    // Optional fields may be absent, `contained` defaults.
    let minimal = json!({
        "execution": {"execution_id": "e", "lifecycle_state": "planned", "started_at": "2026-01-01T00:00:00Z"},
        "asset": {"asset_id": "a", "asset_ref": "r"},
        "identity": {"principal_id": "p", "principal_type": "t", "privilege_level": "l"},
        "ttp": {"technique_id": "T1595", "tactic_id": "TA0043"},
        "detection": {"detected": false},
        "response": {"responded": true, "contained": true},
        "control": {"control_id": "c", "control_type": "t", "effectiveness_score": 1},
    });
    assert!(run(&v2(minimal)).is_ok());
}

#[test]
fn row_39_invalid_transition() {
    let v = v2_err(&edit(
        "execution",
        "previous_lifecycle_state",
        Some(json!("succeeded")),
    ));
    assert_eq!((v.kind, v.loc), ("value_error", vec![key("execution")]));
    assert_eq!(
        v.msg,
        "Invalid execution lifecycle transition: succeeded -> running"
    );
    let allowed = [
        ("planned", "queued"),
        ("planned", "canceled"),
        ("queued", "dispatched"),
        ("dispatched", "failed"),
        ("running", "succeeded"),
        ("running", "canceled"),
    ];
    for (prev, cur) in allowed {
        let mut c = contract();
        c["execution"]["previous_lifecycle_state"] = json!(prev);
        c["execution"]["lifecycle_state"] = json!(cur);
        assert!(run(&v2(c)).is_ok(), "{prev} -> {cur}");
    }
    for (prev, cur) in [
        ("planned", "running"),
        ("failed", "failed"),
        ("canceled", "queued"),
    ] {
        let mut c = contract();
        c["execution"]["previous_lifecycle_state"] = json!(prev);
        c["execution"]["lifecycle_state"] = json!(cur);
        assert_eq!(v2_err(&v2(c)).kind, "value_error", "{prev} -> {cur}");
    }
    // No previous state: any current state.
    assert!(run(&edit("execution", "previous_lifecycle_state", None)).is_ok());
    assert_eq!(
        v2_err(&edit(
            "execution",
            "lifecycle_state",
            Some(json!("Running"))
        ))
        .kind,
        "enum"
    );
    // Enum values are matched after sanitising (trimmed).
    assert!(run(&edit(
        "execution",
        "lifecycle_state",
        Some(json!(" running "))
    ))
    .is_ok());
}

#[test]
fn row_40_contract_missing_or_not_an_object() {
    let mut p = base_payload();
    p["attributes"]["schema_version"] = json!("2.0");
    assert_eq!(run(&p), Err(PayloadError::ContractV2NotObject));
    for c in [json!(contract().to_string()), json!([]), json!(null)] {
        assert_eq!(run(&v2(c)), Err(PayloadError::ContractV2NotObject));
    }
}

#[test]
fn which_schema_versions_trigger_v2() {
    let with_version = |sv: Value| {
        let mut p = base_payload();
        p["attributes"]["schema_version"] = sv;
        run(&p)
    };
    // The sanitised, trimmed string starts with `2.`.
    for sv in ["2.0", " 2.1 ", "2.", "2.x<"] {
        assert_eq!(
            with_version(json!(sv)),
            Err(PayloadError::ContractV2NotObject),
            "{sv}"
        );
    }
    for sv in [
        json!("1.0"),
        json!("2"),
        json!("20.0"),
        json!(2.0),
        json!(null),
        json!("<2.0"),
    ] {
        assert!(with_version(sv.clone()).is_ok(), "{sv}");
    }
    // The canonical checks come first.
    let mut p = v2(json!("x"));
    p["severity"] = json!("none");
    assert!(matches!(run(&p), Err(PayloadError::Canonical(_))));
}

#[test]
fn completed_at_and_failure_reason() {
    let v = v2_err(&edit(
        "execution",
        "completed_at",
        Some(json!("2026-02-26T11:59:59.999999Z")),
    ));
    assert_eq!(
        v.msg,
        "execution.completed_at cannot be earlier than execution.started_at"
    );
    // Compared as instants: 13:00+01:00 is 12:00Z.
    assert!(run(&edit(
        "execution",
        "completed_at",
        Some(json!("2026-02-26T13:00:00+01:00"))
    ))
    .is_ok());
    assert!(run(&edit(
        "execution",
        "completed_at",
        Some(json!("2026-02-26T12:30:00+01:00"))
    ))
    .is_err());
    assert_eq!(
        v2_err(&edit(
            "execution",
            "completed_at",
            Some(json!("2026-02-26 13:00:00Z"))
        ))
        .kind,
        "datetime_parsing"
    );
    let v = v2_err(&edit("execution", "failure_reason", Some(json!("boom"))));
    assert_eq!(
        v.msg,
        "execution.failure_reason is allowed only when lifecycle_state=failed"
    );
    // Empty (after sanitising) counts as no reason.
    assert!(run(&edit("execution", "failure_reason", Some(json!("  ")))).is_ok());
    let mut c = contract();
    c["execution"]["lifecycle_state"] = json!("failed");
    c["execution"]["failure_reason"] = json!("boom");
    assert!(run(&v2(c)).is_ok());
    // Transition is checked before timing and reason.
    let mut c = contract();
    c["execution"]["previous_lifecycle_state"] = json!("failed");
    c["execution"]["failure_reason"] = json!("boom");
    assert!(v2_err(&v2(c))
        .msg
        .starts_with("Invalid execution lifecycle transition"));
}

#[test]
fn blocks_and_fields_are_strict() {
    let mut c = contract();
    c.as_object_mut().expect("object").remove("ttp");
    let v = v2_err(&v2(c));
    assert_eq!((v.kind, v.loc), ("missing", vec![key("ttp")]));
    let mut c = contract();
    c["asset"] = json!("a");
    assert_eq!(v2_err(&v2(c)).kind, "model_type");
    let mut c = contract();
    c["extra_block"] = json!({});
    let v = v2_err(&v2(c));
    assert_eq!(
        (v.kind, v.loc),
        ("extra_forbidden", vec![key("extra_block")])
    );
    let v = v2_err(&edit("identity", "group", Some(json!("x"))));
    assert_eq!(
        (v.kind, v.loc),
        ("extra_forbidden", vec![key("identity"), key("group")])
    );
    let v = v2_err(&edit("identity", "principal_id", None));
    assert_eq!(
        (v.kind, v.loc),
        ("missing", vec![key("identity"), key("principal_id")])
    );
    let cases = [
        ("detection", "detected", json!("true"), "bool_type"),
        ("detection", "detected", json!(1), "bool_type"),
        ("detection", "detected", json!(null), "bool_type"),
        (
            "detection",
            "detection_latency_seconds",
            json!(1.0),
            "int_type",
        ),
        (
            "detection",
            "detection_latency_seconds",
            json!(-1),
            "greater_than_equal",
        ),
        ("response", "contained", json!(null), "bool_type"),
        (
            "response",
            "response_latency_seconds",
            json!("5"),
            "int_type",
        ),
        (
            "control",
            "effectiveness_score",
            json!(1.5),
            "less_than_equal",
        ),
        (
            "control",
            "effectiveness_score",
            json!(-0.1),
            "greater_than_equal",
        ),
        ("control", "effectiveness_score", json!("0.5"), "float_type"),
        ("control", "effectiveness_score", json!(true), "float_type"),
        (
            "execution",
            "started_at",
            json!(1772107200),
            "datetime_type",
        ),
        (
            "execution",
            "started_at",
            json!("2026-02-26T12:00:00"),
            "datetime_parsing",
        ),
        ("execution", "execution_id", json!(""), "string_too_short"),
        ("execution", "execution_id", json!(1), "string_type"),
        (
            "asset",
            "hostname",
            json!("h".repeat(256)),
            "string_too_long",
        ),
        ("control", "control_vendor", json!(["x"]), "string_type"),
    ];
    for (block, field, value, kind) in cases {
        let v = v2_err(&edit(block, field, Some(value.clone())));
        assert_eq!(v.kind, kind, "{block}.{field} = {value}");
        assert_eq!(v.loc[0], LocPart::Key(block.to_owned().into()));
    }
    for ok in [json!(0), json!(-0), json!(12345678901234567890u64)] {
        assert!(run(&edit("detection", "detection_latency_seconds", Some(ok))).is_ok());
    }
    for ok in [json!(0), json!(0.0), json!(1.0)] {
        assert!(run(&edit("control", "effectiveness_score", Some(ok))).is_ok());
    }
}

#[test]
fn string_limits_apply_to_escaped_text() {
    // 127 + `&` escapes to 132 characters: too long for a 128 limit.
    let v = v2_err(&edit(
        "asset",
        "asset_id",
        Some(json!(format!("{}&", "a".repeat(127)))),
    ));
    assert_eq!(v.kind, "string_too_long");
    assert!(run(&edit(
        "asset",
        "asset_id",
        Some(json!(format!("  {}  ", "a".repeat(128))))
    ))
    .is_ok());
    // Whitespace-only sanitises to "" and fails a minimum of 1.
    assert_eq!(
        v2_err(&edit("asset", "asset_ref", Some(json!("   ")))).kind,
        "string_too_short"
    );
}

#[test]
fn keys_are_matched_after_sanitising() {
    let src = v2(contract())
        .to_string()
        .replace("\"execution\":", "\" execution \":");
    assert!(run_src(&src, None).is_ok());
    // A later colliding key replaces the earlier block.
    let src = v2(contract())
        .to_string()
        .replace("\"asset\":", "\"asset\":{\"bad\":1},\"asset \":");
    assert!(run_src(&src, None).is_ok());
    let src = v2(contract())
        .to_string()
        .replace("\"control\":", "\"asset \":{\"bad\":1},\"control\":");
    let Err(PayloadError::ContractV2(v)) = run_src(&src, None) else {
        panic!("the later block wins");
    };
    assert_eq!(
        (v.kind, v.loc),
        ("missing", vec![key("asset"), key("asset_id")])
    );
}

#[test]
fn ttp_identifiers() {
    let bad = [
        ("technique_id", json!("t1059")),
        ("technique_id", json!("TA0002")),
        ("technique_id", json!("T１０５９")),
        ("tactic_id", json!("T1059")),
        ("subtechnique_id", json!("T1059")),
    ];
    for (field, value) in bad {
        let v = v2_err(&edit("ttp", field, Some(value.clone())));
        assert_eq!(v.kind, "string_pattern_mismatch", "{field} = {value}");
    }
    let v = v2_err(&edit("ttp", "technique_id", Some(json!("T9999"))));
    assert_eq!(
        (v.kind, v.loc),
        ("value_error", vec![key("ttp"), key("technique_id")])
    );
    assert_eq!(v.msg, "unknown MITRE ATT&CK identifier T9999");
    assert_eq!(
        v2_err(&edit("ttp", "tactic_id", Some(json!("TA9999")))).kind,
        "value_error"
    );
    assert_eq!(
        v2_err(&edit("ttp", "subtechnique_id", Some(json!("T1059.999")))).kind,
        "value_error"
    );
    // Format only without a catalogue.
    let p = edit("ttp", "technique_id", Some(json!("T9999")));
    assert!(run_src(&p.to_string(), None).is_ok());
    assert!(run(&edit("ttp", "subtechnique_id", Some(json!(null)))).is_ok());
}
