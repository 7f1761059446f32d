/* check_http.c - fcgi/http.c: a parked request's raw FastCGI answer, waiting and not waiting. */
#include <check.h>

#include <sys/socket.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fastcgi.h>

#include "http.h"
#include "parley.h"
#include "testenv.h"
#include "xmalloc.h"

/* A 200 answer with this JSON body. */
static void
resp_json(struct http_resp *resp, const char *json)
{
	memset(resp, 0, sizeof *resp);
	resp->status = 200;
	resp->body = (char *)json;
	resp->len = strlen(json);
}

/* Fill fd's way to its peer (which never reads) until a write would block. */
static void
fill(int fd)
{
	char buf[4096];
	ssize_t n;

	memset(buf, 'x', sizeof buf);
	while ((n = send(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_NOSIGNAL)) > 0)
		;
	ck_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
}

/* Read everything the peer wrote until it closed; returns the bytes (caller frees). */
static unsigned char *
slurp(int fd, size_t *len)
{
	unsigned char *buf = NULL;
	size_t cap = 0, n = 0;
	ssize_t r;

	for (;;) {
		if (n == cap) {
			cap = cap ? cap * 2 : 4096;
			buf = xrealloc(buf, cap);
		}
		r = read(fd, buf + n, cap - n);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	*len = n;
	return buf;
}

/* Nothing in the way: both modes write every record and close; the stream is well formed. */
START_TEST(test_answer_written)
{
	static const enum http_raw_mode modes[] = { HTTP_RAW_WAIT, HTTP_RAW_NOWAIT };
	struct http_resp resp;
	unsigned char *out;
	size_t len, off = 0, clen;
	char *stdout_data = xstrdup("");
	int sv[2], ended = 0;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	resp_json(&resp, "{\"events\":[],\"next\":7}");
	ck_assert_int_eq(http_raw_answer(sv[0], 3, &resp, modes[_i]), 0);
	out = slurp(sv[1], &len);	/* ends: http_raw_answer closed its side */
	while (off + 8 <= len) {
		const unsigned char *h = out + off;

		clen = (size_t)h[4] << 8 | h[5];
		ck_assert_int_eq(h[0], FCGI_VERSION_1);
		ck_assert_int_eq((h[2] << 8) | h[3], 3);
		if (h[1] == FCGI_STDOUT && clen > 0) {
			char *more;

			xasprintf(&more, "%s%.*s", stdout_data, (int)clen, (const char *)h + 8);
			free(stdout_data);
			stdout_data = more;
		} else if (h[1] == FCGI_END_REQUEST)
			ended = 1;
		off += 8 + clen + h[6];
	}
	ck_assert_int_eq(off, len);
	ck_assert(ended);
	ck_assert_ptr_nonnull(strstr(stdout_data, "Status: 200 OK\r\n"));
	ck_assert_ptr_nonnull(strstr(stdout_data, "\r\n\r\n{\"events\":[],\"next\":7}"));
	free(stdout_data);
	free(out);
	close(sv[1]);
}
END_TEST

/*
 * A web server that stops reading: HTTP_RAW_NOWAIT gives up at once (EAGAIN) and closes the
 * connection; it must not sit out the send timeout (5 s) as HTTP_RAW_WAIT does. The park loop
 * and shutdown answer with it, so one such connection never stalls the others.
 */
START_TEST(test_nowait_never_waits)
{
	struct http_resp resp;
	int64_t t0;
	int sv[2], rc, err;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	fill(sv[0]);
	resp_json(&resp, "{\"events\":[],\"next\":7}");
	t0 = parley_mono_ms();
	rc = http_raw_answer(sv[0], 1, &resp, HTTP_RAW_NOWAIT);
	err = errno;
	ck_assert_int_lt(parley_mono_ms() - t0, 500);
	ck_assert_int_eq(rc, -1);
	ck_assert_int_eq(err, EAGAIN);
	/* Its side is closed: the peer reads what was queued, then end of stream. */
	ck_assert_int_eq(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
	{
		char buf[65536];
		ssize_t n;

		while ((n = read(sv[1], buf, sizeof buf)) > 0)
			;
		ck_assert_int_eq(n, 0);
	}
	close(sv[1]);
}
END_TEST

/* The waiting mode is bounded too: it gives up after its send timeout, not never. */
START_TEST(test_wait_is_bounded)
{
	struct http_resp resp;
	int64_t t0, dt;
	int sv[2], rc;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	fill(sv[0]);
	resp_json(&resp, "{\"events\":[],\"next\":7}");
	t0 = parley_mono_ms();
	rc = http_raw_answer(sv[0], 1, &resp, HTTP_RAW_WAIT);
	dt = parley_mono_ms() - t0;
	ck_assert_int_eq(rc, -1);
	ck_assert_int_ge(dt, 4000);
	ck_assert_int_lt(dt, 8000);
	close(sv[1]);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("http");
	TCase *tc = tcase_create("raw answer");

	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_answer_written, 0, 2);
	tcase_add_test(tc, test_nowait_never_waits);
	tcase_add_test(tc, test_wait_is_bounded);
	suite_add_tcase(s, tc);
	return testenv_run(s);
}
