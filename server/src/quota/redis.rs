//! The cluster's quotas, in Redis: each key is a sorted set `quota:{key}` of its uses inside the
//! window, scored by their time (unix ms). One script drops the uses that left the window,
//! counts the rest and records the new one if there is room, so nodes racing for a user's last
//! use cannot both get it; the set expires a window after its newest use.

use super::{Quotas, Taken};
use crate::redis::{connection_manager, open_client, query, redis_prefix, RedisTarget, Request};
use crate::Result;
use async_trait::async_trait;
use redis::aio::ConnectionManager;

/// KEYS[1]: the set; ARGV: now, window (ms), limit, the new use's member. Returns -1 when the
/// use is recorded, else the ms until the oldest use leaves the window.
const TAKE: &str = r"
local start = tonumber(ARGV[1]) - tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', start)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) - start)
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return -1
";

pub struct RedisQuotas {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisQuotas {
    pub async fn connect(redis: &RedisTarget, namespace: &str) -> Result<RedisQuotas> {
        let client = open_client(redis)?;
        Ok(RedisQuotas {
            conn: connection_manager(&client).await?,
            prefix: redis_prefix(namespace),
        })
    }
}

#[async_trait]
impl Quotas for RedisQuotas {
    async fn take(&self, key: &str, limit: u32, window_ms: u64, now: i64) -> Result<Taken> {
        // Uses made in the same millisecond must stay apart in the set.
        let member = format!("{now}-{:016x}", rand::random::<u64>());
        let mut eval = redis::cmd("EVAL");
        eval.arg(TAKE)
            .arg(1)
            .arg(format!("{}quota:{key}", self.prefix))
            .arg(now)
            .arg(window_ms)
            .arg(limit)
            .arg(member);
        let wait: i64 = query(&self.conn, Request::Cmd(&eval), "taking a quota").await?;
        Ok(match wait {
            w if w < 0 => Taken::Yes,
            w => Taken::No {
                retry_after_ms: w as u64,
            },
        })
    }

    async fn forget(&self, key: &str) -> Result<()> {
        let mut del = redis::cmd("DEL");
        del.arg(format!("{}quota:{key}", self.prefix));
        query::<i64>(&self.conn, Request::Cmd(&del), "forgetting a quota").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::pubsub::tests::{namespace, redis_url};

    #[tokio::test]
    #[ignore = "needs Redis (CHATD_TEST_REDIS_URL): scripts/test runs it"]
    async fn nodes_share_a_quota_over_a_sliding_window() {
        let (url, ns) = (redis_url(), namespace());
        let a = RedisQuotas::connect(&RedisTarget::plain(&url), &ns)
            .await
            .unwrap();
        let b = RedisQuotas::connect(&RedisTarget::plain(&url), &ns)
            .await
            .unwrap();
        let t0 = 1_000_000_000;
        assert_eq!(a.take("u", 2, 1_000, t0).await.unwrap(), Taken::Yes);
        assert_eq!(
            b.take("u", 2, 1_000, t0).await.unwrap(),
            Taken::Yes,
            "same ms"
        );
        assert_eq!(
            a.take("u", 2, 1_000, t0 + 100).await.unwrap(),
            Taken::No {
                retry_after_ms: 900
            }
        );
        assert_eq!(b.take("v", 2, 1_000, t0 + 100).await.unwrap(), Taken::Yes);
        assert_eq!(b.take("u", 2, 1_000, t0 + 1_000).await.unwrap(), Taken::Yes);

        // Racing for the last use: exactly one gets it.
        let racers = (0..8).map(|_| {
            let url = url.clone();
            let ns = ns.clone();
            tokio::spawn(async move {
                let q = RedisQuotas::connect(&RedisTarget::plain(&url), &ns)
                    .await
                    .unwrap();
                q.take("race", 3, 60_000, t0).await.unwrap()
            })
        });
        let mut taken = 0;
        for r in racers {
            if r.await.unwrap() == Taken::Yes {
                taken += 1;
            }
        }
        assert_eq!(taken, 3);
        // Forgotten (the user's data erased): the quota starts afresh.
        let q = RedisQuotas::connect(&RedisTarget::plain(&url), &ns)
            .await
            .unwrap();
        assert_ne!(q.take("race", 3, 60_000, t0).await.unwrap(), Taken::Yes);
        q.forget("race").await.unwrap();
        assert_eq!(q.take("race", 3, 60_000, t0).await.unwrap(), Taken::Yes);
    }
}
