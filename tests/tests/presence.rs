//! Presence and last seen: online while any device has a live session (Connect or Subscribe),
//! distinct devices counted, last_seen when the last device goes away (and after a restart),
//! the privacy rule (strangers read as OFFLINE/0 and produce no events), WatchPresence, the
//! heartbeat timeout (silent, frozen, reset and SIGKILLed clients) and bad input.

use chat_tests::pb::PresenceStatus::{Offline, Online};
use chat_tests::realtime::*;
use chat_tests::session::Frame;
use chat_tests::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tonic::Code;

/// A short heartbeat: ping every 200 ms, dropped after 1 s of silence.
const SHORT_HEARTBEAT: &[(&str, &str)] = &[
    ("CHATD_HEARTBEAT_INTERVAL_MS", "200"),
    ("CHATD_HEARTBEAT_TIMEOUT_MS", "1000"),
];

#[track_caller]
fn assert_offline_seen_between(
    p: &chat_tests::pb::Presence,
    user: &str,
    from_ms: i64,
    to_ms: i64,
    ctx: &str,
) {
    assert_eq!(
        (p.user_id.as_str(), p.status(), p.devices_online),
        (user, Offline, 0),
        "{ctx}: {p:?}"
    );
    assert!(
        p.last_seen >= from_ms && p.last_seen <= to_ms,
        "{ctx}: last_seen {} should lie between {from_ms} and {to_ms} (when the last device left): {p:?}",
        p.last_seen
    );
}

/// Many devices of a user leaving at once: whatever order their changes are announced in, the
/// watcher's last event is the state that remains (the phone, one device).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_leaving_at_once_leave_watchers_with_the_final_count() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    open_direct(&mut alice_c, "bob").await;
    let mut watcher = server.connect("alice", "phone").await;
    watch_presence(&watcher, &["bob"]).await;
    let _initial = next_presence(&mut watcher, "bob").await;

    let _bob_phone = server.connect("bob", "phone").await;
    let mut others = Vec::new();
    for i in 0..8 {
        others.push(server.connect("bob", &format!("tab{i}")).await);
    }
    wait_presence(&mut alice_c, "bob", "ONLINE with 9 devices", |p| {
        p.status() == Online && p.devices_online == 9
    })
    .await;
    // Drain what the connects announced.
    let _ = collect_for(&mut watcher, QUIET_PERIOD).await;

    for s in others {
        s.close();
    }
    wait_presence(&mut alice_c, "bob", "ONLINE with 1 device", |p| {
        p.status() == Online && p.devices_online == 1
    })
    .await;
    let seen = presences(&collect_for(&mut watcher, QUIET_PERIOD).await);
    assert!(
        !seen.is_empty(),
        "the watcher hears about the tablets leaving"
    );
    assert_eq!(
        seen.last().map(|p| (p.status(), p.devices_online)),
        Some((Online, 1)),
        "the last event says what remains, one device: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_the_devices_of_a_user() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    open_direct(&mut alice_c, "bob").await;
    assert_hidden(
        &presence_one(&mut alice_c, "bob").await,
        "bob",
        "bob never connected",
    );

    let mut watcher = server.connect("alice", "phone").await;
    watch_presence(&watcher, &["bob"]).await;
    assert_hidden(
        &next_presence(&mut watcher, "bob").await,
        "bob",
        "initial event, bob never connected",
    );

    let bob_phone = server.connect("bob", "phone").await;
    assert_presence(
        &next_presence(&mut watcher, "bob").await,
        "bob",
        Online,
        1,
        "event: phone connected",
    );
    assert_presence(
        &presence_one(&mut alice_c, "bob").await,
        "bob",
        Online,
        1,
        "GetPresence: phone",
    );

    let bob_laptop = server.connect("bob", "laptop").await;
    assert_presence(
        &next_presence(&mut watcher, "bob").await,
        "bob",
        Online,
        2,
        "event: laptop connected",
    );
    assert_presence(
        &presence_one(&mut alice_c, "bob").await,
        "bob",
        Online,
        2,
        "GetPresence: phone+laptop",
    );

    // A second session of the same device is the same device.
    let bob_phone2 = server.connect("bob", "phone").await;
    assert_presence(
        &presence_one(&mut alice_c, "bob").await,
        "bob",
        Online,
        2,
        "two phone sessions + laptop",
    );

    // The laptop and the second phone session leave: still online, one device.
    bob_laptop.close();
    bob_phone2.close();
    wait_presence(&mut alice_c, "bob", "ONLINE with 1 device", |p| {
        p.status() == Online && p.devices_online == 1
    })
    .await;
    // ... and it stays that way (the remaining phone session keeps bob online).
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_presence(
        &presence_one(&mut alice_c, "bob").await,
        "bob",
        Online,
        1,
        "one device left",
    );
    // The watcher saw only online states with 1 or 2 devices, ending at 1.
    let seen = presences(&collect_for(&mut watcher, QUIET_PERIOD).await);
    assert!(
        !seen.is_empty(),
        "the watcher hears about the laptop leaving"
    );
    for p in &seen {
        assert!(
            p.user_id == "bob" && p.status() == Online && (p.devices_online == 1 || p.devices_online == 2),
            "while the phone stays connected every event must say ONLINE with 1 or 2 devices: {seen:?}"
        );
    }
    assert_eq!(
        seen.last().unwrap().devices_online,
        1,
        "the last event says 1 device: {seen:?}"
    );

    // The last device leaves: offline with last_seen.
    let before = now_ms();
    bob_phone.close();
    let ev = loop {
        // (A late event about the second phone session leaving may still come first.)
        let p = next_presence(&mut watcher, "bob").await;
        if p.status() == Offline {
            break p;
        }
        assert_presence(&p, "bob", Online, 1, "before going offline");
    };
    let after = now_ms();
    assert_offline_seen_between(&ev, "bob", before, after, "event: last device gone");
    let got = presence_one(&mut alice_c, "bob").await;
    assert_eq!(got, ev, "GetPresence agrees with the last event");

    // Bob may always see himself, with his last seen.
    let mut bob_c = server.client("bob", "phone").await;
    assert_eq!(
        presence_one(&mut bob_c, "bob").await,
        ev,
        "bob's own presence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_session_counts_as_online_until_it_is_closed() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    open_direct(&mut alice_c, "bob").await;
    let mut watcher = server.connect("alice", "phone").await;
    watch_presence(&watcher, &["bob"]).await;
    assert_hidden(&next_presence(&mut watcher, "bob").await, "bob", "initial");

    let mut sub = server.subscribe("bob", "tablet", Default::default()).await;
    sub.sync().await;
    assert_presence(
        &next_presence(&mut watcher, "bob").await,
        "bob",
        Online,
        1,
        "event: Subscribe session",
    );
    assert_presence(
        &presence_one(&mut alice_c, "bob").await,
        "bob",
        Online,
        1,
        "GetPresence: Subscribe",
    );

    // The browser closes its Subscribe stream; nothing else happens in bob's chats.
    let before = now_ms();
    sub.close();
    let ev = next_presence(&mut watcher, "bob").await;
    assert_offline_seen_between(
        &ev,
        "bob",
        before,
        now_ms(),
        "event: Subscribe session ended",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_presence_shows_strangers_as_offline() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    open_direct(&mut alice_c, "bob").await;
    // carol and dave share a chat with each other, not with alice.
    let mut carol_c = server.client("carol", "phone").await;
    open_direct(&mut carol_c, "dave").await;

    let _alice = server.connect("alice", "phone").await;
    let _bob = server.connect("bob", "phone").await;
    let _carol = server.connect("carol", "phone").await;
    let dave = server.connect("dave", "phone").await;
    dave.close();
    // carol (a contact) sees dave go offline with a last seen ...
    let seen = wait_presence(&mut carol_c, "dave", "OFFLINE with a last seen", |p| {
        p.status() == Offline && p.last_seen > 0
    })
    .await;
    assert!(seen.last_seen > 0, "carol sees dave's last seen: {seen:?}");
    assert_presence(
        &presence_one(&mut carol_c, "carol").await,
        "carol",
        Online,
        1,
        "carol herself",
    );

    // ... alice, a stranger to both, sees neither presence nor last seen; never an error.
    let list = get_presence(&mut alice_c, &["bob", "carol", "nobody", "alice", "dave"])
        .await
        .expect("GetPresence never refuses strangers");
    let users: Vec<&str> = list.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(
        users,
        ["bob", "carol", "nobody", "alice", "dave"],
        "one answer per user, in order"
    );
    assert_presence(&list[0], "bob", Online, 1, "bob (contact)");
    assert_hidden(&list[1], "carol", "carol is online but a stranger");
    assert_hidden(&list[2], "nobody", "a user that never existed");
    assert_presence(&list[3], "alice", Online, 1, "alice herself");
    assert_hidden(&list[4], "dave", "dave has a last seen but is a stranger");

    // bob (alice's contact) sees alice.
    let mut bob_c = server.client("bob", "phone").await;
    assert_presence(
        &presence_one(&mut bob_c, "alice").await,
        "alice",
        Online,
        1,
        "bob sees alice",
    );
    assert_hidden(
        &presence_one(&mut bob_c, "carol").await,
        "carol",
        "bob does not see carol",
    );

    // Once alice and carol share a chat, carol becomes visible.
    open_direct(&mut alice_c, "carol").await;
    assert_presence(
        &presence_one(&mut alice_c, "carol").await,
        "carol",
        Online,
        1,
        "carol is now a contact",
    );
    assert_hidden(
        &presence_one(&mut alice_c, "dave").await,
        "dave",
        "dave is still a stranger",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_presence_sends_current_state_then_changes_of_visible_users_only() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    open_direct(&mut alice_c, "bob").await;
    open_direct(&mut alice_c, "dave").await;
    // carol is a stranger to alice and bob; erin is carol's contact.
    open_direct(&mut server.client("carol", "phone").await, "erin").await;

    let mut alice = server.connect("alice", "phone").await;
    watch_presence(&alice, &["bob", "carol", "alice"]).await;
    let mut initial = Vec::new();
    for _ in 0..3 {
        initial.push(next_any_presence(&mut alice).await);
    }
    initial.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_presence(&initial[0], "alice", Online, 1, "initial: alice herself");
    assert_hidden(&initial[1], "bob", "initial: bob never connected");
    assert_hidden(&initial[2], "carol", "initial: carol (stranger)");

    // carol watches bob (a stranger to her) and erin (a contact).
    let mut carol = server.connect("carol", "phone").await;
    watch_presence(&carol, &["bob", "erin"]).await;
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let p = next_any_presence(&mut carol).await;
        assert_hidden(
            &p,
            &p.user_id.clone(),
            "carol's initial events (nobody online yet)",
        );
        got.insert(p.user_id);
    }
    assert_eq!(got, BTreeSet::from(["bob".to_string(), "erin".to_string()]));

    // carol came online (stranger: nothing for alice), then bob (watched contact).
    let bob = server.connect("bob", "phone").await;
    let p = next_any_presence(&mut alice).await;
    assert_presence(
        &p,
        "bob",
        Online,
        1,
        "alice's next event is bob's, carol's connect produced none",
    );
    // bob is a stranger to carol: erin's connect is the next thing carol hears about.
    let _erin = server.connect("erin", "phone").await;
    let p = next_any_presence(&mut carol).await;
    assert_presence(
        &p,
        "erin",
        Online,
        1,
        "carol's next event is erin's, not bob's",
    );

    // alice watches herself: her laptop coming online is an event.
    let _alice_laptop = server.connect("alice", "laptop").await;
    let p = next_any_presence(&mut alice).await;
    assert_presence(&p, "alice", Online, 2, "alice's own second device");

    // Re-watching replaces the set: bob is no longer followed.
    watch_presence(&alice, &["dave", "carol"]).await;
    let mut initial = Vec::new();
    for _ in 0..2 {
        initial.push(next_any_presence(&mut alice).await);
    }
    initial.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_hidden(&initial[0], "carol", "re-watch: carol (online stranger)");
    assert_hidden(&initial[1], "dave", "re-watch: dave never connected");

    bob.close();
    carol.close();
    // bob's going away must be done before dave connects, so wait for it (via a contact).
    wait_presence(&mut alice_c, "bob", "OFFLINE", |p| p.status() == Offline).await;
    let _dave = server.connect("dave", "phone").await;
    let p = next_any_presence(&mut alice).await;
    assert_presence(
        &p,
        "dave",
        Online,
        1,
        "after re-watch the next event is dave's (none for bob or carol)",
    );
    let rest = presences(&collect_for(&mut alice, QUIET_PERIOD).await);
    assert!(
        rest.is_empty(),
        "no further presence events expected: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_presence_rejects_bad_input() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice", "phone").await;

    let too_many: Vec<String> = (0..1001).map(|i| format!("user-{i}")).collect();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("1001 users", too_many),
        ("an empty id", vec!["bob".into(), String::new()]),
        ("a 129-byte id", vec!["x".repeat(129)]),
    ];
    for (what, ids) in cases {
        watch_presence_owned(&alice, ids).await;
        let e = next_matching(&mut alice, "an Error frame", |f| {
            matches!(f, Frame::Error(_) | Frame::Presence(_))
        })
        .await;
        let Frame::Error(e) = e else {
            panic!("WatchPresence with {what}: expected an Error frame first, got {e:?}")
        };
        assert_eq!(e.frame, "watch_presence", "{what}: Error.frame");
        assert_eq!(
            e.code,
            Code::InvalidArgument as i32,
            "{what}: Error.code ({e:?})"
        );
        assert_mentions(&e.message, "user_ids", what);
        // The stream stays open.
        alice.ping().await;
    }

    // The limits themselves are fine: a 128-byte id, and 1000 users (one event each).
    let long = "y".repeat(128);
    watch_presence(&alice, &[long.as_str()]).await;
    assert_hidden(&next_any_presence(&mut alice).await, &long, "a 128-byte id");

    let thousand: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    watch_presence_owned(&alice, thousand.clone()).await;
    alice
        .send(chat_tests::pb::client_frame::Frame::Ping(
            chat_tests::pb::Ping { nonce: 4242 },
        ))
        .await;
    let mut seen = BTreeSet::new();
    loop {
        match alice.recv().await {
            Frame::Presence(p) => {
                let p = p.presence.unwrap();
                assert_hidden(&p, &p.user_id.clone(), "watching 1000 strangers");
                seen.insert(p.user_id);
            }
            Frame::Pong(p) if p.nonce == 4242 => break,
            Frame::Error(e) => panic!("watching 1000 users is allowed: {e:?}"),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        thousand.into_iter().collect::<BTreeSet<_>>(),
        "one event per watched user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_presence_rejects_bad_input() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;

    let too_many: Vec<String> = (0..1001).map(|i| format!("user-{i}")).collect();
    let s = assert_code(
        get_presence_owned(&mut alice, too_many).await,
        Code::InvalidArgument,
        "1001 users",
    );
    assert_mentions(s.message(), "user_ids", "1001 users");
    let s = assert_code(
        get_presence(&mut alice, &["bob", ""]).await,
        Code::InvalidArgument,
        "empty id",
    );
    assert_mentions(s.message(), "user_ids", "empty id");
    let long = "x".repeat(129);
    let s = assert_code(
        get_presence(&mut alice, &[long.as_str()]).await,
        Code::InvalidArgument,
        "129-byte id",
    );
    assert_mentions(s.message(), "user_ids", "129-byte id");

    let thousand: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let list = get_presence_owned(&mut alice, thousand.clone())
        .await
        .expect("1000 users are allowed");
    assert_eq!(
        list.iter().map(|p| p.user_id.clone()).collect::<Vec<_>>(),
        thousand
    );
    let long = "y".repeat(128);
    let list = get_presence(&mut alice, &[long.as_str()])
        .await
        .expect("a 128-byte id is allowed");
    assert_hidden(&list[0], &long, "128-byte id");
    let list = get_presence(&mut alice, &[])
        .await
        .expect("an empty request");
    assert!(list.is_empty(), "no users asked, none answered: {list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_heartbeat_timeout() {
    let server = TestServer::start_with(SHORT_HEARTBEAT).await;
    open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    let w = alice.welcome.clone().unwrap();
    assert_eq!(
        (w.heartbeat_interval_ms, w.heartbeat_timeout_ms),
        (200, 1000),
        "Welcome heartbeat settings"
    );
    watch_presence(&alice, &["bob"]).await;
    assert_hidden(
        &next_presence_pinging(&mut alice, "bob").await,
        "bob",
        "initial",
    );

    // bob says Hello and then nothing at all, with the stream left open (a dead phone).
    let hello_sent = Instant::now();
    let mut bob = server.connect("bob", "phone").await;
    assert_presence(
        &next_presence_pinging(&mut alice, "bob").await,
        "bob",
        Online,
        1,
        "bob connected",
    );

    let ev = next_presence_pinging(&mut alice, "bob").await;
    assert_eq!(
        (ev.status(), ev.devices_online),
        (Offline, 0),
        "watcher sees bob dropped: {ev:?}"
    );
    assert!(ev.last_seen > 0, "last_seen is set: {ev:?}");

    let status = bob.expect_end().await;
    let silent_for = hello_sent.elapsed();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "the silent stream ends UNAVAILABLE: {status:?}"
    );
    assert!(
        silent_for >= Duration::from_millis(950),
        "bob was dropped after {silent_for:?}, before the 1000 ms heartbeat timeout"
    );

    // alice kept talking and is still connected.
    alice.ping().await;
    let mut alice_c = server.client("alice", "phone").await;
    let p = presence_one(&mut alice_c, "bob").await;
    assert_eq!(
        (p.status(), p.last_seen),
        (Offline, ev.last_seen),
        "GetPresence after the drop: {p:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_frame_keeps_a_session_alive_and_subscribe_has_no_heartbeat() {
    let server = TestServer::start_with(SHORT_HEARTBEAT).await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    open_direct(&mut alice_c, "carol").await;

    let mut carol = server.subscribe("carol", "web", Default::default()).await;
    carol.sync().await;
    let mut bob = server.connect("bob", "phone").await;

    // For 3 s (three timeouts) bob sends only frames that are not Pings, one every 200 ms.
    let until = Instant::now() + Duration::from_secs(3);
    let mut i = 0u32;
    while Instant::now() < until {
        if i.is_multiple_of(2) {
            watch_presence(&bob, &[]).await;
        } else {
            send_read(&bob, &chat.chat_id, 0).await;
        }
        i += 1;
        let frames = collect_for(&mut bob, Duration::from_millis(200)).await;
        assert!(
            !frames.iter().any(|f| matches!(f, Frame::Error(_))),
            "keep-alive frames were refused: {frames:?}"
        );
    }
    bob.ping().await;
    assert_presence(
        &presence_one(&mut alice_c, "bob").await,
        "bob",
        Online,
        1,
        "bob kept talking",
    );

    // carol's Subscribe stream sent nothing all along and is still there.
    let frames = collect_for(&mut carol, QUIET_PERIOD).await;
    assert!(
        frames.iter().all(|f| !matches!(f, Frame::Error(_))),
        "{frames:?}"
    );
    assert_presence(
        &presence_one(&mut alice_c, "carol").await,
        "carol",
        Online,
        1,
        "Subscribe has no heartbeat",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_takes_the_device_offline() {
    // Default heartbeat (90 s timeout): only the lost connection can explain going offline.
    let server = TestServer::start().await;
    open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    watch_presence(&alice, &["bob"]).await;
    assert_hidden(&next_presence(&mut alice, "bob").await, "bob", "initial");

    let proxy = Proxy::start(server.addr).await;
    let client = server.client_on(proxy.endpoint(), "bob", "phone").await;
    let mut bob = Session::open(client, "bob", "phone");
    bob.hello().await;
    bob.sync().await;
    assert_presence(
        &next_presence(&mut alice, "bob").await,
        "bob",
        Online,
        1,
        "bob via the proxy",
    );

    let before = now_ms();
    proxy.reset();
    let ev = next_presence(&mut alice, "bob").await;
    assert_offline_seen_between(&ev, "bob", before, now_ms(), "after the connection reset");
    let status = bob.expect_end().await;
    assert_ne!(
        status.code(),
        Code::Ok,
        "bob's stream cannot end cleanly: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_connection_is_dropped_by_the_heartbeat() {
    let server = TestServer::start_with(SHORT_HEARTBEAT).await;
    open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    watch_presence(&alice, &["bob"]).await;
    assert_hidden(
        &next_presence_pinging(&mut alice, "bob").await,
        "bob",
        "initial",
    );

    let proxy = Proxy::start(server.addr).await;
    let client = server.client_on(proxy.endpoint(), "bob", "phone").await;
    let mut bob = Session::open(client, "bob", "phone");
    bob.hello().await;
    bob.sync().await;
    assert_presence(
        &next_presence_pinging(&mut alice, "bob").await,
        "bob",
        Online,
        1,
        "bob via the proxy",
    );

    // The network vanishes: no FIN, no RST, nothing gets through; bob even keeps "pinging".
    proxy.freeze();
    let _ = bob
        .try_send(chat_tests::pb::client_frame::Frame::Ping(
            chat_tests::pb::Ping { nonce: 1 },
        ))
        .await;
    let ev = next_presence_pinging(&mut alice, "bob").await;
    assert_eq!(
        (ev.status(), ev.devices_online),
        (Offline, 0),
        "watcher sees the frozen bob dropped: {ev:?}"
    );
    assert!(ev.last_seen > 0, "{ev:?}");
    alice.ping().await;
}

/// Entry point of the child process used by `a_sigkilled_client_goes_offline` (does nothing
/// when run as a normal test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_child_entry() {
    child_session_main().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_client_goes_offline() {
    // Default heartbeat (90 s timeout): only the dead process can explain going offline.
    let server = TestServer::start().await;
    open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    watch_presence(&alice, &["bob"]).await;
    assert_hidden(&next_presence(&mut alice, "bob").await, "bob", "initial");

    let mut child = ChildSession::spawn(&server, "bob", "phone", "sigkill_child_entry").await;
    assert_presence(
        &next_presence(&mut alice, "bob").await,
        "bob",
        Online,
        1,
        "bob's process connected",
    );

    let before = now_ms();
    child.sigkill().await;
    let ev = next_presence(&mut alice, "bob").await;
    assert_offline_seen_between(
        &ev,
        "bob",
        before,
        now_ms(),
        "after SIGKILL of bob's process",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_survives_a_restart() {
    let mut server = TestServer::start().await;
    open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let bob = server.connect("bob", "phone").await;
    bob.close();
    let mut alice_c = server.client("alice", "phone").await;
    let seen = wait_presence(&mut alice_c, "bob", "OFFLINE with a last seen", |p| {
        p.status() == Offline && p.last_seen > 0
    })
    .await;
    assert!(seen.last_seen > 0, "{seen:?}");

    server.restart().await;
    let mut alice_c = server.client("alice", "phone").await;
    let p = presence_one(&mut alice_c, "bob").await;
    assert_eq!(
        (p.status(), p.last_seen, p.devices_online),
        (Offline, seen.last_seen, 0),
        "bob's last seen after the restart: {p:?}"
    );
    // A stranger still sees nothing.
    let mut carol_c = server.client("carol", "phone").await;
    assert_hidden(
        &presence_one(&mut carol_c, "bob").await,
        "bob",
        "stranger after restart",
    );

    // Watching reports the stored last seen too.
    let mut alice = server.connect("alice", "phone").await;
    watch_presence(&alice, &["bob"]).await;
    let ev = next_presence(&mut alice, "bob").await;
    assert_eq!(
        (ev.status(), ev.last_seen),
        (Offline, seen.last_seen),
        "WatchPresence after restart: {ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connected_at_shutdown_gets_a_last_seen() {
    let mut server = TestServer::start().await;
    open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut bob = server.connect("bob", "phone").await;
    let before = now_ms();
    server.restart().await;
    let status = bob.expect_end().await;
    assert_ne!(
        status.code(),
        Code::Ok,
        "the session ends with the shutdown: {status:?}"
    );
    let after = now_ms();
    let mut alice_c = server.client("alice", "phone").await;
    let p = presence_one(&mut alice_c, "bob").await;
    assert_offline_seen_between(
        &p,
        "bob",
        before,
        after,
        "bob was connected when the server stopped",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_timeout_must_exceed_the_interval() {
    let opts = ServerOptions::new()
        .env("CHATD_HEARTBEAT_INTERVAL_MS", "1000")
        .env("CHATD_HEARTBEAT_TIMEOUT_MS", "1000");
    let out = TestServer::run_expecting_exit(opts).await;
    let status = out
        .status
        .unwrap_or_else(|| panic!("chatd kept running; stderr:\n{}", out.stderr));
    assert!(
        !status.success(),
        "timeout == interval must stop start-up: {status:?}\n{}",
        out.stderr
    );
    assert!(
        out.stderr.to_lowercase().contains("heartbeat_timeout"),
        "stderr should name the heartbeat timeout:\n{}",
        out.stderr
    );
}
