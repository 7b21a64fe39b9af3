//! vvgate: the signed telemetry ingest gateway.
//!
//! Modules follow one request's path: `config` → `tls` → `http` → `ingest` (the check chain,
//! with `schema` for the payload) → `commit` (group commit to storage) → `forward`.
//! `federation` and `feedback` serve the other routes with the same checks, `evidence` seals
//! evidence blobs under the key store's KEK. `audit`, `control` and `metrics` observe that path; `json`, `time` and `ids` are shared
//! building blocks.

#[cfg(all(feature = "fuzzing", not(debug_assertions)))]
compile_error!(
    "the `fuzzing` feature accepts forged signatures: it builds only with debug assertions"
);

pub mod admission;
pub mod audit;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod control;
pub mod devpki;
pub mod envelope;
pub mod evidence;
pub mod exit;
pub mod federation;
pub mod feedback;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod heap;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod json;
pub mod keys;
pub mod killswitch;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod reload;
pub mod run;
pub mod schema;
pub mod time;
pub mod tls;
