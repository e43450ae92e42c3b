//! Offline delivery and resume: per-device cursors (Ack / AckDelivered), replay on Hello chat by
//! chat in seq order, SyncComplete, Hello.delivered_seq overrides, new devices starting at the
//! current position, and no loss/reorder of live traffic that arrives during a replay.

use chat_tests::pb::AckDeliveredRequest;
use chat_tests::session::Frame;
use chat_tests::*;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_device_starts_at_the_current_position() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    send_many(&mut alice, &chat.chat_id, "old", 3).await;

    let mut bob = server.connect("bob", "brand-new").await;
    assert_eq!(bob.replayed, Some(0), "a brand-new device gets no replay");
    assert!(bob.backlog.is_empty(), "backlog: {:?}", seqs(&bob.backlog));
    bob.expect_no_message(QUIET_PERIOD).await;

    // It reads the old messages with GetHistory instead ...
    let h = full_history(&mut server.client("bob", "brand-new").await, &chat.chat_id).await;
    assert_eq!(seqs(&h), vec![1, 2, 3]);
    // ... and gets new ones live.
    send_text(&mut alice, &chat.chat_id, "new", "new").await;
    assert_eq!(bob.expect_message().await.seq, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_offline_replays_exactly_the_missed_messages() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    let mut bob = server.connect("bob", "phone").await;
    send_many(&mut alice, &chat.chat_id, "online", 3).await;
    let live = bob.expect_messages(3).await;
    assert_eq!(seqs(&live), vec![1, 2, 3]);
    bob.ack_synced(&chat.chat_id, 3).await;
    bob.close();

    let missed = send_many(&mut alice, &chat.chat_id, "offline", 5).await;
    assert_eq!(seqs(&missed), vec![4, 5, 6, 7, 8]);

    // Strict frame order: Welcome, the 5 missed messages in order, SyncComplete{5}.
    let mut bob = server.open_session("bob", "phone").await;
    bob.hello().await;
    assert!(
        matches!(bob.recv_core().await, Frame::Welcome(_)),
        "Welcome first"
    );
    for want in &missed {
        match bob.recv_core().await {
            Frame::Message(m) => {
                let m = m.message.unwrap();
                assert_eq!(
                    (m.seq, m.message_id.as_str(), text_of(&m)),
                    (want.seq, want.message_id.as_str(), text_of(want))
                );
            }
            other => panic!("expected replayed seq {}, got {other:?}", want.seq),
        }
    }
    match bob.recv_core().await {
        Frame::SyncComplete(s) => assert_eq!(s.replayed, 5),
        other => panic!("expected SyncComplete after the backlog, got {other:?}"),
    }

    // Then live.
    send_text(&mut alice, &chat.chat_id, "live", "live").await;
    assert_eq!(bob.expect_message().await.seq, 9);
    bob.expect_no_message(QUIET_PERIOD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_replayed() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    let mut bob = server.connect("bob", "phone").await;
    send_many(&mut alice, &chat.chat_id, "m", 2).await;
    assert_eq!(seqs(&bob.expect_messages(2).await), vec![1, 2]);
    bob.close(); // no Ack

    let bob = server.connect("bob", "phone").await;
    assert_eq!(
        seqs(&bob.backlog),
        vec![1, 2],
        "received but unacknowledged messages come again"
    );
    assert_eq!(bob.replayed, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_never_moves_the_cursor_backward() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    let mut bob = server.connect("bob", "phone").await;
    send_many(&mut alice, &chat.chat_id, "m", 5).await;
    bob.expect_messages(5).await;
    bob.ack_synced(&chat.chat_id, 5).await;
    bob.ack_synced(&chat.chat_id, 2).await; // ignored
    bob.close();

    send_many(&mut alice, &chat.chat_id, "n", 3).await;
    let bob = server.connect("bob", "phone").await;
    assert_eq!(seqs(&bob.backlog), vec![6, 7, 8]);
    assert_eq!(bob.replayed, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_ack_replays_the_rest() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    let mut bob = server.connect("bob", "phone").await;
    send_many(&mut alice, &chat.chat_id, "m", 4).await;
    bob.expect_messages(4).await;
    bob.ack_synced(&chat.chat_id, 2).await;
    bob.close();

    let bob = server.connect("bob", "phone").await;
    assert_eq!(seqs(&bob.backlog), vec![3, 4]);
    assert_eq!(bob.replayed, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_per_device() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    let mut phone = server.connect("bob", "phone").await;
    let mut laptop = server.connect("bob", "laptop").await;
    send_many(&mut alice, &chat.chat_id, "m", 3).await;
    phone.expect_messages(3).await;
    laptop.expect_messages(3).await;
    phone.ack_synced(&chat.chat_id, 3).await;
    laptop.ack_synced(&chat.chat_id, 1).await;
    phone.close();
    laptop.close();

    let phone = server.connect("bob", "phone").await;
    let laptop = server.connect("bob", "laptop").await;
    assert!(
        phone.backlog.is_empty(),
        "phone acked everything: {:?}",
        seqs(&phone.backlog)
    );
    assert_eq!(seqs(&laptop.backlog), vec![2, 3], "laptop acked only seq 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_delivered_unary_moves_the_cursor() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    server.connect("bob", "phone").await.close(); // known device at position 0

    send_many(&mut alice, &chat.chat_id, "m", 4).await;
    let mut bob = server.client("bob", "phone").await;
    bob.ack_delivered(AckDeliveredRequest {
        chat_id: chat.chat_id.clone(),
        seq: 2,
    })
    .await
    .expect("AckDelivered");

    let s = server.connect("bob", "phone").await;
    assert_eq!(seqs(&s.backlog), vec![3, 4]);
    assert_eq!(s.replayed, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_delivered_seq_overrides_the_stored_cursor_per_chat() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let a = open_direct(&mut alice, "bob").await;
    let b = create_group(&mut alice, "g", &["bob"]).await;

    let mut bob = server.connect("bob", "phone").await;
    send_many(&mut alice, &a.chat_id, "a", 5).await;
    send_many(&mut alice, &b.chat_id, "b", 3).await;
    bob.expect_messages(8).await;
    bob.ack_synced(&a.chat_id, 5).await;
    bob.ack_synced(&b.chat_id, 2).await;
    bob.close();

    // Override chat a only; chat b uses the stored cursor (2).
    let mut positions = HashMap::new();
    positions.insert(a.chat_id.clone(), 2u64);
    let bob = server
        .connect_with_positions("bob", "phone", positions)
        .await;
    let of = |chat: &str| {
        bob.backlog
            .iter()
            .filter(|m| m.chat_id == chat)
            .map(|m| m.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(&a.chat_id),
        vec![3, 4, 5],
        "chat a replayed from the Hello position"
    );
    assert_eq!(
        of(&b.chat_id),
        vec![3],
        "chat b replayed from the stored cursor"
    );
    assert_eq!(bob.backlog.len(), 4);
    assert_eq!(bob.replayed, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_chat_by_chat_in_seq_order() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut carol = server.client("carol", "phone").await;
    let c1 = open_direct(&mut alice, "bob").await;
    let c2 = open_direct(&mut carol, "bob").await;
    let c3 = create_group(&mut alice, "g", &["bob", "carol"]).await;
    server.connect("bob", "phone").await.close();

    // Interleave the chats.
    for i in 1..=4 {
        send_text(&mut alice, &c1.chat_id, &format!("c1-{i}"), "x").await;
        send_text(&mut carol, &c2.chat_id, &format!("c2-{i}"), "x").await;
        send_text(&mut alice, &c3.chat_id, &format!("c3a-{i}"), "x").await;
        send_text(&mut carol, &c3.chat_id, &format!("c3c-{i}"), "x").await;
    }
    let bob = server.connect("bob", "phone").await;
    assert_eq!(bob.backlog.len(), 16);
    assert_eq!(bob.replayed, Some(16));

    // Each chat forms one contiguous block, seqs 1..n ascending inside it.
    let mut order: Vec<String> = Vec::new();
    for m in &bob.backlog {
        if order.last() != Some(&m.chat_id) {
            assert!(
                !order.contains(&m.chat_id),
                "chat {} appears in two separate blocks: {:?}",
                m.chat_id,
                bob.backlog
                    .iter()
                    .map(|m| (&m.chat_id[..6], m.seq))
                    .collect::<Vec<_>>()
            );
            order.push(m.chat_id.clone());
        }
    }
    assert_eq!(order.len(), 3);
    for (chat, n) in [(&c1.chat_id, 4u64), (&c2.chat_id, 4), (&c3.chat_id, 8)] {
        let s: Vec<u64> = bob
            .backlog
            .iter()
            .filter(|m| &m.chat_id == chat)
            .map(|m| m.seq)
            .collect();
        assert_eq!(s, (1..=n).collect::<Vec<_>>(), "chat {chat}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_device_gets_chats_created_while_it_was_offline() {
    let server = TestServer::start().await;
    server.connect("bob", "phone").await.close(); // known device, no chats yet

    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    send_many(&mut alice, &chat.chat_id, "m", 2).await;

    let bob = server.connect("bob", "phone").await;
    assert_eq!(
        seqs(&bob.backlog),
        vec![1, 2],
        "nothing is lost for a device that was offline"
    );
    assert!(bob.backlog.iter().all(|m| m.chat_id == chat.chat_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_resumes_from_the_acked_cursor() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;

    let mut web = server.subscribe("bob", "web", HashMap::new()).await;
    web.sync().await;
    send_many(&mut alice, &chat.chat_id, "m", 3).await;
    assert_eq!(seqs(&web.expect_messages(3).await), vec![1, 2, 3]);
    let mut bob = server.client("bob", "web").await;
    bob.ack_delivered(AckDeliveredRequest {
        chat_id: chat.chat_id.clone(),
        seq: 2,
    })
    .await
    .unwrap();
    drop(web);

    send_text(&mut alice, &chat.chat_id, "m-4", "four").await;
    let mut web = server.subscribe("bob", "web", HashMap::new()).await;
    let sync = web.sync().await;
    assert_eq!(seqs(&sync.messages), vec![3, 4]);
    assert_eq!(sync.replayed, 2);

    // Subscribe's delivered_seq works like Hello's.
    let mut positions = HashMap::new();
    positions.insert(chat.chat_id.clone(), 1u64);
    let mut web2 = server.subscribe("bob", "web", positions).await;
    let sync = web2.sync().await;
    assert_eq!(seqs(&sync.messages), vec![2, 3, 4]);
}

/// Reads one resume of `bob`'s session (after Hello): Welcome, the replay, SyncComplete, then
/// live messages until `done(last_seq_seen)` says stop. Asserts that the seqs form one gap-free,
/// strictly increasing run starting right after `cursor`, that SyncComplete comes once and that
/// `replayed` counts the messages before it. Returns the last seq seen.
async fn read_resume(
    bob: &mut Session,
    cursor: u64,
    min_replay: u64,
    mut done: impl FnMut(u64) -> bool,
) -> u64 {
    assert!(
        matches!(bob.recv_core().await, Frame::Welcome(_)),
        "Welcome first"
    );
    let mut last = cursor;
    let mut count = 0u64;
    let mut before_sync: Option<u64> = None;
    loop {
        if before_sync.is_some() && done(last) {
            break;
        }
        match bob.recv_core().await {
            Frame::Message(m) => {
                let m = m.message.unwrap();
                assert_eq!(
                    m.seq,
                    last + 1,
                    "after cursor {cursor}: seq {} arrived where {} was due ({count} messages in, SyncComplete after {before_sync:?})",
                    m.seq,
                    last + 1
                );
                last = m.seq;
                count += 1;
            }
            Frame::SyncComplete(s) => {
                assert!(before_sync.is_none(), "second SyncComplete");
                assert_eq!(
                    s.replayed, count,
                    "SyncComplete.replayed counts the messages before it"
                );
                assert!(
                    count >= min_replay,
                    "replay of {count} is shorter than the {min_replay} known to be missed"
                );
                before_sync = Some(count);
            }
            Frame::Chat(_) => {}
            other => panic!("unexpected frame during resume: {other:?}"),
        }
    }
    last
}

/// A device reconnects with a large backlog while another user keeps sending, then reconnects
/// again and again while the traffic continues. Every resume must be one gap-free, strictly
/// increasing run of seqs from the device's cursor: nothing lost, duplicated or reordered around
/// the switch from replay to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_or_reorder_when_live_traffic_arrives_during_replay() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const BACKLOG: u64 = 600;
    const ROUNDS: usize = 15;
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    server.connect("bob", "phone").await.close(); // known device at position 0

    // Backlog, sent by 4 concurrent senders (alice's devices) to keep the test quick.
    let mut tasks = Vec::new();
    for d in 0..4 {
        let mut c = server.client("alice", &format!("dev{d}")).await;
        let chat_id = chat.chat_id.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..BACKLOG / 4 {
                let id = format!("backlog-{d}-{i}");
                send_text(&mut c, &chat_id, &id, &id).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Keep sending until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut hammers = Vec::new();
    for d in 0..2 {
        let mut c = server.client("alice", &format!("hammer{d}")).await;
        let chat_id = chat.chat_id.clone();
        let stop = stop.clone();
        hammers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("live-{d}-{i}");
                send_text(&mut c, &chat_id, &id, &id).await;
                i += 1;
            }
        }));
    }

    // Round 0 resumes the big backlog; later rounds resume whatever arrived since the last ack.
    let mut cursor = 0u64;
    for round in 0..ROUNDS {
        let mut bob = server.open_session("bob", "phone").await;
        bob.timeout = Duration::from_secs(30);
        bob.hello().await;
        let min_replay = if round == 0 { BACKLOG } else { 0 };
        let mut live = 0;
        let last = read_resume(&mut bob, cursor, min_replay, |_| {
            live += 1;
            live > 20 // a few live messages after SyncComplete
        })
        .await;
        bob.ack_synced(&chat.chat_id, last).await;
        cursor = last;
        bob.close();
    }

    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.await.unwrap();
    }
    let final_seq = get_chat(&mut alice, &chat.chat_id).await.unwrap().last_seq;
    assert!(final_seq > cursor);
    let mut bob = server.open_session("bob", "phone").await;
    bob.timeout = Duration::from_secs(30);
    bob.hello().await;
    let last = read_resume(&mut bob, cursor, final_seq - cursor, |last| {
        last == final_seq
    })
    .await;
    assert_eq!(last, final_seq);
    bob.expect_no_message(QUIET_PERIOD).await;
}
