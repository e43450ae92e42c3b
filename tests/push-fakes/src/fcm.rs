//! A fake FCM: Google's OAuth2 token endpoint (the JWT-bearer grant a service account uses) and
//! the HTTP v1 `messages:send` endpoint, each with the checks the real one makes, and answers a
//! test can script per request or per registration token.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::server::{Alpn, Answer, FakeServer, Recorded};
use crate::tls::TestPki;

/// The scope a token for sending FCM messages must ask for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const PROJECT_ID: &str = "push-fakes-project";
pub const CLIENT_EMAIL: &str = "chatd-push@push-fakes-project.iam.gserviceaccount.com";
/// Where the token endpoint is, under the fake's URL.
pub const TOKEN_PATH: &str = "/token";

/// How the fake answers one `messages:send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FcmAnswer {
    /// 200 with the message's name.
    Ok,
    /// 404 NOT_FOUND with errorCode UNREGISTERED.
    Unregistered,
    /// 400 INVALID_ARGUMENT, the field violation on `message.token` if `token_field`, on
    /// `message.data` otherwise.
    InvalidArgument { token_field: bool },
    /// 429 RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) or 503 UNAVAILABLE, with `Retry-After: secs`.
    RetryAfter { status: u16, secs: Option<u64> },
    /// Any status with this error body.
    Status(u16, Value),
    /// No answer at all.
    Stall,
}

/// One message the fake accepted (or was scripted to refuse after the checks passed).
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The `message` object of the request.
    pub message: Value,
    pub answered: FcmAnswer,
}

struct State {
    token_uri: OnceLock<String>,
    key: DecodingKey,
    exchanges: AtomicUsize,
    expires_in: AtomicU64,
    issued: Mutex<HashSet<String>>,
    next: Mutex<VecDeque<FcmAnswer>>,
    per_token: Mutex<HashMap<String, FcmAnswer>>,
    delivered: Mutex<Vec<Delivered>>,
    token_endpoint_down: Mutex<Option<Answer>>,
}

/// The fake FCM server.
pub struct FakeFcm {
    server: FakeServer,
    state: Arc<State>,
}

/// The service account's key, generated once per test process (RSA key generation is slow
/// in a debug build).
struct AccountKey {
    pkcs8_pem: String,
    n: Vec<u8>,
    e: Vec<u8>,
}

fn account_key() -> &'static AccountKey {
    static KEY: OnceLock<AccountKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        AccountKey {
            pkcs8_pem: key
                .to_pkcs8_pem(LineEnding::LF)
                .expect("PKCS#8 PEM")
                .to_string(),
            n: key.n().to_bytes_be(),
            e: key.e().to_bytes_be(),
        }
    })
}

impl FakeFcm {
    /// Starts the fake (HTTP/1.1 and HTTP/2, as Google's front ends) with the PKI's certificate.
    pub async fn start(pki: &TestPki) -> Self {
        let key = account_key();
        let state = Arc::new(State {
            token_uri: OnceLock::new(),
            key: DecodingKey::from_rsa_raw_components(&key.n, &key.e),
            exchanges: AtomicUsize::new(0),
            expires_in: AtomicU64::new(3600),
            issued: Mutex::new(HashSet::new()),
            next: Mutex::new(VecDeque::new()),
            per_token: Mutex::new(HashMap::new()),
            delivered: Mutex::new(Vec::new()),
            token_endpoint_down: Mutex::new(None),
        });
        let handler_state = state.clone();
        let server = FakeServer::https(
            pki,
            Alpn::Both,
            Arc::new(move |req: &Recorded| handle(&handler_state, req)),
        )
        .await
        .expect("fake FCM listens");
        let _ = state.token_uri.set(format!("{}{TOKEN_PATH}", server.url()));
        FakeFcm { server, state }
    }

    /// The base URL (`FcmConfig::base_url`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The token endpoint (the service account's `token_uri`).
    pub fn token_uri(&self) -> String {
        format!("{}{TOKEN_PATH}", self.server.url())
    }

    /// A service-account JSON file's content whose `token_uri` is this fake.
    pub fn service_account_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": account_key().pkcs8_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
        })
        .to_string()
    }

    pub fn write_service_account(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.service_account_json())
    }

    /// How many access tokens the token endpoint issued.
    pub fn token_exchanges(&self) -> usize {
        self.state.exchanges.load(Ordering::SeqCst)
    }

    /// The `expires_in` of the tokens issued from now on.
    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Every access token issued so far stops working (401 UNAUTHENTICATED).
    pub fn revoke_access_tokens(&self) {
        self.state.issued.lock().clear();
    }

    /// The token endpoint answers this (e.g. 400 invalid_grant) until told otherwise (`None`).
    pub fn set_token_endpoint_answer(&self, answer: Option<Answer>) {
        *self.state.token_endpoint_down.lock() = answer;
    }

    /// The answer to the next well-formed, authorised send (before any per-token answer).
    pub fn answer_next(&self, answer: FcmAnswer) {
        self.state.next.lock().push_back(answer);
    }

    /// Every well-formed, authorised send to `token` gets this answer.
    pub fn answer_for_token(&self, token: &str, answer: FcmAnswer) {
        self.state.per_token.lock().insert(token.to_owned(), answer);
    }

    /// The messages that passed the checks, with how each was answered.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.state.delivered.lock().clone()
    }

    /// Every request (token endpoint and sends).
    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }
}

fn handle(state: &State, req: &Recorded) -> Answer {
    if req.method != http::Method::POST {
        return Answer::status(405);
    }
    if req.path == TOKEN_PATH {
        return token_endpoint(state, req);
    }
    let send_path = format!("/v1/projects/{PROJECT_ID}/messages:send");
    if req.path == send_path {
        return send(state, req);
    }
    google_error(
        404,
        "NOT_FOUND",
        "Requested entity was not found.",
        None,
        &[],
    )
}

#[derive(Deserialize)]
struct Assertion {
    iss: String,
    scope: String,
    aud: String,
    iat: u64,
    exp: u64,
}

fn token_endpoint(state: &State, req: &Recorded) -> Answer {
    if let Some(answer) = state.token_endpoint_down.lock().clone() {
        return answer;
    }
    let content_type = req.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return oauth_error("invalid_request", "form body expected");
    }
    let form = parse_form(&req.body);
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error("unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    match jsonwebtoken::decode_header(assertion) {
        Ok(header) if header.alg == Algorithm::RS256 => {}
        _ => return oauth_error("invalid_grant", "Invalid JWT: not RS256"),
    }
    let token_uri = state.token_uri.get().cloned().unwrap_or_default();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri.as_str()]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let claims = match jsonwebtoken::decode::<Assertion>(assertion, &state.key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return oauth_error("invalid_grant", &format!("Invalid JWT: {e}")),
    };
    if claims.scope.split(' ').all(|s| s != SCOPE) {
        return oauth_error("invalid_scope", "the messaging scope is missing");
    }
    let now = now_secs();
    if claims.exp <= claims.iat || claims.exp - claims.iat > 3600 || claims.iat > now + 60 {
        return oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    // Validation checked these already; said again so the claims the fake relies on are plain.
    if claims.iss != CLIENT_EMAIL || claims.aud != token_uri {
        return oauth_error("invalid_grant", "Invalid JWT: iss or aud");
    }
    let n = state.exchanges.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!(
        "ya29.fake-{n}-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(now.to_be_bytes())
    );
    state.issued.lock().insert(token.clone());
    Answer::json(
        200,
        &json!({
            "access_token": token,
            "expires_in": state.expires_in.load(Ordering::SeqCst),
            "token_type": "Bearer",
        }),
    )
}

fn send(state: &State, req: &Recorded) -> Answer {
    let bearer = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state.issued.lock().contains(bearer) {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            None,
            &[],
        );
    }
    let Some(body) = req.json() else {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
            None,
            &[],
        );
    };
    let message = body.get("message").cloned().unwrap_or(Value::Null);
    if let Err(field) = check_message(&message) {
        return invalid_argument(&field);
    }
    let token = message["token"].as_str().unwrap_or_default().to_owned();
    let answer = state
        .next
        .lock()
        .pop_front()
        .or_else(|| state.per_token.lock().get(&token).cloned())
        .unwrap_or(FcmAnswer::Ok);
    state.delivered.lock().push(Delivered {
        message,
        answered: answer.clone(),
    });
    match answer {
        FcmAnswer::Ok => {
            let n = state.delivered.lock().len();
            Answer::json(
                200,
                &json!({ "name": format!("projects/{PROJECT_ID}/messages/0:{n}") }),
            )
        }
        FcmAnswer::Unregistered => google_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
            &[],
        ),
        FcmAnswer::InvalidArgument { token_field } => invalid_argument(if token_field {
            "message.token"
        } else {
            "message.data"
        }),
        FcmAnswer::RetryAfter { status, secs } => {
            let (name, code) = if status == 429 {
                ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
            } else {
                ("UNAVAILABLE", "UNAVAILABLE")
            };
            let answer = google_error(status, name, "Try again later.", Some(code), &[]);
            match secs {
                Some(secs) => answer.header("retry-after", secs.to_string()),
                None => answer,
            }
        }
        FcmAnswer::Status(status, body) => Answer::json(status, &body),
        FcmAnswer::Stall => Answer::stall(),
    }
}

/// The v1 API's own validation, for the fields a sender sets: a wrong shape is a 400 naming
/// the field, as Google's is.
fn check_message(message: &Value) -> Result<(), String> {
    let Some(obj) = message.as_object() else {
        return Err("message".to_owned());
    };
    let targets = ["token", "topic", "condition"]
        .iter()
        .filter(|k| obj.contains_key(**k))
        .count();
    if targets != 1 || message["token"].as_str().is_none_or(str::is_empty) {
        return Err("message.token".to_owned());
    }
    if let Some(data) = obj.get("data") {
        let all_strings = data
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        if !all_strings {
            return Err("message.data".to_owned());
        }
    }
    if let Some(n) = obj.get("notification") {
        let ok = n.as_object().is_some_and(|m| {
            m.iter()
                .all(|(k, v)| matches!(k.as_str(), "title" | "body" | "image") && v.is_string())
        });
        if !ok {
            return Err("message.notification".to_owned());
        }
    }
    if let Some(android) = obj.get("android") {
        if let Some(priority) = android.get("priority") {
            if !matches!(priority.as_str(), Some("NORMAL" | "HIGH")) {
                return Err("message.android.priority".to_owned());
            }
        }
        if let Some(key) = android.get("collapse_key") {
            if !key.is_string() {
                return Err("message.android.collapse_key".to_owned());
            }
        }
    }
    if let Some(apns) = obj.get("apns") {
        if let Some(headers) = apns.get("headers") {
            let all_strings = headers
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !all_strings {
                return Err("message.apns.headers".to_owned());
            }
        }
    }
    Ok(())
}

fn invalid_argument(field: &str) -> Answer {
    google_error(
        400,
        "INVALID_ARGUMENT",
        &format!("Invalid value at '{field}'"),
        Some("INVALID_ARGUMENT"),
        &[json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": field, "description": "Invalid value" }],
        })],
    )
}

/// Google's JSON error: `{"error": {code, message, status, details}}`, FCM's error code as an
/// `FcmError` detail.
fn google_error(
    code: u16,
    status: &str,
    message: &str,
    fcm_code: Option<&str>,
    extra: &[Value],
) -> Answer {
    let mut details: Vec<Value> = Vec::new();
    if let Some(fcm_code) = fcm_code {
        details.push(json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": fcm_code,
        }));
    }
    details.extend(extra.iter().cloned());
    Answer::json(
        code,
        &json!({ "error": { "code": code, "message": message, "status": status, "details": details } }),
    )
}

fn oauth_error(error: &str, description: &str) -> Answer {
    Answer::json(
        400,
        &json!({ "error": error, "error_description": description }),
    )
}

/// `application/x-www-form-urlencoded` into a map.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => std::str::from_utf8(&[*hi, *lo])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok()),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
