/* scrape.h - fetch and read a daemon's /metrics: over FastCGI (parley-fcgi) or HTTP (parley-ws). */
#ifndef SCRAPE_H
#define SCRAPE_H

#include <stddef.h>

/*
 * Used by parleyctl only (blocking I/O with a timeout; never on a daemon's event loop).
 * A sample is the metrics of one scrape: name (with any {labels}), value, and whether the
 * exposition declared it a counter (rates make sense) or a gauge.
 */
struct scrape_metric {
	char	*name;
	double	 value;
	int	 counter;
};
struct scrape_sample {
	struct scrape_metric	*v;
	size_t			 n;
};

/*
 * GET /metrics from parley-fcgi by speaking FastCGI to its socket: addr is a UNIX socket path or
 * host:port (as fcgi.listen). bearer (may be NULL) goes in as the Authorization header. On
 * success 0 and the body in *body (caller frees); -1 with *cause set (caller frees) otherwise.
 */
int	scrape_fcgi(const char *addr, const char *bearer, int timeout_ms, char **body, char **cause);
/* GET /metrics from host:port over plain HTTP/1.0 (parley-ws's own port). As scrape_fcgi. */
int	scrape_http(const char *host, int port, const char *bearer, int timeout_ms, char **body,
	    char **cause);
/* Read Prometheus text exposition into s (cleared first). Lines it cannot read are skipped. */
void	scrape_parse(const char *text, struct scrape_sample *s);
/* The value of name in s, or -1 when s has no such metric. */
double	scrape_get(const struct scrape_sample *s, const char *name);
/* Free what s holds (s itself is the caller's); s is left empty. */
void	scrape_clear(struct scrape_sample *s);

#endif
