/* check_redis.c - the Redis bridge against the stack's real redis-server: hints between "hosts", subscriptions, outages. */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "bus.h"
#include "config.h"
#include "parley.h"
#include "redis.h"
#include "testenv.h"
#include "xmalloc.h"

/* A bridge's config: the stack's Redis, a prefix of this test alone, quick clocks. */
static void
rcfg(struct config *cfg, const char *prefix, const char *password)
{
	char *url, *cause = NULL;
	const char *sock = getenv("PARLEY_TEST_REDIS_SOCKET");

	ck_assert_msg(sock != NULL, "PARLEY_TEST_REDIS_SOCKET not set: run through with-services");
	testenv_config(cfg);
	xasprintf(&url, "unix:%s", sock);
	ck_assert_int_eq(config_set(cfg, "redis.url", url, &cause), 0);
	ck_assert_int_eq(config_set(cfg, "redis.password", password != NULL ? password :
	    getenv("PARLEY_TEST_REDIS_PASSWORD"), &cause), 0);
	ck_assert_int_eq(config_set(cfg, "redis.prefix", prefix, &cause), 0);
	ck_assert_int_eq(config_set(cfg, "redis.fallback_interval", "1", &cause), 0);
	ck_assert_int_eq(config_set(cfg, "redis.linger_ms", "100", &cause), 0);
	ck_assert_int_eq(config_set(cfg, "redis.timeout_ms", "300", &cause), 0);
	free(url);
}

/* A directory standing for one host's bus directory (its host-id file names the host). */
static char *
host_dir(void)
{
	char *d;

	xasprintf(&d, "%s/rhost.XXXXXX", testenv_dir());
	ck_assert_ptr_nonnull(mkdtemp(d));
	return d;
}

static struct redis *
bridge(struct config *cfg, const char *dir)
{
	char *cause = NULL, id[BUS_HOST_ID_MAX + 1];
	struct redis *r;

	ck_assert_msg(bus_host_id(dir, NULL, id, sizeof id, &cause) == 0, "bus_host_id: %s", cause);
	r = redis_new(cfg, id, &cause);

	ck_assert_msg(r != NULL, "redis_new: %s", cause != NULL ? cause : "?");
	return r;
}

/*
 * Wait up to ms for a hint of topic (and key, when not NULL) from r; others are skipped and
 * counted in *lost when they are BUS_LOST. 0 found (in *h), -1 not within ms.
 */
static int
wait_hint(struct redis *r, enum bus_topic topic, const char *key, int ms, struct bus_hint *h,
    int *lost)
{
	int64_t end = parley_mono_ms() + ms;
	struct pollfd pfd = { .fd = redis_fd(r), .events = POLLIN };

	for (;;) {
		while (redis_recv(r, h) == 0) {
			if (h->topic == BUS_LOST && lost != NULL)
				(*lost)++;
			if (h->topic == topic && (key == NULL || strcmp(h->key, key) == 0))
				return 0;
		}
		if (parley_mono_ms() >= end)
			return -1;
		(void)poll(&pfd, 1, (int)(end - parley_mono_ms()));
	}
}

/* Wait until pred-like figure: both connections up and at least n channels subscribed. */
static void
wait_channels(struct redis *r, size_t n, int ms)
{
	struct redis_stats st;
	int64_t end = parley_mono_ms() + ms;

	do {
		redis_stats(r, &st);
		if (st.connected && st.channels >= n)
			return;
		usleep(10000);
	} while (parley_mono_ms() < end);
	ck_abort_msg("not subscribed to %zu channels within %d ms (connected %d, %zu)", n, ms,
	    st.connected, st.channels);
}

/* A plain client of the stack's Redis for looking at the server's side. */
static redisContext *
admin(void)
{
	redisContext *c = redisConnectUnix(getenv("PARLEY_TEST_REDIS_SOCKET"));
	redisReply *rep;

	ck_assert_msg(c != NULL && c->err == 0, "connect to redis");
	rep = redisCommand(c, "AUTH %s", getenv("PARLEY_TEST_REDIS_PASSWORD"));
	ck_assert_msg(rep != NULL && rep->type != REDIS_REPLY_ERROR, "AUTH");
	freeReplyObject(rep);
	return c;
}

/* How many clients the server has subscribed to channel. */
static long long
numsub(redisContext *c, const char *channel)
{
	redisReply *rep = redisCommand(c, "PUBSUB NUMSUB %s", channel);
	long long n;

	ck_assert_msg(rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2, "NUMSUB");
	n = rep->element[1]->integer;
	freeReplyObject(rep);
	return n;
}

/* Two users whose slots differ among nslots. */
static void
two_slots(char **a, char **b, unsigned nslots)
{
	*a = testenv_name("ra");
	do {
		*b = testenv_name("rb");
		if (redis_slot(*a, nslots) != redis_slot(*b, nslots))
			return;
		free(*b);
	} while (1);
}

START_TEST(t_slot)
{
	/* The same user lands in the same slot on every host; slots spread. */
	unsigned seen[16] = { 0 }, i, used = 0;
	char name[32];

	ck_assert_uint_eq(redis_slot("alice", 1024), redis_slot("alice", 1024));
	for (i = 0; i < 1000; i++) {
		snprintf(name, sizeof name, "user%u", i);
		seen[redis_slot(name, 16)]++;
	}
	for (i = 0; i < 16; i++)
		used += seen[i] > 0;
	ck_assert_uint_eq(used, 16);
}
END_TEST

START_TEST(t_bad_url)
{
	struct config cfg;
	char *cause = NULL;
	const char *bad[] = { "http://x", "redis://", "redis://h:0", "redis://h:99999", "unix:rel",
	    "redis://u:p@h:6379", "redis://h:6379/x" };
	size_t i;

	testenv_config(&cfg);
	for (i = 0; i < PARLEY_NITEMS(bad); i++) {
		ck_assert_int_eq(config_set(&cfg, "redis.url", bad[i], &cause), 0);
		ck_assert_msg(redis_new(&cfg, NULL, &cause) == NULL, "%s accepted", bad[i]);
		ck_assert_ptr_nonnull(cause);
		free(cause);
		cause = NULL;
	}
	/* A user without a password, a prefix that would cut channel names: refused too. */
	ck_assert_int_eq(config_set(&cfg, "redis.url", "redis://h", &cause), 0);
	ck_assert_int_eq(config_set(&cfg, "redis.user", "u", &cause), 0);
	ck_assert_ptr_null(redis_new(&cfg, "h", &cause));
	ck_assert_ptr_nonnull(strstr(cause, "redis.user needs redis.password"));
	free(cause);
	ck_assert_int_eq(config_set(&cfg, "redis.password", "p", &cause), 0);
	ck_assert_int_eq(config_set(&cfg, "redis.prefix",
	    "0123456789012345678901234567890123456789012345678", &cause), 0);
	ck_assert_ptr_null(redis_new(&cfg, "h", &cause));
	ck_assert_ptr_nonnull(strstr(cause, "redis.prefix is longer than 48 bytes"));
	free(cause);
	config_clear(&cfg);
}
END_TEST

START_TEST(t_cross_host)
{
	/* Host A listens for user u and room m; host B publishes; A gets B's hints, not its own. */
	struct config cfg;
	struct bus_hint h;
	struct redis *a, *a2, *b;
	struct redis_stats st;
	char *da = host_dir(), *db = host_dir(), *u, *other, *room = testenv_name("room");
	char *prefix = testenv_name("p");
	int i;

	rcfg(&cfg, prefix, NULL);
	two_slots(&u, &other, (unsigned)cfg.redis_slots);
	a = bridge(&cfg, da);
	a2 = bridge(&cfg, da);		/* a second process of host A */
	b = bridge(&cfg, db);
	redis_listen(a, BUS_USER_EVENT, u, 1);
	redis_listen(a, BUS_ROOM, room, 1);
	wait_channels(a, 3, 3000);	/* all, u's slot, the room */
	wait_channels(b, 1, 3000);

	ck_assert_int_eq(redis_publish(b, BUS_USER_EVENT, u, 42, "{\"content\":\"secret\"}", 20), 0);
	ck_assert_int_eq(wait_hint(a, BUS_USER_EVENT, u, 2000, &h, NULL), 0);
	ck_assert_uint_eq(h.seq, 42);
	ck_assert_uint_eq(h.len, 0);	/* content never on Redis by default */

	ck_assert_int_eq(redis_publish(b, BUS_USER_EPHEMERAL, u, 0, "{\"type\":\"typing\"}", 17), 0);
	ck_assert_int_eq(wait_hint(a, BUS_USER_EPHEMERAL, u, 2000, &h, NULL), 0);
	ck_assert_str_eq(h.payload, "{\"type\":\"typing\"}");

	ck_assert_int_eq(redis_publish(b, BUS_ROOM, room, 7, "{\"text\":\"hi\"}", 13), 0);
	ck_assert_int_eq(wait_hint(a, BUS_ROOM, room, 2000, &h, NULL), 0);
	ck_assert_uint_eq(h.seq, 7);
	ck_assert_uint_eq(h.len, 0);

	/* Nobody on A listens in other's slot: A never receives it. */
	ck_assert_int_eq(redis_publish(b, BUS_USER_EVENT, other, 5, NULL, 0), 0);
	/* A's own host's hints come back from Redis and are ignored (the local bus carried them). */
	ck_assert_int_eq(redis_publish(a2, BUS_USER_EVENT, u, 43, NULL, 0), 0);
	for (i = 0; i < 200; i++) {
		redis_stats(a, &st);
		if (st.own >= 1)
			break;
		usleep(10 * 1000);
	}
	ck_assert_int_eq(redis_publish(b, BUS_USER_EVENT, u, 44, NULL, 0), 0);
	ck_assert_int_eq(wait_hint(a, BUS_USER_EVENT, NULL, 2000, &h, NULL), 0);
	ck_assert_str_eq(h.key, u);
	ck_assert_uint_eq(h.seq, 44);
	redis_stats(a, &st);
	ck_assert_uint_ge(st.own, 1);
	ck_assert_uint_eq(st.received, 4);
	ck_assert_int_eq(st.connected, 1);
	for (i = 0; i < 100; i++) {	/* the answers to b's PUBLISHes may trail a's messages */
		redis_stats(b, &st);
		if (st.published == 5)
			break;
		usleep(10 * 1000);
	}
	ck_assert_uint_eq(st.published, 5);

	redis_free(a);
	redis_free(a2);
	redis_free(b);
	config_clear(&cfg);
	free(u);
	free(other);
	free(room);
	free(prefix);
	free(da);
	free(db);
}
END_TEST

/*
 * A message as another host would publish it (the format in redis.c): origin, time, record,
 * HMAC-SHA256 keyed with HMAC(secret, "parley redis bridge 1"). Returns its length.
 */
static size_t
forge_topic(unsigned char *msg, const char *secret, int64_t ts, enum bus_topic topic,
    const char *user, const char *payload)
{
	unsigned char key[32];
	unsigned int n = 32;
	size_t len;
	int i;

	memset(msg, 0xab, 8);
	for (i = 0; i < 8; i++)
		msg[8 + i] = (unsigned char)((uint64_t)ts >> (8 * i));
	len = 16 + bus_encode(msg + 16, topic, user, strlen(user), 0, payload, strlen(payload));
	ck_assert_ptr_nonnull(HMAC(EVP_sha256(), secret, (int)strlen(secret),
	    (const unsigned char *)"parley redis bridge 1", 21, key, &n));
	ck_assert_ptr_nonnull(HMAC(EVP_sha256(), key, 32, msg, len, msg + len, &n));
	return len + 32;
}

static size_t
forge(unsigned char *msg, const char *secret, int64_t ts, const char *user, const char *payload)
{
	return forge_topic(msg, secret, ts, BUS_USER_EPHEMERAL, user, payload);
}

/*
 * A captured "hints lost" (validly signed, inside the 60 s window) replayed 50 times at once: in
 * the next 1.5 s the owner re-reads everything once or twice (at most once per
 * redis.fallback_interval, 1 s here), not 50 times (finding 8).
 */
START_TEST(t_lost_replay)
{
	struct config cfg;
	struct redis *a;
	struct bus_hint h;
	struct redis_stats st;
	redisContext *c = admin();
	unsigned char msg[512];
	char *da = host_dir(), *prefix = testenv_name("p"), *all;
	int64_t t0;
	size_t n;
	int i, full = 0;

	rcfg(&cfg, prefix, NULL);
	xasprintf(&all, "%s:all", prefix);
	a = bridge(&cfg, da);
	wait_channels(a, 1, 3000);
	usleep(1200 * 1000);	/* the connect's own full re-read is out */
	while (redis_recv(a, &h) == 0)
		;
	n = forge_topic(msg, cfg.jwt_secret, parley_now_ms(), BUS_LOST, "", "");
	t0 = parley_mono_ms();
	for (i = 0; i < 50; i++)
		freeReplyObject(redisCommand(c, "PUBLISH %s %b", all, msg, n));
	while (parley_mono_ms() - t0 < 1500) {
		while (redis_recv(a, &h) == 0) {
			if (h.topic == BUS_LOST && h.key[0] == '\0')
				full++;
		}
		usleep(10 * 1000);
	}
	redis_stats(a, &st);
	ck_assert_uint_eq(st.received, 50);
	ck_assert_msg(full >= 1 && full <= 2, "50 replays: %d full re-reads in 1.5 s", full);
	redis_free(a);
	redisFree(c);
	config_clear(&cfg);
	free(all);
	free(prefix);
	free(da);
}
END_TEST

START_TEST(t_forged)
{
	/*
	 * Whoever can PUBLISH on Redis but lacks auth.jwt_secret cannot make a host push an event:
	 * a wrong key or a message older than a minute is refused and counted; the right key is
	 * taken (the test knows the stack's secret).
	 */
	struct config cfg;
	struct redis *a;
	struct redis_stats st;
	struct bus_hint h;
	redisContext *c = admin();
	redisReply *rep;
	unsigned char msg[BUS_DGRAM_MAX + 64];
	char *da = host_dir(), *u = testenv_name("rf"), *prefix = testenv_name("p"), *chan;
	char *cause = NULL;
	size_t n;
	int i;

	rcfg(&cfg, prefix, NULL);
	xasprintf(&chan, "%s:u:%u", prefix, redis_slot(u, (unsigned)cfg.redis_slots));
	a = bridge(&cfg, da);
	redis_listen(a, BUS_USER_EVENT, u, 1);
	wait_channels(a, 2, 3000);
	n = forge(msg, "another-secret-0123456789abcdef0123", parley_now_ms(), u,
	    "{\"type\":\"typing\",\"from\":\"mallory\"}");
	freeReplyObject(redisCommand(c, "PUBLISH %s %b", chan, msg, n));
	n = forge(msg, cfg.jwt_secret, parley_now_ms() - 120000, u,
	    "{\"type\":\"typing\",\"from\":\"replayed\"}");
	freeReplyObject(redisCommand(c, "PUBLISH %s %b", chan, msg, n));
	msg[20] ^= 1;	/* a record changed after signing */
	freeReplyObject(redisCommand(c, "PUBLISH %s %b", chan, msg, n));
	n = forge(msg, cfg.jwt_secret, parley_now_ms(), u, "{\"type\":\"typing\",\"from\":\"bob\"}");
	rep = redisCommand(c, "PUBLISH %s %b", chan, msg, n);
	ck_assert_msg(rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1, "PUBLISH");
	freeReplyObject(rep);
	ck_assert_int_eq(wait_hint(a, BUS_USER_EPHEMERAL, u, 2000, &h, NULL), 0);
	ck_assert_str_eq(h.payload, "{\"type\":\"typing\",\"from\":\"bob\"}");
	for (i = 0; i < 100; i++) {
		redis_stats(a, &st);
		if (st.forged == 3)
			break;
		usleep(10 * 1000);
	}
	ck_assert_uint_eq(st.forged, 3);
	ck_assert_uint_eq(st.received, 1);
	redis_free(a);
	/* redis.max_age = 5: 10 s old is a replay, 3 s old is not. */
	ck_assert_int_eq(config_set(&cfg, "redis.max_age", "5", &cause), 0);
	a = bridge(&cfg, da);
	redis_listen(a, BUS_USER_EVENT, u, 1);
	wait_channels(a, 2, 3000);
	n = forge(msg, cfg.jwt_secret, parley_now_ms() - 10000, u, "{\"type\":\"typing\",\"from\":\"old\"}");
	freeReplyObject(redisCommand(c, "PUBLISH %s %b", chan, msg, n));
	n = forge(msg, cfg.jwt_secret, parley_now_ms() - 3000, u, "{\"type\":\"typing\",\"from\":\"ok\"}");
	freeReplyObject(redisCommand(c, "PUBLISH %s %b", chan, msg, n));
	ck_assert_int_eq(wait_hint(a, BUS_USER_EPHEMERAL, u, 2000, &h, NULL), 0);
	ck_assert_str_eq(h.payload, "{\"type\":\"typing\",\"from\":\"ok\"}");
	redis_stats(a, &st);
	ck_assert_uint_eq(st.forged, 1);
	redis_free(a);
	redisFree(c);
	config_clear(&cfg);
	free(chan);
	free(u);
	free(prefix);
	free(da);
}
END_TEST

START_TEST(t_inline_content)
{
	/* redis.inline_content = yes: a new message's event travels whole. */
	struct config cfg;
	struct bus_hint h;
	struct redis *a, *b;
	char *da = host_dir(), *db = host_dir(), *u = testenv_name("ri"), *cause = NULL;
	char *prefix = testenv_name("p"), *big;

	rcfg(&cfg, prefix, NULL);
	ck_assert_int_eq(config_set(&cfg, "redis.inline_content", "yes", &cause), 0);
	a = bridge(&cfg, da);
	b = bridge(&cfg, db);
	redis_listen(a, BUS_USER_EVENT, u, 1);
	wait_channels(a, 2, 3000);
	wait_channels(b, 1, 3000);
	ck_assert_int_eq(redis_publish(b, BUS_USER_EVENT, u, 3, "{\"e\":1}", 7), 0);
	ck_assert_int_eq(wait_hint(a, BUS_USER_EVENT, u, 2000, &h, NULL), 0);
	ck_assert_str_eq(h.payload, "{\"e\":1}");
	/* An ephemeral event too big to travel is not published at all (not as an empty one). */
	big = xmalloc(BUS_PAYLOAD_MAX + 2);
	memset(big, 'x', BUS_PAYLOAD_MAX + 1);
	big[BUS_PAYLOAD_MAX + 1] = '\0';
	ck_assert_int_eq(redis_publish(b, BUS_USER_EPHEMERAL, u, 0, big, BUS_PAYLOAD_MAX + 1), 0);
	ck_assert_int_eq(redis_publish(b, BUS_USER_EPHEMERAL, u, 0, "{\"t\":2}", 7), 0);
	ck_assert_int_eq(wait_hint(a, BUS_USER_EPHEMERAL, u, 2000, &h, NULL), 0);
	ck_assert_str_eq(h.payload, "{\"t\":2}");
	free(big);
	redis_free(a);
	redis_free(b);
	config_clear(&cfg);
	free(u);
	free(prefix);
	free(da);
	free(db);
}
END_TEST

START_TEST(t_subscription_follows_listeners)
{
	/* A slot is subscribed while it has a listener, unsubscribed redis.linger_ms after the last. */
	struct config cfg;
	struct redis *a;
	struct bus_hint h;
	redisContext *c = admin();
	char *da = host_dir(), *u = testenv_name("rs"), *chan, *rchan, *room = testenv_name("rr");
	char *prefix = testenv_name("p");
	int i, lost = 0;

	rcfg(&cfg, prefix, NULL);
	xasprintf(&chan, "%s:u:%u", prefix, redis_slot(u, (unsigned)cfg.redis_slots));
	xasprintf(&rchan, "%s:r:%s", prefix, room);
	a = bridge(&cfg, da);
	wait_channels(a, 1, 3000);
	ck_assert_int_eq(numsub(c, chan), 0);
	redis_listen(a, BUS_USER_EVENT, u, 1);
	redis_listen(a, BUS_USER_EVENT, u, 1);
	redis_listen(a, BUS_ROOM, room, 1);
	wait_channels(a, 3, 3000);
	ck_assert_int_eq(numsub(c, chan), 1);
	ck_assert_int_eq(numsub(c, rchan), 1);
	/* A completed subscription asks its listeners to re-read (what came before it took effect). */
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 2000, &h, &lost), 0);

	redis_listen(a, BUS_USER_EVENT, u, -1);
	usleep(400 * 1000);
	ck_assert_int_eq(numsub(c, chan), 1);	/* one listener left */
	redis_listen(a, BUS_USER_EVENT, u, -1);
	redis_listen(a, BUS_ROOM, room, -1);
	for (i = 0; i < 100 && (numsub(c, chan) != 0 || numsub(c, rchan) != 0); i++)
		usleep(20 * 1000);
	ck_assert_int_eq(numsub(c, chan), 0);
	ck_assert_int_eq(numsub(c, rchan), 0);

	redis_free(a);
	redisFree(c);
	config_clear(&cfg);
	free(u);
	free(chan);
	free(rchan);
	free(room);
	free(prefix);
	free(da);
}
END_TEST

/*
 * No re-read storm: new room joins and new slots each ask only their own listeners to re-read
 * (a room: BUS_ROOM with seq 0; a slot: BUS_LOST "slot" with the slot), never every waiter.
 * Full re-reads (BUS_LOST with an empty key, rechecks_total) stay bounded.
 */
START_TEST(t_recheck_scoped)
{
	enum { N = 12 };
	struct config cfg;
	struct redis *a;
	struct redis_stats st;
	struct bus_hint h;
	char *da = host_dir(), *prefix = testenv_name("p"), *rooms[N], *users[N];
	int i, k, full = 0, room_hints = 0, slot_hints = 0;
	uint64_t before;
	unsigned slot;

	rcfg(&cfg, prefix, NULL);
	a = bridge(&cfg, da);
	wait_channels(a, 1, 3000);
	usleep(1200 * 1000);	/* the connect's own full re-read is out */
	while (redis_recv(a, &h) == 0)
		;
	redis_stats(a, &st);
	before = st.rechecks;
	for (i = 0; i < N; i++) {
		rooms[i] = testenv_name("rq");
		users[i] = NULL;
		/* A user in a slot not yet held (so each is a new subscription). */
		do {
			free(users[i]);
			users[i] = testenv_name("uq");
			slot = redis_slot(users[i], (unsigned)cfg.redis_slots);
			for (k = 0; k < i && redis_slot(users[k], (unsigned)cfg.redis_slots) != slot; k++)
				;
		} while (k < i);
		redis_listen(a, BUS_ROOM, rooms[i], 1);
		wait_channels(a, 2 + 2 * (size_t)i, 3000);
		redis_listen(a, BUS_USER_EVENT, users[i], 1);
		wait_channels(a, 3 + 2 * (size_t)i, 3000);
		usleep(20 * 1000);
	}
	/* Collect what the owner was asked; a tick (100 ms) is enough for the last ones. */
	for (k = 0; k < 30; k++) {
		while (redis_recv(a, &h) == 0) {
			if (h.topic == BUS_LOST && h.key[0] == '\0')
				full++;
			else if (h.topic == BUS_ROOM && h.seq == 0 && h.len == 0)
				room_hints++;
			else if (h.topic == BUS_LOST && strcmp(h.key, "slot") == 0)
				slot_hints++;
		}
		usleep(20 * 1000);
	}
	redis_stats(a, &st);
	ck_assert_msg(st.rechecks - before <= 1 && full <= 1,
	    "%d room joins and %d new slots made %llu full re-reads (%d seen)", N, N,
	    (unsigned long long)(st.rechecks - before), full);
	ck_assert_int_eq(room_hints, N);
	ck_assert_int_eq(slot_hints, N);
	redis_free(a);
	config_clear(&cfg);
	for (i = 0; i < N; i++) {
		free(rooms[i]);
		free(users[i]);
	}
	free(prefix);
	free(da);
}
END_TEST

START_TEST(t_acl_user)
{
	/* redis.user: AUTH user password, with the least ACL docs/scaling.md gives. */
	struct config cfg;
	struct redis *a, *b;
	struct bus_hint h;
	redisContext *c = admin();
	redisReply *rep;
	char *da = host_dir(), *db = host_dir(), *u = testenv_name("ru"), *cause = NULL;
	char *prefix = testenv_name("p"), *user = testenv_name("acl"), *pat;

	xasprintf(&pat, "&%s:*", prefix);
	rep = redisCommand(c, "ACL SETUSER %s on >pw-%s resetchannels %s +publish +subscribe "
	    "+unsubscribe +ping +auth", user, user, pat);
	ck_assert_msg(rep != NULL && rep->type == REDIS_REPLY_STATUS, "ACL SETUSER");
	freeReplyObject(rep);
	free(pat);
	xasprintf(&pat, "pw-%s", user);
	rcfg(&cfg, prefix, pat);
	ck_assert_int_eq(config_set(&cfg, "redis.user", user, &cause), 0);
	a = bridge(&cfg, da);
	b = bridge(&cfg, db);
	redis_listen(a, BUS_USER_EVENT, u, 1);
	wait_channels(a, 2, 3000);
	wait_channels(b, 1, 3000);
	ck_assert_int_eq(redis_publish(b, BUS_USER_EVENT, u, 5, NULL, 0), 0);
	ck_assert_int_eq(wait_hint(a, BUS_USER_EVENT, u, 2000, &h, NULL), 0);
	redis_free(a);
	redis_free(b);
	rep = redisCommand(c, "ACL DELUSER %s", user);
	freeReplyObject(rep);
	redisFree(c);
	config_clear(&cfg);
	free(pat);
	free(u);
	free(user);
	free(prefix);
	free(da);
	free(db);
}
END_TEST

START_TEST(t_acl_denied)
{
	/* An ACL user that may not subscribe: never up for long, the owner rechecks MySQL. */
	struct config cfg;
	struct redis *a;
	struct bus_hint h;
	redisContext *c = admin();
	redisReply *rep;
	char *da = host_dir(), *prefix = testenv_name("p"), *user = testenv_name("acl"), *pw;
	char *cause = NULL;
	int lost = 0;

	rep = redisCommand(c, "ACL SETUSER %s on >pw-%s resetchannels +publish +subscribe "
	    "+unsubscribe +ping +auth", user, user);
	ck_assert_msg(rep != NULL && rep->type == REDIS_REPLY_STATUS, "ACL SETUSER");
	freeReplyObject(rep);
	xasprintf(&pw, "pw-%s", user);
	rcfg(&cfg, prefix, pw);
	ck_assert_int_eq(config_set(&cfg, "redis.user", user, &cause), 0);
	a = bridge(&cfg, da);
	redis_listen(a, BUS_USER_EVENT, "x", 1);
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 1500, &h, &lost), 0);
	while (redis_recv(a, &h) == 0)
		;
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 1500, &h, &lost), 0);
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 1500, &h, &lost), 0);
	redis_free(a);
	rep = redisCommand(c, "ACL DELUSER %s", user);
	freeReplyObject(rep);
	redisFree(c);
	config_clear(&cfg);
	free(pw);
	free(user);
	free(prefix);
	free(da);
}
END_TEST

START_TEST(t_auth_failure)
{
	/* A wrong password: never connected, counted, and the owner rechecks MySQL meanwhile. */
	struct config cfg;
	struct redis *a;
	struct redis_stats st;
	struct bus_hint h;
	char *da = host_dir(), *prefix = testenv_name("p");
	int lost = 0;
	int64_t t0;

	rcfg(&cfg, prefix, "not-the-password");
	a = bridge(&cfg, da);
	t0 = parley_mono_ms();
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 1500, &h, &lost), 0);
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 1500, &h, &lost), 0);
	ck_assert_int_le(parley_mono_ms() - t0, 2500);
	redis_stats(a, &st);
	ck_assert_int_eq(st.connected, 0);
	ck_assert_uint_ge(st.auth_failures, 1);
	ck_assert_uint_ge(st.rechecks, 2);
	ck_assert_str_eq(redis_state(a), "down");
	/* Publishing while down never blocks and is counted. */
	ck_assert_int_eq(redis_publish(a, BUS_USER_EVENT, "x", 1, NULL, 0), 0);
	usleep(300 * 1000);
	redis_stats(a, &st);
	ck_assert_uint_ge(st.dropped, 1);
	redis_free(a);
	config_clear(&cfg);
	free(prefix);
	free(da);
}
END_TEST

START_TEST(t_outage)
{
	/*
	 * redis-server killed: both bridges say down, the listener's owner gets a BUS_LOST every
	 * fallback interval; started again: both reconnect and resubscribe by themselves, and
	 * hints flow again.
	 */
	struct config cfg;
	struct redis *a, *b;
	struct redis_stats st;
	struct bus_hint h;
	char *da = host_dir(), *db = host_dir(), *u = testenv_name("ro"), *prefix = testenv_name("p");
	int lost = 0, i;
	int64_t t0, t1;

	rcfg(&cfg, prefix, NULL);
	a = bridge(&cfg, da);
	b = bridge(&cfg, db);
	redis_listen(a, BUS_USER_EVENT, u, 1);
	wait_channels(a, 2, 3000);
	wait_channels(b, 1, 3000);
	usleep(200 * 1000);	/* the recheck of the completed subscription */
	while (redis_recv(a, &h) == 0)
		;

	testenv_redis_stop();
	for (i = 0; i < 100; i++) {
		redis_stats(a, &st);
		if (!st.connected)
			break;
		usleep(20 * 1000);
	}
	ck_assert_int_eq(st.connected, 0);
	/* Rechecks, one fallback interval apart (the first may have waited while the script ran). */
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 1500, &h, &lost), 0);
	while (redis_recv(a, &h) == 0)
		;
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 1500, &h, &lost), 0);
	t0 = parley_mono_ms();
	ck_assert_int_eq(wait_hint(a, BUS_LOST, NULL, 1500, &h, &lost), 0);
	t1 = parley_mono_ms();
	ck_assert_int_ge(t1 - t0, 800);
	ck_assert_int_le(t1 - t0, 1300);
	ck_assert_int_eq(redis_publish(b, BUS_USER_EVENT, u, 9, NULL, 0), 0);	/* lost: b is down */

	testenv_redis_start();
	wait_channels(a, 2, 5000);
	wait_channels(b, 1, 5000);
	redis_stats(a, &st);
	ck_assert_uint_ge(st.reconnects, 1);
	ck_assert_int_eq(redis_publish(b, BUS_USER_EVENT, u, 10, NULL, 0), 0);
	ck_assert_int_eq(wait_hint(a, BUS_USER_EVENT, u, 2000, &h, NULL), 0);
	ck_assert_uint_eq(h.seq, 10);

	redis_free(a);
	redis_free(b);
	config_clear(&cfg);
	free(u);
	free(prefix);
	free(da);
	free(db);
}
END_TEST

/* The pid of the stack's redis-server now (it changes with a restart). */
static pid_t
redis_pid(void)
{
	char *path, buf[32] = "";
	FILE *f;

	xasprintf(&path, "%s/redis.pid", testenv_dir());
	ck_assert_ptr_nonnull(f = fopen(path, "r"));
	ck_assert_ptr_nonnull(fgets(buf, sizeof buf, f));
	fclose(f);
	free(path);
	return (pid_t)atoi(buf);
}

START_TEST(t_slow_redis)
{
	/*
	 * A stopped redis-server (SIGSTOP: accepts, never answers): publishers never wait; past
	 * the commands in flight and redis.queue, hints are dropped and counted; once it runs
	 * again, hints flow.
	 */
	struct config cfg;
	struct redis *a;
	struct redis_stats st;
	struct bus_hint h;
	char *da = host_dir(), *db = host_dir(), *prefix = testenv_name("p"), *cause = NULL;
	char *u = testenv_name("rq");
	struct redis *b;
	pid_t pid = redis_pid();
	int i, full = 0;
	int64_t t0;

	rcfg(&cfg, prefix, NULL);
	ck_assert_int_eq(config_set(&cfg, "redis.queue", "16", &cause), 0);
	ck_assert_int_eq(config_set(&cfg, "redis.timeout_ms", "5000", &cause), 0);
	a = bridge(&cfg, da);
	b = bridge(&cfg, db);
	redis_listen(b, BUS_USER_EVENT, u, 1);
	wait_channels(a, 1, 3000);
	wait_channels(b, 2, 3000);
	ck_assert_int_eq(kill(pid, SIGSTOP), 0);
	t0 = parley_mono_ms();
	for (i = 0; i < 20000; i++) {
		if (redis_publish(a, BUS_USER_EVENT, "q", (uint64_t)i, NULL, 0) != 0) {
			ck_assert_int_eq(errno, EAGAIN);
			full++;
		}
	}
	ck_assert_int_lt(parley_mono_ms() - t0, 2000);
	ck_assert_int_ge(full, 20000 - 8192 - 16);
	redis_stats(a, &st);
	ck_assert_uint_ge(st.dropped, (uint64_t)full);
	ck_assert_int_eq(kill(pid, SIGCONT), 0);
	for (i = 0; i < 300 && redis_publish(a, BUS_USER_EVENT, u, 77, NULL, 0) != 0; i++)
		usleep(10 * 1000);	/* the queue drains */
	ck_assert_int_lt(i, 300);
	ck_assert_int_eq(wait_hint(b, BUS_USER_EVENT, u, 3000, &h, NULL), 0);
	ck_assert_int_eq(redis_publish(a, BUS_LOST, "q", 1, NULL, 0), -1);
	ck_assert_int_eq(errno, EINVAL);
	redis_free(a);
	redis_free(b);
	config_clear(&cfg);
	free(prefix);
	free(u);
	free(da);
	free(db);
}
END_TEST

/* Every test starts with the stack's redis-server up (a failed t_outage may have left it down). */
static void
redis_up(void)
{
	testenv_redis_start();
}

static Suite *
redis_suite(void)
{
	Suite *s = suite_create("redis");
	TCase *tc = tcase_create("bridge");

	tcase_set_timeout(tc, 30);
	tcase_add_checked_fixture(tc, redis_up, NULL);
	tcase_add_test(tc, t_slot);
	tcase_add_test(tc, t_bad_url);
	tcase_add_test(tc, t_cross_host);
	tcase_add_test(tc, t_forged);
	tcase_add_test(tc, t_lost_replay);
	tcase_add_test(tc, t_inline_content);
	tcase_add_test(tc, t_subscription_follows_listeners);
	tcase_add_test(tc, t_recheck_scoped);
	tcase_add_test(tc, t_acl_user);
	tcase_add_test(tc, t_acl_denied);
	tcase_add_test(tc, t_auth_failure);
	tcase_add_test(tc, t_slow_redis);
	tcase_add_test(tc, t_outage);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return testenv_run(redis_suite());
}
