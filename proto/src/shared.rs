//! `chat.v1.MessageEvent`, written by hand instead of generated, so that a server can encode a
//! message once and send the same bytes to every recipient. On the wire and to readers it is the
//! generated type: one optional `message` field, decoded as usual.

use crate::v1::Message as ChatMessage;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

const MESSAGE_TAG: u32 = 1;

#[derive(Clone, Default, PartialEq)]
pub struct MessageEvent {
    pub message: Option<ChatMessage>,
    /// The encoded `message`, written instead of encoding it again (shared by reference).
    encoded: Option<Bytes>,
}

impl MessageEvent {
    pub fn new(message: ChatMessage) -> Self {
        MessageEvent {
            message: Some(message),
            encoded: None,
        }
    }

    /// An event whose message is already encoded (`prost::Message::encode_to_vec` of a
    /// `chat.v1.Message`); cloning it only bumps a reference count.
    pub fn from_encoded(message: Bytes) -> Self {
        MessageEvent {
            message: None,
            encoded: Some(message),
        }
    }
}

impl std::fmt::Debug for MessageEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("MessageEvent");
        match (&self.message, &self.encoded) {
            (_, Some(b)) => d.field("encoded_len", &b.len()),
            (m, None) => d.field("message", m),
        };
        d.finish()
    }
}

impl prost::Message for MessageEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(bytes) = &self.encoded {
            encoding::encode_key(MESSAGE_TAG, WireType::LengthDelimited, buf);
            encoding::encode_varint(bytes.len() as u64, buf);
            buf.put_slice(bytes);
        } else if let Some(m) = &self.message {
            encoding::message::encode(MESSAGE_TAG, m, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == MESSAGE_TAG {
            let m = self.message.get_or_insert_with(Default::default);
            encoding::message::merge(wire_type, m, buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        match (&self.encoded, &self.message) {
            (Some(b), _) => {
                encoding::key_len(MESSAGE_TAG)
                    + encoding::encoded_len_varint(b.len() as u64)
                    + b.len()
            }
            (None, Some(m)) => encoding::message::encoded_len(MESSAGE_TAG, m),
            (None, None) => 0,
        }
    }

    fn clear(&mut self) {
        self.message = None;
        self.encoded = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn pre_encoded_events_match_generated_encoding() {
        let m = ChatMessage {
            message_id: "m".into(),
            chat_id: "c".into(),
            seq: 7,
            ..Default::default()
        };
        let plain = MessageEvent::new(m.clone()).encode_to_vec();
        let shared = MessageEvent::from_encoded(Bytes::from(m.encode_to_vec()));
        assert_eq!(shared.encoded_len(), plain.len());
        assert_eq!(shared.encode_to_vec(), plain);
        let decoded = MessageEvent::decode(plain.as_slice()).unwrap();
        assert_eq!(decoded.message, Some(m));
    }
}
