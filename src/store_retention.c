/* store_retention.c - retention: prune each log's oldest events and the oldest messages, in small batches. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "store_int.h"
#include "xmalloc.h"

enum {
	Q_RET_USERS = STORE__Q(STORE__SET_RETENTION),
	Q_RET_SCAN,
	Q_RET_CUT,
	Q_RET_FIRST,
	Q_RET_INDEX_SCAN,
	Q_RET_INDEX_CUT,
	Q_RET_MSG_SCAN,
	Q_RET_DEL_MSGS,
	Q_RETENTION_END
};
STORE__QSET_CHECK(Q_RETENTION_END, STORE__SET_RETENTION);

/*
 * A log is pruned in two steps. (1) Its oldest events go and first_seq moves past them: /sync
 * and the WebSocket no longer serve them (a reader behind gets a reset). Their new_message rows
 * stay, though, while their message is kept: below first_seq they are the history's index
 * (store_history.c), so a client that was reset can still reload its conversations. (2) Those
 * rows go when their message goes. Every scan is a plain read (no locks); every deletion is a
 * short transaction of at most a batch of rows.
 */
static const char *const retention_sql[Q_RETENTION_END - STORE__Q(STORE__SET_RETENTION)] = {
	/*
	 * A page of logs, each with what its probes would say: may the event at first_seq go
	 * (step 1 has work), and its lowest seq (below first_seq: history rows for step 2). Logs
	 * with nothing to do then cost nothing more than their row in this page.
	 */
	STORE__SQL(Q_RET_USERS) = "SELECT u.user_id, u.first_seq,"
	    " (SELECT e.ts < ? OR (? AND e.kind = 1 AND (m.id IS NULL OR m.ts < ?)) FROM events e"
	    " LEFT JOIN messages m ON m.id = e.message_id"
	    " WHERE e.user_id = u.user_id AND e.seq = u.first_seq),"
	    " (SELECT MIN(e.seq) FROM events e WHERE e.user_id = u.user_id)"
	    " FROM user_seq u WHERE u.user_id > ? ORDER BY u.user_id LIMIT ?",
	/*
	 * (1) The events from first_seq on, each with "may go": appended before the events
	 * cut-off, or (when messages are pruned) a new_message whose message is older than the
	 * messages cut-off or gone already.
	 */
	STORE__SQL(Q_RET_SCAN) = "SELECT e.seq, e.ts < ? OR (? AND e.kind = 1"
	    " AND (m.id IS NULL OR m.ts < ?)) FROM events e LEFT JOIN messages m"
	    " ON m.id = e.message_id WHERE e.user_id = ? AND e.seq >= ? ORDER BY e.seq LIMIT ?",
	/* Every event of [lo, hi) but the new_message rows of messages that stay. */
	STORE__SQL(Q_RET_CUT) = "DELETE e FROM events e LEFT JOIN messages m ON m.id = e.message_id"
	    " WHERE e.user_id = ? AND e.seq >= ? AND e.seq < ? AND (e.kind <> 1"
	    " OR (? AND (m.id IS NULL OR m.ts < ?)))",
	STORE__SQL(Q_RET_FIRST) = "UPDATE user_seq SET first_seq = GREATEST(first_seq, ?)"
	    " WHERE user_id = ?",
	/* (2) The history rows below first_seq, oldest first, with "its message goes". */
	STORE__SQL(Q_RET_INDEX_SCAN) = "SELECT e.seq, m.id IS NULL OR m.ts < ? FROM events e"
	    " LEFT JOIN messages m ON m.id = e.message_id WHERE e.user_id = ? AND e.seq < ?"
	    " ORDER BY e.seq LIMIT ?",
	STORE__SQL(Q_RET_INDEX_CUT) = "DELETE FROM events WHERE user_id = ? AND seq < ?",
	STORE__SQL(Q_RET_MSG_SCAN) = "SELECT id, ts < ? FROM messages WHERE id > ? ORDER BY id"
	    " LIMIT ?",
	STORE__SQL(Q_RET_DEL_MSGS) = "DELETE FROM messages WHERE id > ? AND id <= ? AND ts < ?",
};

const struct store__qset store__retention_qset = { retention_sql,
    Q_RETENTION_END - STORE__Q(STORE__SET_RETENTION), NULL };

/* One prune run: its cut-offs and sizes, the user being pruned, and what was deleted. */
struct prune_ctx {
	int64_t			 ev_before;	/* events appended before this go (0: none by age) */
	int64_t			 msg_before;	/* messages sent before this go (0: none) */
	int			 batch;
	int			 pause_ms;
	struct store_prune_res	*res;
	/* the page of users */
	char			**users;
	uint64_t		*firsts;
	int			*work;		/* per user: 1 step 1, 2 step 2 has work */
	size_t			 nusers;
	const char		*after_user;
	/* one step */
	const char		*user;
	uint64_t		 lo;		/* events: first seq; messages: ids above lo */
	uint64_t		 hi;		/* events: first seq kept; messages: last id to go */
	int			 lim;		/* rows to scan */
	int			 more;		/* the scan found only old rows and was full */
};

static void
prune_pause(const struct prune_ctx *c)
{
	if (c->pause_ms > 0)
		usleep((useconds_t)c->pause_ms * 1000);
}

/* The next page of user logs (by user id) into c->users / c->firsts. */
static int
prune_users_fn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;
	uint64_t first;
	int rc, w;

	store__strv_free(c->users, c->nusers);
	free(c->firsts);
	free(c->work);
	c->users = NULL;
	c->firsts = NULL;
	c->work = NULL;
	c->nusers = 0;
	if (EXEC(s, Q_RET_USERS, PI(c->ev_before), PI(c->msg_before != 0), PI(c->msg_before),
	    PS(c->after_user), PU((uint64_t)c->batch)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_RET_USERS)) == 1) {
		first = store__col_u(s, Q_RET_USERS, 1);
		w = store__col_u(s, Q_RET_USERS, 2) == 1;
		if (c->msg_before != 0 && !store__col_null(s, Q_RET_USERS, 3) &&
		    store__col_u(s, Q_RET_USERS, 3) < first)
			w |= 2;
		c->users = xreallocarray(c->users, c->nusers + 1, sizeof *c->users);
		c->firsts = xreallocarray(c->firsts, c->nusers + 1, sizeof *c->firsts);
		c->work = xreallocarray(c->work, c->nusers + 1, sizeof *c->work);
		c->users[c->nusers] = xstrdup(store__col_s(s, Q_RET_USERS, 0));
		c->firsts[c->nusers] = first;
		c->work[c->nusers++] = w;
	}
	store__done(s, Q_RET_USERS);
	return rc < 0 ? -1 : 0;
}

/*
 * (1) How far may c->user's log be cut? c->hi = the first seq from c->lo on that must stay: the
 * cut is always a prefix, so that "every event from first_seq on is there" holds.
 */
static int
prune_scan_fn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;
	int rc, rows = 0, stop = 0;

	c->hi = c->lo;
	c->more = 0;
	if (EXEC(s, Q_RET_SCAN, PI(c->ev_before), PI(c->msg_before != 0), PI(c->msg_before),
	    PS(c->user), PU(c->lo), PU((uint64_t)c->lim)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_RET_SCAN)) == 1) {
		rows++;
		if (stop)
			continue;
		if (store__col_u(s, Q_RET_SCAN, 1) != 1 || store__col_u(s, Q_RET_SCAN, 0) != c->hi)
			stop = 1;
		else
			c->hi++;
	}
	store__done(s, Q_RET_SCAN);
	c->more = !stop && rows == c->lim;
	return rc < 0 ? -1 : 0;
}

/*
 * (1) Cut c->user's log below c->hi and move its first_seq there, in one short transaction: a
 * reader sees both or neither. The seq row is locked last, so a send to this user waits only
 * for the commit (sends lock it first and never touch the old rows).
 */
static int
prune_cut_txn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;

	if (EXEC(s, Q_RET_CUT, PS(c->user), PU(c->lo), PU(c->hi), PI(c->msg_before != 0),
	    PI(c->msg_before)) != 0)
		return -1;
	c->res->events += store__affected(s, Q_RET_CUT);
	return EXEC(s, Q_RET_FIRST, PU(c->hi), PS(c->user));
}

/* (2) c->hi = the seq after the last history row below c->lo whose message goes (a prefix). */
static int
prune_index_scan_fn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;
	int rc, rows = 0, stop = 0;

	c->hi = 0;
	c->more = 0;
	if (EXEC(s, Q_RET_INDEX_SCAN, PI(c->msg_before), PS(c->user), PU(c->lo),
	    PU((uint64_t)c->lim)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_RET_INDEX_SCAN)) == 1) {
		rows++;
		if (stop)
			continue;
		if (store__col_u(s, Q_RET_INDEX_SCAN, 1) != 1)
			stop = 1;
		else
			c->hi = store__col_u(s, Q_RET_INDEX_SCAN, 0) + 1;
	}
	store__done(s, Q_RET_INDEX_SCAN);
	c->more = !stop && rows == c->lim;
	return rc < 0 ? -1 : 0;
}

static int
prune_index_cut_txn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;

	if (EXEC(s, Q_RET_INDEX_CUT, PS(c->user), PU(c->hi)) != 0)
		return -1;
	c->res->events += store__affected(s, Q_RET_INDEX_CUT);
	return 0;
}

/*
 * Run scan, then cut while the scan found something to cut, in batches: a probe of one row
 * first (most logs have nothing to prune), then c->batch rows per scan and transaction.
 */
static int
prune_steps(struct store *s, struct prune_ctx *c, store__fn scan, store__fn cut, int advance)
{
	c->lim = 1;
	for (;;) {
		if (store__run(s, 0, scan, c) != 0)
			return -1;
		if (c->lim == 1 && c->more) {
			c->lim = c->batch;	/* the probe may go: read a batch, cut that */
			continue;
		}
		if (c->hi > (advance ? c->lo : 0)) {
			if (store__run(s, 1, cut, c) != 0)
				return -1;
			if (advance)
				c->lo = c->hi;
		}
		if (!c->more)
			return 0;
		prune_pause(c);
	}
}

/*
 * Prune one user's log: (1) from first, when its first event may go, then (2) below the new
 * first_seq, when history rows were left there by earlier runs (step 1 itself deletes the rows
 * of old messages in what it cuts) and messages are pruned.
 */
static int
prune_log(struct store *s, struct prune_ctx *c, const char *user, uint64_t first, int work)
{
	c->user = user;
	c->lo = first;
	if ((work & 1) != 0 && prune_steps(s, c, prune_scan_fn, prune_cut_txn, 1) != 0)
		return -1;
	if (c->lo > first)
		c->res->logs++;
	if ((work & 2) == 0)
		return 0;
	/* c->lo is the first_seq now. */
	return prune_steps(s, c, prune_index_scan_fn, prune_index_cut_txn, 0);
}

/* Which messages may go: c->hi = the last id of the old prefix above c->lo. */
static int
prune_msg_scan_fn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;
	int rc, rows = 0, stop = 0;

	c->hi = c->lo;
	c->more = 0;
	if (EXEC(s, Q_RET_MSG_SCAN, PI(c->msg_before), PU(c->lo), PU((uint64_t)c->lim)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_RET_MSG_SCAN)) == 1) {
		rows++;
		if (stop)
			continue;
		if (store__col_u(s, Q_RET_MSG_SCAN, 1) != 1)
			stop = 1;
		else
			c->hi = store__col_u(s, Q_RET_MSG_SCAN, 0);
	}
	store__done(s, Q_RET_MSG_SCAN);
	c->more = !stop && rows == c->lim;
	return rc < 0 ? -1 : 0;
}

static int
prune_msg_txn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;

	if (EXEC(s, Q_RET_DEL_MSGS, PU(c->lo), PU(c->hi), PI(c->msg_before)) != 0)
		return -1;
	c->res->messages += store__affected(s, Q_RET_DEL_MSGS);
	return 0;
}

/*
 * Messages by id: ids grow with time, so the old ones are a prefix; the first message young
 * enough ends the run (one that is older still, from a send that raced it, goes next time).
 */
static int
prune_messages(struct store *s, struct prune_ctx *c)
{
	c->lo = 0;
	c->lim = c->batch;
	for (;;) {
		if (store__run(s, 0, prune_msg_scan_fn, c) != 0)
			return -1;
		if (c->hi > c->lo) {
			if (store__run(s, 1, prune_msg_txn, c) != 0)
				return -1;
			c->lo = c->hi;
		}
		if (!c->more)
			return 0;
		prune_pause(c);
	}
}

int
store_prune(struct store *s, int64_t events_before_ms, int64_t messages_before_ms, int batch,
    int pause_ms, struct store_prune_res *res)
{
	struct prune_ctx c;
	char *last = NULL;
	size_t i;
	int rc = -1;

	memset(res, 0, sizeof *res);
	if (batch < 1 || pause_ms < 0 || events_before_ms < 0 || messages_before_ms < 0)
		return store__refuse(EINVAL);
	memset(&c, 0, sizeof c);
	/* An event outlives neither its age limit nor the message it carries. */
	c.ev_before = events_before_ms > messages_before_ms ? events_before_ms : messages_before_ms;
	c.msg_before = messages_before_ms;
	c.batch = batch;
	c.pause_ms = pause_ms;
	c.res = res;
	c.after_user = "";
	if (c.ev_before != 0) {
		do {
			if (store__run(s, 0, prune_users_fn, &c) != 0)
				goto out;
			for (i = 0; i < c.nusers; i++) {
				if (c.work[i] != 0 &&
				    prune_log(s, &c, c.users[i], c.firsts[i], c.work[i]) != 0)
					goto out;
			}
			if (c.nusers > 0) {
				free(last);
				last = xstrdup(c.users[c.nusers - 1]);
				c.after_user = last;
			}
		} while (c.nusers == (size_t)batch);
	}
	/* After the events: a kept event never names a message this deletes (same cut-off). */
	if (c.msg_before != 0 && prune_messages(s, &c) != 0)
		goto out;
	rc = 0;
out:
	if (rc != 0)
		log_warn("prune: stopped after %llu events and %llu messages",
		    (unsigned long long)res->events, (unsigned long long)res->messages);
	store__strv_free(c.users, c.nusers);
	free(c.firsts);
	free(c.work);
	free(last);
	return rc;
}
