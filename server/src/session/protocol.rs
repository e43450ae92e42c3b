//! What the transport and a session say to each other, in domain terms: the decoded client
//! frames ([`Command`], opened by a [`Hello`]), what a session sends back ([`Output`], where
//! refusals travel as frames — `SendError`, `FrameError` — rather than ending the stream), and
//! the [`Outlet`] it sends through. Only `transport` turns these into protobuf, so the session
//! code never sees the wire format.

use crate::domain::{messaging::SendRequest, model::*};
use crate::queue;
use crate::store::Appended;
use crate::Error;
use std::{collections::HashMap, sync::Arc};
use tokio::sync::oneshot;

/// The opening frame of a session.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    pub device_id: String,
    /// The device's own positions per chat; they override the stored cursors for this replay.
    pub delivered_seq: HashMap<String, u64>,
    pub client_version: String,
}

/// A client frame, decoded.
#[derive(Debug, Clone)]
pub enum Command {
    Hello(Hello),
    Send(SendRequest),
    Ack {
        chat_id: String,
        seq: u64,
    },
    Read {
        chat_id: String,
        seq: u64,
    },
    /// `started` is `None` for an unspecified state.
    Typing {
        chat_id: String,
        started: Option<bool>,
    },
    WatchPresence {
        user_ids: Vec<String>,
    },
    Ping {
        nonce: u64,
    },
    /// A frame with no oneof member set.
    Empty,
}

/// What a session sends to its device. Kept at 24 bytes (the rare, larger frames are boxed):
/// a session's output queue holds up to 32 of them, and moving a small value is cheap.
#[derive(Debug)]
pub enum Output {
    Welcome(Box<Welcome>),
    Event(Event),
    /// The answer to a send; its `client_msg_id` is the message's own (a repeated send gets
    /// the original, which was stored under the same key).
    SendAck {
        message: Arc<Message>,
        duplicate: bool,
    },
    SendError(Box<SendRefusal>),
    FrameError(Box<FrameRefusal>),
    SyncComplete {
        replayed: u64,
    },
    Pong {
        nonce: u64,
        server_time: i64,
    },
    /// The last output: the stream ends with this status after what is queued before it.
    End(Box<Error>),
}

#[derive(Debug)]
pub struct Welcome {
    pub session_id: String,
    pub node_id: String,
    pub heartbeat_interval_ms: u32,
    pub heartbeat_timeout_ms: u32,
}

/// A send the session refused or could not commit.
#[derive(Debug)]
pub struct SendRefusal {
    pub client_msg_id: String,
    pub error: Error,
}

/// A client frame the session refused; `chat_id` is empty when the frame names none.
#[derive(Debug)]
pub struct FrameRefusal {
    pub frame: &'static str,
    pub error: Error,
    pub chat_id: String,
}

impl Output {
    pub fn frame_error(frame: &'static str, error: Error, chat_id: String) -> Output {
        Output::FrameError(Box::new(FrameRefusal {
            frame,
            error,
            chat_id,
        }))
    }
}

/// The two ways a session's output reaches the transport: an ordered queue, and an abort
/// signal that ends the stream at once, ahead of anything still queued.
pub struct Outlet {
    pub out: queue::Sender<Output>,
    pub abort: oneshot::Sender<Error>,
}

/// The answer to one send once its commit is known: a refused send is a `SendError` frame,
/// not the end of the stream, so the client's other sends go on.
pub(super) fn send_answer(client_msg_id: String, result: crate::Result<Appended>) -> Output {
    match result {
        Ok(a) => Output::SendAck {
            message: a.message,
            duplicate: a.duplicate,
        },
        Err(error) => Output::SendError(Box::new(SendRefusal {
            client_msg_id,
            error,
        })),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_output_is_three_words() {
        assert_eq!(std::mem::size_of::<super::Output>(), 24);
    }
}
