//! `--transport ws`: a session over chatd's WebSocket JSON door (`/ws`, docs/websocket.md)
//! instead of the gRPC `Connect` stream. The scenarios keep speaking protobuf frames: each
//! session's outgoing `ClientFrame`s are written as JSON by a writer task, and the server's
//! JSON frames are read back into `ServerFrame`s, so the counting, timing and checks in
//! `client.rs` are the same for both transports. The JSON work is part of what is measured,
//! as a browser or script client would pay it.

use chat_proto::v1::{
    client_frame, server_frame::Frame, ChatEvent, ClientFrame, Content, Error as ErrorFrame,
    Message, MessageEvent, Pong, Presence, PresenceEvent, Receipt, ReceiptEvent, SendAck,
    SendError, ServerFrame, SyncComplete, TypingEvent, TypingState, Welcome,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

type Socket = WebSocketStream<TcpStream>;

/// Opens `ws://addr/ws` on a fresh TCP connection (from `source` when set).
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<Socket, (&'static str, String)> {
    let open = async {
        let tcp = crate::client::tcp_connect(addr, source)
            .await
            .map_err(|e| ("connect", format!("connect {addr} from {source:?}: {e}")))?;
        let request = format!("ws://{addr}/ws")
            .into_client_request()
            .map_err(|e| ("connect", format!("ws://{addr}/ws: {e}")))?;
        tokio_tungstenite::client_async(request, tcp)
            .await
            .map(|(socket, _)| socket)
            .map_err(|e| ("handshake", format!("WebSocket handshake with {addr}: {e}")))
    };
    tokio::time::timeout(timeout, open)
        .await
        .unwrap_or_else(|_| Err(("timeout", format!("ws://{addr}/ws: timed out"))))
}

/// Splits `socket`: a task writes `frames` (the first must be the Hello, sent as `connect`
/// with `token`) and closes the socket when they end; the returned reader yields the server's
/// frames.
pub fn start(socket: Socket, frames: mpsc::Receiver<ClientFrame>, token: String) -> Reader {
    let (sink, stream) = socket.split();
    tokio::spawn(write(sink, frames, token));
    Reader(stream)
}

async fn write(
    mut sink: SplitSink<Socket, WsMessage>,
    mut frames: mpsc::Receiver<ClientFrame>,
    token: String,
) {
    let mut batch = Vec::with_capacity(64);
    // Whatever is queued goes out with one flush, as the gRPC stream batches its writes.
    while frames.recv_many(&mut batch, 64).await > 0 {
        for f in batch.drain(..) {
            let Some(text) = to_json(&f, &token) else {
                continue;
            };
            if sink.feed(WsMessage::text(text)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    // The scenario let go of the session: close as a client going away cleanly does.
    let _ = sink
        .send(WsMessage::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
}

/// How a session's stream ended other than cleanly: the gRPC code name (a WebSocket close
/// code carries it as 4000 + code), or what went wrong.
pub struct Ended {
    pub code: &'static str,
    pub message: String,
}

/// The server's frames of one socket.
pub struct Reader(SplitStream<Socket>);

impl Reader {
    /// The next frame; `Ok(None)` when the server closed normally.
    pub async fn message(&mut self) -> Result<Option<ServerFrame>, Ended> {
        loop {
            let msg = match self.0.next().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Ended {
                        code: "transport",
                        message: e.to_string(),
                    })
                }
                Some(Ok(m)) => m,
            };
            match msg {
                WsMessage::Text(text) => {
                    return from_json(text.as_str()).map(Some).map_err(|e| Ended {
                        code: "bad_json",
                        message: e,
                    })
                }
                WsMessage::Close(None) => return Ok(None),
                WsMessage::Close(Some(c)) => return closed(c),
                // Pings are answered by the library; nothing else is sent by chatd.
                _ => continue,
            }
        }
    }
}

fn closed(c: CloseFrame) -> Result<Option<ServerFrame>, Ended> {
    let code = u16::from(c.code);
    match code {
        1000 => Ok(None),
        4000..=4016 => Err(Ended {
            code: crate::stats::code_name(i32::from(code - 4000)),
            message: c.reason.to_string(),
        }),
        _ => Err(Ended {
            code: "closed",
            message: format!("close {code}: {}", c.reason),
        }),
    }
}

// ------------------------------------------------------------------ client frames → JSON

/// `f` as the JSON frame docs/websocket.md names; `None` for an empty frame.
pub fn to_json(f: &ClientFrame, token: &str) -> Option<String> {
    let v = match f.frame.as_ref()? {
        client_frame::Frame::Hello(h) => json!({
            "type": "connect",
            "token": token,
            "deviceId": h.device_id,
            "positions": h.delivered_seq,
            "clientVersion": h.client_version,
        }),
        client_frame::Frame::Send(s) => {
            let content = s.content.clone().unwrap_or_default();
            json!({
                "type": "message",
                "clientMsgId": s.client_msg_id,
                "chatId": s.chat_id,
                "content": { "text": content.text, "attributes": content.attributes },
            })
        }
        client_frame::Frame::Typing(t) => json!({
            "type": "typing",
            "chatId": t.chat_id,
            "started": t.state == TypingState::Started as i32,
        }),
        client_frame::Frame::Read(r) => {
            json!({ "type": "read", "chatId": r.chat_id, "seq": r.seq })
        }
        client_frame::Frame::Ack(a) => json!({ "type": "ack", "chatId": a.chat_id, "seq": a.seq }),
        client_frame::Frame::Ping(p) => json!({ "type": "ping", "nonce": p.nonce }),
        client_frame::Frame::WatchPresence(w) => {
            json!({ "type": "watchPresence", "userIds": w.user_ids })
        }
    };
    Some(v.to_string())
}

// ------------------------------------------------------------------ JSON → server frames

/// Every field any server frame carries (all optional), read in one pass.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Json {
    #[serde(rename = "type")]
    kind: String,
    // welcome
    session_id: String,
    node_id: String,
    server_time: i64,
    heartbeat_interval_ms: u32,
    heartbeat_timeout_ms: u32,
    // message, sendAck
    message_id: String,
    chat_id: String,
    seq: u64,
    sender_id: String,
    sender_device_id: String,
    client_msg_id: String,
    content: String,
    attributes: HashMap<String, String>,
    created_at: i64,
    duplicate: bool,
    // errors
    code: String,
    message: String,
    frame: String,
    retry_after_ms: u32,
    // receipt, typing, presence
    user_id: String,
    device_id: String,
    started: bool,
    devices_online: u32,
    // chat
    user_ids: Vec<String>,
    // syncComplete, pong
    replayed: u64,
    nonce: u64,
    // The rest (ciphertext, chat details…) is not needed here: serde skips unknown fields.
}

/// A server JSON frame as the protobuf frame it stands for (the fields the load generator
/// reads; enums that only count are left at their defaults).
pub fn from_json(text: &str) -> Result<ServerFrame, String> {
    let j: Json = serde_json::from_str(text).map_err(|e| format!("{e}: {text:.200}"))?;
    let frame = match j.kind.as_str() {
        "welcome" => Frame::Welcome(Welcome {
            session_id: j.session_id,
            node_id: j.node_id,
            server_time: j.server_time,
            heartbeat_interval_ms: j.heartbeat_interval_ms,
            heartbeat_timeout_ms: j.heartbeat_timeout_ms,
        }),
        "message" => Frame::Message(MessageEvent::new(message(j))),
        "sendAck" => Frame::SendAck(SendAck {
            client_msg_id: j.client_msg_id.clone(),
            duplicate: j.duplicate,
            message: Some(message(j)),
        }),
        "sendError" => Frame::SendError(SendError {
            client_msg_id: j.client_msg_id,
            code: code_of(&j.code),
            message: j.message,
            retry_after_ms: j.retry_after_ms,
        }),
        "receipt" => Frame::Receipt(ReceiptEvent {
            receipt: Some(Receipt {
                chat_id: j.chat_id,
                user_id: j.user_id,
                device_id: j.device_id,
                seq: j.seq,
                ..Default::default()
            }),
        }),
        "typing" => Frame::Typing(TypingEvent {
            chat_id: j.chat_id,
            user_id: j.sender_id,
            device_id: j.sender_device_id,
            state: if j.started {
                TypingState::Started
            } else {
                TypingState::Stopped
            } as i32,
            ..Default::default()
        }),
        "presence" => Frame::Presence(PresenceEvent {
            presence: Some(Presence {
                user_id: j.user_id,
                devices_online: j.devices_online,
                ..Default::default()
            }),
        }),
        "chat" => Frame::Chat(ChatEvent {
            user_ids: j.user_ids,
            ..Default::default()
        }),
        "syncComplete" => Frame::SyncComplete(SyncComplete {
            replayed: j.replayed,
        }),
        "pong" => Frame::Pong(Pong {
            nonce: j.nonce,
            server_time: j.server_time,
        }),
        "error" => Frame::Error(ErrorFrame {
            code: code_of(&j.code),
            message: j.message,
            frame: j.frame,
            chat_id: j.chat_id,
        }),
        other => return Err(format!("unknown server frame type {other:?}")),
    };
    Ok(ServerFrame { frame: Some(frame) })
}

fn message(j: Json) -> Message {
    Message {
        message_id: j.message_id,
        chat_id: j.chat_id,
        seq: j.seq,
        sender_user_id: j.sender_id,
        sender_device_id: j.sender_device_id,
        client_msg_id: j.client_msg_id,
        content: Some(Content {
            text: j.content,
            ciphertext: Vec::new(),
            attributes: j.attributes,
        }),
        ..Default::default()
    }
}

/// A gRPC code name (as the error frames spell it) as its number; 2 (UNKNOWN) if unknown.
fn code_of(name: &str) -> i32 {
    (0..=16)
        .find(|&c| crate::stats::code_name(c) == name)
        .unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn sends_are_written_as_message_frames_with_their_attributes() {
        let f = crate::client::send_frame("c1".into(), "chat".into(), 42, "hi");
        let v: Value = serde_json::from_str(&to_json(&f, "tok").unwrap()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["clientMsgId"], "c1");
        assert_eq!(v["content"]["attributes"]["t"], "42");
    }

    #[test]
    fn acks_and_errors_read_back_as_their_protobuf_frames() {
        let ack = from_json(
            r#"{"type":"sendAck","duplicate":false,"messageId":"m","chatId":"c","seq":7,
                "senderId":"u","senderDeviceId":"d","clientMsgId":"k","content":"x",
                "attributes":{"t":"5"},"createdAt":1}"#,
        )
        .unwrap();
        let Some(Frame::SendAck(a)) = ack.frame else {
            panic!("not an ack: {ack:?}")
        };
        let m = a.message.unwrap();
        assert_eq!(
            (m.seq, m.content.unwrap().attributes["t"].as_str()),
            (7, "5")
        );
        let err = from_json(r#"{"type":"sendError","clientMsgId":"k","code":"RESOURCE_EXHAUSTED","message":"slow down","retryAfterMs":20}"#).unwrap();
        let Some(Frame::SendError(e)) = err.frame else {
            panic!("not a send error: {err:?}")
        };
        assert_eq!((e.code, e.retry_after_ms), (8, 20));
        assert!(from_json(r#"{"type":"nope"}"#).is_err());
    }
}
