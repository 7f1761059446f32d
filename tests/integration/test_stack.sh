#!/usr/bin/env bash
# test_stack.sh - scripts/stack: start right after a crash restarts the daemons (a zombie is not
# a running daemon), two starts at once launch each daemon once. The checks are in
# stack_test.py; it runs a whole stack of its own in a temporary directory on free ports.
set -u
srcdir=${PARLEY_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export PARLEY_SRCDIR=$srcdir PARLEY_BUILDDIR=${PARLEY_BUILDDIR:-$srcdir/build}
exec /usr/bin/python3 "$srcdir/tests/integration/stack_test.py"
