//! A cluster whose nodes reach PostgreSQL, Redis and Kafka only through their TLS listeners,
//! each of which requires a client certificate (`scripts/services` makes them; full stack only:
//! `#[ignore]`d, `scripts/test` runs it with `CHAT_TEST_BACKEND=full -- --ignored`).
//!
//! A message from a user on one node to a user on another crosses every backend link: the
//! store write and the outbox relay (PostgreSQL), the fan-out (Kafka), and the node-to-node
//! hand-off and the registry (Redis Pub/Sub) — the nodes never talk to each other directly, so
//! TLS to Redis and Kafka is TLS between the nodes.

use chat_tests::backend_tls::TlsServices;
use chat_tests::cluster::node_name;
use chat_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka with TLS (CHAT_TEST_BACKEND=full, CHATD_SERVICES_TLS_*): scripts/test runs it"]
async fn a_message_crosses_nodes_linked_only_by_mutual_tls() {
    require_full_stack("a_message_crosses_nodes_linked_only_by_mutual_tls");
    let tls = TlsServices::from_env();
    let c =
        TestCluster::start_with_backend_env(2, ServerOptions::default(), |b| tls.node_env(b)).await;
    for (i, node) in c.nodes.iter().enumerate() {
        let log = node.stderr();
        assert!(
            log.contains("PostgreSQL, Redis and Kafka connected"),
            "{}: {log}",
            node_name(i)
        );
    }
    // The nodes' PostgreSQL sessions are the certificate's role, over TLS (pg_hba.conf lets
    // that role in only with its certificate).
    let db = c.backend().database_name().expect("a database");
    let sessions = c
        .backend()
        .sql(&format!(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = '{db}' AND a.usename = 'chatd_tls'"
        ))
        .await;
    let (over_tls, all) = sessions.split_once('|').expect("two counts");
    assert!(
        all != "0" && over_tls == all,
        "sessions over TLS|all: {sessions}"
    );

    let chat = open_direct(&mut c.node(0).client("alice", "phone").await, "bob").await;
    let mut bob = c.node(1).connect("bob", "phone").await;
    let alice = c.node(0).connect("alice", "phone").await;
    alice
        .send_text(&chat.chat_id, "m1", "over mutual TLS")
        .await;
    let got = bob.expect_message().await;
    assert_eq!(
        (got.chat_id.as_str(), got.seq, got.sender_user_id.as_str()),
        (chat.chat_id.as_str(), 1, "alice")
    );
    assert_eq!(
        got.content.as_ref().map(|c| c.text.as_str()),
        Some("over mutual TLS")
    );
}

/// A node given the TLS endpoints without a client certificate does not start, and says which
/// backend refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL, Redis and Kafka with TLS (CHAT_TEST_BACKEND=full, CHATD_SERVICES_TLS_*): scripts/test runs it"]
async fn a_node_without_a_client_certificate_is_refused_and_says_so() {
    require_full_stack("a_node_without_a_client_certificate_is_refused_and_says_so");
    let tls = TlsServices::from_env();
    let scratch = tempfile::tempdir().expect("tempdir");
    let backend = Backend::FullStack.provision(scratch.path()).await;
    let mut env = tls.node_env(&backend);
    // PostgreSQL with its certificate; Redis with the CA only.
    env.retain(|(k, _)| k != "CHATD_REDIS_TLS_CERT" && k != "CHATD_REDIS_TLS_KEY");
    let mut opts = ServerOptions::default();
    opts.env.extend(env);
    let out = TestServer::run_expecting_exit(opts).await;
    assert!(
        out.status.is_some_and(|s| !s.success()),
        "exit {:?}\n{}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains("cannot connect to Redis at 127.0.0.1:"),
        "{}",
        out.stderr
    );
}
