//! In-process quotas: the uses of each key inside its window, in order.

use super::{Quotas, Taken};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

#[derive(Default)]
pub struct LocalQuotas {
    inner: Mutex<Uses>,
}

#[derive(Default)]
struct Uses {
    /// key → (its window, the times of its uses inside it, oldest first).
    by_key: HashMap<String, (u64, VecDeque<i64>)>,
    /// Keys there were after the last sweep: the map is swept when it has doubled since, so
    /// keys whose uses all left their window cost amortised O(1) to forget.
    swept_at: usize,
}

/// Takes one use of the `log` of a key, or says when one frees up.
fn take(log: &mut VecDeque<i64>, limit: u32, window_ms: u64, now: i64) -> Taken {
    let start = now.saturating_sub(window_ms as i64);
    while log.front().is_some_and(|at| *at <= start) {
        log.pop_front();
    }
    if log.len() < limit as usize {
        log.push_back(now);
        return Taken::Yes;
    }
    let oldest = log.front().copied().unwrap_or(now);
    Taken::No {
        retry_after_ms: (oldest - start).max(1) as u64,
    }
}

impl LocalQuotas {
    pub fn take_at(&self, key: &str, limit: u32, window_ms: u64, now: i64) -> Taken {
        let mut uses = self.inner.lock();
        if uses.by_key.len() >= (uses.swept_at * 2).max(1024) {
            uses.by_key.retain(|_, (window, log)| {
                log.back()
                    .is_some_and(|at| *at > now.saturating_sub(*window as i64))
            });
            uses.swept_at = uses.by_key.len();
        }
        let (window, log) = uses
            .by_key
            .entry(key.to_string())
            .or_insert_with(|| (window_ms, VecDeque::new()));
        *window = window_ms;
        take(log, limit, window_ms, now)
    }

    /// Keys with uses kept (a test's view of the sweeping).
    pub fn keys(&self) -> usize {
        self.inner.lock().by_key.len()
    }
}

#[async_trait]
impl Quotas for LocalQuotas {
    async fn take(&self, key: &str, limit: u32, window_ms: u64, now: i64) -> crate::Result<Taken> {
        Ok(self.take_at(key, limit, window_ms, now))
    }

    async fn forget(&self, key: &str) -> crate::Result<()> {
        self.inner.lock().by_key.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn the_limit_holds_over_any_window_long_span() {
        let q = LocalQuotas::default();
        let t0 = 1_000_000_000;
        assert_eq!(q.take_at("u", 3, HOUR, t0), Taken::Yes);
        assert_eq!(q.take_at("u", 3, HOUR, t0 + 10), Taken::Yes);
        assert_eq!(q.take_at("u", 3, HOUR, t0 + 20), Taken::Yes);
        // The oldest use leaves the window an hour after it was made.
        assert_eq!(
            q.take_at("u", 3, HOUR, t0 + 30),
            Taken::No {
                retry_after_ms: HOUR - 30
            }
        );
        assert_eq!(q.take_at("v", 3, HOUR, t0 + 30), Taken::Yes, "per key");
        let later = t0 + HOUR as i64;
        assert_eq!(q.take_at("u", 3, HOUR, later), Taken::Yes, "the first left");
        assert_eq!(
            q.take_at("u", 3, HOUR, later),
            Taken::No { retry_after_ms: 10 }
        );
        // A refused attempt is not a use: it does not push the next one back.
        assert_eq!(q.take_at("u", 3, HOUR, later + 10), Taken::Yes);
    }

    #[tokio::test]
    async fn a_forgotten_key_starts_afresh() {
        let q = LocalQuotas::default();
        assert_eq!(q.take_at("u", 1, HOUR, 0), Taken::Yes);
        assert_ne!(q.take_at("u", 1, HOUR, 1), Taken::Yes);
        q.forget("u").await.unwrap();
        assert_eq!(q.take_at("u", 1, HOUR, 2), Taken::Yes);
    }

    #[test]
    fn keys_whose_uses_left_the_window_are_forgotten() {
        let q = LocalQuotas::default();
        for i in 0..1024 {
            q.take_at(&format!("old{i}"), 1, 1_000, 0);
        }
        assert_eq!(q.keys(), 1024);
        q.take_at("new", 1, 1_000, 5_000);
        assert_eq!(q.keys(), 1, "the old keys went in the sweep");
    }
}
