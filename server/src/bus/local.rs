//! The in-process bus: reads the store's outbox in commit order, looks up each chat's members
//! (cached, kept current by the membership events that flow through the same outbox) and
//! queues the event for their sessions on this node. Ephemeral events (typing) come in on a
//! second channel and take the same path without being stored.
//!
//! One task does all of it, so events of a chat reach every session in seq order, and a
//! membership change takes effect exactly between the messages committed before and after it.

use super::{audience, members::MemberCache, LocalSessions};
use crate::domain::model::{Committed, Event, EPHEMERAL};
use crate::domain::typing::Typing;
use crate::store::Store;
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct LocalFanout {
    directory: Arc<dyn LocalSessions>,
    /// Typing state, so that a message can end its sender's typing indicator.
    typing: Arc<Typing>,
    /// Receipts of larger chats are not pushed to other members (only to the reader's devices).
    live_receipts_max_members: usize,
    members: MemberCache,
}

impl LocalFanout {
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<dyn LocalSessions>,
        typing: Arc<Typing>,
        live_receipts_max_members: usize,
    ) -> Self {
        LocalFanout {
            directory,
            typing,
            live_receipts_max_members,
            members: MemberCache::new(store),
        }
    }

    /// Runs until the outbox closes (the store shut down).
    pub async fn run(
        mut self,
        mut outbox: mpsc::Receiver<Committed>,
        mut ephemeral: mpsc::Receiver<Event>,
    ) {
        loop {
            tokio::select! {
                biased;
                committed = outbox.recv() => match committed {
                    Some(c) => self.deliver(&c).await,
                    None => return,
                },
                Some(event) = ephemeral.recv() => {
                    self.deliver(&Committed { commit_id: EPHEMERAL, event }).await
                }
            }
        }
    }

    async fn deliver(&mut self, committed: &Committed) {
        if let Event::Chat(change) = &committed.event {
            self.members.apply(change);
        }
        let Some(chat_id) = audience::chat_of(&committed.event) else {
            return; // the registry delivers presence to its watchers
        };
        // A message that cannot be fanned out is not lost: it is committed, and devices get it
        // on resume or from history.
        let members = match self.members.get(chat_id, 5).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(chat_id, error = %e, "fan-out skipped an event; devices will get it on resume");
                return;
            }
        };
        let max = self.live_receipts_max_members;
        for t in audience::targets(&committed.event, &members, max) {
            self.directory
                .deliver(&t.user_id, t.skip_device.as_deref(), committed);
        }
        if let Event::Message(m) = &committed.event {
            if let Some(stop) = self.typing.message_ended_typing(m) {
                let stop = Committed {
                    commit_id: EPHEMERAL,
                    event: stop,
                };
                for t in audience::targets(&stop.event, &members, max) {
                    self.directory.deliver(&t.user_id, None, &stop);
                }
            }
        }
    }
}
