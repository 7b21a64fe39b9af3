//! Questions asked of the stored log by `vvctl audit` (through the control socket while the
//! gateway runs, or on its database when it is stopped): checkpoints, inclusion proofs and
//! consistency proofs. Each answer is a JSON object, the same from either path.
//!
//! An inclusion proof is also printed as a C2SP `tlog-proof@v1` (see [`Inclusion::tlog_proof`]):
//! the entry line travels in its `extra` line, so the proof is checkable on its own.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use vvgate_storage::tree::{Hash, TreeError};
use vvgate_storage::{Reader, StorageError};

use super::checkpoint::Checkpoint;

/// Why a question has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Range(String),
    #[error("no checkpoint has been signed yet (the first follows the first entry within seal_interval_seconds)")]
    NoCheckpoint,
    #[error("no checkpoint of size {size}; signed sizes near it: {near}")]
    NoCheckpointAt { size: u64, near: String },
    #[error("the entries needed were pruned from the local log; use the exported segments")]
    Pruned,
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for QueryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Tree(TreeError::Missing(_)) => QueryError::Pruned,
            StorageError::Tree(TreeError::BadRequest(m)) => QueryError::Range(m),
            other => QueryError::Storage(other),
        }
    }
}

fn b64(h: &Hash) -> String {
    B64.encode(h)
}

fn text(note: &[u8]) -> String {
    String::from_utf8_lossy(note).into_owned()
}

/// The checkpoint of exactly `size`, or the newest one.
fn checkpoint(r: &Reader, size: Option<u64>) -> Result<(u64, Vec<u8>), QueryError> {
    match size {
        None => r.checkpoint_latest()?.ok_or(QueryError::NoCheckpoint),
        Some(size) => match r.checkpoint_at(size)? {
            Some(note) => Ok((size, note)),
            None => {
                let after: Vec<u64> = r
                    .checkpoints(size, 2)?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                let near = if after.is_empty() {
                    match r.checkpoint_latest()? {
                        Some((s, _)) => format!("{s} (the newest)"),
                        None => "none yet".into(),
                    }
                } else {
                    after
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                Err(QueryError::NoCheckpointAt { size, near })
            }
        },
    }
}

/// Checkpoints with size ≥ `from`, oldest first, as `{"size":N,"note":"…"}`.
pub fn checkpoints(r: &Reader, from: u64, limit: usize) -> Result<Vec<Value>, QueryError> {
    Ok(r.checkpoints(from, limit)?
        .into_iter()
        .map(|(size, note)| json!({"size": size, "note": text(&note)}))
        .collect())
}

/// An inclusion proof of one entry against a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inclusion {
    /// The entry's index (1-based; leaf `index − 1`).
    pub index: u64,
    pub size: u64,
    /// The entry's CJSON line: the leaf bytes.
    pub entry: Vec<u8>,
    pub proof: Vec<Hash>,
    pub checkpoint: Vec<u8>,
}

impl Inclusion {
    pub fn to_json(&self) -> Value {
        json!({
            "index": self.index,
            "leaf_index": self.index - 1,
            "size": self.size,
            "entry": text(&self.entry),
            "proof": self.proof.iter().map(b64).collect::<Vec<_>>(),
            "checkpoint": text(&self.checkpoint),
        })
    }

    pub fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            index: v["index"].as_u64()?,
            size: v["size"].as_u64()?,
            entry: v["entry"].as_str()?.as_bytes().to_vec(),
            proof: v["proof"]
                .as_array()?
                .iter()
                .map(|h| {
                    B64.decode(h.as_str()?)
                        .ok()
                        .and_then(|b| <Hash>::try_from(b).ok())
                })
                .collect::<Option<Vec<_>>>()?,
            checkpoint: v["checkpoint"].as_str()?.as_bytes().to_vec(),
        })
    }

    /// C2SP `tlog-proof@v1`: header, `extra` (base64 of the entry line), `index` (the leaf
    /// index, 0-based), the proof hashes, an empty line, the checkpoint note.
    pub fn tlog_proof(&self) -> String {
        let mut out = format!(
            "c2sp.org/tlog-proof@v1\nextra {}\nindex {}\n",
            B64.encode(&self.entry),
            self.index - 1
        );
        for h in &self.proof {
            out.push_str(&b64(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&text(&self.checkpoint));
        out
    }

    /// Parse a `tlog-proof@v1` made by [`Inclusion::tlog_proof`].
    pub fn parse_tlog_proof(s: &str) -> Result<Self, String> {
        let (head, note) = s
            .split_once("\n\n")
            .ok_or("not a tlog-proof: no empty line before the checkpoint")?;
        let mut lines = head.lines();
        if lines.next() != Some("c2sp.org/tlog-proof@v1") {
            return Err("not a tlog-proof: the first line is not c2sp.org/tlog-proof@v1".into());
        }
        let mut entry = None;
        let mut leaf = None;
        let mut proof = Vec::new();
        for line in lines {
            if let Some(e) = line.strip_prefix("extra ") {
                entry = Some(B64.decode(e).map_err(|_| "extra is not base64")?);
            } else if let Some(i) = line.strip_prefix("index ") {
                leaf = Some(i.parse::<u64>().map_err(|_| "index is not a number")?);
            } else {
                let h = B64
                    .decode(line)
                    .ok()
                    .and_then(|b| <Hash>::try_from(b).ok())
                    .ok_or("a proof line is not a base64 hash")?;
                proof.push(h);
            }
        }
        let leaf = leaf.ok_or("no index line")?;
        let checkpoint = note.as_bytes().to_vec();
        let size = signed_note::Note::from_bytes(&checkpoint)
            .ok()
            .and_then(|n| Checkpoint::parse(n.text()).ok())
            .ok_or("the checkpoint is not a signed checkpoint note")?
            .size;
        Ok(Self {
            index: leaf + 1,
            size,
            entry: entry.ok_or("no extra line with the entry")?,
            proof,
            checkpoint,
        })
    }
}

/// The inclusion proof of entry `index` against the checkpoint of `size` (default: the
/// newest).
pub fn prove(r: &Reader, index: u64, size: Option<u64>) -> Result<Inclusion, QueryError> {
    let head = r.audit_head()?.index;
    if index == 0 || index > head {
        return Err(QueryError::Range(format!(
            "entry {index} does not exist: the log holds entries 1 to {head}"
        )));
    }
    let (size, note) = checkpoint(r, size)?;
    if index > size {
        return Err(QueryError::Range(format!(
            "entry {index} is not covered by the checkpoint of size {size}; wait for the next checkpoint or sign one now (vvctl audit checkpoint --now)"
        )));
    }
    let entry = r
        .audit_range(index, 1)?
        .into_iter()
        .find(|(i, _)| *i == index)
        .map(|(_, line)| line)
        .ok_or(QueryError::Pruned)?;
    let proof = r.prove_entry(size, index)?;
    Ok(Inclusion {
        index,
        size,
        entry,
        proof,
        checkpoint: note,
    })
}

/// The consistency proof from the tree of `from` entries to the tree of `to` entries
/// (default: the newest checkpoint), with the checkpoints of those sizes where signed.
pub fn consistency(r: &Reader, from: u64, to: Option<u64>) -> Result<Value, QueryError> {
    let to = match to {
        Some(t) => t,
        None => checkpoint(r, None)?.0,
    };
    let head = r.audit_head()?.index;
    if from == 0 || from > to || to > head {
        return Err(QueryError::Range(format!(
            "no consistency proof from {from} to {to}: need 1 ≤ from ≤ to ≤ {head} (the log's size)"
        )));
    }
    let proof = r.prove_consistency(to, from)?;
    let note = |size| -> Result<Value, QueryError> {
        Ok(r.checkpoint_at(size)?
            .map_or(Value::Null, |n| Value::String(text(&n))))
    };
    Ok(json!({
        "from": from,
        "to": to,
        "from_root": b64(&r.tree_hash(from)?),
        "to_root": b64(&r.tree_hash(to)?),
        "proof": proof.iter().map(b64).collect::<Vec<_>>(),
        "from_checkpoint": note(from)?,
        "to_checkpoint": note(to)?,
    }))
}

/// Where the local log starts after pruning: `{"pruned_through":N,"pruned_hash":"hex",
/// "frontier":[b64…],"exported_through":M}` (what a verifier of the local log needs).
pub fn retention(r: &Reader) -> Result<Value, QueryError> {
    let ret = r.audit_retention()?;
    let frontier = r.frontier(ret.pruned_through)?;
    Ok(json!({
        "pruned_through": ret.pruned_through,
        "pruned_hash": if ret.pruned_through == 0 {
            String::new()
        } else {
            crate::ids::hex32(&ret.pruned_hash).to_string()
        },
        "frontier": frontier.nodes().iter().map(b64).collect::<Vec<_>>(),
        "exported_through": ret.exported_through,
    }))
}

/// The verifier's starting point from a [`retention`] answer (`None` for a whole log).
pub fn start_of(v: &Value) -> Option<(u64, vvgate_storage::tree::Frontier, String)> {
    let through = v["pruned_through"].as_u64().filter(|&t| t > 0)?;
    let nodes = v["frontier"]
        .as_array()?
        .iter()
        .map(|h| {
            B64.decode(h.as_str()?)
                .ok()
                .and_then(|b| <Hash>::try_from(b).ok())
        })
        .collect::<Option<Vec<_>>>()?;
    let frontier = vvgate_storage::tree::Frontier::from_parts(through, nodes)?;
    Some((through, frontier, v["pruned_hash"].as_str()?.to_owned()))
}
