//! Helpers for tests that drive `chat-sdk` clients against a real server: config with short,
//! test-friendly timings, and event readers with deadlines that say what they waited for.

use chat_sdk::{
    Client, ClientConfig, ConnectionState, Event, EventStream, Message, SendOutcome, SendResult,
};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// A config for `endpoint` with a quick first reconnect (tests restart servers) and quick acks.
pub fn sdk_config(
    endpoint: &str,
    token: &str,
    device: &str,
    data_dir: Option<&Path>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new(endpoint, token, device);
    cfg.data_dir = data_dir.map(Path::to_path_buf);
    cfg.reconnect.initial = Duration::from_millis(200);
    cfg.reconnect.max = Duration::from_secs(2);
    cfg.ack_delay = Duration::from_millis(20);
    cfg.connect_timeout = Duration::from_secs(10);
    cfg.client_version = "chat-tests-sdk".into();
    cfg
}

/// A client and its event stream, connected (synced) before this returns.
pub async fn sdk_connect(cfg: ClientConfig) -> (Client, Events) {
    let client = Client::connect(cfg).await.expect("Client::connect");
    let events = Events(client.events().expect("events"));
    client
        .wait_for(ConnectionState::Connected, crate::RECV_TIMEOUT * 3)
        .await
        .expect("client connects");
    (client, events)
}

/// An event stream with deadlines; events that do not match are kept in `seen`.
pub struct Events(pub EventStream);

impl Events {
    /// The next event within `timeout`, or None.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.0.next())
            .await
            .ok()
            .flatten()
    }

    /// Skip events until `pred` matches one; panics with `what` after [`crate::RECV_TIMEOUT`].
    pub async fn until<T>(&mut self, what: &str, mut pred: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = Instant::now() + crate::RECV_TIMEOUT * 2;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.0.next()).await {
                Ok(Some(ev)) => {
                    if let Some(v) = pred(&ev) {
                        return v;
                    }
                    skipped.push(ev);
                }
                Ok(None) => panic!("event stream ended while waiting for {what}; saw {skipped:#?}"),
                Err(_) => panic!("no {what} in time; saw {skipped:#?}"),
            }
        }
    }

    /// The next `n` messages of `chat` (other events skipped), in arrival order.
    pub async fn messages(&mut self, chat: &str, n: usize) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let m = self
                .until(
                    &format!("message {} of {n} in {chat}", out.len() + 1),
                    |e| match e {
                        Event::Message(m) if m.chat_id == chat => Some(m.clone()),
                        _ => None,
                    },
                )
                .await;
            out.push(m);
        }
        out
    }

    /// The SendResult for `client_msg_id`.
    pub async fn send_result(&mut self, client_msg_id: &str) -> SendResult {
        self.until(&format!("SendResult for {client_msg_id}"), |e| match e {
            Event::SendResult(r) if r.client_msg_id == client_msg_id => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// The message stored for `client_msg_id` (panics if the send failed).
    pub async fn sent(&mut self, client_msg_id: &str) -> (Message, bool) {
        match self.send_result(client_msg_id).await.outcome {
            SendOutcome::Sent { message, duplicate } => (message, duplicate),
            other => panic!("send {client_msg_id} did not succeed: {other:?}"),
        }
    }

    /// Messages (of any chat) that arrive within `dur`.
    pub async fn messages_for(&mut self, dur: Duration) -> Vec<Message> {
        let deadline = Instant::now() + dur;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match tokio::time::timeout(left, self.0.next()).await {
                Ok(Some(Event::Message(m))) => out.push(m),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return out,
            }
        }
    }
}

/// Texts of messages, for readable assertions.
pub fn texts(ms: &[Message]) -> Vec<String> {
    ms.iter().map(|m| m.content.text.clone()).collect()
}
