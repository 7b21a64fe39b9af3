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
    let accepted = seeds::all()
        .into_iter()
        .find(|(t, _)| *t == "request")
        .and_then(|(_, s)| s.into_iter().find(|(n, _)| *n == "accepted"))
        .map(|(_, d)| d)
        .unwrap();
    request(b"");
    let before = rig::accepted_nonces();
    request(&accepted);
    let after = rig::accepted_nonces();
    if cfg!(feature = "fuzzing") {
        assert_eq!(after, before + 1);
    } else {
        assert_eq!(after, before);
    }
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
