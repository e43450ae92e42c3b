//! Drawing: [`frame`] lays the state out as styled rows (pure, tested at 80×24), [`Painter`]
//! puts them on the terminal, rewriting only rows that changed since the last frame.
//!
//! Layout: a title bar, the body (the chat list or the open chat), a status line (connection
//! and notices) and the input line.

use crate::chats;
use crate::state::{AppState, ChatLine, OpenChat};
use crate::text::{ago, clock, fit, sanitize, truncate, width, wrap};
use crate::ticks::Tick;
use crate::typing::typing_line;
use chat_sdk::{ConnectionState, PresenceStatus};
use crossterm::cursor::{Hide, MoveTo, Show};
use crossterm::style::{Attribute, Color, Print, SetAttribute, SetForegroundColor};
use crossterm::terminal::{Clear, ClearType};
use crossterm::{queue, QueueableCommand};
use std::io::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Dim,
    Bold,
    Title,
    Selected,
    Own,
    Peer,
    Read,
    Error,
    Good,
    Warn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub text: String,
    pub style: Style,
}

fn span(text: impl Into<String>, style: Style) -> Span {
    Span {
        text: text.into(),
        style,
    }
}

pub type Row = Vec<Span>;

/// One screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub rows: Vec<Row>,
    /// Where the terminal cursor goes (column, row).
    pub cursor: (u16, u16),
    /// The open chat is scrolled to the top of what is loaded.
    pub at_top: bool,
    /// The furthest the open chat can scroll up (the renderer clamps `scroll` to it).
    pub max_scroll: usize,
}

impl Frame {
    /// The screen as plain text (for tests).
    pub fn text(&self) -> String {
        self.rows
            .iter()
            .map(|r| r.iter().map(|s| s.text.as_str()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Lay out `state` on a `w`×`h` terminal at time `now`.
pub fn frame(state: &AppState, w: u16, h: u16, now: i64) -> Frame {
    let (wu, hu) = (usize::from(w), usize::from(h));
    let mut f = Frame {
        width: w,
        height: h,
        rows: Vec::with_capacity(hu),
        cursor: (0, 0),
        at_top: false,
        max_scroll: 0,
    };
    if wu < 20 || hu < 6 {
        f.rows
            .push(vec![span(truncate("terminal too small", wu), Style::Error)]);
        return f;
    }
    let body_rows = hu - 3;
    f.rows
        .push(vec![span(fit(&title(state, now), wu), Style::Title)]);
    let body = match &state.open {
        Some(o) if !state.show_help => chat_body(state, o, wu, body_rows, now, &mut f),
        _ => list_body(state, wu, body_rows),
    };
    f.rows.extend(body);
    while f.rows.len() < 1 + body_rows {
        f.rows.push(Vec::new());
    }
    f.rows.push(status(state, wu, now));
    // The last row stays one column short: writing the bottom-right cell makes some
    // terminals scroll.
    let prompt = "> ";
    let (line, col) = state.editor.view(wu - width(prompt) - 1);
    f.rows
        .push(vec![span(prompt, Style::Bold), span(line, Style::Plain)]);
    f.cursor = (
        u16::try_from(width(prompt) + col).unwrap_or(0),
        u16::try_from(hu - 1).unwrap_or(0),
    );
    f
}

fn title(state: &AppState, now: i64) -> String {
    match &state.open {
        None => {
            let unread = chats::total_unread(&state.chats);
            let badge = if unread > 0 {
                format!(" · {unread} unread")
            } else {
                String::new()
            };
            format!(" chat · {}{badge} · chats", sanitize(&state.me))
        }
        Some(o) => {
            let name = chats::display_name(&o.chat, &state.me);
            format!(" {name} · {}", presence_text(state, o, now))
        }
    }
}

/// "online", "last seen 5 min ago", or for a group "4 members, 2 online".
fn presence_text(state: &AppState, o: &OpenChat, now: i64) -> String {
    let peers = chats::peers(&o.chat, &state.me);
    if peers.len() == 1 && o.chat.kind != chat_sdk::ChatKind::Group {
        return match o.presence.get(&peers[0]) {
            None => "…".to_string(),
            Some(p) if p.status == PresenceStatus::Online => "online".to_string(),
            Some(p) if p.last_seen > 0 => format!("last seen {}", ago(now, p.last_seen)),
            Some(_) => "offline".to_string(),
        };
    }
    let online: Vec<&str> = peers
        .iter()
        .filter(|u| {
            o.presence
                .get(*u)
                .is_some_and(|p| p.status == PresenceStatus::Online)
        })
        .map(String::as_str)
        .collect();
    let mut s = format!("{} members", o.chat.members.len());
    if !online.is_empty() {
        s.push_str(&format!(", online: {}", online.join(", ")));
    }
    s
}

fn list_body(state: &AppState, w: usize, rows: usize) -> Vec<Row> {
    let mut out = Vec::new();
    if state.show_help || (state.chats_loaded && state.chats.is_empty()) {
        if state.chats.is_empty() {
            out.push(vec![span(" No chats yet.", Style::Bold)]);
        }
        for l in [
            " /dm USER               open a direct chat",
            " /group TITLE USER…     create a group (quote a title with spaces)",
            " N, or ↑↓ and Enter     open chat N",
            " Esc or /chats          back to this list",
            " /retry, /discard       failed messages of the open chat",
            " PgUp/PgDn              scroll a chat (older history loads at the top)",
            " /quit or Ctrl-C        quit",
        ] {
            out.push(vec![span(truncate(l, w), Style::Dim)]);
        }
        out.truncate(rows);
        return out;
    }
    if !state.chats_loaded {
        out.push(vec![span(" loading chats…", Style::Dim)]);
        return out;
    }
    // Keep the selected row visible.
    let first = state.selected.saturating_sub(rows.saturating_sub(1));
    let name_w = (w / 3).clamp(8, 24);
    for (i, c) in state.chats.iter().enumerate().skip(first).take(rows) {
        let selected = i == state.selected;
        let marker = if selected { "▸" } else { " " };
        let num = format!("{marker}{:>2} ", i + 1);
        let name = fit(&chats::display_name(c, &state.me), name_w);
        let badge = if c.unread_count > 0 {
            format!(" ({})", c.unread_count)
        } else {
            String::new()
        };
        let badge = format!("{badge:>6} ");
        let used = width(&num) + name_w + width(&badge);
        let preview = c
            .last_message
            .as_ref()
            .map(|m| chats::preview(m, &state.me))
            .unwrap_or_default();
        let preview = fit(&preview, w.saturating_sub(used));
        if selected {
            out.push(vec![span(
                format!("{num}{name}{badge}{preview}"),
                Style::Selected,
            )]);
        } else {
            let badge_style = if c.unread_count > 0 {
                Style::Warn
            } else {
                Style::Plain
            };
            out.push(vec![
                span(num, Style::Dim),
                span(name, Style::Bold),
                span(badge, badge_style),
                span(preview, Style::Dim),
            ]);
        }
    }
    out
}

fn chat_body(
    state: &AppState,
    o: &OpenChat,
    w: usize,
    rows: usize,
    now: i64,
    f: &mut Frame,
) -> Vec<Row> {
    // The last body row is kept for "… is typing" so messages do not jump when it appears.
    let msg_rows = rows - 1;
    let mut all: Vec<Row> = Vec::new();
    for l in state.chat_lines() {
        all.extend(message_rows(&l, w, now));
    }
    f.max_scroll = all.len().saturating_sub(msg_rows);
    let scroll = o.scroll.min(f.max_scroll);
    f.at_top = scroll == f.max_scroll;
    let end = all.len() - scroll;
    let start = end.saturating_sub(msg_rows);
    let mut out: Vec<Row> = all[start..end].to_vec();
    let banner = if !o.history_loaded {
        Some("loading history…")
    } else if o.loading_older {
        Some("loading older messages…")
    } else if f.at_top && !o.older_token.is_empty() {
        Some("↑ older messages: PgUp")
    } else if f.at_top && all.is_empty() {
        Some("no messages yet: say hello")
    } else {
        None
    };
    if let Some(b) = banner {
        if out.len() >= msg_rows && !out.is_empty() {
            out.remove(0);
        }
        out.insert(0, vec![span(fit(&format!("  {b}"), w), Style::Dim)]);
    }
    // Bottom-aligned: short chats sit just above the input, like every chat app.
    let pad = msg_rows.saturating_sub(out.len());
    let mut body: Vec<Row> = std::iter::repeat_with(Vec::new).take(pad).collect();
    body.extend(out);
    let typing = typing_line(&state.typing_now(now)).unwrap_or_default();
    body.push(vec![span(truncate(&format!("  {typing}"), w), Style::Dim)]);
    body
}

/// A message as rows: "14:05 bob: text…", wrapped with the text indented, ticks at the end.
fn message_rows(l: &ChatLine, w: usize, now: i64) -> Vec<Row> {
    let who = if l.own {
        "you".to_string()
    } else {
        sanitize(&l.sender)
    };
    let time = clock(now, l.at);
    let head_who = format!("{}: ", truncate(&who, 16));
    let head_w = width(&time) + 1 + width(&head_who);
    let indent = if head_w <= w / 2 { head_w } else { 2 };
    let text_w = w.saturating_sub(indent).max(1);
    let tick = l.tick.as_ref().map(|t| (t.label(), tick_style(t)));
    let mut lines = wrap(&l.text, text_w);
    // The first line shares its row with the head.
    let first_w = w.saturating_sub(head_w).max(1);
    if width(&lines[0]) > first_w {
        lines = wrap(&l.text, first_w.min(text_w));
    }
    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut row = if i == 0 {
            vec![
                span(format!("{time} "), Style::Dim),
                span(
                    head_who.clone(),
                    if l.own { Style::Own } else { Style::Peer },
                ),
            ]
        } else {
            vec![span(" ".repeat(indent), Style::Plain)]
        };
        row.push(span(line.clone(), Style::Plain));
        rows.push(row);
    }
    if let Some((label, style)) = tick {
        let label = truncate(&label, w.saturating_sub(indent + 1).max(1));
        let last_used: usize = rows
            .last()
            .map(|r| r.iter().map(|s| width(&s.text)).sum())
            .unwrap_or(0);
        match rows.last_mut() {
            Some(last) if last_used + 1 + width(&label) <= w => {
                last.push(span(format!(" {label}"), style));
            }
            _ => rows.push(vec![
                span(" ".repeat(indent), Style::Plain),
                span(label, style),
            ]),
        }
    }
    rows
}

fn tick_style(t: &Tick) -> Style {
    match t {
        Tick::Queued => Style::Warn,
        Tick::Sent | Tick::Delivered => Style::Dim,
        Tick::Read => Style::Read,
        Tick::Failed(_) => Style::Error,
    }
}

fn status(state: &AppState, w: usize, now: i64) -> Row {
    let (conn, conn_style) = match state.conn.state {
        ConnectionState::Connecting => ("connecting…".to_string(), Style::Warn),
        ConnectionState::Connected => ("● connected".to_string(), Style::Good),
        ConnectionState::Reconnecting => {
            let secs = state
                .conn
                .retry_at
                .map(|at| ((at - now).max(0) + 999) / 1000)
                .unwrap_or(0);
            let why = state
                .conn
                .error
                .as_deref()
                .map(|e| format!(" ({})", sanitize(e)))
                .unwrap_or_default();
            if secs > 0 {
                (format!("reconnecting in {secs}s{why}"), Style::Error)
            } else {
                (format!("reconnecting…{why}"), Style::Error)
            }
        }
        ConnectionState::Closed => ("closed".to_string(), Style::Error),
    };
    let queued = state.outbox.iter().filter(|s| s.failure.is_none()).count();
    let mut row = vec![span(truncate(&conn, w / 2), conn_style)];
    if queued > 0 {
        row.push(span(format!(" · {queued} queued"), Style::Warn));
    }
    let used: usize = row.iter().map(|s| width(&s.text)).sum();
    let rest = w.saturating_sub(used + 3);
    let (text, style) = match &state.notice {
        Some(n) => (
            sanitize(&n.text),
            if n.error { Style::Error } else { Style::Plain },
        ),
        None if state.open.is_some() => (
            "Enter send · Esc back · PgUp older · /help".to_string(),
            Style::Dim,
        ),
        None => (
            "↑↓ Enter open · /dm USER · /group TITLE USER… · /help".to_string(),
            Style::Dim,
        ),
    };
    row.push(span(" │ ", Style::Dim));
    row.push(span(truncate(&text, rest), style));
    row
}

/// Puts frames on the terminal, rewriting only the rows that changed.
#[derive(Default)]
pub struct Painter {
    prev: Option<Frame>,
}

impl Painter {
    /// Forget what is on screen: the next paint redraws everything.
    pub fn invalidate(&mut self) {
        self.prev = None;
    }

    pub fn paint(&mut self, out: &mut impl Write, f: &Frame) -> io::Result<()> {
        out.queue(Hide)?;
        let same_size = self
            .prev
            .as_ref()
            .is_some_and(|p| p.width == f.width && p.height == f.height);
        if !same_size {
            out.queue(Clear(ClearType::All))?;
            self.prev = None;
        }
        for (y, row) in f.rows.iter().enumerate() {
            let unchanged = self
                .prev
                .as_ref()
                .and_then(|p| p.rows.get(y))
                .is_some_and(|r| r == row);
            if unchanged {
                continue;
            }
            let y = u16::try_from(y).unwrap_or(u16::MAX);
            queue!(out, MoveTo(0, y))?;
            for s in row {
                style_on(out, s.style)?;
                queue!(out, Print(&s.text), SetAttribute(Attribute::Reset))?;
            }
            queue!(out, Clear(ClearType::UntilNewLine))?;
        }
        queue!(out, MoveTo(f.cursor.0, f.cursor.1), Show)?;
        out.flush()?;
        self.prev = Some(f.clone());
        Ok(())
    }
}

fn style_on(out: &mut impl Write, s: Style) -> io::Result<()> {
    match s {
        Style::Plain => {}
        Style::Dim => {
            out.queue(SetAttribute(Attribute::Dim))?;
        }
        Style::Bold => {
            out.queue(SetAttribute(Attribute::Bold))?;
        }
        Style::Title | Style::Selected => {
            out.queue(SetAttribute(Attribute::Reverse))?;
        }
        Style::Own => {
            queue!(
                out,
                SetForegroundColor(Color::Green),
                SetAttribute(Attribute::Bold)
            )?;
        }
        Style::Peer => {
            queue!(
                out,
                SetForegroundColor(Color::Cyan),
                SetAttribute(Attribute::Bold)
            )?;
        }
        Style::Read => {
            queue!(
                out,
                SetForegroundColor(Color::Blue),
                SetAttribute(Attribute::Bold)
            )?;
        }
        Style::Error => {
            out.queue(SetForegroundColor(Color::Red))?;
        }
        Style::Good => {
            out.queue(SetForegroundColor(Color::Green))?;
        }
        Style::Warn => {
            out.queue(SetForegroundColor(Color::Yellow))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chats::tests::{chat, msg};
    use crate::input::Action;
    use crate::state::{Done, Input};
    use chat_sdk::{
        ChatKind, ConnectionStatus, Event, HistoryPage, Presence, Receipt, ReceiptKind,
        SendOutcome, SendResult,
    };

    fn state_with_chat() -> AppState {
        let mut s = AppState::new("alice");
        let mut c = chat("c1", ChatKind::Direct, "", &["alice", "bob"]);
        c.last_seq = 1;
        c.unread_count = 1;
        c.last_message = Some(msg("c1", 1, "bob", "hello there"));
        let g = chat("c2", ChatKind::Group, "Weekend", &["alice", "bob", "carol"]);
        s.update(Input::Done(Done::Chats(Ok(vec![c, g]))), 0);
        s
    }

    fn assert_fits(f: &Frame) {
        assert_eq!(f.rows.len(), usize::from(f.height), "{}", f.text());
        for r in &f.rows {
            let w: usize = r.iter().map(|s| width(&s.text)).sum();
            assert!(w <= usize::from(f.width), "row too wide ({w}): {r:?}");
        }
    }

    #[test]
    fn chat_list_at_80x24() {
        let s = state_with_chat();
        let f = frame(&s, 80, 24, 0);
        assert_fits(&f);
        let t = f.text();
        assert!(t.contains("chat · alice · 1 unread"), "{t}");
        assert!(t.contains("▸ 1 bob"), "{t}");
        assert!(t.contains("(1)"), "{t}");
        assert!(t.contains("bob: hello there"), "{t}");
        assert!(t.contains("  2 Weekend"), "{t}");
        assert!(t.contains("connecting…"), "{t}");
        assert_eq!(f.cursor, (2, 23));
    }

    #[test]
    fn open_chat_with_ticks_typing_and_presence() {
        let mut s = state_with_chat();
        s.update(Input::Key(Action::Enter), 0);
        s.update(
            Input::Done(Done::History {
                chat_id: "c1".into(),
                older: false,
                result: Ok(HistoryPage {
                    messages: vec![msg("c1", 1, "bob", "hello there")],
                    next_page_token: String::new(),
                }),
            }),
            0,
        );
        let mut mine = msg("c1", 2, "alice", &"a long message ".repeat(8));
        mine.client_msg_id = "k".into();
        s.update(
            Input::Sdk(Event::SendResult(SendResult {
                client_msg_id: "k".into(),
                chat_id: "c1".into(),
                outcome: SendOutcome::Sent {
                    message: mine,
                    duplicate: false,
                },
            })),
            0,
        );
        s.update(
            Input::Sdk(Event::Receipt(Receipt {
                chat_id: "c1".into(),
                user_id: "bob".into(),
                device_id: "p".into(),
                kind: ReceiptKind::Read,
                seq: 2,
                at: 0,
            })),
            0,
        );
        s.update(
            Input::Sdk(Event::Typing(chat_sdk::Typing {
                chat_id: "c1".into(),
                user_id: "bob".into(),
                device_id: "p".into(),
                state: chat_sdk::TypingState::Started,
                expires_at: 6_000,
            })),
            0,
        );
        s.update(
            Input::Sdk(Event::Presence(Presence {
                user_id: "bob".into(),
                status: PresenceStatus::Offline,
                last_seen: 1,
                devices_online: 0,
            })),
            0,
        );
        s.update(
            Input::Sdk(Event::Connection(ConnectionStatus {
                state: ConnectionState::Reconnecting,
                attempt: 1,
                retry_in: Some(std::time::Duration::from_millis(2500)),
                error: None,
                replayed: 0,
            })),
            0,
        );
        let f = frame(&s, 80, 24, 120_000);
        assert_fits(&f);
        let t = f.text();
        assert!(t.contains(" bob · last seen 1 min ago"), "{t}");
        assert!(t.contains("bob: hello there"), "{t}");
        assert!(t.contains("you: a long message"), "{t}");
        assert!(t.contains("✓✓ read"), "{t}");
        assert!(t.contains("reconnecting…"), "{t}");
        assert!(!t.contains("typing"), "expired: {t}");
        let t = frame(&s, 80, 24, 1_000).text();
        assert!(t.contains("bob is typing…"), "{t}");
        assert!(t.contains("reconnecting in 2s"), "{t}");
        // Narrow terminals still fit.
        assert_fits(&frame(&s, 24, 8, 0));
        assert_eq!(frame(&s, 10, 3, 0).rows.len(), 1);
    }

    #[test]
    fn long_chats_scroll_and_ask_for_older_history() {
        let mut s = state_with_chat();
        s.update(Input::Key(Action::Enter), 0);
        let page: Vec<_> = (1..=60)
            .rev()
            .map(|i| msg("c1", i, "bob", &format!("m{i}")))
            .collect();
        s.update(
            Input::Done(Done::History {
                chat_id: "c1".into(),
                older: false,
                result: Ok(HistoryPage {
                    messages: page,
                    next_page_token: "t".into(),
                }),
            }),
            0,
        );
        let f = frame(&s, 80, 24, 0);
        assert!(f.text().contains("m60") && !f.text().contains("m30"));
        assert!(!f.at_top);
        s.update(Input::Key(Action::PageUp), 0);
        s.update(Input::Key(Action::PageUp), 0);
        let f = frame(&s, 80, 24, 0);
        assert!(f.text().contains("m30"), "{}", f.text());
        for _ in 0..10 {
            s.update(Input::Key(Action::PageUp), 0);
        }
        let f = frame(&s, 80, 24, 0);
        assert!(f.at_top);
        assert!(f.text().contains("older messages"), "{}", f.text());
    }

    #[test]
    fn painter_writes_only_changed_rows() {
        let s = state_with_chat();
        let mut p = Painter::default();
        let mut buf = Vec::new();
        let f = frame(&s, 80, 24, 0);
        p.paint(&mut buf, &f).unwrap();
        let first = buf.len();
        buf.clear();
        p.paint(&mut buf, &f).unwrap();
        assert!(buf.len() < first / 4, "{} vs {first}", buf.len());
    }
}
