//! `chatd`: a chat server speaking the `chat.v1` gRPC contract.
//!
//! Layout (see `ARCHITECTURE.md` for the data flow of one message):
//! - [`config`]: one typed configuration, defaults < file < env < flags, validated at start.
//! - [`auth`]: JWT minting and verification, and the node's signing secret.
//! - [`domain`]: the chat rules (validation, membership, sending, history, rate limits)
//!   over the store seams and the registry; it knows neither protobuf nor SQL.
//! - [`store`]: the durable source of truth: the per-concern traits, the outbox types, and the
//!   SQLite and PostgreSQL implementations.
//! - [`registry`]: which devices are connected where, presence and last seen (in-process or Redis).
//! - [`bus`]: fan-out of committed events to the sessions that must see them (in-process, or
//!   Kafka + Redis Pub/Sub across nodes).
//! - [`quota`]: how often each user did something within a window (chats created per hour),
//!   counted in-process or, across a cluster, in Redis.
//! - [`redis`]: Redis connections and the Pub/Sub link the registry and the bus share.
//! - [`metrics`]: counters and histograms in Prometheus text.
//! - [`queue`]: the bounded queue each session reads its events from and writes its output to.
//! - [`inbox`]: a session's event queue as its feeders use it: deliveries, and the signals
//!   (close, resync) that jump the queue.
//! - [`session`]: one connected device: hello, resume, live events, heartbeats, bounded queue.
//! - [`transport`]: gRPC (and plain HTTP health) on one port; frames in, domain calls, frames out.
//! - [`push`]: push notifications to offline devices: the providers behind one `Sender` seam.
//! - [`https`]: the outbound HTTPS client (push providers, the identity provider's key set).
//! - [`node`]: the composition root that builds all of the above from a [`config::Config`].

pub mod auth;
pub mod backend_tls;
pub mod bus;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod https;
pub mod inbox;
pub mod metrics;
pub mod node;
pub mod push;
pub mod queue;
pub mod quota;
pub mod redis;
pub mod registry;
pub mod session;
pub mod store;
pub mod transport;

pub use error::{Error, Result};
