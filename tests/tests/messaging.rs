//! Live messaging over Connect and Subscribe: delivery to every device of every member (the
//! sender's other devices included, the sending device only gets SendAck), per-chat seq,
//! idempotent retries, content kinds, Ping/Pong, Welcome.

use chat_tests::auth::now_secs;
use chat_tests::pb::{AckDeliveredRequest, Content, Message};
use chat_tests::session::Frame;
use chat_tests::*;
use std::collections::HashMap;

fn assert_same_message(got: &Message, want: &Message, ctx: &str) {
    assert_eq!(got.message_id, want.message_id, "{ctx}: message_id");
    assert_eq!(got.chat_id, want.chat_id, "{ctx}: chat_id");
    assert_eq!(got.seq, want.seq, "{ctx}: seq");
    assert_eq!(
        got.sender_user_id, want.sender_user_id,
        "{ctx}: sender_user_id"
    );
    assert_eq!(
        got.sender_device_id, want.sender_device_id,
        "{ctx}: sender_device_id"
    );
    assert_eq!(
        got.client_msg_id, want.client_msg_id,
        "{ctx}: client_msg_id"
    );
    assert_eq!(got.content, want.content, "{ctx}: content");
    assert_eq!(got.created_at, want.created_at, "{ctx}: created_at");
}

fn assert_plausible_time_ms(t: i64, ctx: &str) {
    let now_ms = now_secs() as i64 * 1000;
    assert!(
        (t - now_ms).abs() < 24 * 3600 * 1000,
        "{ctx}: {t} is not a unix-ms time near now ({now_ms})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_is_delivered_live() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;

    let sent = alice.send_and_ack(&chat.chat_id, "c1", "hello bob").await;
    assert_eq!(sent.seq, 1);
    assert_eq!(sent.chat_id, chat.chat_id);
    assert_eq!(sent.sender_user_id, "alice");
    assert_eq!(sent.sender_device_id, "phone");
    assert_eq!(sent.client_msg_id, "c1");
    assert_eq!(text_of(&sent), "hello bob");
    assert!(!sent.message_id.is_empty(), "message_id assigned");
    assert_plausible_time_ms(sent.created_at, "created_at");

    let got = bob.expect_message().await;
    assert_same_message(&got, &sent, "bob's MessageEvent");

    let reply = bob.send_and_ack(&chat.chat_id, "r1", "hi alice").await;
    assert_eq!(reply.seq, 2);
    let got = alice.expect_message().await;
    assert_same_message(&got, &reply, "alice's MessageEvent");

    // Neither side gets an echo of its own send.
    alice.expect_no_message(QUIET_PERIOD).await;
    bob.expect_no_message(QUIET_PERIOD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_every_member_gets_the_message_except_the_sender_device() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut a_phone = server.connect("alice", "phone").await;
    let mut a_laptop = server.connect("alice", "laptop").await;
    let mut b_phone = server.connect("bob", "phone").await;
    let mut b_tablet = server.connect("bob", "tablet").await;

    let sent = a_phone
        .send_and_ack(&chat.chat_id, "m1", "from alice's phone")
        .await;
    for s in [&mut a_laptop, &mut b_phone, &mut b_tablet] {
        let got = s.expect_message().await;
        assert_same_message(&got, &sent, &format!("{}/{}", s.user, s.device));
    }
    a_phone.expect_no_message(QUIET_PERIOD).await;

    // A unary send from bob's tablet (x-device-id: tablet) reaches every session except
    // possibly the tablet's own.
    let mut bob_tablet_unary = server.client("bob", "tablet").await;
    let sent = send_text(
        &mut bob_tablet_unary,
        &chat.chat_id,
        "m2",
        "unary from tablet",
    )
    .await;
    assert_eq!(sent.seq, 2);
    assert_eq!(sent.sender_device_id, "tablet");
    for s in [&mut a_phone, &mut a_laptop, &mut b_phone] {
        let got = s.expect_message().await;
        assert_same_message(&got, &sent, &format!("{}/{}", s.user, s.device));
    }
    for s in [&mut a_phone, &mut a_laptop, &mut b_phone] {
        s.expect_no_message(QUIET_PERIOD).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_reach_all_members() {
    let server = TestServer::start().await;
    let g = create_group(
        &mut server.client("alice", "phone").await,
        "g",
        &["bob", "carol"],
    )
    .await;
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;
    let mut carol = server.connect("carol", "phone").await;
    let mut outsider = server.connect("dave", "phone").await;

    let m1 = alice.send_and_ack(&g.chat_id, "a1", "hi all").await;
    assert_same_message(&bob.expect_message().await, &m1, "bob");
    assert_same_message(&carol.expect_message().await, &m1, "carol");

    let m2 = carol.send_and_ack(&g.chat_id, "c1", "hi from carol").await;
    assert_eq!(m2.seq, 2);
    assert_same_message(&alice.expect_message().await, &m2, "alice");
    assert_same_message(&bob.expect_message().await, &m2, "bob");

    outsider.expect_no_message(QUIET_PERIOD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_is_per_chat_and_gap_free() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let a = open_direct(&mut alice, "bob").await;
    let b = open_direct(&mut alice, "carol").await;
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for i in 0..4 {
        got_a.push(
            send_text(&mut alice, &a.chat_id, &format!("a{i}"), "x")
                .await
                .seq,
        );
        if i % 2 == 0 {
            got_b.push(
                send_text(&mut alice, &b.chat_id, &format!("b{i}"), "y")
                    .await
                    .seq,
            );
        }
    }
    assert_eq!(got_a, vec![1, 2, 3, 4]);
    assert_eq!(got_b, vec![1, 2]);
    assert_eq!(get_chat(&mut alice, &a.chat_id).await.unwrap().last_seq, 4);
    assert_eq!(get_chat(&mut alice, &b.chat_id).await.unwrap().last_seq, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_with_the_same_client_msg_id_is_stored_once() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;

    let first = alice
        .send_and_ack(&chat.chat_id, "retry-me", "original")
        .await;
    assert_eq!(first.seq, 1);

    // Same key again (as after a lost ack), even with different content: the original wins.
    alice.send_text(&chat.chat_id, "retry-me", "original").await;
    let dup = alice.expect_send_ack("retry-me").await;
    assert!(dup.duplicate, "retry must be flagged duplicate: {dup:?}");
    assert_same_message(dup.message.as_ref().unwrap(), &first, "duplicate ack");
    alice
        .send_text(&chat.chat_id, "retry-me", "changed text")
        .await;
    let dup = alice.expect_send_ack("retry-me").await;
    assert!(dup.duplicate);
    assert_same_message(
        dup.message.as_ref().unwrap(),
        &first,
        "duplicate ack with other content",
    );

    // The peer saw it once.
    assert_same_message(&bob.expect_message().await, &first, "bob");
    bob.expect_no_message(QUIET_PERIOD).await;

    // Stored once; the next message continues without a gap.
    let next = alice.send_and_ack(&chat.chat_id, "next", "second").await;
    assert_eq!(next.seq, 2);
    let h = full_history(&mut server.client("bob", "phone").await, &chat.chat_id).await;
    assert_eq!(seqs(&h), vec![1, 2]);
    assert_eq!(text_of(&h[0]), "original");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_is_per_sender_user_across_devices_and_apis() {
    let server = TestServer::start().await;
    let mut alice_phone = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_phone, "bob").await;

    let r1 = send_unary(&mut alice_phone, &chat.chat_id, "k1", Some(text("hello")))
        .await
        .unwrap();
    assert!(!r1.duplicate);
    let first = r1.message.unwrap();
    let r2 = send_unary(&mut alice_phone, &chat.chat_id, "k1", Some(text("hello")))
        .await
        .unwrap();
    assert!(r2.duplicate, "unary retry flagged duplicate");
    assert_same_message(r2.message.as_ref().unwrap(), &first, "unary duplicate");

    // Same user, other device, over a stream: still the same key.
    let mut laptop = server.connect("alice", "laptop").await;
    laptop.send_text(&chat.chat_id, "k1", "hello").await;
    let ack = laptop.expect_send_ack("k1").await;
    assert!(
        ack.duplicate,
        "same (user, client_msg_id) from another device is a duplicate"
    );
    assert_same_message(ack.message.as_ref().unwrap(), &first, "stream duplicate");

    // Another user may use the same key freely.
    let mut bob = server.client("bob", "phone").await;
    let b = send_unary(&mut bob, &chat.chat_id, "k1", Some(text("bob's k1")))
        .await
        .unwrap();
    assert!(!b.duplicate, "bob's k1 is a different key");
    assert_eq!(b.message.unwrap().seq, 2);

    let h = full_history(&mut bob, &chat.chat_id).await;
    assert_eq!(seqs(&h), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_and_attributes_round_trip() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;

    let blob: Vec<u8> = vec![0, 255, 1, 254, 0x80, 0x7f, 0, 0];
    let mut attributes = HashMap::new();
    attributes.insert("mention".to_string(), "bob".to_string());
    attributes.insert("format".to_string(), "markdown".to_string());
    let content = Content {
        text: String::new(),
        ciphertext: blob.clone(),
        attributes: attributes.clone(),
    };
    alice
        .send_content(&chat.chat_id, "e1", Some(content.clone()))
        .await;
    let ack = alice.expect_send_ack("e1").await;
    let stored = ack.message.unwrap();
    assert_eq!(
        stored.content.as_ref(),
        Some(&content),
        "SendAck carries the content as sent"
    );

    let got = bob.expect_message().await;
    assert_eq!(
        got.content.as_ref(),
        Some(&content),
        "ciphertext and attributes relayed untouched"
    );

    let with_attrs = Content {
        text: "hi **bob**".into(),
        ciphertext: vec![],
        attributes,
    };
    alice
        .send_content(&chat.chat_id, "t1", Some(with_attrs.clone()))
        .await;
    alice.expect_send_ack("t1").await;
    assert_eq!(
        bob.expect_message().await.content.as_ref(),
        Some(&with_attrs)
    );

    let h = full_history(&mut server.client("bob", "phone").await, &chat.chat_id).await;
    assert_eq!(h.len(), 2);
    assert_eq!(
        h[0].content.as_ref(),
        Some(&content),
        "history keeps the ciphertext bytes"
    );
    assert_eq!(h[1].content.as_ref(), Some(&with_attrs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_pong_with_the_same_nonce() {
    let server = TestServer::start().await;
    let mut s = server.connect("alice", "phone").await;
    for nonce in [0u64, 1, 42, u64::MAX] {
        s.send(chat_tests::pb::client_frame::Frame::Ping(
            chat_tests::pb::Ping { nonce },
        ))
        .await;
        match s.recv_core().await {
            Frame::Pong(p) => {
                assert_eq!(p.nonce, nonce);
                assert_plausible_time_ms(p.server_time, "Pong.server_time");
            }
            other => panic!("expected Pong, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_carries_session_and_heartbeat_settings() {
    let server = TestServer::start_with(&[
        ("CHATD_HEARTBEAT_INTERVAL_MS", "15000"),
        ("CHATD_HEARTBEAT_TIMEOUT_MS", "45000"),
    ])
    .await;
    let a = server.connect("alice", "phone").await;
    let b = server.connect("alice", "laptop").await;
    let wa = a.welcome.clone().unwrap();
    let wb = b.welcome.clone().unwrap();
    assert!(!wa.session_id.is_empty(), "session_id set");
    assert!(!wa.node_id.is_empty(), "node_id set");
    assert_ne!(wa.session_id, wb.session_id, "each session has its own id");
    assert_eq!(wa.heartbeat_interval_ms, 15000);
    assert_eq!(wa.heartbeat_timeout_ms, 45000);
    assert_plausible_time_ms(wa.server_time, "Welcome.server_time");

    // Defaults.
    let server = TestServer::start().await;
    let w = server.connect("alice", "phone").await.welcome.unwrap();
    assert_eq!(
        (w.heartbeat_interval_ms, w.heartbeat_timeout_ms),
        (30000, 90000),
        "default heartbeat settings"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_unary_calls() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;

    let mut web = server.subscribe("bob", "web", HashMap::new()).await;
    let sync = web.sync().await;
    assert_eq!(sync.replayed, 0);
    assert!(sync.messages.is_empty());
    assert!(!sync.welcome.session_id.is_empty());

    let m1 = alice
        .send_and_ack(&chat.chat_id, "a1", "to the browser")
        .await;
    assert_same_message(&web.expect_message().await, &m1, "Subscribe stream");

    let mut bob_web = server.client("bob", "web").await;
    let m2 = send_text(&mut bob_web, &chat.chat_id, "w1", "from the browser").await;
    assert_eq!(m2.seq, 2);
    assert_eq!(m2.sender_device_id, "web");
    assert_same_message(
        &alice.expect_message().await,
        &m2,
        "alice gets the unary send",
    );

    bob_web
        .ack_delivered(AckDeliveredRequest {
            chat_id: chat.chat_id.clone(),
            seq: 2,
        })
        .await
        .expect("AckDelivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_session_still_gets_answers_for_its_sends() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    for i in 0..20 {
        alice
            .send_text(&chat.chat_id, &format!("h{i}"), "bye")
            .await;
    }
    alice.half_close();
    for i in 0..20u64 {
        let ack = alice.expect_send_ack(&format!("h{i}")).await;
        assert_eq!(ack.message.expect("ack carries the message").seq, i + 1);
    }
    let end = alice.expect_end().await;
    assert_eq!(
        end.code(),
        tonic::Code::Ok,
        "a clean end after the answers: {end:?}"
    );
}
