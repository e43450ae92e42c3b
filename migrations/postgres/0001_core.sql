-- Core schema of the cluster store: the tables of the embedded SQLite store, plus the outbox
-- that carries committed events to Kafka and the settings every node shares.
-- Applied by `chatd migrate` (or CHATD_MIGRATE=auto) in one transaction under an advisory lock;
-- the runner creates `schema_migrations (version, applied_at)` itself, before reading it.
--
-- Ids are compared bytewise (COLLATE "C"), as SQLite does, so orders (members by user id,
-- chat lists by chat id) come out the same on both stores whatever the database's locale.

CREATE TABLE chats (
    chat_id          TEXT COLLATE "C" PRIMARY KEY,
    kind             INTEGER NOT NULL,          -- 1 direct, 2 group
    title            TEXT NOT NULL DEFAULT '',
    direct_key       TEXT COLLATE "C" UNIQUE,   -- sorted user pair of a direct chat
    last_seq         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    last_activity_at BIGINT NOT NULL
) WITH (fillfactor = 50); -- every append batch updates its chats: room for HOT updates

CREATE TABLE members (
    chat_id    TEXT COLLATE "C" NOT NULL REFERENCES chats(chat_id),
    user_id    TEXT COLLATE "C" NOT NULL,
    role       INTEGER NOT NULL,                -- 1 member, 2 admin
    joined_at  BIGINT NOT NULL,
    joined_seq BIGINT NOT NULL,                 -- chat last_seq at join: sees seq > joined_seq
    read_seq   BIGINT NOT NULL DEFAULT 0,       -- the user's read position
    read_at    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
) WITH (fillfactor = 80);
CREATE INDEX members_by_user ON members(user_id, chat_id);

CREATE TABLE messages (
    chat_id          TEXT COLLATE "C" NOT NULL,
    seq              BIGINT NOT NULL,
    message_id       TEXT COLLATE "C" NOT NULL,
    sender_user_id   TEXT COLLATE "C" NOT NULL,
    sender_device_id TEXT COLLATE "C" NOT NULL,
    client_msg_id    TEXT COLLATE "C" NOT NULL,
    text             TEXT NOT NULL DEFAULT '',
    ciphertext       BYTEA,
    attributes       TEXT,                      -- JSON object, NULL when empty
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (chat_id, seq)
);
CREATE UNIQUE INDEX messages_idempotency ON messages(sender_user_id, client_msg_id);
-- Retention purges by age.
CREATE INDEX messages_by_time ON messages(created_at);

CREATE TABLE devices (
    user_id    TEXT COLLATE "C" NOT NULL,
    device_id  TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE device_cursors (
    user_id       TEXT COLLATE "C" NOT NULL,
    device_id     TEXT COLLATE "C" NOT NULL,
    chat_id       TEXT COLLATE "C" NOT NULL,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    delivered_at  BIGINT NOT NULL DEFAULT 0,
    read_seq      BIGINT NOT NULL DEFAULT 0,
    read_at       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, chat_id)
) WITH (fillfactor = 80);

CREATE TABLE last_seen (
    user_id TEXT COLLATE "C" PRIMARY KEY,
    at      BIGINT NOT NULL
);

-- Committed events waiting for the relay (store/postgres/outbox.rs). Within a chat, ids follow
-- commit order: every write that adds a chat's event holds a lock on that chat's row (or, for
-- receipts, on the member's row) until it commits.
CREATE TABLE outbox (
    id         BIGSERIAL PRIMARY KEY,
    chat_id    TEXT COLLATE "C" NOT NULL,
    payload    BYTEA NOT NULL,
    created_at BIGINT DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
) WITH (
    -- A queue: every row is deleted soon after it is written. Vacuum it by row count, not by
    -- table size, or the relay's index scans wade through dead entries.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000
);

-- Settings all nodes must agree on (the JWT secret).
CREATE TABLE cluster_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
