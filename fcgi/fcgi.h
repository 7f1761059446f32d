/* fcgi.h - the parley-fcgi process: the state its request threads, loop and workers share. */
#ifndef FCGI_H
#define FCGI_H

#include <stdint.h>

#include "config.h"
#include "metrics.h"

struct bus;
struct cache_journal;
struct redis;
struct park;

/*
 * One per process, set up by main() before any thread starts. After that only the atomics
 * (metrics, stopping) change; everything else is read-only or has its own lock (bus, park).
 */
struct fcgi_app {
	struct config	 cfg;
	struct metrics	 metrics;
	struct bus	*bus;
	struct redis	*redis;		/* the bridge to the other hosts; NULL without redis.url */
	struct cache_journal *journal;	/* every thread's cache shares it */
	struct park	*park;
	int		 listen_fd;
	int		 stop_fd;	/* eventfd, readable once shutdown began */
	int		 stopping;	/* atomic */
	int64_t		 started_ms;
};

#endif
