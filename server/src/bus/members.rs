//! Chat member lists for the fan-out: cached, kept current by the membership events that flow
//! through the same ordered stream as the messages, read from the store on a miss.

use crate::domain::model::ChatChange;
use crate::store::Store;
use std::{collections::HashMap, sync::Arc, time::Duration};

/// Chats whose member lists are cached; past this the cache starts over.
const MEMBER_CACHE_CHATS: usize = 100_000;

pub struct MemberCache {
    store: Arc<dyn Store>,
    /// chat_id → member user ids, as of the last event seen.
    members: HashMap<String, Arc<[String]>>,
}

impl MemberCache {
    pub fn new(store: Arc<dyn Store>) -> Self {
        MemberCache {
            store,
            members: HashMap::new(),
        }
    }

    /// Takes the members after a committed change, and returns them: the members as of the
    /// change, for a fan-out that needs them for the change event itself.
    pub fn apply(&mut self, change: &ChatChange) -> Arc<[String]> {
        let members: Arc<[String]> = change
            .chat
            .members
            .iter()
            .map(|m| m.user_id.clone())
            .collect();
        self.insert(change.chat.chat_id.clone(), members.clone());
        members
    }

    /// Forgets everything (e.g. the events of some chats will now come from elsewhere).
    pub fn clear(&mut self) {
        self.members.clear();
    }

    fn insert(&mut self, chat_id: String, members: Arc<[String]>) {
        if self.members.len() >= MEMBER_CACHE_CHATS && !self.members.contains_key(&chat_id) {
            self.members.clear();
        }
        self.members.insert(chat_id, members);
    }

    /// The chat's members, or the store's error after `attempts` tries with backoff. With
    /// `attempts` 1 it is one read and no wait, for callers with a retry policy of their own.
    pub async fn get(&mut self, chat_id: &str, attempts: u32) -> crate::Result<Arc<[String]>> {
        if let Some(m) = self.members.get(chat_id) {
            return Ok(m.clone());
        }
        let mut attempt = 0u32;
        loop {
            match self.store.chat_members(chat_id).await {
                Ok(list) => {
                    let list: Arc<[String]> = list.into();
                    self.insert(chat_id.to_string(), list.clone());
                    return Ok(list);
                }
                Err(e) => {
                    attempt += 1;
                    if attempt >= attempts {
                        return Err(e);
                    }
                    tracing::warn!(chat_id, attempt, error = %e, "cannot read chat members");
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                }
            }
        }
    }
}
