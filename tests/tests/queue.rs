//! Store-and-forward to a real NATS JetStream over mutual TLS: every test counts events end
//! to end (sent, answered 202, in the stream, duplicated, lost).

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use vvgate_e2e::*;

/// A gateway in front of `ns`, with the rate limit out of the way.
fn gateway_for(ns: &NatsServer, dir: std::path::PathBuf, pki: Pki, extra: &[&str]) -> Gateway {
    let mut base = Opts::default().with("rate_limit_per_minute = 1000000");
    for l in extra {
        base = base.with(l);
    }
    let opts = ns.gateway_opts(&pki, base);
    Gateway::start_in(dir, pki, opts)
}

fn new_pki() -> (std::path::PathBuf, Pki) {
    let dir = temp_dir("gwq");
    let pki = Pki::new(&dir.join("pki"));
    (dir, pki)
}

fn spool_events(g: &Gateway) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&g.control("{\"cmd\":\"status\"}")[0]).unwrap();
    v["spool_events"].as_u64().unwrap()
}

fn wait_drained(g: &Gateway, secs: u64) {
    wait_for(secs, "the spool to drain into the stream", || {
        spool_events(g) == 0
    });
}

/// Counts of the stream against what producers were told.
struct Tally {
    in_stream: usize,
    duplicated: usize,
    lost: Vec<String>,
}

fn tally(ns: &NatsServer, pki: &Pki, sent: &[Sent]) -> Tally {
    let msgs = ns.messages(pki);
    let mut by_nonce: HashMap<String, usize> = HashMap::new();
    let mut ids = HashSet::new();
    for m in &msgs {
        if m.subject.starts_with("vectorvue.audit.") {
            continue;
        }
        let env = m.envelope();
        if env["kind"] != "ingest" {
            continue;
        }
        // A consumer verifies each envelope by re-serialising its payload (§5.2).
        let payload = vvgate::client::canonical(&env["payload"]).unwrap();
        assert_eq!(
            env["integrity_hash"].as_str().unwrap(),
            vvgate::ids::hex32(&vvgate::ids::sha256(&payload)).as_str(),
            "integrity_hash of stream message {}",
            m.seq
        );
        assert_eq!(
            m.header("Vv-Integrity-Hash"),
            env["integrity_hash"].as_str()
        );
        assert_eq!(m.header("Vv-Envelope-Kind"), Some("ingest"));
        assert_eq!(m.header("Nats-Msg-Id"), env["message_id"].as_str());
        assert_eq!(m.subject, "vectorvue.telemetry.ingest");
        assert!(
            ids.insert(m.header("Nats-Msg-Id").unwrap().to_owned()),
            "message id twice"
        );
        *by_nonce
            .entry(env["payload"]["nonce"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let lost = sent
        .iter()
        .filter(|s| s.status == Some(202) && !by_nonce.contains_key(&s.nonce))
        .map(|s| s.nonce.clone())
        .collect();
    Tally {
        in_stream: by_nonce.len(),
        duplicated: by_nonce.values().filter(|&&n| n > 1).count(),
        lost,
    }
}

#[test]
fn steady_load_every_202_is_in_the_stream_exactly_once() {
    let (dir, pki) = new_pki();
    let ns = NatsServer::start(&pki, NatsAuth::UserPass);
    let g = gateway_for(&ns, dir, pki.clone(), &[]);
    let load = Load::start(&g, 4, false);
    // At least 1.5 s and enough acceptances to count, however slow the machine is today.
    std::thread::sleep(Duration::from_millis(1500));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while g.metric("vvgate_storage_committed_ops_total") < 80
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sent = load.finish();
    // Dead letters go to the DLQ subject.
    let mut c = g.connect();
    for _ in 0..5 {
        let s = event_with(now(), &nonce(), |v| {
            v["payload"]["mitre_techniques"] = serde_json::json!(["T9999"])
        });
        let r = c.send(&request(&g.pki.producer(), &s)).unwrap();
        assert_eq!(r.status, 422);
        sent.push(Sent {
            nonce: s.nonce,
            request: Vec::new(),
            status: Some(422),
            request_id: None,
        });
    }
    wait_drained(&g, 30);
    let accepted = sent.iter().filter(|s| s.status == Some(202)).count();
    let t = tally(&ns, &pki, &sent);
    eprintln!(
        "steady: sent {}, answered 202 {}, in stream {}, duplicated {}, lost {}",
        sent.len(),
        accepted,
        t.in_stream,
        t.duplicated,
        t.lost.len()
    );
    assert!(accepted >= 50, "too little load: {accepted}");
    assert_eq!(t.lost.len(), 0);
    assert_eq!(t.duplicated, 0);
    assert_eq!(t.in_stream, accepted);
    let dlq: Vec<_> = ns
        .messages(&pki)
        .into_iter()
        .filter(|m| m.subject == "vectorvue.telemetry.dlq")
        .collect();
    assert_eq!(dlq.len(), 5);
    for m in &dlq {
        assert!(m.header("Nats-Msg-Id").unwrap().starts_with("dlq:"));
        assert_eq!(m.envelope()["kind"], "dead_letter");
    }
    let metrics = g.ops_get("/metrics").body_text();
    assert!(metrics.contains("vvgate_forward_connected 1"), "{metrics}");
}

/// Seconds the queue is down in the outage test (the issue asks for 30).
fn outage_secs() -> u64 {
    std::env::var("VVGATE_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

#[test]
fn a_queue_outage_under_load_loses_and_duplicates_nothing() {
    let (dir, pki) = new_pki();
    let mut ns = NatsServer::start(&pki, NatsAuth::UserPass);
    let g = gateway_for(&ns, dir, pki.clone(), &[]);
    let before = Load::start(&g, 2, false);
    std::thread::sleep(Duration::from_millis(800));
    let mut sent = before.finish();
    // The queue dies mid-stream (SIGKILL) and stays down; ingest goes on into the spool.
    let during = Load::start(&g, 2, false);
    std::thread::sleep(Duration::from_millis(200));
    ns.kill();
    std::thread::sleep(Duration::from_secs(outage_secs()));
    let outage = during.finish();
    let answered_during: Vec<u16> = outage.iter().filter_map(|s| s.status).collect();
    assert!(
        answered_during.iter().all(|&s| s == 202),
        "ingest must keep answering 202: {:?}",
        answered_during
            .iter()
            .filter(|&&s| s != 202)
            .collect::<Vec<_>>()
    );
    assert!(answered_during.len() > 50);
    assert!(spool_events(&g) > 0, "the spool holds the backlog");
    let metrics = g.ops_get("/metrics").body_text();
    assert!(metrics.contains("vvgate_forward_connected 0"), "{metrics}");
    sent.extend(outage);
    // The queue comes back; load continues; everything drains.
    ns.restart();
    let after = Load::start(&g, 2, false);
    std::thread::sleep(Duration::from_millis(800));
    sent.extend(after.finish());
    wait_drained(&g, 60);
    let accepted = sent.iter().filter(|s| s.status == Some(202)).count();
    let t = tally(&ns, &pki, &sent);
    eprintln!(
        "queue outage ({} s): sent {}, answered 202 {}, in stream {}, duplicated {}, lost {}",
        outage_secs(),
        sent.len(),
        accepted,
        t.in_stream,
        t.duplicated,
        t.lost.len()
    );
    assert_eq!(t.lost.len(), 0, "{:?}", t.lost);
    assert_eq!(t.duplicated, 0);
    assert_eq!(t.in_stream, accepted);
}

#[test]
fn gateway_sigkill_under_load_loses_and_duplicates_nothing() {
    let (dir, pki) = new_pki();
    let ns = NatsServer::start(&pki, NatsAuth::UserPass);
    let mut base = Opts::default().with("rate_limit_per_minute = 1000000");
    base.port = Some(free_port());
    let opts = ns.gateway_opts(&pki, base);
    let mut g = Gateway::start_in(dir, pki.clone(), opts);
    let mut sent = Vec::new();
    for round in 0..3u64 {
        let load = Load::start(&g, 3, true);
        std::thread::sleep(Duration::from_millis(
            300 + (now() * 131 + round * 977) % 700,
        ));
        g.kill9();
        std::thread::sleep(Duration::from_millis(100));
        g.restart();
        std::thread::sleep(Duration::from_millis(300));
        sent.extend(load.finish());
    }
    // Requests whose answer was lost: the producer re-sends the same bytes.
    let mut c = g.connect();
    let mut settled = 0;
    for s in sent.iter_mut().filter(|s| s.status.is_none()) {
        let r = c.send(&s.request).unwrap();
        match r.status {
            202 => s.status = Some(202),
            409 => {
                assert_eq!(json(&r)["original"]["accepted"], true, "{}", r.body_text());
                s.status = Some(202); // it had been accepted before the crash
            }
            other => panic!("unexpected {other}: {}", r.body_text()),
        }
        settled += 1;
    }
    wait_drained(&g, 60);
    let accepted = sent.iter().filter(|s| s.status == Some(202)).count();
    let t = tally(&ns, &pki, &sent);
    eprintln!(
        "gateway SIGKILL x3: sent {}, answered 202 {} (of which {settled} settled by a retry), in stream {}, duplicated {}, lost {}",
        sent.len(),
        accepted,
        t.in_stream,
        t.duplicated,
        t.lost.len()
    );
    assert!(accepted >= 30);
    assert_eq!(t.lost.len(), 0, "{:?}", t.lost);
    assert_eq!(
        t.duplicated, 0,
        "the stream deduplicates re-publishes by Nats-Msg-Id"
    );
    assert_eq!(t.in_stream, accepted);
}

#[test]
fn a_full_spool_refuses_then_recovers_when_the_queue_returns() {
    let (dir, pki) = new_pki();
    let mut ns = NatsServer::start(&pki, NatsAuth::UserPass);
    let g = gateway_for(&ns, dir, pki.clone(), &["spool_max_events = 25"]);
    ns.kill();
    let p = g.pki.producer();
    let mut c = g.connect();
    let mut sent = Vec::new();
    let mut refused: Option<Vec<u8>> = None;
    for _ in 0..40 {
        let s = valid();
        let req = request(&p, &s);
        let r = c.send(&req).unwrap();
        if r.status == 503 {
            assert_eq!(json(&r)["detail"], "Telemetry queue publish failed");
            assert!(r.header("retry-after").is_some());
            refused.get_or_insert(req.clone());
        } else {
            assert_eq!(r.status, 202);
        }
        sent.push(Sent {
            nonce: s.nonce,
            request: req,
            status: Some(r.status),
            request_id: None,
        });
    }
    assert_eq!(sent.iter().filter(|s| s.status == Some(202)).count(), 25);
    let ready = g.ops_get("/readyz");
    assert_eq!(json(&ready)["reasons"], serde_json::json!(["spool_full"]));
    ns.restart();
    wait_drained(&g, 60);
    // The refused request was not burned: the same bytes are accepted now.
    let again = refused.expect("a 503");
    let r = c.send(&again).unwrap();
    assert_eq!(r.status, 202, "{}", r.body_text());
    for s in sent.iter_mut() {
        if s.request == again {
            s.status = Some(202);
        }
    }
    wait_drained(&g, 30);
    let t = tally(&ns, &pki, &sent);
    assert_eq!((t.in_stream, t.duplicated, t.lost.len()), (26, 0, 0));
    assert_eq!(g.ops_get("/readyz").status, 200);
}

#[test]
fn nkey_authentication_against_the_real_server() {
    let (dir, pki) = new_pki();
    let ns = NatsServer::start(&pki, NatsAuth::NKey);
    let g = gateway_for(&ns, dir, pki.clone(), &[]);
    let mut c = g.connect();
    let mut sent = Vec::new();
    for _ in 0..10 {
        let s = valid();
        let r = c.send(&request(&g.pki.producer(), &s)).unwrap();
        sent.push(Sent {
            nonce: s.nonce,
            request: Vec::new(),
            status: Some(r.status),
            request_id: None,
        });
    }
    wait_drained(&g, 30);
    let t = tally(&ns, &pki, &sent);
    assert_eq!((t.in_stream, t.duplicated, t.lost.len()), (10, 0, 0));
}

#[test]
fn a_missing_or_wrong_stream_is_a_clear_start_up_error() {
    let (dir, pki) = new_pki();
    let ns = NatsServer::start(&pki, NatsAuth::UserPass);
    // No stream and create_stream = false.
    let opts = ns.gateway_opts(&pki, Opts::default());
    let text =
        config_text(&dir, &pki, &opts).replace("create_stream = true", "create_stream = false");
    let cfg = dir.join("nostream.toml");
    std::fs::write(&cfg, text).unwrap();
    let (code, err) = vvgated_exit(&cfg, 30);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("VECTORVUE_TELEMETRY") && err.contains("does not exist"),
        "{err}"
    );
    // A stream whose duplicate window is shorter than the nonce retention.
    smol::block_on(async {
        use vvgate::nats::{Connection, Credentials, NatsOptions};
        let opts = NatsOptions {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], ns.port)),
            server_name: "127.0.0.1".into(),
            tls: vvgate::client::client_config(
                &pki.path("ca.pem"),
                &pki.path("nats-client.pem"),
                &pki.path("nats-client.key"),
            )
            .unwrap(),
            credentials: Credentials::load(&pki.path("nats.creds")).unwrap(),
            name: "e2e-admin".into(),
            timeout: Duration::from_secs(10),
        };
        let mut conn = Connection::connect(&opts, "e2eadmin").await.unwrap();
        let cfg = br#"{"name":"VECTORVUE_TELEMETRY","subjects":["vectorvue.telemetry.ingest","vectorvue.telemetry.dlq","vectorvue.audit.checkpoint","vectorvue.audit.segment"],"storage":"file","duplicate_window":10000000000}"#;
        let r = conn
            .request(
                "$JS.API.STREAM.CREATE.VECTORVUE_TELEMETRY",
                cfg,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&r.payload).contains("\"error\""),
            "{}",
            String::from_utf8_lossy(&r.payload)
        );
    });
    let (code, err) = vvgated_exit(&cfg, 30);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("duplicate_window is 10s"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP "queue server" that answers every connection with `reply` and then junk.
fn hostile_server(reply: Vec<u8>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let reply = reply.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let _ = s.write_all(&reply);
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(&[0xffu8; 8192]);
            });
        }
    });
    port
}

#[test]
fn a_hostile_queue_server_cannot_crash_the_gateway_or_drop_events() {
    let huge_info = {
        let mut v = b"INFO {\"x\":\"".to_vec();
        v.extend(std::iter::repeat_n(b'a', 200_000));
        v
    };
    for (name, reply) in [
        ("oversized INFO", huge_info),
        ("INFO not JSON", b"INFO {{{\r\n".to_vec()),
        (
            "no TLS offered",
            b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n".to_vec(),
        ),
        (
            "garbage after INFO",
            b"INFO {\"tls_required\":true}\r\n".to_vec(),
        ),
        ("unknown op", b"HELLO there\r\n".to_vec()),
    ] {
        let port = hostile_server(reply);
        let (dir, pki) = new_pki();
        // Credentials and certificates exist; the server is the problem.
        vvgate::devpki::DevCa::load(&pki.dir)
            .unwrap()
            .issue_client(&pki.dir, "nats-client", "vvgate-gateway")
            .unwrap();
        vvgate::devpki::write_private(&pki.path("nats.creds"), b"u:p").unwrap();
        let mut opts = Opts::default()
            .with("queue_backend = \"nats\"")
            .with(&format!("nats_url = \"tls://127.0.0.1:{port}\""));
        opts.extra_toml = format!(
            "\n[nats]\nca_path = \"{ca}\"\ncert_path = \"{d}/nats-client.pem\"\nkey = \"file:{d}/nats-client.key\"\ncredentials_file = \"{d}/nats.creds\"\n",
            ca = pki.path("ca.pem").display(),
            d = pki.dir.display()
        );
        let g = Gateway::start_in(dir, pki, opts);
        let mut c = g.connect();
        for _ in 0..5 {
            let r = c.send(&request(&g.pki.producer(), &valid())).unwrap();
            assert_eq!(r.status, 202, "{name}: {}", r.body_text());
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(spool_events(&g), 5, "{name}: events stay spooled");
        let m = g.ops_get("/metrics").body_text();
        assert!(m.contains("vvgate_forward_connected 0"), "{name}");
        assert!(
            !m.contains("vvgate_forward_errors_total 0\n"),
            "{name}: errors are counted"
        );
        assert_eq!(
            g.ops_get("/readyz").status,
            200,
            "{name}: a queue outage alone is not unready"
        );
    }
}

#[test]
fn a_restart_on_an_emptied_spool_comes_up_and_forwards() {
    // Everything forwarded and deleted before a crash leaves an empty spool whose next
    // sequence number is above 0; the forwarder of the next start must not take that for
    // unread segments (it once spun on the event loop there, and the start never finished).
    let (dir, pki) = new_pki();
    let ns = NatsServer::start(&pki, NatsAuth::UserPass);
    let mut g = gateway_for(&ns, dir, pki.clone(), &[]);
    let p = pki.producer();
    let first = request(&p, &valid());
    let mut c = g.connect();
    assert_eq!(c.send(&first).unwrap().status, 202);
    wait_drained(&g, 30);
    // A decision after the deletions makes them durable (a replay: answered 409, audited).
    assert_eq!(c.send(&first).unwrap().status, 409);
    drop(c);
    g.kill9();
    // Start-up finishes (the harness fails the test after 60 s otherwise) ...
    g.restart();
    assert!(
        g.log_text()
            .contains("start-up: queue connected, stream checked"),
        "{}",
        g.log_text()
    );
    // ... and the next event is forwarded.
    let second = valid();
    assert_eq!(g.connect().send(&request(&p, &second)).unwrap().status, 202);
    wait_drained(&g, 30);
    let in_stream: Vec<String> = ns
        .messages(&pki)
        .iter()
        .filter(|m| m.subject == "vectorvue.telemetry.ingest")
        .map(|m| {
            m.envelope()["payload"]["nonce"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(in_stream.len(), 2, "{in_stream:?}");
    assert!(in_stream.contains(&second.nonce));
}
