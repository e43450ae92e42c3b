//! The store: the durable source of truth for chats, members, messages and cursors.
//!
//! The domain talks to it only through [`Store`]. Every write is atomic; a write that returns
//! `Ok` is durable. Writes that others must hear of (messages, membership changes) also come
//! out, in commit order, on the store's outbox channel as [`Committed`] events.

#[cfg(test)]
pub(crate) mod conformance;
pub mod outbox;
pub mod postgres;
pub mod sqlite;

use crate::domain::model::{
    Chat, ChatKind, ChatView, Content, Message, PushProvider, PushToken, Receipt, ReceiptKind, Role,
};
use crate::domain::user_data::UserRecord;
use crate::Result;
use async_trait::async_trait;
use std::{collections::HashMap, sync::Arc};

/// A message to append; the store assigns `seq` and `message_id`.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub chat_id: String,
    pub sender_user_id: String,
    pub sender_device_id: String,
    pub client_msg_id: String,
    pub content: Content,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Arc<Message>,
    /// The idempotency key was seen before; `message` is the original.
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub struct NewChat {
    pub kind: ChatKind,
    pub title: String,
    /// For direct chats: the key that makes a pair's chat unique.
    pub direct_key: Option<String>,
    pub members: Vec<(String, Role)>,
    pub created_at: i64,
}

pub use crate::domain::membership::{Access, MemberRule, Membership};

/// Which messages of a chat to read, by seq, exclusive on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub after: u64,
    pub before: u64,
    pub newest_first: bool,
}

/// One chat to replay to a resuming device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeChat {
    pub chat_id: String,
    /// The member sees only messages after this seq.
    pub joined_seq: u64,
    /// The device's delivered cursor as stored (0 when it never acked in this chat).
    pub delivered_seq: u64,
    pub last_seq: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ResumePlan {
    pub chats: Vec<ResumeChat>,
}

/// A request to move a device's cursor in a chat.
#[derive(Debug, Clone)]
pub struct CursorMove {
    pub user_id: String,
    pub device_id: String,
    pub chat_id: String,
    pub seq: u64,
    pub kind: ReceiptKind,
    pub at: i64,
}

/// Position of a chat in a user's chat list, most recent activity first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityKey {
    pub last_activity_at: i64,
    pub chat_id: String,
}

/// A queued append, resolving when its commit is durable.
pub type PendingAppend =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended>> + Send>>;

// The seam is cut by concern: each domain service holds only the part it uses, so it can be
// unit-tested against a small fake, and `Store` is what a backend implements in full.

/// Messages: appending in seq order, reading ranges, purging old ones.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Queues a message to be appended with the next seq of its chat (or to return the original
    /// message when `(sender_user_id, client_msg_id)` was seen before; membership is checked
    /// atomically). Returns once the message has its place in the write order; the returned
    /// future resolves when it is committed. So one device can have several sends in flight,
    /// committed in the order it sent them.
    async fn submit_message(&self, message: NewMessage) -> Result<PendingAppend>;

    /// [`MessageStore::submit_message`] and wait for the commit.
    async fn append_message(&self, message: NewMessage) -> Result<Appended> {
        self.submit_message(message).await?.await
    }

    async fn messages(&self, chat_id: &str, range: SeqRange, limit: u32) -> Result<Vec<Message>>;

    /// Deletes up to `limit` messages created before `before` (unix ms); returns how many.
    async fn purge_before(&self, before: i64, limit: u32) -> Result<u64>;
}

/// Chats and their members.
#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Creates a chat; for a direct chat whose key exists, returns the existing one and `false`.
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool)>;

    /// Changes a chat's members as `rule` decides from the chat as this write sees it (no other
    /// change of the chat runs beside it), and returns the chat after the change. The rule's
    /// refusal is returned as is and changes nothing; an unknown chat is NOT_FOUND. Members
    /// added start at the chat's current last seq, with no device positions from before; a
    /// removed member's device positions go with them.
    async fn change_members(&self, chat_id: &str, rule: MemberRule, now: i64) -> Result<Chat>;

    async fn chat(&self, chat_id: &str) -> Result<Option<Chat>>;
    async fn membership(&self, chat_id: &str, user_id: &str) -> Result<Membership>;
    async fn chat_members(&self, chat_id: &str) -> Result<Vec<String>>;
    /// The chat as `user_id` sees it; `None` unless a member. Its mute is as stored, expired
    /// or not: the store keeps no clock, `domain::chats` reads it as of now.
    async fn chat_view(&self, chat_id: &str, user_id: &str) -> Result<Option<ChatView>>;
    async fn list_chats(
        &self,
        user_id: &str,
        after: Option<ActivityKey>,
        limit: u32,
    ) -> Result<Vec<ChatView>>;

    /// Sets (Some(until_ms), i64::MAX = indefinitely) or clears (None) `user_id`'s mute of
    /// `chat_id`; a non-member gets the same error membership checks give elsewhere.
    async fn set_muted(&self, chat_id: &str, user_id: &str, until: Option<i64>) -> Result<()>;

    /// Those of `users` who have `chat_id` muted at `now` (ms).
    async fn muted_members(&self, chat_id: &str, users: &[String], now: i64)
        -> Result<Vec<String>>;

    /// How many groups (direct chats aside) each of `user_ids` is a member of; a user in none
    /// is left out.
    async fn group_counts(&self, user_ids: Vec<String>) -> Result<HashMap<String, u32>>;

    /// The direct chat with this key (see [`NewChat::direct_key`]), if it exists.
    async fn direct_chat_id(&self, direct_key: &str) -> Result<Option<String>>;
}

/// Devices and their positions: where each device stands in each chat, and the receipts.
#[async_trait]
pub trait CursorStore: Send + Sync + 'static {
    /// Records a device; a new one starts at the current position of every chat of its user.
    /// Returns whether the device is new.
    async fn register_device(&self, user_id: &str, device_id: &str, now: i64) -> Result<bool>;

    /// The chats with messages above the device's cursor.
    async fn resume_plan(&self, user_id: &str, device_id: &str) -> Result<ResumePlan>;

    /// Moves a device's delivered or read cursor (a read also moves the user's read position)
    /// forward, never back. `seq` beyond the chat's last seq is `InvalidArgument`; a non-member
    /// gets `PermissionDenied`. Each cursor that moved comes out on the outbox as a receipt.
    async fn move_cursor(&self, m: CursorMove) -> Result<()>;

    /// Receipts of the devices and users of a chat that reached at least `min_seq`.
    async fn receipts(&self, chat_id: &str, min_seq: u64) -> Result<Vec<Receipt>>;
}

/// What presence needs from the store: last seen times and who shares a chat with whom.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Records when a user's last device went away (queued; not waited for).
    async fn record_last_seen(&self, user_id: &str, at: i64) -> Result<()>;

    /// Recorded last-seen times of those users that have one.
    async fn last_seen(&self, user_ids: Vec<String>) -> Result<HashMap<String, i64>>;

    /// Those of `candidates` who share at least one chat with `user_id`.
    async fn contacts_among(&self, user_id: &str, candidates: Vec<String>) -> Result<Vec<String>>;
}

/// Push tokens: where to reach a user's devices that are not connected.
#[async_trait]
pub trait PushTokenStore: Send + Sync + 'static {
    /// Stores `token` for its device, registering the device if it is new (a token outlives
    /// nothing: it is removed with its device). The same (provider, token) registered before
    /// moves to this device; the device's earlier token of the same provider is replaced.
    async fn register_push_token(&self, token: PushToken) -> Result<()>;

    /// Removes `user_id`'s (provider, token); `false` if that user had no such token.
    async fn unregister_push_token(
        &self,
        user_id: &str,
        provider: PushProvider,
        token: &str,
    ) -> Result<bool>;

    /// Every token of these users.
    async fn push_tokens(&self, user_ids: Vec<String>) -> Result<Vec<PushToken>>;

    /// Removes a token its provider declared dead, whoever holds it now; `false` if gone.
    async fn drop_push_token(&self, provider: PushProvider, token: &str) -> Result<bool>;
}

/// Everything stored about one user, for export and erasure (GDPR).
#[async_trait]
pub trait UserDataStore: Send + Sync + 'static {
    /// The user's rows other than messages: devices, last seen, memberships, device positions
    /// and push tokens.
    async fn user_records(&self, user_id: &str) -> Result<Vec<UserRecord>>;

    /// Messages `user_id` sent, erased ones included, ordered by `client_msg_id` (the index
    /// that keeps a sender's keys unique serves the order), those after `after`, up to `limit`.
    async fn sent_messages(
        &self,
        user_id: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<Message>>;

    /// Erases what the store holds about `user_id` apart from chat membership, which goes
    /// through [`ChatStore::change_members`] so the chats' other members hear of it: each
    /// message they sent keeps its place (chat, seq, id, sender, time) and loses its content,
    /// device and idempotency key ([`ERASED_KEY_PREFIX`]); their devices, device positions,
    /// push tokens and last seen are deleted, and a direct chat of theirs no longer counts as
    /// the pair's (a later OpenDirectChat of the two makes a new one). Returns how many
    /// messages were erased now (none when run again).
    async fn erase_user(&self, user_id: &str) -> Result<u64>;
}

pub use crate::domain::model::ERASED_KEY_PREFIX;

/// A whole backend: every concern, plus its health and shutdown.
#[async_trait]
pub trait Store:
    MessageStore + ChatStore + CursorStore + PresenceStore + PushTokenStore + UserDataStore
{
    /// Succeeds when the store can serve reads and writes.
    async fn ping(&self) -> Result<()>;

    /// Finishes queued writes and stops the writer.
    async fn close(&self);
}
