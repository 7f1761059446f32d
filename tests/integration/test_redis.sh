#!/usr/bin/env bash
# test_redis.sh - two "hosts" (each parley-ws + parley-fcgi behind lighttpd, a bus directory of
# its own) on one machine, joined by the Redis bridge through the stack's redis-server.
# Run under tests/harness/with-services (make check does); the checks are in redis_test.py.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${PARLEY_BUILDDIR:=$(pwd)}"
: "${PARLEY_SRCDIR:=$(cd "$here/../.." && pwd)}"
export PARLEY_BUILDDIR PARLEY_SRCDIR
if [ -z "${PARLEY_TEST_REDIS_SOCKET:-}" ] || [ -z "${PARLEY_TEST_CONFIG:-}" ]; then
	echo "test_redis.sh: run it under tests/harness/with-services" >&2
	exit 99
fi
for b in parley-ws parley-fcgi; do
	[ -x "$PARLEY_BUILDDIR/$b" ] || { echo "test_redis.sh: $PARLEY_BUILDDIR/$b is not built" >&2; exit 99; }
done
exec /usr/bin/python3 "$here/redis_test.py" "$@"
