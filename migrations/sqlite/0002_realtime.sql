-- Receipts carry times; last seen survives restarts.

ALTER TABLE device_cursors ADD COLUMN delivered_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE device_cursors ADD COLUMN read_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN read_at INTEGER NOT NULL DEFAULT 0;

CREATE TABLE last_seen (
    user_id TEXT PRIMARY KEY,
    at      INTEGER NOT NULL
) WITHOUT ROWID;

-- Retention purges by age.
CREATE INDEX messages_by_time ON messages(created_at);
