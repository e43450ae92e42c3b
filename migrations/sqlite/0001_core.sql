-- Core schema of the embedded store: chats, members, messages, devices and their cursors.
-- Applied once, in order, tracked with PRAGMA user_version.

CREATE TABLE chats (
    chat_id          TEXT PRIMARY KEY,
    kind             INTEGER NOT NULL,          -- 1 direct, 2 group
    title            TEXT NOT NULL DEFAULT '',
    direct_key       TEXT UNIQUE,               -- sorted user pair of a direct chat
    last_seq         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL
);

CREATE TABLE members (
    chat_id    TEXT NOT NULL REFERENCES chats(chat_id),
    user_id    TEXT NOT NULL,
    role       INTEGER NOT NULL,                -- 1 member, 2 admin
    joined_at  INTEGER NOT NULL,
    joined_seq INTEGER NOT NULL,                -- chat last_seq at join: sees seq > joined_seq
    read_seq   INTEGER NOT NULL DEFAULT 0,      -- the user's read position
    PRIMARY KEY (chat_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members(user_id, chat_id);

CREATE TABLE messages (
    chat_id          TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    message_id       TEXT NOT NULL,
    sender_user_id   TEXT NOT NULL,
    sender_device_id TEXT NOT NULL,
    client_msg_id    TEXT NOT NULL,
    text             TEXT NOT NULL DEFAULT '',
    ciphertext       BLOB,
    attributes       TEXT,                      -- JSON object, NULL when empty
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (chat_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_idempotency ON messages(sender_user_id, client_msg_id);

CREATE TABLE devices (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE device_cursors (
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    chat_id       TEXT NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, chat_id)
) WITHOUT ROWID;
