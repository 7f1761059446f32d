#!/usr/bin/env bash
# test_fcgi.sh - parley-fcgi through real web servers: lighttpd (everything), nginx and Apache
# (send and long polls; Apache also FCGI_KEEP_CONN descriptor leaks), SIGTERM, MySQL down.
#
# Run by make check through tests/harness/with-services (PARLEY_TEST_CONFIG, PARLEY_TEST_DIR,
# PARLEY_SRCDIR, PARLEY_BUILDDIR). The HTTP checks are in fcgi_test.py (stdlib only).
# Stops MySQL for a moment at the very end (the MySQL-down checks).
set -u

: "${PARLEY_TEST_CONFIG:?run me through tests/harness/with-services}"
srcdir=${PARLEY_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
builddir=${PARLEY_BUILDDIR:-$srcdir}
py=/usr/bin/python3
t="$srcdir/tests/integration/fcgi_test.py"
webserver="$srcdir/tests/harness/webserver"
fcgi_bin="$builddir/parley-fcgi"
export PARLEY_SRCDIR=$srcdir PARLEY_BUILDDIR=$builddir

[ -x "$fcgi_bin" ] || { echo "test_fcgi: $fcgi_bin not built"; exit 1; }

# Sockets live in a directory the web server's user (www-data for Apache) may traverse.
work=$(mktemp -d /tmp/parley-fcgi-test.XXXXXX)
chmod 711 "$work"
passed=0
failed=0
pids=()
servers=()

cleanup() {
	local s p
	for s in "${servers[@]}"; do "$webserver" stop "$s" >/dev/null 2>&1; done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	if [ "$failed" -gt 0 ] || [ "${keep:-0}" = 1 ]; then
		for f in "$work"/*.log "$work"/*/error.log; do
			[ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }
		done
	fi
	rm -rf "$work"
}
trap cleanup EXIT

result() {	# result NAME OUTPUT-FILE: add the python run's counts
	local line p f
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$2" | tail -1)
	if [ -z "$line" ]; then
		echo "FAIL $1: no result line"
		failed=$((failed + 1))
		return
	fi
	p=${line%% passed*}; f=${line#*, }; f=${f%% failed}
	passed=$((passed + p)); failed=$((failed + f))
}

run_py() {	# run_py NAME ENV... -- ARGS...: run fcgi_test.py, show and count its output
	local name=$1 out="$work/$1.out"
	shift
	env "$@" "$py" "$t" "${phase_args[@]}" >"$out" 2>&1
	cat "$out"
	result "$name" "$out"
}

# A config like the stack's, with its own listen socket and a bus shared by both processes.
make_conf() {	# make_conf NAME SOCKET [MAX_PARKED [MAX_PARKED_PER_USER]]
	awk '/^\[/ { skip = ($0 == "[bus]" || $0 == "[fcgi]") } !skip' "$PARLEY_TEST_CONFIG" >"$work/$1.conf"
	cat >>"$work/$1.conf" <<CONF
[bus]
dir = $work/bus
[fcgi]
listen = $2
socket_mode = 0660
threads = 4
max_parked = ${3:-10000}
max_parked_per_user = ${4:-16}
CONF
}

start_fcgi() {	# start_fcgi NAME [MAX_PARKED [MAX_PARKED_PER_USER]]: sets fcgi_pid
	make_conf "$1" "$work/$1.sock" "${2:-}" "${3:-}"
	"$fcgi_bin" -c "$work/$1.conf" >"$work/$1.log" 2>&1 &
	fcgi_pid=$!
	pids+=("$fcgi_pid")
	for _ in $(seq 100); do
		[ -S "$work/$1.sock" ] && [ -d "$work/bus" ] && return 0
		sleep 0.05
	done
	echo "FAIL parley-fcgi $1 did not start"; cat "$work/$1.log"
	failed=$((failed + 1))
	return 1
}

start_web() {	# start_web SERVER DIR SOCKET: sets web_url
	local env_line
	env_line=$("$webserver" start "$1" "$work/$2" --fcgi "$3") || {
		echo "FAIL $1 did not start"; failed=$((failed + 1)); return 1; }
	servers+=("$work/$2")
	web_url=${env_line#export PARLEY_HTTP=}
}

start_fcgi one || exit 1
pid1=$fcgi_pid
start_fcgi two 20 3 || exit 1
pid2=$fcgi_pid
start_web lighttpd lt1 "$work/one.sock" || exit 1
url1=$web_url
start_web lighttpd lt2 "$work/two.sock" || exit 1
url2=$web_url

echo "== lighttpd: every route, long polls, sync, hang-up, keep-conn, two processes, 2000 parked"
phase_args=(full)
run_py lighttpd PARLEY_HTTP="$url1" PARLEY_HTTP2="$url2" FCGI_PID="$pid1" \
	FCGI_SOCKET="$work/one.sock" FCGI_MASS="${FCGI_MASS:-2000}" FCGI_USER_CAP2=3 \
	BUS_DIR="$work/bus" FCGI_CONF="$work/one.conf"

echo "== nginx: send and long polls"
if start_web nginx ngx "$work/one.sock"; then
	phase_args=(basic)
	run_py nginx PARLEY_HTTP="$web_url" FCGI_PID="$pid1" FCGI_SERVER=nginx
	"$webserver" stop "$work/ngx"
fi

echo "== Apache (mod_proxy_fcgi): send, long polls, no descriptor leak with FCGI_KEEP_CONN"
if start_web apache apa "$work/one.sock"; then
	phase_args=(basic)
	run_py apache PARLEY_HTTP="$web_url" FCGI_PID="$pid1" FCGI_SERVER=apache
	phase_args=(fdleak)
	run_py apache-fd PARLEY_HTTP="$web_url" FCGI_PID="$pid1"
	"$webserver" stop "$work/apa"
fi

echo "== parley-fcgi down: each web server's own answer is the contract's JSON error"
for server in lighttpd nginx apache; do
	if start_web "$server" "down-$server" "$work/nobody.sock"; then
		phase_args=(down)
		run_py "down-$server" PARLEY_HTTP="$web_url" FCGI_SERVER="$server"
		"$webserver" stop "$work/down-$server"
	fi
done

echo "== SIGTERM: parked polls answered empty, exit 0"
phase_args=(park 20)
run_py sigterm PARLEY_HTTP="$url2" FCGI_PID="$pid2" FCGI_KILL_PID="$pid2" FCGI_MAX_PARKED=20
wait "$pid2"
rc=$?
if [ "$rc" = 0 ]; then
	echo "ok   parley-fcgi exited 0 after SIGTERM"; passed=$((passed + 1))
else
	echo "FAIL parley-fcgi exited $rc after SIGTERM"; failed=$((failed + 1))
fi
[ -S "$work/two.sock" ] && { echo "FAIL socket left behind"; failed=$((failed + 1)); } ||
	{ echo "ok   its socket was removed"; passed=$((passed + 1)); }

echo "== spawn-fcgi: the listening socket on fd 0"
if command -v spawn-fcgi >/dev/null; then
	make_conf spawned "$work/unused.sock"
	spawn-fcgi -n -s "$work/spawned.sock" -M 0660 -- "$fcgi_bin" -c "$work/spawned.conf" \
		>"$work/spawned.log" 2>&1 &
	pids+=("$!")
	for _ in $(seq 100); do [ -S "$work/spawned.sock" ] && break; sleep 0.05; done
	phase_args=(raw)
	run_py spawned FCGI_SOCKET="$work/spawned.sock" PARLEY_HTTP="$url1"
	[ ! -e "$work/unused.sock" ] && { echo "ok   fcgi.listen not used with fd 0"; passed=$((passed + 1)); } ||
		{ echo "FAIL parley-fcgi opened fcgi.listen although fd 0 was a socket"; failed=$((failed + 1)); }
else
	echo "FAIL spawn-fcgi is missing (apt-get install spawn-fcgi)"; failed=$((failed + 1))
fi

echo "== a bus directory its group or others may write to: parley-fcgi refuses to start"
make_conf openbus "$work/openbus.sock"
sed -i "s|^dir = $work/bus\$|dir = $work/openbus|" "$work/openbus.conf"
mkdir -m 0777 "$work/openbus" && chmod 0777 "$work/openbus"
timeout 10 "$fcgi_bin" -c "$work/openbus.conf" >"$work/openbus.log" 2>&1
rc=$?
if [ "$rc" = 1 ] && grep -q "bus directory $work/openbus has mode 0777" "$work/openbus.log" &&
    [ -z "$(ls -A "$work/openbus")" ]; then
	echo "ok   a world-writable bus directory is refused at start-up (exit 1, the reason logged)"
	passed=$((passed + 1))
else
	echo "FAIL parley-fcgi with a 0777 bus directory: exit $rc"; cat "$work/openbus.log"
	failed=$((failed + 1))
fi

echo "== MySQL down: 503 + Retry-After, then recovery without a restart"
mysql_pid=$(cat "$PARLEY_TEST_DIR/mysql.pid" 2>/dev/null || true)
if [ -n "$mysql_pid" ] && kill "$mysql_pid" 2>/dev/null; then
	for _ in $(seq 300); do kill -0 "$mysql_pid" 2>/dev/null || break; sleep 0.1; done
	phase_args=(mysqldown)
	run_py mysqldown PARLEY_HTTP="$url1" FCGI_PID="$pid1"
	"$srcdir/tests/harness/services" restart-mysql "$PARLEY_TEST_DIR" >/dev/null 2>&1 ||
		{ echo "FAIL could not restart MySQL"; failed=$((failed + 1)); }
	phase_args=(recovered)
	run_py recovered PARLEY_HTTP="$url1" FCGI_PID="$pid1"
else
	echo "FAIL cannot stop MySQL (no $PARLEY_TEST_DIR/mysql.pid)"; failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
