//! Evidence envelope encryption (CONTRACT.md §9).
//!
//! `vv-evidence-env-v2`: each blob gets a fresh 32-byte data key (DEK) and is sealed with
//! AES-256-GCM (ring); the DEK is sealed with AES-256-GCM by a key-encryption key (KEK) held
//! in the key store, which never hands the KEK out. Both seals use the AAD
//! `tenant:{tenant_id}|blob:{blob_id}|key:{key_id}|purpose:evidence-blob`, so an envelope
//! cannot be moved to another tenant, another blob id or another KEK. `key_id` names the KEK
//! version; after a rotation the old KEKs stay configured for opening.
//!
//! Opening reports, in order, `Unsupported evidence envelope version`, `Tenant mismatch for
//! evidence envelope`, `Evidence key not found`, and for anything else (bad base64, wrong
//! lengths, other blob id, any tag failure) only `Evidence envelope authentication failed`:
//! the caller learns nothing about which part failed.
//!
//! Upstream `vv-evidence-env-v1` envelopes (KEK = HKDF-SHA256 of a root key) are opened by
//! [`open_v1`] only with a root key given explicitly; the daemon holds no root keys.

use std::sync::Arc;

use base64::Engine;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use serde_json::{Map, Value};
use vvgate_hsm::{HsmError, Kek, SealedDek};
use zeroize::Zeroizing;

pub const VERSION_V1: &str = "vv-evidence-env-v1";
pub const VERSION_V2: &str = "vv-evidence-env-v2";
pub const ALGORITHM_V1: &str = "AES-256-GCM+HKDF-SHA256";
pub const ALGORITHM_V2: &str = "AES-256-GCM+KEK-AES-256-GCM";
const HKDF_INFO: &[u8] = b"vectorvue-evidence-kek-v1";
/// The largest blob sealed in one envelope.
pub const MAX_PLAINTEXT: usize = 64 << 20;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why an envelope could not be sealed or opened. The `Display` texts of the first four are
/// the contract's.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvidenceError {
    #[error("Unsupported evidence envelope version")]
    UnsupportedVersion,
    #[error("Tenant mismatch for evidence envelope")]
    TenantMismatch,
    #[error("Evidence key not found")]
    KeyNotFound,
    #[error("Evidence envelope authentication failed")]
    AuthenticationFailed,
    /// Input refused before any key is used (sealing only).
    #[error("{0}")]
    Invalid(String),
    /// The key store could not be used (not a property of the envelope).
    #[error("evidence key store: {0}")]
    KeyStore(String),
}

/// A tenant id: `^[a-fA-F0-9-]{36}$` (the contract's tenant pattern).
fn valid_tenant(t: &str) -> bool {
    t.len() == 36 && t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A blob id: 1–128 of `[A-Za-z0-9._:-]`.
pub fn valid_blob_id(b: &str) -> bool {
    (1..=128).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// The AAD of both seals of a v2 envelope.
pub fn aad_v2(tenant_id: &str, blob_id: &str, key_id: &str) -> Vec<u8> {
    format!("tenant:{tenant_id}|blob:{blob_id}|key:{key_id}|purpose:evidence-blob").into_bytes()
}

fn aad_v1(tenant_id: &str, key_id: &str) -> Vec<u8> {
    format!("tenant:{tenant_id}|key:{key_id}|purpose:evidence-blob").into_bytes()
}

fn gcm_key(key: &[u8]) -> Option<LessSafeKey> {
    UnboundKey::new(&aead::AES_256_GCM, key)
        .ok()
        .map(LessSafeKey::new)
}

/// AES-256-GCM of `plaintext` under `dek` (ciphertext ‖ tag).
pub fn seal_data(dek: &[u8; 32], nonce: [u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plaintext.len() + 16);
    buf.extend_from_slice(plaintext);
    #[allow(clippy::expect_used)] // a 32-byte key and a 12-byte nonce are always accepted
    gcm_key(dek)
        .expect("AES-256 key")
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .expect("AES-256-GCM seal of a bounded blob");
    buf
}

fn open_data(
    key: &[u8],
    nonce: [u8; 12],
    aad: &[u8],
    mut ct: Vec<u8>,
) -> Result<Zeroizing<Vec<u8>>, EvidenceError> {
    let k = gcm_key(key).ok_or(EvidenceError::AuthenticationFailed)?;
    let n = k
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut ct)
        .map_err(|_| EvidenceError::AuthenticationFailed)?
        .len();
    ct.truncate(n);
    Ok(Zeroizing::new(ct))
}

/// Seal `plaintext` for `tenant_id` as blob `blob_id` under the KEK `key_id`. `random` fills
/// the DEK and the data nonce.
pub fn seal(
    kek: &dyn Kek,
    key_id: &str,
    tenant_id: &str,
    blob_id: &str,
    plaintext: &[u8],
    random: &mut dyn FnMut(&mut [u8]),
) -> Result<Value, EvidenceError> {
    if !valid_tenant(tenant_id) {
        return Err(EvidenceError::Invalid(format!(
            "tenant id {tenant_id:?} does not match ^[a-fA-F0-9-]{{36}}$"
        )));
    }
    if !valid_blob_id(blob_id) {
        return Err(EvidenceError::Invalid(format!(
            "blob id {blob_id:?} is not 1–128 characters of [A-Za-z0-9._:-]"
        )));
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EvidenceError::Invalid(format!(
            "the blob is larger than {MAX_PLAINTEXT} bytes"
        )));
    }
    let mut dek = Zeroizing::new([0u8; 32]);
    random(&mut dek[..]);
    let mut data_nonce = [0u8; 12];
    random(&mut data_nonce);
    let aad = aad_v2(tenant_id, blob_id, key_id);
    let ciphertext = seal_data(&dek, data_nonce, &aad, plaintext);
    let sealed = kek
        .seal_dek(&dek, &aad)
        .map_err(|e| EvidenceError::KeyStore(e.to_string()))?;
    let mut m = Map::new();
    for (k, v) in [
        ("version", VERSION_V2.to_owned()),
        ("algorithm", ALGORITHM_V2.to_owned()),
        ("key_id", key_id.to_owned()),
        ("tenant_id", tenant_id.to_owned()),
        ("blob_id", blob_id.to_owned()),
        ("wrapped_dek_b64", B64.encode(sealed.ct)),
        ("dek_wrap_nonce_b64", B64.encode(sealed.iv)),
        ("data_nonce_b64", B64.encode(data_nonce)),
        ("ciphertext_b64", B64.encode(ciphertext)),
    ] {
        m.insert(k.into(), Value::String(v));
    }
    Ok(Value::Object(m))
}

/// The string member `name`, if present.
fn text<'v>(env: &'v Value, name: &str) -> Option<&'v str> {
    env.get(name).and_then(Value::as_str)
}

/// Standard base64 of exactly `N` bytes.
fn fixed<const N: usize>(env: &Value, name: &str) -> Result<[u8; N], EvidenceError> {
    text(env, name)
        .and_then(|s| B64.decode(s).ok())
        .and_then(|v| <[u8; N]>::try_from(v).ok())
        .ok_or(EvidenceError::AuthenticationFailed)
}

fn ciphertext(env: &Value) -> Result<Vec<u8>, EvidenceError> {
    text(env, "ciphertext_b64")
        .and_then(|s| B64.decode(s).ok())
        .filter(|v| v.len() >= 16)
        .ok_or(EvidenceError::AuthenticationFailed)
}

/// The checks common to both versions, in the contract's order: version, then tenant.
fn header<'v>(env: &'v Value, version: &str, tenant_id: &str) -> Result<&'v str, EvidenceError> {
    if !env.is_object() || text(env, "version") != Some(version) {
        return Err(EvidenceError::UnsupportedVersion);
    }
    if text(env, "tenant_id") != Some(tenant_id) {
        return Err(EvidenceError::TenantMismatch);
    }
    text(env, "key_id").ok_or(EvidenceError::KeyNotFound)
}

/// Open a v2 envelope for `tenant_id`. `kek_for` finds a KEK by key id. With `blob_id`, the
/// envelope must be that blob's.
pub fn open(
    env: &Value,
    tenant_id: &str,
    blob_id: Option<&str>,
    kek_for: &dyn Fn(&str) -> Option<Arc<dyn Kek>>,
) -> Result<Zeroizing<Vec<u8>>, EvidenceError> {
    let key_id = header(env, VERSION_V2, tenant_id)?;
    let kek = kek_for(key_id).ok_or(EvidenceError::KeyNotFound)?;
    let fail = EvidenceError::AuthenticationFailed;
    if text(env, "algorithm") != Some(ALGORITHM_V2) {
        return Err(fail);
    }
    let blob = text(env, "blob_id")
        .filter(|b| valid_blob_id(b))
        .ok_or(fail.clone())?;
    if blob_id.is_some_and(|want| want != blob) {
        return Err(fail);
    }
    let sealed = SealedDek {
        iv: fixed(env, "dek_wrap_nonce_b64")?,
        ct: fixed(env, "wrapped_dek_b64")?,
    };
    let data_nonce = fixed(env, "data_nonce_b64")?;
    let ct = ciphertext(env)?;
    let aad = aad_v2(tenant_id, blob, key_id);
    let dek = kek.open_dek(&sealed, &aad).map_err(|e| match e {
        HsmError::AuthenticationFailed => EvidenceError::AuthenticationFailed,
        other => EvidenceError::KeyStore(other.to_string()),
    })?;
    open_data(&dek[..], data_nonce, &aad, ct)
}

/// The upstream tenant KEK: HKDF-SHA256(root key, salt = tenant id, info
/// `vectorvue-evidence-kek-v1`), 32 bytes.
pub fn tenant_kek_v1(root_key: &[u8], tenant_id: &str) -> Zeroizing<[u8; 32]> {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = Zeroizing::new([0u8; 32]);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, tenant_id.as_bytes()).extract(root_key);
    #[allow(clippy::expect_used)] // 32 bytes is far below HKDF-SHA256's 8160-byte limit
    prk.expand(&[HKDF_INFO], Len32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("HKDF-SHA256 output of 32 bytes");
    out
}

/// Open an upstream v1 envelope with its root key (16, 24 or 32 bytes) named `root_key_id`.
pub fn open_v1(
    env: &Value,
    tenant_id: &str,
    root_key_id: &str,
    root_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EvidenceError> {
    let key_id = header(env, VERSION_V1, tenant_id)?;
    if key_id != root_key_id || ![16, 24, 32].contains(&root_key.len()) {
        return Err(EvidenceError::KeyNotFound);
    }
    let fail = EvidenceError::AuthenticationFailed;
    if text(env, "algorithm") != Some(ALGORITHM_V1) {
        return Err(fail);
    }
    let wrapped: [u8; 48] = fixed(env, "wrapped_dek_b64")?;
    let wrap_nonce = fixed(env, "dek_wrap_nonce_b64")?;
    let data_nonce = fixed(env, "data_nonce_b64")?;
    let ct = ciphertext(env)?;
    let aad = aad_v1(tenant_id, key_id);
    let kek = tenant_kek_v1(root_key, tenant_id);
    let dek = open_data(&kek[..], wrap_nonce, &aad, wrapped.to_vec())?;
    open_data(&dek, data_nonce, &aad, ct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TENANT: &str = "10000000-0000-0000-0000-000000000001";
    const PLAIN: &[u8] = br#"{"finding":"critical","evidence":"blob"}"#;

    /// A KEK with a fixed key and a fixed IV (the test vector's), through the same trait the
    /// key stores implement.
    struct FixedKek([u8; 32], [u8; 12]);

    impl Kek for FixedKek {
        fn seal_dek(&self, dek: &[u8; 32], aad: &[u8]) -> Result<SealedDek, HsmError> {
            let ct = seal_data(&self.0, self.1, aad, dek);
            Ok(SealedDek {
                iv: self.1,
                ct: ct.try_into().unwrap(),
            })
        }
        fn open_dek(&self, s: &SealedDek, aad: &[u8]) -> Result<Zeroizing<[u8; 32]>, HsmError> {
            let pt = open_data(&self.0, s.iv, aad, s.ct.to_vec())
                .map_err(|_| HsmError::AuthenticationFailed)?;
            Ok(Zeroizing::new(pt[..].try_into().unwrap()))
        }
    }

    /// Fills the DEK with 0x11 and the data nonce with 0x22, as the vector.
    fn vector_random() -> impl FnMut(&mut [u8]) {
        |out: &mut [u8]| {
            let b = if out.len() == 32 { 0x11 } else { 0x22 };
            out.fill(b);
        }
    }

    fn keks() -> BTreeMap<String, Arc<dyn Kek>> {
        let mut m: BTreeMap<String, Arc<dyn Kek>> = BTreeMap::new();
        m.insert(
            "vv-evidence-kek-v1".into(),
            Arc::new(FixedKek([0x44; 32], [0x33; 12])),
        );
        m.insert(
            "vv-evidence-kek-v2".into(),
            Arc::new(FixedKek([0x55; 32], [0x66; 12])),
        );
        m
    }

    fn open_with(env: &Value, tenant: &str) -> Result<Zeroizing<Vec<u8>>, EvidenceError> {
        let k = keks();
        open(env, tenant, None, &|id| k.get(id).cloned())
    }

    /// CONTRACT.md §13.1, evidence v2.
    #[test]
    fn contract_vector_v2() {
        let k = keks();
        let kek = &k["vv-evidence-kek-v1"];
        let env = seal(
            kek.as_ref(),
            "vv-evidence-kek-v1",
            TENANT,
            "blob-0001",
            PLAIN,
            &mut vector_random(),
        )
        .unwrap();
        assert_eq!(
            env["wrapped_dek_b64"],
            "OuFIzl20UlghiWlX2cKqxbTw9sEH7QbnQu5Tm1pHUM93ySYbeOu+4A/6Fi3bqpZc"
        );
        assert_eq!(env["dek_wrap_nonce_b64"], "MzMzMzMzMzMzMzMz");
        assert_eq!(env["data_nonce_b64"], "IiIiIiIiIiIiIiIi");
        assert_eq!(
            env["ciphertext_b64"],
            "bNVhIK6r9jGCHeQeK9SAoXbwrI5IrY4uJCZujWeCACF/XcluPMrboylN/1v5CZZ7XDOhOIBeHog="
        );
        assert_eq!(env["algorithm"], ALGORITHM_V2);
        assert_eq!(&open_with(&env, TENANT).unwrap()[..], PLAIN);
    }

    /// CONTRACT.md §13.1, evidence v1 (root key `A`×32).
    #[test]
    fn contract_vector_v1() {
        let root = [b'A'; 32];
        assert_eq!(
            crate::ids::hex32(&tenant_kek_v1(&root, TENANT)).as_str(),
            "eeb73e33f4b130f0da920c11b63c83f0e96e3e07172133b01e49bda9f9fd1ac0"
        );
        let env = serde_json::json!({
            "version": VERSION_V1,
            "algorithm": ALGORITHM_V1,
            "key_id": "vv-evidence-root-v1",
            "tenant_id": TENANT,
            "wrapped_dek_b64": "/df5ryWTHmSP5Fdfdu94yWZH8AqM48r/rki653jBsipwg/WZ5aaCbEoClVPlaC0k",
            "dek_wrap_nonce_b64": "MzMzMzMzMzMzMzMz",
            "data_nonce_b64": "IiIiIiIiIiIiIiIi",
            "ciphertext_b64": "bNVhIK6r9jGCHeQeK9SAoXbwrI5IrY4uJCZujWeCACF/XcluPMrbo77D3wXxE8MYH+D5jaVRUIA="
        });
        assert_eq!(
            &open_v1(&env, TENANT, "vv-evidence-root-v1", &root).unwrap()[..],
            PLAIN
        );
        assert_eq!(
            open_v1(&env, TENANT, "vv-evidence-root-v1", &[b'B'; 32]),
            Err(EvidenceError::AuthenticationFailed)
        );
        assert_eq!(
            open_v1(&env, TENANT, "other", &root),
            Err(EvidenceError::KeyNotFound)
        );
        // The daemon's v2 opener does not take v1 envelopes.
        assert_eq!(
            open_with(&env, TENANT),
            Err(EvidenceError::UnsupportedVersion)
        );
    }

    #[test]
    fn tampering_fails_closed() {
        let k = keks();
        let mut rng = crate::ids::Random::new();
        let mut random = |b: &mut [u8]| rng.fill(b);
        let env = seal(
            k["vv-evidence-kek-v1"].as_ref(),
            "vv-evidence-kek-v1",
            TENANT,
            "blob-7",
            PLAIN,
            &mut random,
        )
        .unwrap();
        assert_eq!(&open_with(&env, TENANT).unwrap()[..], PLAIN);
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut e = env.clone();
            f(&mut e);
            open_with(&e, TENANT)
        };
        let auth = Err(EvidenceError::AuthenticationFailed);
        // One ciphertext bit.
        assert_eq!(
            edit(&|e| {
                let mut ct = B64.decode(e["ciphertext_b64"].as_str().unwrap()).unwrap();
                ct[0] ^= 1;
                e["ciphertext_b64"] = B64.encode(ct).into();
            }),
            auth
        );
        // The wrapped key, the nonces, the blob id (AAD), the algorithm, bad base64.
        for (field, value) in [
            ("wrapped_dek_b64", B64.encode([0u8; 48])),
            ("dek_wrap_nonce_b64", B64.encode([0u8; 12])),
            ("data_nonce_b64", B64.encode([0u8; 12])),
            ("blob_id", "blob-8".to_owned()),
            ("algorithm", ALGORITHM_V1.to_owned()),
            ("ciphertext_b64", "not base64!".to_owned()),
            ("wrapped_dek_b64", "AAAA".to_owned()),
        ] {
            assert_eq!(edit(&|e| e[field] = value.clone().into()), auth, "{field}");
        }
        // The other KEK version (exists, but not this envelope's): the AAD and the key differ.
        assert_eq!(edit(&|e| e["key_id"] = "vv-evidence-kek-v2".into()), auth);
        // A KEK version nobody configured; another tenant; a future format.
        assert_eq!(
            edit(&|e| e["key_id"] = "vv-evidence-kek-v9".into()),
            Err(EvidenceError::KeyNotFound)
        );
        assert_eq!(
            open_with(&env, "20000000-0000-0000-0000-000000000002"),
            Err(EvidenceError::TenantMismatch)
        );
        assert_eq!(
            edit(&|e| e["tenant_id"] = "20000000-0000-0000-0000-000000000002".into()),
            Err(EvidenceError::TenantMismatch)
        );
        assert_eq!(
            edit(&|e| e["version"] = "vv-evidence-env-v3".into()),
            Err(EvidenceError::UnsupportedVersion)
        );
        // The expected blob id must match.
        assert_eq!(
            open(&env, TENANT, Some("blob-8"), &|id| k.get(id).cloned()),
            auth
        );
        assert!(open(&env, TENANT, Some("blob-7"), &|id| k.get(id).cloned()).is_ok());
    }

    #[test]
    fn rotation_keeps_old_envelopes_open() {
        let k = keks();
        let mut rng = crate::ids::Random::new();
        let mut random = |b: &mut [u8]| rng.fill(b);
        let old = seal(
            k["vv-evidence-kek-v1"].as_ref(),
            "vv-evidence-kek-v1",
            TENANT,
            "a",
            b"old",
            &mut random,
        )
        .unwrap();
        let new = seal(
            k["vv-evidence-kek-v2"].as_ref(),
            "vv-evidence-kek-v2",
            TENANT,
            "b",
            b"new",
            &mut random,
        )
        .unwrap();
        assert_eq!(&open_with(&old, TENANT).unwrap()[..], b"old");
        assert_eq!(&open_with(&new, TENANT).unwrap()[..], b"new");
        assert!(seal(
            k["vv-evidence-kek-v1"].as_ref(),
            "k",
            "bad",
            "a",
            b"",
            &mut random
        )
        .is_err());
        assert!(seal(
            k["vv-evidence-kek-v1"].as_ref(),
            "k",
            TENANT,
            "a/b",
            b"",
            &mut random
        )
        .is_err());
    }
}
