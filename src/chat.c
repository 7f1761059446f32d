/* chat.c - the operations of the contract, shared by both daemons: store, then cache, then bus. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "bus.h"
#include "cache.h"
#include "chat.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "protocol.h"
#include "redis.h"
#include "store.h"
#include "xmalloc.h"

/* Presence goes to the peers of this many of the user's most recent conversations. */
#define CHAT_PRESENCE_PEERS	100

void
chat_init(struct chat *ch, const struct config *cfg, struct bus *bus, struct cache_journal *journal)
{
	ch->cfg = cfg;
	ch->store = store_new(cfg);
	ch->cache = cache_new(cfg, journal);
	ch->bus = bus;
	ch->local = NULL;
	ch->local_arg = NULL;
}

void
chat_clear(struct chat *ch)
{
	store_free(ch->store);
	cache_free(ch->cache);
	ch->store = NULL;
	ch->cache = NULL;
	ch->bus = NULL;
}

/* A hint on the bus; a lost hint only delays (receivers re-read MySQL), so failures are ignored. */
static void
chat_publish(struct chat *ch, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload)
{
	size_t len = payload != NULL ? strlen(payload) : 0;

	if (ch->local != NULL) {
		if (ch->bus != NULL)
			(void)bus_publish_others(ch->bus, topic, key, seq, payload, len);
		ch->local(ch->local_arg, topic, key, seq, payload, len);
		return;
	}
	if (ch->bus == NULL)
		return;
	(void)bus_publish(ch->bus, topic, key, seq, payload, len);
}

/*
 * Forget the summaries of every target of n commits, plus extra (NULL: none), in one memcached
 * round trip. Before any hint goes out: a client woken by one must not read an old summary.
 */
static void
chat_invalidate(struct chat *ch, const struct store_targets *const *ts, size_t n,
    const char *extra)
{
	const char **users;
	size_t i, j, m = 0, total = extra != NULL;

	for (i = 0; i < n; i++)
		total += ts[i]->n;
	if (total == 0)
		return;
	users = xcalloc(total, sizeof *users);
	if (extra != NULL)
		users[m++] = extra;
	for (i = 0; i < n; i++) {
		for (j = 0; j < ts[i]->n; j++)
			users[m++] = ts[i]->v[j].user;
	}
	cache_invalidate_many(ch->cache, users, m);
	free(users);
}

/*
 * After a commit that appended durable events: hint each target. The hint has no payload: the
 * receiver reads the event from the log (the exact stored body, e.g. its ts, is only known to
 * the store).
 */
static void
chat_targets_hint(struct chat *ch, const struct store_targets *t)
{
	size_t i;

	for (i = 0; i < t->n; i++)
		chat_publish(ch, BUS_USER_EVENT, t->v[i].user, t->v[i].seq, NULL);
}

/* After a commit: forget the summaries of t's users and of extra (NULL: none), then hint them. */
static void
chat_targets_done(struct chat *ch, const struct store_targets *t, const char *extra)
{
	chat_invalidate(ch, &t, 1, extra);
	chat_targets_hint(ch, t);
}

/* A new message's hints: each carries that target's new_message event inline. */
static void
chat_message_hint(struct chat *ch, const struct store_send_req *sr,
    const struct store_send_res *res)
{
	struct proto_message m;
	const struct store_targets *t = &res->targets;
	char *ev;
	size_t i;

	if (ch->bus == NULL && ch->local == NULL)
		return;
	memset(&m, 0, sizeof m);
	m.id = res->server_msg_id;
	m.from = sr->from;
	m.to = sr->to;
	m.group_id = sr->to != NULL ? 0 : sr->group_id;
	m.content = sr->content;
	m.client_msg_id = sr->client_msg_id;
	m.ts = res->ts;
	for (i = 0; i < t->n; i++) {
		ev = protocol_event_new_message(t->v[i].seq, &m);
		chat_publish(ch, BUS_USER_EVENT, t->v[i].user, t->v[i].seq, ev);
		free(ev);
	}
}

/*
 * Is there anyone to tell about send i of a batch? A new message, and a retry of one already
 * stored (the store names its targets again: the first answer may have reached nobody).
 */
static int
chat_sent_new(const struct store_send_res *res, const int *err, size_t i)
{
	return (err == NULL || err[i] == 0) && res[i].targets.n > 0;
}

/*
 * After n sends committed (err: each item's errno, NULL when all succeeded): forget every
 * target's summary in one memcached round trip, then hint them.
 */
static void
chat_messages_done(struct chat *ch, const struct store_send_req *sr,
    const struct store_send_res *res, const int *err, size_t n)
{
	const struct store_targets **ts;
	size_t i, m = 0;

	ts = xcalloc(n, sizeof *ts);
	for (i = 0; i < n; i++) {
		if (chat_sent_new(res, err, i))
			ts[m++] = &res[i].targets;
	}
	chat_invalidate(ch, ts, m, NULL);
	free(ts);
	for (i = 0; i < n; i++) {
		if (chat_sent_new(res, err, i))
			chat_message_hint(ch, &sr[i], &res[i]);
	}
}

/* What needs no database: a valid sender, content, id, and exactly one valid user or a group id. */
static int
chat_check_send(const struct store_send_req *sr)
{
	if (sr->from == NULL || !protocol_valid_user(sr->from) || sr->content == NULL ||
	    sr->client_msg_id == NULL)
		goto bad;
	if (sr->to != NULL ? !protocol_valid_user(sr->to) : sr->group_id == 0)
		goto bad;
	return 0;
bad:
	errno = EINVAL;
	return -1;
}

void
chat_send_request(struct store_send_req *sr, const char *user, const struct proto_send *req)
{
	sr->from = user;
	sr->to = req->to;
	sr->group_id = req->to != NULL ? 0 : req->group_id;
	sr->content = req->content;
	sr->client_msg_id = req->client_msg_id;
}

int
chat_send(struct chat *ch, const char *user, const struct proto_send *req,
    struct store_send_res *res)
{
	struct store_send_req sr;

	memset(res, 0, sizeof *res);
	chat_send_request(&sr, user, req);
	if (chat_check_send(&sr) != 0)
		return -1;
	if (store_send(ch->store, &sr, res) != 0)
		return -1;
	chat_messages_done(ch, &sr, res, NULL, 1);
	return 0;
}

int
chat_send_many(struct chat *ch, const struct store_send_req *reqs, size_t n,
    struct store_send_res *res, int *err)
{
	struct store_send_req *sr;
	struct store_send_res *sres;
	size_t *idx, i, m = 0;
	int *serr, rc = 0, saved = 0;

	if (n == 0)
		return 0;
	sr = xcalloc(n, sizeof *sr);
	sres = xcalloc(n, sizeof *sres);
	serr = xcalloc(n, sizeof *serr);
	idx = xcalloc(n, sizeof *idx);
	/* Items that fail validation stay out of the transaction and do not fail the others. */
	for (i = 0; i < n; i++) {
		memset(&res[i], 0, sizeof res[i]);
		if (chat_check_send(&reqs[i]) != 0) {
			err[i] = EINVAL;
			continue;
		}
		err[i] = 0;
		sr[m] = reqs[i];
		if (sr[m].to != NULL)
			sr[m].group_id = 0;
		idx[m++] = i;
	}
	if (m > 0 && store_send_batch(ch->store, sr, m, sres, serr) != 0) {
		rc = -1;
		saved = errno;
		for (i = 0; i < m; i++)
			err[idx[i]] = serr[i] != 0 ? serr[i] : saved;
		for (i = 0; i < m; i++)
			store_send_res_clear(&sres[i]);
		goto out;
	}
	chat_messages_done(ch, sr, sres, serr, m);
	for (i = 0; i < m; i++) {
		res[idx[i]] = sres[i];
		err[idx[i]] = serr[i];
	}
out:
	free(sr);
	free(sres);
	free(serr);
	free(idx);
	if (rc != 0)
		errno = saved;
	return rc;
}

int
chat_events_json(struct chat *ch, const char *user, uint64_t after, int limit, int with_has_more,
    char **json, size_t *nevents)
{
	struct store_page page;

	memset(&page, 0, sizeof page);
	if (store_events(ch->store, user, after, limit, &page) != 0)
		return -1;
	*json = protocol_events_page_reset(page.events, page.n, page.next,
	    with_has_more ? (page.has_more != 0) : -1, page.oldest_seq);
	if (nevents != NULL)
		*nevents = page.n + (page.oldest_seq != 0);
	store_page_clear(&page);
	return 0;
}

int
chat_history_json(struct chat *ch, const char *user, const struct proto_history *h, int frame,
    char **json)
{
	struct store_page page;
	int limit = h->limit > 0 ? h->limit : PROTO_HISTORY_LIMIT_DEFAULT;

	memset(&page, 0, sizeof page);
	if (store_history(ch->store, user, h->with, h->group_id, h->before, limit, &page) != 0)
		return -1;
	*json = protocol_history_page(h, frame, page.events, page.n, page.next);
	store_page_clear(&page);
	return 0;
}

int
chat_receipt(struct chat *ch, const char *user, const struct proto_receipt_req *req)
{
	struct store_targets t;
	int changed = 0;

	memset(&t, 0, sizeof t);
	if (store_receipt(ch->store, user, req->message_id, req->status, &changed, &t) != 0)
		return -1;
	if (changed) {
		/* The giver's unread count moved too. */
		chat_targets_done(ch, &t, user);
	}
	store_targets_clear(&t);
	return 0;
}

int
chat_receipts_json(struct chat *ch, const char *user, uint64_t message_id, char **json)
{
	return store_receipts_json(ch->store, user, message_id, json);
}

/* Free an array of n strings. */
static void
chat_free_users(char **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

int
chat_typing(struct chat *ch, const char *user, const struct proto_target *t)
{
	char **members = NULL, *ev;
	size_t n = 0, i;
	int member = 0;

	if (t->to != NULL) {
		if (!protocol_valid_user(t->to)) {
			errno = EINVAL;
			return -1;
		}
		ev = protocol_event_typing(user, t->to, 0);
		chat_publish(ch, BUS_USER_EPHEMERAL, t->to, 0, ev);
		free(ev);
		return 0;
	}
	if (t->group_id == 0) {
		errno = EINVAL;
		return -1;
	}
	/* One query answers both "does the group exist" (ENOENT) and "is user a member". */
	if (store_group_members(ch->store, t->group_id, &members, &n) != 0)
		return -1;
	for (i = 0; i < n && !member; i++)
		member = strcmp(members[i], user) == 0;
	if (!member) {
		chat_free_users(members, n);
		errno = EACCES;
		return -1;
	}
	ev = protocol_event_typing(user, NULL, t->group_id);
	for (i = 0; i < n; i++) {
		if (strcmp(members[i], user) != 0)
			chat_publish(ch, BUS_USER_EPHEMERAL, members[i], 0, ev);
	}
	free(ev);
	chat_free_users(members, n);
	return 0;
}

/*
 * Who hears of user's presence: the contract has no subscription list, so it goes to the peers of
 * the user's most recent one-to-one conversations (at most CHAT_PRESENCE_PEERS), read through the
 * summary cache (usually a memcached hit, no new store query). Group members are not told: a big
 * group would turn every connect into thousands of datagrams; they can ask GET /presence.
 */
static void
chat_presence_fanout(struct chat *ch, const char *user, const char *ev)
{
	struct json_object *o = NULL, *a, *c, *with;
	const char *peer;
	char *json = NULL;
	size_t i, n;

	if (ch->bus == NULL && ch->local == NULL)
		return;
	if (cache_conversations(ch->cache, ch->store, user, CHAT_PRESENCE_PEERS, &json) != 0) {
		log_warn("presence of %s: conversations unavailable: %s", user, strerror(errno));
		return;
	}
	if ((o = json_tokener_parse(json)) == NULL ||
	    !json_object_object_get_ex(o, "conversations", &a) ||
	    !json_object_is_type(a, json_type_array))
		goto out;
	n = json_object_array_length(a);
	for (i = 0; i < n; i++) {
		c = json_object_array_get_idx(a, i);
		if (!json_object_object_get_ex(c, "with", &with) ||
		    !json_object_is_type(with, json_type_string))
			continue;
		peer = json_object_get_string(with);
		if (protocol_valid_user(peer) && strcmp(peer, user) != 0)
			chat_publish(ch, BUS_USER_EPHEMERAL, peer, 0, ev);
	}
out:
	json_object_put(o);
	free(json);
}

int
chat_presence(struct chat *ch, const char *user, const char *node, uint64_t conn, int delta)
{
	int64_t now = parley_now_ms();
	int changed = 0;
	char *ev;

	if (delta != 1 && delta != -1) {
		errno = EINVAL;
		return -1;
	}
	if (store_presence_update(ch->store, user, node, conn, delta, now, &changed) != 0)
		return -1;
	if (!changed)
		return 0;
	/* Coming online, the user is seen now; going offline, now is the new last_seen. */
	ev = protocol_event_presence(user, delta > 0, now);
	chat_presence_fanout(ch, user, ev);
	free(ev);
	return 0;
}

int
chat_presence_json(struct chat *ch, char *const *users, size_t n, char **json)
{
	return store_presence_json(ch->store, users, n, json);
}

int
chat_conversations_json(struct chat *ch, const char *user, int limit, char **json)
{
	return cache_conversations(ch->cache, ch->store, user, limit, json);
}

int
chat_group_create(struct chat *ch, const char *user, const struct proto_group_create *req,
    uint64_t *group_id)
{
	struct store_targets t;
	size_t i;

	memset(&t, 0, sizeof t);
	if (req->name == NULL) {
		errno = EINVAL;
		return -1;
	}
	for (i = 0; i < req->nmembers; i++) {
		if (!protocol_valid_user(req->members[i])) {
			errno = EINVAL;
			return -1;
		}
	}
	if (store_group_create(ch->store, user, req->name, req->members, req->nmembers, group_id,
	    &t) != 0)
		return -1;
	/* Every member, the creator included, got a group_update event: targets cover them. */
	chat_targets_done(ch, &t, NULL);
	store_targets_clear(&t);
	return 0;
}

int
chat_group_json(struct chat *ch, const char *user, uint64_t group_id, char **json)
{
	return store_group_json(ch->store, user, group_id, json);
}

/*
 * A membership change: validated, stored (the store appends group_update events), then the
 * changed member's summaries are forgotten too: a removed member's list loses the group even
 * when it got no event.
 */
static int
chat_group_change(struct chat *ch, const char *by, uint64_t group_id, const char *user,
    int (*change)(struct store *, const char *, uint64_t, const char *, struct store_targets *))
{
	struct store_targets t;

	memset(&t, 0, sizeof t);
	if (!protocol_valid_user(user)) {
		errno = EINVAL;
		return -1;
	}
	if (change(ch->store, by, group_id, user, &t) != 0)
		return -1;
	chat_targets_done(ch, &t, user);
	store_targets_clear(&t);
	return 0;
}

int
chat_group_add(struct chat *ch, const char *by, uint64_t group_id, const char *user)
{
	return chat_group_change(ch, by, group_id, user, store_group_add);
}

int
chat_group_remove(struct chat *ch, const char *by, uint64_t group_id, const char *user)
{
	return chat_group_change(ch, by, group_id, user, store_group_remove);
}

int
chat_room_post(struct chat *ch, const char *user, const char *room, const char *text, char **event)
{
	uint64_t id;
	int64_t ts;

	*event = NULL;
	if (!protocol_valid_room(room) || text == NULL) {
		errno = EINVAL;
		return -1;
	}
	if (store_room_post(ch->store, room, user, text, ch->cfg->room_rate_per_sec, &id, &ts) != 0)
		return -1;
	*event = protocol_event_room_message(room, id, user, text, ts);
	chat_publish(ch, BUS_ROOM, room, id, *event);
	return 0;
}

/*
 * GET /rooms/{room}/messages answers {"events":[room_message...],"next":ID}: the same page shape
 * as GET /messages, with "next" the id of the last comment returned (or after when none), so a
 * client polls with after=next. limit < 1 or above config.room_history means room_history.
 */
int
chat_room_history_json(struct chat *ch, const char *room, uint64_t after, int limit, char **json,
    size_t *nevents)
{
	struct store_page page;

	if (!protocol_valid_room(room)) {
		errno = EINVAL;
		return -1;
	}
	if (limit < 1 || limit > ch->cfg->room_history)
		limit = ch->cfg->room_history;
	memset(&page, 0, sizeof page);
	if (store_room_history(ch->store, room, after, limit, &page) != 0)
		return -1;
	*json = protocol_events_page(page.events, page.n, page.next, -1);
	if (nevents != NULL)
		*nevents = page.n;
	store_page_clear(&page);
	return 0;
}

/* One comment's event by id: the page of one after id - 1, kept only when it is that comment. */
int
chat_room_comment_json(struct chat *ch, const char *room, uint64_t id, char **event)
{
	struct store_page page;

	*event = NULL;
	if (!protocol_valid_room(room) || id == 0) {
		errno = EINVAL;
		return -1;
	}
	memset(&page, 0, sizeof page);
	if (store_room_history(ch->store, room, id - 1, 1, &page) != 0)
		return -1;
	/* The first comment after id - 1 is another one when id was trimmed: not ours to send. */
	if (page.n != 1 || page.next != id) {
		store_page_clear(&page);
		errno = ENOENT;
		return -1;
	}
	*event = xstrdup(page.events[0]);
	store_page_clear(&page);
	return 0;
}

/*
 * GET /health. memcached "down" also when it is disabled by configuration (summaries then always
 * come from MySQL); bus "down" when this context has none (tools). "redis" ("ok" or "down") only
 * when the bus has a Redis bridge.
 */
int
chat_health_json(struct chat *ch, char **json)
{
	struct redis *r = redis_of_bus(ch->bus);
	int mysql = store_ping(ch->store) == 0;
	int mc = cache_check(ch->cache);

	/* Redis down is no failure: delivery falls back to MySQL rechecks. No Redis, no field. */
	xasprintf(json, "{\"status\":\"%s\",\"mysql\":\"%s\",\"memcached\":\"%s\",\"bus\":\"%s\"%s%s%s}",
	    mysql ? "ok" : "unavailable", mysql ? "ok" : "down", mc ? "ok" : "down",
	    ch->bus != NULL ? "ok" : "down", r != NULL ? ",\"redis\":\"" : "",
	    r != NULL ? redis_state(r) : "", r != NULL ? "\"" : "");
	if (!mysql) {
		errno = EAGAIN;
		return -1;
	}
	return 0;
}
