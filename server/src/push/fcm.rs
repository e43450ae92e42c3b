//! FCM HTTP v1 with OAuth2 tokens from a service account.
//!
//! The service account's RSA key signs a JWT assertion (RS256) that Google's token endpoint
//! exchanges for an access token; that token is cached until five minutes before it expires,
//! so a burst of pushes costs one exchange, and concurrent senders wait for the one exchange in
//! flight instead of each starting their own. A 401/403 drops the cached token and the push is
//! tried once more with a fresh one.

use super::{Notice, Outcome, Provider, Sender, Target};
use crate::https::{HttpClient, Reply};
use async_trait::async_trait;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
/// The one scope sending needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// A cached access token is replaced this long before Google says it expires, so a push never
/// goes out with a token that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// The longest `expires_in` believed.
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;
/// Google accepts assertions valid for at most an hour.
const ASSERTION_LIFETIME: u64 = 3600;
/// How much of a provider's error message a dead letter keeps.
const MAX_REASON: usize = 300;

/// Where the FCM credentials are and whom to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmConfig {
    /// The service-account JSON file (`client_email`, `private_key`, `project_id`, `token_uri`).
    pub credentials: PathBuf,
    pub base_url: String,
    /// Overrides the JSON's `token_uri` (tests, a proxy).
    pub token_url: Option<String>,
}

impl FcmConfig {
    pub fn new(credentials: PathBuf) -> Self {
        FcmConfig {
            credentials,
            base_url: DEFAULT_BASE_URL.to_owned(),
            token_url: None,
        }
    }
}

/// What is wrong with the credentials file. Never carries key material: a field is named, its
/// value is not shown.
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("FCM credentials {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The JSON syntax error's position only (its message could quote the file).
    #[error("FCM credentials {path}: not JSON (line {line}, column {column})")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("FCM credentials {path}: the field `{field}` is missing or not a string")]
    MissingField { path: PathBuf, field: &'static str },
    #[error("FCM credentials {path}: the field `{field}` {reason}")]
    BadField {
        path: PathBuf,
        field: &'static str,
        reason: &'static str,
    },
}

/// The parts of the service account the sender uses.
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key_id: Option<String>,
    key: EncodingKey,
    token_uri: String,
}

impl ServiceAccount {
    fn load(path: &Path, token_url: Option<&str>) -> Result<Self, FcmError> {
        let text = std::fs::read_to_string(path).map_err(|source| FcmError::Read {
            path: path.to_owned(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| FcmError::Json {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
        })?;
        let field = |field: &'static str| {
            json.get(field)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| FcmError::MissingField {
                    path: path.to_owned(),
                    field,
                })
        };
        let bad = |field: &'static str, reason: &'static str| FcmError::BadField {
            path: path.to_owned(),
            field,
            reason,
        };
        if json
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "service_account")
        {
            return Err(bad("type", "is not \"service_account\""));
        }
        let pem = field("private_key")?;
        // Google writes PKCS#8; PKCS#1 is accepted too. jsonwebtoken's RSA signer takes PKCS#1
        // DER, and parsing here means a broken key fails at start, not at the first push.
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| bad("private_key", "is not an RSA private key in PEM"))?;
        let der = rsa
            .to_pkcs1_der()
            .map_err(|_| bad("private_key", "cannot be encoded for signing"))?;
        let token_uri = match token_url {
            Some(url) => url.to_owned(),
            None => field("token_uri")?.to_owned(),
        };
        if !(token_uri.starts_with("https://") || token_uri.starts_with("http://")) {
            return Err(bad("token_uri", "is not an http(s) URL"));
        }
        let project_id = field("project_id")?;
        // It goes into the send URL's path.
        let id_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
        if !project_id.bytes().all(id_char) {
            return Err(bad("project_id", "has characters a project id cannot have"));
        }
        Ok(ServiceAccount {
            project_id: project_id.to_owned(),
            client_email: field("client_email")?.to_owned(),
            private_key_id: json
                .get("private_key_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            token_uri,
        })
    }
}

/// A cached access token.
#[derive(Clone)]
struct AccessToken {
    value: String,
    refresh_at: Instant,
}

/// Sends through FCM HTTP v1.
pub struct FcmSender {
    http: HttpClient,
    account: ServiceAccount,
    send_url: String,
    /// Held across a token exchange, so concurrent callers wait for it instead of each making
    /// one; held only for a check otherwise.
    token: tokio::sync::Mutex<TokenSlot>,
}

#[derive(Default)]
struct TokenSlot {
    token: Option<AccessToken>,
    /// The last failed exchange: callers that were waiting for it get its outcome instead of
    /// each trying again in turn (with the token endpoint down, N waiting pushes would
    /// otherwise take N timeouts).
    failed: Option<(Instant, Outcome)>,
}

impl std::fmt::Debug for FcmSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmSender")
            .field("send_url", &self.send_url)
            .field("client_email", &self.account.client_email)
            .field("token_uri", &self.account.token_uri)
            .field("private_key", &"<redacted>")
            .field("access_token", &"<redacted>")
            .finish()
    }
}

impl FcmSender {
    /// Loads and checks the credentials; no network until the first push.
    pub fn new(cfg: &FcmConfig, http: HttpClient) -> Result<Self, FcmError> {
        let account = ServiceAccount::load(&cfg.credentials, cfg.token_url.as_deref())?;
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            cfg.base_url.trim_end_matches('/'),
            account.project_id
        );
        Ok(FcmSender {
            http,
            account,
            send_url,
            token: tokio::sync::Mutex::new(TokenSlot::default()),
        })
    }

    /// The cached access token, or a fresh one; `Err` is the outcome the push gets when none
    /// can be had.
    async fn access_token(&self) -> Result<String, Outcome> {
        let asked = Instant::now();
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.token.as_ref() {
            if Instant::now() < token.refresh_at {
                return Ok(token.value.clone());
            }
        }
        if let Some((at, outcome)) = &slot.failed {
            if *at >= asked {
                return Err(outcome.clone());
            }
        }
        match self.exchange().await {
            Ok(fresh) => {
                let value = fresh.value.clone();
                *slot = TokenSlot {
                    token: Some(fresh),
                    failed: None,
                };
                Ok(value)
            }
            Err(outcome) => {
                slot.failed = Some((Instant::now(), outcome.clone()));
                Err(outcome)
            }
        }
    }

    /// Drops the cached token if it is still the one that was refused (another caller may have
    /// replaced it already).
    async fn forget_token(&self, refused: &str) {
        let mut slot = self.token.lock().await;
        if slot.token.as_ref().is_some_and(|t| t.value == refused) {
            slot.token = None;
        }
    }

    /// The JWT-bearer grant (RFC 7523): a signed assertion for an access token.
    async fn exchange(&self) -> Result<AccessToken, Outcome> {
        let iat = unix_now();
        let claims = json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.account.private_key_id.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, &self.account.key).map_err(|e| {
            Outcome::Permanent(format!(
                "FCM credentials: the assertion cannot be signed: {e}"
            ))
        })?;
        // The assertion is base64url and dots: nothing in it needs form-encoding.
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let req = http::Request::post(&self.account.token_uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Bytes::from(body))
            .map_err(|e| Outcome::Permanent(format!("FCM token endpoint URL: {e}")))?;
        let reply = self.http.send(req).await.map_err(|e| transport(&e))?;
        let json: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        match reply.status.as_u16() {
            200 => {
                let value = json.get("access_token").and_then(Value::as_str);
                let expires_in = json.get("expires_in").and_then(Value::as_u64);
                match (value, expires_in) {
                    (Some(value), Some(expires_in)) if !value.is_empty() => {
                        // Google says 3600; a wild value must not overflow the clock.
                        let lifetime = Duration::from_secs(expires_in.min(MAX_TOKEN_LIFETIME));
                        Ok(AccessToken {
                            value: value.to_owned(),
                            refresh_at: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
                        })
                    }
                    // A front end's garbled answer, not a verdict on the credentials.
                    _ => Err(Outcome::Retry { after: None }),
                }
            }
            429 | 500..=599 => Err(Outcome::Retry {
                after: reply.retry_after(),
            }),
            status => {
                // OAuth2 errors (RFC 6749 §5.2): `error` and `error_description` say what
                // was wrong with the assertion, never echo it.
                let error = json.get("error").and_then(Value::as_str).unwrap_or("");
                let description = json
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Err(Outcome::Permanent(cut(format!(
                    "FCM credentials refused by the token endpoint ({status}): {error} {description}"
                ))))
            }
        }
    }

    fn request(&self, token: &str, body: &Bytes) -> Result<http::Request<Bytes>, Outcome> {
        http::Request::post(&self.send_url)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .map_err(|e| Outcome::Permanent(format!("FCM request: {e}")))
    }
}

#[async_trait]
impl Sender for FcmSender {
    fn provider(&self) -> Provider {
        Provider::Fcm
    }

    async fn send(&self, target: &Target, notice: &Notice) -> Outcome {
        if target.token.is_empty() {
            return Outcome::DeadToken;
        }
        let body = Bytes::from(message(target, notice).to_string());
        let mut refreshed = false;
        loop {
            let token = match self.access_token().await {
                Ok(token) => token,
                Err(outcome) => return outcome,
            };
            let req = match self.request(&token, &body) {
                Ok(req) => req,
                Err(outcome) => return outcome,
            };
            let reply = match self.http.send(req).await {
                Ok(reply) => reply,
                Err(e) => return transport(&e),
            };
            let error = FcmErrorBody::parse(&reply);
            let auth_refused = matches!(reply.status.as_u16(), 401 | 403)
                && error.code.as_deref() != Some("SENDER_ID_MISMATCH");
            if auth_refused && !refreshed {
                // Revoked or rotated under us: one fresh token, one more try.
                self.forget_token(&token).await;
                refreshed = true;
                continue;
            }
            if auth_refused {
                return Outcome::Permanent(cut(format!(
                    "FCM credentials refused ({}): {}",
                    reply.status.as_u16(),
                    error.describe()
                )));
            }
            return classify(&reply, &error);
        }
    }
}

/// The v1 message. Android gets a data message when `data_only` (the app fetches and
/// decrypts), a notification tagged with the collapse key otherwise (a newer push for the chat
/// replaces the older one on the device); iOS (through FCM's APNs bridge) the same collapse id
/// and, for `data_only`, the generic alert with `mutable-content` so the app's notification
/// service extension can decrypt and rewrite it (as in apns.rs).
fn message(target: &Target, notice: &Notice) -> Value {
    let mut data: Map<String, Value> = notice
        .data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    data.insert("count".to_owned(), Value::String(notice.count.to_string()));

    let mut android = json!({ "priority": "HIGH" });
    let mut apns_headers = json!({ "apns-priority": "10", "apns-push-type": "alert" });
    if !notice.collapse_key.is_empty() {
        android["collapse_key"] = json!(notice.collapse_key);
        apns_headers["apns-collapse-id"] = json!(super::apns::collapse_id(&notice.collapse_key));
    }
    let mut aps = json!({ "thread-id": notice.chat_id });
    let mut msg = json!({ "token": target.token, "data": data });
    if notice.data_only {
        let mut alert = json!({ "body": notice.body });
        if let Some(title) = &notice.title {
            alert["title"] = json!(title);
        }
        aps["alert"] = alert;
        aps["mutable-content"] = json!(1);
    } else {
        let mut notification = json!({ "body": notice.body });
        if let Some(title) = &notice.title {
            notification["title"] = json!(title);
        }
        msg["notification"] = notification;
        if !notice.collapse_key.is_empty() {
            android["notification"] = json!({ "tag": notice.collapse_key });
        }
    }
    msg["android"] = android;
    msg["apns"] = json!({ "headers": apns_headers, "payload": { "aps": aps } });
    json!({ "message": msg })
}

/// What a Google API error body says: `{"error": {code, message, status, details: [...]}}`.
#[derive(Debug, Default)]
struct FcmErrorBody {
    /// `status` (`INVALID_ARGUMENT`, `NOT_FOUND`…).
    status: Option<String>,
    /// FCM's `errorCode` from the `FcmError` detail (`UNREGISTERED`, `QUOTA_EXCEEDED`…).
    code: Option<String>,
    message: Option<String>,
    /// The fields a `BadRequest` detail names.
    fields: Vec<String>,
}

impl FcmErrorBody {
    fn parse(reply: &Reply) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(&reply.body) else {
            return FcmErrorBody::default();
        };
        let error = &json["error"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let details = error["details"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        FcmErrorBody {
            status: text(&error["status"]),
            code: details.iter().find_map(|d| text(&d["errorCode"])),
            message: text(&error["message"]),
            fields: details
                .iter()
                .flat_map(|d| d["fieldViolations"].as_array().cloned().unwrap_or_default())
                .filter_map(|v| text(&v["field"]))
                .collect(),
        }
    }

    fn is(&self, name: &str) -> bool {
        self.code.as_deref() == Some(name) || self.status.as_deref() == Some(name)
    }

    fn describe(&self) -> String {
        let name = self
            .code
            .as_deref()
            .or(self.status.as_deref())
            .unwrap_or("no error code");
        match &self.message {
            Some(message) => format!("{name}: {message}"),
            None => name.to_owned(),
        }
    }
}

/// An answer other than a credentials refusal.
fn classify(reply: &Reply, error: &FcmErrorBody) -> Outcome {
    let status = reply.status.as_u16();
    if reply.status.is_success() {
        return Outcome::Sent;
    }
    if status == 404 || error.is("UNREGISTERED") {
        return Outcome::DeadToken;
    }
    if status == 429
        || status >= 500
        || ["UNAVAILABLE", "INTERNAL", "QUOTA_EXCEEDED"]
            .iter()
            .any(|c| error.is(c))
    {
        return Outcome::Retry {
            after: reply.retry_after(),
        };
    }
    if error.is("INVALID_ARGUMENT") {
        // Google names the field when it can; for a malformed registration token it sometimes
        // only says so in the message.
        let token_field = error.fields.iter().any(|f| f == "message.token");
        let token_message = error.fields.is_empty()
            && error
                .message
                .as_deref()
                .is_some_and(|m| m.contains("registration token"));
        if token_field || token_message {
            return Outcome::DeadToken;
        }
    }
    Outcome::Permanent(cut(format!("FCM {status}: {}", error.describe())))
}

/// A transport failure is worth a retry; a request this node cannot make is not.
fn transport(e: &crate::https::HttpError) -> Outcome {
    if e.is_transient() {
        tracing::debug!(error = %e, "FCM unreachable");
        Outcome::Retry { after: None }
    } else {
        Outcome::Permanent(cut(format!("FCM: {e}")))
    }
}

fn cut(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
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
    use crate::https::HttpConfig;
    use push_fakes::fcm::{FakeFcm, FcmAnswer, CLIENT_EMAIL};
    use push_fakes::server::Answer;
    use push_fakes::tls::TestPki;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    struct Setup {
        fake: FakeFcm,
        sender: Arc<FcmSender>,
        dir: tempfile::TempDir,
    }

    async fn setup_with_timeout(timeout: Duration) -> Setup {
        let pki = TestPki::shared();
        let fake = FakeFcm::start(pki).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        pki.write_ca_pem(&ca).unwrap();
        let credentials = dir.path().join("sa.json");
        fake.write_service_account(&credentials).unwrap();
        let http = HttpClient::new(&HttpConfig {
            extra_ca_pem: Some(ca),
            timeout,
        })
        .unwrap();
        let cfg = FcmConfig {
            base_url: fake.url(),
            ..FcmConfig::new(credentials)
        };
        let sender = Arc::new(FcmSender::new(&cfg, http).unwrap());
        Setup { fake, sender, dir }
    }

    async fn setup() -> Setup {
        setup_with_timeout(Duration::from_secs(10)).await
    }

    fn target(token: &str) -> Target {
        Target {
            user_id: "u1".into(),
            device_id: "d1".into(),
            provider: Provider::Fcm,
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
            count: 2,
            data: BTreeMap::from([
                ("chat_id".into(), "chat-7".into()),
                ("seq".into(), "41".into()),
            ]),
            data_only: false,
        }
    }

    #[tokio::test]
    async fn a_push_is_an_authorised_v1_message() {
        let s = setup().await;
        assert_eq!(
            s.sender.send(&target("reg-token-1"), &notice()).await,
            Outcome::Sent
        );

        let requests = s.fake.requests();
        assert_eq!(requests.len(), 2, "one token exchange, one send");
        assert_eq!(requests[0].path, "/token");
        assert_eq!(
            requests[1].path,
            format!("/v1/projects/{}/messages:send", push_fakes::fcm::PROJECT_ID)
        );
        assert!(requests[1]
            .header("authorization")
            .unwrap()
            .starts_with("Bearer ya29.fake-"));
        assert_eq!(requests[1].header("content-type"), Some("application/json"));

        let delivered = s.fake.delivered();
        let m = &delivered[0].message;
        assert_eq!(m["token"], "reg-token-1");
        assert_eq!(
            m["notification"],
            json!({"title": "alice", "body": "alice: hi"})
        );
        assert_eq!(
            m["data"],
            json!({"chat_id": "chat-7", "seq": "41", "count": "2"})
        );
        assert_eq!(m["android"]["collapse_key"], "chat-7");
        assert_eq!(m["android"]["priority"], "HIGH");
        assert_eq!(m["android"]["notification"]["tag"], "chat-7");
        assert_eq!(m["apns"]["headers"]["apns-collapse-id"], "chat-7");
        assert_eq!(m["apns"]["payload"]["aps"]["thread-id"], "chat-7");
    }

    #[tokio::test]
    async fn a_data_only_push_has_no_notification() {
        let s = setup().await;
        let n = Notice {
            title: None,
            body: "New message".into(),
            data_only: true,
            ..notice()
        };
        assert_eq!(
            s.sender.send(&target("reg-token-1"), &n).await,
            Outcome::Sent
        );
        let m = &s.fake.delivered()[0].message;
        assert!(m.get("notification").is_none(), "{m}");
        assert!(m["android"].get("notification").is_none());
        assert_eq!(m["data"]["count"], "2");
        assert_eq!(m["apns"]["payload"]["aps"]["mutable-content"], 1);
        assert_eq!(m["apns"]["payload"]["aps"]["alert"]["body"], "New message");
    }

    #[tokio::test]
    async fn concurrent_pushes_share_one_token_exchange() {
        let s = setup().await;
        let pushes = (0..20).map(|i| {
            let sender = s.sender.clone();
            tokio::spawn(async move { sender.send(&target(&format!("tok-{i}")), &notice()).await })
        });
        for push in pushes.collect::<Vec<_>>() {
            assert_eq!(push.await.unwrap(), Outcome::Sent);
        }
        assert_eq!(s.fake.delivered().len(), 20);
        assert_eq!(s.fake.token_exchanges(), 1);
    }

    #[tokio::test]
    async fn a_token_near_expiry_is_exchanged_again() {
        let s = setup().await;
        // Inside the five-minute margin: used once, then replaced.
        s.fake.set_expires_in(120);
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        assert_eq!(s.fake.token_exchanges(), 2);
        s.fake.set_expires_in(3600);
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        assert_eq!(s.fake.token_exchanges(), 3);
    }

    #[tokio::test]
    async fn a_revoked_token_is_replaced_and_the_push_tried_once_more() {
        let s = setup().await;
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        s.fake.revoke_access_tokens();
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        assert_eq!(s.fake.token_exchanges(), 2);
        // send, 401, token, send.
        assert_eq!(s.fake.requests().len(), 5);
        assert_eq!(s.fake.delivered().len(), 2);
    }

    #[tokio::test]
    async fn credentials_refused_twice_are_permanent() {
        let s = setup().await;
        let denied = json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "no permission"}});
        s.fake.answer_next(FcmAnswer::Status(403, denied.clone()));
        s.fake.answer_next(FcmAnswer::Status(403, denied));
        match s.sender.send(&target("t"), &notice()).await {
            Outcome::Permanent(reason) => {
                assert!(
                    reason.contains("credentials") && reason.contains("PERMISSION_DENIED"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.fake.token_exchanges(), 2);
    }

    #[tokio::test]
    async fn a_refused_assertion_is_a_permanent_credentials_error() {
        let s = setup().await;
        s.fake.set_token_endpoint_answer(Some(Answer::json(
            400,
            &json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        )));
        match s.sender.send(&target("t"), &notice()).await {
            Outcome::Permanent(reason) => assert!(reason.contains("invalid_grant"), "{reason}"),
            other => panic!("{other:?}"),
        }
        s.fake
            .set_token_endpoint_answer(Some(Answer::status(503).header("retry-after", "7")));
        assert_eq!(
            s.sender.send(&target("t"), &notice()).await,
            Outcome::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
    }

    #[tokio::test]
    async fn an_assertion_for_another_account_is_refused() {
        let s = setup().await;
        let mut json: Value = serde_json::from_str(&s.fake.service_account_json()).unwrap();
        json["client_email"] = json!("someone-else@push-fakes-project.iam.gserviceaccount.com");
        let path = s.dir.path().join("other.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let http = HttpClient::new(&HttpConfig {
            extra_ca_pem: Some(s.dir.path().join("ca.pem")),
            timeout: Duration::from_secs(10),
        })
        .unwrap();
        let cfg = FcmConfig {
            base_url: s.fake.url(),
            ..FcmConfig::new(path)
        };
        let sender = FcmSender::new(&cfg, http).unwrap();
        match sender.send(&target("t"), &notice()).await {
            Outcome::Permanent(reason) => assert!(reason.contains("invalid_grant"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.fake.token_exchanges(), 0);
        assert!(s.fake.delivered().is_empty());
    }

    #[tokio::test]
    async fn answers_are_classified() {
        let s = setup().await;
        let cases = [
            (FcmAnswer::Unregistered, Outcome::DeadToken),
            (
                FcmAnswer::InvalidArgument { token_field: true },
                Outcome::DeadToken,
            ),
            (
                FcmAnswer::RetryAfter {
                    status: 429,
                    secs: Some(2),
                },
                Outcome::Retry {
                    after: Some(Duration::from_secs(2)),
                },
            ),
            (
                FcmAnswer::RetryAfter {
                    status: 503,
                    secs: None,
                },
                Outcome::Retry { after: None },
            ),
            (
                FcmAnswer::Status(500, json!({"error": {"code": 500, "status": "INTERNAL"}})),
                Outcome::Retry { after: None },
            ),
            (
                FcmAnswer::Status(
                    400,
                    json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                        "message": "The registration token is not a valid FCM registration token"}}),
                ),
                Outcome::DeadToken,
            ),
        ];
        for (answer, expected) in cases {
            s.fake.answer_next(answer.clone());
            assert_eq!(
                s.sender.send(&target("t"), &notice()).await,
                expected,
                "{answer:?}"
            );
        }
        s.fake
            .answer_next(FcmAnswer::InvalidArgument { token_field: false });
        match s.sender.send(&target("t"), &notice()).await {
            Outcome::Permanent(reason) => assert!(
                reason.contains("400") && reason.contains("message.data"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        // The same token's other answers are still Sent: classification is per answer.
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        assert_eq!(s.fake.token_exchanges(), 1);
    }

    #[tokio::test]
    async fn a_stalled_send_is_a_retry() {
        let s = setup_with_timeout(Duration::from_millis(500)).await;
        // Get the token first, so the stall hits the send.
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        s.fake.answer_next(FcmAnswer::Stall);
        assert_eq!(
            s.sender.send(&target("t"), &notice()).await,
            Outcome::Retry { after: None }
        );
    }

    #[tokio::test]
    async fn pushes_waiting_on_a_failed_exchange_share_its_outcome() {
        let s = setup_with_timeout(Duration::from_millis(400)).await;
        s.fake.set_token_endpoint_answer(Some(Answer::stall()));
        let started = std::time::Instant::now();
        let pushes = (0..5).map(|_| {
            let sender = s.sender.clone();
            tokio::spawn(async move { sender.send(&target("t"), &notice()).await })
        });
        for push in pushes.collect::<Vec<_>>() {
            assert_eq!(push.await.unwrap(), Outcome::Retry { after: None });
        }
        assert_eq!(
            s.fake.requests().len(),
            1,
            "one exchange tried, not one per push"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // A later push tries again.
        s.fake.set_token_endpoint_answer(None);
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
    }

    #[tokio::test]
    async fn secrets_stay_out_of_debug_output() {
        let s = setup().await;
        assert_eq!(s.sender.send(&target("t"), &notice()).await, Outcome::Sent);
        let debug = format!("{:?}", s.sender);
        let bearer = s.fake.requests()[1]
            .header("authorization")
            .unwrap()
            .to_owned();
        let access_token = bearer.trim_start_matches("Bearer ");
        assert!(!debug.contains(access_token), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(debug.contains(CLIENT_EMAIL));
    }

    #[tokio::test]
    async fn bad_credentials_name_the_file_and_the_field() {
        let s = setup().await;
        let dir = tempfile::tempdir().unwrap();
        let http = || HttpClient::new(&HttpConfig::default()).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let good: Value = serde_json::from_str(&s.fake.service_account_json()).unwrap();
        let key = good["private_key"].as_str().unwrap().to_owned();

        let missing = dir.path().join("missing.json");
        let err = FcmSender::new(&FcmConfig::new(missing.clone()), http()).unwrap_err();
        assert!(
            matches!(err, FcmError::Read { ref path, .. } if *path == missing),
            "{err}"
        );

        let path = write(
            "garbage.json",
            format!("{{\"private_key\": \"{}", &key[..40]),
        );
        let err = FcmSender::new(&FcmConfig::new(path.clone()), http()).unwrap_err();
        assert!(matches!(err, FcmError::Json { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));

        let mut no_email = good.clone();
        no_email.as_object_mut().unwrap().remove("client_email");
        let path = write("no-email.json", no_email.to_string());
        let err = FcmSender::new(&FcmConfig::new(path), http()).unwrap_err();
        assert!(
            matches!(
                err,
                FcmError::MissingField {
                    field: "client_email",
                    ..
                }
            ),
            "{err}"
        );

        let mut bad_key = good.clone();
        bad_key["private_key"] = json!(key.replace("MII", "XXX"));
        let path = write("bad-key.json", bad_key.to_string());
        let err = FcmSender::new(&FcmConfig::new(path), http()).unwrap_err();
        assert!(
            matches!(
                err,
                FcmError::BadField {
                    field: "private_key",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains("XXX") && !format!("{err:?}").contains("XXX"));

        // `token_url` stands in for a missing `token_uri`.
        let mut no_uri = good.clone();
        no_uri.as_object_mut().unwrap().remove("token_uri");
        let path = write("no-uri.json", no_uri.to_string());
        let err = FcmSender::new(&FcmConfig::new(path.clone()), http()).unwrap_err();
        assert!(
            matches!(
                err,
                FcmError::MissingField {
                    field: "token_uri",
                    ..
                }
            ),
            "{err}"
        );
        let cfg = FcmConfig {
            token_url: Some(s.fake.token_uri()),
            ..FcmConfig::new(path)
        };
        FcmSender::new(&cfg, http()).unwrap();
    }
}
