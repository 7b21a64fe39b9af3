//! The audit log as a transparency log: signed checkpoints and proofs checked by an
//! independent implementation (Go's `golang.org/x/mod/sumdb/note` and `sumdb/tlog`), the
//! tamper cases of rows 70 and 71 against checkpoints, and the start-up check.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]
#![allow(clippy::cast_possible_truncation)] // small tree sizes index vectors

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};
use vvgate::audit::checkpoint::{self, Checkpoint};
use vvgate_e2e::*;
use vvgate_hsm::KeyStore as _;

const ORIGIN: &str = "vvgate.e2e.test/audit";

/// The Go checker, built once per test binary from `tests/go` in GOPATH mode against the
/// Debian package `golang-golang-x-mod-dev` (no network).
fn go_checker() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = temp_dir("go").join("vvgate-tlogcheck");
        let gopath = Path::new(env!("CARGO_MANIFEST_DIR")).join("go");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("vvgate-tlogcheck")
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
            .env("GOCACHE", temp_dir("gocache"))
            .env("GOFLAGS", "")
            .status()
            .expect(
                "go (apt-get install golang-go golang-golang-x-mod-dev; scripts/test-all.sh does)",
            );
        assert!(status.success(), "building the Go checker failed");
        out
    })
}

/// Run the Go checker; (exit code, stdout + stderr).
fn go(args: &[&str]) -> (i32, String) {
    let out = Command::new(go_checker())
        .args(args)
        .output()
        .expect("checker");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ok(r: (i32, String, String)) -> String {
    assert_eq!(r.0, 0, "vvctl failed: {} {}", r.1, r.2);
    r.1
}

fn send_events(g: &Gateway, n: usize) {
    let p = g.pki.producer();
    let mut c = g.connect();
    for _ in 0..n {
        let r = c.send(&request(&p, &valid())).unwrap();
        assert_eq!(r.status, 202);
    }
}

fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Replace one base64 character of `line_prefix`'s line (a bit flip in what it encodes).
fn flip_in_line(text: &str, line_no: usize) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let l = &mut lines[line_no];
    let at = l.len() - 6;
    let c = l.as_bytes()[at];
    let new = if c == b'A' { 'B' } else { 'A' };
    l.replace_range(at..=at, &new.to_string());
    lines.join("\n")
}

#[test]
fn go_verifies_our_checkpoints_and_proofs_and_we_verify_gos() {
    let g = Gateway::start();
    let cfg = g.config.to_str().unwrap().to_owned();
    let vkey = ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--vkey"]))
        .trim()
        .to_owned();
    assert!(vkey.starts_with(&format!("{ORIGIN}+")), "{vkey}");

    // Three checkpoints of growing trees.
    let mut notes = Vec::new();
    for n in [3, 10, 6] {
        send_events(&g, n);
        let note = ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]));
        notes.push(note);
    }
    let sizes: Vec<u64> = notes
        .iter()
        .map(|n| n.lines().nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(sizes[0] < sizes[1] && sizes[1] < sizes[2], "{sizes:?}");
    let d = &g.dir;
    for (i, note) in notes.iter().enumerate() {
        let f = write(d, &format!("cp{i}.note"), note);
        let (code, out) = go(&["checkpoint", &vkey, ORIGIN, &f]);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with(&format!("{} ", sizes[i])), "{out}");
    }

    // Inclusion proofs: first, middle and last entries, against the newest and an older one.
    for (index, size) in [
        (1, None),
        (sizes[1] / 2, None),
        (sizes[2], None),
        (2, Some(sizes[0])),
        (sizes[1], Some(sizes[1])),
    ] {
        let mut args = vec![
            "audit".to_string(),
            "prove".into(),
            "--config".into(),
            cfg.clone(),
            "--index".into(),
            index.to_string(),
        ];
        if let Some(s) = size {
            args.extend(["--size".into(), s.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proof = ok(g.vvctl(&args));
        let f = write(d, "p.proof", &proof);
        let (code, out) = go(&["inclusion", &vkey, ORIGIN, &f]);
        assert_eq!(code, 0, "entry {index} size {size:?}: {out}");
        let (code, out, err) = g.vvctl(&["audit", "check-proof", "--file", &f, "--vkey", &vkey]);
        assert_eq!(code, 0, "{out} {err}");

        // One bit in a proof hash, in the entry, in the root: both checkers refuse.
        let lines: Vec<&str> = proof.split('\n').collect();
        let hash_line = lines.iter().position(|l| l.len() == 44).unwrap();
        let root_line = lines.len() - 4;
        for (what, bad) in [
            ("proof hash", flip_in_line(&proof, hash_line)),
            ("entry", flip_in_line(&proof, 1)),
            ("checkpoint root", flip_in_line(&proof, root_line)),
        ] {
            assert_ne!(bad, proof);
            let f = write(d, "bad.proof", &bad);
            let (code, out) = go(&["inclusion", &vkey, ORIGIN, &f]);
            assert_ne!(code, 0, "Go accepted a proof with a flipped {what}: {out}");
            let (code, out, err) =
                g.vvctl(&["audit", "check-proof", "--file", &f, "--vkey", &vkey]);
            assert_ne!(code, 0, "vvctl accepted a flipped {what}: {out} {err}");
        }
    }
    // Out-of-range requests get a clear error.
    let (code, _, err) = g.vvctl(&["audit", "prove", "--config", &cfg, "--index", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");
    let (code, _, err) = g.vvctl(&["audit", "prove", "--config", &cfg, "--index", "1000000"]);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");
    let (code, _, err) = g.vvctl(&[
        "audit", "prove", "--config", &cfg, "--index", "1", "--size", "999999",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no checkpoint of size 999999"), "{err}");

    // Consistency proofs between the checkpoints, checked by Go; and flipped ones refused.
    for (a, b) in [(0, 1), (1, 2), (0, 2)] {
        let v: Value = serde_json::from_str(&ok(g.vvctl(&[
            "audit",
            "consistency",
            "--config",
            &cfg,
            "--from",
            &sizes[a].to_string(),
            "--to",
            &sizes[b].to_string(),
        ])))
        .unwrap();
        assert_eq!(v["from_checkpoint"].as_str().unwrap(), notes[a]);
        let hashes: Vec<&str> = v["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        let old = write(d, "old.note", &notes[a]);
        let new = write(d, "new.note", &notes[b]);
        let pf = write(d, "c.proof", hashes.join("\n"));
        let (code, out) = go(&["consistency", &vkey, ORIGIN, &old, &new, &pf]);
        assert_eq!(code, 0, "{a}->{b}: {out}");
        let mut bad = hashes.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        let last = bad.len() - 1;
        bad[last] = flip_in_line(&bad[last], 0);
        let pf = write(d, "c.proof", bad.join("\n"));
        let (code, out) = go(&["consistency", &vkey, ORIGIN, &old, &new, &pf]);
        assert_ne!(code, 0, "Go accepted a flipped consistency proof: {out}");
    }
    // A flipped signature and a changed size are refused by Go.
    let sig_line = notes[2].lines().count() - 1;
    let f = write(d, "bad.note", flip_in_line(&notes[2], sig_line));
    assert_ne!(go(&["checkpoint", &vkey, ORIGIN, &f]).0, 0);
    let resized = notes[2].replacen(
        &format!("\n{}\n", sizes[2]),
        &format!("\n{}\n", sizes[2] + 1),
        1,
    );
    let f = write(d, "bad.note", resized);
    assert_ne!(go(&["checkpoint", &vkey, ORIGIN, &f]).0, 0);

    // Go → vvgate: a checkpoint of our log signed by Go's note package with a Go key named
    // like the log verifies with `vvctl audit verify` given that key, and not when altered.
    let (code, keys) = go(&["keygen", ORIGIN]);
    assert_eq!(code, 0, "{keys}");
    let mut kl = keys.lines();
    let (skey, go_vkey) = (kl.next().unwrap(), kl.next().unwrap());
    let body = notes[2].split("\n\n").next().unwrap().to_owned() + "\n";
    let (code, go_note) = go(&["sign", skey, &write(d, "body.txt", &body)]);
    assert_eq!(code, 0, "{go_note}");
    let export = ok(g.vvctl(&["audit", "export", "--config", &cfg]));
    let entries = write(d, "entries.jsonl", &export);
    let gcp = write(d, "go.note", &go_note);
    let (code, out, err) = g.vvctl(&[
        "audit",
        "verify",
        "--file",
        &entries,
        "--checkpoints",
        &gcp,
        "--vkey",
        go_vkey,
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let gcp = write(
        d,
        "go.note",
        flip_in_line(&go_note, go_note.lines().count() - 1),
    );
    let (code, out, _) = g.vvctl(&[
        "audit",
        "verify",
        "--file",
        &entries,
        "--checkpoints",
        &gcp,
        "--vkey",
        go_vkey,
    ]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["reason"], "checkpoint_signature_invalid");
    assert_eq!(v["broken_at"], sizes[2]);
}

/// Entries rewritten by an attacker who recomputes every hash after the change (row 71).
fn rechain(entries: &mut [Value]) -> Vec<String> {
    let mut prev = String::new();
    let (mut line, mut scratch) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for e in entries.iter_mut() {
        if e["event_type"] == "log.sealed" {
            e["details"]["last_entry_hash"] = Value::String(prev.clone());
        }
        let details = vvgate::client::canonical(&e["details"]).unwrap();
        let hash = vvgate::audit::encode_entry(
            e["index"].as_u64().unwrap(),
            e["timestamp"].as_str().unwrap(),
            e["event_type"].as_str().unwrap(),
            e["actor"].as_str().unwrap(),
            &details,
            &prev,
            &mut line,
            &mut scratch,
        );
        prev = vvgate::ids::hex32(&hash).to_string();
        out.push(String::from_utf8(line.clone()).unwrap());
    }
    out
}

/// The Merkle root of JSONL entry lines.
fn root_of(lines: &[String]) -> [u8; 32] {
    let mut f = vvgate_storage::tree::Frontier::default();
    let mut scratch = Vec::new();
    for l in lines {
        f.append(vvgate_storage::tree::leaf_hash(l.as_bytes()), &mut scratch);
    }
    f.root()
}

/// A checkpoint of `lines` signed with the gateway's own checkpoint key (as a gateway would
/// after a rollback or on a forked copy).
fn sign_as_gateway(pki: &Pki, lines: &[String]) -> String {
    let signer = vvgate_hsm::file::FileKeyStore::new()
        .record_signer(&vvgate_hsm::KeyRef::File(pki.path("checkpoint.pem")))
        .unwrap();
    let cp = Checkpoint {
        origin: ORIGIN.into(),
        size: lines.len() as u64,
        root: root_of(lines),
    };
    String::from_utf8(checkpoint::sign(&cp, signer.as_ref()).unwrap()).unwrap()
}

struct Offline {
    dir: PathBuf,
    vkey: String,
}

impl Offline {
    /// `vvctl audit verify` on files: entries, checkpoints (stored) and anchored ones.
    fn verify(&self, lines: &[String], stored: &[&str], anchored: &[&str]) -> (i32, Value) {
        let entries = write(&self.dir, "t-entries.jsonl", lines.join("\n") + "\n");
        let cps = |name: &str, notes: &[&str]| {
            let text: String = notes
                .iter()
                .map(|n| json!({ "note": n }).to_string() + "\n")
                .collect();
            write(&self.dir, name, text)
        };
        let stored = cps("t-stored.jsonl", stored);
        let anchored = cps("t-anchored.jsonl", anchored);
        let (code, out, err) = vvctl(&[
            "audit",
            "verify",
            "--file",
            &entries,
            "--checkpoints",
            &stored,
            "--anchored",
            &anchored,
            "--vkey",
            &self.vkey,
        ]);
        let v = serde_json::from_str(out.trim())
            .unwrap_or_else(|_| panic!("verify output: {out} {err}"));
        (code, v)
    }

    fn expect(&self, lines: &[String], stored: &[&str], anchored: &[&str], at: u64, reason: &str) {
        let (code, v) = self.verify(lines, stored, anchored);
        assert_eq!(code, 1, "{v}");
        assert_eq!(
            v,
            json!({"ok": false, "broken_at": at, "reason": reason}),
            "expected {reason}"
        );
    }
}

#[test]
fn tampering_is_named_against_checkpoints_rows_70_and_71() {
    let mut o = Opts::default();
    o.env.push(("VV_TAMPER_LOG_SEAL_EVERY".into(), "5".into()));
    let g = Gateway::start_with(o);
    let cfg = g.config.to_str().unwrap().to_owned();
    send_events(&g, 12);
    let cp_a = ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]));
    send_events(&g, 6);
    let cp_b = ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]));
    let size_a: u64 = cp_a.lines().nth(1).unwrap().parse().unwrap();
    let size_b: u64 = cp_b.lines().nth(1).unwrap().parse().unwrap();
    let export = ok(g.vvctl(&["audit", "export", "--config", &cfg]));
    let lines: Vec<String> = export.lines().map(str::to_owned).collect();
    let size_b_lines = lines[..size_b as usize].to_vec();
    let off = Offline {
        dir: g.dir.clone(),
        vkey: ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--vkey"]))
            .trim()
            .to_owned(),
    };
    let (code, v) = off.verify(&size_b_lines, &[&cp_a, &cp_b], &[]);
    assert_eq!(code, 0, "{v}");

    // Row 70: the tail dropped below the last checkpoint.
    let truncated = &lines[..size_b as usize - 2];
    off.expect(truncated, &[&cp_a, &cp_b], &[], size_b, "log_truncated");
    // Row 70: a checkpoint signed by another key.
    let other = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[42; 32]).unwrap();
    struct K(ring::signature::Ed25519KeyPair);
    impl vvgate_hsm::RecordSigner for K {
        fn public_key(&self) -> [u8; 32] {
            use ring::signature::KeyPair as _;
            self.0.public_key().as_ref().try_into().unwrap()
        }
        fn sign(&self, msg: &[u8]) -> Result<[u8; 64], vvgate_hsm::HsmError> {
            Ok(self.0.sign(msg).as_ref().try_into().unwrap())
        }
    }
    let forged = String::from_utf8(
        checkpoint::sign(
            &Checkpoint {
                origin: ORIGIN.into(),
                size: size_a,
                root: root_of(&lines[..size_a as usize]),
            },
            &K(other),
        )
        .unwrap(),
    )
    .unwrap();
    off.expect(
        &size_b_lines,
        &[&forged, &cp_b],
        &[],
        size_a,
        "checkpoint_signature_invalid",
    );

    // Row 71: the attacker recomputes every hash after the change.
    let parsed: Vec<Value> = size_b_lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // An entry's details changed: the chain holds, the anchored checkpoint's root does not.
    let mut changed = parsed.clone();
    let victim = changed
        .iter()
        .position(|e| e["event_type"] == "telemetry.accepted")
        .unwrap();
    changed[victim]["details"]["operator_id"] = "op-002".into();
    let changed = rechain(&mut changed);
    off.expect(&changed, &[], &[&cp_b], size_b, "root_mismatch");
    // One index skipped.
    let mut skipped = parsed.clone();
    for e in skipped.iter_mut().skip(7) {
        e["index"] = (e["index"].as_u64().unwrap() + 1).into();
    }
    let skipped = rechain(&mut skipped);
    off.expect(&skipped, &[], &[], 9, "index_mismatch");
    // A seal naming the wrong entry.
    let mut seal = parsed.clone();
    let s = seal
        .iter()
        .position(|e| e["event_type"] == "log.sealed")
        .unwrap();
    seal[s]["details"]["sealed_index"] = 1.into();
    let seal_lines = rechain(&mut seal);
    off.expect(&seal_lines, &[], &[], s as u64 + 1, "seal_mismatch");
    // A line that is not JSON.
    let mut garbage = size_b_lines.clone();
    garbage[4] = "not json".into();
    off.expect(&garbage, &[], &[], 5, "malformed_entry");
    // Checkpoints taken from two forked copies: the gateway's key signed a checkpoint of a
    // copy that changed entry `victim` and one of the original.
    let fork_cp = sign_as_gateway(&g.pki, &changed[..size_a as usize]);
    off.expect(
        &size_b_lines,
        &[&cp_b],
        &[&fork_cp],
        size_a,
        "checkpoint_inconsistent",
    );
}

#[test]
fn a_corrupted_audit_table_makes_the_gateway_unready_at_start() {
    let mut g = Gateway::start();
    send_events(&g, 4);
    let cfg = g.config.to_str().unwrap().to_owned();
    ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]));
    assert_eq!(g.ops_get("/readyz").status, 200);
    assert_eq!(g.stop(), Some(0));
    let db_path = g.dir.join("state").join("vvgate.redb");
    // Root on the box deletes the last entry: a consistent-looking chain, shorter than
    // its head and its checkpoint.
    rewrite_audit_table(&db_path, |lines| {
        lines.pop();
    });
    g.restart();
    let r = g.ops_get("/readyz");
    assert_eq!(r.status, 503);
    let body = r.body_text();
    assert!(body.contains("audit_log_corrupt"), "{body}");
    let status = g.control("{\"cmd\":\"status\"}");
    let s: Value = serde_json::from_str(&status[0]).unwrap();
    assert!(
        s["audit"]["problem"].as_str().unwrap().contains("entr"),
        "{s}"
    );
    // It refuses to sign a checkpoint over the damaged log.
    let (code, _, err) = g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]);
    assert_ne!(code, 0);
    assert!(err.contains("not signing"), "{err}");
    // And verify names it too.
    let (code, out, _) = g.vvctl(&["audit", "verify", "--config", &cfg]);
    assert_eq!(code, 1, "{out}");
}

/// A witness key (tlog-cosignature, type 0x04) and its cosignature line for a checkpoint.
struct Witness(ring::signature::Ed25519KeyPair);

impl Witness {
    fn new() -> Self {
        Self(ring::signature::Ed25519KeyPair::from_seed_unchecked(&[77; 32]).unwrap())
    }

    fn key(&self) -> [u8; 32] {
        use ring::signature::KeyPair as _;
        self.0.public_key().as_ref().try_into().unwrap()
    }

    fn vkey(&self) -> String {
        checkpoint::vkey("witness.e2e.test", checkpoint::ALG_COSIGNATURE, &self.key())
    }

    /// The note with this witness's cosignature appended.
    fn cosign(&self, note: &str) -> String {
        use base64::Engine as _;
        let body = note.split("\n\n").next().unwrap().to_owned() + "\n";
        let t = now();
        let msg = format!("cosignature/v1\ntime {t}\n{body}");
        let id = checkpoint::key_id("witness.e2e.test", checkpoint::ALG_COSIGNATURE, &self.key());
        let mut raw = id.to_be_bytes().to_vec();
        raw.extend_from_slice(&t.to_be_bytes());
        raw.extend_from_slice(self.0.sign(msg.as_bytes()).as_ref());
        format!(
            "{note}— witness.e2e.test {}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

fn anchored(ns: &NatsServer, pki: &Pki) -> Vec<StreamMessage> {
    ns.messages(pki)
        .into_iter()
        .filter(|m| m.subject == "vectorvue.audit.checkpoint")
        .collect()
}

#[test]
fn checkpoints_are_anchored_in_the_queue_cosigned_and_a_rollback_is_caught() {
    let dir = temp_dir("anchor");
    let pki = Pki::new(&dir.join("pki"));
    let ns = NatsServer::start(&pki, NatsAuth::UserPass);
    let w = Witness::new();
    let mut o = ns.gateway_opts(&pki, Opts::default());
    o.audit_toml = format!(
        "witness_keys = [\"{}\"]\ncosignature_subject = \"vectorvue.audit.cosignature\"\n",
        w.vkey()
    );
    let mut g = Gateway::start_in(dir.clone(), pki.clone(), o);
    let cfg = g.config.to_str().unwrap().to_owned();
    let vkey = ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--vkey"]))
        .trim()
        .to_owned();

    // A checkpoint is spooled, then published with Nats-Msg-Id = origin/size.
    send_events(&g, 5);
    let note = ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]));
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    wait_for(20, "the checkpoint in the stream", || {
        anchored(&ns, &pki)
            .iter()
            .any(|m| m.data == note.as_bytes())
    });
    let m = anchored(&ns, &pki)
        .into_iter()
        .find(|m| m.data == note.as_bytes())
        .unwrap();
    assert_eq!(
        m.header("Nats-Msg-Id"),
        Some(format!("{ORIGIN}/{size}").as_str())
    );
    assert_eq!(m.header("Vv-Envelope-Kind"), Some("checkpoint"));

    // A witness cosigns over NATS; the gateway verifies and stores the cosignature.
    let cosigned = w.cosign(&note);
    ns.publish(&pki, "vectorvue.audit.cosignature", cosigned.as_bytes());
    wait_for(20, "the stored cosignature", || {
        let (_, out, _) = g.vvctl(&["audit", "export", "--config", &cfg, "--checkpoints"]);
        out.contains("witness.e2e.test")
    });
    // A cosignature by an unknown witness, or over another body, is not stored.
    let forged = Witness(ring::signature::Ed25519KeyPair::from_seed_unchecked(&[78; 32]).unwrap())
        .cosign(&note);
    ns.publish(&pki, "vectorvue.audit.cosignature", forged.as_bytes());
    let (code, out, err) = g.vvctl(&["audit", "verify", "--config", &cfg, "--witness", &w.vkey()]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(err.contains("witness cosignatures: 1"), "{err}");
    let stored = ok(g.vvctl(&["audit", "export", "--config", &cfg, "--checkpoints"]));
    assert_eq!(stored.matches("— witness.e2e.test").count(), 1, "{stored}");
    // Through the control socket too: the same cosigned note adds nothing new.
    let f = write(&dir, "cosigned.note", &cosigned);
    let out = ok(g.vvctl(&["audit", "cosign", "--config", &cfg, "--file", &f]));
    assert!(out.contains("\"added\":0"), "{out}");

    // Keep a copy of the state (a backup), then let the log grow and be anchored further.
    assert_eq!(g.stop(), Some(0));
    let db = dir.join("state").join("vvgate.redb");
    let backup = dir.join("backup.redb");
    std::fs::copy(&db, &backup).unwrap();
    g.restart();
    send_events(&g, 5);
    let later = ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]));
    wait_for(20, "the later checkpoint in the stream", || {
        anchored(&ns, &pki)
            .iter()
            .any(|m| m.data == later.as_bytes())
    });
    assert_eq!(g.stop(), Some(0));

    // Root on the box restores the backup: the gateway compares its log with the newest
    // anchored checkpoint when it connects, and stops being ready (and signing).
    std::fs::copy(&backup, &db).unwrap();
    g.restart();
    wait_for(20, "audit_log_corrupt after the rollback", || {
        g.ops_get("/readyz")
            .body_text()
            .contains("audit_log_corrupt")
    });
    let status: Value = serde_json::from_str(&g.control("{\"cmd\":\"status\"}")[0]).unwrap();
    assert!(
        status["audit"]["problem"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{status}"
    );
    // Off the box: the local log checked against the anchored checkpoints.
    let anchored_file: String = anchored(&ns, &pki)
        .iter()
        .map(|m| json!({ "note": String::from_utf8_lossy(&m.data) }).to_string() + "\n")
        .collect();
    let af = write(&dir, "anchored.jsonl", anchored_file);
    let (code, out, err) = g.vvctl(&[
        "audit",
        "verify",
        "--config",
        &cfg,
        "--anchored",
        &af,
        "--vkey",
        &vkey,
    ]);
    assert_eq!(code, 1, "{out} {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        ["log_truncated", "checkpoint_inconsistent", "root_mismatch"]
            .contains(&v["reason"].as_str().unwrap()),
        "{v}"
    );
}

#[test]
fn exported_segments_are_pruned_locally_and_the_whole_log_still_verifies_off_the_box() {
    let dir = temp_dir("retention");
    let pki = Pki::new(&dir.join("pki"));
    let ns = NatsServer::start(&pki, NatsAuth::UserPass);
    let mut o = ns.gateway_opts(&pki, Opts::default().with("rate_limit_per_minute = 100000"));
    o.audit_toml = "segment_entries = 64\nretain_entries = 64\n".into();
    let mut g = Gateway::start_in(dir.clone(), pki.clone(), o);
    let cfg = g.config.to_str().unwrap().to_owned();
    let vkey = ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--vkey"]))
        .trim()
        .to_owned();
    send_events(&g, 300);
    let retention = || -> Value {
        serde_json::from_str(&g.control("{\"cmd\":\"audit_retention\"}")[0]).unwrap()
    };
    wait_for(30, "entries exported and pruned", || {
        retention()["pruned_through"].as_u64().unwrap_or(0) >= 128
    });
    let ret = retention();
    let pruned = ret["pruned_through"].as_u64().unwrap();
    let exported = ret["exported_through"].as_u64().unwrap();
    assert_eq!(pruned % 64, 0);
    assert!(exported >= pruned + 64, "{ret}");
    // The metrics follow (refreshed after each group commit).
    wait_for(10, "retention metrics", || {
        g.metric("vvgate_audit_pruned_through") >= pruned
            && g.metric("vvgate_audit_exported_through") >= pruned + 64
    });
    assert!(g.metric("vvgate_audit_segments_spooled_total") >= 2);
    assert_eq!(g.metric("vvgate_audit_segment_failures_total"), 0);

    // Locally: the log starts after the pruned entries and still verifies.
    let (code, out, err) = g.vvctl(&["audit", "verify", "--config", &cfg]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        err.contains(&format!("starts after entry {pruned}")),
        "{err}"
    );
    let (code, _, err) = g.vvctl(&["audit", "prove", "--config", &cfg, "--index", "1"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("does not exist") || err.contains("pruned"),
        "{err}"
    );
    ok(g.vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]));
    let proof = ok(g.vvctl(&[
        "audit",
        "prove",
        "--config",
        &cfg,
        "--index",
        &(pruned + 1).to_string(),
    ]));
    let pf = write(&dir, "p.proof", &proof);
    ok(g.vvctl(&["audit", "check-proof", "--file", &pf, "--vkey", &vkey]));

    // Off the box: the exported segments plus the local tail are the whole log, and every
    // anchored checkpoint matches it.
    let msgs = ns.messages(&pki);
    let mut segments: Vec<(u64, Vec<u8>)> = msgs
        .iter()
        .filter(|m| m.subject == "vectorvue.audit.segment")
        .map(|m| {
            let id = m.header("Nats-Msg-Id").unwrap();
            let range = id.rsplit('/').next().unwrap();
            let first: u64 = range.split('-').next().unwrap().parse().unwrap();
            assert_eq!(
                m.header("Vv-Integrity-Hash").unwrap(),
                vvgate::ids::hex32(&vvgate::ids::sha256(&m.data)).as_str()
            );
            (first, m.data.clone())
        })
        .collect();
    segments.sort_by_key(|(f, _)| *f);
    let mut whole = Vec::new();
    for (_, data) in &segments {
        whole.extend_from_slice(data);
    }
    let exported_lines = String::from_utf8(whole).unwrap();
    let local = ok(g.vvctl(&["audit", "export", "--config", &cfg]));
    let local_first: u64 = serde_json::from_str::<Value>(local.lines().next().unwrap()).unwrap()
        ["index"]
        .as_u64()
        .unwrap();
    assert_eq!(local_first, pruned + 1);
    let mut all: Vec<&str> = exported_lines
        .lines()
        .take(usize::try_from(pruned).unwrap())
        .collect();
    all.extend(local.lines());
    let file = write(&dir, "whole.jsonl", all.join("\n") + "\n");
    let anchored_file: String = anchored(&ns, &pki)
        .iter()
        .map(|m| json!({ "note": String::from_utf8_lossy(&m.data) }).to_string() + "\n")
        .collect();
    let af = write(&dir, "anchored.jsonl", anchored_file);
    let (code, out, err) = vvctl(&[
        "audit",
        "verify",
        "--file",
        &file,
        "--anchored",
        &af,
        "--vkey",
        &vkey,
    ]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(!err.contains(" 0 verified"), "{err}");

    // A restart re-reads the pruned tree and is ready.
    assert_eq!(g.stop(), Some(0));
    g.restart();
    assert_eq!(g.ops_get("/readyz").status, 200);
    send_events(&g, 3);
}
