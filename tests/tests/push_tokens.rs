//! RegisterPushToken / UnregisterPushToken over gRPC: every provider's token shape accepted,
//! bad ones refused naming the field, the device header required, removal idempotent and
//! limited to the caller's own tokens. (Which token a push reaches is the store's contract,
//! tested by the store conformance suite on both stores; the pushes themselves by the push
//! suites.)

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64URL, Engine};
use chat_tests::pb::{PushProvider, RegisterPushTokenRequest, UnregisterPushTokenRequest};
use chat_tests::*;
use tonic::Code;

fn register(provider: PushProvider, token: &str, app_id: &str) -> RegisterPushTokenRequest {
    RegisterPushTokenRequest {
        provider: provider as i32,
        token: token.to_string(),
        app_id: app_id.to_string(),
    }
}

fn unregister(provider: PushProvider, token: &str) -> UnregisterPushTokenRequest {
    UnregisterPushTokenRequest {
        provider: provider as i32,
        token: token.to_string(),
    }
}

/// The user agent's public key of RFC 8291's example: a point on P-256.
const UA_PUBLIC: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";

/// A browser's `PushSubscription.toJSON()`.
fn subscription(endpoint: &str) -> String {
    subscription_with_key(endpoint, UA_PUBLIC)
}

fn subscription_with_key(endpoint: &str, p256dh: &str) -> String {
    serde_json::json!({
        "endpoint": endpoint,
        "expirationTime": null,
        "keys": { "p256dh": p256dh, "auth": B64URL.encode([3u8; 16]) },
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_registers_and_unregisters() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    // The default push services a subscription may name are the browsers' own.
    let web_push = subscription("https://fcm.googleapis.com/fcm/send/abc");
    let tokens = [
        (PushProvider::Fcm, "dGVzdA:APA91bH-x_y.z", ""),
        (PushProvider::Apns, &*"0a".repeat(32), "com.example.chat"),
        (PushProvider::Webpush, &*web_push, ""),
        (PushProvider::Webhook, "pushkey-1", "chat.web"),
    ];
    for (provider, token, app_id) in tokens {
        alice
            .register_push_token(register(provider, token, app_id))
            .await
            .unwrap_or_else(|s| panic!("register {provider:?}: {s:?}"));
        // Again: the same registration is not an error.
        alice
            .register_push_token(register(provider, token, app_id))
            .await
            .unwrap_or_else(|s| panic!("register {provider:?} again: {s:?}"));
    }
    for (provider, token, _) in tokens {
        for round in ["", " again (nothing left)"] {
            alice
                .unregister_push_token(unregister(provider, token))
                .await
                .unwrap_or_else(|s| panic!("unregister {provider:?}{round}: {s:?}"));
        }
    }
    // Someone else's token: removing it answers OK and reveals nothing.
    let mut bob = server.client("bob", "laptop").await;
    bob.unregister_push_token(unregister(PushProvider::Fcm, "dGVzdA:APA91bH-x_y.z"))
        .await
        .expect("unregister a token bob does not hold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let bad_endpoint = subscription("http://push.example/send/abc");
    // Well-formed, but never sendable: an endpoint off the allowed push services, and a key
    // that is not a point on the curve.
    let other_service = subscription("https://push.example/send/abc");
    let mut off_curve = vec![4u8];
    off_curve.extend([9u8; 64]);
    let off_curve = subscription_with_key(
        "https://fcm.googleapis.com/fcm/send/abc",
        &B64URL.encode(&off_curve),
    );
    let cases: [(PushProvider, &str, &str, &str); 10] = [
        (PushProvider::Unspecified, "abc", "", "provider"),
        (PushProvider::Fcm, "", "", "token"),
        (PushProvider::Fcm, "has spaces in it", "", "token"),
        (PushProvider::Apns, "not-hex", "", "token"),
        (PushProvider::Webpush, "{not json", "", "token"),
        (PushProvider::Webpush, &bad_endpoint, "", "token.endpoint"),
        (PushProvider::Webpush, &other_service, "", "endpoint"),
        (PushProvider::Webpush, &off_curve, "", "p256dh"),
        (
            PushProvider::Webhook,
            "https://evil.example/ok",
            "bad app",
            "app_id",
        ),
        (PushProvider::Fcm, &"x".repeat(5000), "", "token"),
    ];
    for (provider, token, app_id, field) in cases {
        let ctx = format!(
            "{provider:?} {:?} app {app_id:?}",
            &token[..token.len().min(40)]
        );
        let status = assert_code(
            alice
                .register_push_token(register(provider, token, app_id))
                .await,
            Code::InvalidArgument,
            &ctx,
        );
        assert_mentions(status.message(), field, &ctx);
    }
    // A provider number this server does not know is refused like UNSPECIFIED.
    let mut unknown = register(PushProvider::Fcm, "abc", "");
    unknown.provider = 99;
    let status = assert_code(
        alice.register_push_token(unknown).await,
        Code::InvalidArgument,
        "provider 99",
    );
    assert_mentions(status.message(), "provider", "provider 99");
    let status = assert_code(
        alice
            .unregister_push_token(unregister(PushProvider::Unspecified, "abc"))
            .await,
        Code::InvalidArgument,
        "unregister without a provider",
    );
    assert_mentions(
        status.message(),
        "provider",
        "unregister without a provider",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_needs_the_device_and_a_valid_token() {
    let server = TestServer::start().await;
    let token = server.token("alice", "phone").await;
    let mut no_device = server.client_with_auth(Auth::raw(Some(&format!("Bearer {token}")), None));
    let status = assert_code(
        no_device
            .register_push_token(register(PushProvider::Fcm, "abc", ""))
            .await,
        Code::InvalidArgument,
        "no x-device-id",
    );
    assert_mentions(status.message(), "x-device-id", "no x-device-id");
    // Unregistering names a token, not a device: a backend service may do it for the user.
    no_device
        .unregister_push_token(unregister(PushProvider::Fcm, "abc"))
        .await
        .expect("unregister without a device");

    let mut anonymous = server.client_with_auth(Auth::raw(None, Some("phone")));
    assert_code(
        anonymous
            .register_push_token(register(PushProvider::Fcm, "abc", ""))
            .await,
        Code::Unauthenticated,
        "no token",
    );
    assert_code(
        anonymous
            .unregister_push_token(unregister(PushProvider::Fcm, "abc"))
            .await,
        Code::Unauthenticated,
        "no token",
    );
}
