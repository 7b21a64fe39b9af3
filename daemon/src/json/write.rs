//! Canonical JSON writing (CONTRACT.md §1.2): Python's
//! `json.dumps(v, sort_keys=True, separators=(",", ":"))` with `ensure_ascii=True`.

use super::parse::{Doc, JsonError, Kind, Tape};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Write `s` as a JSON string literal (with quotes), escaped as CJSON requires.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// Write the escaped content of `s` (no quotes).
pub fn write_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Most strings (ids, hashes, timestamps, names) need no escape: one pass without early
    // exit, which the compiler vectorises, then one copy.
    if bytes.iter().fold(true, |ok, &b| {
        ok & (0x20..0x7F).contains(&b) & (b != b'"') & (b != b'\\')
    }) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\' {
            continue;
        }
        if b >= 0x80 && !s.is_char_boundary(i) {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        if b < 0x80 {
            escape_ascii(out, b);
            run = i + 1;
        } else {
            let c = s[i..].chars().next().unwrap_or('\u{FFFD}');
            escape_char(out, c);
            run = i + c.len_utf8();
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

fn escape_ascii(out: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x09 => out.extend_from_slice(b"\\t"),
        0x0A => out.extend_from_slice(b"\\n"),
        0x0C => out.extend_from_slice(b"\\f"),
        0x0D => out.extend_from_slice(b"\\r"),
        _ => unicode_escape(out, u32::from(b)),
    }
}

/// Escape one character that is not plain printable ASCII.
fn escape_char(out: &mut Vec<u8>, c: char) {
    let cp = u32::from(c);
    if cp < 0x80 {
        // Only reached for ASCII that needs escaping.
        escape_ascii(out, u8::try_from(cp).unwrap_or(b'?'));
    } else if cp < 0x10000 {
        unicode_escape(out, cp);
    } else {
        let v = cp - 0x10000;
        unicode_escape(out, 0xD800 + (v >> 10));
        unicode_escape(out, 0xDC00 + (v & 0x3FF));
    }
}

fn unicode_escape(out: &mut Vec<u8>, unit: u32) {
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xF) as usize]);
    }
}

/// Write chars as a JSON string literal (with quotes).
pub(crate) fn write_chars(out: &mut Vec<u8>, chars: impl Iterator<Item = char>) {
    out.push(b'"');
    let mut buf = [0u8; 4];
    for c in chars {
        if (' '..='~').contains(&c) && c != '"' && c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        } else {
            escape_char(out, c);
        }
    }
    out.push(b'"');
}

pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    write_u64_padded(out, v, 1);
}

/// Decimal `v`, zero-padded to at least `width` digits (at most 20).
pub fn write_u64_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(buf.len() - width.min(buf.len()));
    out.extend_from_slice(&buf[start..]);
}

pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Write a finite double in Python `repr` form (CONTRACT.md §1.2 rule 6).
pub fn float_repr(out: &mut Vec<u8>, v: f64) {
    // Rust's `{:e}` gives the shortest round-tripping digits, like Python's repr.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: heapless::String<32> = mantissa.chars().filter(|&c| c != '.').collect();
    let digits = digits.as_bytes();
    if neg {
        out.push(b'-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = usize::try_from(exp).unwrap_or(0) + 1;
            for k in 0..int_len {
                out.push(*digits.get(k).unwrap_or(&b'0'));
            }
            out.push(b'.');
            if digits.len() > int_len {
                out.extend_from_slice(&digits[int_len..]);
            } else {
                out.push(b'0');
            }
        } else {
            out.extend_from_slice(b"0.");
            for _ in 0..(-exp - 1) {
                out.push(b'0');
            }
            out.extend_from_slice(digits);
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push(b'0');
        }
        write_u64(out, u64::from(abs));
    }
}

/// Write node `i` of `doc` (and its subtree) as CJSON. `scratch` holds member orderings and is
/// reused across calls.
pub fn canonicalize(doc: &Doc<'_>, i: usize, out: &mut Vec<u8>, scratch: &mut Vec<usize>) {
    let node = doc.node(i);
    match node.kind {
        Kind::Null => out.extend_from_slice(b"null"),
        Kind::Bool => out.extend_from_slice(if node.flag { b"true" } else { b"false" }),
        Kind::Int => {
            let raw = doc.raw(i);
            if raw == "-0" {
                out.push(b'0');
            } else {
                out.extend_from_slice(raw.as_bytes());
            }
        }
        Kind::Float => float_repr(out, doc.as_f64(i).unwrap_or(0.0)),
        Kind::Str => write_str_node(doc, i, out),
        Kind::Arr => {
            out.push(b'[');
            for (n, e) in doc.elements(i).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                canonicalize(doc, e, out, scratch);
            }
            out.push(b']');
        }
        Kind::Obj => {
            let base = scratch.len();
            scratch.extend(doc.members(i).map(|(k, _)| k));
            let end = scratch.len();
            scratch[base..end].sort_by(|&a, &b| doc.key_cmp(a, b));
            out.push(b'{');
            for j in base..end {
                if j > base {
                    out.push(b',');
                }
                let k = scratch[j];
                write_str_node(doc, k, out);
                out.push(b':');
                canonicalize(doc, k + 1, out, scratch);
            }
            out.push(b'}');
            scratch.truncate(base);
        }
    }
}

/// Write string node `i` as a CJSON string literal.
pub(crate) fn write_str_node(doc: &Doc<'_>, i: usize, out: &mut Vec<u8>) {
    if doc.node(i).flag {
        write_chars(out, doc.chars(i));
    } else {
        write_str(out, doc.raw(i));
    }
}

/// Parse `src` strictly and return its CJSON form (convenience for tools and tests).
pub fn canonicalize_doc(src: &[u8]) -> Result<Vec<u8>, JsonError> {
    let mut tape = Tape::new();
    let doc = tape.parse(src)?;
    let mut out = Vec::with_capacity(src.len());
    canonicalize(&doc, Doc::ROOT, &mut out, &mut Vec::new());
    Ok(out)
}

/// A small writer for CJSON values whose object keys the caller emits in sorted order.
/// Separators are inserted automatically; nesting up to 16 levels.
pub struct Cjson<'o> {
    out: &'o mut Vec<u8>,
    /// One entry per open container: whether it already has a member.
    started: heapless::Vec<bool, 16>,
    /// A key was just written; the next value follows its colon.
    after_key: bool,
}

impl<'o> Cjson<'o> {
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        Self {
            out,
            started: heapless::Vec::new(),
            after_key: false,
        }
    }

    /// Continue an object whose opening and first members are already in `out`: the next
    /// member gets its separator.
    pub fn continue_obj(out: &'o mut Vec<u8>) -> Self {
        let mut started = heapless::Vec::new();
        let _ = started.push(true);
        Self {
            out,
            started,
            after_key: false,
        }
    }

    fn value_prefix(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if let Some(s) = self.started.last_mut() {
            if *s {
                self.out.push(b',');
            }
            *s = true;
        }
    }

    pub fn begin_obj(&mut self) -> &mut Self {
        self.value_prefix();
        self.out.push(b'{');
        let _ = self.started.push(false);
        self
    }

    pub fn end_obj(&mut self) -> &mut Self {
        self.out.push(b'}');
        self.started.pop();
        self
    }

    pub fn begin_arr(&mut self) -> &mut Self {
        self.value_prefix();
        self.out.push(b'[');
        let _ = self.started.push(false);
        self
    }

    pub fn end_arr(&mut self) -> &mut Self {
        self.out.push(b']');
        self.started.pop();
        self
    }

    /// Start an object member: the separator, then `"key":`.
    pub fn key(&mut self, key: &str) -> &mut Self {
        self.value_prefix();
        write_str(self.out, key);
        self.out.push(b':');
        self.after_key = true;
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.value_prefix();
        write_str(self.out, v);
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.value_prefix();
        write_u64(self.out, v);
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.value_prefix();
        write_i64(self.out, v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.value_prefix();
        self.out
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.value_prefix();
        self.out.extend_from_slice(b"null");
        self
    }

    /// A value that is already CJSON.
    pub fn raw(&mut self, cjson: &[u8]) -> &mut Self {
        self.value_prefix();
        self.out.extend_from_slice(cjson);
        self
    }

    /// Node `i` of `doc`, canonicalised.
    pub fn node(&mut self, doc: &Doc<'_>, i: usize, scratch: &mut Vec<usize>) -> &mut Self {
        self.value_prefix();
        canonicalize(doc, i, self.out, scratch);
        self
    }

    /// Direct access to the output, for values written by other helpers after `value()`.
    pub fn value(&mut self) -> &mut Vec<u8> {
        self.value_prefix();
        self.out
    }
}
