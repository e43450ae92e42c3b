//! Typing indicators: who is typing in the open chat (until `expires_at` or STOPPED), and when
//! this user's own typing is worth telling the server.

use chat_sdk::{Typing, TypingState};
use std::collections::BTreeMap;

/// How often a STARTED is repeated while the user keeps typing: the server forwards one per
/// 3 s and lets each expire after 6 s, so this keeps the indicator up without flooding.
pub const RESEND_MS: i64 = 3_000;

/// Others typing in one chat: user → when their indicator expires (unix ms).
#[derive(Debug, Default, Clone)]
pub struct TypingBook {
    until: BTreeMap<String, i64>,
}

impl TypingBook {
    pub fn apply(&mut self, t: &Typing, me: &str) {
        if t.user_id == me {
            return;
        }
        match t.state {
            TypingState::Started => {
                self.until.insert(t.user_id.clone(), t.expires_at);
            }
            TypingState::Stopped => {
                self.until.remove(&t.user_id);
            }
        }
    }

    /// A message from `user` ends their typing (the server's STOPPED may come later).
    pub fn message_from(&mut self, user: &str) {
        self.until.remove(user);
    }

    /// Who is typing at `now`, by user id.
    pub fn active(&self, now_ms: i64) -> Vec<&str> {
        self.until
            .iter()
            .filter(|(_, &exp)| exp > now_ms)
            .map(|(u, _)| u.as_str())
            .collect()
    }

    /// Forget expired entries.
    pub fn expire(&mut self, now_ms: i64) {
        self.until.retain(|_, exp| *exp > now_ms);
    }
}

/// "bob is typing…", "bob and carol are typing…", "4 people are typing…".
pub fn typing_line(users: &[&str]) -> Option<String> {
    match users {
        [] => None,
        [a] => Some(format!("{a} is typing…")),
        [a, b] => Some(format!("{a} and {b} are typing…")),
        [a, b, c] => Some(format!("{a}, {b} and {c} are typing…")),
        more => Some(format!("{} people are typing…", more.len())),
    }
}

/// This user's own typing in the open chat.
#[derive(Debug, Default, Clone)]
pub struct TypingThrottle {
    /// When the last STARTED went out; `None` when the server thinks we are not typing.
    last_started: Option<i64>,
}

impl TypingThrottle {
    /// The input line changed: `Some(true)` when a STARTED is due, `Some(false)` when the
    /// line was emptied after typing was announced.
    pub fn edited(&mut self, now_ms: i64, line_empty: bool) -> Option<bool> {
        if line_empty {
            return self.stopped();
        }
        match self.last_started {
            Some(t) if now_ms - t < RESEND_MS => None,
            _ => {
                self.last_started = Some(now_ms);
                Some(true)
            }
        }
    }

    /// Sent, cleared, or left the chat: `Some(false)` if typing had been announced.
    pub fn stopped(&mut self) -> Option<bool> {
        self.last_started.take().map(|_| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing(user: &str, state: TypingState, expires_at: i64) -> Typing {
        Typing {
            chat_id: "c".into(),
            user_id: user.into(),
            device_id: "d".into(),
            state,
            expires_at,
        }
    }

    #[test]
    fn indicators_expire_or_stop() {
        let mut b = TypingBook::default();
        b.apply(&typing("bob", TypingState::Started, 6_000), "alice");
        b.apply(&typing("carol", TypingState::Started, 9_000), "alice");
        assert_eq!(b.active(1_000), vec!["bob", "carol"]);
        assert_eq!(b.active(6_000), vec!["carol"], "bob's expired");
        b.apply(&typing("carol", TypingState::Stopped, 0), "alice");
        assert!(b.active(1_000).contains(&"bob"));
        assert!(!b.active(1_000).contains(&"carol"));
        b.message_from("bob");
        assert!(b.active(1_000).is_empty());
    }

    #[test]
    fn refresh_extends_and_own_typing_is_ignored() {
        let mut b = TypingBook::default();
        b.apply(&typing("bob", TypingState::Started, 6_000), "alice");
        b.apply(&typing("bob", TypingState::Started, 12_000), "alice");
        assert_eq!(b.active(8_000), vec!["bob"]);
        b.apply(&typing("alice", TypingState::Started, 12_000), "alice");
        assert_eq!(b.active(0), vec!["bob"]);
        b.expire(20_000);
        assert!(b.active(0).is_empty());
    }

    #[test]
    fn lines() {
        assert_eq!(typing_line(&[]), None);
        assert_eq!(typing_line(&["bob"]).as_deref(), Some("bob is typing…"));
        assert_eq!(
            typing_line(&["bob", "carol"]).as_deref(),
            Some("bob and carol are typing…")
        );
        assert_eq!(
            typing_line(&["a", "b", "c", "d"]).as_deref(),
            Some("4 people are typing…")
        );
    }

    #[test]
    fn throttle_sends_started_at_most_every_3s_and_stopped_once() {
        let mut t = TypingThrottle::default();
        assert_eq!(t.edited(0, false), Some(true));
        assert_eq!(t.edited(1_000, false), None);
        assert_eq!(t.edited(2_999, false), None);
        assert_eq!(t.edited(3_000, false), Some(true));
        assert_eq!(t.edited(3_500, true), Some(false), "line cleared");
        assert_eq!(t.edited(3_600, true), None, "already stopped");
        assert_eq!(t.stopped(), None);
        assert_eq!(t.edited(3_700, false), Some(true), "typing again");
        assert_eq!(t.stopped(), Some(false), "sent");
    }
}
