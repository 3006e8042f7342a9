#!/usr/bin/env bash
# Installs dependencies if missing, builds with warnings as errors, and runs
# every test with ctest; broker tests start their own brokers on loopback.
# Then builds again with AddressSanitizer + UndefinedBehaviorSanitizer and
# runs the unit, store and broker integration tests under them (the crash
# suite, benchmarks, valgrind and fuzzing run in the first pass only).
# Then a third time under ThreadSanitizer, over the same tests.
# Options: BUILD_DIR (default build); ACKBOX_SANITIZE_PASS=0 skips the
# ASan/UBSan pass, ACKBOX_TSAN_PASS=0 the TSan pass; ACKBOX_TEST_JOBS (6)
# tests at once in the first pass, ACKBOX_SANITIZER_JOBS (2) in each
# sanitizer pass; extra arguments go to every ctest run (e.g. -R amqp).
#
# Tests run in parallel: most of their time is spent waiting on brokers and
# outages. Every test that uses a broker fixture holds that fixture's
# RESOURCE_LOCK (the crash tests kill and restart it), and the builds, the
# fuzzers and valgrind hold the lock "cpu". tests/ctest-costs.txt seeds
# ctest's record of how long each test took, so that a fresh build starts
# the longest ones first instead of finishing on them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
start=$SECONDS

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACKBOX_SANITIZE=OFF \
      -DCMAKE_C_FLAGS="-Werror" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
seed_costs() {
  mkdir -p "$1/Testing/Temporary"
  [ -f "$1/Testing/Temporary/CTestCostData.txt" ] ||
    cp tests/ctest-costs.txt "$1/Testing/Temporary/CTestCostData.txt"
}
seed_costs "$BUILD_DIR"

# The sanitizer trees (below) build meanwhile at the lowest priority: the
# first pass mostly waits on brokers, and leaves about half the CPU idle.
passes=()
[ "${ACKBOX_SANITIZE_PASS:-1}" = 1 ] && passes+=(sanitize)
[ "${ACKBOX_TSAN_PASS:-1}" = 1 ] && passes+=(tsan)
rm -f "$BUILD_DIR-broken"
build_pass() { # pass
  local opt=-DACKBOX_SANITIZE=ON
  [ "$1" = tsan ] && opt=-DACKBOX_TSAN=ON
  cmake -S . -B "$BUILD_DIR-$1" -DCMAKE_BUILD_TYPE=Debug "$opt" -DCMAKE_C_FLAGS="-Werror" &&
    nice -n 15 cmake --build "$BUILD_DIR-$1" -j"$(nproc)"
}
(
  rc=0
  for pass in "${passes[@]}"; do
    mkdir -p "$BUILD_DIR-$pass"
    build_pass "$pass" > "$BUILD_DIR-$pass.build.log" 2>&1 || { rc=1; echo "$pass" > "$BUILD_DIR-broken"; }
  done
  exit $rc
) &
builds=$!

kill_tree() { # pid: it and everything it started
  local c
  for c in $(pgrep -P "$1"); do kill_tree "$c"; done
  kill "$1" 2>/dev/null || true
}
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 600 -j"${ACKBOX_TEST_JOBS:-6}" "$@" || {
  kill_tree "$builds"
  exit 1
}
echo "test.sh: first pass done after $((SECONDS - start)) s"
if ! wait "$builds"; then
  pass=$(cat "$BUILD_DIR-broken")
  echo "test.sh: the $pass build failed:" >&2
  tail -40 "$BUILD_DIR-$pass.build.log" >&2
  exit 1
fi
echo "test.sh: sanitizer builds done after $((SECONDS - start)) s"

# The crash suite (with the network faults and the short soak), the CLI and
# scale-out runs (and their broker fixtures), benchmarks, valgrind and
# fuzzing run in the first pass only: their tests carry the ctest label
# first_pass_only (wherever they are declared).

# Then the unit, store and broker tests again, built (above, during the first
# pass) with AddressSanitizer + UBSan, and with ThreadSanitizer (Debug
# builds: assert()s are on).
# Both passes run at the same time: their tests mostly wait on brokers, and
# each pass has its own build tree, brokers and ports. Under TSan, Criterion
# cannot run; those tests use tests/common/crshim.h. Only third-party
# libraries are suppressed (the lsan.supp gathered in the build tree from
# the plugin folders, and tests/tsan.supp, say why).
for pass in "${passes[@]}"; do
  (
    if [ "$pass" = sanitize ]; then
      export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
      LSAN_OPTIONS=suppressions=$(cd "$BUILD_DIR-sanitize" && pwd)/lsan.supp
      export LSAN_OPTIONS
      export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    else
      export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp"
    fi
    rc=0
    seed_costs "$BUILD_DIR-$pass"
    ctest --test-dir "$BUILD_DIR-$pass" --output-on-failure --timeout 600 \
          -j"${ACKBOX_SANITIZER_JOBS:-2}" -LE first_pass_only "$@" >"$BUILD_DIR-$pass/ctest.log" 2>&1 || rc=$?
    echo "$rc" >"$BUILD_DIR-$pass/ctest.rc"
  ) &
done
wait
failed=0
for pass in "${passes[@]}"; do
  echo "---- $pass pass ----"
  cat "$BUILD_DIR-$pass/ctest.log"
  [ "$(cat "$BUILD_DIR-$pass/ctest.rc")" = 0 ] || failed=1
done
echo "test.sh: sanitizer passes (${passes[*]}) done after $((SECONDS - start)) s"
exit $failed
