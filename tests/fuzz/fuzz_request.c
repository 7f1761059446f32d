/* fuzz_request.c - libFuzzer target: HTTP request bodies through protocol_parse_json and every body decoder. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "protocol.h"

/* A decoder's output must hold what its contract promises; anything else is a bug: abort. */
static void
check(int ok)
{
	if (!ok)
		abort();
}

/* Input: one selector byte (which route's decoder), then the body. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proto_group_create g;
	struct proto_receipt_req r;
	struct proto_target t;
	struct proto_send s;
	struct json_object *o;
	const char *field, *why;
	char *text;
	size_t i;

	if (size < 1)
		return 0;
	o = protocol_parse_json((const char *)data + 1, size - 1);
	field = why = NULL;
	switch (data[0] % 6) {
	case 0:
		if (protocol_decode_send(o, 4000, &s, &field, &why) == 0) {
			check((s.to == NULL) != (s.group_id == 0));
			check(protocol_valid_utf8(s.content, strlen(s.content)));
			check(protocol_utf8_chars(s.content) >= 1 && protocol_utf8_chars(s.content) <= 4000);
			check(protocol_valid_id(s.client_msg_id));
			check(s.to == NULL || protocol_valid_user(s.to));
		} else
			check(field != NULL && why != NULL);
		protocol_send_clear(&s);
		break;
	case 1:
		if (protocol_decode_receipt(o, &r, &field, &why) == 0)
			check(r.message_id > 0 && protocol_receipt_name(r.status) != NULL);
		else
			check(field != NULL && why != NULL);
		break;
	case 2:
		if (protocol_decode_target(o, &t, &field, &why) == 0)
			check((t.to == NULL) != (t.group_id == 0));
		else
			check(field != NULL && why != NULL);
		protocol_target_clear(&t);
		break;
	case 3:
		if (protocol_decode_group_create(o, &g, &field, &why) == 0) {
			check(g.nmembers <= 1000);
			for (i = 0; i < g.nmembers; i++)
				check(protocol_valid_user(g.members[i]));
			check(protocol_valid_utf8(g.name, strlen(g.name)));
		} else
			check(field != NULL && why != NULL);
		protocol_group_create_clear(&g);
		break;
	case 4:
		text = NULL;
		if (protocol_decode_user_field(o, &text, &field, &why) == 0)
			check(protocol_valid_user(text));
		free(text);
		break;
	case 5:
		text = NULL;
		if (protocol_decode_room_text(o, 1000, &text, &field, &why) == 0)
			check(protocol_valid_utf8(text, strlen(text)) && protocol_utf8_chars(text) <= 1000);
		free(text);
		break;
	}
	json_object_put(o);
	return 0;
}
