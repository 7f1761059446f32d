/* fuzz_frame.c - libFuzzer target: WebSocket client frames (the text parley-ws hands to protocol_decode_frame). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "protocol.h"

static void
check(int ok)
{
	if (!ok)
		abort();
}

/*
 * What is accepted must come out again unchanged: the new_message event the recipient gets,
 * parsed back, holds the very content and client_msg_id (the encoder escapes what JSON needs).
 */
static void
check_roundtrip(const struct proto_send *s)
{
	struct proto_message m = { .id = 1, .from = "a", .to = s->to, .group_id = s->group_id,
	    .content = s->content, .client_msg_id = s->client_msg_id, .ts = 1 };
	struct json_object *o, *msg, *v;
	char *ev = protocol_event_new_message(7, &m);

	o = protocol_parse_json(ev, strlen(ev));
	check(o != NULL && json_object_object_get_ex(o, "message", &msg));
	check(json_object_object_get_ex(msg, "content", &v) &&
	    strcmp(json_object_get_string(v), s->content) == 0);
	check(json_object_object_get_ex(msg, "client_msg_id", &v) &&
	    strcmp(json_object_get_string(v), s->client_msg_id) == 0);
	json_object_put(o);
	free(ev);
}

/*
 * The frame's text as lws delivers it (any bytes: UTF-8 validation of text frames is lws's opt-in
 * and may be off). The framing itself is libwebsockets' own code, not ours.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proto_frame_req r;
	const char *field = NULL, *why = NULL;
	char *cmid = NULL;

	memset(&r, 0, sizeof r);
	if (protocol_decode_frame((const char *)data, size, 4000, 1000, &r, &field, &why, &cmid) == 0) {
		switch (r.type) {
		case PROTO_F_SEND:
			check(protocol_valid_utf8(r.send.content, strlen(r.send.content)));
			check(protocol_valid_id(r.send.client_msg_id));
			check_roundtrip(&r.send);
			break;
		case PROTO_F_JOIN_ROOM:
		case PROTO_F_LEAVE_ROOM:
			check(protocol_valid_room(r.room));
			break;
		case PROTO_F_ROOM_MESSAGE:
			check(protocol_valid_room(r.room));
			check(protocol_valid_utf8(r.text, strlen(r.text)));
			break;
		default:
			break;
		}
		check(cmid == NULL);
	} else {
		check(field != NULL && why != NULL);
		check(cmid == NULL || protocol_valid_id(cmid));
	}
	protocol_frame_clear(&r);
	free(cmid);
	return 0;
}
