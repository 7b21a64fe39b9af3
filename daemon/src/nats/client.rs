//! One NATS connection over TLS on smol: `INFO` → TLS handshake (with our client
//! certificate) → `CONNECT` + `PING` → `PONG`, then a reply inbox subscription. Publishes are
//! buffered and flushed together; replies are matched to requests by a number at the end of
//! the reply subject. The server must offer TLS: a plaintext queue connection is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::client::TlsStream;
use rustls::pki_types::ServerName;
use smol::net::TcpStream;
use smol::Timer;

use super::auth::Credentials;
use super::proto::{self, ServerOp, MAX_CONTROL_LINE};
use super::NatsError;
use crate::json::{Cjson, Doc, Kind, Tape};

/// Where and how to connect.
pub struct NatsOptions {
    pub addr: SocketAddr,
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub credentials: Credentials,
    /// Connection name shown by the server.
    pub name: String,
    pub timeout: Duration,
}

/// What the server said about itself.
#[derive(Clone, Debug, Default)]
pub struct ServerInfo {
    pub server_id: String,
    pub version: String,
    pub max_payload: usize,
    pub headers: bool,
    pub jetstream: bool,
    pub tls_required: bool,
    pub tls_available: bool,
    pub nonce: Option<String>,
}

pub(crate) fn parse_info(json: &[u8]) -> Result<ServerInfo, NatsError> {
    let mut tape = Tape::new();
    let doc = tape
        .parse(json)
        .map_err(|e| NatsError::Protocol(format!("INFO is not JSON: {e}")))?;
    if doc.kind(Doc::ROOT) != Kind::Obj {
        return Err(NatsError::Protocol("INFO is not a JSON object".into()));
    }
    let s = |k: &str| {
        doc.get(Doc::ROOT, k)
            .filter(|&i| doc.kind(i) == Kind::Str)
            .map(|i| doc.str(i).into_owned())
    };
    let b = |k: &str| {
        doc.get(Doc::ROOT, k)
            .is_some_and(|i| doc.kind(i) == Kind::Bool && doc.node(i).flag)
    };
    let max_payload = doc
        .get(Doc::ROOT, "max_payload")
        .and_then(|i| doc.as_i64(i))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(1 << 20)
        .clamp(1024, 64 << 20);
    Ok(ServerInfo {
        server_id: s("server_id").unwrap_or_default(),
        version: s("version").unwrap_or_default(),
        max_payload,
        headers: b("headers"),
        jetstream: b("jetstream"),
        tls_required: b("tls_required"),
        tls_available: b("tls_available"),
        nonce: s("nonce"),
    })
}

/// The request number given to messages of the subscription made with
/// [`Connection::subscribe`] (requests count up from 1 and never reach it).
pub const SUBSCRIPTION: u64 = u64::MAX;

/// A reply delivered to our inbox (or a message of the subscription: id [`SUBSCRIPTION`]).
#[derive(Debug)]
pub struct Reply {
    /// The request number (the last token of the reply subject).
    pub id: u64,
    /// The header status (`503` = no responders), if the reply had headers.
    pub status: Option<u16>,
    pub payload: Vec<u8>,
}

/// An established connection.
pub struct Connection {
    io: TlsStream<TcpStream>,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    pub info: ServerInfo,
    inbox: String,
    next_id: u64,
}

async fn timed<T>(
    d: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, NatsError>>,
) -> Result<T, NatsError> {
    futures_lite::future::or(f, async {
        Timer::after(d).await;
        Err(NatsError::Timeout(what))
    })
    .await
}

/// Read one CRLF line from a plaintext stream (the `INFO` before TLS).
async fn read_plain_line(tcp: &mut TcpStream) -> Result<Vec<u8>, NatsError> {
    let mut line = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    loop {
        let n = tcp.read(&mut byte).await.map_err(NatsError::Io)?;
        if n == 0 {
            return Err(NatsError::Closed);
        }
        line.push(byte[0]);
        if line.ends_with(b"\r\n") {
            return Ok(line);
        }
        if line.len() > MAX_CONTROL_LINE {
            return Err(NatsError::Protocol("INFO line too long".into()));
        }
    }
}

impl Connection {
    /// Connect, authenticate and subscribe the reply inbox.
    pub async fn connect(opts: &NatsOptions, inbox_token: &str) -> Result<Self, NatsError> {
        timed(
            opts.timeout,
            "connect",
            Self::connect_inner(opts, inbox_token),
        )
        .await
    }

    async fn connect_inner(opts: &NatsOptions, inbox_token: &str) -> Result<Self, NatsError> {
        let mut tcp = TcpStream::connect(opts.addr).await.map_err(NatsError::Io)?;
        let _ = tcp.set_nodelay(true);
        let line = read_plain_line(&mut tcp).await?;
        let info = match proto::parse(&line, 1 << 20) {
            Ok(Some((ServerOp::Info(json), _))) => parse_info(json)?,
            Ok(_) => {
                return Err(NatsError::Protocol(
                    "the server did not start with INFO".into(),
                ))
            }
            Err(e) => return Err(NatsError::Protocol(e.to_string())),
        };
        if !info.tls_required && !info.tls_available {
            return Err(NatsError::Protocol(
                "the server does not offer TLS; a plaintext queue connection is refused".into(),
            ));
        }
        let name = ServerName::try_from(opts.server_name.clone())
            .map_err(|e| NatsError::Protocol(format!("server name: {e}")))?;
        let io = futures_rustls::TlsConnector::from(Arc::clone(&opts.tls))
            .connect(name, tcp)
            .await
            .map_err(NatsError::Tls)?;
        let mut conn = Self {
            io,
            rbuf: vec![0; 64 * 1024],
            rlen: 0,
            wbuf: Vec::with_capacity(64 * 1024),
            info,
            inbox: format!("_INBOX.{inbox_token}"),
            next_id: 1,
        };
        let mut connect = Vec::with_capacity(512);
        connect.extend_from_slice(b"CONNECT ");
        {
            let mut w = Cjson::new(&mut connect);
            w.begin_obj()
                .key("echo")
                .bool(false)
                .key("headers")
                .bool(true);
            opts.credentials
                .write_connect_fields(&mut w, conn.info.nonce.as_deref())
                .map_err(NatsError::Auth)?;
            w.key("lang")
                .str("rust")
                .key("name")
                .str(&opts.name)
                .key("no_responders")
                .bool(true)
                .key("pedantic")
                .bool(false)
                .key("protocol")
                .u64(1)
                .key("tls_required")
                .bool(true)
                .key("verbose")
                .bool(false)
                .key("version")
                .str(env!("CARGO_PKG_VERSION"))
                .end_obj();
        }
        connect.extend_from_slice(b"\r\nPING\r\n");
        conn.io.write_all(&connect).await.map_err(NatsError::Io)?;
        conn.io.flush().await.map_err(NatsError::Io)?;
        // The PONG confirms the CONNECT; an -ERR says why not.
        loop {
            match conn.read_op().await? {
                Op::Pong => break,
                Op::Err(e) => return Err(NatsError::Auth(e)),
                _ => {}
            }
        }
        let sub = format!("SUB {}.* 1\r\n", conn.inbox);
        conn.wbuf.extend_from_slice(sub.as_bytes());
        conn.flush().await?;
        Ok(conn)
    }

    /// Subscribe to `subject` (one subscription per connection); its messages arrive as
    /// replies with id [`SUBSCRIPTION`].
    pub async fn subscribe(&mut self, subject: &str) -> Result<(), NatsError> {
        let sub = format!("SUB {subject} 2\r\n");
        self.wbuf.extend_from_slice(sub.as_bytes());
        self.flush().await
    }

    /// Queue a plain `PUB` without a reply subject.
    pub fn queue_pub(&mut self, subject: &str, payload: &[u8]) {
        let w = &mut self.wbuf;
        w.extend_from_slice(b"PUB ");
        w.extend_from_slice(subject.as_bytes());
        w.push(b' ');
        crate::json::write_u64(w, u64::try_from(payload.len()).unwrap_or(0));
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(payload);
        w.extend_from_slice(b"\r\n");
    }

    /// The next request number.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queue `HPUB subject <inbox>.<id>` with headers and payload (sent on [`flush`]).
    pub fn queue_hpub(&mut self, subject: &str, id: u64, headers: &[(&str, &str)], payload: &[u8]) {
        // NATS/1.0\r\n, "k: v\r\n" per header, a blank line.
        let hdr_len = 10
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
            + 2;
        let w = &mut self.wbuf;
        w.extend_from_slice(b"HPUB ");
        w.extend_from_slice(subject.as_bytes());
        w.push(b' ');
        w.extend_from_slice(self.inbox.as_bytes());
        w.push(b'.');
        crate::json::write_u64(w, id);
        w.push(b' ');
        crate::json::write_u64(w, u64::try_from(hdr_len).unwrap_or(0));
        w.push(b' ');
        crate::json::write_u64(w, u64::try_from(hdr_len + payload.len()).unwrap_or(0));
        w.extend_from_slice(b"\r\nNATS/1.0\r\n");
        for (k, v) in headers {
            w.extend_from_slice(k.as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(v.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(payload);
        w.extend_from_slice(b"\r\n");
    }

    /// Queue a plain `PUB subject <inbox>.<id>` (requests to the JetStream API).
    pub fn queue_request(&mut self, subject: &str, id: u64, payload: &[u8]) {
        let w = &mut self.wbuf;
        w.extend_from_slice(b"PUB ");
        w.extend_from_slice(subject.as_bytes());
        w.push(b' ');
        w.extend_from_slice(self.inbox.as_bytes());
        w.push(b'.');
        crate::json::write_u64(w, id);
        w.push(b' ');
        crate::json::write_u64(w, u64::try_from(payload.len()).unwrap_or(0));
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(payload);
        w.extend_from_slice(b"\r\n");
    }

    /// Queue a `PING` (keep-alive).
    pub fn queue_ping(&mut self) {
        self.wbuf.extend_from_slice(b"PING\r\n");
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<(), NatsError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.io.write_all(&self.wbuf).await.map_err(NatsError::Io)?;
        self.io.flush().await.map_err(NatsError::Io)?;
        self.wbuf.clear();
        Ok(())
    }

    /// Send one request and wait for its reply (JetStream API calls at start).
    pub async fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Reply, NatsError> {
        let id = self.next_id();
        self.queue_request(subject, id, payload);
        self.flush().await?;
        timed(timeout, "JetStream API reply", async {
            loop {
                if let Some(r) = self.next_reply().await? {
                    if r.id == id {
                        return Ok(r);
                    }
                }
            }
        })
        .await
    }

    /// Wait for the next reply to our inbox (answering server PINGs meanwhile). `None` for
    /// other traffic (PONG, +OK).
    pub async fn next_reply(&mut self) -> Result<Option<Reply>, NatsError> {
        reply_of(self.read_op().await?)
    }

    /// The next reply already received and buffered, without reading the socket.
    pub fn buffered_reply(&mut self) -> Result<Option<Reply>, NatsError> {
        while let Some(op) = self.parse_buffered()? {
            if let Some(r) = reply_of(op)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Parse one operation from the bytes already read.
    fn parse_buffered(&mut self) -> Result<Option<Op>, NatsError> {
        let max = self.info.max_payload.max(1 << 20) + 4096;
        let (out, used) = match proto::parse(&self.rbuf[..self.rlen], max) {
            Err(e) => return Err(NatsError::Protocol(e.to_string())),
            Ok(None) => return Ok(None),
            Ok(Some((op, used))) => {
                let out = match op {
                    ServerOp::Ping => {
                        self.wbuf.extend_from_slice(b"PONG\r\n");
                        Op::Other
                    }
                    ServerOp::Pong => Op::Pong,
                    ServerOp::Ok | ServerOp::Info(_) => Op::Other,
                    ServerOp::Err(e) => Op::Err(e.to_owned()),
                    ServerOp::Msg(m) if m.sid == "2" => Op::Reply(Reply {
                        id: SUBSCRIPTION,
                        status: m.status(),
                        payload: m.payload.to_vec(),
                    }),
                    ServerOp::Msg(m) => match m
                        .subject
                        .strip_prefix(self.inbox.as_str())
                        .and_then(|t| t.strip_prefix('.'))
                        .and_then(|t| t.parse::<u64>().ok())
                        .filter(|&id| id != SUBSCRIPTION)
                    {
                        Some(id) => Op::Reply(Reply {
                            id,
                            status: m.status(),
                            payload: m.payload.to_vec(),
                        }),
                        None => Op::Other,
                    },
                };
                (out, used)
            }
        };
        self.rbuf.copy_within(used..self.rlen, 0);
        self.rlen -= used;
        Ok(Some(out))
    }

    async fn read_op(&mut self) -> Result<Op, NatsError> {
        loop {
            if let Some(op) = self.parse_buffered()? {
                if !self.wbuf.is_empty() && matches!(op, Op::Other) {
                    self.flush().await?; // a PONG to send
                }
                return Ok(op);
            }
            if self.rlen == self.rbuf.len() {
                let grow = (self.rbuf.len() * 2)
                    .min(self.info.max_payload.max(1 << 20) + 2 * MAX_CONTROL_LINE);
                if grow <= self.rbuf.len() {
                    return Err(NatsError::Protocol(
                        "server message exceeds the buffer".into(),
                    ));
                }
                self.rbuf.resize(grow, 0);
            }
            let n = self
                .io
                .read(&mut self.rbuf[self.rlen..])
                .await
                .map_err(NatsError::Io)?;
            if n == 0 {
                return Err(NatsError::Closed);
            }
            self.rlen += n;
        }
    }
}

fn reply_of(op: Op) -> Result<Option<Reply>, NatsError> {
    match op {
        Op::Reply(r) => Ok(Some(r)),
        Op::Err(e) => Err(NatsError::Server(e)),
        Op::Pong | Op::Other => Ok(None),
    }
}

enum Op {
    Reply(Reply),
    Pong,
    Err(String),
    Other,
}
