//! The cluster's push queue: the jobs the fan-out put on `chat.push` (one per member with no
//! live device), their messages read from the store, committed once their pushes are done;
//! one [`PushLane`] (consumer group) per provider.

use super::queue::{Ack, DlqDepth, Job, PushQueue, Taken};
use crate::bus::kafka::push::PushLane;
use crate::store::sqlite::DeadLetter;
use crate::store::{MessageStore, SeqRange};
use crate::{Error, Result};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a take waits for jobs to arrive.
const TAKE_WAIT: Duration = Duration::from_millis(200);

pub struct KafkaQueue {
    jobs: PushLane,
    messages: Arc<dyn MessageStore>,
}

impl KafkaQueue {
    pub fn new(jobs: PushLane, messages: Arc<dyn MessageStore>) -> Self {
        KafkaQueue { jobs, messages }
    }
}

#[async_trait]
impl PushQueue for KafkaQueue {
    async fn take(&self, max: u32) -> Result<Taken> {
        let jobs = self.jobs.take(max as usize, TAKE_WAIT).await?;
        let entries = jobs.len();
        // One read per message, however many members it is for.
        let mut by_message: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
        for job in jobs {
            by_message
                .entry((job.chat_id, job.seq))
                .or_default()
                .push(job.user_id);
        }
        let mut out = Vec::with_capacity(by_message.len());
        for ((chat_id, seq), recipients) in by_message {
            let range = SeqRange {
                after: seq.saturating_sub(1),
                before: seq.saturating_add(1),
                newest_first: false,
            };
            // A message purged meanwhile makes no push.
            if let Some(message) = self.messages.messages(&chat_id, range, 1).await?.pop() {
                out.push(Job {
                    message,
                    recipients,
                });
            }
        }
        Ok(Taken {
            jobs: out,
            entries,
            ack: if entries == 0 {
                Ack::None
            } else {
                Ack::Offsets
            },
        })
    }

    async fn done(&self, ack: Ack) -> Result<()> {
        match ack {
            Ack::Offsets => self.jobs.commit().await,
            Ack::None | Ack::Intents(_) => Ok(()),
        }
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        let payload = serde_json::to_vec(&letter).map_err(Error::internal)?;
        self.jobs
            .jobs()
            .dead_letter(&letter.user_id, &payload)
            .await
    }

    async fn dead_letter_depth(&self) -> Result<DlqDepth> {
        Ok(DlqDepth::All(self.jobs.jobs().dead_letter_depth().await?))
    }
}
