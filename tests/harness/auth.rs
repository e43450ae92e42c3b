//! Tokens and the client interceptor that attaches `authorization` / `x-device-id`.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The JWT claims chatd understands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Mint an HS256 token for `user`, valid from `iat` to `exp` (unix seconds).
pub fn mint_token_at(secret: &str, user: &str, iat: u64, exp: u64) -> String {
    let claims = Claims {
        sub: user.to_string(),
        exp,
        iat,
        admin: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode jwt")
}

/// Mint an HS256 token for `user`, valid for 24 hours.
pub fn mint_token(secret: &str, user: &str) -> String {
    let now = now_secs();
    mint_token_at(secret, user, now, now + 24 * 3600)
}

/// Decode and verify a token with `secret` (HS256); used to check `chatd token` output.
pub fn decode_token(secret: &str, token: &str) -> Result<Claims, String> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|d| d.claims)
    .map_err(|e| e.to_string())
}

/// Client interceptor: adds `authorization` and `x-device-id` when set. Any header value can be
/// given raw, which is how the bad-auth tests send malformed headers.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub authorization: Option<AsciiMetadataValue>,
    pub device_id: Option<AsciiMetadataValue>,
}

impl Auth {
    /// `authorization: Bearer <token>` plus `x-device-id: <device>`.
    pub fn bearer(token: &str, device: &str) -> Self {
        Auth::raw(Some(&format!("Bearer {token}")), Some(device))
    }

    /// Arbitrary header values; `None` leaves the header out.
    pub fn raw(authorization: Option<&str>, device_id: Option<&str>) -> Self {
        Auth {
            authorization: authorization
                .map(|v| MetadataValue::try_from(v).expect("authorization header value is ASCII")),
            device_id: device_id
                .map(|v| MetadataValue::try_from(v).expect("x-device-id header value is ASCII")),
        }
    }

    /// No headers at all.
    pub fn none() -> Self {
        Auth::default()
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.authorization {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.device_id {
            req.metadata_mut().insert("x-device-id", v.clone());
        }
        Ok(req)
    }
}
