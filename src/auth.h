/* auth.h - HS256 JWT verification and minting (OpenSSL HMAC, json-c claims, constant-time compare). */
#ifndef AUTH_H
#define AUTH_H

#include <stdint.h>

#include "parley.h"

struct auth_identity {
	char	user[PARLEY_ID_MAX + 1];	/* claim "sub", a valid user id */
	char	device[PARLEY_ID_MAX + 1];	/* claim "dev", or "" when absent */
	int64_t	exp;				/* seconds since the epoch */
};

/*
 * Verify token against secret at time now (seconds). Rules: header alg must be exactly "HS256"
 * (none, HS384, RS256... rejected); signature checked in constant time; "sub" required and a valid
 * user id; "exp" required and > now - leeway; "nbf" and "iat", when present, <= now + leeway;
 * "dev", when present, a valid device id. 0 and *id filled on success; -1 with errno EPERM and
 * *why (static string, safe to show the client) on failure. Thread-safe, allocation-free on the
 * hot path except json-c parsing.
 */
int	auth_verify(const char *token, const char *secret, int leeway, int64_t now,
	    struct auth_identity *id, const char **why);
/*
 * Mint a token for user (and device, may be NULL) valid for ttl seconds from now. Caller frees.
 * NULL with errno EINVAL when user or device is not a valid id (or the secret is empty).
 */
char	*auth_mint(const char *secret, const char *user, const char *device, int64_t now, int ttl);

#endif
