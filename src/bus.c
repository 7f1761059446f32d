/* bus.c - the UNIX-socket notification bus: a seqpacket listener per process, one connection per peer. */
#include <sys/types.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/un.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "bus.h"
#include "log.h"
#include "xmalloc.h"

/*
 * Wire format of one hint (one seqpacket record, all integers little-endian):
 *   0  version (BUS_WIRE_VERSION)
 *   1  topic
 *   2  key length (0..PARLEY_ID_MAX)
 *   3  reserved, 0
 *   4  payload length, 2 bytes (0..BUS_PAYLOAD_MAX)
 *   6  seq, 8 bytes
 *   14 key bytes, then payload bytes; the record ends exactly there.
 *
 * Why seqpacket connections and not datagrams to a bound socket: Linux queues at most
 * net.unix.max_dgram_qlen + 1 (default 11) unconnected datagrams per receiver, whatever its
 * buffer, so a burst lost hints. A connected pair is limited only by the sender's SO_SNDBUF
 * (each small record costs about 768 bytes of it), and beyond that by our own backlog below.
 */
#define BUS_WIRE_VERSION	1
#define BUS_HDR			14

/* Send buffer asked for per connection; the kernel caps it at net.core.wmem_max. */
#define BUS_SNDBUF		(1024 * 1024)
/*
 * What a peer's kernel buffer cannot take waits in a backlog of ours, flushed by the owner's
 * loop when the socket turns writable. Bounded, so a stopped peer costs at most this much.
 */
#define BUS_BACKLOG_HINTS	32768
#define BUS_BACKLOG_BYTES	(8 * 1024 * 1024)
/* bus_recv looks at new connections and writable peers at least every this many records. */
#define BUS_POLL_EVERY		64
#define BUS_EPOLL_EVENTS	64
/* epoll tags that are not connections. */
#define BUS_EV_LISTEN		0
#define BUS_EV_FLUSH		1
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
 * One process's listening socket and our connection to it. A stopped peer only fills the send
 * buffer of its own connection and its own backlog, never the sends to everyone else. Shared
 * by successive peer lists; freed with its last reference.
 */
struct bus_peer {
	char		*name;		/* file name in the bus directory */
	pid_t		 pid;		/* from the name, 0 when it does not parse */
	int		 refs;		/* under bus.lock */

	pthread_mutex_t	 lock;		/* the fields below */
	int		 fd;		/* connected, non-blocking; -1 once broken */
	int		 armed;		/* fd is in bus.ep waiting for EPOLLOUT */
	unsigned char	*q;		/* backlog: records, each after a 2-byte length */
	size_t		 qoff;		/* where the oldest starts */
	size_t		 qlen;		/* bytes from qoff on */
	size_t		 qcap;
	size_t		 qn;		/* records in the backlog */
	int		 lost;		/* a record was dropped: a BUS_LOST marker is owed */
};

/* An immutable snapshot of the peers: publishers hold a reference while sending outside the lock. */
struct bus_peers {
	struct bus_peer	**v;
	size_t		  n;
	int		  refs;	/* under bus.lock */
};

/* An accepted connection we receive on; loop thread only. */
struct bus_conn {
	int			 fd;
	int			 ready;		/* on bus.ready */
	TAILQ_ENTRY(bus_conn)	 all;
	TAILQ_ENTRY(bus_conn)	 rlink;
};
TAILQ_HEAD(bus_conns, bus_conn);

struct bus {
	char		*dir;
	char		*name;		/* our socket's file name */
	uid_t		 uid;		/* the only peer uid we talk to: our own effective uid */
	int64_t		 refused_log_ms;	/* atomic: last refusal logged (at most one a second) */
	int		 lfd;		/* listening */
	int		 ep;		/* epoll: lfd, accepted connections, backlogged peers; bus_fd */
	struct bus_peer	*self;		/* our connection to lfd */

	pthread_mutex_t	 lock;
	struct bus_peers *peers;	/* current snapshot, without self */
	struct timespec	 dir_mtime;	/* of the last scan */
	int64_t		 scan_ms;	/* monotonic time of the last scan */
	int64_t		 stat_ms;	/* and of the last look at the directory */
	int		 rescan;	/* forced now: a connection broke */
	int		 racy;		/* the last scan may have missed a socket: scan at the next look */

	int		 relisten;	/* atomic: a scan did not find our socket file */

	/* loop thread only */
	ino_t		 self_ino;	/* our socket file, to tell it was removed or replaced */
	int64_t		 self_check_ms;	/* monotonic time of the last look at it */
	int		 relisten_failed;	/* said so once; quiet until it works again */
	struct bus_conns conns;
	struct bus_conns ready;		/* connections that may have a record, read round-robin */
	int		 polled;	/* records read since the last epoll_wait */

	uint64_t	 sent, dropped, stale, received, malformed, queued;	/* atomics */
	uint64_t	 refused, lost;						/* atomics */

	struct bus_backend bridge;	/* set before the threads start; ops NULL: none */
};

static void
bus_count(uint64_t *c, uint64_t n)
{
	__atomic_add_fetch(c, n, __ATOMIC_RELAXED);
}

static void
bus_uncount(uint64_t *c, uint64_t n)
{
	__atomic_sub_fetch(c, n, __ATOMIC_RELAXED);
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

/* A new sending socket connected to name; -1 with errno (ECONNREFUSED: nobody listens there). */
static int
bus_connect(const char *dir, const char *name)
{
	struct sockaddr_un sun;
	int fd, v = BUS_SNDBUF;

	if (bus_path(&sun, dir, name) != 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -1;
	/* Before connect: the buffer is charged to this socket from the first record on. */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
	if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/*
 * 1 when the process at the other end of fd runs as our uid. SO_PEERCRED is what the kernel
 * recorded at connect() (for an accepted connection) or listen() (for one we made): it cannot be
 * forged by the peer, whatever it sends later.
 */
static int
bus_cred_ok(const struct bus *b, int fd, uid_t *uid)
{
	struct ucred uc;
	socklen_t len = sizeof uc;

	*uid = (uid_t)-1;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == -1 || len != sizeof uc)
		return 0;
	*uid = uc.uid;
	return uc.uid == b->uid;
}

/* A connection from or to another uid was closed unused: count it, log it at most once a second. */
static void
bus_refuse(struct bus *b, const char *what, uid_t uid)
{
	int64_t now = parley_mono_ms(), last;

	bus_count(&b->refused, 1);
	last = __atomic_load_n(&b->refused_log_ms, __ATOMIC_RELAXED);
	if (now - last < 1000 ||
	    !__atomic_compare_exchange_n(&b->refused_log_ms, &last, now, 0, __ATOMIC_RELAXED,
	    __ATOMIC_RELAXED))
		return;
	log_warn("bus: refused %s of uid %ld (only uid %ld may use %s)", what,
	    uid == (uid_t)-1 ? -1L : (long)uid, (long)b->uid, b->dir);
}

static struct bus_peer *
bus_peer_new(const char *name, pid_t pid, int fd)
{
	struct bus_peer *p = xcalloc(1, sizeof *p);

	p->name = xstrdup(name);
	p->pid = pid;
	p->fd = fd;
	p->refs = 1;
	pthread_mutex_init(&p->lock, NULL);
	return p;
}

/* Drop a reference; the last one closes the connection and forgets its backlog. */
static void
bus_peer_unref(struct bus *b, struct bus_peer *p)
{
	if (p == NULL || --p->refs > 0)
		return;
	if (p->fd != -1)
		close(p->fd);
	bus_uncount(&b->queued, p->qn);
	pthread_mutex_destroy(&p->lock);
	free(p->q);
	free(p->name);
	free(p);
}

/* Drop a reference to a snapshot; called with bus.lock held. */
static void
bus_peers_unref(struct bus *b, struct bus_peers *ps)
{
	size_t i;

	if (ps == NULL || --ps->refs > 0)
		return;
	for (i = 0; i < ps->n; i++)
		bus_peer_unref(b, ps->v[i]);
	free(ps->v);
	free(ps);
}

/* 1 when p's connection still works; takes p.lock (so called with at most bus.lock held). */
static int
bus_peer_alive(struct bus_peer *p)
{
	int alive;

	pthread_mutex_lock(&p->lock);
	alive = p->fd != -1;
	pthread_mutex_unlock(&p->lock);
	return alive;
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
 * Build a new snapshot from the directory, reusing the connections that still work, connecting
 * to new (or broken) peers and removing the files of dead processes. Called with bus.lock held.
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
	int fd, self_seen = 0;

	if ((d = opendir(b->dir)) == NULL) {
		log_warn("bus: cannot read %s: %s", b->dir, strerror(errno));
		return -1;
	}
	ps = xcalloc(1, sizeof *ps);
	ps->v = xreallocarray(NULL, cap, sizeof *ps->v);
	ps->refs = 1;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, b->name) == 0)
			self_seen = 1;
		if (!bus_parse_name(de->d_name, &pid) || strcmp(de->d_name, b->name) == 0)
			continue;
		if ((p = bus_peers_find(b->peers, de->d_name)) != NULL && bus_peer_alive(p)) {
			p->refs++;
		} else {
			uid_t uid;

			if ((fd = bus_connect(b->dir, de->d_name)) == -1) {
				if ((errno == ECONNREFUSED || errno == ENOENT) && bus_pid_dead(pid))
					bus_unlink_stale(b, de->d_name);
				continue;
			}
			/* A listener of another uid would read every hint we send: never send it one. */
			if (!bus_cred_ok(b, fd, &uid)) {
				close(fd);
				bus_refuse(b, "a listening socket", uid);
				continue;
			}
			p = bus_peer_new(de->d_name, pid, fd);
		}
		if (ps->n == cap) {
			cap *= 2;
			ps->v = xreallocarray(ps->v, cap, sizeof *ps->v);
		}
		ps->v[ps->n++] = p;
	}
	closedir(d);
	if (!self_seen)
		__atomic_store_n(&b->relisten, 1, __ATOMIC_RELAXED);

	bus_peers_unref(b, b->peers);
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
bus_peers_get(struct bus *b, int look)
{
	struct bus_peers *ps;
	struct timespec mtime = { 0, 0 };
	struct stat st;
	int64_t now = parley_mono_ms();

	pthread_mutex_lock(&b->lock);
	if (look && (b->rescan || now - b->stat_ms >= BUS_STAT_MS)) {
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

static void
bus_peers_put(struct bus *b, struct bus_peers *ps)
{
	pthread_mutex_lock(&b->lock);
	bus_peers_unref(b, ps);
	pthread_mutex_unlock(&b->lock);
}

/*
 * A connection broke (EPIPE, reset). Its file goes only when nobody listens there any more and
 * its process is gone (a pid may look dead from another pid namespace); rescan either way.
 */
static void
bus_peer_gone(struct bus *b, const struct bus_peer *p)
{
	int fd;

	if (p != b->self) {
		if ((fd = bus_connect(b->dir, p->name)) != -1)
			close(fd);
		else if (errno == ECONNREFUSED && bus_pid_dead(p->pid))
			bus_unlink_stale(b, p->name);
	}
	pthread_mutex_lock(&b->lock);
	b->rescan = 1;
	pthread_mutex_unlock(&b->lock);
}

/* Forget a broken connection and what waited for it; called with p.lock held. */
static void
bus_peer_break(struct bus *b, struct bus_peer *p)
{
	if (p->fd != -1)
		close(p->fd);	/* also takes it out of bus.ep */
	p->fd = -1;
	p->armed = 0;
	p->lost = 0;	/* nobody reads there any more */
	bus_uncount(&b->queued, p->qn);
	p->qoff = p->qlen = p->qn = 0;
}

/* Hand one record to the kernel; 1 taken, 0 buffer full, -1 connection broken. */
static int
bus_send1(struct bus *b, int fd, const unsigned char *buf, size_t n)
{
	if (send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n) {
		bus_count(&b->sent, 1);
		return 1;
	}
	switch (errno) {
	case EAGAIN:
	case ENOBUFS:
	case ENOMEM:
	case EINTR:
		return 0;
	default:
		return -1;
	}
}

/*
 * Send what waits in p's backlog, oldest first, then the BUS_LOST marker if a record was dropped
 * meanwhile (after everything queued before the drop, so the receiver re-reads MySQL only once
 * it has caught up); p.lock held. 1 emptied, 0 still waiting, -1 broken.
 */
static int
bus_backlog_flush(struct bus *b, struct bus_peer *p)
{
	unsigned char mark[BUS_HDR];
	size_t n;
	int rc;

	while (p->qn > 0) {
		n = (size_t)p->q[p->qoff] | ((size_t)p->q[p->qoff + 1] << 8);
		if ((rc = bus_send1(b, p->fd, p->q + p->qoff + 2, n)) != 1)
			return rc;
		p->qoff += 2 + n;
		p->qlen -= 2 + n;
		p->qn--;
		bus_uncount(&b->queued, 1);
	}
	p->qoff = p->qlen = 0;
	if (p->lost) {
		n = bus_encode(mark, BUS_LOST, "", 0, 0, NULL, 0);
		if ((rc = bus_send1(b, p->fd, mark, n)) != 1)
			return rc;
		p->lost = 0;
	}
	return 1;
}

/* Append a record to p's backlog; p.lock held. -1 when the backlog is full. */
static int
bus_backlog_push(struct bus *b, struct bus_peer *p, const unsigned char *buf, size_t n)
{
	size_t need = p->qlen + 2 + n;

	if (p->qn >= BUS_BACKLOG_HINTS || need > BUS_BACKLOG_BYTES)
		return -1;
	if (p->qoff + need > p->qcap) {
		if (p->qoff > 0) {
			memmove(p->q, p->q + p->qoff, p->qlen);
			p->qoff = 0;
		}
		if (need > p->qcap) {
			p->qcap = p->qcap == 0 ? 16384 : p->qcap;
			while (p->qcap < need)
				p->qcap *= 2;
			p->q = xrealloc(p->q, p->qcap);
		}
	}
	p->q[p->qoff + p->qlen] = (unsigned char)(n & 0xff);
	p->q[p->qoff + p->qlen + 1] = (unsigned char)(n >> 8);
	memcpy(p->q + p->qoff + p->qlen + 2, buf, n);
	p->qlen += 2 + n;
	p->qn++;
	bus_count(&b->queued, 1);
	return 0;
}

/* Ask the owner's loop to flush p's backlog when its socket turns writable; p.lock held. */
static void
bus_peer_arm(struct bus *b, struct bus_peer *p)
{
	struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = BUS_EV_FLUSH };

	if (p->armed)
		return;
	if (epoll_ctl(b->ep, EPOLL_CTL_ADD, p->fd, &ev) == 0 || errno == EEXIST)
		p->armed = 1;
	else
		log_warn("bus: epoll_ctl: %s", strerror(errno));	/* the next publish flushes */
}

static void
bus_peer_disarm(struct bus *b, struct bus_peer *p)
{
	if (!p->armed)
		return;
	(void)epoll_ctl(b->ep, EPOLL_CTL_DEL, p->fd, NULL);
	p->armed = 0;
}

/*
 * Give one record to a peer, behind whatever already waits for it, so hints arrive in order.
 * 1 handed over (sent or queued), 0 dropped (backlog full), -1 connection broken.
 */
static int
bus_peer_send(struct bus *b, struct bus_peer *p, const unsigned char *buf, size_t n)
{
	int rc;

	pthread_mutex_lock(&p->lock);
	if (p->fd == -1 && p == b->self) {
		/* Our own listener never goes away: a broken self connection is simply remade. */
		p->fd = bus_connect(b->dir, b->name);
	}
	if (p->fd == -1) {
		rc = -1;
		goto out;
	}
	rc = p->qn > 0 || p->lost ? bus_backlog_flush(b, p) : 1;
	if (rc == 1)
		rc = bus_send1(b, p->fd, buf, n);
	if (rc == -1) {
		bus_peer_break(b, p);
		goto out;
	}
	if (rc == 0) {
		if (bus_backlog_push(b, p, buf, n) == 0) {
			bus_peer_arm(b, p);
			rc = 1;
		} else {
			/* The receiver learns it from the marker that follows the backlog. */
			bus_count(&b->dropped, 1);
			p->lost = 1;
			bus_peer_arm(b, p);
		}
	}
out:
	pthread_mutex_unlock(&p->lock);
	if (rc == -1)
		bus_peer_gone(b, p);
	return rc;
}

/* The owner's loop saw a writable peer: flush p's backlog, stop watching it once empty. */
static void
bus_peer_flush(struct bus *b, struct bus_peer *p)
{
	int rc = 1;

	pthread_mutex_lock(&p->lock);
	if (p->fd != -1 && (p->qn > 0 || p->lost))
		rc = bus_backlog_flush(b, p);
	if (rc == -1)
		bus_peer_break(b, p);
	else if (rc == 1)
		bus_peer_disarm(b, p);
	pthread_mutex_unlock(&p->lock);
	if (rc == -1)
		bus_peer_gone(b, p);
}

static void
bus_flush_all(struct bus *b)
{
	struct bus_peers *ps = bus_peers_get(b, 0);
	size_t i;

	bus_peer_flush(b, b->self);
	for (i = 0; ps != NULL && i < ps->n; i++)
		bus_peer_flush(b, ps->v[i]);
	bus_peers_put(b, ps);
}

/*
 * mkdir -p: the last directory with mode, the parents we create 0750 (the web server may need to
 * traverse a parent to reach the FastCGI socket; nobody but us may write to any of them).
 */
static int
bus_mkdirs(const char *dir, mode_t mode)
{
	char *p, *s, c;
	size_t len;
	int rc = -1;

	if (dir[0] == '\0') {
		errno = EINVAL;
		return -1;
	}
	s = xstrdup(dir);
	for (len = strlen(s); len > 1 && s[len - 1] == '/'; len--)
		s[len - 1] = '\0';

	for (p = s + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		c = *p;
		*p = '\0';
		if (mkdir(s, c == '\0' ? mode : 0750) == 0) {
			/* umask may have narrowed it: exactly these modes, never wider. */
			(void)chmod(s, c == '\0' ? mode : 0750);
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

/*
 * The bus directory must be ours and writable by nobody else: whoever can create a socket there
 * could receive hints (message content included) if SO_PEERCRED were not checked, and squat the
 * names. A cause (caller frees) and -1 when it is not.
 */
static int
bus_dir_check(const char *dir, uid_t uid, char **cause)
{
	struct stat st;

	if (stat(dir, &st) == -1) {
		xasprintf(cause, "bus directory %s: %s", dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		xasprintf(cause, "bus directory %s is not a directory", dir);
		return -1;
	}
	if (st.st_uid != uid) {
		xasprintf(cause, "bus directory %s is owned by uid %ld, not by this process's uid %ld: "
		    "every process on the bus must run as the directory's owner (chown it, or point "
		    "bus.dir elsewhere)", dir, (long)st.st_uid, (long)uid);
		return -1;
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
		xasprintf(cause, "bus directory %s has mode %04o: its group or others can write to "
		    "it, so they could read or forge hints; refusing to start (chmod 0700 %s)", dir,
		    (unsigned)(st.st_mode & 07777), dir);
		return -1;
	}
	return 0;
}

/* Read a host id file: 0 and out (NUL-terminated, newline dropped), -1 when absent or bad. */
static int
bus_host_id_read(const char *path, char *out, size_t outsz)
{
	char buf[BUS_HOST_ID_MAX + 2];
	ssize_t n;
	size_t i;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return -1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	for (i = 0; buf[i] != '\0'; i++) {
		if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
		    buf[i]) == NULL)
			return -1;
	}
	if (i == 0 || i >= outsz)
		return -1;
	memcpy(out, buf, i + 1);
	return 0;
}

/*
 * The bytes of a host id that a reboot does not change: SHA-256 of /etc/machine-id and the bus
 * directory's path. bus.dir is on tmpfs, so the host-id file goes with a reboot; made again from
 * these, the id stays the same and start-up clears the presence rows a crash left behind. The
 * machine id differs between real hosts; the path tells apart hosts that share one (network
 * namespaces, containers). 0, or -1 when there is no machine id (then a random one is made).
 */
static int
bus_host_id_derive(const char *dir, unsigned char *out16)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	char mid[64], *real, *text;
	unsigned int mdlen = 0;
	FILE *f;
	int ok;

	if ((f = fopen("/etc/machine-id", "re")) == NULL)
		return -1;
	ok = fgets(mid, sizeof mid, f) != NULL;
	fclose(f);
	mid[strcspn(mid, "\n")] = '\0';
	if (!ok || strlen(mid) < 16)
		return -1;
	if ((real = realpath(dir, NULL)) == NULL)
		return -1;
	xasprintf(&text, "parley host id\n%s\n%s", mid, real);
	free(real);
	ok = EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha256(), NULL) == 1 && mdlen >= 16;
	free(text);
	if (!ok)
		return -1;
	memcpy(out16, md, 16);
	return 0;
}

int
bus_host_id(const char *dir, const char *configured, char *out, size_t outsz, char **cause)
{
	unsigned char rnd[16];
	char *path, *tmp, id[2 * sizeof rnd + 2];
	size_t i;
	int fd, rc = -1;

	*cause = NULL;
	if (configured != NULL) {
		if (strlen(configured) >= outsz) {
			xasprintf(cause, "bus.node_id %s: too long", configured);
			return -1;
		}
		snprintf(out, outsz, "%s", configured);
		return 0;
	}
	xasprintf(&path, "%s/host-id", dir);
	xasprintf(&tmp, "%s/host-id.%ld", dir, (long)getpid());
	if (bus_host_id_read(path, out, outsz) == 0) {
		rc = 0;
		goto out;
	}
	if (bus_host_id_derive(dir, rnd) != 0 &&
	    getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
		xasprintf(cause, "getrandom: %s", strerror(errno));
		goto out;
	}
	for (i = 0; i < sizeof rnd; i++)
		snprintf(id + 2 * i, 3, "%02x", rnd[i]);
	strcat(id, "\n");
	/* Written whole under a private name, then linked: nobody ever reads half an id. */
	(void)unlink(tmp);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
		xasprintf(cause, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	if (write(fd, id, strlen(id)) != (ssize_t)strlen(id) || fsync(fd) != 0) {
		xasprintf(cause, "%s: %s", tmp, strerror(errno));
		close(fd);
		(void)unlink(tmp);
		goto out;
	}
	close(fd);
	if (link(tmp, path) != 0 && errno != EEXIST) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		(void)unlink(tmp);
		goto out;
	}
	(void)unlink(tmp);
	/* Ours, or the one another process linked first. */
	if (bus_host_id_read(path, out, outsz) != 0) {
		xasprintf(cause, "%s: not a host id (remove it: a new one is made)", path);
		goto out;
	}
	rc = 0;
out:
	free(path);
	free(tmp);
	return rc;
}

struct bus *
bus_new(const char *dir, char **cause)
{
	struct bus *b;
	struct sockaddr_un sun;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = BUS_EV_LISTEN };
	struct timespec mtime = { 0, 0 };
	struct stat st;
	uint64_t rnd;
	int fd;

	*cause = NULL;
	if (bus_mkdirs(dir, 0700) != 0) {
		xasprintf(cause, "bus directory %s: %s", dir, strerror(errno));
		return NULL;
	}
	if (bus_dir_check(dir, geteuid(), cause) != 0)
		return NULL;
	b = xcalloc(1, sizeof *b);
	b->dir = xstrdup(dir);
	b->uid = geteuid();
	b->lfd = b->ep = -1;
	pthread_mutex_init(&b->lock, NULL);
	TAILQ_INIT(&b->conns);
	TAILQ_INIT(&b->ready);

	if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
		rnd = (uint64_t)parley_now_ms() ^ ((uint64_t)getpid() << 32);
	xasprintf(&b->name, "%ld-%016llx.sock", (long)getpid(), (unsigned long long)rnd);
	if (bus_path(&sun, dir, b->name) != 0) {
		xasprintf(cause, "bus socket path too long in %s", dir);
		goto fail;
	}
	if ((b->ep = epoll_create1(EPOLL_CLOEXEC)) == -1) {
		xasprintf(cause, "epoll_create1: %s", strerror(errno));
		goto fail;
	}
	b->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (b->lfd == -1 || bind(b->lfd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		xasprintf(cause, "bus socket %s: %s", sun.sun_path, strerror(errno));
		if (b->lfd != -1) {
			close(b->lfd);
			b->lfd = -1;
		}
		goto fail;
	}
	if (listen(b->lfd, SOMAXCONN) == -1 || chmod(sun.sun_path, 0600) == -1 ||
	    stat(sun.sun_path, &st) == -1 || epoll_ctl(b->ep, EPOLL_CTL_ADD, b->lfd, &ev) == -1) {
		xasprintf(cause, "bus socket %s: %s", sun.sun_path, strerror(errno));
		goto fail;
	}
	b->self_ino = st.st_ino;
	if ((fd = bus_connect(dir, b->name)) == -1) {
		xasprintf(cause, "bus socket %s: connect: %s", sun.sun_path, strerror(errno));
		goto fail;
	}
	b->self = bus_peer_new(b->name, getpid(), fd);
	/* The first scan also removes what crashed processes left: refused and their pid gone. */
	if (stat(dir, &st) == 0)
		mtime = st.st_mtim;
	pthread_mutex_lock(&b->lock);
	(void)bus_scan(b, &mtime);
	pthread_mutex_unlock(&b->lock);
	return b;

fail:
	bus_free(b);
	return NULL;
}

static void
bus_conn_close(struct bus *b, struct bus_conn *c)
{
	if (c->ready)
		TAILQ_REMOVE(&b->ready, c, rlink);
	TAILQ_REMOVE(&b->conns, c, all);
	close(c->fd);
	free(c);
}

void
bus_free(struct bus *b)
{
	struct sockaddr_un sun;
	struct bus_conn *c;
	struct stat st;

	if (b == NULL)
		return;
	while ((c = TAILQ_FIRST(&b->conns)) != NULL)
		bus_conn_close(b, c);
	if (b->lfd != -1) {
		if (bus_path(&sun, b->dir, b->name) == 0 && stat(sun.sun_path, &st) == 0 &&
		    st.st_ino == b->self_ino)
			unlink(sun.sun_path);
		close(b->lfd);
	}
	if (b->self != NULL)
		bus_peer_unref(b, b->self);
	bus_peers_unref(b, b->peers);
	if (b->ep != -1)
		close(b->ep);
	pthread_mutex_destroy(&b->lock);
	free(b->name);
	free(b->dir);
	free(b);
}

int
bus_fd(const struct bus *b)
{
	return b->ep;
}

/* Encode a hint into buf (BUS_DGRAM_MAX bytes); returns its length. */
size_t
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

/* Validate and decode one record (contract in bus.h); -1/EINVAL when it is not a well-formed hint. */
int
bus_decode(const unsigned char *buf, size_t n, struct bus_hint *h)
{
	size_t klen, len;
	int i;

	if (buf == NULL || n < BUS_HDR || n > BUS_DGRAM_MAX || buf[0] != BUS_WIRE_VERSION ||
	    buf[3] != 0)
		goto bad;
	if (buf[1] < BUS_USER_EVENT || buf[1] > BUS_LOST)
		goto bad;
	klen = buf[2];
	len = (size_t)buf[4] | ((size_t)buf[5] << 8);
	if (klen > PARLEY_ID_MAX || len > BUS_PAYLOAD_MAX || n != BUS_HDR + klen + len)
		goto bad;
	if (memchr(buf + BUS_HDR, '\0', klen) != NULL)
		goto bad;
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
bad:
	errno = EINVAL;
	return -1;
}

/* Send one hint to every peer, and to our own socket when self. */
static int
bus_send_all(struct bus *b, int self, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	unsigned char buf[BUS_DGRAM_MAX];
	struct bus_peers *ps;
	size_t i, n, klen;
	int full = 0;

	if (key == NULL)
		key = "";
	klen = strlen(key);
	/* BUS_LOST is the bus's own marker: nobody else may claim a loss (or hide one). */
	if (klen > PARLEY_ID_MAX || topic < BUS_USER_EVENT || topic > BUS_SHUTDOWN) {
		errno = EINVAL;
		return -1;
	}
	if (payload == NULL || len > BUS_PAYLOAD_MAX)
		len = 0;
	n = bus_encode(buf, topic, key, klen, seq, payload, len);

	if (self && bus_peer_send(b, b->self, buf, n) != 1)
		full = 1;
	if (topic == BUS_SHUTDOWN)
		goto out;
	ps = bus_peers_get(b, 1);
	for (i = 0; ps != NULL && i < ps->n; i++) {
		if (bus_peer_send(b, ps->v[i], buf, n) == 0)
			full = 1;
	}
	bus_peers_put(b, ps);
out:
	if (full) {
		errno = EAGAIN;
		return -1;
	}
	return 0;
}

/* The other hosts: the bridge queues and never blocks; its losses are its own to count. */
static void
bus_to_bridge(struct bus *b, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	if (b->bridge.ops != NULL && topic != BUS_SHUTDOWN && topic != BUS_LOST)
		(void)b->bridge.ops->publish(b->bridge.arg, topic, key, seq, payload, len);
}

int
bus_publish(struct bus *b, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	bus_to_bridge(b, topic, key, seq, payload, len);
	return bus_send_all(b, 1, topic, key, seq, payload, len);
}

int
bus_publish_others(struct bus *b, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	if (topic == BUS_SHUTDOWN) {	/* only ever for ourselves */
		errno = EINVAL;
		return -1;
	}
	bus_to_bridge(b, topic, key, seq, payload, len);
	return bus_send_all(b, 0, topic, key, seq, payload, len);
}

static void
bus_ready_add(struct bus *b, struct bus_conn *c)
{
	if (c->ready)
		return;
	c->ready = 1;
	TAILQ_INSERT_TAIL(&b->ready, c, rlink);
}

static void
bus_ready_remove(struct bus *b, struct bus_conn *c)
{
	if (!c->ready)
		return;
	c->ready = 0;
	TAILQ_REMOVE(&b->ready, c, rlink);
}

/* Take every pending connection into the epoll set (and the ready list: it may hold records). */
static void
bus_accept(struct bus *b)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct bus_conn *c;
	uid_t uid;
	int fd;

	for (;;) {
		fd = accept4(b->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				log_warn("bus: accept: %s", strerror(errno));
			return;
		}
		/* Checked before a byte is read: another uid's records are never even decoded. */
		if (!bus_cred_ok(b, fd, &uid)) {
			close(fd);
			bus_refuse(b, "a connection", uid);
			continue;
		}
		c = xcalloc(1, sizeof *c);
		c->fd = fd;
		ev.data.ptr = c;
		if (epoll_ctl(b->ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
			log_warn("bus: epoll_ctl: %s", strerror(errno));
			close(fd);
			free(c);
			continue;
		}
		TAILQ_INSERT_TAIL(&b->conns, c, all);
		bus_ready_add(b, c);
	}
}

/* Collect what epoll has: new connections, readable connections, writable backlogged peers. */
static void
bus_poll(struct bus *b)
{
	struct epoll_event evs[BUS_EPOLL_EVENTS];
	int i, n, flush = 0;

	b->polled = 0;
	n = epoll_wait(b->ep, evs, BUS_EPOLL_EVENTS, 0);
	for (i = 0; i < n; i++) {
		if (evs[i].data.u64 == BUS_EV_LISTEN)
			bus_accept(b);
		else if (evs[i].data.u64 == BUS_EV_FLUSH)
			flush = 1;
		else
			bus_ready_add(b, evs[i].data.ptr);
	}
	if (flush)
		bus_flush_all(b);
}

/* 1 when a zero-length read on c means the other end closed (not an empty record). */
static int
bus_conn_eof(const struct bus_conn *c)
{
	struct pollfd pfd = { .fd = c->fd, .events = POLLRDHUP };

	int n = poll(&pfd, 1, 0);

	return n == -1 || (n == 1 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0);
}

/*
 * Our socket file was removed (an operator's rm, a cleanup script): a process that starts later
 * looks for peers in the directory and would never find us, so its hints would never come.
 * Listen again under the same name. Connections already made are kept; the old listener goes.
 * Loop thread only: it is the one that accepts on lfd.
 */
static void
bus_relisten(struct bus *b)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = BUS_EV_LISTEN };
	struct sockaddr_un sun;
	struct stat st;
	int fd;

	if (bus_path(&sun, b->dir, b->name) != 0)
		return;
	if (stat(sun.sun_path, &st) == 0)
		return;	/* still there, or someone else's file now: never remove that */
	if (errno != ENOENT)
		return;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1 || bind(fd, (struct sockaddr *)&sun, sizeof sun) == -1 ||
	    listen(fd, SOMAXCONN) == -1 || chmod(sun.sun_path, 0600) == -1 ||
	    stat(sun.sun_path, &st) == -1) {
		if (!b->relisten_failed)
			log_warn("bus: our socket %s was removed and cannot be made again: %s",
			    sun.sun_path, strerror(errno));
		b->relisten_failed = 1;
		if (fd != -1)
			close(fd);
		return;
	}
	b->relisten_failed = 0;
	(void)epoll_ctl(b->ep, EPOLL_CTL_DEL, b->lfd, NULL);
	close(b->lfd);
	b->lfd = fd;
	b->self_ino = st.st_ino;
	if (epoll_ctl(b->ep, EPOLL_CTL_ADD, fd, &ev) == -1)
		log_warn("bus: epoll_ctl: %s", strerror(errno));
	log_warn("bus: our socket %s had been removed; listening there again", sun.sun_path);
	pthread_mutex_lock(&b->lock);
	b->rescan = 1;
	pthread_mutex_unlock(&b->lock);
}

/* Look at our own socket file now and then (or when a scan missed it); make it again if gone. */
static void
bus_check_self(struct bus *b)
{
	int64_t now = parley_mono_ms();

	if (!__atomic_exchange_n(&b->relisten, 0, __ATOMIC_RELAXED) &&
	    now - b->self_check_ms < BUS_RESCAN_MS)
		return;
	b->self_check_ms = now;
	bus_relisten(b);
}

int
bus_recv(struct bus *b, struct bus_hint *h)
{
	/* One byte more than the largest hint, so an oversized record shows as too long. */
	unsigned char buf[BUS_DGRAM_MAX + 1];
	struct bus_conn *c;
	ssize_t n;

	bus_check_self(b);
	for (;;) {
		if (TAILQ_EMPTY(&b->ready) || b->polled >= BUS_POLL_EVERY) {
			bus_poll(b);
			if (TAILQ_EMPTY(&b->ready)) {
				errno = EAGAIN;
				return -1;
			}
		}
		c = TAILQ_FIRST(&b->ready);
		n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				bus_ready_remove(b, c);	/* epoll reports it again when it has more */
			else
				bus_conn_close(b, c);
			continue;
		}
		if (n == 0 && bus_conn_eof(c)) {
			bus_conn_close(b, c);
			continue;
		}
		/* Round-robin: one record, then the next connection's turn. */
		b->polled++;
		TAILQ_REMOVE(&b->ready, c, rlink);
		TAILQ_INSERT_TAIL(&b->ready, c, rlink);
		if ((size_t)n <= BUS_DGRAM_MAX && bus_decode(buf, (size_t)n, h) == 0) {
			bus_count(&b->received, 1);
			if (h->topic == BUS_LOST)
				bus_count(&b->lost, 1);
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
	st->queued = __atomic_load_n(&b->queued, __ATOMIC_RELAXED);
	st->refused = __atomic_load_n(&b->refused, __ATOMIC_RELAXED);
	st->lost = __atomic_load_n(&b->lost, __ATOMIC_RELAXED);
	pthread_mutex_lock(&b->lock);
	st->peers = b->peers != NULL ? b->peers->n : 0;
	pthread_mutex_unlock(&b->lock);
}

void
bus_set_bridge(struct bus *b, const struct bus_ops *ops, void *arg)
{
	b->bridge.ops = ops;
	b->bridge.arg = ops != NULL ? arg : NULL;
}

size_t
bus_backends(struct bus *b, struct bus_backend *v)
{
	v[0].ops = &bus_local_ops;
	v[0].arg = b;
	if (b->bridge.ops == NULL)
		return 1;
	v[1] = b->bridge;
	return 2;
}

void
bus_listen(struct bus *b, enum bus_topic topic, const char *key, int delta)
{
	if (b != NULL && b->bridge.ops != NULL && b->bridge.ops->listen != NULL)
		b->bridge.ops->listen(b->bridge.arg, topic, key, delta);
}

/* The local bus as a backend: publish reaches the processes of this host alone (not the bridge). */
static int
bus_local_fd(const void *arg)
{
	return bus_fd(arg);
}

static int
bus_local_recv(void *arg, struct bus_hint *h)
{
	return bus_recv(arg, h);
}

const struct bus_ops bus_local_ops = {
	.name = "local",
	.publish = NULL,	/* bus_publish: the local bus and then the bridge */
	.fd = bus_local_fd,
	.recv = bus_local_recv,
	.listen = NULL,
};
