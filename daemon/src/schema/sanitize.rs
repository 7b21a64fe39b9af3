//! The sanitiser and injection check (§4.4), and the pieces shared by every place that
//! reads a sanitised value: Python `str.strip()`, HTML escaping as a lazy character
//! iterator (so escaped text is written or measured without building it), and decoded
//! string access that borrows when the JSON string has no escapes.

use std::sync::OnceLock;

use regex::Regex;

use crate::json::{write_chars, write_str, Doc};

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
    // Cheap exit: every pattern needs at least one whitespace character.
    if !s.contains(is_py_space) {
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

fn needs_html_escape(s: &str) -> bool {
    s.bytes()
        .any(|b| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\''))
}

/// Write `escape(strip(s))[:max]` (§4.4 "escape", then the cut) as a CJSON string literal.
pub(crate) fn write_sanitized(out: &mut Vec<u8>, s: &str, max: usize) {
    let t = py_strip(s);
    // Fast path: nothing to escape and short enough that no cut can happen.
    if t.len() <= max && !needs_html_escape(t) {
        write_str(out, t);
    } else {
        write_chars(out, Escaped::new(t).take(max));
    }
}

/// Put `escape(strip(s))[:max]` into `buf` (cleared first).
pub(crate) fn sanitize_into(s: &str, max: usize, buf: &mut String) {
    buf.clear();
    let t = py_strip(s);
    if t.len() <= max && !needs_html_escape(t) {
        buf.push_str(t);
    } else {
        buf.extend(Escaped::new(t).take(max));
    }
}

/// The decoded text of string node `i`: the source slice when it has no escapes, else
/// decoded into `buf`.
pub(crate) fn node_text<'a: 't, 't>(doc: &Doc<'a>, i: usize, buf: &'t mut String) -> &'t str {
    if doc.node(i).flag {
        doc.str_into(i, buf);
        buf.as_str()
    } else {
        doc.raw(i)
    }
}
