//! Delivery cursors, decided once for both stores: a device's delivered and read positions in a
//! chat only move forward, never past the chat's last seq, reading implies having received, and
//! each position that moves is announced by one receipt. The stores run [`advance`] inside the
//! write that persists its result.

use super::model::{Receipt, ReceiptKind};
use crate::store::CursorMove;
use crate::{Error, Result};
use std::sync::Arc;

/// Where one device stands in one chat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub delivered_seq: u64,
    pub delivered_at: i64,
    pub read_seq: u64,
    pub read_at: i64,
}

/// A cursor that moved: where it stands now and which of its positions moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advanced {
    pub cursor: Cursor,
    pub delivered: bool,
    /// The read position moved: the member's own read position follows it.
    pub read: bool,
}

/// `m` applied to `cursor` in a chat whose last seq is `last_seq`; `None` when nothing moves
/// (a seq at or below the cursor is accepted and changes nothing).
pub fn advance(cursor: Cursor, m: &CursorMove, last_seq: u64) -> Result<Option<Advanced>> {
    if m.seq > last_seq {
        return Err(Error::invalid(
            "seq",
            format!("{} is beyond the chat's last seq {last_seq}", m.seq),
        ));
    }
    let delivered = m.seq > cursor.delivered_seq;
    let read = m.kind == ReceiptKind::Read && m.seq > cursor.read_seq;
    if !delivered && !read {
        return Ok(None);
    }
    let mut next = cursor;
    if delivered {
        (next.delivered_seq, next.delivered_at) = (m.seq, m.at);
    }
    if read {
        (next.read_seq, next.read_at) = (m.seq, m.at);
    }
    Ok(Some(Advanced {
        cursor: next,
        delivered,
        read,
    }))
}

impl Advanced {
    /// The receipts announcing the move: delivered first, then read.
    pub fn receipts(&self, m: &CursorMove) -> Vec<Arc<Receipt>> {
        let receipt = |kind| {
            Arc::new(Receipt {
                chat_id: m.chat_id.clone(),
                user_id: m.user_id.clone(),
                device_id: m.device_id.clone(),
                kind,
                seq: m.seq,
                at: m.at,
            })
        };
        let mut out = Vec::with_capacity(2);
        if self.delivered {
            out.push(receipt(ReceiptKind::Delivered));
        }
        if self.read {
            out.push(receipt(ReceiptKind::Read));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(seq: u64, kind: ReceiptKind, at: i64) -> CursorMove {
        CursorMove {
            user_id: "u".into(),
            device_id: "d".into(),
            chat_id: "c".into(),
            seq,
            kind,
            at,
        }
    }

    #[test]
    fn cursors_move_forward_only_and_reading_implies_receiving() {
        let start = Cursor::default();
        let read = advance(start, &to(3, ReceiptKind::Read, 10), 5)
            .unwrap()
            .unwrap();
        assert_eq!(
            read.cursor,
            Cursor {
                delivered_seq: 3,
                delivered_at: 10,
                read_seq: 3,
                read_at: 10
            }
        );
        let kinds: Vec<ReceiptKind> = read
            .receipts(&to(3, ReceiptKind::Read, 10))
            .iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(kinds, [ReceiptKind::Delivered, ReceiptKind::Read]);
        // Behind or at the cursor: accepted, nothing moves.
        assert_eq!(
            advance(read.cursor, &to(2, ReceiptKind::Read, 11), 5),
            Ok(None)
        );
        assert_eq!(
            advance(read.cursor, &to(3, ReceiptKind::Delivered, 11), 5),
            Ok(None)
        );
        // Delivered ahead of read moves only delivered.
        let d = advance(read.cursor, &to(5, ReceiptKind::Delivered, 12), 5)
            .unwrap()
            .unwrap();
        assert!(d.delivered && !d.read);
        assert_eq!((d.cursor.read_seq, d.cursor.read_at), (3, 10));
        // Read catching up moves only read.
        let r = advance(d.cursor, &to(4, ReceiptKind::Read, 13), 5)
            .unwrap()
            .unwrap();
        assert!(!r.delivered && r.read);
        assert_eq!(r.cursor.delivered_seq, 5);
    }

    #[test]
    fn a_seq_past_the_end_is_refused() {
        assert_eq!(
            advance(Cursor::default(), &to(6, ReceiptKind::Delivered, 1), 5),
            Err(Error::invalid("seq", "6 is beyond the chat's last seq 5"))
        );
    }
}
