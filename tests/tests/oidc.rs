//! Tokens from an OpenID Connect identity provider: RS256 and ES256 JWTs checked against the
//! provider's key set (JWKS), fetched over HTTPS from a fake provider on loopback, beside the
//! node's own HS256 tokens. Keys rotate without a restart; every refusal is UNAUTHENTICATED
//! and says why.

use chat_tests::idp::{self, claims, claims_with, OTHER_AUDIENCE};
use chat_tests::websocket::{kind, s, ws_open};
use chat_tests::*;
use push_fakes::idp::IdpKey;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::Code;

/// The refusal of a unary call made with `token`: UNAUTHENTICATED, and its message, which
/// must not echo the token.
async fn refusal(server: &TestServer, token: &str, ctx: &str) -> String {
    let mut c = idp::client(server, token, "phone");
    let status = assert_code(list_chats(&mut c, 0, "").await, Code::Unauthenticated, ctx);
    assert!(
        !status.message().contains(token),
        "{ctx}: the refusal echoes the token: {status:?}"
    );
    status.message().to_string()
}

/// Polls a unary call with `token` until it is accepted.
async fn accepted_within(server: &TestServer, token: &str, limit: Duration, ctx: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let mut c = idp::client(server, token, "phone");
        match list_chats(&mut c, 0, "").await {
            Ok(_) => return,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::Unauthenticated, "{ctx}: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{ctx}: still refused after {limit:?}: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_users_chat_beside_hs256_ones() {
    let (rsa, ec) = (IdpKey::rsa("rsa-1", 0), IdpKey::ec("ec-1"));
    let provider = idp::start(&[&rsa, &ec]).await;
    let server = provider.server().await;
    let alice_token = rsa.sign(&claims("alice"));
    let bob_token = ec.sign(&claims_with("bob", "aud", json!(["other", OTHER_AUDIENCE])));

    // alice on gRPC with an RS256 token, bob on the WebSocket with an ES256 one.
    let mut alice = idp::client(&server, &alice_token, "phone");
    let chat = open_direct(&mut alice, "bob").await;
    let mut alice_stream = idp::connect(&server, &alice_token, "alice", "phone").await;
    let mut bob = ws_open(&server, "bob", "web").await;
    bob.send_connect(&bob_token, HashMap::new()).await;
    bob.sync().await;

    alice_stream
        .send_and_ack(&chat.chat_id, "a1", "hi bob")
        .await;
    let got = bob.expect_message().await;
    assert_eq!(
        (s(&got, "senderId"), s(&got, "content")),
        ("alice", "hi bob"),
        "{got}"
    );
    bob.send_and_ack(&chat.chat_id, "b1", "hi alice").await;
    let got = alice_stream.expect_message().await;
    assert_eq!(
        (got.sender_user_id.as_str(), text_of(&got)),
        ("bob", "hi alice")
    );

    // carol's HS256 token from the node's secret works as before.
    let mut carol = server.client("carol", "phone").await;
    let with_alice = open_direct(&mut carol, "alice").await;
    send_text(&mut carol, &with_alice.chat_id, "c1", "hello").await;
    let got = alice_stream.expect_message().await;
    assert_eq!(got.sender_user_id, "carol");
    // Two fetches at most: the one at start, and one if a token came before it finished.
    assert!(provider.fake.fetches() <= 2, "{}", provider.fake.fetches());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_fetched_when_a_token_names_it_without_a_restart() {
    let (old, new) = (IdpKey::rsa("2024-01", 0), IdpKey::ec("2024-02"));
    let provider = idp::start(&[&old]).await;
    let server = provider.server().await;
    accepted_within(
        &server,
        &old.sign(&claims("alice")),
        RECV_TIMEOUT,
        "old key",
    )
    .await;
    let before = provider.fake.fetches();

    // The provider publishes a new key and signs with it: the first token naming it makes the
    // server fetch the set once, and is accepted on that first call.
    provider.fake.publish(&[&old, &new]);
    let token = new.sign(&claims("bob"));
    let mut bob = idp::client(&server, &token, "phone");
    let chat = open_direct(&mut bob, "alice").await;
    assert_eq!(provider.fake.fetches(), before + 1);
    // The old key is still in the set, so its tokens still work.
    let mut alice = idp::connect(&server, &old.sign(&claims("alice")), "alice", "laptop").await;
    let mut stream = idp::connect(&server, &token, "bob", "phone").await;
    stream
        .send_and_ack(&chat.chat_id, "b1", "signed with the new key")
        .await;
    assert_eq!(
        text_of(&alice.expect_message().await),
        "signed with the new key"
    );
    assert_eq!(
        provider.fake.fetches(),
        before + 1,
        "no fetch for known keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_keys_tokens_are_refused_after_the_set_is_fetched_again() {
    let (retiring, current, next) = (IdpKey::rsa("k1", 0), IdpKey::ec("k2"), IdpKey::rsa("k3", 1));
    let provider = idp::start(&[&retiring, &current]).await;
    let server = provider.server().await;
    let old_token = retiring.sign(&claims("alice"));
    accepted_within(&server, &old_token, RECV_TIMEOUT, "before the rotation").await;

    // k1 leaves the set and k3 joins it. Until the server fetches the set again, the keys it
    // has still count; a token naming k3 makes it fetch.
    provider.fake.publish(&[&current, &next]);
    let mut c = idp::client(&server, &next.sign(&claims("carol")), "phone");
    list_chats(&mut c, 0, "")
        .await
        .expect("k3 accepted after the fetch");
    let msg = refusal(&server, &old_token, "retired key").await;
    assert!(msg.contains("unknown key"), "{msg}");
    let mut c = idp::client(&server, &current.sign(&claims("bob")), "phone");
    list_chats(&mut c, 0, "").await.expect("k2 still accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_kids_do_not_hammer_the_provider() {
    let rsa = IdpKey::rsa("real", 0);
    let provider = idp::start(&[&rsa]).await;
    let server = provider.server().await;
    accepted_within(
        &server,
        &rsa.sign(&claims("alice")),
        RECV_TIMEOUT,
        "real key",
    )
    .await;
    let before = provider.fake.fetches();

    let calls: Vec<_> = (0..30)
        .map(|i| {
            let token = rsa.sign_as(
                jsonwebtoken::Algorithm::RS256,
                Some(&format!("made-up-{i}")),
                &claims("mallory"),
            );
            let mut c = idp::client(&server, &token, "phone");
            tokio::spawn(async move { list_chats(&mut c, 0, "").await })
        })
        .collect();
    for call in calls {
        let status = call.await.unwrap().expect_err("a made-up kid is refused");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("unknown key"), "{status:?}");
    }
    assert!(
        provider.fake.fetches() <= before + 1,
        "30 made-up kids made {} fetches",
        provider.fake.fetches() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_naming_the_reason() {
    let (rsa, ec) = (IdpKey::rsa("rsa-1", 0), IdpKey::ec("ec-1"));
    let provider = idp::start(&[&rsa, &ec]).await;
    let server = provider.server().await;
    accepted_within(
        &server,
        &rsa.sign(&claims("alice")),
        RECV_TIMEOUT,
        "a good token",
    )
    .await;
    let now = now_secs();
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    // HS256 with the provider's public key as the secret: what a verifier that lets the token
    // pick the algorithm for the JWK's key material would accept.
    let with_public_key = |kid: Option<&str>| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        let key = jsonwebtoken::EncodingKey::from_secret(rsa.public_pem().as_bytes());
        jsonwebtoken::encode(&header, &claims("mallory"), &key).unwrap()
    };
    let other_key = IdpKey::rsa("rsa-1", 1);
    let cases = [
        (
            "expired",
            rsa.sign(&claims_with("alice", "exp", json!(now - 3600))),
            "token expired",
        ),
        (
            "not yet valid",
            ec.sign(&claims_with("alice", "nbf", json!(now + 3600))),
            "not valid yet",
        ),
        (
            "wrong issuer",
            rsa.sign(&claims_with("alice", "iss", json!("https://evil.example/"))),
            "wrong issuer",
        ),
        (
            "no issuer",
            rsa.sign(&claims_with("alice", "iss", json!(null))),
            "lacks the `iss` claim",
        ),
        (
            "wrong audience",
            ec.sign(&claims_with("alice", "aud", json!("another-app"))),
            "wrong audience",
        ),
        (
            "no exp",
            ec.sign(&claims_with("alice", "exp", json!(null))),
            "lacks the `exp` claim",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT"})),
                b64(claims("mallory"))
            ),
            "unsupported token algorithm \"none\"",
        ),
        (
            "HS256 with the public key, naming it",
            with_public_key(Some("rsa-1")),
            "token algorithm HS256 does not match its key (RS256)",
        ),
        (
            "HS256 with the public key",
            with_public_key(None),
            "signature is invalid",
        ),
        (
            "ES256 header on the RSA key",
            ec.sign_as(
                jsonwebtoken::Algorithm::ES256,
                Some("rsa-1"),
                &claims("alice"),
            ),
            "does not match its key",
        ),
        (
            "another key claiming its kid",
            other_key.sign(&claims("alice")),
            "signature is invalid",
        ),
        (
            "unknown kid",
            IdpKey::rsa("rsa-9", 1).sign(&claims("alice")),
            "unknown key",
        ),
        (
            "PS256",
            rsa.sign_as(
                jsonwebtoken::Algorithm::PS256,
                Some("rsa-1"),
                &claims("alice"),
            ),
            "unsupported token algorithm \"PS256\"",
        ),
    ];
    for (ctx, token, want) in &cases {
        let msg = refusal(&server, token, ctx).await;
        assert!(msg.contains(want), "{ctx}: {msg:?} does not say {want:?}");
    }

    // The same refusal on a Connect stream and on the WebSocket.
    let (_, expired, _) = &cases[0];
    let mut stream = Session::open(idp::client(&server, expired, "phone"), "alice", "phone");
    let _ = stream
        .try_send(pb::client_frame::Frame::Hello(pb::Hello {
            device_id: "phone".into(),
            ..Default::default()
        }))
        .await;
    let status = stream.expect_end().await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("token expired"), "{status:?}");
    let (_, wrong_issuer, _) = &cases[2];
    let mut ws = ws_open(&server, "alice", "web").await;
    ws.send_connect(wrong_issuer, HashMap::new()).await;
    let (frames, _, _) = ws.expect_close().await;
    let error = frames
        .iter()
        .find(|f| kind(f) == "error")
        .expect("an error frame");
    assert_eq!(s(error, "code"), "UNAUTHENTICATED", "{error}");
    assert!(s(error, "message").contains("wrong issuer"), "{error}");
}

/// A node whose provider is down when it starts still starts: its own tokens work, the
/// provider's are refused saying the keys are not there yet, and are accepted once the
/// provider answers (retried in the background). No CHATD_JWT_SECRET: only the JWKS URL is
/// configured for tokens. The leeway setting is the node's for both kinds of token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_while_its_provider_is_down_and_picks_the_keys_up_later() {
    let rsa = IdpKey::rsa("rsa-1", 0);
    let provider = idp::start(&[&rsa]).await;
    provider.fake.set_down(true);
    let server = TestServer::start_opts(
        provider
            .options()
            .without_secret()
            .arg("--jwt-leeway-secs")
            .arg("120"),
    )
    .await;

    let token = rsa.sign(&claims("alice"));
    let msg = refusal(&server, &token, "provider down").await;
    assert!(msg.contains("could not be fetched yet"), "{msg}");
    let mut bob = server.client("bob", "phone").await;
    list_chats(&mut bob, 0, "")
        .await
        .expect("the node's own token works");

    provider.fake.set_down(false);
    accepted_within(&server, &token, Duration::from_secs(30), "provider back").await;
    // 60 s late, within the 120 s leeway.
    let late = rsa.sign(&claims_with("alice", "exp", json!(now_secs() - 60)));
    let mut c = idp::client(&server, &late, "phone");
    list_chats(&mut c, 0, "").await.expect("within the leeway");
    assert!(
        server
            .stderr()
            .contains("cannot fetch the identity provider's key set"),
        "the outage is logged"
    );
}
