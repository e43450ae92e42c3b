//! The chat domain's data: what a message, a chat and a member are, independent of the wire
//! format and of the storage engine.

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, sync::Arc};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub text: String,
    /// Opaque end-to-end encrypted payload, relayed untouched.
    #[serde(with = "base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub ciphertext: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub message_id: String,
    pub chat_id: String,
    pub seq: u64,
    pub sender_user_id: String,
    pub sender_device_id: String,
    pub client_msg_id: String,
    pub content: Content,
    pub created_at: i64,
    /// The message as the transport encodes it, for fan-out to share (see [`WireCache`]).
    #[serde(skip)]
    pub wire: WireCache,
}

/// An erased message's `client_msg_id` starts with this: a control character, which a client's
/// key never holds (`ids::check_client_msg_id`), so an erased message never answers a send.
pub const ERASED_KEY_PREFIX: &str = "\u{1}erased:";

impl Message {
    /// Its content was erased (GDPR): only its place in the chat is kept.
    pub fn is_erased(&self) -> bool {
        self.client_msg_id.starts_with(ERASED_KEY_PREFIX)
    }

    /// The sender's idempotency key as clients see it: none once the message is erased.
    pub fn visible_client_msg_id(&self) -> &str {
        if self.is_erased() {
            ""
        } else {
            &self.client_msg_id
        }
    }
}

/// A message's encoded forms (protobuf for gRPC, JSON for WebSockets), each made once by the
/// first session that sends it and shared by every other recipient, so a 1000-member group
/// costs one encoding, not 1000. The domain never reads it; equality ignores it.
#[derive(Clone, Default)]
pub struct WireCache {
    proto: std::sync::OnceLock<bytes::Bytes>,
    json: std::sync::OnceLock<bytes::Bytes>,
}

impl WireCache {
    pub fn get_or_init(&self, encode: impl FnOnce() -> bytes::Bytes) -> bytes::Bytes {
        self.proto.get_or_init(encode).clone()
    }

    /// The JSON form; an encoding that fails is not kept (two sessions racing may both encode:
    /// the same bytes, one kept).
    pub fn json_or_try_init<E>(
        &self,
        encode: impl FnOnce() -> Result<bytes::Bytes, E>,
    ) -> Result<bytes::Bytes, E> {
        if let Some(json) = self.json.get() {
            return Ok(json.clone());
        }
        let json = encode()?;
        Ok(self.json.get_or_init(|| json).clone())
    }
}

impl PartialEq for WireCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for WireCache {}

impl std::fmt::Debug for WireCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCache")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatKind {
    Direct,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Member,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: String,
    pub role: Role,
    pub joined_at: i64,
    /// The chat's last seq when this member joined: they see only messages after it.
    pub joined_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    pub chat_id: String,
    pub kind: ChatKind,
    pub title: String,
    pub members: Vec<Member>,
    pub last_seq: u64,
    pub created_at: i64,
    pub last_activity_at: i64,
}

impl Chat {
    pub fn member(&self, user_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.user_id == user_id)
    }
}

/// A chat as one member sees it: their read position, unread count and preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatView {
    pub chat: Chat,
    pub read_seq: u64,
    pub unread_count: u64,
    pub last_message: Option<Message>,
    /// The member's mute of the chat's pushes (see `domain::mute`): as stored when a store
    /// returns it, as of now once `domain::chats` hands it on (an expired one is `None`).
    pub muted_until: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatChangeKind {
    Created,
    MemberAdded,
    MemberRemoved,
}

/// A committed change of a chat's membership, fanned out to members like a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatChange {
    pub kind: ChatChangeKind,
    /// The chat after the change.
    pub chat: Chat,
    /// Users added or removed (all members for `Created`).
    pub user_ids: Vec<String>,
}

impl ChatChange {
    /// Everyone who must hear of the change: the members after it and anyone who just left.
    pub fn audience(&self) -> impl Iterator<Item = &str> {
        let removed = match self.kind {
            ChatChangeKind::MemberRemoved => self.user_ids.as_slice(),
            _ => &[],
        };
        self.chat
            .members
            .iter()
            .map(|m| m.user_id.as_str())
            .chain(removed.iter().map(String::as_str))
    }
}

/// The push services a device can register a token with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PushProvider {
    Fcm,
    Apns,
    WebPush,
    Webhook,
}

impl PushProvider {
    pub const ALL: [PushProvider; 4] = [
        PushProvider::Fcm,
        PushProvider::Apns,
        PushProvider::WebPush,
        PushProvider::Webhook,
    ];

    /// The name the stores, metrics and logs use.
    pub fn name(self) -> &'static str {
        match self {
            PushProvider::Fcm => "fcm",
            PushProvider::Apns => "apns",
            PushProvider::WebPush => "webpush",
            PushProvider::Webhook => "webhook",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// One registered push token: where a push for `user_id`'s `device_id` goes while the device
/// is not connected.
#[derive(Clone, PartialEq, Eq)]
pub struct PushToken {
    pub user_id: String,
    pub device_id: String,
    pub provider: PushProvider,
    /// FCM registration token; APNs device token (hex); Web Push subscription JSON; webhook
    /// pushkey.
    pub token: String,
    /// The app the token belongs to (APNs topic, FCM or webhook app id); empty for the
    /// server's default.
    pub app_id: String,
    pub created_at: i64,
}

impl std::fmt::Debug for PushToken {
    // A token is a credential to reach someone's phone: logs get its length, not its value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushToken")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("provider", &self.provider)
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("app_id", &self.app_id)
            .field("created_at", &self.created_at)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// "`user_id`'s `device_id` has received / read every message of `chat_id` up to `seq`."
/// An empty `device_id` speaks for the user as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub chat_id: String,
    pub user_id: String,
    pub device_id: String,
    pub kind: ReceiptKind,
    pub seq: u64,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceStatus {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user_id: String,
    pub status: PresenceStatus,
    /// When the last device went away (0 while online or never seen).
    pub last_seen: i64,
    pub devices_online: u32,
}

impl Presence {
    /// How a user reads to someone who may not see them, or who was never seen.
    pub fn unknown(user_id: &str) -> Self {
        Presence {
            user_id: user_id.to_string(),
            status: PresenceStatus::Offline,
            last_seen: 0,
            devices_online: 0,
        }
    }
}

/// Someone started or stopped typing in a chat. Never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingNotice {
    pub chat_id: String,
    pub user_id: String,
    pub device_id: String,
    pub started: bool,
    /// When receivers should drop the indicator unless refreshed.
    pub expires_at: i64,
}

/// What a session can receive from the fan-out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    Message(Arc<Message>),
    Chat(Arc<ChatChange>),
    Receipt(Arc<Receipt>),
    Typing(Arc<TypingNotice>),
    Presence(Arc<Presence>),
}

/// An event in commit order, tagged with the id of the store commit that produced it
/// ([`EPHEMERAL`] for events that were never stored: typing, presence).
#[derive(Debug, Clone)]
pub struct Committed {
    pub commit_id: u64,
    pub event: Event,
}

/// The commit id of events that were never stored.
pub const EPHEMERAL: u64 = 0;

/// The commit id of a direct copy: a committed message sent by its committing node straight
/// to the recipients' nodes, ahead of the ordered fan-out that guarantees its delivery. Best
/// effort: a stream takes it only when it is exactly its chat's next message (see
/// `session::replay`), else the ordered copy brings it.
pub const DIRECT_COPY: u64 = u64::MAX;

/// Bytes as base64 in serialized events: a third of the size of serde's default number array.
mod base64_bytes {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
