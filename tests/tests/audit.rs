//! The audit log: every decision is in it, `vvctl audit verify` accepts an honest log and
//! names the tampering (row 70's chain cases), live, from an export, and from the database
//! edited directly by someone with root.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use vvgate_e2e::*;

fn opts() -> Opts {
    Opts {
        extra_toml: String::new(),
        ..Opts::default()
    }
}

/// A gateway whose log has accepted and rejected entries and a few seals.
fn busy_gateway() -> Gateway {
    let mut o = opts();
    o.env.push(("VV_TAMPER_LOG_SEAL_EVERY".into(), "4".into()));
    let g = Gateway::start_with(o);
    let p = g.pki.producer();
    let mut c = g.connect();
    for i in 0..12 {
        let s = valid();
        let mut req = request(&p, &s);
        if i % 3 == 0 {
            // A bad signature: rejected and audited.
            let at = req.len() - 3;
            req[at] ^= 1;
        }
        c.send(&req).unwrap();
    }
    g
}

fn verify_file(path: &std::path::Path) -> (i32, serde_json::Value) {
    let (code, out, err) = vvctl(&["audit", "verify", "--file", path.to_str().unwrap()]);
    let v =
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("verify output: {out} {err}"));
    (code, v)
}

#[test]
fn an_honest_log_verifies_live_and_offline() {
    let mut g = busy_gateway();
    let cfg = g.config.to_str().unwrap().to_owned();
    let (code, out, err) = vvctl(&["audit", "verify", "--config", &cfg]);
    assert_eq!(code, 0, "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);
    let entries = v["entries"].as_u64().unwrap();
    // gateway.started + 12 decisions + seals after every 4 entries.
    assert!(entries >= 16, "{v}");
    let audit = g.audit();
    assert!(audit
        .iter()
        .any(|e| e["event_type"] == "log.sealed" && e["actor"] == "SYSTEM"));
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["event_type"] == "telemetry.accepted")
            .count(),
        8
    );
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["event_type"] == "telemetry.rejected")
            .count(),
        4
    );
    for (i, e) in audit.iter().enumerate() {
        assert_eq!(e["index"], i as u64 + 1, "contiguous indexes");
    }
    // Offline, from the database, after a clean stop (which adds gateway.stopped).
    assert_eq!(g.stop(), Some(0));
    let (code, out, _) = vvctl(&["audit", "verify", "--config", &cfg]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["entries"].as_u64().unwrap() > entries);
    g.restart();
}

#[test]
fn tampering_with_an_export_is_detected() {
    let g = busy_gateway();
    let cfg = g.config.to_str().unwrap().to_owned();
    let (code, export, _) = vvctl(&["audit", "export", "--config", &cfg]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = export.lines().collect();
    let file = g.dir.join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    assert_eq!(verify_file(&file).1["ok"], true);

    let check = |lines: Vec<String>, at: u64, reason: &str| {
        std::fs::write(&file, lines.join("\n")).unwrap();
        let (code, v) = verify_file(&file);
        assert_eq!(code, 1);
        assert_eq!(
            v,
            serde_json::json!({"ok": false, "broken_at": at, "reason": reason})
        );
    };
    let owned = || lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();

    // An edited detail.
    let mut edited = owned();
    edited[2] = edited[2].replace("\"status_code\":401", "\"status_code\":202");
    if edited[2] == lines[2] {
        edited[2] = edited[2].replace("\"operator_id\":\"op-001\"", "\"operator_id\":\"op-002\"");
    }
    assert_ne!(edited[2], lines[2]);
    check(edited, 3, "entry_hash_mismatch");
    // A deleted middle entry.
    let mut deleted = owned();
    deleted.remove(4);
    check(deleted, 6, "previous_hash_mismatch");
    // Two entries swapped.
    let mut swapped = owned();
    swapped.swap(5, 6);
    check(swapped, 7, "previous_hash_mismatch");
    // A line that is not an entry.
    let mut garbage = owned();
    garbage[3] = "{\"index\":4}".into();
    check(garbage, 4, "malformed_entry");
}

#[test]
fn tampering_with_the_database_is_detected() {
    let mut g = busy_gateway();
    assert_eq!(g.stop(), Some(0));
    let db_path = g.dir.join("state").join("vvgate.redb");
    // Root on the box: rewrite entry 3 in place.
    rewrite_audit_table(&db_path, |lines| {
        let text = lines[2].clone();
        let forged = text.replacen("\"request_id\":\"", "\"request_id\":\"f", 1);
        assert_ne!(forged, text);
        lines[2] = forged;
    });
    let state = g.dir.join("state");
    let (code, out, _) = vvctl(&["audit", "verify", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "broken_at": 3, "reason": "entry_hash_mismatch"})
    );
    // The gateway still starts (and keeps appending); repairing history is not its job.
    g.restart();
}
