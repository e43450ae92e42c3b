//! Push providers for the end-to-end suites: the four fakes of `push-fakes`, started over TLS,
//! and the `CHATD_PUSH_*` environment that points a chatd at them.

use crate::pb::{PushProvider, RegisterPushTokenRequest};
use crate::{
    create_group, open_direct, send_text, Client, ServerOptions, TestServer, NO_RATE_LIMIT,
};
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
    /// When each provider's fake got the pushes that arrived after `since`, in order
    /// (FCM, APNs, Web Push, webhook; FCM's token exchanges left out).
    pub fn push_times(&self, since: Instant) -> [Vec<Instant>; 4] {
        let times = |requests: Vec<push_fakes::server::Recorded>, push: fn(&str) -> bool| {
            let mut at: Vec<Instant> = requests
                .into_iter()
                .filter(|r| r.at >= since && push(&r.path))
                .map(|r| r.at)
                .collect();
            at.sort();
            at
        };
        [
            times(self.fcm.requests(), |p| p.ends_with(":send")),
            times(self.apns.requests(), |p| p.starts_with("/3/device/")),
            times(self.web.requests(), |_| true),
            times(self.hook.requests(), |_| true),
        ]
    }

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

/// `user`'s SetChatMuted: `muted` with no end, or unmuted.
pub async fn set_muted(c: &mut Client, chat_id: &str, muted: bool) {
    c.set_chat_muted(crate::pb::SetChatMutedRequest {
        chat_id: chat_id.to_string(),
        muted,
        until: 0,
    })
    .await
    .unwrap_or_else(|s| panic!("SetChatMuted({chat_id}, {muted}): {s:?}"));
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

/// The push benchmark (embedded or cluster): a group of MEMBERS offline members, each with a
/// token at every provider, and one message per round (one push per member per provider).
/// Prints, per provider, the delay from the send to its first and last push and the pushes per
/// second between them.
pub async fn bench_fan_out(f: &Fakes, server: &TestServer) {
    const MEMBERS: usize = 300;
    const ROUNDS: usize = 3;
    let mut alice = server.client("alice", "laptop").await;
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let mut c = server.client(name, "phone").await;
        register(&mut c, PushProvider::Fcm, &format!("fcm-{i}")).await;
        register(&mut c, PushProvider::Apns, &format!("{i:064x}")).await;
        register(&mut c, PushProvider::Webpush, &f.web.new_subscription()).await;
        register(&mut c, PushProvider::Webhook, &format!("key-{i}")).await;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let group = create_group(&mut alice, "bench", &refs).await.chat_id;
    let providers = ["fcm", "apns", "webpush", "webhook"];
    for round in 1..=ROUNDS {
        let before = f.counts();
        let sent = Instant::now();
        send_text(&mut alice, &group, &format!("r{round}"), "bench").await;
        // Wait for every push, then time them by when each fake got them (a poll's own
        // timing would be the test process's scheduling, which shares the cores).
        while (0..4).any(|p| f.counts()[p] - before[p] < MEMBERS) {
            assert!(sent.elapsed() < Duration::from_secs(120), "pushes stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (p, times) in f.push_times(sent).into_iter().enumerate() {
            let first = times.first().map_or(Duration::ZERO, |t| *t - sent);
            let last = times.last().map_or(Duration::ZERO, |t| *t - sent);
            let rate = times.len() as f64 / (last - first).as_secs_f64().max(0.001);
            println!(
                "round {round} {:8} first push {:7.1} ms, last {:7.1} ms, {rate:8.0} pushes/s",
                providers[p],
                first.as_secs_f64() * 1e3,
                last.as_secs_f64() * 1e3,
            );
        }
        // Past the next pass, so rounds do not merge.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}
