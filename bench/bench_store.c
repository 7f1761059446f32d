/* bench_store.c - durable 1:1 sends per second into the MySQL store: one at a time and group-committed. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
 */

#define RECIPIENTS 16

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
			    "The quick brown fox jumps over the lazy dog", cmid[j] };
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

/* Run one scenario and print its figures. */
static void
scenario(const struct config *cfg, const char *name, int threads, int n, int batch)
{
	struct bench_run *runs = xcalloc((size_t)threads, sizeof *runs);
	pthread_t *th = xcalloc((size_t)threads, sizeof *th);
	char prefix[40];
	double *all, secs, t0;
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
	qsort(all, (size_t)total, sizeof *all, dbl_cmp);
	printf("%-9s threads=%-2d batch=%-3d messages=%-6d %8.0f msgs/s  call p50=%.2f ms p99=%.2f ms"
	    "  failures=%d\n", name, threads, batch, n * threads, (double)n * threads / secs,
	    all[total / 2], all[(size_t)((double)total * 0.99)], failures);
	fflush(stdout);
	free(all);
	free(runs);
	free(th);
}

int
main(int argc, char **argv)
{
	const char *arg = NULL, *path;
	struct config cfg;
	char *cause = NULL;
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
	scenario(&cfg, "single", 1, n / 4 > 0 ? n / 4 : 1, 1);
	scenario(&cfg, "batched", 1, n * 2, batch);
	scenario(&cfg, "parallel", threads, n, batch);
	config_clear(&cfg);
	return 0;
}
