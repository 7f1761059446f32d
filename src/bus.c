/* bus.c - the UNIX-socket notification bus: one datagram socket per process, hints sent to all. */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/un.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "log.h"
#include "xmalloc.h"

/*
 * Wire format of one hint (one datagram, all integers little-endian):
 *   0  version (BUS_WIRE_VERSION)
 *   1  topic
 *   2  key length (0..PARLEY_ID_MAX)
 *   3  reserved, 0
 *   4  payload length, 2 bytes (0..BUS_PAYLOAD_MAX)
 *   6  seq, 8 bytes
 *   14 key bytes, then payload bytes; the datagram ends exactly there.
 */
#define BUS_WIRE_VERSION	1
#define BUS_HDR			14
#define BUS_DGRAM_MAX		(BUS_HDR + PARLEY_ID_MAX + BUS_PAYLOAD_MAX)

/* Socket buffers asked for; the kernel caps them at [rw]mem_max unless we may force them. */
#define BUS_SOCKBUF		(4 * 1024 * 1024)
/* Rescan the directory at least this often even when its mtime looks unchanged. */
#define BUS_RESCAN_MS		1000
/*
 * Look at the directory's mtime at most once per millisecond: a stat costs as much as a send,
 * and a process that bound its socket less than a millisecond ago has nobody waiting yet.
 */
#define BUS_STAT_MS		1
/*
 * Directory mtimes come from a coarse clock: a socket bound in the same tick as our scan leaves
 * the mtime unchanged. While the mtime is this close to the scan, every look rescans.
 */
#define BUS_RACY_NS		(50 * 1000000LL)

/*
 * One other process's socket. Each peer gets its own connected sending socket, so that a stopped
 * peer only ties up the send buffer charged to that socket, never the sends to everyone else, and
 * a send needs no path lookup. Shared by successive peer lists; freed with its last reference.
 */
struct bus_peer {
	char	*name;		/* file name in the bus directory */
	pid_t	 pid;		/* from the name, 0 when it does not parse */
	int	 fd;
	int	 refs;		/* under bus.lock */
};

/* An immutable snapshot of the peers: publishers hold a reference while sending outside the lock. */
struct bus_peers {
	struct bus_peer	**v;
	size_t		  n;
	int		  refs;	/* under bus.lock */
};

struct bus {
	char		*dir;
	char		*name;		/* our socket's file name */
	int		 fd;		/* bound, receives */
	int		 self_fd;	/* connected to our own socket */

	pthread_mutex_t	 lock;
	struct bus_peers *peers;	/* current snapshot */
	struct timespec	 dir_mtime;	/* of the last scan */
	int64_t		 scan_ms;	/* monotonic time of the last scan */
	int64_t		 stat_ms;	/* and of the last look at the directory */
	int		 rescan;	/* forced now: a dead peer's file was removed */
	int		 racy;		/* the last scan may have missed a socket: scan at the next look */

	uint64_t	 sent, dropped, stale, received, malformed;	/* atomics */
};

static void
bus_count(uint64_t *c, uint64_t n)
{
	__atomic_add_fetch(c, n, __ATOMIC_RELAXED);
}

/* Parse "<pid>-<anything>.sock"; 1 when name is a bus socket name (pid may be 0 if absent). */
static int
bus_parse_name(const char *name, pid_t *pid)
{
	size_t len = strlen(name);
	char *end;
	long v;

	*pid = 0;
	if (len <= 5 || strcmp(name + len - 5, ".sock") != 0 || name[0] == '.')
		return 0;
	errno = 0;
	v = strtol(name, &end, 10);
	if (errno == 0 && end != name && *end == '-' && v > 0)
		*pid = (pid_t)v;
	return 1;
}

static int
bus_path(struct sockaddr_un *sun, const char *dir, const char *name)
{
	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	if ((size_t)snprintf(sun->sun_path, sizeof sun->sun_path, "%s/%s", dir, name) >=
	    sizeof sun->sun_path) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

/* 1 when the process that owned a socket is known to be gone (so its file may be unlinked). */
static int
bus_pid_dead(pid_t pid)
{
	return pid > 0 && kill(pid, 0) == -1 && errno == ESRCH;
}

/* Unlink the socket of a dead process; counted as stale. */
static void
bus_unlink_stale(struct bus *b, const char *name)
{
	struct sockaddr_un sun;

	if (bus_path(&sun, b->dir, name) != 0)
		return;
	if (unlink(sun.sun_path) == 0) {
		bus_count(&b->stale, 1);
		log_info("bus: removed stale socket %s", sun.sun_path);
	}
}

static void
bus_peer_unref(struct bus_peer *p)
{
	if (p == NULL || --p->refs > 0)
		return;
	close(p->fd);
	free(p->name);
	free(p);
}

/* Drop a reference to a snapshot; called with bus.lock held. */
static void
bus_peers_unref(struct bus_peers *ps)
{
	size_t i;

	if (ps == NULL || --ps->refs > 0)
		return;
	for (i = 0; i < ps->n; i++)
		bus_peer_unref(ps->v[i]);
	free(ps->v);
	free(ps);
}

static void
bus_sockbuf(int fd, int opt, int force)
{
	int v = BUS_SOCKBUF;

	if (setsockopt(fd, SOL_SOCKET, force, &v, sizeof v) == 0)
		return;
	(void)setsockopt(fd, SOL_SOCKET, opt, &v, sizeof v);
}

/* A new sending socket connected to name; -1 with errno (ECONNREFUSED: nobody bound there). */
static int
bus_connect(const char *dir, const char *name)
{
	struct sockaddr_un sun;
	int fd;

	if (bus_path(&sun, dir, name) != 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	bus_sockbuf(fd, SO_SNDBUF, SO_SNDBUFFORCE);
	return fd;
}

static struct bus_peer *
bus_peers_find(struct bus_peers *ps, const char *name)
{
	size_t i;

	for (i = 0; ps != NULL && i < ps->n; i++) {
		if (strcmp(ps->v[i]->name, name) == 0)
			return ps->v[i];
	}
	return NULL;
}

/*
 * Build a new snapshot from the directory, reusing the sockets of peers already known and
 * removing the files of dead processes. Called with bus.lock held.
 */
static int
bus_scan(struct bus *b, const struct timespec *mtime)
{
	struct bus_peers *ps;
	struct bus_peer *p;
	struct dirent *de;
	struct timespec now;
	size_t cap = 8;
	pid_t pid;
	DIR *d;
	int fd;

	if ((d = opendir(b->dir)) == NULL) {
		log_warn("bus: cannot read %s: %s", b->dir, strerror(errno));
		return -1;
	}
	ps = xcalloc(1, sizeof *ps);
	ps->v = xreallocarray(NULL, cap, sizeof *ps->v);
	ps->refs = 1;
	while ((de = readdir(d)) != NULL) {
		if (!bus_parse_name(de->d_name, &pid) || strcmp(de->d_name, b->name) == 0)
			continue;
		if ((p = bus_peers_find(b->peers, de->d_name)) != NULL) {
			p->refs++;
		} else {
			if ((fd = bus_connect(b->dir, de->d_name)) == -1) {
				if ((errno == ECONNREFUSED || errno == ENOENT) && bus_pid_dead(pid))
					bus_unlink_stale(b, de->d_name);
				continue;
			}
			p = xcalloc(1, sizeof *p);
			p->name = xstrdup(de->d_name);
			p->pid = pid;
			p->fd = fd;
			p->refs = 1;
		}
		if (ps->n == cap) {
			cap *= 2;
			ps->v = xreallocarray(ps->v, cap, sizeof *ps->v);
		}
		ps->v[ps->n++] = p;
	}
	closedir(d);

	bus_peers_unref(b->peers);
	b->peers = ps;
	b->dir_mtime = *mtime;
	b->scan_ms = parley_mono_ms();
	clock_gettime(CLOCK_REALTIME, &now);
	b->rescan = 0;
	b->racy = (now.tv_sec - mtime->tv_sec) * 1000000000LL +
	    (now.tv_nsec - mtime->tv_nsec) < BUS_RACY_NS;
	return 0;
}

/* The current snapshot, rescanned first when the directory may have changed; caller unrefs. */
static struct bus_peers *
bus_peers_get(struct bus *b)
{
	struct bus_peers *ps;
	struct timespec mtime = { 0, 0 };
	struct stat st;
	int64_t now = parley_mono_ms();

	pthread_mutex_lock(&b->lock);
	if (b->rescan || now - b->stat_ms >= BUS_STAT_MS) {
		b->stat_ms = now;
		if (stat(b->dir, &st) == 0)
			mtime = st.st_mtim;
		if (b->rescan || b->racy || mtime.tv_sec != b->dir_mtime.tv_sec ||
		    mtime.tv_nsec != b->dir_mtime.tv_nsec || now - b->scan_ms >= BUS_RESCAN_MS)
			(void)bus_scan(b, &mtime);
	}
	ps = b->peers;
	if (ps != NULL)
		ps->refs++;
	pthread_mutex_unlock(&b->lock);
	return ps;
}

/* mkdir -p with mode for the directories we create. */
static int
bus_mkdirs(const char *dir, mode_t mode)
{
	char *p, *s, c;
	int rc = -1;

	if (dir[0] == '\0') {
		errno = EINVAL;
		return -1;
	}
	s = xstrdup(dir);

	for (p = s + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		c = *p;
		*p = '\0';
		if (mkdir(s, mode) == 0) {
			/* umask may have narrowed it; the group is meant to share the bus. */
			(void)chmod(s, mode);
		} else if (errno != EEXIST) {
			goto out;
		}
		*p = c;
		if (c == '\0')
			break;
	}
	rc = 0;
out:
	free(s);
	return rc;
}

static void
bus_warn_qlen(void)
{
	FILE *f = fopen("/proc/sys/net/unix/max_dgram_qlen", "r");
	long q = 0;

	if (f == NULL)
		return;
	if (fscanf(f, "%ld", &q) == 1 && q < 64)
		log_info("bus: net.unix.max_dgram_qlen is %ld: a receiver queues at most %ld hints; "
		    "raise it (e.g. 512) to absorb bursts", q, q + 1);
	fclose(f);
}

struct bus *
bus_new(const char *dir, char **cause)
{
	struct bus *b;
	struct sockaddr_un sun;
	struct timespec mtime = { 0, 0 };
	struct stat st;
	uint64_t rnd;

	*cause = NULL;
	if (bus_mkdirs(dir, 0770) != 0) {
		xasprintf(cause, "bus directory %s: %s", dir, strerror(errno));
		return NULL;
	}
	b = xcalloc(1, sizeof *b);
	b->dir = xstrdup(dir);
	b->fd = b->self_fd = -1;
	pthread_mutex_init(&b->lock, NULL);

	if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
		rnd = (uint64_t)parley_now_ms() ^ ((uint64_t)getpid() << 32);
	xasprintf(&b->name, "%ld-%016llx.sock", (long)getpid(), (unsigned long long)rnd);
	if (bus_path(&sun, dir, b->name) != 0) {
		xasprintf(cause, "bus socket path too long in %s", dir);
		goto fail;
	}
	b->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (b->fd == -1 || bind(b->fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		xasprintf(cause, "bus socket %s: %s", sun.sun_path, strerror(errno));
		goto fail;
	}
	if (chmod(sun.sun_path, 0660) == -1) {
		xasprintf(cause, "chmod %s: %s", sun.sun_path, strerror(errno));
		goto fail_unlink;
	}
	bus_sockbuf(b->fd, SO_RCVBUF, SO_RCVBUFFORCE);
	if ((b->self_fd = bus_connect(dir, b->name)) == -1) {
		xasprintf(cause, "bus socket %s: connect: %s", sun.sun_path, strerror(errno));
		goto fail_unlink;
	}
	/* The first scan also removes what crashed processes left: refused and their pid gone. */
	if (stat(dir, &st) == 0)
		mtime = st.st_mtim;
	(void)bus_scan(b, &mtime);
	bus_warn_qlen();
	return b;

fail_unlink:
	unlink(sun.sun_path);
fail:
	bus_free(b);
	return NULL;
}

void
bus_free(struct bus *b)
{
	struct sockaddr_un sun;

	if (b == NULL)
		return;
	if (b->fd != -1) {
		if (bus_path(&sun, b->dir, b->name) == 0)
			unlink(sun.sun_path);
		close(b->fd);
	}
	if (b->self_fd != -1)
		close(b->self_fd);
	bus_peers_unref(b->peers);
	pthread_mutex_destroy(&b->lock);
	free(b->name);
	free(b->dir);
	free(b);
}

int
bus_fd(const struct bus *b)
{
	return b->fd;
}

/* Encode a hint into buf (BUS_DGRAM_MAX bytes); returns its length. */
static size_t
bus_encode(unsigned char *buf, enum bus_topic topic, const char *key, size_t klen, uint64_t seq,
    const char *payload, size_t len)
{
	int i;

	buf[0] = BUS_WIRE_VERSION;
	buf[1] = (unsigned char)topic;
	buf[2] = (unsigned char)klen;
	buf[3] = 0;
	buf[4] = (unsigned char)(len & 0xff);
	buf[5] = (unsigned char)(len >> 8);
	for (i = 0; i < 8; i++)
		buf[6 + i] = (unsigned char)(seq >> (8 * i));
	memcpy(buf + BUS_HDR, key, klen);
	if (len > 0)
		memcpy(buf + BUS_HDR + klen, payload, len);
	return BUS_HDR + klen + len;
}

/* Validate and decode one datagram; -1 when it is not a well-formed hint. */
static int
bus_decode(const unsigned char *buf, size_t n, struct bus_hint *h)
{
	size_t klen, len;
	int i;

	if (n < BUS_HDR || buf[0] != BUS_WIRE_VERSION || buf[3] != 0)
		return -1;
	if (buf[1] < BUS_USER_EVENT || buf[1] > BUS_SHUTDOWN)
		return -1;
	klen = buf[2];
	len = (size_t)buf[4] | ((size_t)buf[5] << 8);
	if (klen > PARLEY_ID_MAX || len > BUS_PAYLOAD_MAX || n != BUS_HDR + klen + len)
		return -1;
	if (memchr(buf + BUS_HDR, '\0', klen) != NULL)
		return -1;
	h->topic = (enum bus_topic)buf[1];
	h->seq = 0;
	for (i = 0; i < 8; i++)
		h->seq |= (uint64_t)buf[6 + i] << (8 * i);
	memcpy(h->key, buf + BUS_HDR, klen);
	h->key[klen] = '\0';
	memcpy(h->payload, buf + BUS_HDR + klen, len);
	h->payload[len] = '\0';
	h->len = len;
	return 0;
}

/* Send one datagram to a peer; 1 sent, 0 dropped (queue full), -1 peer gone. */
static int
bus_send(struct bus *b, int fd, const unsigned char *buf, size_t n)
{
	if (send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n) {
		bus_count(&b->sent, 1);
		return 1;
	}
	switch (errno) {
	case ECONNREFUSED:
	case ECONNRESET:
	case ENOTCONN:
	case ENOENT:
	case EPIPE:
		return -1;
	default:
		/* EAGAIN / ENOBUFS: the receiver is slow or stopped; it refetches by cursor. */
		bus_count(&b->dropped, 1);
		return 0;
	}
}

/* A peer refused a send: if its process is gone, remove its file and rescan. */
static void
bus_peer_gone(struct bus *b, const struct bus_peer *p)
{
	if (!bus_pid_dead(p->pid))
		return;
	bus_unlink_stale(b, p->name);
	pthread_mutex_lock(&b->lock);
	b->rescan = 1;
	pthread_mutex_unlock(&b->lock);
}

int
bus_publish(struct bus *b, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	unsigned char buf[BUS_DGRAM_MAX];
	struct bus_peers *ps;
	size_t i, n, klen;
	int full = 0, rc;

	if (key == NULL)
		key = "";
	klen = strlen(key);
	if (klen > PARLEY_ID_MAX || topic < BUS_USER_EVENT || topic > BUS_SHUTDOWN) {
		errno = EINVAL;
		return -1;
	}
	if (payload == NULL || len > BUS_PAYLOAD_MAX)
		len = 0;
	n = bus_encode(buf, topic, key, klen, seq, payload, len);

	if (bus_send(b, b->self_fd, buf, n) != 1)
		full = 1;
	if (topic == BUS_SHUTDOWN)
		goto out;
	ps = bus_peers_get(b);
	for (i = 0; ps != NULL && i < ps->n; i++) {
		rc = bus_send(b, ps->v[i]->fd, buf, n);
		if (rc == 0)
			full = 1;
		else if (rc == -1)
			bus_peer_gone(b, ps->v[i]);
	}
	pthread_mutex_lock(&b->lock);
	bus_peers_unref(ps);
	pthread_mutex_unlock(&b->lock);
out:
	if (full) {
		errno = EAGAIN;
		return -1;
	}
	return 0;
}

int
bus_recv(struct bus *b, struct bus_hint *h)
{
	/* One byte more than the largest hint, so an oversized datagram shows as too long. */
	unsigned char buf[BUS_DGRAM_MAX + 1];
	ssize_t n;

	for (;;) {
		n = recv(b->fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if ((size_t)n <= BUS_DGRAM_MAX && bus_decode(buf, (size_t)n, h) == 0) {
			bus_count(&b->received, 1);
			return 0;
		}
		bus_count(&b->malformed, 1);
	}
}

void
bus_stats(struct bus *b, struct bus_stats *st)
{
	memset(st, 0, sizeof *st);
	st->sent = __atomic_load_n(&b->sent, __ATOMIC_RELAXED);
	st->dropped = __atomic_load_n(&b->dropped, __ATOMIC_RELAXED);
	st->stale = __atomic_load_n(&b->stale, __ATOMIC_RELAXED);
	st->received = __atomic_load_n(&b->received, __ATOMIC_RELAXED);
	st->malformed = __atomic_load_n(&b->malformed, __ATOMIC_RELAXED);
	pthread_mutex_lock(&b->lock);
	st->peers = b->peers != NULL ? b->peers->n : 0;
	pthread_mutex_unlock(&b->lock);
}
