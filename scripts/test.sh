#!/usr/bin/env bash
# Installs dependencies if missing, builds with warnings as errors, and runs
# every test with ctest; broker tests start their own brokers on loopback.
# Then builds again with AddressSanitizer + UndefinedBehaviorSanitizer and
# runs the unit, store and broker integration tests under them (the crash
# suite, benchmarks, valgrind and fuzzing run in the first pass only).
# Options: BUILD_DIR (default build); ACKBOX_SANITIZE_PASS=0 skips the
# sanitizer pass; extra arguments go to both ctest runs (e.g. -R amqp).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
start=$SECONDS

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACKBOX_SANITIZE=OFF \
      -DCMAKE_C_FLAGS="-Werror" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 600 "$@"
echo "test.sh: first pass done after $((SECONDS - start)) s"

# The crash suite (with the network faults and the short soak), the CLI and
# scale-out runs (and their broker fixtures),
# benchmarks, valgrind and fuzzing run in the first pass only.
skip_in_sanitize_pass='^(crash_|bench\.|valgrind|fuzz_|cli_end_to_end|pg_scaleout|fixture\.(rabbitmq_cli|rabbitmq_crash|mosquitto_crash|pg_rabbitmq|kafka-mock|kafka-mock-proxied)\.)'
if [ "${ACKBOX_SANITIZE_PASS:-1}" = 1 ]; then
  cmake -S . -B "$BUILD_DIR-sanitize" -DCMAKE_BUILD_TYPE=Debug -DACKBOX_SANITIZE=ON \
        -DCMAKE_C_FLAGS="-Werror" >/dev/null
  cmake --build "$BUILD_DIR-sanitize" -j"$(nproc)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$BUILD_DIR-sanitize" --output-on-failure --timeout 600 \
          -E "$skip_in_sanitize_pass" "$@"
  echo "test.sh: sanitizer pass done after $((SECONDS - start)) s"
fi
