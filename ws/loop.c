/* loop.c - the libwebsockets side of parley-ws: upgrades, auth, frames, delivery, back-pressure. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <ev.h>
#include <json-c/json.h>

#include "actor.h"
#include "auth.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "redis.h"
#include "ws.h"
#include "xmalloc.h"

#define WS_TICK_US	(200 * 1000)	/* short, so that the pings of a tick go out in small bursts */
#define WS_CLOSE_GRACE	5	/* seconds a closing connection may take to flush */
#define WS_HELD_RETRY_US (5 * 1000)	/* a full send shard is tried again after this */
#define WS_STALL_MS	5000	/* pending frames and none taken for this long: too slow */
#define WS_WRITE_BURST	16	/* most frames written in one writable callback (one send) */

static void loop_pump(struct ws *, struct conn *);

/* --- the completion queue ---------------------------------------------------------------- */

struct done *
ws_done_new(enum done_kind kind, uint64_t conn)
{
	struct done *d;

	d = xcalloc(1, sizeof *d);
	d->kind = kind;
	d->conn = conn;
	return d;
}

void
ws_done_free(struct done *d)
{
	size_t i;

	if (d == NULL)
		return;
	for (i = 0; i < d->n; i++)
		free(d->events[i]);
	free(d->events);
	free(d->ids);
	free(d->text);
	free(d);
}

/* Append d to the queue (qlock held); 0 when it was dropped (hint overflow: the loop resyncs). */
static int
done_append(struct ws *ws, struct done *d)
{
	d->next = NULL;
	if (d->kind == DONE_HINT) {
		if (ws->qhints >= WS_HINTS_MAX) {
			/* The loop is far behind: forget hints, it resyncs every live connection. */
			ws->qoverflow = 1;
			ws_done_free(d);
			return 0;
		}
		ws->qhints++;
	}
	if (ws->qtail != NULL)
		ws->qtail->next = d;
	else
		ws->qhead = d;
	ws->qtail = d;
	return 1;
}

void
ws_done_push(struct ws *ws, struct done *d)
{
	d->next = NULL;
	ws_done_push_chain(ws, d, NULL);
}

void
ws_done_push_chain(struct ws *ws, struct done *d, struct done *more)
{
	struct done *dn;
	int wake;

	if (d == NULL) {
		d = more;
		more = NULL;
	}
	pthread_mutex_lock(&ws->qlock);
	wake = ws->qhead == NULL;
	for (; d != NULL; d = dn) {
		dn = d->next;
		(void)done_append(ws, d);
		if (dn == NULL) {
			dn = more;
			more = NULL;
		}
	}
	/* Under the lock: main clears ctx (under it too) before destroying the context. */
	if (wake && ws->qhead != NULL && ws->ctx != NULL)
		lws_cancel_service(ws->ctx);
	pthread_mutex_unlock(&ws->qlock);
}

/* --- sending and closing ------------------------------------------------------------------ */

/*
 * c has something to write. Frames queued while the loop drains the workers' answers (acks,
 * pushed events, room comments: nearly all of them) are written at the end of the drain, at
 * once (loop_flush); the rest wait for lws's writeable callback.
 */
static void
loop_writable(struct conn *c)
{
	struct ws *ws;

	if (c->writable_asked || c->flush_listed)
		return;
	ws = lws_context_user(lws_get_context(c->wsi));
	if (ws->draining) {
		c->flush_listed = 1;
		c->flush_next = ws->flush_head;
		ws->flush_head = c;
		return;
	}
	c->writable_asked = 1;
	lws_callback_on_writable(c->wsi);
}

/* Something arrived from the client: it is alive. */
static void
loop_heard(struct conn *c)
{
	c->rx_ms = parley_mono_ms();
	c->pings = 0;
}

/* Send what is queued, then a close frame with code and reason; hard-closed after a grace time. */
static void
loop_close(struct conn *c, uint16_t code, const char *reason)
{
	if (c->state == CONN_CLOSING)
		return;
	c->state = CONN_CLOSING;
	c->close_code = code;
	c->close_reason = reason;
	c->live = 0;
	conn_backlog_free(c);
	free(c->rxbuf);
	c->rxbuf = NULL;
	c->rxlen = 0;
	lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, WS_CLOSE_GRACE);
	loop_writable(c);
}

/*
 * Hang up without a close frame (a silent peer would never read it). lws kills the connection
 * asynchronously: a writeable asked for before may still come, and must write nothing
 * (loop_writeable tells a drop by its missing close reason).
 */
static void
loop_drop(struct conn *c)
{
	c->state = CONN_CLOSING;
	c->live = 0;
	c->close_reason = NULL;
	lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* A client that does not read: drop what it has not taken and close it (memory stays bounded). */
static void
loop_slow(struct ws *ws, struct conn *c)
{
	metrics_add(&ws->metrics, M_WS_SLOW_CLOSED, 1);
	log_info("closing a slow client of %s: outbound queue full (%" PRIu32 " frames, %" PRIu32
	    " bytes)", c->user != NULL ? c->user->key.name : "-", c->qframes, c->qbytes);
	conn_queue_drop(c);
	loop_close(c, 1008, "slow consumer: outbound queue full");
	lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, 2);
}

/* Queue one frame within the connection's limits; 0, or -1 when the client was cut off. */
static int
loop_send(struct ws *ws, struct conn *c, const char *text, size_t len)
{
	if (c->state == CONN_CLOSING)
		return -1;
	if (conn_queue(c, text, len, ws->cfg->ws_queue_bytes, (size_t)ws->cfg->ws_queue_frames) != 0) {
		loop_slow(ws, c);
		return -1;
	}
	loop_writable(c);
	return 0;
}

static void
loop_error(struct ws *ws, struct conn *c, const char *code, const char *message)
{
	char *f;

	f = protocol_error_frame(code, message);
	loop_send(ws, c, f, strlen(f));
	free(f);
}

/* An error frame that must get out (auth failures, too large), then the close. */
static void
loop_fail(struct conn *c, const char *code, const char *message, uint16_t close_code,
    const char *reason)
{
	char *f;

	if (c->state == CONN_CLOSING)
		return;
	f = protocol_error_frame(code, message);
	conn_queue_force(c, f, strlen(f));
	free(f);
	loop_close(c, close_code, reason);
}

/* --- posting jobs ------------------------------------------------------------------------- */

static struct job *
loop_job(struct conn *c)
{
	struct job *j;

	j = xcalloc(1, sizeof *j);
	j->conn = c->id;
	j->pconn = c->id;
	j->epoch = c->epoch;
	if (c->user != NULL)
		memcpy(j->user, c->user->key.name, sizeof j->user);
	memcpy(j->device, c->device, sizeof j->device);
	return j;
}

/* Post j for c's user; on failure (mailbox full, shutting down) j is freed and -1 returned. */
static int
loop_post(struct ws *ws, struct job *j, int kind)
{
	if (actor_post(ws->pool, j->user, kind, ACTOR_BACKPRESSURE, j) == 0)
		return 0;
	ws_job_free(kind, j);
	return -1;
}

/*
 * Presence -1 for connection pconn of user, whose +1 was counted: exactly one per +1 (no job
 * for a +1 that never happened). A full mailbox keeps it for the tick.
 */
static void
loop_presence_down(struct ws *ws, const char *user, uint64_t pconn)
{
	struct job *j;

	j = xcalloc(1, sizeof *j);
	j->pconn = pconn;
	snprintf(j->user, sizeof j->user, "%s", user);
	if (actor_post(ws->pool, j->user, JOB_PRESENCE_DOWN, ACTOR_BACKPRESSURE, j) != 0) {
		j->next = ws->presence_retry;
		ws->presence_retry = j;
	}
}

/* Read the user's log after what c got; pages flow back through DONE_PAGE. */
static void
loop_fetch(struct ws *ws, struct conn *c)
{
	struct job *j;

	if (c->fetching || c->backlog != NULL || c->state != CONN_READY)
		return;	/* a page being pumped fetches on when it ends; need_fetch stays */
	j = loop_job(c);
	j->after = c->delivered;
	c->fetching = 1;
	c->need_fetch = 0;
	if (loop_post(ws, j, JOB_FETCH) != 0) {
		c->fetching = 0;
		c->need_fetch = 1;	/* the tick retries */
	}
}

/* --- auth --------------------------------------------------------------------------------- */

/* A device id for a token without "dev": random, so two such connections are two devices. */
static void
loop_device_id(struct conn *c)
{
	unsigned char r[8];
	size_t i;

	if (lws_get_random(lws_get_context(c->wsi), r, sizeof r) != sizeof r) {
		uint64_t v = (uint64_t)parley_mono_ms() ^ c->id;

		memcpy(r, &v, sizeof r);
	}
	memcpy(c->device, "ws-", 3);
	for (i = 0; i < sizeof r; i++)
		snprintf(c->device + 3 + 2 * i, 3, "%02x", r[i]);
}

/* The token is good: read cursor and count presence on the user's actor, then "ready". */
static void
loop_auth_ok(struct ws *ws, struct conn *c, const struct auth_identity *id)
{
	struct conn_user *u;
	struct job *j;
	char *msg;

	/* ws.max_per_user: one user (one token) cannot hold every slot of the daemon. */
	if ((u = conns_user(ws->conns, id->user)) != NULL &&
	    u->n >= (size_t)ws->cfg->ws_max_per_user) {
		ws->refused_user++;
		xasprintf(&msg, "too many connections for this user (at most %d)",
		    ws->cfg->ws_max_per_user);
		loop_fail(c, "rate_limited", msg, 1008, "too many connections");
		free(msg);
		return;
	}
	conn_set_user(ws->conns, c, id->user);
	if (id->device[0] != '\0')
		memcpy(c->device, id->device, sizeof c->device);
	else
		loop_device_id(c);
	c->state = CONN_AUTHING;
	j = loop_job(c);
	if (loop_post(ws, j, JOB_AUTH) != 0) {
		loop_fail(c, "unavailable", "server busy, retry later", 1013, "try again later");
		return;
	}
	/* c->presence is set by the answer, once the +1 is known to be counted (loop_ready). */
	/* Frames sent before "ready" wait in lws until the connection is ready. */
	lws_rx_flow_control(c->wsi, 0);
}

static void
loop_auth(struct ws *ws, struct conn *c, const char *token)
{
	struct auth_identity id;
	const char *why = "invalid token";

	if (auth_verify(token, ws->cfg->jwt_secret, ws->cfg->jwt_leeway, parley_now_ms() / 1000,
	    &id, &why) != 0) {
		loop_fail(c, "unauthorized", why, 1008, "unauthorized");
		return;
	}
	loop_auth_ok(ws, c, &id);
}

static void
loop_ready(struct ws *ws, struct conn *c, struct done *d)
{
	struct json_object *o;
	const char *s;

	c->presence = d->presence;	/* loop_closed posts the matching -1 */
	if (c->state != CONN_AUTHING)
		return;
	if (c->nheld == 0 && !c->rx_qpaused)
		lws_rx_flow_control(c->wsi, 1);
	if (d->err != 0) {
		loop_fail(c, "unavailable", "storage unavailable, retry later", 1013,
		    "try again later");
		return;
	}
	c->state = CONN_READY;
	/*
	 * Live from here: every event after the user's newest seq at auth is pushed. Hints that
	 * came while the seq was read are in hint_max; newer events are fetched after "ready".
	 */
	if (!c->fetching) {
		c->delivered = d->last;
		c->live = 1;
	}	/* else a sync taken before "ready" sets the mark when its page comes */
	o = json_object_new_object();
	json_object_object_add(o, "type", json_object_new_string("ready"));
	json_object_object_add(o, "user", json_object_new_string(c->user->key.name));
	json_object_object_add(o, "device_id", json_object_new_string(c->device));
	json_object_object_add(o, "last_seq", json_object_new_uint64(d->seq));
	s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
	    JSON_C_TO_STRING_NOSLASHESCAPE);
	conn_queue_first(c, s, strlen(s));
	c->progress_ms = parley_mono_ms();
	loop_writable(c);
	json_object_put(o);
	if (c->live && (c->hint_max > c->delivered || c->need_fetch))
		loop_fetch(ws, c);
}

/* --- client frames ------------------------------------------------------------------------ */

static void
loop_bad_frame(struct ws *ws, struct conn *c, const char *field, const char *why)
{
	char *msg;

	xasprintf(&msg, "%s: %s", field, why);
	loop_error(ws, c, "bad_request", msg);
	free(msg);
}

/*
 * sync: restart the stream at the frame's after. The job is posted before anything changes: a
 * sync refused for a full mailbox leaves the connection exactly as it was (live, or finishing an
 * earlier sync), so live delivery goes on and the client may retry the sync.
 */
static void
loop_sync(struct ws *ws, struct conn *c, const struct proto_frame_req *r)
{
	struct job *j;

	j = loop_job(c);
	j->epoch = c->epoch + 1;
	j->has_after = r->has_after;
	j->after = r->after;
	if (loop_post(ws, j, JOB_SYNC) != 0) {
		loop_error(ws, c, "rate_limited", "sync: too many requests in flight, retry");
		return;
	}
	c->epoch++;
	c->live = 0;
	c->need_fetch = 0;
	c->hint_max = 0;
	conn_backlog_free(c);
	c->fetching = 1;
}

/* Append send job j to list h (held or gathered sends: first in, first out). */
static void
loop_held_append(struct held *h, struct job *j)
{
	j->next = NULL;
	if (h->tail != NULL)
		h->tail->next = j;
	else
		h->head = j;
	h->tail = j;
	h->n++;
}

/* The send shard of a user: FNV-1a, so a user always lands on the same one. */
static unsigned
loop_send_shard(const struct ws *ws, const char *user)
{
	uint32_t h = 2166136261u;

	for (; *user != '\0'; user++)
		h = (h ^ (unsigned char)*user) * 16777619u;
	return h % ws->send_shards;
}

/* Post send job j to shard's actor ("send:N"): 0, or -1 with errno (the caller keeps j). */
static int
loop_send_post(struct ws *ws, unsigned shard, struct job *j)
{
	char key[32];

	snprintf(key, sizeof key, "send:%u", shard);
	return actor_post(ws->pool, key, JOB_SEND, ACTOR_BACKPRESSURE, j);
}

/* An error ack for send job j of c; j is freed. */
static void
loop_send_refused(struct ws *ws, struct conn *c, struct job *j, const char *code,
    const char *message)
{
	char *ack;

	ack = protocol_ack_error(j->req.send.client_msg_id, code, message);
	loop_send(ws, c, ack, strlen(ack));
	free(ack);
	ws_job_free(JOB_SEND, j);
}

/*
 * A send whose shard's mailbox is full waits instead of being refused: j joins the shard's held
 * list and c is not read from until its held sends are posted (TCP back-pressure on a client that
 * sends faster than MySQL commits). Reading stops at the first held send, so a connection holds
 * at most what lws had already read. Each list is FIFO: a newcomer never takes the room a held
 * send waits for, and one connection's sends (one shard) stay in order.
 */
static void
loop_send_hold(struct ws *ws, struct conn *c, unsigned shard, struct job *j)
{
	loop_held_append(&ws->held[shard], j);
	ws->nheld++;
	if (c->nheld++ == 0)
		lws_rx_flow_control(c->wsi, 0);
}

/* A send job: to its send shard now, or held while that shard is full (or others wait already). */
static void
loop_send_now(struct ws *ws, struct conn *c, unsigned shard, struct job *j)
{
	if (ws->held[shard].head == NULL) {
		if (loop_send_post(ws, shard, j) == 0)
			return;
		if (errno != EAGAIN) {
			loop_send_refused(ws, c, j, "unavailable", "shutting down, retry later");
			return;
		}
	}
	loop_send_hold(ws, c, shard, j);
}

/* The commit window of shard closed: its gathered sends go on, in order. */
static void
loop_window_shard(struct ws *ws, unsigned shard)
{
	struct held *g = &ws->gather[shard];
	struct conn *c;
	struct job *j;

	while ((j = g->head) != NULL) {
		g->head = j->next;
		c = conn_find(ws->conns, j->conn);
		if (c == NULL || c->state == CONN_CLOSING)
			ws_job_free(JOB_SEND, j);	/* unacknowledged: its client sends it again */
		else
			loop_send_now(ws, c, shard, j);
	}
	g->tail = NULL;
	g->n = 0;
}

static void
loop_window_tick(lws_sorted_usec_list_t *sul)
{
	struct ws *ws = lws_container_of(sul, struct ws, window);
	unsigned i;

	ws->window_armed = 0;
	for (i = 0; i < ws->send_shards; i++)
		loop_window_shard(ws, i);
}

/*
 * A send job. With ws.send_window_us, a send first waits up to that long for others, so that its
 * shard's next group commit holds more messages: each batch's round trips and wake-ups are paid
 * once for all of them (less CPU per message), and each message waits up to the window longer
 * for its ack (docs/benchmarks.md has both). A full batch goes at once. (Waiting only when no
 * batch of the shard runs was tried: it saved less CPU at the same latency.)
 */
static void
loop_send_job(struct ws *ws, struct conn *c, struct job *j)
{
	unsigned shard = loop_send_shard(ws, j->user);
	struct held *g = &ws->gather[shard];

	if (ws->cfg->ws_send_window_us == 0 || ws->stopping) {
		loop_send_now(ws, c, shard, j);
		return;
	}
	loop_held_append(g, j);
	if (g->n >= WS_SEND_BATCH) {
		loop_window_shard(ws, shard);
		return;
	}
	if (!ws->window_armed) {
		ws->window_armed = 1;
		lws_sul_schedule(ws->ctx, 0, &ws->window, loop_window_tick,
		    (lws_usec_t)ws->cfg->ws_send_window_us);
	}
}

static void loop_held_tick(lws_sorted_usec_list_t *);

/*
 * A connection's reading resumes. What lws had read past the pause waits in its buffer list,
 * which lws's libev glue services only after an I/O event: wake the loop so it comes at once.
 */
static void
loop_rx_resume(struct ws *ws, struct conn *c)
{
	lws_rx_flow_control(c->wsi, 1);
	lws_cancel_service(ws->ctx);
}

/* Post one shard's held sends in order while its mailbox takes them; 0 when none is left. */
static int
loop_held_shard(struct ws *ws, unsigned shard)
{
	struct held *h = &ws->held[shard];
	struct conn *c;
	struct job *j;

	while ((j = h->head) != NULL) {
		c = conn_find(ws->conns, j->conn);
		h->head = j->next;
		if (c == NULL || c->state == CONN_CLOSING) {
			/* Its client is gone unacknowledged: it retries with the same client_msg_id. */
			ws_job_free(JOB_SEND, j);
		} else if (loop_send_post(ws, shard, j) != 0) {
			if (errno == EAGAIN) {
				h->head = j;
				return -1;
			}
			loop_send_refused(ws, c, j, "unavailable", "shutting down, retry later");
		}
		ws->nheld--;
		if (c != NULL && --c->nheld == 0 && c->state == CONN_READY && !c->rx_qpaused)
			loop_rx_resume(ws, c);
	}
	h->tail = NULL;
	h->n = 0;
	return 0;
}

/*
 * Retry every shard's held sends. A shard still full is retried soon: its room frees when its
 * batch ends, which may be just after the acks that woke this retry.
 */
static void
loop_held_retry(struct ws *ws)
{
	unsigned i;
	int full = 0;

	for (i = 0; i < ws->send_shards; i++) {
		if (ws->held[i].head != NULL && loop_held_shard(ws, i) != 0)
			full = 1;
	}
	if (full)
		lws_sul_schedule(ws->ctx, 0, &ws->held_retry, loop_held_tick, WS_HELD_RETRY_US);
}

static void
loop_held_tick(lws_sorted_usec_list_t *sul)
{
	loop_held_retry(lws_container_of(sul, struct ws, held_retry));
}

/* Hand a decoded frame to its job (the job takes the decoded strings). */
static void
loop_job_frame(struct ws *ws, struct conn *c, struct proto_frame_req *r, int kind)
{
	struct job *j;

	j = loop_job(c);
	j->req = *r;
	memset(r, 0, sizeof *r);
	if (kind == JOB_SEND) {
		loop_send_job(ws, c, j);
		return;
	}
	if (actor_post(ws->pool, j->user, kind, ACTOR_BACKPRESSURE, j) == 0)
		return;
	loop_error(ws, c, "rate_limited", "too many requests in flight, retry");
	ws_job_free(kind, j);
}

static void loop_room_read(struct ws *, struct conn_room *);

static void
loop_frame_ready(struct ws *ws, struct conn *c, const char *buf, size_t len)
{
	struct proto_frame_req r;
	const char *field = "json", *why = "invalid";
	char *cmid = NULL, *ack;
	int first;

	if (protocol_decode_frame(buf, len, ws->cfg->content_max_chars, ws->cfg->room_text_max_chars,
	    &r, &field, &why, &cmid) != 0) {
		if (cmid != NULL) {
			char *msg;

			xasprintf(&msg, "%s: %s", field, why);
			ack = protocol_ack_error(cmid, "bad_request", msg);
			loop_send(ws, c, ack, strlen(ack));
			free(ack);
			free(msg);
			free(cmid);
			return;
		}
		loop_bad_frame(ws, c, field, why);
		return;
	}
	switch (r.type) {
	case PROTO_F_AUTH:
		loop_error(ws, c, "bad_request", "type: already authenticated");
		break;
	case PROTO_F_SYNC:
		loop_sync(ws, c, &r);
		break;
	case PROTO_F_SEND:
		loop_job_frame(ws, c, &r, JOB_SEND);
		break;
	case PROTO_F_DELIVERED:
	case PROTO_F_READ:
		loop_job_frame(ws, c, &r, JOB_RECEIPT);
		break;
	case PROTO_F_TYPING:
		loop_job_frame(ws, c, &r, JOB_TYPING);
		break;
	case PROTO_F_ROOM_MESSAGE:
		loop_job_frame(ws, c, &r, JOB_ROOM_POST);
		break;
	case PROTO_F_JOIN_ROOM:
		if ((first = conn_join(ws->conns, c, r.room)) < 0) {
			loop_error(ws, c, "bad_request", "room: too many rooms joined");
			break;
		}
		if (first)	/* a new entry here: read its starting point */
			loop_room_read(ws, conns_room(ws->conns, r.room));
		break;
	case PROTO_F_LEAVE_ROOM:
		conn_leave(ws->conns, c, r.room);
		break;
	case PROTO_F_PING:
		loop_send(ws, c, "{\"type\":\"pong\"}", 15);
		break;
	case PROTO_F_HISTORY:
		if (r.history.limit > ws->cfg->history_max) {
			char *range;

			xasprintf(&range, "must be an integer from 1 to %d", ws->cfg->history_max);
			loop_bad_frame(ws, c, "limit", range);
			free(range);
			break;
		}
		if (r.history.limit == 0)	/* the default, within the configured maximum */
			r.history.limit = ws->cfg->history_max < PROTO_HISTORY_LIMIT_DEFAULT ?
			    ws->cfg->history_max : PROTO_HISTORY_LIMIT_DEFAULT;
		loop_job_frame(ws, c, &r, JOB_HISTORY);
		break;
	}
	protocol_frame_clear(&r);
}

/* Before auth the only frame taken is {"type":"auth"}: anything else closes. */
static void
loop_frame_new(struct ws *ws, struct conn *c, const char *buf, size_t len)
{
	struct proto_frame_req r;
	const char *field = "json", *why = "invalid";
	char *cmid = NULL;

	if (protocol_decode_frame(buf, len, ws->cfg->content_max_chars, ws->cfg->room_text_max_chars,
	    &r, &field, &why, &cmid) != 0 || r.type != PROTO_F_AUTH) {
		free(cmid);
		protocol_frame_clear(&r);
		loop_fail(c, "unauthorized", "the first frame must be {\"type\":\"auth\",\"token\":..}",
		    1008, "unauthorized");
		return;
	}
	loop_auth(ws, c, r.token);
	protocol_frame_clear(&r);
}

/*
 * Back-pressure on what the client makes us answer (pongs, errors): once its queue is half full,
 * reading stops until the client has taken it down to a quarter (loop_writeable). The other half
 * is room for the answers to the frames lws had already read (one rx buffer) and for pushes; a
 * client that pipelines pings while reading its pongs is slowed down, not cut off.
 */
static void
loop_rx_answers(struct ws *ws, struct conn *c)
{
	if (c->rx_qpaused || c->state == CONN_CLOSING)
		return;
	if (c->qframes >= (uint32_t)ws->cfg->ws_queue_frames / 2 ||
	    c->qbytes >= ws->cfg->ws_queue_bytes / 2) {
		c->rx_qpaused = 1;
		lws_rx_flow_control(c->wsi, 0);
	}
}

/* The queue went down to a quarter: read again, unless held sends or "ready" still wait. */
static void
loop_rx_answers_taken(struct ws *ws, struct conn *c)
{
	if (!c->rx_qpaused || c->qframes > (uint32_t)ws->cfg->ws_queue_frames / 4 ||
	    c->qbytes > ws->cfg->ws_queue_bytes / 4)
		return;
	c->rx_qpaused = 0;
	loop_heard(c);	/* its pongs were not read meanwhile */
	if (c->nheld == 0 && c->state == CONN_READY)
		loop_rx_resume(ws, c);
}

static void
loop_message(struct ws *ws, struct conn *c, const char *buf, size_t len)
{
	metrics_add(&ws->metrics, M_WS_FRAMES_IN, 1);
	switch (c->state) {
	case CONN_NEW:
		loop_frame_new(ws, c, buf, len);
		break;
	case CONN_AUTHING:
	case CONN_READY:
		loop_frame_ready(ws, c, buf, len);
		loop_rx_answers(ws, c);
		break;
	default:
		break;
	}
}

/* Reassemble fragments up to ws_max_message; the common unfragmented frame is used in place. */
static void
loop_receive(struct ws *ws, struct conn *c, const char *in, size_t len)
{
	size_t remaining = lws_remaining_packet_payload(c->wsi);
	int final = lws_is_final_fragment(c->wsi);
	/* Before auth only an auth frame is taken: a stranger buffers no more than that. */
	size_t max = c->state == CONN_NEW ? ws->cfg->ws_max_preauth_message :
	    ws->cfg->ws_max_message;

	if (c->state == CONN_CLOSING)
		return;
	loop_heard(c);
	if ((size_t)c->rxlen + len + remaining > max) {
		char *msg;

		if (c->state == CONN_NEW)
			ws->refused_preauth++;
		xasprintf(&msg, "message larger than %zu bytes%s", max,
		    c->state == CONN_NEW ? " before authentication" : "");
		loop_fail(c, "payload_too_large", msg, 1009, "message too big");
		free(msg);
		return;
	}
	if (lws_frame_is_binary(c->wsi))
		c->rx_binary = 1;
	if (c->rxlen == 0 && final) {
		if (c->rx_binary)
			goto binary;
		loop_message(ws, c, in, len);
		return;
	}
	if (!c->rx_binary) {
		c->rxbuf = xrealloc(c->rxbuf, (size_t)c->rxlen + len + (final ? 0 : remaining) + 1);
		memcpy(c->rxbuf + c->rxlen, in, len);
	}
	c->rxlen += (uint32_t)len;
	if (!final)
		return;
	if (c->rx_binary)
		goto binary;
	loop_message(ws, c, c->rxbuf, c->rxlen);
	free(c->rxbuf);
	c->rxbuf = NULL;
	c->rxlen = 0;
	return;
binary:
	free(c->rxbuf);
	c->rxbuf = NULL;
	c->rxlen = 0;
	c->rx_binary = 0;
	if (c->state == CONN_NEW)
		loop_fail(c, "unauthorized", "the first frame must be {\"type\":\"auth\",\"token\":..}",
		    1008, "unauthorized");
	else
		loop_error(ws, c, "bad_request", "json: binary frames are not accepted, send text");
}

/* --- delivery ----------------------------------------------------------------------------- */

/* The seq of a stored event text: its first "seq" key (the canonical encoders put it second). */
static uint64_t
loop_event_seq(const char *ev)
{
	const char *p = strstr(ev, "\"seq\":");

	return p != NULL ? strtoull(p + 6, NULL, 10) : 0;
}

/*
 * Move fetched events into the queue while it is below three quarters of its limits (the rest
 * is headroom for pushes, acks and errors), then fetch more or go live. While answers hold the
 * client's reading paused (loop_rx_answers), only up to a quarter: the queue must get down there
 * for reading to resume. Pumping never cuts a client off; a client that stops taking frames is
 * found by the tick (WS_STALL_MS).
 */
static void
loop_pump(struct ws *ws, struct conn *c)
{
	struct backlog *b = c->backlog;
	size_t max_bytes = ws->cfg->ws_queue_bytes / 4 * (c->rx_qpaused ? 1 : 3);
	size_t max_frames = (size_t)ws->cfg->ws_queue_frames / 4 * (c->rx_qpaused ? 1 : 3);
	uint64_t seq;
	char *ev;
	int more;

	if (b == NULL || c->state != CONN_READY)
		return;
	while (b->pos < b->n) {
		if (c->qframes > 0 && (c->qframes >= max_frames || c->qbytes >= max_bytes))
			return;	/* WRITEABLE pumps again */
		ev = b->events[b->pos++];
		seq = loop_event_seq(ev);
		if (seq != 0 && seq <= c->delivered)
			continue;
		conn_queue_force(c, ev, strlen(ev));
		if (seq > c->delivered)
			c->delivered = seq;
		loop_writable(c);
	}
	if (b->next > c->delivered)
		c->delivered = b->next;
	more = b->has_more;
	conn_backlog_free(c);
	if (more || c->hint_max > c->delivered) {
		loop_fetch(ws, c);
		return;
	}
	c->live = 1;
}

static void
loop_page(struct ws *ws, struct conn *c, struct done *d)
{
	struct backlog *b;

	if (d->epoch != c->epoch || c->state != CONN_READY)
		return;
	c->fetching = 0;
	if (d->err != 0) {
		if (!c->live) {
			/* The sync failed: stay live from what was delivered before it. */
			loop_error(ws, c, "unavailable", "sync failed: storage unavailable, retry");
			c->live = 1;
		}
		if (c->hint_max > c->delivered)
			c->need_fetch = 1;	/* catch-up: the tick tries again */
		return;
	}
	if (!c->live)
		c->delivered = d->seq;	/* a sync starts at its after, even one going back */
	b = xcalloc(1, sizeof *b);
	b->events = d->events;
	b->n = d->n;
	b->next = d->last;
	b->has_more = d->has_more > 0;
	d->events = NULL;
	d->n = 0;
	c->backlog = b;
	loop_pump(ws, c);
}

/* A durable event for c's user up to seq: push it if it is the next one, else catch up. */
static void
loop_user_event(struct ws *ws, struct conn *c, const struct done *d)
{
	if (c->state == CONN_AUTHING) {
		/* The mark is being read: what is newer than it is fetched once ready. */
		if (d->seq > c->hint_max)
			c->hint_max = d->seq;
		return;
	}
	if (c->state != CONN_READY)
		return;
	if (d->seq <= c->delivered)
		return;
	if (c->fetching || c->backlog != NULL || !c->live) {
		if (d->seq > c->hint_max)
			c->hint_max = d->seq;
		return;
	}
	if (d->text != NULL && d->seq == c->delivered + 1 && strstr(d->text, "\"seq\":") != NULL) {
		if (loop_send(ws, c, d->text, d->len) == 0)
			c->delivered = d->seq;
		return;
	}
	c->hint_max = d->seq;
	loop_fetch(ws, c);
}

/*
 * A room comment to every listener of this process: its text (encoded once, by the poster) is
 * copied once into a shared payload that every listener's queue points to. A listener whose queue
 * is full is cut off (loop_slow) and the others go on: a slow one never holds the room back.
 * Never twice: a comment may come live (local, with its text), fetched after a hint from another
 * host, and caught up from MySQL, in any order; the room remembers which ids it pushed
 * (conn_room_pushed). Comments may reach listeners out of id order (clients sort by id).
 */
static void
loop_room_push(struct ws *ws, struct conn_room *r, uint64_t id, const char *text, size_t len)
{
	struct room_join *j, *jn;
	struct frame_shared *sh = NULL;
	struct conn *c;

	if (id != 0 && conn_room_pushed(r, id))
		return;
	for (j = r->head; j != NULL; j = jn) {
		jn = j->rnext;	/* loop_slow never unlinks, but stay safe */
		c = j->conn;
		if (c->state != CONN_READY)
			continue;
		if (sh == NULL)
			sh = frame_shared_new(text, len);
		if (conn_queue_shared(c, sh, ws->cfg->ws_queue_bytes,
		    (size_t)ws->cfg->ws_queue_frames) != 0) {
			loop_slow(ws, c);
			continue;
		}
		loop_writable(c);
	}
	frame_shared_unref(sh);
}

/* A worker job about room r (key "room:NAME", one at a time per room): 0, or -1 when refused. */
static int
loop_room_job(struct ws *ws, struct conn_room *r, int kind, uint64_t after)
{
	struct job *j;

	j = xcalloc(1, sizeof *j);
	snprintf(j->user, sizeof j->user, "room:%.59s", r->key.name);
	j->req.room = xstrdup(r->key.name);
	j->has_after = 1;
	j->after = after;
	j->epoch = r->gen;
	return loop_post(ws, j, kind);
}

/*
 * The room's next read from MySQL, one at a time: its starting point until it has one (a
 * catch-up asked meanwhile stays due and runs when the starting point is back), else a catch-up
 * after the floor. A read that cannot be posted (or fails) is tried again by the tick.
 */
static void
loop_room_read(struct ws *ws, struct conn_room *r)
{
	if (r == NULL || r->reading)
		return;
	if (loop_room_job(ws, r, r->based ? JOB_ROOM_CATCHUP : JOB_ROOM_BASE, r->floor) != 0) {
		ws->rooms_due = 1;	/* mailbox full: the tick tries again */
		return;
	}
	r->reading = 1;
	if (r->based)
		r->catchup_due = 0;
}

/* Hints for r may be lost: catch it up now, or once its read in flight is back. */
static void
loop_room_lost(struct ws *ws, struct conn_room *r)
{
	if (r == NULL || r->n == 0)
		return;
	r->catchup_due = 1;
	loop_room_read(ws, r);
}

/* A comment fetched after another host's hint (a fetch that gave up: the room catches up). */
static void
loop_room_fetched(struct ws *ws, struct done *d)
{
	struct conn_room *r;

	if ((r = conns_room(ws->conns, d->key)) == NULL)
		return;
	if (d->err != 0 || d->text == NULL)
		loop_room_lost(ws, r);
	else
		loop_room_push(ws, r, d->seq, d->text, d->len);
}

/* A room read came back (DONE_ROOM_BASE or DONE_ROOM_PAGE); stale ones are dropped. */
static void
loop_room_done(struct ws *ws, struct done *d)
{
	struct conn_room *r;
	size_t i;

	if ((r = conns_room(ws->conns, d->key)) == NULL || r->gen != d->epoch)
		return;	/* the room was left, and maybe joined again, meanwhile */
	r->reading = 0;
	if (d->err != 0) {
		r->catchup_due = 1;	/* MySQL gave up: the tick tries again */
		ws->rooms_due = 1;
		return;
	}
	if (d->kind == DONE_ROOM_BASE) {
		if (d->seq > r->floor)
			r->floor = d->seq;
		r->based = 1;
	} else {
		for (i = 0; i < d->n; i++)
			loop_room_push(ws, r, d->ids[i], d->events[i], strlen(d->events[i]));
		if (d->last > r->floor)
			r->floor = d->last;
		if (d->has_more)
			r->catchup_due = 1;
	}
	if (r->catchup_due)
		loop_room_read(ws, r);
}

static void
loop_hint(struct ws *ws, struct done *d)
{
	struct conn_user *u;
	struct conn_room *r;
	struct conn *c;

	metrics_add(&ws->metrics, M_BUS_HINTS_IN, 1);
	switch (d->topic) {
	case BUS_USER_EVENT:
		if ((u = conns_user(ws->conns, d->key)) == NULL)
			return;
		for (c = u->head; c != NULL; c = c->unext)
			loop_user_event(ws, c, d);
		break;
	case BUS_USER_EPHEMERAL:
		if (d->text == NULL || (u = conns_user(ws->conns, d->key)) == NULL)
			return;
		for (c = u->head; c != NULL; c = c->unext) {
			if (c->state == CONN_READY)
				loop_send(ws, c, d->text, d->len);
		}
		break;
	case BUS_ROOM:
		if ((r = conns_room(ws->conns, d->key)) == NULL)
			return;
		if (d->text == NULL && d->seq == 0) {
			/*
			 * The bridge's room subscription took effect: catch up from MySQL, or once
			 * the room's starting point is back.
			 */
			loop_room_lost(ws, r);
			return;
		}
		if (d->text != NULL)
			loop_room_push(ws, r, d->seq, d->text, d->len);
		else if (!conn_room_seen(r, d->seq) && loop_room_job(ws, r, JOB_ROOM_FETCH, d->seq) != 0)
			loop_room_lost(ws, r);	/* not fetched: caught up instead */
		break;
	default:
		break;
	}
}

static void
loop_frame_done(struct ws *ws, struct conn *c, struct done *d)
{
	if (c->state == CONN_CLOSING)
		return;
	loop_send(ws, c, d->text, d->len);
	if (d->close_code != 0)
		loop_close(c, d->close_code, "closed");
}

/* Hints for c may be lost: re-read its log now, or once it is ready or its fetch is back. */
static void
loop_recheck(struct ws *ws, struct conn *c)
{
	if (c->state == CONN_AUTHING)
		c->need_fetch = 1;	/* loop_ready reads after the newest seq it got */
	if (c->state != CONN_READY)
		return;
	if (c->fetching || c->backlog != NULL)
		c->need_fetch = 1;
	else if (c->live)
		loop_fetch(ws, c);
}

/*
 * Lost hints (the loop fell behind, a peer dropped hints for us, Redis is down): every live connection re-reads its log; one already reading may have read before
 * the lost commit, so it reads once more when done (the tick); one still authenticating may have
 * read its newest seq before it, so it reads once it is ready. Every room with listeners catches
 * up from MySQL, or once its starting point or the read in flight is back.
 */
static void
loop_resync_all(struct ws *ws)
{
	struct conn *c;
	struct conn_room *r, *rn = NULL;
	size_t i = 0;

	while (conns_room_at(ws->conns, &i, &r, &rn) == 0)
		loop_room_lost(ws, r);
	i = 0;
	while (conn_at(ws->conns, &i, &c) == 0) {
		loop_recheck(ws, c);
	}
}

/*
 * The bridge's subscription of a slot of users took effect: the connections of those users
 * (only) re-read their logs, as loop_resync_all does for all.
 */
static void
loop_resync_slot(struct ws *ws, uint64_t slot)
{
	unsigned nslots = ws->cfg->redis_slots > 0 ? (unsigned)ws->cfg->redis_slots : 1;
	struct conn *c;
	size_t i = 0;

	while (conn_at(ws->conns, &i, &c) == 0) {
		if (c->user == NULL || redis_slot(c->user->key.name, nslots) != slot)
			continue;
		loop_recheck(ws, c);
	}
}

/*
 * Say that hints may be lost, at most once a minute: while Redis is down the bridge asks for a
 * recheck every fallback interval.
 */
static void
loop_resync_log(struct ws *ws)
{
	int64_t now = parley_mono_ms();

	ws->resyncs_unlogged++;
	if (ws->resync_log_ms != 0 && now - ws->resync_log_ms < 60 * 1000)
		return;
	log_warn("bus hints may be lost (our queue or a peer's was full, or Redis is down): "
	    "re-reading MySQL for every connection and room (%" PRIu64 " times since the last "
	    "such message)", ws->resyncs_unlogged);
	ws->resync_log_ms = now;
	ws->resyncs_unlogged = 0;
}

/* The tick: room reads that failed or found the mailbox full, again (a start-up read too). */
static void
loop_rooms_retry(struct ws *ws)
{
	struct conn_room *r, *rn = NULL;
	size_t i = 0;

	ws->rooms_due = 0;
	while (conns_room_at(ws->conns, &i, &r, &rn) == 0) {
		if (r->n > 0 && !r->reading && (r->catchup_due || !r->based))
			loop_room_read(ws, r);
	}
}

static void loop_stop(struct ws *);
static void loop_tick(lws_sorted_usec_list_t *);
static void loop_flush(struct ws *);

/* Everything workers and the bus reader finished since the last wake-up. */
static void
loop_drain(struct ws *ws)
{
	struct done *d, *dn;
	struct conn *c;
	size_t hints = 0;
	int overflow;

	pthread_mutex_lock(&ws->qlock);
	d = ws->qhead;
	ws->qhead = ws->qtail = NULL;
	ws->qhints = 0;
	overflow = ws->qoverflow;
	ws->qoverflow = 0;
	pthread_mutex_unlock(&ws->qlock);
	ws->draining = 1;

	for (; d != NULL; d = dn) {
		dn = d->next;
		if (d->kind == DONE_HINT && d->topic == BUS_LOST && strcmp(d->key, "slot") == 0) {
			loop_resync_slot(ws, d->seq);
		} else if (d->kind == DONE_HINT && d->topic == BUS_LOST) {
			overflow = 1;	/* a peer dropped hints for us: as if our queue had */
		} else if (d->kind == DONE_HINT) {
			hints++;
			loop_hint(ws, d);
		} else if (d->kind == DONE_ROOM_BASE || d->kind == DONE_ROOM_PAGE) {
			loop_room_done(ws, d);
		} else if (d->kind == DONE_ROOM) {
			loop_room_fetched(ws, d);
		} else if ((c = conn_find(ws->conns, d->conn)) == NULL) {
			/* Closed while authenticating: the +1 it counted still needs its -1. */
			if (d->kind == DONE_READY && d->presence)
				loop_presence_down(ws, d->key, d->conn);
		} else {
			switch (d->kind) {
			case DONE_READY:
				loop_ready(ws, c, d);
				break;
			case DONE_FRAME:
				loop_frame_done(ws, c, d);
				break;
			case DONE_PAGE:
				loop_page(ws, c, d);
				break;
			default:
				break;
			}
		}
		ws_done_free(d);
	}
	if (overflow) {
		loop_resync_log(ws);
		loop_resync_all(ws);
	}
	if (ws->nheld > 0)
		loop_held_retry(ws);
	ws->draining = 0;
	loop_flush(ws);
	if (__atomic_load_n(&ws->stop, __ATOMIC_ACQUIRE) && !ws->stopping)
		loop_stop(ws);
}

/* --- shutdown and the tick ---------------------------------------------------------------- */

static void
loop_stop(struct ws *ws)
{
	struct conn *c;
	size_t i = 0;
	unsigned shard;

	ws->stopping = 1;
	ws->stop_deadline = parley_mono_ms() + 3000;
	for (shard = 0; shard < ws->send_shards; shard++)
		loop_window_shard(ws, shard);
	log_info("shutting down: closing %zu connections", conns_count(ws->conns));
	while (conn_at(ws->conns, &i, &c) == 0)
		loop_close(c, 1001, "server shutting down");
	lws_sul_schedule(ws->ctx, 0, &ws->tick, loop_tick, 50 * 1000);
}

/* Disconnects whose presence -1 could not be posted yet. */
static void
loop_presence_retry(struct ws *ws)
{
	struct job *j = ws->presence_retry, *jn;

	ws->presence_retry = NULL;
	for (; j != NULL; j = jn) {
		jn = j->next;
		if (actor_post(ws->pool, j->user, JOB_PRESENCE_DOWN, ACTOR_BACKPRESSURE, j) == 0)
			continue;
		if (errno == ESHUTDOWN) {
			ws_job_free(JOB_PRESENCE_DOWN, j);
			continue;
		}
		j->next = ws->presence_retry;
		ws->presence_retry = j;
	}
}

/*
 * The heartbeat: a ping after ws.ping_interval seconds with nothing received (and again every
 * interval), a hang-up (no close frame: a half-open peer would never read it) after
 * ws.idle_timeout. A connection whose reading we paused (held sends, or "ready" not sent yet)
 * is not silent by its own doing: its clock restarts. One that never authenticated is the auth
 * timeout's (1008). Returns -1 when c was dropped.
 */
static int
loop_keepalive(struct ws *ws, struct conn *c, int64_t now)
{
	int64_t silent = now - c->rx_ms, every = (int64_t)ws->cfg->ws_ping_interval * 1000;

	if (c->state == CONN_CLOSING || c->state == CONN_NEW)
		return 0;
	if (c->nheld > 0 || c->rx_qpaused || c->state == CONN_AUTHING) {
		loop_heard(c);
		return 0;
	}
	if (silent >= (int64_t)ws->cfg->ws_idle_timeout * 1000) {
		log_info("dropping a silent connection of %s after %d s",
		    c->user != NULL ? c->user->key.name : "-", ws->cfg->ws_idle_timeout);
		metrics_add(&ws->metrics, M_WS_IDLE_CLOSED, 1);
		loop_drop(c);
		return -1;
	}
	if (silent >= every * (c->pings + 1) && c->pings < UINT8_MAX) {
		c->pings++;
		c->ping_due = 1;
		loop_writable(c);
	}
	return 0;
}

static void
loop_tick(lws_sorted_usec_list_t *sul)
{
	struct ws *ws = lws_container_of(sul, struct ws, tick);
	int64_t now = parley_mono_ms();
	struct conn *c;
	size_t i = 0;

	loop_presence_retry(ws);
	if (ws->nheld > 0)
		loop_held_retry(ws);
	if (ws->rooms_due)
		loop_rooms_retry(ws);
	while (conn_at(ws->conns, &i, &c) == 0) {
		if (loop_keepalive(ws, c, now) != 0)
			continue;
		if (c->state == CONN_READY && c->qframes > 0 && now - c->progress_ms >= WS_STALL_MS)
			loop_slow(ws, c);
		else if (c->state == CONN_NEW && now >= c->auth_deadline)
			loop_fail(c, "unauthorized", "no auth frame in time", 1008, "auth timeout");
		else if (c->need_fetch && c->state == CONN_READY)
			loop_fetch(ws, c);
	}
	if (ws->stopping && (conns_count(ws->conns) == 0 || now >= ws->stop_deadline)) {
		ev_break(ws->loop, EVBREAK_ALL);
		return;
	}
	lws_sul_schedule(ws->ctx, 0, &ws->tick, loop_tick, ws->stopping ? 50 * 1000 : WS_TICK_US);
}

void
ws_tick_start(struct ws *ws)
{
	lws_sul_schedule(ws->ctx, 0, &ws->tick, loop_tick, WS_TICK_US);
}

/* --- upgrade checks ----------------------------------------------------------------------- */

/* Refuse an upgrade with a plain HTTP answer (the socket is fresh: a short write cannot block). */
static int
loop_refuse(struct lws *wsi, int status, const char *text, const char *code, const char *message)
{
	char body[256], resp[512];
	int bl, rl;

	bl = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
	    message);
	rl = snprintf(resp, sizeof resp, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
	    "Content-Length: %d\r\n%sConnection: close\r\n\r\n%s", status, text, bl,
	    status == 503 || status == 429 ? "Retry-After: 5\r\n" : "", body);
	(void)send(lws_get_socket_fd(wsi), resp, (size_t)rl, MSG_NOSIGNAL | MSG_DONTWAIT);
	return -1;
}

static int
loop_origin_ok(struct ws *ws, struct lws *wsi)
{
	char origin[256];
	size_t i;

	if (ws->norigins == 0)
		return 1;
	if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) <= 0)
		return 1;	/* not a browser: Origin protects browsers' users only */
	if (lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) < 0)
		return 0;
	for (i = 0; i < ws->norigins; i++) {
		if (strcmp(origin, ws->origins[i]) == 0)
			return 1;
	}
	return 0;
}

/*
 * The request's URL in bytes: path, then '?' and the query (lws_hdr_total_length counts the '&'
 * between parameters), after lws's percent-decoding. More than ws.max_url when lws cut a part
 * at ws.max_url + 1 (main.c's token limits).
 */
static size_t
loop_url_length(struct lws *wsi, size_t path)
{
	int args = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS);

	return path + (args > 0 ? (size_t)args + 1 : 0);
}

/* An IPv4 client on an IPv6 socket is named ::ffff:a.b.c.d: count it as a.b.c.d. */
static const char *
loop_addr_plain(const char *a)
{
	if (strncmp(a, "::ffff:", 7) == 0 && strchr(a + 7, '.') != NULL)
		return a + 7;
	return a;
}

static int
loop_proxy_trusted(const struct ws *ws, const char *peer)
{
	size_t i;

	for (i = 0; i < ws->nproxies; i++) {
		if (strcmp(peer, ws->proxies[i]) == 0)
			return 1;
	}
	return 0;
}

/*
 * The client's address for ws.max_per_ip: the peer's, or, when the peer is a trusted proxy
 * (ws.trusted_proxies), the last X-Forwarded-For entry (the one that proxy added; the ones
 * before it are the client's word). An entry that is not an address keeps the peer's.
 */
static void
loop_client_addr(const struct ws *ws, struct lws *wsi, char *out, size_t size)
{
	char peer[64], *xff, *last;
	size_t n;
	int len;

	if (lws_get_peer_simple(wsi, peer, sizeof peer) == NULL)
		snprintf(peer, sizeof peer, "unknown");
	snprintf(out, size, "%s", loop_addr_plain(peer));
	if (!loop_proxy_trusted(ws, out) ||
	    (len = lws_hdr_total_length(wsi, WSI_TOKEN_X_FORWARDED_FOR)) <= 0)
		return;
	xff = xmalloc((size_t)len + 1);
	if (lws_hdr_copy(wsi, xff, len + 1, WSI_TOKEN_X_FORWARDED_FOR) < 0)
		goto out;
	last = strrchr(xff, ',');
	last = last != NULL ? last + 1 : xff;
	last += strspn(last, " \t");
	n = strspn(last, "0123456789abcdefABCDEF.:");
	if (n > 0 && n < size && n <= 45 && last[n + strspn(last + n, " \t")] == '\0') {
		last[n] = '\0';
		snprintf(out, size, "%s", loop_addr_plain(last));
	}
out:
	free(xff);
}

/*
 * URL length, path, Origin, capacity and the client address's share, before the 101 (never in
 * HTTP_CONFIRM_UPGRADE: CVE-2025-11677).
 */
static int
loop_filter(struct ws *ws, struct lws *wsi)
{
	char path[64], addr[PARLEY_ID_MAX + 1];
	int plen = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI);

	if (plen < 0 || loop_url_length(wsi, (size_t)plen) > ws->cfg->ws_max_url) {
		ws->refused_url++;
		return loop_refuse(wsi, 414, "URI Too Long", "bad_request",
		    "url: longer than ws.max_url bytes");
	}
	if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) < 0 ||
	    (strcmp(path, "/ws") != 0 && strcmp(path, "/ws/") != 0))
		return loop_refuse(wsi, 404, "Not Found", "not_found", "WebSocket endpoint is /ws");
	if (!loop_origin_ok(ws, wsi))
		return loop_refuse(wsi, 403, "Forbidden", "forbidden", "origin not allowed");
	if (ws->stopping || conns_count(ws->conns) >= ws->max_conns)
		return loop_refuse(wsi, 503, "Service Unavailable", "unavailable",
		    "too many connections");
	loop_client_addr(ws, wsi, addr, sizeof addr);
	if (conns_addr_count(ws->conns, addr) >= (size_t)ws->cfg->ws_max_per_ip) {
		ws->refused_ip++;
		return loop_refuse(wsi, 429, "Too Many Requests", "rate_limited",
		    "too many connections from this address");
	}
	return 0;
}

/* The upgrade is done: count the connection and take a URL token if there is one. */
static int
loop_established(struct ws *ws, struct conn *c, struct lws *wsi)
{
	char *buf, addr[PARLEY_ID_MAX + 1];
	const char *token;
	int len;

	c->wsi = wsi;
	if (conn_register(ws->conns, c) != 0)
		return -1;
	metrics_add(&ws->metrics, M_WS_CONNECTIONS, 1);
	/* Counted here, in the same pass as loop_filter's check (one thread, no wait between). */
	loop_client_addr(ws, wsi, addr, sizeof addr);
	conn_set_addr(ws->conns, c, addr);
	c->state = CONN_NEW;
	c->rx_ms = parley_mono_ms();
	c->auth_deadline = c->rx_ms + (int64_t)ws->cfg->ws_auth_timeout * 1000;
	/*
	 * The request headers are still attached here (lws drops them after ESTABLISHED). The
	 * buffer takes the whole query: a token of any length lws accepted is read, so a bad one is
	 * refused now, never mistaken for no token (which waits for an auth frame).
	 */
	if ((len = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS)) <= 0)
		return 0;
	buf = xmalloc((size_t)len + 1);
	if ((token = lws_get_urlarg_by_name(wsi, "access_token=", buf, len + 1)) != NULL)
		loop_auth(ws, c, token);
	free(buf);
	return 0;
}

static void
loop_closed(struct ws *ws, struct conn *c)
{
	struct conn **pp;

	/* Never on the flush list outside a drain; but a freed conn must not stay on it. */
	for (pp = &ws->flush_head; c->flush_listed && *pp != NULL; pp = &(*pp)->flush_next) {
		if (*pp == c) {
			*pp = c->flush_next;
			c->flush_listed = 0;
			break;
		}
	}
	if (!c->registered)
		return;
	if (c->presence && c->user != NULL)
		loop_presence_down(ws, c->user->key.name, c->id);
	conn_unregister(ws->conns, c);
	metrics_add(&ws->metrics, M_WS_CONNECTIONS, -1);
}

/* The header of an unmasked server text frame of len (< 64 KiB) bytes into h (RFC 6455, 5.2). */
static size_t
loop_frame_header(unsigned char *h, size_t len)
{
	h[0] = 0x81;	/* FIN, text */
	if (len < 126) {
		h[1] = (unsigned char)len;
		return 2;
	}
	h[1] = 126;
	h[2] = (unsigned char)(len >> 8);
	h[3] = (unsigned char)len;
	return 4;
}

/*
 * Does f, framed, still fit after used bytes of a burst (used 0: f and the next one)? A burst
 * stays within what lws hands to send() in one piece (the protocol's tx_packet_size, ws_main:
 * ws_max_message + 1024), and frames of 64 KiB and more go alone (lws frames them).
 */
static int
loop_burst_fits(const struct ws *ws, const struct frame *f, size_t used)
{
	size_t need = used + f->len + 4;

	if (f->len > 0xffff)
		return 0;
	if (used == 0 && f->next != NULL) {
		if (f->next->len > 0xffff)
			return 0;
		need += f->next->len + 4;
	}
	return need <= ws->protocols[0].tx_packet_size;
}

/* Bookkeeping after a frame of c was taken for writing. */
static void
loop_written(struct ws *ws, struct conn *c)
{
	c->progress_ms = parley_mono_ms();
	metrics_add(&ws->metrics, M_WS_FRAMES_OUT, 1);
	if (c->rx_qpaused)
		loop_rx_answers_taken(ws, c);
	if (c->backlog != NULL)
		loop_pump(ws, c);
}

/*
 * Up to WS_WRITE_BURST queued frames in one write: framed here, back to back in one buffer, and
 * handed to lws as raw bytes (LWS_WRITE_RAW: no extension is ever negotiated, so a text frame
 * is exactly header + payload). One send() for the ack and the sender's own copy of its message
 * where one lws_write() per frame took a send() each plus a poll() (lws_send_pipe_choked)
 * between them; whatever the socket does not take, lws keeps and flushes before the next
 * writable callback. 0, or -1 to close.
 */
static int
loop_write_burst(struct ws *ws, struct conn *c)
{
	size_t used = 0, need;
	struct frame *f;
	int burst;

	for (burst = 0; burst < WS_WRITE_BURST && c->qhead != NULL; burst++) {
		if (burst > 0 && !loop_burst_fits(ws, c->qhead, used))
			break;
		f = conn_dequeue(c);
		need = LWS_PRE + used + 4 + f->len;
		if (need > ws->wcap) {
			ws->wcap = need > 2 * ws->wcap ? need : 2 * ws->wcap;
			ws->wbuf = xrealloc(ws->wbuf, ws->wcap);
		}
		used += loop_frame_header(ws->wbuf + LWS_PRE + used, f->len);
		memcpy(ws->wbuf + LWS_PRE + used, conn_frame_data(f), f->len);
		used += f->len;
		conn_frame_free(f);
		loop_written(ws, c);
	}
	return lws_write(c->wsi, ws->wbuf + LWS_PRE, used, LWS_WRITE_RAW) < 0 ? -1 : 0;
}

static int
loop_writeable(struct ws *ws, struct conn *c)
{
	/* A ping with a payload: lws passes an empty pong on to no callback, and we need to see it. */
	unsigned char ping[LWS_PRE + 1] = { [LWS_PRE] = 'p' };
	struct frame *f;
	int n;

	c->writable_asked = 0;
	if (c->state == CONN_CLOSING && c->close_reason == NULL)	/* loop_drop */
		return -1;
	if (c->ping_due && c->state != CONN_CLOSING) {
		c->ping_due = 0;
		if (lws_write(c->wsi, ping + LWS_PRE, 1, LWS_WRITE_PING) < 0)
			return -1;
		if (c->qhead != NULL)
			loop_writable(c);
		return 0;
	}
	if (c->state == CONN_AUTHING)
		return 0;	/* "ready" goes first: loop_ready asks again */
	if (c->qhead == NULL) {
		if (c->state == CONN_CLOSING) {
			lws_close_reason(c->wsi, (enum lws_close_status)c->close_code,
			    (unsigned char *)(uintptr_t)c->close_reason, strlen(c->close_reason));
			return -1;
		}
		return 0;
	}
	if (c->qhead->next == NULL || loop_burst_fits(ws, c->qhead, 0) == 0) {
		/* One frame (or one too big to join others): lws frames it. */
		f = conn_dequeue(c);
		n = lws_write(c->wsi, conn_frame_data(f), f->len, LWS_WRITE_TEXT);
		conn_frame_free(f);
		if (n < 0)
			return -1;
		loop_written(ws, c);
	} else if (loop_write_burst(ws, c) != 0) {
		return -1;
	}
	if (c->qhead != NULL || c->state == CONN_CLOSING)
		loop_writable(c);
	return 0;
}

/*
 * Write the frames queued during a drain now, from the service thread but outside a writeable
 * callback: the ack, the sender's copy and the recipient's frame of a message leave without
 * lws turning POLLOUT on and off for each connection (two epoll_ctl() each) and without the
 * extra loop turn. lws 4.1.6 allows it for a plain socket: lws_issue_raw() appends to what a
 * partial send left (buflist_out) and asks for writeable itself when the socket does not take
 * everything; the rule "one lws_write() per writeable callback" is about that partial send,
 * which lws_partial_buffered() tells us about. A connection that is not simply open (still
 * authenticating: "ready" goes first; closing; a ping due), has a partial send pending or a
 * frame lws must frame itself (64 KiB and more) goes the usual way.
 */
static void
loop_flush(struct ws *ws)
{
	struct conn *c;

	while ((c = ws->flush_head) != NULL) {
		ws->flush_head = c->flush_next;
		c->flush_next = NULL;
		c->flush_listed = 0;
		/* A close begun in the drain (loop_slow empties the queue first) needs its writeable. */
		if (c->state == CONN_CLOSING) {
			loop_writable(c);
			continue;
		}
		if (c->qhead == NULL)
			continue;
		if (c->state == CONN_AUTHING || c->ping_due || c->writable_asked ||
		    lws_partial_buffered(c->wsi) || !loop_burst_fits(ws, c->qhead, 0)) {
			loop_writable(c);
			continue;
		}
		if (loop_write_burst(ws, c) != 0) {
			loop_drop(c);
			continue;
		}
		if (c->qhead != NULL)
			loop_writable(c);
	}
}

/* One whole HTTP answer on the daemon's own port; 0, or -1 to close. */
static int
loop_http_answer(struct lws *wsi, unsigned status, const char *type, const char *text)
{
	unsigned char hdr[LWS_PRE + 512], *p = hdr + LWS_PRE, *end = hdr + sizeof hdr - 1;
	size_t len = strlen(text);
	char *body;

	body = xmalloc(LWS_PRE + len);
	memcpy(body + LWS_PRE, text, len);
	if (lws_add_http_common_headers(wsi, status, type, len, &p, end) != 0 ||
	    lws_finalize_write_http_header(wsi, hdr + LWS_PRE, &p, end) != 0 ||
	    lws_write(wsi, (unsigned char *)body + LWS_PRE, len, LWS_WRITE_HTTP_FINAL) != (int)len) {
		free(body);
		return -1;
	}
	free(body);
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int
loop_http_error(struct lws *wsi, unsigned status, const char *code, const char *message)
{
	char *body = protocol_error_body(code, message);
	int rc;

	rc = loop_http_answer(wsi, status, "application/json", body);
	free(body);
	return rc;
}

/* /metrics takes a token like every route of parley-fcgi but /health (Authorization: Bearer). */
static int
loop_http_authorized(struct ws *ws, struct lws *wsi)
{
	struct auth_identity id;
	const char *why = "invalid token";
	char *hdr;
	int len, ok = 0;

	if ((len = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION)) <= 7)
		return 0;
	hdr = xmalloc((size_t)len + 1);
	if (lws_hdr_copy(wsi, hdr, len + 1, WSI_TOKEN_HTTP_AUTHORIZATION) >= 0 &&
	    strncasecmp(hdr, "Bearer ", 7) == 0)
		ok = auth_verify(hdr + 7, ws->cfg->jwt_secret, ws->cfg->jwt_leeway,
		    parley_now_ms() / 1000, &id, &why) == 0;
	free(hdr);
	return ok;
}

/* The loop's own figures for /metrics: the caps of ws.max_per_ip and ws.max_per_user. */
static char *
loop_metrics_extra(struct ws *ws)
{
	struct actor_stats st;
	struct bus_stats bs;
	struct conns_stats cs;
	struct conn *c;
	size_t i = 0, unauth = 0;
	char *extra, *rm, *all;

	actor_pool_stats(ws->pool, &st);
	bus_stats(ws->bus, &bs);
	conns_stats(ws->conns, &cs);
	while (conn_at(ws->conns, &i, &c) == 0) {
		if (c->state == CONN_NEW)
			unauth++;
	}
	xasprintf(&extra,
	    "# HELP parley_ws_actor_queued messages waiting in actor mailboxes\n"
	    "# TYPE parley_ws_actor_queued gauge\nparley_ws_actor_queued %zu\n"
	    "# HELP parley_ws_bus_dropped_total bus hints a full peer lost\n"
	    "# TYPE parley_ws_bus_dropped_total counter\nparley_ws_bus_dropped_total %llu\n"
	    "# HELP parley_ws_bus_refused_total bus connections of another uid refused unread\n"
	    "# TYPE parley_ws_bus_refused_total counter\nparley_ws_bus_refused_total %llu\n"
	    "# HELP parley_ws_bus_lost_total times a peer said it dropped hints for us\n"
	    "# TYPE parley_ws_bus_lost_total counter\nparley_ws_bus_lost_total %llu\n"
	    "# HELP parley_ws_ws_unauthenticated open WebSockets that have not authenticated yet\n"
	    "# TYPE parley_ws_ws_unauthenticated gauge\nparley_ws_ws_unauthenticated %zu\n"
	    "# HELP parley_ws_ws_addrs client addresses with open WebSockets\n"
	    "# TYPE parley_ws_ws_addrs gauge\nparley_ws_ws_addrs %zu\n"
	    "# HELP parley_ws_ws_addr_max most open WebSockets of one client address (ws.max_per_ip %d)\n"
	    "# TYPE parley_ws_ws_addr_max gauge\nparley_ws_ws_addr_max %zu\n"
	    "# HELP parley_ws_ws_user_max most open WebSockets of one user (ws.max_per_user %d)\n"
	    "# TYPE parley_ws_ws_user_max gauge\nparley_ws_ws_user_max %zu\n"
	    "# HELP parley_ws_ws_refused_ip_total upgrades refused with 429: ws.max_per_ip\n"
	    "# TYPE parley_ws_ws_refused_ip_total counter\nparley_ws_ws_refused_ip_total %" PRIu64 "\n"
	    "# HELP parley_ws_ws_refused_user_total authentications refused: ws.max_per_user\n"
	    "# TYPE parley_ws_ws_refused_user_total counter\nparley_ws_ws_refused_user_total %" PRIu64 "\n"
	    "# HELP parley_ws_ws_preauth_too_large_total closed 1009: a message over ws.max_preauth_message before auth\n"
	    "# TYPE parley_ws_ws_preauth_too_large_total counter\nparley_ws_ws_preauth_too_large_total %" PRIu64 "\n"
	    "# HELP parley_ws_ws_url_too_long_total requests refused with 414: ws.max_url\n"
	    "# TYPE parley_ws_ws_url_too_long_total counter\nparley_ws_ws_url_too_long_total %" PRIu64 "\n"
	    "# HELP parley_ws_ws_protocol_closed_total closed 1002: a frame libwebsockets refused without a reason\n"
	    "# TYPE parley_ws_ws_protocol_closed_total counter\nparley_ws_ws_protocol_closed_total %" PRIu64 "\n",
	    st.queued, (unsigned long long)bs.dropped, (unsigned long long)bs.refused,
	    (unsigned long long)bs.lost, unauth, cs.addrs, ws->cfg->ws_max_per_ip, cs.addr_max,
	    ws->cfg->ws_max_per_user, cs.user_max, ws->refused_ip, ws->refused_user,
	    ws->refused_preauth, ws->refused_url, ws->protocol_closed);
	rm = redis_metrics(ws->redis, "parley_ws");
	xasprintf(&all, "%s%s", extra, rm);
	free(extra);
	free(rm);
	return all;
}

/* GET /metrics on the daemon's own port (not proxied): Prometheus text, for a valid token. */
static int
loop_http(struct ws *ws, struct lws *wsi, const char *uri)
{
	char *text, *extra;
	int rc;

	if (loop_url_length(wsi, strlen(uri)) > ws->cfg->ws_max_url) {
		ws->refused_url++;
		return loop_http_error(wsi, 414, "bad_request", "url: longer than ws.max_url bytes");
	}
	if (strcmp(uri, "/health") == 0) {
		/* The loop never waits for MySQL: this says what the daemon itself knows. */
		xasprintf(&text, "{\"status\":\"%s\",\"connections\":%zu%s%s%s}",
		    ws->stopping ? "stopping" : "ok", conns_count(ws->conns),
		    ws->redis != NULL ? ",\"redis\":\"" : "",
		    ws->redis != NULL ? redis_state(ws->redis) : "", ws->redis != NULL ? "\"" : "");
		rc = loop_http_answer(wsi, ws->stopping ? HTTP_STATUS_SERVICE_UNAVAILABLE :
		    HTTP_STATUS_OK, "application/json", text);
		free(text);
		return rc;
	}
	if (strcmp(uri, "/metrics") != 0)
		return loop_http_error(wsi, HTTP_STATUS_NOT_FOUND, "not_found", "no such route");
	if (!loop_http_authorized(ws, wsi))
		return loop_http_error(wsi, HTTP_STATUS_UNAUTHORIZED, "unauthorized",
		    "a valid token is required (Authorization: Bearer)");
	extra = loop_metrics_extra(ws);
	text = metrics_render(&ws->metrics, "parley_ws", extra);
	free(extra);
	rc = loop_http_answer(wsi, HTTP_STATUS_OK, "text/plain; version=0.0.4", text);
	free(text);
	return rc;
}

/*
 * lws closes a connection without a close frame for a control frame longer than 125 bytes (it
 * gives every other protocol error a reason). Give the close a 1002 when nothing chose a reason:
 * neither the loop (c is not closing), nor lws, nor the peer (still connected: a peek does not
 * see its end of stream).
 */
static void
loop_protocol_close(struct ws *ws, struct conn *c, struct lws *wsi)
{
	char b;
	ssize_t n;

	if (!c->registered || c->state == CONN_CLOSING || lws_get_close_length(wsi) != 0)
		return;
	n = recv(lws_get_socket_fd(wsi), &b, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
		return;
	ws->protocol_closed++;
	lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, (unsigned char *)"protocol error", 14);
}

int
ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct ws *ws = lws_context_user(lws_get_context(wsi));
	struct conn *c = user;

	switch (reason) {
	case LWS_CALLBACK_HTTP:
		return loop_http(ws, wsi, in != NULL ? (const char *)in : "");
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		return loop_filter(ws, wsi);
	case LWS_CALLBACK_ESTABLISHED:
		return loop_established(ws, c, wsi);
	case LWS_CALLBACK_RECEIVE:
		loop_receive(ws, c, in, len);
		return 0;
	case LWS_CALLBACK_RECEIVE_PONG:
		if (c != NULL)
			loop_heard(c);
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return loop_writeable(ws, c);
	case LWS_CALLBACK_WS_SERVER_DROP_PROTOCOL:
		if (c != NULL)
			loop_protocol_close(ws, c, wsi);
		/* fall through */
	case LWS_CALLBACK_CLOSED:
		if (c != NULL)
			loop_closed(ws, c);
		return 0;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		loop_drain(ws);
		return 0;
	default:
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}
