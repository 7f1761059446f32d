-- 005_conversations_on_read.sql - conversation summaries are derived on read (issue 11): no row
-- is written per message any more. GET /conversations reads the user's own log (events, index
-- ev_history of 004) for its conversations and last message ids, messages for the last message
-- and the unread counts, and conversations only for the user's receipt markers.
-- Re-runnable like every migration (IF EXISTS, and setting a default twice changes nothing).

-- conversations now holds only the receipt markers (delivered_upto, read_upto) per
-- (user_id, group_id, peer); the first receipt in a conversation makes its row, and a missing
-- row means (0, 0). Nothing reads last_message_id, last_ts or unread any more. They are kept,
-- with defaults so that a marker row can be made without them, rather than dropped: a daemon of
-- the previous version still running while `parleyctl migrate` runs (a rolling upgrade) writes
-- and reads them on every send and summary, and dropping them would fail every one of its sends
-- until it is restarted; dropping them would also rebuild the whole table. Setting a default and
-- dropping an index are in-place changes that do not copy the table.
ALTER TABLE conversations
	ALTER COLUMN last_message_id SET DEFAULT 0,
	ALTER COLUMN last_ts SET DEFAULT 0,
	DROP INDEX IF EXISTS conv_recent;
