//! A WebSocket client of `/ws` (JSON frames, `docs/websocket.md`), the twin of [`crate::Session`]
//! for the browser door: frames are `serde_json::Value`s, every receive has a deadline
//! (default [`crate::RECV_TIMEOUT`]) and panics with what was expected when it passes, and
//! frames received while waiting for another are kept for later receives.

use crate::server::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the socket produced next.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A text frame, parsed.
    Frame(Value),
    /// A close frame: code and reason (`None` for a close without a payload).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (or broke).
    Dropped(String),
    /// A frame that is not JSON text (the server never sends one).
    Other(String),
}

/// One WebSocket of one device.
pub struct WsClient {
    pub user: String,
    pub device: String,
    stream: Stream,
    stash: VecDeque<Value>,
    /// Once the socket closed, every further receive sees this.
    ended: Option<WsEvent>,
    /// Deadline for each expected frame.
    pub timeout: Duration,
    nonce: u64,
    /// Filled by [`Self::sync`] (and so by [`ws_connect`]).
    pub welcome: Option<Value>,
    pub backlog: Vec<Value>,
    pub replayed: Option<u64>,
}

/// `ws://ADDR/ws` of `server` (`wss://` for a server on TLS).
pub fn ws_url(server: &TestServer) -> String {
    let scheme = if server.options().tls_ca.is_empty() {
        "ws"
    } else {
        "wss"
    };
    format!("{scheme}://{}/ws", server.addr)
}

/// An open socket with nothing sent yet (over TLS trusting the server's test CA when it
/// serves TLS).
pub async fn ws_open(server: &TestServer, user: &str, device: &str) -> WsClient {
    let url = ws_url(server);
    let connector = tls_connector(&server.options().tls_ca);
    let connect = tokio_tungstenite::connect_async_tls_with_config(&url, None, true, connector);
    let (stream, response) = tokio::time::timeout(crate::RECV_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| panic!("WebSocket handshake with {url} timed out"))
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
    assert_eq!(response.status().as_u16(), 101, "{response:?}");
    WsClient {
        user: user.to_string(),
        device: device.to_string(),
        stream,
        stash: VecDeque::new(),
        ended: None,
        timeout: crate::RECV_TIMEOUT,
        nonce: 0,
        welcome: None,
        backlog: Vec::new(),
        replayed: None,
    }
}

/// rustls (ring) trusting `cas` (PEM), offering HTTP/1.1; `None` for plain text.
fn tls_connector(cas: &[String]) -> Option<tokio_tungstenite::Connector> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    if cas.is_empty() {
        return None;
    }
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(tokio_tungstenite::Connector::Rustls(Arc::new(cfg)))
}

/// Open, `connect` with a valid token, then wait for `welcome`, the backlog and
/// `syncComplete` (kept as `welcome`, `backlog`, `replayed`).
pub async fn ws_connect(server: &TestServer, user: &str, device: &str) -> WsClient {
    ws_connect_with(server, user, device, HashMap::new()).await
}

/// [`ws_connect`] with `positions` (chat id → the seq this device has).
pub async fn ws_connect_with(
    server: &TestServer,
    user: &str,
    device: &str,
    positions: HashMap<String, u64>,
) -> WsClient {
    let mut ws = ws_open(server, user, device).await;
    let token = server.token(user, device).await;
    ws.send_connect(&token, positions).await;
    ws.sync().await;
    ws
}

/// The `type` of a frame ("" if it has none).
pub fn kind(f: &Value) -> &str {
    f.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A frame's string field ("" if absent).
pub fn s<'a>(f: &'a Value, field: &str) -> &'a str {
    f.get(field).and_then(Value::as_str).unwrap_or("")
}

/// A frame's integer field (panics if absent: the tests read seqs and codes with it).
#[track_caller]
pub fn n(f: &Value, field: &str) -> u64 {
    f.get(field)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("frame has no integer {field:?}: {f}"))
}

/// Frames that may come at any time depending on what other devices do.
pub fn is_ambient(f: &Value) -> bool {
    matches!(kind(f), "receipt" | "typing" | "presence")
}

impl WsClient {
    fn who(&self) -> String {
        format!("{}/{} (ws)", self.user, self.device)
    }

    // ---------------------------------------------------------------- sending

    /// Sends a WebSocket message; false if the socket is already closed.
    pub async fn try_send_message(&mut self, m: Message) -> bool {
        self.stream.send(m).await.is_ok()
    }

    /// Sends raw text (need not be JSON); panics if the socket is closed.
    pub async fn send_text(&mut self, text: &str) {
        let who = self.who();
        assert!(
            self.try_send_message(Message::text(text)).await,
            "{who}: cannot send {:?}: the socket is closed",
            text.chars().take(200).collect::<String>()
        );
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_connect(&mut self, token: &str, positions: HashMap<String, u64>) {
        let device = self.device.clone();
        self.send_json(json!({
            "type": "connect",
            "token": token,
            "deviceId": device,
            "positions": positions,
            "clientVersion": "chat-tests",
        }))
        .await
    }

    /// A `message` frame with text content (does not wait for the `sendAck`).
    pub async fn send_message(&mut self, chat_id: &str, client_msg_id: &str, text: &str) {
        self.send_json(json!({
            "type": "message",
            "clientMsgId": client_msg_id,
            "chatId": chat_id,
            "content": text,
        }))
        .await
    }

    /// Sends text and waits for its `sendAck`; returns it (panics on a `sendError`).
    pub async fn send_and_ack(&mut self, chat_id: &str, client_msg_id: &str, text: &str) -> Value {
        self.send_message(chat_id, client_msg_id, text).await;
        let ack = self.expect_send_result(client_msg_id).await;
        assert_eq!(
            kind(&ack),
            "sendAck",
            "{}: send {client_msg_id}: {ack}",
            self.who()
        );
        assert_eq!(ack["duplicate"], json!(false), "{}: {ack}", self.who());
        ack
    }

    pub async fn ack(&mut self, chat_id: &str, seq: u64) {
        self.send_json(json!({"type": "ack", "chatId": chat_id, "seq": seq}))
            .await
    }

    /// `ack`, then a ping round trip, so the cursor is durable when this returns.
    pub async fn ack_synced(&mut self, chat_id: &str, seq: u64) {
        self.ack(chat_id, seq).await;
        self.ping().await;
    }

    /// `ping` and wait for the `pong` with its nonce; frames received meanwhile are kept.
    pub async fn ping(&mut self) -> Value {
        self.nonce += 1;
        let nonce = 0x5eed_0000 + self.nonce;
        self.send_json(json!({"type": "ping", "nonce": nonce}))
            .await;
        self.recv_until(&format!("pong {nonce}"), |f| {
            kind(f) == "pong" && f["nonce"] == json!(nonce)
        })
        .await
    }

    /// Closes the socket (a close frame, then the connection is dropped).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.close(None)).await;
    }

    /// Sends a close frame (1000) without dropping the connection, so the server's answer can
    /// be read with [`Self::expect_close`].
    pub async fn send_close(&mut self) {
        let close = Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }));
        self.stream.send(close).await.expect("send the close frame");
    }

    // -------------------------------------------------------------- receiving

    /// The next event within `timeout`, or `None` if nothing arrived in time.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<WsEvent> {
        if let Some(f) = self.stash.pop_front() {
            return Some(WsEvent::Frame(f));
        }
        if let Some(end) = &self.ended {
            return Some(end.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            let event = match next {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                    Ok(v) => WsEvent::Frame(v),
                    Err(e) => WsEvent::Other(format!("text that is not JSON ({e}): {t}")),
                },
                // Control frames are the protocol layer's business.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(b))) => WsEvent::Other(format!("binary frame {b:?}")),
                Some(Ok(Message::Close(c))) => WsEvent::Close(
                    c.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
                ),
                Some(Err(e)) => WsEvent::Dropped(e.to_string()),
                None => WsEvent::Dropped("the stream ended".into()),
            };
            if !matches!(event, WsEvent::Frame(_) | WsEvent::Other(_)) {
                self.ended = Some(event.clone());
            }
            return Some(event);
        }
    }

    /// The next frame (panics on a close, a drop or the deadline).
    pub async fn recv(&mut self) -> Value {
        let timeout = self.timeout;
        match self.next_event(timeout).await {
            Some(WsEvent::Frame(f)) => f,
            other => panic!(
                "{}: expected a frame within {timeout:?}, got {other:?}",
                self.who()
            ),
        }
    }

    /// The first frame matching `pred`; the others received before it are kept, in order.
    pub async fn recv_until(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + self.timeout;
        let mut skipped = Vec::new();
        let mut kept = VecDeque::new();
        // Look in the stash first, keeping what does not match.
        while let Some(f) = self.stash.pop_front() {
            if pred(&f) {
                kept.extend(self.stash.drain(..));
                self.stash = kept;
                return f;
            }
            kept.push_back(f);
        }
        self.stash = kept;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = if self.ended.is_some() {
                self.ended.clone()
            } else {
                self.next_live(left).await
            };
            match event {
                Some(WsEvent::Frame(f)) if pred(&f) => return f,
                Some(WsEvent::Frame(f)) => {
                    skipped.push(short(&f));
                    self.stash.push_back(f);
                }
                other => panic!(
                    "{}: expected {what}; got {other:?} after {skipped:?}",
                    self.who()
                ),
            }
        }
    }

    /// Like `next_event` but never from the stash.
    async fn next_live(&mut self, timeout: Duration) -> Option<WsEvent> {
        let stash = std::mem::take(&mut self.stash);
        let event = self.next_event(timeout).await;
        self.stash = stash;
        event
    }

    /// The first frame of type `t` (others are kept).
    pub async fn expect(&mut self, t: &str) -> Value {
        self.recv_until(t, |f| kind(f) == t).await
    }

    /// The next frame that is neither ambient nor a `chat` frame (those are dropped): chat
    /// events reach sessions asynchronously, late on the full stack.
    pub async fn recv_core(&mut self) -> Value {
        loop {
            let f = self.recv().await;
            if !is_ambient(&f) && kind(&f) != "chat" {
                return f;
            }
        }
    }

    /// The next `message` frame; ambient and `chat` frames before it are dropped.
    pub async fn expect_message(&mut self) -> Value {
        loop {
            let f = self.recv().await;
            match kind(&f) {
                "message" => return f,
                _ if is_ambient(&f) || kind(&f) == "chat" => continue,
                _ => panic!("{}: expected a message frame, got {f}", self.who()),
            }
        }
    }

    pub async fn expect_messages(&mut self, count: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.expect_message().await);
        }
        out
    }

    /// The `sendAck` or `sendError` for `client_msg_id`.
    pub async fn expect_send_result(&mut self, client_msg_id: &str) -> Value {
        self.recv_until(&format!("sendAck/sendError {client_msg_id}"), |f| {
            matches!(kind(f), "sendAck" | "sendError") && s(f, "clientMsgId") == client_msg_id
        })
        .await
    }

    /// The next `error` frame.
    pub async fn expect_error(&mut self) -> Value {
        self.expect("error").await
    }

    /// No frame other than ambient and `chat` ones for `dur`.
    pub async fn expect_no_message(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_event(left).await {
                None => return,
                Some(WsEvent::Frame(f)) if is_ambient(&f) || kind(&f) == "chat" => continue,
                Some(other) => panic!("{}: expected nothing, got {other:?}", self.who()),
            }
        }
    }

    /// The frames up to the close frame, and its code and reason (panics if the socket drops
    /// without one, or nothing ends it in time).
    pub async fn expect_close(&mut self) -> (Vec<Value>, u16, String) {
        let mut frames: Vec<Value> = self.stash.drain(..).collect();
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(WsEvent::Frame(f)) => frames.push(f),
                Some(WsEvent::Close(Some((code, reason)))) => return (frames, code, reason),
                other => panic!(
                    "{}: expected a close frame, got {other:?} after {:?}",
                    self.who(),
                    frames.iter().map(short).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// After `connect`: `welcome`, the replayed messages, `syncComplete`.
    pub async fn sync(&mut self) {
        let welcome = self.recv().await;
        assert_eq!(kind(&welcome), "welcome", "{}: first frame", self.who());
        self.welcome = Some(welcome);
        loop {
            let f = self.recv().await;
            match kind(&f) {
                "message" => self.backlog.push(f),
                "syncComplete" => {
                    self.replayed = Some(n(&f, "replayed"));
                    return;
                }
                _ if is_ambient(&f) || kind(&f) == "chat" => {}
                _ => panic!("{}: unexpected frame during sync: {f}", self.who()),
            }
        }
    }
}

/// A frame in a few words, for failure messages.
pub fn short(f: &Value) -> String {
    let mut m = Map::new();
    for k in ["type", "seq", "clientMsgId", "code", "field", "nonce"] {
        if let Some(v) = f.get(k) {
            m.insert(k.to_string(), v.clone());
        }
    }
    Value::Object(m).to_string()
}

/// The seqs of message frames.
pub fn ws_seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| n(f, "seq")).collect()
}
