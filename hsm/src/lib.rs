//! vvgate-hsm: the keys the gateway holds, behind one small trait.
//!
//! The gateway needs four kinds of key (DESIGN.md "Keys and ceremonies"): the TLS server key,
//! an Ed25519 key that signs audit checkpoints, an Ed25519 key that signs feedback responses,
//! and an AES-256 key-encryption key for evidence. [`KeyStore`] hands out each as a narrow
//! capability ([`rustls::sign::SigningKey`], [`RecordSigner`], [`Kek`]); the private material
//! never leaves the backend.
//!
//! Backends: [`file::FileKeyStore`] (development only: PEM and raw key files in a private
//! directory; refused when `mode = "production"`) and [`pkcs11::Pkcs11KeyStore`] (a token
//! behind a PKCS#11 module). Keys are named by a [`KeyRef`] such as
//! `file:/var/lib/vvgate/dev/checkpoint.pem` or `pkcs11:0201`.
//!
//! [`ceremony`] holds the operator ceremonies for PKCS#11 tokens (initialise, generate,
//! list, rotate, retire, CSR) under dual control.

#![warn(missing_docs)]

pub mod ceremony;
pub mod file;
pub mod pkcs11;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use zeroize::Zeroizing;

/// What went wrong with a key.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// A key reference that is neither `file:<path>`, a path, nor `pkcs11:<hex id>`.
    #[error("invalid key reference {0:?}: expected file:<path> or pkcs11:<hex CKA_ID>")]
    BadReference(String),
    /// The backend does not serve this kind of reference.
    #[error("key {key} is not served by the {backend} key store")]
    WrongBackend {
        /// The reference.
        key: String,
        /// The backend asked.
        backend: &'static str,
    },
    /// A key file could not be read.
    #[error("cannot read key {key}: {source}")]
    Read {
        /// The reference.
        key: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file is readable by other users.
    #[error("key file {key} is readable by group or others (mode {mode:o}); chmod 600 it")]
    Permissions {
        /// The reference.
        key: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The key material is not a key of the expected kind.
    #[error("key {key} is not a valid {expected}: {detail}")]
    Invalid {
        /// The reference.
        key: String,
        /// What it should have been.
        expected: &'static str,
        /// Why it is not.
        detail: String,
    },
    /// A signature or seal operation failed.
    #[error("key operation with {key} failed: {detail}")]
    Operation {
        /// The reference.
        key: String,
        /// What failed.
        detail: String,
    },
    /// Opening a sealed value failed: wrong key, wrong AAD or tampered data.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("PKCS#11 module {module}: {detail}")]
    Module {
        /// The module path.
        module: String,
        /// What failed.
        detail: String,
    },
    /// The configured token is absent, ambiguous or unusable.
    #[error("PKCS#11 token {token}: {detail}")]
    Token {
        /// The token selector (`label=…` or `serial=…`).
        token: String,
        /// What is wrong.
        detail: String,
    },
    /// The token refused the PIN (incorrect, locked or expired). Never retried: the daemon
    /// exits with a dedicated code so that a crash loop cannot lock the token.
    #[error("PKCS#11 token {token} refused the user PIN: {reason}; not retrying")]
    PinRejected {
        /// The token selector.
        token: String,
        /// `PIN incorrect`, `PIN locked` or `PIN expired`.
        reason: &'static str,
    },
    /// No key object carries this reference's `CKA_ID` (or several do).
    #[error("key {key} not found: {detail}")]
    Missing {
        /// The reference.
        key: String,
        /// What was looked for.
        detail: String,
    },
    /// A key exists but one of its attributes makes it unfit (extractable, not sensitive,
    /// wrong type or curve, mechanisms not restricted).
    #[error("key {key} refused: attribute {attribute} {detail}")]
    WeakKey {
        /// The reference.
        key: String,
        /// The PKCS#11 attribute that failed the check (e.g. `CKA_EXTRACTABLE`).
        attribute: &'static str,
        /// What was found and what was required.
        detail: String,
    },
    /// The key store cannot serve requests now (session lost and not re-established, store
    /// closed). The daemon reports not-ready; a later request tries once more.
    #[error("key store not ready: {0}")]
    NotReady(String),
    /// A ceremony step was refused or its input is malformed (a bad PIN share, retiring the
    /// only version of a key, a `CKA_ID` that already exists).
    #[error("ceremony refused: {0}")]
    Ceremony(String),
}

/// A reference to a key in a key store (CONTRACT.md §10: `file:<path>`, bare path, or
/// `pkcs11:<hex CKA_ID>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// A file, for the development key store.
    File(PathBuf),
    /// A PKCS#11 object found by `CKA_ID`.
    Pkcs11 {
        /// The `CKA_ID` bytes.
        id: Vec<u8>,
    },
}

impl KeyRef {
    /// Parse a reference.
    pub fn parse(s: &str) -> Result<Self, HsmError> {
        if let Some(hex) = s.strip_prefix("pkcs11:") {
            if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 128 {
                return Err(HsmError::BadReference(s.to_owned()));
            }
            let mut id = Vec::with_capacity(hex.len() / 2);
            for pair in hex.as_bytes().chunks_exact(2) {
                let txt =
                    std::str::from_utf8(pair).map_err(|_| HsmError::BadReference(s.into()))?;
                id.push(u8::from_str_radix(txt, 16).map_err(|_| HsmError::BadReference(s.into()))?);
            }
            return Ok(KeyRef::Pkcs11 { id });
        }
        let path = s.strip_prefix("file:").unwrap_or(s);
        if path.is_empty() || path.contains('\0') {
            return Err(HsmError::BadReference(s.to_owned()));
        }
        Ok(KeyRef::File(PathBuf::from(path)))
    }

    /// Whether this names a file.
    pub fn is_file(&self) -> bool {
        matches!(self, KeyRef::File(_))
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::File(p) => write!(f, "file:{}", p.display()),
            KeyRef::Pkcs11 { id } => {
                f.write_str("pkcs11:")?;
                for b in id {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// An Ed25519 key that signs records (audit checkpoints, feedback responses).
pub trait RecordSigner: Send + Sync {
    /// The raw 32-byte public key.
    fn public_key(&self) -> [u8; 32];
    /// A pure Ed25519 signature over `msg`.
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], HsmError>;
}

/// A data key sealed by a key-encryption key: AES-256-GCM, 12-byte IV, ciphertext ‖ tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedDek {
    /// The IV used (returned by the backend: some HSMs choose it themselves).
    pub iv: [u8; 12],
    /// 32-byte ciphertext followed by the 16-byte tag.
    pub ct: [u8; 48],
}

/// An AES-256 key-encryption key.
pub trait Kek: Send + Sync {
    /// Seal a 32-byte data key under this KEK with `aad`.
    fn seal_dek(&self, dek: &[u8; 32], aad: &[u8]) -> Result<SealedDek, HsmError>;
    /// Open a sealed data key; any mismatch is [`HsmError::AuthenticationFailed`].
    fn open_dek(&self, sealed: &SealedDek, aad: &[u8]) -> Result<Zeroizing<[u8; 32]>, HsmError>;
}

/// A key store: the gateway's only way to use private keys.
pub trait KeyStore: Send + Sync {
    /// Backend name for messages (`file`, `pkcs11`).
    fn backend(&self) -> &'static str;
    /// The TLS server key, as rustls uses it.
    fn tls_key(&self, key: &KeyRef) -> Result<Arc<dyn rustls::sign::SigningKey>, HsmError>;
    /// An Ed25519 record signer.
    fn record_signer(&self, key: &KeyRef) -> Result<Arc<dyn RecordSigner>, HsmError>;
    /// An AES-256 key-encryption key.
    fn kek(&self, key: &KeyRef) -> Result<Arc<dyn Kek>, HsmError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_references() {
        assert_eq!(
            KeyRef::parse("pkcs11:0201").unwrap(),
            KeyRef::Pkcs11 { id: vec![2, 1] }
        );
        assert_eq!(
            KeyRef::parse("file:/k.pem").unwrap(),
            KeyRef::File("/k.pem".into())
        );
        assert_eq!(
            KeyRef::parse("/k.pem").unwrap(),
            KeyRef::File("/k.pem".into())
        );
        for bad in ["pkcs11:", "pkcs11:0", "pkcs11:zz", "file:", ""] {
            assert!(KeyRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            KeyRef::parse("pkcs11:0A1b").unwrap().to_string(),
            "pkcs11:0a1b"
        );
    }
}
