//! `chat-bot`: a backend service on chat-sdk's unary API (no stream). It polls `ListChats` for
//! chats with unread messages, reads them with `GetHistory(after_seq)`, answers with
//! `SendMessage` under a key derived from the message answered, and marks them read.
//!
//! * [`bot`] one polling round; [`reply`] what it answers (pure);
//! * [`time`] UTC formatting; [`log`] stderr lines.

pub mod bot;
pub mod log;
pub mod reply;
pub mod time;

pub use bot::{client_msg_id, Bot, Report};
