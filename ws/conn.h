/* conn.h - one WebSocket connection's state, its bounded outbound queue, and the loop's indexes. */
#ifndef WS_CONN_H
#define WS_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "parley.h"

struct lws;

/*
 * Everything here belongs to the libwebsockets service thread: no locks. Other threads refer to a
 * connection only by its id (slot index + generation), which the loop resolves with conn_find();
 * an id whose connection closed resolves to NULL, so late results of work are simply dropped.
 *
 * A struct conn lives in lws's per-session user space (zeroed by lws). It stays small: an idle
 * authenticated connection holds no heap buffers (outbound frames, reassembly and replay
 * backlogs are allocated only while in use).
 */
enum conn_state {
	CONN_NEW = 0,		/* upgraded, waiting for the auth frame */
	CONN_AUTHING,		/* token verified, cursor and presence being read (worker) */
	CONN_READY,		/* "ready" queued: takes frames */
	CONN_CLOSING		/* close queued: takes nothing more */
};

/*
 * A payload queued to many connections (a room comment to every listener): encoded and copied
 * once, counted, freed with its last frame. lws writes the frame header into the LWS_PRE bytes in
 * front of it; one loop thread and one header for one payload make that safe to share.
 */
struct frame_shared {
	unsigned	 refs;
	size_t		 len;
	unsigned char	 buf[];		/* LWS_PRE + len bytes */
};

/* One outbound text frame, with lws's LWS_PRE headroom in front of the payload. */
struct frame {
	struct frame		*next;
	size_t			 len;
	struct frame_shared	*sh;	/* NULL: the payload is in buf */
	unsigned char		 buf[];	/* LWS_PRE + len bytes, none when sh */
};

/* A replay page fetched from MySQL, handed to the queue as it drains. */
struct backlog {
	char		**events;
	size_t		  n;
	size_t		  pos;
	uint64_t	  next;		/* the page's last seq */
	int		  has_more;
};

struct conn_user;
struct conn_addr;
struct room_join;

struct conn {
	struct lws		*wsi;
	uint64_t		 id;		/* 0 until registered */
	struct conn_user	*user;		/* set once the token is verified */
	struct conn_addr	*addr;		/* the client's address (ws.max_per_ip) */
	struct conn		*unext, *uprev;	/* the user's connections */
	struct room_join	*rooms;		/* rooms joined */
	struct frame		*qhead, *qtail;
	struct conn		*flush_next;	/* the loop's flush list */
	uint32_t		 qbytes;
	uint32_t		 qframes;
	char			*rxbuf;		/* fragment reassembly, NULL unless in use */
	uint32_t		 rxlen;
	uint32_t		 epoch;		/* bumped by each sync: stale pages are dropped */
	uint64_t		 delivered;	/* highest seq queued to this client */
	uint64_t		 hint_max;	/* highest seq hinted while replaying */
	struct backlog		*backlog;
	int64_t			 auth_deadline;	/* monotonic ms */
	int64_t			 progress_ms;	/* last frame written, or the queue became non-empty */
	int64_t			 rx_ms;		/* last frame or pong received: the heartbeat's clock */
	const char		*close_reason;	/* static string */
	uint16_t		 close_code;
	uint8_t			 state;		/* enum conn_state */
	uint16_t		 live:1,	/* synced: durable events are pushed */
				 fetching:1,	/* a page is being read from MySQL */
				 need_fetch:1,	/* a fetch could not be posted: retry on the tick */
				 registered:1,	/* counted, has an id */
				 presence:1,	/* presence +1 was posted */
				 rx_discard:1,	/* an oversized message is being dropped */
				 rx_binary:1,
				 writable_asked:1,
				 ping_due:1,	/* a ping goes out at the next writeable */
				 rx_qpaused:1,	/* reading paused: answers fill the outbound queue */
				 flush_listed:1; /* on the loop's flush list (loop_flush) */
	uint8_t			 pings;		/* asked for since the last frame or pong received */
	uint8_t			 nrooms;
	uint32_t		 nheld;		/* sends on the loop's held lists */
	char			 device[PARLEY_ID_MAX + 1];
};

/* What the loop's name tables (users, rooms) index by: the first member of an entry. */
struct conn_key {
	struct conn_key		*next;		/* hash chain */
	char			 name[PARLEY_ID_MAX + 1];
};

struct conn_user {
	struct conn_key		 key;		/* first: the users table's entry */
	struct conn		*head;
	size_t			 n;
};

/* Connections from one client address (the peer, or X-Forwarded-For of a trusted proxy). */
struct conn_addr {
	struct conn_key		 key;		/* first: the addrs table's entry */
	size_t			 n;
};

/*
 * How many comment ids a room remembers as pushed (the newest pushes): duplicates are decided by
 * membership, since comments arrive out of id order (a local one is pushed at once, another
 * host's is fetched from MySQL first). An id at or below one the window forgot counts as pushed.
 */
#define CONN_ROOM_SEEN 256

struct conn_room {
	struct conn_key		 key;		/* first: the rooms table's entry */
	struct room_join	*head;
	size_t			 n;
	/*
	 * Catch-ups (lost hints) read the room's comments after floor from MySQL. The floor is
	 * raised only from what MySQL returned (the starting point read when the room is first
	 * joined here, then each catch-up's last id), never from live pushes: a comment pushed live
	 * says nothing about the lower ids still being fetched.
	 */
	uint64_t		 floor;
	uint64_t		*seen;		/* ring of the last CONN_ROOM_SEEN ids pushed, or NULL */
	uint64_t		 seen_below;	/* the highest id the ring forgot */
	uint32_t		 seen_n, seen_pos;
	uint32_t		 gen;		/* tells this entry's worker results from a former one's */
	uint8_t			 based:1,	/* the starting point is back: floor is valid */
				 reading:1,	/* a starting-point or catch-up read is in flight */
				 catchup_due:1;	/* hints may be lost: catch up when the read is back */
};

struct room_join {
	struct conn_room	*room;
	struct conn		*conn;
	struct room_join	*rnext, *rprev;	/* the room's members */
	struct room_join	*cnext;		/* the connection's rooms */
};

/* The loop's tables: id slots, users, rooms. */
struct conns;

struct conns	*conns_new(size_t max);
void		 conns_free(struct conns *);
/*
 * Tell bus (bus_listen) of every user that gets a first connection or loses its last, and of
 * every room that gets a first member or loses its last: the Redis bridge subscribes to those.
 */
struct bus;
void		 conns_set_bus(struct conns *, struct bus *);
size_t		 conns_count(const struct conns *);

/* Give c an id; -1 when every slot is taken. */
int		 conn_register(struct conns *, struct conn *);
/* Forget c: its id stops resolving, it leaves its user and rooms, its buffers are freed. */
void		 conn_unregister(struct conns *, struct conn *);
struct conn	*conn_find(struct conns *, uint64_t id);
/* Iterate over every room with listeners: *next from NULL and i from 0 while it returns 0. */
int		 conns_room_at(struct conns *, size_t *i, struct conn_room **r, struct conn_room **next);
/* Iterate over every registered connection: i from 0 while conn_at() returns 0. */
int		 conn_at(struct conns *, size_t *i, struct conn **);

/* Attach c to user (creates the entry). */
void		 conn_set_user(struct conns *, struct conn *, const char *user);
struct conn_user *conns_user(struct conns *, const char *user);

/* Count c against the client address addr (an entry while it has connections). */
void		 conn_set_addr(struct conns *, struct conn *, const char *addr);
/* Connections open from addr now. */
size_t		 conns_addr_count(struct conns *, const char *addr);

/* For /metrics: distinct addresses, and the most connections one address or one user holds. */
struct conns_stats {
	size_t	addrs;
	size_t	addr_max;
	size_t	user_max;
};
void		 conns_stats(struct conns *, struct conns_stats *);

/*
 * Rooms: 1 when c is the room's first member here (a new entry: its starting point is to be
 * read), 0 when joined (joining twice is a no-op), -1 with errno E2BIG when c is in too many rooms.
 */
#define CONN_ROOMS_MAX 32
int		 conn_join(struct conns *, struct conn *, const char *room);
void		 conn_leave(struct conns *, struct conn *, const char *room);
struct conn_room *conns_room(struct conns *, const char *room);
/* Was id pushed to the room's listeners already (1)? conn_room_pushed then remembers it. */
int		 conn_room_seen(const struct conn_room *, uint64_t id);
int		 conn_room_pushed(struct conn_room *, uint64_t id);

/*
 * Outbound queue. conn_queue() copies text; 0 when queued, -1 with errno ENOBUFS when the frame
 * would pass max_bytes or max_frames (the caller closes the client as too slow).
 */
int		 conn_queue(struct conn *, const char *text, size_t len, size_t max_bytes,
		     size_t max_frames);
/* Queue without limit checks (ready, errors before a close: one frame). */
void		 conn_queue_force(struct conn *, const char *text, size_t len);
/* Queue in front of everything (ready: answers to frames taken while authenticating wait). */
void		 conn_queue_first(struct conn *, const char *text, size_t len);
/* Queue a shared payload (one reference more) within the limits, as conn_queue. */
int		 conn_queue_shared(struct conn *, struct frame_shared *, size_t max_bytes,
		     size_t max_frames);
struct frame	*conn_dequeue(struct conn *);
/* The payload of f (LWS_PRE bytes of headroom in front), and freeing a dequeued frame. */
unsigned char	*conn_frame_data(struct frame *);
void		 conn_frame_free(struct frame *);
/* A shared payload with one reference (the caller's): copies text. */
struct frame_shared *frame_shared_new(const char *text, size_t len);
void		 frame_shared_unref(struct frame_shared *);
void		 conn_queue_drop(struct conn *);
void		 conn_backlog_free(struct conn *);

#endif
