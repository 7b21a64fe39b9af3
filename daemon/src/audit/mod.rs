//! The tamper-evident audit log (CONTRACT.md §6): every decision becomes one entry, hash-chained
//! to the previous one, with a `log.sealed` entry after every `seal_every` entries.
//!
//! Entries are built by the storage thread inside the group commit that carries the decision
//! (see `commit`), so the chain is linear and an answer is only sent once its entry is on disk.
//! `verify` checks an exported or stored log with the contract's reasons.

pub mod checkpoint;
pub mod query;
mod verify;

use vvgate_storage::{AuditHead, Batch, StorageError};

use crate::ids;
use crate::json::{write_str, write_u64, Cjson};
use crate::time::{self, Micros};

pub use verify::{
    verify_checkpoints, verify_entries, verify_lines, CheckpointInput, CheckpointReport, Entries,
    Verdict, VerifyOptions,
};

/// `actor` of entries written for producer requests.
pub const ACTOR_GATEWAY: &str = "telemetry_gateway";
/// `actor` of seals and gateway-level events.
pub const ACTOR_SYSTEM: &str = "SYSTEM";

/// A value in an entry's `details` (strings and integers only, CONTRACT.md §6.1).
#[derive(Clone, Copy, Debug)]
pub enum Detail<'a> {
    Str(&'a str),
    Int(i64),
}

/// Write a `details` object as CJSON: the fields are sorted here, so callers list them in any
/// order. Keys must be distinct.
pub fn write_details(out: &mut Vec<u8>, fields: &mut [(&str, Detail<'_>)]) {
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut w = Cjson::new(out);
    w.begin_obj();
    for (k, v) in fields.iter() {
        w.key(k);
        match v {
            Detail::Str(s) => w.str(s),
            Detail::Int(i) => w.i64(*i),
        };
    }
    w.end_obj();
}

/// Hash and serialise one entry. `details` is CJSON. Returns the entry hash; `line` receives
/// the seven-field CJSON line and `scratch` is reused for the hash input.
#[allow(clippy::too_many_arguments)] // the six hashed fields plus two buffers
pub fn encode_entry(
    index: u64,
    timestamp: &str,
    event_type: &str,
    actor: &str,
    details: &[u8],
    previous_hash: &str,
    line: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> [u8; 32] {
    let (hash, split) = encode_hashed(
        index,
        timestamp,
        event_type,
        actor,
        details,
        previous_hash,
        scratch,
    );
    let hex = ids::hex32(&hash);
    line.clear();
    for part in line_parts(scratch, split, &hex) {
        line.extend_from_slice(part);
    }
    hash
}

/// Write the hashed object (the entry without `entry_hash`) into `scratch` and hash it.
/// Returns the entry hash and where `entry_hash` goes in the line: in key order it comes right
/// after `details`, so the line is the hashed object with it spliced in there.
fn encode_hashed(
    index: u64,
    timestamp: &str,
    event_type: &str,
    actor: &str,
    details: &[u8],
    previous_hash: &str,
    scratch: &mut Vec<u8>,
) -> ([u8; 32], usize) {
    // The keys are fixed and already in CJSON order, so the object is written by hand (the
    // generic writer's key escaping was a tenth of the append's cost).
    scratch.clear();
    scratch.extend_from_slice(b"{\"actor\":");
    write_str(scratch, actor);
    scratch.extend_from_slice(b",\"details\":");
    scratch.extend_from_slice(details);
    let split = scratch.len();
    scratch.extend_from_slice(b",\"event_type\":");
    write_str(scratch, event_type);
    scratch.extend_from_slice(b",\"index\":");
    write_u64(scratch, index);
    scratch.extend_from_slice(b",\"previous_hash\":");
    write_str(scratch, previous_hash);
    scratch.extend_from_slice(b",\"timestamp\":");
    write_str(scratch, timestamp);
    scratch.push(b'}');
    (ids::sha256(scratch), split)
}

/// The entry line as parts of the hashed object and the entry hash, without copying them.
fn line_parts<'a>(hashed: &'a [u8], split: usize, hex: &'a str) -> [&'a [u8]; 5] {
    let (head, tail) = hashed.split_at(split);
    [head, b",\"entry_hash\":\"", hex.as_bytes(), b"\"", tail]
}

fn previous_hex(head: &AuditHead) -> ids::HexHash {
    if head.index == 0 {
        ids::HexHash::new()
    } else {
        ids::hex32(&head.hash)
    }
}

/// Appends entries to the chain inside a storage batch. Owned by the storage thread.
pub struct Chain {
    seal_every: u64,
    scratch: Vec<u8>,
    details: Vec<u8>,
    /// The timestamp text of the last append: a group commit stamps its entries alike.
    stamp: Option<(Micros, heapless::String<32>)>,
}

impl Chain {
    pub fn new(seal_every: u64) -> Self {
        Self {
            seal_every: seal_every.max(1),
            scratch: Vec::with_capacity(1024),
            details: Vec::with_capacity(256),
            stamp: None,
        }
    }

    fn stamp(&mut self, now: Micros) -> heapless::String<32> {
        match &self.stamp {
            Some((at, ts)) if *at == now => ts.clone(),
            _ => {
                let ts = time::iso(now);
                self.stamp = Some((now, ts.clone()));
                ts
            }
        }
    }

    /// Append one entry (and the seal that follows it when due). Returns the entry's index.
    pub fn append(
        &mut self,
        b: &mut Batch<'_>,
        now: Micros,
        actor: &str,
        event_type: &str,
        details: &[u8],
    ) -> Result<u64, StorageError> {
        let ts = self.stamp(now);
        let head = b.audit_head();
        let index = head.index + 1;
        let new_head = self.put(
            b,
            AuditHead {
                index,
                hash: [0; 32],
                last_seal: head.last_seal,
            },
            &ts,
            event_type,
            actor,
            details,
            &previous_hex(&head),
        )?;
        // Entries since the last seal entry (or since the start).
        if index - new_head.last_seal >= self.seal_every {
            self.seal(b, &ts, new_head)?;
        }
        Ok(index)
    }

    /// Encode, hash and append the entry `head.index`; returns the head with its hash. The
    /// line goes to the batch in parts, straight from the hashed object.
    #[allow(clippy::too_many_arguments)] // the entry's fields
    fn put(
        &mut self,
        b: &mut Batch<'_>,
        mut head: AuditHead,
        ts: &str,
        event_type: &str,
        actor: &str,
        details: &[u8],
        previous_hash: &str,
    ) -> Result<AuditHead, StorageError> {
        let (hash, split) = encode_hashed(
            head.index,
            ts,
            event_type,
            actor,
            details,
            previous_hash,
            &mut self.scratch,
        );
        head.hash = hash;
        let hex = ids::hex32(&hash);
        b.audit_append_parts(head, &line_parts(&self.scratch, split, &hex))?;
        Ok(head)
    }

    fn seal(&mut self, b: &mut Batch<'_>, ts: &str, sealed: AuditHead) -> Result<(), StorageError> {
        let last_hash = ids::hex32(&sealed.hash);
        let mut details = std::mem::take(&mut self.details);
        details.clear();
        write_details(
            &mut details,
            &mut [
                (
                    "sealed_index",
                    Detail::Int(i64::try_from(sealed.index).unwrap_or(i64::MAX)),
                ),
                ("last_entry_hash", Detail::Str(&last_hash)),
                ("sealed_at", Detail::Str(ts)),
            ],
        );
        let index = sealed.index + 1;
        let r = self.put(
            b,
            AuditHead {
                index,
                hash: [0; 32],
                last_seal: index,
            },
            ts,
            "log.sealed",
            ACTOR_SYSTEM,
            &details,
            &last_hash,
        );
        self.details = details;
        r.map(|_| ())
    }
}

/// Entries re-verified at start-up (the tail of the chain and its tree leaves).
const STARTUP_TAIL: u64 = 256;

/// The start-up integrity check: the newest entries chain to the stored head and are the
/// leaves the stored tree holds, and the newest checkpoint is signed by `key`, covers no more
/// than the log, and has the tree's root. A failure is reported (readiness
/// `audit_log_corrupt`), never repaired. The full check is `vvctl audit verify`.
pub fn startup_check(
    store: &vvgate_storage::Store,
    key: &checkpoint::VerifierKey,
) -> Result<(), String> {
    let r = store.read().map_err(|e| e.to_string())?;
    let head = r.audit_head().map_err(|e| e.to_string())?;
    if head.index > 0 {
        let pruned = r
            .audit_retention()
            .map_err(|e| e.to_string())?
            .pruned_through;
        let first = head
            .index
            .saturating_sub(STARTUP_TAIL - 1)
            .max(pruned + 1)
            .max(1);
        let rows = r
            .audit_range(first, usize::try_from(STARTUP_TAIL).unwrap_or(256))
            .map_err(|e| e.to_string())?;
        let frontier = r.frontier(first - 1).map_err(|e| e.to_string())?;
        let opts = VerifyOptions {
            first_index: Some(first),
            ..VerifyOptions::default()
        };
        let entries = verify_entries(
            rows.iter()
                .map(|(_, l)| Ok::<_, std::convert::Infallible>(l.clone())),
            &VerifyOptions {
                start: Some((frontier, String::new())),
                ..opts
            },
            &[head.index],
        )
        .unwrap_or_else(|e| match e {});
        match &entries.verdict {
            Verdict::Broken { broken_at, reason } => {
                return Err(format!("{reason} at entry {broken_at}"));
            }
            Verdict::Ok { latest_hash, .. } => {
                if entries.tree.size() != head.index {
                    return Err(format!(
                        "the log head says {} entries, the table ends at {}",
                        head.index,
                        entries.tree.size()
                    ));
                }
                if latest_hash.as_str() != ids::hex32(&head.hash).as_str() {
                    return Err(format!(
                        "entry {} is not the entry the log head recorded",
                        head.index
                    ));
                }
            }
        }
        let stored_root = r.tree_hash(head.index).map_err(|e| e.to_string())?;
        if entries.roots.get(&head.index) != Some(&stored_root) {
            return Err(format!(
                "the stored Merkle tree does not match entries {first} to {}",
                head.index
            ));
        }
    }
    if let Some((size, note)) = r.checkpoint_latest().map_err(|e| e.to_string())? {
        let keys = checkpoint::Keys::new(std::slice::from_ref(key), &[]);
        let opened = checkpoint::open(&note, Some(&key.name), &keys)
            .map_err(|e| format!("checkpoint of size {size}: {e}"))?;
        let cp = opened.checkpoint;
        if cp.size != size {
            return Err(format!("checkpoint stored as size {size} says {}", cp.size));
        }
        if size > head.index {
            return Err(format!(
                "log_truncated: the checkpoint covers {size} entries, the log has {}",
                head.index
            ));
        }
        if r.tree_hash(size).map_err(|e| e.to_string())? != cp.root {
            return Err(format!("root_mismatch at the checkpoint of size {size}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
