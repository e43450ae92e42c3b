//! What a client needs to know to run.

use crate::backoff::Backoff;
use crate::error::{Result, SdkError};
use std::path::PathBuf;
use std::time::Duration;

/// Settings of one [`crate::Client`]. [`ClientConfig::new`] fills everything but the three
/// things only the app knows. Its `Debug` output leaves the token out.
#[derive(Clone)]
pub struct ClientConfig {
    /// `http://host:port` (or `https://…`) of a chatd node or its load balancer.
    pub endpoint: String,
    /// For an `https://` endpoint: a CA certificate (PEM, one or more `CERTIFICATE` blocks)
    /// trusted besides the public roots (Mozilla's, from webpki-roots): a private CA, a test
    /// server. `None`: the public roots only.
    pub tls_ca_pem: Option<String>,
    /// The bearer token (JWT) of the user; replace it later with `Client::set_token`.
    pub token: String,
    /// This device's id: 1..64 of `[A-Za-z0-9._-]`, stable across app restarts.
    pub device_id: String,
    /// Where the offline send queue and the read positions are kept (`chat-sdk.sqlite3`), so
    /// both survive app restarts. `None` keeps them in memory for this process only.
    pub data_dir: Option<PathBuf>,
    /// Sent in `Hello.client_version`.
    pub client_version: String,
    pub reconnect: Backoff,
    /// Longest wait for a TCP/HTTP2 connection and then for `Welcome`. There is never a
    /// deadline on the stream itself.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval, so a dead connection is found even when the app is quiet.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Sends waiting for their `SendAck` at most, over all chats (the server takes 64).
    pub send_window: usize,
    /// Sends of one chat in flight at most. 1 keeps a chat's messages in the order they were
    /// queued even when the server refuses one for a while (rate limit, outage); more
    /// pipelines a busy chat at the risk of a retried message landing after a later one.
    pub send_window_per_chat: usize,
    /// How long received positions may wait before they are saved and acked to the server
    /// (one write and one `Ack` per chat for many messages).
    pub ack_delay: Duration,
    /// Events waiting for the app at most; the connection pauses when the app lags further.
    pub event_buffer: usize,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|_| "<set>"))
            .field("token", &"<redacted>")
            .field("device_id", &self.device_id)
            .field("data_dir", &self.data_dir)
            .field("client_version", &self.client_version)
            .field("reconnect", &self.reconnect)
            .field("connect_timeout", &self.connect_timeout)
            .field("send_window", &self.send_window)
            .field("send_window_per_chat", &self.send_window_per_chat)
            .field("ack_delay", &self.ack_delay)
            .field("event_buffer", &self.event_buffer)
            .finish_non_exhaustive()
    }
}

/// The local default server and every tuning default; the token and device id are empty
/// (`Client::connect` refuses them), for `ClientConfig { token, device_id, ..Default::default() }`.
impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::new("http://127.0.0.1:50051", "", "")
    }
}

impl ClientConfig {
    pub fn new(
        endpoint: impl Into<String>,
        token: impl Into<String>,
        device_id: impl Into<String>,
    ) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            tls_ca_pem: None,
            token: token.into(),
            device_id: device_id.into(),
            data_dir: None,
            client_version: concat!("chat-sdk-rust/", env!("CARGO_PKG_VERSION")).to_string(),
            reconnect: Backoff::default(),
            connect_timeout: Duration::from_secs(20),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            send_window: 64,
            send_window_per_chat: 1,
            ack_delay: Duration::from_millis(100),
            event_buffer: 1024,
        }
    }

    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Trust `pem` (a CA certificate) for an `https://` endpoint, besides the public roots.
    pub fn with_tls_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SdkError::Config(m));
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return bad(format!(
                "endpoint {:?} must start with http:// or https://",
                self.endpoint
            ));
        }
        if let Some(pem) = &self.tls_ca_pem {
            crate::api::check_ca_pem(pem)?;
            if !self.endpoint.starts_with("https://") {
                return bad("tls_ca_pem is set but the endpoint is not https://".into());
            }
        }
        check_device_id(&self.device_id).map_err(SdkError::Config)?;
        if self.token.trim().is_empty() {
            return bad("token is empty".into());
        }
        if self.send_window == 0 || self.send_window > 64 {
            return bad("send_window must be 1..=64".into());
        }
        if self.send_window_per_chat == 0 {
            return bad("send_window_per_chat must be at least 1".into());
        }
        if self.event_buffer == 0 {
            return bad("event_buffer must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be above zero".into());
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() {
            return bad("keepalive_interval and keepalive_timeout must be above zero".into());
        }
        self.reconnect.validate().map_err(SdkError::Config)
    }
}

/// The contract's device id rule: 1..64 of `[A-Za-z0-9._-]`.
pub(crate) fn check_device_id(id: &str) -> std::result::Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "device_id {id:?} must be 1..64 characters of [A-Za-z0-9._-]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_setting() {
        let ok = ClientConfig::new("http://127.0.0.1:1", "t", "phone");
        assert!(ok.validate().is_ok());
        let cases = [
            (ClientConfig::new("127.0.0.1:1", "t", "phone"), "endpoint"),
            (ClientConfig::new("http://x", "t", "bad id"), "device_id"),
            (ClientConfig::new("http://x", "t", ""), "device_id"),
            (ClientConfig::new("http://x", " ", "d"), "token"),
            (
                ClientConfig::new("https://x", "t", "d").with_tls_ca_pem("not a certificate"),
                "tls_ca_pem",
            ),
            (
                ClientConfig::new("http://x", "t", "d")
                    .with_tls_ca_pem("-----BEGIN CERTIFICATE-----\n"),
                "not https",
            ),
            (
                ClientConfig {
                    send_window: 0,
                    ..ok.clone()
                },
                "send_window",
            ),
        ];
        for (cfg, word) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
    }

    #[test]
    fn struct_update_from_default() {
        let cfg = ClientConfig {
            token: "t".into(),
            device_id: "phone".into(),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        assert!(cfg.validate().is_ok());
        assert!(
            ClientConfig::default().validate().is_err(),
            "no token, no device"
        );
    }

    #[test]
    fn debug_output_leaves_the_token_out() {
        let cfg = ClientConfig::new("http://x", "secret-jwt", "phone");
        let s = format!("{cfg:?}");
        assert!(!s.contains("secret-jwt") && s.contains("<redacted>"), "{s}");
    }
}
