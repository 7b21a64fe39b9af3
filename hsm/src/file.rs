//! The development key store: keys in files.
//!
//! Accepted files: the TLS key as PEM (PKCS#8, SEC1 or PKCS#1); Ed25519 keys as PKCS#8 PEM or a
//! raw 32-byte seed; the KEK as 32 raw bytes. Files readable by group or others are refused.
//! Key material read from disk is zeroized after use. This backend exists so the gateway runs
//! with one command; `mode = "production"` refuses it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::{HsmError, Kek, KeyRef, KeyStore, RecordSigner, SealedDek};

/// Keys in files. See the module docs.
#[derive(Debug, Default)]
pub struct FileKeyStore {
    /// Accept files readable by group or others (tests only).
    pub allow_loose_permissions: bool,
}

impl FileKeyStore {
    /// A file key store that enforces private key files.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self, key: &KeyRef) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let KeyRef::File(path) = key else {
            return Err(HsmError::WrongBackend {
                key: key.to_string(),
                backend: "file",
            });
        };
        let meta = std::fs::metadata(path).map_err(|e| HsmError::Read {
            key: key.to_string(),
            source: e,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 && !self.allow_loose_permissions {
            return Err(HsmError::Permissions {
                key: key.to_string(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(|e| HsmError::Read {
            key: key.to_string(),
            source: e,
        })?;
        Ok(Zeroizing::new(bytes))
    }
}

fn invalid(key: &KeyRef, expected: &'static str, detail: impl ToString) -> HsmError {
    HsmError::Invalid {
        key: key.to_string(),
        expected,
        detail: detail.to_string(),
    }
}

impl KeyStore for FileKeyStore {
    fn backend(&self) -> &'static str {
        "file"
    }

    fn tls_key(&self, key: &KeyRef) -> Result<Arc<dyn rustls::sign::SigningKey>, HsmError> {
        let bytes = self.read(key)?;
        let der = PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| invalid(key, "PEM private key", e))?;
        rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| invalid(key, "TLS private key", e))
    }

    fn record_signer(&self, key: &KeyRef) -> Result<Arc<dyn RecordSigner>, HsmError> {
        let bytes = self.read(key)?;
        let pair = ed25519_from_bytes(&bytes).map_err(|d| invalid(key, "Ed25519 key", d))?;
        Ok(Arc::new(FileSigner {
            key: key.to_string(),
            pair,
        }))
    }

    fn kek(&self, key: &KeyRef) -> Result<Arc<dyn Kek>, HsmError> {
        let bytes = self.read(key)?;
        if bytes.len() != 32 {
            return Err(invalid(
                key,
                "AES-256 key",
                format!("{} bytes instead of 32", bytes.len()),
            ));
        }
        let unbound = UnboundKey::new(&aead::AES_256_GCM, &bytes)
            .map_err(|_| invalid(key, "AES-256 key", "rejected by ring"))?;
        Ok(Arc::new(FileKek {
            key: key.to_string(),
            aead: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }))
    }
}

/// Parse an Ed25519 key from a PKCS#8 PEM, PKCS#8 DER or a raw 32-byte seed.
pub fn ed25519_from_bytes(bytes: &[u8]) -> Result<Ed25519KeyPair, String> {
    if bytes.len() == 32 {
        return Ed25519KeyPair::from_seed_unchecked(bytes).map_err(|e| e.to_string());
    }
    let der = if bytes.starts_with(b"-----") {
        PrivatePkcs8KeyDer::from_pem_slice(bytes).map_err(|e| e.to_string())?
    } else {
        PrivatePkcs8KeyDer::from(bytes.to_vec())
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).map_err(|e| e.to_string())
}

/// Write `bytes` to `path` readable by the owner only (creating or truncating it).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

struct FileSigner {
    key: String,
    pair: Ed25519KeyPair,
}

impl RecordSigner for FileSigner {
    fn public_key(&self) -> [u8; 32] {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        pk
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], HsmError> {
        let sig = self.pair.sign(msg);
        sig.as_ref().try_into().map_err(|_| HsmError::Operation {
            key: self.key.clone(),
            detail: "signature is not 64 bytes".into(),
        })
    }
}

struct FileKek {
    key: String,
    aead: LessSafeKey,
    rng: SystemRandom,
}

impl Kek for FileKek {
    fn seal_dek(&self, dek: &[u8; 32], aad: &[u8]) -> Result<SealedDek, HsmError> {
        let mut iv = [0u8; 12];
        self.rng.fill(&mut iv).map_err(|_| HsmError::Operation {
            key: self.key.clone(),
            detail: "no randomness for the IV".into(),
        })?;
        let mut buf = Zeroizing::new(dek.to_vec());
        self.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut *buf)
            .map_err(|_| HsmError::Operation {
                key: self.key.clone(),
                detail: "seal failed".into(),
            })?;
        let ct: [u8; 48] = buf.as_slice().try_into().map_err(|_| HsmError::Operation {
            key: self.key.clone(),
            detail: "sealed key is not 48 bytes".into(),
        })?;
        Ok(SealedDek { iv, ct })
    }

    fn open_dek(&self, sealed: &SealedDek, aad: &[u8]) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        let mut buf = Zeroizing::new(sealed.ct.to_vec());
        let plain = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.iv),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| HsmError::AuthenticationFailed)?;
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(HsmError::AuthenticationFailed);
        }
        out.copy_from_slice(plain);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vvgate-hsm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        write_private(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn seed_signer_matches_the_contract_vector() {
        // CONTRACT.md §13: seed 00..1f has public key A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=.
        let seed: Vec<u8> = (0u8..32).collect();
        let p = temp("seed", &seed, 0o600);
        let s = FileKeyStore::new().record_signer(&KeyRef::File(p)).unwrap();
        assert_eq!(
            s.public_key()[..4],
            [0x03, 0xa1, 0x07, 0xbf],
            "public key of seed 00..1f"
        );
        let sig = s.sign(b"msg").unwrap();
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, s.public_key());
        pk.verify(b"msg", &sig).unwrap();
    }

    #[test]
    fn loose_permissions_are_refused() {
        let p = temp("loose", &[1u8; 32], 0o644);
        match FileKeyStore::new().kek(&KeyRef::File(p)) {
            Err(HsmError::Permissions { mode, .. }) => assert_eq!(mode, 0o644),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a world-readable key was accepted"),
        }
    }

    #[test]
    fn kek_round_trip_and_tamper() {
        let p = temp("kek", &[0x44; 32], 0o600);
        let kek = FileKeyStore::new().kek(&KeyRef::File(p)).unwrap();
        let dek = [0x11u8; 32];
        let sealed = kek.seal_dek(&dek, b"aad").unwrap();
        assert_eq!(*kek.open_dek(&sealed, b"aad").unwrap(), dek);
        assert!(matches!(
            kek.open_dek(&sealed, b"other"),
            Err(HsmError::AuthenticationFailed)
        ));
        let mut bad = sealed.clone();
        bad.ct[0] ^= 1;
        assert!(matches!(
            kek.open_dek(&bad, b"aad"),
            Err(HsmError::AuthenticationFailed)
        ));
    }

    #[test]
    fn wrong_kinds_are_named() {
        let p = temp("short", &[1u8; 5], 0o600);
        let r = KeyRef::File(p);
        assert!(matches!(
            FileKeyStore::new().kek(&r),
            Err(HsmError::Invalid { .. })
        ));
        assert!(matches!(
            FileKeyStore::new().record_signer(&r),
            Err(HsmError::Invalid { .. })
        ));
        assert!(matches!(
            FileKeyStore::new().tls_key(&r),
            Err(HsmError::Invalid { .. })
        ));
        assert!(matches!(
            FileKeyStore::new().kek(&KeyRef::Pkcs11 { id: vec![1] }),
            Err(HsmError::WrongBackend { .. })
        ));
    }
}
