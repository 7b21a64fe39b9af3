//! The audit log's Merkle tree and checkpoints in redb.
//!
//! Stored hashes ([`crate::tree`]) live in blocks of 256 (8 KiB) keyed by `stored index /
//! 256`. A group commit never rewrites a block: the hashes of a block that is not complete yet
//! are appended as small rows of `audit_hashes_tail` (one per group commit, keyed by the stored
//! index of its first hash), and the commit that completes a block writes it whole to
//! `audit_hashes` and deletes that block's tail rows. So a commit of a few entries writes a few
//! hundred bytes of hashes instead of copying an 8 KiB block (format 3 did that). Blocks below
//! a pruning point are deleted once the few high-level hashes later proofs still need are
//! copied to `audit_hashes_kept`.

use redb::{ReadableTable, Table, WriteTransaction};

use crate::tree::{self, Frontier, Hash, HashSource, TreeError};
use crate::{
    read_meta, records, AuditHead, AuditRetention, Batch, Reader, StorageError, AUDIT,
    AUDIT_HASHES, AUDIT_HASHES_KEPT, AUDIT_HASHES_TAIL, CHECKPOINTS, META, META_AUDIT_RETENTION,
};

/// What the writer keeps of the audit log between write transactions: the tree's right edge,
/// and the buffers a commit's appends fill (a group of 256 entries is about 220 KB of lines;
/// growing a fresh buffer to that size every commit cost more copying than storing it).
#[derive(Default)]
pub(crate) struct AuditCache {
    pub(crate) frontier: Option<Frontier>,
    pub(crate) lines: Vec<u8>,
    pub(crate) hashes: Vec<Hash>,
}

/// Buffers larger than this are not kept (a rare large commit does not pin its memory).
const KEEP_BYTES: usize = 1 << 20;

impl AuditCache {
    /// Keep a committed transaction's buffers (flushed, hence empty) for the next one.
    pub(crate) fn keep(&mut self, mut hashes: Vec<Hash>, mut lines: Vec<u8>) {
        if lines.capacity() <= KEEP_BYTES {
            lines.clear();
            self.lines = lines;
        }
        if hashes.capacity() * HASH <= KEEP_BYTES {
            hashes.clear();
            self.hashes = hashes;
        }
    }
}

/// Stored hashes per block.
pub(crate) const BLOCK: u64 = 256;
const HASH: usize = 32;

/// The hash at byte offset `(index - first) * 32` of a row whose first hash has stored index
/// `first`, if the row reaches that far.
fn hash_in(data: &[u8], first: u64, index: u64) -> Option<Hash> {
    let off = usize::try_from(index.checked_sub(first)?)
        .ok()?
        .checked_mul(HASH)?;
    data.get(off..off + HASH)?.try_into().ok()
}

/// Rows read last, so that neighbouring indexes cost one lookup.
#[derive(Default)]
struct ReadCache {
    block: Option<(u64, Vec<u8>)>,
    tail: Option<(u64, Vec<u8>)>,
}

/// Stored hashes read from the complete blocks, the tail rows of the block being filled, and
/// the kept hashes of pruned blocks, in that order.
pub(crate) struct Hashes<'a, B, T, K> {
    blocks: &'a B,
    tail: &'a T,
    kept: &'a K,
}

impl<'a, B, T, K> Hashes<'a, B, T, K>
where
    B: ReadableTable<u64, &'static [u8]>,
    T: ReadableTable<u64, &'static [u8]>,
    K: ReadableTable<u64, [u8; 32]>,
{
    pub(crate) fn new(blocks: &'a B, tail: &'a T, kept: &'a K) -> Self {
        Self { blocks, tail, kept }
    }

    fn read_one(&self, index: u64, cache: &mut ReadCache) -> Result<Hash, TreeError> {
        let read = |e: redb::StorageError| TreeError::Read(e.to_string());
        let block = index / BLOCK;
        if cache.block.as_ref().is_none_or(|(b, _)| *b != block) {
            let data = self.blocks.get(block).map_err(read)?;
            cache.block = data.map(|d| (block, d.value().to_vec()));
        }
        if let Some((b, data)) = cache.block.as_ref() {
            if *b == block {
                if let Some(h) = hash_in(data, block * BLOCK, index) {
                    return Ok(h);
                }
            }
        }
        if let Some((first, data)) = cache.tail.as_ref() {
            if let Some(h) = hash_in(data, *first, index) {
                return Ok(h);
            }
        }
        // Tail rows never cross a block boundary: only this block's rows can hold it.
        let row = self
            .tail
            .range(block * BLOCK..=index)
            .map_err(read)?
            .next_back()
            .transpose()
            .map_err(read)?;
        if let Some((k, v)) = row {
            let (first, data) = (k.value(), v.value().to_vec());
            let h = hash_in(&data, first, index);
            cache.tail = Some((first, data));
            if let Some(h) = h {
                return Ok(h);
            }
        }
        match self.kept.get(index).map_err(read)? {
            Some(h) => Ok(h.value()),
            None => Err(TreeError::Missing(index)),
        }
    }
}

impl<B, T, K> HashSource for Hashes<'_, B, T, K>
where
    B: ReadableTable<u64, &'static [u8]>,
    T: ReadableTable<u64, &'static [u8]>,
    K: ReadableTable<u64, [u8; 32]>,
{
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
        let mut cache = ReadCache::default();
        indexes
            .iter()
            .map(|&i| self.read_one(i, &mut cache))
            .collect()
    }
}

/// The tables stored hashes are appended to.
pub(crate) struct HashTables<'x, 't> {
    pub(crate) blocks: &'x mut Table<'t, u64, &'static [u8]>,
    pub(crate) tail: &'x mut Table<'t, u64, &'static [u8]>,
}

impl HashTables<'_, '_> {
    /// Append `hashes` at stored index `start` (the number of hashes stored so far): a block
    /// they complete is written whole and its tail rows are deleted; the rest becomes one tail
    /// row. `scratch` is reused for the completed block.
    pub(crate) fn append(
        &mut self,
        mut start: u64,
        mut hashes: &[Hash],
        scratch: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        while !hashes.is_empty() {
            let block = start / BLOCK;
            let first = block * BLOCK;
            let off = start - first;
            let take = usize::try_from((BLOCK - off).min(hashes.len() as u64)).unwrap_or(0);
            let (mine, rest) = hashes.split_at(take);
            if off + take as u64 == BLOCK {
                scratch.clear();
                if off > 0 {
                    for row in self.tail.range(first..start)? {
                        let (k, v) = row?;
                        if k.value() != first + (scratch.len() / HASH) as u64 {
                            return Err(tail_corrupt(block, k.value(), scratch.len()));
                        }
                        scratch.extend_from_slice(v.value());
                    }
                    if scratch.len() as u64 != off * HASH as u64 {
                        return Err(tail_corrupt(block, start, scratch.len()));
                    }
                    self.tail.retain_in(first..start, |_, _| false)?;
                }
                scratch.extend_from_slice(mine.as_flattened());
                self.blocks.insert(block, scratch.as_slice())?;
            } else {
                self.tail.insert(start, mine.as_flattened())?;
            }
            start += take as u64;
            hashes = rest;
        }
        Ok(())
    }
}

fn tail_corrupt(block: u64, at: u64, bytes: usize) -> StorageError {
    StorageError::Corrupt {
        what: "audit tree tail",
        detail: format!(
            "block {block}: the tail rows before stored index {at} hold {bytes} bytes, not \
             every hash from the block's start"
        ),
    }
}

/// Format 3 kept the block being filled as a short row of `audit_hashes`, rewritten by every
/// commit: move it to `audit_hashes_tail` (once, at upgrade to format 4).
pub(crate) fn move_partial_block(txn: &WriteTransaction) -> Result<(), StorageError> {
    let mut blocks = txn.open_table(AUDIT_HASHES)?;
    let mut tail = txn.open_table(AUDIT_HASHES_TAIL)?;
    let last = blocks.last()?.map(|(k, v)| (k.value(), v.value().to_vec()));
    if let Some((block, data)) = last {
        if data.len() % HASH != 0 || data.len() as u64 > BLOCK * HASH as u64 {
            return Err(StorageError::Corrupt {
                what: "audit tree block",
                detail: format!("block {block} holds {} bytes", data.len()),
            });
        }
        if (data.len() as u64) < BLOCK * HASH as u64 {
            blocks.remove(block)?;
            if !data.is_empty() {
                tail.insert(block * BLOCK, data.as_slice())?;
            }
        }
    }
    Ok(())
}

/// Up to `limit` entries (index, line) from index `from` on. Entry rows are keyed by the
/// index of their first entry and hold the lines of one group commit joined by `\n`.
pub(crate) fn entries_from<T>(
    table: &T,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StorageError>
where
    T: ReadableTable<u64, &'static [u8]>,
{
    let start = match table.range(..=from)?.next_back() {
        Some(row) => row?.0.value(),
        None => from,
    };
    let mut out = Vec::new();
    for row in table.range(start..)? {
        let (k, v) = row?;
        for (index, line) in (k.value()..).zip(v.value().split(|&b| b == b'\n')) {
            if out.len() >= limit {
                return Ok(out);
            }
            if index >= from {
                out.push((index, line.to_vec()));
            }
        }
    }
    Ok(out)
}

/// Build the tree from the entries of a format-2 database (once, at upgrade).
pub(crate) fn build_tree(txn: &WriteTransaction, head: &AuditHead) -> Result<(), StorageError> {
    let audit = txn.open_table(AUDIT)?;
    let mut blocks = txn.open_table(AUDIT_HASHES)?;
    let mut tail = txn.open_table(AUDIT_HASHES_TAIL)?;
    let mut out = HashTables {
        blocks: &mut blocks,
        tail: &mut tail,
    };
    let mut frontier = Frontier::default();
    let (mut pending, mut scratch) = (Vec::new(), Vec::new());
    let mut flushed = 0u64;
    for row in audit.iter()? {
        let (k, v) = row?;
        if k.value() != frontier.size() + 1 {
            return Err(StorageError::Corrupt {
                what: "audit entry",
                detail: format!("entry {} follows entry {}", k.value(), frontier.size()),
            });
        }
        for line in v.value().split(|&b| b == b'\n') {
            frontier.append(tree::leaf_hash(line), &mut pending);
        }
        if pending.len() as u64 >= 64 * BLOCK {
            out.append(flushed, &pending, &mut scratch)?;
            flushed += pending.len() as u64;
            pending.clear();
        }
    }
    out.append(flushed, &pending, &mut scratch)?;
    if frontier.size() != head.index {
        return Err(StorageError::Corrupt {
            what: "audit head",
            detail: format!(
                "head says {} entries, the table holds {}",
                head.index,
                frontier.size()
            ),
        });
    }
    Ok(())
}

impl Batch<'_> {
    /// Write the hashes this transaction's appends stored.
    pub(crate) fn flush_hashes(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let start = tree::stored_hash_count(self.start_head.index);
        HashTables {
            blocks: &mut self.hashes,
            tail: &mut self.tail,
        }
        .append(start, &self.pending, &mut self.buf)?;
        self.pending.clear();
        Ok(())
    }

    /// Write this transaction's entries as one row.
    pub(crate) fn flush_entries(&mut self) -> Result<(), StorageError> {
        if self.pending_lines.is_empty() {
            return Ok(());
        }
        self.audit
            .insert(self.start_head.index + 1, self.pending_lines.as_slice())?;
        self.pending_lines.clear();
        Ok(())
    }

    /// The tree as this transaction leaves it: (size, root).
    pub fn audit_tree(&self) -> (u64, Hash) {
        (self.frontier.size(), self.frontier.root())
    }

    /// The root of the first `size` entries, as stored before this transaction (`size` at
    /// most the tree size at its start).
    pub fn audit_tree_hash(&self, size: u64) -> Result<Hash, StorageError> {
        if size > self.start_head.index {
            return Err(TreeError::BadRequest(format!(
                "tree size {size} is beyond the committed log ({})",
                self.start_head.index
            ))
            .into());
        }
        Ok(tree::tree_hash(
            size,
            &Hashes::new(&self.hashes, &self.tail, &self.kept),
        )?)
    }

    /// Where retention stands.
    pub fn audit_retention(&self) -> Result<AuditRetention, StorageError> {
        read_meta(&self.meta, META_AUDIT_RETENTION, "audit retention")
    }

    /// Record where retention stands.
    pub fn set_audit_retention(&mut self, r: &AuditRetention) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        records::encode(r, &mut buf).map_err(|e| StorageError::Corrupt {
            what: "audit retention",
            detail: e.to_string(),
        })?;
        self.meta.insert(META_AUDIT_RETENTION, buf.as_slice())?;
        Ok(())
    }

    /// Delete entries up to `through` (a multiple of `2^keep_level`, and no more than the
    /// committed log) and the stored hashes only they needed. Hashes of subtrees of at least
    /// `2^keep_level` leaves are kept, so roots and proofs of every later tree (and of the
    /// entries after `through`) still come out of storage. Updates the retention record.
    pub fn audit_prune(&mut self, through: u64, keep_level: u32) -> Result<(), StorageError> {
        let mut ret = self.audit_retention()?;
        let head = self.start_head.index;
        if through <= ret.pruned_through {
            return Ok(());
        }
        if through > head || keep_level >= 64 || !through.is_multiple_of(1u64 << keep_level) {
            return Err(TreeError::BadRequest(format!(
                "cannot prune through entry {through} (log of {head}, segments of 2^{keep_level})"
            ))
            .into());
        }
        // The row holding entry `through` (it may hold later entries too).
        let (row_key, row) = self
            .audit
            .range(..=through)?
            .next_back()
            .transpose()?
            .map(|(k, v)| (k.value(), v.value().to_vec()))
            .ok_or(StorageError::Tree(TreeError::Missing(through)))?;
        let lines: Vec<&[u8]> = row.split(|&b| b == b'\n').collect();
        let at = usize::try_from(through - row_key).unwrap_or(usize::MAX);
        let last = *lines
            .get(at)
            .ok_or(StorageError::Tree(TreeError::Missing(through)))?;
        // The entry hash of the last pruned entry: where the local chain now starts.
        let hash = entry_hash_of(last).ok_or_else(|| StorageError::Corrupt {
            what: "audit entry",
            detail: format!("entry {through} has no entry_hash"),
        })?;
        // Keep the large subtrees inside the pruned range.
        for level in keep_level..64 {
            let count = through >> level;
            if count == 0 {
                break;
            }
            let first_new = (ret.pruned_through >> level).saturating_sub(1);
            for n in first_new..count {
                if (n + 1) << level <= ret.pruned_through {
                    continue;
                }
                let index = tree::stored_hash_index(level, n);
                let h = Hashes::new(&self.hashes, &self.tail, &self.kept)
                    .read_hashes(&[index])?
                    .pop()
                    .ok_or(StorageError::Tree(TreeError::Missing(index)))?;
                self.kept.insert(index, h)?;
            }
        }
        // Blocks wholly below the pruned range's last stored hash.
        let blocks = tree::stored_hash_count(through) / BLOCK;
        self.hashes.retain_in(..blocks, |_, _| false)?;
        self.audit.retain_in(..=through, |_, _| false)?;
        if at + 1 < lines.len() {
            let rest = lines[at + 1..].join(&b'\n');
            self.audit.insert(through + 1, rest.as_slice())?;
        }
        ret.pruned_through = through;
        ret.pruned_hash = hash;
        self.set_audit_retention(&ret)
    }

    /// Store (or replace, when cosignatures were added) the checkpoint note of `size`.
    pub fn checkpoint_put(&mut self, size: u64, note: &[u8]) -> Result<(), StorageError> {
        self.checkpoints.open(self.txn)?.insert(size, note)?;
        Ok(())
    }

    /// The checkpoint note of `size`, if one was signed.
    pub fn checkpoint_get(&mut self, size: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let table = self.checkpoints.open(self.txn)?;
        Ok(table.get(size)?.map(|v| v.value().to_vec()))
    }

    /// The newest checkpoint: (size, note).
    pub fn checkpoint_latest(&mut self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        Ok(self
            .checkpoints
            .open(self.txn)?
            .last()?
            .map(|(k, v)| (k.value(), v.value().to_vec())))
    }
}

/// The `entry_hash` field of an entry line (64 hex digits).
fn entry_hash_of(line: &[u8]) -> Option<[u8; 32]> {
    const KEY: &[u8] = b"\"entry_hash\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let hex = line.get(at..at + 64)?;
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

impl Reader {
    /// Where retention stands.
    pub fn audit_retention(&self) -> Result<AuditRetention, StorageError> {
        let meta = self.txn.open_table(META)?;
        read_meta(&meta, META_AUDIT_RETENTION, "audit retention")
    }

    fn with_hashes<T>(
        &self,
        f: impl FnOnce(
            &Hashes<
                '_,
                redb::ReadOnlyTable<u64, &'static [u8]>,
                redb::ReadOnlyTable<u64, &'static [u8]>,
                redb::ReadOnlyTable<u64, [u8; 32]>,
            >,
        ) -> Result<T, TreeError>,
    ) -> Result<T, StorageError> {
        let blocks = self.txn.open_table(AUDIT_HASHES)?;
        let tail = self.txn.open_table(AUDIT_HASHES_TAIL)?;
        let kept = self.txn.open_table(AUDIT_HASHES_KEPT)?;
        Ok(f(&Hashes::new(&blocks, &tail, &kept))?)
    }

    fn check_size(&self, size: u64) -> Result<(), StorageError> {
        let head = self.audit_head()?;
        if size > head.index {
            return Err(TreeError::BadRequest(format!(
                "tree size {size} is beyond the log, which has {} entries",
                head.index
            ))
            .into());
        }
        Ok(())
    }

    /// The tree's right edge at `size` entries (to extend it with entries read separately).
    pub fn frontier(&self, size: u64) -> Result<Frontier, StorageError> {
        self.check_size(size)?;
        self.with_hashes(|h| Frontier::load(size, h))
    }

    /// The root of the first `size` entries.
    pub fn tree_hash(&self, size: u64) -> Result<Hash, StorageError> {
        self.check_size(size)?;
        self.with_hashes(|h| tree::tree_hash(size, h))
    }

    /// The inclusion proof of entry `index` (1-based) in the tree of `size` entries.
    pub fn prove_entry(&self, size: u64, index: u64) -> Result<Vec<Hash>, StorageError> {
        self.check_size(size)?;
        if index == 0 || index > size {
            return Err(TreeError::BadRequest(format!(
                "entry {index} is not in a tree of {size} entries (indexes start at 1)"
            ))
            .into());
        }
        self.with_hashes(|h| tree::prove_record(size, index - 1, h))
    }

    /// The consistency proof from the tree of `old` entries to the tree of `size` entries.
    pub fn prove_consistency(&self, size: u64, old: u64) -> Result<Vec<Hash>, StorageError> {
        self.check_size(size)?;
        self.with_hashes(|h| tree::prove_tree(size, old, h))
    }

    /// Up to `limit` checkpoints (size, note) with size ≥ `from`, oldest first.
    pub fn checkpoints(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let table = self.txn.open_table(CHECKPOINTS)?;
        let mut out = Vec::new();
        for item in table.range(from..)?.take(limit) {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The newest checkpoint (size, note).
    pub fn checkpoint_latest(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let table = self.txn.open_table(CHECKPOINTS)?;
        let last = table.last()?.map(|(k, v)| (k.value(), v.value().to_vec()));
        Ok(last)
    }

    /// The checkpoint of exactly `size` entries.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let table = self.txn.open_table(CHECKPOINTS)?;
        Ok(table.get(size)?.map(|v| v.value().to_vec()))
    }
}
