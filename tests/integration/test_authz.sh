#!/usr/bin/env bash
# test_authz.sh - the authorisation matrix (authz_test.py): every route and frame, every bad token and wrong user.
# Run under tests/harness/with-services (make check does); the checks are in authz_test.py.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"
test_env test_authz.sh parley-ws
need_websockets test_authz.sh
exec /usr/bin/python3 "$here/authz_test.py" "$@"
