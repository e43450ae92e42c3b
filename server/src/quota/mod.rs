//! Quotas: how many times one user did something within a sliding window, shared by every node
//! (`--max-chats-created-per-hour`). On the embedded default the uses are counted in this
//! process ([`local`]); a cluster keeps them in Redis ([`redis`]) behind the same call, so a
//! user who spreads requests over nodes gets no more.
//!
//! Each quota keeps the time of every use still inside its window (at most `limit` of them), so
//! the limit holds over any window-long span, not per calendar hour, and the caller can be told
//! exactly when a use frees up.

pub mod local;
pub mod redis;

use crate::Result;
use async_trait::async_trait;

/// What [`Quotas::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The use is recorded.
    Yes,
    /// `limit` uses are inside the window already; nothing was recorded. The oldest leaves the
    /// window in `retry_after_ms`.
    No { retry_after_ms: u64 },
}

#[async_trait]
pub trait Quotas: Send + Sync + 'static {
    /// Records one use of `key` at `now` (unix ms) if fewer than `limit` were made in the
    /// `window_ms` before it. Check and record are one step: two callers racing for the last
    /// use cannot both get it.
    async fn take(&self, key: &str, limit: u32, window_ms: u64, now: i64) -> Result<Taken>;

    /// Forgets every use of `key` (its user's data is being erased).
    async fn forget(&self, key: &str) -> Result<()>;
}
