//! vvgate-storage: everything the gateway keeps on disk, in one redb database.
//!
//! | table | key | value |
//! |---|---|---|
//! | `nonces` | `[u8; 24]`: signed timestamp (u64 big-endian) ‖ first 16 bytes of SHA-256(nonce) | [`NonceRecord`] |
//! | `federation_nonces` | same layout, federation bundles only | [`NonceRecord`] |
//! | `nonce_stage` | u64 sequence, in acceptance order | a nonce accepted since the last merge: space (1 byte) ‖ nonce key (24 bytes) ‖ [`NonceRecord`] |
//! | `spool` | u64 segment sequence, in acceptance order | [`SpoolSegment`]: the envelopes of one group commit |
//! | `audit` | u64 index of the row's first entry | the CJSON lines of the entries one group commit appended, joined by `\n` (one row per commit, not per entry) |
//! | `audit_hashes` | u64 block number | 256 stored Merkle hashes (32 bytes each), block *b* holding stored indexes `256b ..` ([`tree`]); only complete blocks |
//! | `audit_hashes_tail` | u64 stored index of the row's first hash | the stored hashes one group commit added to the block not yet complete (deleted when the block is written whole) |
//! | `audit_hashes_kept` | u64 stored index | a hash of a pruned block still needed for later proofs |
//! | `checkpoints` | u64 tree size | the signed checkpoint note (C2SP signed-note), cosignatures appended |
//! | `graphs` | (tenant id, u64 sequence per tenant) | [`GraphRecord`]: metadata of an accepted execution graph; the newest `retention` per tenant are kept |
//! | `claims` | nonce key, as `nonces` | a cluster claim (`nonce_backend = "jetstream_kv"`): an accepted request waiting for its key in the shared bucket, with everything its acceptance writes ([`records::Claim`]) |
//! | `meta` | name | postcard: `format`, [`AuditHead`], [`SpoolStats`], [`KillSwitch`] |
//!
//! Nonce keys start with the signed timestamp so that inserts land at the right edge of the
//! B-tree and expiry is one range delete (random keys cost ten times more per insert).
//!
//! Within one second of signed timestamps the keys are still random, so a group commit's
//! nonces would land in as many leaves as it holds nonces, and every dirty leaf is one more
//! scattered page for the commit's fdatasync (about 60 µs each on a virtio disk). So a commit
//! appends its nonces to `nonce_stage` instead (sequential keys: one or two pages) and keeps
//! them in memory; about once a second ([`STAGE_MERGE_INTERVAL`], or after
//! [`STAGE_MERGE_ENTRIES`]) one commit moves everything staged into `nonces` /
//! `federation_nonces`, touching each leaf once for many nonces. Lookups ask the staged set
//! first, then the table; a restart reads the stage back.
//!
//! Graph records are keyed by tenant first, so a tenant's records are one key range and a
//! reader asks for exactly one tenant's range: there is no query that spans tenants. The
//! `graphs` table was added without a format change: older builds never open it.
//!
//! One writer: the daemon's storage thread opens every write transaction through
//! [`Store::batch`], with `Durability::Immediate`. Readers may run concurrently.

#![warn(missing_docs)]

mod audit;
pub mod records;
pub mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};
use sha2::{Digest, Sha256};

pub use records::{
    AuditHead, AuditRetention, Claim, EnvelopeKind, GraphRecord, KillSwitch, NonceRecord, Route,
    SpoolItem, SpoolSegment, SpoolStats,
};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 5;

const NONCES: TableDefinition<'static, [u8; 24], &'static [u8]> = TableDefinition::new("nonces");
const FED_NONCES: TableDefinition<'static, [u8; 24], &'static [u8]> =
    TableDefinition::new("federation_nonces");
const NONCE_STAGE: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("nonce_stage");
const SPOOL: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("spool");

/// Staged nonces are merged into their tables once this many are staged...
pub const STAGE_MERGE_ENTRIES: usize = 4096;
/// ...or this long after the last merge, whichever comes first.
pub const STAGE_MERGE_INTERVAL: Duration = Duration::from_secs(1);
const AUDIT: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit");
const AUDIT_HASHES: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("audit_hashes");
const AUDIT_HASHES_TAIL: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("audit_hashes_tail");
const AUDIT_HASHES_KEPT: TableDefinition<'static, u64, [u8; 32]> =
    TableDefinition::new("audit_hashes_kept");
const CHECKPOINTS: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("checkpoints");
const META: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("meta");
const GRAPHS: TableDefinition<'static, (&'static str, u64), &'static [u8]> =
    TableDefinition::new("graphs");
const CLAIMS: TableDefinition<'static, [u8; 24], &'static [u8]> = TableDefinition::new("claims");

const META_FORMAT: &str = "format";
const META_AUDIT_HEAD: &str = "audit_head";
const META_SPOOL_STATS: &str = "spool_stats";
const META_AUDIT_RETENTION: &str = "audit_retention";
const META_KILL_SWITCH: &str = "kill_switch";

impl NonceSpace {
    /// The meta row holding the space's expiry horizon (u64, big-endian).
    fn horizon_key(self) -> &'static str {
        match self {
            NonceSpace::Telemetry => "nonce_horizon",
            NonceSpace::Federation => "fed_nonce_horizon",
        }
    }
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        what: "nonce horizon",
        detail: format!("{} bytes instead of 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// A storage failure. Every variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database file could not be opened or created.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// The database file.
        path: String,
        /// What redb said.
        source: redb::Error,
    },
    /// The database was written by a different, incompatible format.
    #[error("the database has format {found}, this build reads format {FORMAT_VERSION}")]
    Format {
        /// The format found in the file.
        found: u32,
    },
    /// A record could not be decoded: the file is damaged or was altered.
    #[error("corrupt {what} record: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A redb operation failed (I/O error, disk full, damaged file).
    #[error("database operation failed: {0}")]
    Redb(#[from] redb::Error),
    /// The Merkle tree over the audit log could not be read or extended.
    #[error("audit tree: {0}")]
    Tree(#[from] tree::TreeError),
    /// The database is closed after a failed reopen.
    #[error("the database is closed after an I/O error and could not be reopened")]
    Closed,
}

impl StorageError {
    /// Whether redb needs the database reopened before it works again.
    pub fn needs_reopen(&self) -> bool {
        matches!(self, StorageError::Closed)
            || matches!(self, StorageError::Redb(e) if matches!(e, redb::Error::PreviousIo | redb::Error::Io(_)))
    }

    /// Whether the failure is the file system running out of space.
    pub fn is_disk_full(&self) -> bool {
        let text = self.to_string();
        text.contains("No space left") || text.contains("StorageFull") || text.contains("quota")
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn corrupt(what: &'static str, e: postcard::Error) -> StorageError {
    StorageError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

/// The key of a nonce: signed timestamp (big-endian) ‖ SHA-256(nonce)[..16].
pub fn nonce_key(ts: u64, nonce: &str) -> [u8; 24] {
    let digest = Sha256::digest(nonce.as_bytes());
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&ts.to_be_bytes());
    key[8..].copy_from_slice(&digest[..16]);
    key
}

/// Which nonce namespace (CONTRACT.md §3.5 and §7: federation bundles have their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NonceSpace {
    /// Telemetry and both cognitive routes.
    Telemetry,
    /// Federation bundles.
    Federation,
}

impl NonceSpace {
    fn index(self) -> usize {
        match self {
            NonceSpace::Telemetry => 0,
            NonceSpace::Federation => 1,
        }
    }

    fn from_index(i: u8) -> Option<Self> {
        match i {
            0 => Some(NonceSpace::Telemetry),
            1 => Some(NonceSpace::Federation),
            _ => None,
        }
    }

    fn table(self) -> TableDefinition<'static, [u8; 24], &'static [u8]> {
        match self {
            NonceSpace::Telemetry => NONCES,
            NonceSpace::Federation => FED_NONCES,
        }
    }
}

/// The database.
///
/// redb refuses every operation after an I/O error (for example a full disk) until the file is
/// reopened, so the handle sits behind a lock that [`Store::reopen`] can swap. Readers and the
/// single writer take it shared (an uncontended atomic operation); only a reopen takes it
/// exclusively.
pub struct Store {
    path: PathBuf,
    cache_bytes: usize,
    db: RwLock<Option<Database>>,
    /// The audit tree's right edge after the last commit (`None` until loaded, and after a
    /// failed transaction, so that it is read again from what is on disk), and the buffers a
    /// commit's appends fill.
    audit: Mutex<audit::AuditCache>,
    /// Write transactions committed since the open; raised after each commit returns.
    generation: AtomicU64,
    /// The read snapshot [`Store::nonce_get`] reuses until the next commit.
    snapshot: Mutex<Option<NonceSnapshot>>,
    /// Nonces committed to `nonce_stage` and not merged yet: exactly the table's rows.
    staged: Mutex<Staged>,
}

/// The committed rows of `nonce_stage`, in memory for lookups.
#[derive(Default)]
struct Staged {
    records: HashMap<(NonceSpace, [u8; 24]), NonceRecord>,
    /// Sequence of the next stage row.
    next_seq: u64,
    /// When the stage was last merged (or loaded).
    merged_at: Option<Instant>,
}

impl Staged {
    fn merge_due(&self) -> bool {
        !self.records.is_empty()
            && (self.records.len() >= STAGE_MERGE_ENTRIES
                || self
                    .merged_at
                    .is_none_or(|t| t.elapsed() >= STAGE_MERGE_INTERVAL))
    }
}

/// A stage row: space ‖ key ‖ postcard [`NonceRecord`].
fn encode_stage_row(
    space: NonceSpace,
    key: &[u8; 24],
    rec: &NonceRecord,
    out: &mut Vec<u8>,
) -> Result<(), StorageError> {
    out.clear();
    out.push(u8::try_from(space.index()).unwrap_or(u8::MAX));
    out.extend_from_slice(key);
    *out = postcard::to_extend(rec, std::mem::take(out)).map_err(|e| corrupt("nonce", e))?;
    Ok(())
}

fn decode_stage_row(row: &[u8]) -> Result<(NonceSpace, [u8; 24], NonceRecord), StorageError> {
    let bad = |detail: &str| StorageError::Corrupt {
        what: "staged nonce",
        detail: detail.to_owned(),
    };
    let (&space, rest) = row.split_first().ok_or_else(|| bad("empty row"))?;
    let space = NonceSpace::from_index(space).ok_or_else(|| bad("unknown nonce space"))?;
    let key: [u8; 24] = rest
        .get(..24)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| bad("short key"))?;
    let rec = records::decode(&rest[24..]).map_err(|e| corrupt("staged nonce", e))?;
    Ok((space, key, rec))
}

/// A read transaction with its nonce tables open, valid for one commit generation. Beginning
/// a read transaction and opening a table costs redb a dozen heap allocations or more; under
/// load many lookups fall between two group commits, so they share one.
struct NonceSnapshot {
    generation: u64,
    txn: redb::ReadTransaction,
    /// Indexed by [`NonceSpace::index`].
    tables: [Option<redb::ReadOnlyTable<[u8; 24], &'static [u8]>>; 2],
}

impl Store {
    /// Open (or create) the database at `path` with a page cache of `cache_bytes`, create its
    /// tables, and check its format.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        let store = Self {
            path: path.to_owned(),
            cache_bytes,
            db: RwLock::new(Some(open_db(path, cache_bytes)?)),
            audit: Mutex::default(),
            generation: AtomicU64::new(0),
            snapshot: Mutex::new(None),
            staged: Mutex::new(Staged::default()),
        };
        store.init()?;
        Ok(store)
    }

    /// Close and reopen the database file (after an I/O error). Committed data is untouched;
    /// an open that fails leaves the store closed, and every operation reports it until a later
    /// reopen succeeds.
    pub fn reopen(&self) -> Result<(), StorageError> {
        // The snapshot holds the old file open.
        drop(
            self.snapshot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(guard.take());
        *guard = Some(open_db(&self.path, self.cache_bytes)?);
        drop(guard);
        self.init()
    }

    /// Close the database file cleanly (at shutdown, after the last commit): redb then marks
    /// the file as closed, so the next start opens it without a repair pass over the whole
    /// file. Later operations report [`StorageError::Closed`].
    pub fn close(&self) {
        drop(
            self.snapshot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        drop(self.db.write().unwrap_or_else(|e| e.into_inner()).take());
    }

    fn db(&self) -> Result<DbGuard<'_>, StorageError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(StorageError::Closed);
        }
        Ok(DbGuard(guard))
    }

    fn init(&self) -> Result<(), StorageError> {
        let db = self.db()?;
        let txn = db.begin_write()?;
        {
            txn.open_table(NONCES)?;
            txn.open_table(FED_NONCES)?;
            txn.open_table(NONCE_STAGE)?;
            txn.open_table(SPOOL)?;
            txn.open_table(AUDIT)?;
            txn.open_table(AUDIT_HASHES)?;
            txn.open_table(AUDIT_HASHES_TAIL)?;
            txn.open_table(AUDIT_HASHES_KEPT)?;
            txn.open_table(CHECKPOINTS)?;
            txn.open_table(GRAPHS)?;
            txn.open_table(CLAIMS)?;
            let mut meta = txn.open_table(META)?;
            let found = match meta.get(META_FORMAT)? {
                Some(v) => Some(decode_u32(v.value())?),
                None => None,
            };
            match found {
                Some(FORMAT_VERSION) => {}
                // Format 4 had no nonce stage (its table was just created, empty).
                Some(4) => {
                    meta.insert(META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())?;
                }
                // Format 3 rewrote the block being filled at every commit: it becomes tail rows.
                Some(3) => {
                    audit::move_partial_block(&txn)?;
                    meta.insert(META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())?;
                }
                // Format 2 had no Merkle tree: build it from the entries once.
                Some(2) => {
                    let head: AuditHead = read_meta(&meta, META_AUDIT_HEAD, "audit head")?;
                    audit::build_tree(&txn, &head)?;
                    meta.insert(META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())?;
                }
                Some(other) => return Err(StorageError::Format { found: other }),
                None => {
                    meta.insert(META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())?;
                }
            }
        }
        txn.commit()?;
        drop(db);
        self.load_stage()
    }

    /// Read `nonce_stage` back into memory (at open and after a reopen).
    fn load_stage(&self) -> Result<(), StorageError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(NONCE_STAGE)?;
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.records.clear();
        staged.next_seq = 0;
        for row in table.iter()? {
            let (seq, value) = row?;
            let (space, key, rec) = decode_stage_row(value.value())?;
            staged.records.insert((space, key), rec);
            staged.next_seq = seq.value().saturating_add(1);
        }
        staged.merged_at = Some(Instant::now());
        Ok(())
    }

    /// Move every staged nonce into its table now, in a durable commit of its own. Returns
    /// how many were moved. Group commits do this by themselves about once a second.
    pub fn merge_staged_nonces(&self) -> Result<usize, StorageError> {
        self.batch_with(redb::Durability::Immediate, true, |b| Ok(b.stage_merged))
    }

    /// Run `f` in one write transaction and commit it durably (`Durability::Immediate`).
    /// If `f` fails, nothing it wrote is kept.
    pub fn batch<T>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.batch_with(redb::Durability::Immediate, false, f)
    }

    /// Like [`Store::batch`] without waiting for the disk (`Durability::None`): the changes
    /// reach the disk with the next durable commit. Only for changes a crash may undo
    /// harmlessly (deleting spool segments already acknowledged by the queue).
    pub fn batch_lazy<T>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.batch_with(redb::Durability::None, false, f)
    }

    fn batch_with<T>(
        &self,
        durability: redb::Durability,
        force_merge: bool,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        // Merges ride on durable group commits (lazy ones only delete acknowledged segments).
        let (merge, stage_seq) = {
            let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            let due = force_merge || staged.merge_due();
            (
                due && !staged.records.is_empty()
                    && matches!(durability, redb::Durability::Immediate),
                staged.next_seq,
            )
        };
        let mut slot = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        let (out, frontier, pending, pending_lines, stage_new, merged) = {
            let meta = txn.open_table(META)?;
            let audit_head: AuditHead = read_meta(&meta, META_AUDIT_HEAD, "audit head")?;
            let spool_stats = read_meta(&meta, META_SPOOL_STATS, "spool stats")?;
            let hashes = txn.open_table(AUDIT_HASHES)?;
            let tail = txn.open_table(AUDIT_HASHES_TAIL)?;
            let kept = txn.open_table(AUDIT_HASHES_KEPT)?;
            // Taken out of the slot: a failed transaction leaves it empty, to be reloaded.
            let frontier = match slot.frontier.take() {
                Some(f) if f.size() == audit_head.index => f,
                _ => tree::Frontier::load(
                    audit_head.index,
                    &audit::Hashes::new(&hashes, &tail, &kept),
                )?,
            };
            let mut b = Batch {
                txn: &txn,
                staged: &self.staged,
                stage: Lazy::new(NONCE_STAGE),
                stage_seq,
                stage_new: Vec::new(),
                stage_merged: 0,
                nonces: Lazy::new(NONCES),
                fed_nonces: Lazy::new(FED_NONCES),
                spool: txn.open_table(SPOOL)?,
                audit: txn.open_table(AUDIT)?,
                hashes,
                tail,
                kept,
                checkpoints: Lazy::new(CHECKPOINTS),
                graphs: Lazy::new(GRAPHS),
                claims: Lazy::new(CLAIMS),
                meta,
                audit_head,
                spool_stats,
                start_head: audit_head,
                start_stats: spool_stats,
                frontier,
                pending: std::mem::take(&mut slot.hashes),
                pending_lines: std::mem::take(&mut slot.lines),
                buf: Vec::with_capacity(256),
            };
            if merge {
                b.merge_stage()?;
            }
            let out = f(&mut b)?;
            b.flush_meta()?;
            b.flush_hashes()?;
            b.flush_entries()?;
            (
                out,
                b.frontier,
                b.pending,
                b.pending_lines,
                b.stage_new,
                b.stage_merged > 0,
            )
        };
        txn.commit()?;
        // The generation first: a lookup that no longer finds a merged nonce in the staged set
        // then takes a snapshot that has it in its table.
        self.generation.fetch_add(1, Ordering::Release);
        {
            let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            if merged {
                staged.records.clear();
                staged.merged_at = Some(Instant::now());
            }
            for (space, key, rec) in stage_new {
                staged.records.insert((space, key), rec);
                staged.next_seq += 1;
            }
        }
        slot.frontier = Some(frontier);
        slot.keep(pending, pending_lines);
        Ok(out)
    }

    /// A consistent snapshot for reading.
    pub fn read(&self) -> Result<Reader, StorageError> {
        Ok(Reader {
            txn: self.db()?.begin_read()?,
        })
    }

    /// The space's expiry horizon: every nonce with a signed timestamp below it may have been
    /// deleted, so a request signed before it must be refused whatever the clock says (a
    /// clock stepped back would otherwise make its nonce usable again). 0 before any expiry.
    pub fn nonce_horizon(&self, space: NonceSpace) -> Result<u64, StorageError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta.get(space.horizon_key())?;
        v.map_or(Ok(0), |v| decode_u64(v.value()))
    }

    /// Look a nonce up (check step 15) in a snapshot that includes every commit that returned
    /// before this call: the read transaction of the last lookup while no commit came between,
    /// else a new one.
    pub fn nonce_get(
        &self,
        space: NonceSpace,
        key: &[u8; 24],
    ) -> Result<Option<NonceRecord>, StorageError> {
        // The staged set before the table (see the order in `batch_with`).
        if let Some(rec) = self.staged_get(space, key) {
            return Ok(Some(rec));
        }
        // Read before the snapshot is taken: a commit after it only makes it newer.
        let generation = self.generation.load(Ordering::Acquire);
        let mut slot = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        let snap = match slot.take() {
            Some(s) if s.generation == generation => slot.insert(s),
            stale => {
                drop(stale);
                slot.insert(NonceSnapshot {
                    generation,
                    txn: self.db()?.begin_read()?,
                    tables: [None, None],
                })
            }
        };
        let table = match &mut snap.tables[space.index()] {
            Some(t) => t,
            empty => empty.insert(snap.txn.open_table(space.table())?),
        };
        match table.get(key)? {
            Some(v) => Ok(Some(
                records::decode(v.value()).map_err(|e| corrupt("nonce", e))?,
            )),
            None => Ok(None),
        }
    }

    fn staged_get(&self, space: NonceSpace, key: &[u8; 24]) -> Option<NonceRecord> {
        let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.records.get(&(space, *key)).copied()
    }

    /// Look a cluster claim up (check step 15 with `nonce_backend = "jetstream_kv"`).
    pub fn claim_get(&self, key: &[u8; 24]) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(CLAIMS)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, StorageError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| StorageError::Open {
            path: path.display().to_string(),
            source: e.into(),
        })
}

struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        // Checked non-empty when the guard was made; the lock is held for its lifetime.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("DbGuard over a closed store"))
    }
}

fn decode_u32(bytes: &[u8]) -> Result<u32, StorageError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        what: "format",
        detail: format!("{} bytes instead of 4", bytes.len()),
    })?;
    Ok(u32::from_be_bytes(arr))
}

fn read_meta<T, R>(table: &R, name: &str, what: &'static str) -> Result<T, StorageError>
where
    T: Default + for<'de> serde::Deserialize<'de>,
    R: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(name)? {
        Some(v) => records::decode(v.value()).map_err(|e| corrupt(what, e)),
        None => Ok(T::default()),
    }
}

/// A table of a write transaction opened on first use. Most commits touch only a few tables,
/// and opening and closing one costs redb about a dozen heap allocations per commit.
struct Lazy<'t, K: redb::Key + 'static, V: redb::Value + 'static> {
    def: TableDefinition<'static, K, V>,
    table: Option<Table<'t, K, V>>,
}

impl<'t, K: redb::Key + 'static, V: redb::Value + 'static> Lazy<'t, K, V> {
    fn new(def: TableDefinition<'static, K, V>) -> Self {
        Self { def, table: None }
    }

    fn open(
        &mut self,
        txn: &'t redb::WriteTransaction,
    ) -> Result<&mut Table<'t, K, V>, StorageError> {
        Ok(match &mut self.table {
            Some(t) => t,
            empty => empty.insert(txn.open_table(self.def)?),
        })
    }
}

/// One write transaction's view of every table. Obtained from [`Store::batch`].
pub struct Batch<'t> {
    txn: &'t redb::WriteTransaction,
    /// The store's committed stage (read here; updated after the commit).
    staged: &'t Mutex<Staged>,
    stage: Lazy<'t, u64, &'static [u8]>,
    /// Sequence of the next stage row.
    stage_seq: u64,
    /// Nonces staged by this transaction.
    stage_new: Vec<(NonceSpace, [u8; 24], NonceRecord)>,
    /// Nonces this transaction moved from the stage into their tables.
    stage_merged: usize,
    nonces: Lazy<'t, [u8; 24], &'static [u8]>,
    fed_nonces: Lazy<'t, [u8; 24], &'static [u8]>,
    spool: Table<'t, u64, &'static [u8]>,
    audit: Table<'t, u64, &'static [u8]>,
    hashes: Table<'t, u64, &'static [u8]>,
    tail: Table<'t, u64, &'static [u8]>,
    kept: Table<'t, u64, [u8; 32]>,
    checkpoints: Lazy<'t, u64, &'static [u8]>,
    graphs: Lazy<'t, (&'static str, u64), &'static [u8]>,
    claims: Lazy<'t, [u8; 24], &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
    audit_head: AuditHead,
    spool_stats: SpoolStats,
    start_head: AuditHead,
    start_stats: SpoolStats,
    /// The tree after this transaction's appends.
    frontier: tree::Frontier,
    /// Hashes stored by this transaction's appends, from `stored_hash_count(start_head.index)`.
    pending: Vec<tree::Hash>,
    /// Entry lines appended by this transaction, joined by `\n` (one row at the end).
    pending_lines: Vec<u8>,
    buf: Vec<u8>,
}

impl<'t> Batch<'t> {
    fn nonce_table(
        &mut self,
        space: NonceSpace,
    ) -> Result<&mut Table<'t, [u8; 24], &'static [u8]>, StorageError> {
        match space {
            NonceSpace::Telemetry => self.nonces.open(self.txn),
            NonceSpace::Federation => self.fed_nonces.open(self.txn),
        }
    }

    /// Move every committed stage row into its nonce table and empty the stage.
    ///
    /// The staged set is copied out first, so that lookups on the event loop never wait for
    /// the B-tree inserts (only this thread changes the set, and not before the commit).
    fn merge_stage(&mut self) -> Result<(), StorageError> {
        let mut entries: Vec<((NonceSpace, [u8; 24]), NonceRecord)> = {
            let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            staged.records.iter().map(|(k, v)| (*k, *v)).collect()
        };
        // In key order: neighbouring inserts share their leaf.
        entries.sort_unstable_by_key(|((space, key), _)| (space.index(), *key));
        let mut buf = std::mem::take(&mut self.buf);
        for ((space, key), rec) in &entries {
            records::encode(rec, &mut buf).map_err(|e| corrupt("nonce", e))?;
            self.nonce_table(*space)?.insert(key, buf.as_slice())?;
        }
        self.buf = buf;
        self.stage.open(self.txn)?.retain(|_, _| false)?;
        self.stage_merged = entries.len();
        Ok(())
    }

    /// Look a nonce up inside the transaction (the re-check before insert): staged by this
    /// transaction, staged by an earlier commit, or in its table.
    pub fn nonce_get(
        &mut self,
        space: NonceSpace,
        key: &[u8; 24],
    ) -> Result<Option<NonceRecord>, StorageError> {
        if let Some((_, _, rec)) = self
            .stage_new
            .iter()
            .find(|(s, k, _)| *s == space && k == key)
        {
            return Ok(Some(*rec));
        }
        let committed = {
            let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            staged.records.get(&(space, *key)).copied()
        };
        if committed.is_some() {
            return Ok(committed);
        }
        match self.nonce_table(space)?.get(key)? {
            Some(v) => Ok(Some(
                records::decode(v.value()).map_err(|e| corrupt("nonce", e))?,
            )),
            None => Ok(None),
        }
    }

    /// Record an accepted nonce.
    pub fn nonce_insert(
        &mut self,
        space: NonceSpace,
        key: &[u8; 24],
        rec: &NonceRecord,
    ) -> Result<(), StorageError> {
        let mut buf = std::mem::take(&mut self.buf);
        encode_stage_row(space, key, rec, &mut buf)?;
        let seq = self.stage_seq;
        self.stage.open(self.txn)?.insert(seq, buf.as_slice())?;
        self.buf = buf;
        self.stage_seq += 1;
        self.stage_new.push((space, *key, *rec));
        Ok(())
    }

    /// Whether a cluster claim is held for `key`.
    pub fn claim_exists(&mut self, key: &[u8; 24]) -> Result<bool, StorageError> {
        Ok(self.claims.open(self.txn)?.get(key)?.is_some())
    }

    /// Hold a cluster claim (an encoded [`Claim`]).
    pub fn claim_insert(&mut self, key: &[u8; 24], claim: &[u8]) -> Result<(), StorageError> {
        self.claims.open(self.txn)?.insert(key, claim)?;
        Ok(())
    }

    /// Drop a cluster claim. Returns whether it was held.
    pub fn claim_remove(&mut self, key: &[u8; 24]) -> Result<bool, StorageError> {
        Ok(self.claims.open(self.txn)?.remove(key)?.is_some())
    }

    /// Delete every nonce whose signed timestamp is below `before_ts`, and raise the space's
    /// horizon ([`Store::nonce_horizon`]) to it (it never goes down). Returns how many.
    pub fn expire_nonces(
        &mut self,
        space: NonceSpace,
        before_ts: u64,
    ) -> Result<u64, StorageError> {
        let horizon = match self.meta.get(space.horizon_key())? {
            Some(v) => decode_u64(v.value())?,
            None => 0,
        };
        if before_ts > horizon {
            self.meta
                .insert(space.horizon_key(), before_ts.to_be_bytes().as_slice())?;
        }
        let mut upper = [0u8; 24];
        upper[..8].copy_from_slice(&before_ts.to_be_bytes());
        // Staged nonces below the cutoff are merged first, so that they expire with the rest.
        let stale_staged = self.stage_merged == 0 && {
            let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            staged
                .records
                .keys()
                .any(|(s, k)| *s == space && k[..] < upper[..])
        };
        if stale_staged {
            self.merge_stage()?;
        }
        let mut n = 0u64;
        self.nonce_table(space)?.retain_in(..upper, |_, _| {
            n += 1;
            false
        })?;
        Ok(n)
    }

    /// Store a graph record under `tenant`, then delete that tenant's oldest records beyond
    /// `retention`. Returns the record's sequence number within the tenant.
    pub fn graph_insert(
        &mut self,
        tenant: &str,
        rec: &GraphRecord,
        retention: u64,
    ) -> Result<u64, StorageError> {
        let graphs = self.graphs.open(self.txn)?;
        let bounds = {
            let mut range = graphs.range((tenant, 0)..=(tenant, u64::MAX))?;
            let first = range.next().transpose()?.map(|(k, _)| k.value().1);
            let last = range.next_back().transpose()?.map(|(k, _)| k.value().1);
            first.map(|f| (f, last.unwrap_or(f)))
        };
        let (first, next) = match bounds {
            None => (0, 0),
            Some((first, last)) => (first, last + 1),
        };
        let mut buf = std::mem::take(&mut self.buf);
        records::encode(rec, &mut buf).map_err(|e| corrupt("graph", e))?;
        graphs.insert((tenant, next), buf.as_slice())?;
        self.buf = buf;
        // Sequences are contiguous (only the oldest are deleted), so the count is a difference.
        let keep = retention.max(1);
        let mut oldest = first;
        while next + 1 - oldest > keep {
            graphs.remove((tenant, oldest))?;
            oldest += 1;
        }
        Ok(next)
    }

    /// Append a segment to the spool; returns its sequence number.
    pub fn spool_push(&mut self, seg: &SpoolSegment<'_>) -> Result<u64, StorageError> {
        let seq = self.spool_stats.next_seq;
        let mut buf = std::mem::take(&mut self.buf);
        records::encode(seg, &mut buf).map_err(|e| corrupt("spool", e))?;
        self.spool.insert(seq, buf.as_slice())?;
        self.buf = buf;
        self.spool_stats.next_seq += 1;
        self.spool_stats.count += u64::try_from(seg.items().len()).unwrap_or(u64::MAX);
        self.spool_stats.bytes += seg.body_bytes();
        Ok(seq)
    }

    /// Remove a spool segment (after every envelope in it was acknowledged). Returns whether
    /// it existed.
    pub fn spool_remove(&mut self, seq: u64) -> Result<bool, StorageError> {
        let Some(old) = self.spool.remove(seq)? else {
            return Ok(false);
        };
        let seg: SpoolSegment<'_> =
            records::decode(old.value()).map_err(|e| corrupt("spool", e))?;
        let n = u64::try_from(seg.items().len()).unwrap_or(u64::MAX);
        self.spool_stats.count = self.spool_stats.count.saturating_sub(n);
        self.spool_stats.bytes = self.spool_stats.bytes.saturating_sub(seg.body_bytes());
        Ok(true)
    }

    /// The spool's occupancy including this transaction's changes.
    pub fn spool_stats(&self) -> SpoolStats {
        self.spool_stats
    }

    /// The audit chain head including this transaction's appends.
    pub fn audit_head(&self) -> AuditHead {
        self.audit_head
    }

    /// Append audit entry `head.index` (its CJSON line, which is also its Merkle leaf) and
    /// move the head to `head`. The caller computes the chain; indexes must be contiguous.
    pub fn audit_append(&mut self, head: AuditHead, line: &[u8]) -> Result<(), StorageError> {
        self.audit_append_parts(head, &[line])
    }

    /// [`Batch::audit_append`] with the line given as consecutive parts (hashed and stored
    /// as if concatenated, without joining them first).
    pub fn audit_append_parts(
        &mut self,
        head: AuditHead,
        parts: &[&[u8]],
    ) -> Result<(), StorageError> {
        if head.index != self.audit_head.index + 1 {
            return Err(StorageError::Corrupt {
                what: "audit head",
                detail: format!(
                    "append of entry {} after entry {}",
                    head.index, self.audit_head.index
                ),
            });
        }
        if parts.iter().any(|p| p.contains(&b'\n')) {
            return Err(StorageError::Corrupt {
                what: "audit entry",
                detail: "an entry line contains a newline".into(),
            });
        }
        if !self.pending_lines.is_empty() {
            self.pending_lines.push(b'\n');
        }
        for p in parts {
            self.pending_lines.extend_from_slice(p);
        }
        self.frontier
            .append(tree::leaf_hash_parts(parts), &mut self.pending);
        self.audit_head = head;
        Ok(())
    }

    /// Record the kill switch state (durable with this transaction, like its audit entry).
    pub fn kill_switch_set(&mut self, state: &KillSwitch) -> Result<(), StorageError> {
        records::encode(state, &mut self.buf).map_err(|e| corrupt("kill switch", e))?;
        self.meta.insert(META_KILL_SWITCH, self.buf.as_slice())?;
        Ok(())
    }

    fn flush_meta(&mut self) -> Result<(), StorageError> {
        if self.audit_head != self.start_head {
            records::encode(&self.audit_head, &mut self.buf)
                .map_err(|e| corrupt("audit head", e))?;
            self.meta.insert(META_AUDIT_HEAD, self.buf.as_slice())?;
        }
        if self.spool_stats != self.start_stats {
            records::encode(&self.spool_stats, &mut self.buf)
                .map_err(|e| corrupt("spool stats", e))?;
            self.meta.insert(META_SPOOL_STATS, self.buf.as_slice())?;
        }
        Ok(())
    }
}

/// A read snapshot.
pub struct Reader {
    txn: redb::ReadTransaction,
}

impl Reader {
    /// The audit chain head.
    pub fn audit_head(&self) -> Result<AuditHead, StorageError> {
        let meta = self.txn.open_table(META)?;
        read_meta(&meta, META_AUDIT_HEAD, "audit head")
    }

    /// The kill switch state ([`KillSwitch::Armed`] when never engaged).
    pub fn kill_switch(&self) -> Result<KillSwitch, StorageError> {
        let meta = self.txn.open_table(META)?;
        read_meta(&meta, META_KILL_SWITCH, "kill switch")
    }

    /// The spool's occupancy.
    pub fn spool_stats(&self) -> Result<SpoolStats, StorageError> {
        let meta = self.txn.open_table(META)?;
        read_meta(&meta, META_SPOOL_STATS, "spool stats")
    }

    /// Up to `limit` audit entries (index, CJSON line) starting at index `from`.
    pub fn audit_range(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let table = self.txn.open_table(AUDIT)?;
        audit::entries_from(&table, from, limit)
    }

    /// Up to `limit` spool segments (sequence, encoded [`SpoolSegment`]) starting at `from`.
    pub fn spool_range(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let table = self.txn.open_table(SPOOL)?;
        let mut out = Vec::new();
        for item in table.range(from..)?.take(limit) {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The newest spool segments that together hold at least `envelopes` envelopes (or the
    /// whole spool), oldest first.
    pub fn spool_tail(&self, envelopes: usize) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let table = self.txn.open_table(SPOOL)?;
        let mut out = Vec::new();
        let mut seen = 0usize;
        for item in table.iter()?.rev() {
            if seen >= envelopes {
                break;
            }
            let (k, v) = item?;
            seen += decode_spool(v.value()).map_or(1, |s| s.items().len());
            out.push((k.value(), v.value().to_vec()));
        }
        out.reverse();
        Ok(out)
    }

    /// The newest `limit` graph records of exactly `tenant`, oldest first.
    pub fn graphs(&self, tenant: &str, limit: usize) -> Result<Vec<GraphRecord>, StorageError> {
        let table = self.txn.open_table(GRAPHS)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in table.range((tenant, 0)..=(tenant, u64::MAX))?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item?;
            out.push(records::decode(v.value()).map_err(|e| corrupt("graph", e))?);
        }
        out.reverse();
        Ok(out)
    }

    /// Every cluster claim held (nonce key, encoded [`Claim`]), oldest signed timestamp first.
    pub fn claims(&self) -> Result<Vec<ClaimRow>, StorageError> {
        let table = self.txn.open_table(CLAIMS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Number of nonce records held in `space` (merged and staged).
    pub fn nonce_count(&self, space: NonceSpace) -> Result<u64, StorageError> {
        let table = self.txn.open_table(space.table())?;
        let mut n = table.len()?;
        for row in self.txn.open_table(NONCE_STAGE)?.iter()? {
            let (_, value) = row?;
            if decode_stage_row(value.value())?.0 == space {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A cluster claim as stored: its nonce key and the encoded [`Claim`].
pub type ClaimRow = ([u8; 24], Vec<u8>);

/// Decode a cluster claim read through [`Reader::claims`] or [`Store::claim_get`].
pub fn decode_claim(bytes: &[u8]) -> Result<Claim<'_>, StorageError> {
    records::decode(bytes).map_err(|e| corrupt("claim", e))
}

/// Encode a cluster claim for [`Batch::claim_insert`].
pub fn encode_claim(claim: &Claim<'_>, out: &mut Vec<u8>) -> Result<(), StorageError> {
    records::encode(claim, out).map_err(|e| corrupt("claim", e))
}

/// Decode a spool value read through [`Reader::spool_range`].
pub fn decode_spool(bytes: &[u8]) -> Result<SpoolSegment<'_>, StorageError> {
    records::decode(bytes).map_err(|e| corrupt("spool", e))
}

#[cfg(test)]
mod tests;
