//! The Kafka bus end to end: outbox sink → Kafka → fan-out → Redis Pub/Sub → node channel.
//! All but the first need Kafka and Redis (see `brokers` and `redis_url`).

use super::*;
use crate::bus::audience::Target;
use crate::bus::wire::{self, PushJob};
use crate::domain::model::{
    Chat, ChatChange, ChatChangeKind, ChatKind, Event, Member, Message as ChatMessage, Role,
};
use crate::redis::pubsub::tests::{listening, namespace, quiet_handlers, redis_url};
use crate::redis::pubsub::{PubSubHandlers, RedisPubSub};
use crate::redis::RedisTarget;
use crate::registry::{redis::RedisRegistry, SessionKey};
use crate::store::{sqlite::SqliteStore, ChatStore, NewChat};
use crate::Error;
use rdkafka::{
    config::ClientConfig,
    consumer::{Consumer, StreamConsumer},
    message::{Headers, Message},
};
use std::{collections::HashMap, time::Duration};
use tokio::sync::mpsc;

/// The Kafka brokers of the test services (`CHATD_TEST_KAFKA_BROKERS`). The tests that need
/// them are `#[ignore]`d; run without them, they fail rather than pass untested.
fn brokers() -> String {
    match std::env::var("CHATD_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => b,
        _ => panic!(
            "CHATD_TEST_KAFKA_BROKERS is not set: this test needs Kafka. Run `scripts/test`, or \
             start it (`eval \"$(scripts/services up)\"`), export \
             CHATD_TEST_KAFKA_BROKERS=$CHATD_KAFKA_BROKERS and run the ignored tests"
        ),
    }
}

fn settings(brokers: &str, ns: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.to_string(),
        namespace: ns.to_string(),
        partitions: 2,
        node_id: "a".into(),
        live_receipts_max_members: 100,
        tls: Default::default(),
    }
}

fn message(chat_id: &str, seq: u64) -> Event {
    Event::Message(Arc::new(ChatMessage {
        message_id: format!("m{seq}"),
        chat_id: chat_id.into(),
        seq,
        sender_user_id: "alice".into(),
        sender_device_id: "phone".into(),
        client_msg_id: format!("c{seq}"),
        content: Default::default(),
        created_at: 1000 + seq as i64,
        wire: Default::default(),
    }))
}

fn record(id: i64, key: &str, payload: Vec<u8>) -> OutboxRecord {
    OutboxRecord {
        id,
        key: key.into(),
        payload,
    }
}

/// Reads `topic` from the start until `n` records arrived.
async fn read(brokers: &str, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", rand::random::<u64>()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records on {topic}", out.len()))
            .unwrap();
        out.push(m.detach());
    }
    out
}

/// Node `id`'s link, reporting envelopes on its channel.
async fn link(
    url: &str,
    ns: &str,
    id: &str,
    stop: &CancellationToken,
) -> (Arc<RedisPubSub>, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handlers = PubSubHandlers {
        on_envelope: Arc::new(move |p| {
            let _ = tx.send(p.to_vec());
        }),
        ..quiet_handlers()
    };
    (listening(url, ns, id, handlers, stop).await, rx)
}

#[tokio::test]
async fn unreachable_kafka_is_reported() {
    let err = KafkaBus::connect(&settings("127.0.0.1:1", "x"))
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(
        matches!(&err, Error::Unavailable(m) if m.starts_with("cannot reach Kafka at 127.0.0.1:1: ")),
        "{err:?}"
    );
}

#[tokio::test]
#[ignore = "needs Redis and Kafka (CHATD_TEST_REDIS_URL, _KAFKA_BROKERS): scripts/test runs it"]
async fn fans_out_to_member_nodes_and_pushes_to_offline_members() {
    let (url, brokers) = (redis_url(), brokers());
    let ns = namespace();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
    let (chat, _) = store
        .create_chat(NewChat {
            kind: ChatKind::Group,
            title: "g".into(),
            direct_key: None,
            members: vec![
                ("alice".into(), Role::Admin),
                ("bob".into(), Role::Member),
                ("carol".into(), Role::Member),
            ],
            created_at: 1,
        })
        .await
        .unwrap();
    let chat_id = chat.chat_id.clone();

    let (link_a, _) = link(&url, &ns, "a", &stop).await;
    let (link_b, mut on_b) = link(&url, &ns, "b", &stop).await;
    let registry_a =
        RedisRegistry::connect(&RedisTarget::plain(&url), &ns, "a", 60_000, link_a.clone())
            .await
            .unwrap();
    let registry_b =
        RedisRegistry::connect(&RedisTarget::plain(&url), &ns, "b", 60_000, link_b.clone())
            .await
            .unwrap();
    registry_b
        .connect(
            &SessionKey {
                user_id: "bob".into(),
                device_id: "laptop".into(),
                session_id: 1,
            },
            0,
        )
        .await
        .unwrap();

    let bus = KafkaBus::connect(&settings(&brokers, &ns)).await.unwrap();
    // Connecting again finds the topics there.
    KafkaBus::connect(&settings(&brokers, &ns)).await.unwrap();
    tokio::spawn(bus.clone().run_fanout(
        store.clone(),
        registry_a.clone(),
        link_a.clone(),
        stop.clone(),
    ));

    // dave joins (the store doesn't know: the fan-out must take members from the event).
    let mut members = chat.members.clone();
    members.push(Member {
        user_id: "dave".into(),
        role: Role::Member,
        joined_at: 2,
        joined_seq: 2,
    });
    let added = Event::Chat(Arc::new(ChatChange {
        kind: ChatChangeKind::MemberAdded,
        chat: Chat { members, ..chat },
        user_ids: vec!["dave".into()],
    }));
    bus.publish(&[
        record(1, &chat_id, wire::encode_event(&message(&chat_id, 1))),
        record(2, &chat_id, b"not an event".to_vec()),
        record(3, &chat_id, wire::encode_event(&message(&chat_id, 2))),
        record(4, &chat_id, wire::encode_event(&added)),
        record(5, &chat_id, wire::encode_event(&message(&chat_id, 3))),
    ])
    .await
    .unwrap();

    // bob's node gets each event once, in order, addressed to bob.
    let mut got = Vec::new();
    for _ in 0..4 {
        let envelope = tokio::time::timeout(Duration::from_secs(30), on_b.recv())
            .await
            .expect("envelope for node b")
            .unwrap();
        let (targets, event) = wire::decode_envelope(&envelope).unwrap();
        assert_eq!(
            targets,
            vec![Target {
                user_id: "bob".into(),
                skip_device: None
            }]
        );
        got.push(match event {
            Event::Message(m) => format!("m{}", m.seq),
            Event::Chat(c) => format!("{:?}", c.kind),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(got, ["m1", "m2", "MemberAdded", "m3"]);

    let jobs: Vec<(String, PushJob)> = read(&brokers, &bus.names.push, 4)
        .await
        .into_iter()
        .map(|m| {
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            (key, serde_json::from_slice(m.payload().unwrap()).unwrap())
        })
        .collect();
    let mut seen: Vec<(String, u64)> = jobs
        .iter()
        .map(|(key, job)| {
            assert_eq!(*key, job.user_id);
            assert_eq!(job.chat_id, chat_id);
            (job.user_id.clone(), job.seq)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("carol".to_string(), 1),
            ("carol".to_string(), 2),
            ("carol".to_string(), 3),
            ("dave".to_string(), 3)
        ]
    );

    let dead = read(&brokers, &bus.names.dlq, 1).await;
    assert_eq!(dead[0].payload(), Some(&b"not an event"[..]));
    let headers = dead[0].headers().unwrap();
    let reason = headers
        .iter()
        .find(|h| h.key == "chatd-dlq-reason")
        .and_then(|h| h.value)
        .unwrap();
    assert!(String::from_utf8_lossy(reason).contains("undecodable"));
    stop.cancel();
}

/// Many events of a few chats, fanned out in big batches to two nodes: each node's
/// channel carries every chat's events exactly once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Kafka (CHATD_TEST_REDIS_URL, _KAFKA_BROKERS): scripts/test runs it"]
async fn each_node_gets_every_chats_events_in_order_under_load() {
    let (url, brokers) = (redis_url(), brokers());
    const CHATS: usize = 4;
    const PER_CHAT: u64 = 5_000;
    let ns = namespace();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
    let mut chats = Vec::new();
    for i in 0..CHATS {
        // s{i} sends; b{i} is on node b, c{i} on node c, both{i} on both.
        let (chat, _) = store
            .create_chat(NewChat {
                kind: ChatKind::Group,
                title: "g".into(),
                direct_key: None,
                members: ["s", "b", "c", "both"]
                    .iter()
                    .map(|p| (format!("{p}{i}"), Role::Member))
                    .collect(),
                created_at: 1,
            })
            .await
            .unwrap();
        chats.push(chat.chat_id);
    }
    let (link_a, _) = link(&url, &ns, "a", &stop).await;
    let (link_b, mut on_b) = link(&url, &ns, "b", &stop).await;
    let (link_c, mut on_c) = link(&url, &ns, "c", &stop).await;
    let registry_a =
        RedisRegistry::connect(&RedisTarget::plain(&url), &ns, "a", 60_000, link_a.clone())
            .await
            .unwrap();
    let mut registries = Vec::new();
    let mut session_id = 0;
    for (node, link, prefixes) in [("b", link_b, ["b", "both"]), ("c", link_c, ["c", "both"])] {
        let registry = RedisRegistry::connect(&RedisTarget::plain(&url), &ns, node, 60_000, link)
            .await
            .unwrap();
        for i in 0..CHATS {
            for p in prefixes {
                session_id += 1;
                registry
                    .connect(
                        &SessionKey {
                            user_id: format!("{p}{i}"),
                            device_id: "d".into(),
                            session_id,
                        },
                        0,
                    )
                    .await
                    .unwrap();
            }
        }
        registries.push(registry);
    }
    let mut s = settings(&brokers, &ns);
    s.partitions = 4;
    let bus = KafkaBus::connect(&s).await.unwrap();
    tokio::spawn(
        bus.clone()
            .run_fanout(store, registry_a, link_a, stop.clone()),
    );

    // Chats interleaved, published in large batches so the fan-out gets full batches.
    let mut records = Vec::new();
    for seq in 1..=PER_CHAT {
        for (i, chat) in chats.iter().enumerate() {
            let mut e = message(chat, seq);
            if let Event::Message(m) = &mut e {
                Arc::make_mut(m).sender_user_id = format!("s{i}");
            }
            records.push(record(records.len() as i64, chat, wire::encode_event(&e)));
        }
    }
    let producer = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for chunk in records.chunks(2_000) {
                bus.publish(chunk).await.unwrap();
            }
        })
    };

    // Order check: a seq may repeat an earlier one (a batch sent again after an error is
    // allowed to), but never skip ahead: an event overtaking an earlier one would.
    for (node, on_node) in [("b", &mut on_b), ("c", &mut on_c)] {
        let mut high = vec![0u64; CHATS];
        let (mut n, mut repeats) = (0u64, 0u64);
        while high.iter().any(|h| *h < PER_CHAT) {
            let envelope = tokio::time::timeout(Duration::from_secs(60), on_node.recv())
                .await
                .unwrap_or_else(|_| panic!("node {node}: stuck at {high:?} after {n}"))
                .unwrap();
            n += 1;
            let (targets, event) = wire::decode_envelope(&envelope).unwrap();
            let Event::Message(m) = event else {
                panic!("not a message")
            };
            let i = chats.iter().position(|c| *c == m.chat_id).unwrap();
            let mut users: Vec<String> = targets.into_iter().map(|t| t.user_id).collect();
            users.sort();
            let mut want = [format!("both{i}"), format!("{node}{i}")];
            want.sort();
            assert_eq!(users, want);
            assert!(
                m.seq <= high[i] + 1,
                "node {node}, chat {i}: seq {} after {} (envelope {n})",
                m.seq,
                high[i]
            );
            if m.seq <= high[i] {
                repeats += 1;
            }
            high[i] = high[i].max(m.seq);
        }
        eprintln!("node {node}: {n} envelopes, {repeats} repeats");
    }
    producer.await.unwrap();
    stop.cancel();
}

/// A node's fan-out stops; another takes its partitions over without losing events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Kafka (CHATD_TEST_REDIS_URL, _KAFKA_BROKERS): scripts/test runs it"]
async fn another_node_takes_over_the_partitions() {
    let (url, brokers) = (redis_url(), brokers());
    let ns = namespace();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
    let (chat, _) = store
        .create_chat(NewChat {
            kind: ChatKind::Direct,
            title: String::new(),
            direct_key: Some("alice|bob".into()),
            members: vec![("alice".into(), Role::Member), ("bob".into(), Role::Member)],
            created_at: 1,
        })
        .await
        .unwrap();
    let (link_a, _) = link(&url, &ns, "a", &stop).await;
    let (link_b, mut on_b) = link(&url, &ns, "b", &stop).await;
    let registry =
        RedisRegistry::connect(&RedisTarget::plain(&url), &ns, "b", 60_000, link_b.clone())
            .await
            .unwrap();
    registry
        .connect(
            &SessionKey {
                user_id: "bob".into(),
                device_id: "laptop".into(),
                session_id: 1,
            },
            0,
        )
        .await
        .unwrap();
    let bus_a = KafkaBus::connect(&settings(&brokers, &ns)).await.unwrap();
    let bus_b = KafkaBus::connect(&settings(&brokers, &ns)).await.unwrap();
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let fanout_a = tokio::spawn(bus_a.clone().run_fanout(
        store.clone(),
        registry.clone(),
        link_a.clone(),
        stop_a.clone(),
    ));
    let send = |from: u64, to: u64| {
        let records: Vec<OutboxRecord> = (from..=to)
            .map(|seq| {
                record(
                    seq as i64,
                    &chat.chat_id,
                    wire::encode_event(&message(&chat.chat_id, seq)),
                )
            })
            .collect();
        let bus = bus_a.clone();
        async move { bus.publish(&records).await.unwrap() }
    };
    // Envelopes until `last` arrived; replays (seq at or below the highest seen) are
    // allowed, gaps are not.
    async fn receive(on_b: &mut mpsc::UnboundedReceiver<Vec<u8>>, mut high: u64, last: u64) {
        while high < last {
            let envelope = tokio::time::timeout(Duration::from_secs(30), on_b.recv())
                .await
                .unwrap_or_else(|_| panic!("stuck after seq {high}"))
                .unwrap();
            let Ok((_, Event::Message(m))) = wire::decode_envelope(&envelope) else {
                panic!("not a message");
            };
            assert!(m.seq <= high + 1, "seq {} after {high}", m.seq);
            high = high.max(m.seq);
        }
    }
    send(1, 50).await;
    receive(&mut on_b, 0, 50).await;

    tokio::spawn(bus_b.clone().run_fanout(
        store.clone(),
        registry.clone(),
        link_a.clone(),
        stop_b.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_a.cancel();
    fanout_a.await.unwrap();
    let started = std::time::Instant::now();
    send(51, 100).await;
    receive(&mut on_b, 50, 100).await;
    eprintln!(
        "handover: events flowed again after {:?}",
        started.elapsed()
    );
    stop_b.cancel();
    stop.cancel();
}

/// Throughput of the whole pipeline: outbox sink → Kafka → fan-out → Redis → node channel.
/// `cargo test -p chatd --lib --release bus::kafka -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, needs Redis and Kafka: run by hand (-- --ignored throughput)"]
async fn throughput() {
    let (url, brokers) = (redis_url(), brokers());
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    const N: u64 = 50_000;
    const CHATS: u64 = 200;
    let ns = namespace();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
    let mut chats = Vec::new();
    for i in 0..CHATS {
        let (chat, _) = store
            .create_chat(NewChat {
                kind: ChatKind::Group,
                title: "g".into(),
                direct_key: None,
                members: vec![
                    (format!("s{i}"), Role::Admin),
                    (format!("r{i}"), Role::Member),
                    (format!("o{i}"), Role::Member),
                ],
                created_at: 1,
            })
            .await
            .unwrap();
        chats.push(chat.chat_id);
    }
    let (link_a, _) = link(&url, &ns, "a", &stop).await;
    let (link_b, mut on_b) = link(&url, &ns, "b", &stop).await;
    let registry_a =
        RedisRegistry::connect(&RedisTarget::plain(&url), &ns, "a", 60_000, link_a.clone())
            .await
            .unwrap();
    let registry_b = RedisRegistry::connect(&RedisTarget::plain(&url), &ns, "b", 60_000, link_b)
        .await
        .unwrap();
    for i in 0..CHATS {
        for user in [format!("s{i}"), format!("r{i}")] {
            registry_b
                .connect(
                    &SessionKey {
                        user_id: user,
                        device_id: "d".into(),
                        session_id: i,
                    },
                    0,
                )
                .await
                .unwrap();
        }
    }
    let chats_0 = chats[0].clone();
    let mut s = settings(&brokers, &ns);
    s.partitions = 8;
    let bus = KafkaBus::connect(&s).await.unwrap();
    tokio::spawn(
        bus.clone()
            .run_fanout(store, registry_a, link_a, stop.clone()),
    );

    // Time to the first envelope includes joining the group.
    let warmup = format!("{}", rand::random::<u64>());
    bus.publish(&[record(0, &warmup, wire::encode_event(&message(&warmup, 1)))])
        .await
        .unwrap();
    let mut warm = Vec::new();
    for i in 0..CHATS {
        let chat = chats[i as usize].clone();
        let mut e = message(&chat, 0);
        if let Event::Message(m) = &mut e {
            Arc::make_mut(m).sender_user_id = format!("s{i}");
        }
        warm.push(record(0, &chat, wire::encode_event(&e)));
    }
    let joined = std::time::Instant::now();
    bus.publish(&warm).await.unwrap();
    for _ in 0..CHATS {
        tokio::time::timeout(Duration::from_secs(60), on_b.recv())
            .await
            .expect("warm-up envelope")
            .unwrap();
    }
    eprintln!("first envelopes after {:?}", joined.elapsed());

    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    };
    let started = std::time::Instant::now();
    let producer = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut id = 0i64;
            for round in 0..N / CHATS / 10 {
                let mut batch = Vec::new();
                for k in 0..10 {
                    for (i, chat) in chats.iter().enumerate() {
                        id += 1;
                        let mut e = message(chat, round * 10 + k + 1);
                        if let Event::Message(m) = &mut e {
                            let m = Arc::make_mut(m);
                            m.sender_user_id = format!("s{i}");
                            m.created_at = now_us();
                        }
                        batch.push(record(id, chat, wire::encode_event(&e)));
                    }
                }
                bus.publish(&batch).await.unwrap();
            }
            started.elapsed()
        })
    };
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut latencies_us = Vec::new();
    let (mut disorder, mut n) = (0, 0);
    for _ in 0..N {
        let envelope = tokio::time::timeout(Duration::from_secs(60), on_b.recv())
            .await
            .expect("envelope")
            .unwrap();
        let (targets, event) = wire::decode_envelope(&envelope).unwrap();
        assert_eq!(targets.len(), 2);
        let Event::Message(m) = event else { panic!() };
        let prev = last.insert(m.chat_id.clone(), m.seq).unwrap_or(0);
        if m.seq != prev + 1 {
            disorder += 1;
            if disorder < 10 {
                eprintln!(
                    "chat {} seq {} after {prev} (envelope {n})",
                    m.chat_id, m.seq
                );
            }
        }
        n += 1;
        latencies_us.push(now_us() - m.created_at);
    }
    let produced = producer.await.unwrap();
    let total = started.elapsed();
    if disorder > 0 {
        let all = read(&brokers, &bus.names.messages, (N + CHATS + 1) as usize).await;
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut bad = 0;
        for m in &all {
            if let Ok(Event::Message(msg)) = wire::decode_event(m.payload().unwrap()) {
                if msg.seq == 0 || msg.chat_id == warmup {
                    continue;
                }
                let prev = last.insert(msg.chat_id.clone(), msg.seq).unwrap_or(0);
                if msg.seq != prev + 1 {
                    bad += 1;
                    if bad < 5 {
                        eprintln!(
                            "kafka: chat {} seq {} after {prev} at p{} o{}",
                            msg.chat_id,
                            msg.seq,
                            m.partition(),
                            m.offset()
                        );
                    }
                }
            }
        }
        eprintln!("kafka order violations: {bad}");
    }
    assert_eq!(disorder, 0, "in order per chat");
    latencies_us.sort();
    let pct = |p: usize| latencies_us[latencies_us.len() * p / 100] as f64 / 1000.0;
    eprintln!(
        "{N} messages: produced in {produced:?}, fanned out in {total:?} = {:.0} msgs/s; \
         latency under that load p50 {:.1} ms, p99 {:.1} ms",
        N as f64 / total.as_secs_f64(),
        pct(50),
        pct(99)
    );

    // Latency of single messages on an idle pipeline.
    let mut idle = Vec::new();
    for seq in 1..=50u64 {
        let mut e = message(&warmup, seq + 1);
        if let Event::Message(m) = &mut e {
            Arc::make_mut(m).created_at = now_us();
        }
        let mut e2 = e.clone();
        if let Event::Message(m) = &mut e2 {
            let m = Arc::make_mut(m);
            m.chat_id = chats_0.clone();
            m.sender_user_id = "s0".into();
            m.seq = N / CHATS + seq;
        }
        let sent = std::time::Instant::now();
        bus.publish(&[record(1, &chats_0, wire::encode_event(&e2))])
            .await
            .unwrap();
        on_b.recv().await.unwrap();
        idle.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    idle.sort();
    eprintln!(
        "idle latency (outbox publish → node channel): p50 {:?}, max {:?}",
        idle[idle.len() / 2],
        idle[idle.len() - 1]
    );
    stop.cancel();
}

/// [`settings`] for the services' Kafka SSL listener with `tls`.
fn tls_settings(ns: &str, tls: crate::backend_tls::BackendTls) -> KafkaSettings {
    let brokers = crate::backend_tls::test_env::var("CHATD_TEST_TLS_KAFKA_BROKERS");
    KafkaSettings {
        tls,
        ..settings(&brokers, ns)
    }
}

/// The admin client (topics), the producer (an outbox batch) and the fan-out consumer over the
/// SSL listener, which requires a client certificate: a record goes round.
#[tokio::test]
#[ignore = "needs Kafka's SSL listener (CHATD_TEST_TLS_KAFKA_BROKERS, CHATD_TEST_TLS_CA): scripts/test runs it"]
async fn records_round_trip_over_mutual_tls() {
    let ns = namespace();
    let s = tls_settings(&ns, crate::backend_tls::test_env::trusted());
    let bus = KafkaBus::connect(&s).await.expect("Kafka over TLS");
    bus.publish(&[record(1, "chat-1", b"over tls".to_vec())])
        .await
        .expect("produce over TLS");
    let consumer = client::fanout_consumer(&s, &client::Names::new(&ns), Default::default())
        .expect("consumer over TLS");
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("consume over TLS");
    assert_eq!(
        (m.key(), m.payload()),
        (Some(&b"chat-1"[..]), Some(&b"over tls"[..]))
    );
}

/// Without a client certificate, with one from a CA the broker does not trust, and trusting a
/// CA that did not sign the broker's certificate: connecting fails, naming Kafka and why.
#[tokio::test]
#[ignore = "needs Kafka's SSL listener (CHATD_TEST_TLS_KAFKA_BROKERS, CHATD_TEST_TLS_CA): scripts/test runs it"]
async fn kafka_refuses_tls_without_the_right_certificates() {
    use crate::backend_tls::test_env;
    let cases = [
        ("no client certificate", test_env::without_client_cert()),
        (
            "an untrusted client certificate",
            test_env::untrusted_client(),
        ),
        ("an untrusted server certificate", test_env::untrusted_ca()),
    ];
    // Each waits out the connect timeout: together, not one after the other.
    let tries = cases.map(|(what, tls)| async move {
        let err = KafkaBus::connect(&tls_settings(&namespace(), tls))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected"));
        (what, err)
    });
    for (what, err) in futures_util::future::join_all(tries).await {
        let text = err.to_string();
        eprintln!("{what}: {text}");
        assert!(
            matches!(&err, Error::Unavailable(m) if m.starts_with("cannot reach Kafka at 127.0.0.1:")),
            "{what}: {err:?}"
        );
        assert!(
            text.contains("; last error: ssl://127.0.0.1:"),
            "{what}: {text}"
        );
        assert!(text.contains("SSL"), "{what}: {text}");
    }
}
