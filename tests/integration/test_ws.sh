#!/usr/bin/env bash
# test_ws.sh - parley-ws end to end: real daemons, real MariaDB/memcached, a real WebSocket client.
# Run under tests/harness/with-services (make check does); the tests are in ws_test.py.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"
test_env test_ws.sh parley-ws
need_websockets test_ws.sh
exec /usr/bin/python3 "$here/ws_test.py" "$@"
