//! Credentials for the queue connection, read from a file (a systemd credential), never from
//! the command line or the configuration itself:
//!
//! - a NATS `.creds` file (user JWT and nkey seed): `CONNECT` carries `jwt` and `sig`;
//! - an nkey seed (`SU…`, one line): `CONNECT` carries `nkey` and `sig`;
//! - `user:password` on one line: `CONNECT` carries `user` and `pass`.
//!
//! The TLS client certificate is configured separately and always presented. Secrets are kept
//! in zeroizing buffers and never logged.

use std::path::Path;

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::json::Cjson;

/// nkey prefix bytes (nkeys encoding).
const PREFIX_SEED: u8 = 18 << 3;
const PREFIX_USER: u8 = 20 << 3;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("nats.credentials_file {path}: {detail}")]
    File { path: String, detail: String },
}

/// How the gateway authenticates to NATS (besides its TLS certificate).
pub enum Credentials {
    None,
    UserPass {
        user: String,
        pass: Zeroizing<String>,
    },
    NKey {
        seed: Zeroizing<[u8; 32]>,
        public: String,
    },
    Jwt {
        jwt: String,
        seed: Zeroizing<[u8; 32]>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Credentials::None => "Credentials::None",
            Credentials::UserPass { .. } => "Credentials::UserPass(..)",
            Credentials::NKey { .. } => "Credentials::NKey(..)",
            Credentials::Jwt { .. } => "Credentials::Jwt(..)",
        })
    }
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Decode a user nkey seed (`SU…`) into its 32 Ed25519 seed bytes.
pub fn decode_user_seed(text: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let raw = Zeroizing::new(
        data_encoding::BASE32_NOPAD
            .decode(text.trim().as_bytes())
            .map_err(|_| "not a base32 nkey seed".to_owned())?,
    );
    if raw.len() != 36 {
        return Err(format!(
            "nkey seed decodes to {} bytes, expected 36",
            raw.len()
        ));
    }
    let (body, crc) = raw.split_at(34);
    if crc16(body) != u16::from_le_bytes([crc[0], crc[1]]) {
        return Err("nkey seed checksum mismatch".into());
    }
    let prefix = body[0] & 0xF8;
    let kind = ((body[0] & 0x07) << 5) | ((body[1] & 0xF8) >> 3);
    if prefix != PREFIX_SEED || kind != PREFIX_USER {
        return Err("not a user nkey seed (expected SU…)".into());
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&body[2..34]);
    Ok(seed)
}

/// Encode a user seed as an `SU…` nkey seed string.
pub fn encode_user_seed(seed: &[u8; 32]) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(Vec::with_capacity(36));
    raw.push(PREFIX_SEED | (PREFIX_USER >> 5));
    raw.push((PREFIX_USER & 31) << 3);
    raw.extend_from_slice(seed);
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&raw))
}

/// The public user nkey (`U…`) of a seed.
pub fn user_public_key(seed: &[u8; 32]) -> Result<String, String> {
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| e.to_string())?;
    let mut raw = Vec::with_capacity(35);
    raw.push(PREFIX_USER);
    raw.extend_from_slice(pair.public_key().as_ref());
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    Ok(data_encoding::BASE32_NOPAD.encode(&raw))
}

fn section<'a>(text: &'a str, begin: &str) -> Option<&'a str> {
    let mut lines = text.lines();
    lines.find(|l| l.contains(begin))?;
    lines.map(str::trim).find(|l| !l.is_empty())
}

impl Credentials {
    /// Read a credentials file (see the module docs).
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let bad = |detail: String| CredentialsError::File {
            path: path.display().to_string(),
            detail,
        };
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| bad(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "readable by group or others (mode {:o}); chmod 600 it",
                    mode & 0o777
                )));
            }
        }
        if text.contains("BEGIN NATS USER JWT") {
            let jwt = section(&text, "BEGIN NATS USER JWT")
                .ok_or_else(|| bad("no JWT after the JWT header".into()))?
                .to_owned();
            let seed = section(&text, "BEGIN USER NKEY SEED")
                .ok_or_else(|| bad("no nkey seed after the seed header".into()))?;
            let seed = decode_user_seed(seed).map_err(bad)?;
            return Ok(Credentials::Jwt { jwt, seed });
        }
        let line = text.trim();
        if line.starts_with("SU") && !line.contains(char::is_whitespace) {
            let seed = decode_user_seed(line).map_err(bad)?;
            let public = user_public_key(&seed).map_err(bad)?;
            return Ok(Credentials::NKey { seed, public });
        }
        match line.split_once(':') {
            Some((user, pass)) if !user.is_empty() && !pass.is_empty() && !line.contains('\n') => {
                Ok(Credentials::UserPass {
                    user: user.to_owned(),
                    pass: Zeroizing::new(pass.to_owned()),
                })
            }
            _ => Err(bad(
                "expected a .creds file, an nkey seed (SU…) or user:password on one line".into(),
            )),
        }
    }

    /// Write the authentication members of `CONNECT` (keys sorted with the caller's others).
    /// `nonce` is the server's `INFO` nonce, signed for nkey and JWT authentication.
    pub fn write_connect_fields(
        &self,
        w: &mut Cjson<'_>,
        nonce: Option<&str>,
    ) -> Result<(), String> {
        let sign =
            |seed: &[u8; 32]| -> Result<String, String> {
                let nonce = nonce.ok_or("the server sent no nonce to sign")?;
                let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| e.to_string())?;
                Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(pair.sign(nonce.as_bytes())))
            };
        match self {
            Credentials::None => {}
            Credentials::UserPass { user, pass } => {
                w.key("pass").str(pass).key("user").str(user);
            }
            Credentials::NKey { seed, public } => {
                let sig = sign(seed)?;
                w.key("nkey").str(public).key("sig").str(&sig);
            }
            Credentials::Jwt { jwt, seed } => {
                let sig = sign(seed)?;
                w.key("jwt").str(jwt).key("sig").str(&sig);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_round_trip_and_checks() {
        let seed = [7u8; 32];
        let text = encode_user_seed(&seed);
        assert!(text.starts_with("SU"), "{}", &*text);
        assert_eq!(text.len(), 58);
        assert_eq!(*decode_user_seed(&text).unwrap(), seed);
        let public = user_public_key(&seed).unwrap();
        assert!(public.starts_with('U') && public.len() == 56, "{public}");
        // A flipped character fails the checksum.
        let mut bad = text.to_string();
        let c = if bad.as_bytes()[10] == b'A' { "B" } else { "A" };
        bad.replace_range(10..11, c);
        assert!(decode_user_seed(&bad).is_err());
        assert!(decode_user_seed("not base32!").is_err());
    }

    #[test]
    fn crc16_xmodem_vector() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }
}
