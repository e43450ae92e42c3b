//! Tests of the embedded store. The store contract runs here as the conformance suite
//! ([`crate::store::conformance`]), each test on a fresh database in a temporary directory;
//! below it, what only SQLite can show: a batch that fails as a whole, and a database that is
//! closed and opened again.

use super::*;
use crate::domain::model::ReceiptKind;
use crate::domain::model::{ChatKind, Role};
use crate::store::conformance::{
    all, conformance_suite, cursor, group, message_events, new_message, seqs, Backend,
};
use crate::store::Appended;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A fresh store for a conformance test; the directory lives as long as the test.
async fn open_backend() -> (Backend, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (store, outbox) = SqliteStore::open(dir.path()).unwrap();
    (Backend::new(store, outbox), dir)
}

conformance_suite! {
    open: open_backend,
}

// ---------------------------------------------------------------------------------------------
// What only the embedded store shows

struct Fixture {
    /// Kept so the database outlives the test body.
    dir: TempDir,
    store: Arc<SqliteStore>,
    outbox: mpsc::Receiver<Committed>,
}

fn open() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (store, outbox) = SqliteStore::open(dir.path()).unwrap();
    Fixture { dir, store, outbox }
}

impl Fixture {
    /// What has come out on the outbox so far (see [`Backend::committed`]).
    fn committed(&mut self) -> Vec<Committed> {
        let mut out = Vec::new();
        while let Ok(c) = self.outbox.try_recv() {
            out.push(c);
        }
        out
    }

    fn raw(&self) -> Connection {
        let conn = Connection::open(self.dir.path().join("chat.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A write that fails for a reason other than a refusal (here a chat listing a member twice,
/// which the domain never sends) breaks its batch: nothing of the batch is kept, every write
/// in it is answered UNAVAILABLE and none of its events goes out. To get the writes into one
/// batch, a second connection holds the write lock while they queue.
#[tokio::test]
async fn a_failing_write_rolls_back_its_whole_batch() {
    let mut f = open();
    let chat = group(&*f.store, "g", &["alice", "bob"]).await.chat_id;
    f.store
        .append_message(new_message(&chat, "alice", "before", 1))
        .await
        .unwrap();
    f.committed();

    let holder = f.raw();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    // The writer takes this one and then waits for the lock.
    f.store.record_last_seen("zed", 42).await.unwrap();
    wait_for("the writer to take the first write", || {
        f.store.write_queue_depth() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let good = f
        .store
        .submit_message(new_message(&chat, "alice", "good", 2))
        .await
        .unwrap();
    let refused = f
        .store
        .submit_message(new_message(&chat, "carol", "refused", 3))
        .await
        .unwrap();
    let store = f.store.clone();
    let bad = tokio::spawn(async move {
        store
            .create_chat(NewChat {
                kind: ChatKind::Group,
                title: "bad".into(),
                direct_key: None,
                members: vec![
                    ("carol".into(), Role::Admin),
                    ("carol".into(), Role::Member),
                ],
                created_at: 5,
            })
            .await
    });
    wait_for("the bad write to queue", || {
        f.store.write_queue_depth() == 3
    })
    .await;
    let after = f
        .store
        .submit_message(new_message(&chat, "bob", "after", 4))
        .await
        .unwrap();
    let cursor_move = {
        let store = f.store.clone();
        let m = cursor(&chat, "bob", "phone", 1, ReceiptKind::Read);
        tokio::spawn(async move { store.move_cursor(m).await })
    };
    wait_for("all writes to queue", || f.store.write_queue_depth() == 5).await;
    holder.execute_batch("COMMIT").unwrap();

    let unavailable = |r: Result<()>| matches!(r, Err(Error::Unavailable(_)));
    assert!(unavailable(good.await.map(drop)));
    assert!(unavailable(refused.await.map(drop)));
    assert!(unavailable(bad.await.unwrap().map(drop)));
    assert!(unavailable(after.await.map(drop)));
    assert!(unavailable(cursor_move.await.unwrap()));

    // The batch before it committed on its own.
    let seen = f.store.last_seen(vec!["zed".into()]).await.unwrap();
    assert_eq!(seen.get("zed"), Some(&42));
    let stored = f.store.messages(&chat, all(0), 10).await.unwrap();
    assert_eq!(seqs(&stored), [1]);
    assert_eq!(f.store.chat(&chat).await.unwrap().unwrap().last_seq, 1);
    assert!(f
        .store
        .list_chats("carol", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(f.store.receipts(&chat, 0).await.unwrap().is_empty());
    assert!(f.committed().is_empty());

    // The writer carries on, and the seq after the lost batch leaves no gap.
    let next = f
        .store
        .append_message(new_message(&chat, "alice", "good", 6))
        .await
        .unwrap();
    assert_eq!((next.message.seq, next.duplicate), (2, false));
    assert_eq!(message_events(&f.committed()), [(chat.clone(), 2)]);
    f.store.close().await;
}

#[tokio::test]
async fn reopening_keeps_everything_and_a_newer_schema_is_refused() {
    let f = open();
    let chat = group(&*f.store, "g", &["alice", "bob"]).await.chat_id;
    let first: Appended = f
        .store
        .append_message(new_message(&chat, "alice", "1", 1))
        .await
        .unwrap();
    f.store.record_last_seen("bob", 9).await.unwrap();
    f.store.close().await;
    let Fixture { dir, store, .. } = f;
    drop(store);

    let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
    let again = store
        .append_message(new_message(&chat, "alice", "1", 2))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    let next = store
        .append_message(new_message(&chat, "bob", "2", 3))
        .await
        .unwrap();
    assert_eq!(next.message.seq, 2);
    let seen = store.last_seen(vec!["bob".into()]).await.unwrap();
    assert_eq!(seen.get("bob"), Some(&9));
    store.ping().await.unwrap();
    store.close().await;
    drop(store);

    let conn = Connection::open(dir.path().join("chat.db")).unwrap();
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len());
    conn.pragma_update(None, "user_version", MIGRATIONS.len() + 1)
        .unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(dir.path()),
        Err(Error::Internal(_))
    ));
}

/// With push on, each message leaves an intent in its own transaction (so a crash cannot keep
/// the message and lose its push); a refused append leaves none; each lane keeps its own
/// position, and an intent goes once every lane is past it; an intent whose message was
/// purged reads as `None`.
#[tokio::test]
async fn push_intents_follow_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _outbox) = SqliteStore::open_with(dir.path(), true).unwrap();
    let chat = group(&*store, "g", &["alice", "bob"]).await.chat_id;
    for i in 1..=3 {
        store
            .append_message(new_message(&chat, "alice", &i.to_string(), 1_000 + i))
            .await
            .unwrap();
    }
    // A repeat of a key is not a new message; a non-member's send is refused.
    store
        .append_message(new_message(&chat, "alice", "1", 2_000))
        .await
        .unwrap();
    assert!(store
        .append_message(new_message(&chat, "mallory", "m", 2_000))
        .await
        .is_err());
    let intents = store.push_intents(0, 10).await.unwrap();
    let seqs: Vec<u64> = intents
        .iter()
        .map(|(_, m)| m.as_ref().map_or(0, |m| m.seq))
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let seqs_after = |after| {
        let store = store.clone();
        async move {
            let left = store.push_intents(after, 10).await.unwrap();
            left.iter()
                .map(|(_, m)| m.as_ref().map_or(0, |m| m.seq))
                .collect::<Vec<u64>>()
        }
    };
    use PushProvider::{Apns, Fcm};
    let lanes = vec![Fcm, Apns];
    assert_eq!(store.push_position(Fcm).await.unwrap(), 0);
    // FCM moves on alone: nothing is removed while APNs has not passed it.
    store
        .push_intents_done(Fcm, intents[1].0, lanes.clone())
        .await
        .unwrap();
    assert_eq!(store.push_position(Fcm).await.unwrap(), intents[1].0);
    assert_eq!(store.push_position(Apns).await.unwrap(), 0);
    assert_eq!(seqs_after(0).await, [1, 2, 3]);
    assert_eq!(seqs_after(intents[1].0).await, [3]);
    // APNs passes the first; a position never goes back.
    store
        .push_intents_done(Apns, intents[0].0, lanes.clone())
        .await
        .unwrap();
    store
        .push_intents_done(Fcm, intents[0].0, lanes.clone())
        .await
        .unwrap();
    assert_eq!(store.push_position(Fcm).await.unwrap(), intents[1].0);
    assert_eq!(seqs_after(0).await, [2, 3]);
    store
        .push_intents_done(Apns, intents[2].0, lanes.clone())
        .await
        .unwrap();
    assert_eq!(seqs_after(0).await, [3]);
    // Purged by retention: the intent stays until done, without its message.
    store.purge_before(i64::MAX, 100).await.unwrap();
    assert!(store.push_intents(0, 10).await.unwrap()[0].1.is_none());
    store
        .push_intents_done(Fcm, intents[2].0, lanes)
        .await
        .unwrap();
    assert!(store.push_intents(0, 10).await.unwrap().is_empty());
    // An id is never used twice (an empty table must not start again behind the lanes).
    store
        .append_message(new_message(&chat, "alice", "4", 3_000))
        .await
        .unwrap();
    assert_eq!(seqs_after(intents[2].0).await, [4]);

    // Without push, nothing is recorded.
    let dir = tempfile::tempdir().unwrap();
    let (store, _outbox) = SqliteStore::open_with(dir.path(), false).unwrap();
    let chat = group(&*store, "g", &["alice", "bob"]).await.chat_id;
    store
        .append_message(new_message(&chat, "alice", "x", 1))
        .await
        .unwrap();
    assert!(store.push_intents(0, 10).await.unwrap().is_empty());
}

/// The dead-letter depth gauge counts each provider's own letters.
#[tokio::test]
async fn dead_letters_are_counted_per_provider() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _outbox) = SqliteStore::open_with(dir.path(), true).unwrap();
    let letter = |provider| DeadLetter {
        user_id: "bob".into(),
        device_id: "d1".into(),
        provider,
        chat_id: "c".into(),
        seq: 1,
        reason: "refused".into(),
        at: 1,
    };
    for p in [PushProvider::Fcm, PushProvider::Fcm, PushProvider::Webhook] {
        store.push_dead_letter(letter(p)).await.unwrap();
    }
    let count = |p| store.push_dead_letters(p);
    assert_eq!(count(PushProvider::Fcm).await.unwrap(), 2);
    assert_eq!(count(PushProvider::Webhook).await.unwrap(), 1);
    assert_eq!(count(PushProvider::Apns).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// The writer's cache (seqs and memberships): several writes in one batch, as under load

impl Fixture {
    /// Holds the write lock from a second connection until the returned connection commits, so
    /// that the writes queued meanwhile land in one batch (the writer takes one write first and
    /// waits for the lock with it).
    async fn hold_writer(&self) -> Connection {
        let holder = self.raw();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        self.store.record_last_seen("zed", 42).await.unwrap();
        wait_for("the writer to take the first write", || {
            self.store.write_queue_depth() == 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        holder
    }

    /// Queues `write` behind the writes already queued (spawned, so its answer can be awaited
    /// later), and waits until it is in the queue.
    async fn queue<T: Send + 'static>(
        &self,
        write: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<T>> {
        let depth = self.store.write_queue_depth();
        let handle = tokio::spawn(write);
        wait_for("the write to queue", || {
            self.store.write_queue_depth() == depth + 1
        })
        .await;
        handle
    }

    async fn queue_append(&self, m: NewMessage) -> tokio::task::JoinHandle<Result<Appended>> {
        let store = self.store.clone();
        self.queue(async move { store.append_message(m).await })
            .await
    }
}

/// Appends that bumped the cached seq of a chat, in a batch that rolls back, leave no seq
/// behind: the next append takes the seq after the last committed one, and the chat's row and
/// the cursor rule agree.
#[tokio::test]
async fn a_rolled_back_batch_leaves_no_cached_seq_behind() {
    let mut f = open();
    let chat = group(&*f.store, "g", &["alice", "bob"]).await.chat_id;
    // Cached now, at seq 1.
    f.store
        .append_message(new_message(&chat, "alice", "a1", 1))
        .await
        .unwrap();
    f.committed();

    let holder = f.hold_writer().await;
    let lost = [
        f.queue_append(new_message(&chat, "alice", "a2", 2)).await,
        f.queue_append(new_message(&chat, "bob", "b1", 3)).await,
    ];
    let store = f.store.clone();
    let bad = f
        .queue(async move {
            store
                .create_chat(NewChat {
                    kind: ChatKind::Group,
                    title: "bad".into(),
                    direct_key: None,
                    members: vec![
                        ("carol".into(), Role::Admin),
                        ("carol".into(), Role::Member),
                    ],
                    created_at: 5,
                })
                .await
        })
        .await;
    let also_lost = f.queue_append(new_message(&chat, "alice", "a3", 4)).await;
    holder.execute_batch("COMMIT").unwrap();
    for append in lost.into_iter().chain([also_lost]) {
        assert!(matches!(append.await.unwrap(), Err(Error::Unavailable(_))));
    }
    assert!(matches!(bad.await.unwrap(), Err(Error::Unavailable(_))));
    assert_eq!(f.store.chat(&chat).await.unwrap().unwrap().last_seq, 1);
    // The cursor rule sees the committed last seq, not a lost one.
    assert!(matches!(
        f.store
            .move_cursor(cursor(&chat, "bob", "phone", 2, ReceiptKind::Delivered))
            .await,
        Err(Error::InvalidArgument { field: "seq", .. })
    ));

    let next = f
        .store
        .append_message(new_message(&chat, "bob", "b1", 6))
        .await
        .unwrap();
    assert_eq!((next.message.seq, next.duplicate), (2, false));
    assert_eq!(f.store.chat(&chat).await.unwrap().unwrap().last_seq, 2);
    let stored = f.store.messages(&chat, all(0), 10).await.unwrap();
    assert_eq!(seqs(&stored), [1, 2]);
    assert_eq!(message_events(&f.committed()), [(chat.clone(), 2)]);
    f.store.close().await;
}

/// Member changes in the same batch as appends: an added member may send at once and joins
/// after the appends before it, a removed one is refused, and the seqs stay gap-free.
#[tokio::test]
async fn a_member_change_is_seen_by_the_appends_of_its_batch() {
    use crate::domain::membership::{adding, removing};
    let mut f = open();
    let chat = group(&*f.store, "g", &["alice", "bob"]).await.chat_id;
    // Both cached as members.
    for (user, key) in [("alice", "a0"), ("bob", "b0")] {
        f.store
            .append_message(new_message(&chat, user, key, 1))
            .await
            .unwrap();
    }

    let holder = f.hold_writer().await;
    let a1 = f.queue_append(new_message(&chat, "alice", "a1", 10)).await;
    let store = f.store.clone();
    let id = chat.clone();
    let add = f
        .queue(async move {
            store
                .change_members(&id, adding("alice".into(), vec!["carol".into()], 100), 11)
                .await
        })
        .await;
    let c1 = f.queue_append(new_message(&chat, "carol", "c1", 12)).await;
    let store = f.store.clone();
    let id = chat.clone();
    let leave = f
        .queue(async move {
            store
                .change_members(&id, removing("bob".into(), "bob".into()), 13)
                .await
        })
        .await;
    let b1 = f.queue_append(new_message(&chat, "bob", "b1", 14)).await;
    let a2 = f.queue_append(new_message(&chat, "alice", "a2", 15)).await;
    holder.execute_batch("COMMIT").unwrap();

    assert_eq!(a1.await.unwrap().unwrap().message.seq, 3);
    let added = add.await.unwrap().unwrap();
    let carol = added.member("carol").expect("carol joined");
    assert_eq!(
        carol.joined_seq, 3,
        "carol joins after the append before her"
    );
    assert_eq!(c1.await.unwrap().unwrap().message.seq, 4);
    assert!(leave.await.unwrap().unwrap().member("bob").is_none());
    assert!(matches!(b1.await.unwrap(), Err(Error::PermissionDenied(_))));
    assert_eq!(a2.await.unwrap().unwrap().message.seq, 5);

    let stored = f.store.messages(&chat, all(0), 10).await.unwrap();
    assert_eq!(seqs(&stored), [1, 2, 3, 4, 5]);
    let row = f.store.chat(&chat).await.unwrap().unwrap();
    assert_eq!((row.last_seq, row.last_activity_at), (5, 15));
    let events: Vec<u64> = message_events(&f.committed())
        .into_iter()
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(events, [1, 2, 3, 4, 5]);
    f.store.close().await;
}

/// A repeated client_msg_id, in the same batch as its original and in a later one, gets the
/// original back and takes no seq; used in another chat it is refused and takes none there.
#[tokio::test]
async fn a_repeated_key_takes_no_seq_within_or_across_batches() {
    let mut f = open();
    let chat = group(&*f.store, "g", &["alice", "bob"]).await.chat_id;
    let other = group(&*f.store, "h", &["alice", "bob"]).await.chat_id;

    let holder = f.hold_writer().await;
    let first = f.queue_append(new_message(&chat, "alice", "k1", 10)).await;
    let again = f.queue_append(new_message(&chat, "alice", "k1", 11)).await;
    let elsewhere = f.queue_append(new_message(&other, "alice", "k1", 12)).await;
    let second = f.queue_append(new_message(&chat, "alice", "k2", 13)).await;
    let bobs = f.queue_append(new_message(&chat, "bob", "k1", 14)).await;
    holder.execute_batch("COMMIT").unwrap();

    let first = first.await.unwrap().unwrap();
    assert_eq!((first.message.seq, first.duplicate), (1, false));
    let again = again.await.unwrap().unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    assert!(matches!(
        elsewhere.await.unwrap(),
        Err(Error::InvalidArgument {
            field: "client_msg_id",
            ..
        })
    ));
    assert_eq!(second.await.unwrap().unwrap().message.seq, 2);
    // The key is the sender's own: another sender's same key is a new message.
    assert_eq!(bobs.await.unwrap().unwrap().message.seq, 3);

    let later = f
        .store
        .append_message(new_message(&chat, "alice", "k1", 20))
        .await
        .unwrap();
    assert!(later.duplicate);
    assert_eq!(later.message, first.message);
    let next = f
        .store
        .append_message(new_message(&chat, "alice", "k3", 21))
        .await
        .unwrap();
    assert_eq!((next.message.seq, next.duplicate), (4, false));

    let stored = f.store.messages(&chat, all(0), 10).await.unwrap();
    assert_eq!(seqs(&stored), [1, 2, 3, 4]);
    assert_eq!(stored[0].content.text, "text of k1");
    assert_eq!(f.store.chat(&chat).await.unwrap().unwrap().last_seq, 4);
    assert_eq!(f.store.chat(&other).await.unwrap().unwrap().last_seq, 0);
    assert!(f
        .store
        .messages(&other, all(0), 10)
        .await
        .unwrap()
        .is_empty());
    // Only new messages went out, once each.
    assert_eq!(
        message_events(&f.committed()),
        [1, 2, 3, 4].map(|s| (chat.clone(), s))
    );
    f.store.close().await;
}

/// The append's insert skips only a repeated `(sender, client_msg_id)`: a clash on the primary
/// key (a seq taken twice, which would be a bug) still fails it, and so fails the batch.
#[tokio::test]
async fn the_insert_skips_a_repeated_key_and_nothing_else() {
    let f = open();
    let chat = group(&*f.store, "g", &["alice", "bob"]).await.chat_id;
    f.store
        .append_message(new_message(&chat, "alice", "k1", 1))
        .await
        .unwrap();
    let conn = f.raw();
    let insert = |seq: i64, key: &str| {
        conn.execute(
            super::writes::INSERT_MESSAGE,
            rusqlite::params![
                "id",
                chat,
                seq,
                "alice",
                "phone",
                key,
                "",
                None::<Vec<u8>>,
                None::<String>,
                2
            ],
        )
    };
    assert_eq!(insert(2, "k1").unwrap(), 0, "a repeated key is skipped");
    assert!(insert(1, "k2").is_err(), "a taken seq is an error");
    assert_eq!(insert(2, "k2").unwrap(), 1);
}
