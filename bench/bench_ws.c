/* bench_ws.c - load generator for parley-ws: idle memory per connection, delivery latency, CPU. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <dirent.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "store.h"
#include "xmalloc.h"

/*
 * A minimal WebSocket client over epoll (no library: the point is many cheap sockets). Phases:
 *  1. open --conns connections from several loopback source addresses (127.0.0.2..), each with a
 *     URL token of its own user, wait for every "ready", then read the daemon's RSS
 *     (/proc/PID/status) against its baseline before the first connection;
 *  2. the first 2 * --pairs connections sync and the senders send one message per pair at
 *     --rate messages/s in total for --secs seconds; each receiver notes send-to-frame latency;
 *     the daemon's CPU time (/proc/PID/stat) over the phase gives CPU per 1,000 deliveries.
 *
 * Without --port it starts its own parley-ws ($PARLEY_BUILDDIR/parley-ws) from $PARLEY_CONFIG
 * (the test harness's stack: bench/run) on a free port with a private bus directory, and stops
 * it after its phases. Defaults: 10,000 connections, 100 pairs, 2,000 messages/s, 10 s.
 *
 * Then (unless --no-peer) the same phases with the same parameters run against the peer,
 * peer_ws (built next to this program by make bench: a bare lws relay, no storage), started
 * from the same configuration file on a port of its own, and the ratios parley/peer of memory
 * per connection, latency p50/p99 and CPU per 1,000 messages are printed (bench/README.md).
 */

#define BENCH_WINDOW_US	(100 * 1000)

struct bconn {
	int		 fd;
	int		 state;		/* 0 handshake, 1 open, 2 ready, -1 dead */
	int		 role;		/* 0 idle, 1 sender, 2 receiver */
	char		*rx;
	size_t		 rxlen, rxcap;
	char		 user[PARLEY_ID_MAX + 1];
};

struct bench {
	struct bconn	*c;
	int		 n;
	int		 ep;
	int		 ready;
	int		 dead;
	uint64_t	 acks, ack_errors, delivered;
	char		 first_error[160];	/* the first error ack, as received */
	int64_t		*lat;	/* microseconds */
	size_t		 nlat, caplat;
	/* The worst latency of each BENCH_WINDOW_US of the send phase, by send time: shows stalls. */
	int64_t		 send_t0;
	int64_t		*winmax;
	size_t		 nwin;
	const char	*host;
	int		 port;
	int		 mysqld_pid;	/* its CPU is measured too when known (0: not) */
	char		 run[16];
	/* --room: listeners spread over two daemons (ports[i % 2]), comments tracked by number. */
	int		 room_mode;
	int		 ports[2];
	int		 nlisten;
	uint64_t	 pongs, room_frames;
	int64_t		*room_sent;	/* send time of comment k (us), 0 when not sent */
	int64_t		*room_last;	/* latest arrival of comment k at a listener */
	int		*room_got;	/* listeners that got comment k */
	size_t		 room_max;
	/* --group: the same arrays by message number, and each message's ack time. */
	int		 group_mode;
	int64_t		*group_ack;
};

/* One server under test (parley-ws or the peer) and its figures. */
struct side {
	int		 pid, port;
	int		 ready, dead;
	long		 rss0, rss1;	/* KiB */
	double		 kib_per_conn;
	int64_t		 sent;
	uint64_t	 acks, ack_errors, delivered;
	double		 p50, p99;	/* ms; -1 without latencies */
	double		 cpu_ms;	/* per 1,000 delivered; -1 without deliveries */
};

static int64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long
proc_rss_kb(int pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof path, "/proc/%d/status", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, "VmRSS:", 6) == 0)
			kb = strtol(line + 6, NULL, 10);
	}
	fclose(f);
	return kb;
}

/* utime + stime of pid in clock ticks. */
static long long
proc_cpu_ticks(int pid)
{
	char path[64], buf[1024], *p;
	unsigned long ut, st;
	FILE *f;
	int i;

	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	if (fgets(buf, sizeof buf, f) == NULL) {
		fclose(f);
		return -1;
	}
	fclose(f);
	if ((p = strrchr(buf, ')')) == NULL)
		return -1;
	p += 2;
	for (i = 0; i < 11; i++)	/* state .. cmajflt: fields 3..13 */
		p = strchr(p, ' ') + 1;
	if (sscanf(p, "%lu %lu", &ut, &st) != 2)
		return -1;
	return (long long)(ut + st);
}

/* CPU ticks of pid's threads, summed by thread name (comm), into names/ticks (at most max). */
#define BENCH_THREAD_KINDS 8
struct thread_cpu {
	int		 n;
	char		 name[BENCH_THREAD_KINDS][16];
	long long	 ticks[BENCH_THREAD_KINDS];
	int		 count[BENCH_THREAD_KINDS];
};

static void
proc_thread_cpu(int pid, struct thread_cpu *tc)
{
	char path[320], buf[1024], comm[16], *p;
	unsigned long ut, st;
	struct dirent *e;
	DIR *d;
	FILE *f;
	int i, k;

	memset(tc, 0, sizeof *tc);
	snprintf(path, sizeof path, "/proc/%d/task", pid);
	if ((d = opendir(path)) == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/proc/%d/task/%s/stat", pid, e->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		p = fgets(buf, sizeof buf, f);
		fclose(f);
		if (p == NULL || (p = strchr(buf, '(')) == NULL)
			continue;
		snprintf(comm, sizeof comm, "%.*s", (int)(strcspn(p + 1, ")")), p + 1);
		if ((p = strrchr(buf, ')')) == NULL)
			continue;
		p += 2;
		for (i = 0; i < 11 && p != NULL; i++)
			if ((p = strchr(p, ' ')) != NULL)
				p++;
		if (p == NULL || sscanf(p, "%lu %lu", &ut, &st) != 2)
			continue;
		for (k = 0; k < tc->n && strcmp(tc->name[k], comm) != 0; k++)
			;
		if (k == tc->n) {
			if (tc->n == BENCH_THREAD_KINDS)
				continue;
			snprintf(tc->name[tc->n++], sizeof tc->name[0], "%s", comm);
		}
		tc->ticks[k] += (long long)(ut + st);
		tc->count[k]++;
	}
	closedir(d);
}

/* The CPU of each kind of thread between a and b, per 1,000 deliveries. */
static void
print_thread_cpu(const struct thread_cpu *a, const struct thread_cpu *b, uint64_t delivered,
    const char *pfx, const char *unit)
{
	long long d;
	int i, k;

	printf("%sdaemon CPU by thread, ms per %s:", pfx, unit);
	for (i = 0; i < b->n; i++) {
		d = b->ticks[i];
		for (k = 0; k < a->n; k++) {
			if (strcmp(a->name[k], b->name[i]) == 0)
				d -= a->ticks[k];
		}
		printf("%s %s (%d) %.1f", i > 0 ? ";" : "", b->name[i], b->count[i],
		    (double)d * 1000.0 / (double)sysconf(_SC_CLK_TCK) / ((double)delivered / 1000.0));
	}
	printf("\n");
}

/* One masked client frame (mask key 0: valid, and the payload needs no copy). */
static int
ws_send(struct bconn *c, int opcode, const char *p, size_t len)
{
	unsigned char hdr[14];
	size_t h = 0;
	char *buf;
	ssize_t w;

	hdr[h++] = (unsigned char)(0x80 | opcode);
	if (len < 126)
		hdr[h++] = (unsigned char)(0x80 | len);
	else {
		hdr[h++] = 0x80 | 126;
		hdr[h++] = (unsigned char)(len >> 8);
		hdr[h++] = (unsigned char)len;
	}
	memset(hdr + h, 0, 4);
	h += 4;
	buf = xmalloc(h + len);
	memcpy(buf, hdr, h);
	memcpy(buf + h, p, len);
	w = send(c->fd, buf, h + len, MSG_NOSIGNAL);
	free(buf);
	return w == (ssize_t)(h + len) ? 0 : -1;
}

/* --room: a pong (join confirmed) or a comment "t=SENT_US k=N" reaching a listener. */
static void
on_room_text(struct bench *b, const char *p)
{
	const char *t;
	char *e;
	long long k;
	int64_t now;

	if (strncmp(p, "{\"type\":\"pong\"", 14) == 0) {
		b->pongs++;
		return;
	}
	if (strncmp(p, "{\"type\":\"room_message\"", 22) != 0 ||
	    (t = strstr(p, "\"text\":\"t=")) == NULL || (t = strstr(t, " k=")) == NULL)
		return;
	k = strtoll(t + 3, &e, 10);
	if (k < 0 || (size_t)k >= b->room_max)
		return;
	now = now_us();
	b->room_frames++;
	b->room_got[k]++;
	if (now > b->room_last[k])
		b->room_last[k] = now;
}

/* --group: the sender's acks (client_msg_id "gK") and members' frames of message K. */
static void
on_group_text(struct bench *b, struct bconn *c, const char *p)
{
	const char *t;
	long long k;
	int64_t now = now_us();

	if (strncmp(p, "{\"type\":\"ack\"", 13) == 0) {
		if ((t = strstr(p, "\"client_msg_id\":\"g")) == NULL)
			return;
		k = strtoll(t + 18, NULL, 10);
		if (k >= 0 && (size_t)k < b->room_max && strstr(p, "\"status\":\"success\"") != NULL)
			b->group_ack[k] = now;
		else if (b->ack_errors++ == 0)
			snprintf(b->first_error, sizeof b->first_error, "%.150s", p);
		return;
	}
	if (c->role == 1 || strncmp(p, "{\"type\":\"new_message\"", 21) != 0 ||
	    (t = strstr(p, "\"content\":\"t=")) == NULL || (t = strstr(t, " k=")) == NULL)
		return;
	k = strtoll(t + 3, NULL, 10);
	if (k < 0 || (size_t)k >= b->room_max)
		return;
	b->room_frames++;
	b->room_got[k]++;
	if (now > b->room_last[k])
		b->room_last[k] = now;
}

static void
on_text(struct bench *b, struct bconn *c, const char *p, size_t len)
{
	const char *t;
	int64_t sent;

	if (c->state == 1 && strstr(p, "\"type\":\"ready\"") != NULL) {
		c->state = 2;
		b->ready++;
		return;
	}
	if (b->group_mode) {
		on_group_text(b, c, p);
		return;
	}
	if (strncmp(p, "{\"type\":\"ack\"", 13) == 0) {
		if (strstr(p, "\"status\":\"success\"") != NULL)
			b->acks++;
		else if (b->ack_errors++ == 0)
			snprintf(b->first_error, sizeof b->first_error, "%.*s", (int)len, p);
		return;
	}
	if (b->room_mode) {
		on_room_text(b, p);
		return;
	}
	if (c->role != 2 || strncmp(p, "{\"type\":\"new_message\"", 21) != 0)
		return;
	if ((t = strstr(p, "\"content\":\"t=")) == NULL)
		return;
	sent = strtoll(t + 13, NULL, 10);
	b->delivered++;
	if (b->nlat == b->caplat) {
		b->caplat = b->caplat ? b->caplat * 2 : 65536;
		b->lat = xreallocarray(b->lat, b->caplat, sizeof *b->lat);
	}
	b->lat[b->nlat++] = now_us() - sent;
	if (sent >= b->send_t0 && (size_t)((sent - b->send_t0) / BENCH_WINDOW_US) < b->nwin &&
	    b->winmax[(sent - b->send_t0) / BENCH_WINDOW_US] < now_us() - sent)
		b->winmax[(sent - b->send_t0) / BENCH_WINDOW_US] = now_us() - sent;
}

/* Parse what arrived: the 101 answer, then unmasked server frames. */
static void
on_data(struct bench *b, struct bconn *c)
{
	size_t off = 0, need, plen, h;
	unsigned char *u;
	char *e, *txt;
	int i;

	if (c->state == 0) {
		if ((e = memmem(c->rx, c->rxlen, "\r\n\r\n", 4)) == NULL)
			return;
		if (strncmp(c->rx, "HTTP/1.1 101", 12) != 0) {
			c->state = -1;
			return;
		}
		off = (size_t)(e + 4 - c->rx);
		c->state = 1;
	}
	for (;;) {
		if (c->rxlen - off < 2)
			break;
		u = (unsigned char *)c->rx + off;
		plen = u[1] & 0x7f;
		h = 2;
		if (plen == 126) {
			if (c->rxlen - off < 4)
				break;
			plen = ((size_t)u[2] << 8) | u[3];
			h = 4;
		} else if (plen == 127) {
			if (c->rxlen - off < 10)
				break;
			plen = 0;
			for (i = 0; i < 8; i++)
				plen = (plen << 8) | u[2 + i];
			h = 10;
		}
		need = h + plen;
		if (c->rxlen - off < need)
			break;
		switch (u[0] & 0x0f) {
		case 0x1:
			txt = xstrndup((char *)u + h, plen);
			on_text(b, c, txt, plen);
			free(txt);
			break;
		case 0x9:
			ws_send(c, 0xA, (char *)u + h, plen);
			break;
		case 0x8:
			c->state = -1;
			break;
		}
		off += need;
	}
	memmove(c->rx, c->rx + off, c->rxlen - off);
	c->rxlen -= off;
}

static void
conn_dead(struct bench *b, struct bconn *c)
{
	if (c->fd >= 0) {
		epoll_ctl(b->ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
	}
	c->fd = -1;
	if (c->state != -2)
		b->dead++;
	c->state = -2;
}

static void
poll_once(struct bench *b, int timeout_ms)
{
	struct epoll_event ev[256];
	struct bconn *c;
	ssize_t r;
	int n, i;

	n = epoll_wait(b->ep, ev, 256, timeout_ms);
	for (i = 0; i < n; i++) {
		c = &b->c[ev[i].data.u32];
		if (c->fd < 0)
			continue;
		for (;;) {
			if (c->rxcap - c->rxlen < 4096) {
				c->rxcap = c->rxcap ? c->rxcap * 2 : 8192;
				c->rx = xrealloc(c->rx, c->rxcap);
			}
			r = recv(c->fd, c->rx + c->rxlen, c->rxcap - c->rxlen - 1, MSG_DONTWAIT);
			if (r > 0) {
				c->rxlen += (size_t)r;
				continue;
			}
			if (r == 0 || (errno != EAGAIN && errno != EINTR))
				conn_dead(b, c);
			break;
		}
		if (c->fd >= 0) {
			on_data(b, c);
			if (c->state == -1)
				conn_dead(b, c);
			/* An idle connection keeps no buffer: the daemon's side is what is measured, but 10k x 8 KiB here adds up. */
			if (c->rxlen == 0 && c->rxcap > 8192) {
				free(c->rx);
				c->rx = NULL;
				c->rxcap = 0;
			}
		}
	}
}

static int
conn_open(struct bench *b, int i, const char *secret)
{
	struct bconn *c = &b->c[i];
	struct sockaddr_in src, dst;
	struct epoll_event ev;
	char req[1024], *tok;
	int one = 1, n;

	snprintf(c->user, sizeof c->user, "bench_%s_%d", b->run, i);
	if ((c->fd = socket(AF_INET, SOCK_STREAM, 0)) == -1)
		return -1;
	memset(&src, 0, sizeof src);
	src.sin_family = AF_INET;
	src.sin_addr.s_addr = htonl(0x7f000002 + (uint32_t)(i % 8));	/* 127.0.0.2 .. 127.0.0.9 */
	if (bind(c->fd, (struct sockaddr *)&src, sizeof src) == -1)
		return -1;
	memset(&dst, 0, sizeof dst);
	dst.sin_family = AF_INET;
	dst.sin_port = htons((uint16_t)(b->room_mode && i < b->nlisten ? b->ports[i % 2] :
	    b->port));
	inet_pton(AF_INET, b->host, &dst.sin_addr);
	if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) == -1)
		return -1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	tok = auth_mint(secret, c->user, NULL, parley_now_ms() / 1000, 7200);
	n = snprintf(req, sizeof req, "GET /ws?access_token=%s HTTP/1.1\r\nHost: %s:%d\r\n"
	    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parley.v1\r\n\r\n", tok, b->host,
	    b->port);
	free(tok);
	if (send(c->fd, req, (size_t)n, MSG_NOSIGNAL) != n)
		return -1;
	memset(&ev, 0, sizeof ev);
	ev.events = EPOLLIN;
	ev.data.u32 = (uint32_t)i;
	return epoll_ctl(b->ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static int
cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

static int
free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	int fd, port;

	fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) != 0)
		fatal("free port: %s", strerror(errno));
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* Run bin with argv, its output appended to logpath; it dies with the bench. Returns the pid. */
static pid_t
spawn(const char *bin, char *const argv[], const char *logpath)
{
	pid_t pid;
	int fd;

	if ((pid = fork()) == -1)
		fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);	/* a bench that dies takes its daemon along */
		if ((fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644)) >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(bin, argv);
		_exit(127);
	}
	return pid;
}

/*
 * Our own parley-ws: the harness's config without its [bus], [ws], [actor] and [log] sections
 * (keys may not be set twice), plus ours, in dir. Returns the pid; *cfgpath is the written file.
 */
static pid_t
daemon_start(const char *dir, const char *base, int port, int conns, int workers, char **cfgpath,
    const char *busdir)
{
	char line[1024], *bin, *bdir, *logpath;
	const char *skip[] = { "[bus]", "[ws]", "[actor]", "[log]" }, *extra;
	char *argv[4];
	FILE *in, *out;
	int skipping = 0, i;
	pid_t pid;

	if ((in = fopen(base, "r")) == NULL)
		fatal("bench config: %s", strerror(errno));
	xasprintf(cfgpath, "%s/parley.conf", dir);
	if ((out = fopen(*cfgpath, "w")) == NULL)
		fatal("%s: %s", *cfgpath, strerror(errno));
	while (fgets(line, sizeof line, in) != NULL) {
		if (line[0] == '[') {
			skipping = 0;
			for (i = 0; i < (int)PARLEY_NITEMS(skip); i++)
				skipping |= strncmp(line, skip[i], strlen(skip[i])) == 0;
		}
		if (!skipping)
			fputs(line, out);
	}
	fclose(in);
	/* Every connection comes from one of 8 loopback addresses: ws.max_per_ip must not bite. */
	if (busdir != NULL)
		fprintf(out, "\n[bus]\ndir = %s\n", busdir);
	else
		fprintf(out, "\n[bus]\ndir = %s/bus\n", dir);
	/* $PARLEY_BENCH_WS: more [ws] settings for an experiment, e.g. "send_window_us = 500". */
	extra = getenv("PARLEY_BENCH_WS");
	fprintf(out, "[ws]\n%s%slisten = 127.0.0.1\nport = %d\n"
	    "max_connections = %d\nmax_per_ip = %d\n[actor]\nworkers = %d\n[log]\nlevel = warn\n",
	    extra != NULL ? extra : "", extra != NULL ? "\n" : "", port, conns + 100, conns + 100,
	    workers);
	fclose(out);
	bdir = getenv("PARLEY_BUILDDIR");
	xasprintf(&bin, "%s/parley-ws", bdir != NULL ? bdir : ".");
	xasprintf(&logpath, "%s/parley-ws.log", dir);
	argv[0] = "parley-ws";
	argv[1] = "--config";
	argv[2] = *cfgpath;
	argv[3] = NULL;
	pid = spawn(bin, argv, logpath);
	free(logpath);
	free(bin);
	return pid;
}

/* The peer (peer_ws, next to this program) on port, from the same configuration file. */
static pid_t
peer_start(const char *dir, const char *cfgpath, int port)
{
	char self[4096], portarg[16], *bin, *logpath, *slash;
	char *argv[6];
	ssize_t n;
	pid_t pid;

	if ((n = readlink("/proc/self/exe", self, sizeof self - 1)) == -1)
		fatal("/proc/self/exe: %s", strerror(errno));
	self[n] = '\0';
	if ((slash = strrchr(self, '/')) != NULL)
		*slash = '\0';
	xasprintf(&bin, "%s/peer_ws", self);
	if (access(bin, X_OK) != 0)
		fatal("%s: %s (make bench builds it)", bin, strerror(errno));
	xasprintf(&logpath, "%s/peer_ws.log", dir);
	snprintf(portarg, sizeof portarg, "%d", port);
	argv[0] = "peer_ws";
	argv[1] = "--config";
	argv[2] = (char *)(uintptr_t)cfgpath;
	argv[3] = "--port";
	argv[4] = portarg;
	argv[5] = NULL;
	pid = spawn(bin, argv, logpath);
	free(logpath);
	free(bin);
	return pid;
}

/* Wait until the daemon listens (or died). */
static void
daemon_wait(const char *name, pid_t pid, int port)
{
	struct sockaddr_in a;
	int i, fd, st;

	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (i = 0; i < 200; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			fatal("%s exited at start (status %d)", name, st);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
			close(fd);
			return;
		}
		close(fd);
		usleep(50000);
	}
	fatal("%s did not listen on port %d", name, port);
}

static void
daemon_stop(pid_t pid)
{
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
}

/* The three windows of the send phase with the worst latency: a stall shows as a cluster. */
static void
print_worst_windows(const struct bench *b, const char *pfx)
{
	size_t best[3], i, k, n = b->nwin < 3 ? b->nwin : 3;

	printf("%sworst %d ms windows of the send phase (offset: max latency):", pfx,
	    BENCH_WINDOW_US / 1000);
	for (k = 0; k < n; k++) {
		best[k] = b->nwin;
		for (i = 0; i < b->nwin; i++) {
			if ((k > 0 && i == best[0]) || (k > 1 && i == best[1]))
				continue;
			if (best[k] == b->nwin || b->winmax[i] > b->winmax[best[k]])
				best[k] = i;
		}
		printf("%s +%.1f s: %.2f ms", k > 0 ? ";" : "",
		    (double)best[k] * BENCH_WINDOW_US / 1e6, b->winmax[best[k]] / 1000.0);
	}
	printf("\n");
}

/*
 * Open connections 0..n-1 (b->c and b->ep made) and wait up to 120 s for each to be ready or
 * dead; the seconds that took.
 */
static double
conns_open(struct bench *b, int n, const char *secret)
{
	int64_t t0 = now_us();
	int i;

	b->c = xcalloc((size_t)n, sizeof *b->c);
	b->ep = epoll_create1(0);
	for (i = 0; i < n; i++) {
		if (conn_open(b, i, secret) != 0)
			fatal("connection %d: %s", i, strerror(errno));
		if (i % 200 == 199)
			while (b->ready + b->dead < i - 1000)
				poll_once(b, 10);
	}
	while (b->ready + b->dead < n && now_us() - t0 < 120 * 1000000LL)
		poll_once(b, 50);
	return (double)(now_us() - t0) / 1e6;
}

/* Close connections 0..n-1 and free what conns_open made. */
static void
conns_close(struct bench *b, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		if (b->c[i].fd >= 0)
			close(b->c[i].fd);
		free(b->c[i].rx);
	}
	free(b->c);
	b->c = NULL;
	close(b->ep);
}

/*
 * Sends k = 0, 1, ... at rate per second for secs seconds (at most max of them), polling all the
 * while: send(b, k, arg) sends number k. The count sent.
 */
static int64_t
paced_sends(struct bench *b, int rate, int secs, int64_t max,
    void (*send)(struct bench *, int64_t k, const void *arg), const void *arg)
{
	int64_t next = now_us(), end = next + (int64_t)secs * 1000000, k = 0;
	double per_tick = rate / 1000.0, owed = 0;

	while (now_us() < end) {
		poll_once(b, 0);
		if (now_us() < next) {
			poll_once(b, 1);
			continue;
		}
		next += 1000;
		owed += per_tick;
		while (owed >= 1 && k < max) {
			owed -= 1;
			send(b, k++, arg);
		}
	}
	return k;
}

/* The per-message arrays of the room and group phases, for rate * secs messages. */
static void
room_alloc(struct bench *b, int rate, int secs)
{
	b->room_max = (size_t)rate * (size_t)secs + 16;
	b->room_sent = xcalloc(b->room_max, sizeof *b->room_sent);
	b->room_last = xcalloc(b->room_max, sizeof *b->room_last);
	b->room_got = xcalloc(b->room_max, sizeof *b->room_got);
}

/* Phase 2 of bench_side: message k from sender k % pairs to its receiver. */
static void
side_send(struct bench *b, int64_t k, const void *arg)
{
	int pairs = *(const int *)arg;
	struct bconn *sc = &b->c[k % pairs];
	char msg[256];
	int n;

	n = snprintf(msg, sizeof msg, "{\"type\":\"send_message\",\"client_msg_id\":\"m%" PRId64 "\","
	    "\"to\":\"%s\",\"content\":\"t=%" PRId64 "\"}", k, b->c[pairs + k % pairs].user, now_us());
	if (sc->fd >= 0)
		ws_send(sc, 0x1, msg, (size_t)n);
}

/*
 * Both phases against the server of side s (its pid and port): phase 1 with b->n connections,
 * phase 2 with pairs at rate for secs. Lines are printed with pfx in front; figures go to s.
 */
static void
bench_side(struct bench *b, struct side *s, const char *secret, int pairs, int rate, int secs,
    const char *pfx)
{
	long long cpu0, cpu1, mcpu0 = -1, mcpu1 = -1;
	struct thread_cpu tc0, tc1;
	int64_t end, seqno;
	double secs_open;
	int i;

	b->port = s->port;
	b->ready = b->dead = 0;
	b->acks = b->ack_errors = b->delivered = 0;
	b->first_error[0] = '\0';
	b->nlat = 0;

	/* Phase 1: idle authenticated connections. */
	s->rss0 = proc_rss_kb(s->pid);
	secs_open = conns_open(b, b->n, secret);
	printf("%sconnections: %d ready, %d failed, in %.1f s\n", pfx, b->ready, b->dead, secs_open);
	for (end = now_us() + 3000000; now_us() < end;)
		poll_once(b, 100);
	s->rss1 = proc_rss_kb(s->pid);
	s->ready = b->ready;
	s->kib_per_conn = b->ready > 0 ? (double)(s->rss1 - s->rss0) / b->ready : 0.0;
	printf("%sdaemon RSS: %ld KiB before, %ld KiB with %d idle authenticated connections: "
	    "%.2f KiB per connection\n", pfx, s->rss0, s->rss1, b->ready, s->kib_per_conn);
	fflush(stdout);

	/* Phase 2: 1:1 messages between pairs, paced. */
	for (i = 0; i < 2 * pairs; i++) {
		b->c[i].role = i < pairs ? 1 : 2;
		ws_send(&b->c[i], 0x1, "{\"type\":\"sync\",\"after\":0}", 25);
	}
	for (end = now_us() + 1000000; now_us() < end;)
		poll_once(b, 10);
	cpu0 = proc_cpu_ticks(s->pid);
	proc_thread_cpu(s->pid, &tc0);
	if (b->mysqld_pid > 0)
		mcpu0 = proc_cpu_ticks(b->mysqld_pid);
	b->send_t0 = now_us();
	b->nwin = (size_t)secs * (1000000 / BENCH_WINDOW_US) + 1;
	b->winmax = xcalloc(b->nwin, sizeof *b->winmax);
	seqno = paced_sends(b, rate, secs, INT64_MAX, side_send, &pairs);
	for (end = now_us() + 10000000; now_us() < end &&
	    (b->delivered < (uint64_t)seqno || b->acks + b->ack_errors < (uint64_t)seqno);)
		poll_once(b, 10);
	cpu1 = proc_cpu_ticks(s->pid);
	proc_thread_cpu(s->pid, &tc1);
	if (b->mysqld_pid > 0)
		mcpu1 = proc_cpu_ticks(b->mysqld_pid);
	qsort(b->lat, b->nlat, sizeof *b->lat, cmp64);
	s->dead = b->dead;
	s->sent = seqno;
	s->acks = b->acks;
	s->ack_errors = b->ack_errors;
	s->delivered = b->delivered;
	printf("%ssent %" PRId64 " messages in %d s (%d/s target), %" PRIu64 " acks, %" PRIu64
	    " ack errors, %" PRIu64 " delivered\n", pfx, seqno, secs, rate, b->acks, b->ack_errors,
	    b->delivered);
	if (b->ack_errors > 0)
		printf("%sfirst error ack: %s\n", pfx, b->first_error);
	s->p50 = s->p99 = -1;
	if (b->nlat > 0) {
		s->p50 = b->lat[b->nlat / 2] / 1000.0;
		s->p99 = b->lat[b->nlat * 99 / 100] / 1000.0;
		printf("%slatency send -> recipient frame: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, "
		    "max %.2f ms\n", pfx, s->p50, b->lat[b->nlat * 9 / 10] / 1000.0, s->p99,
		    b->lat[b->nlat - 1] / 1000.0);
		print_worst_windows(b, pfx);
	}
	free(b->winmax);
	b->winmax = NULL;
	b->nwin = 0;
	s->cpu_ms = -1;
	if (b->delivered > 0) {
		s->cpu_ms = (double)(cpu1 - cpu0) * 1000.0 / (double)sysconf(_SC_CLK_TCK) /
		    ((double)b->delivered / 1000.0);
		printf("%sdaemon CPU: %.2f s for %" PRIu64 " deliveries: %.1f ms per 1,000 delivered "
		    "messages\n", pfx, (double)(cpu1 - cpu0) / (double)sysconf(_SC_CLK_TCK),
		    b->delivered, s->cpu_ms);
		print_thread_cpu(&tc0, &tc1, b->delivered, pfx, "1,000 delivered");
		if (mcpu0 >= 0 && mcpu1 >= 0)
			printf("%smysqld CPU (pid %d): %.2f s: %.1f ms per 1,000 delivered messages\n",
			    pfx, b->mysqld_pid, (double)(mcpu1 - mcpu0) /
			    (double)sysconf(_SC_CLK_TCK), (double)(mcpu1 - mcpu0) * 1000.0 /
			    (double)sysconf(_SC_CLK_TCK) / ((double)b->delivered / 1000.0));
	}
	fflush(stdout);
	conns_close(b, b->n);
}

/* Every connection of phase 1 came up. */
static int
side_conns_ok(const struct side *s, int conns)
{
	return s->ready == conns;
}

/* Every message of phase 2 was acked as a success and delivered, on live connections. */
static int
side_msgs_ok(const struct side *s)
{
	return s->dead == 0 && s->ack_errors == 0 && s->acks == (uint64_t)s->sent &&
	    s->delivered == (uint64_t)s->sent;
}

/* x/y into buf; "n/a" when either is missing (not above 0) or ok is false. */
static void
ratio(char *buf, size_t size, double x, double y, int ok)
{
	if (ok && x > 0 && y > 0)
		snprintf(buf, size, "%.2f", x / y);
	else
		snprintf(buf, size, "n/a");
}

/* Which side failed, from whether each was ok. */
static const char *
who(int pw_ok, int peer_ok)
{
	if (!pw_ok && !peer_ok)
		return "both sides";
	return pw_ok ? "the peer" : "parley-ws";
}

/*
 * "ratio parley/peer": above 1 means Parley costs more (memory, latency, CPU). The memory ratio
 * needs every connection up on both sides; the others every message acked and delivered.
 */
static void
print_ratios(const struct side *pw, const struct side *peer, int conns)
{
	char m[32], p50[32], p99[32], cpu[32];
	int cok, mok;

	cok = side_conns_ok(pw, conns) && side_conns_ok(peer, conns);
	mok = side_msgs_ok(pw) && side_msgs_ok(peer);
	ratio(m, sizeof m, pw->kib_per_conn, peer->kib_per_conn, cok);
	ratio(p50, sizeof p50, pw->p50, peer->p50, mok);
	ratio(p99, sizeof p99, pw->p99, peer->p99, mok);
	ratio(cpu, sizeof cpu, pw->cpu_ms, peer->cpu_ms, mok);
	printf("ratio parley/peer: memory per connection %s, latency p50 %s, p99 %s, "
	    "CPU per 1,000 messages %s (above 1: Parley costs more)\n", m, p50, p99, cpu);
	if (!cok)
		printf("  no memory ratio: %s did not bring up every connection\n",
		    who(side_conns_ok(pw, conns), side_conns_ok(peer, conns)));
	if (!mok)
		printf("  no latency or CPU ratio: %s lost a connection or a message, or acked one "
		    "as an error\n", who(side_msgs_ok(pw), side_msgs_ok(peer)));
}

/* What bench_room's posters send: comment k in room, from poster k % posters. */
struct room_post {
	char	room[64];
	int	posters;
};

static void
room_send(struct bench *b, int64_t k, const void *arg)
{
	const struct room_post *rp = arg;
	char msg[256];
	int n;

	b->room_sent[k] = now_us();
	n = snprintf(msg, sizeof msg, "{\"type\":\"room_message\",\"room\":\"%s\","
	    "\"text\":\"t=%" PRId64 " k=%" PRId64 "\"}", rp->room, b->room_sent[k], k);
	ws_send(&b->c[b->nlisten + (int)(k % rp->posters)], 0x1, msg, (size_t)n);
}

/*
 * --room: b->nlisten listeners on one room, spread over two parley-ws processes (one bus), and
 * posters (10 comments/s each, the default limits.room_rate_per_sec) on the first process
 * posting rate comments/s in total for secs seconds. Each comment's latency is from its post to
 * its arrival at the last listener; printed: p50/p99/max of that over the comments every
 * listener got, the deliveries, and both daemons' CPU per 1,000 comments.
 */
static void
bench_room(struct bench *b, const int *pids, const char *secret, int posters, int rate, int secs)
{
	char msg[256];
	struct room_post rp = { .posters = posters };
	long long cpu0[2], cpu1[2], mcpu0 = -1, mcpu1 = -1;
	int64_t end, k, *lat;
	size_t nlat = 0, complete = 0, i;
	struct thread_cpu tc0[2], tc1[2];
	int n, d, total = b->nlisten + posters;
	double secs_open;

	room_alloc(b, rate, secs);
	snprintf(rp.room, sizeof rp.room, "bench_room_%s", b->run);
	secs_open = conns_open(b, total, secret);
	printf("room: connections: %d ready, %d failed, in %.1f s (%d listeners over 2 processes, "
	    "%d posters)\n", b->ready, b->dead, secs_open, b->nlisten, posters);
	/* Join, then a ping: its pong says the join before it was taken. */
	n = snprintf(msg, sizeof msg, "{\"type\":\"join_room\",\"room\":\"%s\"}", rp.room);
	for (i = 0; i < (size_t)b->nlisten; i++) {
		ws_send(&b->c[i], 0x1, msg, (size_t)n);
		ws_send(&b->c[i], 0x1, "{\"type\":\"ping\"}", 15);
	}
	for (end = now_us() + 30000000; now_us() < end && b->pongs < (uint64_t)b->nlisten;)
		poll_once(b, 10);
	printf("room: %" PRIu64 " of %d listeners joined\n", b->pongs, b->nlisten);
	for (end = now_us() + 1000000; now_us() < end;)
		poll_once(b, 10);
	for (d = 0; d < 2; d++) {
		cpu0[d] = proc_cpu_ticks(pids[d]);
		proc_thread_cpu(pids[d], &tc0[d]);
	}
	if (b->mysqld_pid > 0)
		mcpu0 = proc_cpu_ticks(b->mysqld_pid);
	k = paced_sends(b, rate, secs, (int64_t)b->room_max, room_send, &rp);
	for (end = now_us() + 5000000; now_us() < end &&
	    b->room_frames < (uint64_t)k * (uint64_t)b->nlisten;)
		poll_once(b, 10);
	for (d = 0; d < 2; d++) {
		cpu1[d] = proc_cpu_ticks(pids[d]);
		proc_thread_cpu(pids[d], &tc1[d]);
	}
	if (b->mysqld_pid > 0)
		mcpu1 = proc_cpu_ticks(b->mysqld_pid);
	lat = xcalloc((size_t)k + 1, sizeof *lat);
	for (i = 0; i < (size_t)k; i++) {
		if (b->room_got[i] >= b->nlisten) {
			complete++;
			lat[nlat++] = b->room_last[i] - b->room_sent[i];
		}
	}
	qsort(lat, nlat, sizeof *lat, cmp64);
	printf("room: %" PRId64 " comments posted in %d s (%d/s target), %" PRIu64 " frames received "
	    "of %" PRId64 ", %zu comments reached every listener\n", k, secs, rate, b->room_frames,
	    k * b->nlisten, complete);
	if (nlat > 0)
		printf("room: latency post -> last listener's frame: p50 %.2f ms, p90 %.2f ms, "
		    "p99 %.2f ms, max %.2f ms\n", lat[nlat / 2] / 1000.0, lat[nlat * 9 / 10] / 1000.0,
		    lat[nlat * 99 / 100] / 1000.0, lat[nlat - 1] / 1000.0);
	for (d = 0; d < 2 && k > 0; d++) {
		printf("room: daemon %d CPU: %.2f s: %.1f ms per 1,000 comments; ", d + 1,
		    (double)(cpu1[d] - cpu0[d]) / (double)sysconf(_SC_CLK_TCK),
		    (double)(cpu1[d] - cpu0[d]) * 1000.0 / (double)sysconf(_SC_CLK_TCK) /
		    ((double)k / 1000.0));
		print_thread_cpu(&tc0[d], &tc1[d], (uint64_t)k, "", "1,000 comments");
	}
	if (mcpu0 >= 0 && k > 0)
		printf("room: mysqld CPU: %.1f ms per 1,000 comments\n", (double)(mcpu1 - mcpu0) *
		    1000.0 / (double)sysconf(_SC_CLK_TCK) / ((double)k / 1000.0));
	free(lat);
	conns_close(b, total);
}

/* p50 / p99 / max of n latencies (us, sorted in place) as "p50 X ms, p99 Y ms, max Z ms". */
static void
print_lat(const char *what, int64_t *v, size_t n)
{
	if (n == 0) {
		printf("%s: none\n", what);
		return;
	}
	qsort(v, n, sizeof *v, cmp64);
	printf("%s: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms (%zu)\n", what,
	    v[n / 2] / 1000.0, v[n * 9 / 10] / 1000.0, v[n * 99 / 100] / 1000.0, v[n - 1] / 1000.0,
	    n);
}

/* What bench_group's sender (connection 0) sends: group message k to group *arg. */
static void
group_send(struct bench *b, int64_t k, const void *arg)
{
	char msg[256];
	int n;

	b->room_sent[k] = now_us();
	n = snprintf(msg, sizeof msg, "{\"type\":\"send_message\",\"client_msg_id\":"
	    "\"g%" PRId64 "\",\"group_id\":%" PRIu64 ",\"content\":\"t=%" PRId64
	    " k=%" PRId64 "\"}", k, *(const uint64_t *)arg, b->room_sent[k], k);
	ws_send(&b->c[0], 0x1, msg, (size_t)n);
}

/*
 * --group MEMBERS --online M: a group of MEMBERS users (created in MySQL directly, as the
 * store does for POST /groups), M of them connected (the first one sends), rate group messages
 * per second for secs seconds. Printed: send -> ack and ack -> the last online member's frame,
 * and parley-ws's and mysqld's CPU per group message.
 */
static void
bench_group(struct bench *b, int pid, const struct config *cfg, int members, int rate, int secs)
{
	char name[PARLEY_ID_MAX + 1], **mv;
	long long cpu0, cpu1, mcpu0 = -1, mcpu1 = -1;
	int64_t t0, end, k, *acklat, *fanlat;
	size_t nack = 0, nfan = 0, i;
	struct store_targets t;
	struct thread_cpu tc0, tc1;
	struct store *st;
	double secs_open;
	uint64_t g = 0;

	/* The group: created before any member connects (each one's "ready" is after it). */
	mv = xcalloc((size_t)members, sizeof *mv);
	for (i = 0; i < (size_t)members; i++) {
		snprintf(name, sizeof name, "bench_%s_%zu", b->run, i);
		mv[i] = xstrdup(name);
	}
	memset(&t, 0, sizeof t);
	st = store_new(cfg);
	t0 = now_us();
	if (store_group_create(st, mv[0], "bench group", mv, (size_t)members, &g, &t) != 0)
		fatal("group of %d: %s", members, strerror(errno));
	printf("group: %d members created in %.2f s (group %" PRIu64 ")\n", members,
	    (double)(now_us() - t0) / 1e6, g);
	store_targets_clear(&t);
	store_free(st);
	for (i = 0; i < (size_t)members; i++)
		free(mv[i]);
	free(mv);

	room_alloc(b, rate, secs);
	b->group_ack = xcalloc(b->room_max, sizeof *b->group_ack);
	secs_open = conns_open(b, b->n, cfg->jwt_secret);
	b->c[0].role = 1;
	printf("group: %d of %d members online (WebSocket), %d failed, in %.1f s\n", b->ready, b->n,
	    b->dead, secs_open);
	for (end = now_us() + 1000000; now_us() < end;)
		poll_once(b, 10);
	cpu0 = proc_cpu_ticks(pid);
	proc_thread_cpu(pid, &tc0);
	if (b->mysqld_pid > 0)
		mcpu0 = proc_cpu_ticks(b->mysqld_pid);
	k = paced_sends(b, rate, secs, (int64_t)b->room_max, group_send, &g);
	for (end = now_us() + 10000000; now_us() < end &&
	    b->room_frames < (uint64_t)k * (uint64_t)(b->ready - 1);)
		poll_once(b, 10);
	cpu1 = proc_cpu_ticks(pid);
	proc_thread_cpu(pid, &tc1);
	if (b->mysqld_pid > 0)
		mcpu1 = proc_cpu_ticks(b->mysqld_pid);
	acklat = xcalloc((size_t)k + 1, sizeof *acklat);
	fanlat = xcalloc((size_t)k + 1, sizeof *fanlat);
	for (i = 0; i < (size_t)k; i++) {
		if (b->group_ack[i] == 0)
			continue;
		acklat[nack++] = b->group_ack[i] - b->room_sent[i];
		if (b->room_got[i] >= b->ready - 1)
			fanlat[nfan++] = b->room_last[i] - b->group_ack[i];
	}
	printf("group: %" PRId64 " messages sent in %d s (%d/s), %zu acked, %" PRIu64 " ack errors, "
	    "%" PRIu64 " member frames of %" PRId64 "\n", k, secs, rate, nack, b->ack_errors,
	    b->room_frames, k * (b->ready - 1));
	if (b->ack_errors > 0)
		printf("group: first error ack: %s\n", b->first_error);
	print_lat("group: send -> ack", acklat, nack);
	print_lat("group: ack -> last online member's frame", fanlat, nfan);
	if (k > 0) {
		printf("group: daemon CPU %.1f ms per group message; ", (double)(cpu1 - cpu0) * 1000.0 /
		    (double)sysconf(_SC_CLK_TCK) / (double)k);
		print_thread_cpu(&tc0, &tc1, (uint64_t)k * 1000, "", "group message");
		if (mcpu0 >= 0)
			printf("group: mysqld CPU %.1f ms per group message\n", (double)(mcpu1 - mcpu0) *
			    1000.0 / (double)sysconf(_SC_CLK_TCK) / (double)k);
	}
	free(acklat);
	free(fanlat);
	conns_close(b, b->n);
	free(b->room_sent);
	free(b->room_last);
	free(b->room_got);
	free(b->group_ack);
}

static void
usage(void)
{
	fprintf(stderr, "usage: bench_ws [--config FILE --port PORT --pid PID] [--conns N] "
	    "[--pairs P] [--rate MSGS_PER_S] [--secs S] [--workers N] [--no-peer]\n"
	    "       bench_ws --room LISTENERS [--rate COMMENTS_PER_S] [--secs S] [--workers N]\n"
	    "       bench_ws --group MEMBERS --conns ONLINE [--rate MSGS_PER_S] [--secs S]\n"
	    "  without --port: starts parley-ws from $PARLEY_CONFIG and $PARLEY_BUILDDIR\n"
	    "  then the same phases against peer_ws (next to bench_ws) unless --no-peer\n");
	exit(2);
}

/* --room: two parley-ws processes on one bus, then bench_room; defaults 100 comments/s, 10 s. */
static int
room_main(struct bench *b, const char *dir, int rate, int secs, int workers)
{
	struct config cfg;
	char sub[2][64], busdir[64], *cfgs[2] = { NULL, NULL }, *cause = NULL, *rm;
	const char *base;
	int pids[2], d, posters;

	if ((base = getenv("PARLEY_CONFIG")) == NULL || b->nlisten < 1)
		usage();
	if (rate == 2000)
		rate = 100;	/* the 1:1 default does not fit a room (10 comments/s per poster) */
	posters = (rate + 9) / 10 * 2;	/* each at half the per-user limit */
	snprintf(busdir, sizeof busdir, "%s/bus", dir);
	for (d = 0; d < 2; d++) {
		snprintf(sub[d], sizeof sub[d], "%s/ws%d", dir, d + 1);
		if (mkdir(sub[d], 0700) != 0)
			fatal("%s: %s", sub[d], strerror(errno));
		b->ports[d] = free_port();
		pids[d] = (int)daemon_start(sub[d], base, b->ports[d], b->nlisten + posters, workers,
		    &cfgs[d], busdir);
	}
	for (d = 0; d < 2; d++) {
		daemon_wait("parley-ws", pids[d], b->ports[d]);
		printf("parley-ws %d: pid %d on port %d, %d actor workers\n", d + 1, pids[d],
		    b->ports[d], workers);
	}
	b->port = b->ports[0];
	if (config_load(&cfg, cfgs[0], &cause) != 0)
		fatal("%s", cause);
	snprintf(b->run, sizeof b->run, "%x", (unsigned)(time(NULL) ^ getpid()) & 0xffffff);
	if (getenv("PARLEY_TEST_MYSQL_PID") != NULL)
		b->mysqld_pid = atoi(getenv("PARLEY_TEST_MYSQL_PID"));
	bench_room(b, pids, cfg.jwt_secret, posters, rate, secs);
	for (d = 0; d < 2; d++) {
		daemon_stop(pids[d]);
		free(cfgs[d]);
	}
	config_clear(&cfg);
	free(b->room_sent);
	free(b->room_last);
	free(b->room_got);
	xasprintf(&rm, "rm -rf '%s'", dir);
	if (system(rm) != 0)
		log_warn("could not remove %s", dir);
	free(rm);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "config", required_argument, NULL, 'c' }, { "port", required_argument, NULL, 'p' },
		{ "pid", required_argument, NULL, 'P' }, { "conns", required_argument, NULL, 'n' },
		{ "pairs", required_argument, NULL, 'a' }, { "rate", required_argument, NULL, 'r' },
		{ "secs", required_argument, NULL, 's' }, { "workers", required_argument, NULL, 'w' },
		{ "no-peer", no_argument, NULL, 'N' }, { "room", required_argument, NULL, 'R' },
		{ "group", required_argument, NULL, 'G' },
		{ NULL, 0, NULL, 0 }
	};
	struct config cfg;
	struct bench b;
	struct side pw, peer;
	const char *cfgpath = NULL;
	char dir[] = "/tmp/bench-ws.XXXXXX", *cause = NULL, *owncfg = NULL, *rm;
	int pairs = 100, rate = 2000, secs = 10, workers = 8, opt, own = 0, nopeer = 0, gmembers = 0;
	struct rlimit rl;

	memset(&b, 0, sizeof b);
	memset(&pw, 0, sizeof pw);
	memset(&peer, 0, sizeof peer);
	b.host = "127.0.0.1";
	b.n = 10000;
	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'c': cfgpath = optarg; break;
		case 'p': pw.port = atoi(optarg); break;
		case 'P': pw.pid = atoi(optarg); break;
		case 'n': b.n = atoi(optarg); break;
		case 'a': pairs = atoi(optarg); break;
		case 'r': rate = atoi(optarg); break;
		case 's': secs = atoi(optarg); break;
		case 'w': workers = atoi(optarg); break;
		case 'N': nopeer = 1; break;
		case 'R': b.room_mode = 1; b.nlisten = atoi(optarg); break;
		case 'G': b.group_mode = 1; gmembers = atoi(optarg); break;
		default: usage();
		}
	}
	log_init("bench_ws", LOG_LEVEL_WARN, 0);
	/* 10,000 sockets here and as many in the daemon: take the whole (hard) descriptor limit. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	/* Our daemons' configuration and logs (and parley-ws's bus) live here; removed at the end. */
	if (mkdtemp(dir) == NULL)
		fatal("%s: %s", dir, strerror(errno));
	if (b.room_mode)
		return room_main(&b, dir, rate, secs, workers);
	if (pw.port == 0) {
		if ((cfgpath = getenv("PARLEY_CONFIG")) == NULL)
			usage();
		pw.port = free_port();
		pw.pid = (int)daemon_start(dir, cfgpath, pw.port, b.n, workers, &owncfg, NULL);
		cfgpath = owncfg;
		daemon_wait("parley-ws", pw.pid, pw.port);
		own = 1;
		printf("parley-ws pid %d on port %d, %d actor workers\n", pw.pid, pw.port, workers);
	}
	if (cfgpath == NULL || pw.port == 0 || pw.pid == 0 || pairs < 1 || 2 * pairs > b.n)
		usage();
	if (config_load(&cfg, cfgpath, &cause) != 0)
		fatal("%s", cause);
	snprintf(b.run, sizeof b.run, "%x", (unsigned)(time(NULL) ^ getpid()) & 0xffffff);

	/* The harness's mysqld (bench/run, scripts/lib.sh export it): its CPU per message too. */
	if (getenv("PARLEY_TEST_MYSQL_PID") != NULL)
		b.mysqld_pid = atoi(getenv("PARLEY_TEST_MYSQL_PID"));
	if (b.group_mode) {
		if (gmembers < b.n || b.n < 2)
			usage();
		b.port = pw.port;
		bench_group(&b, pw.pid, &cfg, gmembers, rate == 2000 ? 10 : rate, secs);
		nopeer = 1;
	} else
		bench_side(&b, &pw, cfg.jwt_secret, pairs, rate, secs, "");
	b.mysqld_pid = 0;	/* the peer stores nothing */
	if (own)
		daemon_stop(pw.pid);	/* the peer runs alone on the machine */

	if (!nopeer) {
		peer.port = free_port();
		peer.pid = (int)peer_start(dir, cfgpath, peer.port);
		daemon_wait("peer_ws", peer.pid, peer.port);
		printf("\npeer (peer_ws: lws relay, no storage) pid %d on port %d, same %d connections, "
		    "%d pairs, %d msgs/s, %d s\n", peer.pid, peer.port, b.n, pairs, rate, secs);
		bench_side(&b, &peer, cfg.jwt_secret, pairs, rate, secs, "peer: ");
		daemon_stop(peer.pid);
		print_ratios(&pw, &peer, b.n);
	}

	free(b.lat);
	config_clear(&cfg);
	xasprintf(&rm, "rm -rf '%s'", dir);
	if (system(rm) != 0)
		log_warn("could not remove %s", dir);
	free(rm);
	free(owncfg);
	return 0;
}
