/* metrics.c - process counters and gauges, rendered in the Prometheus text exposition format. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "log.h"
#include "xmalloc.h"

struct metric_desc {
	const char	*name;
	const char	*type;
	const char	*help;
};

static const struct metric_desc metric_descs[M_METRIC_COUNT] = {
	[M_HTTP_REQUESTS] = { "http_requests_total", "counter", "HTTP requests answered" },
	[M_HTTP_ERRORS] = { "http_errors_total", "counter", "HTTP answers with status >= 400" },
	[M_MESSAGES_SENT] = { "messages_sent_total", "counter", "messages stored" },
	[M_MESSAGES_DUPLICATE] = { "messages_duplicate_total", "counter",
	    "sends answered from an earlier identical client_msg_id" },
	[M_POLLS_PARKED] = { "polls_parked", "gauge", "long polls waiting now" },
	[M_POLLS_WOKEN] = { "polls_woken_total", "counter", "parked polls answered by an event" },
	[M_POLLS_TIMED_OUT] = { "polls_timed_out_total", "counter", "parked polls answered by timeout" },
	[M_POLLS_GONE] = { "polls_gone_total", "counter", "parked polls whose client hung up" },
	[M_WS_CONNECTIONS] = { "ws_connections", "gauge", "open WebSocket connections" },
	[M_WS_FRAMES_IN] = { "ws_frames_in_total", "counter", "WebSocket frames received" },
	[M_WS_FRAMES_OUT] = { "ws_frames_out_total", "counter", "WebSocket frames sent" },
	[M_WS_SLOW_CLOSED] = { "ws_slow_closed_total", "counter",
	    "WebSockets closed because their outbound queue was full" },
	[M_WS_IDLE_CLOSED] = { "ws_idle_closed_total", "counter",
	    "WebSockets dropped after ws.idle_timeout with nothing received" },
	[M_WS_SEND_BATCHES] = { "ws_send_batches_total", "counter",
	    "group commits of WebSocket sends (one transaction each)" },
	[M_BUS_HINTS_IN] = { "bus_hints_received_total", "counter", "bus hints received" },
	[M_STORE_ERRORS] = { "store_errors_total", "counter", "MySQL failures seen by requests" },
};

void
metrics_add(struct metrics *m, enum metric k, int64_t delta)
{
	__atomic_add_fetch(&m->v[k], (uint64_t)delta, __ATOMIC_RELAXED);
}

uint64_t
metrics_get(struct metrics *m, enum metric k)
{
	return __atomic_load_n(&m->v[k], __ATOMIC_RELAXED);
}

char *
metrics_render(struct metrics *m, const char *prefix, const char *extra)
{
	char *buf;
	size_t len;
	FILE *f;
	int k;

	if ((f = open_memstream(&buf, &len)) == NULL)
		fatal("open_memstream failed");
	for (k = 0; k < M_METRIC_COUNT; k++) {
		const struct metric_desc *d = &metric_descs[k];

		fprintf(f, "# HELP %s_%s %s\n# TYPE %s_%s %s\n%s_%s %llu\n", prefix, d->name, d->help,
		    prefix, d->name, d->type, prefix, d->name,
		    (unsigned long long)metrics_get(m, (enum metric)k));
	}
	if (extra != NULL)
		fputs(extra, f);
	fclose(f);
	return buf;
}
