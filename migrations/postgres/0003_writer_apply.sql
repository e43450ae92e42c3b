-- The writer's batch in two round trips, holding its locks only inside the second one
-- (store/postgres/writer.rs): the first reads what the checks need without locks, the writer
-- decides every write in memory, and this function, run as one statement that commits on its
-- own, takes the locks, makes sure nothing the decisions rest on changed meanwhile, and writes.
--
-- What may change meanwhile, and what happens then:
--   * another node appends to the same chats: seqs are numbered here, from the chat's last_seq
--     as it is once locked (`msg_ordinals` are 1, 2, ... per chat in batch order), and the
--     function returns each chat's first seq, so the writer can number its answers alike;
--   * a membership the batch relies on ended: the function fails (40001) and the batch runs
--     again (a membership that began meanwhile only means a refusal that was right when read);
--   * a cursor the batch moves moved (another node's move of the same device): fails (40001);
--   * another node stored the same idempotency key: the unique index fails the insert (23505).
-- Outbox rows of messages carry their event as `head || seq || tail`, the seq being the one
-- numbered here; other events are `head` alone. Rows go in in array order.

-- What the writer used before: locks and reads in its first round trip, the writes as JSON.
DROP FUNCTION chatd_writer_read(TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[],
                                TEXT[], TEXT[]);
DROP FUNCTION chatd_writer_write(JSONB, TEXT);

CREATE FUNCTION chatd_writer_apply(
    lock_chats TEXT[],
    move_chats TEXT[], move_users TEXT[],
    member_chats TEXT[], member_users TEXT[],
    cur_users TEXT[], cur_devices TEXT[], cur_chats TEXT[], cur_known BOOLEAN[],
    cur_delivered BIGINT[], cur_delivered_at BIGINT[], cur_read BIGINT[], cur_read_at BIGINT[],
    new_delivered BIGINT[], new_delivered_at BIGINT[], new_read BIGINT[], new_read_at BIGINT[],
    msg_ids TEXT[], msg_chats TEXT[], msg_ordinals BIGINT[], msg_senders TEXT[],
    msg_devices TEXT[], msg_client_ids TEXT[], msg_texts TEXT[], msg_ciphertexts BYTEA[],
    msg_attributes TEXT[], msg_created BIGINT[],
    chat_ids TEXT[], chat_counts BIGINT[], chat_activity BIGINT[],
    read_chats TEXT[], read_users TEXT[], read_seqs BIGINT[], read_ats BIGINT[],
    seen_users TEXT[], seen_ats BIGINT[],
    out_chats TEXT[], out_heads BYTEA[], out_tails BYTEA[], out_seq_chats TEXT[],
    out_ordinals BIGINT[],
    channel TEXT)
RETURNS TABLE (chat TEXT, first_seq BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    -- Locks first, chats then member rows, each in key order, as every other writer does.
    IF cardinality(lock_chats) > 0 THEN
        PERFORM 1 FROM chats ch WHERE ch.chat_id = ANY(lock_chats)
            ORDER BY ch.chat_id FOR NO KEY UPDATE;
    END IF;
    IF cardinality(move_chats) > 0 THEN
        PERFORM 1 FROM members m
            WHERE (m.chat_id, m.user_id) IN (SELECT * FROM unnest(move_chats, move_users))
            ORDER BY m.chat_id, m.user_id FOR NO KEY UPDATE;
    END IF;
    -- Each statement from here on takes a new snapshot: it sees every commit that held those
    -- locks before.
    IF EXISTS (
        SELECT 1 FROM unnest(member_chats, member_users) AS q(c, u)
        WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.chat_id = q.c AND m.user_id = q.u)
    ) THEN
        RAISE EXCEPTION 'chatd: a membership ended under the batch' USING ERRCODE = '40001';
    END IF;
    IF EXISTS (
        SELECT 1
        FROM unnest(cur_users, cur_devices, cur_chats, cur_known, cur_delivered,
                    cur_delivered_at, cur_read, cur_read_at)
            AS e(u, d, c, known, ds, dat, rs, rat)
        LEFT JOIN device_cursors x ON x.user_id = e.u AND x.device_id = e.d AND x.chat_id = e.c
        WHERE CASE WHEN e.known
                   THEN x.user_id IS NULL
                        OR (x.delivered_seq, x.delivered_at, x.read_seq, x.read_at)
                           IS DISTINCT FROM (e.ds, e.dat, e.rs, e.rat)
                   ELSE x.user_id IS NOT NULL END
    ) THEN
        RAISE EXCEPTION 'chatd: a cursor moved under the batch' USING ERRCODE = '40001';
    END IF;

    IF cardinality(msg_ids) > 0 THEN
        INSERT INTO messages (message_id, chat_id, seq, sender_user_id, sender_device_id,
                              client_msg_id, text, ciphertext, attributes, created_at)
        SELECT m.id, m.chat, ch.last_seq + m.ord, m.sender, m.device, m.client_id, m.txt,
               m.ciphertext, m.attributes, m.created
        FROM unnest(msg_ids, msg_chats, msg_ordinals, msg_senders, msg_devices, msg_client_ids,
                    msg_texts, msg_ciphertexts, msg_attributes, msg_created)
            AS m(id, chat, ord, sender, device, client_id, txt, ciphertext, attributes, created)
        JOIN chats ch ON ch.chat_id = m.chat;
    END IF;
    IF cardinality(out_chats) > 0 THEN
        -- No join: the rows keep their array order, and so their ids the batch's order.
        INSERT INTO outbox (chat_id, payload)
        SELECT o.c,
               CASE WHEN o.ord IS NULL THEN o.head
                    ELSE o.head
                         || convert_to(((SELECT ch.last_seq FROM chats ch WHERE ch.chat_id = o.sc)
                                        + o.ord)::TEXT, 'UTF8')
                         || o.tail END
        FROM unnest(out_chats, out_heads, out_tails, out_seq_chats, out_ordinals)
            AS o(c, head, tail, sc, ord);
        PERFORM pg_notify(channel, '');
    END IF;
    IF cardinality(cur_users) > 0 THEN
        INSERT INTO device_cursors (user_id, device_id, chat_id, delivered_seq, delivered_at,
                                    read_seq, read_at)
        SELECT * FROM unnest(cur_users, cur_devices, cur_chats, new_delivered,
                             new_delivered_at, new_read, new_read_at)
        ON CONFLICT (user_id, device_id, chat_id) DO UPDATE SET
            delivered_seq = GREATEST(device_cursors.delivered_seq, excluded.delivered_seq),
            delivered_at = CASE WHEN excluded.delivered_seq > device_cursors.delivered_seq
                THEN excluded.delivered_at ELSE device_cursors.delivered_at END,
            read_seq = GREATEST(device_cursors.read_seq, excluded.read_seq),
            read_at = CASE WHEN excluded.read_seq > device_cursors.read_seq
                THEN excluded.read_at ELSE device_cursors.read_at END;
    END IF;
    IF cardinality(read_chats) > 0 THEN
        UPDATE members m SET read_seq = u.seq, read_at = u.at
        FROM unnest(read_chats, read_users, read_seqs, read_ats) AS u(c, usr, seq, at)
        WHERE m.chat_id = u.c AND m.user_id = u.usr AND m.read_seq < u.seq;
    END IF;
    IF cardinality(seen_users) > 0 THEN
        INSERT INTO last_seen (user_id, at) SELECT * FROM unnest(seen_users, seen_ats)
        ON CONFLICT (user_id) DO UPDATE SET at = GREATEST(last_seen.at, excluded.at);
    END IF;
    RETURN QUERY
        WITH moved AS (
            UPDATE chats ch SET last_seq = ch.last_seq + u.n, last_activity_at = u.at
            FROM unnest(chat_ids, chat_counts, chat_activity) AS u(c, n, at)
            WHERE ch.chat_id = u.c
            RETURNING ch.chat_id, ch.last_seq - u.n AS before)
        SELECT moved.chat_id::TEXT, moved.before + 1 FROM moved;
END
$$;
