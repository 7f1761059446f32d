# scripts/lib.sh - what scripts/demo, scripts/test and scripts/stack share: packages and the build;
# and the start every tests/integration wrapper makes (test_env, need_websockets).
# Sourced, not run.

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Debian 12 packages: to build, to test, and to run the local stack.
PARLEY_PACKAGES="build-essential autoconf automake libtool pkg-config
	libjson-c-dev libmemcached-dev libmariadb-dev libssl-dev libwebsockets-dev libfcgi-dev check
	libhiredis-dev libev-dev
	mariadb-server mariadb-client memcached redis-server lighttpd apache2 nginx-light spawn-fcgi
	python3 python3-websockets curl wrk man-db logrotate iproute2
	clang libclang-rt-14-dev"

say() { printf '==> %s\n' "$*"; }

# Install whatever of PARLEY_PACKAGES is missing (apt-get as root, else through sudo).
install_packages() {
	local missing=() p sudo=()
	for p in $PARLEY_PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && { say "all Debian packages present"; return 0; }
	[ "$(id -u)" = 0 ] || sudo=(sudo)
	say "installing ${missing[*]}"
	"${sudo[@]}" apt-get update -qq
	# Stop the packages' own services from starting: Parley runs private instances under ./var.
	DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 "${sudo[@]}" apt-get install -y -qq \
		--no-install-recommends "${missing[@]}" >/dev/null
}

# Node.js and the JavaScript tests' dependencies: npm "ws" for the client's tests (pinned by
# contrib/js/package-lock.json), npm "playwright-core" and Debian's chromium for the web app's
# end-to-end test (contrib/web/package-lock.json, tests/integration/test_web.sh). Debian's
# nodejs/npm when there is no node at all (a node from elsewhere, e.g. NodeSource's package with
# its own npm, is kept).
PARLEY_TEST_PACKAGES="chromium"
install_node_modules() {
	local dir p sudo=() missing=()
	[ "$(id -u)" = 0 ] || sudo=(sudo)
	command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
	for p in $PARLEY_TEST_PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		say "installing ${missing[*]}"
		"${sudo[@]}" apt-get update -qq
		DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
			"${missing[@]}" >/dev/null
	fi
	for dir in "$top/contrib/js" "$top/contrib/web"; do
		if [ ! -f "$dir/node_modules/.package-lock.json" ] ||
		   [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
			say "installing ${dir#"$top"/}'s test dependencies (npm ci)"
			(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
		fi
	done
}

# build DIR [configure args...]: an out-of-tree build in DIR, warnings are errors.
build() {
	local dir=$1; shift
	[ -x "$top/configure" ] && [ "$top/configure" -nt "$top/configure.ac" ] || (cd "$top" && ./autogen.sh >/dev/null 2>&1)
	mkdir -p "$dir"
	if [ ! -f "$dir/Makefile" ]; then
		(cd "$dir" && "$top/configure" -q "$@") || return 1
	fi
	make -C "$dir" -j"$(nproc)" >"$dir/make.log" 2>&1 || { tail -40 "$dir/make.log"; return 1; }
	if grep -E 'warning:' "$dir/make.log" >/dev/null; then
		grep -E 'warning:' "$dir/make.log"; say "compiler warnings (treated as errors)"; return 1
	fi
}

# test_env NAME BINARY...: the start of an integration test's wrapper (tests/integration/test_*.sh).
# Exports PARLEY_BUILDDIR (default: the current directory) and PARLEY_SRCDIR (default: this
# checkout); exits 99, a hard error to make check, unless run under tests/harness/with-services
# with every BINARY built in PARLEY_BUILDDIR.
test_env() {
	local name=$1 b
	shift
	: "${PARLEY_BUILDDIR:=$(pwd)}"
	: "${PARLEY_SRCDIR:=$top}"
	export PARLEY_BUILDDIR PARLEY_SRCDIR
	if [ -z "${PARLEY_TEST_CONFIG:-}" ]; then
		echo "$name: run it under tests/harness/with-services" >&2
		exit 99
	fi
	for b in "$@"; do
		[ -x "$PARLEY_BUILDDIR/$b" ] || { echo "$name: $PARLEY_BUILDDIR/$b is not built" >&2; exit 99; }
	done
}

# need_websockets NAME: exit 99 unless Debian's python3-websockets is installed.
need_websockets() {
	/usr/bin/python3 -c 'import websockets' 2>/dev/null && return 0
	echo "$1: python3-websockets is missing (apt-get install python3-websockets)" >&2
	exit 99
}

# need_node_modules NAME DIR PACKAGE (after test_env): exit 99 unless node is installed and so
# are DIR's npm test dependencies, PACKAGE among them (scripts/test installs both).
need_node_modules() {
	command -v node >/dev/null || { echo "$1: node is missing (scripts/test installs it)" >&2; exit 99; }
	if [ ! -f "$PARLEY_SRCDIR/$2/node_modules/$3/package.json" ]; then
		echo "$1: $2/node_modules is missing: cd $2 && npm ci (scripts/test does)" >&2
		exit 99
	fi
}
