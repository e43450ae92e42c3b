//! The push jobs on `chat.push` as a worker reads them: the `push` consumer group, positions
//! committed only when the worker says its pushes are done (so a worker that dies leaves its
//! jobs to the next), and `chat.push.dlq` for pushes that failed for good.

use super::client::{self, FanoutContext, Names, Produce, Producer};
use super::KafkaSettings;
use crate::bus::wire::PushJob;
use crate::{Error, Result};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message as _;
use std::time::Duration;
use tokio::time::Instant;

pub struct PushJobs {
    consumer: StreamConsumer<FanoutContext>,
    producer: Producer,
    names: Names,
}

impl PushJobs {
    /// Reaches Kafka (creating the topics that are missing) and joins the `push` group.
    pub async fn connect(s: &KafkaSettings) -> Result<Self> {
        let names = Names::new(&s.namespace);
        let producer = client::connect(s, &names).await?;
        let consumer = client::push_consumer(s, &names)?;
        Ok(PushJobs {
            consumer,
            producer,
            names,
        })
    }

    /// Up to `max` jobs, waiting at most `wait` for them. An undecodable job is logged and
    /// skipped (it can never be sent).
    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<PushJob>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            let next = tokio::time::timeout_at(deadline, self.consumer.recv()).await;
            let message = match next {
                Err(_) => break,
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
}
