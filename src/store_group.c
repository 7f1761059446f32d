/* store_group.c - groups: creation, membership changes and their group_update events, lookups. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "protocol.h"
#include "store.h"
#include "store_int.h"
#include "xmalloc.h"

enum {
	Q_GROUP_INSERT = STORE__Q(STORE__SET_GROUP),
	Q_MEMBER_INSERT,
	Q_MEMBER_DELETE,
	Q_GROUP_END
};
STORE__QSET_CHECK(Q_GROUP_END, STORE__SET_GROUP);

static const char *const group_sql[Q_GROUP_END - STORE__Q(STORE__SET_GROUP)] = {
	STORE__SQL(Q_GROUP_INSERT) = "INSERT INTO chat_groups (name, creator, created_ts)"
	    " VALUES (?, ?, ?)",
	STORE__SQL(Q_MEMBER_INSERT) = "INSERT IGNORE INTO group_members (group_id, user_id, role)"
	    " VALUES (?, ?, ?)",
	STORE__SQL(Q_MEMBER_DELETE) = "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
};

const struct store__qset store__group_qset = { group_sql,
    Q_GROUP_END - STORE__Q(STORE__SET_GROUP), NULL };

/* --- groups -------------------------------------------------------------------------------- */

/*
 * Group events (group_update, one per member per change, in that member's log):
 *   create  every member, creator included: {"action":"created","user":<that member>,"by":creator}
 *   add     every member after the change, the new one included: "member_added", user = new one
 *   remove  every member before the change, the removed one included: "member_removed"
 * Adding an existing member or any refused change appends nothing.
 */

struct group_ctx {
	const char		*by;
	const char		*user;
	const char		*name;
	char			**members;	/* create: sorted, unique, creator included */
	size_t			 n;
	uint64_t		 g;
	struct store_targets	*t;
	char			*json;
	int			 member;
};

/* Append a group_update event to the log of every user in users (sorted: lock order). */
static int
group_notify(struct store *s, char *const *users, size_t n, uint64_t g, const char *action,
    const char *user, const char *by, struct store_targets *t)
{
	uint64_t seq;
	size_t i;
	char *body;
	int rc;

	for (i = 0; i < n; i++) {
		if (store__seq_alloc(s, users[i], 1, &seq) != 0)
			return -1;
		/* "created" tells each member that it is in the group: user is that member. */
		body = protocol_event_group_update(seq, g, action, user != NULL ? user : users[i], by);
		rc = store__event_append_body(s, users[i], seq, body, t);
		free(body);
		if (rc != 0)
			return -1;
	}
	return 0;
}

/* Did an earlier run of this change commit (its COMMIT reply lost)? Then c->t is its targets. */
static int
group_mine(struct store *s, struct group_ctx *c)
{
	uint64_t g, unused;
	int rc;

	if ((rc = store__mine(s, &g, &unused, c->t)) != 0)
		return rc < 0 ? -1 : 1;
	return 0;
}

/* Create: the group, its members (creator admin), a "created" event in every member's log. */
static int
group_create_txn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	uint64_t unused;
	size_t i;
	int rc;

	store_targets_clear(c->t);
	if ((rc = store__mine(s, &c->g, &unused, c->t)) != 0)
		return rc < 0 ? -1 : 1;
	if (EXEC(s, Q_GROUP_INSERT, PS(c->name), PS(c->by), PI(parley_now_ms())) != 0)
		return -1;
	c->g = store__insert_id(s, Q_GROUP_INSERT);
	for (i = 0; i < c->n; i++) {
		if (EXEC(s, Q_MEMBER_INSERT, PU(c->g), PS(c->members[i]),
		    PU(strcmp(c->members[i], c->by) == 0)) != 0)
			return -1;
	}
	if (group_notify(s, c->members, c->n, c->g, "created", NULL, c->by, c->t) != 0)
		return -1;
	return store__mark(s, c->g, 0, c->t);
}

int
store_group_create(struct store *s, const char *creator, const char *name,
    char *const *members, size_t n, uint64_t *group_id, struct store_targets *t)
{
	struct group_ctx c;
	size_t i, j;
	int rc;

	memset(t, 0, sizeof *t);
	memset(&c, 0, sizeof c);
	if (creator == NULL || !protocol_valid_user(creator) || name == NULL || *name == '\0' ||
	    !protocol_valid_utf8(name, strlen(name)) || protocol_utf8_chars(name) > 100)
		return store__refuse(EINVAL);
	for (i = 0; i < n; i++) {
		if (members[i] == NULL || !protocol_valid_user(members[i]))
			return store__refuse(EINVAL);
	}
	c.members = xcalloc(n + 1, sizeof *c.members);
	c.members[0] = (char *)creator;
	for (i = 0; i < n; i++)
		c.members[i + 1] = members[i];
	qsort(c.members, n + 1, sizeof *c.members, store__strp_cmp);
	for (i = j = 0; i < n + 1; i++) {
		if (j == 0 || strcmp(c.members[j - 1], c.members[i]) != 0)
			c.members[j++] = c.members[i];
	}
	c.n = j;
	c.by = creator;
	c.name = name;
	c.t = t;
	if ((rc = store__run(s, 1, group_create_txn, &c)) == 0)
		*group_id = c.g;
	else
		store_targets_clear(t);
	free(c.members);
	return rc;
}

/* The group's name, members and admins; only a member may see them. */
static int
group_json_fn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	struct json_object *o, *ms, *as;
	char *name = NULL, **m;
	int *admin, rc, member = 0;
	size_t n, i;

	free(c->json);
	c->json = NULL;
	if ((rc = store__group_exists(s, c->g, &name)) != 1)
		return rc < 0 ? -1 : store__refuse(ENOENT);
	if (store__group_load(s, c->g, &m, &n, &admin) != 0) {
		free(name);
		return -1;
	}
	ms = json_object_new_array();
	as = json_object_new_array();
	for (i = 0; i < n; i++) {
		if (strcmp(m[i], c->user) == 0)
			member = 1;
		json_object_array_add(ms, json_object_new_string(m[i]));
		if (admin[i])
			json_object_array_add(as, json_object_new_string(m[i]));
	}
	o = json_object_new_object();
	json_object_object_add(o, "group_id", json_object_new_int64((int64_t)c->g));
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "members", ms);
	json_object_object_add(o, "admins", as);
	free(name);
	store__strv_free(m, n);
	free(admin);
	if (!member) {
		json_object_put(o);
		return store__refuse(EACCES);
	}
	c->json = store__json_take(o);
	return 0;
}

int
store_group_json(struct store *s, const char *user, uint64_t group_id, char **json)
{
	struct group_ctx c;

	*json = NULL;
	memset(&c, 0, sizeof c);
	if (user == NULL || !protocol_valid_user(user) || group_id == 0)
		return store__refuse(EINVAL);
	c.user = user;
	c.g = group_id;
	return store__run_json(s, group_json_fn, &c, &c.json, json);
}

/* Add: by must be an admin; every member (the new one included) gets member_added. */
static int
group_add_txn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	char **m;
	size_t n;
	int rc;

	store_targets_clear(c->t);
	if ((rc = group_mine(s, c)) != 0)
		return rc;
	if ((rc = store__group_exists(s, c->g, NULL)) != 1)
		return rc < 0 ? -1 : store__refuse(ENOENT);
	if ((rc = store__group_role(s, c->g, c->by)) == -1)
		return -1;
	if (rc != 1)
		return store__refuse(EACCES);
	if (EXEC(s, Q_MEMBER_INSERT, PU(c->g), PS(c->user), PU(0)) != 0)
		return -1;
	if (store__affected(s, Q_MEMBER_INSERT) == 0)
		return 1;	/* already a member: nothing changes, no event */
	if (store__group_load(s, c->g, &m, &n, NULL) != 0)
		return -1;
	rc = group_notify(s, m, n, c->g, "member_added", c->user, c->by, c->t);
	store__strv_free(m, n);
	return rc != 0 ? -1 : store__mark(s, c->g, 0, c->t);
}

/* Run a membership change (add or remove user, made by by) as one transaction; fills t. */
static int
group_change(struct store *s, store__fn txn, const char *by, uint64_t group_id, const char *user,
    struct store_targets *t)
{
	struct group_ctx c;

	memset(t, 0, sizeof *t);
	memset(&c, 0, sizeof c);
	if (by == NULL || user == NULL || !protocol_valid_user(by) || !protocol_valid_user(user) ||
	    group_id == 0)
		return store__refuse(EINVAL);
	c.by = by;
	c.user = user;
	c.g = group_id;
	c.t = t;
	if (store__run(s, 1, txn, &c) != 0) {
		store_targets_clear(t);
		return -1;
	}
	return 0;
}

int
store_group_add(struct store *s, const char *by, uint64_t group_id, const char *user,
    struct store_targets *t)
{
	return group_change(s, group_add_txn, by, group_id, user, t);
}

/* Remove: by is an admin or the user itself; the members before removal (user too) are told. */
static int
group_remove_txn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	char **m;
	size_t n;
	int rc;

	store_targets_clear(c->t);
	if ((rc = group_mine(s, c)) != 0)
		return rc;
	if ((rc = store__group_exists(s, c->g, NULL)) != 1)
		return rc < 0 ? -1 : store__refuse(ENOENT);
	if (strcmp(c->by, c->user) != 0) {
		if ((rc = store__group_role(s, c->g, c->by)) == -1)
			return -1;
		if (rc != 1)
			return store__refuse(EACCES);
	}
	if ((rc = store__group_role(s, c->g, c->user)) == -1)
		return -1;
	if (rc == -2)
		return store__refuse(ENOENT);
	if (store__group_load(s, c->g, &m, &n, NULL) != 0)
		return -1;
	if ((rc = EXEC(s, Q_MEMBER_DELETE, PU(c->g), PS(c->user))) == 0)
		rc = group_notify(s, m, n, c->g, "member_removed", c->user, c->by, c->t);
	store__strv_free(m, n);
	return rc != 0 ? -1 : store__mark(s, c->g, 0, c->t);
}

int
store_group_remove(struct store *s, const char *by, uint64_t group_id, const char *user,
    struct store_targets *t)
{
	return group_change(s, group_remove_txn, by, group_id, user, t);
}

/* The members of an existing group (ENOENT when there is none). */
static int
group_members_fn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	int rc;

	store__strv_free(c->members, c->n);
	c->members = NULL;
	c->n = 0;
	if ((rc = store__group_exists(s, c->g, NULL)) != 1)
		return rc < 0 ? -1 : store__refuse(ENOENT);
	return store__group_load(s, c->g, &c->members, &c->n, NULL);
}

int
store_group_members(struct store *s, uint64_t group_id, char ***members, size_t *n)
{
	struct group_ctx c;

	*members = NULL;
	*n = 0;
	memset(&c, 0, sizeof c);
	if (group_id == 0)
		return store__refuse(EINVAL);
	c.g = group_id;
	if (store__run(s, 0, group_members_fn, &c) != 0) {
		store__strv_free(c.members, c.n);
		return -1;
	}
	*members = c.members;
	*n = c.n;
	return 0;
}

/* Is c->user in group c->g (a missing group has no members)? */
static int
is_member_fn(struct store *s, void *arg)
{
	struct group_ctx *c = arg;
	int rc;

	if ((rc = store__group_role(s, c->g, c->user)) == -1)
		return -1;
	c->member = rc >= 0;
	return 0;
}

int
store_is_member(struct store *s, uint64_t group_id, const char *user, int *member)
{
	struct group_ctx c;

	memset(&c, 0, sizeof c);
	*member = 0;
	if (user == NULL || !protocol_valid_user(user))
		return store__refuse(EINVAL);
	c.g = group_id;
	c.user = user;
	if (store__run(s, 0, is_member_fn, &c) != 0)
		return -1;
	*member = c.member;
	return 0;
}
