//! Per-chat order: what the app has been given, what is a duplicate, where a gap is.
//!
//! A chat's *position* is the highest seq up to which the app has been given every message
//! (its own sends included, which come back as `SendAck`s rather than `MessageEvent`s). A
//! message at or below it is a duplicate (a replay after reconnect, an at-least-once
//! re-delivery); one just above it is next; one further up means a gap that must be read
//! from history before the message is passed on. A chat the client has no position in yet
//! (new device, new chat) starts at the first message it sees.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct ChatOrder {
    /// Highest seq given to the app with nothing missing below it; 0 = no position yet.
    emitted: u64,
    /// Own sends acked above `emitted`: they count as given once the messages below them are.
    own_ahead: BTreeSet<u64>,
}

/// What to do with a message that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Already given (or one of our own acked sends): drop it.
    Duplicate,
    /// Next in order: give it to the app, then call [`Sequencer::emitted`].
    Next,
    /// Messages `after + 1 .. seq` are missing: read them first.
    Gap { after: u64 },
}

#[derive(Debug, Default)]
pub struct Sequencer {
    chats: HashMap<String, ChatOrder>,
}

impl Sequencer {
    /// Start from saved positions (chat → seq).
    pub fn new(positions: impl IntoIterator<Item = (String, u64)>) -> Self {
        Sequencer {
            chats: positions
                .into_iter()
                .map(|(c, s)| {
                    (
                        c,
                        ChatOrder {
                            emitted: s,
                            own_ahead: BTreeSet::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The position of `chat` (0: none yet).
    pub fn position(&self, chat: &str) -> u64 {
        self.chats.get(chat).map_or(0, |c| c.emitted)
    }

    pub fn judge(&self, chat: &str, seq: u64) -> Verdict {
        let Some(c) = self.chats.get(chat) else {
            return Verdict::Next;
        };
        if c.emitted == 0 {
            return Verdict::Next;
        }
        if seq <= c.emitted || c.own_ahead.contains(&seq) {
            return Verdict::Duplicate;
        }
        // Own sends right above the position close part of the distance.
        let mut next = c.emitted + 1;
        while c.own_ahead.contains(&next) {
            next += 1;
        }
        if seq == next {
            Verdict::Next
        } else if seq < next {
            Verdict::Duplicate
        } else {
            Verdict::Gap { after: c.emitted }
        }
    }

    /// `seq` of `chat` was given to the app (after [`Verdict::Next`], or when a gap is given up
    /// as purged). Returns the chat's new position.
    pub fn emitted(&mut self, chat: &str, seq: u64) -> u64 {
        let c = self.chats.entry(chat.to_string()).or_default();
        if seq > c.emitted {
            c.emitted = seq;
        }
        Self::absorb(c)
    }

    /// Our own send was acked with `seq`. Returns the new position if it moved.
    pub fn own_sent(&mut self, chat: &str, seq: u64) -> Option<u64> {
        let c = self.chats.entry(chat.to_string()).or_default();
        if c.emitted == 0 {
            // No position yet: whatever others sent before it may still be on its way, so the
            // first message from them decides where the chat starts.
            c.own_ahead.insert(seq);
            return None;
        }
        if seq <= c.emitted {
            return None;
        }
        c.own_ahead.insert(seq);
        let before = c.emitted;
        let after = Self::absorb(c);
        (after != before).then_some(after)
    }

    fn absorb(c: &mut ChatOrder) -> u64 {
        while c.own_ahead.remove(&(c.emitted + 1)) {
            c.emitted += 1;
        }
        // Own sends from before the chat's start are history.
        while let Some(&first) = c.own_ahead.first() {
            if first > c.emitted {
                break;
            }
            c.own_ahead.remove(&first);
        }
        c.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut s = Sequencer::new([("c".to_string(), 5)]);
        assert_eq!(s.judge("c", 5), Duplicate);
        assert_eq!(s.judge("c", 3), Duplicate);
        assert_eq!(s.judge("c", 6), Next);
        assert_eq!(s.emitted("c", 6), 6);
        assert_eq!(s.judge("c", 9), Gap { after: 6 });
        assert_eq!(s.emitted("c", 7), 7);
        assert_eq!(s.emitted("c", 8), 8);
        assert_eq!(s.judge("c", 9), Next);
    }

    #[test]
    fn unknown_chat_starts_at_first_message() {
        let mut s = Sequencer::default();
        assert_eq!(s.position("new"), 0);
        assert_eq!(s.judge("new", 42), Next);
        assert_eq!(s.emitted("new", 42), 42);
        assert_eq!(s.judge("new", 43), Next);
        assert_eq!(s.judge("new", 41), Duplicate);
    }

    #[test]
    fn own_sends_fill_the_sequence() {
        let mut s = Sequencer::new([("c".to_string(), 1)]);
        // Own message acked as 2: position moves at once.
        assert_eq!(s.own_sent("c", 2), Some(2));
        // Own message 4 acked before the peer's 3 arrived: waits.
        assert_eq!(s.own_sent("c", 4), None);
        assert_eq!(s.judge("c", 4), Duplicate);
        assert_eq!(s.judge("c", 5), Gap { after: 2 });
        assert_eq!(s.judge("c", 3), Next);
        // Giving 3 absorbs the own 4.
        assert_eq!(s.emitted("c", 3), 4);
        assert_eq!(s.judge("c", 5), Next);
        assert_eq!(s.own_sent("c", 4), None, "an old ack changes nothing");
    }

    #[test]
    fn next_skips_over_own_sends_right_above() {
        let mut s = Sequencer::new([("c".to_string(), 10)]);
        assert_eq!(s.own_sent("c", 12), None);
        assert_eq!(s.own_sent("c", 13), None);
        assert_eq!(s.judge("c", 11), Next);
        assert_eq!(s.emitted("c", 11), 13);
        assert_eq!(s.judge("c", 14), Next);
    }

    #[test]
    fn own_send_in_a_chat_without_position() {
        let mut s = Sequencer::default();
        assert_eq!(s.own_sent("c", 7), None);
        // A peer's earlier message arrives after our ack: it starts the chat, ours follows.
        assert_eq!(s.judge("c", 6), Next);
        assert_eq!(s.emitted("c", 6), 7);
        // Or, in another chat, a later one starts it and our older ack is history.
        assert_eq!(s.own_sent("d", 3), None);
        assert_eq!(s.emitted("d", 5), 5);
        assert_eq!(s.judge("d", 3), Duplicate);
        assert_eq!(s.judge("d", 6), Next);
    }

    #[test]
    fn purged_gap_is_given_up_by_jumping() {
        let mut s = Sequencer::new([("c".to_string(), 2)]);
        assert_eq!(s.judge("c", 10), Gap { after: 2 });
        // History had nothing between: the caller jumps.
        assert_eq!(s.emitted("c", 10), 10);
        assert_eq!(s.judge("c", 11), Next);
    }
}
