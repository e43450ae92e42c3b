//! The push worker: one per configured provider (a lane), each with its own position in its
//! [`PushQueue`] (the embedded default's intents, written with their messages; the cluster's
//! `chat.push` jobs), so a provider that stalls holds back none of the others. Each pass takes
//! what the lane's queue holds, gathers it per recipient and chat ([`Digests`]), leaves out
//! recipients with a connected device, and sends one push per chat to each of the others'
//! tokens at this provider. A provider that says "later" is tried again with a jittered
//! backoff (its Retry-After honoured, up to a cap), a dead token is deleted, and what fails for
//! good is dead-lettered. Only then is the pass's take acknowledged: a worker stopped midway
//! sends those pushes again rather than losing them.

use super::queue::{DlqDepth, PushQueue, Taken};
use super::{Notice, Outcome, Provider, Sender};
use crate::clock::now_ms;
use crate::domain::model::PushToken;
use crate::domain::push::{self as rule, ChatDigest, Digests, PushText};
use crate::metrics::METRICS;
use crate::registry::Registry;
use crate::store::sqlite::DeadLetter;
use crate::store::{ChatStore, PushTokenStore};
use crate::Result;
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pause between passes.
    pub pass_interval: Duration,
    /// A pass whose newest message is younger than this waits until it is this old and takes
    /// again: a burst still arriving goes out as one push per chat, not two.
    pub settle: Duration,
    /// The longest a pass keeps gathering a burst.
    pub gather_max: Duration,
    /// Intents taken per pass.
    pub batch: u32,
    /// Tries per push before it is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's wait; doubled per try, up to `max_backoff`.
    pub first_backoff: Duration,
    /// The longest wait before a retry, Retry-After included (a pass waits for its retries).
    pub max_backoff: Duration,
    /// Pushes in flight at once, per provider.
    pub concurrency: usize,
    /// How often the dead letters are counted for the depth gauge.
    pub depth_interval: Duration,
    pub text: PushText,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pass_interval: Duration::from_millis(250),
            settle: Duration::from_millis(200),
            gather_max: Duration::from_secs(1),
            batch: 1000,
            max_attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            concurrency: 64,
            depth_interval: Duration::from_secs(10),
            text: PushText::default(),
        }
    }
}

/// One provider's lane.
pub struct Worker {
    lane: Provider,
    sender: Arc<dyn Sender>,
    /// This lane's queue.
    queue: Arc<dyn PushQueue>,
    tokens: Arc<dyn PushTokenStore>,
    /// Who muted which chat.
    chats: Arc<dyn ChatStore>,
    /// Checked again when a push is due; `None` where the queue's producer already left out
    /// everyone with a live device (the cluster's fan-out).
    registry: Option<Arc<dyn Registry>>,
    settings: Settings,
    /// A push was dead-lettered since the last count.
    lettered: AtomicBool,
    /// What a failed pass left for the next one.
    held: Mutex<Option<Held>>,
}

/// A take whose pass failed: tried again by the next pass rather than dropped (a queue hands
/// out each entry once per run).
struct Held {
    taken: Taken,
    /// Its pushes went out; only the acknowledgement failed.
    sent: bool,
}

impl Worker {
    pub fn new(
        sender: Arc<dyn Sender>,
        queue: Arc<dyn PushQueue>,
        tokens: Arc<dyn PushTokenStore>,
        chats: Arc<dyn ChatStore>,
        registry: Option<Arc<dyn Registry>>,
        settings: Settings,
    ) -> Self {
        Worker {
            lane: sender.provider(),
            sender,
            queue,
            tokens,
            chats,
            registry,
            settings,
            lettered: AtomicBool::new(false),
            held: Mutex::new(None),
        }
    }

    /// Passes until `shutdown`; a failed pass is logged and tried again after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(provider = self.lane.name(), "push lane started");
        let mut counted: Option<Instant> = None;
        loop {
            let due = counted.is_none_or(|at| at.elapsed() >= self.settings.depth_interval);
            if due || self.lettered.swap(false, Relaxed) {
                self.count_dead_letters().await;
                counted = Some(Instant::now());
            }
            let taken = tokio::select! {
                _ = shutdown.cancelled() => return,
                taken = self.pass() => taken,
            };
            let full = match taken {
                Ok(n) => n >= self.settings.batch as usize,
                Err(e) => {
                    tracing::warn!(error = %e, "push pass failed; trying again");
                    false
                }
            };
            if !full {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.settings.pass_interval) => {}
                }
            }
        }
    }

    /// Updates the dead-letter depth gauge (a failed count leaves the last one).
    async fn count_dead_letters(&self) {
        match self.queue.dead_letter_depth().await {
            Ok(DlqDepth::Lane(n)) => METRICS.push(self.lane).dlq_depth.store(n as i64, Relaxed),
            Ok(DlqDepth::All(n)) => METRICS.push_dlq_depth_all.store(n as i64, Relaxed),
            Err(e) => tracing::warn!(error = %e, "cannot count the dead-lettered pushes"),
        }
    }

    /// One pass; how many entries it took.
    async fn pass(&self) -> Result<usize> {
        let held = self.held.lock().take();
        let (taken, sent) = match held {
            Some(Held { taken, sent }) => (taken, sent),
            None => (self.gather().await?, false),
        };
        let entries = taken.entries;
        if !sent {
            let mut digests = Digests::default();
            for job in &taken.jobs {
                digests.add(&job.message, &job.recipients);
            }
            if !digests.is_empty() {
                if let Err(e) = self.send_all(digests).await {
                    *self.held.lock() = Some(Held { taken, sent: false });
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.queue.done(taken.ack).await {
            *self.held.lock() = Some(Held { taken, sent: true });
            return Err(e);
        }
        Ok(entries)
    }

    /// A take, and more while a burst is still arriving (up to `gather_max`).
    async fn gather(&self) -> Result<Taken> {
        let s = &self.settings;
        let mut taken = self.queue.take(s.batch).await?;
        let until = Instant::now() + s.gather_max;
        while taken.entries > 0 && taken.entries < s.batch as usize {
            let newest = taken.jobs.iter().map(|j| j.message.created_at).max();
            let age = now_ms().saturating_sub(newest.unwrap_or(0)).max(0) as u64;
            let wait = s
                .settle
                .saturating_sub(Duration::from_millis(age))
                .min(until.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait).await;
            match self.queue.take(s.batch - taken.entries as u32).await {
                Ok(more) if more.entries > 0 => taken.merge(more),
                Ok(_) => break,
                // What was taken already goes out; the rest waits for the next pass.
                Err(e) => {
                    tracing::warn!(error = %e, "push take failed while gathering a burst");
                    break;
                }
            }
        }
        Ok(taken)
    }

    async fn send_all(&self, mut digests: Digests) -> Result<()> {
        let now = now_ms();
        for (chat, users) in digests.chats() {
            let muted = self.chats.muted_members(&chat, &users, now).await?;
            digests.mute(&chat, &muted);
        }
        if digests.is_empty() {
            return Ok(());
        }
        let users = digests.users();
        let mut online: HashSet<&String> = HashSet::new();
        if let Some(registry) = &self.registry {
            let presence = registry.snapshot(&users).await?;
            online = users
                .iter()
                .zip(&presence)
                .filter(|(_, p)| p.as_ref().is_some_and(|p| p.devices_online > 0))
                .map(|(u, _)| u)
                .collect();
        }
        let away: Vec<String> = users
            .iter()
            .filter(|u| !online.contains(u))
            .cloned()
            .collect();
        if away.is_empty() {
            return Ok(());
        }
        let mut tokens: HashMap<String, Vec<PushToken>> = HashMap::new();
        for t in self.tokens.push_tokens(away).await? {
            if t.provider == self.lane {
                tokens.entry(t.user_id.clone()).or_default().push(t);
            }
        }
        let mut pushes = Vec::new();
        for (user, chats) in digests.into_users() {
            for token in tokens.get(&user).into_iter().flatten() {
                for chat in &chats {
                    pushes.push((token.clone(), chat.clone()));
                }
            }
        }
        // Futures made before the stream (not in a `map` closure), so the spawned worker's
        // future stays `Send` for any lifetime the compiler picks.
        let deliveries: Vec<_> = pushes
            .into_iter()
            .map(|(token, chat)| Box::pin(self.deliver(token, chat)))
            .collect();
        stream::iter(deliveries)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
        Ok(())
    }

    /// One push to one token, tried until it is sent, dead or given up.
    async fn deliver(&self, token: PushToken, chat: ChatDigest) {
        let counters = METRICS.push(token.provider);
        let notice = notice(&chat, self.settings.text);
        let mut attempt = 0;
        let reason = loop {
            attempt += 1;
            match self.sender.send(&token, &notice).await {
                Outcome::Sent => {
                    counters.sent.fetch_add(1, Relaxed);
                    return;
                }
                Outcome::DeadToken => {
                    counters.dead_tokens.fetch_add(1, Relaxed);
                    if let Err(e) = self
                        .tokens
                        .drop_push_token(token.provider, &token.token)
                        .await
                    {
                        tracing::warn!(error = %e, user = %token.user_id, "cannot drop a dead push token");
                    }
                    return;
                }
                Outcome::Permanent(reason) => break reason,
                Outcome::Retry { after } => {
                    if attempt >= self.settings.max_attempts {
                        break format!("still refused after {attempt} tries");
                    }
                    counters.retries.fetch_add(1, Relaxed);
                    tokio::time::sleep(self.backoff(attempt, after)).await;
                }
            }
        };
        counters.failed.fetch_add(1, Relaxed);
        tracing::warn!(
            provider = token.provider.name(),
            user = %token.user_id,
            device = %token.device_id,
            chat = %chat.chat_id,
            %reason,
            "push dead-lettered"
        );
        let letter = DeadLetter {
            user_id: token.user_id,
            device_id: token.device_id,
            provider: token.provider,
            chat_id: chat.chat_id,
            seq: chat.last_seq,
            reason,
            at: now_ms(),
        };
        match self.queue.dead_letter(letter).await {
            Ok(()) => self.lettered.store(true, Relaxed),
            Err(e) => tracing::warn!(error = %e, "cannot record a dead letter"),
        }
    }

    /// The wait before try `attempt + 1`: the provider's Retry-After, or an exponential backoff
    /// with jitter (so that a provider's many refused pushes do not all come back at once).
    fn backoff(&self, attempt: u32, after: Option<Duration>) -> Duration {
        let s = &self.settings;
        let wait = after.unwrap_or_else(|| {
            let base = s
                .first_backoff
                .saturating_mul(1 << attempt.saturating_sub(1).min(16));
            base.mul_f64(0.5 + rand::random::<f64>() / 2.0)
        });
        wait.min(s.max_backoff)
    }
}

/// The push for `chat` under `style`, in the providers' terms.
fn notice(chat: &ChatDigest, style: PushText) -> Notice {
    let content = rule::content(chat, style);
    Notice {
        chat_id: chat.chat_id.clone(),
        collapse_key: chat.chat_id.clone(),
        title: content.title,
        body: content.body,
        count: chat.count,
        data: content.data,
        data_only: content.data_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fakes::FakeChats;
    use crate::domain::model::{Content, Message, PushProvider};
    use crate::push::queue::{Ack, Job};
    use crate::Error;
    use async_trait::async_trait;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicI64, AtomicU32};

    /// A queue of takes handed out in order; `done` fails the first `fail_done` times.
    #[derive(Default)]
    struct Takes {
        takes: parking_lot::Mutex<VecDeque<Vec<Job>>>,
        fail_done: AtomicU32,
        acked: parking_lot::Mutex<Vec<i64>>,
        next_id: AtomicI64,
    }

    #[async_trait]
    impl PushQueue for Takes {
        async fn take(&self, _max: u32) -> Result<Taken> {
            let jobs = self.takes.lock().pop_front().unwrap_or_default();
            let entries = jobs.len();
            let ack = match entries {
                0 => Ack::None,
                n => Ack::Intents(self.next_id.fetch_add(n as i64, Relaxed) + n as i64),
            };
            Ok(Taken { jobs, entries, ack })
        }

        async fn done(&self, ack: Ack) -> Result<()> {
            if self.fail_done.load(Relaxed) > 0 {
                self.fail_done.fetch_sub(1, Relaxed);
                return Err(Error::Unavailable("done refused".into()));
            }
            if let Ack::Intents(id) = ack {
                self.acked.lock().push(id);
            }
            Ok(())
        }

        async fn dead_letter(&self, _: DeadLetter) -> Result<()> {
            Ok(())
        }

        async fn dead_letter_depth(&self) -> Result<DlqDepth> {
            Ok(DlqDepth::Lane(0))
        }
    }

    /// Bob's one webhook token; `push_tokens` fails the first `fail` times.
    #[derive(Default)]
    struct Tokens {
        fail: AtomicU32,
    }

    #[async_trait]
    impl PushTokenStore for Tokens {
        async fn register_push_token(&self, _: PushToken) -> Result<()> {
            Ok(())
        }
        async fn unregister_push_token(&self, _: &str, _: PushProvider, _: &str) -> Result<bool> {
            Ok(false)
        }
        async fn push_tokens(&self, users: Vec<String>) -> Result<Vec<PushToken>> {
            if self.fail.load(Relaxed) > 0 {
                self.fail.fetch_sub(1, Relaxed);
                return Err(Error::Unavailable("tokens unreadable".into()));
            }
            let token = |provider| PushToken {
                user_id: "bob".into(),
                device_id: "phone".into(),
                provider,
                token: "bob-key".into(),
                app_id: String::new(),
                created_at: 0,
            };
            Ok(users
                .iter()
                .filter(|u| *u == "bob")
                .flat_map(|_| [token(PushProvider::Webhook), token(PushProvider::Fcm)])
                .collect())
        }
        async fn drop_push_token(&self, _: PushProvider, _: &str) -> Result<bool> {
            Ok(false)
        }
    }

    /// Records every notice it is given.
    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<(String, u32)>>);

    #[async_trait]
    impl Sender for Recorder {
        fn provider(&self) -> Provider {
            PushProvider::Webhook
        }
        async fn send(&self, target: &PushToken, notice: &Notice) -> Outcome {
            assert_eq!(
                target.provider,
                PushProvider::Webhook,
                "another lane's token"
            );
            self.0.lock().push((notice.chat_id.clone(), notice.count));
            Outcome::Sent
        }
    }

    fn job(seq: u64, created_at: i64) -> Job {
        Job {
            message: Message {
                message_id: format!("m{seq}"),
                chat_id: "c".into(),
                seq,
                sender_user_id: "alice".into(),
                sender_device_id: "laptop".into(),
                client_msg_id: format!("k{seq}"),
                content: Content {
                    text: "hi".into(),
                    ..Default::default()
                },
                created_at,
                wire: Default::default(),
            },
            recipients: vec!["alice".into(), "bob".into()],
        }
    }

    fn worker(queue: Arc<Takes>, tokens: Tokens) -> (Worker, Arc<Recorder>) {
        worker_with(queue, tokens, Arc::new(FakeChats::default()))
    }

    fn worker_with(
        queue: Arc<Takes>,
        tokens: Tokens,
        chats: Arc<FakeChats>,
    ) -> (Worker, Arc<Recorder>) {
        let sender = Arc::new(Recorder::default());
        let settings = Settings {
            settle: Duration::from_millis(100),
            ..Default::default()
        };
        let w = Worker::new(
            sender.clone(),
            queue,
            Arc::new(tokens),
            chats,
            None,
            settings,
        );
        (w, sender)
    }

    #[tokio::test]
    async fn a_burst_split_across_takes_is_one_push() {
        let queue = Arc::new(Takes::default());
        let now = now_ms();
        queue.takes.lock().extend([
            vec![job(1, now), job(2, now)],
            vec![job(3, now + 20)],
            vec![],
        ]);
        let (w, sent) = worker(queue.clone(), Tokens::default());
        assert_eq!(w.pass().await.unwrap(), 3);
        assert_eq!(*sent.0.lock(), [("c".to_string(), 3)]);
        assert_eq!(*queue.acked.lock(), [3]);
    }

    #[tokio::test]
    async fn a_recipient_who_muted_the_chat_gets_no_push_until_it_expires() {
        let chats = Arc::new(FakeChats::default());
        let queue = Arc::new(Takes::default());
        chats
            .mutes
            .lock()
            .insert(("c".into(), "bob".into()), now_ms() + 60_000);
        queue.takes.lock().push_back(vec![job(1, 0)]);
        let (w, sent) = worker_with(queue.clone(), Tokens::default(), chats.clone());
        assert_eq!(w.pass().await.unwrap(), 1);
        assert!(sent.0.lock().is_empty(), "bob muted the chat");
        assert_eq!(*queue.acked.lock(), [1], "a muted push is done, not kept");
        // The mute ran out.
        chats
            .mutes
            .lock()
            .insert(("c".into(), "bob".into()), now_ms() - 1);
        queue.takes.lock().push_back(vec![job(2, 0)]);
        assert_eq!(w.pass().await.unwrap(), 1);
        assert_eq!(sent.0.lock().len(), 1);
    }

    #[tokio::test]
    async fn an_old_take_is_not_held_back() {
        let queue = Arc::new(Takes::default());
        queue
            .takes
            .lock()
            .extend([vec![job(1, now_ms() - 1_000)], vec![job(2, now_ms())]]);
        let (w, sent) = worker(queue.clone(), Tokens::default());
        assert_eq!(w.pass().await.unwrap(), 1);
        assert_eq!(*sent.0.lock(), [("c".to_string(), 1)]);
    }

    #[tokio::test]
    async fn a_failed_pass_keeps_its_take_and_sends_nothing_twice() {
        let queue = Arc::new(Takes::default());
        queue.takes.lock().push_back(vec![job(1, 0)]);
        let (w, sent) = worker(queue.clone(), Tokens { fail: 1.into() });
        // The tokens cannot be read: nothing sent, the take is kept.
        assert!(w.pass().await.is_err());
        assert!(sent.0.lock().is_empty());
        // Sent, but the acknowledgement fails: kept, marked sent.
        queue.fail_done.store(1, Relaxed);
        assert!(w.pass().await.is_err());
        assert_eq!(sent.0.lock().len(), 1);
        assert!(queue.acked.lock().is_empty());
        // Acknowledged without a second push.
        assert_eq!(w.pass().await.unwrap(), 1);
        assert_eq!(sent.0.lock().len(), 1);
        assert_eq!(*queue.acked.lock(), [1]);
    }
}
