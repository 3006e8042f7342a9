#!/usr/bin/env bash
# The documented long run of the crash suite (docs/reliability.md): per broker,
# CRASH_TRIALS kill -9 trials and CRASH_OUTAGE_TRIALS broker outages of
# CRASH_OUTAGE_S seconds (defaults 100, 100 and 2), and the three AMQP crash
# points; each broker is started here on loopback and stopped at the end.
# A trial that loses messages is recorded, its files kept, and the run goes on;
# the table at the end sums trials, accepted, lost and duplicates per broker
# and mode, and the exit status is 1 if anything was lost.
#   run-full.sh [BUILD_DIR]   (default build, configured by scripts/test.sh)
# RUN_BROKERS ("amqp mqtt kafka") and RUN_MODES ("kill9 outage point") pick a
# part. On a shared machine, run it at low priority: nice -n 19 bash ...
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-${BUILD_DIR:-build}}
tools="$build/crash-tools.env"
[ -f "$tools" ] || { echo "run-full: no $tools; configure and build first (scripts/test.sh)" >&2; exit 2; }
# shellcheck disable=SC1090
. "$tools"
export AMQP_DRAIN CRASH_CONTINUE=1
export CRASH_TRIALS=${CRASH_TRIALS:-100} CRASH_OUTAGE_TRIALS=${CRASH_OUTAGE_TRIALS:-100}
export CRASH_OUTAGE_S=${CRASH_OUTAGE_S:-2}
export ACKBOX_TEST_TMP=${ACKBOX_TEST_TMP:-$PWD/$build/testtmp}
export CRASH_RESULTS=${CRASH_RESULTS:-$PWD/$build/crash-results.txt}
mkdir -p "$ACKBOX_TEST_TMP"
fx=$(mktemp -d "$ACKBOX_TEST_TMP/run-full-XXXXXX")
started=()
stop_all() {
  for b in "${started[@]}"; do
    case "$b" in
    amqp) bash tests/fixtures/rabbitmq.sh stop "$fx/amqp" ;;
    mqtt) bash tests/fixtures/mosquitto.sh stop "$fx/mqtt" ;;
    kafka) bash tests/fixtures/kafka-mock.sh stop "$fx/kafka" ;;
    esac
  done
  rm -rf "$fx"
}
trap stop_all EXIT
rm -f "$CRASH_RESULTS"
status=0
for b in ${RUN_BROKERS:-amqp mqtt kafka}; do
  case "$b" in
  amqp) bash tests/fixtures/rabbitmq.sh start "$fx/amqp" ;;
  mqtt) bash tests/fixtures/mosquitto.sh start "$fx/mqtt" ;;
  kafka) bash tests/fixtures/kafka-mock.sh start "$fx/kafka" "${KAFKA_MOCK_CLUSTER:?}" ;;
  esac
  started+=("$b")
  for m in ${RUN_MODES:-kill9 outage point}; do
    if [ "$m" = point ]; then
      [ "$b" = amqp ] || continue
      for p in after_persist after_send after_confirm; do
        CRASH_POINT=$p CRASH_CLI=${ACKBOX_CRASHPOINTS:?} \
          bash tests/crash/harness.sh "$b" point "$ACKBOX_CLI" "$fx/$b/env" || status=1
      done
    else
      bash tests/crash/harness.sh "$b" "$m" "$ACKBOX_CLI" "$fx/$b/env" || status=1
    fi
  done
done
awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
       k = v["broker"] " " v["mode"]; t[k]++; a[k] += v["accepted"]; l[k] += v["lost"]; d[k] += v["duplicates"] }
     END { for (k in t) { split(k, b, " "); printf "%-6s %-20s %7d %9d %5d %10d\n", b[1], b[2], t[k], a[k], l[k], d[k] } }' \
  "$CRASH_RESULTS" | sort | (printf "%-6s %-20s %7s %9s %5s %10s\n" broker mode trials accepted lost duplicates; cat)
exit "$status"
