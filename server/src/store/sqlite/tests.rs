//! Tests of the embedded store through the [`Store`] trait, each on a fresh database in a
//! temporary directory: the guarantees the rest of the server leans on (gap-free seqs per chat,
//! idempotent appends, membership checks, forward-only cursors, all-or-nothing batches, paging)
//! and the outbox that carries the commits. They mirror the PostgreSQL store's tests where those
//! apply to a single writer.

use super::*;
use crate::domain::model::{ChatKind, Content, Event, ReceiptKind, Role};
use crate::store::{Appended, ResumeChat};
use std::time::{Duration, Instant};
use tempfile::TempDir;

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
    /// What has come out on the outbox so far. The writer hands a batch's events over before it
    /// answers the batch's callers, so after an awaited write its events are all there.
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

fn new_message(chat_id: &str, user: &str, cmid: &str, at: i64) -> NewMessage {
    NewMessage {
        chat_id: chat_id.to_string(),
        sender_user_id: user.to_string(),
        sender_device_id: format!("{user}-phone"),
        client_msg_id: cmid.to_string(),
        content: Content {
            text: format!("text of {cmid}"),
            ..Default::default()
        },
        created_at: at,
    }
}

fn new_group(title: &str, users: &[&str], at: i64) -> NewChat {
    let members = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let role = if i == 0 { Role::Admin } else { Role::Member };
            (u.to_string(), role)
        })
        .collect();
    NewChat {
        kind: ChatKind::Group,
        title: title.into(),
        direct_key: None,
        members,
        created_at: at,
    }
}

async fn group(store: &dyn Store, title: &str, users: &[&str]) -> Chat {
    store
        .create_chat(new_group(title, users, 1_000))
        .await
        .expect("create chat")
        .0
}

fn cursor(chat_id: &str, user: &str, device: &str, seq: u64, kind: ReceiptKind) -> CursorMove {
    CursorMove {
        user_id: user.into(),
        device_id: device.into(),
        chat_id: chat_id.into(),
        seq,
        kind,
        at: 7_000 + seq as i64,
    }
}

fn all(after: u64) -> SeqRange {
    SeqRange {
        after,
        before: u64::MAX,
        newest_first: false,
    }
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// The messages of the outbox events, as (chat, seq).
fn message_events(committed: &[Committed]) -> Vec<(String, u64)> {
    committed
        .iter()
        .filter_map(|c| match &c.event {
            Event::Message(m) => Some((m.chat_id.clone(), m.seq)),
            _ => None,
        })
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seqs_are_gap_free_per_chat_under_concurrent_appends() {
    let mut f = open();
    let a = group(&*f.store, "a", &["alice", "bob"]).await.chat_id;
    let b = group(&*f.store, "b", &["alice", "bob"]).await.chat_id;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = f.store.clone();
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let user = if t % 2 == 0 { "alice" } else { "bob" };
            // Several in flight per task, as a session pipelines its sends.
            let mut pending = Vec::new();
            for i in 0..25 {
                let chat = if i % 2 == 0 { &a } else { &b };
                let m = new_message(chat, user, &format!("{t}-{i}"), i);
                pending.push((chat.clone(), store.submit_message(m).await.unwrap()));
            }
            let mut got = Vec::new();
            for (chat, p) in pending {
                let r = p.await.unwrap();
                assert!(!r.duplicate);
                assert_eq!(r.message.chat_id, chat);
                got.push(r.message);
            }
            got
        }));
    }
    let mut by_chat: HashMap<String, Vec<u64>> = HashMap::new();
    for t in tasks {
        let got = t.await.unwrap();
        // One sender's messages to a chat are numbered in the order it submitted them.
        for chat in [&a, &b] {
            let mine: Vec<u64> = got
                .iter()
                .filter(|m| &m.chat_id == chat)
                .map(|m| m.seq)
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        }
        for m in got {
            by_chat.entry(m.chat_id.clone()).or_default().push(m.seq);
        }
    }
    // 4 tasks × 13 messages to `a`, 4 × 12 to `b`.
    for (chat, n) in [(&a, 52u64), (&b, 48)] {
        let mut answered = by_chat.remove(chat).unwrap();
        answered.sort_unstable();
        assert_eq!(answered, (1..=n).collect::<Vec<_>>());
        let stored = f.store.messages(chat, all(0), 1_000).await.unwrap();
        assert_eq!(seqs(&stored), (1..=n).collect::<Vec<_>>());
        assert_eq!(f.store.chat(chat).await.unwrap().unwrap().last_seq, n);
    }
    // The outbox carries every message once, each chat's in seq order, commit ids rising.
    let committed = f.committed();
    assert!(committed
        .windows(2)
        .all(|w| w[0].commit_id <= w[1].commit_id));
    let events = message_events(&committed);
    assert_eq!(events.len(), 100);
    for (chat, n) in [(&a, 52u64), (&b, 48)] {
        let in_chat: Vec<u64> = events
            .iter()
            .filter(|(c, _)| c == chat)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(in_chat, (1..=n).collect::<Vec<_>>());
    }
    f.store.close().await;
}

#[tokio::test]
async fn a_repeated_key_returns_the_original_and_stores_once() {
    let mut f = open();
    let s = &*f.store;
    let chat = group(s, "g", &["alice", "bob"]).await.chat_id;
    let other = group(s, "h", &["alice", "bob"]).await.chat_id;

    let first = s
        .append_message(new_message(&chat, "alice", "k1", 1))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.message.seq, 1);
    let mut retry = new_message(&chat, "alice", "k1", 2);
    retry.content.text = "a retry may not even carry the same text".into();
    let again = s.append_message(retry).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);

    // Queued back to back (most likely one batch): the second sees the first.
    let p1 = s
        .submit_message(new_message(&chat, "alice", "k2", 4))
        .await
        .unwrap();
    let p2 = s
        .submit_message(new_message(&chat, "alice", "k2", 5))
        .await
        .unwrap();
    // The key belongs to its sender: another sender may use it.
    let p3 = s
        .submit_message(new_message(&chat, "bob", "k2", 6))
        .await
        .unwrap();
    let p4 = s
        .submit_message(new_message(&other, "alice", "k2", 7))
        .await
        .unwrap();
    let (r1, r2, r3) = (p1.await.unwrap(), p2.await.unwrap(), p3.await.unwrap());
    assert!(!r1.duplicate && r2.duplicate && !r3.duplicate);
    assert_eq!(r1.message, r2.message);
    assert_eq!((r1.message.seq, r3.message.seq), (2, 3));
    assert!(matches!(
        p4.await,
        Err(Error::InvalidArgument {
            field: "client_msg_id",
            ..
        })
    ));

    let stored = s.messages(&chat, all(0), 100).await.unwrap();
    let keys: Vec<(&str, &str)> = stored
        .iter()
        .map(|m| (m.sender_user_id.as_str(), m.client_msg_id.as_str()))
        .collect();
    assert_eq!(keys, [("alice", "k1"), ("alice", "k2"), ("bob", "k2")]);
    assert_eq!(stored[0], *first.message);
    assert!(s.messages(&other, all(0), 100).await.unwrap().is_empty());
    // Duplicates are not news: only the stored messages went out.
    assert_eq!(
        message_events(&f.committed()),
        [(chat.clone(), 1), (chat.clone(), 2), (chat.clone(), 3)]
    );
    f.store.close().await;
}

#[tokio::test]
async fn refusals_do_not_spoil_their_batch() {
    let mut f = open();
    let s = &*f.store;
    let chat = group(s, "g", &["alice", "bob"]).await.chat_id;
    let nowhere = "f".repeat(32);
    let p1 = s
        .submit_message(new_message(&chat, "alice", "1", 1))
        .await
        .unwrap();
    let p2 = s
        .submit_message(new_message(&chat, "carol", "2", 2))
        .await
        .unwrap();
    let p3 = s
        .submit_message(new_message(&chat, "bob", "3", 3))
        .await
        .unwrap();
    let p4 = s
        .submit_message(new_message(&nowhere, "alice", "4", 4))
        .await
        .unwrap();
    // Comes back exactly as sent.
    let odd = "it's \\ \"q\" $$ '); DROP TABLE messages; -- \u{1F600} \n\t";
    let mut tricky = new_message(&chat, "alice", "5", 5);
    tricky.content.text = odd.into();
    tricky.content.ciphertext = vec![0, 1, 255];
    tricky
        .content
        .attributes
        .insert("'k\"".into(), "\\'\"".into());
    let p5 = s.submit_message(tricky).await.unwrap();
    assert_eq!(p1.await.unwrap().message.seq, 1);
    assert_eq!(p2.await.unwrap_err(), Error::not_member(&chat));
    assert_eq!(p3.await.unwrap().message.seq, 2);
    assert_eq!(p4.await.unwrap_err(), Error::chat_not_found(&nowhere));
    let appended = p5.await.unwrap().message;
    assert_eq!(appended.seq, 3);
    let stored = s.messages(&chat, all(2), 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].content.text, odd);
    assert_eq!(stored[0].content, appended.content);
    // Cursor moves share the batch, and their refusals too.
    let (c1, c2, c3) = tokio::join!(
        s.move_cursor(cursor(&chat, "bob", "phone", 9, ReceiptKind::Delivered)),
        s.move_cursor(cursor(&chat, "bob", "phone", 2, ReceiptKind::Read)),
        s.move_cursor(cursor(&chat, "carol", "phone", 1, ReceiptKind::Read)),
    );
    assert!(matches!(
        c1,
        Err(Error::InvalidArgument { field: "seq", .. })
    ));
    c2.unwrap();
    assert_eq!(c3.unwrap_err(), Error::not_member(&chat));
    let view = s.chat_view(&chat, "bob").await.unwrap().unwrap();
    assert_eq!((view.read_seq, view.unread_count), (2, 1));
    // A refused write leaves no event behind.
    assert_eq!(
        message_events(&f.committed()),
        [(chat.clone(), 1), (chat.clone(), 2), (chat.clone(), 3)]
    );
    f.store.close().await;
}

#[tokio::test]
async fn cursors_never_move_backwards() {
    let mut f = open();
    let store = f.store.clone();
    let s = &*store;
    let chat = group(s, "g", &["alice", "bob"]).await.chat_id;
    for i in 0..10 {
        s.append_message(new_message(&chat, "alice", &i.to_string(), i))
            .await
            .unwrap();
    }
    f.committed();
    s.move_cursor(cursor(&chat, "bob", "phone", 5, ReceiptKind::Delivered))
        .await
        .unwrap();
    // Behind the cursor: accepted, changes nothing.
    s.move_cursor(cursor(&chat, "bob", "phone", 3, ReceiptKind::Delivered))
        .await
        .unwrap();
    // A read below the delivered cursor moves only the read cursor.
    s.move_cursor(cursor(&chat, "bob", "phone", 4, ReceiptKind::Read))
        .await
        .unwrap();
    s.move_cursor(cursor(&chat, "bob", "phone", 2, ReceiptKind::Read))
        .await
        .unwrap();
    // Reading implies having received: the delivered cursor comes along.
    s.move_cursor(cursor(&chat, "bob", "laptop", 6, ReceiptKind::Read))
        .await
        .unwrap();
    let receipts: Vec<(ReceiptKind, String, u64)> = s
        .receipts(&chat, 0)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.kind, r.device_id.clone(), r.seq))
        .collect();
    assert_eq!(
        receipts,
        vec![
            (ReceiptKind::Delivered, "laptop".into(), 6),
            (ReceiptKind::Read, "laptop".into(), 6),
            (ReceiptKind::Delivered, "phone".into(), 5),
            (ReceiptKind::Read, "phone".into(), 4),
            (ReceiptKind::Read, String::new(), 6),
        ]
    );
    // Only the moves that moved something came out.
    let moved: Vec<(ReceiptKind, String, u64)> = f
        .committed()
        .iter()
        .filter_map(|c| match &c.event {
            Event::Receipt(r) => Some((r.kind, r.device_id.clone(), r.seq)),
            _ => None,
        })
        .collect();
    assert_eq!(
        moved,
        vec![
            (ReceiptKind::Delivered, "phone".into(), 5),
            (ReceiptKind::Read, "phone".into(), 4),
            (ReceiptKind::Delivered, "laptop".into(), 6),
            (ReceiptKind::Read, "laptop".into(), 6),
        ]
    );
    // The user's read position too: a device behind it does not pull it back.
    s.move_cursor(cursor(&chat, "bob", "phone", 5, ReceiptKind::Read))
        .await
        .unwrap();
    let view = s.chat_view(&chat, "bob").await.unwrap().unwrap();
    assert_eq!((view.read_seq, view.unread_count), (6, 4));
    f.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cursor_moves_keep_the_highest() {
    let f = open();
    let chat = group(&*f.store, "g", &["alice", "bob"]).await.chat_id;
    for i in 0..50 {
        f.store
            .append_message(new_message(&chat, "alice", &i.to_string(), i))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 1..=50u64 {
        let store = f.store.clone();
        let seq = (i * 37) % 50 + 1;
        let chat = chat.clone();
        tasks.push(tokio::spawn(async move {
            store
                .move_cursor(cursor(&chat, "bob", "phone", seq, ReceiptKind::Read))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let receipts: Vec<(ReceiptKind, String, u64)> = f
        .store
        .receipts(&chat, 0)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.kind, r.device_id.clone(), r.seq))
        .collect();
    assert_eq!(
        receipts,
        vec![
            (ReceiptKind::Delivered, "phone".into(), 50),
            (ReceiptKind::Read, "phone".into(), 50),
            (ReceiptKind::Read, String::new(), 50),
        ]
    );
    f.store.close().await;
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
async fn history_pages_both_ways() {
    let f = open();
    let s = &*f.store;
    let chat = group(s, "g", &["alice", "bob"]).await.chat_id;
    for i in 1..=10 {
        s.append_message(new_message(&chat, "alice", &i.to_string(), 1_000 + i))
            .await
            .unwrap();
    }
    // Newest first, each page before the oldest of the last.
    let mut pages = Vec::new();
    let mut before = u64::MAX;
    loop {
        let range = SeqRange {
            after: 0,
            before,
            newest_first: true,
        };
        let page = s.messages(&chat, range, 4).await.unwrap();
        let Some(last) = page.last() else { break };
        before = last.seq;
        pages.push(seqs(&page));
    }
    assert_eq!(pages, [vec![10, 9, 8, 7], vec![6, 5, 4, 3], vec![2, 1]]);
    // Oldest first, from a position.
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = s.messages(&chat, all(after), 4).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages.push(seqs(&page));
    }
    assert_eq!(pages, [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
    // Both ends are exclusive.
    let range = SeqRange {
        after: 3,
        before: 7,
        newest_first: false,
    };
    assert_eq!(
        seqs(&s.messages(&chat, range, 10).await.unwrap()),
        [4, 5, 6]
    );

    // Purged history is gone, but seqs go on from the chat's last seq.
    assert_eq!(s.purge_before(1_004, 2).await.unwrap(), 2);
    assert_eq!(s.purge_before(1_004, 10).await.unwrap(), 1);
    assert_eq!(
        seqs(&s.messages(&chat, all(0), 3).await.unwrap()),
        [4, 5, 6]
    );
    let next = s
        .append_message(new_message(&chat, "alice", "11", 2_000))
        .await
        .unwrap();
    assert_eq!(next.message.seq, 11);

    // The chat list pages by activity, most recent first.
    let quiet = group(s, "quiet", &["bob"]).await.chat_id;
    let other = group(s, "other", &["bob", "alice"]).await.chat_id;
    s.append_message(new_message(&other, "alice", "o", 1_500))
        .await
        .unwrap();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = s.list_chats("bob", after.clone(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(ActivityKey {
            last_activity_at: last.chat.last_activity_at,
            chat_id: last.chat.chat_id.clone(),
        });
        listed.extend(page.into_iter().map(|v| v.chat.chat_id));
    }
    assert_eq!(listed, [chat, other, quiet]);
    f.store.close().await;
}

#[tokio::test]
async fn members_joining_later_see_only_what_follows() {
    let f = open();
    let s = &*f.store;
    let chat = group(s, "g", &["alice", "bob"]).await.chat_id;
    for i in 1..=3 {
        s.append_message(new_message(&chat, "alice", &i.to_string(), i))
            .await
            .unwrap();
    }
    assert!(matches!(
        s.add_members(&chat, vec!["carol".into(), "dave".into()], 3, 2_000)
            .await,
        Err(Error::FailedPrecondition(_))
    ));
    let added = s
        .add_members(
            &chat,
            vec!["carol".into(), "carol".into(), "bob".into()],
            3,
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(added.members.len(), 3);
    assert_eq!(added.member("carol").unwrap().joined_seq, 3);
    let Membership::Member(access) = s.membership(&chat, "carol").await.unwrap() else {
        panic!("carol is a member");
    };
    assert_eq!((access.joined_seq, access.last_seq), (3, 3));
    assert!(s.register_device("carol", "tablet", 2_001).await.unwrap());
    assert!(!s.register_device("carol", "tablet", 2_002).await.unwrap());
    assert_eq!(
        s.resume_plan("carol", "tablet").await.unwrap().chats,
        [ResumeChat {
            chat_id: chat.clone(),
            joined_seq: 3,
            delivered_seq: 3,
            last_seq: 3,
        }]
    );
    let view = s.chat_view(&chat, "carol").await.unwrap().unwrap();
    assert_eq!((view.read_seq, view.unread_count), (3, 0));
    assert!(view.last_message.is_none());

    // The last admin leaving hands the group to the longest-standing member.
    let after = s.remove_member(&chat, "alice", 3_000).await.unwrap();
    assert_eq!(after.member("bob").unwrap().role, Role::Admin);
    assert_eq!(
        s.remove_member(&chat, "alice", 3_001).await.map(drop),
        Err(Error::NotFound(format!(
            "alice is not a member of chat {chat}"
        )))
    );
    assert_eq!(
        s.append_message(new_message(&chat, "alice", "late", 3_002))
            .await
            .map(drop),
        Err(Error::not_member(&chat))
    );
    assert_eq!(
        s.contacts_among("carol", vec!["bob".into(), "alice".into(), "zed".into()])
            .await
            .unwrap(),
        ["bob"]
    );
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
