//! The WebSocket door for the simplest clients (browsers without gRPC-web, scripts): `GET /ws`
//! upgrades to a WebSocket that carries the session stream as type-tagged camelCase JSON text
//! frames (`docs/websocket.md`). It runs the very session `Connect` runs — same resume, limits,
//! heartbeats and errors — and only translates: JSON into [`Command`](crate::session::Command)s
//! and [`Output`](crate::session::Output)s into JSON (`frames.rs`), over one socket loop per
//! connection (`socket.rs`). The token in the opening `connect` frame, checked by the same
//! [`Authenticator`] as every gRPC call, decides who the client is.
//!
//! tonic's server does not upgrade HTTP/1.1 connections, so the connections that open with
//! `GET /ws` are served beside it by axum's server on the same router (`upgrades.rs`).

pub mod frames;
mod socket;
mod upgrades;

pub use upgrades::{Rest, Rewound};

use crate::auth::Authenticator;
use crate::session;
use crate::transport::listener::PeerInfo;
use axum::{
    extract::{ws::WebSocketUpgrade, State},
    http::{Extensions, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use futures_util::Stream;
use std::{future::Future, io, sync::Arc};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

/// Bytes read from a socket at a time. The WebSocket layer allocates this much per socket up
/// front (its default, 128 KiB, was four fifths of an idle socket's memory); a larger frame is
/// read in several steps.
const READ_BUFFER: usize = 4 * 1024;
/// Frames gathered before a write to the connection (a flush writes them all anyway). The
/// buffer keeps its size once grown, so it bounds what a busy socket holds between bursts.
const WRITE_BUFFER: usize = 16 * 1024;

/// The `/ws` endpoint and what its sockets share.
#[derive(Clone)]
pub struct WebSockets {
    shared: Arc<Shared>,
}

struct Shared {
    /// Checks the token of each `connect`, as `Authorization` is checked on gRPC.
    auth: Authenticator,
    /// The sessions of this node, shared with the gRPC service.
    sessions: Arc<session::Services>,
    /// The largest text frame a client may send: the gRPC decoding limit, so both doors take
    /// the same messages.
    max_frame_bytes: usize,
    /// Every socket, so a shutdown waits for them to close as it waits for gRPC streams.
    sockets: TaskTracker,
}

impl WebSockets {
    pub fn new(
        auth: Authenticator,
        sessions: Arc<session::Services>,
        max_frame_bytes: usize,
    ) -> Self {
        WebSockets {
            shared: Arc::new(Shared {
                auth,
                sessions,
                max_frame_bytes,
                sockets: TaskTracker::new(),
            }),
        }
    }

    /// `GET /ws`, to merge into the node's router.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/ws", any(upgrade))
            .with_state(self.clone())
    }

    /// Serves `incoming`: the connections that open with `GET /ws` on `router` here, with
    /// upgrades, and the rest through `grpc`, which builds the gRPC server over them. Ends as
    /// the gRPC server does; after a shutdown, also once every WebSocket has closed.
    pub async fn serve_beside<S, T, F, Fut, R>(self, incoming: S, router: Router, grpc: F) -> R
    where
        S: Stream<Item = io::Result<T>> + Send + 'static,
        T: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        T::ConnectInfo: std::fmt::Debug + Clone + Send + Sync + 'static,
        F: FnOnce(Rest<T>) -> Fut,
        Fut: Future<Output = R>,
    {
        let shutdown = self.shared.sessions.shutdown.clone();
        let (rest, upgrades) = upgrades::split(incoming, router, shutdown.clone());
        let sockets = self.shared.sockets.clone();
        let websockets = async move {
            upgrades.await;
            sockets.close();
            sockets.wait().await;
        };
        let grpc = grpc(rest);
        tokio::pin!(grpc, websockets);
        tokio::select! {
            served = &mut grpc => {
                // A gRPC server that stopped on its own failed: the node ends with it now.
                if shutdown.is_cancelled() {
                    websockets.await;
                }
                served
            }
            () = &mut websockets => grpc.await,
        }
    }
}

async fn upgrade(
    State(ws): State<WebSockets>,
    extensions: Extensions,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A connection over --max-connections-per-ip-per-sec is not upgraded: 429 and the reason.
    if let Some(e) = PeerInfo::of(&extensions).and_then(PeerInfo::refusal) {
        crate::transport::status::counted(&e);
        let body = format!("RESOURCE_EXHAUSTED: {e}\n");
        return (StatusCode::TOO_MANY_REQUESTS, body).into_response();
    }
    let shared = ws.shared.clone();
    let open = shared.sockets.token();
    // Frames a little over the limit are read whole and refused with an error frame (socket.rs);
    // beyond twice the limit the WebSocket layer stops reading at once.
    let hard_limit = shared.max_frame_bytes.saturating_mul(2);
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| socket::serve(socket, shared, open))
}
