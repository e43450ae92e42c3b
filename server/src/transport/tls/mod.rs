//! TLS for clients on the node's one port (`--tls-cert`, `--tls-key`): when set, every
//! connection is TLS, and ALPN offers `h2` (gRPC) and `http/1.1` (gRPC-web, WebSocket, the
//! probes), so everything the port serves in plain text it serves over TLS.
//!
//! - [`pem`]: the two files → a checked certificate and key;
//! - [`reload`]: the pair handshakes are served with, and the task that reloads it on change;
//! - [`accept`]: the handshakes, off the accept loop and under a timeout.

pub mod accept;
pub mod pem;
pub mod reload;

pub use accept::{Conn, Incoming};
pub use pem::{Files, PemError};

use super::listener::Limited;
use futures_util::Stream;
use rustls::crypto::CryptoProvider;
use std::{io, sync::Arc, time::Duration};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The server side of TLS: the acceptor and the certificate it serves.
pub struct ServerTls {
    files: Files,
    current: Arc<reload::Current>,
    acceptor: TlsAcceptor,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Pem(#[from] PemError),
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl ServerTls {
    /// Loads the pair (an error names the setting and file) and builds the acceptor.
    pub fn load(files: Files) -> Result<ServerTls, TlsError> {
        let provider = ring_provider();
        let current = Arc::new(reload::Current::new(pem::load(&files, &provider)?));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // gRPC needs h2; gRPC-web from browsers, WebSocket upgrades and probes are HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            files,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            provider,
        })
    }

    /// `incoming` after each connection's handshake.
    pub fn incoming<S>(&self, incoming: S) -> Incoming
    where
        S: Stream<Item = io::Result<Limited>> + Send + 'static,
    {
        accept::handshakes(incoming, self.acceptor.clone())
    }

    /// Starts the task that reloads the pair when the files change, every `every`.
    pub fn watch(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(reload::watch(
            self.files.clone(),
            self.current.clone(),
            self.provider.clone(),
            every,
            shutdown,
        ))
    }
}

/// The accepted connections, through TLS when `tls` is set.
pub fn incoming<S>(tls: Option<&ServerTls>, incoming: S) -> Incoming
where
    S: Stream<Item = io::Result<Limited>> + Send + 'static,
{
    match tls {
        Some(tls) => tls.incoming(incoming),
        None => accept::plain(incoming),
    }
}

/// rustls with ring, as the project chose (not aws-lc-rs). rustls 0.23.48 deprecates ring's
/// provider because it lacks the post-quantum key exchange (X25519MLKEM768, aws-lc-rs only);
/// classic X25519 is what every TLS client negotiates with it.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
