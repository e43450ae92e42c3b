//! What the targets share: a decoded session command put through the checks the server runs
//! on it before it acts, so that a frame that decodes is also validated without a panic.

use chatd::domain::{ids, messaging};
use chatd::session::Command;

/// The largest message the default server takes.
pub const MAX_MESSAGE_BYTES: u32 = 16 * 1024;

pub fn check_command(command: &Command) {
    let _ = match command {
        Command::Hello(h) => ids::check_device_id(&h.device_id),
        Command::Send(req) => messaging::check_send(req, MAX_MESSAGE_BYTES),
        Command::Ack { chat_id, .. }
        | Command::Read { chat_id, .. }
        | Command::Typing { chat_id, .. } => ids::check_chat_id(chat_id),
        Command::WatchPresence { user_ids } => user_ids
            .iter()
            .try_for_each(|u| chatd::auth::check_user_id("user_ids", u)),
        Command::Ping { .. } | Command::Empty => Ok(()),
    };
}
