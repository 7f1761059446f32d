#!/usr/bin/env bash
# test_web.sh - the demo web app (contrib/web) end to end in headless Chromium: Debian's chromium
# driven by npm playwright-core (contrib/web/package-lock.json), against lighttpd in front of
# parley-fcgi (demo.tokens = yes) and parley-ws, started by contrib/js/test/stack.mjs. Run under
# tests/harness/with-services (make check does). Screenshots: PARLEY_WEB_ARTEFACTS, default
# $PARLEY_BUILDDIR/tests/web-artefacts (the test prints where).
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${PARLEY_BUILDDIR:=$(pwd)}"
: "${PARLEY_SRCDIR:=$(cd "$here/../.." && pwd)}"
export PARLEY_BUILDDIR PARLEY_SRCDIR
if [ -z "${PARLEY_TEST_CONFIG:-}" ]; then
	echo "test_web.sh: run it under tests/harness/with-services" >&2
	exit 99
fi
for b in parley-fcgi parley-ws parleyctl; do
	[ -x "$PARLEY_BUILDDIR/$b" ] || { echo "test_web.sh: $PARLEY_BUILDDIR/$b is not built" >&2; exit 99; }
done
for c in node "${PARLEY_CHROMIUM:-/usr/bin/chromium}"; do
	command -v "$c" >/dev/null || { echo "test_web.sh: $c is missing (scripts/test installs it)" >&2; exit 99; }
done
web="$PARLEY_SRCDIR/contrib/web"
if [ ! -f "$web/node_modules/playwright-core/package.json" ]; then
	echo "test_web.sh: contrib/web/node_modules is missing: cd contrib/web && npm ci (scripts/test does)" >&2
	exit 99
fi
cd "$web" || exit 99
exec node --test --test-reporter=spec test/e2e.test.mjs
