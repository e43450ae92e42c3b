//! Keys and terminal events → what they mean to the app.

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Char(char),
    Paste(String),
    Backspace,
    Delete,
    DeleteWord,
    ClearLine,
    Left,
    Right,
    Home,
    End,
    Up,
    Down,
    PageUp,
    PageDown,
    Enter,
    Escape,
    Quit,
    /// Repaint everything (Ctrl-L, or the terminal changed size).
    Redraw,
}

/// The action of a terminal event, if it has one.
pub fn action(ev: TermEvent) -> Option<Action> {
    match ev {
        TermEvent::Key(k) => key(k),
        TermEvent::Paste(s) => Some(Action::Paste(s)),
        TermEvent::Resize(..) => Some(Action::Redraw),
        _ => None,
    }
}

fn key(k: KeyEvent) -> Option<Action> {
    // Only presses: terminals reporting releases would otherwise type every letter twice.
    if k.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    Some(match k.code {
        KeyCode::Char('c') | KeyCode::Char('d') if ctrl => Action::Quit,
        KeyCode::Char('l') if ctrl => Action::Redraw,
        KeyCode::Char('u') if ctrl => Action::ClearLine,
        KeyCode::Char('w') if ctrl => Action::DeleteWord,
        KeyCode::Char('a') if ctrl => Action::Home,
        KeyCode::Char('e') if ctrl => Action::End,
        KeyCode::Char('h') if ctrl => Action::Backspace,
        KeyCode::Char('p') if ctrl => Action::Up,
        KeyCode::Char('n') if ctrl => Action::Down,
        KeyCode::Char(_) if ctrl => return None,
        KeyCode::Char(c) => Action::Char(c),
        KeyCode::Backspace => Action::Backspace,
        KeyCode::Delete => Action::Delete,
        KeyCode::Left => Action::Left,
        KeyCode::Right => Action::Right,
        KeyCode::Home => Action::Home,
        KeyCode::End => Action::End,
        KeyCode::Up => Action::Up,
        KeyCode::Down => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Enter => Action::Enter,
        KeyCode::Esc => Action::Escape,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(code: KeyCode, m: KeyModifiers) -> TermEvent {
        TermEvent::Key(KeyEvent::new(code, m))
    }

    #[test]
    fn keys() {
        assert_eq!(
            action(k(KeyCode::Char('x'), KeyModifiers::NONE)),
            Some(Action::Char('x'))
        );
        assert_eq!(
            action(k(KeyCode::Char('X'), KeyModifiers::SHIFT)),
            Some(Action::Char('X'))
        );
        assert_eq!(
            action(k(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(action(k(KeyCode::Char('z'), KeyModifiers::CONTROL)), None);
        assert_eq!(action(TermEvent::Resize(80, 24)), Some(Action::Redraw));
        let mut release = KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(action(TermEvent::Key(release)), None);
    }
}
