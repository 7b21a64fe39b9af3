//! The NATS client protocol, server side of the wire: `INFO`, `MSG`, `HMSG`, `PING`, `PONG`,
//! `+OK`, `-ERR`. Pure parsing of a byte buffer; every length is bounded, and anything
//! malformed is an error (the connection is then dropped and re-established), never a panic.

use std::fmt;

/// The longest control line accepted (an `INFO` line carries server JSON).
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One operation from the server. Slices borrow the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// `INFO {json}`.
    Info(&'a [u8]),
    /// `MSG` or `HMSG` (with `headers` when present).
    Msg(Msg<'a>),
    Ping,
    Pong,
    Ok,
    /// `-ERR 'text'`.
    Err(&'a str),
}

/// A delivered message.
#[derive(Debug, PartialEq, Eq)]
pub struct Msg<'a> {
    pub subject: &'a str,
    pub sid: &'a str,
    pub reply: Option<&'a str>,
    /// The raw header block (`NATS/1.0 …\r\n…\r\n\r\n`) for `HMSG`.
    pub headers: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

impl Msg<'_> {
    /// The status code of a header block (`NATS/1.0 503` → 503), if any.
    pub fn status(&self) -> Option<u16> {
        let h = self.headers?;
        let line = h.split(|&b| b == b'\r').next()?;
        let text = std::str::from_utf8(line).ok()?;
        let mut parts = text.split_whitespace();
        if parts.next()? != "NATS/1.0" {
            return None;
        }
        parts.next()?.parse().ok()
    }
}

/// Why the server's bytes could not be understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoError {
    LineTooLong,
    UnknownOp(String),
    BadArgs(&'static str),
    TooLarge { size: usize, max: usize },
    BadTerminator,
    NotUtf8,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::LineTooLong => {
                write!(
                    f,
                    "server control line longer than {MAX_CONTROL_LINE} bytes"
                )
            }
            ProtoError::UnknownOp(op) => write!(f, "unknown server operation {op:?}"),
            ProtoError::BadArgs(op) => write!(f, "malformed {op} arguments"),
            ProtoError::TooLarge { size, max } => {
                write!(
                    f,
                    "server message of {size} bytes exceeds the limit of {max}"
                )
            }
            ProtoError::BadTerminator => f.write_str("server message not terminated by CRLF"),
            ProtoError::NotUtf8 => f.write_str("server control line is not UTF-8"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Parse the next operation at the start of `buf`. `Ok(None)`: more bytes are needed.
/// On success, returns the operation and the number of bytes it used.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<(ServerOp<'_>, usize)>, ProtoError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ProtoError::LineTooLong);
        }
        return Ok(None);
    };
    if eol > MAX_CONTROL_LINE {
        return Err(ProtoError::LineTooLong);
    }
    let line = std::str::from_utf8(&buf[..eol]).map_err(|_| ProtoError::NotUtf8)?;
    let after = eol + 2;
    let (op, rest) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim_start()),
        None => (line, ""),
    };
    let op_upper = op.to_ascii_uppercase();
    match op_upper.as_str() {
        "PING" => Ok(Some((ServerOp::Ping, after))),
        "PONG" => Ok(Some((ServerOp::Pong, after))),
        "+OK" => Ok(Some((ServerOp::Ok, after))),
        "-ERR" => Ok(Some((ServerOp::Err(rest.trim_matches('\'')), after))),
        "INFO" => Ok(Some((ServerOp::Info(rest.as_bytes()), after))),
        "MSG" | "HMSG" => {
            let hmsg = op_upper == "HMSG";
            let name = if hmsg { "HMSG" } else { "MSG" };
            let args: heapless::Vec<&str, 5> = rest.split_ascii_whitespace().take(5).collect();
            if rest.split_ascii_whitespace().count() > 5 {
                return Err(ProtoError::BadArgs(name));
            }
            let num = |s: &str| -> Result<usize, ProtoError> {
                if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ProtoError::BadArgs(name));
                }
                s.parse().map_err(|_| ProtoError::BadArgs(name))
            };
            // MSG subject sid [reply] size | HMSG subject sid [reply] hdr_len total_len
            let (subject, sid, reply, hdr_len, total) = match (hmsg, args.len()) {
                (false, 3) => (args[0], args[1], None, 0, num(args[2])?),
                (false, 4) => (args[0], args[1], Some(args[2]), 0, num(args[3])?),
                (true, 4) => (args[0], args[1], None, num(args[2])?, num(args[3])?),
                (true, 5) => (
                    args[0],
                    args[1],
                    Some(args[2]),
                    num(args[3])?,
                    num(args[4])?,
                ),
                _ => return Err(ProtoError::BadArgs(name)),
            };
            if hdr_len > total {
                return Err(ProtoError::BadArgs(name));
            }
            if total > max_payload {
                return Err(ProtoError::TooLarge {
                    size: total,
                    max: max_payload,
                });
            }
            let end = after + total;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtoError::BadTerminator);
            }
            let body = &buf[after..end];
            let (headers, payload) = if hmsg {
                (Some(&body[..hdr_len]), &body[hdr_len..])
            } else {
                (None, body)
            };
            Ok(Some((
                ServerOp::Msg(Msg {
                    subject,
                    sid,
                    reply,
                    headers,
                    payload,
                }),
                end + 2,
            )))
        }
        _ => Err(ProtoError::UnknownOp(op.chars().take(32).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> ServerOp<'_> {
        parse(buf, 1 << 20).unwrap().unwrap().0
    }

    #[test]
    fn control_lines() {
        assert_eq!(one(b"PING\r\n"), ServerOp::Ping);
        assert_eq!(one(b"pong\r\n"), ServerOp::Pong);
        assert_eq!(one(b"+OK\r\n"), ServerOp::Ok);
        assert_eq!(
            one(b"-ERR 'Authorization Violation'\r\n"),
            ServerOp::Err("Authorization Violation")
        );
        assert_eq!(one(b"INFO {\"a\":1}\r\n"), ServerOp::Info(b"{\"a\":1}"));
        assert_eq!(parse(b"PIN", 10).unwrap(), None);
    }

    #[test]
    fn messages_with_and_without_headers() {
        let (op, n) = parse(b"MSG a.b 1 _INBOX.x.7 5\r\nhello\r\nPING\r\n", 100)
            .unwrap()
            .unwrap();
        assert_eq!(n, 31);
        let ServerOp::Msg(m) = op else { panic!() };
        assert_eq!(
            (m.subject, m.sid, m.reply, m.payload),
            ("a.b", "1", Some("_INBOX.x.7"), &b"hello"[..])
        );
        let raw = b"HMSG _INBOX.x.1 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n";
        let ServerOp::Msg(m) = one(raw) else { panic!() };
        assert_eq!(m.status(), Some(503));
        assert_eq!(m.payload, b"");
        // Incomplete payloads wait for more bytes.
        assert_eq!(parse(b"MSG a 1 5\r\nhel", 100).unwrap(), None);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let long = vec![b'A'; MAX_CONTROL_LINE + 1];
        assert_eq!(parse(&long, 100), Err(ProtoError::LineTooLong));
        let cases: &[&[u8]] = &[
            b"BOGUS\r\n",
            b"MSG\r\n",
            b"MSG a\r\n",
            b"MSG a 1 x\r\n",
            b"MSG a 1 -5\r\n",
            b"MSG a 1 2 3 4 5\r\n",
            b"MSG a 1 999999999999999\r\n",
            b"HMSG a 1 10 5\r\n",
            b"MSG a 1 2\r\nabXY",
            b"\xff\xfe\r\n",
        ];
        for c in cases {
            assert!(parse(c, 100).is_err(), "{:?}", String::from_utf8_lossy(c));
        }
        assert_eq!(
            parse(b"MSG a 1 101\r\n", 100),
            Err(ProtoError::TooLarge {
                size: 101,
                max: 100
            })
        );
    }
}
