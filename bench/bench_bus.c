/* bench_bus.c - hint latency and rate between two processes on the notification bus. */
#include <sys/socket.h>
#include <sys/wait.h>

#include <errno.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "log.h"
#include "parley.h"
#include "xmalloc.h"

/*
 * bench_bus [DIR] [PINGS] [RATE] [BLAST]
 *
 * A child process (the receiver) and this one (the publisher) share a private bus directory (DIR;
 * "" or none: a new one under /tmp).
 *   1. ping-pong: PINGS round trips (publish "ping", wait for the child's "pong"); one-way
 *      latency measured by the child from a CLOCK_MONOTONIC stamp in the payload, and RTT/2.
 *   2. paced: RATE hints/s for one second, one-way latency and delivery at that load.
 *   3. blast: BLAST hints as fast as one thread can publish; publish rate and how many arrived
 *      (what a receiver's connection and our backlog for it cannot hold is dropped).
 * The child reports over a pipe, one line per phase.
 *
 * Peer, run right after the ping-pong: the same PINGS round trips over a plain
 * socketpair(AF_UNIX, SOCK_SEQPACKET) between this process and a second child, each side waiting
 * in poll() then reading, as a bus peer does: the kernel's floor for a hint between two
 * processes. Its RTT/2 and one-way percentiles are printed, then the ratios parley/peer.
 */

/* What the peer child sends and echoes: seq 0 asks for its report and ends it. */
struct peer_msg {
	uint64_t	seq;
	int64_t		stamp;
};

static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int
cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* "p50=.. p99=.. p999=.. max=.." in microseconds into buf; sorts v. */
static void
pct(int64_t *v, size_t n, char *buf, size_t size)
{
	if (n == 0) {
		snprintf(buf, size, "no samples");
		return;
	}
	qsort(v, n, sizeof *v, cmp64);
	snprintf(buf, size, "p50=%.1fus p99=%.1fus p999=%.1fus max=%.1fus (n=%zu)",
	    v[n / 2] / 1e3, v[n * 99 / 100] / 1e3, v[n * 999 / 1000] / 1e3, v[n - 1] / 1e3, n);
}

/* Wait up to ms for the bus fd to become readable. */
static void
wait_fd(struct bus *b, int ms)
{
	struct pollfd pfd = { .fd = bus_fd(b), .events = POLLIN };

	(void)poll(&pfd, 1, ms);
}

static void
publish_stamped(struct bus *b, const char *key, uint64_t seq)
{
	char stamp[32];
	int n = snprintf(stamp, sizeof stamp, "%lld", (long long)now_ns());

	(void)bus_publish(b, BUS_USER_EVENT, key, seq, stamp, (size_t)n);
}

/* The receiver: answer pings, record one-way latencies, count, report on request. */
static int
child(const char *dir, int out, size_t cap)
{
	int64_t *lat = xreallocarray(NULL, cap, sizeof *lat), t;
	size_t nlat = 0, nblast = 0;
	uint64_t reported = 0;
	struct bus_hint h;
	struct bus *b;
	char *cause, line[256], p[160];

	if ((b = bus_new(dir, &cause)) == NULL)
		fatal("child: %s", cause);
	if (write(out, "ready\n", 6) != 6)
		return 1;
	for (;;) {
		wait_fd(b, 1000);
		while (bus_recv(b, &h) == 0) {
			t = now_ns();
			if (strcmp(h.key, "ping") == 0) {
				if (nlat < cap)
					lat[nlat++] = t - strtoll(h.payload, NULL, 10);
				(void)bus_publish(b, BUS_USER_EVENT, "pong", h.seq, NULL, 0);
			} else if (strcmp(h.key, "lat") == 0) {
				if (nlat < cap)
					lat[nlat++] = t - strtoll(h.payload, NULL, 10);
			} else if (strcmp(h.key, "blast") == 0) {
				nblast++;
			} else if (strcmp(h.key, "report") == 0 && h.seq > reported) {
				reported = h.seq;
				pct(lat, nlat, p, sizeof p);
				snprintf(line, sizeof line, "%s received=%zu\n", p,
				    nlat > 0 ? nlat : nblast);
				if (write(out, line, strlen(line)) < 0)
					return 1;
				nlat = nblast = 0;
			} else if (strcmp(h.key, "quit") == 0) {
				bus_free(b);
				free(lat);
				return 0;
			}
		}
	}
}

/* Wait for fd to become readable, then read one datagram; -1 on error or end. */
static ssize_t
peer_read(int fd, void *buf, size_t size)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	if (poll(&pfd, 1, 1000) != 1)
		return -1;
	return read(fd, buf, size);
}

/* The peer child: echo every ping, record its one-way latency, report it when seq is 0. */
static int
peer_child(int fd, size_t cap)
{
	int64_t *lat = xreallocarray(NULL, cap, sizeof *lat);
	struct peer_msg m;
	size_t nlat = 0;
	char line[256];
	ssize_t n;

	while ((n = peer_read(fd, &m, sizeof m)) == (ssize_t)sizeof m) {
		if (m.seq == 0) {
			pct(lat, nlat, line, sizeof line);
			n = write(fd, line, strlen(line) + 1);
			break;
		}
		if (nlat < cap)
			lat[nlat++] = now_ns() - m.stamp;
		if (write(fd, &m, sizeof m) != (ssize_t)sizeof m)
			break;
	}
	free(lat);
	return n > 0 ? 0 : 1;
}

/* p50, p99 and p999 of a sorted array, microseconds. */
static void
pct3(const int64_t *v, size_t n, double out[3])
{
	out[0] = n > 0 ? v[n / 2] / 1e3 : 0;
	out[1] = n > 0 ? v[n * 99 / 100] / 1e3 : 0;
	out[2] = n > 0 ? v[n * 999 / 1000] / 1e3 : 0;
}

/* Print "ratio parley/peer WHAT: p50 x, p99 y, p999 z" (latency: above 1, Parley is slower). */
static void
print_ratio(const char *what, const double parley[3], const double peer[3])
{
	printf("  ratio parley/peer %s: p50 %.2f, p99 %.2f, p999 %.2f\n", what,
	    peer[0] > 0 ? parley[0] / peer[0] : 0, peer[1] > 0 ? parley[1] / peer[1] : 0,
	    peer[2] > 0 ? parley[2] / peer[2] : 0);
}

/*
 * The peer: pings round trips over a socketpair to a child that echoes; prints RTT/2 and the
 * child's one-way figures; fills rtt_p and oneway_p (microseconds) for the ratios.
 */
static void
peer_pingpong(long pings, double rtt_p[3], double oneway_p[3])
{
	int64_t *rtt = xreallocarray(NULL, (size_t)pings, sizeof *rtt), t0, start, t1;
	struct peer_msg m;
	char p[160], line[256];
	int sv[2], status;
	long i, lost = 0;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0)
		fatal("socketpair: %s", strerror(errno));
	if ((pid = fork()) == -1)
		fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		_exit(peer_child(sv[1], (size_t)pings + 16));
	}
	close(sv[1]);
	start = now_ns();
	for (i = 0; i < pings; i++) {
		t0 = now_ns();
		m = (struct peer_msg){ (uint64_t)i + 1, t0 };
		if (write(sv[0], &m, sizeof m) != (ssize_t)sizeof m ||
		    peer_read(sv[0], &m, sizeof m) != (ssize_t)sizeof m || m.seq != (uint64_t)i + 1)
			lost++;
		rtt[i] = (now_ns() - t0) / 2;
	}
	t1 = now_ns();
	pct(rtt, (size_t)pings, p, sizeof p);
	pct3(rtt, (size_t)pings, rtt_p);
	printf("peer ping-pong (socketpair SOCK_SEQPACKET): %ld round trips in %.2f s "
	    "(%.0f round trips/s), lost %ld\n", pings, (t1 - start) / 1e9,
	    pings / ((t1 - start) / 1e9), lost);
	printf("  RTT/2   : %s\n", p);
	m = (struct peer_msg){ 0, 0 };
	if (write(sv[0], &m, sizeof m) != (ssize_t)sizeof m ||
	    peer_read(sv[0], line, sizeof line - 1) <= 0)
		snprintf(line, sizeof line, "no report");
	line[sizeof line - 1] = '\0';
	printf("  one-way : %s\n", line);
	oneway_p[0] = oneway_p[1] = oneway_p[2] = 0;
	(void)sscanf(line, "p50=%lfus p99=%lfus p999=%lfus", &oneway_p[0], &oneway_p[1],
	    &oneway_p[2]);
	close(sv[0]);
	waitpid(pid, &status, 0);
	free(rtt);
}

/* Ask the child for its report of a phase (re-asking: a hint may be dropped). */
static void
report(struct bus *b, int in, uint64_t phase, char *line, size_t size)
{
	struct pollfd pfd = { .fd = in, .events = POLLIN };
	struct bus_hint h;
	ssize_t n;
	int i;

	for (i = 0; i < 100; i++) {
		while (bus_recv(b, &h) == 0)
			;
		(void)bus_publish(b, BUS_USER_EVENT, "report", phase, NULL, 0);
		if (poll(&pfd, 1, 100) == 1) {
			n = read(in, line, size - 1);
			line[n > 0 ? n : 0] = '\0';
			line[strcspn(line, "\n")] = '\0';
			return;
		}
	}
	snprintf(line, size, "no report");
}

int
main(int argc, char **argv)
{
	const char *dir = argc > 1 && argv[1][0] != '\0' ? argv[1] : NULL;
	long pings = argc > 2 ? atol(argv[2]) : 20000;
	long rate = argc > 3 ? atol(argv[3]) : 20000;
	long blast = argc > 4 ? atol(argv[4]) : 200000;
	char tmpl[] = "/tmp/bench_bus.XXXXXX", *cause, line[256], p[160];
	int64_t *rtt, t0, t1, start, lost = 0;
	double prtt[3], poneway[3], qrtt[3], qoneway[3];
	struct bus_stats st;
	struct bus_hint h;
	struct bus *b;
	int fds[2], got;
	pid_t pid;
	long i;

	log_init("bench_bus", LOG_LEVEL_WARN, 0);
	if (dir == NULL && (dir = mkdtemp(tmpl)) == NULL)
		fatal("mkdtemp: %s", strerror(errno));
	if (pipe(fds) != 0)
		fatal("pipe: %s", strerror(errno));
	if ((pid = fork()) == 0) {
		close(fds[0]);
		_exit(child(dir, fds[1], (size_t)(pings > rate ? pings : rate) + 16));
	}
	close(fds[1]);
	if (read(fds[0], line, 6) != 6)
		fatal("child did not start");
	if ((b = bus_new(dir, &cause)) == NULL)
		fatal("%s", cause);

	/* 1. ping-pong */
	rtt = xreallocarray(NULL, (size_t)pings, sizeof *rtt);
	start = now_ns();
	for (i = 0; i < pings; i++) {
		t0 = now_ns();
		publish_stamped(b, "ping", (uint64_t)i + 1);
		for (got = 0; !got; ) {
			while (!got && bus_recv(b, &h) == 0)
				got = strcmp(h.key, "pong") == 0 && h.seq == (uint64_t)i + 1;
			if (!got) {
				if (now_ns() - t0 > 1000000000LL) {
					lost++;
					break;
				}
				wait_fd(b, 100);
			}
		}
		rtt[i] = (now_ns() - t0) / 2;
	}
	t1 = now_ns();
	pct(rtt, (size_t)pings, p, sizeof p);
	pct3(rtt, (size_t)pings, prtt);
	printf("ping-pong: %ld round trips in %.2f s (%.0f round trips/s), lost %lld\n", pings,
	    (t1 - start) / 1e9, pings / ((t1 - start) / 1e9), (long long)lost);
	printf("  RTT/2   : %s\n", p);
	report(b, fds[0], 1, line, sizeof line);
	printf("  one-way : %s\n", line);
	poneway[0] = poneway[1] = poneway[2] = 0;
	(void)sscanf(line, "p50=%lfus p99=%lfus p999=%lfus", &poneway[0], &poneway[1], &poneway[2]);

	/* 1b. the peer, same count */
	peer_pingpong(pings, qrtt, qoneway);
	print_ratio("RTT/2  ", prtt, qrtt);
	print_ratio("one-way", poneway, qoneway);

	/* 2. paced */
	start = now_ns();
	for (i = 0; i < rate; i++) {
		while (now_ns() < start + i * (1000000000LL / rate))
			sched_yield();
		publish_stamped(b, "lat", (uint64_t)i + 1);
		while (bus_recv(b, &h) == 0)
			;
	}
	usleep(100000);
	report(b, fds[0], 2, line, sizeof line);
	printf("paced %ld hints/s for 1 s, one-way: %s\n", rate, line);

	/* 3. blast */
	bus_stats(b, &st);
	start = now_ns();
	for (i = 0; i < blast; i++) {
		(void)bus_publish(b, BUS_USER_EVENT, "blast", (uint64_t)i, "x", 1);
		if ((i & 63) == 0)
			while (bus_recv(b, &h) == 0)
				;
	}
	t1 = now_ns();
	usleep(100000);
	report(b, fds[0], 3, line, sizeof line);
	printf("blast: %ld publishes in %.3f s = %.0f hints/s published (to self + 1 peer); child %s\n",
	    blast, (t1 - start) / 1e9, blast / ((t1 - start) / 1e9), strstr(line, "received="));

	(void)bus_publish(b, BUS_USER_EVENT, "quit", 0, NULL, 0);
	usleep(100000);
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	bus_stats(b, &st);
	printf("publisher stats: sent=%llu dropped=%llu stale=%llu peers=%zu\n",
	    (unsigned long long)st.sent, (unsigned long long)st.dropped,
	    (unsigned long long)st.stale, st.peers);
	bus_free(b);
	free(rtt);
	if (dir == tmpl)
		rmdir(tmpl);
	return 0;
}
