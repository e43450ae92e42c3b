//! TLS for clients (`--tls-cert`, `--tls-key`): gRPC streams and unary calls (harness clients
//! and the SDK), gRPC-web, the probes and WebSocket over TLS on the one port; plain text
//! refused; a replaced certificate served to new connections while open streams carry on, a
//! broken replacement never served; bad files stop the start naming the setting. Certificates
//! come from test CAs made for each test.

use chat_sdk::Content;
use chat_tests::sdk::{sdk_config, sdk_connect};
use chat_tests::tls::{
    client_config, handshake, https1, https_get, presented, status_of, CertFiles,
};
use chat_tests::websocket::ws_connect;
use chat_tests::*;
use push_fakes::tls::TestPki;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Generous: a loaded 2-core machine, and a reload poll of 200 ms.
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

async fn tls_server(pki: &TestPki, files: &CertFiles) -> TestServer {
    TestServer::start_opts(
        ServerOptions::new()
            .tls(files, pki.ca_pem())
            .env("CHATD_TLS_RELOAD_INTERVAL_MS", "200"),
    )
    .await
}

/// One counter line of /metrics (over HTTPS), 0 when absent.
async fn metric(server: &TestServer, pki: &TestPki, line: &str) -> u64 {
    let (status, text) = https_get(
        server.addr,
        client_config(&[pki], &[b"http/1.1"]),
        "/metrics",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_streams_unary_calls_and_the_sdk_work_over_tls() {
    let pki = TestPki::generate();
    let files = CertFiles::write(&pki);
    let server = tls_server(&pki, &files).await;

    // The harness's tonic clients: https:// trusting the test CA.
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;
    let sent = alice.send_and_ack(&chat.chat_id, "c1", "over tls").await;
    assert_eq!(bob.expect_message().await.message_id, sent.message_id);

    // The SDK: an https:// endpoint with the CA as its extra trust.
    let token = server.token("bob", "tablet").await;
    let cfg = sdk_config(&server.url(), &token, "tablet", None).with_tls_ca_pem(pki.ca_pem());
    let (sdk_bob, mut events) = sdk_connect(cfg).await;
    let live = alice.send_and_ack(&chat.chat_id, "c2", "to the sdk").await;
    let got = events.messages(&chat.chat_id, 1).await;
    assert_eq!(got[0].message_id, live.message_id, "delivered over TLS");
    sdk_bob
        .send(&chat.chat_id, Content::text("from the sdk"))
        .await
        .unwrap();
    assert_eq!(text_of(&alice.expect_message().await), "from the sdk");

    // The SDK's unary calls alone.
    let api = chat_sdk::Api::with_tls_ca(
        &server.url(),
        Some(pki.ca_pem()),
        &server.token("alice", "phone").await,
        Some("phone"),
    )
    .unwrap();
    let chats = api.list_all_chats().await.unwrap();
    assert_eq!(chats.len(), 1);

    // Without the CA the SDK does not trust the server (public roots only): it never connects.
    let token = server.token("bob", "laptop").await;
    let untrusting = sdk_config(&server.url(), &token, "laptop", None);
    let client = chat_sdk::Client::connect(untrusting).await.unwrap();
    let connected = client
        .wait_for(chat_sdk::ConnectionState::Connected, Duration::from_secs(3))
        .await;
    assert!(connected.is_err(), "an unknown CA must not be trusted");
    client.close().await;
    sdk_bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_and_untrusted_clients_fail_and_a_silent_one_blocks_nobody() {
    let pki = TestPki::generate();
    let files = CertFiles::write(&pki);
    let server = tls_server(&pki, &files).await;

    // A client that never says hello holds its own connection only.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\xff\xffnot a hello")
        .await
        .unwrap();

    // h2c (gRPC in plain text) is not served.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(10));
    let mut health = tonic_health::pb::health_client::HealthClient::new(plain.connect_lazy());
    // The client reads the server's TLS alert as a broken HTTP/2 frame (or sees the
    // connection close, which hyper reports as a cancelled call): either way the call fails,
    // with no answer from a service.
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("plain text must fail on a TLS port");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Internal
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        "{status:?}"
    );

    // Nor plain HTTP/1.1: the connection ends without an HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        RECV_TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer),
    )
    .await
    .expect("the server closes the connection");
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    // A client that trusts another CA refuses the server.
    let other = TestPki::generate();
    let refused = handshake(server.addr, client_config(&[&other], &[b"h2"])).await;
    assert!(refused.is_err(), "a certificate of an unknown CA");

    // Meanwhile, with the silent one still open, a good client gets through.
    let mut client = server.client("alice", "phone").await;
    create_group(&mut client, "g", &["bob"]).await;

    let failures = metric(&server, &pki, "chatd_tls_handshake_failures_total").await;
    assert!(
        failures >= 2,
        "the plain-text clients are counted: {failures}"
    );
    tokio::io::AsyncWriteExt::shutdown(&mut silent).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_grpc_web_and_websocket_speak_http1_over_tls() {
    let pki = TestPki::generate();
    let files = CertFiles::write(&pki);
    let server = tls_server(&pki, &files).await;

    // ALPN: h2 preferred when offered, http/1.1 otherwise.
    let both = handshake(server.addr, client_config(&[&pki], &[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(presented(&both).1.as_deref(), Some(&b"h2"[..]));
    let one = handshake(server.addr, client_config(&[&pki], &[b"http/1.1"]))
        .await
        .unwrap();
    let (leaf, alpn) = presented(&one);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(&leaf, pki.server_cert_der());

    let http1 = || client_config(&[&pki], &[b"http/1.1"]);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, text) = https_get(server.addr, http1(), path).await;
        assert_eq!(status, 200, "{path}: {text}");
    }

    // gRPC-web (as a browser sends it: HTTP/1.1): the health check, an empty request frame.
    let request = b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: localhost\r\n\
        Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 5\r\n\
        Connection: close\r\n\r\n\0\0\0\0\0";
    let raw = https1(server.addr, http1(), request).await;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(
        text.contains("grpc-status:0") || text.contains("grpc-status: 0"),
        "{text}"
    );

    // WebSocket over wss://, fed by a gRPC sender.
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut ws = ws_connect(&server, "bob", "browser").await;
    let mut alice = server.connect("alice", "phone").await;
    alice
        .send_and_ack(&chat.chat_id, "w1", "to the browser")
        .await;
    let got = ws.expect_message().await;
    assert_eq!(got["chatId"], chat.chat_id.as_str(), "{got}");
    ws.close().await;
}

/// Polls new handshakes until the server presents `want` (or the deadline passes).
async fn wait_for_certificate(server: &TestServer, cas: &[&TestPki], want: &TestPki) {
    let deadline = Instant::now() + RELOAD_DEADLINE;
    loop {
        if let Ok(tls) = handshake(server.addr, client_config(cas, &[b"h2"])).await {
            if &presented(&tls).0 == want.server_cert_der() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn reload_errors(server: &TestServer, pki: &TestPki) -> u64 {
    metric(server, pki, "chatd_tls_reloads_total{outcome=\"error\"}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_reaches_new_connections_while_open_streams_carry_on() {
    let (first, second, third) = (
        TestPki::generate(),
        TestPki::generate(),
        TestPki::generate(),
    );
    let files = CertFiles::write(&first);
    // The harness's clients trust every CA of the test, so new connections work throughout.
    let mut opts = ServerOptions::new()
        .tls(&files, first.ca_pem())
        .env("CHATD_TLS_RELOAD_INTERVAL_MS", "200");
    opts.tls_ca.push(second.ca_pem().to_string());
    opts.tls_ca.push(third.ca_pem().to_string());
    let server = TestServer::start_opts(opts).await;
    let all = [&first, &second, &third];

    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let mut alice = server.connect("alice", "phone").await;
    let mut bob = server.connect("bob", "phone").await;
    let (leaf, _) = presented(
        &handshake(server.addr, client_config(&all, &[b"h2"]))
            .await
            .unwrap(),
    );
    assert_eq!(&leaf, first.server_cert_der());

    files.replace(&second);
    wait_for_certificate(&server, &all, &second).await;
    // A client that trusts only the first CA is now refused: the old certificate is gone.
    assert!(handshake(server.addr, client_config(&[&first], &[b"h2"]))
        .await
        .is_err());
    // The streams opened under the first certificate still deliver both ways.
    let m = alice
        .send_and_ack(&chat.chat_id, "after-reload", "still here")
        .await;
    assert_eq!(bob.expect_message().await.message_id, m.message_id);
    let r = bob.send_and_ack(&chat.chat_id, "reply", "me too").await;
    assert_eq!(alice.expect_message().await.message_id, r.message_id);
    // And a new session gets the new certificate.
    let mut carol = server.connect("bob", "tablet").await;
    carol.ping().await;

    // A garbage key, then a key that belongs to another certificate: never served.
    let errors = reload_errors(&server, &second).await;
    files.replace_raw(
        &third.server_chain_pem(),
        "-----BEGIN PRIVATE KEY-----\ngarbage\n",
    );
    wait_for_reload_error(&server, &second, errors).await;
    let errors = reload_errors(&server, &second).await;
    files.replace_raw(&third.server_chain_pem(), &second.server_key_pem());
    wait_for_reload_error(&server, &second, errors).await;
    let (leaf, _) = presented(
        &handshake(server.addr, client_config(&all, &[b"h2"]))
            .await
            .unwrap(),
    );
    assert_eq!(
        &leaf,
        second.server_cert_der(),
        "the previous certificate is kept"
    );
    let m = alice
        .send_and_ack(&chat.chat_id, "after-garbage", "still")
        .await;
    assert_eq!(bob.expect_message().await.message_id, m.message_id);

    // Once the pair is whole again, it is picked up.
    files.replace(&third);
    wait_for_certificate(&server, &all, &third).await;
    let ok = metric(&server, &third, "chatd_tls_reloads_total{outcome=\"ok\"}").await;
    assert!(ok >= 2, "two reloads took: {ok}");
}

async fn wait_for_reload_error(server: &TestServer, pki: &TestPki, before: u64) {
    let deadline = Instant::now() + RELOAD_DEADLINE;
    while reload_errors(server, pki).await <= before {
        assert!(
            Instant::now() < deadline,
            "the broken pair was not noticed in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `chatd serve` with `opts` must exit non-zero saying each of `words` on stderr.
async fn refused(opts: ServerOptions, words: &[&str]) {
    let out = TestServer::run_expecting_exit(opts).await;
    assert!(
        out.status.is_some_and(|s| !s.success()),
        "must exit non-zero: {out:?}"
    );
    for w in words {
        assert!(out.stderr.contains(w), "stderr lacks {w:?}: {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_the_start_naming_the_setting() {
    let pki = TestPki::generate();
    let files = CertFiles::write(&pki);
    let cert = files.cert.display().to_string();
    let key = files.key.display().to_string();

    refused(
        ServerOptions::new().arg("--tls-cert").arg(&cert),
        &["--tls-cert", "--tls-key", "missing"],
    )
    .await;
    refused(
        ServerOptions::new().env("CHATD_TLS_KEY", &key),
        &["CHATD_TLS_KEY", "--tls-cert", "missing"],
    )
    .await;
    refused(
        ServerOptions::new()
            .arg("--tls-cert")
            .arg("/nonexistent/cert.pem")
            .arg("--tls-key")
            .arg(&key),
        &["--tls-cert", "/nonexistent/cert.pem"],
    )
    .await;

    // A key that is not the certificate's.
    let other = TestPki::generate();
    let mismatched = CertFiles::write(&pki);
    mismatched.replace_raw(&pki.server_chain_pem(), &other.server_key_pem());
    refused(
        ServerOptions::new().tls(&mismatched, pki.ca_pem()),
        &["--tls-key", "does not match", "--tls-cert"],
    )
    .await;

    // Files that hold something else.
    let swapped = CertFiles::write(&pki);
    swapped.replace_raw(&pki.server_key_pem(), &pki.server_chain_pem());
    refused(
        ServerOptions::new().tls(&swapped, pki.ca_pem()),
        &["--tls-cert", "no CERTIFICATE block"],
    )
    .await;
    let no_key = CertFiles::write(&pki);
    no_key.replace_raw(&pki.server_chain_pem(), "just text\n");
    refused(
        ServerOptions::new().tls(&no_key, pki.ca_pem()),
        &["--tls-key", "no private key"],
    )
    .await;
}
