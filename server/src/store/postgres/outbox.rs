//! The outbox relay: committed events from the `outbox` table to an [`OutboxSink`] (Kafka).
//!
//! Every node runs one, but only the holder of a session-level advisory lock relays, so a
//! chat's events leave in one order; the others try to take over every second. The lock lives
//! on the relay's own connection, and the leader reads and deletes through that same
//! connection: when it breaks, the leader learns it on its next statement and stops, just as
//! PostgreSQL hands the lock to the next node.
//!
//! Rows go out in id order, which within a chat is commit (= seq) order, and are deleted only
//! after the sink took them; a failed publish is retried with the same rows first. A crash
//! between publish and delete publishes again: consumers drop duplicates by seq.

use super::{is_transient, OUTBOX_CHANNEL};
use crate::bus::{OutboxRecord, OutboxSink};
use crate::Result;
use sqlx::{
    postgres::{PgListener, PgPoolOptions},
    Connection, PgConnection, PgPool, Row,
};
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The advisory lock key of the relay leader ("chatd" + 2).
const LEADER_LOCK: i64 = 0x6368_6174_6400_0002;
const BATCH: i64 = 1000;
/// How often a follower tries to become the leader.
const TAKE_OVER_EVERY: Duration = Duration::from_secs(1);
/// Polling beside LISTEN, for notifications lost while the listener reconnects.
const POLL: Duration = Duration::from_millis(50);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement of the leader that takes longer has lost its connection.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows waiting in the outbox.
pub async fn outbox_depth(pool: &PgPool) -> Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
        .map_err(super::pg_err)
}

pub struct OutboxRelay {
    pool: PgPool,
    sink: Arc<dyn OutboxSink>,
}

enum Stop {
    Shutdown,
    /// Someone else leads, or leading ended with a database error.
    Retry,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, sink: Arc<dyn OutboxSink>) -> Self {
        OutboxRelay { pool, sink }
    }

    /// Runs until `shutdown`: relays while this node leads, otherwise waits to take over.
    pub async fn run(self, shutdown: CancellationToken) {
        // A follower keeps its connection between tries, so trying costs one statement.
        let mut conn = None;
        let mut complained = false;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if let Stop::Shutdown = self.lead(&mut conn, &shutdown, &mut complained).await {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(TAKE_OVER_EVERY) => {}
            }
        }
        if let Some(conn) = conn {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
        }
    }

    /// Takes the lock if it is free and relays until the connection breaks or shutdown.
    async fn lead(
        &self,
        slot: &mut Option<PgConnection>,
        shutdown: &CancellationToken,
        complained: &mut bool,
    ) -> Stop {
        if slot.is_none() {
            let options = self.pool.connect_options();
            match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await
            {
                Ok(Ok(conn)) => *slot = Some(conn),
                Ok(Err(e)) => {
                    if !*complained {
                        tracing::warn!(error = %e, "outbox relay cannot connect to PostgreSQL");
                        *complained = true;
                    }
                    return Stop::Retry;
                }
                Err(_) => {
                    if !*complained {
                        tracing::warn!("outbox relay cannot connect to PostgreSQL: timed out");
                        *complained = true;
                    }
                    return Stop::Retry;
                }
            }
            *complained = false;
        }
        let Some(conn) = slot.as_mut() else {
            return Stop::Retry;
        };
        let locked = timed(
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut *conn),
        )
        .await;
        match locked {
            Ok(true) => {}
            Ok(false) => return Stop::Retry,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: cannot try the leader lock");
                *slot = None;
                return Stop::Retry;
            }
        }
        tracing::info!("outbox relay: this node relays the outbox");
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.pool.clone(), wake.clone()));
        let stop = self.relay(conn, &wake, shutdown).await;
        listener.abort();
        // Closing the session releases the lock (a broken one, the server releases).
        if let Some(conn) = slot.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
        }
        tracing::info!("outbox relay: stopped relaying");
        stop
    }

    async fn relay(
        &self,
        conn: &mut PgConnection,
        wake: &Notify,
        shutdown: &CancellationToken,
    ) -> Stop {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if shutdown.is_cancelled() {
                return Stop::Shutdown;
            }
            let batch = match timed(read_batch(conn)).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: cannot read the outbox");
                    return Stop::Retry;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Stop::Shutdown,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            match self.sink.publish(&batch).await {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
                    let deleted = timed(
                        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                            .bind(&ids)
                            .execute(&mut *conn),
                    )
                    .await;
                    if let Err(e) = deleted {
                        // Published but still there: the next leader publishes them again.
                        tracing::warn!(error = %e, rows = ids.len(), "outbox relay: cannot delete relayed rows");
                        return Stop::Retry;
                    }
                    tracing::trace!(rows = ids.len(), "outbox relayed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = batch.len(), retry_in = ?backoff, "outbox relay: publish failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Stop::Shutdown,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn timed<T>(
    f: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
) -> std::result::Result<T, sqlx::Error> {
    tokio::time::timeout(STATEMENT_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from PostgreSQL",
            )))
        })
}

async fn read_batch(
    conn: &mut PgConnection,
) -> std::result::Result<Vec<OutboxRecord>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, chat_id, payload FROM outbox ORDER BY id LIMIT $1")
        .bind(BATCH)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(OutboxRecord {
                id: r.try_get(0)?,
                key: r.try_get(1)?,
                payload: r.try_get(2)?,
            })
        })
        .collect()
}

/// Wakes the relay on each NOTIFY of a commit that filled the outbox. Runs on a connection of
/// its own, not one of the store's pool.
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with((*pool.connect_options()).clone());
    loop {
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "outbox listener cannot connect");
                tokio::time::sleep(TAKE_OVER_EVERY).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(OUTBOX_CHANNEL).await {
            tracing::debug!(error = %e, "outbox listener cannot LISTEN");
            tokio::time::sleep(TAKE_OVER_EVERY).await;
            continue;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wake.notify_one(),
                // Reconnected: notifications may have been lost meanwhile.
                Ok(None) => wake.notify_one(),
                Err(e) => {
                    if !is_transient(&e) {
                        tracing::warn!(error = %e, "outbox listener");
                    }
                    tokio::time::sleep(TAKE_OVER_EVERY).await;
                    break;
                }
            }
        }
    }
}
