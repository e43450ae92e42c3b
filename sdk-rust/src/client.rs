//! [`Client`]: the app's handle on one device's connection, send queue and events.

use crate::api::{self, Api, Credentials};
use crate::config::ClientConfig;
use crate::connection::{Command, Driver, Stats, StatsSnapshot};
use crate::error::{Result, SdkError};
use crate::events::*;
use crate::sequencer::Sequencer;
use crate::store::{LocalStore, OutgoingMessage};
use crate::types::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Longest `client_msg_id` the server takes.
const MAX_CLIENT_MSG_ID: usize = 64;

/// One device of one user, connected to chatd. Cheap to clone; all clones share the
/// connection. See the crate docs for the guarantees.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    api: Api,
    device_id: String,
    user_id: Mutex<Option<String>>,
    store: LocalStore,
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<ConnectionStatus>,
    closing: watch::Sender<bool>,
    events: Mutex<Option<EventStream>>,
    driver: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Client {
    /// Open the local store, then start connecting in the background: this returns at once,
    /// also when the server is unreachable (sends queue up; watch [`Client::status`]).
    pub async fn connect(cfg: ClientConfig) -> Result<Client> {
        cfg.validate()?;
        let store = LocalStore::open(cfg.data_dir.as_deref())?;
        let positions = store.positions().await?;
        let queue: Vec<OutgoingMessage> = store
            .outbox()
            .await?
            .into_iter()
            .filter(|m| m.failure.is_none())
            .collect();
        let creds = Credentials::new(&cfg.token, Some(&cfg.device_id))?;
        let channel = api::channel(
            &cfg.endpoint,
            cfg.tls_ca_pem.as_deref(),
            cfg.connect_timeout,
            cfg.keepalive_interval,
            cfg.keepalive_timeout,
        )?;
        let api = Api::on_channel(channel, creds);
        let delivered = Arc::new(Delivered::new(&positions));
        let (events_tx, events_rx) = mpsc::channel(cfg.event_buffer);
        let (status_tx, status_rx) =
            watch::channel(ConnectionStatus::new(ConnectionState::Connecting));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (closing_tx, closing_rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let driver = Driver {
            api: api.clone(),
            store: store.clone(),
            delivered: delivered.clone(),
            sequencer: Sequencer::new(positions),
            queue: queue.into(),
            events: events_tx,
            status: status_tx,
            commands: cmd_rx,
            closing: closing_rx,
            stats: stats.clone(),
            in_flight: HashMap::new(),
            attempts: HashMap::new(),
            hold_until: None,
            watching: None,
            acked: HashMap::new(),
            flush_at: None,
            nonce: 0,
            user_id: api::token_subject(&cfg.token),
            cfg: cfg.clone(),
        };
        let handle = tokio::spawn(driver.run());
        Ok(Client {
            shared: Arc::new(Shared {
                user_id: Mutex::new(api::token_subject(&cfg.token)),
                api,
                device_id: cfg.device_id,
                store,
                commands: cmd_tx,
                status: status_rx,
                closing: closing_tx,
                events: Mutex::new(Some(EventStream::new(events_rx, delivered))),
                driver: tokio::sync::Mutex::new(Some(handle)),
                stats,
            }),
        })
    }

    /// The event stream. It has one reader: a second call is [`SdkError::EventsTaken`]. Read
    /// it all the time: the connection pauses while `event_buffer` events wait, and messages
    /// count as delivered (saved, acked, DELIVERED receipt) only once taken. Dropping it stops
    /// the events, not the client: sends still go out, and untaken messages are not acked.
    pub fn events(&self) -> Result<EventStream> {
        lock(&self.shared.events)
            .take()
            .ok_or(SdkError::EventsTaken)
    }

    /// Unary calls with this client's token and device.
    pub fn api(&self) -> &Api {
        &self.shared.api
    }

    pub fn device_id(&self) -> &str {
        &self.shared.device_id
    }

    /// The token's `sub`: this user's id (read from the token, not checked; the server checks).
    pub fn user_id(&self) -> Option<String> {
        lock(&self.shared.user_id).clone()
    }

    /// The connection state now.
    pub fn status(&self) -> ConnectionStatus {
        self.shared.status.borrow().clone()
    }

    /// Follow the connection state (also delivered as [`Event::Connection`]).
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
        self.shared.status.clone()
    }

    /// Wait until the state is `state`, at most `timeout`.
    pub async fn wait_for(&self, state: ConnectionState, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.status.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| s.state == state)).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(SdkError::Closed),
            Err(_) => Err(SdkError::Timeout(format!(
                "state {state:?} not reached within {timeout:?} (now {:?})",
                self.status().state
            ))),
        }
    }

    /// Queue `content` for `chat_id` and return at once with the local echo; the message is
    /// on disk before this returns and goes out (again and again, with the same
    /// `client_msg_id`) until the server stores it. The outcome arrives as
    /// [`Event::SendResult`].
    pub async fn send(&self, chat_id: &str, content: Content) -> Result<OutgoingMessage> {
        let key = uuid::Uuid::now_v7().simple().to_string();
        self.send_with_id(chat_id, &key, content).await
    }

    /// [`Client::send`] with the app's own idempotency key (1..64 characters).
    pub async fn send_with_id(
        &self,
        chat_id: &str,
        client_msg_id: &str,
        content: Content,
    ) -> Result<OutgoingMessage> {
        if *self.shared.closing.borrow() {
            return Err(SdkError::Closed);
        }
        if chat_id.is_empty() {
            return Err(SdkError::InvalidArgument("chat_id is empty".into()));
        }
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID {
            return Err(SdkError::InvalidArgument(format!(
                "client_msg_id must be 1..={MAX_CLIENT_MSG_ID} characters"
            )));
        }
        let m = OutgoingMessage {
            client_msg_id: client_msg_id.to_string(),
            chat_id: chat_id.to_string(),
            content,
            queued_at: now_ms(),
            failure: None,
        };
        self.shared.store.enqueue(m.clone()).await?;
        self.shared
            .commands
            .send(Command::Queued(m.clone()))
            .map_err(|_| SdkError::Closed)?;
        Ok(m)
    }

    /// Sends not yet stored by the server, and those refused for good (with `failure`).
    pub async fn pending_sends(&self) -> Result<Vec<OutgoingMessage>> {
        self.shared.store.outbox().await
    }

    /// Queue a failed send again (same key). False if there is no failed send with that key.
    pub async fn retry_failed(&self, client_msg_id: &str) -> Result<bool> {
        match self
            .shared
            .store
            .requeue_failed(client_msg_id.to_string())
            .await?
        {
            Some(m) => {
                self.shared
                    .commands
                    .send(Command::Queued(m))
                    .map_err(|_| SdkError::Closed)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Forget a failed send. False if there is no failed send with that key.
    pub async fn discard_failed(&self, client_msg_id: &str) -> Result<bool> {
        self.shared
            .store
            .discard_failed(client_msg_id.to_string())
            .await
    }

    /// Use `token` from now on: for unary calls at once, for the stream at its next connect (a
    /// connection refused for the old token retries right away).
    pub fn set_token(&self, token: &str) -> Result<()> {
        self.shared.api.set_token(token)?;
        *lock(&self.shared.user_id) = api::token_subject(token);
        let _ = self.shared.commands.send(Command::TokenChanged);
        Ok(())
    }

    /// Follow these users' presence (replaces the set; kept across reconnects).
    pub fn watch_presence(&self, user_ids: Vec<String>) -> Result<()> {
        self.shared
            .commands
            .send(Command::WatchPresence(user_ids))
            .map_err(|_| SdkError::Closed)
    }

    pub async fn set_typing(&self, chat_id: &str, typing: bool) -> Result<()> {
        let state = if typing {
            TypingState::Started
        } else {
            TypingState::Stopped
        };
        self.shared.api.set_typing(chat_id, state).await
    }

    /// This user has read `chat_id` up to `seq` (on this device).
    pub async fn mark_read(&self, chat_id: &str, seq: u64) -> Result<()> {
        self.shared.api.mark_read(chat_id, seq).await
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Save and ack what the app has taken, end the stream, stop reconnecting, and free the
    /// data dir for another client. Events already queued can still be read; then the stream
    /// ends. Idempotent.
    pub async fn close(&self) {
        let _ = self.shared.closing.send(true);
        let handle = self.shared.driver.lock().await.take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.shared.store.release();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
