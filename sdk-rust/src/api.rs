//! Unary calls: everything in the contract a client or a backend service calls one request at
//! a time. Every call carries the current token (replaceable at any time) and, when the
//! client is a device, `x-device-id`.

use crate::error::{Result, SdkError};
use crate::types::*;
use chat_proto::v1 as pb;
use chat_proto::v1::chat_service_client::ChatServiceClient;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Largest page the server serves.
pub const MAX_PAGE_SIZE: u32 = 200;

/// The headers every call carries, shared by all clones of one [`Api`] (and its [`crate::Client`]).
#[derive(Clone)]
pub(crate) struct Credentials {
    /// `Bearer <token>`, replaced by `set_token`.
    authorization: Arc<RwLock<AsciiMetadataValue>>,
    device_id: Option<AsciiMetadataValue>,
}

impl Credentials {
    pub(crate) fn new(token: &str, device_id: Option<&str>) -> Result<Self> {
        let device_id = device_id
            .map(|d| {
                AsciiMetadataValue::try_from(d)
                    .map_err(|_| SdkError::Config(format!("device_id {d:?} is not ASCII")))
            })
            .transpose()?;
        Ok(Credentials {
            authorization: Arc::new(RwLock::new(bearer(token)?)),
            device_id,
        })
    }

    pub(crate) fn set_token(&self, token: &str) -> Result<()> {
        let v = bearer(token)?;
        match self.authorization.write() {
            Ok(mut a) => *a = v,
            Err(poisoned) => *poisoned.into_inner() = v,
        }
        Ok(())
    }
}

fn bearer(token: &str) -> Result<AsciiMetadataValue> {
    let token = token.trim();
    if token.is_empty() {
        return Err(SdkError::InvalidArgument("token is empty".into()));
    }
    AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| SdkError::InvalidArgument("token has characters a header cannot carry".into()))
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let auth = match self.authorization.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        req.metadata_mut().insert("authorization", auth);
        if let Some(d) = &self.device_id {
            req.metadata_mut().insert("x-device-id", d.clone());
        }
        Ok(req)
    }
}

pub(crate) type Grpc = ChatServiceClient<InterceptedService<Channel, Credentials>>;

/// A lazily connecting channel to `endpoint` with HTTP/2 keepalive and no per-request deadline
/// (the Connect stream lives for hours; unary calls set their own). An `https://` endpoint is
/// reached over TLS (rustls with ring) trusting the public roots and `ca_pem`.
pub(crate) fn channel(
    endpoint: &str,
    ca_pem: Option<&str>,
    connect_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
) -> Result<Channel> {
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| SdkError::Config(format!("endpoint {endpoint:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive_interval)
        .keep_alive_timeout(keepalive_timeout)
        .keep_alive_while_idle(true);
    if endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(pem) = ca_pem {
            check_ca_pem(pem)?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| SdkError::Config(format!("TLS for {endpoint:?}: {e}")))?;
    }
    Ok(ep.connect_lazy())
}

/// tonic parses the CA only when it connects, where a bad one would look like a network
/// failure and be retried for ever: a PEM without a certificate is refused up front.
pub(crate) fn check_ca_pem(pem: &str) -> Result<()> {
    if pem.contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        Err(SdkError::Config(
            "tls_ca_pem holds no PEM CERTIFICATE block".into(),
        ))
    }
}

/// Unary calls on behalf of one user (and optionally one device). Cheap to clone.
#[derive(Clone)]
pub struct Api {
    grpc: Grpc,
    creds: Credentials,
    /// Deadline of each unary call.
    timeout: Duration,
}

impl Api {
    /// A client for `endpoint` (`http://host:port`, or `https://` trusting the public roots).
    /// `device_id` is needed by the calls that act for a device (`mark_read`,
    /// `ack_delivered`); a backend service may leave it out.
    pub fn new(endpoint: &str, token: &str, device_id: Option<&str>) -> Result<Api> {
        Api::with_tls_ca(endpoint, None, token, device_id)
    }

    /// [`Api::new`] for an `https://` endpoint whose certificate a private CA (`ca_pem`, PEM)
    /// issued; the public roots are trusted too.
    pub fn with_tls_ca(
        endpoint: &str,
        ca_pem: Option<&str>,
        token: &str,
        device_id: Option<&str>,
    ) -> Result<Api> {
        let ch = channel(
            endpoint,
            ca_pem,
            Duration::from_secs(20),
            Duration::from_secs(30),
            Duration::from_secs(10),
        )?;
        Ok(Api::on_channel(ch, Credentials::new(token, device_id)?))
    }

    /// Unary calls over a channel the caller built (its own connector, TLS, load balancing).
    pub fn with_channel(channel: Channel, token: &str, device_id: Option<&str>) -> Result<Api> {
        Ok(Api::on_channel(
            channel,
            Credentials::new(token, device_id)?,
        ))
    }

    pub(crate) fn on_channel(ch: Channel, creds: Credentials) -> Api {
        // The server's own limit is 4 × max_message_bytes + 64 KiB; a history page of large
        // messages needs more than tonic's 4 MiB default on the way in.
        let grpc = ChatServiceClient::with_interceptor(ch, creds.clone())
            .max_decoding_message_size(64 << 20);
        Api {
            grpc,
            creds,
            timeout: Duration::from_secs(30),
        }
    }

    pub(crate) fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }

    /// Use `token` for every later call (and the next Connect stream of a [`crate::Client`]).
    pub fn set_token(&self, token: &str) -> Result<()> {
        self.creds.set_token(token)
    }

    /// Deadline of each unary call (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    pub async fn open_direct_chat(&self, peer_user_id: &str) -> Result<Chat> {
        let r = self
            .grpc()
            .open_direct_chat(self.req(pb::OpenDirectChatRequest {
                peer_user_id: peer_user_id.to_string(),
            }))
            .await?;
        Ok(r.into_inner().into())
    }

    pub async fn create_group(&self, title: &str, member_user_ids: &[String]) -> Result<Chat> {
        let r = self
            .grpc()
            .create_group(self.req(pb::CreateGroupRequest {
                title: title.to_string(),
                member_user_ids: member_user_ids.to_vec(),
            }))
            .await?;
        Ok(r.into_inner().into())
    }

    pub async fn get_chat(&self, chat_id: &str) -> Result<Chat> {
        let r = self
            .grpc()
            .get_chat(self.req(pb::GetChatRequest {
                chat_id: chat_id.to_string(),
            }))
            .await?;
        Ok(r.into_inner().into())
    }

    /// Most recently active first; `page_token` empty for the first page.
    pub async fn list_chats(&self, page_size: u32, page_token: &str) -> Result<ChatPage> {
        let r = self
            .grpc()
            .list_chats(self.req(pb::ListChatsRequest {
                page_size,
                page_token: page_token.to_string(),
            }))
            .await?
            .into_inner();
        Ok(ChatPage {
            chats: r.chats.into_iter().map(Chat::from).collect(),
            next_page_token: r.next_page_token,
        })
    }

    /// Every chat of the caller, following the pages.
    pub async fn list_all_chats(&self) -> Result<Vec<Chat>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_chats(MAX_PAGE_SIZE, &token).await?;
            out.extend(page.chats);
            if page.next_page_token.is_empty() || page.next_page_token == token {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    pub async fn add_members(&self, chat_id: &str, user_ids: &[String]) -> Result<Chat> {
        let r = self
            .grpc()
            .add_members(self.req(pb::AddMembersRequest {
                chat_id: chat_id.to_string(),
                user_ids: user_ids.to_vec(),
            }))
            .await?;
        Ok(r.into_inner().into())
    }

    /// Remove `user_id` from a group (the caller itself: leave).
    pub async fn remove_member(&self, chat_id: &str, user_id: &str) -> Result<Chat> {
        let r = self
            .grpc()
            .remove_member(self.req(pb::RemoveMemberRequest {
                chat_id: chat_id.to_string(),
                user_id: user_id.to_string(),
            }))
            .await?;
        Ok(r.into_inner().into())
    }

    /// Holds back push notifications of `chat_id` from all the caller's devices, until
    /// `until` (unix ms, in the future) or, with `None`, until [`Api::unmute_chat`]. Muting
    /// again replaces the earlier mute. Messages, receipts and unread counts are unchanged.
    pub async fn mute_chat(&self, chat_id: &str, until: Option<i64>) -> Result<()> {
        // On the wire 0 means "until unmuted": a `Some(0)` must not turn into that.
        if until.is_some_and(|t| t <= 0) {
            return Err(SdkError::InvalidArgument(
                "until must be a unix time in ms (None: until unmuted)".into(),
            ));
        }
        self.set_chat_muted(chat_id, true, until.unwrap_or(0)).await
    }

    /// Ends the caller's mute of `chat_id` (succeeds when there was none).
    pub async fn unmute_chat(&self, chat_id: &str) -> Result<()> {
        self.set_chat_muted(chat_id, false, 0).await
    }

    async fn set_chat_muted(&self, chat_id: &str, muted: bool, until: i64) -> Result<()> {
        self.grpc()
            .set_chat_muted(self.req(pb::SetChatMutedRequest {
                chat_id: chat_id.to_string(),
                muted,
                until,
            }))
            .await?;
        Ok(())
    }

    /// Older messages, newest first; `page_token` empty to start at the newest.
    pub async fn get_history(
        &self,
        chat_id: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<HistoryPage> {
        self.history(pb::GetHistoryRequest {
            chat_id: chat_id.to_string(),
            page_size,
            page_token: page_token.to_string(),
            after_seq: 0,
        })
        .await
    }

    /// The messages after `after_seq`, oldest first (gap filling).
    pub async fn get_history_after(
        &self,
        chat_id: &str,
        after_seq: u64,
        page_size: u32,
    ) -> Result<HistoryPage> {
        if after_seq == 0 {
            return Err(SdkError::InvalidArgument(
                "after_seq must be at least 1 (0 reads newest first: use get_history)".into(),
            ));
        }
        self.history(pb::GetHistoryRequest {
            chat_id: chat_id.to_string(),
            page_size,
            page_token: String::new(),
            after_seq,
        })
        .await
    }

    async fn history(&self, req: pb::GetHistoryRequest) -> Result<HistoryPage> {
        let r = self.grpc().get_history(self.req(req)).await?.into_inner();
        Ok(HistoryPage {
            messages: r.messages.into_iter().map(Message::from).collect(),
            next_page_token: r.next_page_token,
        })
    }

    /// A send without a stream (backend services). Retrying with the same `client_msg_id`
    /// returns the original message with `duplicate` set.
    pub async fn send_message(
        &self,
        chat_id: &str,
        client_msg_id: &str,
        content: Content,
    ) -> Result<Sent> {
        let r = self
            .grpc()
            .send_message(self.req(pb::SendMessageRequest {
                client_msg_id: client_msg_id.to_string(),
                chat_id: chat_id.to_string(),
                content: Some(content.into()),
            }))
            .await?
            .into_inner();
        let message = r
            .message
            .ok_or_else(|| SdkError::Status {
                code: tonic::Code::Internal,
                message: "SendMessage answer without a message".into(),
                retry_after: None,
            })?
            .into();
        Ok(Sent {
            message,
            duplicate: r.duplicate,
        })
    }

    pub async fn ack_delivered(&self, chat_id: &str, seq: u64) -> Result<()> {
        self.grpc()
            .ack_delivered(self.req(pb::AckDeliveredRequest {
                chat_id: chat_id.to_string(),
                seq,
            }))
            .await?;
        Ok(())
    }

    pub async fn mark_read(&self, chat_id: &str, seq: u64) -> Result<()> {
        self.grpc()
            .mark_read(self.req(pb::MarkReadRequest {
                chat_id: chat_id.to_string(),
                seq,
            }))
            .await?;
        Ok(())
    }

    /// Receipts of the members who reached `seq` (per device, plus one READ per user).
    pub async fn get_receipts(&self, chat_id: &str, seq: u64) -> Result<Vec<Receipt>> {
        let r = self
            .grpc()
            .get_receipts(self.req(pb::GetReceiptsRequest {
                chat_id: chat_id.to_string(),
                seq,
            }))
            .await?
            .into_inner();
        Ok(r.receipts.into_iter().map(Receipt::from).collect())
    }

    pub async fn set_typing(&self, chat_id: &str, state: TypingState) -> Result<()> {
        self.grpc()
            .set_typing(self.req(pb::SetTypingRequest {
                chat_id: chat_id.to_string(),
                state: pb::TypingState::from(state) as i32,
            }))
            .await?;
        Ok(())
    }

    pub async fn get_presence(&self, user_ids: &[String]) -> Result<Vec<Presence>> {
        let r = self
            .grpc()
            .get_presence(self.req(pb::GetPresenceRequest {
                user_ids: user_ids.to_vec(),
            }))
            .await?
            .into_inner();
        Ok(r.presences.into_iter().map(Presence::from).collect())
    }

    /// Registers this device's push token (needs a device id); the server's default app.
    pub async fn register_push_token(&self, provider: PushProvider, token: &str) -> Result<()> {
        self.register_push_token_for_app(provider, token, "").await
    }

    /// Registers this device's push token for `app_id` (the APNs topic / bundle id, or the FCM
    /// or webhook app id). A device has one token per provider: a new one replaces the old.
    pub async fn register_push_token_for_app(
        &self,
        provider: PushProvider,
        token: &str,
        app_id: &str,
    ) -> Result<()> {
        self.grpc()
            .register_push_token(self.req(pb::RegisterPushTokenRequest {
                provider: pb::PushProvider::from(provider) as i32,
                token: token.to_string(),
                app_id: app_id.to_string(),
            }))
            .await?;
        Ok(())
    }

    /// Removes the caller's token; succeeds when there was none.
    pub async fn unregister_push_token(&self, provider: PushProvider, token: &str) -> Result<()> {
        self.grpc()
            .unregister_push_token(self.req(pb::UnregisterPushTokenRequest {
                provider: pb::PushProvider::from(provider) as i32,
                token: token.to_string(),
            }))
            .await?;
        Ok(())
    }
}

/// The `sub` claim of a JWT, read without checking the signature (the server checks it): the
/// app's own user id, to tell its messages from others'.
pub fn token_subject(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_of_a_token() {
        // {"alg":"HS256"} . {"sub":"alice","exp":1} . signature
        let t = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0.c2ln";
        assert_eq!(token_subject(t).as_deref(), Some("alice"));
        assert_eq!(token_subject("not-a-jwt"), None);
        assert_eq!(token_subject("a.!!!.c"), None);
        // {"exp":1}: no sub
        assert_eq!(token_subject("e30.eyJleHAiOjF9.x"), None);
    }

    #[test]
    fn bad_tokens_are_refused_before_sending() {
        assert!(Credentials::new("", None).is_err());
        assert!(Credentials::new("tok\nen", None).is_err());
        let c = Credentials::new("abc", Some("phone")).unwrap();
        assert!(c.set_token("   ").is_err());
        assert!(c.set_token("def").is_ok());
    }
}
