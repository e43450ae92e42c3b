//! What the bot says: commands (`!help`, `!time`, `!ping`, `!echo`) anywhere, and an echo of
//! plain text in direct chats. Pure, so every answer is tested without a server.

use crate::time::utc;

/// Longest echo, in characters: a reply must stay under the server's message limit even when
/// the message it answers was at the limit.
pub const MAX_ECHO_CHARS: usize = 2_000;

pub const HELP: &str = "I answer: !help (this), !time (the time in UTC), !ping, !echo TEXT. \
In a direct chat I also echo anything else you write.";

/// Where a message was written: the bot echoes plain text only in direct chats, so a group with
/// the bot in it is not flooded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Direct,
    Group,
}

/// The answer to a message, or `None` to stay quiet.
pub fn answer(text: &str, encrypted: bool, place: Place, now_ms: i64) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return match (encrypted, place) {
            (true, Place::Direct) => Some("I can only read plain text.".into()),
            _ => None,
        };
    }
    if let Some(cmd) = text.strip_prefix('!') {
        let (name, rest) = match cmd.split_once(char::is_whitespace) {
            Some((n, r)) => (n, r.trim()),
            None => (cmd, ""),
        };
        return Some(match name.to_ascii_lowercase().as_str() {
            "help" => HELP.to_string(),
            "time" => format!("It is {} UTC.", utc(now_ms)),
            "ping" => "pong".to_string(),
            "echo" if rest.is_empty() => "usage: !echo TEXT".to_string(),
            "echo" => clip(rest),
            _ => format!("I don't know !{}. Try !help.", clip_to(name, 32)),
        });
    }
    match place {
        Place::Direct => Some(format!("echo: {}", clip(text))),
        Place::Group => None,
    }
}

fn clip(s: &str) -> String {
    clip_to(s, MAX_ECHO_CHARS)
}

fn clip_to(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let a = |t| answer(t, false, Place::Direct, 1_700_000_000_000);
        assert_eq!(a("!help").as_deref(), Some(HELP));
        assert_eq!(a("  !HELP  ").as_deref(), Some(HELP));
        assert_eq!(
            a("!time").as_deref(),
            Some("It is 2023-11-14 22:13:20 UTC.")
        );
        assert_eq!(a("!ping").as_deref(), Some("pong"));
        assert_eq!(a("!echo  hi there ").as_deref(), Some("hi there"));
        assert_eq!(a("!echo").as_deref(), Some("usage: !echo TEXT"));
        assert_eq!(
            a("!launch").as_deref(),
            Some("I don't know !launch. Try !help.")
        );
    }

    #[test]
    fn echo_only_in_direct_chats() {
        assert_eq!(
            answer("hello", false, Place::Direct, 0).as_deref(),
            Some("echo: hello")
        );
        assert_eq!(answer("hello", false, Place::Group, 0), None);
        assert_eq!(
            answer("!ping", false, Place::Group, 0).as_deref(),
            Some("pong")
        );
        assert_eq!(answer("   ", false, Place::Direct, 0), None);
        assert_eq!(
            answer("", true, Place::Direct, 0).as_deref(),
            Some("I can only read plain text.")
        );
        assert_eq!(answer("", true, Place::Group, 0), None);
    }

    #[test]
    fn echoes_are_bounded() {
        let long = "x".repeat(MAX_ECHO_CHARS * 3);
        let r = answer(&long, false, Place::Direct, 0).unwrap_or_default();
        assert!(r.chars().count() <= MAX_ECHO_CHARS + 10);
        let r = answer(&format!("!{long}"), false, Place::Direct, 0).unwrap_or_default();
        assert!(r.len() < 100, "{r}");
    }
}
