/* http.c - the HTTP side of a FastCGI request: reading it, query strings, and writing answers. */
#include <sys/socket.h>
#include <sys/time.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fastcgi.h>

#include "http.h"
#include "log.h"
#include "protocol.h"
#include "xmalloc.h"

/* A parked request's answer must not hold a worker forever when the web server stops reading. */
#define HTTP_RAW_SEND_TIMEOUT_S	5

static const char *
http_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Payload Too Large";
	case 429: return "Too Many Requests";
	case 503: return "Service Unavailable";
	default: return status >= 500 ? "Internal Server Error" : "Unknown";
	}
}

/* A FastCGI parameter of the request, or dflt when the web server did not pass it. */
static const char *
http_param(FCGX_Request *req, const char *name, const char *dflt)
{
	const char *v = FCGX_GetParam(name, req->envp);

	return v != NULL ? v : dflt;
}

/* Read up to want bytes of the body; returns how many came. */
static size_t
http_read_body(FCGX_Request *req, char *buf, size_t want)
{
	size_t got = 0;
	int n;

	while (got < want) {
		n = FCGX_GetStr(buf + got, want - got > 65536 ? 65536 : (int)(want - got), req->in);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

/* Consume the rest of stdin (bounded), so nothing unread is left on the connection. */
static void
http_drain(FCGX_Request *req, size_t cap)
{
	char buf[4096];
	size_t seen = 0;
	int n;

	while (seen < cap && (n = FCGX_GetStr(buf, sizeof buf, req->in)) > 0)
		seen += (size_t)n;
}

void
http_read(FCGX_Request *req, size_t body_max, struct http_req *r)
{
	const char *uri, *q, *cl;
	char *end;
	unsigned long long want = 0;
	size_t got;

	memset(r, 0, sizeof *r);
	r->method = http_param(req, "REQUEST_METHOD", "");
	r->query = http_param(req, "QUERY_STRING", "");
	r->authorization = http_param(req, "HTTP_AUTHORIZATION", NULL);

	/* REQUEST_URI is the one variable all three web servers pass unchanged. */
	uri = http_param(req, "REQUEST_URI", NULL);
	if (uri == NULL) {
		const char *sn = http_param(req, "SCRIPT_NAME", "");
		const char *pi = http_param(req, "PATH_INFO", "");

		xasprintf(&r->path, "%s%s", sn, pi);
	} else if ((q = strchr(uri, '?')) != NULL)
		r->path = xstrndup(uri, (size_t)(q - uri));
	else
		r->path = xstrdup(uri);

	cl = http_param(req, "CONTENT_LENGTH", "");
	if (*cl != '\0') {
		errno = 0;
		want = strtoull(cl, &end, 10);
		/* Digits only: strtoull alone would take " 5", "+5" and wrap "-5" around. */
		if (errno != 0 || *end != '\0' || *cl < '0' || *cl > '9') {
			r->bad_length = 1;
			return;
		}
	}
	if (want > body_max) {
		/* Refused on the announced size alone; not read. */
		r->too_large = 1;
		return;
	}
	/* One byte more than allowed tells a body longer than announced from one at the limit. */
	r->body = xmalloc(body_max + 2);
	got = http_read_body(req, r->body, body_max + 1);
	if (got > body_max) {
		r->too_large = 1;
		free(r->body);
		r->body = NULL;
		return;
	}
	r->body[got] = '\0';
	r->body_len = got;
	if (got == 0) {
		free(r->body);
		r->body = NULL;
	}
	/* A GET has an empty stdin that still ends with a record: read it so the fd is quiet. */
	http_drain(req, 65536);
}

void
http_req_clear(struct http_req *r)
{
	free(r->path);
	free(r->body);
	memset(r, 0, sizeof *r);
}

void
http_resp_clear(struct http_resp *resp)
{
	free(resp->body);
	memset(resp, 0, sizeof *resp);
}

void
http_resp_json(struct http_resp *resp, int status, char *body)
{
	free(resp->body);
	memset(resp, 0, sizeof *resp);
	resp->status = status;
	resp->body = body;
	resp->len = body != NULL ? strlen(body) : 0;
}

void
http_resp_error(struct http_resp *resp, int status, const char *code, const char *message)
{
	http_resp_json(resp, status, protocol_error_body(code, message));
	if (status == 503 || status == 429)
		resp->retry_after = 1;
	if (status == 401)
		resp->www_auth = 1;
}

void
http_resp_errno(struct http_resp *resp, int err, const char *message)
{
	static const char *const dflt[] = {
		[400] = "bad request", [401] = "unauthorized", [403] = "forbidden",
		[404] = "not found", [413] = "payload too large", [429] = "rate limited",
		[500] = "internal error", [503] = "service unavailable, retry later",
	};
	int status = protocol_errno_status(err);

	if (message == NULL)
		message = dflt[status] != NULL ? dflt[status] : "error";
	http_resp_error(resp, status, protocol_errno_code(err), message);
}

void
http_resp_bad_field(struct http_resp *resp, const char *field, const char *why)
{
	char *msg;

	xasprintf(&msg, "%s: %s", field != NULL ? field : "body", why != NULL ? why : "invalid");
	http_resp_error(resp, 400, "bad_request", msg);
	free(msg);
}

char *
http_format(const struct http_resp *resp, size_t *len)
{
	char *buf;
	size_t blen;
	FILE *f;

	if ((f = open_memstream(&buf, &blen)) == NULL)
		fatal("open_memstream failed");
	fprintf(f, "Status: %d %s\r\n", resp->status, http_reason(resp->status));
	if (resp->status != 204) {
		fprintf(f, "Content-Type: %s\r\nContent-Length: %zu\r\n",
		    resp->content_type != NULL ? resp->content_type : "application/json",
		    resp->body != NULL ? resp->len : 0);
	}
	fputs("Cache-Control: no-store\r\n", f);
	if (resp->allow != NULL)
		fprintf(f, "Allow: %s\r\n", resp->allow);
	if (resp->retry_after > 0)
		fprintf(f, "Retry-After: %d\r\n", resp->retry_after);
	if (resp->www_auth)
		fputs("WWW-Authenticate: Bearer\r\n", f);
	fputs("\r\n", f);
	if (resp->status != 204 && resp->body != NULL)
		fwrite(resp->body, 1, resp->len, f);
	fclose(f);
	*len = blen;
	return buf;
}

int
http_send(FCGX_Request *req, const struct http_resp *resp)
{
	size_t len, off;
	char *buf = http_format(resp, &len);
	int n, rc = 0;

	for (off = 0; off < len; off += (size_t)n) {
		n = FCGX_PutStr(buf + off, len - off > 65536 ? 65536 : (int)(len - off), req->out);
		if (n <= 0) {
			rc = -1;
			break;
		}
	}
	free(buf);
	return rc;
}

/* Write all of buf (EINTR retried); flags MSG_DONTWAIT: -1 with EAGAIN when it does not fit. */
static int
http_write_all(int fd, const unsigned char *buf, size_t len, int flags)
{
	ssize_t n;

	while (len > 0) {
		n = send(fd, buf, len, MSG_NOSIGNAL | flags);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EWOULDBLOCK)
			errno = EAGAIN;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The 8-byte header of a FastCGI record (content length at most 65535). */
static void
http_record_header(unsigned char *h, int type, int request_id, size_t clen, int pad)
{
	h[0] = FCGI_VERSION_1;
	h[1] = (unsigned char)type;
	h[2] = (unsigned char)((request_id >> 8) & 0xff);
	h[3] = (unsigned char)(request_id & 0xff);
	h[4] = (unsigned char)((clen >> 8) & 0xff);
	h[5] = (unsigned char)(clen & 0xff);
	h[6] = (unsigned char)pad;
	h[7] = 0;
}

/* Frame data as FCGI_STDOUT records, then the empty record and FCGI_END_REQUEST, in one write. */
int
http_raw_answer(int fd, int request_id, const struct http_resp *resp, enum http_raw_mode mode)
{
	struct timeval tv = { HTTP_RAW_SEND_TIMEOUT_S, 0 };
	unsigned char *out, *p;
	size_t len, off, chunk, nrec;
	char *data = http_format(resp, &len);
	int pad, rc, err;

	nrec = len / 65528 + 1;
	out = xmalloc(len + (nrec + 2) * 16 + 8);
	p = out;
	for (off = 0; off < len; off += chunk) {
		/* Records of a multiple of 8 bytes keep the web server's reads aligned. */
		chunk = len - off > 65528 ? 65528 : len - off;
		pad = (int)((8 - chunk % 8) % 8);
		http_record_header(p, FCGI_STDOUT, request_id, chunk, pad);
		memcpy(p + 8, data + off, chunk);
		memset(p + 8 + chunk, 0, (size_t)pad);
		p += 8 + chunk + (size_t)pad;
	}
	http_record_header(p, FCGI_STDOUT, request_id, 0, 0);
	p += 8;
	http_record_header(p, FCGI_END_REQUEST, request_id, 8, 0);
	memset(p + 8, 0, 8);	/* appStatus 0, FCGI_REQUEST_COMPLETE */
	p += 16;

	if (mode == HTTP_RAW_WAIT)
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	rc = http_write_all(fd, out, (size_t)(p - out), mode == HTTP_RAW_NOWAIT ? MSG_DONTWAIT : 0);
	err = errno;
	free(out);
	free(data);
	close(fd);
	errno = err;
	return rc;
}

static int
http_hex(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

char *
http_pct_decode(const char *s, size_t n, int plus_space)
{
	char *out = xmalloc(n + 1);
	size_t i, o = 0;
	int hi, lo;

	for (i = 0; i < n; i++) {
		if (s[i] == '%') {
			if (i + 2 >= n)
				goto fail;
			if ((hi = http_hex((unsigned char)s[i + 1])) < 0 ||
			    (lo = http_hex((unsigned char)s[i + 2])) < 0)
				goto fail;
			out[o++] = (char)(hi * 16 + lo);
			i += 2;
		} else if (s[i] == '+' && plus_space)
			out[o++] = ' ';
		else
			out[o++] = s[i];
	}
	out[o] = '\0';
	/* A decoded NUL would cut the value short unseen; invalid UTF-8 is never an id. */
	if (strlen(out) != o || !protocol_valid_utf8(out, o))
		goto fail;
	return out;
fail:
	free(out);
	return NULL;
}

int
http_query_get(const char *query, const char *key, char **value)
{
	size_t klen = strlen(key), plen;
	const char *p = query, *amp, *eq;

	*value = NULL;
	while (p != NULL && *p != '\0') {
		amp = strchr(p, '&');
		plen = amp != NULL ? (size_t)(amp - p) : strlen(p);
		eq = memchr(p, '=', plen);
		if ((eq != NULL ? (size_t)(eq - p) : plen) == klen && strncmp(p, key, klen) == 0) {
			if (eq == NULL)
				*value = xstrdup("");
			else if ((*value = http_pct_decode(eq + 1, plen - klen - 1, 1)) == NULL)
				return -1;
			return 1;
		}
		p = amp != NULL ? amp + 1 : NULL;
	}
	return 0;
}

int
http_path_split(const char *path, char **segs, size_t max, size_t *nsegs)
{
	const char *p = path, *slash;
	size_t n = 0, len;

	*nsegs = 0;
	if (*p != '/')
		return -1;
	p++;
	while (*p != '\0') {
		if (n == max)
			goto fail;
		slash = strchr(p, '/');
		len = slash != NULL ? (size_t)(slash - p) : strlen(p);
		if (len == 0 || (segs[n] = http_pct_decode(p, len, 0)) == NULL)
			goto fail;
		n++;
		if (slash == NULL)
			break;
		p = slash + 1;
		if (*p == '\0')		/* a trailing slash names no route */
			goto fail;
	}
	*nsegs = n;
	return 0;
fail:
	while (n > 0)
		free(segs[--n]);
	return -1;
}
