//! Identifiers and hex: request ids (UUIDv4), SHA-256 helpers, lowercase hex.
//!
//! Random bytes come from the OS in 4 KiB refills (ring's `SystemRandom`), so a request id
//! costs no system call on the hot path.

use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A UUID in its canonical lowercase 8-4-4-4-12 text form.
pub type UuidText = heapless::String<36>;
/// A SHA-256 as 64 lowercase hex characters.
pub type HexHash = heapless::String<64>;

/// Lowercase hex of `bytes` into a fixed-capacity string (`N` ≥ 2 × len).
pub fn hex<const N: usize>(bytes: &[u8]) -> heapless::String<N> {
    let mut s = heapless::String::new();
    for &b in bytes {
        let _ = s.push(char::from(HEX[usize::from(b >> 4)]));
        let _ = s.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    s
}

/// Lowercase hex of a SHA-256 digest.
pub fn hex32(bytes: &[u8; 32]) -> HexHash {
    hex(bytes)
}

/// Parse 64 hex characters (either case) into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// SHA-256 over several parts, as if concatenated.
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Format 16 bytes as a UUID string.
pub fn uuid_text(b: &[u8; 16]) -> UuidText {
    let mut s = UuidText::new();
    for (i, &byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            let _ = s.push('-');
        }
        let _ = s.push(char::from(HEX[usize::from(byte >> 4)]));
        let _ = s.push(char::from(HEX[usize::from(byte & 0xF)]));
    }
    s
}

/// Parse a canonical UUID string (8-4-4-4-12 hex digits) back into bytes. Anything else,
/// including a hyphen in another place, is `None`.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut digits = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        // 36 characters less 4 hyphens: exactly 32 digits, so `digits / 2` stays below 16.
        let byte = &mut out[digits / 2];
        *byte = (*byte << 4) | nibble(c)?;
        digits += 1;
    }
    Some(out)
}

/// A buffered source of OS randomness. One per thread that needs it.
pub struct Random {
    rng: SystemRandom,
    buf: Box<[u8; 4096]>,
    pos: usize,
}

impl Default for Random {
    fn default() -> Self {
        Self::new()
    }
}

impl Random {
    pub fn new() -> Self {
        Self {
            rng: SystemRandom::new(),
            buf: Box::new([0u8; 4096]),
            pos: 4096,
        }
    }

    /// Fill `out` with random bytes. Panics only if the OS has no randomness at all, in which
    /// case nothing the gateway does would be safe.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.pos == self.buf.len() {
                #[allow(clippy::expect_used)] // no OS randomness: nothing can be signed or keyed
                self.rng
                    .fill(&mut self.buf[..])
                    .expect("the operating system provides no randomness");
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }

    /// A fresh version-4 UUID.
    pub fn uuid_v4(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip_and_version() {
        let mut r = Random::new();
        let u = r.uuid_v4();
        let s = uuid_text(&u);
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(parse_uuid(&s), Some(u));
        assert_eq!(parse_uuid("not-a-uuid"), None);
        // A hyphen where a digit belongs, with the four canonical ones in place (once an
        // out-of-bounds index: found by the `kv_value` fuzz target).
        for bad in [
            "11111111-1111-1111-1111-11111111111-",
            "11111111-1111-1111-1111-1111111-1111",
            "1-111111-1111-1111-1111-111111111111",
            "11111111-1111-1111-1111-1111111111\u{e9}",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_round_trip() {
        let h = sha256(b"abc");
        let s = hex32(&h);
        assert_eq!(
            s.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hex32(&s.to_uppercase()), Some(h));
        assert_eq!(parse_hex32("xyz"), None);
    }
}
