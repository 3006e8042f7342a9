#!/usr/bin/env bash
# Installs dependencies if missing, builds with warnings as errors, and runs
# every test with ctest; broker tests start their own brokers on loopback.
# Options: ACKBOX_SANITIZE=1 builds with ASan+UBSan; BUILD_DIR (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
san=OFF
[ "${ACKBOX_SANITIZE:-0}" = 1 ] && san=ON
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACKBOX_SANITIZE=$san \
      -DCMAKE_C_FLAGS="-Werror" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 600 "$@"
