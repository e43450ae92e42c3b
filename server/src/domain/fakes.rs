//! In-memory stand-ins for the store seams, for unit tests of the domain's rules. They keep
//! only what those rules read; the real stores are tested against the same contract in
//! `store::conformance`, and the whole server end to end in `tests/`.

use super::ids;
use super::membership::{Access, MemberRule, Membership};
use super::model::{Chat, ChatKind, ChatView, Member, Message, Receipt, Role};
use crate::store::{
    ActivityKey, Appended, ChatStore, CursorMove, CursorStore, MessageStore, NewChat, NewMessage,
    PendingAppend, PresenceStore, ResumePlan, SeqRange,
};
use crate::{Error, Result};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc};

fn not_kept<T>(what: &str) -> Result<T> {
    Err(Error::Unimplemented(format!(
        "the fake store keeps no {what}"
    )))
}

/// Chats in a map; membership changes run their rule like a store does.
#[derive(Default)]
pub struct FakeChats {
    pub chats: Mutex<HashMap<String, Chat>>,
    /// Mutes by (chat, user), as stored; a member who leaves loses theirs.
    pub mutes: Mutex<HashMap<(String, String), i64>>,
    /// Direct chats by their key.
    pub direct: Mutex<HashMap<String, String>>,
}

impl FakeChats {
    pub fn get(&self, chat_id: &str) -> Chat {
        self.chats.lock()[chat_id].clone()
    }

    fn mute(&self, chat_id: &str, user_id: &str) -> Option<i64> {
        let key = (chat_id.to_string(), user_id.to_string());
        self.mutes.lock().get(&key).copied()
    }
}

#[async_trait]
impl ChatStore for FakeChats {
    async fn create_chat(&self, new: NewChat) -> Result<(Chat, bool)> {
        if let Some(key) = &new.direct_key {
            if let Some(id) = self.direct.lock().get(key) {
                return Ok((self.get(id), false));
            }
        }
        let chat = Chat {
            chat_id: ids::new_id(),
            kind: new.kind,
            title: new.title,
            members: new
                .members
                .into_iter()
                .map(|(user_id, role)| Member {
                    user_id,
                    role,
                    joined_at: new.created_at,
                    joined_seq: 0,
                })
                .collect(),
            last_seq: 0,
            created_at: new.created_at,
            last_activity_at: new.created_at,
        };
        self.chats.lock().insert(chat.chat_id.clone(), chat.clone());
        if let Some(key) = new.direct_key {
            self.direct.lock().insert(key, chat.chat_id.clone());
        }
        Ok((chat, true))
    }

    async fn change_members(&self, chat_id: &str, rule: MemberRule, now: i64) -> Result<Chat> {
        let mut chats = self.chats.lock();
        let chat = chats
            .get_mut(chat_id)
            .ok_or_else(|| Error::chat_not_found(chat_id))?;
        let plan = rule(chat)?;
        chat.members.retain(|m| !plan.remove.contains(&m.user_id));
        self.mutes
            .lock()
            .retain(|(c, u), _| c != chat_id || !plan.remove.contains(u));
        for user_id in plan.add {
            chat.members.push(Member {
                user_id,
                role: Role::Member,
                joined_at: now,
                joined_seq: chat.last_seq,
            });
        }
        for m in &mut chat.members {
            if plan.promote.as_ref() == Some(&m.user_id) {
                m.role = Role::Admin;
            }
        }
        Ok(chat.clone())
    }

    async fn chat(&self, chat_id: &str) -> Result<Option<Chat>> {
        Ok(self.chats.lock().get(chat_id).cloned())
    }

    async fn membership(&self, chat_id: &str, user_id: &str) -> Result<Membership> {
        let chats = self.chats.lock();
        let Some(chat) = chats.get(chat_id) else {
            return Ok(Membership::NoSuchChat);
        };
        Ok(match chat.member(user_id) {
            None => Membership::NotMember,
            Some(m) => Membership::Member(Access {
                role: m.role,
                kind: chat.kind,
                joined_seq: m.joined_seq,
                last_seq: chat.last_seq,
            }),
        })
    }

    async fn chat_members(&self, chat_id: &str) -> Result<Vec<String>> {
        let chat = self.chats.lock().get(chat_id).cloned();
        Ok(chat.map_or_else(Vec::new, |c| {
            c.members.into_iter().map(|m| m.user_id).collect()
        }))
    }

    async fn chat_view(&self, chat_id: &str, user_id: &str) -> Result<Option<ChatView>> {
        let chat = self.chats.lock().get(chat_id).cloned();
        let muted_until = self.mute(chat_id, user_id);
        Ok(chat
            .filter(|c| c.member(user_id).is_some())
            .map(|chat| ChatView {
                chat,
                read_seq: 0,
                unread_count: 0,
                last_message: None,
                muted_until,
            }))
    }

    async fn list_chats(&self, _: &str, _: Option<ActivityKey>, _: u32) -> Result<Vec<ChatView>> {
        not_kept("chat lists")
    }

    async fn set_muted(&self, chat_id: &str, user_id: &str, until: Option<i64>) -> Result<()> {
        self.membership(chat_id, user_id).await?.require(chat_id)?;
        let key = (chat_id.to_string(), user_id.to_string());
        let mut mutes = self.mutes.lock();
        match until {
            Some(until) => mutes.insert(key, until),
            None => mutes.remove(&key),
        };
        Ok(())
    }

    async fn muted_members(
        &self,
        chat_id: &str,
        users: &[String],
        now: i64,
    ) -> Result<Vec<String>> {
        Ok(users
            .iter()
            .filter(|u| self.mute(chat_id, u).is_some_and(|until| until > now))
            .cloned()
            .collect())
    }

    async fn group_counts(&self, user_ids: Vec<String>) -> Result<HashMap<String, u32>> {
        let chats = self.chats.lock();
        let groups = || chats.values().filter(|c| c.kind == ChatKind::Group);
        Ok(user_ids
            .into_iter()
            .filter_map(|u| {
                let n = groups().filter(|c| c.member(&u).is_some()).count() as u32;
                (n > 0).then_some((u, n))
            })
            .collect())
    }

    async fn direct_chat_id(&self, direct_key: &str) -> Result<Option<String>> {
        Ok(self.direct.lock().get(direct_key).cloned())
    }
}

/// Records the sends it accepts, with seqs handed out in arrival order. Like a store, it
/// refuses a sender who is not a member (the domain leaves that check to the atomic write).
pub struct FakeMessages {
    pub chats: Arc<FakeChats>,
    pub submitted: Mutex<Vec<NewMessage>>,
}

#[async_trait]
impl MessageStore for FakeMessages {
    async fn submit_message(&self, m: NewMessage) -> Result<PendingAppend> {
        self.chats
            .membership(&m.chat_id, &m.sender_user_id)
            .await?
            .require(&m.chat_id)?;
        let mut submitted = self.submitted.lock();
        submitted.push(m.clone());
        let message = Message {
            message_id: ids::new_id(),
            chat_id: m.chat_id,
            seq: submitted.len() as u64,
            sender_user_id: m.sender_user_id,
            sender_device_id: m.sender_device_id,
            client_msg_id: m.client_msg_id,
            content: m.content,
            created_at: m.created_at,
            wire: Default::default(),
        };
        let appended = Appended {
            message: Arc::new(message),
            duplicate: false,
        };
        Ok(Box::pin(async move { Ok(appended) }))
    }

    async fn messages(&self, _: &str, _: SeqRange, _: u32) -> Result<Vec<Message>> {
        not_kept("history")
    }

    async fn purge_before(&self, _: i64, _: u32) -> Result<u64> {
        Ok(0)
    }
}

/// Records the cursor moves of members, and refuses others like a store does.
pub struct FakeCursors {
    pub chats: Arc<FakeChats>,
    pub moves: Mutex<Vec<CursorMove>>,
}

#[async_trait]
impl CursorStore for FakeCursors {
    async fn register_device(&self, _: &str, _: &str, _: i64) -> Result<bool> {
        Ok(true)
    }

    async fn resume_plan(&self, _: &str, _: &str) -> Result<ResumePlan> {
        Ok(ResumePlan::default())
    }

    async fn move_cursor(&self, m: CursorMove) -> Result<()> {
        self.chats
            .membership(&m.chat_id, &m.user_id)
            .await?
            .require(&m.chat_id)?;
        self.moves.lock().push(m);
        Ok(())
    }

    async fn receipts(&self, _: &str, _: u64) -> Result<Vec<Receipt>> {
        Ok(Vec::new())
    }
}

/// Who shares a chat with whom, and stored last-seen times.
#[derive(Default)]
pub struct FakePresence {
    /// Unordered pairs of users who share a chat.
    pub contacts: Vec<(String, String)>,
    pub last_seen: Mutex<HashMap<String, i64>>,
}

#[async_trait]
impl PresenceStore for FakePresence {
    async fn record_last_seen(&self, user_id: &str, at: i64) -> Result<()> {
        self.last_seen.lock().insert(user_id.to_string(), at);
        Ok(())
    }

    async fn last_seen(&self, user_ids: Vec<String>) -> Result<HashMap<String, i64>> {
        let stored = self.last_seen.lock();
        Ok(user_ids
            .into_iter()
            .filter_map(|u| stored.get(&u).map(|at| (u, *at)))
            .collect())
    }

    async fn contacts_among(&self, user_id: &str, candidates: Vec<String>) -> Result<Vec<String>> {
        Ok(candidates
            .into_iter()
            .filter(|c| {
                self.contacts
                    .iter()
                    .any(|(a, b)| (a == user_id && b == c) || (b == user_id && a == c))
            })
            .collect())
    }
}
