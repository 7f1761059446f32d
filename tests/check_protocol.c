/* check_protocol.c - the wire contract: strict decoding of every input, exact encoding of every output. */
#include <check.h>

#include "testenv.h"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "parley.h"
#include "protocol.h"
#include "xmalloc.h"

static struct json_object *
J(const char *text)
{
	struct json_object *o = protocol_parse_json(text, strlen(text));

	ck_assert_msg(o != NULL, "test JSON does not parse: %s", text);
	return o;
}

/* s repeated n times (caller frees). */
static char *
repeat(const char *s, size_t n)
{
	size_t len = strlen(s), i;
	char *r = xmalloc(len * n + 1);

	for (i = 0; i < n; i++)
		memcpy(r + i * len, s, len);
	r[len * n] = '\0';
	return r;
}

/* --- identifiers ---------------------------------------------------------------------------- */

static const struct {
	const char	*s;
	int		 user;	/* protocol_valid_user (and _room) */
	int		 id;	/* protocol_valid_id */
} idents[] = {
	{ "alice", 1, 1 },
	{ "A", 1, 1 },
	{ "Zz09_.@+-", 1, 1 },
	{ "alice@example.com", 1, 1 },
	{ "+33612345678", 1, 1 },
	{ "0123456789012345678901234567890123456789012345678901234567890123", 1, 1 },	/* 64 */
	{ "01234567890123456789012345678901234567890123456789012345678901234", 0, 0 },	/* 65 */
	{ "", 0, 0 },
	{ "a b", 0, 1 },
	{ " ", 0, 1 },
	{ "a/b", 0, 1 },
	{ "a:b", 0, 1 },
	{ "a\"b", 0, 1 },
	{ "a~b{}", 0, 1 },
	{ "bob!", 0, 1 },
	{ "b\xc3\xb3" "b", 0, 0 },	/* non-ASCII */
	{ "a\tb", 0, 0 },
	{ "a\nb", 0, 0 },
	{ "a\x7f", 0, 0 },
	{ "a\x01", 0, 0 },
};

START_TEST(test_idents)
{
	ck_assert_msg(protocol_valid_user(idents[_i].s) == idents[_i].user, "user '%s'", idents[_i].s);
	ck_assert_msg(protocol_valid_room(idents[_i].s) == idents[_i].user, "room '%s'", idents[_i].s);
	ck_assert_msg(protocol_valid_id(idents[_i].s) == idents[_i].id, "id '%s'", idents[_i].s);
}
END_TEST

START_TEST(test_idents_null)
{
	ck_assert_int_eq(protocol_valid_user(NULL), 0);
	ck_assert_int_eq(protocol_valid_id(NULL), 0);
	ck_assert_int_eq(protocol_valid_room(NULL), 0);
}
END_TEST

/* --- UTF-8 -------------------------------------------------------------------------------------- */

static const struct {
	const char	*bytes;
	size_t		 len;
	int		 valid;
	const char	*what;
} utf8[] = {
	{ "", 0, 1, "empty" },
	{ "abc", 3, 1, "ASCII" },
	{ "a\0b", 3, 1, "NUL is a valid code point (content refuses it separately)" },
	{ "\x7f", 1, 1, "DEL" },
	{ "\xc2\x80", 2, 1, "U+0080" },
	{ "\xc3\xa9", 2, 1, "e acute" },
	{ "\xdf\xbf", 2, 1, "U+07FF" },
	{ "\xe0\xa0\x80", 3, 1, "U+0800" },
	{ "\xe2\x82\xac", 3, 1, "euro" },
	{ "\xed\x9f\xbf", 3, 1, "U+D7FF" },
	{ "\xee\x80\x80", 3, 1, "U+E000" },
	{ "\xef\xbf\xbf", 3, 1, "U+FFFF" },
	{ "\xf0\x90\x80\x80", 4, 1, "U+10000" },
	{ "\xf0\x9f\x98\x80", 4, 1, "emoji" },
	{ "\xf4\x8f\xbf\xbf", 4, 1, "U+10FFFF, the largest" },
	{ "\xc0\x80", 2, 0, "overlong NUL" },
	{ "\xc0\xaf", 2, 0, "overlong slash" },
	{ "\xc1\xbf", 2, 0, "overlong U+007F" },
	{ "\xe0\x80\xaf", 3, 0, "3-byte overlong slash" },
	{ "\xe0\x9f\xbf", 3, 0, "3-byte overlong U+07FF" },
	{ "\xf0\x80\x80\x80", 4, 0, "4-byte overlong NUL" },
	{ "\xf0\x8f\xbf\xbf", 4, 0, "4-byte overlong U+FFFF" },
	{ "\xed\xa0\x80", 3, 0, "surrogate U+D800" },
	{ "\xed\xaf\xbf", 3, 0, "surrogate U+DBFF" },
	{ "\xed\xb0\x80", 3, 0, "surrogate U+DC00" },
	{ "\xed\xbf\xbf", 3, 0, "surrogate U+DFFF" },
	{ "\xed\xa0\xbd\xed\xb8\x80", 6, 0, "CESU-8 surrogate pair" },
	{ "\xf4\x90\x80\x80", 4, 0, "U+110000" },
	{ "\xf5\x80\x80\x80", 4, 0, "lead byte F5" },
	{ "\xf7\xbf\xbf\xbf", 4, 0, "lead byte F7" },
	{ "\xf8\x88\x80\x80\x80", 5, 0, "5-byte form" },
	{ "\xfc\x84\x80\x80\x80\x80", 6, 0, "6-byte form" },
	{ "\xfe", 1, 0, "FE" },
	{ "\xff", 1, 0, "FF" },
	{ "\x80", 1, 0, "lone continuation" },
	{ "a\xbf", 2, 0, "continuation after ASCII" },
	{ "\xc3", 1, 0, "truncated 2-byte" },
	{ "\xe2\x82", 2, 0, "truncated 3-byte" },
	{ "\xf0\x9f\x98", 3, 0, "truncated 4-byte" },
	{ "\xf0\x9f\x98" "a", 4, 0, "4-byte cut by ASCII" },
	{ "\xe2\x82\x41", 3, 0, "bad continuation" },
	{ "\xc3\xa9\xc3", 3, 0, "valid then truncated" },
	{ "\xe2\x82\xac", 2, 0, "length cuts the sequence" },
};

START_TEST(test_utf8)
{
	ck_assert_msg(protocol_valid_utf8(utf8[_i].bytes, utf8[_i].len) == utf8[_i].valid, "%s",
	    utf8[_i].what);
}
END_TEST

static const struct {
	const char	*in;
	const char	*out;
} trims[] = {
	{ "hi", "hi" },
	{ "  hi  ", "hi" },
	{ "\t\r\n hi\n", "hi" },
	{ "\x0b\x0chi", "hi" },
	{ "\xc2\xa0hi\xc2\xa0", "hi" },			/* U+00A0 */
	{ "\xc2\x85hi", "hi" },				/* U+0085 */
	{ "\xe1\x9a\x80hi", "hi" },			/* U+1680 */
	{ "\xe2\x80\x80hi\xe2\x80\x8a", "hi" },		/* U+2000, U+200A */
	{ "\xe2\x80\x85hi", "hi" },			/* U+2005 */
	{ "\xe2\x80\xa8hi\xe2\x80\xa9", "hi" },		/* U+2028, U+2029 */
	{ "\xe2\x80\xafhi\xe2\x81\x9f", "hi" },		/* U+202F, U+205F */
	{ "\xe3\x80\x80hi\xe3\x80\x80", "hi" },		/* U+3000 */
	{ "\xef\xbb\xbfhi", "hi" },			/* U+FEFF */
	{ "a b", "a b" },
	{ "  a \xc2\xa0 b  ", "a \xc2\xa0 b" },
	{ "\xe2\x80\x8bhi", "\xe2\x80\x8bhi" },		/* U+200B is not white space */
	{ "\xc3\xa9", "\xc3\xa9" },
	{ " \xf0\x9f\x98\x80 ", "\xf0\x9f\x98\x80" },
	{ "   ", "" },
	{ "\xe3\x80\x80\xc2\xa0\n", "" },
	{ "", "" },
};

START_TEST(test_trim)
{
	char *t = protocol_trim(trims[_i].in);

	ck_assert_str_eq(t, trims[_i].out);
	free(t);
}
END_TEST

START_TEST(test_chars)
{
	ck_assert_uint_eq(protocol_utf8_chars(""), 0);
	ck_assert_uint_eq(protocol_utf8_chars("abc"), 3);
	ck_assert_uint_eq(protocol_utf8_chars("\xc3\xa9"), 1);
	ck_assert_uint_eq(protocol_utf8_chars("\xf0\x9f\x98\x80"), 1);
	ck_assert_uint_eq(protocol_utf8_chars("a\xc3\xa9\xf0\x9f\x98\x80\xe2\x82\xac"), 4);
}
END_TEST

/* --- send --------------------------------------------------------------------------------------- */

static const struct {
	const char	*json;
	const char	*field;		/* NULL: accepted */
	const char	*to;
	uint64_t	 group_id;
	const char	*content;
	const char	*cmid;
} sends[] = {
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":\"c-1\"}", NULL, "bob", 0, "Hi", "c-1" },
	{ "{\"group_id\":17,\"content\":\" Hi \",\"client_msg_id\":\"c-2\"}", NULL, NULL, 17, "Hi", "c-2" },
	{ "{\"to\":\"bob\",\"group_id\":null,\"content\":\"x\",\"client_msg_id\":\"c\"}", NULL, "bob", 0, "x", "c" },
	{ "{\"to\":null,\"group_id\":5,\"content\":\"x\",\"client_msg_id\":\"c\"}", NULL, NULL, 5, "x", "c" },
	{ "{\"group_id\":9223372036854775807,\"content\":\"x\",\"client_msg_id\":\"c\"}", NULL, NULL,
	    INT64_MAX, "x", "c" },
	{ "{\"to\":\"Zz09_.@+-\",\"content\":\"x\",\"client_msg_id\":\"a b/c\"}", NULL, "Zz09_.@+-", 0, "x",
	    "a b/c" },
	{ "{\"content\":\"x\",\"client_msg_id\":\"c\",\"to\":\"bob\",\"extra\":[1,{}],\"seq\":\"zz\",\"type\":5}",
	    NULL, "bob", 0, "x", "c" },
	{ "{\"to\":\"bob\",\"content\":\"line1\\nline2\\t\",\"client_msg_id\":\"c\"}", NULL, "bob", 0,
	    "line1\nline2", "c" },
	{ "{\"to\":\"bob\",\"content\":\"\\u00e9\\ud83d\\ude00\",\"client_msg_id\":\"c\"}", NULL, "bob", 0,
	    "\xc3\xa9\xf0\x9f\x98\x80", "c" },
	{ "{\"to\":\"bob\",\"content\":\"a/b\",\"client_msg_id\":\"c\"}", NULL, "bob", 0, "a/b", "c" },

	{ "{\"to\":\"bob\",\"content\":\"Hi\"}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":null}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":\"\"}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":5}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":[\"c\"]}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":\"a\\u0001\"}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":\"a\\u0000b\"}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":\"\\u00e9\"}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"Hi\",\"client_msg_id\":"
	    "\"01234567890123456789012345678901234567890123456789012345678901234\"}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"group_id\":1,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":null,\"group_id\":null,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":\"\",\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":\"bo b\",\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":\"bob!\",\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":\"b\\u00f3b\",\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\\u0000x\",\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":\"01234567890123456789012345678901234567890123456789012345678901234\","
	    "\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":5,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":true,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"to\":[\"bob\"],\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "to", 0, 0, 0, 0 },
	{ "{\"group_id\":\"17\",\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"group_id\":17.0,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"group_id\":1e2,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"group_id\":true,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"group_id\":0,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"group_id\":-3,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"group_id\":9223372036854775808,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"group_id\":99999999999999999999999,\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"group_id\":{},\"content\":\"Hi\",\"client_msg_id\":\"c\"}", "group_id", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":null,\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":5,\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":[\"Hi\"],\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"\",\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\" \\t\\n\\u00a0\\u3000 \",\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"\\u0000\",\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"a\\u0000b\",\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"\xff\",\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"a\xed\xa0\x80\",\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "{\"to\":\"bob\",\"content\":\"\xc0\xaf\",\"client_msg_id\":\"c\"}", "content", 0, 0, 0, 0 },
	{ "[1]", "json", 0, 0, 0, 0 },
	{ "\"text\"", "json", 0, 0, 0, 0 },
};

START_TEST(test_send)
{
	struct json_object *o = J(sends[_i].json);
	struct proto_send req;
	const char *field = NULL, *why = NULL;
	int rc;

	errno = 0;
	rc = protocol_decode_send(o, 4000, &req, &field, &why);
	if (sends[_i].field == NULL) {
		ck_assert_msg(rc == 0, "%s: refused: %s %s", sends[_i].json, field, why);
		if (sends[_i].to != NULL)
			ck_assert_str_eq(req.to, sends[_i].to);
		else
			ck_assert_ptr_null(req.to);
		ck_assert_uint_eq(req.group_id, sends[_i].group_id);
		ck_assert_str_eq(req.content, sends[_i].content);
		ck_assert_str_eq(req.client_msg_id, sends[_i].cmid);
	} else {
		ck_assert_msg(rc == -1, "%s: accepted", sends[_i].json);
		ck_assert_int_eq(errno, EINVAL);
		ck_assert_msg(field != NULL && strcmp(field, sends[_i].field) == 0,
		    "%s: field %s, expected %s", sends[_i].json, field, sends[_i].field);
		ck_assert_ptr_nonnull(why);
		ck_assert_uint_gt(strlen(why), 0);
		/* A refused request leaves nothing to free. */
		ck_assert_ptr_null(req.to);
		ck_assert_ptr_null(req.content);
		ck_assert_ptr_null(req.client_msg_id);
	}
	protocol_send_clear(&req);
	json_object_put(o);
}
END_TEST

START_TEST(test_send_not_object)
{
	struct proto_send req;
	const char *field = NULL, *why = NULL;

	ck_assert_int_eq(protocol_decode_send(NULL, 4000, &req, &field, &why), -1);
	ck_assert_str_eq(field, "json");
	protocol_send_clear(NULL);
}
END_TEST

/* Decode a send whose content is content (any bytes) with limit max; the field refused or NULL. */
static const char *
send_content(const char *content, size_t len, int max, char **trimmed)
{
	struct json_object *o = json_object_new_object();
	struct proto_send req;
	const char *field = NULL, *why = NULL;

	json_object_object_add(o, "to", json_object_new_string("bob"));
	json_object_object_add(o, "client_msg_id", json_object_new_string("c"));
	json_object_object_add(o, "content", json_object_new_string_len(content, (int)len));
	if (protocol_decode_send(o, max, &req, &field, &why) == 0) {
		field = NULL;
		if (trimmed != NULL)
			*trimmed = xstrdup(req.content);
	}
	protocol_send_clear(&req);
	json_object_put(o);
	return field;
}

/* Every invalid UTF-8 sequence of the table is refused as content; every valid one taken. */
START_TEST(test_send_utf8)
{
	const char *field;
	char buf[32];

	/* Wrapped in letters so that no case is empty after trimming. */
	snprintf(buf, sizeof buf, "x");
	memcpy(buf + 1, utf8[_i].bytes, utf8[_i].len);
	buf[utf8[_i].len + 1] = 'y';
	field = send_content(buf, utf8[_i].len + 2, 4000, NULL);
	if (utf8[_i].valid && memchr(utf8[_i].bytes, '\0', utf8[_i].len) == NULL)
		ck_assert_msg(field == NULL, "%s refused", utf8[_i].what);
	else
		ck_assert_msg(field != NULL && strcmp(field, "content") == 0, "%s: %s", utf8[_i].what,
		    field);
}
END_TEST

/* The limit counts characters after trimming, not bytes. */
static const struct {
	const char	*unit;
	size_t		 n;
	int		 max;
	int		 ok;
} lengths[] = {
	{ "a", 4000, 4000, 1 },
	{ "a", 4001, 4000, 0 },
	{ "\xc3\xa9", 4000, 4000, 1 },		/* 8000 bytes */
	{ "\xc3\xa9", 4001, 4000, 0 },
	{ "\xe2\x82\xac", 4000, 4000, 1 },
	{ "\xf0\x9f\x98\x80", 4000, 4000, 1 },	/* 16000 bytes */
	{ "\xf0\x9f\x98\x80", 4001, 4000, 0 },
	{ "a", 1, 1, 1 },
	{ "a", 2, 1, 0 },
	{ "a", 10, 10, 1 },
	{ "a", 11, 10, 0 },
};

START_TEST(test_send_length)
{
	char *s = repeat(lengths[_i].unit, lengths[_i].n), *t = NULL;
	const char *field;

	field = send_content(s, strlen(s), lengths[_i].max, &t);
	if (lengths[_i].ok) {
		ck_assert_ptr_null(field);
		ck_assert_uint_eq(protocol_utf8_chars(t), lengths[_i].n);
	} else
		ck_assert_str_eq(field, "content");
	free(t);
	free(s);
}
END_TEST

/* White space around the text does not count against the limit. */
START_TEST(test_send_length_trimmed)
{
	char *body = repeat("a", 4000), *s, *t = NULL;

	xasprintf(&s, " \xe3\x80\x80\t%s\n\xc2\xa0 ", body);
	ck_assert_ptr_null(send_content(s, strlen(s), 4000, &t));
	ck_assert_str_eq(t, body);
	free(t);
	free(s);
	xasprintf(&s, " %s!\n", body);
	ck_assert_str_eq(send_content(s, strlen(s), 4000, NULL), "content");
	free(s);
	free(body);
}
END_TEST

/* --- receipts, targets, groups, users, rooms ------------------------------------------------------ */

static const struct {
	const char		*json;
	const char		*field;
	uint64_t		 id;
	enum proto_receipt	 status;
} receipts[] = {
	{ "{\"message_id\":1001,\"status\":\"delivered\"}", NULL, 1001, PROTO_DELIVERED },
	{ "{\"status\":\"read\",\"message_id\":1,\"x\":null}", NULL, 1, PROTO_READ },
	{ "{\"status\":\"read\"}", "message_id", 0, 0 },
	{ "{\"message_id\":null,\"status\":\"read\"}", "message_id", 0, 0 },
	{ "{\"message_id\":\"1001\",\"status\":\"read\"}", "message_id", 0, 0 },
	{ "{\"message_id\":0,\"status\":\"read\"}", "message_id", 0, 0 },
	{ "{\"message_id\":-5,\"status\":\"read\"}", "message_id", 0, 0 },
	{ "{\"message_id\":1.5,\"status\":\"read\"}", "message_id", 0, 0 },
	{ "{\"message_id\":true,\"status\":\"read\"}", "message_id", 0, 0 },
	{ "{\"message_id\":1}", "status", 0, 0 },
	{ "{\"message_id\":1,\"status\":\"seen\"}", "status", 0, 0 },
	{ "{\"message_id\":1,\"status\":\"READ\"}", "status", 0, 0 },
	{ "{\"message_id\":1,\"status\":2}", "status", 0, 0 },
	{ "[]", "json", 0, 0 },
};

START_TEST(test_receipt)
{
	struct json_object *o = J(receipts[_i].json);
	struct proto_receipt_req r;
	const char *field = NULL, *why = NULL;
	int rc;

	rc = protocol_decode_receipt(o, &r, &field, &why);
	if (receipts[_i].field == NULL) {
		ck_assert_msg(rc == 0, "%s: %s %s", receipts[_i].json, field, why);
		ck_assert_uint_eq(r.message_id, receipts[_i].id);
		ck_assert_int_eq(r.status, receipts[_i].status);
	} else {
		ck_assert_int_eq(rc, -1);
		ck_assert_int_eq(errno, EINVAL);
		ck_assert_str_eq(field, receipts[_i].field);
	}
	json_object_put(o);
}
END_TEST

START_TEST(test_receipt_names)
{
	ck_assert_str_eq(protocol_receipt_name(PROTO_DELIVERED), "delivered");
	ck_assert_str_eq(protocol_receipt_name(PROTO_READ), "read");
}
END_TEST

static const struct {
	const char	*json;
	const char	*field;
	const char	*to;
	uint64_t	 group_id;
} targets[] = {
	{ "{\"to\":\"bob\"}", NULL, "bob", 0 },
	{ "{\"group_id\":17}", NULL, NULL, 17 },
	{ "{\"group_id\":17,\"to\":null}", NULL, NULL, 17 },
	{ "{}", "to", 0, 0 },
	{ "{\"to\":\"bob\",\"group_id\":17}", "to", 0, 0 },
	{ "{\"to\":\"b o b\"}", "to", 0, 0 },
	{ "{\"to\":1}", "to", 0, 0 },
	{ "{\"group_id\":\"17\"}", "group_id", 0, 0 },
	{ "{\"group_id\":false}", "group_id", 0, 0 },
	{ "{\"group_id\":0}", "group_id", 0, 0 },
	{ "{\"group_id\":2.5}", "group_id", 0, 0 },
	{ "[17]", "json", 0, 0 },
};

START_TEST(test_target)
{
	struct json_object *o = J(targets[_i].json);
	struct proto_target t;
	const char *field = NULL, *why = NULL;
	int rc;

	rc = protocol_decode_target(o, &t, &field, &why);
	if (targets[_i].field == NULL) {
		ck_assert_msg(rc == 0, "%s: %s %s", targets[_i].json, field, why);
		if (targets[_i].to != NULL)
			ck_assert_str_eq(t.to, targets[_i].to);
		else
			ck_assert_ptr_null(t.to);
		ck_assert_uint_eq(t.group_id, targets[_i].group_id);
	} else {
		ck_assert_int_eq(rc, -1);
		ck_assert_int_eq(errno, EINVAL);
		ck_assert_str_eq(field, targets[_i].field);
		ck_assert_ptr_null(t.to);
	}
	protocol_target_clear(&t);
	json_object_put(o);
}
END_TEST

static const struct {
	const char	*json;
	const char	*field;
	const char	*name;
	const char	*members;	/* comma-separated, in order */
} groups[] = {
	{ "{\"name\":\"Team\",\"members\":[\"bob\",\"carol\"]}", NULL, "Team", "bob,carol" },
	{ "{\"name\":\"Team\",\"members\":[\"bob\",\"carol\",\"bob\",\"carol\",\"dave\"]}", NULL, "Team",
	    "bob,carol,dave" },
	{ "{\"name\":\"  Team \\u00e9 \"}", NULL, "Team \xc3\xa9", "" },
	{ "{\"name\":\"T\",\"members\":[]}", NULL, "T", "" },
	{ "{\"name\":\"T\",\"members\":null}", NULL, "T", "" },
	{ "{\"members\":[\"bob\"]}", "name", 0, 0 },
	{ "{\"name\":\"\",\"members\":[\"bob\"]}", "name", 0, 0 },
	{ "{\"name\":\"   \"}", "name", 0, 0 },
	{ "{\"name\":5}", "name", 0, 0 },
	{ "{\"name\":\"a\\u0000\"}", "name", 0, 0 },
	{ "{\"name\":\"T\",\"members\":\"bob\"}", "members", 0, 0 },
	{ "{\"name\":\"T\",\"members\":{\"bob\":1}}", "members", 0, 0 },
	{ "{\"name\":\"T\",\"members\":[\"bob\",1]}", "members", 0, 0 },
	{ "{\"name\":\"T\",\"members\":[\"bob\",null]}", "members", 0, 0 },
	{ "{\"name\":\"T\",\"members\":[\"bad id\"]}", "members", 0, 0 },
	{ "{\"name\":\"T\",\"members\":[\"\"]}", "members", 0, 0 },
	{ "[]", "json", 0, 0 },
};

START_TEST(test_group_create)
{
	struct json_object *o = J(groups[_i].json);
	struct proto_group_create g;
	const char *field = NULL, *why = NULL;
	char list[256] = "";
	size_t i;
	int rc;

	rc = protocol_decode_group_create(o, &g, &field, &why);
	if (groups[_i].field == NULL) {
		ck_assert_msg(rc == 0, "%s: %s %s", groups[_i].json, field, why);
		ck_assert_str_eq(g.name, groups[_i].name);
		for (i = 0; i < g.nmembers; i++) {
			if (i > 0)
				strcat(list, ",");
			strcat(list, g.members[i]);
		}
		ck_assert_str_eq(list, groups[_i].members);
	} else {
		ck_assert_int_eq(rc, -1);
		ck_assert_int_eq(errno, EINVAL);
		ck_assert_str_eq(field, groups[_i].field);
		ck_assert_ptr_null(g.name);
		ck_assert_uint_eq(g.nmembers, 0);
	}
	protocol_group_create_clear(&g);
	json_object_put(o);
}
END_TEST

/* Build {"name":name,"members":[n distinct users]}. */
static struct json_object *
group_json(const char *name, size_t n)
{
	struct json_object *o = json_object_new_object(), *a = json_object_new_array();
	char user[32];
	size_t i;

	for (i = 0; i < n; i++) {
		snprintf(user, sizeof user, "user%zu", i);
		json_object_array_add(a, json_object_new_string(user));
	}
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "members", a);
	return o;
}

START_TEST(test_group_limits)
{
	struct proto_group_create g;
	const char *field = NULL, *why = NULL;
	struct json_object *o;
	char *name;

	o = group_json("big", 1000);
	ck_assert_int_eq(protocol_decode_group_create(o, &g, &field, &why), 0);
	ck_assert_uint_eq(g.nmembers, 1000);
	ck_assert_str_eq(g.members[999], "user999");
	protocol_group_create_clear(&g);
	json_object_put(o);

	o = group_json("big", 1001);
	ck_assert_int_eq(protocol_decode_group_create(o, &g, &field, &why), -1);
	ck_assert_str_eq(field, "members");
	json_object_put(o);

	name = repeat("\xc3\xa9", 100);
	o = group_json(name, 1);
	ck_assert_int_eq(protocol_decode_group_create(o, &g, &field, &why), 0);
	ck_assert_str_eq(g.name, name);
	protocol_group_create_clear(&g);
	json_object_put(o);
	free(name);

	name = repeat("a", 101);
	o = group_json(name, 1);
	ck_assert_int_eq(protocol_decode_group_create(o, &g, &field, &why), -1);
	ck_assert_str_eq(field, "name");
	json_object_put(o);
	free(name);
}
END_TEST

static const struct {
	const char	*json;
	const char	*user;	/* NULL: refused */
	const char	*field;
} users[] = {
	{ "{\"user\":\"dave\"}", "dave", 0 },
	{ "{\"user\":\"dave\",\"role\":\"admin\"}", "dave", 0 },
	{ "{}", NULL, "user" },
	{ "{\"user\":null}", NULL, "user" },
	{ "{\"user\":\"da ve\"}", NULL, "user" },
	{ "{\"user\":7}", NULL, "user" },
	{ "[\"dave\"]", NULL, "json" },
};

START_TEST(test_user_field)
{
	struct json_object *o = J(users[_i].json);
	const char *field = NULL, *why = NULL;
	char *user = NULL;
	int rc;

	rc = protocol_decode_user_field(o, &user, &field, &why);
	if (users[_i].user != NULL) {
		ck_assert_int_eq(rc, 0);
		ck_assert_str_eq(user, users[_i].user);
	} else {
		ck_assert_int_eq(rc, -1);
		ck_assert_int_eq(errno, EINVAL);
		ck_assert_str_eq(field, users[_i].field);
		ck_assert_ptr_null(user);
	}
	free(user);
	json_object_put(o);
}
END_TEST

START_TEST(test_room_text)
{
	struct json_object *o;
	const char *field = NULL, *why = NULL;
	char *text = NULL, *s, *js;

	o = J("{\"text\":\"  hey \"}");
	ck_assert_int_eq(protocol_decode_room_text(o, 500, &text, &field, &why), 0);
	ck_assert_str_eq(text, "hey");
	free(text);
	json_object_put(o);

	o = J("{\"txt\":\"hey\"}");
	ck_assert_int_eq(protocol_decode_room_text(o, 500, &text, &field, &why), -1);
	ck_assert_str_eq(field, "text");
	ck_assert_ptr_null(text);
	json_object_put(o);

	o = J("{\"text\":\" \"}");
	ck_assert_int_eq(protocol_decode_room_text(o, 500, &text, &field, &why), -1);
	ck_assert_str_eq(field, "text");
	json_object_put(o);

	o = J("{\"text\":1}");
	ck_assert_int_eq(protocol_decode_room_text(o, 500, &text, &field, &why), -1);
	ck_assert_str_eq(field, "text");
	json_object_put(o);

	s = repeat("\xe2\x82\xac", 500);
	xasprintf(&js, "{\"text\":\"%s\"}", s);
	o = J(js);
	ck_assert_int_eq(protocol_decode_room_text(o, 500, &text, &field, &why), 0);
	ck_assert_str_eq(text, s);
	free(text);
	ck_assert_int_eq(protocol_decode_room_text(o, 499, &text, &field, &why), -1);
	ck_assert_str_eq(field, "text");
	json_object_put(o);
	free(js);
	free(s);
}
END_TEST

/* --- frames --------------------------------------------------------------------------------------- */

static const struct {
	const char	*text;
	const char	*field;		/* NULL: accepted */
	enum proto_frame type;
	const char	*detail;	/* token / room / to / text, to compare */
	uint64_t	 num;		/* after / message_id / group_id */
	const char	*cmid;		/* for refused send_message frames: the id given back */
} frames[] = {
	{ "{\"type\":\"auth\",\"token\":\"abc.def.ghi\"}", NULL, PROTO_F_AUTH, "abc.def.ghi", 0, 0 },
	{ "{\"type\":\"auth\"}", "token", 0, 0, 0, 0 },
	{ "{\"type\":\"auth\",\"token\":\"\"}", "token", 0, 0, 0, 0 },
	{ "{\"type\":\"auth\",\"token\":5}", "token", 0, 0, 0, 0 },
	{ "{\"type\":\"sync\"}", NULL, PROTO_F_SYNC, NULL, 0, 0 },
	{ "{\"type\":\"sync\",\"after\":null}", NULL, PROTO_F_SYNC, NULL, 0, 0 },
	{ "{\"type\":\"sync\",\"after\":0}", NULL, PROTO_F_SYNC, "has_after", 0, 0 },
	{ "{\"type\":\"sync\",\"after\":42}", NULL, PROTO_F_SYNC, "has_after", 42, 0 },
	{ "{\"type\":\"sync\",\"after\":-1}", "after", 0, 0, 0, 0 },
	{ "{\"type\":\"sync\",\"after\":\"5\"}", "after", 0, 0, 0, 0 },
	{ "{\"type\":\"sync\",\"after\":1.5}", "after", 0, 0, 0, 0 },
	{ "{\"type\":\"sync\",\"after\":false}", "after", 0, 0, 0, 0 },
	{ "{\"type\":\"send_message\",\"client_msg_id\":\"c1\",\"to\":\"bob\",\"content\":\" Hi \"}", NULL,
	    PROTO_F_SEND, "bob", 0, 0 },
	{ "{\"type\":\"send_message\",\"client_msg_id\":\"c1\",\"group_id\":17,\"content\":\"Hi\"}", NULL,
	    PROTO_F_SEND, NULL, 17, 0 },
	{ "{\"type\":\"send_message\",\"client_msg_id\":\"c1\",\"to\":\"bob\",\"content\":\"\"}", "content",
	    PROTO_F_SEND, NULL, 0, "c1" },
	{ "{\"type\":\"send_message\",\"client_msg_id\":\"c2\",\"to\":\"bob\",\"content\":\"\xff\"}", "content",
	    PROTO_F_SEND, NULL, 0, "c2" },
	{ "{\"type\":\"send_message\",\"client_msg_id\":\"c3\",\"content\":\"Hi\"}", "to",
	    PROTO_F_SEND, NULL, 0, "c3" },
	{ "{\"type\":\"send_message\",\"client_msg_id\":\"c4\",\"to\":\"bob\",\"group_id\":\"1\",\"content\":\"x\"}",
	    "to", PROTO_F_SEND, NULL, 0, "c4" },
	{ "{\"type\":\"send_message\",\"client_msg_id\":\"c5\",\"group_id\":\"1\",\"content\":\"x\"}",
	    "group_id", PROTO_F_SEND, NULL, 0, "c5" },
	{ "{\"type\":\"send_message\",\"client_msg_id\":5,\"to\":\"bob\",\"content\":\"Hi\"}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"type\":\"send_message\",\"client_msg_id\":\"\",\"to\":\"bob\",\"content\":\"Hi\"}",
	    "client_msg_id", 0, 0, 0, 0 },
	{ "{\"type\":\"send_message\",\"to\":\"bob\",\"content\":\"Hi\"}", "client_msg_id", 0, 0, 0, 0 },
	{ "{\"type\":\"delivered\",\"message_id\":1001}", NULL, PROTO_F_DELIVERED, "delivered", 1001, 0 },
	{ "{\"type\":\"read\",\"message_id\":7,\"status\":\"delivered\"}", NULL, PROTO_F_READ, "read", 7, 0 },
	{ "{\"type\":\"delivered\"}", "message_id", 0, 0, 0, 0 },
	{ "{\"type\":\"read\",\"message_id\":\"7\"}", "message_id", 0, 0, 0, 0 },
	{ "{\"type\":\"read\",\"message_id\":0}", "message_id", 0, 0, 0, 0 },
	{ "{\"type\":\"typing\",\"to\":\"bob\"}", NULL, PROTO_F_TYPING, "bob", 0, 0 },
	{ "{\"type\":\"typing\",\"group_id\":3}", NULL, PROTO_F_TYPING, NULL, 3, 0 },
	{ "{\"type\":\"typing\",\"to\":\"bob\",\"group_id\":3}", "to", 0, 0, 0, 0 },
	{ "{\"type\":\"typing\"}", "to", 0, 0, 0, 0 },
	{ "{\"type\":\"typing\",\"group_id\":true}", "group_id", 0, 0, 0, 0 },
	{ "{\"type\":\"join_room\",\"room\":\"r1\"}", NULL, PROTO_F_JOIN_ROOM, "r1", 0, 0 },
	{ "{\"type\":\"leave_room\",\"room\":\"r1\"}", NULL, PROTO_F_LEAVE_ROOM, "r1", 0, 0 },
	{ "{\"type\":\"join_room\"}", "room", 0, 0, 0, 0 },
	{ "{\"type\":\"join_room\",\"room\":\"r 1\"}", "room", 0, 0, 0, 0 },
	{ "{\"type\":\"leave_room\",\"room\":1}", "room", 0, 0, 0, 0 },
	{ "{\"type\":\"room_message\",\"room\":\"r1\",\"text\":\" hello \"}", NULL, PROTO_F_ROOM_MESSAGE,
	    "hello", 0, 0 },
	{ "{\"type\":\"room_message\",\"room\":\"r1\"}", "text", 0, 0, 0, 0 },
	{ "{\"type\":\"room_message\",\"text\":\"x\"}", "room", 0, 0, 0, 0 },
	{ "{\"type\":\"room_message\",\"room\":\"r1\",\"text\":\"\\t\"}", "text", 0, 0, 0, 0 },
	{ "{\"type\":\"ping\"}", NULL, PROTO_F_PING, 0, 0, 0 },
	{ "{\"type\":\"ping\",\"x\":[1,2]}", NULL, PROTO_F_PING, 0, 0, 0 },
	{ " {\"type\":\"ping\"}\r\n", NULL, PROTO_F_PING, 0, 0, 0 },
	{ "{\"type\":\"history\",\"with\":\"bob\"}", NULL, PROTO_F_HISTORY, "bob", 0, 0 },
	{ "{\"type\":\"history\",\"group_id\":17,\"before\":9,\"limit\":2}", NULL, PROTO_F_HISTORY,
	    NULL, 17, 0 },
	{ "{\"type\":\"history\",\"with\":\"bob\",\"group_id\":17}", "with", 0, 0, 0, 0 },
	{ "{\"type\":\"history\"}", "with", 0, 0, 0, 0 },
	{ "{\"type\":\"history\",\"with\":\"b b\"}", "with", 0, 0, 0, 0 },
	{ "{\"type\":\"history\",\"group_id\":0}", "group_id", 0, 0, 0, 0 },
	{ "{\"type\":\"history\",\"with\":\"bob\",\"before\":0}", "before", 0, 0, 0, 0 },
	{ "{\"type\":\"history\",\"with\":\"bob\",\"before\":\"5\"}", "before", 0, 0, 0, 0 },
	{ "{\"type\":\"history\",\"with\":\"bob\",\"limit\":0}", "limit", 0, 0, 0, 0 },
	{ "{\"type\":\"history\",\"with\":\"bob\",\"limit\":10001}", "limit", 0, 0, 0, 0 },
	{ "{\"type\":\"history\",\"with\":\"bob\",\"limit\":1.5}", "limit", 0, 0, 0, 0 },
	{ "{\"type\":\"pong\"}", "type", 0, 0, 0, 0 },
	{ "{\"type\":\"PING\"}", "type", 0, 0, 0, 0 },
	{ "{\"type\":\"\"}", "type", 0, 0, 0, 0 },
	{ "{\"type\":5}", "type", 0, 0, 0, 0 },
	{ "{\"type\":null}", "type", 0, 0, 0, 0 },
	{ "{\"token\":\"x\"}", "type", 0, 0, 0, 0 },
	{ "{}", "type", 0, 0, 0, 0 },
	{ "not json", "json", 0, 0, 0, 0 },
	{ "", "json", 0, 0, 0, 0 },
	{ "{", "json", 0, 0, 0, 0 },
	{ "{\"type\":\"ping\"", "json", 0, 0, 0, 0 },
	{ "{\"type\":\"ping\"} x", "json", 0, 0, 0, 0 },
	{ "{\"type\":\"ping\"}{}", "json", 0, 0, 0, 0 },
	{ "{\"type\":\"ping\",}", "json", 0, 0, 0, 0 },
	{ "[{\"type\":\"ping\"}]", "json", 0, 0, 0, 0 },
	{ "\"ping\"", "json", 0, 0, 0, 0 },
	{ "null", "json", 0, 0, 0, 0 },
	{ "42", "json", 0, 0, 0, 0 },
};

START_TEST(test_frame)
{
	struct proto_frame_req r;
	const char *field = NULL, *why = NULL, *text = frames[_i].text;
	char *cmid = (char *)"unset";
	int rc;

	errno = 0;
	rc = protocol_decode_frame(text, strlen(text), 4000, 500, &r, &field, &why, &cmid);
	if (frames[_i].field != NULL) {
		ck_assert_msg(rc == -1, "%s accepted", text);
		ck_assert_int_eq(errno, EINVAL);
		ck_assert_msg(field != NULL && strcmp(field, frames[_i].field) == 0,
		    "%s: field %s, expected %s", text, field, frames[_i].field);
		ck_assert_ptr_nonnull(why);
		if (frames[_i].cmid != NULL)
			ck_assert_str_eq(cmid, frames[_i].cmid);
		else
			ck_assert_ptr_null(cmid);
		free(cmid);
		protocol_frame_clear(&r);
		return;
	}
	ck_assert_msg(rc == 0, "%s refused: %s %s", text, field, why);
	ck_assert_ptr_null(cmid);
	ck_assert_int_eq(r.type, frames[_i].type);
	switch (r.type) {
	case PROTO_F_AUTH:
		ck_assert_str_eq(r.token, frames[_i].detail);
		break;
	case PROTO_F_SYNC:
		ck_assert_int_eq(r.has_after, frames[_i].detail != NULL);
		ck_assert_uint_eq(r.after, frames[_i].num);
		break;
	case PROTO_F_SEND:
		ck_assert_str_eq(r.send.client_msg_id, "c1");
		ck_assert_str_eq(r.send.content, "Hi");
		if (frames[_i].detail != NULL)
			ck_assert_str_eq(r.send.to, frames[_i].detail);
		else
			ck_assert_ptr_null(r.send.to);
		ck_assert_uint_eq(r.send.group_id, frames[_i].num);
		break;
	case PROTO_F_DELIVERED:
	case PROTO_F_READ:
		ck_assert_str_eq(protocol_receipt_name(r.receipt.status), frames[_i].detail);
		ck_assert_uint_eq(r.receipt.message_id, frames[_i].num);
		break;
	case PROTO_F_TYPING:
		if (frames[_i].detail != NULL)
			ck_assert_str_eq(r.target.to, frames[_i].detail);
		else
			ck_assert_ptr_null(r.target.to);
		ck_assert_uint_eq(r.target.group_id, frames[_i].num);
		break;
	case PROTO_F_JOIN_ROOM:
	case PROTO_F_LEAVE_ROOM:
		ck_assert_str_eq(r.room, frames[_i].detail);
		break;
	case PROTO_F_ROOM_MESSAGE:
		ck_assert_str_eq(r.room, "r1");
		ck_assert_str_eq(r.text, frames[_i].detail);
		break;
	case PROTO_F_PING:
		break;
	case PROTO_F_HISTORY:
		if (frames[_i].detail != NULL) {
			ck_assert_str_eq(r.history.with, frames[_i].detail);
			ck_assert_uint_eq(r.history.before, 0);
			ck_assert_int_eq(r.history.limit, 0);
		} else {
			ck_assert_ptr_null(r.history.with);
			ck_assert_uint_eq(r.history.before, 9);
			ck_assert_int_eq(r.history.limit, 2);
		}
		ck_assert_uint_eq(r.history.group_id, frames[_i].num);
		break;
	}
	protocol_frame_clear(&r);
}
END_TEST

/* The length given is what counts: bytes after it are not read; a NUL inside is not JSON. */
START_TEST(test_frame_length)
{
	static const char buf[] = "{\"type\":\"ping\"}garbage";
	static const char nul[] = "{\"type\":\"ping\"}\0";
	struct proto_frame_req r;
	const char *field = NULL, *why = NULL;

	ck_assert_int_eq(protocol_decode_frame(buf, 15, 4000, 500, &r, &field, &why, NULL), 0);
	ck_assert_int_eq(r.type, PROTO_F_PING);
	protocol_frame_clear(&r);
	ck_assert_int_eq(protocol_decode_frame(nul, sizeof nul - 1, 4000, 500, &r, &field, &why,
	    NULL), -1);
	ck_assert_str_eq(field, "json");
	protocol_frame_clear(&r);
}
END_TEST

/* The frame limits are the ones passed in: content and room text separately. */
START_TEST(test_frame_limits)
{
	struct proto_frame_req r;
	const char *field = NULL, *why = NULL;
	char *s, *text;

	s = repeat("x", 11);
	xasprintf(&text, "{\"type\":\"send_message\",\"client_msg_id\":\"c\",\"to\":\"b\",\"content\":\"%s\"}", s);
	ck_assert_int_eq(protocol_decode_frame(text, strlen(text), 11, 5, &r, &field, &why, NULL), 0);
	protocol_frame_clear(&r);
	ck_assert_int_eq(protocol_decode_frame(text, strlen(text), 10, 500, &r, &field, &why, NULL), -1);
	ck_assert_str_eq(field, "content");
	free(text);
	xasprintf(&text, "{\"type\":\"room_message\",\"room\":\"r\",\"text\":\"%s\"}", s);
	ck_assert_int_eq(protocol_decode_frame(text, strlen(text), 5, 11, &r, &field, &why, NULL), 0);
	protocol_frame_clear(&r);
	ck_assert_int_eq(protocol_decode_frame(text, strlen(text), 4000, 10, &r, &field, &why, NULL), -1);
	ck_assert_str_eq(field, "text");
	free(text);
	free(s);
}
END_TEST

START_TEST(test_parse_json)
{
	struct json_object *o;

	ck_assert_ptr_null(protocol_parse_json("", 0));
	ck_assert_ptr_null(protocol_parse_json("{} {}", 5));
	ck_assert_ptr_null(protocol_parse_json("[1,]", 4));
	ck_assert_ptr_null(protocol_parse_json("{\"a\":01}", 8));
	o = protocol_parse_json("\t[1]\n", 5);
	ck_assert_ptr_nonnull(o);
	ck_assert(json_object_is_type(o, json_type_array));
	json_object_put(o);
}
END_TEST

/*
 * \u escapes of a lone surrogate: json-c turns them into U+FFFD, which would store a character
 * the client never sent. They are refused like invalid UTF-8, naming the field (a send frame is
 * still acked by its client_msg_id); a proper pair and an escaped U+FFFD are taken.
 */
static const struct {
	const char	*body;
	const char	*field;		/* NULL: accepted */
	const char	*content;	/* the decoded content when accepted */
} surrogates[] = {
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"a\\ud800b\"}", "content", NULL },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"a\\uDBFFb\"}", "content", NULL },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"a\\udc00b\"}", "content", NULL },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"\\ud800\"}", "content", NULL },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"a\\ud800\\u0041\"}", "content", NULL },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"a\\ude00\\ud83d\"}", "content", NULL },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"a\\ud83d\\ud83d\\ude00\"}", "content", NULL },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\\ud800\",\"content\":\"a\"}", "client_msg_id", NULL },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"\\ud83d\\ude00\"}", NULL, "\xf0\x9f\x98\x80" },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"\\ufffd\"}", NULL, "\xef\xbf\xbd" },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"\\\\ud800\"}", NULL, "\\ud800" },
	{ "{\"to\":\"bob\",\"client_msg_id\":\"c\",\"content\":\"x\",\"\\ud800\":1}", NULL, "x" },
};

START_TEST(test_lone_surrogate)
{
	const char *body = surrogates[_i].body, *field = NULL, *why = NULL;
	struct proto_send req;
	struct proto_frame_req fr;
	struct json_object *o;
	char *frame, *cmid = NULL;
	int rc;

	o = protocol_parse_json(body, strlen(body));
	ck_assert_ptr_nonnull(o);
	rc = protocol_decode_send(o, 4000, &req, &field, &why);
	if (surrogates[_i].field == NULL) {
		ck_assert_int_eq(rc, 0);
		ck_assert_str_eq(req.content, surrogates[_i].content);
	} else {
		ck_assert_int_eq(rc, -1);
		ck_assert_str_eq(field, surrogates[_i].field);
	}
	protocol_send_clear(&req);
	json_object_put(o);

	/* The same as a send_message frame. */
	xasprintf(&frame, "{\"type\":\"send_message\",%s", body + 1);
	memset(&fr, 0, sizeof fr);
	field = NULL;
	rc = protocol_decode_frame(frame, strlen(frame), 4000, 1000, &fr, &field, &why, &cmid);
	if (surrogates[_i].field == NULL)
		ck_assert_int_eq(rc, 0);
	else {
		ck_assert_int_eq(rc, -1);
		ck_assert_str_eq(field, surrogates[_i].field);
		if (strcmp(field, "content") == 0)
			ck_assert_str_eq(cmid, "c");
	}
	protocol_frame_clear(&fr);
	free(cmid);
	free(frame);
}
END_TEST

/* --- query numbers --------------------------------------------------------------------------------- */

static const struct {
	const char	*s;
	uint64_t	 min, max;
	int		 ok;
	uint64_t	 v;
} u64s[] = {
	{ "0", 0, 10, 1, 0 },
	{ "10", 0, 10, 1, 10 },
	{ "11", 0, 10, 0, 0 },
	{ "5", 10, 20, 0, 0 },
	{ "00012", 0, 100, 1, 12 },
	{ "0000000000000000000000012", 0, 100, 1, 12 },
	{ "18446744073709551615", 0, UINT64_MAX, 1, UINT64_MAX },
	{ "18446744073709551616", 0, UINT64_MAX, 0, 0 },
	{ "99999999999999999999999", 0, UINT64_MAX, 0, 0 },
	{ "", 0, 10, 0, 0 },
	{ "-1", 0, 10, 0, 0 },
	{ "+1", 0, 10, 0, 0 },
	{ " 1", 0, 10, 0, 0 },
	{ "1 ", 0, 10, 0, 0 },
	{ "1e3", 0, 10000, 0, 0 },
	{ "0x10", 0, 100, 0, 0 },
	{ "1.0", 0, 100, 0, 0 },
	{ "abc", 0, 100, 0, 0 },
};

START_TEST(test_parse_u64)
{
	uint64_t v = 777;
	int rc;

	errno = 0;
	rc = protocol_parse_u64(u64s[_i].s, u64s[_i].min, u64s[_i].max, &v);
	if (u64s[_i].ok) {
		ck_assert_msg(rc == 0, "'%s' refused", u64s[_i].s);
		ck_assert_uint_eq(v, u64s[_i].v);
	} else {
		ck_assert_msg(rc == -1, "'%s' accepted", u64s[_i].s);
		ck_assert_int_eq(errno, EINVAL);
		ck_assert_uint_eq(v, 777);
	}
}
END_TEST

/* --- encoders ---------------------------------------------------------------------------------------- */

/* Compare an encoder's output with the exact expected text, check it is JSON, free it. */
static void
expect_json(char *got, const char *want)
{
	struct json_object *o;

	ck_assert_str_eq(got, want);
	o = protocol_parse_json(got, strlen(got));
	ck_assert_msg(o != NULL, "not JSON: %s", got);
	json_object_put(o);
	free(got);
}

START_TEST(test_encode_new_message)
{
	struct proto_message m = { 1001, "alice", "bob", 0, "Hi", "c-123", 1733160000123LL };

	expect_json(protocol_event_new_message(42, &m),
	    "{\"type\":\"new_message\",\"seq\":42,\"message\":{\"id\":1001,\"from\":\"alice\","
	    "\"to\":\"bob\",\"group_id\":null,\"content\":\"Hi\",\"client_msg_id\":\"c-123\","
	    "\"ts\":1733160000123}}");
	m.group_id = 17;
	m.to = NULL;
	expect_json(protocol_event_new_message(7, &m),
	    "{\"type\":\"new_message\",\"seq\":7,\"message\":{\"id\":1001,\"from\":\"alice\","
	    "\"to\":null,\"group_id\":17,\"content\":\"Hi\",\"client_msg_id\":\"c-123\","
	    "\"ts\":1733160000123}}");
	/* A group message never names a "to", even when one is passed. */
	m.to = "bob";
	expect_json(protocol_event_new_message(7, &m),
	    "{\"type\":\"new_message\",\"seq\":7,\"message\":{\"id\":1001,\"from\":\"alice\","
	    "\"to\":null,\"group_id\":17,\"content\":\"Hi\",\"client_msg_id\":\"c-123\","
	    "\"ts\":1733160000123}}");
	/* seq 0: the seq-free body the log stores. */
	m.group_id = 0;
	expect_json(protocol_event_new_message(0, &m),
	    "{\"type\":\"new_message\",\"message\":{\"id\":1001,\"from\":\"alice\","
	    "\"to\":\"bob\",\"group_id\":null,\"content\":\"Hi\",\"client_msg_id\":\"c-123\","
	    "\"ts\":1733160000123}}");
}
END_TEST

/* Escaping: quotes, backslashes and controls escaped; "/" and non-ASCII written as they are. */
START_TEST(test_encode_escapes)
{
	struct proto_message m = { UINT64_MAX, "a", "b", 0,
	    "q\"b\\s/n\nt\tr\rf\fb\bc\x01\x1f\x7f \xc3\xa9\xf0\x9f\x98\x80\xe2\x80\xa8", "c/1", -5 };
	struct json_object *o, *msg, *v;
	char *got;

	got = protocol_event_new_message(UINT64_MAX, &m);
	ck_assert_str_eq(got,
	    "{\"type\":\"new_message\",\"seq\":18446744073709551615,\"message\":{\"id\":18446744073709551615,"
	    "\"from\":\"a\",\"to\":\"b\",\"group_id\":null,"
	    "\"content\":\"q\\\"b\\\\s/n\\nt\\tr\\rf\\fb\\bc\\u0001\\u001f\x7f \xc3\xa9\xf0\x9f\x98\x80\xe2\x80\xa8\","
	    "\"client_msg_id\":\"c/1\",\"ts\":-5}}");
	/* And json-c reads back exactly what went in. */
	o = protocol_parse_json(got, strlen(got));
	ck_assert_ptr_nonnull(o);
	ck_assert(json_object_object_get_ex(o, "message", &msg));
	ck_assert(json_object_object_get_ex(msg, "content", &v));
	ck_assert_str_eq(json_object_get_string(v), m.content);
	json_object_put(o);
	free(got);
}
END_TEST

START_TEST(test_encode_events)
{
	expect_json(protocol_event_message_status(43, 1001, PROTO_DELIVERED, "bob", 1733160000999LL),
	    "{\"type\":\"message_status\",\"seq\":43,\"message_id\":1001,\"status\":\"delivered\","
	    "\"by\":\"bob\",\"ts\":1733160000999}");
	expect_json(protocol_event_message_status(0, 5, PROTO_READ, "carol", 1),
	    "{\"type\":\"message_status\",\"message_id\":5,\"status\":\"read\",\"by\":\"carol\",\"ts\":1}");
	expect_json(protocol_event_group_update(44, 17, "member_added", "dave", "alice"),
	    "{\"type\":\"group_update\",\"seq\":44,\"group_id\":17,\"action\":\"member_added\","
	    "\"user\":\"dave\",\"by\":\"alice\"}");
	expect_json(protocol_event_group_update(0, 17, "member_removed", "dave", "dave"),
	    "{\"type\":\"group_update\",\"group_id\":17,\"action\":\"member_removed\","
	    "\"user\":\"dave\",\"by\":\"dave\"}");
	expect_json(protocol_event_typing("alice", "bob", 0),
	    "{\"type\":\"typing\",\"from\":\"alice\",\"to\":\"bob\"}");
	expect_json(protocol_event_typing("alice", NULL, 17),
	    "{\"type\":\"typing\",\"from\":\"alice\",\"group_id\":17}");
	expect_json(protocol_event_presence("bob", 1, 1733160000123LL),
	    "{\"type\":\"presence\",\"user\":\"bob\",\"online\":true,\"last_seen\":1733160000123}");
	expect_json(protocol_event_presence("bob", 0, 0),
	    "{\"type\":\"presence\",\"user\":\"bob\",\"online\":false,\"last_seen\":null}");
	expect_json(protocol_event_room_message("r1", 7, "alice", "hey \"you\"", 9),
	    "{\"type\":\"room_message\",\"room\":\"r1\",\"comment\":{\"id\":7,\"user\":\"alice\","
	    "\"text\":\"hey \\\"you\\\"\",\"ts\":9}}");
}
END_TEST

static const struct {
	const char	*body;
	uint64_t	 seq;
	const char	*want;
} with_seqs[] = {
	{ "{\"type\":\"message_status\",\"message_id\":5,\"status\":\"read\",\"by\":\"c\",\"ts\":1}", 43,
	    "{\"type\":\"message_status\",\"seq\":43,\"message_id\":5,\"status\":\"read\",\"by\":\"c\",\"ts\":1}" },
	{ "{\"type\":\"x\"}", 1, "{\"type\":\"x\",\"seq\":1}" },
	{ "{\"type\":\"a\\\"b\\\\\",\"x\":1}", 5, "{\"type\":\"a\\\"b\\\\\",\"seq\":5,\"x\":1}" },
	{ "{\"x\":1,\"type\":\"t\"}", 5, "{\"seq\":5,\"x\":1,\"type\":\"t\"}" },
	{ "{ \"type\" : \"t\" }", 5, "{\"seq\":5,\"type\" : \"t\" }" },
	{ "{}", 9, "{\"seq\":9}" },
	{ "{ }", 9, "{\"seq\":9}" },
};

START_TEST(test_with_seq)
{
	expect_json(protocol_event_with_seq(with_seqs[_i].body, with_seqs[_i].seq), with_seqs[_i].want);
}
END_TEST

/* Stored bodies (seq 0) plus protocol_event_with_seq equal the events encoded with their seq. */
START_TEST(test_with_seq_roundtrip)
{
	struct proto_message m = { 3, "alice", NULL, 9, "x \"y\"", "c", 77 };
	char *body, *a, *b;

	body = protocol_event_new_message(0, &m);
	a = protocol_event_with_seq(body, 123456789);
	b = protocol_event_new_message(123456789, &m);
	ck_assert_str_eq(a, b);
	free(a);
	free(b);
	free(body);
	body = protocol_event_group_update(0, 9, "member_added", "d", "a");
	a = protocol_event_with_seq(body, 2);
	b = protocol_event_group_update(2, 9, "member_added", "d", "a");
	ck_assert_str_eq(a, b);
	free(a);
	free(b);
	free(body);
}
END_TEST

START_TEST(test_events_page)
{
	char *ev[] = { "{\"type\":\"a\",\"seq\":1}", "{\"type\":\"b\",\"seq\":2}" };
	char *big[300], *page;
	size_t i;

	expect_json(protocol_events_page(NULL, 0, 7, -1), "{\"events\":[],\"next\":7}");
	expect_json(protocol_events_page(ev, 1, 1, -1), "{\"events\":[{\"type\":\"a\",\"seq\":1}],\"next\":1}");
	expect_json(protocol_events_page(ev, 2, 2, -1),
	    "{\"events\":[{\"type\":\"a\",\"seq\":1},{\"type\":\"b\",\"seq\":2}],\"next\":2}");
	expect_json(protocol_events_page(ev, 2, 2, 1),
	    "{\"events\":[{\"type\":\"a\",\"seq\":1},{\"type\":\"b\",\"seq\":2}],\"next\":2,\"has_more\":true}");
	expect_json(protocol_events_page(ev, 0, 0, 0), "{\"events\":[],\"next\":0,\"has_more\":false}");
	/* A large page grows its buffer correctly. */
	for (i = 0; i < PARLEY_NITEMS(big); i++)
		xasprintf(&big[i], "{\"type\":\"t\",\"seq\":%zu,\"pad\":\"%0200d\"}", i + 1, 0);
	page = protocol_events_page(big, PARLEY_NITEMS(big), 300, 0);
	ck_assert_ptr_nonnull(strstr(page, "\"seq\":300,"));
	ck_assert_str_eq(page + strlen(page) - strlen("\"}],\"next\":300,\"has_more\":false}"),
	    "\"}],\"next\":300,\"has_more\":false}");
	{
		struct json_object *o = protocol_parse_json(page, strlen(page)), *a;

		ck_assert_ptr_nonnull(o);
		ck_assert(json_object_object_get_ex(o, "events", &a));
		ck_assert_uint_eq(json_object_array_length(a), 300);
		json_object_put(o);
	}
	free(page);
	for (i = 0; i < PARLEY_NITEMS(big); i++)
		free(big[i]);
}
END_TEST

/* History pages (HTTP body and frame), the reset frame, a page with reset. */
START_TEST(test_history_page)
{
	struct proto_message m = { 5, "alice", "bob", 0, "Hi", "c-1", 1733160000123 };
	struct proto_history with = { (char *)"bob", 0, 0, 0 }, group = { NULL, 17, 0, 0 };
	char *msg[2];

	msg[0] = protocol_message(&m);
	expect_json(xstrdup(msg[0]), "{\"id\":5,\"from\":\"alice\",\"to\":\"bob\",\"group_id\":null,"
	    "\"content\":\"Hi\",\"client_msg_id\":\"c-1\",\"ts\":1733160000123}");
	m.id = 4;
	m.group_id = 17;
	msg[1] = protocol_message(&m);
	expect_json(protocol_history_page(&with, 0, NULL, 0, 0), "{\"messages\":[],\"next_before\":null}");
	expect_json(protocol_history_page(&with, 0, msg, 1, 5),
	    "{\"messages\":[{\"id\":5,\"from\":\"alice\",\"to\":\"bob\",\"group_id\":null,\"content\":\"Hi\","
	    "\"client_msg_id\":\"c-1\",\"ts\":1733160000123}],\"next_before\":5}");
	expect_json(protocol_history_page(&with, 1, NULL, 0, 0),
	    "{\"type\":\"history\",\"with\":\"bob\",\"messages\":[],\"next_before\":null}");
	expect_json(protocol_history_page(&group, 1, msg + 1, 1, 0),
	    "{\"type\":\"history\",\"group_id\":17,\"messages\":[{\"id\":4,\"from\":\"alice\",\"to\":null,"
	    "\"group_id\":17,\"content\":\"Hi\",\"client_msg_id\":\"c-1\",\"ts\":1733160000123}],"
	    "\"next_before\":null}");
	expect_json(protocol_event_reset(42), "{\"type\":\"reset\",\"oldest_seq\":42}");
	expect_json(protocol_events_page_reset(NULL, 0, 3, 0, 42),
	    "{\"events\":[],\"next\":3,\"has_more\":false,\"reset\":true,\"oldest_seq\":42}");
	expect_json(protocol_events_page_reset(NULL, 0, 3, -1, 0), "{\"events\":[],\"next\":3}");
	free(msg[0]);
	free(msg[1]);
}
END_TEST

START_TEST(test_encode_errors)
{
	expect_json(protocol_error_body("bad_request", "content: too long"),
	    "{\"error\":{\"code\":\"bad_request\",\"message\":\"content: too long\"}}");
	expect_json(protocol_error_body("not_found", "no \"such\" group/x"),
	    "{\"error\":{\"code\":\"not_found\",\"message\":\"no \\\"such\\\" group/x\"}}");
	expect_json(protocol_error_frame("bad_request", "unknown type"),
	    "{\"type\":\"error\",\"code\":\"bad_request\",\"message\":\"unknown type\"}");
	expect_json(protocol_ack_ok("c-1", 1001, 42, 0),
	    "{\"type\":\"ack\",\"client_msg_id\":\"c-1\",\"status\":\"success\",\"server_msg_id\":1001,"
	    "\"seq\":42,\"duplicate\":false}");
	expect_json(protocol_ack_ok("c-1", 1001, 42, 1),
	    "{\"type\":\"ack\",\"client_msg_id\":\"c-1\",\"status\":\"success\",\"server_msg_id\":1001,"
	    "\"seq\":42,\"duplicate\":true}");
	expect_json(protocol_ack_error("c-1", "forbidden", "not a member"),
	    "{\"type\":\"ack\",\"client_msg_id\":\"c-1\",\"status\":\"error\",\"error\":{\"code\":\"forbidden\","
	    "\"message\":\"not a member\"}}");
	expect_json(protocol_ack_error(NULL, "bad_request", "client_msg_id: required"),
	    "{\"type\":\"ack\",\"client_msg_id\":null,\"status\":\"error\",\"error\":{\"code\":\"bad_request\","
	    "\"message\":\"client_msg_id: required\"}}");
}
END_TEST

static const struct {
	int		 err;
	const char	*code;
	int		 status;
} errnos[] = {
	{ EINVAL, "bad_request", 400 },
	{ EPERM, "unauthorized", 401 },
	{ EACCES, "forbidden", 403 },
	{ ENOENT, "not_found", 404 },
	{ EMSGSIZE, "payload_too_large", 413 },
	{ EBUSY, "rate_limited", 429 },
	{ EAGAIN, "unavailable", 503 },
	{ EIO, "internal", 500 },
	{ ENOMEM, "internal", 500 },
	{ 0, "internal", 500 },
	{ 99999, "internal", 500 },
};

START_TEST(test_errno_map)
{
	ck_assert_str_eq(protocol_errno_code(errnos[_i].err), errnos[_i].code);
	ck_assert_int_eq(protocol_errno_status(errnos[_i].err), errnos[_i].status);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("protocol");
	TCase *tc = tcase_create("protocol");

	tcase_add_loop_test(tc, test_idents, 0, PARLEY_NITEMS(idents));
	tcase_add_test(tc, test_idents_null);
	tcase_add_loop_test(tc, test_utf8, 0, PARLEY_NITEMS(utf8));
	tcase_add_loop_test(tc, test_trim, 0, PARLEY_NITEMS(trims));
	tcase_add_test(tc, test_chars);
	tcase_add_loop_test(tc, test_send, 0, PARLEY_NITEMS(sends));
	tcase_add_test(tc, test_send_not_object);
	tcase_add_loop_test(tc, test_send_utf8, 0, PARLEY_NITEMS(utf8));
	tcase_add_loop_test(tc, test_send_length, 0, PARLEY_NITEMS(lengths));
	tcase_add_test(tc, test_send_length_trimmed);
	tcase_add_loop_test(tc, test_receipt, 0, PARLEY_NITEMS(receipts));
	tcase_add_test(tc, test_receipt_names);
	tcase_add_loop_test(tc, test_target, 0, PARLEY_NITEMS(targets));
	tcase_add_loop_test(tc, test_group_create, 0, PARLEY_NITEMS(groups));
	tcase_add_test(tc, test_group_limits);
	tcase_add_loop_test(tc, test_user_field, 0, PARLEY_NITEMS(users));
	tcase_add_test(tc, test_room_text);
	tcase_add_loop_test(tc, test_frame, 0, PARLEY_NITEMS(frames));
	tcase_add_test(tc, test_frame_length);
	tcase_add_test(tc, test_frame_limits);
	tcase_add_test(tc, test_parse_json);
	tcase_add_loop_test(tc, test_lone_surrogate, 0, PARLEY_NITEMS(surrogates));
	tcase_add_loop_test(tc, test_parse_u64, 0, PARLEY_NITEMS(u64s));
	tcase_add_test(tc, test_encode_new_message);
	tcase_add_test(tc, test_encode_escapes);
	tcase_add_test(tc, test_encode_events);
	tcase_add_loop_test(tc, test_with_seq, 0, PARLEY_NITEMS(with_seqs));
	tcase_add_test(tc, test_with_seq_roundtrip);
	tcase_add_test(tc, test_events_page);
	tcase_add_test(tc, test_history_page);
	tcase_add_test(tc, test_encode_errors);
	tcase_add_loop_test(tc, test_errno_map, 0, PARLEY_NITEMS(errnos));
	suite_add_tcase(s, tc);
	return testenv_run(s);
}
