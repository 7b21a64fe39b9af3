//! The production key store: keys in a PKCS#11 token (an HSM, or SoftHSM in tests).
//!
//! [`Pkcs11KeyStore::open`] loads the module, picks the token by label or serial, reads the
//! user PIN from a file (a systemd credential), opens one read-only session and logs in. Every
//! PKCS#11 call then runs on one thread owned by the store (`vvgate-pkcs11`); the handles the
//! [`KeyStore`] methods return send it requests and block until it answers. Keys are found by
//! `CKA_ID` (`pkcs11:<hex>`; convention in [`Purpose`]), checked (sensitive, never extractable,
//! type, curve, `CKA_ALLOWED_MECHANISMS` = the one mechanism), self-tested and cached when
//! loaded; operations never look keys up again.
//!
//! Failure rules: a refused PIN is [`HsmError::PinRejected`] and is never tried again (a crash
//! loop must not lock the token); a session lost at runtime gets one reopen-and-login attempt
//! per request, after which the request fails with [`HsmError::NotReady`]
//! ([`Pkcs11KeyStore::status`] reports it). The process must not fork after `open`.

mod actor;
pub mod objects;
pub(crate) mod token;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cryptoki::types::AuthPin;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{alg_id, SubjectPublicKeyInfoDer};
use rustls::{SignatureAlgorithm, SignatureScheme};
use zeroize::Zeroizing;

pub use actor::SessionStatus;
pub use objects::{KeyKind, Purpose};
pub use token::{read_pin_file, TokenSelector};

use crate::{HsmError, Kek, KeyRef, KeyStore, RecordSigner, SealedDek};
use actor::{Loaded, Request, Role};

/// Where the token is and how to log in to it (the daemon's `[keys]` configuration).
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`, a vendor library).
    pub module: PathBuf,
    /// The token, by label or serial.
    pub token: TokenSelector,
    /// The file holding the user PIN (`$CREDENTIALS_DIRECTORY/hsm-pin`); mode 0600 or 0400.
    pub pin_file: PathBuf,
}

/// The PKCS#11 key store. See the module docs.
pub struct Pkcs11KeyStore {
    client: Client,
    thread: Mutex<Option<JoinHandle<()>>>,
    ready: Arc<AtomicBool>,
    token: TokenSelector,
}

impl fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("token", &self.token)
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pkcs11KeyStore {
    /// Open the store: read the PIN file, load and initialise the module, select the token,
    /// open the read-only session and log in (once).
    ///
    /// Errors: [`HsmError::Read`]/[`HsmError::Permissions`] for the PIN file,
    /// [`HsmError::Module`], [`HsmError::Token`] (no or several matching tokens),
    /// [`HsmError::PinRejected`] (exit with the dedicated code; do not retry).
    pub fn open(config: &Pkcs11Config) -> Result<Self, HsmError> {
        let pin = read_pin_file(&config.pin_file)?;
        Self::open_with_pin(&config.module, &config.token, pin)
    }

    /// [`Pkcs11KeyStore::open`] with the PIN already in hand (kept in the store's thread, for
    /// the reopen after a lost session; zeroized when the store closes).
    pub fn open_with_pin(
        module: &Path,
        token: &TokenSelector,
        pin: AuthPin,
    ) -> Result<Self, HsmError> {
        let ready = Arc::new(AtomicBool::new(false));
        let (tx, thread) = actor::spawn(module.to_path_buf(), token.clone(), pin, ready.clone())?;
        Ok(Pkcs11KeyStore {
            client: Client { tx },
            thread: Mutex::new(Some(thread)),
            ready,
            token: token.clone(),
        })
    }

    /// Whether the session is up (false after a lost session that could not be re-opened,
    /// until a later request succeeds). Cheap: no PKCS#11 call.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The session's state, asked from the token.
    pub fn status(&self) -> Result<SessionStatus, HsmError> {
        self.client.call(|reply| Request::Status { reply })
    }

    /// Close the session and finalise the module (also done on drop). Handles given out
    /// before fail with [`HsmError::NotReady`] afterwards.
    pub fn close(self) {
        drop(self);
    }

    /// Test hook: log the user out of the token, as a token reset would, so that the next
    /// operation finds its session unusable (`CKR_USER_NOT_LOGGED_IN`) and takes the
    /// reopen-and-login path.
    #[doc(hidden)]
    pub fn inject_logout(&self) -> Result<(), HsmError> {
        self.client.call(|reply| Request::InjectLogout { reply })
    }

    fn load(&self, key: &KeyRef, role: Role) -> Result<Loaded, HsmError> {
        let KeyRef::Pkcs11 { id } = key else {
            return Err(HsmError::WrongBackend {
                key: key.to_string(),
                backend: "pkcs11",
            });
        };
        let key_ref = key.to_string();
        self.client.call(|reply| Request::Load {
            id: id.clone(),
            key_ref,
            role,
            reply,
        })
    }
}

impl Drop for Pkcs11KeyStore {
    fn drop(&mut self) {
        let _ = self.client.tx.send(Request::Close);
        let handle = match self.thread.get_mut() {
            Ok(h) => h.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn backend(&self) -> &'static str {
        "pkcs11"
    }

    fn tls_key(&self, key: &KeyRef) -> Result<Arc<dyn rustls::sign::SigningKey>, HsmError> {
        let loaded = self.load(key, Role::Tls)?;
        let (spki, scheme, algorithm) = match loaded.kind {
            KeyKind::EcdsaP256 => (
                rustls::sign::public_key_to_spki(&alg_id::ECDSA_P256, &loaded.public),
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureAlgorithm::ECDSA,
            ),
            _ => (
                rustls::sign::public_key_to_spki(&alg_id::ED25519, &loaded.public),
                SignatureScheme::ED25519,
                SignatureAlgorithm::ED25519,
            ),
        };
        Ok(Arc::new(TlsKey {
            inner: Arc::new(TokenKey {
                client: self.client.clone(),
                slot: loaded.slot,
                key_ref: key.to_string(),
            }),
            spki,
            scheme,
            algorithm,
        }))
    }

    fn record_signer(&self, key: &KeyRef) -> Result<Arc<dyn RecordSigner>, HsmError> {
        let loaded = self.load(key, Role::Signer)?;
        let public: [u8; 32] =
            loaded
                .public
                .as_slice()
                .try_into()
                .map_err(|_| HsmError::Invalid {
                    key: key.to_string(),
                    expected: "Ed25519 key",
                    detail: "public key is not 32 bytes".into(),
                })?;
        Ok(Arc::new(Signer {
            inner: TokenKey {
                client: self.client.clone(),
                slot: loaded.slot,
                key_ref: key.to_string(),
            },
            public,
        }))
    }

    fn kek(&self, key: &KeyRef) -> Result<Arc<dyn Kek>, HsmError> {
        let loaded = self.load(key, Role::Kek)?;
        Ok(Arc::new(TokenKek {
            inner: TokenKey {
                client: self.client.clone(),
                slot: loaded.slot,
                key_ref: key.to_string(),
            },
            rng: SystemRandom::new(),
        }))
    }
}

/// The sending half to the PKCS#11 thread.
#[derive(Clone)]
struct Client {
    tx: Sender<Request>,
}

impl Client {
    fn call<T>(
        &self,
        make: impl FnOnce(SyncSender<Result<T, HsmError>>) -> Request,
    ) -> Result<T, HsmError> {
        let closed = || HsmError::NotReady("the PKCS#11 key store is closed".into());
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx.send(make(reply)).map_err(|_| closed())?;
        rx.recv().map_err(|_| closed())?
    }
}

/// A cached key in the PKCS#11 thread.
struct TokenKey {
    client: Client,
    slot: usize,
    key_ref: String,
}

impl TokenKey {
    fn sign(&self, input: &[u8]) -> Result<[u8; 64], HsmError> {
        let sig = self.client.call(|reply| Request::Sign {
            slot: self.slot,
            input: input.to_vec(),
            reply,
        })?;
        sig.as_slice().try_into().map_err(|_| HsmError::Operation {
            key: self.key_ref.clone(),
            detail: "signature is not 64 bytes".into(),
        })
    }
}

/// The TLS server key as rustls sees it: P-256 (`ECDSA_NISTP256_SHA256`: SHA-256 on the host,
/// `CKM_ECDSA` in the token, raw `r ‖ s` converted to DER) or Ed25519 (`CKM_EDDSA`).
struct TlsKey {
    inner: Arc<TokenKey>,
    spki: SubjectPublicKeyInfoDer<'static>,
    scheme: SignatureScheme,
    algorithm: SignatureAlgorithm,
}

impl fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11TlsKey")
            .field("key", &self.inner.key_ref)
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered.contains(&self.scheme).then(|| {
            Box::new(TlsSigner {
                inner: self.inner.clone(),
                scheme: self.scheme,
            }) as Box<dyn rustls::sign::Signer>
        })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(self.spki.clone())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
}

struct TlsSigner {
    inner: Arc<TokenKey>,
    scheme: SignatureScheme,
}

impl fmt::Debug for TlsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11TlsSigner")
            .field("key", &self.inner.key_ref)
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // The key store's error travels inside the rustls error, so the gateway can tell a
        // token failure (`keystore_unavailable`) from a refused client.
        let fail = |e: HsmError| rustls::Error::Other(rustls::OtherError(Arc::new(e)));
        if self.scheme == SignatureScheme::ED25519 {
            return self.inner.sign(message).map(|s| s.to_vec()).map_err(fail);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let raw = self.inner.sign(digest.as_ref()).map_err(fail)?;
        Ok(objects::ecdsa_raw_to_der(&raw))
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// An Ed25519 record signer in the token (`CKM_EDDSA`, pure).
struct Signer {
    inner: TokenKey,
    public: [u8; 32],
}

impl RecordSigner for Signer {
    fn public_key(&self) -> [u8; 32] {
        self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], HsmError> {
        self.inner.sign(msg)
    }
}

/// The AES-256 KEK in the token (`CKM_AES_GCM`, 12-byte random IV, 128-bit tag).
struct TokenKek {
    inner: TokenKey,
    rng: SystemRandom,
}

impl Kek for TokenKek {
    fn seal_dek(&self, dek: &[u8; 32], aad: &[u8]) -> Result<SealedDek, HsmError> {
        let mut iv = [0u8; 12];
        self.rng.fill(&mut iv).map_err(|_| HsmError::Operation {
            key: self.inner.key_ref.clone(),
            detail: "no randomness for the IV".into(),
        })?;
        self.inner.client.call(|reply| Request::Seal {
            slot: self.inner.slot,
            iv,
            dek: Zeroizing::new(*dek),
            aad: aad.to_vec(),
            reply,
        })
    }

    fn open_dek(&self, sealed: &SealedDek, aad: &[u8]) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        self.inner.client.call(|reply| Request::Open {
            slot: self.inner.slot,
            sealed: sealed.clone(),
            aad: aad.to_vec(),
            reply,
        })
    }
}
