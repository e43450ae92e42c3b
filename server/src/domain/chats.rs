//! Chats and membership: opening direct chats, creating groups, adding and removing members,
//! muting a chat's pushes, and reading a chat as one of its members sees it.

use super::limits::Limit;
use super::membership::{adding_within, removing, GroupsHeld};
use super::{ids, model::*, mute, page_size, page_token::PageTokens};
use crate::auth::check_user_id;
use crate::quota::{Quotas, Taken};
use crate::store::{ActivityKey, ChatStore, NewChat};
use crate::{Error, Result};
use std::sync::Arc;

const MAX_TITLE_BYTES: usize = 256;
/// The window of `--max-chats-created-per-hour`.
const HOUR_MS: u64 = 3_600_000;

/// The quota key counting the chats `user_id` created (`--max-chats-created-per-hour`).
pub fn chats_created_key(user_id: &str) -> String {
    format!("chats_created:{user_id}")
}

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
    /// Where the chats each user created in the last hour are counted (cluster-wide on a
    /// cluster); none without limits.
    quotas: Option<Arc<dyn Quotas>>,
    limits: ChatLimits,
}

/// The abuse limits on chats; 0 turns one off.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatLimits {
    /// Chats (groups, and direct chats that did not exist yet) one user creates in any hour.
    pub chats_created_per_hour: u32,
    /// Groups one user is a member of.
    pub groups_per_user: u32,
}

impl Chats {
    /// Chats without abuse limits (see [`Chats::with_limits`]).
    pub fn new(store: Arc<dyn ChatStore>, tokens: PageTokens, max_group_size: u32) -> Self {
        Chats {
            store,
            tokens,
            max_group_size,
            quotas: None,
            limits: ChatLimits::default(),
        }
    }

    /// The same chats under `limits`, the chats created counted in `quotas`.
    pub fn with_limits(self, quotas: Arc<dyn Quotas>, limits: ChatLimits) -> Self {
        Chats {
            quotas: Some(quotas),
            limits,
            ..self
        }
    }

    /// Counts one chat created by `user_id`, or refuses it past `--max-chats-created-per-hour`.
    async fn count_creation(&self, user_id: &str, now: i64) -> Result<()> {
        let limit = self.limits.chats_created_per_hour;
        let Some(quotas) = self.quotas.as_ref().filter(|_| limit > 0) else {
            return Ok(());
        };
        let key = chats_created_key(user_id);
        match quotas.take(&key, limit, HOUR_MS, now).await? {
            Taken::Yes => Ok(()),
            Taken::No { retry_after_ms } => {
                tracing::debug!(
                    user_id,
                    limit,
                    "chat creation refused: --max-chats-created-per-hour"
                );
                let wait = retry_after_ms.div_ceil(1000);
                Err(Limit::ChatsCreatedPerHour.refusal(
                    limit,
                    format!("too many chats created in the last hour (the next may be created in {wait} s)"),
                ))
            }
        }
    }

    /// How many groups `users` are in, for the groups limit (nothing to read without one).
    async fn groups_held(&self, users: &[String]) -> Result<GroupsHeld> {
        let max = self.limits.groups_per_user;
        if max == 0 {
            return Ok(GroupsHeld::default());
        }
        let counts = self.store.group_counts(users.to_vec()).await?;
        Ok(GroupsHeld { max, counts })
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
        let direct_key = format!("{a}\n{b}");
        // Opening a direct chat that exists creates nothing, so counts against no limit.
        if self.limits.chats_created_per_hour > 0 {
            if let Some(chat_id) = self.store.direct_chat_id(&direct_key).await? {
                return self.view(&chat_id, user_id, now).await;
            }
            self.count_creation(user_id, now).await?;
        }
        let (chat, _) = self
            .store
            .create_chat(NewChat {
                kind: ChatKind::Direct,
                title: String::new(),
                direct_key: Some(direct_key),
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
        let mut users = vec![user_id.to_string()];
        users.extend(others);
        // The creator and everyone they put in join a group: none may go past the groups limit.
        self.groups_held(&users).await?.check(&users)?;
        self.count_creation(user_id, now).await?;
        let members = users
            .into_iter()
            .enumerate()
            .map(|(i, u)| (u, if i == 0 { Role::Admin } else { Role::Member }))
            .collect();
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
        let held = self.groups_held(&users).await?;
        let rule = adding_within(user_id.to_string(), users, self.max_group_size, held);
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

    fn limited(store: &Arc<FakeChats>, chats_created_per_hour: u32, groups_per_user: u32) -> Chats {
        chats(store, 10).with_limits(
            Arc::new(crate::quota::local::LocalQuotas::default()),
            ChatLimits {
                chats_created_per_hour,
                groups_per_user,
            },
        )
    }

    fn limit_of(e: Error) -> Limit {
        match e {
            Error::Limited { limit, .. } => limit,
            other => panic!("not a limit's refusal: {other:?}"),
        }
    }

    #[tokio::test]
    async fn chats_created_per_hour_count_groups_and_new_direct_chats_only() {
        let store = Arc::new(FakeChats::default());
        let c = limited(&store, 2, 0);
        let hour = HOUR_MS as i64;
        let dm = c.open_direct("ann", "bo", 1).await.unwrap().chat.chat_id;
        c.create_group("ann", "t", &[], 2).await.unwrap();
        // Opening the existing direct chat again creates nothing, even at the limit.
        for at in [3, 4] {
            assert_eq!(
                c.open_direct("ann", "bo", at).await.unwrap().chat.chat_id,
                dm
            );
        }
        let e = c.create_group("ann", "t", &[], 5).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "too many chats created in the last hour (the next may be created in 3600 s): \
             the limit is 2 per hour (--max-chats-created-per-hour)"
        );
        assert_eq!(
            limit_of(c.open_direct("ann", "cy", 6).await.unwrap_err()),
            Limit::ChatsCreatedPerHour
        );
        // Per user; the other side of a direct chat created nothing.
        c.open_direct("bo", "cy", 7).await.unwrap();
        // An hour after the first creation, one more.
        c.open_direct("ann", "cy", 1 + hour).await.unwrap();
        assert!(c.create_group("ann", "t", &[], 1 + hour).await.is_err());
        assert_eq!(store.chats.lock().len(), 4, "refusals created nothing");
    }

    #[tokio::test]
    async fn no_one_joins_a_group_past_the_groups_limit() {
        let store = Arc::new(FakeChats::default());
        let c = limited(&store, 0, 2);
        // Direct chats do not count.
        c.open_direct("ann", "bo", 1).await.unwrap();
        let g1 = c
            .create_group("ann", "t", &users(&["bo"]), 1)
            .await
            .unwrap()
            .chat
            .chat_id;
        c.create_group("bo", "t", &[], 1).await.unwrap();
        // bo is in 2 groups: no group may be created with bo in it, nor bo added to one.
        let e = c
            .create_group("ann", "t", &users(&["cy", "bo"]), 2)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "user bo is in too many groups: the limit is 2 (--max-groups-per-user)"
        );
        assert_eq!(
            limit_of(c.create_group("bo", "t", &[], 2).await.unwrap_err()),
            Limit::GroupsPerUser
        );
        let g2 = c
            .create_group("ann", "t", &users(&["cy"]), 2)
            .await
            .unwrap()
            .chat
            .chat_id;
        let e = c
            .add_members("ann", &g2, &users(&["di", "bo"]), 3)
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with("user bo is in too many groups"),
            "{e}"
        );
        assert_eq!(store.get(&g2).members.len(), 2, "a refused add adds no one");
        // Naming a member again adds nothing, so counts against nothing; ann is at 2 now.
        c.add_members("ann", &g1, &users(&["bo"]), 3).await.unwrap();
        assert_eq!(
            limit_of(c.create_group("ann", "t", &[], 3).await.unwrap_err()),
            Limit::GroupsPerUser
        );
        c.add_members("ann", &g2, &users(&["di"]), 3).await.unwrap();
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
