/* store_history.c - conversation history pages, read from the caller's own event log. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "store.h"
#include "store_int.h"
#include "xmalloc.h"

enum {
	Q_HIST_PAGE = STORE__Q(STORE__SET_HISTORY),
	Q_HIST_ANY,
	Q_HISTORY_END
};
STORE__QSET_CHECK(Q_HISTORY_END, STORE__SET_HISTORY);

/*
 * A page is one backward range scan of ev_history (user_id, conv_group, conv_peer, message_id)
 * from before down, joined to messages by primary key, stopping after limit + 1 rows: its cost
 * is the page, whatever the length of the history. FORCE INDEX and STRAIGHT_JOIN keep that plan
 * whatever the statistics say (a small messages table tempts the optimiser into a range over
 * every message below before, then a lookup per message). The EXPLAIN is checked by tests/check_store.c and shown in docs/protocol.md.
 */
#define HIST_PAGE_SQL "SELECT STRAIGHT_JOIN m.id, m.sender, m.recipient, m.group_id, m.content," \
	" m.client_msg_id, m.ts FROM events e FORCE INDEX (ev_history)" \
	" JOIN messages m ON m.id = e.message_id" \
	" WHERE e.user_id = ? AND e.conv_group = ? AND e.conv_peer = ? AND e.message_id < ?" \
	" ORDER BY e.message_id DESC LIMIT ?"

static const char *const history_sql[Q_HISTORY_END - STORE__Q(STORE__SET_HISTORY)] = {
	STORE__SQL(Q_HIST_PAGE) = HIST_PAGE_SQL,
	/* Did any message of the group reach user (a former member)? One index probe. */
	STORE__SQL(Q_HIST_ANY) = "SELECT 1 FROM events WHERE user_id = ? AND conv_group = ?"
	    " AND conv_peer = '' LIMIT 1",
};

const struct store__qset store__history_qset = { history_sql,
    Q_HISTORY_END - STORE__Q(STORE__SET_HISTORY), NULL };

const char *
store_history_sql(void)
{
	return HIST_PAGE_SQL;
}

struct history_ctx {
	const char		*user;
	const char		*peer;
	uint64_t		 g;
	uint64_t		 before;
	int			 limit;
	struct store_page	*page;
};

/*
 * May user read group g's history? A member may; so may a former member, whose log still holds
 * messages of g (what reached it while it was one). 0 yes, -1 with EACCES / ENOENT (no group)
 * or a MySQL error.
 */
static int
history_allowed(struct store *s, uint64_t g, const char *user)
{
	int rc;

	if ((rc = store__group_role(s, g, user)) >= 0)
		return 0;
	if (rc == -1)
		return -1;
	rc = ROW(s, Q_HIST_ANY, PS(user), PU(g));
	store__done(s, Q_HIST_ANY);
	if (rc != 0)
		return rc == 1 ? 0 : -1;
	if ((rc = store__group_exists(s, g, NULL)) < 0)
		return -1;
	return store__refuse(rc == 1 ? EACCES : ENOENT);
}

/* One page, newest first; the row after the limit tells that there is an older one. */
static int
history_fn(struct store *s, void *arg)
{
	struct history_ctx *c = arg;
	struct store_page *p = c->page;
	struct proto_message m;
	uint64_t last = 0;
	int rc;

	store_page_clear(p);
	p->next = 0;
	if (c->g != 0 && history_allowed(s, c->g, c->user) != 0)
		return -1;
	if (EXEC(s, Q_HIST_PAGE, PS(c->user), PU(c->g), PS(c->peer != NULL ? c->peer : ""),
	    PU(c->before != 0 ? c->before : UINT64_MAX), PU((uint64_t)c->limit + 1)) != 0)
		return -1;
	while ((rc = store__fetch(s, Q_HIST_PAGE)) == 1) {
		if (p->n == (size_t)c->limit) {
			/* The last one returned is where the next page starts (before it). */
			p->next = last;
			break;
		}
		store__col_message(s, Q_HIST_PAGE, 0, &m);
		store__page_push(p, protocol_message(&m));
		last = m.id;
	}
	store__done(s, Q_HIST_PAGE);
	return rc < 0 ? -1 : 0;
}

int
store_history(struct store *s, const char *user, const char *peer, uint64_t group_id,
    uint64_t before, int limit, struct store_page *p)
{
	struct history_ctx c = { user, peer, group_id, before, limit, p };

	memset(p, 0, sizeof *p);
	if (user == NULL || !protocol_valid_user(user) || limit < 1 ||
	    (peer == NULL) == (group_id == 0) || (peer != NULL && !protocol_valid_user(peer)))
		return store__refuse(EINVAL);
	if (store__run(s, 0, history_fn, &c) != 0) {
		store_page_clear(p);
		return -1;
	}
	return 0;
}
