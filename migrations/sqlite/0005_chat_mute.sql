-- A member's mute of a chat's push notifications (SetChatMuted): until when, in unix ms; NULL
-- when not muted, 9223372036854775807 (i64::MAX) for "until unmuted". On the member row, so
-- it goes when the member leaves. Messages, receipts and unread counts ignore it.

ALTER TABLE members ADD COLUMN muted_until INTEGER;
