//! A session's inbox: the [`queue`](crate::queue) its events arrive on (from the directory's
//! deliveries and direct copies, and from the presence watchers), and the signals a sender
//! raises ahead of them. Everything that feeds a session goes through here, so the rule for
//! a full inbox is in one place.

use crate::domain::model::Committed;
use crate::queue::{Sender, TrySendError};

/// The inbox overflowed: the session cannot keep up and must end (it resumes from its
/// cursor on reconnect), so one slow reader never holds up the fan-out or grows memory.
pub const OVERFLOWED: u8 = 1;
/// The session's user is being erased (`DeleteUserData`): end it at once.
pub const EVICTED: u8 = 1 << 1;
/// The node is shutting down.
pub const SHUTDOWN: u8 = 1 << 2;
/// The node may have missed deliveries (its link to the cluster was down): re-read the backlog.
pub const RESYNC: u8 = 1 << 3;
/// The signals that end a session.
pub const STOPS: u8 = OVERFLOWED | EVICTED | SHUTDOWN;

/// Queues `event` for the session; if its inbox is full, tells it to end instead.
pub fn deliver(inbox: &Sender<Committed>, event: Committed) {
    if let Err(TrySendError::Full(_)) = inbox.try_send(event) {
        inbox.signal(OVERFLOWED);
    }
}
