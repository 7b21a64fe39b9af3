//! Step 17: the top-level request schema (§4.1, §4.2).
//!
//! Order of checks (the first failure is reported): the root is an object; then each field in
//! declaration order `operator_id, campaign_id, tenant_id, execution_hash, timestamp, nonce,
//! signed_metadata, payload`, each as missing → JSON type → length/pattern (inside
//! `signed_metadata`: its own fields `tenant_id, operator_id, campaign_id`, then its unknown
//! fields); then the first unknown top-level field in document order.

use std::borrow::Cow;

use super::check::{
    extra_key, missing, model_type, pattern_mismatch, required_str, slots, str_len, type_error,
};
use super::sanitize::py_strip;
use super::{LocPart, SchemaVersion, SignedMetadata, TelemetryRequest, Violation};
use crate::json::{Doc, Kind};

const FIELDS: [&str; 8] = [
    "operator_id",
    "campaign_id",
    "tenant_id",
    "execution_hash",
    "timestamp",
    "nonce",
    "signed_metadata",
    "payload",
];

const META_FIELDS: [&str; 3] = ["tenant_id", "operator_id", "campaign_id"];

const TENANT_PATTERN: &str = "^[a-fA-F0-9-]{36}$";

/// Validate the top level of a telemetry body (step 17).
pub fn parse_request<'a>(doc: &Doc<'a>) -> Result<TelemetryRequest<'a>, Violation> {
    let root = Doc::ROOT;
    if doc.kind(root) != Kind::Obj {
        return Err(model_type("TelemetryIngestRequest", []));
    }
    let ([op, camp, tenant, exec, ts, nonce, meta, payload], extra) = slots(doc, root, &FIELDS);
    let operator_id = bounded_str(doc, op, "operator_id", 1, 128)?;
    let campaign_id = bounded_str(doc, camp, "campaign_id", 1, 128)?;
    let tenant_id = tenant_str(doc, tenant, "tenant_id")?;
    let execution_hash = bounded_str(doc, exec, "execution_hash", 64, 64)?;
    let timestamp = match ts {
        None => return Err(missing("timestamp")),
        Some(i) if doc.kind(i) == Kind::Int => match doc.raw(i) {
            "-0" => "0",
            raw => raw,
        },
        Some(_) => return Err(type_error("int_type", "timestamp")),
    };
    let nonce = bounded_str(doc, nonce, "nonce", 8, 128)?;
    let signed_metadata = signed_metadata(doc, meta)?;
    let payload = match payload {
        None => return Err(missing("payload")),
        Some(i) if doc.kind(i) == Kind::Obj => i,
        Some(_) => return Err(type_error("dict_type", "payload")),
    };
    if let Some(k) = extra {
        return Err(extra_key(doc, k));
    }
    Ok(TelemetryRequest {
        operator_id,
        campaign_id,
        tenant_id,
        execution_hash,
        timestamp,
        nonce,
        signed_metadata,
        payload,
    })
}

fn signed_metadata<'a>(
    doc: &Doc<'a>,
    slot: Option<usize>,
) -> Result<SignedMetadata<'a>, Violation> {
    const HERE: LocPart = LocPart::Key(Cow::Borrowed("signed_metadata"));
    let obj = slot.ok_or_else(|| missing("signed_metadata"))?;
    if doc.kind(obj) != Kind::Obj {
        return Err(model_type("SignedTenantMetadata", [HERE]));
    }
    let inner = || -> Result<SignedMetadata<'a>, Violation> {
        let ([tenant, op, camp], extra) = slots(doc, obj, &META_FIELDS);
        let tenant_id = tenant_str(doc, tenant, "tenant_id")?;
        let operator_id = bounded_str(doc, op, "operator_id", 1, 128)?;
        let campaign_id = bounded_str(doc, camp, "campaign_id", 1, 128)?;
        if let Some(k) = extra {
            return Err(extra_key(doc, k));
        }
        Ok(SignedMetadata {
            tenant_id,
            operator_id,
            campaign_id,
        })
    };
    inner().map_err(|v| v.under(HERE))
}

/// A required JSON string of `min..=max` characters.
pub(super) fn bounded_str<'a>(
    doc: &Doc<'a>,
    slot: Option<usize>,
    field: &'static str,
    min: usize,
    max: usize,
) -> Result<Cow<'a, str>, Violation> {
    let i = required_str(doc, slot, field)?;
    str_len(doc.char_len(i), min, max, field)?;
    Ok(doc.str(i))
}

/// A required JSON string matching `^[a-fA-F0-9-]{36}$`.
pub(super) fn tenant_str<'a>(
    doc: &Doc<'a>,
    slot: Option<usize>,
    field: &'static str,
) -> Result<Cow<'a, str>, Violation> {
    let i = required_str(doc, slot, field)?;
    let allowed = |c: char| c.is_ascii_hexdigit() || c == '-';
    let ok = if doc.node(i).flag {
        let mut n = 0usize;
        doc.chars(i).all(|c| {
            n += 1;
            allowed(c)
        }) && n == 36
    } else {
        // Without escapes the characters are the raw bytes, all ASCII when they match.
        let raw = doc.raw(i);
        raw.len() == 36 && raw.bytes().all(|b| allowed(char::from(b)))
    };
    if !ok {
        return Err(pattern_mismatch(field, TENANT_PATTERN));
    }
    Ok(doc.str(i))
}

pub(super) fn schema_version<'a>(doc: &Doc<'a>, payload: usize) -> SchemaVersion<'a> {
    if doc.kind(payload) != Kind::Obj {
        return SchemaVersion::Missing;
    }
    let Some(attrs) = doc.get(payload, "attributes") else {
        return SchemaVersion::Missing;
    };
    if doc.kind(attrs) != Kind::Obj {
        return SchemaVersion::Missing;
    }
    let Some(v) = doc.get(attrs, "schema_version") else {
        return SchemaVersion::Missing;
    };
    if doc.kind(v) != Kind::Str {
        return SchemaVersion::NotString;
    }
    SchemaVersion::Value(match doc.str(v) {
        Cow::Borrowed(s) => Cow::Borrowed(py_strip(s)),
        Cow::Owned(s) => Cow::Owned(py_strip(&s).to_owned()),
    })
}
