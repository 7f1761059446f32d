/* check_config.c - the configuration file: defaults, every value type, errors naming file, line and key. */
#include <check.h>

#include "testenv.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "parley.h"
#include "xmalloc.h"

#define SECRET "0123456789abcdef0123456789abcdef"	/* exactly 32 bytes */

static char tmpdir[] = "/tmp/check_config.XXXXXX";
static unsigned nfiles;

/* Write text to a new file in the test's directory; caller frees the path. */
static char *
write_conf(const char *text)
{
	char *path;
	FILE *f;

	xasprintf(&path, "%s/c%u.conf", tmpdir, nfiles++);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fwrite(text, 1, strlen(text), f), strlen(text));
	fclose(f);
	return path;
}

static void
setup(void)
{
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void
teardown(void)
{
	char *cmd;

	xasprintf(&cmd, "rm -rf '%s'", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
	free(cmd);
	strcpy(tmpdir, "/tmp/check_config.XXXXXX");
}

START_TEST(test_defaults)
{
	struct config c;

	config_defaults(&c);
	ck_assert_ptr_null(c.mysql_socket);
	ck_assert_str_eq(c.mysql_host, "127.0.0.1");
	ck_assert_int_eq(c.mysql_port, 3306);
	ck_assert_str_eq(c.mysql_user, "parley");
	ck_assert_str_eq(c.mysql_password, "");
	ck_assert_str_eq(c.mysql_database, "parley");
	ck_assert_int_eq(c.mysql_connect_timeout, 2);
	ck_assert_int_eq(c.mysql_rw_timeout, 10);
	ck_assert_int_eq(c.mysql_lock_wait_timeout, 5);
	ck_assert_str_eq(c.memcached_servers, "127.0.0.1:11211");
	ck_assert_int_eq(c.memcached_timeout_ms, 100);
	ck_assert_int_eq(c.memcached_ttl, 300);
	ck_assert_ptr_null(c.jwt_secret);
	ck_assert_int_eq(c.jwt_leeway, 30);
	ck_assert_int_eq(c.token_ttl, 3600);
	ck_assert_str_eq(c.bus_dir, "/run/parley/bus");
	ck_assert_uint_eq(c.body_max, 65536);
	ck_assert_int_eq(c.content_max_chars, 4000);
	ck_assert_int_eq(c.room_text_max_chars, 500);
	ck_assert_int_eq(c.room_rate_per_sec, 10);
	ck_assert_int_eq(c.room_history, 200);
	ck_assert_int_eq(c.poll_timeout_max, 60);
	ck_assert_int_eq(c.page_max, 500);
	ck_assert_int_eq(c.history_max, 200);
	ck_assert_int_eq(c.retention_events_days, 0);
	ck_assert_int_eq(c.retention_messages_days, 0);
	ck_assert_int_eq(c.retention_batch, 1000);
	ck_assert_int_eq(c.retention_pause_ms, 10);
	ck_assert_int_eq(c.actor_workers, 4);
	ck_assert_int_eq(c.actor_mailbox, 256);
	ck_assert_int_eq(c.actor_retries, 5);
	ck_assert_int_eq(c.actor_backoff_ms, 50);
	ck_assert_int_eq(c.actor_idle_ms, 30000);
	ck_assert_str_eq(c.fcgi_listen, "/run/parley/fcgi.sock");
	ck_assert_int_eq(c.fcgi_socket_mode, 0660);
	ck_assert_int_eq(c.fcgi_threads, 4);
	ck_assert_int_eq(c.fcgi_max_parked, 10000);
	ck_assert_int_eq(c.fcgi_max_parked_per_user, 16);
	ck_assert_str_eq(c.ws_listen, "127.0.0.1");
	ck_assert_int_eq(c.ws_port, 8081);
	ck_assert_int_eq(c.ws_max_connections, 10000);
	ck_assert_uint_eq(c.ws_max_message, 65536);
	ck_assert_uint_eq(c.ws_queue_bytes, 262144);
	ck_assert_int_eq(c.ws_queue_frames, 1024);
	ck_assert_int_eq(c.ws_send_window_us, 0);
	ck_assert_int_eq(c.ws_ping_interval, 20);
	ck_assert_int_eq(c.ws_idle_timeout, 60);
	ck_assert_int_eq(c.ws_auth_timeout, 10);
	ck_assert_str_eq(c.ws_origins, "");
	ck_assert_int_eq(c.log_level, LOG_LEVEL_INFO);
	ck_assert_int_eq(c.log_syslog, 0);
	config_clear(&c);
	ck_assert_ptr_null(c.mysql_host);
	config_clear(&c);	/* twice is harmless */
}
END_TEST

/* A minimal file keeps every default and fills path. */
START_TEST(test_minimal_file)
{
	struct config c;
	char *path, *cause = NULL;

	path = write_conf("[auth]\njwt_secret = " SECRET "\n");
	ck_assert_int_eq(config_load(&c, path, &cause), 0);
	ck_assert_ptr_null(cause);
	ck_assert_str_eq(c.jwt_secret, SECRET);
	ck_assert_str_eq(c.path, path);
	ck_assert_int_eq(c.mysql_port, 3306);
	ck_assert_uint_eq(c.body_max, 65536);
	ck_assert_int_eq(c.log_level, LOG_LEVEL_INFO);
	config_clear(&c);
	free(path);
}
END_TEST

/* Every key set, with every syntax the format allows. */
START_TEST(test_every_key)
{
	static const char text[] =
	    "# comment\n"
	    "; another comment\n"
	    "\n"
	    "[mysql]\n"
	    "socket = /run/mysqld/mysqld.sock\n"
	    "  host=db.example   \n"
	    "port = 3307\n"
	    "user = chat\n"
	    "password = \"  p#ss;word = x  \"\n"
	    "database = chatdb\n"
	    "connect_timeout = 5\n"
	    "rw_timeout = 30\n"
	    "[ memcached ]\n"
	    "servers = 10.0.0.1:11211,10.0.0.2:11211\n"
	    "timeout_ms = 250\n"
	    "ttl = 600\n"
	    "[auth]\n"
	    "jwt_secret = \"" SECRET "\"\n"
	    "jwt_leeway = 0\n"
	    "token_ttl = 86400\n"
	    "[bus]\n"
	    "dir = /tmp/bus\n"
	    "[limits]\n"
	    "body_max = 128k\n"
	    "content_max_chars = 1000\n"
	    "room_text_max_chars = 200\n"
	    "room_rate_per_sec = 5\n"
	    "room_history = 50\n"
	    "poll_timeout_max = 30\n"
	    "page_max = 100\n"
	    "history_max = 150\n"
	    "[retention]\n"
	    "events_days = 30\n"
	    "messages_days = 365\n"
	    "batch = 500\n"
	    "pause_ms = 0\n"
	    "[actor]\n"
	    "workers = 8\n"
	    "mailbox = 64\n"
	    "retries = 3\n"
	    "backoff_ms = 10\n"
	    "idle_ms = 1000\n"
	    "[fcgi]\n"
	    "listen = 127.0.0.1:9000\n"
	    "socket_mode = 0600\n"
	    "threads = 16\n"
	    "max_parked = 0\n"
	    "[ws]\n"
	    "listen = 0.0.0.0\n"
	    "port = 9001\n"
	    "max_connections = 50000\n"
	    "max_message = 1M\n"
	    "queue_bytes = 1048576\n"
	    "queue_frames = 64\n"
	    "send_window_us = 100000\n"
	    "ping_interval = 15\n"
	    "idle_timeout = 45\n"
	    "auth_timeout = 3\n"
	    "origins = https://a.example,https://b.example\n"
	    "[log]\n"
	    "level = DEBUG\n"
	    "syslog = yes\n";
	struct config c;
	char *path, *cause = NULL;

	path = write_conf(text);
	ck_assert_msg(config_load(&c, path, &cause) == 0, "cause: %s", cause);
	ck_assert_str_eq(c.mysql_socket, "/run/mysqld/mysqld.sock");
	ck_assert_str_eq(c.mysql_host, "db.example");
	ck_assert_int_eq(c.mysql_port, 3307);
	ck_assert_str_eq(c.mysql_user, "chat");
	ck_assert_str_eq(c.mysql_password, "  p#ss;word = x  ");
	ck_assert_str_eq(c.mysql_database, "chatdb");
	ck_assert_int_eq(c.mysql_connect_timeout, 5);
	ck_assert_int_eq(c.mysql_rw_timeout, 30);
	ck_assert_str_eq(c.memcached_servers, "10.0.0.1:11211,10.0.0.2:11211");
	ck_assert_int_eq(c.memcached_timeout_ms, 250);
	ck_assert_int_eq(c.memcached_ttl, 600);
	ck_assert_str_eq(c.jwt_secret, SECRET);
	ck_assert_int_eq(c.jwt_leeway, 0);
	ck_assert_int_eq(c.token_ttl, 86400);
	ck_assert_str_eq(c.bus_dir, "/tmp/bus");
	ck_assert_uint_eq(c.body_max, 131072);
	ck_assert_int_eq(c.content_max_chars, 1000);
	ck_assert_int_eq(c.room_text_max_chars, 200);
	ck_assert_int_eq(c.room_rate_per_sec, 5);
	ck_assert_int_eq(c.room_history, 50);
	ck_assert_int_eq(c.poll_timeout_max, 30);
	ck_assert_int_eq(c.page_max, 100);
	ck_assert_int_eq(c.history_max, 150);
	ck_assert_int_eq(c.retention_events_days, 30);
	ck_assert_int_eq(c.retention_messages_days, 365);
	ck_assert_int_eq(c.retention_batch, 500);
	ck_assert_int_eq(c.retention_pause_ms, 0);
	ck_assert_int_eq(c.actor_workers, 8);
	ck_assert_int_eq(c.actor_mailbox, 64);
	ck_assert_int_eq(c.actor_retries, 3);
	ck_assert_int_eq(c.actor_backoff_ms, 10);
	ck_assert_int_eq(c.actor_idle_ms, 1000);
	ck_assert_str_eq(c.fcgi_listen, "127.0.0.1:9000");
	ck_assert_int_eq(c.fcgi_socket_mode, 0600);
	ck_assert_int_eq(c.fcgi_threads, 16);
	ck_assert_int_eq(c.fcgi_max_parked, 0);
	ck_assert_str_eq(c.ws_listen, "0.0.0.0");
	ck_assert_int_eq(c.ws_port, 9001);
	ck_assert_int_eq(c.ws_max_connections, 50000);
	ck_assert_uint_eq(c.ws_max_message, 1048576);
	ck_assert_uint_eq(c.ws_queue_bytes, 1048576);
	ck_assert_int_eq(c.ws_queue_frames, 64);
	ck_assert_int_eq(c.ws_send_window_us, 100000);
	ck_assert_int_eq(c.ws_ping_interval, 15);
	ck_assert_int_eq(c.ws_idle_timeout, 45);
	ck_assert_int_eq(c.ws_auth_timeout, 3);
	ck_assert_str_eq(c.ws_origins, "https://a.example,https://b.example");
	ck_assert_int_eq(c.log_level, LOG_LEVEL_DEBUG);
	ck_assert_int_eq(c.log_syslog, 1);
	config_clear(&c);
	free(path);
}
END_TEST

/* Keys written in full outside a section; an empty optional string unsets it; CRLF endings. */
START_TEST(test_full_keys_and_crlf)
{
	struct config c;
	char *path, *cause = NULL;

	path = write_conf("mysql.socket =\r\nauth.jwt_secret = " SECRET "\r\n[ws]\r\nport = 1\r\n");
	ck_assert_msg(config_load(&c, path, &cause) == 0, "cause: %s", cause);
	ck_assert_ptr_null(c.mysql_socket);
	ck_assert_str_eq(c.jwt_secret, SECRET);
	ck_assert_int_eq(c.ws_port, 1);
	config_clear(&c);
	free(path);
}
END_TEST

/* One accepted value per type and form: key, value, the field's resulting value. */
static const struct {
	const char	*key;
	const char	*value;
	long long	 expect;
} good_values[] = {
	{ "mysql.port", "1", 1 },
	{ "mysql.port", "65535", 65535 },
	{ "mysql.port", "007", 7 },
	{ "mysql.lock_wait_timeout", "1", 1 },
	{ "mysql.lock_wait_timeout", "3600", 3600 },
	{ "auth.jwt_leeway", "0", 0 },
	{ "fcgi.max_parked", "0", 0 },
	{ "fcgi.max_parked_per_user", "1", 1 },
	{ "fcgi.max_parked_per_user", "1000000", 1000000 },
	{ "limits.body_max", "1024", 1024 },
	{ "limits.body_max", "1k", 1024 },
	{ "limits.body_max", "64K", 65536 },
	{ "limits.body_max", "64KB", 65536 },
	{ "limits.body_max", "2m", 2097152 },
	{ "limits.body_max", "64M", 67108864 },
	{ "ws.queue_bytes", "1g", 1073741824 },
	{ "ws.queue_bytes", "1Gb", 1073741824 },
	{ "log.syslog", "yes", 1 },
	{ "log.syslog", "YES", 1 },
	{ "log.syslog", "true", 1 },
	{ "log.syslog", "on", 1 },
	{ "log.syslog", "1", 1 },
	{ "log.syslog", "no", 0 },
	{ "log.syslog", "False", 0 },
	{ "log.syslog", "off", 0 },
	{ "log.syslog", "0", 0 },
	{ "log.level", "debug", LOG_LEVEL_DEBUG },
	{ "log.level", "info", LOG_LEVEL_INFO },
	{ "log.level", "warn", LOG_LEVEL_WARN },
	{ "log.level", "Error", LOG_LEVEL_ERROR },
	{ "fcgi.socket_mode", "0660", 0660 },
	{ "fcgi.socket_mode", "660", 0660 },
	{ "fcgi.socket_mode", "0600", 0600 },
	{ "fcgi.socket_mode", "0", 0 },
	{ "fcgi.socket_mode", "0775", 0775 },
	{ "limits.history_max", "1", 1 },
	{ "limits.history_max", "10000", 10000 },
	{ "retention.events_days", "0", 0 },
	{ "retention.events_days", "36500", 36500 },
	{ "retention.messages_days", "0", 0 },
	{ "retention.messages_days", "36500", 36500 },
	{ "retention.batch", "1", 1 },
	{ "retention.batch", "100000", 100000 },
	{ "retention.pause_ms", "0", 0 },
	{ "retention.pause_ms", "60000", 60000 },
	{ "redis.linger_ms", "100", 100 },
	{ "redis.max_age", "1", 1 },
	{ "redis.max_age", "3600", 3600 },
	{ "redis.inflight", "1", 1 },
	{ "redis.inflight", "1000000", 1000000 },
	{ "redis.recv_queue", "16", 16 },
	{ "redis.recv_queue", "10000000", 10000000 },
};

static long long
field_value(const struct config *c, const char *key)
{
	if (strcmp(key, "redis.linger_ms") == 0)
		return c->redis_linger_ms;
	if (strcmp(key, "redis.max_age") == 0)
		return c->redis_max_age;
	if (strcmp(key, "redis.inflight") == 0)
		return c->redis_inflight;
	if (strcmp(key, "redis.recv_queue") == 0)
		return c->redis_recv_queue;
	if (strcmp(key, "mysql.port") == 0)
		return c->mysql_port;
	if (strcmp(key, "auth.jwt_leeway") == 0)
		return c->jwt_leeway;
	if (strcmp(key, "mysql.lock_wait_timeout") == 0)
		return c->mysql_lock_wait_timeout;
	if (strcmp(key, "fcgi.max_parked") == 0)
		return c->fcgi_max_parked;
	if (strcmp(key, "fcgi.max_parked_per_user") == 0)
		return c->fcgi_max_parked_per_user;
	if (strcmp(key, "limits.body_max") == 0)
		return (long long)c->body_max;
	if (strcmp(key, "ws.queue_bytes") == 0)
		return (long long)c->ws_queue_bytes;
	if (strcmp(key, "log.syslog") == 0)
		return c->log_syslog;
	if (strcmp(key, "log.level") == 0)
		return c->log_level;
	if (strcmp(key, "fcgi.socket_mode") == 0)
		return c->fcgi_socket_mode;
	if (strcmp(key, "limits.history_max") == 0)
		return c->history_max;
	if (strcmp(key, "retention.events_days") == 0)
		return c->retention_events_days;
	if (strcmp(key, "retention.messages_days") == 0)
		return c->retention_messages_days;
	if (strcmp(key, "retention.batch") == 0)
		return c->retention_batch;
	if (strcmp(key, "retention.pause_ms") == 0)
		return c->retention_pause_ms;
	ck_abort_msg("no field for %s", key);
	return -1;
}

START_TEST(test_good_values)
{
	struct config c;
	char *cause = NULL;

	config_defaults(&c);
	ck_assert_msg(config_set(&c, good_values[_i].key, good_values[_i].value, &cause) == 0,
	    "%s = %s: %s", good_values[_i].key, good_values[_i].value, cause);
	ck_assert_int_eq(field_value(&c, good_values[_i].key), good_values[_i].expect);
	config_clear(&c);
}
END_TEST

/* A value each key type refuses, with a word the reason must contain. */
static const struct {
	const char	*key;
	const char	*value;
	const char	*reason;
} bad_values[] = {
	{ "mysql.port", "0", "out of range" },
	{ "mysql.port", "65536", "out of range" },
	{ "mysql.port", "-1", "out of range" },
	{ "mysql.port", "", "not an integer" },
	{ "mysql.port", "12a", "not an integer" },
	{ "mysql.port", "0x10", "not an integer" },
	{ "mysql.port", "+5", "not an integer" },
	{ "mysql.port", "1.5", "not an integer" },
	{ "mysql.port", "99999999999999999999999", "not an integer" },
	{ "mysql.connect_timeout", "0", "out of range" },
	{ "mysql.lock_wait_timeout", "0", "out of range" },
	{ "mysql.lock_wait_timeout", "3601", "out of range" },
	{ "mysql.host", "", "must not be empty" },
	{ "mysql.user", "", "must not be empty" },
	{ "bus.dir", "", "must not be empty" },
	{ "fcgi.listen", "", "must not be empty" },
	{ "auth.jwt_leeway", "-1", "out of range" },
	{ "auth.jwt_leeway", "3601", "out of range" },
	{ "limits.content_max_chars", "0", "out of range" },
	{ "limits.body_max", "100", "out of range" },
	{ "limits.body_max", "1t", "not a size" },
	{ "limits.body_max", "k", "not a size" },
	{ "limits.body_max", "-1k", "not a size" },
	{ "limits.body_max", "65g", "out of range" },
	{ "limits.body_max", "99999999999999999999g", "not a size" },
	{ "actor.workers", "0", "out of range" },
	{ "ws.port", "70000", "out of range" },
	{ "log.syslog", "maybe", "not a boolean" },
	{ "log.syslog", "", "not a boolean" },
	{ "log.syslog", "2", "not a boolean" },
	{ "log.level", "verbose", "not a log level" },
	{ "log.level", "", "not a log level" },
	{ "fcgi.socket_mode", "0666", "world-writable" },
	{ "fcgi.socket_mode", "0777", "world-writable" },
	{ "fcgi.socket_mode", "0680", "not an octal mode" },
	{ "fcgi.socket_mode", "rw", "not an octal mode" },
	{ "fcgi.socket_mode", "01660", "out of range" },
	{ "fcgi.socket_mode", "-1", "not an octal mode" },
	{ "fcgi.max_parked_per_user", "0", "out of range" },
	{ "fcgi.max_parked_per_user", "1000001", "out of range" },
	{ "fcgi.listen", ":9000", "every interface" },
	{ "fcgi.listen", "*:9000", "every interface" },
	{ "fcgi.listen", "0.0.0.0:9000", "every interface" },
	{ "fcgi.listen", "[::]:9000", "every interface" },
	{ "fcgi.listen", "localhost", "neither a UNIX socket path" },
	{ "fcgi.listen", "127.0.0.1:0", "neither a UNIX socket path" },
	{ "fcgi.listen", "127.0.0.1:65536", "neither a UNIX socket path" },
	{ "fcgi.listen", "sock", "neither a UNIX socket path" },
	{ "limits.history_max", "0", "out of range" },
	{ "limits.history_max", "10001", "out of range" },
	{ "retention.events_days", "-1", "out of range" },
	{ "retention.events_days", "36501", "out of range" },
	{ "retention.messages_days", "-1", "out of range" },
	{ "retention.messages_days", "36501", "out of range" },
	{ "retention.batch", "0", "out of range" },
	{ "retention.batch", "100001", "out of range" },
	{ "retention.pause_ms", "-1", "out of range" },
	{ "retention.pause_ms", "60001", "out of range" },
	{ "redis.linger_ms", "0", "out of range" },
	{ "redis.max_age", "0", "out of range" },
	{ "redis.max_age", "3601", "out of range" },
	{ "redis.inflight", "0", "out of range" },
	{ "redis.inflight", "1000001", "out of range" },
	{ "redis.recv_queue", "15", "out of range" },
	{ "redis.recv_queue", "10000001", "out of range" },
	{ "redis.linger_ms", "99", "out of range" },
};

START_TEST(test_bad_values_set)
{
	struct config c;
	char *cause = NULL, *prefix;

	config_defaults(&c);
	errno = 0;
	ck_assert_int_eq(config_set(&c, bad_values[_i].key, bad_values[_i].value, &cause), -1);
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_nonnull(cause);
	xasprintf(&prefix, "%s: ", bad_values[_i].key);
	ck_assert_msg(strncmp(cause, prefix, strlen(prefix)) == 0, "cause: %s", cause);
	ck_assert_msg(strstr(cause, bad_values[_i].reason) != NULL, "cause: %s", cause);
	free(prefix);
	free(cause);
	config_clear(&c);
}
END_TEST

/* The same bad values in a file: the cause is "PATH:LINE: key: reason", line counted from 1. */
START_TEST(test_bad_values_file)
{
	struct config c;
	char *text, *path, *cause = NULL, *prefix, *section, *dot;

	section = xstrdup(bad_values[_i].key);
	dot = strchr(section, '.');
	*dot = '\0';
	xasprintf(&text, "# line 1\n[auth]\njwt_secret = %s\n\n[%s]\n  %s = %s\n", SECRET, section,
	    dot + 1, bad_values[_i].value);
	path = write_conf(text);
	ck_assert_int_eq(config_load(&c, path, &cause), -1);
	xasprintf(&prefix, "%s:6: %s: ", path, bad_values[_i].key);
	ck_assert_msg(strncmp(cause, prefix, strlen(prefix)) == 0, "cause: %s", cause);
	ck_assert_msg(strstr(cause, bad_values[_i].reason) != NULL, "cause: %s", cause);
	/* A failed load leaves nothing allocated behind (ASan checks). */
	ck_assert_ptr_null(c.jwt_secret);
	ck_assert_ptr_null(c.path);
	free(prefix);
	free(cause);
	free(path);
	free(text);
	free(section);
}
END_TEST

/* Structural errors: file text, the line named (0: a whole-file rule, no line), the cause after it. */
static const struct {
	const char	*text;
	int		 line;
	const char	*cause;
} bad_files[] = {
	{ "[mysql]\nport 3306\n", 2, "port 3306: missing '='" },
	{ "[mysql]\nhost = x\nnonsense\n", 3, "nonsense: missing '='" },
	{ "[mysqld]\nport = 1\n", 1, "[mysqld]: unknown section" },
	{ "[]\n", 1, "[]: unknown section" },
	{ "[mysql\n", 1, "[mysql: section header without ']'" },
	{ "[mysql]\nprot = 1\n", 2, "mysql.prot: unknown key" },
	{ "[mysql]\nsocket = a\n[ws]\nsocket = b\n", 4, "ws.socket: unknown key" },
	{ "port = 1\n", 1, "port: unknown key" },
	{ "[mysql]\n= 1\n", 2, "=1: missing key" },
	{ "[mysql]\nport = 1\nport = 2\n", 3, "mysql.port: set twice (first on line 2)" },
	{ "[mysql]\nport = 1\n[auth]\njwt_secret = " SECRET "\n[mysql]\nport = 2\n", 6,
	    "mysql.port: set twice (first on line 2)" },
	{ "[auth]\njwt_secret = \n", 2, "auth.jwt_secret: required" },
	{ "[mysql]\nport = 1\n", 0, "auth.jwt_secret: required" },
	{ "[auth]\njwt_secret = 0123456789abcdef0123456789abcde\n", 2,
	    "auth.jwt_secret: too short (31 bytes, at least 32)" },
	{ "[auth]\njwt_secret = " SECRET "\n[ws]\nping_interval = 60\n", 4,
	    "ws.ping_interval: must be less than ws.idle_timeout" },
	{ "[auth]\njwt_secret = " SECRET "\n[ws]\nidle_timeout = 20\n", 4,
	    "ws.ping_interval: must be less than ws.idle_timeout (20)" },
	{ "[auth]\njwt_secret = " SECRET "\n[ws]\nmax_preauth_message = 65537\n", 4,
	    "ws.max_preauth_message: must not exceed ws.max_message (65536)" },
	{ "[auth]\njwt_secret = " SECRET "\n[bus]\nnode_id = a b\n", 4,
	    "bus.node_id: at most 48 characters of" },
	{ "[auth]\njwt_secret = " SECRET "\n[bus]\nnode_id = "
	    "0123456789012345678901234567890123456789012345678\n", 4,
	    "bus.node_id: at most 48 characters of" },
	{ "[auth]\njwt_secret = " SECRET "\n[redis]\nuser = parley\n", 4,
	    "redis.user: needs redis.password" },
	{ "[auth]\njwt_secret = " SECRET "\n[redis]\nprefix = "
	    "0123456789012345678901234567890123456789012345678\n", 4,
	    "redis.prefix: too long (49 bytes, at most 48)" },
	{ "[ws]\nmax_url = 32769\n", 2, "ws.max_url: " },
	{ "[ws]\nmax_per_user = 0\n", 2, "ws.max_per_user: " },
	{ "[ws]\nmax_per_ip = 0\n", 2, "ws.max_per_ip: " },
	{ "[ws]\nsend_window_us = 100001\n", 2, "ws.send_window_us: " },
	{ "[ws]\nsend_window_us = -1\n", 2, "ws.send_window_us: " },
};

START_TEST(test_bad_files)
{
	struct config c;
	char *path, *cause = NULL, *expect;

	path = write_conf(bad_files[_i].text);
	errno = 0;
	ck_assert_int_eq(config_load(&c, path, &cause), -1);
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_nonnull(cause);
	if (bad_files[_i].line > 0)
		xasprintf(&expect, "%s:%d: %s", path, bad_files[_i].line, bad_files[_i].cause);
	else
		xasprintf(&expect, "%s: %s", path, bad_files[_i].cause);
	ck_assert_msg(strncmp(cause, expect, strlen(expect)) == 0, "cause '%s' expected '%s'",
	    cause, expect);
	ck_assert_ptr_null(c.path);
	free(expect);
	free(cause);
	free(path);
}
END_TEST

START_TEST(test_missing_file)
{
	struct config c;
	char *path, *cause = NULL;

	xasprintf(&path, "%s/nope.conf", tmpdir);
	errno = 0;
	ck_assert_int_eq(config_load(&c, path, &cause), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_ptr_nonnull(strstr(cause, path));
	ck_assert_ptr_nonnull(strstr(cause, "No such file"));
	free(cause);
	free(path);
	/* No path at all (config_path() found none): a clear message, no crash. */
	ck_assert_int_eq(config_load(&c, NULL, &cause), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_ptr_nonnull(strstr(cause, "PARLEY_CONFIG"));
	free(cause);
}
END_TEST

START_TEST(test_unknown_key_set)
{
	struct config c;
	char *cause = NULL;

	config_defaults(&c);
	ck_assert_int_eq(config_set(&c, "mysql.nope", "1", &cause), -1);
	ck_assert_str_eq(cause, "mysql.nope: unknown key");
	free(cause);
	/* Field names are not keys: only "section.key" is. */
	ck_assert_int_eq(config_set(&c, "mysql_port", "1", &cause), -1);
	free(cause);
	/* Setting a string twice frees the first value (ASan). */
	ck_assert_int_eq(config_set(&c, "mysql.host", "a", &cause), 0);
	ck_assert_int_eq(config_set(&c, "mysql.host", "b", &cause), 0);
	ck_assert_str_eq(c.mysql_host, "b");
	config_clear(&c);
}
END_TEST

START_TEST(test_validate)
{
	struct config c;
	char *cause = NULL;

	config_defaults(&c);
	ck_assert_int_eq(config_validate(&c, &cause), -1);
	ck_assert_ptr_nonnull(strstr(cause, "auth.jwt_secret: required"));
	free(cause);
	ck_assert_int_eq(config_set(&c, "auth.jwt_secret", "sekrit", &cause), 0);
	ck_assert_int_eq(config_validate(&c, &cause), -1);
	ck_assert_ptr_nonnull(strstr(cause, "too short (6 bytes"));
	/* The secret itself never appears in a message. */
	ck_assert_ptr_null(strstr(cause, "sekrit"));
	free(cause);
	ck_assert_int_eq(config_set(&c, "auth.jwt_secret", SECRET, &cause), 0);
	ck_assert_int_eq(config_validate(&c, &cause), 0);
	/* redis.user with redis.password; redis.prefix of 48 bytes (49 refused in test_bad_files). */
	ck_assert_int_eq(config_set(&c, "redis.user", "parley", &cause), 0);
	ck_assert_int_eq(config_set(&c, "redis.password", "pw", &cause), 0);
	ck_assert_int_eq(config_set(&c, "redis.prefix",
	    "012345678901234567890123456789012345678901234567", &cause), 0);
	ck_assert_int_eq(config_validate(&c, &cause), 0);
	/* bus.node_id: 48 characters at most (49 refused in test_bad_files). */
	ck_assert_int_eq(config_set(&c, "bus.node_id",
	    "Az09._-45678901234567890123456789012345678901234", &cause), 0);
	ck_assert_int_eq(config_validate(&c, &cause), 0);
	config_clear(&c);
}
END_TEST

START_TEST(test_path)
{
	unsetenv("PARLEY_CONFIG");
	ck_assert_ptr_null(config_path(NULL));
	ck_assert_str_eq(config_path("/etc/a.conf"), "/etc/a.conf");
	setenv("PARLEY_CONFIG", "/etc/env.conf", 1);
	ck_assert_str_eq(config_path(NULL), "/etc/env.conf");
	ck_assert_str_eq(config_path("/etc/a.conf"), "/etc/a.conf");
	setenv("PARLEY_CONFIG", "", 1);
	ck_assert_ptr_null(config_path(NULL));
	unsetenv("PARLEY_CONFIG");
}
END_TEST

/* The harness's own file (tests/harness/services) loads: the format the whole suite relies on. */
START_TEST(test_harness_config)
{
	const char *p = getenv("PARLEY_TEST_CONFIG");
	struct config c;
	char *cause = NULL;

	ck_assert_msg(p != NULL, "run through tests/harness/with-services");
	ck_assert_msg(config_load(&c, p, &cause) == 0, "cause: %s", cause);
	ck_assert_ptr_nonnull(c.mysql_socket);
	ck_assert_int_eq(c.log_level, LOG_LEVEL_WARN);
	config_clear(&c);
}
END_TEST

/* A NUL byte inside a line is refused rather than silently truncating the value. */
START_TEST(test_nul_byte)
{
	static const char text[] = "[auth]\njwt_secret = " SECRET "\n[mysql]\nhost = a\0b\n";
	struct config c;
	char *path, *cause = NULL;
	FILE *f;

	xasprintf(&path, "%s/nul.conf", tmpdir);
	f = fopen(path, "w");
	fwrite(text, 1, sizeof text - 1, f);
	fclose(f);
	ck_assert_int_eq(config_load(&c, path, &cause), -1);
	ck_assert_ptr_nonnull(strstr(cause, ":4: "));
	free(cause);
	free(path);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("config");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_minimal_file);
	tcase_add_test(tc, test_every_key);
	tcase_add_test(tc, test_full_keys_and_crlf);
	tcase_add_loop_test(tc, test_good_values, 0, PARLEY_NITEMS(good_values));
	tcase_add_loop_test(tc, test_bad_values_set, 0, PARLEY_NITEMS(bad_values));
	tcase_add_loop_test(tc, test_bad_values_file, 0, PARLEY_NITEMS(bad_values));
	tcase_add_loop_test(tc, test_bad_files, 0, PARLEY_NITEMS(bad_files));
	tcase_add_test(tc, test_missing_file);
	tcase_add_test(tc, test_unknown_key_set);
	tcase_add_test(tc, test_validate);
	tcase_add_test(tc, test_path);
	tcase_add_test(tc, test_harness_config);
	tcase_add_test(tc, test_nul_byte);
	suite_add_tcase(s, tc);
	return testenv_run(s);
}
