#!/usr/bin/env bash
# test_chaos.sh - the fault-injection suite's short form (make check): the checker's self-test, a
# workload under every fault once, and the classes of failure (herd, half-open client,
# descriptor exhaustion, aborted long polls). About three minutes. The long form is bench/chaos.
#
# Run under tests/harness/with-services (make check does). Kills and restarts MariaDB and
# memcached on purpose: it leaves both running.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"
test_env test_chaos.sh parley-ws parley-fcgi
need_websockets test_chaos.sh
py=/usr/bin/python3

failed=0
out=$(mktemp /tmp/chaos-selftest.XXXXXX)
trap 'rm -f "$out"' EXIT

echo "== the checker can fail: MySQL corrupted mid-run (a loss, a duplicate, a gap)"
"$py" "$here/chaos.py" --selftest --duration 10 >"$out" 2>&1
rc=$?
grep -E '^(chaos|VIOLATION)' "$out"
if [ "$rc" -ne 1 ]; then
	echo "FAIL selftest: the checker exited $rc, not 1"; failed=$((failed + 1))
fi
for v in LOST DUPLICATE GAP; do
	if grep -q "^VIOLATION $v:" "$out"; then echo "ok   selftest reported $v"
	else echo "FAIL selftest did not report $v"; failed=$((failed + 1)); fi
done

echo "== workload under faults (every kind at least once)"
"$py" "$here/chaos.py" --duration "${CHAOS_SECS:-45}" --fault-every 4 || failed=$((failed + 1))

echo "== classes of failure"
"$py" "$here/classes.py" herd halfopen fdlimit abortedpolls || failed=$((failed + 1))

[ "$failed" -eq 0 ] && echo "chaos: all passed" || echo "chaos: $failed failed"
[ "$failed" -eq 0 ]
