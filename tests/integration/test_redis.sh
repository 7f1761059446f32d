#!/usr/bin/env bash
# test_redis.sh - two "hosts" (each parley-ws + parley-fcgi behind lighttpd, a bus directory of
# its own) on one machine, joined by the Redis bridge through the stack's redis-server.
# Run under tests/harness/with-services (make check does); the checks are in redis_test.py.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"
test_env test_redis.sh parley-ws parley-fcgi
if [ -z "${PARLEY_TEST_REDIS_SOCKET:-}" ]; then
	echo "test_redis.sh: run it under tests/harness/with-services" >&2
	exit 99
fi
exec /usr/bin/python3 "$here/redis_test.py" "$@"
