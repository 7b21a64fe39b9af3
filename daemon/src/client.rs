//! The producer's side, for `vvctl send`, `vvctl bench` and tests: sign a body the way
//! SpectraStrike does (Ed25519 over `"{ts}.{nonce}." + body`, CJSON body, the contract's
//! headers) and send it over mutual TLS on a keep-alive HTTP/1.1 connection.
//! Blocking I/O: this runs in tools, not in the gateway.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ring::signature::Ed25519KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;

use crate::ids;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Response(String),
    #[error("event: {0}")]
    Event(String),
}

fn file_err(path: &Path, detail: impl ToString) -> ClientError {
    ClientError::File {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// A TLS client configuration presenting `cert`/`key` and trusting `ca`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
        roots
            .add(c.map_err(|e| file_err(ca, e))?)
            .map_err(|e| file_err(ca, e))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let cfg = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// A TLS client configuration without a client certificate (for negative tests).
pub fn client_config_anonymous(ca: &Path) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
        roots
            .add(c.map_err(|e| file_err(ca, e))?)
            .map_err(|e| file_err(ca, e))?;
    }
    Ok(Arc::new(
        ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// SHA-256 of the first certificate in a PEM file (the producer's `X-Client-Cert-Sha256`).
pub fn cert_fingerprint(cert: &Path) -> Result<String, ClientError> {
    let der = CertificateDer::from_pem_file(cert).map_err(|e| file_err(cert, e))?;
    Ok(ids::hex32(&ids::sha256(&der)).to_string())
}

/// The producer's Ed25519 signing key from a raw seed or PKCS#8 PEM file.
pub fn signing_key(path: &Path) -> Result<Ed25519KeyPair, ClientError> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| file_err(path, e))?);
    vvgate_hsm::file::ed25519_from_bytes(&bytes).map_err(|e| file_err(path, e))
}

/// `X-Telemetry-Signature` for a body.
pub fn sign(key: &Ed25519KeyPair, ts: u64, nonce: &str, body: &[u8]) -> String {
    let mut msg = Vec::with_capacity(body.len() + 64);
    msg.extend_from_slice(ts.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(nonce.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    base64::engine::general_purpose::STANDARD.encode(key.sign(&msg).as_ref())
}

/// The headers of a signed producer request.
#[derive(Clone, Debug, Default)]
pub struct ProducerHeaders {
    pub identity: String,
    pub cert_sha256: String,
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
    pub idempotency_key: Option<String>,
}

/// Serialise a POST request as the producer sends it.
pub fn post_request(path: &str, host: &str, h: &ProducerHeaders, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(body.len() + 512);
    let _ = write!(
        r,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vvctl/{}\r\nAccept: */*\r\nConnection: keep-alive\r\n\
Content-Type: application/json\r\nContent-Length: {}\r\nX-Service-Identity: {}\r\nX-Client-Cert-Sha256: {}\r\n\
X-Telemetry-Timestamp: {}\r\nX-Telemetry-Nonce: {}\r\nX-Telemetry-Signature: {}\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len(),
        h.identity,
        h.cert_sha256,
        h.timestamp,
        h.nonce,
        h.signature
    );
    if let Some(k) = &h.idempotency_key {
        let _ = write!(r, "Idempotency-Key: {k}\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// A response read from the gateway.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Any byte stream the client can speak HTTP over.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A keep-alive HTTP/1.1 connection (TLS or plain).
pub struct Connection {
    io: Box<dyn Stream + Send>,
    buf: Vec<u8>,
}

impl Connection {
    /// Connect with TLS and complete the handshake (so a refused certificate fails here).
    pub fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError::Response(e.to_string()))?;
        let conn = ClientConnection::new(config, name)?;
        let mut tls = StreamOwned::new(conn, tcp);
        // With TLS 1.3 the server judges our certificate after our Finished: a refusal
        // surfaces on the first read (the first response), not here.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Self {
            io: Box::new(tls),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Plain TCP (the ops listener).
    pub fn connect_plain(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        Ok(Self {
            io: Box::new(tcp),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Write raw bytes (a request, or part of one).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.io.write_all(bytes)?;
        self.io.flush()?;
        Ok(())
    }

    /// Send one request and read its response.
    pub fn send(&mut self, request: &[u8]) -> Result<HttpResponse, ClientError> {
        self.write_raw(request)?;
        self.read_response()
    }

    /// Read one response (skipping `100 Continue`).
    pub fn read_response(&mut self) -> Result<HttpResponse, ClientError> {
        loop {
            let r = self.read_one()?;
            if r.status != 100 {
                return Ok(r);
            }
        }
    }

    fn read_one(&mut self) -> Result<HttpResponse, ClientError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = resp.code.unwrap_or(0);
                    let headers: Vec<(String, String)> = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while self.buf.len() < head_len + len {
                        self.fill()?;
                    }
                    let body = self.buf[head_len..head_len + len].to_vec();
                    self.buf.drain(..head_len + len);
                    return Ok(HttpResponse {
                        status,
                        headers,
                        body,
                    });
                }
                Ok(httparse::Status::Partial) => self.fill()?,
                Err(e) => return Err(ClientError::Response(e.to_string())),
            }
        }
    }

    fn fill(&mut self) -> Result<(), ClientError> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.io.read(&mut chunk)?;
        if n == 0 {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the gateway",
            )));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// A producer: its TLS identity and signing key.
pub struct Producer {
    pub tls: Arc<ClientConfig>,
    pub identity: String,
    pub cert_sha256: String,
    pub key: Ed25519KeyPair,
}

impl Producer {
    /// Load from files.
    pub fn load(
        ca: &Path,
        cert: &Path,
        key: &Path,
        signing: &Path,
        identity: &str,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            tls: client_config(ca, cert, key)?,
            identity: identity.to_owned(),
            cert_sha256: cert_fingerprint(cert)?,
            key: signing_key(signing)?,
        })
    }

    /// Sign `body` (already CJSON) for `ts`/`nonce` and serialise the request.
    pub fn request(
        &self,
        host: &str,
        ts: u64,
        nonce: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Vec<u8> {
        let h = self.headers(ts, nonce, body, idempotency_key);
        post_request("/internal/v1/telemetry", host, &h, body)
    }

    pub fn headers(
        &self,
        ts: u64,
        nonce: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> ProducerHeaders {
        ProducerHeaders {
            identity: self.identity.clone(),
            cert_sha256: self.cert_sha256.clone(),
            timestamp: ts.to_string(),
            nonce: nonce.to_owned(),
            signature: sign(&self.key, ts, nonce, body),
            idempotency_key: idempotency_key.map(str::to_owned),
        }
    }
}

/// The sample event shipped with vvctl (the contract's producer request).
pub const SAMPLE_EVENT: &str = include_str!("../data/sample-event.json");

/// Fill an event template the way the producer does for a new event: `timestamp`, `nonce`
/// (also `payload.event_id` and `payload.attributes.nonce` when present), then serialise as
/// CJSON. Fields the template leaves out stay out.
pub fn prepare_event(
    template: &serde_json::Value,
    ts: u64,
    nonce: &str,
) -> Result<Vec<u8>, ClientError> {
    let mut v = template.clone();
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ClientError::Event("an event must be a JSON object".into()))?;
    obj.insert("timestamp".into(), ts.into());
    obj.insert("nonce".into(), nonce.into());
    if let Some(p) = obj.get_mut("payload").and_then(|p| p.as_object_mut()) {
        p.insert("event_id".into(), nonce.into());
        if let Some(a) = p.get_mut("attributes").and_then(|a| a.as_object_mut()) {
            if a.contains_key("nonce") {
                a.insert("nonce".into(), nonce.into());
            }
        }
    }
    canonical(&v)
}

/// CJSON of a serde value (through the gateway's own canonical writer).
pub fn canonical(v: &serde_json::Value) -> Result<Vec<u8>, ClientError> {
    let text = serde_json::to_vec(v).map_err(|e| ClientError::Event(e.to_string()))?;
    crate::json::canonicalize_doc(&text).map_err(|e| ClientError::Event(e.to_string()))
}
