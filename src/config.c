/* config.c - the read-only configuration of a Parley process, loaded from an INI-style file. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bus.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "xmalloc.h"

/* The shortest HS256 secret we accept: 256 bits, the size of the HMAC output. */
#define CONFIG_SECRET_MIN 32

enum config_type {
	CT_STR,		/* any string */
	CT_STR_NONEMPTY,	/* a string that must not be empty */
	CT_STR_OPT,	/* a string; empty means "not set" (NULL) */
	CT_LISTEN,	/* "/path" (UNIX socket) or "host:port" with a host (never every interface) */
	CT_INT,		/* decimal integer in [min, max] */
	CT_SIZE,	/* byte count with optional k/m/g suffix, in [min, max] */
	CT_BOOL,	/* yes/no/true/false/on/off/1/0 */
	CT_MODE,	/* octal permission bits in [min, max] */
	CT_LEVEL	/* log level name */
};

/*
 * One row per key: everything the parser, the defaults and the documentation need. sdef is the
 * default of a string key (NULL: unset), idef of every other type.
 */
struct config_key {
	const char		*name;
	enum config_type	 type;
	size_t			 off;
	long long		 min;
	long long		 max;
	const char		*sdef;
	long long		 idef;
};

#define S(name, type, field, def) \
	{ name, type, offsetof(struct config, field), 0, 0, def, 0 }
#define I(name, type, field, min, max, def) \
	{ name, type, offsetof(struct config, field), min, max, NULL, def }

static const struct config_key config_keys[] = {
	S("mysql.socket",		CT_STR_OPT,	 mysql_socket,		NULL),
	S("mysql.host",			CT_STR_NONEMPTY, mysql_host,		"127.0.0.1"),
	I("mysql.port",			CT_INT,		 mysql_port,		1, 65535, 3306),
	S("mysql.user",			CT_STR_NONEMPTY, mysql_user,		"parley"),
	S("mysql.password",		CT_STR,		 mysql_password,	""),
	S("mysql.database",		CT_STR_NONEMPTY, mysql_database,	"parley"),
	I("mysql.connect_timeout",	CT_INT,		 mysql_connect_timeout,	1, 3600, 2),
	I("mysql.rw_timeout",		CT_INT,		 mysql_rw_timeout,	1, 3600, 10),
	I("mysql.start_wait",		CT_INT,		 mysql_start_wait,	-1, 3600, 10),
	I("mysql.lock_wait_timeout",	CT_INT,		 mysql_lock_wait_timeout, 1, 3600, 5),

	S("memcached.servers",		CT_STR,		 memcached_servers,	"127.0.0.1:11211"),
	I("memcached.timeout_ms",	CT_INT,		 memcached_timeout_ms,	1, 60000, 100),
	I("memcached.ttl",		CT_INT,		 memcached_ttl,		1, 2592000, 300),
	I("memcached.retry_ms",		CT_INT,		 memcached_retry_ms,	100, 3600000, 1000),

	S("auth.jwt_secret",		CT_STR,		 jwt_secret,		NULL),
	I("auth.jwt_leeway",		CT_INT,		 jwt_leeway,		0, 3600, 30),
	I("auth.token_ttl",		CT_INT,		 token_ttl,		1, 31536000, 3600),

	S("bus.dir",			CT_STR_NONEMPTY, bus_dir,		"/run/parley/bus"),
	S("bus.node_id",		CT_STR_OPT,	 bus_node_id,		NULL),

	S("redis.url",			CT_STR_OPT,	 redis_url,		NULL),
	S("redis.user",			CT_STR_OPT,	 redis_user,		NULL),
	S("redis.password",		CT_STR_OPT,	 redis_password,	NULL),
	S("redis.prefix",		CT_STR_NONEMPTY, redis_prefix,		"parley"),
	I("redis.slots",		CT_INT,		 redis_slots,		1, 1048576, 1024),
	I("redis.fallback_interval",	CT_INT,		 redis_fallback_interval, 1, 3600, 1),
	I("redis.timeout_ms",		CT_INT,		 redis_timeout_ms,	10, 60000, 1000),
	I("redis.linger_ms",		CT_INT,		 redis_linger_ms,	100, 3600000, 5000),
	I("redis.queue",		CT_INT,		 redis_queue,		16, 10000000, 65536),
	I("redis.inline_content",	CT_BOOL,	 redis_inline_content,	0, 1, 0),
	I("redis.max_age",		CT_INT,		 redis_max_age,		1, 3600, 60),
	I("redis.inflight",		CT_INT,		 redis_inflight,	1, 1000000, 8192),
	I("redis.recv_queue",		CT_INT,		 redis_recv_queue,	16, 10000000, 65536),

	I("limits.body_max",		CT_SIZE,	 body_max,		1024, 67108864, 65536),
	I("limits.content_max_chars",	CT_INT,		 content_max_chars,	1, 65536, 4000),
	I("limits.room_text_max_chars",	CT_INT,		 room_text_max_chars,	1, 65536, 500),
	I("limits.room_rate_per_sec",	CT_INT,		 room_rate_per_sec,	1, 100000, 10),
	I("limits.room_history",	CT_INT,		 room_history,		1, 100000, 200),
	I("limits.poll_timeout_max",	CT_INT,		 poll_timeout_max,	1, 3600, 60),
	I("limits.page_max",		CT_INT,		 page_max,		1, 10000, 500),
	I("limits.history_max",		CT_INT,		 history_max,		1, 10000, 200),

	I("retention.events_days",	CT_INT,		 retention_events_days,	0, 36500, 0),
	I("retention.messages_days",	CT_INT,		 retention_messages_days, 0, 36500, 0),
	I("retention.batch",		CT_INT,		 retention_batch,	1, 100000, 1000),
	I("retention.pause_ms",		CT_INT,		 retention_pause_ms,	0, 60000, 10),

	I("actor.workers",		CT_INT,		 actor_workers,		1, 1024, 4),
	I("actor.mailbox",		CT_INT,		 actor_mailbox,		1, 1000000, 256),
	I("actor.retries",		CT_INT,		 actor_retries,		1, 100, 5),
	I("actor.backoff_ms",		CT_INT,		 actor_backoff_ms,	1, 60000, 50),
	I("actor.idle_ms",		CT_INT,		 actor_idle_ms,		10, 86400000, 30000),

	S("fcgi.listen",		CT_LISTEN,	 fcgi_listen,		"/run/parley/fcgi.sock"),
	I("fcgi.socket_mode",		CT_MODE,	 fcgi_socket_mode,	0, 0777, 0660),
	I("fcgi.threads",		CT_INT,		 fcgi_threads,		1, 1024, 4),
	I("fcgi.max_parked",		CT_INT,		 fcgi_max_parked,	0, 1000000, 10000),
	I("fcgi.max_parked_per_user",	CT_INT,		 fcgi_max_parked_per_user, 1, 1000000, 16),

	S("ws.listen",			CT_STR_NONEMPTY, ws_listen,		"127.0.0.1"),
	I("ws.port",			CT_INT,		 ws_port,		1, 65535, 8081),
	I("ws.max_connections",		CT_INT,		 ws_max_connections,	1, 1000000, 10000),
	I("ws.max_message",		CT_SIZE,	 ws_max_message,	256, 16777216, 65536),
	I("ws.queue_bytes",		CT_SIZE,	 ws_queue_bytes,	1024, 1073741824, 262144),
	I("ws.queue_frames",		CT_INT,		 ws_queue_frames,	1, 1000000, 1024),
	I("ws.send_window_us",		CT_INT,		 ws_send_window_us,	0, 100000, 0),
	I("ws.ping_interval",		CT_INT,		 ws_ping_interval,	1, 3600, 20),
	I("ws.idle_timeout",		CT_INT,		 ws_idle_timeout,	2, 3600, 60),
	I("ws.auth_timeout",		CT_INT,		 ws_auth_timeout,	1, 3600, 10),
	S("ws.origins",			CT_STR,		 ws_origins,		""),
	I("ws.max_per_ip",		CT_INT,		 ws_max_per_ip,		1, 1000000, 2000),
	I("ws.max_per_user",		CT_INT,		 ws_max_per_user,	1, 1000000, 32),
	I("ws.max_preauth_message",	CT_SIZE,	 ws_max_preauth_message, 256, 16777216, 4096),
	I("ws.max_url",			CT_SIZE,	 ws_max_url,		256, 32768, 4096),
	S("ws.trusted_proxies",		CT_STR,		 ws_trusted_proxies,	"127.0.0.1, ::1"),

	I("demo.tokens",		CT_BOOL,	 demo_tokens,		0, 1, 0),

	I("log.level",			CT_LEVEL,	 log_level,		0, 0, LOG_LEVEL_INFO),
	I("log.syslog",			CT_BOOL,	 log_syslog,		0, 1, 0),
};

#undef S
#undef I

static const char *config_sections[] = {
	"mysql", "memcached", "auth", "bus", "redis", "limits", "retention", "actor", "fcgi", "ws", "demo",
	"log"
};

/* Is k one of the string types (the ones config_clear frees)? */
static int
config_is_str(const struct config_key *k)
{
	return k->type == CT_STR || k->type == CT_STR_NONEMPTY || k->type == CT_STR_OPT ||
	    k->type == CT_LISTEN;
}

/* The field of cfg that k describes, seen as its type. */
static char **
config_str(struct config *cfg, const struct config_key *k)
{
	return (char **)((char *)cfg + k->off);
}

static int *
config_int(struct config *cfg, const struct config_key *k)
{
	return (int *)((char *)cfg + k->off);
}

static size_t *
config_size(struct config *cfg, const struct config_key *k)
{
	return (size_t *)((char *)cfg + k->off);
}

/* The row of a full key name ("mysql.host"), or NULL. */
static const struct config_key *
config_find(const char *name)
{
	size_t i;

	for (i = 0; i < PARLEY_NITEMS(config_keys); i++) {
		if (strcmp(config_keys[i].name, name) == 0)
			return &config_keys[i];
	}
	return NULL;
}

void
config_defaults(struct config *cfg)
{
	const struct config_key *k;
	size_t i;

	memset(cfg, 0, sizeof *cfg);
	for (i = 0; i < PARLEY_NITEMS(config_keys); i++) {
		k = &config_keys[i];
		if (config_is_str(k))
			*config_str(cfg, k) = k->sdef != NULL ? xstrdup(k->sdef) : NULL;
		else if (k->type == CT_SIZE)
			*config_size(cfg, k) = (size_t)k->idef;
		else
			*config_int(cfg, k) = (int)k->idef;
	}
}

void
config_clear(struct config *cfg)
{
	const struct config_key *k;
	size_t i;

	if (cfg == NULL)
		return;
	for (i = 0; i < PARLEY_NITEMS(config_keys); i++) {
		k = &config_keys[i];
		if (config_is_str(k)) {
			free(*config_str(cfg, k));
			*config_str(cfg, k) = NULL;
		}
	}
	free(cfg->path);
	cfg->path = NULL;
}

/* Parse a whole decimal (or, with base 8, octal) number; no sign games, no trailing junk. */
static int
config_number(const char *s, int base, long long *out)
{
	char *end;
	long long v = 0;

	if (*s == '\0' || isspace((unsigned char)*s) || *s == '+')
		return -1;
	errno = 0;
	v = strtoll(s, &end, base);
	if (errno != 0 || *end != '\0')
		return -1;
	*out = v;
	return 0;
}

/* A byte count: digits and an optional binary suffix k, m or g (case-insensitive, "b" optional). */
static int
config_bytes(const char *s, long long *out)
{
	char buf[64], *end;
	unsigned long long v, mult = 1;
	size_t len = strlen(s);

	if (len == 0 || len >= sizeof buf || !isdigit((unsigned char)s[0]))
		return -1;
	memcpy(buf, s, len + 1);
	if (len > 1 && (buf[len - 1] == 'b' || buf[len - 1] == 'B') &&
	    !isdigit((unsigned char)buf[len - 2]))
		buf[--len] = '\0';
	switch (buf[len - 1]) {
	case 'k': case 'K':
		mult = 1024ULL;
		break;
	case 'm': case 'M':
		mult = 1024ULL * 1024;
		break;
	case 'g': case 'G':
		mult = 1024ULL * 1024 * 1024;
		break;
	}
	if (mult != 1)
		buf[--len] = '\0';
	if (len == 0)
		return -1;
	errno = 0;
	v = strtoull(buf, &end, 10);
	if (errno != 0 || *end != '\0' || v > (unsigned long long)LLONG_MAX / mult)
		return -1;
	*out = (long long)(v * mult);
	return 0;
}

/* 1 for a yes word, 0 for a no word (any case), -1 for anything else. */
static int
config_bool(const char *s)
{
	static const char *yes[] = { "yes", "true", "on", "1" };
	static const char *no[] = { "no", "false", "off", "0" };
	size_t i;

	for (i = 0; i < PARLEY_NITEMS(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0)
			return 1;
		if (strcasecmp(s, no[i]) == 0)
			return 0;
	}
	return -1;
}

/*
 * A listen address: a UNIX socket path, or host:port naming one host. libfcgi binds ":port" to
 * every interface, and whoever reaches the socket can crash the process (a libfcgi bug), so a
 * missing host, "*" and the wildcard addresses are refused: name the interface.
 */
static int
config_listen(const char *value, char **why)
{
	static const char *const any[] = { "", "*", "0.0.0.0", "::", "[::]" };
	const char *colon = strrchr(value, ':');
	long long port;
	size_t i, hlen;

	if (value[0] == '/')
		return 0;
	if (colon == NULL || config_number(colon + 1, 10, &port) != 0 || port < 1 ||
	    port > 65535) {
		xasprintf(why, "\"%s\" is neither a UNIX socket path (/...) nor host:port", value);
		return -1;
	}
	hlen = (size_t)(colon - value);
	for (i = 0; i < PARLEY_NITEMS(any); i++) {
		if (strlen(any[i]) == hlen && strncmp(value, any[i], hlen) == 0) {
			xasprintf(why, "\"%s\" would listen on every interface: name the host "
			    "(e.g. 127.0.0.1:%lld)", value, port);
			return -1;
		}
	}
	return 0;
}

/* Validate and store one value; *why is a reason without the key (caller frees). */
static int
config_apply(struct config *cfg, const struct config_key *k, const char *value, char **why)
{
	long long v = 0;
	char **sp;
	int b;

	switch (k->type) {
	case CT_STR:
	case CT_STR_NONEMPTY:
	case CT_STR_OPT:
	case CT_LISTEN:
		if ((k->type == CT_STR_NONEMPTY || k->type == CT_LISTEN) && *value == '\0') {
			*why = xstrdup("must not be empty");
			return -1;
		}
		if (k->type == CT_LISTEN && config_listen(value, why) < 0)
			return -1;
		sp = config_str(cfg, k);
		free(*sp);
		*sp = (k->type == CT_STR_OPT && *value == '\0') ? NULL : xstrdup(value);
		return 0;
	case CT_INT:
		if (config_number(value, 10, &v) != 0) {
			xasprintf(why, "\"%s\" is not an integer (expected %lld..%lld)", value,
			    k->min, k->max);
			return -1;
		}
		break;
	case CT_SIZE:
		if (config_bytes(value, &v) != 0) {
			xasprintf(why, "\"%s\" is not a size (bytes, or a number with k, m or g)",
			    value);
			return -1;
		}
		break;
	case CT_MODE:
		if (value[0] < '0' || value[0] > '7' || config_number(value, 8, &v) != 0) {
			xasprintf(why, "\"%s\" is not an octal mode (e.g. 0660)", value);
			return -1;
		}
		if (v < k->min || v > k->max) {
			xasprintf(why, "\"%s\" is out of range (%04llo..%04llo)", value, k->min,
			    k->max);
			return -1;
		}
		/* libfcgi aborts on some malformed records: never let every local user reach it. */
		if (v & 0002) {
			xasprintf(why, "\"%s\" would make the socket world-writable", value);
			return -1;
		}
		*config_int(cfg, k) = (int)v;
		return 0;
	case CT_BOOL:
	case CT_LEVEL:
		/* A word from a fixed list, stored as what the list maps it to. */
		b = k->type == CT_BOOL ? config_bool(value) : log_level_parse(value);
		if (b < 0) {
			xasprintf(why, "\"%s\" is not %s", value, k->type == CT_BOOL ?
			    "a boolean (yes/no, true/false, on/off, 1/0)" :
			    "a log level (debug, info, warn, error)");
			return -1;
		}
		*config_int(cfg, k) = b;
		return 0;
	}
	if (v < k->min || v > k->max) {
		xasprintf(why, "\"%s\" is out of range (%lld..%lld)", value, k->min, k->max);
		return -1;
	}
	if (k->type == CT_SIZE)
		*config_size(cfg, k) = (size_t)v;
	else
		*config_int(cfg, k) = (int)v;
	return 0;
}

int
config_set(struct config *cfg, const char *key, const char *value, char **cause)
{
	const struct config_key *k;
	char *why = NULL;

	if ((k = config_find(key)) == NULL) {
		xasprintf(cause, "%s: unknown key", key);
		errno = EINVAL;
		return -1;
	}
	if (config_apply(cfg, k, value, &why) != 0) {
		xasprintf(cause, "%s: %s", key, why);
		free(why);
		errno = EINVAL;
		return -1;
	}
	return 0;
}

/*
 * The cross-field rules: 0, or -1 with *key the key at fault, *other the key of the rule's other
 * side (or NULL) and *why the reason (caller frees).
 */
static int
config_check(const struct config *cfg, const char **key, const char **other, char **why)
{
	*other = NULL;
	if (cfg->jwt_secret == NULL || *cfg->jwt_secret == '\0') {
		*key = "auth.jwt_secret";
		xasprintf(why, "required (at least %d bytes)", CONFIG_SECRET_MIN);
		return -1;
	}
	if (strlen(cfg->jwt_secret) < CONFIG_SECRET_MIN) {
		*key = "auth.jwt_secret";
		xasprintf(why, "too short (%zu bytes, at least %d)", strlen(cfg->jwt_secret),
		    CONFIG_SECRET_MIN);
		return -1;
	}
	/* The pings are what keep a quiet but healthy connection from hitting the idle timeout. */
	if (cfg->ws_ping_interval >= cfg->ws_idle_timeout) {
		*key = "ws.ping_interval";
		*other = "ws.idle_timeout";
		xasprintf(why, "must be less than ws.idle_timeout (%d)", cfg->ws_idle_timeout);
		return -1;
	}
	/* A host id names presence rows and the bridge's origin: plain, and short enough for both. */
	if (cfg->bus_node_id != NULL && (strlen(cfg->bus_node_id) > BUS_HOST_ID_MAX ||
	    strspn(cfg->bus_node_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
	    strlen(cfg->bus_node_id))) {
		*key = "bus.node_id";
		xasprintf(why, "at most %d characters of A-Z a-z 0-9 . _ -", BUS_HOST_ID_MAX);
		return -1;
	}
	/* AUTH needs a password; a user alone would silently connect as the default user. */
	if (cfg->redis_user != NULL && cfg->redis_password == NULL) {
		*key = "redis.user";
		*other = "redis.password";
		xasprintf(why, "needs redis.password (AUTH user password)");
		return -1;
	}
	/* Channel names are PREFIX:r:ROOM in a fixed buffer: a longer prefix would cut them. */
	if (cfg->redis_prefix != NULL && strlen(cfg->redis_prefix) > CONFIG_REDIS_PREFIX_MAX) {
		*key = "redis.prefix";
		xasprintf(why, "too long (%zu bytes, at most %d)", strlen(cfg->redis_prefix),
		    CONFIG_REDIS_PREFIX_MAX);
		return -1;
	}
	/* The auth frame is a message too: a bigger pre-auth limit would mean nothing. */
	if (cfg->ws_max_preauth_message > cfg->ws_max_message) {
		*key = "ws.max_preauth_message";
		*other = "ws.max_message";
		xasprintf(why, "must not exceed ws.max_message (%zu)", cfg->ws_max_message);
		return -1;
	}
	return 0;
}

int
config_validate(const struct config *cfg, char **cause)
{
	const char *key, *other;
	char *why;

	if (config_check(cfg, &key, &other, &why) == 0)
		return 0;
	xasprintf(cause, "%s: %s: %s", cfg->path != NULL ? cfg->path : "configuration", key, why);
	free(why);
	errno = EINVAL;
	return -1;
}

/* Strip leading and trailing white space in place; returns the first kept character. */
static char *
config_trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* Is s one of the [sections] of the file format? */
static int
config_known_section(const char *s)
{
	size_t i;

	for (i = 0; i < PARLEY_NITEMS(config_sections); i++) {
		if (strcmp(config_sections[i], s) == 0)
			return 1;
	}
	return 0;
}

/* Handle one line of a file; *why gets "key: reason" (caller frees) on failure. */
static int
config_line(struct config *cfg, char *line, char *section, size_t sectionsz, unsigned *seen,
    unsigned lineno, char **why)
{
	const struct config_key *k;
	char *s, *eq, *key, *value, *full, *reason = NULL;
	size_t len, idx;

	s = config_trim(line);
	if (*s == '\0' || *s == '#' || *s == ';')
		return 0;
	if (*s == '[') {
		len = strlen(s);
		if (s[len - 1] != ']') {
			xasprintf(why, "%s: section header without ']'", s);
			return -1;
		}
		s[len - 1] = '\0';
		s = config_trim(s + 1);
		if (!config_known_section(s) || strlen(s) >= sectionsz) {
			xasprintf(why, "[%s]: unknown section", s);
			return -1;
		}
		strcpy(section, s);
		return 0;
	}
	if ((eq = strchr(s, '=')) == NULL) {
		xasprintf(why, "%s: missing '='", s);
		return -1;
	}
	*eq = '\0';
	key = config_trim(s);
	value = config_trim(eq + 1);
	len = strlen(value);
	if (len >= 2 && value[0] == '"' && value[len - 1] == '"') {
		value[len - 1] = '\0';
		value++;
	}
	if (*key == '\0') {
		xasprintf(why, "=%s: missing key", value);
		return -1;
	}
	/* Outside any section a key must be written in full ("mysql.host = ..."). */
	if (*section != '\0')
		xasprintf(&full, "%s.%s", section, key);
	else
		full = xstrdup(key);
	if ((k = config_find(full)) == NULL) {
		xasprintf(why, "%s: unknown key", full);
		goto fail;
	}
	idx = (size_t)(k - config_keys);
	if (seen[idx] != 0) {
		xasprintf(why, "%s: set twice (first on line %u)", full, seen[idx]);
		goto fail;
	}
	seen[idx] = lineno;
	if (config_apply(cfg, k, value, &reason) != 0) {
		xasprintf(why, "%s: %s", full, reason);
		free(reason);
		goto fail;
	}
	free(full);
	return 0;
fail:
	free(full);
	return -1;
}

int
config_load(struct config *cfg, const char *path, char **cause)
{
	unsigned seen[PARLEY_NITEMS(config_keys)] = { 0 };
	char section[32] = "", *line = NULL, *why = NULL;
	const char *key, *other;
	size_t linesz = 0;
	unsigned lineno = 0;
	ssize_t n;
	FILE *f;
	int saved;

	config_defaults(cfg);
	if (path == NULL) {
		/* Without a file there is no jwt_secret, so no configuration can work. */
		xasprintf(cause, "no configuration file (use --config PATH or set PARLEY_CONFIG)");
		config_clear(cfg);
		errno = ENOENT;
		return -1;
	}
	cfg->path = xstrdup(path);
	if ((f = fopen(path, "r")) == NULL) {
		saved = errno;
		xasprintf(cause, "%s: %s", path, strerror(saved));
		config_clear(cfg);
		errno = saved;
		return -1;
	}
	while ((n = getline(&line, &linesz, f)) != -1) {
		lineno++;
		if ((size_t)n != strlen(line)) {
			xasprintf(&why, "line contains a NUL byte");
			goto fail;
		}
		if (config_line(cfg, line, section, sizeof section, seen, lineno, &why) != 0)
			goto fail;
	}
	if (ferror(f)) {
		xasprintf(&why, "read error: %s", strerror(errno));
		goto fail;
	}
	fclose(f);
	free(line);
	if (config_check(cfg, &key, &other, &why) != 0) {
		/* Name the line that set the key at fault (else the rule's other key), if any did. */
		lineno = seen[config_find(key) - config_keys];
		if (lineno == 0 && other != NULL)
			lineno = seen[config_find(other) - config_keys];
		if (lineno != 0)
			xasprintf(cause, "%s:%u: %s: %s", path, lineno, key, why);
		else
			xasprintf(cause, "%s: %s: %s", path, key, why);
		free(why);
		config_clear(cfg);
		errno = EINVAL;
		return -1;
	}
	return 0;
fail:
	xasprintf(cause, "%s:%u: %s", path, lineno, why);
	free(why);
	free(line);
	fclose(f);
	config_clear(cfg);
	errno = EINVAL;
	return -1;
}

const char *
config_path(const char *arg)
{
	const char *env;

	if (arg != NULL && *arg != '\0')
		return arg;
	if ((env = getenv("PARLEY_CONFIG")) != NULL && *env != '\0')
		return env;
	return NULL;
}
