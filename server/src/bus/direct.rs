//! Direct copies (cluster): each message of a direct chat committed on this node goes straight
//! to the nodes of its members — over the node link, or in-process for sessions on this node —
//! ahead of the outbox → Kafka → fan-out path, which stays the path that guarantees delivery
//! and order. Nothing here can lose or duplicate a message: a copy is best effort (dropped
//! whenever this side is behind or overloaded, a link fails or a session's queue has no room
//! for it), a session takes one only as its chat's very next message, and the ordered copy
//! that follows is then a duplicate it drops by seq (`session::replay`).
//!
//! Direct chats only: their two members never change, so the member list read once is the one
//! the writer checked. A group's list may have changed since the commit, and a copy to a
//! removed member would show them a message sent after they left.

use super::{audience, cluster::Located, wire, LocalSessions, NodeLink};
use crate::clock::now_ms;
use crate::domain::model::{ChatKind, Committed, Event, Message, DIRECT_COPY};
use crate::metrics::METRICS;
use crate::registry::Registry;
use crate::store::Store;
use std::sync::atomic::Ordering::Relaxed;
use std::{collections::HashMap, sync::Arc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages waiting for the copier; past this they are dropped (Kafka brings them).
const QUEUE: usize = 1024;
/// A message older than this (since its send arrived) when the copier reaches it is not
/// copied. A copy saves the relay and Kafka hops, some ms; when sends already wait this long
/// for their commit, the node (or the box) is overloaded, and a copy would only add work to
/// the path that must deliver anyway: measured on the 2-core box, copies at 5,000 msgs/s
/// turned p99 0.7 s into 1.8 s until this cut them there.
const MAX_AGE_MS: i64 = 50;
/// Most messages copied per registry lookup and link round trip.
const BATCH: usize = 512;
/// Chats whose kind and members are remembered; past this the memory starts over.
const CHATS_CACHED: usize = 100_000;

/// The committing side's handle: never waits.
#[derive(Clone)]
pub struct DirectCopier {
    tx: mpsc::Sender<Arc<Message>>,
}

impl DirectCopier {
    /// Queues a copy of `m`, a message this node just committed; drops it when the copier is
    /// behind.
    pub fn copy(&self, m: &Arc<Message>) {
        if self.tx.try_send(m.clone()).is_err() {
            METRICS.direct_copies_dropped.fetch_add(1, Relaxed);
        }
    }
}

pub struct DirectCopies {
    rx: mpsc::Receiver<Arc<Message>>,
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    link: Arc<dyn NodeLink>,
    local: Arc<dyn LocalSessions>,
    node_id: String,
    /// chat → its members if it is a direct chat, `None` for a group.
    chats: HashMap<String, Option<Arc<[String]>>>,
}

impl DirectCopies {
    /// The copier (for the committing side) and the task that sends its copies.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        link: Arc<dyn NodeLink>,
        local: Arc<dyn LocalSessions>,
        node_id: String,
    ) -> (DirectCopier, DirectCopies) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let copies = DirectCopies {
            rx,
            store,
            registry,
            link,
            local,
            node_id,
            chats: HashMap::new(),
        };
        (DirectCopier { tx }, copies)
    }

    /// Sends copies until the copier is dropped or the node shuts down; what is waiting at
    /// once goes out together.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = self.rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut late = 0;
            match self.send(batch, &mut late).await {
                Ok(sent) => {
                    METRICS.direct_copies_sent.fetch_add(sent, Relaxed);
                    METRICS.direct_copies_dropped.fetch_add(late, Relaxed);
                }
                Err((e, copies)) => {
                    METRICS
                        .direct_copies_dropped
                        .fetch_add(late + copies, Relaxed);
                    tracing::debug!(error = %e, copies, "direct copies dropped");
                }
            }
        }
    }

    /// Copies the messages of direct chats among `batch` that are not too old (counted in
    /// `late`); returns how many it copied, or the error and how many it was copying.
    async fn send(
        &mut self,
        batch: Vec<Arc<Message>>,
        late: &mut u64,
    ) -> Result<u64, (crate::Error, u64)> {
        let mut copies = Vec::with_capacity(batch.len());
        let now = now_ms();
        for m in batch {
            if now - m.created_at > MAX_AGE_MS {
                *late += 1;
                continue;
            }
            let members = self.direct_members(&m.chat_id).await;
            if let Some(members) = members.map_err(|e| (e, copies.len() as u64 + 1))? {
                let event = Event::Message(m);
                let targets = audience::targets(&event, &members, 0);
                copies.push((targets, event));
            }
        }
        if copies.is_empty() {
            return Ok(0);
        }
        let targets = copies.iter().map(|(targets, _)| targets.as_slice());
        let n = copies.len() as u64;
        let located = Located::locate_targets(&*self.registry, targets)
            .await
            .map_err(|e| (e, n))?;
        let mut envelopes = Vec::new();
        for (targets, event) in &copies {
            let per_node = located.per_node(targets);
            let committed = Committed {
                commit_id: DIRECT_COPY,
                event: event.clone(),
            };
            let mut payload = None;
            for (node, on_node) in per_node {
                if node == self.node_id {
                    for t in &on_node {
                        self.local
                            .offer(&t.user_id, t.skip_device.as_deref(), &committed);
                    }
                } else {
                    let payload = payload.get_or_insert_with(|| wire::encode_event(event));
                    envelopes.push((
                        node.to_string(),
                        wire::encode_direct_copy(&on_node, payload),
                    ));
                }
            }
        }
        if !envelopes.is_empty() {
            self.link.send_many(envelopes).await.map_err(|e| (e, n))?;
        }
        Ok(n)
    }

    /// The members of `chat_id` if it is a direct chat (read once: they never change).
    async fn direct_members(&mut self, chat_id: &str) -> crate::Result<Option<Arc<[String]>>> {
        if let Some(known) = self.chats.get(chat_id) {
            return Ok(known.clone());
        }
        let members = self.store.chat(chat_id).await?.and_then(|chat| {
            (chat.kind == ChatKind::Direct)
                .then(|| chat.members.into_iter().map(|m| m.user_id).collect())
        });
        if self.chats.len() >= CHATS_CACHED {
            self.chats.clear();
        }
        self.chats.insert(chat_id.to_string(), members.clone());
        Ok(members)
    }
}
