//! GetHistory: newest first, page sizes (0 → 50, 1, 200, 201 → INVALID_ARGUMENT), opaque page
//! tokens (exact boundaries, stability under new messages, tampering, other chats), after_seq
//! forward reads, access control.

use chat_tests::pb::Message;
use chat_tests::*;
use tonic::Code;

fn desc(from: u64, to: u64) -> Vec<u64> {
    (to..=from).rev().collect()
}

async fn chat_with_messages(server: &TestServer, n: usize) -> (Client, String, Vec<Message>) {
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let sent = send_many(&mut alice, &chat.chat_id, "m", n).await;
    (alice, chat.chat_id, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_chat_has_empty_history() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    for size in [0, 1, 200] {
        let h = history(&mut alice, &chat.chat_id, size, "")
            .await
            .expect("GetHistory");
        assert!(h.messages.is_empty(), "page_size {size}");
        assert!(
            h.next_page_token.is_empty(),
            "page_size {size}: no token for an empty chat"
        );
    }
    let h = history_after(&mut alice, &chat.chat_id, 1, 0)
        .await
        .expect("after_seq on empty chat");
    assert!(h.messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_first_with_full_message_fields() {
    let server = TestServer::start().await;
    let (mut alice, chat, sent) = chat_with_messages(&server, 5).await;
    let mut bob = server.client("bob", "phone").await;
    send_text(&mut bob, &chat, "b1", "from bob").await;

    let h = history(&mut bob, &chat, 0, "").await.unwrap();
    assert_eq!(seqs(&h.messages), desc(6, 1));
    assert!(h.next_page_token.is_empty());
    for (m, s) in h.messages.iter().rev().zip(&sent) {
        assert_eq!(m.message_id, s.message_id);
        assert_eq!(m.chat_id, chat);
        assert_eq!(m.sender_user_id, "alice");
        assert_eq!(m.sender_device_id, "phone");
        assert_eq!(m.client_msg_id, s.client_msg_id);
        assert_eq!(text_of(m), text_of(s));
        assert_eq!(m.created_at, s.created_at);
    }
    assert_eq!(text_of(&h.messages[0]), "from bob");
    assert_eq!(h.messages[0].sender_user_id, "bob");

    // Both members see the same history.
    let ha = history(&mut alice, &chat, 0, "").await.unwrap();
    assert_eq!(ha.messages, h.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_on_exact_boundaries() {
    let server = TestServer::start().await;
    let (mut alice, chat, _) = chat_with_messages(&server, 6).await;

    let p1 = history(&mut alice, &chat, 3, "").await.unwrap();
    assert_eq!(seqs(&p1.messages), vec![6, 5, 4]);
    assert!(!p1.next_page_token.is_empty(), "older messages exist");
    let p2 = history(&mut alice, &chat, 3, &p1.next_page_token)
        .await
        .unwrap();
    assert_eq!(seqs(&p2.messages), vec![3, 2, 1]);
    assert!(
        p2.next_page_token.is_empty(),
        "nothing older than seq 1: token must be empty"
    );

    // Page size equal to the number of messages: one page, no token.
    let all = history(&mut alice, &chat, 6, "").await.unwrap();
    assert_eq!(seqs(&all.messages), desc(6, 1));
    assert!(all.next_page_token.is_empty());

    // Non-dividing page size.
    let p1 = history(&mut alice, &chat, 4, "").await.unwrap();
    assert_eq!(seqs(&p1.messages), vec![6, 5, 4, 3]);
    let p2 = history(&mut alice, &chat, 4, &p1.next_page_token)
        .await
        .unwrap();
    assert_eq!(seqs(&p2.messages), vec![2, 1]);
    assert!(p2.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_one_walks_every_message() {
    let server = TestServer::start().await;
    let (mut alice, chat, _) = chat_with_messages(&server, 3).await;
    let mut token = String::new();
    let mut got = Vec::new();
    for i in 0..3 {
        let p = history(&mut alice, &chat, 1, &token).await.unwrap();
        assert_eq!(p.messages.len(), 1, "page {i}");
        got.push(p.messages[0].seq);
        token = p.next_page_token;
        if i < 2 {
            assert!(!token.is_empty(), "page {i} must have a next token");
        }
    }
    assert_eq!(got, vec![3, 2, 1]);
    assert!(token.is_empty(), "no token after the oldest message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_limits() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let (mut alice, chat, _) = chat_with_messages(&server, 201).await;

    let p = history(&mut alice, &chat, 0, "").await.unwrap();
    assert_eq!(seqs(&p.messages), desc(201, 152), "page_size 0 means 50");
    assert!(!p.next_page_token.is_empty());

    let p = history(&mut alice, &chat, 200, "").await.unwrap();
    assert_eq!(seqs(&p.messages), desc(201, 2));
    assert!(!p.next_page_token.is_empty());
    let rest = history(&mut alice, &chat, 200, &p.next_page_token)
        .await
        .unwrap();
    assert_eq!(seqs(&rest.messages), vec![1]);
    assert!(rest.next_page_token.is_empty());

    let s = assert_code(
        history(&mut alice, &chat, 201, "").await,
        Code::InvalidArgument,
        "page_size 201",
    );
    assert_mentions(s.message(), "page_size", "page_size 201");
    assert_code(
        history(&mut alice, &chat, u32::MAX, "").await,
        Code::InvalidArgument,
        "page_size u32::MAX",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_token_is_a_stable_cursor() {
    let server = TestServer::start().await;
    let (mut alice, chat, _) = chat_with_messages(&server, 6).await;
    let p1 = history(&mut alice, &chat, 3, "").await.unwrap();
    assert_eq!(seqs(&p1.messages), vec![6, 5, 4]);

    // New messages arrive between the page requests: the next page is still "older than 4".
    send_many(&mut alice, &chat, "late", 2).await;
    let p2 = history(&mut alice, &chat, 3, &p1.next_page_token)
        .await
        .unwrap();
    assert_eq!(seqs(&p2.messages), vec![3, 2, 1]);

    // Re-using a token gives the same page.
    let again = history(&mut alice, &chat, 3, &p1.next_page_token)
        .await
        .unwrap();
    assert_eq!(again.messages, p2.messages);

    // A fresh first page starts at the newest.
    let fresh = history(&mut alice, &chat, 3, "").await.unwrap();
    assert_eq!(seqs(&fresh.messages), vec![8, 7, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_foreign_page_tokens_are_invalid() {
    let server = TestServer::start().await;
    let (mut alice, chat, _) = chat_with_messages(&server, 6).await;
    let other = open_direct(&mut alice, "carol").await;
    send_many(&mut alice, &other.chat_id, "o", 6).await;

    let token = history(&mut alice, &chat, 2, "")
        .await
        .unwrap()
        .next_page_token;
    let other_token = history(&mut alice, &other.chat_id, 2, "")
        .await
        .unwrap()
        .next_page_token;
    assert!(!token.is_empty() && !other_token.is_empty());

    let mut flipped = token.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let cases = [
        ("one character changed", flipped),
        ("appended garbage", format!("{token}xyz")),
        ("truncated", token[..token.len() / 2].to_string()),
        ("not a token", "definitely-not-a-token".to_string()),
        ("non-base64 characters", "!!!***###".to_string()),
    ];
    for (what, t) in cases {
        if t == token {
            continue;
        }
        let s = assert_code(
            history(&mut alice, &chat, 2, &t).await,
            Code::InvalidArgument,
            what,
        );
        assert_mentions(s.message(), "page_token", what);
    }
    assert_code(
        history(&mut alice, &chat, 2, &other_token).await,
        Code::InvalidArgument,
        "page token from another chat",
    );
    // The genuine token still works.
    let p = history(&mut alice, &chat, 2, &token).await.unwrap();
    assert_eq!(seqs(&p.messages), vec![4, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_seq_reads_forward_oldest_first() {
    let server = TestServer::start().await;
    let (mut alice, chat, _) = chat_with_messages(&server, 10).await;

    let p = history_after(&mut alice, &chat, 4, 3).await.unwrap();
    assert_eq!(seqs(&p.messages), vec![5, 6, 7], "after_seq 4, page 3");
    let p = history_after(&mut alice, &chat, 7, 0).await.unwrap();
    assert_eq!(
        seqs(&p.messages),
        vec![8, 9, 10],
        "after_seq 7, default page"
    );
    let p = history_after(&mut alice, &chat, 4, 0).await.unwrap();
    assert_eq!(seqs(&p.messages), vec![5, 6, 7, 8, 9, 10]);
    let p = history_after(&mut alice, &chat, 10, 0).await.unwrap();
    assert!(p.messages.is_empty(), "nothing after the last seq");
    let p = history_after(&mut alice, &chat, 1000, 0).await.unwrap();
    assert!(p.messages.is_empty(), "nothing after a seq beyond the end");

    // after_seq wins over a page token.
    let token = history(&mut alice, &chat, 2, "")
        .await
        .unwrap()
        .next_page_token;
    let p = alice
        .get_history(chat_tests::pb::GetHistoryRequest {
            chat_id: chat.clone(),
            page_size: 2,
            page_token: token,
            after_seq: 8,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        seqs(&p.messages),
        vec![9, 10],
        "page_token is ignored when after_seq is set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_access_control_and_chat_id_validation() {
    let server = TestServer::start().await;
    let (_alice, chat, _) = chat_with_messages(&server, 2).await;
    let mut eve = server.client("eve", "phone").await;
    assert_code(
        history(&mut eve, &chat, 0, "").await,
        Code::PermissionDenied,
        "non-member",
    );
    assert_code(
        history_after(&mut eve, &chat, 0, 0).await,
        Code::PermissionDenied,
        "non-member after_seq",
    );
    assert_code(
        history(&mut eve, &unknown_chat_id(), 0, "").await,
        Code::NotFound,
        "unknown chat",
    );
    for bad in [
        "",
        "xyz",
        &chat.to_uppercase(),
        &chat[..31],
        &format!("{chat}0"),
    ] {
        let s = assert_code(
            history(&mut eve, bad, 0, "").await,
            Code::InvalidArgument,
            &format!("chat_id {bad:?}"),
        );
        assert_mentions(s.message(), "chat_id", &format!("chat_id {bad:?}"));
    }
}
