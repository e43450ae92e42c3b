//! The embedded store: one SQLite database in the data dir, WAL mode, `synchronous=FULL` so a
//! commit is on disk before anyone hears of it.
//!
//! All writes go through one writer thread that drains its queue into a single transaction
//! (group commit): a hundred concurrent sends cost one fsync, not a hundred. Each queued write
//! runs inside its own savepoint, so one rejected write never spoils its neighbours. After the
//! commit the writer hands the batch's events to the outbox channel in commit order, then
//! answers the callers. Reads use a small pool of read-only connections, which WAL lets run
//! beside the writer.

use super::{
    Access, ActivityKey, Appended, CursorMove, Membership, NewChat, NewMessage, PendingAppend,
    ResumeChat, ResumePlan, SeqRange, Store,
};
use crate::domain::model::{
    Chat, ChatChange, ChatChangeKind, ChatKind, ChatView, Committed, Content, Event, Member,
    Message, Receipt, ReceiptKind, Role,
};
use crate::{domain::ids, Error, Result};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};
use tokio::sync::{mpsc, oneshot, Semaphore};

const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_core.sql"),
    include_str!("../../../migrations/sqlite/0002_realtime.sql"),
];
/// Most writes folded into one transaction; bounds the latency a batch adds to its last write.
const MAX_BATCH: usize = 512;
const WRITE_QUEUE: usize = 8192;
const OUTBOX_QUEUE: usize = 8192;
const READERS: usize = 4;

const MESSAGE_COLUMNS: &str =
    "message_id, chat_id, seq, sender_user_id, sender_device_id, client_msg_id, text, ciphertext, attributes, created_at";

type Reply<T> = oneshot::Sender<Result<T>>;

enum WriteOp {
    Append(NewMessage, Reply<Appended>),
    CreateChat(NewChat, Reply<(Chat, bool)>),
    AddMembers {
        chat_id: String,
        user_ids: Vec<String>,
        max_members: u32,
        now: i64,
        reply: Reply<Chat>,
    },
    RemoveMember {
        chat_id: String,
        user_id: String,
        now: i64,
        reply: Reply<Chat>,
    },
    RegisterDevice {
        user_id: String,
        device_id: String,
        now: i64,
        reply: Reply<bool>,
    },
    Cursor(CursorMove, Reply<()>),
    Purge {
        before: i64,
        limit: u32,
        reply: Reply<u64>,
    },
    LastSeen {
        user_id: String,
        at: i64,
    },
    Shutdown(oneshot::Sender<()>),
}

pub struct SqliteStore {
    writes: mpsc::Sender<WriteOp>,
    readers: Readers,
    /// Tells the checkpoint thread to finish.
    stopping: Arc<AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating and migrating) `chat.db` in `data_dir`. Returns the store and the
    /// outbox: committed events in commit order.
    pub fn open(data_dir: &Path) -> Result<(Arc<Self>, mpsc::Receiver<Committed>)> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("chat.db");
        let mut conn = Connection::open(&path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;
             PRAGMA wal_autocheckpoint=0;",
        )
        .map_err(db_err)?;
        migrate(&mut conn)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let checkpointer = Connection::open(&path).map_err(db_err)?;
        let stop = stopping.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_until(checkpointer, stop))
            .map_err(|e| Error::internal(format!("cannot start the checkpoint thread: {e}")))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open(&path).map_err(db_err)?;
            r.execute_batch("PRAGMA query_only=1; PRAGMA busy_timeout=5000;")
                .map_err(db_err)?;
            readers.push(r);
        }
        let (writes, rx) = mpsc::channel(WRITE_QUEUE);
        let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_QUEUE);
        let writer = Writer {
            conn,
            outbox: outbox_tx,
            commit_id: 0,
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::internal(format!("cannot start the writer thread: {e}")))?;
        let store = SqliteStore {
            writes,
            readers: Readers {
                idle: Mutex::new(readers),
                permits: Semaphore::new(READERS),
            },
            stopping,
        };
        Ok((Arc::new(store), outbox_rx))
    }

    /// Writes waiting for the writer thread.
    pub fn write_queue_depth(&self) -> usize {
        self.writes.max_capacity() - self.writes.capacity()
    }

    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(op(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Copies the WAL back into the database beside the writer, so that the writer's commits never
/// pay for it (SQLite would otherwise checkpoint inside a commit every 1000 pages). PASSIVE
/// never waits for the writer; a last TRUNCATE at shutdown leaves a small WAL behind.
fn checkpoint_until(conn: Connection, stopping: Arc<AtomicBool>) {
    while !stopping.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "wal checkpoint");
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn stopped() -> Error {
    Error::Unavailable("the store is shutting down".into())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version > MIGRATIONS.len() {
        return Err(Error::internal(format!(
            "database schema version {version} is newer than this chatd ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
    }
    Ok(())
}

/// SQLite errors: a full disk, I/O or lock trouble means "try again later"; anything else is a
/// bug worth an internal error. The detail goes to the log, not to the client.
fn db_err(e: rusqlite::Error) -> Error {
    let unavailable = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
        )
    );
    tracing::error!(error = %e, "sqlite");
    if unavailable {
        Error::Unavailable("the store is unavailable".into())
    } else {
        Error::internal(e)
    }
}

// ---------------------------------------------------------------------------------------------
// The writer thread

struct Writer {
    conn: Connection,
    outbox: mpsc::Sender<Committed>,
    commit_id: u64,
}

/// A write's answer, held until its batch commits (or fails as a whole).
type Pending = Box<dyn FnOnce(Option<&Error>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Pending {
    Box::new(move |batch_failed| {
        let _ = reply.send(match batch_failed {
            Some(e) => Err(e.clone()),
            None => result,
        });
    })
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(op) = rx.blocking_recv() {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let shutdown = self.commit_batch(&mut batch);
            if let Some(done) = shutdown {
                let _ = done.send(());
                return;
            }
        }
    }

    /// Runs one batch in one transaction. Returns the shutdown signal if the batch held one.
    fn commit_batch(&mut self, batch: &mut Vec<WriteOp>) -> Option<oneshot::Sender<()>> {
        crate::metrics::METRICS
            .commit_batch
            .observe(batch.len() as f64);
        let mut answers: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut events: Vec<Event> = Vec::new();
        let mut shutdown = None;
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let err = db_err(e);
                for op in batch.drain(..) {
                    fail(op, &err);
                }
                return None;
            }
        };
        let mut broken = None;
        for op in batch.drain(..) {
            let mark = events.len();
            let (answer, ok) = apply(&tx, op, &mut events, &mut shutdown, &mut broken);
            if !ok {
                events.truncate(mark);
            }
            if let Some(answer) = answer {
                answers.push(answer);
            }
        }
        if let Some(err) = broken {
            // A write failed midway: nothing of this batch may stay, and nobody gets an ack.
            let _ = tx.rollback();
            let err = Error::Unavailable(format!("the store could not commit: {err}"));
            for answer in answers {
                answer(Some(&err));
            }
            return shutdown;
        }
        self.commit_id += 1;
        match tx.commit() {
            Ok(()) => {
                for event in events {
                    if self
                        .outbox
                        .blocking_send(Committed {
                            commit_id: self.commit_id,
                            event,
                        })
                        .is_err()
                    {
                        break; // no fan-out running (shutting down); the store still holds it all
                    }
                }
                for answer in answers {
                    answer(None);
                }
            }
            Err(e) => {
                let err = db_err(e);
                for answer in answers {
                    answer(Some(&err));
                }
            }
        }
        shutdown
    }
}

fn fail(op: WriteOp, err: &Error) {
    fn reject<T>(reply: Reply<T>, err: &Error) {
        let _ = reply.send(Err(err.clone()));
    }
    match op {
        WriteOp::Append(_, r) => reject(r, err),
        WriteOp::CreateChat(_, r) => reject(r, err),
        WriteOp::AddMembers { reply, .. } | WriteOp::RemoveMember { reply, .. } => {
            reject(reply, err)
        }
        WriteOp::RegisterDevice { reply, .. } => reject(reply, err),
        WriteOp::Cursor(_, reply) => reject(reply, err),
        WriteOp::Purge { reply, .. } => reject(reply, err),
        WriteOp::LastSeen { .. } => {}
        WriteOp::Shutdown(done) => {
            let _ = done.send(());
        }
    }
}

/// Applies one write inside its own savepoint. Returns its pending answer and whether it
/// changed anything (its events are dropped if not).
fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: WriteOp,
    events: &mut Vec<Event>,
    shutdown: &mut Option<oneshot::Sender<()>>,
    broken: &mut Option<Error>,
) -> (Option<Pending>, bool) {
    // No savepoint per write (they cost a sub-journal of every page touched): each write makes
    // all its checks before its first change, so a refusal has changed nothing, and any other
    // failure marks the whole batch broken, to be rolled back.
    macro_rules! run {
        ($reply:expr, $body:expr) => {{
            let result = ($body)(&**tx);
            if let Err(e @ (Error::Internal(_) | Error::Unavailable(_))) = &result {
                broken.get_or_insert_with(|| e.clone());
            }
            let ok = result.is_ok();
            (Some(pending($reply, result)), ok)
        }};
    }
    match op {
        WriteOp::Append(m, reply) => run!(reply, |c| append(c, m, events)),
        WriteOp::CreateChat(chat, reply) => run!(reply, |c| create_chat(c, chat, events)),
        WriteOp::AddMembers {
            chat_id,
            user_ids,
            max_members,
            now,
            reply,
        } => {
            run!(reply, |c| add_members(
                c,
                &chat_id,
                user_ids,
                max_members,
                now,
                events
            ))
        }
        WriteOp::RemoveMember {
            chat_id,
            user_id,
            now,
            reply,
        } => {
            run!(reply, |c| remove_member(c, &chat_id, &user_id, now, events))
        }
        WriteOp::RegisterDevice {
            user_id,
            device_id,
            now,
            reply,
        } => {
            run!(reply, |c| register_device(c, &user_id, &device_id, now))
        }
        WriteOp::Cursor(m, reply) => run!(reply, |c| move_cursor(c, m, events)),
        WriteOp::Purge {
            before,
            limit,
            reply,
        } => run!(reply, |c| purge(c, before, limit)),
        WriteOp::LastSeen { user_id, at } => {
            let result = set_last_seen(tx, &user_id, at);
            if let Err(e) = &result {
                tracing::warn!(user_id, error = %e, "cannot record last seen");
                broken.get_or_insert_with(|| e.clone());
            }
            (None, result.is_ok())
        }
        WriteOp::Shutdown(done) => {
            *shutdown = Some(done);
            (None, true)
        }
    }
}

fn append(c: &Connection, m: NewMessage, events: &mut Vec<Event>) -> Result<Appended> {
    let last_seq = membership(c, &m.chat_id, &m.sender_user_id)?
        .require(&m.chat_id)?
        .last_seq;
    let existing = c
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_user_id = ?1 AND client_msg_id = ?2"
        ))
        .map_err(db_err)?
        .query_row(params![m.sender_user_id, m.client_msg_id], message_from_row)
        .optional()
        .map_err(db_err)?;
    if let Some(original) = existing {
        if original.chat_id != m.chat_id {
            return Err(Error::invalid(
                "client_msg_id",
                "was already used for a message in another chat",
            ));
        }
        return Ok(Appended {
            message: Arc::new(original),
            duplicate: true,
        });
    }
    let seq = last_seq + 1;
    c.prepare_cached("UPDATE chats SET last_seq = ?1, last_activity_at = ?2 WHERE chat_id = ?3")
        .map_err(db_err)?
        .execute(params![seq as i64, m.created_at, m.chat_id])
        .map_err(db_err)?;
    let message = Message {
        message_id: ids::new_id(),
        chat_id: m.chat_id,
        seq,
        sender_user_id: m.sender_user_id,
        sender_device_id: m.sender_device_id,
        client_msg_id: m.client_msg_id,
        content: m.content,
        created_at: m.created_at,
        wire: Default::default(),
    };
    let attributes = if message.content.attributes.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&message.content.attributes).map_err(Error::internal)?)
    };
    let ciphertext =
        (!message.content.ciphertext.is_empty()).then_some(&message.content.ciphertext);
    c.prepare_cached(&format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))
    .map_err(db_err)?
    .execute(params![
        message.message_id,
        message.chat_id,
        seq as i64,
        message.sender_user_id,
        message.sender_device_id,
        message.client_msg_id,
        message.content.text,
        ciphertext,
        attributes,
        message.created_at,
    ])
    .map_err(db_err)?;
    let message = Arc::new(message);
    events.push(Event::Message(message.clone()));
    Ok(Appended {
        message,
        duplicate: false,
    })
}

fn create_chat(c: &Connection, chat: NewChat, events: &mut Vec<Event>) -> Result<(Chat, bool)> {
    if let Some(key) = &chat.direct_key {
        let existing: Option<String> = c
            .prepare_cached("SELECT chat_id FROM chats WHERE direct_key = ?1")
            .map_err(db_err)?
            .query_row([key], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        if let Some(id) = existing {
            let chat = load_chat(c, &id)?.ok_or_else(|| Error::internal("direct chat vanished"))?;
            return Ok((chat, false));
        }
    }
    let chat_id = ids::new_id();
    c.prepare_cached(
        "INSERT INTO chats (chat_id, kind, title, direct_key, last_seq, created_at, last_activity_at) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
    )
    .map_err(db_err)?
    .execute(params![chat_id, kind_code(chat.kind), chat.title, chat.direct_key, chat.created_at])
    .map_err(db_err)?;
    for (user_id, role) in &chat.members {
        insert_member(c, &chat_id, user_id, *role, chat.created_at, 0)?;
    }
    let loaded = load_chat(c, &chat_id)?.ok_or_else(|| Error::internal("new chat vanished"))?;
    events.push(Event::Chat(Arc::new(ChatChange {
        kind: ChatChangeKind::Created,
        user_ids: chat.members.into_iter().map(|(u, _)| u).collect(),
        chat: loaded.clone(),
    })));
    Ok((loaded, true))
}

fn insert_member(
    c: &Connection,
    chat_id: &str,
    user_id: &str,
    role: Role,
    now: i64,
    joined_seq: u64,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO members (chat_id, user_id, role, joined_at, joined_seq, read_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )
    .map_err(db_err)?
    .execute(params![chat_id, user_id, role_code(role), now, joined_seq as i64])
    .map_err(db_err)?;
    Ok(())
}

fn add_members(
    c: &Connection,
    chat_id: &str,
    user_ids: Vec<String>,
    max_members: u32,
    now: i64,
    events: &mut Vec<Event>,
) -> Result<Chat> {
    let chat = load_chat(c, chat_id)?.ok_or_else(|| Error::chat_not_found(chat_id))?;
    if chat.kind == ChatKind::Direct {
        return Err(Error::FailedPrecondition(
            "members cannot be added to a direct chat".into(),
        ));
    }
    let mut added: Vec<String> = Vec::new();
    for u in user_ids {
        if chat.member(&u).is_none() && !added.contains(&u) {
            added.push(u);
        }
    }
    if added.is_empty() {
        return Ok(chat);
    }
    let total = chat.members.len() + added.len();
    if total > max_members as usize {
        return Err(Error::FailedPrecondition(format!(
            "the group would have {total} members; the limit is {max_members}"
        )));
    }
    for u in &added {
        insert_member(c, chat_id, u, Role::Member, now, chat.last_seq)?;
        // A re-added member's old device positions predate its new joined_seq.
        c.prepare_cached("DELETE FROM device_cursors WHERE user_id = ?1 AND chat_id = ?2")
            .map_err(db_err)?
            .execute(params![u, chat_id])
            .map_err(db_err)?;
    }
    touch(c, chat_id, now)?;
    let chat = load_chat(c, chat_id)?.ok_or_else(|| Error::internal("chat vanished"))?;
    events.push(Event::Chat(Arc::new(ChatChange {
        kind: ChatChangeKind::MemberAdded,
        chat: chat.clone(),
        user_ids: added,
    })));
    Ok(chat)
}

fn remove_member(
    c: &Connection,
    chat_id: &str,
    user_id: &str,
    now: i64,
    events: &mut Vec<Event>,
) -> Result<Chat> {
    let removed = c
        .prepare_cached("DELETE FROM members WHERE chat_id = ?1 AND user_id = ?2")
        .map_err(db_err)?
        .execute(params![chat_id, user_id])
        .map_err(db_err)?;
    if removed == 0 {
        return Err(Error::NotFound(format!(
            "{user_id} is not a member of chat {chat_id}"
        )));
    }
    c.prepare_cached("DELETE FROM device_cursors WHERE user_id = ?1 AND chat_id = ?2")
        .map_err(db_err)?
        .execute(params![user_id, chat_id])
        .map_err(db_err)?;
    // A group is never left without an admin while it has members.
    c.prepare_cached(
        "UPDATE members SET role = 2 WHERE chat_id = ?1 AND user_id = (
             SELECT user_id FROM members WHERE chat_id = ?1 ORDER BY joined_at, user_id LIMIT 1)
         AND NOT EXISTS (SELECT 1 FROM members WHERE chat_id = ?1 AND role = 2)
         AND (SELECT kind FROM chats WHERE chat_id = ?1) = 2",
    )
    .map_err(db_err)?
    .execute([chat_id])
    .map_err(db_err)?;
    touch(c, chat_id, now)?;
    let chat = load_chat(c, chat_id)?.ok_or_else(|| Error::internal("chat vanished"))?;
    events.push(Event::Chat(Arc::new(ChatChange {
        kind: ChatChangeKind::MemberRemoved,
        chat: chat.clone(),
        user_ids: vec![user_id.to_string()],
    })));
    Ok(chat)
}

fn touch(c: &Connection, chat_id: &str, now: i64) -> Result<()> {
    c.prepare_cached(
        "UPDATE chats SET last_activity_at = MAX(last_activity_at, ?2) WHERE chat_id = ?1",
    )
    .map_err(db_err)?
    .execute(params![chat_id, now])
    .map_err(db_err)?;
    Ok(())
}

fn register_device(c: &Connection, user_id: &str, device_id: &str, now: i64) -> Result<bool> {
    let inserted = c
        .prepare_cached(
            "INSERT OR IGNORE INTO devices (user_id, device_id, created_at) VALUES (?1, ?2, ?3)",
        )
        .map_err(db_err)?
        .execute(params![user_id, device_id, now])
        .map_err(db_err)?;
    if inserted == 0 {
        return Ok(false);
    }
    // A new device starts at the present: older messages are history, not backlog.
    c.prepare_cached(
        "INSERT OR IGNORE INTO device_cursors (user_id, device_id, chat_id, delivered_seq, delivered_at, read_seq, read_at)
         SELECT ?1, ?2, m.chat_id, c.last_seq, ?3, m.read_seq, m.read_at
         FROM members m JOIN chats c ON c.chat_id = m.chat_id WHERE m.user_id = ?1",
    )
    .map_err(db_err)?
    .execute(params![user_id, device_id, now])
    .map_err(db_err)?;
    Ok(true)
}

/// Moves a delivered or read cursor forward and reports the receipts that changed. `seq`
/// beyond the chat's last seq is an error, a `seq` at or below the cursor changes nothing.
/// Reading implies having received: a read moves the device's delivered cursor up with it.
fn move_cursor(c: &Connection, m: CursorMove, events: &mut Vec<Event>) -> Result<()> {
    let last_seq = membership(c, &m.chat_id, &m.user_id)?
        .require(&m.chat_id)?
        .last_seq;
    if m.seq > last_seq {
        return Err(Error::invalid(
            "seq",
            format!("{} is beyond the chat's last seq {last_seq}", m.seq),
        ));
    }
    let (delivered, delivered_at, read, read_at): (i64, i64, i64, i64) = c
        .prepare_cached(
            "SELECT delivered_seq, delivered_at, read_seq, read_at FROM device_cursors
             WHERE user_id = ?1 AND device_id = ?2 AND chat_id = ?3",
        )
        .map_err(db_err)?
        .query_row(params![m.user_id, m.device_id, m.chat_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
        .map_err(db_err)?
        .unwrap_or((0, 0, 0, 0));
    let seq = m.seq as i64;
    let moves_delivered = seq > delivered;
    let moves_read = m.kind == ReceiptKind::Read && seq > read;
    if !moves_delivered && !moves_read {
        return Ok(());
    }
    c.prepare_cached(
        "INSERT INTO device_cursors (user_id, device_id, chat_id, delivered_seq, delivered_at, read_seq, read_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (user_id, device_id, chat_id) DO UPDATE SET
             delivered_seq = excluded.delivered_seq, delivered_at = excluded.delivered_at,
             read_seq = excluded.read_seq, read_at = excluded.read_at",
    )
    .map_err(db_err)?
    .execute(params![
        m.user_id,
        m.device_id,
        m.chat_id,
        delivered.max(seq),
        if moves_delivered { m.at } else { delivered_at },
        if moves_read { seq } else { read },
        if moves_read { m.at } else { read_at },
    ])
    .map_err(db_err)?;
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
        events.push(receipt(ReceiptKind::Delivered));
    }
    if moves_read {
        c.prepare_cached(
            "UPDATE members SET read_seq = ?3, read_at = ?4 WHERE chat_id = ?1 AND user_id = ?2 AND read_seq < ?3",
        )
        .map_err(db_err)?
        .execute(params![m.chat_id, m.user_id, seq, m.at])
        .map_err(db_err)?;
        events.push(receipt(ReceiptKind::Read));
    }
    Ok(())
}

/// Deletes up to `limit` messages created before `before`; chats keep their `last_seq`.
fn purge(c: &Connection, before: i64, limit: u32) -> Result<u64> {
    let n = c
        .prepare_cached(
            // `messages` has no rowid: its key is (chat_id, seq).
            "DELETE FROM messages WHERE (chat_id, seq) IN
                 (SELECT chat_id, seq FROM messages WHERE created_at < ?1 LIMIT ?2)",
        )
        .map_err(db_err)?
        .execute(params![before, limit])
        .map_err(db_err)?;
    Ok(n as u64)
}

fn set_last_seen(c: &Connection, user_id: &str, at: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO last_seen (user_id, at) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET at = MAX(at, excluded.at)",
    )
    .map_err(db_err)?
    .execute(params![user_id, at])
    .map_err(db_err)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reads (used by the writer's checks and by the read pool)

fn kind_code(kind: ChatKind) -> i64 {
    match kind {
        ChatKind::Direct => 1,
        ChatKind::Group => 2,
    }
}

fn role_code(role: Role) -> i64 {
    match role {
        Role::Member => 1,
        Role::Admin => 2,
    }
}

fn kind_from(code: i64) -> ChatKind {
    if code == 1 {
        ChatKind::Direct
    } else {
        ChatKind::Group
    }
}

fn role_from(code: i64) -> Role {
    if code == 2 {
        Role::Admin
    } else {
        Role::Member
    }
}

fn membership(c: &Connection, chat_id: &str, user_id: &str) -> Result<Membership> {
    let row = c
        .prepare_cached(
            "SELECT c.kind, c.last_seq, m.role, m.joined_seq FROM chats c
             LEFT JOIN members m ON m.chat_id = c.chat_id AND m.user_id = ?2 WHERE c.chat_id = ?1",
        )
        .map_err(db_err)?
        .query_row(params![chat_id, user_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .optional()
        .map_err(db_err)?;
    Ok(match row {
        None => Membership::NoSuchChat,
        Some((_, _, None, _)) => Membership::NotMember,
        Some((kind, last_seq, Some(role), joined_seq)) => Membership::Member(Access {
            role: role_from(role),
            kind: kind_from(kind),
            joined_seq: joined_seq.unwrap_or(0) as u64,
            last_seq: last_seq as u64,
        }),
    })
}

fn load_chat(c: &Connection, chat_id: &str) -> Result<Option<Chat>> {
    let row = c
        .prepare_cached("SELECT kind, title, last_seq, created_at, last_activity_at FROM chats WHERE chat_id = ?1")
        .map_err(db_err)?
        .query_row([chat_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(4)?))
        })
        .optional()
        .map_err(db_err)?;
    let Some((kind, title, last_seq, created_at, last_activity_at)) = row else {
        return Ok(None);
    };
    let mut stmt = c
        .prepare_cached("SELECT user_id, role, joined_at, joined_seq FROM members WHERE chat_id = ?1 ORDER BY joined_at, user_id")
        .map_err(db_err)?;
    let members = stmt
        .query_map([chat_id], |r| {
            Ok(Member {
                user_id: r.get(0)?,
                role: role_from(r.get(1)?),
                joined_at: r.get(2)?,
                joined_seq: r.get::<_, i64>(3)? as u64,
            })
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    Ok(Some(Chat {
        chat_id: chat_id.to_string(),
        kind: kind_from(kind),
        title,
        members,
        last_seq: last_seq as u64,
        created_at,
        last_activity_at,
    }))
}

fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let attributes: Option<String> = r.get(8)?;
    let attributes: BTreeMap<String, String> = match attributes {
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e))
        })?,
        None => BTreeMap::new(),
    };
    Ok(Message {
        message_id: r.get(0)?,
        chat_id: r.get(1)?,
        seq: r.get::<_, i64>(2)? as u64,
        sender_user_id: r.get(3)?,
        sender_device_id: r.get(4)?,
        client_msg_id: r.get(5)?,
        content: Content {
            text: r.get(6)?,
            ciphertext: r.get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default(),
            attributes,
        },
        created_at: r.get(9)?,
        wire: Default::default(),
    })
}

fn chat_view(c: &Connection, chat_id: &str, user_id: &str) -> Result<Option<ChatView>> {
    let Some(chat) = load_chat(c, chat_id)? else {
        return Ok(None);
    };
    let Some(member) = chat.member(user_id) else {
        return Ok(None);
    };
    let joined_seq = member.joined_seq;
    let read_seq: i64 = c
        .prepare_cached("SELECT read_seq FROM members WHERE chat_id = ?1 AND user_id = ?2")
        .map_err(db_err)?
        .query_row(params![chat_id, user_id], |r| r.get(0))
        .map_err(db_err)?;
    let read_seq = (read_seq as u64).max(joined_seq);
    let unread_count: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM messages WHERE chat_id = ?1 AND seq > ?2 AND sender_user_id != ?3")
        .map_err(db_err)?
        .query_row(params![chat_id, read_seq as i64, user_id], |r| r.get(0))
        .map_err(db_err)?;
    let last_message = if chat.last_seq > joined_seq {
        c.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq = ?2"
        ))
        .map_err(db_err)?
        .query_row(params![chat_id, chat.last_seq as i64], message_from_row)
        .optional()
        .map_err(db_err)?
    } else {
        None
    };
    Ok(Some(ChatView {
        chat,
        read_seq,
        unread_count: unread_count as u64,
        last_message,
    }))
}

/// Who reached `min_seq` in a chat: each device's delivered and read cursor, and each member's
/// read position (as a receipt with an empty device id). Only current members count.
fn receipts(c: &Connection, chat_id: &str, min_seq: u64) -> Result<Vec<Receipt>> {
    let min = min_seq as i64;
    let mut out = Vec::new();
    let mut stmt = c
        .prepare_cached(
            "SELECT d.user_id, d.device_id, d.delivered_seq, d.delivered_at, d.read_seq, d.read_at
             FROM device_cursors d JOIN members m ON m.chat_id = d.chat_id AND m.user_id = d.user_id
             WHERE d.chat_id = ?1 AND d.delivered_seq >= ?2 AND d.delivered_seq > m.joined_seq
             ORDER BY d.user_id, d.device_id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![chat_id, min], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (user_id, device_id, delivered, delivered_at, read, read_at) = row.map_err(db_err)?;
        let receipt = |kind, seq: i64, at| Receipt {
            chat_id: chat_id.to_string(),
            user_id: user_id.clone(),
            device_id: device_id.clone(),
            kind,
            seq: seq as u64,
            at,
        };
        out.push(receipt(ReceiptKind::Delivered, delivered, delivered_at));
        if read >= min {
            out.push(receipt(ReceiptKind::Read, read, read_at));
        }
    }
    let mut stmt = c
        .prepare_cached(
            "SELECT user_id, read_seq, read_at FROM members
             WHERE chat_id = ?1 AND read_seq >= ?2 AND read_seq > joined_seq ORDER BY user_id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![chat_id, min], |r| {
            Ok(Receipt {
                chat_id: chat_id.to_string(),
                user_id: r.get(0)?,
                device_id: String::new(),
                kind: ReceiptKind::Read,
                seq: r.get::<_, i64>(1)? as u64,
                at: r.get(2)?,
            })
        })
        .map_err(db_err)?;
    for r in rows {
        out.push(r.map_err(db_err)?);
    }
    Ok(out)
}

/// A few read-only connections; a read borrows one on the blocking pool.
struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(|_| stopped())?;
        let conn = self
            .idle
            .lock()
            .pop()
            .ok_or_else(|| Error::internal("reader pool empty"))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            (conn, r)
        })
        .await
        .map_err(Error::internal)?;
        self.idle.lock().push(conn);
        result
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit_message(&self, message: NewMessage) -> Result<PendingAppend> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(WriteOp::Append(message, tx))
            .await
            .map_err(|_| stopped())?;
        Ok(Box::pin(async move { rx.await.map_err(|_| stopped())? }))
    }

    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool)> {
        self.write(|reply| WriteOp::CreateChat(chat, reply)).await
    }

    async fn add_members(
        &self,
        chat_id: &str,
        user_ids: Vec<String>,
        max_members: u32,
        now: i64,
    ) -> Result<Chat> {
        let chat_id = chat_id.to_string();
        self.write(|reply| WriteOp::AddMembers {
            chat_id,
            user_ids,
            max_members,
            now,
            reply,
        })
        .await
    }

    async fn remove_member(&self, chat_id: &str, user_id: &str, now: i64) -> Result<Chat> {
        let (chat_id, user_id) = (chat_id.to_string(), user_id.to_string());
        self.write(|reply| WriteOp::RemoveMember {
            chat_id,
            user_id,
            now,
            reply,
        })
        .await
    }

    async fn chat(&self, chat_id: &str) -> Result<Option<Chat>> {
        let chat_id = chat_id.to_string();
        self.readers.run(move |c| load_chat(c, &chat_id)).await
    }

    async fn membership(&self, chat_id: &str, user_id: &str) -> Result<Membership> {
        let (chat_id, user_id) = (chat_id.to_string(), user_id.to_string());
        self.readers
            .run(move |c| membership(c, &chat_id, &user_id))
            .await
    }

    async fn chat_members(&self, chat_id: &str) -> Result<Vec<String>> {
        let chat_id = chat_id.to_string();
        self.readers
            .run(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT user_id FROM members WHERE chat_id = ?1")
                    .map_err(db_err)?;
                let rows = stmt.query_map([&chat_id], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
                    .map_err(db_err)
            })
            .await
    }

    async fn chat_view(&self, chat_id: &str, user_id: &str) -> Result<Option<ChatView>> {
        let (chat_id, user_id) = (chat_id.to_string(), user_id.to_string());
        self.readers
            .run(move |c| chat_view(c, &chat_id, &user_id))
            .await
    }

    async fn list_chats(
        &self,
        user_id: &str,
        after: Option<ActivityKey>,
        limit: u32,
    ) -> Result<Vec<ChatView>> {
        let user_id = user_id.to_string();
        self.readers
            .run(move |c| {
                let (at, id) = after.map(|k| (k.last_activity_at, k.chat_id)).unwrap_or((i64::MAX, String::new()));
                let mut stmt = c
                    .prepare_cached(
                        "SELECT c.chat_id FROM members m JOIN chats c ON c.chat_id = m.chat_id
                         WHERE m.user_id = ?1 AND (c.last_activity_at < ?2 OR (c.last_activity_at = ?2 AND (?3 = '' OR c.chat_id < ?3)))
                         ORDER BY c.last_activity_at DESC, c.chat_id DESC LIMIT ?4",
                    )
                    .map_err(db_err)?;
                let ids = stmt
                    .query_map(params![user_id, at, id, limit], |r| r.get::<_, String>(0))
                    .map_err(db_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db_err)?;
                let mut views = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(v) = chat_view(c, &id, &user_id)? {
                        views.push(v);
                    }
                }
                Ok(views)
            })
            .await
    }

    async fn messages(&self, chat_id: &str, range: SeqRange, limit: u32) -> Result<Vec<Message>> {
        let chat_id = chat_id.to_string();
        self.readers
            .run(move |c| {
                let order = if range.newest_first { "DESC" } else { "ASC" };
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq {order} LIMIT ?4"
                    ))
                    .map_err(db_err)?;
                let before = range.before.min(i64::MAX as u64) as i64;
                let rows = stmt
                    .query_map(params![chat_id, range.after as i64, before, limit], message_from_row)
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await
    }

    async fn register_device(&self, user_id: &str, device_id: &str, now: i64) -> Result<bool> {
        let (user_id, device_id) = (user_id.to_string(), device_id.to_string());
        self.write(|reply| WriteOp::RegisterDevice {
            user_id,
            device_id,
            now,
            reply,
        })
        .await
    }

    async fn resume_plan(&self, user_id: &str, device_id: &str) -> Result<ResumePlan> {
        let (user_id, device_id) = (user_id.to_string(), device_id.to_string());
        self.readers
            .run(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT m.chat_id, m.joined_seq, COALESCE(d.delivered_seq, 0), c.last_seq
                         FROM members m JOIN chats c ON c.chat_id = m.chat_id
                         LEFT JOIN device_cursors d ON d.user_id = m.user_id AND d.device_id = ?2 AND d.chat_id = m.chat_id
                         WHERE m.user_id = ?1 ORDER BY m.chat_id",
                    )
                    .map_err(db_err)?;
                let chats = stmt
                    .query_map(params![user_id, device_id], |r| {
                        Ok(ResumeChat {
                            chat_id: r.get(0)?,
                            joined_seq: r.get::<_, i64>(1)? as u64,
                            delivered_seq: r.get::<_, i64>(2)? as u64,
                            last_seq: r.get::<_, i64>(3)? as u64,
                        })
                    })
                    .map_err(db_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db_err)?;
                Ok(ResumePlan { chats })
            })
            .await
    }

    async fn move_cursor(&self, m: CursorMove) -> Result<()> {
        self.write(|reply| WriteOp::Cursor(m, reply)).await
    }

    async fn receipts(&self, chat_id: &str, min_seq: u64) -> Result<Vec<Receipt>> {
        let chat_id = chat_id.to_string();
        self.readers
            .run(move |c| receipts(c, &chat_id, min_seq))
            .await
    }

    async fn purge_before(&self, before: i64, limit: u32) -> Result<u64> {
        self.write(|reply| WriteOp::Purge {
            before,
            limit,
            reply,
        })
        .await
    }

    async fn record_last_seen(&self, user_id: &str, at: i64) -> Result<()> {
        let user_id = user_id.to_string();
        self.writes
            .send(WriteOp::LastSeen { user_id, at })
            .await
            .map_err(|_| stopped())
    }

    async fn last_seen(&self, user_ids: Vec<String>) -> Result<HashMap<String, i64>> {
        self.readers
            .run(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT at FROM last_seen WHERE user_id = ?1")
                    .map_err(db_err)?;
                let mut out = HashMap::new();
                for u in user_ids {
                    if let Some(at) = stmt
                        .query_row([&u], |r| r.get(0))
                        .optional()
                        .map_err(db_err)?
                    {
                        out.insert(u, at);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn contacts_among(&self, user_id: &str, candidates: Vec<String>) -> Result<Vec<String>> {
        let user_id = user_id.to_string();
        self.readers
            .run(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM members a JOIN members b ON b.chat_id = a.chat_id
                         WHERE a.user_id = ?1 AND b.user_id = ?2)",
                    )
                    .map_err(db_err)?;
                let mut out = Vec::new();
                for u in candidates {
                    if stmt.query_row(params![user_id, u], |r| r.get::<_, bool>(0)).map_err(db_err)? {
                        out.push(u);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.readers
            .run(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await?;
        if self.writes.is_closed() {
            return Err(stopped());
        }
        Ok(())
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writes.send(WriteOp::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.stopping.store(true, Ordering::Release);
    }
}
