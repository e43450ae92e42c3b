//! Concurrency: many senders into one group (gap-free seqs, one order on every device),
//! racing OpenDirectChat, racing duplicate sends, many chats at once.

use chat_tests::pb::Message;
use chat_tests::session::Frame;
use chat_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const USERS: usize = 20;
const PER_USER: usize = 25;
const TOTAL: u64 = (USERS * PER_USER) as u64;

struct Observed {
    who: String,
    acks: Vec<(String, Message)>,
    events: Vec<Message>,
}

/// Collect frames until `acks` SendAcks and `events` MessageEvents have arrived.
async fn collect(mut s: Session, want_acks: usize, want_events: usize) -> Observed {
    let mut acks = Vec::new();
    let mut events = Vec::new();
    while acks.len() < want_acks || events.len() < want_events {
        match s.recv().await {
            Frame::SendAck(a) => {
                assert!(
                    !a.duplicate,
                    "{}/{}: fresh send acked duplicate: {a:?}",
                    s.user, s.device
                );
                acks.push((a.client_msg_id.clone(), a.message.unwrap()));
            }
            Frame::Message(m) => events.push(m.message.unwrap()),
            Frame::SendError(e) => panic!("{}/{}: send rejected: {e:?}", s.user, s.device),
            Frame::Error(e) => panic!("{}/{}: error frame: {e:?}", s.user, s.device),
            _ => {}
        }
    }
    s.expect_no_message(QUIET_PERIOD).await;
    Observed {
        who: format!("{}/{}", s.user, s.device),
        acks,
        events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_send_into_one_group_concurrently() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let users: Vec<String> = (0..USERS).map(|i| format!("user{i:02}")).collect();
    let others: Vec<&str> = users[1..].iter().map(|s| s.as_str()).collect();
    let g = create_group(
        &mut server.client(&users[0], "phone").await,
        "crowd",
        &others,
    )
    .await;
    assert_eq!(g.members.len(), USERS);

    let mut sessions = Vec::new();
    for u in &users {
        let mut s = server.connect(u, "phone").await;
        s.timeout = Duration::from_secs(30);
        sessions.push(s);
    }
    let mut observer = server.connect(&users[0], "observer").await;
    observer.timeout = Duration::from_secs(30);
    let observer = tokio::spawn(collect(observer, 0, TOTAL as usize));

    let mut tasks = Vec::new();
    for s in sessions {
        let chat_id = g.chat_id.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_USER {
                s.send_text(
                    &chat_id,
                    &format!("{}-{i:02}", s.user),
                    &format!("{} #{i}", s.user),
                )
                .await;
            }
            collect(s, PER_USER, TOTAL as usize - PER_USER).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("sender task"));
    }
    let observer = observer.await.expect("observer task");

    // 1. Every send got a distinct seq; together exactly 1..=500.
    let mut by_seq: BTreeMap<u64, Message> = BTreeMap::new();
    for r in &results {
        for (id, m) in &r.acks {
            assert_eq!(&m.client_msg_id, id);
            assert!(
                by_seq.insert(m.seq, m.clone()).is_none(),
                "seq {} assigned twice",
                m.seq
            );
        }
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=TOTAL).collect::<Vec<_>>(),
        "seqs 1..{TOTAL} gap-free"
    );

    // 2. A sender's own messages get seqs in the order it sent them on its stream.
    for r in &results {
        let mut own: Vec<&(String, Message)> = r.acks.iter().collect();
        own.sort_by(|a, b| a.0.cmp(&b.0));
        let s: Vec<u64> = own.iter().map(|(_, m)| m.seq).collect();
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "{}: own sends got out-of-order seqs {s:?}",
            r.who
        );
    }

    // 3. The observer device saw everything, in seq order, identical to what was acked.
    assert_eq!(
        seqs(&observer.events),
        (1..=TOTAL).collect::<Vec<_>>(),
        "observer order"
    );
    for m in &observer.events {
        assert_eq!(
            m.message_id, by_seq[&m.seq].message_id,
            "observer: seq {} is a different message",
            m.seq
        );
    }

    // 4. Every sender device saw everybody else's messages in the same (seq) order.
    for r in &results {
        let s = seqs(&r.events);
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "{}: live order differs from seq order",
            r.who
        );
        let own: HashSet<u64> = r.acks.iter().map(|(_, m)| m.seq).collect();
        let want: Vec<u64> = (1..=TOTAL).filter(|x| !own.contains(x)).collect();
        assert_eq!(s, want, "{}: exactly the others' messages", r.who);
        for m in &r.events {
            assert_eq!(
                m.message_id, by_seq[&m.seq].message_id,
                "{}: seq {} differs",
                r.who, m.seq
            );
            assert_eq!(text_of(m), text_of(&by_seq[&m.seq]));
        }
    }

    // 5. History agrees.
    let h = full_history(&mut server.client(&users[5], "phone").await, &g.chat_id).await;
    assert_eq!(seqs(&h), (1..=TOTAL).collect::<Vec<_>>());
    for m in &h {
        assert_eq!(m.message_id, by_seq[&m.seq].message_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_open_direct_chat_yields_one_chat_per_pair() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (a, b) = (format!("left{i}"), format!("right{i}"));
        let mut ca = server.client(&a, "phone").await;
        let mut cb = server.client(&b, "phone").await;
        tasks.push(tokio::spawn(async move {
            let (x, y) = tokio::join!(open_direct(&mut ca, &b), open_direct(&mut cb, &a));
            (x.chat_id, y.chat_id)
        }));
    }
    let mut ids = HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (x, y) = t.await.unwrap();
        assert_eq!(x, y, "pair {i}: both sides must get the same chat");
        assert!(ids.insert(x), "pair {i}: chat id reused across pairs");
    }
    for i in 0..10 {
        let mut c = server.client(&format!("left{i}"), "phone").await;
        assert_eq!(
            list_all_chats(&mut c, 0).await.len(),
            1,
            "left{i} has exactly one chat"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_duplicate_sends_are_stored_once() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = server
            .client("alice", if i % 2 == 0 { "phone" } else { "laptop" })
            .await;
        let chat_id = chat.chat_id.clone();
        tasks.push(tokio::spawn(async move {
            send_unary(&mut c, &chat_id, "same-key", Some(text("once")))
                .await
                .expect("send")
        }));
    }
    let mut originals = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        if !r.duplicate {
            originals += 1;
        }
        let m = r.message.unwrap();
        assert_eq!(m.seq, 1);
        ids.insert(m.message_id);
    }
    assert_eq!(originals, 1, "exactly one response is the original");
    assert_eq!(ids.len(), 1, "all responses name the same message");
    let h = full_history(&mut server.client("bob", "phone").await, &chat.chat_id).await;
    assert_eq!(h.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_chats_in_parallel_stay_gap_free() {
    let server = TestServer::start_with(NO_RATE_LIMIT).await;
    let mut chats = Vec::new();
    for i in 0..8 {
        let chat = open_direct(
            &mut server.client(&format!("a{i}"), "phone").await,
            &format!("b{i}"),
        )
        .await;
        chats.push((i, chat.chat_id));
    }
    let mut tasks = Vec::new();
    for (i, chat_id) in &chats {
        for side in ["a", "b"] {
            let mut c = server.client(&format!("{side}{i}"), "phone").await;
            let chat_id = chat_id.clone();
            tasks.push(tokio::spawn(async move {
                send_many(&mut c, &chat_id, side, 15).await
            }));
        }
    }
    let mut per_chat: HashMap<String, Vec<u64>> = HashMap::new();
    for t in tasks {
        for m in t.await.unwrap() {
            per_chat.entry(m.chat_id.clone()).or_default().push(m.seq);
        }
    }
    for (_, chat_id) in &chats {
        let mut s = per_chat.remove(chat_id).unwrap();
        s.sort();
        assert_eq!(s, (1..=30).collect::<Vec<_>>(), "chat {chat_id}");
        let h = full_history(
            &mut server
                .client(
                    &format!("a{}", &chats.iter().find(|c| &c.1 == chat_id).unwrap().0),
                    "phone",
                )
                .await,
            chat_id,
        )
        .await;
        assert_eq!(seqs(&h), (1..=30).collect::<Vec<_>>());
    }
}
