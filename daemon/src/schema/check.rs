//! Field-level helpers shared by the models: member lookup and pydantic-style violations.
//!
//! Every model is checked the way pydantic reports its errors, and the first one is kept:
//! fields in declaration order (missing, wrong JSON type, then constraints), then unknown
//! fields (`extra_forbidden`), then the model's own validator.

use std::borrow::Cow;

use super::{LocPart, Violation};
use crate::json::{Doc, Kind};

/// The value nodes of the members of `obj` named in `names` (in `names` order), and the key
/// node of the first member (document order) whose key is not in `names`.
pub(super) fn slots<const N: usize>(
    doc: &Doc<'_>,
    obj: usize,
    names: &[&str; N],
) -> ([Option<usize>; N], Option<usize>) {
    let mut found = [None; N];
    let mut extra = None;
    for (k, v) in doc.members(obj) {
        let pos = if doc.node(k).flag {
            names.iter().position(|n| doc.str_eq(k, n))
        } else {
            let raw = doc.raw(k);
            names.iter().position(|n| *n == raw)
        };
        match pos {
            Some(p) => found[p] = Some(v),
            None => {
                extra.get_or_insert(k);
            }
        }
    }
    (found, extra)
}

pub(super) fn at(field: &'static str) -> [LocPart; 1] {
    [LocPart::from(field)]
}

pub(super) fn missing(field: &'static str) -> Violation {
    Violation::new("missing", at(field), "Field required")
}

/// `extra_forbidden` at key `key` (an owned copy: only built on the error path).
pub(super) fn extra_forbidden(key: &str) -> Violation {
    Violation::new(
        "extra_forbidden",
        [LocPart::Key(Cow::Owned(key.to_owned()))],
        "Extra inputs are not permitted",
    )
}

/// `extra_forbidden` for key node `k` of `doc`.
pub(super) fn extra_key(doc: &Doc<'_>, k: usize) -> Violation {
    extra_forbidden(&doc.str(k))
}

/// A JSON value of the wrong type. `kind` is one of the pydantic type error names below.
pub(super) fn type_error(kind: &'static str, field: &'static str) -> Violation {
    let msg = match kind {
        "string_type" => "Input should be a valid string",
        "int_type" => "Input should be a valid integer",
        "bool_type" => "Input should be a valid boolean",
        "float_type" => "Input should be a valid number",
        "list_type" => "Input should be a valid list",
        "dict_type" => "Input should be a valid dictionary",
        "datetime_type" => "Input should be a valid datetime",
        _ => "Input has the wrong type",
    };
    Violation::new(kind, at(field), msg)
}

/// A nested model given something other than an object.
pub(super) fn model_type(model: &'static str, loc: impl IntoIterator<Item = LocPart>) -> Violation {
    Violation::new(
        "model_type",
        loc,
        format!("Input should be a valid dictionary or instance of {model}"),
    )
}

/// The string node of a required field.
pub(super) fn required_str(
    doc: &Doc<'_>,
    slot: Option<usize>,
    field: &'static str,
) -> Result<usize, Violation> {
    let i = slot.ok_or_else(|| missing(field))?;
    if doc.kind(i) == Kind::Str {
        Ok(i)
    } else {
        Err(type_error("string_type", field))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `min ≤ len ≤ max` for a string of `len` characters.
pub(super) fn str_len(
    len: usize,
    min: usize,
    max: usize,
    field: &'static str,
) -> Result<(), Violation> {
    if len < min {
        return Err(Violation::new(
            "string_too_short",
            at(field),
            format!("String should have at least {min} character{}", plural(min)),
        ));
    }
    if len > max {
        return Err(Violation::new(
            "string_too_long",
            at(field),
            format!("String should have at most {max} character{}", plural(max)),
        ));
    }
    Ok(())
}

/// `min ≤ len ≤ max` for a list of `len` items.
pub(super) fn list_len(
    len: usize,
    min: usize,
    max: usize,
    field: &'static str,
) -> Result<(), Violation> {
    if len < min {
        return Err(Violation::new(
            "too_short",
            at(field),
            format!(
                "List should have at least {min} item{} after validation, not {len}",
                plural(min)
            ),
        ));
    }
    if len > max {
        return Err(Violation::new(
            "too_long",
            at(field),
            format!(
                "List should have at most {max} item{} after validation, not {len}",
                plural(max)
            ),
        ));
    }
    Ok(())
}

pub(super) fn pattern_mismatch(field: &'static str, pattern: &'static str) -> Violation {
    Violation::new(
        "string_pattern_mismatch",
        at(field),
        format!("String should match pattern '{pattern}'"),
    )
}

/// A validator's `ValueError` (message without pydantic's `Value error, ` prefix).
pub(super) fn value_error(
    loc: impl IntoIterator<Item = LocPart>,
    msg: impl Into<Cow<'static, str>>,
) -> Violation {
    Violation::new("value_error", loc, msg)
}

/// A string that is not an acceptable date-time.
pub(super) fn datetime_parsing(field: &'static str) -> Violation {
    Violation::new(
        "datetime_parsing",
        at(field),
        "Input should be a valid datetime, expected YYYY-MM-DDTHH:MM:SS[.f](Z|+HH:MM|-HH:MM)",
    )
}
