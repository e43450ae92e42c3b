//! A fake Web Push service that is also the browser: it hands out subscriptions (a fresh P-256
//! key pair and auth secret each, the endpoint on this server), checks each push as a push
//! service does (VAPID JWT signed by the `k` key with `aud` = this origin, port included, and
//! the RFC 8030 headers), decrypts the payload as the browser would (RFC 8291 / RFC 8188), and
//! records the plaintext. Answers are scripted per request or per subscription.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine;
use hkdf::Hkdf;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use parking_lot::Mutex;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use crate::server::{Alpn, Answer, FakeServer, Recorded};
use crate::tls::TestPki;

const PATH_PREFIX: &str = "/wpush/";
const MAX_BODY: usize = 4096;
const MAX_JWT_LIFETIME_SECS: u64 = 24 * 3600;

/// How the fake answers one push that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebPushAnswer {
    /// 201 Created with a `Location`.
    Created,
    /// 404: no such subscription.
    NotFound,
    /// 410: the subscription expired or was unsubscribed.
    Gone,
    /// 429, with `Retry-After` (seconds) if given.
    TooManyRequests { retry_after: Option<u64> },
    /// Any status with this text as the body.
    Status(u16, String),
    /// No answer at all.
    Stall,
}

/// The VAPID claims of an accepted push, and the key that signed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vapid {
    pub aud: String,
    pub exp: u64,
    pub sub: String,
    /// The `k` parameter: the application server's public key, base64url.
    pub k: String,
}

/// One push that passed the checks and decrypted, with how it was answered.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The subscription's id (the last path segment of its endpoint).
    pub subscription: String,
    pub headers: HeaderMap,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
    pub vapid: Vapid,
    pub answered: WebPushAnswer,
}

impl Delivered {
    /// The plaintext as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.plaintext).ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A push the fake refused before any scripted answer, and why (the answer's body).
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

struct Subscription {
    secret: SecretKey,
    auth: [u8; 16],
    /// The `applicationServerKey` the browser subscribed with: pushes must be signed by it.
    server_key: Option<String>,
}

struct State {
    /// `https://127.0.0.1:port`, set once the server listens.
    origin: OnceLock<String>,
    subscriptions: Mutex<HashMap<String, Subscription>>,
    next: Mutex<VecDeque<WebPushAnswer>>,
    per_subscription: Mutex<HashMap<String, WebPushAnswer>>,
    delivered: Mutex<Vec<Delivered>>,
    refused: Mutex<Vec<Refused>>,
}

/// The fake push service.
pub struct FakeWebPush {
    server: FakeServer,
    state: Arc<State>,
}

impl FakeWebPush {
    /// Starts the fake (HTTP/1.1 and HTTP/2) with the PKI's certificate.
    pub async fn start(pki: &TestPki) -> Self {
        let state = Arc::new(State {
            origin: OnceLock::new(),
            subscriptions: Mutex::new(HashMap::new()),
            next: Mutex::new(VecDeque::new()),
            per_subscription: Mutex::new(HashMap::new()),
            delivered: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        let server = FakeServer::https(
            pki,
            Alpn::Both,
            Arc::new(move |req: &Recorded| handle(&handler_state, req)),
        )
        .await
        .expect("fake Web Push service listens");
        // Known only once the port is; no subscription (so no valid push) exists before.
        let _ = state.origin.set(server.url());
        FakeWebPush { server, state }
    }

    /// `https://127.0.0.1:port`: the origin the VAPID `aud` must name.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `127.0.0.1:port`, as an allowed-hosts entry.
    pub fn host_port(&self) -> String {
        self.server.addr().to_string()
    }

    /// A new subscription, as the browser's `PushSubscription.toJSON()` gives it:
    /// `{"endpoint", "expirationTime": null, "keys": {"p256dh", "auth"}}`. Any VAPID key may
    /// sign pushes to it.
    pub fn new_subscription(&self) -> String {
        self.subscribe(None)
    }

    /// A new subscription made with `applicationServerKey` (base64url public key): pushes
    /// signed by another key are refused (403), as browsers' push services do.
    pub fn new_subscription_for(&self, application_server_key: &str) -> String {
        self.subscribe(Some(application_server_key.to_owned()))
    }

    fn subscribe(&self, server_key: Option<String>) -> String {
        let secret = SecretKey::random(&mut OsRng);
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        let mut id_bytes = [0u8; 18];
        OsRng.fill_bytes(&mut id_bytes);
        let id = b64url(&id_bytes);
        let p256dh = b64url(secret.public_key().to_encoded_point(false).as_bytes());
        let token = json!({
            "endpoint": format!("{}{PATH_PREFIX}{id}", self.url()),
            "expirationTime": null,
            "keys": { "p256dh": p256dh, "auth": b64url(&auth) },
        });
        self.state.subscriptions.lock().insert(
            id,
            Subscription {
                secret,
                auth,
                server_key,
            },
        );
        token.to_string()
    }

    /// The subscription id of a token this fake made.
    pub fn subscription_id(token: &str) -> Option<String> {
        let value: Value = serde_json::from_str(token).ok()?;
        let endpoint = value.get("endpoint")?.as_str()?;
        Some(endpoint.rsplit_once('/')?.1.to_owned())
    }

    /// Forgets a subscription: pushes to it get 410 Gone (the browser unsubscribed).
    pub fn unsubscribe(&self, token: &str) {
        if let Some(id) = Self::subscription_id(token) {
            self.state.subscriptions.lock().remove(&id);
        }
    }

    /// The answer to the next push that passes the checks (before any per-subscription one).
    pub fn answer_next(&self, answer: WebPushAnswer) {
        self.state.next.lock().push_back(answer);
    }

    /// Every push to the subscription `token` that passes the checks gets this answer.
    pub fn answer_for(&self, token: &str, answer: WebPushAnswer) {
        if let Some(id) = Self::subscription_id(token) {
            self.state.per_subscription.lock().insert(id, answer);
        }
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.state.delivered.lock().clone()
    }

    pub fn refused(&self) -> Vec<Refused> {
        self.state.refused.lock().clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }

    pub fn request_count(&self) -> usize {
        self.server.request_count()
    }
}

fn handle(state: &State, req: &Recorded) -> Answer {
    match accept(state, req) {
        Ok(answer) => answer,
        Err((status, reason)) => {
            state.refused.lock().push(Refused {
                status,
                reason: reason.clone(),
            });
            Answer::status(status)
                .header("content-type", "text/plain")
                .body(reason)
        }
    }
}

type Refusal = (u16, String);

fn accept(state: &State, req: &Recorded) -> Result<Answer, Refusal> {
    let Some(id) = req.path.strip_prefix(PATH_PREFIX) else {
        return Err((404, "no such path".into()));
    };
    if req.method != http::Method::POST {
        return Err((405, "POST only".into()));
    }
    let (secret, auth, server_key) = match state.subscriptions.lock().get(id) {
        Some(s) => (s.secret.clone(), s.auth, s.server_key.clone()),
        None => return Err((410, "no such subscription".into())),
    };
    let vapid = check_vapid(state, req)?;
    if server_key.is_some_and(|key| key != vapid.k) {
        return Err((
            403,
            "VAPID key is not the subscription's applicationServerKey".into(),
        ));
    }
    check_headers(req)?;
    if req.body.len() > MAX_BODY {
        return Err((413, format!("body of {} bytes", req.body.len())));
    }
    let plaintext =
        decrypt(&secret, &auth, &req.body).map_err(|why| (400, format!("aes128gcm: {why}")))?;

    let answer = state
        .next
        .lock()
        .pop_front()
        .or_else(|| state.per_subscription.lock().get(id).cloned())
        .unwrap_or(WebPushAnswer::Created);
    state.delivered.lock().push(Delivered {
        subscription: id.to_owned(),
        headers: req.headers.clone(),
        plaintext,
        vapid,
        answered: answer.clone(),
    });
    Ok(match answer {
        WebPushAnswer::Created => {
            let n = state.delivered.lock().len();
            Answer::status(201).header("location", format!("{}/m/{n}", origin(state)))
        }
        WebPushAnswer::NotFound => Answer::status(404).body("subscription not found"),
        WebPushAnswer::Gone => Answer::status(410).body("subscription expired"),
        WebPushAnswer::TooManyRequests { retry_after } => {
            let answer = Answer::status(429).body("slow down");
            match retry_after {
                Some(secs) => answer.header("retry-after", secs.to_string()),
                None => answer,
            }
        }
        WebPushAnswer::Status(status, body) => Answer::status(status).body(body),
        WebPushAnswer::Stall => Answer::stall(),
    })
}

#[derive(Deserialize)]
struct Claims {
    aud: String,
    exp: u64,
    sub: String,
}

/// RFC 8292: `Authorization: vapid t=<JWT>, k=<key>`; the JWT is ES256, signed by `k`, `aud`
/// this origin exactly (with its port), `exp` ahead but within 24 h, `sub` a contact URI.
fn check_vapid(state: &State, req: &Recorded) -> Result<Vapid, Refusal> {
    let unauthorized = |why: &str| (401, format!("VAPID: {why}"));
    let value = req
        .header("authorization")
        .ok_or_else(|| unauthorized("no Authorization"))?;
    let params = value
        .strip_prefix("vapid ")
        .ok_or_else(|| unauthorized("scheme is not vapid"))?;
    let (mut t, mut k) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.trim()),
            Some(("k", v)) => k = Some(v.trim()),
            _ => return Err(unauthorized("unknown parameter")),
        }
    }
    let (Some(t), Some(k)) = (t, k) else {
        return Err(unauthorized("t and k are both required"));
    };
    let point = b64url_decode(k).ok_or_else(|| unauthorized("k is not base64url"))?;
    if point.len() != 65 || PublicKey::from_sec1_bytes(&point).is_err() {
        return Err(unauthorized("k is not an uncompressed P-256 point"));
    }
    let header = jsonwebtoken::decode_header(t).map_err(|_| unauthorized("t is not a JWT"))?;
    if header.alg != Algorithm::ES256 {
        return Err(unauthorized("JWT is not ES256"));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.set_audience(&[origin(state)]);
    let claims = jsonwebtoken::decode::<Claims>(t, &DecodingKey::from_ec_der(&point), &validation)
        .map_err(|e| (403, format!("VAPID: JWT refused: {e}")))?
        .claims;
    if claims.exp > now_secs() + MAX_JWT_LIFETIME_SECS {
        return Err((403, "VAPID: exp more than 24 h ahead".into()));
    }
    if !(claims.sub.starts_with("mailto:") || claims.sub.starts_with("https://")) {
        return Err((403, "VAPID: sub is not a mailto: or https: URI".into()));
    }
    Ok(Vapid {
        aud: claims.aud,
        exp: claims.exp,
        sub: claims.sub,
        k: k.to_owned(),
    })
}

/// RFC 8030 §5 and RFC 8291 §4: the headers a push service requires or checks.
fn check_headers(req: &Recorded) -> Result<(), Refusal> {
    if req
        .header("ttl")
        .and_then(|v| v.parse::<u64>().ok())
        .is_none()
    {
        return Err((400, "TTL header missing or not a number".into()));
    }
    if req.header("content-encoding") != Some("aes128gcm") {
        return Err((400, "Content-Encoding must be aes128gcm".into()));
    }
    if !matches!(
        req.header("urgency"),
        None | Some("very-low" | "low" | "normal" | "high")
    ) {
        return Err((400, "bad Urgency".into()));
    }
    if let Some(topic) = req.header("topic") {
        let url_safe = topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if topic.is_empty() || topic.len() > 32 || !url_safe {
            return Err((
                400,
                "Topic must be 1 to 32 URL-safe base64 characters".into(),
            ));
        }
    }
    Ok(())
}

/// The browser's side of RFC 8291: ECDH with the key in the header, the HKDF steps, then
/// every RFC 8188 record opened and its padding removed.
pub fn decrypt(ua_secret: &SecretKey, auth: &[u8; 16], body: &[u8]) -> Result<Vec<u8>, String> {
    if body.len() < 86 {
        return Err("shorter than the header".into());
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    if body[20] != 65 {
        return Err(format!("idlen {} (a P-256 point is 65)", body[20]));
    }
    if rs < 18 {
        return Err(format!("record size {rs}"));
    }
    let as_public =
        PublicKey::from_sec1_bytes(&body[21..86]).map_err(|_| "keyid is not a P-256 point")?;
    let records = &body[86..];
    if records.is_empty() {
        return Err("no record".into());
    }

    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
    let ua_point = ua_secret.public_key().to_encoded_point(false);
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_point.as_bytes());
    key_info.extend_from_slice(&body[21..86]);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| "hkdf")?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| "hkdf")?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| "hkdf")?;

    let cipher = Aes128Gcm::new(&cek.into());
    let chunks: Vec<&[u8]> = records.chunks(rs).collect();
    let mut plaintext = Vec::new();
    for (seq, record) in chunks.iter().enumerate() {
        let mut record_nonce = nonce;
        for (i, b) in (seq as u64).to_be_bytes().iter().enumerate() {
            record_nonce[4 + i] ^= b;
        }
        let opened = cipher
            .decrypt(&Nonce::from(record_nonce), *record)
            .map_err(|_| format!("record {seq} does not decrypt"))?;
        let end = opened
            .iter()
            .rposition(|&b| b != 0)
            .ok_or_else(|| format!("record {seq} has no delimiter"))?;
        let expected = if seq + 1 == chunks.len() { 2 } else { 1 };
        if opened[end] != expected {
            return Err(format!(
                "record {seq}: delimiter {} (expected {expected})",
                opened[end]
            ));
        }
        plaintext.extend_from_slice(&opened[..end]);
    }
    Ok(plaintext)
}

fn origin(state: &State) -> &str {
    state.origin.get().map(String::as_str).unwrap_or_default()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
