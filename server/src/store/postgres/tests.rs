//! Integration tests against a real PostgreSQL: `CHATD_TEST_DATABASE_URL` names a server where
//! the tests may create databases (each test makes its own, and drops it when it passes).
//! They are `#[ignore]`d, so a plain `cargo test` lists them as ignored; `scripts/test` runs them
//! (`-- --ignored`) with its services, and run without that variable they fail.
//!
//! The store contract runs here as the conformance suite ([`crate::store::conformance`]), the
//! same tests as on SQLite; below it, what needs several nodes, the outbox relay or PostgreSQL
//! itself, and `answers_like_sqlite`, which compares the two stores' answers line by line.

use super::*;
use crate::domain::membership::{adding, removing};
use crate::store::conformance::{conformance_suite, Backend};
use crate::store::outbox::{self as wire, OutboxRecord, OutboxSink};
use crate::store::sqlite::SqliteStore;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The lead spawns these: their futures must be `Send` (sqlx makes that easy to lose).
#[allow(dead_code)]
fn futures_are_send(store: Arc<PgStore>, pool: PgPool, relay: OutboxRelay) {
    fn send<T: Send>(_: T) {}
    send(async { PgStore::migrate("").await });
    send(async {
        let options = PgOptions {
            url: String::new(),
            pool: 1,
            migrate: true,
        };
        PgStore::connect(&options).await
    });
    send(async move { store.shared_secret().await });
    send(async move { outbox_depth(&pool).await });
    send(relay.run(CancellationToken::new()));
}

fn admin_url() -> String {
    match std::env::var("CHATD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "CHATD_TEST_DATABASE_URL is not set: this test needs PostgreSQL. Run `scripts/test`, or \
             start it (`eval \"$(scripts/services up)\"`), export \
             CHATD_TEST_DATABASE_URL=$CHATD_DATABASE_URL and run the ignored tests \
             (`cargo test --workspace --lib -- --ignored --skip bench_`)"
        ),
    }
}

/// `url` with its database (the path) replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path = base[authority..]
        .find('/')
        .map(|i| i + authority)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..path]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `url` with its host and port replaced (user and password kept).
fn with_address(url: &str, host: &str, port: u16) -> String {
    let authority = url.find("://").map(|i| i + 3).unwrap_or(0);
    let end = url[authority..]
        .find(['/', '?'])
        .map(|i| i + authority)
        .unwrap_or(url.len());
    let userinfo = url[authority..end]
        .rfind('@')
        .map(|i| &url[authority..authority + i + 1])
        .unwrap_or("");
    format!(
        "{}{userinfo}{host}:{port}{}",
        &url[..authority],
        &url[end..]
    )
}

struct TestDb {
    admin: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let admin = admin_url();
        let name = format!("chatd_test_{}", ids::new_id());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("cannot connect to CHATD_TEST_DATABASE_URL");
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let _ = conn.close().await;
        let url = with_database(&admin, &name);
        TestDb { admin, name, url }
    }

    fn options(&self, migrate: bool) -> PgOptions {
        PgOptions {
            url: self.url.clone(),
            pool: 8,
            migrate,
        }
    }

    /// A node: a store whose commit channel is drained (and counted) in the background.
    async fn node(&self) -> (Arc<PgStore>, Arc<Mutex<Vec<Committed>>>) {
        let (store, rx) = PgStore::connect(&self.options(true))
            .await
            .expect("connect");
        (store, drain(rx))
    }

    async fn remove(self) {
        let mut conn = PgConnection::connect(&self.admin).await.expect("connect");
        let _ = sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await;
    }
}

use parking_lot::Mutex;

fn drain(mut rx: mpsc::Receiver<Committed>) -> Arc<Mutex<Vec<Committed>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            out.lock().push(c);
        }
    });
    seen
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

async fn group(store: &dyn Store, title: &str, users: &[&str]) -> Chat {
    let members = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let role = if i == 0 { Role::Admin } else { Role::Member };
            (u.to_string(), role)
        })
        .collect();
    store
        .create_chat(NewChat {
            kind: ChatKind::Group,
            title: title.into(),
            direct_key: None,
            members,
            created_at: 1_000,
        })
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

#[derive(Default)]
struct RecordingSink {
    batches: Mutex<Vec<Vec<OutboxRecord>>>,
    /// Publishes to refuse before accepting.
    refuse: AtomicUsize,
    attempts: AtomicUsize,
}

#[async_trait]
impl OutboxSink for RecordingSink {
    async fn publish(&self, batch: &[OutboxRecord]) -> Result<()> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Unavailable("sink refuses (test)".into()));
        }
        self.batches.lock().push(batch.to_vec());
        Ok(())
    }
}

impl RecordingSink {
    fn records(&self) -> Vec<OutboxRecord> {
        self.batches.lock().iter().flatten().cloned().collect()
    }
}

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The store contract (the conformance suite), each test on a database of its own

/// A fresh store on a database of its own, dropped by [`TestDb::remove`] after a test that
/// passed (one that failed leaves it behind to look at).
async fn open_backend() -> (Backend, TestDb) {
    let db = TestDb::new().await;
    let (store, outbox) = PgStore::connect(&db.options(true)).await.expect("connect");
    (Backend::new(store, outbox), db)
}

conformance_suite! {
    open: open_backend,
    cleanup: TestDb::remove,
    #[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
}

// ---------------------------------------------------------------------------------------------
// Several nodes, the outbox relay, what only PostgreSQL shows

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn two_nodes_append_concurrently_with_gap_free_seqs() {
    let db = TestDb::new().await;
    // Both nodes start at once and migrate: the advisory lock lets one of them do it.
    let ((a, a_local), (b, b_local)) = tokio::join!(db.node(), db.node());
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut chats = Vec::new();
    for i in 0..3 {
        chats.push(group(&*a, &format!("g{i}"), &refs).await.chat_id);
    }
    let chats = Arc::new(chats);
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let (store, other) = if t % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        let chats = chats.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{}", t % 8);
            let mut acked = Vec::new();
            // Pipelined: several sends in flight, committed in the order they were sent.
            let mut pending = std::collections::VecDeque::new();
            for j in 0..120usize {
                let chat = &chats[j % 3];
                let m = new_message(chat, &user, &format!("t{t}-{j}"), 2_000 + j as i64);
                pending.push_back(store.submit_message(m).await.expect("queued"));
                if pending.len() >= 8 {
                    let done = pending.pop_front().expect("pending").await.expect("append");
                    assert!(!done.duplicate);
                    acked.push(done.message);
                }
            }
            for p in pending {
                let done = p.await.expect("append");
                assert!(!done.duplicate);
                acked.push(done.message);
            }
            // A client retrying on the other node meets its original.
            for m in acked.iter().step_by(10) {
                let again = other
                    .append_message(new_message(&m.chat_id, &user, &m.client_msg_id, 9))
                    .await
                    .expect("retry");
                assert!(again.duplicate);
                assert_eq!(again.message.message_id, m.message_id);
                assert_eq!(again.message.seq, m.seq);
            }
            (user, acked)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        let (user, messages) = t.await.expect("task");
        // One sender's messages in one chat carry increasing seqs, in send order.
        for chat in chats.iter() {
            let seqs: Vec<u64> = messages
                .iter()
                .filter(|m| &m.chat_id == chat)
                .map(|m| m.seq)
                .collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{user}: {seqs:?}");
        }
        acked.extend(messages);
    }
    assert_eq!(acked.len(), 16 * 120);
    let pool = a.pool();
    for chat in chats.iter() {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, message_id FROM messages WHERE chat_id = $1 ORDER BY seq")
                .bind(chat)
                .fetch_all(&pool)
                .await
                .unwrap();
        let mine: Vec<&Arc<Message>> = acked.iter().filter(|m| &m.chat_id == chat).collect();
        assert_eq!(rows.len(), mine.len(), "one row per acked message");
        for (i, (seq, _)) in rows.iter().enumerate() {
            assert_eq!(*seq, i as i64 + 1, "seqs are gap-free");
        }
        let stored: HashMap<&str, i64> = rows.iter().map(|(s, id)| (id.as_str(), *s)).collect();
        for m in mine {
            assert_eq!(stored.get(m.message_id.as_str()), Some(&(m.seq as i64)));
        }
        let last: i64 = sqlx::query_scalar("SELECT last_seq FROM chats WHERE chat_id = $1")
            .bind(chat)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(last, rows.len() as i64);
        // Outbox: one row per message, in seq order within the chat.
        let payloads: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM outbox WHERE chat_id = $1 ORDER BY id")
                .bind(chat)
                .fetch_all(&pool)
                .await
                .unwrap();
        let seqs: Vec<u64> = payloads
            .iter()
            .filter_map(|p| match wire::decode_event(p).unwrap() {
                Event::Message(m) => {
                    // Numbered where it was stored (the seq may differ from the one the
                    // writer expected when another node appended meanwhile), and encoded as
                    // the wire encodes it.
                    assert_eq!(stored.get(m.message_id.as_str()), Some(&(m.seq as i64)));
                    assert_eq!(p, &wire::encode_event(&Event::Message(m.clone())));
                    Some(m.seq)
                }
                _ => None,
            })
            .collect();
        assert_eq!(seqs, (1..=rows.len() as u64).collect::<Vec<_>>());
        // Each node's local events carry the stored seqs too.
        let mut local: Vec<u64> = a_local
            .lock()
            .iter()
            .chain(b_local.lock().iter())
            .filter_map(|c| match &c.event {
                Event::Message(m) if &m.chat_id == chat => {
                    assert_eq!(stored.get(m.message_id.as_str()), Some(&(m.seq as i64)));
                    Some(m.seq)
                }
                _ => None,
            })
            .collect();
        local.sort();
        assert_eq!(local, (1..=rows.len() as u64).collect::<Vec<_>>());
    }
    a.close().await;
    b.close().await;
    db.remove().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn idempotent_retries_within_a_batch_and_across_nodes() {
    let db = TestDb::new().await;
    let (a, _) = db.node().await;
    let (b, _) = db.node().await;
    let chat = group(&*a, "g", &["alice", "bob"]).await.chat_id;
    let other = group(&*a, "h", &["alice", "bob"]).await.chat_id;

    let first = a
        .append_message(new_message(&chat, "alice", "k1", 1))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.message.seq, 1);
    let again = a
        .append_message(new_message(&chat, "alice", "k1", 2))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    let elsewhere = b
        .append_message(new_message(&chat, "alice", "k1", 3))
        .await
        .unwrap();
    assert!(elsewhere.duplicate);
    assert_eq!(elsewhere.message, first.message);

    // Queued together (this runtime runs the writer only when the test yields): one batch.
    let p1 = a
        .submit_message(new_message(&chat, "alice", "k2", 4))
        .await
        .unwrap();
    let p2 = a
        .submit_message(new_message(&chat, "alice", "k2", 5))
        .await
        .unwrap();
    let p3 = a
        .submit_message(new_message(&chat, "bob", "k2", 6))
        .await
        .unwrap();
    let p4 = a
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

    // The same key sent to two nodes at once, for two chats: both batches pass their checks
    // while a third session holds the chats' rows, then race on the unique index; the loser
    // runs again and finds the winner's message.
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM chats WHERE chat_id = ANY($1) FOR UPDATE")
        .bind(vec![chat.clone(), other.clone()])
        .execute(&mut holder)
        .await
        .unwrap();
    let pa = a
        .submit_message(new_message(&chat, "alice", "k3", 8))
        .await
        .unwrap();
    let pb = b
        .submit_message(new_message(&other, "alice", "k3", 9))
        .await
        .unwrap();
    let (ha, hb) = (tokio::spawn(pa), tokio::spawn(pb));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    let (ra, rb) = (ha.await.unwrap(), hb.await.unwrap());
    let won = match (&ra, &rb) {
        (Ok(m), Err(Error::InvalidArgument { .. }))
        | (Err(Error::InvalidArgument { .. }), Ok(m)) => m,
        other => panic!("one node must win, the other see the key taken: {other:?}"),
    };
    assert!(!won.duplicate);
    // Same chat from two nodes: the chat lock orders them, the second sees a duplicate.
    sqlx::raw_sql("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM chats WHERE chat_id = $1 FOR UPDATE")
        .bind(&chat)
        .execute(&mut holder)
        .await
        .unwrap();
    let same_a = a
        .submit_message(new_message(&chat, "bob", "k3", 8))
        .await
        .unwrap();
    let same_b = b
        .submit_message(new_message(&chat, "bob", "k3", 8))
        .await
        .unwrap();
    let (hsa, hsb) = (tokio::spawn(same_a), tokio::spawn(same_b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    let (sa, sb) = (hsa.await.unwrap().unwrap(), hsb.await.unwrap().unwrap());
    assert_ne!(sa.duplicate, sb.duplicate);
    assert_eq!(sa.message, sb.message);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE client_msg_id = 'k3'")
        .fetch_one(&a.pool())
        .await
        .unwrap();
    assert_eq!(n, 2);
    a.close().await;
    b.close().await;
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn cursors_from_two_nodes_only_move_forward() {
    let db = TestDb::new().await;
    let (a, _) = db.node().await;
    let (b, _) = db.node().await;
    let chat = group(&*a, "g", &["alice", "bob"]).await.chat_id;
    for i in 0..50 {
        a.append_message(new_message(&chat, "alice", &i.to_string(), i))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 1..=50u64 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
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
    let receipts = a.receipts(&chat, 0).await.unwrap();
    let seqs: Vec<(ReceiptKind, String, u64)> = receipts
        .iter()
        .map(|r| (r.kind, r.device_id.clone(), r.seq))
        .collect();
    assert_eq!(
        seqs,
        vec![
            (ReceiptKind::Delivered, "phone".into(), 50),
            (ReceiptKind::Read, "phone".into(), 50),
            (ReceiptKind::Read, String::new(), 50),
        ]
    );
    a.close().await;
    b.close().await;
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn outbox_rows_are_relayed_in_order_and_deleted() {
    let db = TestDb::new().await;
    let (a, local) = db.node().await;
    let chat = group(&*a, "g", &["alice", "bob"]).await;
    a.change_members(
        &chat.chat_id,
        adding("alice".into(), vec!["carol".into()], 10),
        1_500,
    )
    .await
    .unwrap();
    for i in 1..=5 {
        a.append_message(new_message(
            &chat.chat_id,
            "alice",
            &i.to_string(),
            2_000 + i,
        ))
        .await
        .unwrap();
    }
    a.move_cursor(cursor(
        &chat.chat_id,
        "bob",
        "phone",
        3,
        ReceiptKind::Delivered,
    ))
    .await
    .unwrap();
    a.move_cursor(cursor(&chat.chat_id, "bob", "phone", 4, ReceiptKind::Read))
        .await
        .unwrap();
    a.change_members(
        &chat.chat_id,
        removing("carol".into(), "carol".into()),
        3_000,
    )
    .await
    .unwrap();
    // Another chat, to see that order holds per chat.
    let other = group(&*a, "h", &["dave", "erin"]).await;
    a.append_message(new_message(&other.chat_id, "dave", "x", 4_000))
        .await
        .unwrap();
    let describe = |e: &Event| match e {
        Event::Message(m) => format!("{}:message {}", m.chat_id, m.seq),
        Event::Chat(c) => format!("{}:chat {:?}", c.chat.chat_id, c.kind),
        Event::Receipt(r) => format!("{}:receipt {:?} {}", r.chat_id, r.kind, r.seq),
        other => format!("{other:?}"),
    };
    let c = &chat.chat_id;
    let expected: Vec<String> = [
        format!("{c}:chat Created"),
        format!("{c}:chat MemberAdded"),
        format!("{c}:message 1"),
        format!("{c}:message 2"),
        format!("{c}:message 3"),
        format!("{c}:message 4"),
        format!("{c}:message 5"),
        format!("{c}:receipt Delivered 3"),
        format!("{c}:receipt Delivered 4"),
        format!("{c}:receipt Read 4"),
        format!("{c}:chat MemberRemoved"),
        format!("{}:chat Created", other.chat_id),
        format!("{}:message 1", other.chat_id),
    ]
    .into();
    // The local channel: the same events, in commit order, commit ids counting up from 1.
    wait_for("local commits", Duration::from_secs(5), async || {
        local.lock().len() == expected.len()
    })
    .await;
    {
        let local = local.lock();
        let seen: Vec<String> = local.iter().map(|c| describe(&c.event)).collect();
        assert_eq!(seen, expected);
        assert_eq!(local[0].commit_id, 1);
        assert!(local.windows(2).all(|w| w[0].commit_id <= w[1].commit_id));
    }
    let pool = a.pool();
    assert_eq!(outbox_depth(&pool).await.unwrap(), expected.len() as i64);

    let sink = Arc::new(RecordingSink::default());
    sink.refuse.store(2, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(pool.clone(), sink.clone()).run(stop.clone()));
    wait_for("the relay", Duration::from_secs(10), async || {
        outbox_depth(&pool).await.unwrap() == 0
    })
    .await;
    assert!(
        sink.attempts.load(Ordering::SeqCst) >= 3,
        "refused twice, then retried"
    );
    let records = sink.records();
    assert!(records.windows(2).all(|w| w[0].id < w[1].id));
    let relayed: Vec<String> = records
        .iter()
        .map(|r| {
            let e = wire::decode_event(&r.payload).unwrap();
            assert_eq!(r.key, event_chat(&e));
            describe(&e)
        })
        .collect();
    assert_eq!(relayed, expected);

    // Woken by NOTIFY: a new message goes out quickly.
    let before = Instant::now();
    a.append_message(new_message(&other.chat_id, "erin", "y", 5_000))
        .await
        .unwrap();
    wait_for("the next message", Duration::from_secs(5), async || {
        sink.records().len() == expected.len() + 1
    })
    .await;
    eprintln!("relayed one message in {:?}", before.elapsed());
    stop.cancel();
    relay.await.unwrap();
    a.close().await;
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn only_the_lock_holder_relays_and_another_takes_over() {
    let db = TestDb::new().await;
    let (a, _) = db.node().await;
    let chat = group(&*a, "g", &["alice", "bob"]).await.chat_id;
    let pool = a.pool();
    let sinks = [
        Arc::new(RecordingSink::default()),
        Arc::new(RecordingSink::default()),
    ];
    let stops = [CancellationToken::new(), CancellationToken::new()];
    let relays: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(OutboxRelay::new(pool.clone(), sinks[i].clone()).run(stops[i].clone()))
        })
        .collect();
    for i in 0..100 {
        a.append_message(new_message(&chat, "alice", &format!("a{i}"), i))
            .await
            .unwrap();
    }
    wait_for("relaying", Duration::from_secs(10), async || {
        outbox_depth(&pool).await.unwrap() == 0
    })
    .await;
    let counts = [sinks[0].records().len(), sinks[1].records().len()];
    assert_eq!(
        counts[0] + counts[1],
        101,
        "each row exactly once: {counts:?}"
    );
    assert!(counts.contains(&0), "one leader: {counts:?}");
    let leader = if counts[0] > 0 { 0 } else { 1 };
    stops[leader].cancel();
    let mut relays = relays.into_iter();
    let (r0, r1) = (relays.next().unwrap(), relays.next().unwrap());
    if leader == 0 { r0 } else { r1 }.await.unwrap();
    for i in 0..10 {
        a.append_message(new_message(&chat, "bob", &format!("b{i}"), i))
            .await
            .unwrap();
    }
    wait_for("the take-over", Duration::from_secs(10), async || {
        outbox_depth(&pool).await.unwrap() == 0
    })
    .await;
    assert_eq!(sinks[1 - leader].records().len(), 10);
    let seqs: Vec<u64> = sinks[leader]
        .records()
        .iter()
        .chain(sinks[1 - leader].records().iter())
        .filter_map(|r| match wire::decode_event(&r.payload).unwrap() {
            Event::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=110).collect::<Vec<_>>());
    stops[1 - leader].cancel();
    a.close().await;
    db.remove().await;
}

/// The writer decides without locks, then its last statement takes them: a membership or a
/// cursor that changed in between makes that statement fail as a serialization failure, and
/// the batch runs again on what is there now.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn the_last_statement_refuses_decisions_that_went_stale() {
    let db = TestDb::new().await;
    let (a, _) = db.node().await;
    let chat = group(&*a, "g", &["alice", "bob"]).await.chat_id;
    a.move_cursor(cursor(&chat, "bob", "phone", 0, ReceiptKind::Delivered))
        .await
        .unwrap();
    a.append_message(new_message(&chat, "alice", "1", 1))
        .await
        .unwrap();
    a.move_cursor(cursor(&chat, "bob", "phone", 1, ReceiptKind::Delivered))
        .await
        .unwrap();
    let pool = a.pool();
    // (member chat, member user, cursor known, cursor delivered seq as the writer read it)
    let apply = |member: &'static str, known: bool, delivered: i64| {
        let (pool, chat) = (pool.clone(), chat.clone());
        async move {
            let e: Vec<String> = Vec::new();
            let n: Vec<i64> = Vec::new();
            sqlx::query(
                "SELECT * FROM chatd_writer_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                     $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26,
                     $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41,
                     $42)",
            )
            .bind(&e)
            .bind(vec![chat.clone()])
            .bind(vec!["bob"])
            .bind(vec![chat.clone()])
            .bind(vec![member])
            .bind(vec!["bob"])
            .bind(vec!["phone"])
            .bind(vec![chat.clone()])
            .bind(vec![known])
            .bind(vec![delivered])
            .bind(vec![7_001i64])
            .bind(vec![0i64])
            .bind(vec![0i64])
            .bind(vec![2i64])
            .bind(vec![9i64])
            .bind(vec![0i64])
            .bind(vec![0i64])
            .bind(&e)
            .bind(&e)
            .bind(&n)
            .bind(&e)
            .bind(&e)
            .bind(&e)
            .bind(&e)
            .bind(Vec::<Vec<u8>>::new())
            .bind(&e)
            .bind(&n)
            .bind(&e)
            .bind(&n)
            .bind(&n)
            .bind(&e)
            .bind(&e)
            .bind(&n)
            .bind(&n)
            .bind(&e)
            .bind(&n)
            .bind(&e)
            .bind(Vec::<Vec<u8>>::new())
            .bind(Vec::<Vec<u8>>::new())
            .bind(&e)
            .bind(&n)
            .bind(OUTBOX_CHANNEL)
            .execute(&pool)
            .await
        }
    };
    let code = |r: std::result::Result<_, sqlx::Error>| match r {
        Err(sqlx::Error::Database(d)) => d.code().map(|c| c.to_string()),
        other => panic!("expected a database error, got {other:?}"),
    };
    assert_eq!(
        code(apply("carol", true, 1).await).as_deref(),
        Some("40001")
    );
    assert_eq!(code(apply("bob", true, 0).await).as_deref(), Some("40001"));
    assert_eq!(code(apply("bob", false, 0).await).as_deref(), Some("40001"));
    // As read: the move goes through.
    apply("bob", true, 1).await.unwrap();
    let receipts = a.receipts(&chat, 0).await.unwrap();
    assert!(receipts
        .iter()
        .any(|r| r.user_id == "bob" && r.kind == ReceiptKind::Delivered && r.seq == 2));
    a.close().await;
    db.remove().await;
}

/// The relay reads from a lower bound; a row whose transaction took its id early and commits
/// late, after rows above it went out, still goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn a_row_that_commits_late_is_relayed_all_the_same() {
    let db = TestDb::new().await;
    let (a, _) = db.node().await;
    let chat = group(&*a, "g", &["alice", "bob"]).await.chat_id;
    let sink = Arc::new(RecordingSink::default());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(a.pool(), sink.clone()).run(stop.clone()));
    let mut late = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut late).await.unwrap();
    let late_id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (chat_id, payload) VALUES ('late', '') RETURNING id",
    )
    .fetch_one(&mut late)
    .await
    .unwrap();
    for round in 0..5 {
        for i in 0..20 {
            a.append_message(new_message(&chat, "alice", &format!("{round}-{i}"), i))
                .await
                .unwrap();
        }
        let want = 1 + 20 * (round + 1);
        wait_for("relaying", Duration::from_secs(10), async || {
            sink.records().len() == want
        })
        .await;
        // Several reads pass while the early id is still open.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(sink
        .records()
        .iter()
        .all(|r| r.id > late_id || r.key != "late"));
    sqlx::raw_sql("COMMIT").execute(&mut late).await.unwrap();
    wait_for("the late row", Duration::from_secs(5), async || {
        sink.records()
            .iter()
            .any(|r| r.id == late_id && r.key == "late")
    })
    .await;
    a.append_message(new_message(&chat, "alice", "last", 1))
        .await
        .unwrap();
    wait_for("everything", Duration::from_secs(10), async || {
        outbox_depth(&a.pool()).await.unwrap() == 0
    })
    .await;
    let records = sink.records();
    assert_eq!(records.len(), 1 + 100 + 1 + 1, "each row once");
    let seqs: Vec<u64> = records
        .iter()
        .filter_map(|r| match wire::decode_event(&r.payload) {
            Ok(Event::Message(m)) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=101).collect::<Vec<_>>());
    stop.cancel();
    relay.await.unwrap();
    let _ = late.close().await;
    a.close().await;
    db.remove().await;
}

// ---------------------------------------------------------------------------------------------
// Same answers as SQLite

/// A run through every method with its answers as text, chat and message ids replaced by
/// names, to compare the two stores line by line.
async fn scenario(s: &dyn Store) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut names: Vec<(String, String)> = Vec::new();
    macro_rules! log {
        ($($arg:tt)*) => { out.push(format!($($arg)*)) };
    }
    fn chat_text(c: &Chat) -> String {
        format!(
            "{} {:?} {:?} last_seq={} created={} activity={} members={:?}",
            c.chat_id, c.kind, c.title, c.last_seq, c.created_at, c.last_activity_at, c.members
        )
    }
    fn message_text(m: &Message) -> String {
        format!(
            "{}#{} {}/{} {} {:?} at {}",
            m.chat_id,
            m.seq,
            m.sender_user_id,
            m.sender_device_id,
            m.client_msg_id,
            m.content,
            m.created_at
        )
    }
    fn view_text(v: &ChatView) -> String {
        format!(
            "{} read={} unread={} last={:?}",
            chat_text(&v.chat),
            v.read_seq,
            v.unread_count,
            v.last_message.as_ref().map(message_text)
        )
    }
    let new_group = |title: &str, members: Vec<(String, Role)>, at| NewChat {
        kind: ChatKind::Group,
        title: title.into(),
        direct_key: None,
        members,
        created_at: at,
    };
    let (g1, new) = s
        .create_chat(new_group(
            "g1",
            vec![("alice".into(), Role::Admin), ("bob".into(), Role::Member)],
            1_000,
        ))
        .await
        .unwrap();
    names.push((g1.chat_id.clone(), "G1".into()));
    log!("create g1: {} {new}", chat_text(&g1));
    let direct = NewChat {
        kind: ChatKind::Direct,
        title: String::new(),
        direct_key: Some("alice\nbob".into()),
        members: vec![("alice".into(), Role::Member), ("bob".into(), Role::Member)],
        created_at: 1_100,
    };
    let (d1, new) = s.create_chat(direct.clone()).await.unwrap();
    names.push((d1.chat_id.clone(), "D1".into()));
    log!("create d1: {} {new}", chat_text(&d1));
    let (d1b, new) = s.create_chat(direct).await.unwrap();
    log!("create d1 again: {} {new}", chat_text(&d1b));
    let g1 = g1.chat_id;
    let d1 = d1.chat_id;
    log!(
        "register: {:?} {:?}",
        s.register_device("bob", "phone", 1_200).await,
        s.register_device("bob", "phone", 1_300).await
    );
    for (i, (chat, user, cmid)) in [
        (&g1, "alice", "m1"),
        (&g1, "alice", "m2"),
        (&g1, "bob", "b1"),
        (&g1, "carol", "c1"),
        (&d1, "bob", "d1"),
        (&g1, "alice", "m2"),
        (&d1, "alice", "m1"),
        (&g1, "alice", "m3"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = new_message(chat, user, cmid, 3_000 + i as i64);
        if cmid == "m3" {
            m.content.ciphertext = vec![0, 1, 255];
            m.content.attributes.insert("k".into(), "v".into());
        }
        let r = s.append_message(m).await;
        log!(
            "append {user} {cmid}: {:?}",
            r.map(|a| (message_text(&a.message), a.duplicate))
        );
    }
    for (chat, user) in [(&g1, "bob"), (&g1, "alice"), (&g1, "carol"), (&d1, "bob")] {
        log!(
            "view {user}: {:?}",
            s.chat_view(chat, user)
                .await
                .map(|v| v.map(|v| view_text(&v)))
        );
        log!("membership {user}: {:?}", s.membership(chat, user).await);
    }
    for m in [
        cursor(&g1, "bob", "phone", 2, ReceiptKind::Delivered),
        cursor(&g1, "bob", "phone", 1, ReceiptKind::Delivered),
        cursor(&g1, "bob", "phone", 2, ReceiptKind::Read),
        cursor(&g1, "bob", "laptop", 1, ReceiptKind::Read),
        cursor(&g1, "bob", "phone", 99, ReceiptKind::Read),
        cursor(&g1, "carol", "phone", 1, ReceiptKind::Read),
        cursor(&"e".repeat(32), "bob", "phone", 1, ReceiptKind::Read),
        cursor(&g1, "alice", "web", 4, ReceiptKind::Read),
    ] {
        let what = format!("{} {} {:?} {}", m.user_id, m.device_id, m.kind, m.seq);
        log!("cursor {what}: {:?}", s.move_cursor(m).await);
    }
    log!("receipts 0: {:?}", s.receipts(&g1, 0).await);
    log!("receipts 2: {:?}", s.receipts(&g1, 2).await);
    log!(
        "add too many: {:?}",
        s.change_members(
            &g1,
            adding(
                "alice".into(),
                vec!["carol".into(), "dave".into(), "carol".into(), "bob".into()],
                3
            ),
            4_000
        )
        .await
        .map(|c| chat_text(&c))
    );
    log!(
        "add: {:?}",
        s.change_members(
            &g1,
            adding(
                "alice".into(),
                vec!["dave".into(), "carol".into(), "dave".into(), "bob".into()],
                10
            ),
            4_100
        )
        .await
        .map(|c| chat_text(&c))
    );
    log!(
        "add nothing new: {:?}",
        s.change_members(&g1, adding("alice".into(), vec!["bob".into()], 1), 4_200)
            .await
            .map(|c| chat_text(&c))
    );
    log!(
        "add to direct: {:?}",
        s.change_members(&d1, adding("alice".into(), vec!["carol".into()], 10), 4_300)
            .await
            .map(|c| chat_text(&c))
    );
    log!(
        "add to nothing: {:?}",
        s.change_members(
            &"e".repeat(32),
            adding("alice".into(), vec!["carol".into()], 10),
            4_300
        )
        .await
        .map(|c| chat_text(&c))
    );
    log!(
        "register carol tablet: {:?}",
        s.register_device("carol", "tablet", 4_400).await
    );
    for (user, device) in [("carol", "tablet"), ("bob", "phone"), ("bob", "laptop")] {
        // Ordered by chat id, which differs between the stores: order by name instead.
        let plan = s.resume_plan(user, device).await.map(|p| {
            let mut chats: Vec<String> = p
                .chats
                .iter()
                .map(|c| {
                    let name = names
                        .iter()
                        .find(|(id, _)| *id == c.chat_id)
                        .map(|(_, n)| n.as_str());
                    format!(
                        "{name:?} {} {} {}",
                        c.joined_seq, c.delivered_seq, c.last_seq
                    )
                })
                .collect();
            chats.sort();
            chats
        });
        log!("resume {user} {device}: {plan:?}");
    }
    log!("members: {:?}", s.chat_members(&g1).await);
    log!(
        "remove alice: {:?}",
        s.change_members(&g1, removing("alice".into(), "alice".into()), 4_500)
            .await
            .map(|c| chat_text(&c))
    );
    log!(
        "remove alice again: {:?}",
        s.change_members(&g1, removing("alice".into(), "alice".into()), 4_600)
            .await
            .map(|c| chat_text(&c))
    );
    log!(
        "remove from nothing: {:?}",
        s.change_members(
            &"e".repeat(32),
            removing("alice".into(), "alice".into()),
            4_600
        )
        .await
        .map(|c| chat_text(&c))
    );
    log!(
        "remove from direct: {:?}",
        s.change_members(&d1, removing("alice".into(), "alice".into()), 4_700)
            .await
            .map(|c| chat_text(&c))
    );
    log!(
        "append after removal: {:?}",
        s.append_message(new_message(&g1, "alice", "m9", 4_800))
            .await
            .map(|a| message_text(&a.message))
    );
    log!(
        "append dup after removal: {:?}",
        s.append_message(new_message(&g1, "alice", "m1", 4_800))
            .await
            .map(|a| message_text(&a.message))
    );
    let (g2, _) = s
        .create_chat(new_group("g2", vec![("bob".into(), Role::Admin)], 900))
        .await
        .unwrap();
    names.push((g2.chat_id.clone(), "G2".into()));
    let (g3, _) = s
        .create_chat(new_group("g3", vec![("bob".into(), Role::Admin)], 800))
        .await
        .unwrap();
    names.push((g3.chat_id.clone(), "G3".into()));
    let all = s.list_chats("bob", None, 10).await.unwrap();
    log!(
        "list bob: {:?}",
        all.iter().map(view_text).collect::<Vec<_>>()
    );
    let mut after = None;
    loop {
        let page = s.list_chats("bob", after.clone(), 2).await.unwrap();
        log!(
            "page: {:?}",
            page.iter()
                .map(|v| v.chat.chat_id.clone())
                .collect::<Vec<_>>()
        );
        let Some(last) = page.last() else { break };
        after = Some(ActivityKey {
            last_activity_at: last.chat.last_activity_at,
            chat_id: last.chat.chat_id.clone(),
        });
    }
    for range in [
        SeqRange {
            after: 0,
            before: u64::MAX,
            newest_first: false,
        },
        SeqRange {
            after: 1,
            before: 4,
            newest_first: true,
        },
        SeqRange {
            after: 0,
            before: u64::MAX,
            newest_first: true,
        },
    ] {
        log!(
            "messages {range:?}: {:?}",
            s.messages(&g1, range, 2)
                .await
                .map(|ms| ms.iter().map(message_text).collect::<Vec<_>>())
        );
    }
    log!(
        "contacts: {:?}",
        s.contacts_among(
            "carol",
            vec![
                "bob".into(),
                "alice".into(),
                "zed".into(),
                "bob".into(),
                "carol".into()
            ]
        )
        .await
    );
    s.record_last_seen("bob", 5_000).await.unwrap();
    s.record_last_seen("bob", 4_000).await.unwrap();
    s.record_last_seen("dave", 4_500).await.unwrap();
    // Queued writes: another write through the same queue has waited for them.
    let _ = s
        .move_cursor(cursor(&g1, "bob", "phone", 1, ReceiptKind::Delivered))
        .await;
    let seen = s
        .last_seen(vec!["bob".into(), "dave".into(), "zed".into()])
        .await
        .unwrap();
    log!(
        "last seen: {:?}",
        seen.into_iter().collect::<BTreeMap<_, _>>()
    );
    log!("purge: {:?}", s.purge_before(3_002, 1).await);
    log!("purge: {:?}", s.purge_before(3_002, 10).await);
    log!(
        "after purge: {:?}",
        s.messages(
            &g1,
            SeqRange {
                after: 0,
                before: u64::MAX,
                newest_first: false
            },
            10
        )
        .await
        .map(|ms| ms.iter().map(message_text).collect::<Vec<_>>())
    );
    log!(
        "view after purge: {:?}",
        s.chat_view(&g1, "dave")
            .await
            .map(|v| v.map(|v| view_text(&v)))
    );
    log!("chat nothing: {:?}", s.chat(&"e".repeat(32)).await);
    log!(
        "chat g2: {:?}",
        s.chat(&g2.chat_id).await.map(|c| c.map(|c| chat_text(&c)))
    );
    log!("ping: {:?}", s.ping().await);
    out.into_iter()
        .map(|mut line| {
            for (id, name) in &names {
                line = line.replace(id.as_str(), name);
            }
            line
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn answers_like_sqlite() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (sqlite, rx) = SqliteStore::open(dir.path()).unwrap();
    let _sqlite_commits = drain(rx);
    let expected = scenario(&*sqlite).await;
    sqlite.close().await;
    let (pg, _) = db.node().await;
    let got = scenario(&*pg).await;
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(g, e, "line {i} differs");
    }
    assert_eq!(got.len(), expected.len());
    pg.close().await;
    db.remove().await;
}

// ---------------------------------------------------------------------------------------------
// Migrations, the shared secret, failures

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn migrations_run_once_and_are_required() {
    let db = TestDb::new().await;
    let refused = PgStore::connect(&db.options(false))
        .await
        .err()
        .expect("no schema yet");
    assert!(
        matches!(&refused, Error::FailedPrecondition(m) if m.contains("chatd migrate") && m.contains("CHATD_MIGRATE=auto")),
        "{refused:?}"
    );
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgStore::migrate(&url).await })
        })
        .collect();
    let mut total = 0;
    for r in runs {
        total += r.await.unwrap().unwrap();
    }
    assert_eq!(
        total,
        super::migrate::latest() as u32,
        "each migration once"
    );
    assert_eq!(PgStore::migrate(&db.url).await.unwrap(), 0);
    let (a, _) = PgStore::connect(&db.options(false)).await.unwrap();
    let (b, _) = PgStore::connect(&db.options(false)).await.unwrap();
    let (sa, sb) = tokio::join!(a.shared_secret(), b.shared_secret());
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa, sb);
    assert_eq!(sa.len(), 64);
    assert_eq!(a.shared_secret().await.unwrap(), sa);
    a.close().await;
    b.close().await;
    db.remove().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn unreachable_server_is_unavailable_without_the_password() {
    let admin = admin_url();
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://someone:s3cret-pw@127.0.0.1:{port}/chatdb");
    let started = Instant::now();
    let err = PgStore::connect(&PgOptions {
        url,
        pool: 2,
        migrate: true,
    })
    .await
    .err()
    .expect("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(11));
    let Error::Unavailable(message) = &err else {
        panic!("{err:?}");
    };
    assert!(
        message.starts_with(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}/chatdb: "
        )),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    let _ = admin;
}

/// A TCP relay in front of PostgreSQL that the test can cut and restore.
struct Proxy {
    port: u16,
    target: (String, u16),
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: (String, u16), port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (t, to) = (tasks.clone(), target.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect((to.0.as_str(), to.1)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                t.lock().push(conn);
            }
        });
        tasks.lock().push(accept);
        Proxy {
            port,
            target,
            tasks,
        }
    }

    /// Closes the listener and every connection through it.
    fn cut(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) -> Proxy {
        Proxy::start(self.target.clone(), self.port).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn a_lost_server_is_unavailable_and_the_writer_recovers() {
    let db = TestDb::new().await;
    PgStore::migrate(&db.url).await.unwrap();
    let options = parse_url(&db.url).unwrap();
    let proxy = Proxy::start((options.get_host().to_string(), options.get_port()), 0).await;
    let url = with_address(&db.url, "127.0.0.1", proxy.port);
    let (store, rx) = PgStore::connect(&PgOptions {
        url,
        pool: 4,
        migrate: false,
    })
    .await
    .unwrap();
    let _commits = drain(rx);
    let chat = group(&*store, "g", &["alice", "bob"]).await.chat_id;
    store
        .append_message(new_message(&chat, "alice", "before", 1))
        .await
        .unwrap();

    proxy.cut();
    let started = Instant::now();
    let unavailable = |r: Result<String>| match r {
        Err(Error::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    };
    unavailable(
        store
            .append_message(new_message(&chat, "alice", "during", 2))
            .await
            .map(|a| a.message.message_id.clone()),
    );
    unavailable(
        store
            .move_cursor(cursor(&chat, "bob", "phone", 1, ReceiptKind::Delivered))
            .await
            .map(|_| String::new()),
    );
    unavailable(store.chat(&chat).await.map(|c| format!("{c:?}")));
    unavailable(store.ping().await.map(|_| String::new()));
    unavailable(
        store
            .create_chat(NewChat {
                kind: ChatKind::Group,
                title: "x".into(),
                direct_key: None,
                members: vec![("alice".into(), Role::Admin)],
                created_at: 1,
            })
            .await
            .map(|c| c.0.chat_id),
    );
    let took = started.elapsed();
    eprintln!("five calls answered Unavailable in {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");

    let _restored = proxy.restore().await;
    let mut recovered = None;
    for _ in 0..100 {
        match store
            .append_message(new_message(&chat, "alice", "during", 3))
            .await
        {
            Ok(a) => {
                recovered = Some(a);
                break;
            }
            Err(Error::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    let appended = recovered.expect("the writer recovers");
    assert_eq!(appended.message.seq, 2, "the failed append left no trace");
    store.chat(&chat).await.unwrap().unwrap();
    store.close().await;
    _restored.cut();
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (CHATD_TEST_DATABASE_URL): scripts/test runs it"]
async fn killed_connections_are_replaced_without_failing_calls() {
    let db = TestDb::new().await;
    let (a, _) = db.node().await;
    let chat = group(&*a, "g", &["alice", "bob"]).await.chat_id;
    let sink = Arc::new(RecordingSink::default());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(a.pool(), sink.clone()).run(stop.clone()));
    a.append_message(new_message(&chat, "alice", "1", 1))
        .await
        .unwrap();
    wait_for("relaying", Duration::from_secs(5), async || {
        sink.records().len() == 2
    })
    .await;
    // What a PostgreSQL restart or an idle-session timeout does to every connection.
    let mut admin = PgConnection::connect(&db.admin).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(&db.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(killed.len() >= 3, "writer, pool, relay: {killed:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = a
        .append_message(new_message(&chat, "alice", "2", 2))
        .await
        .unwrap();
    assert_eq!(second.message.seq, 2);
    a.chat(&chat).await.unwrap().unwrap();
    a.move_cursor(cursor(&chat, "bob", "phone", 2, ReceiptKind::Read))
        .await
        .unwrap();
    wait_for(
        "the relay to come back",
        Duration::from_secs(10),
        async || sink.records().len() == 5,
    )
    .await;
    stop.cancel();
    relay.await.unwrap();
    a.close().await;
    let _ = admin.close().await;
    db.remove().await;
}

/// `CHATD_TEST_DATABASE_URL=... cargo test -p chatd --release --lib store::postgres::tests::bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, needs PostgreSQL: run by hand (-p chatd --lib -- --ignored bench_appends)"]
async fn bench_appends() {
    let db = TestDb::new().await;
    let (a, _) = db.node().await;
    let senders = 200usize;
    let per_sender = 250usize;
    let users: Vec<String> = (0..senders).map(|i| format!("u{i}")).collect();
    let mut chats = Vec::new();
    for g in 0..50 {
        let members: Vec<&str> = users
            .iter()
            .skip(g * 4)
            .take(4)
            .map(String::as_str)
            .collect();
        chats.push(group(&*a, &format!("g{g}"), &members).await.chat_id);
    }
    let chats = Arc::new(chats);
    let sink = Arc::new(RecordingSink::default());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(a.pool(), sink.clone()).run(stop.clone()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (store, chats) = (a.clone(), chats.clone());
        tasks.push(tokio::spawn(async move {
            let user = format!("u{s}");
            let chat = &chats[s / 4];
            let mut pending = std::collections::VecDeque::new();
            for j in 0..per_sender {
                let m = new_message(chat, &user, &format!("{s}-{j}"), j as i64);
                pending.push_back(store.submit_message(m).await.unwrap());
                if pending.len() >= 4 {
                    pending.pop_front().unwrap().await.unwrap();
                }
            }
            for p in pending {
                p.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    let n = senders * per_sender;
    eprintln!(
        "{n} appends in {took:?}: {:.0}/s",
        n as f64 / took.as_secs_f64()
    );
    let pool = a.pool();
    wait_for("the relay", Duration::from_secs(60), async || {
        outbox_depth(&pool).await.unwrap() == 0
    })
    .await;
    eprintln!(
        "relayed {} rows {:?} after the start",
        sink.records().len(),
        started.elapsed()
    );
    stop.cancel();
    relay.await.unwrap();
    a.close().await;
    db.remove().await;
}

/// Send → ack and send → relayed latency of an open-loop load on a runtime kept busy, as a
/// node's sessions keep it: `BENCH_RATE` appends/s (default 2000) for `BENCH_SECS` (10) over
/// 100 two-member chats (`BENCH_NODES=2`: their members on two stores), each ack followed by
/// the peer's delivered cursor move, beside
/// `BENCH_BUSY` (8) tasks that each burn 300 µs every 2 ms (about a core in all). `BENCH_LOG`:
/// a tracing filter, e.g. `chatd::store::postgres=debug` for each batch's timings.
/// `CHATD_TEST_DATABASE_URL=... cargo test -p chatd --release --lib store::postgres::tests::bench_latency -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, needs PostgreSQL: run by hand (-p chatd --lib -- --ignored bench_latency)"]
async fn bench_latency() {
    let db = TestDb::new().await;
    let env = |k: &str, d: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let (rate, secs, busy) = (
        env("BENCH_RATE", 2000),
        env("BENCH_SECS", 10),
        env("BENCH_BUSY", 8),
    );
    let (a, _) = db.node().await;
    // With BENCH_NODES=2 each chat's second member writes through a second store, as when a
    // pair's devices sit on different nodes.
    let b = if env("BENCH_NODES", 1) >= 2 {
        db.node().await.0
    } else {
        a.clone()
    };
    let mut chats = Vec::new();
    for g in 0..100 {
        let (u, v) = (format!("u{}", 2 * g), format!("u{}", 2 * g + 1));
        chats.push((group(&*a, &format!("g{g}"), &[&u, &v]).await.chat_id, u, v));
    }
    let chats = Arc::new(chats);

    struct TimingSink {
        sent: Mutex<HashMap<String, Instant>>,
        relayed: Mutex<Vec<Duration>>,
    }
    #[async_trait]
    impl OutboxSink for TimingSink {
        async fn publish(&self, batch: &[OutboxRecord]) -> Result<()> {
            let now = Instant::now();
            let mut relayed = self.relayed.lock();
            let mut sent = self.sent.lock();
            for r in batch {
                if let Ok(Event::Message(m)) = wire::decode_event(&r.payload) {
                    if let Some(t) = sent.remove(&m.client_msg_id) {
                        relayed.push(now - t);
                    }
                }
            }
            Ok(())
        }
    }
    let sink = Arc::new(TimingSink {
        sent: Mutex::new(HashMap::new()),
        relayed: Mutex::new(Vec::new()),
    });
    let stop = CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(a.pool(), sink.clone()).run(stop.clone()));
    for _ in 0..busy {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let until = Instant::now() + Duration::from_micros(300);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    let acks = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now() + Duration::from_millis(100);
    let n = rate * secs;
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let (a, b) = (a.clone(), b.clone());
        let (chats, acks, sink) = (chats.clone(), acks.clone(), sink.clone());
        tasks.push(tokio::spawn(async move {
            let (chat, u, v) = &chats[(i % 100) as usize];
            let ((from, from_store), (to, to_store)) = if (i / 100) % 2 == 0 {
                ((u, &a), (v, &b))
            } else {
                ((v, &b), (u, &a))
            };
            let cmid = format!("m{i}");
            sink.sent.lock().insert(cmid.clone(), at);
            let appended = from_store
                .append_message(new_message(chat, from, &cmid, i as i64))
                .await
                .unwrap();
            acks.lock().push(at.elapsed());
            let seq = appended.message.seq;
            to_store
                .move_cursor(cursor(chat, to, "phone", seq, ReceiptKind::Delivered))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = start.elapsed();
    wait_for("the relay", Duration::from_secs(60), async || {
        sink.sent.lock().is_empty()
    })
    .await;
    stop.cancel();
    relay.await.unwrap();
    let pct = |v: &mut Vec<Duration>| {
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        format!(
            "p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        )
    };
    eprintln!(
        "{n} appends at {rate}/s in {sent:?} (busy {busy}): ack {}; relayed {}",
        pct(&mut acks.lock()),
        pct(&mut sink.relayed.lock())
    );
    a.close().await;
    b.close().await;
    db.remove().await;
}

/// `CHATD_TEST_TLS_DATABASE_URL` (verify-full, the services' CA, client cert and key) with its
/// query rewritten by `edit` (each `name=value` pair in, the pairs to keep out).
fn tls_url(edit: impl Fn(&str, &str) -> Option<String>) -> String {
    let url = crate::backend_tls::test_env::var("CHATD_TEST_TLS_DATABASE_URL");
    let (base, query) = url.split_once('?').unwrap_or((&url, ""));
    let pairs: Vec<String> = query
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            edit(name, value)
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

fn keep(name: &str, value: &str) -> Option<String> {
    Some(format!("{name}={value}"))
}

/// Everything a node does with PostgreSQL (migrations, the writer, the pool, the outbox relay
/// and its LISTEN connection) over verify-full TLS with a client certificate: the role logs in
/// only by its certificate (scripts/services' pg_hba.conf), so a plain or cert-less connection
/// would fail rather than pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL's TLS endpoint (CHATD_TEST_TLS_DATABASE_URL, CHATD_TEST_TLS_CA): scripts/test runs it"]
async fn a_node_uses_postgres_over_verify_full_mutual_tls() {
    let admin = tls_url(keep);
    let name = format!("chatd_tls_{}", ids::new_id());
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("connect over TLS");
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let (store, rx) = PgStore::connect(&PgOptions {
        url: with_database(&admin, &name),
        pool: 4,
        migrate: true,
    })
    .await
    .expect("PgStore over TLS");
    let _local = drain(rx);
    let pool = store.pool();
    let (user, ssl): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((user.as_str(), ssl), ("chatd_tls", true));

    let chat = group(&*store, "g", &["alice", "bob"]).await;
    let sent = store
        .append_message(new_message(&chat.chat_id, "alice", "1", 2_000))
        .await
        .expect("a write over TLS");
    let range = SeqRange {
        after: 0,
        before: u64::MAX,
        newest_first: false,
    };
    let read = store.messages(&chat.chat_id, range, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        (read[0].seq, &read[0].content.text),
        (sent.message.seq, &"text of 1".to_string())
    );

    // The relay's leader connection and its LISTEN connection are made from the same options.
    let sink = Arc::new(RecordingSink::default());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(pool.clone(), sink.clone()).run(stop.clone()));
    wait_for("the relay over TLS", Duration::from_secs(10), async || {
        outbox_depth(&pool).await.unwrap() == 0
    })
    .await;
    let before = sink.records().len();
    store
        .append_message(new_message(&chat.chat_id, "bob", "2", 3_000))
        .await
        .unwrap();
    wait_for("NOTIFY over TLS", Duration::from_secs(5), async || {
        sink.records().len() > before
    })
    .await;
    stop.cancel();
    relay.await.unwrap();
    store.close().await;
    let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
}

/// Each way the TLS link can be wrong is refused, with a message that says where and why.
#[tokio::test]
#[ignore = "needs PostgreSQL's TLS endpoint (CHATD_TEST_TLS_DATABASE_URL, CHATD_TEST_TLS_CA): scripts/test runs it"]
async fn postgres_refuses_tls_without_the_right_certificates() {
    let ca = crate::backend_tls::test_env::trusted().ca.unwrap();
    let dir = ca.parent().unwrap().display().to_string();
    let cases = [
        (
            "no client certificate",
            tls_url(|n, v| (n != "sslcert" && n != "sslkey").then(|| format!("{n}={v}"))),
            "connection requires a valid client certificate",
        ),
        (
            "a client certificate from an untrusted CA",
            tls_url(|n, v| match n {
                "sslcert" => Some(format!("{n}={dir}/untrusted-client.pem")),
                "sslkey" => Some(format!("{n}={dir}/untrusted-client.key")),
                _ => keep(n, v),
            }),
            "UnknownCA",
        ),
        (
            "a server certificate the client does not trust",
            tls_url(|n, v| match n {
                "sslrootcert" => Some(format!("{n}={dir}/untrusted-ca.pem")),
                _ => keep(n, v),
            }),
            "UnknownIssuer",
        ),
    ];
    for (what, url, why) in cases {
        let err = PgStore::connect(&PgOptions {
            url,
            pool: 2,
            migrate: false,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: connected"));
        let text = err.to_string();
        eprintln!("{what}: {text}");
        assert!(
            matches!(&err, Error::Unavailable(m) if m.starts_with("cannot connect to PostgreSQL at 127.0.0.1:")),
            "{what}: {err:?}"
        );
        assert!(text.contains(why), "{what}: {text}");
    }
}
