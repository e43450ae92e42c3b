//! The push worker. Each pass takes what its [`PushQueue`] holds (the embedded default's
//! intents, written with their messages; the cluster's `chat.push` jobs), gathers it per
//! recipient and chat ([`Digests`]), leaves out recipients with a connected device, and sends
//! one push per chat to each token of the others, through every configured provider at once. A provider that says
//! "later" is tried again with a jittered backoff (its Retry-After honoured, up to a cap), a
//! dead token is deleted, and what fails for good is dead-lettered. Only then is the pass's take
//! acknowledged: a worker stopped midway sends those pushes again rather than losing them.

use super::queue::{PushQueue, Taken};
use super::setup::Senders;
use super::{Notice, Outcome, Sender};
use crate::clock::now_ms;
use crate::domain::model::PushToken;
use crate::domain::push::{self as rule, ChatDigest, Digests, PushText};
use crate::metrics::METRICS;
use crate::registry::Registry;
use crate::store::sqlite::DeadLetter;
use crate::store::PushTokenStore;
use crate::Result;
use futures_util::stream::{self, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pause between passes: the messages of one pause make one push per chat.
    pub pass_interval: Duration,
    /// Intents taken per pass.
    pub batch: u32,
    /// Tries per push before it is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's wait; doubled per try, up to `max_backoff`.
    pub first_backoff: Duration,
    /// The longest wait before a retry, Retry-After included (a pass waits for its retries).
    pub max_backoff: Duration,
    /// Pushes in flight at once, over all providers.
    pub concurrency: usize,
    pub text: PushText,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pass_interval: Duration::from_millis(500),
            batch: 1000,
            max_attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            concurrency: 64,
            text: PushText::default(),
        }
    }
}

pub struct Worker {
    queue: Arc<dyn PushQueue>,
    tokens: Arc<dyn PushTokenStore>,
    /// Checked again when a push is due; `None` where the queue's producer already left out
    /// everyone with a live device (the cluster's fan-out).
    registry: Option<Arc<dyn Registry>>,
    senders: Senders,
    settings: Settings,
}

impl Worker {
    pub fn new(
        queue: Arc<dyn PushQueue>,
        tokens: Arc<dyn PushTokenStore>,
        registry: Option<Arc<dyn Registry>>,
        senders: Senders,
        settings: Settings,
    ) -> Self {
        Worker {
            queue,
            tokens,
            registry,
            senders,
            settings,
        }
    }

    /// Passes until `shutdown`; a failed pass is logged and tried again after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(providers = ?self.senders, "push worker started");
        loop {
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

    /// One pass; how many entries it took.
    async fn pass(&self) -> Result<usize> {
        let Taken { jobs, entries, ack } = self.queue.take(self.settings.batch).await?;
        let mut digests = Digests::default();
        for job in &jobs {
            digests.add(&job.message, &job.recipients);
        }
        if !digests.is_empty() {
            self.send_all(digests).await?;
        }
        self.queue.done(ack).await?;
        Ok(entries)
    }

    async fn send_all(&self, digests: Digests) -> Result<()> {
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
        if away.is_empty() || self.senders.is_empty() {
            return Ok(());
        }
        let mut tokens: HashMap<String, Vec<PushToken>> = HashMap::new();
        for t in self.tokens.push_tokens(away).await? {
            tokens.entry(t.user_id.clone()).or_default().push(t);
        }
        let mut pushes = Vec::new();
        for (user, chats) in digests.into_users() {
            for token in tokens.get(&user).into_iter().flatten() {
                let Some(sender) = self.senders.get(token.provider) else {
                    continue; // a provider this node has no settings for
                };
                for chat in &chats {
                    pushes.push((sender.clone(), token.clone(), chat.clone()));
                }
            }
        }
        // Futures made before the stream (not in a `map` closure), so the spawned worker's
        // future stays `Send` for any lifetime the compiler picks.
        let deliveries: Vec<_> = pushes
            .into_iter()
            .map(|(sender, token, chat)| Box::pin(self.deliver(sender, token, chat)))
            .collect();
        stream::iter(deliveries)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
        Ok(())
    }

    /// One push to one token, tried until it is sent, dead or given up.
    async fn deliver(&self, sender: Arc<dyn Sender>, token: PushToken, chat: ChatDigest) {
        let counters = METRICS.push(token.provider);
        let notice = notice(&chat, self.settings.text);
        let mut attempt = 0;
        let reason = loop {
            attempt += 1;
            match sender.send(&token, &notice).await {
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
        if let Err(e) = self.queue.dead_letter(letter).await {
            tracing::warn!(error = %e, "cannot record a dead letter");
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
