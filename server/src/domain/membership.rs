//! Membership rules, decided here once for both stores: who stands where in a chat, who may add
//! and remove members, how big a group may grow, and who becomes admin when the last one leaves.
//!
//! A change is worked out by a pure function from the chat as it stands ([`MemberPlan`]); the
//! store runs that function against the chat as its own transaction sees it (locked against
//! other changes of the chat) and only persists the plan. So the rule is one piece of code, and
//! two concurrent changes can never both pass a check that only one of them may pass.

use super::limits::Limit;
use super::model::{Chat, ChatChangeKind, ChatKind, Role};
use crate::{Error, Result};
use std::collections::HashMap;

/// Where a user stands in a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    NoSuchChat,
    NotMember,
    Member(Access),
}

/// A member's standing in a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub role: Role,
    pub kind: ChatKind,
    /// The member sees only messages after this seq.
    pub joined_seq: u64,
    pub last_seq: u64,
}

impl Membership {
    /// The member's access, or the error a non-member gets: unknown chat → NOT_FOUND, not a
    /// member → PERMISSION_DENIED.
    pub fn require(self, chat_id: &str) -> Result<Access> {
        match self {
            Membership::NoSuchChat => Err(Error::chat_not_found(chat_id)),
            Membership::NotMember => Err(Error::not_member(chat_id)),
            Membership::Member(access) => Ok(access),
        }
    }
}

/// What a membership change does to a chat; the store applies it as one atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPlan {
    pub kind: ChatChangeKind,
    /// New members, as plain members who see messages after the chat's current last seq.
    pub add: Vec<String>,
    pub remove: Vec<String>,
    /// A remaining member who becomes admin.
    pub promote: Option<String>,
}

impl MemberPlan {
    /// Nothing to write (e.g. everyone named is a member already).
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.promote.is_none()
    }

    /// The users the change event names.
    pub fn user_ids(&self) -> Vec<String> {
        match self.kind {
            ChatChangeKind::MemberRemoved => self.remove.clone(),
            _ => self.add.clone(),
        }
    }
}

/// A membership rule, run by the store against the chat inside its write.
pub type MemberRule = Box<dyn FnOnce(&Chat) -> Result<MemberPlan> + Send>;

/// `by` adds `users` (validated, without repeats) to a group of at most `max_members`.
pub fn adding(by: String, users: Vec<String>, max_members: u32) -> MemberRule {
    adding_within(by, users, max_members, GroupsHeld::default())
}

/// [`adding`], where no user who joins may go past the groups limit of `held`: a refusal names
/// the first such user, and adds no one.
pub fn adding_within(
    by: String,
    users: Vec<String>,
    max_members: u32,
    held: GroupsHeld,
) -> MemberRule {
    Box::new(move |chat| {
        let plan = plan_add(chat, &by, users, max_members)?;
        held.check(&plan.add)?;
        Ok(plan)
    })
}

/// How many groups some users are in, and how many one may be in (`--max-groups-per-user`;
/// 0: no limit). The counts are read before the write that uses them: two changes that put one
/// user in two more groups at once may both pass, going past the limit by one.
#[derive(Debug, Clone, Default)]
pub struct GroupsHeld {
    pub max: u32,
    /// user → groups they are a member of; a user not named is in none.
    pub counts: HashMap<String, u32>,
}

impl GroupsHeld {
    /// Refuses, naming the first of `joining` who is in `max` groups already.
    pub fn check(&self, joining: &[String]) -> Result<()> {
        if self.max == 0 {
            return Ok(());
        }
        let full = joining
            .iter()
            .find(|u| self.counts.get(*u).copied().unwrap_or(0) >= self.max);
        match full {
            None => Ok(()),
            Some(user) => {
                tracing::debug!(user_id = %user, limit = self.max, "group join refused: --max-groups-per-user");
                Err(Limit::GroupsPerUser
                    .refusal(self.max, format!("user {user} is in too many groups")))
            }
        }
    }
}

/// `by` removes `target` (an admin removes anyone; anyone removes themselves).
pub fn removing(by: String, target: String) -> MemberRule {
    Box::new(move |chat| plan_remove(chat, &by, &target))
}

fn acting_member(chat: &Chat, by: &str) -> Result<Role> {
    chat.member(by)
        .map(|m| m.role)
        .ok_or_else(|| Error::not_member(&chat.chat_id))
}

pub fn plan_add(chat: &Chat, by: &str, users: Vec<String>, max_members: u32) -> Result<MemberPlan> {
    let role = acting_member(chat, by)?;
    if chat.kind == ChatKind::Direct {
        return Err(Error::FailedPrecondition(
            "members cannot be added to a direct chat".into(),
        ));
    }
    if role != Role::Admin {
        return Err(Error::PermissionDenied(
            "only a group admin may add members".into(),
        ));
    }
    let mut add: Vec<String> = Vec::new();
    for u in users {
        if chat.member(&u).is_none() && !add.contains(&u) {
            add.push(u);
        }
    }
    let total = chat.members.len() + add.len();
    if !add.is_empty() && total > max_members as usize {
        return Err(Error::FailedPrecondition(format!(
            "the group would have {total} members; the limit is {max_members}"
        )));
    }
    Ok(MemberPlan {
        kind: ChatChangeKind::MemberAdded,
        add,
        remove: Vec::new(),
        promote: None,
    })
}

pub fn plan_remove(chat: &Chat, by: &str, target: &str) -> Result<MemberPlan> {
    let role = acting_member(chat, by)?;
    if chat.kind == ChatKind::Direct {
        return Err(Error::FailedPrecondition(
            "members cannot be removed from a direct chat".into(),
        ));
    }
    if target != by && role != Role::Admin {
        return Err(Error::PermissionDenied(
            "only a group admin may remove other members".into(),
        ));
    }
    if chat.member(target).is_none() {
        return Err(Error::NotFound(format!(
            "{target} is not a member of chat {}",
            chat.chat_id
        )));
    }
    Ok(MemberPlan {
        kind: ChatChangeKind::MemberRemoved,
        add: Vec::new(),
        remove: vec![target.to_string()],
        promote: successor(chat, target),
    })
}

/// Takes `user` out of a chat of any kind, direct ones too (their data is being erased); a
/// group keeps an admin as when a member leaves. Not a member: nothing to do.
pub fn erasing(user: String) -> MemberRule {
    Box::new(move |chat| Ok(plan_erase(chat, &user)))
}

pub fn plan_erase(chat: &Chat, user: &str) -> MemberPlan {
    let member = chat.member(user).is_some();
    MemberPlan {
        kind: ChatChangeKind::MemberRemoved,
        add: Vec::new(),
        remove: if member {
            vec![user.to_string()]
        } else {
            Vec::new()
        },
        promote: if member && chat.kind == ChatKind::Group {
            successor(chat, user)
        } else {
            None
        },
    }
}

/// Who becomes admin when `leaving` goes: a group is never left without an admin while it has
/// members, so the longest-standing member takes over when no other admin remains.
fn successor(chat: &Chat, leaving: &str) -> Option<String> {
    let remaining = chat.members.iter().filter(|m| m.user_id != leaving);
    if remaining.clone().any(|m| m.role == Role::Admin) {
        return None;
    }
    remaining
        .min_by(|a, b| (a.joined_at, &a.user_id).cmp(&(b.joined_at, &b.user_id)))
        .map(|m| m.user_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Member;

    fn group(members: &[(&str, Role, i64)]) -> Chat {
        Chat {
            chat_id: "c".into(),
            kind: ChatKind::Group,
            title: "t".into(),
            members: members
                .iter()
                .map(|(u, role, at)| Member {
                    user_id: u.to_string(),
                    role: *role,
                    joined_at: *at,
                    joined_seq: 0,
                })
                .collect(),
            last_seq: 9,
            created_at: 0,
            last_activity_at: 0,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn admins_add_new_members_once_within_the_limit() {
        let chat = group(&[("a", Role::Admin, 1), ("b", Role::Member, 2)]);
        let plan = plan_add(&chat, "a", names(&["b", "c", "c", "d"]), 4).unwrap();
        assert_eq!(plan.add, names(&["c", "d"]));
        assert_eq!(plan.user_ids(), names(&["c", "d"]));
        let err = plan_add(&chat, "a", names(&["c", "d", "e"]), 4).unwrap_err();
        assert_eq!(
            err,
            Error::FailedPrecondition("the group would have 5 members; the limit is 4".into())
        );
        // Naming only members changes nothing, even in a full group.
        assert!(plan_add(&chat, "a", names(&["b"]), 2).unwrap().is_empty());
    }

    #[test]
    fn no_one_joins_past_the_groups_limit_and_a_refusal_adds_no_one() {
        let chat = group(&[("a", Role::Admin, 1), ("b", Role::Member, 2)]);
        let held = GroupsHeld {
            max: 2,
            counts: [("b", 2), ("c", 1), ("d", 2)]
                .map(|(u, n)| (u.to_string(), n))
                .into(),
        };
        let add = |users: &[&str]| adding_within("a".into(), names(users), 10, held.clone())(&chat);
        // b is in the limit's worth of groups, but already in this one: nothing changes for b.
        assert_eq!(add(&["b", "c", "e"]).unwrap().add, names(&["c", "e"]));
        let err = add(&["c", "d", "e"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user d is in too many groups: the limit is 2 (--max-groups-per-user)"
        );
        assert!(matches!(
            err,
            Error::Limited {
                limit: Limit::GroupsPerUser,
                ..
            }
        ));
        let off = GroupsHeld {
            max: 0,
            ..held.clone()
        };
        assert!(off.check(&names(&["d"])).is_ok(), "0: no limit");
    }

    #[test]
    fn only_admins_of_groups_add() {
        let chat = group(&[("a", Role::Admin, 1), ("b", Role::Member, 2)]);
        assert!(matches!(
            plan_add(&chat, "b", names(&["c"]), 10),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(
            plan_add(&chat, "x", names(&["c"]), 10),
            Err(Error::not_member("c"))
        );
        let direct = Chat {
            kind: ChatKind::Direct,
            ..group(&[("a", Role::Member, 1), ("b", Role::Member, 1)])
        };
        assert!(matches!(
            plan_add(&direct, "a", names(&["c"]), 10),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            plan_remove(&direct, "a", "a"),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn members_leave_and_admins_remove_others() {
        let chat = group(&[
            ("a", Role::Admin, 1),
            ("b", Role::Member, 2),
            ("c", Role::Member, 3),
        ]);
        let plan = plan_remove(&chat, "b", "b").unwrap();
        assert_eq!((plan.remove, plan.promote), (names(&["b"]), None));
        assert!(matches!(
            plan_remove(&chat, "b", "c"),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(plan_remove(&chat, "a", "c").unwrap().remove, names(&["c"]));
        assert_eq!(
            plan_remove(&chat, "a", "z"),
            Err(Error::NotFound("z is not a member of chat c".into()))
        );
    }

    #[test]
    fn the_longest_standing_member_takes_over_from_the_last_admin() {
        // Ties on joined_at go to the smaller user id.
        let chat = group(&[
            ("a", Role::Admin, 1),
            ("d", Role::Member, 3),
            ("c", Role::Member, 2),
            ("b", Role::Member, 2),
        ]);
        let plan = plan_remove(&chat, "a", "a").unwrap();
        assert_eq!(plan.promote.as_deref(), Some("b"));
        // Another admin remains: nobody is promoted.
        let chat = group(&[
            ("a", Role::Admin, 1),
            ("b", Role::Admin, 2),
            ("c", Role::Member, 0),
        ]);
        assert_eq!(plan_remove(&chat, "a", "a").unwrap().promote, None);
        // The last member leaves: nobody to promote.
        let chat = group(&[("a", Role::Admin, 1)]);
        assert_eq!(plan_remove(&chat, "a", "a").unwrap().promote, None);
    }

    #[test]
    fn erasing_takes_a_user_out_of_any_chat_and_keeps_a_group_admin() {
        let chat = group(&[
            ("a", Role::Admin, 1),
            ("b", Role::Member, 2),
            ("c", Role::Member, 3),
        ]);
        let plan = plan_erase(&chat, "a");
        assert_eq!(plan.remove, names(&["a"]));
        assert_eq!(plan.promote.as_deref(), Some("b"));
        assert_eq!(plan_erase(&chat, "c").promote, None);
        assert!(plan_erase(&chat, "z").is_empty());
        let direct = Chat {
            kind: ChatKind::Direct,
            ..group(&[("a", Role::Member, 1), ("b", Role::Member, 1)])
        };
        assert!(plan_remove(&direct, "a", "a").is_err());
        let plan = plan_erase(&direct, "a");
        assert_eq!((plan.remove, plan.promote), (names(&["a"]), None));
    }
}
