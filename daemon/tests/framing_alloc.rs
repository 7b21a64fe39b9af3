//! Heap allocations per request on the framing path (HTTP/1.1 connection loop, and the same
//! loop behind TLS), counted with a counting global allocator, not timed.
//!
//! The service records the process's allocation total when it handles request `WARM` and
//! request `WARM + N`: the difference is what one full keep-alive cycle costs (write the
//! response, read and parse the next request, and with TLS encrypt and decrypt one record
//! each way), N times. Three setups, one after the other from a single `#[test]` because the
//! counter is process-wide:
//!
//! 1. the connection loop over an in-memory stream whose reads are always ready: the
//!    gateway's own framing code (buffers, httparse, limits, response writer, the closing
//!    listener). Must be exactly 0.
//! 2. the same over a loopback socket, served by the smol reactor, with a `python3` client in
//!    another process (its allocations are not counted): adds the runtime's share.
//! 3. the same behind rustls (TLS 1.3): adds rustls's record buffers.
#![cfg(not(feature = "alloc-count"))]
// that feature installs its own global allocator
// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use smol::net::TcpListener;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use vvgate::http::conn::{serve, ConnInfo, ConnLimits, FramingError, Service};
use vvgate::http::{Head, Response, Span};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Requests before the first count (buffers reach their steady size).
const WARM: u64 = 50;
/// Requests counted.
const N: u64 = 1000;

fn allocations() -> usize {
    let s = GLOBAL.stats();
    s.allocations + s.reallocations
}

/// Answers every request with a small JSON body, and counts.
struct Counting {
    closing: event_listener::Event,
    seen: Cell<u64>,
    at: RefCell<[usize; 2]>,
}

impl Counting {
    fn new() -> Self {
        Self {
            closing: event_listener::Event::new(),
            seen: Cell::new(0),
            at: RefCell::new([0; 2]),
        }
    }

    /// Allocations per counted request, once the client is done.
    fn per_request(&self) -> f64 {
        assert_eq!(
            self.seen.get(),
            WARM + N + 1,
            "the client sent fewer requests than expected"
        );
        let [a, b] = *self.at.borrow();
        #[allow(clippy::cast_precision_loss)] // small counts
        let v = (b - a) as f64 / N as f64;
        v
    }
}

impl Service for Counting {
    type State = ();

    fn new_state(&self) {}

    fn closing(&self, _conn: &ConnInfo) -> bool {
        false
    }

    fn closing_event(&self) -> &event_listener::Event {
        &self.closing
    }

    async fn framing_error(
        &self,
        _st: &mut (),
        _conn: &ConnInfo,
        _err: FramingError,
        body: &mut Vec<u8>,
    ) -> Response {
        vvgate::http::error_body(body, "Malformed HTTP request");
        Response::new(400)
    }

    async fn before_body(
        &self,
        _st: &mut (),
        _conn: &ConnInfo,
        _head: &Head,
        _buf: &[u8],
        _body: &mut Vec<u8>,
    ) -> Option<Response> {
        None
    }

    async fn handle(
        &self,
        _st: &mut (),
        _conn: &ConnInfo,
        head: &Head,
        buf: &[u8],
        span: Span,
        body: &mut Vec<u8>,
    ) -> Response {
        let n = self.seen.get();
        if n == WARM {
            self.at.borrow_mut()[0] = allocations();
        } else if n == WARM + N {
            self.at.borrow_mut()[1] = allocations();
        }
        self.seen.set(n + 1);
        assert_eq!(head.path.get(buf), b"/internal/v1/telemetry");
        assert_eq!(span.end - span.start, 1024);
        body.extend_from_slice(b"{\"accepted\":true}");
        let mut r = Response::new(202);
        r.close = n == WARM + N;
        r
    }
}

fn limits() -> ConnLimits {
    ConnLimits {
        max_header_bytes: 16 * 1024,
        max_body_bytes: 1024 * 1024,
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
    }
}

/// The client: `count` keep-alive POSTs of a 1 KiB body, each answer read before the next.
const CLIENT: &str = r#"
import socket, ssl, sys
port, count, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if ca:
    ctx = ssl.create_default_context(cafile=ca)
    s = ctx.wrap_socket(s, server_hostname="localhost")
body = b"x" * 1024
req = (b"POST /internal/v1/telemetry HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
       b"X-Service-Identity: producer\r\nContent-Length: 1024\r\n\r\n" + body)
buf = b""
for i in range(count):
    s.sendall(req)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode()
            length = int([l.split(":")[1] for l in head.split("\r\n") if l.lower().startswith("content-length")][0])
            if len(buf) >= end + 4 + length:
                assert head.startswith("HTTP/1.1 202"), head
                buf = buf[end + 4 + length:]
                break
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("closed early at request %d" % i)
        buf += chunk
print("ok")
"#;

fn client(port: u16, ca: &str) -> Child {
    Command::new("python3")
        .args([
            "-c",
            CLIENT,
            &port.to_string(),
            &(WARM + N + 1).to_string(),
            ca,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs")
}

fn finish(child: Child) {
    let out = child.wait_with_output().expect("client exits");
    assert!(out.status.success(), "client failed: {:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// Fixed-size requests in memory, handed out one request per read (keep-alive, not
/// pipelined); writes are counted and dropped.
struct Scripted {
    request: Vec<u8>,
    left: u64,
    at: usize,
}

impl futures_lite::AsyncRead for Scripted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let me = &mut *self;
        if me.left == 0 {
            return std::task::Poll::Ready(Ok(0));
        }
        let n = buf.len().min(me.request.len() - me.at);
        buf[..n].copy_from_slice(&me.request[me.at..me.at + n]);
        me.at += n;
        if me.at == me.request.len() {
            me.at = 0;
            me.left -= 1;
        }
        std::task::Poll::Ready(Ok(n))
    }
}

impl futures_lite::AsyncWrite for Scripted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The gateway's framing code alone: in memory, every read ready.
fn in_memory() -> f64 {
    let mut request = b"POST /internal/v1/telemetry HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Service-Identity: producer\r\nContent-Length: 1024\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'x'; 1024]);
    let stream = Scripted {
        request,
        left: WARM + N + 1,
        at: 0,
    };
    let svc = Counting::new();
    let peer = "127.0.0.1:1".parse().expect("address");
    smol::block_on(serve(&svc, stream, &info(peer), &limits()));
    svc.per_request()
}

fn info(peer: std::net::SocketAddr) -> ConnInfo {
    ConnInfo {
        id: 1,
        peer,
        fingerprint: None,
    }
}

/// Plain HTTP: the connection loop, httparse and the response writer.
fn plain() -> f64 {
    smol::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let child = client(port, "");
        let (tcp, peer) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let svc = Counting::new();
        serve(&svc, tcp, &info(peer), &limits()).await;
        finish(child);
        svc.per_request()
    })
}

/// The same behind rustls (TLS 1.3, AES-GCM), as the producer listener serves it.
fn tls(dir: &std::path::Path) -> f64 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = vvgate::devpki::DevCa::new("framing test CA").expect("CA");
    let (cert, key, _) = ca.issue("localhost", &["localhost"]).expect("cert");
    let ca_path = dir.join("ca.pem");
    std::fs::File::create(&ca_path)
        .and_then(|mut f| f.write_all(ca.cert_pem.as_bytes()))
        .expect("write CA");
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert PEM")];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM");
    let config = rustls::ServerConfig::builder_with_provider(vvgate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(config));
    smol::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let child = client(port, ca_path.to_str().expect("utf-8 path"));
        let (tcp, peer) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let stream = acceptor.accept(tcp).await.expect("handshake");
        let svc = Counting::new();
        serve(&svc, stream, &info(peer), &limits()).await;
        finish(child);
        svc.per_request()
    })
}

#[test]
fn framing_path_allocations_per_request() {
    let ours = in_memory();
    eprintln!("HTTP framing code: {ours} allocations per keep-alive request");
    assert!(
        ours == 0.0,
        "the gateway's HTTP framing code allocates {ours} times per request"
    );

    // The smol reactor (async-io 2.6) keeps timers in a `BTreeMap`; registering a timer in an
    // empty map, and `Reactor::process_timers` splitting the map on every reactor turn while
    // any timer is registered, each allocate a node. The connection's deadline moves its timer
    // only when the deadline comes earlier (`http::conn::Deadline`), so no allocation comes
    // from moving it; the splits remain, one per reactor turn: well under one per request on
    // an idle machine, about two on a busy one, where the loop parks between every read. The
    // bound catches an allocation per read or write, not reactor jitter.
    let plain = plain();
    eprintln!(
        "HTTP framing over a socket: {plain} allocations per keep-alive request (reactor timers)"
    );
    assert!(
        plain <= 6.0,
        "the HTTP framing path over a socket allocates {plain} times per request"
    );

    let dir = std::env::temp_dir().join(format!("vvgate-framing-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tls = tls(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("HTTP framing behind rustls: {tls} allocations per keep-alive request");
    // Besides the reactor's timers, rustls 0.23 copies every decrypted record into a new Vec
    // (`Payload::into_vec` in `take_received_plaintext`, in the buffered and the unbuffered
    // API alike) and encrypts every record into a new Vec (`encrypt_outgoing`, buffered API):
    // one request record plus one response record.
    assert!(
        tls <= plain.max(2.0) + 4.0,
        "the TLS framing path allocates {tls} times per request (reactor timers and rustls's two record buffers expected)"
    );
}
