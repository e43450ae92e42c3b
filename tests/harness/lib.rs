//! Test harness for end-to-end tests of `chatd`.
//!
//! Every test starts its own server process ([`TestServer::start`]) with a fresh data directory
//! and talks to it over gRPC exactly like a real client would:
//!
//! ```ignore
//! let server = TestServer::start().await;
//! let mut alice = server.client("alice", "phone");
//! let chat = open_direct(&mut alice, "bob").await;
//! let mut bob = server.connect("bob", "laptop").await;   // Hello + Welcome + SyncComplete
//! send_text(&mut alice, &chat.chat_id, "m1", "hi").await;
//! let msg = bob.expect_message().await;
//! ```
//!
//! The same tests run on the embedded default or, with `CHAT_TEST_BACKEND=full`, on PostgreSQL,
//! Redis and Kafka (see [`Backend`]); [`TestCluster`] starts several nodes of one cluster, and
//! [`resilient`] has clients that reconnect and resume like real ones (fault tests).
//!
//! Environment:
//! * `CHAT_TEST_BACKEND` — `embedded` (default) or `full`.
//! * `CHATD_DATABASE_URL`, `CHATD_REDIS_URL`, `CHATD_KAFKA_BROKERS`, `CHATD_SERVICES_DIR` — the
//!   services of a full-stack run, as `eval "$(scripts/services up)"` exports them. Each test
//!   server or cluster gets its own database `t_<random>` (dropped afterwards) and namespace
//!   `t<random>`; the tests never touch the `chat` database itself.
//! * `CHATD_SERVICES_TLS_*` — the services' TLS endpoints and test certificates, as
//!   `scripts/services up` exports them ([`tls`]; `tests/tests/mtls.rs` needs them).
//! * `CHAT_TEST_FAULTS=1` — lets `tests/tests/faults.rs` stop and start those services.
//! * `CHATD_BIN` — the `chatd` to start (default: `target/debug/chatd`); `CHATD_PSQL` — the
//!   `psql` that creates the databases (default: the newest `/usr/lib/postgresql/*/bin/psql`).

pub mod auth;
pub mod backend;
pub mod backend_tls;
pub mod cluster;
pub mod http;
pub mod idp;
pub mod proxy;
pub mod push;
pub mod realtime;
pub mod resilient;
pub mod sdk;
pub mod server;
pub mod session;
pub mod tls;
pub mod util;
pub mod websocket;

pub use auth::{mint_token, mint_token_at, now_secs, Auth, Claims};
pub use backend::{Backend, Services};
pub use cluster::TestCluster;
pub use proxy::{Proxy, StableServer};
pub use server::{ExitOutput, ServerOptions, TestServer};
pub use session::{Session, SyncResult};
pub use util::*;

pub use chat_proto::v1 as pb;

/// Default time to wait for any single expected event. Generous on purpose: tests must pass on a
/// loaded 2-core machine. Tests never assert that something is *fast*, only that it happens.
pub const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long `expect_no_*` helpers watch a stream for unwanted frames.
pub const QUIET_PERIOD: std::time::Duration = std::time::Duration::from_millis(700);

/// Environment that effectively switches off the per-device rate limiter, for tests that need to
/// send many messages quickly.
pub const NO_RATE_LIMIT: &[(&str, &str)] = &[
    ("CHATD_RATE_LIMIT_PER_SEC", "1000000"),
    ("CHATD_RATE_LIMIT_BURST", "1000000"),
];

/// The abuse limits every test server starts with unless the test sets its own: far above what
/// any suite does from its one loopback address (the harness opens a connection per client,
/// cluster and load tests open hundreds at once), yet on, so every suite runs the limits' code.
pub const GENEROUS_LIMITS: &[(&str, &str)] = &[
    ("CHATD_MAX_CONNECTIONS_PER_IP_PER_SEC", "1000000"),
    ("CHATD_MAX_SESSIONS_PER_USER", "100000"),
    ("CHATD_MAX_CHATS_CREATED_PER_HOUR", "1000000"),
    ("CHATD_MAX_GROUPS_PER_USER", "1000000"),
];

/// For suites that only make sense on the full stack (they are `#[ignore]`d, so a plain
/// `cargo test` lists them as ignored): panics, saying how to run them, when this run is not
/// `CHAT_TEST_BACKEND=full`, so a test asked for (`--ignored`) without its services fails
/// rather than passes untested.
pub fn require_full_stack(test: &str) {
    assert!(
        Backend::from_env() == Backend::FullStack,
        "{test} needs the full stack: PostgreSQL, Redis and Kafka with CHAT_TEST_BACKEND=full \
         (scripts/test runs it; by hand: `eval \"$(scripts/services up)\"` and \
         CHAT_TEST_BACKEND=full cargo test ... -- --ignored)"
    );
}
