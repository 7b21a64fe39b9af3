//! Development PKI and configuration: what `vvgated --dev` creates on first start and
//! `vvctl dev-pki` prints. Never for production: every key is a file.
//!
//! Layout of a dev PKI directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the dev CA (ECDSA P-256) |
//! | `server.pem`, `server.key` | the gateway's TLS certificate (SAN localhost, 127.0.0.1, ::1) |
//! | `producer.pem`, `producer.key` | the producer's client certificate (CN spectrastrike-producer) |
//! | `producer.sha256` | its pin (SHA-256 of the DER, lowercase hex) |
//! | `producer-signing.seed`, `producer-signing.pub.b64` | the producer's Ed25519 signing key and public key |
//! | `checkpoint.pem`, `feedback.pem` | Ed25519 keys of the gateway (PKCS#8) |
//! | `evidence-kek.bin` | a 32-byte AES-256 KEK |

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use ring::rand::SecureRandom;
use ring::signature::KeyPair as _;
pub use vvgate_hsm::file::write_private;

use crate::ids;

/// The producer identity of the dev PKI.
pub const DEV_IDENTITY: &str = "spectrastrike-producer";
/// The operator and tenant of the dev configuration.
pub const DEV_OPERATOR: &str = "op-001";
pub const DEV_TENANT: &str = "10000000-0000-0000-0000-000000000001";

#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("key generation failed")]
    Random,
    #[error("CRL generation failed: {0}")]
    Crl(String),
}

/// What a dev PKI holds, for printing and for the dev configuration.
#[derive(Clone, Debug)]
pub struct DevPki {
    pub dir: PathBuf,
    /// Pin of the producer's client certificate.
    pub producer_pin: String,
    /// The producer's Ed25519 public key, standard base64.
    pub producer_public_b64: String,
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), DevPkiError> {
    let r = if private {
        write_private(path, bytes)
    } else {
        std::fs::write(path, bytes)
    };
    r.map_err(|source| DevPkiError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// PEM-encode DER bytes.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn random<const N: usize>() -> Result<[u8; N], DevPkiError> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| DevPkiError::Random)?;
    Ok(b)
}

/// A certificate authority that can issue dev certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl DevCa {
    /// A new CA named `cn`.
    pub fn new(cn: &str) -> Result<Self, DevPkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Load a CA written by [`DevCa::save`].
    pub fn load(dir: &Path) -> Result<Self, DevPkiError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| DevPkiError::Read {
                path: p.display().to_string(),
                detail: e.to_string(),
            })
        };
        let cert_pem = read("ca.pem")?;
        let key = KeyPair::from_pem(&read("ca.key")?)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(&cert_pem, key)?,
            cert_pem,
        })
    }

    /// Write `ca.pem` and `ca.key` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), DevPkiError> {
        write(&dir.join("ca.pem"), self.cert_pem.as_bytes(), false)?;
        write(
            &dir.join("ca.key"),
            self.issuer.key().serialize_pem().as_bytes(),
            true,
        )
    }

    /// Issue a certificate: a server certificate when `sans` is non-empty, else a client
    /// certificate for `cn`. Returns (certificate PEM, private key PEM, certificate DER).
    pub fn issue(&self, cn: &str, sans: &[&str]) -> Result<(String, String, Vec<u8>), DevPkiError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if sans.is_empty() {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random::<16>()?));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
    }

    /// Issue a server certificate for a certificate signing request (its subject and
    /// subjectAltNames, e.g. a CSR made by `vvctl keys csr` for a key in the token). Returns
    /// the certificate PEM.
    pub fn sign_csr(&self, csr_pem: &str) -> Result<String, DevPkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        csr.params.serial_number = Some(rcgen::SerialNumber::from_slice(&random::<16>()?));
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// A CRL (PEM) revoking the certificates `revoked` (DER), valid from `this_update` until
    /// `next_update` (Unix seconds).
    pub fn crl(
        &self,
        revoked: &[&[u8]],
        this_update: i64,
        next_update: i64,
    ) -> Result<String, DevPkiError> {
        let at = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .map_err(|e| DevPkiError::Crl(e.to_string()))
        };
        let mut revoked_certs = Vec::new();
        for der in revoked {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| DevPkiError::Crl(format!("not a certificate: {e}")))?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: at(this_update)?,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: at(this_update)?,
            next_update: at(next_update)?,
            crl_number: rcgen::SerialNumber::from_slice(&this_update.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Issue a client certificate into `dir/<name>.pem` and `<name>.key`; returns its pin.
    pub fn issue_client(&self, dir: &Path, name: &str, cn: &str) -> Result<String, DevPkiError> {
        let (cert, key, der) = self.issue(cn, &[])?;
        write(&dir.join(format!("{name}.pem")), cert.as_bytes(), false)?;
        write(&dir.join(format!("{name}.key")), key.as_bytes(), true)?;
        let pin = ids::hex32(&ids::sha256(&der)).to_string();
        write(&dir.join(format!("{name}.sha256")), pin.as_bytes(), false)?;
        Ok(pin)
    }
}

/// Write an Ed25519 key as PKCS#8 PEM; returns its public key.
pub fn write_ed25519_pem(path: &Path) -> Result<[u8; 32], DevPkiError> {
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| DevPkiError::Random)?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| DevPkiError::Random)?;
    write(path, pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes(), true)?;
    let mut pk = [0u8; 32];
    pk.copy_from_slice(pair.public_key().as_ref());
    Ok(pk)
}

/// Create a complete dev PKI in `dir`.
pub fn generate(dir: &Path) -> Result<DevPki, DevPkiError> {
    std::fs::create_dir_all(dir).map_err(|source| DevPkiError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let ca = DevCa::new("vvgate dev CA")?;
    ca.save(dir)?;
    let (cert, key, _) = ca.issue("localhost", &["localhost", "127.0.0.1", "::1"])?;
    write(&dir.join("server.pem"), cert.as_bytes(), false)?;
    write(&dir.join("server.key"), key.as_bytes(), true)?;
    let producer_pin = ca.issue_client(dir, "producer", DEV_IDENTITY)?;

    let seed = random::<32>()?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| DevPkiError::Random)?;
    let producer_public_b64 =
        base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
    write(&dir.join("producer-signing.seed"), &seed, true)?;
    write(
        &dir.join("producer-signing.pub.b64"),
        format!("{producer_public_b64}\n").as_bytes(),
        false,
    )?;
    write_ed25519_pem(&dir.join("checkpoint.pem"))?;
    write_ed25519_pem(&dir.join("feedback.pem"))?;
    write(&dir.join("evidence-kek.bin"), &random::<32>()?, true)?;
    Ok(DevPki {
        dir: dir.to_owned(),
        producer_pin,
        producer_public_b64,
    })
}

/// The dev configuration for a PKI in `<dir>/pki`, listening on `listen` and `ops_listen`.
pub fn dev_config(pki: &DevPki, listen: &str, ops_listen: &str) -> String {
    format!(
        r#"# vvgate development configuration, written by `vvgated --dev`.
# Every key here is a file: never use this in production (mode = "production" refuses it).
# Reference: docs/config.md.

[telemetry_gateway]
mode = "dev"
state_dir = "."
listen = "{listen}"
spectrastrike_ed25519_public_key_b64 = "{pk}"
allowed_service_identities = {{ "{id}" = "{pin}" }}
operator_tenant_map = {{ "{op}" = "{tenant}" }}
feedback_active_kid = "vv-fb-dev"
feedback_ed25519_keys = {{ "vv-fb-dev" = "file:pki/feedback.pem" }}

[tls]
server_cert_path = "pki/server.pem"
server_key = "file:pki/server.key"
client_ca_path = "pki/ca.pem"

[audit]
checkpoint_origin = "vvgate.dev.local/audit"
checkpoint_key = "file:pki/checkpoint.pem"

[keystore]
backend = "file"

[ops]
listen = "{ops_listen}"

[evidence]
active_key_id = "vv-evidence-kek-v1"
keys = {{ "vv-evidence-kek-v1" = "file:pki/evidence-kek.bin" }}
"#,
        pk = pki.producer_public_b64,
        id = DEV_IDENTITY,
        pin = pki.producer_pin,
        op = DEV_OPERATOR,
        tenant = DEV_TENANT,
    )
}

/// Create `<dir>/vvgate.toml` and `<dir>/pki/` unless the configuration already exists.
/// Returns the configuration path and whether it was created now.
pub fn ensure_dev_dir(
    dir: &Path,
    listen: &str,
    ops_listen: &str,
) -> Result<(PathBuf, bool), DevPkiError> {
    let config = dir.join("vvgate.toml");
    if config.exists() {
        return Ok((config, false));
    }
    std::fs::create_dir_all(dir).map_err(|source| DevPkiError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let pki = generate(&dir.join("pki"))?;
    write(
        &config,
        dev_config(&pki, listen, ops_listen).as_bytes(),
        false,
    )?;
    Ok((config, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_dir_yields_a_valid_config() {
        let dir = std::env::temp_dir().join(format!("vvgate-devpki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (path, created) = ensure_dev_dir(&dir, "127.0.0.1:0", "127.0.0.1:0").unwrap();
        assert!(created);
        let cfg = crate::config::Config::load_with_env(&path, &|_| None).unwrap();
        assert_eq!(cfg.state_dir, dir);
        // Keys and certificates load and match.
        crate::run::prepare(cfg, crate::run::StartupProgress::begin()).unwrap();
        let (_, again) = ensure_dev_dir(&dir, "x", "y").unwrap();
        assert!(!again, "an existing dev directory is reused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
