//! Authentication: who the caller of a request is, from its JWT.
//!
//! Two kinds of token are accepted side by side, told apart by their header's `alg`:
//! - HS256, signed with the node's secret, `sub` the user id: the same module mints them for
//!   `chatd token` and verifies them, so the two can never disagree;
//! - RS256 and ES256 from an OpenID Connect identity provider, checked against its key set
//!   ([`idp`]; the set's format in [`jwks`]) when `--jwks-url` is set.
//!
//! Any other `alg` (`none` first) is refused, and so is an HS256 token naming a provider key:
//! a provider's public key is never an HMAC secret. Checking a token does no I/O; only a token
//! naming a key the provider's set lacks makes it fetched again ([`Authenticator::authenticate`]
//! waits for that fetch, [`Authenticator::verify`] does not).

pub mod idp;
pub mod jwks;

use crate::{Error, Result};
use base64::Engine;
use idp::{Checked, Idp};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::{io::Write, path::Path, sync::Arc, time::Duration};

/// Longest user id we accept from a token or a request.
pub const MAX_USER_ID_LEN: usize = 128;
/// Clock skew allowed on `exp` and `nbf` unless configured (`--jwt-leeway-secs`).
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
const SECRET_FILE: &str = "jwt_secret";
const ADMIN_ROLE: &str = "admin";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    /// The device the token was minted for; informational, `x-device-id` is what counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub admin: bool,
}

/// Signs and checks the node's own tokens, and checks the identity provider's.
#[derive(Clone)]
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Kept for deriving other keys (page tokens) from the same root.
    secret: Vec<u8>,
    /// The identity provider whose RS256 / ES256 tokens are accepted too, if configured.
    idp: Option<Arc<Idp>>,
}

/// The members of a JWS header that pick the key: read before any check, since `alg` decides
/// which key (and which library check) applies.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = DEFAULT_LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            secret: secret.to_vec(),
            idp: None,
        }
    }

    /// The clock skew allowed on the node's own tokens (the provider's has its own setting).
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.validation.leeway = secs;
        self
    }

    /// Accepts the identity provider's tokens too.
    pub fn with_idp(mut self, idp: Arc<Idp>) -> Self {
        self.idp = Some(idp);
        self
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn mint(
        &self,
        user_id: &str,
        device_id: Option<&str>,
        ttl: Duration,
        admin: bool,
    ) -> Result<String> {
        check_user_id("user", user_id)?;
        let iat = unix_now();
        let claims = Claims {
            sub: user_id.to_string(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            device: device_id.map(str::to_string),
            roles: if admin {
                vec![ADMIN_ROLE.to_string()]
            } else {
                vec![]
            },
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(Error::internal)
    }

    /// Checks an `authorization` header value (`Bearer <JWT>`), as [`Self::authenticate`].
    pub async fn authenticate_header(&self, header: Option<&str>) -> Result<Caller> {
        self.authenticate(bearer(header)?).await
    }

    /// Checks a token. One naming a provider key the set in memory lacks waits for the fetch
    /// that key makes happen (a rotation), then is checked once more.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        match self.check(token, true) {
            Checked::Done(result) => result,
            Checked::AwaitKeys(fetched) => {
                Idp::wait_for_fetch(fetched).await;
                self.check_now(token)
            }
        }
    }

    /// Checks a token against what is in memory, never waiting: a token naming a provider key
    /// the set lacks is refused now (and makes the set fetched again, within the rate limit).
    pub fn verify(&self, token: &str) -> Result<Caller> {
        match self.check(token, true) {
            Checked::Done(result) => result,
            Checked::AwaitKeys(_) => self.check_now(token),
        }
    }

    /// Checks a token against what is in memory, asking for no fetch.
    fn check_now(&self, token: &str) -> Result<Caller> {
        match self.check(token, false) {
            Checked::Done(result) => result,
            Checked::AwaitKeys(_) => unreachable!("a check that may not fetch never waits"),
        }
    }

    /// Picks the key by the header's `alg` (and `kid`) and checks the token with it.
    fn check(&self, token: &str, may_fetch: bool) -> Checked {
        let header = match token_header(token) {
            Ok(header) => header,
            Err(e) => return Checked::Done(Err(e)),
        };
        if header.alg == "HS256" {
            // A provider key's name on an HS256 token: someone hopes its public key is taken
            // for an HMAC secret.
            let provider = self.idp.as_ref().zip(header.kid.as_deref());
            if let Some(key_alg) = provider.and_then(|(idp, kid)| idp.alg_of(kid)) {
                return Checked::Done(Err(idp::mismatch("HS256", key_alg)));
            }
            return Checked::Done(self.verify_own(token));
        }
        let Some(alg) = jwks::Alg::from_name(&header.alg) else {
            return Checked::Done(Err(unsupported(&header.alg)));
        };
        let Some(idp) = &self.idp else {
            return Checked::Done(Err(unauthenticated(&format!(
                "token algorithm {} is not accepted: this server has no identity provider \
                 (--jwks-url)",
                alg.name()
            ))));
        };
        idp.check(token, alg, header.kid.as_deref(), may_fetch)
    }

    /// An HS256 token signed with the node's secret.
    fn verify_own(&self, token: &str) -> Result<Caller> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| refusal(&e))?;
        let claims = data.claims;
        check_user_id("sub", &claims.sub)
            .map_err(|_| unauthenticated("token `sub` is not a valid user id"))?;
        Ok(Caller {
            admin: claims.roles.iter().any(|r| r == ADMIN_ROLE),
            user_id: claims.sub,
        })
    }
}

/// The token of an `authorization` header value (`Bearer <JWT>`).
fn bearer(header: Option<&str>) -> Result<&str> {
    let header = header.ok_or_else(|| unauthenticated("missing authorization header"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| unauthenticated("authorization header must be `Bearer <token>`"))?;
    Ok(token.trim())
}

/// The header of a compact JWS (three base64url parts; a JWE's five are refused).
fn token_header(token: &str) -> Result<TokenHeader> {
    let malformed = || unauthenticated("token is malformed");
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed())
}

/// The refusal of an `alg` no key of ours verifies. The name is shown when it is a plain
/// algorithm name (it comes from the caller).
fn unsupported(alg: &str) -> Error {
    let plain =
        !alg.is_empty() && alg.len() <= 16 && alg.bytes().all(|b| b.is_ascii_alphanumeric());
    let shown = if plain {
        format!(" {alg:?}")
    } else {
        String::new()
    };
    unauthenticated(&format!(
        "unsupported token algorithm{shown}: accepted are HS256, RS256 and ES256"
    ))
}

/// What a failed library check tells the caller: the problem, never the token.
fn refusal(e: &jsonwebtoken::errors::Error) -> Error {
    use jsonwebtoken::errors::ErrorKind;
    unauthenticated(&match e.kind() {
        ErrorKind::ExpiredSignature => "token expired".to_string(),
        ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".to_string(),
        ErrorKind::InvalidSignature => "token signature is invalid".to_string(),
        ErrorKind::InvalidIssuer => "token has the wrong issuer".to_string(),
        ErrorKind::InvalidAudience => "token has the wrong audience".to_string(),
        ErrorKind::InvalidAlgorithm => "token algorithm does not match its key".to_string(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the `{claim}` claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("token claim `{claim}` is malformed"),
        _ => "token is malformed".to_string(),
    })
}

fn unauthenticated(msg: &str) -> Error {
    Error::Unauthenticated(msg.to_string())
}

fn unix_now() -> u64 {
    (crate::clock::now_ms().max(0) / 1000) as u64
}

/// A user id is any 1..=128 byte string without control characters (it is the IdP's `sub`).
pub fn check_user_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("must be 1..={MAX_USER_ID_LEN} bytes"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// The configured secret, or the one kept in the data dir, created (mode 0600) on first use.
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> std::io::Result<Vec<u8>> {
    if let Some(s) = configured {
        return Ok(s.as_bytes().to_vec());
    }
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret: String = {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(&path) {
        Ok(mut f) => {
            f.write_all(secret.as_bytes())?;
            f.sync_all()?;
            Ok(secret.into_bytes())
        }
        // Another process (a concurrent `chatd token`) won the race: use its secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_written_secret(&path),
        Err(e) => Err(e),
    }
}

/// The secret another process is writing to `path`. Never an empty one: an empty key would
/// let anyone sign tokens. A file that stays empty (a crash between create and write, or
/// someone truncating it) is an error naming it.
fn read_written_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    for _ in 0..50 {
        let s = std::fs::read_to_string(path)?;
        if !s.trim().is_empty() {
            return Ok(s.trim().as_bytes().to_vec());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{} is empty: delete it to have a new secret generated, or set CHATD_JWT_SECRET",
            path.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_carry_roles() {
        let a = Authenticator::new(b"0123456789abcdef0123");
        let t = a
            .mint("alice", Some("phone"), Duration::from_secs(60), true)
            .unwrap();
        let c = a
            .verify(bearer(Some(&format!("Bearer {t}"))).unwrap())
            .unwrap();
        assert_eq!(
            c,
            Caller {
                user_id: "alice".into(),
                admin: true
            }
        );
        let t = a.mint("bob", None, Duration::from_secs(60), false).unwrap();
        assert!(!a.verify(&t).unwrap().admin);
    }

    #[test]
    fn bad_tokens_are_unauthenticated() {
        let a = Authenticator::new(b"0123456789abcdef0123");
        let other = Authenticator::new(b"another-secret-0123456");
        let t = other
            .mint("alice", None, Duration::from_secs(60), false)
            .unwrap();
        for header in [
            None,
            Some("Basic abc"),
            Some("Bearer"),
            Some("Bearer a.b.c"),
            Some(&*format!("Bearer {t}")),
        ] {
            let checked = bearer(header).and_then(|t| a.verify(t));
            assert!(
                matches!(checked, Err(Error::Unauthenticated(_))),
                "{header:?}"
            );
        }
        let past = Claims {
            sub: "alice".into(),
            exp: unix_now() - 120,
            iat: unix_now() - 200,
            device: None,
            roles: vec![],
        };
        let old = encode(&Header::new(Algorithm::HS256), &past, &a.encoding).unwrap();
        assert_eq!(
            a.verify(&old),
            Err(Error::Unauthenticated("token expired".into()))
        );
    }

    #[test]
    fn the_leeway_applies_to_the_nodes_own_tokens() {
        let strict = Authenticator::new(b"0123456789abcdef0123");
        let lenient = Authenticator::new(b"0123456789abcdef0123").with_leeway(120);
        let token = |exp: u64, nbf: Option<u64>| {
            let mut claims =
                serde_json::json!({"sub": "alice", "iat": unix_now() - 300, "exp": exp});
            if let Some(nbf) = nbf {
                claims["nbf"] = nbf.into();
            }
            encode(&Header::new(Algorithm::HS256), &claims, &strict.encoding).unwrap()
        };
        let late = token(unix_now() - 60, None);
        let early = token(unix_now() + 600, Some(unix_now() + 60));
        let just_expired = token(unix_now() - 2, None);
        assert_eq!(
            strict.verify(&late),
            Err(Error::Unauthenticated("token expired".into()))
        );
        assert_eq!(
            strict.verify(&early),
            Err(Error::Unauthenticated(
                "token is not valid yet (nbf)".into()
            ))
        );
        assert!(
            strict.verify(&just_expired).is_ok(),
            "within the default 5 s"
        );
        assert!(lenient.verify(&late).is_ok());
        assert!(lenient.verify(&early).is_ok());
    }

    #[test]
    fn headers_that_pick_no_key_are_refused() {
        let a = Authenticator::new(b"0123456789abcdef0123");
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = b64(r#"{"sub":"alice","exp":99999999999}"#);
        for (token, want) in [
            (
                format!("{}.{body}.", b64(r#"{"alg":"none"}"#)),
                "unsupported token algorithm \"none\": accepted are HS256, RS256 and ES256",
            ),
            (
                format!("{}.{body}.sig", b64(r#"{"alg":"HS512"}"#)),
                "unsupported token algorithm \"HS512\": accepted are HS256, RS256 and ES256",
            ),
            (
                format!("{}.{body}.sig", b64(r#"{"alg":"<script>"}"#)),
                "unsupported token algorithm: accepted are HS256, RS256 and ES256",
            ),
            (
                format!("{}.{body}.sig", b64(r#"{"typ":"JWT"}"#)),
                "token is malformed",
            ),
            (
                format!("{}.{body}.sig.x.y", b64(r#"{"alg":"HS256"}"#)),
                "token is malformed",
            ),
            ("not-a-token".to_string(), "token is malformed"),
        ] {
            assert_eq!(
                a.verify(&token),
                Err(Error::Unauthenticated(want.into())),
                "{token}"
            );
        }
    }

    #[test]
    fn an_empty_secret_file_is_refused_not_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SECRET_FILE), "  \n").unwrap();
        let e = load_or_create_secret(None, dir.path()).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn secret_is_created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let s1 = load_or_create_secret(None, dir.path()).unwrap();
        let s2 = load_or_create_secret(None, dir.path()).unwrap();
        assert_eq!(s1, s2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            load_or_create_secret(Some("configured-secret!"), dir.path()).unwrap(),
            b"configured-secret!"
        );
    }
}
