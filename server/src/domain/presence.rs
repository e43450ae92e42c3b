//! Presence rules: who may see whose presence, and how a device coming and going changes it.
//!
//! Privacy: a user sees the presence of the users they share a chat with, and their own.
//! Anyone else reads as OFFLINE with no last seen, exactly like a user who never connected, so
//! the answer leaks neither presence nor existence. Watching such a user yields no events.

use super::model::Presence;
use crate::auth::check_user_id;
use crate::registry::local::{LocalRegistry, Watcher};
use crate::store::Store;
use crate::{Error, Result};
use std::{collections::HashSet, sync::Arc};

/// Most users one `GetPresence` or `WatchPresence` may name.
pub const MAX_USERS: usize = 1000;

pub struct PresenceService {
    registry: Arc<LocalRegistry>,
    store: Arc<dyn Store>,
}

impl PresenceService {
    pub fn new(registry: Arc<LocalRegistry>, store: Arc<dyn Store>) -> Self {
        PresenceService { registry, store }
    }

    pub fn registry(&self) -> &LocalRegistry {
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
        let mut out: Vec<Presence> = users
            .iter()
            .map(|u| match visible.contains(u) {
                true => self
                    .registry
                    .snapshot(u)
                    .unwrap_or_else(|| Presence::unknown(u)),
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
        self.registry.watch(session_id, watcher, previous, &visible);
        Ok(visible)
    }

    pub fn device_connected(&self, user_id: &str, device_id: &str) {
        let p = self.registry.connect(user_id, device_id);
        self.registry.publish(p);
    }

    /// Publishes the change and, if the user went offline, records when (in the background:
    /// this runs as a session is torn down).
    pub fn device_disconnected(&self, user_id: &str, device_id: &str, now: i64) {
        let p = self.registry.disconnect(user_id, device_id, now);
        let offline = p.devices_online == 0;
        self.registry.publish(p);
        if !offline {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, user_id) = (self.store.clone(), user_id.to_string());
        runtime.spawn(async move {
            if let Err(e) = store.record_last_seen(&user_id, now).await {
                tracing::warn!(user_id, error = %e, "cannot record last seen");
            }
        });
    }
}
