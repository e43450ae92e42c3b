//! Tokens from an OpenID Connect identity provider: RS256 and ES256 JWTs checked against the
//! provider's key set (JWKS), which one background task fetches and this module keeps in memory.
//!
//! Checking a token does no I/O: its key is looked up in the set held in memory. The set is
//! fetched by [`Idp::run`]: at start; again after the answer's `max-age` (clamped to
//! [`MIN_REFRESH`]..[`MAX_REFRESH`], [`DEFAULT_REFRESH`] without one); after a failure, with a
//! backoff from [`RETRY_FIRST`] to [`RETRY_MAX`]; and when a token names a key the set lacks,
//! which is how a rotation is noticed without a restart: at most once per [`MIN_REFETCH`], so
//! a flood of made-up `kid`s costs the provider one request per 10 s. One task fetches, so
//! every token waiting for a key waits for the same request (single flight). While the
//! provider is unreachable the last set fetched stays in use; before the first fetch
//! succeeds no provider token is accepted (the node's own HS256 tokens are).

use super::jwks::{Alg, Key, KeySet, Lookup};
use super::{check_user_id, refusal, unauthenticated, Caller};
use crate::https::HttpClient;
use crate::{Error, Result};
use bytes::Bytes;
use jsonwebtoken::{decode, Validation};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Least time between two fetches a token naming an unknown key causes.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long a fetched set is used when its answer gives no `max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10 * 60);
/// Bounds on the provider's `max-age`: not every few seconds, not for days.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
/// The wait after a failed fetch, doubled after each further failure up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// The bound on one fetch (connect, TLS, answer); a token waiting for a key waits this long
/// at most.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How provider tokens are checked and read (from the config; see README).
#[derive(Debug, Clone)]
pub struct IdpSettings {
    pub jwks_url: String,
    /// The `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// The audiences a token's `aud` must name one of; none: `aud` is not checked.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The claim that is the user id (`sub` by default).
    pub user_claim: String,
    /// What makes a caller an admin; without it no provider token does.
    pub admin: Option<AdminRule>,
}

/// The claim that makes a caller an admin: `NAME` is a boolean claim that must be `true`;
/// `NAME=VALUE` is a claim that is VALUE, a space-separated list of words holding it (a
/// `scope`), or an array holding it (`roles`). A `NAME` with dots that is not a claim itself
/// walks nested objects (`realm_access.roles`). The node's own tokens mark admins the same
/// way, with `roles` holding `admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRule {
    claim: String,
    value: Option<String>,
}

impl AdminRule {
    /// `NAME` or `NAME=VALUE`, printable ASCII without spaces; `None` when malformed.
    pub fn parse(text: &str) -> Option<AdminRule> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let (claim, value) = match text.split_once('=') {
            Some((claim, value)) => (claim, Some(value)),
            None => (text, None),
        };
        if claim.is_empty() || value.is_some_and(str::is_empty) {
            return None;
        }
        Some(AdminRule {
            claim: claim.to_string(),
            value: value.map(str::to_string),
        })
    }

    fn matches(&self, claims: &Map<String, Value>) -> bool {
        match (claim(claims, &self.claim), self.value.as_deref()) {
            (Some(Value::Bool(set)), None) => *set,
            (Some(Value::String(words)), Some(want)) => words.split(' ').any(|w| w == want),
            (Some(Value::Array(items)), Some(want)) => {
                items.iter().any(|item| item.as_str() == Some(want))
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for AdminRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.claim),
            None => f.write_str(&self.claim),
        }
    }
}

/// A claim by name, or, failing that, by a dotted path through nested objects.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The outcome of checking a token against the set in memory.
pub enum Checked {
    Done(Result<Caller>),
    /// The token names a key the set lacks and a fetch that may bring it is under way: check
    /// again once `fetched` changes.
    AwaitKeys(watch::Receiver<u64>),
}

/// The identity provider: its key set in memory and how tokens are checked against it.
pub struct Idp {
    settings: IdpSettings,
    /// One validation per algorithm: `exp` required, `nbf`, `iss` and `aud` as configured.
    rs256: Validation,
    es256: Validation,
    /// The last set fetched (empty before the first).
    keys: RwLock<Arc<KeySet>>,
    /// A fetch has succeeded once.
    loaded: AtomicBool,
    schedule: Mutex<Schedule>,
    /// Wakes the fetch task when a token asks for a fetch.
    wake: Notify,
    /// Counts finished fetches, good or failed: what a token waiting for a key waits on.
    fetched: watch::Sender<u64>,
}

impl Idp {
    pub fn new(settings: IdpSettings) -> Arc<Idp> {
        let validation = |alg: Alg| {
            let mut v = Validation::new(alg.algorithm());
            v.leeway = settings.leeway_secs;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(issuer) = &settings.issuer {
                v.set_issuer(&[issuer]);
                required.push("iss");
            }
            if settings.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&settings.audience);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            v
        };
        Arc::new(Idp {
            rs256: validation(Alg::Rs256),
            es256: validation(Alg::Es256),
            settings,
            keys: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            schedule: Mutex::new(Schedule::new(Instant::now())),
            wake: Notify::new(),
            fetched: watch::Sender::new(0),
        })
    }

    /// Checks a token signed with `alg` that names `kid`. When the set lacks the key and
    /// `may_fetch`, a fetch is asked for (within the rate limit) and, if one is coming, the
    /// caller is told to wait for it.
    pub fn check(&self, token: &str, alg: Alg, kid: Option<&str>, may_fetch: bool) -> Checked {
        // Taken before the lookup, so that a fetch that ends after it is seen by the waiter.
        let fetched = may_fetch.then(|| self.fetched.subscribe());
        let keys = self.keys.read().clone();
        let key = match keys.find(kid, alg) {
            Lookup::Found(key) => key,
            Lookup::Mismatch(key_alg) => {
                return Checked::Done(Err(mismatch(alg.name(), key_alg)));
            }
            Lookup::Ambiguous => {
                return Checked::Done(Err(unauthenticated(&format!(
                    "token names no key (kid) and the key set has several {} keys",
                    alg.name()
                ))));
            }
            Lookup::Unknown => {
                if let Some(fetched) = fetched {
                    if self.schedule.lock().unknown_key(Instant::now()) {
                        self.wake.notify_one();
                        return Checked::AwaitKeys(fetched);
                    }
                }
                return Checked::Done(Err(self.unknown_key()));
            }
        };
        Checked::Done(self.verify(token, key))
    }

    /// The algorithm of the key named `kid`, if the set has one (an HS256 token naming it is
    /// an algorithm confusion attempt).
    pub fn alg_of(&self, kid: &str) -> Option<Alg> {
        self.keys.read().alg_of(kid)
    }

    fn verify(&self, token: &str, key: &Key) -> Result<Caller> {
        let validation = match key.alg {
            Alg::Rs256 => &self.rs256,
            Alg::Es256 => &self.es256,
        };
        let data = decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map_err(|e| refusal(&e))?;
        let claims = data.claims;
        let name = &self.settings.user_claim;
        let user = claim(&claims, name)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                unauthenticated(&format!("token lacks the `{name}` claim (the user id)"))
            })?;
        check_user_id("user", user)
            .map_err(|_| unauthenticated(&format!("token `{name}` is not a valid user id")))?;
        Ok(Caller {
            user_id: user.to_string(),
            admin: self
                .settings
                .admin
                .as_ref()
                .is_some_and(|r| r.matches(&claims)),
        })
    }

    fn unknown_key(&self) -> Error {
        unauthenticated(if self.loaded.load(Ordering::Acquire) {
            "token signed with an unknown key: its kid is not in the identity provider's key set"
        } else {
            "token signed with an unknown key: the identity provider's key set could not be \
             fetched yet"
        })
    }

    /// Waits until the fetch a [`Checked::AwaitKeys`] named has finished (or a fetch's
    /// timeout has passed).
    pub async fn wait_for_fetch(mut fetched: watch::Receiver<u64>) {
        let _ =
            tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), fetched.changed()).await;
    }

    /// Replaces the set, logging what changed.
    fn install(&self, set: KeySet) {
        let (before, after) = {
            let mut keys = self.keys.write();
            let before = keys.kids();
            let after = set.kids();
            *keys = Arc::new(set);
            (before, after)
        };
        let first = !self.loaded.swap(true, Ordering::AcqRel);
        if first {
            tracing::info!(url = %self.settings.jwks_url, keys = ?after, "identity provider key set loaded");
        } else if before != after {
            let added: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
            let removed: Vec<&String> = before.iter().filter(|k| !after.contains(k)).collect();
            tracing::info!(?added, ?removed, "identity provider key set changed");
        }
        if after.is_empty() {
            tracing::warn!(url = %self.settings.jwks_url, "the identity provider's key set has no usable key");
        }
    }

    /// Fetches the set whenever the schedule says, until `shutdown`.
    pub async fn run(self: Arc<Self>, client: HttpClient, shutdown: CancellationToken) {
        loop {
            let wait = {
                let mut schedule = self.schedule.lock();
                let now = Instant::now();
                if schedule.due(now) {
                    schedule.started();
                    None
                } else {
                    Some(schedule.next_fetch())
                }
            };
            if let Some(at) = wait {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            let outcome = tokio::select! {
                outcome = self.fetch(&client) => outcome,
                _ = shutdown.cancelled() => return,
            };
            let now = Instant::now();
            match outcome {
                Ok((set, max_age)) => {
                    self.install(set);
                    self.schedule.lock().succeeded(now, max_age);
                }
                Err(reason) => {
                    let retry = self.schedule.lock().failed(now);
                    tracing::warn!(
                        url = %self.settings.jwks_url,
                        %reason,
                        retry_in = ?retry,
                        "cannot fetch the identity provider's key set; keeping the keys it had"
                    );
                }
            }
            self.fetched.send_modify(|n| *n += 1);
        }
    }

    /// One fetch: the usable keys and the answer's `max-age`.
    async fn fetch(
        &self,
        client: &HttpClient,
    ) -> std::result::Result<(KeySet, Option<Duration>), String> {
        let request = http::Request::get(&self.settings.jwks_url)
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| e.to_string())?;
        let reply = client.send(request).await.map_err(|e| e.to_string())?;
        if reply.status != http::StatusCode::OK {
            return Err(format!("answered {}", reply.status));
        }
        let (set, skipped) = KeySet::parse(&reply.body)?;
        for reason in skipped {
            tracing::debug!(%reason, "identity provider key skipped");
        }
        let max_age = reply
            .headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        Ok((set, max_age))
    }

    #[cfg(test)]
    fn install_for_test(&self, set: KeySet) {
        self.install(set);
    }
}

/// The refusal of a token whose `alg` is not its key's.
pub(super) fn mismatch(token_alg: &str, key_alg: Alg) -> Error {
    unauthenticated(&format!(
        "token algorithm {token_alg} does not match its key ({})",
        key_alg.name()
    ))
}

/// `max-age` of a `Cache-Control` value (`no-cache` and `no-store` count as 0).
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-cache" || directive == "no-store" {
            return Some(Duration::ZERO);
        }
        let secs = directive.strip_prefix("max-age=")?;
        secs.trim_matches('"').parse().ok().map(Duration::from_secs)
    })
}

/// When the fetch task fetches: a pure state machine over the instants it is given.
#[derive(Debug)]
struct Schedule {
    /// When the next fetch is due without a token asking: at start, a refresh, a retry.
    due: Instant,
    /// A token asked for a fetch that has not started yet.
    asked: bool,
    /// A fetch is under way.
    fetching: bool,
    /// When a token last made a fetch happen (the rate limit).
    last_asked: Option<Instant>,
    /// Fetches that failed in a row (the backoff).
    failures: u32,
}

impl Schedule {
    fn new(now: Instant) -> Self {
        Schedule {
            due: now,
            asked: false,
            fetching: false,
            last_asked: None,
            failures: 0,
        }
    }

    /// A token names a key the set lacks: whether a fetch that may bring it is coming (one
    /// under way, asked for or due anyway, as the first one is; or a new one the rate limit
    /// allows).
    fn unknown_key(&mut self, now: Instant) -> bool {
        if self.fetching || self.asked || now >= self.due {
            return true;
        }
        if self
            .last_asked
            .is_some_and(|last| now.duration_since(last) < MIN_REFETCH)
        {
            return false;
        }
        self.asked = true;
        self.last_asked = Some(now);
        true
    }

    fn due(&self, now: Instant) -> bool {
        !self.fetching && (self.asked || now >= self.due)
    }

    /// When to fetch if no token asks first.
    fn next_fetch(&self) -> Instant {
        self.due
    }

    fn started(&mut self) {
        self.fetching = true;
        self.asked = false;
    }

    fn succeeded(&mut self, now: Instant, max_age: Option<Duration>) {
        self.fetching = false;
        self.failures = 0;
        let refresh = max_age.map_or(DEFAULT_REFRESH, |age| age.clamp(MIN_REFRESH, MAX_REFRESH));
        self.due = now + refresh;
    }

    /// The wait before the next try.
    fn failed(&mut self, now: Instant) -> Duration {
        self.fetching = false;
        let wait = RETRY_FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        self.due = now + wait;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use push_fakes::idp::{FakeIdp, IdpKey};
    use push_fakes::tls::TestPki;
    use serde_json::json;

    const SECRET: &[u8] = b"node-secret-0123456789";
    const ISSUER: &str = "https://idp.test/";

    fn settings() -> IdpSettings {
        IdpSettings {
            jwks_url: "https://127.0.0.1:1/jwks".into(),
            issuer: Some(ISSUER.into()),
            audience: vec!["chat".into(), "chat-web".into()],
            leeway_secs: 5,
            user_claim: "sub".into(),
            admin: None,
        }
    }

    fn now() -> u64 {
        crate::clock::now_ms() as u64 / 1000
    }

    fn claims(user: &str) -> Value {
        json!({"sub": user, "iss": ISSUER, "aud": "chat", "exp": now() + 300, "iat": now()})
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value;
        }
        claims
    }

    /// An authenticator that accepts HS256 with [`SECRET`] and the provider keys given.
    fn authenticator(s: IdpSettings, keys: &[&IdpKey]) -> (Authenticator, Arc<Idp>) {
        let idp = Idp::new(s);
        let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        idp.install_for_test(KeySet::parse(doc.to_string().as_bytes()).unwrap().0);
        let auth = Authenticator::new(SECRET).with_idp(idp.clone());
        (auth, idp)
    }

    fn refusal_of(auth: &Authenticator, token: &str) -> String {
        match auth.verify(token) {
            Err(Error::Unauthenticated(msg)) => {
                assert!(!msg.contains(token), "the refusal echoes the token: {msg}");
                msg
            }
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }

    #[test]
    fn rs256_and_es256_tokens_are_accepted_beside_hs256() {
        let (rsa, ec) = (IdpKey::rsa("r1", 0), IdpKey::ec("e1"));
        let (auth, _) = authenticator(settings(), &[&rsa, &ec]);
        let alice = auth.verify(&rsa.sign(&claims("alice"))).unwrap();
        assert_eq!(
            alice,
            Caller {
                user_id: "alice".into(),
                admin: false
            }
        );
        assert_eq!(
            auth.verify(&ec.sign(&claims("bob"))).unwrap().user_id,
            "bob"
        );
        // An `aud` array naming one accepted audience is enough.
        let web = with(claims("carol"), "aud", json!(["other", "chat-web"]));
        assert_eq!(auth.verify(&rsa.sign(&web)).unwrap().user_id, "carol");
        // The node's own tokens still work, without iss or aud.
        let own = auth
            .mint("dave", None, Duration::from_secs(60), true)
            .unwrap();
        assert_eq!(
            auth.verify(&own).unwrap(),
            Caller {
                user_id: "dave".into(),
                admin: true
            }
        );
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let (rsa, ec, stranger) = (IdpKey::rsa("r1", 0), IdpKey::ec("e1"), IdpKey::rsa("r1", 1));
        let (auth, _) = authenticator(settings(), &[&rsa, &ec]);
        let cases: Vec<(String, &str)> = vec![
            (rsa.sign(&with(claims("a"), "exp", json!(now() - 60))), "token expired"),
            (rsa.sign(&with(claims("a"), "nbf", json!(now() + 60))), "token is not valid yet (nbf)"),
            (rsa.sign(&with(claims("a"), "iss", json!("https://evil.test/"))), "token has the wrong issuer"),
            (rsa.sign(&with(claims("a"), "iss", Value::Null)), "token lacks the `iss` claim"),
            (ec.sign(&with(claims("a"), "aud", json!("other-app"))), "token has the wrong audience"),
            (ec.sign(&with(claims("a"), "aud", Value::Null)), "token lacks the `aud` claim"),
            (ec.sign(&with(claims("a"), "exp", Value::Null)), "token lacks the `exp` claim"),
            (ec.sign(&with(claims("a"), "sub", Value::Null)), "token lacks the `sub` claim (the user id)"),
            (ec.sign(&with(claims("a"), "sub", json!(""))), "token `sub` is not a valid user id"),
            // Signed by another key that claims to be r1.
            (stranger.sign(&claims("a")), "token signature is invalid"),
            // An ES256 header on the RSA key's kid, and the other way round.
            (ec.sign_as(Algorithm::ES256, Some("r1"), &claims("a")), "token algorithm ES256 does not match its key (RS256)"),
            (rsa.sign_as(Algorithm::RS256, Some("e1"), &claims("a")), "token algorithm RS256 does not match its key (ES256)"),
            (IdpKey::rsa("r9", 1).sign(&claims("a")), "token signed with an unknown key: its kid is not in the identity provider's key set"),
        ];
        for (token, want) in cases {
            assert_eq!(refusal_of(&auth, &token), want);
        }
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let rsa = IdpKey::rsa("r1", 0);
        let (auth, _) = authenticator(settings(), &[&rsa]);
        let hs256 = |kid: Option<&str>| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_string);
            // The public key as an HMAC secret: what a verifier that takes the header's alg
            // with the JWK's key material would accept.
            let key = EncodingKey::from_secret(rsa.public_pem().as_bytes());
            encode(&header, &claims("mallory"), &key).unwrap()
        };
        assert_eq!(
            refusal_of(&auth, &hs256(Some("r1"))),
            "token algorithm HS256 does not match its key (RS256)"
        );
        // Without the kid it is an HS256 token like the node's own, and the secret is not that.
        assert_eq!(
            refusal_of(&auth, &hs256(None)),
            "token signature is invalid"
        );
        // `none`, and algorithms the set has no key type for.
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims("mallory").to_string().as_bytes())
        );
        assert_eq!(
            refusal_of(&auth, &unsigned),
            "unsupported token algorithm \"none\": accepted are HS256, RS256 and ES256"
        );
        let ps256 = rsa.sign_as(Algorithm::PS256, Some("r1"), &claims("mallory"));
        assert_eq!(
            refusal_of(&auth, &ps256),
            "unsupported token algorithm \"PS256\": accepted are HS256, RS256 and ES256"
        );
    }

    #[test]
    fn without_a_provider_rs256_is_refused_and_hs256_works() {
        let auth = Authenticator::new(SECRET);
        let token = IdpKey::rsa("r1", 0).sign(&claims("alice"));
        assert_eq!(
            refusal_of(&auth, &token),
            "token algorithm RS256 is not accepted: this server has no identity provider (--jwks-url)"
        );
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let rsa = IdpKey::rsa("r1", 0);
        let (strict, _) = authenticator(settings(), &[&rsa]);
        let (lenient, _) = authenticator(
            IdpSettings {
                leeway_secs: 120,
                ..settings()
            },
            &[&rsa],
        );
        let late = rsa.sign(&with(claims("a"), "exp", json!(now() - 60)));
        let early = rsa.sign(&with(claims("a"), "nbf", json!(now() + 60)));
        let just_expired = rsa.sign(&with(claims("a"), "exp", json!(now() - 2)));
        assert_eq!(refusal_of(&strict, &late), "token expired");
        assert_eq!(refusal_of(&strict, &early), "token is not valid yet (nbf)");
        assert!(
            strict.verify(&just_expired).is_ok(),
            "within the default 5 s"
        );
        assert!(lenient.verify(&late).is_ok());
        assert!(lenient.verify(&early).is_ok());
    }

    #[test]
    fn the_user_and_admin_claims_are_configurable() {
        let ec = IdpKey::ec("e1");
        let rule = |text: &str| Some(AdminRule::parse(text).unwrap());
        let nested = IdpSettings {
            user_claim: "preferred_username".into(),
            admin: rule("realm_access.roles=chat-admin"),
            ..settings()
        };
        let (auth, _) = authenticator(nested, &[&ec]);
        let admin = with(claims("id-1"), "preferred_username", json!("alice"));
        let admin = with(
            admin,
            "realm_access",
            json!({"roles": ["user", "chat-admin"]}),
        );
        assert_eq!(
            auth.verify(&ec.sign(&admin)).unwrap(),
            Caller {
                user_id: "alice".into(),
                admin: true
            }
        );
        let user = with(claims("id-2"), "preferred_username", json!("bob"));
        assert!(!auth.verify(&ec.sign(&user)).unwrap().admin);
        assert_eq!(
            refusal_of(&auth, &ec.sign(&claims("id-3"))),
            "token lacks the `preferred_username` claim (the user id)"
        );

        let flag = AdminRule::parse("is_admin").unwrap();
        let scope = AdminRule::parse("scope=chat:admin").unwrap();
        let map = |v: Value| v.as_object().unwrap().clone();
        assert!(flag.matches(&map(json!({"is_admin": true}))));
        assert!(!flag.matches(&map(json!({"is_admin": "true"}))));
        assert!(!flag.matches(&map(json!({}))));
        assert!(scope.matches(&map(json!({"scope": "openid chat:admin"}))));
        assert!(!scope.matches(&map(json!({"scope": "openid chat:adminx"}))));
        // A claim whose name has dots is read as it is before any path.
        let url = AdminRule::parse("https://chat.example/roles=admin").unwrap();
        assert!(url.matches(&map(json!({"https://chat.example/roles": ["admin"]}))));
        for bad in ["", "=x", "roles=", "a b", "rôle"] {
            assert_eq!(AdminRule::parse(bad), None, "{bad:?}");
        }
        assert_eq!(url.to_string(), "https://chat.example/roles=admin");
    }

    #[test]
    fn a_flood_of_unknown_keys_fetches_once_per_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert!(s.due(t0), "the first fetch is at once");
        // A token before the first fetch waits for it, and counts against no rate limit.
        assert!(s.unknown_key(t0));
        assert_eq!(s.last_asked, None);
        s.started();
        // Tokens arriving during the first fetch wait for it.
        assert!(s.unknown_key(t0));
        s.succeeded(t0, None);
        assert_eq!(s.next_fetch(), t0 + DEFAULT_REFRESH);
        let t1 = t0 + Duration::from_secs(1);
        assert!(!s.due(t1));
        // An unknown key asks for a fetch; the ones after it share that fetch ...
        assert!(s.unknown_key(t1));
        assert!(s.due(t1));
        assert!(s.unknown_key(t1));
        s.started();
        assert!(s.unknown_key(t1), "a fetch is under way");
        s.succeeded(t1, Some(Duration::from_secs(5)));
        assert_eq!(s.next_fetch(), t1 + MIN_REFRESH, "max-age is clamped");
        // ... and for 10 s after it, an unknown key causes no fetch.
        let t2 = t1 + MIN_REFETCH - Duration::from_millis(1);
        assert!(!s.unknown_key(t2));
        assert!(!s.due(t2));
        let t3 = t1 + MIN_REFETCH;
        assert!(s.unknown_key(t3));
        assert!(s.due(t3));
        s.started();
        s.succeeded(t3, Some(Duration::from_secs(86_400)));
        assert_eq!(s.next_fetch(), t3 + MAX_REFRESH);
    }

    #[test]
    fn failed_fetches_back_off() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        let waits: Vec<u64> = (0..9)
            .map(|_| {
                s.started();
                s.failed(t0).as_secs()
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(s.next_fetch(), t0 + RETRY_MAX);
        s.started();
        s.succeeded(t0, None);
        s.started();
        assert_eq!(s.failed(t0), RETRY_FIRST, "a success resets the backoff");
    }

    #[test]
    fn cache_control_gives_the_refresh() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("Max-Age=\"20\", must-revalidate"),
            Some(Duration::from_secs(20))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
    }

    #[test]
    fn an_unknown_key_asks_for_a_fetch_even_without_waiting() {
        let rsa = IdpKey::rsa("r1", 0);
        let (auth, idp) = authenticator(settings(), &[&rsa]);
        {
            let mut s = idp.schedule.lock();
            s.started();
            s.succeeded(Instant::now(), None);
        }
        let token = IdpKey::rsa("r2", 1).sign(&claims("a"));
        assert!(auth.verify(&token).is_err());
        assert!(
            idp.schedule.lock().asked,
            "the fetch task was asked to fetch"
        );
    }

    /// The fetch task against a real HTTPS key server: the first set, a rotation noticed
    /// through a new kid (one fetch for many waiting tokens), a retired key refused.
    /// An authenticator whose provider keys come from `server`, fetched by a running task.
    fn fetching(
        pki: &TestPki,
        server: &FakeIdp,
    ) -> (
        Authenticator,
        Arc<Idp>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        pki.write_ca_pem(&ca).unwrap();
        // The client reads the CA file here; the directory may go afterwards.
        let client = HttpClient::new(&crate::https::HttpConfig {
            extra_ca_pem: Some(ca),
            timeout: FETCH_TIMEOUT,
        })
        .unwrap();
        let idp = Idp::new(IdpSettings {
            jwks_url: server.jwks_url(),
            ..settings()
        });
        let auth = Authenticator::new(SECRET).with_idp(idp.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(idp.clone().run(client, shutdown.clone()));
        (auth, idp, shutdown, task)
    }

    #[tokio::test]
    async fn keys_are_fetched_and_rotated_without_a_restart() {
        let pki = TestPki::shared();
        let (a, b, c) = (IdpKey::rsa("a", 0), IdpKey::ec("b"), IdpKey::rsa("c", 1));
        let server = FakeIdp::start(pki, &[&a]).await;
        let (auth, idp, shutdown, task) = fetching(pki, &server);

        // A token right after start waits for the first fetch.
        let alice = auth.authenticate(&a.sign(&claims("alice"))).await.unwrap();
        assert_eq!(alice.user_id, "alice");
        assert_eq!(server.fetches(), 1);

        // The provider adds b and signs with it: the first b token makes one fetch, which
        // every concurrent b token waits for.
        server.publish(&[&a, &b]);
        let token = b.sign(&claims("bob"));
        let waits: Vec<_> = (0..20)
            .map(|_| {
                let (auth, token) = (auth.clone(), token.clone());
                tokio::spawn(async move { auth.authenticate(&token).await })
            })
            .collect();
        for wait in waits {
            assert_eq!(wait.await.unwrap().unwrap().user_id, "bob");
        }
        assert_eq!(server.fetches(), 2);

        // Made-up kids within the next 10 s fetch nothing more.
        for i in 0..10 {
            let bogus = a.sign_as(Algorithm::RS256, Some(&format!("bogus-{i}")), &claims("x"));
            let msg = auth.authenticate(&bogus).await.unwrap_err().to_string();
            assert!(msg.contains("unknown key"), "{msg}");
        }
        assert_eq!(server.fetches(), 2);

        // a is retired, c is added; once the set is fetched again, a's tokens are refused.
        server.publish(&[&b, &c]);
        {
            // Skip the rate limit's wait rather than sleep through it.
            idp.schedule.lock().last_asked = None;
        }
        assert_eq!(
            auth.authenticate(&c.sign(&claims("carol")))
                .await
                .unwrap()
                .user_id,
            "carol"
        );
        assert_eq!(server.fetches(), 3);
        let msg = auth
            .authenticate(&a.sign(&claims("alice")))
            .await
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown key"), "{msg}");

        shutdown.cancel();
        task.await.unwrap();
    }

    /// An unreachable provider at start: its tokens are refused, saying so, and accepted once
    /// a retry gets the set; HS256 works all along.
    #[tokio::test]
    async fn a_provider_down_at_start_is_retried() {
        let pki = TestPki::shared();
        let a = IdpKey::ec("a");
        let server = FakeIdp::start(pki, &[&a]).await;
        server.set_down(true);
        let (auth, _, shutdown, task) = fetching(pki, &server);

        let token = a.sign(&claims("alice"));
        let msg = auth.authenticate(&token).await.unwrap_err().to_string();
        assert!(msg.contains("could not be fetched yet"), "{msg}");
        let own = auth
            .mint("bob", None, Duration::from_secs(60), false)
            .unwrap();
        assert_eq!(auth.authenticate(&own).await.unwrap().user_id, "bob");

        server.set_down(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match auth.authenticate(&token).await {
                Ok(caller) => break assert_eq!(caller.user_id, "alice"),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("still refused after the provider came back: {e}"),
            }
        }
        shutdown.cancel();
        task.await.unwrap();
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
