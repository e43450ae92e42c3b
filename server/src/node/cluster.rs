//! A cluster node: PostgreSQL (store and outbox), Redis (registry, presence, node channels)
//! and Kafka (ordered fan-out, push jobs). Connects to all three before serving, and refuses to
//! start with a message that names the one it cannot reach.

use super::{node_id, Backends, StartError, Wiring};
use crate::bus::{
    cluster::{deliver_envelope, EphemeralRouter},
    direct::DirectCopies,
    kafka::{KafkaBus, KafkaSettings},
    NodeLink,
};
use crate::config::{ClusterConfig, Config};
use crate::metrics::Gauge;
use crate::quota::redis::RedisQuotas;
use crate::redis::pubsub::{PubSubHandlers, RedisPubSub};
use crate::redis::RedisTarget;
use crate::registry::{redis::RedisRegistry, Registry};
use crate::store::postgres::{outbox, PgOptions, PgStore};
use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};
use std::time::Duration;

pub(super) async fn start(
    config: &Config,
    cluster: &ClusterConfig,
    w: Wiring,
) -> Result<Backends, StartError> {
    let node_id = config.node_id.clone().unwrap_or_else(node_id);
    let ns = config.namespace.as_str();
    let (pg, local_commits) = PgStore::connect(&PgOptions {
        url: cluster.database_url.clone(),
        pool: config.database_pool,
        migrate: config.migrate_auto,
    })
    .await
    .map_err(StartError::Store)?;
    // Every node must sign and check tokens (and page tokens) with the same key.
    let secret = match &config.jwt_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => pg.shared_secret().await.map_err(StartError::Store)?,
    };

    // The registry's presence rides on the link, and the link's handlers feed the registry:
    // the link is connected first and starts dispatching once the registry exists.
    let redis = RedisTarget {
        url: cluster.redis_url.clone(),
        tls: config.redis_tls.clone(),
    };
    let pubsub = RedisPubSub::connect(&redis, ns, &node_id)
        .await
        .map_err(StartError::Backend)?;
    let redis_registry = RedisRegistry::connect(
        &redis,
        ns,
        &node_id,
        config.heartbeat_timeout_ms,
        pubsub.clone(),
    )
    .await
    .map_err(StartError::Backend)?;
    let handlers = {
        let (dir, dir2) = (w.directory.clone(), w.directory.clone());
        let (reg, reg2) = (redis_registry.clone(), redis_registry.clone());
        PubSubHandlers {
            on_envelope: Arc::new(move |payload: &[u8]| deliver_envelope(dir.as_ref(), payload)),
            on_presence: Arc::new(move |user: &str, payload: &[u8]| reg.on_presence(user, payload)),
            // Redis may have lost the registry and this node missed envelopes meanwhile:
            // re-register every session, then have each re-read its backlog.
            on_reconnect: Arc::new(move || {
                let (registry, directory) = (reg2.clone(), dir2.clone());
                tokio::spawn(async move {
                    if let Err(e) = registry.reregister_all().await {
                        tracing::warn!(error = %e, "cannot re-register sessions after a Redis reconnect");
                    }
                    directory.resync_all();
                });
            }),
        }
    };
    pubsub.listen(handlers, w.shutdown.clone());
    let registry: Arc<dyn Registry> = redis_registry.clone();
    let quotas = RedisQuotas::connect(&redis, ns)
        .await
        .map_err(StartError::Backend)?;

    let kafka = KafkaBus::connect(&KafkaSettings {
        brokers: cluster.kafka_brokers.clone(),
        tls: config.kafka_tls.clone(),
        namespace: ns.to_string(),
        partitions: config.kafka_partitions as i32,
        node_id: node_id.clone(),
        live_receipts_max_members: config.live_receipts_max_members as usize,
    })
    .await
    .map_err(StartError::Backend)?;

    let store: Arc<dyn crate::store::Store> = pg.clone();
    let shutdown = w.shutdown.clone();
    let mut tasks = vec![
        tokio::spawn(redis_registry.run_refresher(shutdown.clone())),
        tokio::spawn(outbox::OutboxRelay::new(pg.pool(), kafka.clone()).run(shutdown.clone())),
        tokio::spawn(kafka.run_fanout(
            store.clone(),
            registry.clone(),
            pubsub.clone(),
            shutdown.clone(),
        )),
    ];
    let link: Arc<dyn NodeLink> = pubsub.clone();
    let mut router = EphemeralRouter::new(
        store.clone(),
        registry.clone(),
        pubsub,
        w.typing,
        pg.clone(),
        config.live_receipts_max_members as usize,
    );
    if config.direct_copies {
        let (copier, copies) = DirectCopies::new(
            store.clone(),
            registry.clone(),
            link.clone(),
            w.directory.clone(),
            node_id.clone(),
        );
        tasks.push(tokio::spawn(copies.run(shutdown.clone())));
        router = router.with_direct_copies(copier);
    }
    tasks.push(tokio::spawn(router.run(
        w.ephemeral,
        local_commits,
        shutdown.clone(),
    )));

    // The outbox depth is a query; sample it rather than run it at every scrape.
    let outbox_depth = Arc::new(AtomicI64::new(0));
    {
        let (depth, pool, shutdown) = (outbox_depth.clone(), pg.pool(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        if let Ok(n) = outbox::outbox_depth(&pool).await {
                            depth.store(n, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    let queue = pg.clone();
    tracing::info!(
        node_id,
        namespace = ns,
        "cluster node: PostgreSQL, Redis and Kafka connected"
    );
    Ok(Backends {
        store,
        registry,
        quotas: Arc::new(quotas),
        secret,
        node_id,
        gauges: vec![
            Box::new(move || Gauge {
                name: "chatd_store_write_queue",
                help: "Appends waiting for the store writer.",
                value: queue.write_queue_depth() as f64,
            }),
            Box::new(move || Gauge {
                name: "chatd_outbox_depth",
                help: "Committed events not yet relayed to Kafka (sampled every second).",
                value: outbox_depth.load(Ordering::Relaxed) as f64,
            }),
        ],
        link: Some(link),
        tasks,
    })
}
