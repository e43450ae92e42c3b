//! Clients that behave like real ones when things break (cluster and fault tests).
//!
//! * [`Receiver`]: one device that keeps a Connect session to one of the cluster's nodes. When
//!   its stream ends (node killed, backend trouble) it reconnects, to the same node first and to
//!   the next one when that fails, with `Hello.delivered_seq` = the last seq it delivered per
//!   chat. It drops duplicates by seq and records anything out of order or missing
//!   ([`Receiver::violations`]); it acks what it has, and pings so that it is never dropped for
//!   silence.
//! * [`Sender`]: one device that sends a list of messages over a Connect stream with a window of
//!   sends in flight, optionally paced. Unanswered sends are sent again with the same
//!   `client_msg_id` after a reconnect (a real client's retry; the server answers duplicates
//!   with the original). UNAVAILABLE and RESOURCE_EXHAUSTED answers are retried when
//!   [`SenderConfig::retry_unavailable`] is set; everything else is recorded in
//!   [`Sender::errors`].
//!
//! Both run as tasks ([`Receiver::spawn`], [`Sender::spawn`]) and hand themselves back when
//! done, so the test can inspect everything they saw.

use crate::auth::Auth;
use crate::session::{Event, Frame, Session};
use crate::util::Client;
use chat_proto::v1::chat_service_client::ChatServiceClient;
use chat_proto::v1::{client_frame, Message, Ping};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Endpoint;

/// How long a (re)connect may take: Welcome, backlog and SyncComplete.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between two frames of one sync before the attempt is abandoned.
const FRAME_TIMEOUT: Duration = Duration::from_secs(15);
/// Pings at least this often.
const PING_EVERY: Duration = Duration::from_secs(3);

/// The addresses of a cluster's nodes, shared by the clients: a test updates an entry when it
/// restarts a node (which then listens on a new port).
#[derive(Clone, Debug)]
pub struct NodeList(Arc<RwLock<Vec<SocketAddr>>>);

impl NodeList {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        assert!(!addrs.is_empty(), "at least one node");
        NodeList(Arc::new(RwLock::new(addrs)))
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> SocketAddr {
        self.0.read().unwrap()[i]
    }

    /// Node `i` now listens on `addr`.
    pub fn set(&self, i: usize, addr: SocketAddr) {
        self.0.write().unwrap()[i] = addr;
    }
}

/// A client for `addr` with `authorization`/`x-device-id`.
pub fn client_at(addr: SocketAddr, token: &str, device: &str) -> Client {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    ChatServiceClient::with_interceptor(endpoint.connect_lazy(), Auth::bearer(token, device))
}

// ------------------------------------------------------------------------------- receiver

/// What a receiver must reach: `targets[chat]` = the seq it must have delivered, by `deadline`.
#[derive(Clone, Debug)]
pub struct Goal {
    pub targets: HashMap<String, u64>,
    pub deadline: Instant,
}

pub struct Receiver {
    pub user: String,
    pub device: String,
    token: String,
    nodes: NodeList,
    /// Index in `nodes` of the node it uses (or tries) now.
    pub node: usize,
    session: Option<Session>,
    /// Per chat: the highest seq delivered.
    pub last: HashMap<String, u64>,
    /// Per chat: the messages delivered, deduplicated, in the order they arrived.
    pub messages: HashMap<String, Vec<Message>>,
    /// Per chat: when each of `messages` arrived.
    pub arrivals: HashMap<String, Vec<Instant>>,
    /// Messages dropped because their seq was not above `last`.
    pub duplicates: u64,
    /// Gaps and reorderings (after dropping duplicates). Must stay empty.
    pub violations: Vec<String>,
    /// Stream ends after a successful connect.
    pub disconnects: u32,
    /// Connect attempts that failed.
    pub failed_connects: u32,
    /// Node ids from the Welcome of each connect, in order.
    pub welcomed_by: Vec<String>,
    /// A human-readable log of connects and disconnects (for failure messages).
    pub log: Vec<String>,
    acked: HashMap<String, u64>,
    last_ping: Instant,
    started: Instant,
}

impl Receiver {
    /// A receiver for `user/device` that prefers node `home` of `nodes`; not connected yet.
    pub fn new(user: &str, device: &str, token: &str, nodes: NodeList, home: usize) -> Self {
        assert!(home < nodes.len());
        Receiver {
            user: user.to_string(),
            device: device.to_string(),
            token: token.to_string(),
            nodes,
            node: home,
            session: None,
            last: HashMap::new(),
            messages: HashMap::new(),
            arrivals: HashMap::new(),
            duplicates: 0,
            violations: Vec::new(),
            disconnects: 0,
            failed_connects: 0,
            welcomed_by: Vec::new(),
            log: Vec::new(),
            acked: HashMap::new(),
            last_ping: Instant::now(),
            started: Instant::now(),
        }
    }

    pub fn who(&self) -> String {
        format!("{}/{}", self.user, self.device)
    }

    fn note(&mut self, what: String) {
        let t = self.started.elapsed().as_secs_f64();
        self.log.push(format!("{t:8.3}s {what}"));
    }

    /// When the message with `seq` of `chat` arrived (first time).
    pub fn arrival_of(&self, chat: &str, seq: u64) -> Option<Instant> {
        let ms = self.messages.get(chat)?;
        let i = ms.iter().position(|m| m.seq == seq)?;
        self.arrivals.get(chat)?.get(i).copied()
    }

    /// Seqs delivered for `chat`, in arrival order.
    pub fn seqs(&self, chat: &str) -> Vec<u64> {
        self.messages
            .get(chat)
            .map(|v| v.iter().map(|m| m.seq).collect())
            .unwrap_or_default()
    }

    fn apply(&mut self, m: Message) {
        let chat = m.chat_id.clone();
        let last = self.last.get(&chat).copied().unwrap_or(0);
        if m.seq <= last {
            self.duplicates += 1;
            return;
        }
        if m.seq != last + 1 {
            let v = format!(
                "{}: chat {chat}: seq {} delivered after {last} (missing {}..={})",
                self.who(),
                m.seq,
                last + 1,
                m.seq - 1
            );
            self.note(v.clone());
            self.violations.push(v);
        }
        self.last.insert(chat.clone(), m.seq);
        self.arrivals
            .entry(chat.clone())
            .or_default()
            .push(Instant::now());
        self.messages.entry(chat).or_default().push(m);
    }

    /// Connect once to the current node: Hello with our positions, Welcome, backlog,
    /// SyncComplete. On success the session is kept.
    async fn connect_once(&mut self) -> Result<(), String> {
        let addr = self.nodes.get(self.node);
        let mut s = Session::open(
            client_at(addr, &self.token, &self.device),
            &self.user,
            &self.device,
        );
        let positions: HashMap<String, u64> = self.last.clone();
        if !s
            .try_send(client_frame::Frame::Hello(chat_proto::v1::Hello {
                device_id: self.device.clone(),
                delivered_seq: positions,
                client_version: "chat-tests-resilient".into(),
            }))
            .await
        {
            return Err("request stream closed before Hello".into());
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut welcomed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no SyncComplete within {CONNECT_TIMEOUT:?} (welcomed: {welcomed})"
                ));
            }
            match s.next_event(left.min(FRAME_TIMEOUT)).await {
                None => {
                    return Err(format!(
                        "nothing for {FRAME_TIMEOUT:?} during sync (welcomed: {welcomed})"
                    ))
                }
                Some(Event::End(st)) => {
                    return Err(format!(
                        "stream ended during sync: {:?} {:?}",
                        st.code(),
                        st.message()
                    ))
                }
                Some(Event::Frame(Frame::Welcome(w))) => {
                    welcomed = true;
                    self.welcomed_by.push(w.node_id.clone());
                }
                Some(Event::Frame(Frame::Message(m))) => {
                    if let Some(m) = m.message {
                        self.apply(m);
                    }
                }
                Some(Event::Frame(Frame::SyncComplete(_))) => {
                    if !welcomed {
                        return Err("SyncComplete before Welcome".into());
                    }
                    break;
                }
                Some(Event::Frame(Frame::Error(e))) => {
                    return Err(format!("Error frame during sync: {e:?}"));
                }
                Some(Event::Frame(_)) => {}
            }
        }
        let node_id = self.welcomed_by.last().cloned().unwrap_or_default();
        self.note(format!(
            "connected to {addr} ({node_id}), positions {:?}",
            self.last
        ));
        self.session = Some(s);
        self.last_ping = Instant::now();
        Ok(())
    }

    /// Connect (or reconnect) before `deadline`: the current node first, then the next ones.
    pub async fn ensure_connected(&mut self, deadline: Instant) -> bool {
        let mut attempt = 0u32;
        while self.session.is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            match self.connect_once().await {
                Ok(()) => return true,
                Err(e) => {
                    self.failed_connects += 1;
                    let addr = self.nodes.get(self.node);
                    self.note(format!("connect to {addr} failed: {e}"));
                    attempt += 1;
                    // Same node once more, then move on.
                    if attempt.is_multiple_of(2) {
                        self.node = (self.node + 1) % self.nodes.len();
                    }
                    let backoff = Duration::from_millis(100 * u64::from(attempt.min(10)));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        true
    }

    async fn send_acks(&mut self) {
        let Some(s) = &self.session else { return };
        let mut sent = Vec::new();
        for (chat, &seq) in &self.last {
            if self.acked.get(chat).copied().unwrap_or(0) < seq {
                if !s
                    .try_send(client_frame::Frame::Ack(chat_proto::v1::Ack {
                        chat_id: chat.clone(),
                        seq,
                    }))
                    .await
                {
                    return;
                }
                sent.push((chat.clone(), seq));
            }
        }
        self.acked.extend(sent);
    }

    /// Receive (and reconnect when needed) for `dur`.
    pub async fn pump(&mut self, dur: Duration) {
        let until = Instant::now() + dur;
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            if self.session.is_none() && !self.ensure_connected(until).await {
                return;
            }
            if self.last_ping.elapsed() >= PING_EVERY {
                if let Some(s) = &self.session {
                    let _ = s
                        .try_send(client_frame::Frame::Ping(Ping { nonce: 0xfa17 }))
                        .await;
                }
                self.last_ping = Instant::now();
            }
            let slice = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            let ev = match self.session.as_mut() {
                Some(s) => s.next_event(slice).await,
                None => continue,
            };
            match ev {
                None => self.send_acks().await,
                Some(Event::Frame(Frame::Message(m))) => {
                    if let Some(m) = m.message {
                        self.apply(m);
                    }
                    let behind: u64 = self
                        .last
                        .iter()
                        .map(|(c, s)| s - self.acked.get(c).copied().unwrap_or(0).min(*s))
                        .sum();
                    if behind >= 50 {
                        self.send_acks().await;
                    }
                }
                Some(Event::Frame(_)) => {}
                Some(Event::End(st)) => {
                    self.disconnects += 1;
                    let addr = self.nodes.get(self.node);
                    self.note(format!(
                        "stream from {addr} ended: {:?} {:?}",
                        st.code(),
                        st.message()
                    ));
                    self.session = None;
                    // What we acked on that session may not have reached the server; the
                    // next Hello carries our positions anyway.
                    self.acked.clear();
                }
            }
        }
    }

    /// True once every target of `goal` is reached.
    pub fn reached(&self, targets: &HashMap<String, u64>) -> bool {
        targets
            .iter()
            .all(|(c, t)| self.last.get(c).copied().unwrap_or(0) >= *t)
    }

    /// Run in a task: receive until `goal` holds a [`Goal`] that is reached (or whose deadline
    /// passed), then hand the receiver back (connected: drop it to disconnect).
    pub fn spawn(mut self, mut goal: watch::Receiver<Option<Goal>>) -> JoinHandle<Receiver> {
        tokio::spawn(async move {
            let first = Instant::now() + CONNECT_TIMEOUT * 4;
            self.ensure_connected(first).await;
            loop {
                let g = goal.borrow_and_update().clone();
                if let Some(g) = g {
                    if self.reached(&g.targets) || Instant::now() >= g.deadline {
                        self.send_acks().await;
                        return self;
                    }
                }
                self.pump(Duration::from_millis(200)).await;
            }
        })
    }

    /// Drop the session (like a client going away).
    pub fn disconnect(&mut self) {
        self.session = None;
    }

    /// A description for failure messages.
    pub fn report(&self) -> String {
        let mut per_chat: Vec<String> = self
            .last
            .iter()
            .map(|(c, s)| format!("{}…: last {s}", &c[..c.len().min(8)]))
            .collect();
        per_chat.sort();
        format!(
            "{} [{}] duplicates dropped {}, disconnects {}, failed connects {}, violations {:?}\n  log:\n    {}",
            self.who(),
            per_chat.join(", "),
            self.duplicates,
            self.disconnects,
            self.failed_connects,
            self.violations.iter().take(10).collect::<Vec<_>>(),
            self.log
                .iter()
                .rev()
                .take(30)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        )
    }
}

// --------------------------------------------------------------------------------- sender

#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Sends in flight at most.
    pub window: usize,
    /// At least this long between two first attempts (None: as fast as the window allows).
    pub pace: Option<Duration>,
    /// Send again after UNAVAILABLE / RESOURCE_EXHAUSTED instead of recording an error.
    pub retry_unavailable: bool,
    /// Give up (and hand back what we have) at this time.
    pub deadline: Instant,
}

impl SenderConfig {
    pub fn new(timeout: Duration) -> Self {
        SenderConfig {
            window: 8,
            pace: None,
            retry_unavailable: true,
            deadline: Instant::now() + timeout,
        }
    }
}

/// One outgoing message.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub chat_id: String,
    pub client_msg_id: String,
    pub text: String,
}

/// An answer that was not an ack.
#[derive(Clone, Debug)]
pub struct SendFailure {
    pub client_msg_id: String,
    pub code: i32,
    pub message: String,
    /// When the answer arrived.
    pub at: Instant,
}

pub struct Sender {
    pub user: String,
    pub device: String,
    token: String,
    nodes: NodeList,
    pub node: usize,
    session: Option<Session>,
    /// Acked messages by client_msg_id (the stored message).
    pub acked: BTreeMap<String, Message>,
    /// When each ack arrived.
    pub acked_at: BTreeMap<String, Instant>,
    /// Answers that were not acks and were not retried.
    pub errors: Vec<SendFailure>,
    /// UNAVAILABLE / RESOURCE_EXHAUSTED answers that were retried.
    pub retried: Vec<SendFailure>,
    /// Acks for a resend that reported `duplicate`.
    pub duplicate_acks: u64,
    /// Resent messages whose second ack named another message than the first (must be empty).
    pub violations: Vec<String>,
    pub disconnects: u32,
    pub failed_connects: u32,
    pub log: Vec<String>,
    /// Number of first attempts made.
    pub attempted: usize,
    seen: HashMap<String, u64>,
    started: Instant,
}

impl Sender {
    pub fn new(user: &str, device: &str, token: &str, nodes: NodeList, home: usize) -> Self {
        assert!(home < nodes.len());
        Sender {
            user: user.to_string(),
            device: device.to_string(),
            token: token.to_string(),
            nodes,
            node: home,
            session: None,
            acked: BTreeMap::new(),
            acked_at: BTreeMap::new(),
            errors: Vec::new(),
            retried: Vec::new(),
            duplicate_acks: 0,
            violations: Vec::new(),
            disconnects: 0,
            failed_connects: 0,
            log: Vec::new(),
            attempted: 0,
            seen: HashMap::new(),
            started: Instant::now(),
        }
    }

    pub fn who(&self) -> String {
        format!("{}/{}", self.user, self.device)
    }

    fn note(&mut self, what: String) {
        let t = self.started.elapsed().as_secs_f64();
        self.log.push(format!("{t:8.3}s {what}"));
    }

    async fn connect_once(&mut self) -> Result<(), String> {
        let addr = self.nodes.get(self.node);
        let mut s = Session::open(
            client_at(addr, &self.token, &self.device),
            &self.user,
            &self.device,
        );
        // Skip the replay of what we saw already (a sender does not check deliveries).
        if !s
            .try_send(client_frame::Frame::Hello(chat_proto::v1::Hello {
                device_id: self.device.clone(),
                delivered_seq: self.seen.clone(),
                client_version: "chat-tests-resilient".into(),
            }))
            .await
        {
            return Err("request stream closed before Hello".into());
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no SyncComplete within {CONNECT_TIMEOUT:?}"));
            }
            match s.next_event(left.min(FRAME_TIMEOUT)).await {
                None => return Err(format!("nothing for {FRAME_TIMEOUT:?} during sync")),
                Some(Event::End(st)) => {
                    return Err(format!(
                        "stream ended during sync: {:?} {:?}",
                        st.code(),
                        st.message()
                    ))
                }
                Some(Event::Frame(Frame::SyncComplete(_))) => break,
                Some(Event::Frame(Frame::Message(m))) => {
                    if let Some(m) = m.message {
                        let e = self.seen.entry(m.chat_id.clone()).or_insert(0);
                        *e = (*e).max(m.seq);
                    }
                }
                Some(Event::Frame(Frame::Error(e))) => {
                    return Err(format!("Error frame during sync: {e:?}"))
                }
                Some(Event::Frame(_)) => {}
            }
        }
        self.note(format!("connected to {addr}"));
        self.session = Some(s);
        Ok(())
    }

    /// Connect (or reconnect) before `deadline`; false if that did not work out.
    pub async fn ensure_connected(&mut self, deadline: Instant) -> bool {
        let mut attempt = 0u32;
        while self.session.is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            match self.connect_once().await {
                Ok(()) => return true,
                Err(e) => {
                    self.failed_connects += 1;
                    let addr = self.nodes.get(self.node);
                    self.note(format!("connect to {addr} failed: {e}"));
                    attempt += 1;
                    if attempt.is_multiple_of(2) {
                        self.node = (self.node + 1) % self.nodes.len();
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10))))
                        .await;
                }
            }
        }
        true
    }

    /// Send everything in `msgs` (see the module docs); `progress` counts acks.
    pub async fn run(
        &mut self,
        msgs: Vec<Outgoing>,
        cfg: &SenderConfig,
        progress: Option<Arc<AtomicUsize>>,
    ) {
        let mut queue: VecDeque<(Outgoing, bool)> = msgs.into_iter().map(|m| (m, true)).collect();
        let mut pending: BTreeMap<String, Outgoing> = BTreeMap::new();
        let mut next_first = Instant::now();
        let mut retry_at = Instant::now();
        let mut last_ping = Instant::now();
        loop {
            if queue.is_empty() && pending.is_empty() {
                return;
            }
            if Instant::now() >= cfg.deadline {
                let n = queue.len() + pending.len();
                self.note(format!("deadline: {n} messages not acked"));
                return;
            }
            if self.session.is_none() {
                if !self.ensure_connected(cfg.deadline).await {
                    continue;
                }
                // Everything in flight goes again, oldest first, with the same ids.
                for (_, m) in std::mem::take(&mut pending).into_iter().rev() {
                    queue.push_front((m, false));
                }
            }
            // Fill the window.
            while pending.len() < cfg.window && Instant::now() >= retry_at {
                let Some((m, first)) = queue.front().cloned() else {
                    break;
                };
                if first && cfg.pace.is_some() && Instant::now() < next_first {
                    break;
                }
                let s = self.session.as_ref().expect("connected");
                if !s
                    .try_send(client_frame::Frame::Send(chat_proto::v1::Send {
                        client_msg_id: m.client_msg_id.clone(),
                        chat_id: m.chat_id.clone(),
                        content: Some(crate::util::text(&m.text)),
                    }))
                    .await
                {
                    self.session = None;
                    break;
                }
                queue.pop_front();
                if first {
                    self.attempted += 1;
                    if let Some(p) = cfg.pace {
                        let floor = Instant::now().checked_sub(p).unwrap_or(next_first);
                        next_first = next_first.max(floor) + p;
                    }
                }
                pending.insert(m.client_msg_id.clone(), m);
            }
            if self.session.is_none() {
                continue;
            }
            if last_ping.elapsed() >= PING_EVERY {
                if let Some(s) = &self.session {
                    let _ = s
                        .try_send(client_frame::Frame::Ping(Ping { nonce: 0x5e7d }))
                        .await;
                }
                last_ping = Instant::now();
            }
            let mut wait = Duration::from_millis(100);
            if let Some(p) = cfg.pace {
                if !queue.is_empty() && pending.len() < cfg.window {
                    wait = wait.min(next_first.saturating_duration_since(Instant::now()));
                    wait = wait.min(p).max(Duration::from_millis(1));
                }
            }
            let ev = self
                .session
                .as_mut()
                .expect("connected")
                .next_event(wait)
                .await;
            match ev {
                None => {}
                Some(Event::Frame(Frame::SendAck(a))) => {
                    let Some(_) = pending.remove(&a.client_msg_id) else {
                        continue;
                    };
                    let Some(msg) = a.message else {
                        self.violations
                            .push(format!("SendAck without message: {}", a.client_msg_id));
                        continue;
                    };
                    if a.duplicate {
                        self.duplicate_acks += 1;
                    }
                    if let Some(prev) = self.acked.get(&a.client_msg_id) {
                        if prev.message_id != msg.message_id || prev.seq != msg.seq {
                            self.violations.push(format!(
                                "{} acked twice as different messages: {:?}/{} then {:?}/{}",
                                a.client_msg_id, prev.message_id, prev.seq, msg.message_id, msg.seq
                            ));
                        }
                        continue;
                    }
                    self.acked_at
                        .insert(a.client_msg_id.clone(), Instant::now());
                    self.acked.insert(a.client_msg_id, msg);
                    if let Some(p) = &progress {
                        p.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Some(Event::Frame(Frame::SendError(e))) => {
                    let Some(m) = pending.remove(&e.client_msg_id) else {
                        continue;
                    };
                    let f = SendFailure {
                        client_msg_id: e.client_msg_id.clone(),
                        code: e.code,
                        message: e.message.clone(),
                        at: Instant::now(),
                    };
                    let transient = e.code == tonic::Code::Unavailable as i32
                        || e.code == tonic::Code::ResourceExhausted as i32;
                    if transient && cfg.retry_unavailable {
                        self.retried.push(f);
                        queue.push_front((m, false));
                        let backoff = if e.retry_after_ms > 0 {
                            Duration::from_millis(u64::from(e.retry_after_ms))
                        } else {
                            Duration::from_millis(200)
                        };
                        retry_at = Instant::now() + backoff;
                    } else {
                        self.errors.push(f);
                    }
                }
                Some(Event::Frame(Frame::Message(m))) => {
                    if let Some(m) = m.message {
                        let e = self.seen.entry(m.chat_id.clone()).or_insert(0);
                        *e = (*e).max(m.seq);
                    }
                }
                Some(Event::Frame(Frame::Error(e))) => {
                    self.note(format!("Error frame: {e:?}"));
                }
                Some(Event::Frame(_)) => {}
                Some(Event::End(st)) => {
                    self.disconnects += 1;
                    let addr = self.nodes.get(self.node);
                    self.note(format!(
                        "stream from {addr} ended with {} in flight: {:?} {:?}",
                        pending.len(),
                        st.code(),
                        st.message()
                    ));
                    self.session = None;
                }
            }
        }
    }

    /// Run [`Self::run`] in a task and hand the sender back.
    pub fn spawn(
        mut self,
        msgs: Vec<Outgoing>,
        cfg: SenderConfig,
        progress: Option<Arc<AtomicUsize>>,
    ) -> JoinHandle<Sender> {
        tokio::spawn(async move {
            self.run(msgs, &cfg, progress).await;
            self
        })
    }

    pub fn report(&self) -> String {
        format!(
            "{}: acked {}, errors {}, retried {}, duplicate acks {}, disconnects {}, failed connects {}, violations {:?}\n  log:\n    {}",
            self.who(),
            self.acked.len(),
            self.errors.len(),
            self.retried.len(),
            self.duplicate_acks,
            self.disconnects,
            self.failed_connects,
            self.violations,
            self.log
                .iter()
                .rev()
                .take(30)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        )
    }
}

/// `n` messages `"{prefix}-{i}"` (text and client_msg_id the same), i = 1..=n.
pub fn outgoing(chat_id: &str, prefix: &str, n: usize) -> Vec<Outgoing> {
    (1..=n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            Outgoing {
                chat_id: chat_id.to_string(),
                client_msg_id: id.clone(),
                text: id,
            }
        })
        .collect()
}

/// Wait for every handle (panicking tasks re-raise their panic).
pub async fn join_each<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task failed: {e}"),
        }
    }
    out
}
