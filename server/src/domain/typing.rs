//! Typing indicators: ephemeral, never stored, coalesced.
//!
//! The rule: a STARTED from a (chat, user) is forwarded at most once per [`REFRESH`]; each
//! forwarded STARTED tells receivers to drop the indicator at `now + TTL` unless refreshed. A
//! client that sends STARTED on every keystroke therefore costs its chat one event every 3 s.
//! STOPPED is forwarded only if STARTED was; a message from the user also ends their typing.

use super::{
    chats::member_access,
    model::{Event, Message, TypingNotice},
};
use crate::store::ChatStore;
use crate::Result;
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// How long an indicator lives without a refresh.
pub const TTL: Duration = Duration::from_secs(6);
/// The shortest gap between two forwarded STARTED events of one user in one chat.
pub const REFRESH: Duration = Duration::from_secs(3);

struct Typist {
    device_id: String,
    forwarded_at: Instant,
}

/// Who is typing where, as last forwarded: chat → user → typist. Keyed by chat first so that
/// the fan-out's check on every message ([`Typing::message_sent`]) is a lookup by `&str`, with
/// no allocation, and misses at once in chats where nobody types.
#[derive(Default)]
pub struct Typing {
    typists: Mutex<HashMap<String, HashMap<String, Typist>>>,
}

impl Typing {
    /// Whether a STARTED (or STOPPED) from this user in this chat would be forwarded now.
    pub fn would_forward(&self, chat_id: &str, user_id: &str, started: bool, now: Instant) -> bool {
        let typists = self.typists.lock();
        match typists.get(chat_id).and_then(|chat| chat.get(user_id)) {
            None => started,
            Some(t) if started => now.saturating_duration_since(t.forwarded_at) >= REFRESH,
            Some(t) => now.saturating_duration_since(t.forwarded_at) < TTL,
        }
    }

    /// Records a change that is being forwarded and returns the notice to send.
    pub fn record(
        &self,
        chat_id: &str,
        user_id: &str,
        device_id: &str,
        started: bool,
        now: Instant,
        now_ms: i64,
    ) -> TypingNotice {
        if started {
            let typist = Typist {
                device_id: device_id.to_string(),
                forwarded_at: now,
            };
            let mut typists = self.typists.lock();
            let chat = typists.entry(chat_id.to_string()).or_default();
            chat.insert(user_id.to_string(), typist);
        } else {
            self.remove(chat_id, user_id);
        }
        TypingNotice {
            chat_id: chat_id.to_string(),
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            started,
            expires_at: if started {
                now_ms + TTL.as_millis() as i64
            } else {
                now_ms
            },
        }
    }

    fn remove(&self, chat_id: &str, user_id: &str) -> Option<Typist> {
        let mut typists = self.typists.lock();
        let chat = typists.get_mut(chat_id)?;
        let typist = chat.remove(user_id);
        if chat.is_empty() {
            typists.remove(chat_id);
        }
        typist
    }

    /// A message from `user_id` in `chat_id` ends their typing there: the STOPPED to send, if
    /// they were typing.
    pub fn message_sent(
        &self,
        chat_id: &str,
        user_id: &str,
        now: Instant,
        now_ms: i64,
    ) -> Option<TypingNotice> {
        let typist = self.remove(chat_id, user_id)?;
        if now.saturating_duration_since(typist.forwarded_at) >= TTL {
            return None; // receivers already dropped it
        }
        Some(TypingNotice {
            chat_id: chat_id.to_string(),
            user_id: user_id.to_string(),
            device_id: typist.device_id,
            started: false,
            expires_at: now_ms,
        })
    }

    /// [`Typing::message_sent`] for a committed message, as the event to fan out.
    pub fn message_ended_typing(&self, m: &Message) -> Option<Event> {
        self.message_sent(&m.chat_id, &m.sender_user_id, Instant::now(), m.created_at)
            .map(|stop| Event::Typing(Arc::new(stop)))
    }

    /// Forgets indicators that expired by themselves.
    pub fn sweep(&self, now: Instant) {
        self.typists.lock().retain(|_, chat| {
            chat.retain(|_, t| now.saturating_duration_since(t.forwarded_at) < TTL);
            !chat.is_empty()
        });
    }
}

/// Checks and forwards typing changes to the fan-out.
pub struct TypingService {
    typing: Arc<Typing>,
    store: Arc<dyn ChatStore>,
    /// The fan-out's input for events that are never stored.
    events: mpsc::Sender<Event>,
}

impl TypingService {
    pub fn new(
        typing: Arc<Typing>,
        store: Arc<dyn ChatStore>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        TypingService {
            typing,
            store,
            events,
        }
    }

    pub async fn set(
        &self,
        user_id: &str,
        device_id: &str,
        chat_id: &str,
        started: bool,
        now_ms: i64,
    ) -> Result<()> {
        let now = Instant::now();
        if !self.typing.would_forward(chat_id, user_id, started, now) {
            // A coalesced STARTED follows one that passed the membership check moments ago;
            // a STOPPED with nothing to stop is rare, so it is checked in full.
            match started {
                true => crate::domain::ids::check_chat_id(chat_id)?,
                false => {
                    member_access(self.store.as_ref(), chat_id, user_id).await?;
                }
            }
            return Ok(());
        }
        member_access(self.store.as_ref(), chat_id, user_id).await?;
        let notice = self
            .typing
            .record(chat_id, user_id, device_id, started, now, now_ms);
        // Best effort by design: if the fan-out is swamped, an indicator is the thing to drop.
        let _ = self.events.try_send(Event::Typing(Arc::new(notice)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_started_is_coalesced_until_the_refresh() {
        let t = Typing::default();
        let t0 = Instant::now();
        assert!(t.would_forward("c", "u", true, t0));
        let n = t.record("c", "u", "d", true, t0, 1_000);
        assert_eq!(n.expires_at, 7_000);
        assert!(!t.would_forward("c", "u", true, t0 + Duration::from_secs(1)));
        assert!(t.would_forward("c", "u", true, t0 + REFRESH));
        assert!(
            t.would_forward("c", "other", true, t0),
            "other users are independent"
        );
    }

    #[test]
    fn stopped_only_after_started_and_messages_end_typing() {
        let t = Typing::default();
        let t0 = Instant::now();
        assert!(!t.would_forward("c", "u", false, t0), "nothing to stop");
        t.record("c", "u", "d", true, t0, 0);
        assert!(t.would_forward("c", "u", false, t0));
        let stop = t.message_sent("c", "u", t0, 5).unwrap();
        assert!(!stop.started && stop.device_id == "d");
        assert!(t.message_sent("c", "u", t0, 5).is_none());
        t.record("c", "u", "d", true, t0, 0);
        assert!(
            t.message_sent("c", "u", t0 + TTL, 0).is_none(),
            "already expired"
        );
    }

    #[test]
    fn sweep_forgets_expired_indicators() {
        let t = Typing::default();
        let t0 = Instant::now();
        t.record("c", "u", "d", true, t0, 0);
        t.sweep(t0 + TTL);
        assert!(!t.would_forward("c", "u", false, t0 + TTL));
    }
}
