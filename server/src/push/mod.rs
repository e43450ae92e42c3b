//! Push notifications to devices that are not connected: what one push says ([`Notice`]), who
//! it goes to ([`Target`]), and the providers that deliver it (FCM HTTP v1, APNs, Web Push, a
//! webhook gateway), each behind [`Sender`], with the one classification every answer gets
//! ([`Outcome`]). Who gets a push for which event is the domain's rule, not decided here; the
//! workers that take jobs from the queue, coalesce and retry use these senders.

pub mod apns;
pub mod ece;
pub mod fcm;
pub mod kafka;
pub mod queue;
pub mod setup;
pub mod vapid;
pub mod webhook;
pub mod webpush;
pub mod worker;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// The push services a device can register a token with (the domain's type: the stores keep
/// tokens by it).
pub use crate::domain::model::PushProvider as Provider;

/// Where one push goes: a registered token (the stores' type, so the worker hands a token
/// over as it read it).
pub use crate::domain::model::PushToken as Target;

/// What one push says. Never message content when the chat's content is end-to-end encrypted:
/// then `body` is generic and `data_only` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub chat_id: String,
    /// Replaces an earlier push with the same key on the device (one per chat): FCM
    /// `collapse_key`, APNs `apns-collapse-id`, Web Push `Topic`.
    pub collapse_key: String,
    /// The visible title (the sender or the group's name), if any.
    pub title: Option<String>,
    /// The visible text: "alice: hi", "alice: new message", "3 new messages"…
    pub body: String,
    /// How many messages this push stands for (coalesced).
    pub count: u32,
    /// Machine-readable fields for the app (chat_id, seq, message_id…), never content.
    pub data: BTreeMap<String, String>,
    /// No visible alert text from the server: the app fetches and decrypts (FCM data message,
    /// APNs `mutable-content`, Web Push payload without text).
    pub data_only: bool,
}

/// How a provider answered one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider: the job is done.
    Sent,
    /// The token will never work again (FCM UNREGISTERED/404, APNs 410/BadDeviceToken, Web
    /// Push 404/410, a webhook's `rejected`): delete it; the job is done for this token.
    DeadToken,
    /// Try again later (429, 5xx, a timeout, a broken connection), after `after` when the
    /// provider said (Retry-After).
    Retry { after: Option<Duration> },
    /// Will not succeed however often it is tried (a bad request, bad credentials): dead
    /// letter, with the reason.
    Permanent(String),
}

/// One push provider.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    fn provider(&self) -> Provider;

    /// Delivers `notice` to `target` (whose provider is this one) and classifies the answer.
    async fn send(&self, target: &Target, notice: &Notice) -> Outcome;
}

/// The longest wait a provider's `Retry-After` is believed for: a longer one (or a date far
/// ahead) would park a job for good, while the queue's own backoff still applies.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

impl crate::https::Reply {
    /// The answer's `Retry-After`, capped at [`MAX_RETRY_AFTER`].
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        retry_after(value, std::time::SystemTime::now(), MAX_RETRY_AFTER)
    }
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3), capped at `max`.
pub fn retry_after(
    value: Option<&str>,
    now: std::time::SystemTime,
    max: Duration,
) -> Option<Duration> {
    let value = value?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::https::Reply;

    #[test]
    fn retry_after_is_read_from_seconds_or_a_date_and_capped() {
        let reply = |value: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(v) = value {
                headers.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            }
            Reply {
                status: http::StatusCode::TOO_MANY_REQUESTS,
                headers,
                body: bytes::Bytes::new(),
            }
        };
        assert_eq!(reply(Some("2")).retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(reply(None).retry_after(), None);
        assert_eq!(reply(Some("999999")).retry_after(), Some(MAX_RETRY_AFTER));
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(Some(&date), now, MAX_RETRY_AFTER),
            Some(Duration::from_secs(30))
        );
    }
}
