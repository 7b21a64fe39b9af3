//! Step 20: the canonical payload (§4.3–§4.5), written normalised as CJSON; steps 21–22 via
//! `contract_v2`.
//!
//! Order of checks (the first failure is reported), as pydantic orders its errors:
//! 1. fields in declaration order: `event_id, event_type, source_system, severity,
//!    observed_at, mitre_techniques, mitre_tactics, description, attributes`, each as
//!    missing → JSON type → length → pattern/validator. For the MITRE lists: list type, item
//!    count, each item's type, then every item's format (empty → "non-empty strings", then
//!    the pattern), then (vvgate) every item's catalogue lookup;
//! 2. the first unknown field (document order);
//! 3. the model validator: injection check of a non-empty `description`, then sanitising
//!    `attributes` (injection check of every string value), then
//!    `attestation_measurement_hash`;
//! 4. steps 21–22 (`contract_v2`).

use super::attrs::{write_attributes, TopAttrs, VALUE_MAX};
use super::check::{
    at, datetime_parsing, extra_key, list_len, missing, pattern_mismatch, required_str, slots,
    str_len, type_error, value_error,
};
use super::mitre::{is_tactic_id, is_technique_id, normalise_id};
use super::parse_rfc3339;
use super::sanitize::{injection_detected, node_text, py_strip, sanitize_into, write_sanitized};
use super::{
    contract_v2, DateTime, LocPart, PayloadError, PayloadInfo, PayloadPolicy, Scratch, Violation,
};
use crate::json::{write_str, write_str_node, Doc, Kind};

const FIELDS: [&str; 9] = [
    "event_id",
    "event_type",
    "source_system",
    "severity",
    "observed_at",
    "mitre_techniques",
    "mitre_tactics",
    "description",
    "attributes",
];

const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];
const ID_PATTERN: &str = "^[A-Za-z0-9._:-]+$";
const MITRE_MAX: usize = 32;

pub(super) const INJECTION: &str = "Potential injection pattern detected";
const ATTESTATION: &str = "attributes.attestation_measurement_hash must be 64-char sha256 hex";

/// The fields that passed their field-level checks.
struct Fields {
    event_id: usize,
    event_type: usize,
    source_system: usize,
    severity: &'static str,
    observed_at: DateTime,
    techniques: usize,
    tactics: Option<usize>,
    description: Option<usize>,
    attributes: Option<usize>,
}

/// Validate and normalise payload node `payload`, appending its CJSON to `out`.
/// On error `out` may hold a partial write; the caller truncates it.
pub fn normalise_payload<'a>(
    doc: &Doc<'a>,
    payload: usize,
    policy: PayloadPolicy<'_>,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<PayloadInfo<'a>, PayloadError> {
    scratch.keys_used = 0;
    let f = check_fields(doc, payload, policy, scratch).map_err(PayloadError::Canonical)?;
    let canonical = |msg: &'static str| PayloadError::Canonical(value_error([], msg));

    if let Some(d) = f.description {
        let t = node_text(doc, d, &mut scratch.text);
        if !t.is_empty() && injection_detected(t) {
            return Err(canonical(INJECTION));
        }
    }
    out.extend_from_slice(b"{\"attributes\":");
    let top = match f.attributes {
        Some(a) => write_attributes(doc, a, scratch, out).map_err(|_| canonical(INJECTION))?,
        None => {
            out.extend_from_slice(b"{}");
            TopAttrs::default()
        }
    };
    if !attestation_ok(doc, top.attestation, scratch) {
        return Err(canonical(ATTESTATION));
    }

    out.extend_from_slice(b",\"description\":");
    match f.description {
        // A non-empty description is escaped (not cut); `""` stays `""`.
        Some(d) => write_sanitized(out, node_text(doc, d, &mut scratch.text), usize::MAX),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"event_id\":");
    write_str_node(doc, f.event_id, out);
    out.extend_from_slice(b",\"event_type\":");
    write_str_node(doc, f.event_type, out);
    out.extend_from_slice(b",\"mitre_tactics\":");
    match f.tactics {
        Some(t) => write_mitre(doc, t, scratch, out),
        None => out.extend_from_slice(b"[]"),
    }
    out.extend_from_slice(b",\"mitre_techniques\":");
    write_mitre(doc, f.techniques, scratch, out);
    out.extend_from_slice(b",\"observed_at\":\"");
    f.observed_at.write_upstream(out);
    out.extend_from_slice(b"\",\"severity\":");
    write_str(out, f.severity);
    out.extend_from_slice(b",\"source_system\":");
    write_str_node(doc, f.source_system, out);
    out.push(b'}');

    contract_v2::check(doc, &top, policy, scratch)?;
    Ok(PayloadInfo {
        event_id: doc.str(f.event_id),
    })
}

fn check_fields(
    doc: &Doc<'_>,
    payload: usize,
    policy: PayloadPolicy<'_>,
    scratch: &mut Scratch,
) -> Result<Fields, Violation> {
    let ([eid, etype, source, sev, observed, techs, tacs, desc, attrs], extra) =
        slots(doc, payload, &FIELDS);
    let event_id = id_str(doc, eid, "event_id", 128)?;
    let event_type = id_str(doc, etype, "event_type", 64)?;
    let source_system = id_str(doc, source, "source_system", 64)?;

    let sev = required_str(doc, sev, "severity")?;
    str_len(doc.char_len(sev), 2, 16, "severity")?;
    let trimmed = py_strip(node_text(doc, sev, &mut scratch.text));
    let severity = SEVERITIES
        .into_iter()
        .find(|s| s.eq_ignore_ascii_case(trimmed))
        .ok_or_else(|| {
            value_error(
                at("severity"),
                "severity must be one of info|low|medium|high|critical",
            )
        })?;

    let observed = observed.ok_or_else(|| missing("observed_at"))?;
    if doc.kind(observed) != Kind::Str {
        return Err(type_error("datetime_type", "observed_at"));
    }
    let observed_at = parse_rfc3339(node_text(doc, observed, &mut scratch.text))
        .ok_or_else(|| datetime_parsing("observed_at"))?;

    let techniques = techs.ok_or_else(|| missing("mitre_techniques"))?;
    check_mitre(doc, techniques, false, policy, scratch)?;
    if let Some(t) = tacs {
        check_mitre(doc, t, true, policy, scratch)?;
    }

    let description = match desc {
        Some(d) if doc.kind(d) == Kind::Null => None,
        Some(d) if doc.kind(d) == Kind::Str => {
            str_len(doc.char_len(d), 0, 2048, "description")?;
            Some(d)
        }
        Some(_) => return Err(type_error("string_type", "description")),
        None => None,
    };
    let attributes = match attrs {
        Some(a) if doc.kind(a) == Kind::Obj => Some(a),
        Some(_) => return Err(type_error("dict_type", "attributes")),
        None => None,
    };
    if let Some(k) = extra {
        return Err(extra_key(doc, k));
    }
    Ok(Fields {
        event_id,
        event_type,
        source_system,
        severity,
        observed_at,
        techniques,
        tactics: tacs,
        description,
        attributes,
    })
}

/// A required string of `1..=max` characters matching `^[A-Za-z0-9._:-]+$`.
fn id_str(
    doc: &Doc<'_>,
    slot: Option<usize>,
    field: &'static str,
    max: usize,
) -> Result<usize, Violation> {
    let i = required_str(doc, slot, field)?;
    str_len(doc.char_len(i), 1, max, field)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    let ok = if doc.node(i).flag {
        doc.chars(i).all(allowed)
    } else {
        doc.raw(i).chars().all(allowed)
    };
    if !ok {
        return Err(pattern_mismatch(field, ID_PATTERN));
    }
    Ok(i)
}

/// `mitre_techniques` (`tactics == false`) or `mitre_tactics` (§4.5).
fn check_mitre(
    doc: &Doc<'_>,
    list: usize,
    tactics: bool,
    policy: PayloadPolicy<'_>,
    scratch: &mut Scratch,
) -> Result<(), Violation> {
    let field = if tactics {
        "mitre_tactics"
    } else {
        "mitre_techniques"
    };
    if doc.kind(list) != Kind::Arr {
        return Err(type_error("list_type", field));
    }
    let min = usize::from(!tactics);
    list_len(doc.node(list).count, min, MITRE_MAX, field)?;
    for (n, e) in doc.elements(list).enumerate() {
        if doc.kind(e) != Kind::Str {
            return Err(Violation::new(
                "string_type",
                [LocPart::from(field), LocPart::Index(n)],
                "Input should be a valid string",
            ));
        }
    }
    let mut buf = [0u8; 9];
    for e in doc.elements(list) {
        let t = node_text(doc, e, &mut scratch.text);
        if t.is_empty() {
            return Err(value_error(
                at(field),
                format!("{field} entries must be non-empty strings"),
            ));
        }
        let ok = normalise_id(py_strip(t), &mut buf).is_some_and(|id| {
            if tactics {
                is_tactic_id(id)
            } else {
                is_technique_id(id)
            }
        });
        if !ok {
            let msg = if tactics {
                "mitre_tactics entries must match TA####"
            } else {
                "mitre_techniques entries must match T#### or T####.###"
            };
            return Err(value_error(at(field), msg));
        }
    }
    if let Some(cat) = policy.catalogue {
        for e in doc.elements(list) {
            let t = node_text(doc, e, &mut scratch.text);
            let id = normalise_id(py_strip(t), &mut buf).unwrap_or("");
            let known = if tactics {
                cat.is_tactic(id)
            } else {
                cat.is_technique(id)
            };
            if !known {
                return Err(value_error(
                    at(field),
                    format!("unknown MITRE ATT&CK identifier {id}"),
                ));
            }
        }
    }
    Ok(())
}

/// Write a validated MITRE list trimmed and upper-cased.
fn write_mitre(doc: &Doc<'_>, list: usize, scratch: &mut Scratch, out: &mut Vec<u8>) {
    out.push(b'[');
    for (n, e) in doc.elements(list).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        // Validated: the trimmed text is ASCII `T`/`A`/digits/`.`, so it needs no escaping.
        let t = node_text(doc, e, &mut scratch.text);
        out.push(b'"');
        out.extend(py_strip(t).bytes().map(|b| b.to_ascii_uppercase()));
        out.push(b'"');
    }
    out.push(b']');
}

/// `str(value).strip()` of the sanitised attestation hash matches `^[a-fA-F0-9]{64}$`.
fn attestation_ok(doc: &Doc<'_>, value: Option<usize>, scratch: &mut Scratch) -> bool {
    let Some(v) = value else {
        return false;
    };
    let is_hash = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match doc.kind(v) {
        Kind::Str => {
            let Scratch { text, text2, .. } = scratch;
            sanitize_into(node_text(doc, v, text), VALUE_MAX, text2);
            is_hash(py_strip(text2))
        }
        // `str(int)`: a `-` never matches, so the raw token decides.
        Kind::Int => is_hash(doc.raw(v)),
        _ => false,
    }
}
