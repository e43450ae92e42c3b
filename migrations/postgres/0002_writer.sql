-- What the append path needs to be quick: the writer's locks and reads in one round trip, and
-- the outbox relay's delete and read in one round trip, from a lower bound.

-- Outbox ids are taken only by a transaction that already has its transaction id: the relay
-- (store/postgres/outbox.rs) skips the ids below a bound it moves only once every transaction
-- older than one it started itself has ended, which covers every id taken before that point
-- only if the transaction that took it already had its id then. CASE evaluates the condition
-- first; `pg_current_xact_id()` assigns the id if there is none yet.
CREATE FUNCTION chatd_outbox_id() RETURNS BIGINT LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('outbox_id_seq'::regclass) END
$$;
ALTER TABLE outbox ALTER COLUMN id SET DEFAULT chatd_outbox_id();

-- The writer's first statement of a batch (store/postgres/writer.rs): locks the chats that get
-- messages, then the member rows whose read positions may move, each in key order as every
-- other writer takes them (so two nodes' batches never deadlock); then reads what the checks
-- need. Each statement of a VOLATILE function takes a new snapshot, so the reads see every
-- commit that held those locks before. Rows come tagged by kind:
--   1 member read position  a = chat, b = user, n1 = read_seq, n2 = read_at (locked, latest)
--   2 membership            a = chat, b = user, n1 = the chat's last_seq, n2 = 1 if a member
--   3 existing message      the message columns
--   4 device cursor         a = user, b = device, c = chat, n1..n4 = delivered seq and time,
--                           read seq and time
CREATE FUNCTION chatd_writer_read(
    lock_chats     TEXT[],
    move_chats     TEXT[], move_users TEXT[],
    pair_chats     TEXT[], pair_users TEXT[],
    key_senders    TEXT[], key_ids TEXT[],
    cursor_users   TEXT[], cursor_devices TEXT[], cursor_chats TEXT[])
RETURNS TABLE (kind INTEGER, a TEXT, b TEXT, c TEXT, n1 BIGINT, n2 BIGINT, n3 BIGINT, n4 BIGINT,
               message_id TEXT, chat_id TEXT, seq BIGINT, sender_user_id TEXT,
               sender_device_id TEXT, client_msg_id TEXT, text TEXT, ciphertext BYTEA,
               attributes TEXT, created_at BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    IF cardinality(lock_chats) > 0 THEN
        PERFORM 1 FROM chats ch WHERE ch.chat_id = ANY(lock_chats)
            ORDER BY ch.chat_id FOR NO KEY UPDATE;
    END IF;
    IF cardinality(move_chats) > 0 THEN
        RETURN QUERY
            SELECT 1, m.chat_id::TEXT, m.user_id::TEXT, NULL::TEXT, m.read_seq, m.read_at,
                   NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::TEXT,
                   NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::BYTEA, NULL::TEXT, NULL::BIGINT
            FROM members m
            WHERE (m.chat_id, m.user_id) IN (SELECT * FROM unnest(move_chats, move_users))
            ORDER BY m.chat_id, m.user_id FOR NO KEY UPDATE;
    END IF;
    IF cardinality(pair_chats) > 0 THEN
        RETURN QUERY
            SELECT 2, q.chat_id, q.user_id, NULL::TEXT, ch.last_seq,
                   CASE WHEN m.user_id IS NULL THEN 0::BIGINT ELSE 1::BIGINT END,
                   NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::TEXT,
                   NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::BYTEA, NULL::TEXT, NULL::BIGINT
            FROM unnest(pair_chats, pair_users) AS q(chat_id, user_id)
            JOIN chats ch ON ch.chat_id = q.chat_id
            LEFT JOIN members m ON m.chat_id = q.chat_id AND m.user_id = q.user_id;
    END IF;
    IF cardinality(key_senders) > 0 THEN
        RETURN QUERY
            SELECT 3, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT,
                   NULL::BIGINT, NULL::BIGINT,
                   x.message_id::TEXT, x.chat_id::TEXT, x.seq, x.sender_user_id::TEXT,
                   x.sender_device_id::TEXT, x.client_msg_id::TEXT, x.text, x.ciphertext,
                   x.attributes, x.created_at
            FROM messages x
            WHERE (x.sender_user_id, x.client_msg_id) IN (SELECT * FROM unnest(key_senders, key_ids));
    END IF;
    IF cardinality(cursor_users) > 0 THEN
        RETURN QUERY
            SELECT 4, d.user_id::TEXT, d.device_id::TEXT, d.chat_id::TEXT, d.delivered_seq,
                   d.delivered_at, d.read_seq, d.read_at, NULL::TEXT, NULL::TEXT, NULL::BIGINT,
                   NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::BYTEA, NULL::TEXT,
                   NULL::BIGINT
            FROM device_cursors d
            WHERE (d.user_id, d.device_id, d.chat_id)
                IN (SELECT * FROM unnest(cursor_users, cursor_devices, cursor_chats));
    END IF;
END
$$;

-- The writer's last statement of a batch, before COMMIT in the same round trip: everything the
-- batch decided, as one JSON document (see `Document` in store/postgres/writer.rs), and a
-- NOTIFY on `channel` when it adds outbox rows. Cursors and read positions only move forward,
-- whatever the document says.
CREATE FUNCTION chatd_writer_write(batch JSONB, channel TEXT) RETURNS VOID
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    queued BIGINT;
BEGIN
    IF jsonb_array_length(batch->'messages') > 0 THEN
        INSERT INTO messages (message_id, chat_id, seq, sender_user_id, sender_device_id,
                              client_msg_id, text, ciphertext, attributes, created_at)
        SELECT m.message_id, m.chat_id, m.seq, m.sender_user_id, m.sender_device_id,
               m.client_msg_id, m.text, decode(m.ciphertext, 'hex'), m.attributes, m.created_at
        FROM jsonb_to_recordset(batch->'messages') AS m(
            message_id TEXT, chat_id TEXT, seq BIGINT, sender_user_id TEXT,
            sender_device_id TEXT, client_msg_id TEXT, text TEXT, ciphertext TEXT,
            attributes TEXT, created_at BIGINT);
    END IF;
    IF jsonb_array_length(batch->'chats') > 0 THEN
        UPDATE chats c SET last_seq = u.last_seq, last_activity_at = u.at
        FROM jsonb_to_recordset(batch->'chats') AS u(chat_id TEXT, last_seq BIGINT, at BIGINT)
        WHERE c.chat_id = u.chat_id;
    END IF;
    IF jsonb_array_length(batch->'cursors') > 0 THEN
        INSERT INTO device_cursors (user_id, device_id, chat_id, delivered_seq, delivered_at,
                                    read_seq, read_at)
        SELECT d.user_id, d.device_id, d.chat_id, d.delivered_seq, d.delivered_at, d.read_seq,
               d.read_at
        FROM jsonb_to_recordset(batch->'cursors') AS d(
            user_id TEXT, device_id TEXT, chat_id TEXT, delivered_seq BIGINT,
            delivered_at BIGINT, read_seq BIGINT, read_at BIGINT)
        ON CONFLICT (user_id, device_id, chat_id) DO UPDATE SET
            delivered_seq = GREATEST(device_cursors.delivered_seq, excluded.delivered_seq),
            delivered_at = CASE WHEN excluded.delivered_seq > device_cursors.delivered_seq
                THEN excluded.delivered_at ELSE device_cursors.delivered_at END,
            read_seq = GREATEST(device_cursors.read_seq, excluded.read_seq),
            read_at = CASE WHEN excluded.read_seq > device_cursors.read_seq
                THEN excluded.read_at ELSE device_cursors.read_at END;
    END IF;
    IF jsonb_array_length(batch->'reads') > 0 THEN
        UPDATE members m SET read_seq = u.seq, read_at = u.at
        FROM jsonb_to_recordset(batch->'reads')
            AS u(chat_id TEXT, user_id TEXT, seq BIGINT, at BIGINT)
        WHERE m.chat_id = u.chat_id AND m.user_id = u.user_id AND m.read_seq < u.seq;
    END IF;
    IF jsonb_array_length(batch->'last_seen') > 0 THEN
        INSERT INTO last_seen (user_id, at)
        SELECT s.user_id, s.at FROM jsonb_to_recordset(batch->'last_seen') AS s(user_id TEXT, at BIGINT)
        ON CONFLICT (user_id) DO UPDATE SET at = GREATEST(last_seen.at, excluded.at);
    END IF;
    IF jsonb_array_length(batch->'outbox') > 0 THEN
        INSERT INTO outbox (chat_id, payload)
        SELECT o.chat_id, convert_to(o.payload, 'UTF8')
        FROM jsonb_to_recordset(batch->'outbox') AS o(chat_id TEXT, payload TEXT);
        PERFORM pg_notify(channel, '');
    END IF;
END
$$;

-- The outbox relay's statement (store/postgres/outbox.rs): deletes the rows it relayed last,
-- then reads the next ones above `after_id`, in id order. `own_xid`, when asked for, is a
-- transaction id taken after the previous call's snapshot; `snap_xmin` is the oldest
-- transaction still running at the snapshot of the read. One row with NULL ids when there is
-- nothing to read.
CREATE FUNCTION chatd_relay_next(relayed BIGINT[], after_id BIGINT, max_rows INTEGER,
                                 want_xid BOOLEAN)
RETURNS TABLE (snap_xmin BIGINT, own_xid BIGINT, row_id BIGINT, row_chat TEXT, row_payload BYTEA)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    x BIGINT;
BEGIN
    IF want_xid THEN
        x := pg_current_xact_id()::TEXT::BIGINT;
    END IF;
    IF cardinality(relayed) > 0 THEN
        DELETE FROM outbox ob WHERE ob.id = ANY(relayed);
    END IF;
    -- A new snapshot: the deletes above are gone from it.
    RETURN QUERY
        SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT, x, o.id, o.chat_id::TEXT,
               o.payload
        FROM (SELECT 1) AS one
        LEFT JOIN LATERAL (
            SELECT ob.id, ob.chat_id, ob.payload FROM outbox ob
            WHERE ob.id > after_id ORDER BY ob.id LIMIT max_rows) AS o ON true
        ORDER BY o.id;
END
$$;
