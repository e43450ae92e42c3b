//! The polling loop's one round: find chats with unread messages, answer each message once,
//! mark the chat read.
//!
//! "Once" holds across crashes without any local state: each answer's `client_msg_id` is
//! derived from the message it answers, so answering again after a crash (between the send and
//! `mark_read`) makes the server return the stored answer (`duplicate`) instead of storing a
//! second one.

use crate::reply::{answer, Place};
use chat_sdk::{is_permanent, Api, Chat, ChatKind, Content, Message, SdkError};
use std::sync::atomic::{AtomicBool, Ordering};

/// Messages read per history request.
const PAGE: u32 = 200;
/// At most this many messages are read from a chat the bot has never read (read position 0):
/// a bot added to a long-running chat answers the recent ones, not years of history.
const MAX_BACKLOG: usize = 1_000;
/// The server's limit on `client_msg_id`.
const MAX_KEY: usize = 64;

/// The idempotency key of the answer to message `seq` of `chat_id`.
pub fn client_msg_id(chat_id: &str, seq: u64) -> String {
    let key = format!("bot-{chat_id}-{seq}");
    if key.len() <= MAX_KEY {
        return key;
    }
    // Only for chat ids longer than this server's 32 hex digits: a stable hash keeps the key
    // deterministic and short.
    format!("bot-{:016x}-{seq}", fnv1a(chat_id.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Chats with unread messages.
    pub chats: usize,
    /// Messages read (the bot's own excluded).
    pub read: usize,
    /// Answers stored now.
    pub answered: usize,
    /// Answers the server already had (a round after a crash).
    pub duplicates: usize,
    /// Answers the server refused for good (logged and skipped).
    pub refused: usize,
}

impl Report {
    fn add(&mut self, o: Report) {
        self.chats += o.chats;
        self.read += o.read;
        self.answered += o.answered;
        self.duplicates += o.duplicates;
        self.refused += o.refused;
    }
}

pub struct Bot {
    api: Api,
    /// The bot's user id (its own messages are never answered).
    me: String,
    clock: fn() -> i64,
}

impl Bot {
    pub fn new(api: Api, me: impl Into<String>) -> Bot {
        Bot {
            api,
            me: me.into(),
            clock: now_ms,
        }
    }

    pub fn user_id(&self) -> &str {
        &self.me
    }

    /// One round over every chat with unread messages; stops between chats once `stop` is set.
    /// An error ends the round (the next round picks up where the read positions are).
    pub async fn poll_once(&self, stop: &AtomicBool) -> Result<Report, SdkError> {
        let mut report = Report::default();
        for chat in self.api.list_all_chats().await? {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if chat.unread_count == 0 || chat.last_seq <= chat.read_seq {
                continue;
            }
            report.add(self.handle_chat(&chat, true).await?);
        }
        Ok(report)
    }

    /// Answer what is unread in `chat`, then (if `mark_read`) mark it read. Public so a test can
    /// stop before `mark_read`, as a crash would.
    pub async fn handle_chat(&self, chat: &Chat, mark_read: bool) -> Result<Report, SdkError> {
        let mut report = Report {
            chats: 1,
            ..Report::default()
        };
        let mut read_to = chat.read_seq;
        let mut after = chat.read_seq;
        loop {
            let page = self.unread_page(chat, after).await?;
            let Some(last) = page.last().map(|m| m.seq) else {
                break;
            };
            for m in &page {
                match self.handle_message(chat, m, &mut report).await {
                    Ok(()) => read_to = m.seq,
                    Err(e) => {
                        // Keep what was answered: the next round starts after it.
                        if mark_read && read_to > chat.read_seq {
                            let _ = self.api.mark_read(&chat.chat_id, read_to).await;
                        }
                        return Err(e);
                    }
                }
            }
            if mark_read && read_to > chat.read_seq {
                self.api.mark_read(&chat.chat_id, read_to).await?;
            }
            // The first read of a never-read chat takes the newest backlog in one go.
            if after == 0 || last >= chat.last_seq || page.len() < PAGE as usize {
                break;
            }
            after = last;
        }
        Ok(report)
    }

    /// Messages after `after`, oldest first.
    async fn unread_page(&self, chat: &Chat, after: u64) -> Result<Vec<Message>, SdkError> {
        if after > 0 {
            return Ok(self
                .api
                .get_history_after(&chat.chat_id, after, PAGE)
                .await?
                .messages);
        }
        // `after_seq = 0` means "newest first" in the contract, so a chat never read is paged
        // backwards from the newest message and turned around.
        let mut out: Vec<Message> = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.api.get_history(&chat.chat_id, PAGE, &token).await?;
            let n = page.messages.len();
            out.extend(page.messages);
            if n == 0
                || page.next_page_token.is_empty()
                || page.next_page_token == token
                || out.len() >= MAX_BACKLOG
            {
                break;
            }
            token = page.next_page_token;
        }
        out.reverse();
        Ok(out)
    }

    async fn handle_message(
        &self,
        chat: &Chat,
        m: &Message,
        report: &mut Report,
    ) -> Result<(), SdkError> {
        if m.sender_user_id == self.me {
            return Ok(());
        }
        report.read += 1;
        let place = match chat.kind {
            ChatKind::Group => Place::Group,
            ChatKind::Direct | ChatKind::Unspecified => Place::Direct,
        };
        let encrypted = !m.content.ciphertext.is_empty();
        let Some(text) = answer(&m.content.text, encrypted, place, (self.clock)()) else {
            return Ok(());
        };
        let key = client_msg_id(&chat.chat_id, m.seq);
        match self
            .api
            .send_message(&chat.chat_id, &key, Content::text(text))
            .await
        {
            Ok(sent) if sent.duplicate => report.duplicates += 1,
            Ok(_) => report.answered += 1,
            Err(e) if is_permanent(e.code()) => {
                // Retrying cannot help (too long, removed from the chat, …): move on, or the
                // bot would be stuck on this message for ever.
                crate::log::warn(&format!(
                    "not answering message {} of chat {}: {e}",
                    m.seq, chat.chat_id
                ));
                report.refused += 1;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_distinct_and_short() {
        let chat = "0190f3a2b4c5d6e7f8091a2b3c4d5e6f";
        assert_eq!(client_msg_id(chat, 7), client_msg_id(chat, 7));
        assert_ne!(client_msg_id(chat, 7), client_msg_id(chat, 8));
        assert_ne!(
            client_msg_id(chat, 7),
            client_msg_id("0190f3a2b4c5d6e7f8091a2b3c4d5e70", 7)
        );
        assert!(client_msg_id(chat, u64::MAX).len() <= MAX_KEY);
        let long = "x".repeat(100);
        assert!(client_msg_id(&long, u64::MAX).len() <= MAX_KEY);
        assert_eq!(client_msg_id(&long, 1), client_msg_id(&long, 1));
    }
}
