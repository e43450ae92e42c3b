//! `chatd`: a chat server speaking the `chat.v1` gRPC contract.
//!
//! Layout (see `ARCHITECTURE.md` for the data flow of one message):
//! - [`config`]: one typed configuration, defaults < file < env < flags, validated at start.
//! - [`auth`]: JWT minting and verification, and the node's signing secret.
//! - [`domain`]: the chat rules (validation, membership, sending, history, rate limits, fan-out)
//!   over the [`store::Store`] seam; it knows neither protobuf nor SQL.
//! - [`store`]: the durable source of truth; the trait and its SQLite implementation.
//! - [`session`]: one connected device: hello, resume, live events, heartbeats, bounded queue.
//! - [`transport`]: gRPC (and plain HTTP health) on one port; frames in, domain calls, frames out.
//! - [`node`]: the composition root that builds all of the above from a [`config::Config`].

pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod node;
pub mod redis;
pub mod registry;
pub mod session;
pub mod store;
pub mod transport;

pub use error::{Error, Result};
