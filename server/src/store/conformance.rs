//! The store contract as tests: the same tests run on SQLite (always) and PostgreSQL (when its
//! test server is there).
//!
//! Each test is an `async fn(Backend)` that sees a fresh store only through the [`Store`]
//! traits and its outbox channel. [`conformance_suite!`] turns the list of them into one
//! `#[tokio::test]` each in the module that invokes it, given how that backend opens a fresh
//! store (and, optionally, how it cleans up after a test): `sqlite/tests.rs` and
//! `postgres/tests.rs` invoke it. A new guarantee of the store belongs here, once, so that both
//! stores keep it; a test that needs one backend's internals stays in that backend's tests.

use super::{
    Access, ActivityKey, CursorMove, Membership, NewChat, NewMessage, ResumeChat, SeqRange, Store,
};
use crate::domain::membership::{adding, removing};
use crate::domain::model::{
    Chat, ChatChangeKind, ChatKind, Committed, Content, Event, Message, PushProvider, PushToken,
    Receipt, ReceiptKind, Role,
};
use crate::Error;
use std::{collections::HashMap, sync::Arc};
use tokio::sync::{mpsc, Barrier};

/// A fresh store as a conformance test gets it.
pub(crate) struct Backend {
    pub store: Arc<dyn Store>,
    /// The store's commits, as the fan-out would read them.
    pub outbox: mpsc::Receiver<Committed>,
}

impl Backend {
    pub fn new(store: Arc<dyn Store>, outbox: mpsc::Receiver<Committed>) -> Backend {
        Backend { store, outbox }
    }

    /// What has come out on the outbox so far. Both stores hand a commit's events to the
    /// channel before they answer the commit's callers (SQLite's writer before it answers its
    /// batch, PostgreSQL's emitter under its commit lock before the call returns), so after an
    /// awaited write its events are all there.
    pub fn committed(&mut self) -> Vec<Committed> {
        let mut out = Vec::new();
        while let Ok(c) = self.outbox.try_recv() {
            out.push(c);
        }
        out
    }
}

/// Generates one `#[tokio::test]` per conformance test in the invoking module.
///
/// ```ignore
/// conformance_suite! {
///     open: open_backend,       // async fn() -> (Backend, Fixture): a fresh store
///     cleanup: remove_backend,  // optional async fn(Fixture), run after a test that passed
///     #[ignore = "why"]         // attributes for every generated test
/// }
/// ```
///
/// The fixture lives until the test body has returned (a temporary directory, a database to
/// drop); without `cleanup` it is dropped then.
macro_rules! conformance_suite {
    (open: $open:path $(, cleanup: $cleanup:path)? $(, #[$attr:meta])* $(,)?) => {
        $crate::store::conformance::conformance_suite!(
            @tests [$(#[$attr])*] [$open] [$($cleanup)?];
            seqs_are_gap_free_per_chat_under_concurrent_appends,
            a_repeated_key_returns_the_original_and_stores_once,
            refusals_do_not_spoil_their_batch,
            cursors_never_move_backwards,
            concurrent_cursor_moves_keep_the_highest,
            history_pages_both_ways,
            members_joining_later_see_only_what_follows,
            the_last_place_of_a_full_group_goes_to_one_of_two_racing_adds,
            two_admins_leaving_at_once_leave_an_admin_behind,
            membership_changes_come_out_once_and_refusals_not_at_all,
            a_member_who_leaves_and_returns_starts_afresh_at_the_end,
            groups_are_counted_per_user_and_direct_chats_found_by_key,
            push_tokens_belong_to_one_device_and_a_device_has_one_per_provider,
            push_tokens_are_removed_only_by_their_holder_or_as_dead,
            racing_registrations_of_one_device_leave_one_token,
            mutes_are_each_members_own_until_they_end_or_are_cleared,
            only_members_mute_and_a_member_who_leaves_loses_the_mute,
            a_users_data_is_exported_whole_and_erased_once,
        );
    };
    (@tests $attrs:tt $open:tt $cleanup:tt; $($name:ident),* $(,)?) => {
        $( $crate::store::conformance::conformance_suite!(@test $attrs $open $cleanup $name); )*
    };
    (@test [$(#[$attr:meta])*] [$open:path] [$($cleanup:path)?] $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn $name() {
            let (backend, fixture) = $open().await;
            $crate::store::conformance::$name(backend).await;
            $crate::store::conformance::conformance_suite!(@cleanup fixture $($cleanup)?);
        }
    };
    (@cleanup $fixture:ident) => {
        drop($fixture)
    };
    (@cleanup $fixture:ident $cleanup:path) => {
        $cleanup($fixture).await
    };
}

pub(crate) use conformance_suite;

// ---------------------------------------------------------------------------------------------
// Helpers, also for the backends' own tests

pub(crate) fn new_message(chat_id: &str, user: &str, cmid: &str, at: i64) -> NewMessage {
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

/// A group of `users` created at `at`, the first of them its admin.
pub(crate) fn new_group(title: &str, users: &[&str], at: i64) -> NewChat {
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

/// A group of `users` created at 1 000, the first of them its admin.
pub(crate) async fn group(store: &dyn Store, title: &str, users: &[&str]) -> Chat {
    store
        .create_chat(new_group(title, users, 1_000))
        .await
        .expect("create chat")
        .0
}

pub(crate) fn cursor(
    chat_id: &str,
    user: &str,
    device: &str,
    seq: u64,
    kind: ReceiptKind,
) -> CursorMove {
    CursorMove {
        user_id: user.into(),
        device_id: device.into(),
        chat_id: chat_id.into(),
        seq,
        kind,
        at: 7_000 + seq as i64,
    }
}

/// Every message after `after`, oldest first.
pub(crate) fn all(after: u64) -> SeqRange {
    SeqRange {
        after,
        before: u64::MAX,
        newest_first: false,
    }
}

pub(crate) fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// The messages of the outbox events, as (chat, seq).
pub(crate) fn message_events(committed: &[Committed]) -> Vec<(String, u64)> {
    committed
        .iter()
        .filter_map(|c| match &c.event {
            Event::Message(m) => Some((m.chat_id.clone(), m.seq)),
            _ => None,
        })
        .collect()
}

/// The membership changes of the outbox events, as (kind, users named, chat after).
fn chat_events(committed: &[Committed]) -> Vec<(ChatChangeKind, Vec<String>, Chat)> {
    committed
        .iter()
        .filter_map(|c| match &c.event {
            Event::Chat(change) => {
                Some((change.kind, change.user_ids.clone(), change.chat.clone()))
            }
            _ => None,
        })
        .collect()
}

/// A chat's members as (user, role, joined_at), in the stores' order: longest-standing first,
/// ties by user id.
fn members(chat: &Chat) -> Vec<(&str, Role, i64)> {
    chat.members
        .iter()
        .map(|m| (m.user_id.as_str(), m.role, m.joined_at))
        .collect()
}

fn names(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Messages

pub(crate) async fn seqs_are_gap_free_per_chat_under_concurrent_appends(mut b: Backend) {
    let a = group(&*b.store, "a", &["alice", "bob"]).await.chat_id;
    let c = group(&*b.store, "b", &["alice", "bob"]).await.chat_id;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = b.store.clone();
        let (a, c) = (a.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let user = if t % 2 == 0 { "alice" } else { "bob" };
            // Several in flight per task, as a session pipelines its sends.
            let mut pending = Vec::new();
            for i in 0..25 {
                let chat = if i % 2 == 0 { &a } else { &c };
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
        for chat in [&a, &c] {
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
    // 4 tasks × 13 messages to `a`, 4 × 12 to `c`.
    for (chat, n) in [(&a, 52u64), (&c, 48)] {
        let mut answered = by_chat.remove(chat).unwrap();
        answered.sort_unstable();
        assert_eq!(answered, (1..=n).collect::<Vec<_>>());
        let stored = b.store.messages(chat, all(0), 1_000).await.unwrap();
        assert_eq!(seqs(&stored), (1..=n).collect::<Vec<_>>());
        assert_eq!(b.store.chat(chat).await.unwrap().unwrap().last_seq, n);
    }
    // The outbox carries every message once, each chat's in seq order, commit ids rising.
    let committed = b.committed();
    assert!(committed
        .windows(2)
        .all(|w| w[0].commit_id <= w[1].commit_id));
    let events = message_events(&committed);
    assert_eq!(events.len(), 100);
    for (chat, n) in [(&a, 52u64), (&c, 48)] {
        let in_chat: Vec<u64> = events
            .iter()
            .filter(|(c, _)| c == chat)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(in_chat, (1..=n).collect::<Vec<_>>());
    }
    b.store.close().await;
}

pub(crate) async fn a_repeated_key_returns_the_original_and_stores_once(mut b: Backend) {
    let store = b.store.clone();
    let s = &*store;
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
        message_events(&b.committed()),
        [(chat.clone(), 1), (chat.clone(), 2), (chat.clone(), 3)]
    );
    s.close().await;
}

pub(crate) async fn refusals_do_not_spoil_their_batch(mut b: Backend) {
    let store = b.store.clone();
    let s = &*store;
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
    // Comes back exactly as sent (quotes of both SQL dialects, PostgreSQL's dollar quotes).
    let odd = "it's \\ \"q\" $chatd$ $chatd1$ $$ '); DROP TABLE messages; -- \u{1F600} \n\t";
    let mut tricky = new_message(&chat, "alice", "5", 5);
    tricky.content.text = odd.into();
    tricky.content.ciphertext = vec![0, 1, 255];
    tricky
        .content
        .attributes
        .insert("'k\"".into(), "\\'\"".into());
    tricky
        .content
        .attributes
        .insert("$chatd$'".into(), "$$".into());
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
        message_events(&b.committed()),
        [(chat.clone(), 1), (chat.clone(), 2), (chat.clone(), 3)]
    );
    s.close().await;
}

pub(crate) async fn history_pages_both_ways(b: Backend) {
    let s = &*b.store;
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
    s.close().await;
}

// ---------------------------------------------------------------------------------------------
// Cursors

pub(crate) async fn cursors_never_move_backwards(mut b: Backend) {
    let store = b.store.clone();
    let s = &*store;
    let chat = group(s, "g", &["alice", "bob"]).await.chat_id;
    for i in 0..10 {
        s.append_message(new_message(&chat, "alice", &i.to_string(), i))
            .await
            .unwrap();
    }
    b.committed();
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
    let moved: Vec<(ReceiptKind, String, u64)> = b
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
    s.close().await;
}

pub(crate) async fn concurrent_cursor_moves_keep_the_highest(b: Backend) {
    let chat = group(&*b.store, "g", &["alice", "bob"]).await.chat_id;
    for i in 0..50 {
        b.store
            .append_message(new_message(&chat, "alice", &i.to_string(), i))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 1..=50u64 {
        let store = b.store.clone();
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
    let receipts: Vec<(ReceiptKind, String, u64)> = b
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
    b.store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Members

pub(crate) async fn members_joining_later_see_only_what_follows(b: Backend) {
    let s = &*b.store;
    let chat = group(s, "g", &["alice", "bob"]).await.chat_id;
    for i in 1..=3 {
        s.append_message(new_message(&chat, "alice", &i.to_string(), i))
            .await
            .unwrap();
    }
    assert!(matches!(
        s.change_members(
            &chat,
            adding("alice".into(), names(&["carol", "dave"]), 3),
            2_000
        )
        .await,
        Err(Error::FailedPrecondition(_))
    ));
    let added = s
        .change_members(
            &chat,
            adding("alice".into(), names(&["carol", "carol", "bob"]), 3),
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
    let after = s
        .change_members(&chat, removing("alice".into(), "alice".into()), 3_000)
        .await
        .unwrap();
    assert_eq!(after.member("bob").unwrap().role, Role::Admin);
    assert_eq!(
        s.change_members(&chat, removing("bob".into(), "alice".into()), 3_001)
            .await
            .map(drop),
        Err(Error::NotFound(format!(
            "alice is not a member of chat {chat}"
        )))
    );
    assert_eq!(
        s.change_members(&chat, removing("alice".into(), "alice".into()), 3_001)
            .await
            .map(drop),
        Err(Error::not_member(&chat))
    );
    assert_eq!(
        s.append_message(new_message(&chat, "alice", "late", 3_002))
            .await
            .map(drop),
        Err(Error::not_member(&chat))
    );
    assert_eq!(
        s.contacts_among("carol", names(&["bob", "alice", "zed"]))
            .await
            .unwrap(),
        ["bob"]
    );
    s.close().await;
}

/// Two admins add one user each to a group one short of its limit, at the same time: the rule
/// runs against the chat as each write sees it with no other change beside it, so exactly one
/// gets the place. Several rounds, to give a store that checks outside its lock the chance to
/// let both in.
pub(crate) async fn the_last_place_of_a_full_group_goes_to_one_of_two_racing_adds(mut b: Backend) {
    const MAX: u32 = 3;
    for round in 0..10 {
        let chat = b
            .store
            .create_chat(NewChat {
                members: vec![("alice".into(), Role::Admin), ("bob".into(), Role::Admin)],
                ..new_group(&format!("g{round}"), &[], 1_000)
            })
            .await
            .unwrap()
            .0
            .chat_id;
        b.committed();
        let start = Arc::new(Barrier::new(2));
        let racers = [("alice", "carol"), ("bob", "dave")].map(|(by, user)| {
            let (store, chat, start) = (b.store.clone(), chat.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let rule = adding(by.into(), vec![user.into()], MAX);
                (user, store.change_members(&chat, rule, 2_000).await)
            })
        });
        let mut won = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                (user, Ok(after)) => won.push((user, after)),
                (_, Err(e)) => assert_eq!(
                    e,
                    Error::FailedPrecondition(
                        "the group would have 4 members; the limit is 3".into()
                    ),
                    "round {round}"
                ),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        let (winner, after) = won.pop().unwrap();
        assert_eq!(after.members.len(), MAX as usize);
        assert!(after.member(winner).is_some());
        assert_eq!(b.store.chat(&chat).await.unwrap(), Some(after.clone()));
        assert_eq!(b.store.chat_members(&chat).await.unwrap().len(), 3);
        assert_eq!(
            chat_events(&b.committed()),
            [(ChatChangeKind::MemberAdded, names(&[winner]), after)]
        );
    }
    b.store.close().await;
}

/// Both admins of a group leave at the same time: whichever goes second finds no admin left
/// and hands the group over, so it never stays without one.
pub(crate) async fn two_admins_leaving_at_once_leave_an_admin_behind(mut b: Backend) {
    for round in 0..10 {
        let chat = b
            .store
            .create_chat(NewChat {
                members: vec![
                    ("alice".into(), Role::Admin),
                    ("bob".into(), Role::Admin),
                    ("carol".into(), Role::Member),
                    ("dave".into(), Role::Member),
                ],
                ..new_group(&format!("g{round}"), &[], 1_000)
            })
            .await
            .unwrap()
            .0
            .chat_id;
        b.committed();
        let start = Arc::new(Barrier::new(2));
        let leavers = ["alice", "bob"].map(|user| {
            let (store, chat, start) = (b.store.clone(), chat.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let rule = removing(user.into(), user.into());
                store.change_members(&chat, rule, 2_000).await
            })
        });
        for leaver in leavers {
            leaver.await.unwrap().unwrap();
        }
        let after = b.store.chat(&chat).await.unwrap().unwrap();
        assert_eq!(
            members(&after),
            [("carol", Role::Admin, 1_000), ("dave", Role::Member, 1_000)],
            "round {round}"
        );
        let events = chat_events(&b.committed());
        assert_eq!(events.len(), 2);
        // The second change's event shows the chat as it ended.
        assert_eq!(events[1].2, after);
    }
    b.store.close().await;
}

/// What a membership change answers and what it puts on the outbox: each change that changed
/// something comes out as one chat event naming the users added or removed, with the chat as
/// the change left it; a refused change and one with nothing to do change nothing and emit
/// nothing. The last admin to leave hands the group to the longest-standing member.
pub(crate) async fn membership_changes_come_out_once_and_refusals_not_at_all(mut b: Backend) {
    let store = b.store.clone();
    let s = &*store;
    let chat = group(s, "g", &["zoe", "mia", "lea"]).await.chat_id;
    b.committed();

    // abe joins later: the smallest id, but not the longest-standing.
    let added = s
        .change_members(&chat, adding("zoe".into(), names(&["abe"]), 4), 2_000)
        .await
        .unwrap();
    assert_eq!(
        members(&added),
        [
            ("lea", Role::Member, 1_000),
            ("mia", Role::Member, 1_000),
            ("zoe", Role::Admin, 1_000),
            ("abe", Role::Member, 2_000),
        ]
    );
    assert_eq!(added.last_activity_at, 2_000);
    assert_eq!(
        chat_events(&b.committed()),
        [(ChatChangeKind::MemberAdded, names(&["abe"]), added.clone())]
    );

    // Naming only members changes nothing, even in a full group.
    let same = s
        .change_members(
            &chat,
            adding("zoe".into(), names(&["mia", "abe"]), 4),
            2_100,
        )
        .await
        .unwrap();
    assert_eq!(same, added);
    assert!(b.committed().is_empty());

    // Refusals, each as the rule says, none with an effect.
    let nowhere = "e".repeat(32);
    let (chat, nowhere) = (chat.as_str(), nowhere.as_str());
    let refusals = [
        (
            "a member removes another",
            chat,
            removing("mia".into(), "lea".into()),
            Error::PermissionDenied("only a group admin may remove other members".into()),
        ),
        (
            "a member adds",
            chat,
            adding("mia".into(), names(&["ned"]), 10),
            Error::PermissionDenied("only a group admin may add members".into()),
        ),
        (
            "a non-member removes",
            chat,
            removing("zed".into(), "mia".into()),
            Error::not_member(chat),
        ),
        (
            "a non-member leaves",
            chat,
            removing("zed".into(), "zed".into()),
            Error::not_member(chat),
        ),
        (
            "a non-member adds",
            chat,
            adding("zed".into(), names(&["ned"]), 10),
            Error::not_member(chat),
        ),
        (
            "an admin removes a non-member",
            chat,
            removing("zoe".into(), "zed".into()),
            Error::NotFound(format!("zed is not a member of chat {chat}")),
        ),
        (
            "an admin adds beyond the limit",
            chat,
            adding("zoe".into(), names(&["ned"]), 4),
            Error::FailedPrecondition("the group would have 5 members; the limit is 4".into()),
        ),
        (
            "a change of no chat",
            nowhere,
            removing("zoe".into(), "zoe".into()),
            Error::chat_not_found(nowhere),
        ),
    ];
    for (what, chat_id, rule, expected) in refusals {
        let got = s.change_members(chat_id, rule, 2_200).await;
        assert_eq!(got, Err(expected), "{what}");
    }
    assert_eq!(s.chat(chat).await.unwrap(), Some(added));
    assert!(b.committed().is_empty());

    // The last admin leaves: of the longest-standing (lea and mia, since 1 000) the smaller
    // user id takes over.
    let left = s
        .change_members(chat, removing("zoe".into(), "zoe".into()), 3_000)
        .await
        .unwrap();
    assert_eq!(
        members(&left),
        [
            ("lea", Role::Admin, 1_000),
            ("mia", Role::Member, 1_000),
            ("abe", Role::Member, 2_000),
        ]
    );
    assert_eq!(left.last_activity_at, 3_000);
    assert_eq!(
        chat_events(&b.committed()),
        [(ChatChangeKind::MemberRemoved, names(&["zoe"]), left)]
    );

    // An admin removing someone else stays admin: nobody is promoted.
    let removed = s
        .change_members(chat, removing("lea".into(), "mia".into()), 3_100)
        .await
        .unwrap();
    assert_eq!(
        members(&removed),
        [("lea", Role::Admin, 1_000), ("abe", Role::Member, 2_000)]
    );
    assert_eq!(
        chat_events(&b.committed()),
        [(ChatChangeKind::MemberRemoved, names(&["mia"]), removed)]
    );

    // The last admin leaves again: the only one left takes over; then the last member leaves.
    let handed = s
        .change_members(chat, removing("lea".into(), "lea".into()), 3_200)
        .await
        .unwrap();
    assert_eq!(members(&handed), [("abe", Role::Admin, 2_000)]);
    let empty = s
        .change_members(chat, removing("abe".into(), "abe".into()), 3_300)
        .await
        .unwrap();
    assert!(empty.members.is_empty());
    assert_eq!(
        chat_events(&b.committed()),
        [
            (ChatChangeKind::MemberRemoved, names(&["lea"]), handed),
            (
                ChatChangeKind::MemberRemoved,
                names(&["abe"]),
                empty.clone()
            ),
        ]
    );
    assert_eq!(s.chat(chat).await.unwrap(), Some(empty));
    assert!(s.chat_members(chat).await.unwrap().is_empty());
    s.close().await;
}

/// A removed member's device positions go with them; added again, they start at the chat's
/// last seq like any new member, with none of their old positions.
pub(crate) async fn a_member_who_leaves_and_returns_starts_afresh_at_the_end(b: Backend) {
    let s = &*b.store;
    let chat = group(s, "g", &["alice", "bob"]).await.chat_id;
    assert!(s.register_device("bob", "phone", 1_001).await.unwrap());
    for i in 1..=5 {
        s.append_message(new_message(&chat, "alice", &i.to_string(), 1_000 + i))
            .await
            .unwrap();
    }
    s.move_cursor(cursor(&chat, "bob", "phone", 5, ReceiptKind::Delivered))
        .await
        .unwrap();
    s.move_cursor(cursor(&chat, "bob", "phone", 3, ReceiptKind::Read))
        .await
        .unwrap();
    let plan = |joined_seq, delivered_seq, last_seq| {
        vec![ResumeChat {
            chat_id: chat.clone(),
            joined_seq,
            delivered_seq,
            last_seq,
        }]
    };
    assert_eq!(
        s.resume_plan("bob", "phone").await.unwrap().chats,
        plan(0, 5, 5)
    );
    let bobs = |receipts: Vec<Receipt>| -> Vec<(ReceiptKind, String, u64)> {
        receipts
            .into_iter()
            .filter(|r| r.user_id == "bob")
            .map(|r| (r.kind, r.device_id, r.seq))
            .collect()
    };
    assert_eq!(
        bobs(s.receipts(&chat, 1).await.unwrap()),
        [
            (ReceiptKind::Delivered, "phone".into(), 5),
            (ReceiptKind::Read, "phone".into(), 3),
            (ReceiptKind::Read, String::new(), 3),
        ]
    );

    // Removed: the chat is gone from everything of bob's.
    s.change_members(&chat, removing("alice".into(), "bob".into()), 3_000)
        .await
        .unwrap();
    assert!(s
        .resume_plan("bob", "phone")
        .await
        .unwrap()
        .chats
        .is_empty());
    assert!(bobs(s.receipts(&chat, 0).await.unwrap()).is_empty());
    assert_eq!(s.chat_view(&chat, "bob").await.unwrap(), None);
    assert_eq!(
        s.move_cursor(cursor(&chat, "bob", "phone", 5, ReceiptKind::Read))
            .await,
        Err(Error::not_member(&chat))
    );
    for i in 6..=7 {
        s.append_message(new_message(&chat, "alice", &i.to_string(), 3_000 + i))
            .await
            .unwrap();
    }

    // Back again: a member since seq 7, the phone with no position of its own, nothing unread.
    let back = s
        .change_members(&chat, adding("alice".into(), names(&["bob"]), 10), 4_000)
        .await
        .unwrap();
    let member = back.member("bob").unwrap();
    assert_eq!(
        (member.role, member.joined_at, member.joined_seq),
        (Role::Member, 4_000, 7)
    );
    assert_eq!(
        s.membership(&chat, "bob").await.unwrap(),
        Membership::Member(Access {
            role: Role::Member,
            kind: ChatKind::Group,
            joined_seq: 7,
            last_seq: 7,
        })
    );
    assert_eq!(
        s.resume_plan("bob", "phone").await.unwrap().chats,
        plan(7, 0, 7)
    );
    let view = s.chat_view(&chat, "bob").await.unwrap().unwrap();
    assert_eq!((view.read_seq, view.unread_count), (7, 0));
    assert_eq!(view.last_message, None);
    assert!(bobs(s.receipts(&chat, 0).await.unwrap()).is_empty());
    // A device new since starts at the present.
    assert!(s.register_device("bob", "tablet", 4_001).await.unwrap());
    assert_eq!(
        s.resume_plan("bob", "tablet").await.unwrap().chats,
        plan(7, 7, 7)
    );

    // What follows counts as before.
    s.append_message(new_message(&chat, "alice", "8", 5_000))
        .await
        .unwrap();
    let view = s.chat_view(&chat, "bob").await.unwrap().unwrap();
    assert_eq!((view.read_seq, view.unread_count), (7, 1));
    assert_eq!(view.last_message.map(|m| m.seq), Some(8));
    s.move_cursor(cursor(&chat, "bob", "phone", 8, ReceiptKind::Delivered))
        .await
        .unwrap();
    assert_eq!(
        s.resume_plan("bob", "phone").await.unwrap().chats,
        plan(7, 8, 8)
    );
    assert_eq!(
        bobs(s.receipts(&chat, 1).await.unwrap()),
        [(ReceiptKind::Delivered, "phone".into(), 8)]
    );
    s.close().await;
}

// ---------------------------------------------------------------------------------------------
// Mutes

/// Whom of alice, bob, carol and dave `chat` has muted at `now`.
async fn muted_at(s: &dyn Store, chat: &str, now: i64) -> Vec<String> {
    s.muted_members(chat, &names(&["alice", "bob", "carol", "dave"]), now)
        .await
        .unwrap()
}

async fn stored_mute(s: &dyn Store, chat: &str, user: &str) -> Option<i64> {
    s.chat_view(chat, user)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{user} is a member"))
        .muted_until
}

pub(crate) async fn mutes_are_each_members_own_until_they_end_or_are_cleared(mut b: Backend) {
    let store = b.store.clone();
    let s = &*store;
    let chat = group(s, "g", &["alice", "bob", "carol"]).await.chat_id;
    let other = group(s, "h", &["alice", "bob"]).await.chat_id;
    b.committed();
    assert!(muted_at(s, &chat, 0).await.is_empty());
    assert_eq!(stored_mute(s, &chat, "bob").await, None);

    s.set_muted(&chat, "bob", Some(5_000)).await.unwrap();
    s.set_muted(&chat, "carol", Some(i64::MAX)).await.unwrap();
    assert_eq!(muted_at(s, &chat, 4_999).await, names(&["bob", "carol"]));
    // A mute ends at its time; "until unmuted" never does.
    assert_eq!(muted_at(s, &chat, 5_000).await, names(&["carol"]));
    assert_eq!(muted_at(s, &chat, i64::MAX - 1).await, names(&["carol"]));
    // Asked about in another order, or about fewer users: those, in that order.
    assert_eq!(
        s.muted_members(&chat, &names(&["carol", "dave", "bob"]), 0)
            .await
            .unwrap(),
        names(&["carol", "bob"])
    );
    assert!(s.muted_members(&chat, &[], 0).await.unwrap().is_empty());
    // The views carry each member's own mute as stored (expired or not); other chats have none.
    assert_eq!(stored_mute(s, &chat, "bob").await, Some(5_000));
    assert_eq!(stored_mute(s, &chat, "carol").await, Some(i64::MAX));
    assert_eq!(stored_mute(s, &chat, "alice").await, None);
    assert_eq!(stored_mute(s, &other, "bob").await, None);
    assert!(muted_at(s, &other, 0).await.is_empty());
    let listed: Vec<(String, Option<i64>)> = s
        .list_chats("bob", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.chat.chat_id, v.muted_until))
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&(chat.clone(), Some(5_000))), "{listed:?}");
    assert!(listed.contains(&(other.clone(), None)), "{listed:?}");

    // A new mute replaces the old; clearing ends it now, and clearing again changes nothing.
    s.set_muted(&chat, "bob", Some(9_000)).await.unwrap();
    assert_eq!(muted_at(s, &chat, 6_000).await, names(&["bob", "carol"]));
    s.set_muted(&chat, "bob", None).await.unwrap();
    s.set_muted(&chat, "bob", None).await.unwrap();
    assert_eq!(muted_at(s, &chat, 6_000).await, names(&["carol"]));
    assert_eq!(stored_mute(s, &chat, "bob").await, None);
    // Nobody else hears of a mute.
    assert!(b.committed().is_empty());
    s.close().await;
}

pub(crate) async fn only_members_mute_and_a_member_who_leaves_loses_the_mute(b: Backend) {
    let s = &*b.store;
    let chat = group(s, "g", &["alice", "bob", "carol"]).await.chat_id;
    assert_eq!(
        s.set_muted(&chat, "dave", Some(i64::MAX)).await,
        Err(Error::not_member(&chat))
    );
    assert_eq!(
        s.set_muted(&chat, "dave", None).await,
        Err(Error::not_member(&chat))
    );
    let unknown = crate::domain::ids::new_id();
    assert_eq!(
        s.set_muted(&unknown, "alice", Some(i64::MAX)).await,
        Err(Error::chat_not_found(&unknown))
    );
    assert!(muted_at(s, &chat, 0).await.is_empty());
    assert!(muted_at(s, &unknown, 0).await.is_empty());

    // Removed, and leaving on one's own: the mute goes with the membership ...
    s.set_muted(&chat, "bob", Some(i64::MAX)).await.unwrap();
    s.set_muted(&chat, "carol", Some(i64::MAX)).await.unwrap();
    s.change_members(&chat, removing("alice".into(), "bob".into()), 2_000)
        .await
        .unwrap();
    s.change_members(&chat, removing("carol".into(), "carol".into()), 2_000)
        .await
        .unwrap();
    assert!(muted_at(s, &chat, 0).await.is_empty());
    assert_eq!(
        s.set_muted(&chat, "bob", None).await,
        Err(Error::not_member(&chat))
    );
    // ... and does not come back with it.
    s.change_members(
        &chat,
        adding("alice".into(), names(&["bob", "carol"]), 10),
        3_000,
    )
    .await
    .unwrap();
    assert!(muted_at(s, &chat, 0).await.is_empty());
    assert_eq!(stored_mute(s, &chat, "bob").await, None);
    assert_eq!(stored_mute(s, &chat, "carol").await, None);
    s.close().await;
}

fn push_token(user: &str, device: &str, provider: PushProvider, token: &str) -> PushToken {
    PushToken {
        user_id: user.into(),
        device_id: device.into(),
        provider,
        token: token.into(),
        app_id: "app".into(),
        created_at: 1_000,
    }
}

/// (user, device, provider, token) of these users' tokens, sorted.
/// What the abuse limits read: the groups a user is in (as membership changes), and whether a
/// pair's direct chat exists.
pub(crate) async fn groups_are_counted_per_user_and_direct_chats_found_by_key(b: Backend) {
    let s = b.store.as_ref();
    assert!(s.group_counts(names(&["ann"])).await.unwrap().is_empty());
    let g1 = group(s, "one", &["ann", "bo"]).await;
    group(s, "two", &["ann", "cy"]).await;
    let direct = s
        .create_chat(NewChat {
            kind: ChatKind::Direct,
            title: String::new(),
            direct_key: Some("ann\ndi".into()),
            members: vec![("ann".into(), Role::Member), ("di".into(), Role::Member)],
            created_at: 1_000,
        })
        .await
        .unwrap()
        .0;
    let counts = |pairs: &[(&str, u32)]| -> HashMap<String, u32> {
        pairs.iter().map(|(u, n)| (u.to_string(), *n)).collect()
    };
    let all = names(&["ann", "bo", "cy", "di", "ed"]);
    assert_eq!(
        s.group_counts(all.clone()).await.unwrap(),
        counts(&[("ann", 2), ("bo", 1), ("cy", 1)]),
        "direct chats are not groups; users in none are left out"
    );
    s.change_members(&g1.chat_id, removing("bo".into(), "bo".into()), 2_000)
        .await
        .unwrap();
    s.change_members(&g1.chat_id, adding("ann".into(), names(&["di"]), 10), 2_000)
        .await
        .unwrap();
    assert_eq!(
        s.group_counts(all).await.unwrap(),
        counts(&[("ann", 2), ("cy", 1), ("di", 1)])
    );
    assert_eq!(
        s.direct_chat_id("ann\ndi").await.unwrap(),
        Some(direct.chat_id)
    );
    assert_eq!(s.direct_chat_id("ann\nbo").await.unwrap(), None);
}

async fn tokens_of(s: &dyn Store, users: &[&str]) -> Vec<(String, String, &'static str, String)> {
    let mut out: Vec<_> = s
        .push_tokens(names(users))
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.user_id, t.device_id, t.provider.name(), t.token))
        .collect();
    out.sort();
    out
}

fn row(
    user: &str,
    device: &str,
    provider: &'static str,
    token: &str,
) -> (String, String, &'static str, String) {
    (user.into(), device.into(), provider, token.into())
}

pub(crate) async fn push_tokens_belong_to_one_device_and_a_device_has_one_per_provider(b: Backend) {
    let s = &*b.store;
    s.register_push_token(push_token("alice", "phone", PushProvider::Fcm, "f1"))
        .await
        .unwrap();
    s.register_push_token(push_token("alice", "phone", PushProvider::WebPush, "w1"))
        .await
        .unwrap();
    s.register_push_token(push_token("bob", "tab", PushProvider::Apns, "a1"))
        .await
        .unwrap();
    // Registering a token also registers its device: it starts at the present like any new one.
    assert!(!s.register_device("alice", "phone", 2_000).await.unwrap());
    assert_eq!(
        tokens_of(s, &["alice", "bob"]).await,
        [
            row("alice", "phone", "fcm", "f1"),
            row("alice", "phone", "webpush", "w1"),
            row("bob", "tab", "apns", "a1"),
        ]
    );
    // A refreshed token replaces the device's old one of that provider, and only that one.
    s.register_push_token(push_token("alice", "phone", PushProvider::Fcm, "f2"))
        .await
        .unwrap();
    // The same token again changes nothing but its details.
    let mut again = push_token("alice", "phone", PushProvider::Fcm, "f2");
    again.app_id = "other".into();
    s.register_push_token(again).await.unwrap();
    // A token seen on another device (a reinstall, a phone that changed hands) moves there.
    s.register_push_token(push_token("carol", "phone", PushProvider::Apns, "a1"))
        .await
        .unwrap();
    assert_eq!(
        tokens_of(s, &["alice", "bob", "carol"]).await,
        [
            row("alice", "phone", "fcm", "f2"),
            row("alice", "phone", "webpush", "w1"),
            row("carol", "phone", "apns", "a1"),
        ]
    );
    let alice = s.push_tokens(names(&["alice"])).await.unwrap();
    assert!(alice.iter().any(|t| t.token == "f2" && t.app_id == "other"));
    assert!(tokens_of(s, &["nobody"]).await.is_empty());
}

pub(crate) async fn push_tokens_are_removed_only_by_their_holder_or_as_dead(b: Backend) {
    let s = &*b.store;
    s.register_push_token(push_token("alice", "phone", PushProvider::Fcm, "f1"))
        .await
        .unwrap();
    s.register_push_token(push_token("bob", "tab", PushProvider::Webhook, "k1"))
        .await
        .unwrap();
    // Someone else's token, or the right token under another provider: nothing removed.
    assert!(!s
        .unregister_push_token("bob", PushProvider::Fcm, "f1")
        .await
        .unwrap());
    assert!(!s
        .unregister_push_token("alice", PushProvider::Apns, "f1")
        .await
        .unwrap());
    assert!(s
        .unregister_push_token("alice", PushProvider::Fcm, "f1")
        .await
        .unwrap());
    assert!(!s
        .unregister_push_token("alice", PushProvider::Fcm, "f1")
        .await
        .unwrap());
    // A provider's "dead token" removes it whoever holds it.
    assert!(s
        .drop_push_token(PushProvider::Webhook, "k1")
        .await
        .unwrap());
    assert!(!s
        .drop_push_token(PushProvider::Webhook, "k1")
        .await
        .unwrap());
    assert!(tokens_of(s, &["alice", "bob"]).await.is_empty());
}

pub(crate) async fn racing_registrations_of_one_device_leave_one_token(b: Backend) {
    let s = b.store.clone();
    let barrier = Arc::new(Barrier::new(8));
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                s.register_push_token(push_token(
                    "alice",
                    "phone",
                    PushProvider::Fcm,
                    &format!("f{i}"),
                ))
                .await
            })
        })
        .collect();
    for r in racers {
        r.await.unwrap().unwrap();
    }
    let tokens = tokens_of(&*s, &["alice"]).await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
}

/// GDPR: what the store keeps about a user reads back whole, and erasure leaves each message's
/// place (no chat gets a gap) without its content, the user's other rows gone, a direct chat
/// no longer the pair's, and nothing of anyone else touched. Run again, it erases nothing.
pub(crate) async fn a_users_data_is_exported_whole_and_erased_once(mut b: Backend) {
    use crate::domain::membership::erasing;
    use crate::domain::user_data::UserRecord;
    let s = b.store.clone();
    let g = group(s.as_ref(), "g", &["ann", "bo"]).await;
    let direct = s
        .create_chat(NewChat {
            kind: ChatKind::Direct,
            title: String::new(),
            direct_key: Some("ann\nbo".into()),
            members: vec![("ann".into(), Role::Member), ("bo".into(), Role::Member)],
            created_at: 1_000,
        })
        .await
        .unwrap()
        .0;
    s.register_device("ann", "ann-phone", 1_500).await.unwrap();
    s.register_device("bo", "bo-phone", 1_500).await.unwrap();
    // 7 messages of ann's across two chats (more than one export page of 3), 2 of bo's.
    for i in 0..7 {
        let chat = if i % 2 == 0 {
            &g.chat_id
        } else {
            &direct.chat_id
        };
        s.append_message(new_message(chat, "ann", &format!("a{i}"), 2_000 + i))
            .await
            .unwrap();
    }
    for i in 0..2 {
        s.append_message(new_message(&g.chat_id, "bo", &format!("b{i}"), 3_000 + i))
            .await
            .unwrap();
    }
    s.move_cursor(cursor(&g.chat_id, "ann", "ann-phone", 3, ReceiptKind::Read))
        .await
        .unwrap();
    s.register_push_token(push_token("ann", "ann-phone", PushProvider::Fcm, "tok-ann"))
        .await
        .unwrap();
    s.register_push_token(push_token("bo", "bo-phone", PushProvider::Fcm, "tok-bo"))
        .await
        .unwrap();
    s.record_last_seen("ann", 4_000).await.unwrap();
    s.set_muted(&g.chat_id, "ann", Some(i64::MAX))
        .await
        .unwrap();

    let records = eventually_records(s.as_ref(), "ann", |r| {
        r.iter().any(|x| matches!(x, UserRecord::LastSeen { .. }))
    })
    .await;
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| match r {
            UserRecord::Device { .. } => "device",
            UserRecord::LastSeen { .. } => "last_seen",
            UserRecord::Membership { .. } => "membership",
            UserRecord::Cursor { .. } => "cursor",
            UserRecord::PushToken { .. } => "push_token",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "device",
            "last_seen",
            "membership",
            "membership",
            "cursor",
            "cursor",
            "push_token"
        ]
    );
    assert!(records.contains(&UserRecord::LastSeen { at: 4_000 }));
    assert!(records.iter().any(|r| matches!(r,
        UserRecord::Membership { chat_id, muted_until: Some(i64::MAX), role: Role::Admin, .. }
            if *chat_id == g.chat_id)));
    assert!(records.iter().any(|r| matches!(r,
        UserRecord::Cursor { chat_id, read_seq: 3, delivered_seq: 3, .. } if *chat_id == g.chat_id)));
    assert!(records.iter().any(|r| matches!(r,
        UserRecord::PushToken { token, provider, .. } if token == "tok-ann" && provider == "fcm")));

    // Sent messages page by key, each exactly once.
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = s.sent_messages("ann", after.take(), 3).await.unwrap();
        keys.extend(page.iter().map(|m| m.client_msg_id.clone()));
        match page.last() {
            Some(m) if page.len() == 3 => after = Some(m.client_msg_id.clone()),
            _ => break,
        }
    }
    assert_eq!(keys, ["a0", "a1", "a2", "a3", "a4", "a5", "a6"]);

    // Erasure: membership first (as the domain does it), then the rest.
    b.committed();
    for chat in [&g.chat_id, &direct.chat_id] {
        s.change_members(chat, erasing("ann".into()), 5_000)
            .await
            .unwrap();
    }
    let after_group = s.chat(&g.chat_id).await.unwrap().unwrap();
    assert_eq!(members(&after_group), [("bo", Role::Admin, 1_000)]);
    let after_direct = s.chat(&direct.chat_id).await.unwrap().unwrap();
    assert_eq!(after_direct.members.len(), 1);
    let removals = chat_events(&b.committed());
    assert_eq!(removals.len(), 2, "one member removal per chat");
    assert!(removals
        .iter()
        .all(|(k, users, _)| *k == ChatChangeKind::MemberRemoved && *users == names(&["ann"])));

    assert_eq!(s.erase_user("ann").await.unwrap(), 7);
    assert_eq!(s.erase_user("ann").await.unwrap(), 0, "idempotent");
    assert_eq!(s.user_records("ann").await.unwrap(), vec![]);
    let history = s.messages(&g.chat_id, all(0), 100).await.unwrap();
    assert_eq!(seqs(&history), [1, 2, 3, 4, 5, 6], "no gap");
    for m in &history {
        if m.sender_user_id == "ann" {
            assert_eq!(m.content, Content::default(), "{m:?}");
            assert!(m.sender_device_id.is_empty());
            assert!(m.client_msg_id.starts_with(super::ERASED_KEY_PREFIX));
        } else {
            assert_eq!(m.content.text, format!("text of {}", m.client_msg_id));
        }
    }
    let exported = s.sent_messages("ann", None, 100).await.unwrap();
    assert_eq!(exported.len(), 7, "erased messages keep their place");
    assert!(exported.iter().all(|m| m.content == Content::default()));
    // A key erased is free again, and the erased message never answers it.
    let again = s
        .append_message(new_message(&g.chat_id, "bo", "a0", 6_000))
        .await
        .unwrap();
    assert!(!again.duplicate);
    assert_eq!(s.direct_chat_id("ann\nbo").await.unwrap(), None);
    // Nobody else's data changed.
    assert_eq!(tokens_of(s.as_ref(), &["ann", "bo"]).await.len(), 1);
    assert!(s.user_records("bo").await.unwrap().len() >= 4);
}

/// The user's records once `done` holds of them (the last seen is written in the background).
async fn eventually_records(
    s: &dyn Store,
    user: &str,
    done: impl Fn(&[crate::domain::user_data::UserRecord]) -> bool,
) -> Vec<crate::domain::user_data::UserRecord> {
    for _ in 0..200 {
        let r = s.user_records(user).await.unwrap();
        if done(&r) {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the records of {user} never settled");
}
