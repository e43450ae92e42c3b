//! The Rust SDK (`chat-sdk`) against a real server: reconnect, resume, gap fill, dedup, the
//! offline queue across client restarts, idempotent retries, error classes and token
//! replacement. Connections go through a [`Proxy`] so a test can cut them, lose replies, and
//! keep one address while the server restarts.

use chat_sdk::{Backoff, Client, ClientConfig, Code, ConnectionState, Content, Event, SendOutcome};
use chat_tests::sdk::*;
use chat_tests::*;
use std::time::Duration;

fn secret(server: &TestServer) -> String {
    server
        .secret()
        .expect("test servers have a secret")
        .to_string()
}

async fn pair(server: &TestServer, a: &str, b: &str) -> String {
    let mut ca = server.client(a, "setup").await;
    open_direct(&mut ca, b).await.chat_id
}

#[tokio::test]
async fn reconnects_after_a_killed_connection_and_resumes_exactly() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let proxy = Proxy::start(server.addr).await;
    let chat = pair(&server, "alice", "bob").await;
    let bob_token = mint_token(&secret(&server), "bob");
    let (bob, mut bob_ev) = sdk_connect(sdk_config(&proxy.uri(), &bob_token, "phone", None)).await;

    let mut alice = server.client("alice", "laptop").await;
    send_text(&mut alice, &chat, "a1", "one").await;
    let got = bob_ev.messages(&chat, 1).await;
    assert_eq!(texts(&got), ["one"]);

    proxy.cut();
    bob_ev
        .until("Reconnecting after the cut", |e| match e {
            Event::Connection(s) if s.state == ConnectionState::Reconnecting => Some(()),
            _ => None,
        })
        .await;
    send_text(&mut alice, &chat, "a2", "two").await;
    send_text(&mut alice, &chat, "a3", "three").await;
    // Replayed before SyncComplete or live after it, depending on timing: the same to the app.
    let got = bob_ev.messages(&chat, 2).await;
    assert_eq!(texts(&got), ["two", "three"]);
    bob.wait_for(ConnectionState::Connected, RECV_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(bob.status().attempt, 0);
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
    assert!(
        bob_ev.messages_for(QUIET_PERIOD).await.is_empty(),
        "nothing repeated"
    );
    let st = bob.stats();
    assert!(st.disconnects >= 1 && st.connects >= 2, "{st:?}");
    assert_eq!(st.messages_received, 3, "{st:?}");
    bob.close().await;
}

/// gRPC's schedule, observed on a paused clock: each retry waits 1 s × 1.6^n (± 20 %), capped at
/// 120 s, and the client really waits that long between attempts.
#[tokio::test(start_paused = true)]
async fn reconnect_backoff_follows_the_grpc_schedule() {
    // A port nothing listens on: every attempt is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let mut cfg = ClientConfig::new(format!("http://{addr}"), "token", "phone");
    cfg.connect_timeout = Duration::from_secs(1000);
    let client = Client::connect(cfg).await.unwrap();
    let mut events = client.events().unwrap();
    let b = Backoff::default();
    let mut last: Option<(tokio::time::Instant, Duration)> = None;
    let mut seen = 0u32;
    while seen < 14 {
        let Some(Event::Connection(s)) = events.next().await else {
            continue;
        };
        if s.state != ConnectionState::Reconnecting {
            continue;
        }
        let now = tokio::time::Instant::now();
        let delay = s.retry_in.expect("Reconnecting says when");
        let base = b.base(seen).as_secs_f64();
        let d = delay.as_secs_f64();
        assert!(
            d >= base * 0.8 - 1e-6 && d <= base * 1.2 + 1e-6,
            "attempt {}: waited {d} s, schedule says {base} ± 20 %",
            s.attempt
        );
        assert_eq!(s.attempt, seen + 1);
        assert!(s.error.is_some());
        if let Some((at, prev)) = last {
            assert!(
                now - at >= prev,
                "retried after {:?}, before {prev:?}",
                now - at
            );
        }
        last = Some((now, delay));
        seen += 1;
    }
    assert_eq!(b.base(13), Duration::from_secs(120));
    client.close().await;
}

/// A device that sent from elsewhere while its app was away sees a gap on resume (the server
/// does not replay a device's own messages): the SDK reads it from history, in order.
#[tokio::test]
async fn a_gap_is_filled_from_history_before_later_messages() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let chat = pair(&server, "alice", "bob").await;
    let dir = tempfile::tempdir().unwrap();
    let bob_token = mint_token(&secret(&server), "bob");
    let endpoint = format!("http://{}", server.addr);
    let cfg = sdk_config(&endpoint, &bob_token, "phone", Some(dir.path()));

    let mut alice = server.client("alice", "laptop").await;
    send_text(&mut alice, &chat, "a1", "one").await;
    let (bob, mut ev) = sdk_connect(cfg.clone()).await;
    // A brand-new device starts at the present: take "one" from history to set a position.
    let _ = ev.messages_for(Duration::from_millis(300)).await;
    send_text(&mut alice, &chat, "a2", "two").await;
    assert_eq!(texts(&ev.messages(&chat, 1).await), ["two"]);
    bob.close().await;

    // The same device sends through a plain unary call while the app is closed ...
    let mut bob_raw = server.client("bob", "phone").await;
    send_text(&mut bob_raw, &chat, "b3", "three").await;
    send_text(&mut alice, &chat, "a4", "four").await;

    // ... so the resume replays 4 but not 3.
    let (bob, mut ev) = sdk_connect(cfg).await;
    let got = ev.messages(&chat, 2).await;
    assert_eq!(texts(&got), ["three", "four"]);
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4]);
    let st = bob.stats();
    assert_eq!(st.gaps_filled, 1, "{st:?}");
    assert_eq!(st.messages_from_history, 1, "{st:?}");
    assert!(ev.messages_for(QUIET_PERIOD).await.is_empty());
    bob.close().await;
}

/// Messages the app has not taken yet are not acked: after a reconnect the server replays
/// them, and the SDK drops the copies.
#[tokio::test]
async fn replays_of_messages_not_yet_taken_are_dropped() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let proxy = Proxy::start(server.addr).await;
    let chat = pair(&server, "alice", "bob").await;
    let bob_token = mint_token(&secret(&server), "bob");
    let (bob, mut ev) = sdk_connect(sdk_config(&proxy.uri(), &bob_token, "phone", None)).await;
    let mut alice = server.client("alice", "laptop").await;
    send_many(&mut alice, &chat, "m", 5).await;
    // Wait until the client has them all queued for the app, without taking any.
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while bob.stats().messages_received < 5 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", bob.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT * 2;
    while bob.stats().connects < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", bob.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = ev.messages(&chat, 5).await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(ev.messages_for(QUIET_PERIOD).await.is_empty(), "each once");
    let st = bob.stats();
    assert_eq!(st.duplicates_dropped, 5, "the replay was dropped: {st:?}");
    bob.close().await;
}

/// Sends made while the server is down survive closing the app and go out, once and in
/// order, when a new client on the same data dir reaches the server.
#[tokio::test]
async fn the_offline_queue_survives_a_client_restart() {
    let mut server = TestServer::start_with(NO_RATE_LIMIT).await;
    let proxy = Proxy::start(server.addr).await;
    let chat = pair(&server, "alice", "bob").await;
    let dir = tempfile::tempdir().unwrap();
    let alice_token = mint_token(&secret(&server), "alice");
    let cfg = sdk_config(&proxy.uri(), &alice_token, "phone", Some(dir.path()));
    let (alice, mut alice_ev) = sdk_connect(cfg.clone()).await;
    let first = alice.send(&chat, Content::text("before")).await.unwrap();
    alice_ev.sent(&first.client_msg_id).await;

    server.terminate().await;
    let mut queued = Vec::new();
    for t in ["q1", "q2", "q3"] {
        let echo = alice.send(&chat, Content::text(t)).await.unwrap();
        assert_eq!(echo.chat_id, chat);
        assert_eq!(echo.content.text, t);
        queued.push(echo.client_msg_id);
    }
    assert_ne!(alice.status().state, ConnectionState::Connected);
    alice.close().await;
    assert_eq!(alice.status().state, ConnectionState::Closed);

    server.start_again().await;
    proxy.set_target(server.addr);
    let client = Client::connect(cfg).await.unwrap();
    assert_eq!(
        client.pending_sends().await.unwrap().len(),
        3,
        "queued on disk"
    );
    let mut ev = Events(client.events().unwrap());
    let mut seqs = Vec::new();
    for key in &queued {
        let (m, duplicate) = ev.sent(key).await;
        assert!(!duplicate);
        seqs.push(m.seq);
    }
    assert_eq!(seqs, [2, 3, 4], "in the order queued");
    assert!(client.pending_sends().await.unwrap().is_empty());

    let mut bob = server.client("bob", "tablet").await;
    let all = full_history(&mut bob, &chat).await;
    assert_eq!(
        all.iter()
            .map(|m| text_of(m).to_string())
            .collect::<Vec<_>>(),
        ["before", "q1", "q2", "q3"],
        "stored once each"
    );
    client.close().await;
}

/// The ack of a send is lost on the way: the SDK sends again with the same key after
/// reconnecting and gets the original back, marked duplicate. Stored once.
#[tokio::test]
async fn a_retry_after_a_lost_ack_is_idempotent() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let proxy = Proxy::start(server.addr).await;
    let chat = pair(&server, "alice", "bob").await;
    let (bob, mut bob_ev) = sdk_connect(sdk_config(
        &format!("http://{}", server.addr),
        &mint_token(&secret(&server), "bob"),
        "phone",
        None,
    ))
    .await;
    let (alice, mut alice_ev) = sdk_connect(sdk_config(
        &proxy.uri(),
        &mint_token(&secret(&server), "alice"),
        "phone",
        None,
    ))
    .await;

    // Alice has a position in the chat (a gap needs one).
    let mut bob_raw = server.client("bob", "laptop").await;
    send_text(&mut bob_raw, &chat, "b0", "zero").await;
    assert_eq!(texts(&alice_ev.messages(&chat, 1).await), ["zero"]);
    assert_eq!(texts(&bob_ev.messages(&chat, 1).await), ["zero"]);

    proxy.hold_replies(true);
    let echo = alice.send(&chat, Content::text("once")).await.unwrap();
    // Stored: bob has it.
    let delivered = bob_ev.messages(&chat, 1).await;
    assert_eq!(delivered[0].client_msg_id, echo.client_msg_id);
    // A later message: on resume alice's replay has it but not her own (a device's own
    // messages are not replayed), so her client reads the gap from history, where her own
    // still-unacked message is.
    send_text(&mut bob_raw, &chat, "b2", "after").await;
    assert_eq!(texts(&bob_ev.messages(&chat, 1).await), ["after"]);
    proxy.cut();
    // Replies stay swallowed until the client has seen its connection go: the SendAck may
    // still have been on its way when bob got the message.
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while alice.status().state == ConnectionState::Connected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.hold_replies(false);
    assert_eq!(alice.stats().sends_acked, 0, "the ack was lost");

    let mut own_as_message = Vec::new();
    let mut after = None;
    let (m, duplicate) = alice_ev
        .until("the SendResult and the later message", |e| {
            match e {
                Event::Message(m) if m.client_msg_id == echo.client_msg_id => {
                    own_as_message.push(m.seq)
                }
                Event::Message(m) if m.content.text == "after" => after = Some(m.seq),
                Event::SendResult(r) if r.client_msg_id == echo.client_msg_id => {
                    if let SendOutcome::Sent { message, duplicate } = &r.outcome {
                        return Some((message.clone(), *duplicate));
                    }
                }
                _ => {}
            }
            None
        })
        .await;
    if after.is_none() {
        after = alice_ev.messages(&chat, 1).await.first().map(|m| m.seq);
    }
    assert_eq!(after, Some(3));
    assert!(own_as_message.is_empty(), "own send came back as a message");
    assert!(duplicate, "the retry is answered with the original");
    assert_eq!(m.message_id, delivered[0].message_id);
    assert!(
        bob_ev.messages_for(QUIET_PERIOD).await.is_empty(),
        "delivered once"
    );
    let mut raw = server.client("bob", "tablet").await;
    assert_eq!(full_history(&mut raw, &chat).await.len(), 3, "stored once");
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn permanent_errors_fail_the_send_transient_ones_keep_it_queued() {
    // One send per second, no burst: the rate limiter refuses pipelined sends for a while.
    let server = TestServer::start_with(&[
        ("CHATD_RATE_LIMIT_PER_SEC", "4"),
        ("CHATD_RATE_LIMIT_BURST", "1"),
    ])
    .await;
    let mut bob_raw = server.client("bob", "setup").await;
    let closed = create_group(&mut bob_raw, "bob and carol", &["carol"])
        .await
        .chat_id;
    let chat = pair(&server, "alice", "bob").await;
    let mut cfg = sdk_config(
        &format!("http://{}", server.addr),
        &mint_token(&secret(&server), "alice"),
        "phone",
        None,
    );
    cfg.send_window_per_chat = 8;
    let (alice, mut ev) = sdk_connect(cfg).await;

    // Not a member: refused for good, with the reason, and kept as failed.
    let denied = alice
        .send(&closed, Content::text("let me in"))
        .await
        .unwrap();
    let r = ev.send_result(&denied.client_msg_id).await;
    match &r.outcome {
        SendOutcome::Failed { code, reason } => {
            assert_eq!(*code, Code::PermissionDenied);
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Empty content: INVALID_ARGUMENT, also for good.
    let empty = alice.send(&chat, Content::default()).await.unwrap();
    match ev.send_result(&empty.client_msg_id).await.outcome {
        SendOutcome::Failed { code, .. } => assert_eq!(code, Code::InvalidArgument),
        other => panic!("{other:?}"),
    }
    let pending = alice.pending_sends().await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|p| p.failure.is_some()));
    assert!(alice.discard_failed(&empty.client_msg_id).await.unwrap());

    // Rate limited: waits retry_after_ms and goes again until stored.
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(
            alice
                .send(&chat, Content::text(format!("r{i}")))
                .await
                .unwrap()
                .client_msg_id,
        );
    }
    let mut seqs = Vec::new();
    for k in &keys {
        seqs.push(ev.sent(k).await.0.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(alice.stats().send_retries >= 1, "{:?}", alice.stats());
    assert_eq!(
        alice.pending_sends().await.unwrap().len(),
        1,
        "only the refused one"
    );
    alice.close().await;
}

#[tokio::test]
async fn the_token_can_be_replaced_while_connected() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let proxy = Proxy::start(server.addr).await;
    let chat = pair(&server, "alice", "bob").await;
    let s = secret(&server);
    let now = now_secs();
    // Expires in 1 s (the server allows 5 s of clock skew).
    let short = mint_token_at(&s, "bob", now, now + 1);
    let mut cfg = sdk_config(&proxy.uri(), &short, "phone", None);
    // Without the new token waking it, a refused client would wait a minute.
    cfg.reconnect = Backoff {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(60),
        ..Backoff::default()
    };
    let (bob, mut ev) = sdk_connect(cfg).await;
    bob.set_token(&mint_token(&s, "bob")).unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    // The old token is dead now; a unary call and the next stream use the new one.
    bob.api()
        .get_chat(&chat)
        .await
        .expect("unary call with the new token");
    proxy.cut();
    let mut alice = server.client("alice", "laptop").await;
    send_text(&mut alice, &chat, "a1", "after the new token").await;
    assert_eq!(texts(&ev.messages(&chat, 1).await), ["after the new token"]);
    bob.close().await;

    // A client refused for its token says so, and a new token reconnects it at once.
    let expired = mint_token_at(&s, "carol", now - 100, now - 50);
    let mut cfg = sdk_config(&proxy.uri(), &expired, "phone", None);
    cfg.reconnect = Backoff {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(60),
        ..Backoff::default()
    };
    let carol = Client::connect(cfg).await.unwrap();
    let mut ev = Events(carol.events().unwrap());
    let err = ev
        .until("Reconnecting for the expired token", |e| match e {
            Event::Connection(s) if s.state == ConnectionState::Reconnecting => s.error.clone(),
            _ => None,
        })
        .await;
    assert_eq!(err.code, Code::Unauthenticated, "{err:?}");
    carol.set_token(&mint_token(&s, "carol")).unwrap();
    carol
        .wait_for(ConnectionState::Connected, Duration::from_secs(30))
        .await
        .expect("connects with the new token well before the 60 s backoff");
    carol.close().await;
}

#[tokio::test]
async fn typed_events_for_receipts_typing_presence_and_chats() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let s = secret(&server);
    let endpoint = format!("http://{}", server.addr);
    let (alice, mut a_ev) = sdk_connect(sdk_config(
        &endpoint,
        &mint_token(&s, "alice"),
        "phone",
        None,
    ))
    .await;
    let (bob, mut b_ev) =
        sdk_connect(sdk_config(&endpoint, &mint_token(&s, "bob"), "phone", None)).await;
    let chat = alice.api().open_direct_chat("bob").await.unwrap();
    b_ev.until("ChatChanged for the new chat", |e| match e {
        Event::ChatChanged(c) if c.chat.as_ref().is_some_and(|c| c.chat_id == chat.chat_id) => {
            Some(())
        }
        _ => None,
    })
    .await;
    alice.watch_presence(vec!["bob".into()]).unwrap();
    a_ev.until("bob online", |e| match e {
        Event::Presence(p)
            if p.user_id == "bob" && p.status == chat_sdk::PresenceStatus::Online =>
        {
            Some(())
        }
        _ => None,
    })
    .await;

    let echo = alice
        .send(&chat.chat_id, Content::text("hello"))
        .await
        .unwrap();
    let (m, _) = a_ev.sent(&echo.client_msg_id).await;
    assert_eq!(b_ev.messages(&chat.chat_id, 1).await[0].seq, m.seq);
    // Taking the message acks it: alice hears it was delivered.
    a_ev.until("DELIVERED receipt", |e| match e {
        Event::Receipt(r)
            if r.user_id == "bob"
                && r.kind == chat_sdk::ReceiptKind::Delivered
                && r.seq >= m.seq =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    bob.set_typing(&chat.chat_id, true).await.unwrap();
    a_ev.until("bob typing", |e| match e {
        Event::Typing(t) if t.user_id == "bob" && t.state == chat_sdk::TypingState::Started => {
            Some(())
        }
        _ => None,
    })
    .await;
    bob.mark_read(&chat.chat_id, m.seq).await.unwrap();
    a_ev.until("READ receipt", |e| match e {
        Event::Receipt(r)
            if r.user_id == "bob" && r.kind == chat_sdk::ReceiptKind::Read && r.seq == m.seq =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    bob.close().await;
    a_ev.until("bob offline", |e| match e {
        Event::Presence(p)
            if p.user_id == "bob" && p.status == chat_sdk::PresenceStatus::Offline =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    // Unary errors are typed.
    let e = alice.api().get_chat(&unknown_chat_id()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = alice.api().get_chat("nope").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    alice.close().await;
}

/// Restarting the server under connected clients: everything sent before, during (queued)
/// and after arrives once, in order.
#[tokio::test]
async fn a_server_restart_loses_and_repeats_nothing() {
    let mut server = TestServer::start_with(NO_RATE_LIMIT).await;
    let proxy = Proxy::start(server.addr).await;
    let chat = pair(&server, "alice", "bob").await;
    let s = secret(&server);
    let (alice, mut a_ev) = sdk_connect(sdk_config(
        &proxy.uri(),
        &mint_token(&s, "alice"),
        "phone",
        None,
    ))
    .await;
    let (bob, mut b_ev) = sdk_connect(sdk_config(
        &proxy.uri(),
        &mint_token(&s, "bob"),
        "phone",
        None,
    ))
    .await;
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(
            alice
                .send(&chat, Content::text(format!("m{i}")))
                .await
                .unwrap()
                .client_msg_id,
        );
    }
    a_ev.sent(&keys[2]).await;
    server.restart().await;
    proxy.set_target(server.addr);
    let started = std::time::Instant::now();
    for i in 3..6 {
        keys.push(
            alice
                .send(&chat, Content::text(format!("m{i}")))
                .await
                .unwrap()
                .client_msg_id,
        );
    }
    bob.wait_for(ConnectionState::Connected, Duration::from_secs(60))
        .await
        .unwrap();
    alice
        .wait_for(ConnectionState::Connected, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "sdk reconnect after server restart: {:?}",
        started.elapsed()
    );
    for i in 6..9 {
        keys.push(
            alice
                .send(&chat, Content::text(format!("m{i}")))
                .await
                .unwrap()
                .client_msg_id,
        );
    }
    let got = b_ev.messages(&chat, 9).await;
    assert_eq!(
        texts(&got),
        (0..9).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    assert!(b_ev.messages_for(QUIET_PERIOD).await.is_empty());
    alice.close().await;
    bob.close().await;
}

/// SIGKILL under a client sending 150 messages: every one is stored once, and the receiving
/// client gets each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_under_a_sending_client_loses_and_duplicates_nothing() {
    let mut server = TestServer::start_with(NO_RATE_LIMIT).await;
    let proxy = Proxy::start(server.addr).await;
    let chat = pair(&server, "alice", "bob").await;
    let s = secret(&server);
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut a_ev) = sdk_connect(sdk_config(
        &proxy.uri(),
        &mint_token(&s, "alice"),
        "phone",
        Some(dir.path()),
    ))
    .await;
    let (bob, mut b_ev) = sdk_connect(sdk_config(
        &proxy.uri(),
        &mint_token(&s, "bob"),
        "phone",
        None,
    ))
    .await;
    let mut keys = Vec::new();
    for i in 0..150 {
        keys.push(
            alice
                .send(&chat, Content::text(format!("m{i}")))
                .await
                .unwrap()
                .client_msg_id,
        );
    }
    // Crash once some are stored and some are not.
    b_ev.messages(&chat, 20).await;
    server.kill_and_restart().await;
    proxy.set_target(server.addr);
    let mut seqs = Vec::new();
    for k in &keys {
        seqs.push(a_ev.sent(k).await.0.seq);
    }
    assert_eq!(
        seqs,
        (1..=150).collect::<Vec<_>>(),
        "stored once each, in order"
    );
    let rest = b_ev.messages(&chat, 130).await;
    assert_eq!(rest.first().map(|m| m.seq), Some(21));
    assert_eq!(rest.last().map(|m| m.seq), Some(150));
    assert!(rest.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(b_ev.messages_for(QUIET_PERIOD).await.is_empty());
    assert!(alice.stats().disconnects >= 1 && bob.stats().disconnects >= 1);
    alice.close().await;
    bob.close().await;
}

/// Dropping the event stream stops the events, not the client: sends still go out, and what
/// was never taken is not acked (a later client on the same data dir gets it).
#[tokio::test]
async fn dropping_the_event_stream_keeps_the_client_and_acks_nothing_untaken() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let chat = pair(&server, "alice", "bob").await;
    let s = secret(&server);
    let endpoint = format!("http://{}", server.addr);
    let dir = tempfile::tempdir().unwrap();
    let cfg = sdk_config(&endpoint, &mint_token(&s, "bob"), "phone", Some(dir.path()));
    let (bob, ev) = sdk_connect(cfg.clone()).await;
    drop(ev);
    let mut alice = server.client("alice", "laptop").await;
    send_text(&mut alice, &chat, "a1", "unread").await;
    let sent = bob.send(&chat, Content::text("from bob")).await.unwrap();
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while bob.stats().sends_acked < 1 || bob.stats().messages_received < 1 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", bob.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bob.status().state, ConnectionState::Connected);
    bob.close().await;
    let (bob, mut ev) = sdk_connect(cfg).await;
    let got = ev.messages(&chat, 1).await;
    assert_eq!(texts(&got), ["unread"], "replayed: it was never taken");
    assert!(
        bob.pending_sends().await.unwrap().is_empty(),
        "{sent:?} was acked"
    );
    bob.close().await;
}
