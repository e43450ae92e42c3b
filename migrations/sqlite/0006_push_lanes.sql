-- Where each provider's push lane stands in push_intents. Lanes move on their own, so a
-- provider that stalls holds back only its own pushes; an intent is removed once every lane
-- the node runs is past it. A lane with no row starts at the oldest intent.
CREATE TABLE push_positions (
    provider   TEXT PRIMARY KEY,
    done_up_to INTEGER NOT NULL
);

-- Positions need ids that are never used twice: a plain rowid starts again at 1 once the
-- table is empty, behind every lane's position.
CREATE TABLE push_intents_lanes (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id TEXT NOT NULL,
    seq     INTEGER NOT NULL
);
INSERT INTO push_intents_lanes (id, chat_id, seq) SELECT id, chat_id, seq FROM push_intents;
DROP TABLE push_intents;
ALTER TABLE push_intents_lanes RENAME TO push_intents;

-- The dead-letter depth gauge counts per provider.
CREATE INDEX push_dead_letters_by_provider ON push_dead_letters (provider);
