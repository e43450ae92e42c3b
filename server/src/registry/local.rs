//! In-process device registry and presence watchers.

pub use super::Watcher;
use super::{Registry, SessionKey};
use crate::domain::model::{Committed, Event, Presence, PresenceStatus, EPHEMERAL};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc};

/// The node name `locate` reports: everyone is on this one.
pub const THIS_NODE: &str = "local";

#[derive(Default)]
pub struct LocalRegistry {
    /// user → device → live sessions of that device.
    online: Mutex<HashMap<String, HashMap<String, u32>>>,
    /// Last-seen times of users that went offline while this node ran.
    last_seen: Mutex<HashMap<String, i64>>,
    /// watched user → watching session id → its queue.
    watchers: Mutex<HashMap<String, HashMap<u64, Watcher>>>,
}

impl LocalRegistry {
    /// A session of `device_id` came up; returns the user's presence after it.
    pub fn connect(&self, user_id: &str, device_id: &str) -> Presence {
        self.connect_within(user_id, device_id, 0)
            .unwrap_or_else(|| Presence::unknown(user_id))
    }

    /// [`LocalRegistry::connect`], unless the user has `max_sessions` (0: no limit) live
    /// sessions already: then `None`, and nothing changes.
    pub fn connect_within(
        &self,
        user_id: &str,
        device_id: &str,
        max_sessions: u32,
    ) -> Option<Presence> {
        let mut online = self.online.lock();
        if max_sessions > 0 {
            let live: u32 = online.get(user_id).map_or(0, |d| d.values().sum());
            if live >= max_sessions {
                return None;
            }
        }
        let devices = online.entry(user_id.to_string()).or_default();
        *devices.entry(device_id.to_string()).or_default() += 1;
        Some(online_presence(user_id, devices.len()))
    }

    /// A session of `device_id` went away at `now`; returns the user's presence after it.
    pub fn disconnect(&self, user_id: &str, device_id: &str, now: i64) -> Presence {
        let mut online = self.online.lock();
        let Some(devices) = online.get_mut(user_id) else {
            return Presence::unknown(user_id);
        };
        if let Some(n) = devices.get_mut(device_id) {
            *n -= 1;
            if *n == 0 {
                devices.remove(device_id);
            }
        }
        if !devices.is_empty() {
            return online_presence(user_id, devices.len());
        }
        online.remove(user_id);
        drop(online);
        self.last_seen.lock().insert(user_id.to_string(), now);
        Presence {
            user_id: user_id.to_string(),
            status: PresenceStatus::Offline,
            last_seen: now,
            devices_online: 0,
        }
    }

    /// The user's presence as this node knows it; `None` if offline with no last-seen here.
    pub fn snapshot(&self, user_id: &str) -> Option<Presence> {
        if let Some(devices) = self.online.lock().get(user_id) {
            return Some(online_presence(user_id, devices.len()));
        }
        let last_seen = *self.last_seen.lock().get(user_id)?;
        Some(Presence {
            user_id: user_id.to_string(),
            status: PresenceStatus::Offline,
            last_seen,
            devices_online: 0,
        })
    }

    /// Users with at least one live device.
    pub fn users_online(&self) -> usize {
        self.online.lock().len()
    }

    /// Makes `session_id` watch `users` instead of `previous`.
    pub fn watch(&self, session_id: u64, watcher: &Watcher, previous: &[String], users: &[String]) {
        let mut watchers = self.watchers.lock();
        remove_watcher(&mut watchers, session_id, previous);
        for u in users {
            watchers
                .entry(u.clone())
                .or_default()
                .insert(session_id, watcher.clone());
        }
    }

    pub fn unwatch(&self, session_id: u64, users: &[String]) {
        remove_watcher(&mut self.watchers.lock(), session_id, users);
    }

    /// Tells every session watching `presence.user_id` about it.
    pub fn publish(&self, presence: Presence) {
        let watchers = self.watchers.lock();
        let Some(sessions) = watchers.get(&presence.user_id) else {
            return;
        };
        let event = Committed {
            commit_id: EPHEMERAL,
            event: Event::Presence(Arc::new(presence)),
        };
        for w in sessions.values() {
            crate::inbox::deliver(&w.queue, event.clone());
        }
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn connect(&self, s: &SessionKey, max_sessions: u32) -> crate::Result<Option<Presence>> {
        Ok(self.connect_within(&s.user_id, &s.device_id, max_sessions))
    }

    async fn disconnect(&self, s: &SessionKey, now: i64) -> crate::Result<Presence> {
        Ok(LocalRegistry::disconnect(
            self,
            &s.user_id,
            &s.device_id,
            now,
        ))
    }

    async fn snapshot(&self, user_ids: &[String]) -> crate::Result<Vec<Option<Presence>>> {
        Ok(user_ids
            .iter()
            .map(|u| LocalRegistry::snapshot(self, u))
            .collect())
    }

    async fn watch(
        &self,
        session_id: u64,
        watcher: &Watcher,
        previous: &[String],
        users: &[String],
    ) -> crate::Result<()> {
        LocalRegistry::watch(self, session_id, watcher, previous, users);
        Ok(())
    }

    async fn unwatch(&self, session_id: u64, users: &[String]) {
        LocalRegistry::unwatch(self, session_id, users)
    }

    async fn publish(&self, presence: Presence) -> crate::Result<()> {
        LocalRegistry::publish(self, presence);
        Ok(())
    }

    async fn locate(&self, user_ids: &[String]) -> crate::Result<HashMap<String, Vec<String>>> {
        let online = self.online.lock();
        let here: Vec<String> = user_ids
            .iter()
            .filter(|u| online.contains_key(*u))
            .cloned()
            .collect();
        Ok(match here.is_empty() {
            true => HashMap::new(),
            false => HashMap::from([(THIS_NODE.to_string(), here)]),
        })
    }

    fn users_online(&self) -> usize {
        LocalRegistry::users_online(self)
    }

    async fn forget(&self, user_id: &str) -> crate::Result<()> {
        self.last_seen.lock().remove(user_id);
        Ok(())
    }
}

fn online_presence(user_id: &str, devices: usize) -> Presence {
    Presence {
        user_id: user_id.to_string(),
        status: PresenceStatus::Online,
        last_seen: 0,
        devices_online: devices as u32,
    }
}

fn remove_watcher(
    watchers: &mut HashMap<String, HashMap<u64, Watcher>>,
    session_id: u64,
    users: &[String],
) {
    for u in users {
        if let Some(sessions) = watchers.get_mut(u) {
            sessions.remove(&session_id);
            if sessions.is_empty() {
                watchers.remove(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_while_any_device_is_and_last_seen_after() {
        let r = LocalRegistry::default();
        assert_eq!(r.connect("u", "phone").devices_online, 1);
        assert_eq!(
            r.connect("u", "phone").devices_online,
            1,
            "two sessions, one device"
        );
        assert_eq!(r.connect("u", "laptop").devices_online, 2);
        assert_eq!(
            r.disconnect("u", "phone", 10).status,
            PresenceStatus::Online
        );
        assert_eq!(r.disconnect("u", "phone", 11).devices_online, 1);
        let p = r.disconnect("u", "laptop", 12);
        assert_eq!((p.status, p.last_seen), (PresenceStatus::Offline, 12));
        assert_eq!(r.snapshot("u").map(|p| p.last_seen), Some(12));
        assert_eq!(r.snapshot("never"), None);
    }

    #[test]
    fn sessions_beyond_the_limit_are_not_recorded() {
        let r = LocalRegistry::default();
        assert!(r.connect_within("u", "phone", 2).is_some());
        assert!(
            r.connect_within("u", "phone", 2).is_some(),
            "sessions, not devices"
        );
        assert_eq!(r.connect_within("u", "laptop", 2), None);
        assert_eq!(
            r.snapshot("u").unwrap().devices_online,
            1,
            "nothing recorded"
        );
        assert!(r.connect_within("v", "phone", 2).is_some(), "per user");
        r.disconnect("u", "phone", 5);
        assert_eq!(
            r.connect_within("u", "laptop", 2).unwrap().devices_online,
            2
        );
        assert!(r.connect_within("u", "tablet", 0).is_some(), "0: no limit");
    }

    #[test]
    fn watchers_get_events_until_they_stop_watching() {
        let r = LocalRegistry::default();
        let (tx, mut rx) = crate::queue::channel(4);
        let w = Watcher { queue: tx };
        r.watch(1, &w, &[], &["a".to_string()]);
        r.publish(r.connect("a", "d"));
        r.publish(r.connect("b", "d"));
        assert!(
            matches!(rx.try_recv().map(|c| c.event), Some(Event::Presence(p)) if p.user_id == "a")
        );
        assert!(rx.try_recv().is_none(), "b is not watched");
        r.watch(1, &w, &["a".to_string()], &["b".to_string()]);
        r.publish(r.disconnect("a", "d", 1));
        assert!(rx.try_recv().is_none(), "a is no longer watched");
    }
}
