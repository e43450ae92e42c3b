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

use super::{
    commit_failed, ids, is_connection_lost, message_at, Emitter, MESSAGE_COLUMNS, OUTBOX_CHANNEL,
};
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

    async fn connection(&mut self) -> std::result::Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            let conn =
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options))
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

    let mut tx = conn.begin().await?;
    let mut state = State::default();
    // Locks first: chats, then member rows, each in key order, as every other writer does.
    if !append_chats.is_empty() {
        sqlx::query(
            "SELECT 1 FROM chats WHERE chat_id = ANY($1) ORDER BY chat_id FOR NO KEY UPDATE",
        )
        .bind(&append_chats)
        .execute(&mut *tx)
        .await?;
    }
    if !cursor_members.is_empty() {
        let (chats, users): (Vec<&str>, Vec<&str>) = cursor_members.iter().copied().unzip();
        let rows = sqlx::query(
            "SELECT chat_id, user_id, read_seq, read_at FROM members
             WHERE (chat_id, user_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
             ORDER BY chat_id, user_id FOR NO KEY UPDATE",
        )
        .bind(&chats)
        .bind(&users)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            state.reads.insert(
                (r.try_get(0)?, r.try_get(1)?),
                (r.try_get(2)?, r.try_get(3)?),
            );
        }
    }
    if !pairs.is_empty() {
        let (chats, users): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
        let rows = sqlx::query(
            "SELECT q.chat_id, q.user_id, c.last_seq, m.user_id IS NOT NULL
             FROM unnest($1::text[], $2::text[]) AS q(chat_id, user_id)
             JOIN chats c ON c.chat_id = q.chat_id
             LEFT JOIN members m ON m.chat_id = q.chat_id AND m.user_id = q.user_id",
        )
        .bind(&chats)
        .bind(&users)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let (chat_id, user_id): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            state.last_seq.insert(chat_id.clone(), r.try_get(2)?);
            if r.try_get::<bool, _>(3)? {
                state.members.insert((chat_id, user_id));
            }
        }
    }
    if !keys.is_empty() {
        let (senders, ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE (sender_user_id, client_msg_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        ))
        .bind(&senders)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let m = message_at(&r, 0).map_err(Failure::Data)?;
            state.existing.insert(
                (m.sender_user_id.clone(), m.client_msg_id.clone()),
                Arc::new(m),
            );
        }
    }
    if !cursor_keys.is_empty() {
        let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
        for (u, d, c) in &cursor_keys {
            cols.0.push(u);
            cols.1.push(d);
            cols.2.push(c);
        }
        let rows = sqlx::query(
            "SELECT user_id, device_id, chat_id, delivered_seq, delivered_at, read_seq, read_at
             FROM device_cursors
             WHERE (user_id, device_id, chat_id) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            state.cursors.insert(
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                [r.try_get(3)?, r.try_get(4)?, r.try_get(5)?, r.try_get(6)?],
            );
        }
    }

    let mut decided = Decided::default();
    let outcomes: Vec<Outcome> = ops
        .iter()
        .map(|op| match op {
            Op::Append(m, _) => Outcome::Append(decided.append(&mut state, m)),
            Op::Cursor(c, _) => Outcome::Cursor(decided.move_cursor(&mut state, c)),
            Op::LastSeen { .. } | Op::Shutdown(_) => Outcome::None,
        })
        .collect();
    decided.write(&mut tx, &state, &last_seen).await?;
    emitter
        .commit(tx, decided.events)
        .await
        .map_err(Failure::Commit)?;
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

    /// Everything the batch changes, and its outbox rows, in one statement.
    async fn write(
        &self,
        conn: &mut PgConnection,
        state: &State,
        last_seen: &BTreeMap<&str, i64>,
    ) -> std::result::Result<(), Failure> {
        if self.messages.is_empty()
            && self.moved_cursors.is_empty()
            && self.moved_reads.is_empty()
            && last_seen.is_empty()
        {
            return Ok(());
        }
        let mut msg = MessageColumns::default();
        for m in &self.messages {
            msg.ids.push(&m.message_id);
            msg.chats.push(&m.chat_id);
            msg.seqs.push(m.seq as i64);
            msg.senders.push(&m.sender_user_id);
            msg.devices.push(&m.sender_device_id);
            msg.client_ids.push(&m.client_msg_id);
            msg.texts.push(&m.content.text);
            msg.ciphertexts.push(
                (!m.content.ciphertext.is_empty()).then_some(m.content.ciphertext.as_slice()),
            );
            msg.attributes.push(if m.content.attributes.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&m.content.attributes).map_err(|e| {
                    Failure::Data(Error::internal(format!("attributes to JSON: {e}")))
                })?)
            });
            msg.created.push(m.created_at);
        }
        let mut chats: (Vec<&str>, Vec<i64>, Vec<i64>) = Default::default();
        for (chat_id, at) in &self.activity {
            chats.0.push(chat_id);
            chats
                .1
                .push(state.last_seq.get(chat_id).copied().unwrap_or(0));
            chats.2.push(*at);
        }
        let mut cur = CursorColumns::default();
        for key in &self.moved_cursors {
            let [d, d_at, r, r_at] = state.cursors.get(key).copied().unwrap_or([0; 4]);
            cur.users.push(&key.0);
            cur.devices.push(&key.1);
            cur.chats.push(&key.2);
            cur.delivered.push(d);
            cur.delivered_at.push(d_at);
            cur.read.push(r);
            cur.read_at.push(r_at);
        }
        let mut reads: (Vec<&str>, Vec<&str>, Vec<i64>, Vec<i64>) = Default::default();
        for key in &self.moved_reads {
            let (seq, at) = state.reads.get(key).copied().unwrap_or((0, 0));
            reads.0.push(&key.0);
            reads.1.push(&key.1);
            reads.2.push(seq);
            reads.3.push(at);
        }
        let seen_users: Vec<&str> = last_seen.keys().copied().collect();
        let seen_at: Vec<i64> = last_seen.values().copied().collect();
        let outbox_chats: Vec<&str> = self.events.iter().map(super::event_chat).collect();
        let payloads: Vec<Vec<u8>> = self
            .events
            .iter()
            .map(crate::bus::wire::encode_event)
            .collect();
        sqlx::query(
            "WITH
             msg AS (
                 INSERT INTO messages (message_id, chat_id, seq, sender_user_id, sender_device_id,
                                       client_msg_id, text, ciphertext, attributes, created_at)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                                      $6::text[], $7::text[], $8::bytea[], $9::text[], $10::bigint[])),
             ch AS (
                 UPDATE chats c SET last_seq = u.last_seq, last_activity_at = u.at
                 FROM unnest($11::text[], $12::bigint[], $13::bigint[]) AS u(chat_id, last_seq, at)
                 WHERE c.chat_id = u.chat_id),
             cur AS (
                 INSERT INTO device_cursors (user_id, device_id, chat_id, delivered_seq, delivered_at,
                                             read_seq, read_at)
                 SELECT * FROM unnest($14::text[], $15::text[], $16::text[], $17::bigint[],
                                      $18::bigint[], $19::bigint[], $20::bigint[])
                 ON CONFLICT (user_id, device_id, chat_id) DO UPDATE SET
                     delivered_seq = GREATEST(device_cursors.delivered_seq, excluded.delivered_seq),
                     delivered_at = CASE WHEN excluded.delivered_seq > device_cursors.delivered_seq
                         THEN excluded.delivered_at ELSE device_cursors.delivered_at END,
                     read_seq = GREATEST(device_cursors.read_seq, excluded.read_seq),
                     read_at = CASE WHEN excluded.read_seq > device_cursors.read_seq
                         THEN excluded.read_at ELSE device_cursors.read_at END),
             rd AS (
                 UPDATE members m SET read_seq = u.seq, read_at = u.at
                 FROM unnest($21::text[], $22::text[], $23::bigint[], $24::bigint[])
                     AS u(chat_id, user_id, seq, at)
                 WHERE m.chat_id = u.chat_id AND m.user_id = u.user_id AND m.read_seq < u.seq),
             ls AS (
                 INSERT INTO last_seen (user_id, at) SELECT * FROM unnest($25::text[], $26::bigint[])
                 ON CONFLICT (user_id) DO UPDATE SET at = GREATEST(last_seen.at, excluded.at)),
             ob AS (
                 INSERT INTO outbox (chat_id, payload)
                 SELECT * FROM unnest($27::text[], $28::bytea[]))
             SELECT pg_notify($29, '') WHERE $30::bool",
        )
        .bind(&msg.ids)
        .bind(&msg.chats)
        .bind(&msg.seqs)
        .bind(&msg.senders)
        .bind(&msg.devices)
        .bind(&msg.client_ids)
        .bind(&msg.texts)
        .bind(&msg.ciphertexts)
        .bind(&msg.attributes)
        .bind(&msg.created)
        .bind(&chats.0)
        .bind(&chats.1)
        .bind(&chats.2)
        .bind(&cur.users)
        .bind(&cur.devices)
        .bind(&cur.chats)
        .bind(&cur.delivered)
        .bind(&cur.delivered_at)
        .bind(&cur.read)
        .bind(&cur.read_at)
        .bind(&reads.0)
        .bind(&reads.1)
        .bind(&reads.2)
        .bind(&reads.3)
        .bind(&seen_users)
        .bind(&seen_at)
        .bind(&outbox_chats)
        .bind(&payloads)
        .bind(OUTBOX_CHANNEL)
        .bind(!payloads.is_empty())
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// New messages as column arrays, for `unnest`.
#[derive(Default)]
struct MessageColumns<'a> {
    ids: Vec<&'a str>,
    chats: Vec<&'a str>,
    seqs: Vec<i64>,
    senders: Vec<&'a str>,
    devices: Vec<&'a str>,
    client_ids: Vec<&'a str>,
    texts: Vec<&'a str>,
    ciphertexts: Vec<Option<&'a [u8]>>,
    attributes: Vec<Option<String>>,
    created: Vec<i64>,
}

/// Moved cursors as column arrays, for `unnest`.
#[derive(Default)]
struct CursorColumns<'a> {
    users: Vec<&'a str>,
    devices: Vec<&'a str>,
    chats: Vec<&'a str>,
    delivered: Vec<i64>,
    delivered_at: Vec<i64>,
    read: Vec<i64>,
    read_at: Vec<i64>,
}
