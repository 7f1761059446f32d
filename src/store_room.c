/* store_room.c - rooms: rate-limited comments, trimmed to the newest room_history, and pages. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "protocol.h"
#include "store.h"
#include "store_int.h"
#include "xmalloc.h"

enum {
	Q_RATE_LOCK = STORE__Q(STORE__SET_ROOM),
	Q_RATE_COUNT,
	Q_RATE_LOG,
	Q_RATE_PRUNE,
	Q_ROOM_INSERT,
	Q_ROOM_NTH,
	Q_ROOM_TRIM,
	Q_ROOM_PAGE,
	Q_ROOM_LAST,
	Q_ROOM_END
};
STORE__QSET_CHECK(Q_ROOM_END, STORE__SET_ROOM);

static const char *const room_sql[Q_ROOM_END - STORE__Q(STORE__SET_ROOM)] = {
	/* The user's room_rate row is the lock that serialises their posts across processes. */
	STORE__SQL(Q_RATE_LOCK) = "INSERT INTO room_rate (user_id, win, n) VALUES (?, 0, 0)"
	    " ON DUPLICATE KEY UPDATE n = n",
	/*
	 * MySQL's clock, in ms (UNIX_TIMESTAMP() is free of time zones; NOW(6), of the same statement
	 * start, adds the milliseconds), and the user's posts in the second before it. One clock for
	 * every host: with each host's own, a host ahead would stretch others' windows and prune
	 * their entries, a host behind would shrink its own.
	 */
	STORE__SQL(Q_RATE_COUNT) = "SELECT (SELECT COUNT(*) FROM room_rate_log WHERE user_id = ?"
	    " AND ts > t.now - 1000), t.now FROM (SELECT UNIX_TIMESTAMP() * 1000 +"
	    " MICROSECOND(NOW(6)) DIV 1000 AS now) t",
	STORE__SQL(Q_RATE_LOG) = "INSERT INTO room_rate_log (user_id, ts) VALUES (?, ?)",
	STORE__SQL(Q_RATE_PRUNE) = "DELETE FROM room_rate_log WHERE user_id = ? AND ts <= ?",
	STORE__SQL(Q_ROOM_INSERT) = "INSERT INTO room_messages (room, user_id, text, ts)"
	    " VALUES (?, ?, ?, ?)",
	STORE__SQL(Q_ROOM_NTH) = "SELECT id FROM room_messages WHERE room = ?"
	    " ORDER BY id DESC LIMIT 1 OFFSET ?",
	STORE__SQL(Q_ROOM_TRIM) = "DELETE FROM room_messages WHERE room = ? AND id <= ?",
	STORE__SQL(Q_ROOM_PAGE) = "SELECT id, user_id, text, ts FROM room_messages"
	    " WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
	STORE__SQL(Q_ROOM_LAST) = "SELECT COALESCE(MAX(id), 0) FROM room_messages WHERE room = ?",
};

const struct store__qset store__room_qset = { room_sql, Q_ROOM_END - STORE__Q(STORE__SET_ROOM),
    NULL };

/* --- rooms --------------------------------------------------------------------------------- */

struct room_ctx {
	const char		*room;
	const char		*user;
	const char		*text;
	int			 per_sec;
	uint64_t		 id;
	int64_t			 ts;
	int			 limit;
	struct store_page	*page;
};

/*
 * Rate limit: a sliding one-second window per user, on MySQL's clock. Under the user's room_rate
 * row lock (so it holds across processes and hosts) count the posts of the last 1000 ms in
 * room_rate_log; a fixed
 * per-second window would let 2 * per_sec through across a second boundary. A refused post rolls
 * back and does not count. Then the comment is stored and the room trimmed to its newest
 * room_history comments.
 */
static int
room_post_txn(struct store *s, void *arg)
{
	struct room_ctx *c = arg;
	uint64_t n, cut, ts;
	int rc;

	if ((rc = store__mine(s, &c->id, &ts, NULL)) != 0) {
		c->ts = (int64_t)ts;
		return rc < 0 ? -1 : 1;
	}
	if (EXEC(s, Q_RATE_LOCK, PS(c->user)) != 0)
		return -1;
	rc = ROW(s, Q_RATE_COUNT, PS(c->user));
	n = rc == 1 ? store__col_u(s, Q_RATE_COUNT, 0) : 0;
	c->ts = rc == 1 ? store__col_i(s, Q_RATE_COUNT, 1) : 0;
	store__done(s, Q_RATE_COUNT);
	if (rc < 0)
		return -1;
	if (rc != 1)
		return store__refuse(EIO);
	if (n >= (uint64_t)c->per_sec)
		return store__refuse(EBUSY);
	if (EXEC(s, Q_RATE_PRUNE, PS(c->user), PI(c->ts - 1000)) != 0 ||
	    EXEC(s, Q_RATE_LOG, PS(c->user), PI(c->ts)) != 0)
		return -1;
	if (EXEC(s, Q_ROOM_INSERT, PS(c->room), PS(c->user), PS(c->text), PI(c->ts)) != 0)
		return -1;
	c->id = store__insert_id(s, Q_ROOM_INSERT);
	rc = ROW(s, Q_ROOM_NTH, PS(c->room), PU((uint64_t)s->cfg->room_history));
	cut = rc == 1 ? store__col_u(s, Q_ROOM_NTH, 0) : 0;
	store__done(s, Q_ROOM_NTH);
	if (rc < 0)
		return -1;
	if (cut != 0 && EXEC(s, Q_ROOM_TRIM, PS(c->room), PU(cut)) != 0)
		return -1;
	return store__mark(s, c->id, (uint64_t)c->ts, NULL);
}

int
store_room_post(struct store *s, const char *room, const char *user, const char *text,
    int per_sec, uint64_t *id, int64_t *ts)
{
	struct room_ctx c = { .room = room, .user = user, .text = text, .per_sec = per_sec };

	if (room == NULL || user == NULL || text == NULL || !protocol_valid_room(room) ||
	    !protocol_valid_user(user) || *text == '\0' || !protocol_valid_utf8(text, strlen(text)) ||
	    per_sec < 1)
		return store__refuse(EINVAL);
	if (store__run(s, 1, room_post_txn, &c) != 0)
		return -1;
	*id = c.id;
	*ts = c.ts;
	return 0;
}

/* A page of the room's comments after c->id; one row more than the limit tells has_more. */
static int
room_history_fn(struct store *s, void *arg)
{
	struct room_ctx *c = arg;
	struct store_page *p = c->page;
	uint64_t id;
	int rc;

	store_page_clear(p);
	p->next = c->id;
	p->has_more = 0;
	if (EXEC(s, Q_ROOM_PAGE, PS(c->room), PU(c->id), PU((uint64_t)c->limit + 1)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_ROOM_PAGE)) == 1) {
		if (p->n == (size_t)c->limit) {
			p->has_more = 1;
			break;
		}
		id = store__col_u(s, Q_ROOM_PAGE, 0);
		p->ids = xreallocarray(p->ids, p->n + 1, sizeof *p->ids);
		p->ids[p->n] = id;
		store__page_push(p, protocol_event_room_message(c->room, id, store__col_s(s, Q_ROOM_PAGE, 1),
		    store__col_s(s, Q_ROOM_PAGE, 2), store__col_i(s, Q_ROOM_PAGE, 3)));
		p->next = id;
	}
	store__done(s, Q_ROOM_PAGE);
	return rc < 0 ? -1 : 0;
}

int
store_room_history(struct store *s, const char *room, uint64_t after, int limit,
    struct store_page *p)
{
	struct room_ctx c = { .room = room, .id = after, .limit = limit, .page = p };

	memset(p, 0, sizeof *p);
	if (room == NULL || !protocol_valid_room(room) || limit < 1)
		return store__refuse(EINVAL);
	if (store__run(s, 0, room_history_fn, &c) != 0) {
		store_page_clear(p);
		return -1;
	}
	return 0;
}

/* The room's newest comment id (the starting point of a listener's catch-ups). */
static int
room_last_fn(struct store *s, void *arg)
{
	struct room_ctx *c = arg;
	int rc;

	rc = ROW(s, Q_ROOM_LAST, PS(c->room));
	c->id = rc == 1 ? store__col_u(s, Q_ROOM_LAST, 0) : 0;
	store__done(s, Q_ROOM_LAST);
	return rc < 0 ? -1 : 0;
}

int
store_room_last_id(struct store *s, const char *room, uint64_t *id)
{
	struct room_ctx c = { .room = room };

	if (room == NULL || !protocol_valid_room(room))
		return store__refuse(EINVAL);
	if (store__run(s, 0, room_last_fn, &c) != 0)
		return -1;
	*id = c.id;
	return 0;
}
