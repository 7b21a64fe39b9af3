//! Transport: mutual TLS refusals (row 53) seen by several real clients, `curl` and Python's
//! `ssl` as producers, idle connections, the connection cap.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use vvgate::client::{client_config, client_config_anonymous, Connection};
use vvgate_e2e::*;

/// Whether a TLS connection with `config` can complete one request.
fn request_fails(g: &Gateway, config: std::sync::Arc<rustls::ClientConfig>) -> bool {
    match Connection::connect_tls(g.addr, "localhost", config, Duration::from_secs(10)) {
        Err(_) => true,
        Ok(mut c) => c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_err(),
    }
}

fn tls_rejections(g: &Gateway) -> Vec<(String, u64)> {
    g.audit()
        .into_iter()
        .filter(|e| e["event_type"] == "tls.rejected")
        .map(|e| {
            (
                e["details"]["sub_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["details"]["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn handshakes_without_a_valid_pinned_certificate_fail_row_53() {
    let g = Gateway::start();
    let pki = &g.pki;
    let ca = pki.path("ca.pem");
    // No client certificate.
    assert!(request_fails(&g, client_config_anonymous(&ca).unwrap()));
    // A certificate from another CA (even though its fingerprint is pinned).
    let foreign = client_config(&ca, &pki.path("foreign.pem"), &pki.path("foreign.key")).unwrap();
    assert!(request_fails(&g, foreign));
    // CA-valid but unpinned.
    let unpinned =
        client_config(&ca, &pki.path("unpinned.pem"), &pki.path("unpinned.key")).unwrap();
    assert!(request_fails(&g, unpinned));
    // The pinned producer still works.
    assert!(!request_fails(&g, pki.producer().tls.clone()));

    // The same with openssl s_client: no HTTP response comes back.
    for args in [
        vec![],
        vec!["-cert", "unpinned.pem", "-key", "unpinned.key"],
    ] {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &g.addr.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
                "ca.pem",
                "-quiet",
            ])
            .args(&args)
            .current_dir(&pki.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl");
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("HTTP/1.1"),
            "openssl {args:?} got an HTTP response: {stdout}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("alert") || stderr.contains("error"),
            "{stderr}"
        );
    }

    // Each refusal is audited (coalesced per second) with its reason.
    wait_for(10, "tls.rejected entries", || {
        let r = tls_rejections(&g);
        [
            "no_client_certificate",
            "unknown_issuer",
            "certificate_not_pinned",
        ]
        .iter()
        .all(|reason| r.iter().any(|(s, n)| s == reason && *n >= 1))
    });
    let metrics = g.ops_get("/metrics").body_text();
    assert!(
        metrics.contains("vvgate_tls_handshake_failures_total{reason=\"certificate_not_pinned\"}")
    );
}

#[test]
fn curl_is_a_producer() {
    let g = Gateway::start();
    let s = valid();
    let h = g.pki.producer().headers(s.ts, &s.nonce, &s.body, None);
    let body_file = g.dir.join("body.json");
    std::fs::write(&body_file, &s.body).unwrap();
    let pki = &g.pki.dir;
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--cacert",
            "ca.pem",
            "--cert",
            "producer.pem",
            "--key",
            "producer.key",
        ])
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", g.addr.port()))
        .args(["-H", "Content-Type: application/json"])
        .arg("-H")
        .arg(format!("X-Service-Identity: {}", h.identity))
        .arg("-H")
        .arg(format!("X-Client-Cert-Sha256: {}", h.cert_sha256))
        .arg("-H")
        .arg(format!("X-Telemetry-Timestamp: {}", h.timestamp))
        .arg("-H")
        .arg(format!("X-Telemetry-Nonce: {}", h.nonce))
        .arg("-H")
        .arg(format!("X-Telemetry-Signature: {}", h.signature))
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!(
            "https://localhost:{}/internal/v1/telemetry",
            g.addr.port()
        ))
        .current_dir(pki)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    assert!(text.contains("\"accepted\":true"), "{text}");
    assert_eq!(g.spool().len(), 1);
    // curl without a client certificate gets no HTTP answer.
    let out = Command::new("curl")
        .args(["-sS", "--cacert", "ca.pem", "--resolve"])
        .arg(format!("localhost:{}:127.0.0.1", g.addr.port()))
        .arg(format!("https://localhost:{}/healthz", g.addr.port()))
        .current_dir(pki)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("healthy"));
}

#[test]
fn python_ssl_is_a_producer_with_keep_alive() {
    let g = Gateway::start();
    let p = g.pki.producer();
    let reqs: Vec<String> = (0..3)
        .map(|_| String::from_utf8(request(&p, &valid())).unwrap())
        .collect();
    let script = r#"
import json, socket, ssl, sys
port, pki = int(sys.argv[1]), sys.argv[2]
reqs = json.load(sys.stdin)
ctx = ssl.create_default_context(cafile=pki + "/ca.pem")
ctx.load_cert_chain(pki + "/producer.pem", pki + "/producer.key")
with socket.create_connection(("127.0.0.1", port)) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        f = s.makefile("rb")
        for r in reqs:
            s.sendall(r.encode())
            status = f.readline().split()[1].decode()
            length = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                k, v = line.decode().split(":", 1)
                if k.lower() == "content-length":
                    length = int(v)
            body = json.loads(f.read(length))
            print(status, body.get("accepted"))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(g.addr.port().to_string())
        .arg(&g.pki.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&reqs).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "202 True\n202 True\n202 True\n"
    );
    assert_eq!(g.spool().len(), 3);
}

#[test]
fn two_hundred_idle_connections_do_not_block_a_valid_request() {
    let g = Gateway::start();
    let p = g.pki.producer();
    let idle: Vec<Connection> = (0..200).map(|_| g.connect()).collect();
    // Plain TCP connections that never start TLS, too.
    let raw: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(g.addr).unwrap())
        .collect();
    let r = g.connect().send(&request(&p, &valid())).unwrap();
    assert_eq!(r.status, 202);
    let status: serde_json::Value =
        serde_json::from_str(&g.control("{\"cmd\":\"status\"}")[0]).unwrap();
    assert!(status["connections"].as_u64().unwrap() >= 200, "{status}");
    drop(idle);
    drop(raw);
}

#[test]
fn connections_past_the_cap_are_refused_before_tls() {
    let g = Gateway::start_with(Opts::default().with("max_connections = 3"));
    let held: Vec<Connection> = (0..3).map(|_| g.connect()).collect();
    // The fourth is closed at once: the handshake cannot complete.
    assert!(Connection::connect_tls(
        g.addr,
        "localhost",
        g.pki.producer().tls.clone(),
        Duration::from_secs(5)
    )
    .is_err());
    drop(held);
    wait_for(10, "a free slot", || {
        Connection::connect_tls(
            g.addr,
            "localhost",
            g.pki.producer().tls.clone(),
            Duration::from_secs(5),
        )
        .map(|mut c| c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_ok())
        .unwrap_or(false)
    });
    let m = g.ops_get("/metrics").body_text();
    assert!(
        m.contains("vvgate_connections_refused_total{reason=\"connection_limit\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("vvgate_connections_refused_total{reason=\"connection_rate\"} 0\n"),
        "{m}"
    );
}

#[test]
fn garbage_instead_of_a_client_hello_is_dropped() {
    let g = Gateway::start();
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..],
        &[0u8; 4096][..],
    ] {
        let mut s = TcpStream::connect(g.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(junk);
        let got = read_to_end(&mut s);
        assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1"));
    }
    // Still serving.
    assert_eq!(
        g.connect()
            .send(&request(&g.pki.producer(), &valid()))
            .unwrap()
            .status,
        202
    );
}

#[test]
fn sigterm_under_load_drains_and_exits_cleanly() {
    let mut g = Gateway::start_with(Opts::default().with("rate_limit_per_minute = 1000000"));
    let idle: Vec<Connection> = (0..20).map(|_| g.connect()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (addr, p, stop) = (g.addr, g.pki.producer(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut ok = 0u32;
                let Ok(mut c) = Connection::connect_tls(
                    addr,
                    "localhost",
                    p.tls.clone(),
                    Duration::from_secs(5),
                ) else {
                    return ok;
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match c.send(&request(&p, &valid())) {
                        Ok(r) if r.status == 202 => ok += 1,
                        _ => break,
                    }
                }
                ok
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let started = std::time::Instant::now();
    assert_eq!(g.stop(), Some(0), "clean exit after SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle connections do not hold the drain"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted: u32 = load.into_iter().map(|t| t.join().unwrap()).sum();
    drop(idle);
    assert!(accepted > 0);
    // Everything answered 202 is on disk, and the stop is in the log.
    let state = g.dir.join("state");
    let (code, out, _) = vvctl(&["audit", "export", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(code, 0);
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let acc = entries
        .iter()
        .filter(|e| e["event_type"] == "telemetry.accepted")
        .count();
    assert!(
        acc >= accepted as usize,
        "{acc} accepted entries for {accepted} answers"
    );
    assert_eq!(entries.last().unwrap()["event_type"], "gateway.stopped");
    g.restart();
}
