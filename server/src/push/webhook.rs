//! A Sygnal-like webhook gateway.
//!
//! For apps whose pushes go through a gateway of their own (a Matrix push gateway, a UnifiedPush
//! distributor bridge…): the server POSTs a notification to the one gateway URL the operator
//! configured, naming the device by its pushkey. The token is only a pushkey, never a URL: a
//! client must not choose where the server sends requests.

use super::{Notice, Outcome, Provider, Sender, Target};
use crate::https::{HttpClient, Reply};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;

/// How much of a refusal's body goes into the reason.
const REASON_BODY_CHARS: usize = 200;

#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The gateway's notify URL (e.g. `https://push.example.com/_matrix/push/v1/notify`).
    pub url: String,
    /// Sent as `Authorization: Bearer <secret>` when set.
    pub secret: Option<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("webhook secret: not usable in an HTTP header")]
    BadSecret,
}

/// Pushes through the configured gateway.
pub struct WebhookSender {
    http: HttpClient,
    url: http::Uri,
    authorization: Option<http::HeaderValue>,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    pub fn new(cfg: &WebhookConfig, http: HttpClient) -> Result<Self, WebhookError> {
        let bad = |reason: &str| WebhookError::BadUrl {
            url: cfg.url.clone(),
            reason: reason.to_owned(),
        };
        let url: http::Uri = cfg.url.parse().map_err(|_| bad("not a URL"))?;
        // http is allowed for a gateway beside the server (loopback, a private network): the
        // operator chose it.
        if !matches!(url.scheme_str(), Some("https" | "http")) || url.host().is_none() {
            return Err(bad("must be an absolute http(s) URL"));
        }
        let authorization = match &cfg.secret {
            Some(secret) => {
                let mut value = http::HeaderValue::try_from(format!("Bearer {secret}"))
                    .map_err(|_| WebhookError::BadSecret)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(WebhookSender {
            http,
            url,
            authorization,
        })
    }

    fn request(&self, target: &Target, notice: &Notice) -> Result<http::Request<Bytes>, String> {
        let mut builder = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(value) = &self.authorization {
            builder = builder.header(http::header::AUTHORIZATION, value.clone());
        }
        let body = serde_json::to_vec(&notification(target, notice))
            .map_err(|e| format!("notification: {e}"))?;
        builder
            .body(Bytes::from(body))
            .map_err(|e| format!("request: {e}"))
    }
}

/// The Sygnal-style notification for one device.
fn notification(target: &Target, notice: &Notice) -> serde_json::Value {
    let mut n = serde_json::Map::new();
    if let Some(id) = notice.data.get("message_id") {
        n.insert("event_id".into(), id.clone().into());
    }
    n.insert("room_id".into(), notice.chat_id.clone().into());
    n.insert("type".into(), "message".into());
    if let Some(sender) = notice.data.get("sender_id") {
        n.insert("sender".into(), sender.clone().into());
    }
    n.insert("counts".into(), json!({ "unread": notice.count }));
    if !notice.data_only {
        let mut content = serde_json::Map::new();
        content.insert("body".into(), notice.body.clone().into());
        if let Some(title) = &notice.title {
            content.insert("title".into(), title.clone().into());
        }
        n.insert("content".into(), content.into());
    }
    n.insert("prio".into(), "high".into());
    n.insert(
        "devices".into(),
        json!([{
            "app_id": target.app_id,
            "pushkey": target.token,
            "data": notice.data,
        }]),
    );
    json!({ "notification": n })
}

#[async_trait]
impl Sender for WebhookSender {
    fn provider(&self) -> Provider {
        Provider::Webhook
    }

    async fn send(&self, target: &Target, notice: &Notice) -> Outcome {
        let request = match self.request(target, notice) {
            Ok(request) => request,
            Err(reason) => return Outcome::Permanent(reason),
        };
        match self.http.send(request).await {
            Ok(reply) => classify(&reply, &target.token),
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "webhook push not delivered");
                Outcome::Retry { after: None }
            }
            Err(e) => Outcome::Permanent(e.to_string()),
        }
    }
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    rejected: Vec<String>,
}

fn classify(reply: &Reply, pushkey: &str) -> Outcome {
    let status = reply.status.as_u16();
    match status {
        200..=299 => match serde_json::from_slice::<Answer>(&reply.body) {
            Ok(answer) if answer.rejected.iter().any(|k| k == pushkey) => Outcome::DeadToken,
            Ok(_) => Outcome::Sent,
            // The gateway took the notification; only its list of dead keys is unreadable.
            Err(e) => {
                tracing::debug!(error = %e, "webhook answer without a readable rejected list");
                Outcome::Sent
            }
        },
        429 | 500..=599 => Outcome::Retry {
            after: reply.retry_after(),
        },
        _ => Outcome::Permanent(format!(
            "webhook gateway answered {status}: {}",
            String::from_utf8_lossy(&reply.body)
                .trim()
                .chars()
                .take(REASON_BODY_CHARS)
                .collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::https::HttpConfig;
    use push_fakes::server::Answer;
    use push_fakes::tls::TestPki;
    use push_fakes::webhook::FakeWebhook;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const SECRET: &str = "gateway-secret-5b7e";

    struct Setup {
        fake: FakeWebhook,
        sender: WebhookSender,
        _dir: tempfile::TempDir,
    }

    async fn setup(secret: Option<&str>) -> Setup {
        let pki = TestPki::shared();
        let fake = FakeWebhook::start(pki, Some(SECRET)).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        pki.write_ca_pem(&ca).unwrap();
        let http = HttpClient::new(&HttpConfig {
            extra_ca_pem: Some(ca),
            timeout: Duration::from_secs(2),
        })
        .unwrap();
        let cfg = WebhookConfig {
            url: fake.url(),
            secret: secret.map(str::to_owned),
        };
        Setup {
            sender: WebhookSender::new(&cfg, http).unwrap(),
            fake,
            _dir: dir,
        }
    }

    fn target(pushkey: &str) -> Target {
        Target {
            user_id: "bob".into(),
            device_id: "phone-1".into(),
            provider: Provider::Webhook,
            token: pushkey.into(),
            app_id: "org.example.chat.android".into(),
            created_at: 0,
        }
    }

    fn notice() -> Notice {
        Notice {
            chat_id: "chat-42".into(),
            collapse_key: "chat-42".into(),
            title: Some("alice".into()),
            body: "alice: hi".into(),
            count: 3,
            data: BTreeMap::from([
                ("chat_id".to_string(), "chat-42".to_string()),
                ("message_id".to_string(), "m-9".to_string()),
                ("sender_id".to_string(), "alice".to_string()),
            ]),
            data_only: false,
        }
    }

    #[tokio::test]
    async fn the_gateway_gets_a_sygnal_notification_with_the_bearer_secret() {
        let s = setup(Some(SECRET)).await;
        assert_eq!(
            s.sender.send(&target("pk-1"), &notice()).await,
            Outcome::Sent
        );
        let request = &s.fake.requests()[0];
        assert_eq!(request.method, http::Method::POST);
        assert_eq!(
            request.header("authorization"),
            Some("Bearer gateway-secret-5b7e")
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            s.fake.notifications(),
            vec![serde_json::json!({
                "event_id": "m-9",
                "room_id": "chat-42",
                "type": "message",
                "sender": "alice",
                "counts": {"unread": 3},
                "content": {"body": "alice: hi", "title": "alice"},
                "prio": "high",
                "devices": [{
                    "app_id": "org.example.chat.android",
                    "pushkey": "pk-1",
                    "data": {"chat_id": "chat-42", "message_id": "m-9", "sender_id": "alice"},
                }],
            })]
        );
    }

    #[tokio::test]
    async fn a_data_only_notification_has_no_content() {
        let s = setup(Some(SECRET)).await;
        let notice = Notice {
            data_only: true,
            ..notice()
        };
        assert_eq!(s.sender.send(&target("pk-1"), &notice).await, Outcome::Sent);
        let n = &s.fake.notifications()[0];
        assert!(n.get("content").is_none(), "{n}");
        assert!(!n.to_string().contains("alice: hi"), "{n}");
        assert_eq!(n["counts"]["unread"], 3);
    }

    #[tokio::test]
    async fn a_rejected_pushkey_is_a_dead_token_and_only_that_one() {
        let s = setup(Some(SECRET)).await;
        s.fake.reject("pk-dead");
        assert_eq!(
            s.sender.send(&target("pk-dead"), &notice()).await,
            Outcome::DeadToken
        );
        assert_eq!(
            s.sender.send(&target("pk-live"), &notice()).await,
            Outcome::Sent
        );
        // A list naming some other device does not kill ours.
        s.fake.answer_next(Answer::json(
            200,
            &serde_json::json!({"rejected": ["pk-other"]}),
        ));
        assert_eq!(
            s.sender.send(&target("pk-live"), &notice()).await,
            Outcome::Sent
        );
    }

    #[tokio::test]
    async fn rate_limits_and_errors_are_classified() {
        let s = setup(Some(SECRET)).await;
        s.fake
            .answer_next(Answer::status(429).header("retry-after", "9"));
        assert_eq!(
            s.sender.send(&target("pk-1"), &notice()).await,
            Outcome::Retry {
                after: Some(Duration::from_secs(9))
            }
        );
        s.fake.answer_next(Answer::status(502));
        assert_eq!(
            s.sender.send(&target("pk-1"), &notice()).await,
            Outcome::Retry { after: None }
        );
        s.fake.answer_next(Answer::stall());
        assert_eq!(
            s.sender.send(&target("pk-1"), &notice()).await,
            Outcome::Retry { after: None }
        );

        // The gateway refuses a wrong secret: no retry fixes that.
        let wrong = setup(Some("not-the-secret")).await;
        let outcome = wrong.sender.send(&target("pk-1"), &notice()).await;
        let Outcome::Permanent(reason) = &outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            reason.contains("401") && reason.contains("M_UNAUTHORIZED"),
            "{reason}"
        );
        assert!(wrong.fake.notifications().is_empty());
    }

    #[tokio::test]
    async fn the_secret_stays_out_of_debug_and_bad_urls_are_refused() {
        let s = setup(Some(SECRET)).await;
        let cfg = WebhookConfig {
            url: s.fake.url(),
            secret: Some(SECRET.into()),
        };
        for debug in [format!("{cfg:?}"), format!("{:?}", s.sender)] {
            assert!(
                !debug.contains(SECRET) && debug.contains("redacted"),
                "{debug}"
            );
        }
        let http = HttpClient::new(&HttpConfig::default()).unwrap();
        for url in [
            "gateway.example.com/notify",
            "ftp://gateway.example.com/",
            "/notify",
        ] {
            let cfg = WebhookConfig {
                url: url.into(),
                secret: None,
            };
            assert!(
                matches!(
                    WebhookSender::new(&cfg, http.clone()),
                    Err(WebhookError::BadUrl { .. })
                ),
                "{url}"
            );
        }
        let cfg = WebhookConfig {
            url: s.fake.url(),
            secret: Some("line\nbreak".into()),
        };
        assert!(matches!(
            WebhookSender::new(&cfg, http),
            Err(WebhookError::BadSecret)
        ));
    }
}
