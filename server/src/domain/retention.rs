//! Retention: messages older than the configured age are deleted in small batches, each its own
//! short write, so a large purge never holds up sends for long. Chats keep their `last_seq`,
//! so seq numbers never repeat and cursors stay valid; history and resume simply no longer find
//! the purged messages, and unread counts count only messages that still exist.

use crate::store::MessageStore;
use crate::Result;
use std::time::Duration;

/// Messages deleted per write.
const PURGE_BATCH: u32 = 1000;

/// Deletes every message created before `now_ms - retention`; returns how many.
pub async fn purge(store: &dyn MessageStore, retention: Duration, now_ms: i64) -> Result<u64> {
    let before = now_ms.saturating_sub(retention.as_millis().min(i64::MAX as u128) as i64);
    let mut total = 0;
    loop {
        let n = store.purge_before(before, PURGE_BATCH).await?;
        total += n;
        if n < u64::from(PURGE_BATCH) {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}
