//! Redis Pub/Sub between nodes: `node.{node_id}` channels and presence channels.
//!
//! One dedicated subscriber connection per node carries this node's channel and the presence
//! channels of the users its sessions watch; publishing goes over a separate auto-reconnecting
//! connection. Pub/Sub is at most once: when the subscriber connection is lost, whatever was
//! published meanwhile is gone, so after re-subscribing the node is told (`on_reconnect`) and
//! makes its sessions catch up from the store.

use super::{
    connection_manager, open_client, query, redis_error, redis_prefix, RedisTarget, Request,
    BACKOFF_MAX, BACKOFF_MIN, COMMAND_TIMEOUT, CONNECT_TIMEOUT,
};
use crate::{Error, Result};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// A connection that silently died (no RST, e.g. a partition) shows up by an unanswered PING.
const PING_EVERY: Duration = Duration::from_secs(3);
/// Bounds on one pipeline of [`RedisPubSub::publish_to_nodes`]: a longer batch goes as several
/// pipelines, each sent once the one before it was answered.
const PIPELINE_MAX_COMMANDS: usize = 4096;
const PIPELINE_MAX_BYTES: usize = 4 << 20;
/// Channels per SUBSCRIBE when re-subscribing, so one command stays a reasonable size.
const SUBSCRIBE_CHUNK: usize = 1000;

pub type EnvelopeHandler = Arc<dyn Fn(&[u8]) + Send + Sync>;
pub type PresenceHandler = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// What the node does with what arrives on its channels. Called on the subscriber task: they
/// must not block.
pub struct PubSubHandlers {
    /// The raw payload of every message on this node's channel (an encoded envelope).
    pub on_envelope: EnvelopeHandler,
    /// `(user_id, payload)` of every message on a presence channel.
    pub on_presence: PresenceHandler,
    /// The link lost Redis and is back, with every channel subscribed again.
    pub on_reconnect: Arc<dyn Fn() + Send + Sync>,
}

/// The subscriber connection's control side and what it must be subscribed to. Changed only
/// under the lock, so a re-subscription after a reconnect never misses a concurrent change.
struct Subscriptions {
    /// `None` while the link is down.
    sink: Option<PubSubSink>,
    /// Presence channels wanted, whether or not the link is up.
    presence: HashSet<String>,
}

pub struct RedisPubSub {
    client: redis::Client,
    addr: String,
    node_channel: String,
    /// `{prefix}node.`: a node's channel is this plus its id.
    node_channel_prefix: String,
    /// `{prefix}presence.`: a user's presence channel is this plus the user id.
    presence_prefix: String,
    publisher: ConnectionManager,
    subs: Mutex<Subscriptions>,
    /// The subscriber connection between [`RedisPubSub::connect`] and [`RedisPubSub::listen`];
    /// what arrives meanwhile waits in it.
    unheard: parking_lot::Mutex<Option<PubSubStream>>,
}

impl RedisPubSub {
    /// Connects the publisher and subscribes to this node's channel. Nothing is dispatched
    /// until [`RedisPubSub::listen`], so the handlers may use what is built on this link (the
    /// registry's presence) without a late-bound cell.
    pub async fn connect(
        redis: &RedisTarget,
        namespace: &str,
        node_id: &str,
    ) -> Result<Arc<RedisPubSub>> {
        let client = open_client(redis)?;
        let addr = client.get_connection_info().addr().to_string();
        let publisher = connection_manager(&client).await?;
        let prefix = redis_prefix(namespace);
        let node_channel_prefix = format!("{prefix}node.");
        let link = Arc::new(RedisPubSub {
            client,
            addr,
            node_channel: format!("{node_channel_prefix}{node_id}"),
            node_channel_prefix,
            presence_prefix: format!("{prefix}presence."),
            publisher,
            subs: Mutex::new(Subscriptions {
                sink: None,
                presence: HashSet::new(),
            }),
            unheard: parking_lot::Mutex::new(None),
        });
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, link.establish()).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(link.unreachable(e.to_string())),
            Err(_) => return Err(link.unreachable("timed out subscribing".into())),
        };
        *link.unheard.lock() = Some(stream);
        Ok(link)
    }

    /// Starts dispatching to `handlers` and keeps the link up until `shutdown`. Only the first
    /// call does anything.
    pub fn listen(self: &Arc<Self>, handlers: PubSubHandlers, shutdown: CancellationToken) {
        let Some(stream) = self.unheard.lock().take() else {
            tracing::warn!("Redis Pub/Sub link is already listening");
            return;
        };
        tokio::spawn(self.clone().run(stream, handlers, shutdown));
    }

    fn unreachable(&self, detail: String) -> Error {
        Error::Unavailable(format!(
            "cannot connect to Redis at {}: {detail}",
            self.addr
        ))
    }

    fn presence_channel(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.presence_prefix)
    }

    pub async fn subscribe_presence(&self, user_id: &str) -> Result<()> {
        self.subscribe_presence_many(std::slice::from_ref(&user_id.to_string()))
            .await
    }

    pub async fn unsubscribe_presence(&self, user_id: &str) -> Result<()> {
        self.unsubscribe_presence_many(std::slice::from_ref(&user_id.to_string()))
            .await
    }

    /// Subscribes to the presence channels of `user_ids`. They stay wanted even if this fails
    /// (the link subscribes them when it is back), until unsubscribed.
    pub async fn subscribe_presence_many(&self, user_ids: &[String]) -> Result<()> {
        let channels: Vec<String> = user_ids.iter().map(|u| self.presence_channel(u)).collect();
        let mut subs = self.subs.lock().await;
        subs.presence.extend(channels.iter().cloned());
        let Some(sink) = subs.sink.as_mut() else {
            return Err(Error::Unavailable(
                "Redis Pub/Sub link is down, reconnecting".into(),
            ));
        };
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            timed(sink.subscribe(chunk), "SUBSCRIBE").await?;
        }
        Ok(())
    }

    /// Unsubscribes from the presence channels of `user_ids`; once this returns they are no
    /// longer wanted, even if Redis could not be told (a lost link drops them anyway).
    pub async fn unsubscribe_presence_many(&self, user_ids: &[String]) -> Result<()> {
        let channels: Vec<String> = user_ids.iter().map(|u| self.presence_channel(u)).collect();
        let mut subs = self.subs.lock().await;
        for c in &channels {
            subs.presence.remove(c);
        }
        let Some(sink) = subs.sink.as_mut() else {
            return Ok(());
        };
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            timed(sink.unsubscribe(chunk), "UNSUBSCRIBE").await?;
        }
        Ok(())
    }

    pub async fn publish_presence(&self, user_id: &str, payload: Vec<u8>) -> Result<()> {
        self.publish(self.presence_channel(user_id), payload).await
    }

    async fn publish(&self, channel: String, payload: Vec<u8>) -> Result<()> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        query::<i64>(&self.publisher, Request::Cmd(&cmd), "PUBLISH")
            .await
            .map(|_| ())
    }

    fn node_channel_of(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.node_channel_prefix)
    }

    /// A fresh subscriber connection with every wanted channel subscribed.
    async fn establish(&self) -> redis::RedisResult<PubSubStream> {
        let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
        let mut subs = self.subs.lock().await;
        let mut channels: Vec<&str> = vec![self.node_channel.as_str()];
        channels.extend(subs.presence.iter().map(String::as_str));
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            match tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(chunk)).await {
                Ok(result) => result?,
                Err(_) => return Err(timeout_error("SUBSCRIBE")),
            }
        }
        subs.sink = Some(sink);
        Ok(stream)
    }

    async fn run(
        self: Arc<Self>,
        mut stream: PubSubStream,
        handlers: PubSubHandlers,
        shutdown: CancellationToken,
    ) {
        loop {
            if !self.pump(&mut stream, &handlers, &shutdown).await {
                self.subs.lock().await.sink = None;
                return;
            }
            self.subs.lock().await.sink = None;
            drop(stream);
            tracing::warn!(addr = %self.addr, "lost the Redis Pub/Sub connection; reconnecting");
            let mut delay = BACKOFF_MIN;
            let mut attempts = 0u32;
            stream = loop {
                let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.establish());
                let error = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = attempt => match result {
                        Ok(Ok(stream)) => break stream,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timed out".to_string(),
                    },
                };
                attempts += 1;
                if attempts % 10 == 1 {
                    tracing::warn!(addr = %self.addr, attempts, error, "cannot reconnect Redis Pub/Sub");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            };
            tracing::info!(addr = %self.addr, attempts, "Redis Pub/Sub reconnected");
            (handlers.on_reconnect)();
        }
    }

    /// Dispatches messages until the connection is lost (`true`) or the node shuts down.
    async fn pump(
        &self,
        stream: &mut PubSubStream,
        handlers: &PubSubHandlers,
        shutdown: &CancellationToken,
    ) -> bool {
        let dead = Arc::new(Notify::new());
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                msg = stream.next() => match msg {
                    Some(msg) => self.dispatch(&msg, handlers),
                    None => return true,
                },
                _ = dead.notified() => return true,
                _ = ping.tick() => {
                    let Some(mut sink) = self.subs.lock().await.sink.clone() else {
                        return true;
                    };
                    // The PING answer comes through the connection this loop reads from, so
                    // it is awaited on the side.
                    let dead = dead.clone();
                    tokio::spawn(async move {
                        let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>());
                        if !matches!(pong.await, Ok(Ok(_))) {
                            dead.notify_one();
                        }
                    });
                }
            }
        }
    }

    fn dispatch(&self, msg: &redis::Msg, handlers: &PubSubHandlers) {
        let channel = msg.get_channel_name();
        if channel == self.node_channel {
            (handlers.on_envelope)(msg.get_payload_bytes());
        } else if let Some(user_id) = channel.strip_prefix(&self.presence_prefix) {
            (handlers.on_presence)(user_id, msg.get_payload_bytes());
        }
    }
}

async fn timed<F>(command: F, name: &'static str) -> Result<()>
where
    F: std::future::Future<Output = redis::RedisResult<()>>,
{
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(result) => result.map_err(|e| redis_error(name, e)),
        Err(_) => Err(Error::Unavailable(format!(
            "{name}: Redis did not answer within {}s",
            COMMAND_TIMEOUT.as_secs()
        ))),
    }
}

fn timeout_error(name: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{name} timed out"),
    ))
}

#[cfg(test)]
impl RedisPubSub {
    /// Marks the current subscriber connection (`psub=1` in CLIENT LIST) so a test can kill
    /// exactly this one.
    pub(crate) async fn mark_connection(&self) {
        let mut subs = self.subs.lock().await;
        let sink = subs.sink.as_mut().expect("link is up");
        sink.psubscribe("chatd-test-marker-*")
            .await
            .expect("PSUBSCRIBE");
    }

    /// Kills the marked subscriber connection; returns how many were killed.
    pub(crate) async fn kill_marked_connection(redis_url: &str) -> usize {
        let mut conn = redis::Client::open(redis_url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let list: String = redis::cmd("CLIENT")
            .arg(&["LIST", "TYPE", "pubsub"])
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut killed = 0;
        for line in list.lines().filter(|l| l.contains(" psub=1 ")) {
            let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap();
            let n: i64 = redis::cmd("CLIENT")
                .arg(&["KILL", "ID", id])
                .query_async(&mut conn)
                .await
                .unwrap();
            killed += n as usize;
        }
        killed
    }
}

#[cfg(test)]
impl RedisPubSub {
    /// Kills the publisher's current connection; it reconnects on its next command.
    pub(crate) async fn kill_publisher_connection(&self, redis_url: &str) {
        let mut id = redis::cmd("CLIENT");
        id.arg("ID");
        let id: i64 = query(&self.publisher, Request::Cmd(&id), "CLIENT ID")
            .await
            .unwrap();
        let mut conn = redis::Client::open(redis_url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 1);
    }
}

impl RedisPubSub {
    /// Publishes `envelope` on the channel of node `node_id`.
    pub async fn publish_to_node(&self, node_id: &str, envelope: Vec<u8>) -> Result<()> {
        self.publish(self.node_channel_of(node_id), envelope).await
    }

    /// One pipeline of PUBLISHes: Redis runs a connection's commands in the order they
    /// arrive, so every channel gets its envelopes in the order given, for one round trip.
    /// A batch past the pipeline bounds goes as consecutive pipelines, each sent after the
    /// previous one was answered. After an error some envelopes may have gone out: sending
    /// the batch again repeats them (sessions drop repeats by seq) but reorders nothing.
    pub async fn publish_to_nodes(&self, envelopes: Vec<(String, Vec<u8>)>) -> Result<()> {
        let mut pipe = redis::pipe();
        let mut bytes = 0usize;
        for (node_id, envelope) in envelopes {
            if !pipe.is_empty()
                && (pipe.len() >= PIPELINE_MAX_COMMANDS
                    || bytes + envelope.len() > PIPELINE_MAX_BYTES)
            {
                query::<()>(&self.publisher, Request::Pipe(&pipe), "PUBLISH").await?;
                pipe.clear();
                bytes = 0;
            }
            bytes += envelope.len();
            pipe.cmd("PUBLISH")
                .arg(self.node_channel_of(&node_id))
                .arg(envelope);
        }
        if !pipe.is_empty() {
            query::<()>(&self.publisher, Request::Pipe(&pipe), "PUBLISH").await?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The Redis URL of the test services (`CHATD_TEST_REDIS_URL`). The tests that need it are
    /// `#[ignore]`d; run without it, they fail rather than pass untested.
    pub(crate) fn redis_url() -> String {
        match std::env::var("CHATD_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => panic!(
                "CHATD_TEST_REDIS_URL is not set: this test needs Redis. Run `scripts/test`, or \
                 start it (`eval \"$(scripts/services up)\"`), export \
                 CHATD_TEST_REDIS_URL=$CHATD_REDIS_URL and run the ignored tests"
            ),
        }
    }

    pub(crate) fn namespace() -> String {
        format!("t{}", rand::random::<u64>())
    }

    /// A link that listens with `handlers` right away.
    pub(crate) async fn listening(
        url: &str,
        ns: &str,
        node: &str,
        handlers: PubSubHandlers,
        shutdown: &CancellationToken,
    ) -> Arc<RedisPubSub> {
        let link = RedisPubSub::connect(&RedisTarget::plain(url), ns, node)
            .await
            .unwrap();
        link.listen(handlers, shutdown.clone());
        link
    }

    pub(crate) fn quiet_handlers() -> PubSubHandlers {
        PubSubHandlers {
            on_envelope: Arc::new(|_| {}),
            on_presence: Arc::new(|_, _| {}),
            on_reconnect: Arc::new(|| {}),
        }
    }

    /// Waits up to 5 s for `cond`.
    pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    type Seen = Arc<parking_lot::Mutex<Vec<(String, Vec<u8>)>>>;

    fn recording() -> (PubSubHandlers, Seen, Arc<AtomicUsize>) {
        let seen: Seen = Default::default();
        let reconnects = Arc::new(AtomicUsize::new(0));
        let (s1, s2, r) = (seen.clone(), seen.clone(), reconnects.clone());
        let handlers = PubSubHandlers {
            on_envelope: Arc::new(move |p| s1.lock().push(("node".into(), p.to_vec()))),
            on_presence: Arc::new(move |u, p| s2.lock().push((u.to_string(), p.to_vec()))),
            on_reconnect: Arc::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        };
        (handlers, seen, reconnects)
    }

    #[tokio::test]
    async fn unreachable_redis_is_reported_quickly() {
        let started = std::time::Instant::now();
        let err = RedisPubSub::connect(&RedisTarget::plain("redis://127.0.0.1:1"), "", "n")
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(
            matches!(&err, Error::Unavailable(m) if m.starts_with("cannot connect to Redis at 127.0.0.1:1: ")),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(6));
    }

    #[tokio::test]
    #[ignore = "needs Redis (CHATD_TEST_REDIS_URL): scripts/test runs it"]
    async fn envelopes_and_presence_arrive_and_survive_a_reconnect() {
        let url = redis_url();
        let ns = namespace();
        let shutdown = CancellationToken::new();
        let (handlers, seen, reconnects) = recording();
        let b = listening(&url, &ns, "b", handlers, &shutdown).await;
        let a = listening(&url, &ns, "a", quiet_handlers(), &shutdown).await;
        b.subscribe_presence("alice").await.unwrap();
        b.subscribe_presence("bob").await.unwrap();
        b.unsubscribe_presence("bob").await.unwrap();
        a.publish_to_node("b", b"env1".to_vec()).await.unwrap();
        a.publish_to_node("c", b"not for b".to_vec()).await.unwrap();
        a.publish_presence("alice", b"p1".to_vec()).await.unwrap();
        a.publish_presence("bob", b"unwatched".to_vec())
            .await
            .unwrap();
        eventually("two messages", || seen.lock().len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            *seen.lock(),
            vec![
                ("node".to_string(), b"env1".to_vec()),
                ("alice".to_string(), b"p1".to_vec())
            ]
        );

        b.mark_connection().await;
        assert_eq!(RedisPubSub::kill_marked_connection(&url).await, 1);
        eventually("reconnect", || reconnects.load(Ordering::SeqCst) == 1).await;
        seen.lock().clear();
        a.publish_to_node("b", b"env2".to_vec()).await.unwrap();
        a.publish_presence("alice", b"p2".to_vec()).await.unwrap();
        eventually("messages after the reconnect", || seen.lock().len() >= 2).await;
        assert_eq!(
            *seen.lock(),
            vec![
                ("node".to_string(), b"env2".to_vec()),
                ("alice".to_string(), b"p2".to_vec())
            ]
        );
        shutdown.cancel();
    }

    /// `send_many` keeps each channel's envelopes in the order given, across pipelines and
    /// across a lost publisher connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis (CHATD_TEST_REDIS_URL): scripts/test runs it"]
    async fn send_many_keeps_order_per_node() {
        let url = redis_url();
        let ns = namespace();
        let shutdown = CancellationToken::new();
        let mut received = Vec::new();
        for node in ["b", "c"] {
            let (handlers, seen, _) = recording();
            let link = listening(&url, &ns, node, handlers, &shutdown).await;
            received.push((link, seen));
        }
        let a = listening(&url, &ns, "a", quiet_handlers(), &shutdown).await;
        // More than one pipeline's worth of commands; the first few big ones reach the byte
        // bound (but stay under Redis' default output buffer limit of a subscriber).
        const N: usize = 3 * PIPELINE_MAX_COMMANDS + 17;
        let batch = |round: usize| -> Vec<(String, Vec<u8>)> {
            (0..N)
                .flat_map(|i| {
                    let mut out = vec![("b".to_string(), format!("{round}:{i}").into_bytes())];
                    if i % 3 != 0 {
                        let mut big = format!("{round}:{i}:").into_bytes();
                        big.resize(if i < 9 { 800_000 } else { 64 }, b'x');
                        out.push(("c".to_string(), big));
                    }
                    out
                })
                .collect()
        };
        let expected = |round: usize, node: &str| -> Vec<String> {
            batch(round)
                .into_iter()
                .filter(|(n, _)| n == node)
                .map(|(_, p)| String::from_utf8_lossy(&p[..p.len().min(20)]).into_owned())
                .collect()
        };
        for round in 0..2 {
            if round == 1 {
                a.kill_publisher_connection(&url).await;
            }
            a.publish_to_nodes(batch(round)).await.unwrap();
            for ((_, seen), node) in received.iter().zip(["b", "c"]) {
                let want = expected(round, node);
                eventually("all envelopes", || seen.lock().len() >= want.len()).await;
                let got: Vec<String> = std::mem::take(&mut *seen.lock())
                    .into_iter()
                    .map(|(_, p)| String::from_utf8_lossy(&p[..p.len().min(20)]).into_owned())
                    .collect();
                assert!(got == want, "node {node}, round {round}: out of order");
            }
        }
        shutdown.cancel();
    }

    fn tls_target(tls: crate::backend_tls::BackendTls) -> RedisTarget {
        RedisTarget {
            url: crate::backend_tls::test_env::var("CHATD_TEST_TLS_REDIS_URL"),
            tls,
        }
    }

    /// The node link, the registry and the quotas over rediss:// with the test CA and a client
    /// certificate (Redis' TLS port requires one), and the link again after Redis dropped it:
    /// the reconnect must present the certificate too.
    #[tokio::test]
    #[ignore = "needs Redis' TLS port (CHATD_TEST_TLS_REDIS_URL, CHATD_TEST_TLS_CA, CHATD_TEST_REDIS_URL): scripts/test runs it"]
    async fn the_link_the_registry_and_quotas_work_over_mutual_tls() {
        let target = tls_target(crate::backend_tls::test_env::trusted());
        let ns = namespace();
        let shutdown = CancellationToken::new();
        let (handlers, seen, reconnects) = recording();
        let b = RedisPubSub::connect(&target, &ns, "b")
            .await
            .expect("link over TLS");
        b.listen(handlers, shutdown.clone());
        let a = RedisPubSub::connect(&target, &ns, "a")
            .await
            .expect("link over TLS");
        a.listen(quiet_handlers(), shutdown.clone());
        a.publish_to_node("b", b"env1".to_vec()).await.unwrap();
        eventually("an envelope over TLS", || seen.lock().len() == 1).await;

        let registry =
            crate::registry::redis::RedisRegistry::connect(&target, &ns, "a", 60_000, a.clone())
                .await
                .expect("registry over TLS");
        use crate::registry::Registry;
        let session = crate::registry::SessionKey {
            user_id: "alice".into(),
            device_id: "phone".into(),
            session_id: 1,
        };
        registry
            .connect(&session, 0)
            .await
            .expect("a registry write over TLS");
        let nodes = registry.locate(&["alice".to_string()]).await.unwrap();
        assert_eq!(nodes.get("a"), Some(&vec!["alice".to_string()]));
        let quotas = crate::quota::redis::RedisQuotas::connect(&target, &ns)
            .await
            .unwrap();
        use crate::quota::Quotas;
        quotas
            .take("k", 5, 60_000, 1_000)
            .await
            .expect("a quota over TLS");

        // Redis drops the subscriber (killed through the plain port): it comes back over TLS.
        b.mark_connection().await;
        assert_eq!(RedisPubSub::kill_marked_connection(&redis_url()).await, 1);
        eventually("reconnect over TLS", || {
            reconnects.load(Ordering::SeqCst) == 1
        })
        .await;
        a.publish_to_node("b", b"env2".to_vec()).await.unwrap();
        eventually("an envelope after the reconnect", || seen.lock().len() == 2).await;
        shutdown.cancel();
    }

    /// Without a client certificate, with one from a CA Redis does not trust, and trusting a CA
    /// that did not sign Redis' certificate: each connect fails, naming Redis and the reason.
    #[tokio::test]
    #[ignore = "needs Redis' TLS port (CHATD_TEST_TLS_REDIS_URL, CHATD_TEST_TLS_CA): scripts/test runs it"]
    async fn redis_refuses_tls_without_the_right_certificates() {
        use crate::backend_tls::test_env;
        let cases = [
            ("no client certificate", test_env::without_client_cert(), ""),
            (
                "an untrusted client certificate",
                test_env::untrusted_client(),
                "",
            ),
            (
                "an untrusted server certificate",
                test_env::untrusted_ca(),
                "UnknownIssuer",
            ),
        ];
        for (what, tls, why) in cases {
            let err = RedisPubSub::connect(&tls_target(tls), &namespace(), "n")
                .await
                .err()
                .unwrap_or_else(|| panic!("{what}: connected"));
            let text = err.to_string();
            eprintln!("{what}: {text}");
            assert!(
                matches!(&err, Error::Unavailable(m) if m.starts_with("cannot connect to Redis at 127.0.0.1:")),
                "{what}: {err:?}"
            );
            assert!(text.contains(why), "{what}: {text}");
        }
    }
}
