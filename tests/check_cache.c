/* check_cache.c - conversation summaries against the real memcached and MariaDB: hits, invalidation, faults. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>
#include <libmemcached/memcached.h>

#include "cache.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "store.h"
#include "testenv.h"
#include "xmalloc.h"

/* What one test needs: the stack's config, a store, a cache and a raw memcached client. */
struct fx {
	struct config	 cfg;
	struct store	*st;
	struct cache	*c;
	memcached_st	*raw;
};

static void
fx_open(struct fx *f)
{
	memset(f, 0, sizeof *f);
	testenv_config(&f->cfg);
	ck_assert_msg(f->cfg.memcached_servers[0] == '/', "test stack memcached is a UNIX socket");
	f->st = store_new(&f->cfg);
	f->c = cache_new(&f->cfg, NULL);
	f->raw = memcached_create(NULL);
	memcached_server_add_unix_socket(f->raw, f->cfg.memcached_servers);
	memcached_behavior_set(f->raw, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 200);
}

static void
fx_close(struct fx *f)
{
	memcached_free(f->raw);
	cache_free(f->c);
	store_free(f->st);
	config_clear(&f->cfg);
}

/* The memcached pid of the stack, or 0. */
static pid_t
mc_pid(void)
{
	char path[4096];
	long pid = 0;
	FILE *fp;

	snprintf(path, sizeof path, "%s/memcached.pid", testenv_dir());
	if ((fp = fopen(path, "r")) == NULL)
		return 0;
	if (fscanf(fp, "%ld", &pid) != 1)
		pid = 0;
	fclose(fp);
	return (pid_t)pid;
}

/* Does a fresh client get an answer from memcached? */
static int
mc_answers(const char *sock)
{
	memcached_st *m = memcached_create(NULL);
	memcached_return_t rc;

	memcached_server_add_unix_socket(m, sock);
	memcached_behavior_set(m, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 200);
	memcached_behavior_set(m, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, 200);
	rc = memcached_set(m, "parley:test:probe", 17, "1", 1, 10, 0);
	memcached_free(m);
	return rc == MEMCACHED_SUCCESS;
}

/*
 * Leave memcached running for the next test whatever happened (tests share the stack): continue
 * it if stopped, start it again if killed. Runs in the parent around each fault test case.
 */
static void
mc_restore(void)
{
	struct config cfg;
	pid_t pid = mc_pid();
	int i;

	testenv_config(&cfg);
	if (pid > 0)
		kill(pid, SIGCONT);
	if (!mc_answers(cfg.memcached_servers)) {
		testenv_memcached_restart();
		for (i = 0; i < 50 && !mc_answers(cfg.memcached_servers); i++)
			usleep(100000);
	}
	config_clear(&cfg);
}

/*
 * Commit a message from -> to without touching the cache; its targets go to users[*n] (caller
 * frees them). Returns the message id.
 */
static uint64_t
send_quiet(struct fx *f, const char *from, const char *to, const char *content, char **users,
    size_t *n)
{
	struct store_send_req req;
	struct store_send_res res;
	char *cmid = testenv_name("c");
	uint64_t id;
	size_t i;

	memset(&req, 0, sizeof req);
	memset(&res, 0, sizeof res);
	req.from = from;
	req.to = to;
	req.content = content;
	req.client_msg_id = cmid;
	ck_assert_int_eq(store_send(f->st, &req, &res), 0);
	ck_assert_int_eq(res.duplicate, 0);
	for (i = 0; i < res.targets.n; i++)
		users[(*n)++] = xstrdup(res.targets.v[i].user);
	id = res.server_msg_id;
	store_send_res_clear(&res);
	free(cmid);
	return id;
}

/* Send from -> to through the store (as chat does: commit, then invalidate every target). */
static uint64_t
send_msg(struct fx *f, const char *from, const char *to, const char *content)
{
	char *users[2];
	size_t i, n = 0;
	uint64_t id;

	id = send_quiet(f, from, to, content, users, &n);
	for (i = 0; i < n; i++) {
		cache_invalidate(f->c, users[i]);
		free(users[i]);
	}
	return id;
}

/* Parse a conversations answer; the caller puts the object. */
static struct json_object *
conv_parse(const char *json, size_t *n)
{
	struct json_object *o, *a;

	o = testenv_json(json);
	ck_assert(json_object_object_get_ex(o, "conversations", &a));
	ck_assert(json_object_is_type(a, json_type_array));
	*n = json_object_array_length(a);
	return o;
}

/* Entry i of a parsed answer. */
static struct json_object *
conv_at(struct json_object *o, size_t i)
{
	struct json_object *a;

	json_object_object_get_ex(o, "conversations", &a);
	return json_object_array_get_idx(a, i);
}

static const char *
conv_str(struct json_object *c, const char *k1, const char *k2)
{
	struct json_object *v;

	if (!json_object_object_get_ex(c, k1, &v))
		return NULL;
	if (k2 != NULL && !json_object_object_get_ex(v, k2, &v))
		return NULL;
	return json_object_get_string(v);
}

static int
conv_int(struct json_object *c, const char *k)
{
	struct json_object *v;

	ck_assert(json_object_object_get_ex(c, k, &v));
	return json_object_get_int(v);
}

/* user's conversations (limit) must have `with` as entry i with that last content and unread. */
static void
expect_conv(struct fx *f, const char *user, int limit, size_t want_n, size_t i, const char *with,
    const char *content, int unread)
{
	struct json_object *o, *c;
	char *json = NULL;
	size_t n;

	ck_assert_int_eq(cache_conversations(f->c, f->st, user, limit, &json), 0);
	o = conv_parse(json, &n);
	ck_assert_msg(n == want_n, "%zu conversations, want %zu: %s", n, want_n, json);
	c = conv_at(o, i);
	ck_assert_str_eq(conv_str(c, "with", NULL), with);
	ck_assert_str_eq(conv_str(c, "last_message", "content"), content);
	ck_assert_int_eq(conv_int(c, "unread"), unread);
	json_object_put(o);
	free(json);
}

/* The raw summary value of user in memcached (NULL when absent). Caller frees. */
static char *
raw_summary(struct fx *f, const char *user)
{
	char key[256];
	size_t len;
	uint32_t flags;
	memcached_return_t rc;

	snprintf(key, sizeof key, "parley:conv:v1:%s", user);
	return memcached_get(f->raw, key, strlen(key), &len, &flags, &rc);
}

static void
raw_put(struct fx *f, const char *user, const char *val)
{
	char key[256];

	snprintf(key, sizeof key, "parley:conv:v1:%s", user);
	ck_assert_int_eq(memcached_set(f->raw, key, strlen(key), val, strlen(val), 60, 0),
	    MEMCACHED_SUCCESS);
}

/* Replace the first occurrence of from by to in s (same length not required). Caller frees. */
static char *
replace(const char *s, const char *from, const char *to)
{
	const char *p = strstr(s, from);
	char *out;

	ck_assert_ptr_nonnull(p);
	xasprintf(&out, "%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
	return out;
}

/* Poll (up to ~6 s) until this cache talks to memcached again. */
static void
wait_cache_back(struct fx *f)
{
	int i;

	for (i = 0; i < 60 && !cache_check(f->c); i++)
		usleep(100000);
	ck_assert_int_eq(cache_alive(f->c), 1);
}

START_TEST(test_hit_served_from_memcached)
{
	struct fx f;
	char *a = testenv_name("ca"), *b = testenv_name("cb"), *c = testenv_name("cc");
	char *raw, *forged;

	fx_open(&f);
	send_msg(&f, a, b, "hello from a");
	ck_assert_ptr_null(raw_summary(&f, b));
	expect_conv(&f, b, 20, 1, 0, a, "hello from a", 1);
	ck_assert_int_eq(cache_alive(f.c), 1);

	/* The first read filled memcached ... */
	raw = raw_summary(&f, b);
	ck_assert_ptr_nonnull(raw);
	ck_assert_ptr_nonnull(strstr(raw, "hello from a"));
	/* ... and the next one is served from it: a forged value (same generation) shows through. */
	forged = replace(raw, "hello from a", "forged in memcached");
	raw_put(&f, b, forged);
	expect_conv(&f, b, 20, 1, 0, a, "forged in memcached", 1);
	free(forged);
	free(raw);

	/* limit applies to a cached list: two conversations, limit 1 gives the newest. */
	send_msg(&f, c, b, "hello from c");
	expect_conv(&f, b, 20, 2, 0, c, "hello from c", 1);
	expect_conv(&f, b, 1, 1, 0, c, "hello from c", 1);
	expect_conv(&f, b, 2, 2, 1, a, "hello from a", 1);
	raw = raw_summary(&f, b);
	ck_assert_ptr_nonnull(strstr(raw, "hello from c"));
	free(raw);
	fx_close(&f);
	free(a);
	free(b);
	free(c);
}
END_TEST

START_TEST(test_send_invalidates)
{
	struct fx f;
	char *a = testenv_name("ia"), *b = testenv_name("ib");

	fx_open(&f);
	send_msg(&f, a, b, "one");
	expect_conv(&f, b, 20, 1, 0, a, "one", 1);
	expect_conv(&f, a, 20, 1, 0, b, "one", 0);
	send_msg(&f, a, b, "two");
	expect_conv(&f, b, 20, 1, 0, a, "two", 2);
	expect_conv(&f, a, 20, 1, 0, b, "two", 0);
	send_msg(&f, b, a, "three");
	expect_conv(&f, a, 20, 1, 0, b, "three", 1);
	expect_conv(&f, b, 20, 1, 0, a, "three", 2);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

/*
 * One pipelined bump for a whole batch: every user's cached summary dies at once, repeated users
 * and users that never had a generation included; without the bump the old summary is served.
 */
START_TEST(test_invalidate_many)
{
	enum { N = 8 };
	struct fx f;
	char *a = testenv_name("ma"), *b[N], *fresh = testenv_name("mf"), *users[2 * N + 1];
	size_t i, n = 0;

	fx_open(&f);
	for (i = 0; i < N; i++) {
		b[i] = testenv_name("mb");
		send_msg(&f, a, b[i], "old");
		expect_conv(&f, b[i], 20, 1, 0, a, "old", 1);
	}
	for (i = 0; i < N; i++)
		send_quiet(&f, a, b[i], "new", users, &n);
	ck_assert_uint_eq(n, 2 * N);
	/* Not bumped yet: memcached still serves the summary of before the commit. */
	expect_conv(&f, b[0], 20, 1, 0, a, "old", 1);
	users[n++] = xstrdup(fresh);
	cache_invalidate_many(f.c, (const char *const *)users, n);
	ck_assert_int_eq(cache_alive(f.c), 1);
	for (i = 0; i < N; i++)
		expect_conv(&f, b[i], 20, 1, 0, a, "new", 2);
	expect_conv(&f, a, 20, N, 0, b[N - 1], "new", 0);
	for (i = 0; i < n; i++)
		free(users[i]);
	for (i = 0; i < N; i++)
		free(b[i]);
	fx_close(&f);
	free(a);
	free(fresh);
}
END_TEST

/*
 * The refill race: a reader that read MySQL before a send and writes its (old) summary into
 * memcached after the sender's invalidation must not make the old summary visible.
 */
START_TEST(test_late_refill_is_ignored)
{
	struct fx f;
	char *a = testenv_name("ra"), *b = testenv_name("rb"), *old;

	fx_open(&f);
	send_msg(&f, a, b, "before");
	expect_conv(&f, b, 20, 1, 0, a, "before", 1);
	old = raw_summary(&f, b);		/* what the slow reader built */
	ck_assert_ptr_nonnull(old);
	send_msg(&f, a, b, "after");		/* commit + invalidate */
	raw_put(&f, b, old);			/* the slow reader's late write */
	expect_conv(&f, b, 20, 1, 0, a, "after", 2);
	expect_conv(&f, b, 20, 1, 0, a, "after", 2);
	/* ... and the new summary is cached again. */
	free(old);
	old = raw_summary(&f, b);
	ck_assert_ptr_nonnull(old);
	ck_assert_ptr_nonnull(strstr(old, "after"));
	free(old);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

START_TEST(test_memcached_killed)
{
	struct fx f;
	char *a = testenv_name("ka"), *b = testenv_name("kb"), *v;
	int64_t t0;

	fx_open(&f);
	send_msg(&f, a, b, "k1");
	expect_conv(&f, b, 20, 1, 0, a, "k1", 1);

	testenv_memcached_signal(SIGKILL);
	usleep(100000);
	t0 = parley_mono_ms();
	send_msg(&f, a, b, "k2");
	expect_conv(&f, b, 20, 1, 0, a, "k2", 2);
	expect_conv(&f, a, 20, 1, 0, b, "k2", 0);
	ck_assert_int_eq(cache_alive(f.c), 0);
	ck_assert_int_eq(cache_check(f.c), 0);
	ck_assert_int_lt(parley_mono_ms() - t0, 1000);

	testenv_memcached_restart();
	wait_cache_back(&f);
	expect_conv(&f, b, 20, 1, 0, a, "k2", 2);
	v = raw_summary(&f, b);
	ck_assert_ptr_nonnull(v);		/* the cache is used again */
	ck_assert_ptr_nonnull(strstr(v, "k2"));
	free(v);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

START_TEST(test_memcached_stopped)
{
	struct fx f;
	char *a = testenv_name("sa"), *b = testenv_name("sb"), *v;
	int64_t t0;
	int i;

	fx_open(&f);
	send_msg(&f, a, b, "s1");
	expect_conv(&f, b, 20, 1, 0, a, "s1", 1);	/* cached, tagged with b's generation */

	testenv_memcached_signal(SIGSTOP);
	/* Each call is bounded by about one poll timeout, never libmemcached's 5 s default. */
	t0 = parley_mono_ms();
	expect_conv(&f, b, 20, 1, 0, a, "s1", 1);
	ck_assert_int_lt(parley_mono_ms() - t0, 1000);
	t0 = parley_mono_ms();
	send_msg(&f, a, b, "s2");			/* its invalidation cannot reach memcached */
	ck_assert_int_lt(parley_mono_ms() - t0, 1000);
	for (i = 0; i < 5; i++) {
		t0 = parley_mono_ms();
		expect_conv(&f, b, 20, 1, 0, a, "s2", 2);
		ck_assert_int_lt(parley_mono_ms() - t0, 1000);
	}
	ck_assert_int_eq(cache_alive(f.c), 0);

	/* memcached continues with the stale summary still inside: it must never be served. */
	testenv_memcached_signal(SIGCONT);
	wait_cache_back(&f);
	expect_conv(&f, b, 20, 1, 0, a, "s2", 2);
	expect_conv(&f, b, 20, 1, 0, a, "s2", 2);
	v = raw_summary(&f, b);
	ck_assert_ptr_nonnull(v);
	ck_assert_ptr_nonnull(strstr(v, "s2"));
	free(v);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

/*
 * Two threads' caches of one process share a journal: a bump one of them could not make while
 * memcached was stopped is replayed by the other before it reads, so the other never serves the
 * summary memcached kept through the stop.
 */
START_TEST(test_memcached_stopped_journal)
{
	struct fx f;
	struct cache_journal *j = cache_journal_new();
	struct cache *w, *r, *keep;
	char *a = testenv_name("ja"), *b = testenv_name("jb"), *users[4], *json = NULL;
	size_t i, n = 0;

	fx_open(&f);
	w = cache_new(&f.cfg, j);
	r = cache_new(&f.cfg, j);
	keep = f.c;
	send_msg(&f, a, b, "j1");
	f.c = r;
	expect_conv(&f, b, 20, 1, 0, a, "j1", 1);	/* r cached it */

	testenv_memcached_signal(SIGSTOP);
	/* w finds memcached stopped, so its bump after the next commit is not even tried. */
	ck_assert_int_eq(cache_conversations(w, f.st, b, 20, &json), 0);
	free(json);
	ck_assert_int_eq(cache_alive(w), 0);
	send_quiet(&f, a, b, "j2", users, &n);
	cache_invalidate_many(w, (const char *const *)users, n);

	testenv_memcached_signal(SIGCONT);
	/* r saw no failure; it replays w's bump first, then misses and reads MySQL. */
	expect_conv(&f, b, 20, 1, 0, a, "j2", 2);
	expect_conv(&f, b, 20, 1, 0, a, "j2", 2);
	ck_assert_int_eq(cache_alive(r), 1);

	for (i = 0; i < n; i++)
		free(users[i]);
	f.c = keep;
	cache_free(w);
	cache_free(r);
	cache_journal_free(j);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

/* One thread of test_journal_no_queue: its own cache on the shared journal, one timed bump. */
struct jq_thread {
	pthread_t		 t;
	struct cache		*c;
	pthread_barrier_t	*go;
	int64_t			 ms;
};

static void *
jq_run(void *arg)
{
	struct jq_thread *q = arg;
	char *u = testenv_name("jq");
	int64_t t0;

	pthread_barrier_wait(q->go);
	t0 = parley_mono_ms();
	cache_invalidate(q->c, u);
	q->ms = parley_mono_ms() - t0;
	free(u);
	return NULL;
}

/*
 * While memcached is stopped and the journal has bumps to replay, threads do not queue behind one
 * another's replay: each pays at most its own timeout (16 threads, 100 ms each, queued would take
 * 1.6 s for the last one).
 */
START_TEST(test_journal_no_queue)
{
	enum { N = 16 };
	struct fx f;
	struct cache_journal *j = cache_journal_new();
	struct jq_thread q[N];
	pthread_barrier_t go;
	char *u = testenv_name("jq"), *json = NULL;
	int i;

	fx_open(&f);
	ck_assert_int_le(f.cfg.memcached_timeout_ms, 100);
	pthread_barrier_init(&go, NULL, N);
	for (i = 0; i < N; i++) {
		q[i].c = cache_new(&f.cfg, j);
		q[i].go = &go;
	}
	testenv_memcached_signal(SIGSTOP);
	/* q[0]'s cache learns memcached is stopped; its next bump is journaled without I/O. */
	ck_assert_int_eq(cache_conversations(q[0].c, f.st, u, 10, &json), 0);
	free(json);
	cache_invalidate(q[0].c, u);
	for (i = 0; i < N; i++)
		ck_assert_int_eq(pthread_create(&q[i].t, NULL, jq_run, &q[i]), 0);
	for (i = 0; i < N; i++)
		pthread_join(q[i].t, NULL);
	testenv_memcached_signal(SIGCONT);
	for (i = 0; i < N; i++) {
		ck_assert_msg(q[i].ms < 1000, "thread %d waited %lld ms", i, (long long)q[i].ms);
		cache_free(q[i].c);
	}
	pthread_barrier_destroy(&go);
	cache_journal_free(j);
	fx_close(&f);
	free(u);
}
END_TEST

START_TEST(test_disabled)
{
	struct fx f;
	struct cache *off;
	char *a = testenv_name("da"), *b = testenv_name("db"), *json = NULL, *cause = NULL;

	fx_open(&f);
	send_msg(&f, a, b, "no cache");
	ck_assert_int_eq(config_set(&f.cfg, "memcached.servers", "", &cause), 0);
	off = cache_new(&f.cfg, NULL);
	ck_assert_int_eq(cache_conversations(off, f.st, b, 10, &json), 0);
	ck_assert_ptr_nonnull(strstr(json, "no cache"));
	ck_assert_int_eq(cache_alive(off), 0);
	ck_assert_int_eq(cache_check(off), 0);
	cache_invalidate(off, b);
	free(json);
	ck_assert_int_eq(cache_conversations(off, f.st, b, 0, &json), -1);
	ck_assert_int_eq(errno, EINVAL);
	cache_free(off);
	cache_free(NULL);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

/* Start a private memcached on 127.0.0.1:port; 0 when it runs. */
static int
tcp_memcached_on(int port, const char *pidfile)
{
	char *cmd;
	int rc;

	xasprintf(&cmd, "memcached $( [ $(id -u) = 0 ] && echo -u root ) -l 127.0.0.1 -p %d "
	    "-U 0 -m 8 -P '%s' -d 2>/dev/null && sleep 0.3 && kill -0 $(cat '%s') 2>/dev/null",
	    port, pidfile, pidfile);
	rc = system(cmd);
	free(cmd);
	return rc == 0 ? 0 : -1;
}

/* Start a private memcached on a free TCP port of 127.0.0.1; returns the port. */
static int
tcp_memcached(const char *pidfile)
{
	int port, i;

	/* Check forks each test from one parent: random() alone repeats its ports. */
	for (i = 0; i < 20; i++) {
		port = 20000 + (int)(((unsigned long)random() + (unsigned long)getpid() * 7919) % 30000);
		if (tcp_memcached_on(port, pidfile) == 0)
			return port;
	}
	ck_abort_msg("no free TCP port for memcached");
	return 0;
}

/*
 * After the tests of a case, in the parent: stop the private TCP memcacheds a test left running
 * because it failed half-way (their pid files are in the test directory; only a live memcached
 * is signalled, never a pid reused by another program).
 */
static void
tcp_cleanup(void)
{
	testenv_sh("for f in '%s'/memcached-*-*.pid; do [ -f \"$f\" ] || continue; p=$(cat \"$f\"); "
	    "if [ \"$(cat /proc/$p/comm 2>/dev/null)\" = memcached ]; then kill -CONT $p; kill $p; fi; "
	    "rm -f \"$f\"; done; true", testenv_dir());
}

/* Is user's summary stored in the memcached at 127.0.0.1:port? */
static int
tcp_has_summary(int port, const char *user)
{
	memcached_st *m = memcached_create(NULL);
	memcached_return_t rc;
	char key[256], *v;
	uint32_t flags;
	size_t len;
	int found;

	memcached_server_add(m, "127.0.0.1", (in_port_t)port);
	memcached_behavior_set(m, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 200);
	memcached_behavior_set(m, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, 200);
	snprintf(key, sizeof key, "parley:conv:v1:%s", user);
	v = memcached_get(m, key, strlen(key), &len, &flags, &rc);
	found = v != NULL;
	memcached_free(m);
	free(v);
	return found;
}

/* Overwrite user's summary in the memcached at 127.0.0.1:port (value from the cache). */
static void
tcp_forge(int port, const char *user, const char *from, const char *to)
{
	memcached_st *m = memcached_create(NULL);
	memcached_return_t rc;
	char key[256], *v, *forged;
	uint32_t flags;
	size_t len;

	memcached_server_add(m, "127.0.0.1", (in_port_t)port);
	snprintf(key, sizeof key, "parley:conv:v1:%s", user);
	v = memcached_get(m, key, strlen(key), &len, &flags, &rc);
	ck_assert_ptr_nonnull(v);
	ck_assert_msg(strstr(v, from) != NULL, "no \"%s\" in %s", from, v);
	forged = replace(v, from, to);
	ck_assert_int_eq(memcached_set(m, key, strlen(key), forged, strlen(forged), 60, 0),
	    MEMCACHED_SUCCESS);
	free(forged);
	free(v);
	memcached_free(m);
}

/*
 * Which of the servers 127.0.0.1:p1, 127.0.0.1:p2 (0 or 1) holds user's keys: an independent
 * ketama client (weighted, MD5) hashing the user, as the cache groups a user's keys by name.
 */
static uint32_t
tcp_gen_server(int p1, int p2, const char *user)
{
	memcached_st *m = memcached_create(NULL);
	uint32_t i;

	memcached_behavior_set(m, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1);
	memcached_server_add(m, "127.0.0.1", (in_port_t)p1);
	memcached_server_add(m, "127.0.0.1", (in_port_t)p2);
	i = memcached_generate_hash(m, user, strlen(user));
	memcached_free(m);
	return i;
}

/* A fresh test name whose keys live on server want (0: p1, 1: p2). Caller frees. */
static char *
name_on(int p1, int p2, const char *prefix, uint32_t want)
{
	char *n;

	for (;;) {
		n = testenv_name(prefix);
		if (tcp_gen_server(p1, p2, n) == want)
			return n;
		free(n);
	}
}

/*
 * A pool of two memcacheds, one killed mid-test: its users are answered from MySQL (misses, never
 * a summary from before the kill, and never refilled on the other server), the other server's
 * users keep their cache; restarted (empty) it serves again, and a second kill after new sends
 * still gives correct answers. With ejection (a failed server's users moved to the survivor) the
 * summary written on the survivor during the first outage would be served in the second one.
 */
START_TEST(test_pool_server_killed)
{
	struct fx f;
	char *a, *b, *c, *servers = NULL, *cause = NULL, pid1[4096], pid2[4096];
	int p1, p2, i;

	fx_open(&f);
	snprintf(pid1, sizeof pid1, "%s/memcached-pool1-%ld.pid", testenv_dir(), (long)getpid());
	snprintf(pid2, sizeof pid2, "%s/memcached-pool2-%ld.pid", testenv_dir(), (long)getpid());
	p1 = tcp_memcached(pid1);
	p2 = tcp_memcached(pid2);
	xasprintf(&servers, "127.0.0.1:%d,127.0.0.1:%d", p1, p2);
	ck_assert_int_eq(config_set(&f.cfg, "memcached.servers", servers, &cause), 0);
	cache_free(f.c);
	f.c = cache_new(&f.cfg, NULL);
	a = testenv_name("pa");
	b = name_on(p1, p2, "pb", 1);		/* on p2, the server killed below */
	c = name_on(p1, p2, "pc", 0);		/* on p1, which keeps running */

	send_msg(&f, a, b, "b1");
	send_msg(&f, a, c, "c1");
	expect_conv(&f, b, 20, 1, 0, a, "b1", 1);
	expect_conv(&f, c, 20, 1, 0, a, "c1", 1);
	ck_assert_int_eq(tcp_has_summary(p2, b), 1);
	ck_assert_int_eq(tcp_has_summary(p1, b), 0);
	ck_assert_int_eq(tcp_has_summary(p1, c), 1);

	/* p2 dies. */
	testenv_sh("kill -KILL $(cat '%s')", pid2);
	usleep(100000);
	send_msg(&f, a, b, "b2");		/* its bump is lost: journaled */
	send_msg(&f, a, c, "second for c");
	for (i = 0; i < 3; i++) {
		expect_conv(&f, b, 20, 1, 0, a, "b2", 2);
		expect_conv(&f, c, 20, 1, 0, a, "second for c", 2);
	}
	ck_assert_int_eq(tcp_has_summary(p1, b), 0);	/* b was not moved to p1 */
	ck_assert_int_eq(cache_alive(f.c), 0);
	ck_assert_int_eq(cache_check(f.c), 0);
	/* c is still served from memcached (p1): a forged summary shows. */
	tcp_forge(p1, c, "second for c", "forged on p1");
	expect_conv(&f, c, 20, 1, 0, a, "forged on p1", 2);
	send_msg(&f, a, c, "c3");
	expect_conv(&f, c, 20, 1, 0, a, "c3", 3);

	/* p2 comes back on its port, empty. */
	ck_assert_int_eq(tcp_memcached_on(p2, pid2), 0);
	wait_cache_back(&f);
	expect_conv(&f, b, 20, 1, 0, a, "b2", 2);
	ck_assert_int_eq(tcp_has_summary(p2, b), 1);	/* cached again where it belongs */
	send_msg(&f, a, b, "b3");
	expect_conv(&f, b, 20, 1, 0, a, "b3", 3);
	expect_conv(&f, b, 20, 1, 0, a, "b3", 3);

	/* And dies again: b's answers stay right (nothing older lives anywhere in the pool). */
	testenv_sh("kill -KILL $(cat '%s')", pid2);
	usleep(100000);
	for (i = 0; i < 3; i++)
		expect_conv(&f, b, 20, 1, 0, a, "b3", 3);
	send_msg(&f, a, b, "b4");
	expect_conv(&f, b, 20, 1, 0, a, "b4", 4);
	ck_assert_int_eq(tcp_has_summary(p1, b), 0);

	testenv_sh("kill $(cat '%s') 2>/dev/null; true", pid1);
	free(servers);
	fx_close(&f);
	free(a);
	free(b);
	free(c);
}
END_TEST

/*
 * A server added to the pool: about half the users move to it and miss once (refilled there from
 * MySQL, right), the others keep their summaries on the old server (a forged one shows: a hit).
 */
START_TEST(test_pool_server_added)
{
	struct fx f;
	char *one = NULL, *two = NULL, *cause = NULL, *a, *u[12], pid1[4096], pid2[4096];
	int p1, p2, i, moved = 0, stayed = 0;

	fx_open(&f);
	snprintf(pid1, sizeof pid1, "%s/memcached-add1-%ld.pid", testenv_dir(), (long)getpid());
	snprintf(pid2, sizeof pid2, "%s/memcached-add2-%ld.pid", testenv_dir(), (long)getpid());
	p1 = tcp_memcached(pid1);
	p2 = tcp_memcached(pid2);
	xasprintf(&one, "127.0.0.1:%d", p1);
	xasprintf(&two, "127.0.0.1:%d,127.0.0.1:%d", p1, p2);
	ck_assert_int_eq(config_set(&f.cfg, "memcached.servers", one, &cause), 0);
	cache_free(f.c);
	f.c = cache_new(&f.cfg, NULL);
	a = testenv_name("aa");
	for (i = 0; i < 12; i++) {
		u[i] = testenv_name("au");
		send_msg(&f, a, u[i], "before the new server");
		expect_conv(&f, u[i], 20, 1, 0, a, "before the new server", 1);
		ck_assert_int_eq(tcp_has_summary(p1, u[i]), 1);
	}
	/* Every process restarts with the longer list. */
	ck_assert_int_eq(config_set(&f.cfg, "memcached.servers", two, &cause), 0);
	cache_free(f.c);
	f.c = cache_new(&f.cfg, NULL);
	for (i = 0; i < 12; i++) {
		if (tcp_gen_server(p1, p2, u[i]) == 1) {
			moved++;
			expect_conv(&f, u[i], 20, 1, 0, a, "before the new server", 1);
			ck_assert_int_eq(tcp_has_summary(p2, u[i]), 1);	/* refilled there */
			send_msg(&f, a, u[i], "after");
			expect_conv(&f, u[i], 20, 1, 0, a, "after", 2);
		} else {
			stayed++;
			tcp_forge(p1, u[i], "before the new server", "still on the old server");
			expect_conv(&f, u[i], 20, 1, 0, a, "still on the old server", 1);
		}
	}
	ck_assert_int_gt(moved, 0);
	ck_assert_int_gt(stayed, 0);
	testenv_sh("kill $(cat '%s') $(cat '%s')", pid1, pid2);
	for (i = 0; i < 12; i++)
		free(u[i]);
	free(one);
	free(two);
	fx_close(&f);
	free(a);
}
END_TEST

/* The pool's ring is ketama: another ketama client given the same servers in another order agrees. */
START_TEST(test_pool_ring_order)
{
	struct fx f;
	char *servers = NULL, *cause = NULL, *a, *u, *json = NULL, pid1[4096], pid2[4096];
	int p1, p2, i, on[2] = { 0, 0 };
	uint32_t k;

	fx_open(&f);
	snprintf(pid1, sizeof pid1, "%s/memcached-ring1-%ld.pid", testenv_dir(), (long)getpid());
	snprintf(pid2, sizeof pid2, "%s/memcached-ring2-%ld.pid", testenv_dir(), (long)getpid());
	p1 = tcp_memcached(pid1);
	p2 = tcp_memcached(pid2);
	/* Listed p2 first: the ring must not depend on the order. */
	xasprintf(&servers, "127.0.0.1:%d 127.0.0.1:%d", p2, p1);
	ck_assert_int_eq(config_set(&f.cfg, "memcached.servers", servers, &cause), 0);
	cache_free(f.c);
	f.c = cache_new(&f.cfg, NULL);
	a = testenv_name("ra");
	for (i = 0; i < 20; i++) {
		u = testenv_name("ru");
		send_msg(&f, a, u, "ring");
		ck_assert_int_eq(cache_conversations(f.c, f.st, u, 5, &json), 0);
		free(json);
		k = tcp_gen_server(p1, p2, u);
		on[k]++;
		ck_assert_int_eq(tcp_has_summary(k == 0 ? p1 : p2, u), 1);
		ck_assert_int_eq(tcp_has_summary(k == 0 ? p2 : p1, u), 0);
		free(u);
	}
	ck_assert_int_gt(on[0], 0);
	ck_assert_int_gt(on[1], 0);
	testenv_sh("kill $(cat '%s') $(cat '%s')", pid1, pid2);
	free(servers);
	fx_close(&f);
	free(a);
}
END_TEST

/* "host:port,host:port" servers over TCP: two private memcacheds. */
START_TEST(test_tcp_servers)
{
	struct fx f;
	struct cache *tcp;
	char *a = testenv_name("ta"), *b = testenv_name("tb"), *json = NULL, *cause = NULL;
	char *servers = NULL, pid1[4096], pid2[4096], *v, *many[16] = { NULL };
	size_t i, on2;
	int p1, p2;

	fx_open(&f);
	send_msg(&f, a, b, "over tcp");
	snprintf(pid1, sizeof pid1, "%s/memcached-tcp1-%ld.pid", testenv_dir(), (long)getpid());
	snprintf(pid2, sizeof pid2, "%s/memcached-tcp2-%ld.pid", testenv_dir(), (long)getpid());
	p1 = tcp_memcached(pid1);
	p2 = tcp_memcached(pid2);
	xasprintf(&servers, "127.0.0.1:%d, 127.0.0.1:%d", p1, p2);
	ck_assert_int_eq(config_set(&f.cfg, "memcached.servers", servers, &cause), 0);
	tcp = cache_new(&f.cfg, NULL);
	ck_assert_int_eq(cache_conversations(tcp, f.st, b, 10, &json), 0);
	ck_assert_ptr_nonnull(strstr(json, "over tcp"));
	free(json);
	ck_assert_int_eq(cache_alive(tcp), 1);
	ck_assert_int_eq(cache_check(tcp), 1);
	/* Stored on one of the two, not in the UNIX-socket memcached of the stack. */
	ck_assert_int_eq(tcp_has_summary(p1, b) + tcp_has_summary(p2, b), 1);
	v = raw_summary(&f, b);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(cache_conversations(tcp, f.st, b, 10, &json), 0);
	ck_assert_ptr_nonnull(strstr(json, "over tcp"));
	free(json);

	/*
	 * A pipelined bump over both servers while one is stopped: the barrier must hear from every
	 * server an incr went to, so the lost bumps are seen (and journaled), whichever server the
	 * last key lives on.
	 */
	for (i = 0, on2 = 0; i < PARLEY_NITEMS(many); i++) {
		/* The last key on the server that keeps running: a barrier on it alone would pass. */
		do {
			free(many[i]);
			many[i] = testenv_name("tm");
		} while (i + 1 == PARLEY_NITEMS(many) && tcp_gen_server(p1, p2, many[i]) != 0);
		on2 += tcp_gen_server(p1, p2, many[i]) == 1;
	}
	ck_assert_uint_gt(on2, 0);
	testenv_sh("kill -STOP $(cat '%s')", pid2);
	cache_invalidate_many(tcp, (const char *const *)many, PARLEY_NITEMS(many));
	ck_assert_int_eq(cache_alive(tcp), 0);
	testenv_sh("kill -CONT $(cat '%s')", pid2);
	for (i = 0; i < PARLEY_NITEMS(many); i++)
		free(many[i]);

	cache_free(tcp);
	testenv_sh("kill $(cat '%s') $(cat '%s')", pid1, pid2);
	free(servers);
	fx_close(&f);
	free(a);
	free(b);
}
END_TEST

static Suite *
cache_suite(void)
{
	Suite *s = suite_create("cache");
	TCase *tc = tcase_create("summaries");
	TCase *tk = tcase_create("killed");
	TCase *ts = tcase_create("stopped");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_hit_served_from_memcached);
	tcase_add_test(tc, test_send_invalidates);
	tcase_add_test(tc, test_invalidate_many);
	tcase_add_test(tc, test_late_refill_is_ignored);
	tcase_add_test(tc, test_disabled);
	tcase_add_test(tc, test_tcp_servers);
	tcase_add_test(tc, test_pool_server_killed);
	tcase_add_test(tc, test_pool_ring_order);
	tcase_add_test(tc, test_pool_server_added);
	tcase_add_unchecked_fixture(tc, NULL, tcp_cleanup);
	suite_add_tcase(s, tc);

	/* One test per case: the unchecked teardown (in the parent) restores memcached even when
	 * the test failed half-way with memcached killed or stopped. */
	tcase_set_timeout(tk, 30);
	tcase_add_unchecked_fixture(tk, mc_restore, mc_restore);
	tcase_add_test(tk, test_memcached_killed);
	suite_add_tcase(s, tk);
	tcase_set_timeout(ts, 30);
	tcase_add_unchecked_fixture(ts, mc_restore, mc_restore);
	tcase_add_test(ts, test_memcached_stopped);
	tcase_add_test(ts, test_memcached_stopped_journal);
	tcase_add_test(ts, test_journal_no_queue);
	suite_add_tcase(s, ts);
	return s;
}

int
main(void)
{
	log_init("check_cache", LOG_LEVEL_ERROR, 0);
	return testenv_run(cache_suite());
}
