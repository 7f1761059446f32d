-- Room rate limit over a sliding one-second window: the times of each user's recent posts.
-- (room_rate stays: its row per user is the lock that serialises that user's posts.)
CREATE TABLE IF NOT EXISTS room_rate_log (
	id		BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
	user_id		VARCHAR(64) NOT NULL,
	ts		BIGINT NOT NULL,
	PRIMARY KEY (id),
	KEY user_ts (user_id, ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
