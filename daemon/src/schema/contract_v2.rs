//! Steps 21–22: `attributes.contract_v2` (§4.6).
//!
//! Runs on the *sanitised* attributes: keys are matched after escaping and cutting (a later
//! colliding key wins), string limits, enums, patterns and date-times apply to the escaped
//! text. JSON types are strict: booleans must be JSON booleans, integers JSON integers,
//! `effectiveness_score` any JSON number.
//!
//! Order of checks (the first failure is reported): the blocks in declaration order
//! (`execution, asset, identity, ttp, detection, response, control`), each as missing → not
//! an object → its fields in declaration order (missing → JSON type → constraint; `ttp` ids:
//! pattern, then the catalogue) → its first unknown field → (`execution` only) lifecycle
//! transition, `completed_at` ≥ `started_at`, `failure_reason`; then the first unknown block.

use std::borrow::Cow;

use super::attrs::{overwritten, push_keys, TopAttrs, VALUE_MAX};
use super::check::{
    at, datetime_parsing, extra_forbidden, missing, model_type, pattern_mismatch, str_len,
    type_error, value_error,
};
use super::mitre::{is_subtechnique_id, is_tactic_id, is_technique_id};
use super::sanitize::{node_text, py_strip, sanitize_into};
use super::{parse_rfc3339, LocPart, PayloadError, PayloadPolicy, Scratch, Violation};
use crate::json::{Doc, Kind};

/// What a field accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str {
        min: usize,
        max: usize,
    },
    Lifecycle,
    DateTime,
    Bool,
    /// A JSON integer ≥ 0.
    Count,
    /// A JSON number in 0.0–1.0.
    Score,
    Technique,
    Tactic,
    Subtechnique,
}

/// Whether a field may be absent, and whether it may then be `null`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    /// May be absent or `null`.
    Optional,
    /// May be absent (it has a default) but not `null`.
    Defaulted,
}

struct Field {
    name: &'static str,
    ty: Ty,
    need: Need,
}

struct Block {
    name: &'static str,
    model: &'static str,
    fields: &'static [Field],
}

const fn f(name: &'static str, ty: Ty, need: Need) -> Field {
    Field { name, ty, need }
}

const fn s(min: usize, max: usize) -> Ty {
    Ty::Str { min, max }
}

use Need::{Defaulted, Optional, Required};

/// Most fields of any block.
const MAX_FIELDS: usize = 7;

const BLOCKS: [Block; 7] = [
    Block {
        name: "execution",
        model: "ExecutionMetadataV2",
        fields: &[
            f("execution_id", s(1, 128), Required),
            f("lifecycle_state", Ty::Lifecycle, Required),
            f("previous_lifecycle_state", Ty::Lifecycle, Optional),
            f("started_at", Ty::DateTime, Required),
            f("completed_at", Ty::DateTime, Optional),
            f("failure_reason", s(0, 1024), Optional),
            f("correlation_id", s(0, 128), Optional),
        ],
    },
    Block {
        name: "asset",
        model: "AssetMetadataV2",
        fields: &[
            f("asset_id", s(1, 128), Required),
            f("asset_ref", s(1, 512), Required),
            f("hostname", s(0, 255), Optional),
            f("ip_address", s(0, 64), Optional),
            f("platform", s(0, 64), Optional),
            f("environment", s(0, 64), Optional),
        ],
    },
    Block {
        name: "identity",
        model: "IdentityMetadataV2",
        fields: &[
            f("principal_id", s(1, 256), Required),
            f("principal_type", s(1, 64), Required),
            f("privilege_level", s(1, 64), Required),
            f("account_domain", s(0, 255), Optional),
        ],
    },
    Block {
        name: "ttp",
        model: "TTPMetadataV2",
        fields: &[
            f("technique_id", Ty::Technique, Required),
            f("tactic_id", Ty::Tactic, Required),
            f("subtechnique_id", Ty::Subtechnique, Optional),
            f("procedure", s(0, 1024), Optional),
        ],
    },
    Block {
        name: "detection",
        model: "DetectionMetadataV2",
        fields: &[
            f("detected", Ty::Bool, Required),
            f("detection_source", s(0, 128), Optional),
            f("detection_latency_seconds", Ty::Count, Optional),
            f("alert_id", s(0, 256), Optional),
            f("alert_severity", s(0, 32), Optional),
        ],
    },
    Block {
        name: "response",
        model: "ResponseMetadataV2",
        fields: &[
            f("responded", Ty::Bool, Required),
            f("response_action", s(0, 256), Optional),
            f("response_latency_seconds", Ty::Count, Optional),
            f("contained", Ty::Bool, Defaulted),
            f("containment_latency_seconds", Ty::Count, Optional),
        ],
    },
    Block {
        name: "control",
        model: "ControlMetadataV2",
        fields: &[
            f("control_id", s(1, 128), Required),
            f("control_type", s(1, 64), Required),
            f("control_vendor", s(0, 128), Optional),
            f("control_version", s(0, 64), Optional),
            f("effectiveness_score", Ty::Score, Optional),
        ],
    },
];

const LIFECYCLE: [&str; 7] = [
    "planned",
    "queued",
    "dispatched",
    "running",
    "succeeded",
    "failed",
    "canceled",
];

/// Allowed `previous → current` transitions, by `LIFECYCLE` index.
fn transition_allowed(previous: usize, current: usize) -> bool {
    let allowed: &[usize] = match previous {
        0 => &[1, 6],    // planned → queued | canceled
        1 => &[2, 6],    // queued → dispatched | canceled
        2 => &[3, 5, 6], // dispatched → running | failed | canceled
        3 => &[4, 5, 6], // running → succeeded | failed | canceled
        _ => &[],        // succeeded, failed, canceled are final
    };
    allowed.contains(&current)
}

/// Steps 21–22 for the sanitised top-level attributes described by `top`.
pub(super) fn check(
    doc: &Doc<'_>,
    top: &TopAttrs,
    policy: PayloadPolicy<'_>,
    scratch: &mut Scratch,
) -> Result<(), PayloadError> {
    let Some(sv) = top.schema_version.filter(|&v| doc.kind(v) == Kind::Str) else {
        return Ok(());
    };
    if !py_strip(sanitized(doc, sv, scratch)).starts_with("2.") {
        return Ok(());
    }
    let Some(cv) = top.contract_v2.filter(|&v| doc.kind(v) == Kind::Obj) else {
        return Err(PayloadError::ContractV2NotObject);
    };
    validate(doc, cv, policy, scratch).map_err(PayloadError::ContractV2)
}

/// The sanitised text of string node `i` (escaped, cut to 2048), in `scratch.text2`.
fn sanitized<'s>(doc: &Doc<'_>, i: usize, scratch: &'s mut Scratch) -> &'s str {
    let Scratch { text, text2, .. } = scratch;
    sanitize_into(node_text(doc, i, text), VALUE_MAX, text2);
    text2
}

/// The value nodes of the sanitised object `obj` for `names` (in `names` order), and the
/// sanitised key of its first unknown member (insertion order, as pydantic reports it).
fn members(
    doc: &Doc<'_>,
    obj: usize,
    names: impl Fn(&str) -> Option<usize>,
    scratch: &mut Scratch,
) -> ([Option<usize>; MAX_FIELDS], Option<String>) {
    let range = push_keys(doc, obj, scratch);
    let mut found = [None; MAX_FIELDS];
    let mut extra: Option<usize> = None;
    for j in range.clone() {
        let (key, node) = (&scratch.keys[j].0, scratch.keys[j].1);
        match names(key) {
            Some(p) if !overwritten(scratch, j, &range) => found[p] = Some(node + 1),
            Some(_) => {}
            None => {
                if extra.is_none_or(|e| scratch.keys[e].1 > node) {
                    extra = Some(j);
                }
            }
        }
    }
    let extra = extra.map(|e| scratch.keys[e].0.clone());
    scratch.keys_used = range.start;
    (found, extra)
}

fn validate(
    doc: &Doc<'_>,
    obj: usize,
    policy: PayloadPolicy<'_>,
    scratch: &mut Scratch,
) -> Result<(), Violation> {
    let (blocks, extra) = members(
        doc,
        obj,
        |k| BLOCKS.iter().position(|b| b.name == k),
        scratch,
    );
    for (block, value) in BLOCKS.iter().zip(blocks) {
        let here = LocPart::Key(Cow::Borrowed(block.name));
        let b = value.ok_or_else(|| missing(block.name))?;
        if doc.kind(b) != Kind::Obj {
            return Err(model_type(block.model, [here]));
        }
        check_block(doc, b, block, policy, scratch).map_err(|v| v.under(here))?;
    }
    match extra {
        Some(k) => Err(extra_forbidden(&k)),
        None => Ok(()),
    }
}

fn check_block(
    doc: &Doc<'_>,
    obj: usize,
    block: &Block,
    policy: PayloadPolicy<'_>,
    scratch: &mut Scratch,
) -> Result<(), Violation> {
    let (values, extra) = members(
        doc,
        obj,
        |k| block.fields.iter().position(|f| f.name == k),
        scratch,
    );
    for (field, &value) in block.fields.iter().zip(&values) {
        check_field(doc, value, field, policy, scratch)?;
    }
    if let Some(k) = extra {
        return Err(extra_forbidden(&k));
    }
    if block.name == "execution" {
        check_execution(doc, &values, scratch)?;
    }
    Ok(())
}

fn check_field(
    doc: &Doc<'_>,
    value: Option<usize>,
    field: &Field,
    policy: PayloadPolicy<'_>,
    scratch: &mut Scratch,
) -> Result<(), Violation> {
    let name = field.name;
    let Some(v) = value else {
        return match field.need {
            Required => Err(missing(name)),
            Optional | Defaulted => Ok(()),
        };
    };
    let kind = doc.kind(v);
    if kind == Kind::Null && field.need == Optional {
        return Ok(());
    }
    match field.ty {
        Ty::Bool if kind != Kind::Bool => Err(type_error("bool_type", name)),
        Ty::Bool => Ok(()),
        Ty::Count if kind != Kind::Int => Err(type_error("int_type", name)),
        Ty::Count if doc.raw(v).starts_with('-') && doc.raw(v) != "-0" => Err(Violation::new(
            "greater_than_equal",
            at(name),
            "Input should be greater than or equal to 0",
        )),
        Ty::Count => Ok(()),
        Ty::Score => match doc.as_f64(v) {
            None => Err(type_error("float_type", name)),
            Some(x) if x < 0.0 => Err(Violation::new(
                "greater_than_equal",
                at(name),
                "Input should be greater than or equal to 0",
            )),
            Some(x) if x > 1.0 => Err(Violation::new(
                "less_than_equal",
                at(name),
                "Input should be less than or equal to 1",
            )),
            Some(_) => Ok(()),
        },
        Ty::DateTime if kind != Kind::Str => Err(type_error("datetime_type", name)),
        Ty::DateTime => parse_rfc3339(sanitized(doc, v, scratch))
            .map(|_| ())
            .ok_or_else(|| datetime_parsing(name)),
        Ty::Lifecycle => {
            if kind == Kind::Str && lifecycle(sanitized(doc, v, scratch)).is_some() {
                Ok(())
            } else {
                Err(Violation::new(
                    "enum",
                    at(name),
                    "Input should be 'planned', 'queued', 'dispatched', 'running', \
                     'succeeded', 'failed' or 'canceled'",
                ))
            }
        }
        _ if kind != Kind::Str => Err(type_error("string_type", name)),
        Ty::Str { min, max } => str_len(sanitized(doc, v, scratch).chars().count(), min, max, name),
        Ty::Technique | Ty::Tactic | Ty::Subtechnique => {
            check_ttp_id(sanitized(doc, v, scratch), field, policy)
        }
    }
}

/// `ttp` ids: the pattern (ASCII digits), then the catalogue when one is enforced.
fn check_ttp_id(id: &str, field: &Field, policy: PayloadPolicy<'_>) -> Result<(), Violation> {
    let (well_formed, pattern) = match field.ty {
        Ty::Technique => (is_technique_id(id), r"^T\d{4}(?:\.\d{3})?$"),
        Ty::Tactic => (is_tactic_id(id), r"^TA\d{4}$"),
        _ => (is_subtechnique_id(id), r"^T\d{4}\.\d{3}$"),
    };
    if !well_formed {
        return Err(pattern_mismatch(field.name, pattern));
    }
    let known = policy.catalogue.is_none_or(|c| match field.ty {
        Ty::Tactic => c.is_tactic(id),
        _ => c.is_technique(id),
    });
    if !known {
        return Err(value_error(
            at(field.name),
            format!("unknown MITRE ATT&CK identifier {id}"),
        ));
    }
    Ok(())
}

fn lifecycle(s: &str) -> Option<usize> {
    LIFECYCLE.iter().position(|l| *l == s)
}

/// The `execution` model validator (its fields already passed). `values` follows the field
/// order of `BLOCKS[0]`.
fn check_execution(
    doc: &Doc<'_>,
    values: &[Option<usize>; MAX_FIELDS],
    scratch: &mut Scratch,
) -> Result<(), Violation> {
    let present = |i: usize| values[i].filter(|&v| doc.kind(v) != Kind::Null);
    let fail = |msg: Cow<'static, str>| value_error([], msg);
    let state = |i: usize, scratch: &mut Scratch| {
        present(i).and_then(|v| lifecycle(sanitized(doc, v, scratch)))
    };
    let current = state(1, scratch).unwrap_or(0);
    if let Some(previous) = state(2, scratch) {
        if !transition_allowed(previous, current) {
            return Err(fail(Cow::Owned(format!(
                "Invalid execution lifecycle transition: {} -> {}",
                LIFECYCLE[previous], LIFECYCLE[current]
            ))));
        }
    }
    let time = |i: usize, scratch: &mut Scratch| {
        present(i).and_then(|v| parse_rfc3339(sanitized(doc, v, scratch)))
    };
    if let (Some(started), Some(completed)) = (time(3, scratch), time(4, scratch)) {
        if completed.cmp_instant(&started).is_lt() {
            return Err(fail(Cow::Borrowed(
                "execution.completed_at cannot be earlier than execution.started_at",
            )));
        }
    }
    let has_reason = present(5).is_some_and(|v| !sanitized(doc, v, scratch).is_empty());
    if has_reason && LIFECYCLE[current] != "failed" {
        return Err(fail(Cow::Borrowed(
            "execution.failure_reason is allowed only when lifecycle_state=failed",
        )));
    }
    Ok(())
}
