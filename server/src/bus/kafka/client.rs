//! rdkafka plumbing: client configuration, the topics, the producer (replaced when it fails
//! for good), the fan-out consumer, librdkafka's logs into tracing, and Kafka's errors as
//! [`Error::Unavailable`].

use super::KafkaSettings;
use crate::domain::model::PushProvider;
use crate::{Error, Result};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::ClientContext,
    config::{ClientConfig, RDKafkaLogLevel},
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedHeaders,
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _},
};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

/// How long `connect` waits for the brokers before the node reports Kafka unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Topic and group names, with the namespace prefix.
#[derive(Debug, Clone)]
pub(super) struct Names {
    /// Every committed event, keyed by chat.
    pub(super) messages: String,
    /// Push jobs for members with no live session, keyed by user.
    pub(super) push: String,
    /// Events the fan-out gave up on, with the reason in a header.
    pub(super) dlq: String,
    /// The consumer group every node's fan-out joins.
    pub(super) group: String,
    /// Where the push workers' failed pushes go.
    pub(super) push_dlq: String,
    /// The prefix of the push workers' groups, one per provider.
    push_groups: String,
}

impl Names {
    pub(super) fn new(namespace: &str) -> Self {
        let p = match namespace.is_empty() {
            true => String::new(),
            false => format!("{namespace}."),
        };
        Names {
            messages: format!("{p}chat.messages"),
            push: format!("{p}chat.push"),
            dlq: format!("{p}chat.messages.dlq"),
            group: format!("{p}fanout"),
            push_dlq: format!("{p}chat.push.dlq"),
            push_groups: format!("{p}push"),
        }
    }

    /// The group of `provider`'s push lane: each provider keeps its own position in
    /// `chat.push`, so one that stalls holds back only its own pushes.
    pub(super) fn push_group(&self, provider: PushProvider) -> String {
        format!("{}.{}", self.push_groups, provider.name())
    }

    fn topics(&self) -> [&String; 4] {
        [&self.messages, &self.push, &self.dlq, &self.push_dlq]
    }
}

/// librdkafka's log and error reports, into the server's tracing.
#[derive(Clone, Default)]
pub(super) struct LogContext {
    /// The last error librdkafka reported, for the message of a failed connect: the failure
    /// itself says only that no broker answered, this says why (a TLS handshake refused, a
    /// certificate not trusted, a connection refused).
    last_error: Arc<parking_lot::Mutex<Option<String>>>,
}

impl LogContext {
    fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // "1/1 brokers are down" follows the error that says why; keep that one.
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            *self.last_error.lock() = Some(reason.to_string());
        }
        // Mostly "all brokers down" while Kafka restarts: the callers see and retry that.
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

fn log_line(level: RDKafkaLogLevel, fac: &str, message: &str) {
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

/// Counts rebalances, so the fan-out knows its member cache may describe chats of partitions
/// another node has been changing meanwhile.
pub(super) struct FanoutContext {
    /// Bumped after every rebalance; the fan-out compares it with the count it last saw.
    pub(super) rebalances: Arc<AtomicU64>,
}

impl ClientContext for FanoutContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
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

fn kafka_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{context}: Kafka unavailable: {e}"))
}

/// Reaches the brokers, creates the topics that are missing, waits until they are visible and
/// returns the producer it did that with.
pub(super) async fn connect(s: &KafkaSettings, names: &Names) -> Result<Producer> {
    let log = LogContext::default();
    let producer = new_producer(s, log.clone())?;
    let unreachable =
        |e: String| Error::Unavailable(format!("cannot reach Kafka at {}: {e}", s.brokers));
    let probe = producer.clone();
    let reached =
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, CONNECT_TIMEOUT))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    if let Err(e) = reached {
        return Err(unreachable(match log.last_error() {
            Some(why) => format!("{e}; last error: {why}"),
            None => e.to_string(),
        }));
    }

    let admin: AdminClient<LogContext> = base_config(s)
        .create_with_context(LogContext::default())
        .map_err(|e| unreachable(e.to_string()))?;
    let partitions = s.partitions.max(1);
    let topics: Vec<NewTopic<'_>> = names
        .topics()
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
    let wanted: Vec<String> = names.topics().into_iter().cloned().collect();
    let probe = producer.clone();
    tokio::task::spawn_blocking(move || wait_for_topics(&probe, &wanted))
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .map_err(unreachable)?;
    Ok(Producer {
        settings: s.clone(),
        current: parking_lot::Mutex::new(producer),
    })
}

fn base_config(s: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &s.brokers)
        .set("client.id", format!("chatd-{}", s.node_id))
        .set("socket.nagle.disable", "true")
        .set("log_level", "6");
    if s.tls.is_set() {
        // `https` (the broker's name must be in its certificate) is librdkafka's default since
        // 1.9; said here so that no other default ever turns the check off.
        config
            .set("security.protocol", "ssl")
            .set("ssl.endpoint.identification.algorithm", "https");
        if let Some(ca) = &s.tls.ca {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some((cert, key)) = s.tls.client_pair() {
            config
                .set("ssl.certificate.location", cert.display().to_string())
                .set("ssl.key.location", key.display().to_string());
        }
    }
    config
}

/// A member of the `fanout` group, subscribed to the messages topic, storing offsets only
/// when told to (see `fanout::store_offsets`).
pub(super) fn fanout_consumer(
    s: &KafkaSettings,
    names: &Names,
    rebalances: Arc<AtomicU64>,
) -> Result<StreamConsumer<FanoutContext>> {
    let mut config = base_config(s);
    config
        .set("group.id", &names.group)
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
        .subscribe(&[&names.messages])
        .map_err(|e| kafka_error("subscribing the fan-out consumer", e))?;
    Ok(consumer)
}

/// A member of the `push` group on `chat.push`, committing only when told (a job is done once
/// its pushes are).
pub(super) fn push_consumer(
    s: &KafkaSettings,
    names: &Names,
    provider: PushProvider,
) -> Result<StreamConsumer<FanoutContext>> {
    let mut config = base_config(s);
    config
        .set("group.id", names.push_group(provider))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("partition.assignment.strategy", "cooperative-sticky");
    let consumer: StreamConsumer<FanoutContext> = config
        // The push group's rebalances are not counted: a worker only commits what it sent.
        .create_with_context(FanoutContext {
            rebalances: Arc::default(),
        })
        .map_err(|e| kafka_error("creating the push consumer", e))?;
    consumer
        .subscribe(&[&names.push])
        .map_err(|e| kafka_error("subscribing the push consumer", e))?;
    Ok(consumer)
}

type Rdkafka = FutureProducer<LogContext>;

fn new_producer(s: &KafkaSettings, log: LogContext) -> Result<Rdkafka> {
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
        .create_with_context(log)
        .map_err(|e| Error::Unavailable(format!("cannot reach Kafka at {}: {e}", s.brokers)))
}

fn wait_for_topics(producer: &Rdkafka, topics: &[String]) -> std::result::Result<(), String> {
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

/// One record to produce: key, payload, headers.
pub(super) struct Produce<'a> {
    /// Decides the partition, hence the order: chat id for events, user id for push jobs.
    pub(super) key: Option<&'a [u8]>,
    pub(super) payload: &'a [u8],
    /// Only dead letters carry some (why and where from).
    pub(super) headers: Option<OwnedHeaders>,
}

/// The idempotent producer, shared by everything this node writes to Kafka.
pub(super) struct Producer {
    /// To build a new producer after a fatal error.
    settings: KafkaSettings,
    /// Replaced when the idempotent producer hits a fatal error (it can't recover by itself).
    current: parking_lot::Mutex<Rdkafka>,
}

impl Producer {
    fn current(&self) -> Rdkafka {
        self.current.lock().clone()
    }

    /// After a fatal error the idempotent producer refuses everything; start a new one.
    fn recover(&self, failed: &Rdkafka) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self.current.lock();
        // Someone else replaced it already.
        if current.client().native_ptr() != failed.client().native_ptr() {
            return;
        }
        tracing::error!(%code, reason, "Kafka producer failed fatally; replacing it");
        match new_producer(&self.settings, LogContext::default()) {
            Ok(p) => *current = p,
            Err(e) => tracing::error!(error = %e, "cannot create a Kafka producer"),
        }
    }

    /// Records `topic` holds now, over all its partitions (high minus low watermark).
    pub(super) async fn retained(&self, topic: &str) -> Result<u64> {
        let producer = self.current();
        let topic = topic.to_string();
        let count = move || -> std::result::Result<u64, KafkaError> {
            let client = producer.client();
            let metadata = client.fetch_metadata(Some(&topic), CONNECT_TIMEOUT)?;
            let mut total = 0;
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (low, high) = client.fetch_watermarks(&topic, p.id(), CONNECT_TIMEOUT)?;
                    total += (high - low).max(0) as u64;
                }
            }
            Ok(total)
        };
        tokio::task::spawn_blocking(count)
            .await
            .map_err(|e| kafka_error("counting records", e))?
            .map_err(|e| kafka_error("counting records", e))
    }

    /// Produces `records` to `topic` in order and waits for all of them.
    pub(super) async fn produce(&self, topic: &str, records: Vec<Produce<'_>>) -> Result<()> {
        let producer = self.current();
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
                self.recover(&producer);
                Err(e)
            }
        }
    }
}
