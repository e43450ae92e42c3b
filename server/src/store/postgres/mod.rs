//! The cluster store: PostgreSQL through sqlx, shared by every node.
//!
//! Same semantics as the embedded SQLite store, made safe for several writers on several
//! nodes by row locks instead of a single writer thread: a write that changes a chat (an
//! append, a membership change) first locks the chat's row, chats in `chat_id` order, so seqs
//! stay gap-free and membership checks hold until the commit; a cursor move locks the
//! member's row. Every committed event also goes into the `outbox` table in the same
//! transaction, for the relay ([`outbox`]) to hand to Kafka.
//!
//! Appends, cursor moves and last-seen updates (the frequent writes) go through one writer
//! task per node that folds whatever is queued into one transaction (group commit), see
//! [`writer`]. Rarer writes run in their own transactions from the pool, as do reads.

mod migrate;
pub mod ordered;
pub mod outbox;
#[cfg(test)]
mod tests;
mod writer;

pub use outbox::{outbox_depth, OutboxRelay};

use super::{
    Access, ActivityKey, ChatStore, CursorMove, CursorStore, MemberRule, Membership, MessageStore,
    NewChat, NewMessage, PendingAppend, PresenceStore, PushTokenStore, ResumeChat, ResumePlan,
    SeqRange, Store, UserDataStore, ERASED_KEY_PREFIX,
};
use crate::domain::model::{
    Chat, ChatChange, ChatChangeKind, ChatKind, ChatView, Committed, Content, Event, Member,
    Message, PushProvider, PushToken, Receipt, ReceiptKind, Role,
};
use crate::domain::user_data::UserRecord;
use crate::{domain::ids, Error, Result};
use async_trait::async_trait;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
    Connection, PgConnection, PgExecutor, PgPool, Postgres, Row,
};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    str::FromStr,
    sync::Arc,
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};
use writer::{Op, Writer};

/// How long a first connection may take before `connect` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for a pooled connection (or a new one) while PostgreSQL is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
const WRITE_QUEUE: usize = 8192;
const OUTBOX_QUEUE: usize = 8192;
/// The channel the relay LISTENs on; every transaction that fills the outbox notifies it.
pub(crate) const OUTBOX_CHANNEL: &str = "chat_outbox";
const SECRET_KEY: &str = "jwt_secret";

const MESSAGE_COLUMNS: &str =
    "message_id, chat_id, seq, sender_user_id, sender_device_id, client_msg_id, text, ciphertext, attributes, created_at";

/// How a node reaches the cluster database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub url: String,
    /// Most pooled connections for reads and the rarer writes (the writer task has its own).
    pub pool: u32,
    /// Apply pending migrations at connect (`CHATD_MIGRATE=auto`).
    pub migrate: bool,
}

pub struct PgStore {
    pool: PgPool,
    writes: mpsc::Sender<Op>,
    emitter: Arc<Emitter>,
}

impl PgStore {
    /// Connects, checks (or applies, with `opts.migrate`) the schema and starts the writer.
    /// Returns the store and the commits of this node's writes, in commit order.
    pub async fn connect(opts: &PgOptions) -> Result<(Arc<PgStore>, mpsc::Receiver<Committed>)> {
        let options = parse_url(&opts.url)?;
        let mut conn = open(&options, CONNECT_TIMEOUT).await?;
        let checked = if opts.migrate {
            migrate::apply(&mut conn).await.map(|_| ())
        } else {
            migrate::check(&mut conn).await
        };
        let _ = conn.close().await;
        checked?;
        let pool = PgPoolOptions::new()
            .max_connections(opts.pool.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_QUEUE);
        let emitter = Arc::new(Emitter {
            commit_id: tokio::sync::Mutex::new(0),
            outbox: outbox_tx,
        });
        let (writes, rx) = mpsc::channel(WRITE_QUEUE);
        writer::start(Writer::new(options, emitter.clone()), rx)?;
        let store = PgStore {
            pool,
            writes,
            emitter,
        };
        Ok((Arc::new(store), outbox_rx))
    }

    /// Applies pending migrations; returns how many were applied.
    pub async fn migrate(url: &str) -> Result<u32> {
        let options = parse_url(url)?;
        let mut conn = open(&options, CONNECT_TIMEOUT).await?;
        let applied = migrate::apply(&mut conn).await;
        let _ = conn.close().await;
        applied
    }

    /// The cluster-wide HS256 secret (64 hex digits, as the embedded default keeps in its data
    /// dir): the first node to ask creates it, every other node reads the same one.
    pub async fn shared_secret(&self) -> Result<Vec<u8>> {
        let candidate: String = {
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        // Two statements, not one: the read must come after a concurrent first insert by
        // another node has committed, which only a new statement's snapshot sees.
        sqlx::query(
            "INSERT INTO cluster_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(SECRET_KEY)
        .bind(&candidate)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        let value: String = sqlx::query_scalar("SELECT value FROM cluster_settings WHERE key = $1")
            .bind(SECRET_KEY)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(value.trim().as_bytes().to_vec())
    }

    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Appends (and cursor moves) waiting for the writer.
    pub fn write_queue_depth(&self) -> usize {
        self.writes.max_capacity() - self.writes.capacity()
    }

    async fn queue<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(op(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(pg_err)
    }
}

fn parse_url(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("chatd"))
        .map_err(|e| Error::invalid("database_url", format!("not a PostgreSQL URL: {e}")))
}

/// Where `options` points, for messages: never the password.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// One connection outside any pool, or a message that says where we tried to go.
async fn open(options: &PgConnectOptions, within: Duration) -> Result<PgConnection> {
    let cannot = |why: String| {
        Error::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: {why}",
            describe(options)
        ))
    };
    match tokio::time::timeout(within, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(cannot(e.to_string())),
        Err(_) => Err(cannot(format!("no answer within {} s", within.as_secs()))),
    }
}

fn stopped() -> Error {
    Error::Unavailable("the store is shutting down".into())
}

/// Whether a failure means "PostgreSQL cannot be reached or cannot take this now" (try again
/// later) rather than a bug.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08 connection, 40 rollback (serialization, deadlock), 53 resources,
            // 57 operator intervention (shutdown), 58 system I/O; a read-only standby after a
            // failover; a lock timeout.
            matches!(c.get(..2), Some("08" | "40" | "53" | "57" | "58"))
                || c == "25006"
                || c == "55P03"
        }),
        _ => false,
    }
}

/// Whether the connection itself is gone (as opposed to a statement failing on it).
fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| matches!(c.get(..2), Some("08" | "57"))),
        _ => false,
    }
}

/// PostgreSQL errors: unreachable or overloaded means "try again later"; anything else is a
/// bug worth an internal error. The detail goes to the log, not to the client.
fn pg_err(e: sqlx::Error) -> Error {
    if is_transient(&e) {
        tracing::warn!(error = %e, "postgres");
        Error::Unavailable("the store is unavailable".into())
    } else {
        tracing::error!(error = %e, "postgres");
        Error::internal(e)
    }
}

/// Commits and hands the events of this node's commits to the local channel, in commit order:
/// the lock is held from COMMIT until the events are queued, so a transaction that waited for
/// another one's row locks also reports after it.
struct Emitter {
    commit_id: tokio::sync::Mutex<u64>,
    outbox: mpsc::Sender<Committed>,
}

impl Emitter {
    /// A failed COMMIT may or may not have happened: `Unavailable`, never an ack, so a client
    /// retries (and an append's retry meets its own original through the idempotency key).
    async fn commit(
        &self,
        tx: sqlx::Transaction<'_, Postgres>,
        events: Vec<Event>,
    ) -> std::result::Result<(), sqlx::Error> {
        let mut commit_id = self.commit_id.lock().await;
        tx.commit().await?;
        self.emit(&mut commit_id, events).await;
        Ok(())
    }

    async fn emit(&self, commit_id: &mut u64, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        *commit_id += 1;
        for event in events {
            let committed = Committed {
                commit_id: *commit_id,
                event,
            };
            if self.outbox.send(committed).await.is_err() {
                break; // nobody listens (shutting down); the outbox table still has it all
            }
        }
    }
}

fn commit_failed(e: sqlx::Error) -> Error {
    tracing::warn!(error = %e, "postgres commit");
    Error::Unavailable("the store could not confirm the commit".into())
}

fn event_chat(event: &Event) -> &str {
    match event {
        Event::Message(m) => &m.chat_id,
        Event::Chat(c) => &c.chat.chat_id,
        Event::Receipt(r) => &r.chat_id,
        Event::Typing(t) => &t.chat_id,
        Event::Presence(p) => &p.user_id,
    }
}

/// Adds the events to the outbox and wakes the relay, inside the caller's transaction.
async fn write_outbox(conn: &mut PgConnection, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let chats: Vec<&str> = events.iter().map(event_chat).collect();
    let payloads: Vec<Vec<u8>> = events
        .iter()
        .map(crate::store::outbox::encode_event)
        .collect();
    sqlx::query(
        "WITH o AS (INSERT INTO outbox (chat_id, payload) SELECT * FROM unnest($1::text[], $2::bytea[]))
         SELECT pg_notify($3, '')",
    )
    .bind(&chats)
    .bind(&payloads)
    .bind(OUTBOX_CHANNEL)
    .execute(conn)
    .await
    .map_err(pg_err)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Codes and rows

fn kind_code(kind: ChatKind) -> i32 {
    match kind {
        ChatKind::Direct => 1,
        ChatKind::Group => 2,
    }
}

fn role_code(role: Role) -> i32 {
    match role {
        Role::Member => 1,
        Role::Admin => 2,
    }
}

fn kind_from(code: i32) -> ChatKind {
    if code == 1 {
        ChatKind::Direct
    } else {
        ChatKind::Group
    }
}

fn role_from(code: i32) -> Role {
    if code == 2 {
        Role::Admin
    } else {
        Role::Member
    }
}

/// Seqs and limits arrive as u64/u32; PostgreSQL has only signed integers.
fn db_int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn get<'r, T>(row: &'r PgRow, i: usize) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(i).map_err(pg_err)
}

/// The message whose [`MESSAGE_COLUMNS`] start at column `at`.
fn message_at(row: &PgRow, at: usize) -> Result<Message> {
    let attributes: Option<String> = get(row, at + 8)?;
    let attributes: BTreeMap<String, String> = match attributes {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| Error::internal(format!("stored attributes are not JSON: {e}")))?,
        None => BTreeMap::new(),
    };
    Ok(Message {
        message_id: get(row, at)?,
        chat_id: get(row, at + 1)?,
        seq: get::<i64>(row, at + 2)? as u64,
        sender_user_id: get(row, at + 3)?,
        sender_device_id: get(row, at + 4)?,
        client_msg_id: get(row, at + 5)?,
        content: Content {
            text: get(row, at + 6)?,
            ciphertext: get::<Option<Vec<u8>>>(row, at + 7)?.unwrap_or_default(),
            attributes,
        },
        created_at: get(row, at + 9)?,
        wire: Default::default(),
    })
}

async fn membership<'e>(
    ex: impl PgExecutor<'e>,
    chat_id: &str,
    user_id: &str,
) -> Result<Membership> {
    let row = sqlx::query(
        "SELECT c.kind, c.last_seq, m.role, m.joined_seq FROM chats c
         LEFT JOIN members m ON m.chat_id = c.chat_id AND m.user_id = $2 WHERE c.chat_id = $1",
    )
    .bind(chat_id)
    .bind(user_id)
    .fetch_optional(ex)
    .await
    .map_err(pg_err)?;
    let Some(row) = row else {
        return Ok(Membership::NoSuchChat);
    };
    let role: Option<i32> = get(&row, 2)?;
    Ok(match role {
        None => Membership::NotMember,
        Some(role) => Membership::Member(Access {
            role: role_from(role),
            kind: kind_from(get(&row, 0)?),
            joined_seq: get::<Option<i64>>(&row, 3)?.unwrap_or(0) as u64,
            last_seq: get::<i64>(&row, 1)? as u64,
        }),
    })
}

/// The chats (with their members, longest-standing first) of those ids that exist.
async fn load_chats<'e>(ex: impl PgExecutor<'e>, ids: &[String]) -> Result<HashMap<String, Chat>> {
    let rows = sqlx::query(
        "SELECT c.chat_id, c.kind, c.title, c.last_seq, c.created_at, c.last_activity_at,
                m.user_id, m.role, m.joined_at, m.joined_seq
         FROM chats c LEFT JOIN members m ON m.chat_id = c.chat_id
         WHERE c.chat_id = ANY($1) ORDER BY c.chat_id, m.joined_at, m.user_id",
    )
    .bind(ids)
    .fetch_all(ex)
    .await
    .map_err(pg_err)?;
    let mut chats: HashMap<String, Chat> = HashMap::with_capacity(ids.len());
    for row in rows {
        let chat_id: String = get(&row, 0)?;
        let chat = match chats.entry(chat_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let chat = Chat {
                    chat_id: e.key().clone(),
                    kind: kind_from(get(&row, 1)?),
                    title: get(&row, 2)?,
                    members: Vec::new(),
                    last_seq: get::<i64>(&row, 3)? as u64,
                    created_at: get(&row, 4)?,
                    last_activity_at: get(&row, 5)?,
                };
                e.insert(chat)
            }
        };
        if let Some(user_id) = get::<Option<String>>(&row, 6)? {
            chat.members.push(Member {
                user_id,
                role: role_from(get(&row, 7)?),
                joined_at: get(&row, 8)?,
                joined_seq: get::<i64>(&row, 9)? as u64,
            });
        }
    }
    Ok(chats)
}

async fn load_chat<'e>(ex: impl PgExecutor<'e>, chat_id: &str) -> Result<Option<Chat>> {
    Ok(load_chats(ex, &[chat_id.to_string()])
        .await?
        .remove(chat_id))
}

/// The chats among `ids` that `user_id` is a member of, as they see them, in the order of
/// `ids`.
async fn chat_views(pool: &PgPool, ids: &[String], user_id: &str) -> Result<Vec<ChatView>> {
    let mut chats = load_chats(pool, ids).await?;
    let mut wanted = Vec::with_capacity(ids.len());
    let (mut q_ids, mut q_last, mut q_joined) = (Vec::new(), Vec::new(), Vec::new());
    for id in ids {
        let Some(chat) = chats.remove(id) else {
            continue;
        };
        let Some(member) = chat.member(user_id) else {
            continue;
        };
        q_ids.push(chat.chat_id.clone());
        q_last.push(chat.last_seq as i64);
        q_joined.push(member.joined_seq as i64);
        wanted.push(chat);
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    // The preview is the chat's last message as of the chat row read above, so that
    // `last_seq` and the preview agree.
    let rows = sqlx::query(&format!(
        "SELECT q.chat_id, GREATEST(m.read_seq, q.joined_seq),
                (SELECT count(*) FROM messages x WHERE x.chat_id = q.chat_id
                    AND x.seq > GREATEST(m.read_seq, q.joined_seq) AND x.sender_user_id <> $4),
                m.muted_until, {}
         FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS q(chat_id, last_seq, joined_seq)
         JOIN members m ON m.chat_id = q.chat_id AND m.user_id = $4
         LEFT JOIN messages lm ON lm.chat_id = q.chat_id AND lm.seq = q.last_seq
             AND q.last_seq > q.joined_seq",
        MESSAGE_COLUMNS
            .split(", ")
            .map(|c| format!("lm.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(&q_ids)
    .bind(&q_last)
    .bind(&q_joined)
    .bind(user_id)
    .fetch_all(pool)
    .await
    .map_err(pg_err)?;
    // Per chat: read position, unread count, mute, preview.
    let mut extras: HashMap<String, (u64, u64, Option<i64>, Option<Message>)> = HashMap::new();
    for row in rows {
        let last_message = match get::<Option<String>>(&row, 4)? {
            Some(_) => Some(message_at(&row, 4)?),
            None => None,
        };
        extras.insert(
            get(&row, 0)?,
            (
                get::<i64>(&row, 1)? as u64,
                get::<i64>(&row, 2)? as u64,
                get(&row, 3)?,
                last_message,
            ),
        );
    }
    Ok(wanted
        .into_iter()
        .filter_map(|chat| {
            let (read_seq, unread_count, muted_until, last_message) =
                extras.remove(&chat.chat_id)?;
            Some(ChatView {
                chat,
                read_seq,
                unread_count,
                last_message,
                muted_until,
            })
        })
        .collect())
}

/// Locks a chat's row for this transaction, so that no append or membership change of the
/// chat runs beside it. `false` when there is no such chat.
async fn lock_chat(conn: &mut PgConnection, chat_id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM chats WHERE chat_id = $1 FOR NO KEY UPDATE")
        .bind(chat_id)
        .fetch_optional(conn)
        .await
        .map_err(pg_err)?;
    Ok(row.is_some())
}

async fn touch(conn: &mut PgConnection, chat_id: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE chats SET last_activity_at = GREATEST(last_activity_at, $2) WHERE chat_id = $1",
    )
    .bind(chat_id)
    .bind(now)
    .execute(conn)
    .await
    .map_err(pg_err)?;
    Ok(())
}

#[async_trait]
impl MessageStore for PgStore {
    async fn submit_message(&self, message: NewMessage) -> Result<PendingAppend> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(Op::Append(message, tx))
            .await
            .map_err(|_| stopped())?;
        Ok(Box::pin(async move { rx.await.map_err(|_| stopped())? }))
    }

    async fn messages(&self, chat_id: &str, range: SeqRange, limit: u32) -> Result<Vec<Message>> {
        let order = if range.newest_first { "DESC" } else { "ASC" };
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = $1 AND seq > $2 AND seq < $3
             ORDER BY seq {order} LIMIT $4"
        ))
        .bind(chat_id)
        .bind(db_int(range.after))
        .bind(db_int(range.before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        rows.iter().map(|r| message_at(r, 0)).collect()
    }

    async fn purge_before(&self, before: i64, limit: u32) -> Result<u64> {
        let n = sqlx::query(
            "DELETE FROM messages WHERE (chat_id, seq) IN
                 (SELECT chat_id, seq FROM messages WHERE created_at < $1
                  ORDER BY created_at LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(pg_err)?
        .rows_affected();
        Ok(n)
    }
}

#[async_trait]
impl ChatStore for PgStore {
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool)> {
        let mut tx = self.begin().await?;
        if let Some(key) = &chat.direct_key {
            if let Some(existing) = direct_chat(&mut tx, key).await? {
                return Ok((existing, false));
            }
        }
        let chat_id = ids::new_id();
        // Two nodes creating the same pair's chat at once: the second waits for the first's
        // commit, then finds its chat.
        let inserted = sqlx::query(
            "INSERT INTO chats (chat_id, kind, title, direct_key, last_seq, created_at, last_activity_at)
             VALUES ($1, $2, $3, $4, 0, $5, $5) ON CONFLICT (direct_key) DO NOTHING",
        )
        .bind(&chat_id)
        .bind(kind_code(chat.kind))
        .bind(&chat.title)
        .bind(&chat.direct_key)
        .bind(chat.created_at)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?
        .rows_affected();
        if inserted == 0 {
            let key = chat.direct_key.as_deref().unwrap_or_default();
            let existing = direct_chat(&mut tx, key)
                .await?
                .ok_or_else(|| Error::internal("direct chat vanished"))?;
            return Ok((existing, false));
        }
        let users: Vec<&str> = chat.members.iter().map(|(u, _)| u.as_str()).collect();
        let roles: Vec<i32> = chat.members.iter().map(|(_, r)| role_code(*r)).collect();
        sqlx::query(
            "INSERT INTO members (chat_id, user_id, role, joined_at, joined_seq, read_seq)
             SELECT $1, u.user_id, u.role, $4, 0, 0 FROM unnest($2::text[], $3::int[]) AS u(user_id, role)",
        )
        .bind(&chat_id)
        .bind(&users)
        .bind(&roles)
        .bind(chat.created_at)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?;
        let loaded = load_chat(&mut *tx, &chat_id)
            .await?
            .ok_or_else(|| Error::internal("new chat vanished"))?;
        let events = vec![Event::Chat(Arc::new(ChatChange {
            kind: ChatChangeKind::Created,
            user_ids: chat.members.into_iter().map(|(u, _)| u).collect(),
            chat: loaded.clone(),
        }))];
        write_outbox(&mut tx, &events).await?;
        self.emitter
            .commit(tx, events)
            .await
            .map_err(commit_failed)?;
        Ok((loaded, true))
    }

    async fn change_members(&self, chat_id: &str, rule: MemberRule, now: i64) -> Result<Chat> {
        let mut tx = self.begin().await?;
        if !lock_chat(&mut tx, chat_id).await? {
            return Err(Error::chat_not_found(chat_id));
        }
        let chat = load_chat(&mut *tx, chat_id)
            .await?
            .ok_or_else(|| Error::chat_not_found(chat_id))?;
        let plan = rule(&chat)?;
        if plan.is_empty() {
            return Ok(chat);
        }
        // A removed member's positions go with them; a re-added member's old ones predate its
        // new joined_seq.
        let gone: Vec<String> = plan.remove.iter().chain(&plan.add).cloned().collect();
        sqlx::query(
            "WITH r AS (DELETE FROM members WHERE chat_id = $1 AND user_id = ANY($2)),
                  a AS (INSERT INTO members (chat_id, user_id, role, joined_at, joined_seq, read_seq)
                        SELECT $1, u, $4, $5, $6, $6 FROM unnest($3::text[]) AS u)
             DELETE FROM device_cursors WHERE chat_id = $1 AND user_id = ANY($7)",
        )
        .bind(chat_id)
        .bind(&plan.remove)
        .bind(&plan.add)
        .bind(role_code(Role::Member))
        .bind(now)
        .bind(chat.last_seq as i64)
        .bind(&gone)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?;
        if let Some(u) = &plan.promote {
            sqlx::query("UPDATE members SET role = $3 WHERE chat_id = $1 AND user_id = $2")
                .bind(chat_id)
                .bind(u)
                .bind(role_code(Role::Admin))
                .execute(&mut *tx)
                .await
                .map_err(pg_err)?;
        }
        touch(&mut tx, chat_id, now).await?;
        let changed = load_chat(&mut *tx, chat_id)
            .await?
            .ok_or_else(|| Error::internal("chat vanished"))?;
        let events = vec![Event::Chat(Arc::new(ChatChange {
            kind: plan.kind,
            user_ids: plan.user_ids(),
            chat: changed.clone(),
        }))];
        write_outbox(&mut tx, &events).await?;
        self.emitter
            .commit(tx, events)
            .await
            .map_err(commit_failed)?;
        Ok(changed)
    }

    async fn chat(&self, chat_id: &str) -> Result<Option<Chat>> {
        load_chat(&self.pool, chat_id).await
    }

    async fn membership(&self, chat_id: &str, user_id: &str) -> Result<Membership> {
        membership(&self.pool, chat_id, user_id).await
    }

    async fn chat_members(&self, chat_id: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT user_id FROM members WHERE chat_id = $1 ORDER BY user_id")
            .bind(chat_id)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)
    }

    async fn chat_view(&self, chat_id: &str, user_id: &str) -> Result<Option<ChatView>> {
        Ok(chat_views(&self.pool, &[chat_id.to_string()], user_id)
            .await?
            .pop())
    }

    async fn list_chats(
        &self,
        user_id: &str,
        after: Option<ActivityKey>,
        limit: u32,
    ) -> Result<Vec<ChatView>> {
        let (at, id) = after
            .map(|k| (k.last_activity_at, k.chat_id))
            .unwrap_or((i64::MAX, String::new()));
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT c.chat_id FROM members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.user_id = $1 AND (c.last_activity_at < $2
                 OR (c.last_activity_at = $2 AND ($3 = '' OR c.chat_id < $3)))
             ORDER BY c.last_activity_at DESC, c.chat_id DESC LIMIT $4",
        )
        .bind(user_id)
        .bind(at)
        .bind(&id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        chat_views(&self.pool, &ids, user_id).await
    }

    async fn set_muted(&self, chat_id: &str, user_id: &str, until: Option<i64>) -> Result<()> {
        // One statement: the change where the member row is, and otherwise what tells the two
        // refusals apart (no such chat, not a member), as the same snapshot saw them.
        let row = sqlx::query(
            "WITH u AS (UPDATE members SET muted_until = $3 WHERE chat_id = $1 AND user_id = $2
                        RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM u), EXISTS (SELECT 1 FROM chats WHERE chat_id = $1)",
        )
        .bind(chat_id)
        .bind(user_id)
        .bind(until)
        .fetch_one(&self.pool)
        .await
        .map_err(pg_err)?;
        let membership = match (get::<bool>(&row, 0)?, get::<bool>(&row, 1)?) {
            (true, _) => return Ok(()),
            (false, true) => Membership::NotMember,
            (false, false) => Membership::NoSuchChat,
        };
        membership.require(chat_id).map(|_| ())
    }

    async fn muted_members(
        &self,
        chat_id: &str,
        users: &[String],
        now: i64,
    ) -> Result<Vec<String>> {
        let muted: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM members
             WHERE chat_id = $1 AND user_id = ANY($2) AND muted_until > $3",
        )
        .bind(chat_id)
        .bind(users)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        let muted: HashSet<String> = muted.into_iter().collect();
        Ok(users
            .iter()
            .filter(|u| muted.contains(*u))
            .cloned()
            .collect())
    }

    async fn group_counts(&self, user_ids: Vec<String>) -> Result<HashMap<String, u32>> {
        // members_by_user finds each user's chats; the chats' primary key their kind.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT m.user_id, count(*) FROM members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.user_id = ANY($1) AND c.kind = 2 GROUP BY m.user_id",
        )
        .bind(&user_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(rows.into_iter().map(|(u, n)| (u, n as u32)).collect())
    }

    async fn direct_chat_id(&self, direct_key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT chat_id FROM chats WHERE direct_key = $1")
            .bind(direct_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)
    }
}

#[async_trait]
impl CursorStore for PgStore {
    async fn register_device(&self, user_id: &str, device_id: &str, now: i64) -> Result<bool> {
        // A new device starts at the present: older messages are history, not backlog.
        let inserted: i64 = sqlx::query_scalar(
            "WITH d AS (
                 INSERT INTO devices (user_id, device_id, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING RETURNING 1),
             c AS (
                 INSERT INTO device_cursors (user_id, device_id, chat_id, delivered_seq, delivered_at, read_seq, read_at)
                 SELECT $1, $2, m.chat_id, c.last_seq, $3, m.read_seq, m.read_at
                 FROM members m JOIN chats c ON c.chat_id = m.chat_id
                 WHERE m.user_id = $1 AND EXISTS (SELECT 1 FROM d)
                 ON CONFLICT DO NOTHING)
             SELECT count(*) FROM d",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(inserted > 0)
    }

    async fn resume_plan(&self, user_id: &str, device_id: &str) -> Result<ResumePlan> {
        let rows = sqlx::query(
            "SELECT m.chat_id, m.joined_seq, COALESCE(d.delivered_seq, 0), c.last_seq
             FROM members m JOIN chats c ON c.chat_id = m.chat_id
             LEFT JOIN device_cursors d
                 ON d.user_id = m.user_id AND d.device_id = $2 AND d.chat_id = m.chat_id
             WHERE m.user_id = $1 ORDER BY m.chat_id",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        let chats = rows
            .iter()
            .map(|r| {
                Ok(ResumeChat {
                    chat_id: get(r, 0)?,
                    joined_seq: get::<i64>(r, 1)? as u64,
                    delivered_seq: get::<i64>(r, 2)? as u64,
                    last_seq: get::<i64>(r, 3)? as u64,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ResumePlan { chats })
    }

    async fn move_cursor(&self, m: CursorMove) -> Result<()> {
        self.queue(|reply| Op::Cursor(m, reply)).await
    }

    async fn receipts(&self, chat_id: &str, min_seq: u64) -> Result<Vec<Receipt>> {
        let min = db_int(min_seq);
        let rows = sqlx::query(
            "SELECT d.user_id, d.device_id, d.delivered_seq, d.delivered_at, d.read_seq, d.read_at
             FROM device_cursors d JOIN members m ON m.chat_id = d.chat_id AND m.user_id = d.user_id
             WHERE d.chat_id = $1 AND d.delivered_seq >= $2 AND d.delivered_seq > m.joined_seq
             ORDER BY d.user_id, d.device_id",
        )
        .bind(chat_id)
        .bind(min)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        let mut out = Vec::new();
        for row in rows {
            let user_id: String = get(&row, 0)?;
            let device_id: String = get(&row, 1)?;
            let (delivered, delivered_at): (i64, i64) = (get(&row, 2)?, get(&row, 3)?);
            let (read, read_at): (i64, i64) = (get(&row, 4)?, get(&row, 5)?);
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
        let rows = sqlx::query(
            "SELECT user_id, read_seq, read_at FROM members
             WHERE chat_id = $1 AND read_seq >= $2 AND read_seq > joined_seq ORDER BY user_id",
        )
        .bind(chat_id)
        .bind(min)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        for row in rows {
            out.push(Receipt {
                chat_id: chat_id.to_string(),
                user_id: get(&row, 0)?,
                device_id: String::new(),
                kind: ReceiptKind::Read,
                seq: get::<i64>(&row, 1)? as u64,
                at: get(&row, 2)?,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl PresenceStore for PgStore {
    async fn record_last_seen(&self, user_id: &str, at: i64) -> Result<()> {
        let user_id = user_id.to_string();
        self.writes
            .send(Op::LastSeen { user_id, at })
            .await
            .map_err(|_| stopped())
    }

    async fn last_seen(&self, user_ids: Vec<String>) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT user_id, at FROM last_seen WHERE user_id = ANY($1)")
            .bind(&user_ids)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }

    async fn contacts_among(&self, user_id: &str, candidates: Vec<String>) -> Result<Vec<String>> {
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT b.user_id FROM members a JOIN members b ON b.chat_id = a.chat_id
             WHERE a.user_id = $1 AND b.user_id = ANY($2)",
        )
        .bind(user_id)
        .bind(&candidates)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        let found: HashSet<String> = found.into_iter().collect();
        Ok(candidates
            .into_iter()
            .filter(|u| found.contains(u))
            .collect())
    }
}

#[async_trait]
impl UserDataStore for PgStore {
    async fn user_records(&self, user_id: &str) -> Result<Vec<UserRecord>> {
        let mut out = Vec::new();
        let rows = sqlx::query(
            "SELECT device_id, created_at FROM devices WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        for r in &rows {
            out.push(UserRecord::Device {
                device_id: get(r, 0)?,
                created_at: get(r, 1)?,
            });
        }
        if let Some(at) = self
            .last_seen(vec![user_id.to_string()])
            .await?
            .remove(user_id)
        {
            out.push(UserRecord::LastSeen { at });
        }
        let rows = sqlx::query(
            "SELECT m.chat_id, c.kind, c.title, m.role, m.joined_at, m.joined_seq, m.read_seq,
                    m.read_at, m.muted_until
             FROM members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.user_id = $1 ORDER BY m.chat_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        for r in &rows {
            out.push(UserRecord::Membership {
                chat_id: get(r, 0)?,
                kind: kind_from(get(r, 1)?),
                title: get(r, 2)?,
                role: role_from(get(r, 3)?),
                joined_at: get(r, 4)?,
                joined_seq: get::<i64>(r, 5)? as u64,
                read_seq: get::<i64>(r, 6)? as u64,
                read_at: get(r, 7)?,
                muted_until: get(r, 8)?,
            });
        }
        let rows = sqlx::query(
            "SELECT device_id, chat_id, delivered_seq, delivered_at, read_seq, read_at
             FROM device_cursors WHERE user_id = $1 ORDER BY device_id, chat_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        for r in &rows {
            out.push(UserRecord::Cursor {
                device_id: get(r, 0)?,
                chat_id: get(r, 1)?,
                delivered_seq: get::<i64>(r, 2)? as u64,
                delivered_at: get(r, 3)?,
                read_seq: get::<i64>(r, 4)? as u64,
                read_at: get(r, 5)?,
            });
        }
        let rows = sqlx::query(
            "SELECT device_id, provider, token, app_id, created_at
             FROM push_tokens WHERE user_id = $1 ORDER BY device_id, provider",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        for r in &rows {
            out.push(UserRecord::PushToken {
                device_id: get(r, 0)?,
                provider: get(r, 1)?,
                token: get(r, 2)?,
                app_id: get(r, 3)?,
                created_at: get(r, 4)?,
            });
        }
        Ok(out)
    }

    async fn sent_messages(
        &self,
        user_id: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE sender_user_id = $1 AND client_msg_id > $2 ORDER BY client_msg_id LIMIT $3"
        ))
        .bind(user_id)
        .bind(after.unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        rows.iter().map(|r| message_at(r, 0)).collect()
    }

    async fn erase_user(&self, user_id: &str) -> Result<u64> {
        let mut tx = self.begin().await?;
        let erased = sqlx::query(
            "UPDATE messages SET text = '', ciphertext = NULL, attributes = NULL,
                 sender_device_id = '', client_msg_id = $2 || message_id
             WHERE sender_user_id = $1 AND left(client_msg_id, length($2)) <> $2",
        )
        .bind(user_id)
        .bind(ERASED_KEY_PREFIX)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?
        .rows_affected();
        for statement in [
            "DELETE FROM push_tokens WHERE user_id = $1",
            "DELETE FROM device_cursors WHERE user_id = $1",
            "DELETE FROM devices WHERE user_id = $1",
            "DELETE FROM last_seen WHERE user_id = $1",
            "DELETE FROM members WHERE user_id = $1",
            // A direct chat's key is its sorted pair joined by a newline (domain::chats), and
            // a user id holds no newline.
            "UPDATE chats SET direct_key = NULL WHERE kind = 1 AND
                 (left(direct_key, length($1) + 1) = $1 || chr(10)
                  OR right(direct_key, length($1) + 1) = chr(10) || $1)",
        ] {
            sqlx::query(statement)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(erased)
    }
}

#[async_trait]
impl PushTokenStore for PgStore {
    async fn register_push_token(&self, t: PushToken) -> Result<()> {
        self.register_device(&t.user_id, &t.device_id, t.created_at)
            .await?;
        let mut tx = self.begin().await?;
        // The device's row lock orders two registrations for one device, so its one token per
        // provider holds; a token held by another device moves here through the conflict.
        sqlx::query("SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2 FOR UPDATE")
            .bind(&t.user_id)
            .bind(&t.device_id)
            .execute(&mut *tx)
            .await
            .map_err(pg_err)?;
        sqlx::query(
            "DELETE FROM push_tokens
             WHERE user_id = $1 AND device_id = $2 AND provider = $3 AND token <> $4",
        )
        .bind(&t.user_id)
        .bind(&t.device_id)
        .bind(t.provider.name())
        .bind(&t.token)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?;
        sqlx::query(
            "INSERT INTO push_tokens (provider, token, user_id, device_id, app_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (provider, token) DO UPDATE SET user_id = EXCLUDED.user_id,
                 device_id = EXCLUDED.device_id, app_id = EXCLUDED.app_id,
                 created_at = EXCLUDED.created_at",
        )
        .bind(t.provider.name())
        .bind(&t.token)
        .bind(&t.user_id)
        .bind(&t.device_id)
        .bind(&t.app_id)
        .bind(t.created_at)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    async fn unregister_push_token(
        &self,
        user_id: &str,
        provider: PushProvider,
        token: &str,
    ) -> Result<bool> {
        let removed = sqlx::query(
            "DELETE FROM push_tokens WHERE provider = $1 AND token = $2 AND user_id = $3",
        )
        .bind(provider.name())
        .bind(token)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(removed.rows_affected() > 0)
    }

    async fn push_tokens(&self, user_ids: Vec<String>) -> Result<Vec<PushToken>> {
        let rows = sqlx::query(
            "SELECT provider, token, user_id, device_id, app_id, created_at
             FROM push_tokens WHERE user_id = ANY($1) ORDER BY user_id, device_id, provider",
        )
        .bind(&user_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            // A provider this build does not know (a newer node wrote it) is skipped.
            let Some(provider) = PushProvider::from_name(&get::<String>(r, 0)?) else {
                continue;
            };
            out.push(PushToken {
                provider,
                token: get(r, 1)?,
                user_id: get(r, 2)?,
                device_id: get(r, 3)?,
                app_id: get(r, 4)?,
                created_at: get(r, 5)?,
            });
        }
        Ok(out)
    }

    async fn drop_push_token(&self, provider: PushProvider, token: &str) -> Result<bool> {
        let removed = sqlx::query("DELETE FROM push_tokens WHERE provider = $1 AND token = $2")
            .bind(provider.name())
            .bind(token)
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(removed.rows_affected() > 0)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        if self.writes.is_closed() {
            return Err(stopped());
        }
        Ok(())
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writes.send(Op::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn direct_chat(conn: &mut PgConnection, key: &str) -> Result<Option<Chat>> {
    let id: Option<String> = sqlx::query_scalar("SELECT chat_id FROM chats WHERE direct_key = $1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(pg_err)?;
    match id {
        Some(id) => Ok(Some(
            load_chat(&mut *conn, &id)
                .await?
                .ok_or_else(|| Error::internal("direct chat vanished"))?,
        )),
        None => Ok(None),
    }
}
