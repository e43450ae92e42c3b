//! The values the bindings pass across the FFI: one record or enum per `chat_sdk` type, with
//! durations as milliseconds and gRPC codes as [`Code`] so every language gets plain data.
//! The conversions from and to `chat_sdk` live in `convert.rs`.

use std::collections::HashMap;

/// A gRPC status code (the server's refusals and the SDK's local errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Code {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

/// A message body: exactly one of `text` and `ciphertext` is set (the server checks).
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct Content {
    #[uniffi(default)]
    pub text: String,
    #[uniffi(default)]
    pub ciphertext: Vec<u8>,
    #[uniffi(default)]
    pub attributes: HashMap<String, String>,
}

/// A committed message: `seq` is its place in the chat.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    pub message_id: String,
    pub chat_id: String,
    pub seq: u64,
    pub sender_user_id: String,
    pub sender_device_id: String,
    pub client_msg_id: String,
    pub content: Content,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ChatKind {
    Direct,
    Group,
    Unspecified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum MemberRole {
    Member,
    Admin,
    Unspecified,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    pub user_id: String,
    pub role: MemberRole,
    pub joined_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Chat {
    pub chat_id: String,
    pub kind: ChatKind,
    pub title: String,
    pub members: Vec<Member>,
    pub last_seq: u64,
    pub created_at: i64,
    /// The caller's read position.
    pub read_seq: u64,
    /// Messages after `read_seq` that others sent.
    pub unread_count: u64,
    /// The newest message, for previews.
    pub last_message: Option<Message>,
    pub last_activity_at: i64,
    /// The caller's pushes of this chat are held back (`mute_chat`), as of the call that
    /// returned this chat.
    pub muted: bool,
    /// Until when (unix ms) while `muted`; 0 while muted means until unmuted.
    pub muted_until: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum PresenceStatus {
    Online,
    Offline,
    Unspecified,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Presence {
    pub user_id: String,
    pub status: PresenceStatus,
    /// When the last device went away (unix ms); 0 when online or unknown.
    pub last_seen: i64,
    pub devices_online: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ReceiptKind {
    Delivered,
    Read,
    Unspecified,
}

/// `user_id`'s `device_id` (empty: the user as a whole) has received / read `chat_id` up to
/// `seq`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Receipt {
    pub chat_id: String,
    pub user_id: String,
    pub device_id: String,
    pub kind: ReceiptKind,
    pub seq: u64,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum TypingState {
    Started,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Typing {
    pub chat_id: String,
    pub user_id: String,
    pub device_id: String,
    pub state: TypingState,
    /// The indicator disappears by itself at this time (unix ms) unless refreshed.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ChatChangeKind {
    Created,
    MemberAdded,
    MemberRemoved,
    Updated,
    Unspecified,
}

/// A chat was created or its members changed; `user_ids` are the users concerned.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatChange {
    pub kind: ChatChangeKind,
    pub chat: Option<Chat>,
    pub user_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum PushProvider {
    Fcm,
    Apns,
    WebPush,
    Webhook,
}

/// One page of `list_chats`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatPage {
    pub chats: Vec<Chat>,
    /// Empty when there are no more.
    pub next_page_token: String,
}

/// One page of `get_history`: newest first, or oldest first from `get_history_after`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub next_page_token: String,
}

/// The answer to a unary `send_message`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Sent {
    pub message: Message,
    /// The key was used before: `message` is the original.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ConnectionState {
    /// The first connection is being made.
    Connecting,
    /// Synced: the backlog is in, live events flow.
    Connected,
    /// The connection was lost or refused; the next attempt is scheduled.
    Reconnecting,
    /// `close()` was called: no more attempts.
    Closed,
}

/// What ended the last connection or attempt.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConnectionError {
    pub code: Code,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConnectionStatus {
    pub state: ConnectionState,
    /// Failed attempts since the last successful sync.
    pub attempt: u32,
    /// For `Reconnecting`: milliseconds until the next attempt.
    pub retry_in_ms: Option<u64>,
    /// For `Reconnecting`: what ended the last connection or attempt.
    pub error: Option<ConnectionError>,
    /// For `Connected`: messages the server replayed on this sync.
    pub replayed: u64,
}

/// How a queued send ended.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
#[allow(clippy::large_enum_variant)] // one per send, lowered across the FFI at once: a box buys nothing
pub enum SendOutcome {
    /// Stored by the server; `duplicate` when an earlier attempt had already stored it.
    Sent { message: Message, duplicate: bool },
    /// Refused for good: the send stays in `pending_sends` as failed until discarded or
    /// retried.
    Failed { code: Code, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SendResult {
    pub client_msg_id: String,
    pub chat_id: String,
    pub outcome: SendOutcome,
}

/// The server refused a frame other than a send (an ack, a presence watch, …).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ServerError {
    /// The refused frame: "ack", "watch_presence", …
    pub frame: String,
    pub code: Code,
    pub message: String,
    pub chat_id: String,
}

/// Why the server refused a queued send for good.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SendFailure {
    pub code: Code,
    pub reason: String,
}

/// A queued (or failed) send: the local echo `send` returns.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OutgoingMessage {
    pub client_msg_id: String,
    pub chat_id: String,
    pub content: Content,
    /// When the app queued it (unix ms).
    pub queued_at: i64,
    /// Set when the server refused it for good.
    pub failure: Option<SendFailure>,
}

/// Counters of one client since it was created.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct StatsSnapshot {
    /// Streams that reached `SyncComplete`.
    pub connects: u64,
    /// Synced streams that were lost.
    pub disconnects: u64,
    /// Messages passed to the app (live, replayed and from gap fills).
    pub messages_received: u64,
    /// Messages dropped as already given.
    pub duplicates_dropped: u64,
    /// Gaps read from history.
    pub gaps_filled: u64,
    /// Messages that came from gap fills.
    pub messages_from_history: u64,
    pub sends_acked: u64,
    pub sends_failed: u64,
    /// Transient refusals that were retried.
    pub send_retries: u64,
}

/// One thing that happened, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A message from someone else (or from this user's other devices): each chat's messages
    /// come once and in seq order.
    Message {
        message: Message,
    },
    /// A send from this client was stored or refused.
    SendResult {
        result: SendResult,
    },
    Receipt {
        receipt: Receipt,
    },
    Typing {
        typing: Typing,
    },
    Presence {
        presence: Presence,
    },
    ChatChanged {
        change: ChatChange,
    },
    Connection {
        status: ConnectionStatus,
    },
    ServerError {
        error: ServerError,
    },
}

/// Settings of one client. Only `endpoint`, `token` and `device_id` are required; every
/// unset override keeps the SDK's default.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ClientConfig {
    /// `http://host:port` (or `https://…`) of a chatd node or its load balancer.
    pub endpoint: String,
    /// The user's bearer token (JWT); replace it later with `ChatClient.set_token`.
    pub token: String,
    /// This device's id: 1..64 of `[A-Za-z0-9._-]`, stable across app restarts.
    pub device_id: String,
    /// Directory of the offline send queue and read positions, so both survive app
    /// restarts. Unset keeps them in memory for this process only. One client per directory.
    #[uniffi(default)]
    pub data_dir: Option<String>,
    /// Sent to the server in `Hello.client_version`.
    #[uniffi(default)]
    pub client_version: Option<String>,
    /// Longest wait for a connection and then for `Welcome` (default 20000).
    #[uniffi(default)]
    pub connect_timeout_ms: Option<u64>,
    /// HTTP/2 PING interval (default 30000).
    #[uniffi(default)]
    pub keepalive_interval_ms: Option<u64>,
    /// HTTP/2 PING answer timeout (default 10000).
    #[uniffi(default)]
    pub keepalive_timeout_ms: Option<u64>,
    /// First reconnect delay (default 1000).
    #[uniffi(default)]
    pub reconnect_initial_ms: Option<u64>,
    /// Longest reconnect delay (default 120000).
    #[uniffi(default)]
    pub reconnect_max_ms: Option<u64>,
    /// Growth of the reconnect delay per failed attempt (default 1.6).
    #[uniffi(default)]
    pub reconnect_multiplier: Option<f64>,
    /// Relative spread of each reconnect delay, in [0, 1) (default 0.2).
    #[uniffi(default)]
    pub reconnect_jitter: Option<f64>,
    /// Sends waiting for their answer at most, over all chats: 1..=64 (default 64).
    #[uniffi(default)]
    pub send_window: Option<u32>,
    /// Sends of one chat in flight at most (default 1: keeps a chat's order).
    #[uniffi(default)]
    pub send_window_per_chat: Option<u32>,
    /// How long taken positions may wait before they are saved and acked (default 100).
    #[uniffi(default)]
    pub ack_delay_ms: Option<u64>,
    /// Events waiting for the app at most (default 1024).
    #[uniffi(default)]
    pub event_buffer: Option<u32>,
    /// For an `https://` endpoint: a CA certificate (PEM) trusted besides the public roots (a
    /// private CA). Unset: the public roots only.
    #[uniffi(default)]
    pub tls_ca_pem: Option<String>,
}
