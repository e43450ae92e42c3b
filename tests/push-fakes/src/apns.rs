//! A fake APNs: HTTP/2 only (ALPN `h2` alone, as api.push.apple.com), `POST /3/device/{token}`
//! with the provider-token (JWT) and header checks Apple makes, and answers a test can script
//! per request or per device token.

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use rcgen::KeyPair;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use crate::server::{Alpn, Answer, FakeServer, Recorded};
use crate::tls::{pem, TestPki};

pub const KEY_ID: &str = "FAKEKEY123";
pub const TEAM_ID: &str = "FAKETEAM45";
/// The topic (bundle id) the fake accepts unless told more.
pub const TOPIC: &str = "org.example.chat";

const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "location",
    "liveactivity",
    "pushtotalk",
];

/// How the fake answers one push that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApnsAnswer {
    /// 200 with an `apns-id`.
    Ok,
    /// 410 Unregistered with a timestamp.
    Unregistered,
    /// 400 BadDeviceToken.
    BadDeviceToken,
    /// 400 DeviceTokenNotForTopic.
    DeviceTokenNotForTopic,
    /// 403 ExpiredProviderToken.
    ExpiredProviderToken,
    /// 403 InvalidProviderToken.
    InvalidProviderToken,
    /// 429 TooManyRequests, with `Retry-After` if given.
    TooManyRequests { retry_after: Option<u64> },
    /// Any status with this reason.
    Status(u16, String),
    /// No answer at all.
    Stall,
}

/// One push that passed the checks, with how it was answered.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub device_token: String,
    pub headers: HeaderMap,
    pub payload: Value,
    pub answered: ApnsAnswer,
}

struct State {
    key: DecodingKey,
    topics: Mutex<HashSet<String>>,
    provider_tokens: Mutex<HashSet<String>>,
    expired: Mutex<HashSet<String>>,
    next: Mutex<VecDeque<ApnsAnswer>>,
    per_token: Mutex<HashMap<String, ApnsAnswer>>,
    delivered: Mutex<Vec<Delivered>>,
}

/// The fake APNs server.
pub struct FakeApns {
    server: FakeServer,
    state: Arc<State>,
    key_pem: String,
}

impl FakeApns {
    /// Starts the fake (HTTP/2 only) with the PKI's certificate and a fresh signing key.
    pub async fn start(pki: &TestPki) -> Self {
        let key = KeyPair::generate().expect("P-256 key");
        let state = Arc::new(State {
            key: DecodingKey::from_ec_der(key.public_key_raw()),
            topics: Mutex::new(HashSet::from([TOPIC.to_owned()])),
            provider_tokens: Mutex::new(HashSet::new()),
            expired: Mutex::new(HashSet::new()),
            next: Mutex::new(VecDeque::new()),
            per_token: Mutex::new(HashMap::new()),
            delivered: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        let server = FakeServer::https(
            pki,
            Alpn::Http2,
            Arc::new(move |req: &Recorded| handle(&handler_state, req)),
        )
        .await
        .expect("fake APNs listens");
        FakeApns {
            server,
            state,
            key_pem: pem("PRIVATE KEY", &key.serialize_der()),
        }
    }

    /// The base URL (`ApnsConfig::base_url`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The signing key as an Apple `.p8` file holds it (PKCS#8 PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn write_key(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.key_pem)
    }

    /// Accepts pushes for another topic (an app id besides [`TOPIC`]).
    pub fn allow_topic(&self, topic: &str) {
        self.state.topics.lock().insert(topic.to_owned());
    }

    /// The answer to the next push that passes the checks (before any per-token answer).
    pub fn answer_next(&self, answer: ApnsAnswer) {
        self.state.next.lock().push_back(answer);
    }

    /// Every push to `device_token` that passes the checks gets this answer.
    pub fn answer_for_token(&self, device_token: &str, answer: ApnsAnswer) {
        self.state
            .per_token
            .lock()
            .insert(device_token.to_owned(), answer);
    }

    /// Every provider token seen so far is answered 403 ExpiredProviderToken from now on.
    pub fn expire_provider_tokens(&self) {
        let seen = self.state.provider_tokens.lock().clone();
        self.state.expired.lock().extend(seen);
    }

    /// How many different provider tokens (JWTs) came in `authorization` headers.
    pub fn provider_tokens_seen(&self) -> usize {
        self.state.provider_tokens.lock().len()
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.state.delivered.lock().clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }
}

#[derive(Deserialize)]
struct ProviderClaims {
    iss: String,
    iat: u64,
}

fn handle(state: &State, req: &Recorded) -> Answer {
    if req.version != http::Version::HTTP_2 {
        return reason(505, "HTTP/2 required");
    }
    let Some(device_token) = req.path.strip_prefix("/3/device/") else {
        return reason(404, "BadPath");
    };
    if req.method != http::Method::POST {
        return reason(405, "MethodNotAllowed");
    }
    if let Err(answer) = check_provider_token(state, req) {
        return answer;
    }
    if let Err(answer) = check_headers(state, req) {
        return answer;
    }
    let valid_token = device_token.len() >= 64
        && device_token.len() <= 200
        && device_token.len() % 2 == 0
        && device_token.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_token {
        return reason(400, "BadDeviceToken");
    }
    if req.body.is_empty() {
        return reason(400, "PayloadEmpty");
    }
    if req.body.len() > 4096 {
        return reason(413, "PayloadTooLarge");
    }
    let Some(payload) = req
        .json()
        .filter(|p| p.get("aps").is_some_and(Value::is_object))
    else {
        return reason(400, "BadPayload");
    };
    let answer = state
        .next
        .lock()
        .pop_front()
        .or_else(|| state.per_token.lock().get(device_token).cloned())
        .unwrap_or(ApnsAnswer::Ok);
    let apns_id = req.header("apns-id").map(str::to_owned).unwrap_or_else(|| {
        format!(
            "00000000-0000-4000-8000-{:012x}",
            state.delivered.lock().len() + 1
        )
    });
    state.delivered.lock().push(Delivered {
        device_token: device_token.to_owned(),
        headers: req.headers.clone(),
        payload,
        answered: answer.clone(),
    });
    match answer {
        ApnsAnswer::Ok => Answer::ok().header("apns-id", apns_id),
        ApnsAnswer::Unregistered => Answer::json(
            410,
            &json!({ "reason": "Unregistered", "timestamp": now_secs() * 1000 }),
        ),
        ApnsAnswer::BadDeviceToken => reason(400, "BadDeviceToken"),
        ApnsAnswer::DeviceTokenNotForTopic => reason(400, "DeviceTokenNotForTopic"),
        ApnsAnswer::ExpiredProviderToken => reason(403, "ExpiredProviderToken"),
        ApnsAnswer::InvalidProviderToken => reason(403, "InvalidProviderToken"),
        ApnsAnswer::TooManyRequests { retry_after } => {
            let answer = reason(429, "TooManyRequests");
            match retry_after {
                Some(secs) => answer.header("retry-after", secs.to_string()),
                None => answer,
            }
        }
        ApnsAnswer::Status(status, why) => reason(status, &why),
        ApnsAnswer::Stall => Answer::stall(),
    }
    .header("apns-id", req.header("apns-id").unwrap_or_default())
}

/// The provider token: `authorization: bearer <JWT>`, ES256 with our key id, `iss` the team,
/// `iat` within the last hour.
fn check_provider_token(state: &State, req: &Recorded) -> Result<(), Answer> {
    let Some(jwt) = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("bearer "))
    else {
        return Err(reason(403, "MissingProviderToken"));
    };
    state.provider_tokens.lock().insert(jwt.to_owned());
    let header =
        jsonwebtoken::decode_header(jwt).map_err(|_| reason(403, "InvalidProviderToken"))?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(KEY_ID) {
        return Err(reason(403, "InvalidProviderToken"));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.set_required_spec_claims::<&str>(&[]);
    validation.set_issuer(&[TEAM_ID]);
    let claims = jsonwebtoken::decode::<ProviderClaims>(jwt, &state.key, &validation)
        .map_err(|_| reason(403, "InvalidProviderToken"))?
        .claims;
    let now = now_secs();
    if claims.iss != TEAM_ID || claims.iat > now + 60 {
        return Err(reason(403, "InvalidProviderToken"));
    }
    if claims.iat + 3600 < now || state.expired.lock().contains(jwt) {
        return Err(reason(403, "ExpiredProviderToken"));
    }
    Ok(())
}

fn check_headers(state: &State, req: &Recorded) -> Result<(), Answer> {
    let Some(topic) = req.header("apns-topic") else {
        return Err(reason(400, "MissingTopic"));
    };
    if !state.topics.lock().contains(topic) {
        return Err(reason(400, "TopicDisallowed"));
    }
    let push_type = req.header("apns-push-type").unwrap_or_default();
    if !PUSH_TYPES.contains(&push_type) {
        return Err(reason(400, "InvalidPushType"));
    }
    let priority = req.header("apns-priority");
    if !matches!(priority, None | Some("1" | "5" | "10")) {
        return Err(reason(400, "BadPriority"));
    }
    // Apple: a background push must be sent with priority 5.
    if push_type == "background" && priority != Some("5") {
        return Err(reason(400, "BadPriority"));
    }
    if req
        .header("apns-collapse-id")
        .is_some_and(|id| id.len() > 64)
    {
        return Err(reason(400, "BadCollapseId"));
    }
    if req
        .header("apns-expiration")
        .is_some_and(|e| e.parse::<u64>().is_err())
    {
        return Err(reason(400, "BadExpirationDate"));
    }
    Ok(())
}

fn reason(status: u16, why: &str) -> Answer {
    Answer::json(status, &json!({ "reason": why }))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS client trusting the test CA, offering `alpn`.
    async fn connect(
        fake: &FakeApns,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let pki = TestPki::shared();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der().clone()).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(fake.server.addr()).await?;
        let name = ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
    }

    #[tokio::test]
    async fn http1_is_refused() {
        let fake = FakeApns::start(TestPki::shared()).await;
        // Offering only http/1.1: no common protocol, the handshake fails.
        assert!(connect(&fake, &[b"http/1.1"]).await.is_err());

        // Offering nothing, then speaking HTTP/1.1 anyway: the HTTP/2 server never answers it.
        let mut tls = connect(&fake, &[]).await.unwrap();
        let path = format!("/3/device/{}", "ab".repeat(32));
        tls.write_all(
            format!("POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{{}}")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tls.read_to_end(&mut answer),
        )
        .await;
        assert!(
            !answer.starts_with(b"HTTP/1.1"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(fake.requests().is_empty());

        // h2 is accepted.
        let tls = connect(&fake, &[b"h2"]).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    }
}
