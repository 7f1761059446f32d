/* check_actor.c - the actor pool: order per key, parallelism across keys, overflow, retries, batching, drain. */
#include <check.h>

#include "testenv.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actor.h"
#include "log.h"
#include "parley.h"
#include "xmalloc.h"

#define NKEYS	64
#define NREC	8192

enum { K_PLAIN = 1, K_BLOCK, K_BATCH, K_REPOST };

struct tctx;

/* One test message: which key (index) and its sequence number within that key. */
struct tmsg {
	struct tctx	*t;	/* free_data has no context argument */
	int	key;
	int	seq;
	int	sleep_us;
};

/*
 * What the handlers saw. Handlers run on worker threads, so they only record; the test thread
 * asserts. violations counts anything that must never happen (two workers on one key, order).
 */
struct tctx {
	pthread_mutex_t		 m;
	pthread_cond_t		 c;
	struct actor_pool	*pool;

	int	open;			/* latch for K_BLOCK handlers */
	int	entered;		/* K_BLOCK handlers that started */
	int	inits, frees;		/* worker_init / worker_free calls */
	long	freed;			/* free_data calls */
	long	handled;		/* successful messages */
	int	violations;
	int	last_seq[NKEYS];
	int	inflight[NKEYS];
	int	maxpar;			/* most keys running at once */
	int	running;

	int	fail_left[NKEYS];	/* > 0: fail this many times; -1: always */
	int	fail_errno[NKEYS];
	int64_t	attempt_ms[NKEYS][16];
	int	attempts[NKEYS];

	int	nfailed;
	int	failed_err, failed_kind, failed_seq;
	int64_t	failed_ms;

	int	batches[NREC];		/* sizes of dispatch_batch calls */
	int	nbatches;
	int	batch_fail_seq;		/* item of a batch to fail with EINVAL, or -1 */
	int	order[NREC];		/* seq of handled messages, all keys */
	int	norder;

	int	repost_rc, repost_errno;
};

static void
tctx_init(struct tctx *t)
{
	int i;

	memset(t, 0, sizeof *t);
	pthread_mutex_init(&t->m, NULL);
	pthread_cond_init(&t->c, NULL);
	for (i = 0; i < NKEYS; i++)
		t->last_seq[i] = -1;
	t->batch_fail_seq = -1;
	t->repost_rc = 1;
}

static void
tctx_open(struct tctx *t)
{
	pthread_mutex_lock(&t->m);
	t->open = 1;
	pthread_cond_broadcast(&t->c);
	pthread_mutex_unlock(&t->m);
}

/* Wait (up to ms) until *v >= want, reading it under the lock; the value seen. */
static long
tctx_wait(struct tctx *t, const long *lv, const int *iv, long want, int ms)
{
	int64_t deadline = parley_mono_ms() + ms;
	long v;

	for (;;) {
		pthread_mutex_lock(&t->m);
		v = lv != NULL ? *lv : *iv;
		pthread_mutex_unlock(&t->m);
		if (v >= want || parley_mono_ms() > deadline)
			return v;
		usleep(1000);
	}
}

static void *
w_init(void *arg)
{
	struct tctx *t = arg;

	pthread_mutex_lock(&t->m);
	t->inits++;
	pthread_mutex_unlock(&t->m);
	return t;
}

static void
w_free(void *wctx)
{
	struct tctx *t = wctx;

	pthread_mutex_lock(&t->m);
	t->frees++;
	pthread_mutex_unlock(&t->m);
}

static char *
keyname(int k)
{
	char *s;

	xasprintf(&s, "user%d", k);
	return s;
}

/* Enter a handler for key k: record the attempt, check exclusivity and order. */
static void
enter(struct tctx *t, const struct tmsg *m)
{
	pthread_mutex_lock(&t->m);
	if (++t->inflight[m->key] > 1)
		t->violations++;
	if (++t->running > t->maxpar)
		t->maxpar = t->running;
	if (m->seq <= t->last_seq[m->key])
		t->violations++;
	if (t->attempts[m->key] < 16)
		t->attempt_ms[m->key][t->attempts[m->key]] = parley_mono_ms();
	t->attempts[m->key]++;
	pthread_mutex_unlock(&t->m);
}

/* Leave a handler; ok: the message was handled. */
static void
leave(struct tctx *t, const struct tmsg *m, int ok)
{
	pthread_mutex_lock(&t->m);
	t->inflight[m->key]--;
	t->running--;
	if (ok) {
		t->last_seq[m->key] = m->seq;
		t->handled++;
		if (t->norder < NREC)
			t->order[t->norder++] = m->seq;
	}
	pthread_mutex_unlock(&t->m);
}

static int
dispatch(void *wctx, const char *key, int kind, void *data)
{
	struct tctx *t = wctx;
	struct tmsg *m = data;
	int fail = 0, err = 0;

	enter(t, m);
	if (kind == K_BLOCK) {
		pthread_mutex_lock(&t->m);
		t->entered++;
		while (!t->open)
			pthread_cond_wait(&t->c, &t->m);
		pthread_mutex_unlock(&t->m);
	}
	if (kind == K_REPOST) {
		struct tmsg *r = xcalloc(1, sizeof *r);
		int rc = actor_post(t->pool, key, K_PLAIN, ACTOR_BACKPRESSURE, r);

		pthread_mutex_lock(&t->m);
		t->repost_rc = rc;
		t->repost_errno = errno;
		pthread_mutex_unlock(&t->m);
		if (rc != 0)
			free(r);
	}
	if (m->sleep_us > 0)
		usleep((useconds_t)m->sleep_us);
	pthread_mutex_lock(&t->m);
	if (t->fail_left[m->key] != 0) {
		if (t->fail_left[m->key] > 0)
			t->fail_left[m->key]--;
		fail = 1;
		err = t->fail_errno[m->key];
	}
	pthread_mutex_unlock(&t->m);
	leave(t, m, !fail);
	if (fail) {
		errno = err;
		return -1;
	}
	return 0;
}

static int
batchable(int kind)
{
	return kind == K_BATCH;
}

static int
dispatch_batch(void *wctx, const char *key, int kind, void **data, size_t n, int *err)
{
	struct tctx *t = wctx;
	size_t i;

	pthread_mutex_lock(&t->m);
	if (t->nbatches < NREC)
		t->batches[t->nbatches++] = (int)n;
	if (kind != K_BATCH)
		t->violations++;
	pthread_mutex_unlock(&t->m);
	for (i = 0; i < n; i++) {
		struct tmsg *m = data[i];

		enter(t, m);
		err[i] = m->seq == t->batch_fail_seq ? EINVAL : 0;
		leave(t, m, err[i] == 0);
	}
	return 0;
}

static void
failed(void *wctx, const char *key, int kind, void *data, int err)
{
	struct tctx *t = wctx;
	struct tmsg *m = data;

	pthread_mutex_lock(&t->m);
	t->nfailed++;
	t->failed_err = err;
	t->failed_kind = kind;
	t->failed_seq = m->seq;
	t->failed_ms = parley_mono_ms();
	t->fail_left[m->key] = 0;	/* escalated: the key's next messages succeed */
	pthread_mutex_unlock(&t->m);
}

static void
free_data(int kind, void *data)
{
	struct tctx *t = ((struct tmsg *)data)->t;

	pthread_mutex_lock(&t->m);
	t->freed++;
	pthread_mutex_unlock(&t->m);
	free(data);
}

static const struct actor_ops ops = {
	.worker_init = w_init, .worker_free = w_free, .dispatch = dispatch,
	.batchable = batchable, .dispatch_batch = dispatch_batch,
	.failed = failed, .free_data = free_data
};

static struct actor_pool *
pool(struct tctx *t, int workers, int mailbox, int retries, int backoff, int idle, int batch)
{
	struct actor_config cfg = { workers, mailbox, retries, backoff, idle, batch };

	t->pool = actor_pool_new(&cfg, &ops, t);
	return t->pool;
}

static int
post(struct tctx *t, int key, int seq, int kind, enum actor_overflow pol, int sleep_us)
{
	struct tmsg *m = xcalloc(1, sizeof *m);
	char *k = keyname(key);
	int rc;

	m->t = t;
	m->key = key;
	m->seq = seq;
	m->sleep_us = sleep_us;
	rc = actor_post(t->pool, k, kind, pol, m);
	if (rc != 0)
		free(m);
	free(k);
	return rc;
}

/* One actor blocked in its handler does not hold up another; each key's messages stay in order. */
START_TEST(test_order_and_parallel)
{
	struct tctx t;
	struct actor_pool *p;
	struct actor_stats st;
	int i;

	tctx_init(&t);
	p = pool(&t, 2, 256, 3, 10, 60000, 1);
	ck_assert_int_eq(post(&t, 0, 0, K_BLOCK, ACTOR_BACKPRESSURE, 0), 0);
	for (i = 1; i < 50; i++)
		ck_assert_int_eq(post(&t, 0, i, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, NULL, &t.entered, 1, 3000), 1);
	for (i = 0; i < 100; i++)
		ck_assert_int_eq(post(&t, 1, i, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	/* B completes while A is still blocked. */
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 100, 5000), 100);
	pthread_mutex_lock(&t.m);
	ck_assert_int_eq(t.last_seq[1], 99);
	ck_assert_int_eq(t.last_seq[0], -1);
	pthread_mutex_unlock(&t.m);
	actor_pool_stats(p, &st);
	ck_assert_uint_eq(st.actors, 2);
	ck_assert_uint_eq(st.queued, 50);
	ck_assert_uint_eq(st.max_depth, 50);

	tctx_open(&t);
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 150, 5000), 150);
	actor_pool_free(p);
	ck_assert_int_eq(t.last_seq[0], 49);
	ck_assert_int_eq(t.violations, 0);
	ck_assert_int_eq(t.inits, 2);
	ck_assert_int_eq(t.frees, 2);
	ck_assert_int_eq(t.freed, 150);
}
END_TEST

struct poster {
	struct tctx		*t;
	int			 first, step, n;
};

static void *
poster_main(void *arg)
{
	struct poster *ps = arg;
	int k, i;

	for (i = 0; i < ps->n; i++) {
		for (k = ps->first; k < 32; k += ps->step) {
			while (post(ps->t, k, i, K_PLAIN, ACTOR_BACKPRESSURE, (i % 7) * 10) != 0) {
				ck_assert_int_eq(errno, EAGAIN);
				usleep(100);
			}
		}
	}
	return NULL;
}

/* Under load with many workers no key ever runs on two workers at once; keys do run in parallel. */
START_TEST(test_exclusive_per_key)
{
	struct poster ps[4];
	pthread_t th[4];
	struct tctx t;
	struct actor_pool *p;
	struct actor_stats st;
	int i;

	tctx_init(&t);
	p = pool(&t, 8, 16, 3, 10, 60000, 1);
	for (i = 0; i < 4; i++) {
		ps[i] = (struct poster){ &t, i, 4, 150 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, poster_main, &ps[i]), 0);
	}
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 32 * 150, 20000), 32 * 150);
	actor_pool_stats(p, &st);
	ck_assert_uint_eq(st.processed, 32 * 150);
	ck_assert_uint_eq(st.queued, 0);
	actor_pool_free(p);
	ck_assert_int_eq(t.violations, 0);
	ck_assert_int_gt(t.maxpar, 1);
	for (i = 0; i < 32; i++)
		ck_assert_int_eq(t.last_seq[i], 149);
}
END_TEST

/* A full mailbox under back-pressure refuses with EAGAIN; every accepted message is handled. */
START_TEST(test_backpressure)
{
	struct tctx t;
	struct actor_pool *p;
	struct actor_stats st;
	int i, accepted = 0;

	tctx_init(&t);
	p = pool(&t, 1, 4, 3, 10, 60000, 1);
	ck_assert_int_eq(post(&t, 0, 0, K_BLOCK, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, NULL, &t.entered, 1, 3000), 1);
	accepted = 1;
	for (i = 1; i < 10; i++) {
		if (post(&t, 0, i, K_PLAIN, ACTOR_BACKPRESSURE, 0) == 0) {
			ck_assert_int_eq(i, accepted);
			accepted++;
		} else {
			ck_assert_int_eq(errno, EAGAIN);
		}
	}
	ck_assert_int_eq(accepted, 4);
	/* Drop-oldest cannot make room from back-pressure messages: refused as well. */
	ck_assert_int_eq(post(&t, 0, 99, K_PLAIN, ACTOR_DROP_OLDEST, 0), -1);
	ck_assert_int_eq(errno, EAGAIN);
	/* Another key is not affected by this one's full mailbox. */
	ck_assert_int_eq(post(&t, 1, 0, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	actor_pool_stats(p, &st);
	ck_assert_uint_eq(st.rejected, 7);
	ck_assert_uint_eq(st.queued, 5);
	ck_assert_uint_eq(st.max_depth, 4);

	tctx_open(&t);
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 5, 5000), 5);
	actor_pool_free(p);
	ck_assert_int_eq(t.last_seq[0], 3);
	ck_assert_int_eq(t.violations, 0);
	ck_assert_int_eq(t.freed, 5);
}
END_TEST

/* Drop-oldest keeps the newest messages; dropped ones are freed and counted. */
START_TEST(test_drop_oldest)
{
	struct tctx t;
	struct actor_pool *p;
	struct actor_stats st;
	int i;

	tctx_init(&t);
	p = pool(&t, 1, 4, 3, 10, 60000, 1);
	ck_assert_int_eq(post(&t, 0, 0, K_BLOCK, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, NULL, &t.entered, 1, 3000), 1);
	ck_assert_int_eq(post(&t, 0, 1, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	for (i = 2; i <= 12; i++)
		ck_assert_int_eq(post(&t, 0, i, K_PLAIN, ACTOR_DROP_OLDEST, 0), 0);
	actor_pool_stats(p, &st);
	ck_assert_uint_eq(st.dropped, 9);
	ck_assert_uint_eq(st.queued, 4);
	pthread_mutex_lock(&t.m);
	ck_assert_int_eq(t.freed, 9);
	pthread_mutex_unlock(&t.m);

	tctx_open(&t);
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 4, 5000), 4);
	actor_pool_free(p);
	/* The in-flight one, the back-pressure one, then the newest two. */
	ck_assert_int_eq(t.norder, 4);
	ck_assert_int_eq(t.order[0], 0);
	ck_assert_int_eq(t.order[1], 1);
	ck_assert_int_eq(t.order[2], 11);
	ck_assert_int_eq(t.order[3], 12);
	ck_assert_int_eq(t.freed, 13);
	ck_assert_int_eq(t.violations, 0);
}
END_TEST

/* EAGAIN from a handler is retried with doubling backoff, then escalated; other actors carry on. */
START_TEST(test_retry_then_escalate)
{
	struct tctx t;
	struct actor_pool *p;
	struct actor_stats st;
	int64_t gap;
	int i;

	tctx_init(&t);
	t.fail_left[0] = -1;
	t.fail_errno[0] = EAGAIN;
	p = pool(&t, 1, 64, 4, 40, 60000, 1);
	ck_assert_int_eq(post(&t, 0, 0, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(post(&t, 0, 1, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	/* With one worker, key 1 still runs while key 0 waits out its backoff. */
	ck_assert_int_eq(tctx_wait(&t, NULL, &t.attempts[0], 1, 3000), 1);
	for (i = 0; i < 20; i++)
		ck_assert_int_eq(post(&t, 1, i, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 20, 3000), 20);
	pthread_mutex_lock(&t.m);
	ck_assert_int_eq(t.nfailed, 0);
	ck_assert_int_lt(t.attempts[0], 4);
	pthread_mutex_unlock(&t.m);

	/* 4 attempts: gaps of 40, 80, 160 ms; then failed() with EAGAIN. */
	ck_assert_int_eq(tctx_wait(&t, NULL, &t.nfailed, 1, 5000), 1);
	pthread_mutex_lock(&t.m);
	ck_assert_int_ge(t.attempts[0], 4);
	ck_assert_int_eq(t.failed_err, EAGAIN);
	ck_assert_int_eq(t.failed_seq, 0);
	ck_assert_int_eq(t.failed_kind, K_PLAIN);
	for (i = 1; i < 4; i++) {
		gap = t.attempt_ms[0][i] - t.attempt_ms[0][i - 1];
		ck_assert_msg(gap >= (40 << (i - 1)) - 2 && gap < (40 << (i - 1)) + 400,
		    "retry %d after %lld ms", i, (long long)gap);
	}
	ck_assert_int_ge(t.failed_ms - t.attempt_ms[0][3], 0);
	pthread_mutex_unlock(&t.m);
	/* Order is kept: the second message only ran after the first was escalated. */
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 21, 3000), 21);
	actor_pool_stats(p, &st);
	ck_assert_uint_eq(st.restarted, 3);
	ck_assert_uint_eq(st.failed, 1);
	ck_assert_uint_eq(st.processed, 21);
	actor_pool_free(p);
	ck_assert_int_eq(t.attempts[0], 5);
	ck_assert_int_eq(t.last_seq[0], 1);
	ck_assert_int_eq(t.violations, 0);
	ck_assert_int_eq(t.freed, 22);
}
END_TEST

/* A transient failure that clears is retried to success; a permanent error is escalated at once. */
START_TEST(test_retry_success_and_permanent)
{
	struct tctx t;
	struct actor_pool *p;
	struct actor_stats st;

	tctx_init(&t);
	t.fail_left[0] = 2;
	t.fail_errno[0] = EAGAIN;
	t.fail_left[1] = 1;
	t.fail_errno[1] = EACCES;
	p = pool(&t, 2, 64, 5, 10, 60000, 1);
	ck_assert_int_eq(post(&t, 0, 0, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(post(&t, 0, 1, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(post(&t, 1, 0, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(post(&t, 1, 1, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 3, 3000), 3);
	actor_pool_stats(p, &st);
	ck_assert_uint_eq(st.restarted, 2);
	ck_assert_uint_eq(st.failed, 1);
	ck_assert_uint_eq(st.processed, 3);
	actor_pool_free(p);
	ck_assert_int_eq(t.nfailed, 1);
	ck_assert_int_eq(t.failed_err, EACCES);
	ck_assert_int_eq(t.attempts[0], 4);
	ck_assert_int_eq(t.attempts[1], 2);
	ck_assert_int_eq(t.last_seq[0], 1);
	ck_assert_int_eq(t.last_seq[1], 1);
	ck_assert_int_eq(t.freed, 4);
}
END_TEST

/* Idle actors are freed after idle_ms; a busy one is kept; a reclaimed key comes back. */
START_TEST(test_idle_reclaim)
{
	struct tctx t;
	struct actor_pool *p;
	struct actor_stats st;
	int64_t deadline;
	int i, n = 0;

	/*
	 * Idle after 400 ms; key 0 gets a message every 20 ms, so only a 20-fold stall of this
	 * thread could make it look idle: the test waits for conditions, not for fixed times, and
	 * holds on a loaded machine.
	 */
	tctx_init(&t);
	p = pool(&t, 2, 64, 3, 10, 400, 1);
	for (i = 0; i < 10; i++)
		ck_assert_int_eq(post(&t, i, 0, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 10, 3000), 10);
	actor_pool_stats(p, &st);
	ck_assert_uint_eq(st.actors, 10);
	ck_assert_uint_eq(st.reclaimed, 0);
	/* Keep key 0 busy while the others go idle and are reclaimed. */
	deadline = parley_mono_ms() + 10000;
	do {
		usleep(20000);
		ck_assert_int_eq(post(&t, 0, ++n, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
		actor_pool_stats(p, &st);
	} while (st.reclaimed < 9 && parley_mono_ms() < deadline);
	ck_assert_uint_eq(st.reclaimed, 9);
	ck_assert_uint_eq(st.actors, 1);
	/* Then key 0 goes idle too. */
	deadline = parley_mono_ms() + 10000;
	do {
		usleep(20000);
		actor_pool_stats(p, &st);
	} while (st.reclaimed < 10 && parley_mono_ms() < deadline);
	ck_assert_uint_eq(st.reclaimed, 10);
	ck_assert_uint_eq(st.actors, 0);
	/* A reclaimed key comes back as a new actor. */
	ck_assert_int_eq(post(&t, 3, 1, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 11 + n, 3000), 11 + n);
	actor_pool_free(p);
	ck_assert_int_eq(t.violations, 0);
}
END_TEST

/* Consecutive batchable messages of one kind are handed over together, up to config.batch. */
START_TEST(test_batching)
{
	struct tctx t;
	struct actor_pool *p;
	struct actor_stats st;
	int i, seq = 1;

	tctx_init(&t);
	t.batch_fail_seq = 5;
	p = pool(&t, 1, 256, 3, 10, 60000, 8);
	ck_assert_int_eq(post(&t, 0, 0, K_BLOCK, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, NULL, &t.entered, 1, 3000), 1);
	for (i = 0; i < 20; i++)
		ck_assert_int_eq(post(&t, 0, seq++, K_BATCH, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(post(&t, 0, seq++, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	for (i = 0; i < 3; i++)
		ck_assert_int_eq(post(&t, 0, seq++, K_BATCH, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(post(&t, 0, seq++, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(post(&t, 0, seq++, K_BATCH, ACTOR_BACKPRESSURE, 0), 0);
	tctx_open(&t);
	/* 27 messages; item 5 of the first batch fails on its own. */
	ck_assert_int_eq(tctx_wait(&t, &t.handled, NULL, 26, 3000), 26);
	actor_pool_stats(p, &st);
	actor_pool_free(p);
	ck_assert_int_eq(t.nbatches, 4);
	ck_assert_int_eq(t.batches[0], 8);
	ck_assert_int_eq(t.batches[1], 8);
	ck_assert_int_eq(t.batches[2], 4);
	ck_assert_int_eq(t.batches[3], 3);
	ck_assert_int_eq(t.nfailed, 1);
	ck_assert_int_eq(t.failed_seq, 5);
	ck_assert_int_eq(t.failed_err, EINVAL);
	ck_assert_uint_eq(st.processed, 26);
	ck_assert_uint_eq(st.failed, 1);
	for (i = 1; i < t.norder; i++)
		ck_assert_int_lt(t.order[i - 1], t.order[i]);
	ck_assert_int_eq(t.violations, 0);
	ck_assert_int_eq(t.freed, 27);
}
END_TEST

static void *
free_main(void *arg)
{
	actor_pool_free(arg);
	return NULL;
}

/* actor_pool_free handles everything already posted, refuses new posts, then stops the workers. */
START_TEST(test_free_drains)
{
	struct tctx t;
	struct actor_pool *p;
	pthread_t th;
	int i, k;

	tctx_init(&t);
	p = pool(&t, 2, 256, 3, 10, 60000, 1);
	ck_assert_int_eq(post(&t, 40, 0, K_BLOCK, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(post(&t, 40, 1, K_REPOST, ACTOR_BACKPRESSURE, 0), 0);
	for (k = 0; k < 20; k++) {
		for (i = 0; i < 50; i++)
			ck_assert_int_eq(post(&t, k, i, K_PLAIN, ACTOR_BACKPRESSURE, 100), 0);
	}
	ck_assert_int_eq(tctx_wait(&t, NULL, &t.entered, 1, 3000), 1);
	ck_assert_int_eq(pthread_create(&th, NULL, free_main, p), 0);
	usleep(100000);
	tctx_open(&t);
	pthread_join(th, NULL);
	ck_assert_int_eq(t.handled, 1002);
	ck_assert_int_eq(t.freed, 1002);
	ck_assert_int_eq(t.repost_rc, -1);
	ck_assert_int_eq(t.repost_errno, ESHUTDOWN);
	ck_assert_int_eq(t.inits, 2);
	ck_assert_int_eq(t.frees, 2);
	for (k = 0; k < 20; k++)
		ck_assert_int_eq(t.last_seq[k], 49);
	ck_assert_int_eq(t.violations, 0);
	actor_pool_free(NULL);
}
END_TEST

/* A long queue on one actor does not starve the others (it yields after a quantum). */
START_TEST(test_fairness)
{
	struct tctx t;
	struct actor_pool *p;
	int i;
	int64_t t0;

	tctx_init(&t);
	p = pool(&t, 1, 1000, 3, 10, 60000, 1);
	ck_assert_int_eq(post(&t, 0, 0, K_BLOCK, ACTOR_BACKPRESSURE, 0), 0);
	ck_assert_int_eq(tctx_wait(&t, NULL, &t.entered, 1, 3000), 1);
	for (i = 1; i < 1000; i++)
		ck_assert_int_eq(post(&t, 0, i, K_PLAIN, ACTOR_BACKPRESSURE, 1000), 0);
	ck_assert_int_eq(post(&t, 1, 0, K_PLAIN, ACTOR_BACKPRESSURE, 0), 0);
	t0 = parley_mono_ms();
	tctx_open(&t);
	/* Key 1 runs after at most a quantum of key 0 (~32 ms), not after all 1000 (~1 s+). */
	for (;;) {
		pthread_mutex_lock(&t.m);
		i = t.last_seq[1];
		pthread_mutex_unlock(&t.m);
		if (i == 0 || parley_mono_ms() - t0 > 5000)
			break;
		usleep(1000);
	}
	ck_assert_int_eq(i, 0);
	pthread_mutex_lock(&t.m);
	ck_assert_int_lt(t.last_seq[0], 500);
	pthread_mutex_unlock(&t.m);
	actor_pool_free(p);
	ck_assert_int_eq(t.handled, 1001);
	ck_assert_int_eq(t.violations, 0);
}
END_TEST

static Suite *
actor_suite(void)
{
	Suite *s = suite_create("actor");
	TCase *tc = tcase_create("actor");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_order_and_parallel);
	tcase_add_test(tc, test_exclusive_per_key);
	tcase_add_test(tc, test_backpressure);
	tcase_add_test(tc, test_drop_oldest);
	tcase_add_test(tc, test_retry_then_escalate);
	tcase_add_test(tc, test_retry_success_and_permanent);
	tcase_add_test(tc, test_idle_reclaim);
	tcase_add_test(tc, test_batching);
	tcase_add_test(tc, test_free_drains);
	tcase_add_test(tc, test_fairness);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	log_init("check_actor", LOG_LEVEL_ERROR, 0);
	return testenv_run(actor_suite());
}
