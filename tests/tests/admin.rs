//! AdminService over gRPC: admin tokens only (`chatd token --admin`); GetStats with this node's
//! sessions, users and messages; ExportUserData as JSON lines of everything stored about a
//! user, in whole-line chunks; DeleteUserData (GDPR erasure): the user's sessions end, they
//! leave every chat (members hear of it), their messages keep their seqs without content, the
//! rest of their data is gone, and a second call erases nothing more.

use chat_tests::pb::{
    ChatEventKind, DeleteUserDataRequest, DeleteUserDataResponse, ExportUserDataRequest,
    GetStatsRequest, PushProvider, Stats,
};
use chat_tests::realtime::mark_read;
use chat_tests::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

async fn stats(admin: &mut AdminClient) -> Stats {
    admin
        .get_stats(GetStatsRequest {})
        .await
        .expect("GetStats")
        .into_inner()
}

/// The export's chunks, as received.
async fn export_chunks(admin: &mut AdminClient, user: &str) -> Result<Vec<Vec<u8>>, Status> {
    let mut stream = admin
        .export_user_data(ExportUserDataRequest {
            user_id: user.to_string(),
        })
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await? {
        chunks.push(chunk.data);
    }
    Ok(chunks)
}

/// The export's lines, parsed; each chunk must end with a whole line.
async fn export(admin: &mut AdminClient, user: &str) -> Vec<Value> {
    let chunks = export_chunks(admin, user).await.expect("ExportUserData");
    let mut lines = Vec::new();
    for chunk in &chunks {
        assert_eq!(chunk.last(), Some(&b'\n'), "a chunk ends with a whole line");
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines.push(serde_json::from_slice(line).expect("each line is JSON"));
        }
    }
    lines
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

async fn delete(admin: &mut AdminClient, user: &str) -> Result<DeleteUserDataResponse, Status> {
    admin
        .delete_user_data(DeleteUserDataRequest {
            user_id: user.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_tokens_may_call_and_bad_user_ids_are_named() {
    let server = TestServer::start().await;
    let token = server.token("mallory", "phone").await;
    let mut user = server.admin_client_with_auth(Auth::bearer(&token, "phone"));
    let denied = |r: Result<(), Status>, what: &str| {
        let s = r.expect_err(what);
        assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
        assert!(s.message().contains("admin"), "{what}: {}", s.message());
    };
    denied(
        user.get_stats(GetStatsRequest {}).await.map(|_| ()),
        "GetStats",
    );
    denied(
        export_chunks(&mut user, "alice").await.map(|_| ()),
        "ExportUserData",
    );
    denied(
        delete(&mut user, "alice").await.map(|_| ()),
        "DeleteUserData",
    );
    let mut nobody = server.admin_client_with_auth(Auth::none());
    let s = nobody.get_stats(GetStatsRequest {}).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    let mut admin = server.admin_client("ops").await;
    for bad in ["", &"u".repeat(300), "a\u{7}b"] {
        let s = delete(&mut admin, bad).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s:?}");
        assert!(s.message().contains("user_id"), "{}", s.message());
        let s = export_chunks(&mut admin, bad).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s:?}");
    }
    // A user the server never saw: only the header, and nothing to erase.
    let lines = export(&mut admin, "ghost").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "export");
    assert_eq!(lines[0]["user_id"], "ghost");
    let r = delete(&mut admin, "ghost").await.expect("erasing nobody");
    assert_eq!((r.messages_deleted, r.chats_left), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_this_nodes_sessions_users_and_messages() {
    let server = TestServer::start().await;
    let mut admin = server.admin_client("ops").await;
    let before = stats(&mut admin).await;
    assert!(!before.node_id.is_empty());
    assert_eq!((before.sessions, before.users_online), (0, 0));
    assert_eq!(before.messages_total, 0);

    let _a1 = server.connect("alice", "phone").await;
    let _a2 = server.connect("alice", "laptop").await;
    let _b = server.connect("bob", "phone").await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    send_many(&mut alice, &chat.chat_id, "m", 5).await;
    // A repeated send is not a new message.
    send_unary(&mut alice, &chat.chat_id, "m-1", Some(text("m-1")))
        .await
        .expect("repeat");

    let s = stats(&mut admin).await;
    assert_eq!(s.node_id, before.node_id);
    assert_eq!((s.sessions, s.users_online), (3, 2), "{s:?}");
    assert_eq!(s.messages_total, 5, "{s:?}");
    // The rate is sampled once a second: it shows within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = stats(&mut admin).await;
        if s.messages_per_second > 0.0 {
            // Five messages, counted over at least a second.
            assert!(s.messages_per_second < 6.0, "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "messages_per_second stayed 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_everything_stored_about_the_user_in_whole_line_chunks() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut alice_laptop = server.client("alice", "laptop").await;
    let mut bob = server.client("bob", "phone").await;
    let group = create_group(&mut alice, "Team", &["bob"]).await;
    let direct = open_direct(&mut alice, "bob").await;
    // About 200 KiB of alice's messages: the export comes in several chunks.
    let big = "x".repeat(15_000);
    for i in 0..14 {
        send_text(&mut alice, &group.chat_id, &format!("big-{i:02}"), &big).await;
    }
    send_text(&mut alice_laptop, &direct.chat_id, "hello", "hello bob").await;
    send_text(&mut bob, &direct.chat_id, "bob-1", "bob's own").await;
    mark_read(&mut alice, &direct.chat_id, 2)
        .await
        .expect("read");
    push::register(&mut alice, PushProvider::Fcm, "alice-fcm:token").await;
    // A device is recorded when it connects (or registers a push token).
    let _laptop = server.connect("alice", "laptop").await;

    let mut admin = server.admin_client("ops").await;
    let chunks = export_chunks(&mut admin, "alice").await.expect("export");
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let lines = export(&mut admin, "alice").await;
    assert_eq!(lines[0]["type"], "export");
    assert_eq!(lines[0]["user_id"], "alice");
    let devices: Vec<&str> = of_type(&lines, "device")
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["laptop", "phone"]);
    let memberships = of_type(&lines, "membership");
    assert_eq!(memberships.len(), 2);
    assert!(memberships
        .iter()
        .any(|m| m["chat_id"] == group.chat_id.as_str() && m["title"] == "Team"));
    let read = of_type(&lines, "cursor")
        .into_iter()
        .find(|c| c["chat_id"] == direct.chat_id.as_str() && c["device_id"] == "phone")
        .expect("the phone's position in the direct chat");
    assert_eq!(read["read_seq"], 2);
    let tokens = of_type(&lines, "push_token");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["token"], "alice-fcm:token");
    let messages = of_type(&lines, "message");
    assert_eq!(messages.len(), 15, "alice's messages only");
    let hello = messages
        .iter()
        .find(|m| m["client_msg_id"] == "hello")
        .unwrap();
    assert_eq!(hello["text"], "hello bob");
    assert_eq!(hello["device_id"], "laptop");
    assert_eq!(hello["chat_id"], direct.chat_id.as_str());
    assert!(messages
        .iter()
        .filter(|m| m["chat_id"] == group.chat_id.as_str())
        .all(|m| m["text"].as_str().map(str::len) == Some(15_000)));
    assert!(!lines.iter().any(|l| l["text"] == "bob's own"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_ends_sessions_leaves_chats_and_keeps_every_chat_gap_free() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let group = create_group(&mut alice, "Team", &["bob", "carol"]).await;
    let direct = open_direct(&mut alice, "bob").await;
    send_text(&mut alice, &group.chat_id, "a1", "secret one").await;
    send_text(&mut bob, &group.chat_id, "b1", "bob speaks").await;
    send_text(&mut alice, &group.chat_id, "a2", "secret two").await;
    send_text(&mut alice, &direct.chat_id, "a3", "secret three").await;
    mark_read(&mut alice, &group.chat_id, 3)
        .await
        .expect("read");
    push::register(&mut alice, PushProvider::Fcm, "alice-fcm:token").await;

    let mut alice_live = server.connect("alice", "phone").await;
    let mut bob_live = server.connect("bob", "phone").await;

    let mut admin = server.admin_client("ops").await;
    let r = delete(&mut admin, "alice").await.expect("DeleteUserData");
    assert_eq!((r.messages_deleted, r.chats_left), (3, 2), "{r:?}");

    // Alice's session ends, saying why.
    let end = alice_live.expect_end().await;
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    // Bob hears of her leaving both chats.
    for _ in 0..2 {
        let e = bob_live
            .expect_chat_event(ChatEventKind::MemberRemoved)
            .await;
        assert_eq!(e.user_ids, ["alice"]);
    }

    // Every seq stays; hers lost their content; bob's is untouched.
    let h = full_history(&mut bob, &group.chat_id).await;
    let seqs: Vec<u64> = h.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    for m in &h {
        let content = m.content.clone().unwrap_or_default();
        if m.sender_user_id == "alice" {
            assert!(
                content.text.is_empty() && content.ciphertext.is_empty(),
                "{m:?}"
            );
            assert!(
                m.sender_device_id.is_empty() && m.client_msg_id.is_empty(),
                "{m:?}"
            );
        } else {
            assert_eq!(content.text, "bob speaks");
        }
    }
    let h = full_history(&mut bob, &direct.chat_id).await;
    assert_eq!(h.len(), 1);
    assert!(h[0].content.clone().unwrap_or_default().text.is_empty());
    // The group keeps an admin: bob, its longest-standing member left.
    let g = get_chat(&mut bob, &group.chat_id).await.expect("GetChat");
    let members: Vec<(&str, i32)> = g
        .members
        .iter()
        .map(|m| (m.user_id.as_str(), m.role))
        .collect();
    assert_eq!(members.len(), 2);
    assert!(!members.iter().any(|(u, _)| *u == "alice"));
    assert!(g
        .members
        .iter()
        .any(|m| m.user_id == "bob" && m.role == chat_tests::pb::MemberRole::Admin as i32));

    // What is left of her: her erased messages' places, nothing else.
    let lines = export(&mut admin, "alice").await;
    for kind in ["device", "last_seen", "membership", "cursor", "push_token"] {
        assert!(of_type(&lines, kind).is_empty(), "{kind} left: {lines:?}");
    }
    let messages = of_type(&lines, "message");
    assert_eq!(messages.len(), 3);
    assert!(messages
        .iter()
        .all(|m| m["erased"] == true && m.get("text").is_none()));

    // Idempotent.
    let again = delete(&mut admin, "alice").await.expect("again");
    assert_eq!((again.messages_deleted, again.chats_left), (0, 0));
    // A later direct chat of the two is a new one.
    let fresh = open_direct(&mut bob, "alice").await;
    assert_ne!(fresh.chat_id, direct.chat_id);

    // Audited: who erased whom, with what outcome; the refused call too.
    let token = server.token("mallory", "phone").await;
    let mut mallory = server.admin_client_with_auth(Auth::bearer(&token, "phone"));
    delete(&mut mallory, "bob").await.unwrap_err();
    let log = server.stderr();
    let audited = |action: &str, who: &str, outcome: &str| {
        log.lines().any(|l| {
            l.contains("audit") && l.contains(action) && l.contains(who) && l.contains(outcome)
        })
    };
    assert!(audited("DeleteUserData", "ops", "ok"), "{log}");
    assert!(audited("DeleteUserData", "mallory", "refused"), "{log}");
    assert!(audited("ExportUserData", "ops", "ok"), "{log}");
}
