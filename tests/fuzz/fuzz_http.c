/* fuzz_http.c - libFuzzer target: URI paths and query strings as parley-fcgi parses them (fcgi/http.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "protocol.h"

#define SEGS_MAX 6

static void
check(int ok)
{
	if (!ok)
		abort();
}

/* A decoded value: NUL-free (its strlen is all of it) and valid UTF-8, as http.h promises. */
static void
check_value(const char *v)
{
	check(v != NULL && protocol_valid_utf8(v, strlen(v)));
}

/* Input: the path, a newline, the query string (either may hold any bytes but NUL). */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *keys[] = { "after", "limit", "timeout", "users", "a", "" };
	char *buf, *query, *segs[SEGS_MAX], *v;
	size_t n, i;
	uint64_t u;

	buf = malloc(size + 1);
	memcpy(buf, data, size);
	buf[size] = '\0';
	if (strlen(buf) != size) {	/* CGI parameters are C strings */
		free(buf);
		return 0;
	}
	if ((query = strchr(buf, '\n')) != NULL)
		*query++ = '\0';
	if (http_path_split(buf, segs, SEGS_MAX, &n) == 0) {
		check(n <= SEGS_MAX);
		for (i = 0; i < n; i++) {
			check_value(segs[i]);
			check(segs[i][0] != '\0');
			(void)protocol_parse_u64(segs[i], 1, (uint64_t)INT64_MAX, &u);
			free(segs[i]);
		}
	}
	if (query != NULL) {
		for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
			v = NULL;
			switch (http_query_get(query, keys[i], &v)) {
			case 1:
				check_value(v);
				if (protocol_parse_u64(v, 0, 1000, &u) == 0)
					check(u <= 1000);
				break;
			default:
				check(v == NULL);
				break;
			}
			free(v);
		}
	}
	free(buf);
	return 0;
}
