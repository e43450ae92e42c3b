//! The writer's own memory of the chats it writes to: each chat's last seq, and the standing
//! of the members who wrote to it, so an append is one statement (the insert) instead of four,
//! and a cursor move skips its membership query.
//!
//! Owned by the writer thread alone (no locks). What it holds is the truth for the writer's
//! transaction, ahead of the `chats` rows: an append bumps the seq here and marks the chat
//! dirty, and the dirty rows are written back ([`WriterCache::flush`]) inside the same
//! transaction before anything else reads `chats` through SQL and before the commit, so the
//! committed state the readers see is always whole. If a batch does not commit, the cache may
//! hold seqs that never happened: the writer then [`clear`](WriterCache::clear)s it.
//!
//! Only positive answers are kept (a member's standing); "no such chat" and "not a member" go
//! to SQL every time, so a chat or a member appearing later needs no invalidation.

use super::db_err;
use super::reads::membership;
use crate::store::{Access, Membership};
use crate::{Error, Result};
use rusqlite::{params, Connection};
use std::collections::HashMap;

/// Past this many chats or member standings, the (clean) cache is dropped after a commit, so
/// memory stays bounded: a few MiB at most (a chat entry or a standing is an id and a few
/// words). It refills from SQL one look-up per chat and sender.
const MAX_CHATS: usize = 16_384;
const MAX_MEMBERS: usize = 65_536;

const WRITE_BACK: &str = "UPDATE chats SET last_seq = ?1, last_activity_at = ?2 WHERE chat_id = ?3";

#[derive(Debug)]
struct ChatEntry {
    last_seq: u64,
    /// Appended since the last write-back: the `last_activity_at` to write with `last_seq`.
    dirty: Option<i64>,
    /// Members known to the cache (the `last_seq` of their access is not used: the entry's is).
    members: HashMap<String, Access>,
}

#[derive(Debug, Default)]
pub(super) struct WriterCache {
    chats: HashMap<String, ChatEntry>,
    /// Chats with appends not yet written back, each once.
    dirty: Vec<String>,
    /// Member standings held, over all chats.
    members: usize,
}

impl WriterCache {
    /// Where `user_id` stands in `chat_id`, with the chat's last seq as this transaction sees
    /// it. A member is remembered; anything else is asked of SQL each time.
    pub(super) fn membership(
        &mut self,
        c: &Connection,
        chat_id: &str,
        user_id: &str,
    ) -> Result<Membership> {
        if let Some(entry) = self.chats.get(chat_id) {
            if let Some(access) = entry.members.get(user_id) {
                return Ok(Membership::Member(Access {
                    last_seq: entry.last_seq,
                    ..*access
                }));
            }
        }
        // A dirty chat is always in the cache, so a chat not found there has its true last
        // seq in SQL; for one found there, the cache's seq wins over the row's.
        let found = membership(c, chat_id, user_id)?;
        let Membership::Member(access) = found else {
            return Ok(found);
        };
        let entry = self
            .chats
            .entry(chat_id.to_string())
            .or_insert_with(|| ChatEntry {
                last_seq: access.last_seq,
                dirty: None,
                members: HashMap::new(),
            });
        if entry.members.insert(user_id.to_string(), access).is_none() {
            self.members += 1;
        }
        Ok(Membership::Member(Access {
            last_seq: entry.last_seq,
            ..access
        }))
    }

    /// `chat_id` (just looked up by [`Self::membership`]) gained `seq`, appended at `at`.
    pub(super) fn appended(&mut self, chat_id: &str, seq: u64, at: i64) -> Result<()> {
        // The append looked the chat up a moment ago, so it is here; if it were not, the
        // chat's row would miss this seq: fail the write (and so its batch) instead.
        let entry = self
            .chats
            .get_mut(chat_id)
            .ok_or_else(|| Error::internal("appended to a chat the writer cache does not hold"))?;
        entry.last_seq = seq;
        if entry.dirty.replace(at).is_none() {
            self.dirty.push(chat_id.to_string());
        }
        Ok(())
    }

    /// Writes the dirty chats' rows, inside the caller's transaction. Run before any write that
    /// reads `chats` or `members` through SQL, and before the commit.
    pub(super) fn flush(&mut self, c: &Connection) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut stmt = c.prepare_cached(WRITE_BACK).map_err(db_err)?;
        for chat_id in self.dirty.drain(..) {
            let Some(entry) = self.chats.get_mut(&chat_id) else {
                continue;
            };
            if let Some(at) = entry.dirty.take() {
                stmt.execute(params![entry.last_seq as i64, at, chat_id])
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// Forgets the members of a chat whose members or row a write changed. The writer flushes
    /// before such a write, so the entry is clean and goes whole; a dirty one keeps its seq.
    pub(super) fn forget_chat(&mut self, chat_id: &str) {
        if let Some(entry) = self.chats.get_mut(chat_id) {
            self.members -= entry.members.len();
            entry.members.clear();
            if entry.dirty.is_none() {
                self.chats.remove(chat_id);
            }
        }
    }

    /// Forgets everything: after a batch that did not commit (the cache may hold seqs that
    /// never happened), or (flushed first) a write that changes members across chats.
    pub(super) fn clear(&mut self) {
        self.chats.clear();
        self.dirty.clear();
        self.members = 0;
    }

    /// After a commit (everything is clean): keeps memory bounded.
    pub(super) fn committed(&mut self) {
        debug_assert!(self.dirty.is_empty(), "committed with dirty chats");
        if self.chats.len() > MAX_CHATS || self.members > MAX_MEMBERS {
            self.clear();
        }
    }
}
