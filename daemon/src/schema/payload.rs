//! Step 20: the canonical payload (§4.3–§4.5), written normalised as CJSON; steps 21–22 via
//! `contract_v2`.

use super::{PayloadError, PayloadInfo, PayloadPolicy, Scratch};
use crate::json::Doc;

/// Validate and normalise payload node `payload`, appending its CJSON to `out`.
/// On error `out` may hold a partial write; the caller truncates it.
pub fn normalise_payload<'a>(
    doc: &Doc<'a>,
    payload: usize,
    policy: PayloadPolicy<'_>,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<PayloadInfo<'a>, PayloadError> {
    let _ = (doc, payload, policy, scratch, out);
    todo!("schema: normalise_payload")
}
