//! The fast path of a cluster: the committing node hands its new messages of 1:1 chats straight
//! to the nodes of the chat's members, ahead of the durable path (outbox → Kafka → `fanout`
//! consumer), which still delivers every one of them; sessions drop the second copy by seq.
//!
//! Only 1:1 chats: their two members never change, so a member list cached here can never send a
//! message to someone who has left (a group's list is only trustworthy in its event stream's
//! order, which is what the Kafka path keeps). Best effort throughout: a message that does not
//! fit the queue, or whose hand-off fails, is left to the durable path.

use super::{audience, cluster::hand_off_batch, wire, NodeLink};
use crate::domain::model::{ChatKind, Event, Message};
use crate::metrics::METRICS;
use crate::registry::Registry;
use crate::store::Store;
use std::{collections::HashMap, sync::atomic::Ordering::Relaxed, sync::Arc};
use tokio::sync::mpsc;

/// Messages waiting for the hand-off task; past this they go by the durable path only.
const QUEUE: usize = 4096;
/// Messages handed off together (one registry lookup, one Redis pipeline).
const BATCH: usize = 256;
/// Chats whose kind (and, for 1:1 chats, members) are cached; past this the cache starts over.
const CACHED_CHATS: usize = 100_000;

/// Where the node's committed messages go for the fast path.
#[derive(Clone)]
pub struct DirectHandOff {
    queue: mpsc::Sender<Arc<Message>>,
}

impl DirectHandOff {
    /// Starts the hand-off task; it ends when every `DirectHandOff` clone is dropped or the node
    /// shuts down.
    pub fn start(
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        link: Arc<dyn NodeLink>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = HandOffTask {
            store,
            registry,
            link,
            chats: HashMap::new(),
        };
        (
            DirectHandOff { queue },
            tokio::spawn(task.run(rx, shutdown)),
        )
    }

    /// Offers a message this node committed. Never waits, so a slow Redis cannot hold up the
    /// stream of this node's commits.
    pub fn offer(&self, message: &Arc<Message>) {
        if self.queue.try_send(message.clone()).is_err() {
            METRICS.direct_skipped.fetch_add(1, Relaxed);
        }
    }
}

struct HandOffTask {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    link: Arc<dyn NodeLink>,
    /// chat_id → its members if it is a 1:1 chat, `None` for a group (a chat's kind never
    /// changes).
    chats: HashMap<String, Option<Arc<[String]>>>,
}

impl HandOffTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Arc<Message>>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
            }
            self.hand_off(&batch).await;
        }
    }

    async fn hand_off(&mut self, batch: &[Arc<Message>]) {
        let mut events: Vec<(Vec<audience::Target>, Vec<u8>)> = Vec::with_capacity(batch.len());
        for m in batch {
            let Some(members) = self.direct_members(&m.chat_id).await else {
                continue;
            };
            let event = Event::Message(m.clone());
            let targets = audience::targets(&event, &members, usize::MAX);
            events.push((targets, wire::encode_event(&event)));
        }
        if events.is_empty() {
            return;
        }
        let refs: Vec<(&[audience::Target], &[u8])> = events
            .iter()
            .map(|(t, p)| (t.as_slice(), p.as_slice()))
            .collect();
        match hand_off_batch(&*self.registry, &*self.link, &refs).await {
            Ok(_) => {
                METRICS
                    .direct_handoffs
                    .fetch_add(events.len() as u64, Relaxed);
            }
            Err(e) => {
                METRICS
                    .direct_skipped
                    .fetch_add(events.len() as u64, Relaxed);
                tracing::debug!(error = %e, "direct hand-off failed; the Kafka path delivers");
            }
        }
    }

    /// The members of a 1:1 chat, `None` for a group or when the store cannot say now.
    async fn direct_members(&mut self, chat_id: &str) -> Option<Arc<[String]>> {
        if let Some(known) = self.chats.get(chat_id) {
            return known.clone();
        }
        let chat = match self.store.chat(chat_id).await {
            Ok(Some(chat)) => chat,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(chat_id, error = %e, "chat unreadable; the Kafka path delivers");
                return None;
            }
        };
        let members = (chat.kind == ChatKind::Direct)
            .then(|| chat.members.iter().map(|m| m.user_id.clone()).collect());
        if self.chats.len() >= CACHED_CHATS {
            self.chats.clear();
        }
        self.chats.insert(chat_id.to_string(), members.clone());
        members
    }
}
