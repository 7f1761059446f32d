/* check_bus.c - the notification bus between real processes: delivery, dead and stopped peers, bad input. */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "log.h"
#include "parley.h"
#include "testenv.h"
#include "xmalloc.h"

/* A busprobe child with its stdout on a pipe. */
struct probe {
	pid_t	pid;
	int	fd;
	char	buf[65536];
	size_t	len;
};

/* A fresh bus directory of this test (not yet created: bus_new must create it). */
static char *
bus_dir(void)
{
	char *tmpl, *dir;

	xasprintf(&tmpl, "%s/bus.XXXXXX", testenv_dir());
	ck_assert_ptr_nonnull(mkdtemp(tmpl));
	xasprintf(&dir, "%s/d", tmpl);
	free(tmpl);
	return dir;
}

static char *
probe_path(void)
{
	const char *bd = getenv("PARLEY_BUILDDIR");
	char exe[PATH_MAX], *p, *s;
	ssize_t n;

	if (bd != NULL) {
		xasprintf(&s, "%s/tests/busprobe", bd);
		return s;
	}
	n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	ck_assert_int_gt(n, 0);
	exe[n] = '\0';
	if ((p = strrchr(exe, '/')) != NULL)
		*p = '\0';
	xasprintf(&s, "%s/busprobe", exe);
	return s;
}

/* Start busprobe with argv (NULL-terminated, without the program name). */
static void
probe_start(struct probe *p, char *const *args)
{
	char *argv[16], *path = probe_path();
	int pfd[2], i;

	argv[0] = path;
	for (i = 0; args[i] != NULL && i < 14; i++)
		argv[i + 1] = args[i];
	argv[i + 1] = NULL;
	ck_assert_int_eq(pipe(pfd), 0);
	p->len = 0;
	p->pid = fork();
	ck_assert_int_ge(p->pid, 0);
	if (p->pid == 0) {
		dup2(pfd[1], 1);
		close(pfd[0]);
		close(pfd[1]);
		execv(path, argv);
		_exit(127);
	}
	close(pfd[1]);
	p->fd = pfd[0];
	free(path);
}

/* Next line of the probe's output within timeout_ms; 1 got one (no newline), 0 none. */
static int
probe_line(struct probe *p, char *line, size_t size, int timeout_ms)
{
	struct pollfd pfd = { .fd = p->fd, .events = POLLIN };
	int64_t deadline = parley_mono_ms() + timeout_ms;
	char *nl;
	ssize_t n;
	int left;

	for (;;) {
		if ((nl = memchr(p->buf, '\n', p->len)) != NULL) {
			size_t l = (size_t)(nl - p->buf);

			snprintf(line, size, "%.*s", (int)l, p->buf);
			memmove(p->buf, nl + 1, p->len - l - 1);
			p->len -= l + 1;
			return 1;
		}
		if (p->len == sizeof p->buf)
			p->len = 0;	/* a line longer than the buffer: not ours */
		left = (int)(deadline - parley_mono_ms());
		if (left <= 0 || poll(&pfd, 1, left) <= 0)
			return 0;
		n = read(p->fd, p->buf + p->len, sizeof p->buf - p->len);
		if (n <= 0)
			return 0;
		p->len += (size_t)n;
	}
}

/* Wait for the probe to exit; its status. */
static int
probe_wait(struct probe *p)
{
	int st;

	ck_assert_int_eq(waitpid(p->pid, &st, 0), p->pid);
	close(p->fd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void
probe_kill(struct probe *p)
{
	kill(p->pid, SIGKILL);
	(void)probe_wait(p);
}

static void
probe_ready(struct probe *p)
{
	char line[256];

	ck_assert_msg(probe_line(p, line, sizeof line, 5000), "probe did not start");
	ck_assert_str_eq(line, "ready");
}

/* Receive one hint on b within timeout_ms; 1 got it. */
static int
recv_wait(struct bus *b, struct bus_hint *h, int timeout_ms)
{
	struct pollfd pfd = { .fd = bus_fd(b), .events = POLLIN };
	int64_t deadline = parley_mono_ms() + timeout_ms;
	int left;

	for (;;) {
		if (bus_recv(b, h) == 0)
			return 1;
		ck_assert_int_eq(errno, EAGAIN);
		left = (int)(deadline - parley_mono_ms());
		if (left <= 0)
			return 0;
		(void)poll(&pfd, 1, left);
	}
}

/* The file name of pid's socket in dir, or NULL. Caller frees. */
static char *
sock_of(const char *dir, pid_t pid)
{
	struct dirent *de;
	char prefix[32], *s = NULL;
	DIR *d = opendir(dir);

	ck_assert_ptr_nonnull(d);
	snprintf(prefix, sizeof prefix, "%ld-", (long)pid);
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
			s = xstrdup(de->d_name);
	}
	closedir(d);
	return s;
}

static struct bus *
bus_open(const char *dir)
{
	struct bus *b;
	char *cause = NULL;

	b = bus_new(dir, &cause);
	ck_assert_msg(b != NULL, "bus_new: %s", cause != NULL ? cause : "?");
	return b;
}

/* The directory is created 0700, our socket is 0600, and bus_free removes it. */
START_TEST(test_dir_and_modes)
{
	char *dir = bus_dir(), *name, *path, *long_dir, *cause, *deep, *mid, big[100];
	struct bus *b = bus_open(dir);
	struct stat st;

	ck_assert_int_eq(stat(dir, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0700);
	name = sock_of(dir, getpid());
	ck_assert_ptr_nonnull(name);
	xasprintf(&path, "%s/%s", dir, name);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert(S_ISSOCK(st.st_mode));
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	bus_free(b);
	ck_assert_int_eq(stat(path, &st), -1);
	ck_assert_int_eq(errno, ENOENT);
	bus_free(NULL);
	/* Parents it creates are 0750 (traversable, writable by us alone), the bus directory 0700. */
	xasprintf(&mid, "%s/x", dir);
	xasprintf(&deep, "%s/x/y/", dir);
	ck_assert_int_eq(rmdir(dir), 0);
	b = bus_open(deep);
	ck_assert_int_eq(stat(dir, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0750);
	ck_assert_int_eq(stat(mid, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0750);
	ck_assert_int_eq(stat(deep, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0700);
	bus_free(b);
	free(deep);
	free(mid);
	/* A path the socket name cannot fit in fails with a cause. */
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	xasprintf(&long_dir, "%s/%s", dir, big);
	ck_assert_ptr_null(bus_new(long_dir, &cause));
	ck_assert_ptr_nonnull(cause);
	free(cause);
	free(long_dir);
	free(path);
	free(name);
	free(dir);
}
END_TEST

/* A hint reaches the publishing process itself and another process. */
/* The host id: one per directory, the same for every later caller and after a reboot; configured wins. */
START_TEST(test_host_id)
{
	char *d1 = bus_dir(), *d2 = bus_dir(), *cause = NULL, *path;
	char a[BUS_HOST_ID_MAX + 1], b[BUS_HOST_ID_MAX + 1], c[BUS_HOST_ID_MAX + 1];
	struct stat st;
	FILE *f;

	ck_assert_int_eq(mkdir(d1, 0700), 0);
	ck_assert_int_eq(mkdir(d2, 0700), 0);
	ck_assert_int_eq(bus_host_id(d1, NULL, a, sizeof a, &cause), 0);
	ck_assert_uint_eq(strlen(a), 32);
	ck_assert_int_eq(bus_host_id(d1, NULL, b, sizeof b, &cause), 0);
	ck_assert_str_eq(a, b);		/* a second process (or a restart) of the same host */
	ck_assert_int_eq(bus_host_id(d2, NULL, c, sizeof c, &cause), 0);
	ck_assert_str_ne(a, c);		/* another host, whatever its hostname */
	xasprintf(&path, "%s/host-id", d1);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	/* A reboot empties bus.dir (tmpfs): the id made again is the same one. */
	ck_assert_int_eq(unlink(path), 0);
	ck_assert_int_eq(bus_host_id(d1, NULL, b, sizeof b, &cause), 0);
	ck_assert_str_eq(a, b);
	ck_assert_int_eq(bus_host_id(d1, "node-7.example", b, sizeof b, &cause), 0);
	ck_assert_str_eq(b, "node-7.example");
	/* A damaged file is refused, never half-read. */
	ck_assert_ptr_nonnull(f = fopen(path, "w"));
	fputs("no spaces allowed\n", f);
	fclose(f);
	ck_assert_int_eq(bus_host_id(d1, NULL, b, sizeof b, &cause), -1);
	ck_assert_ptr_nonnull(cause);
	free(cause);
	unlink(path);
	free(path);
	free(d1);
	free(d2);
}
END_TEST

START_TEST(test_self_and_other)
{
	char *dir = bus_dir(), line[512];
	struct bus_hint h;
	struct bus_stats st;
	struct probe p;
	struct bus *b = bus_open(dir);

	probe_start(&p, (char *[]){ dir, "listen", "1", NULL });
	probe_ready(&p);
	ck_assert_int_eq(bus_publish(b, BUS_USER_EVENT, "alice", 42, "hi there", 8), 0);

	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_int_eq(h.topic, BUS_USER_EVENT);
	ck_assert_str_eq(h.key, "alice");
	ck_assert_uint_eq(h.seq, 42);
	ck_assert_uint_eq(h.len, 8);
	ck_assert_str_eq(h.payload, "hi there");

	ck_assert(probe_line(&p, line, sizeof line, 3000));
	ck_assert_str_eq(line, "1 alice 42 8 hi there");
	ck_assert_int_eq(probe_wait(&p), 0);

	bus_stats(b, &st);
	ck_assert_uint_eq(st.sent, 2);
	ck_assert_uint_eq(st.received, 1);
	ck_assert_uint_eq(st.dropped, 0);
	/* BUS_SHUTDOWN only wakes our own loop. */
	ck_assert_int_eq(bus_publish(b, BUS_SHUTDOWN, "", 0, NULL, 0), 0);
	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_int_eq(h.topic, BUS_SHUTDOWN);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.sent, 3);
	bus_free(b);
	free(dir);
}
END_TEST

/*
 * Our socket file is removed while we run: we listen there again within about a second, so a
 * process that starts afterwards finds us and its hints arrive (before, it never saw us).
 */
START_TEST(test_socket_removed)
{
	char *dir = bus_dir(), *name, *path, line[512];
	struct bus *b = bus_open(dir);
	struct bus_hint h;
	struct probe pub;
	struct stat st;

	name = sock_of(dir, getpid());
	ck_assert_ptr_nonnull(name);
	xasprintf(&path, "%s/%s", dir, name);
	ck_assert_int_eq(unlink(path), 0);
	/* The owner's loop notices it (bus_recv looks at least once a second). */
	ck_assert(!recv_wait(b, &h, 1500));
	ck_assert_msg(stat(path, &st) == 0 && S_ISSOCK(st.st_mode), "socket not made again");
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	probe_start(&pub, (char *[]){ dir, "publish", "3", "late", "9", "back", NULL });
	ck_assert(probe_line(&pub, line, sizeof line, 5000));
	ck_assert_str_eq(line, "sent=2 dropped=0 stale=0 peers=1");
	ck_assert_int_eq(probe_wait(&pub), 0);
	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_str_eq(h.key, "late");
	ck_assert_str_eq(h.payload, "back");
	/* bus_free removes the file it made again. */
	bus_free(b);
	ck_assert_int_eq(stat(path, &st), -1);
	free(path);
	free(name);
	free(dir);
}
END_TEST

/* A hint published by one process reaches two other processes. */
START_TEST(test_one_to_two)
{
	char *dir = bus_dir(), line[512];
	struct probe l1, l2, pub;

	probe_start(&l1, (char *[]){ dir, "listen", "1", NULL });
	probe_ready(&l1);
	probe_start(&l2, (char *[]){ dir, "listen", "1", NULL });
	probe_ready(&l2);
	probe_start(&pub, (char *[]){ dir, "publish", "3", "room1", "7", "{\"x\":1}", NULL });
	ck_assert(probe_line(&pub, line, sizeof line, 5000));
	ck_assert_str_eq(line, "sent=3 dropped=0 stale=0 peers=2");
	ck_assert_int_eq(probe_wait(&pub), 0);

	ck_assert(probe_line(&l1, line, sizeof line, 3000));
	ck_assert_str_eq(line, "3 room1 7 7 {\"x\":1}");
	ck_assert(probe_line(&l2, line, sizeof line, 3000));
	ck_assert_str_eq(line, "3 room1 7 7 {\"x\":1}");
	ck_assert_int_eq(probe_wait(&l1), 0);
	ck_assert_int_eq(probe_wait(&l2), 0);
	free(dir);
}
END_TEST

/*
 * A stopped subscriber whose socket buffer and backlog are full does not slow publishing down,
 * live peers still get hints, and once it is killed its socket is found stale and removed.
 */
START_TEST(test_stopped_and_killed_peer)
{
	char *dir = bus_dir(), *dead, *path, line[512];
	struct probe stopped, live;
	struct bus_stats st;
	struct bus_hint h;
	struct stat sb;
	struct bus *b;
	int64_t t0, t1, worst = 0, t;
	int i, failed = 0, seen = 0;

	probe_start(&stopped, (char *[]){ dir, "listen", "1000000", "60", NULL });
	probe_ready(&stopped);
	probe_start(&live, (char *[]){ dir, "listen", "1000000", "60", NULL });
	probe_ready(&live);
	b = bus_open(dir);
	ck_assert_int_eq(kill(stopped.pid, SIGSTOP), 0);

	t0 = parley_mono_ms();
	for (i = 0; i < 100000; i++) {
		t = parley_mono_ms();
		if (bus_publish(b, BUS_USER_EVENT, "burst", (uint64_t)i, "x", 1) != 0) {
			ck_assert_int_eq(errno, EAGAIN);
			failed++;
		}
		if (parley_mono_ms() - t > worst)
			worst = parley_mono_ms() - t;
	}
	t1 = parley_mono_ms();
	bus_stats(b, &st);
	ck_assert_msg(t1 - t0 < 10000, "100k publishes took %lld ms", (long long)(t1 - t0));
	ck_assert_msg(worst < 1000, "one publish took %lld ms", (long long)worst);
	ck_assert_uint_gt(st.dropped, 0);
	ck_assert_int_gt(failed, 0);
	/* Every hint to every socket (own, stopped, live) was taken, is waiting, or was dropped. */
	ck_assert_uint_eq(st.sent + st.queued + st.dropped, 300000);
	ck_assert_uint_gt(st.queued, 0);
	ck_assert_uint_eq(st.peers, 2);

	/*
	 * The live peer still gets a new hint. It stopped reading too while nobody read its output,
	 * so the marker waits behind its backlog: run our loop (bus_recv flushes) until it is seen.
	 */
	t0 = parley_mono_ms();
	for (i = 0; !seen && parley_mono_ms() - t0 < 20000; i++) {
		while (bus_recv(b, &h) == 0)
			;
		if (i % 10 == 0)
			(void)bus_publish(b, BUS_USER_EVENT, "marker", 1, NULL, 0);
		while (!seen && probe_line(&live, line, sizeof line, 10)) {
			if (strcmp(line, "1 marker 1 0 ") == 0)
				seen = 1;
		}
	}
	ck_assert_msg(seen, "live peer never got the marker");

	/* Kill the stopped one: its socket stays behind until a publish finds it dead. */
	dead = sock_of(dir, stopped.pid);
	ck_assert_ptr_nonnull(dead);
	probe_kill(&stopped);
	xasprintf(&path, "%s/%s", dir, dead);
	ck_assert_int_eq(stat(path, &sb), 0);
	(void)bus_publish(b, BUS_USER_EVENT, "after", 1, NULL, 0);
	ck_assert_int_eq(stat(path, &sb), -1);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.stale, 1);
	(void)bus_publish(b, BUS_USER_EVENT, "after", 2, NULL, 0);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.peers, 1);

	probe_kill(&live);
	bus_free(b);
	free(path);
	free(dead);
	free(dir);
}
END_TEST

/* bus_new removes the sockets that crashed processes left behind, and only those. */
START_TEST(test_stale_at_new)
{
	char *dir = bus_dir(), *left, *path;
	struct probe live;
	struct bus_stats st;
	struct stat sb;
	struct bus *b;
	pid_t pid;
	int status;

	probe_start(&live, (char *[]){ dir, "listen", "1", "20", NULL });
	probe_ready(&live);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char *cause;

		/* A crash: exit without bus_free. */
		if (bus_new(dir, &cause) == NULL)
			_exit(1);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_int_eq(status, 0);
	left = sock_of(dir, pid);
	ck_assert_ptr_nonnull(left);
	xasprintf(&path, "%s/%s", dir, left);

	b = bus_open(dir);
	ck_assert_int_eq(stat(path, &sb), -1);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.stale, 1);
	ck_assert_uint_eq(st.peers, 1);		/* the live probe stays */
	ck_assert_int_eq(bus_publish(b, BUS_ROOM, "r", 1, NULL, 0), 0);
	ck_assert_int_eq(probe_wait(&live), 0);
	bus_free(b);
	free(path);
	free(left);
	free(dir);
}
END_TEST

/* Bind a seqpacket socket at dir/name, listening when listening; the fd. */
static int
bind_at(const char *dir, const char *name, int listening)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);

	ck_assert_int_ge(fd, 0);
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s/%s", dir, name);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
	if (listening)
		ck_assert_int_eq(listen(fd, 16), 0);
	return fd;
}

/*
 * Only sockets nobody is bound to are removed, even when their pid looks dead (a process in
 * another pid namespace), and files that are not bus sockets are left alone.
 */
START_TEST(test_only_dead_removed)
{
	char *dir = bus_dir(), *path;
	struct bus_stats st;
	struct stat sb;
	struct bus *b;
	char buf[64];
	int live, gone, conn;

	b = bus_open(dir);	/* creates dir */
	bus_free(b);
	/* pid 999999999 is above pid_max: kill() says ESRCH. */
	live = bind_at(dir, "999999999-live.sock", 1);
	gone = bind_at(dir, "999999999-gone.sock", 0);
	close(gone);
	xasprintf(&path, "%s/notes.txt", dir);
	close(open(path, O_CREAT | O_WRONLY, 0600));
	free(path);

	b = bus_open(dir);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.stale, 1);
	ck_assert_uint_eq(st.peers, 1);
	xasprintf(&path, "%s/999999999-gone.sock", dir);
	ck_assert_int_eq(stat(path, &sb), -1);
	free(path);
	xasprintf(&path, "%s/notes.txt", dir);
	ck_assert_int_eq(stat(path, &sb), 0);
	free(path);
	/* The live one is a peer: it gets hints. */
	ck_assert_int_eq(bus_publish(b, BUS_USER_EVENT, "zed", 3, NULL, 0), 0);
	conn = accept(live, NULL, NULL);
	ck_assert_int_ge(conn, 0);
	ck_assert_int_eq(recv(conn, buf, sizeof buf, MSG_DONTWAIT), 14 + 3);
	close(conn);
	close(live);
	bus_free(b);
	free(dir);
}
END_TEST

/* A payload up to BUS_PAYLOAD_MAX travels inline; a longer one is sent without payload. */
START_TEST(test_large_payload)
{
	char *dir = bus_dir(), *big = xmalloc(BUS_PAYLOAD_MAX + 2);
	struct bus *b = bus_open(dir);
	struct bus_hint h;
	size_t i;

	for (i = 0; i < BUS_PAYLOAD_MAX + 1; i++)
		big[i] = (char)('a' + i % 26);
	big[BUS_PAYLOAD_MAX + 1] = '\0';

	ck_assert_int_eq(bus_publish(b, BUS_USER_EPHEMERAL, "bob", 0, big, BUS_PAYLOAD_MAX), 0);
	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_uint_eq(h.len, BUS_PAYLOAD_MAX);
	ck_assert_int_eq(memcmp(h.payload, big, BUS_PAYLOAD_MAX), 0);
	ck_assert_int_eq(h.payload[BUS_PAYLOAD_MAX], '\0');

	ck_assert_int_eq(bus_publish(b, BUS_USER_EPHEMERAL, "bob", 9, big, BUS_PAYLOAD_MAX + 1), 0);
	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_str_eq(h.key, "bob");
	ck_assert_uint_eq(h.seq, 9);
	ck_assert_uint_eq(h.len, 0);
	ck_assert_str_eq(h.payload, "");

	/* A key longer than an id is refused. */
	memset(big, 'k', PARLEY_ID_MAX + 1);
	big[PARLEY_ID_MAX + 1] = '\0';
	ck_assert_int_eq(bus_publish(b, BUS_USER_EVENT, big, 1, NULL, 0), -1);
	ck_assert_int_eq(errno, EINVAL);
	big[PARLEY_ID_MAX] = '\0';
	ck_assert_int_eq(bus_publish(b, BUS_USER_EVENT, big, 1, NULL, 0), 0);
	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_str_eq(h.key, big);

	bus_free(b);
	free(big);
	free(dir);
}
END_TEST

/* Records that are not well-formed hints are counted and skipped; the connection stays usable. */
START_TEST(test_malformed)
{
	char *dir = bus_dir();
	struct bus *b = bus_open(dir);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct bus_hint h;
	struct bus_stats st;
	unsigned char good[14 + 3] = { 1, 1, 3, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 'a', 'b', 'c' };
	unsigned char d[8192];
	char *name = sock_of(dir, getpid());
	int fd, n = 0;

	ck_assert_ptr_nonnull(name);
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s/%s", dir, name);
	free(name);
	fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
#define SEND(buf, len) do {						\
	ck_assert_int_eq(send(fd, buf, len, 0), (ssize_t)(len));	\
	n++;								\
} while (0)
	SEND("", 0);					/* empty */
	SEND("hello", 5);				/* too short */
	memcpy(d, good, sizeof good); d[0] = 2;		/* unknown version */
	SEND(d, sizeof good);
	memcpy(d, good, sizeof good); d[1] = 0;		/* unknown topic */
	SEND(d, sizeof good);
	memcpy(d, good, sizeof good); d[1] = 99;
	SEND(d, sizeof good);
	memcpy(d, good, sizeof good); d[2] = 4;		/* key longer than the record */
	SEND(d, sizeof good);
	memcpy(d, good, sizeof good);			/* trailing garbage */
	d[sizeof good] = 'x';
	SEND(d, sizeof good + 1);
	memcpy(d, good, sizeof good); d[4] = 10;	/* payload length beyond the end */
	SEND(d, sizeof good);
	memcpy(d, good, sizeof good); d[15] = '\0';	/* NUL inside the key */
	SEND(d, sizeof good);
	memset(d, 0, sizeof d);				/* oversized */
	memcpy(d, good, sizeof good);
	SEND(d, sizeof d);
	SEND(good, sizeof good);
#undef SEND

	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_int_eq(h.topic, BUS_USER_EVENT);
	ck_assert_str_eq(h.key, "abc");
	ck_assert_uint_eq(h.seq, 5);
	ck_assert_int_eq(bus_recv(b, &h), -1);
	ck_assert_int_eq(errno, EAGAIN);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.malformed, (uint64_t)(n - 1));
	ck_assert_uint_eq(st.received, 1);
	/* The sender hanging up is not a malformed record, and the bus still works. */
	close(fd);
	ck_assert_int_eq(bus_recv(b, &h), -1);
	ck_assert_int_eq(errno, EAGAIN);
	ck_assert_int_eq(bus_publish(b, BUS_ROOM, "r", 2, NULL, 0), 0);
	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_str_eq(h.key, "r");
	bus_stats(b, &st);
	ck_assert_uint_eq(st.malformed, (uint64_t)(n - 1));
	bus_free(b);
	free(dir);
}
END_TEST

/* bus_decode alone, on byte buffers: the contract the fuzz target relies on. */
START_TEST(test_decode)
{
	unsigned char good[14 + 3 + 2] = { 1, 3, 3, 0, 2, 0, 0x2a, 1, 0, 0, 0, 0, 0, 0x80,
	    'a', 'b', 'c', '{', '}' };
	unsigned char d[BUS_DGRAM_MAX + 2];
	struct bus_hint h;

	ck_assert_int_eq(bus_decode(good, sizeof good, &h), 0);
	ck_assert_int_eq(h.topic, BUS_ROOM);
	ck_assert_str_eq(h.key, "abc");
	ck_assert_uint_eq(h.seq, 0x800000000000012aULL);
	ck_assert_uint_eq(h.len, 2);
	ck_assert_str_eq(h.payload, "{}");
	ck_assert_int_eq(bus_decode(NULL, 0, &h), -1);
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_int_eq(bus_decode(good, sizeof good - 1, &h), -1);
	ck_assert_int_eq(bus_decode(good, 13, &h), -1);
	/* The largest record decodes; one byte more does not, whatever its lengths say. */
	memset(d, 'k', sizeof d);
	memcpy(d, good, 14);
	d[2] = PARLEY_ID_MAX;
	d[4] = BUS_PAYLOAD_MAX & 0xff;
	d[5] = BUS_PAYLOAD_MAX >> 8;
	ck_assert_int_eq(bus_decode(d, BUS_DGRAM_MAX, &h), 0);
	ck_assert_uint_eq(h.len, BUS_PAYLOAD_MAX);
	ck_assert_uint_eq(strlen(h.key), PARLEY_ID_MAX);
	ck_assert_int_eq(bus_decode(d, BUS_DGRAM_MAX + 1, &h), -1);
	ck_assert_int_eq(errno, EINVAL);
	d[4] = (BUS_PAYLOAD_MAX + 1) & 0xff;
	d[5] = (BUS_PAYLOAD_MAX + 1) >> 8;
	ck_assert_int_eq(bus_decode(d, BUS_DGRAM_MAX + 1, &h), -1);
}
END_TEST

/* The uid the trust tests impersonate: not ours, and nobody's in particular. */
#define OTHER_UID	65534

/* In a child: become OTHER_UID for good (so SO_PEERCRED shows it); _exit(90) if we cannot. */
static void
become_other(void)
{
	if (setgroups(0, NULL) != 0 || setresgid(OTHER_UID, OTHER_UID, OTHER_UID) != 0 ||
	    setresuid(OTHER_UID, OTHER_UID, OTHER_UID) != 0 || geteuid() != OTHER_UID)
		_exit(90);
}

/* bus_new refuses a directory that its group or others may write to, or that is not ours. */
START_TEST(test_dir_refused)
{
	static const struct { mode_t mode; int ok; } modes[] = {
		{ 0777, 0 }, { 0770, 0 }, { 0702, 0 }, { 01777, 0 }, { 0700, 1 }, { 0750, 1 }, { 0711, 1 },
	};
	char *dir = bus_dir(), *cause = NULL, want[64];
	struct bus *b;
	struct stat st;
	size_t i;

	ck_assert_msg(geteuid() == 0, "the bus trust tests run as root (as in CI): they need a second uid");
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	for (i = 0; i < sizeof modes / sizeof modes[0]; i++) {
		ck_assert_int_eq(chmod(dir, modes[i].mode), 0);
		b = bus_new(dir, &cause);
		if (modes[i].ok) {
			ck_assert_msg(b != NULL, "mode %04o refused: %s", (unsigned)modes[i].mode,
			    cause != NULL ? cause : "?");
			bus_free(b);
			continue;
		}
		ck_assert_msg(b == NULL, "mode %04o accepted", (unsigned)modes[i].mode);
		ck_assert_ptr_nonnull(cause);
		snprintf(want, sizeof want, "has mode %04o", (unsigned)modes[i].mode);
		ck_assert_msg(strstr(cause, want) != NULL, "cause: %s", cause);
		free(cause);
		cause = NULL;
		/* Refused before anything was created in it. */
		ck_assert_ptr_null(sock_of(dir, getpid()));
	}
	/* Not ours, even with a tight mode. */
	ck_assert_int_eq(chmod(dir, 0700), 0);
	ck_assert_int_eq(chown(dir, OTHER_UID, OTHER_UID), 0);
	ck_assert_ptr_null(bus_new(dir, &cause));
	ck_assert_ptr_nonnull(cause);
	ck_assert_msg(strstr(cause, "is owned by uid 65534") != NULL, "cause: %s", cause);
	free(cause);
	/* A directory we create is 0700 whatever the umask, and the mode stays as it was found. */
	ck_assert_int_eq(chown(dir, 0, 0), 0);
	ck_assert_int_eq(chmod(dir, 0750), 0);
	b = bus_open(dir);
	ck_assert_int_eq(stat(dir, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0750);
	bus_free(b);
	free(dir);
}
END_TEST

/*
 * A process of another uid that reaches a bus socket (a loosened mode, a mistake) is refused
 * before a byte of its records is read: a forged new_message is never received, and counted.
 */
START_TEST(test_forged_hint_dropped)
{
	static const char ev[] = "{\"type\":\"new_message\",\"seq\":7,\"message\":{\"content\":\"forged\"}}";
	char *dir = bus_dir(), *name;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	unsigned char rec[BUS_DGRAM_MAX];
	struct bus_stats st;
	struct bus_hint h;
	struct bus *b = bus_open(dir);
	size_t n;
	pid_t pid;
	int fd, status;

	ck_assert_msg(geteuid() == 0, "the bus trust tests run as root (as in CI): they need a second uid");
	name = sock_of(dir, getpid());
	ck_assert_ptr_nonnull(name);
	/* Let the other uid reach the socket file: the kernel's credentials must stop it anyway. */
	ck_assert_int_eq(chmod(dir, 0711), 0);
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", name);
	{
		char *path;

		xasprintf(&path, "%s/%s", dir, name);
		ck_assert_int_eq(chmod(path, 0666), 0);
		free(path);
	}
	/* A well-formed user-event hint for alice, seq 7, with a new_message inline. */
	rec[0] = 1; rec[1] = BUS_USER_EVENT; rec[2] = 5; rec[3] = 0;
	rec[4] = (unsigned char)(sizeof ev - 1); rec[5] = 0;
	memset(rec + 6, 0, 8);
	rec[6] = 7;
	memcpy(rec + 14, "alice", 5);
	memcpy(rec + 19, ev, sizeof ev - 1);
	n = 19 + sizeof ev - 1;
	ck_assert_int_eq(bus_decode(rec, n, &h), 0);

	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (chdir(dir) != 0)
			_exit(91);
		become_other();
		fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
		if (fd == -1 || connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0)
			_exit(92);
		/* The kernel queues it before the listener looks at who we are. */
		_exit(send(fd, rec, n, 0) == (ssize_t)n ? 0 : 93);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "forger status %d", status);

	ck_assert_msg(!recv_wait(b, &h, 500), "a hint from uid %d was received: %s %s", OTHER_UID,
	    h.key, h.payload);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.refused, 1);
	ck_assert_uint_eq(st.received, 0);
	ck_assert_uint_eq(st.malformed, 0);
	/* Our own uid is still heard. */
	ck_assert_int_eq(bus_publish(b, BUS_USER_EVENT, "alice", 8, NULL, 0), 0);
	ck_assert(recv_wait(b, &h, 2000));
	ck_assert_uint_eq(h.seq, 8);
	bus_free(b);
	free(name);
	free(dir);
}
END_TEST

/*
 * A socket in the bus directory that listens as another uid never gets a hint: it would read
 * every message's content.
 */
START_TEST(test_foreign_listener_not_told)
{
	char *dir = bus_dir(), *odir, *opath, *path, got[8] = "";
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct bus_stats st;
	struct bus *b = bus_open(dir);
	int pfd[2], fd, c, status;
	struct pollfd pl;
	pid_t pid;
	ssize_t n;

	ck_assert_msg(geteuid() == 0, "the bus trust tests run as root (as in CI): they need a second uid");
	xasprintf(&odir, "%s.other", dir);
	ck_assert_int_eq(mkdir(odir, 0777), 0);
	ck_assert_int_eq(chmod(odir, 0777), 0);
	xasprintf(&opath, "%s/l.sock", odir);
	/* Relative to odir: the other uid cannot traverse the test's private parents. */
	snprintf(sun.sun_path, sizeof sun.sun_path, "l.sock");
	ck_assert_int_eq(pipe(pfd), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char buf[BUS_DGRAM_MAX + 1];

		close(pfd[0]);
		if (chdir(odir) != 0)
			_exit(91);
		become_other();
		fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
		if (fd == -1 || bind(fd, (struct sockaddr *)&sun, sizeof sun) != 0 || listen(fd, 8) != 0)
			_exit(92);
		(void)write(pfd[1], "L", 1);
		/* Report whether anything connected and what it sent within 3 s. */
		pl = (struct pollfd){ .fd = fd, .events = POLLIN };
		if (poll(&pl, 1, 3000) != 1 || (c = accept(fd, NULL, NULL)) == -1) {
			(void)write(pfd[1], "N", 1);
			_exit(0);
		}
		pl = (struct pollfd){ .fd = c, .events = POLLIN };
		n = poll(&pl, 1, 1000) == 1 ? recv(c, buf, sizeof buf, MSG_DONTWAIT) : -1;
		(void)write(pfd[1], n > 0 ? "H" : "C", 1);
		_exit(0);
	}
	close(pfd[1]);
	ck_assert_int_eq(read(pfd[0], got, 1), 1);
	ck_assert_int_eq(got[0], 'L');
	/* Moved into the bus directory under a live pid's name (the child's), as a peer would be. */
	xasprintf(&path, "%s/%ld-0000000000000001.sock", dir, (long)pid);
	ck_assert_int_eq(rename(opath, path), 0);
	ck_assert_int_eq(bus_publish(b, BUS_USER_EVENT, "alice", 9, "{\"secret\":1}", 12), 0);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.peers, 0);
	ck_assert_uint_ge(st.refused, 1);
	ck_assert_int_eq(read(pfd[0], got, 1), 1);
	ck_assert_msg(got[0] != 'H', "the other uid's listener read a hint");
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	close(pfd[0]);
	bus_free(b);
	unlink(path);
	rmdir(odir);
	free(path);
	free(opath);
	free(odir);
	free(dir);
}
END_TEST

/*
 * Hints another process had to drop for us (its backlog for us was full while we did not read)
 * are announced by one BUS_LOST after the ones it kept, so we re-read MySQL; our own drops of
 * hints for others do not concern us.
 */
START_TEST(test_lost_announced)
{
	char *dir = bus_dir();
	struct bus *pub = bus_open(dir), *rcv = bus_open(dir);
	struct bus_stats ps, rs;
	struct bus_hint h;
	uint64_t kept = 0, next = 0, lost = 0, after_lost = 0;
	int64_t t0;
	int i;

	/* Two buses of one process are two peers, each with its own sockets and backlogs. */
	for (i = 0; i < 40000; i++)
		(void)bus_publish(pub, BUS_USER_EVENT, "flood", (uint64_t)i, NULL, 0);
	bus_stats(pub, &ps);
	ck_assert_uint_gt(ps.dropped, 0);
	ck_assert_uint_eq(ps.peers, 1);
	ck_assert_int_eq(bus_publish(pub, BUS_LOST, "", 0, NULL, 0), -1);
	ck_assert_int_eq(errno, EINVAL);

	/* rcv catches up while pub's loop flushes; the kept hints come in order, then BUS_LOST. */
	t0 = parley_mono_ms();
	ps.lost = 0;
	while (parley_mono_ms() - t0 < 20000 && (lost == 0 || ps.lost == 0)) {
		while (bus_recv(pub, &h) == 0)
			;
		while (bus_recv(rcv, &h) == 0) {
			if (h.topic == BUS_LOST) {
				lost++;
				continue;
			}
			ck_assert_uint_ge(h.seq, next);
			next = h.seq + 1;
			if (lost > 0)
				after_lost++;
			kept++;
		}
		bus_stats(pub, &ps);
		usleep(1000);
	}
	ck_assert_msg(lost == 1, "BUS_LOST received %llu times after %llu hints",
	    (unsigned long long)lost, (unsigned long long)kept);
	/* Nothing it kept comes after the marker: the marker means "re-read now, you are caught up". */
	while (bus_recv(pub, &h) == 0)
		;
	ck_assert_int_eq(bus_recv(rcv, &h), -1);
	ck_assert_uint_eq(after_lost, 0);
	bus_stats(rcv, &rs);
	ck_assert_uint_eq(rs.lost, 1);
	ck_assert_uint_lt(kept, 40000);
	/* pub's own socket was not read during the burst either: it lost some and was told too. */
	bus_stats(pub, &ps);
	ck_assert_uint_eq(ps.lost, 1);
	ck_assert_uint_eq(ps.queued, 0);
	/* Every drop is accounted for: what rcv and pub itself missed. */
	ck_assert_uint_eq(ps.dropped, (40000 - kept) + (40000 - (ps.received - ps.lost)));
	/* After the marker, hints flow again and no second marker comes without a new drop. */
	ck_assert_int_eq(bus_publish(pub, BUS_USER_EVENT, "again", 1, NULL, 0), 0);
	ck_assert(recv_wait(rcv, &h, 2000));
	ck_assert_str_eq(h.key, "again");
	ck_assert_int_eq(bus_recv(rcv, &h), -1);
	bus_free(rcv);
	bus_free(pub);
	free(dir);
}
END_TEST

/*
 * A burst far beyond what a socket buffer holds (and beyond the kernel's datagram queue limit of
 * max_dgram_qlen + 1) reaches a peer that reads only after it, and ourselves, all of it, in
 * order, while publishing never blocks.
 */
START_TEST(test_burst_not_lost)
{
	char *dir = bus_dir(), line[256];
	struct bus *b = bus_open(dir);
	struct pollfd pfd[2];
	struct bus_stats st;
	struct bus_hint h;
	struct probe p;
	int64_t t0, worst = 0, t;
	int i, own = 0, done = 0;

	/* It reads nothing for 2 s: a publish that blocked would wait about that long. */
	probe_start(&p, (char *[]){ dir, "count", "5000", "30", "2000", NULL });
	probe_ready(&p);
	for (i = 0; i < 5000; i++) {
		t = parley_mono_ms();
		ck_assert_int_eq(bus_publish(b, BUS_USER_EVENT, "burst", (uint64_t)i, "x", 1), 0);
		if (parley_mono_ms() - t > worst)
			worst = parley_mono_ms() - t;
	}
	ck_assert_msg(worst < 1000, "one publish took %lld ms", (long long)worst);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.dropped, 0);
	ck_assert_uint_eq(st.peers, 1);
	ck_assert_uint_eq(st.sent + st.queued, 10000);

	/* Our loop: receive our own copies (in order) and flush the backlog to the late reader. */
	pfd[0] = (struct pollfd){ .fd = bus_fd(b), .events = POLLIN };
	pfd[1] = (struct pollfd){ .fd = p.fd, .events = POLLIN };
	t0 = parley_mono_ms();
	while ((!done || own < 5000) && parley_mono_ms() - t0 < 20000) {
		while (bus_recv(b, &h) == 0) {
			ck_assert_str_eq(h.key, "burst");
			ck_assert_uint_eq(h.seq, (uint64_t)own);
			own++;
		}
		ck_assert_int_eq(errno, EAGAIN);
		(void)poll(pfd, 2, 100);
		if (!done && pfd[1].revents != 0)
			done = probe_line(&p, line, sizeof line, 1000);
	}
	ck_assert_msg(done, "the late reader never finished");
	ck_assert_str_eq(line, "count=5000 ordered=1");
	ck_assert_int_eq(probe_wait(&p), 0);
	ck_assert_int_eq(own, 5000);
	bus_stats(b, &st);
	ck_assert_uint_eq(st.dropped, 0);
	ck_assert_uint_eq(st.queued, 0);
	ck_assert_uint_eq(st.sent, 10000);
	ck_assert_uint_eq(st.received, 5000);
	bus_free(b);
	free(dir);
}
END_TEST

struct pub_arg {
	struct bus	*b;
	int		 n;
};

static void *
publisher(void *arg)
{
	struct pub_arg *a = arg;
	int i;

	for (i = 0; i < a->n; i++)
		(void)bus_publish(a->b, BUS_USER_EVENT, "t", (uint64_t)i, "p", 1);
	return NULL;
}

/* Many threads publish while peers come and go: every send is accounted for, nothing crashes. */
START_TEST(test_threads_and_churn)
{
	char *dir = bus_dir();
	struct bus *b = bus_open(dir), *other;
	struct pub_arg a = { b, 20000 };
	struct bus_stats st;
	pthread_t t[4];
	int i;

	for (i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, publisher, &a), 0);
	for (i = 0; i < 200; i++) {
		other = bus_open(dir);
		usleep(200);
		bus_free(other);
	}
	for (i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	/*
	 * The first publish may still use the snapshot taken just before the last peer left (the
	 * directory is looked at no more than once a millisecond); its broken connection forces
	 * the rescan that the second one makes.
	 */
	(void)bus_publish(b, BUS_USER_EVENT, "t", 0, NULL, 0);
	usleep(2000);
	(void)bus_publish(b, BUS_USER_EVENT, "t", 0, NULL, 0);
	bus_stats(b, &st);
	/* Every publish reached at least our own socket, waits for it, or was counted dropped. */
	ck_assert_uint_ge(st.sent + st.queued + st.dropped, 80000);
	ck_assert_uint_eq(st.peers, 0);
	ck_assert_uint_eq(st.stale, 0);
	bus_free(b);
	free(dir);
}
END_TEST

static Suite *
bus_suite(void)
{
	Suite *s = suite_create("bus");
	TCase *tc = tcase_create("bus");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_dir_and_modes);
	tcase_add_test(tc, test_self_and_other);
	tcase_add_test(tc, test_host_id);
	tcase_add_test(tc, test_one_to_two);
	tcase_add_test(tc, test_socket_removed);
	tcase_add_test(tc, test_stopped_and_killed_peer);
	tcase_add_test(tc, test_stale_at_new);
	tcase_add_test(tc, test_only_dead_removed);
	tcase_add_test(tc, test_large_payload);
	tcase_add_test(tc, test_malformed);
	tcase_add_test(tc, test_decode);
	tcase_add_test(tc, test_dir_refused);
	tcase_add_test(tc, test_forged_hint_dropped);
	tcase_add_test(tc, test_foreign_listener_not_told);
	tcase_add_test(tc, test_lost_announced);
	tcase_add_test(tc, test_threads_and_churn);
	tcase_add_test(tc, test_burst_not_lost);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	log_init("check_bus", LOG_LEVEL_WARN, 0);
	return testenv_run(bus_suite());
}
