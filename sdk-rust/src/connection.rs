//! The task behind a [`crate::Client`]: one `Connect` stream at a time, reconnected with backoff.
//!
//! Per connection: `Hello` with the positions the app has been given → `Welcome` → backlog →
//! `SyncComplete` (state Connected) → live. Incoming messages go through the [`Sequencer`]
//! (duplicates dropped, gaps read from `GetHistory(after_seq)` first); queued sends go out in
//! queue order, at most `send_window` in flight and `send_window_per_chat` per chat, and stay
//! queued (and on disk) until their `SendAck` or a permanent refusal. Positions the app has
//! taken are saved, then acked, at most `ack_delay` later.

use crate::api::Api;
use crate::config::ClientConfig;
use crate::error::{is_permanent, SdkError};
use crate::events::*;
use crate::sequencer::{Sequencer, Verdict};
use crate::store::{LocalStore, OutgoingMessage};
use crate::types::*;
use chat_proto::v1 as pb;
use chat_proto::v1::{client_frame, server_frame};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// How long `close()` waits for the server to confirm the last acks.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Longest a gap fill reads per request.
const GAP_PAGE: u32 = 200;

/// Counters of what the client did, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct Stats {
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub messages_received: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub gaps_filled: AtomicU64,
    pub messages_from_history: AtomicU64,
    pub sends_acked: AtomicU64,
    pub sends_failed: AtomicU64,
    pub send_retries: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Streams that reached `SyncComplete`.
    pub connects: u64,
    /// Synced streams that were lost.
    pub disconnects: u64,
    /// Messages passed to the app (live, replayed and from gap fills).
    pub messages_received: u64,
    /// Messages dropped as already given.
    pub duplicates_dropped: u64,
    /// Gaps read from history.
    pub gaps_filled: u64,
    /// Messages that came from gap fills.
    pub messages_from_history: u64,
    pub sends_acked: u64,
    pub sends_failed: u64,
    /// Transient refusals that were retried.
    pub send_retries: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connects: self.connects.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            duplicates_dropped: self.duplicates_dropped.load(Relaxed),
            gaps_filled: self.gaps_filled.load(Relaxed),
            messages_from_history: self.messages_from_history.load(Relaxed),
            sends_acked: self.sends_acked.load(Relaxed),
            sends_failed: self.sends_failed.load(Relaxed),
            send_retries: self.send_retries.load(Relaxed),
        }
    }
}

/// What the app asks of the connection.
pub(crate) enum Command {
    /// A send was queued (on disk already).
    Queued(OutgoingMessage),
    /// Follow these users' presence on every connection from now on.
    WatchPresence(Vec<String>),
    /// The token was replaced: a connection waiting because of the old one retries now.
    TokenChanged,
}

/// Why a connection ended.
struct End {
    /// It had reached SyncComplete.
    synced: bool,
    error: ConnectionError,
}

enum Stop {
    /// The stream or the attempt ended.
    Ended(End),
    /// The app closed the client.
    Closed,
}

fn ended(synced: bool, code: Code, message: impl Into<String>) -> Stop {
    Stop::Ended(End {
        synced,
        error: ConnectionError {
            code,
            message: message.into(),
        },
    })
}

fn from_status(synced: bool, s: &tonic::Status) -> Stop {
    ended(synced, s.code(), s.message().to_string())
}

pub(crate) struct Driver {
    pub cfg: ClientConfig,
    pub api: Api,
    pub store: LocalStore,
    pub delivered: Arc<Delivered>,
    pub sequencer: Sequencer,
    /// Sends not yet acked or refused for good, in queue order.
    pub queue: VecDeque<OutgoingMessage>,
    pub events: mpsc::Sender<Queued>,
    pub status: watch::Sender<ConnectionStatus>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub closing: watch::Receiver<bool>,
    pub stats: Arc<Stats>,
    /// Sends on the current stream waiting for their answer: key → chat.
    pub in_flight: HashMap<String, String>,
    /// Transient refusals per key, for the retry backoff.
    pub attempts: HashMap<String, u32>,
    /// No sends before this (rate limit, outage).
    pub hold_until: Option<Instant>,
    /// Users whose presence the app follows.
    pub watching: Option<Vec<String>>,
    /// Positions acked on the current stream.
    pub acked: HashMap<String, u64>,
    /// When taken positions are to be saved and acked next.
    pub flush_at: Option<Instant>,
    pub nonce: u64,
    /// The token's `sub`, to tell this user's messages from another's with the same device id.
    pub user_id: Option<String>,
}

impl Driver {
    pub(crate) async fn run(mut self) {
        let mut failures = 0u32;
        if self
            .set_status(ConnectionStatus::new(ConnectionState::Connecting))
            .await
            .is_err()
        {
            self.finish().await;
            return;
        }
        loop {
            let stop = self.connection().await;
            let end = match stop {
                Stop::Closed => break,
                Stop::Ended(end) => end,
            };
            self.in_flight.clear();
            let delay = if end.synced {
                self.stats.disconnects.fetch_add(1, Relaxed);
                failures = 0;
                // A connection that worked is retried at once: most drops are one-offs
                // (a node restarting, a network change).
                Duration::ZERO
            } else {
                let d = self.cfg.reconnect.next_delay(failures);
                failures = failures.saturating_add(1);
                d
            };
            tracing::debug!(
                code = ?end.error.code,
                message = %end.error.message,
                ?delay,
                "chat-sdk: connection ended"
            );
            let status = ConnectionStatus {
                state: ConnectionState::Reconnecting,
                attempt: failures,
                retry_in: Some(delay),
                error: Some(end.error),
                replayed: 0,
            };
            if self.set_status(status).await.is_err() {
                break;
            }
            if self.wait(Instant::now() + delay).await.is_err() {
                break;
            }
        }
        self.finish().await;
    }

    /// Between connections: keep taking commands and saving positions until `until`, or until
    /// a new token makes waiting pointless.
    async fn wait(&mut self, until: Instant) -> Result<(), SdkError> {
        loop {
            let flush_at = self.flush_at;
            tokio::select! {
                _ = sleep_until(until) => return Ok(()),
                _ = self.closing.changed() => return Err(SdkError::Closed),
                cmd = self.commands.recv() => match cmd {
                    None => return Err(SdkError::Closed),
                    Some(Command::TokenChanged) => return Ok(()),
                    Some(c) => self.command(c, None).await,
                },
                _ = self.delivered.changed.notified() => self.schedule_flush(),
                _ = sleep_until(flush_at.unwrap_or(until)), if flush_at.is_some() => {
                    self.flush(None).await;
                }
            }
        }
    }

    async fn finish(&mut self) {
        self.flush(None).await;
        let _ = self
            .status
            .send_replace(ConnectionStatus::new(ConnectionState::Closed));
        // The app may not be reading any more: never wait for it here.
        let _ = self.events.try_send((
            Event::Connection(ConnectionStatus::new(ConnectionState::Closed)),
            None,
        ));
    }

    async fn set_status(&mut self, s: ConnectionStatus) -> Result<(), SdkError> {
        self.status.send_replace(s.clone());
        self.emit(Event::Connection(s), None).await
    }

    /// Hand an event to the app; waits while the app is `event_buffer` events behind. An event
    /// that fits is always queued, also while closing (so the stream tells every state the
    /// status showed); only a full buffer gives way to `close()`.
    async fn emit(&mut self, ev: Event, mark: Option<(String, u64)>) -> Result<(), SdkError> {
        use tokio::sync::mpsc::error::TrySendError;
        let item = match self.events.try_send((ev, mark)) {
            // Closed: the app dropped its event stream: it wants no more events, but the
            // client goes on (sends, acks of what it did take). Nothing untaken is acked.
            Ok(()) | Err(TrySendError::Closed(_)) => return Ok(()),
            Err(TrySendError::Full(item)) => item,
        };
        if *self.closing.borrow() {
            return Err(SdkError::Closed);
        }
        tokio::select! {
            _ = self.events.send(item) => Ok(()),
            _ = self.closing.changed() => Err(SdkError::Closed),
        }
    }

    fn schedule_flush(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.cfg.ack_delay);
        }
    }

    /// Save the positions the app has taken, then ack them on `tx` if connected.
    async fn flush(&mut self, tx: Option<&mpsc::Sender<pb::ClientFrame>>) {
        self.flush_at = None;
        let dirty = self.delivered.take_dirty();
        if !dirty.is_empty() {
            if let Err(e) = self.store.save_positions(dirty).await {
                // Not saved means not acked either: the server replays them next time.
                tracing::warn!("chat-sdk: saving positions failed: {e}");
                return;
            }
        }
        let Some(tx) = tx else { return };
        for (chat, seq) in self.delivered.all() {
            if self.acked.get(&chat).copied().unwrap_or(0) >= seq {
                continue;
            }
            let frame = client_frame::Frame::Ack(pb::Ack {
                chat_id: chat.clone(),
                seq,
            });
            if tx.send(frame_of(frame)).await.is_err() {
                return;
            }
            self.acked.insert(chat, seq);
        }
    }

    async fn command(&mut self, c: Command, tx: Option<&mpsc::Sender<pb::ClientFrame>>) {
        match c {
            Command::Queued(m) => {
                self.queue.push_back(m);
                if let Some(tx) = tx {
                    self.pump(tx).await;
                }
            }
            Command::WatchPresence(users) => {
                if let Some(tx) = tx {
                    let f = client_frame::Frame::WatchPresence(pb::WatchPresence {
                        user_ids: users.clone(),
                    });
                    let _ = tx.send(frame_of(f)).await;
                }
                self.watching = Some(users);
            }
            Command::TokenChanged => {}
        }
    }

    /// One connection, from Hello to its end.
    async fn connection(&mut self) -> Stop {
        let (tx, rx) = mpsc::channel::<pb::ClientFrame>(256);
        self.acked.clear();
        let hello = client_frame::Frame::Hello(pb::Hello {
            device_id: self.cfg.device_id.clone(),
            delivered_seq: self.delivered.all(),
            client_version: self.cfg.client_version.clone(),
        });
        if tx.send(frame_of(hello)).await.is_err() {
            return ended(false, Code::Internal, "request stream closed before Hello");
        }
        let mut grpc = self.api.grpc();
        let timeout = self.cfg.connect_timeout;
        let call = grpc.connect(ReceiverStream::new(rx));
        let mut stream: Streaming<pb::ServerFrame> = tokio::select! {
            _ = self.closing.changed() => return Stop::Closed,
            r = tokio::time::timeout(timeout, call) => match r {
                Err(_) => return ended(false, Code::DeadlineExceeded,
                    format!("no answer to Connect within {timeout:?}")),
                Ok(Err(s)) => return from_status(false, &s),
                Ok(Ok(r)) => r.into_inner(),
            },
        };
        let welcome = tokio::select! {
            _ = self.closing.changed() => return Stop::Closed,
            r = tokio::time::timeout(timeout, stream.message()) => match r {
                Err(_) => return ended(false, Code::DeadlineExceeded,
                    format!("no Welcome within {timeout:?}")),
                Ok(Err(s)) => return from_status(false, &s),
                Ok(Ok(None)) => return ended(false, Code::Unavailable, "stream ended before Welcome"),
                Ok(Ok(Some(pb::ServerFrame { frame: Some(server_frame::Frame::Welcome(w)) }))) => w,
                Ok(Ok(Some(other))) => return ended(false, Code::Internal,
                    format!("expected Welcome, got {other:?}")),
            },
        };
        let interval = ms_or(welcome.heartbeat_interval_ms, 30_000);
        let silence = ms_or(welcome.heartbeat_timeout_ms, 90_000);
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut last_frame = Instant::now();
        let mut synced = false;
        self.pump(&tx).await;
        loop {
            let flush_at = self.flush_at;
            let hold = self.hold_until;
            tokio::select! {
                _ = self.closing.changed() => {
                    self.goodbye(&tx, &mut stream).await;
                    return Stop::Closed;
                }
                cmd = self.commands.recv() => match cmd {
                    None => {
                        self.goodbye(&tx, &mut stream).await;
                        return Stop::Closed;
                    }
                    Some(c) => self.command(c, Some(&tx)).await,
                },
                msg = stream.message() => match msg {
                    Ok(Some(pb::ServerFrame { frame: Some(f) })) => {
                        last_frame = Instant::now();
                        if let Err(stop) = self.frame(f, &tx, &mut synced).await {
                            return stop;
                        }
                    }
                    Ok(Some(_)) => last_frame = Instant::now(),
                    Ok(None) => return ended(synced, Code::Unavailable, "the server ended the stream"),
                    Err(s) => return from_status(synced, &s),
                },
                _ = ping.tick() => {
                    if last_frame.elapsed() > silence {
                        return ended(synced, Code::Unavailable,
                            format!("nothing from the server for {silence:?}"));
                    }
                    self.nonce += 1;
                    let f = client_frame::Frame::Ping(pb::Ping { nonce: self.nonce });
                    if tx.send(frame_of(f)).await.is_err() {
                        return ended(synced, Code::Unavailable, "request stream closed");
                    }
                }
                _ = self.delivered.changed.notified() => self.schedule_flush(),
                _ = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.flush(Some(&tx)).await;
                }
                _ = sleep_until(hold.unwrap_or_else(Instant::now)), if hold.is_some() => {
                    self.hold_until = None;
                    self.pump(&tx).await;
                }
            }
        }
    }

    /// A clean end: positions saved and acked, a Ping whose Pong confirms the acks are
    /// durable (bounded), then the request stream is half-closed.
    async fn goodbye(
        &mut self,
        tx: &mpsc::Sender<pb::ClientFrame>,
        stream: &mut Streaming<pb::ServerFrame>,
    ) {
        self.flush(Some(tx)).await;
        self.nonce += 1;
        let nonce = self.nonce;
        if tx
            .send(frame_of(client_frame::Frame::Ping(pb::Ping { nonce })))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Ok(Some(f)) = stream.message().await {
                    if matches!(f.frame, Some(server_frame::Frame::Pong(ref p)) if p.nonce == nonce)
                    {
                        return;
                    }
                }
            })
            .await;
        }
    }

    async fn frame(
        &mut self,
        f: server_frame::Frame,
        tx: &mpsc::Sender<pb::ClientFrame>,
        synced: &mut bool,
    ) -> Result<(), Stop> {
        use server_frame::Frame as F;
        let r = match f {
            F::Message(ev) => match ev.message {
                Some(m) => self.message(Message::from(m), *synced).await,
                None => Ok(()),
            },
            F::SendAck(a) => self.send_ack(a, tx).await,
            F::SendError(e) => self.send_error(e, tx).await,
            F::Receipt(r) => match r.receipt {
                Some(r) => self.emit(Event::Receipt(r.into()), None).await,
                None => Ok(()),
            },
            F::Typing(t) => self.emit(Event::Typing(t.into()), None).await,
            F::Presence(p) => match p.presence {
                Some(p) => self.emit(Event::Presence(p.into()), None).await,
                None => Ok(()),
            },
            F::Chat(c) => self.emit(Event::ChatChanged(c.into()), None).await,
            F::SyncComplete(s) => {
                *synced = true;
                self.stats.connects.fetch_add(1, Relaxed);
                if let Some(users) = self.watching.clone() {
                    let f =
                        client_frame::Frame::WatchPresence(pb::WatchPresence { user_ids: users });
                    let _ = tx.send(frame_of(f)).await;
                }
                // Whatever the app took while we were away is acked now.
                self.flush(Some(tx)).await;
                let mut st = ConnectionStatus::new(ConnectionState::Connected);
                st.replayed = s.replayed;
                self.set_status(st).await
            }
            F::Error(e) => {
                let ev = Event::ServerError(ServerError {
                    frame: e.frame,
                    code: Code::from_i32(e.code),
                    message: e.message,
                    chat_id: e.chat_id,
                });
                self.emit(ev, None).await
            }
            F::Welcome(_) | F::Pong(_) => Ok(()),
        };
        r.map_err(|_| Stop::Closed)
    }

    /// A message from the stream: in order, once; a gap is read from history first.
    async fn message(&mut self, m: Message, synced: bool) -> Result<(), SdkError> {
        match self.sequencer.judge(&m.chat_id, m.seq) {
            Verdict::Duplicate => {
                self.stats.duplicates_dropped.fetch_add(1, Relaxed);
                Ok(())
            }
            Verdict::Next => self.give(m).await,
            Verdict::Gap { after } => {
                tracing::debug!(chat = %m.chat_id, after, seq = m.seq, synced, "chat-sdk: gap");
                self.fill_gap(&m.chat_id, after, m.seq).await?;
                match self.sequencer.judge(&m.chat_id, m.seq) {
                    Verdict::Duplicate => {
                        self.stats.duplicates_dropped.fetch_add(1, Relaxed);
                        Ok(())
                    }
                    // Next, or history could not close the gap (purged by retention): the
                    // chat continues from here.
                    _ => self.give(m).await,
                }
            }
        }
    }

    async fn give(&mut self, m: Message) -> Result<(), SdkError> {
        let pos = self.sequencer.emitted(&m.chat_id, m.seq);
        self.stats.messages_received.fetch_add(1, Relaxed);
        let chat = m.chat_id.clone();
        self.emit(Event::Message(m), Some((chat, pos))).await
    }

    /// Read `after+1 .. upto` of `chat` from history and give what the app lacks. An error here
    /// ends the connection: the next one resumes from the app's position and tries again.
    async fn fill_gap(&mut self, chat: &str, after: u64, upto: u64) -> Result<(), SdkError> {
        self.stats.gaps_filled.fetch_add(1, Relaxed);
        let mut cursor = after;
        while cursor + 1 < upto {
            let page = self
                .api
                .get_history_after(chat, cursor, GAP_PAGE)
                .await
                .map_err(|e| {
                    tracing::warn!("chat-sdk: gap fill of {chat} failed: {e}");
                    e
                })?;
            let Some(last) = page.messages.last().map(|m| m.seq) else {
                return Ok(());
            };
            for m in page.messages {
                if m.seq >= upto {
                    return Ok(());
                }
                if self.sequencer.judge(chat, m.seq) == Verdict::Duplicate {
                    continue;
                }
                if self.is_own_queued(&m) {
                    // Stored, but its SendAck is still to come: the app hears of it as a
                    // SendResult, not as someone's message.
                    self.sequencer.emitted(chat, m.seq);
                    continue;
                }
                self.stats.messages_from_history.fetch_add(1, Relaxed);
                self.give(m).await?;
            }
            if last <= cursor {
                return Ok(());
            }
            cursor = last;
        }
        Ok(())
    }

    /// A message this device sent that is still in the queue (in flight or to be resent).
    fn is_own_queued(&self, m: &Message) -> bool {
        m.sender_device_id == self.cfg.device_id
            && self
                .user_id
                .as_deref()
                .is_none_or(|u| u == m.sender_user_id)
            && self
                .queue
                .iter()
                .any(|q| q.client_msg_id == m.client_msg_id)
    }

    fn forget_in_flight(&mut self, key: &str) -> Option<usize> {
        self.in_flight.remove(key)?;
        self.queue.iter().position(|m| m.client_msg_id == key)
    }

    async fn send_ack(
        &mut self,
        a: pb::SendAck,
        tx: &mpsc::Sender<pb::ClientFrame>,
    ) -> Result<(), SdkError> {
        let Some(i) = self.forget_in_flight(&a.client_msg_id) else {
            tracing::debug!(key = %a.client_msg_id, "chat-sdk: SendAck for no send in flight");
            return Ok(());
        };
        let Some(item) = self.queue.remove(i) else {
            return Ok(());
        };
        self.attempts.remove(&item.client_msg_id);
        let Some(msg) = a.message else {
            tracing::warn!(key = %item.client_msg_id, "chat-sdk: SendAck without message");
            return Ok(());
        };
        let msg = Message::from(msg);
        if let Err(e) = self.store.remove(item.client_msg_id.clone()).await {
            // It stays on disk and goes again next start: the server answers duplicate.
            tracing::warn!("chat-sdk: removing an acked send failed: {e}");
        }
        self.stats.sends_acked.fetch_add(1, Relaxed);
        // Taking the result moves the chat's position: by this send, or (when a gap fill
        // already passed over it) to where the sequencer is now.
        let pos = self
            .sequencer
            .own_sent(&msg.chat_id, msg.seq)
            .unwrap_or_else(|| self.sequencer.position(&msg.chat_id));
        let mark = (pos > 0).then(|| (msg.chat_id.clone(), pos));
        let ev = Event::SendResult(SendResult {
            client_msg_id: item.client_msg_id,
            chat_id: item.chat_id,
            outcome: SendOutcome::Sent {
                message: msg,
                duplicate: a.duplicate,
            },
        });
        self.emit(ev, mark).await?;
        self.pump(tx).await;
        Ok(())
    }

    async fn send_error(
        &mut self,
        e: pb::SendError,
        tx: &mpsc::Sender<pb::ClientFrame>,
    ) -> Result<(), SdkError> {
        let Some(i) = self.forget_in_flight(&e.client_msg_id) else {
            return Ok(());
        };
        let code = Code::from_i32(e.code);
        if is_permanent(code) {
            let Some(item) = self.queue.remove(i) else {
                return Ok(());
            };
            self.attempts.remove(&item.client_msg_id);
            if let Err(err) = self
                .store
                .mark_failed(item.client_msg_id.clone(), e.code, e.message.clone())
                .await
            {
                tracing::warn!("chat-sdk: marking a send failed: {err}");
            }
            self.stats.sends_failed.fetch_add(1, Relaxed);
            let ev = Event::SendResult(SendResult {
                client_msg_id: item.client_msg_id,
                chat_id: item.chat_id,
                outcome: SendOutcome::Failed {
                    code,
                    reason: e.message,
                },
            });
            self.emit(ev, None).await?;
        } else {
            self.stats.send_retries.fetch_add(1, Relaxed);
            let n = self.attempts.entry(e.client_msg_id.clone()).or_insert(0);
            let delay = if e.retry_after_ms > 0 {
                Duration::from_millis(u64::from(e.retry_after_ms))
            } else {
                self.cfg.reconnect.next_delay(*n)
            };
            *n += 1;
            tracing::debug!(key = %e.client_msg_id, ?code, ?delay, "chat-sdk: send refused for now");
            let at = Instant::now() + delay;
            self.hold_until = Some(self.hold_until.map_or(at, |h| h.max(at)));
        }
        self.pump(tx).await;
        Ok(())
    }

    /// Put queued sends on the stream: queue order, within both windows, one chat never
    /// overtaking its own earlier messages.
    async fn pump(&mut self, tx: &mpsc::Sender<pb::ClientFrame>) {
        if self.hold_until.is_some_and(|h| h > Instant::now()) {
            return;
        }
        self.hold_until = None;
        let mut per_chat: HashMap<&str, usize> = HashMap::new();
        for chat in self.in_flight.values() {
            *per_chat.entry(chat.as_str()).or_default() += 1;
        }
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        for m in &self.queue {
            if self.in_flight.len() + out.len() >= self.cfg.send_window {
                break;
            }
            if self.in_flight.contains_key(&m.client_msg_id) || blocked.contains(m.chat_id.as_str())
            {
                continue;
            }
            let n = per_chat.entry(m.chat_id.as_str()).or_default();
            if *n >= self.cfg.send_window_per_chat {
                blocked.insert(m.chat_id.as_str());
                continue;
            }
            *n += 1;
            out.push(m.clone());
        }
        for m in out {
            let f = client_frame::Frame::Send(pb::Send {
                client_msg_id: m.client_msg_id.clone(),
                chat_id: m.chat_id.clone(),
                content: Some(m.content.into()),
            });
            if tx.send(frame_of(f)).await.is_err() {
                return;
            }
            self.in_flight.insert(m.client_msg_id, m.chat_id);
        }
    }
}

fn frame_of(f: client_frame::Frame) -> pb::ClientFrame {
    pb::ClientFrame { frame: Some(f) }
}

fn ms_or(ms: u32, default_ms: u64) -> Duration {
    Duration::from_millis(if ms == 0 { default_ms } else { u64::from(ms) })
}
