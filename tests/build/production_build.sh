#!/usr/bin/env bash
# production_build.sh - the test transport stays out of what users get:
#  1. `cmake --install` of this (test) build is refused, and installs nothing;
#  2. a build configured as for an install (-DACKBOX_BUILD_TESTS=OFF) has no
#     loopback:// (refused as not built, naming ACKBOX_TEST_TRANSPORTS), and
#     its property dump has no loopback.* key.
# usage: production_build.sh SOURCE_DIR TEST_BUILD_DIR WORK_DIR
set -euo pipefail
src=${1:?usage: production_build.sh SOURCE_DIR TEST_BUILD_DIR WORK_DIR}
test_build=${2:?}
work=${3:?}
cmake=${CMAKE:-cmake}
fail() { echo "FAIL: $*" >&2; exit 1; }

rm -rf "$work"; mkdir -p "$work"

# 1. this build has the test transports: its install must refuse, first thing
rc=0
env -u ACKBOX_INSTALL_TEST_BUILD "$cmake" --install "$test_build" --prefix "$work/prefix" \
  >"$work/install.log" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "installing a build with ACKBOX_TEST_TRANSPORTS=ON succeeded"
grep -q "ACKBOX_TEST_TRANSPORTS=ON" "$work/install.log" || { cat "$work/install.log" >&2; fail "the refusal does not name ACKBOX_TEST_TRANSPORTS"; }
if [ -d "$work/prefix" ] && [ -n "$(find "$work/prefix" -type f | head -1)" ]; then
  find "$work/prefix" -type f >&2; fail "the refused install copied files"
fi

# 2. a build as a packager makes it: only the core and SQLite, no tests
"$cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACKBOX_BUILD_TESTS=OFF \
  -DACKBOX_BUILD_EXAMPLES=OFF -DACKBOX_WITH_AMQP=OFF -DACKBOX_WITH_KAFKA=OFF -DACKBOX_WITH_MQTT=OFF \
  -DACKBOX_WITH_REDIS=OFF -DACKBOX_WITH_POSTGRES=OFF >"$work/configure.log" 2>&1 ||
  { tail -20 "$work/configure.log" >&2; fail "configure"; }
grep -q "test transports: OFF" "$work/configure.log" || fail "ACKBOX_TEST_TRANSPORTS is not OFF by default without tests"
"$cmake" --build "$work/build" --target ackbox -j2 >"$work/build.log" 2>&1 ||
  { tail -20 "$work/build.log" >&2; fail "build"; }
cat > "$work/probe.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <ackbox/ackbox.h>
int main(void)
{
	char err[512] = "";
	ackbox_conf *c = ackbox_conf_new();
	int rc = ackbox_conf_set(c, "transport.url", "loopback://127.0.0.1:5672", err, sizeof(err));
	printf("rc=%d %s\n", rc, err);
	ackbox_conf_destroy(c);
	ackbox_conf_dump_properties(stdout);
	return 0;
}
C
cc -I"$src/include" "$work/probe.c" -L"$work/build" -lackbox -Wl,-rpath,"$work/build" -o "$work/probe"
"$work/probe" >"$work/probe.out"
head -1 "$work/probe.out" | grep -q "^rc=-7 .*loopback.*ACKBOX_TEST_TRANSPORTS" ||
  { head -1 "$work/probe.out" >&2; fail "loopback:// is not refused as not built (ACKBOX_ERR_NOT_BUILT, naming ACKBOX_TEST_TRANSPORTS)"; }
if grep -q '`loopback\.' "$work/probe.out"; then fail "the production build documents loopback.* keys"; fi
rm -rf "$work"
echo "production_build: ok"
