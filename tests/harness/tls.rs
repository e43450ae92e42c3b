//! TLS for test servers (`--tls-cert`, `--tls-key`): certificates from a test CA
//! ([`TestPki`], a new CA each time) written where chatd reads them, and raw TLS clients that
//! show which certificate the server presented and speak HTTP/1.1 by hand (probes, gRPC-web).
//! [`crate::ServerOptions::tls`] starts a server with the files; its clients (gRPC, SDK
//! configs, WebSocket) then connect over TLS trusting the CA.

use push_fakes::tls::TestPki;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, ServerName},
};

/// The certificate and key files of one test server.
pub struct CertFiles {
    _dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// `pki`'s server chain and key, in a fresh directory.
    pub fn write(pki: &TestPki) -> CertFiles {
        let dir = tempfile::Builder::new()
            .prefix("chatd-tls-")
            .tempdir()
            .expect("tempdir");
        let files = CertFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        files.replace(pki);
        files
    }

    /// Puts `pki`'s pair in place, each file replaced whole (renamed over), as a certificate
    /// manager does; the key first, so a reload in between sees a mismatched pair.
    pub fn replace(&self, pki: &TestPki) {
        self.replace_raw(&pki.server_chain_pem(), &pki.server_key_pem());
    }

    /// Any text as the two files.
    pub fn replace_raw(&self, cert: &str, key: &str) {
        atomic_write(&self.key, key);
        atomic_write(&self.cert, cert);
    }
}

fn atomic_write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// rustls with ring, as chatd itself.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `cas` only, offering `alpn`.
pub fn client_config(cas: &[&TestPki], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.ca_der().clone()).expect("test CA");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS connection to `addr` (name checked: 127.0.0.1).
pub async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(crate::RECV_TIMEOUT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
}

/// The leaf certificate the server presented and the protocol ALPN chose.
pub fn presented(tls: &TlsStream<TcpStream>) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned();
    (leaf, conn.alpn_protocol().map(<[u8]>::to_vec))
}

/// One HTTP/1.1 request written as is over a new TLS connection (ALPN `http/1.1`); the whole
/// response (the server closes after it: `Connection: close`).
pub async fn https1(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> Vec<u8> {
    let mut tls = handshake(addr, config).await.expect("TLS handshake");
    tls.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    tokio::time::timeout(crate::RECV_TIMEOUT, tls.read_to_end(&mut out))
        .await
        .expect("response within the timeout")
        .ok();
    out
}

/// `GET path` over HTTPS/1.1: the status code and the response as text.
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let raw = https1(addr, config, req.as_bytes()).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    (status_of(&text), text)
}

/// The status code of an HTTP/1.1 response (0 when there is none).
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The CA's certificate as PEM (what clients are given to trust).
pub fn ca_pem(pki: &TestPki) -> String {
    pki.ca_pem().to_string()
}
