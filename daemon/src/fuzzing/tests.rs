//! Every seed runs clean through its entry point, and inputs that once broke a parser stay
//! fixed (each reproducer is a case here).

use super::*;

fn run(target: &str, data: &[u8]) {
    match target {
        "http_framing" => http_framing(data),
        "request" => request(data),
        "payload" => payload(data),
        "config" => config(data),
        "records" => records(data),
        "nats" => nats(data),
        "checkpoint" => checkpoint(data),
        "audit_export" => audit_export(data),
        "service_bodies" => service_bodies(data),
        "kv_value" => kv_value(data),
        "evidence" => evidence(data),
        other => panic!("unknown target {other}"),
    }
}

#[test]
fn seeds_run_clean() {
    for (target, seeds) in seeds::all() {
        for (name, data) in seeds {
            eprintln!("{target}/{name}");
            run(target, &data);
        }
    }
}

#[test]
fn checkpoint_seed_verifies_and_export_seed_is_clean() {
    let all = seeds::all();
    let get = |t: &str, n: &str| {
        all.iter()
            .find(|(target, _)| *target == t)
            .and_then(|(_, s)| s.iter().find(|(name, _)| *name == n))
            .map(|(_, d)| d.clone())
            .unwrap()
    };
    let key = checkpoint_key();
    let keys = Keys::new(std::slice::from_ref(&key), &[]);
    let note = get("checkpoint", "signed");
    let opened = checkpoint::open(&note, Some(CHECKPOINT_ORIGIN), &keys).unwrap();
    assert_eq!(opened.checkpoint.size, 5);
    let log = get("audit_export", "log");
    let lines = log
        .split(|&b| b == b'\n')
        .map(|l| Ok::<_, std::convert::Infallible>(l.to_vec()));
    let Ok(found) = verify_entries(lines, &VerifyOptions::default(), &[5]);
    assert!(found.verdict.is_ok(), "{:?}", found.verdict);
    let report = verify_checkpoints(
        &found,
        &[CheckpointInput {
            note,
            source: "seed",
        }],
        Some(CHECKPOINT_ORIGIN),
        &keys,
    )
    .unwrap();
    assert_eq!(report.checked, 1);
}

/// The request seeds get past identity and the signature: with the forged-signature verifier
/// the accepted seed is stored (its nonce is in the store afterwards); without it, it stops
/// at the signature and nothing is stored.
#[test]
fn request_seed_reaches_the_store() {
    request(b"");
    for name in ["accepted", "execution-graph"] {
        let before = rig::accepted_nonces();
        request(&seed("request", name));
        let after = rig::accepted_nonces();
        if cfg!(feature = "fuzzing") {
            assert_eq!(after, before + 1, "{name}");
        } else {
            assert_eq!(after, before, "{name}");
        }
    }
}

/// Inputs that once crashed a target.
#[test]
fn reproducers() {
    // An out-of-bounds index in `ids::parse_uuid`: a request id of 36 characters with the
    // four canonical hyphens and one more in place of a digit.
    kv_value(br#"{"accepted_at":177297290720007200,"appliance":"gwUapplian~e-a","body_sha256":"c34d5aa6db1a40db4b30713f0cf596e898b4329fe5ba3bdd5ea1075c6c406dae","request_id":"11111111-1111-1111-1111-1111-1111111","route":"/internal/v1/telemetry","v":1}"#);
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    seeds::all()
        .into_iter()
        .find(|(t, _)| *t == target)
        .and_then(|(_, s)| s.into_iter().find(|(n, _)| *n == name))
        .map(|(_, d)| d)
        .unwrap()
}

/// The seeds of the service-body, bucket-value and evidence targets pass their parsers, so
/// the fuzzer starts from inputs that reach the checks behind them.
#[test]
fn service_value_and_evidence_seeds_pass_their_parsers() {
    use crate::schema::service::{parse_execution_graph, parse_federation, parse_feedback_query};
    let (fed, graph, query) = (
        seed("service_bodies", "federation"),
        seed("service_bodies", "execution-graph"),
        seed("service_bodies", "feedback-query"),
    );
    let mut tape = Tape::new();
    parse_federation(&tape.parse(&fed).unwrap()).unwrap();
    parse_execution_graph(&tape.parse(&graph).unwrap()).unwrap();
    parse_feedback_query(&tape.parse(&query).unwrap()).unwrap();
    assert_eq!(
        crate::cluster::value::parse(&seed("kv_value", "ours"))
            .unwrap()
            .appliance,
        "gw-a"
    );
    assert!(crate::cluster::value::parse(&seed("kv_value", "foreign")).is_err());
    let v1: serde_json::Value = serde_json::from_slice(&seed("evidence", "v1")).unwrap();
    let plain =
        crate::evidence::open_v1(&v1, EVIDENCE_TENANT, EVIDENCE_V1_ROOT_ID, &EVIDENCE_V1_ROOT)
            .unwrap();
    assert_eq!(&plain[..], br#"{"finding":"critical","evidence":"blob"}"#);
    let v2: serde_json::Value = serde_json::from_slice(&seed("evidence", "v2")).unwrap();
    let kek: std::sync::Arc<dyn vvgate_hsm::Kek> = std::sync::Arc::new(FuzzKek);
    let plain = crate::evidence::open(&v2, EVIDENCE_TENANT, Some("blob-1"), &|id| {
        (id == EVIDENCE_KEK_ID).then(|| std::sync::Arc::clone(&kek))
    })
    .unwrap();
    assert_eq!(&plain[..], br#"{"finding":"critical"}"#);
}

/// Writes the seed corpus into `$VVGATE_FUZZ_SEEDS/<target>/` (run by `fuzz/make-seeds.sh`).
#[test]
#[ignore = "writes files; run by fuzz/make-seeds.sh"]
fn write_seed_corpus() {
    let dir = std::path::PathBuf::from(std::env::var("VVGATE_FUZZ_SEEDS").unwrap());
    for (target, seeds) in seeds::all() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        for (name, data) in seeds {
            std::fs::write(d.join(name), data).unwrap();
        }
    }
}
