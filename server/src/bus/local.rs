//! The in-process bus: reads the store's outbox in commit order, looks up each chat's members
//! (cached, kept current by the membership events that flow through the same outbox) and
//! queues the event for their sessions on this node. Ephemeral events (typing) come in on a
//! second channel and take the same path without being stored.
//!
//! One task does all of it, so events of a chat reach every session in seq order, and a
//! membership change takes effect exactly between the messages committed before and after it.

use crate::domain::model::{Committed, Event, ReceiptKind, EPHEMERAL};
use crate::domain::typing::Typing;
use crate::session::Directory;
use crate::store::Store;
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::sync::mpsc;

/// Chats whose member lists are cached; past this the cache starts over.
const MEMBER_CACHE_CHATS: usize = 100_000;

pub struct LocalFanout {
    store: Arc<dyn Store>,
    directory: Arc<Directory>,
    /// Typing state, so that a message can end its sender's typing indicator.
    typing: Arc<Typing>,
    /// Receipts of larger chats are not pushed to other members (only to the reader's devices).
    live_receipts_max_members: usize,
    /// chat_id → member user ids, as of the last event fanned out.
    members: HashMap<String, Arc<[String]>>,
}

impl LocalFanout {
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<Directory>,
        typing: Arc<Typing>,
        live_receipts_max_members: usize,
    ) -> Self {
        LocalFanout {
            store,
            directory,
            typing,
            live_receipts_max_members,
            members: HashMap::new(),
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
        match &committed.event {
            Event::Message(m) => {
                let Some(members) = self.members_of(&m.chat_id).await else {
                    return;
                };
                for user in members.iter() {
                    let skip = (*user == m.sender_user_id).then_some(m.sender_device_id.as_str());
                    self.directory.deliver(user, skip, committed);
                }
                let now = std::time::Instant::now();
                if let Some(stop) =
                    self.typing
                        .message_sent(&m.chat_id, &m.sender_user_id, now, m.created_at)
                {
                    let stop = Committed {
                        commit_id: EPHEMERAL,
                        event: Event::Typing(Arc::new(stop)),
                    };
                    self.to_others(&members, &m.sender_user_id, &stop);
                }
            }
            Event::Chat(change) => {
                let members: Arc<[String]> = change
                    .chat
                    .members
                    .iter()
                    .map(|m| m.user_id.clone())
                    .collect();
                self.cache(change.chat.chat_id.clone(), members);
                for user in change.audience() {
                    self.directory.deliver(user, None, committed);
                }
            }
            Event::Receipt(r) => {
                let Some(members) = self.members_of(&r.chat_id).await else {
                    return;
                };
                if members.len() <= self.live_receipts_max_members {
                    self.to_others(&members, &r.user_id, committed);
                }
                // The reader's other devices learn the read position whatever the chat's size,
                // so reading on one device clears the unread badge on the others.
                if r.kind == ReceiptKind::Read {
                    self.directory
                        .deliver(&r.user_id, Some(&r.device_id), committed);
                }
            }
            Event::Typing(t) => {
                let Some(members) = self.members_of(&t.chat_id).await else {
                    return;
                };
                self.to_others(&members, &t.user_id, committed);
            }
            Event::Presence(_) => {} // the registry delivers presence to its watchers
        }
    }

    /// Delivers to every member but `except` (all of that user's devices).
    fn to_others(&self, members: &[String], except: &str, event: &Committed) {
        for user in members.iter().filter(|u| *u != except) {
            self.directory.deliver(user, None, event);
        }
    }

    fn cache(&mut self, chat_id: String, members: Arc<[String]>) {
        if self.members.len() >= MEMBER_CACHE_CHATS && !self.members.contains_key(&chat_id) {
            self.members.clear();
        }
        self.members.insert(chat_id, members);
    }

    /// The chat's members; on a store failure, retried briefly. A message that still cannot be
    /// fanned out is not lost: it is committed, and devices get it on resume or from history.
    async fn members_of(&mut self, chat_id: &str) -> Option<Arc<[String]>> {
        if let Some(m) = self.members.get(chat_id) {
            return Some(m.clone());
        }
        for attempt in 0..5u32 {
            match self.store.chat_members(chat_id).await {
                Ok(list) => {
                    let list: Arc<[String]> = list.into();
                    self.cache(chat_id.to_string(), list.clone());
                    return Some(list);
                }
                Err(e) => {
                    tracing::warn!(chat_id, attempt, error = %e, "fan-out cannot read members");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
        tracing::error!(
            chat_id,
            "fan-out skipped an event; devices will get it on resume"
        );
        None
    }
}
