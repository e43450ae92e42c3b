//! Fan-out: how a committed event reaches the sessions that must see it.
//!
//! On the embedded default everything is in one process ([`local`]). In a cluster the store's
//! outbox goes to Kafka ([`kafka`]), a fan-out consumer group works out who must hear of each
//! event ([`audience`]) and where they are connected (the registry), and hands it to those
//! nodes over Redis Pub/Sub ([`pubsub`]), where [`cluster`] queues it for the sessions.

pub mod audience;
pub mod cluster;
pub mod kafka;
pub mod local;
pub mod members;
pub mod pubsub;
pub mod wire;

use crate::Result;
use async_trait::async_trait;

/// One committed event waiting in the store's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Outbox position: within a chat, ids increase in commit (= seq) order.
    pub id: i64,
    /// The chat the event belongs to (the Kafka key, so a chat's events stay in order).
    pub key: String,
    /// The event, encoded by [`wire::encode_event`].
    pub payload: Vec<u8>,
}

/// Where the outbox relay hands committed events.
#[async_trait]
pub trait OutboxSink: Send + Sync + 'static {
    /// Returns `Ok` only once every record is durably accepted, in order per key; the relay
    /// deletes them from the outbox after that, and offers them again after an error.
    async fn publish(&self, batch: &[OutboxRecord]) -> Result<()>;
}

/// Queues an event behind everything of its chat committed so far (the store's outbox), for
/// ephemeral events that must not overtake a stored one (the typing STOPPED a message implies).
#[async_trait]
pub trait AfterCommits: Send + Sync + 'static {
    async fn enqueue(&self, chat_id: &str, event: &crate::domain::model::Event) -> Result<()>;
}

/// Hand-off of encoded envelopes ([`wire::Envelope`]) to other nodes.
#[async_trait]
pub trait NodeLink: Send + Sync + 'static {
    /// Publishes `envelope` on the node's channel. `Ok` means the link took it (Redis Pub/Sub
    /// is at most once: a node that was disconnected catches up by resync, see `session`).
    async fn send_to_node(&self, node_id: &str, envelope: Vec<u8>) -> Result<()>;

    /// Sends several envelopes, each to its node, in order: a node receives its envelopes in
    /// the order they appear here. `Ok` means the link took all of them.
    async fn send_many(&self, envelopes: Vec<(String, Vec<u8>)>) -> Result<()> {
        for (node, envelope) in envelopes {
            self.send_to_node(&node, envelope).await?;
        }
        Ok(())
    }
}
