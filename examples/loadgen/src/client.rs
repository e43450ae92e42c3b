//! The client side of one device: connections (optionally bound to a chosen loopback source
//! address), unary helpers, and the `Connect` session driver.
//!
//! A session is opened with [`Session::open`]: Hello is queued before the call starts, then
//! Welcome, the backlog and SyncComplete are read (bounded by a timeout). After that a task
//! owns the response stream: it counts and times every frame, acks received messages like a
//! real client (every `ack_every` messages or `ack_interval`), optionally marks them read, and
//! pings at the heartbeat interval from Welcome. [`Session::close`] half-closes the request
//! stream and reads until the server ends the response (bounded), returning the device's
//! positions for a later resume.

use crate::stats::{inc, now_ns, Stats};
use crate::ws::Ended;
use chat_proto::v1::chat_service_client::ChatServiceClient;
use chat_proto::v1::{
    client_frame, server_frame::Frame, Ack, ClientFrame, Content, Hello, Ping, Read, Send,
    ServerFrame, WatchPresence,
};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Streaming};

pub type Client = ChatServiceClient<Channel>;

/// Where a session is opened: a `Connect` stream on a (possibly shared) HTTP/2 connection, or
/// a WebSocket on a TCP connection of its own (`--transport ws`).
pub enum Door {
    Grpc(Client),
    Ws {
        addr: SocketAddr,
        source: Option<IpAddr>,
    },
}

/// The server's frames of one session, whichever door it came through.
enum Inbound {
    // Boxed: one per session, moved into the session's task; the WebSocket reader is small.
    Grpc(Box<Streaming<ServerFrame>>),
    Ws(crate::ws::Reader),
}

impl Inbound {
    async fn message(&mut self) -> Result<Option<ServerFrame>, Ended> {
        match self {
            Inbound::Grpc(s) => s.message().await.map_err(|s| Ended {
                code: crate::stats::code_name(s.code() as i32),
                message: s.message().to_string(),
            }),
            Inbound::Ws(r) => r.message().await,
        }
    }
}

// ------------------------------------------------------------------ connections

/// Connects every channel's TCP socket to `addr`, from `source` when set (bind before connect,
/// with IP_BIND_ADDRESS_NO_PORT so the port is picked per 4-tuple, not per source address).
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    source: Option<IpAddr>,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + std::marker::Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, source) = (self.addr, self.source);
        Box::pin(async move { Ok(TokioIo::new(tcp_connect(addr, source).await?)) })
    }
}

/// A TCP connection to `addr`, from `source` when set, with Nagle off.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source {
        bind_no_port(&sock);
        sock.bind(SocketAddr::new(src, 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn bind_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size. Failure only
    // means the kernel picks the port at bind time (fewer usable ports); ignore it.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One HTTP/2 connection to the server (eager: connected when this returns).
pub async fn connect_channel(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("endpoint: {e}"))?
        .connect_timeout(timeout);
    let connector = Connector { addr, source };
    match tokio::time::timeout(timeout, endpoint.connect_with_connector(connector)).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(format!(
            "connect {addr} from {source:?}: {e} ({:?})",
            source_of(&e)
        )),
        Err(_) => Err(format!("connect {addr}: timed out after {timeout:?}")),
    }
}

fn source_of(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&c.to_string());
        s.push_str("; ");
        cur = c.source();
    }
    s
}

// ------------------------------------------------------------------ unary calls
//
// Raw tonic on the session's own connection (source-bound, on its node): `chat_sdk::Api` can
// only open a connection of its own today (README, "SDK").

/// `msg` with `authorization` (and `x-device-id` when given) metadata.
pub fn authed<T>(msg: T, token: &str, device: Option<&str>) -> Result<Request<T>, String> {
    let mut req = Request::new(msg);
    let md = req.metadata_mut();
    md.insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "token is not ASCII".to_string())?,
    );
    if let Some(d) = device {
        md.insert(
            "x-device-id",
            d.parse()
                .map_err(|_| "device id is not ASCII".to_string())?,
        );
    }
    Ok(req)
}

const UNARY_TIMEOUT: Duration = Duration::from_secs(20);

/// The setup calls go through the SDK's unary client on the loadgen's own connection (bound
/// to its source address), so they share the session's HTTP/2 connection as before.
fn api(ch: Channel, token: &str) -> Result<chat_sdk::Api, String> {
    chat_sdk::Api::with_channel(ch, token, None)
        .map(|a| a.with_timeout(UNARY_TIMEOUT))
        .map_err(|e| e.to_string())
}

/// OpenDirectChat as `token`'s user with `peer`; the chat id.
pub async fn open_direct(ch: Channel, token: &str, peer: &str) -> Result<String, String> {
    api(ch, token)?
        .open_direct_chat(peer)
        .await
        .map(|c| c.chat_id)
        .map_err(|e| format!("OpenDirectChat({peer}): {e}"))
}

/// CreateGroup as `token`'s user with `members`; the chat id.
pub async fn create_group(
    ch: Channel,
    token: &str,
    title: &str,
    members: Vec<String>,
) -> Result<String, String> {
    api(ch, token)?
        .create_group(title, &members)
        .await
        .map(|c| c.chat_id)
        .map_err(|e| format!("CreateGroup({title}): {e}"))
}

// ------------------------------------------------------------------ frames

pub fn frame(f: client_frame::Frame) -> ClientFrame {
    ClientFrame { frame: Some(f) }
}

/// A Send whose content carries the scheduled send time in `attributes["t"]`.
pub fn send_frame(client_msg_id: String, chat_id: String, t_ns: u64, text: &str) -> ClientFrame {
    let mut attributes = HashMap::with_capacity(1);
    attributes.insert("t".to_string(), t_ns.to_string());
    frame(client_frame::Frame::Send(Send {
        client_msg_id,
        chat_id,
        content: Some(Content {
            text: text.to_string(),
            ciphertext: Vec::new(),
            attributes,
        }),
    }))
}

fn t_of(content: &Option<Content>) -> Option<u64> {
    content.as_ref()?.attributes.get("t")?.parse().ok()
}

// ------------------------------------------------------------------ sessions

/// How sessions of a run behave.
pub struct SessionCfg {
    pub stats: Arc<Stats>,
    /// Ack after this many unacked messages...
    pub ack_every: u32,
    /// ...or this long after the first unacked one.
    pub ack_interval: Duration,
    /// Mark read (Read frames) this long after new messages; `None` never.
    pub read_interval: Option<Duration>,
    /// Deliveries one acked send should produce, by chat (members − 1).
    pub fanout: HashMap<String, u64>,
    /// Hello → SyncComplete deadline.
    pub sync_timeout: Duration,
    /// Close → end of response stream deadline.
    pub close_timeout: Duration,
    /// Capacity of a session's request queue.
    pub queue: usize,
    /// Override of the ping interval (default: Welcome's heartbeat interval).
    pub ping_interval: Option<Duration>,
}

/// Who a session is.
pub struct SessionSpec {
    pub idx: usize,
    pub user: String,
    pub device: String,
    pub token: String,
    /// WatchPresence right after SyncComplete, if non-empty.
    pub watch: Vec<String>,
    /// Closed-loop send window: the driver returns a permit per SendAck/SendError.
    pub window: Option<Arc<Semaphore>>,
}

/// A device's positions, kept across reconnects.
#[derive(Debug, Clone, Default)]
pub struct DeviceState {
    /// Highest seq received per chat from other devices.
    pub seen: HashMap<String, u64>,
    /// Highest seq acked / marked read per chat.
    pub acked: HashMap<String, u64>,
    pub read: HashMap<String, u64>,
    /// Seqs of this device's own acked sends per chat: the server replays them to nobody's
    /// device that sent them, so a backlog may skip exactly these.
    pub own: HashMap<String, std::collections::HashSet<u64>>,
}

/// What the opening handshake showed.
#[derive(Debug, Clone, Default)]
pub struct SyncInfo {
    /// Hello → Welcome and Hello → SyncComplete.
    pub welcome_ns: u64,
    pub sync_ns: u64,
    /// `SyncComplete.replayed`.
    pub replayed_reported: u64,
    /// MessageEvents before SyncComplete.
    pub replayed_received: u64,
    /// Backlog seqs that did not follow the previous one of their chat by exactly 1.
    pub backlog_gaps: u64,
    /// Per chat: (first seq, last seq, count) of the backlog.
    pub backlog: HashMap<String, (u64, u64, u64)>,
    pub heartbeat_interval_ms: u32,
}

pub struct Session {
    pub tx: mpsc::Sender<ClientFrame>,
    pub sync: SyncInfo,
    close: Option<oneshot::Sender<()>>,
    task: JoinHandle<DeviceState>,
}

impl Session {
    /// Start Connect, send Hello (with `state.seen` as the device's own positions when
    /// `own_positions`), read to SyncComplete. Failures are counted in the stats too.
    pub async fn open(
        door: Door,
        spec: Arc<SessionSpec>,
        state: DeviceState,
        cfg: Arc<SessionCfg>,
        own_positions: bool,
    ) -> Result<Session, String> {
        let stats = cfg.stats.clone();
        let r = Self::open_inner(door, spec, state, cfg, own_positions).await;
        if let Err(e) = &r {
            stats.error(&format!("session_open_failed:{}", e.0));
        }
        r.map_err(|e| e.1)
    }

    async fn open_inner(
        door: Door,
        spec: Arc<SessionSpec>,
        state: DeviceState,
        cfg: Arc<SessionCfg>,
        own_positions: bool,
    ) -> Result<Session, (&'static str, String)> {
        let who = format!("{}/{}", spec.user, spec.device);
        let (tx, rx) = mpsc::channel::<ClientFrame>(cfg.queue);
        let hello = Hello {
            device_id: spec.device.clone(),
            delivered_seq: if own_positions {
                state.seen.clone()
            } else {
                HashMap::new()
            },
            client_version: "chat-loadgen".into(),
        };
        tx.try_send(frame(client_frame::Frame::Hello(hello)))
            .map_err(|_| ("queue", format!("{who}: cannot queue hello")))?;
        let t_hello = now_ns();
        let deadline = Instant::now() + cfg.sync_timeout;
        let mut stream = match door {
            Door::Grpc(mut client) => {
                let req = authed(ReceiverStream::new(rx), &spec.token, Some(&spec.device))
                    .map_err(|e| ("auth", e))?;
                match tokio::time::timeout_at(deadline, client.connect(req)).await {
                    Ok(Ok(r)) => Inbound::Grpc(Box::new(r.into_inner())),
                    Ok(Err(s)) => {
                        let code = crate::stats::code_name(s.code() as i32);
                        return Err((code, format!("{who}: Connect: {code} {}", s.message())));
                    }
                    Err(_) => return Err(("timeout", format!("{who}: Connect timed out"))),
                }
            }
            Door::Ws { addr, source } => {
                let socket = crate::ws::connect(addr, source, cfg.sync_timeout)
                    .await
                    .map_err(|(code, e)| (code, format!("{who}: {e}")))?;
                Inbound::Ws(crate::ws::start(socket, rx, spec.token.clone()))
            }
        };
        let mut rxs = Receiver {
            shard: spec.idx,
            spec: spec.clone(),
            cfg: cfg.clone(),
            state,
            tx: Some(tx.clone()),
            unacked: 0,
            ack_due: None,
            read_due: None,
        };
        let mut sync = SyncInfo::default();
        // Welcome, then the backlog up to SyncComplete.
        let mut welcomed = false;
        let mut last_in_backlog: HashMap<String, u64> = HashMap::new();
        loop {
            let next = match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => {
                    return Err((
                        "timeout",
                        format!("{who}: no SyncComplete within {:?}", cfg.sync_timeout),
                    ))
                }
                Ok(Err(e)) => {
                    return Err((
                        e.code,
                        format!("{who}: stream failed during sync: {} {}", e.code, e.message),
                    ))
                }
                Ok(Ok(None)) => return Err(("ended", format!("{who}: stream ended during sync"))),
                Ok(Ok(Some(ServerFrame { frame: None }))) => {
                    cfg.stats.error("empty_server_frame");
                    continue;
                }
                Ok(Ok(Some(ServerFrame { frame: Some(f) }))) => f,
            };
            match next {
                Frame::Welcome(w) if !welcomed => {
                    welcomed = true;
                    sync.welcome_ns = now_ns() - t_hello;
                    sync.heartbeat_interval_ms = w.heartbeat_interval_ms;
                }
                Frame::SyncComplete(s) if welcomed => {
                    sync.sync_ns = now_ns() - t_hello;
                    sync.replayed_reported = s.replayed;
                    break;
                }
                Frame::Message(ev) if welcomed => {
                    sync.replayed_received += 1;
                    if let Some(m) = &ev.message {
                        let e = sync
                            .backlog
                            .entry(m.chat_id.clone())
                            .or_insert((m.seq, m.seq, 0));
                        e.1 = m.seq;
                        e.2 += 1;
                        if let Some(prev) = last_in_backlog.insert(m.chat_id.clone(), m.seq) {
                            let own = rxs.state.own.get(&m.chat_id);
                            let skipped_only_own =
                                (prev + 1..m.seq).all(|seq| own.is_some_and(|o| o.contains(&seq)));
                            if m.seq <= prev || !skipped_only_own {
                                sync.backlog_gaps += 1;
                            }
                        }
                    }
                    rxs.on_frame(Frame::Message(ev), false);
                }
                f
                @ (Frame::Receipt(_) | Frame::Typing(_) | Frame::Presence(_) | Frame::Chat(_)) => {
                    rxs.on_frame(f, false)
                }
                other => {
                    cfg.stats
                        .error(&format!("unexpected_frame_in_sync:{}", frame_name(&other)));
                    if !welcomed {
                        return Err((
                            "protocol",
                            format!("{who}: expected Welcome first, got {}", frame_name(&other)),
                        ));
                    }
                }
            }
        }
        cfg.stats.sync.record_us(spec.idx, sync.sync_ns / 1000);
        if sync.replayed_received != sync.replayed_reported {
            cfg.stats.error("sync_replayed_count_mismatch");
        }
        if sync.backlog_gaps > 0 {
            cfg.stats.error_n("backlog_seq_gaps", sync.backlog_gaps);
        }
        if !spec.watch.is_empty() {
            let f = frame(client_frame::Frame::WatchPresence(WatchPresence {
                user_ids: spec.watch.clone(),
            }));
            if tx.try_send(f).is_ok() {
                inc(&cfg.stats.c.watch_sent);
            }
        }
        if rxs.unacked > 0 {
            rxs.flush_acks();
        }
        let heartbeat = cfg.ping_interval.unwrap_or(Duration::from_millis(
            u64::from(sync.heartbeat_interval_ms).max(100),
        ));
        let (close_tx, close_rx) = oneshot::channel();
        let task = tokio::spawn(rxs.live(stream, close_rx, heartbeat));
        Ok(Session {
            tx,
            sync,
            close: Some(close_tx),
            task,
        })
    }

    /// Half-close the request stream and read until the server ends the response (bounded by
    /// the close timeout); the device's positions. Other holders of `tx` clones must drop them
    /// first or the stream only ends at the timeout.
    pub async fn close(mut self) -> DeviceState {
        if let Some(c) = self.close.take() {
            let _ = c.send(());
        }
        drop(self.tx);
        self.task.await.unwrap_or_default()
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

pub fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Welcome(_) => "welcome",
        Frame::Message(_) => "message",
        Frame::SendAck(_) => "send_ack",
        Frame::SendError(_) => "send_error",
        Frame::Receipt(_) => "receipt",
        Frame::Typing(_) => "typing",
        Frame::Presence(_) => "presence",
        Frame::Chat(_) => "chat",
        Frame::SyncComplete(_) => "sync_complete",
        Frame::Pong(_) => "pong",
        Frame::Error(_) => "error",
    }
}

/// The per-session receive side.
struct Receiver {
    shard: usize,
    spec: Arc<SessionSpec>,
    cfg: Arc<SessionCfg>,
    state: DeviceState,
    /// Dropped on close so the request stream can end.
    tx: Option<mpsc::Sender<ClientFrame>>,
    unacked: u32,
    ack_due: Option<Instant>,
    read_due: Option<Instant>,
}

impl Receiver {
    fn release(&self) {
        if let Some(w) = &self.spec.window {
            w.add_permits(1);
        }
    }

    fn on_frame(&mut self, f: Frame, live: bool) {
        let stats = &*self.cfg.stats;
        let c = &stats.c;
        match f {
            Frame::Message(ev) => {
                inc(&c.message_events);
                let Some(m) = ev.message else {
                    stats.error("message_event_without_message");
                    return;
                };
                if m.sender_user_id == self.spec.user && m.sender_device_id == self.spec.device {
                    inc(&c.self_echo);
                    return;
                }
                let seen = match self.state.seen.get_mut(&m.chat_id) {
                    Some(s) => s,
                    None => self.state.seen.entry(m.chat_id.clone()).or_insert(0),
                };
                if m.seq <= *seen {
                    inc(&c.duplicate_events);
                    stats.error("duplicate_or_reordered_delivery");
                    return;
                }
                *seen = m.seq;
                self.unacked += 1;
                let now = Instant::now();
                self.ack_due.get_or_insert(now + self.cfg.ack_interval);
                if let Some(ri) = self.cfg.read_interval {
                    self.read_due.get_or_insert(now + ri);
                }
                match t_of(&m.content) {
                    None => inc(&c.foreign_events),
                    Some(t) if !stats.in_cohort(t) => inc(&c.warmup_events),
                    Some(t) => {
                        inc(&c.delivered);
                        if live {
                            stats.deliver.record_since(self.shard, t);
                        } else {
                            inc(&c.delivered_replayed);
                        }
                    }
                }
                if self.unacked >= self.cfg.ack_every {
                    self.flush_acks();
                }
            }
            Frame::SendAck(a) => {
                self.release();
                if a.duplicate {
                    inc(&c.duplicate_acks);
                    stats.error("duplicate_send_ack");
                    return;
                }
                inc(&c.acked_total);
                if let Some(m) = &a.message {
                    self.state
                        .own
                        .entry(m.chat_id.clone())
                        .or_default()
                        .insert(m.seq);
                    if let Some(t) = t_of(&m.content) {
                        if stats.in_cohort(t) {
                            inc(&c.acked);
                            stats.ack.record_since(self.shard, t);
                            let fan = self.cfg.fanout.get(&m.chat_id).copied().unwrap_or(0);
                            c.expected_deliveries.fetch_add(fan, Relaxed);
                        }
                    }
                } else {
                    stats.error("send_ack_without_message");
                }
            }
            Frame::SendError(e) => {
                self.release();
                stats.send_error(e.code);
            }
            Frame::Receipt(_) => inc(&c.receipts),
            Frame::Typing(_) => inc(&c.typing_events),
            Frame::Presence(_) => inc(&c.presence_events),
            Frame::Chat(_) => inc(&c.chat_events),
            Frame::Pong(p) => {
                inc(&c.pongs);
                stats.ping.record_since(self.shard, p.nonce);
            }
            Frame::Error(e) => stats.frame_error(&e.frame, e.code),
            other => stats.error(&format!("unexpected_frame:{}", frame_name(&other))),
        }
    }

    /// Queue without waiting: Ack/Read/Ping are cumulative or periodic, so a full queue only
    /// postpones them (never block the reader: the server may be waiting for us to read).
    fn try_queue(&self, f: client_frame::Frame) -> bool {
        match &self.tx {
            Some(tx) => match tx.try_send(frame(f)) {
                Ok(()) => true,
                Err(_) => {
                    inc(&self.cfg.stats.c.frames_skipped_full);
                    false
                }
            },
            None => false,
        }
    }

    fn flush_acks(&mut self) {
        self.ack_due = None;
        self.unacked = 0;
        let pending: Vec<(String, u64)> = self
            .state
            .seen
            .iter()
            .filter(|(chat, seq)| self.state.acked.get(*chat).is_none_or(|a| a < *seq))
            .map(|(c, s)| (c.clone(), *s))
            .collect();
        for (chat_id, seq) in pending {
            if self.try_queue(client_frame::Frame::Ack(Ack {
                chat_id: chat_id.clone(),
                seq,
            })) {
                inc(&self.cfg.stats.c.acks_sent);
                self.state.acked.insert(chat_id, seq);
            } else {
                // Try again at the next tick.
                self.ack_due = Some(Instant::now() + self.cfg.ack_interval);
            }
        }
    }

    fn flush_reads(&mut self) {
        self.read_due = None;
        let pending: Vec<(String, u64)> = self
            .state
            .seen
            .iter()
            .filter(|(chat, seq)| self.state.read.get(*chat).is_none_or(|a| a < *seq))
            .map(|(c, s)| (c.clone(), *s))
            .collect();
        for (chat_id, seq) in pending {
            if self.try_queue(client_frame::Frame::Read(Read {
                chat_id: chat_id.clone(),
                seq,
            })) {
                inc(&self.cfg.stats.c.reads_sent);
                self.state.read.insert(chat_id, seq);
            }
        }
    }

    async fn live(
        mut self,
        mut stream: Inbound,
        mut close: oneshot::Receiver<()>,
        heartbeat: Duration,
    ) -> DeviceState {
        // Spread the first pings over one interval so sessions don't ping in lockstep.
        let jitter =
            crate::traffic::mix(self.spec.idx as u64) % (heartbeat.as_millis() as u64).max(1);
        let far = Instant::now() + Duration::from_secs(86_400);
        // Timers are pinned and only re-armed when their deadline changes: a select loop
        // that built fresh sleeps per frame would churn the timer wheel at high frame rates.
        let ping = tokio::time::sleep_until(Instant::now() + Duration::from_millis(jitter));
        let ack_t = tokio::time::sleep_until(far);
        let read_t = tokio::time::sleep_until(far);
        let close_t = tokio::time::sleep_until(far);
        tokio::pin!(ping, ack_t, read_t, close_t);
        let (mut ack_set, mut read_set) = (None, None);
        let mut closing = false;
        let stats = self.cfg.stats.clone();
        loop {
            if self.ack_due != ack_set {
                ack_set = self.ack_due;
                ack_t.as_mut().reset(ack_set.unwrap_or(far));
            }
            if self.read_due != read_set {
                read_set = self.read_due;
                read_t.as_mut().reset(read_set.unwrap_or(far));
            }
            tokio::select! {
                r = stream.message() => match r {
                    Ok(Some(ServerFrame { frame: Some(f) })) => self.on_frame(f, true),
                    Ok(Some(ServerFrame { frame: None })) => stats.error("empty_server_frame"),
                    Ok(None) => {
                        if !closing {
                            stats.stream_failure("ended_by_server:OK");
                        }
                        return self.state;
                    }
                    Err(Ended { code: name, .. }) => {
                        if !closing {
                            stats.stream_failure(name);
                        } else {
                            stats.error(&format!("close_ended_with:{name}"));
                        }
                        return self.state;
                    }
                },
                _ = &mut close, if !closing => {
                    // Ack what we have (a client going away cleanly), then half-close.
                    self.flush_acks();
                    self.tx = None;
                    closing = true;
                    close_t.as_mut().reset(Instant::now() + self.cfg.close_timeout);
                }
                _ = &mut close_t, if closing => {
                    stats.error("close_timeout");
                    return self.state;
                }
                _ = &mut ping, if !closing => {
                    ping.as_mut().reset(Instant::now() + heartbeat);
                    if self.try_queue(client_frame::Frame::Ping(Ping { nonce: now_ns() })) {
                        inc(&stats.c.pings_sent);
                    }
                }
                _ = &mut ack_t, if self.ack_due.is_some() && !closing => self.flush_acks(),
                _ = &mut read_t, if self.read_due.is_some() && !closing => self.flush_reads(),
            }
        }
    }
}
