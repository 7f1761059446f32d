/* fuzz_bus.c - libFuzzer target: one bus datagram through bus_decode (src/bus.c), as a peer could send it. */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

#include "bus.h"

static void
check(int ok)
{
	if (!ok)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bus_hint h;

	if (bus_decode(data, size, &h) == 0) {
		check(h.topic >= BUS_USER_EVENT && h.topic <= BUS_LOST);
		check(memchr(h.key, '\0', sizeof h.key) != NULL);
		check(h.len <= BUS_PAYLOAD_MAX && h.payload[h.len] == '\0');
		check(size <= BUS_DGRAM_MAX);
	}
	return 0;
}
