//! The write operations the writer thread runs inside a batch, one after the other in one
//! transaction. Each makes all its checks (membership, idempotency key, limits) before its first
//! change, so a refusal has changed nothing and its neighbours in the batch commit; any other
//! error leaves the transaction half-written and the writer rolls the whole batch back. Each
//! pushes the events others must hear of, which the writer hands to the outbox after the commit.

use super::cache::WriterCache;
use super::reads::{load_chat, membership, message_from_row, push_position};
use super::{db_err, DeadLetter};
use crate::domain::cursors::{self, Cursor};
use crate::domain::idempotency;
use crate::domain::model::{
    Chat, ChatChange, ChatChangeKind, ChatKind, Event, Message, PushProvider, PushToken, Role,
};
use crate::store::{Appended, CursorMove, MemberRule, NewChat, NewMessage, ERASED_KEY_PREFIX};
use crate::{domain::ids, Error, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Arc;

/// `ON CONFLICT` names the idempotency index alone, so a violation of any other constraint
/// (the primary key, NOT NULL) still fails the insert, never skipped as with `OR IGNORE`.
pub(super) const INSERT_MESSAGE: &str = concat!(
    "INSERT INTO messages (",
    message_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
     ON CONFLICT (sender_user_id, client_msg_id) DO NOTHING"
);

const SELECT_BY_KEY: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE sender_user_id = ?1 AND client_msg_id = ?2"
);

pub(super) fn append(
    c: &Connection,
    cache: &mut WriterCache,
    m: NewMessage,
    events: &mut Vec<Event>,
) -> Result<Appended> {
    let last_seq = cache
        .membership(c, &m.chat_id, &m.sender_user_id)?
        .require(&m.chat_id)?
        .last_seq;
    // The `(sender, client_msg_id)` check rides on the insert: the insert probes the unique
    // index anyway, so a look-up before it searched that B-tree twice per message. The seq is
    // taken only if the row goes in (the cache is bumped after the insert).
    let seq = last_seq + 1;
    let message = Message {
        message_id: ids::new_id(),
        chat_id: m.chat_id,
        seq,
        sender_user_id: m.sender_user_id,
        sender_device_id: m.sender_device_id,
        client_msg_id: m.client_msg_id,
        content: m.content,
        created_at: m.created_at,
        wire: Default::default(),
    };
    let attributes = if message.content.attributes.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&message.content.attributes).map_err(Error::internal)?)
    };
    let ciphertext =
        (!message.content.ciphertext.is_empty()).then_some(&message.content.ciphertext);
    let inserted = c
        .prepare_cached(INSERT_MESSAGE)
        .map_err(db_err)?
        .execute(params![
            message.message_id,
            message.chat_id,
            seq as i64,
            message.sender_user_id,
            message.sender_device_id,
            message.client_msg_id,
            message.content.text,
            ciphertext,
            attributes,
            message.created_at,
        ])
        .map_err(db_err)?;
    if inserted == 0 {
        // Only the idempotency index can make the insert do nothing (any other constraint
        // still fails it): the key was used before. The original is read on this rare path.
        let original = c
            .prepare_cached(SELECT_BY_KEY)
            .map_err(db_err)?
            .query_row(
                params![message.sender_user_id, message.client_msg_id],
                message_from_row,
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| Error::internal("an idempotency conflict without its message"))?;
        return idempotency::repeated(Arc::new(original), &message.chat_id);
    }
    // The chat's row follows at the batch's end (WriterCache::flush).
    cache.appended(&message.chat_id, seq, message.created_at)?;
    let message = Arc::new(message);
    events.push(Event::Message(message.clone()));
    Ok(Appended {
        message,
        duplicate: false,
    })
}

pub(super) fn create_chat(
    c: &Connection,
    chat: NewChat,
    events: &mut Vec<Event>,
) -> Result<(Chat, bool)> {
    if let Some(key) = &chat.direct_key {
        let existing: Option<String> = c
            .prepare_cached("SELECT chat_id FROM chats WHERE direct_key = ?1")
            .map_err(db_err)?
            .query_row([key], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        if let Some(id) = existing {
            let chat = load_chat(c, &id)?.ok_or_else(|| Error::internal("direct chat vanished"))?;
            return Ok((chat, false));
        }
    }
    let chat_id = ids::new_id();
    c.prepare_cached(
        "INSERT INTO chats (chat_id, kind, title, direct_key, last_seq, created_at, last_activity_at) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
    )
    .map_err(db_err)?
    .execute(params![chat_id, kind_code(chat.kind), chat.title, chat.direct_key, chat.created_at])
    .map_err(db_err)?;
    for (user_id, role) in &chat.members {
        insert_member(c, &chat_id, user_id, *role, chat.created_at, 0)?;
    }
    let loaded = load_chat(c, &chat_id)?.ok_or_else(|| Error::internal("new chat vanished"))?;
    events.push(Event::Chat(Arc::new(ChatChange {
        kind: ChatChangeKind::Created,
        user_ids: chat.members.into_iter().map(|(u, _)| u).collect(),
        chat: loaded.clone(),
    })));
    Ok((loaded, true))
}

fn insert_member(
    c: &Connection,
    chat_id: &str,
    user_id: &str,
    role: Role,
    now: i64,
    joined_seq: u64,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO members (chat_id, user_id, role, joined_at, joined_seq, read_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )
    .map_err(db_err)?
    .execute(params![chat_id, user_id, role_code(role), now, joined_seq as i64])
    .map_err(db_err)?;
    Ok(())
}

pub(super) fn change_members(
    c: &Connection,
    chat_id: &str,
    rule: MemberRule,
    now: i64,
    events: &mut Vec<Event>,
) -> Result<Chat> {
    let chat = load_chat(c, chat_id)?.ok_or_else(|| Error::chat_not_found(chat_id))?;
    let plan = rule(&chat)?;
    if plan.is_empty() {
        return Ok(chat);
    }
    for u in &plan.remove {
        c.prepare_cached("DELETE FROM members WHERE chat_id = ?1 AND user_id = ?2")
            .map_err(db_err)?
            .execute(params![chat_id, u])
            .map_err(db_err)?;
    }
    for u in &plan.add {
        insert_member(c, chat_id, u, Role::Member, now, chat.last_seq)?;
    }
    // A removed member's positions go with them; a re-added member's old ones predate its new
    // joined_seq.
    for u in plan.remove.iter().chain(&plan.add) {
        c.prepare_cached("DELETE FROM device_cursors WHERE user_id = ?1 AND chat_id = ?2")
            .map_err(db_err)?
            .execute(params![u, chat_id])
            .map_err(db_err)?;
    }
    if let Some(u) = &plan.promote {
        c.prepare_cached("UPDATE members SET role = ?3 WHERE chat_id = ?1 AND user_id = ?2")
            .map_err(db_err)?
            .execute(params![chat_id, u, role_code(Role::Admin)])
            .map_err(db_err)?;
    }
    touch(c, chat_id, now)?;
    let changed = load_chat(c, chat_id)?.ok_or_else(|| Error::internal("chat vanished"))?;
    events.push(Event::Chat(Arc::new(ChatChange {
        kind: plan.kind,
        user_ids: plan.user_ids(),
        chat: changed.clone(),
    })));
    Ok(changed)
}

fn touch(c: &Connection, chat_id: &str, now: i64) -> Result<()> {
    c.prepare_cached(
        "UPDATE chats SET last_activity_at = MAX(last_activity_at, ?2) WHERE chat_id = ?1",
    )
    .map_err(db_err)?
    .execute(params![chat_id, now])
    .map_err(db_err)?;
    Ok(())
}

pub(super) fn register_device(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    now: i64,
) -> Result<bool> {
    let inserted = c
        .prepare_cached(
            "INSERT OR IGNORE INTO devices (user_id, device_id, created_at) VALUES (?1, ?2, ?3)",
        )
        .map_err(db_err)?
        .execute(params![user_id, device_id, now])
        .map_err(db_err)?;
    if inserted == 0 {
        return Ok(false);
    }
    // A new device starts at the present: older messages are history, not backlog.
    c.prepare_cached(
        "INSERT OR IGNORE INTO device_cursors (user_id, device_id, chat_id, delivered_seq, delivered_at, read_seq, read_at)
         SELECT ?1, ?2, m.chat_id, c.last_seq, ?3, m.read_seq, m.read_at
         FROM members m JOIN chats c ON c.chat_id = m.chat_id WHERE m.user_id = ?1",
    )
    .map_err(db_err)?
    .execute(params![user_id, device_id, now])
    .map_err(db_err)?;
    Ok(true)
}

/// Stores a push token for its device (registering the device if new). The token leaves any
/// other device that held it, and the device's earlier token of the provider is replaced.
pub(super) fn register_push_token(c: &Connection, t: &PushToken) -> Result<()> {
    register_device(c, &t.user_id, &t.device_id, t.created_at)?;
    c.prepare_cached(
        "DELETE FROM push_tokens
         WHERE (provider = ?1 AND token = ?2) OR (user_id = ?3 AND device_id = ?4 AND provider = ?1)",
    )
    .map_err(db_err)?
    .execute(params![t.provider.name(), t.token, t.user_id, t.device_id])
    .map_err(db_err)?;
    c.prepare_cached(
        "INSERT INTO push_tokens (provider, token, user_id, device_id, app_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .map_err(db_err)?
    .execute(params![
        t.provider.name(),
        t.token,
        t.user_id,
        t.device_id,
        t.app_id,
        t.created_at
    ])
    .map_err(db_err)?;
    Ok(())
}

/// Removes (provider, token), only if `user_id` holds it when given; whether it was there.
pub(super) fn unregister_push_token(
    c: &Connection,
    user_id: Option<&str>,
    provider: PushProvider,
    token: &str,
) -> Result<bool> {
    let removed = c
        .prepare_cached(
            "DELETE FROM push_tokens
             WHERE provider = ?1 AND token = ?2 AND (?3 IS NULL OR user_id = ?3)",
        )
        .map_err(db_err)?
        .execute(params![provider.name(), token, user_id])
        .map_err(db_err)?;
    Ok(removed > 0)
}

/// Moves a delivered or read cursor forward and reports the receipts that changed. `seq`
/// beyond the chat's last seq is an error, a `seq` at or below the cursor changes nothing.
/// Reading implies having received: a read moves the device's delivered cursor up with it.
/// The cursor rule is `domain::cursors::advance`; this reads and persists its result.
pub(super) fn move_cursor(
    c: &Connection,
    cache: &mut WriterCache,
    m: CursorMove,
    events: &mut Vec<Event>,
) -> Result<()> {
    let last_seq = cache
        .membership(c, &m.chat_id, &m.user_id)?
        .require(&m.chat_id)?
        .last_seq;
    let cursor = c
        .prepare_cached(
            "SELECT delivered_seq, delivered_at, read_seq, read_at FROM device_cursors
             WHERE user_id = ?1 AND device_id = ?2 AND chat_id = ?3",
        )
        .map_err(db_err)?
        .query_row(params![m.user_id, m.device_id, m.chat_id], |r| {
            Ok(Cursor {
                delivered_seq: r.get::<_, i64>(0)? as u64,
                delivered_at: r.get(1)?,
                read_seq: r.get::<_, i64>(2)? as u64,
                read_at: r.get(3)?,
            })
        })
        .optional()
        .map_err(db_err)?
        .unwrap_or_default();
    let Some(moved) = cursors::advance(cursor, &m, last_seq)? else {
        return Ok(());
    };
    let next = moved.cursor;
    c.prepare_cached(
        "INSERT INTO device_cursors (user_id, device_id, chat_id, delivered_seq, delivered_at, read_seq, read_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (user_id, device_id, chat_id) DO UPDATE SET
             delivered_seq = excluded.delivered_seq, delivered_at = excluded.delivered_at,
             read_seq = excluded.read_seq, read_at = excluded.read_at",
    )
    .map_err(db_err)?
    .execute(params![
        m.user_id,
        m.device_id,
        m.chat_id,
        next.delivered_seq as i64,
        next.delivered_at,
        next.read_seq as i64,
        next.read_at,
    ])
    .map_err(db_err)?;
    if moved.read {
        c.prepare_cached(
            "UPDATE members SET read_seq = ?3, read_at = ?4 WHERE chat_id = ?1 AND user_id = ?2 AND read_seq < ?3",
        )
        .map_err(db_err)?
        .execute(params![m.chat_id, m.user_id, next.read_seq as i64, next.read_at])
        .map_err(db_err)?;
    }
    events.extend(moved.receipts(&m).into_iter().map(Event::Receipt));
    Ok(())
}

/// Sets or clears a member's mute; a non-member is refused as everywhere else (the membership
/// check and the change are in one transaction of the one writer, so nothing comes between).
pub(super) fn set_muted(
    c: &Connection,
    chat_id: &str,
    user_id: &str,
    until: Option<i64>,
) -> Result<()> {
    membership(c, chat_id, user_id)?.require(chat_id)?;
    c.prepare_cached("UPDATE members SET muted_until = ?3 WHERE chat_id = ?1 AND user_id = ?2")
        .map_err(db_err)?
        .execute(params![chat_id, user_id, until])
        .map_err(db_err)?;
    Ok(())
}

pub(super) fn purge(c: &Connection, before: i64, limit: u32) -> Result<u64> {
    let n = c
        .prepare_cached(
            // `messages` has no rowid: its key is (chat_id, seq).
            "DELETE FROM messages WHERE (chat_id, seq) IN
                 (SELECT chat_id, seq FROM messages WHERE created_at < ?1 LIMIT ?2)",
        )
        .map_err(db_err)?
        .execute(params![before, limit])
        .map_err(db_err)?;
    Ok(n as u64)
}

pub(super) fn set_last_seen(c: &Connection, user_id: &str, at: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO last_seen (user_id, at) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET at = MAX(at, excluded.at)",
    )
    .map_err(db_err)?
    .execute(params![user_id, at])
    .map_err(db_err)?;
    Ok(())
}

// The codes the schema stores for kinds and roles (see migrations/sqlite/0001_core.sql).

fn kind_code(kind: ChatKind) -> i64 {
    match kind {
        ChatKind::Direct => 1,
        ChatKind::Group => 2,
    }
}

fn role_code(role: Role) -> i64 {
    match role {
        Role::Member => 1,
        Role::Admin => 2,
    }
}

/// A push intent for each message of a batch about to commit.
pub(super) fn push_intents(c: &Connection, events: &[Event]) -> Result<()> {
    let mut stmt = c
        .prepare_cached("INSERT INTO push_intents (chat_id, seq) VALUES (?1, ?2)")
        .map_err(db_err)?;
    for event in events {
        if let Event::Message(m) = event {
            stmt.execute(params![m.chat_id, m.seq as i64])
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Moves `lane` to `up_to` and removes the intents every one of `lanes` is past (none while a
/// lane has no position yet: it has not started).
pub(super) fn push_intents_done(
    c: &Connection,
    lane: PushProvider,
    up_to: i64,
    lanes: &[PushProvider],
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO push_positions (provider, done_up_to) VALUES (?1, ?2)
         ON CONFLICT (provider) DO UPDATE SET done_up_to = MAX(done_up_to, excluded.done_up_to)",
    )
    .map_err(db_err)?
    .execute(params![lane.name(), up_to])
    .map_err(db_err)?;
    let mut all_past = i64::MAX;
    for l in lanes {
        all_past = all_past.min(push_position(c, *l)?);
    }
    c.prepare_cached("DELETE FROM push_intents WHERE id <= ?1")
        .map_err(db_err)?
        .execute(params![all_past])
        .map_err(db_err)?;
    Ok(())
}

pub(super) fn push_dead_letter(c: &Connection, d: &DeadLetter) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO push_dead_letters (user_id, device_id, provider, chat_id, seq, reason, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(db_err)?
    .execute(params![
        d.user_id,
        d.device_id,
        d.provider.name(),
        d.chat_id,
        d.seq as i64,
        d.reason,
        d.at
    ])
    .map_err(db_err)?;
    Ok(())
}

/// [`crate::store::UserDataStore::erase_user`]. SQLite's `secure_delete` is on for its
/// statements, so the erased content is overwritten in the file rather than left in free
/// space (the WAL keeps the old pages until its next checkpoint).
pub(super) fn erase_user(c: &Connection, user_id: &str) -> Result<u64> {
    c.pragma_update(None, "secure_delete", true)
        .map_err(db_err)?;
    let erased = erase_user_rows(c, user_id);
    let reset = c
        .pragma_update(None, "secure_delete", false)
        .map_err(db_err);
    let erased = erased?;
    reset?;
    Ok(erased)
}

fn erase_user_rows(c: &Connection, user_id: &str) -> Result<u64> {
    let erased = c
        .prepare_cached(
            "UPDATE messages SET text = '', ciphertext = NULL, attributes = NULL,
                 sender_device_id = '', client_msg_id = ?2 || message_id
             WHERE sender_user_id = ?1 AND substr(client_msg_id, 1, length(?2)) <> ?2",
        )
        .map_err(db_err)?
        .execute(params![user_id, ERASED_KEY_PREFIX])
        .map_err(db_err)?;
    for statement in [
        "DELETE FROM push_tokens WHERE user_id = ?1",
        "DELETE FROM device_cursors WHERE user_id = ?1",
        "DELETE FROM devices WHERE user_id = ?1",
        "DELETE FROM last_seen WHERE user_id = ?1",
        "DELETE FROM members WHERE user_id = ?1",
        // A direct chat's key is its sorted pair joined by a newline (domain::chats), and a
        // user id holds no newline.
        "UPDATE chats SET direct_key = NULL WHERE kind = 1 AND
             (substr(direct_key, 1, length(?1) + 1) = ?1 || char(10)
              OR substr(direct_key, -length(?1) - 1) = char(10) || ?1)",
    ] {
        c.prepare_cached(statement)
            .map_err(db_err)?
            .execute(params![user_id])
            .map_err(db_err)?;
    }
    Ok(erased as u64)
}
