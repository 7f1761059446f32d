/* routes.h - the HTTP API of the contract: routing, authentication, validation, handlers. */
#ifndef ROUTES_H
#define ROUTES_H

struct chat;
struct fcgi_app;
struct http_req;
struct http_resp;
struct park_spec;

enum route_result {
	ROUTE_ANSWER,	/* resp is the answer */
	ROUTE_PARK	/* a long poll with a timeout: park it with spec (resp untouched) */
};

/*
 * Route one request: 404 unknown path, 405 (+ Allow) wrong method, 401 missing or bad token
 * (every route but /health), 413 / 400 for the body, then the handler. Request threads only
 * (blocking: MySQL through chat, the calling thread's own).
 */
enum route_result routes_handle(struct fcgi_app *, struct chat *, const struct http_req *,
		    struct http_resp *, struct park_spec *);

#endif
