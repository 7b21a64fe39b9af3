//! The shared nonce bucket's configuration: checked at every connect, created on request.
//!
//! A JetStream KV bucket is the stream `KV_<bucket>` capturing `$KV.<bucket>.>`. The gateway
//! relies on four of its properties, and refuses a bucket without them:
//!
//! - history 1 (`max_msgs_per_subject = 1`): a key has one value, so "the last message on the
//!   subject" is the answer;
//! - a TTL (`max_age`) of at least the retention rule, so a key lives as long as a re-send
//!   of its request could still be accepted somewhere (`0`, no expiry, is accepted);
//! - nothing evicts live keys: no `max_msgs`/`max_bytes` limit with `discard = old`;
//! - file storage, not sealed, not a mirror (a mirror refuses writes), and at least the
//!   configured number of replicas.
//!
//! Create-only writes (`Nats-Expected-Last-Subject-Sequence: 0`) are part of every
//! JetStream stream; a server without JetStream is refused by the connect check.

use std::time::Duration;

use super::super::nats::jetstream::{api, api_error};
use super::super::nats::{Connection, NatsError};
use crate::config::ClusterConfig;

/// What the bucket must look like.
#[derive(Clone, Debug)]
pub struct BucketSpec {
    pub bucket: String,
    pub replicas: u64,
    /// The TTL a created bucket gets.
    pub ttl: Duration,
    /// The shortest TTL an existing bucket may have.
    pub min_ttl: Duration,
}

impl BucketSpec {
    pub fn new(cfg: &ClusterConfig, min_ttl: Duration) -> Self {
        Self {
            bucket: cfg.bucket.clone(),
            replicas: cfg.replicas,
            ttl: cfg.ttl,
            min_ttl,
        }
    }

    /// The stream behind the bucket.
    pub fn stream(&self) -> String {
        format!("KV_{}", self.bucket)
    }

    /// The subject of a key.
    pub fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }
}

/// Check the bucket (creating it when `create` and it does not exist).
pub async fn ensure_bucket(
    conn: &mut Connection,
    spec: &BucketSpec,
    create: bool,
) -> Result<bool, NatsError> {
    let stream = spec.stream();
    let v = api(
        conn,
        &format!("$JS.API.STREAM.INFO.{stream}"),
        b"",
        "bucket info",
    )
    .await?;
    let created = match api_error(&v) {
        None => {
            check(spec, &v["config"])?;
            false
        }
        Some((404, _)) if create => {
            let ttl_ns = u64::try_from(spec.ttl.as_nanos()).unwrap_or(u64::MAX);
            // The stream's own deduplication is not used (keys are create-only); keep its
            // window short so it holds no memory worth mentioning.
            let window_ns = ttl_ns.min(120_000_000_000);
            let cfg = serde_json::json!({
                "name": stream,
                "subjects": [format!("$KV.{}.>", spec.bucket)],
                "retention": "limits",
                "max_consumers": -1,
                "max_msgs": -1,
                "max_bytes": -1,
                "max_age": ttl_ns,
                "max_msgs_per_subject": 1,
                "max_msg_size": -1,
                "storage": "file",
                "discard": "new",
                "num_replicas": spec.replicas,
                "duplicate_window": window_ns,
                "deny_delete": true,
                "deny_purge": false,
                "allow_rollup_hdrs": true,
                "allow_direct": true,
            });
            let body = serde_json::to_vec(&cfg).unwrap_or_default();
            let v = api(
                conn,
                &format!("$JS.API.STREAM.CREATE.{stream}"),
                &body,
                "bucket create",
            )
            .await?;
            if let Some((code, description)) = api_error(&v) {
                return Err(NatsError::JetStream {
                    what: "bucket create",
                    code,
                    description,
                });
            }
            true
        }
        Some((404, _)) => {
            return Err(problem(
                spec,
                "does not exist (create it, or set [cluster] create_bucket = true)".into(),
            ))
        }
        Some((code, description)) => {
            return Err(NatsError::JetStream {
                what: "bucket info",
                code,
                description,
            })
        }
    };
    Ok(created)
}

fn problem(spec: &BucketSpec, problem: String) -> NatsError {
    NatsError::Stream {
        stream: format!("{} (KV bucket {})", spec.stream(), spec.bucket),
        problem,
    }
}

/// Refuse a bucket configuration the gateway cannot rely on, naming the difference.
pub fn check(spec: &BucketSpec, cfg: &serde_json::Value) -> Result<(), NatsError> {
    let int = |k: &str| cfg[k].as_i64().unwrap_or(0);
    let subject = format!("$KV.{}.>", spec.bucket);
    let captures = cfg["subjects"]
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(subject.as_str())));
    if !captures {
        return Err(problem(
            spec,
            format!("does not capture {subject}: not a KV bucket"),
        ));
    }
    if int("max_msgs_per_subject") != 1 {
        return Err(problem(
            spec,
            format!(
                "keeps {} values per key (history); it must keep exactly 1",
                int("max_msgs_per_subject")
            ),
        ));
    }
    let age = Duration::from_nanos(cfg["max_age"].as_u64().unwrap_or(0));
    if !age.is_zero() && age < spec.min_ttl {
        return Err(problem(
            spec,
            format!(
                "has a TTL of {}s; it must be at least {}s (2 x allowed_clock_skew_seconds + nonce_ttl_seconds + 1) so a key outlives every re-send that could still be accepted",
                age.as_secs(),
                spec.min_ttl.as_secs()
            ),
        ));
    }
    if cfg["discard"].as_str() != Some("new") && (int("max_msgs") > 0 || int("max_bytes") > 0) {
        return Err(problem(
            spec,
            "has a max_msgs or max_bytes limit with discard = old: live keys would be evicted and their nonces accepted again".into(),
        ));
    }
    if cfg["storage"].as_str() != Some("file") {
        return Err(problem(
            spec,
            "uses memory storage; file storage is required so keys survive a restart".into(),
        ));
    }
    if cfg["sealed"].as_bool() == Some(true) || !cfg["mirror"].is_null() {
        return Err(problem(
            spec,
            "is sealed or a mirror: it refuses writes".into(),
        ));
    }
    let replicas = u64::try_from(int("num_replicas").max(1)).unwrap_or(1);
    if replicas < spec.replicas {
        return Err(problem(
            spec,
            format!(
                "has {replicas} replicas; [cluster] replicas asks for {}",
                spec.replicas
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BucketSpec {
        BucketSpec {
            bucket: "N".into(),
            replicas: 3,
            ttl: Duration::from_secs(3600),
            min_ttl: Duration::from_secs(181),
        }
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "subjects": ["$KV.N.>"], "max_msgs_per_subject": 1, "max_age": 3_600_000_000_000u64,
            "discard": "new", "max_msgs": -1, "max_bytes": -1, "storage": "file", "num_replicas": 3,
        })
    }

    #[test]
    fn a_kv_bucket_passes() {
        check(&spec(), &good()).unwrap();
        let mut forever = good();
        forever["max_age"] = 0.into();
        check(&spec(), &forever).unwrap();
    }

    #[test]
    fn wrong_buckets_are_named() {
        for (edit, why) in [
            (("subjects", serde_json::json!(["x.>"])), "not a KV bucket"),
            (("max_msgs_per_subject", 5.into()), "history"),
            (("max_age", 60_000_000_000u64.into()), "TTL of 60s"),
            (("discard", "old".into()), "max_msgs or max_bytes"),
            (("storage", "memory".into()), "memory storage"),
            (("sealed", true.into()), "sealed"),
            (("num_replicas", 1.into()), "1 replicas"),
        ] {
            let mut v = good();
            v[edit.0] = edit.1;
            if edit.0 == "discard" {
                v["max_bytes"] = 1_000_000.into();
            }
            let e = check(&spec(), &v).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
