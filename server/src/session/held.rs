//! Live messages that arrived past a gap, held briefly for the messages before them.
//!
//! In a cluster two nodes hand over one chat's messages (each its own commits, straight after
//! committing), so a message can overtake the one before it by a few milliseconds. Reading the
//! gap from the store at once would cost a query for what is about to arrive anyway; the session
//! waits up to [`GAP_WAIT`] first and reads only what is still missing then.

use crate::domain::model::Committed;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// How long a message past a gap waits for the missing ones before they are read from the store.
pub const GAP_WAIT: Duration = Duration::from_millis(20);
/// Messages held at most per session; past this a gap is read from the store at once.
const MAX_HELD: usize = 256;

#[derive(Default)]
pub struct Held {
    /// chat_id → seq → the message.
    chats: HashMap<String, BTreeMap<u64, Committed>>,
    len: usize,
    /// When the oldest hold runs out (`None` when nothing is held).
    deadline: Option<Instant>,
}

impl Held {
    /// Holds message `seq` of `chat_id`, or gives it back when the buffer is full.
    pub fn hold(
        &mut self,
        chat_id: &str,
        seq: u64,
        c: Committed,
        now: Instant,
    ) -> Result<(), Committed> {
        if self.len >= MAX_HELD {
            return Err(c);
        }
        let chat = self.chats.entry(chat_id.to_string()).or_default();
        if chat.insert(seq, c).is_none() {
            self.len += 1;
        }
        self.deadline.get_or_insert(now + GAP_WAIT);
        Ok(())
    }

    pub fn holds(&self, chat_id: &str) -> bool {
        self.chats.contains_key(chat_id)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The held message right after `last` in `chat_id`, dropping held ones at or below `last`
    /// (they were passed on meanwhile).
    pub fn take_next(&mut self, chat_id: &str, last: u64) -> Option<Committed> {
        let chat = self.chats.get_mut(chat_id)?;
        let mut next = None;
        while let Some(entry) = chat.first_entry() {
            let seq = *entry.key();
            if seq > last + 1 {
                break;
            }
            let c = entry.remove();
            self.len -= 1;
            if seq == last + 1 {
                next = Some(c);
                break;
            }
        }
        if chat.is_empty() {
            self.chats.remove(chat_id);
            if self.chats.is_empty() {
                self.deadline = None;
            }
        }
        next
    }

    /// Everything held for `chat_id`, in seq order.
    pub fn take_chat(&mut self, chat_id: &str) -> Vec<(u64, Committed)> {
        let Some(chat) = self.chats.remove(chat_id) else {
            return Vec::new();
        };
        self.len -= chat.len();
        if self.chats.is_empty() {
            self.deadline = None;
        }
        chat.into_iter().collect()
    }

    /// The chats with held messages.
    pub fn chat_ids(&self) -> Vec<String> {
        self.chats.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Event, Receipt, ReceiptKind, EPHEMERAL};
    use std::sync::Arc;

    fn event(seq: u64) -> Committed {
        // Any event will do: `Held` keys by the seq it is given.
        Committed {
            commit_id: EPHEMERAL,
            event: Event::Receipt(Arc::new(Receipt {
                chat_id: "c".into(),
                user_id: "u".into(),
                device_id: "d".into(),
                kind: ReceiptKind::Delivered,
                seq,
                at: 0,
            })),
        }
    }

    fn seq_of(c: &Committed) -> u64 {
        match &c.event {
            Event::Receipt(r) => r.seq,
            _ => unreachable!(),
        }
    }

    #[test]
    fn releases_in_order_once_the_gap_closes() {
        let now = Instant::now();
        let mut held = Held::default();
        assert!(held.hold("c", 7, event(7), now).is_ok());
        assert!(held.hold("c", 5, event(5), now).is_ok());
        assert_eq!(held.deadline(), Some(now + GAP_WAIT));
        assert!(held.take_next("c", 3).is_none(), "4 is still missing");
        assert_eq!(held.take_next("c", 4).as_ref().map(seq_of), Some(5));
        assert!(held.take_next("c", 5).is_none(), "6 is still missing");
        assert!(held.holds("c"));
        assert_eq!(held.take_next("c", 6).as_ref().map(seq_of), Some(7));
        assert!(!held.holds("c"));
        assert_eq!(held.deadline(), None, "nothing held, no deadline");
    }

    #[test]
    fn drops_what_was_passed_on_meanwhile() {
        let now = Instant::now();
        let mut held = Held::default();
        for seq in [5, 6, 9] {
            assert!(held.hold("c", seq, event(seq), now).is_ok());
        }
        // A store read passed on up to 6 in the meantime.
        assert!(held.take_next("c", 6).is_none());
        let rest: Vec<u64> = held.take_chat("c").into_iter().map(|(s, _)| s).collect();
        assert_eq!(rest, vec![9]);
        assert_eq!(held.len, 0);
    }

    #[test]
    fn the_first_hold_sets_the_deadline_and_a_full_buffer_refuses() {
        let now = Instant::now();
        let mut held = Held::default();
        for seq in 0..MAX_HELD as u64 {
            let at = now + Duration::from_millis(seq);
            assert!(held.hold("c", seq + 10, event(seq + 10), at).is_ok());
        }
        assert_eq!(
            held.deadline(),
            Some(now + GAP_WAIT),
            "the oldest hold decides"
        );
        assert!(held.hold("d", 1, event(1), now).is_err());
        assert_eq!(held.chat_ids(), vec!["c".to_string()]);
    }
}
