//! The input line: a single-line editor with a cursor, scrolled horizontally to fit.

use unicode_width::UnicodeWidthChar;

/// Longest line accepted (the server's default message limit is 16 KiB).
pub const MAX_CHARS: usize = 4_000;

#[derive(Debug, Default, Clone)]
pub struct LineEditor {
    chars: Vec<char>,
    /// Cursor position in chars (0..=len).
    cursor: usize,
}

impl LineEditor {
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The line, emptied.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.chars).into_iter().collect()
    }

    /// Insert typed or pasted text; control characters (a pasted newline) become spaces.
    pub fn insert_str(&mut self, s: &str) {
        for c in s.chars() {
            if self.chars.len() >= MAX_CHARS {
                return;
            }
            let c = if c.is_control() { ' ' } else { c };
            self.chars.insert(self.cursor, c);
            self.cursor += 1;
        }
    }

    pub fn insert(&mut self, c: char) {
        let mut b = [0u8; 4];
        self.insert_str(c.encode_utf8(&mut b));
    }

    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.chars.remove(self.cursor);
        }
    }

    pub fn delete(&mut self) {
        if self.cursor < self.chars.len() {
            self.chars.remove(self.cursor);
        }
    }

    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.chars.len());
    }

    pub fn home(&mut self) {
        self.cursor = 0;
    }

    pub fn end(&mut self) {
        self.cursor = self.chars.len();
    }

    /// Ctrl-W: the word before the cursor (and the spaces after it).
    pub fn delete_word(&mut self) {
        let mut start = self.cursor;
        while start > 0 && self.chars[start - 1] == ' ' {
            start -= 1;
        }
        while start > 0 && self.chars[start - 1] != ' ' {
            start -= 1;
        }
        self.chars.drain(start..self.cursor);
        self.cursor = start;
    }

    pub fn clear(&mut self) {
        self.chars.clear();
        self.cursor = 0;
    }

    /// The part of the line visible in `width` columns and the cursor's column in it. The view
    /// scrolls so the cursor stays visible, keeping as much text left of it as fits.
    pub fn view(&self, width: usize) -> (String, usize) {
        if width == 0 {
            return (String::new(), 0);
        }
        let w = |c: &char| UnicodeWidthChar::width(*c).unwrap_or(0);
        // Leave one column for the cursor itself at the end of the line.
        let mut start = self.cursor;
        let mut used = 1;
        while start > 0 && used + w(&self.chars[start - 1]) <= width {
            start -= 1;
            used += w(&self.chars[start]);
        }
        let cursor_col = self.chars[start..self.cursor].iter().map(w).sum();
        let mut out = String::new();
        let mut cols = 0;
        for c in &self.chars[start..] {
            if cols + w(c) > width {
                break;
            }
            cols += w(c);
            out.push(*c);
        }
        (out, cursor_col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editing() {
        let mut e = LineEditor::default();
        e.insert_str("helo");
        e.left();
        e.insert('l');
        assert_eq!(e.text(), "hello");
        e.home();
        e.delete();
        e.end();
        e.backspace();
        assert_eq!(e.text(), "ell");
        e.insert_str(" big world");
        e.delete_word();
        assert_eq!(e.text(), "ell big ");
        e.delete_word();
        assert_eq!(e.text(), "ell ");
        e.insert_str("a\nb");
        assert_eq!(e.text(), "ell a b");
        assert_eq!(e.take(), "ell a b");
        assert!(e.is_empty());
        e.backspace();
        e.delete();
        e.left();
        e.right();
        assert!(e.is_empty());
    }

    #[test]
    fn view_follows_the_cursor() {
        let mut e = LineEditor::default();
        e.insert_str("abcdefghij");
        let (v, c) = e.view(5);
        assert_eq!((v.as_str(), c), ("ghij", 4));
        e.home();
        let (v, c) = e.view(5);
        assert_eq!((v.as_str(), c), ("abcde", 0));
        let (v, c) = LineEditor::default().view(5);
        assert_eq!((v.as_str(), c), ("", 0));
        let mut wide = LineEditor::default();
        wide.insert_str("日本語");
        let (v, c) = wide.view(5);
        assert_eq!((v.as_str(), c), ("本語", 4));
    }

    #[test]
    fn length_is_bounded() {
        let mut e = LineEditor::default();
        e.insert_str(&"x".repeat(MAX_CHARS + 10));
        assert_eq!(e.text().len(), MAX_CHARS);
    }
}
