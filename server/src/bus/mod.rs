//! Fan-out: how a committed event reaches the sessions that must see it.
//!
//! On the embedded default everything is in one process ([`local`]). In a cluster the store's
//! outbox goes to Kafka ([`kafka`]), a fan-out consumer group works out who must hear of each
//! event ([`audience`]) and where they are connected (the registry), and hands it to those
//! nodes over Redis Pub/Sub ([`crate::redis::pubsub`]), where [`cluster`] queues it for the sessions.

pub mod audience;
pub mod cluster;
pub mod direct;
pub mod evict;
pub mod kafka;
pub mod local;
pub mod members;
pub mod wire;

use crate::domain::model::Committed;
use crate::Result;
use async_trait::async_trait;

pub use crate::store::outbox::{AfterCommits, OutboxRecord, OutboxSink};

/// The sessions connected to this node, as the fan-out sees them. `session::Directory`
/// implements it, so events flow down into sessions without the bus depending on the session
/// layer.
pub trait LocalSessions: Send + Sync + 'static {
    /// Queues `event` for every session of `user_id` on this node, except those of
    /// `skip_device`. Never blocks: a session whose queue is full is closed instead.
    fn deliver(&self, user_id: &str, skip_device: Option<&str>, event: &Committed);

    /// Queues a direct copy of `event` (its ordered delivery comes too) for the sessions of
    /// `user_id` on this node that have room for it, except those of `skip_device`; never
    /// closes a session.
    fn offer(&self, user_id: &str, skip_device: Option<&str>, event: &Committed);

    /// Ends every session of `user_id` on this node; returns how many there were.
    fn evict(&self, user_id: &str) -> usize;
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
