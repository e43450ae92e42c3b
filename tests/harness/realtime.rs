//! Helpers for the realtime tests: presence, receipts, typing and retention.
//!
//! * Frame shorthands (`send_read`, `send_typing`, `watch_presence`) and unary shorthands
//!   (`get_presence`, `mark_read`, `ack_delivered`, `get_receipts`, `set_typing`).
//! * Receiving helpers that look for ambient frames (receipts, typing, presence), which the
//!   message-oriented helpers of [`Session`] skip. The `_pinging` variants send a Ping every
//!   [`KEEPALIVE_EVERY`] while they wait, so a session survives a short heartbeat timeout.
//! * [`Proxy`]: a TCP proxy between a client and the server that can freeze (the network
//!   vanishes: no FIN, no RST, nothing) or reset (abortive close) every connection through it.
//! * [`ChildSession`]: a Connect session held open by a separate process (this test executable
//!   re-run as a child), so a test can SIGKILL a real client.

use crate::auth::Auth;
use crate::server::{TestServer, STARTUP_TIMEOUT};
use crate::session::{Event, Frame, Session};
use crate::util::Client;
use crate::RECV_TIMEOUT;
use chat_proto::v1::chat_service_client::ChatServiceClient;
use chat_proto::v1::{
    client_frame, AckDeliveredRequest, Error as ErrorFrame, GetPresenceRequest, GetReceiptsRequest,
    MarkReadRequest, Ping, Presence, PresenceStatus, Read, Receipt, ReceiptKind, SetTypingRequest,
    Typing, TypingEvent, TypingState, WatchPresence,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic::Status;

/// How often the `_pinging` helpers send a Ping while they wait.
pub const KEEPALIVE_EVERY: Duration = Duration::from_millis(150);

/// Wall-clock unix milliseconds (the server runs on the same machine and clock).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------- frames

pub async fn send_read(s: &Session, chat_id: &str, seq: u64) {
    s.send(client_frame::Frame::Read(Read {
        chat_id: chat_id.to_string(),
        seq,
    }))
    .await
}

pub async fn send_typing(s: &Session, chat_id: &str, state: TypingState) {
    send_typing_raw(s, chat_id, state as i32).await
}

/// A Typing frame with any state number (bad-input tests).
pub async fn send_typing_raw(s: &Session, chat_id: &str, state: i32) {
    s.send(client_frame::Frame::Typing(Typing {
        chat_id: chat_id.to_string(),
        state,
    }))
    .await
}

pub async fn watch_presence(s: &Session, users: &[&str]) {
    watch_presence_owned(s, users.iter().map(|u| u.to_string()).collect()).await
}

pub async fn watch_presence_owned(s: &Session, user_ids: Vec<String>) {
    s.send(client_frame::Frame::WatchPresence(WatchPresence {
        user_ids,
    }))
    .await
}

// ------------------------------------------------------------------------------- receiving

fn who(s: &Session) -> String {
    format!("{}/{}", s.user, s.device)
}

fn short(f: &Frame) -> String {
    crate::session::short(f)
}

async fn wait_matching(
    s: &mut Session,
    what: &str,
    timeout: Duration,
    keepalive: bool,
    mut pred: impl FnMut(&Frame) -> bool,
) -> Frame {
    let deadline = Instant::now() + timeout;
    let mut last_ping = Instant::now();
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "{}: {what} did not arrive within {timeout:?}; skipped: {skipped:?}",
                who(s)
            );
        }
        if keepalive && last_ping.elapsed() >= KEEPALIVE_EVERY {
            let _ = s
                .try_send(client_frame::Frame::Ping(Ping { nonce: 0x7ea1 }))
                .await;
            last_ping = Instant::now();
        }
        let slice = if keepalive {
            left.min(KEEPALIVE_EVERY)
        } else {
            left
        };
        match s.next_event(slice).await {
            None => {}
            Some(Event::Frame(f)) => {
                if pred(&f) {
                    return f;
                }
                skipped.push(short(&f));
            }
            Some(Event::End(st)) => {
                panic!(
                    "{}: stream ended ({st:?}) while waiting for {what}; skipped: {skipped:?}",
                    who(s)
                )
            }
        }
    }
}

/// The next frame matching `pred` (within the session timeout); frames before it are dropped.
pub async fn next_matching(s: &mut Session, what: &str, pred: impl FnMut(&Frame) -> bool) -> Frame {
    let t = s.timeout;
    wait_matching(s, what, t, false, pred).await
}

/// Like [`next_matching`], pinging meanwhile (Connect sessions only).
pub async fn next_matching_pinging(
    s: &mut Session,
    what: &str,
    pred: impl FnMut(&Frame) -> bool,
) -> Frame {
    let t = s.timeout;
    wait_matching(s, what, t, true, pred).await
}

async fn collect(s: &mut Session, dur: Duration, keepalive: bool) -> Vec<Frame> {
    let deadline = Instant::now() + dur;
    let mut last_ping = Instant::now();
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        if keepalive && last_ping.elapsed() >= KEEPALIVE_EVERY {
            let _ = s
                .try_send(client_frame::Frame::Ping(Ping { nonce: 0x7ea1 }))
                .await;
            last_ping = Instant::now();
        }
        let slice = if keepalive {
            left.min(KEEPALIVE_EVERY)
        } else {
            left
        };
        match s.next_event(slice).await {
            None => {}
            Some(Event::Frame(f)) => out.push(f),
            Some(Event::End(st)) => panic!(
                "{}: stream ended ({st:?}) while collecting frames; got so far: {:?}",
                who(s),
                out.iter().map(short).collect::<Vec<_>>()
            ),
        }
    }
}

/// Every frame that arrives within `dur` (the stream must stay open).
pub async fn collect_for(s: &mut Session, dur: Duration) -> Vec<Frame> {
    collect(s, dur, false).await
}

/// Like [`collect_for`], pinging meanwhile (Pongs are included in the result).
pub async fn collect_for_pinging(s: &mut Session, dur: Duration) -> Vec<Frame> {
    collect(s, dur, true).await
}

pub fn presence_of<'a>(f: &'a Frame, user: &str) -> Option<&'a Presence> {
    match f {
        Frame::Presence(e) => e.presence.as_ref().filter(|p| p.user_id == user),
        _ => None,
    }
}

pub fn presences(frames: &[Frame]) -> Vec<Presence> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Presence(e) => e.presence.clone(),
            _ => None,
        })
        .collect()
}

pub fn receipts(frames: &[Frame]) -> Vec<Receipt> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Receipt(e) => e.receipt.clone(),
            _ => None,
        })
        .collect()
}

pub fn typings(frames: &[Frame]) -> Vec<TypingEvent> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Typing(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn take_presence(f: Frame) -> Presence {
    match f {
        Frame::Presence(e) => e.presence.expect("PresenceEvent.presence is set"),
        _ => unreachable!(),
    }
}

/// The next PresenceEvent about `user` (anything else is skipped).
pub async fn next_presence(s: &mut Session, user: &str) -> Presence {
    let what = format!("a PresenceEvent for {user}");
    take_presence(next_matching(s, &what, |f| presence_of(f, user).is_some()).await)
}

/// Like [`next_presence`], pinging meanwhile.
pub async fn next_presence_pinging(s: &mut Session, user: &str) -> Presence {
    let what = format!("a PresenceEvent for {user}");
    take_presence(next_matching_pinging(s, &what, |f| presence_of(f, user).is_some()).await)
}

/// The next PresenceEvent of any user.
pub async fn next_any_presence(s: &mut Session) -> Presence {
    take_presence(next_matching(s, "a PresenceEvent", |f| matches!(f, Frame::Presence(_))).await)
}

/// The next ReceiptEvent (anything else is skipped).
pub async fn next_receipt(s: &mut Session) -> Receipt {
    match next_matching(s, "a ReceiptEvent", |f| matches!(f, Frame::Receipt(_))).await {
        Frame::Receipt(e) => e.receipt.expect("ReceiptEvent.receipt is set"),
        _ => unreachable!(),
    }
}

/// The next TypingEvent (anything else is skipped).
pub async fn next_typing(s: &mut Session) -> TypingEvent {
    match next_matching(s, "a TypingEvent", |f| matches!(f, Frame::Typing(_))).await {
        Frame::Typing(t) => t,
        _ => unreachable!(),
    }
}

/// The next Error frame (anything else is skipped).
pub async fn next_error_frame(s: &mut Session) -> ErrorFrame {
    match next_matching(s, "an Error frame", |f| matches!(f, Frame::Error(_))).await {
        Frame::Error(e) => e,
        _ => unreachable!(),
    }
}

/// Assert a presence value.
#[track_caller]
pub fn assert_presence(p: &Presence, user: &str, status: PresenceStatus, devices: u32, ctx: &str) {
    assert_eq!(p.user_id, user, "{ctx}: user_id of {p:?}");
    assert_eq!(p.status(), status, "{ctx}: status of {p:?}");
    assert_eq!(p.devices_online, devices, "{ctx}: devices_online of {p:?}");
    if status == PresenceStatus::Online {
        assert_eq!(
            p.last_seen, 0,
            "{ctx}: an online user has no last_seen: {p:?}"
        );
    }
}

/// Assert the exact answer a user gets about someone they may not see (or who never
/// connected): OFFLINE, last_seen 0, devices_online 0.
#[track_caller]
pub fn assert_hidden(p: &Presence, user: &str, ctx: &str) {
    assert_eq!(
        (
            p.user_id.as_str(),
            p.status(),
            p.last_seen,
            p.devices_online
        ),
        (user, PresenceStatus::Offline, 0, 0),
        "{ctx}: expected {user} to read as OFFLINE/last_seen 0/devices 0, got {p:?}"
    );
}

// ------------------------------------------------------------------------------- unary calls

pub async fn get_presence(c: &mut Client, users: &[&str]) -> Result<Vec<Presence>, Status> {
    get_presence_owned(c, users.iter().map(|u| u.to_string()).collect()).await
}

pub async fn get_presence_owned(
    c: &mut Client,
    user_ids: Vec<String>,
) -> Result<Vec<Presence>, Status> {
    c.get_presence(GetPresenceRequest { user_ids })
        .await
        .map(|r| r.into_inner().presences)
}

/// GetPresence of one user; panics on error or a malformed answer.
pub async fn presence_one(c: &mut Client, user: &str) -> Presence {
    let list = get_presence(c, &[user])
        .await
        .unwrap_or_else(|s| panic!("GetPresence([{user}]): {s:?}"));
    assert_eq!(list.len(), 1, "GetPresence([{user}]) answered {list:?}");
    assert_eq!(
        list[0].user_id, user,
        "GetPresence([{user}]) answered {list:?}"
    );
    list.into_iter().next().unwrap()
}

/// Poll GetPresence (every 50 ms, up to [`RECV_TIMEOUT`]) until `pred` holds; returns it.
pub async fn wait_presence(
    c: &mut Client,
    user: &str,
    what: &str,
    mut pred: impl FnMut(&Presence) -> bool,
) -> Presence {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let p = presence_one(c, user).await;
        if pred(&p) {
            return p;
        }
        if Instant::now() >= deadline {
            panic!("GetPresence({user}) never showed {what} within {RECV_TIMEOUT:?}; last answer: {p:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn mark_read(c: &mut Client, chat_id: &str, seq: u64) -> Result<(), Status> {
    c.mark_read(MarkReadRequest {
        chat_id: chat_id.to_string(),
        seq,
    })
    .await
    .map(|_| ())
}

pub async fn ack_delivered(c: &mut Client, chat_id: &str, seq: u64) -> Result<(), Status> {
    c.ack_delivered(AckDeliveredRequest {
        chat_id: chat_id.to_string(),
        seq,
    })
    .await
    .map(|_| ())
}

pub async fn get_receipts(c: &mut Client, chat_id: &str, seq: u64) -> Result<Vec<Receipt>, Status> {
    c.get_receipts(GetReceiptsRequest {
        chat_id: chat_id.to_string(),
        seq,
    })
    .await
    .map(|r| r.into_inner().receipts)
}

pub async fn set_typing(c: &mut Client, chat_id: &str, state: i32) -> Result<(), Status> {
    c.set_typing(SetTypingRequest {
        chat_id: chat_id.to_string(),
        state,
    })
    .await
    .map(|_| ())
}

/// A receipt as a comparable tuple `(user, device, kind, seq)`.
pub fn receipt_key(r: &Receipt) -> (String, String, ReceiptKind, u64) {
    (r.user_id.clone(), r.device_id.clone(), r.kind(), r.seq)
}

/// A client whose requests carry a token but no `x-device-id`.
pub async fn client_without_device(server: &TestServer, user: &str) -> Client {
    let token = server.token(user, "unused").await;
    server.client_with_auth(Auth::raw(Some(&format!("Bearer {token}")), None))
}

/// Open a Connect stream, send Hello and collect every frame up to and including
/// SyncComplete (ambient frames included, unlike [`Session::sync`]).
pub async fn connect_collecting(
    server: &TestServer,
    user: &str,
    device: &str,
) -> (Session, Vec<Frame>) {
    let mut s = server.open_session(user, device).await;
    s.hello().await;
    let mut frames = Vec::new();
    loop {
        let f = s.recv().await;
        let done = matches!(f, Frame::SyncComplete(_));
        frames.push(f);
        if done {
            return (s, frames);
        }
    }
}

// ------------------------------------------------------------------------- child process

/// Environment variable that makes [`child_session_main`] act (`addr|token|device`).
pub const CHILD_ENV: &str = "CHAT_TESTS_CHILD_SESSION";
const CHILD_READY: &str = "CHAT-TESTS-CHILD-SESSION-READY";
/// A child never outlives this, even if nobody kills it.
const CHILD_MAX_LIFE: Duration = Duration::from_secs(120);

/// A Connect session held open by a separate process: this test executable re-run with only
/// the test `entry_test` (which must call [`child_session_main`]).
pub struct ChildSession {
    child: tokio::process::Child,
}

impl ChildSession {
    /// Start the child and wait until its session has received SyncComplete.
    pub async fn spawn(
        server: &TestServer,
        user: &str,
        device: &str,
        entry_test: &str,
    ) -> ChildSession {
        let token = server.token(user, device).await;
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(entry_test)
            .arg("--exact")
            .arg("--nocapture")
            .arg("--test-threads=1")
            .env(CHILD_ENV, format!("{}|{token}|{device}", server.addr))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn child test process");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let ready = tokio::time::timeout(STARTUP_TIMEOUT, async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains(CHILD_READY) {
                    return true;
                }
                seen.push(l);
            }
            false
        })
        .await;
        assert!(
            matches!(ready, Ok(true)),
            "child session process did not become ready ({ready:?}); its stdout: {seen:?}"
        );
        // Keep draining its stdout so it never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ChildSession { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("child is running")
    }

    /// SIGKILL the child and reap it.
    pub async fn sigkill(&mut self) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill({pid}, SIGKILL) failed");
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(_))),
            "child did not die after SIGKILL: {status:?}"
        );
    }
}

/// Body of the child's entry test: when [`CHILD_ENV`] is set, connect, report ready on stdout
/// and hold the session open until killed (at most two minutes). Returns at once otherwise.
pub async fn child_session_main() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.splitn(3, '|').collect();
    let [addr, token, device] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec:?}")
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true);
    let client =
        ChatServiceClient::with_interceptor(endpoint.connect_lazy(), Auth::bearer(token, device));
    let mut s = Session::open(client, "child", device);
    s.hello().await;
    loop {
        match s.recv().await {
            Frame::SyncComplete(_) => break,
            _ => continue,
        }
    }
    println!("{CHILD_READY}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Keep the session alive (answering nothing) until SIGKILL.
    let deadline = Instant::now() + CHILD_MAX_LIFE;
    while Instant::now() < deadline {
        if let Some(Event::End(_)) = s.next_event(Duration::from_secs(1)).await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    std::process::exit(0);
}
