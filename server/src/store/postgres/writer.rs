//! The writer task: appends, cursor moves and last-seen updates of this node, in submission
//! order, folded into one transaction per batch (group commit).
//!
//! A batch costs a handful of round trips whatever its size: lock the chats it appends to
//! (`chat_id` order, so two nodes' batches never deadlock) and the member rows it moves cursors
//! of; read what the checks need (membership, idempotency keys, cursors) in one go once the
//! locks are held, so the reads see every commit that held them before; decide each write in
//! order in memory, exactly as the SQLite writer does one after the other; then write
//! messages, seqs, cursors, outbox rows and the relay's wake-up in one statement. A refused
//! write (not a member, no such chat) is an answer, not a failure: its neighbours commit.

use super::{commit_failed, ids, is_connection_lost, message_at, Emitter, OUTBOX_CHANNEL};
use crate::domain::model::{Event, Message, Receipt, ReceiptKind};
use crate::store::{Appended, CursorMove, NewMessage};
use crate::{Error, Result};
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection, Row};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// Most writes folded into one transaction; bounds the latency a batch adds to its last write.
const MAX_BATCH: usize = 512;
/// A batch that takes longer has lost its connection in a way TCP did not report.
const BATCH_TIMEOUT: Duration = Duration::from_secs(15);
/// A new connection for the writer must come within this, or the batch fails as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Run on each new connection of the writer. Plans: the writer's statements take arrays of
/// keys and are the same every time; a generic plan (index lookups per key) saves planning
/// them again for each batch. Then the first transaction: every commit opens the next one in
/// the same round trip (`COMMIT; BEGIN`), so a batch starts with its first real statement.
/// A transaction that has run nothing holds no snapshot, transaction id or lock.
const SESSION_SETUP: &str = "SET plan_cache_mode = force_generic_plan; BEGIN";
/// Runs of a batch that met another node's conflicting write (same idempotency key in another
/// chat, a deadlock): the next run sees that write committed.
const ATTEMPTS: usize = 5;

pub(super) enum Op {
    Append(NewMessage, oneshot::Sender<Result<Appended>>),
    Cursor(CursorMove, oneshot::Sender<Result<()>>),
    LastSeen { user_id: String, at: i64 },
    Shutdown(oneshot::Sender<()>),
}

enum Outcome {
    Append(Result<Appended>),
    Cursor(Result<()>),
    None,
}

enum Failure {
    /// A statement failed; nothing of the batch was committed.
    Sql(sqlx::Error),
    /// COMMIT failed: it may or may not have happened.
    Commit(sqlx::Error),
    /// Stored data the store cannot read (a bug).
    Data(Error),
    /// No connection to PostgreSQL.
    Connect(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

/// Runs the writer on a thread of its own, with a single-threaded runtime that owns its
/// connection: a batch's next statement goes out as soon as PostgreSQL answers the last one,
/// instead of waiting for a worker of a runtime busy with hundreds of sessions (3–7 ms per
/// statement on a loaded 2-core box). Callers still queue and wait asynchronously.
pub(super) fn start(writer: Writer, rx: mpsc::Receiver<Op>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot build the writer's runtime: {e}")))?;
    std::thread::Builder::new()
        .name("chatd-pg-writer".into())
        .spawn(move || runtime.block_on(writer.run(rx)))
        .map_err(|e| Error::internal(format!("cannot start the writer thread: {e}")))?;
    Ok(())
}

pub(super) struct Writer {
    options: PgConnectOptions,
    emitter: Arc<Emitter>,
    /// The writer's own connection (never waits for the pool); reopened after a failure.
    conn: Option<PgConnection>,
}

impl Writer {
    pub(super) fn new(options: PgConnectOptions, emitter: Arc<Emitter>) -> Self {
        Writer {
            options,
            emitter,
            conn: None,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(op) = rx.recv().await {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut shutdown = None;
            let ops: Vec<Op> = batch
                .drain(..)
                .filter_map(|op| match op {
                    Op::Shutdown(done) => {
                        shutdown = Some(done);
                        None
                    }
                    op => Some(op),
                })
                .collect();
            if !ops.is_empty() {
                if let Err(err) = self.commit(ops).await {
                    // PostgreSQL is away: what waits in the queue would only wait for the same
                    // answer, one connect timeout per batch. Answer it now.
                    while let Ok(op) = rx.try_recv() {
                        match op {
                            Op::Shutdown(done) => shutdown = Some(done),
                            op => fail(op, &err),
                        }
                    }
                }
            }
            if let Some(done) = shutdown {
                rx.close();
                while let Ok(op) = rx.try_recv() {
                    fail(op, &super::stopped());
                }
                let _ = done.send(());
                if let Some(conn) = self.conn.take() {
                    let _ = conn.close().await;
                }
                return;
            }
        }
    }

    /// Commits one batch and answers its writes. Returns the error when the connection to
    /// PostgreSQL was lost.
    async fn commit(&mut self, ops: Vec<Op>) -> std::result::Result<(), Error> {
        crate::metrics::METRICS
            .commit_batch
            .observe(ops.len() as f64);
        let emitter = self.emitter.clone();
        let mut attempt = 1;
        let mut reconnected = false;
        let failure = loop {
            let conn = match self.connection().await {
                Ok(conn) => conn,
                Err(e) => break Failure::Connect(e),
            };
            match tokio::time::timeout(BATCH_TIMEOUT, run_batch(conn, &emitter, &ops)).await {
                Ok(Ok(outcomes)) => {
                    for (op, outcome) in ops.into_iter().zip(outcomes) {
                        answer(op, outcome);
                    }
                    return Ok(());
                }
                Ok(Err(Failure::Sql(e))) if attempt < ATTEMPTS && is_conflict(&e) => {
                    tracing::debug!(error = %e, attempt, "append batch conflicted; running it again");
                    attempt += 1;
                    self.reset().await;
                }
                // Nothing of an uncommitted transaction outlives its connection, so a batch
                // that lost its connection (PostgreSQL restarted, an idle connection was
                // closed) may run once more on a new one.
                Ok(Err(Failure::Sql(e))) if !reconnected && is_connection_lost(&e) => {
                    tracing::info!(error = %e, "the writer lost its connection; reconnecting");
                    self.conn = None;
                    reconnected = true;
                }
                Ok(Err(failure)) => break failure,
                Err(_) => {
                    self.conn = None;
                    break Failure::Sql(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} s", BATCH_TIMEOUT.as_secs()),
                    )));
                }
            }
        };
        let (err, lost) = match failure {
            Failure::Sql(e) => {
                tracing::warn!(error = %e, writes = ops.len(), "append batch failed");
                let lost = is_connection_lost(&e);
                (
                    Error::Unavailable("the store could not commit".into()),
                    lost,
                )
            }
            Failure::Commit(e) => (commit_failed(e), true),
            Failure::Connect(e) => {
                tracing::warn!(error = %e, "the writer cannot connect to PostgreSQL");
                (Error::Unavailable("the store is unavailable".into()), true)
            }
            Failure::Data(e) => {
                tracing::error!(error = %e, "append batch");
                (e, false)
            }
        };
        if lost {
            // The connection may be mid-statement or gone: start over with a new one.
            self.conn = None;
        } else {
            self.reset().await;
        }
        for op in ops {
            fail(op, &err);
        }
        if lost {
            Err(err)
        } else {
            Ok(())
        }
    }

    /// The writer's connection, inside an open transaction that has done nothing yet (see
    /// [`run_batch`]).
    async fn connection(&mut self) -> std::result::Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            let connect = async {
                let mut conn = PgConnection::connect_with(&self.options).await?;
                sqlx::raw_sql(SESSION_SETUP).execute(&mut conn).await?;
                Ok::<_, sqlx::Error>(conn)
            };
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connecting took too long",
                    ))
                })??;
            self.conn = Some(conn);
        }
        // Just set when it was empty.
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// After a failed batch: drops what its transaction did and opens the next one, or gives
    /// up the connection.
    async fn reset(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let reset = sqlx::raw_sql("ROLLBACK; BEGIN").execute(conn);
        if !matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, reset).await,
            Ok(Ok(_))
        ) {
            self.conn = None;
        }
    }
}

impl Emitter {
    /// Runs a batch's last round trip, `statement` (ending in `COMMIT; BEGIN`), and queues the
    /// batch's events once it committed. An error before the first statement answered means
    /// nothing was committed; one after it, or a lost connection, that the commit may or may
    /// not have happened.
    async fn commit_last(
        &self,
        conn: &mut PgConnection,
        statement: &str,
        events: Vec<Event>,
    ) -> std::result::Result<(), Failure> {
        use futures_util::TryStreamExt;
        let mut commit_id = self.commit_id.lock().await;
        let mut answered = 0;
        let mut results = sqlx::raw_sql(statement).fetch_many(&mut *conn);
        loop {
            match results.try_next().await {
                Ok(Some(sqlx::Either::Left(_))) => answered += 1,
                Ok(Some(sqlx::Either::Right(_))) => {}
                Ok(None) => break,
                Err(e @ sqlx::Error::Database(_)) if answered == 0 => return Err(Failure::Sql(e)),
                Err(e) => return Err(Failure::Commit(e)),
            }
        }
        drop(results);
        self.emit(&mut commit_id, events).await;
        Ok(())
    }
}

/// Another transaction got in the way; running the batch again will see it committed.
fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| matches!(&*c, "23505" | "40001" | "40P01")),
        _ => false,
    }
}

fn answer(op: Op, outcome: Outcome) {
    match (op, outcome) {
        (Op::Append(_, reply), Outcome::Append(r)) => {
            let _ = reply.send(r);
        }
        (Op::Cursor(_, reply), Outcome::Cursor(r)) => {
            let _ = reply.send(r);
        }
        (Op::LastSeen { .. }, Outcome::None) => {}
        (op, _) => fail(op, &Error::internal("writer outcome out of step")),
    }
}

fn fail(op: Op, err: &Error) {
    match op {
        Op::Append(_, reply) => {
            let _ = reply.send(Err(err.clone()));
        }
        Op::Cursor(_, reply) => {
            let _ = reply.send(Err(err.clone()));
        }
        Op::LastSeen { user_id, .. } => {
            tracing::warn!(user_id, error = %err, "cannot record last seen");
        }
        Op::Shutdown(done) => {
            let _ = done.send(());
        }
    }
}

type Pair = (String, String);

/// What the checks of a batch need, read once its locks are held.
#[derive(Default)]
struct State {
    /// Last seq of every chat the batch touches that exists; moves as appends are decided.
    last_seq: HashMap<String, i64>,
    /// (chat, user) pairs that are members.
    members: HashSet<Pair>,
    /// Messages already stored, by (sender, client_msg_id).
    existing: HashMap<Pair, Arc<Message>>,
    /// Cursors by (user, device, chat): delivered seq and time, read seq and time.
    cursors: HashMap<(String, String, String), [i64; 4]>,
    /// Read positions (seq, time) of the members whose cursors move, by (chat, user).
    reads: HashMap<Pair, (i64, i64)>,
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

async fn run_batch(
    conn: &mut PgConnection,
    emitter: &Emitter,
    ops: &[Op],
) -> std::result::Result<Vec<Outcome>, Failure> {
    let mut append_chats = Vec::new();
    let mut cursor_members = Vec::new();
    let mut pairs = Vec::new();
    let mut keys = Vec::new();
    let mut cursor_keys = Vec::new();
    let mut last_seen: BTreeMap<&str, i64> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Append(m, _) => {
                append_chats.push(m.chat_id.as_str());
                pairs.push((m.chat_id.as_str(), m.sender_user_id.as_str()));
                keys.push((m.sender_user_id.as_str(), m.client_msg_id.as_str()));
            }
            Op::Cursor(c, _) => {
                cursor_members.push((c.chat_id.as_str(), c.user_id.as_str()));
                pairs.push((c.chat_id.as_str(), c.user_id.as_str()));
                cursor_keys.push((c.user_id.as_str(), c.device_id.as_str(), c.chat_id.as_str()));
            }
            Op::LastSeen { user_id, at } => {
                let e = last_seen.entry(user_id).or_insert(*at);
                *e = (*e).max(*at);
            }
            Op::Shutdown(_) => {}
        }
    }
    let append_chats = sorted(append_chats);
    let cursor_members = sorted(cursor_members);
    let pairs = sorted(pairs);
    let keys = sorted(keys);
    let cursor_keys = sorted(cursor_keys);

    // One statement locks and reads (see migrations/postgres/0002_writer.sql). The transaction
    // is already open: the last commit opened it.
    let mut state = State::default();
    let (move_chats, move_users): (Vec<&str>, Vec<&str>) = cursor_members.iter().copied().unzip();
    let (pair_chats, pair_users): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    let (key_senders, key_ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let mut cursor_cols: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for (u, d, c) in &cursor_keys {
        cursor_cols.0.push(u);
        cursor_cols.1.push(d);
        cursor_cols.2.push(c);
    }
    let started = std::time::Instant::now();
    if !pairs.is_empty() {
        let rows =
            sqlx::query("SELECT * FROM chatd_writer_read($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
                .bind(&append_chats)
                .bind(&move_chats)
                .bind(&move_users)
                .bind(&pair_chats)
                .bind(&pair_users)
                .bind(&key_senders)
                .bind(&key_ids)
                .bind(&cursor_cols.0)
                .bind(&cursor_cols.1)
                .bind(&cursor_cols.2)
                .fetch_all(&mut *conn)
                .await?;
        for r in rows {
            match r.try_get::<i32, _>(0)? {
                1 => {
                    state.reads.insert(
                        (r.try_get(1)?, r.try_get(2)?),
                        (r.try_get(4)?, r.try_get(5)?),
                    );
                }
                2 => {
                    let (chat_id, user_id): (String, String) = (r.try_get(1)?, r.try_get(2)?);
                    state.last_seq.insert(chat_id.clone(), r.try_get(4)?);
                    if r.try_get::<i64, _>(5)? == 1 {
                        state.members.insert((chat_id, user_id));
                    }
                }
                3 => {
                    let m = message_at(&r, 8).map_err(Failure::Data)?;
                    state.existing.insert(
                        (m.sender_user_id.clone(), m.client_msg_id.clone()),
                        Arc::new(m),
                    );
                }
                4 => {
                    state.cursors.insert(
                        (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
                        [r.try_get(4)?, r.try_get(5)?, r.try_get(6)?, r.try_get(7)?],
                    );
                }
                kind => {
                    return Err(Failure::Data(Error::internal(format!(
                        "chatd_writer_read returned a row of kind {kind}"
                    ))))
                }
            }
        }
    }

    let read = started.elapsed();
    let mut decided = Decided::default();
    let outcomes: Vec<Outcome> = ops
        .iter()
        .map(|op| match op {
            Op::Append(m, _) => Outcome::Append(decided.append(&mut state, m)),
            Op::Cursor(c, _) => Outcome::Cursor(decided.move_cursor(&mut state, c)),
            Op::LastSeen { .. } | Op::Shutdown(_) => Outcome::None,
        })
        .collect();
    let statement = decided.statement(&state, &last_seen)?;
    let decide = started.elapsed();
    emitter
        .commit_last(conn, &statement, decided.events)
        .await?;
    tracing::debug!(
        ops = ops.len(),
        chats = append_chats.len(),
        read_us = read.as_micros() as u64,
        decide_us = (decide - read).as_micros() as u64,
        write_us = (started.elapsed() - decide).as_micros() as u64,
        "append batch committed"
    );
    Ok(outcomes)
}

/// The changes of a batch, decided write by write.
#[derive(Default)]
struct Decided {
    messages: Vec<Arc<Message>>,
    /// Appended in this batch, by (sender, client_msg_id).
    fresh: HashMap<Pair, Arc<Message>>,
    /// Chats that got messages: their last message's time.
    activity: BTreeMap<String, i64>,
    moved_cursors: BTreeSet<(String, String, String)>,
    moved_reads: BTreeSet<Pair>,
    events: Vec<Event>,
}

impl Decided {
    fn access(state: &State, chat_id: &str, user_id: &str) -> Result<i64> {
        let Some(last_seq) = state.last_seq.get(chat_id) else {
            return Err(Error::chat_not_found(chat_id));
        };
        if !state
            .members
            .contains(&(chat_id.to_string(), user_id.to_string()))
        {
            return Err(Error::not_member(chat_id));
        }
        Ok(*last_seq)
    }

    fn append(&mut self, state: &mut State, m: &NewMessage) -> Result<Appended> {
        let last_seq = Self::access(state, &m.chat_id, &m.sender_user_id)?;
        let key = (m.sender_user_id.clone(), m.client_msg_id.clone());
        if let Some(original) = state.existing.get(&key).or_else(|| self.fresh.get(&key)) {
            if original.chat_id != m.chat_id {
                return Err(Error::invalid(
                    "client_msg_id",
                    "was already used for a message in another chat",
                ));
            }
            return Ok(Appended {
                message: original.clone(),
                duplicate: true,
            });
        }
        if m.content.text.contains('\0') {
            // PostgreSQL text cannot hold it; refused here, it does not fail its neighbours.
            return Err(Error::invalid("content", "text must not contain U+0000"));
        }
        let seq = last_seq + 1;
        state.last_seq.insert(m.chat_id.clone(), seq);
        self.activity.insert(m.chat_id.clone(), m.created_at);
        let message = Arc::new(Message {
            message_id: ids::new_id(),
            chat_id: m.chat_id.clone(),
            seq: seq as u64,
            sender_user_id: m.sender_user_id.clone(),
            sender_device_id: m.sender_device_id.clone(),
            client_msg_id: m.client_msg_id.clone(),
            content: m.content.clone(),
            created_at: m.created_at,
            wire: Default::default(),
        });
        self.fresh.insert(key, message.clone());
        self.messages.push(message.clone());
        self.events.push(Event::Message(message.clone()));
        Ok(Appended {
            message,
            duplicate: false,
        })
    }

    /// As SQLite's `move_cursor`: forward only; reading implies having received.
    fn move_cursor(&mut self, state: &mut State, m: &CursorMove) -> Result<()> {
        let last_seq = Self::access(state, &m.chat_id, &m.user_id)?;
        if m.seq > last_seq as u64 {
            return Err(Error::invalid(
                "seq",
                format!("{} is beyond the chat's last seq {last_seq}", m.seq),
            ));
        }
        let key = (m.user_id.clone(), m.device_id.clone(), m.chat_id.clone());
        let [delivered, delivered_at, read, read_at] =
            state.cursors.get(&key).copied().unwrap_or([0; 4]);
        let seq = m.seq as i64;
        let moves_delivered = seq > delivered;
        let moves_read = m.kind == ReceiptKind::Read && seq > read;
        if !moves_delivered && !moves_read {
            return Ok(());
        }
        state.cursors.insert(
            key.clone(),
            [
                delivered.max(seq),
                if moves_delivered { m.at } else { delivered_at },
                if moves_read { seq } else { read },
                if moves_read { m.at } else { read_at },
            ],
        );
        self.moved_cursors.insert(key);
        let receipt = |kind| {
            Event::Receipt(Arc::new(Receipt {
                chat_id: m.chat_id.clone(),
                user_id: m.user_id.clone(),
                device_id: m.device_id.clone(),
                kind,
                seq: m.seq,
                at: m.at,
            }))
        };
        if moves_delivered {
            self.events.push(receipt(ReceiptKind::Delivered));
        }
        if moves_read {
            let member = (m.chat_id.clone(), m.user_id.clone());
            let position = state.reads.entry(member.clone()).or_insert((0, 0));
            if position.0 < seq {
                *position = (seq, m.at);
                self.moved_reads.insert(member);
            }
            self.events.push(receipt(ReceiptKind::Read));
        }
        Ok(())
    }

    /// The batch's last round trip: everything it changes and its outbox rows, as one JSON
    /// document for `chatd_writer_write` (migrations/postgres/0002_writer.sql), then
    /// `COMMIT; BEGIN`. Several statements in one message need the simple protocol, which
    /// takes no parameters: the document goes in as a dollar-quoted literal, whose tag is
    /// chosen not to occur in it, so nothing in it is ever read as SQL.
    fn statement(
        &self,
        state: &State,
        last_seen: &BTreeMap<&str, i64>,
    ) -> std::result::Result<String, Failure> {
        if self.messages.is_empty()
            && self.moved_cursors.is_empty()
            && self.moved_reads.is_empty()
            && last_seen.is_empty()
        {
            return Ok(COMMIT.to_string());
        }
        let mut doc = Document::default();
        for m in &self.messages {
            doc.messages.push(MessageRow {
                message_id: &m.message_id,
                chat_id: &m.chat_id,
                seq: m.seq as i64,
                sender_user_id: &m.sender_user_id,
                sender_device_id: &m.sender_device_id,
                client_msg_id: &m.client_msg_id,
                text: &m.content.text,
                ciphertext: (!m.content.ciphertext.is_empty()).then(|| hex(&m.content.ciphertext)),
                attributes: if m.content.attributes.is_empty() {
                    None
                } else {
                    Some(serde_json::to_string(&m.content.attributes).map_err(|e| {
                        Failure::Data(Error::internal(format!("attributes to JSON: {e}")))
                    })?)
                },
                created_at: m.created_at,
            });
        }
        for (chat_id, at) in &self.activity {
            doc.chats.push(ChatRow {
                chat_id,
                last_seq: state.last_seq.get(chat_id).copied().unwrap_or(0),
                at: *at,
            });
        }
        for key in &self.moved_cursors {
            let [d, d_at, r, r_at] = state.cursors.get(key).copied().unwrap_or([0; 4]);
            doc.cursors.push(CursorRow {
                user_id: &key.0,
                device_id: &key.1,
                chat_id: &key.2,
                delivered_seq: d,
                delivered_at: d_at,
                read_seq: r,
                read_at: r_at,
            });
        }
        for key in &self.moved_reads {
            let (seq, at) = state.reads.get(key).copied().unwrap_or((0, 0));
            doc.reads.push(ReadRow {
                chat_id: &key.0,
                user_id: &key.1,
                seq,
                at,
            });
        }
        for (user_id, at) in last_seen {
            doc.last_seen.push(SeenRow { user_id, at: *at });
        }
        for event in &self.events {
            let payload = String::from_utf8(crate::bus::wire::encode_event(event))
                .map_err(|e| Failure::Data(Error::internal(format!("event is not UTF-8: {e}"))))?;
            doc.outbox.push(OutboxRow {
                chat_id: super::event_chat(event),
                payload,
            });
        }
        let json = serde_json::to_string(&doc)
            .map_err(|e| Failure::Data(Error::internal(format!("batch to JSON: {e}"))))?;
        let mut tag = String::from("$chatd$");
        let mut n = 0u32;
        while json.contains(&tag) {
            n += 1;
            tag = format!("$chatd{n}$");
        }
        Ok(format!(
            "SELECT chatd_writer_write({tag}{json}{tag}::jsonb, '{OUTBOX_CHANNEL}'); {COMMIT}"
        ))
    }
}

/// Ends a batch's transaction and opens the next one.
const COMMIT: &str = "COMMIT; BEGIN";

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What `chatd_writer_write` takes.
#[derive(Default, serde::Serialize)]
struct Document<'a> {
    messages: Vec<MessageRow<'a>>,
    chats: Vec<ChatRow<'a>>,
    cursors: Vec<CursorRow<'a>>,
    reads: Vec<ReadRow<'a>>,
    last_seen: Vec<SeenRow<'a>>,
    outbox: Vec<OutboxRow<'a>>,
}

#[derive(serde::Serialize)]
struct MessageRow<'a> {
    message_id: &'a str,
    chat_id: &'a str,
    seq: i64,
    sender_user_id: &'a str,
    sender_device_id: &'a str,
    client_msg_id: &'a str,
    text: &'a str,
    /// Hex.
    ciphertext: Option<String>,
    attributes: Option<String>,
    created_at: i64,
}

#[derive(serde::Serialize)]
struct ChatRow<'a> {
    chat_id: &'a str,
    last_seq: i64,
    at: i64,
}

#[derive(serde::Serialize)]
struct CursorRow<'a> {
    user_id: &'a str,
    device_id: &'a str,
    chat_id: &'a str,
    delivered_seq: i64,
    delivered_at: i64,
    read_seq: i64,
    read_at: i64,
}

#[derive(serde::Serialize)]
struct ReadRow<'a> {
    chat_id: &'a str,
    user_id: &'a str,
    seq: i64,
    at: i64,
}

#[derive(serde::Serialize)]
struct SeenRow<'a> {
    user_id: &'a str,
    at: i64,
}

#[derive(serde::Serialize)]
struct OutboxRow<'a> {
    chat_id: &'a str,
    /// The event as `bus::wire::encode_event` has it (JSON), stored as its UTF-8 bytes.
    payload: String,
}
