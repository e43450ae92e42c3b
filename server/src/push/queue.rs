//! Where the worker's push jobs come from: a seam with the embedded default's durable intents
//! (SQLite, written with their messages) and the cluster's `chat.push` topic (Kafka, keyed by
//! user). Either way a job is a message and who to tell of it, and what was taken is
//! acknowledged only after every push for it is done. Each provider has its own lane: its own
//! queue position, so a provider that stalls holds back none of the others.

use crate::domain::model::{Message, PushProvider};
use crate::store::sqlite::{DeadLetter, SqliteStore};
use crate::store::ChatStore;
use crate::Result;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
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

impl Taken {
    /// Adds a later take of the same queue to this one.
    pub fn merge(&mut self, later: Taken) {
        self.jobs.extend(later.jobs);
        self.entries += later.entries;
        self.ack = match (self.ack, later.ack) {
            (Ack::Intents(a), Ack::Intents(b)) => Ack::Intents(a.max(b)),
            (a, Ack::None) => a,
            (_, b) => b,
        };
    }
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
    /// Up to `max` entries that are there now (never waits long for more), after those taken
    /// before: an entry is handed out once per run of the worker, taken or not acknowledged
    /// (a new run starts again from the last acknowledged).
    async fn take(&self, max: u32) -> Result<Taken>;

    /// Every push of `ack`'s entries is sent, dead or dead-lettered.
    async fn done(&self, ack: Ack) -> Result<()>;

    /// Keeps a push that failed for good.
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()>;

    /// How many dead letters are kept now.
    async fn dead_letter_depth(&self) -> Result<DlqDepth>;
}

/// A dead-letter count, and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqDepth {
    /// This lane's provider's.
    Lane(u64),
    /// Every provider's together (where the queue cannot tell them apart cheaply).
    All(u64),
}

/// One provider's lane over the embedded default's intents; recipients are the chat's members.
pub struct SqliteQueue {
    store: Arc<SqliteStore>,
    lane: PushProvider,
    /// Every lane the node runs: an intent stays until all of them are past it.
    lanes: Vec<PushProvider>,
    /// The last intent this lane took; read from the store (the last one it was done with) at
    /// the first take.
    taken: AtomicI64,
}

/// `SqliteQueue::taken` before the first take.
const UNREAD: i64 = -1;

impl SqliteQueue {
    pub fn new(store: Arc<SqliteStore>, lane: PushProvider, lanes: Vec<PushProvider>) -> Self {
        SqliteQueue {
            store,
            lane,
            lanes,
            taken: AtomicI64::new(UNREAD),
        }
    }
}

#[async_trait]
impl PushQueue for SqliteQueue {
    async fn take(&self, max: u32) -> Result<Taken> {
        let mut after = self.taken.load(Relaxed);
        if after == UNREAD {
            after = self.store.push_position(self.lane).await?;
        }
        let intents = self.store.push_intents(after, max).await?;
        let Some(&(last, _)) = intents.last() else {
            self.taken.store(after, Relaxed);
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
                let list = self.store.chat_members(&message.chat_id).await?;
                members.insert(message.chat_id.clone(), list);
            }
            let recipients = members.get(&message.chat_id).cloned().unwrap_or_default();
            jobs.push(Job {
                message,
                recipients,
            });
        }
        self.taken.store(last, Relaxed);
        Ok(Taken {
            jobs,
            entries,
            ack: Ack::Intents(last),
        })
    }

    async fn done(&self, ack: Ack) -> Result<()> {
        match ack {
            Ack::Intents(up_to) => {
                self.store
                    .push_intents_done(self.lane, up_to, self.lanes.clone())
                    .await?;
                Ok(())
            }
            Ack::None | Ack::Offsets => Ok(()),
        }
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.store.push_dead_letter(letter).await
    }

    async fn dead_letter_depth(&self) -> Result<DlqDepth> {
        Ok(DlqDepth::Lane(
            self.store.push_dead_letters(self.lane).await?,
        ))
    }
}
