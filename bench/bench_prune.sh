#!/usr/bin/env bash
# bench_prune.sh - parleyctl prune throughput: LOGS user logs of OLD old events (and KEEP new ones
# each), filled straight into MySQL, then one timed prune run. Prints logs/s, events/s and
# prune's own --verbose figures (transactions, longest transaction, longest seq-row lock).
#
#   bench/bench_prune.sh [BUILDDIR] [LOGS] [OLD] [KEEP] [BATCH] [PAUSE_MS]
#
# Runs on the stack of $PARLEY_TEST_MYSQL_SOCKET / $PARLEY_TEST_CONFIG (bench/run starts one).
# PRUNE_FLAGS= (empty) for a parleyctl older than prune --verbose.
set -euo pipefail
bdir=${1:-build}; logs=${2:-5000}; old=${3:-10}; keep=${4:-2}; batch=${5:-1000}; pause=${6:-10}
: "${PARLEY_TEST_MYSQL_SOCKET:?run under bench/run or tests/harness/with-services}"
my() { mariadb --no-defaults -S "$PARLEY_TEST_MYSQL_SOCKET" -u parley -pparley-test parley "$@"; }
now=$(($(date +%s) * 1000))
oldts=$((now - 3 * 86400000))
conf=$(mktemp "${TMPDIR:-/tmp}/bench-prune.XXXXXX.conf")
trap 'rm -f "$conf"; my -e "DELETE FROM events WHERE user_id LIKE '"'"'bp-%'"'"'; DELETE FROM user_seq WHERE user_id LIKE '"'"'bp-%'"'"'"' EXIT
{ cat "$PARLEY_TEST_CONFIG"; printf '[retention]\nevents_days = 1\nbatch = %d\npause_ms = %d\n' \
    "$batch" "$pause"; } >"$conf"
total=$((old + keep))
my -e "DELETE FROM events WHERE user_id LIKE 'bp-%'; DELETE FROM user_seq WHERE user_id LIKE 'bp-%';
INSERT INTO user_seq (user_id, last_seq, first_seq)
  SELECT CONCAT('bp-', LPAD(u.seq, 7, '0')), $total, 1 FROM seq_1_to_${logs} u;
INSERT INTO events (user_id, seq, kind, body, ts)
  SELECT CONCAT('bp-', LPAD(u.seq, 7, '0')), s.seq, 2, '{\"type\":\"bench\"}',
         IF(s.seq <= $old, $oldts, $now)
  FROM seq_1_to_${logs} u, seq_1_to_${total} s;"
t0=$(date +%s%N)
out=$("$bdir/parleyctl" --config "$conf" prune ${PRUNE_FLAGS---verbose})
t1=$(date +%s%N)
ms=$(( (t1 - t0) / 1000000 ))
left=$(my -N -e "SELECT COUNT(*) FROM events WHERE user_id LIKE 'bp-%'")
echo "prune: $logs logs x $old old events (+$keep kept), batch $batch, pause_ms $pause"
echo "$out" | sed 's/^/  /'
awk -v ms="$ms" -v l="$logs" -v e="$((logs * old))" 'BEGIN { printf "  %d ms: %.0f logs/s, %.0f events/s\n", ms, l * 1000 / ms, e * 1000 / ms }'
[ "$left" -eq $((logs * keep)) ] || { echo "  WRONG: $left events left, expected $((logs * keep))"; exit 1; }
