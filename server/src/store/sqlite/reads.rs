//! The read-only queries, run on a small pool of read-only connections that WAL lets read
//! beside the writer. A few of them (membership, loading a chat, a message row) also serve the
//! writes' checks inside the writer's transaction, so they take any connection.

use super::{db_err, stopped};
use crate::domain::model::{
    Chat, ChatKind, ChatView, Content, Member, Message, PushProvider, PushToken, Receipt,
    ReceiptKind, Role,
};
use crate::domain::user_data::UserRecord;
use crate::store::{Access, ActivityKey, Membership, ResumeChat, ResumePlan, SeqRange};
use crate::{Error, Result};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio::sync::Semaphore;

// Message queries as constants (the columns are `message_columns!`), so a call hashes the text
// for the statement cache without building it first.
const SELECT_ONE: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE chat_id = ?1 AND seq = ?2"
);
const SELECT_RANGE: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE chat_id = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4"
);
const SELECT_RANGE_NEWEST_FIRST: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE chat_id = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
);
const SELECT_SENT: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE sender_user_id = ?1 AND client_msg_id > ?2 ORDER BY client_msg_id LIMIT ?3"
);

fn kind_from(code: i64) -> ChatKind {
    if code == 1 {
        ChatKind::Direct
    } else {
        ChatKind::Group
    }
}

fn role_from(code: i64) -> Role {
    if code == 2 {
        Role::Admin
    } else {
        Role::Member
    }
}

pub(super) fn membership(c: &Connection, chat_id: &str, user_id: &str) -> Result<Membership> {
    let row = c
        .prepare_cached(
            "SELECT c.kind, c.last_seq, m.role, m.joined_seq FROM chats c
             LEFT JOIN members m ON m.chat_id = c.chat_id AND m.user_id = ?2 WHERE c.chat_id = ?1",
        )
        .map_err(db_err)?
        .query_row(params![chat_id, user_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .optional()
        .map_err(db_err)?;
    Ok(match row {
        None => Membership::NoSuchChat,
        Some((_, _, None, _)) => Membership::NotMember,
        Some((kind, last_seq, Some(role), joined_seq)) => Membership::Member(Access {
            role: role_from(role),
            kind: kind_from(kind),
            joined_seq: joined_seq.unwrap_or(0) as u64,
            last_seq: last_seq as u64,
        }),
    })
}

pub(super) fn load_chat(c: &Connection, chat_id: &str) -> Result<Option<Chat>> {
    let row = c
        .prepare_cached("SELECT kind, title, last_seq, created_at, last_activity_at FROM chats WHERE chat_id = ?1")
        .map_err(db_err)?
        .query_row([chat_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(4)?))
        })
        .optional()
        .map_err(db_err)?;
    let Some((kind, title, last_seq, created_at, last_activity_at)) = row else {
        return Ok(None);
    };
    let mut stmt = c
        .prepare_cached("SELECT user_id, role, joined_at, joined_seq FROM members WHERE chat_id = ?1 ORDER BY joined_at, user_id")
        .map_err(db_err)?;
    let members = stmt
        .query_map([chat_id], |r| {
            Ok(Member {
                user_id: r.get(0)?,
                role: role_from(r.get(1)?),
                joined_at: r.get(2)?,
                joined_seq: r.get::<_, i64>(3)? as u64,
            })
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    Ok(Some(Chat {
        chat_id: chat_id.to_string(),
        kind: kind_from(kind),
        title,
        members,
        last_seq: last_seq as u64,
        created_at,
        last_activity_at,
    }))
}

pub(super) fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let attributes: Option<String> = r.get(8)?;
    let attributes: BTreeMap<String, String> = match attributes {
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e))
        })?,
        None => BTreeMap::new(),
    };
    Ok(Message {
        message_id: r.get(0)?,
        chat_id: r.get(1)?,
        seq: r.get::<_, i64>(2)? as u64,
        sender_user_id: r.get(3)?,
        sender_device_id: r.get(4)?,
        client_msg_id: r.get(5)?,
        content: Content {
            text: r.get(6)?,
            ciphertext: r.get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default(),
            attributes,
        },
        created_at: r.get(9)?,
        wire: Default::default(),
    })
}

pub(super) fn chat_view(c: &Connection, chat_id: &str, user_id: &str) -> Result<Option<ChatView>> {
    let Some(chat) = load_chat(c, chat_id)? else {
        return Ok(None);
    };
    let Some(member) = chat.member(user_id) else {
        return Ok(None);
    };
    let joined_seq = member.joined_seq;
    let (read_seq, muted_until): (i64, Option<i64>) = c
        .prepare_cached(
            "SELECT read_seq, muted_until FROM members WHERE chat_id = ?1 AND user_id = ?2",
        )
        .map_err(db_err)?
        .query_row(params![chat_id, user_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db_err)?;
    let read_seq = (read_seq as u64).max(joined_seq);
    let unread_count: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM messages WHERE chat_id = ?1 AND seq > ?2 AND sender_user_id != ?3")
        .map_err(db_err)?
        .query_row(params![chat_id, read_seq as i64, user_id], |r| r.get(0))
        .map_err(db_err)?;
    let last_message = if chat.last_seq > joined_seq {
        c.prepare_cached(SELECT_ONE)
            .map_err(db_err)?
            .query_row(params![chat_id, chat.last_seq as i64], message_from_row)
            .optional()
            .map_err(db_err)?
    } else {
        None
    };
    Ok(Some(ChatView {
        chat,
        read_seq,
        unread_count: unread_count as u64,
        last_message,
        muted_until,
    }))
}

/// Who reached `min_seq` in a chat: each device's delivered and read cursor, and each member's
/// read position (as a receipt with an empty device id). Only current members count.
pub(super) fn receipts(c: &Connection, chat_id: &str, min_seq: u64) -> Result<Vec<Receipt>> {
    let min = min_seq as i64;
    let mut out = Vec::new();
    let mut stmt = c
        .prepare_cached(
            "SELECT d.user_id, d.device_id, d.delivered_seq, d.delivered_at, d.read_seq, d.read_at
             FROM device_cursors d JOIN members m ON m.chat_id = d.chat_id AND m.user_id = d.user_id
             WHERE d.chat_id = ?1 AND d.delivered_seq >= ?2 AND d.delivered_seq > m.joined_seq
             ORDER BY d.user_id, d.device_id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![chat_id, min], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (user_id, device_id, delivered, delivered_at, read, read_at) = row.map_err(db_err)?;
        let receipt = |kind, seq: i64, at| Receipt {
            chat_id: chat_id.to_string(),
            user_id: user_id.clone(),
            device_id: device_id.clone(),
            kind,
            seq: seq as u64,
            at,
        };
        out.push(receipt(ReceiptKind::Delivered, delivered, delivered_at));
        if read >= min {
            out.push(receipt(ReceiptKind::Read, read, read_at));
        }
    }
    let mut stmt = c
        .prepare_cached(
            "SELECT user_id, read_seq, read_at FROM members
             WHERE chat_id = ?1 AND read_seq >= ?2 AND read_seq > joined_seq ORDER BY user_id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![chat_id, min], |r| {
            Ok(Receipt {
                chat_id: chat_id.to_string(),
                user_id: r.get(0)?,
                device_id: String::new(),
                kind: ReceiptKind::Read,
                seq: r.get::<_, i64>(1)? as u64,
                at: r.get(2)?,
            })
        })
        .map_err(db_err)?;
    for r in rows {
        out.push(r.map_err(db_err)?);
    }
    Ok(out)
}

/// A few read-only connections; a read borrows one on the blocking pool.
pub(super) struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    pub(super) fn new(conns: Vec<Connection>) -> Readers {
        Readers {
            permits: Semaphore::new(conns.len()),
            idle: Mutex::new(conns),
        }
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(|_| stopped())?;
        let conn = self
            .idle
            .lock()
            .pop()
            .ok_or_else(|| Error::internal("reader pool empty"))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            (conn, r)
        })
        .await
        .map_err(Error::internal)?;
        self.idle.lock().push(conn);
        result
    }
}

pub(super) fn chat_members(c: &Connection, chat_id: &str) -> Result<Vec<String>> {
    let mut stmt = c
        .prepare_cached("SELECT user_id FROM members WHERE chat_id = ?1")
        .map_err(db_err)?;
    let rows = stmt.query_map([chat_id], |r| r.get(0)).map_err(db_err)?;
    rows.collect::<rusqlite::Result<Vec<String>>>()
        .map_err(db_err)
}

/// Those of `users` who have the chat muted at `now`, in the order asked. One read of the
/// chat's mutes (few members mute), not one per user asked about (a group may have thousands).
pub(super) fn muted_members(
    c: &Connection,
    chat_id: &str,
    users: Vec<String>,
    now: i64,
) -> Result<Vec<String>> {
    let mut stmt = c
        .prepare_cached("SELECT user_id FROM members WHERE chat_id = ?1 AND muted_until > ?2")
        .map_err(db_err)?;
    let muted = stmt
        .query_map(params![chat_id, now], |r| r.get::<_, String>(0))
        .map_err(db_err)?
        .collect::<rusqlite::Result<HashSet<_>>>()
        .map_err(db_err)?;
    Ok(users.into_iter().filter(|u| muted.contains(u)).collect())
}

/// Groups per user, through `members_by_user` and the chats' primary key.
pub(super) fn group_counts(c: &Connection, user_ids: Vec<String>) -> Result<HashMap<String, u32>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT count(*) FROM members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.user_id = ?1 AND c.kind = 2",
        )
        .map_err(db_err)?;
    let mut out = HashMap::new();
    for u in user_ids {
        let n: i64 = stmt.query_row([&u], |r| r.get(0)).map_err(db_err)?;
        if n > 0 {
            out.insert(u, n as u32);
        }
    }
    Ok(out)
}

pub(super) fn direct_chat_id(c: &Connection, direct_key: &str) -> Result<Option<String>> {
    c.prepare_cached("SELECT chat_id FROM chats WHERE direct_key = ?1")
        .map_err(db_err)?
        .query_row([direct_key], |r| r.get(0))
        .optional()
        .map_err(db_err)
}

pub(super) fn list_chats(
    c: &Connection,
    user_id: &str,
    after: Option<ActivityKey>,
    limit: u32,
) -> Result<Vec<ChatView>> {
    let (at, id) = after
        .map(|k| (k.last_activity_at, k.chat_id))
        .unwrap_or((i64::MAX, String::new()));
    let mut stmt = c
        .prepare_cached(
            "SELECT c.chat_id FROM members m JOIN chats c ON c.chat_id = m.chat_id
                         WHERE m.user_id = ?1 AND (c.last_activity_at < ?2 OR (c.last_activity_at = ?2 AND (?3 = '' OR c.chat_id < ?3)))
                         ORDER BY c.last_activity_at DESC, c.chat_id DESC LIMIT ?4",
        )
        .map_err(db_err)?;
    let ids = stmt
        .query_map(params![user_id, at, id, limit], |r| r.get::<_, String>(0))
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(v) = chat_view(c, &id, user_id)? {
            views.push(v);
        }
    }
    Ok(views)
}

pub(super) fn messages(
    c: &Connection,
    chat_id: &str,
    range: SeqRange,
    limit: u32,
) -> Result<Vec<Message>> {
    let sql = if range.newest_first {
        SELECT_RANGE_NEWEST_FIRST
    } else {
        SELECT_RANGE
    };
    let mut stmt = c.prepare_cached(sql).map_err(db_err)?;
    let before = range.before.min(i64::MAX as u64) as i64;
    let rows = stmt
        .query_map(
            params![chat_id, range.after as i64, before, limit],
            message_from_row,
        )
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
}

pub(super) fn resume_plan(c: &Connection, user_id: &str, device_id: &str) -> Result<ResumePlan> {
    let mut stmt = c
        .prepare_cached(
            "SELECT m.chat_id, m.joined_seq, COALESCE(d.delivered_seq, 0), c.last_seq
                         FROM members m JOIN chats c ON c.chat_id = m.chat_id
                         LEFT JOIN device_cursors d ON d.user_id = m.user_id AND d.device_id = ?2 AND d.chat_id = m.chat_id
                         WHERE m.user_id = ?1 ORDER BY m.chat_id",
        )
        .map_err(db_err)?;
    let chats = stmt
        .query_map(params![user_id, device_id], |r| {
            Ok(ResumeChat {
                chat_id: r.get(0)?,
                joined_seq: r.get::<_, i64>(1)? as u64,
                delivered_seq: r.get::<_, i64>(2)? as u64,
                last_seq: r.get::<_, i64>(3)? as u64,
            })
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    Ok(ResumePlan { chats })
}

pub(super) fn last_seen(c: &Connection, user_ids: Vec<String>) -> Result<HashMap<String, i64>> {
    let mut stmt = c
        .prepare_cached("SELECT at FROM last_seen WHERE user_id = ?1")
        .map_err(db_err)?;
    let mut out = HashMap::new();
    for u in user_ids {
        if let Some(at) = stmt
            .query_row([&u], |r| r.get(0))
            .optional()
            .map_err(db_err)?
        {
            out.insert(u, at);
        }
    }
    Ok(out)
}

pub(super) fn push_tokens(c: &Connection, user_ids: Vec<String>) -> Result<Vec<PushToken>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT provider, token, user_id, device_id, app_id, created_at
             FROM push_tokens WHERE user_id = ?1 ORDER BY device_id, provider",
        )
        .map_err(db_err)?;
    let mut out = Vec::new();
    for user_id in user_ids {
        let rows = stmt
            .query_map(params![user_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PushToken {
                        provider: PushProvider::Fcm,
                        token: r.get(1)?,
                        user_id: r.get(2)?,
                        device_id: r.get(3)?,
                        app_id: r.get(4)?,
                        created_at: r.get(5)?,
                    },
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (provider, mut token) = row.map_err(db_err)?;
            // A provider this build does not know (a newer node wrote it) is skipped, not an
            // error for the whole lookup.
            if let Some(p) = PushProvider::from_name(&provider) {
                token.provider = p;
                out.push(token);
            }
        }
    }
    Ok(out)
}

pub(super) fn contacts_among(
    c: &Connection,
    user_id: &str,
    candidates: Vec<String>,
) -> Result<Vec<String>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM members a JOIN members b ON b.chat_id = a.chat_id
                         WHERE a.user_id = ?1 AND b.user_id = ?2)",
        )
        .map_err(db_err)?;
    let mut out = Vec::new();
    for u in candidates {
        if stmt
            .query_row(params![user_id, u], |r| r.get::<_, bool>(0))
            .map_err(db_err)?
        {
            out.push(u);
        }
    }
    Ok(out)
}

pub(super) fn ping(c: &Connection) -> Result<()> {
    c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err)
}

pub(super) fn push_intents(
    c: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<(i64, Option<Message>)>> {
    let intents: Vec<(i64, String, i64)> = c
        .prepare_cached(
            "SELECT id, chat_id, seq FROM push_intents WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .map_err(db_err)?
        .query_map(params![after, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(db_err)?
        .collect::<std::result::Result<_, _>>()
        .map_err(db_err)?;
    let mut message = c.prepare_cached(SELECT_ONE).map_err(db_err)?;
    intents
        .into_iter()
        .map(|(id, chat_id, seq)| {
            let m = message
                .query_row(params![chat_id, seq], message_from_row)
                .optional()
                .map_err(db_err)?;
            Ok((id, m))
        })
        .collect()
}

pub(super) fn push_position(c: &Connection, lane: PushProvider) -> Result<i64> {
    c.prepare_cached("SELECT done_up_to FROM push_positions WHERE provider = ?1")
        .map_err(db_err)?
        .query_row(params![lane.name()], |r| r.get(0))
        .optional()
        .map_err(db_err)
        .map(Option::unwrap_or_default)
}

pub(super) fn push_dead_letters(c: &Connection, provider: PushProvider) -> Result<u64> {
    c.prepare_cached("SELECT COUNT(*) FROM push_dead_letters WHERE provider = ?1")
        .map_err(db_err)?
        .query_row(params![provider.name()], |r| r.get::<_, i64>(0))
        .map_err(db_err)
        .map(|n| n.max(0) as u64)
}

/// [`crate::store::UserDataStore::user_records`]: devices, last seen, memberships, device
/// positions, push tokens, in that order.
pub(super) fn user_records(c: &Connection, user_id: &str) -> Result<Vec<UserRecord>> {
    let mut out = Vec::new();
    let mut stmt = c
        .prepare_cached(
            "SELECT device_id, created_at FROM devices WHERE user_id = ?1 ORDER BY device_id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([user_id], |r| {
            Ok(UserRecord::Device {
                device_id: r.get(0)?,
                created_at: r.get(1)?,
            })
        })
        .map_err(db_err)?;
    out.extend(rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?);
    if let Some(at) = last_seen(c, vec![user_id.to_string()])?.remove(user_id) {
        out.push(UserRecord::LastSeen { at });
    }
    let mut stmt = c
        .prepare_cached(
            "SELECT m.chat_id, c.kind, c.title, m.role, m.joined_at, m.joined_seq, m.read_seq,
                    m.read_at, m.muted_until
             FROM members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.user_id = ?1 ORDER BY m.chat_id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([user_id], |r| {
            Ok(UserRecord::Membership {
                chat_id: r.get(0)?,
                kind: kind_from(r.get(1)?),
                title: r.get(2)?,
                role: role_from(r.get(3)?),
                joined_at: r.get(4)?,
                joined_seq: r.get::<_, i64>(5)? as u64,
                read_seq: r.get::<_, i64>(6)? as u64,
                read_at: r.get(7)?,
                muted_until: r.get(8)?,
            })
        })
        .map_err(db_err)?;
    out.extend(rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?);
    let mut stmt = c
        .prepare_cached(
            "SELECT device_id, chat_id, delivered_seq, delivered_at, read_seq, read_at
             FROM device_cursors WHERE user_id = ?1 ORDER BY device_id, chat_id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([user_id], |r| {
            Ok(UserRecord::Cursor {
                device_id: r.get(0)?,
                chat_id: r.get(1)?,
                delivered_seq: r.get::<_, i64>(2)? as u64,
                delivered_at: r.get(3)?,
                read_seq: r.get::<_, i64>(4)? as u64,
                read_at: r.get(5)?,
            })
        })
        .map_err(db_err)?;
    out.extend(rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?);
    let mut stmt = c
        .prepare_cached(
            "SELECT device_id, provider, token, app_id, created_at
             FROM push_tokens WHERE user_id = ?1 ORDER BY device_id, provider",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([user_id], |r| {
            Ok(UserRecord::PushToken {
                device_id: r.get(0)?,
                provider: r.get(1)?,
                token: r.get(2)?,
                app_id: r.get(3)?,
                created_at: r.get(4)?,
            })
        })
        .map_err(db_err)?;
    out.extend(rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?);
    Ok(out)
}

/// [`crate::store::UserDataStore::sent_messages`].
pub(super) fn sent_messages(
    c: &Connection,
    user_id: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Message>> {
    let mut stmt = c.prepare_cached(SELECT_SENT).map_err(db_err)?;
    let rows = stmt
        .query_map(
            params![user_id, after.unwrap_or(""), limit],
            message_from_row,
        )
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
}
