-- 003_attempts.sql - every write recognisable as its own when it is re-run after a lost COMMIT
-- reply (docs/reliability.md, "Lost COMMIT replies"), and presence counted per connection.
-- Idempotent like the others (IF NOT EXISTS), so an interrupted run can be repeated.

-- The attempt token of the store call that inserted the message: a re-run that finds its own
-- client_msg_id with its own token knows the first run committed (not a client's retry).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS attempt BIGINT UNSIGNED NULL;

-- One row per store (one MySQL connection's owner, random id): the token and result of its last
-- write. Only that store touches its row; rows of stores gone for a day are pruned on connect.
CREATE TABLE IF NOT EXISTS store_attempts (
	owner		BIGINT UNSIGNED NOT NULL,
	token		BIGINT UNSIGNED NOT NULL,
	result		MEDIUMTEXT NOT NULL,
	ts		BIGINT NOT NULL,
	PRIMARY KEY (owner),
	KEY attempts_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Presence: one row per open connection (node, connection id), so counting a connection twice or
-- dropping one that was never counted changes nothing; online = at least one row.
-- (presence_nodes, the per-node counters of 001, is no longer used.)
CREATE TABLE IF NOT EXISTS presence_conns (
	user_id		VARCHAR(64) NOT NULL,
	node		VARCHAR(128) NOT NULL,
	conn		BIGINT UNSIGNED NOT NULL,
	PRIMARY KEY (user_id, node, conn),
	KEY presence_conn_node (node)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
