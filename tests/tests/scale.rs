//! Scale-out: several gateways on one 3-node JetStream cluster with cluster-wide replay
//! protection (`nonce_backend = "jetstream_kv"`), HAProxy in TCP mode in front of them.
//! Every test counts events end to end: sent, acknowledged (202, or 409 naming an earlier
//! acceptance), in the stream, duplicated, lost.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vvgate::client::{post_request, Connection, HttpResponse, Producer};
use vvgate_e2e::cluster::{Haproxy, NatsCluster, BUCKET};
use vvgate_e2e::*;

struct Site {
    pki: Pki,
    nats: NatsCluster,
    gateways: Vec<Gateway>,
}

/// A cluster, the R3 stream, and one gateway per `(node, appliance, extra line)`.
fn site(gws: &[(usize, &str, &str)]) -> Site {
    let gws: Vec<(&[usize], &str, &str)> = gws
        .iter()
        .map(|(node, name, extra)| (std::slice::from_ref(node), *name, *extra))
        .collect();
    site_nodes(&gws)
}

/// As `site`, each gateway given its list of queue nodes (`nats_url`, tried in turn).
fn site_nodes(gws: &[(&[usize], &str, &str)]) -> Site {
    let dir = temp_dir("scale");
    let pki = Pki::new(&dir.join("pki"));
    let nats = NatsCluster::start(&pki);
    nats.create_stream(&pki);
    let gateways = gws
        .iter()
        .map(|(nodes, name, extra)| {
            let mut base =
                Opts::default().with(&extra.replace("PKI", &pki.dir.display().to_string()));
            base.port = Some(free_port());
            let opts = nats.gateway_opts_nodes(&pki, nodes, name, base);
            Gateway::start_in(temp_dir(&format!("gw-{name}")), pki.clone(), opts)
        })
        .collect();
    Site {
        pki,
        nats,
        gateways,
    }
}

fn send_once(addr: SocketAddr, p: &Producer, req: &[u8]) -> Option<HttpResponse> {
    let mut c =
        Connection::connect_tls(addr, "localhost", p.tls.clone(), Duration::from_secs(5)).ok()?;
    c.send(req).ok()
}

/// Ingest envelopes in the stream, by nonce.
fn ingest_by_nonce(s: &Site, node: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for msg in s.nats.messages(&s.pki, node) {
        if msg.subject == "vectorvue.telemetry.ingest" {
            let n = msg.envelope()["payload"]["nonce"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            *m.entry(n).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn the_same_request_on_two_appliances_is_accepted_once() {
    let s = site(&[
        (0, "gw-a", "idempotent_retry = true"),
        (1, "gw-b", "rate_limit_per_minute = 3"),
    ]);
    let (a, b) = (&s.gateways[0], &s.gateways[1]);
    let p = s.pki.producer();

    // A first, then B: B answers 409 with A's request id.
    let v = valid();
    let req = request(&p, &v);
    let r = send_once(a.addr, &p, &req).expect("A answers");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id_a = json(&r)["request_id"].as_str().unwrap().to_owned();
    let r = send_once(b.addr, &p, &req).expect("B answers");
    assert_eq!(r.status, 409);
    assert_eq!(json(&r)["original"]["request_id"], id_a.as_str());
    assert_eq!(json(&r)["detail"], "Replay detected: nonce already used");
    let audit = b.audit_for(r.header("x-request-id").unwrap()).unwrap();
    assert_eq!(audit["details"]["original_request_id"], id_a.as_str());

    // B first, then A (idempotent_retry): 202 with B's id.
    let w = valid();
    let req_w = request(&p, &w);
    let r = send_once(b.addr, &p, &req_w).expect("B answers");
    assert_eq!(r.status, 202);
    let id_b = json(&r)["request_id"].as_str().unwrap().to_owned();
    let r = send_once(a.addr, &p, &req_w).expect("A answers");
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-idempotent-replay"), Some("true"));
    assert_eq!(json(&r)["request_id"], id_b.as_str());

    // Another body under the same nonce on the other appliance: a plain replay.
    let other = event_with(v.ts, &v.nonce, |e| {
        e["signed_metadata"]["campaign_id"] = "cmp-002".into();
        e["campaign_id"] = "cmp-002".into();
    });
    let r = send_once(b.addr, &p, &request(&p, &other)).expect("B answers");
    assert_eq!(r.status, 409);
    assert!(json(&r).get("original").is_none());

    // A value no gateway wrote: a replay, audited with the reason.
    let x = valid();
    let key = vvgate::cluster::value::kv_key(&x.ts.to_string(), &x.nonce);
    let put = s.nats.put(&s.pki, 2, &key, b"{\"owner\":\"someone else\"}");
    assert!(put.get("error").is_none(), "{put}");
    let r = send_once(a.addr, &p, &request(&p, &x)).expect("A answers");
    assert_eq!(r.status, 409);
    let audit = a.audit_for(r.header("x-request-id").unwrap()).unwrap();
    assert_eq!(audit["details"]["sub_reason"], "kv_value_malformed");

    // The rate limit is counted per appliance (CONTRACT.md §3.7: in process memory): B's
    // 429 leaves the nonce free, and the same bytes are accepted by A, whose window has room.
    // So an operator gets up to N x rate_limit_per_minute through N appliances, and the
    // survivors take over the whole rate when one of them is down.
    let mut accepted = vec![v.nonce.clone(), w.nonce.clone()];
    let limited = (0..10).find_map(|_| {
        let e = valid();
        let r = send_once(b.addr, &p, &request(&p, &e)).expect("B answers");
        match r.status {
            202 => {
                accepted.push(e.nonce);
                None
            }
            429 => Some((e, r)),
            other => panic!("B answered {other}: {}", r.body_text()),
        }
    });
    let (e, r) = limited.expect("B rate-limits after 3 events a minute");
    assert_eq!(json(&r)["detail"], "Operator burst anomaly detected");
    assert!(r.header("retry-after").is_some());
    let r = send_once(a.addr, &p, &request(&p, &e)).expect("A answers");
    assert_eq!(r.status, 202, "{}", r.body_text());
    assert!(r.header("x-idempotent-replay").is_none());
    accepted.push(e.nonce);

    // The stream holds each accepted event once; nothing of the refused ones.
    wait_for(20, "the accepted events in the stream", || {
        let m = ingest_by_nonce(&s, 0);
        accepted.iter().all(|n| m.get(n) == Some(&1))
    });
    let m = ingest_by_nonce(&s, 0);
    assert_eq!(m.len(), accepted.len(), "{m:?}");
    assert!(!m.contains_key(&x.nonce));
    // The bucket was created by the first gateway with three replicas.
    let info = s
        .nats
        .request(&s.pki, 0, &format!("$JS.API.STREAM.INFO.KV_{BUCKET}"), b"")
        .unwrap();
    assert_eq!(info["config"]["num_replicas"], 3, "{info}");
    assert_eq!(info["config"]["max_msgs_per_subject"], 1);
}

/// The feedback signing key of the test PKI (the feedback query needs one); `site` puts in
/// the PKI's directory.
fn feedback_key_lines() -> String {
    "feedback_active_kid = \"fb-e2e\"\nfeedback_ed25519_keys = { \"fb-e2e\" = \"file:PKI/feedback.pem\" }".into()
}

/// Sign `body` for `(ts, nonce)` and post it to `path` on `addr`.
fn post(
    addr: SocketAddr,
    p: &Producer,
    path: &str,
    ts: u64,
    nonce: &str,
    body: &[u8],
) -> HttpResponse {
    let h = p.headers(ts, nonce, body, None);
    send_once(addr, p, &post_request(path, "localhost", &h, body)).expect("an answer")
}

const GRAPH: &str = "/internal/v1/cognitive/execution-graph";
const FEEDBACK: &str = "/internal/v1/cognitive/feedback/adjustments/query";
const FEDERATION: &str = "/internal/v1/federation/verify";
const TENANT: &str = "10000000-0000-0000-0000-000000000001";

fn graph(ts: u64, nonce: &str) -> Vec<u8> {
    let fp = "0c40dbd5295bc42311cb7f980880d9407e386bca6f83639de3a38144a037e6cd";
    serde_json::to_vec(&serde_json::json!({
        "operator_id": "op-001", "tenant_id": TENANT, "execution_fingerprint": fp,
        "timestamp": ts, "nonce": nonce, "schema_version": "execution.graph.v1",
        "attestation_measurement_hash": "5c83f7d75de535ed4e51f088c71824dc6b2c2d3080e5de24b67eb5daa259fe10",
        "graph": {"graph_id": "g-1", "tenant_id": TENANT, "execution_fingerprint": fp,
                  "operator_id": "op-001", "nodes": [{"id": "n0", "type": "step"}], "edges": []}
    }))
    .unwrap()
}

/// A federation bundle signed with the producer key (the default federation key), and its
/// bundle hash.
fn bundle(pki: &Pki, ts: u64, nonce: &str) -> (Vec<u8>, String) {
    use base64::Engine;
    let key = vvgate::client::signing_key(&pki.path("producer-signing.seed")).unwrap();
    let exec = "ab".repeat(32);
    let msg = format!("op-001|cmp-001|{exec}|{ts}|{nonce}");
    let sig = base64::engine::general_purpose::STANDARD.encode(key.sign(msg.as_bytes()));
    let hash = vvgate::ids::hex32(&vvgate::ids::sha256(msg.as_bytes())).to_string();
    let body = serde_json::json!({"bundle": {"operator_id": "op-001", "campaign_id": "cmp-001",
        "execution_hash": exec, "timestamp": ts, "nonce": nonce, "signature": sig}});
    (serde_json::to_vec(&body).unwrap(), hash)
}

/// The cognitive routes share telemetry's nonces and federation has its own; in cluster mode
/// both are cluster-wide: a request accepted by one appliance is a replay (or re-send) at
/// every other (CONTRACT.md §3.5, §3.6).
#[test]
fn cognitive_and_federation_requests_are_accepted_once_across_appliances() {
    let fb = feedback_key_lines();
    let s = site(&[
        (0, "gw-a", &format!("idempotent_retry = true\n{fb}")),
        (1, "gw-b", &fb),
    ]);
    let (a, b) = (&s.gateways[0], &s.gateways[1]);
    let p = s.pki.producer();

    // An execution graph on A, then the same bytes on B: 409 naming A's acceptance.
    let (ts, n) = (now(), nonce());
    let g = graph(ts, &n);
    let r = post(a.addr, &p, GRAPH, ts, &n, &g);
    assert_eq!(r.status, 202, "{}", r.body_text());
    let id_a = json(&r)["request_id"].as_str().unwrap().to_owned();
    let r = post(b.addr, &p, GRAPH, ts, &n, &g);
    assert_eq!(r.status, 409, "{}", r.body_text());
    assert_eq!(json(&r)["detail"], "Replay detected: nonce already used");
    assert_eq!(json(&r)["original"]["request_id"], id_a.as_str());
    // The namespace is telemetry's: a telemetry event under the graph's nonce is a replay.
    let r = send_once(b.addr, &p, &request(&p, &event_with(ts, &n, |_| {}))).unwrap();
    assert_eq!(r.status, 409);
    assert!(json(&r).get("original").is_none());
    // B first, then A (idempotent_retry): A answers B's success.
    let (ts2, n2) = (now(), nonce());
    let g2 = graph(ts2, &n2);
    let r = post(b.addr, &p, GRAPH, ts2, &n2, &g2);
    assert_eq!(r.status, 202, "{}", r.body_text());
    let id_b = json(&r)["request_id"].as_str().unwrap().to_owned();
    let r = post(a.addr, &p, GRAPH, ts2, &n2, &g2);
    assert_eq!(r.status, 202, "{}", r.body_text());
    assert_eq!(r.header("x-idempotent-replay"), Some("true"));
    assert_eq!(json(&r)["request_id"], id_b.as_str());
    assert_eq!(json(&r)["status"], "accepted");

    // A feedback query on A, then on B: the plain 409 (its response is not stored).
    let (ts3, n3) = (now(), nonce());
    let q = serde_json::to_vec(
        &serde_json::json!({"operator_id": "op-001", "tenant_id": TENANT,
        "timestamp": ts3, "nonce": n3}),
    )
    .unwrap();
    let r = post(a.addr, &p, FEEDBACK, ts3, &n3, &q);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = post(b.addr, &p, FEEDBACK, ts3, &n3, &q);
    assert_eq!(r.status, 409, "{}", r.body_text());
    assert!(json(&r).get("original").is_none());

    // Federation, in its own namespace: A then B is a 409 naming A's acceptance ...
    let (ts4, n4) = (now(), format!("fed-{}", nonce()));
    let (f, hash) = bundle(&s.pki, ts4, &n4);
    let r = post(a.addr, &p, FEDERATION, ts4, &n4, &f);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(json(&r)["bundle_hash"], hash.as_str());
    let fed_a = r.header("x-request-id").unwrap().to_owned();
    let r = post(b.addr, &p, FEDERATION, ts4, &n4, &f);
    assert_eq!(r.status, 409, "{}", r.body_text());
    assert_eq!(
        json(&r)["detail"],
        "Replay detected: federation bundle nonce already used"
    );
    assert_eq!(json(&r)["original"]["request_id"], fed_a.as_str());
    let audit = b.audit_for(r.header("x-request-id").unwrap()).unwrap();
    assert_eq!(audit["event_type"], "federation.rejected");
    // ... B then A (idempotent_retry) answers the bundle hash again ...
    let (ts5, n5) = (now(), format!("fed-{}", nonce()));
    let (f5, hash5) = bundle(&s.pki, ts5, &n5);
    let r = post(b.addr, &p, FEDERATION, ts5, &n5, &f5);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = post(a.addr, &p, FEDERATION, ts5, &n5, &f5);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-idempotent-replay"), Some("true"));
    assert_eq!(json(&r)["bundle_hash"], hash5.as_str());
    // ... and a telemetry event under a federation nonce is not a replay.
    let r = send_once(a.addr, &p, &request(&p, &event_with(ts4, &n4, |_| {}))).unwrap();
    assert_eq!(r.status, 202, "{}", r.body_text());
    // A foreign value under a federation key: a replay, audited with the reason.
    let (ts6, n6) = (now(), format!("fed-{}", nonce()));
    let key = vvgate::cluster::value::federation_kv_key(ts6, &n6);
    let put = s.nats.put(&s.pki, 2, &key, b"{}");
    assert!(put.get("error").is_none(), "{put}");
    let r = post(
        a.addr,
        &p,
        FEDERATION,
        ts6,
        &n6,
        &bundle(&s.pki, ts6, &n6).0,
    );
    assert_eq!(r.status, 409, "{}", r.body_text());
    let audit = a.audit_for(r.header("x-request-id").unwrap()).unwrap();
    assert_eq!(audit["details"]["sub_reason"], "kv_value_malformed");

    // The bucket's metrics: connected, creates that won and lost, reads, round trips.
    let m = a.ops_get("/metrics").body_text();
    assert!(m.contains("vvgate_nonce_bucket_connected 1\n"), "{m}");
    let metric = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {m}"))
    };
    assert!(metric("vvgate_nonce_bucket_requests_total{outcome=\"created\"}") >= 4);
    assert!(metric("vvgate_nonce_bucket_requests_total{outcome=\"found\"}") >= 3);
    assert_eq!(
        metric("vvgate_nonce_bucket_requests_total{outcome=\"unavailable\"}"),
        0
    );
    assert!(metric("vvgate_nonce_bucket_round_trip_seconds_count") >= 7);
}

/// What one producer event came to.
struct Outcome {
    nonce: String,
    acknowledged: bool,
    attempts: u32,
    /// Every answer, as runs of equal answers: (status or 0 for a connection error, detail,
    /// the first and last `X-Request-Id` of the run, how many).
    answers: Vec<Run>,
}

/// Equal answers in a row.
struct Run {
    status: u16,
    detail: String,
    first_id: String,
    last_id: String,
    count: u32,
}

impl Outcome {
    fn note(&mut self, status: u16, detail: String, id: &str) {
        match self.answers.last_mut() {
            Some(r) if r.status == status && r.detail == detail => {
                r.count += 1;
                id.clone_into(&mut r.last_id);
            }
            _ => self.answers.push(Run {
                status,
                detail,
                first_id: id.to_owned(),
                last_id: id.to_owned(),
                count: 1,
            }),
        }
    }
}

/// Producers through `addr` (HAProxy), each sending `per_thread` fresh events and retrying
/// the same bytes after connection errors, 429 and 503, as the SpectraStrike producer does
/// (a new connection after a connection error, the same one otherwise). An event is
/// acknowledged by 202, or by 409 naming an earlier acceptance (CONTRACT.md §3.6: the
/// original 202 was lost with the appliance that sent it).
fn producers(
    addr: SocketAddr,
    pki: &Pki,
    threads: usize,
    per_thread: usize,
) -> Vec<std::thread::JoinHandle<Vec<Outcome>>> {
    (0..threads)
        .map(|_| {
            let pki = pki.clone();
            std::thread::spawn(move || {
                let p = pki.producer();
                let mut out = Vec::new();
                let mut conn: Option<Connection> = None;
                for _ in 0..per_thread {
                    let v = valid();
                    let req = request(&p, &v);
                    let deadline = Instant::now() + Duration::from_secs(45);
                    let mut o = Outcome {
                        nonce: v.nonce.clone(),
                        acknowledged: false,
                        attempts: 0,
                        answers: Vec::new(),
                    };
                    while Instant::now() < deadline {
                        o.attempts += 1;
                        if conn.is_none() {
                            conn = Connection::connect_tls(
                                addr,
                                "localhost",
                                p.tls.clone(),
                                Duration::from_secs(5),
                            )
                            .ok();
                        }
                        let Some(Ok(r)) = conn.as_mut().map(|c| c.send(&req)) else {
                            o.note(0, "connection error".into(), "");
                            conn = None;
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        let body = json(&r);
                        let detail = if r.header("x-idempotent-replay").is_some() {
                            "idempotent replay".to_owned()
                        } else {
                            body["detail"].as_str().unwrap_or_default().to_owned()
                        };
                        o.note(r.status, detail, r.header("x-request-id").unwrap_or(""));
                        match r.status {
                            202 => {
                                o.acknowledged = true;
                                break;
                            }
                            409 if body.get("original").is_some() => {
                                o.acknowledged = true;
                                break;
                            }
                            503 | 429 => std::thread::sleep(Duration::from_millis(100)),
                            _ => panic!("final answer {}: {body}", r.status),
                        }
                    }
                    out.push(o);
                }
                out
            })
        })
        .collect()
}

/// Which gateway wrote the audit entry of request `id`.
fn who(gateways: &[Gateway], id: &str) -> String {
    if id.is_empty() {
        return "-".into();
    }
    gateways
        .iter()
        .enumerate()
        .find(|(_, g)| g.audit_for(id).is_some())
        .map_or_else(|| "none".into(), |(i, _)| format!("gw{i}"))
}

/// For every unacknowledged event, what each retry got: status, reason, which appliance.
fn explain_unacknowledged(s: &Site, outcomes: &[Outcome]) -> String {
    let mut text = String::new();
    for o in outcomes.iter().filter(|o| !o.acknowledged) {
        text.push_str(&format!("event {} ({} attempts):\n", o.nonce, o.attempts));
        for r in &o.answers {
            text.push_str(&format!(
                "  {} x{} {:?} first at {} last at {}\n",
                r.status,
                r.count,
                r.detail,
                who(&s.gateways, &r.first_id),
                who(&s.gateways, &r.last_id)
            ));
        }
    }
    text
}

/// Sent / acknowledged / in the stream / duplicated / lost, asserted 0 lost and 0 duplicated.
fn count(s: &Site, node: usize, outcomes: &[Outcome], what: &str) {
    let acked: BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| o.acknowledged)
        .map(|o| o.nonce.as_str())
        .collect();
    wait_for(60, "every acknowledged event in the stream", || {
        let m = ingest_by_nonce(s, node);
        acked.iter().all(|n| m.contains_key(*n))
    });
    let m = ingest_by_nonce(s, node);
    let dup = m.values().filter(|&&c| c > 1).count();
    let lost = acked.iter().filter(|n| !m.contains_key(**n)).count();
    let retries: u32 = outcomes.iter().map(|o| o.attempts - 1).sum();
    let mut answers: BTreeMap<(u16, &str), u32> = BTreeMap::new();
    for r in outcomes.iter().flat_map(|o| &o.answers) {
        *answers.entry((r.status, r.detail.as_str())).or_insert(0) += r.count;
    }
    eprintln!(
        "{what}: sent {} events ({retries} retries), acknowledged {}, in the stream {}, duplicated {dup}, lost {lost}; answers {answers:?}",
        outcomes.len(),
        acked.len(),
        m.len()
    );
    assert_eq!(
        acked.len(),
        outcomes.len(),
        "every event acknowledged in time\n{}",
        explain_unacknowledged(s, outcomes)
    );
    // Under LOAD_POLICY a 429 would be a rate limit nobody configured.
    assert!(
        !answers.keys().any(|(status, _)| *status == 429),
        "rate-limited: {answers:?}"
    );
    assert_eq!(dup, 0, "duplicates");
    assert_eq!(lost, 0, "lost");
    // Nothing in the stream that no producer sent.
    let sent: BTreeSet<&str> = outcomes.iter().map(|o| o.nonce.as_str()).collect();
    assert!(m.keys().all(|n| sent.contains(n.as_str())));
}

/// Policy for the load tests: a rate limit far above what they send. 240 events of one
/// operator in a few seconds exceed the default 120 a minute per appliance, and the rate limit
/// is counted per appliance: with one appliance down the survivor answers 429 to the whole
/// fleet until the minute window rolls over (up to 60 s, past the producers' 45 s).
const LOAD_POLICY: &str = "rate_limit_per_minute = 100000\nidempotent_retry = true";

#[test]
fn an_appliance_killed_under_load_loses_and_duplicates_nothing() {
    // A skew window that outlasts a restart on a loaded machine, so the producers' retries of
    // the same bytes are still fresh when they finally get through.
    let cfg = &format!("allowed_clock_skew_seconds = 120\n{LOAD_POLICY}");
    let mut s = site(&[(0, "gw-a", cfg), (1, "gw-b", cfg)]);
    let addrs: Vec<_> = s.gateways.iter().map(|g| g.addr).collect();
    let Some(lb) = Haproxy::start(&addrs) else {
        panic!("haproxy is not installed (scripts/test-all.sh installs it)");
    };
    let load = producers(lb.addr, &s.pki, 4, 60);
    std::thread::sleep(Duration::from_millis(1500));
    s.gateways[0].kill9();
    std::thread::sleep(Duration::from_millis(1500));
    // Back with its spool and its open claims (settled against the bucket).
    s.gateways[0].restart();
    let outcomes: Vec<Outcome> = load
        .into_iter()
        .flat_map(|t| t.join().expect("producer"))
        .collect();
    count(&s, 2, &outcomes, "appliance SIGKILL");
}

#[test]
fn a_queue_node_killed_and_restarted_under_load_loses_and_duplicates_nothing() {
    // A is connected to node 2 (its first node) and lists node 0 as well; B only knows node 1.
    let mut s = site_nodes(&[(&[2, 0], "gw-a", LOAD_POLICY), (&[1], "gw-b", LOAD_POLICY)]);
    let addrs: Vec<_> = s.gateways.iter().map(|g| g.addr).collect();
    let lb = Haproxy::start(&addrs).expect("haproxy (scripts/test-all.sh installs it)");
    let load = producers(lb.addr, &s.pki, 4, 60);
    std::thread::sleep(Duration::from_millis(1000));
    let killed = Instant::now();
    s.nats.kill(2);
    // A moves to node 0 for both its forwarder and its bucket connection, and is ready again
    // while node 2 is still down.
    let a = &s.gateways[0];
    wait_for(20, "A ready through another node", || {
        let m = a.ops_get("/metrics").body_text();
        a.ops_get("/readyz").status == 200
            && m.contains("vvgate_nonce_bucket_connected 1\n")
            && !m.contains("vvgate_nonce_bucket_reconnects_total 0\n")
    });
    let ready_ms = killed.elapsed().as_millis();
    // The forwarder follows (its stream check waits for JetStream to elect new leaders when
    // the lost node led the stream or the meta group).
    wait_for(30, "A forwarding through another node", || {
        let m = a.ops_get("/metrics").body_text();
        m.contains("vvgate_forward_connected 1\n") && !m.contains("vvgate_forward_errors_total 0\n")
    });
    eprintln!(
        "node 2 killed: A ready again through node 0 after {ready_ms} ms, forwarding after {} ms",
        killed.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(killed.elapsed()));
    s.nats.restart(2);
    let outcomes: Vec<Outcome> = load
        .into_iter()
        .flat_map(|t| t.join().expect("producer"))
        .collect();
    // Ingest kept answering: most events needed no retry at all.
    let first_try = outcomes.iter().filter(|o| o.attempts == 1).count();
    assert!(first_try > 0);
    count(&s, 0, &outcomes, "queue node SIGKILL and restart");
}

#[test]
fn an_unreachable_bucket_fails_closed_and_recovers_without_restart() {
    // A skew window that outlasts the cluster's recovery, so the retry is still fresh.
    let mut s = site(&[(
        0,
        "gw-a",
        "retry_after_seconds = 2\nallowed_clock_skew_seconds = 300\nidempotent_retry = true",
    )]);
    let a = &s.gateways[0];
    let p = s.pki.producer();
    let before = valid();
    let r = send_once(a.addr, &p, &request(&p, &before)).unwrap();
    assert_eq!(r.status, 202);

    // Two of three nodes gone: no quorum, the bucket cannot answer.
    s.nats.kill(1);
    s.nats.kill(2);
    let v = valid();
    let req = request(&p, &v);
    let r = send_once(a.addr, &p, &req).unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r)["detail"], "Nonce store unavailable");
    assert_eq!(r.header("retry-after"), Some("2"));
    let audit = a.audit_for(r.header("x-request-id").unwrap()).unwrap();
    assert_eq!(audit["details"]["sub_reason"], "nonce_bucket_unavailable");
    wait_for(20, "readiness names the nonce store", || {
        let r = a.ops_get("/readyz");
        r.status == 503 && String::from_utf8_lossy(&r.body).contains("nonce_store_unavailable")
    });
    // Never accepted on local knowledge alone.
    let r = send_once(a.addr, &p, &request(&p, &valid())).unwrap();
    assert_eq!(r.status, 503);

    s.nats.restart(1);
    s.nats.restart(2);
    wait_for(60, "ready again", || a.ops_get("/readyz").status == 200);
    // The producer's retry of the same bytes is accepted, once.
    let mut status = 0;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let r = send_once(a.addr, &p, &req);
        status = r.as_ref().map_or(0, |r| r.status);
        last = r
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_default();
        if status == 202 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status, 202, "{last}\n{}", a.log_text());
    // Settled by the request or by the settler first: 202 either way with idempotent retry.
    let r = send_once(a.addr, &p, &req).unwrap();
    assert_eq!(r.status, 202, "a second retry is a re-send");
    assert_eq!(r.header("x-idempotent-replay"), Some("true"));
    wait_for(30, "events in the stream", || {
        let m = ingest_by_nonce(&s, 0);
        m.get(&before.nonce) == Some(&1) && m.get(&v.nonce) == Some(&1)
    });
    // The other request answered 503 may have been settled as accepted (its create may have
    // landed); nothing is in the stream twice.
    let m = ingest_by_nonce(&s, 0);
    assert!(m.len() <= 3 && m.values().all(|&c| c == 1), "{m:?}");
}
