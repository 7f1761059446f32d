/* protocol.c - the JSON wire contract (shared/spec/protocol.md): strict decoding, canonical encoding. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "parley.h"
#include "protocol.h"
#include "xmalloc.h"

/* Group names: characters after trimming; members per create request. */
#define PROTO_GROUP_NAME_MAX	100
#define PROTO_GROUP_MEMBERS_MAX	1000

/* Fill the error outputs of a decoder and fail with EINVAL. */
#define PROTO_FAIL(f, w) do {				\
	if (field != NULL)				\
		*field = (f);				\
	if (why != NULL)				\
		*why = (w);				\
	errno = EINVAL;					\
	goto fail;					\
} while (0)

/* --- identifiers and text ------------------------------------------------------------- */

static int
proto_user_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	    c == '_' || c == '.' || c == '@' || c == '+' || c == '-';
}

int
protocol_valid_user(const char *s)
{
	size_t n;

	if (s == NULL)
		return 0;
	for (n = 0; s[n] != '\0'; n++) {
		if (n >= PARLEY_ID_MAX || !proto_user_char((unsigned char)s[n]))
			return 0;
	}
	return n > 0;
}

int
protocol_valid_room(const char *s)
{
	return protocol_valid_user(s);
}

/* Printable ASCII (0x20..0x7e): ids end up in logs, keys and headers, so no controls. */
int
protocol_valid_id(const char *s)
{
	size_t n;

	if (s == NULL)
		return 0;
	for (n = 0; s[n] != '\0'; n++) {
		if (n >= PARLEY_ID_MAX || (unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e)
			return 0;
	}
	return n > 0;
}

/*
 * Decode one code point at s (len bytes left); returns its length, or 0 when the sequence is
 * invalid: truncated, overlong, a surrogate or beyond U+10FFFF.
 */
static size_t
proto_utf8_next(const unsigned char *s, size_t len, uint32_t *cp)
{
	uint32_t c, min;
	size_t n, i;

	c = s[0];
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		c &= 0x1f;
		min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		c &= 0x0f;
		min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		c &= 0x07;
		min = 0x10000;
	} else
		return 0;	/* continuation byte, 0xc0/0xc1 (always overlong) or 0xf5.. */
	if (len < n)
		return 0;
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return n;
}

int
protocol_valid_utf8(const char *buf, size_t len)
{
	const unsigned char *s = (const unsigned char *)buf;
	uint32_t cp;
	size_t i = 0, n;

	while (i < len) {
		if ((n = proto_utf8_next(s + i, len - i, &cp)) == 0)
			return 0;
		i += n;
	}
	return 1;
}

size_t
protocol_utf8_chars(const char *s)
{
	size_t n = 0;

	for (; *s != '\0'; s++) {
		if (((unsigned char)*s & 0xc0) != 0x80)
			n++;
	}
	return n;
}

/* Unicode White_Space plus U+FEFF (what a client author expects a trim to remove). */
static int
proto_space(uint32_t c)
{
	switch (c) {
	case 0x09: case 0x0a: case 0x0b: case 0x0c: case 0x0d: case 0x20: case 0x85: case 0xa0:
	case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f: case 0x3000:
	case 0xfeff:
		return 1;
	}
	return c >= 0x2000 && c <= 0x200a;
}

char *
protocol_trim(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t len = strlen(str), i = 0, n, start, end = 0;
	int seen = 0;
	uint32_t cp;

	start = len;
	while (i < len) {
		if ((n = proto_utf8_next(s + i, len - i, &cp)) == 0) {
			/* Not ours to judge here: an invalid byte counts as content. */
			n = 1;
			cp = 0xfffd;
		}
		if (!proto_space(cp)) {
			if (!seen)
				start = i;
			seen = 1;
			end = i + n;
		}
		i += n;
	}
	if (!seen)
		return xstrdup("");
	return xstrndup(str + start, end - start);
}

/*
 * A text field: a JSON string without NUL, valid UTF-8, trimmed, 1..max characters.
 * Returns the trimmed copy or NULL with *why set.
 */
static char *
proto_text(struct json_object *v, int max_chars, const char **why)
{
	const char *s;
	char *t;
	size_t len, chars;

	if (!json_object_is_type(v, json_type_string)) {
		*why = "must be a string";
		return NULL;
	}
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (strlen(s) != len) {
		*why = "must not contain NUL characters";
		return NULL;
	}
	if (!protocol_valid_utf8(s, len)) {
		*why = "must be valid UTF-8";
		return NULL;
	}
	t = protocol_trim(s);
	chars = protocol_utf8_chars(t);
	if (chars == 0) {
		free(t);
		*why = "must not be empty";
		return NULL;
	}
	if (max_chars < 0 || chars > (size_t)max_chars) {
		free(t);
		*why = "too long";
		return NULL;
	}
	return t;
}

/* A JSON string without NUL that passes valid(); the borrowed C string or NULL with *why. */
static const char *
proto_ident(struct json_object *v, int (*valid)(const char *), const char **why)
{
	const char *s;

	if (!json_object_is_type(v, json_type_string)) {
		*why = "must be a string";
		return NULL;
	}
	s = json_object_get_string(v);
	if (strlen(s) != (size_t)json_object_get_string_len(v) || !valid(s)) {
		*why = valid == protocol_valid_id ?
		    "must be 1-64 printable ASCII characters" :
		    "must be 1-64 characters of A-Z a-z 0-9 _ . @ + -";
		return NULL;
	}
	return s;
}

/* A JSON integer (not a bool, float or string) in [min, max]. */
static int
proto_uint(struct json_object *v, uint64_t min, uint64_t max, uint64_t *out, const char **why)
{
	int64_t i;

	if (!json_object_is_type(v, json_type_int)) {
		*why = "must be an integer";
		return -1;
	}
	/* json-c keeps integers above INT64_MAX as uint64; below 0 as int64. */
	i = json_object_get_int64(v);
	if (i < 0) {
		*why = min > 0 ? "must be a positive integer" : "must not be negative";
		return -1;
	}
	if (i == INT64_MAX)
		*out = json_object_get_uint64(v);
	else
		*out = (uint64_t)i;
	if (*out < min) {
		*why = min > 0 ? "must be a positive integer" : "must not be negative";
		return -1;
	}
	if (*out > max) {
		*why = "too large";
		return -1;
	}
	return 0;
}

/* Get a member; NULL for absent and for an explicit null (both mean "not given"). */
static struct json_object *
proto_get(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || v == NULL)
		return NULL;
	return v;
}

/* --- decoders ---------------------------------------------------------------------------- */

/* Exactly one of "to" and "group_id"; shared by sends and typing. */
static int
proto_target(struct json_object *o, char **to, uint64_t *group_id, const char **field,
    const char **why)
{
	struct json_object *vto, *vgid;
	const char *s;

	*to = NULL;
	*group_id = 0;
	vto = proto_get(o, "to");
	vgid = proto_get(o, "group_id");
	if ((vto == NULL) == (vgid == NULL))
		PROTO_FAIL("to", "exactly one of \"to\" and \"group_id\" is required");
	if (vto != NULL) {
		if ((s = proto_ident(vto, protocol_valid_user, why)) == NULL)
			PROTO_FAIL("to", *why);
		*to = xstrdup(s);
		return 0;
	}
	if (proto_uint(vgid, 1, INT64_MAX, group_id, why) != 0)
		PROTO_FAIL("group_id", *why);
	return 0;
fail:
	return -1;
}

static int
proto_is_object(struct json_object *o, const char **field, const char **why)
{
	if (o == NULL || !json_object_is_type(o, json_type_object))
		PROTO_FAIL("json", "not a JSON object");
	return 0;
fail:
	return -1;
}

int
protocol_decode_send(struct json_object *o, int max_chars, struct proto_send *req,
    const char **field, const char **why)
{
	struct json_object *v;
	const char *s;

	memset(req, 0, sizeof *req);
	if (proto_is_object(o, field, why) != 0)
		return -1;
	if ((v = proto_get(o, "client_msg_id")) == NULL)
		PROTO_FAIL("client_msg_id", "required");
	if ((s = proto_ident(v, protocol_valid_id, why)) == NULL)
		PROTO_FAIL("client_msg_id", *why);
	req->client_msg_id = xstrdup(s);
	if (proto_target(o, &req->to, &req->group_id, field, why) != 0)
		goto fail;
	if ((v = proto_get(o, "content")) == NULL)
		PROTO_FAIL("content", "required");
	if ((req->content = proto_text(v, max_chars, why)) == NULL)
		PROTO_FAIL("content", *why);
	return 0;
fail:
	protocol_send_clear(req);
	errno = EINVAL;
	return -1;
}

void
protocol_send_clear(struct proto_send *req)
{
	if (req == NULL)
		return;
	free(req->to);
	free(req->content);
	free(req->client_msg_id);
	memset(req, 0, sizeof *req);
}

static const char *proto_receipt_names[] = { NULL, "delivered", "read" };

const char *
protocol_receipt_name(enum proto_receipt r)
{
	if (r == PROTO_DELIVERED || r == PROTO_READ)
		return proto_receipt_names[r];
	return "unknown";
}

/* "message_id": a positive JSON integer. */
static int
proto_message_id(struct json_object *o, uint64_t *id, const char **field, const char **why)
{
	struct json_object *v;

	if ((v = proto_get(o, "message_id")) == NULL)
		PROTO_FAIL("message_id", "required");
	if (proto_uint(v, 1, INT64_MAX, id, why) != 0)
		PROTO_FAIL("message_id", *why);
	return 0;
fail:
	return -1;
}

int
protocol_decode_receipt(struct json_object *o, struct proto_receipt_req *req,
    const char **field, const char **why)
{
	struct json_object *v;
	const char *s;

	memset(req, 0, sizeof *req);
	if (proto_is_object(o, field, why) != 0)
		return -1;
	if (proto_message_id(o, &req->message_id, field, why) != 0)
		goto fail;
	if ((v = proto_get(o, "status")) == NULL)
		PROTO_FAIL("status", "required");
	if (!json_object_is_type(v, json_type_string))
		PROTO_FAIL("status", "must be a string");
	s = json_object_get_string(v);
	if (strcmp(s, "delivered") == 0)
		req->status = PROTO_DELIVERED;
	else if (strcmp(s, "read") == 0)
		req->status = PROTO_READ;
	else
		PROTO_FAIL("status", "must be \"delivered\" or \"read\"");
	return 0;
fail:
	memset(req, 0, sizeof *req);
	errno = EINVAL;
	return -1;
}

int
protocol_decode_target(struct json_object *o, struct proto_target *t, const char **field,
    const char **why)
{
	memset(t, 0, sizeof *t);
	if (proto_is_object(o, field, why) != 0)
		return -1;
	if (proto_target(o, &t->to, &t->group_id, field, why) != 0) {
		errno = EINVAL;
		return -1;
	}
	return 0;
}

void
protocol_target_clear(struct proto_target *t)
{
	if (t == NULL)
		return;
	free(t->to);
	memset(t, 0, sizeof *t);
}

int
protocol_decode_group_create(struct json_object *o, struct proto_group_create *g,
    const char **field, const char **why)
{
	struct json_object *v, *m;
	const char *s;
	size_t i, j, n;

	memset(g, 0, sizeof *g);
	if (proto_is_object(o, field, why) != 0)
		return -1;
	if ((v = proto_get(o, "name")) == NULL)
		PROTO_FAIL("name", "required");
	if ((g->name = proto_text(v, PROTO_GROUP_NAME_MAX, why)) == NULL)
		PROTO_FAIL("name", *why);
	if ((v = proto_get(o, "members")) == NULL)
		return 0;	/* a group of the creator alone */
	if (!json_object_is_type(v, json_type_array))
		PROTO_FAIL("members", "must be an array of user ids");
	n = json_object_array_length(v);
	if (n > PROTO_GROUP_MEMBERS_MAX)
		PROTO_FAIL("members", "too many members (at most 1000)");
	g->members = xcalloc(n, sizeof *g->members);
	for (i = 0; i < n; i++) {
		m = json_object_array_get_idx(v, i);
		if ((s = proto_ident(m, protocol_valid_user, why)) == NULL)
			PROTO_FAIL("members", *why);
		for (j = 0; j < g->nmembers; j++) {
			if (strcmp(g->members[j], s) == 0)
				break;
		}
		if (j == g->nmembers)
			g->members[g->nmembers++] = xstrdup(s);
	}
	return 0;
fail:
	protocol_group_create_clear(g);
	errno = EINVAL;
	return -1;
}

void
protocol_group_create_clear(struct proto_group_create *g)
{
	size_t i;

	if (g == NULL)
		return;
	free(g->name);
	for (i = 0; i < g->nmembers; i++)
		free(g->members[i]);
	free(g->members);
	memset(g, 0, sizeof *g);
}

int
protocol_decode_user_field(struct json_object *o, char **user, const char **field, const char **why)
{
	struct json_object *v;
	const char *s;

	*user = NULL;
	if (proto_is_object(o, field, why) != 0)
		return -1;
	if ((v = proto_get(o, "user")) == NULL)
		PROTO_FAIL("user", "required");
	if ((s = proto_ident(v, protocol_valid_user, why)) == NULL)
		PROTO_FAIL("user", *why);
	*user = xstrdup(s);
	return 0;
fail:
	return -1;
}

int
protocol_decode_room_text(struct json_object *o, int max_chars, char **text, const char **field,
    const char **why)
{
	struct json_object *v;

	*text = NULL;
	if (proto_is_object(o, field, why) != 0)
		return -1;
	if ((v = proto_get(o, "text")) == NULL)
		PROTO_FAIL("text", "required");
	if ((*text = proto_text(v, max_chars, why)) == NULL)
		PROTO_FAIL("text", *why);
	return 0;
fail:
	return -1;
}

/* The value of the four hex digits at s, or -1. */
static long
proto_hex4(const char *s)
{
	long v = 0;
	int i, d;

	for (i = 0; i < 4; i++) {
		if (s[i] >= '0' && s[i] <= '9')
			d = s[i] - '0';
		else if (s[i] >= 'a' && s[i] <= 'f')
			d = s[i] - 'a' + 10;
		else if (s[i] >= 'A' && s[i] <= 'F')
			d = s[i] - 'A' + 10;
		else
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/*
 * json-c decodes a \u escape of a lone surrogate (\ud800 not followed by a low one, or a low one
 * alone) as U+FFFD: a character the client never sent, which would pass every UTF-8 check and be
 * stored. Find such escapes inside strings and return a copy of buf in which each is replaced by
 * the surrogate's own three bytes (ED A0 80..ED BF BF), which json-c passes through and the field
 * checks refuse as invalid UTF-8, naming the field. NULL when there is none (the usual case).
 * Malformed JSON is only skipped over: the parser refuses it afterwards.
 */
static char *
proto_lone_surrogates(const char *buf, size_t len, size_t *outlen)
{
	char *out = NULL;
	size_t i, o = 0, copied = 0;
	long u, lo;
	int in_str = 0;

	for (i = 0; i < len; i++) {
		if (!in_str) {
			in_str = buf[i] == '"';
			continue;
		}
		if (buf[i] == '"') {
			in_str = 0;
			continue;
		}
		if (buf[i] != '\\')
			continue;
		if (i + 5 >= len || buf[i + 1] != 'u' || (u = proto_hex4(buf + i + 2)) < 0) {
			i++;	/* a one-character escape (or a malformed one) */
			continue;
		}
		if (u < 0xd800 || u > 0xdfff) {
			i += 5;
			continue;
		}
		if (u <= 0xdbff && i + 11 < len && buf[i + 6] == '\\' && buf[i + 7] == 'u' &&
		    (lo = proto_hex4(buf + i + 8)) >= 0xdc00 && lo <= 0xdfff) {
			i += 11;	/* a proper pair */
			continue;
		}
		if (out == NULL)
			out = xmalloc(len + 1);
		memcpy(out + o, buf + copied, i - copied);
		o += i - copied;
		out[o++] = (char)0xed;
		out[o++] = (char)(0x80 | ((u >> 6) & 0x3f));
		out[o++] = (char)(0x80 | (u & 0x3f));
		i += 5;
		copied = i + 1;
	}
	if (out == NULL)
		return NULL;
	memcpy(out + o, buf + copied, len - copied);
	o += len - copied;
	out[o] = '\0';
	*outlen = o;
	return out;
}

struct json_object *
protocol_parse_json(const char *buf, size_t len)
{
	struct json_tokener *tok;
	struct json_object *o;
	char *fixed;
	size_t end;

	if (len > INT32_MAX)
		return NULL;
	if ((fixed = proto_lone_surrogates(buf, len, &len)) != NULL)
		buf = fixed;
	if ((tok = json_tokener_new()) == NULL) {
		free(fixed);
		return NULL;
	}
	/*
	 * Strict JSON, trailing white space only. UTF-8 is checked per field instead, so that the
	 * error names the field (and a refused send can still be acked by its client_msg_id).
	 */
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
	o = json_tokener_parse_ex(tok, buf, (int)len);
	if (o == NULL || json_tokener_get_error(tok) != json_tokener_success)
		goto fail;
	for (end = json_tokener_get_parse_end(tok); end < len; end++) {
		if (buf[end] != ' ' && buf[end] != '\t' && buf[end] != '\n' && buf[end] != '\r')
			goto fail;
	}
	json_tokener_free(tok);
	free(fixed);
	return o;
fail:
	json_object_put(o);
	json_tokener_free(tok);
	free(fixed);
	return NULL;
}

static const struct {
	const char		*name;
	enum proto_frame	 type;
} proto_frames[] = {
	{ "auth",		PROTO_F_AUTH },
	{ "sync",		PROTO_F_SYNC },
	{ "send_message",	PROTO_F_SEND },
	{ "delivered",		PROTO_F_DELIVERED },
	{ "read",		PROTO_F_READ },
	{ "typing",		PROTO_F_TYPING },
	{ "join_room",		PROTO_F_JOIN_ROOM },
	{ "leave_room",		PROTO_F_LEAVE_ROOM },
	{ "room_message",	PROTO_F_ROOM_MESSAGE },
	{ "ping",		PROTO_F_PING },
	{ "history",		PROTO_F_HISTORY },
};

/* "room": a valid room name, copied into *room. */
static int
proto_room(struct json_object *o, char **room, const char **field, const char **why)
{
	struct json_object *v;
	const char *s;

	if ((v = proto_get(o, "room")) == NULL)
		PROTO_FAIL("room", "required");
	if ((s = proto_ident(v, protocol_valid_room, why)) == NULL)
		PROTO_FAIL("room", *why);
	*room = xstrdup(s);
	return 0;
fail:
	return -1;
}

/* The history frame: exactly one of "with" and "group_id"; "before" and "limit" optional. */
static int
proto_history(struct json_object *o, struct proto_history *h, const char **field,
    const char **why)
{
	struct json_object *vwith, *vgid, *v;
	const char *s;
	uint64_t u;

	vwith = proto_get(o, "with");
	vgid = proto_get(o, "group_id");
	if ((vwith == NULL) == (vgid == NULL))
		PROTO_FAIL("with", "exactly one of \"with\" and \"group_id\" is required");
	if (vwith != NULL) {
		if ((s = proto_ident(vwith, protocol_valid_user, why)) == NULL)
			PROTO_FAIL("with", *why);
		h->with = xstrdup(s);
	} else if (proto_uint(vgid, 1, INT64_MAX, &h->group_id, why) != 0)
		PROTO_FAIL("group_id", *why);
	if ((v = proto_get(o, "before")) != NULL &&
	    proto_uint(v, 1, INT64_MAX, &h->before, why) != 0)
		PROTO_FAIL("before", *why);
	if ((v = proto_get(o, "limit")) != NULL) {
		if (proto_uint(v, 1, PROTO_HISTORY_LIMIT_MAX, &u, why) != 0)
			PROTO_FAIL("limit", *why);
		h->limit = (int)u;
	}
	return 0;
fail:
	return -1;
}

/* The fields of one frame whose type is already known. */
static int
proto_frame_body(struct json_object *o, int content_max, int room_max, struct proto_frame_req *r,
    const char **field, const char **why, char **cmid)
{
	struct json_object *v;
	const char *s, *ignored;

	switch (r->type) {
	case PROTO_F_AUTH:
		if ((v = proto_get(o, "token")) == NULL)
			PROTO_FAIL("token", "required");
		if (!json_object_is_type(v, json_type_string) ||
		    json_object_get_string_len(v) == 0)
			PROTO_FAIL("token", "must be a non-empty string");
		r->token = xstrdup(json_object_get_string(v));
		return 0;
	case PROTO_F_SYNC:
		if ((v = proto_get(o, "after")) == NULL)
			return 0;
		if (proto_uint(v, 0, INT64_MAX, &r->after, why) != 0)
			PROTO_FAIL("after", *why);
		r->has_after = 1;
		return 0;
	case PROTO_F_SEND:
		if (protocol_decode_send(o, content_max, &r->send, field, why) == 0)
			return 0;
		/* The ack of a refused send still names the client's message when it can. */
		if (cmid != NULL && (v = proto_get(o, "client_msg_id")) != NULL &&
		    (s = proto_ident(v, protocol_valid_id, &ignored)) != NULL)
			*cmid = xstrdup(s);
		goto fail;
	case PROTO_F_DELIVERED:
	case PROTO_F_READ:
		r->receipt.status = r->type == PROTO_F_READ ? PROTO_READ : PROTO_DELIVERED;
		return proto_message_id(o, &r->receipt.message_id, field, why);
	case PROTO_F_TYPING:
		return proto_target(o, &r->target.to, &r->target.group_id, field, why);
	case PROTO_F_JOIN_ROOM:
	case PROTO_F_LEAVE_ROOM:
		return proto_room(o, &r->room, field, why);
	case PROTO_F_ROOM_MESSAGE:
		if (proto_room(o, &r->room, field, why) != 0)
			goto fail;
		if ((v = proto_get(o, "text")) == NULL)
			PROTO_FAIL("text", "required");
		if ((r->text = proto_text(v, room_max, why)) == NULL)
			PROTO_FAIL("text", *why);
		return 0;
	case PROTO_F_PING:
		return 0;
	case PROTO_F_HISTORY:
		return proto_history(o, &r->history, field, why);
	}
	PROTO_FAIL("type", "unknown type");
fail:
	return -1;
}

int
protocol_decode_frame(const char *buf, size_t len, int content_max_chars, int room_max_chars,
    struct proto_frame_req *r, const char **field, const char **why, char **client_msg_id)
{
	struct json_object *o = NULL, *v;
	const char *s;
	size_t i;

	memset(r, 0, sizeof *r);
	if (client_msg_id != NULL)
		*client_msg_id = NULL;
	if ((o = protocol_parse_json(buf, len)) == NULL)
		PROTO_FAIL("json", "not valid JSON");
	if (!json_object_is_type(o, json_type_object))
		PROTO_FAIL("json", "not a JSON object");
	if ((v = proto_get(o, "type")) == NULL)
		PROTO_FAIL("type", "required");
	if (!json_object_is_type(v, json_type_string))
		PROTO_FAIL("type", "must be a string");
	s = json_object_get_string(v);
	for (i = 0; i < PARLEY_NITEMS(proto_frames); i++) {
		if (strcmp(s, proto_frames[i].name) == 0)
			break;
	}
	if (i == PARLEY_NITEMS(proto_frames))
		PROTO_FAIL("type", "unknown type");
	r->type = proto_frames[i].type;
	if (proto_frame_body(o, content_max_chars, room_max_chars, r, field, why,
	    client_msg_id) != 0)
		goto fail;
	json_object_put(o);
	return 0;
fail:
	json_object_put(o);
	protocol_frame_clear(r);
	errno = EINVAL;
	return -1;
}

void
protocol_frame_clear(struct proto_frame_req *r)
{
	enum proto_frame type;

	if (r == NULL)
		return;
	type = r->type;
	free(r->token);
	protocol_send_clear(&r->send);
	protocol_target_clear(&r->target);
	free(r->room);
	free(r->text);
	protocol_history_clear(&r->history);
	memset(r, 0, sizeof *r);
	r->type = type;
}

void
protocol_history_clear(struct proto_history *h)
{
	if (h == NULL)
		return;
	free(h->with);
	memset(h, 0, sizeof *h);
}

int
protocol_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	const char *p;

	if (s == NULL || *s == '\0')
		goto fail;
	for (p = s; *p != '\0'; p++) {
		if (*p < '0' || *p > '9')
			goto fail;
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			goto fail;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v < min || v > max)
		goto fail;
	*out = v;
	return 0;
fail:
	errno = EINVAL;
	return -1;
}

/* --- encoders ------------------------------------------------------------------------------ */

/* A growing output buffer; encoders build the canonical texts straight into it. */
struct pbuf {
	char	*p;
	size_t	 len;
	size_t	 cap;
};

static void
pb_reserve(struct pbuf *b, size_t more)
{
	if (b->len + more + 1 <= b->cap)
		return;
	b->cap = b->cap == 0 ? 128 : b->cap;
	while (b->len + more + 1 > b->cap)
		b->cap *= 2;
	b->p = xrealloc(b->p, b->cap);
}

static void
pb_raw(struct pbuf *b, const char *s, size_t n)
{
	pb_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
pb_lit(struct pbuf *b, const char *s)
{
	pb_raw(b, s, strlen(s));
}

static void
pb_u64(struct pbuf *b, uint64_t v)
{
	char tmp[24];

	pb_raw(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%" PRIu64, v));
}

static void
pb_i64(struct pbuf *b, int64_t v)
{
	char tmp[24];

	pb_raw(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%" PRId64, v));
}

/* A JSON string (or null for NULL): escapes quotes, backslashes and controls; never '/'. */
static void
pb_str(struct pbuf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	const char *run;
	unsigned char c;
	char esc[7];

	if (s == NULL) {
		pb_lit(b, "null");
		return;
	}
	pb_raw(b, "\"", 1);
	for (run = s; *s != '\0'; s++) {
		c = (unsigned char)*s;
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		pb_raw(b, run, (size_t)(s - run));
		run = s + 1;
		switch (c) {
		case '"':	pb_lit(b, "\\\""); break;
		case '\\':	pb_lit(b, "\\\\"); break;
		case '\n':	pb_lit(b, "\\n"); break;
		case '\r':	pb_lit(b, "\\r"); break;
		case '\t':	pb_lit(b, "\\t"); break;
		case '\b':	pb_lit(b, "\\b"); break;
		case '\f':	pb_lit(b, "\\f"); break;
		default:
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 0xf];
			pb_raw(b, esc, 6);
			break;
		}
	}
	pb_raw(b, run, (size_t)(s - run));
	pb_raw(b, "\"", 1);
}

/* ,"key": */
static void
pb_key(struct pbuf *b, const char *key)
{
	pb_raw(b, ",\"", 2);
	pb_lit(b, key);
	pb_raw(b, "\":", 2);
}

/* ,"key":value for a string (null for NULL) or a number. */
static void
pb_kstr(struct pbuf *b, const char *key, const char *s)
{
	pb_key(b, key);
	pb_str(b, s);
}

static void
pb_ku64(struct pbuf *b, const char *key, uint64_t v)
{
	pb_key(b, key);
	pb_u64(b, v);
}

static void
pb_ki64(struct pbuf *b, const char *key, int64_t v)
{
	pb_key(b, key);
	pb_i64(b, v);
}

/* {"type":"T" and, unless seq is 0 (a body for the log), ,"seq":N */
static void
pb_event(struct pbuf *b, const char *type, uint64_t seq)
{
	pb_lit(b, "{\"type\":");
	pb_str(b, type);
	if (seq != 0)
		pb_ku64(b, "seq", seq);
}

/* The finished text; the caller frees it. */
static char *
pb_done(struct pbuf *b)
{
	return b->p;
}

/* The message object of new_message events and history pages. */
static void
pb_message(struct pbuf *b, const struct proto_message *m)
{
	pb_lit(b, "{\"id\":");
	pb_u64(b, m->id);
	pb_kstr(b, "from", m->from);
	pb_kstr(b, "to", m->group_id != 0 ? NULL : m->to);
	pb_key(b, "group_id");
	if (m->group_id != 0)
		pb_u64(b, m->group_id);
	else
		pb_lit(b, "null");
	pb_kstr(b, "content", m->content);
	pb_kstr(b, "client_msg_id", m->client_msg_id);
	pb_ki64(b, "ts", m->ts);
	pb_lit(b, "}");
}

char *
protocol_message(const struct proto_message *m)
{
	struct pbuf b = { 0 };

	pb_message(&b, m);
	return pb_done(&b);
}

char *
protocol_event_new_message(uint64_t seq, const struct proto_message *m)
{
	struct pbuf b = { 0 };

	pb_event(&b, "new_message", seq);
	pb_lit(&b, ",\"message\":");
	pb_message(&b, m);
	pb_lit(&b, "}");
	return pb_done(&b);
}

char *
protocol_event_message_status(uint64_t seq, uint64_t message_id, enum proto_receipt status,
    const char *by, int64_t ts)
{
	struct pbuf b = { 0 };

	pb_event(&b, "message_status", seq);
	pb_ku64(&b, "message_id", message_id);
	pb_kstr(&b, "status", protocol_receipt_name(status));
	pb_kstr(&b, "by", by);
	pb_ki64(&b, "ts", ts);
	pb_lit(&b, "}");
	return pb_done(&b);
}

char *
protocol_event_group_update(uint64_t seq, uint64_t group_id, const char *action,
    const char *user, const char *by)
{
	struct pbuf b = { 0 };

	pb_event(&b, "group_update", seq);
	pb_ku64(&b, "group_id", group_id);
	pb_kstr(&b, "action", action);
	pb_kstr(&b, "user", user);
	pb_kstr(&b, "by", by);
	pb_lit(&b, "}");
	return pb_done(&b);
}

char *
protocol_event_typing(const char *from, const char *to, uint64_t group_id)
{
	struct pbuf b = { 0 };

	pb_event(&b, "typing", 0);
	pb_kstr(&b, "from", from);
	if (group_id != 0)
		pb_ku64(&b, "group_id", group_id);
	else
		pb_kstr(&b, "to", to);
	pb_lit(&b, "}");
	return pb_done(&b);
}

char *
protocol_event_presence(const char *user, int online, int64_t last_seen)
{
	struct pbuf b = { 0 };

	pb_event(&b, "presence", 0);
	pb_kstr(&b, "user", user);
	pb_key(&b, "online");
	pb_lit(&b, online ? "true" : "false");
	pb_key(&b, "last_seen");
	if (last_seen != 0)
		pb_i64(&b, last_seen);
	else
		pb_lit(&b, "null");
	pb_lit(&b, "}");
	return pb_done(&b);
}

char *
protocol_event_room_message(const char *room, uint64_t id, const char *user, const char *text,
    int64_t ts)
{
	struct pbuf b = { 0 };

	pb_event(&b, "room_message", 0);
	pb_kstr(&b, "room", room);
	pb_lit(&b, ",\"comment\":{\"id\":");
	pb_u64(&b, id);
	pb_kstr(&b, "user", user);
	pb_kstr(&b, "text", text);
	pb_ki64(&b, "ts", ts);
	pb_lit(&b, "}}");
	return pb_done(&b);
}

/*
 * Bodies in the log are our own canonical texts, so "type" comes first: splice the seq in after
 * its value by scanning the string, no parse. Anything else gets it right after the '{'.
 */
char *
protocol_event_with_seq(const char *body, uint64_t seq)
{
	static const char prefix[] = "{\"type\":\"";
	struct pbuf b = { 0 };
	const char *p;

	if (strncmp(body, prefix, sizeof prefix - 1) == 0) {
		for (p = body + sizeof prefix - 1; *p != '\0' && *p != '"'; p++) {
			if (*p == '\\' && p[1] != '\0')
				p++;
		}
		if (*p == '"') {
			p++;
			pb_raw(&b, body, (size_t)(p - body));
			pb_ku64(&b, "seq", seq);
			pb_lit(&b, p);
			return pb_done(&b);
		}
	}
	for (p = body; *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'; p++)
		;
	if (*p != '{')
		return xstrdup(body);
	p++;
	pb_lit(&b, "{\"seq\":");
	pb_u64(&b, seq);
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	if (*p != '}')
		pb_raw(&b, ",", 1);
	pb_lit(&b, p);
	return pb_done(&b);
}

char *
protocol_events_page(char *const *events, size_t n, uint64_t next, int has_more)
{
	return protocol_events_page_reset(events, n, next, has_more, 0);
}

char *
protocol_events_page_reset(char *const *events, size_t n, uint64_t next, int has_more,
    uint64_t oldest_seq)
{
	struct pbuf b = { 0 };
	size_t i, total = 64;

	for (i = 0; i < n; i++)
		total += strlen(events[i]) + 1;
	pb_reserve(&b, total);
	pb_lit(&b, "{\"events\":[");
	for (i = 0; i < n; i++) {
		if (i > 0)
			pb_raw(&b, ",", 1);
		pb_lit(&b, events[i]);
	}
	pb_lit(&b, "],\"next\":");
	pb_u64(&b, next);
	if (has_more >= 0) {
		pb_key(&b, "has_more");
		pb_lit(&b, has_more ? "true" : "false");
	}
	if (oldest_seq != 0) {
		pb_lit(&b, ",\"reset\":true");
		pb_ku64(&b, "oldest_seq", oldest_seq);
	}
	pb_lit(&b, "}");
	return pb_done(&b);
}

char *
protocol_event_reset(uint64_t oldest_seq)
{
	struct pbuf b = { 0 };

	pb_event(&b, "reset", 0);
	pb_ku64(&b, "oldest_seq", oldest_seq);
	pb_lit(&b, "}");
	return pb_done(&b);
}

char *
protocol_history_page(const struct proto_history *h, int frame, char *const *messages, size_t n,
    uint64_t next_before)
{
	struct pbuf b = { 0 };
	size_t i, total = 128;

	for (i = 0; i < n; i++)
		total += strlen(messages[i]) + 1;
	pb_reserve(&b, total);
	if (frame) {
		pb_event(&b, "history", 0);
		if (h->with != NULL)
			pb_kstr(&b, "with", h->with);
		else
			pb_ku64(&b, "group_id", h->group_id);
		pb_lit(&b, ",");
	} else
		pb_lit(&b, "{");
	pb_lit(&b, "\"messages\":[");
	for (i = 0; i < n; i++) {
		if (i > 0)
			pb_raw(&b, ",", 1);
		pb_lit(&b, messages[i]);
	}
	pb_lit(&b, "],\"next_before\":");
	if (next_before != 0)
		pb_u64(&b, next_before);
	else
		pb_lit(&b, "null");
	pb_lit(&b, "}");
	return pb_done(&b);
}

/* --- errors ---------------------------------------------------------------------------------- */

const char *
protocol_errno_code(int err)
{
	switch (err) {
	case EINVAL:	return "bad_request";
	case EPERM:	return "unauthorized";
	case EACCES:	return "forbidden";
	case ENOENT:	return "not_found";
	case EMSGSIZE:	return "payload_too_large";
	case EBUSY:	return "rate_limited";
	case EAGAIN:	return "unavailable";
	default:	return "internal";
	}
}

int
protocol_errno_status(int err)
{
	switch (err) {
	case EINVAL:	return 400;
	case EPERM:	return 401;
	case EACCES:	return 403;
	case ENOENT:	return 404;
	case EMSGSIZE:	return 413;
	case EBUSY:	return 429;
	case EAGAIN:	return 503;
	default:	return 500;
	}
}

char *
protocol_error_body(const char *code, const char *message)
{
	struct pbuf b = { 0 };

	pb_lit(&b, "{\"error\":{\"code\":");
	pb_str(&b, code);
	pb_kstr(&b, "message", message);
	pb_lit(&b, "}}");
	return pb_done(&b);
}

char *
protocol_error_frame(const char *code, const char *message)
{
	struct pbuf b = { 0 };

	pb_event(&b, "error", 0);
	pb_kstr(&b, "code", code);
	pb_kstr(&b, "message", message);
	pb_lit(&b, "}");
	return pb_done(&b);
}

char *
protocol_ack_ok(const char *client_msg_id, uint64_t server_msg_id, uint64_t seq, int duplicate)
{
	struct pbuf b = { 0 };

	pb_event(&b, "ack", 0);
	pb_kstr(&b, "client_msg_id", client_msg_id);
	pb_lit(&b, ",\"status\":\"success\",\"server_msg_id\":");
	pb_u64(&b, server_msg_id);
	pb_ku64(&b, "seq", seq);
	pb_lit(&b, duplicate ? ",\"duplicate\":true}" : ",\"duplicate\":false}");
	return pb_done(&b);
}

char *
protocol_ack_error(const char *client_msg_id, const char *code, const char *message)
{
	struct pbuf b = { 0 };

	pb_event(&b, "ack", 0);
	pb_kstr(&b, "client_msg_id", client_msg_id);
	pb_lit(&b, ",\"status\":\"error\",\"error\":{\"code\":");
	pb_str(&b, code);
	pb_kstr(&b, "message", message);
	pb_lit(&b, "}}");
	return pb_done(&b);
}
