//! The bot against a real chatd: the `chat-bot` binary answering a user, a restart that must
//! not answer again, and a crash between answering and `mark_read`. Needs the chatd binary
//! (`cargo build -p chatd`, or `CHATD_BIN`).

use chat_bot::Bot;
use chat_sdk::{Api, Client, ClientConfig, ConnectionState, Content, Event, Message};
use chat_tests::StableServer as Chatd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);
const BOT: &str = "echo-bot";

struct BotProcess {
    child: Child,
}

impl BotProcess {
    fn start(server: &Chatd, token: &str, log: &Path) -> Result<BotProcess, Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_chat-bot"))
            .args(["--endpoint", &server.endpoint(), "--device", "bot"])
            .args(["--poll-ms", "100"])
            .env("CHAT_BOT_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(BotProcess { child })
    }

    /// Ctrl-C, as a person would; the bot must exit cleanly.
    fn interrupt(mut self) -> Result<std::process::ExitStatus, Error> {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-INT", &pid]).status()?;
        if !st.success() {
            return Err("kill -INT failed".into());
        }
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                return Err("the bot did not stop within 20 s of SIGINT".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BotProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message of a chat, oldest first.
async fn all_messages(api: &Api, chat_id: &str) -> Result<Vec<Message>, Error> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = api.get_history(chat_id, 200, &token).await?;
        out.extend(page.messages);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    out.reverse();
    Ok(out)
}

fn from_bot(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.sender_user_id == BOT)
        .map(|m| m.content.text.clone())
        .collect()
}

/// Wait until the bot has written `n` messages in the chat.
async fn until_bot_wrote(api: &Api, chat_id: &str, n: usize) -> Result<Vec<Message>, Error> {
    let deadline = Instant::now() + WAIT;
    loop {
        let msgs = all_messages(api, chat_id).await?;
        if from_bot(&msgs).len() >= n {
            return Ok(msgs);
        }
        if Instant::now() > deadline {
            return Err(
                format!("the bot wrote {:?}, expected {n} answers", from_bot(&msgs)).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn user(server: &Chatd, dir: &Path) -> Result<Client, Error> {
    let alice = Client::connect(
        ClientConfig::new(
            server.endpoint(),
            server.token("alice", "laptop").await,
            "laptop",
        )
        .with_data_dir(dir),
    )
    .await?;
    alice.wait_for(ConnectionState::Connected, WAIT).await?;
    Ok(alice)
}

/// Send and wait until the server stored it.
async fn send(
    alice: &Client,
    events: &mut chat_sdk::EventStream,
    chat: &str,
    text: &str,
) -> Result<u64, Error> {
    let m = alice.send(chat, Content::text(text)).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| format!("{text:?} was not stored in time"))?
            .ok_or("client closed")?;
        if let Event::SendResult(r) = ev {
            if r.client_msg_id == m.client_msg_id {
                return match r.outcome {
                    chat_sdk::SendOutcome::Sent { message, .. } => Ok(message.seq),
                    other => Err(format!("{text:?}: {other:?}").into()),
                };
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_once_and_never_again_after_a_restart() -> Result<(), Error> {
    let server = Chatd::start().await;
    let tmp = tempfile::tempdir()?;
    let alice = user(&server, tmp.path()).await?;
    let mut events = alice.events()?;
    let chat = alice.api().open_direct_chat(BOT).await?;
    send(&alice, &mut events, &chat.chat_id, "!help").await?;
    send(&alice, &mut events, &chat.chat_id, "hello").await?;

    let token = server.token(BOT, "bot").await;
    let log = tmp.path().join("bot.log");
    let bot = BotProcess::start(&server, &token, &log)?;
    let msgs = until_bot_wrote(alice.api(), &chat.chat_id, 2).await?;
    let answers = from_bot(&msgs);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers[0].contains("!time"), "the help text: {answers:?}");
    assert_eq!(answers[1], "echo: hello");
    // Each answer right after its question.
    let texts: Vec<&str> = msgs.iter().map(|m| m.content.text.as_str()).collect();
    assert_eq!(texts[0], "!help");
    // The chat is read up to the question: nothing unread for the bot.
    let bot_api = Api::new(&server.endpoint(), &token, Some("bot"))?;
    let seen = bot_api.get_chat(&chat.chat_id).await?;
    assert_eq!(seen.unread_count, 0);

    let status = bot.interrupt()?;
    assert!(status.success(), "clean exit on Ctrl-C: {status:?}");
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("stopped"), "{text}");

    // A restarted bot answers new messages only.
    let bot = BotProcess::start(&server, &token, &log)?;
    send(&alice, &mut events, &chat.chat_id, "!ping").await?;
    let msgs = until_bot_wrote(alice.api(), &chat.chat_id, 3).await?;
    // Give it a few more rounds to misbehave.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let msgs_later = all_messages(alice.api(), &chat.chat_id).await?;
    assert_eq!(
        msgs.len(),
        msgs_later.len(),
        "nothing more after the answer"
    );
    assert_eq!(
        from_bot(&msgs_later),
        vec![
            answers[0].clone(),
            "echo: hello".to_string(),
            "pong".to_string()
        ]
    );
    assert_eq!(msgs_later.len(), 6);
    assert!(bot.interrupt()?.success());
    alice.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_answer_and_mark_read_does_not_answer_twice() -> Result<(), Error> {
    let server = Chatd::start().await;
    let tmp = tempfile::tempdir()?;
    let alice = user(&server, tmp.path()).await?;
    let mut events = alice.events()?;
    // Also a group: commands answered, plain text not echoed there.
    let group = alice.api().create_group("bots", &[BOT.to_string()]).await?;
    let direct = alice.api().open_direct_chat(BOT).await?;
    send(&alice, &mut events, &direct.chat_id, "first").await?;
    send(&alice, &mut events, &group.chat_id, "chatter").await?;
    send(&alice, &mut events, &group.chat_id, "!ping").await?;

    let token = server.token(BOT, "bot").await;
    let bot = Bot::new(Api::new(&server.endpoint(), &token, Some("bot"))?, BOT);
    let chats = Api::new(&server.endpoint(), &token, Some("bot"))?
        .list_all_chats()
        .await?;
    // The crash: answers sent, read positions not moved.
    for c in &chats {
        bot.handle_chat(c, false).await?;
    }
    let stop = AtomicBool::new(false);
    let again = bot.poll_once(&stop).await?;
    assert_eq!(again.answered, 0, "{again:?}");
    assert_eq!(again.duplicates, 2, "{again:?}");
    assert_eq!(again.chats, 2);
    let quiet = bot.poll_once(&stop).await?;
    assert_eq!(quiet.chats, 0, "all read now: {quiet:?}");

    let direct_msgs = all_messages(alice.api(), &direct.chat_id).await?;
    assert_eq!(from_bot(&direct_msgs), vec!["echo: first"]);
    let group_msgs = all_messages(alice.api(), &group.chat_id).await?;
    assert_eq!(from_bot(&group_msgs), vec!["pong"]);

    // A message after a read position above 0 goes through the `after_seq` path.
    send(&alice, &mut events, &direct.chat_id, "second").await?;
    let r = bot.poll_once(&stop).await?;
    assert_eq!((r.chats, r.answered, r.duplicates), (1, 1, 0));
    let direct_msgs = all_messages(alice.api(), &direct.chat_id).await?;
    assert_eq!(from_bot(&direct_msgs), vec!["echo: first", "echo: second"]);
    alice.close().await;
    Ok(())
}
