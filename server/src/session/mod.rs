//! One connected device, from its hello to its end: the hello, registration in the
//! [`Directory`] and the registry, the replay of its backlog (`replay.rs`), `SyncComplete`, then
//! the live loop — events from its queue, client frames, up to `MAX_SENDS_IN_FLIGHT` sends
//! pipelined and answered in order, cursor moves committed in the background, heartbeats —
//! until the client leaves, the queue overflows, a heartbeat is missed or the node shuts down.
//! Registration comes before the replay so nothing committed meanwhile is missed (it waits in
//! the queue). The session speaks in domain terms ([`Command`] in, [`Output`] out, see
//! `protocol.rs`); the transport turns those into frames. Its presence (device up/down,
//! watched users) is in `presence.rs`.

pub mod directory;
mod presence;
mod protocol;
mod replay;

use crate::clock::now_ms;
use crate::domain::{
    ids, messaging::Messaging, model::*, presence::PresenceService, typing::TypingService,
};
use crate::metrics::METRICS;
use crate::registry::SessionKey;
use crate::store::{Appended, Store};
use crate::Error;
pub use directory::Directory;
use futures_util::{stream::FuturesOrdered, Stream, StreamExt};
use presence::OnlineGuard;
use protocol::send_answer;
pub use protocol::{Command, FrameRefusal, Hello, Outlet, Output, SendRefusal, Welcome};
use replay::SeqTracker;
use std::sync::atomic::Ordering::Relaxed;
use std::{collections::HashMap, sync::Arc, time::Duration};
use std::{future::Future, pin::Pin};
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Sends one session may have waiting for their commit; they share commits with each other.
const MAX_SENDS_IN_FLIGHT: usize = 64;
/// Acks a session may have in flight before it stops reading its client.
const ACKS_IN_FLIGHT: usize = 64;

/// Session timing and limits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    pub heartbeat_interval_ms: u32,
    pub heartbeat_timeout_ms: u32,
    /// Capacity of the queue between the fan-out and the session.
    pub queue: usize,
    /// Live sessions one user may have across the cluster (0: no limit); the session that would
    /// go past it ends at its start with RESOURCE_EXHAUSTED.
    pub max_sessions_per_user: u32,
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

/// Why a session stopped.
enum Stop {
    /// The client went away; nothing more to say.
    Gone,
    /// End after what is queued (protocol errors).
    End(Error),
    /// End now (slow consumer, shutdown, heartbeat timeout).
    Abort(Error),
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
    out: crate::queue::Sender<Output>,
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

/// Runs a session inside its span (user and device; never a token): every log line of the
/// session, and of the messages it sends, names them.
async fn run<S>(
    svc: Arc<Services>,
    user_id: String,
    hello: Hello,
    inbound: Option<S>,
    outlet: Outlet,
) where
    S: Stream<Item = Result<Command, Error>> + Unpin + Send,
{
    let span = tracing::info_span!(
        "session",
        user = %user_id,
        device = %hello.device_id,
        session_id = tracing::field::Empty,
    );
    run_session(svc, user_id, hello, inbound, outlet)
        .instrument(span)
        .await
}

async fn run_session<S>(
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
    tracing::Span::current().record("session_id", registration.session_id);
    let key = SessionKey {
        user_id: user_id.clone(),
        device_id: hello.device_id.clone(),
        session_id: registration.session_id,
    };
    let max_sessions = svc.settings.max_sessions_per_user;
    let online = match Box::pin(OnlineGuard::new(&svc.presence, key, max_sessions)).await {
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
    // The start (welcome, replay) runs once: boxed, so its state does not size the task that
    // an idle session keeps for hours (a future is as large as its largest await point).
    let started = Box::pin(session.start(&hello)).await;
    drop(hello);
    let stop = match started {
        Ok(()) => session.live(inbound).await,
        Err(stop) => stop,
    };
    match stop {
        Stop::Gone => {}
        Stop::End(e) => {
            // After what is already queued (a SendAck the client waits for), if there is room;
            // a client that doesn't read gets the status at once instead.
            if session
                .out
                .try_send(Output::End(Box::new(e.clone())))
                .is_err()
            {
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
            _ = self.registration.closed.cancelled() => Err(self.closed()),
            _ = self.svc.shutdown.cancelled() => Err(shutting_down()),
        }
    }

    /// Why the directory closed this session: an eviction if it was marked so (the rare
    /// case), otherwise its queue overflowed.
    fn closed(&mut self) -> Stop {
        if self.registration.evicted() {
            // Its going away then records no last seen.
            self.online.evicted = true;
            evicted()
        } else {
            slow_consumer()
        }
    }

    /// Welcome, the backlog, SyncComplete.
    async fn start(&mut self, hello: &Hello) -> Result<(), Stop> {
        let settings = &self.svc.settings;
        self.emit(Output::Welcome(Box::new(Welcome {
            session_id: format!("{}-{}", settings.node_id, self.registration.session_id),
            node_id: settings.node_id.clone(),
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            heartbeat_timeout_ms: settings.heartbeat_timeout_ms,
        })))
        .await?;
        let replayed = self.replay(&hello.delivered_seq).await?;
        self.emit(Output::SyncComplete { replayed }).await
    }

    async fn live<S>(&mut self, mut inbound: Option<S>) -> Stop
    where
        S: Stream<Item = Result<Command, Error>> + Unpin + Send,
    {
        let timeout = Duration::from_millis(self.svc.settings.heartbeat_timeout_ms.into());
        let mut deadline = Instant::now() + timeout;
        // A Subscribe client cannot ping, so the server speaks up every heartbeat interval: a
        // write to a connection that silently died fails and ends the session (marking the
        // device offline), and the client learns that a silent stream is a dead one.
        // Only a Subscribe session has one: an interval is a timer allocation of its own.
        let interval = Duration::from_millis(self.svc.settings.heartbeat_interval_ms.into());
        let mut keepalive = inbound.is_none().then(|| {
            let mut k = tokio::time::interval_at(Instant::now() + interval, interval);
            k.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            k
        });
        loop {
            let step = tokio::select! {
                biased;
                _ = self.registration.closed.cancelled() => Err(self.closed()),
                _ = self.svc.shutdown.cancelled() => {
                    Box::pin(self.finish_sends()).await;
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
                _ = self.registration.resync.notified() => {
                    Box::pin(self.replay(&HashMap::new())).await.map(|_| ())
                }
                // With MAX_SENDS_IN_FLIGHT sends pending, the client waits for an answer.
                frame = next_frame(&mut inbound), if self.sends.len() < MAX_SENDS_IN_FLIGHT => match frame {
                    Some(Ok(cmd)) => {
                        deadline = Instant::now() + timeout;
                        // Boxed: the commands' states (a submit, a presence watch) are the
                        // largest in the session and an idle session never holds them.
                        Box::pin(self.handle(cmd)).await
                    }
                    Some(Err(e)) => Err(Stop::Abort(e)),
                    // The client is done sending but may still read: answer what it sent
                    // (bounded, in case it stopped reading too), then end the stream.
                    None => {
                        let _ = tokio::time::timeout(timeout, Box::pin(self.finish_sends())).await;
                        Err(Stop::Gone)
                    }
                },
                _ = tick(&mut keepalive), if keepalive.is_some() => {
                    self.emit(Output::Pong { nonce: 0, server_time: now_ms() }).await
                }
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
                self.emit(Output::frame_error("hello", error.clone(), String::new()))
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
                        self.emit(Output::frame_error("typing", error, chat_id))
                            .await
                    }
                }
            }
            Command::WatchPresence { user_ids } => self.watch_presence(user_ids).await,
            Command::Empty => {
                let error = Error::invalid("frame", "the client frame has no content");
                self.emit(Output::frame_error("", error, String::new()))
                    .await
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
                let _ = out.send(Output::frame_error(frame, error, chat_id)).await;
            }
            drop(permit);
        });
        Ok(())
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

async fn tick(keepalive: &mut Option<tokio::time::Interval>) {
    match keepalive {
        Some(k) => {
            k.tick().await;
        }
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

fn evicted() -> Stop {
    Stop::Abort(Error::PermissionDenied(
        "an operator erased this user's data (DeleteUserData); the session is closed".into(),
    ))
}

fn shutting_down() -> Stop {
    Stop::End(Error::Unavailable(
        "the server is shutting down; reconnect to resume".into(),
    ))
}
