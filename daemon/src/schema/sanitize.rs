//! The sanitiser and injection check (§4.4), and the pieces shared by every place that
//! reads a sanitised value: Python `str.strip()`, HTML escaping as a lazy character
//! iterator (so escaped text is written or measured without building it), and decoded
//! string access that borrows when the JSON string has no escapes.

use std::sync::OnceLock;

use regex::Regex;

use crate::json::{write_chars, write_escaped, Doc};

/// Python's `str.isspace()`: Unicode `White_Space` plus U+001C–U+001F.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` without arguments.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python `re` semantics written for the `regex` crate: `\s` is `str.isspace()`, `\w` is
/// `str.isalnum()` or `_` (exactly `[\p{L}\p{N}_]`). The `regex` crate's own `\w` also
/// contains marks, connector punctuation and joiners, so `\b` is spelled out as "start of
/// text or a non-word character" (consuming it is harmless: only `is_match` is asked).
/// Every keyword begins and ends with a word character, so one pair of boundaries covers all
/// six patterns. `(?i)` is Unicode simple case folding (§4.4).
const INJECTION_PATTERN: &str = concat!(
    r"(?:^|[^\p{L}\p{N}_])(?:",
    r"(?i:union)[\s\x1c-\x1f]+(?i:select)",
    r"|(?i:drop)[\s\x1c-\x1f]+(?i:table)",
    r"|(?i:delete)[\s\x1c-\x1f]+(?i:from)",
    r"|(?i:insert)[\s\x1c-\x1f]+(?i:into)",
    r"|(?i:update)[\s\x1c-\x1f]+[\p{L}\p{N}_]+[\s\x1c-\x1f]+(?i:set)",
    r"|(?i:or)[\s\x1c-\x1f]+1[\s\x1c-\x1f]*=[\s\x1c-\x1f]*1",
    r")(?:[^\p{L}\p{N}_]|$)",
);

fn injection_regex() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| Regex::new(INJECTION_PATTERN).ok())
        .as_ref()
}

/// Whether `s` matches one of the contract's injection patterns.
pub fn injection_detected(s: &str) -> bool {
    // Cheap exit: every pattern needs a white-space character, which is an ASCII byte in
    // 0x09-0x0D or 0x1C-0x20, or non-ASCII. One pass without early exit, which the compiler
    // vectorises: most values (ids, hashes) have no such byte at all.
    if !s
        .bytes()
        .fold(false, |seen, b| seen | (b <= 0x20) | (b >= 0x80))
    {
        return false;
    }
    // The pattern is a constant covered by tests; should it ever fail to compile, every
    // string counts as an injection (fail closed).
    injection_regex().is_none_or(|re| re.is_match(s))
}

/// The characters of `html.escape(s, quote=True)`: `& < > " '` become entities.
#[derive(Clone)]
pub(crate) struct Escaped<'s> {
    inner: std::str::Chars<'s>,
    pending: &'static str,
}

impl<'s> Escaped<'s> {
    pub(crate) fn new(s: &'s str) -> Self {
        Self {
            inner: s.chars(),
            pending: "",
        }
    }
}

impl Iterator for Escaped<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let mut rest = self.pending.chars();
        if let Some(c) = rest.next() {
            self.pending = rest.as_str();
            return Some(c);
        }
        let c = self.inner.next()?;
        self.pending = match c {
            '&' => "amp;",
            '<' => "lt;",
            '>' => "gt;",
            '"' => "quot;",
            '\'' => "#x27;",
            _ => return Some(c),
        };
        Some('&')
    }
}

/// The entity for an HTML-special ASCII byte.
fn entity(b: u8) -> Option<&'static str> {
    match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'"' => Some("&quot;"),
        b'\'' => Some("&#x27;"),
        _ => None,
    }
}

/// Bytes that HTML escaping and CJSON both copy unchanged: printable ASCII except
/// `" \\ & < > '`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b: u8 = 0x20;
    while b < 0x7f {
        t[b as usize] = !matches!(b, b'"' | b'\\' | b'&' | b'<' | b'>' | b'\'');
        b += 1;
    }
    t
};

/// How many characters escaping adds to each byte: `entity(b).len() - 1`.
const GROWTH: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'&' as usize] = 4;
    t[b'<' as usize] = 3;
    t[b'>' as usize] = 3;
    t[b'"' as usize] = 5;
    t[b'\'' as usize] = 5;
    t
};

/// How many characters escaping adds to `s`.
fn escape_growth(s: &str) -> usize {
    s.bytes().map(|b| usize::from(GROWTH[usize::from(b)])).sum()
}

/// Whether `escape(t)` has at most `max` characters, so no cut applies.
fn no_cut(t: &str, max: usize) -> bool {
    // One character escapes to at most six (`&quot;`, `&#x27;`), and bytes bound characters
    // from above: count only when these bounds are not enough.
    if t.len().saturating_mul(6) <= max {
        return true;
    }
    let growth = escape_growth(t);
    t.len().saturating_add(growth) <= max || t.chars().count().saturating_add(growth) <= max
}

/// Write `escape(t)` as CJSON string content, in one pass.
fn write_html_cjson(out: &mut Vec<u8>, t: &str) {
    let bytes = t.as_bytes();
    let (mut i, mut run) = (0, 0);
    while let Some(&b) = bytes.get(i) {
        if PLAIN[usize::from(b)] {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        if let Some(e) = entity(b) {
            out.extend_from_slice(e.as_bytes());
            i += 1;
        } else {
            // A character CJSON escapes: `\`, a control character or non-ASCII.
            let len = match b {
                0..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            write_escaped(out, t.get(i..i + len).unwrap_or("\u{fffd}"));
            i += len;
        }
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Write `escape(strip(s))[:max]` (§4.4 "escape", then the cut) as a CJSON string literal.
pub(crate) fn write_sanitized(out: &mut Vec<u8>, s: &str, max: usize) {
    let t = py_strip(s);
    if no_cut(t, max) {
        out.push(b'"');
        write_html_cjson(out, t);
        out.push(b'"');
    } else {
        write_chars(out, Escaped::new(t).take(max));
    }
}

/// Put `escape(strip(s))[:max]` into `buf` (cleared first).
pub(crate) fn sanitize_into(s: &str, max: usize, buf: &mut String) {
    buf.clear();
    let t = py_strip(s);
    if !no_cut(t, max) {
        buf.extend(Escaped::new(t).take(max));
        return;
    }
    let mut run = 0;
    for (i, b) in t.bytes().enumerate() {
        if let Some(e) = entity(b) {
            buf.push_str(&t[run..i]);
            buf.push_str(e);
            run = i + 1;
        }
    }
    buf.push_str(&t[run..]);
}

/// The decoded text of string node `i`: the source slice when it has no escapes, else
/// decoded into `buf`.
pub(crate) fn node_text<'a: 't, 't>(doc: &Doc<'a>, i: usize, buf: &'t mut String) -> &'t str {
    let raw = doc.raw(i);
    if doc.node(i).flag {
        decode_into(raw, buf);
        buf.as_str()
    } else {
        raw
    }
}

/// Decode the raw content of a JSON string the parser accepted, copying unescaped stretches
/// whole.
fn decode_into(raw: &str, buf: &mut String) {
    buf.clear();
    let bytes = raw.as_bytes();
    let (mut i, mut run) = (0, 0);
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'\\') {
        let at = i + off;
        buf.push_str(&raw[run..at]);
        let (c, len) = match bytes.get(at + 1) {
            Some(b'b') => (Some('\u{8}'), 2),
            Some(b'f') => (Some('\u{c}'), 2),
            Some(b'n') => (Some('\n'), 2),
            Some(b'r') => (Some('\r'), 2),
            Some(b't') => (Some('\t'), 2),
            Some(b'u') => {
                let unit = hex4(bytes, at + 2);
                if (0xD800..0xDC00).contains(&unit) {
                    let low = hex4(bytes, at + 8);
                    let cp = 0x10000 + ((unit - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3FF);
                    (char::from_u32(cp), 12)
                } else {
                    (char::from_u32(unit), 6)
                }
            }
            // `"`, `\\`, `/`.
            Some(&e) => (Some(char::from(e)), 2),
            None => (None, 1),
        };
        buf.push(c.unwrap_or('\u{FFFD}'));
        i = (at + len).min(bytes.len());
        run = i;
    }
    buf.push_str(&raw[run..]);
}

fn hex4(bytes: &[u8], at: usize) -> u32 {
    bytes.get(at..at + 4).map_or(0xFFFD, |d| {
        d.iter()
            .fold(0, |v, &h| v * 16 + char::from(h).to_digit(16).unwrap_or(0))
    })
}
