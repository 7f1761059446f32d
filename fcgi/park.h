/* park.h - parked long polls: wait lists woken by bus hints, timeouts, hang-ups and shutdown. */
#ifndef PARK_H
#define PARK_H

#include <stddef.h>
#include <stdint.h>

#include "parley.h"

struct bus;
struct cache_journal;
struct chat;
struct config;
struct metrics;

/*
 * A long poll with nothing to return is "parked": its request is detached from libfcgi (only the
 * connection fd and the FastCGI request id are kept, a few hundred bytes in all) and put into a
 * wait list keyed by user (or room). One event-loop thread watches the bus, the parked fds (a web
 * server that closes a parked connection frees it at once) and the deadlines; it never touches
 * MySQL. Whatever it wakes is handed to a fixed pool of worker threads (actor pool keyed by user,
 * each worker with its own struct chat) that read MySQL and answer. No thread per waiter.
 *
 * Exactly one party answers a parked request: whoever removes it from the wait list ("claims"
 * it) under the park lock.
 *
 * Web servers that never tell a backend that the client left (Apache; lighttpd for a connection
 * it was not watching) would keep an abandoned poll, and the web server's slot, until its
 * timeout. So a user holds at most fcgi.max_parked_per_user parked polls, and a newer poll from
 * the same user, device and wait list replaces the older: the older one is answered at once with
 * the empty result, as a timeout would, and a web server writing it to a gone client frees it.
 */
enum park_kind {
	PARK_EVENTS,	/* GET /messages/long_poll: {"events":[..],"next":N} */
	PARK_SYNC,	/* GET /sync with timeout: the same plus "has_more" */
	PARK_ROOM	/* GET /rooms/{room}/messages with timeout */
};

struct park_spec {
	enum park_kind	kind;
	char		key[PARLEY_ID_MAX + 1];	/* the user, or the room for PARK_ROOM */
	char		user[PARLEY_ID_MAX + 1];	/* who polls (fcgi.max_parked_per_user) */
	char		device[PARLEY_ID_MAX + 1];	/* its device, "" when unknown */
	uint64_t	after;
	int		limit;
	int		timeout_s;		/* >= 1 */
};

struct park;

/* Start the loop thread and the workers. The bus is read by the loop (bus_recv) from now on. */
struct park	*park_new(const struct config *, struct metrics *, struct bus *,
		    struct cache_journal *);
/*
 * Called by a request thread that found nothing to answer yet, with the detached connection.
 * Registers the waiter first and then reads MySQL once, so that an event committed at any moment
 * is either seen by that read or wakes the waiter (no lost wake-up). Takes over fd: it is always
 * answered (events, timeout {"events":[],"next":after}, 503 when too many are parked or MySQL is
 * down, empty at shutdown) or closed (client gone). chat is the calling thread's.
 */
void		 park_submit(struct park *, struct chat *, int fd, int request_id,
		     const struct park_spec *);
/*
 * A durable event up to seq is committed for user: wake its waiters in this process now, without
 * waiting for the bus hint (which still comes, and still wakes the other processes). Any thread.
 */
void		 park_notify(struct park *, const char *user, uint64_t seq);
/* SIGTERM: refuse new waiters, answer every parked one with an empty result, stop the loop. */
void		 park_shutdown(struct park *);
/* Drain the workers (what they hold is answered) and free. After park_shutdown. NULL is a no-op. */
void		 park_free(struct park *);
/* Parked right now. */
size_t		 park_count(struct park *);
/* Extra Prometheus lines (actor pool, bus, parked). Caller frees. */
char		*park_metrics(struct park *, const char *prefix);

#endif
