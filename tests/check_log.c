/* check_log.c - logging: level names, the level filter, one line per event, fatal(). */
#include <check.h>

#include "testenv.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "parley.h"

static FILE *out;

static void
setup(void)
{
	out = tmpfile();
	ck_assert_ptr_nonnull(out);
	log_set_stream(out);
}

static void
teardown(void)
{
	log_set_stream(NULL);
	fclose(out);
}

/* Everything logged so far, as lines (NULL-terminated array into one buffer; caller frees both). */
static char **
read_lines(size_t *n)
{
	static char buf[65536];
	char **lines, *p, *nl;
	size_t len;

	fflush(out);
	rewind(out);
	len = fread(buf, 1, sizeof buf - 1, out);
	buf[len] = '\0';
	lines = calloc(len + 2, sizeof *lines);
	*n = 0;
	for (p = buf; *p != '\0'; p = nl + 1) {
		nl = strchr(p, '\n');
		ck_assert_msg(nl != NULL, "unterminated line: %s", p);
		*nl = '\0';
		lines[(*n)++] = p;
	}
	return lines;
}

static const struct {
	const char	*name;
	int		 level;
} level_names[] = {
	{ "debug", LOG_LEVEL_DEBUG },
	{ "info", LOG_LEVEL_INFO },
	{ "warn", LOG_LEVEL_WARN },
	{ "error", LOG_LEVEL_ERROR },
	{ "DEBUG", LOG_LEVEL_DEBUG },
	{ "Warn", LOG_LEVEL_WARN },
	{ "warning", -1 },
	{ "err", -1 },
	{ "", -1 },
	{ "info ", -1 },
	{ "trace", -1 },
};

START_TEST(test_level_parse)
{
	ck_assert_int_eq(log_level_parse(level_names[_i].name), level_names[_i].level);
}
END_TEST

/* At each minimum level exactly the events at or above it are written, in order. */
START_TEST(test_filter)
{
	static const char *names[] = { "debug", "info", "warn", "error" };
	enum log_level min = (enum log_level)_i;
	char **lines, want[64];
	size_t n, i;

	log_init("check_log", min, 0);
	log_debug("event %d", 0);
	log_info("event %d", 1);
	log_warn("event %d", 2);
	log_error("event %d", 3);
	lines = read_lines(&n);
	ck_assert_uint_eq(n, 4 - (size_t)min);
	for (i = 0; i < n; i++) {
		snprintf(want, sizeof want, " %s: event %zu", names[min + i], min + i);
		ck_assert_msg(strstr(lines[i], want) != NULL, "line '%s' lacks '%s'", lines[i], want);
		ck_assert_msg(strstr(lines[i], "check_log[") != NULL, "no ident: %s", lines[i]);
	}
	free(lines);
}
END_TEST

/* Newlines inside a message never split an event over several lines. */
START_TEST(test_one_line)
{
	char **lines;
	size_t n;

	log_init("check_log", LOG_LEVEL_DEBUG, 0);
	log_warn("first\nsecond\r\nthird");
	log_info("%s", "a\nb");
	lines = read_lines(&n);
	ck_assert_uint_eq(n, 2);
	ck_assert_ptr_nonnull(strstr(lines[0], "warn: first second  third"));
	ck_assert_ptr_nonnull(strstr(lines[1], "info: a b"));
	free(lines);
}
END_TEST

/* A message longer than the line buffer is cut, still one line. */
START_TEST(test_long_message)
{
	char big[5000], **lines;
	size_t n;

	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	log_init("check_log", LOG_LEVEL_INFO, 0);
	log_info("%s", big);
	log_info("after");
	lines = read_lines(&n);
	ck_assert_uint_eq(n, 2);
	ck_assert_ptr_nonnull(strstr(lines[0], "xxxxxxxx"));
	ck_assert_uint_lt(strlen(lines[0]), 1200);
	ck_assert_ptr_nonnull(strstr(lines[1], "info: after"));
	free(lines);
}
END_TEST

/* Each line starts with an ISO-8601 UTC timestamp with milliseconds. */
START_TEST(test_timestamp)
{
	char **lines;
	size_t n;
	int y, mo, d, h, mi, s, ms;

	log_init("check_log", LOG_LEVEL_INFO, 0);
	log_info("stamped");
	lines = read_lines(&n);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(sscanf(lines[0], "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ ", &y, &mo, &d, &h, &mi, &s,
	    &ms), 7);
	ck_assert_int_ge(y, 2024);
	ck_assert_int_eq(lines[0][23], 'Z');
	free(lines);
}
END_TEST

/* fatal() logs at error level and exits with status 1. */
START_TEST(test_fatal)
{
	char **lines;
	size_t n;
	pid_t pid;
	int status;

	log_init("check_log", LOG_LEVEL_ERROR, 0);
	fflush(out);
	if ((pid = fork()) == 0)
		fatal("giving up: %s", "reason");
	ck_assert_int_gt(pid, 0);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 1);
	lines = read_lines(&n);
	ck_assert_uint_eq(n, 1);
	ck_assert_ptr_nonnull(strstr(lines[0], "error: giving up: reason"));
	free(lines);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("log");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_level_parse, 0, PARLEY_NITEMS(level_names));
	tcase_add_loop_test(tc, test_filter, LOG_LEVEL_DEBUG, LOG_LEVEL_ERROR + 1);
	tcase_add_test(tc, test_one_line);
	tcase_add_test(tc, test_long_message);
	tcase_add_test(tc, test_timestamp);
	tcase_add_test(tc, test_fatal);
	suite_add_tcase(s, tc);
	return testenv_run(s);
}
