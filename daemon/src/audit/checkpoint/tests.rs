use super::*;

struct Seed(ring::signature::Ed25519KeyPair);

impl Seed {
    fn new(seed: &[u8]) -> Self {
        Self(ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).unwrap())
    }
}

impl RecordSigner for Seed {
    fn public_key(&self) -> [u8; 32] {
        use ring::signature::KeyPair as _;
        self.0.public_key().as_ref().try_into().unwrap()
    }
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], HsmError> {
        Ok(self.0.sign(msg).as_ref().try_into().unwrap())
    }
}

/// Go `note` package documentation: key, text and the exact signature line.
#[test]
fn go_note_known_answer() {
    let skey = B64
        .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
        .unwrap();
    let signer = Seed::new(&skey[1..]);
    assert_eq!(
        vkey("PeterNeumann", ALG_ED25519, &signer.public_key()),
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    );
    let text = "If you think cryptography is the answer to your problem,\n\
                then you don't know what your problem is.\n";
    let note = sign_text("PeterNeumann", text.as_bytes(), &signer).unwrap();
    let expected = format!(
        "{text}\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    );
    assert_eq!(String::from_utf8(note).unwrap(), expected);
    let k =
        VerifierKey::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .unwrap();
    assert_eq!(k.key, signer.public_key());
}

fn checkpoint(size: u64) -> Checkpoint {
    Checkpoint {
        origin: "vvgate.test/gw/audit".into(),
        size,
        root: [size.to_le_bytes()[0]; 32],
    }
}

#[test]
fn bodies_round_trip_and_bad_ones_are_refused() {
    let cp = checkpoint(4711);
    assert_eq!(Checkpoint::parse(cp.body().as_bytes()).unwrap(), cp);
    let root = B64.encode([1u8; 32]);
    for bad in [
        "".to_string(),
        "origin\n".into(),
        format!("\n5\n{root}\n"),
        format!("o\n05\n{root}\n"),
        format!("o\n-5\n{root}\n"),
        format!("o\n+5\n{root}\n"),
        format!("o\n\n{root}\n"),
        format!("o\n18446744073709551616\n{root}\n"),
        "o\n5\nAAAA\n".into(),
        format!("o\n5\n{root}"),
    ] {
        assert!(Checkpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    // Extension lines are allowed by the format.
    assert!(Checkpoint::parse(format!("o\n5\n{root}\next\n").as_bytes()).is_ok());
}

#[test]
fn open_checks_key_origin_and_tampering() {
    let log = Seed::new(&[7; 32]);
    let other = Seed::new(&[8; 32]);
    let origin = "vvgate.test/gw/audit";
    let log_key = VerifierKey::parse(&vkey(origin, ALG_ED25519, &log.public_key())).unwrap();
    let keys = Keys::new(std::slice::from_ref(&log_key), &[]);
    let note = sign(&checkpoint(9), &log).unwrap();
    let opened = open(&note, Some(origin), &keys).unwrap();
    assert_eq!(opened.checkpoint, checkpoint(9));

    assert_eq!(
        open(&note, Some("other/origin"), &keys).unwrap_err(),
        CheckpointError::Origin {
            expected: "other/origin".into(),
            found: origin.into()
        }
    );
    let forged = sign(&checkpoint(9), &other).unwrap();
    assert_eq!(
        open(&forged, Some(origin), &keys).unwrap_err(),
        CheckpointError::Unsigned
    );
    // The same signature over a different size.
    let text = String::from_utf8(note.clone()).unwrap();
    let tampered = text.replacen("\n9\n", "\n8\n", 1);
    assert!(matches!(
        open(tampered.as_bytes(), Some(origin), &keys).unwrap_err(),
        CheckpointError::BadSignature(_)
    ));
    assert!(matches!(
        open(b"garbage", None, &keys).unwrap_err(),
        CheckpointError::Malformed(_)
    ));
    // Signed by both keys (rotation): either key list accepts it.
    let mut both = note.clone();
    let extra = sign(&checkpoint(9), &other).unwrap();
    let line_start = extra.iter().position(|&b| b == 0xe2).unwrap();
    both.extend_from_slice(&extra[line_start..]);
    open(&both, Some(origin), &keys).unwrap();
}

#[test]
fn witness_cosignatures_are_verified_and_merged_once() {
    let log = Seed::new(&[7; 32]);
    let witness = Seed::new(&[9; 32]);
    let origin = "vvgate.test/gw/audit";
    let log_key = VerifierKey::parse(&vkey(origin, ALG_ED25519, &log.public_key())).unwrap();
    let w_key = VerifierKey::parse(&vkey(
        "witness.test",
        ALG_COSIGNATURE,
        &witness.public_key(),
    ))
    .unwrap();
    let keys = Keys::new(&[log_key], std::slice::from_ref(&w_key));
    let cp = checkpoint(12);
    let note = sign(&cp, &log).unwrap();

    // What a witness appends: time ‖ Ed25519("cosignature/v1\ntime T\n" ‖ body).
    let cosign = |t: u64, body: &str| {
        let msg = format!("cosignature/v1\ntime {t}\n{body}");
        let mut sig = t.to_be_bytes().to_vec();
        sig.extend_from_slice(&witness.sign(msg.as_bytes()).unwrap());
        let mut raw = w_key.id().to_be_bytes().to_vec();
        raw.extend_from_slice(&sig);
        format!("— witness.test {}\n", B64.encode(raw))
    };
    let mut cosigned = note.clone();
    cosigned.extend_from_slice(cosign(1_700_000_000, &cp.body()).as_bytes());
    let (merged, added) = merge_cosignatures(&note, &cosigned, &keys).unwrap();
    assert_eq!(added, 1);
    let opened = open(&merged, Some(origin), &keys).unwrap();
    assert_eq!(opened.cosignatures.len(), 1);
    let (again, added) = merge_cosignatures(&merged, &cosigned, &keys).unwrap();
    assert_eq!((again, added), (merged.clone(), 0));

    // A cosignature over another body fails; so does a note for another checkpoint.
    let mut bad = note.clone();
    bad.extend_from_slice(cosign(1_700_000_000, &checkpoint(11).body()).as_bytes());
    assert!(merge_cosignatures(&note, &bad, &keys).is_err());
    let other = sign(&checkpoint(13), &log).unwrap();
    assert!(merge_cosignatures(&other, &cosigned, &keys).is_err());
}

#[test]
fn verifier_keys_are_parsed_strictly() {
    let k = Seed::new(&[3; 32]);
    let good = vkey("name", ALG_ED25519, &k.public_key());
    assert_eq!(VerifierKey::parse(&good).unwrap().to_string(), good);
    for bad in [
        "".to_string(),
        "name".into(),
        good.replace("name+", "other+"),
        good.replace("name+", "+"),
        format!("name+1234567+{}", B64.encode([1u8; 33])),
        vkey("name", 0x02, &k.public_key()),
        format!("name+00000000+{}", B64.encode([1u8; 10])),
    ] {
        assert!(VerifierKey::parse(&bad).is_err(), "{bad}");
    }
}
