//! A small NATS / JetStream client of our own on smol (the official client needs tokio).
//!
//! `proto` parses what the server sends; `auth` reads credentials; `client` owns one TLS
//! connection; `jetstream` checks or creates the stream and reads PubAcks. The forwarder
//! (`crate::forward`) drives it.

pub mod auth;
pub mod client;
pub mod jetstream;
pub mod proto;

pub use auth::Credentials;
pub use client::{Connection, NatsOptions, Reply, ServerInfo};

/// Why talking to NATS failed. Each is retried with backoff by the forwarder, except where
/// the start-up check reports a wrong stream configuration.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("queue connection I/O: {0}")]
    Io(std::io::Error),
    #[error("queue TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("the queue server closed the connection")]
    Closed,
    #[error("timed out waiting for the {0}")]
    Timeout(&'static str),
    #[error("queue protocol: {0}")]
    Protocol(String),
    #[error("queue authentication refused: {0}")]
    Auth(String),
    #[error("queue server error: {0}")]
    Server(String),
    #[error("JetStream {what}: {description} (code {code})")]
    JetStream {
        what: &'static str,
        code: i64,
        description: String,
    },
    #[error("JetStream stream {stream}: {problem}")]
    Stream { stream: String, problem: String },
}
