//! Push providers for the end-to-end suites: the four fakes of `push-fakes`, started over TLS,
//! and the `CHATD_PUSH_*` environment that points a chatd at them.

use crate::pb::{PushProvider, RegisterPushTokenRequest};
use crate::{open_direct, Client, ServerOptions, TestServer, NO_RATE_LIMIT};
use push_fakes::apns::{self, FakeApns};
use push_fakes::fcm::FakeFcm;
use push_fakes::tls::TestPki;
use push_fakes::webhook::FakeWebhook;
use push_fakes::webpush::FakeWebPush;
use serde_json::Value;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct Fakes {
    pub fcm: FakeFcm,
    pub apns: FakeApns,
    pub web: FakeWebPush,
    pub hook: FakeWebhook,
    /// Credentials and the CA, as files for chatd.
    _dir: TempDir,
    pub env: Vec<(String, String)>,
}

pub async fn fakes() -> Fakes {
    let pki = TestPki::shared();
    let (fcm, apns, web, hook) = (
        FakeFcm::start(pki).await,
        FakeApns::start(pki).await,
        FakeWebPush::start(pki).await,
        FakeWebhook::start(pki, None).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    pki.write_ca_pem(dir.path().join("ca.pem").as_path())
        .unwrap();
    fcm.write_service_account(dir.path().join("fcm.json").as_path())
        .unwrap();
    apns.write_key(dir.path().join("apns.p8").as_path())
        .unwrap();
    // Any P-256 key serves as a VAPID key: the fake APNs key is one.
    std::fs::write(dir.path().join("vapid.pem"), apns.key_pem()).unwrap();
    let env = [
        ("CHATD_PUSH_CA_FILE", path("ca.pem")),
        ("CHATD_PUSH_FCM_CREDENTIALS", path("fcm.json")),
        ("CHATD_PUSH_FCM_URL", fcm.url()),
        ("CHATD_PUSH_APNS_KEY", path("apns.p8")),
        ("CHATD_PUSH_APNS_KEY_ID", apns::KEY_ID.to_string()),
        ("CHATD_PUSH_APNS_TEAM_ID", apns::TEAM_ID.to_string()),
        ("CHATD_PUSH_APNS_TOPIC", apns::TOPIC.to_string()),
        ("CHATD_PUSH_APNS_URL", apns.url()),
        ("CHATD_PUSH_VAPID_KEY", path("vapid.pem")),
        (
            "CHATD_PUSH_VAPID_SUBJECT",
            "mailto:ops@example.com".to_string(),
        ),
        ("CHATD_PUSH_WEBPUSH_HOSTS", web.host_port()),
        ("CHATD_PUSH_WEBHOOK_URL", hook.url()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Fakes {
        fcm,
        apns,
        web,
        hook,
        _dir: dir,
        env,
    }
}

impl Fakes {
    /// A server with every provider pointed at these fakes.
    pub async fn server(&self) -> TestServer {
        TestServer::start_opts(self.options()).await
    }

    pub fn options(&self) -> ServerOptions {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ServerOptions::new().envs(&env).envs(NO_RATE_LIMIT)
    }

    /// Pushes each fake has taken so far (FCM, APNs, Web Push, webhook).
    pub fn counts(&self) -> [usize; 4] {
        [
            self.fcm.delivered().len(),
            self.apns.delivered().len(),
            self.web.delivered().len(),
            self.hook.notifications().len(),
        ]
    }
}

pub const BOB_FCM: &str = "bob-fcm:APA91b-token";
pub const BOB_HOOK: &str = "bob-pushkey";
pub const ALICE_HOOK: &str = "alice-pushkey";

pub fn bob_apns() -> String {
    "ab".repeat(32)
}

pub async fn register(c: &mut Client, provider: PushProvider, token: &str) {
    c.register_push_token(RegisterPushTokenRequest {
        provider: provider as i32,
        token: token.to_string(),
        app_id: String::new(),
    })
    .await
    .unwrap_or_else(|s| panic!("register {provider:?}: {s:?}"));
}

/// Waits (up to 15 s) until `done`.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`until`] for a check that has to await (an HTTP probe).
pub async fn until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bob with a token at every provider (one device), alice with a webhook token, and their chat.
pub async fn bob_and_alice(f: &Fakes, server: &TestServer) -> (Client, String, String) {
    let mut bob = server.client("bob", "phone").await;
    let web_token = f.web.new_subscription();
    register(&mut bob, PushProvider::Fcm, BOB_FCM).await;
    register(&mut bob, PushProvider::Apns, &bob_apns()).await;
    register(&mut bob, PushProvider::Webpush, &web_token).await;
    register(&mut bob, PushProvider::Webhook, BOB_HOOK).await;
    let mut alice = server.client("alice", "laptop").await;
    register(&mut alice, PushProvider::Webhook, ALICE_HOOK).await;
    let chat = open_direct(&mut alice, "bob").await.chat_id;
    (alice, chat, web_token)
}

/// The pushkeys of a webhook notification (the fake records its `notification` object).
pub fn pushkeys(notification: &Value) -> Vec<String> {
    notification["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["pushkey"].as_str().map(str::to_string))
        .collect()
}
