/* store_send.c - sends: message rows and new_message events, in one transaction. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mysqld_error.h>

#include "log.h"
#include "protocol.h"
#include "store.h"
#include "store_int.h"
#include "xmalloc.h"

enum {
	Q_MSG_FIND = STORE__Q(STORE__SET_SEND),
	Q_EV_FIND,
	Q_MSG_INSERT,
	Q_EV_INSERT_MSG,
	/* Multi-row forms of Q_EV_INSERT_MSG (their SQL is built by send_sql). */
	Q_EV_M2,
	Q_EV_M4,
	Q_EV_M8,
	Q_EV_M16,
	Q_EV_M32,
	Q_EV_M64,
	Q_EV_M128,
	Q_EV_M256,
	Q_EV_M512,
	/* Multi-row seq reservation, reading the new values back (SQL built by send_sql). */
	Q_SEQ_M1,
	Q_SEQ_M2,
	Q_SEQ_M4,
	Q_SEQ_M8,
	Q_SEQ_M16,
	Q_SEQ_M32,
	Q_SEQ_M64,
	Q_SEQ_M128,
	Q_SEQ_M256,
	Q_SEQ_M512,
	/* Multi-row forms of Q_MSG_INSERT (used only when the ids they get are consecutive). */
	Q_MSG_M2,
	Q_MSG_M4,
	Q_MSG_M8,
	Q_MSG_M16,
	Q_MSG_M32,
	Q_MSG_M64,
	Q_MSG_M128,
	Q_MSG_M256,
	Q_MSG_M512,
	Q_SEND_END
};
STORE__QSET_CHECK(Q_SEND_END, STORE__SET_SEND);

/* The multi-row forms, by store__chunks[] rows (the last: the one-row form). */
static const unsigned store_ev_rows[] = { Q_EV_M512, Q_EV_M256, Q_EV_M128, Q_EV_M64, Q_EV_M32,
    Q_EV_M16, Q_EV_M8, Q_EV_M4, Q_EV_M2, Q_EV_INSERT_MSG };
static const unsigned store_msg_rows[] = { Q_MSG_M512, Q_MSG_M256, Q_MSG_M128, Q_MSG_M64, Q_MSG_M32,
    Q_MSG_M16, Q_MSG_M8, Q_MSG_M4, Q_MSG_M2, Q_MSG_INSERT };
static const unsigned store_seq_rows[] = { Q_SEQ_M512, Q_SEQ_M256, Q_SEQ_M128, Q_SEQ_M64, Q_SEQ_M32,
    Q_SEQ_M16, Q_SEQ_M8, Q_SEQ_M4, Q_SEQ_M2, Q_SEQ_M1 };
_Static_assert(PARLEY_NITEMS(store_ev_rows) == STORE__NCHUNKS &&
    PARLEY_NITEMS(store_msg_rows) == STORE__NCHUNKS &&
    PARLEY_NITEMS(store_seq_rows) == STORE__NCHUNKS, "one form per store__chunks[] size");

/*
 * conv_group, conv_peer: the event's conversation for history and for GET /conversations
 * (schema/004, index ev_history). No conversation row is written: summaries are derived on read
 * from ev_history (store_receipt.c); conversations holds only receipt markers (schema/005).
 */
#define EV_HEAD		"INSERT INTO events (user_id, seq, kind, message_id, conv_group, conv_peer)" \
			" VALUES "
#define EV_ROW		"(?, ?, 1, ?, ?, ?)"
#define EV_WIDTH	5

#define MSG_HEAD	"INSERT INTO messages (sender, recipient, group_id, content, client_msg_id," \
			" ts, sender_seq, attempt) VALUES "
#define MSG_ROW		"(?, ?, ?, ?, ?, ?, ?, ?)"
#define MSG_WIDTH	8

/*
 * Reserve seqs of many users with one statement per chunk, which also answers the new last_seq
 * of each row (MariaDB's INSERT ... RETURNING gives the values after ON DUPLICATE KEY UPDATE):
 * one round trip, where an upsert and a SELECT of the locked rows took two.
 */
#define SEQ_HEAD	"INSERT INTO user_seq (user_id, last_seq) VALUES "
#define SEQ_ROW		"(?, ?)"
#define SEQ_WIDTH	2
#define SEQ_TAIL	" ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq)" \
			" RETURNING user_id, last_seq"

/* Entries left NULL are the multi-row forms, built by send_sql. */
static const char *const send_sql_text[Q_SEND_END - STORE__Q(STORE__SET_SEND)] = {
	STORE__SQL(Q_MSG_FIND) = "SELECT id, sender_seq, ts, attempt, recipient, group_id, content"
	    " FROM messages WHERE sender = ? AND client_msg_id = ?",
	/* A recent message's event in a user's log: the newest first, so the scan stops early. */
	STORE__SQL(Q_EV_FIND) = "SELECT seq FROM events WHERE user_id = ? AND message_id = ?"
	    " ORDER BY seq DESC LIMIT 1",
	STORE__SQL(Q_MSG_INSERT) = MSG_HEAD MSG_ROW,
	STORE__SQL(Q_EV_INSERT_MSG) = EV_HEAD EV_ROW,
};

/* The SQL of the multi-row form with index i in the set. */
static char *
send_sql(unsigned i)
{
	unsigned q = STORE__Q(STORE__SET_SEND) + i;
	size_t k;

	for (k = 0; k < STORE__NCHUNKS; k++) {
		if (q == store_ev_rows[k])
			return store__multi_sql(EV_HEAD, EV_ROW, store__chunks[k], "");
		if (q == store_msg_rows[k])
			return store__multi_sql(MSG_HEAD, MSG_ROW, store__chunks[k], "");
		if (q == store_seq_rows[k])
			return store__multi_sql(SEQ_HEAD, SEQ_ROW, store__chunks[k], SEQ_TAIL);
	}
	fatal("store: send statement %u has no SQL", q);
}

const struct store__qset store__send_qset = { send_sql_text,
    Q_SEND_END - STORE__Q(STORE__SET_SEND), send_sql };

/* --- sending ------------------------------------------------------------------------------ */

/* A user that gets events in a send batch, with how many and the next seq to hand out. */
struct send_user {
	const char	*user;
	uint64_t	 count;
	uint64_t	 next;
};

struct send_ctx {
	const struct store_send_req	*reqs;
	struct store_send_res		*res;
	int				*err;
	const int			*valid;	/* validation result of each item (0 or EINVAL) */
	size_t				 n;
	int				 check_dups;	/* look client_msg_ids up first (after a 1062) */
	int				*dup_of;	/* earlier item of the batch this one repeats, or -1 */
	int				*stored;	/* the item's client_msg_id is stored already */
	char				***rcpt;	/* recipients other than the sender, per item */
	size_t				*nrcpt;
	struct send_user		*users;
	size_t				 nusers;
	struct store_param		*evs;	/* EV_WIDTH parameters per event row */
	size_t				 nevs;
	size_t				 evcap;
};

static int
send_user_cmp(const void *a, const void *b)
{
	return strcmp(((const struct send_user *)a)->user, ((const struct send_user *)b)->user);
}

/* The next seq of user (the batch reserved them all before). */
static uint64_t
send_take(struct send_ctx *c, const char *user)
{
	struct send_user key = { .user = user }, *u;

	u = bsearch(&key, c->users, c->nusers, sizeof *u, send_user_cmp);
	if (u == NULL)
		fatal("store: no seq reserved for a target");
	return u->next++;
}

/* Back to the state before the first attempt: a re-run must start from scratch. */
static void
send_reset(struct send_ctx *c)
{
	size_t i;

	for (i = 0; i < c->n; i++) {
		store_send_res_clear(&c->res[i]);
		memset(&c->res[i], 0, sizeof c->res[i]);
		c->err[i] = c->valid[i];
		c->dup_of[i] = -1;
		c->stored[i] = 0;
		store__strv_free(c->rcpt[i], c->nrcpt[i]);
		c->rcpt[i] = NULL;
		c->nrcpt[i] = 0;
	}
	free(c->users);
	c->users = NULL;
	c->nusers = 0;
	c->nevs = 0;
}

/* Queue user's new_message event of message id in conversation (g, peer): 1:1 (0, other user), group (g, ''). */
static void
send_event(struct send_ctx *c, const char *user, uint64_t seq, uint64_t id, uint64_t g,
    const char *peer)
{
	if (c->nevs == c->evcap) {
		c->evcap = c->evcap == 0 ? 64 : c->evcap * 2;
		c->evs = xreallocarray(c->evs, c->evcap, EV_WIDTH * sizeof *c->evs);
	}
	c->evs[c->nevs * EV_WIDTH] = PS(user);
	c->evs[c->nevs * EV_WIDTH + 1] = PU(seq);
	c->evs[c->nevs * EV_WIDTH + 2] = PU(id);
	c->evs[c->nevs * EV_WIDTH + 3] = PU(g);
	c->evs[c->nevs * EV_WIDTH + 4] = PS(peer);
	c->nevs++;
}

/* Write the batch's events with multi-row statements. */
static int
send_flush(struct store *s, struct send_ctx *c)
{
	if (c->nevs > 0 && store__exec_rows(s, store_ev_rows, c->evs, c->nevs, EV_WIDTH) != 0)
		return -1;
	return 0;
}

/* Who besides the sender gets item i: the peer, or the other members of the group. */
static int
send_recipients(struct store *s, struct send_ctx *c, size_t i)
{
	const struct store_send_req *r = &c->reqs[i];
	char **m;
	size_t n, j, k;
	int rc, member = 0;

	if (r->to != NULL) {
		/* A message to oneself is a note: one event, in one's own log. */
		if (strcmp(r->to, r->from) != 0) {
			c->rcpt[i] = xcalloc(1, sizeof *c->rcpt[i]);
			c->rcpt[i][0] = xstrdup(r->to);
			c->nrcpt[i] = 1;
		}
		return 0;
	}
	if (store__group_load(s, r->group_id, &m, &n, NULL) != 0)
		return -1;
	for (j = k = 0; j < n; j++) {
		if (strcmp(m[j], r->from) == 0) {
			member = 1;
			free(m[j]);
		} else
			m[k++] = m[j];
	}
	c->rcpt[i] = m;
	c->nrcpt[i] = k;
	if (member)
		return 0;
	if ((rc = store__group_exists(s, r->group_id, NULL)) < 0)
		return -1;
	c->err[i] = rc == 1 ? EACCES : ENOENT;
	return 0;
}

/*
 * Reserve the seqs of every user of the batch (c->users, sorted, distinct) with multi-row
 * statements that answer the new values: one round trip per chunk, whatever the number of users
 * (a group send's members included). The rows are locked in sorted order, as store__seq_alloc
 * one by one would.
 */
static int
send_reserve_many(struct store *s, struct send_ctx *c)
{
	struct store_param *p;
	struct send_user key, *u;
	size_t done, k, got = 0;
	uint64_t last;
	unsigned q;
	int rc = -1, f;

	p = xreallocarray(NULL, c->nusers, SEQ_WIDTH * sizeof *p);
	for (done = 0; done < c->nusers; done++) {
		p[done * SEQ_WIDTH] = PS(c->users[done].user);
		p[done * SEQ_WIDTH + 1] = PU(c->users[done].count);
	}
	for (done = 0; done < c->nusers; done += store__chunks[k]) {
		for (k = 0; store__chunks[k] > c->nusers - done; k++)
			;
		q = store_seq_rows[k];
		if (store__exec(s, q, p + done * SEQ_WIDTH, store__chunks[k] * SEQ_WIDTH) != 0)
			goto out;
		while ((f = store__fetch(s, q)) == 1) {
			key.user = store__col_s(s, q, 0);
			last = store__col_u(s, q, 1);
			if (key.user == NULL || (u = bsearch(&key, c->users, c->nusers, sizeof *u,
			    send_user_cmp)) == NULL)
				continue;
			u->next = last - u->count + 1;
			got++;
		}
		store__done(s, q);
		if (f < 0)
			goto out;
	}
	if (got != c->nusers) {
		log_warn("store: %zu of %zu reserved seq rows read back", got, c->nusers);
		errno = EIO;
		goto out;
	}
	rc = 0;
out:
	free(p);
	return rc;
}

/* Count every event the new items will append, per user, and reserve the seqs in sorted order. */
static int
send_reserve(struct store *s, struct send_ctx *c)
{
	size_t i, j, n = 0, cap = 0;
	struct send_user *u = NULL;

	for (i = 0; i < c->n; i++) {
		if (c->err[i] != 0 || c->dup_of[i] >= 0 || c->stored[i])
			continue;
		if (n + c->nrcpt[i] + 1 > cap) {
			cap = (n + c->nrcpt[i] + 1) * 2;
			u = xreallocarray(u, cap, sizeof *u);
		}
		u[n++] = (struct send_user){ .user = c->reqs[i].from, .count = 1 };
		for (j = 0; j < c->nrcpt[i]; j++)
			u[n++] = (struct send_user){ .user = c->rcpt[i][j], .count = 1 };
	}
	/* Sorted order: two transactions lock the seq rows of shared users in the same order. */
	if (n > 0)
		qsort(u, n, sizeof *u, send_user_cmp);
	for (i = j = 0; i < n; i++) {
		if (j > 0 && strcmp(u[j - 1].user, u[i].user) == 0)
			u[j - 1].count++;
		else
			u[j++] = u[i];
	}
	c->users = u;
	c->nusers = j;
	return c->nusers > 0 ? send_reserve_many(s, c) : 0;
}

/* A message INSERT failed: on a duplicate client_msg_id, re-run looking the ids up first. */
static void
send_insert_failed(struct store *s, struct send_ctx *c)
{
	/*
	 * Someone committed the same client_msg_id after we looked (or we did not look): roll
	 * back, then re-run looking first, which finds the first result.
	 */
	if (s->myerr == ER_DUP_ENTRY) {
		s->retry_ok = 1;
		c->check_dups = 1;
	}
}

/*
 * Item i's message got id and its sender seq: queue an event per target.
 * rseq: the recipients' seqs taken before, or NULL to take them now.
 */
static void
send_record(struct send_ctx *c, size_t i, uint64_t seq, const uint64_t *rseq, uint64_t id,
    int64_t now)
{
	const struct store_send_req *r = &c->reqs[i];
	struct store_send_res *res = &c->res[i];
	size_t j;

	res->server_msg_id = id;
	res->seq = seq;
	res->ts = now;
	res->duplicate = 0;
	store__targets_push(&res->targets, r->from, seq);
	send_event(c, r->from, seq, id, r->to != NULL ? 0 : r->group_id, r->to != NULL ? r->to : "");
	for (j = 0; j < c->nrcpt[i]; j++) {
		seq = rseq != NULL ? rseq[j] : send_take(c, c->rcpt[i][j]);
		store__targets_push(&res->targets, c->rcpt[i][j], seq);
		send_event(c, c->rcpt[i][j], seq, id, r->to != NULL ? 0 : r->group_id,
		    r->to != NULL ? r->from : "");
	}
}

/* Insert item i's message; queue an event for each target's log. */
static int
send_insert(struct store *s, struct send_ctx *c, size_t i, int64_t now)
{
	const struct store_send_req *r = &c->reqs[i];
	uint64_t seq;

	seq = send_take(c, r->from);
	if (EXEC(s, Q_MSG_INSERT, PS(r->from), PS(r->to),
	    r->to != NULL ? PN : PU(r->group_id), PS(r->content), PS(r->client_msg_id),
	    PI(now), PU(seq), PU(s->token)) != 0) {
		send_insert_failed(s, c);
		return -1;
	}
	send_record(c, i, seq, NULL, store__insert_id(s, Q_MSG_INSERT), now);
	return 0;
}

/*
 * Insert the messages of the m items idx[] with multi-row statements (autoinc_step set), in item
 * order: the ids and every user's seqs come out as one statement per item would give them.
 */
static int
send_insert_many(struct store *s, struct send_ctx *c, const size_t *idx, size_t m, int64_t now)
{
	const struct store_send_req *r;
	struct store_param *p;
	uint64_t *seq, *id, **rseq, first;
	size_t k, q, j, done;
	int rc = -1;

	p = xreallocarray(NULL, m, MSG_WIDTH * sizeof *p);
	seq = xcalloc(m, sizeof *seq);
	id = xcalloc(m, sizeof *id);
	rseq = xcalloc(m, sizeof *rseq);
	/* Every seq in the order one statement per item takes them: sender, then recipients. */
	for (k = 0; k < m; k++) {
		r = &c->reqs[idx[k]];
		seq[k] = send_take(c, r->from);
		rseq[k] = xcalloc(c->nrcpt[idx[k]] + 1, sizeof **rseq);
		for (j = 0; j < c->nrcpt[idx[k]]; j++)
			rseq[k][j] = send_take(c, c->rcpt[idx[k]][j]);
		p[k * MSG_WIDTH] = PS(r->from);
		p[k * MSG_WIDTH + 1] = PS(r->to);
		p[k * MSG_WIDTH + 2] = r->to != NULL ? PN : PU(r->group_id);
		p[k * MSG_WIDTH + 3] = PS(r->content);
		p[k * MSG_WIDTH + 4] = PS(r->client_msg_id);
		p[k * MSG_WIDTH + 5] = PI(now);
		p[k * MSG_WIDTH + 6] = PU(seq[k]);
		p[k * MSG_WIDTH + 7] = PU(s->token);
	}
	for (done = 0; done < m; done += store__chunks[q]) {
		for (q = 0; store__chunks[q] > m - done; q++)
			;
		if (store__exec(s, store_msg_rows[q], p + done * MSG_WIDTH,
		    store__chunks[q] * MSG_WIDTH) != 0) {
			send_insert_failed(s, c);
			goto out;
		}
		first = store__insert_id(s, store_msg_rows[q]);
		for (k = 0; k < store__chunks[q]; k++)
			id[done + k] = first + k * s->autoinc_step;
	}
	for (k = 0; k < m; k++)
		send_record(c, idx[k], seq[k], rseq[k], id[k], now);
	rc = 0;
out:
	for (k = 0; k < m; k++)
		free(rseq[k]);
	free(rseq);
	free(p);
	free(seq);
	free(id);
	return rc;
}

/* Insert every new item's message: several rows per statement when the ids allow it. */
static int
send_inserts(struct store *s, struct send_ctx *c, int64_t now)
{
	size_t *idx, i, m = 0;
	int rc = 0;

	idx = xcalloc(c->n, sizeof *idx);
	for (i = 0; i < c->n; i++) {
		if (c->err[i] == 0 && c->dup_of[i] < 0 && !c->stored[i])
			idx[m++] = i;
	}
	if (m > 1 && s->autoinc_step > 0)
		rc = send_insert_many(s, c, idx, m, now);
	else {
		for (i = 0; i < m && rc == 0; i++)
			rc = send_insert(s, c, idx[i], now);
	}
	free(idx);
	return rc;
}

/* Name user in t with the seq of message id's event in user's log (none: not named). */
static int
send_event_of(struct store *s, struct store_targets *t, const char *user, uint64_t id)
{
	int rc;

	if ((rc = ROW(s, Q_EV_FIND, PS(user), PU(id))) == 1)
		store__targets_push(t, user, store__col_u(s, Q_EV_FIND, 0));
	store__done(s, Q_EV_FIND);
	return rc < 0 ? -1 : 0;
}

/*
 * Is item i's client_msg_id stored already? 1 yes (res filled), 0 no, -1 error. A message this
 * call stored (its attempt token: the first run committed, its COMMIT reply was lost) is not a
 * duplicate: the answer is the first run's. Either way, when the stored message is the one asked
 * for (same recipient, group and content), targets name every log that has its event, so the
 * caller invalidates and hints again: the first answer may have reached nobody. A different
 * message under the same id is a duplicate with no targets (nothing of it is pushed).
 */
static int
send_found(struct store *s, struct send_ctx *c, size_t i)
{
	const struct store_send_req *r = &c->reqs[i];
	struct store_send_res *res = &c->res[i];
	const char *to, *content;
	uint64_t id = 0;
	char **m;
	size_t n, j;
	int rc, same = 0;

	if ((rc = ROW(s, Q_MSG_FIND, PS(r->from), PS(r->client_msg_id))) == 1) {
		c->stored[i] = 1;
		id = res->server_msg_id = store__col_u(s, Q_MSG_FIND, 0);
		res->seq = store__col_u(s, Q_MSG_FIND, 1);
		res->ts = store__col_i(s, Q_MSG_FIND, 2);
		res->duplicate = store__col_null(s, Q_MSG_FIND, 3) ||
		    store__col_u(s, Q_MSG_FIND, 3) != s->token;
		to = store__col_s(s, Q_MSG_FIND, 4);
		content = store__col_s(s, Q_MSG_FIND, 6);
		same = content != NULL && strcmp(content, r->content) == 0 && (r->to != NULL ?
		    to != NULL && strcmp(to, r->to) == 0 :
		    to == NULL && store__col_u(s, Q_MSG_FIND, 5) == r->group_id);
	}
	store__done(s, Q_MSG_FIND);
	if (rc != 1 || !same)
		return rc;
	store__targets_push(&res->targets, r->from, res->seq);
	if (r->to != NULL) {
		if (strcmp(r->to, r->from) != 0 && send_event_of(s, &res->targets, r->to, id) != 0)
			return -1;
		return 1;
	}
	if (store__group_load(s, r->group_id, &m, &n, NULL) != 0)
		return -1;
	for (j = 0, rc = 1; j < n && rc == 1; j++) {
		if (strcmp(m[j], r->from) != 0 && send_event_of(s, &res->targets, m[j], id) != 0)
			rc = -1;
	}
	store__strv_free(m, n);
	return rc;
}

/* One attempt of a send batch: find repeats, load recipients, reserve seqs, insert, flush. */
static int
send_txn(struct store *s, void *arg)
{
	struct send_ctx *c = arg;
	const struct store_send_req *r;
	int64_t now = parley_now_ms();
	size_t i, j;
	int rc;

	send_reset(c);
	/* A COMMIT of this call lost its reply: its messages may be in, look them up. */
	if (s->unsure)
		c->check_dups = 1;
	for (i = 0; i < c->n; i++) {
		r = &c->reqs[i];
		if (c->err[i] != 0)
			continue;
		for (j = 0; j < i; j++) {
			if (c->err[j] == 0 && c->dup_of[j] < 0 &&
			    strcmp(c->reqs[j].from, r->from) == 0 &&
			    strcmp(c->reqs[j].client_msg_id, r->client_msg_id) == 0)
				break;
		}
		if (j < i) {
			c->dup_of[i] = (int)j;
			continue;
		}
		if (c->check_dups) {
			if ((rc = send_found(s, c, i)) < 0)
				return -1;
			if (rc == 1)
				continue;
		}
		if (send_recipients(s, c, i) != 0)
			return -1;
	}
	if (send_reserve(s, c) != 0)
		return -1;
	if (send_inserts(s, c, now) != 0)
		return -1;
	if (send_flush(s, c) != 0)
		return -1;
	for (i = 0; i < c->n; i++) {
		if (c->dup_of[i] < 0)
			continue;
		j = (size_t)c->dup_of[i];
		c->err[i] = c->err[j];
		c->res[i].server_msg_id = c->res[j].server_msg_id;
		c->res[i].seq = c->res[j].seq;
		c->res[i].ts = c->res[j].ts;
		c->res[i].duplicate = 1;
	}
	return 0;
}

/* Can item r be stored at all (ids, UTF-8 content, exactly one of to and group_id)? */
static int
send_valid(const struct store_send_req *r)
{
	if (r->from == NULL || !protocol_valid_user(r->from) || r->client_msg_id == NULL ||
	    !protocol_valid_id(r->client_msg_id) || r->content == NULL || *r->content == '\0' ||
	    !protocol_valid_utf8(r->content, strlen(r->content)))
		return 0;
	if (r->to != NULL)
		return r->group_id == 0 && protocol_valid_user(r->to);
	return r->group_id != 0;
}

int
store_send_batch(struct store *s, const struct store_send_req *reqs, size_t n,
    struct store_send_res *res, int *err)
{
	struct send_ctx c;
	int *valid, rc, saved;
	size_t i;

	memset(&c, 0, sizeof c);
	if (n == 0)
		return 0;
	valid = xcalloc(n, sizeof *valid);
	for (i = 0; i < n; i++) {
		valid[i] = send_valid(&reqs[i]) ? 0 : EINVAL;
		memset(&res[i], 0, sizeof res[i]);
	}
	c.reqs = reqs;
	c.res = res;
	c.err = err;
	c.valid = valid;
	c.n = n;
	c.dup_of = xcalloc(n, sizeof *c.dup_of);
	c.stored = xcalloc(n, sizeof *c.stored);
	c.rcpt = xcalloc(n, sizeof *c.rcpt);
	c.nrcpt = xcalloc(n, sizeof *c.nrcpt);
	for (i = 0; i < n; i++)
		err[i] = valid[i];
	rc = store__run(s, 1, send_txn, &c);
	saved = errno;
	if (rc != 0) {
		for (i = 0; i < n; i++) {
			store_send_res_clear(&res[i]);
			memset(&res[i], 0, sizeof res[i]);
			err[i] = valid[i] != 0 ? valid[i] : saved;
		}
	}
	for (i = 0; i < n; i++)
		store__strv_free(c.rcpt[i], c.nrcpt[i]);
	free(c.rcpt);
	free(c.nrcpt);
	free(c.dup_of);
	free(c.stored);
	free(c.users);
	free(c.evs);
	free(valid);
	errno = saved;
	return rc;
}

int
store_send(struct store *s, const struct store_send_req *req, struct store_send_res *res)
{
	int err;

	if (store_send_batch(s, req, 1, res, &err) != 0)
		return -1;
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}
