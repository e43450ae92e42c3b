//! The writer task: appends, cursor moves and last-seen updates of this node, in submission
//! order, folded into one transaction per batch (group commit).
//!
//! A batch costs two round trips whatever its size, and holds its locks only inside the
//! second. The first reads, without locks, what the checks need (last seqs, memberships,
//! idempotency keys, cursors). The writer then decides each write in order in memory, exactly
//! as the SQLite writer does one after the other. The second is one statement,
//! `chatd_writer_apply` (migrations/postgres/0003_writer_apply.sql), that commits on its own:
//! it locks the chats the batch appends to and the member rows whose cursors move (in key
//! order, as every other writer, so two nodes' batches never deadlock), checks that the
//! memberships and cursors the decisions rest on did not change meanwhile (else the batch runs
//! again), numbers the messages from each chat's last seq as the lock found it (another node
//! may have appended since the read: the answers are renumbered alike), and writes messages,
//! seqs, cursors, outbox rows and the relay's wake-up. No client round trip happens while a
//! lock is held, so two nodes appending to the same chats wait for each other only as long as
//! PostgreSQL takes to write a batch. A refused write (not a member, no such chat) is an
//! answer, not a failure: its neighbours commit.

use super::{commit_failed, ids, is_connection_lost, message_at, Emitter, OUTBOX_CHANNEL};
use crate::domain::cursors::{self, Cursor};
use crate::domain::idempotency;
use crate::domain::model::{Event, Message};
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
/// Run on each new connection of the writer: its statements take arrays of keys and are the
/// same every time; a generic plan saves planning them again for each batch. Every one of them
/// looks rows up by key, so the plan must be index lookups per key: a generic plan guesses ten
/// keys per array, and against the small, much-updated `chats` and `members` tables of a young
/// cluster the planner would rather hash-join a full scan of them (measured: the writer's read
/// at 3.3 ms instead of 0.2, half of PostgreSQL's CPU under load).
const SESSION_SETUP: &str = "SET plan_cache_mode = force_generic_plan; \
    SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";
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
                }
                // A batch that lost its connection before its last statement (PostgreSQL
                // restarted, an idle connection was closed) wrote nothing: it may run once
                // more on a new one.
                Ok(Err(Failure::Sql(e))) if !reconnected && is_connection_lost(&e) => {
                    tracing::info!(error = %e, "the writer lost its connection; reconnecting");
                    self.conn = None;
                    reconnected = true;
                }
                Ok(Err(failure)) => break failure,
                Err(_) => {
                    self.conn = None;
                    break Failure::Commit(sqlx::Error::Io(std::io::Error::new(
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

    /// The writer's connection, opened when there is none.
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

/// What the checks of a batch need, as read, then as the batch's decisions move it.
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

/// What the first round trip read, before the decisions moved it.
struct Before {
    last_seq: HashMap<String, i64>,
    cursors: HashMap<(String, String, String), [i64; 4]>,
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
    let mut pairs = Vec::new();
    let mut keys = Vec::new();
    let mut cursor_keys = Vec::new();
    let mut last_seen: BTreeMap<&str, i64> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Append(m, _) => {
                pairs.push((m.chat_id.as_str(), m.sender_user_id.as_str()));
                keys.push((m.sender_user_id.as_str(), m.client_msg_id.as_str()));
            }
            Op::Cursor(c, _) => {
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
    let pairs = sorted(pairs);
    let keys = sorted(keys);
    let cursor_keys = sorted(cursor_keys);

    // The first round trip reads, without locks, what the checks need.
    let mut state = State::default();
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
        let rows = sqlx::query(READ)
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
                    let (chat_id, user_id): (String, String) = (r.try_get(1)?, r.try_get(2)?);
                    state.last_seq.insert(chat_id.clone(), r.try_get(4)?);
                    if let (Some(seq), Some(at)) = (r.try_get(5)?, r.try_get(6)?) {
                        state
                            .reads
                            .insert((chat_id.clone(), user_id.clone()), (seq, at));
                        state.members.insert((chat_id, user_id));
                    }
                }
                2 => {
                    let m = message_at(&r, 8).map_err(Failure::Data)?;
                    state.existing.insert(
                        (m.sender_user_id.clone(), m.client_msg_id.clone()),
                        Arc::new(m),
                    );
                }
                3 => {
                    state.cursors.insert(
                        (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
                        [r.try_get(4)?, r.try_get(5)?, r.try_get(6)?, r.try_get(7)?],
                    );
                }
                kind => {
                    return Err(Failure::Data(Error::internal(format!(
                        "the writer's read returned a row of kind {kind}"
                    ))))
                }
            }
        }
    }
    let read = started.elapsed();

    let before = Before {
        last_seq: state.last_seq.clone(),
        cursors: state.cursors.clone(),
    };
    let mut decided = Decided::default();
    let mut outcomes: Vec<Outcome> = ops
        .iter()
        .map(|op| match op {
            Op::Append(m, _) => Outcome::Append(decided.append(&mut state, m)),
            Op::Cursor(c, _) => Outcome::Cursor(decided.move_cursor(&mut state, c)),
            Op::LastSeen { .. } | Op::Shutdown(_) => Outcome::None,
        })
        .collect();
    if decided.messages.is_empty()
        && decided.moved_cursors.is_empty()
        && decided.moved_reads.is_empty()
        && last_seen.is_empty()
    {
        // Refusals and duplicates only: nothing to write.
        return Ok(outcomes);
    }
    let decide = started.elapsed();

    // The second round trip locks, checks that nothing the decisions rest on changed, writes
    // and commits, in one statement (migrations/postgres/0003_writer_apply.sql). The commit
    // lock orders this node's commits, and so its local events.
    let mut commit_id = emitter.commit_id.lock().await;
    let firsts = decided.apply(conn, &before, &state, &last_seen).await?;
    // Another node appended to some chats since the read: the batch's messages there come
    // after, numbered from the chat's last seq as the locks found it.
    let mut renumbered: HashMap<&str, Arc<Message>> = HashMap::new();
    for m in &decided.messages {
        let read_last = before.last_seq.get(&m.chat_id).copied().unwrap_or(0);
        let shift = firsts
            .get(&m.chat_id)
            .map_or(0, |first| first - 1 - read_last);
        if shift != 0 {
            let mut moved = Message::clone(m);
            moved.seq = (m.seq as i64 + shift) as u64;
            moved.wire = Default::default();
            renumbered.insert(&m.message_id, Arc::new(moved));
        }
    }
    let mut events = std::mem::take(&mut decided.events);
    if !renumbered.is_empty() {
        for outcome in &mut outcomes {
            if let Outcome::Append(Ok(appended)) = outcome {
                if let Some(m) = renumbered.get(appended.message.message_id.as_str()) {
                    appended.message = m.clone();
                }
            }
        }
        for event in &mut events {
            if let Event::Message(message) = event {
                if let Some(m) = renumbered.get(message.message_id.as_str()) {
                    *message = m.clone();
                }
            }
        }
    }
    emitter.emit(&mut commit_id, events).await;
    drop(commit_id);
    tracing::debug!(
        ops = ops.len(),
        chats = firsts.len(),
        renumbered = renumbered.len(),
        read_us = read.as_micros() as u64,
        decide_us = (decide - read).as_micros() as u64,
        write_us = (started.elapsed() - decide).as_micros() as u64,
        "append batch committed"
    );
    Ok(outcomes)
}

/// The first round trip: for each (chat, user) of the batch the chat's last seq and, when the
/// user is a member, their read position (kind 1); messages with the batch's idempotency keys
/// (kind 2, message columns from 8); the cursors it moves (kind 3).
const READ: &str = "
    SELECT 1, q.chat_id, q.user_id, NULL::TEXT, ch.last_seq, m.read_seq, m.read_at, NULL::BIGINT,
           NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT,
           NULL::BYTEA, NULL::TEXT, NULL::BIGINT
    FROM unnest($1::TEXT[], $2::TEXT[]) AS q(chat_id, user_id)
    JOIN chats ch ON ch.chat_id = q.chat_id
    LEFT JOIN members m ON m.chat_id = q.chat_id AND m.user_id = q.user_id
    UNION ALL
    SELECT 2, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           x.message_id, x.chat_id, x.seq, x.sender_user_id, x.sender_device_id, x.client_msg_id,
           x.text, x.ciphertext, x.attributes, x.created_at
    FROM messages x
    WHERE (x.sender_user_id, x.client_msg_id) IN (SELECT * FROM unnest($3::TEXT[], $4::TEXT[]))
    UNION ALL
    SELECT 3, d.user_id, d.device_id, d.chat_id, d.delivered_seq, d.delivered_at, d.read_seq,
           d.read_at, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM device_cursors d
    WHERE (d.user_id, d.device_id, d.chat_id)
        IN (SELECT * FROM unnest($5::TEXT[], $6::TEXT[], $7::TEXT[]))";

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
            return idempotency::repeated(original.clone(), &m.chat_id);
        }
        if m.content.text.contains('\0') {
            // The domain refuses it first; this is what PostgreSQL text cannot hold, refused
            // here so that a gap in that check costs this write only, not its whole batch.
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

    /// The cursor rule is `domain::cursors::advance`, as in SQLite's `move_cursor`.
    fn move_cursor(&mut self, state: &mut State, m: &CursorMove) -> Result<()> {
        let last_seq = Self::access(state, &m.chat_id, &m.user_id)?;
        let key = (m.user_id.clone(), m.device_id.clone(), m.chat_id.clone());
        let [delivered, delivered_at, read, read_at] =
            state.cursors.get(&key).copied().unwrap_or([0; 4]);
        let cursor = Cursor {
            delivered_seq: delivered as u64,
            delivered_at,
            read_seq: read as u64,
            read_at,
        };
        let Some(moved) = cursors::advance(cursor, m, last_seq as u64)? else {
            return Ok(());
        };
        let c = moved.cursor;
        state.cursors.insert(
            key.clone(),
            [
                c.delivered_seq as i64,
                c.delivered_at,
                c.read_seq as i64,
                c.read_at,
            ],
        );
        self.moved_cursors.insert(key);
        if moved.read {
            let member = (m.chat_id.clone(), m.user_id.clone());
            let position = state.reads.entry(member.clone()).or_insert((0, 0));
            if position.0 < c.read_seq as i64 {
                *position = (c.read_seq as i64, c.read_at);
                self.moved_reads.insert(member);
            }
        }
        self.events
            .extend(moved.receipts(m).into_iter().map(Event::Receipt));
        Ok(())
    }

    /// The second round trip: `chatd_writer_apply` with everything the batch changes. Returns
    /// the first seq of the batch's messages in each chat that got some.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        before: &Before,
        state: &State,
        last_seen: &BTreeMap<&str, i64>,
    ) -> std::result::Result<HashMap<String, i64>, Failure> {
        let read_last = |chat_id: &str| before.last_seq.get(chat_id).copied().unwrap_or(0);
        let lock_chats: Vec<&str> = self.activity.keys().map(String::as_str).collect();
        let mut moved_members = BTreeSet::new();
        let mut members = BTreeSet::new();
        for m in &self.messages {
            members.insert((m.chat_id.as_str(), m.sender_user_id.as_str()));
        }
        let mut cur = CursorColumns::default();
        for key in &self.moved_cursors {
            moved_members.insert((key.2.as_str(), key.0.as_str()));
            members.insert((key.2.as_str(), key.0.as_str()));
            let was = before.cursors.get(key);
            let [d, d_at, r, r_at] = was.copied().unwrap_or([0; 4]);
            let [nd, nd_at, nr, nr_at] = state.cursors.get(key).copied().unwrap_or([0; 4]);
            cur.users.push(&key.0);
            cur.devices.push(&key.1);
            cur.chats.push(&key.2);
            cur.known.push(was.is_some());
            cur.was.0.push(d);
            cur.was.1.push(d_at);
            cur.was.2.push(r);
            cur.was.3.push(r_at);
            cur.new.0.push(nd);
            cur.new.1.push(nd_at);
            cur.new.2.push(nr);
            cur.new.3.push(nr_at);
        }
        for key in &self.moved_reads {
            moved_members.insert((key.0.as_str(), key.1.as_str()));
        }
        let (move_chats, move_users): (Vec<&str>, Vec<&str>) = moved_members.into_iter().unzip();
        let (member_chats, member_users): (Vec<&str>, Vec<&str>) = members.into_iter().unzip();
        let mut msg = MessageColumns::default();
        for m in &self.messages {
            msg.ids.push(&m.message_id);
            msg.chats.push(&m.chat_id);
            msg.ordinals.push(m.seq as i64 - read_last(&m.chat_id));
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
            let last = state.last_seq.get(chat_id).copied().unwrap_or(0);
            chats.0.push(chat_id);
            chats.1.push(last - read_last(chat_id));
            chats.2.push(*at);
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
        let mut out = OutboxColumns::default();
        for event in &self.events {
            out.chats.push(super::event_chat(event));
            match event {
                Event::Message(m) => {
                    let (head, tail) = seq_template(m);
                    out.heads.push(head);
                    out.tails.push(Some(tail));
                    out.seq_chats.push(Some(m.chat_id.as_str()));
                    out.ordinals
                        .push(Some(m.seq as i64 - read_last(&m.chat_id)));
                }
                other => {
                    out.heads.push(crate::store::outbox::encode_event(other));
                    out.tails.push(None);
                    out.seq_chats.push(None);
                    out.ordinals.push(None);
                }
            }
        }
        let rows = sqlx::query(
            "SELECT * FROM chatd_writer_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28,
                 $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42)",
        )
        .bind(&lock_chats)
        .bind(&move_chats)
        .bind(&move_users)
        .bind(&member_chats)
        .bind(&member_users)
        .bind(&cur.users)
        .bind(&cur.devices)
        .bind(&cur.chats)
        .bind(&cur.known)
        .bind(&cur.was.0)
        .bind(&cur.was.1)
        .bind(&cur.was.2)
        .bind(&cur.was.3)
        .bind(&cur.new.0)
        .bind(&cur.new.1)
        .bind(&cur.new.2)
        .bind(&cur.new.3)
        .bind(&msg.ids)
        .bind(&msg.chats)
        .bind(&msg.ordinals)
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
        .bind(&reads.0)
        .bind(&reads.1)
        .bind(&reads.2)
        .bind(&reads.3)
        .bind(&seen_users)
        .bind(&seen_at)
        .bind(&out.chats)
        .bind(&out.heads)
        .bind(&out.tails)
        .bind(&out.seq_chats)
        .bind(&out.ordinals)
        .bind(OUTBOX_CHANNEL)
        .fetch_all(conn)
        .await
        .map_err(|e| match e {
            // The statement failed, and with it its transaction: nothing was written.
            e @ sqlx::Error::Database(_) => Failure::Sql(e),
            // Lost on the way: the commit may or may not have happened.
            e => Failure::Commit(e),
        })?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(Failure::Sql)
    }
}

/// A message event as `store::outbox::encode_event` has it, split around its seq: the outbox row
/// is `head || seq || tail`, the seq being numbered by `chatd_writer_apply`. Encoded with seq
/// 0 and 1, the two differ in exactly that digit.
fn seq_template(m: &Message) -> (Vec<u8>, Vec<u8>) {
    let encode = |seq: u64| {
        let mut m = m.clone();
        m.seq = seq;
        m.wire = Default::default();
        crate::store::outbox::encode_event(&Event::Message(Arc::new(m)))
    };
    let (zero, one) = (encode(0), encode(1));
    let at = zero
        .iter()
        .zip(&one)
        .position(|(a, b)| a != b)
        .unwrap_or(zero.len());
    let tail = zero.get(at + 1..).unwrap_or_default().to_vec();
    let mut head = zero;
    head.truncate(at);
    (head, tail)
}

/// New messages as column arrays, for `unnest`.
#[derive(Default)]
struct MessageColumns<'a> {
    ids: Vec<&'a str>,
    chats: Vec<&'a str>,
    /// 1, 2, ... per chat, in batch order.
    ordinals: Vec<i64>,
    senders: Vec<&'a str>,
    devices: Vec<&'a str>,
    client_ids: Vec<&'a str>,
    texts: Vec<&'a str>,
    ciphertexts: Vec<Option<&'a [u8]>>,
    attributes: Vec<Option<String>>,
    created: Vec<i64>,
}

/// Moved cursors as column arrays: what they were when read, what they become.
#[derive(Default)]
struct CursorColumns<'a> {
    users: Vec<&'a str>,
    devices: Vec<&'a str>,
    chats: Vec<&'a str>,
    known: Vec<bool>,
    was: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>),
    new: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>),
}

/// Outbox rows as column arrays.
#[derive(Default)]
struct OutboxColumns<'a> {
    chats: Vec<&'a str>,
    heads: Vec<Vec<u8>>,
    tails: Vec<Option<Vec<u8>>>,
    seq_chats: Vec<Option<&'a str>>,
    ordinals: Vec<Option<i64>>,
}
