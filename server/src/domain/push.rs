//! The push rule: who is told about new messages while away, and what one push says.
//!
//! A member gets a push for a message when they did not send it, have not muted the chat, and
//! none of their devices is connected when the push is due; a user's messages of one pass are gathered per chat (one
//! push per chat: "alice: hi", or "3 new messages"). Content never leaves in a push when the
//! message is end-to-end encrypted, and otherwise only as much as the operator's [`PushText`]
//! allows.

use crate::domain::model::Message;
use std::collections::BTreeMap;

/// How much a push says (a server setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushText {
    /// "alice: see you at 8"
    #[default]
    SenderAndText,
    /// "alice: new message"
    SenderOnly,
    /// "new message"
    Generic,
}

impl PushText {
    pub const NAMES: &'static str = "sender-text, sender, generic";

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sender-text" => Some(PushText::SenderAndText),
            "sender" => Some(PushText::SenderOnly),
            "generic" => Some(PushText::Generic),
            _ => None,
        }
    }
}

/// The longest text a push shows before it is cut (providers cap payloads at 4 KiB).
pub const MAX_PREVIEW_CHARS: usize = 120;

/// One user's new messages in one chat, gathered for a single push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatDigest {
    pub chat_id: String,
    /// Messages this push stands for.
    pub count: u32,
    /// The newest of them.
    pub last_seq: u64,
    pub last_message_id: String,
    pub last_sender: String,
    /// The newest message's text (empty for ciphertext-only content).
    pub last_text: String,
    /// Any of them carried ciphertext: the push must not carry content.
    pub encrypted: bool,
}

/// What a push says, before a provider puts it in its own shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushContent {
    pub title: Option<String>,
    pub body: String,
    /// No server-written text: the app fetches (and decrypts) the message itself.
    pub data_only: bool,
    /// For the app: chat_id, seq, message_id, count. Never content.
    pub data: BTreeMap<String, String>,
}

/// Gathers the messages of one pass per (recipient, chat).
#[derive(Debug, Default)]
pub struct Digests {
    by_user: BTreeMap<String, BTreeMap<String, ChatDigest>>,
}

impl Digests {
    /// Adds `message` for each of `members` except its sender.
    pub fn add(&mut self, message: &Message, members: &[String]) {
        for user in members.iter().filter(|u| **u != message.sender_user_id) {
            let chats = self.by_user.entry(user.clone()).or_default();
            let digest = chats
                .entry(message.chat_id.clone())
                .or_insert_with(|| ChatDigest {
                    chat_id: message.chat_id.clone(),
                    count: 0,
                    last_seq: 0,
                    last_message_id: String::new(),
                    last_sender: String::new(),
                    last_text: String::new(),
                    encrypted: false,
                });
            digest.count += 1;
            digest.encrypted |= !message.content.ciphertext.is_empty();
            if message.seq >= digest.last_seq {
                digest.last_seq = message.seq;
                digest.last_message_id = message.message_id.clone();
                digest.last_sender = message.sender_user_id.clone();
                digest.last_text = message.content.text.clone();
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// Each chat with the users it has a digest for (to ask who muted it).
    pub fn chats(&self) -> BTreeMap<String, Vec<String>> {
        let mut chats: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (user, digests) in &self.by_user {
            for chat in digests.keys() {
                chats.entry(chat.clone()).or_default().push(user.clone());
            }
        }
        chats
    }

    /// Leaves out `chat` for `users`, who muted it: a muted chat makes no push.
    pub fn mute(&mut self, chat: &str, users: &[String]) {
        for user in users {
            if let Some(digests) = self.by_user.get_mut(user) {
                digests.remove(chat);
                if digests.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
    }

    pub fn users(&self) -> Vec<String> {
        self.by_user.keys().cloned().collect()
    }

    /// Each user's digests, one per chat.
    pub fn into_users(self) -> impl Iterator<Item = (String, Vec<ChatDigest>)> {
        self.by_user
            .into_iter()
            .map(|(user, chats)| (user, chats.into_values().collect()))
    }
}

/// What the push for `digest` says under `style`.
pub fn content(digest: &ChatDigest, style: PushText) -> PushContent {
    let mut data = BTreeMap::from([
        ("chat_id".to_string(), digest.chat_id.clone()),
        ("seq".to_string(), digest.last_seq.to_string()),
        ("message_id".to_string(), digest.last_message_id.clone()),
        ("count".to_string(), digest.count.to_string()),
    ]);
    let generic = if digest.count > 1 {
        format!("{} new messages", digest.count)
    } else {
        "new message".to_string()
    };
    if digest.encrypted {
        // The server cannot read it and must not hint at it: the app decrypts and shows.
        return PushContent {
            title: None,
            body: generic,
            data_only: true,
            data,
        };
    }
    let (title, body) = match style {
        PushText::Generic => (None, generic),
        PushText::SenderOnly => (Some(digest.last_sender.clone()), generic),
        PushText::SenderAndText if digest.count > 1 || digest.last_text.is_empty() => {
            (Some(digest.last_sender.clone()), generic)
        }
        PushText::SenderAndText => (Some(digest.last_sender.clone()), preview(&digest.last_text)),
    };
    if title.is_some() {
        // Only where the sender is shown anyway (a webhook gateway passes it on).
        data.insert("sender_id".to_string(), digest.last_sender.clone());
    }
    PushContent {
        title,
        body,
        data_only: false,
        data,
    }
}

/// `text` cut to [`MAX_PREVIEW_CHARS`] characters, with an ellipsis when cut.
fn preview(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX_PREVIEW_CHARS).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Content;

    fn message(chat: &str, seq: u64, sender: &str, text: &str, ciphertext: &[u8]) -> Message {
        Message {
            message_id: format!("m{seq}"),
            chat_id: chat.into(),
            seq,
            sender_user_id: sender.into(),
            sender_device_id: "d".into(),
            client_msg_id: format!("k{seq}"),
            content: Content {
                text: text.into(),
                ciphertext: ciphertext.to_vec(),
                ..Default::default()
            },
            created_at: 0,
            wire: Default::default(),
        }
    }

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_sender_is_never_told_and_messages_gather_per_chat() {
        let mut d = Digests::default();
        let group = members(&["alice", "bob", "carol"]);
        d.add(&message("g", 1, "alice", "one", &[]), &group);
        d.add(&message("g", 2, "bob", "two", &[]), &group);
        d.add(
            &message("dm", 1, "alice", "hi", &[]),
            &members(&["alice", "carol"]),
        );
        let users: BTreeMap<_, _> = d.into_users().collect();
        assert_eq!(users["alice"].len(), 1, "alice only hears of bob's message");
        assert_eq!(users["alice"][0].count, 1);
        let carol = &users["carol"];
        assert_eq!(carol.len(), 2);
        let g = carol.iter().find(|c| c.chat_id == "g").unwrap();
        assert_eq!((g.count, g.last_seq, g.last_sender.as_str()), (2, 2, "bob"));
    }

    #[test]
    fn a_muted_chat_makes_no_push_and_other_chats_still_do() {
        let mut d = Digests::default();
        let group = members(&["alice", "bob", "carol"]);
        d.add(&message("g", 1, "alice", "one", &[]), &group);
        d.add(
            &message("dm", 1, "alice", "hi", &[]),
            &members(&["alice", "bob"]),
        );
        let chats = d.chats();
        assert_eq!(chats["g"], ["bob", "carol"]);
        assert_eq!(chats["dm"], ["bob"]);
        d.mute("g", &members(&["bob"]));
        d.mute("dm", &members(&["carol"])); // not a digest of hers: nothing changes
        let users: BTreeMap<_, _> = d.into_users().collect();
        let bob: Vec<&str> = users["bob"].iter().map(|c| c.chat_id.as_str()).collect();
        assert_eq!(bob, ["dm"]);
        assert_eq!(users["carol"].len(), 1);

        let mut d = Digests::default();
        d.add(&message("g", 1, "alice", "one", &[]), &group);
        d.mute("g", &members(&["bob", "carol"]));
        assert!(d.is_empty(), "everyone muted it: no push at all");
    }

    #[test]
    fn what_a_push_says_follows_the_setting() {
        let mut one = ChatDigest {
            chat_id: "c".into(),
            count: 1,
            last_seq: 4,
            last_message_id: "m4".into(),
            last_sender: "alice".into(),
            last_text: "see you at 8".into(),
            encrypted: false,
        };
        let c = content(&one, PushText::SenderAndText);
        assert_eq!(
            (c.title.as_deref(), c.body.as_str()),
            (Some("alice"), "see you at 8")
        );
        assert_eq!(c.data["seq"], "4");
        let c = content(&one, PushText::SenderOnly);
        assert_eq!(
            (c.title.as_deref(), c.body.as_str()),
            (Some("alice"), "new message")
        );
        let c = content(&one, PushText::Generic);
        assert_eq!((c.title, c.body.as_str()), (None, "new message"));
        one.count = 3;
        assert_eq!(
            content(&one, PushText::SenderAndText).body,
            "3 new messages"
        );
        one.last_text = "é".repeat(200);
        one.count = 1;
        let body = content(&one, PushText::SenderAndText).body;
        assert_eq!(body.chars().count(), MAX_PREVIEW_CHARS + 1);
    }

    #[test]
    fn encrypted_content_never_leaves_in_a_push() {
        let mut d = Digests::default();
        let pair = members(&["alice", "bob"]);
        d.add(&message("c", 1, "alice", "", &[1, 2, 3]), &pair);
        d.add(&message("c", 2, "alice", "plain", &[]), &pair);
        let (_, bob) = d.into_users().find(|(u, _)| u == "bob").unwrap();
        let c = content(&bob[0], PushText::SenderAndText);
        assert!(c.data_only);
        assert_eq!((c.title, c.body.as_str()), (None, "2 new messages"));
        assert!(!c.data.values().any(|v| v.contains("plain")));
    }
}
