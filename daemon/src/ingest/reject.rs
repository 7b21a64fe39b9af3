//! Every way a request can be refused, as one closed enum. One exhaustive `match` gives the
//! HTTP status, the contract's reason string and the audit `sub_reason`; there is no wildcard
//! arm, so a new check cannot be added without deciding all three.

/// A refused request. Variants are named after the fact that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    // Framing and routing (H).
    MalformedHttp,
    RequestTimeout,
    LengthRequired,
    HeaderTooLarge,
    NotFound,
    MethodNotAllowed,
    KillSwitchEngaged,
    // Media, size (M1–M3); telemetry wording.
    UnsupportedMediaType,
    EmptyBody,
    BodyTooLarge,
    // Identity (1–6).
    MissingServiceIdentity,
    MissingCertFingerprint,
    BadCertFingerprintFormat,
    UnknownServiceIdentity,
    HeaderNotPinned,
    PresentedCertificateMismatch,
    // Freshness and signature (7–14).
    MissingTimestamp,
    MissingNonce,
    MissingSignature,
    SignatureNotBase64,
    TimestampNotEpochSeconds,
    TimestampOutsideSkew,
    SignatureEncoding,
    SignatureInvalid,
    // Replay (15).
    NonceReused,
    NonceStoreUnavailable,
    /// `jetstream_kv`: the shared bucket holds a value for the key that is malformed or not
    /// written by a gateway (fail closed: a replay).
    NonceForeignValue,
    /// `jetstream_kv`: the shared bucket cannot be reached (fail closed).
    NonceBucketUnavailable,
    // Body (16–27).
    InvalidJson,
    SchemaInvalid,
    BodyTimestampMismatch,
    BodyNonceMismatch,
    CanonicalSchemaInvalid,
    ContractV2NotObject,
    ContractV2Invalid,
    SignedMetadataMismatch,
    OperatorNotMapped,
    TenantMappingViolation,
    SchemaVersionRequired,
    SchemaVersionNotAllowed,
    // Rate (28) and admission (29–31).
    RateLimited,
    SpoolFull,
    DlqSpoolFull,
    Overloaded,
    PersistenceFailed,
    // The other routes' own wording of M1–M3 (CONTRACT.md §2.4).
    EndpointUnsupportedMediaType,
    PayloadRequired,
    PayloadTooLarge,
    // Federation verify (§7).
    FederationSchemaInvalid,
    FederationTimestampOutsideSkew,
    FederationSignatureInvalid,
    FederationNonceReused,
    /// `jetstream_kv`: the shared bucket holds a malformed or foreign value under a federation
    /// key (fail closed: a replay).
    FederationNonceForeignValue,
    // Cognitive routes (§8).
    GraphSchemaInvalid,
    GraphTooLarge,
    GraphSchemaVersionNotAllowed,
    FeedbackSchemaInvalid,
    FeedbackKeyUnavailable,
}

impl Rejection {
    /// HTTP status.
    pub fn status(self) -> u16 {
        use Rejection::*;
        match self {
            MalformedHttp => 400,
            RequestTimeout => 408,
            LengthRequired => 411,
            HeaderTooLarge => 431,
            NotFound => 404,
            MethodNotAllowed => 405,
            KillSwitchEngaged => 403,
            UnsupportedMediaType | EndpointUnsupportedMediaType => 415,
            EmptyBody | PayloadRequired => 422,
            BodyTooLarge | PayloadTooLarge => 413,
            MissingServiceIdentity
            | MissingCertFingerprint
            | BadCertFingerprintFormat
            | UnknownServiceIdentity
            | HeaderNotPinned
            | PresentedCertificateMismatch
            | MissingTimestamp
            | MissingNonce
            | MissingSignature
            | SignatureNotBase64
            | TimestampNotEpochSeconds
            | TimestampOutsideSkew
            | SignatureEncoding
            | SignatureInvalid
            | BodyTimestampMismatch
            | BodyNonceMismatch
            | SignedMetadataMismatch
            | FederationTimestampOutsideSkew
            | FederationSignatureInvalid => 401,
            NonceReused
            | NonceForeignValue
            | FederationNonceReused
            | FederationNonceForeignValue => 409,
            InvalidJson
            | SchemaInvalid
            | CanonicalSchemaInvalid
            | ContractV2NotObject
            | ContractV2Invalid
            | SchemaVersionRequired
            | SchemaVersionNotAllowed
            | FederationSchemaInvalid
            | GraphSchemaInvalid
            | GraphTooLarge
            | GraphSchemaVersionNotAllowed
            | FeedbackSchemaInvalid => 422,
            OperatorNotMapped | TenantMappingViolation => 403,
            RateLimited => 429,
            NonceStoreUnavailable
            | NonceBucketUnavailable
            | SpoolFull
            | DlqSpoolFull
            | Overloaded
            | PersistenceFailed
            | FeedbackKeyUnavailable => 503,
        }
    }

    /// The `detail` string (CONTRACT.md §2.4, §3.1). `default_body_limit` selects the
    /// `1MiB` wording of 413.
    pub fn reason(self, default_body_limit: bool) -> &'static str {
        use Rejection::*;
        match self {
            MalformedHttp => "Malformed HTTP request",
            RequestTimeout => "Request timeout",
            LengthRequired => "Content-Length required",
            HeaderTooLarge => "Request header fields too large",
            NotFound => "Not Found",
            MethodNotAllowed => "Method Not Allowed",
            KillSwitchEngaged => "Gateway kill switch engaged",
            UnsupportedMediaType => "Telemetry endpoint only accepts application/json",
            EmptyBody => "Telemetry payload is required",
            BodyTooLarge if default_body_limit => "Telemetry payload exceeds 1MiB limit",
            BodyTooLarge => "Telemetry payload exceeds configured limit",
            MissingServiceIdentity => "Missing required header: X-Service-Identity",
            MissingCertFingerprint => "Missing required header: X-Client-Cert-Sha256",
            BadCertFingerprintFormat => "Invalid client certificate fingerprint format",
            UnknownServiceIdentity => "Unknown service identity",
            HeaderNotPinned | PresentedCertificateMismatch => {
                "Service identity certificate fingerprint mismatch"
            }
            MissingTimestamp => "Missing required header: X-Telemetry-Timestamp",
            MissingNonce => "Missing required header: X-Telemetry-Nonce",
            MissingSignature => "Missing required header: X-Telemetry-Signature",
            SignatureNotBase64 => "Signature header is not valid base64",
            TimestampNotEpochSeconds => "Telemetry timestamp must be unix epoch seconds",
            TimestampOutsideSkew => "Telemetry timestamp out of allowed clock skew",
            SignatureEncoding => "Malformed signature encoding",
            SignatureInvalid => "Invalid telemetry signature",
            NonceReused | NonceForeignValue => "Replay detected: nonce already used",
            NonceStoreUnavailable | NonceBucketUnavailable => "Nonce store unavailable",
            InvalidJson => "Invalid JSON payload",
            SchemaInvalid => "Telemetry schema validation failed",
            BodyTimestampMismatch => "Body timestamp mismatch with signed header",
            BodyNonceMismatch => "Body nonce mismatch with signed header",
            CanonicalSchemaInvalid => "Canonical telemetry schema validation failed",
            ContractV2NotObject => "Telemetry contract v2 validation failed",
            ContractV2Invalid => "Telemetry contract v2 schema validation failed",
            SignedMetadataMismatch => "Signed metadata mapping mismatch",
            OperatorNotMapped => "Operator is not mapped to any tenant",
            TenantMappingViolation => "Operator tenant mapping violation",
            SchemaVersionRequired => "Telemetry schema version is required by gateway policy",
            SchemaVersionNotAllowed => "Telemetry schema version is not allowed",
            RateLimited => "Operator burst anomaly detected",
            SpoolFull => "Telemetry queue publish failed",
            DlqSpoolFull => "Telemetry DLQ publish failed",
            Overloaded => "Telemetry gateway overloaded",
            PersistenceFailed => "Telemetry persistence failed",
            EndpointUnsupportedMediaType => "Endpoint only accepts application/json",
            PayloadRequired => "Request payload is required",
            PayloadTooLarge if default_body_limit => "Request payload exceeds 1MiB limit",
            PayloadTooLarge => "Request payload exceeds configured limit",
            FederationSchemaInvalid => "Federation bundle schema validation failed",
            FederationTimestampOutsideSkew => {
                "Federation bundle timestamp out of allowed clock skew"
            }
            FederationSignatureInvalid => "Federation proof-of-origin verification failed",
            FederationNonceReused | FederationNonceForeignValue => {
                "Replay detected: federation bundle nonce already used"
            }
            GraphSchemaInvalid => "Execution graph schema validation failed",
            GraphTooLarge => "Execution graph exceeds size limits",
            GraphSchemaVersionNotAllowed => "Execution graph schema version is not allowed",
            FeedbackSchemaInvalid => "Feedback query schema validation failed",
            FeedbackKeyUnavailable => "Feedback signing key load failed",
        }
    }

    /// A machine-readable refinement for the audit entry, where the reason string is shared
    /// or too coarse.
    pub fn sub_reason(self) -> Option<&'static str> {
        use Rejection::*;
        match self {
            HeaderNotPinned => Some("header_not_pinned"),
            PresentedCertificateMismatch => Some("presented_certificate_mismatch"),
            InvalidJson => Some("invalid_json"),
            SchemaInvalid => Some("schema_validation_failed"),
            CanonicalSchemaInvalid => Some("canonical_schema_failed"),
            ContractV2NotObject => Some("contract_v2_validation_failed"),
            ContractV2Invalid => Some("contract_v2_schema_failed"),
            NonceForeignValue | FederationNonceForeignValue => Some("kv_value_malformed"),
            NonceBucketUnavailable => Some("nonce_bucket_unavailable"),
            MalformedHttp
            | RequestTimeout
            | LengthRequired
            | HeaderTooLarge
            | NotFound
            | MethodNotAllowed
            | KillSwitchEngaged
            | UnsupportedMediaType
            | EmptyBody
            | BodyTooLarge
            | MissingServiceIdentity
            | MissingCertFingerprint
            | BadCertFingerprintFormat
            | UnknownServiceIdentity
            | MissingTimestamp
            | MissingNonce
            | MissingSignature
            | SignatureNotBase64
            | TimestampNotEpochSeconds
            | TimestampOutsideSkew
            | SignatureEncoding
            | SignatureInvalid
            | NonceReused
            | NonceStoreUnavailable
            | BodyTimestampMismatch
            | BodyNonceMismatch
            | SignedMetadataMismatch
            | OperatorNotMapped
            | TenantMappingViolation
            | SchemaVersionRequired
            | SchemaVersionNotAllowed
            | RateLimited
            | SpoolFull
            | DlqSpoolFull
            | Overloaded
            | PersistenceFailed
            | EndpointUnsupportedMediaType
            | PayloadRequired
            | PayloadTooLarge
            | FederationSchemaInvalid
            | FederationTimestampOutsideSkew
            | FederationSignatureInvalid
            | FederationNonceReused
            | GraphSchemaInvalid
            | GraphTooLarge
            | GraphSchemaVersionNotAllowed
            | FeedbackSchemaInvalid
            | FeedbackKeyUnavailable => None,
        }
    }

    /// Framing and routing refusals are audited as `http.rejected`, not per route.
    pub fn is_http_level(self) -> bool {
        use Rejection::*;
        matches!(
            self,
            MalformedHttp
                | RequestTimeout
                | LengthRequired
                | HeaderTooLarge
                | NotFound
                | MethodNotAllowed
                | KillSwitchEngaged
        )
    }

    /// The connection is closed after this answer (CONTRACT.md §2.3).
    pub fn closes_connection(self) -> bool {
        use Rejection::*;
        matches!(
            self,
            MalformedHttp
                | RequestTimeout
                | LengthRequired
                | HeaderTooLarge
                | BodyTooLarge
                | PayloadTooLarge
                | KillSwitchEngaged
        )
    }

    /// The DLQ error code, for the five reasons that dead-letter (CONTRACT.md §4.8).
    pub fn dlq(self) -> Option<(&'static str, &'static str)> {
        use Rejection::*;
        match self {
            InvalidJson => Some(("invalid_json", "json_decode")),
            SchemaInvalid => Some(("schema_validation_failed", "schema_validation")),
            CanonicalSchemaInvalid => Some(("canonical_schema_failed", "canonical_schema")),
            ContractV2NotObject => {
                Some(("contract_v2_validation_failed", "contract_v2_validation"))
            }
            ContractV2Invalid => Some(("contract_v2_schema_failed", "contract_v2_schema")),
            _ => None,
        }
    }

    /// Every variant, for tests that walk the table.
    pub const ALL: [Rejection; 58] = {
        use Rejection::*;
        [
            MalformedHttp,
            RequestTimeout,
            LengthRequired,
            HeaderTooLarge,
            NotFound,
            MethodNotAllowed,
            KillSwitchEngaged,
            UnsupportedMediaType,
            EmptyBody,
            BodyTooLarge,
            MissingServiceIdentity,
            MissingCertFingerprint,
            BadCertFingerprintFormat,
            UnknownServiceIdentity,
            HeaderNotPinned,
            PresentedCertificateMismatch,
            MissingTimestamp,
            MissingNonce,
            MissingSignature,
            SignatureNotBase64,
            TimestampNotEpochSeconds,
            TimestampOutsideSkew,
            SignatureEncoding,
            SignatureInvalid,
            NonceReused,
            NonceStoreUnavailable,
            NonceForeignValue,
            NonceBucketUnavailable,
            InvalidJson,
            SchemaInvalid,
            BodyTimestampMismatch,
            BodyNonceMismatch,
            CanonicalSchemaInvalid,
            ContractV2NotObject,
            ContractV2Invalid,
            SignedMetadataMismatch,
            OperatorNotMapped,
            TenantMappingViolation,
            SchemaVersionRequired,
            SchemaVersionNotAllowed,
            RateLimited,
            SpoolFull,
            DlqSpoolFull,
            Overloaded,
            PersistenceFailed,
            EndpointUnsupportedMediaType,
            PayloadRequired,
            PayloadTooLarge,
            FederationSchemaInvalid,
            FederationTimestampOutsideSkew,
            FederationSignatureInvalid,
            FederationNonceReused,
            FederationNonceForeignValue,
            GraphSchemaInvalid,
            GraphTooLarge,
            GraphSchemaVersionNotAllowed,
            FeedbackSchemaInvalid,
            FeedbackKeyUnavailable,
        ]
    };
}
