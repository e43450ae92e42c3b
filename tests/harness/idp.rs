//! An identity provider for the OIDC suite: the fake key server of `push-fakes` over TLS, and
//! the settings that point a chatd at it (`CHATD_JWKS_URL`, `CHATD_JWKS_CA_FILE`, the issuer
//! and audience it checks).

use crate::auth::{now_secs, Auth};
use crate::session::Session;
use crate::util::Client;
use crate::{ServerOptions, TestServer};
use push_fakes::idp::{FakeIdp, IdpKey};
use push_fakes::tls::TestPki;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The `iss` the test servers require.
pub const ISSUER: &str = "https://idp.chat-tests.example/";
/// The audience the test servers accept (besides [`OTHER_AUDIENCE`]).
pub const AUDIENCE: &str = "chat";
pub const OTHER_AUDIENCE: &str = "chat-web";

/// A running fake provider and what a server needs to trust it.
pub struct Idp {
    pub fake: FakeIdp,
    /// The test CA, as a file for chatd.
    _dir: TempDir,
    ca_file: String,
}

/// Starts a provider serving `keys`.
pub async fn start(keys: &[&IdpKey]) -> Idp {
    let pki = TestPki::shared();
    let fake = FakeIdp::start(pki, keys).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("idp-ca.pem");
    pki.write_ca_pem(&ca).expect("write the CA");
    Idp {
        fake,
        ca_file: ca.display().to_string(),
        _dir: dir,
    }
}

impl Idp {
    /// A server that accepts this provider's tokens for [`ISSUER`] and the two audiences.
    pub fn options(&self) -> ServerOptions {
        ServerOptions::new()
            .env("CHATD_JWKS_URL", &self.fake.jwks_url())
            .env("CHATD_JWKS_CA_FILE", &self.ca_file)
            .env("CHATD_JWT_ISSUER", ISSUER)
            .env(
                "CHATD_JWT_AUDIENCE",
                &format!("{AUDIENCE},{OTHER_AUDIENCE}"),
            )
    }

    pub async fn server(&self) -> TestServer {
        TestServer::start_opts(self.options()).await
    }
}

/// Claims the test servers accept for `user`: the issuer, the audience, an hour to live.
pub fn claims(user: &str) -> Value {
    let now = now_secs();
    json!({"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600})
}

/// [`claims`] with `key` set to `value` (removed when `value` is null).
pub fn claims_with(user: &str, key: &str, value: Value) -> Value {
    let mut claims = claims(user);
    match value {
        Value::Null => {
            claims.as_object_mut().expect("an object").remove(key);
        }
        value => claims[key] = value,
    }
    claims
}

/// A client that sends `token` (and `x-device-id: device`).
pub fn client(server: &TestServer, token: &str, device: &str) -> Client {
    server.client_with_auth(Auth::bearer(token, device))
}

/// A Connect stream with `token`, after Welcome and SyncComplete.
pub async fn connect(server: &TestServer, token: &str, user: &str, device: &str) -> Session {
    let mut s = Session::open(client(server, token, device), user, device);
    s.hello().await;
    s.sync().await;
    s
}
