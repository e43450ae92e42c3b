//! Authentication: every call needs `authorization: Bearer <JWT>`; missing, malformed,
//! wrongly signed, unsigned or expired tokens are UNAUTHENTICATED, on unary calls, Connect and
//! Subscribe alike.

use chat_tests::auth::{mint_token_at, now_secs};
use chat_tests::pb::{GetChatRequest, OpenDirectChatRequest};
use chat_tests::*;
use std::collections::HashMap;
use tonic::Code;

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Every kind of call made with `auth` must fail with UNAUTHENTICATED.
async fn assert_rejected_everywhere(server: &TestServer, auth: Auth, ctx: &str) {
    let mut c = server.client_with_auth(auth.clone());
    assert_code(
        list_chats(&mut c, 0, "").await,
        Code::Unauthenticated,
        &format!("{ctx}: ListChats"),
    );
    assert_code(
        c.open_direct_chat(OpenDirectChatRequest {
            peer_user_id: "bob".into(),
        })
        .await,
        Code::Unauthenticated,
        &format!("{ctx}: OpenDirectChat"),
    );
    assert_code(
        c.get_chat(GetChatRequest {
            chat_id: unknown_chat_id(),
        })
        .await,
        Code::Unauthenticated,
        &format!("{ctx}: GetChat"),
    );
    assert_code(
        send_unary(&mut c, &unknown_chat_id(), "m1", Some(text("hi"))).await,
        Code::Unauthenticated,
        &format!("{ctx}: SendMessage"),
    );

    // Connect: the call (or the stream right after Hello) ends with UNAUTHENTICATED and no
    // Welcome is ever sent.
    let mut s = Session::open(server.client_with_auth(auth.clone()), "alice", "phone");
    // The server may already have refused the call, so a failed send is fine here.
    let _ = s
        .try_send(chat_tests::pb::client_frame::Frame::Hello(
            chat_tests::pb::Hello {
                device_id: "phone".into(),
                ..Default::default()
            },
        ))
        .await;
    let mut frames = Vec::new();
    let status = loop {
        match s.next_event(RECV_TIMEOUT).await {
            Some(session::Event::Frame(f)) => frames.push(f),
            Some(session::Event::End(st)) => break st,
            None => panic!("{ctx}: Connect neither rejected nor ended; frames: {frames:?}"),
        }
    };
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "{ctx}: Connect status {status:?}"
    );
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, session::Frame::Welcome(_))),
        "{ctx}: Connect sent Welcome to an unauthenticated client: {frames:?}"
    );

    let mut sub = Session::subscribe(
        server.client_with_auth(auth),
        "alice",
        "web",
        HashMap::new(),
    );
    let status = sub.expect_end().await;
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "{ctx}: Subscribe status {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_is_accepted() {
    let server = TestServer::start().await;
    let mut c = server.client("alice", "phone").await;
    let page = list_chats(&mut c, 0, "")
        .await
        .expect("ListChats with a valid token");
    assert!(page.chats.is_empty(), "a new user has no chats: {page:?}");
    assert!(page.next_page_token.is_empty());

    let mut s = server.connect("alice", "phone").await;
    assert_eq!(s.replayed, Some(0));
    s.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_authorization_is_unauthenticated() {
    let server = TestServer::start().await;
    assert_rejected_everywhere(
        &server,
        Auth::raw(None, Some("phone")),
        "no authorization header",
    )
    .await;
    assert_rejected_everywhere(&server, Auth::none(), "no headers at all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorization_is_unauthenticated() {
    let server = TestServer::start().await;
    let good = server.token("alice", "phone").await;
    let cases = [
        "".to_string(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
        "Bearer not-a-jwt".to_string(),
        "Bearer a.b.c".to_string(),
        "Basic YWxpY2U6c2VjcmV0".to_string(),
        // The token without the scheme.
        good.clone(),
        // Truncated signature.
        format!("Bearer {}", &good[..good.len() - 5]),
    ];
    for value in cases {
        assert_rejected_everywhere(
            &server,
            Auth::raw(Some(&value), Some("phone")),
            &format!("authorization {value:?}"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signed_with_another_secret_is_unauthenticated() {
    let server = TestServer::start().await;
    let now = now_secs();
    let forged = mint_token_at(&random_hex(32), "alice", now, now + 3600);
    assert_rejected_everywhere(&server, Auth::bearer(&forged, "phone"), "wrong signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_alg_none_token_is_unauthenticated() {
    let server = TestServer::start().await;
    let now = now_secs();
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims =
        b64url(format!(r#"{{"sub":"alice","iat":{now},"exp":{}}}"#, now + 3600).as_bytes());
    let token = format!("{header}.{claims}.");
    assert_rejected_everywhere(&server, Auth::bearer(&token, "phone"), "alg=none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_unauthenticated() {
    let server = TestServer::start().await;
    let secret = server.secret().unwrap().to_string();
    let now = now_secs();
    // Expired an hour ago: well outside any clock-skew leeway.
    let expired = mint_token_at(&secret, "alice", now - 7200, now - 3600);
    assert_rejected_everywhere(&server, Auth::bearer(&expired, "phone"), "expired token").await;

    // Same secret, still valid: accepted (proves the rejection was about expiry).
    let fresh = mint_token_at(&secret, "alice", now, now + 3600);
    let mut c = server.client_with_auth(Auth::bearer(&fresh, "phone"));
    list_chats(&mut c, 0, "")
        .await
        .expect("fresh token accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_token_subject() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let msg = send_text(&mut alice, &chat.chat_id, "m1", "hi").await;
    assert_eq!(msg.sender_user_id, "alice");
    assert_eq!(
        msg.sender_device_id, "phone",
        "x-device-id of a unary send is recorded"
    );

    // carol is not in the chat: her valid token does not open it.
    let mut carol = server.client("carol", "phone").await;
    assert_code(
        get_chat(&mut carol, &chat.chat_id).await,
        Code::PermissionDenied,
        "carol GetChat",
    );
}
