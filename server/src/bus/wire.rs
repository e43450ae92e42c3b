//! How events travel between nodes: the event as the store's outbox encoded it
//! ([`crate::store::outbox`]), on Kafka and, wrapped in an envelope with its targets, over Redis
//! Pub/Sub.

use super::audience::Target;
use crate::domain::model::Event;
pub use crate::store::outbox::{decode_event, encode_event};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// An event for some sessions of one node: the targets as one JSON line, then the event
/// exactly as it came from the outbox, so fanning out costs no re-encoding of the event.
pub fn encode_envelope(targets: &[Target], event: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(targets).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(event);
    out
}

/// What comes on a node's channel: an event for some of its sessions, or the end of a user's
/// sessions (their data is being erased).
pub enum NodeMessage {
    Deliver(Vec<Target>, Event),
    /// A direct copy of a committed message: offered to the sessions, which may drop it (the
    /// ordered delivery brings it too).
    Offer(Vec<Target>, Event),
    Evict(String),
}

/// An eviction starts with this byte, a direct copy with [`DIRECT_COPY`]; an envelope starts
/// with its target line, a JSON array. A node that knows neither drops them with a log line,
/// which costs a direct copy nothing.
const EVICTION: u8 = b'!';
const DIRECT_COPY: u8 = b'~';

/// An envelope for a direct copy of `event` (encoded as the outbox encodes it).
pub fn encode_direct_copy(targets: &[Target], event: &[u8]) -> Vec<u8> {
    let mut out = vec![DIRECT_COPY];
    out.extend_from_slice(&encode_envelope(targets, event));
    out
}

/// Tells a node to end every session of `user_id` it holds.
pub fn encode_eviction(user_id: &str) -> Vec<u8> {
    let mut out = vec![EVICTION];
    out.extend_from_slice(user_id.as_bytes());
    out
}

pub fn decode_node_message(bytes: &[u8]) -> Result<NodeMessage> {
    match bytes.split_first() {
        Some((&EVICTION, user)) => std::str::from_utf8(user)
            .map(|u| NodeMessage::Evict(u.to_string()))
            .map_err(|_| Error::internal("an eviction whose user id is not UTF-8")),
        Some((&DIRECT_COPY, envelope)) => {
            decode_envelope(envelope).map(|(targets, event)| NodeMessage::Offer(targets, event))
        }
        _ => decode_envelope(bytes).map(|(targets, event)| NodeMessage::Deliver(targets, event)),
    }
}

pub fn decode_envelope(bytes: &[u8]) -> Result<(Vec<Target>, Event)> {
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| Error::internal("envelope without a target line"))?;
    let targets = serde_json::from_slice(&bytes[..split])
        .map_err(|e| Error::internal(format!("undecodable envelope targets: {e}")))?;
    Ok((targets, decode_event(&bytes[split + 1..])?))
}

/// A job on `chat.push`: tell `user_id`, who had no live device, about a message. The push
/// sender (a later component) reads these; the message itself stays in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    pub user_id: String,
    pub chat_id: String,
    pub seq: u64,
    pub message_id: String,
    pub sender_user_id: String,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Content, Message};
    use std::sync::Arc;

    #[test]
    fn envelopes_round_trip_with_binary_content() {
        let m = Message {
            message_id: "m1".into(),
            chat_id: "c1".into(),
            seq: 7,
            sender_user_id: "a".into(),
            sender_device_id: "phone".into(),
            client_msg_id: "x".into(),
            content: Content {
                text: "hi\nthere".into(),
                ciphertext: vec![0, 10, 255],
                attributes: [("k".to_string(), "v".to_string())].into(),
            },
            created_at: 5,
            wire: Default::default(),
        };
        let event = encode_event(&Event::Message(Arc::new(m.clone())));
        let targets = vec![Target {
            user_id: "b".into(),
            skip_device: None,
        }];
        let (t, e) = decode_envelope(&encode_envelope(&targets, &event)).unwrap();
        assert_eq!(t, targets);
        assert!(matches!(e, Event::Message(got) if *got == m));
        assert!(decode_envelope(b"no newline").is_err());
        let e = encode_envelope(&targets, &event);
        assert!(matches!(decode_node_message(&e), Ok(NodeMessage::Deliver(t, _)) if t == targets));
        let copy = decode_node_message(&encode_direct_copy(&targets, &event));
        assert!(
            matches!(copy, Ok(NodeMessage::Offer(t, Event::Message(got))) if t == targets && *got == m)
        );
        let evict = decode_node_message(&encode_eviction("ann\n[1]"));
        assert!(matches!(evict, Ok(NodeMessage::Evict(u)) if u == "ann\n[1]"));
    }
}
