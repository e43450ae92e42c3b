//! `chat-sdk-ffi`: [`chat_sdk`] for Kotlin, Swift and Python through uniffi (proc-macros, no
//! UDL). The foreign module is `chat_sdk` (Python `import chat_sdk`, Kotlin package
//! `chat.sdk`, Swift module `chat_sdk`); `sdk-ffi/uniffi.toml` holds the per-language names
//! and `sdk-ffi/README.md` shows how to generate and use the bindings.
//!
//! * [`connect`] → [`ChatClient`]: the SDK client plus its unary API, every call async.
//! * [`EventStream`]: events pulled with an async `next()`, or pushed to an
//!   [`EventListener`] from a dedicated OS thread ([`ChatClient::set_listener`]).
//! * [`types`]: the records and enums; [`convert`]: every conversion from and to
//!   `chat_sdk`; [`error`]: [`ChatError`].
//!
//! Async calls run inside uniffi's tokio context (`async_runtime = "tokio"`: one global
//! current-thread runtime of the `async-compat` crate, driven by one thread named
//! `async-compat/tokio-1` that lives as long as the process); the SDK's connection task runs
//! there. Foreign code is only ever called on the listener thread (apart from uniffi's own
//! wake-ups of awaited calls).

pub mod client;
pub mod convert;
pub mod error;
pub mod events;
pub mod types;

pub use client::{connect, token_subject, ChatClient};
pub use error::ChatError;
pub use events::{EventListener, EventStream, LISTENER_THREAD_NAME};
pub use types::*;

uniffi::setup_scaffolding!("chat_sdk");
