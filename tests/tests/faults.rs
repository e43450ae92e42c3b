//! Faults in a three-node cluster: a node SIGKILLed in the middle of a thousand sends, Redis
//! restarted, Kafka stopped, PostgreSQL stopped — while clients keep sending and receiving like
//! real ones (reconnect on stream errors with their last delivered seq per chat, retry unanswered
//! sends with the same client_msg_id, drop duplicates by seq; see `chat_tests::resilient`).
//!
//! These tests stop and start the services of `CHATD_SERVICES_DIR` with `scripts/services`, so
//! they are `#[ignore]`d and run only when asked three times: `--ignored`,
//! `CHAT_TEST_BACKEND=full` and `CHAT_TEST_FAULTS=1` (asked for without the last two, they fail),
//! and never next to other tests (`--test-threads=1`, and nothing else may use those services
//! meanwhile; `scripts/test` runs them last). Every test puts back what it stopped, also when it fails.

use chat_tests::resilient::*;
use chat_tests::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;

/// One fault test at a time, even if the harness is asked for more threads.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Panics, saying why, unless this run is on the full stack with `CHAT_TEST_FAULTS=1`: every
/// test here is `#[ignore]`d, and one asked for (`--ignored`) where it cannot run fails rather
/// than passes untested.
fn require_fault_run(test: &str) {
    require_full_stack(test);
    assert!(
        std::env::var("CHAT_TEST_FAULTS").as_deref() == Ok("1"),
        "{test} stops and starts the services of CHATD_SERVICES_DIR; set CHAT_TEST_FAULTS=1 \
         (and use services no one else needs) to run it"
    );
}

/// Restarts a stopped service when dropped (a failing test leaves the services as it found
/// them).
struct ServiceGuard {
    services: Services,
    name: &'static str,
    down: bool,
}

impl ServiceGuard {
    /// `scripts/services stop NAME`.
    async fn stop(services: &Services, name: &'static str) -> ServiceGuard {
        let mut g = ServiceGuard {
            services: services.clone(),
            name,
            down: true,
        };
        let t = Instant::now();
        services.control("stop", name).await;
        eprintln!("faults: {name} stopped in {:?}", t.elapsed());
        g.down = true;
        g
    }

    /// `scripts/services restart NAME` (the guard starts it if the restart fails midway).
    async fn restart(services: &Services, name: &'static str) -> ServiceGuard {
        let mut g = ServiceGuard {
            services: services.clone(),
            name,
            down: true,
        };
        let t = Instant::now();
        services.control("restart", name).await;
        eprintln!("faults: {name} restarted in {:?}", t.elapsed());
        g.down = false;
        g
    }

    /// `scripts/services start NAME` (waits until it is ready).
    async fn start(&mut self) {
        let t = Instant::now();
        self.services.control("start", self.name).await;
        eprintln!("faults: {} started in {:?}", self.name, t.elapsed());
        self.down = false;
    }
}

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        if self.down {
            eprintln!(
                "faults: starting {} again (test ended while it was down)",
                self.name
            );
            if let Err(e) = self.services.try_control("start", self.name) {
                eprintln!("faults: could not start {}: {e}", self.name);
            }
        }
    }
}

/// Start whatever an earlier (crashed) run left stopped.
async fn all_services_running(services: &Services) {
    let services = services.clone();
    tokio::task::spawn_blocking(move || {
        for name in services.stopped() {
            eprintln!("faults: {name} was not running; starting it");
            services.control_blocking("start", &name);
        }
    })
    .await
    .unwrap();
}

/// A three-node cluster with one group: senders `s0..s2` ("sender" device on node i), and
/// receiving devices spread over every node (each member's phone, plus a second device of one
/// receiver and of one sender).
struct Rig {
    cluster: TestCluster,
    services: Services,
    chat_id: String,
    /// What the clients know of the nodes' addresses.
    nodes: NodeList,
    goal_tx: watch::Sender<Option<Goal>>,
    receivers: Vec<JoinHandle<Receiver>>,
    /// A member who reads the history.
    historian: &'static str,
}

const SENDERS: [&str; 3] = ["s0", "s1", "s2"];
const READERS: [&str; 6] = ["r0", "r1", "r2", "r3", "r4", "r5"];

impl Rig {
    async fn new() -> Rig {
        let (services, cluster) = Rig::start().await;
        let members: Vec<&str> = SENDERS.iter().chain(READERS.iter()).copied().collect();
        let g = create_group(
            &mut cluster.node(0).client("s0", "setup").await,
            "faults",
            &members[1..],
        )
        .await;
        let mut devices: Vec<(&str, &str, usize)> = READERS
            .iter()
            .enumerate()
            .map(|(i, u)| (*u, "phone", i % 3))
            .collect();
        devices.push(("r0", "tablet", 1));
        devices.push(("s1", "laptop", 0));
        Rig::with_chat(services, cluster, g.chat_id, &devices, "r5").await
    }

    /// A direct chat between `s1` (who sends from node 2, `Rig::sender(1)`) and `r1`: r1's
    /// devices on nodes 1 and 3, s1's second device on node 3. Its messages also travel as
    /// direct copies (`bus::direct`).
    async fn direct() -> Rig {
        let (services, cluster) = Rig::start().await;
        let chat = open_direct(&mut cluster.node(1).client("s1", "setup").await, "r1").await;
        let devices = [("r1", "phone", 0), ("r1", "tablet", 2), ("s1", "laptop", 2)];
        Rig::with_chat(services, cluster, chat.chat_id, &devices, "r1").await
    }

    async fn start() -> (Services, TestCluster) {
        let services = Services::from_env();
        services.dir();
        all_services_running(&services).await;
        (services, TestCluster::start_with(3, NO_RATE_LIMIT).await)
    }

    /// Connects `devices` (user, device, home node) as resilient receivers of `chat_id`.
    async fn with_chat(
        services: Services,
        cluster: TestCluster,
        chat_id: String,
        devices: &[(&str, &str, usize)],
        historian: &'static str,
    ) -> Rig {
        let nodes = NodeList::new(cluster.addrs());
        let (goal_tx, goal_rx) = watch::channel(None);
        let mut receivers = Vec::new();
        for &(user, device, home) in devices {
            let token = cluster.node(home).token(user, device).await;
            let mut r = Receiver::new(user, device, &token, nodes.clone(), home);
            assert!(
                r.ensure_connected(Instant::now() + Duration::from_secs(60))
                    .await,
                "{}: could not connect: {}",
                r.who(),
                r.report()
            );
            receivers.push(r.spawn(goal_rx.clone()));
        }
        Rig {
            cluster,
            services,
            nodes,
            chat_id,
            goal_tx,
            receivers,
            historian,
        }
    }

    async fn sender(&self, i: usize) -> Sender {
        let token = self.cluster.node(i).token(SENDERS[i], "sender").await;
        Sender::new(SENDERS[i], "sender", &token, self.nodes.clone(), i)
    }

    /// Tell the receivers what they must reach, then collect them.
    async fn finish_receivers(&mut self, last_seq: u64, timeout: Duration) -> Vec<Receiver> {
        let _ = self.goal_tx.send(Some(Goal {
            targets: HashMap::from([(self.chat_id.clone(), last_seq)]),
            deadline: Instant::now() + timeout,
        }));
        join_each(std::mem::take(&mut self.receivers)).await
    }

    /// The chat's whole history through node `n`.
    async fn history(&self, n: usize) -> Vec<chat_tests::pb::Message> {
        let mut c = self.cluster.node(n).client(self.historian, "history").await;
        full_history(&mut c, &self.chat_id).await
    }
}

/// Every receiver has exactly seqs 1..=last (after dropping duplicates), in order, and each
/// seq is the message the history (and the acks) name.
fn check_receivers(
    receivers: &[Receiver],
    chat: &str,
    last: u64,
    by_seq: &BTreeMap<u64, chat_tests::pb::Message>,
) {
    let mut problems = Vec::new();
    for r in receivers {
        let seqs = r.seqs(chat);
        let want: Vec<u64> = (1..=last).collect();
        if !r.violations.is_empty() || seqs != want {
            problems.push(format!(
                "{} has {} messages (last {:?}), want 1..={last}\n{}",
                r.who(),
                seqs.len(),
                seqs.last(),
                r.report()
            ));
            continue;
        }
        for m in r.messages.get(chat).into_iter().flatten() {
            if let Some(want) = by_seq.get(&m.seq) {
                if want.message_id != m.message_id || want.client_msg_id != m.client_msg_id {
                    problems.push(format!(
                        "{}: seq {} is {:?}/{:?}, the store says {:?}/{:?}",
                        r.who(),
                        m.seq,
                        m.message_id,
                        m.client_msg_id,
                        want.message_id,
                        want.client_msg_id
                    ));
                    break;
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "deliveries:\n{}",
        problems.join("\n\n")
    );
    for r in receivers {
        eprintln!(
            "faults: {} ok: {} messages, {} duplicates dropped, {} disconnects, {} failed connects, nodes {:?}",
            r.who(),
            last,
            r.duplicates,
            r.disconnects,
            r.failed_connects,
            r.welcomed_by
        );
    }
}

/// All acks of all senders by seq; panics if a seq was acked for two messages.
fn acked_by_seq(senders: &[Sender]) -> BTreeMap<u64, chat_tests::pb::Message> {
    let mut by_seq = BTreeMap::new();
    for s in senders {
        for m in s.acked.values() {
            if let Some(prev) = by_seq.insert(m.seq, m.clone()) {
                assert_eq!(
                    prev.message_id, m.message_id,
                    "seq {} acked for two different messages",
                    m.seq
                );
            }
        }
    }
    by_seq
}

/// Every acked message is in the history, unchanged; the history is gap-free 1..=n.
fn check_history_has_acked(
    history: &[chat_tests::pb::Message],
    acked: &BTreeMap<u64, chat_tests::pb::Message>,
) -> BTreeMap<u64, chat_tests::pb::Message> {
    let n = history.len() as u64;
    assert_seq_range(history, 1, n, "history is gap-free");
    let ids: BTreeSet<&str> = history.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        history.len(),
        "every client_msg_id is stored once"
    );
    let by_seq: BTreeMap<u64, chat_tests::pb::Message> =
        history.iter().map(|m| (m.seq, m.clone())).collect();
    for (seq, a) in acked {
        let h = by_seq.get(seq).unwrap_or_else(|| {
            panic!(
                "acked seq {seq} ({}) is not in the history",
                a.client_msg_id
            )
        });
        assert_eq!(
            (&h.message_id, &h.client_msg_id, text_of(h)),
            (&a.message_id, &a.client_msg_id, text_of(a)),
            "acked seq {seq} differs in the history"
        );
    }
    by_seq
}

fn check_senders(senders: &[Sender], want_each: &[usize]) {
    for (s, want) in senders.iter().zip(want_each) {
        assert!(
            s.errors.is_empty() && s.violations.is_empty() && s.acked.len() == *want,
            "sender {} acked {} of {want}:\n{}\nerrors: {:?}",
            s.who(),
            s.acked.len(),
            s.report(),
            s.errors.iter().take(5).collect::<Vec<_>>()
        );
    }
}

async fn wait_for_progress(p: &AtomicUsize, n: usize, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while p.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {n} acks within {timeout:?}",
            p.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stream that never broke saw every message once: the session dropped the second copy of
/// each (a direct copy and Kafka's, see `bus::direct`), nothing reached the client twice.
fn check_unbroken_streams_saw_no_duplicate(receivers: &[Receiver]) {
    for r in receivers.iter().filter(|r| r.disconnects == 0) {
        assert_eq!(
            r.duplicates,
            0,
            "{}: a stream that never broke got a message twice\n{}",
            r.who(),
            r.report()
        );
    }
}

/// Direct copies the sessions of `nodes` passed on (before Kafka's copy).
async fn direct_copies_delivered(cluster: &TestCluster, nodes: &[usize]) -> u64 {
    let mut n = 0;
    for &i in nodes {
        n += cluster
            .node(i)
            .metric(r#"chatd_direct_copies_total{outcome="delivered"}"#)
            .await;
    }
    n
}

// ---------------------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops and starts PostgreSQL, Redis and Kafka (CHAT_TEST_FAULTS=1): scripts/test runs it"]
async fn a_node_killed_in_the_middle_of_a_thousand_sends_loses_nothing() {
    require_fault_run("a_node_killed_in_the_middle_of_a_thousand_sends_loses_nothing");
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new().await;
    let progress = Arc::new(AtomicUsize::new(0));
    let counts = [334usize, 333, 333];
    let mut tasks = Vec::new();
    for i in 0..3 {
        let s = rig.sender(i).await;
        let mut cfg = SenderConfig::new(Duration::from_secs(240));
        cfg.pace = Some(Duration::from_millis(6));
        let msgs = outgoing(&rig.chat_id, SENDERS[i], counts[i]);
        tasks.push(s.spawn(msgs, cfg, Some(progress.clone())));
    }
    wait_for_progress(&progress, 300, Duration::from_secs(120), "before the kill").await;
    let killed_at = Instant::now();
    rig.cluster.node_mut(1).kill().await;
    let at_kill = progress.load(Ordering::SeqCst);
    eprintln!("faults: SIGKILLed node-2 after {at_kill} of 1000 acks");
    assert!(at_kill < 1000, "the kill came too late to matter");

    let senders = join_each(tasks).await;
    eprintln!(
        "faults: all sends answered {:?} after the kill",
        killed_at.elapsed()
    );
    check_senders(&senders, &counts);
    for s in &senders {
        eprintln!("faults: {}", s.report().lines().next().unwrap_or_default());
    }
    let acked = acked_by_seq(&senders);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>(),
        "1000 messages acked, each stored once: seqs 1..=1000"
    );

    let receivers = rig.finish_receivers(1000, Duration::from_secs(180)).await;
    eprintln!(
        "faults: receivers done {:?} after the kill",
        killed_at.elapsed()
    );
    let history = rig.history(0).await;
    assert_eq!(history.len(), 1000, "history holds the 1000 messages once");
    let by_seq = check_history_has_acked(&history, &acked);
    check_receivers(&receivers, &rig.chat_id, 1000, &by_seq);

    // The crashed node comes back and serves again.
    rig.cluster.node_mut(1).start_again().await;
    let mut web = rig.cluster.node(1).connect("r1", "web").await;
    let m = send_text(
        &mut rig.cluster.node(2).client("s2", "desk").await,
        &rig.chat_id,
        "after",
        "after the crash",
    )
    .await;
    assert_eq!(m.seq, 1001);
    assert_eq!(web.expect_message().await.message_id, m.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops and starts PostgreSQL, Redis and Kafka (CHAT_TEST_FAULTS=1): scripts/test runs it"]
async fn a_redis_restart_mid_stream_loses_nothing_and_delivery_resumes() {
    require_fault_run("a_redis_restart_mid_stream_loses_nothing_and_delivery_resumes");
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new().await;
    let progress = Arc::new(AtomicUsize::new(0));
    let counts = [250usize, 0, 250];
    let mut tasks = Vec::new();
    for i in [0, 2] {
        let s = rig.sender(i).await;
        let mut cfg = SenderConfig::new(Duration::from_secs(240));
        cfg.pace = Some(Duration::from_millis(20));
        cfg.window = 4;
        let msgs = outgoing(&rig.chat_id, SENDERS[i], counts[i]);
        tasks.push(s.spawn(msgs, cfg, Some(progress.clone())));
    }
    wait_for_progress(
        &progress,
        100,
        Duration::from_secs(120),
        "before the restart",
    )
    .await;
    let guard = ServiceGuard::restart(&rig.services, "redis").await;
    let back_at = Instant::now();
    let at_back = progress.load(Ordering::SeqCst);
    eprintln!("faults: Redis back after {at_back} of 500 acks");

    let senders = join_each(tasks).await;
    drop(guard);
    check_senders(&senders, &[250, 250]);
    for s in &senders {
        eprintln!("faults: {}", s.report().lines().next().unwrap_or_default());
    }
    let acked = acked_by_seq(&senders);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>(),
        "500 messages acked once each"
    );
    // Which messages were acked before Redis came back (their delivery may wait for it).
    let acked_before_back: Vec<u64> = senders
        .iter()
        .flat_map(|s| {
            s.acked
                .iter()
                .filter(|(id, _)| s.acked_at[*id] <= back_at)
                .map(|(_, m)| m.seq)
        })
        .collect();

    let receivers = rig.finish_receivers(500, Duration::from_secs(120)).await;
    let history = rig.history(1).await;
    let by_seq = check_history_has_acked(&history, &acked);
    assert_eq!(history.len(), 500);
    check_receivers(&receivers, &rig.chat_id, 500, &by_seq);

    // Delivery resumed within seconds: everything acked before Redis was back reached every
    // device soon after.
    let mut worst = Duration::ZERO;
    for r in &receivers {
        for seq in &acked_before_back {
            let at = r
                .arrival_of(&rig.chat_id, *seq)
                .expect("checked above: every seq arrived");
            worst = worst.max(at.saturating_duration_since(back_at));
        }
    }
    eprintln!("faults: last delivery of a message acked before Redis was back: {worst:?} after");
    assert!(
        worst <= Duration::from_secs(30),
        "delivery after the Redis restart took {worst:?} (more than 30 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops and starts PostgreSQL, Redis and Kafka (CHAT_TEST_FAULTS=1): scripts/test runs it"]
async fn sends_are_acked_while_kafka_is_down_and_delivered_when_it_returns() {
    require_fault_run("sends_are_acked_while_kafka_is_down_and_delivered_when_it_returns");
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new().await;
    let mut s0 = rig.sender(0).await;
    let s2 = rig.sender(2).await;

    // Before: some traffic, delivered normally.
    let cfg = SenderConfig::new(Duration::from_secs(120));
    s0.run(outgoing(&rig.chat_id, "before", 50), &cfg, None)
        .await;
    check_senders(std::slice::from_ref(&s0), &[50]);

    let mut guard = ServiceGuard::stop(&rig.services, "kafka").await;
    // While Kafka is down the store still acks: no errors, no retries needed.
    let mut cfg = SenderConfig::new(Duration::from_secs(120));
    cfg.retry_unavailable = false;
    cfg.pace = Some(Duration::from_millis(10));
    let t = Instant::now();
    let a = s0.spawn(outgoing(&rig.chat_id, "down-a", 100), cfg.clone(), None);
    let b = s2.spawn(outgoing(&rig.chat_id, "down-b", 100), cfg, None);
    let senders = join_each(vec![a, b]).await;
    eprintln!(
        "faults: 200 sends acked in {:?} with Kafka down",
        t.elapsed()
    );
    for s in &senders {
        assert!(
            s.retried.is_empty() && s.errors.is_empty(),
            "{}: sends failed while only Kafka was down: {:?}\n{}",
            s.who(),
            s.errors
                .iter()
                .chain(&s.retried)
                .take(5)
                .collect::<Vec<_>>(),
            s.report()
        );
    }
    check_senders(&senders, &[150, 100]);

    guard.start().await;
    let back_at = Instant::now();
    let acked = acked_by_seq(&senders);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=250).collect::<Vec<_>>()
    );
    let receivers = rig.finish_receivers(250, Duration::from_secs(180)).await;
    eprintln!(
        "faults: everything delivered {:?} after Kafka was back",
        back_at.elapsed()
    );
    let history = rig.history(2).await;
    assert_eq!(history.len(), 250);
    let by_seq = check_history_has_acked(&history, &acked);
    check_receivers(&receivers, &rig.chat_id, 250, &by_seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops and starts PostgreSQL, Redis and Kafka (CHAT_TEST_FAULTS=1): scripts/test runs it"]
async fn a_direct_chat_loses_and_repeats_nothing_when_its_committing_node_is_killed() {
    require_fault_run("a_direct_chat_loses_and_repeats_nothing_when_its_committing_node_is_killed");
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::direct().await;
    let progress = Arc::new(AtomicUsize::new(0));
    let mut cfg = SenderConfig::new(Duration::from_secs(240));
    cfg.pace = Some(Duration::from_millis(5));
    let task = rig.sender(1).await.spawn(
        outgoing(&rig.chat_id, "s1", 600),
        cfg,
        Some(progress.clone()),
    );
    wait_for_progress(&progress, 200, Duration::from_secs(120), "before the kill").await;
    // Node 2 commits s1's sends and sends their direct copies: it dies between a commit and
    // its copies, its relay's reads and its Kafka produce.
    rig.cluster.node_mut(1).kill().await;
    let at_kill = progress.load(Ordering::SeqCst);
    eprintln!("faults: SIGKILLed node-2, the committing node, after {at_kill} of 600 acks");
    assert!(at_kill < 600, "the kill came too late to matter");

    let senders = join_each(vec![task]).await;
    check_senders(&senders, &[600]);
    let acked = acked_by_seq(&senders);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=600).collect::<Vec<_>>(),
        "600 messages acked, each stored once"
    );
    let receivers = rig.finish_receivers(600, Duration::from_secs(180)).await;
    let history = rig.history(0).await;
    assert_eq!(history.len(), 600, "history holds the 600 messages once");
    let by_seq = check_history_has_acked(&history, &acked);
    check_receivers(&receivers, &rig.chat_id, 600, &by_seq);
    check_unbroken_streams_saw_no_duplicate(&receivers);
    let delivered = direct_copies_delivered(&rig.cluster, &[0, 2]).await;
    eprintln!("faults: {delivered} deliveries were direct copies");
    assert!(
        delivered > 0,
        "no direct copy was used: the test did not test them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops and starts PostgreSQL, Redis and Kafka (CHAT_TEST_FAULTS=1): scripts/test runs it"]
async fn with_kafka_down_a_direct_chat_is_delivered_live_and_once() {
    require_fault_run("with_kafka_down_a_direct_chat_is_delivered_live_and_once");
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::direct().await;
    let s1 = rig.sender(1).await;
    let mut guard = ServiceGuard::stop(&rig.services, "kafka").await;
    let mut cfg = SenderConfig::new(Duration::from_secs(120));
    cfg.retry_unavailable = false;
    cfg.pace = Some(Duration::from_millis(10));
    let senders = join_each(vec![s1.spawn(
        outgoing(&rig.chat_id, "down", 200),
        cfg,
        None,
    )])
    .await;
    check_senders(&senders, &[200]);
    let acked = acked_by_seq(&senders);

    // Every device has all of it while Kafka is still down: the direct copies.
    let mut receivers = rig.finish_receivers(200, Duration::from_secs(60)).await;
    let history = rig.history(0).await;
    let by_seq = check_history_has_acked(&history, &acked);
    check_receivers(&receivers, &rig.chat_id, 200, &by_seq);
    assert_eq!(
        direct_copies_delivered(&rig.cluster, &[0, 2]).await,
        3 * 200
    );

    // Kafka back: the ordered copies reach both receiving nodes, and no stream shows one.
    guard.start().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for node in [0, 2] {
        let series = r#"chatd_cluster_message_age_seconds_count{hop="node_received"}"#;
        loop {
            let n = rig.cluster.node(node).metric_if_any(series).await;
            if n.unwrap_or(0) >= 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: {n:?} of 200 ordered copies within 120 s of Kafka's return",
                node + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for r in receivers.iter_mut() {
        r.pump(QUIET_PERIOD).await;
    }
    check_receivers(&receivers, &rig.chat_id, 200, &by_seq);
    for r in &receivers {
        assert_eq!(r.disconnects, 0, "{}: {}", r.who(), r.report());
    }
    check_unbroken_streams_saw_no_duplicate(&receivers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops and starts PostgreSQL, Redis and Kafka (CHAT_TEST_FAULTS=1): scripts/test runs it"]
async fn with_postgresql_down_sends_fail_unavailable_and_nothing_acked_is_lost() {
    require_fault_run("with_postgresql_down_sends_fail_unavailable_and_nothing_acked_is_lost");
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new().await;
    let mut s0 = rig.sender(0).await;
    let s1 = rig.sender(1).await;
    let mut s2 = rig.sender(2).await;

    let cfg = SenderConfig::new(Duration::from_secs(120));
    s0.run(outgoing(&rig.chat_id, "before", 30), &cfg, None)
        .await;
    check_senders(std::slice::from_ref(&s0), &[30]);

    // s1 sends all along, across the stop and the start, never retrying: each send is either
    // acked (and must then be stored) or refused.
    let mut cross = SenderConfig::new(Duration::from_secs(240));
    cross.retry_unavailable = false;
    cross.pace = Some(Duration::from_millis(50));
    cross.window = 4;
    let crossed = Arc::new(AtomicUsize::new(0));
    let crossing = s1.spawn(
        outgoing(&rig.chat_id, "cross", 300),
        cross,
        Some(crossed.clone()),
    );
    wait_for_progress(&crossed, 20, Duration::from_secs(60), "crossing sender").await;

    // s2 connects now: a node may well refuse new sessions while it cannot read cursors.
    assert!(
        s2.ensure_connected(Instant::now() + Duration::from_secs(60))
            .await,
        "{}",
        s2.report()
    );
    let mut guard = ServiceGuard::stop(&rig.services, "postgres").await;
    let down_at = Instant::now();

    // PostgreSQL is certainly down: every send is refused with UNAVAILABLE, none acked.
    let mut cfg = SenderConfig::new(Duration::from_secs(120));
    cfg.retry_unavailable = false;
    cfg.window = 4;
    s2.run(outgoing(&rig.chat_id, "down", 20), &cfg, None).await;
    assert!(
        s2.acked.is_empty(),
        "acked while PostgreSQL was down (false acks): {:?}",
        s2.acked.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        s2.errors.len(),
        20,
        "every send answered while PostgreSQL is down:\n{}",
        s2.report()
    );
    for e in &s2.errors {
        assert_eq!(
            e.code,
            Code::Unavailable as i32,
            "send refused with UNAVAILABLE while PostgreSQL is down: {e:?}"
        );
    }
    let mut unary = rig.cluster.node(0).client("s0", "unary").await;
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        send_unary(&mut unary, &rig.chat_id, "unary-down", Some(text("x"))),
    )
    .await
    .expect("unary SendMessage answered within 60 s while PostgreSQL is down");
    assert_code(
        r,
        Code::Unavailable,
        "unary SendMessage with PostgreSQL down",
    );

    // The nodes stay up.
    for n in &mut rig.cluster.nodes {
        assert!(
            n.wait_exit(Duration::from_millis(10)).await.is_none(),
            "{:?} exited while PostgreSQL was down:\n{}",
            n.node_id(),
            n.stderr()
        );
        let h = http::http_get(n.addr, "/healthz")
            .await
            .expect("GET /healthz");
        assert_eq!(
            h.status,
            200,
            "{:?} /healthz with PostgreSQL down",
            n.node_id()
        );
        let r = http::http_get(n.addr, "/readyz")
            .await
            .expect("GET /readyz");
        assert!(
            r.status == 200 || r.status == 503,
            "{:?} /readyz: {}",
            n.node_id(),
            r.head
        );
        eprintln!(
            "faults: {:?} /readyz with PostgreSQL down: {}",
            n.node_id(),
            r.status
        );
    }
    eprintln!("faults: PostgreSQL down for {:?}", down_at.elapsed());

    guard.start().await;
    let up_at = Instant::now();
    // Sends work again (poll: the pools reconnect).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    loop {
        i += 1;
        let r = send_unary(
            &mut unary,
            &rig.chat_id,
            &format!("probe-{i}"),
            Some(text("p")),
        )
        .await;
        match r {
            Ok(_) => break,
            Err(s) => {
                assert!(
                    Instant::now() < deadline,
                    "sends still fail 60 s after PostgreSQL came back: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    eprintln!(
        "faults: sends succeed {:?} after PostgreSQL was back",
        up_at.elapsed()
    );
    let s0_after = {
        let cfg = SenderConfig::new(Duration::from_secs(120));
        s0.run(outgoing(&rig.chat_id, "after", 30), &cfg, None)
            .await;
        s0
    };
    check_senders(std::slice::from_ref(&s0_after), &[60]);
    let crossing = join_each(vec![crossing]).await.remove(0);
    assert!(crossing.violations.is_empty(), "{}", crossing.report());
    for e in &crossing.errors {
        assert_eq!(
            e.code,
            Code::Unavailable as i32,
            "the crossing sender was refused with UNAVAILABLE only: {e:?}"
        );
    }
    eprintln!(
        "faults: crossing sender: {} acked, {} refused",
        crossing.acked.len(),
        crossing.errors.len()
    );
    assert_eq!(
        crossing.acked.len() + crossing.errors.len(),
        300,
        "every crossing send answered:\n{}",
        crossing.report()
    );

    let senders = vec![s0_after, crossing, s2];
    let acked = acked_by_seq(&senders);
    let history = rig.history(1).await;
    let by_seq = check_history_has_acked(&history, &acked);
    let refused_but_stored = senders
        .iter()
        .flat_map(|s| &s.errors)
        .filter(|e| history.iter().any(|m| m.client_msg_id == e.client_msg_id))
        .count();
    eprintln!(
        "faults: history {} messages; {} acked; {refused_but_stored} refused sends are stored anyway",
        history.len(),
        acked.len()
    );
    let last = history.len() as u64;
    let receivers = rig.finish_receivers(last, Duration::from_secs(120)).await;
    check_receivers(&receivers, &rig.chat_id, last, &by_seq);
}
