/* config.h - the read-only configuration of a Parley process, loaded from an INI-style file. */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>
#include <stdint.h>

/*
 * File format: "key = value" lines, "[section]" headers, "#" or ";" comments. A key is known by
 * "section.key" (e.g. "mysql.socket"). Every key has a documented default (docs/configuration.md);
 * unknown keys and bad values stop start-up with "FILE:LINE: key: reason".
 * After config_load() returns, the struct is never written again: any thread may read it.
 */
struct config {
	/* [mysql] */
	char	*mysql_socket;		/* UNIX socket; when set, host/port are ignored */
	char	*mysql_host;		/* default "127.0.0.1" */
	int	 mysql_port;		/* default 3306 */
	char	*mysql_user;		/* default "parley" */
	char	*mysql_password;	/* default "" ; never logged */
	char	*mysql_database;	/* default "parley" */
	int	 mysql_connect_timeout;	/* seconds, default 2 */
	int	 mysql_rw_timeout;	/* seconds for reads/writes, default 10 */
	int	 mysql_start_wait;	/* seconds a daemon waits for MySQL at start; -1: not at all */
	int	 mysql_lock_wait_timeout;	/* seconds a statement waits for a row lock, default 5 */

	/* [memcached] */
	char	*memcached_servers;	/* a pool: "server[,server...]", each "/path/to.sock" or "host:port"; "" disables; default "127.0.0.1:11211" */
	int	 memcached_timeout_ms;	/* poll and connect timeout, default 100 */
	int	 memcached_ttl;		/* seconds a summary lives, default 300 */
	int	 memcached_retry_ms;	/* a failed server is left alone this long, default 1000 */

	/* [auth] */
	char	*jwt_secret;		/* HS256 secret, at least 32 bytes; required */
	int	 jwt_leeway;		/* seconds of clock skew allowed for exp/nbf/iat, default 30 */
	int	 token_ttl;		/* default lifetime of parleyctl tokens, seconds, default 3600 */

	/* [bus] */
	char	*bus_dir;		/* directory of the bus sockets, default "/run/parley/bus" */
	char	*bus_node_id;		/* this host's id (bus_host_id); NULL: the file host-id in bus_dir */

	/* [redis]: the bridge between hosts (redis.h); unset url: one host, no Redis */
	char	*redis_url;		/* "redis://host[:port]" or "unix:/path"; NULL: no bridge */
	char	*redis_user;		/* ACL user (AUTH user password); NULL: AUTH password alone */
	char	*redis_password;	/* NULL: no AUTH */
	char	*redis_prefix;		/* channel name prefix, default "parley" */
#define CONFIG_REDIS_PREFIX_MAX 48	/* bytes of redis.prefix (channel names: PREFIX:r:ROOM) */
	int	 redis_slots;		/* user-hash slots (one channel each), default 1024 */
	int	 redis_fallback_interval; /* seconds between MySQL rechecks while Redis is down, default 1 */
	int	 redis_timeout_ms;	/* connect and PING answer timeout, default 1000 */
	int	 redis_linger_ms;	/* a channel stays subscribed this long after its last listener, default 5000 */
	int	 redis_queue;		/* hints waiting to be published, default 65536 */
	int	 redis_inline_content;	/* a new message's event travels inline (content on Redis), default no */
	int	 redis_max_age;		/* seconds a message may be older (or newer) than our clock, default 60 */
	int	 redis_inflight;	/* PUBLISH commands unanswered before hints wait, default 8192 */
	int	 redis_recv_queue;	/* received hints not yet taken by the owner, default 65536 */

	/* [limits] */
	size_t	 body_max;		/* HTTP body bytes, default 65536 */
	int	 content_max_chars;	/* message content characters after trimming, default 4000 */
	int	 room_text_max_chars;	/* room message characters, default 500 */
	int	 room_rate_per_sec;	/* room messages per user per second, default 10 */
	int	 room_history;		/* room messages kept for GET /rooms/{room}/messages, default 200 */
	int	 poll_timeout_max;	/* seconds, longest long poll, default 60 */
	int	 page_max;		/* largest "limit" for event pages, default 500 */
	int	 history_max;		/* largest "limit" of a history page, default 200 */

	/* [retention] (parleyctl prune) */
	int	 retention_events_days;	/* events older than this are pruned; 0 (default) keeps all */
	int	 retention_messages_days; /* the same for messages (and so for history); 0 keeps all */
	int	 retention_batch;	/* rows deleted per short transaction, default 1000 */
	int	 retention_pause_ms;	/* pause between two batches, default 10 */

	/* [actor] */
	int	 actor_workers;		/* worker threads, default 4 */
	int	 actor_mailbox;		/* messages queued per actor, default 256 */
	int	 actor_retries;		/* attempts before a failing message is escalated, default 5 */
	int	 actor_backoff_ms;	/* first retry delay, doubled each time, default 50 */
	int	 actor_idle_ms;		/* an idle actor is reclaimed after this, default 30000 */

	/* [fcgi] */
	char	*fcgi_listen;		/* "/path.sock", ":port" or "host:port"; default "/run/parley/fcgi.sock" */
	int	 fcgi_socket_mode;	/* octal permissions of a UNIX listen socket, default 0660 */
	int	 fcgi_threads;		/* request threads, default 4 */
	int	 fcgi_max_parked;	/* parked long polls, default 10000; beyond: 503 */
	int	 fcgi_max_parked_per_user; /* parked polls of one user, default 16; beyond: oldest ends */

	/* [ws] */
	char	*ws_listen;		/* interface address, default "127.0.0.1" */
	int	 ws_port;		/* default 8081 */
	int	 ws_max_connections;	/* beyond: HTTP 503 on upgrade, default 10000 */
	size_t	 ws_max_message;	/* largest frame/message bytes, default 65536 */
	size_t	 ws_queue_bytes;	/* outbound bytes queued per connection, default 262144 */
	int	 ws_queue_frames;	/* outbound frames queued per connection, default 1024 */
	int	 ws_send_window_us;	/* a send waits this long for others to commit with, 0: none */
	int	 ws_ping_interval;	/* seconds between WebSocket pings, default 20 */
	int	 ws_idle_timeout;	/* seconds of silence before closing, default 60 */
	int	 ws_auth_timeout;	/* seconds to send the auth frame, default 10 */
	char	*ws_origins;		/* comma-separated allowed Origin values; "" allows any */
	int	 ws_max_per_ip;		/* open WebSockets per client address, default 2000 */
	int	 ws_max_per_user;	/* open WebSockets per user (this daemon), default 32 */
	size_t	 ws_max_preauth_message; /* largest message before auth, default 4096 */
	size_t	 ws_max_url;		/* upgrade URL bytes (path + query), default 4096 */
	char	*ws_trusted_proxies;	/* peers whose X-Forwarded-For names the client */

	/* [demo] */
	int	 demo_tokens;		/* boolean, default no: POST /demo/token (scripts/demo only) */

	/* [log] */
	int	 log_level;		/* enum log_level, default info */
	int	 log_syslog;		/* boolean, default no */

	/* Where the values came from, for messages. */
	char	*path;
};

/* Fill every field with its default (the required jwt_secret stays NULL). */
void	config_defaults(struct config *);
/*
 * Load path over the defaults and validate everything. 0 on success; -1 with *cause set to
 * "PATH:LINE: key: reason", or "PATH: key: reason" for a required key the file does not set
 * (caller frees cause). On failure the config is freed.
 */
int	config_load(struct config *, const char *path, char **cause);
/* Set one "section.key" from a string, validated as in a file (tests, command-line overrides). */
int	config_set(struct config *, const char *key, const char *value, char **cause);
/* Check cross-field rules after all values are set (e.g. jwt_secret required). */
int	config_validate(const struct config *, char **cause);
/* The path to use: the --config argument if given, else $PARLEY_CONFIG, else NULL. */
const char *config_path(const char *arg);
/* Free the strings a config holds; the struct itself belongs to the caller. */
void	config_clear(struct config *);

#endif
