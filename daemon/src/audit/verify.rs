//! The verifier (CONTRACT.md §6.5): entries in order, each checked for `malformed_entry`,
//! `entry_hash_mismatch`, `previous_hash_mismatch`, `index_mismatch` and `seal_mismatch`, while
//! the Merkle tree over the same lines is rebuilt; then the checkpoints: every signature
//! (`checkpoint_signature_invalid`), the log's length (`log_truncated`), and each
//! checkpoint's root against the rebuilt tree (`checkpoint_inconsistent`, `root_mismatch`).
//! Works on any source of lines: the database, a JSONL export, stdin.
//!
//! Consistency between checkpoints is decided through the rebuilt tree: two checkpoints whose
//! roots both equal the roots of the entries at their sizes are consistent (the entries are
//! the proof). When a checkpoint's root differs but a checkpoint at least as large matches
//! the entries, the two checkpoints cannot belong to one log (`checkpoint_inconsistent`: a
//! fork, or a log rolled back and signed again); when no larger one matches, the entries
//! themselves changed after that checkpoint was signed (`root_mismatch`).

use std::collections::BTreeMap;

use vvgate_storage::tree::{self, Frontier, Hash};

use crate::ids;
use crate::json::{canonicalize, Doc, Kind, Tape};

use super::checkpoint::{self, Checkpoint, CheckpointError, Keys};
use super::encode_entry;

/// How to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Upstream files repeat indexes at seals: skip `index_mismatch` and seal index checks.
    pub upstream: bool,
    /// Index of the first entry (1 for a whole log).
    pub first_index: Option<u64>,
    /// For a log whose first entries were pruned: the tree of the entries before
    /// `first_index` and the hash of the last of them (empty: unknown).
    pub start: Option<(Frontier, String)>,
}

/// The verifier's result, printed as the contract's JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok {
        entries: u64,
        latest_hash: String,
    },
    Broken {
        broken_at: u64,
        reason: &'static str,
    },
}

impl Verdict {
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok { .. })
    }

    /// `{"ok":true,"entries":N,"latest_hash":"…"}` or `{"ok":false,"broken_at":N,"reason":"…"}`.
    pub fn to_json(&self) -> String {
        match self {
            Verdict::Ok {
                entries,
                latest_hash,
            } => format!(r#"{{"ok":true,"entries":{entries},"latest_hash":"{latest_hash}"}}"#),
            Verdict::Broken { broken_at, reason } => {
                format!(r#"{{"ok":false,"broken_at":{broken_at},"reason":"{reason}"}}"#)
            }
        }
    }
}

const FIELDS: [&str; 7] = [
    "actor",
    "details",
    "entry_hash",
    "event_type",
    "index",
    "previous_hash",
    "timestamp",
];

struct Entry {
    index: u64,
    entry_hash: String,
    previous_hash: String,
    event_type: String,
    sealed_index: Option<u64>,
    last_entry_hash: Option<String>,
    recomputed: [u8; 32],
}

fn parse_entry(
    line: &[u8],
    tape: &mut Tape,
    details: &mut Vec<u8>,
    scratch: &mut Vec<usize>,
    out: &mut Vec<u8>,
    hash_buf: &mut Vec<u8>,
) -> Option<Entry> {
    let doc = tape.parse(line).ok()?;
    if doc.kind(Doc::ROOT) != Kind::Obj || doc.node(Doc::ROOT).count != FIELDS.len() {
        return None;
    }
    let field = |name: &str, kind: Kind| doc.get(Doc::ROOT, name).filter(|&i| doc.kind(i) == kind);
    let s = |name: &str| field(name, Kind::Str).map(|i| doc.str(i).into_owned());
    let actor = s("actor")?;
    let event_type = s("event_type")?;
    let entry_hash = s("entry_hash")?;
    let previous_hash = s("previous_hash")?;
    let timestamp = s("timestamp")?;
    let index = field("index", Kind::Int).and_then(|i| doc.raw(i).parse::<u64>().ok())?;
    let d = field("details", Kind::Obj)?;
    details.clear();
    canonicalize(&doc, d, details, scratch);
    let sealed_index = doc
        .get(d, "sealed_index")
        .filter(|&i| doc.kind(i) == Kind::Int)
        .and_then(|i| doc.raw(i).parse().ok());
    let last_entry_hash = doc
        .get(d, "last_entry_hash")
        .filter(|&i| doc.kind(i) == Kind::Str)
        .map(|i| doc.str(i).into_owned());
    let recomputed = encode_entry(
        index,
        &timestamp,
        &event_type,
        &actor,
        details,
        &previous_hash,
        out,
        hash_buf,
    );
    Some(Entry {
        index,
        entry_hash,
        previous_hash,
        event_type,
        sealed_index,
        last_entry_hash,
        recomputed,
    })
}

/// What the entry pass found.
#[derive(Clone, Debug)]
pub struct Entries {
    pub verdict: Verdict,
    /// The rebuilt tree after the last good entry.
    pub tree: Frontier,
    /// Roots at the sizes asked for.
    pub roots: BTreeMap<u64, Hash>,
}

/// Verify a sequence of entry lines (blank lines are skipped). Stops at the first break.
pub fn verify_lines<I, E>(lines: I, opts: VerifyOptions) -> Result<Verdict, E>
where
    I: IntoIterator<Item = Result<Vec<u8>, E>>,
{
    Ok(verify_entries(lines, &opts, &[])?.verdict)
}

/// Verify entry lines and rebuild the tree, keeping the roots at `sizes`.
pub fn verify_entries<I, E>(lines: I, opts: &VerifyOptions, sizes: &[u64]) -> Result<Entries, E>
where
    I: IntoIterator<Item = Result<Vec<u8>, E>>,
{
    let mut tree = opts
        .start
        .as_ref()
        .map_or_else(Frontier::default, |(f, _)| f.clone());
    let mut roots = BTreeMap::new();
    let mut want = sizes.to_vec();
    want.sort_unstable();
    want.dedup();
    let mut want = want.into_iter().peekable();
    let mut take_root = |tree: &Frontier, roots: &mut BTreeMap<u64, Hash>| {
        while let Some(&w) = want.peek() {
            if w < tree.size() {
                want.next();
            } else if w == tree.size() {
                roots.insert(w, tree.root());
                want.next();
            } else {
                break;
            }
        }
    };
    take_root(&tree, &mut roots);
    let mut stored = Vec::with_capacity(8);
    let verdict = verify_chain(lines, opts, |line| {
        stored.clear();
        tree.append(tree::leaf_hash(line), &mut stored);
        take_root(&tree, &mut roots);
    })?;
    Ok(Entries {
        verdict,
        tree,
        roots,
    })
}

fn verify_chain<I, E>(
    lines: I,
    opts: &VerifyOptions,
    mut good: impl FnMut(&[u8]),
) -> Result<Verdict, E>
where
    I: IntoIterator<Item = Result<Vec<u8>, E>>,
{
    let mut tape = Tape::new();
    let (mut details, mut out, mut hash_buf, mut scratch) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let first = opts.first_index.unwrap_or(1);
    // An empty start hash: the predecessor is unknown (the first entry is not chained).
    let mut prev: Option<(u64, String)> = opts
        .start
        .as_ref()
        .filter(|(_, hash)| !hash.is_empty())
        .map(|(_, hash)| (first.saturating_sub(1), hash.clone()));
    let mut entries = 0u64;
    for line in lines {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let expected = prev.as_ref().map_or(first, |(i, _)| i + 1);
        let Some(e) = parse_entry(
            &line,
            &mut tape,
            &mut details,
            &mut scratch,
            &mut out,
            &mut hash_buf,
        ) else {
            return Ok(Verdict::Broken {
                broken_at: expected,
                reason: "malformed_entry",
            });
        };
        let broken = |reason| Verdict::Broken {
            broken_at: e.index,
            reason,
        };
        if ids::hex32(&e.recomputed).as_str() != e.entry_hash {
            return Ok(broken("entry_hash_mismatch"));
        }
        let prev_hash = prev.as_ref().map_or("", |(_, h)| h.as_str());
        // A segment (first index > 1) has no predecessor to compare with.
        let chained = prev.is_some() || opts.first_index.is_none_or(|f| f == 1);
        if chained && e.previous_hash != prev_hash {
            return Ok(broken("previous_hash_mismatch"));
        }
        if !opts.upstream && e.index != expected {
            return Ok(broken("index_mismatch"));
        }
        if e.event_type == "log.sealed" {
            let (prev_index, prev_hash) = match &prev {
                Some((i, h)) => (Some(*i), Some(h.as_str())),
                None => (None, None),
            };
            let index_ok = opts.upstream || e.sealed_index == prev_index;
            if !index_ok || e.last_entry_hash.as_deref() != prev_hash {
                return Ok(broken("seal_mismatch"));
            }
        }
        entries += 1;
        good(&line);
        prev = Some((e.index, e.entry_hash));
    }
    Ok(Verdict::Ok {
        entries,
        latest_hash: prev.map(|(_, h)| h).unwrap_or_default(),
    })
}

/// A checkpoint handed to the verifier, with where it came from (for reports).
#[derive(Clone, Debug)]
pub struct CheckpointInput {
    pub note: Vec<u8>,
    pub source: &'static str,
}

/// Summary of a successful checkpoint pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    pub checked: usize,
    /// Checkpoints of pruned entries, whose roots could not be recomputed here.
    pub skipped: usize,
    pub latest_size: u64,
    /// Witness cosignatures that verified.
    pub cosignatures: usize,
}

/// Check `checkpoints` against the entry pass. `origin`: the expected origin line.
pub fn verify_checkpoints(
    entries: &Entries,
    checkpoints: &[CheckpointInput],
    origin: Option<&str>,
    keys: &Keys,
) -> Result<CheckpointReport, (Verdict, String)> {
    let broken = |size: u64, reason: &'static str, why: String| {
        (
            Verdict::Broken {
                broken_at: size,
                reason,
            },
            why,
        )
    };
    let mut opened: Vec<(Checkpoint, &'static str)> = Vec::new();
    let mut report = CheckpointReport::default();
    for c in checkpoints {
        match checkpoint::open(&c.note, origin, keys) {
            Ok(o) => {
                report.cosignatures += o.cosignatures.len();
                opened.push((o.checkpoint, c.source));
            }
            Err(e) => {
                let size = signed_note::Note::from_bytes(&c.note)
                    .ok()
                    .and_then(|n| Checkpoint::parse(n.text()).ok())
                    .map_or(0, |cp| cp.size);
                let why = match e {
                    CheckpointError::Unsigned => "not signed by the checkpoint key".to_string(),
                    other => other.to_string(),
                };
                return Err(broken(
                    size,
                    "checkpoint_signature_invalid",
                    format!("{} checkpoint of size {size}: {why}", c.source),
                ));
            }
        }
    }
    opened.sort_by_key(|(cp, _)| cp.size);
    let log_size = entries.tree.size();
    if let Some((cp, src)) = opened.iter().find(|(cp, _)| cp.size > log_size) {
        return Err(broken(
            cp.size,
            "log_truncated",
            format!(
                "the {src} checkpoint covers {} entries; the log has {log_size}",
                cp.size
            ),
        ));
    }
    let first = entries.roots.keys().next().copied().unwrap_or(u64::MAX);
    let matches = |cp: &Checkpoint| entries.roots.get(&cp.size) == Some(&cp.root);
    for (cp, src) in &opened {
        if cp.size == 0 {
            continue;
        }
        if cp.size < first || !entries.roots.contains_key(&cp.size) {
            report.skipped += 1;
            continue;
        }
        if matches(cp) {
            report.checked += 1;
            report.latest_size = report.latest_size.max(cp.size);
            continue;
        }
        let later = opened
            .iter()
            .find(|(other, _)| other.size >= cp.size && matches(other));
        return Err(match later {
            Some((other, other_src)) => broken(
                cp.size,
                "checkpoint_inconsistent",
                format!(
                    "the {src} checkpoint of size {} cannot be a prefix of the {other_src} checkpoint of size {}, which the entries match",
                    cp.size, other.size
                ),
            ),
            None => broken(
                cp.size,
                "root_mismatch",
                format!(
                    "the entries' root at size {} differs from the {src} checkpoint's",
                    cp.size
                ),
            ),
        });
    }
    Ok(report)
}
