/* work.c - the blocking half of parley-ws: jobs run by actor workers, each with its own chat. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "actor.h"
#include "chat.h"
#include "config.h"
#include "log.h"
#include "store.h"
#include "ws.h"
#include "xmalloc.h"

/*
 * A worker's context: the daemon and this thread's own MySQL and memcached connections, and what
 * the job being run has for the loop: its frames (acks, errors) and the hints of its commits for
 * this process's connections, handed over together at the end of the job (work_flush).
 */
struct wctx {
	struct ws	*ws;
	struct chat	 chat;
	struct done	*frames, **ftail;
	struct done	*hints, **htail;
};

/*
 * chat's local hint sink: our own connections get the hint through the loop's queue, not through
 * our bus socket and bus reader (the bus carries it to the other processes): the same hint, with
 * no datagram, bus reader wake-up or copy on the way.
 */
static void
work_local_hint(void *arg, enum bus_topic topic, const char *key, uint64_t seq,
    const char *payload, size_t len)
{
	struct wctx *w = arg;
	struct done *d;

	d = ws_done_new(DONE_HINT, 0);
	d->topic = topic;
	d->seq = seq;
	snprintf(d->key, sizeof d->key, "%s", key != NULL ? key : "");
	/*
	 * As the bus would: a payload too long to go inline is left out, and the loop reads the
	 * event (a paced page for a user's log, so a burst of big messages cannot overflow a
	 * client's queue; a fetch for a room comment).
	 */
	if (payload != NULL && len > 0 && len <= BUS_PAYLOAD_MAX) {
		d->text = xmalloc(len + 1);
		memcpy(d->text, payload, len);
		d->text[len] = '\0';
		d->len = len;
	}
	*w->htail = d;
	w->htail = &d->next;
}

/* Hand the job's frames, then its hints, to the loop in one go. */
static void
work_flush(struct wctx *w)
{
	if (w->frames == NULL && w->hints == NULL)
		return;
	ws_done_push_chain(w->ws, w->frames, w->hints);
	w->frames = w->hints = NULL;
	w->ftail = &w->frames;
	w->htail = &w->hints;
}

static void *
work_init(void *arg)
{
	struct wctx *w;

	w = xcalloc(1, sizeof *w);
	w->ws = arg;
	chat_init(&w->chat, w->ws->cfg, w->ws->bus, w->ws->journal);
	w->chat.local = work_local_hint;
	w->chat.local_arg = w;
	w->ftail = &w->frames;
	w->htail = &w->hints;
	return w;
}

static void
work_free(void *ctx)
{
	struct wctx *w = ctx;

	work_flush(w);
	chat_clear(&w->chat);
	free(w);
}

void
ws_job_free(int kind, void *data)
{
	struct job *j = data;

	(void)kind;
	if (j == NULL)
		return;
	protocol_frame_clear(&j->req);
	free(j);
}

/* A message a client may read for an errno of an operation (never internals). */
static const char *
work_errmsg(int err)
{
	switch (err) {
	case EINVAL:
		return "invalid request";
	case EPERM:
		return "not authenticated";
	case EACCES:
		return "not allowed: not a member of that group";
	case ENOENT:
		return "no such message or group";
	case EMSGSIZE:
		return "too large";
	case EBUSY:
		return "too many requests, slow down";
	case EAGAIN:
		return "storage unavailable, retry later";
	default:
		return "internal error";
	}
}

/* One frame for the connection the job came from (handed over by work_flush). */
static void
work_frame(struct wctx *w, const struct job *j, char *text, uint16_t close_code)
{
	struct done *d;

	d = ws_done_new(DONE_FRAME, j->conn);
	d->text = text;
	d->len = strlen(text);
	d->close_code = close_code;
	*w->ftail = d;
	w->ftail = &d->next;
}

static void
work_error(struct wctx *w, const struct job *j, int err)
{
	work_frame(w, j, protocol_error_frame(protocol_errno_code(err), work_errmsg(err)), 0);
}

static void
work_ack(struct wctx *w, const struct job *j, const struct store_send_res *res, int err)
{
	const char *cmid = j->req.send.client_msg_id;

	if (err != 0) {
		work_frame(w, j, protocol_ack_error(cmid, protocol_errno_code(err),
		    work_errmsg(err)), 0);
		return;
	}
	metrics_add(&w->ws->metrics, res->duplicate ? M_MESSAGES_DUPLICATE : M_MESSAGES_SENT, 1);
	work_frame(w, j, protocol_ack_ok(cmid, res->server_msg_id, res->seq, res->duplicate), 0);
}

/*
 * Read a page of the user's log after j->after and hand it to the loop. When after lies before
 * the oldest event kept (retention pruned what the client never got), the page starts with
 * {"type":"reset","oldest_seq":N}: the loop sends it before the events, like any frame without
 * a seq.
 */
static int
work_page(struct wctx *w, const struct job *j, uint64_t after)
{
	struct store_page page;
	struct done *d;
	size_t k = 0;

	memset(&page, 0, sizeof page);
	if (store_events(w->chat.store, j->user, after, w->ws->page_limit, &page) != 0)
		return -1;
	d = ws_done_new(DONE_PAGE, j->conn);
	d->epoch = j->epoch;
	d->seq = after;
	d->last = page.next;
	d->has_more = page.has_more;
	if (page.oldest_seq != 0) {
		d->events = xcalloc(page.n + 1, sizeof *d->events);
		d->events[k++] = protocol_event_reset(page.oldest_seq);
		if (page.n > 0)	/* a log pruned whole has no events: page.events is NULL */
			memcpy(d->events + k, page.events, page.n * sizeof *page.events);
		free(page.events);
	} else
		d->events = page.events;
	d->n = page.n + k;
	page.events = NULL;
	page.n = 0;
	store_page_clear(&page);
	ws_done_push(w->ws, d);
	return 0;
}

/* The answer to an auth job: says whether presence +1 was counted, so the loop pairs its -1. */
static struct done *
work_ready(const struct job *j)
{
	struct done *d;

	d = ws_done_new(DONE_READY, j->conn);
	d->presence = j->presence_done == 1;
	snprintf(d->key, sizeof d->key, "%s", j->user);
	return d;
}

/*
 * Presence +1 (once, even across retries), then the device cursor for "ready" and the user's
 * newest seq: the connection's delivered mark, live from there. The seq is read after the loop
 * attached the connection to its user, so every later event's hint finds the connection.
 */
static int
work_auth(struct wctx *w, struct job *j)
{
	struct done *d;
	uint64_t cursor = 0, last = 0;

	if (!j->presence_done) {
		if (chat_presence(&w->chat, j->user, w->ws->node, j->pconn, 1) == 0)
			j->presence_done = 1;
		else if (errno == EAGAIN)
			return -1;
		else
			j->presence_done = 2;	/* not counted: no -1 may follow */
	}
	if (store_cursor_get(w->chat.store, j->user, j->device, &cursor) != 0 ||
	    store_last_seq(w->chat.store, j->user, &last) != 0)
		return -1;
	d = work_ready(j);
	d->seq = cursor < last ? cursor : last;	/* a cursor stored beyond the log: see work_sync */
	d->last = last;
	ws_done_push(w->ws, d);
	return 0;
}

/*
 * sync: an explicit after becomes the device's cursor (as GET /sync); else the cursor is read.
 * An after beyond the user's newest seq is taken as that seq: the stream and the cursor would
 * otherwise skip every event up to it, and the connection would stop getting live events.
 */
static int
work_sync(struct wctx *w, struct job *j)
{
	uint64_t after = j->after, last = 0;
	int store = j->has_after;

	if (!j->has_after && store_cursor_get(w->chat.store, j->user, j->device, &after) != 0)
		return -1;
	if (store_last_seq(w->chat.store, j->user, &last) != 0)
		return -1;
	if (after > last) {
		after = last;
		store = 1;
	}
	if (store && store_cursor_set(w->chat.store, j->user, j->device, after) != 0)
		return -1;
	/* A retry after a failed read must not set the cursor again from a stale default. */
	j->has_after = 1;
	j->after = after;
	return work_page(w, j, after);
}

/* A room read that gave up (MySQL down past the retries): the loop tries again later. */
static void
work_room_failed(struct wctx *w, struct job *j, enum done_kind kind, int err)
{
	struct done *d;

	d = ws_done_new(kind, 0);
	strncpy(d->key, j->req.room, PARLEY_ID_MAX);
	d->epoch = j->epoch;
	d->err = err != 0 ? err : EIO;
	ws_done_push(w->ws, d);
}

/*
 * A room event by id, for a hint too large to carry it. A comment trimmed meanwhile is skipped:
 * the next one arrives through its own hint. A read that fails otherwise becomes a DONE_ROOM
 * with err: the loop catches the room up from MySQL.
 */
static int
work_room_fetch(struct wctx *w, struct job *j)
{
	const char *room = j->req.room;
	struct done *d;
	char *event = NULL;

	if (chat_room_comment_json(&w->chat, room, j->after, &event) != 0) {
		if (errno == EAGAIN)
			return -1;
		if (errno != ENOENT)
			work_room_failed(w, j, DONE_ROOM, errno);
		return 0;
	}
	d = ws_done_new(DONE_ROOM, 0);
	strncpy(d->key, room, PARLEY_ID_MAX);
	d->seq = j->after;
	d->text = event;
	d->len = strlen(d->text);
	ws_done_push(w->ws, d);
	return 0;
}

/* A room first joined here: its newest id, the floor its catch-ups start from. */
static int
work_room_base(struct wctx *w, struct job *j)
{
	struct done *d;
	uint64_t id;

	if (store_room_last_id(w->chat.store, j->req.room, &id) != 0) {
		if (errno == EAGAIN)
			return -1;
		work_room_failed(w, j, DONE_ROOM_BASE, errno);
		return 0;
	}
	d = ws_done_new(DONE_ROOM_BASE, 0);
	strncpy(d->key, j->req.room, PARLEY_ID_MAX);
	d->epoch = j->epoch;
	d->seq = id;
	ws_done_push(w->ws, d);
	return 0;
}

/*
 * Lost hints: the room's comments after the floor, one page (room_history, the most a room
 * keeps), oldest first, with their ids; the loop pushes those it has not pushed yet and raises
 * the floor to the page's last id.
 */
static int
work_room_catchup(struct wctx *w, struct job *j)
{
	struct store_page page;
	struct done *d;

	if (store_room_history(w->chat.store, j->req.room, j->after, w->ws->cfg->room_history,
	    &page) != 0) {
		if (errno == EAGAIN)
			return -1;
		work_room_failed(w, j, DONE_ROOM_PAGE, errno);
		return 0;
	}
	d = ws_done_new(DONE_ROOM_PAGE, 0);
	strncpy(d->key, j->req.room, PARLEY_ID_MAX);
	d->epoch = j->epoch;
	d->seq = j->after;
	d->last = page.next;
	d->has_more = page.has_more;
	d->events = page.events;
	d->ids = page.ids;
	d->n = page.n;
	page.events = NULL;
	page.ids = NULL;
	page.n = 0;
	ws_done_push(w->ws, d);
	return 0;
}

static int	work_run_batch(void *, const char *, int, void **, size_t, int *);

/* Run one job. Expected failures become frames here; only EAGAIN goes back for a retry. */
static int
work_run(void *ctx, const char *key, int kind, void *data)
{
	struct wctx *w = ctx;
	struct job *j = data;
	char *ev = NULL;
	int rc;

	(void)key;
	switch (kind) {
	case JOB_AUTH:
		return work_auth(w, j);
	case JOB_SYNC:
		return work_sync(w, j);
	case JOB_FETCH:
		return work_page(w, j, j->after);
	case JOB_SEND:
		/* A batch of one: the same chained transaction as a larger batch (no START). */
		if (work_run_batch(w, key, kind, &data, 1, &rc) != 0)
			return -1;
		if (rc == EAGAIN) {
			errno = EAGAIN;
			return -1;
		}
		return 0;
	case JOB_RECEIPT:
		rc = chat_receipt(&w->chat, j->user, &j->req.receipt);
		break;
	case JOB_TYPING:
		rc = chat_typing(&w->chat, j->user, &j->req.target);
		break;
	case JOB_ROOM_POST:
		rc = chat_room_post(&w->chat, j->user, j->req.room, j->req.text, &ev);
		free(ev);
		break;
	case JOB_PRESENCE_DOWN:
		rc = chat_presence(&w->chat, j->user, w->ws->node, j->pconn, -1);
		break;
	case JOB_ROOM_FETCH:
		return work_room_fetch(w, j);
	case JOB_ROOM_BASE:
		return work_room_base(w, j);
	case JOB_ROOM_CATCHUP:
		return work_room_catchup(w, j);
	case JOB_HISTORY:
		if ((rc = chat_history_json(&w->chat, j->user, &j->req.history, 1, &ev)) == 0)
			work_frame(w, j, ev, 0);
		break;
	default:
		errno = EINVAL;
		return -1;
	}
	if (rc == 0)
		return 0;
	if (errno == EAGAIN)
		return -1;
	if (kind != JOB_PRESENCE_DOWN)
		work_error(w, j, errno);
	return 0;
}

static int
work_dispatch(void *ctx, const char *key, int kind, void *data)
{
	int rc, err;

	rc = work_run(ctx, key, kind, data);
	err = errno;
	work_flush(ctx);
	errno = err;
	return rc;
}

static int
work_batchable(int kind)
{
	return kind == JOB_SEND;
}

/*
 * Group commit: consecutive sends waiting in one send shard's mailbox (several users hash to one
 * shard) go to MySQL in one transaction. Each ack leaves only after that commit; an item that
 * fails gets its own error ack and does not fail the others.
 */
static int
work_run_batch(void *ctx, const char *key, int kind, void **data, size_t n, int *err)
{
	struct wctx *w = ctx;
	struct store_send_req *reqs;
	struct store_send_res *res;
	struct job *j;
	size_t i;
	int rc;

	(void)key;
	(void)kind;
	reqs = xcalloc(n, sizeof *reqs);
	res = xcalloc(n, sizeof *res);
	for (i = 0; i < n; i++) {
		j = data[i];
		chat_send_request(&reqs[i], j->user, &j->req.send);
	}
	/*
	 * A send batch ends with COMMIT AND CHAIN (store.h): the worker's next send batch needs
	 * no START TRANSACTION. Only here: after an auth (a write, then reads) a chain would cost
	 * a COMMIT more, not a START less.
	 */
	store_chain_transactions(w->chat.store, 1);
	metrics_add(&w->ws->metrics, M_WS_SEND_BATCHES, 1);
	rc = chat_send_many(&w->chat, reqs, n, res, err);
	store_chain_transactions(w->chat.store, 0);
	if (rc != 0 && errno == EAGAIN) {
		for (i = 0; i < n; i++)
			store_send_res_clear(&res[i]);
		free(res);
		free(reqs);
		errno = EAGAIN;
		return -1;	/* the whole batch is retried after a backoff, then failed() */
	}
	for (i = 0; i < n; i++) {
		j = data[i];
		if (err[i] == EAGAIN)
			continue;	/* escalated by the pool: failed() answers it */
		work_ack(w, j, &res[i], err[i]);
		err[i] = 0;
		store_send_res_clear(&res[i]);
	}
	free(res);
	free(reqs);
	return 0;
}

static int
work_dispatch_batch(void *ctx, const char *key, int kind, void **data, size_t n, int *err)
{
	int rc, e;

	rc = work_run_batch(ctx, key, kind, data, n, err);
	e = errno;
	work_flush(ctx);
	errno = e;
	return rc;
}

/* Out of retries (MySQL down for longer than the backoff) or a bug: tell the client. */
static void
work_failed(void *ctx, const char *key, int kind, void *data, int err)
{
	struct wctx *w = ctx;
	struct job *j = data;
	struct done *d;

	(void)key;
	switch (kind) {
	case JOB_AUTH:
		d = work_ready(j);
		d->err = err;
		ws_done_push(w->ws, d);
		break;
	case JOB_SYNC:
	case JOB_FETCH:
		d = ws_done_new(DONE_PAGE, j->conn);
		d->epoch = j->epoch;
		d->err = err;
		ws_done_push(w->ws, d);
		break;
	case JOB_SEND:
		work_ack(w, j, NULL, err);
		break;
	case JOB_ROOM_FETCH:	/* the comment is caught up from MySQL instead */
		work_room_failed(w, j, DONE_ROOM, err);
		break;
	case JOB_ROOM_BASE:
		work_room_failed(w, j, DONE_ROOM_BASE, err);
		break;
	case JOB_ROOM_CATCHUP:
		work_room_failed(w, j, DONE_ROOM_PAGE, err);
		break;
	case JOB_PRESENCE_DOWN:
		break;
	default:
		work_error(w, j, err);
		break;
	}
	work_flush(w);
}

const struct actor_ops ws_actor_ops = {
	.worker_init = work_init,
	.worker_free = work_free,
	.dispatch = work_dispatch,
	.batchable = work_batchable,
	.dispatch_batch = work_dispatch_batch,
	.failed = work_failed,
	.free_data = ws_job_free,
};
