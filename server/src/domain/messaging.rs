//! Sending, history and delivery cursors.

use super::{
    chats::member_access, content::check_content, ids, limits::RateLimiter, model::*, page_size,
    page_token::PageTokens,
};
use crate::metrics::METRICS;
use crate::store::{
    Appended, ChatStore, CursorMove, CursorStore, MessageStore, NewMessage, PendingAppend,
    SeqRange, Store,
};
use crate::{Error, Result};
use std::sync::{atomic::Ordering::Relaxed, Arc};
use tracing::Instrument;

/// What a client asks to send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub client_msg_id: String,
    pub chat_id: String,
    pub content: Option<Content>,
}

/// The parts of the store messaging works with.
#[derive(Clone)]
pub struct MessagingStores {
    pub messages: Arc<dyn MessageStore>,
    pub chats: Arc<dyn ChatStore>,
    pub cursors: Arc<dyn CursorStore>,
}

impl MessagingStores {
    /// All three from one backend.
    pub fn of(store: Arc<dyn Store>) -> Self {
        MessagingStores {
            messages: store.clone(),
            chats: store.clone(),
            cursors: store,
        }
    }
}

pub struct Messaging {
    store: MessagingStores,
    tokens: PageTokens,
    limiter: RateLimiter,
    max_message_bytes: u32,
}

#[derive(Clone, Copy)]
pub enum Direction {
    /// Newest first: messages before `seq`.
    Older = 0,
    /// Oldest first: messages after `seq`.
    Newer = 1,
}

/// A send's own checks, before the rate limit and the store: its key, its chat id, its content.
pub fn check_send(req: &SendRequest, max_message_bytes: u32) -> Result<()> {
    ids::check_client_msg_id(&req.client_msg_id)?;
    ids::check_chat_id(&req.chat_id)?;
    check_content(req.content.as_ref(), max_message_bytes)
}

/// The position a history page token holds (after its MAC was checked): a direction byte and
/// a big-endian seq.
pub fn history_position(position: &[u8]) -> Result<(Direction, u64)> {
    let malformed = || Error::invalid("page_token", "is malformed");
    let [d, rest @ ..] = position else {
        return Err(malformed());
    };
    let seq: [u8; 8] = rest.try_into().map_err(|_| malformed())?;
    let direction = match d {
        1 => Direction::Newer,
        _ => Direction::Older,
    };
    Ok((direction, u64::from_be_bytes(seq)))
}

impl Messaging {
    pub fn new(
        store: MessagingStores,
        tokens: PageTokens,
        limiter: RateLimiter,
        max_message_bytes: u32,
    ) -> Self {
        Messaging {
            store,
            tokens,
            limiter,
            max_message_bytes,
        }
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Validates, rate-limits and commits one message. `Ok` means it is durable.
    pub async fn send(
        &self,
        user_id: &str,
        device_id: &str,
        req: SendRequest,
        now: i64,
    ) -> Result<Appended> {
        self.submit(user_id, device_id, req, now).await?.await
    }

    /// Validates, rate-limits and queues one message; the returned future resolves when it is
    /// durable. A session submits its sends one after another and awaits them concurrently,
    /// so they commit in order and share commits.
    pub async fn submit(
        &self,
        user_id: &str,
        device_id: &str,
        req: SendRequest,
        now: i64,
    ) -> Result<PendingAppend> {
        let started = std::time::Instant::now();
        // Debug level: at tens of thousands of messages a second a span each is for debugging,
        // and a disabled one costs a branch. Ids and seq only, never content.
        let span = tracing::debug_span!(
            "message",
            chat_id = %req.chat_id,
            client_msg_id = %req.client_msg_id,
            seq = tracing::field::Empty,
        );
        check_send(&req, self.max_message_bytes)?;
        self.limiter
            .check(user_id, device_id)
            .map_err(|retry_after_ms| {
                METRICS.rate_limited.fetch_add(1, Relaxed);
                Error::RateLimited { retry_after_ms }
            })?;
        let pending = self
            .store
            .messages
            .submit_message(NewMessage {
                chat_id: req.chat_id,
                sender_user_id: user_id.to_string(),
                sender_device_id: device_id.to_string(),
                client_msg_id: req.client_msg_id,
                content: req.content.unwrap_or_default(),
                created_at: now,
            })
            .await?;
        Ok(Box::pin(
            async move {
                let appended = pending.await?;
                tracing::Span::current().record("seq", appended.message.seq);
                tracing::debug!(duplicate = appended.duplicate, "message committed");
                if !appended.duplicate {
                    METRICS.messages_received.fetch_add(1, Relaxed);
                    METRICS
                        .send_latency
                        .observe(started.elapsed().as_secs_f64());
                }
                Ok(appended)
            }
            .instrument(span),
        ))
    }

    /// One page of a chat's history as the member sees it (only messages after they joined).
    pub async fn history(
        &self,
        user_id: &str,
        chat_id: &str,
        requested_page_size: u32,
        page_token: &str,
        after_seq: u64,
    ) -> Result<(Vec<Message>, String)> {
        let limit = page_size(requested_page_size)?;
        let access = member_access(self.store.chats.as_ref(), chat_id, user_id).await?;
        let scope = format!("history:{chat_id}");
        let (direction, from) = if after_seq > 0 {
            (Direction::Newer, after_seq)
        } else if page_token.is_empty() {
            (Direction::Older, u64::MAX)
        } else {
            history_position(&self.tokens.open(&scope, page_token)?)?
        };
        let range = match direction {
            Direction::Older => SeqRange {
                after: access.joined_seq,
                before: from,
                newest_first: true,
            },
            Direction::Newer => SeqRange {
                after: from.max(access.joined_seq),
                before: u64::MAX,
                newest_first: false,
            },
        };
        let mut messages = self
            .store
            .messages
            .messages(chat_id, range, limit + 1)
            .await?;
        let next = if messages.len() > limit as usize {
            messages.truncate(limit as usize);
            let mut pos = vec![direction as u8];
            pos.extend_from_slice(&messages[messages.len() - 1].seq.to_be_bytes());
            self.tokens.seal(&scope, &pos)
        } else {
            String::new()
        };
        Ok((messages, next))
    }

    /// Moves a device's delivered (`Ack`) or read (`Read`) cursor forward. A seq below the
    /// cursor is accepted and changes nothing; one beyond the chat's last seq is refused.
    pub async fn move_cursor(
        &self,
        user_id: &str,
        device_id: &str,
        chat_id: &str,
        seq: u64,
        kind: ReceiptKind,
        now: i64,
    ) -> Result<()> {
        ids::check_chat_id(chat_id)?;
        self.store
            .cursors
            .move_cursor(CursorMove {
                user_id: user_id.to_string(),
                device_id: device_id.to_string(),
                chat_id: chat_id.to_string(),
                seq,
                kind,
                at: now,
            })
            .await
    }

    /// Who has received and read a chat up to at least `seq`, per device and per user.
    pub async fn receipts(&self, user_id: &str, chat_id: &str, seq: u64) -> Result<Vec<Receipt>> {
        member_access(self.store.chats.as_ref(), chat_id, user_id).await?;
        self.store.cursors.receipts(chat_id, seq).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fakes::{FakeChats, FakeCursors, FakeMessages};
    use crate::domain::model::{ChatKind, Role};
    use crate::store::{ChatStore, NewChat};

    #[test]
    fn a_history_position_is_a_direction_and_eight_bytes_of_seq() {
        let mut pos = vec![1];
        pos.extend_from_slice(&42u64.to_be_bytes());
        assert!(matches!(history_position(&pos), Ok((Direction::Newer, 42))));
        pos[0] = 0;
        assert!(matches!(history_position(&pos), Ok((Direction::Older, 42))));
        for bad in [
            &[][..],
            &[1][..],
            &pos[..8],
            &[pos.clone(), vec![0]].concat()[..],
        ] {
            let err = history_position(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("page_token"), "{bad:?}: {err}");
        }
    }

    struct Setup {
        messaging: Messaging,
        messages: Arc<FakeMessages>,
        cursors: Arc<FakeCursors>,
        chat_id: String,
    }

    async fn setup(burst: u32) -> Setup {
        let chats = Arc::new(FakeChats::default());
        let messages = Arc::new(FakeMessages {
            chats: chats.clone(),
            submitted: Default::default(),
        });
        let cursors = Arc::new(FakeCursors {
            chats: chats.clone(),
            moves: Default::default(),
        });
        let (chat, _) = chats
            .create_chat(NewChat {
                kind: ChatKind::Group,
                title: "t".into(),
                direct_key: None,
                members: vec![("ann".into(), Role::Admin), ("bo".into(), Role::Member)],
                created_at: 1,
            })
            .await
            .unwrap();
        let stores = MessagingStores {
            messages: messages.clone(),
            chats,
            cursors: cursors.clone(),
        };
        Setup {
            messaging: Messaging::new(
                stores,
                PageTokens::new(b"test"),
                RateLimiter::new(1, burst),
                100,
            ),
            messages,
            cursors,
            chat_id: chat.chat_id,
        }
    }

    fn text(chat_id: &str, key: &str, text: &str) -> SendRequest {
        SendRequest {
            client_msg_id: key.into(),
            chat_id: chat_id.into(),
            content: Some(Content {
                text: text.into(),
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn refused_sends_are_never_stored() {
        let s = setup(2).await;
        let m = &s.messaging;
        let chat = s.chat_id.as_str();
        assert_eq!(
            m.send("cy", "d", text(chat, "k0", "hi"), 1)
                .await
                .unwrap_err(),
            Error::not_member(chat)
        );
        assert!(matches!(
            m.send("ann", "d", text(chat, "k1", "a\0b"), 1).await,
            Err(Error::InvalidArgument {
                field: "content",
                ..
            })
        ));
        assert!(matches!(
            m.send("ann", "d", text(chat, "k2", &"x".repeat(101)), 1)
                .await,
            Err(Error::InvalidArgument {
                field: "content",
                ..
            })
        ));
        assert!(matches!(
            m.send("ann", "d", text(chat, "", "hi"), 1).await,
            Err(Error::InvalidArgument {
                field: "client_msg_id",
                ..
            })
        ));
        assert!(s.messages.submitted.lock().is_empty());

        // The burst passes; the next send from that device is held back, another device's not.
        for k in ["a", "b"] {
            m.send("ann", "d", text(chat, k, "hi"), 1).await.unwrap();
        }
        assert!(matches!(
            m.send("ann", "d", text(chat, "c", "hi"), 1).await,
            Err(Error::RateLimited { .. })
        ));
        let sent = m.send("ann", "e", text(chat, "c", "hi"), 1).await.unwrap();
        assert_eq!(sent.message.sender_device_id, "e");
        let keys: Vec<String> = s
            .messages
            .submitted
            .lock()
            .iter()
            .map(|m| m.client_msg_id.clone())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn only_members_move_cursors() {
        let s = setup(10).await;
        let chat = s.chat_id.as_str();
        s.messaging
            .move_cursor("bo", "d", chat, 0, ReceiptKind::Read, 5)
            .await
            .unwrap();
        assert!(matches!(
            s.messaging
                .move_cursor("bo", "d", "not an id", 1, ReceiptKind::Read, 5)
                .await,
            Err(Error::InvalidArgument {
                field: "chat_id",
                ..
            })
        ));
        assert_eq!(
            s.messaging
                .move_cursor("cy", "d", chat, 1, ReceiptKind::Read, 5)
                .await
                .unwrap_err(),
            Error::not_member(chat)
        );
        assert_eq!(s.cursors.moves.lock().len(), 1);
    }
}
