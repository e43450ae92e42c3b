//! Process lifecycle and operations: configuration (errors and precedence defaults < file < env
//! < flags), the `token` command, /healthz and /readyz, grpc.health.v1, reflection, SIGTERM,
//! persistence across graceful and crash restarts.

use chat_tests::auth::{decode_token, mint_token, now_secs};
use chat_tests::pb::MarkReadRequest;
use chat_tests::*;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

fn assert_failed_naming(out: &ExitOutput, name: &str, ctx: &str) {
    let status = out.status.unwrap_or_else(|| {
        panic!(
            "{ctx}: chatd kept running with a bad setting; stderr:\n{}",
            out.stderr
        )
    });
    assert!(
        !status.success(),
        "{ctx}: chatd must exit non-zero, got {status:?}; stderr:\n{}",
        out.stderr
    );
    let norm = |s: &str| s.to_lowercase().replace('-', "_");
    assert!(
        norm(&out.stderr).contains(&norm(name)),
        "{ctx}: stderr should name {name:?}:\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("chatd listening on"),
        "{ctx}: it must not start listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_environment_values_stop_the_server() {
    let cases = [
        ("CHATD_MAX_GROUP_SIZE", "abc"),
        ("CHATD_MAX_GROUP_SIZE", "0"),
        ("CHATD_MAX_GROUP_SIZE", "-5"),
        ("CHATD_MAX_MESSAGE_BYTES", "lots"),
        ("CHATD_RATE_LIMIT_PER_SEC", "fast"),
        ("CHATD_HEARTBEAT_INTERVAL_MS", "soon"),
        ("CHATD_SESSION_QUEUE", "many"),
    ];
    for (var, val) in cases {
        let out = TestServer::run_expecting_exit(ServerOptions::new().env(var, val)).await;
        assert_failed_naming(&out, var, &format!("{var}={val}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_file_and_flag_values_stop_the_server() {
    let out =
        TestServer::run_expecting_exit(ServerOptions::new().config("max_group_size = 0\n")).await;
    assert_failed_naming(&out, "max_group_size", "config max_group_size = 0");
    let out =
        TestServer::run_expecting_exit(ServerOptions::new().config("max_group_size = \"abc\"\n"))
            .await;
    assert_failed_naming(&out, "max_group_size", "config max_group_size = \"abc\"");
    let out =
        TestServer::run_expecting_exit(ServerOptions::new().arg("--max-group-size").arg("0")).await;
    assert_failed_naming(&out, "max_group_size", "--max-group-size 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_precedence_is_defaults_file_env_flags() {
    let file = "heartbeat_interval_ms = 1111\nheartbeat_timeout_ms = 60000\nmax_group_size = 2\n";

    // File over defaults.
    let server = TestServer::start_opts(ServerOptions::new().config(file)).await;
    let w = server.connect("alice", "phone").await.welcome.unwrap();
    assert_eq!(
        (w.heartbeat_interval_ms, w.heartbeat_timeout_ms),
        (1111, 60000),
        "values from the file"
    );
    let mut alice = server.client("alice", "phone").await;
    create_group(&mut alice, "two", &["bob"]).await;
    assert_code(
        try_create_group(&mut alice, "three", &["bob", "carol"]).await,
        Code::FailedPrecondition,
        "max_group_size = 2 from the file",
    );
    drop(server);

    // Env over file.
    let server = TestServer::start_opts(
        ServerOptions::new()
            .config(file)
            .env("CHATD_HEARTBEAT_INTERVAL_MS", "2222")
            .env("CHATD_MAX_GROUP_SIZE", "3"),
    )
    .await;
    let w = server.connect("alice", "phone").await.welcome.unwrap();
    assert_eq!(
        (w.heartbeat_interval_ms, w.heartbeat_timeout_ms),
        (2222, 60000),
        "env overrides the file key by key"
    );
    let mut alice = server.client("alice", "phone").await;
    create_group(&mut alice, "three", &["bob", "carol"]).await;
    drop(server);

    // Flags over env.
    let server = TestServer::start_opts(
        ServerOptions::new()
            .config(file)
            .env("CHATD_HEARTBEAT_INTERVAL_MS", "2222")
            .arg("--heartbeat-interval-ms")
            .arg("3333"),
    )
    .await;
    let w = server.connect("alice", "phone").await.welcome.unwrap();
    assert_eq!(w.heartbeat_interval_ms, 3333, "flag overrides env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_secret_from_config_file_and_env_precedence() {
    // Secret only in the file.
    let server = TestServer::start_opts(
        ServerOptions::new()
            .without_secret()
            .config("jwt_secret = \"file-secret-0123456789abcdef\"\n"),
    )
    .await;
    let mut c = server.client_with_auth(Auth::bearer(
        &mint_token("file-secret-0123456789abcdef", "alice"),
        "phone",
    ));
    list_chats(&mut c, 0, "")
        .await
        .expect("token signed with the file's jwt_secret");
    drop(server);

    // Env overrides the file.
    let opts = ServerOptions {
        jwt_secret: Some("env-secret-0123456789abcdef".into()),
        ..ServerOptions::new()
    }
    .config("jwt_secret = \"file-secret-0123456789abcdef\"\n");
    let server = TestServer::start_opts(opts).await;
    let mut c = server.client_with_auth(Auth::bearer(
        &mint_token("env-secret-0123456789abcdef", "alice"),
        "phone",
    ));
    list_chats(&mut c, 0, "")
        .await
        .expect("token signed with CHATD_JWT_SECRET");
    let mut c = server.client_with_auth(Auth::bearer(
        &mint_token("file-secret-0123456789abcdef", "alice"),
        "phone",
    ));
    assert_code(
        list_chats(&mut c, 0, "").await,
        Code::Unauthenticated,
        "the file secret is overridden by env",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_agrees_with_the_server_through_the_data_dir() {
    // No CHATD_JWT_SECRET: serve and token share the secret file in the data dir.
    let mut server = TestServer::start_opts(ServerOptions::new().without_secret()).await;
    let token = server.cli_token("alice", "phone", &[]).await;
    assert_eq!(
        token.split('.').count(),
        3,
        "a JWT has three parts: {token:?}"
    );
    let mut c = server.client_with_auth(Auth::bearer(&token, "phone"));
    let chat = open_direct(&mut c, "bob").await;
    assert!(
        chat.members.iter().any(|m| m.user_id == "alice"),
        "the token's subject is alice"
    );

    // A token minted before a restart keeps working after it (the secret file persists).
    server.restart().await;
    let mut c = server.client_with_auth(Auth::bearer(&token, "phone"));
    list_chats(&mut c, 0, "")
        .await
        .expect("token still valid after restart");

    let admin = server.cli_token("ops", "console", &["--admin"]).await;
    let mut c = server.client_with_auth(Auth::bearer(&admin, "console"));
    list_chats(&mut c, 0, "")
        .await
        .expect("--admin token is a valid token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_claims_and_ttl() {
    let server = TestServer::start().await;
    let secret = server.secret().unwrap().to_string();

    let t = server.cli_token("alice", "phone", &[]).await;
    let claims = decode_token(&secret, &t).unwrap_or_else(|e| {
        panic!("chatd token output is not an HS256 JWT with CHATD_JWT_SECRET: {e}")
    });
    assert_eq!(claims.sub, "alice");
    let now = now_secs();
    assert!(
        claims.iat.abs_diff(now) < 300,
        "iat {} is now ({now})",
        claims.iat
    );
    assert!(
        (claims.exp - claims.iat).abs_diff(24 * 3600) <= 5,
        "default ttl is 24h: iat {} exp {}",
        claims.iat,
        claims.exp
    );

    let t = server.cli_token("bob", "laptop", &["--ttl", "1h"]).await;
    let claims = decode_token(&secret, &t).unwrap();
    assert_eq!(claims.sub, "bob");
    assert!(
        (claims.exp - claims.iat).abs_diff(3600) <= 5,
        "--ttl 1h: iat {} exp {}",
        claims.iat,
        claims.exp
    );

    let mut c = server.client_with_auth(Auth::bearer(&t, "laptop"));
    list_chats(&mut c, 0, "")
        .await
        .expect("CLI token accepted by the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_over_http1() {
    let server = TestServer::start().await;
    for path in ["/healthz", "/readyz"] {
        let r = http::http_get(server.addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status, 200, "GET {path}: {}", r.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_service_reports_serving() {
    let server = TestServer::start().await;
    let token = server.token("probe", "probe").await;
    let mut health =
        HealthClient::with_interceptor(server.channel(), Auth::bearer(&token, "probe"));
    let r = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("grpc.health.v1.Health/Check")
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_chat_service() {
    let server = TestServer::start().await;
    let token = server.token("probe", "probe").await;
    let mut refl =
        ServerReflectionClient::with_interceptor(server.channel(), Auth::bearer(&token, "probe"));
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "chat.v1.ChatService".into(),
            )),
        },
    ];
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .expect("ServerReflectionInfo")
        .into_inner();

    let first = tokio::time::timeout(RECV_TIMEOUT, stream.message())
        .await
        .expect("timeout")
        .expect("status")
        .expect("a response");
    match first.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
            assert!(
                names.iter().any(|n| n == "chat.v1.ChatService"),
                "services: {names:?}"
            );
        }
        other => panic!("expected ListServicesResponse, got {other:?}"),
    }
    let second = tokio::time::timeout(RECV_TIMEOUT, stream.message())
        .await
        .expect("timeout")
        .expect("status")
        .expect("a response");
    match second.message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => {
            assert!(
                !f.file_descriptor_proto.is_empty(),
                "descriptor for chat.v1.ChatService"
            );
        }
        other => panic!("expected FileDescriptorResponse, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_zero() {
    let mut server = TestServer::start().await;
    let mut bob = server.connect("bob", "phone").await;
    let mut web = server.subscribe("carol", "web", Default::default()).await;
    web.sync().await;

    server.signal(libc::SIGTERM);
    // Open streams end (with whatever status) instead of hanging.
    bob.expect_end_within(Duration::from_secs(15)).await;
    web.expect_end_within(Duration::from_secs(15)).await;
    let status = server
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("chatd exits within 15 s of SIGTERM");
    assert!(
        status.success(),
        "exit status after SIGTERM: {status:?}\n{}",
        server.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_preserves_chats_messages_cursors_and_seq() {
    let mut server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let direct = open_direct(&mut alice, "bob").await;
    let group = create_group(&mut alice, "persist", &["bob", "carol"]).await;
    // bob's phone is known (positions 0) before the messages arrive.
    let mut bob = server.connect("bob", "phone").await;
    let sent = send_many(&mut alice, &direct.chat_id, "d", 3).await;
    send_many(&mut alice, &group.chat_id, "g", 2).await;
    bob.expect_messages(5).await;
    bob.ack_synced(&direct.chat_id, 2).await; // group stays unacknowledged
    drop(bob);
    let mut bob_c = server.client("bob", "phone").await;
    bob_c
        .mark_read(MarkReadRequest {
            chat_id: direct.chat_id.clone(),
            seq: 1,
        })
        .await
        .unwrap();
    let before_list = list_all_chats(&mut alice, 0).await;

    server.restart().await;

    let mut alice = server.client("alice", "phone").await;
    let after_list = list_all_chats(&mut alice, 0).await;
    assert_eq!(
        after_list.iter().map(|c| &c.chat_id).collect::<Vec<_>>(),
        before_list.iter().map(|c| &c.chat_id).collect::<Vec<_>>(),
        "chats survive"
    );
    let g = get_chat(&mut alice, &group.chat_id).await.unwrap();
    assert_eq!(g.title, "persist");
    assert_eq!(g.members.len(), 3);
    assert_eq!(g.last_seq, 2);

    let h = full_history(&mut alice, &direct.chat_id).await;
    assert_eq!(seqs(&h), vec![1, 2, 3]);
    for (a, b) in h.iter().zip(&sent) {
        assert_eq!(
            (&a.message_id, text_of(a), a.created_at),
            (&b.message_id, text_of(b), b.created_at)
        );
    }
    // seq continues; idempotency keys survive.
    assert_eq!(
        send_text(&mut alice, &direct.chat_id, "d-after", "after restart")
            .await
            .seq,
        4
    );
    let dup = send_unary(&mut alice, &direct.chat_id, "d-1", Some(text("d-1")))
        .await
        .unwrap();
    assert!(
        dup.duplicate,
        "a retry after the restart is still a duplicate"
    );
    assert_eq!(dup.message.unwrap().message_id, sent[0].message_id);

    // bob's delivered cursors (direct 2, group 0) and read position (1) survive.
    let bob = server.connect("bob", "phone").await;
    let of = |chat: &str| {
        bob.backlog
            .iter()
            .filter(|m| m.chat_id == chat)
            .map(|m| m.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(&direct.chat_id),
        vec![3, 4],
        "direct chat replayed from the persisted cursor"
    );
    assert_eq!(
        of(&group.chat_id),
        vec![1, 2],
        "group replayed from the persisted cursor"
    );
    let mut bob_c = server.client("bob", "phone").await;
    let d = get_chat(&mut bob_c, &direct.chat_id).await.unwrap();
    assert_eq!(d.read_seq, 1);
    assert_eq!(d.unread_count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_crash() {
    let mut server = TestServer::start_with(NO_RATE_LIMIT).await;
    let mut alice = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice, "bob").await;
    let sent = send_many(&mut alice, &chat.chat_id, "m", 20).await;

    server.kill_and_restart().await; // SIGKILL: no graceful shutdown

    let mut alice = server.client("alice", "phone").await;
    let h = full_history(&mut alice, &chat.chat_id).await;
    assert_eq!(
        seqs(&h),
        (1..=20).collect::<Vec<_>>(),
        "every acknowledged message is durable"
    );
    assert_eq!(
        h.last().unwrap().message_id,
        sent.last().unwrap().message_id
    );
    assert_eq!(
        send_text(&mut alice, &chat.chat_id, "m-21", "after crash")
            .await
            .seq,
        21
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_cluster_configuration_stops_the_server() {
    // Needs no services: the check comes before any connection (addresses are never dialled).
    let db = ("CHATD_DATABASE_URL", "postgres://postgres@127.0.0.1:9/chat");
    let redis = ("CHATD_REDIS_URL", "redis://127.0.0.1:9");
    let kafka = ("CHATD_KAFKA_BROKERS", "127.0.0.1:9");
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 4] = [
        (&[db, redis], &["CHATD_KAFKA_BROKERS"]),
        (&[db, kafka], &["CHATD_REDIS_URL"]),
        (&[redis, kafka], &["CHATD_DATABASE_URL"]),
        (&[db], &["CHATD_REDIS_URL", "CHATD_KAFKA_BROKERS"]),
    ];
    for (set, missing) in cases {
        let opts = ServerOptions {
            backend: Backend::Embedded,
            ..ServerOptions::new()
        }
        .envs(set);
        let out = TestServer::run_expecting_exit(opts).await;
        let ctx = format!(
            "only {:?} set",
            set.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        );
        for name in missing {
            assert_failed_naming(&out, name, &ctx);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_ride_out_a_crash_restart_without_loss() {
    use chat_tests::resilient::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::time::Instant;

    let mut server = TestServer::start_with(NO_RATE_LIMIT).await;
    let g = create_group(
        &mut server.client("alice", "setup").await,
        "crash",
        &["bob", "carol"],
    )
    .await;
    let nodes = NodeList::new(vec![server.addr]);
    let (goal_tx, goal_rx) = tokio::sync::watch::channel(None);
    let mut receivers = Vec::new();
    for (user, device) in [("bob", "phone"), ("carol", "phone"), ("alice", "tablet")] {
        let token = server.token(user, device).await;
        let mut r = Receiver::new(user, device, &token, nodes.clone(), 0);
        assert!(
            r.ensure_connected(Instant::now() + RECV_TIMEOUT).await,
            "{}",
            r.report()
        );
        receivers.push(r.spawn(goal_rx.clone()));
    }
    let token = server.token("alice", "phone").await;
    let sender = Sender::new("alice", "phone", &token, nodes.clone(), 0);
    let progress = Arc::new(AtomicUsize::new(0));
    let mut cfg = SenderConfig::new(Duration::from_secs(180));
    cfg.pace = Some(Duration::from_millis(5));
    let task = sender.spawn(outgoing(&g.chat_id, "m", 300), cfg, Some(progress.clone()));

    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::SeqCst) < 100 {
        assert!(Instant::now() < deadline, "100 sends not acked within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill_and_restart().await; // SIGKILL mid-stream
    nodes.set(0, server.addr);
    assert!(
        progress.load(Ordering::SeqCst) < 300,
        "the crash came after the last ack: nothing was tested"
    );

    let sender = join_each(vec![task]).await.remove(0);
    assert!(
        sender.errors.is_empty() && sender.violations.is_empty() && sender.acked.len() == 300,
        "every send acked once after retries: {}",
        sender.report()
    );
    let mut acked: Vec<(u64, String)> = sender
        .acked
        .values()
        .map(|m| (m.seq, m.message_id.clone()))
        .collect();
    acked.sort();
    assert_eq!(
        acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>(),
        "300 messages stored once each"
    );
    let _ = goal_tx.send(Some(Goal {
        targets: HashMap::from([(g.chat_id.clone(), 300)]),
        deadline: Instant::now() + Duration::from_secs(120),
    }));
    assert!(
        sender.disconnects >= 1,
        "the sender saw the crash: {}",
        sender.report()
    );
    eprintln!("{}", sender.report());
    for r in join_each(receivers).await {
        eprintln!("{}", r.report());
        assert!(r.disconnects >= 1, "{} saw the crash", r.who());
        let got: Vec<(u64, String)> = r
            .messages
            .get(&g.chat_id)
            .into_iter()
            .flatten()
            .map(|m| (m.seq, m.message_id.clone()))
            .collect();
        assert!(
            r.violations.is_empty() && got == acked,
            "{} must have every acked message once, in order: {}",
            r.who(),
            r.report()
        );
    }
}
