//! The store: the durable source of truth for chats, members, messages and cursors.
//!
//! The domain talks to it only through [`Store`]. Every write is atomic; a write that returns
//! `Ok` is durable. Writes that others must hear of (messages, membership changes) also come
//! out, in commit order, on the store's outbox channel as [`Committed`] events.

pub mod sqlite;

use crate::domain::model::{Chat, ChatKind, ChatView, Content, Message, Role};
use crate::Result;
use async_trait::async_trait;
use std::sync::Arc;

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

/// Where a user stands in a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    NoSuchChat,
    NotMember,
    Member {
        role: Role,
        kind: ChatKind,
        joined_seq: u64,
        last_seq: u64,
    },
}

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
    /// Every commit visible to this plan has an id at most this; see `session::replay`.
    pub watermark: u64,
}

/// Position of a chat in a user's chat list, most recent activity first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityKey {
    pub last_activity_at: i64,
    pub chat_id: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends a message with the next seq of its chat, or returns the original message when
    /// `(sender_user_id, client_msg_id)` was seen before. Checks membership atomically.
    async fn append_message(&self, message: NewMessage) -> Result<Appended>;

    /// Creates a chat; for a direct chat whose key exists, returns the existing one and `false`.
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool)>;

    /// Adds members (existing ones are left as they are); fails with `FailedPrecondition` if
    /// the chat would exceed `max_members`.
    async fn add_members(
        &self,
        chat_id: &str,
        user_ids: Vec<String>,
        max_members: u32,
        now: i64,
    ) -> Result<Chat>;

    /// Removes a member; if no admin remains in a group, the longest-standing member becomes one.
    async fn remove_member(&self, chat_id: &str, user_id: &str, now: i64) -> Result<Chat>;

    async fn chat(&self, chat_id: &str) -> Result<Option<Chat>>;
    async fn membership(&self, chat_id: &str, user_id: &str) -> Result<Membership>;
    async fn chat_members(&self, chat_id: &str) -> Result<Vec<String>>;
    async fn chat_view(&self, chat_id: &str, user_id: &str) -> Result<Option<ChatView>>;
    async fn list_chats(
        &self,
        user_id: &str,
        after: Option<ActivityKey>,
        limit: u32,
    ) -> Result<Vec<ChatView>>;
    async fn messages(&self, chat_id: &str, range: SeqRange, limit: u32) -> Result<Vec<Message>>;

    /// Records a device; a new one starts at the current position of every chat of its user.
    /// Returns whether the device is new.
    async fn register_device(&self, user_id: &str, device_id: &str, now: i64) -> Result<bool>;

    /// The chats with messages above the device's cursor.
    async fn resume_plan(&self, user_id: &str, device_id: &str) -> Result<ResumePlan>;

    /// Moves the device's delivered cursor forward (never back). `seq` beyond the chat's last
    /// seq is `InvalidArgument`; a non-member gets `PermissionDenied`.
    async fn ack_delivered(
        &self,
        user_id: &str,
        device_id: &str,
        chat_id: &str,
        seq: u64,
    ) -> Result<()>;

    /// Succeeds when the store can serve reads and writes.
    async fn ping(&self) -> Result<()>;

    /// Finishes queued writes and stops the writer.
    async fn close(&self);
}
