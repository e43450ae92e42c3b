//! The embedded default: SQLite in the data dir, the in-process registry and fan-out.

use super::{node_id, Backends, StartError, Wiring};
use crate::auth;
use crate::bus::local::LocalFanout;
use crate::config::Config;
use crate::metrics::Gauge;
use crate::push;
use crate::quota::local::LocalQuotas;
use crate::registry::{local::LocalRegistry, Registry};
use crate::store::sqlite::SqliteStore;
use std::sync::Arc;

pub(super) fn start(config: &Config, w: Wiring) -> Result<Backends, StartError> {
    let secret = auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)
        .map_err(|source| StartError::Secret {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
    let senders = push::setup::senders(&config.push).map_err(StartError::Push)?;
    // Intents are written only when something will send them: without providers, a message
    // costs no extra row.
    let (sqlite, outbox) =
        SqliteStore::open_with(&config.data_dir, !senders.is_empty()).map_err(StartError::Store)?;
    let fanout = LocalFanout::new(
        sqlite.clone(),
        w.directory,
        w.typing,
        config.live_receipts_max_members as usize,
    );
    let fanout = tokio::spawn(fanout.run(outbox, w.ephemeral));
    let registry: Arc<dyn Registry> = Arc::new(LocalRegistry::default());
    let mut tasks = vec![fanout];
    let settings = push::worker::Settings {
        text: config.push.text,
        ..Default::default()
    };
    // A lane per provider, each with its own position in the intents.
    for sender in senders.iter() {
        let queue =
            push::queue::SqliteQueue::new(sqlite.clone(), sender.provider(), senders.providers());
        let worker = push::worker::Worker::new(
            sender.clone(),
            Arc::new(queue),
            sqlite.clone(),
            sqlite.clone(),
            Some(registry.clone()),
            settings.clone(),
        );
        tasks.push(tokio::spawn(worker.run(w.shutdown.clone())));
    }
    let (queue, outbox) = (sqlite.clone(), sqlite.clone());
    Ok(Backends {
        store: sqlite,
        registry,
        quotas: Arc::new(LocalQuotas::default()),
        secret,
        node_id: config.node_id.clone().unwrap_or_else(node_id),
        gauges: vec![
            Box::new(move || Gauge {
                name: "chatd_store_write_queue",
                help: "Writes waiting for the store writer.",
                value: queue.write_queue_depth() as f64,
            }),
            Box::new(move || Gauge {
                name: "chatd_fanout_backlog",
                help: "Committed events waiting for the in-process fan-out.",
                value: outbox.outbox_depth() as f64,
            }),
        ],
        link: None,
        tasks,
    })
}
