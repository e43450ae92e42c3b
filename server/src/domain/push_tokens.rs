//! Registering and removing push tokens: what a well-formed token is for each provider, its one
//! canonical spelling (so the same token always finds its row), and that a caller only ever
//! touches tokens of their own.

use crate::domain::model::{PushProvider, PushToken};
use crate::store::PushTokenStore;
use crate::{Error, Result};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64URL, Engine};
use std::sync::Arc;

/// The longest token any provider issues (FCM's are ~160 bytes, a Web Push subscription a few
/// hundred); anything longer is not a token.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The longest app id (an APNs topic is a bundle id, ≤ 155 characters).
pub const MAX_APP_ID_CHARS: usize = 255;
/// The longest Web Push endpoint URL accepted.
const MAX_ENDPOINT_BYTES: usize = 2048;

/// A provider's own check of a token in its canonical spelling (a Web Push key on the curve,
/// its endpoint on an allowed push service), so that a token that could never be sent to is
/// refused when it is registered rather than failing at every push.
pub type TokenCheck = Arc<dyn Fn(PushProvider, &str) -> Result<()> + Send + Sync>;

pub struct PushTokens {
    store: Arc<dyn PushTokenStore>,
    check: Option<TokenCheck>,
}

impl PushTokens {
    pub fn new(store: Arc<dyn PushTokenStore>, check: Option<TokenCheck>) -> Self {
        PushTokens { store, check }
    }

    /// Stores `token` for `user_id`'s `device_id`, replacing the device's earlier token of that
    /// provider; a token another device held moves here.
    pub async fn register(
        &self,
        user_id: &str,
        device_id: &str,
        provider: Option<PushProvider>,
        token: &str,
        app_id: &str,
        now: i64,
    ) -> Result<()> {
        let provider = provider.ok_or_else(|| Error::invalid("provider", "is required"))?;
        let token = canonical(provider, token)?;
        if let Some(check) = &self.check {
            check(provider, &token)?;
        }
        check_app_id(app_id)?;
        self.store
            .register_push_token(PushToken {
                user_id: user_id.to_string(),
                device_id: device_id.to_string(),
                provider,
                token,
                app_id: app_id.to_string(),
                created_at: now,
            })
            .await
    }

    /// Removes the caller's token. Succeeds when there was none, so a retry is harmless and
    /// nobody learns whether another user holds a token.
    pub async fn unregister(
        &self,
        user_id: &str,
        provider: Option<PushProvider>,
        token: &str,
    ) -> Result<()> {
        let provider = provider.ok_or_else(|| Error::invalid("provider", "is required"))?;
        let token = canonical(provider, token)?;
        self.store
            .unregister_push_token(user_id, provider, &token)
            .await
            .map(|_| ())
    }
}

/// The token as stored: checked for its provider's shape, spelled one way.
pub fn canonical(provider: PushProvider, token: &str) -> Result<String> {
    if token.is_empty() {
        return Err(Error::invalid("token", "is required"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::invalid(
            "token",
            format!("is {} bytes; the limit is {MAX_TOKEN_BYTES}", token.len()),
        ));
    }
    match provider {
        PushProvider::Apns => apns(token),
        PushProvider::Fcm => fcm(token),
        PushProvider::WebPush => WebPushSubscription::parse(token).map(|s| s.to_json()),
        PushProvider::Webhook => webhook(token),
    }
}

/// An APNs device token: hex (32 bytes today; Apple says not to rely on the length).
fn apns(token: &str) -> Result<String> {
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            "token",
            "an APNs device token is hexadecimal",
        ));
    }
    if !token.len().is_multiple_of(2) || !(64..=200).contains(&token.len()) {
        return Err(Error::invalid(
            "token",
            format!(
                "an APNs device token is 32 to 100 bytes in hex; this is {} digits",
                token.len()
            ),
        ));
    }
    Ok(token.to_ascii_lowercase())
}

/// An FCM registration token: URL-safe characters and `:`.
fn fcm(token: &str) -> Result<String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.');
    if !token.bytes().all(ok) {
        return Err(Error::invalid(
            "token",
            "an FCM registration token has only [A-Za-z0-9_:.-]",
        ));
    }
    Ok(token.to_string())
}

/// A webhook pushkey: opaque to the server, printable ASCII (the gateway's URL is the
/// operator's setting, never the client's: a client must not choose where the server posts).
fn webhook(token: &str) -> Result<String> {
    if token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "token",
            "a webhook pushkey is 1..=512 printable ASCII characters without spaces",
        ));
    }
    Ok(token.to_string())
}

fn check_app_id(app_id: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if app_id.chars().count() > MAX_APP_ID_CHARS || !app_id.chars().all(ok) {
        return Err(Error::invalid(
            "app_id",
            format!("must be at most {MAX_APP_ID_CHARS} characters of [A-Za-z0-9._:-]"),
        ));
    }
    Ok(())
}

/// A browser's push subscription (`PushSubscription.toJSON()`): where to post and the keys the
/// payload is encrypted to (RFC 8291).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPushSubscription {
    /// An https URL of the browser's push service.
    pub endpoint: String,
    /// The user agent's P-256 public key, uncompressed (65 bytes).
    pub p256dh: Vec<u8>,
    /// The authentication secret (16 bytes).
    pub auth: Vec<u8>,
}

impl WebPushSubscription {
    /// Reads the subscription JSON; each refusal names its field (`token.endpoint`,
    /// `token.keys.p256dh`, `token.keys.auth`).
    pub fn parse(token: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(token).map_err(|e| {
            Error::invalid(
                "token",
                format!("a Web Push token is the subscription's JSON: {e}"),
            )
        })?;
        fn text<'a>(v: Option<&'a serde_json::Value>, field: &'static str) -> Result<&'a str> {
            v.and_then(|v| v.as_str())
                .ok_or_else(|| Error::invalid(field, "is required (a string)"))
        }
        let endpoint = text(v.get("endpoint"), "token.endpoint")?;
        check_endpoint(endpoint)?;
        let keys = v.get("keys");
        let key = |name: &str, field: &'static str, len: usize| -> Result<Vec<u8>> {
            let raw = text(keys.and_then(|k| k.get(name)), field)?;
            // Browsers send unpadded base64url; some libraries pad it.
            let bytes = B64URL
                .decode(raw.trim_end_matches('='))
                .map_err(|_| Error::invalid(field, "is not base64url"))?;
            if bytes.len() != len {
                return Err(Error::invalid(
                    field,
                    format!("is {} bytes; it must be {len}", bytes.len()),
                ));
            }
            Ok(bytes)
        };
        let p256dh = key("p256dh", "token.keys.p256dh", 65)?;
        if p256dh[0] != 0x04 {
            return Err(Error::invalid(
                "token.keys.p256dh",
                "must be an uncompressed P-256 point (first byte 0x04)",
            ));
        }
        let auth = key("auth", "token.keys.auth", 16)?;
        Ok(WebPushSubscription {
            endpoint: endpoint.to_string(),
            p256dh,
            auth,
        })
    }

    /// The one spelling stored (fields in a fixed order, keys unpadded).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "endpoint": self.endpoint,
            "keys": { "p256dh": B64URL.encode(&self.p256dh), "auth": B64URL.encode(&self.auth) },
        })
        .to_string()
    }

    /// `host[:port]` of the endpoint, lower-cased.
    pub fn authority(&self) -> String {
        authority(&self.endpoint).to_ascii_lowercase()
    }
}

fn authority(url: &str) -> &str {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

fn check_endpoint(endpoint: &str) -> Result<()> {
    let field = "token.endpoint";
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(Error::invalid(
            field,
            format!("is longer than {MAX_ENDPOINT_BYTES} bytes"),
        ));
    }
    if !endpoint.starts_with("https://") {
        return Err(Error::invalid(field, "must be an https URL"));
    }
    if !endpoint.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            "must be a URL without spaces or non-ASCII characters",
        ));
    }
    let authority = authority(endpoint);
    if authority.is_empty() || authority.contains('@') {
        return Err(Error::invalid(
            field,
            "must name a host (and no user information)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<String>) -> String {
        match r {
            Err(Error::InvalidArgument { field, .. }) => field.to_string(),
            other => format!("not refused: {other:?}"),
        }
    }

    fn subscription(endpoint: &str, p256dh: &[u8], auth: &[u8]) -> String {
        serde_json::json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": { "p256dh": B64URL.encode(p256dh), "auth": B64URL.encode(auth) },
        })
        .to_string()
    }

    fn point() -> Vec<u8> {
        let mut p = vec![4u8];
        p.extend([7u8; 64]);
        p
    }

    #[test]
    fn apns_tokens_are_hex_and_lower_cased() {
        let t = "AB".repeat(32);
        assert_eq!(canonical(PushProvider::Apns, &t).unwrap(), "ab".repeat(32));
        assert_eq!(field_of(canonical(PushProvider::Apns, "xyz")), "token");
        assert_eq!(
            field_of(canonical(PushProvider::Apns, &"a".repeat(63))),
            "token"
        );
    }

    #[test]
    fn fcm_and_webhook_tokens_refuse_strange_characters() {
        assert!(canonical(PushProvider::Fcm, "dGVzdA:APA91b-x_y.z").is_ok());
        assert_eq!(field_of(canonical(PushProvider::Fcm, "a b")), "token");
        assert!(canonical(PushProvider::Webhook, "pushkey/1+2=").is_ok());
        assert_eq!(field_of(canonical(PushProvider::Webhook, "a\nb")), "token");
        assert_eq!(field_of(canonical(PushProvider::Fcm, "")), "token");
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(field_of(canonical(PushProvider::Fcm, &long)), "token");
    }

    #[test]
    fn web_push_subscriptions_are_checked_and_spelled_one_way() {
        let sub = subscription("https://push.example:8443/p/abc", &point(), &[1u8; 16]);
        let canon = canonical(PushProvider::WebPush, &sub).unwrap();
        // The canonical form is a fixed point, whatever the browser's spelling.
        assert_eq!(canonical(PushProvider::WebPush, &canon).unwrap(), canon);
        let parsed = WebPushSubscription::parse(&canon).unwrap();
        assert_eq!(parsed.authority(), "push.example:8443");
        assert_eq!((parsed.p256dh.len(), parsed.auth.len()), (65, 16));

        let cases = [
            ("not json".to_string(), "token"),
            (
                subscription("http://push.example/p", &point(), &[1; 16]),
                "token.endpoint",
            ),
            (
                subscription("https:///p", &point(), &[1; 16]),
                "token.endpoint",
            ),
            (
                subscription("https://u@push.example/p", &point(), &[1; 16]),
                "token.endpoint",
            ),
            (
                subscription("https://push.example/p", &[4; 33], &[1; 16]),
                "token.keys.p256dh",
            ),
            (
                subscription("https://push.example/p", &[2; 65], &[1; 16]),
                "token.keys.p256dh",
            ),
            (
                subscription("https://push.example/p", &point(), &[1; 15]),
                "token.keys.auth",
            ),
            (
                r#"{"endpoint":"https://push.example/p"}"#.to_string(),
                "token.keys.p256dh",
            ),
        ];
        for (token, field) in cases {
            assert_eq!(
                field_of(canonical(PushProvider::WebPush, &token)),
                field,
                "{token}"
            );
        }
    }

    #[test]
    fn app_ids_are_bundle_id_like() {
        assert!(check_app_id("com.example.chat").is_ok());
        assert!(check_app_id("").is_ok());
        assert!(check_app_id("bad id").is_err());
        assert!(check_app_id(&"a".repeat(MAX_APP_ID_CHARS + 1)).is_err());
    }
}
