//! The outbox relay: committed events from the `outbox` table to an [`OutboxSink`] (Kafka).
//!
//! Every node runs one, but only the holder of a session-level advisory lock relays, so a
//! chat's events leave in one order; the others try to take over every second. The lock lives
//! on the relay's own connection, and the leader reads and deletes through that same
//! connection: when it breaks, the leader learns it on its next statement and stops, just as
//! PostgreSQL hands the lock to the next node.
//!
//! Rows go out in id order, which within a chat is commit (= seq) order, and are deleted only
//! after the sink took them (by the next read, in the same statement); a failed publish is
//! retried with the same rows first. A crash between publish and delete publishes again:
//! consumers drop duplicates by seq.
//!
//! Deleted rows stay in the table and its index until VACUUM, which autovacuum runs at most
//! once a minute: at 10,000 rows/s a read from the start of the index would wade through
//! hundreds of thousands of them. So reads start above a lower bound, [`Position::low`], moved
//! only where no row can still appear: ids are taken in time order, but commit in another
//! order, so a row below the highest id read may still be on its way. The bound moves to the
//! highest id `h` of a read once every transaction that was running when that read started
//! has ended, which a later read sees in its snapshot: the next call takes a transaction id
//! `x` (after the first read's snapshot), and a snapshot whose oldest running transaction is
//! above `x` shows every transaction that took an id up to `h` as ended, because outbox ids
//! are taken only by a transaction that has its own id already
//! (migrations/postgres/0002_writer.sql). Whatever such a transaction committed is then in
//! that snapshot, so a read from it that reaches `h` leaves nothing behind below `h`.
//! A read from id 0 every [`FULL_SCAN_EVERY`] checks that nothing was left behind.
//!
//! The relay runs on a thread of its own, with a single-threaded runtime, like the writer: its
//! statements and the sink's acknowledgements do not wait for a worker of the node's busy
//! runtime. Its connection commits without waiting for the WAL flush: all it writes are the
//! deletes of relayed rows, and a delete lost in a crash only publishes those rows again.

use super::{is_transient, OUTBOX_CHANNEL};
use crate::metrics::{ClusterHop, METRICS};
use crate::store::outbox::{OutboxRecord, OutboxSink};
use crate::Result;
use sqlx::{
    postgres::{PgListener, PgPoolOptions},
    Connection, PgConnection, PgPool, Row,
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{oneshot, Notify};
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
/// How often the leader reads from the first row rather than from its lower bound.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);
/// The relay's session: see the module documentation.
const SESSION_SETUP: &str = "SET synchronous_commit = off";

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
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: no runtime of its own; sharing the node's");
                return self.run_here(shutdown).await;
            }
        };
        let relay = OutboxRelay {
            pool: self.pool.clone(),
            sink: self.sink.clone(),
        };
        let (done, stopped) = oneshot::channel();
        let stop = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name("chatd-outbox".into())
            .spawn(move || {
                runtime.block_on(relay.run_here(stop));
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = stopped.await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: no thread of its own; sharing the node's");
                self.run_here(shutdown).await
            }
        }
    }

    async fn run_here(self, shutdown: CancellationToken) {
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
            let connect = async {
                let mut conn = PgConnection::connect_with(&options).await?;
                sqlx::query(SESSION_SETUP).execute(&mut conn).await?;
                Ok::<_, sqlx::Error>(conn)
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
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
        let mut at = Position::default();
        loop {
            if shutdown.is_cancelled() {
                // Best effort: what is left is published again by the next leader.
                if !at.relayed.is_empty() {
                    let _ = timed(
                        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                            .bind(&at.relayed)
                            .execute(&mut *conn),
                    )
                    .await;
                }
                return Stop::Shutdown;
            }
            let full = at.last_full.elapsed() >= FULL_SCAN_EVERY;
            let started = Instant::now();
            let read = match timed(read_batch(conn, &at, full)).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: cannot read the outbox");
                    return Stop::Retry;
                }
            };
            // Those are gone now.
            at.relayed.clear();
            if full {
                at.last_full = Instant::now();
                if let Some(first) = read.rows.first().filter(|r| r.id <= at.low) {
                    // Cannot happen (see the module documentation); late beats never.
                    tracing::error!(
                        id = first.id,
                        low = at.low,
                        "outbox relay: found a row below its lower bound"
                    );
                }
            }
            // Whether this read has every row up to the candidate bound.
            let covered = match at.candidate {
                Some((xid, high))
                    if read.xmin > xid
                        && (read.rows.len() < BATCH as usize
                            || read.rows.last().is_some_and(|r| r.id >= high)) =>
                {
                    Some(high)
                }
                _ => None,
            };
            if let (None, Some(high), Some(xid)) = (at.candidate, at.waiting, read.xid) {
                at.candidate = Some((xid, high));
                at.waiting = None;
            }
            if read.rows.is_empty() {
                at.advance(covered, None);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let read_at = started.elapsed();
            let stamps = message_stamps(&read.rows);
            let now = crate::clock::now_ms();
            for created_at in &stamps {
                METRICS.cluster_hop_at(ClusterHop::Relayed, *created_at, now);
            }
            match self.sink.publish(&read.rows).await {
                Ok(()) => {
                    let now = crate::clock::now_ms();
                    for created_at in &stamps {
                        METRICS.cluster_hop_at(ClusterHop::Produced, *created_at, now);
                    }
                    backoff = FIRST_BACKOFF;
                    at.relayed = read.rows.iter().map(|r| r.id).collect();
                    at.advance(covered, read.rows.last().map(|r| r.id));
                    tracing::debug!(
                        rows = read.rows.len(),
                        low = at.low,
                        read_us = read_at.as_micros() as u64,
                        publish_us = (started.elapsed() - read_at).as_micros() as u64,
                        "outbox relayed"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = read.rows.len(), retry_in = ?backoff, "outbox relay: publish failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Where the leader reads from.
struct Position {
    /// Every row with an id up to this one was relayed.
    low: i64,
    /// (transaction id, highest id of a read before it was taken): the next lower bound, once
    /// a snapshot shows every transaction below that transaction id ended.
    candidate: Option<(i64, i64)>,
    /// The highest id of a read, waiting for the next read's transaction id to become the
    /// candidate.
    waiting: Option<i64>,
    /// Relayed, to be deleted by the next read.
    relayed: Vec<i64>,
    last_full: Instant,
}

impl Default for Position {
    fn default() -> Self {
        Position {
            low: 0,
            candidate: None,
            waiting: None,
            relayed: Vec::new(),
            last_full: Instant::now(),
        }
    }
}

impl Position {
    /// After the rows of a read went out: `covered` is the candidate bound the read proved,
    /// `high` the read's highest id.
    fn advance(&mut self, covered: Option<i64>, high: Option<i64>) {
        if let Some(covered) = covered {
            self.low = self.low.max(covered);
            self.candidate = None;
        }
        if self.candidate.is_none() && self.waiting.is_none() {
            self.waiting = high;
        }
    }
}

struct Read {
    /// The oldest transaction still running at the read's snapshot.
    xmin: i64,
    /// A transaction id taken after the previous read's snapshot, when one was asked for.
    xid: Option<i64>,
    rows: Vec<OutboxRecord>,
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

/// Deletes the rows relayed last and reads the next ones (migrations/postgres/0002_writer.sql).
async fn read_batch(
    conn: &mut PgConnection,
    at: &Position,
    full: bool,
) -> std::result::Result<Read, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM chatd_relay_next($1, $2, $3, $4)")
        .bind(&at.relayed)
        .bind(if full { 0 } else { at.low })
        .bind(BATCH as i32)
        .bind(at.candidate.is_none() && at.waiting.is_some())
        .fetch_all(conn)
        .await?;
    let mut read = Read {
        xmin: 0,
        xid: None,
        rows: Vec::with_capacity(rows.len()),
    };
    for r in &rows {
        read.xmin = r.try_get(0)?;
        read.xid = r.try_get(1)?;
        if let Some(id) = r.try_get::<Option<i64>, _>(2)? {
            read.rows.push(OutboxRecord {
                id,
                key: r.try_get(3)?,
                payload: r.try_get(4)?,
            });
        }
    }
    Ok(read)
}

/// The `created_at` of the messages among `rows`, for the hop metrics: read from the JSON
/// without building the events (every other field is skipped).
fn message_stamps(rows: &[OutboxRecord]) -> Vec<i64> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        created_at: i64,
    }
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "Message")]
        message: Option<Stamp>,
    }
    rows.iter()
        .filter_map(|r| serde_json::from_slice::<Peek>(&r.payload).ok()?.message)
        .map(|s| s.created_at)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Content, Event, Message, Receipt, ReceiptKind};
    use crate::store::outbox::encode_event;

    fn row(id: i64, event: &Event) -> OutboxRecord {
        OutboxRecord {
            id,
            key: "c1".into(),
            payload: encode_event(event),
        }
    }

    #[test]
    fn message_stamps_come_from_messages_only() {
        let message = |created_at| {
            Event::Message(Arc::new(Message {
                message_id: "m".into(),
                chat_id: "c1".into(),
                seq: 1,
                sender_user_id: "a".into(),
                sender_device_id: "d".into(),
                client_msg_id: "x".into(),
                content: Content {
                    text: "{\"created_at\": 1}".into(),
                    ..Default::default()
                },
                created_at,
                wire: Default::default(),
            }))
        };
        let receipt = Event::Receipt(Arc::new(Receipt {
            chat_id: "c1".into(),
            user_id: "b".into(),
            device_id: "d".into(),
            kind: ReceiptKind::Delivered,
            seq: 1,
            at: 99,
        }));
        let rows = [
            row(1, &message(1_000)),
            row(2, &receipt),
            row(3, &message(2_000)),
            OutboxRecord {
                id: 4,
                key: "c1".into(),
                payload: b"not json".to_vec(),
            },
        ];
        assert_eq!(message_stamps(&rows), vec![1_000, 2_000]);
    }
}
