//! Retention: with CHATD_RETENTION_DAYS tiny and CHATD_RETENTION_INTERVAL_MS short, old messages
//! disappear from history, resume and last_message; seq numbers continue (no reuse), unread
//! counts count only messages that still exist, cursors stay valid up to last_seq. Bad values
//! stop start-up.

use chat_tests::pb::Message;
use chat_tests::realtime::*;
use chat_tests::session::Frame;
use chat_tests::*;
use std::time::Duration;
use tonic::Code;

/// 0.0001 days = 8.64 s.
const RETENTION_DAYS: &str = "0.0001";
const RETENTION_MS: i64 = 8_640;
const RETENTION_ENV: &[(&str, &str)] = &[
    ("CHATD_RETENTION_DAYS", RETENTION_DAYS),
    ("CHATD_RETENTION_INTERVAL_MS", "200"),
];

/// True while `m` is certainly younger than the retention (with a 1 s margin): only then may a
/// test insist that it still exists, however slow the machine is.
fn young(m: &Message) -> bool {
    now_ms() < m.created_at + RETENTION_MS - 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_messages_are_purged_and_seqs_continue() {
    let server = TestServer::start_with(RETENTION_ENV).await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.as_str();
    let mut bob_c = server.client("bob", "phone").await;
    // bob's phone knows the chat (cursor at 0), then goes away.
    server.connect("bob", "phone").await.close();

    let old = send_many(&mut alice_c, id, "old", 3).await;
    let v = get_chat(&mut bob_c, id).await.unwrap();
    let h = full_history(&mut bob_c, id).await;
    if young(&old[0]) {
        assert_eq!(
            (v.last_seq, v.unread_count),
            (3, 3),
            "before the purge: {v:?}"
        );
        assert_eq!(
            v.last_message.as_ref().map(|m| m.seq),
            Some(3),
            "last_message before the purge"
        );
        assert_seq_range(&h, 1, 3, "history before the purge");
    }
    // Halfway through the retention the messages are still there.
    let half = old[0].created_at + RETENTION_MS / 2 - now_ms();
    if half > 0 {
        tokio::time::sleep(Duration::from_millis(half as u64)).await;
    }
    let h = full_history(&mut bob_c, id).await;
    if young(&old[0]) {
        assert_seq_range(&h, 1, 3, "history before the messages are old enough");
    }

    // Wait for the purge (the retention, plus generous time for the purge to run).
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(RETENTION_MS as u64)
        + Duration::from_secs(30);
    loop {
        let h = full_history(&mut bob_c, id).await;
        if h.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages older than the retention were never purged; history still has {:?}",
            seqs(&h)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        now_ms() >= old[2].created_at + RETENTION_MS - 50,
        "purged before they were old enough"
    );

    // The chat keeps its last_seq; nothing is left to preview or to count as unread.
    for (who, c) in [("alice", &mut alice_c), ("bob", &mut bob_c)] {
        let v = get_chat(c, id).await.unwrap();
        assert_eq!(v.last_seq, 3, "{who}: last_seq unchanged: {v:?}");
        assert!(
            v.last_message.is_none(),
            "{who}: last_message unset once purged: {v:?}"
        );
        let listed = list_all_chats(c, 10).await;
        let l = listed
            .iter()
            .find(|x| x.chat_id == id)
            .expect("chat listed");
        assert_eq!(l.last_seq, 3, "{who}: ListChats last_seq: {l:?}");
        assert!(
            l.last_message.is_none(),
            "{who}: ListChats last_message unset: {l:?}"
        );
        let after = history_after(c, id, 1, 50).await.unwrap();
        assert!(
            after.messages.is_empty(),
            "{who}: nothing after seq 1 either: {:?}",
            seqs(&after.messages)
        );
    }
    let v = get_chat(&mut bob_c, id).await.unwrap();
    assert_eq!(
        (v.read_seq, v.unread_count),
        (0, 0),
        "unread counts only messages that exist: {v:?}"
    );

    // The next message gets seq 4: seqs are never reused.
    let new = send_text(&mut alice_c, id, "new", "fresh").await;
    assert_eq!(new.seq, 4, "the seq after a purge continues from last_seq");
    let h = full_history(&mut bob_c, id).await;
    let v = get_chat(&mut bob_c, id).await.unwrap();
    // Resume replays only what still exists.
    let mut phone = server.connect("bob", "phone").await;
    if young(&new) {
        assert_seq_range(&h, 4, 4, "history after the purge");
        assert_eq!(
            (v.last_seq, v.read_seq, v.unread_count),
            (4, 0, 1),
            "only the new message is unread: {v:?}"
        );
        assert_eq!(
            v.last_message.as_ref().map(|m| m.seq),
            Some(4),
            "last_message is the new one"
        );
        assert_seq_range(&phone.backlog, 4, 4, "replay after the purge");
        assert_eq!(phone.replayed, Some(1), "SyncComplete.replayed");
    }

    // Cursors are still accepted up to last_seq, including purged positions.
    mark_read(&mut bob_c, id, 2)
        .await
        .expect("MarkRead of a purged seq");
    phone.ack(id, 3).await;
    phone.ping().await;
    let s = assert_code(
        mark_read(&mut bob_c, id, 5).await,
        Code::InvalidArgument,
        "MarkRead beyond last_seq",
    );
    assert_mentions(s.message(), "seq", "MarkRead beyond last_seq");
    mark_read(&mut bob_c, id, 4).await.expect("MarkRead 4");
    let v = get_chat(&mut bob_c, id).await.unwrap();
    assert_eq!((v.read_seq, v.unread_count), (4, 0), "{v:?}");
    let frames = collect_for(&mut phone, QUIET_PERIOD).await;
    assert!(
        !frames.iter().any(|f| matches!(f, Frame::Error(_))),
        "acking a purged seq is accepted: {frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_after_the_purge_is_kept_until_it_is_old() {
    let server = TestServer::start_with(RETENTION_ENV).await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.as_str();
    let first = send_text(&mut alice_c, id, "a", "first").await;
    // Send a second message about half a retention later.
    let half = first.created_at + RETENTION_MS / 2 - now_ms();
    if half > 0 {
        tokio::time::sleep(Duration::from_millis(half as u64)).await;
    }
    let second = send_text(&mut alice_c, id, "b", "second").await;
    assert_eq!(second.seq, 2);

    // Once the first is gone the second, younger one must still be there.
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(RETENTION_MS as u64)
        + Duration::from_secs(30);
    loop {
        let h = full_history(&mut alice_c, id).await;
        let still_young = young(&second);
        if !h.iter().any(|m| m.seq == 1) {
            if still_young {
                assert_eq!(seqs(&h), vec![2], "only the older message is purged");
                let v = get_chat(&mut server.client("bob", "phone").await, id)
                    .await
                    .unwrap();
                if young(&second) {
                    assert_eq!(
                        (v.unread_count, v.last_message.map(|m| m.seq)),
                        (1, Some(2)),
                        "bob's view"
                    );
                }
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first message was never purged: {:?}",
            seqs(&h)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retention_values_stop_start_up() {
    for (var, val) in [
        ("CHATD_RETENTION_DAYS", "0"),
        ("CHATD_RETENTION_DAYS", "-1"),
        ("CHATD_RETENTION_DAYS", "abc"),
        ("CHATD_RETENTION_INTERVAL_MS", "abc"),
    ] {
        let out = TestServer::run_expecting_exit(ServerOptions::new().env(var, val)).await;
        let ctx = format!("{var}={val}");
        let status = out
            .status
            .unwrap_or_else(|| panic!("{ctx}: chatd kept running; stderr:\n{}", out.stderr));
        assert!(
            !status.success(),
            "{ctx}: chatd must exit non-zero, got {status:?}\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(var),
            "{ctx}: stderr should name {var}:\n{}",
            out.stderr
        );
        assert!(
            !out.stdout.contains("chatd listening on"),
            "{ctx}: it must not start listening"
        );
    }
    // A decimal number of days is fine.
    let server = TestServer::start_with(&[("CHATD_RETENTION_DAYS", "0.5")]).await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    send_text(&mut alice_c, &chat.chat_id, "m1", "kept").await;
    assert_eq!(full_history(&mut alice_c, &chat.chat_id).await.len(), 1);
}
