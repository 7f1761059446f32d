-- 004_history_retention.sql - conversation history out of each user's own log, and retention.
-- Re-runnable like every migration: IF NOT EXISTS everywhere, and the back-fill only touches
-- rows it has not filled yet.

-- A new_message event names its conversation as the conversations table does: a 1:1 message
-- has conv_group 0 and conv_peer the other user (the user itself for a note to oneself), a group
-- message conv_group = its group and conv_peer ''. Other events leave both NULL. ts is when the
-- event was appended (ms since the epoch, MySQL's clock): retention prunes each log's oldest
-- events by it.
--
-- ev_history makes a page of GET /conversations/{user}/messages and GET /groups/{id}/messages
-- one backward range scan: user_id, conv_group and conv_peer are fixed, message_id < before,
-- newest first, LIMIT n+1. Its cost is that page whatever the length of the history.
ALTER TABLE events
	ADD COLUMN IF NOT EXISTS conv_group BIGINT UNSIGNED NULL,
	ADD COLUMN IF NOT EXISTS conv_peer VARCHAR(64) NULL,
	ADD COLUMN IF NOT EXISTS ts BIGINT NOT NULL DEFAULT (FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000)),
	ADD INDEX IF NOT EXISTS ev_history (user_id, conv_group, conv_peer, message_id);

-- Events written before this migration: their conversation, from their message.
UPDATE events e JOIN messages m ON m.id = e.message_id
SET e.conv_group = COALESCE(m.group_id, 0),
    e.conv_peer = IF(m.group_id IS NOT NULL, '', IF(m.sender = e.user_id, m.recipient, m.sender))
WHERE e.kind = 1 AND e.conv_group IS NULL;

-- The oldest seq still kept in the user's log (retention moves it; nothing older is left). A
-- cursor "after" with after + 1 < first_seq is behind the log: the reader is told to reset.
ALTER TABLE user_seq
	ADD COLUMN IF NOT EXISTS first_seq BIGINT UNSIGNED NOT NULL DEFAULT 1;
