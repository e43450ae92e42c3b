//! Keeping the WAL short. A thread beside the writer copies the WAL back into the database
//! (PASSIVE: it never waits for the writer), so that commits do not pay for it; SQLite would
//! otherwise checkpoint inside a commit every 1000 pages.
//!
//! That alone does not bound the WAL. SQLite starts writing the WAL from its beginning again
//! only when a write transaction begins while every frame has been copied back, and under a
//! steady load the writer has always committed more by the time a pass ends: the file then
//! grows for as long as the load lasts (3 GB in 25 s at 40,000 msgs/s), and every frame
//! appended to a growing file makes the kernel zero a fresh page first (a third of the
//! writer thread's time in that run). So once the WAL is long, the checkpoint thread asks the
//! writer for a pass of its own between two batches: there nothing commits meanwhile, the
//! pass copies only what came since the thread's last one, and the next batch starts the WAL
//! over.

use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// WAL frames (pages) past which the writer is asked for a pass: 64 MiB at 4 KiB pages.
const RESET_FRAMES: i64 = 16_384;
/// What a WAL file is cut back to when it starts over, should a long reader have let it grow
/// past the reset point.
pub(super) const SIZE_LIMIT_BYTES: i64 = 128 << 20;
const PASS_EVERY: Duration = Duration::from_millis(200);

/// Set by the checkpoint thread when the WAL is long; cleared by the writer once its pass
/// copied everything back.
pub(super) struct WalReset {
    wanted: AtomicBool,
    stopping: AtomicBool,
    reset_frames: i64,
}

impl Default for WalReset {
    fn default() -> Self {
        WalReset::after(RESET_FRAMES)
    }
}

impl WalReset {
    fn after(reset_frames: i64) -> Self {
        WalReset {
            wanted: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            reset_frames,
        }
    }

    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The writer's side, between batches: a pass when the checkpoint thread asked for one.
    /// Failing is harmless (another pass was running, or a reader still needs old frames):
    /// the request stays and the next batch tries again.
    pub(super) fn between_batches(&self, conn: &Connection) {
        if !self.wanted.load(Ordering::Relaxed) {
            return;
        }
        match passive(conn) {
            Ok(Pass {
                busy: false,
                frames,
                copied,
            }) if frames == copied => self.wanted.store(false, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "wal checkpoint in the writer"),
        }
    }

    /// The checkpoint thread's pass, which asks the writer for one of its own when the WAL is
    /// long.
    fn pass(&self, conn: &Connection) {
        match passive(conn) {
            Ok(pass) if pass.frames >= self.reset_frames => {
                self.wanted.store(true, Ordering::Relaxed)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "wal checkpoint"),
        }
    }
}

/// The checkpoint thread's loop, until the store stops; a last TRUNCATE leaves a small WAL.
pub(super) fn checkpoint_until(conn: Connection, reset: Arc<WalReset>) {
    while !reset.stopping.load(Ordering::Acquire) {
        std::thread::sleep(PASS_EVERY);
        reset.pass(&conn);
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// What `PRAGMA wal_checkpoint` answers: whether it could not run, the WAL's frames, and how
/// many of them are copied back.
struct Pass {
    busy: bool,
    frames: i64,
    copied: i64,
}

fn passive(conn: &Connection) -> rusqlite::Result<Pass> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Pass {
            busy: r.get::<_, i64>(0)? != 0,
            frames: r.get(1)?,
            copied: r.get(2)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in WAL mode with one table, as the store opens it: nothing checkpoints on
    /// its own.
    struct Db {
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Db {
        fn new() -> (Db, Connection) {
            let dir = tempfile::tempdir().unwrap();
            let db = Db {
                path: dir.path().join("t.db"),
                _dir: dir,
            };
            let writer = db.open();
            writer
                .execute_batch("CREATE TABLE t (x BLOB NOT NULL)")
                .unwrap();
            (db, writer)
        }

        fn open(&self) -> Connection {
            let c = Connection::open(&self.path).unwrap();
            c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
                .unwrap();
            c
        }
    }

    fn insert(writer: &Connection, bytes: usize) {
        writer
            .execute("INSERT INTO t (x) VALUES (zeroblob(?1))", [bytes])
            .unwrap();
    }

    fn rows(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Opens a read transaction on the current commit, which keeps its frames needed.
    fn begin_read(reader: &Connection) {
        reader.execute_batch("BEGIN").unwrap();
        rows(reader);
    }

    fn wal_frames(c: &Connection) -> i64 {
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    /// The starvation of a steady load, made deterministic: a reader still on the previous
    /// commit whenever the checkpoint thread passes, so no pass ever copies everything back.
    #[test]
    fn a_long_wal_starts_over_after_the_writers_pass() {
        let (db, writer) = Db::new();
        let checkpointer = db.open();
        let reader = db.open();
        let reset = WalReset::after(16);
        for _ in 0..20 {
            begin_read(&reader);
            insert(&writer, 16384);
            reset.pass(&checkpointer);
            reader.execute_batch("COMMIT").unwrap();
        }
        let grown = wal_frames(&checkpointer);
        assert!(grown > 80, "the WAL should have grown: {grown} frames");
        assert!(reset.wanted.load(Ordering::Relaxed));

        // A pass in the writer, with nobody between it and the next write: the WAL starts over.
        reset.between_batches(&writer);
        assert!(!reset.wanted.load(Ordering::Relaxed));
        insert(&writer, 16384);
        let after = wal_frames(&checkpointer);
        assert!(
            after < 16,
            "the WAL should have started over: {after} frames"
        );
        assert_eq!(rows(&reader), 21);
    }

    #[test]
    fn a_reader_on_old_frames_keeps_the_request_for_the_next_batch() {
        let (db, writer) = Db::new();
        let reader = db.open();
        let reset = WalReset::after(1);
        insert(&writer, 8192);
        begin_read(&reader);
        insert(&writer, 8192);
        reset.pass(&writer);
        assert!(reset.wanted.load(Ordering::Relaxed));
        reset.between_batches(&writer);
        assert!(
            reset.wanted.load(Ordering::Relaxed),
            "the reader still needs frames the pass could not copy"
        );
        reader.execute_batch("COMMIT").unwrap();
        reset.between_batches(&writer);
        assert!(!reset.wanted.load(Ordering::Relaxed));
    }
}
