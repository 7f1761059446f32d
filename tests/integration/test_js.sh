#!/usr/bin/env bash
# test_js.sh - the JavaScript client (contrib/js/parley.js) against the real stack: lighttpd in front
# of parley-fcgi and parley-ws, started by contrib/js/test/stack.mjs. Run under
# tests/harness/with-services (make check does); the tests are contrib/js/test/client.test.mjs,
# run by Node's test runner, whose summary this prints.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"
test_env test_js.sh parley-fcgi parley-ws parleyctl
need_node_modules test_js.sh contrib/js ws
js="$PARLEY_SRCDIR/contrib/js"
cd "$js" || exit 99
echo "== WebSocket: the npm package ws"
node --test --test-reporter=spec test/client.test.mjs
rc=$?
# The WHATWG WebSocket (the browsers' API: no terminate(), close codes 1000/3000-4999 only).
if node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
	echo "== WebSocket: node's built-in (--experimental-websocket)"
	PARLEY_JS_WEBSOCKET=builtin node --experimental-websocket --test --test-reporter=spec \
		test/client.test.mjs || rc=1
else
	echo "== node $(node --version) has no built-in WebSocket: the ws pass above is the only one"
fi
exit $rc
