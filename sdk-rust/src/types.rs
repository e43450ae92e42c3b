//! What the app sees: plain Rust values for the contract's messages, chats, receipts, presence
//! and typing, converted from the generated protobuf types in one place (`From` impls below).

use chat_proto::v1 as pb;
use std::collections::HashMap;

/// A message body: exactly one of `text` and `ciphertext` is set (the server checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    pub text: String,
    pub ciphertext: Vec<u8>,
    pub attributes: HashMap<String, String>,
}

impl Content {
    pub fn text(t: impl Into<String>) -> Self {
        Content {
            text: t.into(),
            ..Content::default()
        }
    }

    pub fn ciphertext(b: impl Into<Vec<u8>>) -> Self {
        Content {
            ciphertext: b.into(),
            ..Content::default()
        }
    }
}

/// A committed message: `seq` is its place in the chat.
#[derive(Debug, Clone, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatKind {
    Direct,
    Group,
    Unspecified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberRole {
    Member,
    Admin,
    Unspecified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    pub role: MemberRole,
    pub joined_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The caller's pushes of this chat are held back (`Api::mute_chat`), as of the call that
    /// returned this chat.
    pub muted: bool,
    /// Until when (unix ms) while `muted`; 0 while muted means until unmuted (and 0 when not
    /// muted).
    pub muted_until: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceStatus {
    Online,
    Offline,
    Unspecified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user_id: String,
    pub status: PresenceStatus,
    /// When the last device went away (unix ms); 0 when online or unknown.
    pub last_seen: i64,
    pub devices_online: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    Delivered,
    Read,
    Unspecified,
}

/// `user_id`'s `device_id` (empty: the user as a whole) has received / read `chat_id` up to
/// `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub chat_id: String,
    pub user_id: String,
    pub device_id: String,
    pub kind: ReceiptKind,
    pub seq: u64,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TypingState {
    Started,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typing {
    pub chat_id: String,
    pub user_id: String,
    pub device_id: String,
    pub state: TypingState,
    /// The indicator disappears by itself at this time (unix ms) unless refreshed.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatChangeKind {
    Created,
    MemberAdded,
    MemberRemoved,
    Updated,
    Unspecified,
}

/// A chat was created or its members changed; `user_ids` are the users concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatChange {
    pub kind: ChatChangeKind,
    pub chat: Option<Chat>,
    pub user_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushProvider {
    Fcm,
    Apns,
    WebPush,
    Webhook,
}

/// One page of `ListChats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPage {
    pub chats: Vec<Chat>,
    /// Empty when there are no more.
    pub next_page_token: String,
}

/// One page of `GetHistory`: newest first, or oldest first when read with `after_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub next_page_token: String,
}

/// The answer to a unary `SendMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message: Message,
    /// The key was used before: `message` is the original.
    pub duplicate: bool,
}

// ------------------------------------------------------------------ protobuf -> SDK

impl From<pb::Content> for Content {
    fn from(c: pb::Content) -> Self {
        Content {
            text: c.text,
            ciphertext: c.ciphertext,
            attributes: c.attributes,
        }
    }
}

impl From<Content> for pb::Content {
    fn from(c: Content) -> Self {
        pb::Content {
            text: c.text,
            ciphertext: c.ciphertext,
            attributes: c.attributes,
        }
    }
}

impl From<pb::Message> for Message {
    fn from(m: pb::Message) -> Self {
        Message {
            message_id: m.message_id,
            chat_id: m.chat_id,
            seq: m.seq,
            sender_user_id: m.sender_user_id,
            sender_device_id: m.sender_device_id,
            client_msg_id: m.client_msg_id,
            content: m.content.map(Content::from).unwrap_or_default(),
            created_at: m.created_at,
        }
    }
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Self {
        Member {
            role: match pb::MemberRole::try_from(m.role) {
                Ok(pb::MemberRole::Member) => MemberRole::Member,
                Ok(pb::MemberRole::Admin) => MemberRole::Admin,
                _ => MemberRole::Unspecified,
            },
            user_id: m.user_id,
            joined_at: m.joined_at,
        }
    }
}

impl From<pb::Chat> for Chat {
    fn from(c: pb::Chat) -> Self {
        Chat {
            kind: match pb::ChatKind::try_from(c.kind) {
                Ok(pb::ChatKind::Direct) => ChatKind::Direct,
                Ok(pb::ChatKind::Group) => ChatKind::Group,
                _ => ChatKind::Unspecified,
            },
            chat_id: c.chat_id,
            title: c.title,
            members: c.members.into_iter().map(Member::from).collect(),
            last_seq: c.last_seq,
            created_at: c.created_at,
            read_seq: c.read_seq,
            unread_count: c.unread_count,
            last_message: c.last_message.map(Message::from),
            last_activity_at: c.last_activity_at,
            muted: c.muted,
            muted_until: c.muted_until,
        }
    }
}

impl From<pb::Presence> for Presence {
    fn from(p: pb::Presence) -> Self {
        Presence {
            status: match pb::PresenceStatus::try_from(p.status) {
                Ok(pb::PresenceStatus::Online) => PresenceStatus::Online,
                Ok(pb::PresenceStatus::Offline) => PresenceStatus::Offline,
                _ => PresenceStatus::Unspecified,
            },
            user_id: p.user_id,
            last_seen: p.last_seen,
            devices_online: p.devices_online,
        }
    }
}

impl From<pb::Receipt> for Receipt {
    fn from(r: pb::Receipt) -> Self {
        Receipt {
            kind: match pb::ReceiptKind::try_from(r.kind) {
                Ok(pb::ReceiptKind::Delivered) => ReceiptKind::Delivered,
                Ok(pb::ReceiptKind::Read) => ReceiptKind::Read,
                _ => ReceiptKind::Unspecified,
            },
            chat_id: r.chat_id,
            user_id: r.user_id,
            device_id: r.device_id,
            seq: r.seq,
            at: r.at,
        }
    }
}

impl From<pb::TypingEvent> for Typing {
    fn from(t: pb::TypingEvent) -> Self {
        Typing {
            state: match pb::TypingState::try_from(t.state) {
                Ok(pb::TypingState::Started) => TypingState::Started,
                _ => TypingState::Stopped,
            },
            chat_id: t.chat_id,
            user_id: t.user_id,
            device_id: t.device_id,
            expires_at: t.expires_at,
        }
    }
}

impl From<pb::ChatEvent> for ChatChange {
    fn from(e: pb::ChatEvent) -> Self {
        ChatChange {
            kind: match pb::ChatEventKind::try_from(e.kind) {
                Ok(pb::ChatEventKind::Created) => ChatChangeKind::Created,
                Ok(pb::ChatEventKind::MemberAdded) => ChatChangeKind::MemberAdded,
                Ok(pb::ChatEventKind::MemberRemoved) => ChatChangeKind::MemberRemoved,
                Ok(pb::ChatEventKind::Updated) => ChatChangeKind::Updated,
                _ => ChatChangeKind::Unspecified,
            },
            chat: e.chat.map(Chat::from),
            user_ids: e.user_ids,
        }
    }
}

impl From<TypingState> for pb::TypingState {
    fn from(s: TypingState) -> Self {
        match s {
            TypingState::Started => pb::TypingState::Started,
            TypingState::Stopped => pb::TypingState::Stopped,
        }
    }
}

impl From<PushProvider> for pb::PushProvider {
    fn from(p: PushProvider) -> Self {
        match p {
            PushProvider::Fcm => pb::PushProvider::Fcm,
            PushProvider::Apns => pb::PushProvider::Apns,
            PushProvider::WebPush => pb::PushProvider::Webpush,
            PushProvider::Webhook => pb::PushProvider::Webhook,
        }
    }
}
