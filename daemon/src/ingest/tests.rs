use super::Rejection::{self, *};

/// CONTRACT.md §2.4 and §3.1, row by row: (variant, status, reason).
const TABLE: &[(Rejection, u16, &str)] = &[
    (MalformedHttp, 400, "Malformed HTTP request"),
    (RequestTimeout, 408, "Request timeout"),
    (LengthRequired, 411, "Content-Length required"),
    (HeaderTooLarge, 431, "Request header fields too large"),
    (NotFound, 404, "Not Found"),
    (MethodNotAllowed, 405, "Method Not Allowed"),
    (KillSwitchEngaged, 403, "Gateway kill switch engaged"),
    (
        UnsupportedMediaType,
        415,
        "Telemetry endpoint only accepts application/json",
    ),
    (EmptyBody, 422, "Telemetry payload is required"),
    (BodyTooLarge, 413, "Telemetry payload exceeds 1MiB limit"),
    (
        MissingServiceIdentity,
        401,
        "Missing required header: X-Service-Identity",
    ),
    (
        MissingCertFingerprint,
        401,
        "Missing required header: X-Client-Cert-Sha256",
    ),
    (
        BadCertFingerprintFormat,
        401,
        "Invalid client certificate fingerprint format",
    ),
    (UnknownServiceIdentity, 401, "Unknown service identity"),
    (
        HeaderNotPinned,
        401,
        "Service identity certificate fingerprint mismatch",
    ),
    (
        PresentedCertificateMismatch,
        401,
        "Service identity certificate fingerprint mismatch",
    ),
    (
        MissingTimestamp,
        401,
        "Missing required header: X-Telemetry-Timestamp",
    ),
    (
        MissingNonce,
        401,
        "Missing required header: X-Telemetry-Nonce",
    ),
    (
        MissingSignature,
        401,
        "Missing required header: X-Telemetry-Signature",
    ),
    (
        SignatureNotBase64,
        401,
        "Signature header is not valid base64",
    ),
    (
        TimestampNotEpochSeconds,
        401,
        "Telemetry timestamp must be unix epoch seconds",
    ),
    (
        TimestampOutsideSkew,
        401,
        "Telemetry timestamp out of allowed clock skew",
    ),
    (SignatureEncoding, 401, "Malformed signature encoding"),
    (SignatureInvalid, 401, "Invalid telemetry signature"),
    (NonceReused, 409, "Replay detected: nonce already used"),
    (NonceStoreUnavailable, 503, "Nonce store unavailable"),
    (InvalidJson, 422, "Invalid JSON payload"),
    (SchemaInvalid, 422, "Telemetry schema validation failed"),
    (
        BodyTimestampMismatch,
        401,
        "Body timestamp mismatch with signed header",
    ),
    (
        BodyNonceMismatch,
        401,
        "Body nonce mismatch with signed header",
    ),
    (
        CanonicalSchemaInvalid,
        422,
        "Canonical telemetry schema validation failed",
    ),
    (
        ContractV2NotObject,
        422,
        "Telemetry contract v2 validation failed",
    ),
    (
        ContractV2Invalid,
        422,
        "Telemetry contract v2 schema validation failed",
    ),
    (
        SignedMetadataMismatch,
        401,
        "Signed metadata mapping mismatch",
    ),
    (
        OperatorNotMapped,
        403,
        "Operator is not mapped to any tenant",
    ),
    (
        TenantMappingViolation,
        403,
        "Operator tenant mapping violation",
    ),
    (
        SchemaVersionRequired,
        422,
        "Telemetry schema version is required by gateway policy",
    ),
    (
        SchemaVersionNotAllowed,
        422,
        "Telemetry schema version is not allowed",
    ),
    (
        NonceForeignValue,
        409,
        "Replay detected: nonce already used",
    ),
    (NonceBucketUnavailable, 503, "Nonce store unavailable"),
    (RateLimited, 429, "Operator burst anomaly detected"),
    (SpoolFull, 503, "Telemetry queue publish failed"),
    (DlqSpoolFull, 503, "Telemetry DLQ publish failed"),
    (Overloaded, 503, "Telemetry gateway overloaded"),
    (PersistenceFailed, 503, "Telemetry persistence failed"),
    // CONTRACT.md §2.4 (the other routes), §7 and §8.
    (
        EndpointUnsupportedMediaType,
        415,
        "Endpoint only accepts application/json",
    ),
    (PayloadRequired, 422, "Request payload is required"),
    (PayloadTooLarge, 413, "Request payload exceeds 1MiB limit"),
    (
        FederationSchemaInvalid,
        422,
        "Federation bundle schema validation failed",
    ),
    (
        FederationTimestampOutsideSkew,
        401,
        "Federation bundle timestamp out of allowed clock skew",
    ),
    (
        FederationSignatureInvalid,
        401,
        "Federation proof-of-origin verification failed",
    ),
    (
        FederationNonceReused,
        409,
        "Replay detected: federation bundle nonce already used",
    ),
    (
        FederationNonceForeignValue,
        409,
        "Replay detected: federation bundle nonce already used",
    ),
    (
        GraphSchemaInvalid,
        422,
        "Execution graph schema validation failed",
    ),
    (GraphTooLarge, 422, "Execution graph exceeds size limits"),
    (
        GraphSchemaVersionNotAllowed,
        422,
        "Execution graph schema version is not allowed",
    ),
    (
        FeedbackSchemaInvalid,
        422,
        "Feedback query schema validation failed",
    ),
    (
        FeedbackKeyUnavailable,
        503,
        "Feedback signing key load failed",
    ),
];

#[test]
fn every_rejection_matches_the_contract() {
    assert_eq!(TABLE.len(), Rejection::ALL.len());
    for (r, status, reason) in TABLE {
        assert_eq!(r.status(), *status, "{r:?}");
        assert_eq!(r.reason(true), *reason, "{r:?}");
    }
    for r in Rejection::ALL {
        assert!(
            TABLE.iter().any(|(t, _, _)| *t == r),
            "{r:?} is not in the table"
        );
    }
    assert_eq!(
        BodyTooLarge.reason(false),
        "Telemetry payload exceeds configured limit"
    );
    assert_eq!(
        PayloadTooLarge.reason(false),
        "Request payload exceeds configured limit"
    );
}

#[test]
fn only_the_five_schema_reasons_dead_letter() {
    let dlq: Vec<_> = Rejection::ALL
        .iter()
        .filter(|r| r.dlq().is_some())
        .collect();
    assert_eq!(
        dlq,
        [
            &InvalidJson,
            &SchemaInvalid,
            &CanonicalSchemaInvalid,
            &ContractV2NotObject,
            &ContractV2Invalid
        ]
    );
    for r in dlq {
        let (code, _) = r.dlq().unwrap();
        assert_eq!(r.sub_reason(), Some(code));
    }
}

#[test]
fn connection_closing_answers() {
    let closing: Vec<_> = Rejection::ALL
        .iter()
        .filter(|r| r.closes_connection())
        .collect();
    assert_eq!(
        closing,
        [
            &MalformedHttp,
            &RequestTimeout,
            &LengthRequired,
            &HeaderTooLarge,
            &KillSwitchEngaged,
            &BodyTooLarge,
            &PayloadTooLarge
        ]
    );
}
