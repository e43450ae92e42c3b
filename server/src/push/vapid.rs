//! RFC 8292 VAPID: the ES256 JWT that identifies this server to Web Push services.
//!
//! The browser subscribed with our public key (the page's `applicationServerKey`), so the push
//! service only accepts pushes signed by the matching private key. One JWT per push-service
//! origin, reused until shortly before it expires.

use super::ece::{b64url_decode, b64url_encode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use p256::SecretKey;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Push services refuse a JWT that expires more than 24 h ahead (RFC 8292 §2).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// What the senders ask for: well inside the limit, so a skewed clock on either side is fine.
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);
/// A cached JWT is replaced this long before it expires (or halfway, for short ones).
const REFRESH_MARGIN: Duration = Duration::from_secs(3600);
/// Origins are bounded by the allow-list, but a wildcard pattern admits many hosts.
const MAX_CACHED: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    #[error("VAPID key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Never carries key material, only what was wrong with it.
    #[error("VAPID key: {0}")]
    BadKey(&'static str),
    #[error("VAPID subject {0:?}: must be a mailto: or https: URI")]
    BadSubject(String),
    #[error("endpoint: {0}")]
    BadEndpoint(String),
    #[error("VAPID JWT could not be signed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The application server's VAPID key pair.
pub struct VapidKey {
    encoding: EncodingKey,
    public_b64url: String,
    cache: Mutex<HashMap<(String, String), Cached>>,
}

struct Cached {
    header: String,
    refresh_at: SystemTime,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_b64url)
            .field("private_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    aud: String,
    exp: u64,
    sub: String,
}

impl VapidKey {
    /// Loads the private key from `path`: PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`,
    /// as openssl writes them), or the bare base64url 32-byte key that web-push tools print.
    pub fn from_file(path: &Path) -> Result<Self, VapidError> {
        let text = std::fs::read_to_string(path).map_err(|source| VapidError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(&text)
    }

    /// [`VapidKey::from_file`] on the file's contents.
    pub fn from_text(text: &str) -> Result<Self, VapidError> {
        let text = text.trim();
        let secret = if text.starts_with("-----BEGIN") {
            if let Some(block) = pem_block(text, "PRIVATE KEY") {
                SecretKey::from_pkcs8_pem(block)
                    .map_err(|_| VapidError::BadKey("PKCS#8 PEM is not a P-256 private key"))?
            } else if let Some(block) = pem_block(text, "EC PRIVATE KEY") {
                SecretKey::from_sec1_pem(block)
                    .map_err(|_| VapidError::BadKey("EC PEM is not a P-256 private key"))?
            } else {
                return Err(VapidError::BadKey(
                    "PEM holds no PRIVATE KEY or EC PRIVATE KEY block",
                ));
            }
        } else {
            let raw = b64url_decode(text).ok_or(VapidError::BadKey(
                "neither PEM nor a base64url 32-byte private key",
            ))?;
            if raw.len() != 32 {
                return Err(VapidError::BadKey(
                    "a raw private key must be 32 bytes (base64url)",
                ));
            }
            SecretKey::from_slice(&raw)
                .map_err(|_| VapidError::BadKey("raw key is not a valid P-256 scalar"))?
        };
        Self::from_secret(&secret)
    }

    pub(crate) fn from_secret(secret: &SecretKey) -> Result<Self, VapidError> {
        // jsonwebtoken's ES256 signer takes PKCS#8 DER whatever format the file had.
        let der = secret
            .to_pkcs8_der()
            .map_err(|_| VapidError::BadKey("could not be encoded as PKCS#8"))?;
        Ok(VapidKey {
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            public_b64url: b64url_encode(secret.public_key().to_encoded_point(false).as_bytes()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The uncompressed public key, base64url: the web page's `applicationServerKey`.
    pub fn public_key_b64url(&self) -> &str {
        &self.public_b64url
    }

    /// The `Authorization` header for a push to `endpoint`:
    /// `vapid t=<JWT>, k=<public key>`, the JWT valid for `ttl` (at most 24 h).
    pub fn authorization(
        &self,
        endpoint: &str,
        subject: &str,
        ttl: Duration,
    ) -> Result<String, VapidError> {
        self.authorization_at(endpoint, subject, ttl, SystemTime::now())
    }

    fn authorization_at(
        &self,
        endpoint: &str,
        subject: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, VapidError> {
        check_subject(subject)?;
        let aud = audience(endpoint)?;
        let key = (aud, subject.to_owned());
        if let Some(cached) = self.cache.lock().get(&key) {
            if now < cached.refresh_at {
                return Ok(cached.header.clone());
            }
        }

        let ttl = ttl.min(MAX_TTL);
        let exp = now + ttl;
        let claims = Claims {
            aud: key.0.clone(),
            exp: exp
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            sub: subject.to_owned(),
        };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)?;
        let header = format!("vapid t={jwt}, k={}", self.public_b64url);

        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| now < c.refresh_at);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                header: header.clone(),
                refresh_at: exp - REFRESH_MARGIN.min(ttl / 2),
            },
        );
        Ok(header)
    }
}

/// RFC 8292 §2.1: the subject is a contact URI the push service can use.
pub fn check_subject(subject: &str) -> Result<(), VapidError> {
    let ok = match subject.split_once(':') {
        Some(("mailto", rest)) => rest.contains('@'),
        Some(("https", rest)) => rest.starts_with("//") && rest.len() > 2,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(VapidError::BadSubject(subject.to_owned()))
    }
}

/// The JWT's `aud`: the endpoint's origin, `scheme://host` plus the port when it is not the
/// scheme's default (a push service on a non-default port checks for it).
pub fn audience(endpoint: &str) -> Result<String, VapidError> {
    let url = url::Url::parse(endpoint).map_err(|e| VapidError::BadEndpoint(e.to_string()))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(VapidError::BadEndpoint(
            "not an http(s) URL with a host".into(),
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// The text of the PEM block labelled exactly `label`, if there is one (openssl may put an
/// `EC PARAMETERS` block before the key).
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use p256::pkcs8::LineEnding;
    use rand_core::OsRng;

    /// Checks the header the way a push service does: the `k` key verifies the ES256 JWT,
    /// whose claims are returned.
    fn verify(header: &str, aud: &str) -> (String, u64, String) {
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (jwt, k) = rest.split_once(", k=").unwrap();
        let point = b64url_decode(k).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[aud]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(jwt, &DecodingKey::from_ec_der(&point), &validation)
                .unwrap();
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
        (data.claims.aud, data.claims.exp, data.claims.sub)
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn the_jwt_verifies_with_the_public_key_and_names_the_origin() {
        let key = VapidKey::from_secret(&SecretKey::random(&mut OsRng)).unwrap();
        let header = key
            .authorization(
                "https://fcm.googleapis.com/fcm/send/abc:def",
                "mailto:ops@example.com",
                DEFAULT_TTL,
            )
            .unwrap();
        assert!(header.ends_with(&format!(", k={}", key.public_key_b64url())));
        let (aud, exp, sub) = verify(&header, "https://fcm.googleapis.com");
        assert_eq!(aud, "https://fcm.googleapis.com");
        assert_eq!(sub, "mailto:ops@example.com");
        let ahead = exp - now_secs();
        assert!((12 * 3600 - 5..=12 * 3600).contains(&ahead), "{ahead}");
    }

    #[test]
    fn aud_keeps_a_non_default_port_and_drops_the_default_one() {
        let key = VapidKey::from_secret(&SecretKey::random(&mut OsRng)).unwrap();
        let sub = "https://chat.example.com/contact";
        let with_port = key
            .authorization("https://127.0.0.1:8443/push/x", sub, DEFAULT_TTL)
            .unwrap();
        assert_eq!(
            verify(&with_port, "https://127.0.0.1:8443").0,
            "https://127.0.0.1:8443"
        );
        let default_port = key
            .authorization("https://push.example.com:443/push/x", sub, DEFAULT_TTL)
            .unwrap();
        assert_eq!(
            verify(&default_port, "https://push.example.com").0,
            "https://push.example.com"
        );
        assert_eq!(
            audience("https://Push.Example.com:8443/a?b").unwrap(),
            "https://push.example.com:8443"
        );
    }

    #[test]
    fn the_jwt_is_cached_per_origin_until_an_hour_before_it_expires() {
        let key = VapidKey::from_secret(&SecretKey::random(&mut OsRng)).unwrap();
        let sub = "mailto:ops@example.com";
        let t0 = SystemTime::now();
        let a = key
            .authorization_at("https://a.example.com/1", sub, DEFAULT_TTL, t0)
            .unwrap();
        let same_origin = key
            .authorization_at(
                "https://a.example.com/2",
                sub,
                DEFAULT_TTL,
                t0 + Duration::from_secs(10 * 3600),
            )
            .unwrap();
        assert_eq!(a, same_origin);
        let other_origin = key
            .authorization_at("https://b.example.com/1", sub, DEFAULT_TTL, t0)
            .unwrap();
        assert_ne!(a, other_origin);
        let near_expiry = key
            .authorization_at(
                "https://a.example.com/3",
                sub,
                DEFAULT_TTL,
                t0 + Duration::from_secs(11 * 3600 + 1),
            )
            .unwrap();
        assert_ne!(a, near_expiry);
    }

    #[test]
    fn ttl_is_capped_at_24_hours() {
        let key = VapidKey::from_secret(&SecretKey::random(&mut OsRng)).unwrap();
        let header = key
            .authorization(
                "https://a.example.com/1",
                "mailto:a@b.c",
                Duration::from_secs(7 * 86400),
            )
            .unwrap();
        let (_, exp, _) = verify(&header, "https://a.example.com");
        assert!(exp <= now_secs() + 24 * 3600);
    }

    #[test]
    fn keys_load_from_pkcs8_pem_sec1_pem_and_raw_base64url_alike() {
        let secret = SecretKey::random(&mut OsRng);
        let expected = b64url_encode(secret.public_key().to_encoded_point(false).as_bytes());
        let pkcs8 = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let sec1 = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            *secret.to_sec1_pem(LineEnding::LF).unwrap()
        );
        let raw = format!("{}\n", b64url_encode(&secret.to_bytes()));
        for text in [pkcs8.as_str(), sec1.as_str(), raw.as_str()] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("vapid.key");
            std::fs::write(&path, text).unwrap();
            let key = VapidKey::from_file(&path).unwrap();
            assert_eq!(key.public_key_b64url(), expected);
            assert_eq!(b64url_decode(key.public_key_b64url()).unwrap().len(), 65);
        }
    }

    #[test]
    fn bad_keys_and_subjects_are_refused_without_echoing_the_key() {
        let short = b64url_encode(&[7u8; 31]);
        let err = VapidKey::from_text(&short).unwrap_err();
        assert!(matches!(err, VapidError::BadKey(_)), "{err}");
        assert!(!err.to_string().contains(&short));
        assert!(matches!(
            VapidKey::from_text("-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----"),
            Err(VapidError::BadKey(_))
        ));
        assert!(matches!(
            VapidKey::from_text(&b64url_encode(&[0u8; 32])),
            Err(VapidError::BadKey(_))
        ));
        let err = VapidKey::from_file(Path::new("/nonexistent/vapid.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vapid.pem"), "{err}");

        for good in ["mailto:ops@example.com", "https://example.com"] {
            check_subject(good).unwrap();
        }
        for bad in [
            "ops@example.com",
            "http://example.com",
            "mailto:",
            "https:",
            "",
        ] {
            assert!(
                matches!(check_subject(bad), Err(VapidError::BadSubject(_))),
                "{bad}"
            );
        }
        let key = VapidKey::from_secret(&SecretKey::random(&mut OsRng)).unwrap();
        assert!(matches!(
            key.authorization("not a url", "mailto:a@b.c", DEFAULT_TTL),
            Err(VapidError::BadEndpoint(_))
        ));
    }

    #[test]
    fn debug_shows_the_public_key_only() {
        let secret = SecretKey::random(&mut OsRng);
        let key = VapidKey::from_secret(&secret).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains(key.public_key_b64url()));
        assert!(debug.contains("redacted"));
        assert!(!debug.contains(&b64url_encode(&secret.to_bytes())));
    }
}
