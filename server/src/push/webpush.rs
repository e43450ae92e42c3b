//! Web Push (RFC 8030) to a browser's subscription.
//!
//! The device's token is the subscription the browser made (`{"endpoint", "keys": {"p256dh",
//! "auth"}}`). The endpoint is a URL the client chose, so it is only POSTed to when it is
//! https and on a known push service's host: otherwise any client could make the server send
//! requests anywhere (SSRF). The payload is encrypted to the subscription's keys (RFC 8291)
//! and the request signed with our VAPID key (RFC 8292).

use super::ece::{self, EceError, UaKeys};
use super::vapid::{self, VapidError, VapidKey};
use super::{Notice, Outcome, Provider, Sender, Target};
use crate::https::{HttpClient, Reply};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The push services of the browsers in use (Chrome/Edge via FCM, Firefox, legacy Edge/WNS,
/// Safari).
pub const DEFAULT_ALLOWED_HOSTS: [&str; 4] = [
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.notify.windows.com",
    "web.push.apple.com",
];

/// How long the push service keeps a push for an offline browser: a day, after which a chat
/// notification is stale.
const PUSH_TTL_SECS: u32 = 86_400;
/// Real endpoints are a few hundred bytes; this bounds what a client can make us store and use.
const MAX_ENDPOINT_LEN: usize = 2048;
/// Topic: at most 32 characters of the URL-safe base64 alphabet (RFC 8030 §5.4).
const TOPIC_LEN: usize = 32;
/// How much of a refusal's body goes into the reason.
const REASON_BODY_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPushConfig {
    /// The VAPID private key: PEM (PKCS#8 or SEC1) or the raw base64url key.
    pub vapid_key: PathBuf,
    /// The VAPID `sub`: `mailto:` or `https:` contact for the push services' operators.
    pub subject: String,
    /// Hosts an endpoint may be on: `host` (port 443), `host:port`, `*.domain` (any subdomain).
    pub allowed_hosts: Vec<String>,
}

impl WebPushConfig {
    pub fn new(vapid_key: PathBuf, subject: String) -> Self {
        WebPushConfig {
            vapid_key,
            subject,
            allowed_hosts: default_allowed_hosts(),
        }
    }
}

pub fn default_allowed_hosts() -> Vec<String> {
    DEFAULT_ALLOWED_HOSTS
        .iter()
        .map(|h| h.to_string())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum WebPushError {
    #[error("subscription: not a JSON object")]
    NotJson,
    #[error("subscription: {field} is missing or not a string")]
    Missing { field: &'static str },
    #[error("endpoint: {0}")]
    Endpoint(String),
    #[error(transparent)]
    Keys(#[from] EceError),
    #[error("allowed_hosts: bad pattern {0:?} (host, host:port or *.domain)")]
    BadHostPattern(String),
    #[error(transparent)]
    Vapid(#[from] VapidError),
}

/// A subscription, parsed and checked: an https endpoint and valid keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscription {
    endpoint: url::Url,
    keys: UaKeys,
}

impl std::fmt::Debug for Subscription {
    // The endpoint's path is the capability to push to this browser: only the origin shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("origin", &self.endpoint.origin().ascii_serialization())
            .field("keys", &self.keys)
            .finish()
    }
}

impl Subscription {
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    pub fn keys(&self) -> &UaKeys {
        &self.keys
    }

    fn host(&self) -> &str {
        self.endpoint.host_str().unwrap_or_default()
    }

    fn port(&self) -> u16 {
        self.endpoint.port_or_known_default().unwrap_or(443)
    }
}

fn text<'a>(
    v: Option<&'a serde_json::Value>,
    field: &'static str,
) -> Result<&'a str, WebPushError> {
    v.and_then(|v| v.as_str())
        .ok_or(WebPushError::Missing { field })
}

/// Parses a Web Push token (the browser's subscription JSON) and checks its shape: an https
/// endpoint and valid keys. Which hosts are allowed is the sender's configuration:
/// [`WebPushSender::validate`] checks both.
pub fn parse_subscription(token: &str) -> Result<Subscription, WebPushError> {
    let value: serde_json::Value =
        serde_json::from_str(token).map_err(|_| WebPushError::NotJson)?;
    let object = value.as_object().ok_or(WebPushError::NotJson)?;
    let endpoint = text(object.get("endpoint"), "endpoint")?;
    let keys = object.get("keys");
    let p256dh = text(keys.and_then(|k| k.get("p256dh")), ece::FIELD_P256DH)?;
    let auth = text(keys.and_then(|k| k.get("auth")), ece::FIELD_AUTH)?;

    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(WebPushError::Endpoint(format!(
            "longer than {MAX_ENDPOINT_LEN} bytes"
        )));
    }
    let endpoint = url::Url::parse(endpoint)
        .map_err(|e| WebPushError::Endpoint(format!("not a URL ({e})")))?;
    if endpoint.scheme() != "https" {
        return Err(WebPushError::Endpoint(format!(
            "must be https, not {}",
            endpoint.scheme()
        )));
    }
    if endpoint.host_str().is_none_or(str::is_empty) {
        return Err(WebPushError::Endpoint("has no host".into()));
    }
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(WebPushError::Endpoint("must not carry credentials".into()));
    }
    let keys = UaKeys::from_b64url(p256dh, auth)?;
    Ok(Subscription { endpoint, keys })
}

/// The hosts endpoints may point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts(Vec<HostPattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// Lowercase; for a wildcard, the suffix with its leading dot (`.notify.windows.com`).
    host: String,
    wildcard: bool,
    port: u16,
}

impl AllowedHosts {
    pub fn new(patterns: &[String]) -> Result<Self, WebPushError> {
        patterns
            .iter()
            .map(|p| HostPattern::parse(p).ok_or_else(|| WebPushError::BadHostPattern(p.clone())))
            .collect::<Result<Vec<_>, _>>()
            .map(AllowedHosts)
    }

    pub fn check(&self, sub: &Subscription) -> Result<(), WebPushError> {
        let (host, port) = (sub.host(), sub.port());
        let allowed = self.0.iter().any(|p| {
            p.port == port
                && if p.wildcard {
                    host.len() > p.host.len() && host.ends_with(&p.host)
                } else {
                    host == p.host
                }
        });
        if allowed {
            Ok(())
        } else {
            Err(WebPushError::Endpoint(format!(
                "{host}:{port} is not an allowed push service"
            )))
        }
    }
}

impl HostPattern {
    fn parse(pattern: &str) -> Option<Self> {
        let pattern = pattern.trim().to_ascii_lowercase();
        let (host, port) = match pattern.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                (host.to_owned(), port.parse().ok()?)
            }
            _ => (pattern.clone(), 443),
        };
        let (host, wildcard) = match host.strip_prefix('*') {
            Some(suffix) => (suffix.to_owned(), true),
            None => (host, false),
        };
        let name = if wildcard {
            host.strip_prefix('.')?
        } else {
            host.as_str()
        };
        // Parsed as a URL host, so the pattern means what the endpoint's host will be compared
        // as (IDNA, IPv6 brackets); anything with a path, scheme or a second wildcard fails.
        let url = url::Url::parse(&format!("https://{name}/")).ok()?;
        if url.host_str()? != name || name.contains('*') || name.is_empty() {
            return None;
        }
        Some(HostPattern {
            host,
            wildcard,
            port,
        })
    }
}

/// Web Push through the browsers' push services.
pub struct WebPushSender {
    http: HttpClient,
    vapid: VapidKey,
    subject: String,
    allowed: AllowedHosts,
}

impl std::fmt::Debug for WebPushSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushSender")
            .field("vapid", &self.vapid)
            .field("subject", &self.subject)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl WebPushSender {
    pub fn new(cfg: &WebPushConfig, http: HttpClient) -> Result<Self, WebPushError> {
        vapid::check_subject(&cfg.subject)?;
        Ok(WebPushSender {
            http,
            vapid: VapidKey::from_file(&cfg.vapid_key)?,
            subject: cfg.subject.clone(),
            allowed: AllowedHosts::new(&cfg.allowed_hosts)?,
        })
    }

    /// The VAPID public key the web page subscribes with (`applicationServerKey`).
    pub fn public_key_b64url(&self) -> &str {
        self.vapid.public_key_b64url()
    }

    /// A token as this sender would take it: the subscription's shape and an allowed host.
    pub fn validate(&self, token: &str) -> Result<Subscription, WebPushError> {
        let sub = parse_subscription(token)?;
        self.allowed.check(&sub)?;
        Ok(sub)
    }

    fn request(&self, sub: &Subscription, notice: &Notice) -> Result<http::Request<Bytes>, String> {
        let plaintext = payload(notice)?;
        let body = ece::encrypt(sub.keys(), &plaintext).map_err(|e| e.to_string())?;
        let authorization = self
            .vapid
            .authorization(sub.endpoint(), &self.subject, vapid::DEFAULT_TTL)
            .map_err(|e| e.to_string())?;
        let mut builder = http::Request::post(sub.endpoint())
            .header("ttl", PUSH_TTL_SECS)
            .header("urgency", "high")
            .header(http::header::CONTENT_ENCODING, "aes128gcm")
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(http::header::AUTHORIZATION, authorization);
        if !notice.collapse_key.is_empty() {
            builder = builder.header("topic", topic(&notice.collapse_key));
        }
        builder
            .body(Bytes::from(body))
            .map_err(|e| format!("request: {e}"))
    }
}

#[async_trait]
impl Sender for WebPushSender {
    fn provider(&self) -> Provider {
        Provider::WebPush
    }

    async fn send(&self, target: &Target, notice: &Notice) -> Outcome {
        let sub = match self.validate(&target.token) {
            Ok(sub) => sub,
            Err(e) => return Outcome::Permanent(format!("web push subscription refused: {e}")),
        };
        let request = match self.request(&sub, notice) {
            Ok(request) => request,
            Err(reason) => return Outcome::Permanent(reason),
        };
        match self.http.send(request).await {
            Ok(reply) => classify(&reply),
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, origin = %sub.endpoint.origin().ascii_serialization(), "web push not delivered");
                Outcome::Retry { after: None }
            }
            Err(e) => Outcome::Permanent(e.to_string()),
        }
    }
}

/// The push message the service worker gets: `{"title", "body", "count", "data"}`, without
/// the text when the notice is data-only. A body too long for one push is shortened.
fn payload(notice: &Notice) -> Result<Vec<u8>, String> {
    let mut body = notice.body.clone();
    loop {
        let mut json = serde_json::Map::new();
        if !notice.data_only {
            if let Some(title) = &notice.title {
                json.insert("title".into(), title.clone().into());
            }
            json.insert("body".into(), body.clone().into());
        }
        json.insert("count".into(), notice.count.into());
        let data = notice
            .data
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
            .collect();
        json.insert("data".into(), serde_json::Value::Object(data));
        let bytes = serde_json::to_vec(&json).map_err(|e| format!("payload: {e}"))?;
        let excess = bytes.len().saturating_sub(ece::MAX_PLAINTEXT);
        if excess == 0 {
            return Ok(bytes);
        }
        if notice.data_only || body.is_empty() {
            return Err(format!("payload of {} bytes is too large", bytes.len()));
        }
        // Escaping can make the JSON longer than the text; cutting the excess from the text
        // converges in a step or two.
        let mut cut = body.len().saturating_sub(excess + '…'.len_utf8());
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
        if cut == 0 {
            body.clear();
        }
    }
}

/// The `Topic` for a collapse key: its hash, so any key becomes 32 URL-safe base64 characters
/// (and the push service does not learn chat ids).
fn topic(collapse_key: &str) -> String {
    let digest = Sha256::digest(collapse_key.as_bytes());
    let mut topic = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    topic.truncate(TOPIC_LEN);
    topic
}

fn classify(reply: &Reply) -> Outcome {
    let status = reply.status.as_u16();
    match status {
        200..=299 => Outcome::Sent,
        404 | 410 => Outcome::DeadToken,
        429 | 500..=599 => Outcome::Retry {
            after: reply.retry_after(),
        },
        413 => Outcome::Permanent("payload too large".into()),
        _ => Outcome::Permanent(format!(
            "push service answered {status}: {}",
            body_text(&reply.body)
        )),
    }
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(REASON_BODY_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::https::HttpConfig;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use push_fakes::tls::TestPki;
    use push_fakes::webpush::{FakeWebPush, WebPushAnswer};
    use rand_core::OsRng;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const SUBJECT: &str = "mailto:ops@example.com";

    struct Setup {
        fake: FakeWebPush,
        sender: WebPushSender,
        _dir: tempfile::TempDir,
    }

    /// The fake service, and a sender that trusts the fake's CA and allows only the fake's
    /// `127.0.0.1:port` (plus `extra_hosts`).
    async fn setup(extra_hosts: &[&str]) -> Setup {
        let pki = TestPki::shared();
        let fake = FakeWebPush::start(pki).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        pki.write_ca_pem(&ca).unwrap();
        let key = dir.path().join("vapid.pem");
        let secret = p256::SecretKey::random(&mut OsRng);
        std::fs::write(
            &key,
            secret.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        let http = HttpClient::new(&HttpConfig {
            extra_ca_pem: Some(ca),
            timeout: Duration::from_secs(2),
        })
        .unwrap();
        let mut allowed_hosts = vec![fake.host_port()];
        allowed_hosts.extend(extra_hosts.iter().map(|h| h.to_string()));
        let cfg = WebPushConfig {
            vapid_key: key,
            subject: SUBJECT.into(),
            allowed_hosts,
        };
        let sender = WebPushSender::new(&cfg, http).unwrap();
        Setup {
            fake,
            sender,
            _dir: dir,
        }
    }

    fn target(token: String) -> Target {
        Target {
            user_id: "bob".into(),
            device_id: "browser-1".into(),
            provider: Provider::WebPush,
            token,
            app_id: String::new(),
            created_at: 0,
        }
    }

    fn notice() -> Notice {
        Notice {
            chat_id: "chat-42".into(),
            collapse_key: "chat-42".into(),
            title: Some("alice".into()),
            body: "alice: hi \"there\" ✓".into(),
            count: 2,
            data: BTreeMap::from([
                ("chat_id".to_string(), "chat-42".to_string()),
                ("seq".to_string(), "17".to_string()),
            ]),
            data_only: false,
        }
    }

    #[tokio::test]
    async fn the_fake_decrypts_exactly_the_payload_sent_with_the_rfc8030_headers() {
        let s = setup(&[]).await;
        let token = s.fake.new_subscription_for(s.sender.public_key_b64url());
        assert_eq!(
            s.sender.send(&target(token), &notice()).await,
            Outcome::Sent
        );

        let delivered = s.fake.delivered();
        assert_eq!(delivered.len(), 1, "refused: {:?}", s.fake.refused());
        let push = &delivered[0];
        assert_eq!(
            push.json().unwrap(),
            serde_json::json!({
                "title": "alice",
                "body": "alice: hi \"there\" ✓",
                "count": 2,
                "data": {"chat_id": "chat-42", "seq": "17"},
            })
        );
        assert_eq!(push.header("ttl"), Some("86400"));
        assert_eq!(push.header("urgency"), Some("high"));
        assert_eq!(push.header("content-encoding"), Some("aes128gcm"));
        assert_eq!(
            push.header("content-type"),
            Some("application/octet-stream")
        );
        let topic = push.header("topic").unwrap();
        assert_eq!(topic, super::topic("chat-42"));
        assert_eq!(topic.len(), 32);
        assert_ne!(super::topic("chat-43"), topic);
        assert!(!topic.contains("chat"), "the chat id stays ours: {topic}");
    }

    #[tokio::test]
    async fn vapid_is_verified_with_the_origins_port_in_aud() {
        let s = setup(&[]).await;
        let token = s.fake.new_subscription_for(s.sender.public_key_b64url());
        assert_eq!(
            s.sender.send(&target(token), &notice()).await,
            Outcome::Sent
        );
        let vapid = &s.fake.delivered()[0].vapid;
        let port = s.fake.url().rsplit(':').next().unwrap().to_owned();
        assert_eq!(vapid.aud, format!("https://127.0.0.1:{port}"));
        assert_eq!(vapid.sub, SUBJECT);
        assert_eq!(vapid.k, s.sender.public_key_b64url());
        let now = SystemTimeSecs::now();
        assert!(
            vapid.exp > now + 11 * 3600 && vapid.exp <= now + 12 * 3600,
            "{}",
            vapid.exp
        );
    }

    struct SystemTimeSecs;
    impl SystemTimeSecs {
        fn now() -> u64 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        }
    }

    #[tokio::test]
    async fn a_subscription_made_for_another_vapid_key_is_refused_permanently() {
        let s = setup(&[]).await;
        let other = VapidKey::from_secret(&p256::SecretKey::random(&mut OsRng)).unwrap();
        let token = s.fake.new_subscription_for(other.public_key_b64url());
        let outcome = s.sender.send(&target(token), &notice()).await;
        let Outcome::Permanent(reason) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            reason.contains("403") && reason.contains("applicationServerKey"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_data_only_push_carries_no_text() {
        let s = setup(&[]).await;
        let token = s.fake.new_subscription();
        let notice = Notice {
            data_only: true,
            ..notice()
        };
        assert_eq!(s.sender.send(&target(token), &notice).await, Outcome::Sent);
        let payload = s.fake.delivered()[0].json().unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"count": 2, "data": {"chat_id": "chat-42", "seq": "17"}})
        );
        let plaintext = String::from_utf8(s.fake.delivered()[0].plaintext.clone()).unwrap();
        assert!(!plaintext.contains("alice"), "{plaintext}");
    }

    #[tokio::test]
    async fn a_body_too_long_for_one_push_is_shortened_and_still_decrypts() {
        let s = setup(&[]).await;
        let token = s.fake.new_subscription();
        let notice = Notice {
            body: "ü\"".repeat(3000),
            ..notice()
        };
        assert_eq!(s.sender.send(&target(token), &notice).await, Outcome::Sent);
        let push = &s.fake.delivered()[0];
        assert!(push.plaintext.len() <= ece::MAX_PLAINTEXT);
        let body = push.json().unwrap()["body"].as_str().unwrap().to_owned();
        assert!(body.ends_with('…') && body.starts_with("ü\"ü"), "{body}");
        assert_eq!(push.json().unwrap()["data"]["seq"], "17");
    }

    #[tokio::test]
    async fn gone_and_not_found_mean_a_dead_token() {
        let s = setup(&[]).await;
        let gone = s.fake.new_subscription();
        s.fake.answer_for(&gone, WebPushAnswer::Gone);
        assert_eq!(
            s.sender.send(&target(gone), &notice()).await,
            Outcome::DeadToken
        );
        let missing = s.fake.new_subscription();
        s.fake.answer_next(WebPushAnswer::NotFound);
        assert_eq!(
            s.sender.send(&target(missing), &notice()).await,
            Outcome::DeadToken
        );
        let unsubscribed = s.fake.new_subscription();
        s.fake.unsubscribe(&unsubscribed);
        assert_eq!(
            s.sender.send(&target(unsubscribed), &notice()).await,
            Outcome::DeadToken
        );
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_are_retried_after_what_the_service_said() {
        let s = setup(&[]).await;
        let token = s.fake.new_subscription();
        s.fake.answer_next(WebPushAnswer::TooManyRequests {
            retry_after: Some(7),
        });
        assert_eq!(
            s.sender.send(&target(token.clone()), &notice()).await,
            Outcome::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        s.fake
            .answer_next(WebPushAnswer::Status(503, "maintenance".into()));
        assert_eq!(
            s.sender.send(&target(token.clone()), &notice()).await,
            Outcome::Retry { after: None }
        );
        s.fake
            .answer_next(WebPushAnswer::Status(413, String::new()));
        assert_eq!(
            s.sender.send(&target(token.clone()), &notice()).await,
            Outcome::Permanent("payload too large".into())
        );
        s.fake.answer_next(WebPushAnswer::Status(
            400,
            format!("bad request {}", "x".repeat(500)),
        ));
        let Outcome::Permanent(reason) = s.sender.send(&target(token.clone()), &notice()).await
        else {
            panic!("400 is permanent")
        };
        assert!(reason.contains("400: bad request xxx"), "{reason}");
        assert!(
            reason.len() < 260,
            "body cut to 200 chars: {}",
            reason.len()
        );
        // A stalled service is a transport failure: retried, no hint.
        s.fake.answer_next(WebPushAnswer::Stall);
        assert_eq!(
            s.sender.send(&target(token), &notice()).await,
            Outcome::Retry { after: None }
        );
    }

    #[tokio::test]
    async fn endpoints_off_the_allow_list_or_not_https_are_refused_without_a_request() {
        let s = setup(&[]).await;
        let good: serde_json::Value = serde_json::from_str(&s.fake.new_subscription()).unwrap();
        let port = s.fake.host_port().rsplit(':').next().unwrap().to_owned();
        let with_endpoint = |endpoint: String| {
            let mut token = good.clone();
            token["endpoint"] = endpoint.into();
            token.to_string()
        };
        let refused = [
            // The same server under a name that is not allowed.
            (
                with_endpoint(format!("https://localhost:{port}/wpush/x")),
                "not an allowed push service",
            ),
            // The allowed host on another port.
            (
                with_endpoint("https://127.0.0.1:1/wpush/x".into()),
                "not an allowed push service",
            ),
            (
                with_endpoint(format!("http://127.0.0.1:{port}/wpush/x")),
                "must be https",
            ),
            (
                with_endpoint("https://169.254.169.254/latest/meta-data".into()),
                "not an allowed push service",
            ),
            (
                with_endpoint(format!("https://user:pw@127.0.0.1:{port}/wpush/x")),
                "credentials",
            ),
            (r#"{"endpoint": 5}"#.to_string(), "endpoint is missing"),
            ("not json".to_string(), "not a JSON object"),
        ];
        for (token, why) in refused {
            let outcome = s.sender.send(&target(token.clone()), &notice()).await;
            let Outcome::Permanent(reason) = &outcome else {
                panic!("{token}: {outcome:?}")
            };
            assert!(reason.contains(why), "{token}: {reason}");
        }
        assert_eq!(s.fake.request_count(), 0);
    }

    #[test]
    fn parse_subscription_names_the_bad_field() {
        let p256dh = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        let ok = format!(
            r#"{{"endpoint":"https://fcm.googleapis.com/fcm/send/abc","expirationTime":null,"keys":{{"p256dh":"{p256dh}","auth":"BTBZMqHH6r4Tts7J_aSIgg"}}}}"#
        );
        let sub = parse_subscription(&ok).unwrap();
        assert_eq!(sub.endpoint(), "https://fcm.googleapis.com/fcm/send/abc");
        let debug = format!("{sub:?}");
        assert!(
            !debug.contains("send/abc") && !debug.contains("BTBZMqHH6r4Tts7J_aSIgg"),
            "{debug}"
        );

        let cases = [
            (
                ok.replace("BTBZMqHH6r4Tts7J_aSIgg", "AQI"),
                "keys.auth: 2 bytes, expected 16",
            ),
            (ok.replace(p256dh, "!!"), "keys.p256dh: not base64url"),
            (
                ok.replace(&p256dh[80..], "AAAAAAA"),
                "keys.p256dh: not a point on the P-256 curve",
            ),
            (
                ok.replace(r#","auth":"BTBZMqHH6r4Tts7J_aSIgg""#, ""),
                "keys.auth is missing",
            ),
            (
                ok.replace(r#""keys""#, r#""nokeys""#),
                "keys.p256dh is missing",
            ),
            (
                ok.replace("https://fcm", "ftp://fcm"),
                "endpoint: must be https",
            ),
            (
                ok.replace("https://fcm.googleapis.com/fcm/send/abc", "relative/path"),
                "endpoint: not a URL",
            ),
            ("[1,2]".to_string(), "subscription: not a JSON object"),
        ];
        for (token, expected) in cases {
            let err = parse_subscription(&token).unwrap_err().to_string();
            assert!(err.contains(expected), "{token}: {err}");
        }
    }

    #[test]
    fn host_patterns_match_hosts_ports_and_subdomains() {
        let allowed = AllowedHosts::new(&default_allowed_hosts()).unwrap();
        let sub = |endpoint: &str| {
            parse_subscription(&format!(
                r#"{{"endpoint":"{endpoint}","keys":{{"p256dh":"BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4","auth":"BTBZMqHH6r4Tts7J_aSIgg"}}}}"#
            ))
            .unwrap()
        };
        for ok in [
            "https://fcm.googleapis.com/fcm/send/x",
            "https://FCM.googleapis.com:443/fcm/send/x",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://db5p.notify.windows.com/w/?token=x",
            "https://web.push.apple.com/QGx",
        ] {
            allowed
                .check(&sub(ok))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for refused in [
            "https://notify.windows.com/x",
            "https://evilnotify.windows.com/x",
            "https://fcm.googleapis.com.evil.com/x",
            "https://fcm.googleapis.com:8443/x",
            "https://127.0.0.1/x",
        ] {
            assert!(allowed.check(&sub(refused)).is_err(), "{refused}");
        }
        let local =
            AllowedHosts::new(&["127.0.0.1:8443".into(), "*.Push.Example.com".into()]).unwrap();
        local.check(&sub("https://127.0.0.1:8443/x")).unwrap();
        local.check(&sub("https://a.b.push.example.com/x")).unwrap();
        assert!(local.check(&sub("https://127.0.0.1/x")).is_err());
        for bad in [
            "",
            "https://x.com",
            "x.com/path",
            "*",
            "*.",
            "a.*.com",
            "x.com:99999",
        ] {
            assert!(AllowedHosts::new(&[bad.to_string()]).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_bad_config_is_refused_and_debug_shows_no_private_key() {
        let s = setup(&[]).await;
        let debug = format!("{:?}", s.sender);
        assert!(
            debug.contains(s.sender.public_key_b64url()) && debug.contains("redacted"),
            "{debug}"
        );
        let pem = std::fs::read_to_string(s._dir.path().join("vapid.pem")).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!debug.contains(&body[..20]), "{debug}");

        let http = HttpClient::new(&HttpConfig::default()).unwrap();
        let cfg = WebPushConfig::new(s._dir.path().join("vapid.pem"), "ops@example.com".into());
        assert!(matches!(
            WebPushSender::new(&cfg, http.clone()),
            Err(WebPushError::Vapid(VapidError::BadSubject(_)))
        ));
        let cfg = WebPushConfig {
            allowed_hosts: vec!["https://x.com/".into()],
            ..WebPushConfig::new(s._dir.path().join("vapid.pem"), SUBJECT.into())
        };
        assert!(matches!(
            WebPushSender::new(&cfg, http.clone()),
            Err(WebPushError::BadHostPattern(_))
        ));
        let cfg = WebPushConfig::new(s._dir.path().join("missing.pem"), SUBJECT.into());
        assert!(matches!(
            WebPushSender::new(&cfg, http),
            Err(WebPushError::Vapid(VapidError::Read { .. }))
        ));
    }
}
