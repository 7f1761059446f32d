/* check_auth.c - HS256 JWTs: every way a token can be wrong is refused with its reason; mint round trips. */
#include <check.h>

#include "testenv.h"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "parley.h"
#include "xmalloc.h"

#define SECRET	"test-secret-0123456789abcdef0123456789abcdef"
#define OTHER	"another-secret-0123456789abcdef0123456789ab"
#define NOW	1700000000LL	/* every claim below is written relative to this */
#define LEEWAY	30

#define HS256	"{\"alg\":\"HS256\",\"typ\":\"JWT\"}"

/* An independent base64url encoder (OpenSSL's base64, then the URL alphabet, no padding). */
static char *
b64url(const unsigned char *in, size_t len)
{
	char *out = xmalloc(4 * ((len + 2) / 3) + 1), *p;
	int n;

	n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	out[n] = '\0';
	for (p = out; *p != '\0'; p++) {
		if (*p == '+')
			*p = '-';
		else if (*p == '/')
			*p = '_';
		else if (*p == '=') {
			*p = '\0';
			break;
		}
	}
	return out;
}

enum sig { SIG_GOOD, SIG_OTHER_KEY, SIG_NONE, SIG_GARBAGE };

/* header.payload.signature, signed as asked (caller frees). */
static char *
make_token(const char *header, const char *payload, enum sig sig)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	char *h, *p, *s, *signing, *tok;
	const char *key = sig == SIG_OTHER_KEY ? OTHER : SECRET;

	h = b64url((const unsigned char *)header, strlen(header));
	p = b64url((const unsigned char *)payload, strlen(payload));
	xasprintf(&signing, "%s.%s", h, p);
	HMAC(EVP_sha256(), key, (int)strlen(key), (unsigned char *)signing, strlen(signing), mac,
	    &maclen);
	ck_assert_uint_eq(maclen, 32);
	switch (sig) {
	case SIG_NONE:
		s = xstrdup("");
		break;
	case SIG_GARBAGE:
		s = xstrdup("c2lnbmF0dXJl");
		break;
	default:
		s = b64url(mac, maclen);
		break;
	}
	xasprintf(&tok, "%s.%s", signing, s);
	free(h);
	free(p);
	free(s);
	free(signing);
	return tok;
}

static const struct {
	const char	*header;
	const char	*payload;
	enum sig	 sig;
	int		 leeway;
	const char	*why;		/* NULL: accepted */
	const char	*user;
	const char	*device;
} cases[] = {
	/* Good tokens. */
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ "{\"alg\":\"HS256\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ "{\"typ\":\"JWT\",\"alg\":\"HS256\",\"kid\":\"k1\"}", "{\"exp\":1700000060,\"sub\":\"a.b@c+d-e_f\"}",
	    SIG_GOOD, LEEWAY, NULL, "a.b@c+d-e_f", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060,\"dev\":\"phone-1\"}", SIG_GOOD, LEEWAY, NULL, "alice",
	    "phone-1" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060,\"dev\":null}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060,\"iat\":1699999000,\"nbf\":1699999000,\"x\":[1]}",
	    SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060.5}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"0123456789012345678901234567890123456789012345678901234567890123\","
	    "\"exp\":1700000060}", SIG_GOOD, LEEWAY, NULL,
	    "0123456789012345678901234567890123456789012345678901234567890123", "" },

	/* Expiry, with and within the leeway. */
	{ HS256, "{\"sub\":\"alice\",\"exp\":1699999969}", SIG_GOOD, LEEWAY, "token expired", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1699999970}", SIG_GOOD, LEEWAY, "token expired", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1699999971}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000000}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000000}", SIG_GOOD, 0, "token expired", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000001}", SIG_GOOD, 0, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":0}", SIG_GOOD, LEEWAY, "token expired", NULL, NULL },
	/* One range for every time claim, integer or not: |t| <= 9e15 (2^64 must not mean "never"). */
	{ HS256, "{\"sub\":\"alice\",\"exp\":-9223372036854775808}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":18446744073709551616}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":18446744073709551615}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":9223372036854775807}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":9000000000000001}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":9000000000000000}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":9e15}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1e30}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":-9000000000000001}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"nbf\":-18446744073709551616}", SIG_GOOD, LEEWAY,
	    "invalid nbf", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"iat\":18446744073709551616}", SIG_GOOD, LEEWAY,
	    "invalid iat", NULL, NULL },

	/* nbf and iat in the future, with and within the leeway. */
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"nbf\":1700000031}", SIG_GOOD, LEEWAY,
	    "token not yet valid", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"nbf\":1700000030}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"nbf\":1700000001}", SIG_GOOD, 0,
	    "token not yet valid", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"iat\":1700000031}", SIG_GOOD, LEEWAY,
	    "token issued in the future", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"iat\":1700000030}", SIG_GOOD, LEEWAY, NULL, "alice", "" },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"nbf\":\"soon\"}", SIG_GOOD, LEEWAY, "invalid nbf", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700001000,\"iat\":true}", SIG_GOOD, LEEWAY, "invalid iat", NULL, NULL },

	/* Signatures. */
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_OTHER_KEY, LEEWAY, "bad signature", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_NONE, LEEWAY, "bad signature", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GARBAGE, LEEWAY, "bad signature", NULL, NULL },

	/* Algorithms other than HS256, signed or not. */
	{ "{\"alg\":\"none\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_NONE, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY,
	    "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"None\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_NONE, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"HS384\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"HS512\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"RS256\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"ES256\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"hs256\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"HS256 \"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"HS256\\u0000\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY,
	    "unsupported algorithm", NULL, NULL },
	{ "{\"typ\":\"JWT\"}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":256}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":[\"HS256\"]}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "unsupported algorithm", NULL, NULL },
	{ "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY,
	    "unsupported header", NULL, NULL },
	{ "{\"alg\":\"HS256\",\"typ\":7}", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY,
	    "malformed token", NULL, NULL },
	{ "[\"HS256\"]", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "malformed token", NULL, NULL },
	{ "HS256", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "malformed token", NULL, NULL },
	{ "", "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "malformed token", NULL, NULL },

	/* Claims. */
	{ HS256, "{\"exp\":1700000060}", SIG_GOOD, LEEWAY, "missing sub", NULL, NULL },
	{ HS256, "{\"sub\":null,\"exp\":1700000060}", SIG_GOOD, LEEWAY, "missing sub", NULL, NULL },
	{ HS256, "{\"sub\":\"\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "invalid sub", NULL, NULL },
	{ HS256, "{\"sub\":\"bad id\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "invalid sub", NULL, NULL },
	{ HS256, "{\"sub\":\"alice/../x\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "invalid sub", NULL, NULL },
	{ HS256, "{\"sub\":\"al\\u00efce\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "invalid sub", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\\u0000bob\",\"exp\":1700000060}", SIG_GOOD, LEEWAY, "invalid sub", NULL, NULL },
	{ HS256, "{\"sub\":\"01234567890123456789012345678901234567890123456789012345678901234\","
	    "\"exp\":1700000060}", SIG_GOOD, LEEWAY, "invalid sub", NULL, NULL },
	{ HS256, "{\"sub\":42,\"exp\":1700000060}", SIG_GOOD, LEEWAY, "invalid sub", NULL, NULL },
	{ HS256, "{\"sub\":[\"alice\"],\"exp\":1700000060}", SIG_GOOD, LEEWAY, "invalid sub", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\"}", SIG_GOOD, LEEWAY, "missing exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":null}", SIG_GOOD, LEEWAY, "missing exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":\"1700000060\"}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":true}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":{}}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1e300}", SIG_GOOD, LEEWAY, "invalid exp", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060,\"dev\":5}", SIG_GOOD, LEEWAY, "invalid dev", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060,\"dev\":\"\"}", SIG_GOOD, LEEWAY, "invalid dev", NULL, NULL },
	{ HS256, "{\"sub\":\"alice\",\"exp\":1700000060,\"dev\":\"a\\nb\"}", SIG_GOOD, LEEWAY, "invalid dev", NULL, NULL },
	{ HS256, "[\"alice\"]", SIG_GOOD, LEEWAY, "malformed token", NULL, NULL },
	{ HS256, "not json", SIG_GOOD, LEEWAY, "malformed token", NULL, NULL },
	{ HS256, "", SIG_GOOD, LEEWAY, "malformed token", NULL, NULL },
};

START_TEST(test_cases)
{
	struct auth_identity id;
	const char *why = NULL;
	char *tok;
	int rc;

	tok = make_token(cases[_i].header, cases[_i].payload, cases[_i].sig);
	memset(&id, 0x55, sizeof id);
	errno = 0;
	rc = auth_verify(tok, SECRET, cases[_i].leeway, NOW, &id, &why);
	if (cases[_i].why == NULL) {
		ck_assert_msg(rc == 0, "%s %s refused: %s", cases[_i].header, cases[_i].payload, why);
		ck_assert_str_eq(id.user, cases[_i].user);
		ck_assert_str_eq(id.device, cases[_i].device);
		ck_assert_int_ge(id.exp, NOW - cases[_i].leeway);
	} else {
		ck_assert_msg(rc == -1, "%s %s accepted", cases[_i].header, cases[_i].payload);
		ck_assert_int_eq(errno, EPERM);
		ck_assert_msg(why != NULL && strcmp(why, cases[_i].why) == 0, "%s %s: why '%s', expected '%s'",
		    cases[_i].header, cases[_i].payload, why, cases[_i].why);
		/* Nothing of a refused token is left for a careless caller to use. */
		ck_assert_str_eq(id.user, "");
		ck_assert_str_eq(id.device, "");
	}
	free(tok);
}
END_TEST

/* Tokens that are not three base64url segments. */
static const struct {
	const char	*token;
	const char	*why;
} garbage[] = {
	{ "", "malformed token" },
	{ "abc", "malformed token" },
	{ "a.b", "malformed token" },
	{ "..", "malformed token" },
	{ "...", "malformed token" },
	{ "a.b.c.d", "malformed token" },
	{ "eyJhbGciOiJIUzI1NiJ9", "malformed token" },
	{ "eyJhbGciOiJIUzI1NiJ9..", "bad signature" },	/* header ok, no signature */
	{ "eyJhbGciOiJIUzI1NiJ9=.e30.x", "malformed token" },	/* padding */
	{ "eyJhbGciOiJIUzI1NiJ9.e30=.x", "bad signature" },	/* padding, caught by the MAC first */
	{ "eyJhbGc!OiJIUzI1NiJ9.e30.x", "malformed token" },
	{ "eyJhbGciOiJIUzI1NiJ9 .e30.x", "malformed token" },
	{ "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", "malformed token" },
	{ "e.e30.x", "malformed token" },			/* length 1 mod 4 */
	{ "\xff\xfe.\x01.\x02", "malformed token" },
};

START_TEST(test_garbage)
{
	struct auth_identity id;
	const char *why = NULL;

	errno = 0;
	ck_assert_int_eq(auth_verify(garbage[_i].token, SECRET, LEEWAY, NOW, &id, &why), -1);
	ck_assert_int_eq(errno, EPERM);
	ck_assert_msg(why != NULL && strcmp(why, garbage[_i].why) == 0, "'%s': why '%s'",
	    garbage[_i].token, why);
}
END_TEST

START_TEST(test_null_and_empty_secret)
{
	struct auth_identity id;
	const char *why = NULL;
	char *tok = make_token(HS256, "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD);

	ck_assert_int_eq(auth_verify(NULL, SECRET, LEEWAY, NOW, &id, &why), -1);
	ck_assert_str_eq(why, "malformed token");
	/* An empty secret verifies nothing (it would make every HMAC forgeable). */
	ck_assert_int_eq(auth_verify(tok, "", LEEWAY, NOW, &id, &why), -1);
	free(tok);
}
END_TEST

/* Longer than 4096 bytes: refused before any decoding, even when correctly signed. */
START_TEST(test_too_long)
{
	struct auth_identity id;
	const char *why = NULL;
	char *payload, *pad, *tok;
	size_t padlen;

	for (padlen = 2900; padlen < 3100; padlen += 50) {
		pad = xmalloc(padlen + 1);
		memset(pad, 'x', padlen);
		pad[padlen] = '\0';
		xasprintf(&payload, "{\"sub\":\"alice\",\"exp\":1700000060,\"pad\":\"%s\"}", pad);
		tok = make_token(HS256, payload, SIG_GOOD);
		if (strlen(tok) <= 4096) {
			ck_assert_msg(auth_verify(tok, SECRET, LEEWAY, NOW, &id, &why) == 0,
			    "%zu bytes: %s", strlen(tok), why);
		} else {
			ck_assert_int_eq(auth_verify(tok, SECRET, LEEWAY, NOW, &id, &why), -1);
			ck_assert_str_eq(why, "token too long");
		}
		free(tok);
		free(payload);
		free(pad);
	}
	pad = xmalloc(100000);
	memset(pad, 'a', 99999);
	pad[99999] = '\0';
	ck_assert_int_eq(auth_verify(pad, SECRET, LEEWAY, NOW, &id, &why), -1);
	ck_assert_str_eq(why, "token too long");
	free(pad);
}
END_TEST

/* A valid signature over other claims: swap the payload of one good token into another. */
START_TEST(test_tampered)
{
	struct auth_identity id;
	const char *why = NULL;
	char *a, *b, *t, *pa, *pb;

	a = make_token(HS256, "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD);
	b = make_token(HS256, "{\"sub\":\"mallory\",\"exp\":1800000000}", SIG_GOOD);
	pa = strchr(a, '.') + 1;
	pb = strchr(b, '.') + 1;
	/* alice's header and signature around mallory's payload */
	xasprintf(&t, "%.*s%.*s%s", (int)(pa - a), a, (int)(strchr(pb, '.') - pb), pb, strchr(pa, '.'));
	ck_assert_int_eq(auth_verify(t, SECRET, LEEWAY, NOW, &id, &why), -1);
	ck_assert_str_eq(why, "bad signature");
	free(t);
	/* One flipped character anywhere breaks it. */
	t = xstrdup(a);
	t[strlen(t) / 2] = t[strlen(t) / 2] == 'A' ? 'B' : 'A';
	ck_assert_int_eq(auth_verify(t, SECRET, LEEWAY, NOW, &id, &why), -1);
	free(t);
	free(a);
	free(b);
}
END_TEST

/* The last character of a 32-byte signature carries 2 unused bits: setting them is refused. */
START_TEST(test_noncanonical_signature)
{
	static const char alphabet[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	struct auth_identity id;
	const char *why = NULL;
	char *tok, *last;
	int v;

	tok = make_token(HS256, "{\"sub\":\"alice\",\"exp\":1700000060}", SIG_GOOD);
	ck_assert_int_eq(auth_verify(tok, SECRET, LEEWAY, NOW, &id, &why), 0);
	last = tok + strlen(tok) - 1;
	v = (int)(strchr(alphabet, *last) - alphabet);
	ck_assert_int_eq(v & 3, 0);
	*last = alphabet[v | 1];
	ck_assert_int_eq(auth_verify(tok, SECRET, LEEWAY, NOW, &id, &why), -1);
	ck_assert_str_eq(why, "bad signature");
	free(tok);
}
END_TEST

/* Minted tokens verify, carry the expected header and claims, and expire on time. */
START_TEST(test_mint_roundtrip)
{
	struct auth_identity id;
	const char *why = NULL;
	char *tok, *h;

	tok = auth_mint(SECRET, "alice", "laptop-2", NOW, 3600);
	ck_assert_ptr_nonnull(tok);
	h = b64url((const unsigned char *)HS256, strlen(HS256));
	ck_assert_msg(strncmp(tok, h, strlen(h)) == 0 && tok[strlen(h)] == '.', "header of %s", tok);
	free(h);
	ck_assert_ptr_null(strchr(tok, '='));
	ck_assert_int_eq(auth_verify(tok, SECRET, LEEWAY, NOW, &id, &why), 0);
	ck_assert_str_eq(id.user, "alice");
	ck_assert_str_eq(id.device, "laptop-2");
	ck_assert_int_eq(id.exp, NOW + 3600);
	ck_assert_int_eq(auth_verify(tok, SECRET, LEEWAY, NOW + 3600 + LEEWAY - 1, &id, &why), 0);
	ck_assert_int_eq(auth_verify(tok, SECRET, LEEWAY, NOW + 3600 + LEEWAY, &id, &why), -1);
	ck_assert_str_eq(why, "token expired");
	ck_assert_int_eq(auth_verify(tok, SECRET, LEEWAY, NOW - LEEWAY - 1, &id, &why), -1);
	ck_assert_str_eq(why, "token issued in the future");
	ck_assert_int_eq(auth_verify(tok, OTHER, LEEWAY, NOW, &id, &why), -1);
	ck_assert_str_eq(why, "bad signature");
	free(tok);

	tok = auth_mint(SECRET, "bob@example.com", NULL, NOW, 60);
	ck_assert_int_eq(auth_verify(tok, SECRET, 0, NOW + 59, &id, &why), 0);
	ck_assert_str_eq(id.user, "bob@example.com");
	ck_assert_str_eq(id.device, "");
	free(tok);

	/* A device id may hold any printable character; the claim is escaped and comes back intact. */
	tok = auth_mint(SECRET, "carol", "dev \"q\" \\ /", NOW, 60);
	ck_assert_ptr_nonnull(tok);
	ck_assert_int_eq(auth_verify(tok, SECRET, 0, NOW, &id, &why), 0);
	ck_assert_str_eq(id.device, "dev \"q\" \\ /");
	free(tok);
}
END_TEST

/* The payload is exactly {"sub":..,"iat":..,"exp":..[,"dev":..]}. */
START_TEST(test_mint_claims)
{
	const char *want = "{\"sub\":\"alice\",\"iat\":1700000000,\"exp\":1700000100,\"dev\":\"d1\"}";
	char *tok, *p, *enc;

	tok = auth_mint(SECRET, "alice", "d1", NOW, 100);
	enc = b64url((const unsigned char *)want, strlen(want));
	p = strchr(tok, '.') + 1;
	ck_assert_int_eq(strncmp(p, enc, strlen(enc)), 0);
	ck_assert_int_eq(p[strlen(enc)], '.');
	free(enc);
	free(tok);
}
END_TEST

START_TEST(test_mint_invalid)
{
	errno = 0;
	ck_assert_ptr_null(auth_mint(SECRET, "bad user", NULL, NOW, 60));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(auth_mint(SECRET, "", NULL, NOW, 60));
	ck_assert_ptr_null(auth_mint(SECRET, "alice", "", NOW, 60));
	ck_assert_ptr_null(auth_mint(SECRET, "alice", "a\nb", NOW, 60));
	ck_assert_ptr_null(auth_mint("", "alice", NULL, NOW, 60));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("auth");
	TCase *tc = tcase_create("auth");

	tcase_add_loop_test(tc, test_cases, 0, PARLEY_NITEMS(cases));
	tcase_add_loop_test(tc, test_garbage, 0, PARLEY_NITEMS(garbage));
	tcase_add_test(tc, test_null_and_empty_secret);
	tcase_add_test(tc, test_too_long);
	tcase_add_test(tc, test_tampered);
	tcase_add_test(tc, test_noncanonical_signature);
	tcase_add_test(tc, test_mint_roundtrip);
	tcase_add_test(tc, test_mint_claims);
	tcase_add_test(tc, test_mint_invalid);
	suite_add_tcase(s, tc);
	return testenv_run(s);
}
