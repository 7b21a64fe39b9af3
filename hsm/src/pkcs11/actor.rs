//! The key store's own thread: it alone calls the PKCS#11 module (initialise, session, login,
//! every operation, finalise). Callers send [`Request`]s and block on the reply.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::objects::{resolve, FindError, KeyKind};
use super::token::{self, map_error, needs_reopen, Op, TokenSelector};
use crate::{HsmError, SealedDek};

/// Which trait method loads a key, hence which kinds are acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    Tls,
    Signer,
    Kek,
}

impl Role {
    fn kinds(self) -> &'static [KeyKind] {
        match self {
            Role::Tls => &[KeyKind::EcdsaP256, KeyKind::Ed25519],
            Role::Signer => &[KeyKind::Ed25519],
            Role::Kek => &[KeyKind::Aes256Gcm],
        }
    }
}

/// A key loaded into the cache: its slot there, kind and public key.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub(crate) slot: usize,
    pub(crate) kind: KeyKind,
    pub(crate) public: Vec<u8>,
}

/// The state of the key store's session, for readiness and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStatus {
    /// A logged-in session is open and the last operation did not lose it.
    pub ready: bool,
    /// The session is read-only (always, for the daemon).
    pub read_only: bool,
    /// The normal user is logged in.
    pub user_logged_in: bool,
}

type Reply<T> = SyncSender<Result<T, HsmError>>;

pub(crate) enum Request {
    Load {
        id: Vec<u8>,
        key_ref: String,
        role: Role,
        reply: Reply<Loaded>,
    },
    Sign {
        slot: usize,
        input: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Seal {
        slot: usize,
        iv: [u8; 12],
        dek: Zeroizing<[u8; 32]>,
        aad: Vec<u8>,
        reply: Reply<SealedDek>,
    },
    Open {
        slot: usize,
        sealed: SealedDek,
        aad: Vec<u8>,
        reply: Reply<Zeroizing<[u8; 32]>>,
    },
    Status {
        reply: Reply<SessionStatus>,
    },
    InjectLogout {
        reply: Reply<()>,
    },
    Close,
}

struct Cached {
    id: Vec<u8>,
    key_ref: String,
    role: Role,
    kind: KeyKind,
    /// `Err` when the key could not be found again after a reopen (retired or replaced
    /// while the daemon ran): that key fails, the others go on.
    secret: Result<ObjectHandle, String>,
    public: Vec<u8>,
}

impl Cached {
    fn handle(&self) -> Result<ObjectHandle, FindError> {
        self.secret.clone().map_err(|detail| {
            FindError::Hsm(HsmError::Missing {
                key: self.key_ref.clone(),
                detail,
            })
        })
    }
}

struct State {
    ctx: Option<Pkcs11>,
    /// The module, for a fresh `C_Initialize` when the token went away (some modules, SoftHSM
    /// among them, only see a token again after that).
    module: PathBuf,
    selector: TokenSelector,
    pin: AuthPin,
    session: Option<Session>,
    keys: Vec<Cached>,
    index: HashMap<(Vec<u8>, Role), usize>,
    /// Set once the token refused the PIN: never try it again.
    pin_rejected: Option<&'static str>,
    ready: Arc<AtomicBool>,
}

/// Start the thread: load the module, find the token, open the read-only session and log in.
/// Returns once that is done (or failed).
pub(crate) fn spawn(
    module: PathBuf,
    selector: TokenSelector,
    pin: AuthPin,
    ready: Arc<AtomicBool>,
) -> Result<(Sender<Request>, JoinHandle<()>), HsmError> {
    let (tx, rx) = mpsc::channel::<Request>();
    let (init_tx, init_rx) = mpsc::sync_channel::<Result<(), HsmError>>(1);
    let handle = std::thread::Builder::new()
        .name("vvgate-pkcs11".into())
        .spawn(move || {
            let ctx = match token::load_module(&module) {
                Ok(ctx) => ctx,
                Err(e) => {
                    let _ = init_tx.send(Err(e));
                    return;
                }
            };
            let mut state = State {
                ctx: Some(ctx),
                module,
                selector,
                pin,
                session: None,
                keys: Vec::new(),
                index: HashMap::new(),
                pin_rejected: None,
                ready,
            };
            match state.connect() {
                Ok(()) => {
                    let _ = init_tx.send(Ok(()));
                    state.run(&rx);
                }
                Err(e) => {
                    let _ = init_tx.send(Err(e));
                }
            }
            state.shutdown();
        })
        .map_err(|e| HsmError::NotReady(format!("cannot start the PKCS#11 thread: {e}")))?;
    match init_rx.recv() {
        Ok(Ok(())) => Ok((tx, handle)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(HsmError::NotReady(
                "the PKCS#11 thread died while starting".into(),
            ))
        }
    }
}

const SELF_TEST_MSG: &[u8] = b"vvgate-hsm key self-test";

/// While the session is lost, how often the thread tries to get it back on its own (so
/// readiness recovers without waiting for a handshake to need the key).
const RECOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl State {
    fn run(&mut self, rx: &Receiver<Request>) {
        loop {
            let req = match rx.recv_timeout(RECOVER_EVERY) {
                Ok(req) => req,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.recover();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match req {
                Request::Close => break,
                Request::Load {
                    id,
                    key_ref,
                    role,
                    reply,
                } => {
                    let _ = reply.send(self.load(id, key_ref, role));
                }
                Request::Sign { slot, input, reply } => {
                    let _ = reply.send(self.sign(slot, &input));
                }
                Request::Seal {
                    slot,
                    iv,
                    dek,
                    aad,
                    reply,
                } => {
                    let _ = reply.send(self.seal(slot, iv, &dek, &aad));
                }
                Request::Open {
                    slot,
                    sealed,
                    aad,
                    reply,
                } => {
                    let _ = reply.send(self.open(slot, &sealed, &aad));
                }
                Request::Status { reply } => {
                    let _ = reply.send(Ok(self.status()));
                }
                Request::InjectLogout { reply } => {
                    let r = match &self.session {
                        Some(s) => s
                            .logout()
                            .map_err(|e| map_error(e, Op::Key, "", &self.selector)),
                        None => Ok(()),
                    };
                    let _ = reply.send(r);
                }
            }
        }
    }

    fn shutdown(&mut self) {
        self.ready.store(false, Ordering::SeqCst);
        self.session = None;
        if let Some(ctx) = self.ctx.take() {
            token::finalize(ctx);
        }
    }

    /// Open the read-only session, log in, and re-resolve every cached key (handles are not
    /// guaranteed to survive the loss of all sessions). One attempt; no loop.
    fn connect(&mut self) -> Result<(), HsmError> {
        if let Some(reason) = self.pin_rejected {
            return Err(HsmError::PinRejected {
                token: self.selector.to_string(),
                reason,
            });
        }
        self.session = None;
        let ctx = self
            .ctx
            .as_ref()
            .ok_or_else(|| HsmError::NotReady("key store closed".into()))?;
        let slot = token::find_slot(ctx, &self.selector)?;
        let session = ctx.open_ro_session(slot).map_err(|e| HsmError::Token {
            token: self.selector.to_string(),
            detail: format!("cannot open a session: {e}"),
        })?;
        if let Err(e) = token::login(
            ctx,
            slot,
            &session,
            UserType::User,
            &self.pin,
            &self.selector,
        ) {
            if let HsmError::PinRejected { reason, .. } = &e {
                self.pin_rejected = Some(reason);
            }
            return Err(e);
        }
        for key in &mut self.keys {
            key.secret = match resolve(&session, &key.id, key.role.kinds(), &key.key_ref) {
                Ok(r) if r.kind == key.kind && r.public == key.public => Ok(r.secret),
                Ok(_) => Err("the token now holds a different key under this CKA_ID".into()),
                Err(FindError::Hsm(e)) => Err(format!("after re-opening the session: {e}")),
                Err(FindError::Ck(e)) => {
                    return Err(map_error(e, Op::Key, &key.key_ref, &self.selector))
                }
            };
        }
        self.session = Some(session);
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Get a lost session back: reopen and log in; when the token cannot be found that way,
    /// finalise and initialise the module again and retry once. Never after a refused PIN
    /// (a crash-looping or retrying service must not lock the token).
    fn recover(&mut self) {
        if self.session.is_some() || self.pin_rejected.is_some() {
            return;
        }
        match self.reconnect() {
            Ok(()) | Err(HsmError::PinRejected { .. }) => {}
            Err(_) => {
                if let Some(ctx) = self.ctx.take() {
                    token::finalize(ctx);
                }
                self.ctx = token::load_module(&self.module).ok();
                if self.ctx.is_some() {
                    let _ = self.reconnect();
                }
            }
        }
    }

    fn reconnect(&mut self) -> Result<(), HsmError> {
        self.session = None;
        self.ready.store(false, Ordering::SeqCst);
        self.connect().map_err(|e| match e {
            HsmError::PinRejected { .. } => e,
            other => HsmError::NotReady(format!(
                "cannot re-open the session with token {}: {other}",
                self.selector
            )),
        })
    }

    /// Run `f` on the session. A session lost before or during the call gets exactly one
    /// reopen-and-login attempt; then the error stands.
    fn with_session<T>(
        &mut self,
        op: Op,
        key_ref: &str,
        f: impl Fn(&Session, &[Cached]) -> Result<T, FindError>,
    ) -> Result<T, HsmError> {
        let mut tried = false;
        if self.session.is_none() {
            tried = true;
            self.reconnect()?;
        }
        loop {
            let Some(session) = self.session.as_ref() else {
                return Err(HsmError::NotReady("no session".into()));
            };
            match f(session, &self.keys) {
                Ok(v) => return Ok(v),
                Err(FindError::Hsm(e)) => return Err(e),
                Err(FindError::Ck(e)) if needs_reopen(&e) => {
                    if tried {
                        if token::is_session_lost(&e) {
                            self.session = None;
                            self.ready.store(false, Ordering::SeqCst);
                        }
                        return Err(map_error(e, op, key_ref, &self.selector));
                    }
                    tried = true;
                    self.reconnect()?;
                }
                Err(FindError::Ck(e)) => return Err(map_error(e, op, key_ref, &self.selector)),
            }
        }
    }

    fn status(&self) -> SessionStatus {
        let info = self
            .session
            .as_ref()
            .and_then(|s| s.get_session_info().ok());
        SessionStatus {
            ready: self.ready.load(Ordering::SeqCst),
            read_only: info.as_ref().is_none_or(|i| !i.read_write()),
            user_logged_in: info.as_ref().is_some_and(|i| {
                matches!(
                    i.session_state(),
                    SessionState::RoUser | SessionState::RwUser
                )
            }),
        }
    }

    fn load(&mut self, id: Vec<u8>, key_ref: String, role: Role) -> Result<Loaded, HsmError> {
        if let Some(&slot) = self.index.get(&(id.clone(), role)) {
            let k = &self.keys[slot];
            return Ok(Loaded {
                slot,
                kind: k.kind,
                public: k.public.clone(),
            });
        }
        let r = self.with_session(Op::Key, &key_ref, |s, _| {
            resolve(s, &id, role.kinds(), &key_ref)
        })?;
        let slot = self.keys.len();
        self.keys.push(Cached {
            id: id.clone(),
            key_ref: key_ref.clone(),
            role,
            kind: r.kind,
            secret: Ok(r.secret),
            public: r.public.clone(),
        });
        if let Err(e) = self.self_test(slot) {
            self.keys.pop();
            return Err(e);
        }
        self.index.insert((id, role), slot);
        Ok(Loaded {
            slot,
            kind: r.kind,
            public: r.public,
        })
    }

    /// Sign a fixed message and verify it on the host against the public key object, or
    /// seal and open a random key: proves the secret and public objects belong together and
    /// the mechanism works before the key is handed out.
    fn self_test(&mut self, slot: usize) -> Result<(), HsmError> {
        let (kind, public, key_ref) = {
            let k = &self.keys[slot];
            (k.kind, k.public.clone(), k.key_ref.clone())
        };
        let bad = |detail: &str| HsmError::Invalid {
            key: key_ref.clone(),
            expected: "working key pair",
            detail: format!("self-test failed: {detail}"),
        };
        use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
        match kind {
            KeyKind::EcdsaP256 => {
                let digest = ring::digest::digest(&ring::digest::SHA256, SELF_TEST_MSG);
                let sig = self.sign(slot, digest.as_ref())?;
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
                    .verify(SELF_TEST_MSG, &sig)
                    .map_err(|_| bad("signature does not verify with the public key object"))
            }
            KeyKind::Ed25519 => {
                let sig = self.sign(slot, SELF_TEST_MSG)?;
                UnparsedPublicKey::new(&ED25519, &public)
                    .verify(SELF_TEST_MSG, &sig)
                    .map_err(|_| bad("signature does not verify with the public key object"))
            }
            KeyKind::Aes256Gcm => {
                let rng = SystemRandom::new();
                let mut dek = Zeroizing::new([0u8; 32]);
                let mut iv = [0u8; 12];
                rng.fill(&mut *dek)
                    .and_then(|()| rng.fill(&mut iv))
                    .map_err(|_| bad("no randomness"))?;
                let sealed = self.seal(slot, iv, &dek, b"self-test")?;
                let opened = self
                    .open(slot, &sealed, b"self-test")
                    .map_err(|_| bad("a sealed key does not open"))?;
                if *opened != *dek {
                    return Err(bad("a sealed key opens to other bytes"));
                }
                Ok(())
            }
        }
    }

    fn key_ref(&self, slot: usize) -> Result<String, HsmError> {
        self.keys
            .get(slot)
            .map(|k| k.key_ref.clone())
            .ok_or_else(|| HsmError::NotReady(format!("no key in cache slot {slot}")))
    }

    fn sign(&mut self, slot: usize, input: &[u8]) -> Result<Vec<u8>, HsmError> {
        let key_ref = self.key_ref(slot)?;
        let kind = self.keys[slot].kind;
        if kind == KeyKind::EcdsaP256 && input.len() != 32 {
            // Never hand an unhashed message to CKM_ECDSA (SoftHSM does not check).
            return Err(HsmError::Operation {
                key: key_ref,
                detail: format!(
                    "CKM_ECDSA input must be a 32-byte digest, got {}",
                    input.len()
                ),
            });
        }
        let sig = self.with_session(Op::Key, &key_ref, |s, keys| {
            let h = keys[slot].handle()?;
            let sig = match kind {
                KeyKind::EcdsaP256 => s.sign(&Mechanism::Ecdsa, h, input)?,
                KeyKind::Ed25519 => s.sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    h,
                    input,
                )?,
                KeyKind::Aes256Gcm => {
                    return Err(FindError::Hsm(HsmError::Operation {
                        key: keys[slot].key_ref.clone(),
                        detail: "an AES key does not sign".into(),
                    }))
                }
            };
            Ok(sig)
        })?;
        if sig.len() != 64 {
            return Err(HsmError::Operation {
                key: key_ref,
                detail: format!("signature of {} bytes instead of 64", sig.len()),
            });
        }
        Ok(sig)
    }

    fn seal(
        &mut self,
        slot: usize,
        iv: [u8; 12],
        dek: &[u8; 32],
        aad: &[u8],
    ) -> Result<SealedDek, HsmError> {
        let key_ref = self.key_ref(slot)?;
        let (iv, ct) = self.with_session(Op::Key, &key_ref, |s, keys| {
            let mut iv = iv;
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            let ct = s.encrypt(&Mechanism::AesGcm(params), keys[slot].handle()?, dek)?;
            Ok((iv, ct))
        })?;
        let ct: [u8; 48] = ct.as_slice().try_into().map_err(|_| HsmError::Operation {
            key: key_ref,
            detail: format!("sealed key of {} bytes instead of 48", ct.len()),
        })?;
        Ok(SealedDek { iv, ct })
    }

    fn open(
        &mut self,
        slot: usize,
        sealed: &SealedDek,
        aad: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        let key_ref = self.key_ref(slot)?;
        let plain = self.with_session(Op::Open, &key_ref, |s, keys| {
            let mut iv = sealed.iv;
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            let h = keys[slot].handle()?;
            Ok(Zeroizing::new(s.decrypt(
                &Mechanism::AesGcm(params),
                h,
                &sealed.ct,
            )?))
        })?;
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(HsmError::AuthenticationFailed);
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }
}
