//! WebSocket handshakes beside tonic's server. tonic serves HTTP/1.1 with hyper's plain
//! `serve_connection`, which cannot upgrade: it would answer `101 Switching Protocols` and then
//! drop the socket. So each accepted connection is sorted by its first bytes: one that opens
//! with `GET /ws` goes to axum's server (which upgrades) on the node's router; every other one
//! (HTTP/2 gRPC, gRPC-web, probes, the web page) goes on to tonic untouched, the sorted bytes
//! put back in front. A WebSocket handshake must therefore be the first request on its
//! connection, which is how browsers and WebSocket libraries open one. Like tonic's server,
//! axum's puts the connection's `ConnectInfo` in each request's extensions.

use axum::Router;
use futures_util::{Stream, StreamExt};
use std::{
    fmt::Debug,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// The request line's start that sends a connection to the WebSocket server; the byte after it
/// must end the path (` ` or `?`), so `/wsx` is not taken for `/ws`.
const WS_REQUEST: &[u8] = b"GET /ws";
/// Bytes read to sort a connection.
const SORT_BYTES: usize = WS_REQUEST.len() + 1;
/// How long a connection may stay silent before it is handed to tonic as it is (whose HTTP
/// timeouts then apply, as before this sorting existed).
const SORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Sorted connections waiting for their server to accept them.
const ACCEPT_QUEUE: usize = 64;

/// A connection with the bytes read to sort it put back in front.
pub struct Rewound<T> {
    head: Vec<u8>,
    /// How much of `head` has been read again.
    pos: usize,
    io: T,
}

/// The connections that are not WebSocket handshakes, for tonic's server.
pub struct Rest<T>(mpsc::Receiver<io::Result<Rewound<T>>>);

impl<T> Stream for Rest<T> {
    type Item = io::Result<Rewound<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Sorts `incoming` until `shutdown`: returns the rest for tonic, and the future that serves
/// the WebSocket handshakes on `router` (it ends after `shutdown`, once axum's server stopped;
/// upgraded sockets live on in their own tasks).
pub fn split<S, T>(
    incoming: S,
    router: Router,
    shutdown: CancellationToken,
) -> (Rest<T>, impl Future<Output = ()> + Send)
where
    S: Stream<Item = io::Result<T>> + Send + 'static,
    T: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    T::ConnectInfo: Debug + Clone + Send + Sync + 'static,
{
    let (rest_tx, rest_rx) = mpsc::channel(ACCEPT_QUEUE);
    let (ws_tx, ws_rx) = mpsc::channel(ACCEPT_QUEUE);
    let accept = {
        let shutdown = shutdown.clone();
        async move {
            let mut incoming = std::pin::pin!(incoming);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = incoming.next() => next,
                };
                match next {
                    None => break,
                    // tonic logs accept errors and goes on; let it keep doing so.
                    Some(Err(e)) => {
                        if rest_tx.send(Err(e)).await.is_err() {
                            break;
                        }
                    }
                    // Sorting waits for the client's first bytes: never in the accept loop.
                    Some(Ok(io)) => {
                        tokio::spawn(sort(io, rest_tx.clone(), ws_tx.clone()));
                    }
                }
            }
            // Dropping `incoming` here closes the listening socket, as tonic does at shutdown.
        }
    };
    let serve = async move {
        let listener = Handshakes(ws_rx);
        let served = axum::serve(listener, WithConnectInfo(router))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the WebSocket handshake server stopped");
        }
    };
    let both = async move {
        tokio::join!(accept, serve);
    };
    (Rest(rest_rx), both)
}

/// Reads a connection's first bytes and hands it to the server that speaks its protocol.
async fn sort<T>(
    mut io: T,
    rest: mpsc::Sender<io::Result<Rewound<T>>>,
    ws: mpsc::Sender<Rewound<T>>,
) where
    T: AsyncRead + Unpin,
{
    let mut head = [0u8; SORT_BYTES];
    let mut len = 0;
    let read = tokio::time::timeout(SORT_TIMEOUT, async {
        while len < SORT_BYTES && could_be_ws(&head[..len]) {
            match io.read(&mut head[len..]).await {
                // Gone before saying anything: nothing to serve.
                Ok(0) | Err(_) => return false,
                Ok(n) => len += n,
            }
        }
        true
    })
    .await;
    if read == Ok(false) {
        return;
    }
    let is_ws = len == SORT_BYTES && could_be_ws(&head);
    let io = Rewound {
        head: head[..len].to_vec(),
        pos: 0,
        io,
    };
    // A send fails only when that server has stopped (shutdown): the connection just closes.
    if is_ws {
        let _ = ws.send(io).await;
    } else {
        let _ = rest.send(Ok(io)).await;
    }
}

/// Whether `head` is the start of `GET /ws` followed by ` ` or `?`.
fn could_be_ws(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .all(|(i, b)| match WS_REQUEST.get(i) {
            Some(want) => b == want,
            None => *b == b' ' || *b == b'?',
        })
}

/// The sorted WebSocket handshakes, as a listener for axum's server.
struct Handshakes<T>(mpsc::Receiver<Rewound<T>>);

impl<T> axum::serve::Listener for Handshakes<T>
where
    T: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    T::ConnectInfo: Send,
{
    type Io = Rewound<T>;
    type Addr = T::ConnectInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.recv().await {
            Some(io) => {
                let addr = io.io.connect_info();
                (io, addr)
            }
            // Sorting stopped (shutdown): axum's server is being shut down too.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "handshakes come from the node's listener",
        ))
    }
}

/// Makes each handshake connection's service: the router, with the connection's `ConnectInfo`
/// put in every request's extensions (as tonic's server does for the other connections).
#[derive(Clone)]
struct WithConnectInfo(Router);

impl<'a, T> tower::Service<axum::serve::IncomingStream<'a, Handshakes<T>>> for WithConnectInfo
where
    T: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    T::ConnectInfo: Clone + Send + Sync + 'static,
{
    type Response = ConnectionService<T::ConnectInfo>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: axum::serve::IncomingStream<'a, Handshakes<T>>) -> Self::Future {
        std::future::ready(Ok(ConnectionService {
            info: stream.remote_addr().clone(),
            router: self.0.clone(),
        }))
    }
}

/// The router for one connection, whose `ConnectInfo` it adds to each request.
#[derive(Clone)]
struct ConnectionService<C> {
    info: C,
    router: Router,
}

impl<C: Clone + Send + Sync + 'static> tower::Service<axum::extract::Request>
    for ConnectionService<C>
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = <Router as tower::Service<axum::extract::Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<axum::extract::Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: axum::extract::Request) -> Self::Future {
        req.extensions_mut().insert(self.info.clone());
        self.router.call(req)
    }
}

impl<T: Connected> Connected for Rewound<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewound<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let from = self.pos;
            buf.put_slice(&self.head[from..from + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewound<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ws_path_is_sorted_out() {
        assert!(could_be_ws(b""));
        assert!(could_be_ws(b"GET /w"));
        assert!(could_be_ws(b"GET /ws "));
        assert!(could_be_ws(b"GET /ws?"));
        assert!(!could_be_ws(b"GET /wsx"));
        assert!(!could_be_ws(b"GET /healthz"));
        assert!(!could_be_ws(b"PRI * HTTP/2.0"));
        assert!(!could_be_ws(b"POST /ws "));
    }

    #[tokio::test]
    async fn sorted_bytes_are_read_again() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI * HTTP/2.0\r\n")
            .await
            .unwrap();
        let mut io = Rewound {
            head: b"PRI".to_vec(),
            pos: 0,
            io: server,
        };
        // The duplex end stands in for a connection that already gave up its first 3 bytes.
        let mut skip = [0u8; 3];
        io.io.read_exact(&mut skip).await.unwrap();
        let mut got = [0u8; 16];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PRI * HTTP/2.0\r\n");
    }
}
