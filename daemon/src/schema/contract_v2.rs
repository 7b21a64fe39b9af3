//! Steps 21–22: `attributes.contract_v2` (§4.6).
