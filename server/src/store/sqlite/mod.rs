//! The embedded store: one SQLite database in the data dir, WAL mode, `synchronous=FULL` so a
//! commit is on disk before anyone hears of it. This module opens and migrates the database,
//! starts the writer and checkpoint threads and implements [`Store`] by handing writes to the
//! writer thread ([`writer`], group commit; the operations themselves are in [`writes`]) and
//! reads to a small pool of read-only connections ([`reads`]), which WAL lets run beside the
//! writer.

/// The columns of a message row, in the order `reads::message_from_row` reads them; a macro so
/// the statements can be `concat!`ed into constants (no `format!` per call).
macro_rules! message_columns {
    () => {
        "message_id, chat_id, seq, sender_user_id, sender_device_id, client_msg_id, text, ciphertext, attributes, created_at"
    };
}

mod cache;
mod reads;
#[cfg(test)]
mod tests;
mod wal;
mod writer;
mod writes;

use super::{
    ActivityKey, ChatStore, CursorMove, CursorStore, MemberRule, Membership, MessageStore, NewChat,
    NewMessage, PendingAppend, PresenceStore, PushTokenStore, ResumePlan, SeqRange, Store,
    UserDataStore,
};
use crate::domain::model::{Chat, ChatView, Committed, Message, PushProvider, PushToken, Receipt};
use crate::{Error, Result};
use async_trait::async_trait;
use reads::Readers;
use rusqlite::{Connection, ErrorCode};
use std::{collections::HashMap, path::Path, sync::Arc};
use tokio::sync::{mpsc, oneshot};
use writer::{Reply, WriteOp, Writer};

const MIGRATIONS: &[&str] = &[
    include_str!("../../../../migrations/sqlite/0001_core.sql"),
    include_str!("../../../../migrations/sqlite/0002_realtime.sql"),
    include_str!("../../../../migrations/sqlite/0003_push_tokens.sql"),
    include_str!("../../../../migrations/sqlite/0004_push_intents.sql"),
    include_str!("../../../../migrations/sqlite/0005_chat_mute.sql"),
    include_str!("../../../../migrations/sqlite/0006_push_lanes.sql"),
];
const WRITE_QUEUE: usize = 8192;
const OUTBOX_QUEUE: usize = 8192;
const READERS: usize = 4;
/// Prepared statements kept per connection. rusqlite keeps 16 by default and the writer alone
/// runs more distinct statements than that (appends, cursors, members, push, erasure), so a
/// rarer write could push the hot ones out and have them parsed again.
const STATEMENT_CACHE: usize = 64;

/// A push that failed for good, kept for the operator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub user_id: String,
    pub device_id: String,
    pub provider: PushProvider,
    pub chat_id: String,
    pub seq: u64,
    pub reason: String,
    pub at: i64,
}

pub struct SqliteStore {
    writes: mpsc::Sender<WriteOp>,
    readers: Readers,
    /// Tells the checkpoint thread to finish.
    wal: Arc<wal::WalReset>,
    /// The writer's side of the outbox, to count what waits in it (weak: the fan-out must see
    /// the channel close when the writer stops).
    outbox: mpsc::WeakSender<Committed>,
}

impl SqliteStore {
    /// Opens (creating and migrating) `chat.db` in `data_dir`. Returns the store and the
    /// outbox: committed events in commit order.
    pub fn open(data_dir: &Path) -> Result<(Arc<Self>, mpsc::Receiver<Committed>)> {
        Self::open_with(data_dir, false)
    }

    /// Opens the store; with `push_intents`, every message also leaves a push intent in its
    /// own transaction, for the push worker ([`Self::push_intents`]).
    pub fn open_with(
        data_dir: &Path,
        push_intents: bool,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Committed>)> {
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
        conn.pragma_update(None, "journal_size_limit", wal::SIZE_LIMIT_BYTES)
            .map_err(db_err)?;
        migrate(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let wal = Arc::new(wal::WalReset::default());
        let checkpointer = Connection::open(&path).map_err(db_err)?;
        let reset = wal.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || wal::checkpoint_until(checkpointer, reset))
            .map_err(|e| Error::internal(format!("cannot start the checkpoint thread: {e}")))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open(&path).map_err(db_err)?;
            r.execute_batch("PRAGMA query_only=1; PRAGMA busy_timeout=5000;")
                .map_err(db_err)?;
            r.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            readers.push(r);
        }
        let (writes, rx) = mpsc::channel(WRITE_QUEUE);
        let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_QUEUE);
        let outbox = outbox_tx.downgrade();
        let writer = Writer::new(conn, outbox_tx, push_intents, wal.clone());
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::internal(format!("cannot start the writer thread: {e}")))?;
        let store = SqliteStore {
            writes,
            readers: Readers::new(readers),
            wal,
            outbox,
        };
        Ok((Arc::new(store), outbox_rx))
    }

    /// The oldest push intents after `after` (id and message), at most `limit`; an intent
    /// whose message was purged meanwhile comes with `None`.
    pub async fn push_intents(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Option<Message>)>> {
        self.readers
            .run(move |c| reads::push_intents(c, after, limit))
            .await
    }

    /// Where `lane` stands: the last intent it is done with (0 for a lane that never ran).
    pub async fn push_position(&self, lane: PushProvider) -> Result<i64> {
        self.readers
            .run(move |c| reads::push_position(c, lane))
            .await
    }

    /// `lane` is done with the intents up to `up_to`; those every one of `lanes` is done with
    /// are removed.
    pub async fn push_intents_done(
        &self,
        lane: PushProvider,
        up_to: i64,
        lanes: Vec<PushProvider>,
    ) -> Result<()> {
        self.write(|reply| WriteOp::PushIntentsDone {
            lane,
            up_to,
            lanes,
            reply,
        })
        .await
    }

    /// Dead letters kept for `provider`.
    pub async fn push_dead_letters(&self, provider: PushProvider) -> Result<u64> {
        self.readers
            .run(move |c| reads::push_dead_letters(c, provider))
            .await
    }

    /// Records a push that failed for good.
    pub async fn push_dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.write(|reply| WriteOp::PushDeadLetter(letter, reply))
            .await
    }

    /// Writes waiting for the writer thread.
    pub fn write_queue_depth(&self) -> usize {
        self.writes.max_capacity() - self.writes.capacity()
    }

    /// Committed events waiting for the fan-out.
    pub fn outbox_depth(&self) -> usize {
        self.outbox
            .upgrade()
            .map_or(0, |s| s.max_capacity() - s.capacity())
    }

    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(op(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
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

#[async_trait]
impl MessageStore for SqliteStore {
    async fn submit_message(&self, message: NewMessage) -> Result<PendingAppend> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(WriteOp::Append(message, tx))
            .await
            .map_err(|_| stopped())?;
        Ok(Box::pin(async move { rx.await.map_err(|_| stopped())? }))
    }

    async fn messages(&self, chat_id: &str, range: SeqRange, limit: u32) -> Result<Vec<Message>> {
        let chat_id = chat_id.to_string();
        self.readers
            .run(move |c| reads::messages(c, &chat_id, range, limit))
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
}

#[async_trait]
impl ChatStore for SqliteStore {
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool)> {
        self.write(|reply| WriteOp::CreateChat(chat, reply)).await
    }

    async fn change_members(&self, chat_id: &str, rule: MemberRule, now: i64) -> Result<Chat> {
        let chat_id = chat_id.to_string();
        self.write(|reply| WriteOp::ChangeMembers {
            chat_id,
            rule,
            now,
            reply,
        })
        .await
    }

    async fn chat(&self, chat_id: &str) -> Result<Option<Chat>> {
        let chat_id = chat_id.to_string();
        self.readers
            .run(move |c| reads::load_chat(c, &chat_id))
            .await
    }

    async fn membership(&self, chat_id: &str, user_id: &str) -> Result<Membership> {
        let (chat_id, user_id) = (chat_id.to_string(), user_id.to_string());
        self.readers
            .run(move |c| reads::membership(c, &chat_id, &user_id))
            .await
    }

    async fn chat_members(&self, chat_id: &str) -> Result<Vec<String>> {
        let chat_id = chat_id.to_string();
        self.readers
            .run(move |c| reads::chat_members(c, &chat_id))
            .await
    }

    async fn chat_view(&self, chat_id: &str, user_id: &str) -> Result<Option<ChatView>> {
        let (chat_id, user_id) = (chat_id.to_string(), user_id.to_string());
        self.readers
            .run(move |c| reads::chat_view(c, &chat_id, &user_id))
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
            .run(move |c| reads::list_chats(c, &user_id, after, limit))
            .await
    }

    async fn set_muted(&self, chat_id: &str, user_id: &str, until: Option<i64>) -> Result<()> {
        let (chat_id, user_id) = (chat_id.to_string(), user_id.to_string());
        self.write(|reply| WriteOp::SetMuted {
            chat_id,
            user_id,
            until,
            reply,
        })
        .await
    }

    async fn muted_members(
        &self,
        chat_id: &str,
        users: &[String],
        now: i64,
    ) -> Result<Vec<String>> {
        let (chat_id, users) = (chat_id.to_string(), users.to_vec());
        self.readers
            .run(move |c| reads::muted_members(c, &chat_id, users, now))
            .await
    }

    async fn group_counts(&self, user_ids: Vec<String>) -> Result<HashMap<String, u32>> {
        self.readers
            .run(move |c| reads::group_counts(c, user_ids))
            .await
    }

    async fn direct_chat_id(&self, direct_key: &str) -> Result<Option<String>> {
        let key = direct_key.to_string();
        self.readers
            .run(move |c| reads::direct_chat_id(c, &key))
            .await
    }
}

#[async_trait]
impl CursorStore for SqliteStore {
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
            .run(move |c| reads::resume_plan(c, &user_id, &device_id))
            .await
    }

    async fn move_cursor(&self, m: CursorMove) -> Result<()> {
        self.write(|reply| WriteOp::Cursor(m, reply)).await
    }

    async fn receipts(&self, chat_id: &str, min_seq: u64) -> Result<Vec<Receipt>> {
        let chat_id = chat_id.to_string();
        self.readers
            .run(move |c| reads::receipts(c, &chat_id, min_seq))
            .await
    }
}

#[async_trait]
impl PresenceStore for SqliteStore {
    async fn record_last_seen(&self, user_id: &str, at: i64) -> Result<()> {
        let user_id = user_id.to_string();
        self.writes
            .send(WriteOp::LastSeen { user_id, at })
            .await
            .map_err(|_| stopped())
    }

    async fn last_seen(&self, user_ids: Vec<String>) -> Result<HashMap<String, i64>> {
        self.readers
            .run(move |c| reads::last_seen(c, user_ids))
            .await
    }

    async fn contacts_among(&self, user_id: &str, candidates: Vec<String>) -> Result<Vec<String>> {
        let user_id = user_id.to_string();
        self.readers
            .run(move |c| reads::contacts_among(c, &user_id, candidates))
            .await
    }
}

#[async_trait]
impl UserDataStore for SqliteStore {
    async fn user_records(
        &self,
        user_id: &str,
    ) -> Result<Vec<crate::domain::user_data::UserRecord>> {
        let user_id = user_id.to_string();
        self.readers
            .run(move |c| reads::user_records(c, &user_id))
            .await
    }

    async fn sent_messages(
        &self,
        user_id: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let user_id = user_id.to_string();
        self.readers
            .run(move |c| reads::sent_messages(c, &user_id, after.as_deref(), limit))
            .await
    }

    async fn erase_user(&self, user_id: &str) -> Result<u64> {
        let user_id = user_id.to_string();
        self.write(|reply| WriteOp::EraseUser { user_id, reply })
            .await
    }
}

#[async_trait]
impl PushTokenStore for SqliteStore {
    async fn register_push_token(&self, token: PushToken) -> Result<()> {
        self.write(|reply| WriteOp::RegisterPushToken(token, reply))
            .await
    }

    async fn unregister_push_token(
        &self,
        user_id: &str,
        provider: PushProvider,
        token: &str,
    ) -> Result<bool> {
        let (user_id, token) = (user_id.to_string(), token.to_string());
        self.write(|reply| WriteOp::UnregisterPushToken {
            user_id,
            provider,
            token,
            reply,
        })
        .await
    }

    async fn push_tokens(&self, user_ids: Vec<String>) -> Result<Vec<PushToken>> {
        self.readers
            .run(move |c| reads::push_tokens(c, user_ids))
            .await
    }

    async fn drop_push_token(&self, provider: PushProvider, token: &str) -> Result<bool> {
        let token = token.to_string();
        self.write(|reply| WriteOp::DropPushToken {
            provider,
            token,
            reply,
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.readers.run(reads::ping).await?;
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
        self.wal.stop();
    }
}
