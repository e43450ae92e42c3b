//! `chat-sdk`: the chat.v1 client, written once and used by every app (Rust directly; Swift,
//! Kotlin and Python through `sdk-ffi`).
//!
//! A [`Client`] is one device of one user. It keeps one `Connect` stream open, reconnecting
//! with gRPC's backoff; on every connect it resumes from the positions the app has taken, so
//! the app sees **each chat's messages once and in seq order** (duplicates dropped, gaps read
//! from history first). Sends return at once with a local echo and sit in a queue on disk
//! (`data_dir`) until the server stores them, retried with the same `client_msg_id`, so
//! **nothing is sent twice and nothing is lost**, across reconnects and app restarts.
//!
//! ```no_run
//! # async fn demo() -> chat_sdk::Result<()> {
//! use chat_sdk::{Client, ClientConfig, Content, Event};
//! let client = Client::connect(
//!     ClientConfig::new("http://127.0.0.1:50051", "<jwt>", "laptop").with_data_dir("./state"),
//! ).await?;
//! let mut events = client.events()?;
//! let chat = client.api().open_direct_chat("bob").await?;
//! client.send(&chat.chat_id, Content::text("hi")).await?;
//! while let Some(ev) = events.next().await {
//!     if let Event::Message(m) = ev { println!("{}: {}", m.sender_user_id, m.content.text) }
//! }
//! # Ok(()) }
//! ```
//!
//! Layout:
//! * [`client`] the app's handle; [`connection`] the task behind it (stream, reconnect,
//!   send pump, acks); [`sequencer`] per-chat order; [`store`] the queue and positions on disk;
//! * [`api`] unary calls (also usable alone by backend services); [`events`] what the app is
//!   told; [`types`] plain values for the contract's messages; [`backoff`], [`config`],
//!   [`error`].

pub mod api;
pub mod backoff;
pub mod client;
pub mod config;
pub mod connection;
pub mod error;
pub mod events;
pub mod sequencer;
pub mod store;
pub mod types;

pub use api::{token_subject, Api};
pub use backoff::Backoff;
pub use client::Client;
pub use config::ClientConfig;
pub use connection::StatsSnapshot;
pub use error::{is_permanent, Result, SdkError};
pub use events::{
    ConnectionError, ConnectionState, ConnectionStatus, Event, EventStream, SendOutcome,
    SendResult, ServerError,
};
pub use store::OutgoingMessage;
pub use tonic::Code;
pub use types::*;
