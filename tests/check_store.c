/* check_store.c - the MySQL store against the real throwaway MariaDB: logs, idempotency, receipts, faults. */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <mysql.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mysql.h>

#include "config.h"
#include "log.h"
#include "parley.h"
#include "protocol.h"
#include "store.h"
#include "store_int.h"
#include "testenv.h"
#include "xmalloc.h"

static struct config cfg;

static void
strv_free_test(char **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void
setup(void)
{
	testenv_config(&cfg);
}

static void
teardown(void)
{
	config_clear(&cfg);
}

/* The seq of an event text. */
static int64_t
seq_of(const char *ev)
{
	struct json_object *o = testenv_json(ev);
	int64_t v = testenv_json_int(o, "seq");

	json_object_put(o);
	return v;
}

/* Send one 1:1 (to != NULL) or group message; asserts success. */
static void
send1(struct store *s, const char *from, const char *to, uint64_t g, const char *content,
    const char *cmid, struct store_send_res *res)
{
	struct store_send_req r = { from, to, g, content, cmid };

	ck_assert_msg(store_send(s, &r, res) == 0, "send %s -> %s: %s", from, to != NULL ? to : "group",
	    strerror(errno));
}

/* The whole log of user after `after`, read in pages of 7 (checks paging too). */
static void
read_all(struct store *s, const char *user, uint64_t after, struct store_page *all)
{
	struct store_page p;
	size_t i;

	memset(all, 0, sizeof *all);
	for (;;) {
		ck_assert_int_eq(store_events(s, user, after, 7, &p), 0);
		for (i = 0; i < p.n; i++) {
			all->events = xreallocarray(all->events, all->n + 1, sizeof *all->events);
			all->events[all->n++] = xstrdup(p.events[i]);
		}
		ck_assert(p.n <= 7);
		if (p.n > 0)
			ck_assert_uint_eq(p.next, (uint64_t)seq_of(p.events[p.n - 1]));
		else
			ck_assert_uint_eq(p.next, after);
		after = p.next;
		if (!p.has_more) {
			store_page_clear(&p);
			break;
		}
		ck_assert_uint_eq(p.n, 7);
		store_page_clear(&p);
	}
	all->next = after;
}

/* Assert the log's seqs are exactly 1..n. */
static void
assert_gap_free(const struct store_page *p, size_t n)
{
	size_t i;
	struct json_object *o;

	ck_assert_uint_eq(p->n, n);
	for (i = 0; i < p->n; i++) {
		o = testenv_json(p->events[i]);
		ck_assert_int_eq(testenv_json_int(o, "seq"), (int64_t)i + 1);
		json_object_put(o);
	}
}

START_TEST(test_send_and_read_back)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob");
	struct store *s = store_new(&cfg);
	struct store_send_res r1, r2, r3;
	struct store_page p;
	struct json_object *o, *m;
	uint64_t last;

	ck_assert_int_eq(store_ping(s), 0);
	send1(s, a, b, 0, "Hi \xc3\xa9\xf0\x9f\x98\x80 \"q\"", "c-1", &r1);
	ck_assert_uint_gt(r1.server_msg_id, 0);
	ck_assert_uint_eq(r1.seq, 1);
	ck_assert_int_eq(r1.duplicate, 0);
	ck_assert_int_gt(r1.ts, 0);
	ck_assert_uint_eq(r1.targets.n, 2);
	ck_assert_str_eq(r1.targets.v[0].user, a);
	ck_assert_uint_eq(r1.targets.v[0].seq, 1);
	ck_assert_str_eq(r1.targets.v[1].user, b);
	ck_assert_uint_eq(r1.targets.v[1].seq, 1);

	ck_assert_int_eq(store_events(s, b, 0, 10, &p), 0);
	ck_assert_uint_eq(p.n, 1);
	ck_assert_uint_eq(p.next, 1);
	ck_assert_int_eq(p.has_more, 0);
	o = testenv_json(p.events[0]);
	ck_assert_str_eq(testenv_json_str(o, "type"), "new_message");
	ck_assert_int_eq(testenv_json_int(o, "seq"), 1);
	m = testenv_json_get(o, "message");
	ck_assert_int_eq(testenv_json_int(m, "id"), (int64_t)r1.server_msg_id);
	ck_assert_str_eq(testenv_json_str(m, "from"), a);
	ck_assert_str_eq(testenv_json_str(m, "to"), b);
	ck_assert(json_object_get_type(testenv_json_get(m, "group_id")) == json_type_null);
	ck_assert_str_eq(testenv_json_str(m, "content"), "Hi \xc3\xa9\xf0\x9f\x98\x80 \"q\"");
	ck_assert_str_eq(testenv_json_str(m, "client_msg_id"), "c-1");
	ck_assert_int_eq(testenv_json_int(m, "ts"), r1.ts);
	json_object_put(o);
	store_page_clear(&p);

	/* The sender's own log has it too (other devices). */
	ck_assert_int_eq(store_events(s, a, 0, 10, &p), 0);
	ck_assert_uint_eq(p.n, 1);
	store_page_clear(&p);

	/* Retry: same id and seq, duplicate, no new event anywhere. */
	send1(s, a, b, 0, "Hi again (ignored)", "c-1", &r2);
	ck_assert_int_eq(r2.duplicate, 1);
	ck_assert_uint_eq(r2.server_msg_id, r1.server_msg_id);
	ck_assert_uint_eq(r2.seq, r1.seq);
	ck_assert_int_eq(r2.ts, r1.ts);
	ck_assert_uint_eq(r2.targets.n, 0);
	ck_assert_int_eq(store_last_seq(s, a, &last), 0);
	ck_assert_uint_eq(last, 1);
	ck_assert_int_eq(store_last_seq(s, b, &last), 0);
	ck_assert_uint_eq(last, 1);

	/* The same client_msg_id from another sender is another message. */
	send1(s, b, a, 0, "reply", "c-1", &r3);
	ck_assert_int_eq(r3.duplicate, 0);
	ck_assert_uint_ne(r3.server_msg_id, r1.server_msg_id);
	ck_assert_uint_eq(r3.seq, 2);

	/* A large content survives (result buffers grow). */
	{
		char *big = xmalloc(20001);
		struct store_send_res r4;

		memset(big, 'x', 20000);
		big[20000] = '\0';
		send1(s, a, b, 0, big, "c-big", &r4);
		ck_assert_int_eq(store_events(s, b, 2, 10, &p), 0);
		ck_assert_uint_eq(p.n, 1);
		o = testenv_json(p.events[0]);
		ck_assert_uint_eq(strlen(testenv_json_str(o, "message.content")), 20000);
		json_object_put(o);
		store_page_clear(&p);
		store_send_res_clear(&r4);
		free(big);
	}
	{
		char *nobody = testenv_name("nobody");

		ck_assert_int_eq(store_events(s, nobody, 0, 10, &p), 0);
		ck_assert_uint_eq(p.n, 0);
		ck_assert_uint_eq(p.next, 0);
		store_page_clear(&p);
		ck_assert_int_eq(store_last_seq(s, nobody, &last), 0);
		ck_assert_uint_eq(last, 0);
		free(nobody);
	}

	store_send_res_clear(&r1);
	store_send_res_clear(&r2);
	store_send_res_clear(&r3);
	store_free(s);
	free(a);
	free(b);
}
END_TEST

START_TEST(test_invalid_arguments)
{
	struct store *s = store_new(&cfg);
	struct store_send_req bad[] = {
		{ "bad user", "bob", 0, "x", "c" },
		{ "alice", "bob", 0, "", "c" },
		{ "alice", "bob", 0, "x", "" },
		{ "alice", "bob", 7, "x", "c" },	/* both to and group */
		{ "alice", NULL, 0, "x", "c" },		/* neither */
		{ "alice", "bob", 0, "\xff\xfe", "c" },	/* not UTF-8 */
	};
	struct store_send_res res;
	struct store_page p;
	uint64_t v;
	size_t i;
	char *j;
	int ch;
	struct store_targets t;

	for (i = 0; i < PARLEY_NITEMS(bad); i++) {
		errno = 0;
		ck_assert_int_eq(store_send(s, &bad[i], &res), -1);
		ck_assert_int_eq(errno, EINVAL);
	}
	ck_assert_int_eq(store_events(s, "a b", 0, 10, &p), -1);
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_int_eq(store_events(s, "alice", 0, 0, &p), -1);
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_int_eq(store_cursor_get(s, "alice", "", &v), -1);
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_int_eq(store_receipt(s, "alice", 0, PROTO_READ, &ch, &t), -1);
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_int_eq(store_conversations_json(s, "al ice", 10, &j), -1);
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_int_eq(store_room_post(s, "r 1", "alice", "x", 10, &v, (int64_t *)&v), -1);
	ck_assert_int_eq(errno, EINVAL);
	store_free(s);
}
END_TEST

START_TEST(test_seq_gap_free_and_paging)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	struct store *s = store_new(&cfg);
	struct store_send_res r;
	struct store_page all;
	char cmid[32];
	int i;

	for (i = 0; i < 30; i++) {
		snprintf(cmid, sizeof cmid, "m%d", i);
		send1(s, a, i % 3 == 0 ? c : b, 0, "x", cmid, &r);
		ck_assert_uint_eq(r.seq, (uint64_t)i + 1);
		store_send_res_clear(&r);
	}
	read_all(s, a, 0, &all);
	assert_gap_free(&all, 30);
	ck_assert_uint_eq(all.next, 30);
	store_page_clear(&all);
	read_all(s, b, 0, &all);
	assert_gap_free(&all, 20);
	store_page_clear(&all);
	read_all(s, c, 0, &all);
	assert_gap_free(&all, 10);
	store_page_clear(&all);
	/* after= skips. */
	read_all(s, a, 25, &all);
	ck_assert_uint_eq(all.n, 5);
	ck_assert_int_eq(seq_of(all.events[0]), 26);
	store_page_clear(&all);
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

/* --- concurrency --------------------------------------------------------------------------- */

struct worker {
	const char		*from;
	const char		*to;
	const char		*cmid;	/* NULL: own ids */
	int			 n;
	int			 id;
	struct store_send_res	 res;
	int			 failures;
};

static void *
same_cmid_worker(void *arg)
{
	struct worker *w = arg;
	struct store *s = store_new(&cfg);
	struct store_send_req r = { w->from, w->to, 0, "once", w->cmid };

	if (store_send(s, &r, &w->res) != 0)
		w->failures++;
	store_free(s);
	return NULL;
}

START_TEST(test_idempotent_under_concurrency)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob");
	struct worker w[8];
	pthread_t th[8];
	struct store *s;
	struct store_page all;
	int i, round, fresh;

	for (round = 0; round < 3; round++) {
		char cmid[32];

		snprintf(cmid, sizeof cmid, "same-%d", round);
		memset(w, 0, sizeof w);
		for (i = 0; i < 8; i++) {
			w[i] = (struct worker){ .from = a, .to = b, .cmid = cmid };
			ck_assert_int_eq(pthread_create(&th[i], NULL, same_cmid_worker, &w[i]), 0);
		}
		for (i = 0; i < 8; i++)
			pthread_join(th[i], NULL);
		fresh = 0;
		for (i = 0; i < 8; i++) {
			ck_assert_int_eq(w[i].failures, 0);
			ck_assert_uint_eq(w[i].res.server_msg_id, w[0].res.server_msg_id);
			ck_assert_uint_eq(w[i].res.seq, (uint64_t)round + 1);
			if (!w[i].res.duplicate)
				fresh++;
			/* A duplicate names the same logs: its caller hints again. */
			ck_assert_uint_eq(w[i].res.targets.n, 2);
			ck_assert_uint_eq(w[i].res.targets.v[1].seq, (uint64_t)round + 1);
			store_send_res_clear(&w[i].res);
		}
		ck_assert_int_eq(fresh, 1);
	}
	s = store_new(&cfg);
	read_all(s, a, 0, &all);
	assert_gap_free(&all, 3);
	store_page_clear(&all);
	read_all(s, b, 0, &all);
	assert_gap_free(&all, 3);
	store_page_clear(&all);
	store_free(s);
	free(a);
	free(b);
}
END_TEST

static void *
many_worker(void *arg)
{
	struct worker *w = arg;
	struct store *s = store_new(&cfg);
	struct store_send_req r = { w->from, w->to, 0, "hello", NULL };
	struct store_send_res res;
	char cmid[32];
	int i;

	for (i = 0; i < w->n; i++) {
		snprintf(cmid, sizeof cmid, "w%d-%d", w->id, i);
		r.client_msg_id = cmid;
		if (store_send(s, &r, &res) != 0)
			w->failures++;
		else
			store_send_res_clear(&res);
	}
	store_free(s);
	return NULL;
}

START_TEST(test_concurrent_appends_one_log)
{
	char *b = testenv_name("bob"), *from[8];
	struct worker w[8];
	pthread_t th[8];
	struct store *s;
	struct store_page all;
	uint64_t last;
	int i;

	for (i = 0; i < 8; i++) {
		/* Half the senders share one name: their own logs are contended too. */
		from[i] = i < 4 ? testenv_name("snd") : xstrdup(from[0]);
		w[i] = (struct worker){ .from = from[i], .to = b, .n = 25, .id = i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, many_worker, &w[i]), 0);
	}
	for (i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(w[i].failures, 0);
	}
	s = store_new(&cfg);
	read_all(s, b, 0, &all);
	assert_gap_free(&all, 200);
	store_page_clear(&all);
	read_all(s, from[0], 0, &all);
	assert_gap_free(&all, 125);
	store_page_clear(&all);
	ck_assert_int_eq(store_last_seq(s, b, &last), 0);
	ck_assert_uint_eq(last, 200);
	store_free(s);
	for (i = 0; i < 8; i++)
		free(from[i]);
	free(b);
}
END_TEST

/* --- groups -------------------------------------------------------------------------------- */

/* The last event of user's log, parsed. */
static struct json_object *
last_event(struct store *s, const char *user)
{
	struct store_page p;
	struct json_object *o;
	uint64_t last;

	ck_assert_int_eq(store_last_seq(s, user, &last), 0);
	ck_assert_uint_gt(last, 0);
	ck_assert_int_eq(store_events(s, user, last - 1, 10, &p), 0);
	ck_assert_uint_eq(p.n, 1);
	o = testenv_json(p.events[0]);
	ck_assert_int_eq(testenv_json_int(o, "seq"), (int64_t)last);
	store_page_clear(&p);
	return o;
}

/*
 * A group send to 600 members: their seqs are reserved, and their events and conversation rows
 * written, with the multi-row forms (512 + 64 + 16 + 4 + 4 rows): every member gets exactly one
 * event with the next seq of its own log, members whose logs were at different seqs included.
 */
START_TEST(test_big_group_send)
{
	enum { N = 600 };
	char *members[N], prefix[16];
	struct store *s = store_new(&cfg);
	struct store_send_res r, r0;
	struct store_targets t;
	struct json_object *o;
	uint64_t g, last;
	size_t i;

	for (i = 0; i < N; i++) {
		snprintf(prefix, sizeof prefix, "m%zu", i);
		members[i] = testenv_name(prefix);
	}
	/* Every 7th member has one more event in its log before the group exists. */
	for (i = 7; i < N; i += 7) {
		snprintf(prefix, sizeof prefix, "pre%zu", i);
		send1(s, members[0], members[i], 0, "before", prefix, &r0);
		store_send_res_clear(&r0);
	}
	memset(&t, 0, sizeof t);
	ck_assert_int_eq(store_group_create(s, members[0], "big", members, N, &g, &t), 0);
	ck_assert_uint_eq(t.n, N);
	store_targets_clear(&t);
	send1(s, members[1], NULL, g, "to all", "big-1", &r);
	ck_assert_uint_eq(r.targets.n, N);
	for (i = 0; i < r.targets.n; i++) {
		ck_assert_int_eq(store_last_seq(s, r.targets.v[i].user, &last), 0);
		ck_assert_uint_eq(r.targets.v[i].seq, last);
		o = last_event(s, r.targets.v[i].user);
		ck_assert_str_eq(testenv_json_str(o, "type"), "new_message");
		ck_assert_int_eq(testenv_json_int(o, "seq"), (int64_t)last);
		json_object_put(o);
	}
	for (i = 0; i < N; i++) {
		ck_assert_int_eq(store_last_seq(s, members[i], &last), 0);
		/* member 0 sent N / 7 messages first; 7k got one; group_update; the message */
		if (i == 0)
			ck_assert_uint_eq(last, (N - 1) / 7 + 2);
		else
			ck_assert_uint_eq(last, i % 7 == 0 ? 3 : 2);
		free(members[i]);
	}
	store_send_res_clear(&r);
	store_free(s);
}
END_TEST

START_TEST(test_groups)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	char *d = testenv_name("dave"), *members[3], **list, *json;
	struct store *s = store_new(&cfg);
	struct store_send_res r1, r2;
	struct store_send_req req;
	struct store_targets t;
	struct store_page all;
	struct json_object *o;
	uint64_t g, last;
	size_t n;
	int member;

	send1(s, b, c, 0, "before", "pre", &r1);	/* b and c start at different seqs */
	store_send_res_clear(&r1);
	members[0] = b;
	members[1] = c;
	members[2] = b;	/* duplicates are merged */
	ck_assert_int_eq(store_group_create(s, a, "Team \xe2\x9c\x93", members, 3, &g, &t), 0);
	ck_assert_uint_gt(g, 0);
	ck_assert_uint_eq(t.n, 3);
	store_targets_clear(&t);
	o = last_event(s, c);
	ck_assert_str_eq(testenv_json_str(o, "type"), "group_update");
	ck_assert_str_eq(testenv_json_str(o, "action"), "created");
	ck_assert_int_eq(testenv_json_int(o, "group_id"), (int64_t)g);
	ck_assert_str_eq(testenv_json_str(o, "by"), a);
	ck_assert_int_eq(testenv_json_int(o, "seq"), 2);
	json_object_put(o);

	ck_assert_int_eq(store_group_json(s, b, g, &json), 0);
	o = testenv_json(json);
	ck_assert_str_eq(testenv_json_str(o, "name"), "Team \xe2\x9c\x93");
	ck_assert_int_eq(testenv_json_int(o, "group_id"), (int64_t)g);
	ck_assert_uint_eq(json_object_array_length(testenv_json_get(o, "members")), 3);
	ck_assert_uint_eq(json_object_array_length(testenv_json_get(o, "admins")), 1);
	ck_assert_str_eq(json_object_get_string(
	    json_object_array_get_idx(testenv_json_get(o, "admins"), 0)), a);
	json_object_put(o);
	free(json);
	ck_assert_int_eq(store_group_json(s, d, g, &json), -1);
	ck_assert_int_eq(errno, EACCES);
	ck_assert_int_eq(store_group_json(s, a, g + 1000000, &json), -1);
	ck_assert_int_eq(errno, ENOENT);

	/* Fan-out: each member gets it with its own seq. */
	send1(s, b, NULL, g, "to all", "g1", &r2);
	ck_assert_uint_eq(r2.targets.n, 3);
	ck_assert_str_eq(r2.targets.v[0].user, b);
	ck_assert_uint_eq(r2.seq, 3);	/* pre, created, this */
	o = last_event(s, a);
	ck_assert_int_eq(testenv_json_int(o, "seq"), 2);	/* created, this */
	ck_assert_int_eq(testenv_json_int(o, "message.group_id"), (int64_t)g);
	ck_assert(json_object_get_type(testenv_json_get(o, "message.to")) == json_type_null);
	json_object_put(o);
	o = last_event(s, c);
	ck_assert_int_eq(testenv_json_int(o, "seq"), 3);
	ck_assert_int_eq(testenv_json_int(o, "message.id"), (int64_t)r2.server_msg_id);
	json_object_put(o);
	store_send_res_clear(&r2);

	/* Non-member and unknown group. */
	req = (struct store_send_req){ d, NULL, g, "let me in", "x1" };
	ck_assert_int_eq(store_send(s, &req, &r2), -1);
	ck_assert_int_eq(errno, EACCES);
	req.group_id = g + 1000000;
	ck_assert_int_eq(store_send(s, &req, &r2), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_int_eq(store_last_seq(s, d, &last), 0);
	ck_assert_uint_eq(last, 0);

	/* Membership: only admins add; adding twice is quiet; members may leave. */
	ck_assert_int_eq(store_group_add(s, b, g, d, &t), -1);
	ck_assert_int_eq(errno, EACCES);
	ck_assert_int_eq(store_group_add(s, a, g, d, &t), 0);
	ck_assert_uint_eq(t.n, 4);
	store_targets_clear(&t);
	o = last_event(s, d);
	ck_assert_str_eq(testenv_json_str(o, "action"), "member_added");
	ck_assert_str_eq(testenv_json_str(o, "user"), d);
	ck_assert_int_eq(testenv_json_int(o, "seq"), 1);
	json_object_put(o);
	ck_assert_int_eq(store_group_add(s, a, g, d, &t), 0);
	ck_assert_uint_eq(t.n, 0);
	ck_assert_int_eq(store_is_member(s, g, d, &member), 0);
	ck_assert_int_eq(member, 1);

	ck_assert_int_eq(store_group_remove(s, b, g, c, &t), -1);
	ck_assert_int_eq(errno, EACCES);
	ck_assert_int_eq(store_group_remove(s, c, g, c, &t), 0);	/* leaves */
	ck_assert_uint_eq(t.n, 4);
	store_targets_clear(&t);
	o = last_event(s, c);
	ck_assert_str_eq(testenv_json_str(o, "action"), "member_removed");
	ck_assert_str_eq(testenv_json_str(o, "user"), c);
	json_object_put(o);
	ck_assert_int_eq(store_group_remove(s, a, g, c, &t), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_int_eq(store_is_member(s, g, c, &member), 0);
	ck_assert_int_eq(member, 0);
	req = (struct store_send_req){ c, NULL, g, "still here?", "x2" };
	ck_assert_int_eq(store_send(s, &req, &r2), -1);
	ck_assert_int_eq(errno, EACCES);

	ck_assert_int_eq(store_group_members(s, g, &list, &n), 0);
	ck_assert_uint_eq(n, 3);
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
	ck_assert_int_eq(store_group_members(s, g + 1000000, &list, &n), -1);
	ck_assert_int_eq(errno, ENOENT);

	/* d heard of its own arrival and of c leaving. */
	read_all(s, d, 0, &all);
	assert_gap_free(&all, 2);
	store_page_clear(&all);
	store_free(s);
	free(a);
	free(b);
	free(c);
	free(d);
}
END_TEST

START_TEST(test_batch)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	struct store *s = store_new(&cfg);
	struct store_send_req reqs[5];
	struct store_send_res res[5];
	struct store_page all;
	int err[5], i;

	reqs[0] = (struct store_send_req){ a, b, 0, "one", "b1" };
	reqs[1] = (struct store_send_req){ a, NULL, 999999999, "nogroup", "b2" };
	reqs[2] = (struct store_send_req){ a, c, 0, "two", "b3" };
	reqs[3] = (struct store_send_req){ a, b, 0, "one again", "b1" };	/* repeat in batch */
	reqs[4] = (struct store_send_req){ a, b, 0, "", "b5" };
	ck_assert_int_eq(store_send_batch(s, reqs, 5, res, err), 0);
	ck_assert_int_eq(err[0], 0);
	ck_assert_int_eq(err[1], ENOENT);
	ck_assert_int_eq(err[2], 0);
	ck_assert_int_eq(err[3], 0);
	ck_assert_int_eq(err[4], EINVAL);
	ck_assert_uint_eq(res[0].seq, 1);
	ck_assert_uint_eq(res[2].seq, 2);
	ck_assert_int_eq(res[3].duplicate, 1);
	ck_assert_uint_eq(res[3].server_msg_id, res[0].server_msg_id);
	ck_assert_uint_eq(res[3].seq, res[0].seq);
	ck_assert_uint_lt(res[0].server_msg_id, res[2].server_msg_id);
	for (i = 0; i < 5; i++)
		store_send_res_clear(&res[i]);
	/* The whole batch again: all duplicates, nothing new. */
	ck_assert_int_eq(store_send_batch(s, reqs, 4, res, err), 0);
	ck_assert_int_eq(res[0].duplicate, 1);
	ck_assert_int_eq(res[2].duplicate, 1);
	ck_assert_uint_eq(res[2].seq, 2);
	for (i = 0; i < 4; i++)
		store_send_res_clear(&res[i]);
	read_all(s, a, 0, &all);
	assert_gap_free(&all, 2);
	store_page_clear(&all);
	read_all(s, b, 0, &all);
	assert_gap_free(&all, 1);
	store_page_clear(&all);
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

START_TEST(test_cursors)
{
	char *a = testenv_name("alice");
	struct store *s = store_new(&cfg);
	uint64_t v = 99;

	ck_assert_int_eq(store_cursor_get(s, a, "phone", &v), 0);
	ck_assert_uint_eq(v, 0);
	ck_assert_int_eq(store_cursor_set(s, a, "phone", 5), 0);
	ck_assert_int_eq(store_cursor_set(s, a, "laptop", 9), 0);
	ck_assert_int_eq(store_cursor_get(s, a, "phone", &v), 0);
	ck_assert_uint_eq(v, 5);
	ck_assert_int_eq(store_cursor_set(s, a, "phone", 2), 0);	/* may move back */
	ck_assert_int_eq(store_cursor_get(s, a, "phone", &v), 0);
	ck_assert_uint_eq(v, 2);
	ck_assert_int_eq(store_cursor_get(s, a, "laptop", &v), 0);
	ck_assert_uint_eq(v, 9);
	store_free(s);
	free(a);
}
END_TEST

/* --- receipts and conversations ------------------------------------------------------------ */

static void
assert_receipts(struct store *s, const char *user, uint64_t mid, int members, const char *delivered,
    const char *read)
{
	struct json_object *o, *dl, *rd;
	char *json, buf[512];
	size_t i;

	ck_assert_int_eq(store_receipts_json(s, user, mid, &json), 0);
	o = testenv_json(json);
	ck_assert_int_eq(testenv_json_int(o, "members"), members);
	dl = testenv_json_get(o, "delivered");
	rd = testenv_json_get(o, "read");
	buf[0] = '\0';
	for (i = 0; i < json_object_array_length(dl); i++) {
		strcat(buf, i ? "," : "");
		strcat(buf, json_object_get_string(json_object_array_get_idx(dl, i)));
	}
	ck_assert_str_eq(buf, delivered);
	buf[0] = '\0';
	for (i = 0; i < json_object_array_length(rd); i++) {
		strcat(buf, i ? "," : "");
		strcat(buf, json_object_get_string(json_object_array_get_idx(rd, i)));
	}
	ck_assert_str_eq(buf, read);
	json_object_put(o);
	free(json);
}

/* The conversation entry of user with `with` (1:1) or group g; asserts it exists. */
static struct json_object *
conversation(struct store *s, const char *user, const char *with, uint64_t g, int *pos)
{
	struct json_object *o, *l, *e, *r = NULL;
	char *json;
	size_t i;

	ck_assert_int_eq(store_conversations_json(s, user, 50, &json), 0);
	o = testenv_json(json);
	l = testenv_json_get(o, "conversations");
	for (i = 0; i < json_object_array_length(l); i++) {
		e = json_object_array_get_idx(l, i);
		if ((with != NULL &&
		    json_object_get_type(testenv_json_get(e, "with")) == json_type_string &&
		    strcmp(testenv_json_str(e, "with"), with) == 0) ||
		    (g != 0 &&
		    json_object_get_type(testenv_json_get(e, "group_id")) == json_type_int &&
		    (uint64_t)testenv_json_int(e, "group_id") == g)) {
			r = json_object_get(e);
			if (pos != NULL)
				*pos = (int)i;
		}
	}
	ck_assert_msg(r != NULL, "no conversation in %s", json);
	json_object_put(o);
	free(json);
	return r;
}

START_TEST(test_receipts)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	struct store *s = store_new(&cfg);
	struct store_send_res m1, m2, m3;
	struct store_targets t;
	struct json_object *o;
	char *json;
	int changed;

	send1(s, a, b, 0, "one", "r1", &m1);
	send1(s, a, b, 0, "two", "r2", &m2);
	send1(s, a, b, 0, "three", "r3", &m3);
	assert_receipts(s, a, m1.server_msg_id, 1, "", "");
	o = conversation(s, b, a, 0, NULL);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 3);
	json_object_put(o);

	/* delivered up to m2 covers m1; the sender hears of it. */
	ck_assert_int_eq(store_receipt(s, b, m2.server_msg_id, PROTO_DELIVERED, &changed, &t), 0);
	ck_assert_int_eq(changed, 1);
	ck_assert_uint_eq(t.n, 1);
	ck_assert_str_eq(t.v[0].user, a);
	ck_assert_uint_eq(t.v[0].seq, 4);
	store_targets_clear(&t);
	o = last_event(s, a);
	ck_assert_str_eq(testenv_json_str(o, "type"), "message_status");
	ck_assert_int_eq(testenv_json_int(o, "seq"), 4);
	ck_assert_int_eq(testenv_json_int(o, "message_id"), (int64_t)m2.server_msg_id);
	ck_assert_str_eq(testenv_json_str(o, "status"), "delivered");
	ck_assert_str_eq(testenv_json_str(o, "by"), b);
	ck_assert_int_gt(testenv_json_int(o, "ts"), 0);
	json_object_put(o);
	assert_receipts(s, a, m1.server_msg_id, 1, b, "");
	assert_receipts(s, b, m2.server_msg_id, 1, b, "");
	assert_receipts(s, a, m3.server_msg_id, 1, "", "");

	/* Never moves back: delivered m1 again changes nothing, no event. */
	ck_assert_int_eq(store_receipt(s, b, m1.server_msg_id, PROTO_DELIVERED, &changed, &t), 0);
	ck_assert_int_eq(changed, 0);
	ck_assert_uint_eq(t.n, 0);

	/* read m1: read moves (delivered stays at m2); unread counts what is after m1. */
	ck_assert_int_eq(store_receipt(s, b, m1.server_msg_id, PROTO_READ, &changed, &t), 0);
	ck_assert_int_eq(changed, 1);
	store_targets_clear(&t);
	o = last_event(s, a);
	ck_assert_str_eq(testenv_json_str(o, "status"), "read");
	json_object_put(o);
	assert_receipts(s, a, m1.server_msg_id, 1, b, b);
	assert_receipts(s, a, m2.server_msg_id, 1, b, "");
	o = conversation(s, b, a, 0, NULL);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 2);
	json_object_put(o);

	/* read m3 implies delivered m3. */
	ck_assert_int_eq(store_receipt(s, b, m3.server_msg_id, PROTO_READ, &changed, &t), 0);
	ck_assert_int_eq(changed, 1);
	store_targets_clear(&t);
	assert_receipts(s, a, m3.server_msg_id, 1, b, b);
	o = conversation(s, b, a, 0, NULL);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 0);
	json_object_put(o);
	ck_assert_int_eq(store_receipt(s, b, m2.server_msg_id, PROTO_DELIVERED, &changed, &t), 0);
	ck_assert_int_eq(changed, 0);
	ck_assert_int_eq(store_receipt(s, b, m3.server_msg_id, PROTO_READ, &changed, &t), 0);
	ck_assert_int_eq(changed, 0);

	/* Strangers. */
	ck_assert_int_eq(store_receipts_json(s, c, m1.server_msg_id, &json), -1);
	ck_assert_int_eq(errno, EACCES);
	ck_assert_int_eq(store_receipt(s, c, m1.server_msg_id, PROTO_READ, &changed, &t), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_int_eq(store_receipt(s, a, m1.server_msg_id, PROTO_READ, &changed, &t), -1);
	ck_assert_int_eq(errno, ENOENT);	/* the sender is no recipient */
	ck_assert_int_eq(store_receipts_json(s, a, 999999999999ULL, &json), -1);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_int_eq(store_receipt(s, b, 999999999999ULL, PROTO_READ, &changed, &t), -1);
	ck_assert_int_eq(errno, ENOENT);

	store_send_res_clear(&m1);
	store_send_res_clear(&m2);
	store_send_res_clear(&m3);
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

START_TEST(test_group_receipts_and_conversations)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	char *members[2] = { NULL, NULL };
	struct store *s = store_new(&cfg);
	struct store_send_res m1, m2, m3;
	struct store_targets t;
	struct json_object *o, *m;
	uint64_t g;
	int changed, pos1, pos2;

	members[0] = b;
	members[1] = c;
	ck_assert_int_eq(store_group_create(s, a, "g", members, 2, &g, &t), 0);
	store_targets_clear(&t);
	send1(s, a, NULL, g, "hello group", "gm1", &m1);
	send1(s, c, b, 0, "psst", "p1", &m2);
	assert_receipts(s, a, m1.server_msg_id, 2, "", "");
	ck_assert_int_eq(store_receipt(s, b, m1.server_msg_id, PROTO_DELIVERED, &changed, &t), 0);
	ck_assert_int_eq(changed, 1);
	store_targets_clear(&t);
	ck_assert_int_eq(store_receipt(s, c, m1.server_msg_id, PROTO_READ, &changed, &t), 0);
	ck_assert_int_eq(changed, 1);
	ck_assert_str_eq(t.v[0].user, a);
	store_targets_clear(&t);
	{
		char *x = b, *y = c, exp[200];

		if (strcmp(x, y) > 0) {
			x = c;
			y = b;
		}
		snprintf(exp, sizeof exp, "%s,%s", x, y);
		assert_receipts(s, b, m1.server_msg_id, 2, exp, c);
	}
	/* A sender reading its own group message is no recipient. */
	ck_assert_int_eq(store_receipt(s, a, m1.server_msg_id, PROTO_READ, &changed, &t), -1);
	ck_assert_int_eq(errno, ENOENT);

	/* bob: the 1:1 with carol is newer than the group; the group has 1 unread (delivered only). */
	o = conversation(s, b, c, 0, &pos1);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 1);
	ck_assert(json_object_get_type(testenv_json_get(o, "group_id")) == json_type_null);
	m = testenv_json_get(o, "last_message");
	ck_assert_int_eq(testenv_json_int(m, "id"), (int64_t)m2.server_msg_id);
	ck_assert_str_eq(testenv_json_str(m, "content"), "psst");
	ck_assert_str_eq(testenv_json_str(m, "from"), c);
	ck_assert_int_eq(testenv_json_int(o, "last_ts"), m2.ts);
	json_object_put(o);
	o = conversation(s, b, NULL, g, &pos2);
	ck_assert(json_object_get_type(testenv_json_get(o, "with")) == json_type_null);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 1);
	ck_assert_str_eq(testenv_json_str(o, "last_message.content"), "hello group");
	json_object_put(o);
	ck_assert_int_lt(pos1, pos2);
	/* The sender's own conversation rows have nothing unread. */
	o = conversation(s, a, NULL, g, NULL);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 0);
	json_object_put(o);
	/* A new group message moves the group to the top. */
	send1(s, c, NULL, g, "newest", "gm2", &m3);
	o = conversation(s, b, NULL, g, &pos2);
	ck_assert_int_eq(pos2, 0);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 2);
	json_object_put(o);
	o = conversation(s, c, NULL, g, NULL);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 0);	/* carol read m1 and sent m3 */
	json_object_put(o);

	store_send_res_clear(&m1);
	store_send_res_clear(&m2);
	store_send_res_clear(&m3);
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

START_TEST(test_note_to_self)
{
	char *a = testenv_name("alice");
	struct store *s = store_new(&cfg);
	struct store_send_res r;
	struct store_targets t;
	struct store_page all;
	struct json_object *o;
	int changed;

	send1(s, a, a, 0, "remember", "n1", &r);
	ck_assert_uint_eq(r.targets.n, 1);
	ck_assert_uint_eq(r.seq, 1);
	read_all(s, a, 0, &all);
	assert_gap_free(&all, 1);
	store_page_clear(&all);
	o = conversation(s, a, a, 0, NULL);
	ck_assert_int_eq(testenv_json_int(o, "unread"), 0);
	json_object_put(o);
	ck_assert_int_eq(store_receipt(s, a, r.server_msg_id, PROTO_READ, &changed, &t), 0);
	ck_assert_int_eq(changed, 1);
	ck_assert_uint_eq(t.n, 0);	/* nobody to tell */
	assert_receipts(s, a, r.server_msg_id, 1, a, a);
	store_send_res_clear(&r);
	store_free(s);
	free(a);
}
END_TEST

/* --- history ------------------------------------------------------------------------------- */

/* One history page; asserts success and that the ids (newest first) are want[0..n). */
static uint64_t
history_ids(struct store *s, const char *user, const char *peer, uint64_t g, uint64_t before,
    int limit, const uint64_t *want, size_t n)
{
	struct store_page p;
	struct json_object *o;
	uint64_t next;
	size_t i;

	ck_assert_msg(store_history(s, user, peer, g, before, limit, &p) == 0, "history: %s",
	    strerror(errno));
	ck_assert_uint_eq(p.n, n);
	for (i = 0; i < n; i++) {
		o = testenv_json(p.events[i]);
		ck_assert_uint_eq((uint64_t)testenv_json_int(o, "id"), want[i]);
		json_object_put(o);
	}
	next = p.next;
	store_page_clear(&p);
	return next;
}

/* A history page refused with errno err. */
static void
history_refused(struct store *s, const char *user, const char *peer, uint64_t g, int limit,
    int err)
{
	struct store_page p;

	errno = 0;
	ck_assert_int_eq(store_history(s, user, peer, g, 0, limit, &p), -1);
	ck_assert_int_eq(errno, err);
	ck_assert_uint_eq(p.n, 0);
}

/* 1:1 history: both directions, the caller's own messages, paging by before, exact objects. */
START_TEST(test_history_pair)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	struct store *s = store_new(&cfg);
	struct store_send_res r;
	struct store_page p, log;
	struct json_object *h, *e;
	uint64_t id[5], note, toc, next;
	char cmid[16];
	int i;

	for (i = 0; i < 5; i++) {
		snprintf(cmid, sizeof cmid, "h%d", i);
		send1(s, i < 3 ? a : b, i < 3 ? b : a, 0, "hi", cmid, &r);
		id[4 - i] = r.server_msg_id;	/* newest first */
		store_send_res_clear(&r);
	}
	send1(s, a, c, 0, "other", "hc", &r);
	toc = r.server_msg_id;
	store_send_res_clear(&r);
	send1(s, a, a, 0, "note", "hn", &r);
	note = r.server_msg_id;
	store_send_res_clear(&r);

	/* alice's pages of 2 with bob: 5 4 | 3 2 | 1 (ids newest first), then nothing older. */
	next = history_ids(s, a, b, 0, 0, 2, id, 2);
	ck_assert_uint_eq(next, id[1]);
	next = history_ids(s, a, b, 0, next, 2, id + 2, 2);
	ck_assert_uint_eq(next, id[3]);
	next = history_ids(s, a, b, 0, next, 2, id + 4, 1);
	ck_assert_uint_eq(next, 0);
	/* Exactly a full last page: nothing older, so null too. */
	ck_assert_uint_eq(history_ids(s, a, b, 0, id[1], 3, id + 2, 3), 0);
	/* bob sees the same conversation; other conversations stay apart. */
	ck_assert_uint_eq(history_ids(s, b, a, 0, 0, 50, id, 5), 0);
	ck_assert_uint_eq(history_ids(s, a, c, 0, 0, 50, &toc, 1), 0);
	ck_assert_uint_eq(history_ids(s, a, a, 0, 0, 50, &note, 1), 0);
	ck_assert_uint_eq(history_ids(s, c, b, 0, 0, 50, NULL, 0), 0);
	ck_assert_uint_eq(history_ids(s, a, b, 0, 1, 50, NULL, 0), 0);

	/* A history message is the new_message event's message object, byte for byte. */
	ck_assert_int_eq(store_history(s, b, a, 0, 0, 1, &p), 0);
	ck_assert_int_eq(store_events(s, b, 0, 100, &log), 0);
	ck_assert_uint_eq(log.n, 5);
	h = testenv_json(p.events[0]);
	e = testenv_json(log.events[4]);
	ck_assert_str_eq(json_object_to_json_string(h),
	    json_object_to_json_string(testenv_json_get(e, "message")));
	ck_assert_str_eq(testenv_json_str(h, "from"), b);
	ck_assert_str_eq(testenv_json_str(h, "to"), a);
	json_object_put(h);
	json_object_put(e);
	store_page_clear(&p);
	store_page_clear(&log);

	history_refused(s, a, "not valid", 0, 10, EINVAL);
	history_refused(s, a, b, 7, 10, EINVAL);
	history_refused(s, a, NULL, 0, 10, EINVAL);
	history_refused(s, a, b, 0, 0, EINVAL);
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

/*
 * Group history: a member sees what was sent while it was one (a late joiner nothing before,
 * a removed member what reached it before), a stranger 403, no such group 404.
 */
START_TEST(test_history_group)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	char *d = testenv_name("dave"), *members[] = { b };
	struct store *s = store_new(&cfg);
	struct store_send_res r;
	struct store_targets t = { 0 };
	uint64_t g, m[3];

	ck_assert_int_eq(store_group_create(s, a, "h", members, 1, &g, &t), 0);
	store_targets_clear(&t);
	send1(s, a, NULL, g, "g1", "g1", &r);
	m[2] = r.server_msg_id;
	store_send_res_clear(&r);
	ck_assert_int_eq(store_group_add(s, a, g, c, &t), 0);
	store_targets_clear(&t);
	send1(s, b, NULL, g, "g2", "g2", &r);
	m[1] = r.server_msg_id;
	store_send_res_clear(&r);
	ck_assert_int_eq(store_group_remove(s, a, g, b, &t), 0);
	store_targets_clear(&t);
	send1(s, c, NULL, g, "g3", "g3", &r);
	m[0] = r.server_msg_id;
	store_send_res_clear(&r);

	ck_assert_uint_eq(history_ids(s, a, NULL, g, 0, 50, m, 3), 0);
	ck_assert_uint_eq(history_ids(s, c, NULL, g, 0, 50, m, 2), 0);
	ck_assert_uint_eq(history_ids(s, b, NULL, g, 0, 50, m + 1, 2), 0);
	ck_assert_uint_eq(history_ids(s, b, NULL, g, 0, 1, m + 1, 1), m[1]);
	/* 1:1 history with a member is not the group's. */
	ck_assert_uint_eq(history_ids(s, a, c, 0, 0, 50, NULL, 0), 0);
	history_refused(s, d, NULL, g, 50, EACCES);
	history_refused(s, d, NULL, g + 1000000, 50, ENOENT);
	history_refused(s, a, NULL, g + 1000000, 50, ENOENT);
	store_free(s);
	free(a);
	free(b);
	free(c);
	free(d);
}
END_TEST

/* sql with each '?' replaced by the next of args (literal SQL). Caller frees. */
static char *
sql_fill(const char *sql, const char *const *args)
{
	char *out = xmalloc(strlen(sql) + 1024), *o = out;

	for (; *sql != '\0'; sql++) {
		if (*sql == '?') {
			o += sprintf(o, "%s", *args++);
			continue;
		}
		*o++ = *sql;
	}
	*o = '\0';
	return out;
}

/*
 * The plan of a history page whatever the history's length: a range on ev_history read
 * backwards (no filesort), then messages by primary key. docs/protocol.md shows this EXPLAIN.
 */
START_TEST(test_history_explain)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *sql, *user, *peer;
	struct store *s = store_new(&cfg);
	struct store_send_res r;
	const char *args[5];
	char cmid[16];
	MYSQL_RES *res;
	MYSQL_ROW row;
	MYSQL *my;
	int i, nrows = 0;

	for (i = 0; i < 40; i++) {
		snprintf(cmid, sizeof cmid, "x%d", i);
		send1(s, i % 2 ? a : b, i % 2 ? b : a, 0, "x", cmid, &r);
		store_send_res_clear(&r);
	}
	xasprintf(&user, "'%s'", a);
	xasprintf(&peer, "'%s'", b);
	args[0] = user;
	args[1] = "0";
	args[2] = peer;
	args[3] = "18446744073709551615";
	args[4] = "51";
	sql = sql_fill(store_history_sql(), args);
	my = mysql_init(NULL);
	ck_assert_ptr_nonnull(mysql_real_connect(my, NULL, cfg.mysql_user, cfg.mysql_password,
	    cfg.mysql_database, 0, cfg.mysql_socket, 0));
	ck_assert_int_eq(mysql_query(my, "ANALYZE TABLE events, messages"), 0);
	mysql_free_result(mysql_store_result(my));
	free(user);
	xasprintf(&user, "EXPLAIN %s", sql);
	ck_assert_msg(mysql_query(my, user) == 0, "%s", mysql_error(my));
	res = mysql_store_result(my);
	ck_assert_ptr_nonnull(res);
	/* id select_type table type possible_keys key key_len ref rows Extra */
	while ((row = mysql_fetch_row(res)) != NULL) {
		fprintf(stderr, "explain: %s %s %s %s %s %s\n", row[2], row[3], row[5], row[6],
		    row[8], row[9] != NULL ? row[9] : "");
		ck_assert_ptr_null(row[9] != NULL ? strstr(row[9], "filesort") : NULL);
		if (nrows++ == 0) {
			ck_assert_str_eq(row[2], "e");
			ck_assert_str_eq(row[3], "range");
			ck_assert_str_eq(row[5], "ev_history");
		} else {
			ck_assert_str_eq(row[2], "m");
			ck_assert_str_eq(row[3], "eq_ref");
			ck_assert_str_eq(row[5], "PRIMARY");
		}
	}
	ck_assert_int_eq(nrows, 2);
	mysql_free_result(res);
	mysql_close(my);
	free(sql);
	free(user);
	free(peer);
	store_free(s);
	free(a);
	free(b);
}
END_TEST

/* --- retention ------------------------------------------------------------------------------ */

/* A page of user's log after after: its first seq (0 if none), n, next and oldest_seq. */
static void
page_check(struct store *s, const char *user, uint64_t after, int limit, uint64_t first,
    size_t n, uint64_t next, uint64_t oldest)
{
	struct store_page p;

	ck_assert_int_eq(store_events(s, user, after, limit, &p), 0);
	ck_assert_uint_eq(p.n, n);
	if (n > 0)
		ck_assert_int_eq(seq_of(p.events[0]), (int64_t)first);
	ck_assert_uint_eq(p.next, next);
	ck_assert_uint_eq(p.oldest_seq, oldest);
	store_page_clear(&p);
}

/* A moment between what was sent before and what is sent after (ts are ms, clocks the host's). */
static int64_t
moment(void)
{
	int64_t t;

	usleep(30 * 1000);
	t = parley_now_ms();
	usleep(30 * 1000);
	return t;
}

/*
 * Prune events, then messages: a reader behind the oldest kept event is told (oldest_seq) and
 * its next skips the hole; history keeps messages until they are pruned themselves.
 */
START_TEST(test_prune)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	struct store *s = store_new(&cfg);
	struct store_prune_res pr;
	struct store_send_res r;
	struct store_targets t = { 0 };
	uint64_t ids[8];
	int64_t cut;
	char cmid[16];
	int i, changed;

	for (i = 0; i < 5; i++) {
		snprintf(cmid, sizeof cmid, "o%d", i);
		send1(s, a, b, 0, "old", cmid, &r);
		ids[7 - i] = r.server_msg_id;
		store_send_res_clear(&r);
	}
	ck_assert_int_eq(store_receipt(s, b, ids[3], PROTO_READ, &changed, &t), 0);
	store_targets_clear(&t);	/* a's seq 6: message_status */
	send1(s, c, c, 0, "note", "cn", &r);
	store_send_res_clear(&r);
	cut = moment();
	for (i = 0; i < 3; i++) {
		snprintf(cmid, sizeof cmid, "n%d", i);
		send1(s, a, b, 0, "new", cmid, &r);
		ids[2 - i] = r.server_msg_id;
		store_send_res_clear(&r);
	}
	page_check(s, a, 0, 100, 1, 9, 9, 0);

	/* Events before cut: a's 1..6 go (first_seq 7), b's 1..5, c's whole log (1). */
	ck_assert_int_eq(store_prune(s, cut, 0, 2, 0, &pr), 0);
	ck_assert_uint_ge(pr.events, 1);	/* a's message_status; new_message rows stay */
	ck_assert_uint_ge(pr.logs, 3);
	ck_assert_uint_eq(pr.messages, 0);
	page_check(s, a, 0, 100, 7, 3, 9, 7);
	page_check(s, a, 5, 100, 7, 3, 9, 7);
	page_check(s, a, 6, 100, 7, 3, 9, 0);
	page_check(s, a, 9, 100, 0, 0, 9, 0);
	page_check(s, a, 0, 2, 7, 2, 8, 7);
	page_check(s, a, 8, 2, 9, 1, 9, 0);
	page_check(s, b, 3, 100, 6, 3, 8, 6);
	/* A log pruned whole: nothing to return, yet behind; next skips to the end. */
	page_check(s, c, 0, 100, 0, 0, 1, 2);
	page_check(s, c, 1, 100, 0, 0, 1, 0);
	/* History still has every message: they are kept. */
	ck_assert_uint_eq(history_ids(s, a, b, 0, 0, 50, ids, 8), 0);
	ck_assert_uint_eq(history_ids(s, b, a, 0, 0, 50, ids, 8), 0);
	/* Again: nothing more to do for these logs, and the same answers. */
	ck_assert_int_eq(store_prune(s, cut, 0, 1000, 0, &pr), 0);
	page_check(s, a, 0, 100, 7, 3, 9, 7);

	/* Messages before cut: gone from history too, their rows with them. */
	ck_assert_int_eq(store_prune(s, 0, cut, 2, 0, &pr), 0);
	ck_assert_uint_ge(pr.messages, 6);
	ck_assert_uint_ge(pr.events, 11);	/* a's 5 + b's 5 history rows, c's 1 */
	ck_assert_uint_eq(history_ids(s, a, b, 0, 0, 50, ids, 3), 0);
	ck_assert_uint_eq(history_ids(s, b, a, 0, 0, 50, ids, 3), 0);
	ck_assert_uint_eq(history_ids(s, c, c, 0, 0, 50, NULL, 0), 0);
	page_check(s, a, 0, 100, 7, 3, 9, 7);
	page_check(s, b, 0, 100, 6, 3, 8, 6);
	errno = 0;
	ck_assert_int_eq(store_prune(s, 0, 0, 0, 0, &pr), -1);
	ck_assert_int_eq(errno, EINVAL);
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

/* --- conversation summaries, derived on read (issue 11) ------------------------------------- */

/* A second, plain connection to the stack's MariaDB (not through the store). */
static MYSQL *
raw_connect(void)
{
	MYSQL *my = mysql_init(NULL);

	ck_assert_ptr_nonnull(my);
	ck_assert_msg(mysql_real_connect(my, NULL, cfg.mysql_user, cfg.mysql_password,
	    cfg.mysql_database, 0, cfg.mysql_socket, 0) != NULL, "connect: %s", mysql_error(my));
	return my;
}

static void
raw_sql(MYSQL *my, const char *sql)
{
	ck_assert_msg(mysql_query(my, sql) == 0, "%s: %s", sql, mysql_error(my));
}

/* The first column of the first row of a query, as a number. */
static long long
raw_number(MYSQL *my, const char *sql)
{
	MYSQL_RES *res;
	MYSQL_ROW row;
	long long v;

	ck_assert_msg(mysql_query(my, sql) == 0, "%s: %s", sql, mysql_error(my));
	res = mysql_store_result(my);
	ck_assert_ptr_nonnull(res);
	row = mysql_fetch_row(res);
	ck_assert_msg(row != NULL, "no row: %s", sql);
	v = row[0] != NULL ? atoll(row[0]) : -1;
	mysql_free_result(res);
	return v;
}

/* user's conversations as "with:unread" or "#group:unread", newest first, comma separated. */
static char *
conv_list(struct store *s, const char *user, int limit)
{
	struct json_object *o, *l, *e;
	char *json, *out = xcalloc(1, 4096);
	size_t i;

	ck_assert_int_eq(store_conversations_json(s, user, limit, &json), 0);
	o = testenv_json(json);
	l = testenv_json_get(o, "conversations");
	for (i = 0; i < json_object_array_length(l); i++) {
		e = json_object_array_get_idx(l, i);
		if (json_object_get_type(testenv_json_get(e, "with")) == json_type_string)
			snprintf(out + strlen(out), 4096 - strlen(out), "%s%s:%lld", i ? "," : "",
			    testenv_json_str(e, "with"), (long long)testenv_json_int(e, "unread"));
		else
			snprintf(out + strlen(out), 4096 - strlen(out), "%s#%lld:%lld", i ? "," : "",
			    (long long)testenv_json_int(e, "group_id"),
			    (long long)testenv_json_int(e, "unread"));
		/* last_ts is the last message's ts. */
		ck_assert_int_eq(testenv_json_int(e, "last_ts"),
		    testenv_json_int(e, "last_message.ts"));
	}
	json_object_put(o);
	free(json);
	return out;
}

#define ASSERT_CONVS(s, user, limit, ...) do {						\
	char *got_ = conv_list(s, user, limit), want_[1024];				\
	snprintf(want_, sizeof want_, __VA_ARGS__);					\
	ck_assert_str_eq(got_, want_);							\
	free(got_);									\
} while (0)

/*
 * Summaries from reads: a send writes no conversations row; unread counts for 1:1 and groups
 * (only what a member received: nothing from before it was added or after it was removed), read
 * receipts lower them and delivered ones do not, newest first, limit; the first receipt of a
 * conversation makes its marker row.
 */
START_TEST(test_conversations_on_read)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *d = testenv_name("dave");
	char *members[1], sql[512], cmid[16];
	struct store *s = store_new(&cfg);
	struct store_send_res r, m[4];
	struct store_targets t;
	uint64_t g;
	MYSQL *my = raw_connect();
	int i, changed;

	for (i = 0; i < 3; i++) {
		snprintf(cmid, sizeof cmid, "ab%d", i);
		send1(s, a, b, 0, "hi", cmid, &m[i]);
	}
	send1(s, b, a, 0, "yo", "ba0", &m[3]);
	snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM conversations WHERE user_id IN ('%s', '%s')",
	    a, b);
	ck_assert_int_eq(raw_number(my, sql), 0);	/* nothing written per message */
	ASSERT_CONVS(s, a, 50, "%s:1", b);
	ASSERT_CONVS(s, b, 50, "%s:3", a);

	/* Delivered does not lower unread; read does. The first receipt makes the marker row. */
	ck_assert_int_eq(store_receipt(s, b, m[2].server_msg_id, PROTO_DELIVERED, &changed, &t), 0);
	ck_assert_int_eq(changed, 1);
	store_targets_clear(&t);
	ASSERT_CONVS(s, b, 50, "%s:3", a);
	snprintf(sql, sizeof sql, "SELECT delivered_upto FROM conversations WHERE user_id = '%s'"
	    " AND group_id = 0 AND peer = '%s'", b, a);
	ck_assert_int_eq(raw_number(my, sql), (long long)m[2].server_msg_id);
	ck_assert_int_eq(store_receipt(s, b, m[0].server_msg_id, PROTO_READ, &changed, &t), 0);
	store_targets_clear(&t);
	ASSERT_CONVS(s, b, 50, "%s:2", a);
	assert_receipts(s, a, m[1].server_msg_id, 1, b, "");

	/* A group: dave is added after two messages, bob removed after three. */
	members[0] = b;
	ck_assert_int_eq(store_group_create(s, a, "conv", members, 1, &g, &t), 0);
	store_targets_clear(&t);
	send1(s, a, NULL, g, "g0", "g0", &r);
	store_send_res_clear(&r);
	send1(s, b, NULL, g, "g1", "g1", &r);
	store_send_res_clear(&r);
	ck_assert_int_eq(store_group_add(s, a, g, d, &t), 0);
	store_targets_clear(&t);
	send1(s, a, NULL, g, "g2", "g2", &r);
	store_send_res_clear(&r);
	ASSERT_CONVS(s, a, 50, "#%llu:1,%s:1", (unsigned long long)g, b);
	ASSERT_CONVS(s, b, 50, "#%llu:2,%s:2", (unsigned long long)g, a);
	ASSERT_CONVS(s, d, 50, "#%llu:1", (unsigned long long)g);
	ck_assert_int_eq(store_group_remove(s, a, g, b, &t), 0);
	store_targets_clear(&t);
	send1(s, d, NULL, g, "g3", "g3", &r);
	ASSERT_CONVS(s, b, 50, "#%llu:2,%s:2", (unsigned long long)g, a);
	ASSERT_CONVS(s, d, 50, "#%llu:1", (unsigned long long)g);
	ASSERT_CONVS(s, a, 50, "#%llu:2,%s:1", (unsigned long long)g, b);
	/* dave reads the newest: nothing unread; the limit keeps the newest. */
	ck_assert_int_eq(store_receipt(s, a, r.server_msg_id, PROTO_READ, &changed, &t), 0);
	store_targets_clear(&t);
	store_send_res_clear(&r);
	ASSERT_CONVS(s, a, 50, "#%llu:0,%s:1", (unsigned long long)g, b);
	ASSERT_CONVS(s, a, 1, "#%llu:0", (unsigned long long)g);
	/* A 1:1 message puts its conversation first again; a note to oneself is never unread. */
	send1(s, b, a, 0, "back", "ba1", &r);
	store_send_res_clear(&r);
	send1(s, a, a, 0, "note", "aa0", &r);
	store_send_res_clear(&r);
	ASSERT_CONVS(s, a, 50, "%s:0,%s:2,#%llu:0", a, b, (unsigned long long)g);
	ASSERT_CONVS(s, a, 2, "%s:0,%s:2", a, b);

	for (i = 0; i < 4; i++)
		store_send_res_clear(&m[i]);
	mysql_close(my);
	store_free(s);
	free(a);
	free(b);
	free(d);
}
END_TEST

/* A conversation whose messages were all pruned leaves the list; the others stay. */
START_TEST(test_conversations_pruned)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	struct store *s = store_new(&cfg);
	struct store_prune_res pr;
	struct store_send_res r;
	int64_t cut;

	send1(s, b, a, 0, "old", "old", &r);
	store_send_res_clear(&r);
	cut = moment();
	send1(s, c, a, 0, "new", "new", &r);
	store_send_res_clear(&r);
	ASSERT_CONVS(s, a, 50, "%s:1,%s:1", c, b);
	ck_assert_int_eq(store_prune(s, 0, cut, 1000, 0, &pr), 0);
	ASSERT_CONVS(s, a, 50, "%s:1", c);
	ASSERT_CONVS(s, b, 50, "%s", "");
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

struct first_receipt {
	const char	*user;
	uint64_t	 mid;
	int		 rc;
	int		 err;
	pthread_barrier_t *go;
};

static void *
first_receipt_worker(void *arg)
{
	struct first_receipt *w = arg;
	struct store *s = store_new(&cfg);
	struct store_targets t;
	int changed;

	pthread_barrier_wait(w->go);
	w->rc = store_receipt(s, w->user, w->mid, PROTO_READ, &changed, &t);
	w->err = errno;
	store_targets_clear(&t);
	store_free(s);
	return NULL;
}

/*
 * Two first receipts in one conversation at once (group messages of two senders, so the
 * senders' seq rows do not serialise them): both make the marker row, neither fails, and the
 * marker ends at the higher message.
 */
START_TEST(test_receipts_first_concurrent)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	char *members[2] = { b, c }, sql[512], cmid[16];
	struct store *s = store_new(&cfg);
	struct store_send_res r1, r2;
	struct first_receipt w[2];
	struct store_targets t;
	pthread_barrier_t go;
	pthread_t th[2];
	MYSQL *my = raw_connect();
	uint64_t g;
	int round, i;

	for (round = 0; round < 10; round++) {
		ck_assert_int_eq(store_group_create(s, a, "race", members, 2, &g, &t), 0);
		store_targets_clear(&t);
		snprintf(cmid, sizeof cmid, "r%d", round);
		send1(s, a, NULL, g, "one", cmid, &r1);
		send1(s, b, NULL, g, "two", cmid, &r2);
		pthread_barrier_init(&go, NULL, 2);
		w[0] = (struct first_receipt){ c, r1.server_msg_id, 0, 0, &go };
		w[1] = (struct first_receipt){ c, r2.server_msg_id, 0, 0, &go };
		for (i = 0; i < 2; i++)
			ck_assert_int_eq(pthread_create(&th[i], NULL, first_receipt_worker, &w[i]), 0);
		for (i = 0; i < 2; i++)
			pthread_join(th[i], NULL);
		pthread_barrier_destroy(&go);
		for (i = 0; i < 2; i++)
			ck_assert_msg(w[i].rc == 0, "round %d receipt %d: %s", round, i,
			    strerror(w[i].err));
		snprintf(sql, sizeof sql, "SELECT read_upto FROM conversations WHERE user_id = '%s'"
		    " AND group_id = %llu AND peer = ''", c, (unsigned long long)g);
		ck_assert_int_eq(raw_number(my, sql), (long long)r2.server_msg_id);
		ASSERT_CONVS(s, c, 1, "#%llu:0", (unsigned long long)g);
		store_send_res_clear(&r1);
		store_send_res_clear(&r2);
	}
	mysql_close(my);
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

/* EXPLAIN sql (its '?' filled with args) and the rows as "table type key extra;..." */
static char *
explain(MYSQL *my, const char *sql, const char *const *args)
{
	char *filled = sql_fill(sql, args), *q, *out = xcalloc(1, 4096);
	MYSQL_RES *res;
	MYSQL_ROW row;

	xasprintf(&q, "EXPLAIN %s", filled);
	ck_assert_msg(mysql_query(my, q) == 0, "%s", mysql_error(my));
	res = mysql_store_result(my);
	ck_assert_ptr_nonnull(res);
	/* id select_type table type possible_keys key key_len ref rows Extra */
	while ((row = mysql_fetch_row(res)) != NULL)
		snprintf(out + strlen(out), 4096 - strlen(out), "%s %s %s %s;", row[2],
		    row[3], row[5] != NULL ? row[5] : "-", row[9] != NULL ? row[9] : "");
	fprintf(stderr, "explain: %s\n", out);
	mysql_free_result(res);
	free(q);
	free(filled);
	return out;
}

/*
 * The plan of the conversation list: one loose index scan of ev_history (one seek per
 * conversation, whatever the number of messages), the last messages and markers by primary key;
 * the unread counts are index ranges after the read marker (msg_pair index-only; the user's
 * ev_history range, then messages by primary key).
 */
START_TEST(test_conversations_explain)
{
	char *a = testenv_name("alice"), *p[4], *user, *peer, *e, *q, *sql, *at, tbl[64], cmid[16];
	struct store *s = store_new(&cfg);
	struct store_send_res r;
	const char *args[4];
	MYSQL *my = raw_connect();
	int i, k;

	for (k = 0; k < 4; k++)
		p[k] = testenv_name("peer");
	snprintf(tbl, sizeof tbl, "ev_explain_%d", (int)getpid());
	for (i = 0; i < 30; i++) {
		for (k = 0; k < 4; k++) {
			snprintf(cmid, sizeof cmid, "x%d", i);
			send1(s, p[k], a, 0, "x", cmid, &r);
			store_send_res_clear(&r);
		}
	}
	ck_assert_int_eq(mysql_query(my, "ANALYZE TABLE events, messages, conversations"), 0);
	mysql_free_result(mysql_store_result(my));
	xasprintf(&user, "'%s'", a);
	xasprintf(&peer, "'%s'", p[0]);
	args[0] = user;
	args[1] = "100";
	args[2] = user;
	/* On the shared table: an index-only range of the user's ev_history entries at worst. */
	e = explain(my, store_conversations_sql(), args);
	ck_assert_msg(strstr(e, "events range ev_history Using where; Using index") != NULL, "%s", e);
	ck_assert_msg(strstr(e, "m eq_ref PRIMARY") != NULL, "%s", e);
	ck_assert_msg(strstr(e, "c eq_ref PRIMARY") != NULL, "%s", e);
	free(e);
	/*
	 * Whether MariaDB takes the loose index scan depends on the table's statistics (messages per
	 * conversation, averaged over every user): with this user's rows alone (30 per
	 * conversation, as a user with real conversations), it must ("Using index for group-by":
	 * one seek per conversation). Without user_id in the GROUP BY it never would.
	 */
	xasprintf(&q, "CREATE TABLE %s LIKE events", tbl);
	raw_sql(my, q);
	free(q);
	xasprintf(&q, "INSERT INTO %s SELECT * FROM events WHERE user_id = '%s'", tbl, a);
	raw_sql(my, q);
	free(q);
	xasprintf(&q, "ANALYZE TABLE %s", tbl);
	ck_assert_int_eq(mysql_query(my, q), 0);
	mysql_free_result(mysql_store_result(my));
	free(q);
	sql = xstrdup(store_conversations_sql());
	ck_assert_ptr_nonnull(at = strstr(sql, "FROM events FORCE INDEX"));
	xasprintf(&q, "%.*sFROM %s%s", (int)(at - sql), sql, tbl, at + strlen("FROM events"));
	e = explain(my, q, args);
	ck_assert_msg(strstr(e, "range ev_history Using where; Using index for group-by") != NULL,
	    "%s", e);
	free(e);
	free(q);
	free(sql);
	xasprintf(&q, "DROP TABLE %s", tbl);
	raw_sql(my, q);
	free(q);
	args[0] = user;
	args[1] = peer;
	args[2] = "1";
	e = explain(my, store_unread_pair_sql(), args);
	ck_assert_msg(strstr(e, "messages range msg_pair Using where; Using index;") != NULL, "%s",
	    e);
	free(e);
	args[0] = user;
	args[1] = "1";
	args[2] = "1";
	args[3] = user;
	e = explain(my, store_unread_group_sql(), args);
	ck_assert_msg(strstr(e, "e range ev_history Using where; Using index;u eq_ref PRIMARY") !=
	    NULL, "%s", e);
	free(e);
	mysql_close(my);
	free(user);
	free(peer);
	for (k = 0; k < 4; k++)
		free(p[k]);
	store_free(s);
	free(a);
}
END_TEST

/*
 * Not a test of speed (that is bench/): prints how long rebuilding a summary from MySQL takes
 * for a user with 100 conversations and for one with a group of 1,000 unread messages, so the
 * figures in docs/benchmarks.md can be reproduced. Asserts only the answers.
 */
START_TEST(test_conversations_rebuild_cost)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	char *members[1] = { b }, *json;
	struct json_object *o;
	struct store_send_req *reqs;
	struct store_send_res *res;
	struct store *s = store_new(&cfg);
	struct store_targets t;
	char (*ids)[16], (*peers)[PARLEY_ID_MAX + 1];
	int *err, i, k;
	int64_t t0, t1;
	uint64_t g;

	reqs = xcalloc(500, sizeof *reqs);
	res = xcalloc(500, sizeof *res);
	err = xcalloc(500, sizeof *err);
	ids = xcalloc(500, sizeof *ids);
	peers = xcalloc(100, sizeof *peers);
	for (k = 0; k < 100; k++) {
		char *n = testenv_name("p");

		snprintf(peers[k], sizeof peers[k], "%s", n);
		free(n);
	}
	/* 100 conversations of 5 messages each, to a. */
	for (i = 0; i < 500; i++) {
		snprintf(ids[i], sizeof ids[i], "c%d", i);
		reqs[i] = (struct store_send_req){ peers[i % 100], a, 0, "x", ids[i] };
	}
	ck_assert_int_eq(store_send_batch(s, reqs, 500, res, err), 0);
	for (i = 0; i < 500; i++) {
		ck_assert_int_eq(err[i], 0);
		store_send_res_clear(&res[i]);
	}
	/* 1,000 unread group messages for c. */
	ck_assert_int_eq(store_group_create(s, b, "unread", members, 1, &g, &t), 0);
	store_targets_clear(&t);
	ck_assert_int_eq(store_group_add(s, b, g, c, &t), 0);
	store_targets_clear(&t);
	for (k = 0; k < 2; k++) {
		for (i = 0; i < 500; i++) {
			snprintf(ids[i], sizeof ids[i], "g%d", k * 500 + i);
			reqs[i] = (struct store_send_req){ b, NULL, g, "x", ids[i] };
		}
		ck_assert_int_eq(store_send_batch(s, reqs, 500, res, err), 0);
		for (i = 0; i < 500; i++) {
			ck_assert_int_eq(err[i], 0);
			store_send_res_clear(&res[i]);
		}
	}
	t0 = parley_now_ms();
	for (i = 0; i < 20; i++) {
		ck_assert_int_eq(store_conversations_json(s, a, 100, &json), 0);
		free(json);
	}
	t1 = parley_now_ms();
	fprintf(stderr, "summary of 100 conversations: %.2f ms per rebuild\n", (t1 - t0) / 20.0);
	ck_assert_int_eq(store_conversations_json(s, a, 100, &json), 0);
	o = testenv_json(json);
	ck_assert_uint_eq(json_object_array_length(testenv_json_get(o, "conversations")), 100);
	json_object_put(o);
	free(json);
	t0 = parley_now_ms();
	for (i = 0; i < 20; i++) {
		ck_assert_int_eq(store_conversations_json(s, c, 100, &json), 0);
		free(json);
	}
	t1 = parley_now_ms();
	fprintf(stderr, "summary of a group with 1,000 unread: %.2f ms per rebuild\n",
	    (t1 - t0) / 20.0);
	ASSERT_CONVS(s, c, 100, "#%llu:1000", (unsigned long long)g);
	free(reqs);
	free(res);
	free(err);
	free(ids);
	free(peers);
	store_free(s);
	free(a);
	free(b);
	free(c);
}
END_TEST

struct prune_sender {
	const char	*from;
	const char	*to;
	int		 n;
	int		 id;
	int		 failures;
};

static void *
prune_sender_run(void *arg)
{
	struct prune_sender *w = arg;
	struct store *s = store_new(&cfg);
	struct store_send_req q = { w->from, w->to, 0, "live", NULL };
	struct store_send_res r;
	char cmid[32];
	int i;

	q.client_msg_id = cmid;
	for (i = 0; i < w->n; i++) {
		snprintf(cmid, sizeof cmid, "w%d-%d", w->id, i);
		if (store_send(s, &q, &r) != 0)
			w->failures++;
		store_send_res_clear(&r);
	}
	store_free(s);
	return NULL;
}

/* Prune while two senders append to the same logs: nothing newer than the cut-off is lost. */
START_TEST(test_prune_while_sending)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob");
	struct store *s = store_new(&cfg);
	struct prune_sender w[2] = { { NULL, NULL, 100, 0, 0 }, { NULL, NULL, 100, 1, 0 } };
	struct store_prune_res pr;
	struct store_send_res r;
	struct store_page all;
	pthread_t th[2];
	int64_t cut;
	char cmid[16];
	int i, runs = 0;

	for (i = 0; i < 20; i++) {
		snprintf(cmid, sizeof cmid, "o%d", i);
		send1(s, a, b, 0, "old", cmid, &r);
		store_send_res_clear(&r);
	}
	cut = moment();
	w[0].from = w[1].to = a;
	w[0].to = w[1].from = b;
	for (i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, prune_sender_run, &w[i]), 0);
	/* Batches of 3 rows: many short transactions in between the sends. */
	do {
		ck_assert_int_eq(store_prune(s, cut, cut, 3, 0, &pr), 0);
		runs++;
	} while (runs < 50 && (w[0].failures + w[1].failures) == 0 &&
	    pthread_tryjoin_np(th[0], NULL) != 0);
	if (runs == 50)
		pthread_join(th[0], NULL);
	pthread_join(th[1], NULL);
	ck_assert_int_eq(w[0].failures + w[1].failures, 0);
	ck_assert_int_eq(store_prune(s, cut, cut, 3, 0, &pr), 0);
	/* Both logs: 20 old events pruned, the 200 new ones all there, gap-free, from 21. */
	read_all(s, a, 20, &all);
	ck_assert_uint_eq(all.n, 200);
	for (i = 0; i < 200; i++)
		ck_assert_int_eq(seq_of(all.events[i]), 21 + i);
	store_page_clear(&all);
	page_check(s, a, 0, 1, 21, 1, 21, 21);
	page_check(s, b, 0, 1, 21, 1, 21, 21);
	read_all(s, b, 20, &all);
	ck_assert_uint_eq(all.n, 200);
	store_page_clear(&all);
	store_free(s);
	free(a);
	free(b);
}
END_TEST

/* --- presence and rooms -------------------------------------------------------------------- */

START_TEST(test_presence)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob");
	char *n1 = testenv_name("node"), *n2 = testenv_name("node"), *json, *users[2];
	struct store *s = store_new(&cfg);
	struct json_object *o, *e;
	int ch;

	ck_assert_int_eq(store_presence_update(s, a, n1, 7, 1, 1000, &ch), 0);
	ck_assert_int_eq(ch, 1);
	ck_assert_int_eq(store_presence_update(s, a, n2, 7, 1, 1001, &ch), 0);
	ck_assert_int_eq(ch, 0);
	/* The same connection counted again (a re-run) is still one. */
	ck_assert_int_eq(store_presence_update(s, a, n1, 7, 1, 1002, &ch), 0);
	ck_assert_int_eq(ch, 0);
	ck_assert_int_eq(store_presence_update(s, a, n1, 7, -1, 1002, &ch), 0);
	ck_assert_int_eq(ch, 0);
	users[0] = a;
	users[1] = b;
	ck_assert_int_eq(store_presence_json(s, users, 2, &json), 0);
	o = testenv_json(json);
	e = json_object_array_get_idx(testenv_json_get(o, "presence"), 0);
	ck_assert_str_eq(testenv_json_str(e, "user"), a);
	ck_assert(json_object_get_boolean(testenv_json_get(e, "online")));
	e = json_object_array_get_idx(testenv_json_get(o, "presence"), 1);
	ck_assert_str_eq(testenv_json_str(e, "user"), b);
	ck_assert(!json_object_get_boolean(testenv_json_get(e, "online")));
	ck_assert(json_object_get_type(testenv_json_get(e, "last_seen")) == json_type_null);
	json_object_put(o);
	free(json);
	ck_assert_int_eq(store_presence_update(s, a, n2, 7, -1, 5000, &ch), 0);
	ck_assert_int_eq(ch, 1);
	/* An extra -1, or one of a connection never counted, changes nothing. */
	ck_assert_int_eq(store_presence_update(s, a, n2, 7, -1, 5001, &ch), 0);
	ck_assert_int_eq(ch, 0);
	ck_assert_int_eq(store_presence_update(s, a, n2, 8, -1, 5002, &ch), 0);
	ck_assert_int_eq(ch, 0);
	ck_assert_int_eq(store_presence_json(s, users, 1, &json), 0);
	o = testenv_json(json);
	e = json_object_array_get_idx(testenv_json_get(o, "presence"), 0);
	ck_assert(!json_object_get_boolean(testenv_json_get(e, "online")));
	ck_assert_int_eq(testenv_json_int(e, "last_seen"), 5000);
	json_object_put(o);
	free(json);

	/* A restarted node drops its connections. */
	ck_assert_int_eq(store_presence_update(s, b, n1, 1, 1, 6000, &ch), 0);
	ck_assert_int_eq(ch, 1);
	ck_assert_int_eq(store_presence_reset(s, n1, 7000), 0);
	ck_assert_int_eq(store_presence_json(s, &users[1], 1, &json), 0);
	o = testenv_json(json);
	e = json_object_array_get_idx(testenv_json_get(o, "presence"), 0);
	ck_assert(!json_object_get_boolean(testenv_json_get(e, "online")));
	ck_assert_int_eq(testenv_json_int(e, "last_seen"), 7000);
	json_object_put(o);
	free(json);
	ck_assert_int_eq(store_presence_update(s, b, n1, 1, 1, 8000, &ch), 0);
	ck_assert_int_eq(ch, 1);
	store_free(s);
	free(a);
	free(b);
	free(n1);
	free(n2);
}
END_TEST

START_TEST(test_rooms)
{
	char *room = testenv_name("room"), *u[8], *spammer;
	struct store *s;
	struct store_page p;
	struct json_object *o, *c;
	uint64_t id, ids[8];
	int64_t ts;
	int i, ok, busy;

	cfg.room_history = 5;	/* read by the store at each post */
	s = store_new(&cfg);
	for (i = 0; i < 8; i++) {
		u[i] = testenv_name("viewer");
		ck_assert_int_eq(store_room_post(s, room, u[i], "hi \xf0\x9f\x8e\x89", 10, &ids[i], &ts), 0);
		ck_assert_int_gt(ts, 0);
		if (i > 0)
			ck_assert_uint_gt(ids[i], ids[i - 1]);
	}
	ck_assert_int_eq(store_room_history(s, room, 0, 100, &p), 0);
	ck_assert_uint_eq(p.n, 5);	/* only the newest 5 kept */
	ck_assert_int_eq(p.has_more, 0);
	ck_assert_ptr_nonnull(p.ids);	/* each event's id, in order */
	for (i = 0; i < 5; i++)
		ck_assert_uint_eq(p.ids[i], ids[3 + i]);
	ck_assert_int_eq(store_room_last_id(s, room, &id), 0);
	ck_assert_uint_eq(id, ids[7]);
	spammer = testenv_name("emptyroom");
	ck_assert_int_eq(store_room_last_id(s, spammer, &id), 0);
	ck_assert_uint_eq(id, 0);
	free(spammer);
	errno = 0;
	ck_assert_int_eq(store_room_last_id(s, "bad room", &id), -1);
	ck_assert_int_eq(errno, EINVAL);
	o = testenv_json(p.events[0]);
	ck_assert_str_eq(testenv_json_str(o, "type"), "room_message");
	ck_assert_str_eq(testenv_json_str(o, "room"), room);
	c = testenv_json_get(o, "comment");
	ck_assert_int_eq(testenv_json_int(c, "id"), (int64_t)ids[3]);
	ck_assert_str_eq(testenv_json_str(c, "user"), u[3]);
	ck_assert_str_eq(testenv_json_str(c, "text"), "hi \xf0\x9f\x8e\x89");
	json_object_put(o);
	ck_assert_uint_eq(p.next, ids[7]);
	store_page_clear(&p);
	ck_assert_int_eq(store_room_history(s, room, ids[5], 1, &p), 0);
	ck_assert_uint_eq(p.n, 1);
	ck_assert_int_eq(p.has_more, 1);
	ck_assert_uint_eq(p.next, ids[6]);
	store_page_clear(&p);

	/* Rate limit: 3/s; 10 posts in well under a second span at most two windows. */
	ok = busy = 0;
	spammer = testenv_name("spammer");
	for (i = 0; i < 10; i++) {
		if (store_room_post(s, room, spammer, "spam", 3, &id, &ts) == 0)
			ok++;
		else {
			ck_assert_int_eq(errno, EBUSY);
			busy++;
		}
	}
	ck_assert_int_le(ok, 6);
	ck_assert_int_ge(ok, 3);
	ck_assert_int_eq(ok + busy, 10);
	free(spammer);
	/* Others are not limited by the spammer's posts. */
	ck_assert_int_eq(store_room_post(s, room, u[1], "me too", 3, &id, &ts), 0);
	store_free(s);
	for (i = 0; i < 8; i++)
		free(u[i]);
	free(room);
}
END_TEST

/*
 * The room rate window runs on MySQL's clock, not the host's: with the store's session clock
 * frozen (SET timestamp, as if MySQL's clock and ours disagreed), comments are stamped with
 * MySQL's time, and a host second passing does not open the window; a MySQL second does.
 */
START_TEST(test_room_rate_mysql_clock)
{
	struct store *s;
	char *room = testenv_name("clockroom"), *u = testenv_name("clocku"), q[128];
	int64_t ts, t0 = (parley_now_ms() / 1000 - 3600) * 1000;	/* an hour behind us */
	uint64_t id;
	int i;

	s = store_new(&cfg);
	ck_assert_int_eq(store_room_post(s, room, room, "connect", 100, &id, &ts), 0);
	snprintf(q, sizeof q, "SET timestamp = %lld.%03lld", (long long)(t0 / 1000),
	    (long long)(t0 % 1000));
	ck_assert_int_eq(mysql_query(s->my, q), 0);
	for (i = 0; i < 3; i++) {
		ck_assert_msg(store_room_post(s, room, u, "at t0", 3, &id, &ts) == 0, "errno %d", errno);
		ck_assert_int_eq(ts, t0);	/* MySQL's time, not ours */
	}
	ck_assert_int_eq(store_room_post(s, room, u, "4th", 3, &id, &ts), -1);
	ck_assert_int_eq(errno, EBUSY);
	usleep(1100 * 1000);		/* our second passes, MySQL's does not */
	ck_assert_int_eq(store_room_post(s, room, u, "still t0", 3, &id, &ts), -1);
	ck_assert_int_eq(errno, EBUSY);
	snprintf(q, sizeof q, "SET timestamp = %lld.%03lld", (long long)((t0 + 1001) / 1000),
	    (long long)((t0 + 1001) % 1000));
	ck_assert_int_eq(mysql_query(s->my, q), 0);
	ck_assert_int_eq(store_room_post(s, room, u, "t0 + 1001 ms", 3, &id, &ts), 0);
	ck_assert_int_eq(ts, t0 + 1001);
	store_free(s);
	free(room);
	free(u);
}
END_TEST

/* --- faults -------------------------------------------------------------------------------- */

/*
 * Restart MariaDB. Two harness details are worked around here: Check kills a test's whole process
 * group when the test ends (so the new mariadbd gets a session of its own), and
 * `services restart-mysql` waits 30 s when the pid file is gone (its "kill -0" then tests pid 0),
 * so we stop mariadbd ourselves and leave the dead pid in the file.
 */
static void
restart_mysql(void)
{
	const char *src = getenv("PARLEY_SRCDIR");
	char path[4096];
	long pid = 0;
	FILE *f;
	int i;

	snprintf(path, sizeof path, "%s/mysql.pid", testenv_dir());
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fscanf(f, "%ld", &pid), 1);
	fclose(f);
	ck_assert_int_eq(kill((pid_t)pid, SIGTERM), 0);
	for (i = 0; i < 300 && kill((pid_t)pid, 0) == 0; i++)
		usleep(100 * 1000);
	ck_assert_int_ne(kill((pid_t)pid, 0), 0);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "%ld\n", pid);
	fclose(f);
	testenv_sh("setsid '%s/tests/harness/services' restart-mysql '%s' >/dev/null </dev/null",
	    src != NULL ? src : ".", testenv_dir());
}

START_TEST(test_mysql_down_fails_fast)
{
	struct store_send_req r = { "alice", "bob", 0, "x", "down-1" };
	struct store_send_res res;
	struct store_page p;
	struct store *s;
	int64_t t0;
	char *sock;

	xasprintf(&sock, "%s/no-such-mysql.sock", testenv_dir());
	free(cfg.mysql_socket);
	cfg.mysql_socket = sock;
	s = store_new(&cfg);
	t0 = parley_mono_ms();
	ck_assert_int_eq(store_send(s, &r, &res), -1);
	ck_assert_int_eq(errno, EAGAIN);
	ck_assert_int_eq(store_ping(s), -1);
	ck_assert_int_eq(errno, EAGAIN);
	ck_assert_int_eq(store_events(s, "alice", 0, 10, &p), -1);
	ck_assert_int_eq(errno, EAGAIN);
	ck_assert_int_lt(parley_mono_ms() - t0, 1000);
	/* After the backoff window a call tries again (and fails again, still fast). */
	usleep(2100 * 1000);
	t0 = parley_mono_ms();
	ck_assert_int_eq(store_ping(s), -1);
	ck_assert_int_eq(errno, EAGAIN);
	ck_assert_int_lt(parley_mono_ms() - t0, 1000);
	ck_assert_uint_eq(store_reconnects(s), 0);
	store_free(s);
}
END_TEST

START_TEST(test_mysql_restart)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob");
	struct store *s = store_new(&cfg);
	struct store_send_req r = { a, b, 0, "after restart", "rs-1" };
	struct store_send_res res;
	struct store_page all;
	uint64_t before;
	int i, rc = -1;

	send1(s, a, b, 0, "before restart", "rs-0", &res);
	store_send_res_clear(&res);
	before = store_reconnects(s);
	restart_mysql();
	/* The first call may fail with EAGAIN; within a few backoff windows one must succeed. */
	for (i = 0; i < 20 && rc != 0; i++) {
		if ((rc = store_send(s, &r, &res)) != 0) {
			ck_assert_int_eq(errno, EAGAIN);
			usleep(250 * 1000);
		}
	}
	ck_assert_int_eq(rc, 0);
	ck_assert_int_le(i, 2);
	ck_assert_uint_gt(store_reconnects(s), before);
	ck_assert_int_eq(res.duplicate, 0);
	ck_assert_uint_eq(res.seq, 2);
	store_send_res_clear(&res);
	read_all(s, b, 0, &all);
	assert_gap_free(&all, 2);
	store_page_clear(&all);
	ck_assert_int_eq(store_ping(s), 0);
	store_free(s);
	free(a);
	free(b);
}
END_TEST

/* --- lost COMMIT replies (tests/harness/mysql-commit-drop) ------------------------------------ */

/* The number of events in user's log. */
static size_t
log_len(struct store *s, const char *user)
{
	struct store_page all;
	size_t n;

	read_all(s, user, 0, &all);
	n = all.n;
	store_page_clear(&all);
	return n;
}

/* The type of the n-th (0-based) event of user's log. */
static char *
event_type(struct store *s, const char *user, size_t n)
{
	struct store_page all;
	struct json_object *o;
	char *type;

	read_all(s, user, 0, &all);
	ck_assert_uint_gt(all.n, n);
	o = testenv_json(all.events[n]);
	type = xstrdup(testenv_json_str(o, "type"));
	json_object_put(o);
	store_page_clear(&all);
	return type;
}

/* A send whose COMMIT reply is lost is the sender's first attempt: not a duplicate, same targets. */
START_TEST(test_lost_commit_send)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob");
	struct store_send_req r = { NULL, NULL, 0, "lost reply", "lc-1" };
	struct testenv_proxy px;
	struct store_send_res res;
	struct store *s;

	testenv_proxy_start(&px, &cfg);
	s = store_new(&cfg);
	r.from = a;
	r.to = b;
	testenv_proxy_arm(&px);
	ck_assert_int_eq(store_send(s, &r, &res), 0);
	ck_assert(testenv_proxy_fired(&px));
	ck_assert_uint_ge(store_reconnects(s), 1);
	ck_assert_int_eq(res.duplicate, 0);
	ck_assert_uint_eq(res.seq, 1);
	ck_assert_uint_eq(res.targets.n, 2);
	ck_assert_str_eq(res.targets.v[0].user, a);
	ck_assert_uint_eq(res.targets.v[0].seq, 1);
	ck_assert_str_eq(res.targets.v[1].user, b);
	ck_assert_uint_eq(res.targets.v[1].seq, 1);
	store_send_res_clear(&res);
	ck_assert_uint_eq(log_len(s, a), 1);
	ck_assert_uint_eq(log_len(s, b), 1);
	/* The client's own retry is a duplicate, with the same targets (hinted again). */
	ck_assert_int_eq(store_send(s, &r, &res), 0);
	ck_assert_int_eq(res.duplicate, 1);
	ck_assert_uint_eq(res.targets.n, 2);
	ck_assert_uint_eq(res.targets.v[1].seq, 1);
	store_send_res_clear(&res);
	/* Another message under the same client_msg_id: a duplicate that names nobody. */
	r.content = "something else";
	ck_assert_int_eq(store_send(s, &r, &res), 0);
	ck_assert_int_eq(res.duplicate, 1);
	ck_assert_uint_eq(res.targets.n, 0);
	store_send_res_clear(&res);
	ck_assert_uint_eq(log_len(s, b), 1);
	store_free(s);
	testenv_proxy_stop(&px);
	free(a);
	free(b);
}
END_TEST

/* A receipt whose COMMIT reply is lost still reports the change and its message_status target. */
START_TEST(test_lost_commit_receipt)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *type;
	struct testenv_proxy px;
	struct store_send_res res;
	struct store_targets t;
	struct store *s;
	int changed = 0;

	testenv_proxy_start(&px, &cfg);
	s = store_new(&cfg);
	send1(s, a, b, 0, "read me", "lc-r1", &res);
	testenv_proxy_arm(&px);
	ck_assert_int_eq(store_receipt(s, b, res.server_msg_id, PROTO_READ, &changed, &t), 0);
	ck_assert(testenv_proxy_fired(&px));
	ck_assert_int_eq(changed, 1);
	ck_assert_uint_eq(t.n, 1);
	ck_assert_str_eq(t.v[0].user, a);
	ck_assert_uint_eq(t.v[0].seq, 2);
	store_targets_clear(&t);
	ck_assert_uint_eq(log_len(s, a), 2);
	type = event_type(s, a, 1);
	ck_assert_str_eq(type, "message_status");
	free(type);
	store_send_res_clear(&res);
	store_free(s);
	testenv_proxy_stop(&px);
	free(a);
	free(b);
}
END_TEST

/* Creating a group whose COMMIT reply is lost creates one group: one "created" event each. */
START_TEST(test_lost_commit_group_create)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob");
	struct testenv_proxy px;
	struct store_targets t;
	struct store *s;
	char **m, *members[1];
	uint64_t g = 0;
	size_t n;

	testenv_proxy_start(&px, &cfg);
	s = store_new(&cfg);
	members[0] = b;
	testenv_proxy_arm(&px);
	ck_assert_int_eq(store_group_create(s, a, "lost reply", members, 1, &g, &t), 0);
	ck_assert(testenv_proxy_fired(&px));
	ck_assert_uint_gt(g, 0);
	ck_assert_uint_eq(t.n, 2);
	store_targets_clear(&t);
	ck_assert_uint_eq(log_len(s, a), 1);
	ck_assert_uint_eq(log_len(s, b), 1);
	ck_assert_int_eq(store_group_members(s, g, &m, &n), 0);
	ck_assert_uint_eq(n, 2);
	strv_free_test(m, n);
	store_free(s);
	testenv_proxy_stop(&px);
	free(a);
	free(b);
}
END_TEST

/*
 * A member removal whose COMMIT reply is lost answers success, not ENOENT; an addition still
 * names every member to tell.
 */
START_TEST(test_lost_commit_member_remove)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	struct testenv_proxy px;
	struct store_targets t;
	struct store *s;
	char *members[1];
	uint64_t g = 0;
	int member = 1;

	testenv_proxy_start(&px, &cfg);
	s = store_new(&cfg);
	members[0] = b;
	ck_assert_int_eq(store_group_create(s, a, "remove", members, 1, &g, &t), 0);
	store_targets_clear(&t);
	testenv_proxy_arm(&px);
	ck_assert_int_eq(store_group_add(s, a, g, c, &t), 0);
	ck_assert(testenv_proxy_fired(&px));
	ck_assert_uint_eq(t.n, 3);
	store_targets_clear(&t);
	testenv_proxy_arm(&px);
	ck_assert_msg(store_group_remove(s, a, g, b, &t) == 0, "remove: %s", strerror(errno));
	ck_assert(testenv_proxy_fired(&px));
	ck_assert_uint_eq(t.n, 3);
	store_targets_clear(&t);
	ck_assert_int_eq(store_is_member(s, g, b, &member), 0);
	ck_assert_int_eq(member, 0);
	ck_assert_uint_eq(log_len(s, b), 3);
	store_free(s);
	testenv_proxy_stop(&px);
	free(a);
	free(b);
	free(c);
}
END_TEST

/* A connection counted while the COMMIT reply is lost is counted once: gone, the user is offline. */
START_TEST(test_lost_commit_presence)
{
	char *a = testenv_name("alice"), *node = testenv_name("node"), *json, *users[1];
	struct testenv_proxy px;
	struct json_object *o, *e;
	struct store *s;
	int ch = 0;

	testenv_proxy_start(&px, &cfg);
	s = store_new(&cfg);
	testenv_proxy_arm(&px);
	ck_assert_int_eq(store_presence_update(s, a, node, 1, 1, 1000, &ch), 0);
	ck_assert(testenv_proxy_fired(&px));
	ck_assert_int_eq(ch, 1);
	ck_assert_int_eq(store_presence_update(s, a, node, 1, -1, 2000, &ch), 0);
	ck_assert_int_eq(ch, 1);
	users[0] = a;
	ck_assert_int_eq(store_presence_json(s, users, 1, &json), 0);
	o = testenv_json(json);
	e = json_object_array_get_idx(testenv_json_get(o, "presence"), 0);
	ck_assert(!json_object_get_boolean(testenv_json_get(e, "online")));
	ck_assert_int_eq(testenv_json_int(e, "last_seen"), 2000);
	json_object_put(o);
	free(json);
	store_free(s);
	testenv_proxy_stop(&px);
	free(a);
	free(node);
}
END_TEST

/* A room comment whose COMMIT reply is lost is stored once and answers its own id. */
START_TEST(test_lost_commit_room)
{
	char *room = testenv_name("room"), *a = testenv_name("alice");
	struct testenv_proxy px;
	struct store_page p;
	struct store *s;
	uint64_t id = 0;
	int64_t ts = 0;

	testenv_proxy_start(&px, &cfg);
	s = store_new(&cfg);
	testenv_proxy_arm(&px);
	ck_assert_int_eq(store_room_post(s, room, a, "once", 10, &id, &ts), 0);
	ck_assert(testenv_proxy_fired(&px));
	ck_assert_uint_gt(id, 0);
	ck_assert_int_gt(ts, 0);
	ck_assert_int_eq(store_room_history(s, room, 0, 10, &p), 0);
	ck_assert_uint_eq(p.n, 1);
	ck_assert_uint_eq(p.next, id);
	store_page_clear(&p);
	store_free(s);
	testenv_proxy_stop(&px);
	free(room);
	free(a);
}
END_TEST

/* --- errors that outlast every attempt, and unexpected duplicate keys ---------------------- */



/* A number from a one-row, one-column query on my. */
static uint64_t
raw_u64(MYSQL *my, const char *sql)
{
	MYSQL_RES *r;
	MYSQL_ROW row;
	uint64_t v;

	raw_sql(my, sql);
	ck_assert_ptr_nonnull(r = mysql_store_result(my));
	ck_assert_ptr_nonnull(row = mysql_fetch_row(r));
	ck_assert_ptr_nonnull(row[mysql_num_fields(r) - 1]);
	v = strtoull(row[mysql_num_fields(r) - 1], NULL, 10);
	mysql_free_result(r);
	return v;
}

/*
 * store_chain_transactions(): write transactions after the first send no START TRANSACTION
 * (COMMIT AND CHAIN opened the next one), and every guarantee holds: each commit is visible to
 * another connection at once, an autocommit write after a chain is durable when it returns, a
 * read sees what others committed since, a refused send leaves the next one whole, and a lost
 * connection (MySQL restarted) inside a chain is re-made and the send re-run.
 */
START_TEST(test_chained_transactions)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *c = testenv_name("carol");
	char sql[256], cmid[32], *members[1];
	struct store_send_req r = { a, b, 0, "after restart", "chr-1" };
	struct store_send_res res;
	struct store_targets t;
	struct store *s, *s2;
	uint64_t begins, cur = 0, g = 0;
	MYSQL *other;
	int i, rc = -1;

	s = store_new(&cfg);
	s2 = store_new(&cfg);
	store_chain_transactions(s, 1);
	other = raw_connect();
	send1(s, a, b, 0, "first", "ch-0", &res);
	store_send_res_clear(&res);
	begins = raw_u64(other, "SHOW GLOBAL STATUS LIKE 'Com_begin'");
	for (i = 1; i <= 5; i++) {
		snprintf(cmid, sizeof cmid, "ch-%d", i);
		send1(s, a, b, 0, "chained", cmid, &res);
		ck_assert_uint_eq(res.seq, (uint64_t)i + 1);
		store_send_res_clear(&res);
		snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM events WHERE user_id = '%s'", b);
		ck_assert_uint_eq(raw_u64(other, sql), (uint64_t)i + 1);
	}
	ck_assert_uint_eq(raw_u64(other, "SHOW GLOBAL STATUS LIKE 'Com_begin'"), begins);

	/* An autocommit write right after a chained commit: committed when it returns. */
	ck_assert_int_eq(store_cursor_set(s, b, "dev1", 4), 0);
	snprintf(sql, sizeof sql, "SELECT cur_seq FROM device_cursors WHERE user_id = '%s'"
	    " AND device_id = 'dev1'", b);
	ck_assert_uint_eq(raw_u64(other, sql), 4);
	ck_assert_int_eq(store_cursor_get(s, b, "dev1", &cur), 0);
	ck_assert_uint_eq(cur, 4);

	/* A read through the chained store sees another connection's commit made after it. */
	send1(s, a, b, 0, "chained again", "ch-6", &res);
	store_send_res_clear(&res);
	send1(s2, c, b, 0, "from elsewhere", "ch-7", &res);
	store_send_res_clear(&res);
	ck_assert_uint_eq(log_len(s, b), 8);

	/* A send refused inside a chain (not a member) rolls back; the next one commits whole. */
	members[0] = b;
	ck_assert_int_eq(store_group_create(s2, b, "chg", members, 1, &g, &t), 0);
	store_targets_clear(&t);
	send1(s, a, b, 0, "before refusal", "ch-8", &res);
	store_send_res_clear(&res);
	{
		struct store_send_req bad = { c, NULL, g, "not a member", "ch-9" };

		ck_assert_int_eq(store_send(s, &bad, &res), -1);
		ck_assert_int_eq(errno, EACCES);
		store_send_res_clear(&res);
	}
	send1(s, a, b, 0, "after refusal", "ch-10", &res);
	store_send_res_clear(&res);
	snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM events WHERE user_id = '%s'", b);
	ck_assert_uint_eq(raw_u64(other, sql), 11);	/* 8, the group's event, 2 sends */
	mysql_close(other);

	/* MySQL restarts while the chained store holds an open (empty) transaction. */
	restart_mysql();
	for (i = 0; i < 20 && rc != 0; i++) {
		if ((rc = store_send(s, &r, &res)) != 0) {
			ck_assert_int_eq(errno, EAGAIN);
			usleep(250 * 1000);
		}
	}
	ck_assert_int_eq(rc, 0);
	ck_assert_int_eq(res.duplicate, 0);
	store_send_res_clear(&res);
	other = raw_connect();
	snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM messages WHERE client_msg_id = 'chr-1'"
	    " AND sender = '%s'", a);
	ck_assert_uint_eq(raw_u64(other, sql), 1);
	mysql_close(other);
	store_free(s);
	store_free(s2);
	free(a);
	free(b);
	free(c);
}
END_TEST

/*
 * A row lock held for longer than every attempt waits (a lock-wait timeout each time, the same
 * path as a deadlock that keeps coming back) is "unavailable, retry later": EAGAIN (503).
 */
START_TEST(test_lock_wait_outlasts_attempts)
{
	char *a = testenv_name("alice"), *node = testenv_name("node"), sql[256];
	struct store *s;
	MYSQL *holder;
	int64_t t0;
	int ch = 0;

	cfg.mysql_lock_wait_timeout = 1;
	holder = raw_connect();
	raw_sql(holder, "START TRANSACTION");
	snprintf(sql, sizeof sql, "INSERT INTO presence_users (user_id, last_seen) VALUES ('%s', 0)",
	    a);
	raw_sql(holder, sql);	/* the user's lock row, held until the rollback below */
	s = store_new(&cfg);
	t0 = parley_mono_ms();
	ck_assert_int_eq(store_presence_update(s, a, node, 1, 1, 1000, &ch), -1);
	ck_assert_int_eq(errno, EAGAIN);
	/* Five waits of 1 s and the pauses between them, not 5 x the default 5 s. */
	ck_assert_int_ge(parley_mono_ms() - t0, 4000);
	ck_assert_int_lt(parley_mono_ms() - t0, 15000);
	raw_sql(holder, "ROLLBACK");
	ck_assert_int_eq(store_presence_update(s, a, node, 1, 1, 1000, &ch), 0);
	ck_assert_int_eq(ch, 1);
	mysql_close(holder);
	store_free(s);
	free(a);
	free(node);
}
END_TEST

/*
 * A duplicate key in a statement other than the message insert is a broken invariant: an
 * internal error (EIO), logged with the statement and MySQL's message, never silent.
 */
START_TEST(test_duplicate_key_logged)
{
	char *a = testenv_name("alice"), *b = testenv_name("bob"), *members[1], *text = NULL;
	char sql[256];
	struct store_targets t;
	struct store *s;
	MYSQL *other;
	uint64_t g = 0;
	size_t len = 0;
	FILE *f;

	/* b's log has an event its seq row does not know of: b's next seq (1) is taken. */
	other = raw_connect();
	snprintf(sql, sizeof sql, "INSERT INTO events (user_id, seq, kind, body)"
	    " VALUES ('%s', 1, 2, '{}')", b);
	raw_sql(other, sql);
	mysql_close(other);
	s = store_new(&cfg);
	members[0] = b;
	f = open_memstream(&text, &len);
	log_set_stream(f);
	ck_assert_int_eq(store_group_create(s, a, "dup", members, 1, &g, &t), -1);
	ck_assert_int_eq(errno, EIO);
	log_set_stream(NULL);
	fclose(f);
	ck_assert_msg(strstr(text, "duplicate key in statement \"INSERT INTO events") != NULL,
	    "log: %s", text);
	ck_assert_msg(strstr(text, "Duplicate entry") != NULL, "log: %s", text);
	free(text);
	store_free(s);
	free(a);
	free(b);
}
END_TEST

static Suite *
store_suite(void)
{
	Suite *su = suite_create("store");
	TCase *tc;

	tc = tcase_create("basics");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_send_and_read_back);
	tcase_add_test(tc, test_invalid_arguments);
	tcase_add_test(tc, test_seq_gap_free_and_paging);
	tcase_add_test(tc, test_batch);
	tcase_add_test(tc, test_cursors);
	tcase_add_test(tc, test_note_to_self);
	suite_add_tcase(su, tc);

	tc = tcase_create("concurrency");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_idempotent_under_concurrency);
	tcase_add_test(tc, test_concurrent_appends_one_log);
	suite_add_tcase(su, tc);

	tc = tcase_create("features");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_groups);
	tcase_add_test(tc, test_big_group_send);
	tcase_add_test(tc, test_receipts);
	tcase_add_test(tc, test_group_receipts_and_conversations);
	tcase_add_test(tc, test_presence);
	tcase_add_test(tc, test_rooms);
	tcase_add_test(tc, test_room_rate_mysql_clock);
	tcase_add_test(tc, test_history_pair);
	tcase_add_test(tc, test_history_group);
	tcase_add_test(tc, test_history_explain);
	tcase_add_test(tc, test_prune);
	tcase_add_test(tc, test_prune_while_sending);
	tcase_add_test(tc, test_conversations_on_read);
	tcase_add_test(tc, test_conversations_pruned);
	tcase_add_test(tc, test_receipts_first_concurrent);
	tcase_add_test(tc, test_conversations_explain);
	tcase_add_test(tc, test_conversations_rebuild_cost);
	suite_add_tcase(su, tc);

	tc = tcase_create("faults");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_mysql_down_fails_fast);
	tcase_add_test(tc, test_mysql_restart);
	tcase_add_test(tc, test_lock_wait_outlasts_attempts);
	tcase_add_test(tc, test_duplicate_key_logged);
	tcase_add_test(tc, test_chained_transactions);
	suite_add_tcase(su, tc);

	tc = tcase_create("lost_commit");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_lost_commit_send);
	tcase_add_test(tc, test_lost_commit_receipt);
	tcase_add_test(tc, test_lost_commit_group_create);
	tcase_add_test(tc, test_lost_commit_member_remove);
	tcase_add_test(tc, test_lost_commit_presence);
	tcase_add_test(tc, test_lost_commit_room);
	suite_add_tcase(su, tc);
	return su;
}

int
main(void)
{
	log_init("check_store", LOG_LEVEL_WARN, 0);
	return testenv_run(store_suite());
}
