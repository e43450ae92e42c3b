//! Repeated sends: a `client_msg_id` names one message of its sender for good, so a send that
//! repeats a key gets the original back (the retry of a send whose ack was lost) and is not
//! stored again, unless the key was used in another chat, which is a client bug. Decided here
//! once; the stores look the key up inside the write that would store the message.

use super::model::Message;
use crate::store::Appended;
use crate::{Error, Result};
use std::sync::Arc;

/// The answer to a send whose `(sender, client_msg_id)` is already stored as `original`.
pub fn repeated(original: Arc<Message>, chat_id: &str) -> Result<Appended> {
    if original.chat_id != chat_id {
        return Err(Error::invalid(
            "client_msg_id",
            "was already used for a message in another chat",
        ));
    }
    Ok(Appended {
        message: original,
        duplicate: true,
    })
}
