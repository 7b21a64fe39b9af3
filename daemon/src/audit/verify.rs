//! The chain verifier (CONTRACT.md §6.5): entries in order, each checked for
//! `malformed_entry`, `entry_hash_mismatch`, `previous_hash_mismatch`, `index_mismatch` and
//! `seal_mismatch`. Works on any source of lines: the database, a JSONL export, stdin.

use crate::ids;
use crate::json::{canonicalize, Doc, Kind, Tape};

use super::encode_entry;

/// How to verify.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Upstream files repeat indexes at seals: skip `index_mismatch` and seal index checks.
    pub upstream: bool,
    /// Index of the first entry (1 for a whole log).
    pub first_index: Option<u64>,
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

/// Verify a sequence of entry lines (blank lines are skipped). Stops at the first break.
pub fn verify_lines<I, E>(lines: I, opts: VerifyOptions) -> Result<Verdict, E>
where
    I: IntoIterator<Item = Result<Vec<u8>, E>>,
{
    let mut tape = Tape::new();
    let (mut details, mut out, mut hash_buf, mut scratch) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prev: Option<(u64, String)> = None;
    let mut entries = 0u64;
    let first = opts.first_index.unwrap_or(1);
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
        prev = Some((e.index, e.entry_hash));
    }
    Ok(Verdict::Ok {
        entries,
        latest_hash: prev.map(|(_, h)| h).unwrap_or_default(),
    })
}
