//! A member's mute of a chat: pushes of the chat are held back from them until a time, or until
//! they unmute. Nothing else (messages, receipts, unread counts) looks at it.
//!
//! Stored as one `until` in unix ms, `None` when not muted and [`INDEFINITELY`] for "until
//! unmuted", so "is it muted at `now`" is one comparison for every reader (the push worker's
//! `muted_members` included) and an expired mute needs no sweep.

use crate::{Error, Result};

/// The stored `until` of a mute without an end.
pub const INDEFINITELY: i64 = i64::MAX;

/// What a SetChatMuted request asks to store: `Some(until)` (or `Some(INDEFINITELY)`) to mute,
/// `None` to unmute. `until` is the wire's: unix ms, 0 for "until unmuted" when muting, and
/// nothing else when unmuting (a stray time there is a client bug worth hearing about).
pub fn requested(muted: bool, until: i64, now: i64) -> Result<Option<i64>> {
    match (muted, until) {
        (false, 0) => Ok(None),
        (false, _) => Err(Error::invalid("until", "must be 0 when unmuting")),
        (true, 0) => Ok(Some(INDEFINITELY)),
        (true, u) if u < 0 => Err(Error::invalid(
            "until",
            "must be a unix time in ms, or 0 for until unmuted",
        )),
        // A time already past would be a mute that is over before it is stored.
        (true, u) if u <= now => Err(Error::invalid("until", "must be in the future")),
        (true, u) => Ok(Some(u)),
    }
}

/// A stored mute as of `now`: `None` once its time has passed.
pub fn as_of(stored: Option<i64>, now: i64) -> Option<i64> {
    stored.filter(|until| *until > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn refused_field(r: Result<Option<i64>>) -> &'static str {
        match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_mute_is_until_a_time_to_come_or_until_unmuted() {
        assert_eq!(requested(true, NOW + 1, NOW), Ok(Some(NOW + 1)));
        assert_eq!(requested(true, 0, NOW), Ok(Some(INDEFINITELY)));
        assert_eq!(requested(false, 0, NOW), Ok(None));
    }

    #[test]
    fn times_that_make_no_mute_are_refused_naming_until() {
        for (muted, until) in [
            (true, NOW),
            (true, NOW - 1),
            (true, 1),
            (true, -1),
            (true, i64::MIN),
            (false, NOW + 1),
            (false, -1),
        ] {
            assert_eq!(
                refused_field(requested(muted, until, NOW)),
                "until",
                "muted={muted} until={until}"
            );
        }
    }

    #[test]
    fn a_mute_reads_as_none_once_its_time_has_passed() {
        assert_eq!(as_of(Some(NOW + 1), NOW), Some(NOW + 1));
        assert_eq!(as_of(Some(NOW), NOW), None);
        assert_eq!(as_of(Some(NOW - 1), NOW), None);
        assert_eq!(as_of(Some(INDEFINITELY), NOW), Some(INDEFINITELY));
        assert_eq!(as_of(None, NOW), None);
    }
}
