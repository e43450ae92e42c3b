//! Running the reducer's [`Effect`]s against a `chat_sdk::Client`, and feeding their results
//! back as [`Input`]s. The binary and the end-to-end test share this, so the test exercises
//! exactly what a person at the terminal does.

use crate::state::{AppState, Done, Effect, Input, HISTORY_PAGE};
use chat_sdk::{Client, Code, Content, EventStream, SdkError};
use std::time::Duration;
use tokio::sync::mpsc;

/// An SDK error in words for the status line.
pub fn describe(e: &SdkError) -> String {
    match e {
        SdkError::Status { code, message, .. } => match code {
            Code::Unauthenticated => format!("the server rejected the token ({message})"),
            Code::PermissionDenied => format!("not allowed: {message}"),
            Code::NotFound => format!("not found: {message}"),
            Code::InvalidArgument => format!("invalid: {message}"),
            Code::Unavailable | Code::DeadlineExceeded => {
                format!("server unreachable ({message})")
            }
            Code::ResourceExhausted => format!("slow down: {message}"),
            other => format!("{other:?}: {message}"),
        },
        other => other.to_string(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The loop around an [`AppState`]: SDK events, other inputs (keys, call results), a clock.
pub struct Runner {
    pub client: Client,
    events: EventStream,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    clock: tokio::time::Interval,
}

impl Runner {
    pub fn new(client: Client) -> Result<Runner, SdkError> {
        let events = client.events()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut clock = tokio::time::interval(Duration::from_secs(1));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Ok(Runner {
            client,
            events,
            tx,
            rx,
            clock,
        })
    }

    /// Where keys and other inputs go in.
    pub fn sender(&self) -> mpsc::UnboundedSender<Input> {
        self.tx.clone()
    }

    /// The next input; `None` once the client is closed and its events are read.
    pub async fn next(&mut self) -> Option<Input> {
        tokio::select! {
            ev = self.events.next() => ev.map(Input::Sdk),
            Some(i) = self.rx.recv() => Some(i),
            _ = self.clock.tick() => Some(Input::Tick),
        }
    }

    /// Apply `input` and everything it leads to.
    pub async fn step(&mut self, state: &mut AppState, input: Input) {
        let fx = state.update(input, now_ms());
        self.run(state, fx).await;
    }

    /// Run effects. A send is queued here and now, so its local echo is in the state before the
    /// next event is read (its answer can never overtake it); every other call runs in the
    /// background and reports back through [`Runner::sender`].
    pub async fn run(&mut self, state: &mut AppState, effects: Vec<Effect>) {
        let mut todo: std::collections::VecDeque<Effect> = effects.into();
        while let Some(fx) = todo.pop_front() {
            match fx {
                Effect::Send { chat_id, text } => {
                    let r = self
                        .client
                        .send(&chat_id, Content::text(text))
                        .await
                        .map_err(|e| describe(&e));
                    todo.extend(state.update(Input::Done(Done::Queued(r)), now_ms()));
                }
                Effect::WatchPresence(users) => {
                    if let Err(e) = self.client.watch_presence(users) {
                        todo.extend(state.update(
                            Input::Done(Done::Failed(format!(
                                "watching presence failed: {}",
                                describe(&e)
                            ))),
                            now_ms(),
                        ));
                    }
                }
                Effect::Quit => {}
                other => self.spawn(other),
            }
        }
    }

    fn spawn(&self, fx: Effect) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if let Some(done) = call(&client, fx).await {
                // The loop is gone only when the app is quitting: nothing left to tell.
                let _ = tx.send(Input::Done(done));
            }
        });
    }

    /// Read the events left after `close()` (so the SDK can flush) without acting on them.
    pub async fn drain(&mut self, max: Duration) {
        let _ =
            tokio::time::timeout(max, async { while self.events.next().await.is_some() {} }).await;
    }

    /// An input that is already waiting, without waiting for one: lets the app take a burst
    /// (a replayed backlog) in one go and draw once.
    pub fn try_next(&mut self) -> Option<Input> {
        if let Some(ev) = self.events.try_next() {
            return Some(Input::Sdk(ev));
        }
        self.rx.try_recv().ok()
    }
}

/// One background call.
async fn call(client: &Client, fx: Effect) -> Option<Done> {
    let api = client.api();
    let d = |e: SdkError| describe(&e);
    Some(match fx {
        Effect::RefreshChats => Done::Chats(api.list_all_chats().await.map_err(d)),
        Effect::LoadPending => Done::Pending(client.pending_sends().await.map_err(d)),
        Effect::LoadHistory {
            chat_id,
            page_token,
        } => {
            let result = api
                .get_history(&chat_id, HISTORY_PAGE, &page_token)
                .await
                .map_err(d);
            Done::History {
                chat_id,
                older: !page_token.is_empty(),
                result,
            }
        }
        Effect::LoadReceipts { chat_id } => {
            // From seq 1: every member's current positions, whatever they are.
            let result = api.get_receipts(&chat_id, 1).await.map_err(d);
            Done::Receipts { chat_id, result }
        }
        Effect::SetTyping { chat_id, typing } => {
            // Typing is ephemeral: a lost indicator is not worth a message on screen.
            let _ = client.set_typing(&chat_id, typing).await;
            return None;
        }
        Effect::MarkRead { chat_id, seq } => {
            let result = client.mark_read(&chat_id, seq).await.map_err(d);
            Done::MarkRead {
                chat_id,
                seq,
                result,
            }
        }
        Effect::OpenDirect(user) => Done::ChatReady(
            api.open_direct_chat(&user)
                .await
                .map_err(|e| format!("/dm {user}: {}", describe(&e))),
        ),
        Effect::CreateGroup { title, members } => Done::ChatReady(
            api.create_group(&title, &members)
                .await
                .map_err(|e| format!("/group {title}: {}", describe(&e))),
        ),
        Effect::Retry(keys) => {
            let mut done = Vec::new();
            for k in keys {
                match client.retry_failed(&k).await {
                    Ok(true) => done.push(k),
                    Ok(false) => {}
                    Err(e) => return Some(Done::Retried(Err(describe(&e)))),
                }
            }
            Done::Retried(Ok(done))
        }
        Effect::Discard(keys) => {
            let mut done = Vec::new();
            for k in keys {
                match client.discard_failed(&k).await {
                    Ok(true) => done.push(k),
                    Ok(false) => {}
                    Err(e) => return Some(Done::Discarded(Err(describe(&e)))),
                }
            }
            Done::Discarded(Ok(done))
        }
        // Handled inline by `Runner::run`.
        Effect::Send { .. } | Effect::WatchPresence(_) | Effect::Quit => return None,
    })
}
