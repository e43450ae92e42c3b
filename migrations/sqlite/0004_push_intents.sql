-- Messages waiting for the push worker (embedded default, when push is on): written in the
-- same transaction as the message, so a push is never lost to a crash between the two; removed
-- once every push for it was sent, found dead or dead-lettered.

CREATE TABLE push_intents (
    id      INTEGER PRIMARY KEY,
    chat_id TEXT NOT NULL,
    seq     INTEGER NOT NULL
);

-- Pushes that failed for good (the provider refused them, or the retries ran out).
CREATE TABLE push_dead_letters (
    id         INTEGER PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    provider   TEXT NOT NULL,
    chat_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
