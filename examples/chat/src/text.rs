//! Column widths, truncation, wrapping, and the time formats the screen shows.

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Display columns of `s`.
pub fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

fn char_width(c: char) -> usize {
    UnicodeWidthChar::width(c).unwrap_or(0)
}

/// Text from the network made safe to print: a peer must not be able to move the cursor,
/// change colours or retitle the terminal, so control characters (C0, DEL, C1) become `�`.
/// Tabs and newlines become spaces (multi-line messages are joined; the layout is per line).
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\t' | '\r' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// `s` cut to at most `max` columns, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = char_width(c);
        if w + cw > max - 1 {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// `s` padded with spaces (or truncated) to exactly `w` columns.
pub fn fit(s: &str, w: usize) -> String {
    let mut t = truncate(s, w);
    let tw = width(&t);
    t.extend(std::iter::repeat_n(' ', w.saturating_sub(tw)));
    t
}

/// Word-wrap `s` into lines of at most `max` columns; words longer than a line are split.
pub fn wrap(s: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut lw = 0;
    for word in s.split(' ') {
        let ww = width(word);
        let sep = usize::from(!line.is_empty());
        if lw + sep + ww <= max {
            if sep == 1 {
                line.push(' ');
            }
            line.push_str(word);
            lw += sep + ww;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
            lw = 0;
        }
        for c in word.chars() {
            let cw = char_width(c);
            if lw + cw > max && !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                lw = 0;
            }
            line.push(c);
            lw += cw;
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// "just now", "5 min ago", "3 h ago", "2 d ago".
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=59 => "just now".to_string(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// "14:05" for a time today (local), "03-17 14:05" for an older one.
pub fn clock(now_ms: i64, at_ms: i64) -> String {
    match (local(at_ms), local(now_ms)) {
        (Some(at), Some(now)) if (at.0, at.1, at.2) == (now.0, now.1, now.2) => {
            format!("{:02}:{:02}", at.3, at.4)
        }
        (Some(at), _) => format!("{:02}-{:02} {:02}:{:02}", at.1, at.2, at.3, at.4),
        (None, _) => String::new(),
    }
}

/// (year, month, day, hour, minute) in the local time zone.
fn local(ms: i64) -> Option<(i32, i32, i32, i32, i32)> {
    let secs = libc::time_t::try_from(ms.div_euclid(1000)).ok()?;
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r (the thread-safe variant) writes only into `tm`, which outlives the call.
    let r = unsafe { libc::localtime_r(&secs, &mut tm) };
    if r.is_null() {
        return None;
    }
    Some((
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        assert_eq!(sanitize("a\x1b[2Jb"), "a\u{FFFD}[2Jb");
        assert_eq!(sanitize("x\ny\tz"), "x y z");
        assert_eq!(sanitize("\u{9b}31m"), "\u{FFFD}31m");
    }

    #[test]
    fn truncate_and_fit_count_columns() {
        assert_eq!(truncate("hello", 5), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
        assert_eq!(truncate("日本語", 4), "日…");
        assert_eq!(fit("ab", 4), "ab  ");
        assert_eq!(width(&fit("日本語テキスト", 7)), 7);
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn wrap_breaks_at_words_and_splits_long_ones() {
        assert_eq!(
            wrap("the quick brown fox", 9),
            vec!["the quick", "brown fox"]
        );
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), vec![""]);
        for l in wrap("日本語のテキストです", 5) {
            assert!(width(&l) <= 5, "{l}");
        }
    }

    #[test]
    fn relative_times() {
        assert_eq!(ago(100_000, 95_000), "just now");
        assert_eq!(ago(10 * 60_000, 0), "10 min ago");
        assert_eq!(ago(3 * 3_600_000 + 5, 0), "3 h ago");
        assert_eq!(ago(0, 1000), "just now");
    }

    #[test]
    fn clock_shows_the_date_only_for_other_days() {
        let now = 1_700_000_000_000;
        assert_eq!(clock(now, now).len(), 5);
        assert!(clock(now, now - 3 * 86_400_000).len() > 5);
    }
}
