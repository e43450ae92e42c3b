//! Device registry and presence: which devices of which users are online (and on which node),
//! and who watches whom. On the embedded default this is all in this process ([`local`]); a
//! cluster keeps it in Redis ([`redis`]) behind the same calls.

pub mod local;
pub mod redis;

use crate::domain::model::{Committed, Presence};
use crate::Result;
use async_trait::async_trait;
use std::collections::HashMap;

/// Where a watching session's presence events go: its inbox, where a full queue ends the
/// session like any other delivery ([`crate::inbox::deliver`]).
#[derive(Clone)]
pub struct Watcher {
    pub queue: crate::queue::Sender<Committed>,
}

/// One live session of a device on this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub user_id: String,
    pub device_id: String,
    /// Unique on this node (see `session::Directory`).
    pub session_id: u64,
}

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Records a live session and returns the user's presence after it. Once this returns,
    /// the fan-out of every later commit finds the session (see [`Registry::locate`]).
    /// With `max_sessions` (0: no limit), a user who has that many live sessions already gets
    /// `None` and nothing is recorded; the count and the record are one step on this node (in
    /// Redis, one script for the whole cluster), so racing sessions cannot both take the last
    /// place.
    async fn connect(&self, session: &SessionKey, max_sessions: u32) -> Result<Option<Presence>>;

    /// Forgets a session that went away at `now` (unix ms); returns the user's presence after
    /// it. When the user's last device went, the user's last seen becomes `now`.
    async fn disconnect(&self, session: &SessionKey, now: i64) -> Result<Presence>;

    /// The presence of each user, in order; `None` for a user who is offline with no last seen
    /// known to the registry.
    async fn snapshot(&self, user_ids: &[String]) -> Result<Vec<Option<Presence>>>;

    /// Makes `session_id` watch `users` instead of `previous`.
    async fn watch(
        &self,
        session_id: u64,
        watcher: &Watcher,
        previous: &[String],
        users: &[String],
    ) -> Result<()>;

    /// Stops `session_id` watching `users` (best effort: runs as a session is torn down).
    async fn unwatch(&self, session_id: u64, users: &[String]);

    /// Tells every session watching `presence.user_id`, on any node, about it.
    async fn publish(&self, presence: Presence) -> Result<()>;

    /// The nodes holding live sessions of `user_ids`: node id → those of the users it holds.
    /// Users with no live session appear under no node.
    async fn locate(&self, user_ids: &[String]) -> Result<HashMap<String, Vec<String>>>;

    /// Users with at least one live session on this node (a gauge).
    fn users_online(&self) -> usize;

    /// Forgets the last seen of `user_id` (their data is being erased; they are offline).
    async fn forget(&self, user_id: &str) -> Result<()>;
}
