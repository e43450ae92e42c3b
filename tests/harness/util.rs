//! Small helpers shared by the test files: unary call shorthands, assertions, ids.

use crate::auth::Auth;
use chat_proto::v1::chat_service_client::ChatServiceClient;
use chat_proto::v1::{
    AddMembersRequest, Chat, Content, CreateGroupRequest, GetChatRequest, GetHistoryRequest,
    GetHistoryResponse, ListChatsRequest, ListChatsResponse, Message, OpenDirectChatRequest,
    RemoveMemberRequest, SendMessageRequest, SendMessageResponse,
};
use std::fmt::Debug;
use std::io::Read;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The client type every helper uses: a channel plus the auth interceptor.
pub type Client = ChatServiceClient<InterceptedService<Channel, Auth>>;
pub type AdminClient =
    chat_proto::v1::admin_service_client::AdminServiceClient<InterceptedService<Channel, Auth>>;

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A well-formed chat id (32 lowercase hex chars) that no server has issued.
pub fn unknown_chat_id() -> String {
    random_hex(16)
}

pub fn is_chat_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn text(t: &str) -> Content {
    Content {
        text: t.to_string(),
        ..Default::default()
    }
}

pub fn ciphertext(b: &[u8]) -> Content {
    Content {
        ciphertext: b.to_vec(),
        ..Default::default()
    }
}

pub fn text_of(m: &Message) -> &str {
    m.content.as_ref().map(|c| c.text.as_str()).unwrap_or("")
}

pub fn seqs(ms: &[Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

/// Assert that `r` failed with `code`; returns the status.
#[track_caller]
pub fn assert_code<T: Debug>(r: Result<T, Status>, code: Code, ctx: &str) -> Status {
    match r {
        Ok(v) => panic!("{ctx}: expected {code:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{ctx}: wrong status code (message: {:?})",
                s.message()
            );
            s
        }
    }
}

/// Assert that an error message names `field`.
#[track_caller]
pub fn assert_mentions(message: &str, field: &str, ctx: &str) {
    assert!(
        message.to_lowercase().contains(&field.to_lowercase()),
        "{ctx}: error message {message:?} should name the field {field:?}"
    );
}

// ------------------------------------------------------------------ unary shorthands

pub async fn open_direct(c: &mut Client, peer: &str) -> Chat {
    c.open_direct_chat(OpenDirectChatRequest {
        peer_user_id: peer.to_string(),
    })
    .await
    .unwrap_or_else(|s| panic!("OpenDirectChat({peer}): {s:?}"))
    .into_inner()
}

pub async fn create_group(c: &mut Client, title: &str, members: &[&str]) -> Chat {
    try_create_group(c, title, members)
        .await
        .unwrap_or_else(|s| panic!("CreateGroup({title}, {members:?}): {s:?}"))
}

pub async fn try_create_group(
    c: &mut Client,
    title: &str,
    members: &[&str],
) -> Result<Chat, Status> {
    c.create_group(CreateGroupRequest {
        title: title.to_string(),
        member_user_ids: members.iter().map(|s| s.to_string()).collect(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn add_members(c: &mut Client, chat_id: &str, users: &[&str]) -> Result<Chat, Status> {
    c.add_members(AddMembersRequest {
        chat_id: chat_id.to_string(),
        user_ids: users.iter().map(|s| s.to_string()).collect(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn remove_member(c: &mut Client, chat_id: &str, user: &str) -> Result<Chat, Status> {
    c.remove_member(RemoveMemberRequest {
        chat_id: chat_id.to_string(),
        user_id: user.to_string(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn get_chat(c: &mut Client, chat_id: &str) -> Result<Chat, Status> {
    c.get_chat(GetChatRequest {
        chat_id: chat_id.to_string(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn list_chats(
    c: &mut Client,
    page_size: u32,
    token: &str,
) -> Result<ListChatsResponse, Status> {
    c.list_chats(ListChatsRequest {
        page_size,
        page_token: token.to_string(),
    })
    .await
    .map(|r| r.into_inner())
}

/// All chats of the caller, following page tokens.
pub async fn list_all_chats(c: &mut Client, page_size: u32) -> Vec<Chat> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let page = list_chats(c, page_size, &token).await.expect("ListChats");
        out.extend(page.chats);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
    panic!("ListChats pagination does not terminate");
}

pub async fn send_unary(
    c: &mut Client,
    chat_id: &str,
    client_msg_id: &str,
    content: Option<Content>,
) -> Result<SendMessageResponse, Status> {
    c.send_message(SendMessageRequest {
        client_msg_id: client_msg_id.to_string(),
        chat_id: chat_id.to_string(),
        content,
    })
    .await
    .map(|r| r.into_inner())
}

/// Unary SendMessage of a text; returns the stored message (panics on error or duplicate).
pub async fn send_text(c: &mut Client, chat_id: &str, client_msg_id: &str, t: &str) -> Message {
    let r = send_unary(c, chat_id, client_msg_id, Some(text(t)))
        .await
        .unwrap_or_else(|s| panic!("SendMessage({chat_id}, {client_msg_id}): {s:?}"));
    assert!(
        !r.duplicate,
        "fresh SendMessage {client_msg_id} reported duplicate"
    );
    r.message.expect("SendMessageResponse.message")
}

/// Send `n` text messages `"{prefix}-{i}"` (client_msg_id the same), i = 1..=n. Returns them.
pub async fn send_many(c: &mut Client, chat_id: &str, prefix: &str, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        let id = format!("{prefix}-{i}");
        out.push(send_text(c, chat_id, &id, &id).await);
    }
    out
}

pub async fn history(
    c: &mut Client,
    chat_id: &str,
    page_size: u32,
    page_token: &str,
) -> Result<GetHistoryResponse, Status> {
    c.get_history(GetHistoryRequest {
        chat_id: chat_id.to_string(),
        page_size,
        page_token: page_token.to_string(),
        after_seq: 0,
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn history_after(
    c: &mut Client,
    chat_id: &str,
    after_seq: u64,
    page_size: u32,
) -> Result<GetHistoryResponse, Status> {
    c.get_history(GetHistoryRequest {
        chat_id: chat_id.to_string(),
        page_size,
        page_token: String::new(),
        after_seq,
    })
    .await
    .map(|r| r.into_inner())
}

/// The caller's whole visible history of a chat, oldest first (walks pages of 200).
pub async fn full_history(c: &mut Client, chat_id: &str) -> Vec<Message> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..100_000 {
        let page = history(c, chat_id, 200, &token)
            .await
            .unwrap_or_else(|s| panic!("GetHistory({chat_id}): {s:?}"));
        out.extend(page.messages);
        if page.next_page_token.is_empty() {
            out.reverse();
            return out;
        }
        token = page.next_page_token;
    }
    panic!("GetHistory pagination does not terminate");
}

/// Assert `ms` has seqs exactly `from..=to` in increasing order.
#[track_caller]
pub fn assert_seq_range(ms: &[Message], from: u64, to: u64, ctx: &str) {
    let got = seqs(ms);
    let want: Vec<u64> = if to >= from {
        (from..=to).collect()
    } else {
        vec![]
    };
    assert_eq!(got, want, "{ctx}: seqs");
}
