//! Exit codes: a fixed, documented contract with systemd (`RestartPreventExitStatus=`) and
//! operators (docs/exit-codes.md). Values follow sysexits.h.

/// Clean shutdown.
pub const OK: u8 = 0;
/// Bad command line.
pub const USAGE: u8 = 64;
/// The input was refused: an update bundle whose signature, manifest, version or files do not
/// check out.
pub const DATAERR: u8 = 65;
/// A key store (HSM) is unavailable or a key is missing or unusable.
pub const UNAVAILABLE: u8 = 69;
/// An internal error.
pub const SOFTWARE: u8 = 70;
/// A listener could not be bound, or the state directory could not be created.
pub const CANTCREAT: u8 = 73;
/// Storage I/O failed (database open, format).
pub const IOERR: u8 = 74;
/// The key store refused the PIN (incorrect, locked, expired). Never retried: list it in
/// `RestartPreventExitStatus=` so that a restart loop cannot lock the token.
pub const NOPERM: u8 = 77;
/// Invalid configuration.
pub const CONFIG: u8 = 78;
