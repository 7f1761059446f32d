/* actor.h - per-key actors (a user, a room) with bounded mailboxes, run in order by a worker pool. */
#ifndef ACTOR_H
#define ACTOR_H

#include <stddef.h>
#include <stdint.h>

/*
 * An actor is a key (a user id, "room:r1", ...) with a mailbox. Messages posted to one key are
 * handled one at a time, in order, by one of a fixed set of worker threads: never two workers on
 * one actor, while different actors run in parallel. This is where blocking work (MySQL,
 * memcached) runs, so event-loop threads only post and return.
 *
 * A daemon defines its own message kinds (an enum) and one dispatch function with a switch over
 * them; the pool knows nothing of what a message means.
 */
enum actor_overflow {
	ACTOR_BACKPRESSURE,	/* mailbox full: actor_post fails with EAGAIN, the sender slows down */
	ACTOR_DROP_OLDEST	/* mailbox full: the oldest message of the same policy is dropped */
};

struct actor_ops {
	/* Per worker thread, at its start: returns the worker's context (e.g. its store). */
	void	*(*worker_init)(void *arg);
	void	 (*worker_free)(void *wctx);
	/*
	 * Handle one message. 0 when done (the pool then frees data); -1 with errno EAGAIN to retry
	 * later with exponential backoff (the actor's later messages wait: order is kept); -1 with any
	 * other errno fails it permanently. Must not free data.
	 */
	int	 (*dispatch)(void *wctx, const char *key, int kind, void *data);
	/*
	 * Optional group commit: when set and several consecutive messages of a kind for which
	 * batchable(kind) is true wait in one mailbox, they are handed over together (up to
	 * actor_config.batch). err[i] gets 0 or the item's errno, as in dispatch; return -1/EAGAIN to
	 * retry the whole batch.
	 */
	int	 (*batchable)(int kind);
	int	 (*dispatch_batch)(void *wctx, const char *key, int kind, void **data, size_t n, int *err);
	/* Escalation: a message failed for good (err) or ran out of retries; tell the client. */
	void	 (*failed)(void *wctx, const char *key, int kind, void *data, int err);
	/* Free a message's data (after dispatch, failure or drop). May be NULL. */
	void	 (*free_data)(int kind, void *data);
};

struct actor_config {
	int	workers;	/* threads */
	int	mailbox;	/* messages per actor */
	int	retries;	/* attempts before failed() */
	int	backoff_ms;	/* first retry delay, doubled per attempt, capped at 5 s */
	int	idle_ms;	/* an actor with an empty mailbox is reclaimed after this */
	int	batch;		/* largest batch for dispatch_batch, >= 1 */
};

struct actor_pool;

/* Start the workers. arg goes to worker_init. Caller frees with actor_pool_free. */
struct actor_pool	*actor_pool_new(const struct actor_config *, const struct actor_ops *, void *arg);
/*
 * Stop: messages already posted are handled (drain) before the workers exit; posts after this
 * begins fail with ESHUTDOWN. NULL is a no-op.
 */
void			 actor_pool_free(struct actor_pool *);
/*
 * Post a message; any thread may call it; never blocks. 0: the pool owns data. -1 with errno
 * EAGAIN (mailbox full under ACTOR_BACKPRESSURE) or ESHUTDOWN: the caller still owns data.
 */
int			 actor_post(struct actor_pool *, const char *key, int kind,
			     enum actor_overflow, void *data);

struct actor_stats {
	uint64_t	processed;	/* messages handled successfully */
	uint64_t	failed;		/* escalated */
	uint64_t	restarted;	/* retries after a failing handler */
	uint64_t	dropped;	/* drop-oldest overflow */
	uint64_t	rejected;	/* back-pressure overflow */
	uint64_t	reclaimed;	/* idle actors freed */
	size_t		actors;		/* live actors */
	size_t		queued;		/* messages waiting, all actors */
	size_t		max_depth;	/* deepest mailbox now */
};
void			 actor_pool_stats(struct actor_pool *, struct actor_stats *);

#endif
