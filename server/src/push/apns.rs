//! APNs over HTTP/2 with a token-based provider connection (a `.p8` key, ES256 JWTs).
//!
//! Apple refuses a provider token older than an hour and throttles one renewed more often than
//! every 20 minutes (TooManyProviderTokenUpdates), so one token is made and reused for
//! `token_ttl`, and remade early only when APNs says it expired or is invalid.

use super::{Notice, Outcome, Provider, Sender, Target};
use crate::https::{HttpClient, HttpConfig, HttpError, Reply};
use async_trait::async_trait;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULT_BASE_URL: &str = "https://api.push.apple.com";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(40 * 60);
/// Apple: not renewed more often than every 20 minutes, not used longer than an hour.
pub const TOKEN_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(20 * 60)..=Duration::from_secs(60 * 60);
/// APNs keeps an undeliverable push this long (device off) before dropping it; a chat push
/// older than a day is noise.
const EXPIRATION: Duration = Duration::from_secs(24 * 3600);
/// APNs refuses a larger payload (413).
const MAX_PAYLOAD: usize = 4096;
/// Longer alert text is cut (at a character) so the payload stays under [`MAX_PAYLOAD`].
const MAX_TITLE: usize = 256;
const MAX_BODY: usize = 1024;
/// APNs' limit on `apns-collapse-id`.
const MAX_COLLAPSE_ID: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsConfig {
    /// The `.p8` file Apple issued: a PKCS#8 P-256 private key.
    pub key: PathBuf,
    /// The key's id (`kid`), ten characters.
    pub key_id: String,
    /// The developer team id (`iss`).
    pub team_id: String,
    /// The default `apns-topic`, the app's bundle id; a [`Target`]'s non-empty `app_id`
    /// overrides it.
    pub topic: String,
    pub base_url: String,
    /// How long one provider token is used (20 to 60 minutes).
    pub token_ttl: Duration,
}

impl ApnsConfig {
    pub fn new(key: PathBuf, key_id: &str, team_id: &str, topic: &str) -> Self {
        ApnsConfig {
            key,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            topic: topic.to_owned(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            token_ttl: DEFAULT_TOKEN_TTL,
        }
    }
}

/// What is wrong with the APNs settings. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("APNs key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("APNs key {path}: not a PKCS#8 P-256 private key (an Apple .p8 file)")]
    BadKey { path: PathBuf },
    #[error("APNs `{field}` {reason}")]
    BadField {
        field: &'static str,
        reason: &'static str,
    },
    #[error("APNs token_ttl {0:?}: must be 20 to 60 minutes")]
    TokenTtl(Duration),
    #[error("APNs HTTP/2 client: {0}")]
    Http(#[from] HttpError),
}

struct ProviderToken {
    jwt: String,
    made: Instant,
}

/// Sends through APNs.
pub struct ApnsSender {
    http: HttpClient,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    topic: String,
    base_url: String,
    token_ttl: Duration,
    /// Signing is quick, so the lock is simply held while a token is made: concurrent pushes
    /// wait for the one being made rather than making several (which APNs throttles).
    token: Mutex<Option<ProviderToken>>,
}

impl std::fmt::Debug for ApnsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsSender")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("base_url", &self.base_url)
            .field("token_ttl", &self.token_ttl)
            .field("key", &"<redacted>")
            .field("provider_token", &"<redacted>")
            .finish()
    }
}

impl ApnsSender {
    /// Loads and checks the key and settings, and makes the HTTP/2-only client APNs needs
    /// (its own pool: APNs wants few long-lived connections, and speaks nothing but HTTP/2).
    pub fn new(cfg: &ApnsConfig, http: &HttpConfig) -> Result<Self, ApnsError> {
        let id_ok = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok(&cfg.key_id) {
            return Err(ApnsError::BadField {
                field: "key_id",
                reason: "must be the key's alphanumeric id",
            });
        }
        if !id_ok(&cfg.team_id) {
            return Err(ApnsError::BadField {
                field: "team_id",
                reason: "must be the team's alphanumeric id",
            });
        }
        if cfg.topic.is_empty() {
            return Err(ApnsError::BadField {
                field: "topic",
                reason: "must be the app's bundle id",
            });
        }
        if !TOKEN_TTL_RANGE.contains(&cfg.token_ttl) {
            return Err(ApnsError::TokenTtl(cfg.token_ttl));
        }
        let pem = std::fs::read_to_string(&cfg.key).map_err(|source| ApnsError::ReadKey {
            path: cfg.key.clone(),
            source,
        })?;
        let bad_key = || ApnsError::BadKey {
            path: cfg.key.clone(),
        };
        // Parsed here so a wrong file fails at start; jsonwebtoken's ES256 signer takes the
        // PKCS#8 DER.
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).map_err(|_| bad_key())?;
        let der = secret.to_pkcs8_der().map_err(|_| bad_key())?;
        Ok(ApnsSender {
            http: HttpClient::http2_only(http)?,
            key: EncodingKey::from_ec_der(der.as_bytes()),
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            topic: cfg.topic.clone(),
            base_url: cfg.base_url.trim_end_matches('/').to_owned(),
            token_ttl: cfg.token_ttl,
            token: Mutex::new(None),
        })
    }

    /// The current provider token, made if there is none or it is older than `token_ttl`.
    fn provider_token(&self) -> Result<String, Outcome> {
        let mut slot = self.token.lock();
        if let Some(token) = slot.as_ref() {
            if token.made.elapsed() < self.token_ttl {
                return Ok(token.jwt.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = json!({ "iss": self.team_id, "iat": unix_now() });
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            Outcome::Permanent(format!("APNs provider token cannot be signed: {e}"))
        })?;
        *slot = Some(ProviderToken {
            jwt: jwt.clone(),
            made: Instant::now(),
        });
        Ok(jwt)
    }

    /// Drops the token APNs refused, unless another push replaced it already.
    fn forget_token(&self, refused: &str) {
        let mut slot = self.token.lock();
        if slot.as_ref().is_some_and(|t| t.jwt == refused) {
            *slot = None;
        }
    }

    fn request(
        &self,
        device_token: &str,
        topic: &str,
        notice: &Notice,
        jwt: &str,
        payload: &Bytes,
    ) -> Result<http::Request<Bytes>, Outcome> {
        let expiration = unix_now() + EXPIRATION.as_secs();
        let mut req = http::Request::post(format!("{}/3/device/{device_token}", self.base_url))
            .header(http::header::AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", topic)
            // Always a visible alert, also for data_only (see `payload`).
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", expiration.to_string())
            .header(http::header::CONTENT_TYPE, "application/json");
        if !notice.collapse_key.is_empty() {
            req = req.header("apns-collapse-id", collapse_id(&notice.collapse_key));
        }
        req.body(payload.clone())
            .map_err(|e| Outcome::Permanent(format!("APNs request: {e}")))
    }
}

#[async_trait]
impl Sender for ApnsSender {
    fn provider(&self) -> Provider {
        Provider::Apns
    }

    async fn send(&self, target: &Target, notice: &Notice) -> Outcome {
        // A device token is hex; anything else never becomes a valid one (and must not reach
        // the URL path).
        if target.token.is_empty() || !target.token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Outcome::DeadToken;
        }
        let topic = if target.app_id.is_empty() {
            self.topic.as_str()
        } else {
            target.app_id.as_str()
        };
        let payload = payload(notice);
        if payload.len() > MAX_PAYLOAD {
            return Outcome::Permanent(format!(
                "APNs payload of {} bytes is over {MAX_PAYLOAD}",
                payload.len()
            ));
        }
        let mut remade = false;
        loop {
            let jwt = match self.provider_token() {
                Ok(jwt) => jwt,
                Err(outcome) => return outcome,
            };
            let req = match self.request(&target.token, topic, notice, &jwt, &payload) {
                Ok(req) => req,
                Err(outcome) => return outcome,
            };
            let reply = match self.http.send(req).await {
                Ok(reply) => reply,
                Err(e) if e.is_transient() => {
                    tracing::debug!(error = %e, "APNs unreachable");
                    return Outcome::Retry { after: None };
                }
                Err(e) => return Outcome::Permanent(format!("APNs: {e}")),
            };
            let why = reason(&reply);
            let token_refused = reply.status == http::StatusCode::FORBIDDEN
                && matches!(
                    why.as_str(),
                    "ExpiredProviderToken" | "InvalidProviderToken" | "MissingProviderToken"
                );
            if token_refused && !remade {
                self.forget_token(&jwt);
                remade = true;
                continue;
            }
            if token_refused {
                return Outcome::Permanent(format!("APNs refused the provider token: {why}"));
            }
            return classify(&reply, &why);
        }
    }
}

/// `{"aps": {...}, "data": {...}}`.
///
/// `data_only` (end-to-end encrypted chats) is sent as an alert with the generic body and
/// `mutable-content: 1`, not as a background push: iOS throttles background pushes to a few an
/// hour and drops them for an app the user force-quit, while a mutable alert always wakes the
/// app's notification service extension, which fetches and decrypts the message and replaces
/// the generic text (or leaves it, if it cannot).
///
/// No `badge`: the badge is the device's total unread count, which this push (standing for
/// `count` new messages in one chat) does not know; the app sets it.
fn payload(notice: &Notice) -> Bytes {
    let mut alert = json!({ "body": cut(&notice.body, MAX_BODY) });
    if let Some(title) = &notice.title {
        alert["title"] = json!(cut(title, MAX_TITLE));
    }
    let mut aps = json!({ "alert": alert, "thread-id": notice.chat_id });
    if notice.data_only {
        aps["mutable-content"] = json!(1);
    }
    let mut data: Map<String, Value> = notice
        .data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    data.insert("count".to_owned(), Value::String(notice.count.to_string()));
    Bytes::from(json!({ "aps": aps, "data": data }).to_string())
}

/// The collapse key as an `apns-collapse-id`: itself if it fits in 64 bytes, else its SHA-256
/// in hex (64 characters), so two long keys never collide by truncation.
pub(crate) fn collapse_id(key: &str) -> String {
    if key.len() <= MAX_COLLAPSE_ID {
        return key.to_owned();
    }
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// APNs' `{"reason": "..."}`.
fn reason(reply: &Reply) -> String {
    serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|j| j.get("reason").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

/// An answer other than a provider-token refusal.
fn classify(reply: &Reply, why: &str) -> Outcome {
    let status = reply.status.as_u16();
    match status {
        200..=299 => Outcome::Sent,
        410 => Outcome::DeadToken,
        400 if matches!(why, "BadDeviceToken" | "DeviceTokenNotForTopic") => Outcome::DeadToken,
        429 | 500..=599 => Outcome::Retry {
            after: reply.retry_after(),
        },
        _ => {
            let why: String = why.chars().take(100).collect();
            Outcome::Permanent(format!(
                "APNs {status}: {}",
                if why.is_empty() { "no reason" } else { &why }
            ))
        }
    }
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use push_fakes::apns::{ApnsAnswer, FakeApns, KEY_ID, TEAM_ID, TOPIC};
    use push_fakes::tls::TestPki;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const DEVICE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    struct Setup {
        fake: FakeApns,
        sender: Arc<ApnsSender>,
        cfg: ApnsConfig,
        http: HttpConfig,
        dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let pki = TestPki::shared();
        let fake = FakeApns::start(pki).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        pki.write_ca_pem(&ca).unwrap();
        let key = dir.path().join("AuthKey.p8");
        fake.write_key(&key).unwrap();
        let http = HttpConfig {
            extra_ca_pem: Some(ca),
            timeout: Duration::from_secs(10),
        };
        let cfg = ApnsConfig {
            base_url: fake.url(),
            ..ApnsConfig::new(key, KEY_ID, TEAM_ID, TOPIC)
        };
        let sender = Arc::new(ApnsSender::new(&cfg, &http).unwrap());
        Setup {
            fake,
            sender,
            cfg,
            http,
            dir,
        }
    }

    fn target(token: &str) -> Target {
        Target {
            user_id: "u1".into(),
            device_id: "d1".into(),
            provider: Provider::Apns,
            token: token.into(),
            app_id: String::new(),
            created_at: 0,
        }
    }

    fn notice() -> Notice {
        Notice {
            chat_id: "chat-7".into(),
            collapse_key: "chat-7".into(),
            title: Some("alice".into()),
            body: "alice: hi".into(),
            count: 3,
            data: BTreeMap::from([("chat_id".into(), "chat-7".into())]),
            data_only: false,
        }
    }

    #[tokio::test]
    async fn a_push_is_an_http2_request_with_the_apns_headers() {
        let s = setup().await;
        assert_eq!(
            s.sender.send(&target(DEVICE), &notice()).await,
            Outcome::Sent
        );

        let requests = s.fake.requests();
        assert_eq!(requests.len(), 1);
        let req = &requests[0];
        assert_eq!(req.version, http::Version::HTTP_2);
        assert_eq!(req.path, format!("/3/device/{DEVICE}"));
        assert_eq!(req.header("apns-topic"), Some(TOPIC));
        assert_eq!(req.header("apns-push-type"), Some("alert"));
        assert_eq!(req.header("apns-priority"), Some("10"));
        assert_eq!(req.header("apns-collapse-id"), Some("chat-7"));
        let expiration: u64 = req.header("apns-expiration").unwrap().parse().unwrap();
        assert!(expiration > unix_now() + 3600);
        assert!(req.header("authorization").unwrap().starts_with("bearer "));

        let payload = &s.fake.delivered()[0].payload;
        assert_eq!(
            payload,
            &json!({
                "aps": {"alert": {"title": "alice", "body": "alice: hi"}, "thread-id": "chat-7"},
                "data": {"chat_id": "chat-7", "count": "3"},
            })
        );
    }

    #[tokio::test]
    async fn data_only_is_a_mutable_alert_and_app_id_overrides_the_topic() {
        let s = setup().await;
        s.fake.allow_topic("org.example.other");
        let t = Target {
            app_id: "org.example.other".into(),
            ..target(DEVICE)
        };
        let n = Notice {
            title: None,
            body: "New message".into(),
            data_only: true,
            ..notice()
        };
        assert_eq!(s.sender.send(&t, &n).await, Outcome::Sent);
        let delivered = &s.fake.delivered()[0];
        assert_eq!(delivered.headers["apns-topic"], "org.example.other");
        assert_eq!(delivered.payload["aps"]["mutable-content"], 1);
        assert_eq!(
            delivered.payload["aps"]["alert"],
            json!({"body": "New message"})
        );
    }

    #[tokio::test]
    async fn one_provider_token_serves_many_pushes() {
        let s = setup().await;
        let pushes = (0..10).map(|_| {
            let sender = s.sender.clone();
            tokio::spawn(async move { sender.send(&target(DEVICE), &notice()).await })
        });
        for push in pushes.collect::<Vec<_>>() {
            assert_eq!(push.await.unwrap(), Outcome::Sent);
        }
        assert_eq!(s.fake.delivered().len(), 10);
        assert_eq!(s.fake.provider_tokens_seen(), 1);
    }

    #[tokio::test]
    async fn an_expired_provider_token_is_remade_and_the_push_retried() {
        let s = setup().await;
        assert_eq!(
            s.sender.send(&target(DEVICE), &notice()).await,
            Outcome::Sent
        );
        // `iat` has a one-second resolution: the remade token must differ from the old one.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        s.fake.expire_provider_tokens();
        assert_eq!(
            s.sender.send(&target(DEVICE), &notice()).await,
            Outcome::Sent
        );
        assert_eq!(s.fake.provider_tokens_seen(), 2);
        assert_eq!(s.fake.requests().len(), 3);
        // The new token is kept.
        assert_eq!(
            s.sender.send(&target(DEVICE), &notice()).await,
            Outcome::Sent
        );
        assert_eq!(s.fake.provider_tokens_seen(), 2);
    }

    #[tokio::test]
    async fn a_provider_token_refused_twice_is_permanent() {
        let s = setup().await;
        s.fake.answer_next(ApnsAnswer::InvalidProviderToken);
        s.fake.answer_next(ApnsAnswer::ExpiredProviderToken);
        match s.sender.send(&target(DEVICE), &notice()).await {
            Outcome::Permanent(reason) => {
                assert!(reason.contains("ExpiredProviderToken"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.fake.requests().len(), 2);
    }

    #[tokio::test]
    async fn a_token_signed_with_another_key_is_refused() {
        let s = setup().await;
        let stranger = FakeApns::start(TestPki::shared()).await;
        let key = s.dir.path().join("other.p8");
        stranger.write_key(&key).unwrap();
        let cfg = ApnsConfig {
            key,
            ..s.cfg.clone()
        };
        let sender = ApnsSender::new(&cfg, &s.http).unwrap();
        assert_eq!(
            sender.send(&target(DEVICE), &notice()).await,
            Outcome::Permanent("APNs refused the provider token: InvalidProviderToken".into())
        );
        assert_eq!(s.fake.requests().len(), 2, "remade and tried once more");
        assert!(s.fake.delivered().is_empty());
    }

    #[tokio::test]
    async fn answers_are_classified() {
        let s = setup().await;
        let cases = [
            (ApnsAnswer::Unregistered, Outcome::DeadToken),
            (ApnsAnswer::BadDeviceToken, Outcome::DeadToken),
            (ApnsAnswer::DeviceTokenNotForTopic, Outcome::DeadToken),
            (
                ApnsAnswer::TooManyRequests {
                    retry_after: Some(2),
                },
                Outcome::Retry {
                    after: Some(Duration::from_secs(2)),
                },
            ),
            (
                ApnsAnswer::Status(500, "InternalServerError".into()),
                Outcome::Retry { after: None },
            ),
            (
                ApnsAnswer::Status(503, "ServiceUnavailable".into()),
                Outcome::Retry { after: None },
            ),
            (
                ApnsAnswer::Status(400, "BadTopic".into()),
                Outcome::Permanent("APNs 400: BadTopic".into()),
            ),
            (
                ApnsAnswer::Status(413, "PayloadTooLarge".into()),
                Outcome::Permanent("APNs 413: PayloadTooLarge".into()),
            ),
        ];
        for (answer, expected) in cases {
            s.fake.answer_next(answer.clone());
            assert_eq!(
                s.sender.send(&target(DEVICE), &notice()).await,
                expected,
                "{answer:?}"
            );
        }
        s.fake.answer_for_token(DEVICE, ApnsAnswer::Unregistered);
        assert_eq!(
            s.sender.send(&target(DEVICE), &notice()).await,
            Outcome::DeadToken
        );
        assert_eq!(s.fake.provider_tokens_seen(), 1);
    }

    #[tokio::test]
    async fn the_fakes_own_checks_pass_for_long_keys_and_refuse_bad_tokens_early() {
        let s = setup().await;
        let n = Notice {
            collapse_key: "k".repeat(200),
            body: "é".repeat(3000),
            ..notice()
        };
        assert_eq!(s.sender.send(&target(DEVICE), &n).await, Outcome::Sent);
        let delivered = &s.fake.delivered()[0];
        assert_eq!(delivered.headers["apns-collapse-id"].len(), 64);
        assert!(
            delivered.payload["aps"]["alert"]["body"]
                .as_str()
                .unwrap()
                .len()
                <= MAX_BODY
        );

        // Not hex: never sent.
        assert_eq!(
            s.sender.send(&target("../../x"), &notice()).await,
            Outcome::DeadToken
        );
        assert_eq!(s.fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_apns_is_a_retry() {
        let s = setup().await;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = ApnsConfig {
            base_url: format!("https://127.0.0.1:{port}"),
            ..s.cfg.clone()
        };
        let sender = ApnsSender::new(&cfg, &s.http).unwrap();
        assert_eq!(
            sender.send(&target(DEVICE), &notice()).await,
            Outcome::Retry { after: None }
        );
    }

    #[tokio::test]
    async fn settings_are_checked_and_secrets_not_shown() {
        let s = setup().await;
        assert_eq!(
            s.sender.send(&target(DEVICE), &notice()).await,
            Outcome::Sent
        );
        let debug = format!("{:?}", s.sender);
        let bearer = s.fake.requests()[0]
            .header("authorization")
            .unwrap()
            .to_owned();
        assert!(
            !debug.contains(bearer.trim_start_matches("bearer ")),
            "{debug}"
        );
        assert!(!debug.contains("PRIVATE"), "{debug}");

        let short = ApnsConfig {
            token_ttl: Duration::from_secs(10 * 60),
            ..s.cfg.clone()
        };
        assert!(matches!(
            ApnsSender::new(&short, &s.http),
            Err(ApnsError::TokenTtl(_))
        ));
        let no_team = ApnsConfig {
            team_id: String::new(),
            ..s.cfg.clone()
        };
        assert!(matches!(
            ApnsSender::new(&no_team, &s.http),
            Err(ApnsError::BadField {
                field: "team_id",
                ..
            })
        ));
        let dir = tempfile::tempdir().unwrap();
        let not_a_key = dir.path().join("k.p8");
        std::fs::write(&not_a_key, TestPki::shared().ca_pem()).unwrap();
        let bad_key = ApnsConfig {
            key: not_a_key,
            ..s.cfg.clone()
        };
        let err = ApnsSender::new(&bad_key, &s.http).unwrap_err();
        assert!(matches!(err, ApnsError::BadKey { .. }), "{err}");
        assert!(err.to_string().contains("k.p8"));
    }
}
