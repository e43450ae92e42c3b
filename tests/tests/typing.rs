//! Typing indicators: forwarded to the other members' sessions only, STARTED coalesced to one
//! event per 3 s per user and chat, STOPPED only after a forwarded STARTED (within 6 s), ended by
//! a message, never stored, and bad input on the Typing frame and SetTyping.

use chat_tests::pb::{TypingEvent, TypingState};
use chat_tests::realtime::*;
use chat_tests::session::Frame;
use chat_tests::*;
use std::time::{Duration, Instant};
use tonic::Code;

const TTL_MS: i64 = 6000;
const REFRESH: Duration = Duration::from_secs(3);
const TTL: Duration = Duration::from_secs(6);

#[track_caller]
fn assert_typing(
    t: &TypingEvent,
    chat_id: &str,
    user: &str,
    device: &str,
    state: TypingState,
    ctx: &str,
) {
    assert_eq!(
        (
            t.chat_id.as_str(),
            t.user_id.as_str(),
            t.device_id.as_str(),
            t.state()
        ),
        (chat_id, user, device, state),
        "{ctx}: {t:?}"
    );
}

/// STARTED expires about 6 s after the server forwarded it, which was between `from_ms` and now.
#[track_caller]
fn assert_expiry(t: &TypingEvent, from_ms: i64, ctx: &str) {
    let to_ms = now_ms();
    assert!(
        t.expires_at >= from_ms + TTL_MS - 50 && t.expires_at <= to_ms + TTL_MS + 50,
        "{ctx}: expires_at {} should be now + 6000 ms (now between {from_ms} and {to_ms}): {t:?}",
        t.expires_at
    );
}

fn is_typing_or_message(f: &Frame) -> bool {
    matches!(f, Frame::Typing(_) | Frame::Message(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_other_members_and_ends_with_a_message() {
    let server = TestServer::start().await;
    let group = create_group(
        &mut server.client("alice", "phone").await,
        "typing",
        &["bob", "carol"],
    )
    .await;
    let g = group.chat_id.as_str();
    let mut a_phone = server.connect("alice", "phone").await;
    let mut a_laptop = server.connect("alice", "laptop").await;
    let mut bob = server.connect("bob", "phone").await;
    let mut carol = server.connect("carol", "phone").await;

    let t0 = now_ms();
    send_typing(&a_phone, g, TypingState::Started).await;
    for s in [&mut bob, &mut carol] {
        let t = next_typing(s).await;
        assert_typing(
            &t,
            g,
            "alice",
            "phone",
            TypingState::Started,
            &format!("{}/{}", s.user, s.device),
        );
        assert_expiry(&t, t0, "STARTED");
    }

    // alice writes: the message ends her typing. Members get the message, then STOPPED.
    let m = a_phone.send_and_ack(g, "m1", "done typing").await;
    for s in [&mut bob, &mut carol] {
        let who = format!("{}/{}", s.user, s.device);
        let f = next_matching(s, "the MessageEvent", is_typing_or_message).await;
        assert!(
            matches!(&f, Frame::Message(e) if e.message.as_ref().unwrap().seq == m.seq),
            "{who}: the message comes first, got {f:?}"
        );
        let t = next_typing(s).await;
        assert_typing(
            &t,
            g,
            "alice",
            "phone",
            TypingState::Stopped,
            &format!("{who}: after the message"),
        );
    }
    // alice's other device saw neither her STARTED nor her STOPPED: the message is the first
    // of those frames it gets.
    let f = next_matching(&mut a_laptop, "the MessageEvent", is_typing_or_message).await;
    assert!(
        matches!(f, Frame::Message(_)),
        "alice/laptop must not see alice's own typing: {f:?}"
    );
    for s in [&mut a_phone, &mut a_laptop, &mut bob, &mut carol] {
        let t = typings(&collect_for(s, QUIET_PERIOD).await);
        assert!(
            t.is_empty(),
            "{}/{}: no further typing events: {t:?}",
            s.user,
            s.device
        );
    }

    // The same through the unary calls, from another device.
    let mut web = server.client("alice", "web").await;
    let t1 = now_ms();
    set_typing(&mut web, g, TypingState::Started as i32)
        .await
        .expect("SetTyping");
    let t = next_typing(&mut bob).await;
    assert_typing(&t, g, "alice", "web", TypingState::Started, "SetTyping");
    assert_expiry(&t, t1, "SetTyping STARTED");
    let m = send_text(&mut web, g, "m2", "sent from the web").await;
    let f = next_matching(&mut bob, "the MessageEvent", is_typing_or_message).await;
    assert!(
        matches!(&f, Frame::Message(e) if e.message.as_ref().unwrap().seq == m.seq),
        "the unary message comes first, got {f:?}"
    );
    let t = next_typing(&mut bob).await;
    assert_typing(
        &t,
        g,
        "alice",
        "web",
        TypingState::Stopped,
        "after the unary message",
    );
    let t = typings(&collect_for(&mut a_phone, QUIET_PERIOD).await);
    assert!(
        t.is_empty(),
        "alice's own sessions never see her typing: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_started_is_coalesced_per_user_and_chat() {
    let server = TestServer::start().await;
    let group = create_group(
        &mut server.client("alice", "phone").await,
        "burst",
        &["bob", "carol"],
    )
    .await;
    let g = group.chat_id.as_str();
    let mut a_phone = server.connect("alice", "phone").await;
    let mut a_laptop = server.connect("alice", "laptop").await;
    let mut bob = server.connect("bob", "phone").await;
    let carol = server.connect("carol", "phone").await;

    // A burst of 10 STARTED from the phone and one from the laptop (same user, same chat).
    let first = Instant::now();
    for _ in 0..10 {
        send_typing(&a_phone, g, TypingState::Started).await;
    }
    a_phone.ping().await; // all ten handled
    send_typing(&a_laptop, g, TypingState::Started).await;
    a_laptop.ping().await;
    let burst = first.elapsed();

    let frames = collect_for(&mut bob, Duration::from_millis(1500)).await;
    let got = typings(&frames);
    let received_at = now_ms();
    // At most one STARTED per 3 s: exactly one if the burst took less than that.
    let allowed = 1 + (burst.as_millis() / REFRESH.as_millis()) as usize;
    if burst < REFRESH {
        assert_eq!(
            got.len(),
            1,
            "11 STARTED within {burst:?} must reach bob once: {got:?}"
        );
    } else {
        assert!(
            !got.is_empty() && got.len() <= allowed,
            "burst took {burst:?}: {got:?}"
        );
    }
    assert_typing(
        &got[0],
        g,
        "alice",
        "phone",
        TypingState::Started,
        "the forwarded STARTED",
    );
    assert!(
        got.iter().all(|t| t.state() == TypingState::Started),
        "{got:?}"
    );

    // carol typing is independent of alice.
    send_typing(&carol, g, TypingState::Started).await;
    let t = next_typing(&mut bob).await;
    assert_typing(
        &t,
        g,
        "carol",
        "phone",
        TypingState::Started,
        "another user is not coalesced with alice",
    );

    // Once 3 s have passed since the forwarded STARTED, a new STARTED is forwarded again.
    let wait = Duration::from_millis(REFRESH.as_millis() as u64 + 200)
        .saturating_sub(Duration::from_millis((now_ms() - received_at).max(0) as u64));
    tokio::time::sleep(wait).await;
    let t0 = now_ms();
    send_typing(&a_laptop, g, TypingState::Started).await;
    let t = next_typing(&mut bob).await;
    assert_typing(
        &t,
        g,
        "alice",
        "laptop",
        TypingState::Started,
        "refresh after 3 s",
    );
    assert_expiry(&t, t0, "refreshed STARTED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_is_forwarded_only_after_a_forwarded_started() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;

    send_typing(&alice, id, TypingState::Stopped).await; // nothing to stop
    alice.ping().await;
    send_typing(&alice, id, TypingState::Started).await;
    let t = next_typing(&mut bob).await;
    assert_typing(
        &t,
        id,
        "alice",
        "phone",
        TypingState::Started,
        "the first typing event is STARTED",
    );

    send_typing(&alice, id, TypingState::Stopped).await;
    let t = next_typing(&mut bob).await;
    assert_typing(
        &t,
        id,
        "alice",
        "phone",
        TypingState::Stopped,
        "STOPPED after STARTED",
    );
    send_typing(&alice, id, TypingState::Stopped).await; // already stopped
    alice.ping().await;
    let t = typings(&collect_for(&mut bob, QUIET_PERIOD).await);
    assert!(t.is_empty(), "a second STOPPED is not forwarded: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_after_the_indicator_expired_is_not_forwarded() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;

    send_typing(&alice, id, TypingState::Started).await;
    let t = next_typing(&mut bob).await;
    assert_typing(&t, id, "alice", "phone", TypingState::Started, "STARTED");
    // Wait until the indicator has certainly expired at the receivers (6 s after forwarding).
    let received = Instant::now();
    tokio::time::sleep((TTL + Duration::from_millis(300)).saturating_sub(received.elapsed())).await;

    send_typing(&alice, id, TypingState::Stopped).await;
    alice.ping().await;
    // A new STARTED is forwarded (more than 3 s passed): it is the next typing event bob sees.
    send_typing(&alice, id, TypingState::Started).await;
    let t = next_typing(&mut bob).await;
    assert_typing(
        &t,
        id,
        "alice",
        "phone",
        TypingState::Started,
        "no STOPPED for an expired indicator",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_never_stored_or_replayed() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.as_str();
    let alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;
    send_text(&mut alice_c, id, "m1", "before typing").await;
    bob.expect_message().await;

    send_typing(&alice, id, TypingState::Started).await;
    let t = next_typing(&mut bob).await;
    assert_typing(
        &t,
        id,
        "alice",
        "phone",
        TypingState::Started,
        "live STARTED",
    );

    // bob's laptop connects while alice is still "typing": its replay has no typing event.
    let (mut laptop, frames) = connect_collecting(&server, "bob", "laptop").await;
    let t = typings(&frames);
    assert!(t.is_empty(), "typing must not be replayed: {t:?}");
    let t = typings(&collect_for(&mut laptop, QUIET_PERIOD).await);
    assert!(t.is_empty(), "nor sent after the replay: {t:?}");
    // A device that missed the message gets the message replayed, still without typing.
    let (_tablet, frames) = {
        let mut s = server.open_session("bob", "tablet").await;
        s.hello_with([(id.to_string(), 0u64)].into_iter().collect())
            .await;
        let mut frames = Vec::new();
        loop {
            let f = s.recv().await;
            let done = matches!(f, Frame::SyncComplete(_));
            frames.push(f);
            if done {
                break (s, frames);
            }
        }
    };
    assert_eq!(
        frames
            .iter()
            .filter(|f| matches!(f, Frame::Message(_)))
            .count(),
        1,
        "replayed message"
    );
    assert!(
        typings(&frames).is_empty(),
        "no typing in a replay: {frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_frame_rejects_bad_input() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.clone();
    let unknown = unknown_chat_id();
    let mut alice = server.connect("alice", "phone").await;
    let mut dave = server.connect("dave", "phone").await;
    let mut bob = server.connect("bob", "phone").await;

    let cases = [
        (
            "state UNSPECIFIED",
            false,
            id.as_str(),
            TypingState::Unspecified as i32,
            Code::InvalidArgument,
        ),
        (
            "unknown state 7",
            false,
            id.as_str(),
            7,
            Code::InvalidArgument,
        ),
        (
            "malformed chat id",
            false,
            "not-a-chat-id",
            TypingState::Started as i32,
            Code::InvalidArgument,
        ),
        (
            "unknown chat",
            false,
            unknown.as_str(),
            TypingState::Started as i32,
            Code::NotFound,
        ),
        (
            "non-member STARTED",
            true,
            id.as_str(),
            TypingState::Started as i32,
            Code::PermissionDenied,
        ),
    ];
    for (what, by_dave, chat_id, state, code) in cases {
        let s = if by_dave { &mut dave } else { &mut alice };
        send_typing_raw(s, chat_id, state).await;
        let e = next_error_frame(s).await;
        assert_eq!(e.frame, "typing", "{what}: Error.frame ({e:?})");
        assert_eq!(e.code, code as i32, "{what}: Error.code ({e:?})");
        assert_eq!(e.chat_id, chat_id, "{what}: Error.chat_id ({e:?})");
        if what.contains("state") {
            assert_mentions(&e.message, "state", what);
        }
        s.ping().await; // the stream stays open
    }
    let t = typings(&collect_for(&mut bob, QUIET_PERIOD).await);
    assert!(t.is_empty(), "refused typing frames reach nobody: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_stopped_from_a_non_member_is_refused() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut dave = server.connect("dave", "phone").await;
    send_typing(&dave, &chat.chat_id, TypingState::Stopped).await;
    dave.ping().await;
    let frames = collect_for(&mut dave, QUIET_PERIOD).await;
    let e = frames.iter().find_map(|f| match f {
        Frame::Error(e) => Some(e.clone()),
        _ => None,
    });
    let e = e.unwrap_or_else(|| {
        panic!("a non-member's STOPPED must be refused with an Error frame; got {frames:?}")
    });
    assert_eq!(
        (e.frame.as_str(), e.code),
        ("typing", Code::PermissionDenied as i32),
        "{e:?}"
    );

    let mut dave_c = server.client("dave", "phone").await;
    assert_code(
        set_typing(&mut dave_c, &chat.chat_id, TypingState::Stopped as i32).await,
        Code::PermissionDenied,
        "SetTyping STOPPED by a non-member",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_typing_rejects_bad_input_and_works_without_a_device() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.clone();
    let unknown = unknown_chat_id();
    let mut alice = server.client("alice", "phone").await;
    let mut dave = server.client("dave", "phone").await;
    let mut bob = server.connect("bob", "phone").await;

    let s = assert_code(
        set_typing(&mut alice, &id, TypingState::Unspecified as i32).await,
        Code::InvalidArgument,
        "SetTyping UNSPECIFIED",
    );
    assert_mentions(s.message(), "state", "SetTyping UNSPECIFIED");
    assert_code(
        set_typing(&mut alice, &id, 9).await,
        Code::InvalidArgument,
        "SetTyping state 9",
    );
    let started = TypingState::Started as i32;
    assert_code(
        set_typing(&mut alice, "not-a-chat-id", started).await,
        Code::InvalidArgument,
        "malformed id",
    );
    assert_code(
        set_typing(&mut alice, &unknown, started).await,
        Code::NotFound,
        "unknown chat",
    );
    assert_code(
        set_typing(&mut dave, &id, started).await,
        Code::PermissionDenied,
        "non-member",
    );
    let t = typings(&collect_for(&mut bob, QUIET_PERIOD).await);
    assert!(t.is_empty(), "refused calls reach nobody: {t:?}");

    // x-device-id is optional: the event then names no device.
    let mut no_device = client_without_device(&server, "alice").await;
    set_typing(&mut no_device, &id, started)
        .await
        .expect("SetTyping without x-device-id");
    let t = next_typing(&mut bob).await;
    assert_typing(
        &t,
        &id,
        "alice",
        "",
        TypingState::Started,
        "SetTyping without a device",
    );
}
