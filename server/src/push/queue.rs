//! Where the worker's push jobs come from: a seam with the embedded default's durable intents
//! (SQLite, written with their messages) and the cluster's `chat.push` topic (Kafka, keyed by
//! user). Either way a job is a message and who to tell of it, and what was taken is
//! acknowledged only after every push for it is done.

use crate::domain::model::Message;
use crate::store::sqlite::{DeadLetter, SqliteStore};
use crate::store::ChatStore;
use crate::Result;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;

/// A message, and the members who may get a push for it (the sender is left out later).
#[derive(Debug, Clone)]
pub struct Job {
    pub message: Message,
    pub recipients: Vec<String>,
}

/// What one take handed out, and how to acknowledge it.
#[derive(Debug)]
pub struct Taken {
    pub jobs: Vec<Job>,
    /// Entries taken, including those that made no job (a purged message).
    pub entries: usize,
    pub ack: Ack,
}

/// How a take is acknowledged (the queue's own position).
#[derive(Debug, Clone, Copy)]
pub enum Ack {
    /// Nothing was taken.
    None,
    /// SQLite: the intents up to this id.
    Intents(i64),
    /// Kafka: the consumer's positions at the take.
    Offsets,
}

#[async_trait]
pub trait PushQueue: Send + Sync + 'static {
    /// Up to `max` entries that are there now (never waits long for more).
    async fn take(&self, max: u32) -> Result<Taken>;

    /// Every push of `ack`'s entries is sent, dead or dead-lettered.
    async fn done(&self, ack: Ack) -> Result<()>;

    /// Keeps a push that failed for good.
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()>;
}

/// The embedded default's intents; recipients are the chat's members.
pub struct SqliteQueue(pub Arc<SqliteStore>);

#[async_trait]
impl PushQueue for SqliteQueue {
    async fn take(&self, max: u32) -> Result<Taken> {
        let intents = self.0.push_intents(max).await?;
        let Some(&(last, _)) = intents.last() else {
            return Ok(Taken {
                jobs: Vec::new(),
                entries: 0,
                ack: Ack::None,
            });
        };
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        let mut jobs = Vec::with_capacity(intents.len());
        let entries = intents.len();
        for message in intents.into_iter().filter_map(|(_, m)| m) {
            if !members.contains_key(&message.chat_id) {
                let list = self.0.chat_members(&message.chat_id).await?;
                members.insert(message.chat_id.clone(), list);
            }
            let recipients = members.get(&message.chat_id).cloned().unwrap_or_default();
            jobs.push(Job {
                message,
                recipients,
            });
        }
        Ok(Taken {
            jobs,
            entries,
            ack: Ack::Intents(last),
        })
    }

    async fn done(&self, ack: Ack) -> Result<()> {
        match ack {
            Ack::Intents(up_to) => self.0.push_intents_done(up_to).await,
            Ack::None | Ack::Offsets => Ok(()),
        }
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.0.push_dead_letter(letter).await
    }
}
