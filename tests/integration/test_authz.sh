#!/usr/bin/env bash
# test_authz.sh - the authorisation matrix (authz_test.py): every route and frame, every bad token and wrong user.
# Run under tests/harness/with-services (make check does); the checks are in authz_test.py.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${PARLEY_BUILDDIR:=$(pwd)}"
: "${PARLEY_SRCDIR:=$(cd "$here/../.." && pwd)}"
export PARLEY_BUILDDIR PARLEY_SRCDIR
if [ -z "${PARLEY_TEST_CONFIG:-}" ]; then
	echo "test_authz.sh: run it under tests/harness/with-services" >&2
	exit 99
fi
if [ ! -x "$PARLEY_BUILDDIR/parley-ws" ]; then
	echo "test_authz.sh: $PARLEY_BUILDDIR/parley-ws is not built" >&2
	exit 99
fi
if ! /usr/bin/python3 -c 'import websockets' 2>/dev/null; then
	echo "test_authz.sh: python3-websockets is missing (apt-get install python3-websockets)" >&2
	exit 99
fi
exec /usr/bin/python3 "$here/authz_test.py" "$@"
