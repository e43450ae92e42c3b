//! Limits: per-device rate limiting (stream SendError 8 with retry_after_ms, unary
//! RESOURCE_EXHAUSTED with `retry-after-ms`), max_message_bytes (text, ciphertext, attributes,
//! UTF-8 bytes), slow consumers (bounded session queue → RESOURCE_EXHAUSTED, resume loses
//! nothing, senders are never blocked).

use chat_tests::pb::{Content, SendError};
use chat_tests::*;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

/// Send `n` frames back to back and collect every result by client_msg_id, in send order.
async fn burst(s: &mut Session, chat: &str, prefix: &str, n: usize) -> Vec<Result<u64, SendError>> {
    for i in 0..n {
        s.send_text(chat, &format!("{prefix}{i}"), "burst").await;
    }
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let f = s
            .recv_until(|f| match f {
                session::Frame::SendAck(a) => a.client_msg_id == id,
                session::Frame::SendError(e) => e.client_msg_id == id,
                _ => false,
            })
            .await;
        out.push(match f {
            session::Frame::SendAck(a) => Ok(a.message.unwrap().seq),
            session::Frame::SendError(e) => Err(e),
            _ => unreachable!(),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sends_are_rate_limited_with_retry_after() {
    let server = TestServer::start_with(&[
        ("CHATD_RATE_LIMIT_PER_SEC", "2"),
        ("CHATD_RATE_LIMIT_BURST", "3"),
    ])
    .await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;

    let results = burst(&mut alice, &chat.chat_id, "b", 12).await;
    let accepted: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let rejected: Vec<&SendError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        results[..3].iter().all(|r| r.is_ok()),
        "the burst of 3 is allowed: {results:?}"
    );
    assert!(
        !rejected.is_empty(),
        "12 sends at once with burst 3 / 2 per s must hit the limit: {results:?}"
    );
    for e in &rejected {
        assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
        assert!(e.retry_after_ms > 0, "retry_after_ms must be set: {e:?}");
        assert!(
            e.retry_after_ms <= 60_000,
            "retry_after_ms implausibly large: {e:?}"
        );
        assert!(!e.message.is_empty(), "a clear message: {e:?}");
    }
    assert_eq!(
        accepted,
        (1..=accepted.len() as u64).collect::<Vec<_>>(),
        "accepted sends are gap-free"
    );

    // The stream is still usable; after waiting as told, a send goes through.
    alice.ping().await;
    let wait = rejected.iter().map(|e| e.retry_after_ms).max().unwrap();
    tokio::time::sleep(Duration::from_millis(wait as u64 + 100)).await;
    let m = alice
        .send_and_ack(&chat.chat_id, "after-wait", "ok now")
        .await;
    assert_eq!(m.seq, accepted.len() as u64 + 1);

    // Rejected sends were not stored.
    let h = full_history(&mut server.client("bob", "phone").await, &chat.chat_id).await;
    assert_eq!(h.len(), accepted.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_per_device_and_per_user() {
    let server = TestServer::start_with(&[
        ("CHATD_RATE_LIMIT_PER_SEC", "1"),
        ("CHATD_RATE_LIMIT_BURST", "2"),
    ])
    .await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut phone = server.connect("alice", "phone").await;
    let results = burst(&mut phone, &chat.chat_id, "p", 6).await;
    assert!(
        results.iter().any(|r| r.is_err()),
        "alice/phone is limited: {results:?}"
    );

    // bob is not affected by alice's bucket.
    let mut bob = server.connect("bob", "phone").await;
    bob.send_and_ack(&chat.chat_id, "bob-1", "bob is fine")
        .await;
    // Neither is another device of alice.
    let mut laptop = server.connect("alice", "laptop").await;
    laptop
        .send_and_ack(&chat.chat_id, "laptop-1", "other device is fine")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_sends_are_rate_limited_with_retry_after_metadata() {
    let server = TestServer::start_with(&[
        ("CHATD_RATE_LIMIT_PER_SEC", "1"),
        ("CHATD_RATE_LIMIT_BURST", "2"),
    ])
    .await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    let mut statuses = Vec::new();
    let mut ok = 0;
    for i in 0..8 {
        match send_unary(&mut alice, &chat.chat_id, &format!("u{i}"), Some(text("x"))).await {
            Ok(_) => ok += 1,
            Err(s) => statuses.push(s),
        }
    }
    assert!(ok >= 2, "burst of 2 allowed, got {ok}");
    assert!(
        !statuses.is_empty(),
        "8 quick sends with burst 2 / 1 per s must hit the limit"
    );
    let mut max_wait = 0;
    for s in &statuses {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        let v = s
            .metadata()
            .get("retry-after-ms")
            .unwrap_or_else(|| panic!("retry-after-ms metadata missing: {s:?}"));
        let ms: u64 = v
            .to_str()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("retry-after-ms not a number: {v:?}"));
        assert!(ms > 0 && ms <= 60_000, "retry-after-ms {ms}");
        max_wait = max_wait.max(ms);
    }
    tokio::time::sleep(Duration::from_millis(max_wait + 100)).await;
    let m = send_text(&mut alice, &chat.chat_id, "after-wait", "ok").await;
    assert_eq!(m.seq, ok as u64 + 1, "rejected sends left no gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limit() {
    let server = TestServer::start_with(&[("CHATD_MAX_MESSAGE_BYTES", "100")]).await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;

    let attrs = |k: &str, v: &str| {
        let mut m = HashMap::new();
        m.insert(k.to_string(), v.to_string());
        m
    };
    let ok_cases: Vec<(&str, Content)> = vec![
        ("100 bytes of text", text(&"a".repeat(100))),
        ("50 two-byte chars = 100 bytes", text(&"é".repeat(50))),
        ("100 bytes of ciphertext", ciphertext(&[7u8; 100])),
        (
            "text 50 + attributes 4",
            Content {
                text: "a".repeat(50),
                ciphertext: vec![],
                attributes: attrs("ab", "cd"),
            },
        ),
    ];
    let bad_cases: Vec<(&str, Content)> = vec![
        ("101 bytes of text", text(&"a".repeat(101))),
        ("51 two-byte chars = 102 bytes", text(&"é".repeat(51))),
        ("101 bytes of ciphertext", ciphertext(&[7u8; 101])),
        (
            "text 60 + attribute key 1 + value 40",
            Content {
                text: "a".repeat(60),
                ciphertext: vec![],
                attributes: attrs("k", &"v".repeat(40)),
            },
        ),
        (
            "attributes alone over the limit",
            Content {
                text: "a".into(),
                ciphertext: vec![],
                attributes: attrs(&"k".repeat(60), &"v".repeat(60)),
            },
        ),
    ];

    let mut stored = 0u64;
    for (i, (what, c)) in ok_cases.iter().enumerate() {
        let id = format!("ok{i}");
        alice
            .send_content(&chat.chat_id, &id, Some(c.clone()))
            .await;
        let ack = alice.expect_send_ack(&id).await;
        stored += 1;
        assert_eq!(ack.message.unwrap().seq, stored, "{what}");
    }
    for (i, (what, c)) in bad_cases.iter().enumerate() {
        let id = format!("bad{i}");
        alice
            .send_content(&chat.chat_id, &id, Some(c.clone()))
            .await;
        let e = alice.expect_send_error(&id).await;
        assert_eq!(e.code, Code::InvalidArgument as i32, "{what}: {e:?}");
        assert_mentions(&e.message, "content", what);
    }
    // Unary mirrors the stream.
    let mut unary = server.client("alice", "laptop").await;
    let s = assert_code(
        send_unary(
            &mut unary,
            &chat.chat_id,
            "u-big",
            Some(text(&"a".repeat(101))),
        )
        .await,
        Code::InvalidArgument,
        "unary 101 bytes",
    );
    assert_mentions(s.message(), "content", "unary 101 bytes");
    send_unary(
        &mut unary,
        &chat.chat_id,
        "u-ok",
        Some(text(&"a".repeat(100))),
    )
    .await
    .expect("unary 100 bytes");
    stored += 1;

    let h = full_history(&mut unary, &chat.chat_id).await;
    assert_eq!(
        seqs(&h),
        (1..=stored).collect::<Vec<_>>(),
        "only accepted messages are stored"
    );
}

/// A device that stops reading while messages keep coming is disconnected with
/// RESOURCE_EXHAUSTED once its bounded queue is full; the sender is never blocked, and the device
/// gets everything on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_resumes_without_loss() {
    const N: u64 = 300;
    let server = TestServer::start_opts(
        ServerOptions::new()
            .envs(NO_RATE_LIMIT)
            .env("CHATD_SESSION_QUEUE", "16"),
    )
    .await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    // bob's connection has a minimal HTTP/2 window so the transport cannot absorb the backlog.
    let endpoint = server
        .endpoint()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535);
    let mut slow = Session::open(
        server.client_on(endpoint, "bob", "phone").await,
        "bob",
        "phone",
    );
    slow.hello().await;
    slow.sync().await;
    // ... and now bob stops reading.

    let big = "x".repeat(4000);
    for i in 1..=N {
        let id = format!("m{i}");
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            send_unary(
                &mut alice,
                &chat.chat_id,
                &id,
                Some(text(&format!("{i}:{big}"))),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("send {i} blocked: a slow consumer must not stall senders"));
        assert_eq!(r.expect("send").message.unwrap().seq, i);
    }

    // Draining now: what was buffered comes in order, then the stream ends RESOURCE_EXHAUSTED.
    let mut seen = Vec::new();
    let status = loop {
        match slow.next_event(Duration::from_secs(30)).await {
            Some(session::Event::Frame(session::Frame::Message(m))) => {
                seen.push(m.message.unwrap().seq)
            }
            Some(session::Event::Frame(_)) => {}
            Some(session::Event::End(s)) => break s,
            None => panic!(
                "slow session neither closed nor delivered within 30 s (saw {} messages)",
                seen.len()
            ),
        }
    };
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "slow consumer closed with {status:?} after {} messages",
        seen.len()
    );
    assert!(
        (seen.len() as u64) < N,
        "the session was closed, so not all {N} messages can have been delivered"
    );
    assert_eq!(
        seen,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "what arrived is an in-order prefix"
    );

    // Reconnect the same device: everything from its cursor (it acked nothing) arrives.
    let mut bob = server.open_session("bob", "phone").await;
    bob.timeout = Duration::from_secs(30);
    bob.hello().await;
    let sync = bob.sync().await;
    assert_eq!(
        seqs(&sync.messages),
        (1..=N).collect::<Vec<_>>(),
        "resume after a slow-consumer close loses nothing"
    );
    assert_eq!(sync.replayed, N);
    assert!(text_of(&sync.messages[N as usize - 1]).starts_with(&format!("{N}:")));

    // And the server is healthy: live delivery works on the new session.
    send_text(&mut alice, &chat.chat_id, "after", "after").await;
    assert_eq!(bob.expect_message().await.seq, N + 1);
}
