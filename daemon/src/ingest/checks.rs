//! Check steps 1–14 (CONTRACT.md §3.1–§3.4): identity and pin, then the signed headers and the
//! Ed25519 signature. Pure functions of the head, the body, the connection's certificate and
//! the configuration; no I/O.

use base64::Engine;
use ring::signature::{UnparsedPublicKey, ED25519};

use super::Rejection;
use crate::config::{Identities, ProducerKeys};
use crate::http::{Head, Span};

/// A header value, trimmed, or `None` when absent or blank.
fn present(span: Option<Span>, buf: &[u8]) -> Option<&str> {
    span.map(|s| s.str(buf)).filter(|v| !v.is_empty())
}

/// Steps 1–6: the claimed identity, its pin, and the certificate actually presented.
/// Returns the identity.
pub(crate) fn identity<'b>(
    head: &Head,
    buf: &'b [u8],
    presented: Option<[u8; 32]>,
    identities: &Identities,
) -> Result<&'b str, Rejection> {
    let identity = present(head.service_identity, buf).ok_or(Rejection::MissingServiceIdentity)?;
    let claimed = present(head.cert_sha256, buf).ok_or(Rejection::MissingCertFingerprint)?;
    let claimed = parse_fingerprint(claimed).ok_or(Rejection::BadCertFingerprintFormat)?;
    let pins = identities
        .pins
        .get(identity)
        .ok_or(Rejection::UnknownServiceIdentity)?;
    if !pins.contains(&claimed) {
        return Err(Rejection::HeaderNotPinned);
    }
    if presented != Some(claimed) {
        return Err(Rejection::PresentedCertificateMismatch);
    }
    Ok(identity)
}

/// `^[0-9a-f]{64}$` after lowercasing (step 3).
fn parse_fingerprint(v: &str) -> Option<[u8; 32]> {
    if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    crate::ids::parse_hex32(v)
}

/// What steps 7–14 established.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Signed<'b> {
    /// The timestamp header, canonical decimal.
    pub(crate) ts_text: &'b str,
    pub(crate) ts: u64,
    pub(crate) nonce: &'b str,
    /// The producer key that verified.
    pub(crate) key: [u8; 32],
}

/// Steps 7–13: the signed headers, without the signature verification itself.
pub(crate) fn signed_headers<'b>(
    head: &Head,
    buf: &'b [u8],
    now: u64,
    skew: u64,
) -> Result<(Signed<'b>, &'b str), Rejection> {
    let ts_text = present(head.timestamp, buf).ok_or(Rejection::MissingTimestamp)?;
    let nonce = present(head.nonce, buf).ok_or(Rejection::MissingNonce)?;
    let sig = present(head.signature, buf).ok_or(Rejection::MissingSignature)?;
    if !sig
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err(Rejection::SignatureNotBase64);
    }
    let ts = parse_epoch(ts_text).ok_or(Rejection::TimestampNotEpochSeconds)?;
    if now.abs_diff(ts) > skew {
        return Err(Rejection::TimestampOutsideSkew);
    }
    Ok((
        Signed {
            ts_text,
            ts,
            nonce,
            key: [0; 32],
        },
        sig,
    ))
}

/// `^(0|[1-9][0-9]{0,18})$` (§3.3).
pub fn parse_epoch(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let ok = match b {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.len() <= 18 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

/// Steps 13–14: decode the signature strictly and verify it over `"{ts}.{nonce}." + body`
/// with each producer key valid at `now` (ring). `msg` is scratch space for the signed message.
pub(crate) fn verify_signature(
    signed: &mut Signed<'_>,
    sig_b64: &str,
    body: &[u8],
    keys: &ProducerKeys,
    now: u64,
    msg: &mut Vec<u8>,
) -> Result<(), Rejection> {
    let sig = signature_message(signed, sig_b64, body, msg)?;
    for key in keys.valid_at(now) {
        if ed25519_verify(key, msg, &sig) {
            signed.key = *key;
            return Ok(());
        }
    }
    Err(Rejection::SignatureInvalid)
}

/// Step 13 and what step 14 verifies: the signature decoded strictly (a valid encoding of
/// another length than 64 bytes is step 14), and the signed message `"{ts}.{nonce}." + body`
/// written into `msg`.
pub(crate) fn signature_message(
    signed: &Signed<'_>,
    sig_b64: &str,
    body: &[u8],
    msg: &mut Vec<u8>,
) -> Result<[u8; 64], Rejection> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut small = [0u8; 66];
    let sig: Vec<u8>;
    let sig: &[u8] = if sig_b64.len() <= 88 {
        let n = engine
            .decode_slice(sig_b64, &mut small)
            .map_err(|_| Rejection::SignatureEncoding)?;
        &small[..n]
    } else {
        sig = engine
            .decode(sig_b64)
            .map_err(|_| Rejection::SignatureEncoding)?;
        &sig
    };
    let sig: [u8; 64] = sig.try_into().map_err(|_| Rejection::SignatureInvalid)?;
    msg.clear();
    msg.extend_from_slice(signed.ts_text.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(signed.nonce.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    Ok(sig)
}

/// Ed25519 over the raw message (ring).
#[cfg(not(feature = "fuzzing"))]
pub(crate) fn ed25519_verify(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(msg, sig)
        .is_ok()
}

/// The fuzzing build's verifier: NO SECURITY. A signature "verifies" when its first byte is
/// zero, so fuzz input reaches the checks after the signature; any other signature fails, so
/// the refusal path stays reachable too. `lib.rs` refuses this feature in optimised builds
/// without debug assertions, and `vvgated` refuses to start with it.
#[cfg(feature = "fuzzing")]
pub(crate) fn ed25519_verify(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    let _ = (key, msg, UnparsedPublicKey::new(&ED25519, key));
    sig.first() == Some(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_forms() {
        assert_eq!(parse_epoch("1772107200"), Some(1_772_107_200));
        assert_eq!(parse_epoch("0"), Some(0));
        for bad in [
            "",
            "12a",
            "+1772107200",
            "01772107200",
            " 1",
            "1 ",
            "-1",
            "1_000",
            "99999999999999999999",
        ] {
            assert_eq!(parse_epoch(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_epoch("9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
    }

    #[test]
    fn contract_signature_vector_verifies() {
        // CONTRACT.md §13.1: the producer request vector.
        let body = include_bytes!("../../tests/data/producer-request.json");
        let keys = ProducerKeys {
            active: crate::config::parse_ed25519_public(
                "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
            )
            .unwrap(),
            active_not_after: None,
            next: None,
        };
        let mut s = Signed {
            ts_text: "1772107200",
            ts: 1_772_107_200,
            nonce: "3f1c2a9e-0000-4000-8000-000000000001",
            key: [0; 32],
        };
        let sig = "UZBdtXCz6T0DrZ3FORfFSaf4jhGfvGz8POfknpUbIa2liI+aa/8fglKVVqNn5SRXYsuiAVKuD70zXnqKlxySBQ==";
        let mut msg = Vec::new();
        assert_eq!(
            crate::ids::hex32(&crate::ids::sha256(body)).as_str(),
            "c34d5aa6db1a40db4b3071f5f3c048e898b4329fe5ba3bdd5ea1075c6c406dae"
        );
        verify_signature(&mut s, sig, body, &keys, 1_772_107_200, &mut msg).unwrap();
        assert_eq!(s.key, keys.active);
        // One body byte changed.
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify_signature(&mut s, sig, &tampered, &keys, 1_772_107_200, &mut msg),
            Err(Rejection::SignatureInvalid)
        );
        // Strict decoding: bad padding is step 13, a short valid encoding step 14.
        assert_eq!(
            verify_signature(&mut s, "QUFBQUE", body, &keys, 0, &mut msg),
            Err(Rejection::SignatureEncoding)
        );
        assert_eq!(
            verify_signature(&mut s, "QUFB", body, &keys, 0, &mut msg),
            Err(Rejection::SignatureInvalid)
        );
        // Non-zero trailing bits are not canonical.
        assert_eq!(
            verify_signature(&mut s, "QUF=", body, &keys, 0, &mut msg),
            Err(Rejection::SignatureEncoding)
        );
        assert_eq!(
            verify_signature(&mut s, "QUE=QUE=", body, &keys, 0, &mut msg),
            Err(Rejection::SignatureEncoding)
        );
        // A long valid encoding of the wrong length.
        let long = "QUFB".repeat(40);
        assert_eq!(
            verify_signature(&mut s, &long, body, &keys, 0, &mut msg),
            Err(Rejection::SignatureInvalid)
        );
        // The key expired: the same signature no longer verifies.
        let retired = ProducerKeys {
            active_not_after: Some(1_772_107_199),
            ..keys
        };
        assert_eq!(
            verify_signature(&mut s, sig, body, &retired, 1_772_107_200, &mut msg),
            Err(Rejection::SignatureInvalid)
        );
    }
}
