//! Presence rules: who may see whose presence, and how a device coming and going changes it.
//!
//! Privacy: a user sees the presence of the users they share a chat with, and their own.
//! Anyone else reads as OFFLINE with no last seen, exactly like a user who never connected, so
//! the answer leaks neither presence nor existence. Watching such a user yields no events.

use super::limits::Limit;
use super::model::Presence;
use crate::auth::check_user_id;
use crate::registry::{Registry, SessionKey, Watcher};
use crate::store::PresenceStore;
use crate::{Error, Result};
use std::{collections::HashSet, sync::Arc};

/// Most users one `GetPresence` or `WatchPresence` may name.
pub const MAX_USERS: usize = 1000;
/// Locks that order a user's presence changes on this node (users hashed over them).
const ORDER_LOCKS: usize = 64;

pub struct PresenceService {
    registry: Arc<dyn Registry>,
    store: Arc<dyn PresenceStore>,
    /// Disconnects still being recorded, so shutdown can wait for them.
    leaving: tokio_util::task::TaskTracker,
    /// A change and its announcement happen under the user's lock: two sessions of a user
    /// leaving at once would otherwise announce their counts in either order, and watchers
    /// could be left with the older one ("2 devices" after "1 device").
    order: Vec<tokio::sync::Mutex<()>>,
}

impl PresenceService {
    pub fn new(registry: Arc<dyn Registry>, store: Arc<dyn PresenceStore>) -> Self {
        PresenceService {
            registry,
            store,
            leaving: tokio_util::task::TaskTracker::new(),
            order: (0..ORDER_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    async fn order_of(&self, user_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user_id.hash(&mut h);
        self.order[(h.finish() % ORDER_LOCKS as u64) as usize]
            .lock()
            .await
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The distinct, valid user ids of a request, in order.
    pub fn check_users(user_ids: &[String]) -> Result<Vec<String>> {
        if user_ids.len() > MAX_USERS {
            return Err(Error::invalid(
                "user_ids",
                format!("names {} users; the limit is {MAX_USERS}", user_ids.len()),
            ));
        }
        let mut seen = HashSet::with_capacity(user_ids.len());
        let mut out = Vec::with_capacity(user_ids.len());
        for u in user_ids {
            check_user_id("user_ids", u)?;
            if seen.insert(u.as_str()) {
                out.push(u.clone());
            }
        }
        Ok(out)
    }

    /// Those of `users` whose presence `viewer` may see.
    pub async fn visible(&self, viewer: &str, users: &[String]) -> Result<Vec<String>> {
        let others: Vec<String> = users.iter().filter(|u| *u != viewer).cloned().collect();
        let mut visible = if others.is_empty() {
            Vec::new()
        } else {
            self.store.contacts_among(viewer, others).await?
        };
        if users.iter().any(|u| u == viewer) {
            visible.push(viewer.to_string());
        }
        Ok(visible)
    }

    /// Presence of each of `users` as `viewer` may see it, in the order asked.
    pub async fn get(&self, viewer: &str, users: &[String]) -> Result<Vec<Presence>> {
        let users = Self::check_users(users)?;
        let visible: HashSet<String> = self.visible(viewer, &users).await?.into_iter().collect();
        let shown: Vec<String> = users
            .iter()
            .filter(|u| visible.contains(*u))
            .cloned()
            .collect();
        let mut known: std::collections::HashMap<String, Presence> = self
            .registry
            .snapshot(&shown)
            .await?
            .into_iter()
            .flatten()
            .map(|p| (p.user_id.clone(), p))
            .collect();
        let mut out: Vec<Presence> = users
            .iter()
            .map(|u| match visible.contains(u) {
                true => known.remove(u).unwrap_or_else(|| Presence::unknown(u)),
                false => Presence::unknown(u),
            })
            .collect();
        // Offline users last seen before this node started: the store remembers.
        let missing: Vec<String> = out
            .iter()
            .filter(|p| visible.contains(&p.user_id) && p.devices_online == 0 && p.last_seen == 0)
            .map(|p| p.user_id.clone())
            .collect();
        if !missing.is_empty() {
            let stored = self.store.last_seen(missing).await?;
            for p in &mut out {
                if let Some(at) = stored.get(&p.user_id) {
                    p.last_seen = *at;
                }
            }
        }
        Ok(out)
    }

    /// Replaces what a session watches; returns the users it now watches (the visible ones).
    pub async fn watch(
        &self,
        viewer: &str,
        session_id: u64,
        watcher: &Watcher,
        previous: &[String],
        users: &[String],
    ) -> Result<Vec<String>> {
        let users = Self::check_users(users)?;
        let visible = self.visible(viewer, &users).await?;
        self.registry
            .watch(session_id, watcher, previous, &visible)
            .await?;
        Ok(visible)
    }

    /// Registers a live session and tells the user's watchers. Once this returns, the fan-out
    /// of every later commit reaches the session. A user who has `max_sessions` live sessions
    /// already (0: no limit), across the cluster, is refused naming the limit; nothing is
    /// registered then.
    pub async fn device_connected(&self, session: &SessionKey, max_sessions: u32) -> Result<()> {
        let _order = self.order_of(&session.user_id).await;
        let Some(p) = self.registry.connect(session, max_sessions).await? else {
            tracing::debug!(
                user_id = session.user_id,
                limit = max_sessions,
                "session refused: --max-sessions-per-user"
            );
            return Err(
                Limit::SessionsPerUser.refusal(max_sessions, "too many sessions for this user")
            );
        };
        if let Err(e) = self.registry.publish(p).await {
            tracing::warn!(user_id = session.user_id, error = %e, "cannot publish presence");
        }
        Ok(())
    }

    /// [`PresenceService::device_disconnected`] in the background (a session being torn down
    /// cannot wait), tracked so that [`PresenceService::settle`] can wait for it. Without
    /// `last_seen` (the session was ended because its user's data is being erased) the
    /// store records no last seen.
    pub fn spawn_disconnected(
        self: &Arc<Self>,
        session: SessionKey,
        watched: Vec<String>,
        last_seen: Option<i64>,
    ) {
        let this = self.clone();
        self.leaving.spawn(async move {
            let now = last_seen.unwrap_or_else(crate::clock::now_ms);
            this.disconnected(&session, &watched, now, last_seen.is_some())
                .await
        });
    }

    /// Waits (at most `limit`) for the disconnects in flight, so that a node shutting down
    /// records the last seen of the devices it had.
    pub async fn settle(&self, limit: std::time::Duration) {
        self.leaving.close();
        if tokio::time::timeout(limit, self.leaving.wait())
            .await
            .is_err()
        {
            tracing::warn!("some disconnects were not recorded before shutdown");
        }
    }

    /// Forgets a session, publishes the change and, if the user went offline, records when.
    /// Runs in the background as a session is torn down, so it only logs failures (a registry
    /// entry that could not be removed expires with the heartbeat timeout).
    pub async fn device_disconnected(&self, session: &SessionKey, watched: &[String], now: i64) {
        self.disconnected(session, watched, now, true).await
    }

    async fn disconnected(&self, session: &SessionKey, watched: &[String], now: i64, record: bool) {
        self.registry.unwatch(session.session_id, watched).await;
        let order = self.order_of(&session.user_id).await;
        let p = match self.registry.disconnect(session, now).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(user_id = session.user_id, error = %e, "cannot unregister a session");
                return;
            }
        };
        let offline = p.devices_online == 0;
        if let Err(e) = self.registry.publish(p).await {
            tracing::warn!(user_id = session.user_id, error = %e, "cannot publish presence");
        }
        drop(order);
        if offline && record {
            if let Err(e) = self.store.record_last_seen(&session.user_id, now).await {
                tracing::warn!(user_id = session.user_id, error = %e, "cannot record last seen");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fakes::FakePresence;
    use crate::domain::model::PresenceStatus;
    use crate::registry::local::LocalRegistry;

    fn session(user: &str, id: u64) -> SessionKey {
        SessionKey {
            user_id: user.into(),
            device_id: "phone".into(),
            session_id: id,
        }
    }

    #[tokio::test]
    async fn only_contacts_see_presence_and_last_seen() {
        let store = Arc::new(FakePresence {
            contacts: vec![("ann".into(), "bo".into()), ("ann".into(), "cy".into())],
            ..Default::default()
        });
        store.last_seen.lock().insert("cy".into(), 42);
        let p = PresenceService::new(Arc::new(LocalRegistry::default()), store.clone());
        for (user, id) in [("bo", 1), ("di", 2)] {
            p.device_connected(&session(user, id), 0).await.unwrap();
        }
        let asked = ["bo", "cy", "di", "ann", "bo"].map(String::from);
        let seen = p.get("ann", &asked).await.unwrap();
        let shown: Vec<(&str, PresenceStatus, i64)> = seen
            .iter()
            .map(|p| (p.user_id.as_str(), p.status, p.last_seen))
            .collect();
        assert_eq!(
            shown,
            [
                ("bo", PresenceStatus::Online, 0),
                ("cy", PresenceStatus::Offline, 42),
                // A stranger reads exactly like someone who never connected.
                ("di", PresenceStatus::Offline, 0),
                ("ann", PresenceStatus::Offline, 0),
            ]
        );

        // The last device going away is recorded as the user's last seen.
        p.device_disconnected(&session("bo", 1), &[], 77).await;
        assert_eq!(store.last_seen.lock().get("bo"), Some(&77));
        assert!(matches!(
            p.get("ann", &["".to_string()]).await,
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[tokio::test]
    async fn a_session_past_the_limit_is_refused_naming_it() {
        let p = PresenceService::new(
            Arc::new(LocalRegistry::default()),
            Arc::new(FakePresence::default()),
        );
        p.device_connected(&session("bo", 1), 2).await.unwrap();
        p.device_connected(&session("bo", 2), 2).await.unwrap();
        let e = p.device_connected(&session("bo", 3), 2).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "too many sessions for this user: the limit is 2 (--max-sessions-per-user)"
        );
        assert!(matches!(
            e,
            Error::Limited {
                limit: Limit::SessionsPerUser,
                ..
            }
        ));
        p.device_disconnected(&session("bo", 1), &[], 9).await;
        p.device_connected(&session("bo", 3), 2).await.unwrap();
    }
}
