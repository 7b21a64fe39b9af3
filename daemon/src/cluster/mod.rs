//! Cluster-wide replay protection (`nonce_backend = "jetstream_kv"`, docs/scale-out.md).
//!
//! Several appliances behind an L4 balancer share one JetStream KV bucket. A request accepted
//! anywhere owns the create-only key `n.` + hex SHA-256 of `"{ts}:{nonce}"`; every other
//! appliance then finds the key and answers as a re-send (CONTRACT.md §3.6). The local redb
//! nonce table stays the fast path and the record of what this appliance accepted.
//!
//! One task on the event loop owns a TLS connection to the JetStream cluster (`run`). Requests
//! hand it creates (`HPUB` with `Nats-Expected-Last-Subject-Sequence: 0`) and reads
//! (`STREAM.MSG.GET` last by subject) through a queue; it writes all that is queued, flushes
//! once, and matches replies by request number, so many creates are in flight at a time and
//! no request waits for another's round trip. The ordering that makes crashes safe (a local
//! claim, then the key, then the acceptance) is in `settle`.
//!
//! The bucket unreachable (no connection, or an answer overdue by `[cluster] timeout_ms`)
//! fails closed: requests that need it get 503 `Nonce store unavailable` with `Retry-After`,
//! readiness reports `nonce_store_unavailable`, and the task reconnects with backoff; nothing
//! needs a restart.

pub mod bucket;
pub mod settle;
pub mod value;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_channel::oneshot;
use smol::Timer;

use crate::config::ClusterConfig;
use crate::forward::ForwardSetup;
use crate::json::Tape;
use crate::nats::jetstream::{self, PubAck};
use crate::nats::{Connection, NatsError};
use bucket::BucketSpec;

/// JetStream's error number for a write whose expected last subject sequence does not hold
/// (the key exists).
const WRONG_LAST_SEQUENCE: i64 = 10071;
/// Requests queued for the task at most (beyond: 503 at once).
const MAX_QUEUED: usize = 65_536;

/// What one bucket operation came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Created,
    /// A create found the key already there.
    Exists,
    /// A read: the value, or `None` when the key is absent (or deleted).
    Found(Option<Vec<u8>>),
    /// No answer. `sent`: the operation may have reached the bucket.
    Unavailable {
        sent: bool,
    },
}

/// Whose key it is, after create-or-read.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    /// The bucket holds exactly this appliance's value.
    Ours,
    /// The bucket holds another value (another appliance's, or something foreign).
    Theirs(Vec<u8>),
    /// The bucket did not answer. `sent`: a create may have landed.
    Unavailable { sent: bool },
}

enum Kind {
    Create(Vec<u8>),
    Get,
}

struct Job {
    key: String,
    kind: Kind,
    reply: oneshot::Sender<Answer>,
}

/// What bucket operations came to, for `vvgate_nonce_bucket_requests_total{outcome}`.
pub const OUTCOMES: [&str; 5] = ["created", "exists", "found", "absent", "unavailable"];

/// Counters for metrics.
#[derive(Default)]
pub struct BucketStats {
    pub creates: Cell<u64>,
    pub conflicts: Cell<u64>,
    pub reads: Cell<u64>,
    /// Operations by outcome, in the order of [`OUTCOMES`].
    pub outcomes: [Cell<u64>; 5],
    pub reconnects: Cell<u64>,
    /// Claims resolved without a request (after a restart or an outage).
    pub settled: Cell<u64>,
    /// Answered operations and the sum of their round trips (write to answer), µs.
    pub answered: Cell<u64>,
    pub round_trip_us: Cell<u64>,
}

impl BucketStats {
    fn outcome(&self, a: &Answer) {
        let i = match a {
            Answer::Created => 0,
            Answer::Exists => 1,
            Answer::Found(Some(_)) => 2,
            Answer::Found(None) => 3,
            Answer::Unavailable { .. } => 4,
        };
        bump(&self.outcomes[i]);
    }
}

/// The event loop's handle on the shared bucket.
pub struct NonceBucket {
    pub spec: BucketSpec,
    pub appliance: String,
    timeout: Duration,
    jobs: RefCell<VecDeque<Job>>,
    wake: event_listener::Event,
    connected: Cell<bool>,
    /// Set when a claim may be left unresolved (an ambiguous create, or a start with claims
    /// in storage); the settler then walks the claims table.
    pub unsettled: Cell<bool>,
    pub settle_wake: event_listener::Event,
    pub stats: BucketStats,
    last_error: RefCell<String>,
}

impl NonceBucket {
    pub fn new(cfg: &ClusterConfig, min_ttl: Duration) -> Self {
        Self {
            spec: BucketSpec::new(cfg, min_ttl),
            appliance: cfg.appliance_id.clone(),
            timeout: cfg.timeout,
            jobs: RefCell::default(),
            wake: event_listener::Event::new(),
            connected: Cell::new(false),
            unsettled: Cell::new(true),
            settle_wake: event_listener::Event::new(),
            stats: BucketStats::default(),
            last_error: RefCell::default(),
        }
    }

    /// Whether the bucket is reachable now (readiness `nonce_store_unavailable` otherwise).
    pub fn ready(&self) -> bool {
        self.connected.get()
    }

    async fn submit(&self, key: &str, kind: Kind) -> Answer {
        if !self.connected.get() || self.jobs.borrow().len() >= MAX_QUEUED {
            let a = Answer::Unavailable { sent: false };
            self.stats.outcome(&a);
            return a;
        }
        let (tx, rx) = oneshot::channel();
        self.jobs.borrow_mut().push_back(Job {
            key: key.to_owned(),
            kind,
            reply: tx,
        });
        self.wake.notify(1);
        let a = rx.await.unwrap_or(Answer::Unavailable { sent: true });
        self.stats.outcome(&a);
        a
    }

    /// Create `key` with `value` unless it exists.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Answer {
        self.submit(key, Kind::Create(value)).await
    }

    /// Read `key`.
    pub async fn get(&self, key: &str) -> Answer {
        self.submit(key, Kind::Get).await
    }

    /// Create `key` with `value`, or find out whose it is. Idempotent: running it again for
    /// the same claim (after a crash, an outage, a lost answer) gives `Ours` exactly when
    /// the bucket holds `value`.
    pub async fn own(&self, key: &str, value: &[u8]) -> Owner {
        let mut sent = false;
        // A key can vanish between the create and the read (TTL); try again then.
        for _ in 0..3 {
            match self.create(key, value.to_vec()).await {
                Answer::Created => return Owner::Ours,
                Answer::Exists => {}
                Answer::Unavailable { sent: s } => return Owner::Unavailable { sent: sent || s },
                Answer::Found(_) => {}
            }
            sent = true;
            self.stats.conflicts.set(self.stats.conflicts.get() + 1);
            match self.get(key).await {
                Answer::Found(Some(v)) if v == value => return Owner::Ours,
                Answer::Found(Some(v)) => return Owner::Theirs(v),
                Answer::Found(None) => continue,
                Answer::Unavailable { .. } | Answer::Created | Answer::Exists => {
                    return Owner::Unavailable { sent: true }
                }
            }
        }
        // Refused as existing yet read as absent, repeatedly (a delete marker): fail closed.
        Owner::Theirs(Vec::new())
    }

    /// The bucket's metrics, in the Prometheus text format.
    pub fn render_metrics(&self, s: &mut String) {
        use std::fmt::Write as _;
        let st = &self.stats;
        s.push_str("# HELP vvgate_nonce_bucket_requests_total Operations on the shared nonce bucket by outcome (created, exists: a create found the key; found, absent: a read; unavailable: no answer).\n# TYPE vvgate_nonce_bucket_requests_total counter\n");
        for (name, n) in OUTCOMES.iter().zip(&st.outcomes) {
            let _ = writeln!(
                s,
                "vvgate_nonce_bucket_requests_total{{outcome=\"{name}\"}} {}",
                n.get()
            );
        }
        let us = st.round_trip_us.get();
        let _ = writeln!(
            s,
            "# HELP vvgate_nonce_bucket_round_trip_seconds Round trips of answered bucket operations (write to answer).\n# TYPE vvgate_nonce_bucket_round_trip_seconds summary\nvvgate_nonce_bucket_round_trip_seconds_sum {}.{:06}\nvvgate_nonce_bucket_round_trip_seconds_count {}",
            us / 1_000_000,
            us % 1_000_000,
            st.answered.get()
        );
        for (name, help, kind, value) in [
            (
                "vvgate_nonce_bucket_connected",
                "1 while the connection to the nonce bucket is up.",
                "gauge",
                u64::from(self.connected.get()),
            ),
            (
                "vvgate_nonce_bucket_reconnects_total",
                "Times the nonce bucket connection was lost or could not be made.",
                "counter",
                st.reconnects.get(),
            ),
            (
                "vvgate_nonce_bucket_claims_settled_total",
                "Cluster claims settled without a request (after a restart or an outage).",
                "counter",
                st.settled.get(),
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }

    fn fail_queued(&self) {
        for job in self.jobs.borrow_mut().drain(..) {
            let _ = job.reply.send(Answer::Unavailable { sent: false });
        }
    }
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Connect and check the bucket (the start-up check, and each reconnect).
pub async fn connect_and_check(
    setup: &mut ForwardSetup,
    spec: &BucketSpec,
    create: bool,
) -> Result<Connection, NatsError> {
    let mut conn = crate::forward::connect(setup).await?;
    if bucket::ensure_bucket(&mut conn, spec, create).await? {
        tracing::info!(bucket = %spec.bucket, replicas = spec.replicas, "created the nonce bucket");
    }
    Ok(conn)
}

/// Connect again after a loss (the next queue node first) and check the bucket. Once the
/// bucket has passed the check in this process, a check that JetStream's API cannot answer
/// (the cluster is electing a meta leader after losing a node) does not hold the connection
/// back: keys can still be created and read, since the bucket's stream has its own leader, and
/// the check runs again at the next reconnect. A bucket that answers with a wrong
/// configuration is always refused.
async fn reconnect(
    setup: &mut ForwardSetup,
    spec: &BucketSpec,
    create: bool,
    checked: &mut bool,
) -> Result<Connection, NatsError> {
    let mut conn = crate::forward::connect(setup).await?;
    match bucket::ensure_bucket(&mut conn, spec, create).await {
        Ok(_) => {
            *checked = true;
            Ok(conn)
        }
        Err(e @ (NatsError::Timeout(_) | NatsError::JetStream { code: 503, .. })) if *checked => {
            tracing::debug!(error = %e, "nonce bucket check not answered; using the connection");
            Ok(conn)
        }
        Err(e) => Err(e),
    }
}

/// Run the bucket connection until the gateway stops.
pub async fn run(
    b: Rc<NonceBucket>,
    mut setup: ForwardSetup,
    create: bool,
    first: Option<Connection>,
) {
    // Whether this process has seen the bucket's configuration pass the check.
    let mut checked = first.is_some();
    let mut conn = first;
    let mut backoff = Duration::from_millis(100);
    loop {
        let c = match conn.take() {
            Some(c) => Ok(c),
            None => reconnect(&mut setup, &b.spec, create, &mut checked).await,
        };
        let result = match c {
            Ok(c) => {
                b.connected.set(true);
                backoff = Duration::from_millis(100);
                if b.unsettled.get() {
                    b.settle_wake.notify(usize::MAX);
                }
                session(&b, c).await
            }
            Err(e) => Err(e),
        };
        b.connected.set(false);
        b.fail_queued();
        if let Err(e) = result {
            let text = e.to_string();
            if *b.last_error.borrow() != text {
                tracing::warn!(error = %text, bucket = %b.spec.bucket, "nonce bucket unreachable; telemetry answers 503 until it is back");
                *b.last_error.borrow_mut() = text;
            }
        }
        bump(&b.stats.reconnects);
        Timer::after(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn session(b: &NonceBucket, mut conn: Connection) -> Result<(), NatsError> {
    let stream_get = format!("$JS.API.STREAM.MSG.GET.{}", b.spec.stream());
    let mut inflight: HashMap<u64, (Job, Instant)> = HashMap::new();
    let mut tape = Tape::new();
    let mut body = Vec::with_capacity(128);
    let mut last_traffic = Instant::now();
    loop {
        // Everything queued goes out in one flush.
        loop {
            let Some(job) = b.jobs.borrow_mut().pop_front() else {
                break;
            };
            let id = conn.next_id();
            let subject = b.spec.subject(&job.key);
            match &job.kind {
                Kind::Create(value) => {
                    bump(&b.stats.creates);
                    conn.queue_hpub(
                        &subject,
                        id,
                        &[("Nats-Expected-Last-Subject-Sequence", "0")],
                        value,
                    );
                }
                Kind::Get => {
                    bump(&b.stats.reads);
                    body.clear();
                    body.extend_from_slice(b"{\"last_by_subj\":");
                    crate::json::write_str(&mut body, &subject);
                    body.push(b'}');
                    conn.queue_request(&stream_get, id, &body);
                }
            }
            inflight.insert(id, (job, Instant::now()));
        }
        conn.flush().await?;
        if let Some((_, sent)) = inflight.values().min_by_key(|(_, t)| *t) {
            if sent.elapsed() > b.timeout {
                for (_, (job, _)) in inflight.drain() {
                    let _ = job.reply.send(Answer::Unavailable { sent: true });
                }
                return Err(NatsError::Timeout("nonce bucket answer"));
            }
        }
        if inflight.is_empty() && last_traffic.elapsed() > Duration::from_secs(10) {
            conn.queue_ping();
            conn.flush().await?;
            last_traffic = Instant::now();
        }
        let listener = b.wake.listen();
        if !b.jobs.borrow().is_empty() {
            continue;
        }
        let tick = if inflight.is_empty() {
            Duration::from_secs(1)
        } else {
            b.timeout / 4
        };
        let got = futures_lite::future::or(conn.next_reply(), async {
            futures_lite::future::or(
                async {
                    listener.await;
                },
                async {
                    Timer::after(tick).await;
                },
            )
            .await;
            Ok(None)
        })
        .await;
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                for (_, (job, _)) in inflight.drain() {
                    let _ = job.reply.send(Answer::Unavailable { sent: true });
                }
                return Err(e);
            }
        };
        let mut next = got;
        loop {
            if let Some(reply) = next {
                last_traffic = Instant::now();
                if let Some((job, sent)) = inflight.remove(&reply.id) {
                    bump(&b.stats.answered);
                    let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let sum = &b.stats.round_trip_us;
                    sum.set(sum.get().saturating_add(us));
                    let answer = answer_of(&job.kind, &reply, &mut tape);
                    let _ = job.reply.send(answer);
                }
            }
            next = match conn.buffered_reply() {
                Ok(Some(r)) => Some(r),
                Ok(None) => break,
                Err(e) => {
                    for (_, (job, _)) in inflight.drain() {
                        let _ = job.reply.send(Answer::Unavailable { sent: true });
                    }
                    return Err(e);
                }
            };
        }
    }
}

/// Interpret a reply to a create (a PubAck) or a read (`STREAM.MSG.GET`).
fn answer_of(kind: &Kind, reply: &crate::nats::Reply, tape: &mut Tape) -> Answer {
    match kind {
        Kind::Create(_) => match jetstream::parse_pub_ack(reply.status, &reply.payload, tape) {
            PubAck::Stored { .. } => Answer::Created,
            PubAck::Error { err_code, .. } if err_code == WRONG_LAST_SEQUENCE => Answer::Exists,
            PubAck::Error {
                code, description, ..
            } => {
                tracing::warn!(code, %description, "nonce bucket refused a create");
                Answer::Unavailable { sent: true }
            }
            PubAck::NoResponders | PubAck::Malformed(_) => Answer::Unavailable { sent: true },
        },
        Kind::Get => read_answer(reply.status, &reply.payload),
    }
}

/// A `STREAM.MSG.GET` reply: the value, absent (404 or a delete marker), or no answer.
pub fn read_answer(status: Option<u16>, payload: &[u8]) -> Answer {
    if status == Some(503) {
        return Answer::Unavailable { sent: true };
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Answer::Unavailable { sent: true };
    };
    if let Some((code, _)) = jetstream::api_error(&v) {
        return if code == 404 {
            Answer::Found(None)
        } else {
            Answer::Unavailable { sent: true }
        };
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let m = &v["message"];
    let headers = m["hdrs"]
        .as_str()
        .and_then(|h| b64.decode(h).ok())
        .unwrap_or_default();
    let deleted = headers
        .split(|&c| c == b'\n')
        .any(|l| l.to_ascii_lowercase().starts_with(b"kv-operation:"));
    if deleted {
        return Answer::Found(None);
    }
    match m["data"].as_str().map(|d| b64.decode(d)) {
        Some(Ok(data)) => Answer::Found(Some(data)),
        // A message without data is an empty value (foreign: fail closed later).
        None => Answer::Found(Some(Vec::new())),
        Some(Err(_)) => Answer::Found(Some(Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads() {
        assert_eq!(
            read_answer(
                None,
                br#"{"error":{"code":404,"err_code":10037,"description":"no message found"}}"#
            ),
            Answer::Found(None)
        );
        assert_eq!(
            read_answer(
                None,
                br#"{"message":{"subject":"$KV.N.n.x","seq":3,"data":"eyJ2IjoxfQ==","time":"x"}}"#
            ),
            Answer::Found(Some(br#"{"v":1}"#.to_vec()))
        );
        // A delete marker: "NATS/1.0\r\nKV-Operation: DEL\r\n\r\n".
        assert_eq!(
            read_answer(
                None,
                br#"{"message":{"subject":"$KV.N.n.x","seq":3,"hdrs":"TkFUUy8xLjANCktWLU9wZXJhdGlvbjogREVMDQoNCg==","time":"x"}}"#
            ),
            Answer::Found(None)
        );
        assert_eq!(
            read_answer(Some(503), b""),
            Answer::Unavailable { sent: true }
        );
        assert_eq!(
            read_answer(None, br#"{"error":{"code":500,"description":"x"}}"#),
            Answer::Unavailable { sent: true }
        );
    }
}
