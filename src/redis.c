/* redis.c - the Redis bridge: hints to and from the other hosts over pub/sub, on its own thread. */
#include <sys/eventfd.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

#include "bus.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "redis.h"
#include "xmalloc.h"

/*
 * A message on Redis:
 *   0   8 bytes naming the publishing host (its origin)
 *   8   the time it was published, ms since the epoch, 8 bytes little-endian
 *   16  one record of the local bus's wire format (bus_encode; bus_decode, which the fuzzer covers)
 *   end 32 bytes: HMAC-SHA256 of everything before, with the bridge's key
 * The key is HMAC-SHA256(auth.jwt_secret, "parley redis bridge 1"): every host has the secret,
 * a client that can only talk to Redis has not, so it cannot forge an event that a receiver
 * would push inline (typing, presence, inline content), nor replay one later than redis.max_age.
 */
#define REDIS_ORIGIN		8
#define REDIS_TS		8
#define REDIS_MAC		32
#define REDIS_HDR		(REDIS_ORIGIN + REDIS_TS)
#define REDIS_MSG_MAX		(REDIS_HDR + BUS_DGRAM_MAX + REDIS_MAC)
/* The bridge's clock: reconnects, PINGs, fallback rechecks and unsubscribes run on it. */
#define REDIS_TICK_MS		100
#define REDIS_BACKOFF_MIN_MS	100
#define REDIS_BACKOFF_MAX_MS	2000
/* A PING on the publishing connection this often; no answer within redis.timeout_ms: reconnect. */
#define REDIS_PING_MS		1000
#define REDIS_ROOM_BUCKETS	1024
#define REDIS_CHAN_MAX		(CONFIG_REDIS_PREFIX_MAX + 16 + PARLEY_ID_MAX)

enum redis_chan_state {
	RC_NONE = 0,
	RC_SUBSCRIBING,		/* SUBSCRIBE sent, no answer yet */
	RC_SUBSCRIBED,
	RC_UNSUBSCRIBING	/* UNSUBSCRIBE sent: never SUBSCRIBE again before its answer */
};

/*
 * One channel: its listeners (n, zero_ms: written under lock, atomically, so that the loop thread
 * may read them without it), its place on the changed list (under lock) and its subscription
 * (loop thread).
 */
struct redis_chan {
	uint32_t		 n;
	uint8_t			 queued;	/* lock: on r->changed */
	uint8_t			 state;		/* loop thread */
	uint8_t			 lingering;	/* loop thread: on r->linger */
	int64_t			 zero_ms;	/* when n fell to 0 */
	struct redis_chan	*cnext;		/* lock: the changed list */
	struct redis_chan	*lnext;		/* loop thread: the linger list */
};

struct redis_room {
	struct redis_room	*next;
	struct redis_chan	 ch;
	char			 name[PARLEY_ID_MAX + 1];
};

/* A hint waiting to be published, or received and waiting for the owner. */
struct redis_item {
	struct redis_item	*next;
	enum bus_topic		 topic;
	uint64_t		 seq;
	size_t			 len;
	char			 key[PARLEY_ID_MAX + 1];
	char			 payload[];	/* len bytes and a NUL */
};

struct redis_queue {
	struct redis_item	*head, *tail;
	size_t			 n;
};

/* Which connection a hello (AUTH or PING) answer is for. */
#define REDIS_PUB	((void *)1)
#define REDIS_SUB	((void *)2)

struct redis {
	/* Read-only after redis_new. */
	char			*host;		/* NULL: path */
	int			 port;
	char			*path;
	char			*user;
	char			*password;
	char			*prefix;
	unsigned		 nslots;
	int64_t			 fallback_ms;
	int64_t			 timeout_ms;
	int64_t			 linger_ms;	/* a channel outlives its last listener this long */
	size_t			 queue_max;
	int64_t			 max_age_ms;	/* older (or newer: clocks) messages are refused */
	size_t			 inflight_max;	/* PUBLISHes unanswered; past it hints wait */
	size_t			 recv_max;	/* received, not yet taken; past it dropped (BUS_LOST) */
	int			 inline_content;
	unsigned char		 origin[REDIS_ORIGIN];
	unsigned char		 key[REDIS_MAC];	/* the messages' HMAC key */
	int			 evfd;		/* redis_fd */

	pthread_t		 thread;
	struct ev_loop		*loop;
	ev_async		 wake;
	ev_timer		 tick;
	ev_timer		 soon;

	pthread_mutex_t		 lock;		/* the fields below, up to "loop thread" */
	struct redis_chan	*slots;
	struct redis_room	*rooms[REDIS_ROOM_BUCKETS];
	struct redis_queue	 out;		/* to publish */
	int			 out_lost;	/* a publish was dropped: tell the other hosts */
	struct redis_queue	 in;		/* for the owner */
	int			 in_lost;	/* a received hint was dropped: BUS_LOST owed */
	int			 stop;
	struct redis_chan	*changed;	/* channels whose listeners went 0 -> 1 or 1 -> 0 */

	/* Loop thread only. */
	redisAsyncContext	*pub, *sub;
	int			 pub_ready, sub_ready;	/* hello answered */
	int			 sub_live;	/* ... and "PREFIX:all" subscribed: hints arrive */
	struct redis_chan	 all;		/* "<prefix>:all": every host's recheck requests */
	int64_t			 conn_ms;	/* when the current attempt started; 0: none */
	int64_t			 next_try_ms;
	int64_t			 backoff_ms;
	int			 attempts;
	int64_t			 ping_ms;	/* last PING sent */
	int			 ping_out;	/* ... and not yet answered */
	size_t			 inflight;
	int64_t			 full_ms;	/* last full re-read asked of the owner */
	int			 full_owed;	/* one is owed (at most one per redis.fallback_interval) */
	int			 full_after_subs; /* (re)connected: one full re-read once all is subscribed */
	int			 owe_lost;	/* hints were not published: PUBLISH a BUS_LOST to all */
	int			 reset_due;
	struct redis_chan	*linger;	/* no listener, still subscribed: until linger_ms */
	int			 resync;	/* (re)connected: every channel with listeners */
	size_t			 sub_pending;	/* (UN)SUBSCRIBEs sent, not yet confirmed */
	int64_t			 sub_progress_ms; /* last confirmation (or the first pending) */
	int			 was_up;	/* for logging state changes once */
	int			 warned;	/* said it is unreachable; quiet until it is back */

	/* Statistics (atomics). */
	uint64_t		 published, received, own, dropped, reconnects, rechecks, scoped;
	uint64_t		 auth_failures, malformed, forged, channels;
	int			 connected;
};

static void	redis_step(struct redis *);

static void
redis_count(uint64_t *c, uint64_t n)
{
	__atomic_add_fetch(c, n, __ATOMIC_RELAXED);
}

static uint64_t
redis_fnv(const void *p, size_t n, uint64_t h)
{
	const unsigned char *s = p;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

#define REDIS_FNV_INIT	14695981039346656037ULL

unsigned
redis_slot(const char *user, unsigned nslots)
{
	return (unsigned)(redis_fnv(user, strlen(user), REDIS_FNV_INIT) % (nslots > 0 ? nslots : 1));
}

/* Parse "redis://host[:port][/]", "redis://[v6]:port" or "unix:/path" into r. */
static int
redis_parse_url(struct redis *r, const char *url, char **cause)
{
	const char *h, *e, *colon;
	char *end;
	long port = 6379;

	if (strncmp(url, "unix:", 5) == 0) {
		h = url + 5;
		while (h[0] == '/' && h[1] == '/')
			h++;
		if (*h != '/') {
			xasprintf(cause, "redis.url %s: unix: needs an absolute path", url);
			return -1;
		}
		r->path = xstrdup(h);
		return 0;
	}
	if (strncmp(url, "redis://", 8) != 0) {
		xasprintf(cause, "redis.url %s: not redis://host[:port] or unix:/path", url);
		return -1;
	}
	h = url + 8;
	if (strchr(h, '@') != NULL) {
		xasprintf(cause, "redis.url: put the credentials in redis.user and redis.password");
		return -1;
	}
	if (*h == '[') {
		if ((e = strchr(h, ']')) == NULL)
			goto bad;
		r->host = xstrndup(h + 1, (size_t)(e - h - 1));
		colon = e[1] == ':' ? e + 1 : NULL;
		e++;
	} else {
		e = h + strcspn(h, ":/");
		r->host = xstrndup(h, (size_t)(e - h));
		colon = *e == ':' ? e : NULL;
	}
	if (colon != NULL) {
		errno = 0;
		port = strtol(colon + 1, &end, 10);
		if (errno != 0 || end == colon + 1 || port < 1 || port > 65535)
			goto bad;
		e = end;
	}
	if (*e == '/')
		e++;
	if (*e != '\0' || r->host[0] == '\0')
		goto bad;
	r->port = (int)port;
	return 0;
bad:
	xasprintf(cause, "redis.url %s: not redis://host[:port] or unix:/path", url);
	return -1;
}

/* This host's name on Redis: its host id (bus_host_id), hashed to REDIS_ORIGIN bytes. */
static void
redis_origin(struct redis *r, const char *host_id)
{
	uint64_t h = redis_fnv(host_id, strlen(host_id), REDIS_FNV_INIT);

	memcpy(r->origin, &h, sizeof r->origin);
}

/* --- queues (lock held) ------------------------------------------------------------------ */

static struct redis_item *
redis_item_new(enum bus_topic topic, const char *key, uint64_t seq, const char *payload,
    size_t len)
{
	struct redis_item *it = xmalloc(sizeof *it + len + 1);

	it->next = NULL;
	it->topic = topic;
	it->seq = seq;
	it->len = len;
	snprintf(it->key, sizeof it->key, "%s", key);
	if (len > 0)
		memcpy(it->payload, payload, len);
	it->payload[len] = '\0';
	return it;
}

static void
redis_queue_push(struct redis_queue *q, struct redis_item *it)
{
	it->next = NULL;
	if (q->tail != NULL)
		q->tail->next = it;
	else
		q->head = it;
	q->tail = it;
	q->n++;
}

static struct redis_item *
redis_queue_pop(struct redis_queue *q)
{
	struct redis_item *it = q->head;

	if (it != NULL) {
		if ((q->head = it->next) == NULL)
			q->tail = NULL;
		q->n--;
	}
	return it;
}

static void
redis_queue_free(struct redis_queue *q)
{
	struct redis_item *it;

	while ((it = redis_queue_pop(q)) != NULL)
		free(it);
}

/* Hand one hint to the owner (any thread that holds no lock). */
static void
redis_deliver(struct redis *r, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	uint64_t one = 1;
	int was_empty;

	pthread_mutex_lock(&r->lock);
	if (r->in.n >= r->recv_max) {
		r->in_lost = 1;
		pthread_mutex_unlock(&r->lock);
		return;
	}
	was_empty = r->in.n == 0;
	redis_queue_push(&r->in, redis_item_new(topic, key, seq, payload, len));
	pthread_mutex_unlock(&r->lock);
	if (was_empty && write(r->evfd, &one, sizeof one) < 0 && errno != EAGAIN)
		log_warn("redis: eventfd: %s", strerror(errno));
}

/* Ask every waiter of the owner to re-read MySQL (loop thread; redis_step rate-limits it). */
static void
redis_recheck(struct redis *r)
{
	redis_count(&r->rechecks, 1);
	redis_deliver(r, BUS_LOST, "", 0, NULL, 0);
}

/*
 * A channel's subscription took effect: only its listeners re-read what was published before
 * (a room: BUS_ROOM without seq; a slot: BUS_LOST with key "slot" and the slot as seq).
 */
static void
redis_recheck_channel(struct redis *r, const char *name, size_t len)
{
	size_t plen = strlen(r->prefix) + 1;
	char key[PARLEY_ID_MAX + 1], num[16], *end;
	unsigned long v;

	if (len <= plen + 2 || len - plen - 2 > PARLEY_ID_MAX)
		return;
	memcpy(key, name + plen + 2, len - plen - 2);
	key[len - plen - 2] = '\0';
	redis_count(&r->scoped, 1);
	if (name[plen] == 'r') {
		redis_deliver(r, BUS_ROOM, key, 0, NULL, 0);
	} else if (strlen(key) < sizeof num) {
		v = strtoul(key, &end, 10);
		if (*end == '\0')
			redis_deliver(r, BUS_LOST, "slot", v, NULL, 0);
	}
}

/* --- channels ------------------------------------------------------------------------------ */

static size_t
redis_room_bucket(const char *room)
{
	return redis_fnv(room, strlen(room), REDIS_FNV_INIT) % REDIS_ROOM_BUCKETS;
}

/* The room's entry, created when create is set (lock held). */
static struct redis_room *
redis_room_get(struct redis *r, const char *room, int create)
{
	struct redis_room *rm;
	size_t b = redis_room_bucket(room);

	for (rm = r->rooms[b]; rm != NULL; rm = rm->next) {
		if (strcmp(rm->name, room) == 0)
			return rm;
	}
	if (!create)
		return NULL;
	rm = xcalloc(1, sizeof *rm);
	snprintf(rm->name, sizeof rm->name, "%s", room);
	rm->next = r->rooms[b];
	r->rooms[b] = rm;
	return rm;
}

/* The channel a hint travels on. */
static void
redis_channel(const struct redis *r, enum bus_topic topic, const char *key, char *buf, size_t sz)
{
	if (topic == BUS_ROOM)
		snprintf(buf, sz, "%s:r:%s", r->prefix, key);
	else if (topic == BUS_LOST)
		snprintf(buf, sz, "%s:all", r->prefix);
	else
		snprintf(buf, sz, "%s:u:%u", r->prefix, redis_slot(key, r->nslots));
}

/* The channel state named by a subscription answer (loop thread; lock held), or NULL. */
static struct redis_chan *
redis_chan_find(struct redis *r, const char *name, size_t len)
{
	size_t plen = strlen(r->prefix);
	struct redis_room *rm;
	char room[PARLEY_ID_MAX + 1];
	unsigned long v;
	char num[16], *end;

	if (len <= plen + 2 || memcmp(name, r->prefix, plen) != 0 || name[plen] != ':')
		return NULL;
	name += plen + 1;
	len -= plen + 1;
	if (len == 3 && memcmp(name, "all", 3) == 0)
		return &r->all;
	if (len > 2 && memcmp(name, "u:", 2) == 0 && len - 2 < sizeof num) {
		memcpy(num, name + 2, len - 2);
		num[len - 2] = '\0';
		v = strtoul(num, &end, 10);
		return *end == '\0' && v < r->nslots ? &r->slots[v] : NULL;
	}
	if (len > 2 && memcmp(name, "r:", 2) == 0 && len - 2 <= PARLEY_ID_MAX) {
		memcpy(room, name + 2, len - 2);
		room[len - 2] = '\0';
		rm = redis_room_get(r, room, 0);
		return rm != NULL ? &rm->ch : NULL;
	}
	return NULL;
}

/* Put ch on the changed list for the loop thread (lock held). */
static void
redis_chan_queue(struct redis *r, struct redis_chan *ch)
{
	if (ch->queued)
		return;
	ch->queued = 1;
	ch->cnext = r->changed;
	r->changed = ch;
}

void
redis_listen(struct redis *r, enum bus_topic topic, const char *key, int delta)
{
	struct redis_chan *ch;
	struct redis_room *rm;
	uint32_t old, n;
	int wake = 0;

	if (r == NULL || key == NULL || strlen(key) > PARLEY_ID_MAX ||
	    (topic != BUS_USER_EVENT && topic != BUS_USER_EPHEMERAL && topic != BUS_ROOM))
		return;
	pthread_mutex_lock(&r->lock);
	if (topic == BUS_ROOM) {
		rm = redis_room_get(r, key, delta > 0);
		ch = rm != NULL ? &rm->ch : NULL;
	} else {
		ch = &r->slots[redis_slot(key, r->nslots)];
	}
	if (ch != NULL) {
		old = ch->n;
		if (delta > 0) {
			n = old + (uint32_t)delta;
		} else if (old >= (uint32_t)-delta) {
			n = old - (uint32_t)-delta;
		} else {
			log_warn("redis: listener count of %s went below zero", key);
			n = 0;
		}
		if (n == 0 && old != 0)
			__atomic_store_n(&ch->zero_ms, parley_mono_ms(), __ATOMIC_RELAXED);
		__atomic_store_n(&ch->n, n, __ATOMIC_RELAXED);
		/* Only a channel that gained its first listener or lost its last needs a look. */
		if ((n == 0) != (old == 0)) {
			wake = n > 0;
			redis_chan_queue(r, ch);
		}
	}
	pthread_mutex_unlock(&r->lock);
	/* A first listener: subscribe now, not at the next tick. */
	if (wake)
		ev_async_send(r->loop, &r->wake);
}

/* --- the loop thread: connections -------------------------------------------------------- */

static void
redis_set_connected(struct redis *r)
{
	int up = r->pub_ready && r->sub_live;

	__atomic_store_n(&r->connected, up, __ATOMIC_RELAXED);
	if (up)
		r->warned = 0;
	if (up && !r->was_up)
		log_info("redis: connected to %s%s", r->host != NULL ? r->host : r->path,
		    r->attempts > 1 ? " again" : "");
	r->was_up = up;
}

/* Run redis_step soon, outside the hiredis callback that asks. */
static void
redis_soon(struct redis *r)
{
	if (!ev_is_active(&r->soon)) {
		ev_timer_set(&r->soon, 0., 0.);
		ev_timer_start(r->loop, &r->soon);
	}
}

/* Every channel is unsubscribed now (the connection is gone). */
static void
redis_chans_reset(struct redis *r)
{
	struct redis_room *rm;
	size_t i;

	struct redis_chan *ch;

	/* state is the loop thread's: no lock for the slots; the room table's shape needs it. */
	r->all.state = RC_NONE;
	for (i = 0; i < r->nslots; i++)
		r->slots[i].state = RC_NONE;
	pthread_mutex_lock(&r->lock);
	for (i = 0; i < REDIS_ROOM_BUCKETS; i++) {
		for (rm = r->rooms[i]; rm != NULL; rm = rm->next)
			rm->ch.state = RC_NONE;
	}
	pthread_mutex_unlock(&r->lock);
	while ((ch = r->linger) != NULL) {
		r->linger = ch->lnext;
		ch->lingering = 0;
	}
	r->resync = 1;
	__atomic_store_n(&r->channels, 0, __ATOMIC_RELAXED);
}

/* Close both connections (hiredis calls the pending callbacks with NULL); retry after a backoff. */
static void
redis_teardown(struct redis *r, int64_t now)
{
	redisAsyncContext *ac;

	if ((ac = r->pub) != NULL) {
		r->pub = NULL;
		redisAsyncFree(ac);
	}
	if ((ac = r->sub) != NULL) {
		r->sub = NULL;
		redisAsyncFree(ac);
	}
	if (r->was_up || !r->warned)
		log_warn("redis: %s %s; rechecking MySQL every %" PRId64 " ms until it is back",
		    r->host != NULL ? r->host : r->path, r->was_up ? "lost" : "unreachable",
		    r->fallback_ms);
	r->warned = 1;
	r->pub_ready = r->sub_ready = r->sub_live = 0;
	redis_set_connected(r);
	/* What was in flight may be lost: the other hosts re-read (only then: no storm). */
	if (r->inflight > 0)
		r->owe_lost = 1;
	r->inflight = 0;
	r->sub_pending = 0;
	r->ping_out = 0;
	r->conn_ms = 0;
	r->reset_due = 0;
	r->full_after_subs = 1;
	redis_chans_reset(r);
	r->next_try_ms = now + r->backoff_ms;
	r->backoff_ms = r->backoff_ms * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS :
	    r->backoff_ms * 2;
}

static void
redis_on_connect(const redisAsyncContext *ac, int status)
{
	struct redis *r = ac->data;

	if (status == REDIS_OK)
		return;
	log_debug("redis: connect: %s", ac->errstr);
	/* hiredis frees the context after this callback. */
	if (ac == r->pub)
		r->pub = NULL;
	if (ac == r->sub)
		r->sub = NULL;
	r->reset_due = 1;
	redis_soon(r);
}

static void
redis_on_disconnect(const redisAsyncContext *ac, int status)
{
	struct redis *r = ac->data;

	(void)status;
	if (ac == r->pub)
		r->pub = NULL;
	else if (ac == r->sub)
		r->sub = NULL;
	else
		return;		/* our own redisAsyncFree */
	log_debug("redis: connection lost: %s", ac->errstr[0] != '\0' ? ac->errstr : "closed");
	r->reset_due = 1;
	redis_soon(r);
}

/* The answer to a connection's first command (AUTH, or PING without a password). */
static void
redis_on_hello(redisAsyncContext *ac, void *reply, void *which)
{
	struct redis *r = ac->data;
	redisReply *rep = reply;

	if (rep == NULL)
		return;
	if (rep->type == REDIS_REPLY_ERROR) {
		if (which == REDIS_PUB) {
			redis_count(&r->auth_failures, 1);
			if (!r->warned)
				log_warn("redis: %s refused us: %s",
				    r->host != NULL ? r->host : r->path, rep->str);
		}
		r->reset_due = 1;
	} else if (which == REDIS_PUB) {
		r->pub_ready = 1;
		r->ping_ms = parley_mono_ms();
	} else {
		r->sub_ready = 1;
	}
	redis_set_connected(r);
	redis_soon(r);
}

static void
redis_on_ping(redisAsyncContext *ac, void *reply, void *arg)
{
	struct redis *r = ac->data;

	(void)arg;
	if (reply != NULL)
		r->ping_out = 0;
}

static void
redis_on_publish(redisAsyncContext *ac, void *reply, void *arg)
{
	struct redis *r = ac->data;
	redisReply *rep = reply;

	(void)arg;
	if (rep == NULL)
		return;
	if (r->inflight > 0)
		r->inflight--;
	if (rep->type == REDIS_REPLY_ERROR) {
		redis_count(&r->dropped, 1);
		r->owe_lost = 1;
		log_debug("redis: PUBLISH: %s", rep->str);
	} else {
		redis_count(&r->published, 1);
	}
}

/* The MAC of the first len bytes of a message. */
static void
redis_mac(const struct redis *r, const unsigned char *msg, size_t len, unsigned char *out)
{
	unsigned int n = REDIS_MAC;

	if (HMAC(EVP_sha256(), r->key, REDIS_MAC, msg, len, out, &n) == NULL)
		fatal("redis: HMAC failed");
}

/* A message from a channel: one record of another host, checked. */
static void
redis_message(struct redis *r, const char *data, size_t len)
{
	const unsigned char *m = (const unsigned char *)data;
	unsigned char mac[REDIS_MAC];
	struct bus_hint *h;
	int64_t ts, now;
	uint64_t v;
	int i;

	if (len < REDIS_HDR + REDIS_MAC) {
		redis_count(&r->malformed, 1);
		return;
	}
	if (memcmp(m, r->origin, REDIS_ORIGIN) == 0) {
		redis_count(&r->own, 1);	/* our host's local bus carried it */
		return;
	}
	len -= REDIS_MAC;
	redis_mac(r, m, len, mac);
	for (i = REDIS_TS, v = 0; i-- > 0;)
		v = v << 8 | m[REDIS_ORIGIN + i];
	ts = (int64_t)v;
	now = parley_now_ms();
	if (CRYPTO_memcmp(mac, m + len, REDIS_MAC) != 0 ||
	    ts < now - r->max_age_ms || ts > now + r->max_age_ms) {
		redis_count(&r->forged, 1);
		return;
	}
	h = xmalloc(sizeof *h);
	if (bus_decode(m + REDIS_HDR, len - REDIS_HDR, h) != 0 ||
	    h->topic == BUS_SHUTDOWN) {
		redis_count(&r->malformed, 1);
	} else {
		redis_count(&r->received, 1);
		if (h->topic == BUS_LOST) {
			/* Another host lost hints: one full re-read, rate-limited (redis_step). */
			r->full_owed = 1;
			redis_soon(r);
		} else {
			redis_deliver(r, h->topic, h->key, h->seq, h->payload, h->len);
		}
	}
	free(h);
}

/* Every answer on the subscription connection: messages and (un)subscribe confirmations. */
static void
redis_on_sub(redisAsyncContext *ac, void *reply, void *arg)
{
	struct redis *r = ac->data;
	redisReply *rep = reply, **e;
	struct redis_chan *ch;
	const char *kind;
	int scoped = 0;

	(void)arg;
	if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3)
		return;
	e = rep->element;
	if (e[0]->type != REDIS_REPLY_STRING || e[1]->type != REDIS_REPLY_STRING)
		return;
	kind = e[0]->str;
	if (strcmp(kind, "message") == 0) {
		if (e[2]->type == REDIS_REPLY_STRING)
			redis_message(r, e[2]->str, e[2]->len);
		return;
	}
	pthread_mutex_lock(&r->lock);
	ch = redis_chan_find(r, e[1]->str, e[1]->len);
	if (r->sub_pending > 0 &&
	    (strcmp(kind, "subscribe") == 0 || strcmp(kind, "unsubscribe") == 0)) {
		r->sub_pending--;
		r->sub_progress_ms = parley_mono_ms();
	}
	if (ch != NULL && strcmp(kind, "subscribe") == 0 && ch->state == RC_SUBSCRIBING) {
		ch->state = RC_SUBSCRIBED;
		redis_count(&r->channels, 1);
		if (ch == &r->all) {
			/* Subscriptions work: the connection is up (not only authenticated). */
			r->sub_live = 1;
			r->backoff_ms = REDIS_BACKOFF_MIN_MS;
			redis_set_connected(r);
		}
		/*
		 * What was published before this took effect: its listeners re-read. After a
		 * (re)connect, one full re-read once every channel is back stands for them all.
		 */
		if (ch != &r->all && !r->full_after_subs)
			scoped = 1;
	} else if (ch != NULL && strcmp(kind, "unsubscribe") == 0 &&
	    ch->state == RC_UNSUBSCRIBING) {
		ch->state = RC_NONE;
		__atomic_sub_fetch(&r->channels, 1, __ATOMIC_RELAXED);
		/* A listener came back while it was going: subscribe again. */
		if (ch->n > 0)
			redis_chan_queue(r, ch);
	}
	pthread_mutex_unlock(&r->lock);
	if (scoped)
		redis_recheck_channel(r, e[1]->str, e[1]->len);
	if (r->full_after_subs && r->sub_live && r->sub_pending == 0) {
		r->full_after_subs = 0;
		r->full_owed = 1;
	}
	redis_soon(r);
}

/* The first command of a new connection: AUTH [user] password, or PING. */
static int
redis_hello(struct redis *r, redisAsyncContext *ac, void *which)
{
	if (r->password == NULL)
		return redisAsyncCommand(ac, redis_on_hello, which, "PING");
	if (r->user != NULL)
		return redisAsyncCommand(ac, redis_on_hello, which, "AUTH %s %s", r->user,
		    r->password);
	return redisAsyncCommand(ac, redis_on_hello, which, "AUTH %s", r->password);
}

static redisAsyncContext *
redis_open(struct redis *r, void *which)
{
	redisAsyncContext *ac;

	ac = r->path != NULL ? redisAsyncConnectUnix(r->path) : redisAsyncConnect(r->host, r->port);
	if (ac == NULL)
		fatal("redis: out of memory");
	if (ac->err) {
		log_debug("redis: connect: %s", ac->errstr);
		redisAsyncFree(ac);
		return NULL;
	}
	ac->data = r;
	if (redisLibevAttach(r->loop, ac) != REDIS_OK) {
		redisAsyncFree(ac);
		return NULL;
	}
	redisAsyncSetConnectCallback(ac, redis_on_connect);
	redisAsyncSetDisconnectCallback(ac, redis_on_disconnect);
	if (redis_hello(r, ac, which) != REDIS_OK) {
		redisAsyncFree(ac);
		return NULL;
	}
	return ac;
}

static void
redis_connect(struct redis *r, int64_t now)
{
	if (r->attempts++ > 0)
		redis_count(&r->reconnects, 1);
	r->conn_ms = now;
	r->pub = redis_open(r, REDIS_PUB);
	r->sub = r->pub != NULL ? redis_open(r, REDIS_SUB) : NULL;
	if (r->pub == NULL || r->sub == NULL)
		redis_teardown(r, now);
}

/* --- the loop thread: subscriptions and publishes ---------------------------------------- */

/* The channel's name on Redis (loop thread; ch is a slot, a room or "all"). */
static void
redis_chan_name(const struct redis *r, const struct redis_chan *ch, char *buf, size_t sz)
{
	const struct redis_room *rm;

	if (ch == &r->all) {
		redis_channel(r, BUS_LOST, "", buf, sz);
	} else if (ch >= r->slots && ch < r->slots + r->nslots) {
		snprintf(buf, sz, "%s:u:%zu", r->prefix, (size_t)(ch - r->slots));
	} else {
		rm = (const struct redis_room *)((const char *)ch - offsetof(struct redis_room, ch));
		redis_channel(r, BUS_ROOM, rm->name, buf, sz);
	}
}

static int
redis_chan_is_room(const struct redis *r, const struct redis_chan *ch)
{
	return ch != &r->all && !(ch >= r->slots && ch < r->slots + r->nslots);
}

/*
 * Bring one channel's subscription in line with its listeners (n and zero_ms as read under the
 * lock or atomically); a channel without listeners that is still subscribed goes on the linger
 * list. Loop thread, lock not held: hiredis is called here.
 */
static void
redis_chan_sync(struct redis *r, struct redis_chan *ch, uint32_t n, int64_t zero_ms, int64_t now)
{
	int want = n > 0 || now - zero_ms < r->linger_ms;
	char name[REDIS_CHAN_MAX];

	if (n == 0 && ch->state != RC_NONE && !ch->lingering) {
		ch->lingering = 1;
		ch->lnext = r->linger;
		r->linger = ch;
	}
	if (want && ch->state == RC_NONE) {
		redis_chan_name(r, ch, name, sizeof name);
		if (redisAsyncCommand(r->sub, redis_on_sub, NULL, "SUBSCRIBE %s", name) != REDIS_OK)
			return;
		ch->state = RC_SUBSCRIBING;
	} else if (!want && ch->state == RC_SUBSCRIBED) {
		redis_chan_name(r, ch, name, sizeof name);
		if (redisAsyncCommand(r->sub, NULL, NULL, "UNSUBSCRIBE %s", name) != REDIS_OK)
			return;
		ch->state = RC_UNSUBSCRIBING;
	} else {
		return;
	}
	if (r->sub_pending++ == 0)
		r->sub_progress_ms = now;
}

/*
 * Free a room nobody listens to, that no list holds and that is not subscribed (loop thread).
 * 1 when it was freed.
 */
static int
redis_room_gc(struct redis *r, struct redis_chan *ch, int64_t now)
{
	struct redis_room *rm, **pp;
	int freed = 0;

	if (!redis_chan_is_room(r, ch) || ch->state != RC_NONE || ch->lingering)
		return 0;
	rm = (struct redis_room *)((char *)ch - offsetof(struct redis_room, ch));
	pthread_mutex_lock(&r->lock);
	if (ch->n == 0 && !ch->queued && now - ch->zero_ms >= r->linger_ms) {
		for (pp = &r->rooms[redis_room_bucket(rm->name)]; *pp != NULL; pp = &(*pp)->next) {
			if (*pp == rm) {
				*pp = rm->next;
				free(rm);
				freed = 1;
				break;
			}
		}
	}
	pthread_mutex_unlock(&r->lock);
	return freed;
}

struct redis_snap {
	struct redis_chan	*ch;
	uint32_t		 n;
	int64_t			 zero_ms;
};

/*
 * Subscribe what local listeners need, unsubscribe what nobody needed for redis.linger_ms. Under
 * the lock only the changed list is taken and the lingering channels' counts copied (both short);
 * the subscriptions are sent outside it. After a (re)connect every channel with listeners once:
 * the slots read without the lock (their counts are atomic), the rooms copied under it.
 */
static void
redis_reconcile(struct redis *r, int64_t now)
{
	struct redis_snap *v = NULL;
	struct redis_chan *ch, **pp;
	struct redis_room *rm;
	size_t i, j, n = 0, cap = 0;
	uint32_t cnt;

	r->all.n = 1;	/* always: recheck requests of the other hosts */
	redis_chan_sync(r, &r->all, 1, 0, now);
#define SNAP(c, cn, z) do {						\
		if (n == cap) {						\
			cap = cap ? cap * 2 : 64;			\
			v = xreallocarray(v, cap, sizeof *v);		\
		}							\
		v[n].ch = (c);						\
		v[n].n = (cn);						\
		v[n++].zero_ms = (z);					\
	} while (0)
	if (r->resync) {
		r->resync = 0;
		for (i = 0; i < r->nslots; i++) {
			cnt = __atomic_load_n(&r->slots[i].n, __ATOMIC_RELAXED);
			if (cnt > 0)
				SNAP(&r->slots[i], cnt, 0);
		}
		pthread_mutex_lock(&r->lock);
		for (i = 0; i < REDIS_ROOM_BUCKETS; i++) {
			for (rm = r->rooms[i]; rm != NULL; rm = rm->next)
				SNAP(&rm->ch, rm->ch.n, rm->ch.zero_ms);
		}
		pthread_mutex_unlock(&r->lock);
	}
	pthread_mutex_lock(&r->lock);
	while ((ch = r->changed) != NULL) {
		r->changed = ch->cnext;
		ch->queued = 0;
		SNAP(ch, ch->n, ch->zero_ms);
	}
	for (ch = r->linger; ch != NULL; ch = ch->lnext)
		SNAP(ch, ch->n, ch->zero_ms);
	pthread_mutex_unlock(&r->lock);
#undef SNAP
	/* Off the linger list: listeners again, or unsubscribed (then a room may go). */
	for (pp = &r->linger; (ch = *pp) != NULL;) {
		if (ch->state == RC_NONE || __atomic_load_n(&ch->n, __ATOMIC_RELAXED) > 0) {
			*pp = ch->lnext;
			ch->lingering = 0;
		} else {
			pp = &ch->lnext;
		}
	}
	for (i = 0; i < n; i++)
		redis_chan_sync(r, v[i].ch, v[i].n, v[i].zero_ms, now);
	/* A channel may be in v twice (changed and lingering): none after it is freed. */
	for (i = 0; i < n; i++) {
		if (v[i].ch == NULL || v[i].n != 0 || !redis_room_gc(r, v[i].ch, now))
			continue;
		for (j = i + 1; j < n; j++) {
			if (v[j].ch == v[i].ch)
				v[j].ch = NULL;
		}
	}
	free(v);
}

/* While we cannot subscribe: forget the changes (a reconnect looks at everything) and drop the
 * rooms nobody listens to any more. */
static void
redis_rooms_prune(struct redis *r, int64_t now)
{
	struct redis_room *rm, **pp;
	struct redis_chan *ch;
	size_t i;

	pthread_mutex_lock(&r->lock);
	while ((ch = r->changed) != NULL) {
		r->changed = ch->cnext;
		ch->queued = 0;
	}
	for (i = 0; i < REDIS_ROOM_BUCKETS; i++) {
		for (pp = &r->rooms[i]; (rm = *pp) != NULL;) {
			if (rm->ch.n == 0 && !rm->ch.lingering &&
			    now - rm->ch.zero_ms >= r->linger_ms) {
				*pp = rm->next;
				free(rm);
			} else {
				pp = &rm->next;
			}
		}
	}
	pthread_mutex_unlock(&r->lock);
}

static int
redis_publish_one(struct redis *r, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	unsigned char msg[REDIS_MSG_MAX];
	char name[REDIS_CHAN_MAX];
	size_t n;

	int64_t ts = parley_now_ms();
	int i;

	redis_channel(r, topic, key, name, sizeof name);
	memcpy(msg, r->origin, REDIS_ORIGIN);
	for (i = 0; i < REDIS_TS; i++)
		msg[REDIS_ORIGIN + i] = (unsigned char)((uint64_t)ts >> (8 * i));
	n = REDIS_HDR + bus_encode(msg + REDIS_HDR, topic, key, strlen(key), seq, payload, len);
	redis_mac(r, msg, n, msg + n);
	if (redisAsyncCommand(r->pub, redis_on_publish, NULL, "PUBLISH %s %b", name, msg,
	    n + REDIS_MAC) != REDIS_OK)
		return -1;
	r->inflight++;
	return 0;
}

/* Publish what waits (or drop it while Redis is not there: the other hosts re-read MySQL). */
static void
redis_flush(struct redis *r)
{
	struct redis_queue q;
	struct redis_item *it;
	size_t room = r->inflight < r->inflight_max ? r->inflight_max - r->inflight : 0;

	pthread_mutex_lock(&r->lock);
	if (r->out_lost) {
		r->out_lost = 0;
		r->owe_lost = 1;
	}
	if (!r->pub_ready || r->out.n <= room) {
		q = r->out;
		memset(&r->out, 0, sizeof r->out);
	} else {
		/* Too slow an answer: the rest waits for room (and the queue bound). */
		memset(&q, 0, sizeof q);
		while (room-- > 0)
			redis_queue_push(&q, redis_queue_pop(&r->out));
	}
	pthread_mutex_unlock(&r->lock);

	if (!r->pub_ready) {
		if (q.n > 0) {
			redis_count(&r->dropped, q.n);
			r->owe_lost = 1;
		}
		redis_queue_free(&q);
		return;
	}
	if (r->owe_lost && redis_publish_one(r, BUS_LOST, "", 0, NULL, 0) == 0)
		r->owe_lost = 0;
	while ((it = redis_queue_pop(&q)) != NULL) {
		if (redis_publish_one(r, it->topic, it->key, it->seq, it->payload, it->len) != 0) {
			redis_count(&r->dropped, 1);
			r->owe_lost = 1;
		}
		free(it);
	}
}

/* Everything the bridge does, from its timers and wake-ups. */
static void
redis_step(struct redis *r)
{
	int64_t now = parley_mono_ms();

	if (r->reset_due)
		redis_teardown(r, now);
	if (r->pub == NULL && r->sub == NULL && now >= r->next_try_ms)
		redis_connect(r, now);
	else if ((r->pub == NULL) != (r->sub == NULL))
		redis_teardown(r, now);		/* one of the two went: start over */
	if (r->conn_ms != 0 && !(r->pub_ready && r->sub_live) &&
	    now - r->conn_ms > r->timeout_ms) {
		log_debug("redis: no answer within %" PRId64 " ms", r->timeout_ms);
		redis_teardown(r, now);
	}
	if (r->pub_ready) {
		if (r->ping_out && now - r->ping_ms > r->timeout_ms) {
			log_warn("redis: no PING answer within %" PRId64 " ms", r->timeout_ms);
			redis_teardown(r, now);
		} else if (!r->ping_out && now - r->ping_ms >= REDIS_PING_MS &&
		    redisAsyncCommand(r->pub, redis_on_ping, NULL, "PING") == REDIS_OK) {
			r->ping_out = 1;
			r->ping_ms = now;
		}
	}
	/* Subscriptions not confirmed (refused by an ACL, a stalled connection): start over. */
	if (r->sub_pending > 0 && now - r->sub_progress_ms > r->timeout_ms) {
		log_warn("redis: subscriptions not confirmed within %" PRId64 " ms", r->timeout_ms);
		redis_teardown(r, now);
	}
	if (r->sub_ready)
		redis_reconcile(r, now);
	else
		redis_rooms_prune(r, now);
	redis_flush(r);

	/* Full re-reads: every interval while not subscribed, else when owed; never more often. */
	if (!r->sub_live)
		r->full_owed = 1;
	if (r->full_owed && now - r->full_ms >= r->fallback_ms) {
		r->full_owed = 0;
		r->full_ms = now;
		redis_recheck(r);
	}
}

static void
redis_on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
	struct redis *r = w->data;
	int stop;

	(void)revents;
	pthread_mutex_lock(&r->lock);
	stop = r->stop;
	pthread_mutex_unlock(&r->lock);
	if (stop) {
		r->reset_due = 0;
		r->was_up = 0;	/* a shutdown, not an outage */
		r->warned = 1;
		redis_teardown(r, parley_mono_ms());
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	redis_step(r);
}

static void
redis_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	redis_step(w->data);
}

static void *
redis_thread(void *arg)
{
	struct redis *r = arg;

	redis_step(r);
	ev_run(r->loop, 0);
	return NULL;
}

/* --- the owner's side ----------------------------------------------------------------------- */

struct redis *
redis_new(const struct config *cfg, const char *host_id, char **cause)
{
	struct redis *r = xcalloc(1, sizeof *r);
	int rc;

	static const char label[] = "parley redis bridge 1";
	unsigned int klen = REDIS_MAC;

	if (cfg->redis_url == NULL || cfg->jwt_secret == NULL ||
	    (cfg->redis_user != NULL && cfg->redis_password == NULL) ||
	    (cfg->redis_prefix != NULL && strlen(cfg->redis_prefix) > CONFIG_REDIS_PREFIX_MAX) ||
	    redis_parse_url(r, cfg->redis_url, cause) != 0) {
		if (cfg->redis_url == NULL)
			xasprintf(cause, "redis.url is not set");
		else if (cfg->jwt_secret == NULL)
			xasprintf(cause, "auth.jwt_secret is needed: it keys the bridge's messages");
		else if (cfg->redis_user != NULL && cfg->redis_password == NULL)
			xasprintf(cause, "redis.user needs redis.password");
		else if (cfg->redis_prefix != NULL &&
		    strlen(cfg->redis_prefix) > CONFIG_REDIS_PREFIX_MAX)
			xasprintf(cause, "redis.prefix is longer than %d bytes", CONFIG_REDIS_PREFIX_MAX);
		free(r->host);
		free(r->path);
		free(r);
		return NULL;
	}
	r->user = cfg->redis_user != NULL ? xstrdup(cfg->redis_user) : NULL;
	r->password = cfg->redis_password != NULL ? xstrdup(cfg->redis_password) : NULL;
	r->prefix = xstrdup(cfg->redis_prefix != NULL ? cfg->redis_prefix : "parley");
	r->nslots = cfg->redis_slots > 0 ? (unsigned)cfg->redis_slots : 1024;
	r->fallback_ms = (int64_t)(cfg->redis_fallback_interval > 0 ? cfg->redis_fallback_interval : 1) * 1000;
	r->timeout_ms = cfg->redis_timeout_ms > 0 ? cfg->redis_timeout_ms : 1000;
	r->linger_ms = cfg->redis_linger_ms > 0 ? cfg->redis_linger_ms : 5000;
	r->queue_max = cfg->redis_queue > 0 ? (size_t)cfg->redis_queue : 65536;
	r->max_age_ms = (int64_t)(cfg->redis_max_age > 0 ? cfg->redis_max_age : 60) * 1000;
	r->inflight_max = cfg->redis_inflight > 0 ? (size_t)cfg->redis_inflight : 8192;
	r->recv_max = cfg->redis_recv_queue > 0 ? (size_t)cfg->redis_recv_queue : 65536;
	r->inline_content = cfg->redis_inline_content;
	r->backoff_ms = REDIS_BACKOFF_MIN_MS;
	r->full_after_subs = 1;
	r->full_ms = INT64_MIN / 2;
	r->resync = 1;
	if (HMAC(EVP_sha256(), cfg->jwt_secret, (int)strlen(cfg->jwt_secret),
	    (const unsigned char *)label, sizeof label - 1, r->key, &klen) == NULL)
		fatal("redis: HMAC failed");
	redis_origin(r, host_id);
	r->slots = xcalloc(r->nslots, sizeof *r->slots);
	pthread_mutex_init(&r->lock, NULL);
	if ((r->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
		fatal("eventfd: %s", strerror(errno));
	if ((r->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK)) == NULL)
		fatal("redis: cannot create an event loop");
	ev_async_init(&r->wake, redis_on_wake);
	r->wake.data = r;
	ev_async_start(r->loop, &r->wake);
	ev_timer_init(&r->tick, redis_on_timer, REDIS_TICK_MS / 1000., REDIS_TICK_MS / 1000.);
	r->tick.data = r;
	ev_timer_start(r->loop, &r->tick);
	ev_timer_init(&r->soon, redis_on_timer, 0., 0.);
	r->soon.data = r;
	if ((rc = pthread_create(&r->thread, NULL, redis_thread, r)) != 0)
		fatal("pthread_create: %s", strerror(rc));
	return r;
}

void
redis_free(struct redis *r)
{
	struct redis_room *rm;
	size_t i;

	if (r == NULL)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = 1;
	pthread_mutex_unlock(&r->lock);
	ev_async_send(r->loop, &r->wake);
	pthread_join(r->thread, NULL);
	ev_loop_destroy(r->loop);
	redis_queue_free(&r->out);
	redis_queue_free(&r->in);
	for (i = 0; i < REDIS_ROOM_BUCKETS; i++) {
		while ((rm = r->rooms[i]) != NULL) {
			r->rooms[i] = rm->next;
			free(rm);
		}
	}
	free(r->slots);
	close(r->evfd);
	pthread_mutex_destroy(&r->lock);
	free(r->host);
	free(r->path);
	free(r->user);
	if (r->password != NULL)
		explicit_bzero(r->password, strlen(r->password));
	OPENSSL_cleanse(r->key, sizeof r->key);
	free(r->password);
	free(r->prefix);
	free(r);
}

int
redis_publish(struct redis *r, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	if (key == NULL)
		key = "";
	if (strlen(key) > PARLEY_ID_MAX ||
	    (topic != BUS_USER_EVENT && topic != BUS_USER_EPHEMERAL && topic != BUS_ROOM)) {
		errno = EINVAL;
		return -1;
	}
	/*
	 * An ephemeral event too big to travel has nothing a receiver could read instead (it is
	 * not stored): not published. Content stays off Redis unless asked for: receivers read
	 * the event from MySQL.
	 */
	if (topic == BUS_USER_EPHEMERAL && (payload == NULL || len == 0 || len > BUS_PAYLOAD_MAX))
		return 0;
	if (payload == NULL || len > BUS_PAYLOAD_MAX ||
	    (topic != BUS_USER_EPHEMERAL && !r->inline_content))
		len = 0;
	pthread_mutex_lock(&r->lock);
	if (r->out.n >= r->queue_max) {
		r->out_lost = 1;
		pthread_mutex_unlock(&r->lock);
		redis_count(&r->dropped, 1);
		errno = EAGAIN;
		return -1;
	}
	redis_queue_push(&r->out, redis_item_new(topic, key, seq, payload, len));
	pthread_mutex_unlock(&r->lock);
	/* Always: a queue left non-empty (PUBLISHes in flight at the cap) must not wait for a tick. */
	ev_async_send(r->loop, &r->wake);
	return 0;
}

int
redis_fd(const struct redis *r)
{
	return r->evfd;
}

int
redis_recv(struct redis *r, struct bus_hint *h)
{
	struct redis_item *it;
	uint64_t v;
	int pass, lost;

	for (pass = 0; pass < 2; pass++) {
		pthread_mutex_lock(&r->lock);
		it = redis_queue_pop(&r->in);
		lost = it == NULL && r->in_lost;
		if (lost)
			r->in_lost = 0;
		pthread_mutex_unlock(&r->lock);
		if (it != NULL) {
			h->topic = it->topic;
			h->seq = it->seq;
			h->len = it->len;
			memcpy(h->key, it->key, sizeof h->key);
			memcpy(h->payload, it->payload, it->len + 1);
			free(it);
			return 0;
		}
		if (lost) {
			memset(h, 0, offsetof(struct bus_hint, payload) + 1);
			h->topic = BUS_LOST;
			return 0;
		}
		if (pass == 0 && read(r->evfd, &v, sizeof v) < 0 && errno != EAGAIN)
			log_warn("redis: eventfd: %s", strerror(errno));
	}
	errno = EAGAIN;
	return -1;
}

void
redis_stats(struct redis *r, struct redis_stats *st)
{
	memset(st, 0, sizeof *st);
	st->connected = __atomic_load_n(&r->connected, __ATOMIC_RELAXED);
	st->published = __atomic_load_n(&r->published, __ATOMIC_RELAXED);
	st->received = __atomic_load_n(&r->received, __ATOMIC_RELAXED);
	st->own = __atomic_load_n(&r->own, __ATOMIC_RELAXED);
	st->dropped = __atomic_load_n(&r->dropped, __ATOMIC_RELAXED);
	st->reconnects = __atomic_load_n(&r->reconnects, __ATOMIC_RELAXED);
	st->rechecks = __atomic_load_n(&r->rechecks, __ATOMIC_RELAXED);
	st->scoped = __atomic_load_n(&r->scoped, __ATOMIC_RELAXED);
	st->auth_failures = __atomic_load_n(&r->auth_failures, __ATOMIC_RELAXED);
	st->malformed = __atomic_load_n(&r->malformed, __ATOMIC_RELAXED);
	st->forged = __atomic_load_n(&r->forged, __ATOMIC_RELAXED);
	st->channels = (size_t)__atomic_load_n(&r->channels, __ATOMIC_RELAXED);
}

/* --- the bridge as a bus backend ----------------------------------------------------------- */

static int
redis_ops_publish(void *arg, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	return redis_publish(arg, topic, key, seq, payload, len);
}

static int
redis_ops_fd(const void *arg)
{
	return redis_fd(arg);
}

static int
redis_ops_recv(void *arg, struct bus_hint *h)
{
	return redis_recv(arg, h);
}

static void
redis_ops_listen(void *arg, enum bus_topic topic, const char *key, int delta)
{
	redis_listen(arg, topic, key, delta);
}

const struct bus_ops redis_bus_ops = {
	.name = "redis",
	.publish = redis_ops_publish,
	.fd = redis_ops_fd,
	.recv = redis_ops_recv,
	.listen = redis_ops_listen,
};

struct redis *
redis_of_bus(struct bus *b)
{
	struct bus_backend v[2];

	if (b == NULL || bus_backends(b, v) < 2 || v[1].ops != &redis_bus_ops)
		return NULL;
	return v[1].arg;
}

const char *
redis_state(struct redis *r)
{
	if (r == NULL)
		return "off";
	return __atomic_load_n(&r->connected, __ATOMIC_RELAXED) ? "ok" : "down";
}

char *
redis_metrics(struct redis *r, const char *prefix)
{
	struct redis_stats st;
	char *buf;
	size_t len;
	FILE *f;

	if (r == NULL)
		return xstrdup("");
	redis_stats(r, &st);
	if ((f = open_memstream(&buf, &len)) == NULL)
		fatal("open_memstream failed");
#define RM(name, type, help, val) \
	fprintf(f, "# HELP %s_redis_%s %s\n# TYPE %s_redis_%s %s\n%s_redis_%s %llu\n", prefix, \
	    name, help, prefix, name, type, prefix, name, (unsigned long long)(val))
	RM("connected", "gauge", "1 while both Redis connections are up (0: MySQL rechecks)",
	    st.connected);
	RM("published_total", "counter", "hints Redis took (PUBLISH answered)", st.published);
	RM("received_total", "counter", "hints of other hosts received from Redis", st.received);
	RM("own_total", "counter", "messages of this host Redis sent back, ignored", st.own);
	RM("dropped_total", "counter", "hints not published: queue full, Redis down or slow",
	    st.dropped);
	RM("reconnects_total", "counter", "connection attempts after the first", st.reconnects);
	RM("rechecks_total", "counter", "times every waiter re-read MySQL for the bridge",
	    st.rechecks);
	RM("rechecks_scoped_total", "counter",
	    "times one channel's listeners re-read MySQL (its subscription took effect)", st.scoped);
	RM("auth_failures_total", "counter", "AUTH refused", st.auth_failures);
	RM("malformed_total", "counter", "messages from Redis that did not decode", st.malformed);
	RM("forged_total", "counter",
	    "messages from Redis refused: not signed with this deployment's key, or too old", st.forged);
	RM("channels", "gauge", "channels subscribed", st.channels);
#undef RM
	fclose(f);
	return buf;
}
