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

/// A signature the fuzzing verifier accepts (64 zero bytes) and one it refuses.
const FORGED_OK: &str =
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";
const FORGED_BAD: &str =
    "/wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";

/// A telemetry request as the producer sends it (no read-size prefix).
pub fn telemetry_request(body: &[u8], nonce: &str, signature: &str, close: bool) -> Vec<u8> {
    let pin = crate::ids::hex32(&super::rig::producer_fingerprint());
    let mut r = format!(
        "POST /internal/v1/telemetry HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
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
