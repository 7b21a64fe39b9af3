//! vvgate: the signed telemetry ingest gateway.
//!
//! Modules follow one request's path: `config` → `tls` → `http` → `ingest` (the check chain,
//! with `schema` for the payload) → `commit` (group commit to storage) → `forward`.
//! `audit`, `control` and `metrics` observe that path; `json`, `time` and `ids` are shared
//! building blocks.

pub mod json;
pub mod ids;
pub mod schema;
pub mod time;
pub mod config;
pub mod audit;
pub mod commit;
pub mod tls;
pub mod http;
pub mod control;
pub mod envelope;
pub mod exit;
pub mod gateway;
pub mod ingest;
pub mod metrics;
pub mod run;
pub mod devpki;
pub mod client;
pub mod cli;
pub mod logging;
