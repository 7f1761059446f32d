/* ws.h - parley-ws: the daemon's state, the loop's completion queue, and the worker jobs. */
#ifndef WS_WS_H
#define WS_WS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <libwebsockets.h>

#include "bus.h"
#include "metrics.h"
#include "parley.h"
#include "protocol.h"

struct actor_pool;
struct cache_journal;
struct ev_loop;
struct config;
struct redis;
struct conns;

/*
 * Threads: one libwebsockets service thread (the loop: every struct conn, every lws call but
 * lws_cancel_service), the actor workers (MySQL, memcached: jobs below), one bus reader (bus_recv
 * only) and one signal thread. Workers and the bus reader hand results to the loop through the
 * completion queue (ws_done_push), which wakes the loop with lws_cancel_service().
 */

/* What comes back to the loop. */
enum done_kind {
	DONE_READY,	/* auth job finished: cursor in seq, the user's newest seq in last, or err */
	DONE_FRAME,	/* one frame for a connection (ack, error), then close if close_code */
	DONE_PAGE,	/* events read from MySQL for a sync or a catch-up */
	DONE_HINT,	/* a bus hint */
	DONE_ROOM,	/* a room event (seq: its id) fetched because its hint carried no payload */
	DONE_ROOM_BASE,	/* a room's starting point: seq its newest id (epoch: the entry's gen) */
	DONE_ROOM_PAGE	/* a room's catch-up: events and ids after seq, last the page's last id,
			   has_more (epoch: the entry's gen; err when the read failed) */
};

struct done {
	struct done	*next;
	enum done_kind	 kind;
	uint64_t	 conn;
	uint32_t	 epoch;
	int		 err;
	uint16_t	 close_code;
	int		 has_more;
	int		 presence;	/* READY: presence +1 was counted (key: the user) */
	enum bus_topic	 topic;
	uint64_t	 seq;		/* READY: cursor; PAGE: the page's after; HINT: seq */
	uint64_t	 last;		/* PAGE: last seq returned; READY: the user's newest seq */
	char		**events;	/* PAGE, ROOM_PAGE */
	uint64_t	*ids;		/* ROOM_PAGE: each event's comment id */
	size_t		 n;
	char		*text;		/* FRAME / HINT payload / ROOM event; NULL when none */
	size_t		 len;
	char		 key[PARLEY_ID_MAX + 1];
};

/* The jobs posted to the actor pool (keyed by user; sends by send shard, see ws_send_key). */
enum job_kind {
	JOB_AUTH,		/* presence +1, device cursor -> DONE_READY */
	JOB_SYNC,		/* store or read the cursor, first page -> DONE_PAGE */
	JOB_FETCH,		/* a page after a seq -> DONE_PAGE */
	JOB_SEND,		/* chat_send / chat_send_many (group commit) -> ack */
	JOB_RECEIPT,
	JOB_TYPING,
	JOB_ROOM_POST,
	JOB_PRESENCE_DOWN,	/* presence -1 when a connection closes */
	JOB_ROOM_FETCH,		/* a room event by id (key "room:NAME") */
	JOB_HISTORY,		/* a history page -> one history frame */
	JOB_ROOM_BASE,		/* a room's newest id -> DONE_ROOM_BASE (key "room:NAME") */
	JOB_ROOM_CATCHUP	/* a room's comments after an id, one page -> DONE_ROOM_PAGE */
};

struct job {
	struct job		*next;		/* the loop's presence retry or held-send list */
	uint64_t		 conn;
	uint64_t		 pconn;		/* presence: the connection's id, kept when conn is 0 */
	uint32_t		 epoch;
	int			 has_after;
	int			 presence_done;	/* AUTH: 1 counted, 2 gave up (not counted) */
	uint64_t		 after;
	char			 user[PARLEY_ID_MAX + 1];
	char			 device[PARLEY_ID_MAX + 1];
	struct proto_frame_req	 req;		/* decoded frame (send, receipt, typing, room) */
};

struct ws {
	const struct config	*cfg;
	struct lws_context	*ctx;
	struct ev_loop		*loop;		/* libev, epoll: lws runs in it (foreign loop) */
	void			*foreign_loops[1];
	struct bus		*bus;
	struct redis		*redis;		/* the bridge to the other hosts; NULL without redis.url */
	struct cache_journal	*journal;	/* every worker's cache shares it */
	struct actor_pool	*pool;
	struct metrics		 metrics;
	char			 node[PARLEY_ID_MAX + 1];	/* presence node id */
	int			 page_limit;	/* events per replay page */
	unsigned		 send_shards;	/* send actors ("send:N"), one per 8 workers */
	size_t			 max_conns;	/* ws.max_connections, lowered to fit RLIMIT_NOFILE */

	/* Completion queue: any thread pushes, the loop drains. */
	pthread_mutex_t		 qlock;
	struct done		*qhead, *qtail;
	size_t			 qhints;	/* hints waiting */
	int			 qoverflow;	/* hints were dropped: resync every live connection */
	int			 stop;		/* atomic: SIGTERM/SIGINT seen */
	int			 bus_stop;	/* atomic: the bus reader exits */

	/* Loop thread only. */
	struct conns		*conns;
	struct job		*presence_retry;	/* presence -1 waiting for mailbox room */
	struct held		*held;		/* per send shard: sends waiting for mailbox room */
	struct held		*gather;	/* per send shard: sends in the commit window */
	int			 window_armed;	/* the window's timer runs */
	lws_sorted_usec_list_t	 window;
	size_t			 nheld;		/* sends waiting, all shards */
	lws_sorted_usec_list_t	 held_retry;
	char			**origins;
	size_t			 norigins;
	char			**proxies;	/* ws.trusted_proxies */
	size_t			 nproxies;
	uint64_t		 refused_ip;	/* upgrades refused: ws.max_per_ip */
	uint64_t		 refused_user;	/* auths refused: ws.max_per_user */
	uint64_t		 refused_preauth; /* closed: message over ws.max_preauth_message */
	uint64_t		 refused_url;	/* requests refused: URL over ws.max_url */
	uint64_t		 protocol_closed; /* closed 1002 for a frame lws refused */
	int64_t			 resync_log_ms;	/* when "hints may be lost" was last logged */
	uint64_t		 resyncs_unlogged; /* rechecks since */
	int			 rooms_due;	/* a room read failed or was refused: the tick retries */
	int			 stopping;
	int64_t			 stop_deadline;
	lws_sorted_usec_list_t	 tick;
	struct conn		*flush_head;	/* written at the end of loop_drain (loop_flush) */
	int			 draining;	/* in loop_drain: queued frames wait for loop_flush */
	unsigned char		*wbuf;		/* loop_writeable's burst: LWS_PRE + framed frames */
	size_t			 wcap;
	struct lws_protocols	 protocols[2];
	struct lws_token_limits	 token_limits;	/* the request line's URI stops at ws.max_url + 1 */
	lws_retry_bo_t		 retry;
};

/*
 * Sends are not run on the sender's actor but on one of send_shards shared actors chosen by a
 * hash of the sender: one user's sends stay in order (one shard), and the sends of many users
 * that wait together in a shard's mailbox are committed in one transaction (dispatch_batch).
 */
#define WS_SEND_BATCH	64	/* largest group commit (actor_config.batch; no config key) */

/* Sends of one send shard waiting for room in its mailbox, in arrival order (loop thread). */
struct held {
	struct job	*head, *tail;
	size_t		 n;		/* appended since the list was last emptied (the window's count) */
};

/* The largest number of hints waiting for the loop before they are dropped (then: resync). */
#define WS_HINTS_MAX 65536

/* Any thread: hand d to the loop (takes ownership) and wake it. */
void	ws_done_push(struct ws *, struct done *);
/*
 * Any thread: hand two chains (linked by next, NULL-terminated; either may be NULL) to the loop
 * in this order, under one lock and with at most one wake-up.
 */
void	ws_done_push_chain(struct ws *, struct done *, struct done *);
struct done *ws_done_new(enum done_kind, uint64_t conn);
void	ws_done_free(struct done *);

/* work.c: the actor pool's operations. */
extern const struct actor_ops ws_actor_ops;
void	ws_job_free(int kind, void *job);

/* loop.c: the libwebsockets protocol callback and the loop's periodic tick. */
int	ws_callback(struct lws *, enum lws_callback_reasons, void *user, void *in, size_t len);
void	ws_tick_start(struct ws *);

#endif
