//! One connection's request loop: keep-alive, size limits and deadlines (slowloris), then hand
//! each complete request to a [`Service`].
//!
//! Deadlines: `idle_timeout` while waiting for the first byte of a request (then the connection
//! is closed silently); `header_read_timeout` for the whole head from its first byte (408 if
//! the request line arrived, else a silent close); `body_read_timeout` for the whole body (408).
//! Writes share the body deadline, so a client that stops reading is dropped too.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::Timer;

use super::{
    find_head_end, has_request_line, parse_head, write_response, Head, HeadError, Response, Span,
};

/// Who is on the other end.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub peer: SocketAddr,
    /// SHA-256 of the client certificate presented in the TLS handshake (producer listener).
    pub fingerprint: Option<[u8; 32]>,
}

/// Framing failures answered by the connection loop itself (CONTRACT.md §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// 400 `Malformed HTTP request`.
    Malformed,
    /// 408 `Request timeout`.
    Timeout,
    /// 411 `Content-Length required`.
    LengthRequired,
    /// 431 `Request header fields too large`.
    HeaderTooLarge,
}

/// Limits the loop enforces.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl From<&crate::config::Limits> for ConnLimits {
    fn from(l: &crate::config::Limits) -> Self {
        Self {
            max_header_bytes: l.max_header_bytes,
            max_body_bytes: l.max_body_bytes,
            header_read_timeout: l.header_read_timeout,
            body_read_timeout: l.body_read_timeout,
            idle_timeout: l.idle_timeout,
        }
    }
}

/// What a listener does with requests. Responses put their body into `body`.
pub trait Service {
    /// Per-connection scratch state, reused for every request on the connection.
    type State;

    fn new_state(&self) -> Self::State;

    /// Stop serving this connection before the next request (drain, kill switch).
    fn closing(&self, conn: &ConnInfo) -> bool;

    /// Notified when [`Service::closing`] may have become true, so idle connections leave at
    /// once instead of at their idle timeout.
    fn closing_event(&self) -> &event_listener::Event;

    /// A framing failure: audit it and answer. The connection is closed afterwards.
    fn framing_error(
        &self,
        st: &mut Self::State,
        conn: &ConnInfo,
        err: FramingError,
        body: &mut Vec<u8>,
    ) -> impl Future<Output = Response>;

    /// Checks that need only the head (routing, media type, size). `Some` answers now without
    /// reading the body.
    fn before_body(
        &self,
        st: &mut Self::State,
        conn: &ConnInfo,
        head: &Head,
        buf: &[u8],
        body: &mut Vec<u8>,
    ) -> impl Future<Output = Option<Response>>;

    /// The request with its complete body at `buf[body_span]`.
    fn handle(
        &self,
        st: &mut Self::State,
        conn: &ConnInfo,
        head: &Head,
        buf: &[u8],
        body_span: Span,
        body: &mut Vec<u8>,
    ) -> impl Future<Output = Response>;
}

enum ReadErr {
    Timeout,
    Closed,
}

/// The connection's read buffer. Its storage stays initialised between reads, so a read
/// never zero-fills memory it already owns; only growth does.
struct ReadBuf {
    data: Vec<u8>,
    end: usize,
}

impl ReadBuf {
    fn new() -> Self {
        Self {
            data: vec![0; 4096],
            end: 0,
        }
    }

    /// The bytes received and not yet consumed.
    fn filled(&self) -> &[u8] {
        &self.data[..self.end]
    }

    fn len(&self) -> usize {
        self.end
    }

    fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// Room for `want` more bytes.
    fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.data.len() < self.end + want {
            self.data.resize(self.end + want, 0);
        }
        &mut self.data[self.end..self.end + want]
    }

    /// Drop the first `n` bytes (a served request), keeping what follows (pipelining).
    fn consume(&mut self, n: usize) {
        let n = n.min(self.end);
        self.data.copy_within(n..self.end, 0);
        self.end -= n;
        if self.data.len() > 64 * 1024 && self.end < 4096 {
            self.data.truncate(8192);
            self.data.shrink_to(8192);
        }
    }
}

/// The connection's current read deadline, on one reactor timer that is moved only when the
/// deadline comes earlier than where it is set.
///
/// Every request moves the deadline (idle, head, body), nearly always later. Moving the
/// reactor's timer costs a removal, an insertion into its timer map and a wake-up of the
/// reactor (an `eventfd` write) each time; instead the timer stays where it is, and when it
/// fires before the deadline it is set again to the deadline. Under steady keep-alive traffic
/// that is once per timeout period per connection, not three times per request.
pub(super) struct Deadline {
    timer: Timer,
    /// Where the timer is set (`None`: nowhere).
    armed: Option<Instant>,
    at: Instant,
}

impl Deadline {
    pub(super) fn new() -> Self {
        Self {
            timer: Timer::never(),
            armed: None,
            at: Instant::now(),
        }
    }

    /// The deadline is `d` from now.
    pub(super) fn set_after(&mut self, d: Duration) {
        self.at = Instant::now() + d;
        if self.armed.is_none_or(|a| a > self.at) {
            self.arm();
        }
    }

    fn arm(&mut self) {
        self.timer.set_at(self.at);
        self.armed = Some(self.at);
    }

    /// Ready once the deadline has passed.
    pub(super) async fn passed(&mut self) {
        loop {
            (&mut self.timer).await;
            if Instant::now() >= self.at {
                self.armed = None;
                return;
            }
            self.arm();
        }
    }
}

/// Read more bytes into `buf` (up to `chunk`), racing the deadline.
async fn read_more<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut ReadBuf,
    chunk: usize,
    deadline: &mut Deadline,
) -> Result<usize, ReadErr> {
    let r = futures_lite::future::or(
        async {
            match io.read(buf.spare(chunk.max(1))).await {
                Ok(0) | Err(_) => Err(ReadErr::Closed),
                Ok(n) => Ok(n),
            }
        },
        async {
            deadline.passed().await;
            Err(ReadErr::Timeout)
        },
    )
    .await;
    buf.end += *r.as_ref().unwrap_or(&0);
    r
}

async fn write_timed<T: AsyncWrite + Unpin>(io: &mut T, data: &[u8], deadline: Duration) -> bool {
    futures_lite::future::or(
        async { io.write_all(data).await.is_ok() && io.flush().await.is_ok() },
        async {
            Timer::after(deadline).await;
            false
        },
    )
    .await
}

/// Serve requests on `io` until the client leaves, a deadline passes, or a response closes.
pub async fn serve<S: Service, T: AsyncRead + AsyncWrite + Unpin>(
    svc: &S,
    mut io: T,
    conn: &ConnInfo,
    limits: &ConnLimits,
) {
    let mut st = svc.new_state();
    let mut buf = ReadBuf::new();
    let mut body: Vec<u8> = Vec::with_capacity(256);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut deadline = Deadline::new();
    let chunk = 16 * 1024;
    // Answer a framing failure (audited by the service) and close.
    macro_rules! fail {
        ($err:expr) => {
            fail(
                svc, &mut st, conn, $err, &mut io, &mut body, &mut out, limits,
            )
            .await
        };
    }

    'requests: loop {
        if svc.closing(conn) {
            break;
        }
        // Wait for the next request, or for the gateway to start closing.
        if buf.is_empty() {
            deadline.set_after(limits.idle_timeout);
            // The event also fires for changes that concern other connections (a reload that
            // revoked one certificate): then this one goes on waiting.
            let got = loop {
                // On the stack: `Event::listen` would box a listener for every request.
                event_listener::listener!(svc.closing_event() => closing);
                if svc.closing(conn) {
                    break None;
                }
                let r = futures_lite::future::or(
                    async {
                        Some(
                            read_more(&mut io, &mut buf, chunk, &mut deadline)
                                .await
                                .is_ok(),
                        )
                    },
                    async {
                        closing.await;
                        None
                    },
                )
                .await;
                if r.is_some() {
                    break r;
                }
            };
            if got != Some(true) {
                break;
            }
        }
        // The head, within its deadline and size.
        deadline.set_after(limits.header_read_timeout);
        let mut scanned = 0;
        let head_end = loop {
            if let Some(end) = find_head_end(buf.filled(), scanned) {
                break end;
            }
            if buf.len() > limits.max_header_bytes {
                break 'requests fail!(FramingError::HeaderTooLarge);
            }
            scanned = buf.len();
            let room = (limits.max_header_bytes + 4)
                .saturating_sub(buf.len())
                .clamp(1, chunk);
            match read_more(&mut io, &mut buf, room, &mut deadline).await {
                Ok(_) => {}
                Err(ReadErr::Timeout) if has_request_line(buf.filled()) => {
                    break 'requests fail!(FramingError::Timeout);
                }
                Err(_) => break 'requests,
            }
        };
        if head_end > limits.max_header_bytes {
            break fail!(FramingError::HeaderTooLarge);
        }
        let head = match parse_head(&buf.filled()[..head_end]) {
            Ok(h) => h,
            Err(HeadError::Malformed) => break fail!(FramingError::Malformed),
            Err(HeadError::TooLarge) => break fail!(FramingError::HeaderTooLarge),
        };
        if head.transfer_encoding {
            break fail!(FramingError::LengthRequired);
        }
        let announced = head.content_length.unwrap_or(0);
        let body_len = usize::try_from(announced).unwrap_or(usize::MAX);

        body.clear();
        if let Some(mut resp) = svc
            .before_body(&mut st, conn, &head, buf.filled(), &mut body)
            .await
        {
            // Answered from the head alone. Keep the connection only if the body (if any) can
            // be skipped safely: not too large, and not held back by `Expect: 100-continue`.
            let skip = body_len == 0
                || (!resp.close && !head.expect_continue && body_len <= limits.max_body_bytes);
            if skip && body_len > 0 {
                deadline.set_after(limits.body_read_timeout);
                while buf.len() < head_end + body_len {
                    let want = (head_end + body_len - buf.len()).min(chunk);
                    if read_more(&mut io, &mut buf, want, &mut deadline)
                        .await
                        .is_err()
                    {
                        break 'requests;
                    }
                }
            }
            resp.close |= !skip || head.close;
            if !respond(&mut io, &resp, &body, &mut out, limits).await || resp.close {
                break;
            }
            buf.consume(head_end + body_len);
            continue;
        }

        if head.expect_continue
            && buf.len() < head_end + body_len
            && !write_timed(
                &mut io,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                limits.body_read_timeout,
            )
            .await
        {
            break;
        }
        let total = head_end + body_len;
        deadline.set_after(limits.body_read_timeout);
        while buf.len() < total {
            let want = (total - buf.len()).min(256 * 1024);
            match read_more(&mut io, &mut buf, want, &mut deadline).await {
                Ok(_) => {}
                Err(ReadErr::Timeout) => {
                    break 'requests fail!(FramingError::Timeout);
                }
                Err(ReadErr::Closed) => break 'requests,
            }
        }
        let span = Span {
            start: head_end,
            end: total,
        };
        body.clear();
        let mut resp = svc
            .handle(&mut st, conn, &head, buf.filled(), span, &mut body)
            .await;
        resp.close |= head.close;
        if !respond(&mut io, &resp, &body, &mut out, limits).await || resp.close {
            break;
        }
        buf.consume(total);
    }
    let _ = futures_lite::future::or(
        async {
            let _ = io.close().await;
        },
        async {
            Timer::after(Duration::from_secs(1)).await;
        },
    )
    .await;
}

#[allow(clippy::too_many_arguments)] // the loop's state, passed rather than captured
async fn fail<S: Service, T: AsyncWrite + Unpin>(
    svc: &S,
    st: &mut S::State,
    conn: &ConnInfo,
    err: FramingError,
    io: &mut T,
    body: &mut Vec<u8>,
    out: &mut Vec<u8>,
    limits: &ConnLimits,
) {
    body.clear();
    let mut resp = svc.framing_error(st, conn, err, body).await;
    resp.close = true;
    respond(io, &resp, body, out, limits).await;
}

async fn respond<T: AsyncWrite + Unpin>(
    io: &mut T,
    resp: &Response,
    body: &[u8],
    out: &mut Vec<u8>,
    limits: &ConnLimits,
) -> bool {
    out.clear();
    write_response(out, resp, body);
    write_timed(io, out, limits.body_read_timeout).await
}
