/* parleyctl.c - operator tool: schema migrations, retention, tokens, configuration checks, daemon stats. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mysql.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "protocol.h"
#include "scrape.h"
#include "store.h"
#include "xmalloc.h"

#ifndef PARLEY_SCHEMA_DIR
#define PARLEY_SCHEMA_DIR "/usr/local/share/parley/schema"
#endif

/* The longest migration file we read (they are small hand-written DDL). */
#define CTL_SQL_MAX (4 * 1024 * 1024)

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: parleyctl [--config FILE] COMMAND [ARGS]\n"
	    "\n"
	    "commands:\n"
	    "  migrate [--schema-dir DIR]       apply the schema/NNN_*.sql files not yet applied\n"
	    "                                   (default DIR: %s, else ./schema)\n"
	    "  prune [--now MS] [--verbose]     delete events and messages older than [retention]\n"
	    "                                   says, in short batches (safe while the daemons serve)\n"
	    "  token USER [--ttl S] [--device ID]\n"
	    "                                   print a signed access token for USER\n"
	    "  stats [--fcgi ADDR] [--ws HOST:PORT] [--interval S] [--all]\n"
	    "                                   both daemons' metrics in short, with rates over S\n"
	    "                                   seconds (default 1; 0: totals only); --all adds\n"
	    "                                   every metric\n"
	    "  check-config                     read and validate the configuration, print\n"
	    "                                   \"FILE: ok\" or the first error (exit 1)\n"
	    "\n"
	    "options:\n"
	    "  -c, --config FILE   configuration file (default: $PARLEY_CONFIG)\n"
	    "  -V, --version       print the version and exit\n"
	    "  -h, --help          this text\n"
	    "See parleyctl(1) and parley.conf(5).\n", PARLEY_SCHEMA_DIR);
}

/* The exit status for --help (0, text on stdout) or a usage error (2, text on stderr). */
static int
usage_status(int help)
{
	usage(help ? stdout : stderr);
	return help ? 0 : 2;
}

/* Load the configuration named by --config or $PARLEY_CONFIG; exits on failure. */
static void
ctl_config(struct config *cfg, const char *arg)
{
	const char *path = config_path(arg);
	char *cause = NULL;

	if (path == NULL)
		fatal("no configuration: use --config FILE or set PARLEY_CONFIG");
	if (config_load(cfg, path, &cause) != 0)
		fatal("%s", cause);
	if (config_validate(cfg, &cause) != 0)
		fatal("%s", cause);
}

/* --- migrate ------------------------------------------------------------------------------- */

/* Connect for administration: multi-statement SQL is allowed here (admin input, never users'). */
static MYSQL *
ctl_connect(const struct config *c)
{
	unsigned int ct = (unsigned int)c->mysql_connect_timeout;
	unsigned int rw = (unsigned int)c->mysql_rw_timeout * 6;
	MYSQL *my;

	if ((my = mysql_init(NULL)) == NULL)
		fatal("mysql_init: out of memory");
	mysql_options(my, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
	mysql_options(my, MYSQL_OPT_READ_TIMEOUT, &rw);
	mysql_options(my, MYSQL_OPT_WRITE_TIMEOUT, &rw);
	mysql_options(my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
	if (mysql_real_connect(my, c->mysql_socket != NULL ? NULL : c->mysql_host, c->mysql_user,
	    c->mysql_password, c->mysql_database, c->mysql_socket != NULL ? 0 : c->mysql_port,
	    c->mysql_socket, CLIENT_MULTI_STATEMENTS) == NULL)
		fatal("mysql: cannot connect: %s", mysql_error(my));
	return my;
}

/* Run SQL text (maybe several statements) and drain every result; 0 or -1 (error printed). */
static int
ctl_exec(MYSQL *my, const char *sql, size_t len, const char *what)
{
	MYSQL_RES *res;
	int rc;

	if (mysql_real_query(my, sql, len) != 0)
		goto fail;
	do {
		if ((res = mysql_store_result(my)) != NULL)
			mysql_free_result(res);
		else if (mysql_field_count(my) != 0)
			goto fail;
		if ((rc = mysql_next_result(my)) > 0)
			goto fail;
	} while (rc == 0);
	return 0;
fail:
	log_error("%s: error %u: %s", what, mysql_errno(my), mysql_error(my));
	return -1;
}

/* A migration file name: three digits, '_', anything, ".sql". Returns its version or -1. */
static int
ctl_version(const char *name)
{
	size_t n = strlen(name);

	if (n < 9 || name[0] < '0' || name[0] > '9' || name[1] < '0' || name[1] > '9' ||
	    name[2] < '0' || name[2] > '9' || name[3] != '_' || strcmp(name + n - 4, ".sql") != 0)
		return -1;
	return (name[0] - '0') * 100 + (name[1] - '0') * 10 + (name[2] - '0');
}

/* qsort order of migration file names (their NNN prefix sorts them by version). */
static int
ctl_name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Is version v recorded in schema_version? 1 yes, 0 no, -1 error. */
static int
ctl_applied(MYSQL *my, int v)
{
	MYSQL_RES *res;
	char sql[128];
	int found;

	snprintf(sql, sizeof sql, "SELECT 1 FROM schema_version WHERE version = %d", v);
	if (mysql_real_query(my, sql, strlen(sql)) != 0 || (res = mysql_store_result(my)) == NULL) {
		log_error("schema_version: %s", mysql_error(my));
		return -1;
	}
	found = mysql_num_rows(res) > 0;
	mysql_free_result(res);
	return found;
}

/* The whole of a migration file, NUL-terminated; *len its size. Exits when it cannot be read. */
static char *
ctl_read_file(const char *path, size_t *len)
{
	struct stat st;
	FILE *f;
	char *buf;

	if ((f = fopen(path, "r")) == NULL)
		fatal("%s: %s", path, strerror(errno));
	if (fstat(fileno(f), &st) != 0 || st.st_size > CTL_SQL_MAX)
		fatal("%s: unreadable or too large", path);
	buf = xmalloc((size_t)st.st_size + 1);
	*len = fread(buf, 1, (size_t)st.st_size, f);
	if (ferror(f))
		fatal("%s: read error", path);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/*
 * Apply, in name order, every NNN_*.sql in dir whose NNN is not yet in schema_version. A named
 * lock keeps two migrators from interleaving; each file is recorded after it ran completely
 * (DDL is not transactional, so the files themselves are written to be re-runnable).
 */
static int
ctl_migrate(const struct config *cfg, const char *dir)
{
	static const char create[] = "CREATE TABLE IF NOT EXISTS schema_version ("
	    " version INT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL,"
	    " applied_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)"
	    " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
	static const char lock[] = "SELECT GET_LOCK('parley_migrate', 60)";
	char **names = NULL, *path, *sql, *rec, *esc;
	size_t n = 0, i, len;
	struct dirent *de;
	MYSQL *my;
	DIR *d;
	int v, rc = -1, applied = 0, r;

	if ((d = opendir(dir)) == NULL)
		fatal("schema directory %s: %s", dir, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		if (ctl_version(de->d_name) < 0)
			continue;
		names = xreallocarray(names, n + 1, sizeof *names);
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (n == 0)
		fatal("no NNN_*.sql files in %s", dir);
	qsort(names, n, sizeof *names, ctl_name_cmp);
	for (i = 1; i < n; i++) {
		if (ctl_version(names[i]) == ctl_version(names[i - 1]))
			fatal("%s and %s have the same version", names[i - 1], names[i]);
	}

	my = ctl_connect(cfg);
	if (ctl_exec(my, create, strlen(create), "schema_version") != 0 ||
	    ctl_exec(my, lock, strlen(lock), "lock") != 0)
		goto out;
	for (i = 0; i < n; i++) {
		v = ctl_version(names[i]);
		if ((r = ctl_applied(my, v)) < 0)
			goto out;
		if (r == 1)
			continue;
		xasprintf(&path, "%s/%s", dir, names[i]);
		sql = ctl_read_file(path, &len);
		r = ctl_exec(my, sql, len, path);
		free(sql);
		free(path);
		if (r != 0)
			goto out;
		esc = xmalloc(strlen(names[i]) * 2 + 1);
		mysql_real_escape_string(my, esc, names[i], strlen(names[i]));
		xasprintf(&rec, "INSERT INTO schema_version (version, name) VALUES (%d, '%s')", v, esc);
		r = ctl_exec(my, rec, strlen(rec), "schema_version");
		free(rec);
		free(esc);
		if (r != 0)
			goto out;
		printf("applied %s\n", names[i]);
		applied++;
	}
	if (applied == 0)
		printf("schema up to date\n");
	rc = 0;
out:
	mysql_close(my);
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

/* parleyctl migrate [--schema-dir DIR]: exit status 0 applied or up to date, 1 failed. */
static int
cmd_migrate(const char *config_arg, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "schema-dir", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct config cfg;
	const char *dir = NULL;
	struct stat st;
	int ch, rc;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "+d:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'd':
			dir = optarg;
			break;
		case 'h':
		default:
			return usage_status(ch == 'h');
		}
	}
	if (optind != argc)
		return usage_status(0);
	if (dir == NULL)
		dir = stat(PARLEY_SCHEMA_DIR, &st) == 0 ? PARLEY_SCHEMA_DIR : "schema";
	ctl_config(&cfg, config_arg);
	if (mysql_library_init(0, NULL, NULL) != 0)
		fatal("mysql_library_init failed");
	rc = ctl_migrate(&cfg, dir);
	mysql_library_end();
	config_clear(&cfg);
	return rc == 0 ? 0 : 1;
}

/* --- check-config ------------------------------------------------------------------------ */

/* parleyctl check-config: the same load and validation the daemons do at start-up, nothing else. */
static int
cmd_check_config(const char *config_arg, int argc, char **argv)
{
	const char *path = config_path(config_arg);
	struct config cfg;
	char *cause = NULL;

	if (argc > 1 && strcmp(argv[1], "--help") == 0)
		return usage_status(1);
	if (argc != 1)
		return usage_status(0);
	if (path == NULL) {
		log_error("no configuration: use --config FILE or set PARLEY_CONFIG");
		return 1;
	}
	if (config_load(&cfg, path, &cause) != 0)
		goto fail;	/* config_load freed cfg */
	if (config_validate(&cfg, &cause) != 0) {
		config_clear(&cfg);
		goto fail;
	}
	printf("%s: ok\n", path);
	config_clear(&cfg);
	return 0;
fail:
	fprintf(stderr, "parleyctl: %s\n", cause);
	free(cause);
	return 1;
}

/* --- stats ------------------------------------------------------------------------------- */

/* How long one scrape may take. */
#define CTL_SCRAPE_MS	3000

/* The summary: rows of figures, each a label and a metric (its name after parley_fcgi_/_ws_). */
#define CTL_FCGI	1
#define CTL_WS		2
struct ctl_figure {
	const char	*row;
	const char	*label;
	const char	*metric;
	int		 who;	/* CTL_FCGI, CTL_WS: the daemons it is about */
};
static const struct ctl_figure ctl_figures[] = {
	{ "requests", "answered", "http_requests_total", CTL_FCGI },
	{ "requests", "errors", "http_errors_total", CTL_FCGI },
	{ "connections", "open", "ws_connections", CTL_WS },
	{ "connections", "closed slow", "ws_slow_closed_total", CTL_WS },
	{ "connections", "closed idle", "ws_idle_closed_total", CTL_WS },
	{ "messages", "sent", "messages_sent_total", CTL_FCGI | CTL_WS },
	{ "messages", "duplicates", "messages_duplicate_total", CTL_FCGI | CTL_WS },
	{ "long polls", "parked", "polls_parked", CTL_FCGI },
	{ "long polls", "woken", "polls_woken_total", CTL_FCGI },
	{ "long polls", "timed out", "polls_timed_out_total", CTL_FCGI },
	{ "long polls", "gone", "polls_gone_total", CTL_FCGI },
	{ "mailboxes", "actors", "actor_actors", CTL_FCGI | CTL_WS },
	{ "mailboxes", "queued", "actor_queued", CTL_FCGI | CTL_WS },
	{ "mailboxes", "rejected", "actor_rejected_total", CTL_FCGI | CTL_WS },
	{ "mailboxes", "failed", "actor_failed_total", CTL_FCGI | CTL_WS },
	{ "bus", "peers", "bus_peers", CTL_FCGI | CTL_WS },
	{ "bus", "hints in", "bus_hints_received_total", CTL_FCGI | CTL_WS },
	{ "bus", "dropped", "bus_dropped_total", CTL_FCGI | CTL_WS },
	{ "bus", "lost for us", "bus_lost_total", CTL_FCGI | CTL_WS },
	{ "bus", "refused", "bus_refused_total", CTL_FCGI | CTL_WS },
	/* Only with [redis] url set (the daemons have no redis_* figures otherwise). */
	{ "redis", "connected", "redis_connected", CTL_FCGI | CTL_WS },
	{ "redis", "published", "redis_published_total", CTL_FCGI | CTL_WS },
	{ "redis", "received", "redis_received_total", CTL_FCGI | CTL_WS },
	{ "redis", "dropped", "redis_dropped_total", CTL_FCGI | CTL_WS },
	{ "redis", "reconnects", "redis_reconnects_total", CTL_FCGI | CTL_WS },
	{ "redis", "rechecks", "redis_rechecks_total", CTL_FCGI | CTL_WS },
	{ "errors", "storage", "store_errors_total", CTL_FCGI | CTL_WS },
};

/* One daemon to scrape: over FastCGI (addr) or HTTP (host, port). */
struct ctl_target {
	const char	*name;
	const char	*addr;		/* parley-fcgi: its socket */
	char		 host[256];	/* parley-ws: its own port */
	int		 port;
};

static int
ctl_scrape(const struct ctl_target *t, const char *token, struct scrape_sample *s)
{
	char *body = NULL, *cause = NULL;
	int rc;

	if (t->addr != NULL)
		rc = scrape_fcgi(t->addr, token, CTL_SCRAPE_MS, &body, &cause);
	else
		rc = scrape_http(t->host, t->port, token, CTL_SCRAPE_MS, &body, &cause);
	if (rc != 0) {
		printf("%s: unreachable (%s)\n", t->name, cause);
		free(cause);
		return -1;
	}
	scrape_parse(body, s);
	free(body);
	return 0;
}

/* Print one metric: its value, and for a counter sampled twice, its rate per second. */
static void
ctl_print_metric(const struct scrape_metric *m, const struct scrape_sample *before,
    double seconds)
{
	double was = before != NULL ? scrape_get(before, m->name) : -1;

	if (m->counter && seconds > 0 && was >= 0)
		printf("  %-44s %14.0f  %10.1f/s\n", m->name, m->value, (m->value - was) / seconds);
	else
		printf("  %-44s %14.0f\n", m->name, m->value);
}

/* The metric prefix+suffix of s, or NULL. */
static const struct scrape_metric *
ctl_find(const struct scrape_sample *s, const char *prefix, const char *suffix)
{
	size_t i, plen = strlen(prefix);

	for (i = 0; i < s->n; i++)
		if (strncmp(s->v[i].name, prefix, plen) == 0 && strcmp(s->v[i].name + plen, suffix) == 0)
			return &s->v[i];
	return NULL;
}

/*
 * Print t's summary, a row per kind of figure ("messages  sent 120 (4.0/s), duplicates 0"); a
 * counter gets its rate when there is an earlier sample. Figures of the other daemon's kind
 * (each daemon renders the whole table) are left out while zero. all: every metric, raw.
 */
static void
ctl_print(const struct ctl_target *t, const struct scrape_sample *now,
    const struct scrape_sample *before, int interval, int all)
{
	const char *prefix = t->addr != NULL ? "parley_fcgi_" : "parley_ws_", *row = NULL;
	const struct scrape_metric *m, *was;
	size_t i;

	if (t->addr != NULL)
		printf("%s (%s): up\n", t->name, t->addr);
	else
		printf("%s (%s:%d): up\n", t->name, t->host, t->port);
	for (i = 0; i < PARLEY_NITEMS(ctl_figures); i++) {
		if ((m = ctl_find(now, prefix, ctl_figures[i].metric)) == NULL)
			continue;
		if (m->value == 0 && !(ctl_figures[i].who & (t->addr != NULL ? CTL_FCGI : CTL_WS)))
			continue;
		if (row == NULL || strcmp(row, ctl_figures[i].row) != 0)
			printf("%s  %-12s", row != NULL ? "\n" : "", ctl_figures[i].row);
		else
			printf(",");
		printf(" %s %.0f", ctl_figures[i].label, m->value);
		was = before != NULL ? ctl_find(before, prefix, ctl_figures[i].metric) : NULL;
		if (m->counter && was != NULL && interval > 0)
			printf(" (%.1f/s)", (m->value - was->value) / interval);
		row = ctl_figures[i].row;
	}
	printf("\n");
	if (all)
		for (i = 0; i < now->n; i++)
			ctl_print_metric(&now->v[i], before, interval);
}

/*
 * parleyctl stats: both daemons' /metrics in short. parley-fcgi is asked over its own FastCGI
 * socket (no web server needed), parley-ws on its own port; both with a token minted here, so
 * the answer is the same whether or not the daemon asks for one.
 */
static int
cmd_stats(const char *config_arg, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "fcgi", required_argument, NULL, 'f' },
		{ "ws", required_argument, NULL, 'w' },
		{ "interval", required_argument, NULL, 'i' },
		{ "all", no_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct ctl_target fcgi = { .name = "parley-fcgi" }, ws = { .name = "parley-ws" };
	struct scrape_sample a[2] = { { 0 } }, b[2] = { { 0 } };
	const char *fcgi_arg = NULL, *ws_arg = NULL, *colon;
	struct config cfg;
	uint64_t interval = 1;
	char *tok;
	int ch, i, up[2], all = 0;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "f:w:i:ah", opts, NULL)) != -1) {
		switch (ch) {
		case 'a':
			all = 1;
			break;
		case 'f':
			fcgi_arg = optarg;
			break;
		case 'w':
			ws_arg = optarg;
			break;
		case 'i':
			if (protocol_parse_u64(optarg, 0, 60, &interval) != 0) {
				log_error("--interval: expected seconds, 0..60");
				return 2;
			}
			break;
		case 'h':
		default:
			return usage_status(ch == 'h');
		}
	}
	if (optind != argc)
		return usage_status(0);
	ctl_config(&cfg, config_arg);
	fcgi.addr = fcgi_arg != NULL ? fcgi_arg : cfg.fcgi_listen;
	if (ws_arg != NULL && (colon = strrchr(ws_arg, ':')) != NULL &&
	    (size_t)(colon - ws_arg) < sizeof ws.host) {
		memcpy(ws.host, ws_arg, (size_t)(colon - ws_arg));
		ws.port = atoi(colon + 1);
	} else if (ws_arg != NULL) {
		log_error("--ws: expected HOST:PORT");
		config_clear(&cfg);
		return 2;
	} else {
		snprintf(ws.host, sizeof ws.host, "%s", cfg.ws_listen);
		ws.port = cfg.ws_port;
	}
	if ((tok = auth_mint(cfg.jwt_secret, "parleyctl", NULL, parley_now_ms() / 1000, 300)) == NULL)
		fatal("cannot mint a token: %s", strerror(errno));
	/* Both first, then both again: one interval for the pair. */
	up[0] = ctl_scrape(&fcgi, tok, &a[0]) == 0;
	up[1] = ctl_scrape(&ws, tok, &a[1]) == 0;
	if (interval > 0 && (up[0] || up[1])) {
		sleep((unsigned)interval);
		up[0] = up[0] && ctl_scrape(&fcgi, tok, &b[0]) == 0;
		up[1] = up[1] && ctl_scrape(&ws, tok, &b[1]) == 0;
	}
	for (i = 0; i < 2; i++) {
		if (!up[i])
			continue;
		if (interval > 0)
			ctl_print(i == 0 ? &fcgi : &ws, &b[i], &a[i], (int)interval, all);
		else
			ctl_print(i == 0 ? &fcgi : &ws, &a[i], NULL, 0, all);
		scrape_clear(&a[i]);
		scrape_clear(&b[i]);
	}
	free(tok);
	config_clear(&cfg);
	return up[0] && up[1] ? 0 : 1;
}

/* --- prune --------------------------------------------------------------------------------- */

/* The cut-off time of a retention in days, as of now_ms; 0 (keep forever) for 0 days. */
static int64_t
ctl_cutoff(int64_t now_ms, int days)
{
	return days > 0 ? now_ms - (int64_t)days * 86400000 : 0;
}

/*
 * parleyctl prune [--now MS] [--verbose]: apply retention.events_days and retention.messages_days.
 * --now takes another "now" (ms since the epoch): a test or a catch-up run can prune as of that
 * time. --verbose adds the batch transactions' count, the longest one and the longest time a
 * user_seq row (what a send locks) was held.
 * Exit status 0 done (also when retention keeps everything), 1 failed (MySQL).
 */
static int
cmd_prune(const char *config_arg, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "now", required_argument, NULL, 'n' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct store_prune_res res = { 0 };
	int verbose = 0;
	struct config cfg;
	struct store *s;
	int64_t now = parley_now_ms();
	uint64_t v;
	int ch, rc;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "+n:vh", opts, NULL)) != -1) {
		switch (ch) {
		case 'n':
			if (protocol_parse_u64(optarg, 1, (uint64_t)INT64_MAX, &v) != 0) {
				log_error("--now: expected milliseconds since the epoch");
				return 2;
			}
			now = (int64_t)v;
			break;
		case 'v':
			verbose = 1;
			break;
		case 'h':
		default:
			return usage_status(ch == 'h');
		}
	}
	if (optind != argc)
		return usage_status(0);
	ctl_config(&cfg, config_arg);
	if (cfg.retention_events_days == 0 && cfg.retention_messages_days == 0) {
		printf("retention keeps everything (retention.events_days and messages_days are 0)\n");
		config_clear(&cfg);
		return 0;
	}
	s = store_new(&cfg);
	rc = store_prune(s, ctl_cutoff(now, cfg.retention_events_days),
	    ctl_cutoff(now, cfg.retention_messages_days), cfg.retention_batch,
	    cfg.retention_pause_ms, &res);
	if (rc != 0)
		log_error("prune: %s", strerror(errno));
	printf("pruned %llu events in %llu logs, %llu messages\n", (unsigned long long)res.events,
	    (unsigned long long)res.logs, (unsigned long long)res.messages);
	if (verbose)
		printf("%llu transactions of at most %d rows; longest transaction %.1f ms;"
		    " user_seq rows locked at most %.1f ms (%.1f ms before COMMIT);"
		    " %llu logs put off (a send held the row)\n",
		    (unsigned long long)res.txns, cfg.retention_batch,
		    (double)res.txn_max_us / 1000, (double)res.lock_max_us / 1000,
		    (double)res.lock_stmt_max_us / 1000, (unsigned long long)res.busy);
	store_free(s);
	config_clear(&cfg);
	return rc == 0 ? 0 : 1;
}

/* --- token --------------------------------------------------------------------------------- */

/* parleyctl token USER [--ttl S] [--device ID]: print a token signed with auth.jwt_secret. */
static int
cmd_token(const char *config_arg, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "ttl", required_argument, NULL, 't' },
		{ "device", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	const char *user = NULL, *device = NULL;
	struct config cfg;
	uint64_t ttl = 0;
	int ch, have_ttl = 0;
	char *tok;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "t:d:h", opts, NULL)) != -1) {
		switch (ch) {
		case 't':
			if (protocol_parse_u64(optarg, 1, 315360000, &ttl) != 0) {
				log_error("--ttl: expected seconds, 1..315360000");
				return 2;
			}
			have_ttl = 1;
			break;
		case 'd':
			device = optarg;
			break;
		case 'h':
		default:
			return usage_status(ch == 'h');
		}
	}
	if (optind + 1 != argc)
		return usage_status(0);
	user = argv[optind];
	if (!protocol_valid_user(user)) {
		log_error("invalid user id: 1-64 bytes of [A-Za-z0-9_.@+-]");
		return 2;
	}
	if (device != NULL && !protocol_valid_id(device)) {
		log_error("invalid device id: 1-64 printable bytes");
		return 2;
	}
	ctl_config(&cfg, config_arg);
	tok = auth_mint(cfg.jwt_secret, user, device, parley_now_ms() / 1000,
	    have_ttl ? (int)ttl : cfg.token_ttl);
	if (tok == NULL)
		fatal("cannot mint a token: %s", strerror(errno));
	printf("%s\n", tok);
	free(tok);
	config_clear(&cfg);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	const char *config_arg = NULL, *cmd;
	int ch;

	log_init("parleyctl", LOG_LEVEL_INFO, 0);
	/* "+": stop at the command; its own options are parsed by the command. */
	while ((ch = getopt_long(argc, argv, "+c:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			config_arg = optarg;
			break;
		case 'V':
			printf("parleyctl %s\n", PARLEY_VERSION);
			return 0;
		case 'h':
		default:
			return usage_status(ch == 'h');
		}
	}
	if (optind >= argc)
		return usage_status(0);
	cmd = argv[optind];
	argc -= optind;
	argv += optind;
	if (strcmp(cmd, "migrate") == 0)
		return cmd_migrate(config_arg, argc, argv);
	if (strcmp(cmd, "token") == 0)
		return cmd_token(config_arg, argc, argv);
	if (strcmp(cmd, "stats") == 0)
		return cmd_stats(config_arg, argc, argv);
	if (strcmp(cmd, "check-config") == 0)
		return cmd_check_config(config_arg, argc, argv);
	if (strcmp(cmd, "prune") == 0)
		return cmd_prune(config_arg, argc, argv);
	if (strcmp(cmd, "help") == 0)
		return usage_status(1);
	log_error("unknown command %s", cmd);
	return usage_status(0);
}
