//! Stage 5: forward the spool to NATS JetStream over TLS (CONTRACT.md §5).
//!
//! One task on the event loop owns the queue connection. It reads spool segments in order,
//! keeps up to `[nats] max_in_flight` publishes outstanding (each with `Nats-Msg-Id`), and
//! asks the storage thread to delete a segment only once every envelope in it has a PubAck
//! (`"duplicate": true` counts: the stream already holds it). Any error (connection lost,
//! refused publish, missing ack) drops the connection; after a backoff it reconnects and
//! re-publishes everything not yet acknowledged, which the stream deduplicates by message id.
//! Ingest never waits for any of this: while the queue is down the spool grows, and only a
//! full spool refuses telemetry (503).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use smol::Timer;
use vvgate_hsm::{HsmError, KeyStore};
use vvgate_storage::EnvelopeKind;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::json::Tape;
use crate::nats::jetstream::{self, PubAck, StreamSpec};
use crate::nats::{Connection, Credentials, NatsError, NatsOptions};

/// How long a publish may wait for its PubAck before the connection is considered dead.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle connection is pinged.
const IDLE_PING: Duration = Duration::from_secs(15);
/// Segments read from the spool per storage read.
const READ_SEGMENTS: usize = 64;
/// Cosigned checkpoints held before they are stored.
const MAX_PENDING_COSIGNED: usize = 16;

/// Why the queue connection could not be configured (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum ForwardSetupError {
    #[error("telemetry_gateway.nats_url {0:?}: expected tls://host:port")]
    Url(String),
    #[error("nats.{key} {path}: {detail}")]
    File {
        key: &'static str,
        path: String,
        detail: String,
    },
    #[error("nats.key: {0}")]
    Key(#[from] HsmError),
    #[error("nats.cert_path does not match nats.key: {0}")]
    KeyMismatch(String),
    #[error(transparent)]
    Credentials(#[from] crate::nats::auth::CredentialsError),
    #[error("queue TLS configuration: {0}")]
    Tls(String),
}

/// Everything the forwarder needs, built and checked at start.
pub struct ForwardSetup {
    /// The queue nodes (`nats_url`), tried in turn from `next`.
    pub servers: Vec<(String, u16)>,
    /// The node the next connect tries first: the one after the last that answered, so a
    /// reconnect after a node is lost goes to another node first.
    pub next: usize,
    pub options: NatsOptions,
    pub spec: StreamSpec,
    pub create_stream: bool,
    pub window: usize,
}

#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Parse `tls://host:port`.
pub fn parse_url(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("tls://")?;
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// Build the queue connection settings (TLS with the client certificate from the key store,
/// credentials, stream specification) from the configuration.
pub fn setup(cfg: &Config, keystore: &dyn KeyStore) -> Result<ForwardSetup, ForwardSetupError> {
    let n = &cfg.nats;
    let servers = n
        .urls
        .iter()
        .map(|u| parse_url(u).ok_or_else(|| ForwardSetupError::Url(u.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((host, port)) = servers.first().cloned() else {
        return Err(ForwardSetupError::Url(String::new()));
    };
    let file_err =
        |key: &'static str, path: &std::path::Path, detail: String| ForwardSetupError::File {
            key,
            path: path.display().to_string(),
            detail,
        };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &n.ca_path {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| file_err("ca_path", ca, e.to_string()))?;
        for c in certs {
            let c = c.map_err(|e| file_err("ca_path", ca, e.to_string()))?;
            roots
                .add(c)
                .map_err(|e| file_err("ca_path", ca, e.to_string()))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ForwardSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let tls = match (&n.cert_path, &n.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err("cert_path", cert, e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err("cert_path", cert, e.to_string()))?;
            let signer = keystore.tls_key(key)?;
            let ck = CertifiedKey::new(chain, signer);
            ck.keys_match()
                .map_err(|e| ForwardSetupError::KeyMismatch(e.to_string()))?;
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(ck))))
        }
        _ => builder.with_no_client_auth(),
    };
    let credentials = match &n.credentials_file {
        Some(p) => Credentials::load(p)?,
        None => Credentials::None,
    };
    let retention = cfg.nonce_retention_secs();
    Ok(ForwardSetup {
        options: NatsOptions {
            // Resolved at each connect (the name may move).
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            server_name: host,
            tls: Arc::new(tls),
            credentials,
            name: format!("vvgate-{}", hostname()),
            timeout: Duration::from_secs(5),
        },
        servers,
        next: 0,
        spec: StreamSpec {
            name: n.stream.clone(),
            subjects: vec![
                cfg.queue_subject.clone(),
                cfg.dlq_subject.clone(),
                cfg.audit.checkpoint_subject.clone(),
                cfg.audit.segment_subject.clone(),
            ],
            min_duplicate_window: Duration::from_secs(retention),
        },
        create_stream: n.create_stream,
        window: n.max_in_flight,
    })
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "gateway".into())
}

/// What the forwarder reports (metrics, status).
#[derive(Default)]
pub struct ForwardState {
    pub connected: Cell<bool>,
    pub published: Cell<u64>,
    pub acked: Cell<u64>,
    pub duplicates: Cell<u64>,
    pub errors: Cell<u64>,
    pub reconnects: Cell<u64>,
    /// `spooled_at` (µs) of the oldest envelope not yet acknowledged; 0 when none is pending.
    pub oldest_pending_us: Cell<u64>,
    pub last_error: RefCell<String>,
}

impl ForwardState {
    fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
}

/// One envelope of a loaded segment: byte ranges into the segment's raw record.
struct Item {
    kind: EnvelopeKind,
    msg_id: (usize, usize),
    integrity_hash: (usize, usize),
    body: (usize, usize),
}

/// A loaded spool segment (its record as stored) and how far it got.
struct Segment {
    seq: u64,
    spooled_at: u64,
    raw: Vec<u8>,
    items: Vec<Item>,
    published: usize,
    acked: usize,
}

impl Segment {
    fn text(&self, r: (usize, usize)) -> &str {
        std::str::from_utf8(&self.raw[r.0..r.1]).unwrap_or("")
    }

    fn bytes(&self, r: (usize, usize)) -> &[u8] {
        &self.raw[r.0..r.1]
    }
}

/// Resolve the queue host (an IP literal needs no lookup).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, NatsError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    smol::net::resolve((host, port))
        .await
        .map_err(NatsError::Io)?
        .into_iter()
        .next()
        .ok_or_else(|| NatsError::Io(std::io::Error::other(format!("{host} resolves to nothing"))))
}

/// Connect to a JetStream server (resolving the host again each time).
/// Connect to the first queue node that answers, trying each once from `setup.next`. The
/// error is the last node's.
pub async fn connect(setup: &mut ForwardSetup) -> Result<Connection, NatsError> {
    let n = setup.servers.len().max(1);
    let mut last = None;
    for i in 0..n {
        let at = (setup.next + i) % n;
        match connect_to(setup, at).await {
            Ok(conn) => {
                setup.next = (at + 1) % n;
                return Ok(conn);
            }
            Err(e) => {
                if n > 1 {
                    let (host, port) = &setup.servers[at];
                    tracing::debug!(node = %format!("{host}:{port}"), error = %e, "queue node not reachable; trying the next");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| NatsError::Protocol("no queue node configured".into())))
}

async fn connect_to(setup: &mut ForwardSetup, at: usize) -> Result<Connection, NatsError> {
    let Some((host, port)) = setup.servers.get(at) else {
        return Err(NatsError::Protocol("no queue node configured".into()));
    };
    setup.options.addr = resolve(host, *port).await?;
    host.clone_into(&mut setup.options.server_name);
    let token = crate::ids::hex::<32>(&crate::ids::Random::new().uuid_v4());
    let conn = Connection::connect(&setup.options, &token).await?;
    if !conn.info.jetstream {
        return Err(NatsError::Protocol(
            "the queue server does not have JetStream enabled".into(),
        ));
    }
    Ok(conn)
}

/// Connect and check the stream once (the start-up check). Errors are returned as they are.
pub async fn connect_and_check(setup: &mut ForwardSetup) -> Result<Connection, NatsError> {
    let mut conn = connect(setup).await?;
    let state = jetstream::ensure_stream(&mut conn, &setup.spec, setup.create_stream).await?;
    if state.created {
        tracing::info!(stream = %setup.spec.name, "created the JetStream stream");
    }
    Ok(conn)
}

/// Run the forwarder until the gateway stops.
pub async fn run(gw: Rc<Gateway>, mut setup: ForwardSetup, first: Option<Connection>) {
    let mut conn = first;
    let mut backoff = Duration::from_millis(100);
    // Segments below this are acknowledged and handed to the storage thread for deletion.
    let mut released_below = 0u64;
    let mut pending_releases: VecDeque<u64> = VecDeque::new();
    loop {
        let c = match conn.take() {
            Some(c) => Ok(c),
            None => connect_and_check(&mut setup).await,
        };
        let c = match c {
            Ok(mut c) => match after_connect(&gw, &setup, &mut c).await {
                Ok(()) => Ok(c),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let result = match c {
            Ok(c) => {
                gw.forward.connected.set(true);
                backoff = Duration::from_millis(100);
                session(&gw, &setup, c, &mut released_below, &mut pending_releases).await
            }
            Err(e) => Err(e),
        };
        gw.forward.connected.set(false);
        if let Err(e) = result {
            ForwardState::bump(&gw.forward.errors);
            let text = e.to_string();
            if *gw.forward.last_error.borrow() != text {
                tracing::warn!(error = %text, "queue forwarding interrupted; retrying with backoff");
                *gw.forward.last_error.borrow_mut() = text;
            }
        }
        ForwardState::bump(&gw.forward.reconnects);
        // Jittered exponential backoff, 100 ms to 5 s.
        let jitter = u64::from(gw.new_request_id()[0]) % 50;
        Timer::after(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// On each connection: compare the local log with the newest checkpoint anchored in the
/// stream, and subscribe to witness cosignatures.
async fn after_connect(
    gw: &Gateway,
    setup: &ForwardSetup,
    conn: &mut Connection,
) -> Result<(), NatsError> {
    check_anchor(gw, setup, conn).await?;
    if let Some(subject) = &gw.cfg().audit.cosignature_subject {
        conn.subscribe(subject).await?;
    }
    Ok(())
}

/// The newest checkpoint of this log anchored in the stream must be one the local log
/// extends: a log restored from an older backup, or a copy that forked, is caught here (and
/// the gateway stops signing checkpoints, so it never signs two inconsistent trees).
async fn check_anchor(
    gw: &Gateway,
    setup: &ForwardSetup,
    conn: &mut Connection,
) -> Result<(), NatsError> {
    use crate::audit::checkpoint::{self, Keys, VerifierKey};
    use base64::Engine as _;
    let api = format!("$JS.API.STREAM.MSG.GET.{}", setup.spec.name);
    let body = serde_json::json!({ "last_by_subj": gw.cfg().audit.checkpoint_subject }).to_string();
    let r = conn.request(&api, body.as_bytes(), ACK_TIMEOUT).await?;
    let v: serde_json::Value = serde_json::from_slice(&r.payload)
        .map_err(|e| NatsError::Protocol(format!("stream message get reply: {e}")))?;
    if let Some(e) = v.get("error") {
        // 10037: no message on the subject yet.
        if e["err_code"].as_u64() != Some(10037) && e["code"].as_u64() != Some(404) {
            tracing::warn!(error = %e, "cannot read the anchored checkpoint");
        }
        return Ok(());
    }
    let Some(note) = v["message"]["data"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
    else {
        return Ok(());
    };
    let Ok(key) = VerifierKey::parse(&gw.audit_vkey) else {
        return Ok(());
    };
    let origin = key.name.clone();
    let opened = match checkpoint::open(&note, Some(&origin), &Keys::new(&[key], &[])) {
        Ok(o) => o.checkpoint,
        Err(checkpoint::CheckpointError::Origin { .. }) => return Ok(()), // another log
        Err(e) => {
            tracing::warn!(error = %e, "the newest anchored checkpoint does not verify with the current checkpoint key (rotated?); not compared");
            return Ok(());
        }
    };
    let local = gw.store.read().and_then(|r| {
        let head = r.audit_head()?.index;
        let root = if opened.size <= head {
            Some(r.tree_hash(opened.size)?)
        } else {
            None
        };
        Ok((head, root))
    });
    match local {
        Ok((head, None)) => gw.committer.shared.set_audit_problem(format!(
            "the checkpoint anchored in the queue covers {} entries but the local log has {head}: the log was rolled back or truncated",
            opened.size
        )),
        Ok((_, Some(root))) if root != opened.root => gw.committer.shared.set_audit_problem(format!(
            "the local log differs from the checkpoint of size {} anchored in the queue (a restored backup or a forked copy)",
            opened.size
        )),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot compare the local log with the anchored checkpoint"),
    }
    Ok(())
}

/// Store a witness's cosigned checkpoint (through the storage thread).
async fn store_cosignature(gw: &Gateway, note: Vec<u8>) {
    match gw.committer.cosign(note).await {
        Ok(0) => tracing::debug!("cosigned checkpoint carried nothing new"),
        Ok(n) => tracing::info!(added = n, "witness cosignature received"),
        Err(e) => tracing::warn!(error = %e, "cosigned checkpoint refused"),
    }
}

fn subject(cfg: &Config, kind: EnvelopeKind) -> &str {
    match kind {
        EnvelopeKind::Ingest => &cfg.queue_subject,
        EnvelopeKind::DeadLetter => &cfg.dlq_subject,
        EnvelopeKind::Checkpoint => &cfg.audit.checkpoint_subject,
        EnvelopeKind::AuditEntries => &cfg.audit.segment_subject,
    }
}

/// Read segments from `from` on (at most `limit`). Envelopes are not copied: each is located
/// by byte ranges in its segment's record.
/// Also returns the spool's next sequence number in the same snapshot: when fewer than `limit`
/// segments came back, every sequence below it that is not among them is gone (acknowledged
/// and deleted), so the reader's cursor may move up to it.
fn load(gw: &Gateway, from: u64, limit: usize) -> Result<(Vec<Segment>, u64), NatsError> {
    let storage =
        |e: vvgate_storage::StorageError| NatsError::Io(std::io::Error::other(e.to_string()));
    let (rows, next_seq) = gw
        .store
        .read()
        .and_then(|r| Ok((r.spool_range(from, limit)?, r.spool_stats()?.next_seq)))
        .map_err(storage)?;
    let exhausted = rows.len() < limit;
    let mut out = Vec::with_capacity(rows.len());
    for (seq, raw) in rows {
        let (spooled_at, items) = {
            let seg = vvgate_storage::decode_spool(&raw).map_err(storage)?;
            let base = raw.as_ptr() as usize;
            let span = |p: &[u8]| {
                let start = p.as_ptr() as usize - base;
                (start, start + p.len())
            };
            let items = seg
                .items()
                .iter()
                .map(|i| Item {
                    kind: i.kind,
                    msg_id: span(i.msg_id.as_bytes()),
                    integrity_hash: span(i.integrity_hash.as_bytes()),
                    body: span(i.body),
                })
                .collect();
            (seg.spooled_at(), items)
        };
        out.push(Segment {
            seq,
            spooled_at,
            raw,
            items,
            published: 0,
            acked: 0,
        });
    }
    let end = if exhausted { next_seq } else { 0 };
    Ok((out, end))
}

/// Account for one PubAck; any refusal ends the session (re-publish after reconnect).
fn on_reply(
    gw: &Gateway,
    reply: crate::nats::Reply,
    inflight: &mut HashMap<u64, u64>,
    queue: &mut VecDeque<Segment>,
    tape: &mut Tape,
    cosigned: &mut Vec<Vec<u8>>,
) -> Result<(), NatsError> {
    if reply.id == crate::nats::client::SUBSCRIPTION {
        // A witness's cosigned checkpoint; stored after this round of acks.
        if cosigned.len() < MAX_PENDING_COSIGNED {
            cosigned.push(reply.payload);
        } else {
            tracing::warn!(
                "too many cosigned checkpoints at once; one dropped (the witness may resend)"
            );
        }
        return Ok(());
    }
    let Some(seq) = inflight.remove(&reply.id) else {
        return Ok(());
    };
    match jetstream::parse_pub_ack(reply.status, &reply.payload, tape) {
        PubAck::Stored { duplicate, .. } => {
            ForwardState::bump(&gw.forward.acked);
            if duplicate {
                ForwardState::bump(&gw.forward.duplicates);
            }
            if let Some(seg) = queue.iter_mut().find(|s| s.seq == seq) {
                seg.acked += 1;
            }
            Ok(())
        }
        PubAck::Error {
            code, description, ..
        } => Err(NatsError::JetStream {
            what: "publish",
            code,
            description,
        }),
        PubAck::NoResponders => Err(NatsError::JetStream {
            what: "publish",
            code: 503,
            description: "no stream captures the subject".into(),
        }),
        PubAck::Malformed(why) => Err(NatsError::Protocol(format!("PubAck: {why}"))),
    }
}

async fn session(
    gw: &Gateway,
    setup: &ForwardSetup,
    mut conn: Connection,
    released_below: &mut u64,
    pending_releases: &mut VecDeque<u64>,
) -> Result<(), NatsError> {
    let cfg = gw.cfg();
    let window = setup.window.max(1);
    let max_payload = conn.info.max_payload;
    let mut queue: VecDeque<Segment> = VecDeque::new();
    let mut cursor = *released_below;
    let mut inflight: HashMap<u64, u64> = HashMap::with_capacity(window);
    let mut tape = Tape::new();
    let mut cosigned: Vec<Vec<u8>> = Vec::new();
    let mut idle_since = std::time::Instant::now();
    loop {
        for note in cosigned.drain(..) {
            store_cosignature(gw, note).await;
        }
        // Hand acknowledged segments to the storage thread (in order).
        while let Some(&seq) = pending_releases.front() {
            if !gw.committer.release(seq) {
                break;
            }
            pending_releases.pop_front();
        }
        // Keep about two windows of envelopes loaded.
        let loaded: usize = queue.iter().map(|s| s.items.len() - s.acked).sum();
        if loaded < window * 2 {
            let (segments, end) = load(gw, cursor, READ_SEGMENTS)?;
            for seg in segments {
                cursor = seg.seq + 1;
                if seg.seq >= *released_below {
                    queue.push_back(seg);
                }
            }
            // Sequences below the spool's end that were not read are deleted: without this, a
            // spool emptied before a restart (cursor 0, next sequence above it) would look
            // forever like it had unread segments.
            cursor = cursor.max(end);
        }
        // Publish up to the window, in spool order.
        for seg in queue.iter_mut() {
            while seg.published < seg.items.len() && inflight.len() < window {
                {
                    let item = &seg.items[seg.published];
                    let body = seg.bytes(item.body);
                    let msg_id = seg.text(item.msg_id);
                    if body.len() + 256 > max_payload {
                        return Err(NatsError::Protocol(format!(
                        "envelope {msg_id} ({} bytes) exceeds the queue server's max_payload ({max_payload}); raise it",
                        body.len()
                    )));
                    }
                    let id = conn.next_id();
                    let mut headers: heapless::Vec<(&str, &str), 3> = heapless::Vec::new();
                    let _ = headers.push(("Nats-Msg-Id", msg_id));
                    let _ = headers.push(("Vv-Envelope-Kind", item.kind.as_str()));
                    let hash = seg.text(item.integrity_hash);
                    if !hash.is_empty() {
                        let _ = headers.push(("Vv-Integrity-Hash", hash));
                    }
                    conn.queue_hpub(subject(&cfg, item.kind), id, &headers, body);
                    inflight.insert(id, seg.seq);
                }
                seg.published += 1;
                ForwardState::bump(&gw.forward.published);
            }
            if inflight.len() >= window {
                break;
            }
        }
        gw.forward
            .oldest_pending_us
            .set(queue.front().map_or(0, |s| s.spooled_at));
        conn.flush().await?;

        // Wait: for acks when publishes are outstanding; else for new spool data.
        if inflight.is_empty() {
            let listener = gw.committer.shared.spooled.listen();
            if gw.committer.shared.spool_next_seq.load(Ordering::Relaxed) > cursor {
                // Segments committed since the load: read them, after letting the other tasks
                // run (this path has no other await, and the event loop is shared).
                futures_lite::future::yield_now().await;
                continue;
            }
            if idle_since.elapsed() >= IDLE_PING {
                conn.queue_ping();
                conn.flush().await?;
                idle_since = std::time::Instant::now();
            }
            // New segments, server traffic (PING, a cosigned checkpoint), or a periodic look
            // at the spool.
            let got = futures_lite::future::or(
                async {
                    listener.await;
                    Ok(None)
                },
                futures_lite::future::or(conn.next_reply(), async {
                    Timer::after(Duration::from_millis(500)).await;
                    Ok(None)
                }),
            )
            .await?;
            if let Some(reply) = got {
                on_reply(
                    gw,
                    reply,
                    &mut inflight,
                    &mut queue,
                    &mut tape,
                    &mut cosigned,
                )?;
            }
            continue;
        }
        idle_since = std::time::Instant::now();
        let reply = futures_lite::future::or(async { conn.next_reply().await }, async {
            Timer::after(ACK_TIMEOUT).await;
            Err(NatsError::Timeout("PubAck"))
        })
        .await?;
        if let Some(reply) = reply {
            on_reply(
                gw,
                reply,
                &mut inflight,
                &mut queue,
                &mut tape,
                &mut cosigned,
            )?;
        }
        // Everything else that arrived with it, before publishing more and flushing once.
        while let Some(reply) = conn.buffered_reply()? {
            on_reply(
                gw,
                reply,
                &mut inflight,
                &mut queue,
                &mut tape,
                &mut cosigned,
            )?;
        }
        // Release fully acknowledged segments at the front.
        while queue.front().is_some_and(|s| s.acked == s.items.len()) {
            if let Some(s) = queue.pop_front() {
                *released_below = s.seq + 1;
                pending_releases.push_back(s.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("tls://nats.internal:4222"),
            Some(("nats.internal".into(), 4222))
        );
        assert_eq!(
            parse_url("tls://127.0.0.1:1"),
            Some(("127.0.0.1".into(), 1))
        );
        assert_eq!(parse_url("tls://[::1]:4222"), Some(("::1".into(), 4222)));
        for bad in [
            "nats://x:1",
            "tls://x",
            "tls://:1",
            "tls://x:y",
            "tls://a/b:1",
        ] {
            assert_eq!(parse_url(bad), None, "{bad}");
        }
    }
}
