//! Abuse limits, end to end: new connections per remote address per second (gRPC, gRPC-web and
//! WebSocket), live sessions per user, chats created per hour and groups per user. Each refusal
//! is RESOURCE_EXHAUSTED (a WebSocket handshake: HTTP 429) with a message that names the limit
//! and its value, and is counted in `chatd_limited_total{limit}`.
//!
//! The harness starts every other server with generous limits (`GENEROUS_LIMITS`); these tests
//! set the one they exercise low.

use chat_proto::v1::chat_service_client::ChatServiceClient;
use chat_tests::http::http_get;
use chat_tests::*;
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite;
use tonic::{service::interceptor::InterceptedService, Code, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_web::{GrpcWebCall, GrpcWebClientLayer, GrpcWebClientService};

/// How many attempts a test makes to catch a refusal: each one admitted takes a token, so an
/// empty bucket is reached again within a couple, however slow the machine.
const ATTEMPTS: usize = 10;

/// `chatd_limited_total{limit="<limit>"}` as /metrics reports it now.
async fn limited_total(server: &TestServer, limit: &str) -> u64 {
    let r = http_get(server.addr, "/metrics")
        .await
        .expect("GET /metrics");
    let body = String::from_utf8_lossy(&r.body).to_string();
    let prefix = format!("chatd_limited_total{{limit=\"{limit}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in /metrics:\n{body}"))
        .trim()
        .parse()
        .expect("a count")
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, Status>,
    flag: &str,
    value: &str,
    ctx: &str,
) -> Status {
    let s = assert_code(r, Code::ResourceExhausted, ctx);
    let want = format!("the limit is {value} ({flag})");
    assert!(
        s.message().contains(&want),
        "{ctx}: {:?} should say {want:?}",
        s.message()
    );
    s
}

/// A client on a connection of its own, made now (not lazily).
async fn fresh_client(server: &TestServer, user: &str) -> (Client, tonic::transport::Channel) {
    let channel = server
        .endpoint()
        .connect()
        .await
        .expect("TCP and HTTP/2 handshake");
    let token = server.token(user, "phone").await;
    let client =
        ChatServiceClient::with_interceptor(channel.clone(), Auth::bearer(&token, "phone"));
    (client, channel)
}

type Http1 = HyperClient<HttpConnector, GrpcWebCall<tonic::body::Body>>;
type WebClient = ChatServiceClient<InterceptedService<GrpcWebClientService<Http1>, Auth>>;

/// A gRPC-web client over HTTP/1.1 with a connection pool of its own, as a page has.
async fn web_client(server: &TestServer, user: &str) -> WebClient {
    let token = server.token(user, "browser").await;
    let http: Http1 = HyperClient::builder(TokioExecutor::new()).build_http();
    let svc = tower::ServiceBuilder::new()
        .layer(GrpcWebClientLayer::new())
        .service(http);
    let origin = format!("http://{}", server.addr).parse().unwrap();
    ChatServiceClient::with_origin(
        InterceptedService::new(svc, Auth::bearer(&token, "browser")),
        origin,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_rate_are_refused_naming_the_limit() {
    const FLAG: &str = "--max-connections-per-ip-per-sec";
    // 1 per second, bursts of 2.
    let server = TestServer::start_with(&[("CHATD_MAX_CONNECTIONS_PER_IP_PER_SEC", "1")]).await;

    // gRPC: fresh connections in quick succession; the burst gets through, then calls on the
    // connections over the rate are refused.
    let mut results = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..5 {
        let (mut c, channel) = fresh_client(&server, "ann").await;
        results.push(list_chats(&mut c, 0, "").await.map(|_| ()));
        channels.push(channel);
    }
    assert!(
        results[..2].iter().all(|r| r.is_ok()),
        "the burst of 2 is let through: {results:?}"
    );
    let refused = results
        .iter()
        .position(|r| r.is_err())
        .unwrap_or_else(|| panic!("5 connections at once with a burst of 2: {results:?}"));
    let s = assert_refused(
        results[refused].clone(),
        FLAG,
        "1 per second",
        "a call on a connection over the rate",
    );
    assert!(s.message().contains("too many new connections"), "{s:?}");
    // Health checks are answered on such a connection too: probes share the address.
    let health = HealthClient::new(channels[refused].clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health on a connection over the rate")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    // gRPC-web: the same status, translated for the browser.
    let mut web_refusal = None;
    for _ in 0..ATTEMPTS {
        let mut web = web_client(&server, "ann").await;
        let r = web
            .list_chats(pb::ListChatsRequest::default())
            .await
            .map(|_| ());
        if let Err(s) = r {
            web_refusal = Some(s);
            break;
        }
    }
    let s = web_refusal.expect("a gRPC-web connection over the rate");
    assert_refused(Err::<(), _>(s), FLAG, "1 per second", "gRPC-web");

    // WebSocket: the handshake is answered 429 with the reason, and nothing is upgraded.
    let mut ws_refusal = None;
    for _ in 0..ATTEMPTS {
        match tokio_tungstenite::connect_async(websocket::ws_url(&server)).await {
            Ok(_) => continue,
            Err(tungstenite::Error::Http(response)) => {
                ws_refusal = Some(response);
                break;
            }
            Err(e) => panic!("WebSocket handshake: {e}"),
        }
    }
    let response = ws_refusal.expect("a WebSocket handshake over the rate");
    assert_eq!(response.status().as_u16(), 429, "{response:?}");
    if let Some(body) = response.body() {
        let body = String::from_utf8_lossy(body);
        assert!(
            body.contains("RESOURCE_EXHAUSTED") && body.contains(FLAG),
            "429 body: {body:?}"
        );
    }

    // The probes and /metrics are not refused (this GET is a new connection too).
    assert!(limited_total(&server, "connections_per_ip_per_sec").await >= 3);

    // After a second or two the bucket has refilled: connecting works again, on every door.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (mut c, _) = fresh_client(&server, "ann").await;
    list_chats(&mut c, 0, "")
        .await
        .expect("a new connection after the rate refilled");
    websocket::ws_connect(&server, "ann", "laptop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_per_user_limit_end_at_their_start() {
    const FLAG: &str = "--max-sessions-per-user";
    let server = TestServer::start_with(&[("CHATD_MAX_SESSIONS_PER_USER", "2")]).await;
    let phone = server.connect("ann", "phone").await;
    // Subscribe sessions count too; so do several sessions of one device.
    let mut sub = server.subscribe("ann", "phone", HashMap::new()).await;
    sub.sync().await;

    // A third Connect ends at its start.
    let mut third = server.open_session("ann", "laptop").await;
    third.hello().await;
    let s = third.expect_end().await;
    assert_refused(Err::<(), _>(s.clone()), FLAG, "2", "the third Connect");
    assert!(s.message().contains("too many sessions"), "{s:?}");
    // ... and so does a WebSocket: an error frame, then close 4008 (4000 + RESOURCE_EXHAUSTED).
    let mut ws = websocket::ws_open(&server, "ann", "tablet").await;
    let token = server.token("ann", "tablet").await;
    ws.send_connect(&token, HashMap::new()).await;
    let (frames, code, reason) = ws.expect_close().await;
    assert_eq!(code, 4008, "{frames:?} {reason}");
    let error = frames
        .iter()
        .find(|f| websocket::kind(f) == "error")
        .unwrap_or_else(|| panic!("an error frame before the close: {frames:?}"));
    assert_eq!(websocket::s(error, "code"), "RESOURCE_EXHAUSTED");
    assert!(websocket::s(error, "message").contains(FLAG), "{error}");

    // Other users are not affected; the two sessions in are.
    let bo = server.connect("bo", "phone").await;
    drop(bo);
    let mut phone = phone;
    phone.ping().await;
    assert_eq!(limited_total(&server, "sessions_per_user").await, 2);

    // Closing one lets the next in, once the server noticed the close.
    phone.close();
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let mut next = server.open_session("ann", "laptop").await;
        next.hello().await;
        match next.next_event(RECV_TIMEOUT).await {
            Some(session::Event::Frame(session::Frame::Welcome(_))) => break,
            Some(session::Event::End(s)) if s.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a session closed, but the next is still refused: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("the next session after a close: {other:?}"),
        }
    }
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_created_per_hour_are_limited_and_opening_an_existing_one_is_not_a_creation() {
    const FLAG: &str = "--max-chats-created-per-hour";
    let server = TestServer::start_with(&[("CHATD_MAX_CHATS_CREATED_PER_HOUR", "3")]).await;
    let mut ann = server.client("ann", "phone").await;
    let dm = open_direct(&mut ann, "bo").await;
    create_group(&mut ann, "one", &["cy"]).await;
    open_direct(&mut ann, "cy").await;
    // At the limit: opening an existing direct chat still works, on either side.
    assert_eq!(open_direct(&mut ann, "bo").await.chat_id, dm.chat_id);
    let mut bo = server.client("bo", "phone").await;
    assert_eq!(open_direct(&mut bo, "ann").await.chat_id, dm.chat_id);

    let s = assert_refused(
        try_create_group(&mut ann, "two", &["bo"]).await,
        FLAG,
        "3 per hour",
        "a fourth chat within the hour",
    );
    assert!(s.message().contains("too many chats created"), "{s:?}");
    let r = ann
        .open_direct_chat(pb::OpenDirectChatRequest {
            peer_user_id: "di".into(),
        })
        .await;
    assert_refused(r, FLAG, "3 per hour", "a new direct chat within the hour");
    // Per user: bo created nothing yet.
    open_direct(&mut bo, "di").await;
    create_group(&mut bo, "bo's", &[]).await;

    // The refusals created nothing.
    let chats = list_all_chats(&mut ann, 50).await;
    assert_eq!(chats.len(), 3, "{chats:?}");
    let mut di = server.client("di", "phone").await;
    assert_eq!(
        list_all_chats(&mut di, 50).await.len(),
        1,
        "only bo's chat with di"
    );
    assert_eq!(limited_total(&server, "chats_created_per_hour").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_joins_a_group_past_the_groups_limit_and_a_refused_call_changes_nothing() {
    const FLAG: &str = "--max-groups-per-user";
    let server = TestServer::start_with(&[("CHATD_MAX_GROUPS_PER_USER", "2")]).await;
    let mut ann = server.client("ann", "phone").await;
    let mut bo = server.client("bo", "phone").await;
    let g1 = create_group(&mut ann, "g1", &["bo"]).await;
    create_group(&mut bo, "g2", &[]).await;
    // Direct chats are not groups.
    open_direct(&mut bo, "cy").await;

    // bo is in 2 groups: a group with bo in it cannot be created, by anyone.
    let s = assert_refused(
        try_create_group(&mut ann, "g3", &["cy", "bo"]).await,
        FLAG,
        "2",
        "CreateGroup naming a user at the limit",
    );
    assert!(s.message().contains("user bo "), "names the user: {s:?}");
    assert_refused(
        try_create_group(&mut bo, "g3", &[]).await,
        FLAG,
        "2",
        "CreateGroup by a user at the limit",
    );
    let mut cy = server.client("cy", "phone").await;
    assert_eq!(
        list_all_chats(&mut cy, 50).await.len(),
        1,
        "no group was created"
    );

    // AddMembers that would take one of the users past it adds no one.
    let g3 = create_group(&mut ann, "g3", &["cy"]).await;
    let s = assert_refused(
        add_members(&mut ann, &g3.chat_id, &["di", "bo"]).await,
        FLAG,
        "2",
        "AddMembers with a user at the limit",
    );
    assert!(s.message().contains("user bo "), "names the user: {s:?}");
    let members: Vec<String> = get_chat(&mut ann, &g3.chat_id)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(members.len(), 2, "nobody was added: {members:?}");
    let mut di = server.client("di", "phone").await;
    assert!(list_all_chats(&mut di, 50).await.is_empty());

    // Naming a member again adds nothing, so is no new group for them.
    add_members(&mut ann, &g1.chat_id, &["bo"]).await.unwrap();
    add_members(&mut ann, &g3.chat_id, &["di"]).await.unwrap();
    // ann is in g1 and g3 now.
    assert_refused(
        try_create_group(&mut ann, "g4", &[]).await,
        FLAG,
        "2",
        "CreateGroup by ann at the limit",
    );
    assert_eq!(limited_total(&server, "groups_per_user").await, 4);
}
