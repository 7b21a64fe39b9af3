//! Step 17: the top-level request schema (§4.1, §4.2).

use super::{SchemaVersion, TelemetryRequest, Violation};
use crate::json::Doc;

/// Validate the top level of a telemetry body (step 17).
pub fn parse_request<'a>(doc: &Doc<'a>) -> Result<TelemetryRequest<'a>, Violation> {
    let _ = doc;
    todo!("schema: parse_request")
}

pub(super) fn schema_version<'a>(doc: &Doc<'a>, payload: usize) -> SchemaVersion<'a> {
    let _ = (doc, payload);
    todo!("schema: schema_version")
}
