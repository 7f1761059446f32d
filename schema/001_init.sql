-- 001_init.sql - Parley's tables: messages, per-user event logs, cursors, conversations, groups,
-- presence and rooms. Applied by `parleyctl migrate`, which records it in schema_version.
-- Every statement is idempotent (IF NOT EXISTS) so that a migration interrupted half-way can be re-run.

-- Every message ever sent. UNIQUE(sender, client_msg_id) is what makes sending idempotent.
CREATE TABLE IF NOT EXISTS messages (
	id		BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
	sender		VARCHAR(64) NOT NULL,
	recipient	VARCHAR(64) NULL,		-- NULL for a group message
	group_id	BIGINT UNSIGNED NULL,		-- NULL for a 1:1 message
	content		MEDIUMTEXT NOT NULL,
	client_msg_id	VARCHAR(64) NOT NULL,
	ts		BIGINT NOT NULL,		-- ms since the epoch
	sender_seq	BIGINT UNSIGNED NOT NULL,	-- the seq of the event in the sender's log
	PRIMARY KEY (id),
	UNIQUE KEY msg_idem (sender, client_msg_id),
	KEY msg_pair (recipient, sender, id),		-- unread counts of 1:1 conversations
	KEY msg_group (group_id, id)			-- unread counts of group conversations
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The newest seq of each user's log; its row lock serialises appends to one log (gap-free seqs).
CREATE TABLE IF NOT EXISTS user_seq (
	user_id		VARCHAR(64) NOT NULL,
	last_seq	BIGINT UNSIGNED NOT NULL,
	PRIMARY KEY (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Per-user durable event logs. kind 1: new_message (message_id set, encoded on read from messages);
-- kind 2: any other event, body is its complete JSON text (with its seq).
CREATE TABLE IF NOT EXISTS events (
	user_id		VARCHAR(64) NOT NULL,
	seq		BIGINT UNSIGNED NOT NULL,
	kind		TINYINT UNSIGNED NOT NULL,
	message_id	BIGINT UNSIGNED NULL,
	body		MEDIUMTEXT NULL,
	PRIMARY KEY (user_id, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- /sync cursors per device.
CREATE TABLE IF NOT EXISTS device_cursors (
	user_id		VARCHAR(64) NOT NULL,
	device_id	VARCHAR(64) NOT NULL,
	cur_seq		BIGINT UNSIGNED NOT NULL,
	PRIMARY KEY (user_id, device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per (user, conversation): a 1:1 conversation has peer set and group_id 0, a group
-- conversation has peer '' and its group_id. Kept up to date by the send and receipt transactions,
-- so GET /conversations is one indexed read. delivered_upto / read_upto are the user's receipt
-- markers (message ids) in that conversation; they only move forward.
-- (Since 005_conversations_on_read.sql: sends write no row here; the first receipt in a
-- conversation makes it, and only delivered_upto / read_upto are read. GET /conversations is
-- derived from events (ev_history), messages and these markers; last_message_id, last_ts and
-- unread are unused, and conv_recent is dropped.)
CREATE TABLE IF NOT EXISTS conversations (
	user_id		VARCHAR(64) NOT NULL,
	group_id	BIGINT UNSIGNED NOT NULL,
	peer		VARCHAR(64) NOT NULL,
	last_message_id	BIGINT UNSIGNED NOT NULL,
	last_ts		BIGINT NOT NULL,
	unread		INT UNSIGNED NOT NULL DEFAULT 0,
	delivered_upto	BIGINT UNSIGNED NOT NULL DEFAULT 0,
	read_upto	BIGINT UNSIGNED NOT NULL DEFAULT 0,
	PRIMARY KEY (user_id, group_id, peer),
	KEY conv_recent (user_id, last_ts, last_message_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS chat_groups (
	id		BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
	name		VARCHAR(100) NOT NULL,
	creator		VARCHAR(64) NOT NULL,
	created_ts	BIGINT NOT NULL,
	PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- role 1 = admin, 0 = member.
CREATE TABLE IF NOT EXISTS group_members (
	group_id	BIGINT UNSIGNED NOT NULL,
	user_id		VARCHAR(64) NOT NULL,
	role		TINYINT UNSIGNED NOT NULL DEFAULT 0,
	PRIMARY KEY (group_id, user_id),
	KEY member_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Presence: open connections per (user, node), so a restarted node can drop its rows; the
-- presence_users row is each user's lock row and keeps last_seen.
CREATE TABLE IF NOT EXISTS presence_nodes (
	user_id		VARCHAR(64) NOT NULL,
	node		VARCHAR(128) NOT NULL,
	conns		INT UNSIGNED NOT NULL,
	PRIMARY KEY (user_id, node),
	KEY presence_node (node)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS presence_users (
	user_id		VARCHAR(64) NOT NULL,
	last_seen	BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Live-stream room comments: only the newest limits.room_history per room are kept.
CREATE TABLE IF NOT EXISTS room_messages (
	id		BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
	room		VARCHAR(64) NOT NULL,
	user_id		VARCHAR(64) NOT NULL,
	text		TEXT NOT NULL,
	ts		BIGINT NOT NULL,
	PRIMARY KEY (id),
	KEY room_recent (room, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Room rate limit: posts per user in the current one-second window (shared by every process).
CREATE TABLE IF NOT EXISTS room_rate (
	user_id		VARCHAR(64) NOT NULL,
	win		BIGINT NOT NULL,
	n		INT UNSIGNED NOT NULL,
	PRIMARY KEY (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
