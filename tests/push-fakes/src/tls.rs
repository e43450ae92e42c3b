//! A test CA and a server certificate for 127.0.0.1 and localhost that it signed: the fakes
//! serve with the certificate, the client under test trusts the CA through its "extra CA"
//! option, exactly as a production client trusts a public root.

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A CA and the server certificate it issued.
pub struct TestPki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// A fresh CA (each call a different one: a client that trusts one does not trust another).
    pub fn generate() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "push-fakes test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "push-fakes");
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        TestPki {
            ca_pem: pem("CERTIFICATE", ca_cert.der()),
            ca_der: ca_cert.der().clone(),
            server_chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
            server_key: server_key.serialize_der(),
        }
    }

    /// One CA for the whole test process: generating keys is cheap, but sharing one means a
    /// test's client can talk to every fake another test started.
    pub fn shared() -> &'static TestPki {
        static PKI: OnceLock<TestPki> = OnceLock::new();
        PKI.get_or_init(TestPki::generate)
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate as DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The server certificate (the leaf) as DER: what a client sees presented.
    pub fn server_cert_der(&self) -> &CertificateDer<'static> {
        &self.server_chain[0]
    }

    /// The server's chain (leaf, then the CA) as PEM, for a server that reads files.
    pub fn server_chain_pem(&self) -> String {
        self.server_chain
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect()
    }

    /// The server's private key as PKCS#8 PEM.
    pub fn server_key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.server_key)
    }

    /// Writes the CA certificate as PEM to `path` (the client's extra CA file).
    pub fn write_ca_pem(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.ca_pem)
    }

    /// A rustls server configuration with the server certificate, offering `alpn` (in order
    /// of preference; empty for none).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = ring_provider();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server certificate and key");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// DER as a PEM block with the given label.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// rustls with ring, as the project chose (not aws-lc-rs). rustls 0.23.48 deprecates ring's
/// provider because it lacks the post-quantum key exchange (X25519MLKEM768, aws-lc-rs only);
/// classic X25519 is what the push services and the fakes negotiate today.
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
