/* bus.h - the UNIX-socket notification bus between the Parley processes on one host. */
#ifndef BUS_H
#define BUS_H

#include <stddef.h>
#include <stdint.h>

#include "parley.h"

/*
 * Every process listens on one SOCK_SEQPACKET socket in the bus directory and keeps one
 * connection to every socket there (its own included, so local and remote waiters wake the same
 * way). No broker. Sends never block: what a peer's socket buffer cannot take waits, in order,
 * in a bounded backlog that the owner's loop flushes (bus_recv) when the peer reads again; only
 * a peer whose backlog is full (stopped, far behind) loses hints. Sockets of dead processes are
 * unlinked when found. A hint is a wake-up, not the truth: the receiver reads MySQL (durable
 * events) or uses the small inline payload (ephemeral events; a new message's event).
 *
 * Trust: the directory must belong to our effective uid and be writable by nobody else
 * (bus_new refuses it otherwise), and every connection, accepted or made, is checked with
 * SO_PEERCRED: only processes of our uid are heard or told anything. So an inline payload always
 * comes from a Parley process of this deployment (docs/reliability.md, "Bus trust").
 * A peer that had to drop hints for us (its backlog for us was full) says so with a BUS_LOST
 * record after the ones it kept: the receiver then re-reads MySQL for every waiter.
 */
enum bus_topic {
	BUS_USER_EVENT = 1,	/* key = user: durable event(s) up to seq are in MySQL */
	BUS_USER_EPHEMERAL,	/* key = user: payload is an ephemeral event (typing, presence) */
	BUS_ROOM,		/* key = room: payload is a room_message event, seq its id */
	BUS_SHUTDOWN,		/* internal: wakes a process's own loop (never sent to peers) */
	BUS_LOST		/* from the bus itself, never published: a peer dropped hints meant
				 * for us (its backlog for us was full); every waiter must re-read */
};

#define BUS_PAYLOAD_MAX 3072
/* The largest well-formed record: 14-byte header, key, payload (wire format in bus.c). */
#define BUS_DGRAM_MAX	(14 + PARLEY_ID_MAX + BUS_PAYLOAD_MAX)

struct bus_hint {
	enum bus_topic	topic;
	char		key[PARLEY_ID_MAX + 1];
	uint64_t	seq;
	size_t		len;			/* payload bytes, 0 when none */
	char		payload[BUS_PAYLOAD_MAX + 1];	/* NUL-terminated */
};

#define BUS_HOST_ID_MAX	48

struct bus;

/*
 * Bind this process's socket (mode 0600) in dir (created if missing, mode 0700). NULL and *cause
 * (caller frees) on failure, also when dir is not owned by our effective uid or its group or
 * others may write to it.
 */
struct bus	*bus_new(const char *dir, char **cause);
void		 bus_free(struct bus *);
/*
 * This host's identity (BUS_HOST_ID_MAX characters at most, [A-Za-z0-9._-]): configured when not
 * NULL (bus.node_id, checked by the configuration), else the file "host-id" in dir, made once with
 * 32 hex digits (O_EXCL, then link: two processes starting at once agree): a hash of
 * /etc/machine-id and dir's path, so that a reboot (dir is on tmpfs) makes the same id again, or
 * random bytes where there is no machine id. Every process of one host shares dir, hence the id. It
 * names the host on Redis (the bridge's origin) and in presence rows (parley-ws's node).
 * 0 and out filled, or -1 and *cause (caller frees). Call after bus_new made and checked dir.
 */
int		 bus_host_id(const char *dir, const char *configured, char *out, size_t outsz,
		     char **cause);
/*
 * The fd for the owner's event loop (an epoll fd: poll it for POLLIN, never read it). When it is
 * readable call bus_recv until -1/EAGAIN: that also flushes backlogs to slow peers.
 */
int		 bus_fd(const struct bus *);
/*
 * Send a hint to every process on the bus. Any thread may call it. Never blocks. 0 when it was
 * handed to (or queued for) every live peer, -1/EAGAIN when some peer's backlog was full
 * (counted in dropped; that peer gets BUS_LOST once it reads again). Queued hints die with
 * bus_free. BUS_LOST cannot be published (-1/EINVAL).
 * A payload longer than BUS_PAYLOAD_MAX is not sent inline (len = 0 is sent: receivers refetch).
 */
int		 bus_publish(struct bus *, enum bus_topic, const char *key, uint64_t seq,
		     const char *payload, size_t len);
/*
 * bus_publish to the other processes only, for a caller that hands the hint to its own waiters
 * itself (parley-ws: a worker's hints go straight to its loop, not through its own socket and
 * bus reader). Same result; BUS_SHUTDOWN is refused (-1/EINVAL).
 */
int		 bus_publish_others(struct bus *, enum bus_topic, const char *key, uint64_t seq,
		     const char *payload, size_t len);
/*
 * Receive one hint (BUS_LOST included: re-read everything); only the thread owning the loop calls
 * it. 0 got one; -1/EAGAIN none left.
 */
int		 bus_recv(struct bus *, struct bus_hint *);

/*
 * Decode one bus record (one seqpacket datagram, exactly n bytes) into *h. Pure: no I/O, no
 * allocation, no state; any thread. Reads only buf[0..n); buf may be NULL only with n = 0.
 * 0 when buf is a well-formed hint of this wire version: h->key and h->payload are then
 * NUL-terminated, h->len <= BUS_PAYLOAD_MAX. -1/EINVAL otherwise (wrong version or topic, lengths
 * that do not add up to n exactly, n > BUS_DGRAM_MAX, a NUL inside the key); *h is then
 * unspecified. It says nothing about who sent the record: bus_recv checks that.
 */
int		 bus_decode(const unsigned char *buf, size_t n, struct bus_hint *h);

/*
 * Encode one record of the wire format (the one bus_decode reads) into buf (BUS_DGRAM_MAX bytes);
 * klen <= PARLEY_ID_MAX, len <= BUS_PAYLOAD_MAX. Returns its length. Pure; any thread.
 */
size_t		 bus_encode(unsigned char *buf, enum bus_topic, const char *key, size_t klen,
		     uint64_t seq, const char *payload, size_t len);

/*
 * The bus as an interface (a table of operations, as OpenSMTPD's backends): the local bus here
 * (bus_local_ops, the fast path between the processes of one host) and the Redis bridge between
 * hosts (redis.h, redis_bus_ops). A daemon publishes through the local bus, which hands every
 * hint (BUS_SHUTDOWN excepted) to the bridge set with bus_set_bridge; it receives from each
 * backend (fd, recv) and tells them its listeners (bus_listen: the local bus hears everything,
 * the bridge subscribes to what the listeners need).
 */
struct bus_ops {
	const char	*name;
	/* The bridge's: bus_publish hands it every hint. NULL for the local bus (bus_publish). */
	int		(*publish)(void *, enum bus_topic, const char *key, uint64_t seq,
			    const char *payload, size_t len);
	int		(*fd)(const void *);
	int		(*recv)(void *, struct bus_hint *);
	/* A local listener of key came (+1) or went (-1); NULL: the backend hears everything. */
	void		(*listen)(void *, enum bus_topic, const char *key, int delta);
};

struct bus_backend {
	const struct bus_ops	*ops;
	void			*arg;
};

extern const struct bus_ops bus_local_ops;

/*
 * Hand every hint published on b from now on also to the bridge (ops NULL: none). Call before any
 * other thread uses b; the bridge must outlive every later bus_publish.
 */
void		 bus_set_bridge(struct bus *, const struct bus_ops *, void *arg);
/* The local bus and the bridge (if any) as backends: fills v (2 entries), returns how many. */
size_t		 bus_backends(struct bus *, struct bus_backend *v);
/* A local listener of key (a user for BUS_USER_*, a room for BUS_ROOM) came or went: to the bridge. Any thread. */
void		 bus_listen(struct bus *, enum bus_topic, const char *key, int delta);

struct bus_stats {
	uint64_t	sent;		/* hints handed to a peer's socket (own included) */
	uint64_t	dropped;	/* a peer's backlog was full */
	uint64_t	stale;		/* dead peers' sockets removed */
	uint64_t	received;
	uint64_t	malformed;
	size_t		peers;		/* other processes connected to; our own socket not counted */
	uint64_t	queued;		/* hints waiting in our backlogs for slow peers, now */
	uint64_t	refused;	/* connections from or to another uid, closed unread */
	uint64_t	lost;		/* BUS_LOST markers received: a peer dropped hints for us */
};
void		 bus_stats(struct bus *, struct bus_stats *);

#endif
