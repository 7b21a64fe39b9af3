//! `attributes`, sanitised recursively (§4.4) and written straight into CJSON.
//!
//! Object keys are escaped and cut to 80 characters, then sorted by code point on the
//! `Scratch` key stack; when two keys collide after cutting, the later one (document order)
//! wins, but the earlier value is still injection-checked, as upstream sanitises it before
//! overwriting it. String values are injection-checked on the raw text, then escaped and cut
//! to 2048 characters. Numbers, booleans and null are copied in canonical form.

use std::ops::Range;

use super::sanitize::{injection_detected, node_text, sanitize_into, write_sanitized};
use super::Scratch;
use crate::json::{float_repr, write_str, Doc, Kind};

/// Longest sanitised object key.
pub(super) const KEY_MAX: usize = 80;
/// Longest sanitised string value inside `attributes`.
pub(super) const VALUE_MAX: usize = 2048;

/// A string somewhere in the value matched an injection pattern.
pub(super) struct Injection;

/// Value nodes of top-level attributes that later checks read, chosen by *sanitised* key
/// after collisions are resolved.
#[derive(Default)]
pub(super) struct TopAttrs {
    pub(super) attestation: Option<usize>,
    pub(super) schema_version: Option<usize>,
    pub(super) contract_v2: Option<usize>,
}

/// Push the sanitised keys of object `obj` onto the key stack, sorted by key and then by
/// document order. Pop with `scratch.keys_used = range.start`.
pub(super) fn push_keys(doc: &Doc<'_>, obj: usize, scratch: &mut Scratch) -> Range<usize> {
    let Scratch {
        text,
        keys,
        keys_used,
        ..
    } = scratch;
    let base = *keys_used;
    for (k, _) in doc.members(obj) {
        let raw = node_text(doc, k, text);
        if *keys_used == keys.len() {
            keys.push((String::new(), 0));
        }
        let slot = &mut keys[*keys_used];
        sanitize_into(raw, KEY_MAX, &mut slot.0);
        slot.1 = k;
        *keys_used += 1;
    }
    let range = base..*keys_used;
    keys[range.clone()].sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    range
}

/// Whether stack entry `j` of `range` is overwritten by a later colliding key.
pub(super) fn overwritten(scratch: &Scratch, j: usize, range: &Range<usize>) -> bool {
    j + 1 < range.end && scratch.keys[j].0 == scratch.keys[j + 1].0
}

/// Write the sanitised top-level attributes object `obj`.
pub(super) fn write_attributes(
    doc: &Doc<'_>,
    obj: usize,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<TopAttrs, Injection> {
    let mut top = TopAttrs::default();
    write_object(doc, obj, scratch, out, Some(&mut top))?;
    Ok(top)
}

fn write_object(
    doc: &Doc<'_>,
    obj: usize,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
    mut top: Option<&mut TopAttrs>,
) -> Result<(), Injection> {
    let range = push_keys(doc, obj, scratch);
    out.push(b'{');
    let mut first = true;
    for j in range.clone() {
        let value = scratch.keys[j].1 + 1;
        if overwritten(scratch, j, &range) {
            check_value(doc, value, scratch)?;
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let key = scratch.keys[j].0.as_str();
        write_str(out, key);
        out.push(b':');
        if let Some(t) = top.as_deref_mut() {
            match key {
                "attestation_measurement_hash" => t.attestation = Some(value),
                "schema_version" => t.schema_version = Some(value),
                "contract_v2" => t.contract_v2 = Some(value),
                _ => {}
            }
        }
        write_value(doc, value, scratch, out)?;
    }
    out.push(b'}');
    scratch.keys_used = range.start;
    Ok(())
}

fn write_value(
    doc: &Doc<'_>,
    i: usize,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<(), Injection> {
    match doc.kind(i) {
        Kind::Null => out.extend_from_slice(b"null"),
        Kind::Bool => out.extend_from_slice(if doc.node(i).flag { b"true" } else { b"false" }),
        Kind::Int => write_int(out, doc.raw(i)),
        Kind::Float => float_repr(out, doc.as_f64(i).unwrap_or(0.0)),
        Kind::Str => {
            let t = node_text(doc, i, &mut scratch.text);
            if injection_detected(t) {
                return Err(Injection);
            }
            write_sanitized(out, t, VALUE_MAX);
        }
        Kind::Arr => {
            out.push(b'[');
            for (n, e) in doc.elements(i).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_value(doc, e, scratch, out)?;
            }
            out.push(b']');
        }
        Kind::Obj => write_object(doc, i, scratch, out, None)?,
    }
    Ok(())
}

/// Injection-check every string value under node `i` (keys are not checked).
fn check_value(doc: &Doc<'_>, i: usize, scratch: &mut Scratch) -> Result<(), Injection> {
    match doc.kind(i) {
        Kind::Str => {
            if injection_detected(node_text(doc, i, &mut scratch.text)) {
                return Err(Injection);
            }
        }
        Kind::Arr => {
            for e in doc.elements(i) {
                check_value(doc, e, scratch)?;
            }
        }
        Kind::Obj => {
            for (_, v) in doc.members(i) {
                check_value(doc, v, scratch)?;
            }
        }
        Kind::Null | Kind::Bool | Kind::Int | Kind::Float => {}
    }
    Ok(())
}

/// A JSON integer token in canonical decimal (`-0` becomes `0`).
pub(super) fn write_int(out: &mut Vec<u8>, raw: &str) {
    out.extend_from_slice(if raw == "-0" { b"0" } else { raw.as_bytes() });
}
