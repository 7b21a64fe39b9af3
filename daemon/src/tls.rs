//! Stage 1: mutual TLS (CONTRACT.md §3.1 step T0, §3.2).
//!
//! A client certificate is required, must chain to `client_ca_path` (and pass the configured
//! CRLs), and its SHA-256 must be pinned for some identity, or the handshake is refused before
//! any HTTP is read. Which identity it may claim is checked per request (`ingest`, steps 4–6).
//! Session resumption is off: every connection runs the full chain, CRL and pin checks.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use vvgate_hsm::{HsmError, KeyStore};

use crate::config::{Config, TlsVersion};
use crate::ids;

/// Why the TLS setup could not be built. Each variant names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.server_cert_path {path}: {detail}")]
    ServerCert { path: String, detail: String },
    #[error("tls.server_key: {0}")]
    ServerKey(#[from] HsmError),
    #[error("tls.server_key does not match the certificate in tls.server_cert_path: {0}")]
    KeyMismatch(String),
    #[error("tls.client_ca_path {path}: {detail}")]
    ClientCa { path: String, detail: String },
    #[error("tls.crl_paths {path}: {detail}")]
    Crl { path: String, detail: String },
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// SHA-256 of a DER certificate: the pin and `X-Client-Cert-Sha256` value.
pub fn fingerprint(cert: &[u8]) -> [u8; 32] {
    ids::sha256(cert)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())?;
    let certs: Vec<_> = iter.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// The producer listener's TLS configuration with the parts a reload needs.
pub struct TlsSetup {
    pub server: Arc<ServerConfig>,
    /// CA, CRLs and pins: re-checks open connections after a reload.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The earliest `nextUpdate` of the configured CRLs, Unix seconds (`None`: no CRL).
    pub crl_next_update: Option<u64>,
}

/// The `nextUpdate` of a DER CRL, Unix seconds. x509-parser reads it: rustls-webpki checks
/// it but does not expose it, and readiness must say when a CRL has expired.
fn crl_next_update(der: &[u8]) -> Result<u64, String> {
    let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| format!("not a CRL: {e}"))?;
    let next = crl
        .next_update()
        .ok_or("the CRL has no nextUpdate: it would never expire")?;
    u64::try_from(next.timestamp()).map_err(|_| "nextUpdate before 1970".to_string())
}

/// Build the producer listener's TLS configuration and keep its verifier (start and reload).
pub fn server_setup(cfg: &Config, keystore: &dyn KeyStore) -> Result<TlsSetup, TlsError> {
    let t = &cfg.tls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let chain = read_certs(&t.server_cert_path).map_err(|detail| TlsError::ServerCert {
        path: t.server_cert_path.display().to_string(),
        detail,
    })?;
    let key = keystore.tls_key(&t.server_key)?;
    let certified = CertifiedKey::new(chain, key);
    certified
        .keys_match()
        .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;

    let ca = |detail: String| TlsError::ClientCa {
        path: t.client_ca_path.display().to_string(),
        detail,
    };
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&t.client_ca_path).map_err(ca)? {
        roots
            .add(cert)
            .map_err(|e| ca(format!("not a usable CA certificate: {e}")))?;
    }
    let mut crls = Vec::new();
    let mut next_update = None;
    for path in &t.crl_paths {
        let bad = |detail: String| TlsError::Crl {
            path: path.display().to_string(),
            detail,
        };
        let iter =
            CertificateRevocationListDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
        let mut found = false;
        for crl in iter {
            let crl = crl.map_err(|e| bad(e.to_string()))?;
            let next = crl_next_update(&crl).map_err(&bad)?;
            next_update = Some(next_update.map_or(next, |n: u64| n.min(next)));
            crls.push(crl);
            found = true;
        }
        if !found {
            return Err(bad("no PEM CRL found".into()));
        }
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if !crls.is_empty() {
        // A CRL past its nextUpdate fails closed.
        builder = builder.with_crls(crls).enforce_revocation_expiration();
    }
    let inner = builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier: Arc<dyn ClientCertVerifier> = Arc::new(PinnedClientVerifier {
        inner,
        pins: cfg.identities.by_pin.keys().copied().collect(),
    });

    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V13 => &[&rustls::version::TLS13],
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::clone(&verifier))
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    sc.session_storage = Arc::new(NoServerSessionStorage {});
    sc.send_tls13_tickets = 0;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    sc.ignore_client_order = true;
    Ok(TlsSetup {
        server: Arc::new(sc),
        verifier,
        crl_next_update: next_update,
    })
}

/// The certificate is valid but its fingerprint is not pinned for any identity.
#[derive(Debug)]
struct NotPinned;

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client certificate is not pinned for any service identity")
    }
}

impl std::error::Error for NotPinned {}

/// The CA and CRL checks of webpki, then the pin set.
#[derive(Debug)]
struct PinnedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    pins: HashSet<[u8; 32]>,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.pins.contains(&fingerprint(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NotPinned)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The `sub_reason` of a refused handshake, for the `tls.rejected` audit entry and metrics.
pub fn classify(err: &io::Error) -> &'static str {
    let Some(e) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            io::ErrorKind::TimedOut => "handshake_timeout",
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => "connection_closed",
            _ => "handshake_failed",
        };
    };
    match e {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Revoked => "certificate_revoked",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_yet_valid"
            }
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "crl_unavailable",
            CertificateError::Other(o) if o.0.downcast_ref::<NotPinned>().is_some() => {
                "certificate_not_pinned"
            }
            _ => "certificate_invalid",
        },
        rustls::Error::Other(o) if o.0.downcast_ref::<vvgate_hsm::HsmError>().is_some() => {
            "keystore_unavailable"
        }
        rustls::Error::PeerIncompatible(_) => "incompatible_client",
        rustls::Error::InvalidMessage(_) => "malformed_handshake",
        _ => "handshake_failed",
    }
}

/// The crypto provider for client-side tools (vvctl).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
