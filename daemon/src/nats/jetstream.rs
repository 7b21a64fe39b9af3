//! JetStream: the stream the gateway publishes into, and PubAcks.

use std::time::Duration;

use super::client::Connection;
use super::NatsError;
use crate::json::{Doc, Kind, Tape};

/// What the stream must look like (CONTRACT.md §5.1).
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub name: String,
    /// Subjects it must capture (ingest, dead letter, audit checkpoints).
    pub subjects: Vec<String>,
    /// At least the nonce retention, so a re-publish after a crash is recognised.
    pub min_duplicate_window: Duration,
}

/// What the stream holds, as reported by `STREAM.INFO`.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    pub messages: u64,
    pub last_seq: u64,
    pub created: bool,
}

/// The `(code, description)` of an API reply that is an error.
pub fn api_error(v: &serde_json::Value) -> Option<(i64, String)> {
    let e = v.get("error")?;
    Some((
        e.get("code")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0),
        e.get("description")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown error")
            .to_owned(),
    ))
}

/// One JetStream API call (a request and its JSON reply).
pub async fn api(
    conn: &mut Connection,
    subject: &str,
    body: &[u8],
    what: &'static str,
) -> Result<serde_json::Value, NatsError> {
    let r = conn.request(subject, body, Duration::from_secs(5)).await?;
    if r.status == Some(503) {
        return Err(NatsError::JetStream {
            what,
            code: 503,
            description: "JetStream is not enabled on the queue server (no responders)".into(),
        });
    }
    serde_json::from_slice(&r.payload)
        .map_err(|e| NatsError::Protocol(format!("{what} reply: {e}")))
}

/// Check the stream, creating it when `create` and it does not exist. A stream that exists
/// with a configuration the gateway cannot rely on is an error naming the difference.
pub async fn ensure_stream(
    conn: &mut Connection,
    spec: &StreamSpec,
    create: bool,
) -> Result<StreamState, NatsError> {
    let info_subject = format!("$JS.API.STREAM.INFO.{}", spec.name);
    let v = api(conn, &info_subject, b"", "stream info").await?;
    let stream_err = |problem: String| NatsError::Stream {
        stream: spec.name.clone(),
        problem,
    };
    let (v, created) = match api_error(&v) {
        None => (v, false),
        Some((404, _)) if create => {
            let window_ns = u64::try_from(spec.min_duplicate_window.as_nanos()).unwrap_or(u64::MAX);
            let cfg = serde_json::json!({
                "name": spec.name,
                "subjects": spec.subjects,
                "storage": "file",
                "retention": "limits",
                "discard": "old",
                "num_replicas": 1,
                "duplicate_window": window_ns,
            });
            let body = serde_json::to_vec(&cfg).unwrap_or_default();
            let v = api(
                conn,
                &format!("$JS.API.STREAM.CREATE.{}", spec.name),
                &body,
                "stream create",
            )
            .await?;
            if let Some((code, description)) = api_error(&v) {
                return Err(NatsError::JetStream {
                    what: "stream create",
                    code,
                    description,
                });
            }
            (v, true)
        }
        Some((404, _)) => {
            return Err(stream_err(
                "does not exist (create it, or set [nats] create_stream = true)".into(),
            ))
        }
        Some((code, description)) => {
            return Err(NatsError::JetStream {
                what: "stream info",
                code,
                description,
            })
        }
    };
    let cfg = &v["config"];
    let subjects: Vec<&str> = cfg["subjects"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    for want in &spec.subjects {
        if !subjects.iter().any(|s| subject_matches(s, want)) {
            return Err(stream_err(format!(
                "does not capture subject {want} (it captures {subjects:?})"
            )));
        }
    }
    if cfg["storage"].as_str() != Some("file") {
        return Err(stream_err(format!(
            "uses {} storage; file storage is required so acknowledged events survive a restart",
            cfg["storage"]
        )));
    }
    let window = Duration::from_nanos(cfg["duplicate_window"].as_u64().unwrap_or(0));
    if window < spec.min_duplicate_window {
        return Err(stream_err(format!(
            "duplicate_window is {}s; it must be at least {}s (allowed_clock_skew_seconds + nonce_ttl_seconds + 1) so a re-publish after a crash is recognised",
            window.as_secs(),
            spec.min_duplicate_window.as_secs()
        )));
    }
    Ok(StreamState {
        messages: v["state"]["messages"].as_u64().unwrap_or(0),
        last_seq: v["state"]["last_seq"].as_u64().unwrap_or(0),
        created,
    })
}

/// Whether stream subject pattern `pattern` captures `subject` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The answer to a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PubAck {
    /// Stored (or recognised as a duplicate of what is stored): safe to delete locally.
    Stored { seq: u64, duplicate: bool },
    /// JetStream refused it. `err_code` is JetStream's own error number (10071: wrong last
    /// sequence, the answer to a create-only write of a key that exists).
    Error {
        code: i64,
        err_code: i64,
        description: String,
    },
    /// No stream captures the subject (header status 503).
    NoResponders,
    /// Not a PubAck at all.
    Malformed(String),
}

/// Read a PubAck (`{"stream":…,"seq":…}` with optional `"duplicate":true`, or `{"error":…}`).
pub fn parse_pub_ack(status: Option<u16>, payload: &[u8], tape: &mut Tape) -> PubAck {
    if status == Some(503) {
        return PubAck::NoResponders;
    }
    let Ok(doc) = tape.parse(payload) else {
        return PubAck::Malformed("not JSON".into());
    };
    if doc.kind(Doc::ROOT) != Kind::Obj {
        return PubAck::Malformed("not a JSON object".into());
    }
    if let Some(e) = doc.get(Doc::ROOT, "error") {
        let code = doc.get(e, "code").and_then(|i| doc.as_i64(i)).unwrap_or(0);
        let err_code = doc
            .get(e, "err_code")
            .and_then(|i| doc.as_i64(i))
            .unwrap_or(0);
        let description = doc
            .get(e, "description")
            .filter(|&i| doc.kind(i) == Kind::Str)
            .map(|i| doc.str(i).chars().take(200).collect())
            .unwrap_or_else(|| "unknown error".into());
        return PubAck::Error {
            code,
            err_code,
            description,
        };
    }
    let has_stream = doc
        .get(Doc::ROOT, "stream")
        .is_some_and(|i| doc.kind(i) == Kind::Str);
    let seq = doc
        .get(Doc::ROOT, "seq")
        .and_then(|i| doc.as_i64(i))
        .and_then(|v| u64::try_from(v).ok());
    match (has_stream, seq) {
        (true, Some(seq)) if seq > 0 => PubAck::Stored {
            seq,
            duplicate: doc
                .get(Doc::ROOT, "duplicate")
                .is_some_and(|i| doc.kind(i) == Kind::Bool && doc.node(i).flag),
        },
        _ => PubAck::Malformed("no stream and seq".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_acks() {
        let mut t = Tape::new();
        assert_eq!(
            parse_pub_ack(None, br#"{"stream":"S","seq":7}"#, &mut t),
            PubAck::Stored {
                seq: 7,
                duplicate: false
            }
        );
        // nats-server 2.9 formats some acks with spaces.
        assert_eq!(
            parse_pub_ack(
                None,
                br#"{"stream":"S", "seq":7, "duplicate": true}"#,
                &mut t
            ),
            PubAck::Stored {
                seq: 7,
                duplicate: true
            }
        );
        assert_eq!(
            parse_pub_ack(None, br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#, &mut t),
            PubAck::Error { code: 503, err_code: 10077, description: "maximum messages exceeded".into() }
        );
        assert_eq!(parse_pub_ack(Some(503), b"", &mut t), PubAck::NoResponders);
        for bad in [
            &b""[..],
            b"[]",
            b"{}",
            br#"{"stream":"S","seq":0}"#,
            br#"{"seq":"7"}"#,
            b"\xff",
        ] {
            assert!(matches!(
                parse_pub_ack(None, bad, &mut t),
                PubAck::Malformed(_)
            ));
        }
    }

    #[test]
    fn subject_patterns() {
        assert!(subject_matches(
            "vectorvue.telemetry.>",
            "vectorvue.telemetry.ingest"
        ));
        assert!(subject_matches(
            "vectorvue.*.dlq",
            "vectorvue.telemetry.dlq"
        ));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.*", "a"));
        assert!(!subject_matches("a.>", "a"));
    }
}
