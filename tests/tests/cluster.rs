//! Several nodes of one cluster on PostgreSQL, Redis and Kafka (full stack only: every test is
//! `#[ignore]`d, `scripts/test` runs them with `CHAT_TEST_BACKEND=full -- --ignored`, and run
//! on another backend they fail).
//!
//! Delivery to every device of a user and every member of a group wherever they are connected,
//! in order and exactly once; presence, typing, receipts and membership changes across nodes;
//! resume and idempotent retries on another node than the first; concurrent start-up, `chatd
//! migrate`, graceful node restarts, and start-up errors for missing or unreachable services.

use chat_tests::cluster::node_name;
use chat_tests::pb::{ChatEventKind, Message, PresenceStatus, ReceiptKind, TypingState};
use chat_tests::realtime::*;
use chat_tests::session::{is_ambient, Event as StreamEvent, Frame};
use chat_tests::*;
use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::time::Duration;
use tokio::task::JoinHandle;

macro_rules! full_stack_only {
    ($name:expr) => {
        require_full_stack($name)
    };
}

fn who(s: &Session) -> String {
    format!("{}/{}", s.user, s.device)
}

#[track_caller]
fn assert_welcomed_by(s: &Session, node: usize) {
    let w = s.welcome.as_ref().expect("connected session has a Welcome");
    assert_eq!(
        w.node_id,
        node_name(node),
        "{}: Welcome.node_id names the node it connected to",
        who(s)
    );
}

/// Receive exactly `want` (in this order, each once), then nothing more for a quiet period.
/// What the session got replayed when it connected counts first.
async fn expect_exactly(s: &mut Session, want: &[&Message], ctx: &str) {
    let mut got = std::mem::take(&mut s.backlog);
    let rest = want.len().saturating_sub(got.len());
    got.extend(collect_messages(s, rest).await);
    if got.len() < want.len() {
        let got_seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        let missing: Vec<u64> = want
            .iter()
            .map(|m| m.seq)
            .filter(|q| !got_seqs.contains(q))
            .collect();
        panic!(
            "{ctx} ({}): {} of {} messages arrived; missing seqs {missing:?}; got {got_seqs:?}",
            who(s),
            got.len(),
            want.len()
        );
    }
    let got_ids: Vec<(u64, &str)> = got.iter().map(|m| (m.seq, m.message_id.as_str())).collect();
    let want_ids: Vec<(u64, &str)> = want
        .iter()
        .map(|m| (m.seq, m.message_id.as_str()))
        .collect();
    assert_eq!(
        got_ids,
        want_ids,
        "{ctx} ({}): seq and message_id, in order",
        who(s)
    );
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            text_of(g),
            text_of(w),
            "{ctx} ({}): content of seq {}",
            who(s),
            w.seq
        );
    }
    s.expect_no_message(QUIET_PERIOD).await;
}

/// Up to `n` messages, stopping early when none comes within the session's timeout.
async fn collect_messages(s: &mut Session, n: usize) -> Vec<Message> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match s.next_event(s.timeout).await {
            Some(StreamEvent::Frame(Frame::Message(m))) => {
                got.push(m.message.expect("MessageEvent.message is set"))
            }
            Some(StreamEvent::Frame(f)) if is_ambient(&f) || matches!(f, Frame::Chat(_)) => {}
            Some(other) => panic!("{}: expected a MessageEvent, got {other:?}", who(s)),
            None => break,
        }
    }
    got
}

/// Queue `n` sends `"{prefix}-{i}"` on a stream, then collect their acks (pipelined).
async fn stream_send_many(s: &mut Session, chat: &str, prefix: &str, n: usize) -> Vec<Message> {
    for i in 1..=n {
        let id = format!("{prefix}-{i}");
        s.send_text(chat, &id, &id).await;
    }
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        let ack = s.expect_send_ack(&format!("{prefix}-{i}")).await;
        assert!(!ack.duplicate, "fresh send {prefix}-{i} acked as duplicate");
        out.push(ack.message.expect("SendAck.message"));
    }
    out
}

// ------------------------------------------------------------------------------ delivery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn devices_of_one_user_on_different_nodes_get_every_message_once_in_order() {
    full_stack_only!("devices_of_one_user_on_different_nodes_get_every_message_once_in_order");
    let c = TestCluster::start_with(3, NO_RATE_LIMIT).await;
    let chat = open_direct(&mut c.node(0).client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();

    let mut alice = [
        c.node(0).connect("alice", "phone").await,
        c.node(1).connect("alice", "laptop").await,
        c.node(2).connect("alice", "tablet").await,
    ];
    for (i, s) in alice.iter().enumerate() {
        assert_welcomed_by(s, i);
    }
    let mut bob_web = c.node(1).connect("bob", "web").await;
    let mut bob_phone = c.node(2).connect("bob", "phone").await;

    // 60 pipelined stream sends from node 3, then 20 unary sends through node 1.
    let mut sent = stream_send_many(&mut bob_phone, id, "s", 60).await;
    let mut desk = c.node(0).client("bob", "desk").await;
    sent.extend(send_many(&mut desk, id, "u", 20).await);
    assert_seq_range(&sent, 1, 80, "acked seqs");

    let all: Vec<&Message> = sent.iter().collect();
    for s in alice.iter_mut() {
        expect_exactly(s, &all, "alice's device").await;
    }
    expect_exactly(&mut bob_web, &all, "bob's other device").await;
    // The sending device got SendAcks for its 60, and the desk's 20 as messages.
    expect_exactly(&mut bob_phone, &all[60..], "bob's sending device").await;
}

/// A direct chat's messages reach their nodes twice, as direct copies (`bus::direct`) and
/// through Kafka; with small queues (64: direct copies may fill 32 of 96 slots) and 300
/// pipelined sends, copies are refused for room, yet every device — on the committing node
/// (in-process copies), on the other, the sender's own second device — gets each message once,
/// in order, and no session is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn direct_copies_reach_every_device_once_in_order_under_queue_pressure() {
    full_stack_only!("direct_copies_reach_every_device_once_in_order_under_queue_pressure");
    let mut env = NO_RATE_LIMIT.to_vec();
    env.push(("CHATD_SESSION_QUEUE", "128"));
    let c = TestCluster::start_with(2, &env).await;
    let chat = open_direct(&mut c.node(0).client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let readers = [
        (
            c.node(1).connect("bob", "phone").await,
            "bob, on the other node",
        ),
        (
            c.node(0).connect("bob", "tablet").await,
            "bob, on the committing node",
        ),
        (
            c.node(1).connect("alice", "laptop").await,
            "the sender's other device",
        ),
    ]
    .map(|(mut s, ctx)| {
        tokio::spawn(async move {
            let got = collect_messages(&mut s, 300).await;
            (s, got, ctx)
        })
    });
    let mut alice_phone = c.node(0).connect("alice", "phone").await;

    let sent = stream_send_many(&mut alice_phone, id, "d", 300).await;
    assert_seq_range(&sent, 1, 300, "acked seqs");
    let all: Vec<&Message> = sent.iter().collect();
    for reader in readers {
        let (mut s, got, ctx) = reader.await.expect("reader task");
        s.backlog = got;
        expect_exactly(&mut s, &all, ctx).await;
    }

    let mut copies = BTreeMap::new();
    for i in 0..2 {
        for outcome in ["sent", "dropped", "refused", "delivered"] {
            let series = format!("chatd_direct_copies_total{{outcome=\"{outcome}\"}}");
            *copies.entry(outcome).or_insert(0) += c.node(i).metric(&series).await;
        }
        let closes = c.node(i).metric("chatd_slow_consumer_closes_total").await;
        assert_eq!(closes, 0, "node {}: sessions closed by their queue", i + 1);
    }
    eprintln!("cluster: direct copies {copies:?}");
    assert_eq!(copies["sent"], 300, "every message was copied");
    assert!(copies["delivered"] > 0, "no stream took a direct copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn a_group_spread_over_every_node_gets_every_message() {
    full_stack_only!("a_group_spread_over_every_node_gets_every_message");
    let c = TestCluster::start_with(3, NO_RATE_LIMIT).await;
    let members = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let g = create_group(
        &mut c.node(0).client("alice", "phone").await,
        "spread",
        &members[1..],
    )
    .await;
    let id = g.chat_id.clone();

    // Listeners: every member's "phone" on node i % 3, plus alice's tablet on node 3.
    let mut listeners = Vec::new();
    for (i, u) in members.iter().enumerate() {
        if i < 3 {
            continue; // alice, bob and carol send from their phones
        }
        listeners.push(c.node(i % 3).connect(u, "phone").await);
    }
    listeners.push(c.node(2).connect("alice", "tablet").await);

    // Three senders, one per node, sending at the same time. All connect first: a sender
    // connecting after another began would get the earlier messages as its backlog.
    let mut connected = Vec::new();
    for (i, u) in members[..3].iter().enumerate() {
        connected.push((u, c.node(i).connect(u, "phone").await));
    }
    let mut tasks: Vec<JoinHandle<(Session, Vec<Message>)>> = Vec::new();
    for (u, mut s) in connected {
        let id = id.clone();
        let prefix = u.to_string();
        tasks.push(tokio::spawn(async move {
            let acks = stream_send_many(&mut s, &id, &prefix, 40).await;
            (s, acks)
        }));
    }
    let mut senders = Vec::new();
    let mut by_seq: BTreeMap<u64, Message> = BTreeMap::new();
    for t in tasks {
        let (s, acks) = t.await.expect("sender task");
        for m in &acks {
            assert!(
                by_seq.insert(m.seq, m.clone()).is_none(),
                "seq {} assigned twice",
                m.seq
            );
        }
        senders.push((s, acks));
    }
    let all: Vec<Message> = by_seq.values().cloned().collect();
    assert_seq_range(
        &all,
        1,
        120,
        "the 120 acked seqs of three concurrent senders",
    );

    let want: Vec<&Message> = all.iter().collect();
    for s in listeners.iter_mut() {
        expect_exactly(s, &want, "listener").await;
    }
    // Each sender gets everyone else's messages, not its own.
    for (s, own) in senders.iter_mut() {
        let others: Vec<&Message> = all
            .iter()
            .filter(|m| !own.iter().any(|o| o.seq == m.seq))
            .collect();
        expect_exactly(s, &others, "sender").await;
    }
    let h = full_history(&mut c.node(1).client("erin", "phone").await, &id).await;
    assert_seq_range(&h, 1, 120, "history read through another node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn the_same_client_msg_id_on_two_nodes_is_stored_once() {
    full_stack_only!("the_same_client_msg_id_on_two_nodes_is_stored_once");
    let c = TestCluster::start_with(2, NO_RATE_LIMIT).await;
    let chat = open_direct(&mut c.node(0).client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.clone();
    let mut bob = c.node(1).connect("bob", "phone").await;

    // The same device retries each message on both nodes at once.
    let mut tasks = Vec::new();
    for n in 0..2 {
        let mut client = c.node(n).client("alice", "phone").await;
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 1..=15 {
                let r = send_unary(&mut client, &id, &format!("r-{i}"), Some(text("retry")))
                    .await
                    .unwrap_or_else(|s| panic!("SendMessage r-{i}: {s:?}"));
                out.push(r);
            }
            out
        }));
    }
    let a = tasks.remove(0).await.unwrap();
    let b = tasks.remove(0).await.unwrap();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let (mx, my) = (x.message.as_ref().unwrap(), y.message.as_ref().unwrap());
        assert_eq!(
            (&mx.message_id, mx.seq),
            (&my.message_id, my.seq),
            "r-{}: both nodes answer with the same stored message",
            i + 1
        );
        assert!(
            x.duplicate != y.duplicate,
            "r-{}: exactly one of the two answers is the original (duplicate: {} / {})",
            i + 1,
            x.duplicate,
            y.duplicate
        );
    }
    let h = full_history(&mut c.node(1).client("bob", "phone").await, &id).await;
    assert_seq_range(&h, 1, 15, "stored once each");
    let got = bob.expect_messages(15).await;
    assert_seq_range(&got, 1, 15, "delivered once each");
    bob.expect_no_message(QUIET_PERIOD).await;
}

// ------------------------------------------------------------------------------- realtime

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn presence_crosses_nodes() {
    full_stack_only!("presence_crosses_nodes");
    let c = TestCluster::start(3).await;
    open_direct(&mut c.node(0).client("alice", "phone").await, "bob").await;
    let mut watcher = c.node(0).connect("alice", "phone").await;
    watch_presence(&watcher, &["bob"]).await;
    assert_hidden(
        &next_presence(&mut watcher, "bob").await,
        "bob",
        "bob never connected",
    );

    let phone = c.node(1).connect("bob", "phone").await;
    assert_presence(
        &next_presence(&mut watcher, "bob").await,
        "bob",
        PresenceStatus::Online,
        1,
        "bob's phone on node 2",
    );
    let laptop = c.node(2).connect("bob", "laptop").await;
    assert_presence(
        &next_presence(&mut watcher, "bob").await,
        "bob",
        PresenceStatus::Online,
        2,
        "bob's laptop on node 3",
    );
    // GetPresence through a third node agrees.
    let mut alice_c = c.node(2).client("alice", "web").await;
    assert_presence(
        &presence_one(&mut alice_c, "bob").await,
        "bob",
        PresenceStatus::Online,
        2,
        "GetPresence on node 3",
    );

    phone.close();
    assert_presence(
        &next_presence(&mut watcher, "bob").await,
        "bob",
        PresenceStatus::Online,
        1,
        "phone gone, laptop left",
    );
    let before = now_ms();
    laptop.close();
    let p = next_presence(&mut watcher, "bob").await;
    let after = now_ms();
    assert_eq!(
        (p.status(), p.devices_online),
        (PresenceStatus::Offline, 0),
        "both gone: {p:?}"
    );
    assert!(
        p.last_seen >= before && p.last_seen <= after,
        "last_seen {} between {before} and {after}",
        p.last_seen
    );
    let mut alice_c = c.node(1).client("alice", "web").await;
    let q = wait_presence(&mut alice_c, "bob", "the same last seen on node 2", |q| {
        q.status() == PresenceStatus::Offline
    })
    .await;
    assert_eq!(
        q.last_seen, p.last_seen,
        "every node reports the same last seen"
    );
    // A stranger on another node sees nothing.
    let mut carol = c.node(1).client("carol", "phone").await;
    assert_hidden(&presence_one(&mut carol, "bob").await, "bob", "stranger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn typing_crosses_nodes_and_ends_with_a_message() {
    full_stack_only!("typing_crosses_nodes_and_ends_with_a_message");
    let c = TestCluster::start(3).await;
    let g = create_group(
        &mut c.node(0).client("alice", "phone").await,
        "typing",
        &["bob", "carol"],
    )
    .await;
    let id = g.chat_id.as_str();
    let mut alice = c.node(0).connect("alice", "phone").await;
    let mut alice_laptop = c.node(2).connect("alice", "laptop").await;
    let mut bob = c.node(1).connect("bob", "phone").await;
    let mut carol = c.node(2).connect("carol", "phone").await;

    send_typing(&alice, id, TypingState::Started).await;
    for s in [&mut bob, &mut carol] {
        let t = next_typing(s).await;
        assert_eq!(
            (
                t.chat_id.as_str(),
                t.user_id.as_str(),
                t.device_id.as_str(),
                t.state()
            ),
            (id, "alice", "phone", TypingState::Started),
            "{}: {t:?}",
            who(s)
        );
    }
    let m = alice.send_and_ack(id, "m1", "typed").await;
    for s in [&mut bob, &mut carol] {
        let f = next_matching(s, "the message", |f| {
            matches!(f, Frame::Message(_) | Frame::Typing(_))
        })
        .await;
        assert!(
            matches!(&f, Frame::Message(e) if e.message.as_ref().unwrap().seq == m.seq),
            "{}: the message comes first: {f:?}",
            who(s)
        );
        let t = next_typing(s).await;
        assert_eq!(
            (t.user_id.as_str(), t.state()),
            ("alice", TypingState::Stopped),
            "{}: STOPPED after the message: {t:?}",
            who(s)
        );
    }
    // alice's other device (other node) never sees her typing.
    let f = next_matching(&mut alice_laptop, "the message", |f| {
        matches!(f, Frame::Message(_) | Frame::Typing(_))
    })
    .await;
    assert!(matches!(f, Frame::Message(_)), "alice/laptop: {f:?}");
    let t = typings(&collect_for(&mut alice_laptop, QUIET_PERIOD).await);
    assert!(t.is_empty(), "alice/laptop sees no typing of alice: {t:?}");

    // SetTyping through yet another node.
    let mut web = c.node(1).client("carol", "web").await;
    set_typing(&mut web, id, TypingState::Started as i32)
        .await
        .expect("SetTyping");
    let t = next_typing(&mut alice).await;
    assert_eq!(
        (t.user_id.as_str(), t.device_id.as_str(), t.state()),
        ("carol", "web", TypingState::Started),
        "{t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn receipts_cross_nodes() {
    full_stack_only!("receipts_cross_nodes");
    let c = TestCluster::start(3).await;
    let chat = open_direct(&mut c.node(0).client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let mut a_phone = c.node(0).connect("alice", "phone").await;
    let mut a_laptop = c.node(1).connect("alice", "laptop").await;
    let mut b_phone = c.node(1).connect("bob", "phone").await;
    let mut b_tablet = c.node(2).connect("bob", "tablet").await;

    a_phone.send_and_ack(id, "m1", "one").await;
    a_phone.send_and_ack(id, "m2", "two").await;
    for s in [&mut a_laptop, &mut b_phone, &mut b_tablet] {
        assert_seq_range(&s.expect_messages(2).await, 1, 2, "live messages");
    }

    let t0 = now_ms();
    b_phone.ack(id, 2).await;
    for s in [&mut a_phone, &mut a_laptop] {
        let r = next_receipt(s).await;
        assert_eq!(
            receipt_key(&r),
            ("bob".into(), "phone".into(), ReceiptKind::Delivered, 2),
            "{}: {r:?}",
            who(s)
        );
        assert!(r.at >= t0 && r.at <= now_ms(), "receipt time {r:?}");
    }
    send_read(&b_phone, id, 2).await;
    for s in [&mut a_phone, &mut a_laptop, &mut b_tablet] {
        let r = next_receipt(s).await;
        assert_eq!(
            receipt_key(&r),
            ("bob".into(), "phone".into(), ReceiptKind::Read, 2),
            "{}: {r:?}",
            who(s)
        );
    }
    // Every node answers the same about the cursors.
    for n in 0..3 {
        let mut bob_c = c.node(n).client("bob", "tablet").await;
        let chat = get_chat(&mut bob_c, id).await.expect("GetChat");
        assert_eq!(
            (chat.read_seq, chat.unread_count),
            (2, 0),
            "node {}: bob's read position",
            n + 1
        );
        let mut alice_c = c.node(n).client("alice", "phone").await;
        let r = get_receipts(&mut alice_c, id, 2)
            .await
            .expect("GetReceipts");
        assert!(
            r.iter()
                .any(|r| r.user_id == "bob" && r.kind() == ReceiptKind::Read && r.seq >= 2),
            "node {}: GetReceipts lists bob's READ: {r:?}",
            n + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn membership_changes_cross_nodes() {
    full_stack_only!("membership_changes_cross_nodes");
    let c = TestCluster::start(3).await;
    let mut bob_s = c.node(1).connect("bob", "phone").await;
    let mut carol_s = c.node(2).connect("carol", "phone").await;
    let mut alice = c.node(0).client("alice", "phone").await;

    let g = create_group(&mut alice, "g", &["bob"]).await;
    let id = g.chat_id.as_str();
    bob_s.expect_chat_event(ChatEventKind::Created).await;
    let m1 = send_text(&mut alice, id, "m1", "before carol").await;
    assert_eq!(bob_s.expect_message().await.seq, m1.seq);

    // Added on node 1, carol (node 3) gets the event and the next messages, not the older.
    add_members(&mut alice, id, &["carol"])
        .await
        .expect("AddMembers");
    let ev = carol_s.expect_chat_event(ChatEventKind::MemberAdded).await;
    assert_eq!(ev.user_ids, vec!["carol".to_string()]);
    bob_s.expect_chat_event(ChatEventKind::MemberAdded).await;
    let m2 = send_text(&mut alice, id, "m2", "with carol").await;
    assert_eq!(carol_s.expect_message().await.seq, m2.seq);
    assert_eq!(bob_s.expect_message().await.seq, m2.seq);

    // Removed through node 3, bob (node 2) is cut off at once.
    remove_member(&mut c.node(2).client("alice", "phone").await, id, "bob")
        .await
        .expect("RemoveMember");
    bob_s.expect_chat_event(ChatEventKind::MemberRemoved).await;
    carol_s
        .expect_chat_event(ChatEventKind::MemberRemoved)
        .await;
    let m3 = send_text(&mut alice, id, "m3", "without bob").await;
    assert_eq!(carol_s.expect_message().await.seq, m3.seq);
    bob_s.expect_no_message(QUIET_PERIOD).await;
    bob_s.send_text(id, "b1", "let me in").await;
    let err = bob_s.expect_send_error("b1").await;
    assert_eq!(err.code, tonic::Code::PermissionDenied as i32, "{err:?}");
    // A group's members may change between a commit and its fan-out: its messages take only
    // the ordered path, never a direct copy (which would reach a removed member).
    for i in 0..3 {
        let sent = c
            .node(i)
            .metric(r#"chatd_direct_copies_total{outcome="sent"}"#)
            .await;
        assert_eq!(sent, 0, "node {}: direct copies of group messages", i + 1);
    }
}

// --------------------------------------------------------------------------------- resume

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn resume_and_retry_on_another_node() {
    full_stack_only!("resume_and_retry_on_another_node");
    let c = TestCluster::start(3).await;
    let chat = open_direct(&mut c.node(0).client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();

    let mut alice = c.node(0).connect("alice", "phone").await;
    let mut bob = c.node(1).connect("bob", "phone").await;
    let a = stream_send_many(&mut alice, id, "a", 3).await;
    assert_seq_range(&bob.expect_messages(3).await, 1, 3, "bob live");
    bob.ack_synced(id, 3).await;
    let b1 = bob.send_and_ack(id, "b1", "reply").await;
    assert_eq!(alice.expect_message().await.seq, b1.seq);
    alice.close(); // alice never acked b1

    let b2 = bob.send_and_ack(id, "b2", "while you were away").await;

    // alice's phone comes back on node 3: b1 (never acked) and b2, not her own messages.
    let mut alice = c.node(2).connect("alice", "phone").await;
    assert_welcomed_by(&alice, 2);
    assert_eq!(
        alice
            .backlog
            .iter()
            .map(|m| (m.seq, m.message_id.clone()))
            .collect::<Vec<_>>(),
        vec![
            (b1.seq, b1.message_id.clone()),
            (b2.seq, b2.message_id.clone())
        ],
        "replay on another node"
    );
    assert_eq!(alice.replayed, Some(2));

    // A retry of a send made on node 1 is recognised on node 3.
    alice.send_text(id, "a-3", "a-3").await;
    let ack = alice.expect_send_ack("a-3").await;
    assert!(
        ack.duplicate,
        "retry on another node is a duplicate: {ack:?}"
    );
    let m = ack.message.unwrap();
    assert_eq!((m.seq, &m.message_id), (a[2].seq, &a[2].message_id));

    // New sends from node 3 reach bob on node 2; bob resumes on node 1 from his cursor.
    let a4 = alice.send_and_ack(id, "a-4", "from node 3").await;
    assert_eq!(a4.seq, 6);
    assert_eq!(bob.expect_message().await.seq, 6);
    bob.close(); // cursor 3; 4 and 5 are his own; 6 unacked
    let bob = c.node(0).connect("bob", "phone").await;
    assert_eq!(seqs(&bob.backlog), vec![6], "bob's replay on node 1");
    bob.close();

    // Hello.delivered_seq overrides the stored cursor on any node.
    let bob2 = c
        .node(2)
        .connect_with_positions("bob", "phone", HashMap::from([(id.to_string(), 0)]))
        .await;
    assert_eq!(seqs(&bob2.backlog), vec![1, 2, 3, 6]);
}

// ------------------------------------------------------------------------------ operations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn nodes_started_together_on_an_empty_database_all_come_up() {
    full_stack_only!("nodes_started_together_on_an_empty_database_all_come_up");
    // All three race to apply the schema and create the topics.
    let c = TestCluster::start_all_at_once(3, ServerOptions::new()).await;
    let chat = open_direct(&mut c.node(2).client("alice", "phone").await, "bob").await;
    let mut bob = c.node(0).connect("bob", "phone").await;
    let mut alice = c.node(1).client("alice", "phone").await;
    let m = send_text(&mut alice, &chat.chat_id, "m1", "hi").await;
    assert_eq!(m.seq, 1);
    assert_eq!(bob.expect_message().await.message_id, m.message_id);
    for n in &c.nodes {
        let r = http::http_get(n.addr, "/readyz")
            .await
            .expect("GET /readyz");
        assert_eq!(r.status, 200, "{:?} /readyz: {}", n.node_id(), r.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn migrate_command_applies_the_schema_and_is_idempotent() {
    full_stack_only!("migrate_command_applies_the_schema_and_is_idempotent");
    let scratch = tempfile::tempdir().unwrap();
    let backend = std::sync::Arc::new(Backend::FullStack.provision(scratch.path()).await);
    let url = backend.database_url().unwrap().to_string();
    let bin = chat_tests::server::chatd_bin();
    for round in 1..=2 {
        let out = tokio::process::Command::new(&bin)
            .arg("migrate")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHATD_DATABASE_URL", &url)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("chatd migrate finishes within 60 s")
            .expect("run chatd migrate");
        assert!(
            out.status.success(),
            "chatd migrate (round {round}) failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tables = backend
        .sql("select count(*) from information_schema.tables where table_schema = 'public'")
        .await;
    assert!(
        tables.parse::<u32>().unwrap_or(0) > 0,
        "chatd migrate created tables (count: {tables:?})"
    );

    // A node without CHATD_MIGRATE works on the migrated database.
    let opts = ServerOptions::new().env("CHATD_MIGRATE", "off");
    let scratch = tempfile::tempdir().unwrap();
    let server = TestServer::start_node(opts, backend, Some("node-1".into()), scratch).await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    assert_eq!(send_text(&mut alice, &chat.chat_id, "m", "hi").await.seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn a_gracefully_restarted_node_rejoins_the_cluster() {
    full_stack_only!("a_gracefully_restarted_node_rejoins_the_cluster");
    let mut c = TestCluster::start_with(3, NO_RATE_LIMIT).await;
    let g = create_group(
        &mut c.node(0).client("alice", "phone").await,
        "restart",
        &["bob", "carol"],
    )
    .await;
    let id = g.chat_id.clone();
    let mut carol = c.node(2).connect("carol", "phone").await;
    // bob's phone is known at position 0, then node 2 restarts (SIGTERM, exit 0, start).
    c.node(1).connect("bob", "phone").await.close();
    let mut alice = c.node(0).client("alice", "phone").await;
    let before = send_many(&mut alice, &id, "before", 5).await;
    c.node_mut(1).restart().await;
    let after = send_many(&mut alice, &id, "after", 5).await;

    let mut bob = c.node(1).connect("bob", "phone").await;
    assert_welcomed_by(&bob, 1);
    assert_seq_range(&bob.backlog, 1, 10, "bob's replay on the restarted node");
    let all: Vec<&Message> = before.iter().chain(&after).collect();
    expect_exactly(&mut carol, &all, "carol on node 3").await;

    // Live in both directions through the restarted node.
    let b = bob.send_and_ack(&id, "b1", "from the restarted node").await;
    assert_eq!(carol.expect_message().await.seq, b.seq);
    let m = send_text(&mut alice, &id, "a-live", "to the restarted node").await;
    assert_eq!(bob.expect_message().await.seq, m.seq);
}

// ------------------------------------------------------------------------- start-up errors

fn closed_port() -> u16 {
    // Bind, note the port, close: nothing listens there for the next moment.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

async fn expect_refusal(env: &[(&str, &str)], names: &[&str], ctx: &str) {
    let opts = ServerOptions::new().envs(env);
    let started = std::time::Instant::now();
    let out = TestServer::run_expecting_exit_within(opts, Duration::from_secs(60)).await;
    let status = out.status.unwrap_or_else(|| {
        panic!(
            "{ctx}: chatd kept running (killed after 60 s); stderr:\n{}",
            out.stderr
        )
    });
    assert!(
        !status.success(),
        "{ctx}: chatd must exit non-zero, got {status:?}; stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("chatd listening on"),
        "{ctx}: it must not start listening; stdout: {}",
        out.stdout
    );
    let err = out.stderr.to_lowercase();
    assert!(
        names.iter().any(|n| err.contains(&n.to_lowercase())),
        "{ctx}: stderr should name {names:?}:\n{}",
        out.stderr
    );
    eprintln!("{ctx}: refused after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn an_unreachable_service_stops_start_up_with_its_name() {
    full_stack_only!("an_unreachable_service_stops_start_up_with_its_name");
    let dead = closed_port();
    let db = format!("postgres://postgres@127.0.0.1:{dead}/chat");
    let redis = format!("redis://127.0.0.1:{dead}");
    let kafka = format!("127.0.0.1:{dead}");
    expect_refusal(
        &[("CHATD_DATABASE_URL", &db)],
        &["postgres"],
        "PostgreSQL unreachable",
    )
    .await;
    expect_refusal(
        &[("CHATD_REDIS_URL", &redis)],
        &["redis"],
        "Redis unreachable",
    )
    .await;
    expect_refusal(
        &[("CHATD_KAFKA_BROKERS", &kafka)],
        &["kafka"],
        "Kafka unreachable",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn users_of_a_crashed_node_go_offline_for_the_others() {
    full_stack_only!("users_of_a_crashed_node_go_offline_for_the_others");
    // A dead node refreshes nothing: its sessions expire after the heartbeat timeout.
    let mut c = TestCluster::start_with(
        2,
        &[
            ("CHATD_HEARTBEAT_INTERVAL_MS", "1000"),
            ("CHATD_HEARTBEAT_TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    open_direct(&mut c.node(0).client("alice", "phone").await, "bob").await;
    let mut bob = c.node(1).connect("bob", "phone").await;
    let mut alice = c.node(0).client("alice", "phone").await;
    wait_presence(&mut alice, "bob", "bob online", |p| {
        p.status() == PresenceStatus::Online
    })
    .await;
    bob.ping().await;
    c.node_mut(1).kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = presence_one(&mut alice, "bob").await;
        if p.status() == PresenceStatus::Offline {
            assert_eq!(p.devices_online, 0, "{p:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob still reads as online 30 s after his node crashed: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full): scripts/test runs it"]
async fn erasing_a_user_on_one_node_ends_their_sessions_on_every_node() {
    full_stack_only!("erasing_a_user_on_one_node_ends_their_sessions_on_every_node");
    let c = TestCluster::start(3).await;
    let g = create_group(
        &mut c.node(0).client("alice", "phone").await,
        "erased",
        &["bob"],
    )
    .await;
    send_text(
        &mut c.node(0).client("alice", "phone").await,
        &g.chat_id,
        "a1",
        "secret",
    )
    .await;
    let mut alice_1 = c.node(1).connect("alice", "phone").await;
    let mut alice_2 = c.node(2).connect("alice", "laptop").await;
    let mut bob = c.node(2).connect("bob", "phone").await;

    let mut admin = c.node(0).admin_client("ops").await;
    let r = admin
        .delete_user_data(chat_tests::pb::DeleteUserDataRequest {
            user_id: "alice".into(),
        })
        .await
        .expect("DeleteUserData")
        .into_inner();
    assert_eq!((r.messages_deleted, r.chats_left), (1, 1));
    for s in [&mut alice_1, &mut alice_2] {
        let end = s.expect_end().await;
        assert_eq!(
            end.code(),
            tonic::Code::PermissionDenied,
            "{}: {end:?}",
            who(s)
        );
    }
    let e = bob.expect_chat_event(ChatEventKind::MemberRemoved).await;
    assert_eq!(e.user_ids, ["alice"]);
    let h = full_history(&mut c.node(1).client("bob", "phone").await, &g.chat_id).await;
    assert_eq!(h.len(), 1);
    assert!(h[0].content.clone().unwrap_or_default().text.is_empty());
}
