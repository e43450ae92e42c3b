//! The cluster registry: devices, presence and last seen in Redis.
//!
//! Each live session is a member `{node_id}|{session_id}|{device_id}` of the sorted set
//! `user:{user_id}:devices`, scored with the time (unix ms) it expires unless its node refreshes
//! it. A node that dies stops refreshing, so its sessions drop out after the heartbeat timeout
//! without anyone cleaning up. Readers ignore expired members; writers remove them lazily.
//! Presence events go over Redis Pub/Sub on `presence.{user_id}`, which a node subscribes to
//! while one of its sessions watches that user.

use super::{Registry, SessionKey, Watcher};
use crate::domain::model::{Committed, Event, Presence, PresenceStatus, EPHEMERAL};
use crate::redis::{
    connection_manager, open_client, pubsub::RedisPubSub, query, redis_prefix, RedisTarget, Request,
};
use crate::{Error, Result};
use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// Sessions per pipeline when refreshing, so one refresh never holds Redis for long.
const REFRESH_CHUNK: usize = 1000;

/// Records a session unless the user has ARGV[5] (> 0) live sessions already, in one step so
/// that two nodes cannot both take a user's last place: drops the expired members, counts the
/// live ones, adds this one. Returns the live members after it, or nil when refused.
const CONNECT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local max = tonumber(ARGV[5])
if max > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= max then
  return false
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')
";

/// Removes a session and, when it was the user's last live one, records the last seen time:
/// one round trip, and no other node's connect can slip in between the check and the write.
const DISCONNECT: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')
if #live == 0 then
  redis.call('SET', KEYS[2], ARGV[2])
end
return live
";

pub struct RedisRegistry {
    conn: ConnectionManager,
    pubsub: Arc<RedisPubSub>,
    prefix: String,
    node_id: String,
    heartbeat_timeout_ms: i64,
    /// This node's live sessions: user → session id → device.
    local: Mutex<HashMap<String, HashMap<u64, String>>>,
    /// watched user → watching session id → its queue.
    watchers: Mutex<HashMap<String, HashMap<u64, Watcher>>>,
    /// Users whose presence channel this registry asked the link for. Changes are made under
    /// this lock, after reading `watchers`, so concurrent watch calls can't leave a watched
    /// user unsubscribed.
    subscribed: tokio::sync::Mutex<HashSet<String>>,
}

impl RedisRegistry {
    pub async fn connect(
        redis: &RedisTarget,
        namespace: &str,
        node_id: &str,
        heartbeat_timeout_ms: u32,
        pubsub: Arc<RedisPubSub>,
    ) -> Result<Arc<RedisRegistry>> {
        if node_id.is_empty() || node_id.contains('|') {
            return Err(Error::invalid("node_id", "must be non-empty without '|'"));
        }
        let client = open_client(redis)?;
        let conn = connection_manager(&client).await?;
        Ok(Arc::new(RedisRegistry {
            conn,
            pubsub,
            prefix: redis_prefix(namespace),
            node_id: node_id.to_string(),
            heartbeat_timeout_ms: i64::from(heartbeat_timeout_ms.max(1)),
            local: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            subscribed: tokio::sync::Mutex::new(HashSet::new()),
        }))
    }

    fn devices_key(&self, user_id: &str) -> String {
        format!("{}user:{user_id}:devices", self.prefix)
    }

    fn last_seen_key(&self, user_id: &str) -> String {
        format!("{}presence:{user_id}:lastSeen", self.prefix)
    }

    fn member(&self, session_id: u64, device_id: &str) -> String {
        format!("{}|{session_id}|{device_id}", self.node_id)
    }

    /// The devices set outlives its newest member a little, then Redis drops it by itself.
    fn key_ttl_ms(&self) -> i64 {
        self.heartbeat_timeout_ms * 2
    }

    /// Presence payload from a presence channel: deliver to this node's watchers of that user.
    pub fn on_presence(&self, user_id: &str, payload: &[u8]) {
        let presence: Presence = match serde_json::from_slice(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(user_id, error = %e, "undecodable presence event");
                return;
            }
        };
        if presence.user_id != user_id {
            tracing::warn!(
                user_id,
                got = presence.user_id,
                "presence event on another user's channel"
            );
            return;
        }
        let watchers = self.watchers.lock();
        let Some(sessions) = watchers.get(user_id) else {
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

    /// Re-adds every live session of this node (after Redis lost its data in a restart).
    pub async fn reregister_all(&self) -> Result<()> {
        self.refresh_all().await
    }

    /// Keeps this node's sessions from expiring until `shutdown`.
    pub async fn run_refresher(self: Arc<Self>, shutdown: CancellationToken) {
        let period = Duration::from_millis((self.heartbeat_timeout_ms / 3).max(1) as u64);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.refresh_all().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures % 10 == 1 {
                        tracing::warn!(error = %e, failures, "cannot refresh sessions in Redis");
                    }
                }
            }
        }
    }

    async fn refresh_all(&self) -> Result<()> {
        let sessions: Vec<(String, u64, String)> = self
            .local
            .lock()
            .iter()
            .flat_map(|(u, s)| s.iter().map(move |(id, d)| (u.clone(), *id, d.clone())))
            .collect();
        for chunk in sessions.chunks(REFRESH_CHUNK) {
            let expiry = now_ms() + self.heartbeat_timeout_ms;
            let mut pipe = redis::pipe();
            for (user, session_id, device) in chunk {
                let key = self.devices_key(user);
                pipe.zadd(&key, self.member(*session_id, device), expiry)
                    .ignore()
                    .pexpire(&key, self.key_ttl_ms())
                    .ignore();
            }
            query::<()>(&self.conn, Request::Pipe(&pipe), "refreshing sessions").await?;
        }
        // A session that went away while its entry was being refreshed must not linger
        // until it expires.
        let gone: Vec<&(String, u64, String)> = {
            let local = self.local.lock();
            sessions
                .iter()
                .filter(|(u, id, _)| !local.get(u).is_some_and(|s| s.contains_key(id)))
                .collect()
        };
        if !gone.is_empty() {
            let mut pipe = redis::pipe();
            for (user, session_id, device) in gone {
                pipe.zrem(self.devices_key(user), self.member(*session_id, device))
                    .ignore();
            }
            query::<()>(&self.conn, Request::Pipe(&pipe), "removing stale sessions").await?;
        }
        Ok(())
    }

    /// Brings the presence subscriptions of `users` in line with `watchers`.
    async fn reconcile(&self, users: &[String]) -> Result<()> {
        let mut subscribed = self.subscribed.lock().await;
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        {
            let watchers = self.watchers.lock();
            let mut seen = HashSet::new();
            for u in users.iter().filter(|u| seen.insert(u.as_str())) {
                match (watchers.contains_key(u), subscribed.contains(u)) {
                    (true, false) => add.push(u.clone()),
                    (false, true) => remove.push(u.clone()),
                    _ => {}
                }
            }
        }
        // The link keeps wanting what it was asked for even when Redis is down, so
        // `subscribed` follows the request, not its outcome.
        let removed = match remove.is_empty() {
            true => Ok(()),
            false => self.pubsub.unsubscribe_presence_many(&remove).await,
        };
        for u in remove {
            subscribed.remove(&u);
        }
        let added = match add.is_empty() {
            true => Ok(()),
            false => self.pubsub.subscribe_presence_many(&add).await,
        };
        subscribed.extend(add);
        added.and(removed)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Distinct devices among members `{node}|{session}|{device}`.
fn count_devices(members: &[String]) -> u32 {
    members
        .iter()
        .filter_map(|m| m.splitn(3, '|').nth(2))
        .collect::<HashSet<_>>()
        .len() as u32
}

fn online(user_id: &str, devices: u32) -> Presence {
    Presence {
        user_id: user_id.to_string(),
        status: PresenceStatus::Online,
        last_seen: 0,
        devices_online: devices,
    }
}

fn offline(user_id: &str, last_seen: i64) -> Presence {
    Presence {
        user_id: user_id.to_string(),
        status: PresenceStatus::Offline,
        last_seen,
        devices_online: 0,
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

fn add_watcher(
    watchers: &mut HashMap<String, HashMap<u64, Watcher>>,
    session_id: u64,
    watcher: &Watcher,
    users: &[String],
) {
    for u in users {
        watchers
            .entry(u.clone())
            .or_default()
            .insert(session_id, watcher.clone());
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn connect(&self, s: &SessionKey, max_sessions: u32) -> Result<Option<Presence>> {
        // Local first: a refresh running meanwhile then either covers the session or finds
        // it gone and removes what it wrote.
        self.local
            .lock()
            .entry(s.user_id.clone())
            .or_default()
            .insert(s.session_id, s.device_id.clone());
        let now = now_ms();
        let mut eval = redis::cmd("EVAL");
        eval.arg(CONNECT)
            .arg(1)
            .arg(self.devices_key(&s.user_id))
            .arg(self.member(s.session_id, &s.device_id))
            .arg(now)
            .arg(now + self.heartbeat_timeout_ms)
            .arg(self.key_ttl_ms())
            .arg(max_sessions);
        let connected =
            query::<Option<Vec<String>>>(&self.conn, Request::Cmd(&eval), "registering a session")
                .await;
        if !matches!(connected, Ok(Some(_))) {
            let mut local = self.local.lock();
            if let Some(sessions) = local.get_mut(&s.user_id) {
                sessions.remove(&s.session_id);
                if sessions.is_empty() {
                    local.remove(&s.user_id);
                }
            }
        }
        Ok(connected?.map(|live| online(&s.user_id, count_devices(&live).max(1))))
    }

    async fn disconnect(&self, s: &SessionKey, now: i64) -> Result<Presence> {
        {
            let mut local = self.local.lock();
            if let Some(sessions) = local.get_mut(&s.user_id) {
                sessions.remove(&s.session_id);
                if sessions.is_empty() {
                    local.remove(&s.user_id);
                }
            }
        }
        // EVAL rather than EVALSHA: Redis caches the compiled script by its body anyway, and
        // a restarted Redis needs no reloading.
        let mut eval = redis::cmd("EVAL");
        eval.arg(DISCONNECT)
            .arg(2)
            .arg(self.devices_key(&s.user_id))
            .arg(self.last_seen_key(&s.user_id))
            .arg(self.member(s.session_id, &s.device_id))
            .arg(now);
        let live: Vec<String> =
            query(&self.conn, Request::Cmd(&eval), "unregistering a session").await?;
        Ok(match count_devices(&live) {
            0 => offline(&s.user_id, now),
            n => online(&s.user_id, n),
        })
    }

    async fn snapshot(&self, user_ids: &[String]) -> Result<Vec<Option<Presence>>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for u in user_ids {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.devices_key(u))
                .arg(now)
                .arg("+inf")
                .get(self.last_seen_key(u));
        }
        let replies: Vec<(Vec<String>, Option<i64>)> =
            query(&self.conn, Request::Pipe(&pipe), "reading presence").await?;
        Ok(user_ids
            .iter()
            .zip(replies)
            .map(|(u, (live, last_seen))| match count_devices(&live) {
                0 => last_seen.map(|at| offline(u, at)),
                n => Some(online(u, n)),
            })
            .collect())
    }

    async fn watch(
        &self,
        session_id: u64,
        watcher: &Watcher,
        previous: &[String],
        users: &[String],
    ) -> Result<()> {
        {
            let mut watchers = self.watchers.lock();
            remove_watcher(&mut watchers, session_id, previous);
            add_watcher(&mut watchers, session_id, watcher, users);
        }
        let changed: Vec<String> = previous.iter().chain(users).cloned().collect();
        let Err(e) = self.reconcile(&changed).await else {
            return Ok(());
        };
        // The session keeps watching what it watched before; undo this change so its
        // teardown (which unwatches that) leaves nothing behind.
        {
            let mut watchers = self.watchers.lock();
            remove_watcher(&mut watchers, session_id, users);
            add_watcher(&mut watchers, session_id, watcher, previous);
        }
        if let Err(undo) = self.reconcile(&changed).await {
            tracing::debug!(error = %undo, "cannot undo presence subscriptions yet");
        }
        Err(e)
    }

    async fn unwatch(&self, session_id: u64, users: &[String]) {
        remove_watcher(&mut self.watchers.lock(), session_id, users);
        if let Err(e) = self.reconcile(users).await {
            tracing::debug!(error = %e, "cannot unsubscribe presence channels");
        }
    }

    async fn publish(&self, presence: Presence) -> Result<()> {
        let payload = serde_json::to_vec(&presence).map_err(Error::internal)?;
        self.pubsub
            .publish_presence(&presence.user_id, payload)
            .await
    }

    async fn locate(&self, user_ids: &[String]) -> Result<HashMap<String, Vec<String>>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        if user_ids.is_empty() {
            return Ok(out);
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for u in user_ids {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.devices_key(u))
                .arg(now)
                .arg("+inf");
        }
        let replies: Vec<Vec<String>> =
            query(&self.conn, Request::Pipe(&pipe), "locating users").await?;
        for (u, live) in user_ids.iter().zip(replies) {
            let nodes: HashSet<&str> = live.iter().filter_map(|m| m.split('|').next()).collect();
            for node in nodes {
                match out.get_mut(node) {
                    Some(users) => users.push(u.clone()),
                    None => {
                        out.insert(node.to_string(), vec![u.clone()]);
                    }
                }
            }
        }
        Ok(out)
    }

    fn users_online(&self) -> usize {
        self.local.lock().len()
    }

    async fn forget(&self, user_id: &str) -> Result<()> {
        let mut del = redis::cmd("DEL");
        del.arg(self.last_seen_key(user_id));
        query::<i64>(&self.conn, Request::Cmd(&del), "forgetting a last seen").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::pubsub::tests::{eventually, namespace, quiet_handlers, redis_url};
    use crate::redis::pubsub::PubSubHandlers;

    struct Node {
        registry: Arc<RedisRegistry>,
    }

    async fn node(
        url: &str,
        ns: &str,
        id: &str,
        timeout_ms: u32,
        stop: &CancellationToken,
    ) -> Node {
        let pubsub = RedisPubSub::connect(&RedisTarget::plain(url), ns, id)
            .await
            .unwrap();
        let registry =
            RedisRegistry::connect(&RedisTarget::plain(url), ns, id, timeout_ms, pubsub.clone())
                .await
                .unwrap();
        let r = registry.clone();
        let handlers = PubSubHandlers {
            on_presence: Arc::new(move |u, p| r.on_presence(u, p)),
            ..quiet_handlers()
        };
        pubsub.listen(handlers, stop.clone());
        Node { registry }
    }

    fn key(user: &str, device: &str, session_id: u64) -> SessionKey {
        SessionKey {
            user_id: user.into(),
            device_id: device.into(),
            session_id,
        }
    }

    fn users(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| u.to_string()).collect()
    }

    #[tokio::test]
    #[ignore = "needs Redis (CHATD_TEST_REDIS_URL): scripts/test runs it"]
    async fn sessions_on_two_nodes() {
        let url = redis_url();
        let (ns, stop) = (namespace(), CancellationToken::new());
        let a = node(&url, &ns, "a", 60_000, &stop).await.registry;
        let b = node(&url, &ns, "b", 60_000, &stop).await.registry;

        assert_eq!(
            a.connect(&key("u", "phone", 1), 0)
                .await
                .unwrap()
                .unwrap()
                .devices_online,
            1
        );
        let p = b.connect(&key("u", "phone", 1), 0).await.unwrap().unwrap();
        assert_eq!(p.devices_online, 1, "one device, sessions on two nodes");
        assert_eq!(
            b.connect(&key("u", "laptop", 2), 0)
                .await
                .unwrap()
                .unwrap()
                .devices_online,
            2
        );
        assert_eq!(
            a.connect(&key("v", "phone", 3), 0)
                .await
                .unwrap()
                .unwrap()
                .devices_online,
            1
        );
        assert_eq!((a.users_online(), b.users_online()), (2, 1));

        let located = a.locate(&users(&["u", "v", "w"])).await.unwrap();
        let mut on_a = located["a"].clone();
        on_a.sort();
        assert_eq!(on_a, users(&["u", "v"]));
        assert_eq!(located["b"], users(&["u"]));
        assert_eq!(located.len(), 2);

        let p = a.disconnect(&key("u", "phone", 1), 100).await.unwrap();
        assert_eq!((p.status, p.devices_online), (PresenceStatus::Online, 2));
        b.disconnect(&key("u", "phone", 1), 101).await.unwrap();
        let p = b.disconnect(&key("u", "laptop", 2), 102).await.unwrap();
        assert_eq!(p, offline("u", 102));
        let snap = b.snapshot(&users(&["u", "v", "never"])).await.unwrap();
        assert_eq!(
            snap,
            vec![Some(offline("u", 102)), Some(online("v", 1)), None]
        );
        assert!(!a.locate(&users(&["u"])).await.unwrap().contains_key("a"));
        assert_eq!((a.users_online(), b.users_online()), (1, 0));
        // Forgotten (their data erased): no last seen on any node.
        a.forget("u").await.unwrap();
        assert_eq!(b.snapshot(&users(&["u"])).await.unwrap(), vec![None]);
        stop.cancel();
    }

    #[tokio::test]
    #[ignore = "needs Redis (CHATD_TEST_REDIS_URL): scripts/test runs it"]
    async fn a_user_has_at_most_max_sessions_across_nodes() {
        let url = redis_url();
        let (ns, stop) = (namespace(), CancellationToken::new());
        let a = node(&url, &ns, "a", 60_000, &stop).await.registry;
        let b = node(&url, &ns, "b", 60_000, &stop).await.registry;
        assert!(a.connect(&key("u", "phone", 1), 2).await.unwrap().is_some());
        assert!(b.connect(&key("u", "phone", 1), 2).await.unwrap().is_some());
        assert_eq!(a.connect(&key("u", "laptop", 2), 2).await.unwrap(), None);
        assert_eq!(
            a.users_online(),
            1,
            "the refused session is not this node's"
        );
        let live = a.snapshot(&users(&["u"])).await.unwrap();
        assert_eq!(live[0].as_ref().map(|p| p.devices_online), Some(1));
        assert!(a.connect(&key("v", "phone", 3), 2).await.unwrap().is_some());
        b.disconnect(&key("u", "phone", 1), 10).await.unwrap();
        assert!(a
            .connect(&key("u", "laptop", 2), 2)
            .await
            .unwrap()
            .is_some());

        // Eight sessions racing for the last two places: two get in.
        let racers = (10..18).map(|id| {
            let r = if id % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { r.connect(&key("w", "phone", id), 2).await.unwrap() })
        });
        let mut admitted = 0;
        for r in racers {
            admitted += r.await.unwrap().is_some() as usize;
        }
        assert_eq!(admitted, 2);
        stop.cancel();
    }

    #[tokio::test]
    #[ignore = "needs Redis (CHATD_TEST_REDIS_URL): scripts/test runs it"]
    async fn sessions_expire_unless_refreshed() {
        let url = redis_url();
        let (ns, stop) = (namespace(), CancellationToken::new());
        let a = node(&url, &ns, "a", 60_000, &stop).await.registry;
        let b = node(&url, &ns, "b", 600, &stop).await.registry;
        let c = node(&url, &ns, "c", 600, &stop).await.registry;
        b.connect(&key("u", "phone", 1), 0).await.unwrap().unwrap();
        c.connect(&key("v", "phone", 1), 0).await.unwrap().unwrap();
        tokio::spawn(c.clone().run_refresher(stop.clone()));
        tokio::time::sleep(Duration::from_millis(900)).await;
        // b "died": its session expired; c kept refreshing.
        let located = a.locate(&users(&["u", "v"])).await.unwrap();
        assert_eq!(located.keys().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(a.snapshot(&users(&["u"])).await.unwrap(), vec![None]);
        // Expired members are cleared by the next writer.
        let p = a.connect(&key("u", "laptop", 9), 0).await.unwrap().unwrap();
        assert_eq!(p.devices_online, 1);
        let mut conn = a.conn.clone();
        let n: i64 = redis::cmd("ZCARD")
            .arg(a.devices_key("u"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 1);

        // After Redis lost everything, re-registering restores this node's sessions.
        let _: () = redis::cmd("DEL")
            .arg(c.devices_key("v"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(a.locate(&users(&["v"])).await.unwrap().is_empty());
        c.reregister_all().await.unwrap();
        assert_eq!(a.locate(&users(&["v"])).await.unwrap()["c"], users(&["v"]));
        stop.cancel();
    }

    #[tokio::test]
    #[ignore = "needs Redis (CHATD_TEST_REDIS_URL): scripts/test runs it"]
    async fn presence_reaches_watchers_on_other_nodes() {
        let url = redis_url();
        let (ns, stop) = (namespace(), CancellationToken::new());
        let a = node(&url, &ns, "a", 60_000, &stop).await.registry;
        let b = node(&url, &ns, "b", 60_000, &stop).await.registry;
        let (tx, mut rx) = crate::queue::channel(8);
        let w = Watcher { queue: tx };
        b.watch(7, &w, &[], &users(&["alice"])).await.unwrap();
        let p = a
            .connect(&key("alice", "phone", 1), 0)
            .await
            .unwrap()
            .unwrap();
        a.publish(p.clone()).await.unwrap();
        a.publish(online("bob", 1)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got.event, Event::Presence(ref q) if **q == p));

        // Switching to bob unsubscribes alice.
        b.watch(7, &w, &users(&["alice"]), &users(&["bob"]))
            .await
            .unwrap();
        assert_eq!(
            *b.subscribed.lock().await,
            HashSet::from(["bob".to_string()])
        );
        a.publish(offline("alice", 5)).await.unwrap();
        a.publish(online("bob", 2)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got.event, Event::Presence(ref q) if q.user_id == "bob"));
        b.unwatch(7, &users(&["bob"])).await;
        assert!(b.subscribed.lock().await.is_empty());
        assert!(b.watchers.lock().is_empty());

        // A full queue ends the watching session.
        let (tx, rx) = crate::queue::channel(1);
        let w = Watcher { queue: tx };
        b.watch(8, &w, &[], &users(&["carol"])).await.unwrap();
        a.publish(online("carol", 1)).await.unwrap();
        a.publish(online("carol", 2)).await.unwrap();
        eventually("overflow", || rx.raised() == crate::inbox::OVERFLOWED).await;
        stop.cancel();
    }

    /// A private Redis (no persistence) that the test can stop and start again.
    struct OwnRedis {
        port: u16,
        dir: tempfile::TempDir,
        child: Option<std::process::Child>,
    }

    impl OwnRedis {
        fn start() -> Option<OwnRedis> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let mut r = OwnRedis {
                port,
                dir: tempfile::tempdir().ok()?,
                child: None,
            };
            r.up().then_some(r)
        }

        fn up(&mut self) -> bool {
            let child = std::process::Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(self.dir.path())
                .stdout(std::process::Stdio::null())
                .spawn();
            let Ok(child) = child else { return false };
            self.child = Some(child);
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }

        fn down(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for OwnRedis {
        fn drop(&mut self) {
            self.down();
        }
    }

    /// Node whose link re-registers its sessions after a reconnect, as the node does.
    async fn resilient_node(
        url: &str,
        id: &str,
        stop: &CancellationToken,
    ) -> (Arc<RedisRegistry>, Arc<std::sync::atomic::AtomicUsize>) {
        let pubsub = RedisPubSub::connect(&RedisTarget::plain(url), "", id)
            .await
            .unwrap();
        let registry =
            RedisRegistry::connect(&RedisTarget::plain(url), "", id, 60_000, pubsub.clone())
                .await
                .unwrap();
        let reconnects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r1, r2, n) = (registry.clone(), registry.clone(), reconnects.clone());
        let handlers = PubSubHandlers {
            on_presence: Arc::new(move |u, p| r1.on_presence(u, p)),
            on_reconnect: Arc::new(move || {
                let (registry, n) = (r2.clone(), n.clone());
                tokio::spawn(async move {
                    registry.reregister_all().await.unwrap();
                    n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }),
            ..quiet_handlers()
        };
        pubsub.listen(handlers, stop.clone());
        (registry, reconnects)
    }

    #[tokio::test]
    #[ignore = "needs redis-server on PATH (it starts and restarts its own): scripts/test runs it"]
    async fn survives_a_redis_restart() {
        let mut redis = OwnRedis::start().expect(
            "cannot start redis-server (it must be on PATH) for a Redis of this test's own",
        );
        let url = redis.url();
        let stop = CancellationToken::new();
        let (a, a_reconnects) = resilient_node(&url, "a", &stop).await;
        let (b, b_reconnects) = resilient_node(&url, "b", &stop).await;
        let (tx, mut rx) = crate::queue::channel(8);
        let w = Watcher { queue: tx };
        b.watch(1, &w, &[], &users(&["alice"])).await.unwrap();
        a.connect(&key("alice", "phone", 1), 0)
            .await
            .unwrap()
            .unwrap();

        redis.down();
        let started = std::time::Instant::now();
        let err = a.connect(&key("carol", "phone", 2), 0).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(a.publish(online("alice", 1)).await.is_err());
        eprintln!("Redis down: calls failed after {:?}", started.elapsed());

        assert!(redis.up(), "restart redis-server");
        let started = std::time::Instant::now();
        let both = || {
            a_reconnects.load(std::sync::atomic::Ordering::SeqCst) == 1
                && b_reconnects.load(std::sync::atomic::Ordering::SeqCst) == 1
        };
        eventually("both links reconnect and re-register", both).await;
        eprintln!(
            "Redis back: links resubscribed after {:?}",
            started.elapsed()
        );

        // The sessions are back although Redis lost everything; presence flows again.
        assert_eq!(
            b.locate(&users(&["alice"])).await.unwrap()["a"],
            users(&["alice"])
        );
        assert!(a.locate(&users(&["carol"])).await.unwrap().is_empty());
        a.publish(online("alice", 1)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got.event, Event::Presence(ref p) if p.user_id == "alice"));
        stop.cancel();
    }
}
