/* fuzz_jwt.c - libFuzzer target: JWT verification (src/auth.c), forged tokens and well-signed hostile claims. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "protocol.h"

#define SECRET	"fuzz-secret"
#define NOW	1700000000
#define LEEWAY	30

static void
check(int ok)
{
	if (!ok)
		abort();
}

static size_t
b64url(const unsigned char *in, size_t len, char *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	uint32_t acc = 0;
	size_t i, n = 0;
	int bits = 0;

	for (i = 0; i < len; i++) {
		acc = (acc << 8) | in[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			out[n++] = a[(acc >> bits) & 0x3f];
		}
		acc &= (1U << bits) - 1;
	}
	if (bits > 0)
		out[n++] = a[(acc << (6 - bits)) & 0x3f];
	out[n] = '\0';
	return n;
}

/*
 * Input: a mode byte, then either a whole token (mode even: what an attacker sends) or a header
 * JSON, a newline and a claims JSON (mode odd: signed here with the secret, so the fuzzer reaches
 * the header and claim checks behind the signature).
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	struct auth_identity id;
	const char *why = NULL, *nl;
	unsigned int maclen = 0;
	char *tok;
	size_t n, hlen;
	int rc;

	if (size < 1 || size > 8192)
		return 0;
	tok = malloc(size * 2 + 128);
	if (data[0] % 2 == 0) {
		memcpy(tok, data + 1, size - 1);
		tok[size - 1] = '\0';
	} else {
		nl = memchr(data + 1, '\n', size - 1);
		hlen = nl != NULL ? (size_t)(nl - (const char *)data - 1) : size - 1;
		n = b64url(data + 1, hlen, tok);
		tok[n++] = '.';
		if (nl != NULL)
			n += b64url((const unsigned char *)nl + 1, size - 2 - hlen, tok + n);
		HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)tok, n, mac, &maclen);
		tok[n++] = '.';
		b64url(mac, maclen, tok + n);
	}
	rc = auth_verify(tok, SECRET, LEEWAY, NOW, &id, &why);
	if (rc == 0) {
		check(protocol_valid_user(id.user));
		check(id.device[0] == '\0' || protocol_valid_id(id.device));
		check(id.exp > NOW - LEEWAY);
		/* Accepted with our secret, then never with another. */
		check(auth_verify(tok, "other-secret", LEEWAY, NOW, &id, &why) == -1);
	} else
		check(why != NULL && id.user[0] == '\0');
	free(tok);
	return 0;
}
