//! Key kinds, purposes, `CKA_ID`s, generation templates and the attribute gate, shared by the
//! key store (which checks) and the ceremonies (which generate and list).

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::HsmError;

/// DER of the prime256v1 (P-256) curve OID, the value of `CKA_EC_PARAMS`.
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the Ed25519 OID 1.3.101.112, the preferred `CKA_EC_PARAMS` for Ed25519.
pub const ED25519_PARAMS_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// The PrintableString `edwards25519`, the other `CKA_EC_PARAMS` form (what `pkcs11-tool`
/// writes); accepted at load, used at generation only when a token refuses the OID.
pub const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";

/// The kind of a key, which fixes its type, curve and only allowed mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// ECDSA on P-256, `CKM_ECDSA` over a host-computed SHA-256 digest.
    EcdsaP256,
    /// Ed25519, `CKM_EDDSA` (pure).
    Ed25519,
    /// AES-256, `CKM_AES_GCM`.
    Aes256Gcm,
}

impl KeyKind {
    /// The one mechanism the key may be used with (`CKA_ALLOWED_MECHANISMS`).
    pub fn mechanism(self) -> MechanismType {
        match self {
            KeyKind::EcdsaP256 => MechanismType::ECDSA,
            KeyKind::Ed25519 => MechanismType::EDDSA,
            KeyKind::Aes256Gcm => MechanismType::AES_GCM,
        }
    }

    /// `CKA_KEY_TYPE`.
    pub fn key_type(self) -> KeyType {
        match self {
            KeyKind::EcdsaP256 => KeyType::EC,
            KeyKind::Ed25519 => KeyType::EC_EDWARDS,
            KeyKind::Aes256Gcm => KeyType::AES,
        }
    }

    /// The class of the object holding the secret: private key or secret key.
    pub fn secret_class(self) -> ObjectClass {
        match self {
            KeyKind::Aes256Gcm => ObjectClass::SECRET_KEY,
            _ => ObjectClass::PRIVATE_KEY,
        }
    }

    /// Whether the key has a public half (a public key object with `CKA_EC_POINT`).
    pub fn has_public(self) -> bool {
        !matches!(self, KeyKind::Aes256Gcm)
    }

    /// A short name for messages and transcripts.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::EcdsaP256 => "ECDSA P-256",
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::Aes256Gcm => "AES-256-GCM",
        }
    }

    fn from_key_type(kt: KeyType) -> Option<Self> {
        [KeyKind::EcdsaP256, KeyKind::Ed25519, KeyKind::Aes256Gcm]
            .into_iter()
            .find(|k| k.key_type() == kt)
    }
}

/// What a key is for. The purpose byte is the first byte of the key's `CKA_ID`; the second is
/// its version (1, 2, … as keys are rotated): `CKA_ID = purpose ‖ version`, e.g. `0101` is
/// the first TLS key and `0402` the second KEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// `01`: the TLS server key, ECDSA P-256.
    Tls,
    /// `02`: the audit checkpoint signing key, Ed25519.
    Checkpoint,
    /// `03`: the feedback response signing key, Ed25519.
    Feedback,
    /// `04`: the evidence key-encryption key, AES-256-GCM.
    Kek,
    /// `05`: an optional Ed25519 TLS server key, for clients that offer Ed25519.
    TlsEd25519,
}

impl Purpose {
    /// Every purpose, in `CKA_ID` order.
    pub const ALL: [Purpose; 5] = [
        Purpose::Tls,
        Purpose::Checkpoint,
        Purpose::Feedback,
        Purpose::Kek,
        Purpose::TlsEd25519,
    ];

    /// The purpose byte (first byte of `CKA_ID`).
    pub fn byte(self) -> u8 {
        match self {
            Purpose::Tls => 0x01,
            Purpose::Checkpoint => 0x02,
            Purpose::Feedback => 0x03,
            Purpose::Kek => 0x04,
            Purpose::TlsEd25519 => 0x05,
        }
    }

    /// The purpose with this byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.byte() == b)
    }

    /// The key kind this purpose requires.
    pub fn kind(self) -> KeyKind {
        match self {
            Purpose::Tls => KeyKind::EcdsaP256,
            Purpose::Checkpoint | Purpose::Feedback | Purpose::TlsEd25519 => KeyKind::Ed25519,
            Purpose::Kek => KeyKind::Aes256Gcm,
        }
    }

    /// The name used on the command line and in transcripts (`tls`, `checkpoint`, …).
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Tls => "tls",
            Purpose::Checkpoint => "checkpoint",
            Purpose::Feedback => "feedback",
            Purpose::Kek => "kek",
            Purpose::TlsEd25519 => "tls-ed25519",
        }
    }

    /// Parse a purpose name as printed by [`Purpose::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The `CKA_ID` of `version` of this purpose.
    pub fn id(self, version: u8) -> Vec<u8> {
        vec![self.byte(), version]
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// The generation templates `(public, private)` for an asymmetric key of `kind`, with every
/// security-relevant attribute explicit (SoftHSM's defaults are unsafe: notes §7).
pub(crate) fn pair_templates(
    kind: KeyKind,
    ec_params: &[u8],
    id: &[u8],
    label: &str,
) -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::EcParams(ec_params.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::SignRecover(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![kind.mechanism()]),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    (public, private)
}

/// The generation template for the AES-256 KEK (notes §6).
pub(crate) fn kek_template(id: &[u8], label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![MechanismType::AES_GCM]),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// One attribute, read alone so that a missing or sensitive one is seen as missing (cryptoki's
/// `get_attributes` silently drops those: notes §7).
pub(crate) fn read_attr(
    session: &Session,
    h: ObjectHandle,
    t: AttributeType,
) -> Result<Option<Attribute>, CkError> {
    Ok(session
        .get_attributes(h, &[t])?
        .into_iter()
        .find(|a| a.attribute_type() == t))
}

fn read_bool(
    session: &Session,
    h: ObjectHandle,
    t: AttributeType,
) -> Result<Option<bool>, CkError> {
    Ok(match read_attr(session, h, t)? {
        Some(
            Attribute::Token(b)
            | Attribute::Private(b)
            | Attribute::Sensitive(b)
            | Attribute::Extractable(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::NeverExtractable(b)
            | Attribute::Sign(b)
            | Attribute::SignRecover(b)
            | Attribute::Decrypt(b)
            | Attribute::Encrypt(b)
            | Attribute::Wrap(b)
            | Attribute::Unwrap(b)
            | Attribute::Derive(b)
            | Attribute::Verify(b),
        ) => Some(b),
        _ => None,
    })
}

/// One failed attribute check: the `CKA_*` name and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttributeFailure {
    /// The attribute, e.g. `CKA_EXTRACTABLE`.
    pub attribute: &'static str,
    /// What was found and what was required.
    pub detail: String,
}

fn fail(out: &mut Vec<AttributeFailure>, attribute: &'static str, detail: impl Into<String>) {
    out.push(AttributeFailure {
        attribute,
        detail: detail.into(),
    });
}

fn show(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "is true",
        Some(false) => "is false",
        None => "is missing",
    }
}

/// The key kind of a secret object, from its `CKA_KEY_TYPE`, if it is one we know.
pub(crate) fn kind_of(session: &Session, h: ObjectHandle) -> Result<Option<KeyKind>, CkError> {
    Ok(match read_attr(session, h, AttributeType::KeyType)? {
        Some(Attribute::KeyType(kt)) => KeyKind::from_key_type(kt),
        _ => None,
    })
}

/// Check the private or secret key object `h` against what a key of `kind` must be (notes
/// §7): every failure, in a fixed order (the first is the one reported at load).
pub(crate) fn audit_secret(
    session: &Session,
    h: ObjectHandle,
    kind: KeyKind,
) -> Result<Vec<AttributeFailure>, CkError> {
    use AttributeType as T;
    let mut out = Vec::new();
    match read_attr(session, h, T::KeyType)? {
        Some(Attribute::KeyType(kt)) if kt == kind.key_type() => {}
        Some(Attribute::KeyType(kt)) => fail(
            &mut out,
            "CKA_KEY_TYPE",
            format!("is {kt}, expected {}", kind.key_type()),
        ),
        _ => fail(&mut out, "CKA_KEY_TYPE", "is missing"),
    }
    // Must be true.
    let mut must_true = vec![
        (T::Token, "CKA_TOKEN"),
        (T::Private, "CKA_PRIVATE"),
        (T::Sensitive, "CKA_SENSITIVE"),
        (T::AlwaysSensitive, "CKA_ALWAYS_SENSITIVE"),
        (T::NeverExtractable, "CKA_NEVER_EXTRACTABLE"),
    ];
    // Must be false (a missing flag counts as false, except CKA_EXTRACTABLE which must be
    // present and false).
    let mut must_false = vec![(T::Unwrap, "CKA_UNWRAP"), (T::Derive, "CKA_DERIVE")];
    match kind {
        KeyKind::EcdsaP256 | KeyKind::Ed25519 => {
            must_true.push((T::Sign, "CKA_SIGN"));
            must_false.push((T::Decrypt, "CKA_DECRYPT"));
        }
        KeyKind::Aes256Gcm => {
            must_true.push((T::Encrypt, "CKA_ENCRYPT"));
            must_true.push((T::Decrypt, "CKA_DECRYPT"));
            must_false.push((T::Wrap, "CKA_WRAP"));
            must_false.push((T::Sign, "CKA_SIGN"));
        }
    }
    // Order: the protection flags first, so the most serious failure is the one named.
    let ext = read_bool(session, h, T::Extractable)?;
    if ext != Some(false) {
        fail(
            &mut out,
            "CKA_EXTRACTABLE",
            format!("{}, required false", show(ext)),
        );
    }
    for (t, name) in must_true {
        let v = read_bool(session, h, t)?;
        if v != Some(true) {
            fail(&mut out, name, format!("{}, required true", show(v)));
        }
    }
    for (t, name) in must_false {
        let v = read_bool(session, h, t)?;
        if v == Some(true) {
            fail(&mut out, name, "is true, required false");
        }
    }
    match read_attr(session, h, T::AllowedMechanisms)? {
        Some(Attribute::AllowedMechanisms(m)) if m == [kind.mechanism()] => {}
        Some(Attribute::AllowedMechanisms(m)) => fail(
            &mut out,
            "CKA_ALLOWED_MECHANISMS",
            format!(
                "is [{}], required exactly [{}]",
                m.iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                kind.mechanism()
            ),
        ),
        _ => fail(
            &mut out,
            "CKA_ALLOWED_MECHANISMS",
            format!("is missing, required exactly [{}]", kind.mechanism()),
        ),
    }
    match kind {
        KeyKind::EcdsaP256 | KeyKind::Ed25519 => {
            let params = match read_attr(session, h, T::EcParams)? {
                Some(Attribute::EcParams(p)) => Some(p),
                _ => None,
            };
            if let Err(detail) = check_curve(kind, params.as_deref()) {
                fail(&mut out, "CKA_EC_PARAMS", detail);
            }
        }
        KeyKind::Aes256Gcm => match read_attr(session, h, T::ValueLen)? {
            Some(Attribute::ValueLen(n)) if u64::from(n) == 32 => {}
            Some(Attribute::ValueLen(n)) => fail(
                &mut out,
                "CKA_VALUE_LEN",
                format!("is {n}, required 32 (AES-256)"),
            ),
            _ => fail(&mut out, "CKA_VALUE_LEN", "is missing, required 32"),
        },
    }
    Ok(out)
}

/// Whether `params` (`CKA_EC_PARAMS`) names the curve of `kind`.
pub(crate) fn check_curve(kind: KeyKind, params: Option<&[u8]>) -> Result<(), String> {
    let ok = match (kind, params) {
        (KeyKind::EcdsaP256, Some(p)) => p == P256_PARAMS,
        (KeyKind::Ed25519, Some(p)) => p == ED25519_PARAMS_OID || p == ED25519_PARAMS_NAME,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let want = match kind {
        KeyKind::EcdsaP256 => "prime256v1",
        _ => "edwards25519",
    };
    Err(match params {
        Some(p) => format!("is {}, required {want}", hex(p)),
        None => format!("is missing, required {want}"),
    })
}

/// Decode `CKA_EC_POINT` for `kind`: the DER OCTET STRING (`04 len ‖ point`) or the raw point
/// some tokens return. Ed25519: 32 bytes; P-256: the 65-byte uncompressed point.
pub fn decode_ec_point(kind: KeyKind, v: &[u8]) -> Result<Vec<u8>, String> {
    let want = match kind {
        KeyKind::Ed25519 => 32,
        KeyKind::EcdsaP256 => 65,
        KeyKind::Aes256Gcm => return Err("an AES key has no public point".into()),
    };
    let raw = if v.len() == want + 2 && v[0] == 0x04 && usize::from(v[1]) == want {
        &v[2..]
    } else if v.len() == want {
        v
    } else {
        return Err(format!(
            "CKA_EC_POINT of {} bytes is neither a DER OCTET STRING of a {want}-byte point nor the raw point",
            v.len()
        ));
    };
    if kind == KeyKind::EcdsaP256 && raw[0] != 0x04 {
        return Err("CKA_EC_POINT is not an uncompressed P-256 point".into());
    }
    Ok(raw.to_vec())
}

/// Find the one object of `class` with `CKA_ID = id` (and key type of `kind`, if given).
/// `Ok(None)` when there is none; an error naming the count when there are several.
pub(crate) fn find_one(
    session: &Session,
    class: ObjectClass,
    id: &[u8],
    key_ref: &str,
) -> Result<Option<ObjectHandle>, FindError> {
    let found = session
        .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
        .map_err(FindError::Ck)?;
    match found.as_slice() {
        [] => Ok(None),
        [h] => Ok(Some(*h)),
        many => Err(FindError::Hsm(HsmError::Missing {
            key: key_ref.to_owned(),
            detail: format!(
                "{} {class} objects carry CKA_ID {}; exactly one is required",
                many.len(),
                hex(id)
            ),
        })),
    }
}

/// An error while looking keys up: a PKCS#11 failure (to be mapped with the session-loss
/// rules) or a finished [`HsmError`].
#[derive(Debug)]
pub(crate) enum FindError {
    Ck(CkError),
    Hsm(HsmError),
}

impl From<CkError> for FindError {
    fn from(e: CkError) -> Self {
        FindError::Ck(e)
    }
}

impl From<HsmError> for FindError {
    fn from(e: HsmError) -> Self {
        FindError::Hsm(e)
    }
}

/// A key resolved and checked: its secret handle and its public key (empty for a KEK).
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub(crate) kind: KeyKind,
    pub(crate) secret: ObjectHandle,
    pub(crate) public: Vec<u8>,
}

/// Resolve `id` to a checked key of one of `kinds`: exactly one secret object, its attributes
/// pass [`audit_secret`], and (for EC keys) exactly one public object whose point decodes.
pub(crate) fn resolve(
    session: &Session,
    id: &[u8],
    kinds: &[KeyKind],
    key_ref: &str,
) -> Result<Resolved, FindError> {
    let classes: Vec<ObjectClass> = {
        let mut c: Vec<ObjectClass> = kinds.iter().map(|k| k.secret_class()).collect();
        c.dedup();
        c
    };
    let mut secret = None;
    for class in &classes {
        if let Some(h) = find_one(session, *class, id, key_ref)? {
            secret = Some(h);
            break;
        }
    }
    let wanted = kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(" or ");
    let Some(secret) = secret else {
        return Err(HsmError::Missing {
            key: key_ref.to_owned(),
            detail: format!(
                "no private or secret key object with CKA_ID {} (expected {wanted})",
                hex(id)
            ),
        }
        .into());
    };
    let kind = match kind_of(session, secret)? {
        Some(k) if kinds.contains(&k) => k,
        other => {
            return Err(HsmError::WeakKey {
                key: key_ref.to_owned(),
                attribute: "CKA_KEY_TYPE",
                detail: format!(
                    "is {}, expected {wanted}",
                    other.map_or("another key type", |k| k.name())
                ),
            }
            .into())
        }
    };
    if let Some(f) = audit_secret(session, secret, kind)?.into_iter().next() {
        return Err(HsmError::WeakKey {
            key: key_ref.to_owned(),
            attribute: f.attribute,
            detail: f.detail,
        }
        .into());
    }
    let public = if kind.has_public() {
        read_public(session, id, kind, key_ref)?
    } else {
        Vec::new()
    };
    Ok(Resolved {
        kind,
        secret,
        public,
    })
}

/// The public key of the EC key `id`: 65-byte point (P-256) or 32 bytes (Ed25519).
pub(crate) fn read_public(
    session: &Session,
    id: &[u8],
    kind: KeyKind,
    key_ref: &str,
) -> Result<Vec<u8>, FindError> {
    let Some(h) = find_one(session, ObjectClass::PUBLIC_KEY, id, key_ref)? else {
        return Err(HsmError::Missing {
            key: key_ref.to_owned(),
            detail: format!("no public key object with CKA_ID {}", hex(id)),
        }
        .into());
    };
    let point = match read_attr(session, h, AttributeType::EcPoint)? {
        Some(Attribute::EcPoint(p)) => p,
        _ => {
            return Err(HsmError::WeakKey {
                key: key_ref.to_owned(),
                attribute: "CKA_EC_POINT",
                detail: "is missing on the public key object".into(),
            }
            .into())
        }
    };
    decode_ec_point(kind, &point).map_err(|detail| {
        HsmError::WeakKey {
            key: key_ref.to_owned(),
            attribute: "CKA_EC_POINT",
            detail,
        }
        .into()
    })
}

/// Convert a raw P-256 signature `r ‖ s` (64 bytes, what `CKM_ECDSA` returns) to the DER
/// `ECDSA-Sig-Value` that TLS and X.509 carry.
pub fn ecdsa_raw_to_der(raw: &[u8; 64]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, mut b: &[u8]) {
        while b.len() > 1 && b[0] == 0 {
            b = &b[1..];
        }
        let pad = b[0] & 0x80 != 0;
        out.push(0x02);
        // At most 33 bytes: always one length byte.
        out.push(u8::try_from(b.len() + usize::from(pad)).unwrap_or(u8::MAX));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(b);
    }
    let mut body = Vec::with_capacity(72);
    integer(&mut body, &raw[..32]);
    integer(&mut body, &raw[32..]);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(0x30);
    out.push(u8::try_from(body.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, KeyPair};

    #[test]
    fn raw_signatures_convert_to_der_that_ring_verifies() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let pk = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            pair.public_key().as_ref().to_vec(),
        );
        for i in 0..200u32 {
            let msg = i.to_be_bytes();
            let raw: [u8; 64] = pair.sign(&rng, &msg).unwrap().as_ref().try_into().unwrap();
            let der = ecdsa_raw_to_der(&raw);
            pk.verify(&msg, &der).unwrap();
        }
        // Leading zeros and high bits.
        let mut raw = [0u8; 64];
        raw[31] = 1;
        raw[32] = 0x80;
        assert_eq!(
            ecdsa_raw_to_der(&raw)[..7],
            [0x30, 0x26, 0x02, 0x01, 0x01, 0x02, 0x21]
        );
    }

    #[test]
    fn ec_points_decode() {
        let mut ed = vec![0x04, 0x20];
        ed.extend_from_slice(&[7u8; 32]);
        assert_eq!(decode_ec_point(KeyKind::Ed25519, &ed).unwrap(), [7u8; 32]);
        assert_eq!(
            decode_ec_point(KeyKind::Ed25519, &[7u8; 32]).unwrap(),
            [7u8; 32]
        );
        assert!(decode_ec_point(KeyKind::Ed25519, &[7u8; 33]).is_err());
        let mut p = vec![0x04, 0x41, 0x04];
        p.extend_from_slice(&[9u8; 64]);
        assert_eq!(decode_ec_point(KeyKind::EcdsaP256, &p).unwrap().len(), 65);
        assert_eq!(
            decode_ec_point(KeyKind::EcdsaP256, &p[2..]).unwrap().len(),
            65
        );
        assert!(decode_ec_point(KeyKind::EcdsaP256, &p[3..]).is_err());
    }

    #[test]
    fn purposes_and_ids() {
        for p in Purpose::ALL {
            assert_eq!(Purpose::from_byte(p.byte()), Some(p));
            assert_eq!(Purpose::parse(p.name()), Some(p));
        }
        assert_eq!(Purpose::Kek.id(2), [4, 2]);
        assert!(check_curve(KeyKind::Ed25519, Some(ED25519_PARAMS_NAME)).is_ok());
        assert!(check_curve(KeyKind::Ed25519, Some(P256_PARAMS)).is_err());
    }
}
