/* metrics.h - process counters and gauges, rendered in the Prometheus text exposition format. */
#ifndef METRICS_H
#define METRICS_H

#include <stdint.h>

/*
 * A fixed table of named counters, updated with atomics from any thread. Each daemon owns one
 * struct metrics (no globals) and renders it for GET /metrics.
 */
enum metric {
	M_HTTP_REQUESTS,	/* requests answered, any status */
	M_HTTP_ERRORS,		/* answers with status >= 400 */
	M_MESSAGES_SENT,	/* new messages stored (not duplicates) */
	M_MESSAGES_DUPLICATE,	/* sends answered from an earlier identical client_msg_id */
	M_POLLS_PARKED,		/* gauge: long polls waiting now */
	M_POLLS_WOKEN,		/* parked polls answered by an event */
	M_POLLS_TIMED_OUT,	/* parked polls answered empty by their timeout */
	M_POLLS_GONE,		/* parked polls whose client hung up */
	M_WS_CONNECTIONS,	/* gauge: open WebSockets */
	M_WS_FRAMES_IN,
	M_WS_FRAMES_OUT,
	M_WS_SLOW_CLOSED,	/* closed because their outbound queue was full */
	M_WS_IDLE_CLOSED,	/* dropped after ws.idle_timeout with nothing received */
	M_WS_SEND_BATCHES,	/* group commits of WebSocket sends */
	M_BUS_HINTS_IN,
	M_STORE_ERRORS,		/* MySQL failures seen by requests */
	M_METRIC_COUNT
};

struct metrics {
	uint64_t	v[M_METRIC_COUNT];
};

void	metrics_add(struct metrics *, enum metric, int64_t delta);
uint64_t metrics_get(struct metrics *, enum metric);
/*
 * Append the exposition text (# HELP, # TYPE, name value) for every metric, plus extra (already
 * formatted lines, may be NULL), to a new string. Caller frees.
 */
char	*metrics_render(struct metrics *, const char *prefix, const char *extra);

#endif
