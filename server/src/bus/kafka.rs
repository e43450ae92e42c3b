//! The Kafka bus: outbox sink (producer), the `fanout` consumer group, push jobs, dead letters.
//!
//! The outbox relay produces every committed event to `chat.messages`, keyed by chat, so a
//! chat's events stay in commit order on one partition. Every node is a member of the `fanout`
//! group: for each event of its partitions it works out who must hear of it (the chat's
//! members, [`audience::targets`]), where they are connected (the registry) and hands one
//! envelope per node to the [`NodeLink`]. Members of a message's chat with no live session get
//! a push job on `chat.push`. An offset is stored for commit only after its event was handed
//! off, so a node that dies mid-way leaves the event to the partition's next owner.

use super::audience::{self, Target};
use super::cluster::hand_off_batch;
use super::wire::{self, PushJob};
use super::{NodeLink, OutboxRecord, OutboxSink};
use crate::domain::model::Event;
use crate::registry::Registry;
use crate::store::Store;
use crate::{Error, Result};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::ClientContext,
    config::{ClientConfig, RDKafkaLogLevel},
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, Header, Message, OwnedHeaders},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
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

/// How long `connect` waits for the brokers before the node reports Kafka unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages fanned out together: one registry lookup and one round of publishes for all.
const MAX_BATCH: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A failure other than "unavailable" that repeats this often is the message's fault.
const MAX_FAILURES: u32 = 5;
/// Chats whose member lists are cached; past this the cache starts over.
const MEMBER_CACHE_CHATS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub namespace: String,
    pub partitions: i32,
    pub node_id: String,
    pub live_receipts_max_members: usize,
}

/// Topic and group names, with the namespace prefix.
#[derive(Debug, Clone)]
struct Names {
    messages: String,
    push: String,
    dlq: String,
    group: String,
}

impl Names {
    fn new(namespace: &str) -> Self {
        let p = match namespace.is_empty() {
            true => String::new(),
            false => format!("{namespace}."),
        };
        Names {
            messages: format!("{p}chat.messages"),
            push: format!("{p}chat.push"),
            dlq: format!("{p}chat.messages.dlq"),
            group: format!("{p}fanout"),
        }
    }
}

/// librdkafka's log and error reports, into the server's tracing.
#[derive(Clone, Default)]
struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Mostly "all brokers down" while Kafka restarts: the callers see and retry that.
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

/// Counts rebalances, so the fan-out knows its member cache may describe chats of partitions
/// another node has been changing meanwhile.
struct FanoutContext {
    rebalances: Arc<AtomicU64>,
}

impl ClientContext for FanoutContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        LogContext.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        LogContext.error(error, reason)
    }
}

impl ConsumerContext for FanoutContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "fan-out partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "fan-out partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "fan-out rebalance failed"),
        }
    }
}

type Producer_ = FutureProducer<LogContext>;

pub struct KafkaBus {
    settings: KafkaSettings,
    names: Names,
    /// Replaced when the idempotent producer hits a fatal error (it can't recover by itself).
    producer: parking_lot::Mutex<Producer_>,
}

fn kafka_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{context}: Kafka unavailable: {e}"))
}

impl KafkaBus {
    /// Connects and creates the topics that are missing.
    pub async fn connect(s: &KafkaSettings) -> Result<Arc<KafkaBus>> {
        let names = Names::new(&s.namespace);
        let producer = producer(s)?;
        let unreachable =
            |e: String| Error::Unavailable(format!("cannot reach Kafka at {}: {e}", s.brokers));
        let probe = producer.clone();
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, CONNECT_TIMEOUT))
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .map_err(|e| unreachable(e.to_string()))?;

        let admin: AdminClient<LogContext> = base_config(s)
            .create_with_context(LogContext)
            .map_err(|e| unreachable(e.to_string()))?;
        let partitions = s.partitions.max(1);
        let topics: Vec<NewTopic<'_>> = [&names.messages, &names.push, &names.dlq]
            .into_iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(CONNECT_TIMEOUT));
        let results = admin
            .create_topics(&topics, &options)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(topic, partitions, "created Kafka topic"),
                // Another node (or an earlier run) made it.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(unreachable(format!("cannot create topic {topic}: {code}")))
                }
            }
        }
        // A consumer subscribing to a topic its broker doesn't know yet may not look again
        // for minutes, so the topics must be visible before anyone uses them.
        let wanted = [
            names.messages.clone(),
            names.push.clone(),
            names.dlq.clone(),
        ];
        let probe = producer.clone();
        tokio::task::spawn_blocking(move || wait_for_topics(&probe, &wanted))
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .map_err(unreachable)?;
        Ok(Arc::new(KafkaBus {
            settings: s.clone(),
            names,
            producer: parking_lot::Mutex::new(producer),
        }))
    }

    fn producer(&self) -> Producer_ {
        self.producer.lock().clone()
    }

    /// After a fatal error the idempotent producer refuses everything; start a new one.
    fn recover_producer(&self, failed: &Producer_) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self.producer.lock();
        // Someone else replaced it already.
        if current.client().native_ptr() != failed.client().native_ptr() {
            return;
        }
        tracing::error!(%code, reason, "Kafka producer failed fatally; replacing it");
        match producer(&self.settings) {
            Ok(p) => *current = p,
            Err(e) => tracing::error!(error = %e, "cannot create a Kafka producer"),
        }
    }

    /// Produces `records` (topic, key, payload, headers) in order and waits for all of them.
    async fn produce(&self, topic: &str, records: Vec<Produce<'_>>) -> Result<()> {
        let producer = self.producer();
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(records.len());
        let mut failed = None;
        'records: for r in records {
            loop {
                let mut record = FutureRecord::to(topic).payload(r.payload);
                if let Some(key) = r.key {
                    record = record.key(key);
                }
                if let Some(h) = &r.headers {
                    record = record.headers(h.clone());
                }
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    // Only the full queue is worth waiting for; a record must not overtake
                    // the one before it, so this one is retried before the next is queued.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        failed = Some(kafka_error("producing", e));
                        break 'records;
                    }
                }
            }
        }
        for delivery in pending {
            let outcome = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => kafka_error("delivering", e),
                Err(_) => kafka_error("delivering", "producer went away"),
            };
            failed.get_or_insert(outcome);
        }
        match failed {
            None => Ok(()),
            Some(e) => {
                self.recover_producer(&producer);
                Err(e)
            }
        }
    }

    /// The `fanout` consumer group member: runs until shutdown.
    pub async fn run_fanout(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        link: Arc<dyn NodeLink>,
        shutdown: CancellationToken,
    ) {
        let rebalances = Arc::new(AtomicU64::new(0));
        let consumer = {
            let mut delay = BACKOFF_MIN;
            loop {
                match self.consumer(rebalances.clone()) {
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
            bus: &self,
            store,
            registry,
            link,
            shutdown: shutdown.clone(),
            members: HashMap::new(),
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

    fn consumer(&self, rebalances: Arc<AtomicU64>) -> Result<StreamConsumer<FanoutContext>> {
        let mut config = base_config(&self.settings);
        config
            .set("group.id", &self.names.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            // A new group starts at the beginning, not skipping what was produced before it
            // first joined.
            .set("auto.offset.reset", "earliest")
            // The broker answers a fetch as soon as one byte is there, so how long it may
            // hold an empty one costs no latency; a short hold only makes idle consumers poll
            // (5 ms had an idle broker at half a core for two nodes).
            .set("fetch.wait.max.ms", "100")
            .set("fetch.min.bytes", "1")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            // Incremental rebalances: a node joining or leaving doesn't stop every partition.
            // (group.protocol=consumer works too, but with Kafka's default broker settings it
            // took ~5 s to join or hand partitions over, against ~50 ms here, and its session
            // timeout is 45 s, so a dead node's partitions would wait longer.)
            .set("partition.assignment.strategy", "cooperative-sticky");
        let consumer: StreamConsumer<FanoutContext> = config
            .create_with_context(FanoutContext { rebalances })
            .map_err(|e| kafka_error("creating the fan-out consumer", e))?;
        consumer
            .subscribe(&[&self.names.messages])
            .map_err(|e| kafka_error("subscribing the fan-out consumer", e))?;
        Ok(consumer)
    }

    async fn dead_letter(&self, m: &BorrowedMessage<'_>, reason: &str) -> Result<()> {
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
                value: Some(self.settings.node_id.as_str()),
            });
        let record = Produce {
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
            headers: Some(headers),
        };
        self.produce(&self.names.dlq, vec![record]).await
    }
}

struct Produce<'a> {
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    headers: Option<OwnedHeaders>,
}

fn base_config(s: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &s.brokers)
        .set("client.id", format!("chatd-{}", s.node_id))
        .set("socket.nagle.disable", "true")
        .set("log_level", "6");
    config
}

fn producer(s: &KafkaSettings) -> Result<Producer_> {
    let mut config = base_config(s);
    config
        // Per key order across retries, and no duplicates from the producer's own retries.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "1")
        // A relay batch fails (and is offered again) rather than hanging while Kafka is down.
        .set("message.timeout.ms", "30000");
    config
        .create_with_context(LogContext)
        .map_err(|e| Error::Unavailable(format!("cannot reach Kafka at {}: {e}", s.brokers)))
}

fn wait_for_topics(producer: &Producer_, topics: &[String]) -> std::result::Result<(), String> {
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let metadata = producer
            .client()
            .fetch_metadata(None, CONNECT_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let missing: Vec<&String> = topics
            .iter()
            .filter(|t| {
                !metadata.topics().iter().any(|m| {
                    m.name() == t.as_str() && m.error().is_none() && !m.partitions().is_empty()
                })
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("topics {missing:?} did not appear"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
    msg: &'m BorrowedMessage<'c>,
    event: Event,
    /// For messages: every member (see [`audience::targets`]), so also who may need a push.
    targets: Vec<Target>,
}

struct Fanout<'b> {
    bus: &'b KafkaBus,
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    link: Arc<dyn NodeLink>,
    shutdown: CancellationToken,
    /// chat_id → member user ids, as of the last event fanned out.
    members: HashMap<String, Arc<[String]>>,
    rebalances: Arc<AtomicU64>,
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
            let members: Arc<[String]> = change
                .chat
                .members
                .iter()
                .map(|m| m.user_id.clone())
                .collect();
            self.cache(change.chat.chat_id.clone(), members.clone());
            return Some(Ok(members));
        }
        let Some(chat_id) = audience::chat_of(event) else {
            return Some(Ok(Arc::from(Vec::new())));
        };
        if let Some(m) = self.members.get(chat_id) {
            return Some(Ok(m.clone()));
        }
        let mut retry = Retry::default();
        loop {
            match self.store.chat_members(chat_id).await {
                Ok(list) => {
                    let list: Arc<[String]> = list.into();
                    self.cache(chat_id.to_string(), list.clone());
                    return Some(Ok(list));
                }
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

    fn cache(&mut self, chat_id: String, members: Arc<[String]>) {
        if self.members.len() >= MEMBER_CACHE_CHATS && !self.members.contains_key(&chat_id) {
            self.members.clear();
        }
        self.members.insert(chat_id, members);
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
                Ok(()) => return true,
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
            self.bus.produce(&self.bus.names.push, records).await?;
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
            match self.bus.dead_letter(msg, reason).await {
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
}

/// Backoff and failure counting for one step of the fan-out.
struct Retry {
    delay: Duration,
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

#[async_trait]
impl OutboxSink for KafkaBus {
    async fn publish(&self, batch: &[OutboxRecord]) -> Result<()> {
        let records = batch
            .iter()
            .map(|r| Produce {
                key: Some(r.key.as_bytes()),
                payload: &r.payload,
                headers: None,
            })
            .collect();
        self.produce(&self.names.messages, records).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{
        Chat, ChatChange, ChatChangeKind, ChatKind, Member, Message as ChatMessage, Role,
    };
    use crate::redis::pubsub::tests::{listening, namespace, quiet_handlers, redis_url};
    use crate::redis::pubsub::{PubSubHandlers, RedisPubSub};
    use crate::registry::{redis::RedisRegistry, SessionKey};
    use crate::store::{sqlite::SqliteStore, NewChat};
    use rdkafka::message::Headers;
    use tokio::sync::mpsc;

    /// The Kafka brokers of the test services (`CHATD_TEST_KAFKA_BROKERS`). The tests that need
    /// them are `#[ignore]`d; run without them, they fail rather than pass untested.
    fn brokers() -> String {
        match std::env::var("CHATD_TEST_KAFKA_BROKERS") {
            Ok(b) if !b.is_empty() => b,
            _ => panic!(
                "CHATD_TEST_KAFKA_BROKERS is not set: this test needs Kafka. Run `scripts/test`, or \
                 start it (`eval \"$(scripts/services up)\"`), export \
                 CHATD_TEST_KAFKA_BROKERS=$CHATD_KAFKA_BROKERS and run the ignored tests"
            ),
        }
    }

    fn settings(brokers: &str, ns: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.to_string(),
            namespace: ns.to_string(),
            partitions: 2,
            node_id: "a".into(),
            live_receipts_max_members: 100,
        }
    }

    fn message(chat_id: &str, seq: u64) -> Event {
        Event::Message(Arc::new(ChatMessage {
            message_id: format!("m{seq}"),
            chat_id: chat_id.into(),
            seq,
            sender_user_id: "alice".into(),
            sender_device_id: "phone".into(),
            client_msg_id: format!("c{seq}"),
            content: Default::default(),
            created_at: 1000 + seq as i64,
            wire: Default::default(),
        }))
    }

    fn record(id: i64, key: &str, payload: Vec<u8>) -> OutboxRecord {
        OutboxRecord {
            id,
            key: key.into(),
            payload,
        }
    }

    /// Reads `topic` from the start until `n` records arrived.
    async fn read(brokers: &str, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("test-{}", rand::random::<u64>()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} records on {topic}", out.len()))
                .unwrap();
            out.push(m.detach());
        }
        out
    }

    /// Node `id`'s link, reporting envelopes on its channel.
    async fn link(
        url: &str,
        ns: &str,
        id: &str,
        stop: &CancellationToken,
    ) -> (Arc<RedisPubSub>, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handlers = PubSubHandlers {
            on_envelope: Arc::new(move |p| {
                let _ = tx.send(p.to_vec());
            }),
            ..quiet_handlers()
        };
        (listening(url, ns, id, handlers, stop).await, rx)
    }

    #[tokio::test]
    async fn unreachable_kafka_is_reported() {
        let err = KafkaBus::connect(&settings("127.0.0.1:1", "x"))
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(
            matches!(&err, Error::Unavailable(m) if m.starts_with("cannot reach Kafka at 127.0.0.1:1: ")),
            "{err:?}"
        );
    }

    #[tokio::test]
    #[ignore = "needs Redis and Kafka (CHATD_TEST_REDIS_URL, _KAFKA_BROKERS): scripts/test runs it"]
    async fn fans_out_to_member_nodes_and_pushes_to_offline_members() {
        let (url, brokers) = (redis_url(), brokers());
        let ns = namespace();
        let stop = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
        let (chat, _) = store
            .create_chat(NewChat {
                kind: ChatKind::Group,
                title: "g".into(),
                direct_key: None,
                members: vec![
                    ("alice".into(), Role::Admin),
                    ("bob".into(), Role::Member),
                    ("carol".into(), Role::Member),
                ],
                created_at: 1,
            })
            .await
            .unwrap();
        let chat_id = chat.chat_id.clone();

        let (link_a, _) = link(&url, &ns, "a", &stop).await;
        let (link_b, mut on_b) = link(&url, &ns, "b", &stop).await;
        let registry_a = RedisRegistry::connect(&url, &ns, "a", 60_000, link_a.clone())
            .await
            .unwrap();
        let registry_b = RedisRegistry::connect(&url, &ns, "b", 60_000, link_b.clone())
            .await
            .unwrap();
        registry_b
            .connect(&SessionKey {
                user_id: "bob".into(),
                device_id: "laptop".into(),
                session_id: 1,
            })
            .await
            .unwrap();

        let bus = KafkaBus::connect(&settings(&brokers, &ns)).await.unwrap();
        // Connecting again finds the topics there.
        KafkaBus::connect(&settings(&brokers, &ns)).await.unwrap();
        tokio::spawn(bus.clone().run_fanout(
            store.clone(),
            registry_a.clone(),
            link_a.clone(),
            stop.clone(),
        ));

        // dave joins (the store doesn't know: the fan-out must take members from the event).
        let mut members = chat.members.clone();
        members.push(Member {
            user_id: "dave".into(),
            role: Role::Member,
            joined_at: 2,
            joined_seq: 2,
        });
        let added = Event::Chat(Arc::new(ChatChange {
            kind: ChatChangeKind::MemberAdded,
            chat: Chat { members, ..chat },
            user_ids: vec!["dave".into()],
        }));
        bus.publish(&[
            record(1, &chat_id, wire::encode_event(&message(&chat_id, 1))),
            record(2, &chat_id, b"not an event".to_vec()),
            record(3, &chat_id, wire::encode_event(&message(&chat_id, 2))),
            record(4, &chat_id, wire::encode_event(&added)),
            record(5, &chat_id, wire::encode_event(&message(&chat_id, 3))),
        ])
        .await
        .unwrap();

        // bob's node gets each event once, in order, addressed to bob.
        let mut got = Vec::new();
        for _ in 0..4 {
            let envelope = tokio::time::timeout(Duration::from_secs(30), on_b.recv())
                .await
                .expect("envelope for node b")
                .unwrap();
            let (targets, event) = wire::decode_envelope(&envelope).unwrap();
            assert_eq!(
                targets,
                vec![Target {
                    user_id: "bob".into(),
                    skip_device: None
                }]
            );
            got.push(match event {
                Event::Message(m) => format!("m{}", m.seq),
                Event::Chat(c) => format!("{:?}", c.kind),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(got, ["m1", "m2", "MemberAdded", "m3"]);

        let jobs: Vec<(String, PushJob)> = read(&brokers, &bus.names.push, 4)
            .await
            .into_iter()
            .map(|m| {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                (key, serde_json::from_slice(m.payload().unwrap()).unwrap())
            })
            .collect();
        let mut seen: Vec<(String, u64)> = jobs
            .iter()
            .map(|(key, job)| {
                assert_eq!(*key, job.user_id);
                assert_eq!(job.chat_id, chat_id);
                (job.user_id.clone(), job.seq)
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("carol".to_string(), 1),
                ("carol".to_string(), 2),
                ("carol".to_string(), 3),
                ("dave".to_string(), 3)
            ]
        );

        let dead = read(&brokers, &bus.names.dlq, 1).await;
        assert_eq!(dead[0].payload(), Some(&b"not an event"[..]));
        let headers = dead[0].headers().unwrap();
        let reason = headers
            .iter()
            .find(|h| h.key == "chatd-dlq-reason")
            .and_then(|h| h.value)
            .unwrap();
        assert!(String::from_utf8_lossy(reason).contains("undecodable"));
        stop.cancel();
    }

    /// Many events of a few chats, fanned out in big batches to two nodes: each node's
    /// channel carries every chat's events exactly once, in seq order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis and Kafka (CHATD_TEST_REDIS_URL, _KAFKA_BROKERS): scripts/test runs it"]
    async fn each_node_gets_every_chats_events_in_order_under_load() {
        let (url, brokers) = (redis_url(), brokers());
        const CHATS: usize = 4;
        const PER_CHAT: u64 = 5_000;
        let ns = namespace();
        let stop = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
        let mut chats = Vec::new();
        for i in 0..CHATS {
            // s{i} sends; b{i} is on node b, c{i} on node c, both{i} on both.
            let (chat, _) = store
                .create_chat(NewChat {
                    kind: ChatKind::Group,
                    title: "g".into(),
                    direct_key: None,
                    members: ["s", "b", "c", "both"]
                        .iter()
                        .map(|p| (format!("{p}{i}"), Role::Member))
                        .collect(),
                    created_at: 1,
                })
                .await
                .unwrap();
            chats.push(chat.chat_id);
        }
        let (link_a, _) = link(&url, &ns, "a", &stop).await;
        let (link_b, mut on_b) = link(&url, &ns, "b", &stop).await;
        let (link_c, mut on_c) = link(&url, &ns, "c", &stop).await;
        let registry_a = RedisRegistry::connect(&url, &ns, "a", 60_000, link_a.clone())
            .await
            .unwrap();
        let mut registries = Vec::new();
        let mut session_id = 0;
        for (node, link, prefixes) in [("b", link_b, ["b", "both"]), ("c", link_c, ["c", "both"])] {
            let registry = RedisRegistry::connect(&url, &ns, node, 60_000, link)
                .await
                .unwrap();
            for i in 0..CHATS {
                for p in prefixes {
                    session_id += 1;
                    registry
                        .connect(&SessionKey {
                            user_id: format!("{p}{i}"),
                            device_id: "d".into(),
                            session_id,
                        })
                        .await
                        .unwrap();
                }
            }
            registries.push(registry);
        }
        let mut s = settings(&brokers, &ns);
        s.partitions = 4;
        let bus = KafkaBus::connect(&s).await.unwrap();
        tokio::spawn(
            bus.clone()
                .run_fanout(store, registry_a, link_a, stop.clone()),
        );

        // Chats interleaved, published in large batches so the fan-out gets full batches.
        let mut records = Vec::new();
        for seq in 1..=PER_CHAT {
            for (i, chat) in chats.iter().enumerate() {
                let mut e = message(chat, seq);
                if let Event::Message(m) = &mut e {
                    Arc::make_mut(m).sender_user_id = format!("s{i}");
                }
                records.push(record(records.len() as i64, chat, wire::encode_event(&e)));
            }
        }
        let producer = {
            let bus = bus.clone();
            tokio::spawn(async move {
                for chunk in records.chunks(2_000) {
                    bus.publish(chunk).await.unwrap();
                }
            })
        };

        // Order check: a seq may repeat an earlier one (a batch sent again after an error is
        // allowed to), but never skip ahead: an event overtaking an earlier one would.
        for (node, on_node) in [("b", &mut on_b), ("c", &mut on_c)] {
            let mut high = vec![0u64; CHATS];
            let (mut n, mut repeats) = (0u64, 0u64);
            while high.iter().any(|h| *h < PER_CHAT) {
                let envelope = tokio::time::timeout(Duration::from_secs(60), on_node.recv())
                    .await
                    .unwrap_or_else(|_| panic!("node {node}: stuck at {high:?} after {n}"))
                    .unwrap();
                n += 1;
                let (targets, event) = wire::decode_envelope(&envelope).unwrap();
                let Event::Message(m) = event else {
                    panic!("not a message")
                };
                let i = chats.iter().position(|c| *c == m.chat_id).unwrap();
                let mut users: Vec<String> = targets.into_iter().map(|t| t.user_id).collect();
                users.sort();
                let mut want = [format!("both{i}"), format!("{node}{i}")];
                want.sort();
                assert_eq!(users, want);
                assert!(
                    m.seq <= high[i] + 1,
                    "node {node}, chat {i}: seq {} after {} (envelope {n})",
                    m.seq,
                    high[i]
                );
                if m.seq <= high[i] {
                    repeats += 1;
                }
                high[i] = high[i].max(m.seq);
            }
            eprintln!("node {node}: {n} envelopes, {repeats} repeats");
        }
        producer.await.unwrap();
        stop.cancel();
    }

    /// A node's fan-out stops; another takes its partitions over without losing events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis and Kafka (CHATD_TEST_REDIS_URL, _KAFKA_BROKERS): scripts/test runs it"]
    async fn another_node_takes_over_the_partitions() {
        let (url, brokers) = (redis_url(), brokers());
        let ns = namespace();
        let stop = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
        let (chat, _) = store
            .create_chat(NewChat {
                kind: ChatKind::Direct,
                title: String::new(),
                direct_key: Some("alice|bob".into()),
                members: vec![("alice".into(), Role::Member), ("bob".into(), Role::Member)],
                created_at: 1,
            })
            .await
            .unwrap();
        let (link_a, _) = link(&url, &ns, "a", &stop).await;
        let (link_b, mut on_b) = link(&url, &ns, "b", &stop).await;
        let registry = RedisRegistry::connect(&url, &ns, "b", 60_000, link_b.clone())
            .await
            .unwrap();
        registry
            .connect(&SessionKey {
                user_id: "bob".into(),
                device_id: "laptop".into(),
                session_id: 1,
            })
            .await
            .unwrap();
        let bus_a = KafkaBus::connect(&settings(&brokers, &ns)).await.unwrap();
        let bus_b = KafkaBus::connect(&settings(&brokers, &ns)).await.unwrap();
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let fanout_a = tokio::spawn(bus_a.clone().run_fanout(
            store.clone(),
            registry.clone(),
            link_a.clone(),
            stop_a.clone(),
        ));
        let send = |from: u64, to: u64| {
            let records: Vec<OutboxRecord> = (from..=to)
                .map(|seq| {
                    record(
                        seq as i64,
                        &chat.chat_id,
                        wire::encode_event(&message(&chat.chat_id, seq)),
                    )
                })
                .collect();
            let bus = bus_a.clone();
            async move { bus.publish(&records).await.unwrap() }
        };
        // Envelopes until `last` arrived; replays (seq at or below the highest seen) are
        // allowed, gaps are not.
        async fn receive(on_b: &mut mpsc::UnboundedReceiver<Vec<u8>>, mut high: u64, last: u64) {
            while high < last {
                let envelope = tokio::time::timeout(Duration::from_secs(30), on_b.recv())
                    .await
                    .unwrap_or_else(|_| panic!("stuck after seq {high}"))
                    .unwrap();
                let Ok((_, Event::Message(m))) = wire::decode_envelope(&envelope) else {
                    panic!("not a message");
                };
                assert!(m.seq <= high + 1, "seq {} after {high}", m.seq);
                high = high.max(m.seq);
            }
        }
        send(1, 50).await;
        receive(&mut on_b, 0, 50).await;

        tokio::spawn(bus_b.clone().run_fanout(
            store.clone(),
            registry.clone(),
            link_a.clone(),
            stop_b.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop_a.cancel();
        fanout_a.await.unwrap();
        let started = std::time::Instant::now();
        send(51, 100).await;
        receive(&mut on_b, 50, 100).await;
        eprintln!(
            "handover: events flowed again after {:?}",
            started.elapsed()
        );
        stop_b.cancel();
        stop.cancel();
    }

    /// Throughput of the whole pipeline: outbox sink → Kafka → fan-out → Redis → node channel.
    /// `cargo test -p chatd --lib --release bus::kafka -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark, needs Redis and Kafka: run by hand (-- --ignored throughput)"]
    async fn throughput() {
        let (url, brokers) = (redis_url(), brokers());
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_test_writer()
            .try_init();
        const N: u64 = 50_000;
        const CHATS: u64 = 200;
        let ns = namespace();
        let stop = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let (store, _outbox) = SqliteStore::open(dir.path()).unwrap();
        let mut chats = Vec::new();
        for i in 0..CHATS {
            let (chat, _) = store
                .create_chat(NewChat {
                    kind: ChatKind::Group,
                    title: "g".into(),
                    direct_key: None,
                    members: vec![
                        (format!("s{i}"), Role::Admin),
                        (format!("r{i}"), Role::Member),
                        (format!("o{i}"), Role::Member),
                    ],
                    created_at: 1,
                })
                .await
                .unwrap();
            chats.push(chat.chat_id);
        }
        let (link_a, _) = link(&url, &ns, "a", &stop).await;
        let (link_b, mut on_b) = link(&url, &ns, "b", &stop).await;
        let registry_a = RedisRegistry::connect(&url, &ns, "a", 60_000, link_a.clone())
            .await
            .unwrap();
        let registry_b = RedisRegistry::connect(&url, &ns, "b", 60_000, link_b)
            .await
            .unwrap();
        for i in 0..CHATS {
            for user in [format!("s{i}"), format!("r{i}")] {
                registry_b
                    .connect(&SessionKey {
                        user_id: user,
                        device_id: "d".into(),
                        session_id: i,
                    })
                    .await
                    .unwrap();
            }
        }
        let chats_0 = chats[0].clone();
        let mut s = settings(&brokers, &ns);
        s.partitions = 8;
        let bus = KafkaBus::connect(&s).await.unwrap();
        tokio::spawn(
            bus.clone()
                .run_fanout(store, registry_a, link_a, stop.clone()),
        );

        // Time to the first envelope includes joining the group.
        let warmup = format!("{}", rand::random::<u64>());
        bus.publish(&[record(0, &warmup, wire::encode_event(&message(&warmup, 1)))])
            .await
            .unwrap();
        let mut warm = Vec::new();
        for i in 0..CHATS {
            let chat = chats[i as usize].clone();
            let mut e = message(&chat, 0);
            if let Event::Message(m) = &mut e {
                Arc::make_mut(m).sender_user_id = format!("s{i}");
            }
            warm.push(record(0, &chat, wire::encode_event(&e)));
        }
        let joined = std::time::Instant::now();
        bus.publish(&warm).await.unwrap();
        for _ in 0..CHATS {
            tokio::time::timeout(Duration::from_secs(60), on_b.recv())
                .await
                .expect("warm-up envelope")
                .unwrap();
        }
        eprintln!("first envelopes after {:?}", joined.elapsed());

        let now_us = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64
        };
        let started = std::time::Instant::now();
        let producer = {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut id = 0i64;
                for round in 0..N / CHATS / 10 {
                    let mut batch = Vec::new();
                    for k in 0..10 {
                        for (i, chat) in chats.iter().enumerate() {
                            id += 1;
                            let mut e = message(chat, round * 10 + k + 1);
                            if let Event::Message(m) = &mut e {
                                let m = Arc::make_mut(m);
                                m.sender_user_id = format!("s{i}");
                                m.created_at = now_us();
                            }
                            batch.push(record(id, chat, wire::encode_event(&e)));
                        }
                    }
                    bus.publish(&batch).await.unwrap();
                }
                started.elapsed()
            })
        };
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut latencies_us = Vec::new();
        let (mut disorder, mut n) = (0, 0);
        for _ in 0..N {
            let envelope = tokio::time::timeout(Duration::from_secs(60), on_b.recv())
                .await
                .expect("envelope")
                .unwrap();
            let (targets, event) = wire::decode_envelope(&envelope).unwrap();
            assert_eq!(targets.len(), 2);
            let Event::Message(m) = event else { panic!() };
            let prev = last.insert(m.chat_id.clone(), m.seq).unwrap_or(0);
            if m.seq != prev + 1 {
                disorder += 1;
                if disorder < 10 {
                    eprintln!(
                        "chat {} seq {} after {prev} (envelope {n})",
                        m.chat_id, m.seq
                    );
                }
            }
            n += 1;
            latencies_us.push(now_us() - m.created_at);
        }
        let produced = producer.await.unwrap();
        let total = started.elapsed();
        if disorder > 0 {
            let all = read(&brokers, &bus.names.messages, (N + CHATS + 1) as usize).await;
            let mut last: HashMap<String, u64> = HashMap::new();
            let mut bad = 0;
            for m in &all {
                if let Ok(Event::Message(msg)) = wire::decode_event(m.payload().unwrap()) {
                    if msg.seq == 0 || msg.chat_id == warmup {
                        continue;
                    }
                    let prev = last.insert(msg.chat_id.clone(), msg.seq).unwrap_or(0);
                    if msg.seq != prev + 1 {
                        bad += 1;
                        if bad < 5 {
                            eprintln!(
                                "kafka: chat {} seq {} after {prev} at p{} o{}",
                                msg.chat_id,
                                msg.seq,
                                m.partition(),
                                m.offset()
                            );
                        }
                    }
                }
            }
            eprintln!("kafka order violations: {bad}");
        }
        assert_eq!(disorder, 0, "in order per chat");
        latencies_us.sort();
        let pct = |p: usize| latencies_us[latencies_us.len() * p / 100] as f64 / 1000.0;
        eprintln!(
            "{N} messages: produced in {produced:?}, fanned out in {total:?} = {:.0} msgs/s; \
             latency under that load p50 {:.1} ms, p99 {:.1} ms",
            N as f64 / total.as_secs_f64(),
            pct(50),
            pct(99)
        );

        // Latency of single messages on an idle pipeline.
        let mut idle = Vec::new();
        for seq in 1..=50u64 {
            let mut e = message(&warmup, seq + 1);
            if let Event::Message(m) = &mut e {
                Arc::make_mut(m).created_at = now_us();
            }
            let mut e2 = e.clone();
            if let Event::Message(m) = &mut e2 {
                let m = Arc::make_mut(m);
                m.chat_id = chats_0.clone();
                m.sender_user_id = "s0".into();
                m.seq = N / CHATS + seq;
            }
            let sent = std::time::Instant::now();
            bus.publish(&[record(1, &chats_0, wire::encode_event(&e2))])
                .await
                .unwrap();
            on_b.recv().await.unwrap();
            idle.push(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        idle.sort();
        eprintln!(
            "idle latency (outbox publish → node channel): p50 {:?}, max {:?}",
            idle[idle.len() / 2],
            idle[idle.len() - 1]
        );
        stop.cancel();
    }
}
