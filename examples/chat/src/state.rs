//! The app's state and its reducer: every input (an SDK event, a key, the result of a call, the
//! clock) goes through [`AppState::update`], which changes the state and returns the calls to
//! make ([`Effect`]s). Nothing here does I/O, so the whole behaviour is testable without a
//! terminal or a server; `effects` runs the calls, `render` draws the state.

use crate::chats;
use crate::commands::{self, Command};
use crate::editor::LineEditor;
use crate::input::Action;
use crate::text::sanitize;
use crate::ticks::{audience, ReceiptBook, Tick};
use crate::typing::{TypingBook, TypingThrottle};
use chat_sdk::{
    Chat, ChatChange, ChatChangeKind, Code, ConnectionState, ConnectionStatus, Event, HistoryPage,
    Message, OutgoingMessage, Presence, Receipt, ReceiptKind, SendOutcome, SendResult,
};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Messages per history page.
pub const HISTORY_PAGE: u32 = 50;
/// How long a notice stays on the status line (errors longer: they may need reading).
const NOTICE_MS: i64 = 8_000;
const ERROR_MS: i64 = 20_000;

/// Everything the reducer reacts to.
#[derive(Debug)]
pub enum Input {
    Sdk(Event),
    Key(Action),
    Done(Done),
    /// Time passed (countdowns, typing expiry, notices).
    Tick,
}

/// The outcome of an [`Effect`]. Errors are already worded for the user.
#[derive(Debug)]
pub enum Done {
    Chats(Result<Vec<Chat>, String>),
    Pending(Result<Vec<OutgoingMessage>, String>),
    History {
        chat_id: String,
        older: bool,
        result: Result<HistoryPage, String>,
    },
    Receipts {
        chat_id: String,
        result: Result<Vec<Receipt>, String>,
    },
    /// A direct chat was opened or a group created: show it.
    ChatReady(Result<Chat, String>),
    /// A send was queued locally (the local echo).
    Queued(Result<OutgoingMessage, String>),
    MarkRead {
        chat_id: String,
        seq: u64,
        result: Result<(), String>,
    },
    Retried(Result<Vec<String>, String>),
    Discarded(Result<Vec<String>, String>),
    /// A call whose failure only needs telling.
    Failed(String),
}

/// A call the app should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    RefreshChats,
    LoadPending,
    /// Newest first from `page_token` (empty: the newest).
    LoadHistory {
        chat_id: String,
        page_token: String,
    },
    LoadReceipts {
        chat_id: String,
    },
    WatchPresence(Vec<String>),
    Send {
        chat_id: String,
        text: String,
    },
    SetTyping {
        chat_id: String,
        typing: bool,
    },
    MarkRead {
        chat_id: String,
        seq: u64,
    },
    OpenDirect(String),
    CreateGroup {
        title: String,
        members: Vec<String>,
    },
    Retry(Vec<String>),
    Discard(Vec<String>),
    Quit,
}

/// The connection as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnView {
    pub state: ConnectionState,
    /// For `Reconnecting`: when the next attempt is due (unix ms).
    pub retry_at: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
    pub at: i64,
}

/// One of this user's sends that the server has not stored yet (or refused for good).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSend {
    pub client_msg_id: String,
    pub chat_id: String,
    pub text: String,
    pub queued_at: i64,
    pub failure: Option<String>,
}

impl LocalSend {
    fn from_outgoing(m: &OutgoingMessage) -> Self {
        LocalSend {
            client_msg_id: m.client_msg_id.clone(),
            chat_id: m.chat_id.clone(),
            text: if m.content.text.is_empty() && !m.content.ciphertext.is_empty() {
                "[encrypted]".into()
            } else {
                m.content.text.clone()
            },
            queued_at: m.queued_at,
            failure: m.failure.as_ref().map(|(_, reason)| reason.clone()),
        }
    }
}

/// The chat on screen.
#[derive(Debug, Clone)]
pub struct OpenChat {
    pub chat: Chat,
    /// Stored messages by seq: history and live ones merge here in order, whatever arrives first.
    pub messages: BTreeMap<u64, Message>,
    pub receipts: ReceiptBook,
    pub typing: TypingBook,
    pub presence: HashMap<String, Presence>,
    pub history_loaded: bool,
    pub loading_older: bool,
    /// Where older history continues; empty when the start is reached.
    pub older_token: String,
    /// Lines scrolled up from the bottom.
    pub scroll: usize,
    /// Highest seq this app has marked read in this chat.
    pub read_marked: u64,
}

impl OpenChat {
    fn new(chat: Chat) -> Self {
        OpenChat {
            read_marked: chat.read_seq,
            chat,
            messages: BTreeMap::new(),
            receipts: ReceiptBook::default(),
            typing: TypingBook::default(),
            presence: HashMap::new(),
            history_loaded: false,
            loading_older: false,
            older_token: String::new(),
            scroll: 0,
        }
    }

    pub fn chat_id(&self) -> &str {
        &self.chat.chat_id
    }
}

/// A line of the open chat as shown: a stored message or a local send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    pub seq: Option<u64>,
    pub sender: String,
    pub own: bool,
    pub text: String,
    pub at: i64,
    /// For this user's messages.
    pub tick: Option<Tick>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Refresh {
    in_flight: bool,
    again: bool,
}

/// The whole app.
#[derive(Debug)]
pub struct AppState {
    /// This user's id.
    pub me: String,
    pub chats: Vec<Chat>,
    pub chats_loaded: bool,
    /// Highlighted row of the chat list.
    pub selected: usize,
    pub open: Option<OpenChat>,
    /// Sends not yet stored, over all chats, in queue order.
    pub outbox: Vec<LocalSend>,
    pub conn: ConnView,
    pub notice: Option<Notice>,
    pub editor: LineEditor,
    pub show_help: bool,
    pub quitting: bool,
    typing_out: TypingThrottle,
    refresh: Refresh,
    /// Sends already answered, so a late local echo is not shown as queued forever.
    settled: VecDeque<String>,
}

impl AppState {
    pub fn new(me: impl Into<String>) -> Self {
        AppState {
            me: me.into(),
            chats: Vec::new(),
            chats_loaded: false,
            selected: 0,
            open: None,
            outbox: Vec::new(),
            conn: ConnView {
                state: ConnectionState::Connecting,
                retry_at: None,
                error: None,
            },
            notice: None,
            editor: LineEditor::default(),
            show_help: false,
            quitting: false,
            typing_out: TypingThrottle::default(),
            refresh: Refresh::default(),
            settled: VecDeque::new(),
        }
    }

    /// What to load at start.
    pub fn start(&mut self) -> Vec<Effect> {
        let mut fx = vec![Effect::LoadPending];
        fx.extend(self.request_refresh());
        fx
    }

    pub fn update(&mut self, input: Input, now: i64) -> Vec<Effect> {
        match input {
            Input::Sdk(ev) => self.event(ev, now),
            Input::Key(a) => self.key(a, now),
            Input::Done(d) => self.done(d, now),
            Input::Tick => {
                self.tick(now);
                Vec::new()
            }
        }
    }

    // ------------------------------------------------------------------ queries

    pub fn open_chat_id(&self) -> Option<&str> {
        self.open.as_ref().map(|o| o.chat_id())
    }

    /// The open chat's lines, oldest first: stored messages by seq, then this chat's unsent
    /// messages in queue order.
    pub fn chat_lines(&self) -> Vec<ChatLine> {
        let Some(o) = &self.open else {
            return Vec::new();
        };
        let mut out: Vec<ChatLine> = o
            .messages
            .values()
            .map(|m| {
                let own = m.sender_user_id == self.me;
                let tick = own.then(|| {
                    let who = audience(&o.chat.members, &self.me, m.created_at);
                    o.receipts.tick(m.seq, &who)
                });
                ChatLine {
                    seq: Some(m.seq),
                    sender: m.sender_user_id.clone(),
                    own,
                    text: message_text(m),
                    at: m.created_at,
                    tick,
                }
            })
            .collect();
        out.extend(
            self.outbox
                .iter()
                .filter(|s| s.chat_id == o.chat.chat_id)
                .map(|s| ChatLine {
                    seq: None,
                    sender: self.me.clone(),
                    own: true,
                    text: sanitize(&s.text),
                    at: s.queued_at,
                    tick: Some(match &s.failure {
                        Some(reason) => Tick::Failed(reason.clone()),
                        None => Tick::Queued,
                    }),
                }),
        );
        out
    }

    /// The tick of one of this user's messages in the open chat, by its text (for tests).
    pub fn tick_of(&self, text: &str) -> Option<Tick> {
        self.chat_lines()
            .into_iter()
            .rev()
            .find(|l| l.own && l.text == text)
            .and_then(|l| l.tick)
    }

    /// Who is typing in the open chat now.
    pub fn typing_now(&self, now: i64) -> Vec<&str> {
        self.open
            .as_ref()
            .map(|o| o.typing.active(now))
            .unwrap_or_default()
    }

    pub fn unread(&self, chat_id: &str) -> Option<u64> {
        chats::index_of(&self.chats, chat_id).map(|i| self.chats[i].unread_count)
    }

    // ------------------------------------------------------------------ helpers

    fn info(&mut self, text: impl Into<String>, now: i64) {
        self.notice = Some(Notice {
            text: text.into(),
            error: false,
            at: now,
        });
    }

    fn error(&mut self, text: impl Into<String>, now: i64) {
        self.notice = Some(Notice {
            text: text.into(),
            error: true,
            at: now,
        });
    }

    /// One `ListChats` at a time; a request while one runs makes one more run after it.
    fn request_refresh(&mut self) -> Option<Effect> {
        if self.refresh.in_flight {
            self.refresh.again = true;
            None
        } else {
            self.refresh.in_flight = true;
            Some(Effect::RefreshChats)
        }
    }

    fn stop_typing(&mut self) -> Option<Effect> {
        let chat_id = self.open_chat_id()?.to_string();
        self.typing_out
            .stopped()
            .map(|typing| Effect::SetTyping { chat_id, typing })
    }

    /// Mark the open chat read up to its newest message, if that is news.
    fn mark_open_read(&mut self) -> Option<Effect> {
        let o = self.open.as_mut()?;
        let newest = *o.messages.keys().next_back()?;
        if newest <= o.read_marked {
            return None;
        }
        o.read_marked = newest;
        let chat_id = o.chat.chat_id.clone();
        chats::reconcile_open(&mut self.chats, &chat_id, newest);
        Some(Effect::MarkRead {
            chat_id,
            seq: newest,
        })
    }

    fn settle(&mut self, key: &str) {
        self.outbox.retain(|s| s.client_msg_id != key);
        self.settled.push_back(key.to_string());
        if self.settled.len() > 256 {
            self.settled.pop_front();
        }
    }

    fn open_chat(&mut self, chat: Chat) -> Vec<Effect> {
        let mut fx: Vec<Effect> = self.stop_typing().into_iter().collect();
        let peers = chats::peers(&chat, &self.me);
        let chat_id = chat.chat_id.clone();
        if let Some(i) = chats::index_of(&self.chats, &chat_id) {
            self.selected = i;
        }
        self.open = Some(OpenChat::new(chat));
        self.typing_out = TypingThrottle::default();
        self.show_help = false;
        self.notice = None;
        fx.push(Effect::LoadHistory {
            chat_id: chat_id.clone(),
            page_token: String::new(),
        });
        fx.push(Effect::LoadReceipts { chat_id });
        fx.push(Effect::WatchPresence(peers));
        fx
    }

    fn open_number(&mut self, n: usize, now: i64) -> Vec<Effect> {
        match self.chats.get(n.wrapping_sub(1)).cloned() {
            Some(c) => self.open_chat(c),
            None => {
                self.error(format!("there is no chat {n}"), now);
                Vec::new()
            }
        }
    }

    fn close_chat(&mut self) -> Vec<Effect> {
        let mut fx: Vec<Effect> = self.stop_typing().into_iter().collect();
        if self.open.take().is_some() {
            fx.push(Effect::WatchPresence(Vec::new()));
            fx.extend(self.request_refresh());
        }
        fx
    }

    fn quit(&mut self) -> Vec<Effect> {
        let mut fx: Vec<Effect> = self.stop_typing().into_iter().collect();
        self.quitting = true;
        fx.push(Effect::Quit);
        fx
    }

    // ------------------------------------------------------------------ keys

    fn key(&mut self, a: Action, now: i64) -> Vec<Effect> {
        match a {
            Action::Char(c) => {
                self.editor.insert(c);
                self.edited(now)
            }
            Action::Paste(s) => {
                self.editor.insert_str(&s);
                self.edited(now)
            }
            Action::Backspace => {
                self.editor.backspace();
                self.edited(now)
            }
            Action::Delete => {
                self.editor.delete();
                self.edited(now)
            }
            Action::DeleteWord => {
                self.editor.delete_word();
                self.edited(now)
            }
            Action::ClearLine => {
                self.editor.clear();
                self.edited(now)
            }
            Action::Left => {
                self.editor.left();
                Vec::new()
            }
            Action::Right => {
                self.editor.right();
                Vec::new()
            }
            Action::Home => {
                self.editor.home();
                Vec::new()
            }
            Action::End => {
                self.editor.end();
                Vec::new()
            }
            Action::Up | Action::Down => {
                let up = a == Action::Up;
                match &mut self.open {
                    Some(o) => {
                        o.scroll = if up {
                            o.scroll.saturating_add(1)
                        } else {
                            o.scroll.saturating_sub(1)
                        };
                    }
                    None if up => self.selected = self.selected.saturating_sub(1),
                    None => {
                        self.selected = (self.selected + 1).min(self.chats.len().saturating_sub(1))
                    }
                }
                Vec::new()
            }
            Action::PageUp | Action::PageDown => {
                if let Some(o) = &mut self.open {
                    // The renderer clamps and asks for older history at the top.
                    o.scroll = if a == Action::PageUp {
                        o.scroll.saturating_add(10)
                    } else {
                        o.scroll.saturating_sub(10)
                    };
                } else if a == Action::PageUp {
                    self.selected = self.selected.saturating_sub(10);
                } else {
                    self.selected = (self.selected + 10).min(self.chats.len().saturating_sub(1));
                }
                Vec::new()
            }
            Action::Enter => self.submit(now),
            Action::Escape => {
                if !self.editor.is_empty() {
                    self.editor.clear();
                    self.edited(now)
                } else if self.show_help {
                    self.show_help = false;
                    Vec::new()
                } else {
                    self.close_chat()
                }
            }
            Action::Quit => self.quit(),
            Action::Redraw => Vec::new(),
        }
    }

    /// The input line changed: maybe tell the open chat we are typing (commands do not count).
    fn edited(&mut self, now: i64) -> Vec<Effect> {
        let Some(chat_id) = self.open_chat_id().map(str::to_string) else {
            return Vec::new();
        };
        let text = self.editor.text();
        let idle = text.trim().is_empty() || text.starts_with('/');
        self.typing_out
            .edited(now, idle)
            .map(|typing| Effect::SetTyping { chat_id, typing })
            .into_iter()
            .collect()
    }

    fn submit(&mut self, now: i64) -> Vec<Effect> {
        let line = self.editor.take();
        let text = line.trim();
        let mut fx: Vec<Effect> = self.stop_typing().into_iter().collect();
        if text.starts_with('/') {
            match commands::parse(text) {
                Ok(c) => fx.extend(self.command(c, now)),
                Err(e) => self.error(e, now),
            }
            return fx;
        }
        match self.open.as_ref().map(|o| o.chat.chat_id.clone()) {
            Some(chat_id) => {
                if !text.is_empty() {
                    if let Some(o) = &mut self.open {
                        o.scroll = 0;
                    }
                    fx.push(Effect::Send {
                        chat_id,
                        text: text.to_string(),
                    });
                }
            }
            None if text.is_empty() => {
                if self.chats.is_empty() {
                    self.show_help = true;
                } else {
                    fx.extend(self.open_number(self.selected + 1, now));
                }
            }
            None => match text.parse::<usize>() {
                Ok(n) => fx.extend(self.open_number(n, now)),
                Err(_) => self.error(
                    "type a chat number (or pick one with ↑↓ and Enter), or /dm USER, /help",
                    now,
                ),
            },
        }
        fx
    }

    fn command(&mut self, c: Command, now: i64) -> Vec<Effect> {
        match c {
            Command::Dm(user) => {
                if user == self.me {
                    self.error("that is you; /dm someone else", now);
                    return Vec::new();
                }
                self.info(format!("opening the chat with {user}…"), now);
                vec![Effect::OpenDirect(user)]
            }
            Command::Group { title, members } => {
                self.info(format!("creating {title}…"), now);
                vec![Effect::CreateGroup { title, members }]
            }
            Command::Chats => self.close_chat(),
            Command::Open(n) => self.open_number(n, now),
            Command::Help => {
                self.show_help = true;
                self.info(commands::HELP, now);
                Vec::new()
            }
            Command::Quit => self.quit(),
            Command::Retry | Command::Discard => {
                let Some(chat_id) = self.open_chat_id() else {
                    self.error("open a chat first", now);
                    return Vec::new();
                };
                let keys: Vec<String> = self
                    .outbox
                    .iter()
                    .filter(|s| s.chat_id == chat_id && s.failure.is_some())
                    .map(|s| s.client_msg_id.clone())
                    .collect();
                if keys.is_empty() {
                    self.info("no failed messages in this chat", now);
                    Vec::new()
                } else if c == Command::Retry {
                    vec![Effect::Retry(keys)]
                } else {
                    vec![Effect::Discard(keys)]
                }
            }
        }
    }

    // ------------------------------------------------------------------ SDK events

    fn event(&mut self, ev: Event, now: i64) -> Vec<Effect> {
        match ev {
            Event::Message(m) => self.message(m),
            Event::SendResult(r) => self.send_result(r, now),
            Event::Receipt(r) => self.receipt(r),
            Event::Typing(t) => {
                if let Some(o) = &mut self.open {
                    if o.chat.chat_id == t.chat_id {
                        o.typing.apply(&t, &self.me);
                    }
                }
                Vec::new()
            }
            Event::Presence(p) => {
                if let Some(o) = &mut self.open {
                    if o.chat.members.iter().any(|m| m.user_id == p.user_id) {
                        o.presence.insert(p.user_id.clone(), p);
                    }
                }
                Vec::new()
            }
            Event::ChatChanged(c) => self.chat_changed(c, now),
            Event::Connection(s) => self.connection(s, now),
            Event::ServerError(e) => {
                self.error(
                    format!("server refused {}: {:?} {}", e.frame, e.code, e.message),
                    now,
                );
                Vec::new()
            }
        }
    }

    fn message(&mut self, m: Message) -> Vec<Effect> {
        let mut fx = Vec::new();
        let open_id = self.open_chat_id().map(str::to_string);
        let me = self.me.clone();
        let known =
            self.keep_selection(|list| chats::apply_message(list, &m, &me, open_id.as_deref()));
        let open_here = open_id.as_deref() == Some(m.chat_id.as_str());
        if open_here {
            if let Some(o) = &mut self.open {
                o.typing.message_from(&m.sender_user_id);
                o.chat.last_seq = o.chat.last_seq.max(m.seq);
                o.messages.insert(m.seq, m);
            }
            fx.extend(self.mark_open_read());
        }
        if !known || !open_here {
            fx.extend(self.request_refresh());
        }
        fx
    }

    fn send_result(&mut self, r: SendResult, now: i64) -> Vec<Effect> {
        match r.outcome {
            SendOutcome::Sent { message, .. } => {
                self.settle(&r.client_msg_id);
                let open_id = self.open_chat_id().map(str::to_string);
                let me = self.me.clone();
                let known = self.keep_selection(|list| {
                    chats::apply_message(list, &message, &me, open_id.as_deref())
                });
                if let Some(o) = &mut self.open {
                    if o.chat.chat_id == message.chat_id {
                        o.chat.last_seq = o.chat.last_seq.max(message.seq);
                        o.messages.insert(message.seq, message);
                    }
                }
                if known {
                    Vec::new()
                } else {
                    self.request_refresh().into_iter().collect()
                }
            }
            SendOutcome::Failed { code, reason } => {
                let reason = format!("{code:?}: {reason}");
                match self
                    .outbox
                    .iter_mut()
                    .find(|s| s.client_msg_id == r.client_msg_id)
                {
                    Some(s) => s.failure = Some(reason.clone()),
                    None => self.outbox.push(LocalSend {
                        client_msg_id: r.client_msg_id.clone(),
                        chat_id: r.chat_id.clone(),
                        text: "(message)".into(),
                        queued_at: now,
                        failure: Some(reason.clone()),
                    }),
                }
                self.error(
                    format!("a message was not sent ({reason}); /retry or /discard"),
                    now,
                );
                Vec::new()
            }
        }
    }

    fn receipt(&mut self, r: Receipt) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(o) = &mut self.open {
            if o.chat.chat_id == r.chat_id {
                o.receipts.apply(&r);
            }
        }
        if r.user_id == self.me
            && r.kind == ReceiptKind::Read
            && !chats::apply_read(&mut self.chats, &r.chat_id, r.seq)
        {
            fx.extend(self.request_refresh());
        }
        fx
    }

    fn chat_changed(&mut self, c: ChatChange, now: i64) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let (Some(o), Some(chat)) = (&mut self.open, &c.chat) {
            if o.chat.chat_id == chat.chat_id {
                let removed_me =
                    c.kind == ChatChangeKind::MemberRemoved && c.user_ids.contains(&self.me);
                o.chat.members = chat.members.clone();
                o.chat.title = chat.title.clone();
                if removed_me {
                    self.error("you are no longer a member of this chat", now);
                } else {
                    fx.push(Effect::WatchPresence(chats::peers(chat, &self.me)));
                }
            }
        }
        if c.kind == ChatChangeKind::Created {
            if let Some(chat) = &c.chat {
                let name = chats::display_name(chat, &self.me);
                self.info(format!("new chat: {name}"), now);
            }
        }
        fx.extend(self.request_refresh());
        fx
    }

    fn connection(&mut self, s: ConnectionStatus, now: i64) -> Vec<Effect> {
        let was = self.conn.state;
        // The status line has room for the code only; a rejected token also needs the reason
        // and what to do, once.
        if let Some(e) = s.error.as_ref().filter(|e| e.code == Code::Unauthenticated) {
            if self.conn.error.as_deref() != Some("Unauthenticated") {
                self.error(
                    format!(
                        "token rejected, get a new one with `chatd token`: {}",
                        e.message
                    ),
                    now,
                );
            }
        }
        self.conn = ConnView {
            state: s.state,
            retry_at: s
                .retry_in
                .map(|d| now + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
            error: s.error.map(|e| format!("{:?}", e.code)),
        };
        let mut fx = Vec::new();
        if s.state == ConnectionState::Connected && was != ConnectionState::Connected {
            // What changed while away: the list, and receipts of the open chat (messages
            // themselves are replayed by the SDK).
            fx.extend(self.request_refresh());
            if let Some(o) = &self.open {
                fx.push(Effect::LoadReceipts {
                    chat_id: o.chat.chat_id.clone(),
                });
            }
            fx.extend(self.mark_open_read());
        }
        fx
    }

    // ------------------------------------------------------------------ call results

    fn done(&mut self, d: Done, now: i64) -> Vec<Effect> {
        match d {
            Done::Chats(r) => {
                self.refresh.in_flight = false;
                match r {
                    Ok(list) => self.chats_refreshed(list),
                    Err(e) => self.error(format!("listing chats failed: {e}"), now),
                }
                if std::mem::take(&mut self.refresh.again) {
                    self.request_refresh().into_iter().collect()
                } else {
                    Vec::new()
                }
            }
            Done::Pending(Ok(list)) => {
                let settled = &self.settled;
                let known: Vec<String> = self
                    .outbox
                    .iter()
                    .map(|s| s.client_msg_id.clone())
                    .collect();
                self.outbox.extend(
                    list.iter()
                        .filter(|m| {
                            !settled.contains(&m.client_msg_id) && !known.contains(&m.client_msg_id)
                        })
                        .map(LocalSend::from_outgoing),
                );
                Vec::new()
            }
            Done::Pending(Err(e)) => {
                self.error(format!("reading the local send queue failed: {e}"), now);
                Vec::new()
            }
            Done::History {
                chat_id,
                older,
                result,
            } => self.history(chat_id, older, result, now),
            Done::Receipts { chat_id, result } => {
                match result {
                    Ok(list) => {
                        if let Some(o) = &mut self.open {
                            if o.chat.chat_id == chat_id {
                                for r in &list {
                                    o.receipts.apply(r);
                                }
                            }
                        }
                    }
                    Err(e) => self.error(format!("loading receipts failed: {e}"), now),
                }
                Vec::new()
            }
            Done::ChatReady(Ok(chat)) => {
                match chats::index_of(&self.chats, &chat.chat_id) {
                    Some(i) => self.chats[i] = chat.clone(),
                    None => self.chats.insert(0, chat.clone()),
                }
                self.notice = None;
                let mut fx = self.open_chat(chat);
                fx.extend(self.request_refresh());
                fx
            }
            Done::ChatReady(Err(e)) => {
                self.error(e, now);
                Vec::new()
            }
            Done::Queued(Ok(m)) => {
                if !self.settled.contains(&m.client_msg_id)
                    && !self
                        .outbox
                        .iter()
                        .any(|s| s.client_msg_id == m.client_msg_id)
                {
                    self.outbox.push(LocalSend::from_outgoing(&m));
                }
                Vec::new()
            }
            Done::Queued(Err(e)) => {
                self.error(format!("could not queue the message: {e}"), now);
                Vec::new()
            }
            Done::MarkRead {
                chat_id,
                seq,
                result,
            } => {
                if let Err(e) = result {
                    // Try again at the next message or reconnect.
                    if let Some(o) = &mut self.open {
                        if o.chat.chat_id == chat_id && o.read_marked == seq {
                            o.read_marked = o.chat.read_seq.min(seq.saturating_sub(1));
                        }
                    }
                    if self.conn.state == ConnectionState::Connected {
                        self.error(format!("marking read failed: {e}"), now);
                    }
                }
                Vec::new()
            }
            Done::Retried(r) => {
                match r {
                    Ok(keys) => {
                        for s in self.outbox.iter_mut() {
                            if keys.contains(&s.client_msg_id) {
                                s.failure = None;
                            }
                        }
                        self.info(format!("{} message(s) queued again", keys.len()), now);
                    }
                    Err(e) => self.error(format!("retry failed: {e}"), now),
                }
                Vec::new()
            }
            Done::Discarded(r) => {
                match r {
                    Ok(keys) => {
                        self.outbox.retain(|s| !keys.contains(&s.client_msg_id));
                        self.info(format!("{} message(s) discarded", keys.len()), now);
                    }
                    Err(e) => self.error(format!("discard failed: {e}"), now),
                }
                Vec::new()
            }
            Done::Failed(e) => {
                self.error(e, now);
                Vec::new()
            }
        }
    }

    /// Change the list (which may reorder it) keeping the same chat highlighted.
    fn keep_selection<R>(&mut self, f: impl FnOnce(&mut Vec<Chat>) -> R) -> R {
        let selected_id = self.chats.get(self.selected).map(|c| c.chat_id.clone());
        let r = f(&mut self.chats);
        self.selected = selected_id
            .and_then(|id| chats::index_of(&self.chats, &id))
            .unwrap_or(self.selected)
            .min(self.chats.len().saturating_sub(1));
        r
    }

    fn chats_refreshed(&mut self, list: Vec<Chat>) {
        self.keep_selection(|chats| *chats = list);
        self.chats_loaded = true;
        if let Some(o) = &mut self.open {
            chats::reconcile_open(&mut self.chats, &o.chat.chat_id, o.read_marked);
            if let Some(i) = chats::index_of(&self.chats, &o.chat.chat_id) {
                let fresh = &self.chats[i];
                o.chat.members = fresh.members.clone();
                o.chat.title = fresh.title.clone();
            }
        }
    }

    fn history(
        &mut self,
        chat_id: String,
        older: bool,
        result: Result<HistoryPage, String>,
        now: i64,
    ) -> Vec<Effect> {
        let Some(o) = self.open.as_mut().filter(|o| o.chat.chat_id == chat_id) else {
            return Vec::new();
        };
        o.loading_older = false;
        match result {
            Ok(page) => {
                for m in page.messages {
                    o.messages.entry(m.seq).or_insert(m);
                }
                // Only the first page decides where older history starts; a later live
                // message must not reset it.
                if older || !o.history_loaded {
                    o.older_token = page.next_page_token;
                }
                o.history_loaded = true;
                self.mark_open_read().into_iter().collect()
            }
            Err(e) => {
                o.history_loaded = true;
                self.error(format!("loading history failed: {e}"), now);
                Vec::new()
            }
        }
    }

    /// The renderer found the view scrolled to the top of what is loaded: fetch older history.
    pub fn want_older(&mut self) -> Option<Effect> {
        let o = self.open.as_mut()?;
        if o.loading_older || !o.history_loaded || o.older_token.is_empty() {
            return None;
        }
        o.loading_older = true;
        Some(Effect::LoadHistory {
            chat_id: o.chat.chat_id.clone(),
            page_token: o.older_token.clone(),
        })
    }

    fn tick(&mut self, now: i64) {
        if let Some(n) = &self.notice {
            if now - n.at > if n.error { ERROR_MS } else { NOTICE_MS } {
                self.notice = None;
            }
        }
        if let Some(o) = &mut self.open {
            o.typing.expire(now);
        }
    }
}

/// A message's text for display (sanitized; ciphertext named, not shown).
pub fn message_text(m: &Message) -> String {
    if !m.content.text.is_empty() {
        sanitize(&m.content.text)
    } else if !m.content.ciphertext.is_empty() {
        "[encrypted message]".to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chats::tests::{chat, msg};
    use chat_sdk::{ChatKind, Content, PresenceStatus, Typing, TypingState};

    const ME: &str = "alice";

    fn receipt(user: &str, kind: ReceiptKind, seq: u64) -> Event {
        Event::Receipt(Receipt {
            chat_id: "c1".into(),
            user_id: user.into(),
            device_id: "phone".into(),
            kind,
            seq,
            at: 0,
        })
    }

    fn typed(s: &mut AppState, text: &str, now: i64) -> Vec<Effect> {
        let mut fx = Vec::new();
        for c in text.chars() {
            fx.extend(s.update(Input::Key(Action::Char(c)), now));
        }
        fx
    }

    /// A state with chat c1 (alice–bob) listed and open, history loaded with `history`.
    fn open_state(history: Vec<Message>) -> AppState {
        let mut s = AppState::new(ME);
        let fx = s.start();
        assert_eq!(fx, vec![Effect::LoadPending, Effect::RefreshChats]);
        let mut c = chat("c1", ChatKind::Direct, "", &[ME, "bob"]);
        c.last_seq = history.iter().map(|m| m.seq).max().unwrap_or(0);
        s.update(Input::Done(Done::Chats(Ok(vec![c]))), 0);
        let fx = s.update(Input::Key(Action::Enter), 0);
        assert_eq!(
            fx,
            vec![
                Effect::LoadHistory {
                    chat_id: "c1".into(),
                    page_token: String::new()
                },
                Effect::LoadReceipts {
                    chat_id: "c1".into()
                },
                Effect::WatchPresence(vec!["bob".into()]),
            ]
        );
        let mut newest_first = history;
        newest_first.reverse();
        s.update(
            Input::Done(Done::History {
                chat_id: "c1".into(),
                older: false,
                result: Ok(HistoryPage {
                    messages: newest_first,
                    next_page_token: String::new(),
                }),
            }),
            0,
        );
        s
    }

    fn sent(key: &str, m: Message) -> Event {
        Event::SendResult(SendResult {
            client_msg_id: key.into(),
            chat_id: m.chat_id.clone(),
            outcome: SendOutcome::Sent {
                message: m,
                duplicate: false,
            },
        })
    }

    fn queued(key: &str, text: &str) -> OutgoingMessage {
        OutgoingMessage {
            client_msg_id: key.into(),
            chat_id: "c1".into(),
            content: Content::text(text),
            queued_at: 5,
            failure: None,
        }
    }

    #[test]
    fn opening_a_chat_marks_it_read_up_to_the_newest_message() {
        let mut s = AppState::new(ME);
        let mut c = chat("c1", ChatKind::Direct, "", &[ME, "bob"]);
        c.last_seq = 2;
        c.unread_count = 2;
        s.update(Input::Done(Done::Chats(Ok(vec![c]))), 0);
        s.update(Input::Key(Action::Char('1')), 0);
        let fx = s.update(Input::Key(Action::Enter), 0);
        assert_eq!(fx.len(), 3, "{fx:?}");
        let fx = s.update(
            Input::Done(Done::History {
                chat_id: "c1".into(),
                older: false,
                result: Ok(HistoryPage {
                    messages: vec![msg("c1", 2, "bob", "b"), msg("c1", 1, "bob", "a")],
                    next_page_token: "older".into(),
                }),
            }),
            0,
        );
        assert_eq!(
            fx,
            vec![Effect::MarkRead {
                chat_id: "c1".into(),
                seq: 2
            }]
        );
        assert_eq!(s.unread("c1"), Some(0));
        let texts: Vec<String> = s.chat_lines().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, vec!["a", "b"], "oldest first");
        assert_eq!(
            s.want_older(),
            Some(Effect::LoadHistory {
                chat_id: "c1".into(),
                page_token: "older".into()
            })
        );
        assert_eq!(s.want_older(), None, "one at a time");
    }

    #[test]
    fn own_message_ticks_go_queued_sent_delivered_read() {
        let mut s = open_state(vec![msg("c1", 1, "bob", "hi")]);
        let fx = typed(&mut s, "hello", 1_000);
        assert_eq!(
            fx,
            vec![Effect::SetTyping {
                chat_id: "c1".into(),
                typing: true
            }]
        );
        let fx = s.update(Input::Key(Action::Enter), 1_100);
        assert_eq!(
            fx,
            vec![
                Effect::SetTyping {
                    chat_id: "c1".into(),
                    typing: false
                },
                Effect::Send {
                    chat_id: "c1".into(),
                    text: "hello".into()
                }
            ]
        );
        s.update(Input::Done(Done::Queued(Ok(queued("k1", "hello")))), 1_100);
        assert_eq!(s.tick_of("hello"), Some(Tick::Queued));
        s.update(Input::Sdk(sent("k1", msg("c1", 2, ME, "hello"))), 1_200);
        assert_eq!(s.tick_of("hello"), Some(Tick::Sent));
        assert!(s.outbox.is_empty());
        s.update(Input::Sdk(receipt("bob", ReceiptKind::Delivered, 1)), 0);
        assert_eq!(
            s.tick_of("hello"),
            Some(Tick::Sent),
            "receipt below its seq"
        );
        s.update(Input::Sdk(receipt("bob", ReceiptKind::Delivered, 2)), 0);
        assert_eq!(s.tick_of("hello"), Some(Tick::Delivered));
        s.update(Input::Sdk(receipt(ME, ReceiptKind::Read, 2)), 0);
        assert_eq!(s.tick_of("hello"), Some(Tick::Delivered), "own read");
        s.update(Input::Sdk(receipt("bob", ReceiptKind::Read, 2)), 0);
        assert_eq!(s.tick_of("hello"), Some(Tick::Read));
    }

    #[test]
    fn a_send_answered_before_its_local_echo_is_not_left_queued() {
        let mut s = open_state(vec![]);
        s.update(Input::Sdk(sent("k1", msg("c1", 1, ME, "fast"))), 0);
        s.update(Input::Done(Done::Queued(Ok(queued("k1", "fast")))), 0);
        assert_eq!(s.tick_of("fast"), Some(Tick::Sent));
        assert!(s.outbox.is_empty());
    }

    #[test]
    fn failed_sends_show_the_reason_and_can_be_retried() {
        let mut s = open_state(vec![]);
        s.update(Input::Done(Done::Queued(Ok(queued("k1", "big")))), 0);
        s.update(
            Input::Sdk(Event::SendResult(SendResult {
                client_msg_id: "k1".into(),
                chat_id: "c1".into(),
                outcome: SendOutcome::Failed {
                    code: Code::InvalidArgument,
                    reason: "content too large".into(),
                },
            })),
            0,
        );
        assert_eq!(
            s.tick_of("big"),
            Some(Tick::Failed("InvalidArgument: content too large".into()))
        );
        assert!(s.notice.as_ref().is_some_and(|n| n.error));
        typed(&mut s, "/retry", 0);
        let fx = s.update(Input::Key(Action::Enter), 0);
        assert_eq!(fx, vec![Effect::Retry(vec!["k1".into()])]);
        s.update(Input::Done(Done::Retried(Ok(vec!["k1".into()]))), 0);
        assert_eq!(s.tick_of("big"), Some(Tick::Queued));
    }

    #[test]
    fn live_messages_merge_in_order_and_are_marked_read() {
        let mut s = open_state(vec![msg("c1", 1, "bob", "one")]);
        let fx = s.update(Input::Sdk(Event::Message(msg("c1", 3, "bob", "three"))), 0);
        assert!(fx.contains(&Effect::MarkRead {
            chat_id: "c1".into(),
            seq: 3
        }));
        s.update(Input::Sdk(Event::Message(msg("c1", 2, "bob", "two"))), 0);
        let texts: Vec<String> = s.chat_lines().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, vec!["one", "two", "three"]);
        assert_eq!(s.unread("c1"), Some(0));
    }

    #[test]
    fn messages_elsewhere_raise_unread_and_refresh_the_list() {
        let mut s = AppState::new(ME);
        s.start();
        s.update(
            Input::Done(Done::Chats(Ok(vec![
                chat("c1", ChatKind::Direct, "", &[ME, "bob"]),
                chat("c2", ChatKind::Group, "Team", &[ME, "bob", "carol"]),
            ]))),
            0,
        );
        let fx = s.update(Input::Sdk(Event::Message(msg("c2", 1, "carol", "hey"))), 0);
        assert_eq!(fx, vec![Effect::RefreshChats]);
        assert_eq!(s.unread("c2"), Some(1));
        assert_eq!(s.chats[0].chat_id, "c2");
        assert_eq!(
            s.selected, 1,
            "the highlight stays on c1 as the list reorders"
        );
        // A second event while the refresh runs: one more refresh after it, not two at once.
        let fx = s.update(Input::Sdk(Event::Message(msg("c2", 2, "carol", "?"))), 0);
        assert!(fx.is_empty());
        let fx = s.update(Input::Done(Done::Chats(Ok(s.chats.clone()))), 0);
        assert_eq!(fx, vec![Effect::RefreshChats]);
        let fx = s.update(Input::Done(Done::Chats(Ok(s.chats.clone()))), 0);
        assert!(fx.is_empty());
        assert_eq!(s.unread("c2"), Some(2));
    }

    #[test]
    fn typing_is_shown_until_it_expires_or_stops() {
        let mut s = open_state(vec![]);
        let t = |state, exp| {
            Input::Sdk(Event::Typing(Typing {
                chat_id: "c1".into(),
                user_id: "bob".into(),
                device_id: "phone".into(),
                state,
                expires_at: exp,
            }))
        };
        s.update(t(TypingState::Started, 6_000), 0);
        assert_eq!(s.typing_now(1_000), vec!["bob"]);
        assert!(s.typing_now(6_001).is_empty());
        s.update(t(TypingState::Started, 12_000), 7_000);
        s.update(t(TypingState::Stopped, 0), 8_000);
        assert!(s.typing_now(8_000).is_empty());
        s.update(t(TypingState::Started, 20_000), 9_000);
        s.update(Input::Sdk(Event::Message(msg("c1", 1, "bob", "x"))), 9_500);
        assert!(s.typing_now(9_500).is_empty(), "a message ends typing");
    }

    #[test]
    fn own_typing_is_throttled_and_stopped() {
        let mut s = open_state(vec![]);
        assert_eq!(typed(&mut s, "ab", 0).len(), 1);
        assert!(typed(&mut s, "c", 2_000).is_empty());
        assert_eq!(typed(&mut s, "d", 3_000).len(), 1);
        let fx = s.update(Input::Key(Action::ClearLine), 3_100);
        assert_eq!(
            fx,
            vec![Effect::SetTyping {
                chat_id: "c1".into(),
                typing: false
            }]
        );
        assert!(
            typed(&mut s, "/chats", 4_000).is_empty(),
            "commands are not typing"
        );
    }

    #[test]
    fn presence_of_members_is_kept() {
        let mut s = open_state(vec![]);
        for user in ["bob", "mallory"] {
            s.update(
                Input::Sdk(Event::Presence(Presence {
                    user_id: user.into(),
                    status: PresenceStatus::Online,
                    last_seen: 0,
                    devices_online: 1,
                })),
                0,
            );
        }
        let o = s.open.as_ref().unwrap();
        assert!(o.presence.contains_key("bob"));
        assert!(!o.presence.contains_key("mallory"), "not a member");
    }

    #[test]
    fn commands_and_navigation() {
        let mut s = open_state(vec![]);
        typed(&mut s, "/chats", 0);
        let fx = s.update(Input::Key(Action::Enter), 0);
        assert!(s.open.is_none());
        assert!(fx.contains(&Effect::WatchPresence(vec![])));
        typed(&mut s, "/dm bob", 0);
        assert_eq!(
            s.update(Input::Key(Action::Enter), 0),
            vec![Effect::OpenDirect("bob".into())]
        );
        typed(&mut s, "/group \"Road trip\" bob carol", 0);
        assert_eq!(
            s.update(Input::Key(Action::Enter), 0),
            vec![Effect::CreateGroup {
                title: "Road trip".into(),
                members: vec!["bob".into(), "carol".into()]
            }]
        );
        let g = chat("g1", ChatKind::Group, "Road trip", &[ME, "bob", "carol"]);
        let fx = s.update(Input::Done(Done::ChatReady(Ok(g))), 0);
        assert_eq!(s.open_chat_id(), Some("g1"));
        assert!(fx.contains(&Effect::WatchPresence(vec!["bob".into(), "carol".into()])));
        s.update(Input::Key(Action::Escape), 0);
        assert!(s.open.is_none());
        typed(&mut s, "7", 0);
        s.update(Input::Key(Action::Enter), 0);
        assert!(s.notice.as_ref().is_some_and(|n| n.error));
        typed(&mut s, "/nope", 0);
        s.update(Input::Key(Action::Enter), 0);
        assert!(s
            .notice
            .as_ref()
            .is_some_and(|n| n.text.contains("unknown command")));
        assert_eq!(s.update(Input::Key(Action::Quit), 0), vec![Effect::Quit]);
        assert!(s.quitting);
    }

    #[test]
    fn connection_status_and_catch_up_after_reconnect() {
        let mut s = open_state(vec![]);
        s.update(
            Input::Sdk(Event::Connection(ConnectionStatus {
                state: ConnectionState::Reconnecting,
                attempt: 2,
                retry_in: Some(std::time::Duration::from_secs(3)),
                error: None,
                replayed: 0,
            })),
            10_000,
        );
        assert_eq!(s.conn.retry_at, Some(13_000));
        let fx = s.update(
            Input::Sdk(Event::Connection(ConnectionStatus {
                state: ConnectionState::Connected,
                attempt: 0,
                retry_in: None,
                error: None,
                replayed: 0,
            })),
            14_000,
        );
        assert!(fx.contains(&Effect::LoadReceipts {
            chat_id: "c1".into()
        }));
    }

    #[test]
    fn pending_sends_from_an_earlier_run_are_shown() {
        let mut s = open_state(vec![]);
        let mut failed = queued("k2", "rejected");
        failed.failure = Some((3, "bad".into()));
        s.update(
            Input::Done(Done::Pending(Ok(vec![queued("k1", "offline"), failed]))),
            0,
        );
        assert_eq!(s.tick_of("offline"), Some(Tick::Queued));
        assert_eq!(s.tick_of("rejected"), Some(Tick::Failed("bad".into())));
    }
}
