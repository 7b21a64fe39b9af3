//! Strict JSON reading into a reusable tape, and canonical JSON (CJSON) writing.
//!
//! Why not serde_json: the contract (CONTRACT.md §1.2, §4.7) needs things serde_json does not
//! give without a fight: duplicate keys refused at every depth, a nesting limit of 64, integers
//! of any magnitude written back digit for digit, floats written in Python `repr` form, and no
//! allocation per request (the tape and scratch buffers live on the connection and are reused).
//! The parser is small, has no `unsafe`, and is a fuzz target.
//!
//! A parsed document is a [`Tape`]: a flat list of [`Node`]s in document order. Containers
//! record how many children they have and the index just past their subtree, so walking and
//! skipping are O(1) per step. Strings keep their raw span in the source; escapes are decoded
//! only when a caller asks.

mod parse;
mod write;

pub use parse::{Doc, JsonError, Kind, Node, StrChars, Tape};
pub use write::{
    canonicalize, canonicalize_doc, float_repr, write_escaped, write_i64, write_str, write_u64,
    write_u64_padded, Cjson,
};
pub(crate) use write::{write_chars, write_str_node};

#[cfg(test)]
mod tests;
