//! The seed corpus of each fuzz target, built from the real formats (the contract's request
//! vector, real audit lines, a checkpoint signed with the fuzzing key). `fuzz/seeds/` holds
//! these files; `fuzz/make-seeds.sh` rewrites them.

use vvgate_storage::records::{self, AuditHead, EnvelopeKind, NonceRecord, Route, SpoolItem};
use vvgate_storage::records::{AuditRetention, SpoolSegment, SpoolStats};
use vvgate_storage::tree::{self, Frontier};

use crate::audit::checkpoint::{self, Checkpoint};

/// The contract's producer request body (CONTRACT.md §13.1), signed for [`super::rig::NOW`].
pub const BODY: &[u8] = include_bytes!("../../tests/data/producer-request.json");
const NONCE: &str = "3f1c2a9e-0000-4000-8000-000000000001";
const GRAPH_NONCE: &str = "3f1c2a9e-0000-4000-8000-000000000003";
const QUERY_NONCE: &str = "3f1c2a9e-0000-4000-8000-000000000004";

/// A signature the fuzzing verifier accepts (64 zero bytes) and one it refuses.
const FORGED_OK: &str =
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";
const FORGED_BAD: &str =
    "/wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";

/// A telemetry request as the producer sends it (no read-size prefix).
pub fn telemetry_request(body: &[u8], nonce: &str, signature: &str, close: bool) -> Vec<u8> {
    producer_request("/internal/v1/telemetry", body, nonce, signature, close)
}

/// A signed producer request to `path` (the telemetry headers; the cognitive routes use them
/// too).
fn producer_request(path: &str, body: &[u8], nonce: &str, signature: &str, close: bool) -> Vec<u8> {
    let pin = crate::ids::hex32(&super::rig::producer_fingerprint());
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-Service-Identity: {}\r\nX-Client-Cert-Sha256: {}\r\n\
         X-Telemetry-Timestamp: {}\r\nX-Telemetry-Nonce: {nonce}\r\nX-Telemetry-Signature: {signature}\r\n",
        body.len(),
        crate::devpki::DEV_IDENTITY,
        pin.as_str(),
        super::rig::NOW,
    )
    .into_bytes();
    if close {
        r.extend_from_slice(b"Connection: close\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// With the read-size prefix the HTTP targets expect (`0`: one read for everything).
fn whole(stream: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(stream);
    v
}

fn chunked(sizes: &[u8], stream: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::try_from(sizes.len()).unwrap_or(0)];
    v.extend_from_slice(sizes);
    v.extend_from_slice(stream);
    v
}

/// Named seed files of one target.
pub type Seeds = Vec<(&'static str, Vec<u8>)>;

/// `(target, seeds)` for every target.
pub fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("http_framing", http()),
        ("request", request()),
        ("payload", payload()),
        ("config", config()),
        ("records", records()),
        ("nats", nats()),
        ("checkpoint", checkpoints()),
        ("audit_export", audit_export()),
        ("service_bodies", service_bodies()),
        ("kv_value", kv_values()),
        ("evidence", evidence()),
    ]
}

fn http() -> Seeds {
    let post = b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello";
    let mut pipelined = post.to_vec();
    pipelined.extend_from_slice(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
    vec![
        ("get", whole(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")),
        ("post", whole(post)),
        ("post-trickled", chunked(&[0, 1, 2, 0, 7], post)),
        ("pipelined", whole(&pipelined)),
        (
            "expect-continue",
            whole(b"POST /t HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"),
        ),
        (
            "early-answer",
            whole(b"POST /early HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET / HTTP/1.0\r\n\r\n"),
        ),
        (
            "chunked",
            whole(b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "http10-keepalive",
            whole(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n"),
        ),
    ]
}

fn request() -> Seeds {
    let ok = telemetry_request(BODY, NONCE, FORGED_OK, false);
    let mut two = ok.clone();
    let other =
        String::from_utf8_lossy(BODY).replace(NONCE, "3f1c2a9e-0000-4000-8000-000000000002");
    two.extend_from_slice(&telemetry_request(
        other.as_bytes(),
        "3f1c2a9e-0000-4000-8000-000000000002",
        FORGED_OK,
        true,
    ));
    vec![
        ("accepted", whole(&ok)),
        ("two-keepalive", whole(&two)),
        ("replayed", whole(&[ok.clone(), ok.clone()].concat())),
        (
            "bad-signature",
            whole(&telemetry_request(BODY, NONCE, FORGED_BAD, true)),
        ),
        ("trickled", chunked(&[3, 0, 9, 1], &ok)),
        (
            "execution-graph",
            whole(&producer_request(
                "/internal/v1/cognitive/execution-graph",
                &graph_body(GRAPH_NONCE),
                GRAPH_NONCE,
                FORGED_OK,
                true,
            )),
        ),
        (
            "feedback-query",
            whole(&producer_request(
                "/internal/v1/cognitive/feedback/adjustments/query",
                &query_body(QUERY_NONCE),
                QUERY_NONCE,
                FORGED_OK,
                true,
            )),
        ),
        (
            "federation",
            whole(&producer_request(
                "/internal/v1/federation/verify",
                &bundle_body(),
                NONCE,
                FORGED_OK,
                true,
            )),
        ),
        (
            "healthz",
            whole(
                b"GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n",
            ),
        ),
    ]
}

fn payload() -> Seeds {
    let text = String::from_utf8_lossy(BODY).into_owned();
    vec![
        ("contract-vector", BODY.to_vec()),
        (
            "mitre-subtechnique",
            text.replace(
                "\"attributes\":{",
                "\"attributes\":{\"mitre_technique_id\":\"T1059.001\",",
            )
            .into_bytes(),
        ),
        (
            "escaped",
            text.replace("op-001", "op-\\u0030\\u00301").into_bytes(),
        ),
        (
            "tsv",
            b"T1059\ttechnique\nT1059.001\tsubtechnique\n".to_vec(),
        ),
        ("datetime", b"2026-02-26T12:00:00.123456+00:00".to_vec()),
    ]
}

fn config() -> Seeds {
    let pki = &super::rig::base_pki();
    vec![
        (
            "dev",
            crate::devpki::dev_config(pki, "127.0.0.1:0", "127.0.0.1:0").into_bytes(),
        ),
        (
            "limits",
            b"[telemetry_gateway]\nmode = \"dev\"\nmax_body_bytes = 10\n[limits]\nmax_connections = 0\n#env\n"
                .to_vec(),
        ),
    ]
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut b = Vec::new();
    records::encode(v, &mut b).expect("a record encodes");
    b
}

fn records() -> Seeds {
    let segment = SpoolSegment::V1 {
        spooled_at: 5,
        items: vec![
            SpoolItem {
                kind: EnvelopeKind::Ingest,
                msg_id: "1b4e28ba-2fa1-4d2a-9c3b-000000000001",
                integrity_hash: "00ff",
                body: b"{\"a\":1}",
            },
            SpoolItem {
                kind: EnvelopeKind::DeadLetter,
                msg_id: "dlq:x",
                integrity_hash: "",
                body: b"",
            },
        ],
    };
    vec![
        (
            "nonce",
            enc(&NonceRecord::V1 {
                body_sha256: [1; 32],
                request_id: [2; 16],
                route: Route::Telemetry,
                accepted_at: 1_772_107_200,
            }),
        ),
        ("segment", enc(&segment)),
        (
            "audit-head",
            enc(&AuditHead {
                index: 9,
                hash: [3; 32],
                last_seal: 8,
            }),
        ),
        (
            "retention",
            enc(&AuditRetention {
                exported_through: 4,
                pending: Some((5, 9)),
                pruned_through: 2,
                pruned_hash: [4; 32],
            }),
        ),
        (
            "stats",
            enc(&SpoolStats {
                next_seq: 3,
                count: 2,
                bytes: 700,
            }),
        ),
    ]
}

fn nats() -> Seeds {
    let info = b"INFO {\"server_id\":\"N1\",\"version\":\"2.9.10\",\"max_payload\":1048576,\"headers\":true,\"jetstream\":true,\"tls_required\":true,\"nonce\":\"abc\"}\r\n";
    let ack = b"{\"stream\":\"VV\", \"seq\":12, \"duplicate\": true}";
    let hdr = b"NATS/1.0\r\n\r\n";
    let mut msg = format!(
        "HMSG _INBOX.x.1 1 {} {}\r\n",
        hdr.len(),
        hdr.len() + ack.len()
    )
    .into_bytes();
    msg.extend_from_slice(hdr);
    msg.extend_from_slice(ack);
    msg.extend_from_slice(b"\r\n");
    let err = b"{\"error\":{\"code\":503,\"err_code\":10077,\"description\":\"maximum messages exceeded\"}}";
    let mut plain = format!("MSG _INBOX.x.2 1 reply.to {}\r\n", err.len()).into_bytes();
    plain.extend_from_slice(err);
    plain.extend_from_slice(b"\r\n");
    vec![
        ("info", info.to_vec()),
        ("hmsg-puback", msg),
        ("msg-error", plain),
        (
            "no-responders",
            b"HMSG _INBOX.x.3 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n".to_vec(),
        ),
        (
            "control",
            b"PING\r\nPONG\r\n+OK\r\n-ERR 'Authorization Violation'\r\n".to_vec(),
        ),
    ]
}

struct Fixed(ring::signature::Ed25519KeyPair);

impl vvgate_hsm::RecordSigner for Fixed {
    fn public_key(&self) -> [u8; 32] {
        super::checkpoint_key().key
    }
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], vvgate_hsm::HsmError> {
        Ok(self
            .0
            .sign(msg)
            .as_ref()
            .try_into()
            .expect("64-byte signature"))
    }
}

/// Audit lines chained as the gateway writes them, and the tree over them.
fn audit_lines(n: u64) -> (Vec<Vec<u8>>, Frontier) {
    let mut lines = Vec::new();
    let mut prev = String::new();
    let mut tree = Frontier::default();
    let mut stored = Vec::new();
    for index in 1..=n {
        let mut line = Vec::new();
        let mut scratch = Vec::new();
        let details = format!("{{\"request_id\":\"r{index}\"}}");
        let hash = crate::audit::encode_entry(
            index,
            "2026-02-26T12:00:00.000000+00:00",
            "telemetry.accepted",
            crate::audit::ACTOR_GATEWAY,
            details.as_bytes(),
            &prev,
            &mut line,
            &mut scratch,
        );
        prev = crate::ids::hex32(&hash).as_str().to_owned();
        tree.append(tree::leaf_hash(&line), &mut stored);
        lines.push(line);
    }
    (lines, tree)
}

/// A checkpoint note over `tree`, signed with the fuzzing key.
fn signed_checkpoint(tree: &Frontier) -> Vec<u8> {
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&super::CHECKPOINT_SEED)
        .expect("seed");
    let cp = Checkpoint {
        origin: super::CHECKPOINT_ORIGIN.to_owned(),
        size: tree.size(),
        root: tree.root(),
    };
    checkpoint::sign(&cp, &Fixed(pair)).expect("signs")
}

fn checkpoints() -> Seeds {
    let (_, tree) = audit_lines(5);
    vec![
        ("signed", signed_checkpoint(&tree)),
        ("vkey", super::checkpoint_key().to_string().into_bytes()),
        (
            "body",
            Checkpoint {
                origin: "o".into(),
                size: 0,
                root: [0; 32],
            }
            .body()
            .into_bytes(),
        ),
    ]
}

fn audit_export() -> Seeds {
    let (lines, tree) = audit_lines(5);
    let mut log = lines.join(&b'\n');
    log.push(b'\n');
    let mut with_cp = log.clone();
    with_cp.extend_from_slice(b"--\n");
    with_cp.extend_from_slice(&signed_checkpoint(&tree));
    vec![("log", log), ("log-with-checkpoint", with_cp)]
}

/// An execution graph for the dev operator and tenant, signed for [`super::rig::NOW`].
fn graph_body(nonce: &str) -> Vec<u8> {
    let fp = "0C40DBD5295BC42311CB7F980880D9407E386BCA6F83639DE3A38144A037E6CD";
    format!(
        r#"{{"attestation_measurement_hash":"5c83f7d75de535ed4e51f088c71824dc6b2c2d3080e5de24b67eb5daa259fe10","execution_fingerprint":"{fp}","graph":{{"edges":[{{"from":"n0","to":"n1"}}],"execution_fingerprint":"{fp}","graph_id":"g-1","nodes":[{{"id":"n0","type":"step"}},{{"id":"n1","type":"step"}}],"operator_id":"{op}","target_urn":"urn:vv:target:1","tenant_id":"{tenant}"}},"nonce":"{nonce}","operator_id":"{op}","schema_version":"execution.graph.v1","tenant_id":"{tenant}","timestamp":{now}}}"#,
        op = crate::devpki::DEV_OPERATOR,
        tenant = crate::devpki::DEV_TENANT,
        now = super::rig::NOW,
    )
    .into_bytes()
}

fn query_body(nonce: &str) -> Vec<u8> {
    format!(
        r#"{{"limit":5,"nonce":"{nonce}","operator_id":"{}","tenant_id":"{}","timestamp":{}}}"#,
        crate::devpki::DEV_OPERATOR,
        crate::devpki::DEV_TENANT,
        super::rig::NOW,
    )
    .into_bytes()
}

fn bundle_body() -> Vec<u8> {
    format!(
        r#"{{"bundle":{{"campaign_id":"cmp-001","execution_hash":"{}","nonce":"fed-{NONCE}","operator_id":"{}","signature":"{FORGED_OK}","timestamp":{}}}}}"#,
        "ab".repeat(32),
        crate::devpki::DEV_OPERATOR,
        super::rig::NOW,
    )
    .into_bytes()
}

fn service_bodies() -> Seeds {
    vec![
        ("federation", bundle_body()),
        ("execution-graph", graph_body(GRAPH_NONCE)),
        ("feedback-query", query_body(QUERY_NONCE)),
    ]
}

fn kv_values() -> Seeds {
    let rec = NonceRecord::V1 {
        body_sha256: crate::ids::sha256(BODY),
        request_id: [0x11; 16],
        route: Route::Telemetry,
        accepted_at: super::rig::NOW,
    };
    let mut ours = Vec::new();
    crate::cluster::value::encode(&rec, "gw-a", &mut ours);
    vec![
        ("ours", ours),
        ("foreign", b"{\"owner\":\"someone else\"}".to_vec()),
    ]
}

fn evidence() -> Seeds {
    use super::{FuzzKek, EVIDENCE_KEK_ID, EVIDENCE_TENANT};
    let mut fill = |out: &mut [u8]| out.fill(0x11);
    let v2 = crate::evidence::seal(
        &FuzzKek,
        EVIDENCE_KEK_ID,
        EVIDENCE_TENANT,
        "blob-1",
        br#"{"finding":"critical"}"#,
        &mut fill,
    )
    .expect("the fuzzing KEK seals");
    // CONTRACT.md §13.1's v1 vector (root key 32 × 'A').
    let v1 = format!(
        r#"{{"algorithm":"AES-256-GCM+HKDF-SHA256","ciphertext_b64":"bNVhIK6r9jGCHeQeK9SAoXbwrI5IrY4uJCZujWeCACF/XcluPMrbo77D3wXxE8MYH+D5jaVRUIA=","data_nonce_b64":"IiIiIiIiIiIiIiIi","dek_wrap_nonce_b64":"MzMzMzMzMzMzMzMz","key_id":"{}","tenant_id":"{EVIDENCE_TENANT}","version":"vv-evidence-env-v1","wrapped_dek_b64":"/df5ryWTHmSP5Fdfdu94yWZH8AqM48r/rki653jBsipwg/WZ5aaCbEoClVPlaC0k"}}"#,
        super::EVIDENCE_V1_ROOT_ID
    );
    vec![
        (
            "v2",
            serde_json::to_vec(&v2).expect("an envelope serialises"),
        ),
        ("v1", v1.into_bytes()),
    ]
}
