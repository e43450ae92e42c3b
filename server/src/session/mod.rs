//! One connected device: hello, resume, live events, heartbeats and its bounded queue.
//!
//! A session registers in the [`Directory`] and the registry *before* it reads its backlog, so
//! nothing committed during the replay is missed; events that arrive meanwhile wait in its
//! queue. Each session keeps the highest seq it has passed on per chat ([`SeqTracker`]): live
//! messages at or below it are duplicates (of the replay, or of a re-delivery in a cluster) and
//! are dropped; a live message past a gap makes the session read the gap from the store first.
//! So every stream carries each chat's messages exactly once, in seq order, whatever the fan-out
//! did. The session speaks in domain terms ([`Command`] in, [`Output`] out); the transport
//! turns those into frames.

pub mod directory;

use crate::clock::now_ms;
use crate::domain::{
    ids,
    messaging::{Messaging, SendRequest},
    model::*,
    presence::PresenceService,
    typing::TypingService,
};
use crate::metrics::METRICS;
use crate::registry::{SessionKey, Watcher};
use crate::store::Appended;
use crate::store::{Membership, SeqRange, Store};
use crate::Error;
pub use directory::Directory;
use futures_util::{stream::FuturesOrdered, Stream, StreamExt};
use std::sync::atomic::Ordering::Relaxed;
use std::{collections::HashMap, sync::Arc, time::Duration};
use std::{future::Future, pin::Pin};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Sends one session may have waiting for their commit; they share commits with each other.
const MAX_SENDS_IN_FLIGHT: usize = 64;
/// Messages read from the store per replay query.
const REPLAY_PAGE: u32 = 512;
/// Acks a session may have in flight before it stops reading its client.
const ACKS_IN_FLIGHT: usize = 64;

/// The opening frame of a session.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    pub device_id: String,
    /// The device's own positions per chat; they override the stored cursors for this replay.
    pub delivered_seq: HashMap<String, u64>,
    pub client_version: String,
}

/// A client frame, decoded.
#[derive(Debug, Clone)]
pub enum Command {
    Hello(Hello),
    Send(SendRequest),
    Ack {
        chat_id: String,
        seq: u64,
    },
    Read {
        chat_id: String,
        seq: u64,
    },
    /// `started` is `None` for an unspecified state.
    Typing {
        chat_id: String,
        started: Option<bool>,
    },
    WatchPresence {
        user_ids: Vec<String>,
    },
    Ping {
        nonce: u64,
    },
    /// A frame with no oneof member set.
    Empty,
}

/// What a session sends to its device.
#[derive(Debug)]
pub enum Output {
    Welcome {
        session_id: String,
        node_id: String,
        heartbeat_interval_ms: u32,
        heartbeat_timeout_ms: u32,
    },
    Event(Event),
    SendAck {
        client_msg_id: String,
        message: Arc<Message>,
        duplicate: bool,
    },
    SendError {
        client_msg_id: String,
        error: Error,
    },
    FrameError {
        frame: &'static str,
        error: Error,
        chat_id: String,
    },
    SyncComplete {
        replayed: u64,
    },
    Pong {
        nonce: u64,
        server_time: i64,
    },
    /// The last output: the stream ends with this status after what is queued before it.
    End(Error),
}

/// Session timing and limits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    pub heartbeat_interval_ms: u32,
    pub heartbeat_timeout_ms: u32,
    /// Capacity of the queue between the fan-out and the session.
    pub queue: usize,
}

/// What every session of this node shares.
pub struct Services {
    pub messaging: Arc<Messaging>,
    pub presence: Arc<PresenceService>,
    pub typing: Arc<TypingService>,
    pub store: Arc<dyn Store>,
    pub directory: Arc<Directory>,
    pub settings: Settings,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
}

/// The two ways a session's output reaches the transport: an ordered queue, and an abort
/// signal that ends the stream at once, ahead of anything still queued.
pub struct Outlet {
    pub out: mpsc::Sender<Output>,
    pub abort: oneshot::Sender<Error>,
}

/// Why a session stopped.
enum Stop {
    /// The client went away; nothing more to say.
    Gone,
    /// End after what is queued (protocol errors).
    End(Error),
    /// End now (slow consumer, shutdown, heartbeat timeout).
    Abort(Error),
}

/// What a live message means for a stream that passed on messages up to `seen` in its chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Pass it on.
    Emit,
    /// Already passed on (replayed, or delivered twice by the fan-out).
    Duplicate,
    /// Messages after `after` and before it are missing: read them first.
    Gap { after: u64 },
}

/// Highest seq passed on per chat, for the chats this stream has seen messages of.
#[derive(Debug, Default)]
struct SeqTracker {
    seen: HashMap<String, u64>,
}

impl SeqTracker {
    fn classify(&self, chat_id: &str, seq: u64) -> Next {
        match self.seen.get(chat_id) {
            Some(&last) if seq <= last => Next::Duplicate,
            Some(&last) if seq > last + 1 => Next::Gap { after: last },
            _ => Next::Emit,
        }
    }

    fn passed(&mut self, chat_id: &str, seq: u64) {
        match self.seen.get_mut(chat_id) {
            Some(last) => *last = (*last).max(seq),
            None => {
                self.seen.insert(chat_id.to_string(), seq);
            }
        }
    }

    fn get(&self, chat_id: &str) -> Option<u64> {
        self.seen.get(chat_id).copied()
    }
}

/// A send queued in the store, answered when its commit is durable.
type InFlightSend = Pin<Box<dyn Future<Output = (String, crate::Result<Appended>)> + Send>>;

struct Session {
    svc: Arc<Services>,
    /// Sends waiting for their commit, answered in the order they were sent.
    sends: FuturesOrdered<InFlightSend>,
    /// Keeps the device counted online and the presence watches alive while the session is.
    online: OnlineGuard,
    user_id: String,
    device_id: String,
    out: mpsc::Sender<Output>,
    registration: directory::Registration,
    seqs: SeqTracker,
    acks: Arc<Semaphore>,
}

/// Runs a `Connect` session: `inbound` yields the client's frames (an `Err` ends the session).
pub async fn run_connect<S>(
    svc: Arc<Services>,
    user_id: String,
    device_hint: Option<String>,
    mut inbound: S,
    outlet: Outlet,
) where
    S: Stream<Item = Result<Command, Error>> + Unpin + Send,
{
    let timeout = Duration::from_millis(svc.settings.heartbeat_timeout_ms.into());
    let hello = match tokio::time::timeout(timeout, inbound.next()).await {
        Ok(Some(Ok(Command::Hello(h)))) => h,
        Ok(Some(Ok(_))) => {
            return end(
                outlet,
                Error::invalid("frame", "the first frame must be hello"),
            )
        }
        Ok(Some(Err(e))) => return end(outlet, e),
        Ok(None) => return,
        Err(_) => {
            return end(
                outlet,
                Error::invalid("frame", "no hello received within the heartbeat timeout"),
            )
        }
    };
    if let Some(hint) = device_hint.filter(|h| *h != hello.device_id) {
        return end(
            outlet,
            Error::invalid(
                "device_id",
                format!(
                    "hello names {:?} but x-device-id is {hint:?}",
                    hello.device_id
                ),
            ),
        );
    }
    run(svc, user_id, hello, Some(inbound), outlet).await
}

/// Runs a `Subscribe` session: the same events, no client frames.
pub async fn run_subscribe(svc: Arc<Services>, user_id: String, hello: Hello, outlet: Outlet) {
    run::<futures_util::stream::Empty<Result<Command, Error>>>(svc, user_id, hello, None, outlet)
        .await
}

fn end(outlet: Outlet, error: Error) {
    let _ = outlet.abort.send(error);
}

async fn run<S>(
    svc: Arc<Services>,
    user_id: String,
    hello: Hello,
    inbound: Option<S>,
    outlet: Outlet,
) where
    S: Stream<Item = Result<Command, Error>> + Unpin + Send,
{
    if let Err(e) = ids::check_device_id(&hello.device_id) {
        return end(outlet, e);
    }
    if let Err(e) = svc
        .store
        .register_device(&user_id, &hello.device_id, now_ms())
        .await
    {
        return end(outlet, e);
    }
    let registration = svc
        .directory
        .register(&user_id, &hello.device_id, svc.settings.queue);
    let key = SessionKey {
        user_id: user_id.clone(),
        device_id: hello.device_id.clone(),
        session_id: registration.session_id,
    };
    let online = match OnlineGuard::new(&svc.presence, key).await {
        Ok(online) => online,
        Err(e) => return end(outlet, e),
    };
    let mut session = Session {
        svc,
        user_id,
        device_id: hello.device_id.clone(),
        out: outlet.out,
        registration,
        online,
        sends: FuturesOrdered::new(),
        seqs: SeqTracker::default(),
        acks: Arc::new(Semaphore::new(ACKS_IN_FLIGHT)),
    };
    let stop = match session.start(&hello).await {
        Ok(()) => session.live(inbound).await,
        Err(stop) => stop,
    };
    match stop {
        Stop::Gone => {}
        Stop::End(e) => {
            // After what is already queued (a SendAck the client waits for), if there is room;
            // a client that doesn't read gets the status at once instead.
            if session.out.try_send(Output::End(e.clone())).is_err() {
                let _ = outlet.abort.send(e);
            }
        }
        Stop::Abort(e) => {
            tracing::debug!(user = %session.user_id, device = %session.device_id, error = %e, "session aborted");
            let _ = outlet.abort.send(e);
        }
    }
}

impl Session {
    /// Sends one output, unless the session must stop before there is room for it. Sending
    /// goes first, so an answer to a committed send still goes out during shutdown.
    async fn emit(&mut self, output: Output) -> Result<(), Stop> {
        let message = matches!(output, Output::Event(Event::Message(_)));
        tokio::select! {
            biased;
            sent = self.out.send(output) => {
                if message {
                    METRICS.messages_delivered.fetch_add(1, Relaxed);
                }
                sent.map_err(|_| Stop::Gone)
            }
            _ = self.registration.overflow.cancelled() => Err(slow_consumer()),
            _ = self.svc.shutdown.cancelled() => Err(shutting_down()),
        }
    }

    /// Welcome, the backlog, SyncComplete.
    async fn start(&mut self, hello: &Hello) -> Result<(), Stop> {
        let settings = &self.svc.settings;
        self.emit(Output::Welcome {
            session_id: format!("{}-{}", settings.node_id, self.registration.session_id),
            node_id: settings.node_id.clone(),
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            heartbeat_timeout_ms: settings.heartbeat_timeout_ms,
        })
        .await?;
        let replayed = self.replay(&hello.delivered_seq).await?;
        self.emit(Output::SyncComplete { replayed }).await
    }

    /// Passes on every message above the device's position in each of its chats. The
    /// position is the highest of: what this stream already passed on, what the client says it
    /// has (`claimed`), and the stored delivered cursor. Returns how many messages went out.
    async fn replay(&mut self, claimed: &HashMap<String, u64>) -> Result<u64, Stop> {
        let plan = self
            .svc
            .store
            .resume_plan(&self.user_id, &self.device_id)
            .await
            .map_err(Stop::Abort)?;
        let mut replayed = 0u64;
        for chat in plan.chats {
            let cursor = match (self.seqs.get(&chat.chat_id), claimed.get(&chat.chat_id)) {
                (Some(passed), _) => passed.max(chat.delivered_seq),
                (None, Some(&claim)) => claim,
                (None, None) => chat.delivered_seq,
            };
            let after = cursor.max(chat.joined_seq);
            replayed += self
                .pass_range(&chat.chat_id, after, chat.last_seq + 1)
                .await?;
            self.seqs.passed(&chat.chat_id, chat.last_seq);
        }
        Ok(replayed)
    }

    /// Passes on the messages of a chat strictly between `after` and `before`, from the store.
    async fn pass_range(
        &mut self,
        chat_id: &str,
        mut after: u64,
        before: u64,
    ) -> Result<u64, Stop> {
        let mut passed = 0u64;
        while after + 1 < before {
            let range = SeqRange {
                after,
                before,
                newest_first: false,
            };
            let page = self
                .svc
                .store
                .messages(chat_id, range, REPLAY_PAGE)
                .await
                .map_err(Stop::Abort)?;
            let Some(newest) = page.last().map(|m| m.seq) else {
                break;
            };
            for m in page {
                self.seqs.passed(chat_id, m.seq);
                // The sending device had its SendAck (or gets it again on retry), as live.
                if self.is_own(&m) {
                    continue;
                }
                self.emit(Output::Event(Event::Message(Arc::new(m))))
                    .await?;
                passed += 1;
            }
            after = newest;
        }
        Ok(passed)
    }

    fn is_own(&self, m: &Message) -> bool {
        m.sender_device_id == self.device_id && m.sender_user_id == self.user_id
    }

    async fn live<S>(&mut self, mut inbound: Option<S>) -> Stop
    where
        S: Stream<Item = Result<Command, Error>> + Unpin + Send,
    {
        let timeout = Duration::from_millis(self.svc.settings.heartbeat_timeout_ms.into());
        let mut deadline = Instant::now() + timeout;
        loop {
            let step = tokio::select! {
                biased;
                _ = self.registration.overflow.cancelled() => Err(slow_consumer()),
                _ = self.svc.shutdown.cancelled() => {
                    self.finish_sends().await;
                    Err(shutting_down())
                }
                // A Subscribe client has no frames to end with: its stream being dropped is
                // the only sign that it left.
                _ = self.out.closed() => Err(Stop::Gone),
                Some((client_msg_id, result)) = self.sends.next(), if !self.sends.is_empty() => {
                    self.emit(send_answer(client_msg_id, result)).await
                }
                event = self.registration.events.recv() => match event {
                    Some(c) => self.forward(c).await,
                    None => Err(Stop::Gone),
                },
                // The node may have missed deliveries (its link to the other nodes was down).
                _ = self.registration.resync.notified() => self.replay(&HashMap::new()).await.map(|_| ()),
                // With MAX_SENDS_IN_FLIGHT sends pending, the client waits for an answer.
                frame = next_frame(&mut inbound), if self.sends.len() < MAX_SENDS_IN_FLIGHT => match frame {
                    Some(Ok(cmd)) => {
                        deadline = Instant::now() + timeout;
                        self.handle(cmd).await
                    }
                    Some(Err(e)) => Err(Stop::Abort(e)),
                    // The client is done sending but may still read: answer what it sent
                    // (bounded, in case it stopped reading too), then end the stream.
                    None => {
                        let _ = tokio::time::timeout(timeout, self.finish_sends()).await;
                        Err(Stop::Gone)
                    }
                },
                _ = sleep_until(deadline), if inbound.is_some() => Err(Stop::Abort(Error::Unavailable(format!(
                    "no frame received for {} ms (heartbeat timeout); reconnect to resume",
                    timeout.as_millis()
                )))),
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// Answers the sends still waiting for their commit (they commit regardless), as long as
    /// the client takes the answers.
    async fn finish_sends(&mut self) {
        while let Some((client_msg_id, result)) = self.sends.next().await {
            if self.emit(send_answer(client_msg_id, result)).await.is_err() {
                return;
            }
        }
    }

    async fn forward(&mut self, c: Committed) -> Result<(), Stop> {
        let Event::Message(m) = &c.event else {
            return self.emit(Output::Event(c.event)).await;
        };
        if self.seqs.get(&m.chat_id).is_none() {
            // A chat this stream has no position in yet: the user joined it (or it was
            // created) after the stream began. Start where they joined, so nothing from
            // before that goes out, whatever members the fan-out had in mind when it handed
            // this message over (a lagging fan-out that misses its member cache reads today's
            // members).
            let membership = self
                .svc
                .store
                .membership(&m.chat_id, &self.user_id)
                .await
                .map_err(Stop::Abort)?;
            match membership {
                Membership::Member(access) => self.seqs.passed(&m.chat_id, access.joined_seq),
                Membership::NotMember | Membership::NoSuchChat => return Ok(()),
            }
        }
        match self.seqs.classify(&m.chat_id, m.seq) {
            Next::Duplicate => return Ok(()),
            Next::Gap { after } => {
                METRICS.gaps_filled.fetch_add(1, Relaxed);
                self.pass_range(&m.chat_id, after, m.seq).await?;
            }
            Next::Emit => {}
        }
        self.seqs.passed(&m.chat_id, m.seq);
        if self.is_own(m) {
            return Ok(());
        }
        self.emit(Output::Event(c.event)).await
    }

    async fn handle(&mut self, cmd: Command) -> Result<(), Stop> {
        match cmd {
            Command::Send(req) => {
                let client_msg_id = req.client_msg_id.clone();
                let now = now_ms();
                let messaging = &self.svc.messaging;
                // Refusals queue behind earlier sends too: answers come in the order of sends.
                let submitted = messaging
                    .submit(&self.user_id, &self.device_id, req, now)
                    .await;
                self.sends.push_back(Box::pin(async move {
                    let result = match submitted {
                        Ok(pending) => pending.await,
                        Err(error) => Err(error),
                    };
                    (client_msg_id, result)
                }));
                Ok(())
            }
            Command::Ack { chat_id, seq } => {
                self.cursor_in_background(ReceiptKind::Delivered, chat_id, seq)
                    .await
            }
            Command::Read { chat_id, seq } => {
                self.cursor_in_background(ReceiptKind::Read, chat_id, seq)
                    .await
            }
            Command::Ping { nonce } => {
                // A Pong confirms every Ack and Read sent before the Ping as durable: a client
                // that pings before it goes away resumes exactly where it acked.
                let all = ACKS_IN_FLIGHT as u32;
                drop(self.acks.acquire_many(all).await.map_err(|_| Stop::Gone)?);
                self.emit(Output::Pong {
                    nonce,
                    server_time: now_ms(),
                })
                .await
            }
            Command::Hello(_) => {
                let error = Error::invalid("hello", "the session already received its hello");
                self.emit(Output::FrameError {
                    frame: "hello",
                    error: error.clone(),
                    chat_id: String::new(),
                })
                .await?;
                Err(Stop::End(error))
            }
            Command::Typing { chat_id, started } => {
                let result = match started {
                    None => Err(Error::invalid("state", "must be STARTED or STOPPED")),
                    Some(started) => {
                        let svc = &self.svc.typing;
                        svc.set(&self.user_id, &self.device_id, &chat_id, started, now_ms())
                            .await
                    }
                };
                match result {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        self.emit(Output::FrameError {
                            frame: "typing",
                            error,
                            chat_id,
                        })
                        .await
                    }
                }
            }
            Command::WatchPresence { user_ids } => self.watch_presence(user_ids).await,
            Command::Empty => {
                let error = Error::invalid("frame", "the client frame has no content");
                self.emit(Output::FrameError {
                    frame: "",
                    error,
                    chat_id: String::new(),
                })
                .await
            }
        }
    }
}

/// A session's presence footprint: its device counts as online and its watches are
/// registered until this is dropped, however the session ends.
struct OnlineGuard {
    presence: Arc<PresenceService>,
    key: SessionKey,
    /// The users this session watches (those it may see).
    watched: Vec<String>,
}

impl OnlineGuard {
    async fn new(presence: &Arc<PresenceService>, key: SessionKey) -> crate::Result<Self> {
        presence.device_connected(&key).await?;
        Ok(OnlineGuard {
            presence: presence.clone(),
            key,
            watched: Vec::new(),
        })
    }
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let watched = std::mem::take(&mut self.watched);
        self.presence
            .spawn_disconnected(self.key.clone(), watched, now_ms());
    }
}

impl Session {
    /// Replaces the watched set and sends the current presence of every user asked for.
    async fn watch_presence(&mut self, user_ids: Vec<String>) -> Result<(), Stop> {
        let watcher = Watcher {
            queue: self.registration.queue.clone(),
            overflow: self.registration.overflow.clone(),
        };
        let presence = self.svc.presence.clone();
        let watched = presence
            .watch(
                &self.user_id,
                self.registration.session_id,
                &watcher,
                &self.online.watched,
                &user_ids,
            )
            .await;
        let current = match watched {
            Ok(watched) => {
                self.online.watched = watched;
                presence.get(&self.user_id, &user_ids).await
            }
            Err(e) => Err(e),
        };
        match current {
            Ok(list) => {
                for p in list {
                    self.emit(Output::Event(Event::Presence(Arc::new(p))))
                        .await?;
                }
                Ok(())
            }
            Err(error) => {
                let frame = Output::FrameError {
                    frame: "watch_presence",
                    error,
                    chat_id: String::new(),
                };
                self.emit(frame).await
            }
        }
    }

    /// Cursor moves don't answer on success, so they need not hold up the session: up to
    /// ACKS_IN_FLIGHT commit in the background, then the session waits. A failure comes back
    /// as an error frame.
    async fn cursor_in_background(
        &mut self,
        kind: ReceiptKind,
        chat_id: String,
        seq: u64,
    ) -> Result<(), Stop> {
        let permit = self
            .acks
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Stop::Gone)?;
        let (messaging, out) = (self.svc.messaging.clone(), self.out.clone());
        let (user_id, device_id) = (self.user_id.clone(), self.device_id.clone());
        tokio::spawn(async move {
            let result = messaging
                .move_cursor(&user_id, &device_id, &chat_id, seq, kind, now_ms())
                .await;
            if let Err(error) = result {
                let frame = match kind {
                    ReceiptKind::Delivered => "ack",
                    ReceiptKind::Read => "read",
                };
                let _ = out
                    .send(Output::FrameError {
                        frame,
                        error,
                        chat_id,
                    })
                    .await;
            }
            drop(permit);
        });
        Ok(())
    }
}

fn send_answer(client_msg_id: String, result: crate::Result<Appended>) -> Output {
    match result {
        Ok(a) => Output::SendAck {
            client_msg_id,
            message: a.message,
            duplicate: a.duplicate,
        },
        Err(error) => Output::SendError {
            client_msg_id,
            error,
        },
    }
}

async fn next_frame<S>(inbound: &mut Option<S>) -> Option<Result<Command, Error>>
where
    S: Stream<Item = Result<Command, Error>> + Unpin,
{
    match inbound {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn slow_consumer() -> Stop {
    METRICS.slow_consumers.fetch_add(1, Relaxed);
    Stop::Abort(Error::ResourceExhausted(
        "the session's outgoing queue is full (the client reads too slowly); reconnect to resume"
            .into(),
    ))
}

fn shutting_down() -> Stop {
    Stop::End(Error::Unavailable(
        "the server is shutting down; reconnect to resume".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_drops_duplicates_and_spots_gaps() {
        let mut t = SeqTracker::default();
        assert_eq!(t.classify("c1", 7), Next::Emit, "first message of a chat");
        t.passed("c1", 7);
        assert_eq!(t.classify("c1", 7), Next::Duplicate);
        assert_eq!(t.classify("c1", 3), Next::Duplicate);
        assert_eq!(t.classify("c1", 8), Next::Emit);
        assert_eq!(t.classify("c1", 10), Next::Gap { after: 7 });
        assert_eq!(t.classify("c2", 10), Next::Emit, "chats are independent");
        t.passed("c1", 5);
        assert_eq!(t.get("c1"), Some(7), "never moves back");
    }
}
