#!/usr/bin/env bash
# test_web.sh - the demo web app (contrib/web) end to end in headless Chromium: Debian's chromium
# driven by npm playwright-core (contrib/web/package-lock.json), against lighttpd in front of
# parley-fcgi (demo.tokens = yes) and parley-ws, started by contrib/js/test/stack.mjs. Run under
# tests/harness/with-services (make check does). Screenshots: PARLEY_WEB_ARTEFACTS, default
# $PARLEY_BUILDDIR/tests/web-artefacts (the test prints where).
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"
test_env test_web.sh parley-fcgi parley-ws parleyctl
need_node_modules test_web.sh contrib/web playwright-core
command -v "${PARLEY_CHROMIUM:-/usr/bin/chromium}" >/dev/null ||
	{ echo "test_web.sh: ${PARLEY_CHROMIUM:-/usr/bin/chromium} is missing (scripts/test installs it)" >&2; exit 99; }
web="$PARLEY_SRCDIR/contrib/web"
cd "$web" || exit 99
exec node --test --test-reporter=spec test/e2e.test.mjs
