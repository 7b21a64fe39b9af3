//! The bodies of the other three routes: the federation bundle (CONTRACT.md §7), the
//! execution-graph metadata (§8.1) and the feedback query (§8.2). Unknown fields are rejected
//! at every level (`extra = forbid`); every string is bounded. The first violation is kept for
//! the log; the route decides the status and reason.

use std::borrow::Cow;

use super::check::{
    extra_key, missing, model_type, pattern_mismatch, required_str, slots, str_len, type_error,
};
use super::request::{bounded_str, tenant_str};
use super::{LocPart, Violation};
use crate::json::{Doc, Kind};

/// `POST /internal/v1/federation/verify`: `{"bundle":{...}}`.
#[derive(Debug)]
pub struct FederationBundle<'a> {
    pub operator_id: Cow<'a, str>,
    pub campaign_id: Cow<'a, str>,
    pub execution_hash: Cow<'a, str>,
    /// Canonical decimal of the JSON integer.
    pub timestamp: &'a str,
    pub nonce: Cow<'a, str>,
    pub signature: Cow<'a, str>,
}

/// `POST /internal/v1/cognitive/execution-graph`.
#[derive(Debug)]
pub struct ExecutionGraph<'a> {
    pub operator_id: Cow<'a, str>,
    pub tenant_id: Cow<'a, str>,
    pub execution_fingerprint: Cow<'a, str>,
    pub timestamp: &'a str,
    pub nonce: Cow<'a, str>,
    pub schema_version: Cow<'a, str>,
    pub attestation_measurement_hash: Cow<'a, str>,
    /// The `graph` object node.
    pub graph: usize,
}

/// What the size limits found in `graph` (checked by [`graph_shape`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GraphShape {
    /// `graph.nodes` length (`None`: absent).
    pub nodes: Option<usize>,
    pub edges: Option<usize>,
    pub target_urn: Option<String>,
}

/// Why a graph is refused after its model validated.
#[derive(Debug, PartialEq, Eq)]
pub enum GraphError {
    /// A member of the wrong type (schema).
    Schema(Violation),
    /// Too many nodes or edges, or a `target_urn` too long.
    TooLarge,
}

/// `POST /internal/v1/cognitive/feedback/adjustments/query`.
#[derive(Debug)]
pub struct FeedbackQuery<'a> {
    pub operator_id: Cow<'a, str>,
    pub tenant_id: Cow<'a, str>,
    pub timestamp: &'a str,
    pub nonce: Cow<'a, str>,
    pub limit: usize,
}

const HEX64_PATTERN: &str = "^[a-fA-F0-9]{64}$";

/// Validate a federation verify body.
pub fn parse_federation<'a>(doc: &Doc<'a>) -> Result<FederationBundle<'a>, Violation> {
    let root = Doc::ROOT;
    if doc.kind(root) != Kind::Obj {
        return Err(model_type("FederationVerifyRequest", []));
    }
    let ([bundle], extra) = slots(doc, root, &["bundle"]);
    let bundle = bundle.ok_or_else(|| missing("bundle"))?;
    if doc.kind(bundle) != Kind::Obj {
        return Err(model_type(
            "SignedEvidenceBundle",
            [LocPart::from("bundle")],
        ));
    }
    let inner = || {
        let ([op, camp, exec, ts, nonce, sig], extra) = slots(
            doc,
            bundle,
            &[
                "operator_id",
                "campaign_id",
                "execution_hash",
                "timestamp",
                "nonce",
                "signature",
            ],
        );
        let b = FederationBundle {
            operator_id: bounded_str(doc, op, "operator_id", 1, 128)?,
            campaign_id: bounded_str(doc, camp, "campaign_id", 1, 128)?,
            execution_hash: hex64(doc, exec, "execution_hash")?,
            timestamp: integer(doc, ts, "timestamp")?,
            nonce: bounded_str(doc, nonce, "nonce", 12, 128)?,
            signature: bounded_str(doc, sig, "signature", 12, 4096)?,
        };
        match extra {
            Some(k) => Err(extra_key(doc, k)),
            None => Ok(b),
        }
    };
    let b = inner().map_err(|v| v.under(LocPart::from("bundle")))?;
    if let Some(k) = extra {
        return Err(extra_key(doc, k));
    }
    Ok(b)
}

/// Validate an execution-graph body (the model; limits are [`graph_shape`]).
pub fn parse_execution_graph<'a>(doc: &Doc<'a>) -> Result<ExecutionGraph<'a>, Violation> {
    let root = Doc::ROOT;
    if doc.kind(root) != Kind::Obj {
        return Err(model_type("ExecutionGraphMetadataRequest", []));
    }
    let ([op, tenant_slot, fp, ts, nonce, sv, amh, graph], extra) = slots(
        doc,
        root,
        &[
            "operator_id",
            "tenant_id",
            "execution_fingerprint",
            "timestamp",
            "nonce",
            "schema_version",
            "attestation_measurement_hash",
            "graph",
        ],
    );
    let g = ExecutionGraph {
        operator_id: bounded_str(doc, op, "operator_id", 1, 128)?,
        tenant_id: tenant_str(doc, tenant_slot, "tenant_id")?,
        execution_fingerprint: hex64(doc, fp, "execution_fingerprint")?,
        timestamp: integer(doc, ts, "timestamp")?,
        nonce: bounded_str(doc, nonce, "nonce", 8, 128)?,
        schema_version: bounded_str(doc, sv, "schema_version", 1, 32)?,
        attestation_measurement_hash: hex64(doc, amh, "attestation_measurement_hash")?,
        graph: match graph {
            None => return Err(missing("graph")),
            Some(i) if doc.kind(i) == Kind::Obj => i,
            Some(_) => return Err(type_error("dict_type", "graph")),
        },
    };
    if let Some(k) = extra {
        return Err(extra_key(doc, k));
    }
    Ok(g)
}

/// The vvgate limits on `graph` (CONTRACT.md §8.1): `nodes` and `edges` arrays of at most
/// `max_nodes` / `max_edges`, `target_urn` a string of 1–512 characters.
pub fn graph_shape(
    doc: &Doc<'_>,
    graph: usize,
    max_nodes: usize,
    max_edges: usize,
) -> Result<GraphShape, GraphError> {
    let under = |v: Violation| GraphError::Schema(v.under(LocPart::from("graph")));
    let mut shape = GraphShape::default();
    for (field, max, slot) in [
        ("nodes", max_nodes, &mut shape.nodes),
        ("edges", max_edges, &mut shape.edges),
    ] {
        if let Some(i) = doc.get(graph, field) {
            if doc.kind(i) != Kind::Arr {
                return Err(under(type_error("list_type", field)));
            }
            let n = doc.node(i).count;
            if n > max {
                return Err(GraphError::TooLarge);
            }
            *slot = Some(n);
        }
    }
    if let Some(i) = doc.get(graph, "target_urn") {
        if doc.kind(i) != Kind::Str {
            return Err(under(type_error("string_type", "target_urn")));
        }
        match doc.char_len(i) {
            0 => return Err(under(str_len(0, 1, 512, "target_urn").unwrap_err())),
            n if n > 512 => return Err(GraphError::TooLarge),
            _ => shape.target_urn = Some(doc.str(i).into_owned()),
        }
    }
    Ok(shape)
}

/// Validate a feedback query body.
pub fn parse_feedback_query<'a>(doc: &Doc<'a>) -> Result<FeedbackQuery<'a>, Violation> {
    let root = Doc::ROOT;
    if doc.kind(root) != Kind::Obj {
        return Err(model_type("FeedbackQueryRequest", []));
    }
    let ([op, tenant_slot, ts, nonce, limit], extra) = slots(
        doc,
        root,
        &["operator_id", "tenant_id", "timestamp", "nonce", "limit"],
    );
    let q = FeedbackQuery {
        operator_id: bounded_str(doc, op, "operator_id", 1, 128)?,
        tenant_id: tenant_str(doc, tenant_slot, "tenant_id")?,
        timestamp: integer(doc, ts, "timestamp")?,
        nonce: bounded_str(doc, nonce, "nonce", 8, 128)?,
        limit: match limit {
            None => 100,
            Some(i) if doc.kind(i) == Kind::Int => match doc.as_i64(i) {
                Some(n @ 1..=1000) => usize::try_from(n).unwrap_or(100),
                _ => {
                    return Err(Violation::new(
                        "limit_range",
                        [LocPart::from("limit")],
                        "Input should be between 1 and 1000",
                    ))
                }
            },
            Some(_) => return Err(type_error("int_type", "limit")),
        },
    };
    if let Some(k) = extra {
        return Err(extra_key(doc, k));
    }
    Ok(q)
}

fn hex64<'a>(
    doc: &Doc<'a>,
    slot: Option<usize>,
    field: &'static str,
) -> Result<Cow<'a, str>, Violation> {
    let i = required_str(doc, slot, field)?;
    let s = doc.str(i);
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(pattern_mismatch(field, HEX64_PATTERN));
    }
    Ok(s)
}

/// A JSON integer, as its canonical decimal text (`-0` is `0`).
fn integer<'a>(
    doc: &Doc<'a>,
    slot: Option<usize>,
    field: &'static str,
) -> Result<&'a str, Violation> {
    match slot {
        None => Err(missing(field)),
        Some(i) if doc.kind(i) == Kind::Int => Ok(match doc.raw(i) {
            "-0" => "0",
            raw => raw,
        }),
        Some(_) => Err(type_error("int_type", field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Tape;

    const BUNDLE: &str = r#"{"bundle":{"operator_id":"op-001","campaign_id":"cmp-001","execution_hash":"FFFFffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff","timestamp":1772107200,"nonce":"nonce-federation-00000001","signature":"ROXfV7V7SPgHvwfvt7Nrgnn/pmxi8r80kMcjPyCcfPDW472mRo+AAjIGkKPQXZmvd3GcXmxOkWALL8f7flWXAw=="}}"#;

    fn with<T>(text: &str, f: impl FnOnce(&Doc<'_>) -> T) -> T {
        let mut tape = Tape::new();
        let doc = tape.parse(text.as_bytes()).expect("json");
        f(&doc)
    }

    #[test]
    fn federation_bundles() {
        with(BUNDLE, |d| {
            let b = parse_federation(d).unwrap();
            assert_eq!(b.timestamp, "1772107200");
            assert_eq!(b.nonce, "nonce-federation-00000001");
        });
        for bad in [
            BUNDLE.replace("}}", r#","x":1}}"#),
            BUNDLE.replace("}}", r#"},"x":1}"#),
            BUNDLE.replace("1772107200", "\"1772107200\""),
            BUNDLE.replace("1772107200", "1772107200.0"),
            BUNDLE.replace("nonce-federation-00000001", "short"),
            BUNDLE.replace("FFFF", "GGGG"),
            BUNDLE.replace(r#""operator_id":"op-001","#, ""),
            r#"{"bundle":[]}"#.to_owned(),
            "[]".to_owned(),
        ] {
            with(&bad, |d| assert!(parse_federation(d).is_err(), "{bad}"));
        }
        let long_sig = BUNDLE.replace("ROXf", &"A".repeat(4100));
        with(&long_sig, |d| assert!(parse_federation(d).is_err()));
    }

    #[test]
    fn graph_limits() {
        let g = |graph: &str| {
            format!(
                r#"{{"operator_id":"op-001","tenant_id":"10000000-0000-0000-0000-000000000001","execution_fingerprint":"{h}","timestamp":1,"nonce":"nonce-0001","schema_version":"execution.graph.v1","attestation_measurement_hash":"{h}","graph":{graph}}}"#,
                h = "a".repeat(64)
            )
        };
        with(&g(r#"{"nodes":[1,2,3],"target_urn":"urn:x"}"#), |d| {
            let m = parse_execution_graph(d).unwrap();
            let s = graph_shape(d, m.graph, 3, 3).unwrap();
            assert_eq!(s.nodes, Some(3));
            assert_eq!(s.edges, None);
            assert_eq!(s.target_urn.as_deref(), Some("urn:x"));
            assert_eq!(graph_shape(d, m.graph, 2, 3), Err(GraphError::TooLarge));
        });
        for bad in [r#"{"nodes":{}}"#, r#"{"target_urn":""}"#, r#"{"edges":1}"#] {
            with(&g(bad), |d| {
                let m = parse_execution_graph(d).unwrap();
                assert!(matches!(
                    graph_shape(d, m.graph, 9, 9),
                    Err(GraphError::Schema(_))
                ));
            });
        }
        let long = format!(r#"{{"target_urn":"{}"}}"#, "u".repeat(513));
        with(&g(&long), |d| {
            let m = parse_execution_graph(d).unwrap();
            assert_eq!(graph_shape(d, m.graph, 9, 9), Err(GraphError::TooLarge));
        });
        with(&g("[]"), |d| assert!(parse_execution_graph(d).is_err()));
        with(
            &g("{}").replace("\"graph\"", "\"extra\":1,\"graph\""),
            |d| assert!(parse_execution_graph(d).is_err()),
        );
    }

    #[test]
    fn feedback_queries() {
        let q = |limit: &str| {
            format!(
                r#"{{"operator_id":"op-001","tenant_id":"10000000-0000-0000-0000-000000000001","timestamp":5,"nonce":"nonce-0001"{limit}}}"#
            )
        };
        with(&q(""), |d| {
            assert_eq!(parse_feedback_query(d).unwrap().limit, 100)
        });
        with(&q(r#","limit":1000"#), |d| {
            assert_eq!(parse_feedback_query(d).unwrap().limit, 1000)
        });
        for bad in [
            r#","limit":0"#,
            r#","limit":1001"#,
            r#","limit":"5""#,
            r#","limit":5.0"#,
            r#","extra":true"#,
        ] {
            with(&q(bad), |d| {
                assert!(parse_feedback_query(d).is_err(), "{bad}")
            });
        }
    }
}
