//! The push jobs on `chat.push` as the workers read them: one lane per provider, each its own
//! consumer group (`push.<provider>`) with positions committed only when that lane's pushes
//! are done (so a worker that dies leaves its jobs to the next, and a provider that stalls
//! holds back no other), and `chat.push.dlq` for pushes that failed for good.

use super::client::{self, FanoutContext, Names, Produce, Producer};
use super::KafkaSettings;
use crate::bus::wire::PushJob;
use crate::domain::model::PushProvider;
use crate::{Error, Result};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the lanes of one worker process share: the producer (dead letters) and the names.
pub struct PushJobs {
    producer: Producer,
    names: Names,
    settings: KafkaSettings,
}

impl PushJobs {
    /// Reaches Kafka, creating the topics that are missing.
    pub async fn connect(s: &KafkaSettings) -> Result<Arc<Self>> {
        let names = Names::new(&s.namespace);
        let producer = client::connect(s, &names).await?;
        Ok(Arc::new(PushJobs {
            producer,
            names,
            settings: s.clone(),
        }))
    }

    /// Joins `provider`'s group.
    pub fn lane(self: &Arc<Self>, provider: PushProvider) -> Result<PushLane> {
        Ok(PushLane {
            consumer: client::push_consumer(&self.settings, &self.names, provider)?,
            jobs: self.clone(),
        })
    }

    /// Keeps a failed push on `chat.push.dlq`, keyed by user.
    pub async fn dead_letter(&self, user_id: &str, payload: &[u8]) -> Result<()> {
        let record = Produce {
            key: Some(user_id.as_bytes()),
            payload,
            headers: None,
        };
        self.producer
            .produce(&self.names.push_dlq, vec![record])
            .await
    }

    /// Dead letters `chat.push.dlq` holds now, all providers together (the topic is keyed by
    /// user, so a count per provider would mean reading it).
    pub async fn dead_letter_depth(&self) -> Result<u64> {
        self.producer.retained(&self.names.push_dlq).await
    }
}

/// One provider's reader of `chat.push`.
pub struct PushLane {
    consumer: StreamConsumer<FanoutContext>,
    jobs: Arc<PushJobs>,
}

impl PushLane {
    /// Up to `max` jobs, waiting at most `wait` for them. An undecodable job is logged and
    /// skipped (it can never be sent).
    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<PushJob>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            let next = tokio::time::timeout_at(deadline, self.consumer.recv()).await;
            let message = match next {
                Err(_) => break,
                // Jobs read already are handed out (the consumer moved past them).
                Ok(Err(e)) if !out.is_empty() => {
                    tracing::warn!(error = %e, "reading push jobs");
                    break;
                }
                Ok(Err(e)) => return Err(Error::Unavailable(format!("reading push jobs: {e}"))),
                Ok(Ok(m)) => m,
            };
            match serde_json::from_slice::<PushJob>(message.payload().unwrap_or_default()) {
                Ok(job) => out.push(job),
                Err(e) => tracing::error!(
                    error = %e,
                    partition = message.partition(),
                    offset = message.offset(),
                    "undecodable push job skipped"
                ),
            }
        }
        Ok(out)
    }

    /// Commits everything taken so far: those jobs are done.
    pub async fn commit(&self) -> Result<()> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            // Nothing taken since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => Ok(()),
            Err(e) => Err(Error::Unavailable(format!("committing push jobs: {e}"))),
        }
    }

    pub fn jobs(&self) -> &PushJobs {
        &self.jobs
    }
}
