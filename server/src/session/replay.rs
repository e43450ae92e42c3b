//! Resume and the per-chat order of a stream. After registering, a session reads its backlog
//! chat by chat from the device's position up to the `last_seq` it read in the resume plan;
//! from then on it keeps the highest seq it passed on per chat ([`SeqTracker`]). A live message
//! at or below that is a duplicate (of the replay, or of an at-least-once re-delivery in a
//! cluster) and is dropped; one past a gap makes the session read the gap from the store first;
//! a chat first seen live (joined after the stream began) starts at the member's `joined_seq`.
//! So each stream carries a chat's messages exactly once, in seq order and none from before
//! joining, whatever the fan-out did.

use super::{Output, Session, Stop};
use crate::domain::model::*;
use crate::metrics::METRICS;
use crate::store::{Membership, SeqRange};
use std::sync::atomic::Ordering::Relaxed;
use std::{collections::HashMap, sync::Arc};

/// Messages read from the store per replay query.
const REPLAY_PAGE: u32 = 512;

/// What a live message means for a stream that passed on messages up to `seen` in its chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Pass it on.
    Emit,
    /// Already passed on (replayed, or delivered twice by the fan-out).
    Duplicate,
    /// Messages after `after` and before it are missing: read them first.
    Gap { after: u64 },
}

/// Highest seq passed on per chat, for the chats this stream has seen messages of.
#[derive(Debug, Default)]
pub(super) struct SeqTracker {
    seen: HashMap<String, u64>,
}

impl SeqTracker {
    pub(super) fn classify(&self, chat_id: &str, seq: u64) -> Next {
        match self.seen.get(chat_id) {
            Some(&last) if seq <= last => Next::Duplicate,
            Some(&last) if seq > last + 1 => Next::Gap { after: last },
            _ => Next::Emit,
        }
    }

    /// Only ever moves forward: a late or repeated seq must not reopen what went out.
    pub(super) fn passed(&mut self, chat_id: &str, seq: u64) {
        match self.seen.get_mut(chat_id) {
            Some(last) => *last = (*last).max(seq),
            None => {
                self.seen.insert(chat_id.to_string(), seq);
            }
        }
    }

    pub(super) fn get(&self, chat_id: &str) -> Option<u64> {
        self.seen.get(chat_id).copied()
    }
}

/// Whether a stream takes a direct copy (see [`DIRECT_COPY`]) of `seq` in `chat_id`.
fn direct_copy_is_next(seqs: &SeqTracker, chat_id: &str, seq: u64) -> bool {
    seqs.get(chat_id).is_some() && seqs.classify(chat_id, seq) == Next::Emit
}

/// Where a chat's replay starts (messages strictly after the returned seq go out).
///
/// A stream that already passed on messages of the chat (a resync) goes on from there, or from
/// the stored cursor if another device moved it further. Otherwise the device's own claim wins
/// over the stored cursor, even a lower one: the device knows what it has kept. Never before
/// the member joined, whatever the claim says.
fn resume_after(passed: Option<u64>, claimed: Option<u64>, delivered: u64, joined: u64) -> u64 {
    let cursor = match (passed, claimed) {
        (Some(passed), _) => passed.max(delivered),
        (None, Some(claim)) => claim,
        (None, None) => delivered,
    };
    cursor.max(joined)
}

impl Session {
    /// Passes on every message above the device's position in each of its chats (see
    /// [`resume_after`]), up to the `last_seq` the resume plan read: anything committed later
    /// is already on its way through the session's queue, which was registered first. Returns
    /// how many messages went out.
    pub(super) async fn replay(&mut self, claimed: &HashMap<String, u64>) -> Result<u64, Stop> {
        let plan = self
            .svc
            .store
            .resume_plan(self.user_id(), self.device_id())
            .await
            .map_err(Stop::Abort)?;
        let mut replayed = 0u64;
        for chat in plan.chats {
            let after = resume_after(
                self.seqs.get(&chat.chat_id),
                claimed.get(&chat.chat_id).copied(),
                chat.delivered_seq,
                chat.joined_seq,
            );
            replayed += self
                .pass_range(&chat.chat_id, after, chat.last_seq + 1)
                .await?;
            // Even when nothing was read (already up to date, or purged), the chat now has a
            // position: live copies up to last_seq are duplicates, and the chat's next live
            // message is not taken for one of a chat joined after the stream began.
            self.seqs.passed(&chat.chat_id, chat.last_seq);
        }
        Ok(replayed)
    }

    /// Passes on the messages of a chat strictly between `after` and `before`, from the store.
    async fn pass_range(
        &mut self,
        chat_id: &str,
        mut after: u64,
        before: u64,
    ) -> Result<u64, Stop> {
        let mut passed = 0u64;
        while after + 1 < before {
            let range = SeqRange {
                after,
                before,
                newest_first: false,
            };
            let page = self
                .svc
                .store
                .messages(chat_id, range, REPLAY_PAGE)
                .await
                .map_err(Stop::Abort)?;
            // Nothing (more) stored in the range, e.g. purged by retention: `after` could not
            // move on, so stop rather than ask again.
            let Some(newest) = page.last().map(|m| m.seq) else {
                break;
            };
            for m in page {
                self.seqs.passed(chat_id, m.seq);
                // The sending device had its SendAck (or gets it again on retry), as live.
                if self.is_own(&m) {
                    continue;
                }
                self.emit(Output::Event(Event::Message(Arc::new(m))))
                    .await?;
                passed += 1;
            }
            after = newest;
        }
        Ok(passed)
    }

    fn is_own(&self, m: &Message) -> bool {
        m.sender_device_id == self.device_id() && m.sender_user_id == self.user_id()
    }

    /// Passes on one event from the session's queue; messages go through the dedup and gap
    /// fill, other events straight out.
    pub(super) async fn forward(&mut self, c: Committed) -> Result<(), Stop> {
        let Event::Message(m) = &c.event else {
            return self.emit(Output::Event(c.event)).await;
        };
        if c.commit_id == DIRECT_COPY {
            // Only as the chat's very next message: anything else (a chat this stream has no
            // position in, a copy ahead of a gap, one already out) the ordered copy brings,
            // in order with the chat's other events, without a store read.
            if !direct_copy_is_next(&self.seqs, &m.chat_id, m.seq) {
                return Ok(());
            }
            METRICS.direct_copies_delivered.fetch_add(1, Relaxed);
        }
        if self.seqs.get(&m.chat_id).is_none() {
            // A chat this stream has no position in yet: the user joined it (or it was
            // created) after the stream began. Start where they joined, so nothing from
            // before that goes out, whatever members the fan-out had in mind when it handed
            // this message over (a lagging fan-out that misses its member cache reads today's
            // members).
            let membership = self
                .svc
                .store
                .membership(&m.chat_id, self.user_id())
                .await
                .map_err(Stop::Abort)?;
            match membership {
                Membership::Member(access) => self.seqs.passed(&m.chat_id, access.joined_seq),
                Membership::NotMember | Membership::NoSuchChat => return Ok(()),
            }
        }
        match self.seqs.classify(&m.chat_id, m.seq) {
            Next::Duplicate => return Ok(()),
            Next::Gap { after } => {
                METRICS.gaps_filled.fetch_add(1, Relaxed);
                // Rare: boxed, so the store read's state is not part of every idle session.
                Box::pin(self.pass_range(&m.chat_id, after, m.seq)).await?;
            }
            Next::Emit => {}
        }
        self.seqs.passed(&m.chat_id, m.seq);
        if self.is_own(m) {
            return Ok(());
        }
        self.emit(Output::Event(c.event)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_drops_duplicates_and_spots_gaps() {
        let mut t = SeqTracker::default();
        assert_eq!(t.classify("c1", 7), Next::Emit, "first message of a chat");
        t.passed("c1", 7);
        assert_eq!(t.classify("c1", 7), Next::Duplicate);
        assert_eq!(t.classify("c1", 3), Next::Duplicate);
        assert_eq!(t.classify("c1", 8), Next::Emit);
        assert_eq!(t.classify("c1", 10), Next::Gap { after: 7 });
        assert_eq!(t.classify("c2", 10), Next::Emit, "chats are independent");
        t.passed("c1", 5);
        assert_eq!(t.get("c1"), Some(7), "never moves back");
    }

    #[test]
    fn live_messages_after_a_replay() {
        // The replay read chat c1 up to last_seq 20 and marks it passed.
        let mut t = SeqTracker::default();
        t.passed("c1", 20);
        // Committed during the replay and queued live too: already out.
        assert_eq!(t.classify("c1", 19), Next::Duplicate);
        assert_eq!(t.classify("c1", 20), Next::Duplicate);
        // Committed after the plan was read: the next one goes out as it is...
        assert_eq!(t.classify("c1", 21), Next::Emit);
        // ...and one whose predecessors the fan-out lost is preceded by them, from the store.
        assert_eq!(t.classify("c1", 24), Next::Gap { after: 20 });
        // After the gap fill and the message itself, the stream is contiguous again.
        for seq in 21..=24 {
            t.passed("c1", seq);
        }
        assert_eq!(t.classify("c1", 24), Next::Duplicate);
        assert_eq!(t.classify("c1", 25), Next::Emit);
    }

    #[test]
    fn a_chat_first_seen_live_starts_at_joined_seq() {
        // The user joined c2 at seq 40, after the stream began: forward() marks 40 passed.
        let mut t = SeqTracker::default();
        assert_eq!(
            t.get("c2"),
            None,
            "no position yet: forward reads the membership"
        );
        t.passed("c2", 40);
        assert_eq!(
            t.classify("c2", 39),
            Next::Duplicate,
            "before joining: never sent"
        );
        assert_eq!(t.classify("c2", 40), Next::Duplicate);
        assert_eq!(t.classify("c2", 41), Next::Emit);
        assert_eq!(
            t.classify("c2", 43),
            Next::Gap { after: 40 },
            "fill from joining"
        );
    }

    #[test]
    fn a_direct_copy_goes_out_only_as_the_next_message_of_a_known_chat() {
        let mut t = SeqTracker::default();
        assert!(
            !direct_copy_is_next(&t, "c1", 1),
            "no position yet: the ordered copy brings it after the chat's own events"
        );
        t.passed("c1", 5);
        assert!(direct_copy_is_next(&t, "c1", 6));
        assert!(!direct_copy_is_next(&t, "c1", 5), "already out");
        assert!(
            !direct_copy_is_next(&t, "c1", 8),
            "past a gap: no store read for it"
        );
    }

    #[test]
    fn replay_starts_from_the_claim_or_the_stored_cursor() {
        // Fresh stream, no claim: the stored delivered cursor.
        assert_eq!(resume_after(None, None, 10, 0), 10);
        // The device's claim overrides the stored cursor, lower or higher.
        assert_eq!(resume_after(None, Some(4), 10, 0), 4);
        assert_eq!(resume_after(None, Some(15), 10, 0), 15);
        // Never before joining, whatever the claim or the cursor.
        assert_eq!(resume_after(None, Some(2), 3, 8), 8);
        assert_eq!(resume_after(None, None, 0, 8), 8);
    }

    #[test]
    fn a_resync_goes_on_from_what_the_stream_passed() {
        // The stream passed 12: a (lower) claim from the hello no longer counts.
        assert_eq!(resume_after(Some(12), Some(4), 10, 0), 12);
        // Another device moved the stored cursor further: start there.
        assert_eq!(resume_after(Some(12), None, 18, 0), 18);
        assert_eq!(resume_after(Some(12), None, 10, 20), 20);
    }
}
