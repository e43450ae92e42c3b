//! The Kafka bus: outbox sink (producer), the `fanout` consumer group, push jobs, dead letters.
//!
//! The outbox relay produces every committed event to `chat.messages`, keyed by chat, so a
//! chat's events stay in commit order on one partition. Every node is a member of the `fanout`
//! group: for each event of its partitions it works out who must hear of it (the chat's
//! members, [`audience::targets`](super::audience::targets)), where they are connected (the
//! registry) and hands one envelope per node to the [`NodeLink`]. Members of a message's chat
//! with no live session get a push job on `chat.push`. An offset is stored for commit only
//! after its event was handed off, so a node that dies mid-way leaves the event to the
//! partition's next owner.
//!
//! Layout: this file is the bus as the node sees it; `client` is the rdkafka plumbing
//! (configuration, topics, the producer); `fanout` is the consumer group's loop.

mod client;
mod fanout;
pub mod push;
#[cfg(test)]
mod tests;

use super::{NodeLink, OutboxRecord, OutboxSink};
use crate::backend_tls::BackendTls;
use crate::registry::Registry;
use crate::store::Store;
use crate::Result;
use async_trait::async_trait;
use client::{Names, Produce, Producer};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: where the brokers are.
    pub brokers: String,
    /// TLS to the brokers (`security.protocol=ssl`) when any file is set.
    pub tls: BackendTls,
    /// Prefix of the topic and group names, so several clusters (or tests) share a Kafka.
    pub namespace: String,
    /// Partitions of the topics this bus creates: the most fan-out members that get work.
    pub partitions: i32,
    /// This node, in the client id and the dead letters it writes.
    pub node_id: String,
    /// Receipts of larger chats go only to the reader's devices (see [`super::audience`]).
    pub live_receipts_max_members: usize,
}

pub struct KafkaBus {
    /// What the consumer and the dead letters are configured from.
    settings: KafkaSettings,
    /// The topics and the group, with the namespace prefix.
    names: Names,
    /// Shared by the outbox relay, the push jobs and the dead letters.
    producer: Producer,
}

impl KafkaBus {
    /// Connects and creates the topics that are missing.
    pub async fn connect(s: &KafkaSettings) -> Result<Arc<KafkaBus>> {
        let names = Names::new(&s.namespace);
        let producer = client::connect(s, &names).await?;
        Ok(Arc::new(KafkaBus {
            settings: s.clone(),
            names,
            producer,
        }))
    }

    /// The `fanout` consumer group member: runs until shutdown.
    pub async fn run_fanout(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        link: Arc<dyn NodeLink>,
        shutdown: CancellationToken,
    ) {
        fanout::run(&self, store, registry, link, shutdown).await
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
        self.producer.produce(&self.names.messages, records).await
    }
}
