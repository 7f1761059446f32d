/* scrape.c - fetch and read a daemon's /metrics: over FastCGI (parley-fcgi) or HTTP (parley-ws). */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "parley.h"
#include "scrape.h"
#include "xmalloc.h"

/* The largest answer we read: a metrics page is a few KiB. */
#define SCRAPE_MAX	(4 * 1024 * 1024)

/* FastCGI record types and the responder role (the FastCGI 1.0 specification). */
#define FCGI_VERSION		1
#define FCGI_BEGIN_REQUEST	1
#define FCGI_END_REQUEST	3
#define FCGI_PARAMS		4
#define FCGI_STDIN		5
#define FCGI_STDOUT		6
#define FCGI_RESPONDER		1

struct buf {
	unsigned char	*p;
	size_t		 len, cap;
};

static void
buf_add(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return;	/* an empty FastCGI record has no content: memcpy from NULL is undefined */
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 256;
		b->p = xrealloc(b->p, b->cap);
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for fd to be ready for events until deadline: 0, or -1 with errno ETIMEDOUT. */
static int
wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int64_t left;
	int rc;

	for (;;) {
		if ((left = deadline - now_ms()) <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		rc = poll(&pfd, 1, (int)left);
		if (rc > 0)
			return 0;
		if (rc < 0 && errno != EINTR)
			return -1;
	}
}

/* A connected socket to a UNIX path or host:port: the fd, or -1 with *cause set. */
static int
dial(const char *addr, int64_t deadline, char **cause)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char host[256];
	const char *colon;
	int fd = -1, rc;

	if (addr[0] == '/') {
		if (strlen(addr) >= sizeof sun.sun_path) {
			xasprintf(cause, "%s: socket path too long", addr);
			return -1;
		}
		strcpy(sun.sun_path, addr);
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
		    connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0)
			goto fail;
		return fd;
	}
	if ((colon = strrchr(addr, ':')) == NULL || (size_t)(colon - addr) >= sizeof host) {
		xasprintf(cause, "%s: expected /path.sock or host:port", addr);
		return -1;
	}
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	if ((rc = getaddrinfo(host[0] != '\0' ? host : "127.0.0.1", colon + 1, &hints, &ai)) != 0) {
		xasprintf(cause, "%s: %s", addr, gai_strerror(rc));
		return -1;
	}
	if ((fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
		goto fail;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		int err = 0;
		socklen_t len = sizeof err;

		if (errno != EINPROGRESS || wait_fd(fd, POLLOUT, deadline) < 0)
			goto fail;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
			errno = err;
			goto fail;
		}
	}
	freeaddrinfo(ai);
	return fd;
fail:
	xasprintf(cause, "%s: %s", addr, strerror(errno));
	if (fd >= 0)
		close(fd);
	if (ai != NULL)
		freeaddrinfo(ai);
	return -1;
}

/* Write all of b to fd before deadline: 0 or -1. */
static int
send_all(int fd, const struct buf *b, int64_t deadline)
{
	size_t off = 0;
	ssize_t n;

	while (off < b->len) {
		if (wait_fd(fd, POLLOUT, deadline) < 0)
			return -1;
		n = send(fd, b->p + off, b->len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
		if (n > 0)
			off += (size_t)n;
	}
	return 0;
}

/* Read from fd until the peer closes (or SCRAPE_MAX) before deadline: 0 or -1. */
static int
recv_all(int fd, struct buf *b, int64_t deadline)
{
	unsigned char chunk[8192];
	ssize_t n;

	for (;;) {
		if (wait_fd(fd, POLLIN, deadline) < 0)
			return -1;
		n = recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
		if (n == 0)
			return 0;
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
		if (n > 0)
			buf_add(b, chunk, (size_t)n);
		if (b->len > SCRAPE_MAX) {
			errno = EFBIG;
			return -1;
		}
	}
}

/* Append one FastCGI record (request id 1) of type with content. */
static void
fcgi_record(struct buf *b, int type, const void *content, size_t len)
{
	unsigned char h[8] = { FCGI_VERSION, (unsigned char)type, 0, 1,
	    (unsigned char)(len >> 8), (unsigned char)len, 0, 0 };

	buf_add(b, h, sizeof h);
	buf_add(b, content, len);
}

/* Append one name-value pair in FastCGI's length-prefixed encoding (lengths < 128 or 4 bytes). */
static void
fcgi_pair(struct buf *b, const char *name, const char *value)
{
	size_t lens[2] = { strlen(name), strlen(value) };
	unsigned char l[4];
	size_t i;

	for (i = 0; i < 2; i++) {
		if (lens[i] < 128) {
			l[0] = (unsigned char)lens[i];
			buf_add(b, l, 1);
		} else {
			l[0] = (unsigned char)(0x80 | (lens[i] >> 24));
			l[1] = (unsigned char)(lens[i] >> 16);
			l[2] = (unsigned char)(lens[i] >> 8);
			l[3] = (unsigned char)lens[i];
			buf_add(b, l, 4);
		}
	}
	buf_add(b, name, lens[0]);
	buf_add(b, value, lens[1]);
}

/* The body of an HTTP-style answer (CGI or HTTP headers, a blank line, the body), or NULL. */
static char *
answer_body(const unsigned char *p, size_t len, char **cause)
{
	const char *sep, *status;
	char *text = xmalloc(len + 1), *body;
	int code = 200;

	memcpy(text, p, len);
	text[len] = '\0';
	if ((sep = strstr(text, "\r\n\r\n")) == NULL) {
		xasprintf(cause, "malformed answer (no end of headers)");
		free(text);
		return NULL;
	}
	if (strncmp(text, "HTTP/", 5) == 0 && (status = strchr(text, ' ')) != NULL)
		code = atoi(status + 1);
	else if ((status = strstr(text, "Status:")) != NULL && status < sep)
		code = atoi(status + 7);
	if (code != 200) {
		xasprintf(cause, "answered status %d", code);
		free(text);
		return NULL;
	}
	body = xstrdup(sep + 4);
	free(text);
	return body;
}

int
scrape_fcgi(const char *addr, const char *bearer, int timeout_ms, char **body, char **cause)
{
	static const unsigned char begin[8] = { 0, FCGI_RESPONDER, 0, 0, 0, 0, 0, 0 };
	int64_t deadline = now_ms() + timeout_ms;
	struct buf req = { 0 }, params = { 0 }, in = { 0 }, out = { 0 };
	char *auth = NULL;
	size_t off, clen, plen;
	int fd, ended = 0;

	*body = NULL;
	if ((fd = dial(addr, deadline, cause)) < 0)
		return -1;
	fcgi_pair(&params, "REQUEST_METHOD", "GET");
	fcgi_pair(&params, "REQUEST_URI", "/metrics");
	fcgi_pair(&params, "SCRIPT_NAME", "");
	fcgi_pair(&params, "PATH_INFO", "/metrics");
	fcgi_pair(&params, "QUERY_STRING", "");
	fcgi_pair(&params, "SERVER_PROTOCOL", "HTTP/1.1");
	fcgi_pair(&params, "REMOTE_ADDR", "127.0.0.1");
	if (bearer != NULL) {
		xasprintf(&auth, "Bearer %s", bearer);
		fcgi_pair(&params, "HTTP_AUTHORIZATION", auth);
		free(auth);
	}
	fcgi_record(&req, FCGI_BEGIN_REQUEST, begin, sizeof begin);
	fcgi_record(&req, FCGI_PARAMS, params.p, params.len);
	fcgi_record(&req, FCGI_PARAMS, NULL, 0);
	fcgi_record(&req, FCGI_STDIN, NULL, 0);
	if (send_all(fd, &req, deadline) < 0 || recv_all(fd, &in, deadline) < 0) {
		xasprintf(cause, "%s: %s", addr, strerror(errno));
		goto fail;
	}
	/* Gather the STDOUT records; the connection closes after END_REQUEST (no keep-conn). */
	for (off = 0; off + 8 <= in.len; off += 8 + clen + plen) {
		clen = (size_t)in.p[off + 4] << 8 | in.p[off + 5];
		plen = in.p[off + 6];
		if (off + 8 + clen + plen > in.len)
			break;
		if (in.p[off + 1] == FCGI_STDOUT)
			buf_add(&out, in.p + off + 8, clen);
		else if (in.p[off + 1] == FCGI_END_REQUEST)
			ended = 1;
	}
	if (!ended) {
		xasprintf(cause, "%s: the FastCGI answer ended early", addr);
		goto fail;
	}
	if ((*body = answer_body(out.p, out.len, cause)) == NULL)
		goto fail;
	free(req.p);
	free(params.p);
	free(in.p);
	free(out.p);
	close(fd);
	return 0;
fail:
	free(req.p);
	free(params.p);
	free(in.p);
	free(out.p);
	close(fd);
	return -1;
}

int
scrape_http(const char *host, int port, const char *bearer, int timeout_ms, char **body,
    char **cause)
{
	int64_t deadline = now_ms() + timeout_ms;
	struct buf req = { 0 }, in = { 0 };
	char *addr, *head;
	int fd;

	*body = NULL;
	xasprintf(&addr, "%s:%d", host, port);
	if ((fd = dial(addr, deadline, cause)) < 0) {
		free(addr);
		return -1;
	}
	xasprintf(&head, "GET /metrics HTTP/1.0\r\nHost: %s\r\n%s%s%sConnection: close\r\n\r\n",
	    addr, bearer != NULL ? "Authorization: Bearer " : "", bearer != NULL ? bearer : "",
	    bearer != NULL ? "\r\n" : "");
	buf_add(&req, head, strlen(head));
	free(head);
	if (send_all(fd, &req, deadline) < 0 || recv_all(fd, &in, deadline) < 0)
		xasprintf(cause, "%s: %s", addr, strerror(errno));
	else
		*body = answer_body(in.p, in.len, cause);
	free(addr);
	free(req.p);
	free(in.p);
	close(fd);
	return *body != NULL ? 0 : -1;
}

void
scrape_parse(const char *text, struct scrape_sample *s)
{
	const char *line, *end, *sp;
	char *name, *type_of = NULL, *endv;
	size_t len;
	double v;

	scrape_clear(s);
	for (line = text; *line != '\0'; line = *end != '\0' ? end + 1 : end) {
		if ((end = strchr(line, '\n')) == NULL)
			end = line + strlen(line);
		len = (size_t)(end - line);
		if (len > 7 && strncmp(line, "# TYPE ", 7) == 0) {
			/* "# TYPE name counter": remember which name the next samples belong to. */
			free(type_of);
			type_of = NULL;
			if ((sp = memchr(line + 7, ' ', len - 7)) != NULL &&
			    (size_t)(end - sp - 1) == strlen("counter") &&
			    strncmp(sp + 1, "counter", 7) == 0)
				type_of = strndup(line + 7, (size_t)(sp - line - 7));
			continue;
		}
		if (len == 0 || line[0] == '#' || (sp = memchr(line, ' ', len)) == NULL)
			continue;
		name = strndup(line, (size_t)(sp - line));
		v = strtod(sp + 1, &endv);
		if (name == NULL || endv == sp + 1) {
			free(name);
			continue;
		}
		s->v = xreallocarray(s->v, s->n + 1, sizeof *s->v);
		s->v[s->n].name = name;
		s->v[s->n].value = v;
		s->v[s->n].counter = type_of != NULL && strncmp(name, type_of, strlen(type_of)) == 0;
		s->n++;
	}
	free(type_of);
}

double
scrape_get(const struct scrape_sample *s, const char *name)
{
	size_t i;

	for (i = 0; i < s->n; i++)
		if (strcmp(s->v[i].name, name) == 0)
			return s->v[i].value;
	return -1;
}

void
scrape_clear(struct scrape_sample *s)
{
	size_t i;

	for (i = 0; i < s->n; i++)
		free(s->v[i].name);
	free(s->v);
	s->v = NULL;
	s->n = 0;
}
