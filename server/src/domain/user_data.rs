//! A user's data, for operators (GDPR): everything stored about them as JSON lines, and its
//! erasure. Erasure ends their sessions first (so nothing new is written meanwhile), takes them
//! out of every chat as a membership change (so each chat's other members and every node's
//! member cache hear of it), then erases the rest in the store, the registry and the quotas.
//! Each step can run again: a call that failed partway is finished by the next.

use super::chats::chats_created_key;
use super::membership;
use super::model::{ChatKind, Message, Role};
use crate::quota::Quotas;
use crate::registry::Registry;
use crate::store::{ActivityKey, Store};
use crate::Result;
use async_trait::async_trait;
use base64::{engine::general_purpose::STANDARD, Engine};
use serde::Serialize;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// One row the store holds about a user, other than the messages they sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserRecord {
    Device {
        device_id: String,
        created_at: i64,
    },
    LastSeen {
        at: i64,
    },
    /// A chat they are a member of, with their own position and mute in it.
    Membership {
        chat_id: String,
        kind: ChatKind,
        title: String,
        role: Role,
        joined_at: i64,
        joined_seq: u64,
        read_seq: u64,
        read_at: i64,
        /// Unix ms; `i64::MAX` for "until unmuted"; absent when not muted.
        #[serde(skip_serializing_if = "Option::is_none")]
        muted_until: Option<i64>,
    },
    /// Where one of their devices stands in a chat: its delivered and read receipts.
    Cursor {
        device_id: String,
        chat_id: String,
        delivered_seq: u64,
        delivered_at: i64,
        read_seq: u64,
        read_at: i64,
    },
    PushToken {
        device_id: String,
        provider: String,
        token: String,
        app_id: String,
        created_at: i64,
    },
}

/// A message they sent, as an export line.
#[derive(Serialize)]
#[serde(tag = "type", rename = "message")]
struct SentMessage<'a> {
    chat_id: &'a str,
    seq: u64,
    message_id: &'a str,
    created_at: i64,
    /// Its content was erased: only its place in the chat is kept.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    erased: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    device_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    client_msg_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    text: &'a str,
    /// Base64.
    #[serde(skip_serializing_if = "String::is_empty")]
    ciphertext: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: &'a BTreeMap<String, String>,
}

impl<'a> SentMessage<'a> {
    fn of(m: &'a Message) -> Self {
        let erased = m.is_erased();
        SentMessage {
            chat_id: &m.chat_id,
            seq: m.seq,
            message_id: &m.message_id,
            created_at: m.created_at,
            erased,
            device_id: &m.sender_device_id,
            client_msg_id: m.visible_client_msg_id(),
            text: &m.content.text,
            ciphertext: STANDARD.encode(&m.content.ciphertext),
            attributes: &m.content.attributes,
        }
    }
}

/// The first line of an export: whose data, and when it was read.
#[derive(Serialize)]
#[serde(tag = "type", rename = "export")]
struct Header<'a> {
    user_id: &'a str,
    exported_at: i64,
}

/// Messages read from the store per page.
const MESSAGES_PAGE: u32 = 500;
/// Chats left per page of the user's chat list.
const CHATS_PAGE: u32 = 200;
/// An export chunk is sent once it holds this much.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// How long erasure waits for the user's sessions to end.
const EVICTION_WAIT: Duration = Duration::from_secs(5);

/// Ends a user's sessions wherever they are connected: the seam between the embedded default
/// (every session is on this node) and a cluster (`bus::evict`).
#[async_trait]
pub trait SessionEvictions: Send + Sync + 'static {
    /// Ends every session of `user_id` and waits (at most `limit`) until none is left; whether
    /// they all went.
    async fn evict(&self, user_id: &str, limit: Duration) -> Result<bool>;
}

/// What an erasure did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Messages whose content was erased by this call.
    pub messages: u64,
    pub chats_left: u64,
    /// Sessions were still live after the wait (a node that could not be reached).
    pub sessions_remained: bool,
}

pub struct UserData {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    quotas: Arc<dyn Quotas>,
    evictions: Arc<dyn SessionEvictions>,
}

impl UserData {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        quotas: Arc<dyn Quotas>,
        evictions: Arc<dyn SessionEvictions>,
    ) -> Self {
        UserData {
            store,
            registry,
            quotas,
            evictions,
        }
    }

    /// Everything stored about `user_id` as JSON lines, handed to `out` in chunks of about
    /// [`CHUNK_BYTES`] (each ends with a whole line), reading the store a page at a time.
    /// Stops early, without an error, when `out` is gone (the caller hung up).
    pub async fn export(
        &self,
        user_id: &str,
        now: i64,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<()> {
        let mut lines = Lines::new(out);
        lines.push(&Header {
            user_id,
            exported_at: now,
        });
        for record in self.store.user_records(user_id).await? {
            lines.push(&record);
            if !lines.flush_full().await {
                return Ok(());
            }
        }
        let mut after = None;
        loop {
            let page = self
                .store
                .sent_messages(user_id, after.take(), MESSAGES_PAGE)
                .await?;
            for m in &page {
                lines.push(&SentMessage::of(m));
                if !lines.flush_full().await {
                    return Ok(());
                }
            }
            match page.last() {
                Some(last) if page.len() == MESSAGES_PAGE as usize => {
                    after = Some(last.client_msg_id.clone())
                }
                _ => break,
            }
        }
        lines.finish().await;
        Ok(())
    }

    /// Erases `user_id`'s data (see the module's comment); `now` stamps the membership changes.
    pub async fn erase(&self, user_id: &str, now: i64) -> Result<Erasure> {
        let all_gone = self.evictions.evict(user_id, EVICTION_WAIT).await?;
        let mut chats_left = 0;
        let mut after: Option<ActivityKey> = None;
        loop {
            let page = self
                .store
                .list_chats(user_id, after.take(), CHATS_PAGE)
                .await?;
            for view in &page {
                let rule = membership::erasing(user_id.to_string());
                self.store
                    .change_members(&view.chat.chat_id, rule, now)
                    .await?;
                chats_left += 1;
            }
            match page.last() {
                Some(last) if page.len() == CHATS_PAGE as usize => {
                    after = Some(ActivityKey {
                        last_activity_at: last.chat.last_activity_at,
                        chat_id: last.chat.chat_id.clone(),
                    })
                }
                _ => break,
            }
        }
        let messages = self.store.erase_user(user_id).await?;
        self.registry.forget(user_id).await?;
        self.quotas.forget(&chats_created_key(user_id)).await?;
        Ok(Erasure {
            messages,
            chats_left,
            sessions_remained: !all_gone,
        })
    }
}

/// JSON lines gathered into chunks.
struct Lines {
    buf: Vec<u8>,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl Lines {
    fn new(out: tokio::sync::mpsc::Sender<Vec<u8>>) -> Self {
        Lines {
            buf: Vec::with_capacity(CHUNK_BYTES * 2),
            out,
        }
    }

    fn push(&mut self, value: &impl Serialize) {
        // These types serialize to JSON without fail (string keys, no floats).
        if serde_json::to_writer(&mut self.buf, value).is_ok() {
            self.buf.push(b'\n');
        }
    }

    /// Sends the chunk when it is full; `false` when the receiver is gone.
    async fn flush_full(&mut self) -> bool {
        if self.buf.len() < CHUNK_BYTES {
            return true;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES * 2));
        self.out.send(chunk).await.is_ok()
    }

    async fn finish(self) {
        if !self.buf.is_empty() {
            let _ = self.out.send(self.buf).await;
        }
    }
}
