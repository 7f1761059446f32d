/* routes.c - the HTTP API of the contract: routing, authentication, validation, handlers. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <json-c/json.h>

#include "auth.h"
#include "chat.h"
#include "config.h"
#include "fcgi.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "park.h"
#include "protocol.h"
#include "routes.h"
#include "store.h"
#include "xmalloc.h"

#define ROUTE_SEGS_MAX		6
#define ROUTE_LIMIT_DEFAULT	100
#define ROUTE_CONV_DEFAULT	50	/* GET /conversations (docs/protocol.md) */
#define ROUTE_POLL_DEFAULT_S	30
#define ROUTE_PRESENCE_MAX	500
#define ROUTE_DEMO		2	/* noauth: no token, and exists only with demo.tokens = yes */

/* Everything a handler needs. */
struct rctx {
	struct fcgi_app		*app;
	const struct config	*cfg;
	struct chat		*chat;
	const struct http_req	*req;
	struct http_resp	*resp;
	struct park_spec	*spec;
	struct auth_identity	 id;
	uint64_t		 num;		/* the {n} of the path */
	const char		*name;		/* the {s} of the path (decoded) */
	int			 park;		/* set: ROUTE_PARK */
};

typedef void (*handler_fn)(struct rctx *);

struct method {
	const char	*method;
	handler_fn	 fn;
};

struct route {
	const char	*pattern[ROUTE_SEGS_MAX];	/* literal, "{n}" number, "{s}" any */
	const char	*allow;
	int		 noauth;	/* 1: no token; ROUTE_DEMO: neither, and only with demo.tokens */
	struct method	 methods[3];
};

static void h_send(struct rctx *);
static void h_poll(struct rctx *);
static void h_long_poll(struct rctx *);
static void h_sync(struct rctx *);
static void h_receipt(struct rctx *);
static void h_receipts_get(struct rctx *);
static void h_typing(struct rctx *);
static void h_conversations(struct rctx *);
static void h_group_create(struct rctx *);
static void h_group_get(struct rctx *);
static void h_group_add(struct rctx *);
static void h_group_remove(struct rctx *);
static void h_history_user(struct rctx *);
static void h_history_group(struct rctx *);
static void h_presence(struct rctx *);
static void h_room_post(struct rctx *);
static void h_room_get(struct rctx *);
static void h_health(struct rctx *);
static void h_metrics(struct rctx *);
static void h_demo_token(struct rctx *);

static const struct route routes[] = {
	{ { "messages" }, "GET, POST", 0, { { "GET", h_poll }, { "POST", h_send } } },
	{ { "messages", "long_poll" }, "GET", 0, { { "GET", h_long_poll } } },
	{ { "messages", "{n}", "receipts" }, "GET", 0, { { "GET", h_receipts_get } } },
	{ { "sync" }, "GET", 0, { { "GET", h_sync } } },
	{ { "receipts" }, "POST", 0, { { "POST", h_receipt } } },
	{ { "typing" }, "POST", 0, { { "POST", h_typing } } },
	{ { "conversations" }, "GET", 0, { { "GET", h_conversations } } },
	{ { "conversations", "{s}", "messages" }, "GET", 0, { { "GET", h_history_user } } },
	{ { "groups" }, "POST", 0, { { "POST", h_group_create } } },
	{ { "groups", "{n}" }, "GET", 0, { { "GET", h_group_get } } },
	{ { "groups", "{n}", "messages" }, "GET", 0, { { "GET", h_history_group } } },
	{ { "groups", "{n}", "members" }, "POST", 0, { { "POST", h_group_add } } },
	{ { "groups", "{n}", "members", "{s}" }, "DELETE", 0, { { "DELETE", h_group_remove } } },
	{ { "presence" }, "GET", 0, { { "GET", h_presence } } },
	{ { "rooms", "{s}", "messages" }, "GET, POST", 0,
	    { { "GET", h_room_get }, { "POST", h_room_post } } },
	{ { "health" }, "GET", 1, { { "GET", h_health } } },
	{ { "metrics" }, "GET", 0, { { "GET", h_metrics } } },
	{ { "demo", "token" }, "POST", ROUTE_DEMO, { { "POST", h_demo_token } } },
};

/* --- answers ------------------------------------------------------------------------------ */

static void
r_json(struct rctx *c, char *json)
{
	http_resp_json(c->resp, 200, json);
}

static void
r_no_content(struct rctx *c)
{
	http_resp_json(c->resp, 204, NULL);
}

/* A failed chat/store call: the contract's status for errno; MySQL trouble is counted. */
static void
r_errno(struct rctx *c, int err)
{
	if (err == EAGAIN || protocol_errno_status(err) == 500)
		metrics_add(&c->app->metrics, M_STORE_ERRORS, 1);
	http_resp_errno(c->resp, err, NULL);
}

/* The answer to a chat call that returned rc: its JSON text (taken over), or errno's error. */
static void
r_result(struct rctx *c, int rc, char *json)
{
	if (rc < 0)
		r_errno(c, errno);
	else
		r_json(c, json);
}

/* The answer to a chat call that returned rc and has nothing to say: 204, or errno's error. */
static void
r_done(struct rctx *c, int rc)
{
	if (rc < 0)
		r_errno(c, errno);
	else
		r_no_content(c);
}

/* --- input ------------------------------------------------------------------------------- */

/* The body as a JSON object, or a 400 answer and NULL. Caller puts the object. */
static struct json_object *
body_object(struct rctx *c)
{
	struct json_object *obj;

	if (c->req->body == NULL) {
		http_resp_bad_field(c->resp, "body", "a JSON object is required");
		return NULL;
	}
	/* The same strict parser as WebSocket frames: one JSON value, nothing after it but space. */
	if ((obj = protocol_parse_json(c->req->body, c->req->body_len)) == NULL) {
		http_resp_bad_field(c->resp, "body", "not valid JSON");
		return NULL;
	}
	if (!json_object_is_type(obj, json_type_object)) {
		json_object_put(obj);
		http_resp_bad_field(c->resp, "body", "must be a JSON object");
		return NULL;
	}
	return obj;
}

/*
 * What a body decoder returned (rc) for obj, which is put here: 0, or -1 after a 400 answer
 * naming the field it refused.
 */
static int
body_decoded(struct rctx *c, struct json_object *obj, int rc, const char *field, const char *why)
{
	json_object_put(obj);
	if (rc < 0) {
		http_resp_bad_field(c->resp, field, why);
		return -1;
	}
	return 0;
}

/* The {s} of a rooms path must be a room name: 0, or -1 after a 400 answer. */
static int
path_room(struct rctx *c)
{
	if (!protocol_valid_room(c->name)) {
		http_resp_bad_field(c->resp, "room", "not a valid room name");
		return -1;
	}
	return 0;
}

/*
 * An unsigned query parameter in [min,max]; dflt when absent. 0 on success, -1 after a 400
 * answer naming it.
 */
static int
query_u64(struct rctx *c, const char *key, uint64_t min, uint64_t max, uint64_t dflt,
    uint64_t *out, int *present)
{
	char *v, why[80];
	int rc;

	if (present != NULL)
		*present = 0;
	rc = http_query_get(c->req->query, key, &v);
	if (rc == 0) {
		*out = dflt;
		return 0;
	}
	if (rc < 0 || protocol_parse_u64(v, min, max, out) < 0) {
		snprintf(why, sizeof why, "must be an integer from %" PRIu64 " to %" PRIu64, min, max);
		http_resp_bad_field(c->resp, key, why);
		free(v);
		return -1;
	}
	free(v);
	if (present != NULL)
		*present = 1;
	return 0;
}

static int
query_after(struct rctx *c, uint64_t *after, int *present)
{
	return query_u64(c, "after", 0, (uint64_t)INT64_MAX, 0, after, present);
}

static int
query_limit(struct rctx *c, int dflt, int *limit)
{
	uint64_t v;
	int max = c->cfg->page_max;

	if (query_u64(c, "limit", 1, (uint64_t)max, (uint64_t)(dflt < max ? dflt : max), &v,
	    NULL) < 0)
		return -1;
	*limit = (int)v;
	return 0;
}

static int
query_timeout(struct rctx *c, int dflt, int *timeout)
{
	uint64_t v;
	int max = c->cfg->poll_timeout_max;

	if (query_u64(c, "timeout", 0, (uint64_t)max, (uint64_t)(dflt < max ? dflt : max), &v,
	    NULL) < 0)
		return -1;
	*timeout = (int)v;
	return 0;
}

/* Ask to park this request (a long poll with nothing to answer yet). */
static void
park_it(struct rctx *c, enum park_kind kind, const char *key, uint64_t after, int limit,
    int timeout)
{
	memset(c->spec, 0, sizeof *c->spec);
	c->spec->kind = kind;
	snprintf(c->spec->key, sizeof c->spec->key, "%s", key);
	/* Whose poll, from which device (the token's dev claim): a newer one replaces it. */
	snprintf(c->spec->user, sizeof c->spec->user, "%s", c->id.user);
	snprintf(c->spec->device, sizeof c->spec->device, "%s", c->id.device);
	c->spec->after = after;
	c->spec->limit = limit;
	c->spec->timeout_s = timeout;
	c->park = 1;
}

/* --- handlers ---------------------------------------------------------------------------- */

static void
h_send(struct rctx *c)
{
	struct json_object *obj;
	struct proto_send req;
	struct store_send_res res;
	const char *field = NULL, *why = NULL;
	char *json;
	size_t i;
	int rc;

	if ((obj = body_object(c)) == NULL)
		return;
	rc = protocol_decode_send(obj, c->cfg->content_max_chars, &req, &field, &why);
	if (body_decoded(c, obj, rc, field, why) < 0)
		return;
	memset(&res, 0, sizeof res);
	if (chat_send(c->chat, c->id.user, &req, &res) < 0) {
		r_errno(c, errno);
		protocol_send_clear(&req);
		return;
	}
	metrics_add(&c->app->metrics, res.duplicate ? M_MESSAGES_DUPLICATE : M_MESSAGES_SENT, 1);
	/* Waiters in this process need not wait for the bus to carry our own hint back. */
	for (i = 0; i < res.targets.n; i++)
		park_notify(c->app->park, res.targets.v[i].user, res.targets.v[i].seq);
	xasprintf(&json, "{\"server_msg_id\":%" PRIu64 ",\"seq\":%" PRIu64 ",\"duplicate\":%s}",
	    res.server_msg_id, res.seq, res.duplicate ? "true" : "false");
	r_json(c, json);
	store_send_res_clear(&res);
	protocol_send_clear(&req);
}

static void
h_poll(struct rctx *c)
{
	uint64_t after;
	size_t n;
	char *json = NULL;
	int rc, limit;

	if (query_after(c, &after, NULL) < 0 || query_limit(c, ROUTE_LIMIT_DEFAULT, &limit) < 0)
		return;
	rc = chat_events_json(c->chat, c->id.user, after, limit, 0, &json, &n);
	r_result(c, rc, json);
}

static void
h_long_poll(struct rctx *c)
{
	uint64_t after;
	size_t n;
	char *json = NULL;
	int rc, limit, timeout;

	if (query_after(c, &after, NULL) < 0 || query_limit(c, ROUTE_LIMIT_DEFAULT, &limit) < 0 ||
	    query_timeout(c, ROUTE_POLL_DEFAULT_S, &timeout) < 0)
		return;
	if (timeout > 0) {
		/* The park registers the waiter before it reads MySQL (no lost wake-up). */
		park_it(c, PARK_EVENTS, c->id.user, after, limit, timeout);
		return;
	}
	rc = chat_events_json(c->chat, c->id.user, after, limit, 0, &json, &n);
	r_result(c, rc, json);
}

static void
h_sync(struct rctx *c)
{
	uint64_t after;
	size_t n;
	char *device = NULL, *json = NULL;
	int limit, timeout, given, rc;

	rc = http_query_get(c->req->query, "device_id", &device);
	if (rc == 0 && c->id.device[0] != '\0') {
		device = xstrdup(c->id.device);
		rc = 1;
	}
	if (rc <= 0 || !protocol_valid_id(device)) {
		http_resp_bad_field(c->resp, "device_id",
		    rc == 0 ? "required (or a token with a dev claim)" : "not a valid device id");
		goto out;
	}
	if (query_after(c, &after, &given) < 0 || query_limit(c, ROUTE_LIMIT_DEFAULT, &limit) < 0 ||
	    query_timeout(c, 0, &timeout) < 0)
		goto out;
	/* The client says it has everything up to after: that is where this device resumes. */
	if (given)
		rc = store_cursor_set(c->chat->store, c->id.user, device, after);
	else
		rc = store_cursor_get(c->chat->store, c->id.user, device, &after);
	if (rc < 0) {
		r_errno(c, errno);
		goto out;
	}
	if (timeout > 0) {
		park_it(c, PARK_SYNC, c->id.user, after, limit, timeout);
		snprintf(c->spec->device, sizeof c->spec->device, "%s", device);
		goto out;
	}
	rc = chat_events_json(c->chat, c->id.user, after, limit, 1, &json, &n);
	r_result(c, rc, json);
out:
	free(device);
}

static void
h_receipt(struct rctx *c)
{
	struct json_object *obj;
	struct proto_receipt_req req;
	const char *field = NULL, *why = NULL;
	int rc;

	if ((obj = body_object(c)) == NULL)
		return;
	rc = protocol_decode_receipt(obj, &req, &field, &why);
	if (body_decoded(c, obj, rc, field, why) < 0)
		return;
	r_done(c, chat_receipt(c->chat, c->id.user, &req));
}

static void
h_receipts_get(struct rctx *c)
{
	char *json = NULL;
	int rc;

	rc = chat_receipts_json(c->chat, c->id.user, c->num, &json);
	r_result(c, rc, json);
}

static void
h_typing(struct rctx *c)
{
	struct json_object *obj;
	struct proto_target t;
	const char *field = NULL, *why = NULL;
	int rc;

	if ((obj = body_object(c)) == NULL)
		return;
	rc = protocol_decode_target(obj, &t, &field, &why);
	if (body_decoded(c, obj, rc, field, why) < 0)
		return;
	r_done(c, chat_typing(c->chat, c->id.user, &t));
	protocol_target_clear(&t);
}

static void
h_conversations(struct rctx *c)
{
	char *json = NULL;
	int rc, limit;

	if (query_limit(c, ROUTE_CONV_DEFAULT, &limit) < 0)
		return;
	rc = chat_conversations_json(c->chat, c->id.user, limit, &json);
	r_result(c, rc, json);
}

static void
h_group_create(struct rctx *c)
{
	struct json_object *obj;
	struct proto_group_create req;
	const char *field = NULL, *why = NULL;
	uint64_t gid;
	char *json;
	int rc;

	if ((obj = body_object(c)) == NULL)
		return;
	rc = protocol_decode_group_create(obj, &req, &field, &why);
	if (body_decoded(c, obj, rc, field, why) < 0)
		return;
	if (chat_group_create(c->chat, c->id.user, &req, &gid) < 0)
		r_errno(c, errno);
	else {
		xasprintf(&json, "{\"group_id\":%" PRIu64 "}", gid);
		r_json(c, json);
	}
	protocol_group_create_clear(&req);
}

static void
h_group_get(struct rctx *c)
{
	char *json = NULL;
	int rc;

	rc = chat_group_json(c->chat, c->id.user, c->num, &json);
	r_result(c, rc, json);
}

static void
h_group_add(struct rctx *c)
{
	struct json_object *obj;
	const char *field = NULL, *why = NULL;
	char *user = NULL;
	int rc;

	if ((obj = body_object(c)) == NULL)
		return;
	rc = protocol_decode_user_field(obj, &user, &field, &why);
	if (body_decoded(c, obj, rc, field, why) < 0)
		return;
	r_done(c, chat_group_add(c->chat, c->id.user, c->num, user));
	free(user);
}

static void
h_group_remove(struct rctx *c)
{
	if (!protocol_valid_user(c->name)) {
		http_resp_bad_field(c->resp, "user", "not a valid user id");
		return;
	}
	r_done(c, chat_group_remove(c->chat, c->id.user, c->num, c->name));
}

/* A history page of h (its with or group_id set): before and limit from the query. */
static void
history(struct rctx *c, struct proto_history *h)
{
	uint64_t v;
	char *json = NULL;
	int rc, max = c->cfg->history_max, dflt = PROTO_HISTORY_LIMIT_DEFAULT;

	if (query_u64(c, "before", 1, (uint64_t)INT64_MAX, 0, &h->before, NULL) < 0 ||
	    query_u64(c, "limit", 1, (uint64_t)max, (uint64_t)(dflt < max ? dflt : max), &v,
	    NULL) < 0)
		return;
	h->limit = (int)v;
	rc = chat_history_json(c->chat, c->id.user, h, 0, &json);
	r_result(c, rc, json);
}

static void
h_history_user(struct rctx *c)
{
	struct proto_history h = { 0 };

	if (!protocol_valid_user(c->name)) {
		http_resp_bad_field(c->resp, "user", "not a valid user id");
		return;
	}
	h.with = (char *)c->name;	/* borrowed: never cleared */
	history(c, &h);
}

static void
h_history_group(struct rctx *c)
{
	struct proto_history h = { 0 };

	h.group_id = c->num;
	history(c, &h);
}

static void
h_presence(struct rctx *c)
{
	char *users = NULL, **v = NULL, *p, *comma, *json = NULL;
	size_t n = 0, i;
	int rc;

	rc = http_query_get(c->req->query, "users", &users);
	if (rc <= 0 || *users == '\0') {
		http_resp_bad_field(c->resp, "users", rc < 0 ? "badly encoded" :
		    "required: a comma-separated list of user ids");
		goto out;
	}
	v = xcalloc(ROUTE_PRESENCE_MAX, sizeof *v);
	for (p = users; p != NULL; p = comma) {
		if ((comma = strchr(p, ',')) != NULL)
			*comma++ = '\0';
		if (!protocol_valid_user(p)) {
			http_resp_bad_field(c->resp, "users", "contains an invalid user id");
			goto out;
		}
		for (i = 0; i < n && strcmp(v[i], p) != 0; i++)
			;
		if (i < n)
			continue;
		if (n == ROUTE_PRESENCE_MAX) {
			http_resp_bad_field(c->resp, "users", "at most 500 users");
			goto out;
		}
		v[n++] = p;
	}
	rc = chat_presence_json(c->chat, v, n, &json);
	r_result(c, rc, json);
out:
	free(v);
	free(users);
}

static void
h_room_post(struct rctx *c)
{
	struct json_object *obj;
	const char *field = NULL, *why = NULL;
	char *text = NULL, *event = NULL;
	int rc;

	if (path_room(c) < 0 || (obj = body_object(c)) == NULL)
		return;
	rc = protocol_decode_room_text(obj, c->cfg->room_text_max_chars, &text, &field, &why);
	if (body_decoded(c, obj, rc, field, why) < 0)
		return;
	rc = chat_room_post(c->chat, c->id.user, c->name, text, &event);
	r_result(c, rc, event);
	free(text);
}

static void
h_room_get(struct rctx *c)
{
	uint64_t after;
	size_t n;
	char *json = NULL;
	int rc, limit, timeout;

	if (path_room(c) < 0 || query_after(c, &after, NULL) < 0 ||
	    query_limit(c, c->cfg->room_history, &limit) < 0 || query_timeout(c, 0, &timeout) < 0)
		return;
	if (timeout > 0) {
		park_it(c, PARK_ROOM, c->name, after, limit, timeout);
		return;
	}
	rc = chat_room_history_json(c->chat, c->name, after, limit, &json, &n);
	r_result(c, rc, json);
}

static void
h_health(struct rctx *c)
{
	char *json = NULL;

	if (chat_health_json(c->chat, &json) < 0) {
		if (json == NULL) {
			r_errno(c, EAGAIN);
			return;
		}
		http_resp_json(c->resp, 503, json);
		c->resp->retry_after = 1;
		return;
	}
	r_json(c, json);
}

static void
h_metrics(struct rctx *c)
{
	char *extra = park_metrics(c->app->park, "parley_fcgi");
	char *text = metrics_render(&c->app->metrics, "parley_fcgi", extra);

	free(extra);
	http_resp_json(c->resp, 200, text);
	c->resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

/*
 * POST /demo/token {"user":"alice","device":"web-1"}: a token for anyone who asks, so that the
 * demo web app can sign in without a login system. Only with demo.tokens = yes (scripts/demo);
 * otherwise the route does not exist at all (404 not_found, as any unknown path).
 */
static void
h_demo_token(struct rctx *c)
{
	struct json_object *obj, *v;
	const char *user = NULL, *device = NULL;
	char *tok, *json;

	if ((obj = body_object(c)) == NULL)
		return;
	if (!json_object_object_get_ex(obj, "user", &v) || !json_object_is_type(v, json_type_string) ||
	    !protocol_valid_user(user = json_object_get_string(v))) {
		json_object_put(obj);
		http_resp_bad_field(c->resp, "user", "a user id of 1-64 characters [A-Za-z0-9_.@+-] is required");
		return;
	}
	if (json_object_object_get_ex(obj, "device", &v) && v != NULL &&
	    (!json_object_is_type(v, json_type_string) ||
	    !protocol_valid_id(device = json_object_get_string(v)))) {
		json_object_put(obj);
		http_resp_bad_field(c->resp, "device", "not a valid device id");
		return;
	}
	tok = auth_mint(c->cfg->jwt_secret, user, device, (int64_t)time(NULL), c->cfg->token_ttl);
	if (tok == NULL) {
		json_object_put(obj);
		r_errno(c, EIO);
		return;
	}
	xasprintf(&json, "{\"token\":\"%s\",\"user\":\"%s\",\"expires_in\":%d}", tok, user,
	    c->cfg->token_ttl);
	log_info("demo token issued for %s", user);
	free(tok);
	json_object_put(obj);
	r_json(c, json);
}

/* --- routing ----------------------------------------------------------------------------- */

/* Does the route match the segments? Fills c->num / c->name from its placeholders. */
static int
route_match(const struct route *r, char **segs, size_t n, struct rctx *c)
{
	size_t i;
	uint64_t v;

	for (i = 0; i < ROUTE_SEGS_MAX && r->pattern[i] != NULL; i++) {
		if (i >= n)
			return 0;
		if (strcmp(r->pattern[i], "{n}") == 0) {
			if (protocol_parse_u64(segs[i], 1, (uint64_t)INT64_MAX, &v) < 0)
				return 0;
			c->num = v;
		} else if (strcmp(r->pattern[i], "{s}") == 0)
			c->name = segs[i];
		else if (strcmp(r->pattern[i], segs[i]) != 0)
			return 0;
	}
	return i == n;
}

/* Authorization: Bearer <jwt>. 0 and c->id, or -1 after a 401 answer. */
static int
authenticate(struct rctx *c)
{
	const char *h = c->req->authorization, *why = "missing bearer token";

	if (h != NULL && strncasecmp(h, "Bearer ", 7) == 0) {
		h += 7;
		while (*h == ' ')
			h++;
		if (auth_verify(h, c->cfg->jwt_secret, c->cfg->jwt_leeway, (int64_t)time(NULL),
		    &c->id, &why) == 0)
			return 0;
	}
	http_resp_error(c->resp, 401, "unauthorized", why);
	return -1;
}

enum route_result
routes_handle(struct fcgi_app *app, struct chat *chat, const struct http_req *req,
    struct http_resp *resp, struct park_spec *spec)
{
	struct rctx c;
	const struct route *r = NULL;
	char *segs[ROUTE_SEGS_MAX];
	size_t nsegs = 0, i, j;

	memset(&c, 0, sizeof c);
	c.app = app;
	c.cfg = &app->cfg;
	c.chat = chat;
	c.req = req;
	c.resp = resp;
	c.spec = spec;
	memset(resp, 0, sizeof *resp);

	if (http_path_split(req->path, segs, ROUTE_SEGS_MAX, &nsegs) == 0) {
		for (i = 0; i < PARLEY_NITEMS(routes); i++) {
			if ((routes[i].noauth != ROUTE_DEMO || c.cfg->demo_tokens) &&
			    route_match(&routes[i], segs, nsegs, &c)) {
				r = &routes[i];
				break;
			}
		}
	}
	if (r == NULL) {
		http_resp_error(resp, 404, "not_found", "no such route");
		goto out;
	}
	for (j = 0; j < PARLEY_NITEMS(r->methods) && r->methods[j].method != NULL; j++) {
		if (strcmp(r->methods[j].method, req->method) == 0)
			break;
	}
	if (j == PARLEY_NITEMS(r->methods) || r->methods[j].method == NULL) {
		http_resp_error(resp, 405, "method_not_allowed", "method not allowed here");
		resp->allow = r->allow;
		goto out;
	}
	if (!r->noauth && authenticate(&c) < 0)
		goto out;
	if (req->too_large) {
		http_resp_error(resp, 413, "payload_too_large", "the body is over the size limit");
		goto out;
	}
	if (req->bad_length) {
		http_resp_bad_field(resp, "Content-Length", "not a number");
		goto out;
	}
	r->methods[j].fn(&c);
out:
	for (i = 0; i < nsegs; i++)
		free(segs[i]);
	return c.park ? ROUTE_PARK : ROUTE_ANSWER;
}
