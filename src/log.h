/* log.h - levelled logging to stderr or syslog, one line per event. */
#ifndef LOG_H
#define LOG_H

#include <stdio.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* Called once at start-up, before any thread exists. ident names the program in each line. */
void log_init(const char *ident, enum log_level level, int use_syslog);
/* Parse "debug", "info", "warn" or "error"; -1 when unknown. */
int  log_level_parse(const char *);
/* Any thread may log; each call writes exactly one line. Never pass secrets (tokens, passwords). */
void log_debug(const char *, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char *, ...) __attribute__((format(printf, 1, 2)));
/* Only at start-up or for a broken invariant: logs and exits with status 1. */
void fatal(const char *, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Redirect stderr logging to a stream (tests); NULL restores stderr. */
void log_set_stream(FILE *);

#endif
