//! `chat`: a terminal chat client on `chat-sdk`.
//!
//! * [`state`] the app state and its reducer (pure); [`chats`], [`ticks`], [`typing`] the
//!   pure pieces it is made of; [`commands`] the `/…` commands; [`editor`] the input line;
//! * [`effects`] runs the reducer's calls on a `chat_sdk::Client`;
//! * [`render`] draws the state; [`input`] maps keys; [`text`] widths and times.

pub mod chats;
pub mod commands;
pub mod editor;
pub mod effects;
pub mod input;
pub mod render;
pub mod state;
pub mod text;
pub mod ticks;
pub mod typing;
