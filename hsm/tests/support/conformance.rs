//! The conformance suite: what every [`KeyStore`] backend must do, whatever holds the keys.

use std::io::{Read, Write};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519};
use rustls::crypto::ring::default_provider;
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
    SignatureAlgorithm, SignatureScheme, SupportedProtocolVersion,
};
use vvgate_hsm::{HsmError, KeyRef, KeyStore};

/// The keys the suite uses.
pub struct SuiteKeys {
    pub tls: KeyRef,
    pub tls_ed25519: Option<KeyRef>,
    pub checkpoint: KeyRef,
    pub feedback: KeyRef,
    pub kek: KeyRef,
}

/// Run the whole suite.
pub fn run(store: &dyn KeyStore, keys: &SuiteKeys) {
    assert!(!store.backend().is_empty());
    record_signers(store, keys);
    kek(store, keys);
    tls_p256(store, &keys.tls);
    if let Some(ed) = &keys.tls_ed25519 {
        tls_ed25519(store, ed);
    }
    wrong_kinds(store, keys);
    concurrent_use(store, keys);
}

fn record_signers(store: &dyn KeyStore, keys: &SuiteKeys) {
    let cp = store.record_signer(&keys.checkpoint).unwrap();
    let fb = store.record_signer(&keys.feedback).unwrap();
    assert_ne!(cp.public_key(), fb.public_key(), "two distinct keys");
    assert_eq!(
        store.record_signer(&keys.checkpoint).unwrap().public_key(),
        cp.public_key(),
        "loading again gives the same key"
    );
    for signer in [&cp, &fb] {
        let pk = UnparsedPublicKey::new(&ED25519, signer.public_key());
        for msg in [&b""[..], b"x", &[0xa5; 1024][..]] {
            let sig = signer.sign(msg).unwrap();
            pk.verify(msg, &sig).expect("Ed25519 signature verifies");
            assert_eq!(signer.sign(msg).unwrap(), sig, "Ed25519 is deterministic");
            let mut tampered = msg.to_vec();
            tampered.push(0);
            assert!(
                pk.verify(&tampered, &sig).is_err(),
                "tampered message refused"
            );
        }
    }
    // Each key verifies only its own signatures.
    let sig = cp.sign(b"checkpoint").unwrap();
    assert!(UnparsedPublicKey::new(&ED25519, fb.public_key())
        .verify(b"checkpoint", &sig)
        .is_err());
}

fn kek(store: &dyn KeyStore, keys: &SuiteKeys) {
    let kek = store.kek(&keys.kek).unwrap();
    let dek = [0x5au8; 32];
    let aad = b"blob-1 || kek-0401";
    let sealed = kek.seal_dek(&dek, aad).unwrap();
    assert_ne!(&sealed.ct[..32], &dek[..], "sealed, not copied");
    assert_eq!(*kek.open_dek(&sealed, aad).unwrap(), dek);
    let again = kek.seal_dek(&dek, aad).unwrap();
    assert_ne!(again.iv, sealed.iv, "a fresh IV per seal");
    assert_eq!(*kek.open_dek(&again, aad).unwrap(), dek);
    let refused = |s: &vvgate_hsm::SealedDek, aad: &[u8], what: &str| match kek.open_dek(s, aad) {
        Err(HsmError::AuthenticationFailed) => {}
        Err(e) => panic!("{what}: expected AuthenticationFailed, got {e}"),
        Ok(_) => panic!("{what}: opened"),
    };
    for bit in [0usize, 100, 255, 300, 383] {
        let mut bad = sealed.clone();
        bad.ct[bit / 8] ^= 1 << (bit % 8);
        refused(&bad, aad, &format!("ciphertext/tag bit {bit} flipped"));
    }
    let mut bad = sealed.clone();
    bad.iv[0] ^= 1;
    refused(&bad, aad, "IV changed");
    refused(&sealed, b"blob-2 || kek-0401", "other AAD");
    refused(&sealed, b"", "empty AAD");
    // Still usable after failures.
    assert_eq!(*kek.open_dek(&sealed, aad).unwrap(), dek);
}

/// The 65-byte P-256 point at the end of an ECDSA SPKI.
fn spki_point(spki: &[u8]) -> &[u8] {
    &spki[spki.len() - 65..]
}

fn tls_p256(store: &dyn KeyStore, key: &KeyRef) {
    let k = store.tls_key(key).unwrap();
    assert_eq!(k.algorithm(), SignatureAlgorithm::ECDSA);
    let spki = k.public_key().expect("SPKI").as_ref().to_vec();
    assert!(k
        .choose_scheme(&[SignatureScheme::ED25519, SignatureScheme::RSA_PSS_SHA256])
        .is_none());
    assert!(k
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP384_SHA384])
        .is_none());
    let signer = k
        .choose_scheme(&[
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::ECDSA_NISTP256_SHA256,
        ])
        .expect("P-256 offered");
    assert_eq!(signer.scheme(), SignatureScheme::ECDSA_NISTP256_SHA256);
    let pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, spki_point(&spki));
    for msg in [&b"tls 1.3 transcript"[..], &[7u8; 300][..]] {
        let sig = signer.sign(msg).unwrap();
        pk.verify(msg, &sig).expect("DER ECDSA signature verifies");
    }
    handshake(k.clone(), &TLS13);
    handshake(k, &TLS12);
}

fn tls_ed25519(store: &dyn KeyStore, key: &KeyRef) {
    let k = store.tls_key(key).unwrap();
    assert_eq!(k.algorithm(), SignatureAlgorithm::ED25519);
    assert!(k
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .is_none());
    let signer = k.choose_scheme(&[SignatureScheme::ED25519]).unwrap();
    let spki = k.public_key().unwrap().as_ref().to_vec();
    let sig = signer.sign(b"hello").unwrap();
    UnparsedPublicKey::new(&ED25519, &spki[spki.len() - 32..])
        .verify(b"hello", &sig)
        .unwrap();
    handshake(k.clone(), &TLS13);
    handshake(k, &TLS12);
}

/// Kinds every backend tells apart. (The file backend cannot tell a raw 32-byte Ed25519 seed
/// from a raw 32-byte KEK; the PKCS#11 backend can, see `pkcs11_conformance`.)
fn wrong_kinds(store: &dyn KeyStore, keys: &SuiteKeys) {
    assert!(
        store.record_signer(&keys.tls).is_err(),
        "P-256 is no record signer"
    );
    assert!(store.tls_key(&keys.kek).is_err(), "a KEK is no TLS key");
}

fn concurrent_use(store: &dyn KeyStore, keys: &SuiteKeys) {
    let cp = store.record_signer(&keys.checkpoint).unwrap();
    let kek = store.kek(&keys.kek).unwrap();
    let tls = store.tls_key(&keys.tls).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (cp, kek, tls) = (cp.clone(), kek.clone(), tls.clone());
            s.spawn(move || {
                let pk = UnparsedPublicKey::new(&ED25519, cp.public_key());
                let spki = tls.public_key().unwrap().as_ref().to_vec();
                let tls_pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, spki_point(&spki));
                let signer = tls
                    .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
                    .unwrap();
                for i in 0..25u8 {
                    let msg = [t, i];
                    pk.verify(&msg, &cp.sign(&msg).unwrap()).unwrap();
                    tls_pk.verify(&msg, &signer.sign(&msg).unwrap()).unwrap();
                    let dek = [i; 32];
                    let sealed = kek.seal_dek(&dek, &msg).unwrap();
                    assert_eq!(*kek.open_dek(&sealed, &msg).unwrap(), dek);
                }
            });
        }
    });
}

/// A full in-memory handshake with `key` as the server key, and one request each way.
pub fn handshake(key: Arc<dyn SigningKey>, version: &'static SupportedProtocolVersion) {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vvgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let spki = key.public_key().expect("the key has an SPKI");
    let public = rcgen::SubjectPublicKeyInfo::from_der(spki.as_ref()).unwrap();
    let leaf = CertificateParams::new(vec!["gateway.test".to_owned()])
        .unwrap()
        .signed_by(&public, &issuer)
        .unwrap();
    let ck = CertifiedKey::new(vec![leaf.der().clone()], key);
    ck.keys_match().expect("certificate and key match");

    let provider = Arc::new(default_provider());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(ck)));
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = Connection::Client(
        ClientConnection::new(Arc::new(client), "gateway.test".try_into().unwrap()).unwrap(),
    );
    let mut s = Connection::Server(ServerConnection::new(Arc::new(server)).unwrap());
    for _ in 0..20 {
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        pump(&mut c, &mut s);
        pump(&mut s, &mut c);
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake finished"
    );
    assert_eq!(c.protocol_version(), Some(version.version));
    c.writer().write_all(b"ping").unwrap();
    pump(&mut c, &mut s);
    let mut buf = [0u8; 4];
    s.reader().read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.writer().write_all(b"pong").unwrap();
    pump(&mut s, &mut c);
    c.reader().read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

fn pump(from: &mut Connection, to: &mut Connection) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
    }
    to.process_new_packets().expect("peer accepts the records");
}
