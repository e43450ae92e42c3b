//! [`ChatClient`]: `chat_sdk::Client` and its unary API as one foreign object.

use crate::error::{ChatError, Result};
use crate::events::{EventListener, EventStream, Listener, Reader, ReaderSlot};
use crate::types::*;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long `close()` lets a listener deliver the events still queued (the last is the
/// `Closed` connection change) before it stops the listener.
const LISTENER_DRAIN: Duration = Duration::from_secs(2);

/// Open the local store and start connecting in the background: returns at once, also when
/// the server is unreachable (sends queue up; see `status()` and the `Connection` events).
#[uniffi::export(async_runtime = "tokio")]
pub async fn connect(config: ClientConfig) -> Result<Arc<ChatClient>> {
    check(&config)?;
    let client = chat_sdk::Client::connect(config.into()).await?;
    let events = client.events()?;
    Ok(Arc::new(ChatClient {
        client,
        stream: Arc::new(EventStream::new(events)),
        reader: Mutex::new(Reader::Free),
    }))
}

/// The `sub` of a JWT, read without checking it (the server does): the user id a token is
/// for.
#[uniffi::export]
pub fn token_subject(token: String) -> Option<String> {
    chat_sdk::token_subject(&token)
}

/// What the SDK's own validation does not catch and the transport would not survive.
fn check(c: &ClientConfig) -> Result<()> {
    let zero = |v: Option<u64>| v == Some(0);
    if zero(c.keepalive_interval_ms) || zero(c.keepalive_timeout_ms) {
        return Err(ChatError::config("keepalive intervals must be above zero"));
    }
    if c.send_window_per_chat == Some(0) {
        return Err(ChatError::config("send_window_per_chat must be at least 1"));
    }
    if let Some(d) = &c.data_dir {
        if d.trim().is_empty() {
            return Err(ChatError::config(
                "data_dir is empty (leave it unset for memory)",
            ));
        }
    }
    Ok(())
}

/// One device of one user connected to chatd: the event stream, the offline send queue and
/// the unary calls. Each chat's messages reach the app once and in order; sends survive
/// reconnects and (with `data_dir`) app restarts.
#[derive(uniffi::Object)]
pub struct ChatClient {
    client: chat_sdk::Client,
    stream: Arc<EventStream>,
    reader: ReaderSlot,
}

impl ChatClient {
    fn reader(&self) -> MutexGuard<'_, Reader> {
        match self.reader.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn take_listener(&self) -> Option<Listener> {
        let mut r = self.reader();
        match std::mem::replace(&mut *r, Reader::Free) {
            Reader::Listening(l) => Some(l),
            other => {
                *r = other;
                None
            }
        }
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl ChatClient {
    /// The module's `connect` as a named constructor (`ChatClient.connect(config)`), for code
    /// that looks for it on the class.
    #[uniffi::constructor(name = "connect")]
    pub async fn connect_client(config: ClientConfig) -> Result<Arc<ChatClient>> {
        connect(config).await
    }

    // ------------------------------------------------------------------ events

    /// The event stream. It has one reader: a second call, or a call while a listener runs, is
    /// `ChatError.EventsTaken`. Read it all the time: the connection pauses while the app lags
    /// `event_buffer` events behind, and messages count as delivered only once taken.
    pub fn events(&self) -> Result<Arc<EventStream>> {
        let mut r = self.reader();
        match *r {
            Reader::Free => {
                *r = Reader::Stream;
                Ok(self.stream.clone())
            }
            Reader::Stream => Err(ChatError::events_taken("events() was already called")),
            Reader::Listening(_) => Err(ChatError::events_taken("a listener reads the events")),
        }
    }

    /// Deliver every event to `listener` on a dedicated thread (not a tokio thread), in order.
    /// Instead of `events()`, not with it. Stopped by `remove_listener()` or `close()`.
    pub fn set_listener(&self, listener: Box<dyn EventListener>) -> Result<()> {
        let mut r = self.reader();
        match *r {
            Reader::Free => {}
            Reader::Stream => {
                return Err(ChatError::events_taken(
                    "events() was called: the app reads the stream itself",
                ))
            }
            Reader::Listening(_) => {
                return Err(ChatError::events_taken("a listener is already set"))
            }
        }
        let l =
            Listener::start(self.stream.clone(), listener).map_err(|e| ChatError::Internal {
                code: Code::Internal,
                detail: format!("cannot start the listener thread: {e}"),
            })?;
        *r = Reader::Listening(l);
        Ok(())
    }

    /// Stop the listener and wait for its thread to end (an event it was waiting for stays
    /// queued). Afterwards `events()` or `set_listener()` may be called again. No-op without a
    /// listener.
    pub async fn remove_listener(&self) {
        if let Some(l) = self.take_listener() {
            l.shutdown(Duration::ZERO).await;
        }
    }

    // ------------------------------------------------------------------ state

    pub fn device_id(&self) -> String {
        self.client.device_id().to_string()
    }

    /// The token's `sub`: this user's id (read from the token, not checked).
    pub fn user_id(&self) -> Option<String> {
        self.client.user_id()
    }

    /// The connection state now.
    pub fn status(&self) -> ConnectionStatus {
        self.client.status().into()
    }

    /// Wait until the connection is in `state`, at most `timeout_ms` (`ChatError.Timeout`).
    pub async fn wait_for(&self, state: ConnectionState, timeout_ms: u64) -> Result<()> {
        self.client
            .wait_for(state.into(), Duration::from_millis(timeout_ms))
            .await
            .map_err(ChatError::from)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.client.stats().into()
    }

    /// Use `token` from now on: for unary calls at once, for the stream at its next connect.
    pub fn set_token(&self, token: String) -> Result<()> {
        Ok(self.client.set_token(&token)?)
    }

    /// Follow these users' presence as `Presence` events (replaces the set; kept across
    /// reconnects).
    pub fn watch_presence(&self, user_ids: Vec<String>) -> Result<()> {
        Ok(self.client.watch_presence(user_ids)?)
    }

    /// Save and ack what the app has taken, end the stream, stop reconnecting, and stop the
    /// listener (after it delivered what was queued, at most 2 s). Queued sends stay on disk
    /// (with `data_dir`) for the next client. Idempotent.
    pub async fn close(&self) {
        self.client.close().await;
        if let Some(l) = self.take_listener() {
            l.shutdown(LISTENER_DRAIN).await;
        }
    }

    // ------------------------------------------------------------------ sending

    /// Queue `content` for `chat_id` and return at once with the local echo. The message is
    /// on disk before this returns and goes out (with the same `client_msg_id`) until the
    /// server stores it; the outcome arrives as a `SendResult` event.
    pub async fn send(&self, chat_id: String, content: Content) -> Result<OutgoingMessage> {
        Ok(self.client.send(&chat_id, content.into()).await?.into())
    }

    /// `send` with the app's own idempotency key (1..64 characters).
    pub async fn send_with_id(
        &self,
        chat_id: String,
        client_msg_id: String,
        content: Content,
    ) -> Result<OutgoingMessage> {
        let m = self
            .client
            .send_with_id(&chat_id, &client_msg_id, content.into())
            .await?;
        Ok(m.into())
    }

    /// Sends not yet stored by the server, and those refused for good (with `failure`).
    pub async fn pending_sends(&self) -> Result<Vec<OutgoingMessage>> {
        let v = self.client.pending_sends().await?;
        Ok(v.into_iter().map(OutgoingMessage::from).collect())
    }

    /// Queue a failed send again (same key). False if there is no failed send with that key.
    pub async fn retry_failed(&self, client_msg_id: String) -> Result<bool> {
        Ok(self.client.retry_failed(&client_msg_id).await?)
    }

    /// Forget a failed send. False if there is no failed send with that key.
    pub async fn discard_failed(&self, client_msg_id: String) -> Result<bool> {
        Ok(self.client.discard_failed(&client_msg_id).await?)
    }

    /// A send without the queue: one unary call, answered once the message is stored.
    /// Retrying with the same `client_msg_id` returns the original with `duplicate` set.
    pub async fn send_message(
        &self,
        chat_id: String,
        client_msg_id: String,
        content: Content,
    ) -> Result<Sent> {
        let s = self
            .client
            .api()
            .send_message(&chat_id, &client_msg_id, content.into())
            .await?;
        Ok(s.into())
    }

    // ------------------------------------------------------------------ chats

    /// The 1:1 chat with `peer_user_id` (created on first use, by either side).
    pub async fn open_direct_chat(&self, peer_user_id: String) -> Result<Chat> {
        Ok(self
            .client
            .api()
            .open_direct_chat(&peer_user_id)
            .await?
            .into())
    }

    /// A group with the caller as admin and `member_user_ids` as members.
    pub async fn create_group(&self, title: String, member_user_ids: Vec<String>) -> Result<Chat> {
        let c = self
            .client
            .api()
            .create_group(&title, &member_user_ids)
            .await?;
        Ok(c.into())
    }

    pub async fn get_chat(&self, chat_id: String) -> Result<Chat> {
        Ok(self.client.api().get_chat(&chat_id).await?.into())
    }

    /// Most recently active first; `page_token` empty for the first page.
    pub async fn list_chats(&self, page_size: u32, page_token: String) -> Result<ChatPage> {
        let p = self.client.api().list_chats(page_size, &page_token).await?;
        Ok(p.into())
    }

    /// Every chat of the caller, following the pages.
    pub async fn list_all_chats(&self) -> Result<Vec<Chat>> {
        let v = self.client.api().list_all_chats().await?;
        Ok(v.into_iter().map(Chat::from).collect())
    }

    pub async fn add_members(&self, chat_id: String, user_ids: Vec<String>) -> Result<Chat> {
        let c = self.client.api().add_members(&chat_id, &user_ids).await?;
        Ok(c.into())
    }

    /// Remove `user_id` from a group (the caller itself: leave).
    pub async fn remove_member(&self, chat_id: String, user_id: String) -> Result<Chat> {
        let c = self.client.api().remove_member(&chat_id, &user_id).await?;
        Ok(c.into())
    }

    /// Holds back push notifications of `chat_id` from all this user's devices until
    /// `until_ms` (unix ms, in the future) or, left out, until `unmute_chat`. Messages,
    /// receipts and unread counts are unchanged.
    #[uniffi::method(default(until_ms = None))]
    pub async fn mute_chat(&self, chat_id: String, until_ms: Option<i64>) -> Result<()> {
        Ok(self.client.api().mute_chat(&chat_id, until_ms).await?)
    }

    /// Ends this user's mute of `chat_id` (succeeds when there was none).
    pub async fn unmute_chat(&self, chat_id: String) -> Result<()> {
        Ok(self.client.api().unmute_chat(&chat_id).await?)
    }

    /// Older messages, newest first; `page_token` empty to start at the newest.
    pub async fn get_history(
        &self,
        chat_id: String,
        page_size: u32,
        page_token: String,
    ) -> Result<HistoryPage> {
        let p = self
            .client
            .api()
            .get_history(&chat_id, page_size, &page_token)
            .await?;
        Ok(p.into())
    }

    /// The messages after `after_seq` (at least 1), oldest first.
    pub async fn get_history_after(
        &self,
        chat_id: String,
        after_seq: u64,
        page_size: u32,
    ) -> Result<HistoryPage> {
        let p = self
            .client
            .api()
            .get_history_after(&chat_id, after_seq, page_size)
            .await?;
        Ok(p.into())
    }

    // ------------------------------------------------------------------ receipts, typing, presence

    /// This user has read `chat_id` up to `seq` (on this device).
    pub async fn mark_read(&self, chat_id: String, seq: u64) -> Result<()> {
        Ok(self.client.mark_read(&chat_id, seq).await?)
    }

    /// This device has received `chat_id` up to `seq` (the client does this by itself for
    /// the messages the app takes from its events).
    pub async fn ack_delivered(&self, chat_id: String, seq: u64) -> Result<()> {
        Ok(self.client.api().ack_delivered(&chat_id, seq).await?)
    }

    /// Receipts of the members who reached `seq` (per device, plus one READ per user).
    pub async fn get_receipts(&self, chat_id: String, seq: u64) -> Result<Vec<Receipt>> {
        let v = self.client.api().get_receipts(&chat_id, seq).await?;
        Ok(v.into_iter().map(Receipt::from).collect())
    }

    /// Show (or stop showing) that this user types in `chat_id`; the indicator expires by
    /// itself unless refreshed.
    pub async fn set_typing(&self, chat_id: String, typing: bool) -> Result<()> {
        Ok(self.client.set_typing(&chat_id, typing).await?)
    }

    pub async fn get_presence(&self, user_ids: Vec<String>) -> Result<Vec<Presence>> {
        let v = self.client.api().get_presence(&user_ids).await?;
        Ok(v.into_iter().map(Presence::from).collect())
    }

    /// This device's push token; `app_id` is the APNs topic or the FCM / webhook app id (empty:
    /// the server's default). A new token replaces the device's old one of that provider.
    #[uniffi::method(default(app_id = ""))]
    pub async fn register_push_token(
        &self,
        provider: PushProvider,
        token: String,
        app_id: String,
    ) -> Result<()> {
        Ok(self
            .client
            .api()
            .register_push_token_for_app(provider.into(), &token, &app_id)
            .await?)
    }

    pub async fn unregister_push_token(&self, provider: PushProvider, token: String) -> Result<()> {
        Ok(self
            .client
            .api()
            .unregister_push_token(provider.into(), &token)
            .await?)
    }
}
