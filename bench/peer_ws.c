/* peer_ws.c - bench_ws's peer: the least a parley.v1 WebSocket relay costs on the same libwebsockets. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <json-c/json.h>
#include <libwebsockets.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "parley.h"
#include "protocol.h"
#include "xmalloc.h"

/*
 * What parley-ws does for bench_ws, minus storage: upgrades on /ws with subprotocol parley.v1, the
 * URL token (?access_token=) verified with auth_verify() as parley-ws does, a "ready" frame of the
 * same shape (last_seq 0), and for each send_message frame (decoded by protocol_decode_frame())
 * a new_message event to the recipient's connections and a success ack to the sender, at once.
 * No MySQL, no memcached, no actors, no bus: one thread, lws in a libev (epoll) loop. The lws
 * context is set up as parley-ws's (ws/main.c): same rx buffer, tx packet size, retry policy
 * (lws's validity timers off), timeouts and options, from the same configuration file. Unlike
 * parley-ws it sends no pings and drops no idle connection. Sequence numbers and message
 * ids are counters in memory; a message to a user with no connection is acked and dropped.
 */

#define PEER_RX_BUFFER	1024		/* as WS_RX_BUFFER in ws/main.c */

/* One outbound text frame with lws's headroom in front. */
struct pframe {
	struct pframe	*next;
	size_t		 len;
	unsigned char	 buf[];		/* LWS_PRE + len */
};

struct puser;

/* A connection: lws's per-session user space (zeroed by lws). */
struct pconn {
	struct lws	*wsi;
	struct puser	*user;		/* NULL until the token is verified */
	struct pconn	*unext;		/* the user's connections */
	struct pframe	*qhead, *qtail;
	size_t		 qbytes, qframes;
	char		*rxbuf;		/* fragment reassembly, NULL unless in use */
	size_t		 rxlen;
	int		 closing;
};

struct puser {
	struct puser	*next;		/* hash chain */
	struct pconn	*head;
	uint64_t	 seq;
	char		 name[PARLEY_ID_MAX + 1];
};

struct peer {
	const struct config	*cfg;
	struct lws_context	*ctx;
	struct ev_loop		*loop;
	void			*foreign_loops[1];
	struct lws_protocols	 protocols[2];
	lws_retry_bo_t		 retry;
	struct puser		**users;	/* hash table, ws.max_connections buckets or more */
	size_t			 umask;
	uint64_t		 msg_id;
};

static void
usage(void)
{
	fprintf(stderr, "usage: peer_ws --config FILE [--port PORT]\n");
	exit(2);
}

static struct puser **
peer_bucket(struct peer *p, const char *name)
{
	uint32_t h = 2166136261u;

	for (; *name != '\0'; name++)
		h = (h ^ (unsigned char)*name) * 16777619u;
	return &p->users[h & p->umask];
}

static struct puser *
peer_user(struct peer *p, const char *name)
{
	struct puser *u;

	for (u = *peer_bucket(p, name); u != NULL; u = u->next) {
		if (strcmp(u->name, name) == 0)
			return u;
	}
	return NULL;
}

/* Attach c to the user name (creating the entry). */
static void
peer_attach(struct peer *p, struct pconn *c, const char *name)
{
	struct puser **b, *u;

	if ((u = peer_user(p, name)) == NULL) {
		b = peer_bucket(p, name);
		u = xcalloc(1, sizeof *u);
		snprintf(u->name, sizeof u->name, "%s", name);
		u->next = *b;
		*b = u;
	}
	c->user = u;
	c->unext = u->head;
	u->head = c;
}

/* Forget c: off its user (freed with its last connection), its buffers freed. */
static void
peer_detach(struct peer *p, struct pconn *c)
{
	struct pconn **cp;
	struct puser **up, *u = c->user;
	struct pframe *f;

	while ((f = c->qhead) != NULL) {
		c->qhead = f->next;
		free(f);
	}
	c->qtail = NULL;
	free(c->rxbuf);
	c->rxbuf = NULL;
	if (u == NULL)
		return;
	for (cp = &u->head; *cp != NULL; cp = &(*cp)->unext) {
		if (*cp == c) {
			*cp = c->unext;
			break;
		}
	}
	c->user = NULL;
	if (u->head != NULL)
		return;
	for (up = peer_bucket(p, u->name); *up != NULL; up = &(*up)->next) {
		if (*up == u) {
			*up = u->next;
			break;
		}
	}
	free(u);
}

/* Queue one text frame (copied) and ask for a writeable callback; a full queue closes c. */
static void
peer_send(struct peer *p, struct pconn *c, const char *text, size_t len)
{
	struct pframe *f;

	if (c->closing)
		return;
	if (c->qbytes + len > p->cfg->ws_queue_bytes ||
	    c->qframes + 1 > (size_t)p->cfg->ws_queue_frames) {
		c->closing = 1;
		lws_callback_on_writable(c->wsi);
		return;
	}
	f = xmalloc(sizeof *f + LWS_PRE + len);
	f->next = NULL;
	f->len = len;
	memcpy(f->buf + LWS_PRE, text, len);
	if (c->qtail != NULL)
		c->qtail->next = f;
	else
		c->qhead = f;
	c->qtail = f;
	c->qbytes += len;
	c->qframes++;
	lws_callback_on_writable(c->wsi);
}

/* An error frame, then close (what parley-ws's loop_fail does). */
static void
peer_fail(struct peer *p, struct pconn *c, const char *code, const char *message)
{
	char *e;

	e = protocol_error_frame(code, message);
	peer_send(p, c, e, strlen(e));
	free(e);
	c->closing = 1;
}

/* The "ready" frame of parley-ws (device id random when the token has none), built the same way. */
static void
peer_ready(struct peer *p, struct pconn *c, const struct auth_identity *id)
{
	struct json_object *o;
	unsigned char r[8];
	char dev[PARLEY_ID_MAX + 1];
	const char *s;
	size_t i;

	if (id->device[0] != '\0')
		snprintf(dev, sizeof dev, "%s", id->device);
	else {
		if (lws_get_random(p->ctx, r, sizeof r) != sizeof r)
			memset(r, 0, sizeof r);
		memcpy(dev, "ws-", 3);
		for (i = 0; i < sizeof r; i++)
			snprintf(dev + 3 + 2 * i, 3, "%02x", r[i]);
	}
	o = json_object_new_object();
	json_object_object_add(o, "type", json_object_new_string("ready"));
	json_object_object_add(o, "user", json_object_new_string(c->user->name));
	json_object_object_add(o, "device_id", json_object_new_string(dev));
	json_object_object_add(o, "last_seq", json_object_new_uint64(0));
	s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
	    JSON_C_TO_STRING_NOSLASHESCAPE);
	peer_send(p, c, s, strlen(s));
	json_object_put(o);
}

/* The upgrade is done: verify the URL token, attach the user, answer "ready". */
static int
peer_established(struct peer *p, struct pconn *c, struct lws *wsi)
{
	struct auth_identity id;
	const char *token, *why = "invalid token";
	char buf[2048];

	c->wsi = wsi;
	if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS) <= 0 ||
	    (token = lws_get_urlarg_by_name(wsi, "access_token=", buf, sizeof buf)) == NULL) {
		peer_fail(p, c, "unauthorized", "peer: only ?access_token= is taken");
		return 0;
	}
	if (auth_verify(token, p->cfg->jwt_secret, p->cfg->jwt_leeway, parley_now_ms() / 1000,
	    &id, &why) != 0) {
		peer_fail(p, c, "unauthorized", why);
		return 0;
	}
	peer_attach(p, c, id.user);
	peer_ready(p, c, &id);
	return 0;
}

/* A 1:1 send: new_message to every connection of the recipient, then the sender's ack. */
static void
peer_relay(struct peer *p, struct pconn *c, const struct proto_send *s)
{
	struct proto_message m;
	struct puser *to;
	struct pconn *rc;
	char *ev, *ack;

	if (s->to == NULL) {
		ack = protocol_ack_error(s->client_msg_id, "bad_request", "peer: 1:1 messages only");
		peer_send(p, c, ack, strlen(ack));
		free(ack);
		return;
	}
	memset(&m, 0, sizeof m);
	m.id = ++p->msg_id;
	m.from = c->user->name;
	m.to = s->to;
	m.content = s->content;
	m.client_msg_id = s->client_msg_id;
	m.ts = parley_now_ms();
	if ((to = peer_user(p, s->to)) != NULL) {
		ev = protocol_event_new_message(++to->seq, &m);
		for (rc = to->head; rc != NULL; rc = rc->unext)
			peer_send(p, rc, ev, strlen(ev));
		free(ev);
	}
	ack = protocol_ack_ok(s->client_msg_id, m.id, ++c->user->seq, 0);
	peer_send(p, c, ack, strlen(ack));
	free(ack);
}

/* One whole text message of an authenticated connection: send_message and ping; the rest is ignored. */
static void
peer_message(struct peer *p, struct pconn *c, const char *buf, size_t len)
{
	struct proto_frame_req r;
	const char *field = "json", *why = "invalid";
	char *cmid = NULL, *e, *msg;

	if (c->user == NULL || c->closing)
		return;
	if (protocol_decode_frame(buf, len, p->cfg->content_max_chars,
	    p->cfg->room_text_max_chars, &r, &field, &why, &cmid) != 0) {
		xasprintf(&msg, "%s: %s", field, why);
		if (cmid != NULL)
			e = protocol_ack_error(cmid, "bad_request", msg);
		else
			e = protocol_error_frame("bad_request", msg);
		peer_send(p, c, e, strlen(e));
		free(e);
		free(msg);
		free(cmid);
		return;
	}
	if (r.type == PROTO_F_SEND)
		peer_relay(p, c, &r.send);
	else if (r.type == PROTO_F_PING)
		peer_send(p, c, "{\"type\":\"pong\"}", 15);
	protocol_frame_clear(&r);
}

/* Reassemble fragments up to ws.max_message; an unfragmented frame is used in place. */
static void
peer_receive(struct peer *p, struct pconn *c, const char *in, size_t len)
{
	size_t remaining = lws_remaining_packet_payload(c->wsi);
	int final = lws_is_final_fragment(c->wsi);

	if (c->closing)
		return;
	if (c->rxlen + len + remaining > p->cfg->ws_max_message) {
		peer_fail(p, c, "payload_too_large", "message too large");
		return;
	}
	if (c->rxlen == 0 && final) {
		peer_message(p, c, in, len);
		return;
	}
	c->rxbuf = xrealloc(c->rxbuf, c->rxlen + len + 1);
	memcpy(c->rxbuf + c->rxlen, in, len);
	c->rxlen += len;
	if (!final)
		return;
	peer_message(p, c, c->rxbuf, c->rxlen);
	free(c->rxbuf);
	c->rxbuf = NULL;
	c->rxlen = 0;
}

/* One queued frame per writeable callback, as parley-ws; a closing connection closes once drained. */
static int
peer_writeable(struct pconn *c)
{
	struct pframe *f;
	int n;

	if ((f = c->qhead) == NULL) {
		if (c->closing) {
			lws_close_reason(c->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION,
			    (unsigned char *)"closed", 6);
			return -1;
		}
		return 0;
	}
	if ((c->qhead = f->next) == NULL)
		c->qtail = NULL;
	c->qbytes -= f->len;
	c->qframes--;
	n = lws_write(c->wsi, f->buf + LWS_PRE, f->len, LWS_WRITE_TEXT);
	free(f);
	if (n < 0)
		return -1;
	if (c->qhead != NULL || c->closing)
		lws_callback_on_writable(c->wsi);
	return 0;
}

/* Only /ws is upgraded (parley-ws answers other paths with a 404 too). */
static int
peer_filter(struct lws *wsi)
{
	char path[64];

	if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) < 0 ||
	    (strcmp(path, "/ws") != 0 && strcmp(path, "/ws/") != 0))
		return -1;
	return 0;
}

static int
peer_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct peer *p = lws_context_user(lws_get_context(wsi));
	struct pconn *c = user;

	switch (reason) {
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		return peer_filter(wsi);
	case LWS_CALLBACK_ESTABLISHED:
		return peer_established(p, c, wsi);
	case LWS_CALLBACK_RECEIVE:
		peer_receive(p, c, in, len);
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return peer_writeable(c);
	case LWS_CALLBACK_CLOSED:
	case LWS_CALLBACK_WS_SERVER_DROP_PROTOCOL:
		if (c != NULL)
			peer_detach(p, c);
		return 0;
	default:
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}

/* The lws context of parley-ws (ws/main.c ws_context), with the peer's callback. */
static struct lws_context *
peer_context(struct peer *p, int port)
{
	struct lws_context_creation_info info;
	const struct config *cfg = p->cfg;

	memset(p->protocols, 0, sizeof p->protocols);
	p->protocols[0].name = "parley.v1";
	p->protocols[0].callback = peer_callback;
	p->protocols[0].per_session_data_size = sizeof(struct pconn);
	p->protocols[0].rx_buffer_size = PEER_RX_BUFFER;
	p->protocols[0].tx_packet_size = cfg->ws_max_message + 1024;

	/* lws's validity timers off, as in parley-ws; the peer sends no heartbeat of its own. */
	memset(&p->retry, 0, sizeof p->retry);

	memset(&info, 0, sizeof info);
	info.port = port;
	info.iface = cfg->ws_listen;
	info.protocols = p->protocols;
	info.user = p;
	info.count_threads = 1;
	info.retry_and_idle_policy = &p->retry;
	info.timeout_secs = 10;
	info.gid = -1;
	info.uid = -1;
	info.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND |
	    LWS_SERVER_OPTION_LIBEV;
	info.foreign_loops = p->foreign_loops;
	if (strchr(cfg->ws_listen, ':') == NULL)
		info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
	return lws_create_context(&info);
}

/* SIGTERM/SIGINT: leave the loop; main destroys the context. */
static void
peer_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	ev_break(loop, EVBREAK_ALL);
}

int
main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "config", required_argument, NULL, 'c' }, { "port", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 }
	};
	struct config cfg;
	struct peer p;
	ev_signal sigterm, sigint;
	const char *arg = NULL, *path;
	char *cause = NULL;
	struct puser *u, *un;
	int opt, port = 0;
	size_t i;

	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'c': arg = optarg; break;
		case 'p': port = atoi(optarg); break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();
	log_init("peer_ws", LOG_LEVEL_WARN, 0);
	if ((path = config_path(arg)) == NULL)
		usage();
	if (config_load(&cfg, path, &cause) != 0 || config_validate(&cfg, &cause) != 0)
		fatal("%s", cause);
	lws_set_log_level(LLL_ERR, NULL);
	signal(SIGPIPE, SIG_IGN);

	memset(&p, 0, sizeof p);
	p.cfg = &cfg;
	/*
	 * One bucket per allowed connection or more, written now (malloc, not calloc: untouched
	 * zero pages would be counted when the first users land in them, as memory per connection).
	 */
	for (p.umask = 1023; p.umask + 1 < (size_t)cfg.ws_max_connections; p.umask = 2 * p.umask + 1)
		;
	p.users = xreallocarray(NULL, p.umask + 1, sizeof *p.users);
	for (i = 0; i <= p.umask; i++)
		p.users[i] = NULL;
	if ((p.loop = ev_loop_new(EVFLAG_AUTO)) == NULL)
		fatal("cannot create the event loop");
	p.foreign_loops[0] = p.loop;
	if ((p.ctx = peer_context(&p, port != 0 ? port : cfg.ws_port)) == NULL)
		fatal("cannot listen on %s port %d", cfg.ws_listen, port != 0 ? port : cfg.ws_port);
	ev_signal_init(&sigterm, peer_signal, SIGTERM);
	ev_signal_init(&sigint, peer_signal, SIGINT);
	ev_signal_start(p.loop, &sigterm);
	ev_signal_start(p.loop, &sigint);

	ev_run(p.loop, 0);

	lws_context_destroy(p.ctx);
	ev_loop_destroy(p.loop);
	for (i = 0; i <= p.umask; i++) {
		for (u = p.users[i]; u != NULL; u = un) {
			un = u->next;
			free(u);
		}
	}
	free(p.users);
	config_clear(&cfg);
	return 0;
}
