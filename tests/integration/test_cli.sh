#!/usr/bin/env bash
# test_cli.sh - what an operator meets first: --version and --help on every binary, usage errors,
# parleyctl check-config, the man pages (render without warnings), and every configuration key
# documented in docs/configuration.md, parley.conf(5) and the sample contrib/parley.conf.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${PARLEY_BUILDDIR:=$(pwd)}"
: "${PARLEY_SRCDIR:=$(cd "$here/../.." && pwd)}"
b=$PARLEY_BUILDDIR s=$PARLEY_SRCDIR
pass=0 fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
# matches FILE REGEX: "-" wants FILE empty, anything else a line matching the regex.
matches() {
	if [ "$2" = - ]; then [ ! -s "$1" ]; else grep -qE -- "$2" "$1"; fi
}
# expect NAME WANT_RC WANT_STDOUT WANT_STDERR -- CMD... (see matches for the two wants)
expect() {
	local name=$1 rc=$2 out=$3 err=$4 got; shift 5
	"$@" >"$tmp/out" 2>"$tmp/err"; got=$?
	[ "$got" -eq "$rc" ] || { bad "$name: exit $got, want $rc"; return; }
	matches "$tmp/out" "$out" || { bad "$name: stdout '$(head -c 200 "$tmp/out")'"; return; }
	matches "$tmp/err" "$err" || { bad "$name: stderr '$(head -c 200 "$tmp/err")'"; return; }
	ok
}

version=$(sed -n 's/^AC_INIT(\[parley\], \[\([^]]*\)\].*/\1/p' "$s/configure.ac")
[ -n "$version" ] && ok || bad "no version in configure.ac"

for p in parley-fcgi parley-ws parleyctl; do
	expect "$p --version" 0 "^$p $version\$" - -- "$b/$p" --version
	expect "$p -V" 0 "^$p $version\$" - -- "$b/$p" -V
	expect "$p --help" 0 '^usage: '"$p" - -- "$b/$p" --help
	expect "$p bad option" 2 - 'usage: '"$p" -- "$b/$p" --no-such-option
done
expect "parley-ws extra argument" 2 - 'usage: parley-ws' -- "$b/parley-ws" extra

# check-config: the daemons' own validation, one line out.
printf '[auth]\njwt_secret = %s\n' 0123456789abcdef0123456789abcdef >"$tmp/good.conf"
printf '[auth]\njwt_secret = %s\n[ws]\nport = 80800\n' 0123456789abcdef0123456789abcdef >"$tmp/bad.conf"
expect "check-config good" 0 "^$tmp/good.conf: ok\$" - -- "$b/parleyctl" --config "$tmp/good.conf" check-config
expect "check-config bad" 1 - "bad.conf:4: ws.port: \"80800\" is out of range" -- \
	"$b/parleyctl" --config "$tmp/bad.conf" check-config
expect "check-config missing file" 1 - 'nonexistent.conf: No such file' -- \
	"$b/parleyctl" --config "$tmp/nonexistent.conf" check-config
expect "check-config no file" 1 - 'no configuration' -- env -u PARLEY_CONFIG "$b/parleyctl" check-config
# The daemons refuse the same bad file with the same one line, exit 1.
expect "parley-ws bad config" 1 - "bad.conf:4: ws.port" -- "$b/parley-ws" --config "$tmp/bad.conf"
expect "parley-fcgi bad config" 1 - "bad.conf:4: ws.port" -- "$b/parley-fcgi" --config "$tmp/bad.conf"

# MySQL unreachable at start: one line with MySQL's own reason, exit 1 (or, with -1, start anyway).
printf '[auth]\njwt_secret = %s\n[mysql]\nsocket = %s\nstart_wait = 0\n[bus]\ndir = %s\n[fcgi]\nlisten = %s\n' \
	0123456789abcdef0123456789abcdef "$tmp/no-mysql.sock" "$tmp/bus0" "$tmp/f0.sock" >"$tmp/nomysql.conf"
mkdir -m 0700 "$tmp/bus0"
for p in parley-fcgi parley-ws; do
	expect "$p, MySQL down at start" 1 - \
	    "error: MySQL did not answer within 0 s \(mysql.start_wait\): Can't connect .*no-mysql.sock" -- \
	    timeout 20 "$b/$p" --config "$tmp/nomysql.conf"
done
sed 's/^start_wait = 0$/start_wait = -1/' "$tmp/nomysql.conf" >"$tmp/nowait.conf"
"$b/parley-fcgi" --config "$tmp/nowait.conf" 2>"$tmp/nowait.log" & nwpid=$!
for _ in $(seq 50); do [ -S "$tmp/f0.sock" ] && break; sleep 0.1; done
[ -S "$tmp/f0.sock" ] && kill -0 "$nwpid" 2>/dev/null && ok || bad "start_wait = -1: parley-fcgi did not start"
kill "$nwpid" 2>/dev/null; wait "$nwpid" 2>/dev/null

# A port or socket in use: one line naming it, exit 1, and the running daemon keeps its socket.
if [ -n "${PARLEY_TEST_CONFIG:-}" ]; then
	busy=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	mkdir -m 0700 "$tmp/bus1"
	grep -vE '^(listen|dir) *=' "$PARLEY_TEST_CONFIG" >"$tmp/busy.conf"
	printf '[bus]\ndir = %s\n[fcgi]\nlisten = %s\n[ws]\nport = %s\n' \
		"$tmp/bus1" "$tmp/f1.sock" "$busy" >>"$tmp/busy.conf"
	/usr/bin/python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(); time.sleep(30)' "$busy" & holder=$!
	for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$busy") 2>/dev/null && break; sleep 0.1; done
	expect "parley-ws, port in use" 1 - "error: cannot listen on 127.0.0.1 port $busy: Address already in use" -- \
		timeout 20 "$b/parley-ws" --config "$tmp/busy.conf"
	kill "$holder"; wait "$holder" 2>/dev/null
	"$b/parley-fcgi" --config "$tmp/busy.conf" 2>"$tmp/f1.log" & f1=$!
	for _ in $(seq 50); do [ -S "$tmp/f1.sock" ] && break; sleep 0.1; done
	ino=$(stat -c %i "$tmp/f1.sock")
	expect "parley-fcgi, socket in use" 1 - "error: cannot listen on $tmp/f1.sock: socket in use by another process" -- \
		timeout 20 "$b/parley-fcgi" --config "$tmp/busy.conf"
	[ "$(stat -c %i "$tmp/f1.sock")" = "$ino" ] && ok || bad "the second parley-fcgi replaced the first one's socket"
	kill "$f1"; wait "$f1" 2>/dev/null
	: >"$tmp/not-a-socket"
	sed "s#^listen = .*#listen = $tmp/not-a-socket#" "$tmp/busy.conf" >"$tmp/notsock.conf"
	expect "parley-fcgi, listen path is a file" 1 - "is not a socket" -- \
		timeout 20 "$b/parley-fcgi" --config "$tmp/notsock.conf"
	[ -f "$tmp/not-a-socket" ] && ok || bad "parley-fcgi deleted the file at fcgi.listen"
fi

# Man pages: render with man -l and no warning from groff.
for m in "$s"/man/*.[0-9]; do
	if MANWIDTH=80 man --warnings=all -l "$m" >"$tmp/man.out" 2>"$tmp/man.err" &&
	    [ ! -s "$tmp/man.err" ] && [ -s "$tmp/man.out" ]; then ok
	else bad "man -l $(basename "$m"): $(head -c 300 "$tmp/man.err")"; fi
done
for m in parley-fcgi.8 parley-ws.8 parleyctl.1 parley.conf.5; do
	[ -f "$s/man/$m" ] && ok || bad "man/$m missing"
done

# Every key of the configuration table is documented in all three places.
keys=$(sed -nE 's/^[[:space:]]*[SI]\("([a-z_]+\.[a-z_]+)".*/\1/p' "$s/src/config.c")
[ "$(echo "$keys" | wc -l)" -gt 20 ] && ok || bad "could not read the keys of src/config.c"
for k in $keys; do
	sect=${k%%.*} name=${k#*.}
	grep -qF "\`$k\`" "$s/docs/configuration.md" || bad "$k not in docs/configuration.md"
	grep -qE "^\.B $k\$|^\.BR? $k " "$s/man/parley.conf.5" || bad "$k not in man/parley.conf.5 (document it in docs/configuration.md, then run scripts/man-conf)"
	# The sample has "[section]" then "key = value" or "# key = value".
	awk -v sect="[$sect]" -v name="$name" '
		/^\[/ { in_s = ($0 == sect) }
		in_s && $0 ~ "^#? ?" name " =" { found = 1 }
		END { exit !found }' "$s/contrib/parley.conf" || bad "$k not in the sample contrib/parley.conf (add it, commented out with its default)"
	ok
done
# The sample itself is a valid configuration (with its placeholder secret).
expect "sample config" 0 ': ok$' - -- "$b/parleyctl" --config "$s/contrib/parley.conf" check-config

# The systemd units: valid, and hardened (exposure under 2 on systemd-analyze's 0-10 scale).
if command -v systemd-analyze >/dev/null; then
	for u in parley-fcgi.service parley-ws.service parley-fcgi.socket; do
		# verify wants the binary at ExecStart: point it at the one just built.
		sed "s#/usr/local/bin/#$b/#" "$s/contrib/systemd/$u" >"$tmp/$u"
	done
	for u in parley-fcgi.service parley-ws.service parley-fcgi.socket; do
		if systemd-analyze verify "$tmp/$u" >"$tmp/verify.out" 2>&1 && [ ! -s "$tmp/verify.out" ]
		then ok; else bad "systemd-analyze verify $u: $(head -c 300 "$tmp/verify.out")"; fi
	done
	for u in parley-fcgi.service parley-ws.service; do
		score=$(systemd-analyze security --offline=yes "$tmp/$u" 2>/dev/null |
			sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
		if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s < 2.0) }'; then ok
		else bad "$u: exposure '$score', want < 2.0"; fi
	done
else
	bad "systemd-analyze not found (apt-get install systemd)"
fi

# The logrotate snippet parses, and a forced rotation keeps the file its writer holds open.
mkdir "$tmp/log"
sed "s#/var/log/parley#$tmp/log#g" "$s/contrib/logrotate/parley" >"$tmp/logrotate.conf"
exec 7>>"$tmp/log/parley-ws.log"; echo "before" >&7
if /usr/sbin/logrotate -f -s "$tmp/logrotate.state" "$tmp/logrotate.conf" 2>"$tmp/lr.err"; then
	echo "after" >&7
	[ "$(cat "$tmp/log/parley-ws.log.1" 2>/dev/null)" = before ] && ok || bad "logrotate: no parley-ws.log.1"
	grep -qx after "$tmp/log/parley-ws.log" && ok || bad "logrotate: writes after the rotation lost"
else
	bad "logrotate: $(head -c 300 "$tmp/lr.err")"
fi
exec 7>&-

# parleyctl stats against both daemons, run here on the test stack's MariaDB and memcached.
if [ -n "${PARLEY_TEST_CONFIG:-}" ]; then
	port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	mkdir -m 0700 "$tmp/bus"
	grep -vE '^(listen|dir) *=' "$PARLEY_TEST_CONFIG" >"$tmp/stack.conf"
	printf '[bus]\ndir = %s\n[fcgi]\nlisten = %s\n[ws]\nport = %s\n' \
		"$tmp/bus" "$tmp/fcgi.sock" "$port" >>"$tmp/stack.conf"
	"$b/parley-fcgi" --config "$tmp/stack.conf" 2>"$tmp/fcgi.log" & fpid=$!
	"$b/parley-ws" --config "$tmp/stack.conf" 2>"$tmp/ws.log" & wpid=$!
	for _ in $(seq 50); do
		[ -S "$tmp/fcgi.sock" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		sleep 0.1
	done
	expect "stats, both up" 0 '^parley-ws \(127.0.0.1:'"$port"'\): up$' - -- \
		"$b/parleyctl" --config "$tmp/stack.conf" stats --interval 0
	# The first stats was one request to parley-fcgi's /metrics: the second one counts it.
	expect "stats counts" 0 '^  requests +answered [1-9][0-9]*, errors 0$' - -- \
		"$b/parleyctl" --config "$tmp/stack.conf" stats --interval 0
	expect "stats rates" 0 '^  messages +sent 0 \(0\.0/s\)' - -- \
		"$b/parleyctl" --config "$tmp/stack.conf" stats --interval 1
	expect "stats --all" 0 '^  parley_ws_ws_connections +0$' - -- \
		"$b/parleyctl" --config "$tmp/stack.conf" stats --interval 0 --all
	kill "$wpid"; wait "$wpid" 2>/dev/null
	expect "stats, parley-ws down" 1 'parley-ws: unreachable \(127.0.0.1:'"$port"': Connection refused\)' - -- \
		"$b/parleyctl" --config "$tmp/stack.conf" stats --interval 0
	kill "$fpid"; wait "$fpid" 2>/dev/null
fi

echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
