//! A session's presence: its device counts as online (announced to those watching the user)
//! from registration until the session ends, however it ends, and the session watches the
//! users it asked about (those it may see). Both live in an [`OnlineGuard`] that the session
//! owns, so dropping the session announces the device down and drops its watches; the guard
//! does that from `Drop`, since a session task can end at any await.

use super::{Output, Session, Stop};
use crate::clock::now_ms;
use crate::domain::{model::*, presence::PresenceService};
use crate::registry::{SessionKey, Watcher};
use std::sync::Arc;

/// A session's presence footprint: its device counts as online and its watches are
/// registered until this is dropped, however the session ends.
pub(super) struct OnlineGuard {
    presence: Arc<PresenceService>,
    pub(super) key: SessionKey,
    /// The users this session watches (those it may see).
    watched: Vec<String>,
    /// Set when the session was ended because its user's data is being erased: its going
    /// away then records no last seen.
    pub(super) evicted: bool,
}

impl OnlineGuard {
    /// Counts the device online, unless its user has `max_sessions` live sessions already.
    pub(super) async fn new(
        presence: &Arc<PresenceService>,
        key: SessionKey,
        max_sessions: u32,
    ) -> crate::Result<Self> {
        presence.device_connected(&key, max_sessions).await?;
        Ok(OnlineGuard {
            presence: presence.clone(),
            key,
            watched: Vec::new(),
            evicted: false,
        })
    }
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        // The announcement is async: without a runtime (the process is going down) there is
        // nothing to spawn it on; a Redis registry entry expires with the heartbeat timeout.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let watched = std::mem::take(&mut self.watched);
        let last_seen = (!self.evicted).then(now_ms);
        self.presence
            .spawn_disconnected(self.key.clone(), watched, last_seen);
    }
}

impl Session {
    /// Replaces the watched set and sends the current presence of every user asked for.
    pub(super) async fn watch_presence(&mut self, user_ids: Vec<String>) -> Result<(), Stop> {
        let watcher = Watcher {
            queue: self.registration.queue.clone(),
        };
        let presence = self.svc.presence.clone();
        let watched = presence
            .watch(
                self.user_id(),
                self.registration.session_id,
                &watcher,
                &self.online.watched,
                &user_ids,
            )
            .await;
        let current = match watched {
            Ok(watched) => {
                self.online.watched = watched;
                presence.get(self.user_id(), &user_ids).await
            }
            Err(e) => Err(e),
        };
        match current {
            Ok(list) => {
                for p in list {
                    self.emit(Output::Event(Event::Presence(Arc::new(p))))
                        .await?;
                }
                Ok(())
            }
            Err(error) => {
                let frame = Output::frame_error("watch_presence", error, String::new());
                self.emit(frame).await
            }
        }
    }
}
