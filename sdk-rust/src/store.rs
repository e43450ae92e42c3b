//! The client's own durable state in `data_dir/chat-sdk.sqlite3`: the send queue (in order,
//! until acked or refused for good) and the per-chat positions the app has been given.
//!
//! Every call runs on tokio's blocking pool, so a slow disk never stalls the connection.
//! One process per data dir: two clients on one file would both send its queue.

use crate::error::{Result, SdkError};
use crate::types::Content;
use chat_proto::v1 as pb;
use prost::Message as _;
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub const FILE_NAME: &str = "chat-sdk.sqlite3";
const LOCK_FILE: &str = "chat-sdk.lock";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    client_msg_id  TEXT NOT NULL UNIQUE,
    chat_id        TEXT NOT NULL,
    content        BLOB NOT NULL,                      -- chat.v1.Content, protobuf
    queued_at      INTEGER NOT NULL,                   -- unix ms
    failed_code    INTEGER,                            -- set when refused for good
    failed_message TEXT
);
CREATE TABLE IF NOT EXISTS positions (
    chat_id TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL
);
";

/// A queued (or failed) send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub client_msg_id: String,
    pub chat_id: String,
    pub content: Content,
    /// When the app queued it (unix ms).
    pub queued_at: i64,
    /// Set when the server refused it for good: (gRPC code, reason).
    pub failure: Option<(i32, String)>,
}

#[derive(Clone)]
pub struct LocalStore {
    conn: Arc<Mutex<Connection>>,
    /// Held (flock) while the store is open: a second client on the same dir would send the
    /// same queue and move the same positions.
    lock: Arc<Mutex<Option<std::fs::File>>>,
}

/// An exclusive lock on `dir/chat-sdk.lock`, refused at once if another process holds it.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SdkError::Storage(format!("{}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            return Err(SdkError::Storage(format!(
                "{} is in use by another client (one client per data_dir)",
                dir.display()
            )));
        }
    }
    Ok(f)
}

impl LocalStore {
    /// Open (creating) the store in `dir`, or an in-memory one for `None`.
    pub fn open(dir: Option<&Path>) -> Result<LocalStore> {
        let mut lock = None;
        let conn = match dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| SdkError::Storage(format!("{}: {e}", d.display())))?;
                lock = Some(lock_dir(d)?);
                let path = d.join(FILE_NAME);
                let c = Connection::open(&path)
                    .map_err(|e| SdkError::Storage(format!("{}: {e}", path.display())))?;
                // WAL + FULL: a queued send is on disk before `send` returns.
                c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
                    .map_err(SdkError::storage)?;
                c
            }
            None => Connection::open_in_memory().map_err(SdkError::storage)?,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(SdkError::storage)?;
        conn.execute_batch(SCHEMA).map_err(SdkError::storage)?;
        Ok(LocalStore {
            conn: Arc::new(Mutex::new(conn)),
            lock: Arc::new(Mutex::new(lock)),
        })
    }

    /// Let another client open the data dir (the client was closed).
    pub fn release(&self) {
        let mut g = match self.lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.take();
    }

    /// Like `run`, for writes whose loss in a power cut costs nothing but a repeat (an acked
    /// send deleted, a position raised): the server answers a resend as duplicate and the
    /// sequencer drops a replay. They skip the fsync (WAL, synchronous=NORMAL) and are made
    /// durable by the next enqueue's.
    async fn run_lazy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run(move |c| {
            c.execute_batch("PRAGMA synchronous=NORMAL")?;
            let r = f(c);
            c.execute_batch("PRAGMA synchronous=FULL")?;
            r
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = match conn.lock() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            f(&mut c)
        })
        .await
        .map_err(|e| SdkError::Storage(format!("store task: {e}")))?
        .map_err(SdkError::storage)
    }

    pub async fn positions(&self) -> Result<Vec<(String, u64)>> {
        self.run(|c| {
            let mut st = c.prepare("SELECT chat_id, seq FROM positions")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            rows.map(|r| r.map(|(c, s)| (c, s.max(0) as u64))).collect()
        })
        .await
    }

    /// Raise saved positions (never lowers one).
    pub async fn save_positions(&self, positions: Vec<(String, u64)>) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        self.run_lazy(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO positions (chat_id, seq) VALUES (?1, ?2)
                     ON CONFLICT (chat_id) DO UPDATE SET seq = max(seq, excluded.seq)",
                )?;
                for (chat, seq) in &positions {
                    st.execute(params![chat, *seq as i64])?;
                }
            }
            tx.commit()
        })
        .await
    }

    pub async fn enqueue(&self, m: OutgoingMessage) -> Result<()> {
        let content = pb::Content::from(m.content.clone()).encode_to_vec();
        let n = self
            .run(move |c| {
                c.execute(
                    "INSERT INTO outbox (client_msg_id, chat_id, content, queued_at)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (client_msg_id) DO NOTHING",
                    params![m.client_msg_id, m.chat_id, content, m.queued_at],
                )
            })
            .await?;
        if n == 0 {
            return Err(SdkError::InvalidArgument(
                "client_msg_id is already queued".into(),
            ));
        }
        Ok(())
    }

    /// Every queued and failed send, in queue order.
    pub async fn outbox(&self) -> Result<Vec<OutgoingMessage>> {
        self.run(|c| {
            let mut st = c.prepare(
                "SELECT client_msg_id, chat_id, content, queued_at, failed_code, failed_message
                 FROM outbox ORDER BY id",
            )?;
            let rows = st.query_map([], |r| {
                let content: Vec<u8> = r.get(2)?;
                let code: Option<i32> = r.get(4)?;
                let msg: Option<String> = r.get(5)?;
                Ok(OutgoingMessage {
                    client_msg_id: r.get(0)?,
                    chat_id: r.get(1)?,
                    content: pb::Content::decode(content.as_slice())
                        .map(Content::from)
                        .unwrap_or_default(),
                    queued_at: r.get(3)?,
                    failure: code.map(|c| (c, msg.unwrap_or_default())),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// The send was acked: it leaves the queue.
    pub async fn remove(&self, client_msg_id: String) -> Result<()> {
        self.run_lazy(move |c| {
            c.execute(
                "DELETE FROM outbox WHERE client_msg_id = ?1",
                params![client_msg_id],
            )
        })
        .await
        .map(|_| ())
    }

    pub async fn mark_failed(
        &self,
        client_msg_id: String,
        code: i32,
        reason: String,
    ) -> Result<()> {
        self.run(move |c| {
            c.execute(
                "UPDATE outbox SET failed_code = ?2, failed_message = ?3 WHERE client_msg_id = ?1",
                params![client_msg_id, code, reason],
            )
        })
        .await
        .map(|_| ())
    }

    /// Forget a failed send; false if there is no failed send with that key.
    pub async fn discard_failed(&self, client_msg_id: String) -> Result<bool> {
        self.run(move |c| {
            c.execute(
                "DELETE FROM outbox WHERE client_msg_id = ?1 AND failed_code IS NOT NULL",
                params![client_msg_id],
            )
        })
        .await
        .map(|n| n > 0)
    }

    /// Put a failed send back in the queue (at its old place); returns it.
    pub async fn requeue_failed(&self, client_msg_id: String) -> Result<Option<OutgoingMessage>> {
        let key = client_msg_id.clone();
        let changed = self
            .run(move |c| {
                c.execute(
                    "UPDATE outbox SET failed_code = NULL, failed_message = NULL
                     WHERE client_msg_id = ?1 AND failed_code IS NOT NULL",
                    params![key],
                )
            })
            .await?;
        if changed == 0 {
            return Ok(None);
        }
        let all = self.outbox().await?;
        Ok(all.into_iter().find(|m| m.client_msg_id == client_msg_id))
    }

    #[cfg(test)]
    async fn count(&self) -> Result<i64> {
        self.run(|c| {
            use rusqlite::OptionalExtension;
            c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
                .optional()
                .map(|v| v.unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, chat: &str) -> OutgoingMessage {
        OutgoingMessage {
            client_msg_id: id.into(),
            chat_id: chat.into(),
            content: Content::text(format!("text of {id}")),
            queued_at: 1,
            failure: None,
        }
    }

    #[tokio::test]
    async fn one_client_per_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalStore::open(Some(dir.path())).unwrap();
        let e = LocalStore::open(Some(dir.path())).err().unwrap();
        assert!(e.to_string().contains("in use"), "{e}");
        first.release();
        LocalStore::open(Some(dir.path())).expect("free again once released");
    }

    #[tokio::test]
    async fn queue_and_positions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = LocalStore::open(Some(dir.path())).unwrap();
            s.enqueue(msg("a", "c1")).await.unwrap();
            s.enqueue(msg("b", "c2")).await.unwrap();
            s.enqueue(msg("c", "c1")).await.unwrap();
            assert!(s.enqueue(msg("a", "c1")).await.is_err(), "same key twice");
            s.remove("b".into()).await.unwrap();
            s.mark_failed("c".into(), 7, "not a member".into())
                .await
                .unwrap();
            s.save_positions(vec![("c1".into(), 5), ("c2".into(), 9)])
                .await
                .unwrap();
            s.save_positions(vec![("c1".into(), 3)]).await.unwrap();
        }
        let s = LocalStore::open(Some(dir.path())).unwrap();
        let out = s.outbox().await.unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], msg("a", "c1"));
        assert_eq!(out[1].client_msg_id, "c");
        assert_eq!(out[1].failure, Some((7, "not a member".into())));
        let mut pos = s.positions().await.unwrap();
        pos.sort();
        assert_eq!(
            pos,
            vec![("c1".into(), 5), ("c2".into(), 9)],
            "never lowered"
        );

        assert!(
            !s.discard_failed("a".into()).await.unwrap(),
            "a is not failed"
        );
        let back = s.requeue_failed("c".into()).await.unwrap().unwrap();
        assert_eq!(back.failure, None);
        s.mark_failed("c".into(), 3, "bad".into()).await.unwrap();
        assert!(s.discard_failed("c".into()).await.unwrap());
        assert_eq!(s.count().await.unwrap(), 1);
    }
}
