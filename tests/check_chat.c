/* check_chat.c - the contract's operations end to end: MariaDB, memcached and a private bus. */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "bus.h"
#include "chat.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "protocol.h"
#include "store.h"
#include "testenv.h"
#include "xmalloc.h"

/* A chat context on the test stack with a bus of its own (it hears its own hints). */
struct fx {
	struct config	 cfg;
	struct bus	*bus;
	struct chat	 ch;
};

#define HINTS_MAX 64

struct hints {
	struct bus_hint	v[HINTS_MAX];
	size_t		n;
};

static void
fx_open(struct fx *f)
{
	char *tmpl, *dir, *cause = NULL;

	memset(f, 0, sizeof *f);
	testenv_config(&f->cfg);
	xasprintf(&tmpl, "%s/chatbus.XXXXXX", testenv_dir());
	ck_assert_ptr_nonnull(mkdtemp(tmpl));
	xasprintf(&dir, "%s/d", tmpl);
	f->bus = bus_new(dir, &cause);
	ck_assert_msg(f->bus != NULL, "bus_new: %s", cause != NULL ? cause : "?");
	chat_init(&f->ch, &f->cfg, f->bus, NULL);
	free(dir);
	free(tmpl);
}

static void
fx_close(struct fx *f)
{
	chat_clear(&f->ch);
	bus_free(f->bus);
	config_clear(&f->cfg);
}

/* Collect the hints that arrive within ms milliseconds (the bus delivers to itself at once). */
static void
hints_collect(struct fx *f, int ms, struct hints *h)
{
	struct pollfd pfd = { .fd = bus_fd(f->bus), .events = POLLIN };
	int64_t end = parley_mono_ms() + ms;
	int left;

	h->n = 0;
	for (;;) {
		while (h->n < HINTS_MAX && bus_recv(f->bus, &h->v[h->n]) == 0)
			h->n++;
		if (h->n == HINTS_MAX || (left = (int)(end - parley_mono_ms())) <= 0)
			return;
		(void)poll(&pfd, 1, left);
	}
}

/* The one hint of topic for key; fails when there is not exactly one. */
static const struct bus_hint *
hints_one(const struct hints *h, enum bus_topic topic, const char *key)
{
	const struct bus_hint *found = NULL;
	size_t i, n = 0;

	for (i = 0; i < h->n; i++) {
		if (h->v[i].topic == topic && strcmp(h->v[i].key, key) == 0) {
			found = &h->v[i];
			n++;
		}
	}
	ck_assert_msg(n == 1, "%zu hints of topic %d for %s", n, (int)topic, key);
	return found;
}

static size_t
hints_count(const struct hints *h, enum bus_topic topic, const char *key)
{
	size_t i, n = 0;

	for (i = 0; i < h->n; i++) {
		if (h->v[i].topic == topic && (key == NULL || strcmp(h->v[i].key, key) == 0))
			n++;
	}
	return n;
}

static uint64_t
get_u64(struct json_object *o, const char *path)
{
	return (uint64_t)testenv_json_int(o, path);
}

/* user's log from after: the parsed {"events":[..]} (caller puts) and its event count. */
static struct json_object *
log_of(struct fx *f, const char *user, uint64_t after, size_t *n)
{
	struct json_object *o;
	char *json = NULL;
	size_t cnt = 0;

	ck_assert_int_eq(chat_events_json(&f->ch, user, after, 100, 0, &json, &cnt), 0);
	o = testenv_json(json);
	ck_assert_int_eq(json_object_array_length(testenv_json_get(o, "events")), cnt);
	*n = cnt;
	free(json);
	return o;
}

static struct json_object *
event_at(struct json_object *page, size_t i)
{
	return json_object_array_get_idx(testenv_json_get(page, "events"), i);
}

/* A 1:1 send of content with a fresh client_msg_id; returns the result (caller clears). */
static void
send_to(struct fx *f, const char *from, const char *to, const char *content,
    struct store_send_res *res)
{
	struct proto_send req;

	memset(&req, 0, sizeof req);
	req.to = (char *)to;
	req.content = (char *)content;
	req.client_msg_id = testenv_name("m");
	ck_assert_int_eq(chat_send(&f->ch, from, &req, res), 0);
	free(req.client_msg_id);
}

START_TEST(test_send_logs_and_hints)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b"), *cmid = testenv_name("m");
	struct proto_send req = { .content = "hi there", .client_msg_id = cmid };
	struct store_send_res res, dup;
	struct json_object *la, *lb, *ev, *pl;
	const struct bus_hint *h;
	struct hints hs;
	uint64_t bseq = 0;
	size_t n, i;

	fx_open(&f);
	req.to = b;
	ck_assert_int_eq(chat_send(&f.ch, a, &req, &res), 0);
	ck_assert_int_eq(res.duplicate, 0);
	ck_assert_uint_gt(res.server_msg_id, 0);
	ck_assert_uint_eq(res.targets.n, 2);
	for (i = 0; i < res.targets.n; i++) {
		if (strcmp(res.targets.v[i].user, b) == 0)
			bseq = res.targets.v[i].seq;
	}
	ck_assert_uint_gt(bseq, 0);

	/* Both logs hold the message. */
	la = log_of(&f, a, 0, &n);
	ck_assert_uint_eq(n, 1);
	ev = event_at(la, 0);
	ck_assert_str_eq(testenv_json_str(ev, "type"), "new_message");
	ck_assert_uint_eq(get_u64(ev, "seq"), res.seq);
	ck_assert_uint_eq(get_u64(ev, "message.id"), res.server_msg_id);
	lb = log_of(&f, b, 0, &n);
	ck_assert_uint_eq(n, 1);
	ev = event_at(lb, 0);
	ck_assert_uint_eq(get_u64(ev, "seq"), bseq);
	ck_assert_str_eq(testenv_json_str(ev, "message.from"), a);
	ck_assert_str_eq(testenv_json_str(ev, "message.to"), b);
	ck_assert_str_eq(testenv_json_str(ev, "message.content"), "hi there");
	ck_assert_str_eq(testenv_json_str(ev, "message.client_msg_id"), cmid);

	/* Each got a hint whose inline payload is exactly its stored event. */
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, NULL), 2);
	h = hints_one(&hs, BUS_USER_EVENT, b);
	ck_assert_uint_eq(h->seq, bseq);
	ck_assert_uint_gt(h->len, 0);
	pl = testenv_json(h->payload);
	ck_assert_msg(json_object_equal(pl, ev), "payload %s != stored %s", h->payload,
	    json_object_to_json_string(ev));
	json_object_put(pl);
	h = hints_one(&hs, BUS_USER_EVENT, a);
	ck_assert_uint_eq(h->seq, res.seq);
	pl = testenv_json(h->payload);
	ck_assert(json_object_equal(pl, event_at(la, 0)));
	json_object_put(pl);

	/*
	 * A retry: same ids, nothing new in the logs, the same hints again (the first answer may
	 * have reached nobody: its COMMIT reply lost, the client got a 503 and retried).
	 */
	ck_assert_int_eq(chat_send(&f.ch, a, &req, &dup), 0);
	ck_assert_int_eq(dup.duplicate, 1);
	ck_assert_uint_eq(dup.server_msg_id, res.server_msg_id);
	ck_assert_uint_eq(dup.seq, res.seq);
	ck_assert_uint_eq(dup.targets.n, 2);
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hs.n, 2);
	ck_assert_uint_eq(hints_one(&hs, BUS_USER_EVENT, b)->seq, bseq);
	json_object_put(lb);
	lb = log_of(&f, b, 0, &n);
	ck_assert_uint_eq(n, 1);

	store_send_res_clear(&res);
	store_send_res_clear(&dup);
	json_object_put(la);
	json_object_put(lb);
	fx_close(&f);
	free(a);
	free(b);
	free(cmid);
}
END_TEST

START_TEST(test_send_rejects)
{
	struct fx f;
	char *a = testenv_name("a");
	struct proto_send req = { .to = "not a user!", .content = "x", .client_msg_id = "m1" };
	struct store_send_res res;
	struct hints hs;

	fx_open(&f);
	ck_assert_int_eq(chat_send(&f.ch, a, &req, &res), -1);
	ck_assert_int_eq(errno, EINVAL);
	req.to = NULL;
	req.group_id = 0;
	ck_assert_int_eq(chat_send(&f.ch, a, &req, &res), -1);
	ck_assert_int_eq(errno, EINVAL);
	/* A group that does not exist. */
	req.group_id = 999999999999ULL;
	ck_assert_int_eq(chat_send(&f.ch, a, &req, &res), -1);
	ck_assert_int_eq(errno, ENOENT);
	hints_collect(&f, 100, &hs);
	ck_assert_uint_eq(hs.n, 0);
	fx_close(&f);
	free(a);
}
END_TEST

START_TEST(test_send_batch)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b");
	char *m0 = testenv_name("m"), *m1 = testenv_name("m"), *m2 = testenv_name("m");
	struct proto_send r0 = { .to = b, .content = "b0", .client_msg_id = m0 };
	struct proto_send r1 = { .to = "bad user", .content = "b1", .client_msg_id = m1 };
	struct proto_send r2 = { .to = b, .content = "b2", .client_msg_id = m2 };
	const struct proto_send *reqs[3] = { &r0, &r1, &r2 };
	struct store_send_req sr[3];
	struct store_send_res res[3];
	struct json_object *lb;
	struct hints hs;
	int err[3];
	size_t n, i;

	fx_open(&f);
	for (i = 0; i < 3; i++)
		chat_send_request(&sr[i], a, reqs[i]);
	ck_assert_int_eq(chat_send_many(&f.ch, sr, 3, res, err), 0);
	ck_assert_int_eq(err[0], 0);
	ck_assert_int_eq(err[1], EINVAL);
	ck_assert_int_eq(err[2], 0);
	ck_assert_uint_gt(res[0].server_msg_id, 0);
	ck_assert_uint_gt(res[2].server_msg_id, res[0].server_msg_id);
	lb = log_of(&f, b, 0, &n);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(testenv_json_str(event_at(lb, 0), "message.content"), "b0");
	ck_assert_str_eq(testenv_json_str(event_at(lb, 1), "message.content"), "b2");
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, b), 2);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, a), 2);
	for (i = 0; i < 3; i++)
		store_send_res_clear(&res[i]);
	json_object_put(lb);
	fx_close(&f);
	free(a);
	free(b);
	free(m0);
	free(m1);
	free(m2);
}
END_TEST

/* chat_send_many: senders differ per item (parley-ws's group commit across users). */
START_TEST(test_send_many)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b"), *c = testenv_name("c");
	char *m0 = testenv_name("m"), *m1 = testenv_name("m"), *m2 = testenv_name("m");
	struct store_send_req reqs[3] = {
		{ .from = a, .to = c, .content = "from a", .client_msg_id = m0 },
		{ .from = "bad sender", .to = c, .content = "x", .client_msg_id = m1 },
		{ .from = b, .to = c, .content = "from b", .client_msg_id = m2 },
	};
	struct store_send_res res[3];
	struct json_object *lc, *lc2;
	struct hints hs;
	int err[3];
	size_t n, i;

	fx_open(&f);
	ck_assert_int_eq(chat_send_many(&f.ch, reqs, 3, res, err), 0);
	ck_assert_int_eq(err[0], 0);
	ck_assert_int_eq(err[1], EINVAL);
	ck_assert_int_eq(err[2], 0);
	lc = log_of(&f, c, 0, &n);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(testenv_json_str(event_at(lc, 0), "message.from"), a);
	ck_assert_str_eq(testenv_json_str(event_at(lc, 1), "message.from"), b);
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, c), 2);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, a), 1);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, b), 1);
	/* A retry of the same batch is all duplicates: same ids, the same hints again. */
	for (i = 0; i < 3; i++)
		store_send_res_clear(&res[i]);
	ck_assert_int_eq(chat_send_many(&f.ch, reqs, 3, res, err), 0);
	ck_assert_int_eq(res[0].duplicate, 1);
	ck_assert_int_eq(res[2].duplicate, 1);
	hints_collect(&f, 200, &hs);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, c), 2);
	lc2 = log_of(&f, c, 0, &n);
	ck_assert_uint_eq(n, 2);
	json_object_put(lc2);
	for (i = 0; i < 3; i++)
		store_send_res_clear(&res[i]);
	json_object_put(lc);
	fx_close(&f);
	free(a);
	free(b);
	free(c);
	free(m0);
	free(m1);
	free(m2);
}
END_TEST

START_TEST(test_typing_peer)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b");
	struct proto_target t = { .to = b };
	const struct bus_hint *h;
	struct json_object *pl;
	struct hints hs;

	fx_open(&f);
	ck_assert_int_eq(chat_typing(&f.ch, a, &t), 0);
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hs.n, 1);
	h = hints_one(&hs, BUS_USER_EPHEMERAL, b);
	ck_assert_uint_eq(h->seq, 0);
	pl = testenv_json(h->payload);
	ck_assert_str_eq(testenv_json_str(pl, "type"), "typing");
	ck_assert_str_eq(testenv_json_str(pl, "from"), a);
	ck_assert_str_eq(testenv_json_str(pl, "to"), b);
	ck_assert(!json_object_object_get_ex(pl, "seq", NULL));
	json_object_put(pl);

	t.to = "no such user!";
	ck_assert_int_eq(chat_typing(&f.ch, a, &t), -1);
	ck_assert_int_eq(errno, EINVAL);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

START_TEST(test_group_typing_and_send)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b"), *c = testenv_name("c");
	char *members[1] = { b }, *json = NULL;
	struct proto_group_create g = { .name = "typists", .members = members, .nmembers = 1 };
	struct proto_target t = { 0 };
	struct proto_send req = { .content = "to the group" };
	struct store_send_res res;
	const struct bus_hint *h;
	struct json_object *pl, *la;
	struct hints hs;
	uint64_t gid = 0;
	size_t n;

	fx_open(&f);
	ck_assert_int_eq(chat_group_create(&f.ch, a, &g, &gid), 0);
	ck_assert_uint_gt(gid, 0);
	hints_collect(&f, 300, &hs);		/* group_update hints for the members */
	ck_assert_uint_ge(hints_count(&hs, BUS_USER_EVENT, b), 1);
	ck_assert_int_eq(chat_group_json(&f.ch, b, gid, &json), 0);
	ck_assert_ptr_nonnull(strstr(json, "typists"));
	free(json);

	t.group_id = gid;
	ck_assert_int_eq(chat_typing(&f.ch, c, &t), -1);	/* not a member */
	ck_assert_int_eq(errno, EACCES);
	t.group_id = 999999999999ULL;
	ck_assert_int_eq(chat_typing(&f.ch, a, &t), -1);
	ck_assert_int_eq(errno, ENOENT);
	hints_collect(&f, 100, &hs);
	ck_assert_uint_eq(hs.n, 0);

	/* A member types: every other member hears it, the typist does not. */
	t.group_id = gid;
	ck_assert_int_eq(chat_typing(&f.ch, b, &t), 0);
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hs.n, 1);
	h = hints_one(&hs, BUS_USER_EPHEMERAL, a);
	pl = testenv_json(h->payload);
	ck_assert_str_eq(testenv_json_str(pl, "type"), "typing");
	ck_assert_str_eq(testenv_json_str(pl, "from"), b);
	ck_assert_uint_eq(get_u64(pl, "group_id"), gid);
	json_object_put(pl);

	/* Sending to the group: only members may, and every member is hinted. */
	req.group_id = gid;
	req.client_msg_id = "g-1";
	ck_assert_int_eq(chat_send(&f.ch, c, &req, &res), -1);
	ck_assert_int_eq(errno, EACCES);
	ck_assert_int_eq(chat_send(&f.ch, b, &req, &res), 0);
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, a), 1);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, b), 1);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, c), 0);
	/* The inline event is the one in a's log. */
	h = hints_one(&hs, BUS_USER_EVENT, a);
	la = log_of(&f, a, h->seq - 1, &n);
	ck_assert_uint_eq(n, 1);
	pl = testenv_json(h->payload);
	ck_assert_msg(json_object_equal(pl, event_at(la, 0)), "payload %s != stored %s", h->payload,
	    json_object_to_json_string(event_at(la, 0)));
	ck_assert_uint_eq(get_u64(pl, "message.group_id"), gid);
	ck_assert(json_object_is_type(testenv_json_get(pl, "message.to"), json_type_null));
	json_object_put(pl);
	json_object_put(la);
	store_send_res_clear(&res);

	/* Membership changes hint the members too. */
	ck_assert_int_eq(chat_group_add(&f.ch, a, gid, c), 0);
	hints_collect(&f, 300, &hs);
	ck_assert_uint_ge(hints_count(&hs, BUS_USER_EVENT, c), 1);
	ck_assert_int_eq(chat_typing(&f.ch, c, &t), 0);
	ck_assert_int_eq(chat_group_remove(&f.ch, c, gid, c), 0);
	ck_assert_int_eq(chat_typing(&f.ch, c, &t), -1);
	ck_assert_int_eq(errno, EACCES);
	fx_close(&f);
	free(a);
	free(b);
	free(c);
}
END_TEST

/* unread of the conversation with `with` in user's summaries (-1 when there is none). */
static int
unread_with(struct fx *f, const char *user, const char *with)
{
	struct json_object *o, *a, *c, *w;
	char *json = NULL;
	size_t i;
	int unread = -1;

	ck_assert_int_eq(chat_conversations_json(&f->ch, user, 20, &json), 0);
	o = testenv_json(json);
	a = testenv_json_get(o, "conversations");
	for (i = 0; i < json_object_array_length(a); i++) {
		c = json_object_array_get_idx(a, i);
		if (json_object_object_get_ex(c, "with", &w) &&
		    strcmp(json_object_get_string(w), with) == 0)
			unread = json_object_get_int(testenv_json_get(c, "unread"));
	}
	json_object_put(o);
	free(json);
	return unread;
}

START_TEST(test_receipt_hints_sender)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b");
	struct proto_receipt_req rr;
	struct store_send_res res;
	const struct bus_hint *h;
	struct json_object *la, *ev;
	struct hints hs;
	uint64_t last = 0;
	size_t n;

	fx_open(&f);
	send_to(&f, a, b, "please read", &res);
	ck_assert_int_eq(unread_with(&f, b, a), 1);	/* now cached */
	hints_collect(&f, 200, &hs);

	rr.message_id = res.server_msg_id;
	rr.status = PROTO_READ;
	ck_assert_int_eq(chat_receipt(&f.ch, b, &rr), 0);
	ck_assert_int_eq(store_last_seq(f.ch.store, a, &last), 0);
	hints_collect(&f, 300, &hs);
	h = hints_one(&hs, BUS_USER_EVENT, a);
	ck_assert_uint_eq(h->seq, last);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EVENT, b), 0);

	la = log_of(&f, a, res.seq, &n);
	ck_assert_uint_eq(n, 1);
	ev = event_at(la, 0);
	ck_assert_str_eq(testenv_json_str(ev, "type"), "message_status");
	ck_assert_uint_eq(get_u64(ev, "seq"), last);
	ck_assert_uint_eq(get_u64(ev, "message_id"), res.server_msg_id);
	ck_assert_str_eq(testenv_json_str(ev, "status"), "read");
	ck_assert_str_eq(testenv_json_str(ev, "by"), b);
	json_object_put(la);
	/* The reader's cached summary was invalidated: unread dropped. */
	ck_assert_int_eq(unread_with(&f, b, a), 0);

	/* Markers never move back: the same receipt again changes nothing and hints nobody. */
	ck_assert_int_eq(chat_receipt(&f.ch, b, &rr), 0);
	rr.status = PROTO_DELIVERED;
	ck_assert_int_eq(chat_receipt(&f.ch, b, &rr), 0);
	hints_collect(&f, 200, &hs);
	ck_assert_uint_eq(hs.n, 0);

	/* Not a recipient. */
	rr.status = PROTO_READ;
	ck_assert_int_eq(chat_receipt(&f.ch, "someone-else", &rr), -1);
	ck_assert_int_eq(errno, ENOENT);
	store_send_res_clear(&res);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

START_TEST(test_presence_fanout)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b"), *stranger = testenv_name("s");
	char *node = testenv_name("node"), *node2 = testenv_name("node");
	char *users[1] = { a }, *json = NULL;
	struct store_send_res res;
	const struct bus_hint *h;
	struct json_object *pl;
	struct hints hs;

	fx_open(&f);
	send_to(&f, a, b, "hello", &res);
	store_send_res_clear(&res);
	hints_collect(&f, 200, &hs);

	ck_assert_int_eq(chat_presence(&f.ch, a, node, 1, 1), 0);
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hs.n, 1);
	h = hints_one(&hs, BUS_USER_EPHEMERAL, b);
	pl = testenv_json(h->payload);
	ck_assert_str_eq(testenv_json_str(pl, "type"), "presence");
	ck_assert_str_eq(testenv_json_str(pl, "user"), a);
	ck_assert(json_object_get_boolean(testenv_json_get(pl, "online")));
	json_object_put(pl);
	ck_assert_uint_eq(hints_count(&hs, BUS_USER_EPHEMERAL, stranger), 0);

	/* A second connection, and its end, are no transition. */
	ck_assert_int_eq(chat_presence(&f.ch, a, node2, 1, 1), 0);
	ck_assert_int_eq(chat_presence(&f.ch, a, node2, 1, -1), 0);
	hints_collect(&f, 200, &hs);
	ck_assert_uint_eq(hs.n, 0);
	ck_assert_int_eq(chat_presence_json(&f.ch, users, 1, &json), 0);
	pl = testenv_json(json);
	ck_assert(json_object_get_boolean(testenv_json_get(
	    json_object_array_get_idx(testenv_json_get(pl, "presence"), 0), "online")));
	json_object_put(pl);
	free(json);

	ck_assert_int_eq(chat_presence(&f.ch, a, node, 1, -1), 0);
	hints_collect(&f, 300, &hs);
	h = hints_one(&hs, BUS_USER_EPHEMERAL, b);
	pl = testenv_json(h->payload);
	ck_assert(!json_object_get_boolean(testenv_json_get(pl, "online")));
	ck_assert_int_gt(json_object_get_int64(testenv_json_get(pl, "last_seen")), 0);
	json_object_put(pl);
	ck_assert_int_eq(chat_presence(&f.ch, a, node, 1, 0), -1);
	ck_assert_int_eq(errno, EINVAL);
	fx_close(&f);
	free(a);
	free(b);
	free(stranger);
	free(node);
	free(node2);
}
END_TEST

START_TEST(test_room_rate_limit)
{
	struct fx f;
	char *u = testenv_name("u"), *room = testenv_name("r"), *ev = NULL, *json = NULL;
	char *events[10] = { 0 }, text[32];
	struct json_object *o;
	struct hints hs;
	uint64_t last = 0;
	size_t n, i;
	int64_t t0;

	fx_open(&f);
	ck_assert_int_eq(f.cfg.room_rate_per_sec, 10);
	/*
	 * Start 10 ms before a wall-clock second ends, so the posts straddle a second boundary:
	 * the limit is per sliding second, not per calendar second.
	 */
	while (parley_now_ms() % 1000 < 990 || parley_now_ms() % 1000 >= 996)
		usleep(500);
	t0 = parley_mono_ms();
	for (i = 0; i < 10; i++) {
		snprintf(text, sizeof text, "comment %zu", i);
		ck_assert_int_eq(chat_room_post(&f.ch, u, room, text, &events[i]), 0);
		o = testenv_json(events[i]);
		ck_assert_str_eq(testenv_json_str(o, "type"), "room_message");
		ck_assert_str_eq(testenv_json_str(o, "room"), room);
		ck_assert_str_eq(testenv_json_str(o, "comment.text"), text);
		ck_assert_str_eq(testenv_json_str(o, "comment.user"), u);
		last = get_u64(o, "comment.id");
		json_object_put(o);
	}
	ck_assert_int_eq(chat_room_post(&f.ch, u, room, "one too many", &ev), -1);
	ck_assert_int_eq(errno, EBUSY);
	ck_assert_ptr_null(ev);
	ck_assert_msg(parley_mono_ms() - t0 < 1000, "11 posts took over a second: the limit test is void");

	/* Every accepted comment was broadcast with the event inline. */
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hints_count(&hs, BUS_ROOM, room), 10);
	for (i = 0; i < hs.n; i++)
		ck_assert_str_eq(hs.v[i].payload, events[i]);
	ck_assert_uint_eq(hs.v[9].seq, last);

	/* History: {"events":[...],"next":last id}, then nothing after it. */
	ck_assert_int_eq(chat_room_history_json(&f.ch, room, 0, 0, &json, &n), 0);
	ck_assert_uint_eq(n, 10);
	o = testenv_json(json);
	ck_assert_uint_eq(json_object_array_length(testenv_json_get(o, "events")), 10);
	ck_assert_uint_eq(get_u64(o, "next"), last);
	json_object_put(o);
	free(json);
	ck_assert_int_eq(chat_room_history_json(&f.ch, room, last, 0, &json, &n), 0);
	ck_assert_uint_eq(n, 0);
	o = testenv_json(json);
	ck_assert_uint_eq(get_u64(o, "next"), last);
	json_object_put(o);
	free(json);
	ck_assert_int_eq(chat_room_post(&f.ch, u, "bad room!", "x", &ev), -1);
	ck_assert_int_eq(errno, EINVAL);

	for (i = 0; i < 10; i++)
		free(events[i]);
	fx_close(&f);
	free(u);
	free(room);
}
END_TEST

/*
 * A room event fetched by id (its hint was too large to carry it) is that comment or nothing:
 * once trimmed (limits.room_history), the fetch used to answer the next comment, which the
 * receiver then got twice (once for this id, once for its own hint).
 */
START_TEST(test_room_comment_trimmed)
{
	struct fx f;
	char *u = testenv_name("u"), *room = testenv_name("r"), *other = testenv_name("r");
	char *ev[3] = { 0 }, *got = NULL, *oev = NULL;
	uint64_t ids[3], oid;
	struct json_object *o;
	size_t i;

	fx_open(&f);
	f.cfg.room_history = 2;
	for (i = 0; i < 3; i++) {
		ck_assert_int_eq(chat_room_post(&f.ch, u, room, i == 0 ? "first" : "later", &ev[i]), 0);
		o = testenv_json(ev[i]);
		ids[i] = get_u64(o, "comment.id");
		json_object_put(o);
	}
	/* The first one is trimmed: asking for it finds nothing, not the second. */
	ck_assert_int_eq(chat_room_comment_json(&f.ch, room, ids[0], &got), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_ptr_null(got);
	for (i = 1; i < 3; i++) {
		ck_assert_int_eq(chat_room_comment_json(&f.ch, room, ids[i], &got), 0);
		ck_assert_str_eq(got, ev[i]);
		free(got);
	}
	/* An id between two of this room's comments (another room's) is not this room's. */
	ck_assert_int_eq(chat_room_post(&f.ch, u, other, "elsewhere", &oev), 0);
	o = testenv_json(oev);
	oid = get_u64(o, "comment.id");
	json_object_put(o);
	ck_assert_int_eq(chat_room_comment_json(&f.ch, room, oid, &got), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_int_eq(chat_room_comment_json(&f.ch, other, ids[2], &got), -1);
	ck_assert_int_eq(errno, ENOENT);

	for (i = 0; i < 3; i++)
		free(ev[i]);
	free(oev);
	fx_close(&f);
	free(u);
	free(room);
	free(other);
}
END_TEST

START_TEST(test_health)
{
	struct fx f;
	struct chat nobus;
	char *json = NULL;

	fx_open(&f);
	ck_assert_int_eq(chat_health_json(&f.ch, &json), 0);
	ck_assert_str_eq(json, "{\"status\":\"ok\",\"mysql\":\"ok\",\"memcached\":\"ok\",\"bus\":\"ok\"}");
	free(json);
	chat_init(&nobus, &f.cfg, NULL, NULL);
	ck_assert_int_eq(chat_health_json(&nobus, &json), 0);
	ck_assert_str_eq(json, "{\"status\":\"ok\",\"mysql\":\"ok\",\"memcached\":\"ok\",\"bus\":\"down\"}");
	free(json);
	chat_clear(&nobus);
	fx_close(&f);
}
END_TEST

START_TEST(test_events_page_shape)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b"), *json = NULL;
	struct store_send_res res;
	struct json_object *o;
	size_t n;
	int i;

	fx_open(&f);
	for (i = 0; i < 3; i++) {
		send_to(&f, a, b, "page", &res);
		store_send_res_clear(&res);
	}
	ck_assert_int_eq(chat_events_json(&f.ch, b, 0, 2, 1, &json, &n), 0);
	ck_assert_uint_eq(n, 2);
	o = testenv_json(json);
	ck_assert_uint_eq(get_u64(o, "next"), 2);
	ck_assert(json_object_get_boolean(testenv_json_get(o, "has_more")));
	json_object_put(o);
	free(json);
	ck_assert_int_eq(chat_events_json(&f.ch, b, 2, 2, 1, &json, &n), 0);
	ck_assert_uint_eq(n, 1);
	o = testenv_json(json);
	ck_assert_uint_eq(get_u64(o, "next"), 3);
	ck_assert(!json_object_get_boolean(testenv_json_get(o, "has_more")));
	json_object_put(o);
	free(json);
	ck_assert_int_eq(chat_events_json(&f.ch, b, 3, 10, 0, &json, &n), 0);
	ck_assert_uint_eq(n, 0);
	o = testenv_json(json);
	ck_assert_uint_eq(get_u64(o, "next"), 3);
	ck_assert(!json_object_object_get_ex(o, "has_more", NULL));
	json_object_put(o);
	free(json);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

/*
 * A send and a receipt whose COMMIT replies are lost (tests/harness/mysql-commit-drop) still
 * forget the cached summaries and hint every target, as when the reply arrives.
 */
START_TEST(test_lost_commit_hints)
{
	struct fx f;
	char *a = testenv_name("a"), *b = testenv_name("b");
	struct proto_send req = { .content = "second" };
	struct proto_receipt_req rr;
	struct store_send_res r0, res;
	struct testenv_proxy px;
	struct hints hs;

	fx_open(&f);
	testenv_proxy_start(&px, &f.cfg);	/* before the store's first connection */
	send_to(&f, a, b, "first", &r0);
	ck_assert_int_eq(unread_with(&f, b, a), 1);	/* now cached */
	hints_collect(&f, 200, &hs);

	req.to = b;
	req.client_msg_id = testenv_name("m");
	testenv_proxy_arm(&px);
	ck_assert_int_eq(chat_send(&f.ch, a, &req, &res), 0);
	ck_assert(testenv_proxy_fired(&px));
	ck_assert_int_eq(res.duplicate, 0);
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hints_one(&hs, BUS_USER_EVENT, b)->seq, 2);
	ck_assert_uint_eq(hints_one(&hs, BUS_USER_EVENT, a)->seq, 2);
	ck_assert_int_eq(unread_with(&f, b, a), 2);

	rr.message_id = res.server_msg_id;
	rr.status = PROTO_READ;
	testenv_proxy_arm(&px);
	ck_assert_int_eq(chat_receipt(&f.ch, b, &rr), 0);
	ck_assert(testenv_proxy_fired(&px));
	hints_collect(&f, 300, &hs);
	ck_assert_uint_eq(hints_one(&hs, BUS_USER_EVENT, a)->seq, 3);	/* its message_status */
	ck_assert_int_eq(unread_with(&f, b, a), 0);

	store_send_res_clear(&r0);
	store_send_res_clear(&res);
	free(req.client_msg_id);
	fx_close(&f);
	testenv_proxy_stop(&px);
	free(a);
	free(b);
}
END_TEST

static Suite *
chat_suite(void)
{
	Suite *s = suite_create("chat");
	TCase *tc = tcase_create("chat");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_send_logs_and_hints);
	tcase_add_test(tc, test_send_rejects);
	tcase_add_test(tc, test_send_batch);
	tcase_add_test(tc, test_send_many);
	tcase_add_test(tc, test_typing_peer);
	tcase_add_test(tc, test_group_typing_and_send);
	tcase_add_test(tc, test_receipt_hints_sender);
	tcase_add_test(tc, test_lost_commit_hints);
	tcase_add_test(tc, test_presence_fanout);
	tcase_add_test(tc, test_room_rate_limit);
	tcase_add_test(tc, test_room_comment_trimmed);
	tcase_add_test(tc, test_health);
	tcase_add_test(tc, test_events_page_shape);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	log_init("check_chat", LOG_LEVEL_ERROR, 0);
	return testenv_run(chat_suite());
}
