/* bench_store.c - durable 1:1 sends per second into the MySQL store, side by side with plain MariaDB. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mysql.h>

#include "config.h"
#include "log.h"
#include "parley.h"
#include "store.h"
#include "xmalloc.h"

/*
 * Usage: bench_store [-c CONFIG] [-n MESSAGES] [-b BATCH] [-t THREADS]
 * Runs three scenarios against the configured MySQL (run it under tests/harness/with-services,
 * whose mariadbd has innodb_flush_log_at_trx_commit=1, so every COMMIT is an fsync):
 *   single   one thread, one transaction per message (store_send)
 *   batched  one thread, BATCH messages per transaction (store_send_batch)
 *   parallel THREADS threads, each its own connection, BATCH per transaction
 * Every message goes from a per-thread sender to one of 16 recipients, so each send appends to two
 * logs. Latency is per call: a message's latency in a batch is its batch's.
 *
 * Then the peer, "raw": the same numbers of messages written with plain libmysqlclient prepared
 * INSERTs into a minimal table of its own (bench_raw: one row per message, no logs, no cursors,
 * no idempotency key), one INSERT + COMMIT per message and BATCH INSERTs per COMMIT. That is the
 * floor MariaDB gives for durable rows at one fsync per COMMIT; the ratio lines say how far
 * Parley's store is above it.
 */

#define RECIPIENTS 16
#define CONTENT "The quick brown fox jumps over the lazy dog"

struct bench_run {
	const struct config	*cfg;
	const char		*prefix;
	int			 id;
	int			 n;		/* messages */
	int			 batch;		/* 1: store_send */
	double			*lat;		/* ms per call */
	int			 ncalls;
	int			 failures;
};

/* Monotonic time in ms with microsecond resolution (parley_mono_ms is whole ms). */
static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static int
dbl_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void *
bench_thread(void *arg)
{
	struct bench_run *r = arg;
	struct store *s = store_new(r->cfg);
	struct store_send_req *reqs = xcalloc((size_t)r->batch, sizeof *reqs);
	struct store_send_res *res = xcalloc((size_t)r->batch, sizeof *res);
	int *err = xcalloc((size_t)r->batch, sizeof *err);
	char from[PARLEY_ID_MAX + 1], (*to)[PARLEY_ID_MAX + 1], (*cmid)[PARLEY_ID_MAX + 1];
	int i, j, k, sent = 0;
	double t0;

	to = xcalloc(RECIPIENTS, sizeof *to);
	cmid = xcalloc((size_t)r->batch, sizeof *cmid);
	snprintf(from, sizeof from, "%s-s%d", r->prefix, r->id);
	for (i = 0; i < RECIPIENTS; i++)
		snprintf(to[i], sizeof to[i], "%s-r%d", r->prefix, i);
	r->lat = xcalloc((size_t)r->n / (size_t)r->batch + 1, sizeof *r->lat);
	if (store_ping(s) != 0) {
		fprintf(stderr, "bench_store: MySQL unreachable\n");
		exit(1);
	}
	while (sent < r->n) {
		k = r->n - sent < r->batch ? r->n - sent : r->batch;
		for (j = 0; j < k; j++) {
			snprintf(cmid[j], sizeof cmid[j], "m%d", sent + j);
			reqs[j] = (struct store_send_req){ from, to[(sent + j) % RECIPIENTS], 0,
			    CONTENT, cmid[j] };
		}
		t0 = now_ms();
		if (r->batch == 1) {
			if (store_send(s, &reqs[0], &res[0]) != 0)
				r->failures++;
		} else if (store_send_batch(s, reqs, (size_t)k, res, err) != 0)
			r->failures += k;
		else {
			for (j = 0; j < k; j++)
				r->failures += err[j] != 0;
		}
		r->lat[r->ncalls++] = now_ms() - t0;
		for (j = 0; j < k; j++)
			store_send_res_clear(&res[j]);
		sent += k;
	}
	store_free(s);
	free(reqs);
	free(res);
	free(err);
	free(to);
	free(cmid);
	return NULL;
}

/* Print one scenario's figures (sorts lat); returns its messages per second, -1 if any failed. */
static double
report(const char *name, int threads, int batch, int msgs, double secs, double *lat, size_t nlat,
    int failures)
{
	double rate = (double)msgs / secs;

	qsort(lat, nlat, sizeof *lat, dbl_cmp);
	printf("%-10s threads=%-2d batch=%-3d messages=%-6d %8.0f msgs/s  call p50=%.2f ms p99=%.2f ms"
	    "  failures=%d\n", name, threads, batch, msgs, rate, nlat > 0 ? lat[nlat / 2] : 0.0,
	    nlat > 0 ? lat[(size_t)((double)nlat * 0.99)] : 0.0, failures);
	fflush(stdout);
	return failures > 0 ? -1.0 : rate;
}

/* Run one scenario and print its figures; returns as report() does. */
static double
scenario(const struct config *cfg, const char *name, int threads, int n, int batch)
{
	struct bench_run *runs = xcalloc((size_t)threads, sizeof *runs);
	pthread_t *th = xcalloc((size_t)threads, sizeof *th);
	char prefix[40];
	double *all, secs, t0, rate;
	int i, j, total = 0, failures = 0;

	snprintf(prefix, sizeof prefix, "b%ld-%s", (long)getpid(), name);
	t0 = now_ms();
	for (i = 0; i < threads; i++) {
		runs[i] = (struct bench_run){ .cfg = cfg, .prefix = prefix, .id = i, .n = n,
		    .batch = batch };
		if (pthread_create(&th[i], NULL, bench_thread, &runs[i]) != 0)
			fatal("pthread_create");
	}
	for (i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	secs = (now_ms() - t0) / 1000.0;
	for (i = 0; i < threads; i++)
		total += runs[i].ncalls;
	all = xcalloc((size_t)total, sizeof *all);
	for (i = 0, total = 0; i < threads; i++) {
		for (j = 0; j < runs[i].ncalls; j++)
			all[total++] = runs[i].lat[j];
		failures += runs[i].failures;
		free(runs[i].lat);
	}
	rate = report(name, threads, batch, n * threads, secs, all, (size_t)total, failures);
	free(all);
	free(runs);
	free(th);
	return rate;
}

/* A plain connection with the settings the store uses; autocommit off. Exits if unreachable. */
static MYSQL *
raw_connect(const struct config *c)
{
	unsigned int ct = (unsigned int)c->mysql_connect_timeout;
	unsigned int rw = (unsigned int)c->mysql_rw_timeout;
	MYSQL *my;

	if ((my = mysql_init(NULL)) == NULL)
		fatal("mysql_init: out of memory");
	mysql_options(my, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
	mysql_options(my, MYSQL_OPT_READ_TIMEOUT, &rw);
	mysql_options(my, MYSQL_OPT_WRITE_TIMEOUT, &rw);
	mysql_options(my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
	if (mysql_real_connect(my, c->mysql_socket != NULL ? NULL : c->mysql_host, c->mysql_user,
	    c->mysql_password, c->mysql_database, c->mysql_socket != NULL ? 0 : c->mysql_port,
	    c->mysql_socket, 0) == NULL)
		fatal("bench_store: raw: cannot connect: %s", mysql_error(my));
	if (mysql_query(my, "CREATE TABLE IF NOT EXISTS bench_raw (id BIGINT AUTO_INCREMENT "
	    "PRIMARY KEY, sender VARCHAR(64), recipient VARCHAR(64), content TEXT, ts BIGINT) "
	    "ENGINE=InnoDB") != 0)
		fatal("bench_store: raw: create table: %s", mysql_error(my));
	if (mysql_autocommit(my, 0) != 0)
		fatal("bench_store: raw: autocommit: %s", mysql_error(my));
	return my;
}

/*
 * The peer: n messages as prepared INSERTs into bench_raw, batch per COMMIT (1: one each), from
 * one thread and connection. Prints the figures and returns as scenario() does.
 */
static double
raw_scenario(const struct config *cfg, const char *name, int n, int batch)
{
	static const char sql[] =
	    "INSERT INTO bench_raw (sender, recipient, content, ts) VALUES (?, ?, ?, ?)";
	char from[PARLEY_ID_MAX + 1], to[PARLEY_ID_MAX + 1], content[] = CONTENT;
	unsigned long len[3];
	MYSQL_BIND bind[4];
	MYSQL_STMT *st;
	MYSQL *my = raw_connect(cfg);
	double *lat = xcalloc((size_t)n / (size_t)batch + 1, sizeof *lat), secs, t0, start, rate;
	long long ts;
	int j, k, sent = 0, failures = 0, bad;
	size_t ncalls = 0;

	if ((st = mysql_stmt_init(my)) == NULL ||
	    mysql_stmt_prepare(st, sql, (unsigned long)strlen(sql)) != 0)
		fatal("bench_store: raw: prepare: %s", mysql_error(my));
	snprintf(from, sizeof from, "b%ld-%s-s0", (long)getpid(), name);
	bind[0] = (MYSQL_BIND){ .buffer_type = MYSQL_TYPE_STRING, .buffer = from,
	    .buffer_length = sizeof from, .length = &len[0] };
	bind[1] = (MYSQL_BIND){ .buffer_type = MYSQL_TYPE_STRING, .buffer = to,
	    .buffer_length = sizeof to, .length = &len[1] };
	bind[2] = (MYSQL_BIND){ .buffer_type = MYSQL_TYPE_STRING, .buffer = content,
	    .buffer_length = sizeof content, .length = &len[2] };
	bind[3] = (MYSQL_BIND){ .buffer_type = MYSQL_TYPE_LONGLONG, .buffer = &ts };
	if (mysql_stmt_bind_param(st, bind) != 0)
		fatal("bench_store: raw: bind: %s", mysql_stmt_error(st));
	len[0] = (unsigned long)strlen(from);
	len[2] = (unsigned long)strlen(content);
	start = now_ms();
	while (sent < n) {
		k = n - sent < batch ? n - sent : batch;
		t0 = now_ms();
		for (j = 0, bad = 0; j < k && !bad; j++) {
			snprintf(to, sizeof to, "b%ld-%s-r%d", (long)getpid(), name,
			    (sent + j) % RECIPIENTS);
			len[1] = (unsigned long)strlen(to);
			ts = (long long)parley_now_ms();
			bad = mysql_stmt_execute(st) != 0;
		}
		if (bad || mysql_commit(my) != 0) {
			(void)mysql_rollback(my);
			failures += k;
		}
		lat[ncalls++] = now_ms() - t0;
		sent += k;
	}
	secs = (now_ms() - start) / 1000.0;
	mysql_stmt_close(st);
	mysql_close(my);
	rate = report(name, 1, batch, n, secs, lat, ncalls, failures);
	free(lat);
	return rate;
}

/* A ratio of two rates; none when either run had failures. */
static void
ratio(const char *what, double parley, double raw)
{
	if (parley < 0 || raw <= 0)
		printf("ratio parley/raw %s: n/a (failures)\n", what);
	else
		printf("ratio parley/raw %s: %.2f (msgs/s; below 1: Parley is slower)\n", what,
		    parley / raw);
}

int
main(int argc, char **argv)
{
	const char *arg = NULL, *path;
	struct config cfg;
	char *cause = NULL;
	double single, batched, raw_single, raw_batched;
	int ch, n = 2000, batch = 64, threads = 4;

	log_init("bench_store", LOG_LEVEL_WARN, 0);
	while ((ch = getopt(argc, argv, "c:n:b:t:")) != -1) {
		switch (ch) {
		case 'c':
			arg = optarg;
			break;
		case 'n':
			n = atoi(optarg);
			break;
		case 'b':
			batch = atoi(optarg);
			break;
		case 't':
			threads = atoi(optarg);
			break;
		default:
			fprintf(stderr, "usage: bench_store [-c CONFIG] [-n MESSAGES] [-b BATCH] "
			    "[-t THREADS]\n");
			return 2;
		}
	}
	if (n < 1 || batch < 1 || threads < 1)
		fatal("-n, -b and -t must be positive");
	if ((path = config_path(arg)) == NULL)
		fatal("no configuration: -c FILE or PARLEY_CONFIG");
	if (config_load(&cfg, path, &cause) != 0)
		fatal("%s", cause);
	single = scenario(&cfg, "single", 1, n / 4 > 0 ? n / 4 : 1, 1);
	batched = scenario(&cfg, "batched", 1, n * 2, batch);
	scenario(&cfg, "parallel", threads, n, batch);
	raw_single = raw_scenario(&cfg, "raw-single", n / 4 > 0 ? n / 4 : 1, 1);
	raw_batched = raw_scenario(&cfg, "raw-batch", n * 2, batch);
	ratio("single ", single, raw_single);
	ratio("batched", batched, raw_batched);
	config_clear(&cfg);
	mysql_library_end();
	return 0;
}
