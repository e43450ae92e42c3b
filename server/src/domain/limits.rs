//! Limits on how fast and how much: token buckets (the per-device send rate, and the node's new
//! connections per remote address), and the abuse limits that refuse a request outright with
//! RESOURCE_EXHAUSTED naming the setting ([`Limit`]).
//!
//! Buckets live in a sharded map so keys on different shards never contend; a bucket that has
//! refilled completely carries no information and is dropped by [`Buckets::sweep`].

use crate::Error;
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    time::Instant,
};

const SHARDS: usize = 16;

/// An abuse limit: a setting that refuses what goes past it with RESOURCE_EXHAUSTED, counted in
/// `chatd_limited_total{limit}` (README, "Abuse limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// New connections per remote address per second (`--max-connections-per-ip-per-sec`).
    ConnectionsPerIp,
    /// Live sessions of one user across the cluster (`--max-sessions-per-user`).
    SessionsPerUser,
    /// Chats one user creates in any hour (`--max-chats-created-per-hour`).
    ChatsCreatedPerHour,
    /// Groups one user is a member of (`--max-groups-per-user`).
    GroupsPerUser,
}

impl Limit {
    pub const ALL: [Limit; 4] = [
        Limit::ConnectionsPerIp,
        Limit::SessionsPerUser,
        Limit::ChatsCreatedPerHour,
        Limit::GroupsPerUser,
    ];

    /// The setting's flag, as the refusal names it.
    pub fn flag(self) -> &'static str {
        match self {
            Limit::ConnectionsPerIp => "--max-connections-per-ip-per-sec",
            Limit::SessionsPerUser => "--max-sessions-per-user",
            Limit::ChatsCreatedPerHour => "--max-chats-created-per-hour",
            Limit::GroupsPerUser => "--max-groups-per-user",
        }
    }

    /// The `limit` label of `chatd_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            Limit::ConnectionsPerIp => "connections_per_ip_per_sec",
            Limit::SessionsPerUser => "sessions_per_user",
            Limit::ChatsCreatedPerHour => "chats_created_per_hour",
            Limit::GroupsPerUser => "groups_per_user",
        }
    }

    /// The refusal of what went past this limit, set to `value`: `what` says what happened, and
    /// the message goes on to name the limit, e.g. "too many sessions for this user: the limit
    /// is 20 (--max-sessions-per-user)".
    pub fn refusal(self, value: u32, what: impl std::fmt::Display) -> Error {
        let per = match self {
            Limit::ConnectionsPerIp => " per second",
            Limit::ChatsCreatedPerHour => " per hour",
            Limit::SessionsPerUser | Limit::GroupsPerUser => "",
        };
        Error::Limited {
            limit: self,
            message: format!("{what}: the limit is {value}{per} ({})", self.flag()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// One token bucket per key, refilled continuously at `rate` up to `burst`.
pub struct Buckets<K> {
    /// Tokens added per second.
    rate: f64,
    /// Bucket capacity: how many may come at once after a quiet spell.
    burst: f64,
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
    hasher: RandomState,
}

impl<K: Hash + Eq> Buckets<K> {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Buckets {
            rate: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Takes one token of `key`'s bucket, or says in how many ms one will be there.
    pub fn take(&self, key: K, now: Instant) -> Result<(), u32> {
        let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
        let mut map = shard.lock();
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - bucket.tokens) / self.rate * 1000.0).ceil();
            Err((wait_ms as u32).max(1))
        }
    }

    /// Forgets buckets that are full again; returns how many remain.
    pub fn sweep(&self, now: Instant) -> usize {
        let refill = self.burst / self.rate;
        self.shards
            .iter()
            .map(|shard| {
                let mut map = shard.lock();
                map.retain(|_, b| now.saturating_duration_since(b.updated).as_secs_f64() < refill);
                map.len()
            })
            .sum()
    }
}

/// The send rate limit: one bucket per (user, device).
pub struct RateLimiter {
    buckets: Buckets<String>,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            buckets: Buckets::new(per_sec, burst),
        }
    }

    /// Takes one token for `(user, device)`, or says in how many ms one will be there.
    pub fn check(&self, user_id: &str, device_id: &str) -> Result<(), u32> {
        self.check_at(user_id, device_id, Instant::now())
    }

    pub fn check_at(&self, user_id: &str, device_id: &str, now: Instant) -> Result<(), u32> {
        self.buckets.take(format!("{user_id}\n{device_id}"), now)
    }

    /// Forgets buckets that are full again; returns how many remain.
    pub fn sweep(&self, now: Instant) -> usize {
        self.buckets.sweep(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_steady_rate() {
        let rl = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            rl.check_at("u", "d", t0).unwrap();
        }
        let wait = rl.check_at("u", "d", t0).unwrap_err();
        assert_eq!(wait, 100, "one token takes 100 ms at 10/s");
        // Other devices and users have their own buckets.
        rl.check_at("u", "d2", t0).unwrap();
        rl.check_at("v", "d", t0).unwrap();
        let t1 = t0 + Duration::from_millis(100);
        rl.check_at("u", "d", t1).unwrap();
        assert!(rl.check_at("u", "d", t1).is_err());
        let wait = rl
            .check_at("u", "d", t1 + Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(wait, 50);
    }

    #[test]
    fn each_refusal_names_its_limit_and_value() {
        let messages: Vec<String> = Limit::ALL
            .iter()
            .map(|l| l.refusal(7, "too many").to_string())
            .collect();
        assert_eq!(
            messages,
            [
                "too many: the limit is 7 per second (--max-connections-per-ip-per-sec)",
                "too many: the limit is 7 (--max-sessions-per-user)",
                "too many: the limit is 7 per hour (--max-chats-created-per-hour)",
                "too many: the limit is 7 (--max-groups-per-user)",
            ]
        );
        for l in Limit::ALL {
            assert_eq!(format!("--max-{}", l.label().replace('_', "-")), l.flag());
        }
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let rl = RateLimiter::new(100, 2);
        let t0 = Instant::now();
        rl.check_at("u", "d", t0).unwrap();
        let later = t0 + Duration::from_secs(60);
        rl.check_at("u", "d", later).unwrap();
        rl.check_at("u", "d", later).unwrap();
        assert!(rl.check_at("u", "d", later).is_err());
    }

    #[test]
    fn sweep_drops_only_full_buckets() {
        let rl = RateLimiter::new(10, 10);
        let t0 = Instant::now();
        rl.check_at("idle", "d", t0).unwrap();
        rl.check_at("busy", "d", t0 + Duration::from_millis(900))
            .unwrap();
        assert_eq!(rl.sweep(t0 + Duration::from_millis(1000)), 1);
    }
}
