/* cache.h - conversation summaries in memcached, with MySQL as the fallback and the refill. */
#ifndef CACHE_H
#define CACHE_H

#include <stddef.h>

struct config;
struct store;

/*
 * One struct cache per thread (a memcached_st is not thread-safe). Timeouts are short
 * (config.memcached_timeout_ms) and after a failure the cache leaves memcached alone for a second,
 * so memcached being down or stopped (SIGSTOP) costs at most one timeout per second and never
 * fails a request.
 */
struct cache;

/*
 * The invalidations that could not reach memcached, shared by every cache of a process (one per
 * daemon, in its state struct): the first cache to reach memcached again replays them before any
 * cache of the process reads a summary. Thread-safe. Caller frees, after every cache using it.
 */
struct cache_journal;
struct cache_journal	*cache_journal_new(void);
void			 cache_journal_free(struct cache_journal *);

/*
 * Never fails: an empty memcached_servers gives a cache that always misses. journal may be NULL
 * (a private one: tools and tests with one cache). Caller frees.
 */
struct cache	*cache_new(const struct config *, struct cache_journal *);
void		 cache_free(struct cache *);
/* 1 when the last memcached operation succeeded (for /health: "ok" or "down"). */
int		 cache_alive(struct cache *);
/*
 * Probe memcached now: a stats round trip to every server on a fresh connection (this thread's
 * breaker and stale sockets play no part), 1 when every server answered. For /health.
 */
int		 cache_check(struct cache *);

/*
 * GET /conversations: from memcached; on a miss or when memcached is down, built from MySQL
 * (store_conversations_json) and written back. limit applies to the list. *json caller frees.
 * Fails only when MySQL fails too (errno from store).
 */
int	cache_conversations(struct cache *, struct store *, const char *user, int limit, char **json);
/*
 * Forget user's summaries after their conversations changed (send, receipt, group change). Call
 * after the MySQL commit; when it returns, memcached serves no summary older than the commit
 * (or memcached is unreachable, and the bump is replayed before this cache reads it again).
 */
void	cache_invalidate(struct cache *, const char *user);
/* The same for n users in one memcached round trip (a batch of sends). */
void	cache_invalidate_many(struct cache *, const char *const *users, size_t n);

#endif
