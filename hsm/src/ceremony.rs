//! Key ceremonies for a PKCS#11 token, under dual control: the library behind `vvctl keys`.
//!
//! The token's user PIN is never held by one person. At [`init_token`] it is split with
//! [`split_pin`] into two text shares, one per officer (e.g. Security and Platform); a
//! [`Ceremony`] session opens only with both ([`Ceremony::open`] combines them). The daemon
//! gets the combined PIN through its credential file ([`write_pin_file`]), nothing else.
//!
//! Every ceremony returns a [`Transcript`] (who, what, token, purpose, key ids, public keys,
//! time) for the caller to append to the audit log and sign with the checkpoint key.
//!
//! Keys are named by `CKA_ID = purpose byte ‖ version` ([`Purpose`]); [`Ceremony::rotate`]
//! generates the next version beside the current one, [`Ceremony::retire`] destroys an old
//! version (never the only one). Generation templates are strict: token, private, sensitive,
//! never extractable, every usage flag explicit, `CKA_ALLOWED_MECHANISMS` = the one mechanism,
//! and the new key is checked with the same gate the daemon applies at start.
//!
//! PKCS#11 here runs on the caller's thread (a short-lived CLI process); do not open a
//! [`Ceremony`] in a process that also has a [`crate::pkcs11::Pkcs11KeyStore`] open.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use data_encoding::{BASE32_NOPAD, BASE64, HEXLOWER};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::ExposeSecret;
use zeroize::{Zeroize, Zeroizing};

use crate::pkcs11::objects::{
    self, audit_secret, hex, kek_template, kind_of, pair_templates, read_attr, read_public,
    resolve, AttributeFailure, FindError, ED25519_PARAMS_NAME, ED25519_PARAMS_OID, P256_PARAMS,
};
use crate::pkcs11::token::{self, find_slot, map_error, pin_from_str, Op};
use crate::pkcs11::{KeyKind, Purpose, TokenSelector};
use crate::{HsmError, KeyRef};

// ---------------------------------------------------------------------------------------
// Officers and transcripts

/// The two officers present at a ceremony (names as the caller identified them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Officers {
    /// The officer holding share A (e.g. Security).
    pub a: String,
    /// The officer holding share B (e.g. Platform).
    pub b: String,
}

impl Officers {
    /// Two officers; both names non-empty and different (dual control needs two people).
    pub fn new(a: impl Into<String>, b: impl Into<String>) -> Result<Self, HsmError> {
        let (a, b) = (a.into(), b.into());
        if a.trim().is_empty() || b.trim().is_empty() {
            return Err(HsmError::Ceremony("both officers must be named".into()));
        }
        if a.trim() == b.trim() {
            return Err(HsmError::Ceremony(
                "dual control needs two different officers".into(),
            ));
        }
        Ok(Officers { a, b })
    }
}

/// A key as recorded in a transcript.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TranscriptKey {
    /// `pkcs11:<hex CKA_ID>`, the reference the daemon's configuration uses.
    pub key_ref: String,
    /// `CKA_ID` in hex.
    pub id: String,
    /// `CKA_LABEL`.
    pub label: String,
    /// The key kind (`ECDSA P-256`, `Ed25519`, `AES-256-GCM`).
    pub kind: String,
    /// What happened to it in this ceremony: `generated`, `retired`, `kept`, `certified`.
    pub status: String,
    /// The public key in hex (65-byte point or 32 bytes); empty for a KEK.
    pub public_key_hex: String,
    /// The same in base64.
    pub public_key_b64: String,
}

/// What a ceremony did, for the audit log (the caller appends and signs it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Transcript {
    /// `init-token`, `generate`, `rotate`, `retire` or `csr`.
    pub ceremony: String,
    /// The two officers, share A then share B.
    pub officers: [String; 2],
    /// The token: `label=… serial=…`.
    pub token: String,
    /// The purpose of the keys concerned, if any.
    pub purpose: Option<Purpose>,
    /// The keys concerned.
    pub keys: Vec<TranscriptKey>,
    /// Free text: CSR subject, token facts.
    pub detail: String,
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
    /// The same as RFC 3339 UTC.
    pub time: String,
}

impl Transcript {
    fn new(ceremony: &str, officers: &Officers, token: String, purpose: Option<Purpose>) -> Self {
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Transcript {
            ceremony: ceremony.into(),
            officers: [officers.a.clone(), officers.b.clone()],
            token,
            purpose,
            keys: Vec::new(),
            detail: String::new(),
            unix_time,
            time: rfc3339(unix_time),
        }
    }

    /// One JSON object on one line (the audit log's entry body).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn transcript_key(
    id: &[u8],
    label: &str,
    kind: KeyKind,
    public: &[u8],
    status: &str,
) -> TranscriptKey {
    TranscriptKey {
        key_ref: KeyRef::Pkcs11 { id: id.to_vec() }.to_string(),
        id: hex(id),
        label: label.into(),
        kind: kind.name().into(),
        status: status.into(),
        public_key_hex: hex(public),
        public_key_b64: BASE64.encode(public),
    }
}

// ---------------------------------------------------------------------------------------
// PIN shares

const SHARE_PREFIX: &str = "vvgate-pin-share-v1";
const SHARE_LEN: usize = 65;
/// The longest PIN [`split_pin`] accepts, in bytes.
pub const MAX_PIN_LEN: usize = SHARE_LEN - 1;

/// One officer's share of the user PIN, as text they can store (password manager, paper):
/// `vvgate-pin-share-v1-<A|B>-<set id>-<base32>-<check>`. A share alone says nothing about
/// the PIN, not even its length. Zeroized on drop; `Debug` does not print it.
pub struct PinShare {
    index: u8,
    set: [u8; 4],
    data: Zeroizing<[u8; SHARE_LEN]>,
    text: Zeroizing<String>,
}

impl fmt::Debug for PinShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PinShare({}, set {}, redacted)",
            char::from(self.index),
            HEXLOWER.encode(&self.set)
        )
    }
}

fn share_check(index: u8, set: &[u8; 4], data: &[u8]) -> [u8; 4] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(SHARE_PREFIX.as_bytes());
    ctx.update(&[index]);
    ctx.update(set);
    ctx.update(data);
    let d = ctx.finish();
    let mut out = [0u8; 4];
    out.copy_from_slice(&d.as_ref()[..4]);
    out
}

impl PinShare {
    fn new(index: u8, set: [u8; 4], data: Zeroizing<[u8; SHARE_LEN]>) -> Self {
        let mut body = Zeroizing::new(BASE32_NOPAD.encode(&data[..]));
        let text = Zeroizing::new(format!(
            "{SHARE_PREFIX}-{}-{}-{}-{}",
            char::from(index),
            HEXLOWER.encode(&set),
            body.as_str(),
            HEXLOWER.encode(&share_check(index, &set, &data[..]))
        ));
        body.zeroize();
        PinShare {
            index,
            set,
            data,
            text,
        }
    }

    /// Parse a share's text (surrounding whitespace ignored; checked for typos).
    pub fn parse(text: &str) -> Result<Self, HsmError> {
        let bad = |why: &str| HsmError::Ceremony(format!("not a valid PIN share: {why}"));
        let t = text.trim();
        let rest = t
            .strip_prefix(SHARE_PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .ok_or_else(|| bad("unknown prefix"))?;
        let parts: Vec<&str> = rest.split('-').collect();
        let [idx, set, body, check] = parts.as_slice() else {
            return Err(bad("wrong number of fields"));
        };
        let index = match *idx {
            "A" | "a" => b'A',
            "B" | "b" => b'B',
            _ => return Err(bad("share index must be A or B")),
        };
        let set: [u8; 4] = HEXLOWER
            .decode(set.to_ascii_lowercase().as_bytes())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("bad set id"))?;
        let decoded = Zeroizing::new(
            BASE32_NOPAD
                .decode(body.to_ascii_uppercase().as_bytes())
                .map_err(|_| bad("bad share data"))?,
        );
        if decoded.len() != SHARE_LEN {
            return Err(bad("share data has the wrong length"));
        }
        let mut data = Zeroizing::new([0u8; SHARE_LEN]);
        data.copy_from_slice(&decoded);
        let check: [u8; 4] = HEXLOWER
            .decode(check.to_ascii_lowercase().as_bytes())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("bad check value"))?;
        if check != share_check(index, &set, &data[..]) {
            return Err(bad("check value does not match (typo?)"));
        }
        Ok(PinShare::new(index, set, data))
    }

    /// The text to hand to the officer.
    pub fn as_text(&self) -> &str {
        &self.text
    }

    /// `A` or `B`.
    pub fn index(&self) -> char {
        char::from(self.index)
    }
}

/// Split `pin` into two shares (2-of-2): share A is random, share B is the padded PIN XOR
/// share A. Both are needed to recover it; either alone is uniformly random.
pub fn split_pin(pin: &str) -> Result<(PinShare, PinShare), HsmError> {
    let bytes = pin.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PIN_LEN {
        return Err(HsmError::Ceremony(format!(
            "a PIN must be 1 to {MAX_PIN_LEN} bytes"
        )));
    }
    let rng = SystemRandom::new();
    let no_rng = |_| HsmError::Ceremony("no randomness".into());
    let mut set = [0u8; 4];
    rng.fill(&mut set).map_err(no_rng)?;
    let mut padded = Zeroizing::new([0u8; SHARE_LEN]);
    rng.fill(&mut padded[..]).map_err(no_rng)?;
    padded[0] = u8::try_from(bytes.len()).unwrap_or(0);
    padded[1..=bytes.len()].copy_from_slice(bytes);
    let mut a = Zeroizing::new([0u8; SHARE_LEN]);
    rng.fill(&mut a[..]).map_err(no_rng)?;
    let mut b = Zeroizing::new([0u8; SHARE_LEN]);
    for i in 0..SHARE_LEN {
        b[i] = padded[i] ^ a[i];
    }
    Ok((PinShare::new(b'A', set, a), PinShare::new(b'B', set, b)))
}

/// Recover the PIN from share A and share B of the same split (in either order).
pub fn combine(a: &PinShare, b: &PinShare) -> Result<AuthPin, HsmError> {
    if a.index == b.index {
        return Err(HsmError::Ceremony(
            "both shares are the same half: one A and one B are needed".into(),
        ));
    }
    if a.set != b.set {
        return Err(HsmError::Ceremony(
            "the shares come from different PIN splits".into(),
        ));
    }
    let mut padded = Zeroizing::new([0u8; SHARE_LEN]);
    for i in 0..SHARE_LEN {
        padded[i] = a.data[i] ^ b.data[i];
    }
    let len = usize::from(padded[0]);
    if len == 0 || len > MAX_PIN_LEN {
        return Err(HsmError::Ceremony(
            "the shares do not combine to a PIN".into(),
        ));
    }
    let pin = std::str::from_utf8(&padded[1..=len])
        .map_err(|_| HsmError::Ceremony("the shares do not combine to a PIN".into()))?;
    Ok(pin_from_str(pin))
}

/// A fresh random user PIN (24 base32 characters, 120 bits), to split at [`init_token`].
pub fn random_pin() -> Result<Zeroizing<String>, HsmError> {
    let mut raw = Zeroizing::new([0u8; 15]);
    SystemRandom::new()
        .fill(&mut raw[..])
        .map_err(|_| HsmError::Ceremony("no randomness".into()))?;
    Ok(Zeroizing::new(BASE32_NOPAD.encode(&raw[..])))
}

/// Write `pin` as the daemon's credential file (mode 0600, no newline).
pub fn write_pin_file(path: &Path, pin: &AuthPin) -> std::io::Result<()> {
    crate::file::write_private(path, pin.expose_secret().as_bytes())
}

// ---------------------------------------------------------------------------------------
// Token initialisation

/// Initialise the free (uninitialised) token slot of `module` with `label`, set the SO PIN
/// and the user PIN, and check that the user PIN logs in. Refused when a token with this
/// label already exists (labels select tokens, so they must be unique).
///
/// On SoftHSM this consumes the free slot and creates a new one; the slot number changes,
/// so the token is always found again by label or serial.
pub fn init_token(
    module: &Path,
    label: &str,
    so_pin: &AuthPin,
    user_pin: &AuthPin,
    officers: &Officers,
) -> Result<Transcript, HsmError> {
    if label.is_empty() || label.len() > 32 {
        return Err(HsmError::Ceremony("a token label is 1 to 32 bytes".into()));
    }
    let ctx = Module::load(module)?;
    let sel = TokenSelector::Label(label.to_owned());
    if find_slot(&ctx.0, &sel).is_ok() {
        return Err(HsmError::Ceremony(format!(
            "a token labelled {label:?} already exists; refusing to initialise another"
        )));
    }
    let tok_err = |detail: String| HsmError::Token {
        token: sel.to_string(),
        detail,
    };
    let slots = ctx
        .0
        .get_slots_with_token()
        .map_err(|e| tok_err(format!("cannot list slots: {e}")))?;
    let free = slots
        .into_iter()
        .find(|s| {
            ctx.0
                .get_token_info(*s)
                .is_ok_and(|i| !i.token_initialized())
        })
        .ok_or_else(|| tok_err("no slot holds an uninitialised token".into()))?;
    ctx.0
        .init_token(free, so_pin, label)
        .map_err(|e| tok_err(format!("C_InitToken failed: {e}")))?;
    {
        let session = ctx
            .0
            .open_rw_session(free)
            .map_err(|e| tok_err(format!("cannot open a session: {e}")))?;
        token::login(&ctx.0, free, &session, UserType::So, so_pin, &sel)?;
        session
            .init_pin(user_pin)
            .map_err(|e| tok_err(format!("C_InitPIN failed: {e}")))?;
        let _ = session.logout();
        token::login(&ctx.0, free, &session, UserType::User, user_pin, &sel)?;
        let _ = session.logout();
    }
    let info = ctx
        .0
        .get_token_info(free)
        .map_err(|e| tok_err(format!("cannot read token info: {e}")))?;
    let mut t = Transcript::new(
        "init-token",
        officers,
        format!(
            "label={} serial={}",
            info.label().trim_end(),
            info.serial_number().trim_end()
        ),
        None,
    );
    t.detail = format!(
        "token initialised: manufacturer {}, model {}",
        info.manufacturer_id().trim_end(),
        info.model().trim_end()
    );
    Ok(t)
}

/// An initialised module, finalised on drop.
struct Module(Pkcs11);

impl Module {
    fn load(module: &Path) -> Result<Self, HsmError> {
        token::load_module(module).map(Module)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        let _ = self.0.clone().finalize();
    }
}

// ---------------------------------------------------------------------------------------
// Ceremony sessions

/// A key as [`Ceremony::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// `pkcs11:<hex CKA_ID>`.
    pub key_ref: String,
    /// `CKA_ID` in hex.
    pub id: String,
    /// `CKA_LABEL`.
    pub label: String,
    /// The purpose from the first `CKA_ID` byte, if the id follows the convention.
    pub purpose: Option<Purpose>,
    /// The version from the second `CKA_ID` byte, if the id follows the convention.
    pub version: Option<u8>,
    /// The key kind, if known.
    pub kind: Option<String>,
    /// The public key in hex (empty for a KEK or when unreadable).
    pub public_key_hex: String,
    /// The same in base64.
    pub public_key_b64: String,
    /// Why the daemon would refuse this key; empty when it would accept it.
    pub failures: Vec<AttributeFailure>,
}

impl KeyInfo {
    /// Whether the daemon would accept the key.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What to put in a certificate signing request.
#[derive(Clone, Debug, Default)]
pub struct CsrRequest {
    /// The subject common name.
    pub common_name: String,
    /// DNS names and IP addresses for the subjectAltName extension.
    pub subject_alt_names: Vec<String>,
}

/// A CSR made through the token, and its transcript.
#[derive(Clone, Debug)]
pub struct CsrOutput {
    /// The PKCS#10 request, PEM.
    pub pem: String,
    /// The transcript to audit.
    pub transcript: Transcript,
}

/// A read-write user session on the token, opened only with both officers' PIN shares.
/// Closed (session closed, module finalised) on drop.
pub struct Ceremony {
    session: Option<Session>,
    module: Option<Module>,
    token: TokenSelector,
    token_desc: String,
    officers: Officers,
}

impl fmt::Debug for Ceremony {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ceremony")
            .field("token", &self.token_desc)
            .field("officers", &self.officers)
            .finish_non_exhaustive()
    }
}

impl Drop for Ceremony {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.logout();
            drop(s);
        }
        self.module.take();
    }
}

impl Ceremony {
    /// Unlock the token with both officers' shares: combine them, open a read-write session
    /// and log the user in (once; a refused PIN is [`HsmError::PinRejected`]).
    pub fn open(
        module: &Path,
        token: &TokenSelector,
        officers: Officers,
        share_a: &PinShare,
        share_b: &PinShare,
    ) -> Result<Self, HsmError> {
        let pin = combine(share_a, share_b)?;
        let m = Module::load(module)?;
        let slot = find_slot(&m.0, token)?;
        let session = m.0.open_rw_session(slot).map_err(|e| HsmError::Token {
            token: token.to_string(),
            detail: format!("cannot open a read-write session: {e}"),
        })?;
        token::login(&m.0, slot, &session, UserType::User, &pin, token)?;
        drop(pin);
        let token_desc =
            m.0.get_token_info(slot)
                .map(|i| {
                    format!(
                        "label={} serial={}",
                        i.label().trim_end(),
                        i.serial_number().trim_end()
                    )
                })
                .unwrap_or_else(|_| token.to_string());
        Ok(Ceremony {
            session: Some(session),
            module: Some(m),
            token: token.clone(),
            token_desc,
            officers,
        })
    }

    /// The token as `label=… serial=…`.
    pub fn token(&self) -> &str {
        &self.token_desc
    }

    /// Close the session and finalise the module.
    pub fn close(self) {
        drop(self);
    }

    fn session(&self) -> Result<&Session, HsmError> {
        self.session
            .as_ref()
            .ok_or_else(|| HsmError::NotReady("ceremony session closed".into()))
    }

    fn ck(&self, key: &str) -> impl Fn(CkError) -> HsmError + '_ {
        let key = key.to_owned();
        move |e| map_error(e, Op::Key, &key, &self.token)
    }

    fn find_err(&self, key: &str) -> impl Fn(FindError) -> HsmError + '_ {
        let key = key.to_owned();
        move |e| match e {
            FindError::Hsm(h) => h,
            FindError::Ck(c) => map_error(c, Op::Key, &key, &self.token),
        }
    }

    /// Generate `version` (1–255) of the key for `purpose`, `CKA_ID = purpose ‖ version`,
    /// with the strict template, then check it as the daemon will. Refused if any object
    /// already carries that `CKA_ID`.
    pub fn generate(
        &self,
        purpose: Purpose,
        version: u8,
        label: &str,
    ) -> Result<Transcript, HsmError> {
        let key = self.create(purpose, version, label)?;
        let mut t = Transcript::new(
            "generate",
            &self.officers,
            self.token_desc.clone(),
            Some(purpose),
        );
        t.keys.push(key);
        Ok(t)
    }

    fn create(
        &self,
        purpose: Purpose,
        version: u8,
        label: &str,
    ) -> Result<TranscriptKey, HsmError> {
        if version == 0 {
            return Err(HsmError::Ceremony("key versions start at 1".into()));
        }
        let s = self.session()?;
        let id = purpose.id(version);
        let key_ref = KeyRef::Pkcs11 { id: id.clone() }.to_string();
        let existing = s
            .find_objects(&[Attribute::Id(id.clone())])
            .map_err(self.ck(&key_ref))?;
        if !existing.is_empty() {
            return Err(HsmError::Ceremony(format!(
                "CKA_ID {} already exists on the token ({key_ref}); pick the next version",
                hex(&id)
            )));
        }
        let kind = purpose.kind();
        match kind {
            KeyKind::EcdsaP256 => {
                let (public, private) = pair_templates(kind, P256_PARAMS, &id, label);
                s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .map_err(self.ck(&key_ref))?;
            }
            KeyKind::Ed25519 => {
                let (public, private) = pair_templates(kind, ED25519_PARAMS_OID, &id, label);
                match s.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private) {
                    Ok(_) => {}
                    Err(CkError::Pkcs11(
                        RvError::DomainParamsInvalid
                        | RvError::CurveNotSupported
                        | RvError::AttributeValueInvalid,
                        _,
                    )) => {
                        // Some tokens know Ed25519 only by its name (notes §4).
                        let (public, private) =
                            pair_templates(kind, ED25519_PARAMS_NAME, &id, label);
                        s.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
                            .map_err(self.ck(&key_ref))?;
                    }
                    Err(e) => return Err(self.ck(&key_ref)(e)),
                }
            }
            KeyKind::Aes256Gcm => {
                s.generate_key(&Mechanism::AesKeyGen, &kek_template(&id, label))
                    .map_err(self.ck(&key_ref))?;
            }
        }
        // The same gate as the daemon: a token that ignored part of the template is caught
        // now, and the half-made key removed.
        match resolve(s, &id, &[kind], &key_ref) {
            Ok(r) => Ok(transcript_key(&id, label, kind, &r.public, "generated")),
            Err(e) => {
                let _ = self.destroy_id(&id);
                Err(self.find_err(&key_ref)(e))
            }
        }
    }

    fn destroy_id(&self, id: &[u8]) -> Result<(), CkError> {
        let Some(s) = self.session.as_ref() else {
            return Ok(());
        };
        for h in s.find_objects(&[Attribute::Id(id.to_vec())])? {
            s.destroy_object(h)?;
        }
        Ok(())
    }

    /// Every private and secret key on the token, with its public key and the daemon's
    /// verdict on its attributes.
    pub fn list(&self) -> Result<Vec<KeyInfo>, HsmError> {
        let s = self.session()?;
        let mut out = Vec::new();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
            let handles = s
                .find_objects(&[Attribute::Class(class)])
                .map_err(self.ck("token"))?;
            for h in handles {
                out.push(self.describe(s, h)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn describe(&self, s: &Session, h: ObjectHandle) -> Result<KeyInfo, HsmError> {
        let id = match read_attr(s, h, AttributeType::Id).map_err(self.ck("token"))? {
            Some(Attribute::Id(id)) => id,
            _ => Vec::new(),
        };
        let key_ref = KeyRef::Pkcs11 { id: id.clone() }.to_string();
        let label = match read_attr(s, h, AttributeType::Label).map_err(self.ck(&key_ref))? {
            Some(Attribute::Label(l)) => String::from_utf8_lossy(&l).into_owned(),
            _ => String::new(),
        };
        let (purpose, version) = match id.as_slice() {
            [p, v] => (Purpose::from_byte(*p), Purpose::from_byte(*p).map(|_| *v)),
            _ => (None, None),
        };
        let kind = kind_of(s, h).map_err(self.ck(&key_ref))?;
        let mut failures = Vec::new();
        let mut public = Vec::new();
        match kind {
            Some(k) => {
                failures = audit_secret(s, h, k).map_err(self.ck(&key_ref))?;
                if let Some(p) = purpose {
                    if p.kind() != k {
                        failures.push(AttributeFailure {
                            attribute: "CKA_KEY_TYPE",
                            detail: format!(
                                "is {}, but CKA_ID says {} ({})",
                                k.name(),
                                p.name(),
                                p.kind().name()
                            ),
                        });
                    }
                }
                if k.has_public() {
                    match read_public(s, &id, k, &key_ref) {
                        Ok(p) => public = p,
                        Err(FindError::Hsm(e)) => failures.push(AttributeFailure {
                            attribute: "CKA_EC_POINT",
                            detail: e.to_string(),
                        }),
                        Err(FindError::Ck(e)) => return Err(self.ck(&key_ref)(e)),
                    }
                }
            }
            None => failures.push(AttributeFailure {
                attribute: "CKA_KEY_TYPE",
                detail: "is not a key type vvgate uses".into(),
            }),
        }
        if purpose.is_none() {
            failures.push(AttributeFailure {
                attribute: "CKA_ID",
                detail: format!("{} does not follow purpose ‖ version", hex(&id)),
            });
        }
        Ok(KeyInfo {
            key_ref,
            id: hex(&id),
            label,
            purpose,
            version,
            kind: kind.map(|k| k.name().to_owned()),
            public_key_hex: hex(&public),
            public_key_b64: BASE64.encode(&public),
            failures,
        })
    }

    /// The versions of `purpose` present on the token, ascending.
    pub fn versions(&self, purpose: Purpose) -> Result<Vec<u8>, HsmError> {
        let s = self.session()?;
        let mut v = Vec::new();
        for h in s
            .find_objects(&[Attribute::Class(purpose.kind().secret_class())])
            .map_err(self.ck("token"))?
        {
            if let Some(Attribute::Id(id)) =
                read_attr(s, h, AttributeType::Id).map_err(self.ck("token"))?
            {
                if let [p, ver] = id.as_slice() {
                    if *p == purpose.byte() {
                        v.push(*ver);
                    }
                }
            }
        }
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    /// Generate the next version of `purpose` (highest present + 1) beside the current
    /// ones, which stay usable until retired. Refused when there is no version yet (use
    /// [`Ceremony::generate`] with version 1) or version 255 is taken.
    pub fn rotate(&self, purpose: Purpose, label: &str) -> Result<Transcript, HsmError> {
        let versions = self.versions(purpose)?;
        let Some(&last) = versions.last() else {
            return Err(HsmError::Ceremony(format!(
                "no {} key to rotate; generate version 1 first",
                purpose.name()
            )));
        };
        let next = last.checked_add(1).ok_or_else(|| {
            HsmError::Ceremony(format!("{} has reached version 255", purpose.name()))
        })?;
        let new = self.create(purpose, next, label)?;
        let mut t = Transcript::new(
            "rotate",
            &self.officers,
            self.token_desc.clone(),
            Some(purpose),
        );
        for v in versions {
            let id = purpose.id(v);
            let key_ref = KeyRef::Pkcs11 { id: id.clone() }.to_string();
            let public = if purpose.kind().has_public() {
                read_public(self.session()?, &id, purpose.kind(), &key_ref).unwrap_or_default()
            } else {
                Vec::new()
            };
            t.keys
                .push(transcript_key(&id, "", purpose.kind(), &public, "kept"));
        }
        t.keys.push(new);
        t.detail = format!("version {next} added; older versions stay usable until retired");
        Ok(t)
    }

    /// Destroy `version` of `purpose` (private or secret key and public key). Refused when it
    /// is the only version of that purpose on the token.
    pub fn retire(&self, purpose: Purpose, version: u8) -> Result<Transcript, HsmError> {
        let versions = self.versions(purpose)?;
        let id = purpose.id(version);
        let key_ref = KeyRef::Pkcs11 { id: id.clone() }.to_string();
        if !versions.contains(&version) {
            return Err(HsmError::Missing {
                key: key_ref,
                detail: format!("no {} key version {version} on the token", purpose.name()),
            });
        }
        if versions.len() == 1 {
            return Err(HsmError::Ceremony(format!(
                "{key_ref} is the only {} key; rotate first, then retire the old version",
                purpose.name()
            )));
        }
        let s = self.session()?;
        let public = if purpose.kind().has_public() {
            read_public(s, &id, purpose.kind(), &key_ref).unwrap_or_default()
        } else {
            Vec::new()
        };
        self.destroy_id(&id).map_err(self.ck(&key_ref))?;
        let mut t = Transcript::new(
            "retire",
            &self.officers,
            self.token_desc.clone(),
            Some(purpose),
        );
        t.keys
            .push(transcript_key(&id, "", purpose.kind(), &public, "retired"));
        t.detail = format!(
            "version {version} destroyed; remaining: {}",
            versions
                .iter()
                .filter(|v| **v != version)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(t)
    }

    /// A PKCS#10 CSR for a TLS key (`tls` or `tls-ed25519`, `version`), signed inside the
    /// token through an [`rcgen::SigningKey`] adapter; the key is checked first.
    pub fn csr(
        &self,
        purpose: Purpose,
        version: u8,
        req: &CsrRequest,
    ) -> Result<CsrOutput, HsmError> {
        if !matches!(purpose, Purpose::Tls | Purpose::TlsEd25519) {
            return Err(HsmError::Ceremony(format!(
                "a CSR is for a TLS key, not {}",
                purpose.name()
            )));
        }
        let s = self.session()?;
        let id = purpose.id(version);
        let key_ref = KeyRef::Pkcs11 { id: id.clone() }.to_string();
        let r = resolve(s, &id, &[purpose.kind()], &key_ref).map_err(self.find_err(&key_ref))?;
        let key = RcgenKey {
            session: s,
            handle: r.secret,
            kind: r.kind,
            public: r.public.clone(),
        };
        let csr_err = |e: rcgen::Error| HsmError::Operation {
            key: key_ref.clone(),
            detail: format!("CSR: {e}"),
        };
        let mut params =
            rcgen::CertificateParams::new(req.subject_alt_names.clone()).map_err(csr_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if !req.common_name.is_empty() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, req.common_name.clone());
        }
        let pem = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(csr_err)?;
        let mut t = Transcript::new(
            "csr",
            &self.officers,
            self.token_desc.clone(),
            Some(purpose),
        );
        t.keys
            .push(transcript_key(&id, "", r.kind, &r.public, "certified"));
        t.detail = format!(
            "CSR CN={:?} SAN={}",
            req.common_name,
            req.subject_alt_names.join(",")
        );
        Ok(CsrOutput { pem, transcript: t })
    }
}

/// rcgen's view of a token key: the public key from `CKA_EC_POINT`, signatures from the
/// token (P-256: SHA-256 on the host, `CKM_ECDSA`, DER; Ed25519: `CKM_EDDSA`).
struct RcgenKey<'a> {
    session: &'a Session,
    handle: ObjectHandle,
    kind: KeyKind,
    public: Vec<u8>,
}

impl rcgen::PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.kind {
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            _ => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let remote = |_| rcgen::Error::RemoteKeyError;
        match self.kind {
            KeyKind::Ed25519 => self
                .session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    self.handle,
                    msg,
                )
                .map_err(remote),
            _ => {
                let digest = ring::digest::digest(&ring::digest::SHA256, msg);
                let raw = self
                    .session
                    .sign(&Mechanism::Ecdsa, self.handle, digest.as_ref())
                    .map_err(remote)?;
                let raw: [u8; 64] = raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| rcgen::Error::RemoteKeyError)?;
                Ok(objects::ecdsa_raw_to_der(&raw))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_trip_and_hide_the_pin() {
        let (a, b) = split_pin("1234").unwrap();
        assert_eq!(a.index(), 'A');
        let pin = combine(&a, &b).unwrap();
        assert_eq!(pin.expose_secret(), "1234");
        let pin = combine(&b, &a).unwrap();
        assert_eq!(pin.expose_secret(), "1234");
        // Text round trip, case-insensitive.
        let a2 = PinShare::parse(&a.as_text().to_lowercase()).unwrap();
        let b2 = PinShare::parse(&format!(" {}\n", b.as_text())).unwrap();
        assert_eq!(combine(&a2, &b2).unwrap().expose_secret(), "1234");
        // Same length whatever the PIN.
        let (long, _) = split_pin(&"x".repeat(MAX_PIN_LEN)).unwrap();
        assert_eq!(long.as_text().len(), a.as_text().len());
        assert!(!format!("{a:?}").contains(a.as_text()));
    }

    #[test]
    fn shares_refuse_mixing_and_typos() {
        let (a, b) = split_pin("secret").unwrap();
        let (a2, _) = split_pin("secret").unwrap();
        assert!(combine(&a, &a2).is_err(), "two A shares");
        let (_, b3) = split_pin("other").unwrap();
        assert!(combine(&a, &b3).is_err(), "different splits");
        let mut t = b.as_text().to_owned();
        let i = t.len() - 12;
        let c = if &t[i..=i] == "A" { "B" } else { "A" };
        t.replace_range(i..=i, c);
        assert!(PinShare::parse(&t).is_err(), "typo caught");
        assert!(PinShare::parse("hello").is_err());
        assert!(split_pin("").is_err());
        assert!(split_pin(&"x".repeat(MAX_PIN_LEN + 1)).is_err());
    }

    #[test]
    fn officers_are_two_people() {
        assert!(Officers::new("Security", "Security").is_err());
        assert!(Officers::new("", "Platform").is_err());
        assert!(Officers::new("Security", "Platform").is_ok());
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(random_pin().unwrap().len(), 24);
    }
}
