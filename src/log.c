/* log.c - levelled logging to stderr or syslog, one line per event. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* Set once by log_init() before threads start, read-only afterwards. */
static const char	*log_ident = "parley";
static enum log_level	 log_min = LOG_LEVEL_INFO;
static int		 log_syslog;
static FILE		*log_stream;

static const char *log_names[] = { "debug", "info", "warn", "error" };

void
log_init(const char *ident, enum log_level level, int use_syslog)
{
	log_ident = ident;
	log_min = level;
	log_syslog = use_syslog;
	if (use_syslog)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

int
log_level_parse(const char *s)
{
	size_t i;

	for (i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++) {
		if (strcasecmp(s, log_names[i]) == 0)
			return (int)i;
	}
	return -1;
}

void
log_set_stream(FILE *f)
{
	log_stream = f;
}

/* Format one event into a single line; newlines in the text are flattened so a line is an event. */
static void
log_vwrite(enum log_level level, const char *fmt, va_list ap)
{
	static const int prio[] = { LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR };
	char msg[1024], stamp[32], *p;
	struct timespec ts;
	struct tm tm;
	FILE *f;

	if (level < log_min)
		return;
	vsnprintf(msg, sizeof msg, fmt, ap);
	for (p = msg; *p != '\0'; p++) {
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	}
	if (log_syslog) {
		syslog(prio[level], "%s", msg);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
	f = log_stream != NULL ? log_stream : stderr;
	/* One fprintf per line: stdio locks the stream, so lines from threads never interleave. */
	fprintf(f, "%s.%03ldZ %s[%ld] %s: %s\n", stamp, ts.tv_nsec / 1000000, log_ident,
	    (long)getpid(), log_names[level], msg);
	fflush(f);
}

#define LOG_FN(name, level)				\
void							\
name(const char *fmt, ...)				\
{							\
	va_list ap;					\
							\
	va_start(ap, fmt);				\
	log_vwrite(level, fmt, ap);			\
	va_end(ap);					\
}

LOG_FN(log_debug, LOG_LEVEL_DEBUG)
LOG_FN(log_info, LOG_LEVEL_INFO)
LOG_FN(log_warn, LOG_LEVEL_WARN)
LOG_FN(log_error, LOG_LEVEL_ERROR)

void
fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_ERROR, fmt, ap);
	va_end(ap);
	exit(1);
}
