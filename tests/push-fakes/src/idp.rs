//! A fake OpenID Connect identity provider: its key set (JWKS) served over TLS, and the keys
//! that sign its tokens (RS256 with RSA keys, ES256 with P-256 keys), for chatd's OIDC tests.
//! The set it serves can be changed at any time (a rotation) or made to fail (an outage).

use crate::server::{Alpn, Answer, FakeServer, Recorded};
use crate::tls::TestPki;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use parking_lot::Mutex;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

/// Where the fake serves its key set.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// RSA keys generated once per test process (RSA key generation is slow in a debug build).
const RSA_POOL: usize = 4;

fn rsa_key(n: usize) -> &'static RsaPrivateKey {
    static POOL: [OnceLock<RsaPrivateKey>; RSA_POOL] = [const { OnceLock::new() }; RSA_POOL];
    POOL[n].get_or_init(|| RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key"))
}

/// A signing key of the provider, with its public JWK.
#[derive(Clone)]
pub struct IdpKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: String,
}

impl std::fmt::Debug for IdpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl IdpKey {
    /// An RS256 key named `kid`: the `n`th (0..4) of the process's RSA keys, so two keys with
    /// the same `n` are the same key.
    pub fn rsa(kid: &str, n: usize) -> Self {
        let key = rsa_key(n);
        let der = key.to_pkcs1_der().expect("PKCS#1 DER");
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("public key PEM");
        IdpKey {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
            }),
            public_pem,
        }
    }

    /// A new ES256 key (P-256) named `kid`.
    pub fn ec(kid: &str) -> Self {
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let der = secret.to_pkcs8_der().expect("PKCS#8 DER");
        let public = secret.public_key();
        let point = public.to_encoded_point(false);
        let public_pem = public
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("public key PEM");
        IdpKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({
                "kty": "EC",
                "use": "sig",
                "alg": "ES256",
                "crv": "P-256",
                "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(point.x().expect("x")),
                "y": URL_SAFE_NO_PAD.encode(point.y().expect("y")),
            }),
            public_pem,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, as the set lists it.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// The public key as SPKI PEM (what an algorithm confusion attack uses as HMAC secret).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A token with these claims, signed with this key, its header naming the key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    /// A token signed with this key but with the header's `alg` and `kid` given.
    pub fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }
}

struct State {
    /// The JWKS document served.
    document: Mutex<Value>,
    /// The `Cache-Control` sent with it, if any.
    cache_control: Mutex<Option<String>>,
    /// Answer 503 instead (an outage).
    down: Mutex<bool>,
}

/// The fake provider's key server (HTTPS with the test PKI's certificate).
pub struct FakeIdp {
    server: FakeServer,
    state: Arc<State>,
}

impl FakeIdp {
    /// Serves a set of `keys` at [`JWKS_PATH`].
    pub async fn start(pki: &TestPki, keys: &[&IdpKey]) -> Self {
        let state = Arc::new(State {
            document: Mutex::new(document(keys)),
            cache_control: Mutex::new(None),
            down: Mutex::new(false),
        });
        let serving = state.clone();
        let handler = move |req: &Recorded| {
            if *serving.down.lock() {
                return Answer::status(503).body("down for the test");
            }
            if req.method != http::Method::GET || req.path != JWKS_PATH {
                return Answer::status(404);
            }
            let mut answer = Answer::json(200, &serving.document.lock());
            if let Some(value) = serving.cache_control.lock().clone() {
                answer = answer.header("cache-control", value);
            }
            answer
        };
        let server = FakeServer::https(pki, Alpn::Both, Arc::new(handler))
            .await
            .expect("start the fake identity provider");
        FakeIdp { server, state }
    }

    /// Serves a set of these keys from now on.
    pub fn publish(&self, keys: &[&IdpKey]) {
        *self.state.document.lock() = document(keys);
    }

    /// Serves this document as it is from now on.
    pub fn publish_document(&self, document: Value) {
        *self.state.document.lock() = document;
    }

    /// Sends this `Cache-Control` with the set (`None`: no header).
    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock() = value.map(str::to_string);
    }

    /// Answers 503 to everything while `down`.
    pub fn set_down(&self, down: bool) {
        *self.state.down.lock() = down;
    }

    /// `https://127.0.0.1:PORT/.well-known/jwks.json`.
    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.server.url())
    }

    /// How many times the set was asked for (outage answers included).
    pub fn fetches(&self) -> usize {
        self.server.request_count()
    }
}

fn document(keys: &[&IdpKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}
