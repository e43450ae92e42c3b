//! Who must hear of an event: the one rule the in-process and the cluster fan-out share.

use crate::domain::model::{Event, ReceiptKind};
use serde::{Deserialize, Serialize};

/// Deliver to every session of `user_id`, except those of `skip_device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_device: Option<String>,
}

impl Target {
    fn all(user_id: &str) -> Self {
        Target {
            user_id: user_id.to_string(),
            skip_device: None,
        }
    }
}

/// The sessions `event` goes to, given the chat's `members` as of the event.
///
/// A message goes to every member, the sender's own devices included: the sending session
/// drops its own messages after noting their seq, which keeps each stream's seqs gap-free.
/// Receipts of chats larger than `live_receipts_max_members` go only to the reader's other
/// devices (so reading on one clears the badge on the others).
pub fn targets(event: &Event, members: &[String], live_receipts_max_members: usize) -> Vec<Target> {
    match event {
        Event::Message(_) => members.iter().map(|u| Target::all(u)).collect(),
        Event::Chat(change) => change.audience().map(Target::all).collect(),
        Event::Receipt(r) => {
            let mut out: Vec<Target> = Vec::new();
            if members.len() <= live_receipts_max_members {
                out.extend(
                    members
                        .iter()
                        .filter(|u| **u != r.user_id)
                        .map(|u| Target::all(u)),
                );
            }
            if r.kind == ReceiptKind::Read {
                out.push(Target {
                    user_id: r.user_id.clone(),
                    skip_device: Some(r.device_id.clone()),
                });
            }
            out
        }
        Event::Typing(t) => members
            .iter()
            .filter(|u| **u != t.user_id)
            .map(|u| Target::all(u))
            .collect(),
        // The registry delivers presence to its watchers.
        Event::Presence(_) => Vec::new(),
    }
}

/// The chat an event belongs to (`None` for presence).
pub fn chat_of(event: &Event) -> Option<&str> {
    match event {
        Event::Message(m) => Some(&m.chat_id),
        Event::Chat(c) => Some(&c.chat.chat_id),
        Event::Receipt(r) => Some(&r.chat_id),
        Event::Typing(t) => Some(&t.chat_id),
        Event::Presence(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Receipt;
    use std::sync::Arc;

    fn receipt(kind: ReceiptKind) -> Event {
        Event::Receipt(Arc::new(Receipt {
            chat_id: "c".into(),
            user_id: "a".into(),
            device_id: "phone".into(),
            kind,
            seq: 1,
            at: 1,
        }))
    }

    #[test]
    fn receipts_of_large_chats_reach_only_the_readers_other_devices() {
        let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let small = targets(&receipt(ReceiptKind::Read), &members, 3);
        assert_eq!(small.len(), 3, "b, c and a's other devices: {small:?}");
        let large = targets(&receipt(ReceiptKind::Read), &members, 2);
        assert_eq!(
            large,
            vec![Target {
                user_id: "a".into(),
                skip_device: Some("phone".into())
            }]
        );
        assert!(targets(&receipt(ReceiptKind::Delivered), &members, 2).is_empty());
    }
}
