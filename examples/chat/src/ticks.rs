//! Ticks of one's own messages, from the receipts of the other members.
//!
//! Receipts are per device (and, from `GetReceipts`, also per user with an empty device): a
//! user has received a message when any of their devices has, and read it when they read it
//! anywhere. A message is delivered / read when every other member who was in the chat when it
//! was sent has received / read it, so in a group ✓✓ means "everyone".

use chat_sdk::{Member, Receipt, ReceiptKind};
use std::collections::HashMap;

/// Where one of this user's messages is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// On disk locally, not yet stored by the server.
    Queued,
    /// Stored by the server (✓).
    Sent,
    /// Every other member has it on a device (✓✓).
    Delivered,
    /// Every other member has read it (✓✓, coloured).
    Read,
    /// Refused for good, with the server's reason.
    Failed(String),
}

impl Tick {
    /// The marker shown after the message.
    pub fn label(&self) -> String {
        match self {
            Tick::Queued => "queued".to_string(),
            Tick::Sent => "✓".to_string(),
            Tick::Delivered => "✓✓".to_string(),
            Tick::Read => "✓✓ read".to_string(),
            Tick::Failed(reason) => format!("✗ failed: {reason}"),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Marks {
    delivered: u64,
    read: u64,
}

/// The highest delivered and read seq per user of one chat. Positions only move forward, so
/// receipts may arrive in any order (live events and a `GetReceipts` answer overlap).
#[derive(Debug, Default, Clone)]
pub struct ReceiptBook {
    users: HashMap<String, Marks>,
}

impl ReceiptBook {
    /// Take a receipt into account; true when it moved something.
    pub fn apply(&mut self, r: &Receipt) -> bool {
        let m = self.users.entry(r.user_id.clone()).or_default();
        let before = *m;
        match r.kind {
            ReceiptKind::Delivered => m.delivered = m.delivered.max(r.seq),
            ReceiptKind::Read => {
                // Reading implies having received.
                m.read = m.read.max(r.seq);
                m.delivered = m.delivered.max(r.seq);
            }
            ReceiptKind::Unspecified => {}
        }
        *m != before
    }

    /// The tick of a stored message at `seq` whose audience is `others`.
    pub fn tick(&self, seq: u64, others: &[&str]) -> Tick {
        if others.is_empty() {
            return Tick::Sent;
        }
        let marks = |u: &str| self.users.get(u).copied().unwrap_or_default();
        if others.iter().all(|u| marks(u).read >= seq) {
            Tick::Read
        } else if others.iter().all(|u| marks(u).delivered >= seq) {
            Tick::Delivered
        } else {
            Tick::Sent
        }
    }
}

/// The members a message sent at `created_at` by `me` is meant for: everyone else who had
/// joined by then (a later member never receives older messages, and must not hold ✓✓ back).
pub fn audience<'a>(members: &'a [Member], me: &str, created_at: i64) -> Vec<&'a str> {
    members
        .iter()
        .filter(|m| m.user_id != me && (m.joined_at == 0 || m.joined_at <= created_at))
        .map(|m| m.user_id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_sdk::MemberRole;

    fn receipt(user: &str, kind: ReceiptKind, seq: u64) -> Receipt {
        Receipt {
            chat_id: "c".into(),
            user_id: user.into(),
            device_id: "phone".into(),
            kind,
            seq,
            at: 0,
        }
    }

    fn member(user: &str, joined_at: i64) -> Member {
        Member {
            user_id: user.into(),
            role: MemberRole::Member,
            joined_at,
        }
    }

    #[test]
    fn ticks_progress_sent_delivered_read() {
        let mut book = ReceiptBook::default();
        assert_eq!(book.tick(3, &["bob"]), Tick::Sent);
        assert!(book.apply(&receipt("bob", ReceiptKind::Delivered, 2)));
        assert_eq!(book.tick(3, &["bob"]), Tick::Sent, "delivered up to 2 only");
        assert_eq!(book.tick(2, &["bob"]), Tick::Delivered);
        book.apply(&receipt("bob", ReceiptKind::Delivered, 3));
        assert_eq!(book.tick(3, &["bob"]), Tick::Delivered);
        book.apply(&receipt("bob", ReceiptKind::Read, 3));
        assert_eq!(book.tick(3, &["bob"]), Tick::Read);
        assert_eq!(book.tick(1, &["bob"]), Tick::Read, "covers older messages");
        assert_eq!(book.tick(4, &["bob"]), Tick::Sent);
    }

    #[test]
    fn receipts_never_move_back_and_read_implies_delivered() {
        let mut book = ReceiptBook::default();
        book.apply(&receipt("bob", ReceiptKind::Read, 5));
        assert!(!book.apply(&receipt("bob", ReceiptKind::Delivered, 4)));
        assert!(!book.apply(&receipt("bob", ReceiptKind::Read, 2)));
        assert_eq!(book.tick(5, &["bob"]), Tick::Read);
    }

    #[test]
    fn a_group_needs_everyone() {
        let mut book = ReceiptBook::default();
        book.apply(&receipt("bob", ReceiptKind::Read, 7));
        assert_eq!(book.tick(7, &["bob", "carol"]), Tick::Sent);
        book.apply(&receipt("carol", ReceiptKind::Delivered, 7));
        assert_eq!(book.tick(7, &["bob", "carol"]), Tick::Delivered);
        book.apply(&receipt("carol", ReceiptKind::Read, 9));
        assert_eq!(book.tick(7, &["bob", "carol"]), Tick::Read);
    }

    #[test]
    fn own_receipts_do_not_count() {
        let mut book = ReceiptBook::default();
        book.apply(&receipt("alice", ReceiptKind::Read, 9));
        let members = [member("alice", 0), member("bob", 0)];
        assert_eq!(book.tick(9, &audience(&members, "alice", 100)), Tick::Sent);
        assert_eq!(book.tick(9, &[]), Tick::Sent, "alone in a group");
    }

    #[test]
    fn later_members_are_not_waited_for() {
        let members = [member("alice", 10), member("bob", 10), member("carol", 500)];
        assert_eq!(audience(&members, "alice", 100), vec!["bob"]);
        assert_eq!(audience(&members, "alice", 600), vec!["bob", "carol"]);
    }

    #[test]
    fn labels() {
        assert_eq!(Tick::Queued.label(), "queued");
        assert_eq!(Tick::Sent.label(), "✓");
        assert_eq!(Tick::Delivered.label(), "✓✓");
        assert_eq!(Tick::Read.label(), "✓✓ read");
        assert_eq!(
            Tick::Failed("too long".into()).label(),
            "✗ failed: too long"
        );
    }
}
