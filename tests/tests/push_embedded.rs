//! Push notifications on the embedded default, end to end: a real chatd with all four
//! providers pointed at local fakes over TLS (FCM with its token endpoint, APNs over HTTP/2
//! only, a Web Push service that decrypts the payload, a webhook gateway), clients over gRPC.
//! Offline members get one push per provider and chat, the sender none, a connected user none;
//! a burst is gathered into one push; a muted chat makes none; dead tokens are dropped;
//! encrypted content never leaves in a push; Retry-After is honoured; a stalled provider
//! holds back no other; the dead-letter depth is on /metrics.
//!
//! On a cluster the pushes come from `chatd push-worker` instead: tests/tests/push_cluster.rs.

use chat_tests::push::*;
use chat_tests::*;
use push_fakes::webpush::WebPushAnswer;
use std::time::{Duration, Instant};

async fn embedded_fakes() -> Fakes {
    assert!(
        Backend::from_env() != Backend::FullStack,
        "push_embedded runs on the embedded backend only (push_cluster is the cluster's suite)"
    );
    fakes().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_gets_one_push_per_provider_and_the_sender_none() {
    let f = embedded_fakes().await;
    let server = f.server().await;
    let (mut alice, chat, _) = bob_and_alice(&f, &server).await;
    send_text(&mut alice, &chat, "m1", "see you at 8").await;
    until("a push at every provider", || f.counts() == [1, 1, 1, 1]).await;

    let fcm = &f.fcm.delivered()[0].message;
    assert_eq!(fcm["token"], BOB_FCM, "{fcm}");
    assert_eq!(fcm["notification"]["body"], "see you at 8", "{fcm}");
    assert_eq!(fcm["notification"]["title"], "alice", "{fcm}");
    assert_eq!(fcm["data"]["chat_id"], chat.as_str(), "{fcm}");

    let apns = &f.apns.delivered()[0];
    assert_eq!(apns.device_token, bob_apns());
    assert_eq!(
        apns.payload["aps"]["alert"]["body"], "see you at 8",
        "{:?}",
        apns.payload
    );

    let web = f.web.delivered()[0]
        .json()
        .expect("the Web Push payload is JSON");
    assert_eq!(web["body"], "see you at 8", "{web}");
    assert_eq!(web["title"], "alice", "{web}");

    let hook = &f.hook.notifications()[0];
    assert_eq!(pushkeys(hook), [BOB_HOOK], "{hook}");
    assert_eq!(hook["room_id"], chat.as_str(), "{hook}");

    // Nothing more: the sender's own token never hears of her message.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.counts(), [1, 1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_push_while_connected_and_a_burst_is_gathered() {
    let f = embedded_fakes().await;
    let server = f.server().await;
    let (mut alice, chat, _) = bob_and_alice(&f, &server).await;

    let mut laptop = server.connect("bob", "laptop").await;
    send_text(&mut alice, &chat, "live", "you're online").await;
    laptop.expect_message().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.counts(), [0, 0, 0, 0], "bob is connected: no push");
    laptop.close();
    // The registry forgets the session when its stream ends.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Five at once (a pass that takes the first of them waits for the rest to settle).
    let burst = (1..=5).map(|i| {
        let mut alice = alice.clone();
        let chat = chat.clone();
        async move { send_text(&mut alice, &chat, &format!("burst-{i}"), "burst").await }
    });
    futures_util::future::join_all(burst).await;
    let counted = || -> u64 {
        f.hook
            .notifications()
            .iter()
            .map(|n| n["counts"]["unread"].as_u64().unwrap_or(0))
            .sum()
    };
    until("the burst's five messages in webhook pushes", || {
        counted() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pushes = f.hook.notifications().len();
    assert_eq!(pushes, 1, "five messages sent at once make one push");
    assert_eq!(f.counts(), [1, 1, 1, 1], "one push per provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_chat_makes_no_push_until_unmuted() {
    let f = embedded_fakes().await;
    let server = f.server().await;
    let (mut alice, chat, _) = bob_and_alice(&f, &server).await;
    let mut bob = server.client("bob", "phone").await;
    set_muted(&mut bob, &chat, true).await;
    send_text(&mut alice, &chat, "quiet", "you muted me").await;
    // Past two passes and a settle: nothing went out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.counts(), [0, 0, 0, 0], "bob muted the chat");
    set_muted(&mut bob, &chat, false).await;
    send_text(&mut alice, &chat, "loud", "and now?").await;
    until("a push at every provider after unmuting", || {
        f.counts() == [1, 1, 1, 1]
    })
    .await;
    let web = f.web.delivered()[0].json().expect("JSON payload");
    assert_eq!(web["body"], "and now?", "only the unmuted message: {web}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_tokens_are_dropped_and_encrypted_content_stays_private() {
    let f = embedded_fakes().await;
    let server = f.server().await;
    let (mut alice, chat, _) = bob_and_alice(&f, &server).await;
    f.hook.reject(BOB_HOOK);
    f.fcm
        .answer_for_token(BOB_FCM, push_fakes::fcm::FcmAnswer::Unregistered);

    // Ciphertext only: the push says nothing of it.
    let sealed = send_unary(
        &mut alice,
        &chat,
        "sealed",
        Some(ciphertext(b"secret bytes")),
    )
    .await
    .expect("send ciphertext");
    assert!(sealed.message.is_some());
    until("the encrypted message's pushes", || {
        f.counts() == [1, 1, 1, 1]
    })
    .await;
    let web = f.web.delivered()[0].json().expect("JSON payload");
    assert!(web.get("title").is_none(), "no title for ciphertext: {web}");
    let web_text = web.to_string();
    assert!(!web_text.contains("secret"), "{web_text}");
    let fcm = &f.fcm.delivered()[0].message;
    assert!(fcm.get("notification").is_none(), "data only: {fcm}");
    assert_eq!(f.apns.delivered()[0].payload["aps"]["mutable-content"], 1);

    // The webhook rejected bob's pushkey and FCM called his token unregistered: both are gone,
    // so the next message reaches only APNs and Web Push.
    send_text(&mut alice, &chat, "next", "hello again").await;
    until("the next pushes", || {
        f.counts()[1] == 2 && f.counts()[2] == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.counts(), [1, 2, 2, 1], "dead tokens get no more pushes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let f = embedded_fakes().await;
    let server = f.server().await;
    let (mut alice, chat, _) = bob_and_alice(&f, &server).await;
    f.web.answer_next(WebPushAnswer::TooManyRequests {
        retry_after: Some(2),
    });
    let sent = Instant::now();
    send_text(&mut alice, &chat, "m", "later please").await;
    until("the push after its retry", || f.web.delivered().len() == 2).await;
    let took = sent.elapsed();
    let answered: Vec<_> = f
        .web
        .delivered()
        .iter()
        .map(|d| d.answered.clone())
        .collect();
    assert_eq!(
        answered,
        [
            WebPushAnswer::TooManyRequests {
                retry_after: Some(2)
            },
            WebPushAnswer::Created
        ]
    );
    assert!(
        took >= Duration::from_secs(2),
        "retried after {took:?}, before the 2 s Retry-After"
    );
    // The other providers did not wait for it.
    assert_eq!(f.hook.notifications().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_provider_holds_up_no_other_and_a_killed_worker_loses_no_push() {
    let f = embedded_fakes().await;
    let mut server = f.server().await;
    let (mut alice, chat, _) = bob_and_alice(&f, &server).await;
    f.hook.answer_next(push_fakes::server::Answer::stall());
    let sent = Instant::now();
    send_text(&mut alice, &chat, "m", "are you there").await;
    until("the other providers' pushes", || {
        let c = f.counts();
        c[0] == 1 && c[1] == 1 && c[2] == 1
    })
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "the stalled webhook held the others up for {:?}",
        sent.elapsed()
    );
    until("the webhook request that stalls", || {
        f.hook.notifications().len() == 1
    })
    .await;
    // Each provider keeps its own place in the queue: while the webhook's lane still waits on
    // its first push, the next message goes out at the others.
    let sent = Instant::now();
    send_text(&mut alice, &chat, "m2", "hello?").await;
    until("the others' pushes of the next message", || {
        f.counts()[..3] == [2, 2, 2]
    })
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "the stalled webhook held the next message's pushes up for {:?}",
        sent.elapsed()
    );
    assert_eq!(f.hook.notifications().len(), 1);

    // The node dies while the webhook's pass waits on the stalled gateway: its intents are
    // still there when it comes back, and the push goes out again (both messages in one); the
    // other lanes had recorded their place and send nothing twice.
    server.kill_and_restart().await;
    until("the push sent again after the restart", || {
        f.hook.notifications().len() == 2
    })
    .await;
    assert_eq!(pushkeys(&f.hook.notifications()[1]), [BOB_HOOK]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.counts()[..3],
        [2, 2, 2],
        "a lane sent again what it had done"
    );
}

/// Figures, not a check: `CHATD_BIN=target/release/chatd cargo test -p chat-tests --test
/// push_embedded bench_ -- --ignored --nocapture`. A group of MEMBERS offline members, each
/// with a token at every provider; one message → one push per member per provider. Prints,
/// per provider, the delay from the send to its first and last push and the pushes per second
/// between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures (see its doc comment)"]
async fn bench_push_fan_out_per_provider() {
    let f = embedded_fakes().await;
    let server = f.server().await;
    bench_fan_out(&f, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_refused_every_time_is_dead_lettered_after_five_tries() {
    let f = embedded_fakes().await;
    let server = f.server().await;
    let (mut alice, chat, _) = bob_and_alice(&f, &server).await;
    for _ in 0..6 {
        f.hook.answer_next(push_fakes::server::Answer::status(503));
    }
    send_text(&mut alice, &chat, "m", "never delivered").await;
    let metric = |line: &'static str| async move {
        let r = chat_tests::http::http_get(server.addr, "/metrics")
            .await
            .expect("GET /metrics");
        String::from_utf8_lossy(&r.body).lines().any(|l| l == line)
    };
    // The depth gauge starts at what the table holds.
    until_async("the dead-letter depth gauge at 0", || {
        metric("chatd_push_dlq_depth{provider=\"webhook\"} 0")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metric("chatd_push_failed_total{provider=\"webhook\"} 1").await {
        assert!(Instant::now() < deadline, "no dead letter within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_async("the dead-letter depth gauge at 1", || {
        metric("chatd_push_dlq_depth{provider=\"webhook\"} 1")
    })
    .await;
    assert!(metric("chatd_push_dlq_depth{provider=\"fcm\"} 0").await);
    // Five tries (the first and four retries after a backoff), then no more.
    assert_eq!(f.hook.notifications().len(), 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.hook.notifications().len(), 5);
    // The other providers were not held back.
    assert_eq!(f.counts()[..3], [1, 1, 1]);
}
