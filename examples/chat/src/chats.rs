//! The chat list: names, previews, unread counts, kept current between `ListChats` refreshes.
//!
//! A refresh from the server is the truth; between refreshes live events adjust the list so the
//! screen reacts at once. Every adjustment is idempotent against a refresh that already
//! contains the event (it compares seqs), so the two may overlap in any order.

use crate::text::{sanitize, truncate};
use chat_sdk::{Chat, ChatKind, Message};

/// What the list shows for a chat: its title, or the other members for a direct chat.
pub fn display_name(chat: &Chat, me: &str) -> String {
    if !chat.title.trim().is_empty() {
        return sanitize(chat.title.trim());
    }
    let peers = peers(chat, me);
    if !peers.is_empty() {
        return sanitize(&peers.join(", "));
    }
    match chat.kind {
        ChatKind::Direct if chat.members.iter().any(|m| m.user_id == me) => {
            format!("{me} (you)")
        }
        _ => format!("chat {}", truncate(&chat.chat_id, 9)),
    }
}

/// The members other than `me`.
pub fn peers(chat: &Chat, me: &str) -> Vec<String> {
    chat.members
        .iter()
        .filter(|m| m.user_id != me)
        .map(|m| m.user_id.clone())
        .collect()
}

/// One line about a message: "bob: hi", "you: hi", "[encrypted]".
pub fn preview(m: &Message, me: &str) -> String {
    let who = if m.sender_user_id == me {
        "you".to_string()
    } else {
        sanitize(&m.sender_user_id)
    };
    let body = if !m.content.text.is_empty() {
        sanitize(&m.content.text)
    } else if !m.content.ciphertext.is_empty() {
        "[encrypted]".to_string()
    } else {
        String::new()
    };
    format!("{who}: {body}")
}

pub fn index_of(chats: &[Chat], chat_id: &str) -> Option<usize> {
    chats.iter().position(|c| c.chat_id == chat_id)
}

/// Most recently active first (stable: equal times keep the server's order).
pub fn sort(chats: &mut [Chat]) {
    chats.sort_by_key(|c| std::cmp::Reverse(c.last_activity_at));
}

/// A message arrived (from anyone, this user's sends included). Returns false when the chat is
/// not in the list (a refresh is needed). Unread grows only for others' messages in a chat
/// that is not open and only once per seq.
pub fn apply_message(chats: &mut [Chat], m: &Message, me: &str, open: Option<&str>) -> bool {
    let Some(i) = index_of(chats, &m.chat_id) else {
        return false;
    };
    let c = &mut chats[i];
    if m.seq <= c.last_seq {
        // Already counted (a refresh got there first) or an old message.
        if c.last_message.as_ref().is_none_or(|l| l.seq < m.seq) {
            c.last_message = Some(m.clone());
        }
        return true;
    }
    c.last_seq = m.seq;
    c.last_activity_at = c.last_activity_at.max(m.created_at);
    c.last_message = Some(m.clone());
    let is_open = open == Some(m.chat_id.as_str());
    if m.sender_user_id != me && !is_open && m.seq > c.read_seq {
        c.unread_count += 1;
    }
    sort(chats);
    true
}

/// This user has read `chat_id` up to `seq` (here or on another device). Returns false when
/// the new unread count cannot be known locally (read up to the middle: refresh).
pub fn apply_read(chats: &mut [Chat], chat_id: &str, seq: u64) -> bool {
    let Some(i) = index_of(chats, chat_id) else {
        return false;
    };
    let c = &mut chats[i];
    if seq <= c.read_seq {
        return true;
    }
    c.read_seq = seq;
    if seq >= c.last_seq {
        c.unread_count = 0;
        true
    } else {
        false
    }
}

/// After a refresh: the open chat has been read up to `read_marked` even if the list was
/// served before that mark_read was stored.
pub fn reconcile_open(chats: &mut [Chat], open_chat: &str, read_marked: u64) {
    if let Some(i) = index_of(chats, open_chat) {
        let c = &mut chats[i];
        if read_marked > c.read_seq {
            c.read_seq = read_marked;
            if read_marked >= c.last_seq {
                c.unread_count = 0;
            }
        }
    }
}

/// Total unread over all chats.
pub fn total_unread(chats: &[Chat]) -> u64 {
    chats.iter().map(|c| c.unread_count).sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chat_sdk::{Content, Member, MemberRole};

    pub(crate) fn chat(id: &str, kind: ChatKind, title: &str, members: &[&str]) -> Chat {
        Chat {
            chat_id: id.into(),
            kind,
            title: title.into(),
            members: members
                .iter()
                .map(|u| Member {
                    user_id: (*u).into(),
                    role: MemberRole::Member,
                    joined_at: 0,
                })
                .collect(),
            last_seq: 0,
            created_at: 0,
            read_seq: 0,
            unread_count: 0,
            last_message: None,
            last_activity_at: 0,
            muted: false,
            muted_until: 0,
        }
    }

    pub(crate) fn msg(chat: &str, seq: u64, from: &str, text: &str) -> Message {
        Message {
            message_id: format!("m{seq}"),
            chat_id: chat.into(),
            seq,
            sender_user_id: from.into(),
            sender_device_id: "d".into(),
            client_msg_id: format!("k{seq}"),
            content: Content::text(text),
            created_at: seq as i64 * 1000,
        }
    }

    #[test]
    fn names_and_previews() {
        let d = chat("c1", ChatKind::Direct, "", &["alice", "bob"]);
        assert_eq!(display_name(&d, "alice"), "bob");
        let g = chat("c2", ChatKind::Group, "Weekend", &["alice", "bob", "carol"]);
        assert_eq!(display_name(&g, "alice"), "Weekend");
        let untitled = chat("c3", ChatKind::Group, " ", &["alice", "bob", "carol"]);
        assert_eq!(display_name(&untitled, "alice"), "bob, carol");
        assert_eq!(
            preview(&msg("c1", 1, "bob", "hi\x1b[0m"), "alice"),
            "bob: hi\u{FFFD}[0m"
        );
        assert_eq!(preview(&msg("c1", 1, "alice", "yo"), "alice"), "you: yo");
        let mut enc = msg("c1", 1, "bob", "");
        enc.content = Content::ciphertext(vec![1, 2]);
        assert_eq!(preview(&enc, "alice"), "bob: [encrypted]");
    }

    #[test]
    fn unread_counts_only_others_messages_in_closed_chats_once() {
        let mut list = vec![
            chat("a", ChatKind::Direct, "", &["me", "bob"]),
            chat("b", ChatKind::Direct, "", &["me", "carol"]),
        ];
        assert!(apply_message(
            &mut list,
            &msg("b", 1, "carol", "1"),
            "me",
            None
        ));
        assert_eq!(list[0].chat_id, "b", "most recent first");
        assert_eq!(list[0].unread_count, 1);
        // The same seq again (a refresh raced the event): counted once.
        assert!(apply_message(
            &mut list,
            &msg("b", 1, "carol", "1"),
            "me",
            None
        ));
        assert_eq!(list[0].unread_count, 1);
        // Own messages and the open chat never count.
        apply_message(&mut list, &msg("b", 2, "me", "2"), "me", None);
        let mut later = msg("a", 1, "bob", "x");
        later.created_at = 5_000;
        apply_message(&mut list, &later, "me", Some("a"));
        assert_eq!(total_unread(&list), 1);
        assert_eq!(list[0].chat_id, "a");
        assert_eq!(
            list[0].last_message.as_ref().map(|m| m.seq),
            Some(1),
            "preview follows"
        );
        assert!(!apply_message(
            &mut list,
            &msg("zzz", 1, "bob", "x"),
            "me",
            None
        ));
    }

    #[test]
    fn reading_clears_unread() {
        let mut list = vec![chat("a", ChatKind::Direct, "", &["me", "bob"])];
        for s in 1..=3 {
            apply_message(&mut list, &msg("a", s, "bob", "x"), "me", None);
        }
        assert_eq!(list[0].unread_count, 3);
        assert!(!apply_read(&mut list, "a", 2), "partial read: refresh");
        assert!(apply_read(&mut list, "a", 3));
        assert_eq!(list[0].unread_count, 0);
        assert!(apply_read(&mut list, "a", 1), "never moves back");
        assert_eq!(list[0].read_seq, 3);
    }

    #[test]
    fn a_stale_refresh_does_not_resurrect_the_open_chats_badge() {
        let mut list = vec![chat("a", ChatKind::Direct, "", &["me", "bob"])];
        list[0].last_seq = 4;
        list[0].read_seq = 2;
        list[0].unread_count = 2;
        reconcile_open(&mut list, "a", 4);
        assert_eq!(list[0].unread_count, 0);
        assert_eq!(list[0].read_seq, 4);
    }
}
