//! What the client tells the app, in one ordered stream, and how reading it moves the chat
//! positions: a message counts as delivered (saved, then acked to the server) only once the
//! app has taken it from [`EventStream::next`], so a crash never acks what the app never saw.

use crate::types::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tonic::Code;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// The first connection is being made.
    Connecting,
    /// Synced: the backlog is in, live events flow.
    Connected,
    /// The connection was lost or refused; the next attempt is scheduled.
    Reconnecting,
    /// `close()` was called (or the client dropped): no more attempts.
    Closed,
}

/// A change of [`ConnectionState`], with why and when the next attempt comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    pub state: ConnectionState,
    /// Failed attempts since the last successful sync.
    pub attempt: u32,
    /// For `Reconnecting`: how long until the next attempt.
    pub retry_in: Option<Duration>,
    /// For `Reconnecting`: what ended the last connection or attempt.
    pub error: Option<ConnectionError>,
    /// For `Connected`: messages the server replayed on this sync.
    pub replayed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError {
    pub code: Code,
    pub message: String,
}

impl ConnectionStatus {
    pub(crate) fn new(state: ConnectionState) -> Self {
        ConnectionStatus {
            state,
            attempt: 0,
            retry_in: None,
            error: None,
            replayed: 0,
        }
    }
}

/// How a queued send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per send, handed over once: a box buys nothing
pub enum SendOutcome {
    /// Stored by the server; `duplicate` when an earlier attempt had already stored it.
    Sent { message: Message, duplicate: bool },
    /// Refused for good (PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND, …): the item stays in
    /// `pending_sends` as failed until discarded or retried.
    Failed { code: Code, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub client_msg_id: String,
    pub chat_id: String,
    pub outcome: SendOutcome,
}

/// The server refused a frame other than a send (an ack, a presence watch, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The refused frame: "ack", "watch_presence", …
    pub frame: String,
    pub code: Code,
    pub message: String,
    pub chat_id: String,
}

/// One thing that happened, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from someone else (or from this user's other devices): each chat's messages
    /// come once and in seq order.
    Message(Message),
    /// A send from this client was stored or refused.
    SendResult(SendResult),
    Receipt(Receipt),
    Typing(Typing),
    Presence(Presence),
    ChatChanged(ChatChange),
    Connection(ConnectionStatus),
    ServerError(ServerError),
}

/// What the app has been given, per chat (written by [`EventStream`], read by the connection).
#[derive(Default)]
pub(crate) struct Delivered {
    inner: Mutex<DeliveredInner>,
    /// Wakes the connection to save and ack.
    pub(crate) changed: Notify,
}

#[derive(Default)]
struct DeliveredInner {
    positions: HashMap<String, u64>,
    dirty: HashMap<String, u64>,
}

impl Delivered {
    pub(crate) fn new(start: &[(String, u64)]) -> Self {
        Delivered {
            inner: Mutex::new(DeliveredInner {
                positions: start.iter().cloned().collect(),
                dirty: HashMap::new(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeliveredInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn advance(&self, chat: &str, seq: u64) {
        let mut g = self.lock();
        let p = g.positions.entry(chat.to_string()).or_insert(0);
        if seq > *p {
            *p = seq;
            g.dirty.insert(chat.to_string(), seq);
            drop(g);
            self.changed.notify_one();
        }
    }

    /// Positions that moved since the last call.
    pub(crate) fn take_dirty(&self) -> Vec<(String, u64)> {
        self.lock().dirty.drain().collect()
    }

    /// Every position (for `Hello.delivered_seq`).
    pub(crate) fn all(&self) -> HashMap<String, u64> {
        self.lock().positions.clone()
    }
}

/// An event plus the chat position reached once the app has taken it.
pub(crate) type Queued = (Event, Option<(String, u64)>);

/// The client's events, in order. There is one per client ([`crate::Client::events`]).
pub struct EventStream {
    rx: mpsc::Receiver<Queued>,
    delivered: Arc<Delivered>,
    /// An event [`EventStream::ready`] saw but the app has not taken yet.
    peeked: Option<Queued>,
}

impl EventStream {
    pub(crate) fn new(rx: mpsc::Receiver<Queued>, delivered: Arc<Delivered>) -> Self {
        EventStream {
            rx,
            delivered,
            peeked: None,
        }
    }

    fn take(&mut self, (ev, mark): Queued) -> Event {
        if let Some((chat, seq)) = mark {
            self.delivered.advance(&chat, seq);
        }
        ev
    }

    /// The next event; `None` once the client is closed and everything before was read.
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<Event> {
        let q = match self.peeked.take() {
            Some(q) => q,
            None => self.rx.recv().await?,
        };
        Some(self.take(q))
    }

    /// The next event if one is waiting now.
    pub fn try_next(&mut self) -> Option<Event> {
        let q = match self.peeked.take() {
            Some(q) => q,
            None => self.rx.try_recv().ok()?,
        };
        Some(self.take(q))
    }

    /// Wait until [`EventStream::try_next`] has an event (true), or the stream ended (false),
    /// without taking it: for callers that cannot take a value back once their wait was
    /// cancelled (foreign async code). Cancel-safe.
    pub async fn ready(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.rx.recv().await;
        }
        self.peeked.is_some()
    }
}
