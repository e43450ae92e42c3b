//! Slash commands typed on the input line.

/// What a `/…` line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open (creating if needed) the direct chat with a user.
    Dm(String),
    /// Create a group with a title and members.
    Group {
        title: String,
        members: Vec<String>,
    },
    /// Back to the chat list.
    Chats,
    /// Open the chat with this number in the list.
    Open(usize),
    /// Queue the open chat's failed sends again.
    Retry,
    /// Drop the open chat's failed sends.
    Discard,
    Help,
    Quit,
}

pub const HELP: &str = "/dm USER · /group TITLE USER… · /chats · /open N · /retry · /discard · /quit · Esc back · PgUp/PgDn scroll";

/// Parse a line starting with `/`. A quoted title may contain spaces:
/// `/group "Weekend plans" bob carol`.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let body = line
        .strip_prefix('/')
        .ok_or_else(|| "commands start with /".to_string())?;
    let (name, rest) = match body.split_once(char::is_whitespace) {
        Some((n, r)) => (n, r.trim()),
        None => (body, ""),
    };
    let words = || {
        rest.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    match name.to_ascii_lowercase().as_str() {
        "dm" | "direct" => match words().as_slice() {
            [user] => Ok(Command::Dm(user.clone())),
            _ => Err("usage: /dm USER".into()),
        },
        "group" => {
            let (title, members) = split_title(rest)?;
            if title.is_empty() || members.is_empty() {
                return Err("usage: /group TITLE USER… (quote a title with spaces)".into());
            }
            Ok(Command::Group { title, members })
        }
        "chats" | "list" | "back" => Ok(Command::Chats),
        "open" => match rest.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Command::Open(n)),
            _ => Err("usage: /open N (the chat's number in the list)".into()),
        },
        "retry" => Ok(Command::Retry),
        "discard" => Ok(Command::Discard),
        "help" | "?" => Ok(Command::Help),
        "quit" | "exit" | "q" => Ok(Command::Quit),
        "" => Err(format!("empty command; {HELP}")),
        other => Err(format!("unknown command /{other}; {HELP}")),
    }
}

fn split_title(rest: &str) -> Result<(String, Vec<String>), String> {
    let rest = rest.trim();
    if let Some(q) = rest.strip_prefix('"') {
        let (title, after) = q
            .split_once('"')
            .ok_or_else(|| "unclosed quote in the title".to_string())?;
        let members = after.split_whitespace().map(str::to_string).collect();
        return Ok((title.trim().to_string(), members));
    }
    let mut words = rest.split_whitespace();
    let title = words.next().unwrap_or_default().to_string();
    Ok((title, words.map(str::to_string).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("/dm bob"), Ok(Command::Dm("bob".into())));
        assert_eq!(parse("  /DM   bob  "), Ok(Command::Dm("bob".into())));
        assert!(parse("/dm").is_err());
        assert!(parse("/dm bob carol").is_err());
        assert_eq!(
            parse("/group Team bob carol"),
            Ok(Command::Group {
                title: "Team".into(),
                members: vec!["bob".into(), "carol".into()]
            })
        );
        assert_eq!(
            parse("/group \"Weekend plans\" bob"),
            Ok(Command::Group {
                title: "Weekend plans".into(),
                members: vec!["bob".into()]
            })
        );
        assert!(parse("/group Team").is_err());
        assert!(parse("/group \"open bob").is_err());
        assert_eq!(parse("/chats"), Ok(Command::Chats));
        assert_eq!(parse("/open 3"), Ok(Command::Open(3)));
        assert!(parse("/open 0").is_err());
        assert!(parse("/open x").is_err());
        assert_eq!(parse("/quit"), Ok(Command::Quit));
        assert_eq!(parse("/retry"), Ok(Command::Retry));
        assert_eq!(parse("/help"), Ok(Command::Help));
        let e = parse("/frobnicate").unwrap_err();
        assert!(e.contains("unknown command /frobnicate"), "{e}");
        assert!(parse("/").is_err());
    }
}
