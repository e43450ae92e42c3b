//! Send rate limiting: one token bucket per (user, device), refilled continuously.
//!
//! Buckets live in a sharded map so devices on different shards never contend; a bucket that
//! has refilled completely carries no information and is dropped by [`RateLimiter::sweep`].

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    time::Instant,
};

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Bucket capacity: how many sends may come at once after a quiet spell.
    burst: f64,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    hasher: RandomState,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Takes one token for `(user, device)`, or says in how many ms one will be there.
    pub fn check(&self, user_id: &str, device_id: &str) -> Result<(), u32> {
        self.check_at(user_id, device_id, Instant::now())
    }

    pub fn check_at(&self, user_id: &str, device_id: &str, now: Instant) -> Result<(), u32> {
        let key = format!("{user_id}\n{device_id}");
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
