//! Group commit: the storage thread (CONTRACT.md §3.8).
//!
//! The event loop sends one [`Op`] per decision over a bounded channel (full → 503
//! `Telemetry gateway overloaded`). The storage thread takes what is waiting, up to
//! `group_commit_max_requests` operations or `group_commit_max_delay_us` of collecting, writes
//! them in one redb transaction (nonce, spooled envelope, audit entry; or just the audit entry
//! of a rejection) and commits with `Durability::Immediate`. Only then does each request get
//! its [`Outcome`].
//!
//! Waiting to fill a group is adaptive: when the previous group held more than one decision
//! (the gateway is busy), the thread collects for up to `group_commit_max_delay_us` before
//! taking what is queued; when it held one, the next lone decision is committed at once. The
//! window ends early when every producer request being handled has its decision queued
//! ([`Shared::flush_if_complete`]): then nothing more is on its way, and waiting would only
//! add latency (at 32 connections the gateway otherwise idles while its clients wait for a
//! group that waits for them). Under CPU-bound load some request is always between its body
//! and its decision, so groups fill for the whole window and the fixed cost of a commit is
//! shared; a quiet gateway still answers after a single fsync. The thread sleeps on a
//! condition variable, woken once per group, never per decision.
//!
//! It is also the only writer of the database: nonce expiry and (later) spool deletion happen
//! here, between groups.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use vvgate_hsm::RecordSigner;
use vvgate_storage::{
    Batch, EnvelopeKind, GraphRecord, NonceRecord, NonceSpace, Route, SpoolItem, SpoolSegment,
    StorageError, Store,
};

use crate::audit::checkpoint::{self, Checkpoint};
use crate::audit::{write_details, Chain, Detail, ACTOR_SYSTEM};
use crate::ids;
use crate::time::Clock;

/// How long acknowledged-segment deletions wait for a decision's commit to ride along with.
const RELEASE_DELAY: Duration = Duration::from_millis(200);

/// An envelope to spool (owned; the storage record borrows from it).
#[derive(Debug)]
pub struct Envelope {
    pub kind: EnvelopeKind,
    pub msg_id: String,
    pub integrity_hash: ids::HexHash,
    pub body: Vec<u8>,
}

/// What a decision writes besides its audit entry.
#[derive(Debug)]
pub enum Action {
    /// Only the audit entry.
    AuditOnly,
    /// Burn a nonce and spool an envelope (an accepted request).
    Accept {
        space: NonceSpace,
        key: [u8; 24],
        record: NonceRecord,
        spool: Option<Envelope>,
    },
    /// A rejection that spools a dead-letter envelope.
    DeadLetter(Envelope),
    /// Burn a nonce and store an execution graph's metadata under its tenant, keeping the
    /// newest `retention` records of that tenant.
    StoreGraph {
        key: [u8; 24],
        record: NonceRecord,
        tenant_id: String,
        graph: GraphRecord,
        retention: u64,
        /// The acceptance of a cluster claim (the bucket holds this appliance's value): the
        /// claim is dropped in the same transaction.
        claimed: bool,
    },
    /// Hold a cluster claim (`nonce_backend = "jetstream_kv"`, an encoded
    /// [`vvgate_storage::Claim`]) before its key is created in the shared bucket. Nothing is
    /// spooled or audited yet; [`Outcome::Replay`] if the nonce is already accepted here.
    Claim { key: [u8; 24], claim: Vec<u8> },
    /// The bucket holds this appliance's value for the key: the claim becomes the nonce
    /// record, the spooled envelope and the op's audit entry (the acceptance). Never refused
    /// for a full spool: the key is burned cluster-wide, so the event must be kept.
    Confirm {
        key: [u8; 24],
        record: NonceRecord,
        spool: Envelope,
    },
    /// The key is another appliance's, or was never written: drop the claim. The op's audit
    /// entry is appended only when `audited` (settlement without a request; a request
    /// writes its own refusal).
    Release { key: [u8; 24], audited: bool },
    /// Engage or re-arm the kill switch; the record's `audit_index` is set to this entry's.
    SetKillSwitch(vvgate_storage::KillSwitch),
}

/// The audit entry of a decision.
#[derive(Debug)]
pub struct AuditItem {
    pub actor: &'static str,
    pub event_type: &'static str,
    /// CJSON object.
    pub details: Vec<u8>,
}

/// One decision to make durable.
#[derive(Debug)]
pub struct Op {
    pub request_id: [u8; 16],
    pub route: Option<Route>,
    pub action: Action,
    pub audit: AuditItem,
    /// Where the outcome goes; `None` for fire-and-forget entries (coalesced TLS rejections).
    pub reply: Option<Reply>,
}

/// Where the storage thread puts one op's outcome. The slot behind it is reused by the next
/// commit on the event loop ([`Committer::commit`]), so waiting for an outcome allocates
/// nothing (a channel per decision would be one heap allocation per request).
#[derive(Debug)]
pub struct Reply(Option<Arc<ReplySlot>>);

#[derive(Debug, Default)]
pub struct ReplySlot(Mutex<ReplyState>);

#[derive(Debug, Default)]
struct ReplyState {
    outcome: Option<Outcome>,
    waker: Option<std::task::Waker>,
    /// The [`Reply`] is gone (sent or dropped).
    done: bool,
}

impl ReplySlot {
    fn state(&self) -> std::sync::MutexGuard<'_, ReplyState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reply {
    /// Deliver the outcome and wake the waiting request.
    pub fn send(mut self, outcome: Outcome) -> Result<(), Outcome> {
        self.finish(Some(outcome));
        Ok(())
    }

    fn finish(&mut self, outcome: Option<Outcome>) {
        let Some(slot) = self.0.take() else { return };
        let waker = {
            let mut st = slot.state();
            if outcome.is_some() {
                st.outcome = outcome;
            }
            st.done = true;
            st.waker.take()
        };
        // Let go of the slot before waking, so the woken request finds it free for reuse.
        drop(slot);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Reply {
    /// Dropped unanswered (the storage thread stopped): the request gets [`Outcome::Failed`].
    fn drop(&mut self) {
        self.finish(None);
    }
}

thread_local! {
    /// Free reply slots of this (event loop) thread.
    static REPLY_SLOTS: std::cell::RefCell<Vec<Arc<ReplySlot>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most free slots kept (one per decision in flight is enough).
const REPLY_SLOTS_KEPT: usize = 4096;

/// Wait for the outcome delivered through `slot`.
async fn outcome(slot: &ReplySlot) -> Outcome {
    std::future::poll_fn(|cx| {
        let mut st = slot.state();
        if let Some(o) = st.outcome.take() {
            return std::task::Poll::Ready(o);
        }
        if st.done {
            return std::task::Poll::Ready(Outcome::Failed);
        }
        match &mut st.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => st.waker = Some(cx.waker().clone()),
        }
        std::task::Poll::Pending
    })
    .await
}

/// What happened to an [`Op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// On disk; the audit entry has this index.
    Committed { audit_index: u64 },
    /// The nonce was found inside the transaction: nothing but a rejection entry was written.
    Replay(NonceRecord),
    /// The spool is full: nothing but a rejection entry was written.
    SpoolFull,
    /// The transaction failed; nothing of it is on disk.
    Failed,
}

/// Counters the event loop reads (never written there).
#[derive(Debug, Default)]
pub struct Shared {
    pub spool_count: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub audit_index: AtomicU64,
    pub commits: AtomicU64,
    pub committed_ops: AtomicU64,
    /// Wall time spent in group commits (building the transaction and the durable commit,
    /// fdatasync included), microseconds.
    pub commit_wall_us: AtomicU64,
    /// The storage thread's CPU time in group commits, microseconds. The difference to
    /// `commit_wall_us` is mostly waiting for the disk.
    pub commit_cpu_us: AtomicU64,
    pub failed_commits: AtomicU64,
    /// False after a failed commit until the next successful one.
    pub healthy: AtomicBool,
    /// Operations queued and not yet taken by the storage thread.
    pub queued: AtomicUsize,
    /// Producer requests being handled (body read, not answered yet).
    pub handling: AtomicUsize,
    /// Every request being handled is queued: the storage thread need not wait out the rest
    /// of its collection window. Cleared when a group is taken.
    flush: AtomicBool,
    flush_lock: Mutex<()>,
    flush_ready: std::sync::Condvar,
    /// Notified after a commit that added a spool segment (wakes the forwarder).
    pub spooled: event_listener::Event,
    /// Sequence number the next spool segment will get.
    pub spool_next_seq: AtomicU64,
    /// Telemetry nonces signed before this were (or may have been) expired: such requests
    /// are refused as stale whatever the clock says ([`Store::nonce_horizon`]). Raised before
    /// the sweep that deletes them commits.
    pub nonce_horizon: AtomicU64,
    /// Tree size of the newest signed checkpoint (0: none yet).
    pub checkpoint_size: AtomicU64,
    /// Audit retention: the last entry exported and anchored off the box, and the last one
    /// pruned locally (0: none yet).
    pub audit_exported_through: AtomicU64,
    pub audit_pruned_through: AtomicU64,
    /// Audit segments spooled for export, and attempts that failed (retried).
    pub audit_segments_spooled: AtomicU64,
    pub audit_segment_failures: AtomicU64,
    pub checkpoints_signed: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    /// When this process last signed a checkpoint (or started), Unix microseconds.
    pub checkpoint_at_us: AtomicU64,
    /// Set when the stored audit log contradicts itself or its checkpoints; never cleared
    /// while running (readiness `audit_log_corrupt`).
    pub audit_corrupt: AtomicBool,
    audit_problem: Mutex<Option<String>>,
    /// Buffers of committed decisions, handed back for the next ones.
    pub recycled: Recycled,
}

/// Buffers that decisions carry to the storage thread (envelope bodies, audit details,
/// message ids), handed back to the event loop once committed, so that building the next
/// envelope or audit entry reuses them instead of allocating. One lock per request on the
/// event loop side and one per group commit on the storage side, never contended for long.
#[derive(Debug, Default)]
pub struct Recycled {
    bodies: Mutex<Vec<Vec<u8>>>,
    small: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept per pool: a group commit's worth at the default group size and more. With
/// the capacity cap below, a pool holds at most 4 MiB however large the requests were.
const RECYCLED_KEPT: usize = 256;
/// Least capacity of a small buffer (an accepted request's audit details fit).
const SMALL_CAPACITY: usize = 640;
/// Larger buffers are freed rather than kept.
const RECYCLED_MAX_CAPACITY: usize = 16 * 1024;

impl Recycled {
    /// An empty buffer for an envelope body with room for `capacity` bytes.
    pub fn body(&self, capacity: usize) -> Vec<u8> {
        take(&self.bodies, capacity)
    }

    /// An empty buffer for audit details or a message id. All get the same least capacity,
    /// so that a recycled message id's buffer can hold the next details without growing.
    pub fn small(&self, capacity: usize) -> Vec<u8> {
        take(&self.small, capacity.max(SMALL_CAPACITY))
    }

    /// A message id in a recycled buffer.
    pub fn msg_id(&self, id: &str) -> String {
        let mut v = self.small(id.len());
        v.extend_from_slice(id.as_bytes());
        String::from_utf8(v).unwrap_or_default()
    }

    /// Keep the buffers of a committed group (emptying `spent`).
    fn give_back(&self, spent: &mut Spent) {
        for (pool, bufs) in [
            (&self.bodies, &mut spent.bodies),
            (&self.small, &mut spent.small),
        ] {
            let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            for b in bufs.drain(..) {
                if pool.len() < RECYCLED_KEPT && (1..=RECYCLED_MAX_CAPACITY).contains(&b.capacity())
                {
                    pool.push(b);
                }
            }
        }
    }
}

/// The storage thread's collection of a committed group's buffers.
#[derive(Debug, Default)]
struct Spent {
    bodies: Vec<Vec<u8>>,
    small: Vec<Vec<u8>>,
}

fn take(pool: &Mutex<Vec<Vec<u8>>>, capacity: usize) -> Vec<u8> {
    let found = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
    match found {
        Some(mut v) => {
            v.clear();
            v.reserve(capacity);
            v
        }
        None => Vec::with_capacity(capacity),
    }
}

impl Shared {
    /// Why the audit log is not trustworthy, if it is not.
    pub fn audit_problem(&self) -> Option<String> {
        if !self.audit_corrupt.load(Ordering::Relaxed) {
            return None;
        }
        self.audit_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_audit_problem(&self, problem: String) {
        let mut slot = self.audit_problem.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            tracing::error!(problem = %problem, "audit log integrity check failed; the gateway is not ready");
            *slot = Some(problem);
            self.audit_corrupt.store(true, Ordering::Relaxed);
        }
    }
}

/// How checkpoints are signed (CONTRACT.md §6.5).
#[derive(Clone)]
pub struct CheckpointSetup {
    pub origin: String,
    pub interval: Duration,
    pub signer: Arc<dyn RecordSigner>,
    /// Witnesses whose cosignatures are stored.
    pub witnesses: Vec<checkpoint::VerifierKey>,
}

impl std::fmt::Debug for CheckpointSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSetup")
            .field("origin", &self.origin)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The storage thread's settings.
#[derive(Clone, Debug)]
pub struct CommitConfig {
    pub max_requests: usize,
    pub max_delay: Duration,
    pub seal_every: u64,
    pub spool_max_events: u64,
    pub spool_max_bytes: u64,
    /// Nonces with a signed timestamp older than `now - nonce_retention_secs` are deleted.
    pub nonce_retention_secs: u64,
    /// The same for federation bundle nonces (their skew window is wider).
    pub federation_nonce_retention_secs: u64,
    /// Signed checkpoints; `None` only in unit tests.
    pub checkpoint: Option<CheckpointSetup>,
    /// Export and pruning of the audit log (with a queue only).
    pub retention: Option<RetentionSetup>,
}

/// Audit-log retention: segments exported through the queue, then pruned locally.
#[derive(Clone, Copy, Debug)]
pub struct RetentionSetup {
    /// Entries per segment (a power of two).
    pub segment_entries: u64,
    /// Entries kept after they were exported and anchored.
    pub retain_entries: u64,
}

/// The largest exported chunk (a queue message).
const EXPORT_CHUNK: usize = 256 * 1024;

/// What travels to the storage thread.
#[allow(clippy::large_enum_variant)] // nearly every message is an Op; Stop is sent once
enum Msg {
    Op(Op),
    /// Delete a spool segment whose envelopes were all acknowledged by the queue.
    Release(u64),
    /// Sign a checkpoint now if the log grew since the last one; answers with the newest
    /// checkpoint's tree size.
    Checkpoint(oneshot::Sender<Result<u64, String>>),
    /// Add a witness's cosignatures to the stored checkpoint they cosign.
    Cosign(Vec<u8>, oneshot::Sender<Result<usize, String>>),
    /// Commit what is queued, then exit.
    Stop,
}

/// The event loop's end of the storage thread.
#[derive(Clone)]
pub struct Committer {
    tx: SyncSender<Msg>,
    capacity: usize,
    pub shared: Arc<Shared>,
}

/// Why an op could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The work queue is full (backpressure: 503 overloaded).
    Full,
    /// The storage thread has stopped.
    Closed,
}

impl Shared {
    /// Tell the storage thread to commit now if nothing else is on its way: every request
    /// being handled has its decision queued. Under load some request is always between
    /// its body and its decision, and groups fill for the whole collection window; when the
    /// gateway waits for its clients instead, the group goes at once.
    fn flush_if_complete(&self) {
        let queued = self.queued.load(Ordering::Acquire);
        if queued == 0 || queued < self.handling.load(Ordering::Acquire) {
            return;
        }
        if !self.flush.swap(true, Ordering::AcqRel) {
            let _g = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.flush_ready.notify_one();
        }
    }

    /// Wait until [`Shared::flush_if_complete`] asks for a commit, at most `limit`.
    fn wait_for_flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut g = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        while !self.flush.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .flush_ready
                .wait_timeout(g, left)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }
}

/// A producer request being handled: counted from its body to its answer (see
/// [`Shared::flush_if_complete`]).
pub struct Handling<'a>(&'a Shared);

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::AcqRel);
        self.0.flush_if_complete();
    }
}

impl Committer {
    /// Count a producer request as being handled until the guard drops.
    pub fn handling(&self) -> Handling<'_> {
        self.shared.handling.fetch_add(1, Ordering::AcqRel);
        Handling(&self.shared)
    }

    /// Queue an op without waiting.
    pub fn submit(&self, op: Op) -> Result<(), SubmitError> {
        match self.tx.try_send(Msg::Op(op)) {
            Ok(()) => {
                self.shared.queued.fetch_add(1, Ordering::AcqRel);
                self.shared.flush_if_complete();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    /// Queue an op and wait for its outcome. A full queue is reported at once.
    pub async fn commit(&self, mut op: Op) -> Result<Outcome, SubmitError> {
        // A slot still held by the storage thread (it wakes before it lets go) is left to it.
        let slot = REPLY_SLOTS
            .with_borrow_mut(Vec::pop)
            .filter(|s| Arc::strong_count(s) == 1)
            .unwrap_or_default();
        *slot.state() = ReplyState::default();
        op.reply = Some(Reply(Some(Arc::clone(&slot))));
        let result = match self.submit(op) {
            Ok(()) => Ok(outcome(&slot).await),
            Err(e) => Err(e),
        };
        REPLY_SLOTS.with_borrow_mut(|free| {
            if free.len() < REPLY_SLOTS_KEPT {
                free.push(slot);
            }
        });
        result
    }

    /// Free slots in the work queue.
    pub fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.shared.queued.load(Ordering::Relaxed))
    }

    /// Delete a fully acknowledged spool segment (in the next commit). `false` when the queue
    /// is full; ask again later.
    pub fn release(&self, seq: u64) -> bool {
        self.tx.try_send(Msg::Release(seq)).is_ok()
    }

    /// Sign a checkpoint of everything committed so far (if the log grew since the last one).
    /// Returns the newest checkpoint's tree size.
    pub async fn checkpoint(&self) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(tx))
            .map_err(|_| "the storage thread has stopped".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the storage thread has stopped".into()))
    }

    /// Store the verified witness cosignatures of a cosigned checkpoint note. Returns how
    /// many were new.
    pub async fn cosign(&self, note: Vec<u8>) -> Result<usize, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Cosign(note, tx))
            .map_err(|_| "the storage thread has stopped".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the storage thread has stopped".into()))
    }

    /// Ask the storage thread to commit everything queued so far and exit. Ops submitted
    /// after this are not committed (their senders get `Failed`).
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Start the storage thread. Returns its handle and join handle.
pub fn start(
    store: Arc<Store>,
    cfg: CommitConfig,
    queue_depth: usize,
    clock: Clock,
) -> std::io::Result<(Committer, std::thread::JoinHandle<()>)> {
    let capacity = queue_depth.max(1);
    let (tx, rx) = mpsc::sync_channel(capacity);
    let shared = Arc::new(Shared::default());
    if let Ok(h) = store.nonce_horizon(NonceSpace::Telemetry) {
        shared.nonce_horizon.store(h, Ordering::SeqCst);
    }
    if let Ok(r) = store.read() {
        if let Ok(s) = r.spool_stats() {
            shared.spool_count.store(s.count, Ordering::Relaxed);
            shared.spool_bytes.store(s.bytes, Ordering::Relaxed);
            shared.spool_next_seq.store(s.next_seq, Ordering::Relaxed);
        }
        if let Ok(h) = r.audit_head() {
            shared.audit_index.store(h.index, Ordering::Relaxed);
        }
        if let Ok(Some((size, _))) = r.checkpoint_latest() {
            shared.checkpoint_size.store(size, Ordering::Relaxed);
        }
    }
    shared.healthy.store(true, Ordering::Relaxed);
    shared
        .checkpoint_at_us
        .store(clock.now().0, Ordering::Relaxed);
    let thread_shared = Arc::clone(&shared);
    let handle = std::thread::Builder::new()
        .name("vvgate-storage".into())
        .spawn(move || StorageThread::new(store, cfg, clock, thread_shared).run(rx))?;
    Ok((
        Committer {
            tx,
            capacity,
            shared,
        },
        handle,
    ))
}

struct StorageThread {
    store: Arc<Store>,
    cfg: CommitConfig,
    clock: Clock,
    shared: Arc<Shared>,
    chain: Chain,
    details: Vec<u8>,
    last_sweep: Instant,
    /// The expiry clock's last reading (monotonic instant, µs since the epoch), from the
    /// thread's start.
    expiry_clock: Option<(Instant, u64)>,
    /// Envelopes of the group being committed; written as one segment.
    segment: Vec<Envelope>,
    /// Buffers of the committed group, on their way back to the event loop.
    spent: Spent,
    /// Acknowledged segments to delete in the next commit.
    releases: Vec<u64>,
    /// Requests answered 503 because a commit failed, not yet recorded in the log.
    unrecorded_failures: u64,
    last_error: String,
    /// When a checkpoint was last signed or attempted.
    last_checkpoint: Instant,
}

impl StorageThread {
    fn new(store: Arc<Store>, cfg: CommitConfig, clock: Clock, shared: Arc<Shared>) -> Self {
        let chain = Chain::new(cfg.seal_every);
        Self {
            store,
            cfg,
            clock,
            shared,
            chain,
            details: Vec::with_capacity(256),
            last_sweep: Instant::now(),
            expiry_clock: Some((Instant::now(), clock.now().0)),
            segment: Vec::new(),
            spent: Spent::default(),
            releases: Vec::new(),
            unrecorded_failures: 0,
            last_error: String::new(),
            last_checkpoint: Instant::now(),
        }
    }

    /// How long until a checkpoint is due; `None` when none is needed (nothing new to sign,
    /// or no checkpoint key).
    fn checkpoint_due_in(&self) -> Option<Duration> {
        let setup = self.cfg.checkpoint.as_ref()?;
        let s = &self.shared;
        if s.audit_index.load(Ordering::Relaxed) == s.checkpoint_size.load(Ordering::Relaxed) {
            return None;
        }
        Some(
            setup
                .interval
                .saturating_sub(self.last_checkpoint.elapsed()),
        )
    }

    /// Export the next full segment of the audit log when it is complete: its entries in
    /// JSONL chunks for `[audit] segment_subject`, in one spool segment spooled after a
    /// checkpoint that covers them. Once the queue acknowledged that spool segment (so the
    /// entries and the checkpoint are both off the box), the entries may be pruned.
    fn rotate(&mut self) {
        let Some(ret_cfg) = self.cfg.retention else {
            return;
        };
        let Some(setup) = self.cfg.checkpoint.clone() else {
            return;
        };
        if self.shared.audit_problem().is_some() {
            return;
        }
        let seg = ret_cfg.segment_entries;
        let state = self
            .store
            .read()
            .and_then(|r| Ok((r.audit_head()?.index, r.audit_retention()?)));
        let Ok((head, ret)) = state else { return };
        self.shared
            .audit_exported_through
            .store(ret.exported_through, Ordering::Relaxed);
        self.shared
            .audit_pruned_through
            .store(ret.pruned_through, Ordering::Relaxed);
        let (first, last) = (ret.exported_through + 1, ret.exported_through + seg);
        if ret.pending.is_some() || head < last {
            return;
        }
        if self.shared.checkpoint_size.load(Ordering::Relaxed) < last {
            if let Err(e) = self.checkpoint() {
                self.shared
                    .audit_segment_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "audit segment export waits for a checkpoint");
                return;
            }
        }
        let rows = match self
            .store
            .read()
            .and_then(|r| r.audit_range(first, usize::try_from(seg).unwrap_or(usize::MAX)))
        {
            Ok(rows) => rows,
            Err(e) => {
                self.shared
                    .audit_segment_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "reading the audit segment to export failed");
                return;
            }
        };
        if rows.len() as u64 != seg || rows.first().map(|r| r.0) != Some(first) {
            self.shared.set_audit_problem(format!(
                "entries {first} to {last} are not all in the audit table"
            ));
            return;
        }
        let mut chunks: Vec<Envelope> = Vec::new();
        let mut body = Vec::with_capacity(EXPORT_CHUNK);
        let mut chunk_first = first;
        for (i, (index, line)) in rows.iter().enumerate() {
            body.extend_from_slice(line);
            body.push(b'\n');
            if body.len() >= EXPORT_CHUNK - 4096 || i + 1 == rows.len() {
                chunks.push(Envelope {
                    kind: EnvelopeKind::AuditEntries,
                    msg_id: format!("{}/entries/{chunk_first}-{index}", setup.origin),
                    integrity_hash: ids::hex32(&ids::sha256(&body)),
                    body: std::mem::take(&mut body),
                });
                chunk_first = index + 1;
            }
        }
        let now = self.clock.now();
        let r = self.store.batch(|b| {
            let items = chunks
                .iter()
                .map(|e| SpoolItem {
                    kind: e.kind,
                    msg_id: &e.msg_id,
                    integrity_hash: &e.integrity_hash,
                    body: &e.body,
                })
                .collect();
            // Audit segments pass the spool limits, like checkpoints: never lost.
            let seq = b.spool_push(&SpoolSegment::V1 {
                spooled_at: now.0,
                items,
            })?;
            let mut ret = b.audit_retention()?;
            ret.pending = Some((seq, last));
            b.set_audit_retention(&ret)?;
            Ok(b.spool_stats())
        });
        match r {
            Ok(spool) => {
                let s = &self.shared;
                s.spool_count.store(spool.count, Ordering::Relaxed);
                s.spool_bytes.store(spool.bytes, Ordering::Relaxed);
                s.spool_next_seq.store(spool.next_seq, Ordering::Relaxed);
                s.spooled.notify(usize::MAX);
                s.audit_segments_spooled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    first,
                    last,
                    chunks = chunks.len(),
                    "audit segment spooled for export"
                );
            }
            Err(e) => {
                self.shared
                    .audit_segment_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "spooling the audit segment failed; retrying");
            }
        }
    }

    /// Merge a witness's cosignatures into the stored checkpoint they cosign.
    fn cosign(&mut self, received: &[u8]) -> Result<usize, String> {
        let Some(setup) = self.cfg.checkpoint.as_ref() else {
            return Err("no checkpoint key".into());
        };
        if setup.witnesses.is_empty() {
            return Err("no witness keys are configured ([audit] witness_keys)".into());
        }
        let keys = checkpoint::Keys::new(&[], &setup.witnesses);
        let size = signed_note::Note::from_bytes(received)
            .ok()
            .and_then(|n| Checkpoint::parse(n.text()).ok())
            .ok_or("not a signed checkpoint note")?
            .size;
        let stored = self
            .store
            .read()
            .and_then(|r| r.checkpoint_at(size))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("this gateway signed no checkpoint of size {size}"))?;
        let (merged, added) =
            checkpoint::merge_cosignatures(&stored, received, &keys).map_err(|e| e.to_string())?;
        if added > 0 {
            self.store
                .batch(|b| b.checkpoint_put(size, &merged))
                .map_err(|e| e.to_string())?;
            tracing::info!(size, added, "witness cosignatures stored");
        }
        Ok(added)
    }

    /// Sign a checkpoint of the committed log if it grew, store it and spool it for the queue
    /// in one durable transaction. Never signs a tree that does not extend the previous
    /// checkpoint (a log must not sign two inconsistent checkpoints).
    fn checkpoint(&mut self) -> Result<u64, String> {
        self.last_checkpoint = Instant::now();
        let Some(setup) = self.cfg.checkpoint.clone() else {
            return Err("no checkpoint key".into());
        };
        let signed = self.shared.checkpoint_size.load(Ordering::Relaxed);
        let r = self.store.read().map_err(|e| e.to_string())?;
        let size = r.audit_head().map_err(|e| e.to_string())?.index;
        if size == 0 || size == signed {
            return Ok(signed);
        }
        if let Some(problem) = self.shared.audit_problem() {
            return Err(format!("not signing: {problem}"));
        }
        let root = r.tree_hash(size).map_err(|e| e.to_string())?;
        if let Some((last_size, note)) = r.checkpoint_latest().map_err(|e| e.to_string())? {
            let consistent = match signed_note::Note::from_bytes(&note)
                .ok()
                .and_then(|n| Checkpoint::parse(n.text()).ok())
            {
                Some(last) if last.size == last_size && last_size <= size => {
                    r.tree_hash(last_size).map_err(|e| e.to_string())? == last.root
                }
                _ => false,
            };
            if !consistent {
                let problem = format!(
                    "the log of {size} entries does not extend the checkpoint of {last_size} entries"
                );
                self.shared.set_audit_problem(problem.clone());
                return Err(problem);
            }
        }
        drop(r);
        let cp = Checkpoint {
            origin: setup.origin.clone(),
            size,
            root,
        };
        let note = match checkpoint::sign(&cp, setup.signer.as_ref()) {
            Ok(n) => n,
            Err(e) => {
                self.shared
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, size, "signing the audit checkpoint failed; retrying at the next interval");
                return Err(e.to_string());
            }
        };
        let msg_id = format!("{}/{size}", setup.origin);
        let now = self.clock.now();
        let stored = self.store.batch(|b| {
            b.checkpoint_put(size, &note)?;
            // Checkpoints pass the spool limits: they are small, rare, and must not be lost.
            b.spool_push(&SpoolSegment::V1 {
                spooled_at: now.0,
                items: vec![SpoolItem {
                    kind: EnvelopeKind::Checkpoint,
                    msg_id: &msg_id,
                    integrity_hash: "",
                    body: &note,
                }],
            })?;
            Ok(b.spool_stats())
        });
        match stored {
            Ok(spool) => {
                let s = &self.shared;
                s.spool_count.store(spool.count, Ordering::Relaxed);
                s.spool_bytes.store(spool.bytes, Ordering::Relaxed);
                s.spool_next_seq.store(spool.next_seq, Ordering::Relaxed);
                s.checkpoint_size.store(size, Ordering::Relaxed);
                s.checkpoints_signed.fetch_add(1, Ordering::Relaxed);
                s.checkpoint_at_us.store(now.0, Ordering::Relaxed);
                s.spooled.notify(usize::MAX);
                tracing::debug!(size, "audit checkpoint signed");
                Ok(size)
            }
            Err(e) => {
                self.shared
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, size, "storing the audit checkpoint failed; retrying at the next interval");
                Err(e.to_string())
            }
        }
    }

    /// Runs until told to stop (or every sender is gone), committing what was queued first.
    ///
    /// One wake-up per group: the thread blocks for the first decision, then (when busy)
    /// sleeps out the collection window and takes what arrived meanwhile. Waking for each
    /// arriving decision instead would preempt the event loop once per request when both
    /// threads share a core.
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut group: Vec<Op> = Vec::with_capacity(self.cfg.max_requests);
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(self.cfg.max_requests);
        let mut waiting: Vec<oneshot::Sender<Result<u64, String>>> = Vec::new();
        let mut busy = false;
        let mut stopping = false;
        while !stopping {
            let next = match self.checkpoint_due_in() {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(wait) => rx.recv_timeout(wait),
            };
            match next {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.checkpoint();
                    self.rotate();
                    continue;
                }
                Ok(Msg::Checkpoint(reply)) => {
                    let _ = reply.send(self.checkpoint());
                    continue;
                }
                Ok(Msg::Cosign(note, reply)) => {
                    let _ = reply.send(self.cosign(&note));
                    continue;
                }
                Ok(Msg::Op(op)) => group.push(op),
                Ok(Msg::Release(seq)) => {
                    // Deletions wait for a decision to share its durable commit; without
                    // one they are committed alone, without an fsync.
                    self.releases.push(seq);
                    let deadline = Instant::now() + RELEASE_DELAY;
                    loop {
                        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                            Ok(Msg::Op(op)) => {
                                group.push(op);
                                break;
                            }
                            Ok(Msg::Release(seq)) => self.releases.push(seq),
                            Ok(Msg::Checkpoint(reply)) => {
                                let _ = reply.send(self.checkpoint());
                            }
                            Ok(Msg::Cosign(note, reply)) => {
                                let _ = reply.send(self.cosign(&note));
                            }
                            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                                stopping = true;
                                break;
                            }
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                        }
                    }
                    if group.is_empty() {
                        self.commit_releases(stopping);
                        continue;
                    }
                }
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if busy && !self.cfg.max_delay.is_zero() {
                self.shared.wait_for_flush(self.cfg.max_delay);
            }
            while group.len() < self.cfg.max_requests {
                match rx.try_recv() {
                    Ok(Msg::Op(op)) => group.push(op),
                    Ok(Msg::Release(seq)) => self.releases.push(seq),
                    // Answered after this group, so that it covers it.
                    Ok(Msg::Checkpoint(reply)) => waiting.push(reply),
                    Ok(Msg::Cosign(note, reply)) => {
                        let _ = reply.send(self.cosign(&note));
                    }
                    Ok(Msg::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.shared.flush.store(false, Ordering::Release);
            self.shared.queued.fetch_sub(group.len(), Ordering::AcqRel);
            busy = group.len() > 1;
            self.commit_group(&mut group, &mut outcomes);
            if !waiting.is_empty() || self.checkpoint_due_in() == Some(Duration::ZERO) {
                let r = self.checkpoint();
                for reply in waiting.drain(..) {
                    let _ = reply.send(r.clone());
                }
            }
            self.rotate();
        }
        self.commit_releases(true);
        // The last checkpoint covers everything committed before the stop.
        if self.checkpoint_due_in().is_some() {
            let _ = self.checkpoint();
        }
    }

    /// Delete acknowledged segments on their own (durably only when stopping).
    fn commit_releases(&mut self, durable: bool) {
        if self.releases.is_empty() {
            return;
        }
        let releases = std::mem::take(&mut self.releases);
        let retention = self.cfg.retention;
        let remove = |b: &mut Batch<'_>| {
            for seq in &releases {
                b.spool_remove(*seq)?;
            }
            after_releases(b, &releases, retention)?;
            Ok(b.spool_stats())
        };
        let result = if durable {
            self.store.batch(remove)
        } else {
            self.store.batch_lazy(remove)
        };
        match result {
            Ok(spool) => {
                self.shared
                    .spool_count
                    .store(spool.count, Ordering::Relaxed);
                self.shared
                    .spool_bytes
                    .store(spool.bytes, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "deleting acknowledged spool segments failed; will retry");
                self.releases = releases;
            }
        }
    }

    fn commit_group(&mut self, group: &mut Vec<Op>, outcomes: &mut Vec<Outcome>) {
        outcomes.clear();
        let now = self.clock.now();
        let sweep = self.last_sweep.elapsed() >= Duration::from_secs(1);
        let (started, cpu_at_start) = (Instant::now(), crate::time::thread_cpu_us());
        let result = {
            let store = Arc::clone(&self.store);
            store.batch(|b| {
                if self.unrecorded_failures > 0 {
                    self.record_failures(b, now)?;
                }
                self.segment.clear();
                for op in group.iter_mut() {
                    let outcome = self.apply(b, now, op)?;
                    outcomes.push(outcome);
                }
                let spooled = self.flush_segment(b, now)?;
                for seq in &self.releases {
                    b.spool_remove(*seq)?;
                }
                after_releases(b, &self.releases, self.cfg.retention)?;
                if sweep {
                    let secs = self.expiry_now(now);
                    let cutoff = secs.saturating_sub(self.cfg.nonce_retention_secs);
                    self.shared
                        .nonce_horizon
                        .fetch_max(cutoff, Ordering::SeqCst);
                    b.expire_nonces(NonceSpace::Telemetry, cutoff)?;
                    let cutoff = secs.saturating_sub(self.cfg.federation_nonce_retention_secs);
                    b.expire_nonces(NonceSpace::Federation, cutoff)?;
                }
                Ok((b.spool_stats(), b.audit_head(), spooled))
            })
        };
        let wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let cpu_us = crate::time::thread_cpu_us().saturating_sub(cpu_at_start);
        self.shared
            .commit_wall_us
            .fetch_add(wall_us, Ordering::Relaxed);
        self.shared
            .commit_cpu_us
            .fetch_add(cpu_us, Ordering::Relaxed);
        match result {
            Ok((spool, head, spooled)) => {
                if sweep {
                    self.last_sweep = Instant::now();
                }
                self.releases.clear();
                self.unrecorded_failures = 0;
                let s = &self.shared;
                s.spool_count.store(spool.count, Ordering::Relaxed);
                s.spool_bytes.store(spool.bytes, Ordering::Relaxed);
                s.spool_next_seq.store(spool.next_seq, Ordering::Relaxed);
                s.audit_index.store(head.index, Ordering::Relaxed);
                s.commits.fetch_add(1, Ordering::Relaxed);
                s.committed_ops
                    .fetch_add(u64::try_from(group.len()).unwrap_or(0), Ordering::Relaxed);
                s.healthy.store(true, Ordering::Relaxed);
                for (op, outcome) in group.drain(..).zip(outcomes.drain(..)) {
                    let Op { reply, audit, .. } = op;
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                    self.spent.small.push(audit.details);
                }
                for e in self.segment.drain(..) {
                    self.spent.small.push(e.msg_id.into_bytes());
                    self.spent.bodies.push(e.body);
                }
                self.shared.recycled.give_back(&mut self.spent);
                if spooled {
                    self.shared.spooled.notify(usize::MAX);
                }
            }
            Err(e) => {
                self.shared.failed_commits.fetch_add(1, Ordering::Relaxed);
                self.shared.healthy.store(false, Ordering::Relaxed);
                self.unrecorded_failures += u64::try_from(group.len()).unwrap_or(0);
                self.last_error = e.to_string();
                tracing::error!(error = %e, requests = group.len(), "storage commit failed; answering 503");
                for op in group.drain(..) {
                    if let Some(reply) = op.reply {
                        let _ = reply.send(Outcome::Failed);
                    }
                }
                if e.needs_reopen() {
                    match self.store.reopen() {
                        Ok(()) => tracing::warn!("database reopened after an I/O error"),
                        Err(e) => tracing::error!(error = %e, "database reopen failed"),
                    }
                }
            }
        }
    }

    /// "Now" for nonce expiry, in seconds: the wall clock, but never advancing faster than the
    /// monotonic clock since the last reading. A wall clock stepped forward therefore does not
    /// expire nonces early (which, once it stepped back, would make their requests fresh and
    /// their nonces unknown); one stepped back is followed at once (expiring later is safe).
    fn expiry_now(&mut self, wall: crate::time::Micros) -> u64 {
        let mono = Instant::now();
        let t = match self.expiry_clock {
            Some((at, last)) => {
                let elapsed =
                    u64::try_from(mono.duration_since(at).as_micros()).unwrap_or(u64::MAX);
                wall.0.min(last.saturating_add(elapsed))
            }
            None => wall.0,
        };
        self.expiry_clock = Some((mono, t));
        t / 1_000_000
    }

    /// Record, once storage works again, that earlier requests were refused because it did not.
    fn record_failures(
        &mut self,
        b: &mut Batch<'_>,
        now: crate::time::Micros,
    ) -> Result<(), StorageError> {
        self.details.clear();
        write_details(
            &mut self.details,
            &mut [
                (
                    "failed_requests",
                    Detail::Int(i64::try_from(self.unrecorded_failures).unwrap_or(i64::MAX)),
                ),
                ("error", Detail::Str(&self.last_error)),
                ("status_code", Detail::Int(503)),
            ],
        );
        let details = std::mem::take(&mut self.details);
        let r = self
            .chain
            .append(b, now, ACTOR_SYSTEM, "storage.commit_failed", &details);
        self.details = details;
        r.map(|_| ())
    }

    fn apply(
        &mut self,
        b: &mut Batch<'_>,
        now: crate::time::Micros,
        op: &mut Op,
    ) -> Result<Outcome, StorageError> {
        let mut kill_switch = None;
        let outcome = match std::mem::replace(&mut op.action, Action::AuditOnly) {
            Action::AuditOnly => None,
            Action::Claim { key, claim } => {
                if let Some(found) = b.nonce_get(NonceSpace::Telemetry, &key)? {
                    Some((
                        Outcome::Replay(found),
                        409,
                        "Replay detected: nonce already used",
                        "nonce_recheck",
                    ))
                } else {
                    b.claim_insert(&key, &claim)?;
                    return Ok(Outcome::Committed { audit_index: 0 });
                }
            }
            Action::Confirm { key, record, spool } => {
                b.claim_remove(&key)?;
                b.nonce_insert(NonceSpace::Telemetry, &key, &record)?;
                self.segment.push(spool);
                None
            }
            Action::Release { key, audited } => {
                b.claim_remove(&key)?;
                if !audited {
                    return Ok(Outcome::Committed { audit_index: 0 });
                }
                None
            }
            Action::SetKillSwitch(k) => {
                kill_switch = Some(k);
                None
            }
            Action::Accept {
                space,
                key,
                record,
                spool,
            } => {
                if let Some(found) = b.nonce_get(space, &key)? {
                    let detail = match space {
                        NonceSpace::Telemetry => "Replay detected: nonce already used",
                        NonceSpace::Federation => {
                            "Replay detected: federation bundle nonce already used"
                        }
                    };
                    Some((Outcome::Replay(found), 409, detail, "nonce_recheck"))
                } else if spool.as_ref().is_some_and(|s| !self.spool_has_room(b, s)) {
                    Some((
                        Outcome::SpoolFull,
                        503,
                        "Telemetry queue publish failed",
                        "spool_full",
                    ))
                } else {
                    b.nonce_insert(space, &key, &record)?;
                    self.segment.extend(spool);
                    None
                }
            }
            Action::StoreGraph {
                key,
                record,
                tenant_id,
                graph,
                retention,
                claimed,
            } => {
                if claimed {
                    b.claim_remove(&key)?;
                }
                if let Some(found) = b.nonce_get(NonceSpace::Telemetry, &key)? {
                    Some((
                        Outcome::Replay(found),
                        409,
                        "Replay detected: nonce already used",
                        "nonce_recheck",
                    ))
                } else {
                    b.nonce_insert(NonceSpace::Telemetry, &key, &record)?;
                    b.graph_insert(&tenant_id, &graph, retention)?;
                    None
                }
            }
            Action::DeadLetter(s) => {
                if self.spool_has_room(b, &s) {
                    self.segment.push(s);
                    None
                } else {
                    Some((
                        Outcome::SpoolFull,
                        503,
                        "Telemetry DLQ publish failed",
                        "spool_full",
                    ))
                }
            }
        };
        match outcome {
            None => {
                let index = self.chain.append(
                    b,
                    now,
                    op.audit.actor,
                    op.audit.event_type,
                    &op.audit.details,
                )?;
                if let Some(mut k) = kill_switch {
                    if let vvgate_storage::KillSwitch::V1 { audit_index, .. } = &mut k {
                        *audit_index = index;
                    }
                    b.kill_switch_set(&k)?;
                }
                Ok(Outcome::Committed { audit_index: index })
            }
            Some((outcome, status, detail, sub_reason)) => {
                // The decision changed inside the transaction: record what was answered.
                let id = ids::uuid_text(&op.request_id);
                self.details.clear();
                write_details(
                    &mut self.details,
                    &mut [
                        ("request_id", Detail::Str(&id)),
                        ("status_code", Detail::Int(status)),
                        ("detail", Detail::Str(detail)),
                        ("sub_reason", Detail::Str(sub_reason)),
                    ],
                );
                let details = std::mem::take(&mut self.details);
                let r =
                    self.chain
                        .append(b, now, op.audit.actor, rejected_event(op.route), &details);
                self.details = details;
                r?;
                Ok(outcome)
            }
        }
    }

    /// Whether `s` fits in the spool with what this group already holds.
    fn spool_has_room(&self, b: &Batch<'_>, s: &Envelope) -> bool {
        let stats = b.spool_stats();
        let pending = u64::try_from(self.segment.len()).unwrap_or(u64::MAX);
        let pending_bytes: u64 = self.segment.iter().map(|e| e.len()).sum();
        stats.count + pending < self.cfg.spool_max_events
            && stats.bytes + pending_bytes + s.len() <= self.cfg.spool_max_bytes
    }

    /// Write the group's envelopes as one spool segment. Returns whether there was one.
    fn flush_segment(
        &mut self,
        b: &mut Batch<'_>,
        now: crate::time::Micros,
    ) -> Result<bool, StorageError> {
        if self.segment.is_empty() {
            return Ok(false);
        }
        let items = self
            .segment
            .iter()
            .map(|e| SpoolItem {
                kind: e.kind,
                msg_id: &e.msg_id,
                integrity_hash: &e.integrity_hash,
                body: &e.body,
            })
            .collect();
        b.spool_push(&SpoolSegment::V1 {
            spooled_at: now.0,
            items,
        })?;
        Ok(true)
    }
}

impl Envelope {
    fn len(&self) -> u64 {
        u64::try_from(self.body.len()).unwrap_or(u64::MAX)
    }
}

/// After acknowledged spool segments are deleted: an exported audit segment whose spool
/// segment was acknowledged is exported and anchored; prune what retention allows.
fn after_releases(
    b: &mut Batch<'_>,
    releases: &[u64],
    retention: Option<RetentionSetup>,
) -> Result<(), StorageError> {
    let Some(cfg) = retention else {
        return Ok(());
    };
    let mut ret = b.audit_retention()?;
    let Some((seq, through)) = ret.pending else {
        return Ok(());
    };
    if !releases.contains(&seq) {
        return Ok(());
    }
    ret.exported_through = through;
    ret.pending = None;
    b.set_audit_retention(&ret)?;
    let seg = cfg.segment_entries;
    let target = ret.exported_through.saturating_sub(cfg.retain_entries) / seg * seg;
    if target > ret.pruned_through {
        b.audit_prune(target, seg.trailing_zeros())?;
        tracing::info!(
            through = target,
            "audit entries pruned locally (exported and anchored)"
        );
    }
    Ok(())
}

/// The rejection event type of a route (CONTRACT.md §6.4).
pub fn rejected_event(route: Option<Route>) -> &'static str {
    match route {
        Some(Route::Telemetry) | None => "telemetry.rejected",
        Some(Route::ExecutionGraph) => "cognitive.graph.rejected",
        Some(Route::FeedbackQuery) => "cognitive.feedback.rejected",
        Some(Route::FederationVerify) => "federation.rejected",
    }
}
