/* auth.c - HS256 JWT verification and minting (OpenSSL HMAC, json-c claims, constant-time compare). */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <json-c/json.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "parley.h"
#include "protocol.h"
#include "xmalloc.h"

/* Longest token we look at: real ones are a few hundred bytes; this bounds every buffer. */
#define AUTH_TOKEN_MAX	4096
#define AUTH_SIG_LEN	32	/* HMAC-SHA256 */

static const char auth_b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int
auth_b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/*
 * Decode unpadded base64url into out (room for len * 3 / 4 bytes). Padding, other alphabets and
 * non-zero leftover bits are refused, so each byte string has exactly one accepted encoding.
 * Returns the decoded length or -1.
 */
static ssize_t
auth_b64url_decode(const char *in, size_t len, unsigned char *out)
{
	uint32_t acc = 0;
	size_t i, n = 0;
	int bits = 0, v;

	if (len % 4 == 1)
		return -1;
	for (i = 0; i < len; i++) {
		if ((v = auth_b64_value((unsigned char)in[i])) < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (unsigned char)(acc >> bits);
			acc &= (1U << bits) - 1;
		}
	}
	if (acc != 0)
		return -1;
	return (ssize_t)n;
}

/* Encode len bytes as unpadded base64url, appended at out (room for 4 * len / 3 + 4). */
static size_t
auth_b64url_encode(const unsigned char *in, size_t len, char *out)
{
	uint32_t acc = 0;
	size_t i, n = 0;
	int bits = 0;

	for (i = 0; i < len; i++) {
		acc = (acc << 8) | in[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			out[n++] = auth_b64url[(acc >> bits) & 0x3f];
		}
		acc &= (1U << bits) - 1;
	}
	if (bits > 0)
		out[n++] = auth_b64url[(acc << (6 - bits)) & 0x3f];
	out[n] = '\0';
	return n;
}

/* Decode one segment and parse it as a JSON object; NULL when it is anything else. */
static struct json_object *
auth_segment_json(const char *seg, size_t len)
{
	unsigned char buf[AUTH_TOKEN_MAX];
	struct json_object *o;
	ssize_t n;

	if (len == 0 || (n = auth_b64url_decode(seg, len, buf)) <= 0)
		return NULL;
	if ((o = protocol_parse_json((const char *)buf, (size_t)n)) == NULL)
		return NULL;
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

/*
 * A NumericDate claim: a JSON number (integer or not) within +-AUTH_TIME_MAX. One rule for both
 * notations: json-c clamps an integer beyond int64 to INT64_MAX/MIN (2^64 would read as "never
 * expires"), so the range is checked on the value, never trusted to the parser.
 * 1 present, 0 absent, -1 bad.
 */
#define AUTH_TIME_MAX	9000000000000000LL	/* ~285 million years: beyond it is no date */
static int
auth_time_claim(struct json_object *claims, const char *name, int64_t *out)
{
	struct json_object *v;
	int64_t i;
	double d;

	if (!json_object_object_get_ex(claims, name, &v) || v == NULL)
		return 0;
	if (json_object_is_type(v, json_type_int)) {
		i = json_object_get_int64(v);
		if (i > AUTH_TIME_MAX || i < -AUTH_TIME_MAX)
			return -1;
		*out = i;
		return 1;
	}
	if (json_object_is_type(v, json_type_double)) {
		d = json_object_get_double(v);
		if (!isfinite(d) || d > (double)AUTH_TIME_MAX || d < -(double)AUTH_TIME_MAX)
			return -1;
		*out = (int64_t)d;	/* truncated: a fraction of a second never matters here */
		return 1;
	}
	return -1;
}

/* The header must say HS256 and nothing we would have to understand ("crit"). */
static const char *
auth_check_header(const char *seg, size_t len)
{
	struct json_object *h, *v;
	const char *why = NULL;

	if ((h = auth_segment_json(seg, len)) == NULL)
		return "malformed token";
	if (!json_object_object_get_ex(h, "alg", &v) || !json_object_is_type(v, json_type_string) ||
	    strcmp(json_object_get_string(v), "HS256") != 0 ||
	    (size_t)json_object_get_string_len(v) != strlen("HS256"))
		why = "unsupported algorithm";
	else if (json_object_object_get_ex(h, "typ", &v) &&
	    !json_object_is_type(v, json_type_string))
		why = "malformed token";
	else if (json_object_object_get_ex(h, "crit", NULL))
		why = "unsupported header";
	json_object_put(h);
	return why;
}

/* Check the claims at time now and fill id. NULL on success, else the reason. */
static const char *
auth_check_claims(struct json_object *c, int leeway, int64_t now, struct auth_identity *id)
{
	struct json_object *v;
	int64_t exp, nbf, iat;
	const char *s;
	int r;

	if (!json_object_object_get_ex(c, "sub", &v) || v == NULL)
		return "missing sub";
	if (!json_object_is_type(v, json_type_string))
		return "invalid sub";
	s = json_object_get_string(v);
	if ((size_t)json_object_get_string_len(v) != strlen(s) || !protocol_valid_user(s))
		return "invalid sub";
	strcpy(id->user, s);

	if ((r = auth_time_claim(c, "exp", &exp)) == 0)
		return "missing exp";
	if (r < 0)
		return "invalid exp";
	if (exp <= now - leeway)
		return "token expired";
	if ((r = auth_time_claim(c, "nbf", &nbf)) < 0)
		return "invalid nbf";
	if (r > 0 && nbf > now + leeway)
		return "token not yet valid";
	if ((r = auth_time_claim(c, "iat", &iat)) < 0)
		return "invalid iat";
	if (r > 0 && iat > now + leeway)
		return "token issued in the future";
	id->exp = exp;

	id->device[0] = '\0';
	if (json_object_object_get_ex(c, "dev", &v) && v != NULL) {
		if (!json_object_is_type(v, json_type_string))
			return "invalid dev";
		s = json_object_get_string(v);
		if ((size_t)json_object_get_string_len(v) != strlen(s) || !protocol_valid_id(s))
			return "invalid dev";
		strcpy(id->device, s);
	}
	return NULL;
}

int
auth_verify(const char *token, const char *secret, int leeway, int64_t now,
    struct auth_identity *id, const char **why)
{
	unsigned char mac[EVP_MAX_MD_SIZE], sig[AUTH_TOKEN_MAX];
	struct json_object *claims = NULL;
	const char *dot1, *dot2, *reason;
	unsigned int maclen = 0;
	size_t len;
	ssize_t siglen;

	memset(id, 0, sizeof *id);
	if (leeway < 0)
		leeway = 0;
	if (token == NULL || secret == NULL || *secret == '\0') {
		reason = "malformed token";
		goto fail;
	}
	if ((len = strnlen(token, AUTH_TOKEN_MAX + 1)) > AUTH_TOKEN_MAX) {
		reason = "token too long";
		goto fail;
	}
	/* header.payload.signature: exactly two dots. */
	if ((dot1 = memchr(token, '.', len)) == NULL ||
	    (dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token))) == NULL ||
	    memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL) {
		reason = "malformed token";
		goto fail;
	}
	/* The algorithm first: "none" and friends are refused whatever their signature. */
	if ((reason = auth_check_header(token, (size_t)(dot1 - token))) != NULL)
		goto fail;
	siglen = auth_b64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), sig);
	if (HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)token,
	    (size_t)(dot2 - token), mac, &maclen) == NULL || maclen != AUTH_SIG_LEN) {
		reason = "internal error";
		goto fail;
	}
	if (siglen != AUTH_SIG_LEN || CRYPTO_memcmp(sig, mac, AUTH_SIG_LEN) != 0) {
		reason = "bad signature";
		goto fail;
	}
	/* Only a token we signed gets its claims read. */
	if ((claims = auth_segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1))) == NULL) {
		reason = "malformed token";
		goto fail;
	}
	if ((reason = auth_check_claims(claims, leeway, now, id)) != NULL)
		goto fail;
	json_object_put(claims);
	return 0;
fail:
	json_object_put(claims);
	memset(id, 0, sizeof *id);
	if (why != NULL)
		*why = reason;
	errno = EPERM;
	return -1;
}

char *
auth_mint(const char *secret, const char *user, const char *device, int64_t now, int ttl)
{
	static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	unsigned char mac[EVP_MAX_MD_SIZE];
	struct json_object *c;
	const char *payload;
	unsigned int maclen = 0;
	size_t plen, n;
	char *tok;

	if (secret == NULL || *secret == '\0' || !protocol_valid_user(user) ||
	    (device != NULL && !protocol_valid_id(device))) {
		errno = EINVAL;
		return NULL;
	}
	c = json_object_new_object();
	json_object_object_add(c, "sub", json_object_new_string(user));
	json_object_object_add(c, "iat", json_object_new_int64(now));
	json_object_object_add(c, "exp", json_object_new_int64(now + ttl));
	if (device != NULL)
		json_object_object_add(c, "dev", json_object_new_string(device));
	payload = json_object_to_json_string_ext(c,
	    JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	plen = strlen(payload);

	tok = xmalloc((sizeof header + plen) * 4 / 3 + AUTH_SIG_LEN * 4 / 3 + 16);
	n = auth_b64url_encode((const unsigned char *)header, sizeof header - 1, tok);
	tok[n++] = '.';
	n += auth_b64url_encode((const unsigned char *)payload, plen, tok + n);
	json_object_put(c);
	if (HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)tok, n, mac,
	    &maclen) == NULL || maclen != AUTH_SIG_LEN) {
		free(tok);
		errno = EIO;
		return NULL;
	}
	tok[n++] = '.';
	auth_b64url_encode(mac, maclen, tok + n);
	return tok;
}
