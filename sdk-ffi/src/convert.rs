//! Every conversion between `chat_sdk`'s types and the FFI records, in one place.

use crate::types::*;
use chat_sdk as sdk;
use std::time::Duration;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<sdk::Code> for Code {
    fn from(c: sdk::Code) -> Self {
        use sdk::Code as C;
        match c {
            C::Ok => Code::Ok,
            C::Cancelled => Code::Cancelled,
            C::Unknown => Code::Unknown,
            C::InvalidArgument => Code::InvalidArgument,
            C::DeadlineExceeded => Code::DeadlineExceeded,
            C::NotFound => Code::NotFound,
            C::AlreadyExists => Code::AlreadyExists,
            C::PermissionDenied => Code::PermissionDenied,
            C::ResourceExhausted => Code::ResourceExhausted,
            C::FailedPrecondition => Code::FailedPrecondition,
            C::Aborted => Code::Aborted,
            C::OutOfRange => Code::OutOfRange,
            C::Unimplemented => Code::Unimplemented,
            C::Internal => Code::Internal,
            C::Unavailable => Code::Unavailable,
            C::DataLoss => Code::DataLoss,
            C::Unauthenticated => Code::Unauthenticated,
        }
    }
}

impl Code {
    /// The gRPC name (`NOT_FOUND`), as servers, logs and other SDKs spell it.
    pub fn name(self) -> &'static str {
        match self {
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
}

impl From<sdk::Content> for Content {
    fn from(c: sdk::Content) -> Self {
        Content {
            text: c.text,
            ciphertext: c.ciphertext,
            attributes: c.attributes,
        }
    }
}

impl From<Content> for sdk::Content {
    fn from(c: Content) -> Self {
        sdk::Content {
            text: c.text,
            ciphertext: c.ciphertext,
            attributes: c.attributes,
        }
    }
}

impl From<sdk::Message> for Message {
    fn from(m: sdk::Message) -> Self {
        Message {
            message_id: m.message_id,
            chat_id: m.chat_id,
            seq: m.seq,
            sender_user_id: m.sender_user_id,
            sender_device_id: m.sender_device_id,
            client_msg_id: m.client_msg_id,
            content: m.content.into(),
            created_at: m.created_at,
        }
    }
}

impl From<sdk::ChatKind> for ChatKind {
    fn from(k: sdk::ChatKind) -> Self {
        match k {
            sdk::ChatKind::Direct => ChatKind::Direct,
            sdk::ChatKind::Group => ChatKind::Group,
            sdk::ChatKind::Unspecified => ChatKind::Unspecified,
        }
    }
}

impl From<sdk::MemberRole> for MemberRole {
    fn from(r: sdk::MemberRole) -> Self {
        match r {
            sdk::MemberRole::Member => MemberRole::Member,
            sdk::MemberRole::Admin => MemberRole::Admin,
            sdk::MemberRole::Unspecified => MemberRole::Unspecified,
        }
    }
}

impl From<sdk::Member> for Member {
    fn from(m: sdk::Member) -> Self {
        Member {
            user_id: m.user_id,
            role: m.role.into(),
            joined_at: m.joined_at,
        }
    }
}

impl From<sdk::Chat> for Chat {
    fn from(c: sdk::Chat) -> Self {
        Chat {
            chat_id: c.chat_id,
            kind: c.kind.into(),
            title: c.title,
            members: c.members.into_iter().map(Member::from).collect(),
            last_seq: c.last_seq,
            created_at: c.created_at,
            read_seq: c.read_seq,
            unread_count: c.unread_count,
            last_message: c.last_message.map(Message::from),
            last_activity_at: c.last_activity_at,
            muted: c.muted,
            muted_until: c.muted_until,
        }
    }
}

impl From<sdk::PresenceStatus> for PresenceStatus {
    fn from(s: sdk::PresenceStatus) -> Self {
        match s {
            sdk::PresenceStatus::Online => PresenceStatus::Online,
            sdk::PresenceStatus::Offline => PresenceStatus::Offline,
            sdk::PresenceStatus::Unspecified => PresenceStatus::Unspecified,
        }
    }
}

impl From<sdk::Presence> for Presence {
    fn from(p: sdk::Presence) -> Self {
        Presence {
            user_id: p.user_id,
            status: p.status.into(),
            last_seen: p.last_seen,
            devices_online: p.devices_online,
        }
    }
}

impl From<sdk::ReceiptKind> for ReceiptKind {
    fn from(k: sdk::ReceiptKind) -> Self {
        match k {
            sdk::ReceiptKind::Delivered => ReceiptKind::Delivered,
            sdk::ReceiptKind::Read => ReceiptKind::Read,
            sdk::ReceiptKind::Unspecified => ReceiptKind::Unspecified,
        }
    }
}

impl From<sdk::Receipt> for Receipt {
    fn from(r: sdk::Receipt) -> Self {
        Receipt {
            chat_id: r.chat_id,
            user_id: r.user_id,
            device_id: r.device_id,
            kind: r.kind.into(),
            seq: r.seq,
            at: r.at,
        }
    }
}

impl From<sdk::TypingState> for TypingState {
    fn from(s: sdk::TypingState) -> Self {
        match s {
            sdk::TypingState::Started => TypingState::Started,
            sdk::TypingState::Stopped => TypingState::Stopped,
        }
    }
}

impl From<sdk::Typing> for Typing {
    fn from(t: sdk::Typing) -> Self {
        Typing {
            chat_id: t.chat_id,
            user_id: t.user_id,
            device_id: t.device_id,
            state: t.state.into(),
            expires_at: t.expires_at,
        }
    }
}

impl From<sdk::ChatChangeKind> for ChatChangeKind {
    fn from(k: sdk::ChatChangeKind) -> Self {
        match k {
            sdk::ChatChangeKind::Created => ChatChangeKind::Created,
            sdk::ChatChangeKind::MemberAdded => ChatChangeKind::MemberAdded,
            sdk::ChatChangeKind::MemberRemoved => ChatChangeKind::MemberRemoved,
            sdk::ChatChangeKind::Updated => ChatChangeKind::Updated,
            sdk::ChatChangeKind::Unspecified => ChatChangeKind::Unspecified,
        }
    }
}

impl From<sdk::ChatChange> for ChatChange {
    fn from(c: sdk::ChatChange) -> Self {
        ChatChange {
            kind: c.kind.into(),
            chat: c.chat.map(Chat::from),
            user_ids: c.user_ids,
        }
    }
}

impl From<PushProvider> for sdk::PushProvider {
    fn from(p: PushProvider) -> Self {
        match p {
            PushProvider::Fcm => sdk::PushProvider::Fcm,
            PushProvider::Apns => sdk::PushProvider::Apns,
            PushProvider::WebPush => sdk::PushProvider::WebPush,
            PushProvider::Webhook => sdk::PushProvider::Webhook,
        }
    }
}

impl From<sdk::ChatPage> for ChatPage {
    fn from(p: sdk::ChatPage) -> Self {
        ChatPage {
            chats: p.chats.into_iter().map(Chat::from).collect(),
            next_page_token: p.next_page_token,
        }
    }
}

impl From<sdk::HistoryPage> for HistoryPage {
    fn from(p: sdk::HistoryPage) -> Self {
        HistoryPage {
            messages: p.messages.into_iter().map(Message::from).collect(),
            next_page_token: p.next_page_token,
        }
    }
}

impl From<sdk::Sent> for Sent {
    fn from(s: sdk::Sent) -> Self {
        Sent {
            message: s.message.into(),
            duplicate: s.duplicate,
        }
    }
}

impl From<sdk::ConnectionState> for ConnectionState {
    fn from(s: sdk::ConnectionState) -> Self {
        match s {
            sdk::ConnectionState::Connecting => ConnectionState::Connecting,
            sdk::ConnectionState::Connected => ConnectionState::Connected,
            sdk::ConnectionState::Reconnecting => ConnectionState::Reconnecting,
            sdk::ConnectionState::Closed => ConnectionState::Closed,
        }
    }
}

impl From<ConnectionState> for sdk::ConnectionState {
    fn from(s: ConnectionState) -> Self {
        match s {
            ConnectionState::Connecting => sdk::ConnectionState::Connecting,
            ConnectionState::Connected => sdk::ConnectionState::Connected,
            ConnectionState::Reconnecting => sdk::ConnectionState::Reconnecting,
            ConnectionState::Closed => sdk::ConnectionState::Closed,
        }
    }
}

impl From<sdk::ConnectionStatus> for ConnectionStatus {
    fn from(s: sdk::ConnectionStatus) -> Self {
        ConnectionStatus {
            state: s.state.into(),
            attempt: s.attempt,
            retry_in_ms: s.retry_in.map(ms),
            error: s.error.map(|e| ConnectionError {
                code: e.code.into(),
                message: e.message,
            }),
            replayed: s.replayed,
        }
    }
}

impl From<sdk::SendOutcome> for SendOutcome {
    fn from(o: sdk::SendOutcome) -> Self {
        match o {
            sdk::SendOutcome::Sent { message, duplicate } => SendOutcome::Sent {
                message: message.into(),
                duplicate,
            },
            sdk::SendOutcome::Failed { code, reason } => SendOutcome::Failed {
                code: code.into(),
                reason,
            },
        }
    }
}

impl From<sdk::SendResult> for SendResult {
    fn from(r: sdk::SendResult) -> Self {
        SendResult {
            client_msg_id: r.client_msg_id,
            chat_id: r.chat_id,
            outcome: r.outcome.into(),
        }
    }
}

impl From<sdk::ServerError> for ServerError {
    fn from(e: sdk::ServerError) -> Self {
        ServerError {
            frame: e.frame,
            code: e.code.into(),
            message: e.message,
            chat_id: e.chat_id,
        }
    }
}

impl From<sdk::OutgoingMessage> for OutgoingMessage {
    fn from(m: sdk::OutgoingMessage) -> Self {
        OutgoingMessage {
            client_msg_id: m.client_msg_id,
            chat_id: m.chat_id,
            content: m.content.into(),
            queued_at: m.queued_at,
            failure: m.failure.map(|(code, reason)| SendFailure {
                code: sdk::Code::from_i32(code).into(),
                reason,
            }),
        }
    }
}

impl From<sdk::StatsSnapshot> for StatsSnapshot {
    fn from(s: sdk::StatsSnapshot) -> Self {
        StatsSnapshot {
            connects: s.connects,
            disconnects: s.disconnects,
            messages_received: s.messages_received,
            duplicates_dropped: s.duplicates_dropped,
            gaps_filled: s.gaps_filled,
            messages_from_history: s.messages_from_history,
            sends_acked: s.sends_acked,
            sends_failed: s.sends_failed,
            send_retries: s.send_retries,
        }
    }
}

impl From<sdk::Event> for Event {
    fn from(e: sdk::Event) -> Self {
        match e {
            sdk::Event::Message(m) => Event::Message { message: m.into() },
            sdk::Event::SendResult(r) => Event::SendResult { result: r.into() },
            sdk::Event::Receipt(r) => Event::Receipt { receipt: r.into() },
            sdk::Event::Typing(t) => Event::Typing { typing: t.into() },
            sdk::Event::Presence(p) => Event::Presence { presence: p.into() },
            sdk::Event::ChatChanged(c) => Event::ChatChanged { change: c.into() },
            sdk::Event::Connection(s) => Event::Connection { status: s.into() },
            sdk::Event::ServerError(e) => Event::ServerError { error: e.into() },
        }
    }
}

/// The SDK's config with every override the app set. Durations of 0 and other bad values are
/// left for the SDK's own validation, which names the setting.
impl From<ClientConfig> for sdk::ClientConfig {
    fn from(c: ClientConfig) -> Self {
        let mut cfg = sdk::ClientConfig::new(c.endpoint, c.token, c.device_id);
        cfg.tls_ca_pem = c.tls_ca_pem;
        let millis = Duration::from_millis;
        if let Some(d) = c.data_dir {
            cfg = cfg.with_data_dir(d);
        }
        if let Some(v) = c.client_version {
            cfg.client_version = v;
        }
        if let Some(v) = c.connect_timeout_ms {
            cfg.connect_timeout = millis(v);
        }
        if let Some(v) = c.keepalive_interval_ms {
            cfg.keepalive_interval = millis(v);
        }
        if let Some(v) = c.keepalive_timeout_ms {
            cfg.keepalive_timeout = millis(v);
        }
        if let Some(v) = c.reconnect_initial_ms {
            cfg.reconnect.initial = millis(v);
        }
        if let Some(v) = c.reconnect_max_ms {
            cfg.reconnect.max = millis(v);
        }
        if let Some(v) = c.reconnect_multiplier {
            cfg.reconnect.multiplier = v;
        }
        if let Some(v) = c.reconnect_jitter {
            cfg.reconnect.jitter = v;
        }
        if let Some(v) = c.send_window {
            cfg.send_window = v as usize;
        }
        if let Some(v) = c.send_window_per_chat {
            cfg.send_window_per_chat = v as usize;
        }
        if let Some(v) = c.ack_delay_ms {
            cfg.ack_delay = millis(v);
        }
        if let Some(v) = c.event_buffer {
            cfg.event_buffer = v as usize;
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ChatError;

    #[test]
    fn every_grpc_code_keeps_its_number_and_name() {
        for n in 0..=16 {
            let c = Code::from(sdk::Code::from_i32(n));
            assert_eq!(c as i32, n, "{c:?}");
        }
        assert_eq!(Code::from(sdk::Code::NotFound).name(), "NOT_FOUND");
        assert_eq!(Code::from(sdk::Code::from_i32(99)), Code::Unknown);
    }

    #[test]
    fn sdk_errors_keep_code_detail_and_retry_after() {
        let e = ChatError::from(sdk::SdkError::Status {
            code: sdk::Code::ResourceExhausted,
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(250)),
        });
        assert_eq!(
            e,
            ChatError::Server {
                code: Code::ResourceExhausted,
                detail: "slow down".into(),
                retry_after_ms: Some(250),
            }
        );
        assert_eq!(e.to_string(), "RESOURCE_EXHAUSTED: slow down");
        match ChatError::from(sdk::SdkError::EventsTaken) {
            ChatError::EventsTaken { code, .. } => assert_eq!(code, Code::FailedPrecondition),
            other => panic!("{other:?}"),
        }
        match ChatError::from(sdk::SdkError::Config("endpoint".into())) {
            ChatError::Config { code, detail } => {
                assert_eq!(code, Code::InvalidArgument);
                assert_eq!(detail, "endpoint");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_overrides_reach_the_sdk_and_the_rest_keeps_its_defaults() {
        let base = ClientConfig {
            endpoint: "http://127.0.0.1:1".into(),
            token: "t".into(),
            device_id: "phone".into(),
            data_dir: None,
            client_version: None,
            connect_timeout_ms: None,
            keepalive_interval_ms: None,
            keepalive_timeout_ms: None,
            reconnect_initial_ms: None,
            reconnect_max_ms: None,
            reconnect_multiplier: None,
            reconnect_jitter: None,
            send_window: None,
            send_window_per_chat: None,
            ack_delay_ms: None,
            event_buffer: None,
            tls_ca_pem: None,
        };
        let d = sdk::ClientConfig::from(base.clone());
        let want = sdk::ClientConfig::new("http://127.0.0.1:1", "t", "phone");
        assert_eq!(format!("{d:?}"), format!("{want:?}"));

        let c = sdk::ClientConfig::from(ClientConfig {
            data_dir: Some("/tmp/x".into()),
            reconnect_initial_ms: Some(200),
            reconnect_max_ms: Some(1500),
            reconnect_jitter: Some(0.0),
            send_window_per_chat: Some(4),
            ack_delay_ms: Some(5),
            event_buffer: Some(7),
            ..base.clone()
        });
        assert_eq!(c.data_dir.as_deref(), Some(std::path::Path::new("/tmp/x")));
        assert_eq!(c.reconnect.initial, Duration::from_millis(200));
        assert_eq!(c.reconnect.max, Duration::from_millis(1500));
        assert_eq!(c.reconnect.jitter, 0.0);
        assert_eq!(c.reconnect.multiplier, want.reconnect.multiplier);
        assert_eq!((c.send_window_per_chat, c.event_buffer), (4, 7));
        assert_eq!(c.ack_delay, Duration::from_millis(5));

        let pem = "-----BEGIN CERTIFICATE-----\n…";
        let c = sdk::ClientConfig::from(ClientConfig {
            endpoint: "https://chat.example.com".into(),
            tls_ca_pem: Some(pem.into()),
            ..base
        });
        assert_eq!(c.tls_ca_pem.as_deref(), Some(pem));
    }

    #[test]
    fn a_failed_queued_send_keeps_its_code() {
        let m = OutgoingMessage::from(sdk::OutgoingMessage {
            client_msg_id: "k".into(),
            chat_id: "c".into(),
            content: sdk::Content::text("hi"),
            queued_at: 1,
            failure: Some((7, "not a member".into())),
        });
        assert_eq!(
            m.failure,
            Some(SendFailure {
                code: Code::PermissionDenied,
                reason: "not a member".into()
            })
        );
        assert_eq!(m.content.text, "hi");
    }
}
