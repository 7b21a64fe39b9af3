//! Both key stores against one conformance suite, and the PKCS#11 backend's refusals,
//! ceremonies and recovery, each on its own throwaway SoftHSM token (see `support`).
//!
//! `cargo test -p vvgate-hsm pkcs11` runs the PKCS#11 part; `hw-tests/README.md` says how to
//! point it at a real module.

#![allow(clippy::tests_outside_test_module)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::types::AuthPin;
use ring::signature::{UnparsedPublicKey, ED25519};
use secrecy::ExposeSecret;
use support::conformance::{self, SuiteKeys};
use support::{isolated, not_on_external, TestToken};
use vvgate_hsm::ceremony::{self, Ceremony, CsrRequest};
use vvgate_hsm::file::{write_private, FileKeyStore};
use vvgate_hsm::pkcs11::objects::{ED25519_PARAMS_OID, P256_PARAMS};
use vvgate_hsm::pkcs11::{Pkcs11Config, Pkcs11KeyStore, Purpose, TokenSelector};
use vvgate_hsm::{HsmError, KeyRef, KeyStore};

// ---------------------------------------------------------------------------------------
// File backend

#[test]
fn file_conformance() {
    let dir = std::env::temp_dir().join(format!("vvgate-hsm-file-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let put = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        write_private(&p, bytes).unwrap();
        KeyRef::File(p)
    };
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let keys = SuiteKeys {
        tls: put("tls.pem", p256.serialize_pem().as_bytes()),
        tls_ed25519: Some(put("tls-ed.pem", ed.serialize_pem().as_bytes())),
        checkpoint: put("checkpoint.key", &random::<32>()),
        feedback: put("feedback.key", &random::<32>()),
        kek: put("kek.key", &random::<32>()),
    };
    conformance::run(&FileKeyStore::new(), &keys);
    let _ = std::fs::remove_dir_all(&dir);
}

fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

// ---------------------------------------------------------------------------------------
// PKCS#11 backend

/// Generate one key per purpose through the ceremony; the suite's references.
fn provision(token: &TestToken) -> SuiteKeys {
    let c = token.ceremony();
    let keys = SuiteKeys {
        tls: token.fresh_key(&c, Purpose::Tls),
        tls_ed25519: Some(token.fresh_key(&c, Purpose::TlsEd25519)),
        checkpoint: token.fresh_key(&c, Purpose::Checkpoint),
        feedback: token.fresh_key(&c, Purpose::Feedback),
        kek: token.fresh_key(&c, Purpose::Kek),
    };
    c.close();
    keys
}

fn id_of(k: &KeyRef) -> Vec<u8> {
    match k {
        KeyRef::Pkcs11 { id } => id.clone(),
        KeyRef::File(_) => unreachable!(),
    }
}

#[test]
fn pkcs11_conformance() {
    isolated("pkcs11_conformance", |token| {
        let keys = provision(token);
        // The ceremony's list sees every key as the daemon will accept it.
        let c = token.ceremony();
        let listed = c.list().unwrap();
        for k in [&keys.tls, &keys.checkpoint, &keys.feedback, &keys.kek] {
            let info = listed
                .iter()
                .find(|i| i.key_ref == k.to_string())
                .expect("listed");
            assert!(info.ok(), "{k}: {:?}", info.failures);
        }
        let cp_listed = listed
            .iter()
            .find(|i| i.key_ref == keys.checkpoint.to_string())
            .unwrap()
            .public_key_hex
            .clone();
        c.close();

        let store = token.open_store();
        assert_eq!(store.backend(), "pkcs11");
        let status = store.status().unwrap();
        assert!(status.ready && status.read_only && status.user_logged_in);
        conformance::run(&store, &keys);
        // Key types are attributes here: every mix-up is refused.
        assert!(
            store.record_signer(&keys.kek).is_err(),
            "a KEK is no record signer"
        );
        assert!(store.kek(&keys.checkpoint).is_err(), "Ed25519 is no KEK");
        assert!(
            store.tls_key(&keys.checkpoint).is_ok(),
            "an Ed25519 TLS key is allowed"
        );
        let cp = store.record_signer(&keys.checkpoint).unwrap();
        assert_eq!(data_encoding::HEXLOWER.encode(&cp.public_key()), cp_listed);
        store.close();
        // A handle used after close fails cleanly.
        assert!(matches!(cp.sign(b"late"), Err(HsmError::NotReady(_))));
    });
}

#[test]
fn pkcs11_module_missing_is_an_error() {
    let e = Pkcs11KeyStore::open_with_pin(
        Path::new("/nonexistent/libnothing.so"),
        &TokenSelector::Label("x".into()),
        AuthPin::from("1234"),
    )
    .unwrap_err();
    assert!(matches!(e, HsmError::Module { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/libnothing.so"), "{e}");
}

/// Loose keys made directly with cryptoki, as a careless operator or another tool would.
#[test]
fn pkcs11_weak_keys_are_refused_naming_the_attribute() {
    isolated(
        "pkcs11_weak_keys_are_refused_naming_the_attribute",
        |token| {
            let ids: [(&[u8], &str); 5] = [
                (&[0x02, 0xf1], "extractable Ed25519"),
                (&[0x04, 0xf2], "non-sensitive AES"),
                (&[0x01, 0xf3], "P-256 without mechanism restriction"),
                (&[0x04, 0xf4], "imported AES"),
                (&[0x03, 0xf5], "Ed25519 allowing ECDSA too"),
            ];
            for (id, _) in ids {
                token.created(id);
            }
            token.raw_session(|s| {
                let ed_pub = |id: &[u8]| {
                    vec![
                        Attribute::Token(true),
                        Attribute::Verify(true),
                        Attribute::EcParams(ED25519_PARAMS_OID.to_vec()),
                        Attribute::Id(id.to_vec()),
                    ]
                };
                // Extractable (but sensitive) Ed25519.
                s.generate_key_pair(
                    &Mechanism::EccEdwardsKeyPairGen,
                    &ed_pub(ids[0].0),
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(true),
                        Attribute::Sign(true),
                        Attribute::AllowedMechanisms(vec![MechanismType::EDDSA]),
                        Attribute::Id(ids[0].0.to_vec()),
                    ],
                )
                .unwrap();
                // AES with SoftHSM's defaults (Sensitive=false), not extractable.
                s.generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32.into()),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::AllowedMechanisms(vec![MechanismType::AES_GCM]),
                        Attribute::Id(ids[1].0.to_vec()),
                    ],
                )
                .unwrap();
                // P-256 without CKA_ALLOWED_MECHANISMS.
                s.generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Verify(true),
                        Attribute::EcParams(P256_PARAMS.to_vec()),
                        Attribute::Id(ids[2].0.to_vec()),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Sign(true),
                        Attribute::Decrypt(false),
                        Attribute::Unwrap(false),
                        Attribute::Derive(false),
                        Attribute::Id(ids[2].0.to_vec()),
                    ],
                )
                .unwrap();
                // An imported AES key: sensitive now, but its value was once in the clear.
                s.create_object(&[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Value(vec![0x42; 32]),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Sign(false),
                    Attribute::Derive(false),
                    Attribute::AllowedMechanisms(vec![MechanismType::AES_GCM]),
                    Attribute::Id(ids[3].0.to_vec()),
                ])
                .unwrap();
                // Ed25519 allowed two mechanisms.
                s.generate_key_pair(
                    &Mechanism::EccEdwardsKeyPairGen,
                    &ed_pub(ids[4].0),
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Sign(true),
                        Attribute::Decrypt(false),
                        Attribute::Unwrap(false),
                        Attribute::Derive(false),
                        Attribute::AllowedMechanisms(vec![
                            MechanismType::EDDSA,
                            MechanismType::ECDSA,
                        ]),
                        Attribute::Id(ids[4].0.to_vec()),
                    ],
                )
                .unwrap();
            });

            let store = token.open_store();
            let weak = |r: Result<(), HsmError>, id: &[u8], attr: &str| {
                let key = KeyRef::Pkcs11 { id: id.to_vec() }.to_string();
                match r {
                    Err(e @ HsmError::WeakKey { .. }) => {
                        let msg = e.to_string();
                        assert!(msg.contains(&key), "names the key: {msg}");
                        assert!(msg.contains(attr), "names {attr}: {msg}");
                        println!("refused as expected: {msg}");
                    }
                    Err(e) => panic!("{key}: expected WeakKey({attr}), got {e}"),
                    Ok(()) => panic!("{key}: weak key accepted"),
                }
            };
            let r = |id: &[u8]| KeyRef::Pkcs11 { id: id.to_vec() };
            weak(
                store.record_signer(&r(ids[0].0)).map(drop),
                ids[0].0,
                "CKA_EXTRACTABLE",
            );
            weak(store.kek(&r(ids[1].0)).map(drop), ids[1].0, "CKA_SENSITIVE");
            weak(
                store.tls_key(&r(ids[2].0)).map(drop),
                ids[2].0,
                "CKA_ALLOWED_MECHANISMS",
            );
            weak(
                store.kek(&r(ids[3].0)).map(drop),
                ids[3].0,
                "CKA_ALWAYS_SENSITIVE",
            );
            weak(
                store.record_signer(&r(ids[4].0)).map(drop),
                ids[4].0,
                "CKA_ALLOWED_MECHANISMS",
            );
            // Right CKA_ID, wrong kind: a KEK asked for as a record signer.
            assert!(store.record_signer(&r(ids[1].0)).is_err());
            drop(store);

            // The ceremony's list gives the same verdicts.
            let c = token.ceremony();
            let listed = c.list().unwrap();
            for (id, what) in ids {
                let info = listed
                    .iter()
                    .find(|i| i.id == data_encoding::HEXLOWER.encode(id))
                    .unwrap();
                assert!(!info.ok(), "{what} listed as acceptable");
            }
        },
    );
}

#[test]
fn pkcs11_missing_key_is_named() {
    isolated("pkcs11_missing_key_is_named", |token| {
        let keys = provision(token);
        let store = token.open_store();
        for (r, what) in [
            (KeyRef::parse("pkcs11:02ee").unwrap(), "record signer"),
            (KeyRef::parse("pkcs11:04ee").unwrap(), "kek"),
            (KeyRef::parse("pkcs11:01ee").unwrap(), "tls"),
        ] {
            let e = match what {
                "record signer" => store.record_signer(&r).map(drop),
                "kek" => store.kek(&r).map(drop),
                _ => store.tls_key(&r).map(drop),
            }
            .unwrap_err();
            assert!(matches!(e, HsmError::Missing { .. }), "{e}");
            assert!(e.to_string().contains(&r.to_string()), "{e}");
        }
        // A file reference is not served.
        assert!(matches!(
            store.kek(&KeyRef::File("/k".into())),
            Err(HsmError::WrongBackend { .. })
        ));
        // The good keys still load.
        store.record_signer(&keys.checkpoint).unwrap();
    });
}

#[test]
fn pkcs11_wrong_pin_fails_once_without_retry() {
    isolated("pkcs11_wrong_pin_fails_once_without_retry", |token| {
        if not_on_external(token, "a wrong PIN would count against a real token") {
            return;
        }
        assert_eq!(token.pin_flags(), (false, false), "fresh token");

        // A PIN file readable by others is refused before any login.
        let loose = token.pin_file_with(&token.user_pin, "loose-pin");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o640)).unwrap();
        let cfg = |pin_file| Pkcs11Config {
            module: token.module.clone(),
            token: token.selector.clone(),
            pin_file,
        };
        let e = Pkcs11KeyStore::open(&cfg(loose)).unwrap_err();
        assert!(
            matches!(e, HsmError::Permissions { mode: 0o640, .. }),
            "{e}"
        );
        // Shares from two different splits never reach the token.
        let (a, _) = token.shares();
        let (_, b) = token.shares();
        let e = Ceremony::open(
            &token.module,
            &token.selector,
            token.officers.clone(),
            &a,
            &b,
        )
        .unwrap_err();
        assert!(matches!(e, HsmError::Ceremony(_)), "{e}");
        assert_eq!(token.pin_flags(), (false, false), "no login attempted yet");

        // One wrong PIN: the dedicated error, and exactly one failed login on the token.
        let wrong = token.pin_file_with("not-the-pin", "wrong-pin");
        let e = Pkcs11KeyStore::open(&cfg(wrong)).unwrap_err();
        match &e {
            HsmError::PinRejected { reason, token: t } => {
                assert_eq!(*reason, "PIN incorrect");
                assert!(t.contains(support::LABEL));
            }
            other => panic!("expected PinRejected, got {other}"),
        }
        assert!(
            !e.to_string().contains("not-the-pin"),
            "the PIN is not in the message"
        );
        let (count_low, locked) = token.pin_flags();
        assert!(count_low, "the token saw the failed login");
        assert!(!locked);

        // The right PIN still works (and clears the flag): nothing was locked.
        drop(token.open_store());
        assert_eq!(token.pin_flags(), (false, false));
    });
}

#[test]
fn pkcs11_read_only_session_cannot_create_objects() {
    isolated("pkcs11_read_only_session_cannot_create_objects", |token| {
        let keys = provision(token);
        let store = token.open_store();
        store.record_signer(&keys.checkpoint).unwrap();
        let st = store.status().unwrap();
        assert!(st.read_only, "the daemon's session is read-only");
        assert!(st.user_logged_in);
        drop(store);
        // What a read-only user session may not do: create or destroy token objects.
        token.raw_session_kind(false, |s| {
            let e = s
                .create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Label(b"should not exist".to_vec()),
                ])
                .unwrap_err();
            assert!(e.to_string().contains("read-only"), "{e}");
            let h = s
                .find_objects(&[Attribute::Id(id_of(&keys.checkpoint))])
                .unwrap();
            assert!(!h.is_empty());
            assert!(s.destroy_object(h[0]).is_err());
        });
    });
}

#[test]
fn pkcs11_rotation_keeps_old_until_retired() {
    isolated("pkcs11_rotation_keeps_old_until_retired", |token| {
        let c = token.ceremony();
        let v1 = token.fresh_key(&c, Purpose::Checkpoint);
        let k1 = token.fresh_key(&c, Purpose::Kek);
        let e = c.retire(Purpose::Checkpoint, id_of(&v1)[1]).unwrap_err();
        assert!(matches!(e, HsmError::Ceremony(_)), "only version: {e}");
        assert!(c.rotate(Purpose::Feedback, "x").is_err() || token.external());

        let t = c.rotate(Purpose::Checkpoint, "checkpoint next").unwrap();
        let v2_id = t.keys.last().unwrap().id.clone();
        let v2 = KeyRef::parse(&format!("pkcs11:{v2_id}")).unwrap();
        token.created(&id_of(&v2));
        assert_eq!(t.ceremony, "rotate");
        assert_eq!(
            t.officers,
            [token.officers.a.clone(), token.officers.b.clone()]
        );
        assert!(t
            .keys
            .iter()
            .any(|k| k.key_ref == v1.to_string() && k.status == "kept"));
        assert_eq!(t.keys.last().unwrap().status, "generated");
        let t = c.rotate(Purpose::Kek, "kek next").unwrap();
        let k2 = KeyRef::parse(&t.keys.last().unwrap().key_ref).unwrap();
        token.created(&id_of(&k2));
        assert!(t.to_json().contains("\"ceremony\":\"rotate\""));
        c.close();

        // Overlap: both versions work.
        let store = token.open_store();
        let s1 = store.record_signer(&v1).unwrap();
        let s2 = store.record_signer(&v2).unwrap();
        assert_ne!(s1.public_key(), s2.public_key());
        for s in [&s1, &s2] {
            let sig = s.sign(b"overlap").unwrap();
            UnparsedPublicKey::new(&ED25519, s.public_key())
                .verify(b"overlap", &sig)
                .unwrap();
        }
        let sealed_by_1 = store.kek(&k1).unwrap().seal_dek(&[1; 32], b"a").unwrap();
        assert_eq!(
            *store
                .kek(&k1)
                .unwrap()
                .open_dek(&sealed_by_1, b"a")
                .unwrap(),
            [1; 32]
        );
        assert!(matches!(
            store.kek(&k2).unwrap().open_dek(&sealed_by_1, b"a"),
            Err(HsmError::AuthenticationFailed)
        ));
        let old_pk = s1.public_key();
        drop((s1, s2));
        store.close();

        // Retire version 1: gone, and loading it fails; version 2 still works.
        let c = token.ceremony();
        let t = c.retire(Purpose::Checkpoint, id_of(&v1)[1]).unwrap();
        assert_eq!(t.ceremony, "retire");
        assert_eq!(t.keys[0].status, "retired");
        assert_eq!(
            t.keys[0].public_key_hex,
            data_encoding::HEXLOWER.encode(&old_pk)
        );
        assert!(matches!(
            c.retire(Purpose::Checkpoint, id_of(&v1)[1]),
            Err(HsmError::Missing { .. })
        ));
        assert!(!c
            .versions(Purpose::Checkpoint)
            .unwrap()
            .contains(&id_of(&v1)[1]));
        c.close();
        let store = token.open_store();
        let e = store.record_signer(&v1).map(drop).unwrap_err();
        assert!(matches!(e, HsmError::Missing { .. }), "{e}");
        let s2 = store.record_signer(&v2).unwrap();
        UnparsedPublicKey::new(&ED25519, s2.public_key())
            .verify(b"after", &s2.sign(b"after").unwrap())
            .unwrap();
    });
}

#[test]
fn pkcs11_session_loss_is_recovered_once() {
    isolated("pkcs11_session_loss_is_recovered_once", |token| {
        let keys = provision(token);
        let store = token.open_store();
        let signer = store.record_signer(&keys.checkpoint).unwrap();
        let kek = store.kek(&keys.kek).unwrap();
        let sealed = kek.seal_dek(&[9; 32], b"x").unwrap();
        // The token forgets the login (as after a reset): the next operation reopens the
        // session, logs in again and re-resolves the cached keys, then succeeds.
        store.inject_logout().unwrap();
        let sig = signer.sign(b"after loss").unwrap();
        UnparsedPublicKey::new(&ED25519, signer.public_key())
            .verify(b"after loss", &sig)
            .unwrap();
        assert!(store.is_ready());
        store.inject_logout().unwrap();
        assert_eq!(*kek.open_dek(&sealed, b"x").unwrap(), [9; 32]);
        let st = store.status().unwrap();
        assert!(st.ready && st.user_logged_in && st.read_only);

        // Another process deletes the feedback key while the store runs: that key fails,
        // named, after the one reopen; the other keys go on and the store stays ready.
        let feedback = store.record_signer(&keys.feedback).unwrap();
        let label = match &token.selector {
            TokenSelector::Label(l) => l.clone(),
            TokenSelector::Serial(_) => unreachable!("tests select by label"),
        };
        let fb_id = data_encoding::HEXLOWER.encode(&id_of(&keys.feedback));
        let out = std::process::Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&token.module)
            .args(["--token-label", &label, "--login", "--pin", &token.user_pin])
            .args(["--delete-object", "--type", "privkey", "--id", &fb_id])
            .output()
            .expect("pkcs11-tool (opensc)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let e = feedback.sign(b"gone").unwrap_err();
        assert!(matches!(e, HsmError::Missing { .. }), "{e}");
        assert!(e.to_string().contains(&keys.feedback.to_string()), "{e}");
        signer.sign(b"still here").unwrap();
        assert!(store.is_ready());
    });
}

#[test]
fn pkcs11_token_selection_by_label_or_serial() {
    isolated("pkcs11_token_selection_by_label_or_serial", |token| {
        let keys = provision(token);
        let c = token.ceremony();
        let serial = c.token().split("serial=").nth(1).unwrap().trim().to_owned();
        c.close();
        let by_serial = Pkcs11Config {
            token: TokenSelector::Serial(serial),
            ..token.config()
        };
        let store = Pkcs11KeyStore::open(&by_serial).unwrap();
        store.record_signer(&keys.feedback).unwrap();
        drop(store);

        let missing = Pkcs11Config {
            token: TokenSelector::Label("no-such-token".into()),
            ..token.config()
        };
        let e = Pkcs11KeyStore::open(&missing).unwrap_err();
        assert!(matches!(e, HsmError::Token { .. }), "{e}");
        assert!(e.to_string().contains("label=no-such-token"), "{e}");

        if not_on_external(token, "duplicate labels") {
            return;
        }
        // init_token refuses a second token with the same label …
        let e = ceremony::init_token(
            &token.module,
            support::LABEL,
            &AuthPin::from("so"),
            &AuthPin::from("user"),
            &token.officers,
        )
        .unwrap_err();
        assert!(matches!(e, HsmError::Ceremony(_)), "{e}");
        // … but other tools may make one: then the label is ambiguous and refused.
        let out = std::process::Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                support::LABEL,
                "--so-pin",
                "123456",
                "--pin",
                "123456",
            ])
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let e = Pkcs11KeyStore::open(&token.config()).unwrap_err();
        assert!(e.to_string().contains("2 tokens match"), "{e}");
    });
}

#[test]
fn pkcs11_csr_is_signed_by_the_token_key() {
    isolated("pkcs11_csr_is_signed_by_the_token_key", |token| {
        let keys = provision(token);
        let c = token.ceremony();
        for (purpose, r) in [
            (Purpose::Tls, &keys.tls),
            (Purpose::TlsEd25519, keys.tls_ed25519.as_ref().unwrap()),
        ] {
            let out = c
                .csr(
                    purpose,
                    id_of(r)[1],
                    &CsrRequest {
                        common_name: "gateway-01".into(),
                        subject_alt_names: vec!["gateway-01.example".into()],
                    },
                )
                .unwrap();
            assert!(out.pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
            // rcgen verifies the request's signature while parsing it.
            let parsed = rcgen::CertificateSigningRequestParams::from_pem(&out.pem).unwrap();
            let der = rcgen::PublicKeyData::der_bytes(&parsed.public_key);
            assert_eq!(
                data_encoding::HEXLOWER.encode(der),
                out.transcript.keys[0].public_key_hex
            );
            assert_eq!(out.transcript.ceremony, "csr");
        }
        assert!(c
            .csr(Purpose::Checkpoint, 1, &CsrRequest::default())
            .is_err());
        // Generation refuses an existing CKA_ID.
        let e = c
            .generate(Purpose::Tls, id_of(&keys.tls)[1], "dup")
            .unwrap_err();
        assert!(matches!(e, HsmError::Ceremony(_)), "{e}");
    });
}

#[test]
fn pkcs11_pin_shares_unlock_and_write_the_credential() {
    isolated(
        "pkcs11_pin_shares_unlock_and_write_the_credential",
        |token| {
            let (a, b) = token.shares();
            // Officers store text; the ceremony takes it back.
            let a = ceremony::PinShare::parse(a.as_text()).unwrap();
            let b = ceremony::PinShare::parse(b.as_text()).unwrap();
            let pin = ceremony::combine(&b, &a).unwrap();
            assert_eq!(pin.expose_secret(), token.user_pin);
            let cred = token.dir.join("credential");
            ceremony::write_pin_file(&cred, &pin).unwrap();
            assert_eq!(
                std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let c = Ceremony::open(
                &token.module,
                &token.selector,
                token.officers.clone(),
                &a,
                &b,
            )
            .unwrap();
            let v = token.fresh_key(&c, Purpose::Feedback);
            c.close();
            let store = Pkcs11KeyStore::open(&Pkcs11Config {
                pin_file: cred,
                ..token.config()
            })
            .unwrap();
            store.record_signer(&v).unwrap();
        },
    );
}

/// Rates through the key store (one caller thread); printed, not asserted.
#[test]
fn pkcs11_rates() {
    isolated("pkcs11_rates", |token| {
        let keys = provision(token);
        let store = token.open_store();
        let cp = store.record_signer(&keys.checkpoint).unwrap();
        let kek = store.kek(&keys.kek).unwrap();
        let tls = store.tls_key(&keys.tls).unwrap();
        let signer = tls
            .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        let n = 500u32;
        let rate = |what: &str, f: &dyn Fn()| {
            let t = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "{what}: {:.0}/s ({:.0} µs each)",
                f64::from(n) / s,
                s * 1e6 / f64::from(n)
            );
        };
        let msg = [0x33u8; 256];
        rate("Ed25519 sign (CKM_EDDSA)", &|| {
            cp.sign(&msg).unwrap();
        });
        rate("ECDSA P-256 sign (SHA-256 + CKM_ECDSA + DER)", &|| {
            signer.sign(&msg).unwrap();
        });
        rate("AES-256-GCM seal of a DEK", &|| {
            kek.seal_dek(&[1; 32], b"aad").unwrap();
        });
        drop((cp, kek, signer, tls));
        store.close();
        // The same operations straight through cryptoki on this thread, for the actor's cost.
        token.raw_session_kind(false, |s| {
            let find = |r: &KeyRef, class| {
                s.find_objects(&[Attribute::Class(class), Attribute::Id(id_of(r))])
                    .unwrap()[0]
            };
            let ed = find(&keys.checkpoint, ObjectClass::PRIVATE_KEY);
            let ec = find(&keys.tls, ObjectClass::PRIVATE_KEY);
            let eddsa = Mechanism::Eddsa(cryptoki::mechanism::eddsa::EddsaParams::new(
                cryptoki::mechanism::eddsa::EddsaSignatureScheme::Pure,
            ));
            rate("direct Ed25519 sign (no key store thread)", &|| {
                s.sign(&eddsa, ed, &msg).unwrap();
            });
            rate("direct ECDSA P-256 sign (no key store thread)", &|| {
                let d = ring::digest::digest(&ring::digest::SHA256, &msg);
                s.sign(&Mechanism::Ecdsa, ec, d.as_ref()).unwrap();
            });
        });
    });
}
