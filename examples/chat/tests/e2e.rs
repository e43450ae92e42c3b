//! The app's state layer against a real chatd: the same reducer and effect runner the `chat`
//! binary uses, fed by a real `chat_sdk::Client`, with keys typed into it; the peer is a plain
//! SDK client. Needs the chatd binary (`cargo build -p chatd`, or `CHATD_BIN`).

use chat_sdk::{
    Client, ClientConfig, ConnectionState, Content, Event, PresenceStatus, ReceiptKind, TypingState,
};
use chat_tests::StableServer as Chatd;
use chat_tui::effects::Runner;
use chat_tui::input::Action;
use chat_tui::render::frame;
use chat_tui::state::{AppState, Input};
use chat_tui::ticks::Tick;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;
use tokio::sync::mpsc;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The app under test: state + runner, as in `main.rs` minus the terminal.
struct App {
    state: AppState,
    runner: Runner,
    client: Client,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start(server: &Chatd, user: &str, device: &str) -> Result<App, Error> {
        let dir = tempfile::tempdir()?;
        let token = server.token(user, device).await;
        let client = Client::connect(
            ClientConfig::new(server.endpoint(), token, device).with_data_dir(dir.path()),
        )
        .await?;
        let mut app = App {
            state: AppState::new(user),
            runner: Runner::new(client.clone())?,
            client,
            _dir: dir,
        };
        let fx = app.state.start();
        app.runner.run(&mut app.state, fx).await;
        Ok(app)
    }

    /// Feed inputs until `done` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&AppState) -> bool) -> Result<(), Error> {
        let deadline = Instant::now() + WAIT;
        while !done(&self.state) {
            let input = tokio::time::timeout_at(deadline, self.runner.next())
                .await
                .map_err(|_| format!("timed out waiting for {what}"))?
                .ok_or("the client closed")?;
            self.runner.step(&mut self.state, input).await;
        }
        Ok(())
    }

    /// Like `until`, recording the tick of `text` after every input.
    async fn watch_tick(
        &mut self,
        text: &str,
        until: Tick,
        seen: &mut Vec<Tick>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = self.state.tick_of(text);
            if let Some(t) = t {
                if seen.last() != Some(&t) {
                    seen.push(t.clone());
                }
                if t == until {
                    return Ok(());
                }
            }
            let input = tokio::time::timeout_at(deadline, self.runner.next())
                .await
                .map_err(|_| format!("timed out waiting for {until:?} of {text:?}; saw {seen:?}"))?
                .ok_or("the client closed")?;
            self.runner.step(&mut self.state, input).await;
        }
    }

    async fn key(&mut self, a: Action) {
        self.runner.step(&mut self.state, Input::Key(a)).await;
    }

    async fn type_line(&mut self, line: &str) {
        for c in line.chars() {
            self.key(Action::Char(c)).await;
        }
        self.key(Action::Enter).await;
    }

    async fn close(self) {
        self.client.close().await;
    }
}

/// A plain SDK client whose events are read all the time (so it acks what it receives).
struct Peer {
    client: Client,
    events: mpsc::UnboundedReceiver<Event>,
    _dir: tempfile::TempDir,
}

impl Peer {
    async fn start(server: &Chatd, user: &str, device: &str) -> Result<Peer, Error> {
        let dir = tempfile::tempdir()?;
        let client = Client::connect(
            ClientConfig::new(server.endpoint(), server.token(user, device).await, device)
                .with_data_dir(dir.path()),
        )
        .await?;
        let mut stream = client.events()?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        client.wait_for(ConnectionState::Connected, WAIT).await?;
        Ok(Peer {
            client,
            events,
            _dir: dir,
        })
    }

    async fn until<T>(&mut self, what: &str, f: impl Fn(&Event) -> Option<T>) -> Result<T, Error> {
        let deadline = Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| format!("peer timed out waiting for {what}"))?
                .ok_or("peer client closed")?;
            if let Some(t) = f(&ev) {
                return Ok(t);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_through_the_app_state() -> Result<(), Error> {
    let server = Chatd::start().await;
    let mut bob = Peer::start(&server, "bob", "phone").await?;
    let mut alice = App::start(&server, "alice", "tui").await?;
    alice
        .until("connected with the chat list", |s| {
            s.conn.state == ConnectionState::Connected && s.chats_loaded
        })
        .await?;

    // A direct chat opened by command: history (empty), presence of the peer.
    alice.type_line("/dm bob").await;
    alice
        .until("the chat with bob open", |s| {
            s.open.as_ref().is_some_and(|o| o.history_loaded)
        })
        .await?;
    let chat_id = alice
        .state
        .open_chat_id()
        .ok_or("no open chat")?
        .to_string();
    alice
        .until("bob online", |s| {
            s.open.as_ref().is_some_and(|o| {
                o.presence
                    .get("bob")
                    .is_some_and(|p| p.status == PresenceStatus::Online)
            })
        })
        .await?;

    // Typing reaches bob; the message goes queued → sent → delivered → read.
    for c in "hello bob".chars() {
        alice.key(Action::Char(c)).await;
    }
    bob.until("alice typing", |e| match e {
        Event::Typing(t) if t.user_id == "alice" && t.state == TypingState::Started => Some(()),
        _ => None,
    })
    .await?;
    alice.key(Action::Enter).await;
    let mut seen = Vec::new();
    alice.watch_tick("hello bob", Tick::Sent, &mut seen).await?;
    let seq = bob
        .until("alice's message", |e| match e {
            Event::Message(m) if m.content.text == "hello bob" => Some(m.seq),
            _ => None,
        })
        .await?;
    // Bob's client acks what it took: that is the DELIVERED receipt.
    alice
        .watch_tick("hello bob", Tick::Delivered, &mut seen)
        .await?;
    bob.client.mark_read(&chat_id, seq).await?;
    alice.watch_tick("hello bob", Tick::Read, &mut seen).await?;
    assert_eq!(
        seen,
        vec![Tick::Queued, Tick::Sent, Tick::Delivered, Tick::Read],
        "ticks in order"
    );

    // Bob's answer shows up in the open chat, in order, and the app marks it read.
    let answer = bob.client.send(&chat_id, Content::text("hi alice")).await?;
    alice
        .until("bob's answer", |s| {
            s.chat_lines()
                .iter()
                .any(|l| l.sender == "bob" && l.text == "hi alice")
        })
        .await?;
    let texts: Vec<String> = alice
        .state
        .chat_lines()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(texts, vec!["hello bob", "hi alice"]);
    bob.until("alice's read receipt", |e| match e {
        Event::Receipt(r) if r.user_id == "alice" && r.kind == ReceiptKind::Read && r.seq > seq => {
            Some(())
        }
        _ => None,
    })
    .await?;
    assert_eq!(alice.state.unread(&chat_id), Some(0));
    assert!(alice.client.pending_sends().await?.is_empty());
    let _ = answer;

    // Bob types, then stops.
    bob.client.set_typing(&chat_id, true).await?;
    alice
        .until("bob typing", |s| s.typing_now(now_ms()) == vec!["bob"])
        .await?;
    let screen = frame(&alice.state, 80, 24, now_ms()).text();
    assert!(screen.contains("bob is typing…"), "{screen}");
    assert!(screen.contains("✓✓ read"), "{screen}");
    assert!(screen.contains("bob: hi alice"), "{screen}");
    assert!(screen.contains(" bob · online"), "{screen}");
    bob.client.set_typing(&chat_id, false).await?;
    alice
        .until("bob stopped typing", |s| s.typing_now(now_ms()).is_empty())
        .await?;

    // Back to the list: bob's next messages count as unread there.
    alice.type_line("/chats").await;
    assert!(alice.state.open.is_none());
    bob.client.send(&chat_id, Content::text("one")).await?;
    bob.client.send(&chat_id, Content::text("two")).await?;
    alice
        .until("two unread", |s| s.unread(&chat_id) == Some(2))
        .await?;
    let screen = frame(&alice.state, 80, 24, now_ms()).text();
    assert!(
        screen.contains("(2)") && screen.contains("bob: two"),
        "{screen}"
    );

    // Opening it again reads them.
    alice.type_line("1").await;
    alice
        .until("unread cleared", |s| {
            s.unread(&chat_id) == Some(0) && s.chat_lines().len() == 4
        })
        .await?;
    alice.close().await;
    bob.client.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_typed_offline_is_queued_and_sent_on_reconnect() -> Result<(), Error> {
    let mut server = Chatd::start().await;
    let mut bob = Peer::start(&server, "bob", "phone").await?;
    let mut alice = App::start(&server, "alice", "tui").await?;
    alice
        .until("connected", |s| s.conn.state == ConnectionState::Connected)
        .await?;
    alice.type_line("/dm bob").await;
    alice
        .until("the chat open", |s| {
            s.open.as_ref().is_some_and(|o| o.history_loaded)
        })
        .await?;

    server.kill().await;
    alice
        .until("reconnecting", |s| {
            s.conn.state == ConnectionState::Reconnecting
        })
        .await?;
    alice.type_line("are you there?").await;
    assert_eq!(alice.state.tick_of("are you there?"), Some(Tick::Queued));
    assert_eq!(alice.client.pending_sends().await?.len(), 1, "on disk");
    let screen = frame(&alice.state, 80, 24, now_ms()).text();
    assert!(
        screen.contains("queued") && screen.contains("reconnecting"),
        "{screen}"
    );

    server.start_again().await;
    alice
        .until("sent after the restart", |s| {
            s.tick_of("are you there?")
                .is_some_and(|t| t != Tick::Queued)
        })
        .await?;
    bob.until("the queued message", |e| match e {
        Event::Message(m) if m.content.text == "are you there?" => Some(()),
        _ => None,
    })
    .await?;
    alice.close().await;
    bob.client.close().await;
    Ok(())
}
