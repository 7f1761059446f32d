/* store_presence.c - presence: one row per open connection, online flags, last_seen. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "protocol.h"
#include "store.h"
#include "store_int.h"

enum {
	Q_PRES_LOCK = STORE__Q(STORE__SET_PRESENCE),
	Q_PRES_SUM,
	Q_PRES_INC,
	Q_PRES_DEC,
	Q_PRES_SEEN,
	Q_PRES_RESET_SEEN,
	Q_PRES_RESET_DEL,
	Q_PRES_GET,
	Q_PRESENCE_END
};
STORE__QSET_CHECK(Q_PRESENCE_END, STORE__SET_PRESENCE);

static const char *const presence_sql[Q_PRESENCE_END - STORE__Q(STORE__SET_PRESENCE)] = {
	/* The presence_users row is the per-user lock that serialises connection counting. */
	STORE__SQL(Q_PRES_LOCK) = "INSERT INTO presence_users (user_id, last_seen) VALUES (?, 0)"
	    " ON DUPLICATE KEY UPDATE last_seen = last_seen",
	STORE__SQL(Q_PRES_SUM) = "SELECT COUNT(*) FROM presence_conns WHERE user_id = ?",
	STORE__SQL(Q_PRES_INC) = "INSERT IGNORE INTO presence_conns (user_id, node, conn)"
	    " VALUES (?, ?, ?)",
	STORE__SQL(Q_PRES_DEC) = "DELETE FROM presence_conns"
	    " WHERE user_id = ? AND node = ? AND conn = ?",
	STORE__SQL(Q_PRES_SEEN) = "UPDATE presence_users SET last_seen = ? WHERE user_id = ?",
	STORE__SQL(Q_PRES_RESET_SEEN) = "UPDATE presence_users SET last_seen = ? WHERE user_id IN"
	    " (SELECT user_id FROM presence_conns WHERE node = ?)",
	STORE__SQL(Q_PRES_RESET_DEL) = "DELETE FROM presence_conns WHERE node = ?",
	STORE__SQL(Q_PRES_GET) = "SELECT (SELECT COUNT(*) FROM presence_conns WHERE user_id = ?),"
	    " (SELECT COALESCE(MAX(last_seen), 0) FROM presence_users WHERE user_id = ?)",
};

const struct store__qset store__presence_qset = { presence_sql,
    Q_PRESENCE_END - STORE__Q(STORE__SET_PRESENCE), NULL };

/* --- presence ------------------------------------------------------------------------------ */

struct presence_ctx {
	const char	*user;
	const char	*node;
	uint64_t	 conn;
	int		 delta;
	int64_t		 now;
	int		 changed;
	char *const	*users;
	size_t		 n;
	char		*json;
};

/*
 * Add or drop the row of connection (node, conn) of user; changed when online flipped. Counting
 * rows, not increments: adding a connection twice or dropping one never added changes nothing.
 */
static int
presence_update_txn(struct store *s, void *arg)
{
	struct presence_ctx *c = arg;
	uint64_t before, after, changed, unused;
	int rc;

	c->changed = 0;
	if ((rc = store__mine(s, &changed, &unused, NULL)) != 0) {
		c->changed = changed != 0;
		return rc < 0 ? -1 : 1;
	}
	if (EXEC(s, Q_PRES_LOCK, PS(c->user)) != 0)
		return -1;
	rc = ROW(s, Q_PRES_SUM, PS(c->user));
	before = rc == 1 ? store__col_u(s, Q_PRES_SUM, 0) : 0;
	store__done(s, Q_PRES_SUM);
	if (rc < 0)
		return -1;
	if (c->delta > 0) {
		if (EXEC(s, Q_PRES_INC, PS(c->user), PS(c->node), PU(c->conn)) != 0)
			return -1;
		after = before + store__affected(s, Q_PRES_INC);
	} else {
		if (EXEC(s, Q_PRES_DEC, PS(c->user), PS(c->node), PU(c->conn)) != 0)
			return -1;
		after = before - store__affected(s, Q_PRES_DEC);
	}
	if (after == before)
		return 1;	/* that connection was counted (or gone) already */
	c->changed = (before == 0) != (after == 0);
	if (c->changed && after == 0 && EXEC(s, Q_PRES_SEEN, PI(c->now), PS(c->user)) != 0)
		return -1;
	return store__mark(s, (uint64_t)c->changed, 0, NULL);
}

int
store_presence_update(struct store *s, const char *user, const char *node, uint64_t conn,
    int delta, int64_t now_ms, int *online_changed)
{
	struct presence_ctx c = { .user = user, .node = node, .conn = conn, .delta = delta,
	    .now = now_ms };

	*online_changed = 0;
	if (user == NULL || node == NULL || !protocol_valid_user(user) || *node == '\0' ||
	    strlen(node) > 128 || (delta != 1 && delta != -1))
		return store__refuse(EINVAL);
	if (store__run(s, 1, presence_update_txn, &c) != 0)
		return -1;
	*online_changed = c.changed;
	return 0;
}

/* A node restarted: its connections are gone; users it had online were last seen now. */
static int
presence_reset_txn(struct store *s, void *arg)
{
	struct presence_ctx *c = arg;

	if (EXEC(s, Q_PRES_RESET_SEEN, PI(c->now), PS(c->node)) != 0)
		return -1;
	return EXEC(s, Q_PRES_RESET_DEL, PS(c->node));
}

int
store_presence_reset(struct store *s, const char *node, int64_t now_ms)
{
	struct presence_ctx c = { .node = node, .now = now_ms };

	if (node == NULL || *node == '\0' || strlen(node) > 128)
		return store__refuse(EINVAL);
	return store__run(s, 1, presence_reset_txn, &c);
}

/* Online flag and last_seen of every asked user (unknown users: offline, null). */
static int
presence_json_fn(struct store *s, void *arg)
{
	struct presence_ctx *c = arg;
	struct json_object *o, *list, *e;
	int64_t seen;
	size_t i;
	int rc;

	free(c->json);
	c->json = NULL;
	list = json_object_new_array();
	for (i = 0; i < c->n; i++) {
		if ((rc = ROW(s, Q_PRES_GET, PS(c->users[i]), PS(c->users[i]))) < 0) {
			json_object_put(list);
			return -1;
		}
		e = json_object_new_object();
		json_object_object_add(e, "user", json_object_new_string(c->users[i]));
		json_object_object_add(e, "online",
		    json_object_new_boolean(rc == 1 && store__col_u(s, Q_PRES_GET, 0) > 0));
		seen = rc == 1 ? store__col_i(s, Q_PRES_GET, 1) : 0;
		json_object_object_add(e, "last_seen", seen != 0 ? json_object_new_int64(seen) : NULL);
		store__done(s, Q_PRES_GET);
		json_object_array_add(list, e);
	}
	o = json_object_new_object();
	json_object_object_add(o, "presence", list);
	c->json = store__json_take(o);
	return 0;
}

int
store_presence_json(struct store *s, char *const *users, size_t n, char **json)
{
	struct presence_ctx c = { .users = users, .n = n };
	size_t i;

	*json = NULL;
	for (i = 0; i < n; i++) {
		if (users[i] == NULL || !protocol_valid_user(users[i]))
			return store__refuse(EINVAL);
	}
	return store__run_json(s, presence_json_fn, &c, &c.json, json);
}
