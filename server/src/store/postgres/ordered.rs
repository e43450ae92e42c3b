//! Events that were never stored but must reach sessions in order with stored ones.

use super::{PgStore, OUTBOX_CHANNEL};
use crate::domain::model::Event;
use crate::store::outbox::AfterCommits;
use crate::{Error, Result};
use async_trait::async_trait;
use sqlx::PgPool;

#[async_trait]
impl AfterCommits for PgStore {
    async fn enqueue(&self, chat_id: &str, event: &Event) -> Result<()> {
        enqueue_after_commits(&self.pool(), chat_id, event).await
    }
}

/// Queues `event` on the outbox behind everything of its chat committed so far, so the fan-out
/// delivers it after them. The typing STOPPED that a message implies goes this way: sent
/// straight to the nodes it would overtake the message, which travels through Kafka.
pub async fn enqueue_after_commits(pool: &PgPool, chat_id: &str, event: &Event) -> Result<()> {
    sqlx::query(
        "WITH ob AS (INSERT INTO outbox (chat_id, payload) VALUES ($1, $2))
         SELECT pg_notify($3, '')",
    )
    .bind(chat_id)
    .bind(crate::store::outbox::encode_event(event))
    .bind(OUTBOX_CHANNEL)
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(|e| Error::Unavailable(format!("cannot queue an event on the outbox: {e}")))
}
