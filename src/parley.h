/* parley.h - definitions shared by every part of Parley: limits of identifiers and common macros. */
#ifndef PARLEY_H
#define PARLEY_H

#include <stddef.h>
#include <stdint.h>

/* A user id, device id, client_msg_id or room name: 1..64 bytes (protocol.md). */
#define PARLEY_ID_MAX 64

#define PARLEY_NITEMS(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Errors cross module boundaries as errno values (functions return -1 and set errno), so that
 * every layer speaks the same language. protocol_errno_code() turns them into the contract's codes:
 *   EINVAL bad_request, EPERM unauthorized, EACCES forbidden, ENOENT not_found,
 *   EMSGSIZE payload_too_large, EBUSY rate_limited, EAGAIN unavailable, anything else internal.
 */

/* Milliseconds since the epoch, wall clock (event timestamps). */
int64_t parley_now_ms(void);
/* Milliseconds on the monotonic clock (timeouts, latencies). */
int64_t parley_mono_ms(void);

#endif
