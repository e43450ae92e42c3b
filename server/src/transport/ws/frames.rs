//! The WebSocket's JSON frames ⇄ session terms, as `convert.rs` is for protobuf. Client frames
//! are read field by field from a JSON object, so every refusal names the field it is about
//! (serde's derive would say "invalid type: integer" without saying where); server frames are
//! serde types. `docs/websocket.md` describes every frame; keep the two in step.

use crate::domain::{messaging::SendRequest, model as d};
use crate::session::{Command, Hello, Output};
use crate::Error;
use axum::extract::ws::Utf8Bytes;
use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use tonic::Code;

/// The client frame types, in the order the docs list them (for "expected one of").
const CLIENT_TYPES: &str = "connect, message, typing, read, ack, ping, watchPresence";
/// How much of an unknown `type` an error repeats back.
const ECHO_CHARS: usize = 64;

/// A decoded client frame: the opening `connect` (whose token only the transport reads), or a
/// command for the session.
#[derive(Debug)]
pub enum Inbound {
    Connect { token: String, hello: Hello },
    Command(Command),
}

/// A client frame the transport refuses before the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The refused frame's `type`, when it had a known one.
    pub frame: Option<&'static str>,
    pub error: Error,
    /// A refused `message` frame's key, so the client can fail that send rather than wait.
    pub client_msg_id: Option<String>,
}

impl Refusal {
    pub fn new(error: Error) -> Self {
        Refusal {
            frame: None,
            error,
            client_msg_id: None,
        }
    }
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Inbound, Refusal> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new(Error::invalid("frame", format!("is not valid JSON: {e}"))))?;
    let Value::Object(obj) = value else {
        return Err(Refusal::new(Error::invalid(
            "frame",
            "must be a JSON object with a \"type\" field",
        )));
    };
    let kind = match obj.get("type") {
        None | Some(Value::Null) => {
            return Err(Refusal::new(Error::invalid("type", "is required")));
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(Refusal::new(Error::invalid("type", "must be a string"))),
    };
    let f = Fields(&obj);
    let command = |c: Result<Command, Error>| c.map(Inbound::Command);
    let decoded = match kind {
        "connect" => connect(&f),
        "message" => command(message(&f).map(Command::Send)),
        "typing" => command(typing(&f)),
        "read" => command(read(&f)),
        "ack" => command(ack(&f)),
        "ping" => command(ping(&f)),
        "watchPresence" => command(watch_presence(&f)),
        other => {
            let shown: String = other.chars().take(ECHO_CHARS).collect();
            return Err(Refusal::new(Error::invalid(
                "type",
                format!("unknown frame type {shown:?}; expected one of {CLIENT_TYPES}"),
            )));
        }
    };
    let frame = frame_name(kind);
    decoded.map_err(|error| Refusal {
        frame,
        client_msg_id: (frame == Some("message"))
            .then(|| f.opt_str("clientMsgId").ok().flatten())
            .flatten(),
        error,
    })
}

/// The static name of a known client frame type.
fn frame_name(kind: &str) -> Option<&'static str> {
    [
        "connect",
        "message",
        "typing",
        "read",
        "ack",
        "ping",
        "watchPresence",
    ]
    .into_iter()
    .find(|k| *k == kind)
}

fn connect(f: &Fields) -> Result<Inbound, Error> {
    // `userId` (the product brief's shape) is ignored: the token decides who the client is.
    let token = f.str("token")?;
    let hello = Hello {
        device_id: f.str("deviceId")?,
        delivered_seq: f.positions("positions")?,
        client_version: f.opt_str("clientVersion")?.unwrap_or_default(),
    };
    Ok(Inbound::Connect { token, hello })
}

fn message(f: &Fields) -> Result<SendRequest, Error> {
    // `senderId` (the product brief's shape) is ignored: the token decides who sends.
    Ok(SendRequest {
        client_msg_id: f.str("clientMsgId")?,
        chat_id: f.str("chatId")?,
        content: content(f)?,
    })
}

/// `content` as a string (the text) or an object (text, ciphertext, attributes), or the same
/// three fields flat on the frame. None of them: no content, which the domain refuses by name.
fn content(f: &Fields) -> Result<Option<d::Content>, Error> {
    let flat = ["text", "ciphertext", "attributes"]
        .iter()
        .any(|k| f.present(k));
    match f.0.get("content") {
        None | Some(Value::Null) if !flat => Ok(None),
        None | Some(Value::Null) => Ok(Some(d::Content {
            text: f.opt_str("text")?.unwrap_or_default(),
            ciphertext: f.opt_base64("ciphertext")?,
            attributes: f.opt_string_map("attributes")?,
        })),
        Some(_) if flat => Err(Error::invalid(
            "content",
            "give either content or text/ciphertext/attributes, not both",
        )),
        Some(Value::String(text)) => Ok(Some(d::Content {
            text: text.clone(),
            ..Default::default()
        })),
        Some(Value::Object(obj)) => {
            let c = Fields(obj);
            Ok(Some(d::Content {
                text: c.opt_str_as("text", "content.text")?.unwrap_or_default(),
                ciphertext: c.opt_base64_as("ciphertext", "content.ciphertext")?,
                attributes: c.opt_string_map_as("attributes", "content.attributes")?,
            }))
        }
        Some(_) => Err(Error::invalid(
            "content",
            "must be a string (the text) or an object with text, ciphertext and attributes",
        )),
    }
}

fn typing(f: &Fields) -> Result<Command, Error> {
    // The product brief's typing frame has no state: a typing frame means "typing now".
    Ok(Command::Typing {
        chat_id: f.str("chatId")?,
        started: Some(f.opt_bool("started")?.unwrap_or(true)),
    })
}

fn read(f: &Fields) -> Result<Command, Error> {
    Ok(Command::Read {
        chat_id: f.str("chatId")?,
        seq: f.u64("seq")?,
    })
}

fn ack(f: &Fields) -> Result<Command, Error> {
    Ok(Command::Ack {
        chat_id: f.str("chatId")?,
        seq: f.u64("seq")?,
    })
}

fn ping(f: &Fields) -> Result<Command, Error> {
    Ok(Command::Ping {
        nonce: f.opt_u64("nonce")?.unwrap_or(0),
    })
}

fn watch_presence(f: &Fields) -> Result<Command, Error> {
    Ok(Command::WatchPresence {
        user_ids: f.string_list("userIds")?,
    })
}

/// Typed reads of one frame's fields; each error names its field. A `null` reads as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn present(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn str(&self, name: &'static str) -> Result<String, Error> {
        self.opt_str(name)?
            .ok_or_else(|| Error::invalid(name, "is required"))
    }

    fn opt_str(&self, name: &'static str) -> Result<Option<String>, Error> {
        self.opt_str_as(name, name)
    }

    fn opt_str_as(&self, name: &str, field: &'static str) -> Result<Option<String>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Error::invalid(field, "must be a string")),
        }
    }

    fn u64(&self, name: &'static str) -> Result<u64, Error> {
        self.opt_u64(name)?
            .ok_or_else(|| Error::invalid(name, "is required"))
    }

    fn opt_u64(&self, name: &'static str) -> Result<Option<u64>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Error::invalid(name, "must be a non-negative integer")),
        }
    }

    fn opt_bool(&self, name: &'static str) -> Result<Option<bool>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Error::invalid(name, "must be true or false")),
        }
    }

    fn opt_base64(&self, name: &'static str) -> Result<Vec<u8>, Error> {
        self.opt_base64_as(name, name)
    }

    fn opt_base64_as(&self, name: &str, field: &'static str) -> Result<Vec<u8>, Error> {
        match self.opt_str_as(name, field)? {
            None => Ok(Vec::new()),
            Some(s) => BASE64
                .decode(s.as_bytes())
                .map_err(|_| Error::invalid(field, "must be base64 (standard alphabet, padded)")),
        }
    }

    fn opt_string_map(&self, name: &'static str) -> Result<BTreeMap<String, String>, Error> {
        self.opt_string_map_as(name, name)
    }

    fn opt_string_map_as(
        &self,
        name: &str,
        field: &'static str,
    ) -> Result<BTreeMap<String, String>, Error> {
        let bad = || Error::invalid(field, "must be an object of string values");
        match self.get(name) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(obj)) => obj
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(bad()),
                })
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    fn positions(&self, name: &'static str) -> Result<HashMap<String, u64>, Error> {
        let bad = || {
            Error::invalid(
                name,
                "must be an object mapping chat ids to non-negative integer seqs",
            )
        };
        match self.get(name) {
            None => Ok(HashMap::new()),
            Some(Value::Object(obj)) => obj
                .iter()
                .map(|(k, v)| v.as_u64().map(|seq| (k.clone(), seq)).ok_or_else(bad))
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    fn string_list(&self, name: &'static str) -> Result<Vec<String>, Error> {
        let bad = || Error::invalid(name, "must be an array of strings");
        match self.get(name) {
            None => Err(Error::invalid(name, "is required")),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            Some(_) => Err(bad()),
        }
    }
}

// ------------------------------------------------------------------------ server frames

/// A server frame as JSON: `{"type": "...", ...}` with camelCase fields, mirroring the
/// `ServerFrame` oneof of the proto in the product brief's flat shape.
#[derive(Debug, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerFrame<'a> {
    Welcome {
        user_id: &'a str,
        device_id: &'a str,
        session_id: String,
        node_id: String,
        server_time: i64,
        heartbeat_interval_ms: u32,
        heartbeat_timeout_ms: u32,
    },
    Message(MessageJson<'a>),
    SendAck {
        duplicate: bool,
        #[serde(flatten)]
        message: MessageJson<'a>,
    },
    SendError {
        client_msg_id: String,
        #[serde(flatten)]
        error: ErrorJson,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u32>,
    },
    Receipt {
        chat_id: &'a str,
        user_id: &'a str,
        /// Empty for a receipt that speaks for the user as a whole.
        device_id: &'a str,
        kind: &'static str,
        seq: u64,
        at: i64,
    },
    Typing {
        chat_id: &'a str,
        sender_id: &'a str,
        sender_device_id: &'a str,
        started: bool,
        expires_at: i64,
    },
    Presence {
        user_id: &'a str,
        status: &'static str,
        /// `null` while online or never seen.
        last_seen: Option<i64>,
        devices_online: u32,
    },
    Chat {
        kind: &'static str,
        chat: ChatJson<'a>,
        user_ids: &'a [String],
    },
    SyncComplete {
        replayed: u64,
    },
    Pong {
        nonce: u64,
        server_time: i64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        frame: Option<&'static str>,
        #[serde(flatten)]
        error: ErrorJson,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
}

/// A stored message; the fields of `message` frames and of `sendAck`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageJson<'a> {
    message_id: &'a str,
    chat_id: &'a str,
    seq: u64,
    sender_id: &'a str,
    sender_device_id: &'a str,
    client_msg_id: &'a str,
    /// The text; empty for a ciphertext-only message.
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: &'a BTreeMap<String, String>,
    created_at: i64,
}

impl<'a> MessageJson<'a> {
    fn of(m: &'a d::Message) -> Self {
        let c = &m.content;
        MessageJson {
            message_id: &m.message_id,
            chat_id: &m.chat_id,
            seq: m.seq,
            sender_id: &m.sender_user_id,
            sender_device_id: &m.sender_device_id,
            client_msg_id: m.visible_client_msg_id(),
            content: &c.text,
            ciphertext: (!c.ciphertext.is_empty()).then(|| BASE64.encode(&c.ciphertext)),
            attributes: &c.attributes,
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatJson<'a> {
    chat_id: &'a str,
    kind: &'static str,
    title: &'a str,
    members: Vec<MemberJson<'a>>,
    last_seq: u64,
    created_at: i64,
    last_activity_at: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberJson<'a> {
    user_id: &'a str,
    role: &'static str,
    joined_at: i64,
}

impl<'a> ChatJson<'a> {
    fn of(c: &'a d::Chat) -> Self {
        ChatJson {
            chat_id: &c.chat_id,
            kind: match c.kind {
                d::ChatKind::Direct => "direct",
                d::ChatKind::Group => "group",
            },
            title: &c.title,
            members: c
                .members
                .iter()
                .map(|m| MemberJson {
                    user_id: &m.user_id,
                    role: match m.role {
                        d::Role::Member => "member",
                        d::Role::Admin => "admin",
                    },
                    joined_at: m.joined_at,
                })
                .collect(),
            last_seq: c.last_seq,
            created_at: c.created_at,
            last_activity_at: c.last_activity_at,
        }
    }
}

/// What every error says: the status code by name, the message, and the field it is about.
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ErrorJson {
    /// `e` for a client, counted in the errors metric. An `InvalidArgument` names its field in
    /// camelCase, as the frames spell it (the domain names fields as the proto does).
    pub fn of(e: &Error) -> Self {
        let code = crate::transport::status::counted(e);
        match e {
            Error::InvalidArgument { field, reason } => {
                let field = camel_case(field);
                ErrorJson {
                    code: code_name(code),
                    message: format!("invalid {field}: {reason}"),
                    field: Some(field),
                }
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                ErrorJson {
                    code: code_name(code),
                    message: e.to_string(),
                    field: None,
                }
            }
            _ => ErrorJson {
                code: code_name(code),
                message: e.to_string(),
                field: None,
            },
        }
    }

    /// Names `field` (e.g. `token` for a refused token, which the error itself does not).
    pub fn with_field(mut self, field: &str) -> Self {
        self.field.get_or_insert_with(|| field.to_string());
        self
    }
}

/// `chat_id` → `chatId`; names without `_` stay as they are.
fn camel_case(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for ch in field.chars() {
        match ch {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// The gRPC status name, as the error frames spell codes.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The client frame type a session's `FrameError` names (the session speaks the proto's
/// oneof names).
fn client_frame_type(oneof: &str) -> Option<&'static str> {
    match oneof {
        "hello" => Some("connect"),
        "send" => Some("message"),
        "typing" => Some("typing"),
        "read" => Some("read"),
        "ack" => Some("ack"),
        "ping" => Some("ping"),
        "watch_presence" => Some("watchPresence"),
        _ => None,
    }
}

/// Who the socket speaks for, for the `welcome` frame.
pub struct Peer<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
}

/// A session output as JSON text. `End` is not a frame (the socket loop closes with it) and
/// gives `None`.
pub fn encode(o: &Output, peer: &Peer) -> Option<Result<Utf8Bytes, Error>> {
    if let Output::Event(d::Event::Message(m)) = o {
        // Every recipient gets the same text: encoded once, shared by reference.
        let json = m.wire.json_or_try_init(|| {
            to_json(&ServerFrame::Message(MessageJson::of(m))).map(bytes::Bytes::from)
        });
        return Some(json.and_then(|j| Utf8Bytes::try_from(j).map_err(Error::internal)));
    }
    let frame = match o {
        Output::Welcome(w) => ServerFrame::Welcome {
            user_id: peer.user_id,
            device_id: peer.device_id,
            session_id: w.session_id.clone(),
            node_id: w.node_id.clone(),
            server_time: crate::clock::now_ms(),
            heartbeat_interval_ms: w.heartbeat_interval_ms,
            heartbeat_timeout_ms: w.heartbeat_timeout_ms,
        },
        Output::Event(e) => event(e),
        Output::SendAck { message, duplicate } => ServerFrame::SendAck {
            duplicate: *duplicate,
            message: MessageJson::of(message),
        },
        Output::SendError(r) => ServerFrame::SendError {
            client_msg_id: r.client_msg_id.clone(),
            error: ErrorJson::of(&r.error),
            retry_after_ms: match r.error {
                Error::RateLimited { retry_after_ms } => Some(retry_after_ms),
                _ => None,
            },
        },
        Output::FrameError(r) => ServerFrame::Error {
            frame: client_frame_type(r.frame),
            error: ErrorJson::of(&r.error),
            chat_id: (!r.chat_id.is_empty()).then_some(r.chat_id.as_str()),
            client_msg_id: None,
        },
        Output::SyncComplete { replayed } => ServerFrame::SyncComplete {
            replayed: *replayed,
        },
        Output::Pong { nonce, server_time } => ServerFrame::Pong {
            nonce: *nonce,
            server_time: *server_time,
        },
        Output::End(_) => return None,
    };
    Some(to_json(&frame).map(Utf8Bytes::from))
}

/// The `error` frame for a refusal by the transport itself.
pub fn refusal(r: &Refusal, field: Option<&str>) -> Result<String, Error> {
    let mut error = ErrorJson::of(&r.error);
    if let Some(field) = field {
        error = error.with_field(field);
    }
    to_json(&ServerFrame::Error {
        frame: r.frame,
        error,
        chat_id: None,
        client_msg_id: r.client_msg_id.clone(),
    })
}

fn to_json(frame: &ServerFrame) -> Result<String, Error> {
    // Only strings, integers and maps with string keys: serializing cannot fail, but a
    // failure would be a bug to report, not a reason to panic the socket task.
    serde_json::to_string(frame).map_err(Error::internal)
}

fn event(e: &d::Event) -> ServerFrame<'_> {
    match e {
        d::Event::Message(m) => ServerFrame::Message(MessageJson::of(m)),
        d::Event::Chat(c) => ServerFrame::Chat {
            kind: match c.kind {
                d::ChatChangeKind::Created => "created",
                d::ChatChangeKind::MemberAdded => "memberAdded",
                d::ChatChangeKind::MemberRemoved => "memberRemoved",
            },
            chat: ChatJson::of(&c.chat),
            user_ids: &c.user_ids,
        },
        d::Event::Receipt(r) => ServerFrame::Receipt {
            chat_id: &r.chat_id,
            user_id: &r.user_id,
            device_id: &r.device_id,
            kind: match r.kind {
                d::ReceiptKind::Delivered => "delivered",
                d::ReceiptKind::Read => "read",
            },
            seq: r.seq,
            at: r.at,
        },
        d::Event::Typing(t) => ServerFrame::Typing {
            chat_id: &t.chat_id,
            sender_id: &t.user_id,
            sender_device_id: &t.device_id,
            started: t.started,
            expires_at: t.expires_at,
        },
        d::Event::Presence(p) => ServerFrame::Presence {
            user_id: &p.user_id,
            status: match p.status {
                d::PresenceStatus::Online => "online",
                d::PresenceStatus::Offline => "offline",
            },
            last_seen: (p.last_seen != 0).then_some(p.last_seen),
            devices_online: p.devices_online,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn refused(text: &str) -> Refusal {
        match decode(text) {
            Err(r) => r,
            Ok(ok) => panic!("{text} decoded to {ok:?}"),
        }
    }

    fn field_of(r: &Refusal) -> &'static str {
        match r.error {
            Error::InvalidArgument { field, .. } => field,
            ref other => panic!("not an InvalidArgument: {other:?}"),
        }
    }

    #[test]
    fn connect_reads_token_device_and_positions() {
        let text = r#"{"type":"connect","token":"t","deviceId":"web","userId":"mallory",
                       "positions":{"c1":4},"clientVersion":"v"}"#;
        match decode(text) {
            Ok(Inbound::Connect { token, hello }) => {
                assert_eq!((token.as_str(), hello.device_id.as_str()), ("t", "web"));
                assert_eq!(hello.delivered_seq.get("c1"), Some(&4));
                assert_eq!(hello.client_version, "v");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn message_content_in_every_shape() {
        let content = |text: &str| match decode(text) {
            Ok(Inbound::Command(Command::Send(s))) => s.content,
            other => panic!("{other:?}"),
        };
        let plain = content(r#"{"type":"message","clientMsgId":"k","chatId":"c","content":"hi"}"#);
        assert_eq!(plain.map(|c| c.text), Some("hi".to_string()));
        let nested = content(
            r#"{"type":"message","clientMsgId":"k","chatId":"c",
                "content":{"ciphertext":"AAE=","attributes":{"a":"b"}}}"#,
        )
        .unwrap_or_default();
        assert_eq!(nested.ciphertext, vec![0, 1]);
        assert_eq!(nested.attributes.get("a").map(String::as_str), Some("b"));
        let flat = content(r#"{"type":"message","clientMsgId":"k","chatId":"c","text":"t"}"#);
        assert_eq!(flat.map(|c| c.text), Some("t".to_string()));
        assert_eq!(
            content(r#"{"type":"message","clientMsgId":"k","chatId":"c"}"#),
            None
        );
    }

    #[test]
    fn refusals_name_the_field_and_the_frame() {
        for (text, frame, field) in [
            ("nope", None, "frame"),
            ("[]", None, "frame"),
            (r#"{"chatId":"c"}"#, None, "type"),
            (r#"{"type":1}"#, None, "type"),
            (r#"{"type":"fly"}"#, None, "type"),
            (r#"{"type":"ack","chatId":"c"}"#, Some("ack"), "seq"),
            (
                r#"{"type":"ack","chatId":"c","seq":-1}"#,
                Some("ack"),
                "seq",
            ),
            (
                r#"{"type":"read","chatId":3,"seq":1}"#,
                Some("read"),
                "chatId",
            ),
            (
                r#"{"type":"typing","chatId":"c","started":1}"#,
                Some("typing"),
                "started",
            ),
            (
                r#"{"type":"connect","deviceId":"d"}"#,
                Some("connect"),
                "token",
            ),
            (
                r#"{"type":"connect","token":"t","positions":{"c":"x"},"deviceId":"d"}"#,
                Some("connect"),
                "positions",
            ),
            (
                r#"{"type":"watchPresence","userIds":[1]}"#,
                Some("watchPresence"),
                "userIds",
            ),
            (
                r#"{"type":"message","clientMsgId":"k","chatId":"c","content":{"text":5}}"#,
                Some("message"),
                "content.text",
            ),
            (
                r#"{"type":"message","clientMsgId":"k","chatId":"c","ciphertext":"%%"}"#,
                Some("message"),
                "ciphertext",
            ),
        ] {
            let r = refused(text);
            assert_eq!((r.frame, field_of(&r)), (frame, field), "{text}");
        }
        let r = refused(r#"{"type":"message","clientMsgId":"k7","chatId":null,"content":"x"}"#);
        assert_eq!(r.client_msg_id.as_deref(), Some("k7"));
    }

    #[test]
    fn errors_speak_camel_case() {
        let e = ErrorJson::of(&Error::invalid("client_msg_id", "is required"));
        assert_eq!(e.field.as_deref(), Some("clientMsgId"));
        assert_eq!(e.message, "invalid clientMsgId: is required");
        assert_eq!(e.code, "INVALID_ARGUMENT");
        let e = ErrorJson::of(&Error::Internal("SELECT secrets".into()));
        assert!(!e.message.contains("SELECT"));
    }

    /// alice's "hi" from her phone, seq `seq`, in chat "c".
    fn hi(seq: u64) -> Arc<d::Message> {
        Arc::new(d::Message {
            message_id: "m".into(),
            chat_id: "c".into(),
            seq,
            sender_user_id: "alice".into(),
            sender_device_id: "phone".into(),
            client_msg_id: "k".into(),
            content: d::Content {
                text: "hi".into(),
                ..Default::default()
            },
            created_at: 9,
            wire: Default::default(),
        })
    }

    #[test]
    fn messages_encode_flat_with_the_sender() {
        let m = hi(3);
        let peer = Peer {
            user_id: "bob",
            device_id: "web",
        };
        let out = Output::SendAck {
            message: m.clone(),
            duplicate: true,
        };
        let json = encode(&out, &peer).and_then(Result::ok).unwrap_or_default();
        let v: Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"type": "sendAck", "duplicate": true, "messageId": "m",
                "chatId": "c", "seq": 3, "senderId": "alice", "senderDeviceId": "phone",
                "clientMsgId": "k", "content": "hi", "createdAt": 9})
        );
        assert!(encode(
            &Output::End(Box::new(Error::Unavailable("x".into()))),
            &peer
        )
        .is_none());
    }

    #[test]
    fn a_message_event_is_encoded_once_for_every_recipient() {
        let m = hi(1);
        let out = Output::Event(d::Event::Message(m));
        let text = |user_id| {
            let peer = Peer {
                user_id,
                device_id: "web",
            };
            encode(&out, &peer).and_then(Result::ok).unwrap_or_default()
        };
        let (bob, carol) = (text("bob"), text("carol"));
        let v: Value = serde_json::from_str(&bob).unwrap_or_default();
        assert_eq!(
            (v["type"].as_str(), v["seq"].as_u64()),
            (Some("message"), Some(1))
        );
        // The second recipient shares the first one's bytes.
        assert_eq!(bob.as_ptr(), carol.as_ptr());
    }
}
