//! Batch verification must never accept what ring refuses: the edge-case vectors of "Taming the
//! many EdDSAs" / ZIP-215 (small-order and mixed-order R and A, non-canonical S, R and A) and
//! random valid and corrupted signatures, each checked against ring's own verdict.

use std::rc::Rc;

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ring::signature::KeyPair;

use super::batch::{y_is_canonical, Equation, KeyCache};
use super::*;
use crate::ingest::checks::ed25519_verify;

/// ℓ, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA512);
    for p in parts {
        d.update(p);
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(d.finish().as_ref());
    out
}

/// An Ed25519 key made by hand (RFC 8032), so tests can also build the signatures that honest
/// signers never make.
struct Signer {
    a: Scalar,
    prefix: [u8; 32],
    public: [u8; 32],
}

impl Signer {
    fn new(seed: [u8; 32]) -> Self {
        let h = sha512(&[&seed]);
        let mut s = [0u8; 32];
        s.copy_from_slice(&h[..32]);
        s[0] &= 248;
        s[31] &= 127;
        s[31] |= 64;
        let a = Scalar::from_bytes_mod_order(s);
        let mut prefix = [0u8; 32];
        prefix.copy_from_slice(&h[32..]);
        Self {
            a,
            prefix,
            public: EdwardsPoint::mul_base(&a).compress().0,
        }
    }

    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let r = Scalar::from_bytes_mod_order_wide(&sha512(&[&self.prefix, msg]));
        self.sign_with(EdwardsPoint::mul_base(&r).compress().0, r, msg)
    }

    /// `(R_enc, r + h·a)` with `h` over the given encoding of R: valid for ring exactly when
    /// `R_enc` is the canonical encoding of `[r]B`.
    fn sign_with(&self, r_enc: [u8; 32], r: Scalar, msg: &[u8]) -> [u8; 64] {
        let h = Scalar::from_bytes_mod_order_wide(&sha512(&[&r_enc, &self.public, msg]));
        let s = r + h * self.a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_enc);
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }
}

fn signer(n: u8) -> Signer {
    Signer::new([n; 32])
}

/// `s + ℓ` (fits in 32 bytes: s < ℓ < 2²⁵³).
fn add_l(sig: &mut [u8; 64]) {
    let mut carry = 0u16;
    for (b, l) in sig[32..].iter_mut().zip(L) {
        let v = u16::from(*b) + u16::from(l) + carry;
        *b = (v & 0xff) as u8;
        carry = v >> 8;
    }
}

/// One signature to check: key candidates, message, signature.
#[derive(Clone)]
struct Case {
    name: String,
    keys: Candidates,
    msg: Vec<u8>,
    sig: [u8; 64],
}

fn case(name: impl Into<String>, key: [u8; 32], msg: &[u8], sig: [u8; 64]) -> Case {
    let mut keys = Candidates::new();
    let _ = keys.push(key);
    Case {
        name: name.into(),
        keys,
        msg: msg.to_vec(),
        sig,
    }
}

/// Ring's verdict: the first candidate key that verifies.
fn ring_verdict(c: &Case) -> Option<[u8; 32]> {
    c.keys
        .iter()
        .find(|k| ed25519_verify(k, &c.msg, &c.sig))
        .copied()
}

/// Verify `cases` concurrently on one event loop (so they reach the verifier in the same turn
/// and form batches), in batch mode; the verdicts in order.
fn verify_all(v: &Rc<Verifier>, cases: &[Case]) -> Vec<Option<[u8; 32]>> {
    let ex = smol::LocalExecutor::new();
    let tasks: Vec<_> = cases
        .iter()
        .cloned()
        .map(|c| {
            let v = Rc::clone(v);
            ex.spawn(async move {
                v.verify(SignatureVerification::Batch, c.keys, &c.msg, &c.sig)
                    .await
            })
        })
        .collect();
    futures_lite::future::block_on(ex.run(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    }))
}

fn assert_agrees(v: &Rc<Verifier>, cases: &[Case]) {
    let got = verify_all(v, cases);
    for (c, g) in cases.iter().zip(got) {
        assert_eq!(g, ring_verdict(c), "{}: batch and ring disagree", c.name);
    }
}

#[test]
fn hand_signer_matches_ring() {
    let seed = [7u8; 32];
    let s = Signer::new(seed);
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).expect("key");
    assert_eq!(pair.public_key().as_ref(), &s.public);
    assert_eq!(pair.sign(b"abc").as_ref(), &s.sign(b"abc")[..]);
}

/// The edge cases of "Taming the many EdDSAs" (Chalkias et al.) and ZIP-215, each verified in
/// a batch among valid signatures: every verdict equals ring's.
#[test]
fn edge_vectors_batch_agrees_with_ring() {
    let s = signer(1);
    let msg = b"1772107200.3f1c2a9e-0000-4000-8000-000000000001.{\"k\":1}";
    let mut cases = Vec::new();
    cases.push(case("valid", s.public, msg, s.sign(msg)));

    // Non-canonical S: S + ℓ, and S with the top bits set.
    let mut sig = s.sign(msg);
    add_l(&mut sig);
    cases.push(case("S + l", s.public, msg, sig));
    let mut sig = s.sign(msg);
    sig[63] |= 0xe0;
    cases.push(case("S top bits", s.public, msg, sig));

    // Small-order R (all eight, canonical), with S = h·a so the prime-order part holds:
    // ring accepts only the identity.
    for (i, t) in EIGHT_TORSION.iter().enumerate() {
        let sig = s.sign_with(t.compress().0, Scalar::ZERO, msg);
        cases.push(case(format!("small-order R {i}"), s.public, msg, sig));
    }
    // Non-canonical encodings of small-order R: x = 0 with the sign bit, and y ≥ p.
    let mut identity_signed = [0u8; 32];
    identity_signed[0] = 1;
    identity_signed[31] = 0x80;
    let mut identity_y_plus_p = [0xffu8; 32];
    identity_y_plus_p[0] = 0xee;
    identity_y_plus_p[31] = 0x7f;
    let mut minus_one_signed = [0xffu8; 32];
    minus_one_signed[0] = 0xec;
    for (name, enc) in [
        ("identity, sign bit set", identity_signed),
        ("identity, y = 1 + p", identity_y_plus_p),
        ("order 2, sign bit set", minus_one_signed),
    ] {
        assert!(CompressedEdwardsY(enc).decompress().is_some(), "{name}");
        let sig = s.sign_with(enc, Scalar::ZERO, msg);
        cases.push(case(format!("non-canonical R: {name}"), s.public, msg, sig));
    }
    // Non-canonical R with y ≥ p for every such y on the curve, S arbitrary.
    for y in 0u8..19 {
        let mut enc = [0xffu8; 32];
        enc[0] = 0xed + y;
        enc[31] = 0x7f;
        assert!(!y_is_canonical(&enc));
        let mut sig = s.sign(msg);
        sig[..32].copy_from_slice(&enc);
        cases.push(case(format!("R y = {y} + p"), s.public, msg, sig));
    }
    // Small-order A (canonical and not), with R = identity and S = 0: ring accepts when
    // h·A is the identity. Such keys are refused by the configuration; the verifier leaves
    // them to ring.
    for (i, t) in EIGHT_TORSION.iter().enumerate() {
        let a = t.compress().0;
        let mut r = [0u8; 32];
        r[0] = 1;
        for m in 0u8..4 {
            let msg = [b'm', m];
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&r);
            cases.push(case(format!("small-order A {i} msg {m}"), a, &msg, sig));
        }
    }
    // Mixed-order A: A = aB + T; an honest-looking signature verifies for ring only when
    // h·T is the identity.
    for (i, t) in EIGHT_TORSION.iter().enumerate().skip(1) {
        let a_point = EdwardsPoint::mul_base(&s.a) + t;
        let a = a_point.compress().0;
        for m in 0u8..4 {
            let msg = [b'a', m];
            let r = Scalar::from_bytes_mod_order_wide(&sha512(&[&msg]));
            let r_enc = EdwardsPoint::mul_base(&r).compress().0;
            let h = Scalar::from_bytes_mod_order_wide(&sha512(&[&r_enc, &a, &msg]));
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&r_enc);
            sig[32..].copy_from_slice((r + h * s.a).as_bytes());
            cases.push(case(format!("mixed-order A {i} msg {m}"), a, &msg, sig));
        }
    }
    // Corrupted honest signatures.
    let good = s.sign(msg);
    for (name, byte) in [("R bit", 3usize), ("S bit", 40), ("S low bit", 32)] {
        let mut sig = good;
        sig[byte] ^= 1;
        cases.push(case(format!("flipped {name}"), s.public, msg, sig));
    }
    cases.push(case("wrong key", signer(2).public, msg, good));
    let mut other = msg.to_vec();
    other[0] ^= 1;
    cases.push(case("other message", s.public, &other, good));

    // Each case in a batch with valid signatures on both sides.
    let v = Rc::new(Verifier::default());
    let t = signer(3);
    for c in &cases {
        let m1 = [c.msg.as_slice(), b"-1"].concat();
        let m2 = [c.msg.as_slice(), b"-2"].concat();
        let batch = vec![
            case("valid before", t.public, &m1, t.sign(&m1)),
            c.clone(),
            case("valid after", s.public, &m2, s.sign(&m2)),
        ];
        // A failed batch switches to single mode for a while; start each in batch mode.
        v.single_until.set(None);
        assert_agrees(&v, &batch);
    }
    assert!(v.stats.batches.get() > 0, "the cases ran in batches");
    // The verdicts themselves, for the record: only these verify.
    let accepted: Vec<&str> = cases
        .iter()
        .filter(|c| ring_verdict(c).is_some())
        .map(|c| c.name.as_str())
        .collect();
    assert!(accepted.contains(&"valid"));
    assert!(accepted.contains(&"small-order R 0"));
    assert!(!accepted.contains(&"S + l"));
    assert!(!accepted.iter().any(|n| n.starts_with("non-canonical R")));
}

/// Small-order and mixed-order keys and non-canonical key encodings never enter a batch.
#[test]
fn key_cache_refuses_keys_outside_the_prime_order_subgroup() {
    let mut cache = KeyCache::default();
    assert!(cache.point(&signer(1).public).is_some());
    for t in EIGHT_TORSION {
        assert!(cache.point(&t.compress().0).is_none());
        let mixed = EdwardsPoint::mul_base(&signer(1).a) + t;
        if t != EIGHT_TORSION[0] {
            assert!(cache.point(&mixed.compress().0).is_none());
        }
    }
    let mut identity_y_plus_p = [0xffu8; 32];
    identity_y_plus_p[0] = 0xee;
    identity_y_plus_p[31] = 0x7f;
    assert!(cache.point(&identity_y_plus_p).is_none());
    // And the configuration refuses them too.
    use base64::Engine;
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    assert!(crate::config::parse_ed25519_public(&b64(&signer(1).public)).is_ok());
    let mixed = (EdwardsPoint::mul_base(&signer(1).a) + EIGHT_TORSION[4])
        .compress()
        .0;
    let e = crate::config::parse_ed25519_public(&b64(&mixed)).unwrap_err();
    assert!(e.contains("torsion"), "{e}");
    assert!(crate::config::parse_ed25519_public(&b64(&identity_y_plus_p)).is_err());
}

/// The one disagreement the batch equation allows (module documentation of `batch`): a
/// mixed-order R. With a coefficient z that the torsion's order divides the equation holds;
/// with any odd z it fails. With uniform secret z this is a 1/ord(T) chance.
#[test]
fn mixed_order_r_fails_unless_z_cancels_the_torsion() {
    let s = signer(1);
    let msg = b"mixed";
    // (index in EIGHT_TORSION, order)
    for (i, order) in [(4usize, 2u128), (2, 4), (1, 8)] {
        let r = Scalar::from_bytes_mod_order_wide(&sha512(&[msg]));
        let r_enc = (EdwardsPoint::mul_base(&r) + EIGHT_TORSION[i]).compress().0;
        let sig = s.sign_with(r_enc, r, msg);
        assert!(!ed25519_verify(&s.public, msg, &sig), "ring refuses");
        let a = CompressedEdwardsY(s.public).decompress().expect("point");
        let good = s.sign(b"good");
        for (z, holds) in [
            (1u128, false),
            (3, false),
            (order + 1, false),
            (order, true),
            (order * 12_345, true),
        ] {
            let mut eq = Equation::default();
            assert!(eq.push(&s.public, a, b"good", &good, 0x1234_5678_9abc_def1));
            assert!(eq.push(&s.public, a, msg, &sig, z));
            assert_eq!(eq.holds(), holds, "order {order}, z = {z}");
        }
    }
    let _ = ED25519_BASEPOINT_POINT;
}

/// Random valid and corrupted signatures by two producer keys (rotation) and strangers, in
/// random batch sizes: every verdict, including the key that verified, equals ring's.
#[test]
fn random_signatures_agree_with_ring() {
    let keys = [signer(10), signer(11), signer(12)];
    let mut rng = crate::ids::Random::new();
    let mut byte = || {
        let mut b = [0u8; 1];
        rng.fill(&mut b);
        b[0]
    };
    let v = Rc::new(Verifier::default());
    let mut cases = Vec::new();
    for n in 0..400u32 {
        let signer = &keys[usize::from(byte() % 3)];
        let mut msg = format!("{n}.nonce-{}.", byte()).into_bytes();
        msg.extend(std::iter::repeat_n(b'x', usize::from(byte()) * 4));
        let mut sig = signer.sign(&msg);
        let kind = byte() % 10;
        match kind {
            0 => sig[usize::from(byte() % 32)] ^= 1 << (byte() % 8),
            1 => sig[32 + usize::from(byte() % 32)] ^= 1 << (byte() % 8),
            2 => {
                let at = usize::from(byte()) % msg.len();
                msg[at] ^= 1;
            }
            3 => add_l(&mut sig),
            _ => {}
        }
        // The producer's two keys, in either order.
        let mut cand = Candidates::new();
        let (first, second) = if byte() % 2 == 0 { (0, 1) } else { (1, 0) };
        let _ = cand.push(keys[first].public);
        let _ = cand.push(keys[second].public);
        cases.push(Case {
            name: format!("case {n} kind {kind}"),
            keys: cand,
            msg,
            sig,
        });
    }
    let mut rest = cases.as_slice();
    let mut valid = 0;
    while !rest.is_empty() {
        let n = (usize::from(byte()) % 24 + 1).min(rest.len());
        let (batch, tail) = rest.split_at(n);
        v.single_until.set(None);
        assert_agrees(&v, batch);
        valid += batch.iter().filter(|c| ring_verdict(c).is_some()).count();
        rest = tail;
    }
    assert!(valid > 100, "enough valid signatures ({valid})");
    assert!(v.stats.batched.get() > 100, "most went through batches");
    assert!(
        v.stats.failed_batches.get() > 0,
        "corrupted ones failed batches"
    );
}

/// Batches hold at most MAX_BATCH; a lone request is verified singly; a failed batch switches
/// to single mode; a single-mode configuration never batches.
#[test]
fn batch_sizes_fallback_and_single_mode() {
    let s = signer(20);
    let v = Rc::new(Verifier::default());
    let valid = |n: usize| -> Vec<Case> {
        (0..n)
            .map(|i| {
                let m = format!("m{i}").into_bytes();
                case(format!("v{i}"), s.public, &m, s.sign(&m))
            })
            .collect()
    };
    assert_agrees(&v, &valid(40));
    assert_eq!(v.stats.batched.get(), 40);
    assert!(v.stats.batches.get() >= 3, "40 in batches of at most 16");
    assert_eq!(v.stats.single.get(), 0);

    assert_agrees(&v, &valid(1));
    assert_eq!(v.stats.single.get(), 1, "a lone request is verified singly");

    let mut cases = valid(8);
    cases[5].sig[40] ^= 1;
    let batches = v.stats.batches.get();
    assert_agrees(&v, &cases);
    assert_eq!(v.stats.failed_batches.get(), 1);
    assert_eq!(
        v.stats.single.get(),
        1 + 8,
        "the failed batch re-verified one by one"
    );
    assert_agrees(&v, &valid(8));
    assert_eq!(
        v.stats.batches.get(),
        batches + 1,
        "single mode after a failure"
    );
    assert_eq!(v.stats.single.get(), 9 + 8);

    // Single mode: ring only.
    let v = Rc::new(Verifier::default());
    let ex = smol::LocalExecutor::new();
    let cases = valid(8);
    let tasks: Vec<_> = cases
        .iter()
        .cloned()
        .map(|c| {
            let v = Rc::clone(&v);
            ex.spawn(async move {
                v.verify(SignatureVerification::Single, c.keys, &c.msg, &c.sig)
                    .await
            })
        })
        .collect();
    let got = futures_lite::future::block_on(ex.run(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    }));
    assert!(got.iter().all(|g| *g == Some(s.public)));
    assert_eq!(v.stats.batches.get(), 0);
    assert_eq!(v.stats.single.get(), 8);
}

/// A request dropped while it waits (its connection closed) does not strand the others: the
/// submitter that was to verify the batch verifies it as it goes away.
#[test]
fn dropped_submitters_do_not_strand_the_batch() {
    let s = signer(30);
    let v = Verifier::default();
    let sig = |m: &[u8]| s.sign(m);
    let keys = || {
        let mut k = Candidates::new();
        let _ = k.push(s.public);
        k
    };
    let (s1, s2, s3) = (sig(b"one"), sig(b"two"), sig(b"three"));
    let mut leader = Box::pin(v.verify(SignatureVerification::Batch, keys(), b"one", &s1));
    let mut follower = Box::pin(v.verify(SignatureVerification::Batch, keys(), b"two", &s2));
    let mut dropped = Box::pin(v.verify(SignatureVerification::Batch, keys(), b"three", &s3));
    futures_lite::future::block_on(async {
        assert!(futures_lite::future::poll_once(&mut leader).await.is_none());
        assert!(futures_lite::future::poll_once(&mut follower)
            .await
            .is_none());
        assert!(futures_lite::future::poll_once(&mut dropped)
            .await
            .is_none());
    });
    drop(dropped);
    drop(leader);
    assert_eq!(
        futures_lite::future::block_on(follower),
        Some(s.public),
        "answered by the dropped leader's batch"
    );
    assert_eq!(v.stats.batched.get(), 3);
    let st = v.state.borrow();
    assert!(st.entries.is_empty());
    assert!(
        st.slots.iter().all(|s| *s == Slot::Free),
        "every slot released: {:?}",
        st.slots
    );
}
