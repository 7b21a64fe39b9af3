//! The running gateway: the event loop's shared state, the producer and ops listeners, and the
//! start-up and shutdown sequence. One thread runs every connection (a smol `LocalExecutor`);
//! the storage thread commits; nothing here blocks.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use rustls::pki_types::CertificateDer;
use smol::net::{TcpListener, TcpStream};
use smol::{LocalExecutor, Timer};
use vvgate_storage::{NonceRecord, Route, Store};

use crate::admission::{Admission, Refused};
use crate::audit::{write_details, Detail, ACTOR_GATEWAY, ACTOR_SYSTEM};
use crate::commit::{self, Action, AuditItem, Committer, Op, Outcome, SubmitError};
use crate::config::Config;
use crate::http::conn::{self, ConnInfo, ConnLimits, FramingError, Service};
use crate::http::{Head, Method, Response, Span};
use crate::ids::{self, Random};
use crate::ingest::{
    self, rate::RateLimiter, replay::InFlight, ConnState, Ctx, Refusal, Rejection,
};
use crate::metrics::Metrics;
use crate::schema::Catalogue;
use crate::time::Clock;

const TELEMETRY: &[u8] = b"/internal/v1/telemetry";
const FEDERATION: &[u8] = b"/internal/v1/federation/verify";
const GRAPH: &[u8] = b"/internal/v1/cognitive/execution-graph";
const FEEDBACK: &[u8] = b"/internal/v1/cognitive/feedback/adjustments/query";
const HEALTHZ: &[u8] = b"/healthz";
const READYZ: &[u8] = b"/readyz";
const METRICS: &[u8] = b"/metrics";

/// Asks the key store whether it can serve now (no PKCS#11 call; readiness reason
/// `keystore_unavailable`).
pub type KeystoreProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The producer listener's TLS state: swapped as a whole by a reload; a connection keeps the
/// configuration it was accepted with.
#[derive(Clone)]
pub struct TlsState {
    pub acceptor: TlsAcceptor,
    /// The client certificate verifier (CA, CRLs, pins), to re-check open connections.
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The earliest `nextUpdate` of the configured CRLs, Unix seconds.
    pub crl_next_update: Option<u64>,
}

/// State shared by every task on the event loop.
pub struct Gateway {
    /// The running configuration; [`Gateway::cfg`] hands out a snapshot, a reload swaps it.
    cfg: RefCell<Rc<Config>>,
    pub clock: Clock,
    pub store: Arc<Store>,
    pub committer: Committer,
    pub catalogue: Option<Rc<Catalogue>>,
    pub inflight: InFlight,
    pub rate: RefCell<RateLimiter>,
    pub metrics: Metrics,
    /// Check step 14, singly or in batches.
    pub verifier: crate::ingest::verify::Verifier,
    /// The queue forwarder's counters (all zero with `queue_backend = "spool"`).
    pub forward: crate::forward::ForwardState,
    pub rng: RefCell<Random>,
    /// Spool bytes and entries promised to requests whose commit is pending.
    pending_spool: Cell<(u64, u64)>,
    pub connections: Cell<usize>,
    /// Whether a new producer connection may be served (connection limit and rate).
    admission: RefCell<Admission>,
    next_conn_id: Cell<u64>,
    pub draining: Cell<bool>,
    /// The kill switch: every producer request is refused (403) and no handshake is accepted.
    pub killed: Cell<bool>,
    /// Counts engagements, so a re-arm that raced a new kill leaves the switch engaged.
    pub kill_generation: Cell<u64>,
    tls: RefCell<Option<TlsState>>,
    /// The client certificate chain of each open producer connection, by connection id.
    peer_chains: RefCell<HashMap<u64, Vec<CertificateDer<'static>>>>,
    /// Open connections whose certificate a reload revoked or unpinned: closed at once.
    revoked: RefCell<HashSet<u64>>,
    /// Wakes idle connections when `draining`, `killed` or `revoked` changes.
    pub closing: event_listener::Event,
    /// Refused handshakes not yet written to the audit log, by reason.
    tls_rejects: RefCell<BTreeMap<&'static str, u64>>,
    default_body_limit: Cell<bool>,
    limits: RefCell<ConnLimits>,
    /// The audit log's verifier key (`origin+id+key`), for operators and verifiers.
    pub audit_vkey: String,
    keystore_ready: Option<KeystoreProbe>,
    /// The active feedback signing key; `None`: the feedback route answers 503.
    pub feedback_key: Option<crate::feedback::FeedbackKey>,
    /// The shared nonce bucket (`nonce_backend = "jetstream_kv"`).
    pub cluster: Option<Rc<crate::cluster::NonceBucket>>,
}

impl Gateway {
    pub fn new(
        cfg: Rc<Config>,
        clock: Clock,
        store: Arc<Store>,
        committer: Committer,
        catalogue: Option<Catalogue>,
        audit_vkey: String,
        keystore_ready: Option<KeystoreProbe>,
    ) -> Self {
        Self {
            audit_vkey,
            keystore_ready,
            feedback_key: None,
            default_body_limit: Cell::new(cfg.limits.max_body_bytes == 1_048_576),
            limits: RefCell::new(conn_limits(&cfg)),
            cfg: RefCell::new(cfg),
            clock,
            store,
            committer,
            catalogue: catalogue.map(Rc::new),
            inflight: InFlight::default(),
            rate: RefCell::default(),
            metrics: Metrics::default(),
            verifier: crate::ingest::verify::Verifier::default(),
            forward: crate::forward::ForwardState::default(),
            rng: RefCell::new(Random::new()),
            pending_spool: Cell::new((0, 0)),
            connections: Cell::new(0),
            admission: RefCell::default(),
            next_conn_id: Cell::new(1),
            draining: Cell::new(false),
            killed: Cell::new(false),
            kill_generation: Cell::new(0),
            tls: RefCell::new(None),
            peer_chains: RefCell::default(),
            revoked: RefCell::default(),
            closing: event_listener::Event::new(),
            tls_rejects: RefCell::default(),
            cluster: None,
        }
    }

    /// The running configuration. A request keeps the snapshot it started with.
    pub fn cfg(&self) -> Rc<Config> {
        Rc::clone(&self.cfg.borrow())
    }

    /// Install a validated configuration (reload). Connection limits apply to requests read
    /// from now on.
    pub fn swap_config(&self, cfg: Rc<Config>) {
        self.default_body_limit
            .set(cfg.limits.max_body_bytes == 1_048_576);
        *self.limits.borrow_mut() = conn_limits(&cfg);
        *self.cfg.borrow_mut() = cfg;
    }

    /// The TLS state new handshakes use.
    pub fn tls(&self) -> Option<TlsState> {
        self.tls.borrow().clone()
    }

    /// Install a new TLS state and close the open connections whose certificate it no longer
    /// accepts (a removed pin, a revoked certificate). Returns how many were closed.
    pub fn swap_tls(&self, tls: TlsState) -> usize {
        let now = rustls::pki_types::UnixTime::now();
        let mut closed = 0;
        for (id, chain) in self.peer_chains.borrow().iter() {
            let Some((leaf, rest)) = chain.split_first() else {
                continue;
            };
            if tls.verifier.verify_client_cert(leaf, rest, now).is_err()
                && self.revoked.borrow_mut().insert(*id)
            {
                closed += 1;
            }
        }
        *self.tls.borrow_mut() = Some(tls);
        if closed > 0 {
            self.closing.notify(usize::MAX);
        }
        closed
    }

    /// Engage the kill switch in memory: refuse every producer request from now on and close
    /// every producer connection. Persisting it is [`crate::killswitch`]'s job.
    pub fn engage_kill(&self) {
        self.killed.set(true);
        self.kill_generation.set(self.kill_generation.get() + 1);
        self.closing.notify(usize::MAX);
    }

    /// Whether the configured CRLs are past their `nextUpdate` (readiness `crl_unavailable`).
    pub fn crl_expired(&self) -> bool {
        let next = self.tls.borrow().as_ref().and_then(|t| t.crl_next_update);
        next.is_some_and(|n| self.clock.now().secs() >= n)
    }

    pub fn new_request_id(&self) -> [u8; 16] {
        self.rng.borrow_mut().uuid_v4()
    }

    /// Step 29: whether the spool can take `bytes` more, counting pending commits.
    pub fn spool_has_room(&self, bytes: u64) -> bool {
        let s = &self.committer.shared;
        let (pending_n, pending_b) = self.pending_spool.get();
        let cfg = self.cfg.borrow();
        s.spool_count.load(Ordering::Relaxed) + pending_n < cfg.spool_max_events
            && s.spool_bytes.load(Ordering::Relaxed) + pending_b + bytes <= cfg.spool_max_bytes
    }

    pub fn reserve_spool(&self, bytes: u64) {
        let (n, b) = self.pending_spool.get();
        self.pending_spool.set((n + 1, b + bytes));
    }

    pub fn release_spool(&self, bytes: u64) {
        let (n, b) = self.pending_spool.get();
        self.pending_spool
            .set((n.saturating_sub(1), b.saturating_sub(bytes)));
    }

    /// Audit a refusal (and spool its dead letter), then answer it. If the audit entry cannot
    /// be made durable the answer is 503, whatever the refusal was.
    pub async fn refuse(&self, ctx: &Ctx<'_>, mut f: Refusal, out: &mut Vec<u8>) -> Response {
        let dlq_len = f
            .dlq
            .as_ref()
            .map_or(0, |d| u64::try_from(d.body.len()).unwrap_or(u64::MAX));
        if f.dlq.is_some() && !self.spool_has_room(dlq_len) {
            f.rejection = Rejection::DlqSpoolFull;
            f.dlq = None;
        }
        let mut details = Vec::with_capacity(256);
        let status = i64::from(f.rejection.status());
        let detail = f.rejection.reason(self.default_body_limit.get());
        let original = f.original.map(|o| ids::uuid_text(&o));
        let mut fields = heapless::Vec::<(&str, Detail<'_>), 8>::new();
        let _ = fields.extend_from_slice(&[
            ("request_id", Detail::Str(&ctx.request_id_text)),
            ("status_code", Detail::Int(status)),
            ("detail", Detail::Str(detail)),
        ]);
        if let Some(i) = ctx.identity {
            let _ = fields.push(("service_identity", Detail::Str(i)));
        }
        if let Some(s) = f.rejection.sub_reason() {
            let _ = fields.push(("sub_reason", Detail::Str(s)));
        }
        if let Some(o) = &original {
            let _ = fields.push(("original_request_id", Detail::Str(o)));
        }
        write_details(&mut details, &mut fields);
        let event_type = if f.rejection.is_http_level() {
            "http.rejected"
        } else {
            commit::rejected_event(ctx.route)
        };
        let action = match f.dlq.take() {
            Some(d) => Action::DeadLetter(*d),
            None => Action::AuditOnly,
        };
        let op = Op {
            request_id: ctx.request_id,
            route: ctx.route,
            action,
            audit: AuditItem {
                actor: ACTOR_GATEWAY,
                event_type,
                details,
            },
            reply: None,
        };
        self.reserve_spool(dlq_len);
        let outcome = self.committer.commit(op).await;
        self.release_spool(dlq_len);
        match outcome {
            Ok(Outcome::Committed { .. }) | Ok(Outcome::Replay(_)) => self.answer(ctx, f, out),
            Ok(Outcome::SpoolFull) => self.answer(ctx, Rejection::DlqSpoolFull.into(), out),
            Ok(Outcome::Failed) | Err(SubmitError::Closed) => {
                self.answer(ctx, Rejection::PersistenceFailed.into(), out)
            }
            Err(SubmitError::Full) => self.answer(ctx, Rejection::Overloaded.into(), out),
        }
    }

    /// Write the answer to a refusal that is already audited (or cannot be).
    pub fn answer(&self, ctx: &Ctx<'_>, f: Refusal, out: &mut Vec<u8>) -> Response {
        let r = f.rejection;
        out.clear();
        let original = f.original.map(|o| ids::uuid_text(&o));
        let reason = r.reason(self.default_body_limit.get());
        ingest::refusal_body(out, reason, original.as_ref());
        self.metrics.count(r.status(), reason);
        let mut resp = Response::new(r.status());
        resp.request_id = Some(ctx.request_id_text.clone());
        resp.close = r.closes_connection();
        resp.retry_after = match f.retry_after {
            Some(s) => Some(s),
            None if r.status() == 503 => Some(self.cfg.borrow().retry_after_seconds),
            None => None,
        };
        if r == Rejection::MethodNotAllowed {
            resp.allow = Some(if ctx.route.is_some() { "POST" } else { "GET" });
        }
        resp
    }

    /// Step 15 found the nonce: an identical re-send or a plain replay (CONTRACT.md §3.6).
    pub async fn resend(
        &self,
        ctx: &Ctx<'_>,
        rec: NonceRecord,
        body_sha256: [u8; 32],
        out: &mut Vec<u8>,
    ) -> Response {
        ingest::resend_other(
            self,
            ctx,
            rec,
            body_sha256,
            Rejection::NonceReused,
            Some((202, &ingest::accepted_body)),
            out,
        )
        .await
    }

    /// Why the gateway is not ready (CONTRACT.md §2.5); empty when ready.
    pub fn readiness(&self) -> heapless::Vec<&'static str, 12> {
        let mut reasons = heapless::Vec::new();
        let s = &self.committer.shared;
        if !s.healthy.load(Ordering::Relaxed) {
            let _ = reasons.push("storage_unavailable");
        }
        if s.audit_corrupt.load(Ordering::Relaxed) {
            let _ = reasons.push("audit_log_corrupt");
        }
        if self.keystore_ready.as_ref().is_some_and(|ready| !ready()) {
            let _ = reasons.push("keystore_unavailable");
        }
        let (max_events, max_bytes) = {
            let cfg = self.cfg.borrow();
            (cfg.spool_max_events, cfg.spool_max_bytes)
        };
        if s.spool_count.load(Ordering::Relaxed) >= max_events
            || s.spool_bytes.load(Ordering::Relaxed) >= max_bytes
        {
            let _ = reasons.push("spool_full");
        }
        if self.cluster.as_ref().is_some_and(|b| !b.ready()) {
            let _ = reasons.push("nonce_store_unavailable");
        }
        if self.crl_expired() {
            let _ = reasons.push("crl_unavailable");
        }
        if self.killed.get() {
            let _ = reasons.push("kill_switch_engaged");
        }
        if self.draining.get() {
            let _ = reasons.push("draining");
        }
        reasons
    }

    fn health(&self, out: &mut Vec<u8>) -> Response {
        let reasons = self.readiness();
        match reasons.first() {
            None => ingest::health_body(self, out),
            Some(first) => {
                out.extend_from_slice(b"{\"status\":\"degraded\",\"detail\":");
                crate::json::write_str(out, first);
                out.push(b'}');
            }
        }
        Response::new(200)
    }

    fn ready(&self, out: &mut Vec<u8>) -> Response {
        let reasons = self.readiness();
        if reasons.is_empty() {
            out.extend_from_slice(b"{\"status\":\"ready\"}");
            return Response::new(200);
        }
        let mut w = crate::json::Cjson::new(out);
        w.begin_obj()
            .key("status")
            .str("not_ready")
            .key("reasons")
            .begin_arr();
        for r in &reasons {
            w.str(r);
        }
        w.end_arr().end_obj();
        Response::new(503)
    }

    fn render_metrics(&self, out: &mut Vec<u8>) -> Response {
        let s = &self.committer.shared;
        let text = self.metrics.render(&[
            (
                "vvgate_connections_open",
                "Open producer connections.",
                u64::try_from(self.connections.get()).unwrap_or(0),
            ),
            (
                "vvgate_spool_events",
                "Envelopes in the spool.",
                s.spool_count.load(Ordering::Relaxed),
            ),
            (
                "vvgate_spool_bytes",
                "Bytes of envelopes in the spool.",
                s.spool_bytes.load(Ordering::Relaxed),
            ),
            (
                "vvgate_audit_entries",
                "Entries in the audit log.",
                s.audit_index.load(Ordering::Relaxed),
            ),
            (
                "vvgate_audit_checkpoint_size",
                "Tree size of the newest signed audit checkpoint.",
                s.checkpoint_size.load(Ordering::Relaxed),
            ),
            (
                "vvgate_audit_checkpoints_signed_total",
                "Audit checkpoints signed.",
                s.checkpoints_signed.load(Ordering::Relaxed),
            ),
            (
                "vvgate_audit_checkpoint_failures_total",
                "Audit checkpoints that could not be signed or stored.",
                s.checkpoint_failures.load(Ordering::Relaxed),
            ),
            (
                "vvgate_audit_exported_through",
                "Last audit entry exported and anchored off the box (retention; 0: none yet).",
                s.audit_exported_through.load(Ordering::Relaxed),
            ),
            (
                "vvgate_audit_pruned_through",
                "Last audit entry pruned locally after export (0: none yet).",
                s.audit_pruned_through.load(Ordering::Relaxed),
            ),
            (
                "vvgate_audit_segments_spooled_total",
                "Audit segments spooled for export.",
                s.audit_segments_spooled.load(Ordering::Relaxed),
            ),
            (
                "vvgate_audit_segment_failures_total",
                "Audit segment exports that failed and will be retried.",
                s.audit_segment_failures.load(Ordering::Relaxed),
            ),
            (
                "vvgate_storage_commits_total",
                "Group commits.",
                s.commits.load(Ordering::Relaxed),
            ),
            (
                "vvgate_storage_committed_ops_total",
                "Decisions committed.",
                s.committed_ops.load(Ordering::Relaxed),
            ),
            (
                "vvgate_storage_commit_microseconds_total",
                "Wall time spent in group commits, fdatasync included.",
                s.commit_wall_us.load(Ordering::Relaxed),
            ),
            (
                "vvgate_storage_commit_cpu_microseconds_total",
                "CPU time of the storage thread in group commits (the rest of the wall time is mostly waiting for the disk).",
                s.commit_cpu_us.load(Ordering::Relaxed),
            ),
            (
                "vvgate_storage_failed_commits_total",
                "Failed group commits.",
                s.failed_commits.load(Ordering::Relaxed),
            ),
            (
                "vvgate_signature_batches_total",
                "Batches of producer signatures verified together (two or more).",
                self.verifier.stats.batches.get(),
            ),
            (
                "vvgate_signature_batched_total",
                "Producer signatures verified in batches.",
                self.verifier.stats.batched.get(),
            ),
            (
                "vvgate_signature_batch_failures_total",
                "Batches that failed and were verified again one by one.",
                self.verifier.stats.failed_batches.get(),
            ),
            (
                "vvgate_signature_single_total",
                "Producer signatures verified one by one (ring).",
                self.verifier.stats.single.get(),
            ),
            (
                "vvgate_ready",
                "1 when ready.",
                u64::from(self.readiness().is_empty()),
            ),
            (
                "vvgate_forward_connected",
                "1 while the queue connection is up.",
                u64::from(self.forward.connected.get()),
            ),
            (
                "vvgate_forward_published_total",
                "Envelopes published to the queue (re-publishes included).",
                self.forward.published.get(),
            ),
            (
                "vvgate_forward_acked_total",
                "PubAcks received.",
                self.forward.acked.get(),
            ),
            (
                "vvgate_forward_duplicates_total",
                "PubAcks saying the stream already held the envelope.",
                self.forward.duplicates.get(),
            ),
            (
                "vvgate_forward_errors_total",
                "Queue sessions ended by an error.",
                self.forward.errors.get(),
            ),
            (
                "vvgate_spool_lag_seconds",
                "Age of the oldest envelope not yet acknowledged by the queue.",
                self.spool_lag_secs(),
            ),
            (
                "vvgate_kill_switch_engaged",
                "1 while the kill switch refuses all producer traffic.",
                u64::from(self.killed.get()),
            ),
            (
                "vvgate_audit_checkpoint_age_seconds",
                "Seconds since this process last signed an audit checkpoint (or started).",
                self.clock
                    .now()
                    .0
                    .saturating_sub(s.checkpoint_at_us.load(Ordering::Relaxed))
                    / 1_000_000,
            ),
            (
                "vvgate_crl_next_update_seconds",
                "Earliest nextUpdate of the configured CRLs, Unix seconds (0: no CRL).",
                self.tls().and_then(|t| t.crl_next_update).unwrap_or(0),
            ),
            (
                "vvgate_keystore_ready",
                "1 while the key store can serve.",
                u64::from(self.keystore_ready.as_ref().is_none_or(|ready| ready())),
            ),
        ]);
        let mut text = text;
        if let Some(b) = &self.cluster {
            b.render_metrics(&mut text);
        }
        out.extend_from_slice(text.as_bytes());
        Response::new(200)
    }

    /// Age of the oldest unacknowledged envelope, whole seconds (0 when none is pending).
    pub fn spool_lag_secs(&self) -> u64 {
        match self.forward.oldest_pending_us.get() {
            0 => 0,
            at => self.clock.now().0.saturating_sub(at) / 1_000_000,
        }
    }

    /// Count a refused handshake; entries are written once a second, coalesced by reason.
    pub fn tls_rejected(&self, reason: &'static str) {
        self.metrics.tls_rejected(reason);
        let mut pending = self.tls_rejects.borrow_mut();
        let n = pending.entry(reason).or_default();
        *n += 1;
        if *n == 1 && reason == "keystore_unavailable" {
            // The gateway's own fault, not the client's: said once per flush interval (the
            // audit entry carries the count), so a retrying fleet cannot flood the journal.
            tracing::warn!(
                "TLS handshake failed: the key store cannot sign with the server key (readiness keystore_unavailable until the token answers again)"
            );
        }
    }

    /// A new connection closed before TLS work: counted, audited with the handshake refusals
    /// (coalesced per second), and logged at most once a minute per reason.
    fn connection_refused(&self, now: std::time::Instant, why: Refused) {
        self.metrics.connection_refused(why);
        self.tls_rejected(why.reason());
        if let Some(n) = self.admission.borrow_mut().log_due(now, why) {
            tracing::warn!(
                reason = why.reason(),
                refused = n,
                "new producer connections closed before TLS: {} reached ({n} since the last such line; at most one a minute)",
                why.key()
            );
        }
    }

    /// Write pending `tls.rejected` entries (fire-and-forget).
    fn flush_tls_rejects(&self) {
        let pending = std::mem::take(&mut *self.tls_rejects.borrow_mut());
        for (reason, count) in pending {
            let id = self.new_request_id();
            let mut details = Vec::with_capacity(96);
            write_details(
                &mut details,
                &mut [
                    ("sub_reason", Detail::Str(reason)),
                    (
                        "count",
                        Detail::Int(i64::try_from(count).unwrap_or(i64::MAX)),
                    ),
                ],
            );
            let op = Op {
                request_id: id,
                route: None,
                action: Action::AuditOnly,
                audit: AuditItem {
                    actor: ACTOR_GATEWAY,
                    event_type: "tls.rejected",
                    details,
                },
                reply: None,
            };
            if self.committer.submit(op).is_err() {
                // Try again next second.
                *self.tls_rejects.borrow_mut().entry(reason).or_default() += count;
            }
        }
    }

    /// Write a gateway-level audit entry and wait for it.
    pub async fn audit_system(
        &self,
        event_type: &'static str,
        fields: &mut [(&str, Detail<'_>)],
    ) -> bool {
        let mut details = Vec::with_capacity(160);
        write_details(&mut details, fields);
        let op = Op {
            request_id: self.new_request_id(),
            route: None,
            action: Action::AuditOnly,
            audit: AuditItem {
                actor: ACTOR_SYSTEM,
                event_type,
                details,
            },
            reply: None,
        };
        matches!(
            self.committer.commit(op).await,
            Ok(Outcome::Committed { .. })
        )
    }
}

/// The producer listener's request handling.
pub struct Producer(pub Rc<Gateway>);

/// The ops listener (plain HTTP on loopback): health, readiness, metrics. Not audited.
pub struct Ops(pub Rc<Gateway>);

fn path<'b>(head: &Head, buf: &'b [u8]) -> &'b [u8] {
    head.path.get(buf)
}

impl Service for Producer {
    type State = ConnState;

    fn new_state(&self) -> ConnState {
        ConnState::default()
    }

    fn closing(&self, conn: &ConnInfo) -> bool {
        let gw = &self.0;
        gw.draining.get() || gw.killed.get() || gw.revoked.borrow().contains(&conn.id)
    }

    fn closing_event(&self) -> &event_listener::Event {
        &self.0.closing
    }

    async fn framing_error(
        &self,
        _st: &mut ConnState,
        _conn: &ConnInfo,
        err: FramingError,
        body: &mut Vec<u8>,
    ) -> Response {
        let gw = &*self.0;
        let ctx = Ctx::new(gw, &Head::default(), &[], None);
        let r = match err {
            FramingError::Malformed => Rejection::MalformedHttp,
            FramingError::Timeout => Rejection::RequestTimeout,
            FramingError::LengthRequired => Rejection::LengthRequired,
            FramingError::HeaderTooLarge => Rejection::HeaderTooLarge,
        };
        gw.refuse(&ctx, r.into(), body).await
    }

    async fn before_body(
        &self,
        _st: &mut ConnState,
        _conn: &ConnInfo,
        head: &Head,
        buf: &[u8],
        body: &mut Vec<u8>,
    ) -> Option<Response> {
        let gw = &*self.0;
        let p = path(head, buf);
        let method = head.method.unwrap_or(Method::Other);
        if gw.killed.get() {
            let ctx = Ctx::new(gw, head, buf, None);
            return Some(
                gw.refuse(&ctx, Rejection::KillSwitchEngaged.into(), body)
                    .await,
            );
        }
        let (route, refusal) = match (p, method) {
            (TELEMETRY, Method::Post) => match ingest::telemetry_before_body(gw, head, buf) {
                None => return None,
                Some(r) => (Some(Route::Telemetry), r),
            },
            (TELEMETRY, _) => (Some(Route::Telemetry), Rejection::MethodNotAllowed),
            (FEDERATION | GRAPH | FEEDBACK, m) => {
                let route = service_route(p);
                if m != Method::Post {
                    (route, Rejection::MethodNotAllowed)
                } else {
                    match ingest::endpoint_before_body(gw, head, buf) {
                        None => return None,
                        Some(r) => (route, r),
                    }
                }
            }
            (HEALTHZ, Method::Get) => return Some(with_id(gw, gw.health(body))),
            (READYZ, Method::Get) => return Some(with_id(gw, gw.ready(body))),
            (HEALTHZ | READYZ, _) => (None, Rejection::MethodNotAllowed),
            _ => (None, Rejection::NotFound),
        };
        let ctx = Ctx::new(gw, head, buf, route);
        Some(gw.refuse(&ctx, refusal.into(), body).await)
    }

    async fn handle(
        &self,
        st: &mut ConnState,
        conn: &ConnInfo,
        head: &Head,
        buf: &[u8],
        span: Span,
        body: &mut Vec<u8>,
    ) -> Response {
        let gw = &*self.0;
        if gw.killed.get() {
            // Engaged while the body was read.
            let ctx = Ctx::new(gw, head, buf, None);
            return gw
                .refuse(&ctx, Rejection::KillSwitchEngaged.into(), body)
                .await;
        }
        let started = std::time::Instant::now();
        let _handling = gw.committer.handling();
        let r = match path(head, buf) {
            FEDERATION => crate::federation::verify(&self.0, st, conn, head, buf, span, body).await,
            GRAPH => {
                crate::feedback::execution_graph(&self.0, st, conn, head, buf, span, body).await
            }
            FEEDBACK => crate::feedback::query(&self.0, st, conn, head, buf, span, body).await,
            _ => ingest::telemetry(&self.0, st, conn, head, buf, span, body).await,
        };
        gw.metrics
            .observe_latency(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        r
    }
}

/// The route of a federation or cognitive path.
fn service_route(p: &[u8]) -> Option<Route> {
    match p {
        FEDERATION => Some(Route::FederationVerify),
        GRAPH => Some(Route::ExecutionGraph),
        FEEDBACK => Some(Route::FeedbackQuery),
        _ => None,
    }
}

fn with_id(gw: &Gateway, mut r: Response) -> Response {
    r.request_id = Some(ids::uuid_text(&gw.new_request_id()));
    r
}

impl Service for Ops {
    type State = ();

    fn new_state(&self) {}

    fn closing(&self, _conn: &ConnInfo) -> bool {
        self.0.draining.get()
    }

    fn closing_event(&self) -> &event_listener::Event {
        &self.0.closing
    }

    async fn framing_error(
        &self,
        _st: &mut (),
        _conn: &ConnInfo,
        err: FramingError,
        body: &mut Vec<u8>,
    ) -> Response {
        let status = match err {
            FramingError::Malformed => 400,
            FramingError::Timeout => 408,
            FramingError::LengthRequired => 411,
            FramingError::HeaderTooLarge => 431,
        };
        crate::http::error_body(body, crate::http::reason_phrase(status));
        Response::new(status)
    }

    async fn before_body(
        &self,
        _st: &mut (),
        _conn: &ConnInfo,
        head: &Head,
        buf: &[u8],
        body: &mut Vec<u8>,
    ) -> Option<Response> {
        let gw = &*self.0;
        let get = head.method == Some(Method::Get);
        Some(match path(head, buf) {
            HEALTHZ if get => gw.health(body),
            READYZ if get => gw.ready(body),
            METRICS if get => gw.render_metrics(body),
            HEALTHZ | READYZ | METRICS => {
                crate::http::error_body(body, "Method Not Allowed");
                let mut r = Response::new(405);
                r.allow = Some("GET");
                r
            }
            _ => {
                crate::http::error_body(body, "Not Found");
                Response::new(404)
            }
        })
    }

    async fn handle(
        &self,
        _st: &mut (),
        _conn: &ConnInfo,
        _head: &Head,
        _buf: &[u8],
        _span: Span,
        body: &mut Vec<u8>,
    ) -> Response {
        crate::http::error_body(body, "Not Found");
        Response::new(404)
    }
}

fn conn_limits(cfg: &Config) -> ConnLimits {
    ConnLimits::from(&cfg.limits)
}

/// Decrements the open-connection count when a connection task ends, and forgets the
/// connection's certificate chain.
struct ConnSlot(Rc<Gateway>, u64);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let gw = &self.0;
        gw.connections.set(gw.connections.get().saturating_sub(1));
        gw.peer_chains.borrow_mut().remove(&self.1);
        gw.revoked.borrow_mut().remove(&self.1);
    }
}

/// Accept producer connections: refuse past `max_connections` or over
/// `max_new_connections_per_second` before any TLS work ([`crate::admission`]), then handshake
/// within the header deadline and serve.
pub async fn accept_producers(
    gw: Rc<Gateway>,
    ex: Rc<LocalExecutor<'static>>,
    listener: TcpListener,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        if gw.draining.get() {
            break;
        }
        let Some(tls) = gw.tls().filter(|_| !gw.killed.get()) else {
            // Kill switch: refuse the handshake before any TLS work.
            gw.tls_rejected("kill_switch_engaged");
            drop(tcp);
            // As below: a flood of refusals leaves the other tasks (the ops listener's
            // status, the control socket) their turns.
            futures_lite::future::yield_now().await;
            continue;
        };
        let now = std::time::Instant::now();
        let admitted = gw
            .admission
            .borrow_mut()
            .check(now, gw.connections.get(), &gw.cfg().limits);
        if let Err(why) = admitted {
            gw.connection_refused(now, why);
            drop(tcp);
            // A flood keeps `accept` ready: let the established connections run between two
            // refusals instead of refusing the whole backlog first.
            futures_lite::future::yield_now().await;
            continue;
        }
        gw.connections.set(gw.connections.get() + 1);
        gw.metrics
            .connections_accepted
            .set(gw.metrics.connections_accepted.get() + 1);
        let id = gw.next_conn_id.get();
        gw.next_conn_id.set(id + 1);
        let slot = ConnSlot(Rc::clone(&gw), id);
        let gw2 = Rc::clone(&gw);
        ex.spawn(async move {
            let _slot = slot;
            serve_producer(gw2, tcp, peer, id, tls.acceptor).await;
        })
        .detach();
    }
}

async fn serve_producer(
    gw: Rc<Gateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    acceptor: TlsAcceptor,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = futures_lite::future::or(async { acceptor.accept(tcp).await }, async {
        let timeout = gw.limits.borrow().header_read_timeout;
        Timer::after(timeout).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "handshake timeout",
        ))
    })
    .await;
    let tls = match handshake {
        Ok(t) => t,
        Err(e) => {
            let reason = crate::tls::classify(&e);
            tracing::debug!(%peer, reason, error = %e, "TLS handshake refused");
            gw.tls_rejected(reason);
            return;
        }
    };
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let fingerprint = chain.first().map(|c| crate::tls::fingerprint(c));
    if gw.killed.get() {
        // Engaged during the handshake.
        gw.tls_rejected("kill_switch_engaged");
        return;
    }
    // Kept so a reload can re-check this connection against new pins and CRLs.
    gw.peer_chains
        .borrow_mut()
        .insert(id, chain.iter().map(|c| c.clone().into_owned()).collect());
    let info = ConnInfo {
        id,
        peer,
        fingerprint,
    };
    let limits = gw.limits.borrow().clone();
    conn::serve(&Producer(Rc::clone(&gw)), tls, &info, &limits).await;
}

/// Accept ops connections (loopback, plain HTTP).
pub async fn accept_ops(gw: Rc<Gateway>, ex: Rc<LocalExecutor<'static>>, listener: TcpListener) {
    let open_count = Rc::new(Cell::new(0usize));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            Timer::after(Duration::from_millis(50)).await;
            continue;
        };
        if gw.draining.get() {
            break;
        }
        // A small fixed cap: the ops listener is for local scrapers and probes.
        let open = open_count.get();
        if open >= 64 {
            drop(tcp);
            continue;
        }
        open_count.set(open + 1);
        let (gw2, oc) = (Rc::clone(&gw), Rc::clone(&open_count));
        ex.spawn(async move {
            let info = ConnInfo {
                id: 0,
                peer,
                fingerprint: None,
            };
            let limits = gw2.limits.borrow().clone();
            conn::serve(&Ops(Rc::clone(&gw2)), tcp, &info, &limits).await;
            oc.set(oc.get().saturating_sub(1));
        })
        .detach();
    }
}

/// Flush coalesced handshake refusals into the audit log once a second.
pub async fn tls_reject_flusher(gw: Rc<Gateway>) {
    loop {
        Timer::after(Duration::from_secs(1)).await;
        gw.flush_tls_rejects();
        if gw.draining.get() && gw.connections.get() == 0 {
            gw.flush_tls_rejects();
            break;
        }
    }
}
