//! Browsers' door: gRPC-web (HTTP/1.1, `application/grpc-web+proto`) on the same port as native
//! gRPC, CORS only for the configured origins, and the web client's files at `/` when
//! `--web-root` is set, with the probes and native gRPC untouched.

use chat_proto::v1::chat_service_client::ChatServiceClient;
use chat_tests::http::http_get;
use chat_tests::pb::{self, server_frame::Frame};
use chat_tests::*;
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{service::interceptor::InterceptedService, Code};
use tonic_web::{GrpcWebCall, GrpcWebClientLayer, GrpcWebClientService};

type Http1 = HyperClient<HttpConnector, GrpcWebCall<tonic::body::Body>>;
type WebClient = ChatServiceClient<InterceptedService<GrpcWebClientService<Http1>, Auth>>;

/// A ChatService client that speaks gRPC-web over HTTP/1.1 only, as a page does.
async fn web_client(server: &TestServer, user: &str, device: &str) -> WebClient {
    let token = server.token(user, device).await;
    let http: Http1 = HyperClient::builder(TokioExecutor::new()).build_http();
    let svc = tower::ServiceBuilder::new()
        .layer(GrpcWebClientLayer::new())
        .service(http);
    let origin = format!("http://{}", server.addr)
        .parse()
        .expect("server address is a URI");
    ChatServiceClient::with_origin(
        InterceptedService::new(svc, Auth::bearer(&token, device)),
        origin,
    )
}

/// Sends raw HTTP/1.1 (`head` without the final blank line) and returns the response head,
/// lower-cased.
async fn raw_head(server: &TestServer, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let req = format!(
        "{head}\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

fn preflight(path: &str, origin: &str) -> String {
    format!(
        "OPTIONS {path} HTTP/1.1\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,authorization,x-device-id"
    )
}

#[tokio::test]
async fn unary_calls_and_their_errors_work_over_grpc_web() {
    let server = TestServer::start().await;
    let mut alice = web_client(&server, "alice", "browser").await;
    let chat = alice
        .open_direct_chat(pb::OpenDirectChatRequest {
            peer_user_id: "bob".into(),
        })
        .await
        .expect("OpenDirectChat over gRPC-web")
        .into_inner();
    let sent = alice
        .send_message(pb::SendMessageRequest {
            client_msg_id: "w1".into(),
            chat_id: chat.chat_id.clone(),
            content: Some(text("hello from a page")),
        })
        .await
        .expect("SendMessage over gRPC-web")
        .into_inner();
    assert_eq!(sent.message.as_ref().map(|m| m.seq), Some(1));

    // The native client sees the same chat.
    let mut bob = server.client("bob", "phone").await;
    let history = bob
        .get_history(pb::GetHistoryRequest {
            chat_id: chat.chat_id.clone(),
            ..Default::default()
        })
        .await
        .expect("GetHistory")
        .into_inner();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(text_of(&history.messages[0]), "hello from a page");

    // Errors arrive as grpc-status and grpc-message in the gRPC-web trailers.
    let mut carol = web_client(&server, "carol", "browser").await;
    let err = carol
        .get_history(pb::GetHistoryRequest {
            chat_id: chat.chat_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("carol is not a member");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("not a member"), "{err:?}");
    let err = alice
        .send_message(pb::SendMessageRequest {
            client_msg_id: String::new(),
            chat_id: chat.chat_id.clone(),
            content: Some(text("x")),
        })
        .await
        .expect_err("an empty client_msg_id is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("client_msg_id"), "{err:?}");
}

async fn next(s: &mut tonic::Streaming<pb::ServerFrame>) -> pb::ServerFrame {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("a frame within 20 s")
        .expect("stream stays healthy")
        .expect("stream stays open")
}

/// A page's one stream: Subscribe over gRPC-web delivers each event as it happens, not when the
/// response ends.
#[tokio::test]
async fn subscribe_streams_events_incrementally_over_grpc_web() {
    let server = TestServer::start().await;
    let mut alice_native = server.client("alice", "phone").await;
    let chat = alice_native
        .open_direct_chat(pb::OpenDirectChatRequest {
            peer_user_id: "bob".into(),
        })
        .await
        .expect("OpenDirectChat")
        .into_inner();
    let mut bob = web_client(&server, "bob", "browser").await;
    let mut stream = bob
        .subscribe(pb::SubscribeRequest {
            device_id: "browser".into(),
            ..Default::default()
        })
        .await
        .expect("Subscribe over gRPC-web")
        .into_inner();
    let mut synced = false;
    while !synced {
        match next(&mut stream).await.frame {
            Some(Frame::SyncComplete(_)) => synced = true,
            Some(Frame::Welcome(_)) | Some(Frame::Chat(_)) | Some(Frame::Presence(_)) => {}
            other => panic!("unexpected frame before SyncComplete: {other:?}"),
        }
    }
    for i in 1..=3u64 {
        alice_native
            .send_message(pb::SendMessageRequest {
                client_msg_id: format!("m{i}"),
                chat_id: chat.chat_id.clone(),
                content: Some(text(&format!("message {i}"))),
            })
            .await
            .expect("SendMessage");
        // Each message is on the page before the next one is sent.
        loop {
            match next(&mut stream).await.frame {
                Some(Frame::Message(m)) => {
                    let m = m.message.expect("MessageEvent carries the message");
                    assert_eq!((m.seq, text_of(&m)), (i, format!("message {i}").as_str()));
                    break;
                }
                // On the full stack the chat's creation can reach the stream after the
                // replay finished (it travels through Kafka), and the keepalive may tick.
                Some(Frame::Typing(_))
                | Some(Frame::Presence(_))
                | Some(Frame::Receipt(_))
                | Some(Frame::Chat(_))
                | Some(Frame::Pong(_)) => {}
                other => panic!("unexpected frame: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let path = "/chat.v1.ChatService/ListChats";
    let server = TestServer::start_with(&[(
        "CHATD_CORS_ORIGINS",
        "http://app.example:8080, https://chat.example",
    )])
    .await;
    let ok = raw_head(&server, &preflight(path, "http://app.example:8080")).await;
    assert!(ok.starts_with("http/1.1 200"), "{ok}");
    assert!(
        ok.contains("access-control-allow-origin: http://app.example:8080"),
        "{ok}"
    );
    assert!(ok.contains("x-device-id"), "allowed headers: {ok}");
    // A real call from the page: the status headers are readable by its script.
    let call = raw_head(
        &server,
        &format!(
            "POST {path} HTTP/1.1\r\nOrigin: https://chat.example\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 0"
        ),
    )
    .await;
    assert!(
        call.contains("access-control-allow-origin: https://chat.example"),
        "{call}"
    );
    assert!(
        call.contains(
            "access-control-expose-headers: grpc-status,grpc-message,grpc-status-details-bin"
        ),
        "{call}"
    );
    let other = raw_head(&server, &preflight(path, "http://evil.example")).await;
    assert!(!other.contains("access-control-allow-origin"), "{other}");

    // The default is same origin only: no CORS headers for anyone.
    let plain = TestServer::start().await;
    let none = raw_head(&plain, &preflight(path, "http://app.example:8080")).await;
    assert!(!none.contains("access-control-allow-origin"), "{none}");
}

#[tokio::test]
async fn a_bad_origin_list_stops_the_server_with_its_name() {
    let out = TestServer::run_expecting_exit(
        ServerOptions::default().env("CHATD_CORS_ORIGINS", "app.example/path"),
    )
    .await;
    assert!(out.status.is_some_and(|s| !s.success()), "{out:?}");
    assert!(
        out.stderr.contains("CHATD_CORS_ORIGINS") && out.stderr.contains("not an origin"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn the_web_root_is_served_beside_grpc_and_the_probes() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("index.html"), "<title>chat</title>").expect("write");
    std::fs::create_dir(root.path().join("assets")).expect("mkdir");
    std::fs::write(root.path().join("assets/app.js"), "console.log(1)").expect("write");
    let root_arg = root.path().to_string_lossy().to_string();
    let server = TestServer::start_with(&[("CHATD_WEB_ROOT", root_arg.as_str())]).await;

    let index = http_get(server.addr, "/").await.expect("GET /");
    assert_eq!(index.status, 200);
    assert_eq!(index.body, b"<title>chat</title>");
    let js = http_get(server.addr, "/assets/app.js")
        .await
        .expect("GET js");
    assert_eq!(
        (js.status, js.body.as_slice()),
        (200, &b"console.log(1)"[..])
    );
    assert!(
        js.head.to_ascii_lowercase().contains("javascript"),
        "{}",
        js.head
    );
    let missing = http_get(server.addr, "/nope.html")
        .await
        .expect("GET missing");
    assert_eq!(missing.status, 404);
    let health = http_get(server.addr, "/healthz")
        .await
        .expect("GET /healthz");
    assert_eq!(health.status, 200);

    // Native gRPC is untouched, and an unknown method is still UNIMPLEMENTED, not a file.
    let mut client = server.client("alice", "phone").await;
    client
        .list_chats(pb::ListChatsRequest::default())
        .await
        .expect("ListChats over native gRPC");
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");
    let unknown = raw_head(
        &server,
        "POST /chat.v1.ChatService/NoSuchMethod HTTP/1.1\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 0",
    )
    .await;
    assert!(unknown.contains("grpc-status: 12"), "{unknown}");

    let bad = TestServer::run_expecting_exit(
        ServerOptions::default().env("CHATD_WEB_ROOT", "/no/such/directory"),
    )
    .await;
    assert!(
        bad.stderr.contains("CHATD_WEB_ROOT") && bad.stderr.contains("existing directory"),
        "{}",
        bad.stderr
    );
}

/// A Subscribe client cannot ping: the server sends `Pong{nonce: 0}` every heartbeat interval,
/// so a page can tell a silent stream from a dead one.
#[tokio::test]
async fn an_idle_subscribe_stream_hears_from_the_server_every_heartbeat() {
    let server = TestServer::start_with(&[("CHATD_HEARTBEAT_INTERVAL_MS", "300")]).await;
    let mut bob = web_client(&server, "bob", "browser").await;
    let mut stream = bob
        .subscribe(pb::SubscribeRequest {
            device_id: "browser".into(),
            ..Default::default()
        })
        .await
        .expect("Subscribe over gRPC-web")
        .into_inner();
    let mut interval = 0;
    let mut pongs = Vec::new();
    while pongs.len() < 3 {
        match next(&mut stream).await.frame {
            Some(Frame::Welcome(w)) => interval = w.heartbeat_interval_ms,
            Some(Frame::Pong(p)) => {
                assert_eq!(p.nonce, 0, "an unsolicited Pong has nonce 0");
                assert!(p.server_time > 0);
                pongs.push(std::time::Instant::now());
            }
            Some(Frame::SyncComplete(_)) | Some(Frame::Presence(_)) => {}
            other => panic!("unexpected frame: {other:?}"),
        }
    }
    assert_eq!(interval, 300);
    let spacing = pongs[2] - pongs[1];
    assert!(
        spacing >= Duration::from_millis(150),
        "pongs come about every heartbeat interval, not back to back: {spacing:?}"
    );
}
