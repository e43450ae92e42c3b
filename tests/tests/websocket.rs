//! The WebSocket door (`GET /ws`, JSON frames, docs/websocket.md) through the scenarios of the
//! `Connect` suites: send and receive on every device of every member (WebSocket and gRPC
//! sessions side by side), sendAck with seq, idempotent retries, resume with stored cursors and
//! with `positions`, the rate limit, typing, receipts, presence and chat events, every kind of
//! bad frame (each answered by an `error` frame naming the problem; the socket stays usable
//! where the docs say so), bad tokens, heartbeats (JSON and WebSocket pings), and shutdown.

use chat_tests::auth::{mint_token_at, now_secs};
use chat_tests::http::http_get;
use chat_tests::pb::ReceiptKind;
use chat_tests::realtime::{next_receipt, now_ms, send_read};
use chat_tests::websocket::*;
use chat_tests::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Close codes (docs/websocket.md): 4000 + the gRPC code, and the WebSocket ones.
const CLOSE_INVALID_ARGUMENT: u16 = 4003;
const CLOSE_UNAVAILABLE: u16 = 4014;
const CLOSE_UNAUTHENTICATED: u16 = 4016;
const CLOSE_TOO_BIG: u16 = 1009;

/// A short heartbeat: ping every 200 ms, dropped after 1.5 s of silence.
const SHORT_HEARTBEAT: &[(&str, &str)] = &[
    ("CHATD_HEARTBEAT_INTERVAL_MS", "200"),
    ("CHATD_HEARTBEAT_TIMEOUT_MS", "1500"),
];

#[track_caller]
fn assert_error(f: &Value, code: &str, field: Option<&str>, ctx: &str) {
    assert_eq!(kind(f), "error", "{ctx}: {f}");
    assert_eq!(s(f, "code"), code, "{ctx}: {f}");
    if let Some(field) = field {
        assert_eq!(s(f, "field"), field, "{ctx}: the field named: {f}");
        assert!(
            s(f, "message").contains(field),
            "{ctx}: the message should name {field:?}: {f}"
        );
    }
    assert!(!s(f, "message").is_empty(), "{ctx}: a message: {f}");
}

/// The socket ends with exactly one `error` frame (of `code`) and a close frame with
/// `close_code`; returns the error frame.
#[track_caller]
fn assert_closed_with(
    (frames, code, reason): (Vec<Value>, u16, String),
    error_code: &str,
    close_code: u16,
    ctx: &str,
) -> Value {
    let errors: Vec<&Value> = frames.iter().filter(|f| kind(f) == "error").collect();
    assert_eq!(
        errors.len(),
        1,
        "{ctx}: one error frame before the close: {frames:?}"
    );
    assert_eq!(s(errors[0], "code"), error_code, "{ctx}: {frames:?}");
    assert_eq!(code, close_code, "{ctx}: close code (reason {reason:?})");
    assert!(
        reason.starts_with(error_code),
        "{ctx}: the close reason names the code: {reason:?}"
    );
    errors[0].clone()
}

#[track_caller]
fn assert_message(f: &Value, chat_id: &str, seq: u64, sender: (&str, &str), text: &str) {
    assert!(matches!(kind(f), "message" | "sendAck"), "{f}");
    assert_eq!(
        (
            s(f, "chatId"),
            n(f, "seq"),
            s(f, "senderId"),
            s(f, "senderDeviceId"),
            s(f, "content")
        ),
        (chat_id, seq, sender.0, sender.1, text),
        "{f}"
    );
    assert!(is_chat_id(s(f, "messageId")), "messageId: {f}");
    assert!(n(f, "createdAt") > 0, "createdAt: {f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_device_of_every_member() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();

    // The connect frame claims to be mallory: the token (alice) decides.
    let mut a_phone = ws_open(&server, "alice", "phone").await;
    let token = server.token("alice", "phone").await;
    a_phone
        .send_json(
            json!({"type": "connect", "token": token, "deviceId": "phone", "userId": "mallory"}),
        )
        .await;
    a_phone.sync().await;
    let welcome = a_phone.welcome.clone().unwrap();
    assert_eq!(
        (s(&welcome, "userId"), s(&welcome, "deviceId")),
        ("alice", "phone"),
        "{welcome}"
    );
    for field in ["sessionId", "nodeId"] {
        assert!(!s(&welcome, field).is_empty(), "{field}: {welcome}");
    }
    for field in ["serverTime", "heartbeatIntervalMs", "heartbeatTimeoutMs"] {
        assert!(n(&welcome, field) > 0, "{field}: {welcome}");
    }
    assert_eq!(a_phone.replayed, Some(0));

    let mut a_laptop = ws_connect(&server, "alice", "laptop").await;
    let mut b_web = ws_connect(&server, "bob", "web").await;
    let mut b_grpc = server.connect("bob", "phone").await;

    // The brief's shape, with a forged senderId that is ignored.
    a_phone
        .send_json(json!({
            "type": "message", "clientMsgId": "m1", "chatId": id,
            "senderId": "mallory", "content": "hello"
        }))
        .await;
    let ack = a_phone.expect_send_result("m1").await;
    assert_eq!(kind(&ack), "sendAck", "{ack}");
    assert_eq!(ack["duplicate"], json!(false), "{ack}");
    assert_eq!(s(&ack, "clientMsgId"), "m1", "{ack}");
    assert_message(&ack, id, 1, ("alice", "phone"), "hello");

    for ws in [&mut a_laptop, &mut b_web] {
        let m = ws.expect_message().await;
        assert_message(&m, id, 1, ("alice", "phone"), "hello");
        assert_eq!(s(&m, "messageId"), s(&ack, "messageId"), "{m}");
        assert_eq!(s(&m, "clientMsgId"), "m1", "{m}");
    }
    let m = b_grpc.expect_message().await;
    assert_eq!(
        (m.seq, m.sender_user_id.as_str(), text_of(&m)),
        (1, "alice", "hello")
    );
    // The sender's own socket gets the sendAck, not a copy of the message.
    a_phone.expect_no_message(QUIET_PERIOD).await;

    // And back: bob on gRPC, alice's two sockets receive; then bob on the WebSocket.
    b_grpc.send_and_ack(id, "b1", "hi alice").await;
    for ws in [&mut a_phone, &mut a_laptop, &mut b_web] {
        assert_message(
            &ws.expect_message().await,
            id,
            2,
            ("bob", "phone"),
            "hi alice",
        );
    }
    let ack = b_web.send_and_ack(id, "b2", "from the web").await;
    assert_eq!(n(&ack, "seq"), 3, "{ack}");
    for ws in [&mut a_phone, &mut a_laptop] {
        assert_message(
            &ws.expect_message().await,
            id,
            3,
            ("bob", "web"),
            "from the web",
        );
    }
    assert_eq!(b_grpc.expect_message().await.seq, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_shapes_round_trip() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let mut alice = ws_connect(&server, "alice", "phone").await;
    let mut bob = ws_connect(&server, "bob", "phone").await;

    // `content` as an object with a ciphertext (base64) and attributes.
    alice
        .send_json(json!({
            "type": "message", "clientMsgId": "c1", "chatId": id,
            "content": {"ciphertext": "AAECAwT/", "attributes": {"alg": "x25519"}}
        }))
        .await;
    // The same fields flat on the frame, as text.
    alice
        .send_json(json!({
            "type": "message", "clientMsgId": "c2", "chatId": id,
            "text": "flat", "attributes": {"mention": "bob"}
        }))
        .await;
    for (seq, key) in [(1, "c1"), (2, "c2")] {
        let ack = alice.expect_send_result(key).await;
        assert_eq!((kind(&ack), n(&ack, "seq")), ("sendAck", seq), "{ack}");
    }
    let m = bob.expect_message().await;
    assert_eq!(
        (s(&m, "content"), s(&m, "ciphertext"), &m["attributes"]),
        ("", "AAECAwT/", &json!({"alg": "x25519"})),
        "{m}"
    );
    let m = bob.expect_message().await;
    assert_eq!(
        (s(&m, "content"), m.get("ciphertext"), &m["attributes"]),
        ("flat", None, &json!({"mention": "bob"})),
        "{m}"
    );
    // Stored as sent: the gRPC view agrees.
    let h = full_history(&mut server.client("bob", "phone").await, id).await;
    let c = h[0].content.clone().unwrap();
    assert_eq!(c.ciphertext, vec![0, 1, 2, 3, 4, 255]);
    assert_eq!(c.attributes.get("alg").map(String::as_str), Some("x25519"));
    assert_eq!(text_of(&h[1]), "flat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_client_msg_id_returns_the_original() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let mut alice = ws_connect(&server, "alice", "phone").await;
    let mut bob = ws_connect(&server, "bob", "phone").await;

    let first = alice.send_and_ack(id, "once", "only once").await;
    // A retry after a lost ack, even with other content, returns the original.
    alice.send_message(id, "once", "changed my mind").await;
    let again = alice.expect_send_result("once").await;
    assert_eq!(kind(&again), "sendAck", "{again}");
    assert_eq!(again["duplicate"], json!(true), "{again}");
    for field in ["messageId", "content"] {
        assert_eq!(again[field], first[field], "{field}: {again}");
    }
    assert_eq!(n(&again, "seq"), 1);

    assert_message(
        &bob.expect_message().await,
        id,
        1,
        ("alice", "phone"),
        "only once",
    );
    bob.expect_no_message(QUIET_PERIOD).await;
    let h = full_history(&mut server.client("bob", "phone").await, id).await;
    assert_eq!(h.len(), 1, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_the_missed_messages() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let id = chat.chat_id.as_str();

    let mut bob = ws_connect(&server, "bob", "web").await;
    send_many(&mut alice, id, "online", 3).await;
    assert_eq!(ws_seqs(&bob.expect_messages(3).await), vec![1, 2, 3]);
    bob.ack_synced(id, 3).await;
    bob.close().await;

    let missed = send_many(&mut alice, id, "offline", 5).await;
    assert_eq!(seqs(&missed), vec![4, 5, 6, 7, 8]);

    // Strictly: welcome, the five missed messages in order, syncComplete{5}, then live.
    let mut bob = ws_open(&server, "bob", "web").await;
    let token = server.token("bob", "web").await;
    bob.send_connect(&token, HashMap::new()).await;
    assert_eq!(kind(&bob.recv_core().await), "welcome");
    for want in &missed {
        let f = bob.recv_core().await;
        assert_message(&f, id, want.seq, ("alice", "phone"), text_of(want));
        assert_eq!(s(&f, "messageId"), want.message_id, "{f}");
    }
    let done = bob.recv_core().await;
    assert_eq!(
        (kind(&done), n(&done, "replayed")),
        ("syncComplete", 5),
        "{done}"
    );
    send_text(&mut alice, id, "live", "live").await;
    assert_eq!(n(&bob.expect_message().await, "seq"), 9);
    bob.expect_no_message(QUIET_PERIOD).await;
    bob.close().await;

    // Not acked since: a plain reconnect replays 4..=9; positions override the stored cursor.
    let again = ws_connect(&server, "bob", "web").await;
    assert_eq!(ws_seqs(&again.backlog), (4..=9).collect::<Vec<_>>());
    assert_eq!(again.replayed, Some(6));
    again.close().await;
    let positions = HashMap::from([(id.to_string(), 7)]);
    let mut at7 = ws_connect_with(&server, "bob", "web", positions).await;
    assert_eq!(ws_seqs(&at7.backlog), vec![8, 9]);
    assert_eq!(at7.replayed, Some(2));
    at7.expect_no_message(QUIET_PERIOD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_rate_limited_with_retry_after() {
    let server = TestServer::start_with(&[
        ("CHATD_RATE_LIMIT_PER_SEC", "2"),
        ("CHATD_RATE_LIMIT_BURST", "3"),
    ])
    .await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let mut alice = ws_connect(&server, "alice", "web").await;

    for i in 0..12 {
        alice.send_message(id, &format!("b{i}"), "burst").await;
    }
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..12 {
        let r = alice.expect_send_result(&format!("b{i}")).await;
        match kind(&r) {
            "sendAck" => accepted.push(n(&r, "seq")),
            _ => refused.push(r),
        }
    }
    assert!(accepted.len() >= 3, "the burst of 3 passes: {accepted:?}");
    assert!(
        !refused.is_empty(),
        "12 at once with burst 3 must hit the limit"
    );
    for e in &refused {
        assert_eq!(kind(e), "sendError", "{e}");
        assert_eq!(s(e, "code"), "RESOURCE_EXHAUSTED", "{e}");
        let wait = n(e, "retryAfterMs");
        assert!(wait > 0 && wait <= 60_000, "retryAfterMs: {e}");
        assert!(s(e, "message").contains("rate limit"), "{e}");
    }
    assert_eq!(accepted, (1..=accepted.len() as u64).collect::<Vec<_>>());

    // The socket is still usable; after the wait it was told, a send passes.
    alice.ping().await;
    let wait = refused
        .iter()
        .map(|e| n(e, "retryAfterMs"))
        .max()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait + 100)).await;
    let ack = alice.send_and_ack(id, "after-wait", "ok now").await;
    assert_eq!(n(&ack, "seq"), accepted.len() as u64 + 1);
    let h = full_history(&mut server.client("bob", "phone").await, id).await;
    assert_eq!(h.len(), accepted.len() + 1, "refused sends are not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_reach_the_other_member() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let mut alice = ws_connect(&server, "alice", "web").await;
    let mut bob = ws_connect(&server, "bob", "web").await;
    let mut bob_grpc = server.connect("bob", "phone").await;

    // The brief's typing frame (no state): typing now.
    let t0 = now_ms();
    alice
        .send_json(json!({"type": "typing", "chatId": id, "senderId": "mallory"}))
        .await;
    let t = bob.expect("typing").await;
    assert_eq!(
        (
            s(&t, "chatId"),
            s(&t, "senderId"),
            s(&t, "senderDeviceId"),
            &t["started"]
        ),
        (id, "alice", "web", &json!(true)),
        "{t}"
    );
    assert!(
        n(&t, "expiresAt") as i64 >= t0 + 5000,
        "expiresAt about now + 6 s: {t}"
    );
    alice
        .send_json(json!({"type": "typing", "chatId": id, "started": false}))
        .await;
    let t = bob.expect("typing").await;
    assert_eq!(t["started"], json!(false), "{t}");

    let ack = alice.send_and_ack(id, "m1", "read me").await;
    let seq = n(&ack, "seq");
    assert_message(
        &bob.expect_message().await,
        id,
        seq,
        ("alice", "web"),
        "read me",
    );
    bob_grpc.expect_message().await;

    // bob's web socket acks and reads; alice hears both, by kind, with bob's device.
    let t1 = now_ms();
    bob.send_json(json!({"type": "ack", "chatId": id, "seq": seq}))
        .await;
    bob.send_json(json!({"type": "read", "chatId": id, "seq": seq}))
        .await;
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let r = alice.expect("receipt").await;
        assert_eq!(
            (
                s(&r, "chatId"),
                s(&r, "userId"),
                s(&r, "deviceId"),
                n(&r, "seq")
            ),
            (id, "bob", "web", seq),
            "{r}"
        );
        assert!(n(&r, "at") as i64 >= t1 - 1000, "{r}");
        kinds.push(s(&r, "kind").to_string());
    }
    kinds.sort();
    assert_eq!(kinds, ["delivered", "read"]);

    // A read on gRPC reaches the WebSocket the same way, and vice versa.
    send_read(&bob_grpc, id, seq).await;
    let r = alice
        .recv_until("bob/phone's read receipt", |f| {
            kind(f) == "receipt" && s(f, "deviceId") == "phone" && s(f, "kind") == "read"
        })
        .await;
    assert_eq!((s(&r, "userId"), n(&r, "seq")), ("bob", seq), "{r}");
    alice
        .send_json(json!({"type": "read", "chatId": id, "seq": seq}))
        .await;
    // (bob's phone also hears bob's web socket's read, a reader's other devices do; and a read
    // is a delivery too.)
    let r = loop {
        let r = next_receipt(&mut bob_grpc).await;
        if r.user_id == "alice" && r.kind() == ReceiptKind::Read {
            break r;
        }
    };
    assert_eq!((r.device_id.as_str(), r.seq), ("web", seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_chat_events_arrive_as_frames() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    open_direct(&mut alice_c, "bob").await;
    let mut alice = ws_connect(&server, "alice", "web").await;
    alice
        .send_json(json!({"type": "watchPresence", "userIds": ["bob"]}))
        .await;
    let p = alice.expect("presence").await;
    assert_eq!(
        (s(&p, "userId"), s(&p, "status")),
        ("bob", "offline"),
        "{p}"
    );

    let bob = ws_connect(&server, "bob", "web").await;
    let p = alice
        .recv_until("bob online", |f| {
            kind(f) == "presence" && s(f, "status") == "online"
        })
        .await;
    assert_eq!((s(&p, "userId"), n(&p, "devicesOnline")), ("bob", 1), "{p}");
    assert_eq!(p["lastSeen"], Value::Null, "no last seen while online: {p}");
    let left = now_ms();
    bob.close().await;
    let p = alice
        .recv_until("bob offline", |f| {
            kind(f) == "presence" && s(f, "status") == "offline"
        })
        .await;
    assert!(
        n(&p, "lastSeen") as i64 >= left - 1000,
        "lastSeen when bob left: {p}"
    );

    // A group that includes alice: a chat frame with the chat in it.
    let group = create_group(
        &mut server.client("carol", "phone").await,
        "plans",
        &["alice"],
    )
    .await;
    // (The direct chat's own `created` may come first: chat events are asynchronous.)
    let c = alice
        .recv_until("the group's chat frame", |f| {
            kind(f) == "chat" && s(&f["chat"], "chatId") == group.chat_id
        })
        .await;
    assert_eq!(s(&c, "kind"), "created", "{c}");
    assert_eq!(
        (
            s(&c["chat"], "chatId"),
            s(&c["chat"], "kind"),
            s(&c["chat"], "title")
        ),
        (group.chat_id.as_str(), "group", "plans"),
        "{c}"
    );
    let roles: Vec<(&str, &str)> = c["chat"]["members"]
        .as_array()
        .map(|ms| ms.iter().map(|m| (s(m, "userId"), s(m, "role"))).collect())
        .unwrap_or_default();
    assert!(
        roles.contains(&("carol", "admin")) && roles.contains(&("alice", "member")),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_socket_stays_usable() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.clone();
    let mut ws = ws_connect(&server, "alice", "web").await;

    // (what is sent, the frame type the error names, the field it names)
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("{not json".into(), None, "frame"),
        ("[1, 2]".into(), None, "frame"),
        ("\"message\"".into(), None, "frame"),
        (json!({"chatId": id}).to_string(), None, "type"),
        (json!({"type": 7}).to_string(), None, "type"),
        (json!({"type": "launchRockets"}).to_string(), None, "type"),
        (json!({"type": "read", "chatId": id}).to_string(), Some("read"), "seq"),
        (json!({"type": "ack", "chatId": id, "seq": -1}).to_string(), Some("ack"), "seq"),
        (json!({"type": "ack", "chatId": id, "seq": 1.5}).to_string(), Some("ack"), "seq"),
        (json!({"type": "read", "chatId": 5, "seq": 1}).to_string(), Some("read"), "chatId"),
        (json!({"type": "typing"}).to_string(), Some("typing"), "chatId"),
        (json!({"type": "typing", "chatId": id, "started": "yes"}).to_string(), Some("typing"), "started"),
        (json!({"type": "ping", "nonce": "one"}).to_string(), Some("ping"), "nonce"),
        (json!({"type": "watchPresence"}).to_string(), Some("watchPresence"), "userIds"),
        (json!({"type": "watchPresence", "userIds": "bob"}).to_string(), Some("watchPresence"), "userIds"),
        (json!({"type": "message", "chatId": id, "content": "x"}).to_string(), Some("message"), "clientMsgId"),
        (json!({"type": "message", "clientMsgId": "k1", "content": "x"}).to_string(), Some("message"), "chatId"),
        (json!({"type": "message", "clientMsgId": "k2", "chatId": id, "content": 5}).to_string(), Some("message"), "content"),
        (json!({"type": "message", "clientMsgId": "k3", "chatId": id, "content": "x", "text": "y"}).to_string(), Some("message"), "content"),
        (json!({"type": "message", "clientMsgId": "k4", "chatId": id, "ciphertext": "not base64!"}).to_string(), Some("message"), "ciphertext"),
        (json!({"type": "message", "clientMsgId": "k5", "chatId": id, "text": "x", "attributes": {"a": 1}}).to_string(), Some("message"), "attributes"),
    ];
    for (text, frame, field) in &cases {
        ws.send_text(text).await;
        let e = ws.expect_error().await;
        assert_error(&e, "INVALID_ARGUMENT", Some(field), text);
        assert_eq!(
            e.get("frame").and_then(Value::as_str),
            *frame,
            "{text}: {e}"
        );
    }
    // A refused message frame carries its key, so the client can fail that send.
    ws.send_json(json!({"type": "message", "clientMsgId": "k9", "chatId": 5, "content": "x"}))
        .await;
    let e = ws.expect_error().await;
    assert_eq!(
        (s(&e, "clientMsgId"), s(&e, "field")),
        ("k9", "chatId"),
        "{e}"
    );

    // A binary frame.
    assert!(
        ws.try_send_message(WsMessage::binary(vec![1u8, 2, 3]))
            .await
    );
    let e = ws.expect_error().await;
    assert_error(&e, "INVALID_ARGUMENT", Some("frame"), "binary frame");
    assert!(s(&e, "message").contains("binary"), "{e}");

    // Refusals by the session come as frames too, with the proto's rules and camelCase fields.
    ws.send_message("not-a-chat", "k6", "x").await;
    let e = ws.expect_send_result("k6").await;
    assert_eq!(
        (kind(&e), s(&e, "code"), s(&e, "field")),
        ("sendError", "INVALID_ARGUMENT", "chatId"),
        "{e}"
    );
    ws.send_message(&unknown_chat_id(), "k7", "x").await;
    let e = ws.expect_send_result("k7").await;
    assert_eq!(kind(&e), "sendError", "{e}");
    assert!(
        matches!(s(&e, "code"), "NOT_FOUND" | "PERMISSION_DENIED"),
        "{e}"
    );
    ws.send_json(json!({"type": "message", "clientMsgId": "k8", "chatId": id}))
        .await;
    let e = ws.expect_send_result("k8").await;
    assert_eq!(
        (s(&e, "code"), s(&e, "field")),
        ("INVALID_ARGUMENT", "content"),
        "{e}"
    );
    ws.send_json(json!({"type": "read", "chatId": "nope", "seq": 1}))
        .await;
    let e = ws.expect_error().await;
    assert_eq!(
        (s(&e, "frame"), s(&e, "field"), s(&e, "chatId")),
        ("read", "chatId", "nope"),
        "{e}"
    );

    // Still the same session: pings answer, sends pass, nothing refused was stored.
    ws.ping().await;
    let ack = ws.send_and_ack(&id, "good", "still here").await;
    assert_eq!(n(&ack, "seq"), 1);
    let h = full_history(&mut server.client("bob", "phone").await, &id).await;
    assert_eq!(h.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_is_refused_then_closed_with_1009() {
    let server = TestServer::start_with(&[("CHATD_MAX_MESSAGE_BYTES", "1024")]).await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    // max_frame_bytes = 4 × 1024 + 64 KiB.
    let limit = 4 * 1024 + 64 * 1024;

    // Over max_message_bytes but within the frame limit: a sendError, the socket stays.
    let mut ws = ws_connect(&server, "alice", "web").await;
    ws.send_message(id, "big", &"x".repeat(2000)).await;
    let e = ws.expect_send_result("big").await;
    assert_eq!((kind(&e), s(&e, "field")), ("sendError", "content"), "{e}");
    ws.ping().await;

    // Over the frame limit: an error frame saying so, then close 1009.
    ws.send_message(id, "huge", &"x".repeat(limit + 10)).await;
    let e = assert_closed_with(
        ws.expect_close().await,
        "RESOURCE_EXHAUSTED",
        CLOSE_TOO_BIG,
        "oversize",
    );
    assert!(
        s(&e, "message").contains(&limit.to_string()),
        "names the limit: {e}"
    );

    // Far over it (more than twice): the WebSocket layer stops reading at once; the client
    // still hears why when it reads in time (best effort: the rest of its frame is unread).
    let mut ws = ws_connect(&server, "alice", "web").await;
    ws.send_message(id, "huger", &"x".repeat(3 * limit)).await;
    let mut seen = Vec::new();
    loop {
        match ws.next_event(RECV_TIMEOUT).await {
            Some(WsEvent::Frame(f)) => seen.push(f),
            Some(WsEvent::Close(c)) => {
                assert_eq!(c.map(|(code, _)| code), Some(CLOSE_TOO_BIG), "{seen:?}");
                break;
            }
            Some(WsEvent::Dropped(_)) => break,
            other => panic!("far over the limit: {seen:?} then {other:?}"),
        }
    }
    assert!(
        seen.iter()
            .all(|f| kind(f) == "error" && s(f, "code") == "RESOURCE_EXHAUSTED"),
        "{seen:?}"
    );

    // The node is fine; nothing was stored.
    let mut again = ws_connect(&server, "alice", "web").await;
    again.send_and_ack(id, "small", "fits").await;
    let h = full_history(&mut server.client("bob", "phone").await, id).await;
    assert_eq!(h.iter().map(text_of).collect::<Vec<_>>(), ["fits"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_frame_must_be_connect() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();

    let mut ws = ws_open(&server, "alice", "web").await;
    ws.send_message(id, "early", "before connect").await;
    let e = assert_closed_with(
        ws.expect_close().await,
        "INVALID_ARGUMENT",
        CLOSE_INVALID_ARGUMENT,
        "message first",
    );
    assert_eq!(s(&e, "field"), "type", "{e}");
    assert!(s(&e, "message").contains("connect"), "{e}");

    let mut ws = ws_open(&server, "alice", "web").await;
    ws.send_text("hello?").await;
    let e = assert_closed_with(
        ws.expect_close().await,
        "INVALID_ARGUMENT",
        CLOSE_INVALID_ARGUMENT,
        "not JSON first",
    );
    assert_eq!(s(&e, "field"), "frame", "{e}");

    let mut ws = ws_open(&server, "alice", "web").await;
    assert!(ws.try_send_message(WsMessage::binary(vec![0u8; 4])).await);
    assert_closed_with(
        ws.expect_close().await,
        "INVALID_ARGUMENT",
        CLOSE_INVALID_ARGUMENT,
        "binary first",
    );

    // A connect without a device id, or with a bad one.
    let token = server.token("alice", "web").await;
    let mut ws = ws_open(&server, "alice", "web").await;
    ws.send_json(json!({"type": "connect", "token": token}))
        .await;
    let e = assert_closed_with(
        ws.expect_close().await,
        "INVALID_ARGUMENT",
        CLOSE_INVALID_ARGUMENT,
        "no deviceId",
    );
    assert_eq!(s(&e, "field"), "deviceId", "{e}");
    let mut ws = ws_open(&server, "alice", "web").await;
    ws.send_json(json!({"type": "connect", "token": token, "deviceId": "has space"}))
        .await;
    let e = assert_closed_with(
        ws.expect_close().await,
        "INVALID_ARGUMENT",
        CLOSE_INVALID_ARGUMENT,
        "bad deviceId",
    );
    assert_eq!(s(&e, "field"), "deviceId", "{e}");

    let h = full_history(&mut server.client("alice", "phone").await, id).await;
    assert!(h.is_empty(), "nothing sent before connect is stored");
    ws_connect(&server, "alice", "web").await.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused() {
    let server = TestServer::start().await;
    let secret = server
        .secret()
        .expect("the harness chose the secret")
        .to_string();
    let now = now_secs();
    let cases = [
        ("garbage", "not.a.jwt".to_string()),
        (
            "expired",
            mint_token_at(&secret, "alice", now - 7200, now - 3600),
        ),
        (
            "wrong secret",
            mint_token("another-secret-of-32-bytes-000000", "alice"),
        ),
        ("empty", String::new()),
    ];
    for (ctx, token) in cases {
        let mut ws = ws_open(&server, "alice", "web").await;
        ws.send_json(
            json!({"type": "connect", "token": token, "deviceId": "web", "userId": "alice"}),
        )
        .await;
        let e = assert_closed_with(
            ws.expect_close().await,
            "UNAUTHENTICATED",
            CLOSE_UNAUTHENTICATED,
            ctx,
        );
        assert_eq!(
            (s(&e, "field"), s(&e, "frame")),
            ("token", "connect"),
            "{ctx}: {e}"
        );
    }
    // Expired says so.
    let mut ws = ws_open(&server, "alice", "web").await;
    let expired = mint_token_at(&secret, "alice", now - 7200, now - 3600);
    ws.send_json(json!({"type": "connect", "token": expired, "deviceId": "web"}))
        .await;
    let (frames, _, _) = ws.expect_close().await;
    assert!(s(&frames[0], "message").contains("expired"), "{frames:?}");

    // No token at all: the field is missing.
    let mut ws = ws_open(&server, "alice", "web").await;
    ws.send_json(json!({"type": "connect", "deviceId": "web", "userId": "alice"}))
        .await;
    let e = assert_closed_with(
        ws.expect_close().await,
        "INVALID_ARGUMENT",
        CLOSE_INVALID_ARGUMENT,
        "no token",
    );
    assert_eq!(s(&e, "field"), "token", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_is_an_error_then_the_socket_closes() {
    let server = TestServer::start().await;
    let mut ws = ws_connect(&server, "alice", "web").await;
    let token = server.token("alice", "web").await;
    ws.send_connect(&token, HashMap::new()).await;
    let e = assert_closed_with(
        ws.expect_close().await,
        "INVALID_ARGUMENT",
        CLOSE_INVALID_ARGUMENT,
        "second connect",
    );
    assert_eq!(s(&e, "frame"), "connect", "{e}");
    ws_connect(&server, "alice", "web").await.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_json_pings_and_websocket_pings() {
    let server = TestServer::start_with(SHORT_HEARTBEAT).await;

    // Silent after connect: dropped after the heartbeat timeout, saying why.
    let mut silent = ws_connect(&server, "alice", "silent").await;
    assert_eq!(
        n(silent.welcome.as_ref().unwrap(), "heartbeatTimeoutMs"),
        1500
    );
    let e = assert_closed_with(
        silent.expect_close().await,
        "UNAVAILABLE",
        CLOSE_UNAVAILABLE,
        "silent",
    );
    assert!(s(&e, "message").contains("heartbeat"), "{e}");

    // Silent before connect: the same.
    let mut mute = ws_open(&server, "alice", "mute").await;
    assert_closed_with(
        mute.expect_close().await,
        "INVALID_ARGUMENT",
        CLOSE_INVALID_ARGUMENT,
        "no connect",
    );

    // Kept alive by WebSocket pings alone (which browsers' libraries and others send): they are
    // answered by the protocol and count as heartbeats, with no pong frames in JSON.
    let mut pinger = ws_connect(&server, "alice", "pinger").await;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        assert!(
            pinger
                .try_send_message(WsMessage::Ping(vec![1u8].into()))
                .await
        );
        match pinger.next_event(Duration::from_millis(200)).await {
            None => {}
            Some(other) => panic!("nothing expected while pinging: {other:?}"),
        }
    }
    // Kept alive by `ping` frames too.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let pong = pinger.ping().await;
        assert!(n(&pong, "serverTime") > 0, "{pong}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_and_ends_the_session() {
    let server = TestServer::start().await;
    let mut ws = ws_connect(&server, "alice", "web").await;
    ws.send_close().await;
    // The closing handshake completes (RFC 6455 §5.5.1): the server answers with a close frame
    // rather than dropping the connection.
    let (frames, code, _) = ws.expect_close().await;
    assert_eq!(code, 1000, "after {frames:?}");
    // The session is over: the same device connects again without a conflict.
    let mut again = ws_connect(&server, "alice", "web").await;
    again.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_unavailable() {
    let mut server = TestServer::start().await;
    let mut ws = ws_connect(&server, "alice", "web").await;
    let mut waiting = ws_open(&server, "bob", "web").await;
    server.signal(libc::SIGTERM);
    assert_closed_with(
        ws.expect_close().await,
        "UNAVAILABLE",
        CLOSE_UNAVAILABLE,
        "live session",
    );
    assert_closed_with(
        waiting.expect_close().await,
        "UNAVAILABLE",
        CLOSE_UNAVAILABLE,
        "before connect",
    );
    let status = server.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "chatd exits cleanly with sockets open: {status:?}\n{}",
        server.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_shares_the_port_with_grpc_and_the_probes() {
    let server = TestServer::start().await;
    let mut ws = ws_connect(&server, "alice", "web").await;
    let r = http_get(server.addr, "/healthz")
        .await
        .expect("GET /healthz");
    assert_eq!(r.status, 200);
    let r = http_get(server.addr, "/metrics")
        .await
        .expect("GET /metrics");
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        body.contains("\nchatd_websockets 1\n"),
        "one socket open:\n{body}"
    );
    assert!(
        body.contains("chatd_sessions 1\n"),
        "its session counts as any other:\n{body}"
    );
    // A plain GET of /ws is refused by HTTP, not left hanging.
    let r = http_get(server.addr, "/ws").await.expect("GET /ws");
    assert!((400..500).contains(&r.status), "{r:?}");
    // gRPC on the same port.
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut bob = server.connect("bob", "phone").await;
    ws.send_and_ack(&chat.chat_id, "m1", "over the socket")
        .await;
    assert_eq!(text_of(&bob.expect_message().await), "over the socket");
}
