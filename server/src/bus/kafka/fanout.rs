//! The `fanout` consumer group member: takes the events of its partitions in batches, works out
//! who must hear of each (the chat's members as of the event, from a [`MemberCache`] kept
//! current by the membership events in the same stream), hands them to the member nodes,
//! queues push jobs for members with no live session, and only then stores the offsets.
//! An event that keeps failing for a reason other than "unavailable" goes to the dead-letter
//! topic, so one bad event doesn't hold its partition up.

use super::client::{self, FanoutContext, Produce};
use super::KafkaBus;
use crate::bus::audience::{self, Target};
use crate::bus::cluster::hand_off_batch;
use crate::bus::members::MemberCache;
use crate::bus::wire::{self, PushJob};
use crate::bus::NodeLink;
use crate::domain::model::Event;
use crate::metrics::{ClusterHop, METRICS};
use crate::registry::Registry;
use crate::store::Store;
use crate::{Error, Result};
use futures_util::{FutureExt, StreamExt};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    message::{BorrowedMessage, Header, Message, OwnedHeaders},
    Offset, TopicPartitionList,
};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// Messages fanned out together: one registry lookup and one round of publishes for all.
const MAX_BATCH: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A failure other than "unavailable" that repeats this often is the message's fault.
const MAX_FAILURES: u32 = 5;

/// Runs `bus`'s member of the `fanout` group until shutdown.
pub(super) async fn run(
    bus: &KafkaBus,
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    link: Arc<dyn NodeLink>,
    shutdown: CancellationToken,
) {
    let rebalances = Arc::new(AtomicU64::new(0));
    let consumer = {
        let mut delay = BACKOFF_MIN;
        loop {
            match client::fanout_consumer(&bus.settings, &bus.names, rebalances.clone()) {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the fan-out consumer");
                    if !sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    };
    let mut fanout = Fanout {
        bus,
        registry,
        link,
        shutdown: shutdown.clone(),
        members: MemberCache::new(store),
        rebalances,
        seen_rebalances: 0,
    };
    let mut stream = consumer.stream();
    let mut receive_errors = 0u32;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = stream.next() => next,
        };
        let mut batch = Vec::new();
        match first {
            Some(r) => take(r, &mut batch, &mut receive_errors),
            None => break,
        }
        // Whatever else librdkafka already fetched joins this batch.
        while batch.len() < MAX_BATCH {
            match stream.next().now_or_never() {
                Some(Some(r)) => take(r, &mut batch, &mut receive_errors),
                _ => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        if !fanout.handle(&batch).await {
            break;
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            // How long the first event waited since its producer queued it (clocks of
            // this machine's nodes only: a diagnostic, not a measurement across hosts).
            let queued_ms = batch[0].timestamp().to_millis().unwrap_or(0);
            tracing::debug!(
                events = batch.len(),
                waited_ms = crate::clock::now_ms().saturating_sub(queued_ms),
                hand_off_us = started.elapsed().as_micros() as u64,
                "fan-out batch handed off"
            );
        }
        store_offsets(&consumer, &batch);
    }
    drop(stream);
    // Closing commits what was stored and leaves the group, handing the partitions over at
    // once; it blocks until the broker answered.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// Marks the batch's events as handed off: the next commit covers them.
fn store_offsets(consumer: &StreamConsumer<FanoutContext>, batch: &[BorrowedMessage<'_>]) {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for m in batch {
        let slot = next.entry((m.topic(), m.partition())).or_insert(0);
        *slot = (*slot).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::with_capacity(next.len());
    for ((topic, partition), offset) in next {
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(topic, partition, error = %e, "cannot note a fan-out offset");
        }
    }
    // Fails for partitions revoked meanwhile; their new owner redoes those events.
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(error = %e, "cannot store fan-out offsets");
    }
}

fn take<'c>(
    received: std::result::Result<BorrowedMessage<'c>, KafkaError>,
    batch: &mut Vec<BorrowedMessage<'c>>,
    errors: &mut u32,
) {
    match received {
        Ok(m) => batch.push(m),
        Err(e) => {
            *errors += 1;
            if *errors % 10 == 1 {
                tracing::warn!(error = %e, errors, "fan-out consumer error");
            }
        }
    }
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// The whole story of an error, for logs and dead letters (`Internal` hides it when shown).
fn detail(e: &Error) -> String {
    match e {
        Error::Internal(d) => d.clone(),
        e => e.to_string(),
    }
}

fn is_transient(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_))
}

/// One decoded event of a batch, with what fanning it out needs.
struct Item<'m, 'c> {
    /// The record as consumed: its payload is the event as encoded, passed on unchanged.
    msg: &'m BorrowedMessage<'c>,
    event: Event,
    /// For messages: every member (see [`audience::targets`]), so also who may need a push.
    targets: Vec<Target>,
}

struct Fanout<'b> {
    /// The producer (push jobs, dead letters), the topic names and the settings.
    bus: &'b KafkaBus,
    /// Where the members of each target are connected.
    registry: Arc<dyn Registry>,
    /// Carries the envelopes to the member nodes.
    link: Arc<dyn NodeLink>,
    /// Cuts every retry short when the node stops.
    shutdown: CancellationToken,
    /// The member lists of the chats of this node's partitions, as of the last event seen.
    members: MemberCache,
    /// Rebalances so far (see [`FanoutContext`]).
    rebalances: Arc<AtomicU64>,
    /// The count `members` was last valid for; on a change the cache starts over.
    seen_rebalances: u64,
}

impl Fanout<'_> {
    /// Hands off every event of `batch`; `false` if the node shut down first.
    async fn handle(&mut self, batch: &[BorrowedMessage<'_>]) -> bool {
        let rebalances = self.rebalances.load(Ordering::SeqCst);
        if rebalances != self.seen_rebalances {
            self.seen_rebalances = rebalances;
            self.members.clear();
        }
        let mut items = Vec::with_capacity(batch.len());
        let now = crate::clock::now_ms();
        for msg in batch {
            let event = match wire::decode_event(msg.payload().unwrap_or_default()) {
                Ok(event) => event,
                Err(e) => {
                    if !self.dead_letter(msg, &detail(&e)).await {
                        return false;
                    }
                    continue;
                }
            };
            if let Event::Message(m) = &event {
                METRICS.cluster_hop_at(ClusterHop::Consumed, m.created_at, now);
            }
            let members = match self.members_for(msg, &event).await {
                Some(Ok(members)) => members,
                Some(Err(reason)) => {
                    if !self.dead_letter(msg, &reason).await {
                        return false;
                    }
                    continue;
                }
                None => return false,
            };
            let targets = audience::targets(
                &event,
                &members,
                self.bus.settings.live_receipts_max_members,
            );
            items.push(Item {
                msg,
                event,
                targets,
            });
        }
        self.deliver_all(&items).await
    }

    /// The members of the event's chat as of the event: from a membership change itself,
    /// else the cache or the store. `None` on shutdown; `Some(Err)` when the store keeps
    /// refusing for a reason other than being unavailable.
    async fn members_for(
        &mut self,
        msg: &BorrowedMessage<'_>,
        event: &Event,
    ) -> Option<std::result::Result<Arc<[String]>, String>> {
        if let Event::Chat(change) = event {
            return Some(Ok(self.members.apply(change)));
        }
        let Some(chat_id) = audience::chat_of(event) else {
            return Some(Ok(Arc::from(Vec::new())));
        };
        let mut retry = Retry::default();
        loop {
            // One read per try: the retries follow the fan-out's policy (an unavailable store
            // is waited for, shutdown cuts the wait short), not the cache's.
            match self.members.get(chat_id, 1).await {
                Ok(members) => return Some(Ok(members)),
                Err(e) => {
                    if retry.failed(&e, "reading chat members", msg) {
                        return Some(Err(format!("cannot read chat members: {}", detail(&e))));
                    }
                    if !retry.wait(&self.shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Delivers `items` together, retrying while the backends are unavailable; a batch that
    /// keeps failing otherwise is retried one event at a time, so only the culprit ends up
    /// in the dead-letter topic.
    async fn deliver_all(&mut self, items: &[Item<'_, '_>]) -> bool {
        if items.is_empty() {
            return true;
        }
        let mut retry = Retry::default();
        let last = loop {
            match self.deliver(items).await {
                Ok(()) => {
                    let now = crate::clock::now_ms();
                    for item in items {
                        if let Event::Message(m) = &item.event {
                            METRICS.cluster_hop_at(ClusterHop::HandedOff, m.created_at, now);
                        }
                    }
                    return true;
                }
                Err(e) => {
                    if retry.failed(&e, "fanning out", items[0].msg) {
                        break e;
                    }
                    if !retry.wait(&self.shutdown).await {
                        return false;
                    }
                }
            }
        };
        if items.len() > 1 {
            for item in items {
                if !Box::pin(self.deliver_all(std::slice::from_ref(item))).await {
                    return false;
                }
            }
            return true;
        }
        let reason = format!(
            "fan-out failed {MAX_FAILURES} times, last: {}",
            detail(&last)
        );
        self.dead_letter(items[0].msg, &reason).await
    }

    async fn deliver(&self, items: &[Item<'_, '_>]) -> Result<()> {
        let events: Vec<(&[Target], &[u8])> = items
            .iter()
            .map(|i| (&i.targets[..], i.msg.payload().unwrap_or_default()))
            .collect();
        let offline = hand_off_batch(&*self.registry, &*self.link, &events).await?;
        let mut push: Vec<(String, Vec<u8>)> = Vec::new();
        for (item, offline) in items.iter().zip(offline) {
            let Event::Message(m) = &item.event else {
                continue;
            };
            // The sender needs no push about their own message.
            for user in offline.into_iter().filter(|u| *u != m.sender_user_id) {
                let job = PushJob {
                    user_id: user.clone(),
                    chat_id: m.chat_id.clone(),
                    seq: m.seq,
                    message_id: m.message_id.clone(),
                    sender_user_id: m.sender_user_id.clone(),
                    created_at: m.created_at,
                };
                let json = serde_json::to_vec(&job).map_err(Error::internal)?;
                push.push((user, json));
            }
        }
        if !push.is_empty() {
            let records = push
                .iter()
                .map(|(user, json)| Produce {
                    key: Some(user.as_bytes()),
                    payload: json,
                    headers: None,
                })
                .collect();
            self.bus
                .producer
                .produce(&self.bus.names.push, records)
                .await?;
        }
        Ok(())
    }

    /// Sends a record to the dead-letter topic, retrying until Kafka takes it; `false` if
    /// the node shut down first.
    async fn dead_letter(&self, msg: &BorrowedMessage<'_>, reason: &str) -> bool {
        tracing::error!(
            partition = msg.partition(),
            offset = msg.offset(),
            reason,
            "fan-out gives up on an event; it goes to the dead-letter topic"
        );
        let mut retry = Retry::default();
        loop {
            match self.produce_dead_letter(msg, reason).await {
                Ok(()) => return true,
                Err(e) => {
                    retry.failed(&e, "dead-lettering", msg);
                    if !retry.wait(&self.shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    /// The record as consumed, with headers saying why it gave up, where the record came
    /// from and which node wrote it.
    async fn produce_dead_letter(&self, m: &BorrowedMessage<'_>, reason: &str) -> Result<()> {
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "chatd-dlq-reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "chatd-source-topic",
                value: Some(m.topic()),
            })
            .insert(Header {
                key: "chatd-source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "chatd-source-offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "chatd-node",
                value: Some(self.bus.settings.node_id.as_str()),
            });
        let record = Produce {
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
            headers: Some(headers),
        };
        self.bus
            .producer
            .produce(&self.bus.names.dlq, vec![record])
            .await
    }
}

/// Backoff and failure counting for one step of the fan-out.
struct Retry {
    /// The next wait; doubles up to [`BACKOFF_MAX`].
    delay: Duration,
    /// Failures so far, for the log (every tenth is reported).
    attempts: u32,
    /// Consecutive failures that were not "unavailable".
    hard: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            delay: BACKOFF_MIN,
            attempts: 0,
            hard: 0,
        }
    }
}

impl Retry {
    /// Notes a failure; `true` once a non-transient error repeated [`MAX_FAILURES`] times.
    fn failed(&mut self, e: &Error, step: &str, msg: &BorrowedMessage<'_>) -> bool {
        self.attempts += 1;
        if self.attempts % 10 == 1 {
            tracing::warn!(
                step,
                partition = msg.partition(),
                offset = msg.offset(),
                attempts = self.attempts,
                error = detail(e),
                "fan-out step failed; retrying"
            );
        }
        match is_transient(e) {
            true => self.hard = 0,
            false => self.hard += 1,
        }
        self.hard >= MAX_FAILURES
    }

    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        sleep_or_shutdown(delay, shutdown).await
    }
}
