//! The chat rules, independent of transport and storage: who may do what to which chat, what a
//! valid message is, how history pages, how fast a device may send. I/O happens only through the
//! [`crate::store::Store`] seam.

pub mod chats;
pub mod content;
pub mod cursors;
#[cfg(test)]
pub(crate) mod fakes;
pub mod idempotency;
pub mod ids;
pub mod limits;
pub mod membership;
pub mod messaging;
pub mod model;
pub mod mute;
pub mod page_token;
pub mod presence;
pub mod push;
pub mod push_tokens;
pub mod retention;
pub mod typing;
pub mod user_data;

/// `page_size` 0 means this many.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest `page_size` a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 200;

/// Resolves a client's `page_size` (0 → default; above the maximum → error).
pub fn page_size(requested: u32) -> crate::Result<u32> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(crate::Error::invalid(
            "page_size",
            format!("{n} is above the maximum of {MAX_PAGE_SIZE}"),
        )),
    }
}
