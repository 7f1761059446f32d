/* busprobe.c - a tiny bus peer for the bus tests: listen for hints and print them, or publish one. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "chat.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "protocol.h"
#include "store.h"

/*
 * busprobe DIR listen N [TIMEOUT_S]
 *	bind the bus, print "ready", then print each hint as "topic key seq len payload" and exit 0
 *	after N hints, or 1 after TIMEOUT_S (default 10) seconds.
 * busprobe DIR count N TIMEOUT_S DELAY_MS
 *	bind, print "ready", read nothing for DELAY_MS, then receive until N hints have arrived and
 *	print "count=N ordered=0|1" (ordered: their seqs were 0, 1, ..., N-1); exit 1 on timeout.
 * busprobe DIR publish TOPIC KEY SEQ [PAYLOAD]
 *	bind, publish one hint, print "sent=N dropped=N stale=N peers=N", exit 0 (1 if some peer
 *	could not take it).
 * busprobe DIR lose CONFIG N FROM TO CONTENT CMID
 *	bind, publish N hints for the key "~flood" (a stopped peer's backlog overflows), then send
 *	one message FROM -> TO through libparley (MySQL of CONFIG, hints on this bus, so a stopped
 *	peer's hint for it is dropped too), print "dropped=N id=ID", and keep flushing the
 *	backlogs (and the BUS_LOST markers owed) for up to 60 s, until killed.
 */
static int
usage(void)
{
	fprintf(stderr, "usage: busprobe DIR listen N [TIMEOUT_S]\n"
	    "       busprobe DIR count N TIMEOUT_S DELAY_MS\n"
	    "       busprobe DIR publish TOPIC KEY SEQ [PAYLOAD]\n"
	    "       busprobe DIR lose CONFIG N FROM TO CONTENT CMID\n");
	return 2;
}

static int
probe_listen(struct bus *b, long want, long timeout_s)
{
	struct pollfd pfd = { .fd = bus_fd(b), .events = POLLIN };
	int64_t deadline = parley_mono_ms() + timeout_s * 1000;
	struct bus_hint h;
	long got = 0;
	int left;

	printf("ready\n");
	fflush(stdout);
	while (got < want) {
		while (got < want && bus_recv(b, &h) == 0) {
			printf("%d %s %llu %zu %s\n", (int)h.topic, h.key,
			    (unsigned long long)h.seq, h.len, h.payload);
			got++;
		}
		fflush(stdout);
		if (got >= want)
			break;
		left = (int)(deadline - parley_mono_ms());
		if (left <= 0)
			return 1;
		if (poll(&pfd, 1, left) == -1 && errno != EINTR)
			return 1;
	}
	return 0;
}

/* Receive want hints after a delay: a burst must wait for us, not be lost. */
static int
probe_count(struct bus *b, long want, long timeout_s, long delay_ms)
{
	struct pollfd pfd = { .fd = bus_fd(b), .events = POLLIN };
	int64_t deadline;
	struct bus_hint h;
	long got = 0;
	int ordered = 1, left;

	printf("ready\n");
	fflush(stdout);
	usleep((useconds_t)delay_ms * 1000);
	deadline = parley_mono_ms() + timeout_s * 1000;
	while (got < want) {
		while (got < want && bus_recv(b, &h) == 0) {
			if (h.seq != (uint64_t)got)
				ordered = 0;
			got++;
		}
		if (got >= want)
			break;
		left = (int)(deadline - parley_mono_ms());
		if (left <= 0)
			break;
		if (poll(&pfd, 1, left) == -1 && errno != EINTR)
			break;
	}
	printf("count=%ld ordered=%d\n", got, ordered);
	fflush(stdout);
	return got == want ? 0 : 1;
}

/* Make a stopped peer lose the hint of a real commit, then serve our backlogs as a daemon would. */
static int
probe_lose(struct bus *b, char **argv)
{
	struct pollfd pfd = { .fd = bus_fd(b), .events = POLLIN };
	struct proto_send req = { .to = argv[3], .content = argv[4], .client_msg_id = argv[5] };
	struct store_send_res res;
	struct bus_stats st;
	struct bus_hint h;
	struct config cfg;
	struct chat ch;
	char *cause = NULL;
	int64_t end;
	long i, n = atol(argv[1]);

	if (config_load(&cfg, argv[0], &cause) != 0) {
		fprintf(stderr, "busprobe: %s\n", cause);
		free(cause);
		return 2;
	}
	for (i = 0; i < n; i++)
		(void)bus_publish(b, BUS_USER_EVENT, "~flood", (uint64_t)i, NULL, 0);
	chat_init(&ch, &cfg, b, NULL);
	if (chat_send(&ch, argv[2], &req, &res) != 0) {
		fprintf(stderr, "busprobe: send: %s\n", strerror(errno));
		chat_clear(&ch);
		config_clear(&cfg);
		return 1;
	}
	bus_stats(b, &st);
	printf("dropped=%llu id=%llu\n", (unsigned long long)st.dropped,
	    (unsigned long long)res.server_msg_id);
	fflush(stdout);
	store_send_res_clear(&res);
	chat_clear(&ch);
	end = parley_mono_ms() + 60000;
	while (parley_mono_ms() < end) {
		while (bus_recv(b, &h) == 0)
			;
		(void)poll(&pfd, 1, 100);
	}
	config_clear(&cfg);
	return 0;
}

int
main(int argc, char **argv)
{
	struct bus_stats st;
	struct bus *b;
	char *cause;
	int rc;

	log_init("busprobe", LOG_LEVEL_WARN, 0);
	if (argc < 3)
		return usage();
	if ((b = bus_new(argv[1], &cause)) == NULL) {
		fprintf(stderr, "busprobe: %s\n", cause);
		free(cause);
		return 2;
	}
	if (strcmp(argv[2], "listen") == 0 && argc >= 4) {
		rc = probe_listen(b, atol(argv[3]), argc >= 5 ? atol(argv[4]) : 10);
	} else if (strcmp(argv[2], "count") == 0 && argc >= 6) {
		rc = probe_count(b, atol(argv[3]), atol(argv[4]), atol(argv[5]));
	} else if (strcmp(argv[2], "publish") == 0 && argc >= 6) {
		const char *payload = argc >= 7 ? argv[6] : NULL;

		rc = bus_publish(b, (enum bus_topic)atoi(argv[3]), argv[4],
		    strtoull(argv[5], NULL, 10), payload, payload != NULL ? strlen(payload) : 0);
		bus_stats(b, &st);
		printf("sent=%llu dropped=%llu stale=%llu peers=%zu\n",
		    (unsigned long long)st.sent, (unsigned long long)st.dropped,
		    (unsigned long long)st.stale, st.peers);
		rc = rc == 0 ? 0 : 1;
	} else if (strcmp(argv[2], "lose") == 0 && argc >= 9) {
		rc = probe_lose(b, argv + 3);
	} else {
		rc = usage();
	}
	bus_free(b);
	return rc;
}
