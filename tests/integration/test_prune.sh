#!/usr/bin/env bash
# test_prune.sh - parleyctl prune under load on both transports: parley-fcgi behind lighttpd and
# parley-ws on one bus, senders and long polls running while prune cuts their logs. The checks
# are in prune_test.py. Run under tests/harness/with-services (make check does).
set -u

: "${PARLEY_TEST_CONFIG:?run me through tests/harness/with-services}"
srcdir=${PARLEY_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
builddir=${PARLEY_BUILDDIR:-$srcdir}
export PARLEY_SRCDIR=$srcdir PARLEY_BUILDDIR=$builddir
webserver="$srcdir/tests/harness/webserver"

for b in parley-fcgi parley-ws parleyctl; do
	[ -x "$builddir/$b" ] || { echo "test_prune: $builddir/$b is not built" >&2; exit 99; }
done
/usr/bin/python3 -c 'import websockets' 2>/dev/null ||
	{ echo "test_prune: python3-websockets is missing" >&2; exit 99; }

work=$(mktemp -d /tmp/parley-prune-test.XXXXXX)
chmod 711 "$work"
pids=()
web=
cleanup() {
	local p
	[ -n "$web" ] && "$webserver" stop "$web" >/dev/null 2>&1
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	[ "${rc:-1}" = 0 ] || for f in "$work"/*.log; do echo "--- $f"; tail -20 "$f"; done
	rm -rf "$work"
}
trap cleanup EXIT

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
awk '/^\[/ { skip = ($0 == "[bus]" || $0 == "[fcgi]" || $0 == "[ws]") } !skip' "$PARLEY_TEST_CONFIG" >"$work/parley.conf"
cat >>"$work/parley.conf" <<CONF
[bus]
dir = $work/bus
[fcgi]
listen = $work/fcgi.sock
socket_mode = 0660
[ws]
listen = 127.0.0.1
port = $port
CONF
"$builddir/parley-fcgi" -c "$work/parley.conf" >"$work/fcgi.log" 2>&1 &
pids+=($!)
"$builddir/parley-ws" -c "$work/parley.conf" >"$work/ws.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	[ -S "$work/fcgi.sock" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	sleep 0.05
done
env_line=$("$webserver" start lighttpd "$work/web" --fcgi "$work/fcgi.sock") ||
	{ echo "FAIL lighttpd did not start"; exit 1; }
web="$work/web"

PARLEY_HTTP=${env_line#export PARLEY_HTTP=} PARLEY_WS="ws://127.0.0.1:$port/ws" \
	PRUNE_CONF_BASE="$work/parley.conf" /usr/bin/python3 "$srcdir/tests/integration/prune_test.py"
rc=$?
exit $rc
