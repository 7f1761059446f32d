/* store.h - MySQL/MariaDB storage: messages, per-user event logs, cursors, receipts, groups, rooms. */
#ifndef STORE_H
#define STORE_H

#include <stddef.h>
#include <stdint.h>

#include "parley.h"
#include "protocol.h"

struct config;

/*
 * One struct store is one MySQL connection, owned by one thread (a worker or request thread):
 * never share it. Every call uses prepared statements; every write is one explicit transaction
 * (START TRANSACTION ... COMMIT) that is re-run as a whole on deadlock (1213), lock-wait timeout
 * (1205) or a lost connection; after a reconnect (mysql_thread_id() changed) every statement is
 * prepared again. MYSQL_OPT_RECONNECT is never used.
 *
 * Errors: -1 with errno EAGAIN when MySQL is unreachable (the caller answers 503 and the next call
 * tries to reconnect, with backoff) or a deadlock or lock-wait timeout (mysql.lock_wait_timeout)
 * outlasted every attempt, EACCES not allowed, ENOENT no such thing, EINVAL bad argument, EIO
 * anything else (logged here with the statement, a duplicate key included; never shown to
 * clients).
 */
struct store;

/* Never fails for a down server: the connection is made (and remade) on first use. Caller frees. */
struct store	*store_new(const struct config *);
void		 store_free(struct store *);
/* 0 when MySQL answers now. */
int		 store_ping(struct store *);
/*
 * Start-up: ping until MySQL answers, for up to seconds (0: one try). -1 with *cause set
 * (caller frees) naming MySQL's own reason when it never did. Blocks: never on an event loop.
 */
int		 store_wait(struct store *, int seconds, char **cause);
/* How many times this connection was re-established (metrics, tests). */
uint64_t	 store_reconnects(const struct store *);
/*
 * Chained transactions (off by default): while on, a write transaction ends with COMMIT AND
 * CHAIN, so the next write (chaining on or off) needs no START TRANSACTION round trip; a read or
 * autocommit body first ends the (empty) chained one with a COMMIT. Worth it around writes that
 * are usually followed by more writes (parley-ws's send batches). Same thread as the store's
 * other calls.
 */
void		 store_chain_transactions(struct store *, int on);

/* A user whose log got a new event, with that event's seq: the bus hint and cache invalidation. */
struct store_target {
	char		user[PARLEY_ID_MAX + 1];
	uint64_t	seq;
};
struct store_targets {
	struct store_target	*v;
	size_t			 n;
};
void	store_targets_clear(struct store_targets *);

/*
 * Send. The message row, its new_message event in the sender's log and in every recipient's log
 * (each with that user's next seq, gap-free) and the conversation rows commit in ONE transaction.
 * UNIQUE(sender, client_msg_id) makes a retry return the first result with duplicate = 1 and no
 * new events; its targets still name the logs that have the message's event (so the caller
 * invalidates and hints again) when the retry asks for the same message (recipient, group,
 * content), and are empty when not. A re-run of this call after a lost COMMIT reply is no
 * duplicate (the message's attempt token is this call's). A group message needs the sender to
 * be a member (EACCES) of an existing group (ENOENT).
 */
struct store_send_req {
	const char	*from;
	const char	*to;		/* NULL for a group message */
	uint64_t	 group_id;
	const char	*content;
	const char	*client_msg_id;
};
struct store_send_res {
	uint64_t		server_msg_id;
	uint64_t		seq;		/* the event's seq in the sender's log */
	int			duplicate;
	int64_t			ts;
	struct store_targets	targets;	/* sender + recipients; caller clears */
};
int	store_send(struct store *, const struct store_send_req *, struct store_send_res *);
/*
 * Group commit: n sends in one transaction (one fsync). err[i] is 0 or the errno of item i; an
 * item that fails (EACCES, ENOENT, EINVAL) does not fail the others. Returns -1 only when the
 * whole batch failed (EAGAIN/EIO; then every err[i] is set too).
 */
int	store_send_batch(struct store *, const struct store_send_req *, size_t n,
	    struct store_send_res *, int *err);
void	store_send_res_clear(struct store_send_res *);

/*
 * Event log. Events are full JSON texts with "seq"; next = last seq returned, or after if none.
 * oldest_seq is 0, or, when after + 1 lies before the oldest event retention kept (after is
 * behind: events were pruned that the reader never got), that oldest seq: the reader must reset.
 */
struct store_page {
	char		**events;
	size_t		  n;
	uint64_t	  next;
	int		  has_more;
	uint64_t	  oldest_seq;
	uint64_t	 *ids;		/* room pages: each event's comment id; NULL otherwise */
};
int	store_events(struct store *, const char *user, uint64_t after, int limit, struct store_page *);
void	store_page_clear(struct store_page *);
/* The user's newest seq (0 when the log is empty). */
int	store_last_seq(struct store *, const char *user, uint64_t *seq);

/* Device cursors (/sync, ready.last_seq). A device with no cursor has 0. */
int	store_cursor_get(struct store *, const char *user, const char *device, uint64_t *cursor);
/* Set the device's cursor (it may move back: the client asked for after=). */
int	store_cursor_set(struct store *, const char *user, const char *device, uint64_t cursor);

/*
 * Receipts: user marks everything up to message_id in that message's conversation as delivered
 * or read (read implies delivered); markers never move back. When a marker moved, the sender's
 * log gets a message_status event (in targets) and *changed = 1. ENOENT when the message does
 * not exist or user is not a recipient of it.
 */
int	store_receipt(struct store *, const char *user, uint64_t message_id, enum proto_receipt,
	    int *changed, struct store_targets *);
/* {"members":N,"delivered":[..],"read":[..]} for message_id; EACCES unless sender or member. */
int	store_receipts_json(struct store *, const char *user, uint64_t message_id, char **json);

/*
 * {"conversations":[...]} newest first (protocol.md GET /conversations), derived on read from the
 * user's log, the messages and its receipt markers (store_receipt.c). Caller frees.
 */
int	store_conversations_json(struct store *, const char *user, int limit, char **json);
/*
 * For EXPLAIN: the SQL of the conversation list (parameters: user, limit, user) and of the unread
 * counts, 1:1 (user, peer, read_upto) and group (user, group_id, read_upto, user).
 */
const char *store_conversations_sql(void);
const char *store_unread_pair_sql(void);
const char *store_unread_group_sql(void);

/* Groups. Membership changes append group_update events to the members' logs (targets). */
int	store_group_create(struct store *, const char *creator, const char *name,
	    char *const *members, size_t n, uint64_t *group_id, struct store_targets *);
/* {"group_id":..,"name":..,"members":[..],"admins":[..]}; EACCES unless member, ENOENT. */
int	store_group_json(struct store *, const char *user, uint64_t group_id, char **json);
/* by must be an admin (EACCES); adding a member twice is not an error (no event). */
int	store_group_add(struct store *, const char *by, uint64_t group_id, const char *user,
	    struct store_targets *);
/* by must be an admin or user itself (EACCES); ENOENT when user is not a member. */
int	store_group_remove(struct store *, const char *by, uint64_t group_id, const char *user,
	    struct store_targets *);
/* The members of a group (caller frees each and the array). ENOENT when no such group. */
int	store_group_members(struct store *, uint64_t group_id, char ***members, size_t *n);
int	store_is_member(struct store *, uint64_t group_id, const char *user, int *member);

/*
 * Conversation history, read from user's own log (so it holds exactly what reached user: for a
 * group, what was sent while user was a member): the messages of the conversation with peer
 * (group_id 0) or of group group_id (peer NULL) with id < before (0: no bound), newest first, at
 * most limit, as protocol_message texts in page->events; page->next is the id to pass as before
 * for the next page, 0 when nothing older is left. A group needs user to be a member or to have
 * been one (its log holds messages of the group): else EACCES, or ENOENT for no such group.
 * One range scan of the events index ev_history per page.
 */
int	store_history(struct store *, const char *user, const char *peer, uint64_t group_id,
	    uint64_t before, int limit, struct store_page *page);
/* The SQL of a history page (parameters: user, group_id, peer, before, limit): for EXPLAIN. */
const char *store_history_sql(void);

/*
 * Retention (parleyctl prune): prune the events appended before events_before_ms (each log
 * loses a prefix: user_seq.first_seq moves up, readers behind it get a reset; its new_message
 * rows stay below first_seq as the history's index while their message is kept) and delete the
 * messages sent before messages_before_ms (gone from history too, their events with them; events
 * never outlive their message, so the log is cut at the later of the two times); 0 leaves that
 * kind alone. Work is done in transactions of at most batch rows (of up to 64 logs each) with
 * pause_ms after each, so it never holds locks for long and may run while the daemons serve.
 */
struct store_prune_res {
	uint64_t	events;		/* rows deleted */
	uint64_t	messages;
	uint64_t	logs;		/* user logs that lost events */
	uint64_t	txns;		/* batch transactions committed */
	int64_t		txn_max_us;	/* the longest of them, BEGIN to COMMIT's reply */
	int64_t		lock_max_us;	/* the longest any user_seq row (a send's lock) was held */
	int64_t		lock_stmt_max_us; /* of which before COMMIT (the rest: the commit's flush) */
	uint64_t	busy;		/* logs put off to another transaction: a send held the row */
};
int	store_prune(struct store *, int64_t events_before_ms, int64_t messages_before_ms, int batch,
	    int pause_ms, struct store_prune_res *);

/*
 * Presence: every open connection is a row (user, node, conn), conn the connection's id on that
 * node, so that a node's rows can be dropped when it restarts (store_presence_reset) and a
 * connection counted twice (a re-run) or dropped without having been counted changes nothing.
 * delta is +1 (the connection opened) or -1 (it closed); *online_changed = 1 when the user's
 * count went 0 -> 1 or 1 -> 0 (then last_seen = now on the way down).
 */
int	store_presence_update(struct store *, const char *user, const char *node, uint64_t conn,
	    int delta, int64_t now_ms, int *online_changed);
int	store_presence_reset(struct store *, const char *node, int64_t now_ms);
/* {"presence":[{"user":..,"online":..,"last_seen":..}]} for the given users. */
int	store_presence_json(struct store *, char *const *users, size_t n, char **json);

/*
 * Rooms: a comment is stored (only the newest config.room_history per room are kept) and gets a
 * global increasing id. EBUSY when user posted more than per_sec comments in the last second
 * (counted in MySQL, so it holds across processes).
 */
int	store_room_post(struct store *, const char *room, const char *user, const char *text,
	    int per_sec, uint64_t *id, int64_t *ts);
/* room_message events (JSON texts) with id > after, oldest first, at most limit; ids[i] each id. */
int	store_room_history(struct store *, const char *room, uint64_t after, int limit,
	    struct store_page *);
/* The room's newest comment id in *id (0 when it has none). */
int	store_room_last_id(struct store *, const char *room, uint64_t *id);

#endif
