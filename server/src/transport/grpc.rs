//! `chat.v1.ChatService` over gRPC. Each handler authenticates, decodes, makes one domain call
//! and encodes the result; streams hand off to a [`session`](crate::session) task.

use super::{convert, status::from_stream_status};
use crate::auth::{Authenticator, Caller};
use crate::clock::now_ms;
use crate::domain::model::ReceiptKind;
use crate::domain::{
    chats::Chats,
    ids,
    messaging::{Messaging, SendRequest},
    push_tokens::PushTokens,
};
use crate::queue;
use crate::session::{self, Outlet, Output};
use crate::Error;
use chat_proto::v1::{self as pb, chat_service_server::ChatService};
use futures_util::{Stream, StreamExt};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

/// Frames waiting between a session task and the HTTP/2 stream; small, since the real
/// buffering is the session's event queue.
const OUT_QUEUE: usize = 32;

/// The request's `authorization` header, if any; one that is not ASCII is refused.
pub(super) fn authorization<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    match req.metadata().get("authorization") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|v| Some(v.to_string()))
            .map_err(|_| Status::unauthenticated("authorization header is not ASCII")),
    }
}

pub struct ChatApi {
    auth: Authenticator,
    chats: Arc<Chats>,
    messaging: Arc<Messaging>,
    push_tokens: Arc<PushTokens>,
    sessions: Arc<session::Services>,
}

impl ChatApi {
    pub fn new(
        auth: Authenticator,
        chats: Arc<Chats>,
        messaging: Arc<Messaging>,
        push_tokens: Arc<PushTokens>,
        sessions: Arc<session::Services>,
    ) -> Self {
        ChatApi {
            auth,
            chats,
            messaging,
            push_tokens,
            sessions,
        }
    }

    /// Who calls, from the `authorization` header. The header is read at once: the future
    /// holds no reference to the request (a streaming request is not `Sync`).
    fn caller<T>(
        &self,
        req: &Request<T>,
    ) -> impl std::future::Future<Output = Result<Caller, Status>> + Send + '_ {
        let header = authorization(req);
        async move { Ok(self.auth.authenticate_header(header?.as_deref()).await?) }
    }

    fn session_outlet(&self) -> (Outlet, OutStream) {
        let (out, rx) = queue::channel(OUT_QUEUE);
        let (abort, abort_rx) = oneshot::channel();
        (
            Outlet { out, abort },
            OutStream {
                rx,
                abort: Some(abort_rx),
                done: false,
            },
        )
    }
}

/// The `x-device-id` header, validated, if present.
fn device_header<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    let Some(v) = req.metadata().get("x-device-id") else {
        return Ok(None);
    };
    let id = v
        .to_str()
        .map_err(|_| Error::invalid("x-device-id", "is not ASCII"))?
        .to_string();
    ids::check_device_id(&id).map_err(|_| {
        Error::invalid("x-device-id", "must be 1..=64 characters of [A-Za-z0-9._-]")
    })?;
    Ok(Some(id))
}

fn require_device<T>(req: &Request<T>) -> Result<String, Status> {
    device_header(req)?
        .ok_or_else(|| Error::invalid("x-device-id", "header is required for this call").into())
}

/// A session's frames as the response stream: queued outputs in order, but an abort from the
/// session ends the stream at once with its status.
pub struct OutStream {
    rx: queue::Receiver<Output>,
    abort: Option<oneshot::Receiver<crate::Error>>,
    done: bool,
}

impl Stream for OutStream {
    type Item = Result<pb::ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(abort) = self.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(super::status::status(&e))));
                }
                Poll::Ready(Err(_)) => self.abort = None, // the session ended without aborting
                Poll::Pending => {}
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(o)) => {
                let item = convert::output(o);
                self.done = item.is_err();
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

#[tonic::async_trait]
impl ChatService for ChatApi {
    type ConnectStream = OutStream;
    type SubscribeStream = OutStream;

    async fn connect(
        &self,
        req: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<Response<OutStream>, Status> {
        let caller = self.caller(&req).await?;
        let device = device_header(&req)?;
        let inbound = req
            .into_inner()
            .map(|r| r.map(convert::command).map_err(|s| from_stream_status(&s)));
        let (outlet, stream) = self.session_outlet();
        tokio::spawn(session::run_connect(
            self.sessions.clone(),
            caller.user_id,
            device,
            Box::pin(inbound),
            outlet,
        ));
        Ok(Response::new(stream))
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<OutStream>, Status> {
        let caller = self.caller(&req).await?;
        let device = device_header(&req)?;
        let r = req.into_inner();
        if let Some(d) = device.filter(|d| *d != r.device_id) {
            return Err(Error::invalid(
                "device_id",
                format!("request names {:?} but x-device-id is {d:?}", r.device_id),
            )
            .into());
        }
        ids::check_device_id(&r.device_id)?;
        let hello = convert::hello(pb::Hello {
            device_id: r.device_id,
            delivered_seq: r.delivered_seq,
            client_version: r.client_version,
        });
        let (outlet, stream) = self.session_outlet();
        tokio::spawn(session::run_subscribe(
            self.sessions.clone(),
            caller.user_id,
            hello,
            outlet,
        ));
        Ok(Response::new(stream))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = self.caller(&req).await?;
        let device = device_header(&req)?.unwrap_or_default();
        let r = req.into_inner();
        let send = SendRequest {
            client_msg_id: r.client_msg_id,
            chat_id: r.chat_id,
            content: r.content.map(convert::content_from),
        };
        let a = self
            .messaging
            .send(&caller.user_id, &device, send, now_ms())
            .await?;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(convert::message(&a.message)),
            duplicate: a.duplicate,
        }))
    }

    async fn get_history(
        &self,
        req: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let (messages, next) = self
            .messaging
            .history(
                &caller.user_id,
                &r.chat_id,
                r.page_size,
                &r.page_token,
                r.after_seq,
            )
            .await?;
        Ok(Response::new(pb::GetHistoryResponse {
            messages: messages.iter().map(convert::message).collect(),
            next_page_token: next,
        }))
    }

    async fn ack_delivered(
        &self,
        req: Request<pb::AckDeliveredRequest>,
    ) -> Result<Response<pb::AckDeliveredResponse>, Status> {
        let caller = self.caller(&req).await?;
        let device = require_device(&req)?;
        let r = req.into_inner();
        let kind = ReceiptKind::Delivered;
        self.messaging
            .move_cursor(&caller.user_id, &device, &r.chat_id, r.seq, kind, now_ms())
            .await?;
        Ok(Response::new(pb::AckDeliveredResponse {}))
    }

    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let caller = self.caller(&req).await?;
        let device = require_device(&req)?;
        let r = req.into_inner();
        let kind = ReceiptKind::Read;
        self.messaging
            .move_cursor(&caller.user_id, &device, &r.chat_id, r.seq, kind, now_ms())
            .await?;
        Ok(Response::new(pb::MarkReadResponse {}))
    }

    async fn get_receipts(
        &self,
        req: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let receipts = self
            .messaging
            .receipts(&caller.user_id, &r.chat_id, r.seq)
            .await?;
        Ok(Response::new(pb::GetReceiptsResponse {
            receipts: receipts.iter().map(convert::receipt).collect(),
        }))
    }

    async fn set_typing(
        &self,
        req: Request<pb::SetTypingRequest>,
    ) -> Result<Response<pb::SetTypingResponse>, Status> {
        let caller = self.caller(&req).await?;
        let device = device_header(&req)?.unwrap_or_default();
        let r = req.into_inner();
        let started = convert::typing_state(r.state)
            .ok_or_else(|| Error::invalid("state", "must be STARTED or STOPPED"))?;
        self.sessions
            .typing
            .set(&caller.user_id, &device, &r.chat_id, started, now_ms())
            .await?;
        Ok(Response::new(pb::SetTypingResponse {}))
    }

    async fn open_direct_chat(
        &self,
        req: Request<pb::OpenDirectChatRequest>,
    ) -> Result<Response<pb::Chat>, Status> {
        let caller = self.caller(&req).await?;
        let view = self
            .chats
            .open_direct(&caller.user_id, &req.into_inner().peer_user_id, now_ms())
            .await?;
        Ok(Response::new(convert::chat_view(&view)))
    }

    async fn create_group(
        &self,
        req: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::Chat>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let view = self
            .chats
            .create_group(&caller.user_id, &r.title, &r.member_user_ids, now_ms())
            .await?;
        Ok(Response::new(convert::chat_view(&view)))
    }

    async fn get_chat(
        &self,
        req: Request<pb::GetChatRequest>,
    ) -> Result<Response<pb::Chat>, Status> {
        let caller = self.caller(&req).await?;
        let view = self
            .chats
            .get(&caller.user_id, &req.into_inner().chat_id, now_ms())
            .await?;
        Ok(Response::new(convert::chat_view(&view)))
    }

    async fn list_chats(
        &self,
        req: Request<pb::ListChatsRequest>,
    ) -> Result<Response<pb::ListChatsResponse>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let (views, next) = self
            .chats
            .list(&caller.user_id, r.page_size, &r.page_token, now_ms())
            .await?;
        Ok(Response::new(pb::ListChatsResponse {
            chats: views.iter().map(convert::chat_view).collect(),
            next_page_token: next,
        }))
    }

    async fn add_members(
        &self,
        req: Request<pb::AddMembersRequest>,
    ) -> Result<Response<pb::Chat>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let view = self
            .chats
            .add_members(&caller.user_id, &r.chat_id, &r.user_ids, now_ms())
            .await?;
        Ok(Response::new(convert::chat_view(&view)))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::Chat>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let chat = self
            .chats
            .remove_member(&caller.user_id, &r.chat_id, &r.user_id, now_ms())
            .await?;
        Ok(Response::new(convert::chat(&chat)))
    }

    async fn set_chat_muted(
        &self,
        req: Request<pb::SetChatMutedRequest>,
    ) -> Result<Response<pb::SetChatMutedResponse>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let mute = self
            .chats
            .set_muted(&caller.user_id, &r.chat_id, r.muted, r.until, now_ms())
            .await?;
        let (muted, until) = convert::mute(mute);
        Ok(Response::new(pb::SetChatMutedResponse { muted, until }))
    }

    async fn get_presence(
        &self,
        req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let list = self
            .sessions
            .presence
            .get(&caller.user_id, &r.user_ids)
            .await?;
        Ok(Response::new(pb::GetPresenceResponse {
            presences: list.iter().map(convert::presence).collect(),
        }))
    }

    async fn register_push_token(
        &self,
        req: Request<pb::RegisterPushTokenRequest>,
    ) -> Result<Response<pb::RegisterPushTokenResponse>, Status> {
        let caller = self.caller(&req).await?;
        let device = require_device(&req)?;
        let r = req.into_inner();
        self.push_tokens
            .register(
                &caller.user_id,
                &device,
                convert::push_provider(r.provider),
                &r.token,
                &r.app_id,
                now_ms(),
            )
            .await?;
        Ok(Response::new(pb::RegisterPushTokenResponse {}))
    }

    async fn unregister_push_token(
        &self,
        req: Request<pb::UnregisterPushTokenRequest>,
    ) -> Result<Response<pb::UnregisterPushTokenResponse>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        self.push_tokens
            .unregister(
                &caller.user_id,
                convert::push_provider(r.provider),
                &r.token,
            )
            .await?;
        Ok(Response::new(pb::UnregisterPushTokenResponse {}))
    }
}
