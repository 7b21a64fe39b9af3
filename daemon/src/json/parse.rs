//! The strict reader: RFC 8259 plus the contract's extra rules (§4.7).

use std::borrow::Cow;
use std::fmt;

/// Maximum nesting depth of arrays and objects (CONTRACT.md §4.7).
pub(crate) const MAX_DEPTH: usize = 64;
/// Python refuses to convert integers longer than this many digits; so do we.
const MAX_INT_DIGITS: usize = 4300;
/// Objects with more members than this are checked for duplicates by sorting instead of
/// pairwise comparison.
const PAIRWISE_DUP_LIMIT: usize = 16;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    /// A number token without `.`, `e` or `E`.
    Int,
    /// A number token with `.`, `e` or `E`.
    Float,
    Str,
    Arr,
    Obj,
}

/// One value (or object key) of a document.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub kind: Kind,
    /// For strings: the raw text contains at least one backslash escape.
    /// For booleans: the value.
    pub flag: bool,
    /// Byte span in the source: strings exclude the quotes; containers cover the brackets.
    pub start: usize,
    pub end: usize,
    /// Index of the first node after this node's subtree.
    pub next: usize,
    /// Number of elements (arrays) or members (objects); 0 for scalars.
    pub count: usize,
}

/// Why a body is not acceptable JSON. The text is for logs and DLQ traces, never parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    NotUtf8,
    Empty,
    UnexpectedByte(usize),
    UnexpectedEnd,
    TrailingData(usize),
    TooDeep(usize),
    ControlCharInString(usize),
    BadEscape(usize),
    LoneSurrogate(usize),
    BadNumber(usize),
    NumberOutOfRange(usize),
    DuplicateKey(usize),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotUtf8 => f.write_str("body is not valid UTF-8"),
            Self::Empty => f.write_str("body is empty"),
            Self::UnexpectedByte(at) => write!(f, "unexpected byte at offset {at}"),
            Self::UnexpectedEnd => f.write_str("unexpected end of input"),
            Self::TrailingData(at) => write!(f, "trailing data at offset {at}"),
            Self::TooDeep(at) => write!(f, "nesting deeper than {MAX_DEPTH} at offset {at}"),
            Self::ControlCharInString(at) => {
                write!(f, "unescaped control character in string at offset {at}")
            }
            Self::BadEscape(at) => write!(f, "invalid escape at offset {at}"),
            Self::LoneSurrogate(at) => write!(f, "lone surrogate escape at offset {at}"),
            Self::BadNumber(at) => write!(f, "invalid number at offset {at}"),
            Self::NumberOutOfRange(at) => write!(f, "number out of range at offset {at}"),
            Self::DuplicateKey(at) => write!(f, "duplicate object key at offset {at}"),
        }
    }
}

impl std::error::Error for JsonError {}

/// A reusable parse buffer. Keep one per connection: after warm-up, parsing allocates nothing.
#[derive(Default, Debug)]
pub struct Tape {
    nodes: Vec<Node>,
    /// Scratch space for duplicate-key checks: `(key_prefix, key node)`.
    keys: Vec<(u64, usize)>,
}

impl Tape {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse `src` strictly. On success the returned [`Doc`] borrows both the source and the tape.
    pub fn parse<'a>(&'a mut self, src: &'a [u8]) -> Result<Doc<'a>, JsonError> {
        let text = std::str::from_utf8(src).map_err(|_| JsonError::NotUtf8)?;
        self.nodes.clear();
        let mut p = Parser {
            text,
            src,
            pos: 0,
            nodes: &mut self.nodes,
            keys: &mut self.keys,
        };
        p.skip_ws();
        if p.pos == src.len() {
            return Err(JsonError::Empty);
        }
        p.value(0)?;
        p.skip_ws();
        if p.pos != src.len() {
            return Err(JsonError::TrailingData(p.pos));
        }
        Ok(Doc {
            src: text,
            nodes: &self.nodes,
        })
    }
}

struct Parser<'s, 't> {
    text: &'s str,
    src: &'s [u8],
    pos: usize,
    nodes: &'t mut Vec<Node>,
    keys: &'t mut Vec<(u64, usize)>,
}

impl Parser<'_, '_> {
    fn skip_ws(&mut self) {
        while let Some(&b) = self.src.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Result<u8, JsonError> {
        self.src
            .get(self.pos)
            .copied()
            .ok_or(JsonError::UnexpectedEnd)
    }

    fn push(&mut self, kind: Kind, flag: bool, start: usize, end: usize) -> usize {
        let idx = self.nodes.len();
        self.nodes.push(Node {
            kind,
            flag,
            start,
            end,
            next: idx + 1,
            count: 0,
        });
        idx
    }

    fn literal(&mut self, word: &[u8], kind: Kind, flag: bool) -> Result<(), JsonError> {
        let start = self.pos;
        if self.src.get(start..start + word.len()) == Some(word) {
            self.pos += word.len();
            self.push(kind, flag, start, self.pos);
            Ok(())
        } else if self.src.len() < start + word.len() && word.starts_with(&self.src[start..]) {
            Err(JsonError::UnexpectedEnd)
        } else {
            Err(JsonError::UnexpectedByte(start))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), JsonError> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => {
                let (start, end, escaped) = self.string()?;
                self.push(Kind::Str, escaped, start, end);
                Ok(())
            }
            b't' => self.literal(b"true", Kind::Bool, true),
            b'f' => self.literal(b"false", Kind::Bool, false),
            b'n' => self.literal(b"null", Kind::Null, false),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(JsonError::UnexpectedByte(self.pos)),
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep(self.pos));
        }
        let start = self.pos;
        let idx = self.push(Kind::Arr, false, start, start);
        self.pos += 1;
        self.skip_ws();
        let mut count = 0;
        if self.peek()? == b']' {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                self.value(depth)?;
                count += 1;
                self.skip_ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b']' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::UnexpectedByte(self.pos)),
                }
            }
        }
        let next = self.nodes.len();
        let node = &mut self.nodes[idx];
        node.end = self.pos;
        node.next = next;
        node.count = count;
        Ok(())
    }

    fn object(&mut self, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep(self.pos));
        }
        let start = self.pos;
        let idx = self.push(Kind::Obj, false, start, start);
        self.pos += 1;
        self.skip_ws();
        let mut count = 0;
        if self.peek()? == b'}' {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                if self.peek()? != b'"' {
                    return Err(JsonError::UnexpectedByte(self.pos));
                }
                let (ks, ke, kesc) = self.string()?;
                self.push(Kind::Str, kesc, ks, ke);
                self.skip_ws();
                if self.peek()? != b':' {
                    return Err(JsonError::UnexpectedByte(self.pos));
                }
                self.pos += 1;
                self.skip_ws();
                self.value(depth)?;
                count += 1;
                self.skip_ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::UnexpectedByte(self.pos)),
                }
            }
        }
        let next = self.nodes.len();
        {
            let node = &mut self.nodes[idx];
            node.end = self.pos;
            node.next = next;
            node.count = count;
        }
        self.check_duplicates(idx)
    }

    /// Refuse an object in which two keys decode to the same string.
    fn check_duplicates(&mut self, obj: usize) -> Result<(), JsonError> {
        let count = self.nodes[obj].count;
        if count < 2 {
            return Ok(());
        }
        let doc = Doc {
            src: self.text,
            nodes: self.nodes,
        };
        self.keys.clear();
        if count <= PAIRWISE_DUP_LIMIT {
            self.keys.extend(doc.members(obj).map(|(k, _)| (0, k)));
            for (i, &(_, a)) in self.keys.iter().enumerate() {
                for &(_, b) in &self.keys[i + 1..] {
                    if doc.key_eq(a, b) {
                        return Err(JsonError::DuplicateKey(doc.nodes[b].start));
                    }
                }
            }
        } else {
            // Sorted by the first eight decoded bytes, then (rarely) by the whole key: the same
            // order as `key_cmp` alone, so the same pair is reported, with fewer full compares.
            self.keys
                .extend(doc.members(obj).map(|(k, _)| (doc.key_prefix(k), k)));
            self.keys
                .sort_by(|&(pa, a), &(pb, b)| pa.cmp(&pb).then_with(|| doc.key_cmp(a, b)));
            for pair in self.keys.windows(2) {
                let ((pa, a), (pb, b)) = (pair[0], pair[1]);
                if pa == pb && doc.key_eq(a, b) {
                    let at = doc.nodes[a].start.max(doc.nodes[b].start);
                    return Err(JsonError::DuplicateKey(at));
                }
            }
        }
        Ok(())
    }

    /// Scan a string starting at the opening quote. Returns (start, end, has_escapes) of the
    /// content between the quotes.
    fn string(&mut self) -> Result<(usize, usize, bool), JsonError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos = string_stop(self.src, self.pos);
            let b = self.peek()?;
            match b {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    return Ok((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    let at = self.pos;
                    self.pos += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            self.pos += 1;
                            let unit = self.hex4(at)?;
                            if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate must be followed by an escaped low surrogate.
                                if self.src.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(JsonError::LoneSurrogate(at));
                                }
                                self.pos += 2;
                                let low = self.hex4(at)?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(JsonError::LoneSurrogate(at));
                                }
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err(JsonError::LoneSurrogate(at));
                            }
                        }
                        _ => return Err(JsonError::BadEscape(at)),
                    }
                }
                _ => return Err(JsonError::ControlCharInString(self.pos)),
            }
        }
    }

    fn hex4(&mut self, at: usize) -> Result<u32, JsonError> {
        let digits = self
            .src
            .get(self.pos..self.pos + 4)
            .ok_or(JsonError::UnexpectedEnd)?;
        let mut v = 0u32;
        for &d in digits {
            v = v * 16 + hex_val(d).ok_or(JsonError::BadEscape(at))?;
        }
        self.pos += 4;
        Ok(v)
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        let src = self.src;
        let mut p = self.pos;
        if src.get(p) == Some(&b'-') {
            p += 1;
        }
        let int_start = p;
        match src.get(p) {
            Some(b'0') => p += 1,
            Some(b'1'..=b'9') => {
                while matches!(src.get(p), Some(b'0'..=b'9')) {
                    p += 1;
                }
            }
            Some(_) => return Err(JsonError::BadNumber(start)),
            None => return Err(JsonError::UnexpectedEnd),
        }
        let int_digits = p - int_start;
        let mut float = false;
        if src.get(p) == Some(&b'.') {
            float = true;
            p += 1;
            let frac = p;
            while matches!(src.get(p), Some(b'0'..=b'9')) {
                p += 1;
            }
            if p == frac {
                return Err(bad_or_end(src, p, start));
            }
        }
        if matches!(src.get(p), Some(b'e' | b'E')) {
            float = true;
            p += 1;
            if matches!(src.get(p), Some(b'+' | b'-')) {
                p += 1;
            }
            let exp = p;
            while matches!(src.get(p), Some(b'0'..=b'9')) {
                p += 1;
            }
            if p == exp {
                return Err(bad_or_end(src, p, start));
            }
        }
        self.pos = p;
        if float {
            let v: f64 = self.text[start..p]
                .parse()
                .map_err(|_| JsonError::BadNumber(start))?;
            if !v.is_finite() {
                return Err(JsonError::NumberOutOfRange(start));
            }
        } else if int_digits > MAX_INT_DIGITS {
            return Err(JsonError::NumberOutOfRange(start));
        }
        self.push(if float { Kind::Float } else { Kind::Int }, false, start, p);
        Ok(())
    }
}

/// The index of the first byte at or after `from` that ends a plain stretch of string content:
/// `"`, `\\` or a control character (below 0x20); `src.len()` when there is none.
///
/// Strings are most of a telemetry body, so this runs eight bytes at a time: in each
/// little-endian word, `(v - 0x01…) & !v & 0x80…` marks the zero bytes of `v` (here of the
/// word xor `"` and xor `\\`), and `(w - 0x20…) & !w & 0x80…` the bytes of `w` below 0x20. A
/// mark can be spurious only above a real one (a borrow runs upwards from a real hit), so the
/// lowest mark is always exact.
pub(super) fn string_stop(src: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let rest = src.get(from..).unwrap_or_default();
    let mut words = rest.chunks_exact(8);
    let mut at = from;
    for word in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let marks = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if marks != 0 {
            // At most 7: the mark is the high bit of one of the eight bytes.
            return at + (marks.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    for &b in words.remainder() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return at;
        }
        at += 1;
    }
    at
}

fn bad_or_end(src: &[u8], p: usize, start: usize) -> JsonError {
    if p >= src.len() {
        JsonError::UnexpectedEnd
    } else {
        JsonError::BadNumber(start)
    }
}

fn hex_val(d: u8) -> Option<u32> {
    match d {
        b'0'..=b'9' => Some(u32::from(d - b'0')),
        b'a'..=b'f' => Some(u32::from(d - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(d - b'A' + 10)),
        _ => None,
    }
}

/// A parsed document: the source text and its tape. Node 0 is the root.
#[derive(Clone, Copy)]
pub struct Doc<'a> {
    pub(crate) src: &'a str,
    pub(crate) nodes: &'a [Node],
}

impl<'a> Doc<'a> {
    pub const ROOT: usize = 0;

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn kind(&self, i: usize) -> Kind {
        self.nodes[i].kind
    }

    /// The raw source text of a node (for strings: between the quotes, escapes undecoded).
    pub fn raw(&self, i: usize) -> &'a str {
        let n = &self.nodes[i];
        &self.src[n.start..n.end]
    }

    /// The whole source text.
    pub fn source(&self) -> &'a str {
        self.src
    }

    /// Children of an array.
    pub fn elements(&self, arr: usize) -> Children<'a> {
        Children {
            nodes: self.nodes,
            cur: arr + 1,
            left: self.nodes[arr].count,
        }
    }

    /// `(key, value)` node pairs of an object, in document order.
    pub fn members(&self, obj: usize) -> Members<'a> {
        Members {
            nodes: self.nodes,
            cur: obj + 1,
            left: self.nodes[obj].count,
        }
    }

    /// Value of member `key` of object `obj`, if present.
    pub fn get(&self, obj: usize, key: &str) -> Option<usize> {
        self.members(obj)
            .find(|&(k, _)| self.str_eq(k, key))
            .map(|(_, v)| v)
    }

    /// Whether string node `i` decodes to exactly `s`.
    pub fn str_eq(&self, i: usize, s: &str) -> bool {
        let n = &self.nodes[i];
        if !n.flag {
            return &self.src[n.start..n.end] == s;
        }
        self.chars(i).eq(s.chars())
    }

    /// Decoded value of string node `i`; borrows when it has no escapes.
    pub fn str(&self, i: usize) -> Cow<'a, str> {
        let n = &self.nodes[i];
        let raw = &self.src[n.start..n.end];
        if n.flag {
            Cow::Owned(self.chars(i).collect())
        } else {
            Cow::Borrowed(raw)
        }
    }

    /// Decode string node `i` into `out` (cleared first). Allocation-free once `out` is warm.
    pub fn str_into(&self, i: usize, out: &mut String) {
        out.clear();
        let n = &self.nodes[i];
        if n.flag {
            out.extend(self.chars(i));
        } else {
            out.push_str(&self.src[n.start..n.end]);
        }
    }

    /// Iterator over the decoded characters of string node `i`.
    pub fn chars(&self, i: usize) -> StrChars<'a> {
        let n = &self.nodes[i];
        StrChars {
            raw: &self.src.as_bytes()[n.start..n.end],
            text: &self.src[n.start..n.end],
            pos: 0,
        }
    }

    /// Number of decoded characters (Unicode scalar values) of string node `i`.
    pub fn char_len(&self, i: usize) -> usize {
        let n = &self.nodes[i];
        if n.flag {
            self.chars(i).count()
        } else {
            self.src[n.start..n.end].chars().count()
        }
    }

    /// Compare two string nodes by decoded content (code point order = UTF-8 byte order).
    pub fn key_cmp(&self, a: usize, b: usize) -> std::cmp::Ordering {
        let (na, nb) = (&self.nodes[a], &self.nodes[b]);
        if !na.flag && !nb.flag {
            return self.src[na.start..na.end].cmp(&self.src[nb.start..nb.end]);
        }
        self.chars(a).cmp(self.chars(b))
    }

    /// Whether two string nodes decode to the same text (lengths first when neither has
    /// escapes).
    pub fn key_eq(&self, a: usize, b: usize) -> bool {
        let (na, nb) = (&self.nodes[a], &self.nodes[b]);
        if !na.flag && !nb.flag {
            return self.src.as_bytes()[na.start..na.end] == self.src.as_bytes()[nb.start..nb.end];
        }
        self.chars(a).eq(self.chars(b))
    }

    /// The first eight bytes of the decoded UTF-8 of string node `i`, big-endian, zero-padded.
    /// Two keys whose prefixes differ compare (`key_cmp`) as their prefixes do.
    pub fn key_prefix(&self, i: usize) -> u64 {
        let n = &self.nodes[i];
        let mut bytes = [0u8; 8];
        if n.flag {
            let mut len = 0;
            let mut utf8 = [0u8; 4];
            for c in self.chars(i) {
                for &b in c.encode_utf8(&mut utf8).as_bytes() {
                    if len == 8 {
                        return u64::from_be_bytes(bytes);
                    }
                    bytes[len] = b;
                    len += 1;
                }
            }
        } else {
            let raw = &self.src.as_bytes()[n.start..n.end];
            let len = raw.len().min(8);
            bytes[..len].copy_from_slice(&raw[..len]);
        }
        u64::from_be_bytes(bytes)
    }

    /// The value of an integer node, if it fits an `i64`.
    pub fn as_i64(&self, i: usize) -> Option<i64> {
        match self.nodes[i].kind {
            Kind::Int => self.raw(i).parse().ok(),
            _ => None,
        }
    }

    /// The value of a number node as a double.
    pub fn as_f64(&self, i: usize) -> Option<f64> {
        match self.nodes[i].kind {
            Kind::Int | Kind::Float => self.raw(i).parse().ok(),
            _ => None,
        }
    }
}

/// Iterator over array elements.
pub struct Children<'a> {
    nodes: &'a [Node],
    cur: usize,
    left: usize,
}

impl Iterator for Children<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.cur;
        self.cur = self.nodes[i].next;
        Some(i)
    }
}

/// Iterator over object members as `(key node, value node)`.
pub struct Members<'a> {
    nodes: &'a [Node],
    cur: usize,
    left: usize,
}

impl Iterator for Members<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let k = self.cur;
        let v = k + 1;
        self.cur = self.nodes[v].next;
        Some((k, v))
    }
}

/// Decoded characters of a JSON string whose raw text was validated by the parser.
pub struct StrChars<'a> {
    raw: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl StrChars<'_> {
    fn hex4_at(&self, p: usize) -> u32 {
        self.raw[p..p + 4]
            .iter()
            .fold(0, |v, &d| v * 16 + hex_val(d).unwrap_or(0))
    }
}

impl Iterator for StrChars<'_> {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        let b = *self.raw.get(self.pos)?;
        if b != b'\\' {
            let c = self.text[self.pos..].chars().next()?;
            self.pos += c.len_utf8();
            return Some(c);
        }
        let e = *self.raw.get(self.pos + 1)?;
        self.pos += 2;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            _ => {
                // `u`: validated by the parser, including surrogate pairs.
                let unit = self.hex4_at(self.pos);
                self.pos += 4;
                if (0xD800..0xDC00).contains(&unit) {
                    let low = self.hex4_at(self.pos + 2);
                    self.pos += 6;
                    let cp = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    char::from_u32(cp).unwrap_or('\u{FFFD}')
                } else {
                    char::from_u32(unit).unwrap_or('\u{FFFD}')
                }
            }
        };
        Some(c)
    }
}
