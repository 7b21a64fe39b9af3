//! Signed checkpoints (CONTRACT.md §6.5): a C2SP `tlog-checkpoint` v1.0.0 body (origin, tree
//! size, base64 root) in a C2SP `signed-note` v1.0.0, signed with Ed25519 by the checkpoint
//! key of the key store (key name = origin). Witnesses append C2SP `tlog-cosignature` v1.0.1
//! lines (type `0x04`: timestamp ‖ Ed25519 over `cosignature/v1\ntime T\n` ‖ body).
//!
//! Parsing and verifying notes uses the `signed_note` crate (a port of Go's
//! `golang.org/x/mod/sumdb/note`); signing goes through [`RecordSigner`], so the private key
//! stays in the key store.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use signed_note::{Note, Signature, Verifier, VerifierList};
use vvgate_hsm::{HsmError, RecordSigner};
use vvgate_storage::tree::Hash;

/// Signature type byte of an Ed25519 note signature.
pub const ALG_ED25519: u8 = 0x01;
/// Signature type byte of a timestamped Ed25519 cosignature (tlog-cosignature).
pub const ALG_COSIGNATURE: u8 = 0x04;

/// The largest note accepted (body plus signatures).
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

/// Why a checkpoint is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Not a signed note, or not a checkpoint body.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The origin line is not the expected one.
    #[error("checkpoint origin {found:?} is not {expected:?}")]
    Origin { expected: String, found: String },
    /// No signature by a known key.
    #[error("no signature by the checkpoint key")]
    Unsigned,
    /// A signature by a known key does not verify.
    #[error("signature by {0} does not verify")]
    BadSignature(String),
}

/// A checkpoint body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The body text: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parse a body (as Go `transparency-dev/formats` does: three lines at least, canonical
    /// decimal size, 32-byte standard base64 root; further lines are extensions).
    pub fn parse(text: &[u8]) -> Result<Self, CheckpointError> {
        let text =
            std::str::from_utf8(text).map_err(|_| CheckpointError::Malformed("not UTF-8"))?;
        let mut lines = text.split_inclusive('\n');
        let mut line = |what| {
            lines
                .next()
                .and_then(|l| l.strip_suffix('\n'))
                .ok_or(CheckpointError::Malformed(what))
        };
        let origin = line("missing origin line")?;
        let size = line("missing size line")?;
        let root = line("missing root line")?;
        if origin.is_empty() {
            return Err(CheckpointError::Malformed("empty origin"));
        }
        let canonical = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size =
            size.parse::<u64>()
                .ok()
                .filter(|_| canonical)
                .ok_or(CheckpointError::Malformed(
                    "tree size is not a canonical decimal",
                ))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(CheckpointError::Malformed("root is not 32 bytes of base64"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// Key ID of a note key: `SHA-256(name ‖ "\n" ‖ type ‖ key)[..4]`, big-endian.
pub fn key_id(name: &str, alg: u8, key: &[u8; 32]) -> u32 {
    let mut typed = [0u8; 33];
    typed[0] = alg;
    typed[1..].copy_from_slice(key);
    signed_note::key_id(name, &typed)
}

/// A verifier key string: `name+hex(key id)+base64(type ‖ key)`.
pub fn vkey(name: &str, alg: u8, key: &[u8; 32]) -> String {
    let mut typed = [0u8; 33];
    typed[0] = alg;
    typed[1..].copy_from_slice(key);
    format!(
        "{name}+{:08x}+{}",
        key_id(name, alg, key),
        B64.encode(typed)
    )
}

struct NoteSigner<'a> {
    name: &'a str,
    id: u32,
    signer: &'a dyn RecordSigner,
    error: std::cell::RefCell<Option<HsmError>>,
}

impl signed_note::Signer for NoteSigner<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        match self.signer.sign(msg) {
            Ok(sig) => Ok(sig.to_vec()),
            Err(e) => {
                *self.error.borrow_mut() = Some(e);
                Err(signature::Error::new())
            }
        }
    }
}

/// Sign a checkpoint: the whole signed note, ready to store and publish.
pub fn sign(cp: &Checkpoint, signer: &dyn RecordSigner) -> Result<Vec<u8>, HsmError> {
    sign_text(&cp.origin, cp.body().as_bytes(), signer)
}

/// Sign `text` (UTF-8, ending in a newline) as a note with key name `name`.
pub fn sign_text(name: &str, text: &[u8], signer: &dyn RecordSigner) -> Result<Vec<u8>, HsmError> {
    let s = NoteSigner {
        name,
        id: key_id(name, ALG_ED25519, &signer.public_key()),
        signer,
        error: std::cell::RefCell::new(None),
    };
    let failed = |detail: String| HsmError::Operation {
        key: "audit.checkpoint_key".into(),
        detail,
    };
    let mut note = Note::new(text, &[]).map_err(|e| failed(e.to_string()))?;
    if let Err(e) = note.add_sigs(&[&s]) {
        return Err(s
            .error
            .into_inner()
            .unwrap_or_else(|| failed(e.to_string())));
    }
    Ok(note.to_bytes())
}

/// A witness key for cosignatures (type `0x04`).
struct CosignatureVerifier {
    name: String,
    id: u32,
    key: [u8; 32],
}

impl Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Some((ts, sig)) = sig.split_first_chunk::<8>() else {
            return false;
        };
        let mut signed = format!("cosignature/v1\ntime {}\n", u64::from_be_bytes(*ts)).into_bytes();
        signed.extend_from_slice(msg);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.key)
            .verify(&signed, sig)
            .is_ok()
    }
}

/// An Ed25519 note key (type `0x01`), verified with ring.
struct Ed25519Verifier {
    name: String,
    id: u32,
    key: [u8; 32],
}

impl Verifier for Ed25519Verifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.key)
            .verify(msg, sig)
            .is_ok()
    }
}

/// A parsed verifier key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub alg: u8,
    pub key: [u8; 32],
}

impl VerifierKey {
    /// Parse `name+hex id+base64(type ‖ key)`; types `0x01` and `0x04` are understood.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid verifier key {s:?}: {why}");
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+keyid+key"));
        };
        if !signed_note::is_key_name_valid(name) {
            return Err(bad("the name is empty or contains spaces or '+'"));
        }
        if id.len() != 8 {
            return Err(bad("the key id is not 8 hex digits"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| bad("the key id is not hex"))?;
        let typed = B64.decode(b64).map_err(|_| bad("the key is not base64"))?;
        let (&alg, key) = typed.split_first().ok_or_else(|| bad("empty key"))?;
        if alg != ALG_ED25519 && alg != ALG_COSIGNATURE {
            return Err(bad(
                "unknown key type (0x01 Ed25519 and 0x04 cosignature are understood)",
            ));
        }
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
        if key_id(name, alg, &key) != id {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(Self {
            name: name.to_owned(),
            alg,
            key,
        })
    }

    /// The key ID.
    pub fn id(&self) -> u32 {
        key_id(&self.name, self.alg, &self.key)
    }

    fn verifier(&self) -> Box<dyn Verifier> {
        let (name, id, key) = (self.name.clone(), self.id(), self.key);
        match self.alg {
            ALG_COSIGNATURE => Box::new(CosignatureVerifier { name, id, key }),
            _ => Box::new(Ed25519Verifier { name, id, key }),
        }
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&vkey(&self.name, self.alg, &self.key))
    }
}

/// The keys a checkpoint is checked with.
pub struct Keys {
    log: VerifierList,
    witnesses: VerifierList,
}

impl Keys {
    /// `log`: the checkpoint key(s) (several during a rotation); `witnesses`: cosigners.
    pub fn new(log: &[VerifierKey], witnesses: &[VerifierKey]) -> Self {
        Self {
            log: VerifierList::new(log.iter().map(VerifierKey::verifier).collect()),
            witnesses: VerifierList::new(witnesses.iter().map(VerifierKey::verifier).collect()),
        }
    }
}

/// A checkpoint whose log signature verified.
#[derive(Debug)]
pub struct Opened {
    pub checkpoint: Checkpoint,
    /// Witness cosignatures that verified.
    pub cosignatures: Vec<Signature>,
}

fn note_error(e: signed_note::NoteError) -> CheckpointError {
    match e {
        signed_note::NoteError::InvalidSignature { name, id } => {
            CheckpointError::BadSignature(format!("{name}+{id:08x}"))
        }
        signed_note::NoteError::UnverifiedNote => CheckpointError::Unsigned,
        _ => CheckpointError::Malformed("not a signed note"),
    }
}

/// Parse and verify a checkpoint note: at least one log key must verify, no known key may
/// fail, and the origin must be `origin` when given. Witness cosignatures are checked too.
pub fn open(note: &[u8], origin: Option<&str>, keys: &Keys) -> Result<Opened, CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::Malformed("note too large"));
    }
    let n = Note::from_bytes(note).map_err(note_error)?;
    let checkpoint = Checkpoint::parse(n.text())?;
    if let Some(expected) = origin {
        if checkpoint.origin != expected {
            return Err(CheckpointError::Origin {
                expected: expected.to_owned(),
                found: checkpoint.origin,
            });
        }
    }
    n.verify(&keys.log).map_err(note_error)?;
    let cosignatures = match n.verify(&keys.witnesses) {
        Ok((verified, _)) => verified,
        Err(signed_note::NoteError::UnverifiedNote) => Vec::new(),
        Err(e) => return Err(note_error(e)),
    };
    Ok(Opened {
        checkpoint,
        cosignatures,
    })
}

/// Append to `stored` the cosignatures of `received` (the same checkpoint, cosigned) by
/// configured witnesses that `stored` does not carry yet. Returns the new note and how many
/// were added.
pub fn merge_cosignatures(
    stored: &[u8],
    received: &[u8],
    keys: &Keys,
) -> Result<(Vec<u8>, usize), CheckpointError> {
    let theirs = Note::from_bytes(received).map_err(note_error)?;
    let ours = Note::from_bytes(stored).map_err(note_error)?;
    if theirs.text() != ours.text() {
        return Err(CheckpointError::Malformed(
            "the cosigned note is not this checkpoint",
        ));
    }
    let (verified, _) = theirs.verify(&keys.witnesses).map_err(note_error)?;
    let mut out = stored.to_vec();
    let mut added = 0;
    for sig in verified {
        let line = sig.to_bytes();
        if !contains(&out, &line) && out.len() + line.len() <= MAX_NOTE_BYTES {
            out.extend_from_slice(&line);
            added += 1;
        }
    }
    Ok((out, added))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests;
