//! TLS handshakes between the accept loop and the servers. Each accepted connection gets its
//! own task for the handshake, so a client that is slow to say hello (or says garbage) holds up
//! nobody else; a handshake that has not finished within [`HANDSHAKE_TIMEOUT`] is dropped, so a
//! silent client does not keep its connection slot. A failed handshake is the client's problem:
//! logged at debug and counted (`chatd_tls_handshake_failures_total`), never an accept error.

use super::super::listener::{Limited, PeerInfo};
use crate::metrics::METRICS;
use futures_util::{Stream, StreamExt};
use std::sync::atomic::Ordering::Relaxed;
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tonic::transport::server::Connected;

/// Longest a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the servers to take them.
const READY_QUEUE: usize = 64;

/// A connection as the servers get it: plain, or after its TLS handshake.
pub enum Conn {
    Plain(Limited),
    Tls(Box<TlsStream<Limited>>),
}

/// The connections for the servers, whether TLS is on or not.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// The accepted connections as they are.
pub fn plain<S>(incoming: S) -> Incoming
where
    S: Stream<Item = io::Result<Limited>> + Send + 'static,
{
    Box::pin(incoming.map(|r| r.map(Conn::Plain)))
}

/// The accepted connections once their handshake with `acceptor` succeeded. Accept errors pass
/// through (the server logs them and goes on).
pub fn handshakes<S>(incoming: S, acceptor: TlsAcceptor) -> Incoming
where
    S: Stream<Item = io::Result<Limited>> + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel(READY_QUEUE);
    let state = (Box::pin(incoming), ready_tx, ready_rx, acceptor);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut incoming, ready_tx, mut ready_rx, acceptor)| async move {
            loop {
                tokio::select! {
                    // Never `None`: this holds a sender.
                    Some(conn) = ready_rx.recv() => {
                        return Some((Ok(conn), (incoming, ready_tx, ready_rx, acceptor)));
                    }
                    next = incoming.next() => match next {
                        // The listener is gone: handshakes still running are dropped with it.
                        None => return None,
                        Some(Err(e)) => {
                            return Some((Err(e), (incoming, ready_tx, ready_rx, acceptor)));
                        }
                        Some(Ok(io)) => {
                            tokio::spawn(handshake(io, acceptor.clone(), ready_tx.clone()));
                        }
                    },
                }
            }
        },
    ))
}

async fn handshake(io: Limited, acceptor: TlsAcceptor, ready: mpsc::Sender<Conn>) {
    let remote = io.connect_info().remote;
    let failure = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(tls)) => {
            // Fails only when the servers stopped (shutdown): the connection just closes.
            let _ = ready.send(Conn::Tls(Box::new(tls))).await;
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
    };
    METRICS.tls_handshake_failures.fetch_add(1, Relaxed);
    tracing::debug!(?remote, error = %failure, "TLS handshake failed");
}

/// The connections as a listener for axum's server (the push worker's probes).
pub struct Listener(Incoming);

impl Listener {
    pub fn new(incoming: Incoming) -> Listener {
        Listener(incoming)
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        loop {
            match self.0.next().await {
                Some(Ok(conn)) => {
                    let peer = conn.connect_info();
                    return (conn, peer);
                }
                // As axum's own listener: an accept error is logged and retried after a pause
                // (descriptors may be short for a moment).
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // The listening socket is gone: only shutdown ends axum's server now.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "connections come from the node's listener",
        ))
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(io) => io.connect_info(),
            Conn::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(io) => io.is_write_vectored(),
            Conn::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_flush(cx),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
