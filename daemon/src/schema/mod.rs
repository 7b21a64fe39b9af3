//! The telemetry body contract (CONTRACT.md §4): the top-level request schema (check step 17),
//! the canonical payload with its sanitiser and MITRE rules (step 20), contract v2 (steps
//! 21–22) and the schema version read for steps 26–27.
//!
//! Input is a strictly parsed [`Doc`] (step 16 is the JSON parser). The normalised payload is
//! written as CJSON straight into the caller's buffer, so the ingest envelope (§5.3) is built
//! without an intermediate tree. Every failure is a [`Violation`] that the DLQ trace carries.
//!
//! Order inside the steps matters only for which error is reported first; the status and
//! reason of each step are decided by `ingest`.

mod attrs;
mod check;
mod contract_v2;
mod datetime;
pub mod mitre;
mod payload;
mod request;
mod sanitize;
pub mod service;

use std::borrow::Cow;

use crate::json::{Cjson, Doc};

pub use datetime::{parse_rfc3339, DateTime};
pub use mitre::{Catalogue, MitreKind};
pub use payload::normalise_payload;
pub use request::parse_request;
pub use sanitize::injection_detected;

/// One element of an error location: an object key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocPart {
    Key(Cow<'static, str>),
    Index(usize),
}

impl From<&'static str> for LocPart {
    fn from(k: &'static str) -> Self {
        LocPart::Key(Cow::Borrowed(k))
    }
}

impl From<usize> for LocPart {
    fn from(i: usize) -> Self {
        LocPart::Index(i)
    }
}

/// One validation error as it appears in a DLQ trace's `errors` list: `{"loc","msg","type"}`.
/// `kind` follows pydantic's error type names (`missing`, `extra_forbidden`, `string_type`,
/// `int_type`, `bool_type`, `dict_type`, `list_type`, `string_too_short`, `string_too_long`,
/// `string_pattern_mismatch`, `too_short`, `too_long`, `greater_than_equal`,
/// `less_than_equal`, `datetime_parsing`, `literal_error`, `value_error`, ...). Consumers must
/// not parse these; they exist for people reading the DLQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub loc: Vec<LocPart>,
    pub msg: Cow<'static, str>,
}

impl Violation {
    pub fn new(
        kind: &'static str,
        loc: impl IntoIterator<Item = LocPart>,
        msg: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            kind,
            loc: loc.into_iter().collect(),
            msg: msg.into(),
        }
    }

    /// Prefix the location with `part` (used when a nested validator's error bubbles up).
    pub fn under(mut self, part: LocPart) -> Self {
        self.loc.insert(0, part);
        self
    }

    /// Write `{"loc":[...],"msg":"...","type":"..."}`.
    pub fn write(&self, w: &mut Cjson<'_>) {
        w.begin_obj().key("loc").begin_arr();
        for p in &self.loc {
            match p {
                LocPart::Key(k) => w.str(k),
                LocPart::Index(i) => w.u64(u64::try_from(*i).unwrap_or(u64::MAX)),
            };
        }
        w.end_arr()
            .key("msg")
            .str(&self.msg)
            .key("type")
            .str(self.kind)
            .end_obj();
    }
}

/// `signed_metadata` (§4.2), decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedMetadata<'a> {
    pub tenant_id: Cow<'a, str>,
    pub operator_id: Cow<'a, str>,
    pub campaign_id: Cow<'a, str>,
}

/// The top level of a telemetry body that passed step 17 (§4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryRequest<'a> {
    pub operator_id: Cow<'a, str>,
    pub campaign_id: Cow<'a, str>,
    pub tenant_id: Cow<'a, str>,
    pub execution_hash: Cow<'a, str>,
    /// The JSON integer token of `timestamp`, canonical decimal (`-0` already made `0`).
    pub timestamp: &'a str,
    pub nonce: Cow<'a, str>,
    pub signed_metadata: SignedMetadata<'a>,
    /// Node index of the `payload` object (validated in step 20).
    pub payload: usize,
}

/// Why steps 20–22 failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// Step 20: canonical schema, sanitiser, injection check or MITRE.
    Canonical(Violation),
    /// Step 21: `attributes.contract_v2` is not an object although the schema version is 2.x.
    ContractV2NotObject,
    /// Step 22: `contract_v2` failed its model (§4.6).
    ContractV2(Violation),
}

/// The message of step 21 (§4.8), used in the DLQ trace's `error` member.
pub const CONTRACT_V2_NOT_OBJECT: &str =
    "attributes.contract_v2 must be an object when schema_version is 2.x";

/// What step 20 needs besides the document.
#[derive(Clone, Copy)]
pub struct PayloadPolicy<'c> {
    /// Look MITRE identifiers up in this catalogue (`enforce_mitre_catalogue`); `None` checks
    /// the format only.
    pub catalogue: Option<&'c Catalogue>,
}

/// What the ingest path keeps from a valid payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadInfo<'a> {
    /// `payload.event_id` as received (decoded).
    pub event_id: Cow<'a, str>,
}

/// Reusable buffers for payload normalisation; one per connection.
#[derive(Default, Debug)]
pub struct Scratch {
    pub(crate) text: String,
    pub(crate) text2: String,
    /// A stack of sanitised object keys with their key node; entries past `keys_used` are
    /// spare strings kept for their capacity.
    pub(crate) keys: Vec<(String, usize)>,
    pub(crate) keys_used: usize,
}

/// `payload.attributes.schema_version` as received (unsanitised), for steps 26–27 (§4.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaVersion<'a> {
    /// Absent, or `attributes` absent or not an object.
    Missing,
    /// Present but not a JSON string (including `null`): step 27.
    NotString,
    /// A string, trimmed (may be empty: step 26).
    Value(Cow<'a, str>),
}

/// Read the unsanitised schema version of payload node `payload`.
pub fn schema_version<'a>(doc: &Doc<'a>, payload: usize) -> SchemaVersion<'a> {
    request::schema_version(doc, payload)
}

#[cfg(test)]
mod tests;
