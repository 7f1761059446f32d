#!/usr/bin/env bash
# test_multihost.sh - two app hosts and a services host in network namespaces (issue 9): the
# checks are in multihost_test.py, the cluster in netns.py. Needs root and iproute2 (CI runs as
# root); without network namespaces it FAILS, naming the reason, rather than skipping.
set -u
srcdir=${PARLEY_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export PARLEY_SRCDIR=$srcdir PARLEY_BUILDDIR=${PARLEY_BUILDDIR:-$srcdir/build}
for b in parley-fcgi parley-ws parleyctl; do
	[ -x "$PARLEY_BUILDDIR/$b" ] || { echo "test_multihost.sh: $PARLEY_BUILDDIR/$b is not built" >&2; exit 1; }
done
exec /usr/bin/python3 "$srcdir/tests/integration/multihost_test.py"
