//! Structured logs: with `--log-format json` every stderr line is one JSON object, a message's
//! log lines sit in the spans of its session (user, device) and of the message itself (chat
//! id, seq), and neither a message's content nor a token ever appears in the log.

use chat_tests::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const SECRET: &str = "the launch code is 0000";

fn lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"].as_array()?.iter().find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_session_and_message_and_never_content_or_tokens() {
    let server = TestServer::start_opts(
        ServerOptions::default()
            .env("RUST_LOG", "chatd=debug,info")
            .env("CHATD_LOG_FORMAT", "json"),
    )
    .await;
    let mut alice = server.client("alice", "laptop").await;
    let chat = open_direct(&mut alice, "bob").await.chat_id;
    let mut session = server.connect("alice", "laptop").await;
    let sent = session.send_and_ack(&chat, "k1", SECRET).await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let committed = loop {
        let found = lines(&server.stderr()).into_iter().find(|l| {
            l["message"] == "message committed"
                && span(l, "message").is_some_and(|m| m["client_msg_id"] == "k1")
        });
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no `message committed` line in:\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = span(&committed, "message").expect("message span");
    assert_eq!(message["chat_id"], chat.as_str(), "{committed}");
    assert_eq!(message["seq"], sent.seq, "{committed}");
    let session_span = span(&committed, "session").expect("session span");
    assert_eq!(session_span["user"], "alice", "{committed}");
    assert_eq!(session_span["device"], "laptop", "{committed}");
    assert!(session_span["session_id"].is_u64(), "{committed}");
    for key in ["timestamp", "level", "target"] {
        assert!(committed.get(key).is_some(), "no {key}: {committed}");
    }

    let log = server.stderr();
    assert!(!log.contains(SECRET), "message content in the log");
    let token = server.token("alice", "laptop").await;
    assert!(!log.contains(&token), "a token in the log");
    assert!(
        !log.contains("Bearer"),
        "an authorization header in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_log_format_is_refused_by_name() {
    let out =
        TestServer::run_expecting_exit(ServerOptions::default().env("CHATD_LOG_FORMAT", "xml"))
            .await;
    assert!(out.status.is_some_and(|s| !s.success()), "{out:?}");
    let err = &out.stderr;
    assert!(
        err.contains("CHATD_LOG_FORMAT") && err.contains("must be `text` or `json`"),
        "{err}"
    );
}
