/* actor.c - per-key actors with bounded mailboxes, run in order by a fixed pool of worker threads. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actor.h"
#include "log.h"
#include "parley.h"
#include "xmalloc.h"

/*
 * One mutex guards the whole pool (table, queues, mailboxes): handlers do blocking I/O that
 * costs far more than the lock, and one lock keeps the state machine simple to reason about.
 * The lock is never held while a handler, failed() or free_data() runs.
 *
 * An actor is in exactly one of these states:
 *   idle     empty mailbox, on the idle list (reclaimed after idle_ms)
 *   queued   on the run queue
 *   running  a worker owns it
 *   delayed  on the delay list until not_before (its head message is being retried)
 */
#define ACTOR_QUANTUM		32	/* messages handled before an actor yields its worker */
#define ACTOR_BACKOFF_CAP_MS	5000

enum actor_state { A_IDLE, A_QUEUED, A_RUNNING, A_DELAYED };

struct actor_msg {
	struct actor_msg	*next;
	int			 kind;
	enum actor_overflow	 policy;
	void			*data;
};

struct actor {
	char			*key;
	uint32_t		 hash;
	struct actor		*hnext;		/* hash chain */
	enum actor_state	 state;

	struct actor_msg	*head, *tail;
	size_t			 n;		/* messages, in-flight ones included */
	size_t			 inflight;	/* the first ones, handed to a handler now */

	int			 attempts;	/* failed attempts of the head message */
	int64_t			 not_before;	/* A_DELAYED: monotonic ms */
	int64_t			 idle_since;	/* A_IDLE */

	struct actor		*next, *prev;	/* run queue, delay list or idle list */
};

/* A doubly-linked list of actors (run queue FIFO; delay list by not_before; idle by idle_since). */
struct actor_list {
	struct actor	*first, *last;
};

/* A worker's own context and scratch arrays of config.batch entries. */
struct actor_worker {
	void			*wctx;
	struct actor_msg	**ms;
	void			**data;
	int			*err;
};

struct actor_pool {
	struct actor_config	 cfg;
	struct actor_ops	 ops;
	void			*arg;

	pthread_mutex_t		 lock;
	pthread_cond_t		 work;		/* an actor became runnable, a deadline moved, or closing */
	pthread_t		*threads;
	int			 nthreads;
	int			 closing;

	struct actor		**table;
	size_t			 nbuckets;	/* power of two */
	size_t			 nactors;
	size_t			 queued;	/* messages in all mailboxes */

	struct actor_list	 runq, delayed, idle;
	struct actor_stats	 st;		/* counters; gauges are computed */
};

static uint32_t
actor_hash(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static void
list_remove(struct actor_list *l, struct actor *a)
{
	if (a->prev != NULL)
		a->prev->next = a->next;
	else
		l->first = a->next;
	if (a->next != NULL)
		a->next->prev = a->prev;
	else
		l->last = a->prev;
	a->next = a->prev = NULL;
}

static void
list_append(struct actor_list *l, struct actor *a)
{
	a->next = NULL;
	a->prev = l->last;
	if (l->last != NULL)
		l->last->next = a;
	else
		l->first = a;
	l->last = a;
}

/* Insert keeping the delay list ordered by not_before (short list: retries are rare). */
static void
list_insert_delayed(struct actor_list *l, struct actor *a)
{
	struct actor *at;

	for (at = l->last; at != NULL && at->not_before > a->not_before; at = at->prev)
		;
	if (at == NULL) {
		a->prev = NULL;
		a->next = l->first;
		if (l->first != NULL)
			l->first->prev = a;
		else
			l->last = a;
		l->first = a;
		return;
	}
	a->prev = at;
	a->next = at->next;
	if (at->next != NULL)
		at->next->prev = a;
	else
		l->last = a;
	at->next = a;
}

static struct actor **
actor_slot(struct actor_pool *p, const char *key, uint32_t h)
{
	struct actor **ap;

	for (ap = &p->table[h & (p->nbuckets - 1)]; *ap != NULL; ap = &(*ap)->hnext) {
		if ((*ap)->hash == h && strcmp((*ap)->key, key) == 0)
			break;
	}
	return ap;
}

/* Double the hash table once it holds two actors per bucket; lock held. */
static void
actor_grow(struct actor_pool *p)
{
	struct actor **old = p->table, *a, *next;
	size_t i, oldn = p->nbuckets;

	p->nbuckets *= 2;
	p->table = xcalloc(p->nbuckets, sizeof *p->table);
	for (i = 0; i < oldn; i++) {
		for (a = old[i]; a != NULL; a = next) {
			next = a->hnext;
			a->hnext = p->table[a->hash & (p->nbuckets - 1)];
			p->table[a->hash & (p->nbuckets - 1)] = a;
		}
	}
	free(old);
}

/* Find or create key's actor; a new one is idle, on the idle list. */
static struct actor *
actor_get(struct actor_pool *p, const char *key)
{
	uint32_t h = actor_hash(key);
	struct actor **ap = actor_slot(p, key, h), *a;

	if (*ap != NULL)
		return *ap;
	a = xcalloc(1, sizeof *a);
	a->key = xstrdup(key);
	a->hash = h;
	a->state = A_IDLE;
	a->idle_since = parley_mono_ms();
	list_append(&p->idle, a);
	*ap = a;
	p->nactors++;
	if (p->nactors > p->nbuckets * 2)
		actor_grow(p);
	return a;
}

static void
actor_destroy(struct actor_pool *p, struct actor *a)
{
	struct actor **ap = actor_slot(p, a->key, a->hash);

	*ap = a->hnext;
	p->nactors--;
	free(a->key);
	free(a);
}

/* Make a runnable actor's state A_QUEUED; the caller wakes a worker (actor_enqueue does). */
static void
actor_queue(struct actor_pool *p, struct actor *a)
{
	a->state = A_QUEUED;
	list_append(&p->runq, a);
}

/* Make a runnable actor's state A_QUEUED and wake one worker. */
static void
actor_enqueue(struct actor_pool *p, struct actor *a)
{
	actor_queue(p, a);
	pthread_cond_signal(&p->work);
}

/* The oldest message with the drop-oldest policy that no handler holds, unlinked; or NULL. */
static struct actor_msg *
actor_take_droppable(struct actor *a)
{
	struct actor_msg *prev = NULL, *m = a->head;
	size_t i;

	for (i = 0; i < a->inflight && m != NULL; i++) {
		prev = m;
		m = m->next;
	}
	for (; m != NULL; prev = m, m = m->next) {
		if (m->policy != ACTOR_DROP_OLDEST)
			continue;
		if (prev != NULL)
			prev->next = m->next;
		else
			a->head = m->next;
		if (a->tail == m)
			a->tail = prev;
		a->n--;
		return m;
	}
	return NULL;
}

int
actor_post(struct actor_pool *p, const char *key, int kind, enum actor_overflow policy, void *data)
{
	struct actor_msg *m, *drop = NULL;
	struct actor *a;
	int wake = 0;

	pthread_mutex_lock(&p->lock);
	if (p->closing) {
		pthread_mutex_unlock(&p->lock);
		errno = ESHUTDOWN;
		return -1;
	}
	a = actor_get(p, key);
	if (a->n >= (size_t)p->cfg.mailbox) {
		if (policy == ACTOR_DROP_OLDEST)
			drop = actor_take_droppable(a);
		if (drop == NULL) {
			p->st.rejected++;
			pthread_mutex_unlock(&p->lock);
			errno = EAGAIN;
			return -1;
		}
		p->st.dropped++;
		p->queued--;
	}
	m = xmalloc(sizeof *m);
	m->next = NULL;
	m->kind = kind;
	m->policy = policy;
	m->data = data;
	if (a->tail != NULL)
		a->tail->next = m;
	else
		a->head = m;
	a->tail = m;
	a->n++;
	p->queued++;
	if (a->state == A_IDLE) {
		list_remove(&p->idle, a);
		actor_queue(p, a);
		wake = 1;
	}
	pthread_mutex_unlock(&p->lock);
	/* After the unlock: a woken worker does not block on the lock the poster still holds. */
	if (wake)
		pthread_cond_signal(&p->work);

	if (drop != NULL) {
		if (p->ops.free_data != NULL)
			p->ops.free_data(drop->kind, drop->data);
		free(drop);
	}
	return 0;
}

/* Retry delay for the given failed attempt (1 = first failure). */
static int64_t
actor_backoff(const struct actor_pool *p, int attempt)
{
	int64_t d = p->cfg.backoff_ms > 0 ? p->cfg.backoff_ms : 1;

	while (--attempt > 0 && d < ACTOR_BACKOFF_CAP_MS)
		d *= 2;
	return d < ACTOR_BACKOFF_CAP_MS ? d : ACTOR_BACKOFF_CAP_MS;
}

/* Unlink the first n messages of a (the in-flight ones) into out[]; called with the lock held. */
static void
actor_shift(struct actor_pool *p, struct actor *a, size_t n, struct actor_msg **out)
{
	size_t i;

	for (i = 0; i < n; i++) {
		out[i] = a->head;
		a->head = a->head->next;
	}
	if (a->head == NULL)
		a->tail = NULL;
	a->n -= n;
	a->inflight = 0;
	p->queued -= n;
}

/* How many messages from the head go to the handler together (1 unless batching applies). */
static size_t
actor_batch_len(struct actor_pool *p, struct actor *a)
{
	struct actor_msg *m = a->head;
	size_t n = 1;

	if (p->ops.dispatch_batch == NULL || p->ops.batchable == NULL || p->cfg.batch <= 1 ||
	    !p->ops.batchable(m->kind))
		return 1;
	/* batchable() runs under the pool lock: it must be a pure test of the kind. */
	for (m = m->next; m != NULL && n < (size_t)p->cfg.batch; m = m->next) {
		if (m->kind != a->head->kind)
			break;
		n++;
	}
	return n;
}

/* Call failed() and free_data() for a message handled for good; the lock is not held. */
static void
actor_finish(struct actor_pool *p, void *wctx, const char *key, struct actor_msg *m, int err)
{
	if (err != 0) {
		log_warn("actor %s: message kind %d failed: %s", key, m->kind, strerror(err));
		if (p->ops.failed != NULL)
			p->ops.failed(wctx, key, m->kind, m->data, err);
	}
	if (p->ops.free_data != NULL)
		p->ops.free_data(m->kind, m->data);
	free(m);
}

/*
 * Run an actor the caller has just made A_RUNNING: handle up to a quantum of its messages, then
 * requeue it, park it for a retry, or leave it idle. Called and returns with the lock held.
 */
static void
actor_run(struct actor_pool *p, struct actor *a, struct actor_worker *w)
{
	struct actor_msg **ms = w->ms, *m;
	void **data = w->data, *wctx = w->wctx;
	int *err = w->err;
	size_t n, i, done = 0;
	int rc, e, kind;

	while (a->head != NULL && done < ACTOR_QUANTUM) {
		n = actor_batch_len(p, a);
		a->inflight = n;
		kind = a->head->kind;
		for (i = 0, m = a->head; i < n; i++, m = m->next) {
			data[i] = m->data;
			err[i] = 0;
		}
		pthread_mutex_unlock(&p->lock);

		/* a->key is stable: only idle actors are freed, and this one is running. */
		errno = 0;
		if (n == 1)
			rc = p->ops.dispatch(wctx, a->key, kind, data[0]);
		else
			rc = p->ops.dispatch_batch(wctx, a->key, kind, data, n, err);
		e = rc == 0 ? 0 : (errno != 0 ? errno : EIO);

		pthread_mutex_lock(&p->lock);
		if (rc != 0 && e == EAGAIN && a->attempts + 1 < p->cfg.retries) {
			/* Transient: the same messages stay at the head; retry after a backoff. */
			a->inflight = 0;
			a->attempts++;
			p->st.restarted++;
			a->not_before = parley_mono_ms() + actor_backoff(p, a->attempts);
			a->state = A_DELAYED;
			list_insert_delayed(&p->delayed, a);
			/* A new earliest deadline: sleepers wait for the old one, let them look again. */
			if (p->delayed.first == a)
				pthread_cond_broadcast(&p->work);
			return;
		}
		/*
		 * Done for good. An item of a batch that reports EAGAIN on its own is escalated too:
		 * the items after it are committed, so retrying it alone would break the order.
		 */
		a->attempts = 0;
		actor_shift(p, a, n, ms);
		for (i = 0; i < n; i++) {
			if (rc != 0)
				err[i] = e;
			if (err[i] == 0)
				p->st.processed++;
			else
				p->st.failed++;
		}
		pthread_mutex_unlock(&p->lock);
		for (i = 0; i < n; i++)
			actor_finish(p, wctx, a->key, ms[i], err[i]);
		pthread_mutex_lock(&p->lock);
		done += n;
	}
	if (a->head != NULL) {
		/* Quantum used up: let other actors have this worker. */
		actor_enqueue(p, a);
	} else {
		a->state = A_IDLE;
		a->idle_since = parley_mono_ms();
		list_append(&p->idle, a);
	}
}

/* Move due retries to the run queue, free expired idle actors; the next deadline or -1. */
static int64_t
actor_timers(struct actor_pool *p, int64_t now)
{
	struct actor *a;
	int64_t next = -1;

	while ((a = p->delayed.first) != NULL && a->not_before <= now) {
		list_remove(&p->delayed, a);
		actor_enqueue(p, a);
	}
	if (a != NULL)
		next = a->not_before;
	while ((a = p->idle.first) != NULL && a->idle_since + p->cfg.idle_ms <= now) {
		list_remove(&p->idle, a);
		actor_destroy(p, a);
		p->st.reclaimed++;
	}
	if (a != NULL && (next == -1 || a->idle_since + p->cfg.idle_ms < next))
		next = a->idle_since + p->cfg.idle_ms;
	return next;
}

/* Sleep on the pool's condition until when (monotonic ms; -1: until signalled); lock held. */
static void
actor_wait_until(struct actor_pool *p, int64_t when)
{
	struct timespec ts;

	if (when < 0) {
		pthread_cond_wait(&p->work, &p->lock);
		return;
	}
	ts.tv_sec = when / 1000;
	ts.tv_nsec = (when % 1000) * 1000000L;
	(void)pthread_cond_timedwait(&p->work, &p->lock, &ts);
}

/* A worker: take runnable actors until the pool closes and every posted message is handled. */
static void *
actor_worker(void *arg)
{
	struct actor_pool *p = arg;
	struct actor_worker w;
	struct actor *a;
	int64_t next;

	w.wctx = p->ops.worker_init != NULL ? p->ops.worker_init(p->arg) : NULL;
	w.ms = xreallocarray(NULL, (size_t)p->cfg.batch, sizeof *w.ms);
	w.data = xreallocarray(NULL, (size_t)p->cfg.batch, sizeof *w.data);
	w.err = xreallocarray(NULL, (size_t)p->cfg.batch, sizeof *w.err);

	pthread_mutex_lock(&p->lock);
	for (;;) {
		next = actor_timers(p, parley_mono_ms());
		if ((a = p->runq.first) != NULL) {
			list_remove(&p->runq, a);
			a->state = A_RUNNING;
			actor_run(p, a, &w);
			continue;
		}
		if (p->closing && p->queued == 0)
			break;
		actor_wait_until(p, next);
	}
	/* Wake the others: the last message may have been ours. */
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->lock);
	if (p->ops.worker_free != NULL)
		p->ops.worker_free(w.wctx);
	free(w.ms);
	free(w.data);
	free(w.err);
	return NULL;
}

struct actor_pool *
actor_pool_new(const struct actor_config *cfg, const struct actor_ops *ops, void *arg)
{
	struct actor_pool *p = xcalloc(1, sizeof *p);
	pthread_condattr_t ca;
	int i;

	p->cfg = *cfg;
	p->cfg.workers = cfg->workers > 0 ? cfg->workers : 1;
	p->cfg.mailbox = cfg->mailbox > 0 ? cfg->mailbox : 1;
	p->cfg.retries = cfg->retries > 0 ? cfg->retries : 1;
	p->cfg.batch = cfg->batch > 0 ? cfg->batch : 1;
	p->ops = *ops;
	p->arg = arg;
	if (p->ops.dispatch == NULL)
		fatal("actor_pool_new: no dispatch function");
	p->nbuckets = 64;
	p->table = xcalloc(p->nbuckets, sizeof *p->table);
	pthread_mutex_init(&p->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->work, &ca);
	pthread_condattr_destroy(&ca);

	p->threads = xcalloc((size_t)p->cfg.workers, sizeof *p->threads);
	for (i = 0; i < p->cfg.workers; i++) {
		if ((errno = pthread_create(&p->threads[i], NULL, actor_worker, p)) != 0)
			fatal("actor_pool_new: pthread_create: %s", strerror(errno));
		/* Named for per-thread CPU (/proc/PID/task/TID/comm, perf, top -H). */
		(void)pthread_setname_np(p->threads[i], "actor");
		p->nthreads++;
	}
	return p;
}

void
actor_pool_free(struct actor_pool *p)
{
	struct actor *a, *next;
	size_t i;
	int t;

	if (p == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	p->closing = 1;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->lock);
	for (t = 0; t < p->nthreads; t++)
		pthread_join(p->threads[t], NULL);

	/* Every mailbox is empty now: only the actors themselves are left. */
	for (i = 0; i < p->nbuckets; i++) {
		for (a = p->table[i]; a != NULL; a = next) {
			next = a->hnext;
			free(a->key);
			free(a);
		}
	}
	pthread_cond_destroy(&p->work);
	pthread_mutex_destroy(&p->lock);
	free(p->table);
	free(p->threads);
	free(p);
}

void
actor_pool_stats(struct actor_pool *p, struct actor_stats *st)
{
	struct actor *a;
	size_t i;

	pthread_mutex_lock(&p->lock);
	*st = p->st;
	st->actors = p->nactors;
	st->queued = p->queued;
	st->max_depth = 0;
	for (i = 0; i < p->nbuckets; i++) {
		for (a = p->table[i]; a != NULL; a = a->hnext) {
			if (a->n > st->max_depth)
				st->max_depth = a->n;
		}
	}
	pthread_mutex_unlock(&p->lock);
}
