use std::convert::Infallible;

use super::*;

const D1: &str = r#"{"campaign_id":"cmp-001","operator_id":"op-001","request_id":"00000000-0000-4000-8000-000000000000","tenant_id":"10000000-0000-0000-0000-000000000001"}"#;
const D2: &str = r#"{"detail":"Replay detected: nonce already used","request_id":"00000000-0000-4000-8000-000000000001","status_code":409}"#;

/// The two entries of the contract's audit vector (CONTRACT.md §13.1).
fn vector_lines() -> Vec<Vec<u8>> {
    let (mut l1, mut l2, mut s) = (Vec::new(), Vec::new(), Vec::new());
    let h1 = encode_entry(
        1,
        "2026-02-26T12:00:01.000000+00:00",
        "telemetry.accepted",
        ACTOR_GATEWAY,
        D1.as_bytes(),
        "",
        &mut l1,
        &mut s,
    );
    assert_eq!(
        ids::hex32(&h1).as_str(),
        "16bdb83bb0aeaa1f701d0d6aeb0850ae22e45815fb73ccc29602692b688792b3"
    );
    let h2 = encode_entry(
        2,
        "2026-02-26T12:00:02.000000+00:00",
        "telemetry.rejected",
        ACTOR_GATEWAY,
        D2.as_bytes(),
        &ids::hex32(&h1),
        &mut l2,
        &mut s,
    );
    assert_eq!(
        ids::hex32(&h2).as_str(),
        "7aafc9f19a89036ea176f6c2f2d1ccaf10cd5e34c91c5bfab96c438d8bb15eeb"
    );
    vec![l1, l2]
}

fn verify(lines: &[Vec<u8>]) -> Verdict {
    verify_lines(
        lines.iter().cloned().map(Ok::<_, Infallible>),
        VerifyOptions::default(),
    )
    .unwrap()
}

fn broken(at: u64, reason: &'static str) -> Verdict {
    Verdict::Broken {
        broken_at: at,
        reason,
    }
}

#[test]
fn contract_vectors_hash_and_verify() {
    let lines = vector_lines();
    assert_eq!(
        verify(&lines),
        Verdict::Ok {
            entries: 2,
            latest_hash: "7aafc9f19a89036ea176f6c2f2d1ccaf10cd5e34c91c5bfab96c438d8bb15eeb".into()
        }
    );
    assert!(verify(&lines)
        .to_json()
        .starts_with(r#"{"ok":true,"entries":2,"#));
}

#[test]
fn details_are_written_sorted() {
    let mut out = Vec::new();
    write_details(
        &mut out,
        &mut [
            ("status_code", Detail::Int(409)),
            (
                "request_id",
                Detail::Str("00000000-0000-4000-8000-000000000001"),
            ),
            ("detail", Detail::Str("Replay detected: nonce already used")),
        ],
    );
    assert_eq!(String::from_utf8(out).unwrap(), D2);
}

/// A chain of `n` entries with seals, built through the same code the storage thread uses.
fn stored_chain(n: usize, seal_every: u64) -> Vec<Vec<u8>> {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vvgate-audit-test-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = vvgate_storage::Store::open(&dir.join("db.redb"), 1 << 20).unwrap();
    let mut chain = Chain::new(seal_every);
    store
        .batch(|b| {
            for i in 0..n {
                let mut d = Vec::new();
                write_details(&mut d, &mut [("n", Detail::Int(i64::try_from(i).unwrap()))]);
                chain.append(
                    b,
                    // Pairs of entries share a time, as the entries of a group commit do.
                    Micros(1_772_107_200_000_000 + u64::try_from(i / 2).unwrap()),
                    ACTOR_GATEWAY,
                    "test.event",
                    &d,
                )?;
            }
            Ok(())
        })
        .unwrap();
    let r = store.read().unwrap();
    let lines: Vec<Vec<u8>> = r
        .audit_range(1, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    // The stored tree's leaves are the stored lines.
    let mut tree = vvgate_storage::tree::Frontier::default();
    for l in &lines {
        tree.append(vvgate_storage::tree::leaf_hash(l), &mut Vec::new());
    }
    let size = lines.len() as u64;
    assert_eq!(r.tree_hash(size).unwrap(), tree.root());
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
    lines
}

#[test]
fn seals_follow_every_n_entries_and_verify() {
    let lines = stored_chain(7, 3);
    // 3 entries, seal, 3 entries, seal, 1 entry.
    assert_eq!(lines.len(), 9);
    let text: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8(l.clone()).unwrap())
        .collect();
    assert!(
        text[3].contains(r#""event_type":"log.sealed""#) && text[3].contains(r#""sealed_index":3"#)
    );
    assert!(
        text[7].contains(r#""event_type":"log.sealed""#) && text[7].contains(r#""sealed_index":7"#)
    );
    assert!(text[3].contains(r#""actor":"SYSTEM""#));
    // Entries 1 and 2 were appended at the same time; the seal takes the time of entry 3.
    assert_eq!(field(&lines[0], "timestamp"), field(&lines[1], "timestamp"));
    assert_ne!(field(&lines[1], "timestamp"), field(&lines[2], "timestamp"));
    assert_eq!(field(&lines[2], "timestamp"), field(&lines[3], "timestamp"));
    assert!(verify(&lines).is_ok(), "{:?}", verify(&lines));
}

/// Rewrite line `i` with `edit` applied to its JSON text and its hash recomputed, and re-chain
/// every later line: what an attacker with write access does.
fn forge(lines: &[Vec<u8>], i: usize, edit: impl Fn(&str) -> String) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = lines.to_vec();
    out[i] = edit(std::str::from_utf8(&out[i]).unwrap()).into_bytes();
    let mut prev = if i == 0 {
        String::new()
    } else {
        field(&out[i - 1], "entry_hash")
    };
    for line in out.iter_mut().skip(i) {
        let mut tape = crate::json::Tape::new();
        let doc = tape.parse(line).unwrap();
        let g = |k: &str| doc.get(Doc::ROOT, k).unwrap();
        let mut details = Vec::new();
        crate::json::canonicalize(&doc, g("details"), &mut details, &mut Vec::new());
        let (mut l, mut s) = (Vec::new(), Vec::new());
        let h = encode_entry(
            doc.raw(g("index")).parse().unwrap(),
            &doc.str(g("timestamp")),
            &doc.str(g("event_type")),
            &doc.str(g("actor")),
            &details,
            &prev,
            &mut l,
            &mut s,
        );
        prev = ids::hex32(&h).to_string();
        *line = l;
    }
    out
}

fn field(line: &[u8], k: &str) -> String {
    let mut tape = crate::json::Tape::new();
    let doc = tape.parse(line).unwrap();
    doc.str(doc.get(Doc::ROOT, k).unwrap()).into_owned()
}

use crate::json::Doc;

#[test]
fn tampering_is_detected_with_the_contract_reasons() {
    let lines = stored_chain(7, 3);

    // An edited detail without recomputing the hash.
    let mut edited = lines.clone();
    edited[1] = String::from_utf8(edited[1].clone())
        .unwrap()
        .replace(r#""n":1"#, r#""n":9"#)
        .into_bytes();
    assert_eq!(verify(&edited), broken(2, "entry_hash_mismatch"));

    // A deleted middle entry.
    let mut deleted = lines.clone();
    deleted.remove(1);
    assert_eq!(verify(&deleted), broken(3, "previous_hash_mismatch"));

    // Two entries swapped.
    let mut swapped = lines.clone();
    swapped.swap(4, 5);
    assert_eq!(verify(&swapped), broken(6, "previous_hash_mismatch"));

    // With every later hash recomputed: a skipped index, a wrong seal.
    let skipped = forge(&lines, 2, |t| t.replace(r#""index":3"#, r#""index":4"#));
    assert_eq!(verify(&skipped), broken(4, "index_mismatch"));
    let bad_seal = forge(&lines, 3, |t| {
        t.replace(r#""sealed_index":3"#, r#""sealed_index":2"#)
    });
    assert_eq!(verify(&bad_seal), broken(4, "seal_mismatch"));

    // A line that is not JSON, or not an entry.
    let mut garbage = lines.clone();
    garbage[2] = b"not json".to_vec();
    assert_eq!(verify(&garbage), broken(3, "malformed_entry"));
    let mut extra = lines;
    extra[0] = String::from_utf8(extra[0].clone())
        .unwrap()
        .replacen('{', r#"{"extra":1,"#, 1)
        .into_bytes();
    assert_eq!(verify(&extra), broken(1, "malformed_entry"));
}

/// The hand-written entry object is byte for byte what the generic CJSON writer makes of the
/// same fields, escapes included.
#[test]
fn entry_object_matches_the_generic_writer() {
    let cases: [(&str, &str, &str, &str); 3] = [
        (
            ACTOR_GATEWAY,
            "telemetry.accepted",
            "",
            "2026-02-26T12:00:01.000000+00:00",
        ),
        (
            "a \"quoted\" \\ actor",
            "type\twith\u{1}controls",
            "ab\ncd",
            "ts é \u{7f}",
        ),
        (ACTOR_SYSTEM, "log.sealed", &"f".repeat(64), ""),
    ];
    for (actor, event_type, prev, ts) in cases {
        let mut generic = Vec::new();
        Cjson::new(&mut generic)
            .begin_obj()
            .key("actor")
            .str(actor)
            .key("details")
            .raw(D1.as_bytes())
            .key("event_type")
            .str(event_type)
            .key("index")
            .u64(u64::MAX)
            .key("previous_hash")
            .str(prev)
            .key("timestamp")
            .str(ts)
            .end_obj();
        let mut scratch = Vec::new();
        let (hash, split) = encode_hashed(
            u64::MAX,
            ts,
            event_type,
            actor,
            D1.as_bytes(),
            prev,
            &mut scratch,
        );
        assert_eq!(
            String::from_utf8_lossy(&scratch),
            String::from_utf8_lossy(&generic)
        );
        assert_eq!(hash, ids::sha256(&generic));
        assert!(scratch[..split].ends_with(D1.as_bytes()));
    }
}
