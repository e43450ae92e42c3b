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
use crate::inbox;
use crate::metrics::METRICS;
use crate::queue::TrySendError;
use crate::registry::SessionKey;
use crate::store::{Appended, Store};
use crate::Error;
pub use directory::Directory;
use futures_util::{stream::FuturesOrdered, FutureExt, Stream, StreamExt};
use presence::OnlineGuard;
use protocol::send_answer;
pub use protocol::{Command, FrameRefusal, Hello, Outlet, Output, SendRefusal, Welcome};
use replay::SeqTracker;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::{Instant, Sleep};
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
    /// Cancelled when the node shuts down. Sessions hear of it through their inbox
    /// ([`Directory::close_all`]); the transports watch it while no session runs.
    pub shutdown: tokio_util::sync::CancellationToken,
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
    /// Sends waiting for their commit, answered in the order they were sent; made by the first
    /// send (a `FuturesOrdered` allocates as it is made, and many sessions never send).
    sends: Option<FuturesOrdered<InFlightSend>>,
    /// Keeps the device counted online and the presence watches alive while the session is;
    /// it also holds the session's user and device.
    online: OnlineGuard,
    out: crate::queue::Sender<Output>,
    registration: directory::Registration,
    seqs: SeqTracker,
    /// Cursor moves committing in the background; made by the first.
    acks: Option<Arc<Semaphore>>,
}

/// A session past its start: all its live loop needs.
struct Opened<S> {
    session: Session,
    inbound: Option<S>,
    abort: oneshot::Sender<Error>,
    span: tracing::Span,
}

/// What woke the live loop, in the order it looks (as a `biased` select would).
enum Wake {
    /// The directory ended the session (the [`inbox::STOPS`] raised).
    Stop(u8),
    /// The transport dropped the output stream.
    ClientGone,
    Answer(String, crate::Result<Appended>),
    Event(Option<Committed>),
    Resync,
    Frame(Option<Result<Command, Error>>),
    /// The heartbeat deadline (`Connect`) or the next keepalive (`Subscribe`).
    Timer,
}

/// Runs a `Connect` session: `inbound` yields the client's frames (an `Err` ends the session).
///
/// An idle session keeps this future for hours, so it holds only the live loop's state: the
/// start (the hello, registration, the welcome and the replay) runs boxed and is freed once it
/// is done.
pub fn run_connect<S>(
    svc: Arc<Services>,
    user_id: String,
    device_hint: Option<String>,
    inbound: S,
    outlet: Outlet,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Command, Error>> + Unpin + Send,
{
    Box::pin(open_connect(svc, user_id, device_hint, inbound, outlet)).then(run_opened)
}

/// Runs a `Subscribe` session: the same events, no client frames.
pub fn run_subscribe(
    svc: Arc<Services>,
    user_id: String,
    hello: Hello,
    outlet: Outlet,
) -> impl Future<Output = ()> + Send {
    type NoFrames = futures_util::stream::Empty<Result<Command, Error>>;
    Box::pin(open::<NoFrames>(svc, user_id, hello, None, outlet)).then(run_opened)
}

async fn open_connect<S>(
    svc: Arc<Services>,
    user_id: String,
    device_hint: Option<String>,
    mut inbound: S,
    outlet: Outlet,
) -> Option<Opened<S>>
where
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
        Ok(None) => return None,
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
    open(svc, user_id, hello, Some(inbound), outlet).await
}

/// Ends a session that did not start, with `error`.
fn end<S>(outlet: Outlet, error: Error) -> Option<Opened<S>> {
    let _ = outlet.abort.send(error);
    None
}

/// Starts a session inside its span (user and device; never a token): every log line of the
/// session, and of the messages it sends, names them.
async fn open<S>(
    svc: Arc<Services>,
    user_id: String,
    hello: Hello,
    inbound: Option<S>,
    outlet: Outlet,
) -> Option<Opened<S>>
where
    S: Stream<Item = Result<Command, Error>> + Unpin + Send,
{
    let span = tracing::info_span!(
        "session",
        user = %user_id,
        device = %hello.device_id,
        session_id = tracing::field::Empty,
    );
    let started = start(svc, user_id, hello, outlet.out)
        .instrument(span.clone())
        .await;
    match started {
        Ok(session) => Some(Opened {
            session,
            inbound,
            abort: outlet.abort,
            span,
        }),
        Err(Some(e)) => {
            let _ = outlet.abort.send(e);
            None
        }
        Err(None) => None,
    }
}

/// Registers the session and sends the welcome, the backlog and `SyncComplete`. An `Err`
/// carries the error to end the stream with at once, if there is one.
async fn start(
    svc: Arc<Services>,
    user_id: String,
    hello: Hello,
    out: crate::queue::Sender<Output>,
) -> Result<Session, Option<Error>> {
    ids::check_device_id(&hello.device_id)?;
    svc.store
        .register_device(&user_id, &hello.device_id, now_ms())
        .await?;
    let registration = svc
        .directory
        .register(&user_id, &hello.device_id, svc.settings.queue);
    tracing::Span::current().record("session_id", registration.session_id);
    let key = SessionKey {
        user_id,
        device_id: hello.device_id.clone(),
        session_id: registration.session_id,
    };
    let max_sessions = svc.settings.max_sessions_per_user;
    let online = OnlineGuard::new(&svc.presence, key, max_sessions).await?;
    let mut session = Session {
        svc,
        out,
        registration,
        online,
        sends: None,
        seqs: SeqTracker::default(),
        acks: None,
    };
    let settings = &session.svc.settings;
    let welcome = Output::Welcome(Box::new(Welcome {
        session_id: format!("{}-{}", settings.node_id, session.registration.session_id),
        node_id: settings.node_id.clone(),
        heartbeat_interval_ms: settings.heartbeat_interval_ms,
        heartbeat_timeout_ms: settings.heartbeat_timeout_ms,
    }));
    let started = async {
        session.emit(welcome).await?;
        let replayed = session.replay(&hello.delivered_seq).await?;
        session.emit(Output::SyncComplete { replayed }).await
    };
    match started.await {
        Ok(()) => Ok(session),
        Err(stop) => Err(session.ended(stop)),
    }
}

/// The live loop of an opened session, then its end. A block over its one argument, not an
/// `async fn`: an `async fn` keeps a second copy of its arguments in its future.
#[allow(clippy::manual_async_fn)]
fn run_opened<S>(mut opened: Option<Opened<S>>) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Command, Error>> + Unpin + Send,
{
    async move {
        let stop = match opened.as_mut() {
            Some(o) => {
                let live = o.session.live(&mut o.inbound);
                live.instrument(o.span.clone()).await
            }
            None => return,
        };
        if let Some(o) = opened {
            let _entered = o.span.enter();
            let mut session = o.session;
            if let Some(e) = session.ended(stop) {
                let _ = o.abort.send(e);
            }
        }
    }
}

impl Session {
    fn user_id(&self) -> &str {
        &self.online.key.user_id
    }

    fn device_id(&self) -> &str {
        &self.online.key.device_id
    }

    /// Tells the client why the session stopped: returns the error to end the stream with at
    /// once, if any (an `End` goes out after what is queued, if there is room for it).
    fn ended(&mut self, stop: Stop) -> Option<Error> {
        match stop {
            Stop::Gone => None,
            Stop::End(e) => {
                // After what is already queued (a SendAck the client waits for), if there is
                // room; a client that doesn't read gets the status at once instead.
                let end = Output::End(Box::new(e.clone()));
                self.out.try_send(end).err().map(|_| e)
            }
            Stop::Abort(e) => {
                tracing::debug!(user = %self.user_id(), device = %self.device_id(), error = %e, "session aborted");
                Some(e)
            }
        }
    }

    /// Sends one output, unless the session must stop before there is room for it.
    async fn emit(&mut self, output: Output) -> Result<(), Stop> {
        let message = matches!(output, Output::Event(Event::Message(_)));
        match self.out.try_send(output) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return Err(Stop::Gone),
            // Rare (the client reads slowly): boxed, so its state is not in every session.
            Err(TrySendError::Full(output)) => Box::pin(self.emit_when_room(output)).await?,
        }
        if message {
            METRICS.messages_delivered.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Waits for room for `output`. Sending goes first, so an answer to a committed send
    /// still goes out during shutdown.
    async fn emit_when_room(&mut self, output: Output) -> Result<(), Stop> {
        let events = &mut self.registration.events;
        let signals = tokio::select! {
            biased;
            sent = self.out.send(output) => return sent.map_err(|_| Stop::Gone),
            signals = poll_fn(|cx| events.poll_signal(cx, inbox::STOPS)) => signals,
        };
        Err(self.stopped(signals))
    }

    /// Why the directory ended this session, from the signals it raised.
    fn stopped(&mut self, signals: u8) -> Stop {
        if signals & inbox::EVICTED != 0 {
            // Its going away then records no last seen.
            self.online.evicted = true;
            evicted()
        } else if signals & inbox::OVERFLOWED != 0 {
            slow_consumer()
        } else {
            shutting_down()
        }
    }

    fn sends_in_flight(&self) -> usize {
        self.sends.as_ref().map_or(0, |s| s.len())
    }

    /// Everything the live loop waits for, polled in place: the session holds no future per
    /// thing it waits for, only its timer.
    fn poll_wake<S>(
        &mut self,
        cx: &mut Context<'_>,
        inbound: &mut Option<S>,
        timer: Pin<&mut Sleep>,
    ) -> Poll<Wake>
    where
        S: Stream<Item = Result<Command, Error>> + Unpin,
    {
        let events = &mut self.registration.events;
        if let Poll::Ready(signals) = events.poll_signal(cx, inbox::STOPS) {
            return Poll::Ready(Wake::Stop(signals));
        }
        // A Subscribe client has no frames to end with: its stream being dropped is the only
        // sign that it left.
        if self.out.poll_closed(cx).is_ready() {
            return Poll::Ready(Wake::ClientGone);
        }
        if let Some(sends) = self.sends.as_mut() {
            if let Poll::Ready(Some((client_msg_id, result))) = sends.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Answer(client_msg_id, result));
            }
        }
        if let Poll::Ready(event) = events.poll_recv(cx) {
            return Poll::Ready(Wake::Event(event));
        }
        if events.take_signal(inbox::RESYNC) != 0 {
            return Poll::Ready(Wake::Resync);
        }
        // With MAX_SENDS_IN_FLIGHT sends pending, the client waits for an answer.
        if self.sends_in_flight() < MAX_SENDS_IN_FLIGHT {
            if let Some(frames) = inbound.as_mut() {
                if let Poll::Ready(frame) = frames.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Frame(frame));
                }
            }
        }
        if timer.poll(cx).is_ready() {
            return Poll::Ready(Wake::Timer);
        }
        Poll::Pending
    }

    async fn live<S>(&mut self, inbound: &mut Option<S>) -> Stop
    where
        S: Stream<Item = Result<Command, Error>> + Unpin + Send,
    {
        let settings = &self.svc.settings;
        let timeout = Duration::from_millis(settings.heartbeat_timeout_ms.into());
        // A Subscribe client cannot ping, so the server speaks up every heartbeat interval: a
        // write to a connection that silently died fails and ends the session (marking the
        // device offline), and the client learns that a silent stream is a dead one. A
        // Connect client must send something within the heartbeat timeout. One timer serves
        // either.
        let interval = Duration::from_millis(settings.heartbeat_interval_ms.into());
        let period = if inbound.is_some() { timeout } else { interval };
        let timer = tokio::time::sleep(period);
        tokio::pin!(timer);
        loop {
            let wake = poll_fn(|cx| self.poll_wake(cx, inbound, timer.as_mut())).await;
            let step = match wake {
                Wake::Stop(signals) => {
                    if signals == inbox::SHUTDOWN {
                        Box::pin(self.finish_sends()).await;
                    }
                    Err(self.stopped(signals))
                }
                Wake::ClientGone => Err(Stop::Gone),
                Wake::Answer(client_msg_id, result) => {
                    self.emit(send_answer(client_msg_id, result)).await
                }
                Wake::Event(Some(c)) => self.forward(c).await,
                Wake::Event(None) => Err(Stop::Gone),
                // The node may have missed deliveries (its link to the other nodes was down).
                Wake::Resync => Box::pin(self.replay(&HashMap::new())).await.map(|_| ()),
                Wake::Frame(Some(Ok(cmd))) => {
                    timer.as_mut().reset(Instant::now() + timeout);
                    // Boxed: the commands' states (a submit, a presence watch) are the
                    // largest in the session and an idle session never holds them.
                    Box::pin(self.handle(cmd)).await
                }
                Wake::Frame(Some(Err(e))) => Err(Stop::Abort(e)),
                // The client is done sending but may still read: answer what it sent
                // (bounded, in case it stopped reading too), then end the stream.
                Wake::Frame(None) => {
                    let answers = tokio::time::timeout(timeout, self.finish_sends());
                    let _ = Box::pin(answers).await;
                    Err(Stop::Gone)
                }
                Wake::Timer if inbound.is_some() => Err(Stop::Abort(Error::Unavailable(format!(
                    "no frame received for {} ms (heartbeat timeout); reconnect to resume",
                    timeout.as_millis()
                )))),
                Wake::Timer => {
                    timer.as_mut().reset(Instant::now() + interval);
                    self.emit(Output::Pong {
                        nonce: 0,
                        server_time: now_ms(),
                    })
                    .await
                }
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// Answers the sends still waiting for their commit (they commit regardless), as long as
    /// the client takes the answers.
    async fn finish_sends(&mut self) {
        while let Some(sends) = self.sends.as_mut() {
            let Some((client_msg_id, result)) = sends.next().await else {
                return;
            };
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
                    .submit(self.user_id(), self.device_id(), req, now)
                    .await;
                let sends = self.sends.get_or_insert_with(FuturesOrdered::new);
                sends.push_back(Box::pin(async move {
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
                if let Some(acks) = &self.acks {
                    let all = ACKS_IN_FLIGHT as u32;
                    drop(acks.acquire_many(all).await.map_err(|_| Stop::Gone)?);
                }
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
                        svc.set(
                            self.user_id(),
                            self.device_id(),
                            &chat_id,
                            started,
                            now_ms(),
                        )
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
        let acks = self
            .acks
            .get_or_insert_with(|| Arc::new(Semaphore::new(ACKS_IN_FLIGHT)));
        let permit = acks.clone().acquire_owned().await.map_err(|_| Stop::Gone)?;
        let (messaging, out) = (self.svc.messaging.clone(), self.out.clone());
        let (user_id, device_id) = (self.user_id().to_string(), self.device_id().to_string());
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
