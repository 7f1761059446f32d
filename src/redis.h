/* redis.h - the Redis bridge: bus hints between the hosts of one deployment, over Redis pub/sub. */
#ifndef REDIS_H
#define REDIS_H

#include <stddef.h>
#include <stdint.h>

#include "bus.h"

struct config;

/*
 * The second bus backend (bus.h, struct bus_ops). The local bus reaches the processes of one
 * host; the bridge carries the same hints to the other hosts:
 *
 * - Publishing: every hint a process publishes goes to one channel, "<prefix>:u:<slot>" for a
 *   user (slot = FNV-1a of the user id modulo redis.slots) or "<prefix>:r:<room>" for a room.
 *   A new message's event and a room message travel without their payload (receivers read
 *   MySQL) unless redis.inline_content is set; ephemeral events (typing, presence) keep theirs.
 * - Subscribing: a process subscribes to a slot's channel while it has a local listener in
 *   that slot (WebSocket connection or parked long poll), to a room's while a local listener
 *   is in the room (redis_listen), and lets go redis.linger_ms after the last one left.
 * - Every message is signed (HMAC-SHA256, a key derived from auth.jwt_secret) and stamped: a
 *   client that can only reach Redis cannot forge or replay an event (redis.c, the format).
 * - Hints a host published itself come back from Redis too: each process drops those whose
 *   origin is its own host (its host id, bus_host_id), which the local bus already carried.
 * - Redis is not the truth. While the subscription connection is not up (or not yet), the
 *   bridge hands its owner a BUS_LOST hint every redis.fallback_interval: every waiter re-reads
 *   MySQL. It reconnects by itself (backoff up to 2 s), subscribes again, and one BUS_LOST
 *   follows once every channel is back. A full BUS_LOST (empty key) comes at most once per
 *   redis.fallback_interval (another host's "hints lost" included).
 * - A subscription that took effect later asks only its listeners to re-read what was published
 *   before: a room's as BUS_ROOM with seq 0 and no payload, a slot's as BUS_LOST with key "slot"
 *   and the slot number (redis_slot) as seq. An owner that knows no better may treat either as
 *   a full BUS_LOST.
 *
 * Threads: the bridge runs its own thread with a private libev loop (hiredis's async API and
 * libev adapter), so nothing of Redis (connects, DNS, a slow server) runs on a daemon's loop.
 * redis_publish and redis_listen may be called from any thread and never block (publishes wait
 * in a queue of redis.queue hints; past it they are dropped and counted). The owner polls
 * redis_fd for POLLIN and calls redis_recv until -1/EAGAIN, from one thread.
 */
struct redis;

/*
 * Start the bridge for cfg->redis_url (must be set; so must cfg->jwt_secret). host_id: this
 * host's id (bus_host_id), which names it on Redis (every process of the host the same). NULL
 * and *cause (caller frees) when the URL does not parse. An unreachable Redis is not an error: the bridge keeps trying.
 */
struct redis	*redis_new(const struct config *cfg, const char *host_id, char **cause);
/* Stop the thread and free everything; NULL is a no-op. No other call may be running. */
void		 redis_free(struct redis *);

/* Any thread; never blocks. 0 queued, -1/EAGAIN queue full (dropped), -1/EINVAL BUS_LOST/SHUTDOWN. */
int		 redis_publish(struct redis *, enum bus_topic, const char *key, uint64_t seq,
		     const char *payload, size_t len);
/* Any thread: a local listener of key (BUS_USER_*: a user; BUS_ROOM: a room) came (+1) or went (-1). */
void		 redis_listen(struct redis *, enum bus_topic, const char *key, int delta);
/* An eventfd, readable while hints wait for redis_recv. */
int		 redis_fd(const struct redis *);
/*
 * One hint from another host, or BUS_LOST: re-read every waiter (key "") or the waiters of the
 * users in slot seq (key "slot"). 0 got one, -1/EAGAIN none.
 */
int		 redis_recv(struct redis *, struct bus_hint *);

/* The user-hash slot of user among nslots (the same on every host). */
unsigned	 redis_slot(const char *user, unsigned nslots);

struct redis_stats {
	int		connected;	/* both connections up and authenticated */
	uint64_t	published;	/* PUBLISH commands Redis answered */
	uint64_t	received;	/* messages from other hosts handed to the owner */
	uint64_t	own;		/* messages of our own host ignored */
	uint64_t	dropped;	/* hints not published: queue full, Redis down or too slow */
	uint64_t	reconnects;	/* connection attempts after the first */
	uint64_t	rechecks;	/* full re-reads asked (fallback, reconnect, another host's loss) */
	uint64_t	scoped;		/* one channel's listeners asked to re-read (its SUBSCRIBE done) */
	uint64_t	auth_failures;
	uint64_t	malformed;	/* messages that did not decode */
	uint64_t	forged;		/* messages with a wrong MAC (not our deployment's) or too old */
	size_t		channels;	/* subscribed now */
};
void		 redis_stats(struct redis *, struct redis_stats *);

/* The bridge that bus_set_bridge gave b, or NULL. */
struct redis	*redis_of_bus(struct bus *b);
/* "ok" (connected) or "down"; "off" when r is NULL (not configured). */
const char	*redis_state(struct redis *r);
/* Prometheus text of the figures above, names "<prefix>_redis_*" ("" when r is NULL); caller frees. */
char		*redis_metrics(struct redis *r, const char *prefix);

/* The bridge as a bus backend (bus_set_bridge). */
extern const struct bus_ops redis_bus_ops;

#endif
