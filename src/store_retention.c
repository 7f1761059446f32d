/* store_retention.c - retention: prune each log's oldest events and the oldest messages, in small batches. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
	/* Multi-row forms of Q_RET_FIRST. */
	Q_RET_FIRST_M2,
	Q_RET_FIRST_M4,
	Q_RET_FIRST_M8,
	Q_RET_FIRST_M16,
	Q_RET_FIRST_M32,
	Q_RET_FIRST_M64,
	Q_RET_FIRST_M128,
	Q_RET_FIRST_M256,
	Q_RET_FIRST_M512,
	/* Lock the seq rows of a batch that are free now, never waiting (multi-row forms). */
	Q_RET_LOCK,
	Q_RET_LOCK_M2,
	Q_RET_LOCK_M4,
	Q_RET_LOCK_M8,
	Q_RET_LOCK_M16,
	Q_RET_LOCK_M32,
	Q_RET_LOCK_M64,
	Q_RET_LOCK_M128,
	Q_RET_LOCK_M256,
	Q_RET_LOCK_M512,
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
/*
 * The first_seq of many logs in one statement (rows in user order: a send locks the seq rows
 * of its users in that order too). The rows exist (the logs came from user_seq, whose rows are
 * never deleted): the statement only ever updates.
 */
#define FIRST_HEAD	"INSERT INTO user_seq (user_id, last_seq, first_seq) VALUES "
#define FIRST_ROW	"(?, 0, ?)"
#define FIRST_TAIL	" ON DUPLICATE KEY UPDATE first_seq = GREATEST(first_seq, VALUES(first_seq))"
/*
 * Before it: lock those rows that nobody holds now (a send in progress holds its users' rows);
 * the ones skipped are tried again in another transaction, so that prune never waits for a
 * send while holding the rows of other logs (a send to those would wait as long).
 */
#define LOCK_HEAD	"SELECT user_id FROM user_seq WHERE user_id IN ("
#define LOCK_TAIL	") ORDER BY user_id FOR UPDATE SKIP LOCKED"

static const char *const retention_sql[Q_RETENTION_END - STORE__Q(STORE__SET_RETENTION)] = {
	/*
	 * A page of logs, each with what its probes would say: may the event at first_seq go
	 * (step 1 has work), and its lowest seq (below first_seq: history rows for step 2). Logs
	 * with nothing to do then cost nothing more than their row in this page. The lowest seq
	 * is the log's first entry in the primary key: ORDER BY seq LIMIT 1 reads that one row
	 * (MIN(seq) in this dependent subquery read the whole log, measured with Handler_read_next).
	 */
	STORE__SQL(Q_RET_USERS) = "SELECT u.user_id, u.first_seq,"
	    " (SELECT e.ts < ? OR (? AND e.kind = 1 AND (m.id IS NULL OR m.ts < ?)) FROM events e"
	    " LEFT JOIN messages m ON m.id = e.message_id"
	    " WHERE e.user_id = u.user_id AND e.seq = u.first_seq),"
	    " (SELECT e.seq FROM events e WHERE e.user_id = u.user_id ORDER BY e.seq LIMIT 1)"
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
	STORE__SQL(Q_RET_FIRST) = FIRST_HEAD FIRST_ROW FIRST_TAIL,
	/* (2) The history rows below first_seq, oldest first, with "its message goes". */
	STORE__SQL(Q_RET_INDEX_SCAN) = "SELECT e.seq, m.id IS NULL OR m.ts < ? FROM events e"
	    " LEFT JOIN messages m ON m.id = e.message_id WHERE e.user_id = ? AND e.seq >= ?"
	    " AND e.seq < ? ORDER BY e.seq LIMIT ?",
	STORE__SQL(Q_RET_INDEX_CUT) = "DELETE FROM events WHERE user_id = ? AND seq < ?",
	STORE__SQL(Q_RET_MSG_SCAN) = "SELECT id, ts < ? FROM messages WHERE id > ? ORDER BY id"
	    " LIMIT ?",
	STORE__SQL(Q_RET_DEL_MSGS) = "DELETE FROM messages WHERE id > ? AND id <= ? AND ts < ?",
};

/* The forms of the first_seq update, by store__chunks[] rows (the last: the one-row form). */
static const unsigned retention_first_rows[] = { Q_RET_FIRST_M512, Q_RET_FIRST_M256,
    Q_RET_FIRST_M128, Q_RET_FIRST_M64, Q_RET_FIRST_M32, Q_RET_FIRST_M16, Q_RET_FIRST_M8,
    Q_RET_FIRST_M4, Q_RET_FIRST_M2, Q_RET_FIRST };
static const unsigned retention_lock_rows[] = { Q_RET_LOCK_M512, Q_RET_LOCK_M256, Q_RET_LOCK_M128,
    Q_RET_LOCK_M64, Q_RET_LOCK_M32, Q_RET_LOCK_M16, Q_RET_LOCK_M8, Q_RET_LOCK_M4, Q_RET_LOCK_M2,
    Q_RET_LOCK };
_Static_assert(PARLEY_NITEMS(retention_first_rows) == STORE__NCHUNKS,
    "one form per store__chunks[] size");
_Static_assert(PARLEY_NITEMS(retention_lock_rows) == STORE__NCHUNKS,
    "one form per store__chunks[] size");

/* The SQL of the multi-row form with index i in the set. */
static char *
retention_make(unsigned i)
{
	unsigned q = STORE__Q(STORE__SET_RETENTION) + i;
	size_t k;

	for (k = 0; k < STORE__NCHUNKS; k++) {
		if (q == retention_first_rows[k])
			return store__multi_sql(FIRST_HEAD, FIRST_ROW, store__chunks[k], FIRST_TAIL);
		if (q == retention_lock_rows[k])
			return store__multi_sql(LOCK_HEAD, "?", store__chunks[k], LOCK_TAIL);
	}
	fatal("store: retention statement %u has no SQL", q);
}

const struct store__qset store__retention_qset = { retention_sql,
    Q_RETENTION_END - STORE__Q(STORE__SET_RETENTION), retention_make };

/* Logs per batch transaction at most (the largest multi-row form of the first_seq update). */
#define PRUNE_GROUP	64	/* <= store__chunks[0]: one first_seq statement per batch */
/* Logs per page of the walk over user_seq. */
#define PRUNE_PAGE	1000
/* Rows the first scan of a log reads: most logs lose a few events per run. */
#define PRUNE_PROBE	16
/* Rounds of a batch whose seq rows are all held by sends before prune waits for them. */
#define PRUNE_BUSY_TRIES	50

/*
 * A cut waiting for the batch transaction: step (1) deletes [lo, hi) of user's log and moves
 * its first_seq to hi; step (2) (index) deletes its history rows below hi.
 */
struct prune_cut {
	char		*user;
	uint64_t	 lo;
	uint64_t	 hi;
	int		 index;
	int		 busy;		/* its seq row was held by another transaction */
};

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
	/* one scan */
	const char		*user;
	uint64_t		 lo;		/* events: first seq; messages: ids above lo */
	uint64_t		 hi;		/* events: first seq kept; messages: last id to go */
	uint64_t		 bound;		/* step 2: rows below this only */
	int			 lim;		/* rows to scan */
	int			 more;		/* the scan found only old rows and was full */
	int			 found;		/* rows of the old prefix the scan found */
	/* the batch: cuts of up to PRUNE_GROUP logs, up to batch rows */
	struct prune_cut	 cuts[PRUNE_GROUP];
	size_t			 ncuts;
	int			 rows;		/* rows the cuts delete at most */
	uint64_t		 deleted;	/* by the current attempt of the transaction */
	int64_t			 lock_t0;	/* when it started locking user_seq rows (us) */
	int64_t			 lock_stmt_us;	/* how long that statement took */
	size_t			 busy;		/* cuts of the last attempt whose seq row was held */
	int			 wait;		/* the last resort: wait for held seq rows */
};

/* Microseconds on the monotonic clock (transaction and lock times for --verbose). */
static int64_t
prune_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

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
	    PS(c->after_user), PU(PRUNE_PAGE)) != 0)
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
 * cut is always a prefix, so that "every event from first_seq on is there" holds. The scan is
 * a plain read: the rows it finds are committed and never change, and a send only appends.
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
	c->found = (int)(c->hi - c->lo);
	c->more = !stop && rows == c->lim;
	return rc < 0 ? -1 : 0;
}

/*
 * (2) From c->lo, below c->bound: c->hi = the seq after the last history row whose message goes
 * (a prefix), c->found such rows.
 */
static int
prune_index_scan_fn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;
	int rc, rows = 0, stop = 0;

	c->hi = 0;
	c->more = 0;
	c->found = 0;
	if (EXEC(s, Q_RET_INDEX_SCAN, PI(c->msg_before), PS(c->user), PU(c->lo), PU(c->bound),
	    PU((uint64_t)c->lim)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_RET_INDEX_SCAN)) == 1) {
		rows++;
		if (stop)
			continue;
		if (store__col_u(s, Q_RET_INDEX_SCAN, 1) != 1) {
			stop = 1;
		} else {
			c->hi = store__col_u(s, Q_RET_INDEX_SCAN, 0) + 1;
			c->found++;
		}
	}
	store__done(s, Q_RET_INDEX_SCAN);
	c->more = !stop && rows == c->lim;
	return rc < 0 ? -1 : 0;
}

/*
 * Lock the seq rows of the batch's step-1 cuts that are free (p: user, seq pairs, n of them,
 * padded to form f), never waiting; mark the cuts whose row another transaction holds.
 */
static int
prune_lock_free(struct store *s, struct prune_ctx *c, const struct store_param *p, size_t n,
    size_t f)
{
	struct store_param u[PRUNE_GROUP];
	const char *got;
	size_t i, locked = 0;
	int rc;

	for (i = 0; i < store__chunks[f]; i++)
		u[i] = p[2 * i];
	if (store__exec(s, retention_lock_rows[f], u, store__chunks[f]) != 0)
		return -1;
	for (i = 0; i < c->ncuts; i++)
		c->cuts[i].busy = !c->cuts[i].index;
	while ((rc = store__fetch(s, retention_lock_rows[f])) == 1) {
		got = store__col_s(s, retention_lock_rows[f], 0);
		for (i = 0; i < c->ncuts; i++) {
			if (c->cuts[i].busy && strcmp(c->cuts[i].user, got) == 0) {
				c->cuts[i].busy = 0;
				locked++;
			}
		}
	}
	store__done(s, retention_lock_rows[f]);
	c->busy = n - locked;
	return rc < 0 ? -1 : 0;
}

/*
 * The batch transaction: every cut's rows (one statement per log, each a range of the primary
 * key), then the first_seq of every log of step 1 in one statement, last: a reader sees a log's
 * cut and its first_seq together. The user_seq rows, the only rows a send also locks, are locked
 * in user order (as a send locks them) from that statement to the commit only.
 */
static int
prune_batch_txn(struct store *s, void *arg)
{
	struct prune_ctx *c = arg;
	struct store_param p[2 * PRUNE_GROUP];
	const struct prune_cut *k;
	size_t i, f, n = 0;

	c->deleted = 0;
	c->lock_t0 = 0;
	c->busy = 0;
	for (i = 0; i < c->ncuts; i++) {
		k = &c->cuts[i];
		if (k->index ? EXEC(s, Q_RET_INDEX_CUT, PS(k->user), PU(k->hi)) :
		    EXEC(s, Q_RET_CUT, PS(k->user), PU(k->lo), PU(k->hi), PI(c->msg_before != 0),
		    PI(c->msg_before)))
			return -1;
		c->deleted += store__affected(s, k->index ? Q_RET_INDEX_CUT : Q_RET_CUT);
		if (!k->index) {
			p[2 * n] = PS(k->user);
			p[2 * n++ + 1] = PU(k->hi);
		}
	}
	if (n == 0)
		return 0;
	/*
	 * One statement, not one per chunk: each round trip would add to the time the rows
	 * locked so far are held. The smallest form that takes n rows, the last row repeated to
	 * fill it (the same update again changes nothing).
	 */
	for (f = STORE__NCHUNKS - 1; store__chunks[f] < n; f--)
		;
	for (i = n; i < store__chunks[f]; i++) {
		p[2 * i] = p[2 * n - 2];
		p[2 * i + 1] = p[2 * n - 1];
	}
	c->lock_t0 = prune_us();
	if (!c->wait && prune_lock_free(s, c, p, n, f) != 0)
		return -1;
	if (c->busy > 0)
		return 1;	/* roll back: the caller splits the batch */
	if (store__exec(s, retention_first_rows[f], p, 2 * store__chunks[f]) != 0)
		return -1;
	c->lock_stmt_us = prune_us() - c->lock_t0;
	return 0;
}

/* Run one batch transaction (fn) and note its times. */
static int
prune_txn(struct store *s, struct prune_ctx *c, store__fn fn)
{
	int64_t t0, t1;

	t0 = prune_us();
	c->lock_t0 = 0;
	if (store__run(s, 1, fn, c) != 0)
		return -1;
	t1 = prune_us();
	c->res->txns++;
	if (t1 - t0 > c->res->txn_max_us)
		c->res->txn_max_us = t1 - t0;
	if (c->lock_t0 != 0 && t1 - c->lock_t0 > c->res->lock_max_us)
		c->res->lock_max_us = t1 - c->lock_t0;
	if (c->lock_t0 != 0 && c->lock_stmt_us > c->res->lock_stmt_max_us)
		c->res->lock_stmt_max_us = c->lock_stmt_us;
	return 0;
}

/*
 * Run the batch transaction (if any cut waits), then pause. When a cut's seq row is held by a
 * send, the transaction rolls back and runs again without those cuts; they follow in another
 * one, a moment later. After PRUNE_BUSY_TRIES such rounds the rest waits for the row as any
 * transaction does (the few logs left are all it holds then).
 */
static int
prune_flush(struct store *s, struct prune_ctx *c)
{
	struct prune_cut t;
	size_t i, j, total = c->ncuts, nfree;
	int tries = 0;

	while (total > 0) {
		c->ncuts = total;
		c->wait = tries >= PRUNE_BUSY_TRIES;
		for (;;) {
			if (prune_txn(s, c, prune_batch_txn) != 0) {
				c->ncuts = total;
				return -1;
			}
			if (c->busy == 0)
				break;
			c->res->busy += c->busy;
			/* The free cuts first (in user order), the busy ones after them. */
			for (i = 0, nfree = 0; i < c->ncuts; i++) {
				if (!c->cuts[i].busy) {
					t = c->cuts[i];
					for (j = i; j > nfree; j--)
						c->cuts[j] = c->cuts[j - 1];
					c->cuts[nfree++] = t;
				}
			}
			if (nfree == 0)
				break;
			c->ncuts = nfree;
		}
		if (c->busy == 0) {
			/* cuts[0, ncuts) are in: drop them, the busy ones move up. */
			c->res->events += c->deleted;
			for (i = 0; i < c->ncuts; i++)
				free(c->cuts[i].user);
			memmove(c->cuts, c->cuts + c->ncuts, (total - c->ncuts) * sizeof *c->cuts);
			total -= c->ncuts;
		} else {
			tries++;
			usleep(1000);	/* every cut left is busy: let the sends finish */
		}
	}
	c->ncuts = 0;
	c->rows = 0;
	prune_pause(c);
	return 0;
}

/* Room in the batch for one more cut; flush it when full. */
static int
prune_room(struct store *s, struct prune_ctx *c)
{
	if (c->ncuts < PRUNE_GROUP && c->rows < c->batch)
		return 0;
	return prune_flush(s, c);
}

/* Add the cut the last scan found to the batch (extending this log's cut if it is the last). */
static void
prune_add(struct prune_ctx *c, int index)
{
	struct prune_cut *k = c->ncuts > 0 ? &c->cuts[c->ncuts - 1] : NULL;

	c->rows += c->found;
	if (k != NULL && k->index == index && strcmp(k->user, c->user) == 0) {
		k->hi = c->hi;
		return;
	}
	k = &c->cuts[c->ncuts++];
	k->user = xstrdup(c->user);
	k->lo = c->lo;
	k->hi = c->hi;
	k->index = index;
}

/*
 * Scan one step of c->user's log in reads that fit the room left in the batch (the first one
 * small: most logs lose a few rows), adding what may go to the batch, until the scan meets a
 * row that stays or the log's end.
 */
static int
prune_step(struct store *s, struct prune_ctx *c, store__fn scan, int index)
{
	int grow = PRUNE_PROBE;

	for (;;) {
		if (prune_room(s, c) != 0)
			return -1;
		c->lim = c->batch - c->rows < grow ? c->batch - c->rows : grow;
		if (store__run(s, 0, scan, c) != 0)
			return -1;
		if (c->found > 0) {
			prune_add(c, index);
			c->lo = c->hi;
		}
		if (!c->more)
			return 0;
		if (grow < c->batch)
			grow = grow > c->batch / 4 ? c->batch : grow * 4;
	}
}

/*
 * Prune one user's log into the batch: (1) from first, when its first event may go, then (2)
 * its history rows below first (left there by earlier runs: step 1 itself deletes the rows of
 * old messages in what it cuts; the rows it leaves belong to messages that stay).
 */
static int
prune_log(struct store *s, struct prune_ctx *c, const char *user, uint64_t first, int work)
{
	c->user = user;
	if ((work & 1) != 0) {
		c->lo = first;
		if (prune_step(s, c, prune_scan_fn, 0) != 0)
			return -1;
		if (c->lo > first)
			c->res->logs++;
	}
	if ((work & 2) != 0) {
		c->lo = 0;
		c->bound = first;
		if (prune_step(s, c, prune_index_scan_fn, 1) != 0)
			return -1;
	}
	return 0;
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
	c->deleted = store__affected(s, Q_RET_DEL_MSGS);
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
			if (prune_txn(s, c, prune_msg_txn) != 0)
				return -1;
			c->res->messages += c->deleted;
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
		} while (c.nusers == PRUNE_PAGE);
		if (prune_flush(s, &c) != 0)
			goto out;
	}
	/* After the events: a kept event never names a message this deletes (same cut-off). */
	if (c.msg_before != 0 && prune_messages(s, &c) != 0)
		goto out;
	rc = 0;
out:
	if (rc != 0)
		log_warn("prune: stopped after %llu events and %llu messages",
		    (unsigned long long)res->events, (unsigned long long)res->messages);
	for (i = 0; i < c.ncuts; i++)
		free(c.cuts[i].user);
	store__strv_free(c.users, c.nusers);
	free(c.firsts);
	free(c.work);
	free(last);
	return rc;
}
