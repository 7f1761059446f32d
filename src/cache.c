/* cache.c - conversation summaries in memcached, with MySQL as the fallback and the refill. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>
#include <libmemcached/memcached.h>

#include "cache.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "store.h"
#include "xmalloc.h"

/*
 * Keys and invalidation.
 *
 * Per user there are two keys:
 *   parley:convgen:v1:<user>  a generation number (decimal, so memcached can "incr" it);
 *   parley:conv:v1:<user>     "<gen> <count>\n<json>": the summary list built from MySQL while the
 *                             generation was <gen>; <count> entries, at most CACHE_LIST_MAX.
 * A summary is served only when its <gen> equals the current generation. Invalidation (after the
 * MySQL commit) increments the generation; a refill reads the generation BEFORE it reads MySQL and
 * tags what it writes with that value. So the classic race (reader misses, reads old rows, writer
 * commits and invalidates, reader writes the old rows back) leaves a value tagged with a generation
 * that is already gone: nobody ever serves it, it just expires. A missing generation key is a miss
 * and is created by the reader with a fresh time-based seed via "add" (never overwriting one a
 * writer just bumped), so an evicted or restarted memcached cannot resurrect an old tag either.
 *
 * Bumps are pipelined: a batch of sends invalidates all its users with "incr ... noreply" on a
 * second connection (one write each, no answer awaited), then one multi-get of the same keys on
 * that connection as a barrier (memcached answers one connection's commands in order, and the get
 * reaches every server an incr went to), so the batch costs one round trip instead of one per
 * user, and no ack leaves before memcached applied its bumps. An incr of a missing generation does
 * nothing, which is right: a reader creates the generation before it reads MySQL, so one missing
 * at bump time (after the commit) means any reader still to come reads the commit.
 *
 * A generation bump that cannot reach memcached (down or stopped) is remembered in the process's
 * journal (struct cache_journal, shared by every thread's cache) and replayed by whichever cache
 * next reaches memcached, before it reads (more than CACHE_PENDING_MAX pending users: flush_all
 * instead). So after a memcached that was only stopped (SIGSTOP, its data intact) comes back, no
 * thread of the process serves a summary a lost bump should have killed. Residual window,
 * documented: another process (parley-ws beside parley-fcgi) does not see this journal and may
 * serve such a summary until that process's next send bumps it, or memcached_ttl passes.
 *
 * Failures: libmemcached 1.1.4 keeps paying one poll timeout per call against a stopped server
 * whatever its failure behaviours say (tried: SERVER_FAILURE_LIMIT, SERVER_TIMEOUT_LIMIT,
 * REMOVE_FAILED_SERVERS), so this cache has its own breaker: after any connection failure or
 * timeout it does not talk to memcached for CACHE_RETRY_MS. A dead or stopped memcached costs one
 * timeout (config.memcached_timeout_ms) per window per thread; requests are answered from MySQL.
 */

#define CACHE_LIST_MAX		100	/* conversations kept in one summary */
#define CACHE_RETRY_MS		1000	/* pause after a memcached failure */
#define CACHE_PENDING_MAX	256	/* remembered failed invalidations */
#define CACHE_GEN_TTL		86400	/* seconds; a lost generation only costs a miss */
#define CACHE_KEY_MAX		128
#define CACHE_VALUE_MAX		(1000 * 1000)	/* below memcached's default 1 MiB item limit */

struct cache_journal {
	pthread_mutex_t	 lock;		/* held while a replay talks to memcached */
	int		 dirty;		/* atomic: something to replay (read without the lock) */
	int		 replaying;	/* a thread replays a copy of pending now */
	char		**pending;	/* users whose generation bump failed */
	size_t		 npending;
	int		 overflow;	/* more than CACHE_PENDING_MAX: flush_all */
};

struct cache {
	memcached_st		*mc;		/* NULL when memcached is disabled */
	memcached_st		*mcq;		/* clone of mc for pipelined bumps (noreply) */
	int			 ttl;
	int			 alive;
	int64_t			 down_until;	/* monotonic ms; no memcached I/O before this */
	struct cache_journal	*journal;
	struct cache_journal	*own_journal;	/* when cache_new was given none */
};

struct cache_journal *
cache_journal_new(void)
{
	struct cache_journal *j;

	j = xcalloc(1, sizeof *j);
	if (pthread_mutex_init(&j->lock, NULL) != 0)
		fatal("pthread_mutex_init failed");
	j->pending = xcalloc(CACHE_PENDING_MAX, sizeof *j->pending);
	return j;
}

void
cache_journal_free(struct cache_journal *j)
{
	size_t i;

	if (j == NULL)
		return;
	for (i = 0; i < j->npending; i++)
		free(j->pending[i]);
	free(j->pending);
	pthread_mutex_destroy(&j->lock);
	free(j);
}

/* Add the servers of a "host:port[,host:port]" list; 0 when at least one was added. */
static int
cache_add_tcp(memcached_st *mc, const char *list)
{
	char *copy, *item, *save = NULL, *host, *colon;
	unsigned long port;
	int added = 0;

	copy = xstrdup(list);
	for (item = strtok_r(copy, ", ", &save); item != NULL; item = strtok_r(NULL, ", ", &save)) {
		host = item;
		port = 11211;
		if (*host == '[') {		/* [v6addr]:port */
			host++;
			if ((colon = strchr(host, ']')) == NULL)
				goto bad;
			*colon++ = '\0';
			if (*colon == ':')
				port = strtoul(colon + 1, NULL, 10);
		} else if ((colon = strrchr(host, ':')) != NULL) {
			*colon = '\0';
			port = strtoul(colon + 1, NULL, 10);
		}
		if (*host == '\0' || port == 0 || port > 65535)
			goto bad;
		if (memcached_server_add(mc, host, (in_port_t)port) != MEMCACHED_SUCCESS)
			goto bad;
		added++;
		continue;
bad:
		log_warn("memcached: ignoring bad server \"%s\"", item);
	}
	free(copy);
	return added > 0 ? 0 : -1;
}

/* Short timeouts and failed-server handling: a stopped memcached must never stall a request. */
static void
cache_behaviours(memcached_st *mc, int timeout_ms)
{
	if (timeout_ms <= 0)
		timeout_ms = 100;
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, (uint64_t)timeout_ms);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, (uint64_t)timeout_ms);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_SND_TIMEOUT, (uint64_t)timeout_ms * 1000);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_RCV_TIMEOUT, (uint64_t)timeout_ms * 1000);
	/*
	 * Not REMOVE_FAILED_SERVERS: ejecting a server moves its keys to another one, and when it
	 * comes back its old generation and old summary (neither saw the bumps made meanwhile)
	 * would be served again. Keys stay put; a failed server's keys fall back to MySQL, and the
	 * breaker below (cache_result) bounds the cost. A failed connection is retried after
	 * RETRY_TIMEOUT, not on every call.
	 */
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT, 1);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, CACHE_RETRY_MS / 1000);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
}

struct cache *
cache_new(const struct config *cfg, struct cache_journal *journal)
{
	struct cache *c;
	const char *servers = cfg->memcached_servers;
	int rc;

	c = xcalloc(1, sizeof *c);
	c->ttl = cfg->memcached_ttl > 0 ? cfg->memcached_ttl : 300;
	if (journal == NULL)
		journal = c->own_journal = cache_journal_new();
	c->journal = journal;
	if (servers == NULL || *servers == '\0')
		return c;
	if ((c->mc = memcached_create(NULL)) == NULL)
		fatal("memcached_create: out of memory");
	cache_behaviours(c->mc, cfg->memcached_timeout_ms);
	if (*servers == '/')
		rc = memcached_server_add_unix_socket(c->mc, servers) == MEMCACHED_SUCCESS ? 0 : -1;
	else
		rc = cache_add_tcp(c->mc, servers);
	if (rc != 0) {
		log_warn("memcached: no usable server in \"%s\"; summaries come from MySQL", servers);
		memcached_free(c->mc);
		c->mc = NULL;
		return c;
	}
	if ((c->mcq = memcached_clone(NULL, c->mc)) == NULL)
		fatal("memcached_clone: out of memory");
	memcached_behavior_set(c->mcq, MEMCACHED_BEHAVIOR_NOREPLY, 1);
	c->alive = 1;	/* until an operation says otherwise */
	return c;
}

void
cache_free(struct cache *c)
{
	if (c == NULL)
		return;
	if (c->mcq != NULL)
		memcached_free(c->mcq);
	if (c->mc != NULL)
		memcached_free(c->mc);
	cache_journal_free(c->own_journal);
	free(c);
}

int
cache_alive(struct cache *c)
{
	return c->mc != NULL && c->alive;
}

/* May this cache talk to memcached now? */
static int
cache_usable(struct cache *c)
{
	return c->mc != NULL && parley_mono_ms() >= c->down_until;
}

/* Record the outcome of one operation; 0 when memcached answered (even "not found"). */
static int
cache_result(struct cache *c, memcached_return_t rc, const char *what)
{
	if (!memcached_fatal(rc)) {
		if (!c->alive)
			log_info("memcached: reachable again");
		c->alive = 1;
		return 0;
	}
	if (c->alive)
		log_warn("memcached: %s: %s; using MySQL for %d ms", what,
		    memcached_strerror(c->mc, rc), CACHE_RETRY_MS);
	c->alive = 0;
	c->down_until = parley_mono_ms() + CACHE_RETRY_MS;
	return -1;
}

static void
cache_key_gen(char *buf, size_t len, const char *user)
{
	snprintf(buf, len, "parley:convgen:v1:%s", user);
}

static void
cache_key_data(char *buf, size_t len, const char *user)
{
	snprintf(buf, len, "parley:conv:v1:%s", user);
}

/* A generation seed no earlier generation of this user can equal (microseconds + noise). */
static uint64_t
cache_seed(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ((uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000) * 16 +
	    (uint64_t)(random() & 15);
}

/*
 * Bump the generation of n users: every summary written before is dead. One round trip (see
 * "Keys and invalidation"). 0, or -1 when memcached failed (some bumps may be lost).
 */
static int
cache_bump(struct cache *c, const char *const *users, size_t n)
{
	char (*keys)[CACHE_KEY_MAX];
	const char **kp;
	size_t *lens, i;
	memcached_result_st *r;
	memcached_return_t rc = MEMCACHED_SUCCESS;
	uint64_t v;
	int ret = -1;

	if (n == 0)
		return 0;
	keys = xcalloc(n, sizeof *keys);
	kp = xcalloc(n, sizeof *kp);
	lens = xcalloc(n, sizeof *lens);
	for (i = 0; i < n; i++) {
		cache_key_gen(keys[i], sizeof keys[i], users[i]);
		kp[i] = keys[i];
		lens[i] = strlen(keys[i]);
		rc = memcached_increment(c->mcq, kp[i], lens[i], 1, &v);
		if (cache_result(c, rc, "incr") != 0)
			goto out;
	}
	/*
	 * The barrier: a get of every key, so each server touched answers on the connection that
	 * carried its incrs, after applying them (one server per key; memcached keeps order on a
	 * connection, not across servers).
	 */
	if (cache_result(c, memcached_mget(c->mcq, kp, lens, n), "mget") != 0)
		goto out;
	while ((r = memcached_fetch_result(c->mcq, NULL, &rc)) != NULL)
		memcached_result_free(r);
	if (rc != MEMCACHED_END && rc != MEMCACHED_NOTFOUND && cache_result(c, rc, "fetch") != 0)
		goto out;
	ret = 0;
out:
	free(lens);
	free(kp);
	free(keys);
	return ret;
}

/* Remember the bumps of n users that could not be made, for any cache of the process to replay. */
static void
cache_pending_add(struct cache *c, const char *const *users, size_t n)
{
	struct cache_journal *j = c->journal;
	size_t i, k;

	pthread_mutex_lock(&j->lock);
	for (i = 0; i < n && !j->overflow; i++) {
		for (k = 0; k < j->npending && strcmp(j->pending[k], users[i]) != 0; k++)
			;
		if (k < j->npending)
			continue;
		if (j->npending == CACHE_PENDING_MAX) {
			while (j->npending > 0)
				free(j->pending[--j->npending]);
			j->overflow = 1;
			break;
		}
		j->pending[j->npending++] = xstrdup(users[i]);
	}
	__atomic_store_n(&j->dirty, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&j->lock);
}

/*
 * Replay the process's remembered bumps through this cache; 0 when none is left (memcached may
 * then be read), -1 when they could not be replayed or another thread is replaying them now
 * (memcached must not be read yet: answer from MySQL). The lock guards the list only, never
 * memcached I/O, so a stopped memcached costs each thread its own timeout, not a queue of them.
 */
static int
cache_pending_flush(struct cache *c)
{
	struct cache_journal *j = c->journal;
	char **users;
	size_t n, i, k;
	int overflow, rc;

	if (!__atomic_load_n(&j->dirty, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&j->lock);
	if (j->replaying || j->npending + (size_t)j->overflow == 0) {
		rc = j->replaying ? -1 : 0;
		pthread_mutex_unlock(&j->lock);
		return rc;
	}
	j->replaying = 1;
	overflow = j->overflow;
	n = j->npending;
	users = xcalloc(n + 1, sizeof *users);
	for (i = 0; i < n; i++)
		users[i] = xstrdup(j->pending[i]);
	pthread_mutex_unlock(&j->lock);

	rc = 0;
	if (overflow && cache_result(c, memcached_flush(c->mc, 0), "flush") != 0)
		rc = -1;
	else if (overflow)
		log_warn("memcached: too many lost invalidations; flushed the cache");
	if (rc == 0 && !overflow)
		rc = cache_bump(c, (const char *const *)users, n);

	pthread_mutex_lock(&j->lock);
	j->replaying = 0;
	if (rc == 0 && overflow)
		j->overflow = 0;
	/* Drop what was replayed; what failed meanwhile was added and stays. */
	for (i = 0; rc == 0 && !overflow && i < n; i++) {
		for (k = 0; k < j->npending && strcmp(j->pending[k], users[i]) != 0; k++)
			;
		if (k < j->npending) {
			free(j->pending[k]);
			j->pending[k] = j->pending[--j->npending];
		}
	}
	if (j->npending == 0 && !j->overflow)
		__atomic_store_n(&j->dirty, 0, __ATOMIC_RELEASE);
	else if (rc == 0)
		rc = -1;	/* more came while replaying: the next call replays them */
	pthread_mutex_unlock(&j->lock);
	for (i = 0; i < n; i++)
		free(users[i]);
	free(users);
	return rc;
}

void
cache_invalidate_many(struct cache *c, const char *const *users, size_t n)
{
	if (c->mc == NULL || n == 0)
		return;
	if (cache_usable(c) && cache_pending_flush(c) == 0 && cache_bump(c, users, n) == 0)
		return;
	cache_pending_add(c, users, n);
}

void
cache_invalidate(struct cache *c, const char *user)
{
	cache_invalidate_many(c, &user, 1);
}

/*
 * A real round trip to every server: not memcached_version(), which libmemcached 1.1.4 answers
 * from what it remembers once a server's version is known (a killed memcached stayed "ok").
 * The probe runs on a fresh clone of the connection, not on this thread's: that one may be
 * stale (the first call after memcached restarted fails on the old socket), and after a failure
 * both the breaker and libmemcached's own retry timeout keep it away from memcached for a
 * second, so each thread in turn would report "down" for a while after memcached is back.
 */
int
cache_check(struct cache *c)
{
	memcached_st *probe;
	memcached_stat_st *st;
	memcached_return_t rc = MEMCACHED_SUCCESS;
	int ok;

	if (c->mc == NULL)
		return 0;
	if ((probe = memcached_clone(NULL, c->mc)) == NULL)
		fatal("memcached_clone: out of memory");
	st = memcached_stat(probe, NULL, &rc);
	ok = st != NULL && !memcached_fatal(rc);
	if (st != NULL)
		memcached_stat_free(probe, st);
	memcached_free(probe);
	if (ok && !c->alive) {
		/* It answers: this thread's sockets may be stale, drop them and end the pause. */
		memcached_quit(c->mc);
		memcached_quit(c->mcq);
		log_info("memcached: reachable again");
		c->alive = 1;
		c->down_until = 0;
	}
	/* Lost invalidations are replayed whenever this thread may talk to memcached. */
	if (cache_usable(c))
		(void)cache_pending_flush(c);
	return ok;
}

/* Number of entries of a {"conversations":[...]} text; -1 when it is not one. */
static int
cache_count(const char *json)
{
	struct json_object *o, *a;
	int n = -1;

	if ((o = json_tokener_parse(json)) == NULL)
		return -1;
	if (json_object_object_get_ex(o, "conversations", &a) && json_object_is_type(a, json_type_array))
		n = (int)json_object_array_length(a);
	json_object_put(o);
	return n;
}

/* A copy of a {"conversations":[...]} text keeping only the first limit entries. */
static char *
cache_truncate(const char *json, int limit)
{
	struct json_object *o, *a;
	char *out;
	size_t len;

	if ((o = json_tokener_parse(json)) == NULL)
		return NULL;
	if (!json_object_object_get_ex(o, "conversations", &a) ||
	    !json_object_is_type(a, json_type_array)) {
		json_object_put(o);
		return NULL;
	}
	len = json_object_array_length(a);
	if ((size_t)limit < len)
		json_object_array_del_idx(a, (size_t)limit, len - (size_t)limit);
	out = xstrdup(json_object_to_json_string_ext(o,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return out;
}

/* The answer for limit from a list of count entries (count <= limit: the text as is). */
static int
cache_answer(const char *json, int count, int limit, char **out)
{
	if (count <= limit) {
		*out = xstrdup(json);
		return 0;
	}
	if ((*out = cache_truncate(json, limit)) == NULL) {
		errno = EIO;
		return -1;
	}
	return 0;
}

/*
 * Look the summary up. Returns 1 and *out on a usable hit; 0 on a miss with *gen the generation
 * to tag a refill with (*have_gen 0 when a refill must not be written); -1 when memcached failed.
 */
static int
cache_lookup(struct cache *c, const char *user, int limit, char **out, uint64_t *gen, int *have_gen)
{
	char kdata[CACHE_KEY_MAX], kgen[CACHE_KEY_MAX], val[32];
	const char *keys[2] = { kdata, kgen };
	size_t lens[2];
	memcached_result_st *r;
	memcached_return_t rc;
	char *data = NULL, *end;
	const char *key, *v, *json;
	size_t klen, vlen;
	uint64_t dgen;
	long count;
	int found_gen = 0, ret = 0, n;

	*have_gen = 0;
	cache_key_data(kdata, sizeof kdata, user);
	cache_key_gen(kgen, sizeof kgen, user);
	lens[0] = strlen(kdata);
	lens[1] = strlen(kgen);
	rc = memcached_mget(c->mc, keys, lens, 2);
	if (cache_result(c, rc, "mget") != 0)
		return -1;
	while ((r = memcached_fetch_result(c->mc, NULL, &rc)) != NULL) {
		key = memcached_result_key_value(r);
		klen = memcached_result_key_length(r);
		v = memcached_result_value(r);
		vlen = memcached_result_length(r);
		if (klen == lens[1] && memcmp(key, kgen, klen) == 0 && vlen < sizeof val) {
			memcpy(val, v, vlen);
			val[vlen] = '\0';
			*gen = strtoull(val, &end, 10);
			found_gen = end != val;
		} else if (klen == lens[0] && memcmp(key, kdata, klen) == 0) {
			free(data);
			data = xstrndup(v, vlen);
		}
		memcached_result_free(r);
	}
	if (rc != MEMCACHED_END && rc != MEMCACHED_NOTFOUND && cache_result(c, rc, "fetch") != 0) {
		free(data);
		return -1;
	}

	if (!found_gen) {
		/* Start a generation; if another client just did, do not refill (it may be a bump). */
		*gen = cache_seed();
		n = snprintf(val, sizeof val, "%" PRIu64, *gen);
		rc = memcached_add(c->mc, kgen, lens[1], val, (size_t)n, CACHE_GEN_TTL, 0);
		if (cache_result(c, rc, "add") != 0)
			ret = -1;
		else
			*have_gen = rc == MEMCACHED_SUCCESS || rc == MEMCACHED_STORED;
		goto out;
	}
	*have_gen = 1;
	if (data == NULL)
		goto out;
	/* "<gen> <count>\n<json>" */
	dgen = strtoull(data, &end, 10);
	if (end == data || dgen != *gen || *end != ' ')
		goto out;
	count = strtol(end + 1, &end, 10);
	if (*end != '\n' || count < 0 || count > CACHE_LIST_MAX)
		goto out;
	json = end + 1;
	if (limit > CACHE_LIST_MAX && count == CACHE_LIST_MAX)
		goto out;	/* the list may have been cut: MySQL must answer */
	if (cache_answer(json, (int)count, limit, out) == 0)
		ret = 1;
out:
	free(data);
	return ret;
}

/* Write the summary list json (count entries) tagged with gen. Failures only cost a later miss. */
static void
cache_store(struct cache *c, const char *user, uint64_t gen, int count, const char *json)
{
	char kdata[CACHE_KEY_MAX], *val;
	memcached_return_t rc;
	int n;

	cache_key_data(kdata, sizeof kdata, user);
	n = xasprintf(&val, "%" PRIu64 " %d\n%s", gen, count, json);
	if (n > CACHE_VALUE_MAX) {
		free(val);
		return;		/* memcached refuses items over 1 MB: serve this user from MySQL */
	}
	rc = memcached_set(c->mc, kdata, strlen(kdata), val, (size_t)n, (time_t)c->ttl, 0);
	/* A refused item is memcached answering, not memcached being down. */
	if (rc != MEMCACHED_E2BIG && rc != MEMCACHED_SERVER_ERROR)
		cache_result(c, rc, "set");
	free(val);
}

int
cache_conversations(struct cache *c, struct store *st, const char *user, int limit, char **json)
{
	char *full = NULL, *cut;
	uint64_t gen = 0;
	int have_gen = 0, count;

	*json = NULL;
	if (limit < 1) {
		errno = EINVAL;
		return -1;
	}
	if (cache_usable(c) && cache_pending_flush(c) == 0) {
		switch (cache_lookup(c, user, limit, json, &gen, &have_gen)) {
		case 1:
			return 0;
		case -1:
			have_gen = 0;
			break;
		}
	}
	if (!have_gen)
		return store_conversations_json(st, user, limit, json);

	/* Refill: read at least CACHE_LIST_MAX so the cached list serves every smaller limit. */
	if (store_conversations_json(st, user, limit > CACHE_LIST_MAX ? limit : CACHE_LIST_MAX,
	    &full) != 0)
		return -1;
	if ((count = cache_count(full)) < 0) {
		log_warn("conversations of %s: unexpected summary JSON", user);
		*json = full;
		return 0;
	}
	if (count <= CACHE_LIST_MAX)
		cache_store(c, user, gen, count, full);
	else if ((cut = cache_truncate(full, CACHE_LIST_MAX)) != NULL) {
		cache_store(c, user, gen, CACHE_LIST_MAX, cut);
		free(cut);
	}
	if (cache_answer(full, count, limit, json) != 0) {
		free(full);
		return -1;
	}
	free(full);
	return 0;
}
