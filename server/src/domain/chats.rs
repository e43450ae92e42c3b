//! Chats and membership: opening direct chats, creating groups, adding and removing members,
//! muting a chat's pushes, and reading a chat as one of its members sees it.

use super::membership::{adding, removing};
use super::{ids, model::*, mute, page_size, page_token::PageTokens};
use crate::auth::check_user_id;
use crate::store::{ActivityKey, ChatStore, NewChat};
use crate::{Error, Result};
use std::sync::Arc;

const MAX_TITLE_BYTES: usize = 256;

pub use super::membership::Access;

/// Checks the chat id and that `user_id` is a member: malformed → INVALID_ARGUMENT, unknown →
/// NOT_FOUND, not a member → PERMISSION_DENIED.
pub async fn member_access(store: &dyn ChatStore, chat_id: &str, user_id: &str) -> Result<Access> {
    ids::check_chat_id(chat_id)?;
    store.membership(chat_id, user_id).await?.require(chat_id)
}

pub struct Chats {
    store: Arc<dyn ChatStore>,
    tokens: PageTokens,
    /// Largest group, the creator included.
    max_group_size: u32,
}

impl Chats {
    pub fn new(store: Arc<dyn ChatStore>, tokens: PageTokens, max_group_size: u32) -> Self {
        Chats {
            store,
            tokens,
            max_group_size,
        }
    }

    pub async fn open_direct(
        &self,
        user_id: &str,
        peer_user_id: &str,
        now: i64,
    ) -> Result<ChatView> {
        check_user_id("peer_user_id", peer_user_id)?;
        if peer_user_id == user_id {
            return Err(Error::invalid("peer_user_id", "must be another user"));
        }
        let (a, b) = if user_id < peer_user_id {
            (user_id, peer_user_id)
        } else {
            (peer_user_id, user_id)
        };
        let (chat, _) = self
            .store
            .create_chat(NewChat {
                kind: ChatKind::Direct,
                title: String::new(),
                direct_key: Some(format!("{a}\n{b}")),
                members: vec![(a.to_string(), Role::Member), (b.to_string(), Role::Member)],
                created_at: now,
            })
            .await?;
        self.view(&chat.chat_id, user_id, now).await
    }

    pub async fn create_group(
        &self,
        user_id: &str,
        title: &str,
        member_user_ids: &[String],
        now: i64,
    ) -> Result<ChatView> {
        if title.len() > MAX_TITLE_BYTES || title.chars().any(char::is_control) {
            return Err(Error::invalid(
                "title",
                format!("must be at most {MAX_TITLE_BYTES} bytes without control characters"),
            ));
        }
        let others = distinct_users("member_user_ids", member_user_ids, Some(user_id))?;
        let total = others.len() + 1;
        if total > self.max_group_size as usize {
            return Err(Error::FailedPrecondition(format!(
                "the group would have {total} members; the limit is {}",
                self.max_group_size
            )));
        }
        let mut members = vec![(user_id.to_string(), Role::Admin)];
        members.extend(others.into_iter().map(|u| (u, Role::Member)));
        let (chat, _) = self
            .store
            .create_chat(NewChat {
                kind: ChatKind::Group,
                title: title.to_string(),
                direct_key: None,
                members,
                created_at: now,
            })
            .await?;
        self.view(&chat.chat_id, user_id, now).await
    }

    pub async fn get(&self, user_id: &str, chat_id: &str, now: i64) -> Result<ChatView> {
        member_access(self.store.as_ref(), chat_id, user_id).await?;
        self.view(chat_id, user_id, now).await
    }

    /// The caller's chats, most recently active first.
    pub async fn list(
        &self,
        user_id: &str,
        requested_page_size: u32,
        page_token: &str,
        now: i64,
    ) -> Result<(Vec<ChatView>, String)> {
        let limit = page_size(requested_page_size)?;
        let scope = format!("chats:{user_id}");
        let after = if page_token.is_empty() {
            None
        } else {
            let pos = self.tokens.open(&scope, page_token)?;
            let (at, id) = pos
                .split_at_checked(8)
                .ok_or_else(|| Error::invalid("page_token", "is malformed"))?;
            let at = i64::from_be_bytes(
                at.try_into()
                    .map_err(|_| Error::invalid("page_token", "is malformed"))?,
            );
            let chat_id = String::from_utf8(id.to_vec())
                .map_err(|_| Error::invalid("page_token", "is malformed"))?;
            Some(ActivityKey {
                last_activity_at: at,
                chat_id,
            })
        };
        let mut views = self.store.list_chats(user_id, after, limit + 1).await?;
        for v in &mut views {
            v.muted_until = mute::as_of(v.muted_until, now);
        }
        let next = if views.len() > limit as usize {
            views.truncate(limit as usize);
            let last = &views[views.len() - 1].chat;
            let mut pos = last.last_activity_at.to_be_bytes().to_vec();
            pos.extend_from_slice(last.chat_id.as_bytes());
            self.tokens.seal(&scope, &pos)
        } else {
            String::new()
        };
        Ok((views, next))
    }

    pub async fn add_members(
        &self,
        user_id: &str,
        chat_id: &str,
        user_ids: &[String],
        now: i64,
    ) -> Result<ChatView> {
        member_access(self.store.as_ref(), chat_id, user_id).await?;
        let users = distinct_users("user_ids", user_ids, None)?;
        if users.is_empty() {
            return Err(Error::invalid("user_ids", "must name at least one user"));
        }
        let rule = adding(user_id.to_string(), users, self.max_group_size);
        self.store.change_members(chat_id, rule, now).await?;
        self.view(chat_id, user_id, now).await
    }

    /// Admins remove anyone; anyone removes themselves. Returns the chat after the change.
    pub async fn remove_member(
        &self,
        user_id: &str,
        chat_id: &str,
        target: &str,
        now: i64,
    ) -> Result<Chat> {
        member_access(self.store.as_ref(), chat_id, user_id).await?;
        check_user_id("user_id", target)?;
        let rule = removing(user_id.to_string(), target.to_string());
        self.store.change_members(chat_id, rule, now).await
    }

    /// Mutes (`muted`, until `until` in unix ms or, with 0, until unmuted) or unmutes the
    /// chat's pushes for the caller. Returns the mute as it now stands (see [`mute`]).
    pub async fn set_muted(
        &self,
        user_id: &str,
        chat_id: &str,
        muted: bool,
        until: i64,
        now: i64,
    ) -> Result<Option<i64>> {
        ids::check_chat_id(chat_id)?;
        let until = mute::requested(muted, until, now)?;
        // The store checks membership inside its write: unknown chat → NOT_FOUND, not a member
        // → PERMISSION_DENIED, as `member_access` answers.
        self.store.set_muted(chat_id, user_id, until).await?;
        Ok(until)
    }

    /// The chat as `user_id` sees it at `now`.
    async fn view(&self, chat_id: &str, user_id: &str, now: i64) -> Result<ChatView> {
        let mut view = self
            .store
            .chat_view(chat_id, user_id)
            .await?
            .ok_or_else(|| Error::not_member(chat_id))?;
        view.muted_until = mute::as_of(view.muted_until, now);
        Ok(view)
    }
}

/// Validated user ids without repeats (and without `except`, the caller).
fn distinct_users(
    field: &'static str,
    ids: &[String],
    except: Option<&str>,
) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        check_user_id(field, id)?;
        if Some(id.as_str()) != except && !out.contains(id) {
            out.push(id.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fakes::FakeChats;

    fn chats(store: &Arc<FakeChats>, max_group_size: u32) -> Chats {
        Chats::new(store.clone(), PageTokens::new(b"test"), max_group_size)
    }

    fn users(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_group_grows_to_its_limit_and_no_further() {
        let store = Arc::new(FakeChats::default());
        let c = chats(&store, 3);
        assert!(matches!(
            c.create_group("ann", "t", &users(&["bo", "cy", "di"]), 1)
                .await,
            Err(Error::FailedPrecondition(_))
        ));
        let g = c
            .create_group("ann", "t", &users(&["bo", "ann"]), 1)
            .await
            .unwrap();
        let id = g.chat.chat_id.clone();
        assert_eq!(g.chat.member("ann").unwrap().role, Role::Admin);
        assert_eq!(g.chat.members.len(), 2);
        assert!(matches!(
            c.add_members("bo", &id, &users(&["cy"]), 2).await,
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            c.add_members("ann", &id, &users(&["cy", "di"]), 2).await,
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            c.add_members("ann", &id, &[], 2).await,
            Err(Error::InvalidArgument {
                field: "user_ids",
                ..
            })
        ));
        c.add_members("ann", &id, &users(&["cy", "bo"]), 2)
            .await
            .unwrap();
        assert_eq!(store.get(&id).members.len(), 3);
    }

    #[tokio::test]
    async fn the_last_admin_leaving_hands_the_group_over() {
        let store = Arc::new(FakeChats::default());
        let c = chats(&store, 10);
        let id = c
            .create_group("ann", "t", &users(&["bo", "cy"]), 1)
            .await
            .unwrap()
            .chat
            .chat_id;
        assert!(matches!(
            c.remove_member("bo", &id, "cy", 2).await,
            Err(Error::PermissionDenied(_))
        ));
        let after = c.remove_member("ann", &id, "ann", 2).await.unwrap();
        assert!(after.member("ann").is_none());
        assert_eq!(after.member("bo").unwrap().role, Role::Admin);
        assert_eq!(
            c.remove_member("ann", &id, "bo", 3).await.unwrap_err(),
            Error::not_member(&id)
        );
    }

    #[tokio::test]
    async fn direct_chats_keep_their_two_members_and_outsiders_see_nothing() {
        let store = Arc::new(FakeChats::default());
        let c = chats(&store, 10);
        let id = c.open_direct("ann", "bo", 1).await.unwrap().chat.chat_id;
        assert!(matches!(
            c.add_members("ann", &id, &users(&["cy"]), 2).await,
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            c.remove_member("ann", &id, "bo", 2).await,
            Err(Error::FailedPrecondition(_))
        ));
        assert_eq!(
            c.get("cy", &id, 2).await.unwrap_err(),
            Error::not_member(&id)
        );
        let unknown = ids::new_id();
        assert_eq!(
            c.get("ann", &unknown, 2).await.unwrap_err(),
            Error::chat_not_found(&unknown)
        );
    }

    #[tokio::test]
    async fn a_mute_is_the_callers_own_and_reads_as_of_now() {
        let store = Arc::new(FakeChats::default());
        let c = chats(&store, 10);
        let id = c
            .create_group("ann", "t", &users(&["bo"]), 1)
            .await
            .unwrap()
            .chat
            .chat_id;
        assert_eq!(c.set_muted("ann", &id, true, 100, 10).await, Ok(Some(100)));
        assert_eq!(c.get("ann", &id, 99).await.unwrap().muted_until, Some(100));
        assert_eq!(c.get("ann", &id, 100).await.unwrap().muted_until, None);
        assert_eq!(c.get("bo", &id, 10).await.unwrap().muted_until, None);
        assert_eq!(
            c.set_muted("bo", &id, true, 0, 10).await,
            Ok(Some(mute::INDEFINITELY))
        );
        assert_eq!(
            c.get("bo", &id, i64::MAX - 1).await.unwrap().muted_until,
            Some(mute::INDEFINITELY)
        );
        assert_eq!(c.set_muted("bo", &id, false, 0, 10).await, Ok(None));
        assert_eq!(c.get("bo", &id, 10).await.unwrap().muted_until, None);
    }

    #[tokio::test]
    async fn only_members_mute_and_bad_requests_name_their_field() {
        let store = Arc::new(FakeChats::default());
        let c = chats(&store, 10);
        let id = c.open_direct("ann", "bo", 1).await.unwrap().chat.chat_id;
        assert_eq!(
            c.set_muted("cy", &id, true, 0, 10).await,
            Err(Error::not_member(&id))
        );
        let unknown = ids::new_id();
        assert_eq!(
            c.set_muted("ann", &unknown, true, 0, 10).await,
            Err(Error::chat_not_found(&unknown))
        );
        for (chat_id, muted, until, field) in [
            ("", true, 0, "chat_id"),
            ("not-a-chat", true, 0, "chat_id"),
            (id.as_str(), true, 5, "until"),
            (id.as_str(), true, -1, "until"),
            (id.as_str(), false, 20, "until"),
        ] {
            match c.set_muted("ann", chat_id, muted, until, 10).await {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{chat_id:?} {muted} {until}: {other:?}"),
            }
        }
        assert!(store.mutes.lock().is_empty(), "refusals stored nothing");
    }
}
