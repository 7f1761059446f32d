/* store_receipt.c - receipts (delivered/read markers), who has a message, the conversation list. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "log.h"
#include "protocol.h"
#include "store.h"
#include "store_int.h"
#include "xmalloc.h"

/*
 * GET /conversations, derived on read (no row is written per message): one statement lists the
 * conversations, then one statement counts the unread of the 1:1 ones and one those of the groups
 * (per up to 64 conversations: the summary has at most 100).
 *  - v: the user's conversations from its own log, one loose index scan of ev_history
 *    (user_id, conv_group, conv_peer, message_id) ("Using index for group-by": one seek per
 *    conversation; user_id is in the GROUP BY for that, it is constant), newest last message
 *    first, LIMIT n. Kind-2 events (conv_group NULL) are not a conversation.
 *  - m: the last message by primary key (last_ts is its ts); a conversation whose messages were
 *    all pruned has no kind-1 event left (retention) and leaves the list.
 *  - c: the user's receipt markers, when a receipt made the row (else read_upto 0).
 * Parameters: user, limit, user. The unread counts follow (UNREAD_PAIR, UNREAD_GROUP).
 */
#define CONV_LIST_SQL \
	"SELECT v.conv_group, v.conv_peer, m.id, m.sender, m.recipient, m.group_id, m.content," \
	" m.client_msg_id, m.ts, COALESCE(c.read_upto, 0)" \
	" FROM (SELECT conv_group, conv_peer, MAX(message_id) AS last_id" \
	" FROM events FORCE INDEX (ev_history)" \
	" WHERE user_id = ? AND conv_group IS NOT NULL GROUP BY user_id, conv_group, conv_peer" \
	" ORDER BY last_id DESC LIMIT ?) v" \
	" JOIN messages m ON m.id = v.last_id" \
	" LEFT JOIN conversations c ON c.user_id = ? AND c.group_id = v.conv_group" \
	" AND c.peer = v.conv_peer" \
	" ORDER BY v.last_id DESC"

/*
 * Unread counts scan only what is after read_upto, bound as a constant (as a correlated
 * subquery of CONV_LIST_SQL the id bound is not used for the index range and the whole
 * conversation is read). 1:1 (user, peer, read_upto): the peer's messages to the user, msg_pair
 * range, index-only. Group (user, group_id, read_upto, user): the user's own log (ev_history
 * range, index-only), so only messages it received as a member count (none from before it was
 * added or after it was removed), each looked up by primary key to leave out its own. The hints
 * keep these plans whatever the statistics say: with a user's log mostly one group, MariaDB
 * preferred the primary key (the whole log) to the ev_history range. Several conversations are
 * counted in one round trip: one column per conversation.
 */
#define UNREAD_PAIR	"(SELECT COUNT(*) FROM messages FORCE INDEX (msg_pair)" \
	" WHERE recipient = ? AND sender = ? AND id > ?)"
#define UNREAD_PAIR_WIDTH	3
#define UNREAD_GROUP	"(SELECT STRAIGHT_JOIN COUNT(*) FROM events e FORCE INDEX (ev_history)" \
	" JOIN messages u ON u.id = e.message_id" \
	" WHERE e.user_id = ? AND e.conv_group = ? AND e.conv_peer = '' AND e.message_id > ?" \
	" AND u.sender <> ?)"
#define UNREAD_GROUP_WIDTH	4

enum {
	Q_MSG_GET = STORE__Q(STORE__SET_RECEIPT),
	Q_CONV_MARKERS,
	Q_CONV_MARKERS_LOCK,
	Q_CONV_CREATE,
	Q_CONV_SET_MARKERS,
	Q_CONV_LIST,
	Q_UNREAD_PAIR,
	Q_UNREAD_GROUP,
	/* Multi-column forms of Q_UNREAD_PAIR and Q_UNREAD_GROUP (SQL built by receipt_sql_build). */
	Q_UNREAD_PAIR_M2,
	Q_UNREAD_PAIR_M4,
	Q_UNREAD_PAIR_M8,
	Q_UNREAD_PAIR_M16,
	Q_UNREAD_PAIR_M32,
	Q_UNREAD_PAIR_M64,
	Q_UNREAD_PAIR_M128,
	Q_UNREAD_PAIR_M256,
	Q_UNREAD_PAIR_M512,
	Q_UNREAD_GROUP_M2,
	Q_UNREAD_GROUP_M4,
	Q_UNREAD_GROUP_M8,
	Q_UNREAD_GROUP_M16,
	Q_UNREAD_GROUP_M32,
	Q_UNREAD_GROUP_M64,
	Q_UNREAD_GROUP_M128,
	Q_UNREAD_GROUP_M256,
	Q_UNREAD_GROUP_M512,
	Q_RCPT_PAIR,
	Q_RCPT_GROUP,
	Q_GROUP_OTHERS,
	Q_RECEIPT_END
};
STORE__QSET_CHECK(Q_RECEIPT_END, STORE__SET_RECEIPT);

static const char *const receipt_sql[Q_RECEIPT_END - STORE__Q(STORE__SET_RECEIPT)] = {
	STORE__SQL(Q_MSG_GET) = "SELECT sender, recipient, group_id FROM messages WHERE id = ?",
	STORE__SQL(Q_CONV_MARKERS) = "SELECT delivered_upto, read_upto FROM conversations"
	    " WHERE user_id = ? AND group_id = ? AND peer = ?",
	STORE__SQL(Q_CONV_MARKERS_LOCK) = "SELECT delivered_upto, read_upto FROM conversations"
	    " WHERE user_id = ? AND group_id = ? AND peer = ? FOR UPDATE",
	/*
	 * A marker row at (0, 0), made by the first receipt in a conversation. On a duplicate key
	 * ON DUPLICATE KEY UPDATE takes the row's exclusive lock (INSERT IGNORE would take a shared
	 * one, and two receipts upgrading theirs to FOR UPDATE deadlock).
	 */
	STORE__SQL(Q_CONV_CREATE) = "INSERT INTO conversations (user_id, group_id, peer)"
	    " VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE user_id = user_id",
	STORE__SQL(Q_CONV_SET_MARKERS) = "UPDATE conversations SET delivered_upto = ?,"
	    " read_upto = ? WHERE user_id = ? AND group_id = ? AND peer = ?",
	STORE__SQL(Q_CONV_LIST) = CONV_LIST_SQL,
	STORE__SQL(Q_UNREAD_PAIR) = "SELECT " UNREAD_PAIR,
	STORE__SQL(Q_UNREAD_GROUP) = "SELECT " UNREAD_GROUP,
	STORE__SQL(Q_RCPT_PAIR) = "SELECT delivered_upto, read_upto FROM conversations"
	    " WHERE user_id = ? AND group_id = 0 AND peer = ?",
	STORE__SQL(Q_RCPT_GROUP) = "SELECT c.user_id, c.read_upto >= ? FROM group_members gm"
	    " JOIN conversations c ON c.user_id = gm.user_id AND c.group_id = gm.group_id"
	    " AND c.peer = '' WHERE gm.group_id = ? AND gm.user_id <> ? AND c.delivered_upto >= ?"
	    " ORDER BY c.user_id",
	STORE__SQL(Q_GROUP_OTHERS) = "SELECT COUNT(*) FROM group_members"
	    " WHERE group_id = ? AND user_id <> ?",
};

/* The multi-column forms, by store__chunks[] columns (the last: the one-column form). */
static const unsigned unread_pair_cols[] = { Q_UNREAD_PAIR_M512, Q_UNREAD_PAIR_M256,
    Q_UNREAD_PAIR_M128, Q_UNREAD_PAIR_M64, Q_UNREAD_PAIR_M32, Q_UNREAD_PAIR_M16, Q_UNREAD_PAIR_M8,
    Q_UNREAD_PAIR_M4, Q_UNREAD_PAIR_M2, Q_UNREAD_PAIR };
static const unsigned unread_group_cols[] = { Q_UNREAD_GROUP_M512, Q_UNREAD_GROUP_M256,
    Q_UNREAD_GROUP_M128, Q_UNREAD_GROUP_M64, Q_UNREAD_GROUP_M32, Q_UNREAD_GROUP_M16,
    Q_UNREAD_GROUP_M8, Q_UNREAD_GROUP_M4, Q_UNREAD_GROUP_M2, Q_UNREAD_GROUP };
_Static_assert(PARLEY_NITEMS(unread_pair_cols) == STORE__NCHUNKS &&
    PARLEY_NITEMS(unread_group_cols) == STORE__NCHUNKS, "one form per store__chunks[] size");

/* The SQL of the multi-column form with index i in the set. */
static char *
receipt_sql_build(unsigned i)
{
	unsigned q = STORE__Q(STORE__SET_RECEIPT) + i;
	size_t k;

	for (k = 0; k < STORE__NCHUNKS; k++) {
		if (q == unread_pair_cols[k])
			return store__multi_sql("SELECT ", UNREAD_PAIR, store__chunks[k], "");
		if (q == unread_group_cols[k])
			return store__multi_sql("SELECT ", UNREAD_GROUP, store__chunks[k], "");
	}
	fatal("store: receipt statement %u has no SQL", q);
}

const struct store__qset store__receipt_qset = { receipt_sql,
    Q_RECEIPT_END - STORE__Q(STORE__SET_RECEIPT), receipt_sql_build };

/* --- receipts ------------------------------------------------------------------------------ */

/* The message a receipt is about and the conversation row of the user marking it. */
struct msg_info {
	char		sender[PARLEY_ID_MAX + 1];
	char		recipient[PARLEY_ID_MAX + 1];	/* "" for a group message */
	uint64_t	group_id;
};

/* 1 found, 0 not, -1 error. */
static int
msg_info(struct store *s, uint64_t id, struct msg_info *mi)
{
	int rc;

	memset(mi, 0, sizeof *mi);
	if ((rc = ROW(s, Q_MSG_GET, PU(id))) == 1) {
		snprintf(mi->sender, sizeof mi->sender, "%s", store__col_s(s, Q_MSG_GET, 0));
		if (!store__col_null(s, Q_MSG_GET, 1))
			snprintf(mi->recipient, sizeof mi->recipient, "%s", store__col_s(s, Q_MSG_GET, 1));
		mi->group_id = store__col_u(s, Q_MSG_GET, 2);
	}
	store__done(s, Q_MSG_GET);
	return rc;
}

struct receipt_ctx {
	const char		*user;
	uint64_t		 mid;
	enum proto_receipt	 status;
	int			 changed;
	struct store_targets	*t;
};

/*
 * Read the user's markers in conversation (g, peer); 1 found, 0 none (both 0: no receipt yet),
 * -1 error.
 */
static int
markers(struct store *s, unsigned q, const char *user, uint64_t g, const char *peer,
    uint64_t *d, uint64_t *r)
{
	int rc;

	*d = *r = 0;
	if ((rc = ROW(s, q, PS(user), PU(g), PS(peer))) == 1) {
		*d = store__col_u(s, q, 0);
		*r = store__col_u(s, q, 1);
	}
	store__done(s, q);
	return rc;
}

/*
 * Marking a message delivered or read moves the user's marker in that conversation up to the
 * message (never back); read moves delivered along. When a marker moved, the message's sender
 * gets one message_status event about this message (the status the message reached: read if the
 * read marker moved, else delivered); senders of earlier messages covered by the same move are
 * not told separately. A note to oneself moves the markers but tells nobody. The markers' row
 * (conversations) is made by the first receipt in the conversation; until then both are 0.
 *
 * Lock order is the send's: the sender's seq row first, then the conversation row (made if the
 * look found none, then locked).
 */
static int
receipt_txn(struct store *s, void *arg)
{
	struct receipt_ctx *c = arg;
	struct msg_info mi;
	uint64_t g, d, r, nd, nr, seq = 0, changed, unused;
	const char *peer;
	char *body;
	int rc, self, found;

	c->changed = 0;
	store_targets_clear(c->t);
	if ((rc = store__mine(s, &changed, &unused, c->t)) != 0) {
		c->changed = changed != 0;
		return rc < 0 ? -1 : 1;
	}
	if ((rc = msg_info(s, c->mid, &mi)) != 1)
		return rc < 0 ? -1 : store__refuse(ENOENT);
	g = mi.group_id;
	if (g != 0) {
		if (strcmp(mi.sender, c->user) == 0)
			return store__refuse(ENOENT);
		if ((rc = store__group_role(s, g, c->user)) == -1)
			return -1;
		if (rc == -2)
			return store__refuse(ENOENT);
		peer = "";
	} else {
		if (strcmp(mi.recipient, c->user) != 0)
			return store__refuse(ENOENT);
		peer = mi.sender;
	}
	self = strcmp(mi.sender, c->user) == 0;
	/* A cheap look without locks: most repeated receipts stop here. */
	if ((found = markers(s, Q_CONV_MARKERS, c->user, g, peer, &d, &r)) < 0)
		return -1;
	if (d >= c->mid && (c->status != PROTO_READ || r >= c->mid))
		return 1;
	if (!self && store__seq_alloc(s, mi.sender, 1, &seq) != 0)
		return -1;
	if (!found && EXEC(s, Q_CONV_CREATE, PS(c->user), PU(g), PS(peer)) != 0)
		return -1;
	if ((rc = markers(s, Q_CONV_MARKERS_LOCK, c->user, g, peer, &d, &r)) != 1)
		return rc < 0 ? -1 : store__refuse(EIO);
	nd = d > c->mid ? d : c->mid;
	nr = c->status == PROTO_READ && r < c->mid ? c->mid : r;
	if (nd == d && nr == r)
		return 1;	/* someone else moved it meanwhile; the rollback returns the seq */
	if (EXEC(s, Q_CONV_SET_MARKERS, PU(nd), PU(nr), PS(c->user), PU(g), PS(peer)) != 0)
		return -1;
	c->changed = 1;
	if (!self) {
		body = protocol_event_message_status(seq, c->mid,
		    nr != r ? PROTO_READ : PROTO_DELIVERED, c->user, parley_now_ms());
		rc = store__event_append_body(s, mi.sender, seq, body, c->t);
		free(body);
		if (rc != 0)
			return -1;
	}
	return store__mark(s, 1, 0, c->t);
}

int
store_receipt(struct store *s, const char *user, uint64_t message_id, enum proto_receipt status,
    int *changed, struct store_targets *t)
{
	struct receipt_ctx c = { user, message_id, status, 0, t };

	*changed = 0;
	memset(t, 0, sizeof *t);
	if (user == NULL || !protocol_valid_user(user) || message_id == 0 ||
	    (status != PROTO_DELIVERED && status != PROTO_READ))
		return store__refuse(EINVAL);
	if (store__run(s, 1, receipt_txn, &c) != 0) {
		store_targets_clear(t);
		return -1;
	}
	*changed = c.changed;
	return 0;
}

struct json_ctx {
	const char	*user;
	uint64_t	 id;
	int		 limit;
	char		*json;
};

/* Who has the message delivered and read; only its sender, peer or group members may ask. */
static int
receipts_json_fn(struct store *s, void *arg)
{
	struct json_ctx *c = arg;
	struct json_object *o, *dl, *rd;
	struct msg_info mi;
	uint64_t members = 1, d, r;
	int rc;

	free(c->json);
	c->json = NULL;
	if ((rc = msg_info(s, c->id, &mi)) != 1)
		return rc < 0 ? -1 : store__refuse(ENOENT);
	if (mi.group_id != 0 && strcmp(mi.sender, c->user) != 0) {
		if ((rc = store__group_role(s, mi.group_id, c->user)) == -1)
			return -1;
		if (rc == -2)
			return store__refuse(EACCES);
	} else if (mi.group_id == 0 && strcmp(mi.sender, c->user) != 0 &&
	    strcmp(mi.recipient, c->user) != 0)
		return store__refuse(EACCES);
	dl = json_object_new_array();
	rd = json_object_new_array();
	if (mi.group_id == 0) {
		if ((rc = ROW(s, Q_RCPT_PAIR, PS(mi.recipient), PS(mi.sender))) == 1) {
			d = store__col_u(s, Q_RCPT_PAIR, 0);
			r = store__col_u(s, Q_RCPT_PAIR, 1);
			if (d >= c->id)
				json_object_array_add(dl, json_object_new_string(mi.recipient));
			if (r >= c->id)
				json_object_array_add(rd, json_object_new_string(mi.recipient));
		}
		store__done(s, Q_RCPT_PAIR);
	} else {
		rc = ROW(s, Q_GROUP_OTHERS, PU(mi.group_id), PS(mi.sender));
		members = rc == 1 ? store__col_u(s, Q_GROUP_OTHERS, 0) : 0;
		store__done(s, Q_GROUP_OTHERS);
		if (rc >= 0 && (rc = EXEC(s, Q_RCPT_GROUP, PU(c->id), PU(mi.group_id),
		    PS(mi.sender), PU(c->id))) == 0) {
			while ((rc = store__fetch(s, Q_RCPT_GROUP)) == 1) {
				json_object_array_add(dl,
				    json_object_new_string(store__col_s(s, Q_RCPT_GROUP, 0)));
				if (store__col_u(s, Q_RCPT_GROUP, 1) == 1)
					json_object_array_add(rd,
					    json_object_new_string(store__col_s(s, Q_RCPT_GROUP, 0)));
			}
			store__done(s, Q_RCPT_GROUP);
		}
	}
	o = json_object_new_object();
	json_object_object_add(o, "members", json_object_new_int64((int64_t)members));
	json_object_object_add(o, "delivered", dl);
	json_object_object_add(o, "read", rd);
	if (rc < 0) {
		json_object_put(o);
		return -1;
	}
	c->json = store__json_take(o);
	return 0;
}

int
store_receipts_json(struct store *s, const char *user, uint64_t message_id, char **json)
{
	struct json_ctx c = { user, message_id, 0, NULL };

	*json = NULL;
	if (user == NULL || !protocol_valid_user(user) || message_id == 0)
		return store__refuse(EINVAL);
	return store__run_json(s, receipts_json_fn, &c, &c.json, json);
}

/* --- conversations ------------------------------------------------------------------------- */

static struct json_object *
jstr_or_null(const char *v)
{
	return v != NULL ? json_object_new_string(v) : NULL;
}

/* A listed conversation whose unread count is still to be read. */
struct conv_unread {
	struct json_object	*entry;
	uint64_t		 g;
	char			 peer[PARLEY_ID_MAX + 1];
	uint64_t		 read_upto;
};

/*
 * Set the unread count of the n listed conversations u[] (all 1:1 or all groups): one statement
 * per store__chunks[] columns, each column one conversation's count.
 */
static int
conversations_unread(struct store *s, const char *user, struct conv_unread *u, size_t n,
    int group)
{
	const unsigned *qs = group ? unread_group_cols : unread_pair_cols;
	size_t w = group ? UNREAD_GROUP_WIDTH : UNREAD_PAIR_WIDTH, done, i, k;
	struct store_param *p;
	unsigned q;
	int rc = 0;

	if (n == 0)
		return 0;
	p = xreallocarray(NULL, n, w * sizeof *p);
	for (i = 0; i < n; i++) {
		p[i * w] = PS(user);
		p[i * w + 1] = group ? PU(u[i].g) : PS(u[i].peer);
		p[i * w + 2] = PU(u[i].read_upto);
		if (group)
			p[i * w + 3] = PS(user);
	}
	for (done = 0; done < n && rc == 0; done += store__chunks[k]) {
		for (k = 0; store__chunks[k] > n - done; k++)
			;
		q = qs[k];
		if (store__exec(s, q, p + done * w, store__chunks[k] * w) != 0) {
			rc = -1;
			break;
		}
		if ((rc = store__fetch(s, q)) == 1) {
			for (i = 0; i < store__chunks[k]; i++)
				json_object_object_add(u[done + i].entry, "unread",
				    json_object_new_int64(store__col_i(s, q, (unsigned)i)));
			rc = 0;
		} else if (rc == 0) {
			errno = EIO;
			rc = -1;
		}
		store__done(s, q);
	}
	free(p);
	return rc;
}

/*
 * user's conversations, newest first, each with its last message (the contract's shape):
 * CONV_LIST_SQL, then the unread counts (UNREAD_PAIR, UNREAD_GROUP) of those whose last message
 * is after the read marker and is not a note to oneself (never unread).
 */
static int
conversations_fn(struct store *s, void *arg)
{
	struct json_ctx *c = arg;
	struct json_object *o, *list, *e, *m;
	struct conv_unread *u[2] = { NULL, NULL }, *x;
	unsigned q = Q_CONV_LIST;
	const char *peer;
	uint64_t g, last, ru;
	size_t nu[2] = { 0, 0 }, cap[2] = { 0, 0 };
	int rc, k;

	free(c->json);
	c->json = NULL;
	if (EXEC(s, q, PS(c->user), PU((uint64_t)c->limit), PS(c->user)) != 0)
		return -1;
	list = json_object_new_array();
	while ((rc = store__fetch(s, q)) == 1) {
		g = store__col_u(s, q, 0);
		peer = store__col_s(s, q, 1);
		last = store__col_u(s, q, 2);
		ru = store__col_u(s, q, 9);
		m = json_object_new_object();
		json_object_object_add(m, "id", json_object_new_int64(store__col_i(s, q, 2)));
		json_object_object_add(m, "from", jstr_or_null(store__col_s(s, q, 3)));
		json_object_object_add(m, "to", jstr_or_null(store__col_s(s, q, 4)));
		json_object_object_add(m, "group_id",
		    store__col_null(s, q, 5) ? NULL : json_object_new_int64(store__col_i(s, q, 5)));
		json_object_object_add(m, "content", jstr_or_null(store__col_s(s, q, 6)));
		json_object_object_add(m, "client_msg_id", jstr_or_null(store__col_s(s, q, 7)));
		json_object_object_add(m, "ts", json_object_new_int64(store__col_i(s, q, 8)));
		e = json_object_new_object();
		json_object_object_add(e, "with", g == 0 ? jstr_or_null(peer) : NULL);
		json_object_object_add(e, "group_id", g != 0 ? json_object_new_int64((int64_t)g) : NULL);
		json_object_object_add(e, "last_message", m);
		json_object_object_add(e, "unread", json_object_new_int64(0));
		json_object_object_add(e, "last_ts", json_object_new_int64(store__col_i(s, q, 8)));
		json_object_array_add(list, e);
		if (last > ru && (g != 0 || (peer != NULL && strcmp(peer, c->user) != 0))) {
			k = g != 0;
			if (nu[k] == cap[k]) {
				cap[k] = cap[k] == 0 ? 16 : cap[k] * 2;
				u[k] = xreallocarray(u[k], cap[k], sizeof *u[k]);
			}
			x = &u[k][nu[k]++];
			x->entry = e;
			x->g = g;
			snprintf(x->peer, sizeof x->peer, "%s", g == 0 ? peer : "");
			x->read_upto = ru;
		}
	}
	store__done(s, q);
	if (rc >= 0)
		rc = conversations_unread(s, c->user, u[0], nu[0], 0);
	if (rc >= 0)
		rc = conversations_unread(s, c->user, u[1], nu[1], 1);
	free(u[0]);
	free(u[1]);
	if (rc < 0) {
		json_object_put(list);
		return -1;
	}
	o = json_object_new_object();
	json_object_object_add(o, "conversations", list);
	c->json = store__json_take(o);
	return 0;
}

const char *
store_conversations_sql(void)
{
	return CONV_LIST_SQL;
}

const char *
store_unread_pair_sql(void)
{
	return receipt_sql[Q_UNREAD_PAIR - STORE__Q(STORE__SET_RECEIPT)];
}

const char *
store_unread_group_sql(void)
{
	return receipt_sql[Q_UNREAD_GROUP - STORE__Q(STORE__SET_RECEIPT)];
}

int
store_conversations_json(struct store *s, const char *user, int limit, char **json)
{
	struct json_ctx c = { user, 0, limit, NULL };

	*json = NULL;
	if (user == NULL || !protocol_valid_user(user) || limit < 1)
		return store__refuse(EINVAL);
	return store__run_json(s, conversations_fn, &c, &c.json, json);
}
