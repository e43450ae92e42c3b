//! Chats: direct chats, groups, roles, membership changes and their events, what new and
//! removed members can see, ListChats ordering and pagination, GetChat counters.

use chat_tests::pb::{Chat, ChatEventKind, ChatKind, MarkReadRequest, MemberRole};
use chat_tests::*;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;
use tonic::Code;

fn member_ids(chat: &Chat) -> BTreeSet<String> {
    chat.members.iter().map(|m| m.user_id.clone()).collect()
}

fn role_of(chat: &Chat, user: &str) -> i32 {
    chat.members
        .iter()
        .find(|m| m.user_id == user)
        .unwrap_or_else(|| panic!("{user} is not a member of {chat:?}"))
        .role
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Make sure the next activity gets a strictly later millisecond timestamp than the last one
/// (ordering by activity time is what is tested, not speed).
async fn next_millisecond() {
    tokio::time::sleep(Duration::from_millis(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_direct_chat_returns_the_same_chat_from_both_sides() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;

    let a = open_direct(&mut alice, "bob").await;
    assert!(
        is_chat_id(&a.chat_id),
        "chat_id must be 32 lowercase hex chars: {:?}",
        a.chat_id
    );
    assert_eq!(a.kind, ChatKind::Direct as i32);
    assert_eq!(member_ids(&a), set(&["alice", "bob"]));
    assert_eq!(a.last_seq, 0);
    assert!(
        a.last_message.is_none(),
        "new chat has no last_message: {a:?}"
    );

    let b = open_direct(&mut bob, "alice").await;
    assert_eq!(
        b.chat_id, a.chat_id,
        "bob opening the pair gets alice's chat"
    );
    let again = open_direct(&mut alice, "bob").await;
    assert_eq!(
        again.chat_id, a.chat_id,
        "opening twice returns the same chat"
    );

    let other = open_direct(&mut alice, "carol").await;
    assert_ne!(
        other.chat_id, a.chat_id,
        "a different pair is a different chat"
    );

    // A message in the chat is visible whichever side opened it.
    send_text(&mut bob, &b.chat_id, "m1", "hello").await;
    let again = open_direct(&mut alice, "bob").await;
    assert_eq!(again.chat_id, a.chat_id);
    assert_eq!(again.last_seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_direct_chat_with_self_is_invalid() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let r = alice
        .open_direct_chat(chat_tests::pb::OpenDirectChatRequest {
            peer_user_id: "alice".into(),
        })
        .await;
    assert_code(r, Code::InvalidArgument, "OpenDirectChat(self)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_group_makes_the_caller_admin() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let g = create_group(&mut alice, "Team", &["bob", "carol"]).await;
    assert!(is_chat_id(&g.chat_id), "chat_id {:?}", g.chat_id);
    assert_eq!(g.kind, ChatKind::Group as i32);
    assert_eq!(g.title, "Team");
    assert_eq!(member_ids(&g), set(&["alice", "bob", "carol"]));
    assert_eq!(role_of(&g, "alice"), MemberRole::Admin as i32);
    assert_eq!(role_of(&g, "bob"), MemberRole::Member as i32);
    assert_eq!(role_of(&g, "carol"), MemberRole::Member as i32);
    assert_eq!(g.last_seq, 0);

    // Members can read it; others cannot.
    let mut bob = server.client("bob", "phone").await;
    let seen = get_chat(&mut bob, &g.chat_id)
        .await
        .expect("member GetChat");
    assert_eq!(seen.chat_id, g.chat_id);
    assert_eq!(member_ids(&seen), set(&["alice", "bob", "carol"]));
    let mut dave = server.client("dave", "phone").await;
    assert_code(
        get_chat(&mut dave, &g.chat_id).await,
        Code::PermissionDenied,
        "non-member GetChat",
    );

    // A group with only the creator is a valid group too; two groups are two chats.
    let solo = create_group(&mut alice, "Notes", &[]).await;
    assert_eq!(member_ids(&solo), set(&["alice"]));
    assert_ne!(solo.chat_id, g.chat_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_size_limit_applies_to_create_and_add() {
    let server = TestServer::start_with(&[("CHATD_MAX_GROUP_SIZE", "3")]).await;
    let mut alice = server.client("alice", "phone").await;

    // 4 members including the creator > 3.
    assert_code(
        try_create_group(&mut alice, "too big", &["bob", "carol", "dave"]).await,
        Code::FailedPrecondition,
        "CreateGroup over max_group_size",
    );
    // Exactly at the limit is fine.
    let g = create_group(&mut alice, "full", &["bob", "carol"]).await;
    assert_eq!(g.members.len(), 3);

    assert_code(
        add_members(&mut alice, &g.chat_id, &["dave"]).await,
        Code::FailedPrecondition,
        "AddMembers to a full group",
    );
    let after = get_chat(&mut alice, &g.chat_id).await.unwrap();
    assert_eq!(
        member_ids(&after),
        set(&["alice", "bob", "carol"]),
        "failed add changed nothing"
    );

    // Make room, then the add works.
    remove_member(&mut alice, &g.chat_id, "carol")
        .await
        .expect("remove carol");
    let after = add_members(&mut alice, &g.chat_id, &["dave"])
        .await
        .expect("add dave after making room");
    assert_eq!(member_ids(&after), set(&["alice", "bob", "dave"]));

    // Adding several at once that would overflow adds none of them.
    let small = create_group(&mut alice, "small", &["bob"]).await;
    assert_code(
        add_members(&mut alice, &small.chat_id, &["carol", "dave"]).await,
        Code::FailedPrecondition,
        "AddMembers of 2 into a group of 2 with max 3",
    );
    let after = get_chat(&mut alice, &small.chat_id).await.unwrap();
    assert_eq!(
        member_ids(&after),
        set(&["alice", "bob"]),
        "a rejected AddMembers adds nobody"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_members_to_a_direct_chat_is_a_failed_precondition() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let d = open_direct(&mut alice, "bob").await;
    assert_code(
        add_members(&mut alice, &d.chat_id, &["carol"]).await,
        Code::FailedPrecondition,
        "AddMembers(direct)",
    );
    let after = get_chat(&mut alice, &d.chat_id).await.unwrap();
    assert_eq!(member_ids(&after), set(&["alice", "bob"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_add_members() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let mut eve = server.client("eve", "phone").await;
    let g = create_group(&mut alice, "g", &["bob"]).await;

    assert_code(
        add_members(&mut bob, &g.chat_id, &["carol"]).await,
        Code::PermissionDenied,
        "member adds",
    );
    assert_code(
        add_members(&mut eve, &g.chat_id, &["eve"]).await,
        Code::PermissionDenied,
        "non-member adds itself",
    );

    let after = add_members(&mut alice, &g.chat_id, &["carol", "dave"])
        .await
        .expect("admin adds");
    assert_eq!(member_ids(&after), set(&["alice", "bob", "carol", "dave"]));
    assert_eq!(role_of(&after, "carol"), MemberRole::Member as i32);
    assert_eq!(role_of(&after, "alice"), MemberRole::Admin as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_permissions() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let mut dave = server.client("dave", "phone").await;
    let g = create_group(&mut alice, "g", &["bob", "carol", "dave"]).await;

    assert_code(
        remove_member(&mut bob, &g.chat_id, "carol").await,
        Code::PermissionDenied,
        "member removes another member",
    );
    assert_code(
        remove_member(&mut dave, &g.chat_id, "alice").await,
        Code::PermissionDenied,
        "member removes the admin",
    );

    let after = remove_member(&mut bob, &g.chat_id, "bob")
        .await
        .expect("member leaves");
    assert_eq!(member_ids(&after), set(&["alice", "carol", "dave"]));

    let after = remove_member(&mut alice, &g.chat_id, "carol")
        .await
        .expect("admin removes a member");
    assert_eq!(member_ids(&after), set(&["alice", "dave"]));

    let seen = get_chat(&mut alice, &g.chat_id).await.unwrap();
    assert_eq!(member_ids(&seen), set(&["alice", "dave"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_emit_chat_events() {
    let server = TestServer::start().await;
    let mut bob_s = server.connect("bob", "phone").await;
    let mut carol_s = server.connect("carol", "phone").await;
    let mut alice = server.client("alice", "phone").await;

    let g = create_group(&mut alice, "g", &["bob"]).await;
    let ev = bob_s.expect_chat_event(ChatEventKind::Created).await;
    assert_eq!(
        ev.chat.as_ref().map(|c| c.chat_id.as_str()),
        Some(g.chat_id.as_str()),
        "CREATED names the chat"
    );

    add_members(&mut alice, &g.chat_id, &["carol"])
        .await
        .unwrap();
    for s in [&mut bob_s, &mut carol_s] {
        let ev = s.expect_chat_event(ChatEventKind::MemberAdded).await;
        let chat = ev.chat.as_ref().expect("ChatEvent.chat");
        assert_eq!(chat.chat_id, g.chat_id);
        assert_eq!(
            ev.user_ids,
            vec!["carol".to_string()],
            "MEMBER_ADDED lists the new member ({})",
            s.user
        );
        assert!(member_ids(chat).contains("carol"));
    }

    remove_member(&mut alice, &g.chat_id, "bob").await.unwrap();
    for s in [&mut carol_s, &mut bob_s] {
        let ev = s.expect_chat_event(ChatEventKind::MemberRemoved).await;
        assert_eq!(
            ev.chat.as_ref().map(|c| c.chat_id.as_str()),
            Some(g.chat_id.as_str())
        );
        assert_eq!(
            ev.user_ids,
            vec!["bob".to_string()],
            "MEMBER_REMOVED lists the removed user ({})",
            s.user
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_member_sees_only_messages_after_joining() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut carol = server.client("carol", "phone").await;
    let g = create_group(&mut alice, "g", &["bob"]).await;
    send_many(&mut alice, &g.chat_id, "before", 3).await;

    // carol's tablet is a known device (connected once, then offline) before she joins.
    server.connect("carol", "tablet").await.close();
    // carol's phone is online when she is added.
    let mut carol_phone = server.connect("carol", "phone").await;

    add_members(&mut alice, &g.chat_id, &["carol"])
        .await
        .unwrap();
    carol_phone
        .expect_chat_event(ChatEventKind::MemberAdded)
        .await;

    let h = history(&mut carol, &g.chat_id, 0, "")
        .await
        .expect("new member GetHistory");
    assert!(
        h.messages.is_empty(),
        "new member must not see older messages: {:?}",
        seqs(&h.messages)
    );
    assert!(h.next_page_token.is_empty());

    let after = send_many(&mut alice, &g.chat_id, "after", 2).await;
    assert_eq!(seqs(&after), vec![4, 5]);

    // Live.
    let live = carol_phone.expect_messages(2).await;
    assert_eq!(seqs(&live), vec![4, 5], "live messages after joining");
    carol_phone.expect_no_message(QUIET_PERIOD).await;
    // History.
    let full = full_history(&mut carol, &g.chat_id).await;
    assert_eq!(seqs(&full), vec![4, 5], "history after joining");
    // Replay to a device that was offline when she joined: from the join point only.
    let tablet = server.connect("carol", "tablet").await;
    assert_eq!(
        seqs(&tablet.backlog),
        vec![4, 5],
        "replay to carol's offline device"
    );
    assert_eq!(tablet.replayed, Some(2));
    // Unread counts what she can see.
    let chat = get_chat(&mut carol, &g.chat_id).await.unwrap();
    assert_eq!(chat.unread_count, 2, "unread for the new member: {chat:?}");
    assert_eq!(chat.last_message.as_ref().map(|m| m.seq), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_is_cut_off() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let g = create_group(&mut alice, "g", &["bob", "carol"]).await;
    let mut bob_s = server.connect("bob", "phone").await;
    let mut carol_s = server.connect("carol", "phone").await;

    send_text(&mut alice, &g.chat_id, "m1", "before removal").await;
    assert_eq!(bob_s.expect_message().await.seq, 1);
    assert_eq!(carol_s.expect_message().await.seq, 1);

    remove_member(&mut alice, &g.chat_id, "bob").await.unwrap();
    bob_s.expect_chat_event(ChatEventKind::MemberRemoved).await;

    send_text(&mut alice, &g.chat_id, "m2", "after removal").await;
    assert_eq!(
        carol_s.expect_message().await.seq,
        2,
        "remaining member still gets messages"
    );
    bob_s.expect_no_message(QUIET_PERIOD).await;

    assert_code(
        history(&mut bob, &g.chat_id, 0, "").await,
        Code::PermissionDenied,
        "removed GetHistory",
    );
    assert_code(
        get_chat(&mut bob, &g.chat_id).await,
        Code::PermissionDenied,
        "removed GetChat",
    );
    assert_code(
        send_unary(&mut bob, &g.chat_id, "b1", Some(text("let me in"))).await,
        Code::PermissionDenied,
        "removed SendMessage",
    );
    bob_s.send_text(&g.chat_id, "b2", "let me in").await;
    let err = bob_s.expect_send_error("b2").await;
    assert_eq!(
        err.code,
        Code::PermissionDenied as i32,
        "removed Send frame: {err:?}"
    );

    // Leaving by oneself has the same effect.
    remove_member(
        &mut server.client("carol", "phone").await,
        &g.chat_id,
        "carol",
    )
    .await
    .expect("carol leaves");
    let mut carol = server.client("carol", "phone").await;
    assert_code(
        history(&mut carol, &g.chat_id, 0, "").await,
        Code::PermissionDenied,
        "left GetHistory",
    );
    send_text(&mut alice, &g.chat_id, "m3", "after carol left").await;
    carol_s.expect_no_message(QUIET_PERIOD).await;

    // Nothing the removed users tried got stored.
    let h = full_history(&mut alice, &g.chat_id).await;
    assert_eq!(seqs(&h), vec![1, 2, 3]);
    assert!(h.iter().all(|m| m.sender_user_id == "alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_chats_orders_by_most_recent_activity() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let c1 = open_direct(&mut alice, "bob").await;
    next_millisecond().await;
    let c2 = open_direct(&mut alice, "carol").await;
    next_millisecond().await;
    let c3 = create_group(&mut alice, "g", &["bob"]).await;
    next_millisecond().await;

    let ids = |v: &[Chat]| v.iter().map(|c| c.chat_id.clone()).collect::<Vec<_>>();
    let page = list_chats(&mut alice, 0, "").await.unwrap();
    assert_eq!(
        ids(&page.chats),
        vec![c3.chat_id.clone(), c2.chat_id.clone(), c1.chat_id.clone()],
        "newest chat first"
    );

    send_text(&mut alice, &c1.chat_id, "m1", "bump c1").await;
    next_millisecond().await;
    let mut carol = server.client("carol", "phone").await;
    send_text(&mut carol, &c2.chat_id, "m1", "bump c2").await;

    let page = list_chats(&mut alice, 0, "").await.unwrap();
    assert_eq!(
        ids(&page.chats),
        vec![c2.chat_id.clone(), c1.chat_id.clone(), c3.chat_id.clone()],
        "most recent message first"
    );
    assert!(
        page.chats
            .windows(2)
            .all(|w| w[0].last_activity_at >= w[1].last_activity_at),
        "sorted by last_activity_at: {:?}",
        page.chats
            .iter()
            .map(|c| c.last_activity_at)
            .collect::<Vec<_>>()
    );
    assert!(page.next_page_token.is_empty());
    let c2_entry = &page.chats[0];
    assert_eq!(c2_entry.last_seq, 1);
    assert_eq!(c2_entry.last_message.as_ref().map(text_of), Some("bump c2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_chats_pagination() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut created = HashSet::new();
    for i in 0..5 {
        created.insert(open_direct(&mut alice, &format!("peer{i}")).await.chat_id);
    }
    let all = list_chats(&mut alice, 0, "").await.unwrap();
    assert_eq!(all.chats.len(), 5);
    assert!(all.next_page_token.is_empty());

    let p1 = list_chats(&mut alice, 2, "").await.unwrap();
    assert_eq!(p1.chats.len(), 2);
    assert!(!p1.next_page_token.is_empty(), "more pages follow");
    let p2 = list_chats(&mut alice, 2, &p1.next_page_token)
        .await
        .unwrap();
    assert_eq!(p2.chats.len(), 2);
    assert!(!p2.next_page_token.is_empty());
    let p3 = list_chats(&mut alice, 2, &p2.next_page_token)
        .await
        .unwrap();
    assert_eq!(p3.chats.len(), 1);
    assert!(p3.next_page_token.is_empty(), "last page has no token");

    let paged: Vec<String> = p1
        .chats
        .iter()
        .chain(&p2.chats)
        .chain(&p3.chats)
        .map(|c| c.chat_id.clone())
        .collect();
    let single: Vec<String> = all.chats.iter().map(|c| c.chat_id.clone()).collect();
    assert_eq!(
        paged, single,
        "pages concatenate to the same order as one big page"
    );
    assert_eq!(paged.iter().cloned().collect::<HashSet<_>>(), created);

    // Exact boundary: 5 chats in pages of 5 → one page, no token.
    let exact = list_chats(&mut alice, 5, "").await.unwrap();
    assert_eq!(exact.chats.len(), 5);
    assert!(
        exact.next_page_token.is_empty(),
        "nothing after an exactly full last page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_chats_default_and_max_page_size() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    for i in 0..201 {
        open_direct(&mut alice, &format!("peer{i:03}")).await;
    }
    let p = list_chats(&mut alice, 0, "").await.unwrap();
    assert_eq!(p.chats.len(), 50, "page_size 0 means 50");
    assert!(!p.next_page_token.is_empty());

    let p = list_chats(&mut alice, 200, "").await.unwrap();
    assert_eq!(p.chats.len(), 200);
    assert!(!p.next_page_token.is_empty());
    let rest = list_chats(&mut alice, 200, &p.next_page_token)
        .await
        .unwrap();
    assert_eq!(rest.chats.len(), 1);
    assert!(rest.next_page_token.is_empty());

    // Above the maximum: either capped at 200 or refused as INVALID_ARGUMENT.
    match list_chats(&mut alice, 1000, "").await {
        Ok(p) => assert!(
            p.chats.len() <= 200,
            "page_size is capped at 200, got {}",
            p.chats.len()
        ),
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{s:?}"),
    }

    let everything = list_all_chats(&mut alice, 37).await;
    let unique: HashSet<_> = everything.iter().map(|c| c.chat_id.clone()).collect();
    assert_eq!(
        everything.len(),
        201,
        "walking all pages yields every chat once"
    );
    assert_eq!(unique.len(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_chat_reports_last_message_and_unread_counts() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    send_many(&mut alice, &chat.chat_id, "a", 3).await; // seq 1..3
    send_many(&mut bob, &chat.chat_id, "b", 2).await; // seq 4..5

    let a = get_chat(&mut alice, &chat.chat_id).await.unwrap();
    assert_eq!(a.last_seq, 5);
    assert_eq!(member_ids(&a), set(&["alice", "bob"]));
    let last = a.last_message.as_ref().expect("last_message");
    assert_eq!(
        (last.seq, text_of(last), last.sender_user_id.as_str()),
        (5, "b-2", "bob")
    );
    assert_eq!(a.read_seq, 0);
    assert_eq!(
        a.unread_count, 2,
        "alice: bob's two messages are unread, her own are not"
    );

    let b = get_chat(&mut bob, &chat.chat_id).await.unwrap();
    assert_eq!(b.unread_count, 3, "bob: alice's three messages are unread");

    bob.mark_read(MarkReadRequest {
        chat_id: chat.chat_id.clone(),
        seq: 3,
    })
    .await
    .expect("MarkRead");
    let b = get_chat(&mut bob, &chat.chat_id).await.unwrap();
    assert_eq!(b.read_seq, 3);
    assert_eq!(b.unread_count, 0);
    // The count is per user: bob's other device sees the same.
    let mut bob_laptop = server.client("bob", "laptop").await;
    assert_eq!(
        get_chat(&mut bob_laptop, &chat.chat_id)
            .await
            .unwrap()
            .unread_count,
        0
    );

    alice
        .mark_read(MarkReadRequest {
            chat_id: chat.chat_id.clone(),
            seq: 4,
        })
        .await
        .expect("MarkRead");
    let a = get_chat(&mut alice, &chat.chat_id).await.unwrap();
    assert_eq!(a.read_seq, 4);
    assert_eq!(a.unread_count, 1);

    send_text(&mut bob, &chat.chat_id, "b-3", "one more").await;
    assert_eq!(
        get_chat(&mut alice, &chat.chat_id)
            .await
            .unwrap()
            .unread_count,
        2
    );
}
