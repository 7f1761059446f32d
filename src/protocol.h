/* protocol.h - the JSON wire contract (shared/spec/protocol.md): strict decoding, canonical encoding. */
#ifndef PROTOCOL_H
#define PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#include "parley.h"

struct json_object;

/*
 * Decoding is strict about what it reads and lenient about what it does not: unknown fields are
 * ignored; a known field of the wrong type, size or encoding fails with errno EINVAL,
 * *field naming it (static string, do not free) and *why a short human reason (static string).
 * All decoded strings are copies owned by the struct; free with the matching _clear().
 */

/* Identifier checks (user ids: [A-Za-z0-9_.@+-], 1..64 bytes). 1 when valid. */
int	protocol_valid_user(const char *);
int	protocol_valid_id(const char *);	/* client_msg_id, device id: 1..64 bytes, printable, no controls */
int	protocol_valid_room(const char *);	/* same alphabet as users */
/* Is buf[0..len) valid UTF-8 (no overlongs, surrogates or > U+10FFFF)? */
int	protocol_valid_utf8(const char *, size_t);
/* Trim leading/trailing Unicode white space in place-ish: returns a new string (caller frees). */
char	*protocol_trim(const char *);
/* Number of Unicode code points in a valid UTF-8 string. */
size_t	protocol_utf8_chars(const char *);

/* POST /messages and the send_message frame. Exactly one of to / group_id is set. */
struct proto_send {
	char		*to;		/* NULL for a group message */
	uint64_t	 group_id;	/* 0 for a 1:1 message */
	char		*content;	/* already trimmed */
	char		*client_msg_id;
};
/* max_chars: the configured content limit (characters after trimming). */
int	protocol_decode_send(struct json_object *, int max_chars, struct proto_send *,
	    const char **field, const char **why);
void	protocol_send_clear(struct proto_send *);

/* POST /receipts and the delivered / read frames. */
enum proto_receipt { PROTO_DELIVERED = 1, PROTO_READ = 2 };
struct proto_receipt_req {
	uint64_t		message_id;
	enum proto_receipt	status;
};
int	protocol_decode_receipt(struct json_object *, struct proto_receipt_req *,
	    const char **field, const char **why);
const char *protocol_receipt_name(enum proto_receipt);

/* POST /typing and the typing frame: exactly one of to / group_id. */
struct proto_target {
	char		*to;
	uint64_t	 group_id;
};
int	protocol_decode_target(struct json_object *, struct proto_target *,
	    const char **field, const char **why);
void	protocol_target_clear(struct proto_target *);

/* POST /groups. */
struct proto_group_create {
	char	 *name;		/* 1..100 characters */
	char	**members;	/* valid user ids, de-duplicated, in request order (may name the creator: the store adds it once) */
	size_t	  nmembers;	/* at most 1000 */
};
int	protocol_decode_group_create(struct json_object *, struct proto_group_create *,
	    const char **field, const char **why);
void	protocol_group_create_clear(struct proto_group_create *);

/* POST /groups/{id}/members: {"user":"dave"}. Returns a copy in *user (caller frees). */
int	protocol_decode_user_field(struct json_object *, char **user, const char **field, const char **why);

/* POST /rooms/{room}/messages and the room_message frame: "text", trimmed, 1..max_chars. */
int	protocol_decode_room_text(struct json_object *, int max_chars, char **text,
	    const char **field, const char **why);

/* WebSocket client frames. */
enum proto_frame {
	PROTO_F_AUTH, PROTO_F_SYNC, PROTO_F_SEND, PROTO_F_DELIVERED, PROTO_F_READ, PROTO_F_TYPING,
	PROTO_F_JOIN_ROOM, PROTO_F_LEAVE_ROOM, PROTO_F_ROOM_MESSAGE, PROTO_F_PING, PROTO_F_HISTORY
};

/*
 * A history page request (GET /conversations/{user}/messages, GET /groups/{id}/messages, the
 * history frame): exactly one of with / group_id; before 0 = from the newest; limit 0 = the
 * default. The frame decoder takes any limit from 1 to PROTO_HISTORY_LIMIT_MAX; the daemon checks
 * it against its configured maximum.
 */
#define PROTO_HISTORY_LIMIT_MAX		10000
#define PROTO_HISTORY_LIMIT_DEFAULT	50
struct proto_history {
	char		*with;		/* the peer of a 1:1 conversation, or NULL */
	uint64_t	 group_id;	/* 0 for a 1:1 conversation */
	uint64_t	 before;	/* only messages with id < before; 0: no bound */
	int		 limit;		/* 0: not given */
};
struct proto_frame_req {
	enum proto_frame		type;
	char				*token;		/* AUTH */
	int				 has_after;	/* SYNC */
	uint64_t			 after;
	struct proto_send		 send;		/* SEND */
	struct proto_receipt_req	 receipt;	/* DELIVERED / READ */
	struct proto_target		 target;	/* TYPING */
	char				*room;		/* *_ROOM */
	char				*text;		/* ROOM_MESSAGE */
	struct proto_history		 history;	/* HISTORY */
};
/*
 * Decode one text frame. -1/EINVAL with *field and *why for bad JSON ("json"), unknown type ("type")
 * or a bad field. On failure of a send_message frame, *client_msg_id is set when one could be read
 * (so the ack error can name it; caller frees).
 */
int	protocol_decode_frame(const char *buf, size_t len, int content_max_chars, int room_max_chars,
	    struct proto_frame_req *, const char **field, const char **why, char **client_msg_id);
void	protocol_frame_clear(struct proto_frame_req *);
void	protocol_history_clear(struct proto_history *);

/*
 * Parse a JSON text (an HTTP body, a frame): strict JSON, nothing but white space after it.
 * NULL when it is not JSON. Caller json_object_put()s the result.
 */
struct json_object *protocol_parse_json(const char *buf, size_t len);

/* Query strings: parse an unsigned decimal in [min,max]; -1/EINVAL otherwise. */
int	protocol_parse_u64(const char *, uint64_t min, uint64_t max, uint64_t *out);

/*
 * Encoding. Every function returns a new NUL-terminated JSON text (caller frees): compact, keys in
 * the contract's order, "/" and non-ASCII not escaped. A NULL string argument is written as null.
 * For the durable events, seq 0 leaves "seq" out: the seq-free body the log stores (seqs start
 * at 1), to be completed by protocol_event_with_seq().
 */
struct proto_message {
	uint64_t	 id;
	const char	*from;
	const char	*to;		/* NULL for group messages */
	uint64_t	 group_id;	/* 0 for 1:1 */
	const char	*content;
	const char	*client_msg_id;
	int64_t		 ts;
};
/* {"type":"new_message","seq":N,"message":{...}} */
char	*protocol_event_new_message(uint64_t seq, const struct proto_message *);
/* {"type":"message_status","seq":N,"message_id":..,"status":..,"by":..,"ts":..} */
char	*protocol_event_message_status(uint64_t seq, uint64_t message_id, enum proto_receipt,
	    const char *by, int64_t ts);
/* {"type":"group_update","seq":N,"group_id":..,"action":..,"user":..,"by":..} */
char	*protocol_event_group_update(uint64_t seq, uint64_t group_id, const char *action,
	    const char *user, const char *by);
/* {"type":"typing","from":..,"to":..} or with "group_id" */
char	*protocol_event_typing(const char *from, const char *to, uint64_t group_id);
/* {"type":"presence","user":..,"online":..,"last_seen":..} (last_seen null when 0) */
char	*protocol_event_presence(const char *user, int online, int64_t last_seen);
/* {"type":"room_message","room":..,"comment":{"id":..,"user":..,"text":..,"ts":..}} */
char	*protocol_event_room_message(const char *room, uint64_t id, const char *user,
	    const char *text, int64_t ts);
/* Put "seq" into a stored event body that was kept without it (the log stores bodies seq-free). */
char	*protocol_event_with_seq(const char *body, uint64_t seq);

/* {"events":[e1,e2,...],"next":N} plus ,"has_more":bool when has_more >= 0. events are JSON texts. */
char	*protocol_events_page(char *const *events, size_t n, uint64_t next, int has_more);
/*
 * The same, and when oldest_seq is not 0 (the page's after lay before the oldest event kept)
 * ,"reset":true,"oldest_seq":N at its end.
 */
char	*protocol_events_page_reset(char *const *events, size_t n, uint64_t next, int has_more,
	    uint64_t oldest_seq);
/* {"type":"reset","oldest_seq":N}: sent before the replay of a sync whose after was pruned. */
char	*protocol_event_reset(uint64_t oldest_seq);
/* A message object as in new_message: {"id":..,"from":..,"to":..,"group_id":..,...,"ts":..} */
char	*protocol_message(const struct proto_message *);
/*
 * A history page: {"messages":[m1,..],"next_before":ID|null} (next_before 0 writes null); with
 * frame set, the history frame {"type":"history","with":..|"group_id":..,"messages":..,..}.
 * messages are JSON texts of protocol_message.
 */
char	*protocol_history_page(const struct proto_history *, int frame, char *const *messages,
	    size_t n, uint64_t next_before);

/* Errors. */
/* The contract's code for an errno (see parley.h): "bad_request", ..., "internal". */
const char *protocol_errno_code(int err);
/* The HTTP status for an errno: 400, 401, 403, 404, 413, 429, 503, 500. */
int	protocol_errno_status(int err);
/* {"error":{"code":..,"message":..}} */
char	*protocol_error_body(const char *code, const char *message);
/* {"type":"error","code":..,"message":..} */
char	*protocol_error_frame(const char *code, const char *message);
/*
 * {"type":"ack","client_msg_id":..,"status":"success","server_msg_id":..,"seq":..,"duplicate":..}:
 * duplicate is true when a retry was answered from the first send (as HTTP's answer says).
 */
char	*protocol_ack_ok(const char *client_msg_id, uint64_t server_msg_id, uint64_t seq,
	    int duplicate);
/* {"type":"ack","client_msg_id":..,"status":"error","error":{"code":..,"message":..}} */
char	*protocol_ack_error(const char *client_msg_id, const char *code, const char *message);

#endif
