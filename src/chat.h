/* chat.h - the operations of the contract, shared by both daemons: store, then cache, then bus. */
#ifndef CHAT_H
#define CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "protocol.h"
#include "store.h"

struct bus;
struct cache;
struct cache_journal;
struct config;

/*
 * A chat context is what one thread needs to carry out requests: its own store and cache
 * connections plus the process's bus (shared; bus_publish is thread-safe). Blocking: call only
 * from worker or request threads, never from an event loop. Every write follows one order:
 * commit in MySQL, then invalidate summaries, then publish hints; so an acknowledged result is
 * durable and a lost hint only delays.
 *
 * Every function returns 0 or -1 with errno as in parley.h (EINVAL, EACCES, ENOENT, EBUSY,
 * EAGAIN, EIO). Output strings are JSON texts the caller frees.
 */
struct chat {
	const struct config	*cfg;
	struct store		*store;
	struct cache		*cache;
	struct bus		*bus;		/* may be NULL (tools, tests) */
	/*
	 * NULL, or where this process's own waiters get its hints: called on the publishing
	 * thread, and the bus then carries the hint to the other processes only (bus_publish_others).
	 * payload is NULL when none; it may be longer than the bus would carry inline.
	 */
	void			(*local)(void *arg, enum bus_topic, const char *key, uint64_t seq,
				    const char *payload, size_t len);
	void			*local_arg;
};

/*
 * Open store and cache connections for the calling thread. journal: the process's
 * cache_journal (NULL: a private one).
 */
void	chat_init(struct chat *, const struct config *, struct bus *, struct cache_journal *);
void	chat_clear(struct chat *);

/* Send (idempotent). On a new message, every target's log got an event and was hinted. */
int	chat_send(struct chat *, const char *user, const struct proto_send *, struct store_send_res *);
/* The store request for user's send req (pointers into req; nothing to free). */
void	chat_send_request(struct store_send_req *, const char *user, const struct proto_send *);
/*
 * Group commit of sends by one or several users: each request names its sender (from). One
 * transaction (see store_send_batch), err[i] 0 or item i's errno, a failing item does not fail
 * the others; -1 only when the whole batch failed (every err[i] set). Each new message is then
 * invalidated and hinted as chat_send does.
 */
int	chat_send_many(struct chat *, const struct store_send_req *reqs, size_t n,
	    struct store_send_res *res, int *err);

/*
 * {"events":[..],"next":N} (has_more < 0) or with "has_more" (has_more >= 0 asks for it), plus
 * "reset":true and "oldest_seq" when after lies before the oldest event kept (retention). A reset
 * counts as one in *nevents: it is something to answer at once, like an event.
 */
int	chat_events_json(struct chat *, const char *user, uint64_t after, int limit, int with_has_more,
	    char **json, size_t *nevents);

/*
 * A history page of user's conversation h (see store_history): {"messages":[..],"next_before":..},
 * or the history frame when frame is set. h->limit 0 takes PROTO_HISTORY_LIMIT_DEFAULT.
 */
int	chat_history_json(struct chat *, const char *user, const struct proto_history *h, int frame,
	    char **json);

int	chat_receipt(struct chat *, const char *user, const struct proto_receipt_req *);
int	chat_receipts_json(struct chat *, const char *user, uint64_t message_id, char **json);

/* Typing: an ephemeral event to the peer or to every other member of the group (EACCES if not one). */
int	chat_typing(struct chat *, const char *user, const struct proto_target *);
/*
 * Presence: connection conn (its id on node) of user came (+1) or went (-1); hints watchers on a
 * transition. A connection counted twice, or ended without having been counted, changes nothing.
 */
int	chat_presence(struct chat *, const char *user, const char *node, uint64_t conn, int delta);
int	chat_presence_json(struct chat *, char *const *users, size_t n, char **json);

int	chat_conversations_json(struct chat *, const char *user, int limit, char **json);

int	chat_group_create(struct chat *, const char *user, const struct proto_group_create *,
	    uint64_t *group_id);
int	chat_group_json(struct chat *, const char *user, uint64_t group_id, char **json);
int	chat_group_add(struct chat *, const char *by, uint64_t group_id, const char *user);
int	chat_group_remove(struct chat *, const char *by, uint64_t group_id, const char *user);

/* Room comment: stored, rate limited (EBUSY), broadcast on the bus. *event the room_message event. */
int	chat_room_post(struct chat *, const char *user, const char *room, const char *text, char **event);
int	chat_room_history_json(struct chat *, const char *room, uint64_t after, int limit, char **json,
	    size_t *nevents);
/*
 * The room_message event of comment id in room (for a hint too large to carry it). -1/ENOENT
 * when that comment is not there (trimmed, or of another room): never another comment instead.
 */
int	chat_room_comment_json(struct chat *, const char *room, uint64_t id, char **event);

/* {"status":"ok","mysql":"ok"|"down","memcached":"ok"|"down","bus":"ok"|"down"}; -1/EAGAIN when MySQL is down (body still set). */
int	chat_health_json(struct chat *, char **json);

#endif
