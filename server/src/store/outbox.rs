//! What the store hands on after a commit: the outbox's records, where a relay publishes them,
//! and how an event is encoded in them. JSON, so an operator can read the outbox table, a Kafka
//! topic or a Redis channel with stock tools; the ciphertext goes as base64.
//!
//! The store side owns these so that the fan-out (`bus`) depends on the store and never the
//! other way round.

use crate::domain::model::Event;
use crate::{Error, Result};
use async_trait::async_trait;

/// One committed event waiting in the store's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Outbox position: within a chat, ids increase in commit (= seq) order.
    pub id: i64,
    /// The chat the event belongs to (the Kafka key, so a chat's events stay in order).
    pub key: String,
    /// The event, encoded by [`encode_event`].
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
    async fn enqueue(&self, chat_id: &str, event: &Event) -> Result<()>;
}

pub fn encode_event(event: &Event) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    serde_json::to_vec(event).unwrap_or_default()
}

pub fn decode_event(bytes: &[u8]) -> Result<Event> {
    serde_json::from_slice(bytes).map_err(|e| Error::internal(format!("undecodable event: {e}")))
}
