/* store_log.c - the per-user event log (pages, newest seq) and the device cursors. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>

#include "log.h"
#include "protocol.h"
#include "store.h"
#include "store_int.h"
#include "xmalloc.h"

enum {
	Q_EV_PAGE = STORE__Q(STORE__SET_LOG),
	Q_SEQ_GET,
	Q_CUR_GET,
	Q_CUR_SET,
	Q_LOG_END
};
STORE__QSET_CHECK(Q_LOG_END, STORE__SET_LOG);

static const char *const log_sql[Q_LOG_END - STORE__Q(STORE__SET_LOG)] = {
	/*
	 * The page and, as a row of kind 0, the oldest seq retention kept (user_seq.first_seq):
	 * one statement, so one read view sees both (a prune commits its deletions and the move
	 * of first_seq together). Below first_seq a log keeps only new_message rows, as the
	 * history's index (store_history.c): the join on the (const) user_seq row starts the
	 * range scan of the primary key at first_seq.
	 */
	STORE__SQL(Q_EV_PAGE) = "SELECT first_seq, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
	    " NULL FROM user_seq WHERE user_id = ? UNION ALL"
	    " (SELECT e.seq, e.kind, e.body, m.id, m.sender, m.recipient,"
	    " m.group_id, m.content, m.client_msg_id, m.ts FROM user_seq u JOIN events e"
	    " ON e.user_id = u.user_id AND e.seq >= u.first_seq LEFT JOIN messages m"
	    " ON m.id = e.message_id WHERE u.user_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?)",
	STORE__SQL(Q_SEQ_GET) = "SELECT last_seq FROM user_seq WHERE user_id = ?",
	STORE__SQL(Q_CUR_GET) = "SELECT cur_seq FROM device_cursors"
	    " WHERE user_id = ? AND device_id = ?",
	STORE__SQL(Q_CUR_SET) = "INSERT INTO device_cursors (user_id, device_id, cur_seq)"
	    " VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE cur_seq = VALUES(cur_seq)",
};

const struct store__qset store__log_qset = { log_sql, Q_LOG_END - STORE__Q(STORE__SET_LOG), NULL };

/* --- event log ---------------------------------------------------------------------------- */

struct events_ctx {
	const char		*user;
	uint64_t		 after;
	int			 limit;
	struct store_page	*page;
};

/*
 * The message in columns first..first+6 of q's current row: id, from, to, group_id, content,
 * client_msg_id, ts (the order of Q_EV_PAGE and store_history.c's Q_HIST_PAGE). Its strings are
 * the row's: valid until the next fetch.
 */
void
store__col_message(struct store *s, unsigned q, unsigned first, struct proto_message *m)
{
	m->id = store__col_u(s, q, first);
	m->from = store__col_s(s, q, first + 1);
	m->to = store__col_s(s, q, first + 2);
	m->group_id = store__col_u(s, q, first + 3);
	m->content = store__col_s(s, q, first + 4);
	m->client_msg_id = store__col_s(s, q, first + 5);
	m->ts = store__col_i(s, q, first + 6);
}

/*
 * A page of user's log after c->after; one row more than the limit tells has_more. The page is
 * behind (oldest_seq set) when after + 1 lies before the oldest event kept: first_seq, or the
 * first seq returned if a prune committed in between (the log has no other gaps). Its next then
 * skips the pruned stretch, so that the following page does not report the same reset again.
 */
static int
events_fn(struct store *s, void *arg)
{
	struct events_ctx *c = arg;
	struct store_page *p = c->page;
	struct proto_message m;
	uint64_t seq, first = 1, first_row = 0, rows = 0;
	const char *body;
	int rc;

	store_page_clear(p);
	p->next = c->after;
	p->has_more = 0;
	p->oldest_seq = 0;
	if (EXEC(s, Q_EV_PAGE, PS(c->user), PS(c->user), PU(c->after),
	    PU((uint64_t)c->limit + 1)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_EV_PAGE)) == 1) {
		seq = store__col_u(s, Q_EV_PAGE, 0);
		if (store__col_u(s, Q_EV_PAGE, 1) == 0) {
			first = seq;
			continue;
		}
		if (rows++ == 0)
			first_row = seq;
		if (p->n == (size_t)c->limit) {
			p->has_more = 1;
			continue;	/* read on: the first_seq row may come last */
		}
		body = store__col_s(s, Q_EV_PAGE, 2);
		if (store__col_u(s, Q_EV_PAGE, 1) == EV_MESSAGE && !store__col_null(s, Q_EV_PAGE, 3)) {
			store__col_message(s, Q_EV_PAGE, 3, &m);
			store__page_push(p, protocol_event_new_message(seq, &m));
		} else if (body != NULL)
			store__page_push(p, xstrdup(body));
		else if (store__col_u(s, Q_EV_PAGE, 1) != EV_MESSAGE)
			log_warn("store: event %llu of a user has no body", (unsigned long long)seq);
		/* else: a new_message whose message retention deleted; the event goes soon too. */
		p->next = seq;
	}
	store__done(s, Q_EV_PAGE);
	if (rc < 0)
		return -1;
	if (rows > 0 && first_row > first)
		first = first_row;
	if (c->after + 1 < first) {
		p->oldest_seq = first;
		if (p->next < first - 1)
			p->next = first - 1;
	}
	return 0;
}

int
store_events(struct store *s, const char *user, uint64_t after, int limit, struct store_page *p)
{
	struct events_ctx c = { user, after, limit, p };

	memset(p, 0, sizeof *p);
	if (user == NULL || !protocol_valid_user(user) || limit < 1)
		return store__refuse(EINVAL);
	if (store__run(s, 0, events_fn, &c) != 0) {
		store_page_clear(p);
		return -1;
	}
	return 0;
}

struct u64_ctx {
	const char	*a;
	const char	*b;
	uint64_t	 v;
};

static int
last_seq_fn(struct store *s, void *arg)
{
	struct u64_ctx *c = arg;
	int rc;

	rc = ROW(s, Q_SEQ_GET, PS(c->a));
	c->v = rc == 1 ? store__col_u(s, Q_SEQ_GET, 0) : 0;
	store__done(s, Q_SEQ_GET);
	return rc < 0 ? -1 : 0;
}

int
store_last_seq(struct store *s, const char *user, uint64_t *seq)
{
	struct u64_ctx c = { user, NULL, 0 };

	if (user == NULL || !protocol_valid_user(user))
		return store__refuse(EINVAL);
	if (store__run(s, 0, last_seq_fn, &c) != 0)
		return -1;
	*seq = c.v;
	return 0;
}

/* --- cursors ------------------------------------------------------------------------------- */

static int
cursor_get_fn(struct store *s, void *arg)
{
	struct u64_ctx *c = arg;
	int rc;

	rc = ROW(s, Q_CUR_GET, PS(c->a), PS(c->b));
	c->v = rc == 1 ? store__col_u(s, Q_CUR_GET, 0) : 0;
	store__done(s, Q_CUR_GET);
	return rc < 0 ? -1 : 0;
}

int
store_cursor_get(struct store *s, const char *user, const char *device, uint64_t *cursor)
{
	struct u64_ctx c = { user, device, 0 };

	if (user == NULL || device == NULL || !protocol_valid_user(user) || !protocol_valid_id(device))
		return store__refuse(EINVAL);
	if (store__run(s, 0, cursor_get_fn, &c) != 0)
		return -1;
	*cursor = c.v;
	return 0;
}

static int
cursor_set_fn(struct store *s, void *arg)
{
	struct u64_ctx *c = arg;

	return EXEC(s, Q_CUR_SET, PS(c->a), PS(c->b), PU(c->v));
}

int
store_cursor_set(struct store *s, const char *user, const char *device, uint64_t cursor)
{
	struct u64_ctx c = { user, device, cursor };

	if (user == NULL || device == NULL || !protocol_valid_user(user) || !protocol_valid_id(device))
		return store__refuse(EINVAL);
	return store__run(s, 0, cursor_set_fn, &c);
}
