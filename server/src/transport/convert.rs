//! Protobuf ⇄ domain conversions.

use crate::domain::{messaging::SendRequest, model as d, mute};
use crate::session::{Command, Hello, Output};
use chat_proto::v1 as pb;
use pb::{client_frame::Frame as In, server_frame::Frame as Out};
use prost::Message as _;
use std::collections::BTreeMap;

pub fn content_from(c: pb::Content) -> d::Content {
    d::Content {
        text: c.text,
        ciphertext: c.ciphertext,
        attributes: c.attributes.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

fn content_to(c: &d::Content) -> pb::Content {
    pb::Content {
        text: c.text.clone(),
        ciphertext: c.ciphertext.clone(),
        attributes: c
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub fn message(m: &d::Message) -> pb::Message {
    pb::Message {
        message_id: m.message_id.clone(),
        chat_id: m.chat_id.clone(),
        seq: m.seq,
        sender_user_id: m.sender_user_id.clone(),
        sender_device_id: m.sender_device_id.clone(),
        client_msg_id: m.visible_client_msg_id().to_string(),
        content: Some(content_to(&m.content)),
        created_at: m.created_at,
    }
}

/// A chat without a particular member's view (read position, unread count, preview).
pub fn chat(c: &d::Chat) -> pb::Chat {
    pb::Chat {
        chat_id: c.chat_id.clone(),
        kind: match c.kind {
            d::ChatKind::Direct => pb::ChatKind::Direct,
            d::ChatKind::Group => pb::ChatKind::Group,
        } as i32,
        title: c.title.clone(),
        members: c
            .members
            .iter()
            .map(|m| pb::Member {
                user_id: m.user_id.clone(),
                role: match m.role {
                    d::Role::Member => pb::MemberRole::Member,
                    d::Role::Admin => pb::MemberRole::Admin,
                } as i32,
                joined_at: m.joined_at,
            })
            .collect(),
        last_seq: c.last_seq,
        created_at: c.created_at,
        read_seq: 0,
        unread_count: 0,
        last_message: None,
        last_activity_at: c.last_activity_at,
        muted: false,
        muted_until: 0,
    }
}

pub fn chat_view(v: &d::ChatView) -> pb::Chat {
    let (muted, muted_until) = mute(v.muted_until);
    pb::Chat {
        read_seq: v.read_seq,
        unread_count: v.unread_count,
        last_message: v.last_message.as_ref().map(message),
        muted,
        muted_until,
        ..chat(&v.chat)
    }
}

/// A mute (as of now) as the wire has it: (muted, until), until 0 for "until unmuted".
pub fn mute(until: Option<i64>) -> (bool, i64) {
    match until {
        None => (false, 0),
        Some(mute::INDEFINITELY) => (true, 0),
        Some(until) => (true, until),
    }
}

fn event(e: &d::Event) -> Out {
    match e {
        d::Event::Message(m) => Out::Message(pb::MessageEvent::from_encoded(
            m.wire.get_or_init(|| message(m).encode_to_vec().into()),
        )),
        d::Event::Chat(c) => Out::Chat(pb::ChatEvent {
            kind: match c.kind {
                d::ChatChangeKind::Created => pb::ChatEventKind::Created,
                d::ChatChangeKind::MemberAdded => pb::ChatEventKind::MemberAdded,
                d::ChatChangeKind::MemberRemoved => pb::ChatEventKind::MemberRemoved,
            } as i32,
            chat: Some(chat(&c.chat)),
            user_ids: c.user_ids.clone(),
        }),
        d::Event::Receipt(r) => Out::Receipt(pb::ReceiptEvent {
            receipt: Some(receipt(r)),
        }),
        d::Event::Typing(t) => Out::Typing(pb::TypingEvent {
            chat_id: t.chat_id.clone(),
            user_id: t.user_id.clone(),
            device_id: t.device_id.clone(),
            state: if t.started {
                pb::TypingState::Started
            } else {
                pb::TypingState::Stopped
            } as i32,
            expires_at: t.expires_at,
        }),
        d::Event::Presence(p) => Out::Presence(pb::PresenceEvent {
            presence: Some(presence(p)),
        }),
    }
}

pub fn receipt(r: &d::Receipt) -> pb::Receipt {
    pb::Receipt {
        chat_id: r.chat_id.clone(),
        user_id: r.user_id.clone(),
        device_id: r.device_id.clone(),
        kind: match r.kind {
            d::ReceiptKind::Delivered => pb::ReceiptKind::Delivered,
            d::ReceiptKind::Read => pb::ReceiptKind::Read,
        } as i32,
        seq: r.seq,
        at: r.at,
    }
}

pub fn presence(p: &d::Presence) -> pb::Presence {
    pb::Presence {
        user_id: p.user_id.clone(),
        status: match p.status {
            d::PresenceStatus::Online => pb::PresenceStatus::Online,
            d::PresenceStatus::Offline => pb::PresenceStatus::Offline,
        } as i32,
        last_seen: p.last_seen,
        devices_online: p.devices_online,
    }
}

/// A typing state from the wire: `None` unless STARTED or STOPPED.
pub fn typing_state(state: i32) -> Option<bool> {
    match pb::TypingState::try_from(state) {
        Ok(pb::TypingState::Started) => Some(true),
        Ok(pb::TypingState::Stopped) => Some(false),
        _ => None,
    }
}

/// A session output as a frame; `End` is not a frame but the stream's final status.
pub fn output(o: Output) -> Result<pb::ServerFrame, tonic::Status> {
    let frame = match o {
        Output::Welcome(w) => Out::Welcome(pb::Welcome {
            session_id: w.session_id,
            node_id: w.node_id,
            server_time: crate::clock::now_ms(),
            heartbeat_interval_ms: w.heartbeat_interval_ms,
            heartbeat_timeout_ms: w.heartbeat_timeout_ms,
        }),
        Output::Event(e) => event(&e),
        Output::SendAck {
            message: m,
            duplicate,
        } => Out::SendAck(pb::SendAck {
            client_msg_id: m.client_msg_id.clone(),
            message: Some(message(&m)),
            duplicate,
        }),
        Output::SendError(r) => Out::SendError(pb::SendError {
            client_msg_id: r.client_msg_id,
            code: super::status::counted(&r.error) as i32,
            message: r.error.to_string(),
            retry_after_ms: match r.error {
                crate::Error::RateLimited { retry_after_ms } => retry_after_ms,
                _ => 0,
            },
        }),
        Output::FrameError(r) => Out::Error(pb::Error {
            frame: r.frame.to_string(),
            code: super::status::counted(&r.error) as i32,
            message: r.error.to_string(),
            chat_id: r.chat_id,
        }),
        Output::SyncComplete { replayed } => Out::SyncComplete(pb::SyncComplete { replayed }),
        Output::Pong { nonce, server_time } => Out::Pong(pb::Pong { nonce, server_time }),
        Output::End(e) => return Err(super::status::status(&e)),
    };
    Ok(pb::ServerFrame { frame: Some(frame) })
}

pub fn hello(h: pb::Hello) -> Hello {
    Hello {
        device_id: h.device_id,
        delivered_seq: h.delivered_seq.into_iter().collect(),
        client_version: h.client_version,
    }
}

pub fn command(f: pb::ClientFrame) -> Command {
    match f.frame {
        None => Command::Empty,
        Some(In::Hello(h)) => Command::Hello(hello(h)),
        Some(In::Send(s)) => Command::Send(SendRequest {
            client_msg_id: s.client_msg_id,
            chat_id: s.chat_id,
            content: s.content.map(content_from),
        }),
        Some(In::Ack(a)) => Command::Ack {
            chat_id: a.chat_id,
            seq: a.seq,
        },
        Some(In::Read(r)) => Command::Read {
            chat_id: r.chat_id,
            seq: r.seq,
        },
        Some(In::Typing(t)) => Command::Typing {
            chat_id: t.chat_id,
            started: typing_state(t.state),
        },
        Some(In::WatchPresence(w)) => Command::WatchPresence {
            user_ids: w.user_ids,
        },
        Some(In::Ping(p)) => Command::Ping { nonce: p.nonce },
    }
}

/// A request's push provider; `None` for UNSPECIFIED or a number this server does not know
/// (the domain refuses both, naming `provider`).
pub fn push_provider(p: i32) -> Option<d::PushProvider> {
    match pb::PushProvider::try_from(p).ok()? {
        pb::PushProvider::Unspecified => None,
        pb::PushProvider::Fcm => Some(d::PushProvider::Fcm),
        pb::PushProvider::Apns => Some(d::PushProvider::Apns),
        pb::PushProvider::Webpush => Some(d::PushProvider::WebPush),
        pb::PushProvider::Webhook => Some(d::PushProvider::Webhook),
    }
}
