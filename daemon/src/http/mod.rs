//! Stage 2: HTTP/1.1 framing (CONTRACT.md §2). Heads are parsed with httparse into a [`Head`]
//! of byte spans into the connection's buffer, so nothing is copied or allocated per request.
//! The connection loop (deadlines, keep-alive, body reading) is in `conn`.

pub mod conn;

use crate::ids::UuidText;
use crate::json::write_str;

/// Maximum number of header lines; more is answered 431.
pub const MAX_HEADERS: usize = 64;

/// A byte range of the connection buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start..self.end]
    }

    /// The span as text. Header values are checked to be visible ASCII, so this cannot fail
    /// for them.
    pub fn str<'a>(&self, buf: &'a [u8]) -> &'a str {
        std::str::from_utf8(self.get(buf)).unwrap_or("")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// The parts of a request head the gateway uses.
#[derive(Clone, Debug, Default)]
pub struct Head {
    pub method: Option<Method>,
    pub path: Span,
    /// Length of the head including the blank line.
    pub len: usize,
    pub http10: bool,
    pub content_length: Option<u64>,
    pub transfer_encoding: bool,
    pub expect_continue: bool,
    /// The client asked to close after this response (or HTTP/1.0 without keep-alive).
    pub close: bool,
    pub content_type: Option<Span>,
    pub content_encoding: Option<Span>,
    pub service_identity: Option<Span>,
    pub cert_sha256: Option<Span>,
    pub timestamp: Option<Span>,
    pub nonce: Option<Span>,
    pub signature: Option<Span>,
    pub idempotency_key: Option<Span>,
}

/// Why a head is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400 `Malformed HTTP request`.
    Malformed,
    /// 431 `Request header fields too large`.
    TooLarge,
}

/// Position just past the `\r\n\r\n` that ends the head, searching from `from`.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// Whether the first line (the request line) is complete.
pub fn has_request_line(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\r\n")
}

fn span_of(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    Span {
        start,
        end: start + part.len(),
    }
}

fn set_once(slot: &mut Option<Span>, v: Span) -> Result<(), HeadError> {
    if slot.replace(v).is_some() {
        return Err(HeadError::Malformed);
    }
    Ok(())
}

/// Parse a complete head (`buf[..end]` ends with the blank line).
pub fn parse_head(buf: &[u8]) -> Result<Head, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let mut h = Head {
        len,
        ..Head::default()
    };
    h.method = Some(match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some(_) => Method::Other,
        None => return Err(HeadError::Malformed),
    });
    let path = req.path.ok_or(HeadError::Malformed)?;
    if !path.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    h.path = span_of(buf, path.as_bytes());
    h.http10 = req.version == Some(0);
    let mut keep_alive = false;
    for hdr in req.headers.iter() {
        let v = hdr.value;
        if !v.iter().all(|&b| (0x20..0x7F).contains(&b) || b == b'\t') {
            return Err(HeadError::Malformed);
        }
        let span = span_of(buf, trim(v));
        let name = hdr.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            let t = span.get(buf);
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed);
            }
            let n: u64 = std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HeadError::Malformed)?;
            if h.content_length.replace(n).is_some() {
                return Err(HeadError::Malformed);
            }
        } else if is("transfer-encoding") {
            h.transfer_encoding = true;
        } else if is("content-type") {
            set_once(&mut h.content_type, span)?;
        } else if is("content-encoding") {
            set_once(&mut h.content_encoding, span)?;
        } else if is("x-service-identity") {
            set_once(&mut h.service_identity, span)?;
        } else if is("x-client-cert-sha256") {
            set_once(&mut h.cert_sha256, span)?;
        } else if is("x-telemetry-timestamp") {
            set_once(&mut h.timestamp, span)?;
        } else if is("x-telemetry-nonce") {
            set_once(&mut h.nonce, span)?;
        } else if is("x-telemetry-signature") {
            set_once(&mut h.signature, span)?;
        } else if is("idempotency-key") {
            h.idempotency_key = Some(span);
        } else if is("expect") {
            h.expect_continue = span.get(buf).eq_ignore_ascii_case(b"100-continue");
        } else if is("connection") {
            for token in span.get(buf).split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    h.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if h.http10 && !keep_alive {
        h.close = true;
    }
    Ok(h)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    &v[start..end]
}

/// Whether a `Content-Type` value is JSON (§2.2): media type `application/json`, parameters
/// allowed, `charset` only `utf-8`.
pub fn is_json_content_type(v: &[u8]) -> bool {
    let mut parts = v.split(|&b| b == b';');
    let media = trim(parts.next().unwrap_or_default());
    if !media.eq_ignore_ascii_case(b"application/json") {
        return false;
    }
    for p in parts {
        let p = trim(p);
        if p.is_empty() {
            continue;
        }
        let Some(eq) = p.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (name, value) = (trim(&p[..eq]), trim(&p[eq + 1..]));
        if name.eq_ignore_ascii_case(b"charset") {
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            if !value.eq_ignore_ascii_case(b"utf-8") {
                return false;
            }
        }
    }
    true
}

/// Whether a `Content-Encoding` value is acceptable (absent or `identity`).
pub fn is_identity_encoding(v: Option<&[u8]>) -> bool {
    v.is_none_or(|v| v.eq_ignore_ascii_case(b"identity"))
}

/// A response to write. The body is in the connection's response buffer.
#[derive(Clone, Debug, Default)]
pub struct Response {
    pub status: u16,
    pub request_id: Option<UuidText>,
    pub retry_after: Option<u64>,
    pub allow: Option<&'static str>,
    pub idempotent_replay: bool,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Write status line, headers and body into `out`.
pub fn write_response(out: &mut Vec<u8>, r: &Response, body: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::json::write_u64(out, u64::from(r.status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(r.status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    crate::json::write_u64(out, u64::try_from(body.len()).unwrap_or(0));
    if let Some(id) = &r.request_id {
        out.extend_from_slice(b"\r\nX-Request-Id: ");
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(s) = r.retry_after {
        out.extend_from_slice(b"\r\nRetry-After: ");
        crate::json::write_u64(out, s);
    }
    if let Some(a) = r.allow {
        out.extend_from_slice(b"\r\nAllow: ");
        out.extend_from_slice(a.as_bytes());
    }
    if r.idempotent_replay {
        out.extend_from_slice(b"\r\nX-Idempotent-Replay: true");
    }
    if r.close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// `{"detail":"…"}`.
pub fn error_body(out: &mut Vec<u8>, detail: &str) {
    out.extend_from_slice(b"{\"detail\":");
    write_str(out, detail);
    out.push(b'}');
}

#[cfg(test)]
mod tests;
