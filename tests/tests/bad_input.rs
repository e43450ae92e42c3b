//! Bad input: the stream protocol (Hello first, one Hello), device ids, every SendError case
//! (the stream stays open and nothing is stored), Ack errors, malformed/unknown/foreign chat
//! ids and bad user ids on unary calls, oversized frames.

use chat_tests::pb::{
    client_frame, AckDeliveredRequest, Content, GetChatRequest, MarkReadRequest,
    OpenDirectChatRequest, Ping,
};
use chat_tests::*;
use std::collections::HashMap;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_must_be_hello() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;

    let mut s = server.open_session("alice", "phone").await;
    s.send(client_frame::Frame::Ping(Ping { nonce: 1 })).await;
    let st = s.expect_end().await;
    assert_eq!(
        st.code(),
        Code::InvalidArgument,
        "Ping before Hello: {st:?}"
    );

    let mut s = server.open_session("alice", "phone").await;
    s.send_text(&chat.chat_id, "early", "before hello").await;
    let st = s.expect_end().await;
    assert_eq!(
        st.code(),
        Code::InvalidArgument,
        "Send before Hello: {st:?}"
    );

    // Nothing was stored, and the server still serves.
    let h = full_history(&mut server.client("alice", "phone").await, &chat.chat_id).await;
    assert!(h.is_empty(), "a Send before Hello must not be stored");
    server.connect("alice", "phone").await.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_hello_is_an_error_then_the_stream_ends() {
    let server = TestServer::start().await;
    let mut s = server.connect("alice", "phone").await;
    s.hello().await;
    let e = s.expect_error_frame().await;
    assert_eq!(e.frame, "hello", "{e:?}");
    assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
    let st = s.expect_end().await;
    assert_eq!(
        st.code(),
        Code::InvalidArgument,
        "stream status after a second Hello: {st:?}"
    );
    server.connect("alice", "phone").await.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_id_validation() {
    let server = TestServer::start().await;
    let long = "d".repeat(65);
    let bad = [
        "",
        long.as_str(),
        "has space",
        "slash/y",
        "colon:x",
        "ünïcode",
        "tab\tx",
    ];
    // No x-device-id header on the streams, so it is the device id in Hello / SubscribeRequest
    // itself that is judged (a header naming another device is refused for its own reason).
    let token = server.token("alice", "phone").await;
    let bearer = format!("Bearer {token}");
    for dev in bad {
        // Connect: Hello carries the device id.
        let client = server.client_with_auth(Auth::raw(Some(&bearer), None));
        let mut s = Session::open(client, "alice", dev);
        s.hello().await;
        let st = s.expect_end().await;
        assert_eq!(
            st.code(),
            Code::InvalidArgument,
            "Hello.device_id {dev:?}: {st:?}"
        );
        assert_mentions(
            st.message(),
            "device_id",
            &format!("Hello.device_id {dev:?}"),
        );

        // Subscribe.
        let client = server.client_with_auth(Auth::raw(Some(&bearer), None));
        let mut s = Session::subscribe(client, "alice", dev, HashMap::new());
        let st = s.expect_end().await;
        assert_eq!(
            st.code(),
            Code::InvalidArgument,
            "SubscribeRequest.device_id {dev:?}: {st:?}"
        );
    }

    // x-device-id on device-scoped unary calls (only values that are legal header values).
    let mut owner = server.client("alice", "phone").await;
    let chat = open_direct(&mut owner, "bob").await;
    send_text(&mut owner, &chat.chat_id, "m1", "x").await;
    for dev in ["", long.as_str(), "has space", "slash/y"] {
        let mut c = server.client_with_auth(Auth::bearer(&token, dev));
        assert_code(
            c.ack_delivered(AckDeliveredRequest {
                chat_id: chat.chat_id.clone(),
                seq: 1,
            })
            .await,
            Code::InvalidArgument,
            &format!("AckDelivered x-device-id {dev:?}"),
        );
        assert_code(
            c.mark_read(MarkReadRequest {
                chat_id: chat.chat_id.clone(),
                seq: 1,
            })
            .await,
            Code::InvalidArgument,
            &format!("MarkRead x-device-id {dev:?}"),
        );
    }

    // Boundary and charset: 64 chars of [A-Za-z0-9._-] are fine.
    let ok64 = format!("{}._-Z9", "a".repeat(59));
    assert_eq!(ok64.len(), 64);
    let mut s = server.connect("alice", &ok64).await;
    s.ping().await;
    let mut c = server.client("alice", &ok64).await;
    c.ack_delivered(AckDeliveredRequest {
        chat_id: chat.chat_id.clone(),
        seq: 1,
    })
    .await
    .expect("64-char device id");
}

/// Every rejected Send: a SendError with the right code naming the field; the stream stays open;
/// nothing is stored or delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_errors_keep_the_stream_open_and_store_nothing() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let foreign = open_direct(&mut server.client("bob", "phone").await, "carol").await;
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;

    let c = chat.chat_id.as_str();
    let both = Content {
        text: "t".into(),
        ciphertext: vec![1, 2],
        attributes: HashMap::new(),
    };
    let upper = c.to_uppercase();
    let unknown = unknown_chat_id();
    let long_id = "k".repeat(65);
    // (client_msg_id, chat_id, content, code, field)
    let cases: Vec<(&str, &str, Option<Content>, Code, &str)> = vec![
        ("e-none", c, None, Code::InvalidArgument, "content"),
        (
            "e-empty",
            c,
            Some(Content::default()),
            Code::InvalidArgument,
            "content",
        ),
        (
            "e-empty-attrs",
            c,
            Some(Content {
                attributes: [("a".to_string(), "b".to_string())].into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "content",
        ),
        ("e-both", c, Some(both), Code::InvalidArgument, "content"),
        (
            "e-chat-garbage",
            "not-a-chat",
            Some(text("x")),
            Code::InvalidArgument,
            "chat_id",
        ),
        (
            "e-chat-empty",
            "",
            Some(text("x")),
            Code::InvalidArgument,
            "chat_id",
        ),
        (
            "e-chat-upper",
            upper.as_str(),
            Some(text("x")),
            Code::InvalidArgument,
            "chat_id",
        ),
        (
            "e-chat-short",
            &c[..31],
            Some(text("x")),
            Code::InvalidArgument,
            "chat_id",
        ),
        (
            "e-unknown",
            unknown.as_str(),
            Some(text("x")),
            Code::NotFound,
            "",
        ),
        (
            "e-foreign",
            foreign.chat_id.as_str(),
            Some(text("x")),
            Code::PermissionDenied,
            "",
        ),
        (
            "",
            c,
            Some(text("x")),
            Code::InvalidArgument,
            "client_msg_id",
        ),
        (
            long_id.as_str(),
            c,
            Some(text("x")),
            Code::InvalidArgument,
            "client_msg_id",
        ),
    ];
    for (id, chat_id, content, code, field) in &cases {
        alice.send_content(chat_id, id, content.clone()).await;
        let e = alice.expect_send_error(id).await;
        let what = format!("send {id:?} to {chat_id:?}");
        assert_eq!(e.code, *code as i32, "{what}: {e:?}");
        assert!(!e.message.is_empty(), "{what}: message set");
        if !field.is_empty() {
            assert_mentions(&e.message, field, &what);
        }
        // Still open after each error.
        alice.ping().await;
    }

    // A valid send works afterwards (64-char client_msg_id is the maximum).
    let id64 = "k".repeat(64);
    let m = alice.send_and_ack(c, &id64, "finally valid").await;
    assert_eq!(m.seq, 1, "no rejected send consumed a seq");
    assert_eq!(bob.expect_message().await.seq, 1);
    bob.expect_no_message(QUIET_PERIOD).await;
    assert_eq!(seqs(&full_history(&mut alice_c, c).await), vec![1]);
    let foreign_h = full_history(&mut server.client("bob", "phone").await, &foreign.chat_id).await;
    assert!(
        foreign_h.is_empty(),
        "nothing stored in the chat alice is not a member of"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_send_errors() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let foreign = open_direct(&mut server.client("bob", "phone").await, "carol").await;
    let c = chat.chat_id.as_str();
    let both = Content {
        text: "t".into(),
        ciphertext: vec![1],
        attributes: HashMap::new(),
    };
    let long_id = "k".repeat(65);
    let unknown = unknown_chat_id();
    let cases: Vec<(&str, &str, Option<Content>, Code, &str)> = vec![
        ("u-none", c, None, Code::InvalidArgument, "content"),
        (
            "u-empty",
            c,
            Some(Content::default()),
            Code::InvalidArgument,
            "content",
        ),
        ("u-both", c, Some(both), Code::InvalidArgument, "content"),
        (
            "u-garbage",
            "zzz",
            Some(text("x")),
            Code::InvalidArgument,
            "chat_id",
        ),
        (
            "u-unknown",
            unknown.as_str(),
            Some(text("x")),
            Code::NotFound,
            "",
        ),
        (
            "u-foreign",
            foreign.chat_id.as_str(),
            Some(text("x")),
            Code::PermissionDenied,
            "",
        ),
        (
            "",
            c,
            Some(text("x")),
            Code::InvalidArgument,
            "client_msg_id",
        ),
        (
            long_id.as_str(),
            c,
            Some(text("x")),
            Code::InvalidArgument,
            "client_msg_id",
        ),
    ];
    for (id, chat_id, content, code, field) in cases {
        let what = format!("SendMessage {id:?} to {chat_id:?}");
        let s = assert_code(
            send_unary(&mut alice, chat_id, id, content).await,
            code,
            &what,
        );
        if !field.is_empty() {
            assert_mentions(s.message(), field, &what);
        }
    }
    assert_eq!(send_text(&mut alice, c, "valid", "x").await.seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_errors_are_error_frames_and_the_stream_stays_open() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let foreign = open_direct(&mut server.client("bob", "phone").await, "carol").await;
    send_many(&mut alice_c, &chat.chat_id, "m", 2).await;
    let mut s = server.connect("alice", "phone").await;

    let unknown = unknown_chat_id();
    let cases = [
        (
            chat.chat_id.as_str(),
            3u64,
            Code::InvalidArgument,
            "seq beyond last_seq",
        ),
        (
            foreign.chat_id.as_str(),
            1,
            Code::PermissionDenied,
            "not a member",
        ),
        ("not-a-chat", 1, Code::InvalidArgument, "malformed chat id"),
        (unknown.as_str(), 1, Code::NotFound, "unknown chat"),
    ];
    for (chat_id, seq, code, what) in cases {
        s.ack(chat_id, seq).await;
        let e = s.expect_error_frame().await;
        assert_eq!(e.frame, "ack", "{what}: {e:?}");
        assert_eq!(e.code, code as i32, "{what}: {e:?}");
        s.ping().await;
    }
    // A valid Ack is silent, and the stream still works.
    s.ack(&chat.chat_id, 2).await;
    s.ping().await;

    // Unary AckDelivered mirrors it.
    assert_code(
        alice_c
            .ack_delivered(AckDeliveredRequest {
                chat_id: chat.chat_id.clone(),
                seq: 3,
            })
            .await,
        Code::InvalidArgument,
        "AckDelivered beyond last_seq",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_id_validation_on_unary_calls() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut eve = server.client("eve", "phone").await;
    let g = create_group(&mut alice, "g", &["bob"]).await;
    send_text(&mut alice, &g.chat_id, "m1", "x").await;

    let upper = g.chat_id.to_uppercase();
    let short = g.chat_id[..31].to_string();
    let long = format!("{}0", g.chat_id);
    let nonhex = format!("{}g", &g.chat_id[..31]);
    let malformed = [
        "",
        "abc",
        upper.as_str(),
        short.as_str(),
        long.as_str(),
        nonhex.as_str(),
    ];
    let unknown = unknown_chat_id();

    async fn all_calls(
        c: &mut Client,
        chat_id: &str,
    ) -> Vec<(&'static str, Result<(), tonic::Status>)> {
        let id = chat_id.to_string();
        vec![
            (
                "GetChat",
                c.get_chat(GetChatRequest {
                    chat_id: id.clone(),
                })
                .await
                .map(|_| ()),
            ),
            ("GetHistory", history(c, &id, 0, "").await.map(|_| ())),
            (
                "SendMessage",
                send_unary(c, &id, "v1", Some(text("x"))).await.map(|_| ()),
            ),
            (
                "AddMembers",
                add_members(c, &id, &["zed"]).await.map(|_| ()),
            ),
            (
                "AckDelivered",
                c.ack_delivered(AckDeliveredRequest {
                    chat_id: id.clone(),
                    seq: 1,
                })
                .await
                .map(|_| ()),
            ),
            (
                "MarkRead",
                c.mark_read(MarkReadRequest {
                    chat_id: id.clone(),
                    seq: 1,
                })
                .await
                .map(|_| ()),
            ),
        ]
    }

    for bad in malformed {
        for (call, r) in all_calls(&mut alice, bad).await {
            let s = assert_code(r, Code::InvalidArgument, &format!("{call}({bad:?})"));
            assert_mentions(s.message(), "chat_id", &format!("{call}({bad:?})"));
        }
        assert_code(
            remove_member(&mut alice, bad, "bob").await,
            Code::InvalidArgument,
            &format!("RemoveMember({bad:?})"),
        );
    }
    for (call, r) in all_calls(&mut alice, &unknown).await {
        assert_code(r, Code::NotFound, &format!("{call}(unknown)"));
    }
    assert_code(
        remove_member(&mut alice, &unknown, "bob").await,
        Code::NotFound,
        "RemoveMember(unknown)",
    );
    for (call, r) in all_calls(&mut eve, &g.chat_id).await {
        assert_code(
            r,
            Code::PermissionDenied,
            &format!("{call} by a non-member"),
        );
    }
    // Nothing changed.
    let chat = get_chat(&mut alice, &g.chat_id).await.unwrap();
    assert_eq!(chat.last_seq, 1);
    assert_eq!(chat.members.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_validation() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let long = "u".repeat(129);
    let max = "u".repeat(128);

    for bad in ["", long.as_str()] {
        assert_code(
            alice
                .open_direct_chat(OpenDirectChatRequest {
                    peer_user_id: bad.to_string(),
                })
                .await,
            Code::InvalidArgument,
            &format!("OpenDirectChat({:?}…)", &bad[..bad.len().min(8)]),
        );
        assert_code(
            try_create_group(&mut alice, "g", &["bob", bad]).await,
            Code::InvalidArgument,
            "CreateGroup with a bad member id",
        );
    }
    let d = open_direct(&mut alice, &max).await;
    assert!(
        d.members.iter().any(|m| m.user_id == max),
        "128-char user id is fine"
    );

    let g = create_group(&mut alice, "g", &["bob"]).await;
    assert_code(
        add_members(&mut alice, &g.chat_id, &[""]).await,
        Code::InvalidArgument,
        "AddMembers([\"\"])",
    );
    assert_code(
        add_members(&mut alice, &g.chat_id, &[long.as_str()]).await,
        Code::InvalidArgument,
        "AddMembers(129 chars)",
    );
    assert_code(
        remove_member(&mut alice, &g.chat_id, "").await,
        Code::InvalidArgument,
        "RemoveMember(\"\")",
    );
    let after = get_chat(&mut alice, &g.chat_id).await.unwrap();
    assert_eq!(after.members.len(), 2, "nothing changed: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_ends_that_stream_but_the_server_stays_up() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut bob = server.connect("bob", "phone").await;
    let mut alice = server.connect("alice", "phone").await;

    alice
        .send_text(&chat.chat_id, "huge", &"z".repeat(2 * 1024 * 1024))
        .await;
    let st = alice.expect_end().await;
    assert_ne!(
        st.code(),
        Code::Ok,
        "a 2 MiB frame must end the stream with an error"
    );

    // Other sessions are unaffected, new connections work, nothing was stored.
    bob.ping().await;
    let mut alice2 = server.connect("alice", "phone").await;
    let m = alice2
        .send_and_ack(&chat.chat_id, "small", "small one")
        .await;
    assert_eq!(m.seq, 1, "the oversized frame was not stored");
    assert_eq!(bob.expect_message().await.seq, 1);

    // Unary: an oversized request is refused; the server stays up.
    let mut c = server.client("alice", "laptop").await;
    let r = send_unary(
        &mut c,
        &chat.chat_id,
        "huge-unary",
        Some(text(&"z".repeat(2 * 1024 * 1024))),
    )
    .await;
    assert!(r.is_err(), "a 2 MiB unary SendMessage must be refused");
    assert_eq!(send_text(&mut c, &chat.chat_id, "ok", "ok").await.seq, 2);
}
