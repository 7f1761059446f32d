#!/usr/bin/env bash
# test_ws.sh - parley-ws end to end: real daemons, real MariaDB/memcached, a real WebSocket client.
# Run under tests/harness/with-services (make check does); the tests are in ws_test.py.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${PARLEY_BUILDDIR:=$(pwd)}"
: "${PARLEY_SRCDIR:=$(cd "$here/../.." && pwd)}"
export PARLEY_BUILDDIR PARLEY_SRCDIR
if [ -z "${PARLEY_TEST_CONFIG:-}" ]; then
	echo "test_ws.sh: run it under tests/harness/with-services" >&2
	exit 99
fi
if [ ! -x "$PARLEY_BUILDDIR/parley-ws" ]; then
	echo "test_ws.sh: $PARLEY_BUILDDIR/parley-ws is not built" >&2
	exit 99
fi
if ! /usr/bin/python3 -c 'import websockets' 2>/dev/null; then
	echo "test_ws.sh: python3-websockets is missing (apt-get install python3-websockets)" >&2
	exit 99
fi
exec /usr/bin/python3 "$here/ws_test.py" "$@"
