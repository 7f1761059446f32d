/* http.h - the HTTP side of a FastCGI request: reading it, query strings, and writing answers. */
#ifndef HTTP_H
#define HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <fcgiapp.h>

/*
 * One request as the router sees it. Built by http_read() on the thread that accepted the
 * request; the strings point into the FCGX_Request's environment (valid until it is finished or
 * detached) except path and body, which are copies owned here. http_req_clear() frees them.
 */
struct http_req {
	const char	*method;	/* REQUEST_METHOD, "" when absent */
	char		*path;		/* the URI path without the query, not yet percent-decoded */
	const char	*query;		/* QUERY_STRING, "" when none */
	const char	*authorization;	/* HTTP_AUTHORIZATION or NULL */
	char		*body;		/* NUL-terminated copy of the body (NULL when empty) */
	size_t		 body_len;
	int		 too_large;	/* the body was over the limit: 413, body not kept */
	int		 bad_length;	/* CONTENT_LENGTH was not a number: 400 */
};

/* An answer, built by the router; the writer adds Content-Length and the status line. */
struct http_resp {
	int		 status;
	const char	*content_type;	/* NULL: application/json */
	char		*body;		/* owned; NULL for none (204) */
	size_t		 len;
	const char	*allow;		/* Allow: for 405 (static string) */
	int		 retry_after;	/* seconds for Retry-After, 0 for none */
	int		 www_auth;	/* add WWW-Authenticate: Bearer (401) */
};

/*
 * Read the request's parameters and its body (at most body_max bytes; CONTENT_LENGTH over it is
 * refused before reading). The body is always read to its end (or the limit) so that the
 * connection holds nothing unread afterwards. Request threads only (blocking).
 */
void	http_read(FCGX_Request *, size_t body_max, struct http_req *);
void	http_req_clear(struct http_req *);

/* Set an answer: JSON body taken over (freed later), or an error in the contract's shape. */
void	http_resp_json(struct http_resp *, int status, char *body);
void	http_resp_error(struct http_resp *, int status, const char *code, const char *message);
/* The contract's error for errno err (status, code, Retry-After on 429/503); message or NULL. */
void	http_resp_errno(struct http_resp *, int err, const char *message);
/* 400 naming a field: {"error":{"code":"bad_request","message":"FIELD: WHY"}}. */
void	http_resp_bad_field(struct http_resp *, const char *field, const char *why);
void	http_resp_clear(struct http_resp *);

/* The CGI answer (Status:, headers, blank line, body) as one buffer. Caller frees. */
char	*http_format(const struct http_resp *, size_t *len);
/* Write an answer through libfcgi's output stream (the caller then finishes the request). */
int	http_send(FCGX_Request *, const struct http_resp *);

/*
 * A detached request: only its connection and FastCGI request id remain (a parked long poll).
 * http_raw_answer writes the answer as FCGI_STDOUT records, the end of the stream and
 * FCGI_END_REQUEST, then closes fd. HTTP_RAW_WAIT: blocking, bounded by a send timeout (workers
 * only). HTTP_RAW_NOWAIT: what the socket takes at once, else -1 with EAGAIN (the web server
 * gets a cut stream and answers its client with an error; the client polls again): for the
 * event-loop thread and shutdown, which must never wait for a web server that does not read.
 */
enum http_raw_mode {
	HTTP_RAW_WAIT,
	HTTP_RAW_NOWAIT
};
int	http_raw_answer(int fd, int request_id, const struct http_resp *, enum http_raw_mode);

/*
 * Query strings ("a=1&b=x%20y"). Looks key up; 1 and a decoded copy in *value (caller frees) when
 * present, 0 when absent, -1 when its value is badly encoded (bad %xx, NUL or invalid UTF-8).
 */
int	http_query_get(const char *query, const char *key, char **value);
/* Percent-decode n bytes (plus_space: '+' means ' ' as in query strings). NULL when malformed. */
char	*http_pct_decode(const char *s, size_t n, int plus_space);

/*
 * Split a URI path ("/groups/7/members/bob%40x") into at most max percent-decoded segments
 * (caller frees each). 0 and *n; -1 (nothing to free) when it cannot be a route: no leading '/',
 * an empty segment, a trailing '/', more than max segments, or a segment badly encoded.
 */
int	http_path_split(const char *path, char **segs, size_t max, size_t *n);

#endif
