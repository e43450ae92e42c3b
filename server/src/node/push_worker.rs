//! `chatd push-worker`: a cluster's push sender, as its own process (as many as wanted: they
//! share the `push.<provider>` consumer groups, one per provider). It reads the jobs the fan-out puts on `chat.push`, sends
//! them through the configured providers, and serves `/healthz`, `/readyz` and `/metrics` on
//! `--listen` (the `chatd_push_*` counters live here), over TLS with `--tls-cert` / `--tls-key`.

use super::StartError;
use crate::bus::kafka::{push::PushJobs, KafkaSettings};
use crate::config::Config;
use crate::push::{self, kafka::KafkaQueue, worker::Worker};
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::Store;
use crate::transport::{http, listener, tls};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let Some(cluster) = config.cluster()? else {
        return Err(StartError::Push(push::setup::SetupError::Provider(
            "push-worker serves a cluster: set CHATD_DATABASE_URL, CHATD_REDIS_URL and \
             CHATD_KAFKA_BROKERS (the embedded default sends pushes in process)"
                .into(),
        )));
    };
    let server_tls = super::server_tls(&config)?;
    let senders = push::setup::senders(&config.push)?;
    if senders.is_empty() {
        return Err(StartError::Push(push::setup::SetupError::Provider(
            "push-worker has no provider configured (see --push-* in the README)".into(),
        )));
    }
    let (pg, _commits) = PgStore::connect(&PgOptions {
        url: cluster.database_url.clone(),
        pool: config.database_pool,
        migrate: config.migrate_auto,
    })
    .await
    .map_err(StartError::Store)?;
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| format!("push-{}", super::node_id()));
    let jobs = PushJobs::connect(&KafkaSettings {
        brokers: cluster.kafka_brokers.clone(),
        tls: config.kafka_tls.clone(),
        namespace: config.namespace.clone(),
        partitions: config.kafka_partitions as i32,
        node_id,
        live_receipts_max_members: config.live_receipts_max_members as usize,
    })
    .await
    .map_err(StartError::Backend)?;
    let store: Arc<dyn Store> = pg.clone();
    let settings = push::worker::Settings {
        text: config.push.text,
        ..Default::default()
    };
    // The fan-out put a job only for members with no live device: no second look.
    let mut workers = Vec::new();
    for sender in senders.iter() {
        let lane = jobs.lane(sender.provider()).map_err(StartError::Backend)?;
        let queue = Arc::new(KafkaQueue::new(lane, pg.clone()));
        workers.push(Worker::new(
            sender.clone(),
            queue,
            pg.clone(),
            pg.clone(),
            None,
            settings.clone(),
        ));
    }

    let (socket, addr) = super::bind(config.listen).await?;
    let no_gauges: http::GaugeSource = Arc::new(Vec::new);
    let router = http::routes(store, no_gauges);
    // The same port rules as a node's: a connection limit, TLS when set (no per-address rate:
    // only probes and scrapes come here).
    let incoming = super::accept(
        socket,
        listener::connection_limit(),
        None,
        server_tls.as_ref(),
        &config,
        &shutdown,
    );
    let probes = axum::serve(tls::accept::Listener::new(incoming), router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    on_listen(addr);
    tracing::info!(%addr, "push worker listening");
    let lanes: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(w.run(shutdown.clone())))
        .collect();
    let served = probes.await;
    for lane in lanes {
        let _ = lane.await;
    }
    pg.close().await;
    served.map_err(|source| StartError::Listen { addr, source })
}
