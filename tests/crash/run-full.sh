#!/usr/bin/env bash
# The documented long run of the crash suite: 20 kill -9 trials and 3 outages
# of 30 s per broker (about 15 minutes), results summed per broker at the end.
# Uses the build in BUILD_DIR (default build), configured by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
[ -d "$BUILD_DIR" ] || { echo "run-full: no build in $BUILD_DIR; run scripts/test.sh first" >&2; exit 2; }
rm -f "$BUILD_DIR/crash-results.txt"
CRASH_TRIALS=${CRASH_TRIALS:-20} CRASH_OUTAGE_TRIALS=${CRASH_OUTAGE_TRIALS:-3} \
  ctest --test-dir "$BUILD_DIR" -R 'crash_' --output-on-failure
awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
       k = v["broker"] " " v["mode"]; t[k]++; a[k] += v["accepted"]; l[k] += v["lost"]; d[k] += v["duplicates"] }
     END { printf "%-6s %-7s %7s %9s %5s %10s\n", "broker", "mode", "trials", "accepted", "lost", "duplicates";
           for (k in t) { split(k, b, " "); printf "%-6s %-7s %7d %9d %5d %10d\n", b[1], b[2], t[k], a[k], l[k], d[k] } }' \
  "$BUILD_DIR/crash-results.txt"
