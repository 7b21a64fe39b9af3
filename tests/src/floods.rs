//! Flood generators shared by the flood tests (`tests/floods.rs`) and the flood latency
//! benchmark (`flood-bench`): each runs against a gateway's producer listener until `stop` is
//! set and returns a one-line account of what it did. All of them stay on loopback and are
//! bounded by the caller's stop flag.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use vvgate::client::{client_config_anonymous, Connection};

/// The first bytes of a TLS record carrying a ClientHello, followed by garbage.
pub const GARBAGE_HELLO: [u8; 10] = [0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0xff];

/// A request head that a slowloris client never finishes.
pub const SLOW_HEAD: &[u8] =
    b"POST /internal/v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: ";

/// Open `n` mutual-TLS connections in parallel (the handshakes dominate); panics on failure.
pub fn connect_many(addr: SocketAddr, tls: &Arc<ClientConfig>, n: usize) -> Vec<Connection> {
    let per = n.div_ceil(4);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let tls = Arc::clone(tls);
            let count = per.min(n.saturating_sub(i * per));
            std::thread::spawn(move || {
                (0..count)
                    .map(|_| {
                        Connection::connect_tls(
                            addr,
                            "localhost",
                            Arc::clone(&tls),
                            Duration::from_secs(60),
                        )
                        .expect("flood connection")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("connect thread"))
        .collect()
}

/// `n` idle mutual-TLS connections opened, then held until `stop`.
pub fn idle(addr: SocketAddr, tls: &Arc<ClientConfig>, n: usize, stop: &AtomicBool) -> String {
    let started = Instant::now();
    let held = connect_many(addr, tls, n);
    let took = started.elapsed().as_secs_f64();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    format!(
        "{} idle TLS connections held (opened in {took:.1} s)",
        held.len()
    )
}

/// `n` mutual-TLS connections sending a request head one byte a second; a connection the
/// gateway cuts off is replaced by a new one.
pub fn slowloris(addr: SocketAddr, tls: &Arc<ClientConfig>, n: usize, stop: &AtomicBool) -> String {
    let mut conns: Vec<(Connection, usize)> = connect_many(addr, tls, n)
        .into_iter()
        .map(|c| (c, 0))
        .collect();
    let (mut bytes, mut cut) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        for (c, at) in &mut conns {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let byte = SLOW_HEAD.get(*at).copied().unwrap_or(b'a');
            if c.write_raw(&[byte]).is_ok() {
                *at += 1;
                bytes += 1;
            } else {
                cut += 1;
                if let Ok(new) = Connection::connect_tls(
                    addr,
                    "localhost",
                    Arc::clone(tls),
                    Duration::from_secs(10),
                ) {
                    *c = new;
                    *at = 0;
                }
            }
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            sleep_unless(stop, rest);
        }
    }
    format!("{n} heads at 1 byte/s: {bytes} bytes sent, {cut} connections cut off and replaced")
}

/// `threads` threads, half sending garbage instead of a ClientHello, half making full
/// handshakes without a client certificate. Returns the account and the number of attempts.
pub fn handshakes(
    addr: SocketAddr,
    ca: &Path,
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> (String, u64) {
    let anon = client_config_anonymous(ca).expect("anonymous client config");
    let handles: Vec<_> = (0..threads)
        .map(|kind| {
            let (stop, anon) = (Arc::clone(stop), Arc::clone(&anon));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if kind % 2 == 0 {
                        garbage_hello(addr);
                    } else {
                        let _ = Connection::connect_tls(
                            addr,
                            "localhost",
                            Arc::clone(&anon),
                            Duration::from_secs(5),
                        )
                        .and_then(|mut c| c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
                    }
                    n += 1;
                }
                (kind % 2, n)
            })
        })
        .collect();
    let (mut garbage, mut anonymous) = (0, 0);
    for h in handles {
        match h.join().expect("handshake flood thread") {
            (0, n) => garbage += n,
            (_, n) => anonymous += n,
        }
    }
    (
        format!(
            "{garbage} garbage ClientHellos, {anonymous} handshakes without a client certificate"
        ),
        garbage + anonymous,
    )
}

/// One connection sending a garbage ClientHello, waiting for the gateway to answer or close.
pub fn garbage_hello(addr: SocketAddr) {
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(&GARBAGE_HELLO);
        let _ = s.write_all(&[0xAB; 64]);
        let mut b = [0u8; 256];
        let _ = s.read(&mut b);
    }
}

/// Connections past `max_connections`: with `held` connections already open, `threads`
/// threads keep opening connections that send the start of a ClientHello and wait to be
/// closed. Returns the account and how many got any byte back (0 expected).
pub fn past_the_cap(addr: SocketAddr, threads: usize, stop: &Arc<AtomicBool>) -> (String, u64) {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let (mut n, mut answered) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ =
                        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]);
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    n += 1;
                    // Once stopped, the caller may be closing its own connections, which
                    // frees slots below the cap: only answers before that count.
                    if !got.is_empty() && !stop.load(Ordering::Relaxed) {
                        answered += 1;
                    }
                }
                (n, answered)
            })
        })
        .collect();
    let (mut n, mut answered) = (0, 0);
    for h in handles {
        let (a, b) = h.join().expect("cap flood thread");
        n += a;
        answered += b;
    }
    (
        format!("{n} connections past the cap, {answered} got bytes back"),
        answered,
    )
}

/// Rounds of `per_round` plain connections opened at once, held for a moment, and closed.
pub fn descriptor_rounds(addr: SocketAddr, per_round: usize, stop: &AtomicBool) -> String {
    let (mut rounds, mut opened) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let conns: Vec<TcpStream> = (0..per_round)
            .filter_map(|_| TcpStream::connect(addr).ok())
            .collect();
        opened += conns.len() as u64;
        sleep_unless(stop, Duration::from_millis(500));
        drop(conns);
        rounds += 1;
        sleep_unless(stop, Duration::from_millis(500));
    }
    format!("{rounds} rounds of {per_round} plain connections ({opened} opened)")
}

/// Huge bodies: one thread announcing 10 MB bodies (413 from the head) over and over, and
/// `trickled` connections sending a 1 MB body 100 bytes a second (408 at the body
/// deadline), replaced when cut off. The size limit applies before any header check, so the
/// heads carry no identity headers.
pub fn huge_bodies(
    addr: SocketAddr,
    tls: &Arc<ClientConfig>,
    trickled: usize,
    stop: &AtomicBool,
) -> String {
    let open = |len: usize| -> Option<Connection> {
        let mut c =
            Connection::connect_tls(addr, "localhost", Arc::clone(tls), Duration::from_secs(10))
                .ok()?;
        let head = format!(
            "POST /internal/v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        );
        c.write_raw(head.as_bytes()).ok()?;
        Some(c)
    };
    std::thread::scope(|s| {
        let announced = s.spawn(|| {
            let (mut n, mut refused) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                if let Some(mut c) = open(10 * 1024 * 1024) {
                    let _ = c.write_raw(&[b'{'; 4096]);
                    n += 1;
                    if c.read_response().is_ok_and(|r| r.status == 413) {
                        refused += 1;
                    }
                }
            }
            (n, refused)
        });
        let mut slow: Vec<Option<Connection>> = (0..trickled).map(|_| open(1_000_000)).collect();
        let mut replaced = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let tick = Instant::now();
            for c in &mut slow {
                let ok = c
                    .as_mut()
                    .is_some_and(|c| c.write_raw(&[b' '; 100]).is_ok());
                if !ok {
                    replaced += 1;
                    *c = open(1_000_000);
                }
            }
            if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
                sleep_unless(stop, rest);
            }
        }
        let (n, refused) = announced.join().expect("announce thread");
        format!(
            "{n} bodies of 10 MB announced ({refused} answered 413); {trickled} bodies trickled at 100 B/s, {replaced} cut off and replaced"
        )
    })
}

/// Sleep for `d`, or less once `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}
