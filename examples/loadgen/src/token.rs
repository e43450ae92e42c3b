//! The server's JWT secret and the tokens signed with it, without depending on the `chatd`
//! crate: the format below is a copy of `server/src/auth.rs` (HS256; claims `sub`, `iat`,
//! `exp`, optional `device`, optional `roles`), checked by the tests here and end to end by
//! `smoke.sh` against the real server.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The file in the server's data dir that holds its secret.
pub const SECRET_FILE: &str = "jwt_secret";
/// The server refuses a configured secret shorter than this.
const MIN_CONFIGURED_SECRET: usize = 16;
/// The server's longest user id (bytes).
const MAX_USER_ID_LEN: usize = 128;

/// The server's claims, field for field (`server/src/auth.rs`).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
}

/// The server's secret, read the way the server reads it: the configured one
/// (`--jwt-secret` / `CHATD_JWT_SECRET`) wins, as is; else `DIR/jwt_secret`, trimmed. Never
/// creates one (the server does on first start): a missing file means the wrong directory.
pub fn load_secret(configured: Option<&str>, data_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    if let Some(s) = configured {
        if s.len() < MIN_CONFIGURED_SECRET {
            return Err(format!(
                "--jwt-secret / CHATD_JWT_SECRET must be at least {MIN_CONFIGURED_SECRET} bytes \
                 (the server refuses a shorter one)"
            ));
        }
        return Ok(s.as_bytes().to_vec());
    }
    let dir =
        data_dir.ok_or("give --data-dir DIR (the server's) or --jwt-secret / CHATD_JWT_SECRET")?;
    let path = dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().is_empty() => Err(format!("{} is empty", path.display())),
        Ok(s) => Ok(s.trim().as_bytes().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist (is this the server's --data-dir?)",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Mints device tokens for the run's users.
pub struct Tokens {
    key: EncodingKey,
    ttl: Duration,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Tokens {
        Tokens {
            key: EncodingKey::from_secret(secret),
            ttl,
        }
    }

    /// A token for `user` on `device`, valid for the ttl from now (no roles: not an admin).
    pub fn mint(&self, user: &str, device: &str) -> Result<String, String> {
        if user.is_empty() || user.len() > MAX_USER_ID_LEN || user.chars().any(char::is_control) {
            return Err(format!(
                "mint token for {user:?}: a user id is 1..={MAX_USER_ID_LEN} bytes without \
                 control characters"
            ));
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user.to_string(),
            iat,
            exp: iat.saturating_add(self.ttl.as_secs()),
            device: Some(device.to_string()),
            roles: Vec::new(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| format!("mint token for {user}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    const SECRET: &[u8] = b"0123456789abcdef0123";

    /// The server's validation (`Authenticator::new`).
    fn server_validation() -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "sub"]);
        v
    }

    #[test]
    fn minted_tokens_verify_like_on_the_server() {
        let t = Tokens::new(SECRET, Duration::from_secs(3_600))
            .mint("lg1p2-u0", "d1")
            .unwrap();
        let data =
            decode::<Claims>(&t, &DecodingKey::from_secret(SECRET), &server_validation()).unwrap();
        assert_eq!(data.header.alg, Algorithm::HS256);
        let c = data.claims;
        assert_eq!(c.sub, "lg1p2-u0");
        assert_eq!(c.device.as_deref(), Some("d1"));
        assert!(c.roles.is_empty());
        assert_eq!(c.exp - c.iat, 3_600);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(c.iat.abs_diff(now) <= 5, "iat {} now {now}", c.iat);

        // The wire format: exactly the server's claim names, no roles when not an admin.
        let raw = decode::<serde_json::Value>(
            &t,
            &DecodingKey::from_secret(SECRET),
            &server_validation(),
        )
        .unwrap()
        .claims;
        let mut keys: Vec<&str> = raw
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["device", "exp", "iat", "sub"]);
    }

    #[test]
    fn tokens_of_another_secret_are_refused() {
        let t = Tokens::new(SECRET, Duration::from_secs(60))
            .mint("alice", "d1")
            .unwrap();
        assert!(decode::<Claims>(
            &t,
            &DecodingKey::from_secret(b"another-secret-0123456"),
            &server_validation(),
        )
        .is_err());
    }

    #[test]
    fn bad_user_ids_are_refused() {
        let tokens = Tokens::new(SECRET, Duration::from_secs(60));
        assert!(tokens.mint("", "d1").is_err());
        assert!(tokens.mint("a\nb", "d1").is_err());
        assert!(tokens.mint(&"x".repeat(129), "d1").is_err());
        assert!(tokens.mint(&"x".repeat(128), "d1").is_ok());
    }

    #[test]
    fn secret_is_read_like_on_the_server_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        // Missing: an error naming the file, and still no file afterwards.
        let e = load_secret(None, Some(dir.path())).unwrap_err();
        let path = dir.path().join(SECRET_FILE);
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(!path.exists());
        // Neither given.
        assert!(load_secret(None, None).is_err());
        // Empty.
        std::fs::write(&path, " \n").unwrap();
        assert!(load_secret(None, Some(dir.path()))
            .unwrap_err()
            .contains("empty"));
        // Trimmed, as the server reads it.
        std::fs::write(&path, "  abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            load_secret(None, Some(dir.path())).unwrap(),
            b"abcdef0123456789abcdef"
        );
        // The configured secret wins, untrimmed; too short is refused like on the server.
        assert_eq!(
            load_secret(Some(" configured-secret!"), Some(dir.path())).unwrap(),
            b" configured-secret!"
        );
        assert!(load_secret(Some("short"), Some(dir.path())).is_err());
    }
}
