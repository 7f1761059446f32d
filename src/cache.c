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
 * Per user there are two keys, both stored on the server the user's name hashes to (so one round
 * trip reads both):
 *   parley:convgen:v1:<user>  a generation number (decimal);
 *   parley:conv:v1:<user>     "<gen> <count>\n<json>": the summary list built from MySQL while the
 *                             generation was <gen>; <count> entries, at most CACHE_LIST_MAX.
 * A summary is served only when its <gen> equals the current generation. Invalidation (after the
 * MySQL commit) deletes the generation; a refill reads the generation BEFORE it reads MySQL and
 * tags what it writes with that value. So the classic race (reader misses, reads old rows, writer
 * commits and invalidates, reader writes the old rows back) leaves a value tagged with a generation
 * that is already gone: nobody ever serves it, it just expires. A missing generation key is a miss
 * and is created by the reader with a fresh time-based seed via "add" (never overwriting one a
 * writer just bumped), so an evicted or restarted memcached cannot resurrect an old tag either.
 *
 * A pool. memcached.servers may name several servers; users are spread over them by consistent
 * hashing (ketama, weighted, MD5: the same ring as every other ketama client given the same list,
 * whatever the order), so adding or removing one server moves only about 1/N of the users, and a
 * moved user's first read is a miss on the new server. A failed server is never ejected
 * (AUTO_EJECT_HOSTS and REMOVE_FAILED_SERVERS off): ejecting moves its users to another server, and
 * when it comes back (or fails again later) the summaries each of them holds were written before
 * bumps that went to the other one, and would be served. Instead a user's keys stay on their
 * server; while it fails, that user's reads come from MySQL (not cached) and their bumps are
 * journaled; users on the other servers keep their cache. The breaker below is per server, and
 * so is the client: the ring (a libmemcached client with every server) only hashes; each server
 * has its own one-server client, because a multi-server libmemcached client drains every
 * server's pending answers before each multi-get and reports a dead server's error on calls meant
 * for another (tried: a live server marked down after its neighbour was killed).
 *
 * Bumps are pipelined: a batch of sends invalidates its users with "delete ... noreply" on a second
 * connection that buffers them (no answer awaited), then, per server touched, one multi-get of that
 * server's keys on that connection as a barrier (memcached answers one connection's commands in
 * order): the deletes and the get leave together (one write, or several for a batch past
 * libmemcached's write buffer), the batch costs one round trip per server instead of one per user,
 * and no ack leaves before memcached applied its bumps. A deleted generation is a missing one: the
 * next reader starts a new one from the clock (microseconds and 4 random bits: a value a summary
 * was tagged with before only if the clock stepped back onto it), and one missing at bump time
 * (after the commit) means any reader still to come reads the commit. (An "incr" would do as well, but libmemcached writes each incr
 * at once: one send() per user where the buffered deletes share one.)
 *
 * A generation bump that cannot reach its server (down or stopped) is remembered in the process's
 * journal (struct cache_journal, shared by every thread's cache) with the server it belongs to,
 * and replayed by whichever cache next reaches that server, before it reads from it (more than
 * CACHE_PENDING_MAX pending users: that server is flushed instead). So after a memcached that was
 * only stopped (SIGSTOP, its data intact) comes back, no thread of the process serves a summary a
 * lost bump should have killed; a killed one comes back empty. Residual window, documented:
 * another process (parley-ws beside parley-fcgi, or another host) does not see this journal and
 * may serve such a summary until that process's next send bumps it, or memcached_ttl passes.
 *
 * Failures: libmemcached 1.1.4 keeps paying one poll timeout per call against a stopped server
 * whatever its failure behaviours say (tried: SERVER_FAILURE_LIMIT, SERVER_TIMEOUT_LIMIT,
 * REMOVE_FAILED_SERVERS), so this cache has its own breaker per server: after a connection failure
 * or timeout on a server it does not talk to that server for memcached.retry_ms. A dead or
 * stopped server costs one timeout (config.memcached_timeout_ms) per window per thread; its users
 * are answered from MySQL.
 */

#define CACHE_LIST_MAX		100	/* conversations kept in one summary */
#define CACHE_PENDING_MAX	256	/* remembered failed invalidations */
#define CACHE_SERVERS_MAX	64	/* servers in a pool (more are ignored, with a warning) */
#define CACHE_GEN_TTL		86400	/* seconds; a lost generation only costs a miss */
#define CACHE_KEY_MAX		128
#define CACHE_VALUE_MAX		(1000 * 1000)	/* below memcached's default 1 MiB item limit */

struct cache_pending {
	char		*user;
	uint32_t	 server;	/* index in the pool */
};

struct cache_journal {
	pthread_mutex_t		 lock;		/* guards the fields below, never held over I/O */
	int			 dirty;		/* atomic: something to replay (read without the lock) */
	unsigned char		 replaying[CACHE_SERVERS_MAX];	/* a thread replays that server now */
	unsigned char		 overflow[CACHE_SERVERS_MAX];	/* too many lost: flush that server */
	struct cache_pending	*pending;	/* users whose generation bump failed */
	size_t			 npending;
};

struct cache {
	memcached_st		*ring;		/* every server, for hashing only; NULL: disabled */
	memcached_st		*mc[CACHE_SERVERS_MAX];	/* one client per server */
	memcached_st		*mcq[CACHE_SERVERS_MAX];	/* its clone for bumps (noreply) */
	int			 ttl;
	int			 timeout_ms;
	int			 retry_ms;
	uint32_t		 nservers;
	int			 alive[CACHE_SERVERS_MAX];	/* last operation on it succeeded */
	int64_t			 down_until[CACHE_SERVERS_MAX];	/* monotonic ms; no I/O before */
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
		free(j->pending[i].user);
	free(j->pending);
	pthread_mutex_destroy(&j->lock);
	free(j);
}

/* Add one server: "/path/to.sock", "host", "host:port" or "[v6addr]:port"; 0 when added. */
static int
cache_add_server(memcached_st *mc, char *item)
{
	char *host = item, *colon;
	unsigned long port = 11211;

	if (*host == '/')
		return memcached_server_add_unix_socket(mc, host) == MEMCACHED_SUCCESS ? 0 : -1;
	if (*host == '[') {		/* [v6addr]:port */
		host++;
		if ((colon = strchr(host, ']')) == NULL)
			return -1;
		*colon++ = '\0';
		if (*colon == ':')
			port = strtoul(colon + 1, NULL, 10);
	} else if ((colon = strrchr(host, ':')) != NULL) {
		*colon = '\0';
		port = strtoul(colon + 1, NULL, 10);
	}
	if (*host == '\0' || port == 0 || port > 65535)
		return -1;
	return memcached_server_add(mc, host, (in_port_t)port) == MEMCACHED_SUCCESS ? 0 : -1;
}

/* Add the servers of a "server[,server...]" list (comma or space separated); how many were. */
static uint32_t
cache_add_servers(memcached_st *mc, const char *list)
{
	char *copy, *item, *save = NULL, *shown;
	uint32_t added = 0;

	copy = xstrdup(list);
	for (item = strtok_r(copy, ", ", &save); item != NULL; item = strtok_r(NULL, ", ", &save)) {
		if (added == CACHE_SERVERS_MAX) {
			log_warn("memcached: more than %d servers; ignoring \"%s\" and the rest",
			    CACHE_SERVERS_MAX, item);
			break;
		}
		shown = xstrdup(item);
		if (cache_add_server(mc, item) == 0)
			added++;
		else
			log_warn("memcached: ignoring bad server \"%s\"", shown);
		free(shown);
	}
	free(copy);
	return added;
}

/* Short timeouts and failed-server handling: a stopped memcached must never stall a request. */
static void
cache_behaviours(memcached_st *mc, int timeout_ms, int retry_ms)
{
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, (uint64_t)timeout_ms);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, (uint64_t)timeout_ms);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_SND_TIMEOUT, (uint64_t)timeout_ms * 1000);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_RCV_TIMEOUT, (uint64_t)timeout_ms * 1000);
	/*
	 * Failover, explicitly (see "A pool"): one failure puts a server in libmemcached's timeout
	 * for RETRY_TIMEOUT seconds (at least 1, libmemcached counts whole seconds; our own breaker
	 * keeps to retry_ms), and a failed server is never ejected from the ring.
	 */
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT, 1);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_RETRY_TIMEOUT,
	    (uint64_t)(retry_ms >= 1000 ? retry_ms / 1000 : 1));
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_AUTO_EJECT_HOSTS, 0);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS, 0);
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
	/* Consistent hashing: ketama over MD5, servers weighted (all weight 1 today). */
	memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1);
}

/* A new client of server k alone, with the pool's behaviours. Caller frees. */
static memcached_st *
cache_one(struct cache *c, uint32_t k)
{
	const memcached_instance_st *in = memcached_server_instance_by_position(c->ring, k);
	memcached_st *one;
	const char *name;

	if ((one = memcached_create(NULL)) == NULL)
		fatal("memcached_create: out of memory");
	cache_behaviours(one, c->timeout_ms, c->retry_ms);
	name = memcached_server_name(in);
	if (name[0] == '/')
		(void)memcached_server_add_unix_socket(one, name);
	else
		(void)memcached_server_add(one, name, memcached_server_port(in));
	return one;
}

struct cache *
cache_new(const struct config *cfg, struct cache_journal *journal)
{
	struct cache *c;
	const char *servers = cfg->memcached_servers;
	uint32_t i;

	c = xcalloc(1, sizeof *c);
	c->ttl = cfg->memcached_ttl > 0 ? cfg->memcached_ttl : 300;
	c->timeout_ms = cfg->memcached_timeout_ms > 0 ? cfg->memcached_timeout_ms : 100;
	c->retry_ms = cfg->memcached_retry_ms > 0 ? cfg->memcached_retry_ms : 1000;
	if (journal == NULL)
		journal = c->own_journal = cache_journal_new();
	c->journal = journal;
	if (servers == NULL || *servers == '\0')
		return c;
	if ((c->ring = memcached_create(NULL)) == NULL)
		fatal("memcached_create: out of memory");
	cache_behaviours(c->ring, c->timeout_ms, c->retry_ms);
	if ((c->nservers = cache_add_servers(c->ring, servers)) == 0) {
		log_warn("memcached: no usable server in \"%s\"; summaries come from MySQL", servers);
		memcached_free(c->ring);
		c->ring = NULL;
		return c;
	}
	for (i = 0; i < c->nservers; i++) {
		c->mc[i] = cache_one(c, i);
		if ((c->mcq[i] = memcached_clone(NULL, c->mc[i])) == NULL)
			fatal("memcached_clone: out of memory");
		memcached_behavior_set(c->mcq[i], MEMCACHED_BEHAVIOR_NOREPLY, 1);
		memcached_behavior_set(c->mcq[i], MEMCACHED_BEHAVIOR_BUFFER_REQUESTS, 1);
		c->alive[i] = 1;	/* until an operation says otherwise */
	}
	return c;
}

void
cache_free(struct cache *c)
{
	uint32_t i;

	if (c == NULL)
		return;
	for (i = 0; i < c->nservers; i++) {
		memcached_free(c->mcq[i]);
		memcached_free(c->mc[i]);
	}
	if (c->ring != NULL)
		memcached_free(c->ring);
	cache_journal_free(c->own_journal);
	free(c);
}

int
cache_alive(struct cache *c)
{
	uint32_t i;

	if (c->ring == NULL)
		return 0;
	for (i = 0; i < c->nservers; i++)
		if (!c->alive[i])
			return 0;
	return 1;
}

/* The server of the pool that holds user's keys. */
static uint32_t
cache_server(struct cache *c, const char *user)
{
	uint32_t k = memcached_generate_hash(c->ring, user, strlen(user));

	return k < c->nservers ? k : 0;
}

/* May this cache talk to server k now? */
static int
cache_usable(struct cache *c, uint32_t k)
{
	return c->ring != NULL && parley_mono_ms() >= c->down_until[k];
}

/* Record the outcome of one operation on server k; 0 when it answered (even "not found"). */
static int
cache_result(struct cache *c, uint32_t k, memcached_return_t rc, const char *what)
{
	if (!memcached_fatal(rc)) {
		if (!c->alive[k])
			log_info("memcached: server %u reachable again", (unsigned)k);
		c->alive[k] = 1;
		return 0;
	}
	if (c->alive[k])
		log_warn("memcached: server %u: %s: %s; its users read MySQL for %d ms", (unsigned)k,
		    what, memcached_strerror(c->mc[k], rc), c->retry_ms);
	c->alive[k] = 0;
	c->down_until[k] = parley_mono_ms() + c->retry_ms;
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
 * Bump the generation of n users, all of server k: every summary written before is dead. One
 * round trip (see "Keys and invalidation"). 0, or -1 when the server failed (some bumps may be
 * lost).
 */
static int
cache_bump(struct cache *c, uint32_t k, const char *const *users, size_t n)
{
	char (*keys)[CACHE_KEY_MAX];
	const char **kp;
	size_t *lens, i;
	memcached_result_st *r;
	memcached_return_t rc = MEMCACHED_SUCCESS;
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
		rc = memcached_delete(c->mcq[k], kp[i], lens[i], 0);
		if (rc == MEMCACHED_BUFFERED)
			rc = MEMCACHED_SUCCESS;
		if (cache_result(c, k, rc, "delete") != 0)
			goto out;
	}
	/*
	 * The barrier: a get of every key on the connection that carried the deletes, so the server
	 * answers after applying them (memcached keeps order on a connection).
	 */
	rc = memcached_mget(c->mcq[k], kp, lens, n);
	if (cache_result(c, k, rc, "mget") != 0)
		goto out;
	while ((r = memcached_fetch_result(c->mcq[k], NULL, &rc)) != NULL)
		memcached_result_free(r);
	if (rc != MEMCACHED_END && rc != MEMCACHED_NOTFOUND && cache_result(c, k, rc, "fetch") != 0)
		goto out;
	ret = 0;
out:
	free(lens);
	free(kp);
	free(keys);
	return ret;
}

/* Remember the bumps of n users of server k that could not be made, for any cache to replay. */
static void
cache_pending_add(struct cache *c, uint32_t k, const char *const *users, size_t n)
{
	struct cache_journal *j = c->journal;
	size_t i, m;

	pthread_mutex_lock(&j->lock);
	for (i = 0; i < n && !j->overflow[k]; i++) {
		for (m = 0; m < j->npending && (j->pending[m].server != k ||
		    strcmp(j->pending[m].user, users[i]) != 0); m++)
			;
		if (m < j->npending)
			continue;
		if (j->npending == CACHE_PENDING_MAX) {
			/* Full: this server will be flushed; its entries are no longer needed. */
			for (m = 0; m < j->npending; )
				if (j->pending[m].server == k) {
					free(j->pending[m].user);
					j->pending[m] = j->pending[--j->npending];
				} else
					m++;
			j->overflow[k] = 1;
			break;
		}
		j->pending[j->npending].user = xstrdup(users[i]);
		j->pending[j->npending++].server = k;
	}
	__atomic_store_n(&j->dirty, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&j->lock);
}

/*
 * Replay the process's remembered bumps of server k through this cache; 0 when none is left
 * (server k may then be read), -1 when they could not be replayed or another thread is replaying
 * them now (do not read server k yet: answer from MySQL). The lock guards the list only, never
 * memcached I/O, so a stopped memcached costs each thread its own timeout, not a queue of them.
 */
static int
cache_pending_flush(struct cache *c, uint32_t k)
{
	struct cache_journal *j = c->journal;
	char **users;
	size_t n = 0, i, m;
	int overflow, rc, left;

	if (!__atomic_load_n(&j->dirty, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&j->lock);
	if (j->replaying[k]) {
		pthread_mutex_unlock(&j->lock);
		return -1;
	}
	overflow = j->overflow[k];
	users = xcalloc(j->npending + 1, sizeof *users);
	for (i = 0; i < j->npending; i++)
		if (j->pending[i].server == k)
			users[n++] = xstrdup(j->pending[i].user);
	if (n == 0 && !overflow) {
		pthread_mutex_unlock(&j->lock);
		free(users);
		return 0;
	}
	j->replaying[k] = 1;
	pthread_mutex_unlock(&j->lock);

	rc = 0;
	if (overflow) {
		if (cache_result(c, k, memcached_flush(c->mc[k], 0), "flush") != 0)
			rc = -1;
		else
			log_warn("memcached: server %u: too many lost invalidations; flushed it",
			    (unsigned)k);
	} else
		rc = cache_bump(c, k, (const char *const *)users, n);

	pthread_mutex_lock(&j->lock);
	j->replaying[k] = 0;
	if (rc == 0 && overflow)
		j->overflow[k] = 0;
	/* Drop what was replayed; what failed meanwhile was added and stays. */
	for (i = 0; rc == 0 && !overflow && i < n; i++) {
		for (m = 0; m < j->npending && (j->pending[m].server != k ||
		    strcmp(j->pending[m].user, users[i]) != 0); m++)
			;
		if (m < j->npending) {
			free(j->pending[m].user);
			j->pending[m] = j->pending[--j->npending];
		}
	}
	left = 0;
	for (i = 0; i < CACHE_SERVERS_MAX; i++)
		left |= j->overflow[i];
	if (j->npending == 0 && !left)
		__atomic_store_n(&j->dirty, 0, __ATOMIC_RELEASE);
	for (i = 0; rc == 0 && i < j->npending; i++)
		if (j->pending[i].server == k)
			rc = -1;	/* more came while replaying: the next call replays them */
	if (rc == 0 && j->overflow[k])
		rc = -1;
	pthread_mutex_unlock(&j->lock);
	for (i = 0; i < n; i++)
		free(users[i]);
	free(users);
	return rc;
}

void
cache_invalidate_many(struct cache *c, const char *const *users, size_t n)
{
	const char **group;
	uint32_t *server, k;
	unsigned char done[CACHE_SERVERS_MAX] = { 0 };
	size_t i, m, g;

	if (c->ring == NULL || n == 0)
		return;
	server = xcalloc(n, sizeof *server);
	group = xcalloc(n, sizeof *group);
	for (i = 0; i < n; i++)
		server[i] = cache_server(c, users[i]);
	/* One pipelined bump per server touched, in the order the servers first appear. */
	for (i = 0; i < n; i++) {
		k = server[i];
		if (done[k])
			continue;
		done[k] = 1;
		for (m = i, g = 0; m < n; m++)
			if (server[m] == k)
				group[g++] = users[m];
		if (!cache_usable(c, k) || cache_bump(c, k, group, g) != 0)
			cache_pending_add(c, k, group, g);
	}
	free(group);
	free(server);
}

void
cache_invalidate(struct cache *c, const char *user)
{
	cache_invalidate_many(c, &user, 1);
}

/* Does server k answer a stats round trip on a fresh one-server client? */
static int
cache_probe(struct cache *c, uint32_t k)
{
	memcached_st *one = cache_one(c, k);
	memcached_stat_st *st;
	memcached_return_t rc = MEMCACHED_SUCCESS;
	int ok;

	st = memcached_stat(one, NULL, &rc);
	ok = st != NULL && !memcached_fatal(rc);
	if (st != NULL)
		memcached_stat_free(one, st);
	memcached_free(one);
	return ok;
}

/*
 * A real round trip to every server: not memcached_version(), which libmemcached 1.1.4 answers
 * from what it remembers once a server's version is known (a killed memcached stayed "ok").
 * Each probe runs on a fresh one-server client, not on this thread's connections: those may be
 * stale (the first call after memcached restarted fails on the old socket), and after a failure
 * both the breaker and libmemcached's own retry timeout keep them away from the server for a
 * while, so each thread in turn would report "down" for a while after memcached is back.
 */
int
cache_check(struct cache *c)
{
	uint32_t k;
	int ok = 1;

	if (c->ring == NULL)
		return 0;
	for (k = 0; k < c->nservers; k++) {
		if (!cache_probe(c, k)) {
			ok = 0;
			continue;
		}
		if (!c->alive[k]) {
			/* It answers: this thread's sockets to it may be stale, drop them. */
			memcached_quit(c->mc[k]);
			memcached_quit(c->mcq[k]);
			log_info("memcached: server %u reachable again", (unsigned)k);
			c->alive[k] = 1;
			c->down_until[k] = 0;
		}
	}
	/* Lost invalidations are replayed whenever this thread may talk to their server. */
	for (k = 0; k < c->nservers; k++)
		if (cache_usable(c, k))
			(void)cache_pending_flush(c, k);
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
cache_lookup(struct cache *c, uint32_t k, const char *user, int limit, char **out, uint64_t *gen,
    int *have_gen)
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
	rc = memcached_mget(c->mc[k], keys, lens, 2);
	if (cache_result(c, k, rc, "mget") != 0)
		return -1;
	while ((r = memcached_fetch_result(c->mc[k], NULL, &rc)) != NULL) {
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
	if (rc != MEMCACHED_END && rc != MEMCACHED_NOTFOUND && cache_result(c, k, rc, "fetch") != 0) {
		free(data);
		return -1;
	}

	if (!found_gen) {
		/* Start a generation; if another client just did, do not refill (it may be a bump). */
		*gen = cache_seed();
		n = snprintf(val, sizeof val, "%" PRIu64, *gen);
		rc = memcached_add(c->mc[k], kgen, lens[1], val, (size_t)n, CACHE_GEN_TTL, 0);
		if (cache_result(c, k, rc, "add") != 0)
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
cache_store(struct cache *c, uint32_t k, const char *user, uint64_t gen, int count, const char *json)
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
	rc = memcached_set(c->mc[k], kdata, strlen(kdata), val, (size_t)n, (time_t)c->ttl, 0);
	/* A refused item is memcached answering, not memcached being down. */
	if (rc != MEMCACHED_E2BIG && rc != MEMCACHED_SERVER_ERROR)
		cache_result(c, k, rc, "set");
	free(val);
}

int
cache_conversations(struct cache *c, struct store *st, const char *user, int limit, char **json)
{
	char *full = NULL, *cut;
	uint64_t gen = 0;
	uint32_t k = 0;
	int have_gen = 0, count;

	*json = NULL;
	if (limit < 1) {
		errno = EINVAL;
		return -1;
	}
	if (c->ring != NULL)
		k = cache_server(c, user);
	if (cache_usable(c, k) && cache_pending_flush(c, k) == 0) {
		switch (cache_lookup(c, k, user, limit, json, &gen, &have_gen)) {
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
		cache_store(c, k, user, gen, count, full);
	else if ((cut = cache_truncate(full, CACHE_LIST_MAX)) != NULL) {
		cache_store(c, k, user, gen, CACHE_LIST_MAX, cut);
		free(cut);
	}
	if (cache_answer(full, count, limit, json) != 0) {
		free(full);
		return -1;
	}
	free(full);
	return 0;
}
