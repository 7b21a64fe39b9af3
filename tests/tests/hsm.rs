//! Keys in a PKCS#11 token (SoftHSM, the real module; `VVGATE_PKCS11_MODULE` names another):
//! every key is made by the ceremonies themselves (`vvctl keys init/generate/csr`), the real
//! `vvgated` serves mutual TLS with the TLS key in the token, signs checkpoints with the
//! token's checkpoint key, refuses weak and missing keys and wrong PINs at start, and the
//! ceremonies' transcripts land in the audit log, signed. Each test has its own token
//! directory.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::Value;
use vvgate::audit::checkpoint::{self, Keys, VerifierKey};
use vvgate::devpki::DevCa;
use vvgate_e2e::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A token with the gateway's four keys, made by the ceremonies, a test PKI and the TLS
/// certificate issued for the token's TLS key (through a CSR signed in the token).
struct Provisioned {
    dir: PathBuf,
    hsm: SoftHsm,
    pki: Pki,
    cert: PathBuf,
}

impl Provisioned {
    fn new(tag: &str) -> Self {
        let dir = temp_dir(tag);
        let hsm = SoftHsm::new(&dir.join("hsm"), "vvgate-e2e");
        let out = hsm.init();
        assert!(
            out.contains("token initialised: label=vvgate-e2e serial="),
            "{out}"
        );
        let out = hsm.keys_ok(
            "generate",
            &[
                "--purpose",
                "tls",
                "--purpose",
                "checkpoint",
                "--purpose",
                "feedback",
                "--purpose",
                "kek",
                "--no-audit",
            ],
        );
        for k in ["pkcs11:0101", "pkcs11:0201", "pkcs11:0301", "pkcs11:0401"] {
            assert!(out.contains(k), "{k} not generated: {out}");
        }
        assert!(out.contains("signed by pkcs11:0201"), "{out}");
        let csr = dir.join("server.csr");
        let csr_s = csr.display().to_string();
        hsm.keys_ok(
            "csr",
            &[
                "--cn",
                "localhost",
                "--san",
                "localhost",
                "--san",
                "127.0.0.1",
                "--out",
                &csr_s,
                "--no-audit",
            ],
        );
        let pki = Pki::new(&dir.join("pki"));
        let ca = DevCa::load(&pki.dir).expect("ca");
        let cert_pem = ca
            .sign_csr(&std::fs::read_to_string(&csr).expect("csr"))
            .expect("sign the CSR");
        let cert = dir.join("server-hsm.pem");
        std::fs::write(&cert, cert_pem).expect("cert");
        Self {
            dir,
            hsm,
            pki,
            cert,
        }
    }

    fn config(&self, keys: &HsmKeys, pin_file: &Path) -> String {
        hsm_config_text(&self.dir, &self.pki, &self.hsm, &self.cert, keys, pin_file)
    }

    fn write_config(&self, name: &str, keys: &HsmKeys, pin_file: &Path) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, self.config(keys, pin_file)).expect("config");
        p
    }

    fn start(&self) -> Gateway {
        Gateway::start_with_config(
            self.dir.clone(),
            self.pki.clone(),
            &self.config(&HsmKeys::default(), &self.hsm.pin_file()),
            self.hsm.env(),
        )
    }
}

/// Send one fresh signed event over the harness's mTLS client; the status.
fn send_event(g: &Gateway) -> u16 {
    let mut c = g.connect();
    let s = valid();
    c.send(&request(&g.pki.producer(), &s))
        .expect("send")
        .status
}

/// The `keys.ceremony` entries of the log, as (entry, the transcript document rebuilt from
/// its details).
fn ceremony_entries(g: &Gateway) -> Vec<(Value, Value)> {
    g.audit()
        .into_iter()
        .filter(|e| e["event_type"] == "keys.ceremony")
        .map(|e| {
            let mut details = e["details"].as_object().cloned().expect("details");
            details.remove("transcript_sha256");
            let doc = vvgate::keys::unflatten(&details).expect("unflatten");
            (e, doc)
        })
        .collect()
}

/// Check a rebuilt transcript document's signature with ring against `public` (the token's
/// checkpoint key), independently of `vvgate::keys::verify`, and its recorded hash.
fn assert_signed_by(entry: &Value, doc: &Value, public: &[u8]) {
    assert_eq!(doc["signature"]["status"], "signed", "{doc}");
    let sig = B64
        .decode(doc["signature"]["value_b64"].as_str().expect("signature"))
        .expect("base64");
    let bytes = vvgate::keys::cjson(&doc["transcript"]).expect("cjson");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(&bytes, &sig)
        .expect("the transcript signature verifies with the token's checkpoint key");
    let sha = vvgate::ids::hex32(&vvgate::ids::sha256(&bytes)).to_string();
    assert_eq!(entry["details"]["transcript_sha256"], sha.as_str());
    // A changed transcript does not verify.
    let mut forged = doc["transcript"].clone();
    forged["officers"][1] = "Mallory".into();
    let forged = vvgate::keys::cjson(&forged).expect("cjson");
    assert!(
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(&forged, &sig)
            .is_err()
    );
}

/// The signed note's text and its Ed25519 signature (after the 4-byte key id).
fn note_signature(note: &str) -> (Vec<u8>, Vec<u8>) {
    let split = note.find("\n\n").expect("signed note") + 1;
    let text = note.as_bytes()[..split].to_vec();
    let line = note[split + 1..].lines().next().expect("signature line");
    let sig = B64
        .decode(line.rsplit(' ').next().expect("signature"))
        .expect("base64");
    (text, sig[4..].to_vec())
}

#[test]
fn hsm_gateway_serves_mtls_and_signs_with_token_keys() {
    let p = Provisioned::new("hsm-serve");
    let g = p.start();
    let cfg = g.config.display().to_string();

    // The harness's rustls client: a signed event is accepted over mTLS.
    assert_eq!(send_event(&g), 202);
    assert_eq!(g.ops_get("/readyz").status, 200);

    // openssl s_client: full mutual TLS handshake, server certificate verified, HTTP answer.
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(g.addr.to_string())
        .args([
            "-servername",
            "localhost",
            "-CAfile",
            "ca.pem",
            "-cert",
            "producer.pem",
            "-key",
            "producer.key",
            "-verify_return_error",
            "-quiet",
        ])
        .current_dir(&p.pki.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("write");
    }
    let out = child.wait_with_output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}\n{err}");
    assert!(err.contains("verify return:1"), "{err}");

    // The certificate the gateway serves carries the token's TLS public key.
    let spki = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&p.cert)
        .output()
        .expect("openssl x509");
    let pem = String::from_utf8_lossy(&spki.stdout);
    let der = B64
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .expect("spki");
    let tls_public = p.hsm.public_key("pkcs11:0101");
    assert_eq!(tls_public.len(), 65);
    assert!(
        der.ends_with(&tls_public),
        "certificate key is the token key"
    );

    // Checkpoints: the gateway's verifier key is the token's checkpoint public key.
    let cp_public: [u8; 32] = p
        .hsm
        .public_key("pkcs11:0201")
        .try_into()
        .expect("32 bytes");
    let computed = checkpoint::vkey(HSM_ORIGIN, checkpoint::ALG_ED25519, &cp_public);
    let (code, vkey, err) = vvctl(&["audit", "checkpoint", "--config", &cfg, "--vkey"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(vkey.trim(), computed);
    let (code, note, err) = vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]);
    assert_eq!(code, 0, "{err}");
    let keys = Keys::new(&[VerifierKey::parse(&computed).expect("vkey")], &[]);
    let opened = checkpoint::open(note.as_bytes(), Some(HSM_ORIGIN), &keys)
        .expect("the checkpoint verifies with the token's key");
    assert!(opened.checkpoint.size >= 2, "gateway.started + the event");
    let (text, sig) = note_signature(&note);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, cp_public)
        .verify(&text, &sig)
        .expect("ring verifies the checkpoint signature with the token's public key");
    let (code, _, err) = vvctl(&["audit", "verify", "--config", &cfg, "--vkey", &computed]);
    assert_eq!(code, 0, "{err}");

    // The ceremonies run before the gateway existed are recorded now, in order.
    let files = p.hsm.transcript_files();
    assert_eq!(files.len(), 3, "init, generate, csr: {files:?}");
    let mut args = vec!["keys", "record", "--config", &cfg];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let (code, out, err) = vvctl(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.matches("appended to the running gateway's audit log")
            .count(),
        3,
        "{out}"
    );
    let entries = ceremony_entries(&g);
    let kinds: Vec<&str> = entries
        .iter()
        .map(|(_, d)| d["transcript"]["ceremony"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["init-token", "generate", "csr"]);
    for (e, doc) in &entries {
        assert_eq!(e["actor"], "SYSTEM");
        assert_eq!(
            doc["transcript"]["officers"],
            serde_json::json!([OFFICER_A, OFFICER_B])
        );
        vvgate::keys::verify(doc).expect("the rebuilt document verifies");
    }
    // Token initialisation: no checkpoint key yet, and the transcript says so.
    let (_, init) = &entries[0];
    assert_eq!(init["signature"]["status"], "unsigned");
    assert!(init["signature"]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("does not exist yet"));
    // The others are signed by the token's checkpoint key and name the keys.
    for (e, doc) in &entries[1..] {
        assert_signed_by(e, doc, &cp_public);
    }
    let generated = &entries[1].1["transcript"]["keys"];
    assert_eq!(generated.as_array().map(Vec::len), Some(4));
    assert_eq!(generated[1]["key_ref"], "pkcs11:0201");
    assert_eq!(
        generated[1]["public_key_b64"].as_str(),
        Some(B64.encode(cp_public).as_str())
    );
    // The gateway checks a transcript before it appends it: a changed one is refused.
    let mut forged = entries[1].1.clone();
    forged["transcript"]["officers"][1] = "Mallory".into();
    let req = serde_json::json!({"cmd": "keys_transcript", "transcript": forged});
    let refused = vvgate::cli::control(&g.control, &req.to_string());
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("does not verify")),
        "{refused:?}"
    );
    assert_eq!(ceremony_entries(&g).len(), 3, "nothing appended");
    // A signed checkpoint covers the last one.
    let last = entries
        .last()
        .map(|(e, _)| e["index"].as_u64().unwrap_or(0));
    let (_, note, _) = vvctl(&["audit", "checkpoint", "--config", &cfg]);
    let cp = checkpoint::open(note.as_bytes(), Some(HSM_ORIGIN), &keys).expect("checkpoint");
    assert!(Some(cp.checkpoint.size) >= last, "{note}");

    // No PIN and no share reaches the log.
    let pin = p.hsm.user_pin();
    let share_a = std::fs::read_to_string(p.hsm.share_a()).expect("share");
    let share_line = share_a
        .lines()
        .find_map(|l| l.strip_prefix("user-pin-share: "))
        .expect("share line")
        .to_owned();
    for line in g.audit_lines() {
        assert!(!line.contains(&pin), "PIN in the audit log");
        assert!(!line.contains(&share_line[25..]), "share in the audit log");
    }
    assert!(!g.log_text().contains(&pin), "PIN in the gateway's log");
}

#[test]
fn hsm_rotate_and_retire_are_recorded_ceremonies() {
    let p = Provisioned::new("hsm-rotate");
    let mut g = p.start();
    let cfg = g.config.display().to_string();
    let cp_public = p.hsm.public_key("pkcs11:0201");

    // Rotate the KEK with the gateway running: the transcript goes through its control socket.
    let out = p
        .hsm
        .keys_ok("rotate", &["--purpose", "kek", "--config", &cfg]);
    assert!(
        out.contains("pkcs11:0402") && out.contains("generated"),
        "{out}"
    );
    assert!(
        out.contains("appended to the running gateway's audit log"),
        "{out}"
    );
    let refs: Vec<Value> = p.hsm.list().iter().map(|k| k["key_ref"].clone()).collect();
    assert!(refs.contains(&"pkcs11:0401".into()) && refs.contains(&"pkcs11:0402".into()));
    let entries = ceremony_entries(&g);
    let (e, doc) = entries.last().expect("rotate entry");
    assert_eq!(doc["transcript"]["ceremony"], "rotate");
    assert_eq!(doc["transcript"]["purpose"], "kek");
    let keys = &doc["transcript"]["keys"];
    assert_eq!(keys[0]["key_ref"], "pkcs11:0401");
    assert_eq!(keys[0]["status"], "kept");
    assert_eq!(keys[1]["key_ref"], "pkcs11:0402");
    assert_eq!(keys[1]["status"], "generated");
    assert_signed_by(e, doc, &cp_public);
    // The gateway still runs on the old version and is ready.
    assert_eq!(send_event(&g), 202);

    // Retiring a version the configuration still uses is refused, naming the key.
    let (code, _, err) = p.hsm.keys(
        "retire",
        &["--purpose", "kek", "--version", "1", "--config", &cfg],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("pkcs11:0401 is still the gateway's evidence.keys.kek-v1"),
        "{err}"
    );
    // So is retiring the only version of a key.
    let (code, _, err) = p.hsm.keys(
        "retire",
        &["--purpose", "feedback", "--version", "1", "--no-audit"],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("is the only feedback key"), "{err}");

    // Stop, point the configuration at the new KEK, retire the old one: the transcript goes
    // into the stopped gateway's database.
    assert_eq!(g.stop(), Some(0));
    let new_keys = HsmKeys {
        kek: "pkcs11:0402".into(),
        ..HsmKeys::default()
    };
    std::fs::write(&g.config, p.config(&new_keys, &p.hsm.pin_file())).expect("config");
    let out = p.hsm.keys_ok(
        "retire",
        &["--purpose", "kek", "--version", "1", "--config", &cfg],
    );
    assert!(
        out.contains("appended to the stopped gateway's audit log as entry"),
        "{out}"
    );
    let refs: Vec<Value> = p.hsm.list().iter().map(|k| k["key_ref"].clone()).collect();
    assert!(!refs.contains(&"pkcs11:0401".into()), "{refs:?}");
    assert!(refs.contains(&"pkcs11:0402".into()));

    // The gateway starts on the new KEK; the retirement is in its log, signed, and the whole
    // log (chain and checkpoints) still verifies.
    g.restart_as_is();
    assert_eq!(send_event(&g), 202);
    let entries = ceremony_entries(&g);
    let (e, doc) = entries.last().expect("retire entry");
    assert_eq!(doc["transcript"]["ceremony"], "retire");
    assert_eq!(doc["transcript"]["keys"][0]["key_ref"], "pkcs11:0401");
    assert_eq!(doc["transcript"]["keys"][0]["status"], "retired");
    assert_signed_by(e, doc, &cp_public);
    let (code, out, err) = vvctl(&["audit", "checkpoint", "--config", &cfg, "--now"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = vvctl(&["audit", "verify", "--config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"ok\":true"), "{out}");
}

#[test]
fn hsm_weak_and_missing_keys_stop_the_start_naming_them() {
    let p = Provisioned::new("hsm-weak");
    let env = p.hsm.env();
    // An extractable Ed25519 key and an unrestricted AES key, made with pkcs11-tool, as a
    // careless operator would.
    let (code, out) = p.hsm.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:edwards25519",
        "--id",
        "0209",
        "--label",
        "weak checkpoint",
        "--usage-sign",
        "--extractable",
        "--sensitive",
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = p.hsm.pkcs11_tool(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--id",
        "0409",
        "--label",
        "weak kek",
    ]);
    assert_eq!(code, 0, "{out}");
    let listed = p.hsm.list();
    let weak = listed
        .iter()
        .find(|k| k["key_ref"] == "pkcs11:0209")
        .expect("listed");
    assert_eq!(
        weak["failures"][0]["attribute"], "CKA_EXTRACTABLE",
        "{weak}"
    );

    let cases = [
        (
            HsmKeys {
                checkpoint: "pkcs11:0209".into(),
                ..HsmKeys::default()
            },
            [
                "audit.checkpoint_key",
                "pkcs11:0209",
                "attribute CKA_EXTRACTABLE",
            ],
        ),
        (
            HsmKeys {
                kek: "pkcs11:0409".into(),
                ..HsmKeys::default()
            },
            [
                "evidence.keys.kek-v1",
                "pkcs11:0409",
                "refused: attribute CKA_",
            ],
        ),
        (
            HsmKeys {
                checkpoint: "pkcs11:0299".into(),
                ..HsmKeys::default()
            },
            ["audit.checkpoint_key", "pkcs11:0299", "not found"],
        ),
        (
            HsmKeys {
                tls: "pkcs11:0105".into(),
                ..HsmKeys::default()
            },
            ["tls.server_key", "pkcs11:0105", "not found"],
        ),
    ];
    for (i, (keys, want)) in cases.iter().enumerate() {
        let config = p.write_config(&format!("case-{i}.toml"), keys, &p.hsm.pin_file());
        let config = config.display().to_string();
        for args in [
            vec!["--config", config.as_str()],
            vec!["--check-config", "--config", config.as_str()],
        ] {
            let (code, err) = vvgated_exit_env(&args, &env, 30);
            assert_eq!(code, 69, "{args:?}: {err}");
            for w in want {
                assert!(err.contains(w), "{args:?}: {w:?} missing from: {err}");
            }
        }
    }
    // With the good keys the same token starts.
    let g = p.start();
    assert_eq!(send_event(&g), 202);
}

#[test]
fn hsm_wrong_pin_exits_77_after_one_login_and_never_locks_the_token() {
    let p = Provisioned::new("hsm-pin");
    // OpenSC's PKCS#11 spy in front of SoftHSM logs every call the gateway makes.
    let spy = [
        "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
        "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("pkcs11-spy.so (apt-get install opensc; scripts/test-all.sh does)");
    let bad_pin = p.dir.join("bad-pin");
    vvgate::devpki::write_private(&bad_pin, b"not-the-pin").expect("pin");
    let config = p
        .write_config("bad-pin.toml", &HsmKeys::default(), &bad_pin)
        .display()
        .to_string();
    assert!(!p.hsm.token_flags().contains("PIN count low"));
    for i in 0..5 {
        let log = p.dir.join(format!("spy-{i}.log"));
        let mut env = p.hsm.env();
        env.extend([
            // The variable overrides [keystore] module (which names SoftHSM itself).
            ("VVGATE_PKCS11_MODULE".to_owned(), spy.display().to_string()),
            ("PKCS11SPY".to_owned(), p.hsm.module.display().to_string()),
            ("PKCS11SPY_OUTPUT".to_owned(), log.display().to_string()),
        ]);
        let args: &[&str] = if i == 4 {
            &["--check-config", "--config", &config]
        } else {
            &["--config", &config]
        };
        let (code, err) = vvgated_exit_env(args, &env, 30);
        assert_eq!(code, 77, "{err}");
        assert!(err.contains("keystore.pin_file"), "{err}");
        assert!(
            err.contains("refused the user PIN: PIN incorrect; not retrying"),
            "{err}"
        );
        let calls = std::fs::read_to_string(&log).expect("spy log");
        assert_eq!(
            calls.lines().filter(|l| l.ends_with(": C_Login")).count(),
            1,
            "exactly one login attempt per start"
        );
        assert!(
            calls.contains("C_Finalize"),
            "the module is finalised on exit"
        );
    }
    // SoftHSM counts the failures (a real HSM would lock after a few) but the token is not
    // locked: the right PIN still works.
    let flags = p.hsm.token_flags();
    assert!(flags.contains("PIN count low"), "{flags}");
    assert!(!flags.contains("PIN locked"), "{flags}");
    let g = p.start();
    assert_eq!(send_event(&g), 202);
}

#[test]
fn hsm_ceremonies_refuse_bad_input_clearly() {
    let dir = temp_dir("hsm-bad");
    let hsm = SoftHsm::new(&dir.join("hsm"), "vvgate-bad");
    hsm.init();
    let keys_with = |a_name: &str, a: &Path, b_name: &str, b: &Path, extra: &[&str]| {
        let mut args: Vec<String> = vec!["keys".into(), "list".into()];
        args.extend(hsm.ceremony_args_with(a_name, a, b_name, b));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        hsm.vvctl(&refs)
    };
    let (a, b) = (hsm.share_a(), hsm.share_b());
    let expect = |r: (i32, String, String), code: i32, what: &str| {
        assert_eq!(r.0, code, "{what}: {}{}", r.1, r.2);
        assert!(r.2.contains(what), "{what:?} missing from: {}", r.2);
    };
    // The same share twice, swapped shares, a copy of one share as the other.
    expect(
        keys_with(OFFICER_A, &a, OFFICER_B, &a, &[]),
        64,
        "--share-a and --share-b are the same file",
    );
    expect(
        keys_with(OFFICER_A, &b, OFFICER_B, &a, &[]),
        64,
        "holds share B, not share A",
    );
    let copy = dir.join("copy-of-a.txt");
    std::fs::copy(&a, &copy).expect("copy");
    expect(
        keys_with(OFFICER_A, &a, OFFICER_B, &copy, &[]),
        64,
        "holds share A, not share B",
    );
    // The same officer twice.
    expect(
        keys_with(OFFICER_A, &a, OFFICER_A, &b, &[]),
        64,
        "dual control needs two different officers",
    );
    // A share of another token's PIN.
    let other = hsm.other_token("vvgate-other");
    other.init();
    expect(
        keys_with(OFFICER_A, &a, OFFICER_B, &other.share_b(), &[]),
        64,
        "different PIN splits",
    );
    // A mistyped share.
    let text = std::fs::read_to_string(&b).expect("share");
    let typo = dir.join("typo-b.txt");
    let bad: String = text
        .lines()
        .map(|l| match l.strip_prefix("user-pin-share: ") {
            Some(s) => {
                let mut s = s.to_owned();
                let i = s.len() - 20;
                let c = if &s[i..=i] == "A" { "B" } else { "A" };
                s.replace_range(i..=i, c);
                format!("user-pin-share: {s}\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    vvgate::devpki::write_private(&typo, bad.as_bytes()).expect("typo");
    expect(
        keys_with(OFFICER_A, &a, OFFICER_B, &typo, &[]),
        64,
        "check value does not match",
    );
    // A missing share file.
    expect(
        keys_with(OFFICER_A, &a, OFFICER_B, &dir.join("nope.txt"), &[]),
        69,
        "nope.txt",
    );
    // None of that reached the token: no failed login was counted.
    assert!(
        !hsm.token_flags().contains("PIN count low"),
        "{}",
        hsm.token_flags()
    );

    // A token that is not there.
    let mut args: Vec<String> = vec!["keys".into(), "list".into()];
    args.extend(hsm.ceremony_args());
    let pos = args.iter().position(|s| s == "vvgate-bad").expect("label");
    args[pos] = "no-such-token".into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    expect(hsm.vvctl(&refs), 1, "no initialised token matches");

    // A key that exists already; retiring the only version.
    hsm.keys_ok("generate", &["--purpose", "checkpoint", "--no-audit"]);
    expect(
        hsm.keys("generate", &["--purpose", "checkpoint", "--no-audit"]),
        64,
        "CKA_ID 0201 already exists",
    );
    expect(
        hsm.keys(
            "retire",
            &["--purpose", "checkpoint", "--version", "1", "--no-audit"],
        ),
        64,
        "is the only checkpoint key",
    );
    // A second init of the same label, and share files that exist, are refused.
    let fresh = dir.join("fresh-pin");
    let fresh_s = fresh.display().to_string();
    expect(
        hsm.keys("init", &["--pin-file", &fresh_s, "--no-audit"]),
        64,
        "already exists; refusing to overwrite",
    );
    // A ceremony without a place for its transcript does not run.
    expect(
        hsm.keys("rotate", &["--purpose", "checkpoint"]),
        64,
        "say whose audit log records this ceremony",
    );
    let versions: Vec<Value> = hsm.list().iter().map(|k| k["key_ref"].clone()).collect();
    assert_eq!(
        versions,
        vec![Value::from("pkcs11:0201")],
        "nothing rotated"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether a connection and one signed event get through.
fn event_gets_through(g: &Gateway) -> bool {
    let p = g.pki.producer();
    let Ok(mut c) = vvgate::client::Connection::connect_tls(
        g.addr,
        "localhost",
        p.tls.clone(),
        std::time::Duration::from_secs(10),
    ) else {
        return false;
    };
    c.send(&request(&p, &valid()))
        .is_ok_and(|r| r.status == 202)
}

#[test]
fn hsm_token_removed_at_runtime_fails_handshakes_then_recovers() {
    let p = Provisioned::new("hsm-removed");
    let g = p.start();
    assert_eq!(send_event(&g), 202);

    // The token disappears (its directory moved away: SoftHSM no longer finds it).
    let tokens = p.hsm.dir.join("tokens");
    let away = p.hsm.dir.join("tokens-away");
    std::fs::rename(&tokens, &away).expect("remove the token");
    std::fs::create_dir_all(&tokens).expect("empty token directory");
    assert!(
        !event_gets_through(&g),
        "a handshake needs the server key in the token"
    );
    wait_for(10, "readiness keystore_unavailable", || {
        let r = g.ops_get("/readyz");
        r.status == 503 && r.body_text().contains("keystore_unavailable")
    });
    assert_eq!(
        g.ops_get("/healthz").status,
        200,
        "the daemon keeps running"
    );
    wait_for(10, "the handshake failure metric", || {
        g.ops_get("/metrics")
            .body_text()
            .contains("vvgate_tls_handshake_failures_total{reason=\"keystore_unavailable\"}")
    });
    assert!(
        g.log_text()
            .contains("the key store cannot sign with the server key"),
        "{}",
        g.log_text()
    );

    // The token comes back: the gateway recovers on its own, without a restart.
    std::fs::remove_dir_all(&tokens).expect("empty directory");
    std::fs::rename(&away, &tokens).expect("token back");
    wait_for(20, "readiness after the token is back", || {
        g.ops_get("/readyz").status == 200
    });
    assert!(event_gets_through(&g), "handshakes work again");
    wait_for(10, "the refusals in the audit log", || {
        g.audit().iter().any(|e| {
            e["event_type"] == "tls.rejected"
                && e["details"]["sub_reason"] == "keystore_unavailable"
        })
    });
}

/// Post `body` signed by producer P for `(ts, nonce)` to `path`; (status, JSON body).
fn post_signed(g: &Gateway, path: &str, ts: u64, nonce: &str, body: &[u8]) -> (u16, Value) {
    let p = g.pki.producer();
    let h = p.headers(ts, nonce, body, None);
    let mut c = g.connect();
    let r = c
        .send(&vvgate::client::post_request(path, "localhost", &h, body))
        .expect("response");
    (r.status, json(&r))
}

#[test]
fn hsm_feedback_key_and_evidence_kek_serve_from_the_token() {
    let p = Provisioned::new("hsm-svc");
    let g = p.start();
    let tenant = "10000000-0000-0000-0000-000000000001";

    // A graph, then a feedback query answered with the token's feedback key (0301).
    let (ts, n) = (now(), nonce());
    let graph = serde_json::json!({
        "operator_id": "op-001", "tenant_id": tenant, "execution_fingerprint": "a".repeat(64),
        "timestamp": ts, "nonce": n, "schema_version": "execution.graph.v1",
        "attestation_measurement_hash": "b".repeat(64),
        "graph": {"nodes": [1, 2, 3, 4, 5, 6, 7, 8], "edges": [], "target_urn": "urn:hsm"}
    });
    let (status, _) = post_signed(
        &g,
        "/internal/v1/cognitive/execution-graph",
        ts,
        &n,
        &serde_json::to_vec(&graph).unwrap(),
    );
    assert_eq!(status, 202);
    let (ts, n) = (now(), nonce());
    let q = serde_json::json!({"operator_id": "op-001", "tenant_id": tenant, "timestamp": ts, "nonce": n});
    let (status, resp) = post_signed(
        &g,
        "/internal/v1/cognitive/feedback/adjustments/query",
        ts,
        &n,
        &serde_json::to_vec(&q).unwrap(),
    );
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["kid"], "fb-v1");
    assert_eq!(resp["data"][0]["target_urn"], "urn:hsm");
    let mut msg = format!(
        "{tenant}|{}|{}|feedback.response.v1|fb-v1|",
        resp["signed_at"],
        resp["nonce"].as_str().unwrap()
    )
    .into_bytes();
    msg.extend_from_slice(&vvgate::keys::cjson(&resp["data"]).unwrap());
    let sig = B64.decode(resp["signature"].as_str().unwrap()).unwrap();
    let public = p.hsm.public_key("pkcs11:0301");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
        .verify(&msg, &sig)
        .expect("the response verifies with the token's feedback public key");

    // Evidence sealed and opened through the token's KEK (0401), while the gateway runs.
    let blob = p.dir.join("blob.bin");
    std::fs::write(&blob, b"evidence through the HSM").unwrap();
    let env = p.dir.join("env.json");
    let config = g.config.display().to_string();
    let vvctl_env = |args: &[&str]| {
        let out = Command::new(bin("vvctl"))
            .args(args)
            .envs(p.hsm.env())
            .output()
            .expect("vvctl");
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = vvctl_env(&[
        "evidence",
        "seal",
        "--config",
        &config,
        "--tenant",
        tenant,
        "--blob-id",
        "hsm-1",
        "--in",
        blob.to_str().unwrap(),
        "--out",
        env.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let sealed: Value = serde_json::from_slice(&std::fs::read(&env).unwrap()).unwrap();
    assert_eq!(sealed["key_id"], "kek-v1");
    let (code, out, err) = vvctl_env(&[
        "evidence",
        "open",
        "--config",
        &config,
        "--tenant",
        tenant,
        "--in",
        env.to_str().unwrap(),
    ]);
    assert_eq!(
        (code, out.as_slice()),
        (0, &b"evidence through the HSM"[..]),
        "{err}"
    );
    // A flipped bit of the wrapped key fails inside the token, reported like any tamper.
    let mut t = sealed.clone();
    let mut w = B64.decode(t["wrapped_dek_b64"].as_str().unwrap()).unwrap();
    w[0] ^= 1;
    t["wrapped_dek_b64"] = B64.encode(w).into();
    std::fs::write(&env, serde_json::to_vec(&t).unwrap()).unwrap();
    let (code, out, err) = vvctl_env(&[
        "evidence",
        "open",
        "--config",
        &config,
        "--tenant",
        tenant,
        "--in",
        env.to_str().unwrap(),
    ]);
    assert_eq!((code, out.is_empty()), (1, true));
    assert_eq!(
        err.lines().last(),
        Some("vvctl: Evidence envelope authentication failed"),
        "{err}"
    );
}
