//! Module loading, token selection, login, PIN files and the one `CKR_*` → [`HsmError`] map.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::HsmError;

/// How the token is chosen: by label or by serial number, never by slot index (SoftHSM
/// renumbers slots when a token is initialised, and so do HSMs when devices come and go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// `CKA_LABEL` of the token (`CK_TOKEN_INFO.label`, trailing blanks ignored).
    Label(String),
    /// The token's serial number (`CK_TOKEN_INFO.serialNumber`, trailing blanks ignored).
    Serial(String),
}

impl TokenSelector {
    /// Parse `label=<label>` or `serial=<serial>`; a bare string is a label.
    pub fn parse(s: &str) -> Self {
        if let Some(v) = s.strip_prefix("serial=") {
            TokenSelector::Serial(v.to_owned())
        } else {
            TokenSelector::Label(s.strip_prefix("label=").unwrap_or(s).to_owned())
        }
    }
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label={l}"),
            TokenSelector::Serial(s) => write!(f, "serial={s}"),
        }
    }
}

/// What a failed PKCS#11 call was doing, for [`map_error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `C_Login`.
    Login,
    /// `C_Decrypt` of a sealed key: every failure is an authentication failure.
    Open,
    /// Anything else on a key.
    Key,
}

/// The return values after which the session is gone and one reopen-and-login is tried.
pub(crate) fn is_session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
            _
        )
    )
}

/// Whether `e` calls for the one reopen-and-login attempt: the session is lost, or a cached
/// key handle went stale (SoftHSM answers `CKR_OBJECT_HANDLE_INVALID` for private objects once
/// the login is gone, e.g. after a token reset), so the handles are resolved again.
pub(crate) fn needs_reopen(e: &CkError) -> bool {
    is_session_lost(e)
        || matches!(
            e,
            CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)
        )
}

/// The PIN failure named by `e`, if it is one.
pub(crate) fn pin_failure(e: &CkError) -> Option<&'static str> {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => Some("PIN incorrect"),
        CkError::Pkcs11(RvError::PinLocked, _) => Some("PIN locked"),
        CkError::Pkcs11(RvError::PinExpired, _) => Some("PIN expired"),
        CkError::Pkcs11(RvError::PinLenRange | RvError::PinInvalid, _) => {
            Some("PIN malformed for this token")
        }
        _ => None,
    }
}

/// The one place that turns a PKCS#11 error into an [`HsmError`].
///
/// PIN errors become [`HsmError::PinRejected`] (never retried); session loss becomes
/// [`HsmError::NotReady`] (the caller has already made its one reopen attempt); any failure to
/// open a sealed key is [`HsmError::AuthenticationFailed`] (SoftHSM answers a bad tag with
/// `CKR_GENERAL_ERROR`); anything else is an [`HsmError::Operation`] on `key`.
pub(crate) fn map_error(e: CkError, op: Op, key: &str, token: &TokenSelector) -> HsmError {
    if let Some(reason) = pin_failure(&e) {
        return HsmError::PinRejected {
            token: token.to_string(),
            reason,
        };
    }
    if is_session_lost(&e) {
        return HsmError::NotReady(format!("session with token {token} lost: {e}"));
    }
    match op {
        Op::Open => HsmError::AuthenticationFailed,
        Op::Login => HsmError::Token {
            token: token.to_string(),
            detail: format!("login failed: {e}"),
        },
        Op::Key => HsmError::Operation {
            key: key.to_owned(),
            detail: e.to_string(),
        },
    }
}

/// Load and initialise `module` (OS locking). From here on the process must not fork.
pub(crate) fn load_module(module: &Path) -> Result<Pkcs11, HsmError> {
    let err = |detail: String| HsmError::Module {
        module: module.display().to_string(),
        detail,
    };
    if !module.exists() {
        return Err(err("no such file".into()));
    }
    let ctx = Pkcs11::new(module).map_err(|e| err(format!("cannot load: {e}")))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => Ok(ctx),
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Err(err(
            "already initialised in this process: one key store or ceremony per process at a time"
                .into(),
        )),
        Err(e) => Err(err(format!("C_Initialize failed: {e}"))),
    }
}

/// `C_Finalize`, errors ignored (nothing useful can be done with them at shutdown).
pub(crate) fn finalize(ctx: Pkcs11) {
    let _ = ctx.finalize();
}

/// The one slot whose initialised token matches `sel`; zero or several is an error naming it.
pub(crate) fn find_slot(ctx: &Pkcs11, sel: &TokenSelector) -> Result<Slot, HsmError> {
    let token_err = |detail: String| HsmError::Token {
        token: sel.to_string(),
        detail,
    };
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| token_err(format!("cannot list slots: {e}")))?;
    let mut seen = Vec::new();
    let mut hits = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let label = info.label().trim_end().to_owned();
        let serial = info.serial_number().trim_end().to_owned();
        let hit = match sel {
            TokenSelector::Label(l) => label == l.trim_end(),
            TokenSelector::Serial(s) => serial == s.trim_end(),
        };
        if hit {
            hits.push(slot);
        }
        seen.push(format!("{label:?} (serial {serial})"));
    }
    match hits.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(token_err(format!(
            "no initialised token matches; tokens present: {}",
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        ))),
        many => Err(token_err(format!(
            "{} tokens match; choose the token by serial",
            many.len()
        ))),
    }
}

/// Log `user` in on `session`, once. `CKR_USER_ALREADY_LOGGED_IN` is success; PIN errors are
/// [`HsmError::PinRejected`]. A token that already reports its PIN locked is not even tried.
pub(crate) fn login(
    ctx: &Pkcs11,
    slot: Slot,
    session: &Session,
    user: UserType,
    pin: &AuthPin,
    sel: &TokenSelector,
) -> Result<(), HsmError> {
    if let Ok(info) = ctx.get_token_info(slot) {
        let locked = match user {
            UserType::So => info.so_pin_locked(),
            _ => info.user_pin_locked(),
        };
        if locked {
            return Err(HsmError::PinRejected {
                token: sel.to_string(),
                reason: "PIN locked",
            });
        }
    }
    match session.login(user, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(map_error(e, Op::Login, "", sel)),
    }
}

/// Read a PIN from `path` (a systemd credential): a regular file, not readable by group or
/// others, one line (a trailing newline is dropped). The bytes read are zeroized; the PIN is
/// never logged.
pub fn read_pin_file(path: &Path) -> Result<AuthPin, HsmError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| HsmError::Read {
        key: name.clone(),
        source: e,
    })?;
    let ft = meta.file_type();
    if !ft.is_file() || ft.is_fifo() {
        return Err(HsmError::Invalid {
            key: name,
            expected: "PIN file",
            detail: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(HsmError::Permissions { key: name, mode });
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| HsmError::Read {
        key: name.clone(),
        source: e,
    })?);
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| HsmError::Invalid {
        key: name.clone(),
        expected: "PIN file",
        detail: "not UTF-8".into(),
    })?;
    if text.is_empty() || text.contains('\n') {
        return Err(HsmError::Invalid {
            key: name,
            expected: "PIN file",
            detail: "must hold exactly one non-empty line".into(),
        });
    }
    Ok(pin_from_str(text))
}

/// An [`AuthPin`] holding a copy of `s`, built without reallocating (so no stray copy is left
/// behind in freed memory).
pub(crate) fn pin_from_str(s: &str) -> AuthPin {
    let mut owned = String::with_capacity(s.len());
    owned.push_str(s);
    AuthPin::from(owned)
}
