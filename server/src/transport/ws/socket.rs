//! One WebSocket, from the upgrade to the close: wait for `connect` and check its token, start
//! the same session `Connect` starts, then relay — client frames in as session commands, session
//! outputs out as frames — until one side ends. One task owns the socket and does both
//! directions, so a client that stops reading stops being read (TCP backpressure) and a session
//! waiting to emit is never blocked behind the socket's reader.
//!
//! What ends a socket, and what the client hears (docs/websocket.md has the table):
//! - anything wrong before the session starts (first frame not `connect`, a bad token, no
//!   `connect` within the heartbeat timeout): an `error` frame, then a close frame;
//! - a frame the session refuses or the transport cannot decode after that: an `error` frame,
//!   and the socket stays open (as `Connect`'s `Error` frames);
//! - the session ending with an error (a second `connect`, heartbeat timeout, slow reader,
//!   shutdown): an `error` frame, then a close frame with 4000 + the gRPC code;
//! - a frame over the size limit or a text frame that is not UTF-8: an `error` frame, then close
//!   1009 or 1007, the WebSocket codes for them.

use super::frames::{self, Inbound, Peer, Refusal};
use super::Shared;
use crate::metrics::METRICS;
use crate::queue::TrySendError;
use crate::session::{self, Command, Hello, Outlet, Output};
use crate::Error;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout, Instant};

/// Outputs waiting between the session and the socket; small, the session's event queue is
/// the real buffer (as on gRPC).
const OUT_QUEUE: usize = 32;
/// Decoded client frames waiting for the session; when full, the socket is not read.
const IN_QUEUE: usize = 16;
/// Frames written before one flush, when the session has several ready.
const WRITE_BATCH: usize = 64;
/// How long a closing socket waits for the client's close frame before it drops the
/// connection (well inside the node's shutdown drain).
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Longest close reason a close frame carries (RFC 6455 §5.5: control payloads ≤ 125 bytes).
const MAX_CLOSE_REASON: usize = 123;
/// Close code for a session that ended with an error: this base plus its gRPC code number.
const APP_CLOSE_BASE: u16 = 4000;

/// How a socket ends.
enum Close {
    /// The connection broke: nothing more can be said.
    Gone,
    /// The client closed: its close frame is answered (the WebSocket layer queued the reply),
    /// so the client sees the closing handshake complete rather than a dropped connection.
    ClientClosed,
    /// The session is over without an error: close 1000.
    Normal,
    /// An `error` frame (unless the client was just sent the same one), then this close.
    Error {
        frame: Option<String>,
        code: u16,
        reason: String,
    },
}

impl Close {
    /// The session (or the transport for it) ends with `error`.
    fn error(error: &Error) -> Close {
        Close::refused(&Refusal::new(error.clone()), None)
    }

    /// Ends with the refusal of one frame; `field` names what the error itself does not.
    fn refused(r: &Refusal, field: Option<&str>) -> Close {
        Close::with_code(
            r,
            field,
            APP_CLOSE_BASE + crate::transport::status::code(&r.error) as u16,
        )
    }

    fn with_code(r: &Refusal, field: Option<&str>, code: u16) -> Close {
        match frames::refusal(r, field) {
            Ok(frame) => Close::Error {
                frame: Some(frame),
                code,
                reason: close_reason(&r.error),
            },
            Err(e) => Close::error_unframed(&e),
        }
    }

    /// Ends with `error` without an error frame: the client already has it.
    fn error_unframed(error: &Error) -> Close {
        Close::Error {
            frame: None,
            code: APP_CLOSE_BASE + crate::transport::status::code(error) as u16,
            reason: close_reason(error),
        }
    }
}

/// The close frame's reason: the code name and message, cut to fit a control frame.
fn close_reason(error: &Error) -> String {
    let mut reason = format!(
        "{}: {error}",
        frames::code_name(crate::transport::status::code(error))
    );
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// What one read from the socket brought.
enum Received {
    Text(Utf8Bytes),
    Binary,
    /// A WebSocket ping or pong: the client is alive.
    Heartbeat,
    /// A data frame over the size limit: its size when it was read whole.
    TooBig(Option<usize>),
    /// A text frame that is not UTF-8.
    NotUtf8,
    /// The client sent a close frame.
    ClientClosed,
    /// The connection broke.
    Closed,
}

/// The socket, with the limits that apply to it.
struct Conn {
    socket: WebSocket,
    max_frame_bytes: usize,
    /// A frame the client does not take within this long means it is gone (its session's
    /// heartbeat timeout).
    write_timeout: Duration,
}

/// Serves one upgraded socket to its end.
///
/// A plain function that builds the socket's state and returns the future that runs it: the
/// future then holds the socket once (an `async fn` would keep its argument and the `Conn`
/// made from it). `open` keeps the node's shutdown waiting for this socket.
pub(super) fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    open: tokio_util::task::task_tracker::TaskTrackerToken,
) -> impl std::future::Future<Output = ()> + Send {
    let counted = OpenSocket::count();
    let settings = &shared.sessions.settings;
    let mut conn = Conn {
        socket,
        max_frame_bytes: shared.max_frame_bytes,
        write_timeout: Duration::from_millis(settings.heartbeat_timeout_ms.into()),
    };
    async move {
        let close = match conn.open(&shared).await {
            Ok((user_id, hello)) => match relay(&mut conn, &shared, user_id, hello) {
                Ok(mut relay) => relay.run().await,
                Err(close) => close,
            },
            Err(close) => close,
        };
        conn.finish(close).await;
        drop((counted, open));
    }
}

/// Counts a socket as open in the metrics for as long as it lives, however its task ends.
struct OpenSocket;

impl OpenSocket {
    fn count() -> Self {
        METRICS.websockets_open.fetch_add(1, Relaxed);
        METRICS.websockets_total.fetch_add(1, Relaxed);
        OpenSocket
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        METRICS.websockets_open.fetch_sub(1, Relaxed);
    }
}

/// Starts the session; the relay between it and the client runs until one of them ends.
fn relay<'a>(
    conn: &'a mut Conn,
    shared: &Shared,
    user_id: String,
    hello: Hello,
) -> Result<Relay<'a>, Close> {
    // Our queue, not tokio's channel: that allocates a block of 32 slots of 120 bytes up front
    // for every socket.
    let (in_tx, mut in_rx) = crate::queue::channel(IN_QUEUE);
    let (out_tx, out_rx) = crate::queue::channel(OUT_QUEUE);
    let (abort_tx, abort_rx) = oneshot::channel();
    let device_id = hello.device_id.clone();
    // The queue is empty and holds at least one: the hello always fits.
    if in_tx.try_send(Ok(Command::Hello(hello))).is_err() {
        return Err(Close::error(&Error::internal(
            "websocket: the hello did not fit its queue",
        )));
    }
    let inbound = futures_util::stream::poll_fn(move |cx| in_rx.poll_recv(cx));
    tokio::spawn(session::run_connect(
        shared.sessions.clone(),
        user_id.clone(),
        None,
        Box::pin(inbound),
        Outlet {
            out: out_tx,
            abort: abort_tx,
        },
    ));
    Ok(Relay {
        conn,
        peer: (user_id, device_id),
        inbound: in_tx,
        pending: None,
        out: out_rx,
        abort: Some(abort_rx),
        pongs: VecDeque::new(),
        last_error: None,
    })
}

impl Conn {
    /// Waits for `connect` and checks its token: the user and the hello, or how to close.
    async fn open(&mut self, shared: &Shared) -> Result<(String, Hello), Close> {
        let sessions = &shared.sessions;
        let limit = Duration::from_millis(sessions.settings.heartbeat_timeout_ms.into());
        let deadline = Instant::now() + limit;
        loop {
            let received = tokio::select! {
                r = self.receive() => r,
                _ = sleep_until(deadline) => {
                    return Err(Close::error(&Error::invalid(
                        "type",
                        format!("no connect frame within the heartbeat timeout ({} ms)", limit.as_millis()),
                    )));
                }
                _ = sessions.shutdown.cancelled() => {
                    return Err(Close::error(&Error::Unavailable(
                        "the server is shutting down; reconnect".into(),
                    )));
                }
            };
            let text = match received {
                Received::Text(text) => text,
                Received::Heartbeat => continue,
                other => return Err(self.refuse(other).unwrap_or(Close::Gone)),
            };
            return match frames::decode(text.as_str()) {
                Ok(Inbound::Connect { token, hello }) => {
                    match shared.auth.authenticate(&token).await {
                        Ok(caller) => Ok((caller.user_id, hello)),
                        Err(error) => {
                            let r = Refusal {
                                frame: Some("connect"),
                                error,
                                client_msg_id: None,
                            };
                            Err(Close::refused(&r, Some("token")))
                        }
                    }
                }
                Ok(Inbound::Command(_)) => Err(Close::error(&Error::invalid(
                    "type",
                    "the first frame must be connect",
                ))),
                Err(r) => Err(Close::refused(&r, None)),
            };
        }
    }

    /// The close for a frame that is not text: `None` for one the socket survives (binary).
    fn refuse_fatal(&self, received: &Received) -> Option<Close> {
        let limit = self.max_frame_bytes;
        match received {
            Received::TooBig(size) => {
                let reason = match size {
                    Some(size) => format!("the frame is {size} bytes; the limit is {limit}"),
                    None => format!("the frame is over the limit of {limit} bytes"),
                };
                let r = Refusal::new(Error::ResourceExhausted(reason));
                Some(Close::with_code(&r, None, close_code::SIZE))
            }
            Received::NotUtf8 => {
                let r = Refusal::new(Error::invalid("frame", "a text frame must be UTF-8"));
                Some(Close::with_code(&r, None, close_code::INVALID))
            }
            Received::ClientClosed => Some(Close::ClientClosed),
            Received::Closed => Some(Close::Gone),
            Received::Text(_) | Received::Binary | Received::Heartbeat => None,
        }
    }

    /// Before `connect`, every bad frame ends the socket (as a first frame other than Hello
    /// ends a `Connect` stream).
    fn refuse(&self, received: Received) -> Option<Close> {
        self.refuse_fatal(&received).or_else(|| match received {
            Received::Binary => Some(Close::refused(&binary(), None)),
            _ => None,
        })
    }

    async fn receive(&mut self) -> Received {
        match self.socket.recv().await {
            Some(Ok(Message::Text(text))) if text.len() > self.max_frame_bytes => {
                Received::TooBig(Some(text.len()))
            }
            Some(Ok(Message::Binary(data))) if data.len() > self.max_frame_bytes => {
                Received::TooBig(Some(data.len()))
            }
            Some(Ok(Message::Text(text))) => Received::Text(text),
            Some(Ok(Message::Binary(_))) => Received::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Received::Heartbeat,
            Some(Ok(Message::Close(_))) => Received::ClientClosed,
            None => Received::Closed,
            Some(Err(e)) => match e.into_inner().downcast::<tungstenite::Error>() {
                Ok(e) => match *e {
                    tungstenite::Error::Capacity(_) => Received::TooBig(None),
                    tungstenite::Error::Utf8(_) => Received::NotUtf8,
                    other => {
                        tracing::debug!(error = %other, "websocket read failed");
                        Received::Closed
                    }
                },
                Err(other) => {
                    tracing::debug!(error = %other, "websocket read failed");
                    Received::Closed
                }
            },
        }
    }

    /// Writes one frame; `Err` when the client is gone or does not take it in time.
    async fn write(&mut self, text: String) -> Result<(), Close> {
        match timeout(self.write_timeout, self.socket.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Close::Gone),
        }
    }

    /// Says how the socket ends, then waits for the client's close frame so the client, not
    /// this side, is left holding the closed connection's TIME_WAIT (RFC 6455 §7.1.1).
    async fn finish(&mut self, close: Close) {
        let (code, reason) = match close {
            Close::Gone => return,
            Close::ClientClosed => {
                let _ = timeout(self.write_timeout, self.socket.flush()).await;
                return;
            }
            Close::Normal => (close_code::NORMAL, String::new()),
            Close::Error {
                frame,
                code,
                reason,
            } => {
                if let Some(frame) = frame {
                    if self.write(frame).await.is_err() {
                        return;
                    }
                }
                (code, reason)
            }
        };
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        if self.write_message(close).await.is_err() {
            return;
        }
        let _ = timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = self.socket.recv().await {}
        })
        .await;
    }

    async fn write_message(&mut self, message: Message) -> Result<(), Close> {
        match timeout(self.write_timeout, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Close::Gone),
        }
    }
}

fn binary() -> Refusal {
    Refusal::new(Error::invalid(
        "frame",
        "binary frames are not accepted; send JSON in text frames",
    ))
}

/// The live half: client frames to the session, session outputs to the client.
struct Relay<'a> {
    conn: &'a mut Conn,
    /// (user, device) of the session, for the `welcome` frame.
    peer: (String, String),
    inbound: crate::queue::Sender<Result<Command, Error>>,
    /// A decoded command waiting for room in `inbound`; the socket is not read meanwhile.
    pending: Option<Command>,
    out: crate::queue::Receiver<Output>,
    /// The session's "end now" signal; `None` once the session ended without it.
    abort: Option<oneshot::Receiver<Error>>,
    /// For each ping handed to the session, in order: whether the client asked for its pong
    /// (a `ping` frame) or not (a WebSocket ping, sent on only to count as a heartbeat).
    pongs: VecDeque<bool>,
    /// The error frame just sent for a session `FrameError`, so the end that follows it (a
    /// second `connect`) does not repeat it.
    last_error: Option<Error>,
}

impl Relay<'_> {
    async fn run(&mut self) -> Close {
        loop {
            let step = tokio::select! {
                biased;
                error = aborted(&mut self.abort) => Err(Close::error(&error)),
                output = self.out.recv() => match output {
                    Some(output) => self.write_outputs(output).await,
                    None => Err(Close::Normal),
                },
                () = hand_over(&self.inbound, &mut self.pending), if self.pending.is_some() => Ok(()),
                received = self.conn.receive(), if self.pending.is_none() => self.received(received).await,
            };
            if let Err(close) = step {
                return close;
            }
        }
    }

    async fn received(&mut self, received: Received) -> Result<(), Close> {
        let text = match received {
            Received::Text(text) => text,
            Received::Heartbeat => {
                self.pongs.push_back(false);
                self.pending = Some(Command::Ping { nonce: 0 });
                return Ok(());
            }
            Received::Binary => return self.refuse(&binary()).await,
            other => return Err(self.conn.refuse_fatal(&other).unwrap_or(Close::Gone)),
        };
        match frames::decode(text.as_str()) {
            // A second connect is the session's to refuse, as a second Hello is.
            Ok(Inbound::Connect { hello, .. }) => self.pending = Some(Command::Hello(hello)),
            Ok(Inbound::Command(command)) => {
                if let Command::Ping { .. } = command {
                    self.pongs.push_back(true);
                }
                self.pending = Some(command);
            }
            Err(refusal) => return self.refuse(&refusal).await,
        }
        Ok(())
    }

    /// An `error` frame for a frame the transport could not decode; the socket stays open.
    async fn refuse(&mut self, refusal: &Refusal) -> Result<(), Close> {
        match frames::refusal(refusal, None) {
            Ok(frame) => self.conn.write(frame).await,
            Err(e) => Err(Close::error(&e)),
        }
    }

    /// Writes `first` and whatever else the session has ready. A client that does not take
    /// them within the heartbeat timeout is gone. If the session gives up meanwhile (this
    /// client reads too slowly), the frame in progress gets a moment to finish so the close can
    /// say why; otherwise the connection is dropped, since nothing can follow half a frame.
    async fn write_outputs(&mut self, first: Output) -> Result<(), Close> {
        let limit = self.conn.write_timeout;
        let mut abort = self.abort.take();
        let result = {
            let write = timeout(limit, self.write_batch(first));
            tokio::pin!(write);
            tokio::select! {
                written = &mut write => written.unwrap_or(Err(Close::Gone)),
                error = aborted(&mut abort) => match timeout(CLOSE_GRACE, write).await {
                    Ok(Ok(Ok(()))) => Err(Close::error(&error)),
                    _ => Err(Close::Gone),
                },
            }
        };
        self.abort = abort;
        result
    }

    /// Feeds `first` and up to `WRITE_BATCH` more ready outputs, then flushes once.
    async fn write_batch(&mut self, first: Output) -> Result<(), Close> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(output) = next.take() {
            match &output {
                Output::End(error) => {
                    // What was queued before it goes out first.
                    self.conn.socket.flush().await.map_err(|_| Close::Gone)?;
                    return Err(match self.last_error.take() {
                        Some(last) if last == **error => Close::error_unframed(error),
                        _ => Close::error(error),
                    });
                }
                // The pong of a WebSocket ping: the client did not ask for it.
                Output::Pong { .. } if self.pongs.pop_front() == Some(false) => {}
                _ => {
                    self.last_error = match &output {
                        Output::FrameError(r) => Some(r.error.clone()),
                        _ => None,
                    };
                    let peer = Peer {
                        user_id: &self.peer.0,
                        device_id: &self.peer.1,
                    };
                    let frame = match frames::encode(&output, &peer) {
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => return Err(Close::error(&e)),
                        None => continue,
                    };
                    self.conn
                        .socket
                        .feed(Message::text(frame))
                        .await
                        .map_err(|_| Close::Gone)?;
                    written += 1;
                }
            }
            if written < WRITE_BATCH {
                next = self.out.try_recv();
            }
        }
        self.conn.socket.flush().await.map_err(|_| Close::Gone)
    }
}

/// Sends the pending command once the session has room for it. If the session stopped reading,
/// the command is dropped: the session's end is on its way through `out`.
async fn hand_over(
    inbound: &crate::queue::Sender<Result<Command, Error>>,
    pending: &mut Option<Command>,
) {
    let Some(command) = pending.take() else {
        return;
    };
    // Full: the command waits in `pending` until there is room, so this can be dropped at
    // any await. Closed: the session is over (the relay learns it from its output) and the
    // command goes with it.
    if let Err(TrySendError::Full(Ok(command))) = inbound.try_send(Ok(command)) {
        *pending = Some(command);
        let _ = inbound.room().await;
    }
}

/// The session's abort, once it comes; pending forever if the session ended without one.
async fn aborted(abort: &mut Option<oneshot::Receiver<Error>>) -> Error {
    loop {
        let Some(rx) = abort.as_mut() else {
            return std::future::pending().await;
        };
        let result = rx.await;
        *abort = None;
        if let Ok(error) = result {
            return error;
        }
    }
}
