//! A device session: the Connect (or Subscribe) stream of one device, with helpers to send
//! frames and to receive with timeouts.
//!
//! The RPC is started in a background task, so frames can be queued before the server has
//! answered with headers (a server may well wait for `Hello` before responding). All receive
//! helpers have a deadline (default [`crate::RECV_TIMEOUT`]) and panic with a description of
//! what was expected when it passes; none of them sleep.

use crate::util::Client;
use chat_proto::v1::{
    client_frame, server_frame, Ack, ChatEvent, ChatEventKind, ClientFrame, Content,
    Error as ErrorFrame, Hello, Message, Ping, Pong, Send, SendAck, SendError, ServerFrame,
    SubscribeRequest, Welcome,
};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

pub use server_frame::Frame;

/// What the stream produced next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived values; boxing would only add noise
pub enum Event {
    Frame(Frame),
    /// The stream ended: `Status` code `Ok` for a clean end, the error status otherwise.
    End(Status),
}

#[allow(clippy::large_enum_variant)]
enum StreamState {
    Pending(oneshot::Receiver<Result<Streaming<ServerFrame>, Status>>),
    Open(Streaming<ServerFrame>),
    Ended(Status),
}

/// What `sync()` collected after Hello.
#[derive(Debug, Clone)]
pub struct SyncResult {
    pub welcome: Welcome,
    /// MessageEvents received before SyncComplete, in arrival order.
    pub messages: Vec<Message>,
    /// `SyncComplete.replayed`.
    pub replayed: u64,
}

pub struct Session {
    pub user: String,
    pub device: String,
    tx: Option<mpsc::Sender<ClientFrame>>,
    state: StreamState,
    stash: VecDeque<Frame>,
    /// Deadline for each expected event.
    pub timeout: Duration,
    nonce: u64,
    /// Filled by `sync()` (and therefore by `TestServer::connect`).
    pub welcome: Option<Welcome>,
    pub backlog: Vec<Message>,
    pub replayed: Option<u64>,
}

/// Frames that may show up at any time depending on what other devices do (receipts, typing,
/// presence). Message-oriented helpers skip them.
pub fn is_ambient(f: &Frame) -> bool {
    matches!(f, Frame::Receipt(_) | Frame::Typing(_) | Frame::Presence(_))
}

impl Session {
    /// Start `Connect` on `client`; nothing is sent yet.
    pub fn open(mut client: Client, user: &str, device: &str) -> Session {
        let (tx, rx) = mpsc::channel::<ClientFrame>(4096);
        let (otx, orx) = oneshot::channel();
        tokio::spawn(async move {
            let r = client
                .connect(ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner());
            let _ = otx.send(r);
        });
        Session::new(Some(tx), orx, user, device)
    }

    /// Start `Subscribe` on `client`.
    pub fn subscribe(
        mut client: Client,
        user: &str,
        device: &str,
        delivered_seq: HashMap<String, u64>,
    ) -> Session {
        let (otx, orx) = oneshot::channel();
        let req = SubscribeRequest {
            device_id: device.to_string(),
            delivered_seq,
            client_version: "chat-tests".into(),
        };
        tokio::spawn(async move {
            let r = client.subscribe(req).await.map(|r| r.into_inner());
            let _ = otx.send(r);
        });
        Session::new(None, orx, user, device)
    }

    fn new(
        tx: Option<mpsc::Sender<ClientFrame>>,
        orx: oneshot::Receiver<Result<Streaming<ServerFrame>, Status>>,
        user: &str,
        device: &str,
    ) -> Session {
        Session {
            user: user.to_string(),
            device: device.to_string(),
            tx,
            state: StreamState::Pending(orx),
            stash: VecDeque::new(),
            timeout: crate::RECV_TIMEOUT,
            nonce: 0,
            welcome: None,
            backlog: Vec::new(),
            replayed: None,
        }
    }

    fn who(&self) -> String {
        format!("{}/{}", self.user, self.device)
    }

    // ---------------------------------------------------------------- sending

    /// Queue a client frame. Returns false if the request stream is already closed (the call
    /// ended).
    pub async fn try_send(&self, frame: client_frame::Frame) -> bool {
        let tx = self
            .tx
            .as_ref()
            .expect("this session has no request stream (Subscribe)");
        tx.send(ClientFrame { frame: Some(frame) }).await.is_ok()
    }

    /// Queue a client frame; panics if the call already ended.
    pub async fn send(&self, frame: client_frame::Frame) {
        let desc = format!("{frame:?}");
        let desc: String = desc.chars().take(200).collect();
        assert!(
            self.try_send(frame).await,
            "{}: cannot send {desc}: the call has ended",
            self.who()
        );
    }

    pub async fn hello(&self) {
        self.hello_with(HashMap::new()).await
    }

    pub async fn hello_with(&self, delivered_seq: HashMap<String, u64>) {
        self.send(client_frame::Frame::Hello(Hello {
            device_id: self.device.clone(),
            delivered_seq,
            client_version: "chat-tests".into(),
        }))
        .await
    }

    pub async fn send_content(&self, chat_id: &str, client_msg_id: &str, content: Option<Content>) {
        self.send(client_frame::Frame::Send(Send {
            client_msg_id: client_msg_id.to_string(),
            chat_id: chat_id.to_string(),
            content,
        }))
        .await
    }

    /// Queue a Send with text content (does not wait for the SendAck).
    pub async fn send_text(&self, chat_id: &str, client_msg_id: &str, text: &str) {
        self.send_content(chat_id, client_msg_id, Some(crate::util::text(text)))
            .await
    }

    /// Send text and wait for its SendAck; returns the stored message. Other frames that arrive
    /// meanwhile are kept for later `recv` calls.
    pub async fn send_and_ack(
        &mut self,
        chat_id: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Message {
        self.send_text(chat_id, client_msg_id, text).await;
        let ack = self.expect_send_ack(client_msg_id).await;
        assert!(
            !ack.duplicate,
            "{}: fresh send {client_msg_id} acked as duplicate",
            self.who()
        );
        ack.message.expect("SendAck.message")
    }

    pub async fn ack(&self, chat_id: &str, seq: u64) {
        self.send(client_frame::Frame::Ack(Ack {
            chat_id: chat_id.to_string(),
            seq,
        }))
        .await
    }

    /// Ack, then a Ping/Pong round trip so the server has certainly processed the Ack before
    /// this returns (frames of one stream are handled in order).
    pub async fn ack_synced(&mut self, chat_id: &str, seq: u64) {
        self.ack(chat_id, seq).await;
        self.ping().await;
    }

    /// Ping and wait for the matching Pong; frames received meanwhile are kept.
    pub async fn ping(&mut self) -> Pong {
        self.nonce += 1;
        let nonce = 0x5eed_0000_0000 + self.nonce;
        self.send(client_frame::Frame::Ping(Ping { nonce })).await;
        match self
            .wait_for(
                &format!("Pong{{nonce:{nonce}}}"),
                true,
                |f| matches!(f, Frame::Pong(p) if p.nonce == nonce),
            )
            .await
        {
            Frame::Pong(p) => p,
            _ => unreachable!(),
        }
    }

    /// Close the request stream (like a client going away cleanly) and drop the response.
    pub fn close(self) {
        drop(self)
    }

    /// Ends the request stream (the client is done sending) but keeps reading the responses.
    pub fn half_close(&mut self) {
        self.tx = None;
    }

    // -------------------------------------------------------------- receiving

    /// The next event within `timeout`, or `None` if nothing arrived in time.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(f) = self.stash.pop_front() {
            return Some(Event::Frame(f));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match &mut self.state {
                StreamState::Ended(s) => return Some(Event::End(s.clone())),
                StreamState::Pending(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Err(_) => return None,
                    Ok(Ok(Ok(stream))) => self.state = StreamState::Open(stream),
                    Ok(Ok(Err(status))) => self.state = StreamState::Ended(status),
                    Ok(Err(_)) => {
                        self.state = StreamState::Ended(Status::unknown("call task vanished"))
                    }
                },
                StreamState::Open(stream) => {
                    match tokio::time::timeout_at(deadline, stream.message()).await {
                        Err(_) => return None,
                        Ok(Ok(Some(ServerFrame { frame: Some(f) }))) => {
                            return Some(Event::Frame(f))
                        }
                        Ok(Ok(Some(ServerFrame { frame: None }))) => {
                            panic!(
                                "{}: server sent a ServerFrame with no frame set",
                                self.who()
                            )
                        }
                        Ok(Ok(None)) => self.state = StreamState::Ended(Status::ok("")),
                        Ok(Err(status)) => self.state = StreamState::Ended(status),
                    }
                }
            }
        }
    }

    /// The next frame of any kind; panics on timeout or end of stream.
    pub async fn recv(&mut self) -> Frame {
        let t = self.timeout;
        self.recv_timeout(t).await
    }

    pub async fn recv_timeout(&mut self, timeout: Duration) -> Frame {
        match self.next_event(timeout).await {
            Some(Event::Frame(f)) => f,
            Some(Event::End(s)) => panic!(
                "{}: stream ended ({s:?}) while waiting for a frame",
                self.who()
            ),
            None => panic!("{}: no frame within {timeout:?}", self.who()),
        }
    }

    /// The next frame that is not ambient (receipt/typing/presence).
    pub async fn recv_core(&mut self) -> Frame {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.recv_timeout(left.max(Duration::from_millis(1))).await;
            if !is_ambient(&f) {
                return f;
            }
        }
    }

    /// Receive until `pred` matches (within the session timeout); frames before it are dropped.
    pub async fn recv_until(&mut self, pred: impl FnMut(&Frame) -> bool) -> Frame {
        self.wait_for("a frame matching the predicate", false, pred)
            .await
    }

    async fn wait_for(
        &mut self,
        what: &str,
        keep_others: bool,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> Frame {
        let deadline = Instant::now() + self.timeout;
        let mut kept = VecDeque::new();
        // Look at already-stashed frames first.
        let mut found = None;
        while let Some(f) = self.stash.pop_front() {
            if found.is_none() && pred(&f) {
                found = Some(f);
            } else {
                kept.push_back(f);
            }
        }
        if let Some(f) = found {
            if keep_others {
                self.stash = kept;
            }
            return f;
        }
        let mut skipped = Vec::new();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                None
            } else {
                self.next_event(left).await
            };
            match next {
                Some(Event::Frame(f)) => {
                    if pred(&f) {
                        break f;
                    }
                    skipped.push(short(&f));
                    if keep_others {
                        kept.push_back(f);
                    }
                }
                Some(Event::End(s)) => panic!(
                    "{}: stream ended ({s:?}) while waiting for {what}; skipped: {skipped:?}",
                    self.who()
                ),
                None => panic!(
                    "{}: {what} did not arrive within {:?}; skipped: {skipped:?}",
                    self.who(),
                    self.timeout
                ),
            }
        };
        if keep_others {
            self.stash = kept;
        }
        result
    }

    /// Wait for the end of the stream (skipping frames) and return its status (`Ok` code for a
    /// clean end).
    pub async fn expect_end(&mut self) -> Status {
        self.expect_end_within(self.timeout).await
    }

    pub async fn expect_end_within(&mut self, timeout: Duration) -> Status {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                None
            } else {
                self.next_event(left).await
            };
            match next {
                Some(Event::Frame(f)) => skipped.push(short(&f)),
                Some(Event::End(s)) => return s,
                None => panic!(
                    "{}: stream did not end within {timeout:?}; frames seen: {skipped:?}",
                    self.who()
                ),
            }
        }
    }

    /// Assert that no frame at all arrives for `dur`.
    pub async fn expect_no_event(&mut self, dur: Duration) {
        match self.next_event(dur).await {
            None => {}
            Some(e) => panic!("{}: expected silence for {dur:?}, got {e:?}", self.who()),
        }
    }

    /// Assert that for `dur` nothing arrives except ambient frames and ChatEvents (those are
    /// dropped). The stream must stay open.
    pub async fn expect_no_message(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_event(left).await {
                None => return,
                Some(Event::Frame(f)) if is_ambient(&f) || matches!(f, Frame::Chat(_)) => {}
                Some(e) => panic!("{}: expected no message for {dur:?}, got {e:?}", self.who()),
            }
        }
    }

    /// The next MessageEvent's message. Ambient frames and ChatEvents are skipped; anything else
    /// (SendAck, errors, end of stream) fails the test.
    pub async fn expect_message(&mut self) -> Message {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.recv_timeout(left.max(Duration::from_millis(1))).await;
            match f {
                Frame::Message(m) => return m.message.expect("MessageEvent.message is set"),
                f if is_ambient(&f) || matches!(f, Frame::Chat(_)) => {}
                other => panic!("{}: expected a MessageEvent, got {other:?}", self.who()),
            }
        }
    }

    pub async fn expect_messages(&mut self, n: usize) -> Vec<Message> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.expect_message().await);
        }
        v
    }

    /// Wait for the SendAck (or SendError → panic) of `client_msg_id`; other frames are kept.
    pub async fn expect_send_ack(&mut self, client_msg_id: &str) -> SendAck {
        let id = client_msg_id.to_string();
        let f = self
            .wait_for(
                &format!("SendAck/SendError for {id:?}"),
                true,
                |f| match f {
                    Frame::SendAck(a) => a.client_msg_id == id,
                    Frame::SendError(e) => e.client_msg_id == id,
                    _ => false,
                },
            )
            .await;
        match f {
            Frame::SendAck(a) => a,
            Frame::SendError(e) => panic!("{}: send {id:?} rejected: {e:?}", self.who()),
            _ => unreachable!(),
        }
    }

    /// Wait for the SendError (or SendAck → panic) of `client_msg_id`; other frames are kept.
    pub async fn expect_send_error(&mut self, client_msg_id: &str) -> SendError {
        let id = client_msg_id.to_string();
        let f = self
            .wait_for(
                &format!("SendAck/SendError for {id:?}"),
                true,
                |f| match f {
                    Frame::SendAck(a) => a.client_msg_id == id,
                    Frame::SendError(e) => e.client_msg_id == id,
                    _ => false,
                },
            )
            .await;
        match f {
            Frame::SendError(e) => e,
            Frame::SendAck(a) => panic!(
                "{}: send {id:?} was accepted, expected an error: {a:?}",
                self.who()
            ),
            _ => unreachable!(),
        }
    }

    /// Wait for a ChatEvent of `kind`; other frames are kept.
    pub async fn expect_chat_event(&mut self, kind: ChatEventKind) -> ChatEvent {
        match self
            .wait_for(
                &format!("ChatEvent {kind:?}"),
                true,
                |f| matches!(f, Frame::Chat(c) if c.kind == kind as i32),
            )
            .await
        {
            Frame::Chat(c) => c,
            _ => unreachable!(),
        }
    }

    /// Wait for an Error frame; other frames are kept.
    pub async fn expect_error_frame(&mut self) -> ErrorFrame {
        match self
            .wait_for("an Error frame", true, |f| matches!(f, Frame::Error(_)))
            .await
        {
            Frame::Error(e) => e,
            _ => unreachable!(),
        }
    }

    /// After Hello: expect Welcome, collect the replayed MessageEvents until SyncComplete.
    /// Ambient frames and ChatEvents are skipped; anything else fails the test.
    pub async fn sync(&mut self) -> SyncResult {
        let welcome = loop {
            match self.recv().await {
                Frame::Welcome(w) => break w,
                f if is_ambient(&f) => {}
                other => panic!("{}: expected Welcome first, got {other:?}", self.who()),
            }
        };
        let mut messages = Vec::new();
        let replayed = loop {
            match self.recv().await {
                Frame::Message(m) => messages.push(m.message.expect("MessageEvent.message")),
                Frame::SyncComplete(s) => break s.replayed,
                f if is_ambient(&f) || matches!(f, Frame::Chat(_)) => {}
                other => panic!(
                    "{}: expected replayed messages then SyncComplete, got {other:?}",
                    self.who()
                ),
            }
        };
        self.welcome = Some(welcome.clone());
        self.backlog = messages.clone();
        self.replayed = Some(replayed);
        SyncResult {
            welcome,
            messages,
            replayed,
        }
    }
}

/// A one-line description of a frame for failure messages.
pub fn short(f: &Frame) -> String {
    match f {
        Frame::Message(m) => match &m.message {
            Some(m) => format!(
                "Message(chat={} seq={} from={}/{})",
                m.chat_id, m.seq, m.sender_user_id, m.sender_device_id
            ),
            None => "Message(None)".into(),
        },
        Frame::SendAck(a) => format!(
            "SendAck({} seq={:?} dup={})",
            a.client_msg_id,
            a.message.as_ref().map(|m| m.seq),
            a.duplicate
        ),
        other => {
            let s = format!("{other:?}");
            s.chars().take(160).collect()
        }
    }
}
