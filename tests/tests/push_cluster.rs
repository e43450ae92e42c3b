//! Push notifications from a cluster: a chatd node on PostgreSQL, Redis and Kafka puts a job on
//! `chat.push` for each member with no live device, and `chatd push-worker` (its own process)
//! sends them through the providers, here the local fakes over TLS. Needs the full stack, so
//! the suite is `#[ignore]`d; scripts/test runs it with the cluster suite.

use chat_tests::push::*;
use chat_tests::*;
use std::time::Duration;

/// The chat node, and a push worker on the same database, Redis and Kafka namespace.
async fn node_and_worker(f: &Fakes) -> (TestServer, TestServer) {
    require_full_stack("push_cluster");
    let node = f.server().await;
    let mut opts = f.options();
    opts.command = "push-worker";
    let scratch = tempfile::tempdir().expect("tempdir");
    let worker = TestServer::start_node(
        opts,
        node.backend().clone(),
        Some("push-1".to_string()),
        scratch,
    )
    .await;
    (node, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka (CHAT_TEST_BACKEND=full); scripts/test runs it"]
async fn the_push_worker_sends_the_clusters_jobs_and_a_killed_one_loses_none() {
    let f = fakes().await;
    let (node, mut worker) = node_and_worker(&f).await;
    let (mut alice, chat, _) = bob_and_alice(&f, &node).await;
    send_text(&mut alice, &chat, "m1", "from the cluster").await;
    until("a push at every provider", || f.counts() == [1, 1, 1, 1]).await;
    let web = f.web.delivered()[0].json().expect("JSON payload");
    assert_eq!(web["body"], "from the cluster", "{web}");
    assert_eq!(pushkeys(&f.hook.notifications()[0]), [BOB_HOOK]);

    // A muted chat: the worker leaves it out.
    let mut bob = node.client("bob", "phone").await;
    set_muted(&mut bob, &chat, true).await;
    send_text(&mut alice, &chat, "muted", "shh").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.counts(), [1, 1, 1, 1], "bob muted the chat: no push");
    set_muted(&mut bob, &chat, false).await;

    // A connected device means no job at all.
    let mut laptop = node.connect("bob", "laptop").await;
    send_text(&mut alice, &chat, "m2", "you're here").await;
    laptop.expect_message().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.counts(), [1, 1, 1, 1], "bob is connected: no push");
    laptop.close();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Each provider reads chat.push in its own group: a stalled gateway holds back only the
    // webhook's pushes.
    f.hook.answer_next(push_fakes::server::Answer::stall());
    send_text(&mut alice, &chat, "m3", "are you there").await;
    until("the stalled webhook push", || {
        f.hook.notifications().len() == 2
    })
    .await;
    send_text(&mut alice, &chat, "m4", "hello?").await;
    until("the other providers' pushes of m3 and m4", || {
        f.counts()[..3] == [3, 3, 3]
    })
    .await;

    // The worker dies while the gateway stalls: the webhook's jobs are not committed, and the
    // worker that comes back sends them again; the other groups committed theirs. A lane
    // commits just after its provider answered, so the kill waits for those commits: killed
    // in between, a lane sends again (at least once, by design), which is not what this step
    // checks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.kill_and_restart().await;
    until("the push sent again by the restarted worker", || {
        f.hook.notifications().len() == 3
    })
    .await;
    let last = &f.hook.notifications()[2];
    assert_eq!(pushkeys(last), [BOB_HOOK], "{last}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.counts()[..3],
        [3, 3, 3],
        "a group sent again what it had committed"
    );

    // chat.push.dlq's depth, all providers together.
    let metrics = chat_tests::http::http_get(worker.addr, "/metrics")
        .await
        .expect("GET /metrics");
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        metrics.contains("chatd_push_dlq_depth{provider=\"all\"} 0"),
        "{metrics}"
    );
}

/// Figures, not a check: `CHATD_BIN=target/release/chatd` with the full stack's variables,
/// `cargo test -p chat-tests --test push_cluster bench_ -- --ignored --nocapture`. The
/// embedded benchmark's rounds (see `bench_fan_out`), sent by a node and pushed by
/// `chatd push-worker` through Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures (see its doc comment)"]
async fn bench_push_fan_out_per_provider() {
    let f = fakes().await;
    let (node, _worker) = node_and_worker(&f).await;
    bench_fan_out(&f, &node).await;
}
