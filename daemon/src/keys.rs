//! Key ceremony transcripts in the audit log (CONTRACT.md §6.4, `keys.ceremony`).
//!
//! `vvctl keys` turns each ceremony's [`Transcript`] into a signed transcript document and
//! writes it to a file:
//!
//! ```json
//! {"signature":{"alg":"Ed25519","key_ref":"pkcs11:0201","public_key_b64":"…","status":"signed",
//!   "value_b64":"…"},
//!  "transcript":{"ceremony":"generate","keys":[…],"officers":["Security","Platform"],…}}
//! ```
//!
//! The signature is pure Ed25519, by the checkpoint key, over the CJSON of `transcript` after
//! [`normalize`] (nulls and empty arrays or objects dropped). A CJSON object has no raw newline
//! while a checkpoint note has at least three, so the key's two uses cannot be confused. When
//! the checkpoint key does not exist yet (token initialisation), `signature` is
//! `{"status":"unsigned","reason":"…"}` and says why.
//!
//! In the audit log the document becomes one `keys.ceremony` entry (actor `SYSTEM`) whose
//! details are the document [`flatten`]ed to strings and integers (`transcript.keys.0.key_ref`,
//! `signature.value_b64`, …) plus `transcript_sha256`; [`unflatten`] gives the document back
//! and [`verify`] checks it. A running gateway appends through its control socket
//! (`{"cmd":"keys_transcript","transcript":{…}}`, [`append_via_gateway`]) and then signs a
//! checkpoint covering the entry; a stopped gateway's database is appended to directly
//! ([`append_to_store`]). Details never hold PINs, shares or private key material: a
//! transcript holds names, key ids, labels, kinds and public keys only.

use base64::Engine;
use serde_json::{Map, Value};
use vvgate_hsm::ceremony::Transcript;
use vvgate_hsm::{KeyRef, RecordSigner};

use crate::audit::{write_details, Chain, Detail, ACTOR_SYSTEM};
use crate::gateway::Gateway;

/// The audit event type of a ceremony transcript.
pub const EVENT: &str = "keys.ceremony";

/// The most details one transcript may have (a ceremony touches a handful of keys).
const MAX_FIELDS: usize = 256;
/// The longest detail value, in bytes.
const MAX_VALUE: usize = 4096;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A flattened detail value: the audit log holds strings and integers only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flat {
    Str(String),
    Int(i64),
}

/// Drop nulls and empty arrays and objects, at every depth: the form that is signed and that
/// survives [`flatten`] and [`unflatten`] unchanged.
pub fn normalize(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, normalize(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .map(normalize)
                .filter(|v| !is_empty(v))
                .collect(),
        ),
        other => other,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The CJSON bytes of `v` (CONTRACT.md §1.2).
pub fn cjson(v: &Value) -> Result<Vec<u8>, String> {
    let text = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    crate::json::canonicalize_doc(&text).map_err(|e| format!("not canonicalisable JSON: {e}"))
}

/// A ceremony's transcript in its signed form.
pub fn transcript_value(t: &Transcript) -> Result<Value, String> {
    serde_json::to_value(t)
        .map(normalize)
        .map_err(|e| e.to_string())
}

/// The signed transcript document: `transcript` signed by `signer` (the checkpoint key named
/// `key_ref`), or unsigned with `unsigned_reason` when there is no signer.
pub fn sign(
    transcript: Value,
    signer: Option<(&KeyRef, &dyn RecordSigner)>,
    unsigned_reason: &str,
) -> Result<Value, String> {
    let transcript = normalize(transcript);
    let bytes = cjson(&transcript)?;
    let signature = match signer {
        Some((key_ref, s)) => {
            let sig = s.sign(&bytes).map_err(|e| e.to_string())?;
            serde_json::json!({
                "alg": "Ed25519",
                "key_ref": key_ref.to_string(),
                "public_key_b64": B64.encode(s.public_key()),
                "status": "signed",
                "value_b64": B64.encode(sig),
            })
        }
        None => serde_json::json!({ "status": "unsigned", "reason": unsigned_reason }),
    };
    Ok(serde_json::json!({ "signature": signature, "transcript": transcript }))
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The public key whose signature verified; `None` for an unsigned transcript.
    pub signed_by: Option<[u8; 32]>,
    /// SHA-256 of the transcript's CJSON, lowercase hex.
    pub sha256: String,
}

/// Check a signed transcript document: its shape, that `transcript` is in normal form, and
/// the signature (when it says it is signed).
pub fn verify(doc: &Value) -> Result<Verified, String> {
    let obj = doc
        .as_object()
        .ok_or("a transcript document is a JSON object")?;
    if let Some(extra) = obj.keys().find(|k| *k != "transcript" && *k != "signature") {
        return Err(format!(
            "unexpected member {extra:?} in the transcript document"
        ));
    }
    let transcript = obj
        .get("transcript")
        .filter(|t| t.is_object())
        .ok_or("no \"transcript\" object")?;
    for field in ["ceremony", "officers", "token"] {
        if transcript.get(field).is_none() {
            return Err(format!("the transcript has no {field:?}"));
        }
    }
    if normalize(transcript.clone()) != *transcript {
        return Err("the transcript holds nulls or empty arrays or objects".into());
    }
    let bytes = cjson(transcript)?;
    let sha256 = crate::ids::hex32(&crate::ids::sha256(&bytes)).to_string();
    let sig = obj
        .get("signature")
        .and_then(Value::as_object)
        .ok_or("no \"signature\" object")?;
    let text = |name: &str| sig.get(name).and_then(Value::as_str);
    match text("status") {
        Some("unsigned") => {
            if text("reason").is_none_or(str::is_empty) {
                return Err("an unsigned transcript must say why (signature.reason)".into());
            }
            Ok(Verified {
                signed_by: None,
                sha256,
            })
        }
        Some("signed") => {
            if text("alg") != Some("Ed25519") {
                return Err("signature.alg must be Ed25519".into());
            }
            let pk: [u8; 32] = text("public_key_b64")
                .and_then(|s| B64.decode(s).ok())
                .and_then(|v| v.try_into().ok())
                .ok_or("signature.public_key_b64 is not a base64 Ed25519 public key")?;
            let value = text("value_b64")
                .and_then(|s| B64.decode(s).ok())
                .filter(|v| v.len() == 64)
                .ok_or("signature.value_b64 is not a base64 Ed25519 signature")?;
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
                .verify(&bytes, &value)
                .map_err(|_| "the transcript signature does not verify".to_string())?;
            Ok(Verified {
                signed_by: Some(pk),
                sha256,
            })
        }
        _ => Err("signature.status must be signed or unsigned".into()),
    }
}

/// Flatten a document to `path → string or integer` (object keys joined with `.`, array
/// elements by index). Refuses what would not come back unchanged from [`unflatten`]:
/// booleans, floats, nulls, empty containers, keys that are empty, numeric or hold a `.`.
pub fn flatten(doc: &Value) -> Result<Vec<(String, Flat)>, String> {
    fn walk(v: &Value, path: &str, out: &mut Vec<(String, Flat)>) -> Result<(), String> {
        let join = |seg: &str| {
            if path.is_empty() {
                seg.to_owned()
            } else {
                format!("{path}.{seg}")
            }
        };
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    if k.is_empty()
                        || k.contains('.')
                        || k.bytes().all(|b| b.is_ascii_digit())
                        || k.len() > 64
                    {
                        return Err(format!("member name {k:?} cannot be flattened"));
                    }
                    walk(v, &join(k), out)?;
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &join(&i.to_string()), out)?;
                }
            }
            Value::String(s) => {
                if s.len() > MAX_VALUE {
                    return Err(format!("{path} is longer than {MAX_VALUE} bytes"));
                }
                out.push((path.to_owned(), Flat::Str(s.clone())));
            }
            Value::Number(n) => match n.as_i64() {
                Some(i) => out.push((path.to_owned(), Flat::Int(i))),
                None => return Err(format!("{path} is not an integer")),
            },
            _ => return Err(format!("{path} is not a string or an integer")),
        }
        if out.len() > MAX_FIELDS {
            return Err(format!("more than {MAX_FIELDS} fields"));
        }
        Ok(())
    }
    if !doc.is_object() {
        return Err("a transcript document is a JSON object".into());
    }
    let mut out = Vec::new();
    walk(doc, "", &mut out)?;
    Ok(out)
}

/// The inverse of [`flatten`], for the details of a `keys.ceremony` entry (members that are
/// not part of the document, such as `transcript_sha256`, are skipped by the caller).
pub fn unflatten(details: &Map<String, Value>) -> Result<Value, String> {
    // Array elements in index order (`keys.10` sorts before `keys.2` as text).
    let key = |p: &str| -> Vec<(usize, String)> {
        p.split('.')
            .map(|s| match s.parse::<usize>() {
                Ok(n) => (n, String::new()),
                Err(_) => (usize::MAX, s.to_owned()),
            })
            .collect()
    };
    let mut entries: Vec<(&String, &Value)> = details.iter().collect();
    entries.sort_by_cached_key(|(p, _)| key(p));
    let mut root = Value::Object(Map::new());
    for (path, value) in entries {
        let segs: Vec<&str> = path.split('.').collect();
        let mut cur = &mut root;
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let next_is_index = segs
                .get(i + 1)
                .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
            let fresh = || {
                if next_is_index {
                    Value::Array(Vec::new())
                } else {
                    Value::Object(Map::new())
                }
            };
            cur = match cur {
                Value::Object(m) => {
                    let slot = m.entry((*seg).to_owned()).or_insert_with(|| {
                        if last {
                            Value::Null
                        } else {
                            fresh()
                        }
                    });
                    slot
                }
                Value::Array(a) => {
                    let idx: usize = seg.parse().map_err(|_| format!("bad path {path:?}"))?;
                    if idx == a.len() {
                        a.push(if last { Value::Null } else { fresh() });
                    }
                    a.get_mut(idx)
                        .ok_or_else(|| format!("array index out of order in {path:?}"))?
                }
                _ => return Err(format!("conflicting paths at {path:?}")),
            };
            if last {
                if !cur.is_null() {
                    return Err(format!("duplicate path {path:?}"));
                }
                *cur = value.clone();
            }
        }
    }
    Ok(root)
}

/// The details of the `keys.ceremony` entry for `doc`, after [`verify`]ing it.
pub fn details(doc: &Value) -> Result<Vec<(String, Flat)>, String> {
    let verified = verify(doc)?;
    let mut flat = flatten(doc)?;
    flat.push(("transcript_sha256".into(), Flat::Str(verified.sha256)));
    Ok(flat)
}

fn as_details(flat: &[(String, Flat)]) -> Vec<(&str, Detail<'_>)> {
    flat.iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                match v {
                    Flat::Str(s) => Detail::Str(s),
                    Flat::Int(i) => Detail::Int(*i),
                },
            )
        })
        .collect()
}

/// The public key of the configured checkpoint key, read through the configured key store
/// (for a PKCS#11 token this logs in with `[keystore] pin_file`).
pub fn checkpoint_public_key(
    cfg: &crate::config::Config,
) -> Result<[u8; 32], vvgate_hsm::HsmError> {
    use vvgate_hsm::KeyStore;
    let key = &cfg.audit.checkpoint_key;
    match &cfg.keystore.pkcs11 {
        Some(p) if !key.is_file() => {
            let store = vvgate_hsm::pkcs11::Pkcs11KeyStore::open(p)?;
            let pk = store.record_signer(key)?.public_key();
            Ok(pk)
        }
        _ => Ok(vvgate_hsm::file::FileKeyStore::new()
            .record_signer(key)?
            .public_key()),
    }
}

/// The control command `{"cmd":"keys_transcript","transcript":{…}}`: append the document as
/// a `keys.ceremony` entry, then sign a checkpoint that covers it.
pub async fn append_via_gateway(gw: &Gateway, request: &str) -> Result<Value, String> {
    let req: Value =
        serde_json::from_str(request).map_err(|e| format!("request is not JSON: {e}"))?;
    let doc = req
        .get("transcript")
        .ok_or("keys_transcript needs \"transcript\": the signed transcript document")?;
    let flat = details(doc)?;
    let mut fields = as_details(&flat);
    if !gw.audit_system(EVENT, &mut fields).await {
        return Err("the keys.ceremony entry could not be committed".into());
    }
    let entries = gw
        .committer
        .shared
        .audit_index
        .load(std::sync::atomic::Ordering::Relaxed);
    let size = gw.committer.checkpoint().await?;
    tracing::info!(
        ceremony = doc["transcript"]["ceremony"].as_str().unwrap_or(""),
        checkpoint_size = size,
        "key ceremony transcript appended to the audit log"
    );
    Ok(serde_json::json!({ "appended": true, "entries": entries, "checkpoint_size": size }))
}

/// Append the document to a stopped gateway's database. Returns the entry's index. The
/// gateway signs a checkpoint covering it within `seal_interval_seconds` of its next start.
pub fn append_to_store(
    store: &vvgate_storage::Store,
    seal_every: u64,
    doc: &Value,
) -> Result<u64, String> {
    let flat = details(doc)?;
    let mut fields = as_details(&flat);
    let mut details = Vec::with_capacity(1024);
    write_details(&mut details, &mut fields);
    let mut chain = Chain::new(seal_every);
    let now = crate::time::Clock::system().now();
    store
        .batch(|b| chain.append(b, now, ACTOR_SYSTEM, EVENT, &details))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seed(ring::signature::Ed25519KeyPair);

    impl RecordSigner for Seed {
        fn public_key(&self) -> [u8; 32] {
            use ring::signature::KeyPair;
            self.0.public_key().as_ref().try_into().unwrap()
        }
        fn sign(&self, msg: &[u8]) -> Result<[u8; 64], vvgate_hsm::HsmError> {
            Ok(self.0.sign(msg).as_ref().try_into().unwrap())
        }
    }

    fn transcript() -> Value {
        serde_json::json!({
            "ceremony": "rotate",
            "officers": ["Security", "Platform"],
            "token": "label=vvgate serial=1234",
            "purpose": "checkpoint",
            "keys": [
                {"key_ref": "pkcs11:0201", "status": "kept", "label": "", "public_key_b64": "AAAA"},
                {"key_ref": "pkcs11:0202", "status": "generated", "label": "cp v2", "public_key_b64": "BBBB"}
            ],
            "detail": "version 2 added",
            "unix_time": 1_700_000_000u64,
            "time": "2023-11-14T22:13:20Z",
            "nothing": null,
            "empty": []
        })
    }

    #[test]
    fn signed_transcripts_survive_the_audit_log() {
        let seed: Vec<u8> = (0u8..32).collect();
        let signer = Seed(ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap());
        let key = KeyRef::parse("pkcs11:0201").unwrap();
        let doc = sign(transcript(), Some((&key, &signer)), "").unwrap();
        assert!(doc["transcript"].get("nothing").is_none(), "nulls dropped");
        let v = verify(&doc).unwrap();
        assert_eq!(v.signed_by, Some(signer.public_key()));

        // Flattened into details and back: the same document, and it still verifies.
        let flat = details(&doc).unwrap();
        assert!(flat.contains(&(
            "transcript.keys.1.key_ref".into(),
            Flat::Str("pkcs11:0202".into())
        )));
        assert!(flat.contains(&("transcript.unix_time".into(), Flat::Int(1_700_000_000))));
        let mut map = Map::new();
        for (k, v) in &flat {
            if k != "transcript_sha256" {
                map.insert(
                    k.clone(),
                    match v {
                        Flat::Str(s) => Value::String(s.clone()),
                        Flat::Int(i) => Value::from(*i),
                    },
                );
            }
        }
        let back = unflatten(&map).unwrap();
        assert_eq!(back, doc);
        assert_eq!(verify(&back).unwrap(), v);

        // Any change breaks the signature.
        let mut bad = doc.clone();
        bad["transcript"]["officers"][1] = "Mallory".into();
        assert!(verify(&bad).unwrap_err().contains("does not verify"));
        let mut bad = doc.clone();
        bad["signature"]["public_key_b64"] = B64.encode([9u8; 32]).into();
        assert!(verify(&bad).is_err());
    }

    #[test]
    fn unsigned_transcripts_say_why_and_odd_documents_are_refused() {
        let doc = sign(transcript(), None, "the checkpoint key does not exist yet").unwrap();
        assert_eq!(verify(&doc).unwrap().signed_by, None);
        let mut bad = doc.clone();
        bad["signature"]["reason"] = "".into();
        assert!(verify(&bad).is_err());
        let mut bad = doc.clone();
        bad["transcript"]["flag"] = true.into();
        assert!(flatten(&bad).is_err(), "booleans do not flatten");
        let mut bad = doc.clone();
        bad["transcript"]["x.y"] = "1".into();
        assert!(flatten(&bad).is_err(), "dotted names do not flatten");
        let mut bad = doc.clone();
        bad["transcript"]["null"] = Value::Null;
        assert!(verify(&bad).unwrap_err().contains("nulls"));
        let mut bad = doc;
        bad["extra"] = "x".into();
        assert!(verify(&bad).is_err());
        assert!(verify(&serde_json::json!([])).is_err());
    }

    #[test]
    fn unflatten_refuses_conflicts() {
        let mut m = Map::new();
        m.insert("a.b".into(), "1".into());
        m.insert("a.b.c".into(), "2".into());
        assert!(unflatten(&m).is_err());
        let mut m = Map::new();
        m.insert("a.1".into(), "1".into());
        assert!(unflatten(&m).is_err(), "index 1 without 0");
        let mut m = Map::new();
        for i in 0..12 {
            m.insert(format!("a.{i}"), i.into());
        }
        let v = unflatten(&m).unwrap();
        assert_eq!(v["a"][11], 11, "indexes past 9 keep their order");
    }
}
