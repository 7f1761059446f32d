/* park.c - parked long polls: wait lists woken by bus hints, timeouts, hang-ups and shutdown. */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "actor.h"
#include "bus.h"
#include "chat.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "park.h"
#include "protocol.h"
#include "redis.h"
#include "xmalloc.h"

/* A wake that could not be handed to a worker (mailbox full) is tried again this much later. */
#define PARK_RECHECK_MS		50
/* After some process (this one included) lost hints for us, every waiter re-reads, at most this often. */
#define PARK_SWEEP_MS		200
/* Timeouts are answered in batches of at most this many per worker message. */
#define PARK_TIMEOUT_BATCH	64
#define PARK_EPOLL_EVENTS	256
/*
 * Keys in the wait table: "u/" + user or "r/" + room, so users and rooms never collide; and
 * "o/" + user for the list of what one user has parked (the per-user cap).
 */
#define PARK_KEY_MAX		(PARLEY_ID_MAX + 3)

/* Buckets (microseconds) of the wake latency histogram: hint in, answer written. */
static const int64_t park_hist_us[] = { 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 250000 };
#define PARK_HIST_N	(sizeof(park_hist_us) / sizeof(park_hist_us[0]))

/* Worker message kinds. */
enum park_msg {
	PM_WAKE = 1,	/* an event may be there: read MySQL and answer, or wait again */
	PM_EPHEMERAL,	/* answer with the inline ephemeral event */
	PM_TIMEOUT	/* answer with the empty result */
};

struct park_key;

/* A waiter is on two lists: the wait list of its key, and the list of its owner (the user). */
enum park_list {
	PL_WAIT,
	PL_OWNER,
	PL_N
};

/* A waiter's place in one list. */
struct park_link {
	struct park_key	*pk;
	struct waiter	*prev, *next;
};

/* One parked request. Fields below "parked" are guarded by park.lock while it is parked. */
struct waiter {
	int		 fd;
	int		 request_id;
	int		 refs;		/* atomic */
	enum park_kind	 kind;
	uint64_t	 after;
	int		 limit;
	int64_t		 deadline;	/* monotonic ms */
	int64_t		 woken_us;	/* when a hint claimed it (wake latency metric) */
	uint64_t	 serial;	/* order of arrival: the oldest is replaced first */

	int		 parked;
	int		 recheck;	/* due is a retry of a wake, not the deadline */
	int64_t		 due;		/* heap order */
	size_t		 heap_idx;
	struct park_link link[PL_N];
	char		 key[PARK_KEY_MAX];
	char		 owner[PARK_KEY_MAX];	/* "o/" + user */
	char		 device[PARLEY_ID_MAX + 1];	/* "" when unknown: never replaced by device */
};

/* The waiters of one key (a wait list or an owner list). */
struct park_key {
	struct park_key	*hnext;
	uint64_t	 hash;
	struct waiter	*head;
	size_t		 n;
	char		 key[PARK_KEY_MAX];
};

/* What a worker gets: one kind, one or more claimed waiters (each with one reference). */
struct park_wake {
	enum park_msg	  kind;
	char		 *payload;	/* PM_EPHEMERAL */
	size_t		  n;
	size_t		  cap;
	struct waiter	**w;
};

struct park_worker {
	struct park	*p;
	struct chat	 chat;
};

struct park {
	const struct config	*cfg;
	struct metrics		*m;
	struct bus		*bus;
	struct cache_journal	*journal;
	struct actor_pool	*pool;

	pthread_mutex_t		 lock;
	struct park_key		**buckets;
	size_t			 nbuckets;
	size_t			 nkeys;
	struct waiter		**heap;
	size_t			 nheap;
	size_t			 heapcap;
	struct waiter		**byfd;		/* parked waiter of each fd (hang-up events) */
	size_t			 nfd;
	int			 stopping;	/* no new waiters */
	int			 loop_stop;
	int64_t			 next_wake;	/* when the loop wakes next (it is told of earlier dues) */
	uint64_t		 timeout_rr;
	uint64_t		 wake_hist[PARK_HIST_N + 1];	/* atomics: hint -> answer */
	uint64_t		 wake_sum_us;
	uint64_t		 serial;	/* next waiter's arrival number (lock) */
	uint64_t		 replaced;	/* atomics: answered for a newer poll of the same device */
	uint64_t		 evicted;	/* ... or for a newer poll past the per-user cap */
	uint64_t		 unwritable;	/* atomic: answers cut, the socket took them not at once */
	int			 sweep_due;	/* loop thread: a BUS_LOST came, not yet swept for */
	int64_t			 last_sweep;

	int			 ep;
	int			 evfd;
	pthread_t		 loop;
	struct bus_hint		 hint;		/* loop thread only */
	struct bus_backend	 backends[2];	/* the local bus, the Redis bridge (if any) */
	size_t			 nbackends;
};

/* --- waiters ----------------------------------------------------------------------------- */

static void
waiter_ref(struct waiter *w)
{
	__atomic_add_fetch(&w->refs, 1, __ATOMIC_ACQ_REL);
}

static void
waiter_unref(struct waiter *w)
{
	if (w != NULL && __atomic_sub_fetch(&w->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(w);
}

static const char *
waiter_name(const struct waiter *w)
{
	return w->key + 2;
}

static int64_t
park_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Count one woken answer in the latency histogram. */
static void
park_observe(struct park *p, const struct waiter *w)
{
	int64_t d;
	size_t i;

	if (w->woken_us == 0)
		return;
	d = park_now_us() - w->woken_us;
	for (i = 0; i < PARK_HIST_N && d > park_hist_us[i]; i++)
		;
	__atomic_add_fetch(&p->wake_hist[i], 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&p->wake_sum_us, (uint64_t)(d > 0 ? d : 0), __ATOMIC_RELAXED);
}

/* The answer of a poll that found nothing. */
static char *
park_empty_json(const struct waiter *w)
{
	return protocol_events_page(NULL, 0, w->after, w->kind == PARK_SYNC ? 0 : -1);
}

/*
 * Answer a claimed waiter and close its connection; counts the request. mode: HTTP_RAW_WAIT on
 * workers and request threads; HTTP_RAW_NOWAIT where nothing may wait for a web server that
 * does not read (the loop thread, anything a hint or a timeout runs there, and shutdown).
 */
static void
park_answer_mode(struct park *p, struct waiter *w, struct http_resp *resp,
    enum http_raw_mode mode)
{
	metrics_add(p->m, M_HTTP_REQUESTS, 1);
	if (resp->status >= 400)
		metrics_add(p->m, M_HTTP_ERRORS, 1);
	if (http_raw_answer(w->fd, w->request_id, resp, mode) < 0) {
		if (errno == EAGAIN)
			__atomic_add_fetch(&p->unwritable, 1, __ATOMIC_RELAXED);
		log_debug("parked answer to %s not delivered: %s", waiter_name(w), strerror(errno));
	}
	w->fd = -1;
}

static void
park_answer(struct park *p, struct waiter *w, struct http_resp *resp)
{
	park_answer_mode(p, w, resp, HTTP_RAW_WAIT);
}

static void
park_answer_json(struct park *p, struct waiter *w, const char *json)
{
	struct http_resp resp;

	memset(&resp, 0, sizeof resp);
	resp.status = 200;
	resp.body = (char *)json;
	resp.len = strlen(json);
	park_answer(p, w, &resp);
}

/* The empty result (what a timeout answers), written in mode (see park_answer_mode). */
static void
park_answer_empty_mode(struct park *p, struct waiter *w, enum http_raw_mode mode)
{
	struct http_resp resp;
	char *json = park_empty_json(w);

	memset(&resp, 0, sizeof resp);
	resp.status = 200;
	resp.body = json;
	resp.len = strlen(json);
	park_answer_mode(p, w, &resp, mode);
	free(json);
}

static void
park_answer_empty(struct park *p, struct waiter *w)
{
	park_answer_empty_mode(p, w, HTTP_RAW_WAIT);
}

static void
park_answer_errno(struct park *p, struct waiter *w, int err, const char *msg)
{
	struct http_resp resp;

	memset(&resp, 0, sizeof resp);
	http_resp_errno(&resp, err, msg);
	park_answer(p, w, &resp);
	http_resp_clear(&resp);
}

/* --- the wait table (park.lock held) ---------------------------------------------------- */

static uint64_t
park_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	while (*s != '\0') {
		h ^= (unsigned char)*s++;
		h *= 1099511628211ULL;
	}
	return h;
}

static struct park_key *
park_key_find(struct park *p, const char *key, uint64_t h)
{
	struct park_key *pk;

	for (pk = p->buckets[h & (p->nbuckets - 1)]; pk != NULL; pk = pk->hnext) {
		if (pk->hash == h && strcmp(pk->key, key) == 0)
			return pk;
	}
	return NULL;
}

static void
park_rehash(struct park *p)
{
	struct park_key **nb, *pk, *next;
	size_t i, n = p->nbuckets * 2;

	nb = xcalloc(n, sizeof *nb);
	for (i = 0; i < p->nbuckets; i++) {
		for (pk = p->buckets[i]; pk != NULL; pk = next) {
			next = pk->hnext;
			pk->hnext = nb[pk->hash & (n - 1)];
			nb[pk->hash & (n - 1)] = pk;
		}
	}
	free(p->buckets);
	p->buckets = nb;
	p->nbuckets = n;
}

/* A wait list came or went: the bus's bridge subscribes to what it needs (lock held). */
static void
park_listen(struct park *p, const struct park_key *pk, int delta)
{
	if (pk->key[0] == 'u')
		bus_listen(p->bus, BUS_USER_EVENT, pk->key + 2, delta);
	else if (pk->key[0] == 'r')
		bus_listen(p->bus, BUS_ROOM, pk->key + 2, delta);
}

static struct park_key *
park_key_get(struct park *p, const char *key)
{
	uint64_t h = park_hash(key);
	struct park_key *pk;

	if ((pk = park_key_find(p, key, h)) != NULL)
		return pk;
	if (p->nkeys >= p->nbuckets)
		park_rehash(p);
	pk = xcalloc(1, sizeof *pk);
	pk->hash = h;
	snprintf(pk->key, sizeof pk->key, "%s", key);
	park_listen(p, pk, 1);
	pk->hnext = p->buckets[h & (p->nbuckets - 1)];
	p->buckets[h & (p->nbuckets - 1)] = pk;
	p->nkeys++;
	return pk;
}

/* The first wait list (not an owner list) in bucket i, or NULL (lock held). */
static struct park_key *
park_bucket_wait_key(struct park *p, size_t i)
{
	struct park_key *pk;

	for (pk = p->buckets[i]; pk != NULL && pk->key[0] == 'o'; pk = pk->hnext)
		;
	return pk;
}

static void
park_key_drop(struct park *p, struct park_key *pk)
{
	struct park_key **pp = &p->buckets[pk->hash & (p->nbuckets - 1)];

	while (*pp != pk)
		pp = &(*pp)->hnext;
	*pp = pk->hnext;
	p->nkeys--;
	park_listen(p, pk, -1);
	free(pk);
}

static void
heap_swap(struct park *p, size_t a, size_t b)
{
	struct waiter *t = p->heap[a];

	p->heap[a] = p->heap[b];
	p->heap[b] = t;
	p->heap[a]->heap_idx = a;
	p->heap[b]->heap_idx = b;
}

static void
heap_up(struct park *p, size_t i)
{
	while (i > 0 && p->heap[(i - 1) / 2]->due > p->heap[i]->due) {
		heap_swap(p, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void
heap_down(struct park *p, size_t i)
{
	size_t l, r, m;

	for (;;) {
		l = 2 * i + 1;
		r = l + 1;
		m = i;
		if (l < p->nheap && p->heap[l]->due < p->heap[m]->due)
			m = l;
		if (r < p->nheap && p->heap[r]->due < p->heap[m]->due)
			m = r;
		if (m == i)
			return;
		heap_swap(p, i, m);
		i = m;
	}
}

static void
heap_push(struct park *p, struct waiter *w)
{
	if (p->nheap == p->heapcap) {
		p->heapcap = p->heapcap ? p->heapcap * 2 : 256;
		p->heap = xreallocarray(p->heap, p->heapcap, sizeof *p->heap);
	}
	w->heap_idx = p->nheap;
	p->heap[p->nheap++] = w;
	heap_up(p, w->heap_idx);
}

static void
heap_remove(struct park *p, struct waiter *w)
{
	size_t i = w->heap_idx;

	p->nheap--;
	if (i != p->nheap) {
		p->heap[i] = p->heap[p->nheap];
		p->heap[i]->heap_idx = i;
		heap_down(p, i);
		heap_up(p, i);
	}
}

/* Wake the loop when a waiter is due before the loop planned to look. */
static void
park_kick(struct park *p)
{
	uint64_t one = 1;

	if (write(p->evfd, &one, sizeof one) < 0 && errno != EAGAIN)
		log_warn("park: eventfd write: %s", strerror(errno));
}

/* Put w at the head of one of its lists (lock held). */
static void
park_link(struct park *p, struct waiter *w, enum park_list l, const char *key)
{
	struct park_link *lk = &w->link[l];
	struct park_key *pk = park_key_get(p, key);

	lk->pk = pk;
	lk->prev = NULL;
	lk->next = pk->head;
	if (pk->head != NULL)
		pk->head->link[l].prev = w;
	pk->head = w;
	pk->n++;
}

/* Take w out of one of its lists; the list goes when it is empty (lock held). */
static void
park_unlink(struct park *p, struct waiter *w, enum park_list l)
{
	struct park_link *lk = &w->link[l];

	if (lk->prev != NULL)
		lk->prev->link[l].next = lk->next;
	else
		lk->pk->head = lk->next;
	if (lk->next != NULL)
		lk->next->link[l].prev = lk->prev;
	if (--lk->pk->n == 0)
		park_key_drop(p, lk->pk);
	memset(lk, 0, sizeof *lk);
}

static int park_claim_locked(struct park *, struct waiter *);

/*
 * The parked poll that a new poll w ends, if any (lock held): the same user's poll from the same
 * device on the same wait list, else the user's oldest when the user is at the cap. *cap says
 * which. NULL when w fits.
 */
static struct waiter *
park_displaced(struct park *p, const struct waiter *w, int *cap)
{
	struct park_key *pk = park_key_find(p, w->owner, park_hash(w->owner));
	struct waiter *o, *oldest = NULL;

	*cap = 0;
	if (pk == NULL)
		return NULL;
	for (o = pk->head; o != NULL; o = o->link[PL_OWNER].next) {
		if (w->device[0] != '\0' && strcmp(o->device, w->device) == 0 &&
		    strcmp(o->key, w->key) == 0)
			return o;
		if (oldest == NULL || o->serial < oldest->serial)
			oldest = o;
	}
	if (pk->n < (size_t)p->cfg->fcgi_max_parked_per_user)
		return NULL;
	*cap = 1;
	return oldest;
}

/*
 * Put w into the table (one reference moves to the table). new_one: a fresh long poll, which
 * counts against fcgi_max_parked and may end an older poll of its user (fcgi_max_parked_per_user,
 * or the same device): that one is claimed here and returned in *old for the caller to answer.
 * -1 with ESHUTDOWN (stopping) or ENOSPC (too many).
 */
static int
park_add(struct park *p, struct waiter *w, int new_one, int64_t due, struct waiter **old)
{
	struct epoll_event ev;
	struct waiter *o = NULL;
	int kick, cap = 0;

	if (old != NULL)
		*old = NULL;
	pthread_mutex_lock(&p->lock);
	if (p->stopping) {
		pthread_mutex_unlock(&p->lock);
		errno = ESHUTDOWN;
		return -1;
	}
	if (new_one)
		o = park_displaced(p, w, &cap);
	if ((new_one && o == NULL && p->nheap >= (size_t)p->cfg->fcgi_max_parked) ||
	    (size_t)w->fd >= p->nfd) {
		pthread_mutex_unlock(&p->lock);
		errno = ENOSPC;
		return -1;
	}
	memset(&ev, 0, sizeof ev);
	ev.events = EPOLLIN | EPOLLRDHUP;
	ev.data.fd = w->fd;
	if (epoll_ctl(p->ep, EPOLL_CTL_ADD, w->fd, &ev) < 0) {
		int e = errno;

		pthread_mutex_unlock(&p->lock);
		log_warn("park: epoll_ctl add: %s", strerror(e));
		errno = ENOSPC;
		return -1;
	}
	if (o != NULL) {
		park_claim_locked(p, o);
		__atomic_add_fetch(cap ? &p->evicted : &p->replaced, 1, __ATOMIC_RELAXED);
		*old = o;
	}
	if (new_one)
		w->serial = p->serial++;
	park_link(p, w, PL_WAIT, w->key);
	park_link(p, w, PL_OWNER, w->owner);
	w->due = due;
	heap_push(p, w);
	p->byfd[w->fd] = w;
	w->parked = 1;
	metrics_add(p->m, M_POLLS_PARKED, 1);
	kick = due < p->next_wake;
	pthread_mutex_unlock(&p->lock);

	if (kick)
		park_kick(p);
	return 0;
}

/* Take w out of the table (lock held). 1: the caller owns it now, with the table's reference. */
static int
park_claim_locked(struct park *p, struct waiter *w)
{
	if (!w->parked)
		return 0;
	w->parked = 0;
	park_unlink(p, w, PL_WAIT);
	park_unlink(p, w, PL_OWNER);
	heap_remove(p, w);
	p->byfd[w->fd] = NULL;
	(void)epoll_ctl(p->ep, EPOLL_CTL_DEL, w->fd, NULL);
	metrics_add(p->m, M_POLLS_PARKED, -1);
	return 1;
}

static int
park_claim(struct park *p, struct waiter *w)
{
	int won;

	pthread_mutex_lock(&p->lock);
	won = park_claim_locked(p, w);
	pthread_mutex_unlock(&p->lock);
	return won;
}

/* --- reading MySQL for a waiter (request and worker threads) ----------------------------- */

/* Read MySQL for what w waits for (its kind's page); the chat is the calling thread's. */
static int
park_query(struct chat *ch, const struct waiter *w, char **json, size_t *n)
{
	switch (w->kind) {
	case PARK_EVENTS:
		return chat_events_json(ch, waiter_name(w), w->after, w->limit, 0, json, n);
	case PARK_SYNC:
		return chat_events_json(ch, waiter_name(w), w->after, w->limit, 1, json, n);
	case PARK_ROOM:
		return chat_room_history_json(ch, waiter_name(w), w->after, w->limit, json, n);
	}
	errno = EINVAL;
	return -1;
}

/*
 * Register w, then read MySQL once: an event committed before the read is in it; one committed
 * after it is hinted after we are registered, so the loop wakes us. Consumes one reference.
 * woken: a worker re-serving a woken waiter (counts M_POLLS_WOKEN). *got (may be NULL) receives a
 * copy of a non-empty answer for waiters of the same key and position.
 */
static void
park_serve(struct park *p, struct chat *ch, struct waiter *w, int woken, char **got)
{
	struct waiter *old;
	char *json = NULL;
	size_t n = 0;
	int rc, err;

	waiter_ref(w);	/* ours, while we look at w */
	w->recheck = 0;
	if (park_add(p, w, !woken, w->deadline, &old) < 0) {
		/* Not in the table: we own it alone (two references). */
		if (errno == ESHUTDOWN)
			park_answer_empty(p, w);
		else
			park_answer_errno(p, w, EAGAIN, "too many waiting polls, retry later");
		waiter_unref(w);
		waiter_unref(w);
		return;
	}
	if (old != NULL) {
		/* Ended by this newer poll: the empty result, as its timeout would have given. */
		park_answer_empty(p, old);
		waiter_unref(old);
	}
	rc = park_query(ch, w, &json, &n);
	err = errno;
	if (rc < 0) {
		metrics_add(p->m, M_STORE_ERRORS, 1);
		if (park_claim(p, w)) {
			park_answer_errno(p, w, err, NULL);
			waiter_unref(w);
		}
	} else if (n > 0 && park_claim(p, w)) {
		park_answer_json(p, w, json);
		if (woken) {
			metrics_add(p->m, M_POLLS_WOKEN, 1);
			park_observe(p, w);
		}
		waiter_unref(w);
		if (got != NULL) {
			*got = json;
			json = NULL;
		}
	}
	free(json);
	waiter_unref(w);
}

void
park_submit(struct park *p, struct chat *ch, int fd, int request_id, const struct park_spec *spec)
{
	struct waiter *w = xcalloc(1, sizeof *w);

	w->fd = fd;
	w->request_id = request_id;
	w->refs = 1;
	w->kind = spec->kind;
	w->after = spec->after;
	w->limit = spec->limit;
	w->deadline = parley_mono_ms() + (int64_t)spec->timeout_s * 1000;
	snprintf(w->key, sizeof w->key, "%s/%s", spec->kind == PARK_ROOM ? "r" : "u", spec->key);
	snprintf(w->owner, sizeof w->owner, "o/%s", spec->user);
	snprintf(w->device, sizeof w->device, "%s", spec->device);
	park_serve(p, ch, w, 0, NULL);
}

/* --- workers ----------------------------------------------------------------------------- */

/* A worker's own context: a chat with its own MySQL and memcached connections. */
static void *
park_worker_init(void *arg)
{
	struct park_worker *wk = xcalloc(1, sizeof *wk);

	wk->p = arg;
	chat_init(&wk->chat, wk->p->cfg, wk->p->bus, wk->p->journal);
	return wk;
}

static void
park_worker_free(void *wctx)
{
	struct park_worker *wk = wctx;

	chat_clear(&wk->chat);
	free(wk);
}

/* A worker's handling of one wake message: read and answer, answer inline, or time out. */
static int
park_dispatch(void *wctx, const char *key, int kind, void *data)
{
	struct park_worker *wk = wctx;
	struct park *p = wk->p;
	struct park_wake *wake = data;
	struct waiter *w, *prev = NULL;
	char *json, *cached = NULL;
	size_t i, n;

	(void)key;
	for (i = 0; i < wake->n; i++) {
		w = wake->w[i];
		wake->w[i] = NULL;
		switch (kind) {
		case PM_WAKE:
			/* Waiters of one user at one position share one read. */
			if (cached != NULL && prev != NULL && prev->kind == w->kind &&
			    prev->after == w->after && prev->limit == w->limit) {
				metrics_add(p->m, M_POLLS_WOKEN, 1);
				park_answer_json(p, w, cached);
				park_observe(p, w);
				waiter_unref(w);
				break;
			}
			free(cached);
			cached = NULL;
			if (prev != NULL)
				waiter_unref(prev);
			prev = w;
			waiter_ref(prev);
			park_serve(p, &wk->chat, w, 1, &cached);
			break;
		case PM_EPHEMERAL:
			json = protocol_events_page(&wake->payload, 1, w->after,
			    w->kind == PARK_SYNC ? 0 : -1);
			metrics_add(p->m, M_POLLS_WOKEN, 1);
			park_answer_json(p, w, json);
			park_observe(p, w);
			free(json);
			waiter_unref(w);
			break;
		case PM_TIMEOUT:
			/*
			 * One last read: a hint the bus lost (a full receiver queue) then only
			 * delayed the answer. A failing read still ends the poll as a timeout.
			 */
			metrics_add(p->m, M_POLLS_TIMED_OUT, 1);
			json = NULL;
			if (park_query(&wk->chat, w, &json, &n) == 0 && n > 0)
				park_answer_json(p, w, json);
			else
				park_answer_empty(p, w);
			free(json);
			waiter_unref(w);
			break;
		}
	}
	free(cached);
	if (prev != NULL)
		waiter_unref(prev);
	return 0;
}

static void
park_wake_free(struct park_wake *wake)
{
	size_t i;

	if (wake == NULL)
		return;
	/* Only a message the pool never ran still holds waiters: close them (clients re-poll). */
	for (i = 0; i < wake->n; i++) {
		if (wake->w[i] != NULL) {
			close(wake->w[i]->fd);
			waiter_unref(wake->w[i]);
		}
	}
	free(wake->payload);
	free(wake->w);
	free(wake);
}

static void
park_free_data(int kind, void *data)
{
	(void)kind;
	park_wake_free(data);
}

static struct park_wake *
park_wake_new(enum park_msg kind)
{
	struct park_wake *wake = xcalloc(1, sizeof *wake);

	wake->kind = kind;
	return wake;
}

static void
park_wake_push(struct park_wake *wake, struct waiter *w)
{
	if (wake->n == wake->cap) {
		wake->cap = wake->cap ? wake->cap * 2 : 4;
		wake->w = xreallocarray(wake->w, wake->cap, sizeof *wake->w);
	}
	wake->w[wake->n++] = w;
}

/*
 * Hand a batch of claimed waiters to the workers. When the pool refuses (mailbox full, or
 * stopping), wakes are retried a little later, ephemeral events are lost (they are not durable)
 * with their waiters parked again, and timeouts are answered here, without waiting for a web
 * server that does not read (this may be the loop thread: it must never stall).
 */
static void
park_post(struct park *p, const char *key, struct park_wake *wake)
{
	struct waiter *w;
	size_t i;

	if (actor_post(p->pool, key, (int)wake->kind, ACTOR_BACKPRESSURE, wake) == 0)
		return;
	for (i = 0; i < wake->n; i++) {
		w = wake->w[i];
		wake->w[i] = NULL;
		if (wake->kind == PM_TIMEOUT) {
			metrics_add(p->m, M_POLLS_TIMED_OUT, 1);
			park_answer_empty_mode(p, w, HTTP_RAW_NOWAIT);
			waiter_unref(w);
			continue;
		}
		w->recheck = wake->kind == PM_WAKE;
		if (park_add(p, w, 0, w->recheck ? parley_mono_ms() + PARK_RECHECK_MS : w->deadline,
		    NULL) < 0) {
			park_answer_empty_mode(p, w, HTTP_RAW_NOWAIT);
			waiter_unref(w);
		}
	}
	park_wake_free(wake);
}

/* --- the loop thread --------------------------------------------------------------------- */

/* Claim the waiters of key that a hint concerns and pass them to a worker. */
static void
park_wake_key(struct park *p, const char *prefix, const char *name, uint64_t seq,
    enum park_msg kind, const char *payload)
{
	char key[PARK_KEY_MAX];
	struct park_key *pk;
	struct park_wake *wake = NULL;
	struct waiter *w, *next;
	int64_t now_us;

	snprintf(key, sizeof key, "%s/%s", prefix, name);
	now_us = park_now_us();
	pthread_mutex_lock(&p->lock);
	pk = park_key_find(p, key, park_hash(key));
	for (w = pk != NULL ? pk->head : NULL; w != NULL; w = next) {
		next = w->link[PL_WAIT].next;
		/* seq 0: a hint that does not say which event; wake all. */
		if (kind == PM_WAKE && seq != 0 && w->after >= seq)
			continue;
		if (wake == NULL)
			wake = park_wake_new(kind);
		/* Claiming w may free pk (last waiter): next was read before. */
		park_claim_locked(p, w);
		w->woken_us = now_us;
		park_wake_push(wake, w);
	}
	pthread_mutex_unlock(&p->lock);
	if (wake == NULL)
		return;
	if (payload != NULL)
		wake->payload = xstrdup(payload);
	park_post(p, key, wake);
}

void
park_notify(struct park *p, const char *user, uint64_t seq)
{
	park_wake_key(p, "u", user, seq, PM_WAKE, NULL);
}

/*
 * Loop thread: the Redis bridge subscribed to the channel of a slot of users (redis_slot): hints
 * published before that may have been missed, so the waiters of those users (only) read MySQL.
 */
static void
park_sweep_slot(struct park *p, uint64_t slot)
{
	unsigned nslots = p->cfg->redis_slots > 0 ? (unsigned)p->cfg->redis_slots : 1;
	struct park_key *pk, *next;
	struct park_wake *wake;
	struct waiter *w;
	char **keys = NULL;
	struct park_wake **batches = NULL;
	size_t i, n = 0, cap = 0;
	int last;

	pthread_mutex_lock(&p->lock);
	for (i = 0; i < p->nbuckets; i++) {
		for (pk = p->buckets[i]; pk != NULL; pk = next) {
			next = pk->hnext;
			if (strncmp(pk->key, "u/", 2) != 0 || pk->head == NULL ||
			    redis_slot(pk->key + 2, nslots) != slot)
				continue;
			if (n == cap) {
				cap = cap ? cap * 2 : 16;
				batches = xreallocarray(batches, cap, sizeof *batches);
				keys = xreallocarray(keys, cap, sizeof *keys);
			}
			wake = batches[n] = park_wake_new(PM_WAKE);
			keys[n++] = xstrdup(pk->key);
			/* Claiming the last waiter frees pk (next was read before). */
			do {
				w = pk->head;
				last = w->link[PL_WAIT].next == NULL;
				w->woken_us = 0;
				park_wake_push(wake, w);
				park_claim_locked(p, w);
			} while (!last);
		}
	}
	pthread_mutex_unlock(&p->lock);
	for (i = 0; i < n; i++) {
		park_post(p, keys[i], batches[i]);
		free(keys[i]);
	}
	free(batches);
	free(keys);
}

/* Loop thread: drain one bus backend and wake the waiters each hint names (never reads MySQL). */
static void
park_hints(struct park *p, const struct bus_backend *be)
{
	struct bus_hint *h = &p->hint;

	while (be->ops->recv(be->arg, h) == 0) {
		metrics_add(p->m, M_BUS_HINTS_IN, 1);
		switch (h->topic) {
		case BUS_USER_EVENT:
			park_wake_key(p, "u", h->key, h->seq, PM_WAKE, NULL);
			break;
		case BUS_USER_EPHEMERAL:
			/* Too big to travel inline: nothing to deliver (ephemeral events are not stored). */
			if (h->len > 0)
				park_wake_key(p, "u", h->key, 0, PM_EPHEMERAL, h->payload);
			break;
		case BUS_ROOM:
			park_wake_key(p, "r", h->key, h->seq, PM_WAKE, NULL);
			break;
		case BUS_LOST:
			/* The bridge's slot subscription took effect: that slot's users re-read. */
			if (strcmp(h->key, "slot") == 0) {
				park_sweep_slot(p, h->seq);
				break;
			}
			/* Some process dropped hints for us: which waiters they concerned is unknown. */
			p->sweep_due = 1;
			break;
		default:
			break;
		}
	}
}

/* A parked fd reported an event: the web server closed it (or sent what it must not). */
static void
park_hangup(struct park *p, int fd)
{
	struct pollfd pfd;
	struct waiter *w;

	pthread_mutex_lock(&p->lock);
	if (fd < 0 || (size_t)fd >= p->nfd || (w = p->byfd[fd]) == NULL) {
		pthread_mutex_unlock(&p->lock);
		return;
	}
	/* The event may be stale (the fd was answered, closed and reused since): look again. */
	pfd.fd = fd;
	pfd.events = POLLIN | POLLRDHUP;
	pfd.revents = 0;
	if (poll(&pfd, 1, 0) <= 0 || pfd.revents == 0) {
		pthread_mutex_unlock(&p->lock);
		return;
	}
	park_claim_locked(p, w);
	pthread_mutex_unlock(&p->lock);
	metrics_add(p->m, M_POLLS_GONE, 1);
	close(w->fd);
	w->fd = -1;
	waiter_unref(w);
}

/* Claim every waiter that is due: timeouts to the workers in batches, retried wakes one by one. */
static void
park_expire(struct park *p)
{
	struct park_wake *batch = NULL, *rechecks = NULL;
	struct waiter *w;
	int64_t now = parley_mono_ms();
	char key[32];
	size_t i;

	for (;;) {
		pthread_mutex_lock(&p->lock);
		while (p->nheap > 0 && p->heap[0]->due <= now) {
			w = p->heap[0];
			park_claim_locked(p, w);
			if (w->recheck && w->deadline > now) {
				w->recheck = 0;
				if (rechecks == NULL)
					rechecks = park_wake_new(PM_WAKE);
				park_wake_push(rechecks, w);
				continue;
			}
			if (batch == NULL)
				batch = park_wake_new(PM_TIMEOUT);
			park_wake_push(batch, w);
			if (batch->n >= PARK_TIMEOUT_BATCH)
				break;
		}
		pthread_mutex_unlock(&p->lock);
		if (rechecks != NULL) {
			for (i = 0; i < rechecks->n; i++) {
				struct park_wake *one = park_wake_new(PM_WAKE);

				park_wake_push(one, rechecks->w[i]);
				rechecks->w[i] = NULL;
				park_post(p, one->w[0]->key, one);
			}
			park_wake_free(rechecks);
			rechecks = NULL;
		}
		if (batch == NULL)
			return;
		/* Timeouts need no order: spread them over the workers. */
		snprintf(key, sizeof key, "~timeout/%" PRIu64,
		    p->timeout_rr++ % (uint64_t)(p->cfg->actor_workers > 0 ? p->cfg->actor_workers : 1));
		park_post(p, key, batch);
		batch = NULL;
	}
}

/*
 * The bus lost hints meant for us (BUS_LOST: the backlog of some process, this one or another,
 * for our socket was full): a waiter may have missed its wake-up, so every waiter reads MySQL
 * again. The marker comes after every hint that process kept for us, so the re-read sees the
 * commits whose hints were dropped.
 */
static void
park_sweep(struct park *p)
{
	struct park_key *pk;
	struct waiter *w;
	struct park_wake **batches = NULL;
	char **keys = NULL;
	size_t i, n = 0, cap = 0;
	int last;

	pthread_mutex_lock(&p->lock);
	for (i = 0; i < p->nbuckets; i++) {
		while ((pk = park_bucket_wait_key(p, i)) != NULL) {
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				batches = xreallocarray(batches, cap, sizeof *batches);
				keys = xreallocarray(keys, cap, sizeof *keys);
			}
			batches[n] = park_wake_new(PM_WAKE);
			keys[n] = xstrdup(pk->key);
			/* Claiming the last waiter frees pk and unlinks it from the bucket. */
			do {
				w = pk->head;
				last = w->link[PL_WAIT].next == NULL;
				w->woken_us = 0;	/* not a hint: not a wake-up latency */
				park_wake_push(batches[n], w);
				park_claim_locked(p, w);
			} while (!last);
			n++;
		}
	}
	pthread_mutex_unlock(&p->lock);
	for (i = 0; i < n; i++) {
		park_post(p, keys[i], batches[i]);
		free(keys[i]);
	}
	if (n > 0)
		log_debug("park: bus lost hints; %zu keys read again", n);
	free(batches);
	free(keys);
}

/* The loop thread: bus hints, hang-ups of parked fds, deadlines; all storage work is posted. */
static void *
park_loop(void *arg)
{
	struct park *p = arg;
	struct epoll_event evs[PARK_EPOLL_EVENTS];
	int64_t now;
	uint64_t v;
	int n, i, timeout;
	size_t b;

	for (;;) {
		pthread_mutex_lock(&p->lock);
		if (p->loop_stop) {
			pthread_mutex_unlock(&p->lock);
			break;
		}
		now = parley_mono_ms();
		if (p->nheap == 0) {
			timeout = -1;
			p->next_wake = INT64_MAX;
		} else {
			int64_t d = p->heap[0]->due - now;

			timeout = d <= 0 ? 0 : d > 60000 ? 60000 : (int)d;
			p->next_wake = now + timeout;
		}
		pthread_mutex_unlock(&p->lock);
		if (p->sweep_due) {
			if (now - p->last_sweep >= PARK_SWEEP_MS) {
				p->sweep_due = 0;
				p->last_sweep = now;
				park_sweep(p);
				continue;
			}
			if (timeout < 0 || timeout > PARK_SWEEP_MS)
				timeout = PARK_SWEEP_MS;
		}

		n = epoll_wait(p->ep, evs, PARK_EPOLL_EVENTS, timeout);
		if (n < 0 && errno != EINTR)
			fatal("park: epoll_wait: %s", strerror(errno));
		for (i = 0; i < n; i++) {
			if (evs[i].data.fd == p->evfd) {
				(void)read(p->evfd, &v, sizeof v);
				continue;
			}
			for (b = 0; b < p->nbackends; b++) {
				if (evs[i].data.fd == p->backends[b].ops->fd(p->backends[b].arg)) {
					park_hints(p, &p->backends[b]);
					break;
				}
			}
			if (b == p->nbackends)
				park_hangup(p, evs[i].data.fd);
		}
		park_expire(p);
	}
	return NULL;
}

/* --- life cycle -------------------------------------------------------------------------- */

struct park *
park_new(const struct config *cfg, struct metrics *m, struct bus *bus,
    struct cache_journal *journal)
{
	static const struct actor_ops ops = {
		.worker_init = park_worker_init,
		.worker_free = park_worker_free,
		.dispatch = park_dispatch,
		.free_data = park_free_data,
	};
	struct actor_config ac;
	struct epoll_event ev;
	struct rlimit rl;
	struct park *p = xcalloc(1, sizeof *p);
	size_t i;
	int rc;

	p->cfg = cfg;
	p->m = m;
	p->bus = bus;
	p->journal = journal;
	pthread_mutex_init(&p->lock, NULL);
	p->nbuckets = 1024;
	p->buckets = xcalloc(p->nbuckets, sizeof *p->buckets);
	p->nfd = 65536;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		p->nfd = rl.rlim_cur > (1U << 20) ? (1U << 20) : (size_t)rl.rlim_cur;
	p->byfd = xcalloc(p->nfd, sizeof *p->byfd);
	p->next_wake = INT64_MAX;

	if ((p->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		fatal("epoll_create1: %s", strerror(errno));
	if ((p->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
		fatal("eventfd: %s", strerror(errno));
	memset(&ev, 0, sizeof ev);
	ev.events = EPOLLIN;
	ev.data.fd = p->evfd;
	if (epoll_ctl(p->ep, EPOLL_CTL_ADD, p->evfd, &ev) < 0)
		fatal("epoll_ctl: %s", strerror(errno));
	p->nbackends = bus_backends(bus, p->backends);
	for (i = 0; i < p->nbackends; i++) {
		ev.data.fd = p->backends[i].ops->fd(p->backends[i].arg);
		if (epoll_ctl(p->ep, EPOLL_CTL_ADD, ev.data.fd, &ev) < 0)
			fatal("epoll_ctl %s bus: %s", p->backends[i].ops->name, strerror(errno));
	}

	memset(&ac, 0, sizeof ac);
	ac.workers = cfg->actor_workers;
	ac.mailbox = cfg->actor_mailbox;
	ac.retries = cfg->actor_retries;
	ac.backoff_ms = cfg->actor_backoff_ms;
	ac.idle_ms = cfg->actor_idle_ms;
	ac.batch = 1;
	p->pool = actor_pool_new(&ac, &ops, p);
	if ((rc = pthread_create(&p->loop, NULL, park_loop, p)) != 0)
		fatal("pthread_create: %s", strerror(rc));
	return p;
}

void
park_shutdown(struct park *p)
{
	struct waiter **all;
	size_t i, n;

	pthread_mutex_lock(&p->lock);
	p->stopping = 1;
	n = p->nheap;
	all = xcalloc(n + 1, sizeof *all);
	for (i = 0; i < n; i++) {
		/* The heap's last entry is the cheapest to remove. */
		all[i] = p->heap[p->nheap - 1];
		park_claim_locked(p, all[i]);
	}
	p->loop_stop = 1;
	pthread_mutex_unlock(&p->lock);

	park_kick(p);
	pthread_join(p->loop, NULL);
	for (i = 0; i < n; i++) {
		metrics_add(p->m, M_POLLS_TIMED_OUT, 1);
		park_answer_empty_mode(p, all[i], HTTP_RAW_NOWAIT);
		waiter_unref(all[i]);
	}
	free(all);
	if (n > 0)
		log_info("answered %zu parked polls at shutdown", n);
}

void
park_free(struct park *p)
{
	struct park_key *pk, *next;
	size_t i;

	if (p == NULL)
		return;
	actor_pool_free(p->pool);
	for (i = 0; i < p->nbuckets; i++) {
		for (pk = p->buckets[i]; pk != NULL; pk = next) {
			next = pk->hnext;
			free(pk);
		}
	}
	free(p->buckets);
	free(p->heap);
	free(p->byfd);
	close(p->ep);
	close(p->evfd);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

size_t
park_count(struct park *p)
{
	size_t n;

	pthread_mutex_lock(&p->lock);
	n = p->nheap;
	pthread_mutex_unlock(&p->lock);
	return n;
}

char *
park_metrics(struct park *p, const char *prefix)
{
	struct actor_stats as;
	struct bus_stats bs;
	char *buf, *rm;
	size_t len, i;
	uint64_t cum = 0;
	FILE *f;

	actor_pool_stats(p->pool, &as);
	bus_stats(p->bus, &bs);
	if ((f = open_memstream(&buf, &len)) == NULL)
		fatal("open_memstream failed");
#define PM(name, type, help, val) \
	fprintf(f, "# HELP %s_%s %s\n# TYPE %s_%s %s\n%s_%s %llu\n", prefix, name, help, \
	    prefix, name, type, prefix, name, (unsigned long long)(val))
	PM("actor_processed_total", "counter", "worker messages handled", as.processed);
	PM("actor_failed_total", "counter", "worker messages escalated", as.failed);
	PM("actor_rejected_total", "counter", "worker messages refused (mailbox full)", as.rejected);
	PM("actor_actors", "gauge", "live actors", as.actors);
	PM("actor_queued", "gauge", "worker messages waiting", as.queued);
	PM("bus_sent_total", "counter", "bus hints handed to a peer", bs.sent);
	PM("bus_dropped_total", "counter", "bus hints a full peer lost", bs.dropped);
	PM("bus_peers", "gauge", "processes on the bus", bs.peers);
	PM("bus_refused_total", "counter", "bus connections of another uid refused unread",
	    bs.refused);
	PM("bus_lost_total", "counter", "times a peer said it dropped hints for us (all waiters re-read)",
	    bs.lost);
	PM("polls_waiting", "gauge", "long polls in the wait table", park_count(p));
	PM("polls_replaced_total", "counter",
	    "parked polls answered empty for a newer poll of the same user and device",
	    __atomic_load_n(&p->replaced, __ATOMIC_RELAXED));
	PM("polls_unwritable_total", "counter",
	    "answers of the loop or of shutdown cut: the web server's socket did not take them at once",
	    __atomic_load_n(&p->unwritable, __ATOMIC_RELAXED));
	PM("polls_evicted_total", "counter",
	    "parked polls answered empty for a newer poll past fcgi.max_parked_per_user",
	    __atomic_load_n(&p->evicted, __ATOMIC_RELAXED));
#undef PM
	fprintf(f, "# HELP %s_wake_seconds parked polls: from the hint to the answer written\n"
	    "# TYPE %s_wake_seconds histogram\n", prefix, prefix);
	for (i = 0; i <= PARK_HIST_N; i++) {
		cum += __atomic_load_n(&p->wake_hist[i], __ATOMIC_RELAXED);
		if (i < PARK_HIST_N)
			fprintf(f, "%s_wake_seconds_bucket{le=\"%g\"} %llu\n", prefix,
			    (double)park_hist_us[i] / 1e6, (unsigned long long)cum);
		else
			fprintf(f, "%s_wake_seconds_bucket{le=\"+Inf\"} %llu\n", prefix,
			    (unsigned long long)cum);
	}
	fprintf(f, "%s_wake_seconds_sum %.6f\n%s_wake_seconds_count %llu\n", prefix,
	    (double)__atomic_load_n(&p->wake_sum_us, __ATOMIC_RELAXED) / 1e6, prefix,
	    (unsigned long long)cum);
	rm = redis_metrics(redis_of_bus(p->bus), prefix);
	fputs(rm, f);
	free(rm);
	fclose(f);
	return buf;
}
