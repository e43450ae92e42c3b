//! Authentication: HS256 JWTs whose `sub` is the user id. The same module mints tokens for
//! `chatd token` and verifies them on every call, so the two can never disagree.

use crate::{Error, Result};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::{io::Write, path::Path, time::Duration};

/// Longest user id we accept from a token or a request.
pub const MAX_USER_ID_LEN: usize = 128;
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

/// Signs and checks tokens with the node's secret.
#[derive(Clone)]
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Kept for deriving other keys (page tokens) from the same root.
    secret: Vec<u8>,
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            secret: secret.to_vec(),
        }
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

    /// Checks an `authorization` header value (`Bearer <JWT>`).
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller> {
        let header = header.ok_or_else(|| unauthenticated("missing authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauthenticated("authorization header must be `Bearer <token>`"))?;
        self.verify(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Caller> {
        use jsonwebtoken::errors::ErrorKind;
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidSignature => "token signature is invalid",
                ErrorKind::InvalidAlgorithm => "token algorithm must be HS256",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp)",
                _ => "token is malformed",
            })
        })?;
        let claims = data.claims;
        check_user_id("sub", &claims.sub)
            .map_err(|_| unauthenticated("token `sub` is not a valid user id"))?;
        Ok(Caller {
            admin: claims.roles.iter().any(|r| r == ADMIN_ROLE),
            user_id: claims.sub,
        })
    }
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
        let c = a.verify_header(Some(&format!("Bearer {t}"))).unwrap();
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
            assert!(
                matches!(a.verify_header(header), Err(Error::Unauthenticated(_))),
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
